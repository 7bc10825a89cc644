//! The workspace size quota (`limits.workspace_bytes`): checked before each prompt the core
//! writes to an agent, and at most every [`CHECK_INTERVAL`] while the agent writes output (during
//! a turn). A check is a bounded scan: at most [`MAX_ENTRIES`] directory entries, symbolic links
//! not followed, sizes counted as allocated blocks. An agent over its quota is failed (the core
//! ends the turn with a `turn_error` naming the quota) and stopped.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use diminuendo_core::AgentId;

/// Least time between two scans of one workspace during a turn.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(3);

/// Most directory entries one scan visits; a workspace with more is over its quota too.
pub const MAX_ENTRIES: usize = 100_000;

struct Watched {
    workspace: PathBuf,
    limit: u64,
    last: Instant,
}

/// The workspaces the host watches, by agent.
#[derive(Default)]
pub(crate) struct Quotas {
    agents: HashMap<AgentId, Watched>,
}

impl Quotas {
    pub(crate) fn watch(&mut self, agent: AgentId, workspace: &Path, limit: Option<u64>) {
        if let Some(limit) = limit {
            self.agents.insert(
                agent,
                Watched {
                    workspace: workspace.to_path_buf(),
                    limit,
                    last: Instant::now(),
                },
            );
        }
    }

    pub(crate) fn forget(&mut self, agent: AgentId) {
        self.agents.remove(&agent);
    }

    /// Before a line goes to the agent: a prompt (a turn starting) is checked always.
    pub(crate) fn before_write(&mut self, agent: AgentId, line: &[u8]) -> Option<String> {
        if !is_prompt(line) {
            return None;
        }
        self.check(agent, Instant::now())
    }

    /// On output of the agent: checked when the last check is older than [`CHECK_INTERVAL`].
    pub(crate) fn on_output(&mut self, agent: AgentId, now: Instant) -> Option<String> {
        let due = self
            .agents
            .get(&agent)
            .is_some_and(|watched| now.duration_since(watched.last) >= CHECK_INTERVAL);
        if due {
            self.check(agent, now)
        } else {
            None
        }
    }

    fn check(&mut self, agent: AgentId, now: Instant) -> Option<String> {
        let watched = self.agents.get_mut(&agent)?;
        watched.last = now;
        let reason = match usage(&watched.workspace, watched.limit, MAX_ENTRIES) {
            Usage::Within(_) => return None,
            Usage::Over(bytes) => format!(
                "the workspace is over its quota ({bytes} bytes or more, the limit is {})",
                watched.limit
            ),
            Usage::TooManyEntries => format!(
                "the workspace is over its quota (more than {MAX_ENTRIES} files and directories)"
            ),
        };
        // Reported once; the agent is being stopped.
        self.agents.remove(&agent);
        Some(reason)
    }
}

/// True for a JSON-RPC `session/prompt` request line (the core writes compact JSON).
fn is_prompt(line: &[u8]) -> bool {
    const NEEDLE: &[u8] = b"\"method\":\"session/prompt\"";
    line.windows(NEEDLE.len()).any(|window| window == NEEDLE)
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Usage {
    Within(u64),
    /// At least this many bytes (the scan stops once over the limit).
    Over(u64),
    TooManyEntries,
}

/// The bytes allocated under `root`, scanning at most `max_entries` entries and stopping as soon
/// as `limit` is passed. Entries that vanish or cannot be read during the scan are skipped.
pub(crate) fn usage(root: &Path, limit: u64, max_entries: usize) -> Usage {
    let mut total: u64 = 0;
    let mut entries = 0usize;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(reader) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in reader.flatten() {
            entries += 1;
            if entries > max_entries {
                return Usage::TooManyEntries;
            }
            let Ok(metadata) = entry.metadata() else {
                continue;
            };
            total = total.saturating_add(metadata.blocks().saturating_mul(512));
            if total > limit {
                return Usage::Over(total);
            }
            if metadata.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    Usage::Within(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_are_recognised() {
        assert!(is_prompt(
            br#"{"jsonrpc":"2.0","id":3,"method":"session/prompt","params":{}}"#
        ));
        assert!(!is_prompt(br#"{"jsonrpc":"2.0","id":3,"result":{}}"#));
    }

    #[test]
    fn a_turn_is_checked_at_most_every_interval_and_a_prompt_always() {
        let dir = tempfile::tempdir().unwrap();
        let mut quotas = Quotas::default();
        let agent = AgentId(1);
        quotas.watch(agent, dir.path(), Some(64 * 1024));
        let start = Instant::now();
        assert_eq!(quotas.on_output(agent, start + CHECK_INTERVAL), None);
        std::fs::write(dir.path().join("big"), vec![1u8; 128 * 1024]).unwrap();
        // Checked just now: not again before the interval has passed.
        assert_eq!(
            quotas.on_output(agent, start + CHECK_INTERVAL * 3 / 2),
            None
        );
        let reason = quotas
            .on_output(agent, start + CHECK_INTERVAL * 2)
            .expect("over the quota");
        assert!(reason.contains("quota"), "{reason}");
        // Reported once.
        assert_eq!(quotas.on_output(agent, start + CHECK_INTERVAL * 9), None);

        quotas.watch(agent, dir.path(), Some(64 * 1024));
        assert_eq!(
            quotas.before_write(agent, b"{\"id\":1,\"result\":{}}"),
            None
        );
        let prompt = br#"{"id":2,"jsonrpc":"2.0","method":"session/prompt","params":{}}"#;
        assert!(quotas.before_write(agent, prompt).is_some());
    }

    #[test]
    fn usage_counts_nested_files_and_stops_at_the_bounds() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/big"), vec![7u8; 256 * 1024]).unwrap();
        std::fs::write(dir.path().join("small"), b"x").unwrap();
        match usage(dir.path(), u64::MAX, 100) {
            Usage::Within(bytes) => assert!(bytes >= 256 * 1024, "{bytes}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(usage(dir.path(), 100 * 1024, 100), Usage::Over(_)));
        assert_eq!(usage(dir.path(), u64::MAX, 2), Usage::TooManyEntries);
    }
}
