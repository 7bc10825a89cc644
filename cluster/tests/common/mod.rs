//! A real `nats-server -js` on loopback, and a test-side client of the engine that waits for
//! completions on a condition variable (never a sleep).

#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use diminuendo_cluster::*;

/// Where the test command installed `nats-server` (`DIMINUENDO_NATS_SERVER`), else the venv the
/// test command uses under `target/`, else `nats-server` on the PATH.
pub fn nats_server_binary() -> PathBuf {
    if let Ok(p) = std::env::var("DIMINUENDO_NATS_SERVER") {
        return PathBuf::from(p);
    }
    let venv =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/conformance-venv/bin/nats-server");
    if venv.is_file() {
        return venv;
    }
    PathBuf::from("nats-server")
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

pub struct NatsServer {
    child: Option<Child>,
    extra: Vec<String>,
    pub port: u16,
    pub store: tempfile::TempDir,
}

impl NatsServer {
    pub fn start() -> NatsServer {
        NatsServer::start_with(&[])
    }

    /// With extra command-line options (authentication, ...).
    pub fn start_with(extra: &[&str]) -> NatsServer {
        let store = tempfile::tempdir().expect("tempdir");
        let mut server = NatsServer {
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            port: free_port(),
            store,
        };
        // The free port may be taken by someone else before the server binds it: try another.
        for _ in 0..3 {
            if server.try_spawn() {
                return server;
            }
            server.port = free_port();
        }
        panic!("nats-server would not start on three free ports");
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        assert!(
            self.try_spawn(),
            "nats-server exited at start (port {})",
            self.port
        );
    }

    /// Starts the server and waits until it listens; false if it exited first.
    fn try_spawn(&mut self) -> bool {
        let bin = nats_server_binary();
        let child = Command::new(&bin)
            .args(["-js", "-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("-sd")
            .arg(self.store.path())
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} (set DIMINUENDO_NATS_SERVER; scripts/test installs it): {e}",
                    bin.display()
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not start listening"
            );
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(_)) = c.try_wait() {
                    self.child = None;
                    return false;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Stops the server with SIGTERM (a clean shutdown) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM to the PID this helper spawned (with the kill command: no unsafe code).
            sigterm(child.id());
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Starts it again on the same port and store directory.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

fn sigterm(pid: u32) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[derive(Default)]
struct Signal {
    woken: Mutex<bool>,
    cv: Condvar,
}

impl Wake for Signal {
    fn wake(&self) {
        if let Ok(mut w) = self.woken.lock() {
            *w = true;
            self.cv.notify_all();
        }
    }
}

/// One engine instance and the completions it returned that no wait has taken yet.
pub struct Node {
    pub cluster: Cluster,
    signal: Arc<Signal>,
    pending: Vec<ClusterCompletion>,
    next_token: u64,
}

pub const WAIT: Duration = Duration::from_secs(20);

impl Node {
    pub fn start(config: ClusterConfig) -> Node {
        let signal = Arc::new(Signal::default());
        let cluster = Cluster::start(config, signal.clone()).expect("cluster start");
        let mut node = Node {
            cluster,
            signal,
            pending: Vec::new(),
            next_token: 1,
        };
        node.wait_state(ConnectionState::Connected);
        node
    }

    pub fn config(url: &str, instance: &str) -> ClusterConfig {
        let mut c = ClusterConfig::new(url, instance);
        c.lease_renewal = Duration::from_millis(400);
        c.instance_heartbeat = Duration::from_millis(500);
        c
    }

    pub fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    pub fn submit(&self, cmd: ClusterCommand) {
        self.cluster.submit(cmd).expect("submit");
    }

    /// Takes the first completion (in arrival order) that `pick` accepts, waiting for it until
    /// the deadline; panics with what arrived otherwise.
    pub fn wait_for<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(&ClusterCompletion) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            self.cluster.drain_completions(&mut self.pending);
            if let Some(i) = self.pending.iter().position(|c| pick(c).is_some()) {
                let c = self.pending.remove(i);
                return pick(&c).expect("picked");
            }
            let now = Instant::now();
            assert!(
                now < deadline,
                "timed out waiting for {what}; got {:#?}",
                self.pending
            );
            let guard = self.signal.woken.lock().expect("lock");
            let (mut guard, _) = self
                .signal
                .cv
                .wait_timeout_while(guard, deadline - now, |w| !*w)
                .expect("wait");
            *guard = false;
        }
    }

    pub fn wait_state(&mut self, state: ConnectionState) {
        if self.cluster.connection_state() == state {
            self.pending
                .retain(|c| !matches!(c, ClusterCompletion::Connection { .. }));
            return;
        }
        self.wait_for(&format!("connection {state:?}"), |c| match c {
            ClusterCompletion::Connection { state: s } if *s == state => Some(()),
            _ => None,
        });
    }

    /// Completions received so far and not taken.
    pub fn drain(&mut self) -> Vec<ClusterCompletion> {
        self.cluster.drain_completions(&mut self.pending);
        std::mem::take(&mut self.pending)
    }

    // Requests that wait for their answer.

    pub fn registry(
        &mut self,
        cmd: impl FnOnce(u64) -> ClusterCommand,
    ) -> Result<u64, ClusterError> {
        let token = self.token();
        self.submit(cmd(token));
        self.wait_for("registry write", |c| match c {
            ClusterCompletion::Registry { token: t, result } if *t == token => Some(result.clone()),
            _ => None,
        })
    }

    pub fn get(
        &mut self,
        tenant: &str,
        session: &str,
    ) -> Result<Option<RegistryEntry>, ClusterError> {
        let token = self.token();
        self.submit(ClusterCommand::RegistryGet {
            token,
            tenant_id: tenant.into(),
            session_id: session.into(),
        });
        self.wait_for("registry get", |c| match c {
            ClusterCompletion::RegistryEntry { token: t, result } if *t == token => {
                Some(result.clone())
            }
            _ => None,
        })
    }

    pub fn list(&mut self, tenant: &str) -> Result<Vec<RegistryEntry>, ClusterError> {
        let token = self.token();
        self.submit(ClusterCommand::RegistryList {
            token,
            tenant_id: tenant.into(),
        });
        self.wait_for("registry list", |c| match c {
            ClusterCompletion::RegistryList { token: t, result } if *t == token => {
                Some(result.clone())
            }
            _ => None,
        })
    }

    pub fn lease(&mut self, cmd: impl FnOnce(u64) -> ClusterCommand) -> Result<u64, ClusterError> {
        let token = self.token();
        self.submit(cmd(token));
        self.wait_for("lease", |c| match c {
            ClusterCompletion::Lease {
                token: t, result, ..
            } if *t == token => Some(result.clone()),
            _ => None,
        })
    }

    pub fn acquire(&mut self, session: &str, fence: u64) -> Result<u64, ClusterError> {
        self.lease(|token| ClusterCommand::AcquireLease {
            token,
            session_id: session.into(),
            fence,
        })
    }

    pub fn renew(&mut self, session: &str) -> Result<u64, ClusterError> {
        self.lease(|token| ClusterCommand::RenewLease {
            token,
            session_id: session.into(),
        })
    }

    pub fn open_log(
        &mut self,
        tenant: &str,
        session: &str,
    ) -> Result<Option<LogEvent>, ClusterError> {
        let token = self.token();
        self.submit(ClusterCommand::OpenLog {
            token,
            tenant_id: tenant.into(),
            session_id: session.into(),
        });
        self.wait_for("log opened", |c| match c {
            ClusterCompletion::LogOpened {
                token: t, result, ..
            } if *t == token => Some(result.clone()),
            _ => None,
        })
    }

    pub fn append(
        &mut self,
        tenant: &str,
        session: &str,
        seq: u64,
        epoch: &str,
        payload: &[u8],
    ) -> Result<u64, ClusterError> {
        self.submit(ClusterCommand::Append {
            tenant_id: tenant.into(),
            session_id: session.into(),
            seq,
            epoch: epoch.into(),
            payload: bytes::Bytes::copy_from_slice(payload),
        });
        let s = session.to_string();
        self.wait_for("append", |c| match c {
            ClusterCompletion::Appended {
                session_id,
                seq: q,
                result,
            } if *session_id == s && *q == seq => Some(result.clone()),
            _ => None,
        })
    }

    pub fn fetch(
        &mut self,
        tenant: &str,
        session: &str,
        after_seq: u64,
        from: Option<u64>,
        limit: u32,
    ) -> Result<(Vec<LogEvent>, bool), ClusterError> {
        let token = self.token();
        self.submit(ClusterCommand::Fetch {
            token,
            tenant_id: tenant.into(),
            session_id: session.into(),
            after_seq,
            from_stream_seq: from,
            limit,
        });
        self.wait_for("fetch", |c| match c {
            ClusterCompletion::Fetched { token: t, result } if *t == token => Some(result.clone()),
            _ => None,
        })
    }

    pub fn subscribe(&mut self, tenant: &str, session: &str) {
        self.submit(ClusterCommand::Subscribe {
            tenant_id: tenant.into(),
            session_id: session.into(),
        });
        let s = session.to_string();
        self.wait_for("subscribed", |c| match c {
            ClusterCompletion::Subscribed {
                session_id, result, ..
            } if *session_id == s => Some(result.clone()),
            _ => None,
        })
        .expect("subscribe");
    }
}

/// Polls `f` until it returns `Some`, at most until the deadline (a bounded poll of a condition
/// that only time changes: a lease's expiry, a cache fed by a watch).
pub fn poll_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn meta(tenant: &str, id: &str, name: &str, created_at_ms: i64) -> SessionMeta {
    SessionMeta {
        id: id.into(),
        tenant_id: tenant.into(),
        name: name.into(),
        agent_type: "echo".into(),
        status: "inactive".into(),
        archived: false,
        created_by: "u1".into(),
        created_at_ms,
        updated_at_ms: created_at_ms,
        last_seq: 0,
        epoch: "00000000000000a1".into(),
        acp_session_id: None,
        log_mark: None,
    }
}
