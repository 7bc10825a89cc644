//! The gateway on smol: a `LocalExecutor` driven by async-io's reactor on one thread owns the
//! shared `Driver`. The structure is tokio's: a task per connection that reads and waits for
//! writability, one flusher task (every write of a loop turn to one connection leaves in one
//! vectored syscall), a timer task, a services task woken by storage and agent threads, and the
//! signals from `async-signal`. No protocol logic lives here (see `adapters/ADAPTERS.md`).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::{self, IoSlice, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use async_executor::LocalExecutor;
use async_io::{Async, Timer};
use async_signal::{Signal, Signals};
use diminuendo_adapter_common::driver::{self, Drained, Driver, Read, Sockets, ACCEPT_BACKOFF};
use diminuendo_adapter_common::settings::Settings;
use diminuendo_core::{ConnectionId, Wake};
use futures_lite::{FutureExt, StreamExt};
use tracing::error;

/// A one-permit notification (tokio's `Notify::notify_one`): a notification nobody waits for is
/// kept for the next wait, and several collapse into one. Also the wake-up hook of storage and
/// agent threads, since a channel's sender is `Send + Sync`.
struct Notify {
    sender: async_channel::Sender<()>,
    receiver: async_channel::Receiver<()>,
}

impl Notify {
    fn new() -> Notify {
        let (sender, receiver) = async_channel::bounded(1);
        Notify { sender, receiver }
    }

    fn notify(&self) {
        // Full: a notification is pending already.
        let _ = self.sender.try_send(());
    }

    async fn notified(&self) {
        // Never closed: `self` holds the sender.
        let _ = self.receiver.recv().await;
    }
}

impl Wake for Notify {
    fn wake(&self) {
        self.notify();
    }
}

struct Connection {
    stream: Async<TcpStream>,
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
        connection.wake.notify();
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
        // The socket is non-blocking (`Async` made it so): a full buffer is `WouldBlock`.
        let mut stream: &TcpStream = connection.stream.get_ref();
        Some(stream.write_vectored(slices))
    }

    fn blocked(&mut self, id: ConnectionId) {
        if let Some(connection) = self.0.borrow().get(&id) {
            connection.write_blocked.set(true);
            connection.wake.notify();
        }
    }

    fn close(&mut self, id: ConnectionId) {
        if let Some(connection) = self.remove(id) {
            driver::shutdown_write(connection.stream.get_ref());
        }
    }

    fn lost(&mut self, id: ConnectionId) {
        self.remove(id);
    }
}

struct Runtime {
    driver: RefCell<Driver>,
    connections: Connections,
    executor: Rc<LocalExecutor<'static>>,
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
        self.flush.notify();
        if driver.poll_timeout() != self.armed_deadline.get() {
            self.timer_changed.notify();
        }
        if driver.is_drained() {
            self.drained.notify();
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
            self.drained.notify();
        }
    }
}

/// What woke a connection's task.
enum Woken {
    Notified,
    Writable(io::Result<()>),
    Readable(io::Result<()>),
}

async fn connection_task(runtime: Rc<Runtime>, id: ConnectionId, connection: Rc<Connection>) {
    loop {
        if connection.closed.get() {
            break;
        }
        // `or` polls its left side first: notifications, then writability, then reads.
        let notified = async {
            connection.wake.notified().await;
            Woken::Notified
        };
        let readable = async { Woken::Readable(connection.stream.readable().await) };
        let woken = if connection.write_blocked.get() {
            let writable = async { Woken::Writable(connection.stream.writable().await) };
            notified.or(writable).or(readable).await
        } else {
            notified.or(readable).await
        };
        match woken {
            Woken::Notified => {}
            Woken::Writable(Ok(())) => {
                connection.write_blocked.set(false);
                runtime.driver.borrow_mut().writable(id);
                runtime.flush.notify();
            }
            Woken::Readable(Ok(())) => {
                let read = runtime.driver.borrow_mut().read(id, |buf| {
                    let mut stream: &TcpStream = connection.stream.get_ref();
                    io::Read::read(&mut stream, buf)
                });
                match read {
                    Read::Data => runtime.after_input(),
                    Read::WouldBlock => {}
                    Read::Gone => {
                        runtime.lost(id);
                        break;
                    }
                }
            }
            Woken::Writable(Err(_)) | Woken::Readable(Err(_)) => {
                runtime.lost(id);
                break;
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
                let fired = async {
                    Timer::at(deadline).await;
                    true
                }
                .or(async {
                    runtime.timer_changed.notified().await;
                    false
                })
                .await;
                if fired {
                    runtime.driver.borrow_mut().timeout();
                    runtime.after_input();
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

async fn accept_task(runtime: Rc<Runtime>, listener: Async<TcpListener>) {
    let mut next_id = 0u64;
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.get_ref().set_nodelay(true);
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
                runtime
                    .executor
                    .spawn(connection_task(runtime.clone(), id, connection))
                    .detach();
            }
            Err(error) => {
                driver::accept_failed(&error);
                Timer::after(ACCEPT_BACKOFF).await;
            }
        }
    }
}

async fn run(settings: Settings, executor: Rc<LocalExecutor<'static>>) -> ExitCode {
    // Signals first: a signal that arrives once we are listening must start a drain.
    let mut signals = match Signals::new([Signal::Term, Signal::Int]) {
        Ok(signals) => signals,
        Err(error) => {
            error!(%error, "cannot install signal handlers");
            return ExitCode::from(1);
        }
    };
    let woken = Arc::new(Notify::new());
    let driver = match Driver::start(&settings, woken.clone()) {
        Ok(driver) => driver,
        Err(message) => return driver::startup_failed(&message),
    };
    let listener = match driver::listen(&settings).map(Async::new) {
        Ok(Ok(listener)) => listener,
        Ok(Err(error)) => return driver::startup_failed(&error.to_string()),
        Err(code) => return code,
    };

    let runtime = Rc::new(Runtime {
        driver: RefCell::new(driver),
        connections: RefCell::new(HashMap::new()),
        executor: executor.clone(),
        flush: Notify::new(),
        timer_changed: Notify::new(),
        drained: Notify::new(),
        armed_deadline: Cell::new(None),
    });
    executor.spawn(flusher_task(runtime.clone())).detach();
    executor.spawn(timer_task(runtime.clone())).detach();
    executor
        .spawn(services_task(runtime.clone(), woken))
        .detach();
    executor
        .spawn(accept_task(runtime.clone(), listener))
        .detach();

    signals.next().await;
    runtime.driver.borrow_mut().begin_drain();
    runtime.after_input();
    let drained = drain(&runtime, &mut signals).await;
    let exit = runtime.driver.borrow_mut().exit(drained);
    exit
}

/// Waits until the core has closed every connection (or the drain limit passes), or a second
/// signal.
async fn drain(runtime: &Rc<Runtime>, signals: &mut Signals) -> Drained {
    let limit = runtime.driver.borrow().drain_limit();
    let closed = async {
        while !runtime.driver.borrow().is_drained() {
            runtime.drained.notified().await;
        }
        Drained::Closed
    };
    let timed_out = async {
        Timer::after(limit).await;
        Drained::TimedOut
    };
    let second_signal = async {
        signals.next().await;
        Drained::SecondSignal
    };
    second_signal.or(closed).or(timed_out).await
}

fn main() -> ExitCode {
    driver::main(|settings| {
        let executor = Rc::new(LocalExecutor::new());
        async_io::block_on(executor.run(run(settings, executor.clone())))
    })
}
