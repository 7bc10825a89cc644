//! Each example is built by `cargo test` (they are binaries of this package) and run here.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::Message;

fn run_in_memory() -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_in_memory"))
        .stdin(Stdio::null())
        .output()
        .expect("run in_memory");
    assert!(
        output.status.success(),
        "{:?}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 transcript")
}

#[test]
fn in_memory_prints_a_whole_conversation_in_order_and_deterministically() {
    let transcript = run_in_memory();
    let expected = [
        "server <- HTTP 101",
        r#""type":"welcome""#,
        r#""type":"connected""#,
        r#""type":"authenticated""#,
        r#"client -> {"type":"create_session","requestId":"r1","agentType":"echo""#,
        r#""type":"session_created""#,
        r#""type":"session_joined""#,
        r#""status":"activating""#,
        r#""type":"turn_accepted""#,
        r#""status":"running""#,
        r#""type":"turn_started""#,
        r#""text":"hello, agent""#,
        r#""type":"turn_complete""#,
        r#""type":"heartbeat""#,
        "server <- [ping]",
        "client -> [close 1000]",
        "server <- [close 1000]",
        "connection closed by the server: true",
    ];
    let mut from = 0;
    for needle in expected {
        let found = transcript[from..]
            .find(needle)
            .unwrap_or_else(|| panic!("{needle:?} missing after byte {from} of:\n{transcript}"));
        from += found + needle.len();
    }
    // The heartbeat came after 30 s of virtual time, and no real time was waited for it.
    assert!(transcript.contains("30020 ms"), "{transcript}");
    assert_eq!(
        transcript,
        run_in_memory(),
        "the transcript differs between runs"
    );
}

/// The example's process, killed by PID and reaped if the test fails.
struct Example {
    child: Child,
    data_dir: std::path::PathBuf,
}

impl Drop for Example {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

impl Example {
    /// Waits at most `timeout` for the process to exit.
    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            // Polling the child's status: a bounded wait for an exit, not a synchronisation.
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn next_json(ws: &mut tungstenite::WebSocket<TcpStream>) -> Value {
    loop {
        match ws.read().expect("a message") {
            Message::Text(text) => return serde_json::from_str(&text).expect("JSON"),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn send(ws: &mut tungstenite::WebSocket<TcpStream>, message: Value) {
    ws.send(Message::text(message.to_string())).expect("send");
}

/// The next message of `kind`, skipping the others (session events, tenant notifications).
fn until(ws: &mut tungstenite::WebSocket<TcpStream>, kind: &str) -> Value {
    loop {
        let message = next_json(ws);
        if message["type"] == kind {
            return message;
        }
        assert_ne!(message["type"], "error", "{message}");
    }
}

#[test]
fn std_poll_loop_serves_a_conversation_with_the_echo_agent_then_stops() {
    let data_dir =
        std::env::temp_dir().join(format!("diminuendo-example-poll-{}", std::process::id()));
    let child = Command::new(env!("CARGO_BIN_EXE_std_poll_loop"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--connections",
            "1",
            "--data-dir",
        ])
        .arg(&data_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start std_poll_loop");
    let mut example = Example { child, data_dir };
    let mut stdout = BufReader::new(example.child.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("the first line");
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("listening on ")
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));

    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let (mut ws, response) =
        tungstenite::client(format!("ws://{addr}/ws"), stream).expect("upgrade");
    assert_eq!(response.status(), 101);
    assert_eq!(next_json(&mut ws)["type"], "welcome");
    assert_eq!(next_json(&mut ws)["type"], "connected");
    assert_eq!(next_json(&mut ws)["type"], "authenticated");

    send(
        &mut ws,
        json!({"type": "create_session", "requestId": "c", "agentType": "echo"}),
    );
    let created = until(&mut ws, "session_created");
    let session_id = created["session"]["id"].as_str().expect("an id").to_owned();
    send(
        &mut ws,
        json!({"type": "join_session", "requestId": "j", "sessionId": session_id}),
    );
    until(&mut ws, "session_joined");
    send(
        &mut ws,
        json!({"type": "run_turn", "requestId": "t", "sessionId": session_id, "text": "over poll(2)"}),
    );
    until(&mut ws, "turn_accepted");
    let complete = until(&mut ws, "turn_complete");
    assert_eq!(complete["finalText"], "over poll(2)", "{complete}");
    assert_eq!(complete["stopReason"], "end_turn", "{complete}");

    ws.close(None).expect("close");
    while ws.read().is_ok() {}

    let status = example
        .wait_exit(Duration::from_secs(15))
        .expect("std_poll_loop did not stop after its one connection");
    assert!(status.success(), "{status:?}");
    let mut rest = String::new();
    stdout
        .read_to_string(&mut rest)
        .expect("the rest of stdout");
    assert!(rest.contains("served 1 connection(s); stopped"), "{rest}");
}
