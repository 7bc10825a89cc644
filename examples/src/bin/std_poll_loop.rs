//! Embedding the core in a hand-written event loop: one thread, std's non-blocking sockets and
//! `poll(2)`, no async runtime. It serves the real protocol (dev mode: no authentication) on a
//! TCP port, calling the sans-IO `Gateway` directly: every input is a `handle_*` call, and after
//! each one the loop drains `poll_event`, writes what `poll_transmit` names with `outbound`, then
//! reports what each socket took with `handle_sent`, and sleeps in `poll` no longer than
//! `poll_timeout`. No input is called while outputs are drained: what comes back meanwhile (a
//! synchronous agent report, a refused storage command, a socket's progress) is fed to the core
//! once the drain is over, and the drain runs again.
//!
//! Storage and agents are the real ones: `Services` from `diminuendo-adapter-common` (SQLite in
//! `--data-dir`, the bundled echo agent run as this program's `echo-agent` subcommand). Their
//! threads wake the loop by writing a byte to a socket pair that `poll` watches.
//!
//! ```text
//! std_poll_loop [--listen ADDR] [--data-dir DIR] [--connections N]
//! ```
//! With `--connections N` it stops gracefully once N connections have come and gone.

use std::collections::HashMap;
use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use diminuendo_adapter_common::services::Services;
use diminuendo_adapter_common::settings::{Flags, Settings, ECHO_AGENT_COMMAND};
use diminuendo_adapter_common::{clock_anchor, OsEntropy};
use diminuendo_core::{ConnectionId, Gateway, Wake};

/// The wake-up hook: storage and agent threads write a byte; `poll` sees the other end readable.
struct PipeWake(UnixStream);

impl Wake for PipeWake {
    fn wake(&self) {
        // A full pipe already holds a wake-up.
        let _ = (&self.0).write(&[1]);
    }
}

struct Connection {
    stream: TcpStream,
    /// A write came back short: wait for POLLOUT before writing again.
    blocked: bool,
}

struct App {
    gateway: Gateway,
    services: Services,
    connections: HashMap<ConnectionId, Connection>,
    next_id: u64,
    scratch: Vec<u8>,
    /// Connections that have come and gone.
    served: usize,
}

impl App {
    /// Carries out the core's events: storage and agent commands go to the services, and a
    /// connection the core is done with is closed here.
    fn dispatch(&mut self) {
        for _ in 0..DRAIN_ROUNDS {
            while let Some(event) = self.gateway.poll_event() {
                // `Services::dispatch` takes no `Gateway`: what a command gives back at once is
                // queued in the services until the drain is over.
                if let Some(id) = self.services.dispatch(event) {
                    if let Some(connection) = self.connections.remove(&id) {
                        let _ = connection.stream.shutdown(Shutdown::Write);
                        self.served += 1;
                    }
                }
            }
            if !self.services.has_queued() {
                return;
            }
            self.services.feed_queued(&mut self.gateway, Instant::now());
        }
        // Still more: the wake-up pipe brings the loop back (`Services::poll` feeds the rest).
        self.services.wake_again();
    }

    /// The peer went away or its socket failed.
    fn lost(&mut self, id: ConnectionId) {
        self.gateway.handle_closed(id, Instant::now());
        if self.connections.remove(&id).is_some() {
            self.served += 1;
        }
        self.dispatch();
    }

    fn accept(&mut self, listener: &TcpListener) {
        loop {
            match listener.accept() {
                Ok((stream, peer)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    self.next_id += 1;
                    let id = ConnectionId(self.next_id);
                    self.connections.insert(
                        id,
                        Connection {
                            stream,
                            blocked: false,
                        },
                    );
                    self.gateway.handle_accept(id, peer, Instant::now());
                    self.dispatch();
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                // WouldBlock: all accepted. Anything else (e.g. out of descriptors): try again
                // on the next readiness.
                Err(_) => return,
            }
        }
    }

    /// Reads until the socket has nothing more.
    fn read(&mut self, id: ConnectionId) {
        loop {
            let Some(connection) = self.connections.get(&id) else {
                return;
            };
            match (&connection.stream).read(&mut self.scratch) {
                Ok(0) => return self.lost(id),
                Ok(len) => {
                    self.gateway
                        .handle_data(id, &mut self.scratch[..len], Instant::now());
                    self.dispatch();
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.lost(id),
            }
        }
    }

    /// Writes what the core queued: one vectored write per connection it names. A short write
    /// leaves the rest queued in the core until the socket is writable again. What each socket
    /// took is told to the core after the pass, then the pass runs again for what that queued.
    fn flush(&mut self) {
        let mut written = Vec::new();
        for _ in 0..DRAIN_ROUNDS {
            while let Some(id) = self.gateway.poll_transmit() {
                let Some(connection) = self.connections.get_mut(&id) else {
                    continue;
                };
                if connection.blocked {
                    continue;
                }
                let mut slices = [IoSlice::new(&[]); 64];
                let filled = self.gateway.outbound(id, &mut slices);
                let offered: usize = slices[..filled].iter().map(|slice| slice.len()).sum();
                let result = (&connection.stream).write_vectored(&slices[..filled]);
                if matches!(&result, Ok(taken) if *taken < offered)
                    || matches!(&result, Err(error) if error.kind() == io::ErrorKind::WouldBlock)
                {
                    connection.blocked = true;
                }
                written.push((id, result));
            }
            if written.is_empty() {
                return;
            }
            let now = Instant::now();
            for (id, result) in written.drain(..) {
                match result {
                    Ok(taken) => {
                        self.gateway.handle_sent(id, taken, now);
                        let blocked = self.connections.get(&id).is_some_and(|c| c.blocked);
                        if !blocked && self.gateway.outbound_len(id) > 0 {
                            // More than 64 chunks waited: queue the connection again.
                            self.gateway.handle_writable(id, now);
                        }
                    }
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => {
                        self.gateway.handle_writable(id, now)
                    }
                    Err(_) => self.lost(id),
                }
            }
            // Writing the last queued byte may complete a close.
            self.dispatch();
        }
        self.services.wake_again();
    }
}

/// Drains of the core's outputs one `dispatch` or `flush` runs, with what they queued fed in
/// between; past it the wake-up pipe brings the loop back.
const DRAIN_ROUNDS: usize = 16;

struct Args {
    listen: Option<std::net::SocketAddr>,
    data_dir: Option<PathBuf>,
    connections: Option<usize>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        listen: None,
        data_dir: None,
        connections: None,
    };
    let mut words = std::env::args().skip(1);
    while let Some(flag) = words.next() {
        let value = words
            .next()
            .ok_or_else(|| format!("{flag} takes a value"))?;
        match flag.as_str() {
            "--listen" => args.listen = Some(value.parse().map_err(|_| "bad --listen")?),
            "--data-dir" => args.data_dir = Some(PathBuf::from(value)),
            "--connections" => {
                args.connections = Some(value.parse().map_err(|_| "bad --connections")?)
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

fn main() -> Result<(), String> {
    // The bundled echo agent is this very program, started with `echo-agent`.
    if std::env::args().nth(1).as_deref() == Some(ECHO_AGENT_COMMAND) {
        diminuendo_echo_agent::run();
        return Ok(());
    }
    let args = parse_args()?;
    let settings = Settings::resolve(Flags {
        listen: Some(args.listen.unwrap_or(([127, 0, 0, 1], 0).into())),
        data_dir: args.data_dir,
        dev: Some(true),
        ..Flags::default()
    })?;

    let (wake_write, wake_read) = UnixStream::pair().map_err(|error| error.to_string())?;
    for end in [&wake_write, &wake_read] {
        end.set_nonblocking(true)
            .map_err(|error| error.to_string())?;
    }
    // The same moment on the monotonic and the wall clock, and the OS CSPRNG for the core's
    // randomness (ids must not be guessable).
    let (now, unix_ms) = clock_anchor();
    let (gateway, services) = Services::start(
        &settings,
        Arc::new(PipeWake(wake_write)),
        now,
        unix_ms,
        Box::new(OsEntropy::new()?),
    )?;

    let listener = TcpListener::bind(settings.listen).map_err(|error| error.to_string())?;
    listener
        .set_nonblocking(true)
        .map_err(|error| error.to_string())?;
    let addr = listener.local_addr().map_err(|error| error.to_string())?;
    println!("listening on {addr}");

    let mut app = App {
        gateway,
        services,
        connections: HashMap::new(),
        next_id: 0,
        scratch: vec![0; 64 * 1024],
        served: 0,
    };
    let mut ids = Vec::new();
    let mut fds = Vec::new();
    loop {
        if args.connections.is_some_and(|limit| app.served >= limit) && !app.gateway.is_draining() {
            app.gateway.begin_shutdown(Instant::now());
            app.dispatch();
            app.flush();
        }
        if app.gateway.is_drained() {
            break;
        }

        // One pollfd for the listener, one for the wake-up pipe, one per connection.
        ids.clear();
        fds.clear();
        for fd in [listener.as_raw_fd(), wake_read.as_raw_fd()] {
            fds.push(libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        for (id, connection) in &app.connections {
            let mut events = libc::POLLIN;
            if connection.blocked {
                events |= libc::POLLOUT;
            }
            ids.push(*id);
            fds.push(libc::pollfd {
                fd: connection.stream.as_raw_fd(),
                events,
                revents: 0,
            });
        }
        let timeout_ms = app.gateway.poll_timeout().map_or(-1, |deadline| {
            let wait = deadline.saturating_duration_since(Instant::now());
            // Round up: waking a little late is fine, waking early spins.
            i32::try_from(wait.as_micros().div_ceil(1000)).unwrap_or(i32::MAX)
        });
        // SAFETY: `fds` is a valid, exclusively borrowed array of `fds.len()` pollfds.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if ready < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("poll: {error}"));
        }

        if fds[0].revents != 0 {
            app.accept(&listener);
        }
        if fds[1].revents != 0 {
            let mut drain = [0u8; 64];
            while matches!((&wake_read).read(&mut drain), Ok(len) if len > 0) {}
            app.services.poll(&mut app.gateway, Instant::now());
            app.dispatch();
        }
        for (index, id) in ids.iter().enumerate() {
            let revents = fds[index + 2].revents;
            if revents & libc::POLLOUT != 0 {
                if let Some(connection) = app.connections.get_mut(id) {
                    connection.blocked = false;
                    app.gateway.handle_writable(*id, Instant::now());
                }
            }
            if revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                app.read(*id);
            }
        }
        if app
            .gateway
            .poll_timeout()
            .is_some_and(|deadline| deadline <= Instant::now())
        {
            app.gateway.handle_timeout(Instant::now());
            app.dispatch();
        }
        // Every write of this turn, coalesced: one vectored write per connection.
        app.flush();
    }
    app.services.shutdown(Duration::from_secs(5));
    println!("served {} connection(s); stopped", app.served);
    Ok(())
}
