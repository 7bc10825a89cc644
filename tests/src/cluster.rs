//! Cluster mode's harness: a real `nats-server -js` on loopback with its store in a temporary
//! directory, and gateway instances of one binary started against it (`--cluster`), each in its
//! own data directory, all sharing one `--workspace-root`.
//!
//! Every process is stopped by its PID (the server with SIGTERM, or SIGKILL on drop; a gateway as
//! [`Gateway`] stops it). Waits are bounded polls of a condition with a deadline.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::{connect, expect_dev_greeting, wire, Client, Gateway, Http, HttpResponse, Tapped};

/// Where the test command installed `nats-server` (`DIMINUENDO_NATS_SERVER`), else the venv the
/// test command uses under `target/`, else `nats-server` on the PATH.
pub fn nats_server_binary() -> PathBuf {
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

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

/// A fresh directory under the system's temporary directory, removed by [`TempDir`]'s drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(what: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!(
            "diminuendo-cluster-{what}-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("create a temporary directory");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("a local address").port()
}

/// A `nats-server -js` on `127.0.0.1`, its JetStream store in a temporary directory.
pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    store: TempDir,
}

impl NatsServer {
    pub fn start() -> NatsServer {
        let mut server = NatsServer {
            child: None,
            port: free_port(),
            store: TempDir::new("nats"),
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

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts the server and waits until it accepts connections; false if it exited first.
    fn try_spawn(&mut self) -> bool {
        let binary = nats_server_binary();
        let child = Command::new(&binary)
            .args(["-js", "-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("-sd")
            .arg(self.store.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "cannot start {} (set DIMINUENDO_NATS_SERVER; scripts/test installs it): \
                     {error}",
                    binary.display()
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not start listening"
            );
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(_)) = child.try_wait() {
                    self.child = None;
                    return false;
                }
            }
            // Polling for the listening socket, with a deadline.
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Stops the server with SIGTERM (a clean shutdown) and waits for it to exit.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: kill(2) has no memory-safety preconditions; the child is not reaped yet.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts it again on the same port and store (after [`NatsServer::stop`]).
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the server is still running");
        assert!(
            self.try_spawn(),
            "nats-server would not start again on port {}",
            self.port
        );
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Gateway instances of one binary in cluster mode on one NATS server, sharing a workspace
/// root. Instances are named `gw-a`, `gw-b`, ... by their index.
pub struct Cluster {
    /// Declared first: dropped (stopped) before the server and the workspace root.
    pub instances: Vec<Option<Gateway>>,
    /// The binaries, comma-separated.
    pub binary: String,
    pub nats: NatsServer,
    pub workspace_root: TempDir,
    extra: Vec<String>,
}

/// The default lease renewal of test clusters: a killed owner's lease expires 1.5 s after its
/// last renewal, so failover tests stay short.
pub const TEST_LEASE_RENEW_MS: u64 = 500;

impl Cluster {
    /// A NATS server and `count` dev-mode instances of `binary`, with `extra` flags each.
    pub fn start(binary: &str, count: usize, extra: &[&str]) -> Cluster {
        Cluster::start_mixed(&vec![binary; count], extra)
    }

    /// A NATS server and one dev-mode instance of each of `binaries` (instance `i` runs
    /// `binaries[i]`), with `extra` flags each.
    pub fn start_mixed(binaries: &[&str], extra: &[&str]) -> Cluster {
        let count = binaries.len();
        let mut cluster = Cluster {
            binary: binaries.join(","),
            nats: NatsServer::start(),
            workspace_root: TempDir::new("workspaces"),
            instances: Vec::new(),
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
        };
        for (index, binary) in binaries.iter().enumerate() {
            let gateway = cluster.launch(binary, index);
            cluster.instances.push(Some(gateway));
        }
        for index in 0..count {
            cluster.wait_ready(index, Duration::from_secs(30));
        }
        cluster
    }

    pub fn instance_id(index: usize) -> String {
        format!("gw-{}", (b'a' + index as u8) as char)
    }

    fn launch(&self, binary: &str, index: usize) -> Gateway {
        let url = self.nats.url();
        let instance = Cluster::instance_id(index);
        let root = self.workspace_root.path().display().to_string();
        let renew = TEST_LEASE_RENEW_MS.to_string();
        let mut args: Vec<&str> = vec![
            "--dev",
            "--cluster",
            &url,
            "--cluster-instance",
            &instance,
            "--cluster-lease-renew-ms",
            &renew,
            "--workspace-root",
            &root,
        ];
        args.extend(self.extra.iter().map(String::as_str));
        Gateway::start(binary, &args)
    }

    /// Instance `index` (it must be running).
    pub fn at(&self, index: usize) -> &Gateway {
        self.instances[index]
            .as_ref()
            .unwrap_or_else(|| panic!("instance {index} is not running"))
    }

    pub fn at_mut(&mut self, index: usize) -> &mut Gateway {
        self.instances[index]
            .as_mut()
            .unwrap_or_else(|| panic!("instance {index} is not running"))
    }

    /// SIGKILLs instance `index` by its PID and reaps it.
    pub fn kill(&mut self, index: usize) -> Gateway {
        let mut gateway = self.instances[index]
            .take()
            .unwrap_or_else(|| panic!("instance {index} is not running"));
        gateway.signal(libc::SIGKILL);
        assert!(
            gateway.wait_exit(Duration::from_secs(10)).is_some(),
            "instance {index} survived SIGKILL"
        );
        gateway
    }

    /// Waits until instance `index` answers `/readyz` 200 (connected to NATS, layout ready).
    pub fn wait_ready(&self, index: usize, timeout: Duration) {
        let gateway = self.at(index);
        poll_until(&format!("instance {index} ready"), timeout, || {
            (gateway.get("/readyz").status == 200).then_some(())
        });
    }

    /// Every running instance's log, for a failure message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (index, gateway) in self.instances.iter().enumerate() {
            if let Some(gateway) = gateway {
                out.push_str(&format!(
                    "\n===== {} ({}) =====\n{}",
                    Cluster::instance_id(index),
                    gateway.binary(),
                    gateway.log()
                ));
            }
        }
        out
    }
}

/// Polls `f` until it gives a value, at most `timeout`; panics naming `what` after it.
pub fn poll_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = f() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        // Polling a condition, with a deadline.
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A dev-mode client past its greeting, on `/ws` at `addr` (an instance, or the balancer).
pub fn dev_client_at(addr: SocketAddr) -> Client {
    let url = format!("ws://{addr}/ws");
    let stream = Tapped::new(connect(addr));
    let mut ws = match tungstenite::client(url, stream) {
        Ok((ws, _)) => ws,
        Err(error) => panic!("WebSocket handshake at {addr} failed: {error}"),
    };
    expect_dev_greeting(&mut ws);
    Client::new(ws)
}

/// One `GET` at `addr` on a new connection.
pub fn get_at(addr: SocketAddr, path: &str) -> HttpResponse {
    let mut http = Http::connect(addr);
    http.send(&wire::get(path));
    http.read_response()
}

/// HAProxy (Debian's `haproxy`) on a free loopback port in front of `backends`, configured like
/// `examples/haproxy.cfg` (health checks on `/readyz`, no stickiness), run in the foreground
/// and stopped by its PID.
pub struct Haproxy {
    child: Option<Child>,
    pub addr: SocketAddr,
    _dir: TempDir,
}

impl Haproxy {
    pub fn start(backends: &[SocketAddr]) -> Haproxy {
        let dir = TempDir::new("haproxy");
        let port = free_port();
        let mut config = format!(
            "global\n    maxconn 4096\n\
             defaults\n    mode http\n    option http-server-close\n    timeout connect 2s\n    \
             timeout client 60s\n    timeout server 60s\n    timeout tunnel 1h\n    \
             retry-on 503 conn-failure empty-response\n    retries 2\n    option redispatch\n\
             frontend diminuendo\n    bind 127.0.0.1:{port}\n    default_backend gateways\n\
             backend gateways\n    balance roundrobin\n    option httpchk\n    \
             http-check send meth GET uri /readyz\n    http-check expect status 200\n    \
             default-server inter 200ms fall 1 rise 1\n"
        );
        for (index, backend) in backends.iter().enumerate() {
            config.push_str(&format!("    server gw-{index} {backend} check\n"));
        }
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, config).expect("write the HAProxy configuration");
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!("cannot start haproxy (scripts/test installs Debian's): {error}")
            });
        let mut proxy = Haproxy {
            child: Some(child),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            _dir: dir,
        };
        poll_until("haproxy to listen", Duration::from_secs(10), || {
            if let Some(child) = proxy.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("haproxy exited at start: {status}");
                }
            }
            TcpStream::connect(proxy.addr).ok().map(|_| ())
        });
        proxy
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Cluster {
    /// An instance a test stopped (SIGSTOP) and did not continue gets SIGCONT first, so that
    /// its SIGTERM (when its `Gateway` is dropped, right after) stops it without the wait.
    fn drop(&mut self) {
        for gateway in self.instances.iter_mut().flatten() {
            gateway.signal(libc::SIGCONT);
        }
    }
}
