//! The gateway on smol: a `LocalExecutor` driven by async-io's reactor on one thread runs the
//! tasks of the shared task-based adapter (`diminuendo_adapter_common::tasks`), as the tokio
//! adapter does: a task per connection that reads and waits for writability, a flusher (every
//! write of a loop turn to one connection leaves in one vectored syscall), a timer, a services
//! task, an accept task. What is here is what needs smol: its notification (a flag and an
//! `event_listener::Event`), `Async<TcpStream>`, `Timer` and `async-signal` (see the Adapters section of `DESIGN.md`).

use std::io::{self, IoSlice, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_executor::LocalExecutor;
use async_io::{Async, Timer};
use async_signal::{Signal, Signals};
use diminuendo_adapter_common::driver::{self, Drained, Driver, ACCEPT_BACKOFF};
use diminuendo_adapter_common::settings::Settings;
use diminuendo_adapter_common::tasks::{Connection, Shared, TaskRuntime};
use diminuendo_core::{ConnectionId, Wake};
use event_listener::Event;
use futures_lite::{FutureExt, StreamExt};
use tracing::error;

/// A one-permit notification (tokio's `Notify::notify_one`): a notification nobody waits for is
/// kept for the next wait (the flag), and several collapse into one. An `event_listener::Event`
/// is one pointer until someone waits, and every idle connection holds one, so it is kept small.
/// Also the wake-up hook of storage and agent threads (it is `Send + Sync`).
struct Notify {
    event: Event,
    pending: AtomicBool,
}

impl Notify {
    fn new() -> Notify {
        Notify {
            event: Event::new(),
            pending: AtomicBool::new(false),
        }
    }

    fn notify(&self) {
        self.pending.store(true, Ordering::Release);
        self.event.notify(1);
    }

    async fn notified(&self) {
        loop {
            if self.pending.swap(false, Ordering::AcqRel) {
                return;
            }
            let listener = self.event.listen();
            // A notify between the check and `listen` set the flag: look again before waiting.
            if self.pending.swap(false, Ordering::AcqRel) {
                return;
            }
            listener.await;
        }
    }
}

impl Wake for Notify {
    fn wake(&self) {
        self.notify();
    }
}

struct Smol;

impl TaskRuntime for Smol {
    type Stream = Async<TcpStream>;
    type Notify = Notify;

    fn new_notify() -> Notify {
        Notify::new()
    }

    fn notify(notify: &Notify) {
        notify.notify();
    }

    fn write(stream: &Async<TcpStream>, slices: &[IoSlice<'_>]) -> io::Result<usize> {
        // `Async` made the socket non-blocking: a full buffer is `WouldBlock`.
        let mut stream: &TcpStream = stream.get_ref();
        stream.write_vectored(slices)
    }
}

type Runtime = Shared<Smol>;

/// What woke a connection's task.
enum Woken {
    Notified,
    Writable(io::Result<()>),
    Readable(io::Result<()>),
}

async fn connection_task(runtime: Rc<Runtime>, id: ConnectionId, connection: Rc<Connection<Smol>>) {
    while !connection.is_closed() {
        // `or` polls its left side first: notifications, then writability, then reads.
        let notified = async {
            connection.wake.notified().await;
            Woken::Notified
        };
        let readable = async { Woken::Readable(connection.stream.readable().await) };
        let woken = if connection.is_write_blocked() {
            let writable = async { Woken::Writable(connection.stream.writable().await) };
            notified.or(writable).or(readable).await
        } else {
            notified.or(readable).await
        };
        match woken {
            Woken::Notified => {}
            Woken::Writable(Ok(())) => runtime.writable(id, &connection),
            Woken::Readable(Ok(())) => {
                let mut stream: &TcpStream = connection.stream.get_ref();
                if !runtime.read(id, |buf| io::Read::read(&mut stream, buf)) {
                    return;
                }
            }
            Woken::Writable(Err(_)) | Woken::Readable(Err(_)) => return runtime.lost(id),
        }
    }
    if connection.lingers() {
        let discard = async {
            while connection.stream.readable().await.is_ok() {
                let mut stream: &TcpStream = connection.stream.get_ref();
                if !driver::discard_input(|buf| io::Read::read(&mut stream, buf)) {
                    return;
                }
            }
        };
        let linger = async {
            Timer::after(driver::LINGER).await;
        };
        discard.or(linger).await;
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
        match runtime.arm_timer() {
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
                    runtime.timer_fired();
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
        runtime.services_woken();
        futures_lite::future::yield_now().await;
    }
}

async fn accept_task(
    runtime: Rc<Runtime>,
    listener: Async<TcpListener>,
    executor: Rc<LocalExecutor<'static>>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.get_ref().set_nodelay(true);
                let (id, connection) = runtime.accept(stream, peer);
                executor
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

    let runtime = Runtime::new(driver);
    executor.spawn(flusher_task(runtime.clone())).detach();
    executor.spawn(timer_task(runtime.clone())).detach();
    executor
        .spawn(services_task(runtime.clone(), woken))
        .detach();
    executor
        .spawn(accept_task(runtime.clone(), listener, executor.clone()))
        .detach();

    signals.next().await;
    runtime.begin_drain();
    let drained = drain(&runtime, &mut signals).await;
    runtime.exit(drained)
}

/// Waits until the core has closed every connection (or the drain limit passes), or a second
/// signal.
async fn drain(runtime: &Rc<Runtime>, signals: &mut Signals) -> Drained {
    let closed = async {
        while !runtime.is_drained() {
            runtime.drained.notified().await;
        }
        Drained::Closed
    };
    let timed_out = async {
        Timer::after(runtime.drain_limit()).await;
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
