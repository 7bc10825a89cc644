//! The poller thread: one thread drives the pipes of every agent (non-blocking, through one
//! `epoll` instance via mio) and learns of every exit through the agent's pidfd. It is the only
//! thread that signals or reaps agents, so a signal can never reach a recycled pid: a process
//! that has exited stays a zombie (its pid and process-group id reserved) until this thread
//! reaps it, and after reaping it never signals that agent again. See the crate documentation
//! for the contract it keeps.

use std::collections::{HashMap, VecDeque};
use std::io::{IoSlice, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use diminuendo_core::AgentId;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use slab::Slab;

use crate::process::Process;
use crate::reports::{lock, Reports};
use crate::stderr::StderrLimiter;
use crate::AgentReport;

/// Longest stderr line logged (with its `'\n'`); the rest of the line is dropped.
const MAX_STDERR_LINE: usize = 4096;
/// The poller's one read buffer, shared by every agent: a read takes at most this much, and
/// every line it completes goes out as one batch.
const READ_BUFFER: usize = 64 * 1024;
/// Reads of one pipe per turn of the loop before the other agents get theirs.
const READS_PER_TURN: usize = 4;
/// Lines handed to one `writev`.
const IOVECS: usize = 64;
const WAKER: Token = Token(usize::MAX);

#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub max_line_bytes: usize,
    pub stop_grace: Duration,
    pub stderr_lines_per_second: u32,
}

/// An agent's stdin budget, shared by the host (which admits lines) and the poller (which
/// writes them).
#[derive(Default)]
pub(crate) struct StdinBudget {
    /// Bytes admitted and not yet written into the pipe.
    pub pending: AtomicUsize,
    /// Stdin is closed (stopping, the agent exited, or it stopped reading for good): lines are
    /// dropped.
    pub closed: AtomicBool,
}

pub(crate) enum Command {
    Add(Box<NewAgent>),
    Write(AgentId, Bytes),
    /// Close stdin, SIGTERM the group, SIGKILL after the grace.
    Stop(AgentId, Duration),
    /// Close stdin and SIGKILL the group now.
    Kill(AgentId),
    /// The host is gone: kill every agent, reap them, discard their reports, then end.
    Quit,
}

pub(crate) struct NewAgent {
    pub id: AgentId,
    pub session_id: String,
    pub process: Process,
    pub budget: Arc<StdinBudget>,
}

struct InboxState {
    commands: Vec<Command>,
    /// The report queue has room again.
    room: bool,
}

/// How the host talks to the poller thread.
pub(crate) struct Inbox {
    state: Mutex<InboxState>,
    waker: Waker,
    wake_pending: AtomicBool,
}

impl Inbox {
    pub(crate) fn send(&self, command: Command) {
        lock(&self.state).commands.push(command);
        self.wake();
    }

    pub(crate) fn room(&self) {
        lock(&self.state).room = true;
        self.wake();
    }

    fn wake(&self) {
        if !self.wake_pending.swap(true, Ordering::SeqCst) {
            if let Err(error) = self.waker.wake() {
                tracing::error!(target: "agent", %error, "cannot wake the agent poller");
            }
        }
    }
}

/// Starts the poller thread.
pub(crate) fn start(
    settings: Settings,
    reports: Arc<Reports>,
) -> std::io::Result<(Arc<Inbox>, JoinHandle<()>)> {
    let poll = Poll::new()?;
    let waker = Waker::new(poll.registry(), WAKER)?;
    let inbox = Arc::new(Inbox {
        state: Mutex::new(InboxState {
            commands: Vec::new(),
            room: false,
        }),
        waker,
        wake_pending: AtomicBool::new(false),
    });
    let poller = Poller {
        poll,
        inbox: Arc::clone(&inbox),
        entries: Slab::new(),
        ids: HashMap::new(),
        ready: VecDeque::new(),
        io: Io {
            timed: Vec::new(),
            settings,
            reports,
            buffer: vec![0; READ_BUFFER].into_boxed_slice(),
            blocked: Vec::new(),
            quitting: false,
        },
    };
    let thread = std::thread::Builder::new()
        .name("agent-poller".to_owned())
        .spawn(move || poller.run())?;
    Ok((inbox, thread))
}

/// One agent, as the poller sees it.
struct Entry {
    id: AgentId,
    session_id: String,
    child: Child,
    /// The agent's process group (its pid). Signalled only while `status` is `None`.
    pgid: Pid,
    budget: Arc<StdinBudget>,
    stdin: Option<ChildStdin>,
    /// Lines admitted for stdin; the first `written` bytes of the front one are in the pipe.
    outgoing: VecDeque<Bytes>,
    written: usize,
    writable: bool,
    stdout: Option<ChildStdout>,
    stdout_ready: bool,
    /// The writer side hung up (end of file comes once the pipe is empty).
    stdout_closed: bool,
    /// The start of a line whose `'\n'` has not been read yet.
    line: Vec<u8>,
    stderr: Option<ChildStderr>,
    stderr_ready: bool,
    stderr_closed: bool,
    err_line: Vec<u8>,
    /// Dropping the rest of a stderr line over `MAX_STDERR_LINE`.
    err_skipping: bool,
    limiter: StderrLimiter,
    pidfd: Option<OwnedFd>,
    /// The pidfd said the process exited; it is reaped on the next service.
    exited: bool,
    /// `Some(exit code or None)` once reaped. From then on no signal may be sent.
    status: Option<Option<i32>>,
    stopping: bool,
    kill_at: Option<Instant>,
    /// Reports waiting for room in the report queue; while any wait, stdout is not read.
    held: Vec<AgentReport>,
    /// `Exited` has been handed over (or discarded when quitting).
    finished: bool,
    in_ready: bool,
}

/// The poller's state apart from the agents (so both can be borrowed at once).
struct Io {
    settings: Settings,
    reports: Arc<Reports>,
    buffer: Box<[u8]>,
    /// Agents with held reports, oldest first.
    blocked: Vec<usize>,
    /// Agents that may have a kill deadline.
    timed: Vec<usize>,
    quitting: bool,
}

struct Poller {
    poll: Poll,
    inbox: Arc<Inbox>,
    entries: Slab<Entry>,
    ids: HashMap<AgentId, usize>,
    /// Agents to service on this turn of the loop.
    ready: VecDeque<usize>,
    io: Io,
}

#[derive(Clone, Copy)]
enum Pipe {
    Stdin = 0,
    Stdout = 1,
    Stderr = 2,
    Pidfd = 3,
}

fn token(key: usize, pipe: Pipe) -> Token {
    Token(key * 4 + pipe as usize)
}

fn deregister(registry: &Registry, fd: &impl AsRawFd) {
    let _ = registry.deregister(&mut SourceFd(&fd.as_raw_fd()));
}

impl Poller {
    fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = if self.ready.is_empty() {
                self.next_deadline()
                    .map(|at| at.saturating_duration_since(Instant::now()))
            } else {
                Some(Duration::ZERO)
            };
            if let Err(error) = self.poll.poll(&mut events, timeout) {
                if error.kind() != std::io::ErrorKind::Interrupted {
                    tracing::error!(target: "agent", %error, "agent poller: poll failed");
                    std::thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
            for event in events.iter() {
                if event.token() == WAKER {
                    continue;
                }
                let key = event.token().0 / 4;
                let Some(entry) = self.entries.get_mut(key) else {
                    continue;
                };
                // A hang-up already seen is not announced again: the pipe is then read until
                // end of file even after a short read.
                let closed = event.is_read_closed() || event.is_error();
                match event.token().0 % 4 {
                    0 => entry.writable = true,
                    1 => {
                        entry.stdout_ready = true;
                        entry.stdout_closed |= closed;
                    }
                    2 => {
                        entry.stderr_ready = true;
                        entry.stderr_closed |= closed;
                    }
                    _ => entry.exited = true,
                }
                self.schedule(key);
            }
            self.take_commands();
            self.expire_timers();
            self.service_ready();
            if self.io.quitting && self.entries.is_empty() {
                return;
            }
        }
    }

    fn schedule(&mut self, key: usize) {
        if let Some(entry) = self.entries.get_mut(key) {
            if !entry.in_ready {
                entry.in_ready = true;
                self.ready.push_back(key);
            }
        }
    }

    fn take_commands(&mut self) {
        self.inbox.wake_pending.store(false, Ordering::SeqCst);
        let (commands, room) = {
            let mut state = lock(&self.inbox.state);
            (
                std::mem::take(&mut state.commands),
                std::mem::take(&mut state.room),
            )
        };
        for command in commands {
            match command {
                Command::Add(agent) => self.add(*agent),
                Command::Write(id, line) => {
                    if let Some(&key) = self.ids.get(&id) {
                        let entry = &mut self.entries[key];
                        if entry.stdin.is_some() {
                            entry.outgoing.push_back(line);
                            self.schedule(key);
                        }
                    }
                }
                Command::Stop(id, grace) => {
                    if let Some(&key) = self.ids.get(&id) {
                        self.stop(key, grace);
                    }
                }
                Command::Kill(id) => {
                    if let Some(&key) = self.ids.get(&id) {
                        self.kill(key);
                    }
                }
                Command::Quit => {
                    self.io.quitting = true;
                    self.io.blocked.clear();
                    let keys: Vec<usize> = self.entries.iter().map(|(key, _)| key).collect();
                    for key in keys {
                        self.entries[key].held.clear();
                        self.kill(key);
                        self.schedule(key);
                    }
                }
            }
        }
        if room {
            self.flush_held();
        }
    }

    fn add(&mut self, agent: NewAgent) {
        let NewAgent {
            id,
            session_id,
            process,
            budget,
        } = agent;
        let Process {
            child,
            pid,
            stdin,
            stdout,
            stderr,
            pidfd,
        } = process;
        let key = self.entries.vacant_key();
        let registry = self.poll.registry();
        let registered = registry
            .register(
                &mut SourceFd(&stdin.as_raw_fd()),
                token(key, Pipe::Stdin),
                Interest::WRITABLE,
            )
            .and_then(|()| {
                registry.register(
                    &mut SourceFd(&stdout.as_raw_fd()),
                    token(key, Pipe::Stdout),
                    Interest::READABLE,
                )
            })
            .and_then(|()| {
                registry.register(
                    &mut SourceFd(&stderr.as_raw_fd()),
                    token(key, Pipe::Stderr),
                    Interest::READABLE,
                )
            })
            .and_then(|()| {
                registry.register(
                    &mut SourceFd(&pidfd.as_raw_fd()),
                    token(key, Pipe::Pidfd),
                    Interest::READABLE,
                )
            });
        let entry = Entry {
            id,
            session_id,
            child,
            pgid: Pid::from_raw(pid),
            budget,
            stdin: Some(stdin),
            outgoing: VecDeque::new(),
            written: 0,
            writable: true,
            stdout: Some(stdout),
            stdout_ready: true,
            stdout_closed: false,
            line: Vec::new(),
            stderr: Some(stderr),
            stderr_ready: true,
            stderr_closed: false,
            err_line: Vec::new(),
            err_skipping: false,
            limiter: StderrLimiter::new(self.io.settings.stderr_lines_per_second, Instant::now()),
            pidfd: Some(pidfd),
            exited: false,
            status: None,
            stopping: false,
            kill_at: None,
            held: Vec::new(),
            finished: false,
            in_ready: false,
        };
        let key = self.entries.insert(entry);
        self.ids.insert(id, key);
        if let Err(error) = registered {
            // Without its registrations the agent cannot be driven: kill it, reap it (blocking,
            // but on a process just sent SIGKILL), discard its output, and report `Exited`.
            tracing::error!(target: "agent", agent = id.0, %error,
                "cannot watch the agent's pipes; killing it");
            let registry = self.poll.registry();
            let entry = &mut self.entries[key];
            signal(entry, Signal::SIGKILL);
            let status = entry.child.wait().ok().and_then(|status| status.code());
            entry.status = Some(status);
            if let Some(pidfd) = entry.pidfd.take() {
                deregister(registry, &pidfd);
            }
            if let Some(stdout) = entry.stdout.take() {
                deregister(registry, &stdout);
            }
            if let Some(stderr) = entry.stderr.take() {
                deregister(registry, &stderr);
            }
            close_stdin(entry, registry);
        }
        self.schedule(key);
    }

    fn stop(&mut self, key: usize, grace: Duration) {
        let entry = &mut self.entries[key];
        close_stdin(entry, self.poll.registry());
        if entry.status.is_some() {
            return;
        }
        let at = Instant::now() + grace;
        if !entry.stopping {
            entry.stopping = true;
            signal(entry, Signal::SIGTERM);
            entry.kill_at = Some(at);
            self.io.timed.push(key);
        } else if let Some(kill_at) = &mut entry.kill_at {
            *kill_at = (*kill_at).min(at);
        }
    }

    fn kill(&mut self, key: usize) {
        let entry = &mut self.entries[key];
        close_stdin(entry, self.poll.registry());
        entry.stopping = true;
        entry.kill_at = None;
        signal(entry, Signal::SIGKILL);
    }

    fn next_deadline(&mut self) -> Option<Instant> {
        let entries = &self.entries;
        self.io.timed.retain(|&key| {
            entries
                .get(key)
                .is_some_and(|entry| entry.kill_at.is_some())
        });
        self.io
            .timed
            .iter()
            .filter_map(|&key| self.entries.get(key).and_then(|entry| entry.kill_at))
            .min()
    }

    fn expire_timers(&mut self) {
        if self.io.timed.is_empty() {
            return;
        }
        let now = Instant::now();
        for &key in &self.io.timed {
            let Some(entry) = self.entries.get_mut(key) else {
                continue;
            };
            if entry.kill_at.is_some_and(|at| at <= now) {
                entry.kill_at = None;
                tracing::warn!(target: "agent", agent = entry.id.0, session = %entry.session_id,
                    "agent ignored SIGTERM; sending SIGKILL");
                signal(entry, Signal::SIGKILL);
            }
        }
    }

    /// Hands over held batches, oldest first, while the queue takes them.
    fn flush_held(&mut self) {
        let blocked = std::mem::take(&mut self.io.blocked);
        let mut rest = blocked.into_iter();
        for key in rest.by_ref() {
            let Some(entry) = self.entries.get_mut(key) else {
                continue;
            };
            if entry.held.is_empty() {
                continue;
            }
            match self.io.reports.try_send(std::mem::take(&mut entry.held)) {
                Ok(()) => self.schedule(key),
                Err(batch) => {
                    entry.held = batch;
                    self.io.blocked.push(key);
                    break;
                }
            }
        }
        self.io.blocked.extend(rest);
    }

    fn service_ready(&mut self) {
        for _ in 0..self.ready.len() {
            let Some(key) = self.ready.pop_front() else {
                break;
            };
            let Some(entry) = self.entries.get_mut(key) else {
                continue;
            };
            entry.in_ready = false;
            let more = service(entry, key, self.poll.registry(), &mut self.io);
            if entry.finished && entry.held.is_empty() {
                let entry = self.entries.remove(key);
                self.ids.remove(&entry.id);
            } else if more {
                self.schedule(key);
            }
        }
    }
}

/// Signals the agent's process group, unless it has been reaped (then its pid may belong to
/// someone else). Only the poller thread signals and reaps, so nothing reaps in between.
fn signal(entry: &Entry, signal: Signal) {
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

fn close_stdin(entry: &mut Entry, registry: &Registry) {
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
fn service(entry: &mut Entry, key: usize, registry: &Registry, io: &mut Io) -> bool {
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
