//! Black-box test harness for the Diminuendo gateway binaries.
//!
//! Every test runs against each binary in [`binaries()`], a real process listening on loopback
//! port 0. The harness only speaks over sockets and signals, so the same tests hold every runtime
//! adapter (tokio, smol and a hand-written mio loop).
//!
//! # How the binaries are found and built
//!
//! `cargo test` builds the binaries of the package under test only, and `CARGO_BIN_EXE_<name>`
//! exists only for those, so a test of another package's binary cannot rely on cargo to build it.
//! The harness therefore builds them itself (every one of [`binaries()`] in one invocation), once
//! per test process (guarded by a `Mutex`), with the cargo that runs the tests (`$CARGO`), for
//! the same target directory, profile and target triple as the test executable (all derived from
//! where that executable lives: `<target-dir>[/<triple>]/<profile-dir>/deps/<test>-<hash>`).
//! Cargo releases its build lock before it runs test executables, so this nested build does not
//! deadlock; when the binaries are already up to date it takes a fraction of a second.
//!
//! Two environment variables change this:
//! - `DIMINUENDO_TEST_BIN_DIR=<dir>`: take the binaries from `<dir>` and build nothing (for
//!   binaries built elsewhere, e.g. with other flags or by CI beforehand).
//! - `DIMINUENDO_TEST_NO_BUILD=1`: use the binaries next to the test executable without building.
//!
//! # The protocol schema
//!
//! Every connection the harness opens is a [`Tapped`] socket: once it is a WebSocket on `/ws`,
//! every message sent and received is validated against `docs/protocol.schema.json`, and a
//! violation fails the test (see `schema_check.rs`). A test that sends a malformed message on
//! purpose says so ([`Client::call_invalid`], [`request_invalid`], [`RawWs::expect_invalid`]).
//!
//! # Processes
//!
//! A [`Gateway`] is stopped by PID when it is dropped: SIGTERM, a bounded wait, then SIGKILL, and
//! it is always reaped. Its stderr (the log) is kept and printed when the test fails.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

pub use diminuendo_core::sim::client::{self as wire, Frame, HttpResponse};
pub use schema_check::{check_client_message, check_server_message, ClientVerdict, Tapped};
pub use tungstenite;

pub mod cluster;
mod schema_check;

use serde_json::Value;
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::Message;

/// The gateway binaries every test runs against, one per runtime adapter. Adding an adapter is
/// one entry here.
pub fn binaries() -> &'static [&'static str] {
    &["diminuendo-tokio", "diminuendo-smol", "diminuendo-mio"]
}

/// Upper bound of one blocking read or write on a test socket.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a binary may take to print `listening on ...`.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a gateway may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

// ------------------------------------------------------------------------- locating binaries

/// Where the executables of the test's own build live, and how to ask cargo to build there.
struct BuildLayout {
    /// `<target-dir>[/<triple>]/<profile-dir>`: the binaries are here.
    profile_dir: PathBuf,
    target_dir: PathBuf,
    triple: Option<String>,
    /// The cargo profile (`dev` for the `debug` directory).
    profile: String,
}

fn build_layout() -> BuildLayout {
    let exe = std::env::current_exe().expect("the test executable's path");
    // <profile-dir>/deps/<test executable>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable lives in <target>/<profile>/deps")
        .to_path_buf();
    let profile_name = profile_dir
        .file_name()
        .and_then(|name| name.to_str())
        .expect("a profile directory name")
        .to_owned();
    let profile = match profile_name.as_str() {
        "debug" => "dev".to_owned(),
        other => other.to_owned(),
    };
    let parent = profile_dir
        .parent()
        .expect("a target directory")
        .to_path_buf();
    // Cargo marks the root of a target directory with CACHEDIR.TAG. When the grandparent has it
    // and the parent does not, the parent is a target triple (`cargo test --target <triple>`).
    let grandparent = parent.parent().map(Path::to_path_buf);
    let (target_dir, triple) = match grandparent {
        Some(root)
            if !parent.join("CACHEDIR.TAG").exists() && root.join("CACHEDIR.TAG").exists() =>
        {
            let triple = parent
                .file_name()
                .and_then(|name| name.to_str())
                .map(str::to_owned);
            (root, triple)
        }
        _ => (parent, None),
    };
    BuildLayout {
        profile_dir,
        target_dir,
        triple,
        profile,
    }
}

fn workspace_manifest() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives in the workspace root")
        .join("Cargo.toml")
}

static BUILT: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);

/// The path of `binary`, built first if needed (once per test process).
pub fn binary_path(binary: &str) -> PathBuf {
    let mut built = BUILT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let built = built.get_or_insert_with(HashMap::new);
    if let Some(path) = built.get(binary) {
        return path.clone();
    }
    // Every adapter binary at once, in one cargo invocation: the first test to ask pays for
    // the build, and the others find theirs ready.
    let mut wanted: Vec<&str> = binaries()
        .iter()
        .copied()
        .filter(|name| !built.contains_key(*name))
        .collect();
    if !wanted.contains(&binary) {
        wanted.push(binary);
    }
    let dir = if let Some(dir) = std::env::var_os("DIMINUENDO_TEST_BIN_DIR") {
        PathBuf::from(dir)
    } else {
        let layout = build_layout();
        if std::env::var_os("DIMINUENDO_TEST_NO_BUILD").is_none() {
            build(&wanted, &layout);
        }
        layout.profile_dir
    };
    for name in wanted {
        let path = dir.join(name);
        assert!(
            path.is_file(),
            "gateway binary {} not found (see the tests crate's docs: DIMINUENDO_TEST_BIN_DIR, \
             DIMINUENDO_TEST_NO_BUILD)",
            path.display()
        );
        built.insert(name.to_owned(), path);
    }
    dir.join(binary)
}

fn build(binaries: &[&str], layout: &BuildLayout) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .arg("build")
        .arg("--quiet")
        .arg("--manifest-path")
        .arg(workspace_manifest());
    for binary in binaries {
        command.arg("--bin").arg(binary);
    }
    command
        .arg("--profile")
        .arg(&layout.profile)
        .arg("--target-dir")
        .arg(&layout.target_dir);
    if let Some(triple) = &layout.triple {
        command.arg("--target").arg(triple);
    }
    let output = command
        .stdin(Stdio::null())
        .output()
        .expect("cannot run cargo to build the gateway binaries");
    assert!(
        output.status.success(),
        "cargo build of {binaries:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

// ------------------------------------------------------------------------- the gateway process

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

/// A running gateway process, stopped by PID when dropped.
pub struct Gateway {
    binary: String,
    child: Child,
    addr: SocketAddr,
    data_dir: PathBuf,
    /// Whether dropping this gateway deletes `data_dir` (not once a successor took it over).
    owns_data_dir: bool,
    log: Arc<Mutex<Vec<u8>>>,
    exit: Option<ExitStatus>,
}

impl Gateway {
    /// Starts `binary` on `127.0.0.1:0` with `args`, in a fresh data directory, and waits for its
    /// `listening on HOST:PORT` line.
    pub fn start(binary: &str, args: &[&str]) -> Gateway {
        let data_dir = std::env::temp_dir().join(format!(
            "diminuendo-itest-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&data_dir).expect("create the data directory");
        Gateway::start_in(binary, args, data_dir)
    }

    /// Starts `binary` like [`Gateway::start`], on the data directory of an earlier gateway (see
    /// [`Gateway::take_data_dir`]): a restart. The new gateway owns the directory from now on.
    pub fn start_in(binary: &str, args: &[&str], data_dir: PathBuf) -> Gateway {
        Gateway::launch(&[], binary, args, data_dir, &[])
    }

    /// Starts `binary` like [`Gateway::start_in`], run by `wrapper` (a command that ends by
    /// executing its last arguments, the binary and its flags, in the same process: e.g.
    /// `unshare` with a shell that `exec`s, so the PID is still the gateway's).
    pub fn start_wrapped(
        wrapper: &[&str],
        binary: &str,
        args: &[&str],
        data_dir: PathBuf,
    ) -> Gateway {
        Gateway::launch(wrapper, binary, args, data_dir, &[])
    }

    /// [`Gateway::start`] with these variables added to the gateway's environment (after the
    /// test's own `DIMINUENDO_*` are removed).
    pub fn start_with_env(binary: &str, args: &[&str], env: &[(&str, &str)]) -> Gateway {
        let data_dir = std::env::temp_dir().join(format!(
            "diminuendo-itest-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&data_dir).expect("create the data directory");
        Gateway::launch(&[], binary, args, data_dir, env)
    }

    fn launch(
        wrapper: &[&str],
        binary: &str,
        args: &[&str],
        data_dir: PathBuf,
        env: &[(&str, &str)],
    ) -> Gateway {
        let path = binary_path(binary);
        let mut command = match wrapper.split_first() {
            None => Command::new(&path),
            Some((program, rest)) => {
                let mut command = Command::new(program);
                command.args(rest).arg(&path);
                command
            }
        };
        command.arg("--listen").arg("127.0.0.1:0");
        if !args.contains(&"--data-dir") {
            command.arg("--data-dir").arg(data_dir.join("data"));
        }
        command.args(args);
        // The settings have environment fallbacks: the test's environment must not leak in.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("DIMINUENDO_") {
                command.env_remove(key);
            }
        }
        command.envs(env.iter().copied());
        let mut child = command
            .current_dir(&data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {}: {error}", path.display()));

        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let stderr_log = log.clone();
        std::thread::spawn(move || {
            let mut stderr = stderr;
            let mut chunk = [0u8; 4096];
            while let Ok(read) = stderr.read(&mut chunk) {
                if read == 0 {
                    break;
                }
                if let Ok(mut log) = stderr_log.lock() {
                    log.extend_from_slice(&chunk[..read]);
                }
            }
        });
        let stdout = child.stdout.take().expect("piped stdout");
        let (lines, first_line) = mpsc::channel();
        let stdout_log = log.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut first = true;
            let mut line = String::new();
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) if first => {
                        first = false;
                        let _ = lines.send(line.clone());
                    }
                    Ok(_) => {
                        if let Ok(mut log) = stdout_log.lock() {
                            log.extend_from_slice(format!("[stdout] {line}").as_bytes());
                        }
                    }
                }
            }
        });

        let mut gateway = Gateway {
            binary: binary.to_owned(),
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir,
            owns_data_dir: true,
            log,
            exit: None,
        };
        let line = match first_line.recv_timeout(START_TIMEOUT) {
            Ok(line) => line,
            Err(_) => {
                let exit = gateway.wait_exit(Duration::from_millis(100));
                panic!(
                    "{binary} printed no `listening on` line (exit: {exit:?}); log:\n{}",
                    gateway.log()
                );
            }
        };
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|addr| addr.parse::<SocketAddr>().ok())
            .unwrap_or_else(|| panic!("{binary}: unexpected first line {line:?}"));
        assert!(addr.ip().is_loopback(), "{binary} listens on {addr}");
        gateway.addr = addr;
        gateway
    }

    pub fn binary(&self) -> &str {
        &self.binary
    }

    /// Hands the data directory over to a successor started with [`Gateway::start_in`]: this
    /// gateway will not delete it. Stop this one first (the databases are single-writer).
    /// The directory the gateway was started in (its data directory is `data` inside, unless
    /// the test passed `--data-dir`).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn take_data_dir(&mut self) -> PathBuf {
        self.owns_data_dir = false;
        self.data_dir.clone()
    }

    /// The process's resident set size in KiB, from `/proc/<pid>/status` (Linux only).
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("a pid fits in pid_t")
    }

    /// Everything the process wrote to stderr (and stdout after its first line) so far.
    pub fn log(&self) -> String {
        self.log
            .lock()
            .map(|log| String::from_utf8_lossy(&log).into_owned())
            .unwrap_or_default()
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the process, unless it has been reaped already.
    pub fn signal(&mut self, signal: i32) {
        if self.exit.is_some() {
            return;
        }
        if let Ok(Some(status)) = self.child.try_wait() {
            self.exit = Some(status);
            return;
        }
        // SAFETY: kill(2) has no memory-safety preconditions; the child is not reaped yet, so
        // its PID still names it.
        unsafe {
            libc::kill(self.pid(), signal);
        }
    }

    /// Waits at most `timeout` for the process to exit; reaps it.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exit.is_some() {
            return self.exit;
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.exit = Some(status);
                    return self.exit;
                }
                Ok(None) => {}
                Err(error) => panic!("waiting for {}: {error}", self.binary),
            }
            if Instant::now() >= deadline {
                return None;
            }
            // Polling the child's status: a bounded wait for an exit, not a synchronisation.
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    // ----------------------------------------------------------------- clients

    /// A new plain TCP connection, for HTTP.
    pub fn http(&self) -> Http {
        Http::connect(self.addr)
    }

    /// One `GET` on a new connection.
    pub fn get(&self, path: &str) -> HttpResponse {
        let mut http = self.http();
        http.send(&wire::get(path));
        let response = http.read_response();
        assert_common_headers(&response);
        response
    }

    /// The `/metrics` exposition as `series -> value`.
    pub fn metrics(&self) -> HashMap<String, f64> {
        let response = self.get("/metrics");
        assert_eq!(response.status, 200);
        parse_metrics(&String::from_utf8_lossy(&response.body))
    }

    /// A tungstenite client on `path`, with extra request headers.
    pub fn ws_with(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (Ws, tungstenite::handshake::client::Response) {
        let url = format!("ws://{}{}", self.addr, path);
        let mut request = url.into_client_request().expect("a valid request");
        for (name, value) in headers {
            request.headers_mut().insert(
                tungstenite::http::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
                value.parse().expect("header value"),
            );
        }
        let stream = Tapped::new(connect(self.addr));
        match tungstenite::client(request, stream) {
            Ok(pair) => pair,
            Err(error) => panic!("WebSocket handshake on {path} failed: {error}"),
        }
    }

    /// A tungstenite client on `/ws` whose socket has a receive buffer of about `bytes` (set
    /// before connecting, so the TCP window stays small): for slow-consumer tests.
    pub fn ws_small_buffer(&self, bytes: usize) -> Ws {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("a socket");
        socket.set_recv_buffer_size(bytes).expect("SO_RCVBUF");
        socket
            .connect_timeout(&self.addr.into(), IO_TIMEOUT)
            .expect("connect to the gateway");
        let stream = TcpStream::from(socket);
        stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        stream.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
        let url = format!("ws://{}/ws", self.addr);
        match tungstenite::client(url, Tapped::new(stream)) {
            Ok((ws, _)) => ws,
            Err(error) => panic!("WebSocket handshake failed: {error}"),
        }
    }

    /// A tungstenite client on `/ws`.
    pub fn ws(&self) -> Ws {
        self.ws_with("/ws", &[]).0
    }

    /// A hand-driven WebSocket connection on `path`: upgraded, nothing read after the `101`.
    pub fn raw_ws(&self, path: &str) -> RawWs {
        let mut http = self.http();
        http.send(&wire::upgrade(path));
        let response = http.read_head_response();
        assert_eq!(
            response.status, 101,
            "upgrade of {path} refused: {response:?}"
        );
        RawWs { http }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if self.exit.is_none() {
            self.signal(libc::SIGTERM);
            if self.wait_exit(STOP_TIMEOUT).is_none() {
                self.signal(libc::SIGKILL);
                let _ = self.child.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "---- {} (pid {}) log ----\n{}",
                self.binary,
                self.child.id(),
                self.log()
            );
        }
        if self.owns_data_dir {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }
}

/// A loopback TCP connection with bounded reads and writes.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect to the gateway");
    stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    stream.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
    stream.set_nodelay(true).expect("nodelay");
    stream
}

// ------------------------------------------------------------------------- HTTP

/// A raw HTTP connection: write any bytes, read whole responses.
pub struct Http {
    /// The socket; once upgraded to `/ws`, every message through it is validated against the
    /// protocol schema.
    pub stream: Tapped,
    buffer: Vec<u8>,
}

impl Http {
    pub fn connect(addr: SocketAddr) -> Http {
        Http {
            stream: Tapped::new(connect(addr)),
            buffer: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to the gateway");
    }

    /// Reads more bytes; `false` at the end of the stream (or a reset).
    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => false,
            Ok(read) => {
                self.buffer.extend_from_slice(&chunk[..read]);
                true
            }
            Err(error) if error.kind() == ErrorKind::ConnectionReset => false,
            Err(error) => panic!(
                "read from the gateway failed ({error}); unparsed: {:?}",
                String::from_utf8_lossy(&self.buffer)
            ),
        }
    }

    fn read_with(&mut self, head_only: bool) -> HttpResponse {
        let deadline = Instant::now() + IO_TIMEOUT * 2;
        loop {
            if let Some((response, len)) = wire::parse_response_with(&self.buffer, head_only) {
                self.buffer.drain(..len);
                return response;
            }
            assert!(Instant::now() < deadline, "no whole response in time");
            assert!(
                self.fill(),
                "connection closed before a whole response; got {:?}",
                String::from_utf8_lossy(&self.buffer)
            );
        }
    }

    /// The next response, or `None` if the server ends the connection before a whole one.
    pub fn try_read_response(&mut self) -> Option<HttpResponse> {
        let deadline = Instant::now() + IO_TIMEOUT * 2;
        loop {
            if let Some((response, len)) = wire::parse_response(&self.buffer) {
                self.buffer.drain(..len);
                return Some(response);
            }
            assert!(Instant::now() < deadline, "no whole response in time");
            if !self.fill() {
                return None;
            }
        }
    }

    /// The next response, its body read by `Content-Length`.
    pub fn read_response(&mut self) -> HttpResponse {
        self.read_with(false)
    }

    /// The next response to a `HEAD` request (or a `101`): no body is read.
    pub fn read_head_response(&mut self) -> HttpResponse {
        self.read_with(true)
    }

    /// The answer to an upgrade request: a `101` (nothing after its head is read, that is the
    /// WebSocket's) or a refusal with its body.
    pub fn read_upgrade_response(&mut self) -> HttpResponse {
        let deadline = Instant::now() + IO_TIMEOUT * 2;
        loop {
            if let Some((head, len)) = wire::parse_response_with(&self.buffer, true) {
                if head.status == 101 {
                    self.buffer.drain(..len);
                    return head;
                }
                if let Some((response, len)) = wire::parse_response_with(&self.buffer, false) {
                    self.buffer.drain(..len);
                    return response;
                }
            }
            assert!(Instant::now() < deadline, "no whole response in time");
            assert!(
                self.fill(),
                "connection closed before a whole response; got {:?}",
                String::from_utf8_lossy(&self.buffer)
            );
        }
    }

    /// Asserts that the server closes the connection, with nothing more sent.
    pub fn expect_closed(&mut self) {
        let deadline = Instant::now() + IO_TIMEOUT * 2;
        while self.fill() {
            assert!(Instant::now() < deadline, "the connection stays open");
        }
        assert!(
            self.buffer.is_empty(),
            "unexpected bytes before the close: {:?}",
            String::from_utf8_lossy(&self.buffer)
        );
    }

    /// Bytes received but not consumed yet.
    pub fn pending(&self) -> &[u8] {
        &self.buffer
    }
}

/// The headers PROTOCOL section 1 puts on every response (a `101` has no `Content-Length`).
pub fn assert_common_headers(response: &HttpResponse) {
    assert_eq!(
        response.header("X-Content-Type-Options"),
        Some("nosniff"),
        "{response:?}"
    );
    assert_eq!(
        response.header("Cache-Control"),
        Some("no-store"),
        "{response:?}"
    );
    if response.status != 101 {
        assert!(
            response.header("Content-Length").is_some(),
            "no Content-Length: {response:?}"
        );
    }
}

/// Parses Prometheus text into `name{labels} -> value`.
pub fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let mut series = HashMap::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("malformed metrics line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("malformed metrics value in {line:?}"));
        assert!(
            series.insert(name.to_owned(), value).is_none(),
            "duplicate series {name}"
        );
    }
    series
}

// ------------------------------------------------------------------------- WebSocket

/// A tungstenite client over a blocking loopback socket with bounded reads; on `/ws` every
/// message it sends and receives is validated against `docs/protocol.schema.json`.
pub type Ws = tungstenite::WebSocket<Tapped>;

/// The next message of any kind (pings included). Panics on a timeout or an error.
pub fn next_message(ws: &mut Ws) -> Message {
    match ws.read() {
        Ok(message) => message,
        Err(error) => panic!("WebSocket read failed: {error}"),
    }
}

/// The next text message as JSON, skipping pings and pongs (tungstenite answers pings itself).
pub fn next_json(ws: &mut Ws) -> Value {
    for _ in 0..1000 {
        match next_message(ws) {
            Message::Text(text) => {
                return serde_json::from_str(text.as_str())
                    .unwrap_or_else(|error| panic!("not JSON ({error}): {text}"))
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
    panic!("no text message among 1000 control frames");
}

/// Sends one text message.
pub fn send_text(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).expect("send a text message");
}

/// Sends `request` and returns the next text message as JSON.
pub fn request(ws: &mut Ws, request: &Value) -> Value {
    send_text(ws, &request.to_string());
    next_json(ws)
}

/// Like [`request`] for a message the protocol schema rejects, sent on purpose (the schema must
/// reject it).
pub fn request_invalid(ws: &mut Ws, request: &Value) -> Value {
    ws.get_mut().expect_invalid();
    self::request(ws, request)
}

/// Reads until the server's close frame and returns its code (`None`: a close without a code).
/// Data messages on the way are skipped.
pub fn read_close(ws: &mut Ws) -> Option<u16> {
    for _ in 0..1000 {
        match ws.read() {
            Ok(Message::Close(frame)) => return frame.map(|frame| u16::from(frame.code)),
            Ok(_) => continue,
            Err(error) => panic!("no close frame: {error}"),
        }
    }
    panic!("no close frame among 1000 messages");
}

/// After the close handshake, the server ends the TCP connection (the next read sends
/// tungstenite's reply to the server's close, if one is due, then finds the end of the stream).
pub fn expect_end(ws: &mut Ws) {
    match ws.read() {
        Err(tungstenite::Error::ConnectionClosed) | Err(tungstenite::Error::AlreadyClosed) => {}
        // After a close the server initiated, the server may have shut its socket before
        // tungstenite's reply arrived, which the kernel answers with a reset.
        Err(tungstenite::Error::Io(error)) if error.kind() == ErrorKind::ConnectionReset => {}
        Err(error) => panic!("the connection did not end cleanly: {error}"),
        Ok(message) => panic!("a message after the close: {message:?}"),
    }
}

/// The dev-mode greeting: `welcome`, `connected`, `authenticated`. Returns `connected`.
pub fn expect_dev_greeting(ws: &mut Ws) -> Value {
    let welcome = next_json(ws);
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    let connected = next_json(ws);
    assert_eq!(connected["type"], "connected", "{connected}");
    let authenticated = next_json(ws);
    assert_eq!(authenticated["type"], "authenticated", "{authenticated}");
    connected
}

/// A WebSocket driven by hand: masked frames out, parsed frames in, nothing answered unless the
/// test answers it.
pub struct RawWs {
    pub http: Http,
}

impl RawWs {
    pub fn send(&mut self, bytes: &[u8]) {
        self.http.send(bytes);
    }

    /// The next message sent is invalid on purpose: the protocol schema must reject it.
    pub fn expect_invalid(&mut self) {
        self.http.stream.expect_invalid();
    }

    /// The next frame; `None` if the connection ended first.
    pub fn read_frame(&mut self) -> Option<Frame> {
        let deadline = Instant::now() + IO_TIMEOUT * 2;
        loop {
            if let Some((frame, len)) = wire::parse_frame(&self.http.buffer) {
                self.http.buffer.drain(..len);
                return Some(frame);
            }
            assert!(Instant::now() < deadline, "no whole frame in time");
            if !self.http.fill() {
                return None;
            }
        }
    }

    /// The next frame, which must exist.
    pub fn frame(&mut self) -> Frame {
        self.read_frame()
            .expect("the connection ended before a frame")
    }

    /// The next frame, which must be a text frame holding JSON.
    pub fn json(&mut self) -> Value {
        let frame = self.frame();
        assert_eq!(frame.opcode, 1, "expected a text frame: {frame:?}");
        serde_json::from_slice(&frame.payload).expect("JSON")
    }
}

/// Is `text` a UUID in the 8-4-4-4-12 hex form?
pub fn is_uuid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(group, len)| group.len() == len && group.bytes().all(|b| b.is_ascii_hexdigit()))
}

// ------------------------------------------------------------------------- protocol client

/// A gateway-protocol client over tungstenite: requests with generated `requestId`s, and every
/// other message kept, in order, as the exact text the server sent (for byte-identical checks).
pub struct Client {
    pub ws: Ws,
    /// Messages read while waiting for a reply, not yet taken by the test.
    pending: std::collections::VecDeque<String>,
    next_request: u64,
}

impl Client {
    pub fn new(ws: Ws) -> Client {
        Client {
            ws,
            pending: std::collections::VecDeque::new(),
            next_request: 0,
        }
    }

    /// A dev-mode connection past its greeting.
    pub fn dev(gateway: &Gateway) -> Client {
        let mut ws = gateway.ws();
        expect_dev_greeting(&mut ws);
        Client::new(ws)
    }

    /// A connection past `welcome` and `connected`, not authenticated yet.
    pub fn unauthenticated(gateway: &Gateway) -> Client {
        let mut client = Client::new(gateway.ws());
        let welcome = client.next_json();
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        assert_eq!(welcome["requiresAuth"], true, "{welcome}");
        let connected = client.next_json();
        assert_eq!(connected["type"], "connected", "{connected}");
        client
    }

    /// A connection authenticated with `token` through the `authenticate` message.
    pub fn authenticated(gateway: &Gateway, token: &str) -> Client {
        let mut client = Client::unauthenticated(gateway);
        let reply = client.call(serde_json::json!({"type": "authenticate", "token": token}));
        assert_eq!(reply["type"], "authenticated", "{reply}");
        client
    }

    pub fn send(&mut self, message: &Value) {
        send_text(&mut self.ws, &message.to_string());
    }

    /// Sends a message the protocol schema rejects, on purpose (the schema must reject it).
    pub fn send_invalid(&mut self, message: &Value) {
        self.ws.get_mut().expect_invalid();
        self.send(message);
    }

    /// Like [`Client::call`] for a message the protocol schema rejects, sent on purpose.
    pub fn call_invalid(&mut self, message: Value) -> Value {
        self.ws.get_mut().expect_invalid();
        self.call(message)
    }

    /// The next text message, exactly as sent by the server.
    pub fn next_text(&mut self) -> String {
        if let Some(text) = self.pending.pop_front() {
            return text;
        }
        self.read_text()
    }

    fn read_text(&mut self) -> String {
        for _ in 0..1000 {
            match next_message(&mut self.ws) {
                Message::Text(text) => return text.as_str().to_owned(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a text message, got {other:?}"),
            }
        }
        panic!("no text message among 1000 control frames");
    }

    /// The next text message as JSON.
    pub fn next_json(&mut self) -> Value {
        parse(&self.next_text())
    }

    /// Sends `message` with a fresh `requestId` (unless it has one) and returns the reply that
    /// carries it; messages before it are kept for [`Client::next`].
    pub fn call(&mut self, mut message: Value) -> Value {
        let request_id = match message.get("requestId").and_then(Value::as_str) {
            Some(id) => id.to_owned(),
            None => {
                self.next_request += 1;
                let id = format!("t-{}", self.next_request);
                message["requestId"] = Value::String(id.clone());
                id
            }
        };
        self.send(&message);
        self.reply_to(&request_id)
    }

    /// Reads until the message carrying `request_id`; messages before it are kept.
    pub fn reply_to(&mut self, request_id: &str) -> Value {
        if let Some(index) = self
            .pending
            .iter()
            .position(|text| parse(text)["requestId"] == request_id)
        {
            let text = self.pending.remove(index).expect("an index in range");
            return parse(&text);
        }
        for _ in 0..100_000 {
            let text = self.read_text();
            let value = parse(&text);
            if value["requestId"] == request_id {
                return value;
            }
            self.pending.push_back(text);
        }
        panic!("no reply to {request_id}");
    }

    /// The messages read while waiting for replies and not handed out yet, as exact texts.
    pub fn take_pending(&mut self) -> Vec<String> {
        self.pending.drain(..).collect()
    }

    /// A `ping`/`pong` round trip: every message the server sent before the pong (the kept ones
    /// first), as exact texts. Nothing is left pending.
    pub fn barrier(&mut self) -> Vec<String> {
        self.next_request += 1;
        let request_id = format!("barrier-{}", self.next_request);
        self.send(&serde_json::json!({"type": "ping", "requestId": request_id}));
        let mut before: Vec<String> = self.pending.drain(..).collect();
        for _ in 0..100_000 {
            let text = self.read_text();
            let value = parse(&text);
            if value["type"] == "pong" && value["requestId"] == request_id.as_str() {
                return before;
            }
            before.push(text);
        }
        panic!("no pong");
    }

    /// Session events (messages with a `seq`) of `session_id`, as exact texts, up to and
    /// including the first one `last` accepts. Other messages are skipped.
    pub fn events_until(&mut self, session_id: &str, last: impl Fn(&Value) -> bool) -> Vec<String> {
        let mut events = Vec::new();
        for _ in 0..1_000_000 {
            let text = self.next_text();
            let value = parse(&text);
            if value["sessionId"] != session_id || value.get("seq").is_none() {
                continue;
            }
            let done = last(&value);
            events.push(text);
            if done {
                return events;
            }
        }
        panic!("the awaited event of {session_id} never came");
    }

    /// The events of a turn up to and including the `session_state` that follows its
    /// `turn_complete` or `turn_error`.
    pub fn turn_events(&mut self, session_id: &str) -> Vec<String> {
        let mut events = self.events_until(session_id, |event| {
            matches!(event["type"].as_str(), Some("turn_complete" | "turn_error"))
        });
        events.extend(self.events_until(session_id, |event| event["type"] == "session_state"));
        events
    }

    /// Creates a session of `agent_type` and returns its SessionMeta.
    pub fn create_session(&mut self, agent_type: &str) -> Value {
        let reply = self.call(serde_json::json!({
            "type": "create_session", "agentType": agent_type, "name": "test session"
        }));
        assert_eq!(reply["type"], "session_created", "{reply}");
        reply["session"].clone()
    }

    /// Joins `session_id` live and returns `session_joined`.
    pub fn join(&mut self, session_id: &str) -> Value {
        let reply = self.call(serde_json::json!({"type": "join_session", "sessionId": session_id}));
        assert_eq!(reply["type"], "session_joined", "{reply}");
        reply
    }

    /// Sends `run_turn` and returns `turn_accepted`.
    pub fn run_turn(&mut self, session_id: &str, text: &str) -> Value {
        let reply = self.call(serde_json::json!({
            "type": "run_turn", "sessionId": session_id, "text": text
        }));
        assert_eq!(reply["type"], "turn_accepted", "{reply}");
        reply
    }

    /// Every stored event of `session_id` after `after_seq` (pages of `get_events`), as texts.
    pub fn all_events(&mut self, session_id: &str, after_seq: u64) -> Vec<String> {
        let mut after = after_seq;
        let mut all = Vec::new();
        loop {
            let reply = self.call_text(serde_json::json!({
                "type": "get_events", "sessionId": session_id, "afterSeq": after
            }));
            let (page, has_more) = events_of(&reply);
            if let Some(last) = page.last() {
                after = parse(last)["seq"].as_u64().expect("seq");
            }
            let empty = page.is_empty();
            all.extend(page);
            if !has_more || empty {
                return all;
            }
        }
    }

    /// Like [`Client::call`], but the reply as the exact text.
    pub fn call_text(&mut self, mut message: Value) -> String {
        self.next_request += 1;
        let request_id = format!("t-{}", self.next_request);
        message["requestId"] = Value::String(request_id.clone());
        self.send(&message);
        for _ in 0..100_000 {
            let text = self.read_text();
            if parse(&text)["requestId"] == request_id.as_str() {
                return text;
            }
            self.pending.push_back(text);
        }
        panic!("no reply to {request_id}");
    }
}

/// Parses a server message.
pub fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|error| panic!("not JSON ({error}): {text}"))
}

/// The `events` array of an `events` or `session_joined` reply, each element as its exact
/// text, and `hasMore` (false when absent).
pub fn events_of(reply: &str) -> (Vec<String>, bool) {
    #[derive(serde::Deserialize)]
    struct Reply<'a> {
        #[serde(borrow)]
        events: Vec<&'a serde_json::value::RawValue>,
        #[serde(default, rename = "hasMore")]
        has_more: bool,
    }
    let reply: Reply<'_> =
        serde_json::from_str(reply).unwrap_or_else(|error| panic!("{error}: {reply}"));
    (
        reply
            .events
            .iter()
            .map(|raw| raw.get().to_owned())
            .collect(),
        reply.has_more,
    )
}

/// The `seq`s of event texts.
pub fn seqs(events: &[String]) -> Vec<u64> {
    events
        .iter()
        .map(|text| parse(text)["seq"].as_u64().expect("an event has a seq"))
        .collect()
}

/// The `type`s of event texts.
pub fn types(events: &[String]) -> Vec<String> {
    events
        .iter()
        .map(|text| parse(text)["type"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The concatenated `text` of the `text_delta`s among event texts.
pub fn delta_text(events: &[String]) -> String {
    events
        .iter()
        .map(|text| parse(text))
        .filter(|event| event["type"] == "text_delta")
        .map(|event| event["text"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Asserts that event texts carry consecutive `seq`s starting at `first`.
pub fn assert_gap_free(events: &[String], first: u64) {
    let seqs = seqs(events);
    let expected: Vec<u64> = (first..first + seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "seqs not gap-free from {first}");
}

/// Seconds since the epoch, for token claims.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}
