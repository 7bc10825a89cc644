//! The poller thread: one thread drives the pipes of every agent (non-blocking, through one
//! `epoll` instance via mio) and learns of every exit through the agent's pidfd. It is the only
//! thread that signals or reaps agents, so a signal can never reach a recycled pid: a process
//! that has exited stays a zombie (its pid and process-group id reserved) until this thread
//! reaps it, and after reaping it never signals that agent again. See the crate documentation
//! for the contract it keeps. This file holds the loop and the host's inbox; the work on one
//! agent's pipes, its reaping and its signals is in [`agent`].

mod agent;

use std::collections::{HashMap, VecDeque};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use diminuendo_core::AgentId;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use slab::Slab;

use crate::process::Process;
use crate::reports::{lock, Reports};
use crate::stderr::StderrLimiter;

use agent::{close_stdin, deregister, service, signal, Entry, Io};

/// The poller's one read buffer, shared by every agent: a read takes at most this much, and
/// every line it completes goes out as one batch.
const READ_BUFFER: usize = 64 * 1024;
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
