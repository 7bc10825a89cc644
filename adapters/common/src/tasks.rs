//! The shared half of adapters built on a single-threaded async executor (tokio's current-thread
//! runtime with a `LocalSet`, smol's `LocalExecutor`). Their structure is the same: a task per
//! connection that reads and waits for writability, a flusher task that writes what the core
//! queued once the inputs of a turn are in, a timer task, a services task woken by the wake-up
//! hook, an accept task. Everything those tasks do between two `.await`s is here; an adapter
//! supplies its notification primitive and its non-blocking vectored write (`TaskRuntime`) and
//! the tasks themselves, which are mostly its `select`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Instant;

use diminuendo_core::ConnectionId;

use crate::driver::{self, Drained, Driver, Read, Sockets};

/// What a task-based adapter supplies (implemented on a unit type of the adapter's own).
pub trait TaskRuntime: 'static {
    /// The runtime's TCP stream.
    type Stream: AsFd;
    /// A one-permit notification: `notify` with nobody waiting is kept for the next wait, and
    /// several collapse into one (tokio's `Notify::notify_one`).
    type Notify;
    fn new_notify() -> Self::Notify;
    fn notify(notify: &Self::Notify);
    /// One non-blocking vectored write (`WouldBlock` when the socket is full).
    fn write(stream: &Self::Stream, slices: &[IoSlice<'_>]) -> io::Result<usize>;
}

pub struct Connection<R: TaskRuntime> {
    pub stream: R::Stream,
    /// Wakes the connection's task when it must wait for writability or stop.
    pub wake: R::Notify,
    write_blocked: Cell<bool>,
    closed: Cell<bool>,
    /// The core closed it (rather than lost it): its task lingers (`driver::LINGER`).
    lingers: Cell<bool>,
}

impl<R: TaskRuntime> Connection<R> {
    /// The connection is gone: its task ends.
    pub fn is_closed(&self) -> bool {
        self.closed.get()
    }

    /// The core closed the connection: the task keeps reading and discarding until the peer's
    /// end of stream or `driver::LINGER` (see `driver::discard_input`), then drops the socket.
    pub fn lingers(&self) -> bool {
        self.lingers.get()
    }

    /// A write came back short: the task waits for writability, then calls `Shared::writable`.
    pub fn is_write_blocked(&self) -> bool {
        self.write_blocked.get()
    }
}

type Connections<R> = RefCell<HashMap<ConnectionId, Rc<Connection<R>>>>;

/// The state every task shares (in an `Rc`; everything runs on one thread, and no borrow is held
/// across an `.await`).
pub struct Shared<R: TaskRuntime> {
    driver: RefCell<Driver>,
    connections: Connections<R>,
    next_id: Cell<u64>,
    /// Wakes the flusher task.
    pub flush: R::Notify,
    /// Wakes the timer task when the core's next deadline is not the one it sleeps until.
    pub timer_changed: R::Notify,
    /// Wakes the drain once the core may have closed its last connection.
    pub drained: R::Notify,
    armed_deadline: Cell<Option<Instant>>,
}

impl<R: TaskRuntime> Shared<R> {
    pub fn new(driver: Driver) -> Rc<Shared<R>> {
        Rc::new(Shared {
            driver: RefCell::new(driver),
            connections: RefCell::new(HashMap::new()),
            next_id: Cell::new(0),
            flush: R::new_notify(),
            timer_changed: R::new_notify(),
            drained: R::new_notify(),
            armed_deadline: Cell::new(None),
        })
    }

    /// Called after every input: carries out the core's events and schedules writes and timers.
    pub fn after_input(&self) {
        let mut driver = self.driver.borrow_mut();
        driver.dispatch(&mut Table(&self.connections));
        R::notify(&self.flush);
        if driver.poll_timeout() != self.armed_deadline.get() {
            R::notify(&self.timer_changed);
        }
        if driver.is_drained() {
            R::notify(&self.drained);
        }
    }

    /// The flusher task's work: write what the core queued.
    pub fn flush_all(&self) {
        let mut driver = self.driver.borrow_mut();
        driver.flush(&mut Table(&self.connections));
        if driver.is_drained() {
            R::notify(&self.drained);
        }
    }

    /// A connection was accepted: the caller spawns its task.
    pub fn accept(&self, stream: R::Stream, peer: SocketAddr) -> (ConnectionId, Rc<Connection<R>>) {
        self.next_id.set(self.next_id.get() + 1);
        let id = ConnectionId(self.next_id.get());
        let connection = Rc::new(Connection {
            stream,
            wake: R::new_notify(),
            write_blocked: Cell::new(false),
            closed: Cell::new(false),
            lingers: Cell::new(false),
        });
        self.connections.borrow_mut().insert(id, connection.clone());
        self.driver.borrow_mut().accept(id, peer, Instant::now());
        self.after_input();
        (id, connection)
    }

    /// The socket is readable: read once with `read` (non-blocking). `false`: the connection is
    /// gone and its task ends.
    pub fn read(&self, id: ConnectionId, read: impl FnMut(&mut [u8]) -> io::Result<usize>) -> bool {
        let result = self.driver.borrow_mut().read(id, read);
        match result {
            Read::Data => self.after_input(),
            Read::WouldBlock => {}
            Read::Gone => {
                Table(&self.connections).remove(id);
                self.after_input();
                return false;
            }
        }
        true
    }

    /// A blocked socket is writable again.
    pub fn writable(&self, id: ConnectionId, connection: &Connection<R>) {
        connection.write_blocked.set(false);
        self.driver.borrow_mut().writable(id);
        R::notify(&self.flush);
    }

    /// Waiting for readiness failed: the socket is gone.
    pub fn lost(&self, id: ConnectionId) {
        self.driver.borrow_mut().lost(id);
        Table(&self.connections).remove(id);
        self.after_input();
    }

    /// The timer task's next deadline (it sleeps until then, or until `timer_changed`).
    pub fn arm_timer(&self) -> Option<Instant> {
        let deadline = self.driver.borrow().poll_timeout();
        self.armed_deadline.set(deadline);
        deadline
    }

    /// The timer task's deadline passed.
    pub fn timer_fired(&self) {
        self.driver.borrow_mut().timeout();
        self.after_input();
    }

    /// The wake-up hook fired: storage or agent threads finished something.
    /// The caller yields to its executor afterwards, so the other tasks (reads, timers) run
    /// between polls of a fast agent.
    pub fn services_woken(&self) {
        self.driver.borrow_mut().poll_services();
        self.after_input();
        // Write what this poll published before the next one adds more: a client that reads
        // is never taken for a slow consumer because its bytes waited for the flusher.
        self.flush_all();
    }

    /// The first signal.
    pub fn begin_drain(&self) {
        self.driver.borrow_mut().begin_drain();
        self.after_input();
    }

    pub fn is_drained(&self) -> bool {
        self.driver.borrow().is_drained()
    }

    pub fn drain_limit(&self) -> std::time::Duration {
        self.driver.borrow().drain_limit()
    }

    /// The exit sequence (see `Driver::exit`).
    pub fn exit(&self, drained: Drained) -> ExitCode {
        self.driver.borrow_mut().exit(drained)
    }
}

/// The connection table, as the driver writes and closes through it.
struct Table<'a, R: TaskRuntime>(&'a Connections<R>);

impl<R: TaskRuntime> Table<'_, R> {
    /// Forgets a connection and stops its task.
    fn remove(&mut self, id: ConnectionId) -> Option<Rc<Connection<R>>> {
        let connection = self.0.borrow_mut().remove(&id)?;
        connection.closed.set(true);
        R::notify(&connection.wake);
        Some(connection)
    }
}

impl<R: TaskRuntime> Sockets for Table<'_, R> {
    fn write(&mut self, id: ConnectionId, slices: &[IoSlice<'_>]) -> Option<io::Result<usize>> {
        let connections = self.0.borrow();
        let connection = connections.get(&id)?;
        if connection.write_blocked.get() {
            return None;
        }
        Some(R::write(&connection.stream, slices))
    }

    fn blocked(&mut self, id: ConnectionId) {
        if let Some(connection) = self.0.borrow().get(&id) {
            connection.write_blocked.set(true);
            R::notify(&connection.wake);
        }
    }

    fn close(&mut self, id: ConnectionId) {
        if let Some(connection) = self.remove(id) {
            driver::shutdown_write(&connection.stream);
            connection.lingers.set(true);
        }
    }

    fn lost(&mut self, id: ConnectionId) {
        self.remove(id);
    }
}
