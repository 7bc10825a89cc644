//! The confinement of one agent process, applied in the child between `fork` and `exec`.
//!
//! Everything that allocates, opens paths or compiles filters is done in the parent
//! (`Confinement::prepare`); the child (`Confinement::apply`) only makes system calls with
//! what was prepared (`prctl`, `setrlimit`, `open`/`write` of a prepared path, `capset`,
//! `landlock_restrict_self`, `seccomp`), since the gateway is multi-threaded and only
//! async-signal-safe work is allowed after `fork`.
//!
//! What the child does, in order:
//!
//! 1. `PR_SET_PDEATHSIG(SIGKILL)`, then checks that its parent is still the gateway (so no agent
//!    outlives a killed gateway; the signal follows the *thread* that spawned the agent, which is
//!    the adapter's event-loop thread and lives as long as the gateway).
//! 2. Joins its own `pids` cgroup (when the gateway can create one; `cgroup.rs`), whose
//!    `pids.max` is the agent type's `processes` limit.
//! 3. In `landlock` mode: drops every capability (bounding, ambient, effective, permitted,
//!    inheritable), so an agent of a gateway run as root execs without any; then restricts
//!    itself with the prepared Landlock ruleset (which sets `no_new_privs`) and refuses to go on
//!    unless the kernel reports the ruleset fully enforced.
//! 4. With `network = "deny"`: installs the seccomp filter.
//! 5. Sets the resource limits (`RLIMIT_AS`, `RLIMIT_NOFILE`, `RLIMIT_FSIZE`, `RLIMIT_CPU`, and
//!    `RLIMIT_NPROC` when no cgroup holds the process count), last: until `exec` the child holds
//!    the gateway's descriptors, numbered above an agent's `RLIMIT_NOFILE` once the gateway has
//!    many agents, so nothing may open a descriptor after it.

use std::ffi::CString;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use landlock::{
    path_beneath_rules, Access, AccessFs, CompatLevel, Compatible, PathBeneath, PathFd,
    RestrictionStatus, Ruleset, RulesetAttr, RulesetCreated, RulesetCreatedAttr, RulesetStatus,
    Scope, ABI,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

use crate::cgroup;

/// How an agent type is confined.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SandboxMode {
    /// The built-in sandbox: Landlock, no capabilities, limits (the default).
    #[default]
    Landlock,
    /// No sandbox (explicit; the gateway warns at start). Limits and the clean environment
    /// still apply.
    Off,
    /// The command is a launcher (bwrap, docker, kubectl, ssh) that confines the agent itself;
    /// the host applies only the clean environment and the limits to the launcher.
    Launcher,
}

impl SandboxMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxMode::Landlock => "landlock",
            SandboxMode::Off => "off",
            SandboxMode::Launcher => "launcher",
        }
    }

    pub fn parse(text: &str) -> Option<SandboxMode> {
        match text {
            "landlock" => Some(SandboxMode::Landlock),
            "off" => Some(SandboxMode::Off),
            "launcher" => Some(SandboxMode::Launcher),
            _ => None,
        }
    }
}

/// Whether an agent may open network sockets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NetworkPolicy {
    /// Any socket (the default: agents call their model's API).
    #[default]
    Allow,
    /// Only `AF_UNIX` sockets; no io_uring (a seccomp filter).
    Deny,
}

impl NetworkPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkPolicy::Allow => "allow",
            NetworkPolicy::Deny => "deny",
        }
    }

    pub fn parse(text: &str) -> Option<NetworkPolicy> {
        match text {
            "allow" => Some(NetworkPolicy::Allow),
            "deny" => Some(NetworkPolicy::Deny),
            _ => None,
        }
    }
}

/// Resource limits of one agent process (and, for `processes`, its descendants). `None` is
/// unlimited. See [`Limits::default`] for the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `RLIMIT_AS`, bytes of virtual address space per process.
    pub address_space: Option<u64>,
    /// `RLIMIT_NOFILE`, open file descriptors per process.
    pub open_files: Option<u64>,
    /// Processes and threads of the agent and its descendants together: the `pids.max` of its
    /// own cgroup when the gateway can create one, else `RLIMIT_NPROC` set to the tasks running
    /// at the spawn plus this (`RLIMIT_NPROC` counts every task of the user id; see the README).
    pub processes: Option<u64>,
    /// `RLIMIT_FSIZE`, the largest file the agent may write, in bytes.
    pub file_size: Option<u64>,
    /// `RLIMIT_CPU`, CPU seconds per process over its lifetime (SIGXCPU, then SIGKILL 5 s later).
    pub cpu_seconds: Option<u64>,
    /// The workspace's size in bytes, checked before each prompt and every few seconds during
    /// a turn; over it, the turn ends with a `turn_error`.
    pub workspace_bytes: Option<u64>,
}

impl Default for Limits {
    /// 32 GiB of address space (V8 and WebAssembly reserve far more than they use), 1024 open
    /// files, 256 processes and threads, 1 GiB per file, 1 CPU hour, a 1 GiB workspace.
    fn default() -> Self {
        Limits {
            address_space: Some(32 << 30),
            open_files: Some(1024),
            processes: Some(256),
            file_size: Some(1 << 30),
            cpu_seconds: Some(3600),
            workspace_bytes: Some(1 << 30),
        }
    }
}

/// What [`Confinement::prepare`] needs to know about one agent.
pub(crate) struct Plan<'a> {
    pub mode: SandboxMode,
    pub network: NetworkPolicy,
    pub limits: Limits,
    /// Read and execute (the agent's install directory and the operator's `read_paths`).
    pub read_paths: &'a [PathBuf],
    /// Read and write: the workspace first, then the operator's `write_paths`.
    pub write_paths: &'a [PathBuf],
    /// A name for the agent's cgroup, unique among the gateway's live agents
    /// ([`cgroup::cgroup_name`]).
    pub cgroup_name: &'a str,
}

#[cfg(target_env = "gnu")]
type Resource = libc::__rlimit_resource_t;
#[cfg(not(target_env = "gnu"))]
type Resource = libc::c_int;

/// Everything the child applies, prepared in the parent.
pub(crate) struct Confinement {
    parent: libc::pid_t,
    /// `…/cgroup.procs` of the agent's own cgroup.
    cgroup_procs: Option<CString>,
    rlimits: Vec<(Resource, libc::rlim_t)>,
    drop_capabilities: bool,
    landlock: Option<RulesetCreated>,
    /// A second descriptor of the same ruleset, to add the agent's own `/proc/<pid>` in the
    /// child (its pid is known only there).
    landlock_fd: Option<std::os::fd::OwnedFd>,
    seccomp: Option<&'static BpfProgram>,
}

/// System directories an agent may read and execute from.
const SYSTEM_READ: &[&str] = &[
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/opt",
    "/nix/store",
];

/// Files of `/etc` an agent may read (not all of `/etc`: a gateway run as root would otherwise
/// hand its agents `/etc/shadow`).
const ETC_READ: &[&str] = &[
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/alternatives",
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
    "/etc/hosts",
    "/etc/host.conf",
    "/etc/resolv.conf",
    "/etc/gai.conf",
    "/etc/services",
    "/etc/protocols",
    "/etc/localtime",
    "/etc/timezone",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/pki",
    "/etc/mime.types",
    "/etc/os-release",
    "/etc/debian_version",
    "/etc/terminfo",
    "/etc/inputrc",
    "/etc/gitconfig",
    "/etc/python3",
];

/// Kernel information files an agent may read. `/proc` itself is not granted: the gateway's
/// `/proc/<pid>` (its command line, environment, open files) stays out of reach, and so does
/// every other process's but the agent's own (`allow_own_proc`).
const PROC_READ: &[&str] = &[
    "/proc/cpuinfo",
    "/proc/meminfo",
    "/proc/stat",
    "/proc/loadavg",
    "/proc/uptime",
    "/proc/version",
    "/proc/filesystems",
    "/proc/sys/kernel",
    "/proc/sys/vm/overcommit_memory",
    "/sys/devices/system/cpu",
    "/sys/fs/cgroup",
];

/// Device files an agent may read and write (not `/dev/tty`: that would be the gateway's
/// terminal; agents talk over pipes). No ioctl on them (`IoctlDev` is not granted).
const DEV_READ_WRITE: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
];

/// The Landlock ABI whose file-system rights the ruleset handles (truncate, refer and ioctl on
/// devices included), and the ABI of its scopes (signals and abstract Unix sockets).
const FS_ABI: ABI = ABI::V5;
const SCOPE_ABI: ABI = ABI::V6;

impl Confinement {
    /// Builds everything in the parent. The error is a short reason for `SpawnFailed`.
    pub(crate) fn prepare(plan: &Plan<'_>) -> Result<Confinement, String> {
        let landlock = match plan.mode {
            SandboxMode::Landlock => {
                landlock_support()?;
                Some(landlock_ruleset(plan.read_paths, plan.write_paths)?)
            }
            SandboxMode::Off | SandboxMode::Launcher => None,
        };
        let seccomp = match plan.network {
            NetworkPolicy::Allow => None,
            NetworkPolicy::Deny => Some(network_filter()?),
        };
        let cgroup_procs = match plan.limits.processes {
            Some(max) => cgroup::pids_cgroup(plan.cgroup_name, max),
            None => None,
        };
        let mut rlimits = Vec::with_capacity(5);
        let limits = plan.limits;
        for (resource, value) in [
            (libc::RLIMIT_AS, limits.address_space),
            (libc::RLIMIT_NOFILE, limits.open_files),
            (libc::RLIMIT_FSIZE, limits.file_size),
        ] {
            if let Some(value) = value {
                rlimits.push((resource, value as libc::rlim_t));
            }
        }
        if cgroup_procs.is_none() {
            if let Some(value) = limits.processes {
                // RLIMIT_NPROC counts every task of the user id, the gateway's and its other
                // agents' included: a bare `value` could stop an agent from starting a single
                // thread. Bound the growth instead: the tasks running now, plus `value`.
                let now = cgroup::tasks_running().unwrap_or(0);
                rlimits.push((
                    libc::RLIMIT_NPROC,
                    now.saturating_add(value) as libc::rlim_t,
                ));
            }
        }
        if let Some(value) = limits.cpu_seconds {
            rlimits.push((libc::RLIMIT_CPU, value as libc::rlim_t));
        }
        Ok(Confinement {
            parent: std::process::id() as libc::pid_t,
            cgroup_procs,
            rlimits,
            drop_capabilities: plan.mode == SandboxMode::Landlock,
            landlock_fd: landlock
                .as_ref()
                .and_then(|ruleset| ruleset.try_clone().ok())
                .and_then(Option::<std::os::fd::OwnedFd>::from),
            landlock,
            seccomp,
        })
    }

    /// Runs in the child after `fork`, before `exec`: system calls on prepared data only (no
    /// allocation, no locks).
    pub(crate) fn apply(&mut self) -> io::Result<()> {
        // SAFETY: prctl, getppid, open, write, close, setrlimit, geteuid and capset are
        // async-signal-safe system calls given valid pointers to data prepared before fork.
        unsafe {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != self.parent {
                // The gateway died between fork and prctl.
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            if let Some(procs) = &self.cgroup_procs {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                // "0" moves the writing process.
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if written != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            if self.drop_capabilities {
                drop_capabilities()?;
            }
        }
        if let Some(fd) = &self.landlock_fd {
            // SAFETY: getpid, open, landlock_add_rule and close on a stack buffer.
            unsafe { allow_own_proc(fd.as_raw_fd())? };
        }
        if let Some(ruleset) = self.landlock.take() {
            let status = ruleset
                .restrict_self()
                .map_err(|_| io::Error::from_raw_os_error(libc::EPERM))?;
            if !fully_enforced(&status) {
                return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
            }
        }
        if let Some(filter) = self.seccomp {
            seccompiler::apply_filter(filter)
                .map_err(|_| io::Error::from_raw_os_error(libc::EPERM))?;
        }
        // The limits come last: `RLIMIT_NOFILE` bounds the number of the next descriptor, and
        // the child of a gateway with many agents holds descriptors above the agent's limit
        // until `exec` closes them, so every `open` above (the cgroup, the `/proc/<pid>` rule)
        // must happen first. Lowering a limit needs no capability.
        for &(resource, value) in &self.rlimits {
            let limit = libc::rlimit {
                rlim_cur: value,
                rlim_max: if resource == libc::RLIMIT_CPU {
                    value.saturating_add(5)
                } else {
                    value
                },
            };
            // SAFETY: setrlimit is async-signal-safe; `limit` lives on this stack.
            if unsafe { libc::setrlimit(resource, &limit) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

fn fully_enforced(status: &RestrictionStatus) -> bool {
    status.ruleset == RulesetStatus::FullyEnforced && status.no_new_privs
}

/// Grants the calling process read access to its own `/proc/<pid>` (so `/proc/self` works for
/// the agent itself, not for its children, nor for any other process).
///
/// # Safety
/// Only system calls on a stack buffer; callable between fork and exec.
unsafe fn allow_own_proc(ruleset: libc::c_int) -> io::Result<()> {
    #[repr(C, packed)]
    struct PathBeneathAttr {
        allowed_access: u64,
        parent_fd: i32,
    }
    const RULE_PATH_BENEATH: libc::c_int = 1;
    const READ_FILE: u64 = 1 << 2;
    const READ_DIR: u64 = 1 << 3;
    let mut path = [0u8; 32];
    let prefix = b"/proc/";
    path[..prefix.len()].copy_from_slice(prefix);
    let mut digits = [0u8; 12];
    let mut pid = libc::getpid() as u32;
    let mut count = 0;
    loop {
        digits[count] = b'0' + (pid % 10) as u8;
        count += 1;
        pid /= 10;
        if pid == 0 {
            break;
        }
    }
    for i in 0..count {
        path[prefix.len() + i] = digits[count - 1 - i];
    }
    let fd = libc::open(
        path.as_ptr().cast(),
        libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
    );
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let attr = PathBeneathAttr {
        allowed_access: READ_FILE | READ_DIR,
        parent_fd: fd,
    };
    let added = libc::syscall(
        libc::SYS_landlock_add_rule,
        ruleset,
        RULE_PATH_BENEATH,
        &attr as *const PathBeneathAttr,
        0u32,
    );
    libc::close(fd);
    if added != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Drops every capability for good: the bounding set (so an exec as root gains none back), the
/// ambient set, then effective, permitted and inheritable.
///
/// # Safety
/// Only system calls; callable between fork and exec.
unsafe fn drop_capabilities() -> io::Result<()> {
    let root = libc::geteuid() == 0;
    for cap in 0..64 {
        if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 {
            let errno = *libc::__errno_location();
            if errno == libc::EINVAL {
                break; // past the last capability this kernel knows
            }
            if root {
                return Err(io::Error::from_raw_os_error(errno));
            }
            // Without CAP_SETPCAP the bounding set cannot shrink, and there is nothing in it
            // to gain back without root or file capabilities (no_new_privs blocks the latter).
            break;
        }
    }
    libc::prctl(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL,
        0,
        0,
        0,
    );
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    if libc::syscall(libc::SYS_capset, &header, data.as_ptr()) != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The Landlock ruleset: read and execute on the system, the agent's install directory and
/// `read`; read and write on `write` (the workspace first); a few device files; nothing else.
/// Every right is a hard requirement: a kernel that cannot enforce one makes this fail, and
/// the agent does not start.
fn landlock_ruleset(read: &[PathBuf], write: &[PathBuf]) -> Result<RulesetCreated, String> {
    let fail =
        |error: landlock::RulesetError| format!("the Landlock sandbox is unavailable: {error}");
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessFs::from_all(FS_ABI))
        .map_err(fail)?
        .scope(Scope::from_all(SCOPE_ABI))
        .map_err(fail)?
        .create()
        .map_err(fail)?
        // `no_new_privs` is on by default: restrict_self sets it.
        ;
    let system = SYSTEM_READ.iter().chain(ETC_READ).chain(PROC_READ);
    ruleset = ruleset
        .add_rules(path_beneath_rules(system, AccessFs::from_read(FS_ABI)))
        .map_err(fail)?
        .add_rules(path_beneath_rules(
            DEV_READ_WRITE,
            AccessFs::from_read(FS_ABI) | AccessFs::WriteFile,
        ))
        .map_err(fail)?;
    for path in read {
        ruleset = ruleset
            .add_rule(rule(path, AccessFs::from_read(FS_ABI))?)
            .map_err(fail)?;
    }
    for path in write {
        ruleset = ruleset
            .add_rule(rule(path, AccessFs::from_all(FS_ABI))?)
            .map_err(fail)?;
    }
    Ok(ruleset)
}

/// A rule for a configured path, which must exist (a typo must not silently shrink the
/// sandbox's grant, nor be ignored).
fn rule(path: &Path, access: landlock::BitFlags<AccessFs>) -> Result<PathBeneath<PathFd>, String> {
    let metadata = std::fs::metadata(path)
        .map_err(|error| format!("cannot open {} for the sandbox: {error}", path.display()))?;
    let fd = PathFd::new(path)
        .map_err(|error| format!("cannot open {} for the sandbox: {error}", path.display()))?;
    let access = if metadata.is_dir() {
        access
    } else {
        access & AccessFs::from_file(FS_ABI)
    };
    Ok(PathBeneath::new(fd, access))
}

/// The `network = "deny"` filter, compiled once: `socket()` of any family but `AF_UNIX` fails
/// with `EACCES`, and so do the io_uring calls (which could open sockets without `socket()`).
fn network_filter() -> Result<&'static BpfProgram, String> {
    static FILTER: OnceLock<Result<BpfProgram, String>> = OnceLock::new();
    FILTER
        .get_or_init(|| {
            let arch =
                std::env::consts::ARCH
                    .try_into()
                    .map_err(|error: seccompiler::BackendError| {
                        format!("cannot build the network filter: {error}")
                    })?;
            let not_unix = SeccompRule::new(vec![SeccompCondition::new(
                0,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Ne,
                libc::AF_UNIX as u64,
            )
            .map_err(|error| format!("cannot build the network filter: {error}"))?])
            .map_err(|error| format!("cannot build the network filter: {error}"))?;
            let rules = [
                (libc::SYS_socket, vec![not_unix]),
                (libc::SYS_io_uring_setup, vec![]),
                (libc::SYS_io_uring_enter, vec![]),
                (libc::SYS_io_uring_register, vec![]),
            ]
            .into_iter()
            .collect();
            let filter = SeccompFilter::new(
                rules,
                SeccompAction::Allow,
                SeccompAction::Errno(libc::EACCES as u32),
                arch,
            )
            .map_err(|error| format!("cannot build the network filter: {error}"))?;
            BpfProgram::try_from(filter)
                .map_err(|error| format!("cannot build the network filter: {error}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// The Landlock ABI version the running kernel supports (0 when it has none or disabled it).
pub fn landlock_abi() -> i64 {
    // SAFETY: landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION) only returns
    // the ABI version.
    let version = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32,
        )
    };
    version.max(0)
}

/// Whether the running kernel can enforce the built-in sandbox (for the start-up check and
/// `/health`); the reason when it cannot.
pub fn landlock_support() -> Result<(), String> {
    let abi = landlock_abi();
    if abi < SCOPE_ABI as i64 {
        return Err(format!(
            "the kernel's Landlock ABI is {abi}; the sandbox needs {} (Linux 6.12 or later)",
            SCOPE_ABI as i64
        ));
    }
    Ok(())
}
