//! The gateway on tokio: a current-thread runtime owns the core. Each connection has a task that
//! reads and waits for writability; one flusher task writes what the core queued, so every write
//! of a loop turn to one connection leaves in one vectored syscall. No protocol logic lives here.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::Shutdown;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};

use diminuendo_adapter_common::settings::Settings;
use diminuendo_adapter_common::write::{flush_connection, Flushed};
use diminuendo_adapter_common::{clock_anchor, logging, seed};
use diminuendo_core::{ConnectionId, Event, Gateway};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Notify;
use tokio::task::LocalSet;
use tracing::{debug, error, info, warn};

/// Bytes read from a socket at once, into one buffer shared by every connection.
const SCRATCH_SIZE: usize = 64 * 1024;

struct Connection {
    stream: TcpStream,
    /// Wakes the connection's task when it must wait for writability or stop.
    wake: Notify,
    write_blocked: Cell<bool>,
    closed: Cell<bool>,
}

struct Driver {
    gateway: RefCell<Gateway>,
    connections: RefCell<HashMap<ConnectionId, Rc<Connection>>>,
    scratch: RefCell<Vec<u8>>,
    flush: Notify,
    timer_changed: Notify,
    drained: Notify,
    armed_deadline: Cell<Option<Instant>>,
}

impl Driver {
    /// Called after every input: acts on the core's events and schedules writes and timers.
    fn after_input(&self) {
        loop {
            let event = self.gateway.borrow_mut().poll_event();
            let Some(event) = event else { break };
            match event {
                Event::CloseConnection(id) => self.close(id),
                other => debug!(?other, "event not handled by this adapter"),
            }
        }
        self.flush.notify_one();
        let deadline = self.gateway.borrow().poll_timeout();
        if deadline != self.armed_deadline.get() {
            self.timer_changed.notify_one();
        }
        let gateway = self.gateway.borrow();
        if gateway.is_draining() && gateway.connection_count() == 0 {
            self.drained.notify_one();
        }
    }

    fn close(&self, id: ConnectionId) {
        if let Some(connection) = self.connections.borrow_mut().remove(&id) {
            connection.closed.set(true);
            // Half-close first so the peer reads everything before the end of the stream.
            let _ = socket2::SockRef::from(&connection.stream).shutdown(Shutdown::Write);
            connection.wake.notify_one();
        }
    }

    /// The peer went away or the socket failed.
    fn lost(&self, id: ConnectionId) {
        self.gateway.borrow_mut().handle_closed(id);
        if let Some(connection) = self.connections.borrow_mut().remove(&id) {
            connection.closed.set(true);
            connection.wake.notify_one();
        }
        self.after_input();
    }

    fn flush_all(&self) {
        loop {
            let next = self.gateway.borrow_mut().poll_transmit();
            let Some(id) = next else { break };
            let connection = self.connections.borrow().get(&id).cloned();
            let Some(connection) = connection else {
                continue;
            };
            if connection.write_blocked.get() {
                continue;
            }
            let flushed = flush_connection(&mut self.gateway.borrow_mut(), id, |slices| {
                connection.stream.try_write_vectored(slices)
            });
            match flushed {
                Flushed::All => {}
                Flushed::Blocked => {
                    connection.write_blocked.set(true);
                    connection.wake.notify_one();
                }
                Flushed::Failed => {
                    self.connections.borrow_mut().remove(&id);
                    connection.closed.set(true);
                    connection.wake.notify_one();
                }
            }
            // A finished write may complete a close.
            loop {
                let event = self.gateway.borrow_mut().poll_event();
                match event {
                    Some(Event::CloseConnection(id)) => self.close(id),
                    Some(other) => debug!(?other, "event not handled by this adapter"),
                    None => break,
                }
            }
        }
        let gateway = self.gateway.borrow();
        if gateway.is_draining() && gateway.connection_count() == 0 {
            self.drained.notify_one();
        }
    }
}

async fn connection_task(driver: Rc<Driver>, id: ConnectionId, connection: Rc<Connection>) {
    loop {
        if connection.closed.get() {
            break;
        }
        let blocked = connection.write_blocked.get();
        tokio::select! {
            biased;
            _ = connection.wake.notified() => {}
            ready = connection.stream.writable(), if blocked => {
                if ready.is_err() {
                    driver.lost(id);
                    break;
                }
                connection.write_blocked.set(false);
                driver.gateway.borrow_mut().handle_writable(id);
                driver.flush.notify_one();
            }
            ready = connection.stream.readable() => {
                if ready.is_err() {
                    driver.lost(id);
                    break;
                }
                let mut scratch = driver.scratch.borrow_mut();
                match connection.stream.try_read(&mut scratch) {
                    Ok(0) => {
                        drop(scratch);
                        driver.lost(id);
                        break;
                    }
                    Ok(read) => {
                        driver.gateway.borrow_mut().handle_data(id, &mut scratch[..read], Instant::now());
                        drop(scratch);
                        driver.after_input();
                    }
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                    Err(error) => {
                        drop(scratch);
                        debug!(connection = id.0, %error, "read failed");
                        driver.lost(id);
                        break;
                    }
                }
            }
        }
    }
}

async fn flusher_task(driver: Rc<Driver>) {
    loop {
        driver.flush.notified().await;
        driver.flush_all();
    }
}

async fn timer_task(driver: Rc<Driver>) {
    loop {
        let deadline = driver.gateway.borrow().poll_timeout();
        driver.armed_deadline.set(deadline);
        match deadline {
            Some(deadline) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline.into()) => {
                        driver.gateway.borrow_mut().handle_timeout(Instant::now());
                        driver.after_input();
                    }
                    _ = driver.timer_changed.notified() => {}
                }
            }
            None => driver.timer_changed.notified().await,
        }
    }
}

async fn accept_task(driver: Rc<Driver>, listener: TcpListener) {
    let mut next_id = 0u64;
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                next_id += 1;
                let id = ConnectionId(next_id);
                let connection = Rc::new(Connection {
                    stream,
                    wake: Notify::new(),
                    write_blocked: Cell::new(false),
                    closed: Cell::new(false),
                });
                driver
                    .connections
                    .borrow_mut()
                    .insert(id, connection.clone());
                driver
                    .gateway
                    .borrow_mut()
                    .handle_accept(id, peer, Instant::now());
                driver.after_input();
                tokio::task::spawn_local(connection_task(driver.clone(), id, connection));
            }
            Err(error) => {
                // Out of file descriptors or a transient network error: back off briefly rather
                // than spin, and keep serving the connections already open.
                warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn run(settings: Settings) -> ExitCode {
    let listener = match TcpListener::bind(settings.listen).await {
        Ok(listener) => listener,
        Err(error) => {
            error!(listen = %settings.listen, %error, "cannot listen");
            return ExitCode::from(1);
        }
    };
    let local = listener
        .local_addr()
        .map(|addr| addr.to_string())
        .unwrap_or_default();
    // One line on stdout for tools and tests that start the gateway on port 0.
    println!("listening on {local}");
    info!(listen = %local, dev = settings.core.dev_mode, "gateway started");

    let (now, unix_ms) = clock_anchor();
    let close_timeout = settings.core.close_timeout;
    let driver = Rc::new(Driver {
        gateway: RefCell::new(Gateway::new(settings.core, seed(), now, unix_ms)),
        connections: RefCell::new(HashMap::new()),
        scratch: RefCell::new(vec![0; SCRATCH_SIZE]),
        flush: Notify::new(),
        timer_changed: Notify::new(),
        drained: Notify::new(),
        armed_deadline: Cell::new(None),
    });
    tokio::task::spawn_local(flusher_task(driver.clone()));
    tokio::task::spawn_local(timer_task(driver.clone()));
    tokio::task::spawn_local(accept_task(driver.clone(), listener));

    let (Ok(mut terminate), Ok(mut interrupt)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        error!("cannot install signal handlers");
        return ExitCode::from(1);
    };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    info!("signal received: draining");
    driver.gateway.borrow_mut().begin_shutdown(Instant::now());
    driver.after_input();

    let drained = async {
        while driver.gateway.borrow().connection_count() > 0 {
            driver.drained.notified().await;
        }
    };
    tokio::select! {
        _ = drained => info!("every connection closed: exiting"),
        _ = tokio::time::sleep(close_timeout + Duration::from_secs(1)) => {
            warn!(open = driver.gateway.borrow().connection_count(), "drain timed out: exiting");
        }
        _ = terminate.recv() => { warn!("second signal: exiting at once"); return ExitCode::from(1); }
        _ = interrupt.recv() => { warn!("second signal: exiting at once"); return ExitCode::from(1); }
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let settings = Settings::from_env();
    logging::init(settings.core.dev_mode);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the tokio runtime: {error}");
            return ExitCode::from(1);
        }
    };
    LocalSet::new().block_on(&runtime, run(settings))
}
