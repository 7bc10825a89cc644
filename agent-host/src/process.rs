//! One agent process and its threads (see the parent module's documentation).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use bytes::Bytes;
use diminuendo_core::AgentId;
use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag};
use nix::unistd::Pid;

use crate::stderr::StderrLimiter;
use crate::{AgentReport, Reporter};

/// Longest stderr line logged; the rest of the line is dropped.
const MAX_STDERR_LINE: usize = 4096;
const PIPE_BUFFER: usize = 64 * 1024;

#[derive(Debug, Clone, Copy)]
pub(super) struct Settings {
    pub max_line_bytes: usize,
    pub stop_grace: Duration,
    pub stderr_lines_per_second: u32,
    pub max_pending_write_bytes: usize,
}

pub(super) enum Push {
    Queued,
    /// Stdin is closed (stopping, or the agent stopped reading it for good): the line is dropped.
    Dropped,
    /// Over the backlog limit: the caller fails the agent.
    Overflow,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

struct ProcState {
    /// The process has been reaped: its pid (and process group id) may be reused, so no signal
    /// may be sent any more.
    reaped: bool,
    stopping: bool,
    stopper: Option<JoinHandle<()>>,
}

struct StdinQueue {
    lines: VecDeque<Bytes>,
    pending: usize,
    closed: bool,
}

/// What the host's caller and the agent's threads share.
struct Shared {
    id: AgentId,
    session_id: String,
    pid: Pid,
    max_pending_write_bytes: usize,
    state: Mutex<ProcState>,
    reaped: Condvar,
    stdin: Mutex<StdinQueue>,
    stdin_ready: Condvar,
}

impl Shared {
    /// Signals the agent's process group unless the process has been reaped. The caller holds
    /// the state lock, so the reaping cannot happen in between.
    fn signal(&self, state: &ProcState, signal: Signal) {
        if state.reaped {
            return;
        }
        match killpg(self.pid, signal) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(error) => {
                tracing::warn!(target: "agent", agent = self.id.0, session = %self.session_id,
                    %error, ?signal, "cannot signal the agent");
            }
        }
    }

    fn close_stdin(&self) {
        let mut queue = lock(&self.stdin);
        queue.closed = true;
        queue.lines.clear();
        queue.pending = 0;
        drop(queue);
        self.stdin_ready.notify_all();
    }

    fn stop(self: &Arc<Self>, grace: Duration) {
        self.close_stdin();
        let mut state = lock(&self.state);
        if state.reaped || state.stopping {
            return;
        }
        state.stopping = true;
        let shared = Arc::clone(self);
        let spawned = thread::Builder::new()
            .name(format!("agent-{}-stop", self.id.0))
            .spawn(move || shared.run_stopper(grace));
        match spawned {
            Ok(handle) => state.stopper = Some(handle),
            // No thread to wait out the grace period: skip it.
            Err(_) => self.signal(&state, Signal::SIGKILL),
        }
    }

    fn run_stopper(&self, grace: Duration) {
        let state = lock(&self.state);
        self.signal(&state, Signal::SIGTERM);
        let (state, _) = self
            .reaped
            .wait_timeout_while(state, grace, |state| !state.reaped)
            .unwrap_or_else(PoisonError::into_inner);
        if !state.reaped {
            tracing::warn!(target: "agent", agent = self.id.0, session = %self.session_id,
                "agent ignored SIGTERM; sending SIGKILL");
            self.signal(&state, Signal::SIGKILL);
        }
    }
}

/// The host's handle on one agent.
pub(super) struct Agent {
    shared: Arc<Shared>,
    waiter: Option<JoinHandle<()>>,
}

impl Agent {
    /// Starts the process (`command` comes from `launch::command`) and its threads. The error
    /// is a short reason for `SpawnFailed`.
    pub(super) fn spawn(
        id: AgentId,
        session_id: &str,
        mut command: Command,
        settings: Settings,
        reporter: Reporter,
    ) -> Result<Agent, String> {
        let mut child = command
            .spawn()
            .map_err(|error| format!("cannot start the agent: {error}"))?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            kill_and_reap(&mut child);
            return Err("cannot start the agent: no pipes".to_owned());
        };
        let Ok(raw_pid) = i32::try_from(child.id()) else {
            kill_and_reap(&mut child);
            return Err("cannot start the agent: bad pid".to_owned());
        };
        let shared = Arc::new(Shared {
            id,
            session_id: session_id.to_owned(),
            pid: Pid::from_raw(raw_pid),
            max_pending_write_bytes: settings.max_pending_write_bytes,
            state: Mutex::new(ProcState {
                reaped: false,
                stopping: false,
                stopper: None,
            }),
            reaped: Condvar::new(),
            stdin: Mutex::new(StdinQueue {
                lines: VecDeque::new(),
                pending: 0,
                closed: false,
            }),
            stdin_ready: Condvar::new(),
        });

        let threads = (|| -> std::io::Result<_> {
            let stdout_thread = {
                let (shared, reporter) = (Arc::clone(&shared), reporter.clone());
                thread::Builder::new()
                    .name(format!("agent-{}-stdout", id.0))
                    .spawn(move || read_stdout(&shared, stdout, settings, &reporter))?
            };
            let stderr_thread = {
                let shared = Arc::clone(&shared);
                thread::Builder::new()
                    .name(format!("agent-{}-stderr", id.0))
                    .spawn(move || read_stderr(&shared, stderr, settings))?
            };
            let stdin_thread = {
                let shared = Arc::clone(&shared);
                thread::Builder::new()
                    .name(format!("agent-{}-stdin", id.0))
                    .spawn(move || write_stdin(&shared, stdin))?
            };
            Ok((stdout_thread, stderr_thread, stdin_thread))
        })();
        // If a thread cannot be started, the process is killed; the threads already running end
        // when its pipes close.
        let (stdout_thread, stderr_thread, stdin_thread) = match threads {
            Ok(threads) => threads,
            Err(error) => {
                shared.close_stdin();
                kill_and_reap(&mut child);
                return Err(format!("cannot start the agent's threads: {error}"));
            }
        };
        let waiter = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name(format!("agent-{}-wait", id.0))
                .spawn(move || {
                    wait(
                        &shared,
                        child,
                        [stdout_thread, stderr_thread, stdin_thread],
                        &reporter,
                    )
                })
        };
        match waiter {
            Ok(waiter) => Ok(Agent {
                shared,
                waiter: Some(waiter),
            }),
            Err(error) => {
                // The child moved into the closure that was never run, and was dropped with it
                // (std does not kill on drop): kill the group; nobody reaps it but init.
                let state = lock(&shared.state);
                shared.signal(&state, Signal::SIGKILL);
                drop(state);
                shared.close_stdin();
                Err(format!("cannot start the agent's threads: {error}"))
            }
        }
    }

    pub(super) fn pid(&self) -> u32 {
        self.shared.pid.as_raw().unsigned_abs()
    }

    pub(super) fn session_id(&self) -> &str {
        &self.shared.session_id
    }

    pub(super) fn push(&self, line: Bytes) -> Push {
        let mut queue = lock(&self.shared.stdin);
        if queue.closed {
            return Push::Dropped;
        }
        if queue.pending.saturating_add(line.len()) > self.shared.max_pending_write_bytes {
            return Push::Overflow;
        }
        queue.pending += line.len();
        queue.lines.push_back(line);
        drop(queue);
        self.shared.stdin_ready.notify_one();
        Push::Queued
    }

    pub(super) fn stop(&self, grace: Duration) {
        self.shared.stop(grace);
    }

    /// SIGKILL now, whatever stage the stop is at.
    pub(super) fn kill_now(&self) {
        self.shared.close_stdin();
        let state = lock(&self.shared.state);
        self.shared.signal(&state, Signal::SIGKILL);
    }

    /// Joins the waiter; called once its `Exited` has been received, so it returns at once.
    pub(super) fn join(mut self) {
        if let Some(waiter) = self.waiter.take() {
            let _ = waiter.join();
        }
    }
}

fn kill_and_reap(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// The waiter thread: see the parent module's documentation for the order of its steps.
fn wait(shared: &Shared, mut child: Child, threads: [JoinHandle<()>; 3], reporter: &Reporter) {
    // Wait for the exit but leave the zombie in place, so the pid cannot be reused while the
    // stopper may still signal it.
    // Any other error (none is expected) falls through to the reaping wait below.
    while waitid(
        Id::Pid(shared.pid),
        WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT,
    ) == Err(Errno::EINTR)
    {}
    let status = {
        let mut state = lock(&shared.state);
        // The rest of the group must not outlive the agent or hold its pipes open.
        shared.signal(&state, Signal::SIGKILL);
        let status = child.wait().ok().and_then(|status| status.code());
        state.reaped = true;
        let stopper = state.stopper.take();
        drop(state);
        shared.reaped.notify_all();
        if let Some(stopper) = stopper {
            let _ = stopper.join();
        }
        status
    };
    shared.close_stdin();
    for thread in threads {
        let _ = thread.join();
    }
    reporter.send(AgentReport::Exited {
        agent: shared.id,
        status,
    });
}

fn read_stdout(shared: &Arc<Shared>, stdout: ChildStdout, settings: Settings, reporter: &Reporter) {
    let mut reader = BufReader::with_capacity(PIPE_BUFFER, stdout);
    let mut line = Vec::new();
    // The complete lines of what the buffer holds, sent together just before the next read
    // could block (so a batch is bounded by the buffer, and a lone line is never held back).
    let mut batch = Vec::new();
    loop {
        if reader.buffer().is_empty()
            && !batch.is_empty()
            && !reporter.send_batch(std::mem::take(&mut batch))
        {
            return;
        }
        let buffer = match reader.fill_buf() {
            Ok(buffer) => buffer,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        if buffer.is_empty() {
            if !line.is_empty() {
                batch.push(AgentReport::Line {
                    agent: shared.id,
                    line: Bytes::from(std::mem::take(&mut line)),
                });
            }
            if !batch.is_empty() {
                reporter.send_batch(batch);
            }
            return;
        }
        let (piece, used, complete) = match buffer.iter().position(|&b| b == b'\n') {
            Some(end) => (&buffer[..end], end + 1, true),
            None => (buffer, buffer.len(), false),
        };
        if line.len() + piece.len() > settings.max_line_bytes {
            tracing::warn!(target: "agent", agent = shared.id.0, session = %shared.session_id,
                limit = settings.max_line_bytes, "agent wrote a line over the limit; stopping it");
            batch.push(AgentReport::Failed {
                agent: shared.id,
                reason: format!("line longer than {} bytes", settings.max_line_bytes),
            });
            reporter.send_batch(batch);
            shared.stop(settings.stop_grace);
            return;
        }
        line.extend_from_slice(piece);
        reader.consume(used);
        if complete {
            batch.push(AgentReport::Line {
                agent: shared.id,
                line: Bytes::from(std::mem::take(&mut line)),
            });
        }
    }
    if !batch.is_empty() {
        reporter.send_batch(batch);
    }
}

fn read_stderr(shared: &Shared, stderr: ChildStderr, settings: Settings) {
    let mut reader = BufReader::with_capacity(PIPE_BUFFER, stderr);
    let mut limiter = StderrLimiter::new(settings.stderr_lines_per_second, Instant::now());
    let mut line = Vec::new();
    loop {
        line.clear();
        // Read one line, keeping at most MAX_STDERR_LINE bytes of it.
        let more = (&mut reader)
            .take(MAX_STDERR_LINE as u64)
            .read_until(b'\n', &mut line);
        match more {
            Ok(0) => break,
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
        if line.last() != Some(&b'\n') && !skip_rest_of_line(&mut reader) {
            // End of file inside the cut line: log what there is, then stop.
            log_stderr(shared, &mut limiter, &line);
            break;
        }
        log_stderr(shared, &mut limiter, &line);
    }
    if let Some(suppressed) = limiter.finish() {
        log_suppressed(shared, suppressed);
    }
}

/// Discards up to the next `'\n'`. False at end of file or on an error.
fn skip_rest_of_line(reader: &mut impl BufRead) -> bool {
    loop {
        let buffer = match reader.fill_buf() {
            Ok([]) | Err(_) => return false,
            Ok(buffer) => buffer,
        };
        if let Some(end) = buffer.iter().position(|&b| b == b'\n') {
            reader.consume(end + 1);
            return true;
        }
        let used = buffer.len();
        reader.consume(used);
    }
}

fn log_stderr(shared: &Shared, limiter: &mut StderrLimiter, line: &[u8]) {
    let admit = limiter.admit(Instant::now());
    if let Some(suppressed) = admit.suppressed_before {
        log_suppressed(shared, suppressed);
    }
    if admit.log {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches(['\n', '\r']);
        tracing::info!(target: "agent", agent = shared.id.0, session = %shared.session_id,
            "stderr: {text}");
    }
}

fn log_suppressed(shared: &Shared, suppressed: u64) {
    tracing::info!(target: "agent", agent = shared.id.0, session = %shared.session_id,
        suppressed, "{suppressed} stderr lines suppressed");
}

fn write_stdin(shared: &Shared, stdin: ChildStdin) {
    let mut writer = BufWriter::with_capacity(PIPE_BUFFER, stdin);
    let mut batch = Vec::new();
    loop {
        {
            let mut queue = lock(&shared.stdin);
            while queue.lines.is_empty() && !queue.closed {
                queue = shared
                    .stdin_ready
                    .wait(queue)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if queue.closed {
                return;
            }
            batch.extend(queue.lines.drain(..));
            queue.pending = 0;
        }
        for line in batch.drain(..) {
            if writer.write_all(&line).is_err() {
                return fail_stdin(shared);
            }
        }
        if writer.flush().is_err() {
            return fail_stdin(shared);
        }
    }
}

/// The agent closed its stdin or died: later lines are dropped; its exit is reported as usual.
fn fail_stdin(shared: &Shared) {
    lock(&shared.stdin).closed = true;
}
