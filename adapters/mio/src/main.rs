//! The gateway on a hand-written mio poll loop: one thread, one `mio::Poll`, a `Token` per
//! connection (its slot in a slab). Storage and agent completions wake the loop through a
//! `mio::Waker`; the poll timeout is the core's next deadline; reads go until `WouldBlock` into
//! the driver's one scratch buffer; every connection the core names is flushed once per loop
//! turn, after all the events of a `poll` return (that is the write coalescing); WRITABLE
//! interest is registered only while a connection is blocked. No protocol logic lives here (see
//! the Adapters section of `DESIGN.md`).

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use diminuendo_adapter_common::driver::{self, Drained, Driver, Read, Sockets, ACCEPT_BACKOFF};
use diminuendo_adapter_common::settings::Settings;
use diminuendo_core::{ConnectionId, Wake};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;
use tracing::{error, warn};

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);
const SIGNALS: Token = Token(usize::MAX - 3);

/// Events taken from one `poll`.
const EVENTS_CAPACITY: usize = 1024;
/// Reads from one connection per loop turn before the others get their turn; a connection that
/// still has bytes is read again on the next turn without waiting for a new edge.
const READS_PER_TURN: usize = 16;
/// A connection's id is its slab slot in the low 32 bits and an accept counter above, so a slot
/// reused within one batch of events is never mistaken for its previous connection.
const SLOT_BITS: u32 = 32;

/// The wake-up hook for storage and agent threads.
struct MioWake(Waker);

impl Wake for MioWake {
    fn wake(&self) {
        if let Err(error) = self.0.wake() {
            warn!(%error, "cannot wake the poll loop");
        }
    }
}

struct Connection {
    id: ConnectionId,
    stream: TcpStream,
    write_blocked: bool,
    /// The core closed it: the loop reads and discards until the peer's end of stream or
    /// `driver::LINGER` (see `driver::discard_input`), then drops it; the core knows it no more.
    lingering: bool,
}

/// The connections, as the driver writes and closes through them.
struct Table {
    registry: Registry,
    slab: Slab<Connection>,
    /// Lingering connections by deadline (each `LINGER` after its close, so in order).
    lingering: VecDeque<(Instant, usize, ConnectionId)>,
}

impl Table {
    fn slot(id: ConnectionId) -> usize {
        (id.0 & ((1 << SLOT_BITS) - 1)) as usize
    }

    fn get(&mut self, id: ConnectionId) -> Option<&mut Connection> {
        self.slab
            .get_mut(Table::slot(id))
            .filter(|connection| connection.id == id && !connection.lingering)
    }

    /// Drops a lingering connection (at its end of stream, an error, or its deadline).
    fn end_lingering(&mut self, slot: usize, id: ConnectionId) {
        if self
            .slab
            .get(slot)
            .is_some_and(|connection| connection.id == id && connection.lingering)
        {
            let mut connection = self.slab.remove(slot);
            let _ = self.registry.deregister(&mut connection.stream);
        }
    }

    /// Drops the lingering connections whose deadline passed; the next deadline.
    fn sweep_lingering(&mut self, now: Instant) -> Option<Instant> {
        while let Some(&(deadline, slot, id)) = self.lingering.front() {
            if deadline > now {
                return Some(deadline);
            }
            self.lingering.pop_front();
            self.end_lingering(slot, id);
        }
        None
    }

    fn remove(&mut self, id: ConnectionId) -> Option<TcpStream> {
        self.get(id)?;
        let mut connection = self.slab.remove(Table::slot(id));
        let _ = self.registry.deregister(&mut connection.stream);
        Some(connection.stream)
    }

    /// Reads and discards a lingering connection's input; drops it when that is over.
    fn discard(&mut self, slot: usize) {
        let Some(connection) = self.slab.get(slot).filter(|c| c.lingering) else {
            return;
        };
        let (id, stream) = (connection.id, &connection.stream);
        if !driver::discard_input(|buf| io::Read::read(&mut &*stream, buf)) {
            self.end_lingering(slot, id);
        }
    }

    fn set_interest(&mut self, id: ConnectionId, interest: Interest) {
        let slot = Table::slot(id);
        let Some(connection) = self.slab.get_mut(slot) else {
            return;
        };
        if let Err(error) = self
            .registry
            .reregister(&mut connection.stream, Token(slot), interest)
        {
            warn!(connection = id.0, %error, "cannot change the socket's interest");
        }
    }
}

impl Sockets for Table {
    fn write(&mut self, id: ConnectionId, slices: &[IoSlice<'_>]) -> Option<io::Result<usize>> {
        let connection = self.get(id)?;
        if connection.write_blocked {
            return None;
        }
        Some((&connection.stream).write_vectored(slices))
    }

    fn blocked(&mut self, id: ConnectionId) {
        if let Some(connection) = self.get(id) {
            connection.write_blocked = true;
            // Re-registering re-checks readiness: a socket that drained meanwhile reports at once.
            self.set_interest(id, Interest::READABLE | Interest::WRITABLE);
        }
    }

    fn close(&mut self, id: ConnectionId) {
        let slot = Table::slot(id);
        let Some(connection) = self.get(id) else {
            return;
        };
        driver::shutdown_write(&connection.stream);
        connection.lingering = true;
        connection.write_blocked = false;
        self.set_interest(id, Interest::READABLE);
        self.lingering
            .push_back((Instant::now() + driver::LINGER, slot, id));
        // Bytes that arrived before the close would not be reported again (edge-triggered).
        self.discard(slot);
    }

    fn lost(&mut self, id: ConnectionId) {
        self.remove(id);
    }
}

struct Loop {
    poll: Poll,
    listener: TcpListener,
    signals: Signals,
    driver: Driver,
    table: Table,
    accepted: u64,
    /// The listener reported connections and `accept` has not returned `WouldBlock` since. (It
    /// is edge-triggered: connections left in the backlog by a failed `accept` are not reported
    /// again.)
    accept_pending: bool,
    /// After a failed `accept`, accepting resumes at this instant.
    accept_paused_until: Option<Instant>,
    /// Connections that may have bytes left after `READS_PER_TURN` reads.
    still_readable: Vec<ConnectionId>,
    /// Signals received so far.
    signalled: usize,
    drain_deadline: Option<Instant>,
}

impl Loop {
    fn run(&mut self) -> ExitCode {
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        loop {
            let timeout = self.poll_timeout(Instant::now());
            if let Err(error) = self.poll.poll(&mut events, timeout) {
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                error!(%error, "poll failed");
                return ExitCode::from(1);
            }
            let mut woken = false;
            let mut readable = std::mem::take(&mut self.still_readable);
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_pending = true,
                    WAKER => woken = true,
                    SIGNALS => {
                        for _ in self.signals.pending() {
                            self.signalled += 1;
                        }
                    }
                    Token(slot) => {
                        let Some(connection) = self.table.slab.get_mut(slot) else {
                            continue;
                        };
                        if connection.lingering {
                            self.table.discard(slot);
                            continue;
                        }
                        let id = connection.id;
                        if connection.write_blocked
                            && (event.is_writable() || event.is_write_closed() || event.is_error())
                        {
                            connection.write_blocked = false;
                            self.table.set_interest(id, Interest::READABLE);
                            self.driver.writable(id);
                        }
                        if (event.is_readable() || event.is_read_closed() || event.is_error())
                            && !readable.contains(&id)
                        {
                            readable.push(id);
                        }
                    }
                }
            }
            if self.signalled >= 2 {
                return self.driver.exit(Drained::SecondSignal);
            }
            if self.signalled == 1 && self.drain_deadline.is_none() {
                self.driver.begin_drain();
                self.drain_deadline = Some(Instant::now() + self.driver.drain_limit());
                self.driver.dispatch(&mut self.table);
            }
            if self.accept_pending {
                self.accept();
            }
            for id in readable {
                self.read(id);
            }
            if woken {
                self.driver.poll_services();
                self.driver.dispatch(&mut self.table);
            }
            if self
                .driver
                .poll_timeout()
                .is_some_and(|deadline| deadline <= Instant::now())
            {
                self.driver.timeout();
                self.driver.dispatch(&mut self.table);
            }
            self.driver.flush(&mut self.table);
            self.table.sweep_lingering(Instant::now());
            if let Some(deadline) = self.drain_deadline {
                if self.driver.is_drained() {
                    return self.driver.exit(Drained::Closed);
                }
                if Instant::now() >= deadline {
                    return self.driver.exit(Drained::TimedOut);
                }
            }
        }
    }

    /// How long `poll` may wait: until the core's next deadline, the end of an accept backoff or
    /// the drain limit, whichever is first; not at all while a connection has bytes left.
    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        if !self.still_readable.is_empty() {
            return Some(Duration::ZERO);
        }
        [
            self.driver.poll_timeout(),
            self.accept_paused_until,
            self.drain_deadline,
            self.table
                .lingering
                .front()
                .map(|&(deadline, _, _)| deadline),
        ]
        .into_iter()
        .flatten()
        .min()
        .map(|deadline| deadline.saturating_duration_since(now))
    }

    fn accept(&mut self) {
        if let Some(until) = self.accept_paused_until {
            if Instant::now() < until {
                return;
            }
            self.accept_paused_until = None;
        }
        loop {
            match self.listener.accept() {
                Ok((mut stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let entry = self.table.slab.vacant_entry();
                    let slot = entry.key();
                    self.accepted += 1;
                    let id = ConnectionId((self.accepted << SLOT_BITS) | slot as u64);
                    if let Err(error) =
                        self.table
                            .registry
                            .register(&mut stream, Token(slot), Interest::READABLE)
                    {
                        warn!(%error, "cannot register a connection");
                        continue;
                    }
                    entry.insert(Connection {
                        id,
                        stream,
                        write_blocked: false,
                        lingering: false,
                    });
                    self.driver.accept(id, peer, Instant::now());
                    self.driver.dispatch(&mut self.table);
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    self.accept_pending = false;
                    return;
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    driver::accept_failed(&error);
                    self.accept_paused_until = Some(Instant::now() + ACCEPT_BACKOFF);
                    return;
                }
            }
        }
    }

    /// Reads `id` until `WouldBlock` (or `READS_PER_TURN` reads).
    fn read(&mut self, id: ConnectionId) {
        for _ in 0..READS_PER_TURN {
            let Some(connection) = self.table.get(id) else {
                return;
            };
            let stream = &connection.stream;
            let read = self
                .driver
                .read(id, |buf| io::Read::read(&mut &*stream, buf));
            match read {
                Read::Data => self.driver.dispatch(&mut self.table),
                Read::WouldBlock => return,
                Read::Gone => {
                    self.table.remove(id);
                    self.driver.dispatch(&mut self.table);
                    return;
                }
            }
        }
        self.still_readable.push(id);
    }
}

fn run(settings: Settings) -> ExitCode {
    let poll = match Poll::new() {
        Ok(poll) => poll,
        Err(error) => return driver::startup_failed(&format!("cannot create a poll: {error}")),
    };
    // Signals first: a signal that arrives once we are listening must start a drain.
    let signals = Signals::new([libc::SIGTERM, libc::SIGINT]).and_then(|mut signals| {
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)
            .map(|()| signals)
    });
    let Ok(signals) = signals else {
        error!("cannot install signal handlers");
        return ExitCode::from(1);
    };
    let (waker, registry) = match (
        Waker::new(poll.registry(), WAKER),
        poll.registry().try_clone(),
    ) {
        (Ok(waker), Ok(registry)) => (waker, registry),
        (Err(error), _) | (_, Err(error)) => {
            return driver::startup_failed(&format!("cannot create a waker: {error}"))
        }
    };
    let driver = match Driver::start(&settings, Arc::new(MioWake(waker))) {
        Ok(driver) => driver,
        Err(message) => return driver::startup_failed(&message),
    };
    let mut listener = match driver::listen(&settings) {
        Ok(listener) => TcpListener::from_std(listener),
        Err(code) => return code,
    };
    if let Err(error) = poll
        .registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
    {
        return driver::startup_failed(&format!("cannot register the listener: {error}"));
    }
    Loop {
        poll,
        listener,
        signals,
        driver,
        table: Table {
            registry,
            slab: Slab::new(),
            lingering: VecDeque::new(),
        },
        accepted: 0,
        accept_pending: false,
        accept_paused_until: None,
        still_readable: Vec::new(),
        signalled: 0,
        drain_deadline: None,
    }
    .run()
}

fn main() -> ExitCode {
    driver::main(run)
}
