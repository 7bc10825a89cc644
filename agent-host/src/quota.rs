//! The workspace size quota (`limits.workspace_bytes`): checked before each prompt the core
//! writes to an agent, and at most every [`CHECK_INTERVAL`] while the agent writes output (during
//! a turn). A check is a bounded scan: at most [`MAX_ENTRIES`] directory entries, symbolic links
//! not followed, sizes counted as allocated blocks. An agent over its quota is failed (the core
//! ends the turn with a `turn_error` naming the quota) and stopped.
//!
//! Scans never run on the caller's thread (the adapter's event loop): one thread per host, named
//! `agent-quota` and started with the first scan, takes scan requests from a channel and hands
//! the verdicts back through a small queue, waking the adapter like the poller's reports do
//! ([`Quotas::finished`] is read by `drain`). A prompt is not written while its scan runs: it
//! and the lines after it wait (in order, on the host) for the verdict, so the agent never starts
//! a turn in a workspace over its quota, yet `execute` does not wait. During output a scan is
//! requested at most every [`CHECK_INTERVAL`] per agent, and an agent never has two scans at
//! once. Forgetting an agent drops its scans' verdicts.

use std::collections::{HashMap, VecDeque};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use diminuendo_core::AgentId;

use crate::reports::{lock, Reports};

/// Least time between two scans of one workspace during a turn.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(3);

/// Most directory entries one scan visits; a workspace with more is over its quota too.
pub const MAX_ENTRIES: usize = 100_000;

struct Watched {
    workspace: Arc<Path>,
    limit: u64,
    /// Tells this watch's scans from those of an earlier watch of the same id.
    serial: u64,
    /// When the last scan was requested.
    last: Instant,
    scanning: bool,
    /// A prompt came while a scan that started before it was running: scan again.
    rescan: bool,
    /// A prompt waiting for its scan, and the lines written after it.
    held: VecDeque<Bytes>,
}

struct Request {
    agent: AgentId,
    serial: u64,
    workspace: Arc<Path>,
    limit: u64,
}

/// A finished scan: `Some(reason)` when the workspace is over its quota.
struct Scanned {
    agent: AgentId,
    serial: u64,
    over: Option<String>,
}

/// What a finished scan means for the host.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Within the quota: write these held lines now, in order.
    Release(AgentId, Vec<Bytes>),
    /// Over the quota: fail and stop the agent (its held lines are dropped).
    Over(AgentId, String),
}

/// The scanner thread, started with the first scan.
struct Scanner {
    requests: Option<Sender<Request>>,
    /// The host is gone: scans still queued are skipped.
    quit: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Scanner {
    fn drop(&mut self) {
        // Ends the thread after the scan it is running (bounded by `MAX_ENTRIES`).
        self.quit.store(true, Ordering::SeqCst);
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The workspaces the host watches, by agent.
pub(crate) struct Quotas {
    agents: HashMap<AgentId, Watched>,
    next_serial: u64,
    scanner: Option<Scanner>,
    finished: Arc<Mutex<Vec<Scanned>>>,
    reports: Arc<Reports>,
}

impl Quotas {
    pub(crate) fn new(reports: Arc<Reports>) -> Quotas {
        Quotas {
            agents: HashMap::new(),
            next_serial: 0,
            scanner: None,
            finished: Arc::default(),
            reports,
        }
    }

    pub(crate) fn watch(&mut self, agent: AgentId, workspace: &Path, limit: Option<u64>) {
        if let Some(limit) = limit {
            self.next_serial += 1;
            self.agents.insert(
                agent,
                Watched {
                    workspace: Arc::from(workspace),
                    limit,
                    serial: self.next_serial,
                    last: Instant::now(),
                    scanning: false,
                    rescan: false,
                    held: VecDeque::new(),
                },
            );
        }
    }

    /// Drops the agent, its held lines and the verdicts of its scans still running.
    pub(crate) fn forget(&mut self, agent: AgentId) {
        self.agents.remove(&agent);
    }

    /// Before a line goes to the agent: gives it back to be written now, or keeps it. A prompt
    /// (a turn starting) is kept until a scan started after it has finished, and so are the
    /// lines that follow it; [`Quotas::finished`] releases them.
    pub(crate) fn before_write(&mut self, agent: AgentId, line: Bytes) -> Option<Bytes> {
        let Some(watched) = self.agents.get_mut(&agent) else {
            return Some(line);
        };
        let prompt = is_prompt(&line);
        if watched.held.is_empty() && !prompt {
            return Some(line);
        }
        watched.held.push_back(line);
        if prompt && watched.scanning {
            watched.rescan = true;
        } else if prompt {
            self.request(agent, Instant::now());
        }
        None
    }

    /// On output of the agent: a scan is requested when the last one is older than
    /// [`CHECK_INTERVAL`] and none is running.
    pub(crate) fn on_output(&mut self, agent: AgentId, now: Instant) {
        let due = self.agents.get(&agent).is_some_and(|watched| {
            !watched.scanning && now.duration_since(watched.last) >= CHECK_INTERVAL
        });
        if due {
            self.request(agent, now);
        }
    }

    /// The verdicts of the scans finished since the last call, for agents still watched.
    pub(crate) fn finished(&mut self) -> Vec<Verdict> {
        let scanned = std::mem::take(&mut *lock(&self.finished));
        let mut verdicts = Vec::new();
        for Scanned {
            agent,
            serial,
            over,
        } in scanned
        {
            let Some(watched) = self.agents.get_mut(&agent) else {
                continue;
            };
            if watched.serial != serial {
                continue;
            }
            watched.scanning = false;
            if let Some(reason) = over {
                // Reported once; the agent is being stopped.
                self.agents.remove(&agent);
                verdicts.push(Verdict::Over(agent, reason));
            } else if std::mem::take(&mut watched.rescan) {
                self.request(agent, Instant::now());
            } else if !watched.held.is_empty() {
                verdicts.push(Verdict::Release(agent, watched.held.drain(..).collect()));
            }
        }
        verdicts
    }

    fn request(&mut self, agent: AgentId, now: Instant) {
        let Some(watched) = self.agents.get_mut(&agent) else {
            return;
        };
        watched.scanning = true;
        watched.last = now;
        let request = Request {
            agent,
            serial: watched.serial,
            workspace: Arc::clone(&watched.workspace),
            limit: watched.limit,
        };
        if self.scanner.is_none() {
            match start_scanner(Arc::clone(&self.finished), Arc::clone(&self.reports)) {
                Ok(scanner) => self.scanner = Some(scanner),
                Err(error) => {
                    tracing::error!(target: "agent", %error, "cannot start the quota scanner");
                }
            }
        }
        let sent = self
            .scanner
            .as_ref()
            .and_then(|scanner| scanner.requests.as_ref())
            .is_some_and(|requests| requests.send(request).is_ok());
        if !sent {
            // No scanner: the quota cannot be checked; the agent's lines are not held hostage.
            watched.scanning = false;
            watched.rescan = false;
            lock(&self.finished).push(Scanned {
                agent,
                serial: watched.serial,
                over: None,
            });
            self.reports.wake_adapter();
        }
    }
}

fn start_scanner(
    finished: Arc<Mutex<Vec<Scanned>>>,
    reports: Arc<Reports>,
) -> std::io::Result<Scanner> {
    let (requests, inbox) = channel::<Request>();
    let quit = Arc::new(AtomicBool::new(false));
    let quitting = Arc::clone(&quit);
    let thread = std::thread::Builder::new()
        .name("agent-quota".to_owned())
        .spawn(move || {
            for request in inbox {
                if quitting.load(Ordering::SeqCst) {
                    return;
                }
                let over = over_quota(&request.workspace, request.limit);
                lock(&finished).push(Scanned {
                    agent: request.agent,
                    serial: request.serial,
                    over,
                });
                reports.wake_adapter();
            }
        })?;
    Ok(Scanner {
        requests: Some(requests),
        quit,
        thread: Some(thread),
    })
}

/// Scans `workspace`: the reason it is over `limit`, if it is.
fn over_quota(workspace: &Path, limit: u64) -> Option<String> {
    match usage(workspace, limit, MAX_ENTRIES) {
        Usage::Within(_) => None,
        Usage::Over(bytes) => Some(format!(
            "the workspace is over its quota ({bytes} bytes or more, the limit is {limit})"
        )),
        Usage::TooManyEntries => Some(format!(
            "the workspace is over its quota (more than {MAX_ENTRIES} files and directories)"
        )),
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

    /// Counts wake-ups and records the thread each came from.
    #[derive(Default)]
    struct Woken {
        threads: Mutex<Vec<String>>,
        arrived: std::sync::Condvar,
    }

    impl diminuendo_core::Wake for Woken {
        fn wake(&self) {
            let name = std::thread::current().name().unwrap_or("").to_owned();
            lock(&self.threads).push(name);
            self.arrived.notify_all();
        }
    }

    struct Fixture {
        quotas: Quotas,
        woken: Arc<Woken>,
        reports: Arc<Reports>,
    }

    impl Fixture {
        fn new() -> Fixture {
            let woken = Arc::new(Woken::default());
            let reports = Arc::new(Reports::new(16, woken.clone()));
            Fixture {
                quotas: Quotas::new(Arc::clone(&reports)),
                woken,
                reports,
            }
        }

        /// Waits (bounded) for the scanner's wake-up, then takes the verdicts, as `drain` does.
        fn verdicts(&mut self) -> Vec<Verdict> {
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut threads = lock(&self.woken.threads);
            while threads.is_empty() {
                let left = deadline.saturating_duration_since(Instant::now());
                assert!(!left.is_zero(), "no verdict in time");
                threads = self.woken.arrived.wait_timeout(threads, left).unwrap().0;
            }
            // Every wake-up came from the scanner thread: no scan ran on this thread.
            assert!(
                threads.iter().all(|name| name == "agent-quota"),
                "{threads:?}"
            );
            threads.clear();
            drop(threads);
            self.reports
                .wake_pending
                .store(false, std::sync::atomic::Ordering::SeqCst);
            self.quotas.finished()
        }

        fn scanning(&self, agent: AgentId) -> bool {
            self.quotas.agents.get(&agent).is_some_and(|w| w.scanning)
        }
    }

    #[test]
    fn a_turn_is_scanned_at_most_every_interval_one_scan_at_a_time_off_the_callers_thread() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = Fixture::new();
        let agent = AgentId(1);
        f.quotas.watch(agent, dir.path(), Some(64 * 1024));
        let start = Instant::now();
        f.quotas.on_output(agent, start + CHECK_INTERVAL);
        assert!(f.scanning(agent));
        assert_eq!(f.verdicts(), []);
        std::fs::write(dir.path().join("big"), vec![1u8; 128 * 1024]).unwrap();
        // Scanned just now: not again before the interval has passed.
        f.quotas.on_output(agent, start + CHECK_INTERVAL * 3 / 2);
        assert!(!f.scanning(agent));
        f.quotas.on_output(agent, start + CHECK_INTERVAL * 2);
        assert!(f.scanning(agent));
        // Never two scans at once for one agent.
        f.quotas.on_output(agent, start + CHECK_INTERVAL * 5);
        assert_eq!(f.quotas.agents[&agent].last, start + CHECK_INTERVAL * 2);
        match f.verdicts().as_slice() {
            [Verdict::Over(id, reason)] => {
                assert_eq!(*id, agent);
                assert!(reason.contains("over its quota"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        // Reported once.
        f.quotas.on_output(agent, start + CHECK_INTERVAL * 9);
        assert!(!f.scanning(agent));
        assert!(f.quotas.agents.is_empty());
    }

    #[test]
    fn a_prompt_and_the_lines_after_it_wait_for_its_scan() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("big"), vec![1u8; 128 * 1024]).unwrap();
        let mut f = Fixture::new();
        let agent = AgentId(1);
        let prompt = Bytes::from_static(
            br#"{"id":2,"jsonrpc":"2.0","method":"session/prompt","params":{}}"#,
        );
        let reply = Bytes::from_static(b"{\"id\":1,\"result\":{}}");

        // Over the quota: the prompt is never released.
        f.quotas.watch(agent, dir.path(), Some(64 * 1024));
        assert_eq!(
            f.quotas.before_write(agent, reply.clone()),
            Some(reply.clone())
        );
        assert_eq!(f.quotas.before_write(agent, prompt.clone()), None);
        assert_eq!(f.quotas.before_write(agent, reply.clone()), None);
        assert!(matches!(f.verdicts().as_slice(), [Verdict::Over(id, _)] if *id == agent));

        // Within it: released in order once scanned.
        f.quotas.watch(agent, dir.path(), Some(1024 * 1024));
        assert_eq!(f.quotas.before_write(agent, prompt.clone()), None);
        assert_eq!(f.quotas.before_write(agent, reply.clone()), None);
        assert_eq!(
            f.verdicts(),
            [Verdict::Release(agent, vec![prompt.clone(), reply.clone()])]
        );
        assert_eq!(
            f.quotas.before_write(agent, reply.clone()),
            Some(reply.clone())
        );

        // A prompt that comes while an output scan runs waits for a scan of its own.
        f.quotas.on_output(agent, Instant::now() + CHECK_INTERVAL);
        assert!(f.scanning(agent));
        assert_eq!(f.quotas.before_write(agent, prompt.clone()), None);
        assert_eq!(f.verdicts(), []);
        assert!(f.scanning(agent));
        assert_eq!(
            f.verdicts(),
            [Verdict::Release(agent, vec![prompt.clone()])]
        );

        // Forgotten while scanning: the verdict is dropped.
        f.quotas.watch(agent, dir.path(), Some(64 * 1024));
        assert_eq!(f.quotas.before_write(agent, prompt.clone()), None);
        f.quotas.forget(agent);
        assert_eq!(f.verdicts(), []);
        // A new watch of the same id does not take an earlier watch's verdict.
        f.quotas.watch(agent, dir.path(), Some(64 * 1024));
        assert_eq!(f.quotas.before_write(agent, prompt.clone()), None);
        let old_serial = f.quotas.agents[&agent].serial;
        f.quotas.forget(agent);
        f.quotas.watch(agent, dir.path(), Some(1024 * 1024));
        assert_ne!(f.quotas.agents[&agent].serial, old_serial);
        assert_eq!(f.verdicts(), []);
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
