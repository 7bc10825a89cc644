//! The gateway on tokio: a current-thread runtime owns the core. Each connection has a task that
//! reads and waits for writability; one flusher task writes what the core queued, so every write
//! of a loop turn to one connection leaves in one vectored syscall; storage and agent completions
//! arrive through a `Notify`. No protocol logic lives here.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::Shutdown;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use diminuendo_adapter_common::services::Services;
use diminuendo_adapter_common::settings::Settings;
use diminuendo_adapter_common::write::{flush_connection, Flushed};
use diminuendo_adapter_common::{clock_anchor, logging, seed};
use diminuendo_core::{ConnectionId, Gateway, Wake};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::Notify;
use tokio::task::LocalSet;
use tracing::{debug, error, info, warn};

/// Bytes read from a socket at once, into one buffer shared by every connection.
const SCRATCH_SIZE: usize = 64 * 1024;
/// How long agents get to stop when the gateway exits.
const AGENT_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// The wake-up hook for storage and agent threads.
struct NotifyWake(Arc<Notify>);

impl Wake for NotifyWake {
    fn wake(&self) {
        self.0.notify_one();
    }
}

struct Connection {
    stream: TcpStream,
    /// Wakes the connection's task when it must wait for writability or stop.
    wake: Notify,
    write_blocked: Cell<bool>,
    closed: Cell<bool>,
}

struct Driver {
    gateway: RefCell<Gateway>,
    services: RefCell<Services>,
    connections: RefCell<HashMap<ConnectionId, Rc<Connection>>>,
    scratch: RefCell<Vec<u8>>,
    flush: Notify,
    timer_changed: Notify,
    drained: Notify,
    armed_deadline: Cell<Option<Instant>>,
}

impl Driver {
    /// Called after every input: carries out the core's events and schedules writes and timers.
    fn after_input(&self) {
        self.dispatch_events();
        self.flush.notify_one();
        let deadline = self.gateway.borrow().poll_timeout();
        if deadline != self.armed_deadline.get() {
            self.timer_changed.notify_one();
        }
        if self.gateway.borrow().is_drained() {
            self.drained.notify_one();
        }
    }

    fn dispatch_events(&self) {
        loop {
            let event = self.gateway.borrow_mut().poll_event();
            let Some(event) = event else { break };
            let close = self.services.borrow_mut().dispatch(
                &mut self.gateway.borrow_mut(),
                event,
                Instant::now(),
            );
            if let Some(id) = close {
                self.close(id);
            }
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
            self.dispatch_events();
        }
        if self.gateway.borrow().is_drained() {
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

/// Storage and agent threads finished something.
async fn services_task(driver: Rc<Driver>, woken: Arc<Notify>) {
    loop {
        woken.notified().await;
        driver
            .services
            .borrow_mut()
            .poll(&mut driver.gateway.borrow_mut(), Instant::now());
        driver.after_input();
        // Write what this poll published before the next one adds more, and let the other
        // tasks (reads, timers) run between polls of a fast agent.
        driver.flush_all();
        tokio::task::yield_now().await;
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
    // Signals first: a signal that arrives once we are listening must start a drain.
    let (Ok(mut terminate), Ok(mut interrupt)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        error!("cannot install signal handlers");
        return ExitCode::from(1);
    };
    let woken = Arc::new(Notify::new());
    let (now, unix_ms) = clock_anchor();
    let (gateway, services) = match Services::start(
        &settings,
        Arc::new(NotifyWake(woken.clone())),
        now,
        unix_ms,
        seed(),
    ) {
        Ok(started) => started,
        Err(message) => {
            error!(%message, "cannot start");
            return ExitCode::from(1);
        }
    };
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

    let drain_limit =
        settings.core.turn_grace + settings.core.close_timeout + Duration::from_secs(2);
    let driver = Rc::new(Driver {
        gateway: RefCell::new(gateway),
        services: RefCell::new(services),
        connections: RefCell::new(HashMap::new()),
        scratch: RefCell::new(vec![0; SCRATCH_SIZE]),
        flush: Notify::new(),
        timer_changed: Notify::new(),
        drained: Notify::new(),
        armed_deadline: Cell::new(None),
    });
    tokio::task::spawn_local(flusher_task(driver.clone()));
    tokio::task::spawn_local(timer_task(driver.clone()));
    tokio::task::spawn_local(services_task(driver.clone(), woken));
    tokio::task::spawn_local(accept_task(driver.clone(), listener));

    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    info!("signal received: draining");
    driver.gateway.borrow_mut().begin_shutdown(Instant::now());
    driver.after_input();
    let exit = drain(&driver, drain_limit, &mut terminate, &mut interrupt).await;
    if exit == ExitCode::SUCCESS {
        // Every connection is closed: stop the agents, then flush and close storage.
        driver.services.borrow_mut().shutdown(AGENT_STOP_TIMEOUT);
    }
    exit
}

/// Waits until the core has closed every connection (or the drain limit passes); a second
/// signal exits at once.
async fn drain(
    driver: &Rc<Driver>,
    limit: Duration,
    terminate: &mut Signal,
    interrupt: &mut Signal,
) -> ExitCode {
    let drained = async {
        while !driver.gateway.borrow().is_drained() {
            driver.drained.notified().await;
        }
    };
    tokio::select! {
        _ = drained => info!("every connection closed"),
        _ = tokio::time::sleep(limit) => {
            warn!(open = driver.gateway.borrow().connection_count(), "drain timed out");
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
