//! One `pids` cgroup per agent under one per gateway: the process limit of an agent and its
//! descendants (`Limits::processes`) when the gateway can create cgroups.
//!
//! The gateway's cgroup (`diminuendo-<pid>`) is probed and created once, at the first spawn,
//! under the `pids` directory of the gateway's own cgroup (cgroup v1, or v2 when `pids` is
//! enabled for its children); cgroups of gateways that are gone are removed then. Each agent
//! gets `agent-<host>-<agent>` inside it, with `pids.max` set, which the child joins before
//! `exec` (`sandbox::Confinement::apply`); the host removes it when the agent's `Exited` is
//! drained, and retries the removals that failed at later spawns and at shutdown. Without a
//! cgroup the limit falls back to `RLIMIT_NPROC` over the tasks running at the spawn
//! ([`tasks_running`]).

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, PoisonError};

/// The gateway's own `pids` cgroup, parent of its agents' (`diminuendo-<pid>` under the `pids`
/// directory of the gateway's cgroup: cgroup v1, or v2 when `pids` is enabled for its
/// children), created at the first spawn; `None` when the gateway cannot create one. Empty
/// cgroups left by gateways that are gone are removed first.
fn gateway_cgroup() -> Option<&'static Path> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        for line in own.lines() {
            let mut fields = line.splitn(3, ':');
            let (Some(_), Some(controllers), Some(path)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            let relative = path.trim_start_matches('/');
            let base = if controllers.split(',').any(|c| c == "pids") {
                Path::new("/sys/fs/cgroup/pids").join(relative)
            } else if controllers.is_empty() {
                let v2 = Path::new("/sys/fs/cgroup").join(relative);
                let enabled = std::fs::read_to_string(v2.join("cgroup.subtree_control"))
                    .is_ok_and(|text| text.split_whitespace().any(|c| c == "pids"));
                if !enabled {
                    continue;
                }
                v2
            } else {
                continue;
            };
            if let Some(dir) = make_gateway_cgroup(&base) {
                return Some(dir);
            }
        }
        None
    })
    .as_deref()
}

fn make_gateway_cgroup(base: &Path) -> Option<PathBuf> {
    remove_stale_cgroups(base);
    let dir = base.join(format!("diminuendo-{}", std::process::id()));
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
        Err(_) => return None,
    }
    // On cgroup v2 the agents' cgroups need `pids` enabled here (the file is v2's only).
    let control = dir.join("cgroup.subtree_control");
    let enabled = !control.exists() || std::fs::write(&control, "+pids").is_ok();
    let probe = dir.join("probe");
    let usable = enabled
        && std::fs::create_dir(&probe).is_ok()
        && probe.join("pids.max").exists()
        && probe.join("cgroup.procs").exists();
    let _ = std::fs::remove_dir(&probe);
    if usable {
        Some(dir)
    } else {
        let _ = std::fs::remove_dir(&dir);
        None
    }
}

/// Removes the cgroups of gateways that no longer run (`diminuendo-<pid>…` whose pid is gone),
/// and the agents' cgroups inside them; a cgroup that still holds a process stays.
fn remove_stale_cgroups(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten().take(10_000) {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("diminuendo-")) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or_default();
        let alive = pid.parse::<u32>().map_or(true, |pid| {
            pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists()
        });
        if alive {
            continue;
        }
        if let Ok(agents) = std::fs::read_dir(entry.path()) {
            for agent in agents.flatten() {
                if agent.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = std::fs::remove_dir(agent.path());
                }
            }
        }
        let _ = std::fs::remove_dir(entry.path());
    }
}

/// The agents' cgroups whose removal failed (a descendant was still inside); each spawn and
/// each shutdown tries again.
static CGROUPS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Creates the agent's own `pids` cgroup with `pids.max = max` and returns its `cgroup.procs`,
/// or `None` when the gateway cannot (the limit then falls back to `RLIMIT_NPROC`).
pub(crate) fn pids_cgroup(name: &str, max: u64) -> Option<CString> {
    let parent = gateway_cgroup()?;
    sweep_cgroups();
    let dir = parent.join(name);
    if let Err(error) = std::fs::create_dir(&dir) {
        if error.kind() != io::ErrorKind::AlreadyExists {
            return None;
        }
    }
    if std::fs::write(dir.join("pids.max"), max.to_string()).is_err() {
        let _ = std::fs::remove_dir(&dir);
        return None;
    }
    CString::new(dir.join("cgroup.procs").as_os_str().as_bytes()).ok()
}

/// Removes an agent's cgroup once its process has been reaped (`name` as given to
/// [`Plan::cgroup_name`](crate::sandbox::Plan::cgroup_name)); one that still holds a descendant
/// is retried at later spawns and at shutdown.
pub(crate) fn release_cgroup(name: &str) {
    let Some(parent) = gateway_cgroup() else {
        return;
    };
    let dir = parent.join(name);
    match std::fs::remove_dir(&dir) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(_) => CGROUPS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(dir),
    }
}

/// The cgroup name of an agent of the host numbered `host` ([`next_host_id`]).
pub(crate) fn cgroup_name(host: u64, agent: diminuendo_core::AgentId) -> String {
    format!("agent-{host}-{}", agent.0)
}

/// A number for each agent host of the process (several hosts, as in tests, number their
/// agents alike; their cgroups must not collide).
pub(crate) fn next_host_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Retries the removal of the agents' cgroups that still held a process.
pub(crate) fn sweep_cgroups() {
    let mut cgroups = CGROUPS.lock().unwrap_or_else(PoisonError::into_inner);
    cgroups.retain(|dir| match std::fs::remove_dir(dir) {
        Ok(()) => false,
        Err(error) => error.kind() != io::ErrorKind::NotFound,
    });
}

/// Tasks (processes and threads) running on the machine, from `/proc/loadavg`: an upper bound
/// of those of any one user id.
pub(crate) fn tasks_running() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let field = text.split_whitespace().nth(3)?;
    field.split_once('/')?.1.parse().ok()
}
