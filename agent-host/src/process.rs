//! Starting one agent process: spawn the `Command` that `launch::command` built (the clean
//! environment and the sandbox), make the gateway's ends of its pipes non-blocking, and open a
//! pidfd that tells the poller when it exits.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};

/// A started agent process, its pipes (non-blocking) and its pidfd. Nothing reaps it yet.
pub(crate) struct Process {
    pub child: Child,
    pub pid: i32,
    pub stdin: ChildStdin,
    pub stdout: ChildStdout,
    pub stderr: ChildStderr,
    /// Readable once the process has exited (it stays a zombie until reaped).
    pub pidfd: OwnedFd,
}

impl Process {
    /// Starts the agent. The error is a short reason for `SpawnFailed`; a process that was
    /// started but cannot be driven is killed and reaped before it is returned.
    pub(crate) fn start(mut command: Command) -> Result<Process, String> {
        let mut child = command
            .spawn()
            .map_err(|error| format!("cannot start the agent: {error}"))?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            kill_and_reap(&mut child);
            return Err("cannot start the agent: no pipes".to_owned());
        };
        let Ok(pid) = i32::try_from(child.id()) else {
            kill_and_reap(&mut child);
            return Err("cannot start the agent: bad pid".to_owned());
        };
        let prepared = set_nonblocking(stdin.as_raw_fd())
            .and_then(|()| set_nonblocking(stdout.as_raw_fd()))
            .and_then(|()| set_nonblocking(stderr.as_raw_fd()))
            .map_err(|error| format!("cannot set up the agent's pipes: {error}"))
            .and_then(|()| {
                pidfd_open(pid).map_err(|error| format!("cannot watch the agent (pidfd): {error}"))
            });
        match prepared {
            Ok(pidfd) => Ok(Process {
                child,
                pid,
                stdin,
                stdout,
                stderr,
                pidfd,
            }),
            Err(reason) => {
                kill_and_reap(&mut child);
                Err(reason)
            }
        }
    }
}

fn kill_and_reap(child: &mut Child) {
    // Not reaped yet, so the pid (and the group id) still name this child.
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn set_nonblocking(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor this process owns, with integer arguments only.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// `pidfd_open(2)` (Linux 5.3): a descriptor for the process that becomes readable when it
/// exits. Opened while the child is unreaped, so it names our child and no recycled pid.
fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: a plain system call with integer arguments; PIDFD_NONBLOCK is not needed (the fd
    // is only polled, never read). The result is a new descriptor owned by nobody else.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = RawFd::try_from(fd).map_err(|_| std::io::Error::other("descriptor out of range"))?;
    // SAFETY: `fd` was just returned by the kernel and is owned by no one else; pidfds are
    // opened close-on-exec.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
