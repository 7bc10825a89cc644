//! The gateway on tokio: a current-thread runtime with a `LocalSet` runs the tasks of the shared
//! task-based adapter (`diminuendo_adapter_common::tasks`): a task per connection that reads and
//! waits for writability, a flusher (every write of a loop turn to one connection leaves in one
//! vectored syscall), a timer, a services task woken through a `Notify`, an accept task. What is
//! here is what needs tokio: its `Notify`, its sockets, its timers and its signals (see
//! the Adapters section of `DESIGN.md`).

use std::io::{self, IoSlice};
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::Arc;

use diminuendo_adapter_common::driver::{self, Drained, Driver, ACCEPT_BACKOFF};
use diminuendo_adapter_common::settings::Settings;
use diminuendo_adapter_common::tasks::{Connection, Shared, TaskRuntime};
use diminuendo_core::{ConnectionId, Wake};
use tokio::io::Interest;
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::Notify;
use tokio::task::LocalSet;
use tracing::error;

struct Tokio;

impl TaskRuntime for Tokio {
    type Stream = TcpStream;
    type Notify = Notify;

    fn new_notify() -> Notify {
        Notify::new()
    }

    fn notify(notify: &Notify) {
        notify.notify_one();
    }

    fn write(stream: &TcpStream, slices: &[IoSlice<'_>]) -> io::Result<usize> {
        stream.try_write_vectored(slices)
    }
}

type Runtime = Shared<Tokio>;

/// The wake-up hook for storage and agent threads.
struct NotifyWake(Arc<Notify>);

impl Wake for NotifyWake {
    fn wake(&self) {
        self.0.notify_one();
    }
}

async fn connection_task(
    runtime: Rc<Runtime>,
    id: ConnectionId,
    connection: Rc<Connection<Tokio>>,
) {
    // One readiness future for both directions (rather than one each) keeps the task, which
    // every idle connection pays for, small.
    while !connection.is_closed() {
        let interest = if connection.is_write_blocked() {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        tokio::select! {
            biased;
            _ = connection.wake.notified() => {}
            ready = connection.stream.ready(interest) => {
                let Ok(ready) = ready else {
                    return runtime.lost(id);
                };
                if ready.is_writable() && connection.is_write_blocked() {
                    runtime.writable(id, &connection);
                }
                if (ready.is_readable() || ready.is_read_closed())
                    && !runtime.read(id, |buf| connection.stream.try_read(buf))
                {
                    return;
                }
            }
        }
    }
    if connection.lingers() {
        let deadline = tokio::time::Instant::now() + driver::LINGER;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                ready = connection.stream.ready(Interest::READABLE) => {
                    if ready.is_err()
                        || !driver::discard_input(|buf| connection.stream.try_read(buf))
                    {
                        return;
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
        match runtime.arm_timer() {
            Some(deadline) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline.into()) => runtime.timer_fired(),
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
        runtime.services_woken();
        tokio::task::yield_now().await;
    }
}

async fn accept_task(runtime: Rc<Runtime>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let (id, connection) = runtime.accept(stream, peer);
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

    let runtime = Runtime::new(driver);
    tokio::task::spawn_local(flusher_task(runtime.clone()));
    tokio::task::spawn_local(timer_task(runtime.clone()));
    tokio::task::spawn_local(services_task(runtime.clone(), woken));
    tokio::task::spawn_local(accept_task(runtime.clone(), listener));

    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    runtime.begin_drain();
    let drained = drain(&runtime, &mut terminate, &mut interrupt).await;
    runtime.exit(drained)
}

/// Waits until the core has closed every connection (or the drain limit passes), or a second
/// signal.
async fn drain(runtime: &Rc<Runtime>, terminate: &mut Signal, interrupt: &mut Signal) -> Drained {
    let closed = async {
        while !runtime.is_drained() {
            runtime.drained.notified().await;
        }
    };
    tokio::select! {
        _ = closed => Drained::Closed,
        _ = tokio::time::sleep(runtime.drain_limit()) => Drained::TimedOut,
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
