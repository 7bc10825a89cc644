//! One agent as the poller drives it: its pipes (stdin written from the admitted lines, stdout
//! cut into lines and handed to the host in batches, stderr logged line by line under a rate
//! limit), its reaping, and the signals sent to its process group. The poll loop
//! (`super::Poller`) decides when; these functions do the work for one agent at a time.

use std::collections::VecDeque;
use std::io::{IoSlice, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use diminuendo_core::AgentId;
use mio::unix::SourceFd;
use mio::Registry;
use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use super::{Settings, StdinBudget};
use crate::reports::Reports;
use crate::stderr::StderrLimiter;
use crate::AgentReport;

/// Longest stderr line logged (with its `'\n'`); the rest of the line is dropped.
const MAX_STDERR_LINE: usize = 4096;
/// Reads of one pipe per turn of the loop before the other agents get theirs.
const READS_PER_TURN: usize = 4;
/// Lines handed to one `writev`.
const IOVECS: usize = 64;

/// One agent, as the poller sees it.
pub(super) struct Entry {
    pub(super) id: AgentId,
    pub(super) session_id: String,
    pub(super) child: Child,
    /// The agent's process group (its pid). Signalled only while `status` is `None`.
    pub(super) pgid: Pid,
    pub(super) budget: Arc<StdinBudget>,
    pub(super) stdin: Option<ChildStdin>,
    /// Lines admitted for stdin; the first `written` bytes of the front one are in the pipe.
    pub(super) outgoing: VecDeque<Bytes>,
    pub(super) written: usize,
    pub(super) writable: bool,
    pub(super) stdout: Option<ChildStdout>,
    pub(super) stdout_ready: bool,
    /// The writer side hung up (end of file comes once the pipe is empty).
    pub(super) stdout_closed: bool,
    /// The start of a line whose `'\n'` has not been read yet.
    pub(super) line: Vec<u8>,
    pub(super) stderr: Option<ChildStderr>,
    pub(super) stderr_ready: bool,
    pub(super) stderr_closed: bool,
    pub(super) err_line: Vec<u8>,
    /// Dropping the rest of a stderr line over `MAX_STDERR_LINE`.
    pub(super) err_skipping: bool,
    pub(super) limiter: StderrLimiter,
    pub(super) pidfd: Option<OwnedFd>,
    /// The pidfd said the process exited; it is reaped on the next service.
    pub(super) exited: bool,
    /// `Some(exit code or None)` once reaped. From then on no signal may be sent.
    pub(super) status: Option<Option<i32>>,
    pub(super) stopping: bool,
    pub(super) kill_at: Option<Instant>,
    /// Reports waiting for room in the report queue; while any wait, stdout is not read.
    pub(super) held: Vec<AgentReport>,
    /// `Exited` has been handed over (or discarded when quitting).
    pub(super) finished: bool,
    pub(super) in_ready: bool,
}

/// The poller's state apart from the agents (so both can be borrowed at once).
pub(super) struct Io {
    pub(super) settings: Settings,
    pub(super) reports: Arc<Reports>,
    pub(super) buffer: Box<[u8]>,
    /// Agents with held reports, oldest first.
    pub(super) blocked: Vec<usize>,
    /// Agents that may have a kill deadline.
    pub(super) timed: Vec<usize>,
    pub(super) quitting: bool,
}

pub(super) fn deregister(registry: &Registry, fd: &impl AsRawFd) {
    let _ = registry.deregister(&mut SourceFd(&fd.as_raw_fd()));
}

/// Signals the agent's process group, unless it has been reaped (then its pid may belong to
/// someone else). Only the poller thread signals and reaps, so nothing reaps in between.
pub(super) fn signal(entry: &Entry, signal: Signal) {
    if entry.status.is_some() {
        return;
    }
    match killpg(entry.pgid, signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(error) => {
            tracing::warn!(target: "agent", agent = entry.id.0, session = %entry.session_id,
                %error, ?signal, "cannot signal the agent");
        }
    }
}

pub(super) fn close_stdin(entry: &mut Entry, registry: &Registry) {
    entry.budget.closed.store(true, Ordering::SeqCst);
    entry.budget.pending.store(0, Ordering::SeqCst);
    entry.outgoing = VecDeque::new();
    entry.written = 0;
    if let Some(stdin) = entry.stdin.take() {
        deregister(registry, &stdin);
    }
}

/// Hands a batch to the host (or holds it while the queue is full). When quitting, nobody
/// listens: reports are dropped.
fn send(entry: &mut Entry, key: usize, batch: Vec<AgentReport>, io: &mut Io) {
    if io.quitting || batch.is_empty() {
        return;
    }
    if !entry.held.is_empty() {
        entry.held.extend(batch);
        return;
    }
    if let Err(batch) = io.reports.try_send(batch) {
        entry.held = batch;
        io.blocked.push(key);
    }
}

/// Does what the agent's flags say is possible. True when it should be serviced again on the
/// next turn without a new event (a pipe still has data after its share of reads).
pub(super) fn service(entry: &mut Entry, key: usize, registry: &Registry, io: &mut Io) -> bool {
    if entry.exited && entry.status.is_none() {
        reap(entry, registry);
    }
    if entry.writable && !entry.outgoing.is_empty() {
        write_stdin(entry, registry);
    }
    let mut more = false;
    let mut reads = 0;
    while entry.stdout.is_some() && entry.stdout_ready && entry.held.is_empty() {
        if reads == READS_PER_TURN {
            more = true;
            break;
        }
        reads += 1;
        read_stdout(entry, key, registry, io);
    }
    reads = 0;
    while entry.stderr.is_some() && entry.stderr_ready {
        if reads == READS_PER_TURN {
            more = true;
            break;
        }
        reads += 1;
        read_stderr(entry, registry, &mut io.buffer);
    }
    if entry.status.is_some() && entry.stdout.is_none() && entry.stderr.is_none() && !entry.finished
    {
        entry.finished = true;
        let status = entry.status.flatten();
        send(
            entry,
            key,
            vec![AgentReport::Exited {
                agent: entry.id,
                status,
            }],
            io,
        );
    }
    more
}

/// The process has exited (its pidfd said so) and is still a zombie: kill what is left of its
/// group (the agent's subprocesses must not outlive it or hold its pipes open), then reap it.
fn reap(entry: &mut Entry, registry: &Registry) {
    entry.exited = false;
    signal(entry, Signal::SIGKILL);
    let status = match entry.child.try_wait() {
        Ok(Some(status)) => status.code(),
        // Not exited after all (a stale event): wait for the next one.
        Ok(None) => return,
        // Someone else reaped it (the adapter must not): nothing more to signal.
        Err(_) => None,
    };
    entry.status = Some(status);
    entry.kill_at = None;
    if let Some(pidfd) = entry.pidfd.take() {
        deregister(registry, &pidfd);
    }
    close_stdin(entry, registry);
}

fn write_stdin(entry: &mut Entry, registry: &Registry) {
    loop {
        let Some(stdin) = entry.stdin.as_mut() else {
            return;
        };
        let mut slices = [IoSlice::new(&[]); IOVECS];
        let mut count = 0;
        for (index, line) in entry.outgoing.iter().take(IOVECS).enumerate() {
            let skip = if index == 0 { entry.written } else { 0 };
            slices[index] = IoSlice::new(&line[skip..]);
            count += 1;
        }
        if count == 0 {
            return;
        }
        match stdin.write_vectored(&slices[..count]) {
            Ok(0) => break,
            Ok(mut done) => {
                entry.budget.pending.fetch_sub(done, Ordering::SeqCst);
                while done > 0 {
                    let Some(front) = entry.outgoing.front() else {
                        break;
                    };
                    let left = front.len() - entry.written;
                    if done >= left {
                        done -= left;
                        entry.written = 0;
                        entry.outgoing.pop_front();
                    } else {
                        entry.written += done;
                        done = 0;
                    }
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                entry.writable = false;
                return;
            }
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    // The agent closed its stdin or died: later lines are dropped; its exit is reported as
    // usual.
    close_stdin(entry, registry);
}

fn read_stdout(entry: &mut Entry, key: usize, registry: &Registry, io: &mut Io) {
    let Some(stdout) = entry.stdout.as_mut() else {
        return;
    };
    let read = match stdout.read(&mut io.buffer) {
        Ok(read) => read,
        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
            entry.stdout_ready = false;
            return;
        }
        Err(error) if error.kind() == std::io::ErrorKind::Interrupted => return,
        Err(_) => 0,
    };
    if read == 0 {
        // End of file: a last line without '\n' is still delivered.
        if let Some(stdout) = entry.stdout.take() {
            deregister(registry, &stdout);
        }
        if !entry.line.is_empty() {
            let line = Bytes::from(std::mem::take(&mut entry.line));
            send(
                entry,
                key,
                vec![AgentReport::Line {
                    agent: entry.id,
                    line,
                }],
                io,
            );
        }
        return;
    }
    if read < io.buffer.len() && !entry.stdout_closed {
        // The pipe is empty now; the next write (or the hang-up) raises a new edge.
        entry.stdout_ready = false;
    }
    let max = io.settings.max_line_bytes;
    // One copy of what was read; complete lines are slices of it.
    let chunk = Bytes::copy_from_slice(&io.buffer[..read]);
    let mut batch = Vec::new();
    let mut start = 0;
    let mut too_long = false;
    while start < read {
        let rest = &chunk[start..];
        let (piece_len, complete) = match rest.iter().position(|&b| b == b'\n') {
            Some(end) => (end, true),
            None => (rest.len(), false),
        };
        if entry.line.len() + piece_len > max {
            too_long = true;
            break;
        }
        if complete {
            let line = if entry.line.is_empty() {
                chunk.slice(start..start + piece_len)
            } else {
                entry.line.extend_from_slice(&rest[..piece_len]);
                Bytes::from(std::mem::take(&mut entry.line))
            };
            batch.push(AgentReport::Line {
                agent: entry.id,
                line,
            });
            start += piece_len + 1;
        } else {
            entry.line.extend_from_slice(rest);
            start = read;
        }
    }
    if too_long {
        tracing::warn!(target: "agent", agent = entry.id.0, session = %entry.session_id,
            limit = max, "agent wrote a line over the limit; stopping it");
        batch.push(AgentReport::Failed {
            agent: entry.id,
            reason: format!("line longer than {max} bytes"),
        });
        // The rest of its output is discarded: stdout is closed.
        entry.line = Vec::new();
        if let Some(stdout) = entry.stdout.take() {
            deregister(registry, &stdout);
        }
        send(entry, key, batch, io);
        start_stop(entry, key, registry, io);
        return;
    }
    send(entry, key, batch, io);
}

/// The stop sequence from inside the poller (a line over the limit).
fn start_stop(entry: &mut Entry, key: usize, registry: &Registry, io: &mut Io) {
    close_stdin(entry, registry);
    if entry.status.is_none() && !entry.stopping {
        entry.stopping = true;
        signal(entry, Signal::SIGTERM);
        entry.kill_at = Some(Instant::now() + io.settings.stop_grace);
        io.timed.push(key);
    }
}

fn read_stderr(entry: &mut Entry, registry: &Registry, buffer: &mut [u8]) {
    let Some(stderr) = entry.stderr.as_mut() else {
        return;
    };
    let read = match stderr.read(buffer) {
        Ok(read) => read,
        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
            entry.stderr_ready = false;
            return;
        }
        Err(error) if error.kind() == std::io::ErrorKind::Interrupted => return,
        Err(_) => 0,
    };
    if read == 0 {
        if let Some(stderr) = entry.stderr.take() {
            deregister(registry, &stderr);
        }
        if !entry.err_line.is_empty() && !entry.err_skipping {
            let line = std::mem::take(&mut entry.err_line);
            log_stderr(entry, &line);
        }
        entry.err_line = Vec::new();
        if let Some(suppressed) = entry.limiter.finish() {
            log_suppressed(entry, suppressed);
        }
        return;
    }
    if read < buffer.len() && !entry.stderr_closed {
        entry.stderr_ready = false;
    }
    let mut data = &buffer[..read];
    while !data.is_empty() {
        if entry.err_skipping {
            match data.iter().position(|&b| b == b'\n') {
                Some(end) => {
                    entry.err_skipping = false;
                    data = &data[end + 1..];
                }
                None => return,
            }
            continue;
        }
        let room = MAX_STDERR_LINE - entry.err_line.len();
        let window = &data[..data.len().min(room)];
        match window.iter().position(|&b| b == b'\n') {
            Some(end) => {
                entry.err_line.extend_from_slice(&window[..=end]);
                data = &data[end + 1..];
                let line = std::mem::take(&mut entry.err_line);
                log_stderr(entry, &line);
                entry.err_line = line;
                entry.err_line.clear();
            }
            None => {
                entry.err_line.extend_from_slice(window);
                data = &data[window.len()..];
                if entry.err_line.len() == MAX_STDERR_LINE {
                    let line = std::mem::take(&mut entry.err_line);
                    log_stderr(entry, &line);
                    entry.err_skipping = true;
                }
            }
        }
    }
    if entry.err_line.is_empty() && entry.err_line.capacity() > 0 {
        // Most agents write little to stderr: keep no buffer between lines.
        entry.err_line = Vec::new();
    }
}

fn log_stderr(entry: &mut Entry, line: &[u8]) {
    let admit = entry.limiter.admit(Instant::now());
    if let Some(suppressed) = admit.suppressed_before {
        log_suppressed(entry, suppressed);
    }
    if admit.log {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches(['\n', '\r']);
        tracing::info!(target: "agent", agent = entry.id.0, session = %entry.session_id,
            "stderr: {text}");
    }
}

fn log_suppressed(entry: &Entry, suppressed: u64) {
    tracing::info!(target: "agent", agent = entry.id.0, session = %entry.session_id,
        suppressed, "{suppressed} stderr lines suppressed");
}
