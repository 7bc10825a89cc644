//! The runtime-independent half of every adapter: the gateway and its services, the read and
//! write paths, event dispatch, the listening socket, and the drain and exit sequence. A runtime
//! adapter owns a `Driver` (behind its own interior mutability, or directly in a hand-written
//! loop) and supplies only what needs its runtime: readiness, timers, signals and the wake-up
//! hook, plus a `Sockets` table the driver writes and closes through.
//!
//! The calling contract, whatever the runtime:
//! - after every input (`accept`, `read`, `timeout`, `poll_services`, `begin_drain`), call
//!   `dispatch`, then (now or once per loop turn) `flush`, and re-arm the timer at
//!   `poll_timeout`;
//! - no gateway input is ever called while its outputs are drained: `dispatch` and `flush` queue
//!   what the services and the sockets give back (synchronous agent reports, refused storage
//!   commands, what each socket took) and feed it to the core once their drain is over, then
//!   drain again, a bounded number of times (past the bound the services' wake-up hook brings
//!   the loop back);
//! - when a connection that `Sockets::blocked` named becomes writable, call `writable`, then
//!   `flush`;
//! - on the first SIGTERM/SIGINT `begin_drain`; stop at `is_drained`, `drain_limit` or a second
//!   signal, and return `exit(...)` from `main`.

use std::io::{self, IoSlice};
use std::net::{SocketAddr, TcpListener};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use diminuendo_core::{ConnectionId, Gateway, Wake};
use tracing::{error, info, warn};

use crate::services::Services;
use crate::settings::Settings;
use crate::write::{self, Flushed, Written};
use crate::{clock_anchor, logging, OsEntropy};

/// Bytes read from a socket at once, into one buffer shared by every connection.
pub const SCRATCH_SIZE: usize = 64 * 1024;
/// How long agents get to stop when the gateway exits.
pub const AGENT_STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an adapter waits after a failed `accept` (out of descriptors, a transient network
/// error) before accepting again: no spinning, and open connections keep being served.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// Pending connections the kernel queues for `accept`.
const LISTEN_BACKLOG: i32 = 1024;
/// Drains of the core's outputs one `dispatch` or `flush` runs, with the inputs they queued fed
/// in between; past it the services' wake-up hook brings the loop back for the rest, so a chain
/// of inputs that keeps producing more never holds the loop.
pub const DRAIN_ROUNDS: usize = 16;

/// The adapter's table of sockets, as the driver's write path and the core's closes need it.
pub trait Sockets {
    /// One non-blocking vectored write to `id`'s socket. `None` when there is no such socket or
    /// it is waiting for writability (its bytes stay queued in the core).
    fn write(&mut self, id: ConnectionId, slices: &[IoSlice<'_>]) -> Option<io::Result<usize>>;
    /// The socket took less than was queued: wait until it is writable, then call
    /// `Driver::writable` and `Driver::flush`.
    fn blocked(&mut self, id: ConnectionId);
    /// The core is done with `id` and everything queued was written: shut down the write half
    /// (so the peer reads everything before the end of the stream) and drop the socket.
    fn close(&mut self, id: ConnectionId);
    /// A write failed; the core has forgotten `id` already: drop the socket.
    fn lost(&mut self, id: ConnectionId);
}

/// What one `Driver::read` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// Bytes were fed to the core: dispatch, and read again.
    Data,
    /// Nothing to read now: wait for readability.
    WouldBlock,
    /// The peer went away or the socket failed; the core has forgotten the connection: drop the
    /// socket, then dispatch.
    Gone,
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Every connection closed.
    Closed,
    /// `drain_limit` passed with connections still open.
    TimedOut,
    /// A second SIGTERM/SIGINT: exit at once.
    SecondSignal,
}

/// The gateway core, its services and the scratch buffer every read goes through.
pub struct Driver {
    gateway: Gateway,
    services: Services,
    scratch: Vec<u8>,
    drain_limit: Duration,
    /// What each write of the current flush pass did, reported to the core after the pass.
    written: Vec<(ConnectionId, Written)>,
}

impl Driver {
    /// Opens storage, builds the gateway and starts the agent host; `wake` is the runtime's
    /// wake-up hook, called from storage and agent threads when they finished something.
    pub fn start(settings: &Settings, wake: Arc<dyn Wake>) -> Result<Driver, String> {
        let (now, unix_ms) = clock_anchor();
        let entropy = Box::new(OsEntropy::new()?);
        let (gateway, services) = Services::start(settings, wake, now, unix_ms, entropy)?;
        Ok(Driver {
            gateway,
            services,
            scratch: vec![0; SCRATCH_SIZE],
            drain_limit: settings.core.turn_grace
                + settings.core.close_timeout
                + Duration::from_secs(2),
            written: Vec::new(),
        })
    }

    pub fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    pub fn gateway_mut(&mut self) -> &mut Gateway {
        &mut self.gateway
    }

    /// A connection was accepted (`id` is the adapter's, unique among open connections).
    pub fn accept(&mut self, id: ConnectionId, peer: SocketAddr, now: Instant) {
        self.gateway.handle_accept(id, peer, now);
    }

    /// Reads once from `id`'s socket with `read` (a non-blocking read) into the shared scratch
    /// buffer and feeds what arrived to the core.
    pub fn read(
        &mut self,
        id: ConnectionId,
        mut read: impl FnMut(&mut [u8]) -> io::Result<usize>,
    ) -> Read {
        loop {
            match read(&mut self.scratch) {
                Ok(0) => break,
                Ok(len) => {
                    self.gateway
                        .handle_data(id, &mut self.scratch[..len], Instant::now());
                    return Read::Data;
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Read::WouldBlock,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    tracing::debug!(connection = id.0, %error, "read failed");
                    break;
                }
            }
        }
        self.gateway.handle_closed(id, Instant::now());
        Read::Gone
    }

    /// The peer went away or the socket failed outside a read (e.g. a readiness error).
    pub fn lost(&mut self, id: ConnectionId) {
        self.gateway.handle_closed(id, Instant::now());
    }

    /// Deadlines up to now have passed.
    pub fn timeout(&mut self) {
        self.gateway.handle_timeout(Instant::now());
    }

    /// When `timeout` should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.gateway.poll_timeout()
    }

    /// The wake-up hook fired: feed finished storage and agent work to the core.
    pub fn poll_services(&mut self) {
        self.services.poll(&mut self.gateway, Instant::now());
    }

    /// A socket `Sockets::blocked` named can take bytes again.
    pub fn writable(&mut self, id: ConnectionId) {
        self.gateway.handle_writable(id, Instant::now());
    }

    /// Carries out every event the core emitted: storage and agent commands go to the services,
    /// closes to `sockets`. What the services give back at once is fed to the core after the
    /// drain, and what that emits is drained in turn (at most `DRAIN_ROUNDS` times).
    pub fn dispatch(&mut self, sockets: &mut impl Sockets) {
        for _ in 0..DRAIN_ROUNDS {
            self.drain_events(sockets);
            if !self.services.has_queued() {
                return;
            }
            self.services.feed_queued(&mut self.gateway, Instant::now());
        }
        self.drain_events(sockets);
        if self.services.has_queued() {
            self.services.wake_again();
        }
    }

    /// One drain of the core's events; no gateway input is called meanwhile.
    fn drain_events(&mut self, sockets: &mut impl Sockets) {
        while let Some(event) = self.gateway.poll_event() {
            if let Some(id) = self.services.dispatch(event) {
                sockets.close(id);
            }
        }
    }

    /// Writes what the core queued, one vectored write per connection it names; once the pass is
    /// over, tells the core what each socket took, dispatches what that emits (a finished write
    /// may complete a close) and writes again what is queued again (at most `DRAIN_ROUNDS`
    /// passes).
    pub fn flush(&mut self, sockets: &mut impl Sockets) {
        for _ in 0..DRAIN_ROUNDS {
            if !self.write_pass(sockets) {
                return;
            }
        }
        // Work left (a connection queued again): come back on the loop's next turn.
        self.services.wake_again();
    }

    /// One flush pass: every connection `poll_transmit` names is written once, then the core is
    /// told. `false`: nothing was written.
    fn write_pass(&mut self, sockets: &mut impl Sockets) -> bool {
        let mut written = std::mem::take(&mut self.written);
        while let Some(id) = self.gateway.poll_transmit() {
            let mut skipped = false;
            let wrote = write::write_connection(&self.gateway, id, |slices| {
                sockets.write(id, slices).unwrap_or_else(|| {
                    skipped = true;
                    Err(io::ErrorKind::WouldBlock.into())
                })
            });
            // No socket, or one already waiting for writability: its bytes stay queued.
            if let (Some(wrote), false) = (wrote, skipped) {
                written.push((id, wrote));
            }
        }
        let wrote_any = !written.is_empty();
        let now = Instant::now();
        for (id, wrote) in written.drain(..) {
            match wrote.flushed {
                Flushed::All => {}
                Flushed::Blocked => sockets.blocked(id),
                Flushed::Failed => sockets.lost(id),
            }
            write::report(&mut self.gateway, id, wrote, now);
        }
        self.written = written;
        if wrote_any {
            self.dispatch(sockets);
        }
        wrote_any
    }

    /// The first SIGTERM/SIGINT: start the graceful stop.
    pub fn begin_drain(&mut self) {
        info!("signal received: draining");
        self.gateway.begin_shutdown(Instant::now());
    }

    /// Every connection is closed after `begin_drain`.
    pub fn is_drained(&self) -> bool {
        self.gateway.is_drained()
    }

    /// The longest a drain may take: the turn grace period, the close timeout and a margin.
    pub fn drain_limit(&self) -> Duration {
        self.drain_limit
    }

    /// The exit sequence: after a drain, stop the agents and flush and close storage (nothing
    /// acknowledged is lost) and exit 0; after a second signal exit 1 at once.
    pub fn exit(&mut self, drained: Drained) -> ExitCode {
        match drained {
            Drained::Closed => info!("every connection closed"),
            Drained::TimedOut => {
                warn!(open = self.gateway.connection_count(), "drain timed out");
            }
            Drained::SecondSignal => {
                warn!("second signal: exiting at once");
                return ExitCode::from(1);
            }
        }
        self.services.shutdown(AGENT_STOP_TIMEOUT);
        ExitCode::SUCCESS
    }
}

/// The settings from flags, environment and config file, and the logger; then `run`.
pub fn main(run: impl FnOnce(Settings) -> ExitCode) -> ExitCode {
    let settings = Settings::from_env();
    logging::init(settings.core.dev_mode);
    for warning in &settings.warnings {
        warn!("{warning}");
    }
    run(settings)
}

/// Binds the listening socket (non-blocking, `SO_REUSEADDR`, a backlog of 1024) and prints
/// `listening on ADDR` on stdout, for tools and tests that start the gateway on port 0. Call it
/// after the signal handlers are installed, so a signal that arrives once the line is out starts
/// a drain.
pub fn listen(settings: &Settings) -> Result<TcpListener, ExitCode> {
    let bound = bind(settings.listen);
    let listener = match bound {
        Ok(listener) => listener,
        Err(error) => {
            error!(listen = %settings.listen, %error, "cannot listen");
            return Err(ExitCode::from(1));
        }
    };
    let local = listener
        .local_addr()
        .map(|addr| addr.to_string())
        .unwrap_or_default();
    println!("listening on {local}");
    info!(listen = %local, dev = settings.core.dev_mode, "gateway started");
    Ok(listener)
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// Shuts down the write half of a socket: the peer reads everything sent, then the end of the
/// stream.
pub fn shutdown_write<S: std::os::fd::AsFd>(socket: &S) {
    let _ = socket2::SockRef::from(socket).shutdown(std::net::Shutdown::Write);
}

/// How long a socket the core closed is kept open, reading and discarding, after its write
/// half is shut down: closing a socket with unread bytes makes the kernel answer with a reset,
/// which destroys what the peer has not read yet (the close frame of a `1009`, while the client
/// still sends the rest of its oversized message; a `400`). The socket is dropped at the
/// peer's end of stream, a read error, or this deadline, whichever is first.
pub const LINGER: Duration = Duration::from_secs(2);

/// Most bytes discarded in one call to `discard_input` (a peer that sends faster is dropped).
const DISCARD_PER_CALL: usize = 8 * 1024 * 1024;

/// Reads and discards what a lingering socket's peer sent, until the socket would block: `true`
/// while the peer may still send (wait for readability and call again), `false` when the socket
/// can be dropped (end of stream, an error, or more than `DISCARD_PER_CALL` bytes at once).
pub fn discard_input(mut read: impl FnMut(&mut [u8]) -> io::Result<usize>) -> bool {
    let mut buffer = vec![0u8; SCRATCH_SIZE];
    let mut discarded = 0;
    while discarded < DISCARD_PER_CALL {
        match read(&mut buffer) {
            Ok(0) => return false,
            Ok(n) => discarded += n,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => return true,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    false
}

/// Logs a failed `accept`; the adapter then waits `ACCEPT_BACKOFF` before accepting again.
pub fn accept_failed(error: &io::Error) {
    warn!(%error, "accept failed");
}

/// A fatal startup error: logged, exit status 1.
pub fn startup_failed(message: &str) -> ExitCode {
    error!(%message, "cannot start");
    ExitCode::from(1)
}

#[cfg(test)]
mod tests {
    //! The driver's loop: what the services answer at once goes into the core within the same
    //! `dispatch` (no wake-up needed), and what a socket took is reported after the flush pass.
    use super::*;
    use crate::settings::Flags;
    use diminuendo_core::sim::client;
    use diminuendo_core::storage::{SessionRecord, SessionStatus};
    use serde_json::{json, Value};

    struct NoWake;

    impl Wake for NoWake {
        fn wake(&self) {}
    }

    const CLIENT: ConnectionId = ConnectionId(3);

    /// One socket that takes at most `limit` bytes a write while not blocked.
    #[derive(Default)]
    struct FakeSockets {
        received: Vec<u8>,
        limit: Option<usize>,
        blocked: bool,
        closed: bool,
    }

    impl Sockets for FakeSockets {
        fn write(&mut self, id: ConnectionId, slices: &[IoSlice<'_>]) -> Option<io::Result<usize>> {
            assert_eq!(id, CLIENT);
            if self.blocked || self.closed {
                return None;
            }
            let mut budget = self.limit.unwrap_or(usize::MAX);
            let mut taken = 0;
            for slice in slices {
                let take = slice.len().min(budget);
                self.received.extend_from_slice(&slice[..take]);
                taken += take;
                budget -= take;
            }
            Some(Ok(taken))
        }

        fn blocked(&mut self, _: ConnectionId) {
            self.blocked = true;
        }

        fn close(&mut self, _: ConnectionId) {
            self.closed = true;
        }

        fn lost(&mut self, _: ConnectionId) {
            self.closed = true;
        }
    }

    impl FakeSockets {
        /// The messages of every whole frame received after the 101, taken.
        fn messages(&mut self) -> Vec<Value> {
            let mut offset = 0;
            if let Some((response, len)) = client::parse_response(&self.received) {
                assert_eq!(response.status, 101);
                offset = len;
            }
            let mut messages = Vec::new();
            while let Some((frame, len)) = client::parse_frame(&self.received[offset..]) {
                messages.push(serde_json::from_slice(&frame.payload).expect("JSON"));
                offset += len;
            }
            self.received.drain(..offset);
            messages
        }
    }

    fn send(driver: &mut Driver, sockets: &mut FakeSockets, bytes: &[u8]) {
        let mut pending = Some(bytes.to_vec());
        let read = driver.read(CLIENT, |buf| match pending.take() {
            Some(bytes) => {
                buf[..bytes.len()].copy_from_slice(&bytes);
                Ok(bytes.len())
            }
            None => Err(io::ErrorKind::WouldBlock.into()),
        });
        assert_eq!(read, Read::Data);
        driver.dispatch(sockets);
        driver.flush(sockets);
    }

    fn start(dir: &tempfile::TempDir) -> (Driver, FakeSockets) {
        let settings = Settings::resolve(Flags {
            dev: Some(true),
            data_dir: Some(dir.path().to_path_buf()),
            ..Flags::default()
        })
        .expect("valid settings");
        let mut driver = Driver::start(&settings, Arc::new(NoWake)).expect("the driver starts");
        driver.gateway_mut().restore_sessions(vec![SessionRecord {
            id: "session-1".to_owned(),
            tenant_id: "dev".to_owned(),
            name: "New session".to_owned(),
            agent_type: "no-such-agent".to_owned(),
            status: SessionStatus::Inactive,
            archived: false,
            created_by: "dev-user-001".to_owned(),
            created_at_ms: 0,
            updated_at_ms: 0,
            last_seq: 0,
            epoch: "0123456789abcdef".to_owned(),
            acp_session_id: None,
        }]);
        let mut sockets = FakeSockets::default();
        driver.accept(
            CLIENT,
            "127.0.0.1:5000".parse().expect("an address"),
            Instant::now(),
        );
        send(&mut driver, &mut sockets, &client::upgrade("/ws"));
        assert!(!sockets.messages().is_empty(), "a greeting");
        (driver, sockets)
    }

    #[test]
    fn a_synchronous_report_is_answered_within_the_same_dispatch_and_flush() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (mut driver, mut sockets) = start(&dir);
        let turn =
            json!({"type": "run_turn", "sessionId": "session-1", "text": "hi", "requestId": "t1"});
        // No `poll_services`, no wake-up: the spawn's failure is fed back by `dispatch` itself.
        send(&mut driver, &mut sockets, &client::text(&turn.to_string()));
        let messages = sockets.messages();
        let reply = messages
            .iter()
            .find(|message| message["requestId"] == "t1")
            .unwrap_or_else(|| panic!("no reply to run_turn in {messages:?}"));
        assert_eq!(reply["code"], "AGENT_UNAVAILABLE", "{messages:?}");
        assert!(!driver.services.has_queued());
    }

    #[test]
    fn what_a_socket_took_is_reported_after_the_pass() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (mut driver, mut sockets) = start(&dir);
        sockets.limit = Some(5);
        let request = json!({"type": "list_sessions", "requestId": "l1"});
        send(
            &mut driver,
            &mut sockets,
            &client::text(&request.to_string()),
        );
        // The list is answered from memory: one short write, reported, and the socket blocked.
        assert_eq!(sockets.received.len(), 5);
        assert!(sockets.blocked);
        let waiting = driver.gateway().outbound_len(CLIENT);
        assert!(waiting > 0);
        let mut rounds = 0;
        while driver.gateway().outbound_len(CLIENT) > 0 {
            rounds += 1;
            assert!(rounds < 10_000, "the writes make no progress");
            sockets.blocked = false;
            driver.writable(CLIENT);
            driver.flush(&mut sockets);
        }
        assert_eq!(sockets.received.len(), 5 + waiting);
        let messages = sockets.messages();
        assert!(
            messages.iter().any(|message| message["requestId"] == "l1"),
            "{messages:?}"
        );
        assert!(!sockets.closed);
    }
}
