//! The gateway on tokio: a current-thread runtime owns the shared `Driver`. Each connection has a
//! task that reads and waits for writability; one flusher task writes what the core queued, so
//! every write of a loop turn to one connection leaves in one vectored syscall; storage and agent
//! completions arrive through a `Notify`. No protocol logic lives here, and nothing that another
//! runtime would write the same way (see `adapters/ADAPTERS.md`).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::{self, IoSlice};
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use diminuendo_adapter_common::driver::{self, Drained, Driver, Read, Sockets, ACCEPT_BACKOFF};
use diminuendo_adapter_common::settings::Settings;
use diminuendo_core::{ConnectionId, Wake};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::Notify;
use tokio::task::LocalSet;
use tracing::error;

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

type Connections = RefCell<HashMap<ConnectionId, Rc<Connection>>>;

/// The connection table, as the driver writes and closes through it.
struct Table<'a>(&'a Connections);

impl Table<'_> {
    /// Forgets a connection and stops its task.
    fn remove(&mut self, id: ConnectionId) -> Option<Rc<Connection>> {
        let connection = self.0.borrow_mut().remove(&id)?;
        connection.closed.set(true);
        connection.wake.notify_one();
        Some(connection)
    }
}

impl Sockets for Table<'_> {
    fn write(&mut self, id: ConnectionId, slices: &[IoSlice<'_>]) -> Option<io::Result<usize>> {
        let connections = self.0.borrow();
        let connection = connections.get(&id)?;
        if connection.write_blocked.get() {
            return None;
        }
        Some(connection.stream.try_write_vectored(slices))
    }

    fn blocked(&mut self, id: ConnectionId) {
        if let Some(connection) = self.0.borrow().get(&id) {
            connection.write_blocked.set(true);
            connection.wake.notify_one();
        }
    }

    fn close(&mut self, id: ConnectionId) {
        if let Some(connection) = self.remove(id) {
            driver::shutdown_write(&connection.stream);
        }
    }

    fn lost(&mut self, id: ConnectionId) {
        self.remove(id);
    }
}

struct Runtime {
    driver: RefCell<Driver>,
    connections: Connections,
    flush: Notify,
    timer_changed: Notify,
    drained: Notify,
    armed_deadline: Cell<Option<Instant>>,
}

impl Runtime {
    /// Called after every input: carries out the core's events and schedules writes and timers.
    fn after_input(&self) {
        let mut driver = self.driver.borrow_mut();
        driver.dispatch(&mut Table(&self.connections));
        self.flush.notify_one();
        if driver.poll_timeout() != self.armed_deadline.get() {
            self.timer_changed.notify_one();
        }
        if driver.is_drained() {
            self.drained.notify_one();
        }
    }

    /// The peer went away or the socket failed.
    fn lost(&self, id: ConnectionId) {
        self.driver.borrow_mut().lost(id);
        Table(&self.connections).remove(id);
        self.after_input();
    }

    fn flush_all(&self) {
        let mut driver = self.driver.borrow_mut();
        driver.flush(&mut Table(&self.connections));
        if driver.is_drained() {
            self.drained.notify_one();
        }
    }
}

async fn connection_task(runtime: Rc<Runtime>, id: ConnectionId, connection: Rc<Connection>) {
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
                    runtime.lost(id);
                    break;
                }
                connection.write_blocked.set(false);
                runtime.driver.borrow_mut().writable(id);
                runtime.flush.notify_one();
            }
            ready = connection.stream.readable() => {
                if ready.is_err() {
                    runtime.lost(id);
                    break;
                }
                let read = runtime
                    .driver
                    .borrow_mut()
                    .read(id, |buf| connection.stream.try_read(buf));
                match read {
                    Read::Data => runtime.after_input(),
                    Read::WouldBlock => {}
                    Read::Gone => {
                        runtime.lost(id);
                        break;
                    }
                }
            }
        }
    }
}

async fn flusher_task(runtime: Rc<Runtime>) {
    loop {
        runtime.flush.notified().await;
        runtime.flush_all();
    }
}

async fn timer_task(runtime: Rc<Runtime>) {
    loop {
        let deadline = runtime.driver.borrow().poll_timeout();
        runtime.armed_deadline.set(deadline);
        match deadline {
            Some(deadline) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline.into()) => {
                        runtime.driver.borrow_mut().timeout();
                        runtime.after_input();
                    }
                    _ = runtime.timer_changed.notified() => {}
                }
            }
            None => runtime.timer_changed.notified().await,
        }
    }
}

/// Storage and agent threads finished something.
async fn services_task(runtime: Rc<Runtime>, woken: Arc<Notify>) {
    loop {
        woken.notified().await;
        runtime.driver.borrow_mut().poll_services();
        runtime.after_input();
    }
}

async fn accept_task(runtime: Rc<Runtime>, listener: TcpListener) {
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
                runtime
                    .connections
                    .borrow_mut()
                    .insert(id, connection.clone());
                runtime.driver.borrow_mut().accept(id, peer, Instant::now());
                runtime.after_input();
                tokio::task::spawn_local(connection_task(runtime.clone(), id, connection));
            }
            Err(error) => {
                driver::accept_failed(&error);
                tokio::time::sleep(ACCEPT_BACKOFF).await;
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
    let driver = match Driver::start(&settings, Arc::new(NotifyWake(woken.clone()))) {
        Ok(driver) => driver,
        Err(message) => return driver::startup_failed(&message),
    };
    let listener = match driver::listen(&settings).map(TcpListener::from_std) {
        Ok(Ok(listener)) => listener,
        Ok(Err(error)) => return driver::startup_failed(&error.to_string()),
        Err(code) => return code,
    };

    let runtime = Rc::new(Runtime {
        driver: RefCell::new(driver),
        connections: RefCell::new(HashMap::new()),
        flush: Notify::new(),
        timer_changed: Notify::new(),
        drained: Notify::new(),
        armed_deadline: Cell::new(None),
    });
    tokio::task::spawn_local(flusher_task(runtime.clone()));
    tokio::task::spawn_local(timer_task(runtime.clone()));
    tokio::task::spawn_local(services_task(runtime.clone(), woken));
    tokio::task::spawn_local(accept_task(runtime.clone(), listener));

    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    runtime.driver.borrow_mut().begin_drain();
    runtime.after_input();
    let drained = drain(&runtime, &mut terminate, &mut interrupt).await;
    let exit = runtime.driver.borrow_mut().exit(drained);
    exit
}

/// Waits until the core has closed every connection (or the drain limit passes), or a second
/// signal.
async fn drain(runtime: &Rc<Runtime>, terminate: &mut Signal, interrupt: &mut Signal) -> Drained {
    let limit = runtime.driver.borrow().drain_limit();
    let drained = async {
        while !runtime.driver.borrow().is_drained() {
            runtime.drained.notified().await;
        }
    };
    tokio::select! {
        _ = drained => Drained::Closed,
        _ = tokio::time::sleep(limit) => Drained::TimedOut,
        _ = terminate.recv() => Drained::SecondSignal,
        _ = interrupt.recv() => Drained::SecondSignal,
    }
}

fn main() -> ExitCode {
    driver::main(|settings| {
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
    })
}
