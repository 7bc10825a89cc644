//! `cluster`: cluster mode's figures (issue 16) on one machine. A `nats-server -js` on a free
//! loopback port with its store in a temporary directory, and three instances of the binary
//! (`--cluster`, a shared `--workspace-root`), each spawned like every other target (dev mode,
//! `--rate-limit 0`, coalescing off). Then:
//!
//! - `cluster-create`: sequential `create_session` round trips on instance A (the reply goes out
//!   once the registry write is acknowledged by JetStream);
//! - `cluster-paced`: one delta at a time: turns of `stream 1 64` run from a client of the owner
//!   A, one after another; for each, the time the delta reached that client and the time it
//!   reached a client of B (which gets it through NATS), measured in one thread (A's read
//!   first: the owner delivers before it publishes);
//! - `cluster-latency`: a session owned by A (created and run there), one subscriber on A and one
//!   on B; for each delta of a flat-out `stream N SIZE` turn, B's receive time minus A's (the
//!   event is published on the owner, stored by JetStream, republished, received by B and
//!   delivered to its client);
//! - `cluster-fanout`: the fan-out subcommand with its subscribers spread over the three
//!   instances in turn (the gateway CPU is the three processes' sum).
//!
//! Every process is stopped by its pid (the server SIGTERM then SIGKILL; the gateways as
//! `Spawned` stops them) and every directory removed.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::fanout;
use crate::report::{Report, Summary};
use crate::sequential;
use crate::server::Target;
use crate::wire::{self, BlockingWs};

pub struct Options {
    pub nats_server: Option<PathBuf>,
    pub paced_turns: usize,
    pub count: usize,
    pub latency_deltas: usize,
    pub subscribers: usize,
    pub deltas: usize,
    pub size: usize,
    pub timeout: Duration,
}

/// The `nats-server` to run: `--nats-server`, else `DIMINUENDO_NATS_SERVER`, else the test
/// command's venv under `target/`, else the PATH.
fn nats_binary(given: Option<&Path>) -> PathBuf {
    if let Some(path) = given {
        return path.to_path_buf();
    }
    if let Some(path) = std::env::var_os("DIMINUENDO_NATS_SERVER") {
        return PathBuf::from(path);
    }
    let venv =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/conformance-venv/bin/nats-server");
    if venv.is_file() {
        return venv;
    }
    PathBuf::from("nats-server")
}

struct Nats {
    child: Option<Child>,
    port: u16,
    _store: tempfile::TempDir,
}

impl Nats {
    fn start(binary: &Path) -> io::Result<Nats> {
        let store = tempfile::tempdir()?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new(binary)
            .args(["-js", "-a", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .arg("-sd")
            .arg(store.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|error| {
                io::Error::new(
                    error.kind(),
                    format!(
                        "cannot start {} (give --nats-server): {error}",
                        binary.display()
                    ),
                )
            })?;
        let mut nats = Nats {
            child: Some(child),
            port,
            _store: store,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(child) = nats.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    nats.child = None;
                    return Err(io::Error::other(format!("nats-server exited: {status}")));
                }
            }
            if Instant::now() > deadline {
                return Err(io::Error::other("nats-server did not listen in 20 s"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(nats)
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(pid) = i32::try_from(child.id()) {
                // SAFETY: kill(2) has no memory-safety preconditions; the child is not reaped.
                unsafe {
                    libc::kill(pid, libc::SIGTERM);
                }
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs the three measurements; returns their reports (printed by the caller).
pub fn cluster(binary: &Path, name: &str, options: &Options) -> io::Result<Vec<Report>> {
    let nats = Nats::start(&nats_binary(options.nats_server.as_deref()))?;
    let workspaces = tempfile::tempdir()?;
    let start_instances = || -> io::Result<Vec<Target>> {
        let mut instances = Vec::new();
        for instance in ["bench-a", "bench-b", "bench-c"] {
            let flags: Vec<String> = [
                "--coalesce-deltas",
                "false",
                "--cluster",
                &nats.url(),
                "--cluster-instance",
                instance,
                "--workspace-root",
                &workspaces.path().to_string_lossy(),
            ]
            .iter()
            .map(|flag| flag.to_string())
            .collect();
            instances.push(Target::new(Some(binary), None, &flags)?);
        }
        for target in &instances {
            let deadline = Instant::now() + Duration::from_secs(30);
            while wire::http_get_status(target.addr, "/readyz", Duration::from_secs(2)).ok()
                != Some(200)
            {
                if Instant::now() > deadline {
                    return Err(io::Error::other(format!(
                        "instance at {} not ready (/readyz) in 30 s",
                        target.addr
                    )));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(instances)
    };

    let mut reports = Vec::new();
    {
        let instances = start_instances()?;
        let mut report =
            sequential::create_named("cluster-create", &instances[0], name, options.count, 10)?;
        report.note("cluster mode: three instances on one nats-server -js (file store, loopback)");
        reports.push(report);
    }
    let fanout_over = |bench: &'static str,
                       subscribers: usize,
                       deltas: usize,
                       spread: usize|
     -> io::Result<Report> {
        // Fresh instances each time: no earlier session's agent or subscription competes.
        let instances = start_instances()?;
        let fanout_options = fanout::Options {
            subscribers,
            deltas,
            size: options.size,
            timeout: options.timeout,
            subscriber_addrs: instances.iter().take(spread).map(|t| t.addr).collect(),
            other_pids: instances.iter().skip(1).filter_map(Target::pid).collect(),
            name: bench,
        };
        fanout::fanout(&instances[0], name, Some(false), &fanout_options)
    };
    {
        let instances = start_instances()?;
        reports.push(paced_latency(
            &instances[0],
            &instances[1],
            name,
            options.paced_turns,
        )?);
    }
    reports.push(fanout_over(
        "cluster-latency",
        2,
        options.latency_deltas,
        2,
    )?);
    reports.push(fanout_over(
        "cluster-fanout",
        options.subscribers,
        options.deltas,
        3,
    )?);
    drop(workspaces);
    drop(nats);
    Ok(reports)
}

/// `cluster-paced`: see the module's doc.
fn paced_latency(a: &Target, b: &Target, name: &str, turns: usize) -> io::Result<Report> {
    const WARMUP: usize = 10;
    let timeout = sequential::IO_TIMEOUT;
    let mut owner = BlockingWs::connect_authenticated(a.addr, timeout)?;
    let session = sequential::prepared_session(&mut owner)?;
    let join = format!(r#"{{"type":"join_session","requestId":"j","sessionId":"{session}"}}"#);
    owner.request("j", &join)?;
    let mut remote = BlockingWs::connect_authenticated(b.addr, timeout)?;
    remote.request("j", &join)?;
    let (mut cross, mut local, mut end_to_end) = (Vec::new(), Vec::new(), Vec::new());
    for turn in 0..WARMUP + turns {
        let message = format!(
            r#"{{"type":"run_turn","requestId":"p{turn}","sessionId":"{session}","text":"stream 1 64"}}"#
        );
        let sent = Instant::now();
        owner.send_text(message.as_bytes())?;
        owner.wait_for(|payload| wire::is_type(payload, b"text_delta"))?;
        let at_owner = Instant::now();
        remote.wait_for(|payload| wire::is_type(payload, b"text_delta"))?;
        let at_remote = Instant::now();
        // The turn is over (and the session ready again) on both before the next one.
        for ws in [&mut owner, &mut remote] {
            ws.wait_for(|payload| wire::is_type(payload, b"turn_complete"))?;
            ws.wait_for(|payload| wire::is_type(payload, b"session_state"))?;
        }
        if turn >= WARMUP {
            cross.push((at_remote - at_owner).as_nanos() as u64);
            local.push((at_owner - sent).as_nanos() as u64);
            end_to_end.push((at_remote - sent).as_nanos() as u64);
        }
    }
    let mut report = Report::new("cluster-paced", name, &a.flags_text());
    report.note(&format!(
        "{turns} turns of `stream 1 64` run one after another from a client of the owner (A); \
         {WARMUP} warm-ups discarded"
    ));
    report.latency(
        "crossInstance",
        "delta at a client of B minus at a client of the owner A",
        &Summary::of(&mut cross),
        true,
    );
    report.latency(
        "owner",
        "run_turn sent until the delta at the owner's client",
        &Summary::of(&mut local),
        false,
    );
    report.latency(
        "endToEnd",
        "run_turn sent until the delta at B's client",
        &Summary::of(&mut end_to_end),
        false,
    );
    Ok(report)
}
