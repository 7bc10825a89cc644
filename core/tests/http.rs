//! HTTP/1.1 on the gateway's port (PROTOCOL section 1), driven through the simulator.

mod common;

use std::time::{Duration, Instant};

use common::*;
use diminuendo_core::sim::{client, Sim, SIM_START_UNIX_MS};
use diminuendo_core::CoreConfig;
use proptest::prelude::*;

fn sim() -> Sim {
    Sim::new(dev(), 7, Instant::now())
}

/// The headers every response carries.
fn assert_common_headers(response: &HttpResponse) {
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
    let length: usize = response
        .header("Content-Length")
        .unwrap_or_else(|| panic!("no Content-Length: {response:?}"))
        .parse()
        .expect("a numeric Content-Length");
    assert_eq!(length, response.body.len());
}

#[test]
fn every_route_answers_with_its_status_and_the_common_headers() {
    let cases: [(&str, u16, &str); 6] = [
        ("/livez", 200, "text/plain; charset=utf-8"),
        ("/readyz", 200, "text/plain; charset=utf-8"),
        ("/health", 200, "application/json"),
        ("/metrics", 200, "text/plain; version=0.0.4; charset=utf-8"),
        ("/ws", 426, "text/plain; charset=utf-8"),
        ("/nope", 404, "text/plain; charset=utf-8"),
    ];
    let mut sim = sim();
    let id = sim.connect();
    for (path, status, content_type) in cases {
        sim.send(id, &client::get(path));
        let response = sim.take_response(id).expect("a whole response");
        assert_eq!(response.status, status, "{path}");
        assert_eq!(
            response.header("Content-Type"),
            Some(content_type),
            "{path}"
        );
        assert_common_headers(&response);
        assert_eq!(
            response.header("Connection"),
            None,
            "{path} keeps the connection"
        );
        assert!(
            sim.take_received(id).is_empty(),
            "{path}: one response only"
        );
        assert!(!sim.is_closed(id), "{path}: keep-alive");
    }
    sim.send(id, &client::get("/livez"));
    assert_eq!(
        sim.take_response(id).map(|r| r.body),
        Some(b"ok\n".to_vec())
    );
    sim.send(id, &client::get("/readyz"));
    assert_eq!(
        sim.take_response(id).map(|r| r.body),
        Some(b"ready\n".to_vec())
    );
    // A query string does not change the route.
    sim.send(id, &client::get("/livez?probe=1"));
    assert_eq!(sim.take_response(id).map(|r| r.status), Some(200));
}

#[test]
fn head_is_get_without_the_body() {
    for path in ["/livez", "/readyz", "/health", "/metrics", "/ws", "/nope"] {
        // Two identical gateways, so the bodies that report counters match too.
        let mut get_sim = sim();
        let mut head_sim = sim();
        let get_id = get_sim.connect();
        let head_id = head_sim.connect();
        get_sim.send(get_id, &request("GET", path, ""));
        head_sim.send(head_id, &request("HEAD", path, ""));
        let get = get_sim.take_received(get_id);
        let head = head_sim.take_received(head_id);
        let (response, len) = client::parse_response(&get).expect("a whole GET response");
        assert_eq!(len, get.len());
        assert!(!response.body.is_empty(), "{path}: GET has a body");
        assert_eq!(
            head,
            &get[..get.len() - response.body.len()],
            "{path}: HEAD = GET minus body"
        );
        let (head_response, _) = client::parse_response_with(&head, true).expect("HEAD");
        assert_common_headers(&HttpResponse {
            body: response.body.clone(),
            ..head_response
        });
        assert!(!head_sim.is_closed(head_id));
        // The connection goes on after a HEAD response.
        head_sim.send(head_id, &client::get("/livez"));
        assert_eq!(head_sim.take_response(head_id).map(|r| r.status), Some(200));
    }
}

#[test]
fn unknown_paths_get_404_and_other_methods_405_with_allow() {
    let mut sim = sim();
    let id = sim.connect();
    sim.send(id, &client::get("/"));
    assert_eq!(sim.take_response(id).map(|r| r.status), Some(404));
    sim.send(id, &request("POST", "/nope", ""));
    assert_eq!(sim.take_response(id).map(|r| r.status), Some(404));
    // /echo exists only for the conformance suite.
    sim.send(id, &client::upgrade("/echo"));
    assert_eq!(sim.take_response(id).map(|r| r.status), Some(404));
    for (method, path) in [
        ("POST", "/livez"),
        ("PUT", "/readyz"),
        ("DELETE", "/health"),
        ("OPTIONS", "/metrics"),
        ("POST", "/ws"),
    ] {
        sim.send(id, &request(method, path, ""));
        let response = sim.take_response(id).expect("a response");
        assert_eq!(response.status, 405, "{method} {path}");
        assert_eq!(response.header("Allow"), Some("GET, HEAD"));
        assert_common_headers(&response);
        assert!(!sim.is_closed(id));
    }
    assert!(sim.take_received(id).is_empty());
}

#[test]
fn a_malformed_request_gets_400_and_the_connection_closes() {
    for garbage in [
        &b"\x00\x01garbage\r\n\r\n"[..],
        b"GET /livez HTTP/9.9\r\n\r\n",
        b"GET /livez HTTP/1.1\r\nBad Header\r\n\r\n",
    ] {
        let mut sim = sim();
        let (id, response) = one_response(&mut sim, garbage);
        assert_eq!(response.status, 400);
        assert_eq!(response.header("Connection"), Some("close"));
        assert_common_headers(&response);
        assert!(sim.is_closed(id));
        assert_eq!(sim.gateway.connection_count(), 0);
    }
}

/// A request head of exactly `len` bytes.
fn head_of_len(len: usize) -> Vec<u8> {
    let prefix = "GET /livez HTTP/1.1\r\nX-Pad: ";
    let suffix = "\r\n\r\n";
    let pad = len - prefix.len() - suffix.len();
    format!("{prefix}{}{suffix}", "a".repeat(pad)).into_bytes()
}

#[test]
fn a_head_over_16_kib_gets_431_and_the_connection_closes() {
    let mut sim = sim();
    let (id, response) = one_response(&mut sim, &head_of_len(16 * 1024));
    assert_eq!(response.status, 200, "16 KiB exactly is allowed");
    assert!(!sim.is_closed(id));

    let (id, response) = one_response(&mut sim, &head_of_len(16 * 1024 + 1));
    assert_eq!(response.status, 431);
    assert_eq!(response.header("Connection"), Some("close"));
    assert_common_headers(&response);
    assert!(sim.is_closed(id));
}

#[test]
fn a_head_growing_past_16_kib_over_many_reads_gets_431() {
    let mut sim = sim();
    let id = sim.connect();
    sim.send(id, b"GET /livez HTTP/1.1\r\n");
    let line = format!("X-Pad: {}\r\n", "b".repeat(1000));
    let mut sent = 21;
    while sent + line.len() <= 16 * 1024 {
        sim.send(id, line.as_bytes());
        sent += line.len();
        assert!(sim.take_received(id).is_empty(), "nothing before the limit");
        assert!(!sim.is_closed(id));
    }
    sim.send(id, line.as_bytes());
    let response = sim.take_response(id).expect("431");
    assert_eq!(response.status, 431);
    assert!(sim.is_closed(id));
}

#[test]
fn too_many_headers_get_431() {
    let mut sim = sim();
    let headers: String = (0..100).map(|i| format!("X-H{i}: v\r\n")).collect();
    let (id, response) = one_response(&mut sim, &request("GET", "/livez", &headers));
    assert_eq!(response.status, 431);
    assert!(sim.is_closed(id));
}

#[test]
fn a_request_body_gets_413_and_the_connection_closes() {
    for request in [
        request("POST", "/livez", "Content-Length: 5\r\n"),
        request("GET", "/livez", "Content-Length: 1\r\n"),
        request("POST", "/nope", "Transfer-Encoding: chunked\r\n"),
    ] {
        let mut sim = sim();
        let mut bytes = request.clone();
        bytes.extend_from_slice(b"hello");
        let (id, response) = one_response(&mut sim, &bytes);
        assert_eq!(response.status, 413);
        assert_eq!(response.header("Connection"), Some("close"));
        assert_common_headers(&response);
        assert!(
            sim.take_received(id).is_empty(),
            "the body is not a request"
        );
        assert!(sim.is_closed(id));
    }
    // An empty body is no body.
    let mut sim = sim();
    let (id, response) = one_response(&mut sim, &request("GET", "/livez", "Content-Length: 0\r\n"));
    assert_eq!(response.status, 200);
    assert!(!sim.is_closed(id));
}

#[test]
fn conflicting_or_invalid_content_lengths_get_400() {
    for headers in [
        "Content-Length: 1\r\nContent-Length: 2\r\n",
        "Content-Length: abc\r\n",
        "Content-Length: -1\r\n",
    ] {
        let mut sim = sim();
        let (id, response) = one_response(&mut sim, &request("GET", "/livez", headers));
        assert_eq!(response.status, 400, "{headers:?}");
        assert_eq!(response.header("Connection"), Some("close"));
        assert!(sim.is_closed(id));
    }
    // The same length twice is consistent.
    let mut sim = sim();
    let headers = "Content-Length: 0\r\nContent-Length: 0\r\n";
    let (id, response) = one_response(&mut sim, &request("GET", "/livez", headers));
    assert_eq!(response.status, 200);
    assert!(!sim.is_closed(id));
}

#[test]
fn http_1_0_closes_unless_keep_alive() {
    let mut sim = sim();
    let (id, response) = one_response(&mut sim, b"GET /livez HTTP/1.0\r\n\r\n");
    assert_eq!(response.status, 200);
    assert_eq!(response.header("Connection"), Some("close"));
    assert!(sim.is_closed(id));

    let keep = b"GET /livez HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
    let (id, response) = one_response(&mut sim, keep);
    assert_eq!(response.status, 200);
    assert_eq!(response.header("Connection"), None);
    assert!(!sim.is_closed(id));
    sim.send(id, keep);
    assert_eq!(sim.take_response(id).map(|r| r.status), Some(200));
}

#[test]
fn connection_close_is_honoured_and_later_pipelined_requests_ignored() {
    let mut sim = sim();
    let id = sim.connect();
    let mut bytes = request("GET", "/livez", "Connection: close\r\n");
    bytes.extend_from_slice(&client::get("/readyz"));
    sim.send(id, &bytes);
    let response = sim.take_response(id).expect("a response");
    assert_eq!(response.status, 200);
    assert_eq!(response.header("Connection"), Some("close"));
    assert!(sim.take_received(id).is_empty());
    assert!(sim.is_closed(id));
    assert_eq!(sim.gateway.connection_count(), 0);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let mut sim = sim();
    let id = sim.connect();
    let mut bytes = Vec::new();
    for path in ["/livez", "/nope", "/readyz"] {
        bytes.extend_from_slice(&client::get(path));
    }
    bytes.extend_from_slice(&request("HEAD", "/livez", ""));
    sim.send(id, &bytes);
    let statuses: Vec<u16> = (0..3)
        .map(|_| sim.take_response(id).expect("a response").status)
        .collect();
    assert_eq!(statuses, [200, 404, 200]);
    let rest = sim.take_received(id);
    let (head, len) = client::parse_response_with(&rest, true).expect("HEAD response");
    assert_eq!((head.status, len), (200, rest.len()));
}

#[test]
fn keep_alive_timeout_closes_an_idle_connection() {
    let config = CoreConfig {
        keep_alive_timeout: Duration::from_secs(60),
        ..dev()
    };
    let mut sim = Sim::new(config, 1, Instant::now());
    // Changed on purpose (issue 11, item 9): a connection that never sends a byte is closed at
    // the request-head timeout (10 s), not held for the keep-alive minute.
    let id = sim.connect();
    sim.advance(Duration::from_millis(9_999));
    assert!(!sim.is_closed(id));
    sim.advance(Duration::from_millis(1));
    assert!(sim.is_closed(id));
    assert!(sim.take_received(id).is_empty());

    // Idle from the end of the last request: the keep-alive timeout.
    let id = sim.connect();
    sim.advance(Duration::from_secs(5));
    sim.send(id, &client::get("/livez"));
    assert_eq!(sim.take_response(id).map(|r| r.status), Some(200));
    sim.advance(Duration::from_millis(59_999));
    assert!(!sim.is_closed(id));
    sim.advance(Duration::from_millis(1));
    assert!(sim.is_closed(id));
    assert_eq!(sim.gateway.connection_count(), 0);
}

#[test]
fn slowloris_gets_408_after_the_request_head_timeout() {
    let mut sim = sim();
    let timeout = sim.gateway.config().request_head_timeout;
    assert_eq!(timeout, Duration::from_secs(10));
    let id = sim.connect();
    sim.advance(Duration::from_secs(1));
    sim.send(id, b"GET /livez HTTP/1.1\r\n");
    // Trickling more bytes does not extend the deadline.
    for _ in 0..9 {
        sim.advance(Duration::from_millis(999));
        sim.send(id, b"X-Slow: 1\r\n");
    }
    sim.advance(timeout - Duration::from_millis(9 * 999 + 1));
    assert!(sim.take_received(id).is_empty());
    assert!(!sim.is_closed(id));
    sim.advance(Duration::from_millis(1));
    let response = sim.take_response(id).expect("408");
    assert_eq!(response.status, 408);
    assert_eq!(response.header("Connection"), Some("close"));
    assert_common_headers(&response);
    assert!(sim.is_closed(id));
}

#[test]
fn a_partial_head_after_a_complete_request_is_timed_from_its_own_first_byte() {
    let mut sim = sim();
    let id = sim.connect();
    let mut bytes = client::get("/livez");
    bytes.extend_from_slice(b"GET /rea");
    sim.advance(Duration::from_secs(3));
    sim.send(id, &bytes);
    assert_eq!(sim.take_response(id).map(|r| r.status), Some(200));
    sim.advance(Duration::from_millis(9_999));
    assert!(!sim.is_closed(id));
    sim.send(id, b"dyz HTTP/1.1\r\n\r\n");
    assert_eq!(sim.take_response(id).map(|r| r.status), Some(200));
    // Complete now: the keep-alive timeout applies again, not the head timeout.
    sim.advance(Duration::from_secs(30));
    assert!(!sim.is_closed(id));
}

#[test]
fn readyz_and_health_are_503_while_storage_cannot_write() {
    let mut sim = sim();
    let id = sim.connect();
    sim.gateway.set_storage_writable(false);
    sim.send(id, &client::get("/readyz"));
    let response = sim.take_response(id).expect("503");
    assert_eq!(response.status, 503);
    assert_common_headers(&response);
    sim.send(id, &client::get("/health"));
    let response = sim.take_response(id).expect("503");
    assert_eq!(response.status, 503);
    let body: serde_json::Value = serde_json::from_slice(&response.body).expect("JSON");
    assert_eq!(body["status"], "unavailable");
    // /livez checks no dependency.
    sim.send(id, &client::get("/livez"));
    assert_eq!(sim.take_response(id).map(|r| r.status), Some(200));
    sim.gateway.set_storage_writable(true);
    sim.send(id, &client::get("/readyz"));
    assert_eq!(sim.take_response(id).map(|r| r.status), Some(200));
}

#[test]
fn shutdown_closes_idle_http_connections_at_once_and_answers_a_request_in_flight() {
    let mut sim = sim();
    let idle = sim.connect();
    let used = sim.connect();
    sim.send(used, &client::get("/livez"));
    assert!(sim.take_response(used).is_some());
    let partial = sim.connect();
    sim.send(partial, b"GET /livez HTTP/1.1\r\n");
    sim.gateway.begin_shutdown(sim.now());
    sim.pump();
    for id in [idle, used] {
        assert!(sim.is_closed(id), "{id:?}");
        assert!(sim.take_received(id).is_empty());
    }
    // A request already arriving is answered (503 for an upgrade or /readyz), then closed.
    assert!(!sim.is_closed(partial));
    sim.send(partial, b"\r\n");
    let response = sim
        .take_response(partial)
        .expect("the request in flight is answered");
    assert_eq!(response.status, 200);
    assert_eq!(response.header("Connection"), Some("close"));
    assert!(sim.is_closed(partial));
    assert_eq!(sim.gateway.connection_count(), 0);
    assert!(sim.gateway.is_draining());
}

#[test]
fn health_is_a_small_json_object() {
    let mut sim = sim();
    let id = sim.connect();
    let ws = open_ws(&mut sim);
    sim.advance(Duration::from_millis(1500));
    sim.send(id, &client::get("/health"));
    let response = sim.take_response(id).expect("health");
    assert_eq!(response.status, 200);
    let body: serde_json::Value = serde_json::from_slice(&response.body).expect("JSON");
    assert_eq!(
        body,
        serde_json::json!({
            "status": "ok",
            "uptimeMs": 1500,
            "connections": {"http": 1, "websocket": 1},
            "sessions": {"total": 0, "active": 0},
            "agents": {"echo": {"sandbox": "landlock"}},
        })
    );
    assert!(!sim.is_closed(ws));
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            (key == name).then(|| value.parse().ok()).flatten()
        })
}

fn scrape(sim: &mut Sim, id: diminuendo_core::ConnectionId) -> String {
    sim.send(id, &client::get("/metrics"));
    let response = sim.take_response(id).expect("metrics");
    assert_eq!(response.status, 200);
    String::from_utf8(response.body).expect("UTF-8")
}

#[test]
fn metrics_counters_move() {
    let mut sim = sim();
    let id = sim.connect();
    let text = scrape(&mut sim, id);
    assert_eq!(
        metric(&text, "diminuendo_connections_accepted_total"),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "diminuendo_connections_open{protocol=\"http\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "diminuendo_connections_open{protocol=\"websocket\"}"),
        Some(0.0)
    );
    assert_eq!(
        metric(
            &text,
            "diminuendo_http_requests_total{route=\"/livez\",status=\"200\"}"
        ),
        None
    );
    for path in ["/livez", "/livez", "/nope"] {
        sim.send(id, &client::get(path));
        assert!(sim.take_response(id).is_some());
    }
    sim.send(id, &request("POST", "/readyz", ""));
    assert!(sim.take_response(id).is_some());
    let ws = open_ws(&mut sim);
    sim.advance(Duration::from_millis(2500));
    let text = scrape(&mut sim, id);
    for (name, value) in [
        ("diminuendo_connections_accepted_total", 2.0),
        ("diminuendo_connections_open{protocol=\"http\"}", 1.0),
        ("diminuendo_connections_open{protocol=\"websocket\"}", 1.0),
        (
            "diminuendo_http_requests_total{route=\"/livez\",status=\"200\"}",
            2.0,
        ),
        (
            "diminuendo_http_requests_total{route=\"other\",status=\"404\"}",
            1.0,
        ),
        (
            "diminuendo_http_requests_total{route=\"/readyz\",status=\"405\"}",
            1.0,
        ),
        (
            "diminuendo_http_requests_total{route=\"/metrics\",status=\"200\"}",
            1.0,
        ),
        (
            "diminuendo_http_requests_total{route=\"/ws\",status=\"101\"}",
            1.0,
        ),
        ("diminuendo_uptime_seconds", 2.5),
    ] {
        assert_eq!(metric(&text, name), Some(value), "{name} in\n{text}");
    }
    sim.disconnect(ws);
    let text = scrape(&mut sim, id);
    assert_eq!(
        metric(&text, "diminuendo_connections_open{protocol=\"websocket\"}"),
        Some(0.0)
    );
    assert_eq!(
        metric(
            &text,
            "diminuendo_http_requests_total{route=\"/metrics\",status=\"200\"}"
        ),
        Some(2.0)
    );
    assert_eq!(sim.gateway.metrics().connections_accepted, 2);
}

#[test]
fn idle_http_connections_hold_no_outbound_queue() {
    let mut sim = sim();
    let id = sim.connect();
    sim.send(id, &client::get("/metrics"));
    assert!(sim.take_response(id).is_some());
    assert_eq!(sim.gateway.outbound_len(id), 0);
}

// ---------------------------------------------------------------- properties

/// One pipelined request and whether the server ends the connection after answering it.
fn pipelined_request() -> impl Strategy<Value = Vec<u8>> {
    let path = prop_oneof![
        Just("/livez"),
        Just("/readyz"),
        Just("/health"),
        Just("/metrics"),
        Just("/ws"),
        Just("/echo"),
        Just("/unknown/path?q=1"),
    ];
    let method = prop_oneof![
        4 => Just("GET"),
        3 => Just("HEAD"),
        1 => Just("POST"),
        1 => Just("DELETE"),
    ];
    let ending = prop_oneof![
        10 => Just(""),
        1 => Just("Connection: close\r\n"),
        1 => Just("Content-Length: 3\r\n"),
        1 => Just("Content-Length: 1\r\nContent-Length: 2\r\n"),
        1 => Just("!garbage!\r\n"),
    ];
    (method, path, ending).prop_map(|(method, path, extra)| {
        let mut bytes = request(method, path, extra);
        if extra.starts_with("Content-Length: 3") {
            bytes.extend_from_slice(b"abc");
        }
        bytes
    })
}

fn pipelined_stream() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(pipelined_request(), 1..12).prop_map(|requests| requests.concat())
}

fn reads() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(prop_oneof![1usize..4, 1usize..64, 1usize..600], 0..80)
}

/// Everything the server wrote for `stream` sent in the given reads, and whether it closed.
fn run(stream: &[u8], sizes: &[usize], write_limits: Option<&[usize]>) -> (Vec<u8>, bool) {
    let mut sim = Sim::new(dev(), 3, Instant::now());
    let id = sim.connect();
    let mut rest = stream;
    let mut index = 0;
    let mut received = Vec::new();
    loop {
        if let Some(limits) = write_limits {
            let limit = limits.get(index % limits.len().max(1)).copied();
            sim.set_write_limit(id, limit);
        }
        let size = sizes
            .get(index)
            .copied()
            .unwrap_or(rest.len())
            .clamp(1, rest.len());
        let (chunk, tail) = rest.split_at(size);
        sim.send(id, chunk);
        rest = tail;
        index += 1;
        if write_limits.is_some() {
            sim.unblock(id);
        }
        received.extend(sim.take_received(id));
        if rest.is_empty() {
            break;
        }
    }
    while sim.gateway.outbound_len(id) > 0 && !sim.is_closed(id) {
        sim.unblock(id);
        received.extend(sim.take_received(id));
    }
    received.extend(sim.take_received(id));
    assert_eq!(sim.gateway.outbound_len(id), 0);
    (received, sim.is_closed(id))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    #[test]
    fn any_split_of_pipelined_requests_gets_the_same_responses(
        stream in pipelined_stream(),
        sizes in reads(),
    ) {
        let (whole, whole_closed) = run(&stream, &[], None);
        let (split, split_closed) = run(&stream, &sizes, None);
        prop_assert!(!whole.is_empty());
        prop_assert_eq!(String::from_utf8_lossy(&split), String::from_utf8_lossy(&whole));
        prop_assert_eq!(split_closed, whole_closed);
    }

    #[test]
    fn partial_writes_deliver_the_same_bytes(
        stream in pipelined_stream(),
        sizes in reads(),
        limits in prop::collection::vec(prop_oneof![Just(1usize), 1usize..16, 1usize..400], 1..8),
    ) {
        let (whole, whole_closed) = run(&stream, &[], None);
        let (split, split_closed) = run(&stream, &sizes, Some(&limits));
        prop_assert_eq!(String::from_utf8_lossy(&split), String::from_utf8_lossy(&whole));
        prop_assert_eq!(split_closed, whole_closed);
    }
}

#[test]
fn the_clock_does_not_move_by_itself() {
    // The properties above compare /health and /metrics bodies; that is sound only because
    // nothing advances the virtual clock within a run.
    let mut sim = sim();
    let id = sim.connect();
    sim.send(id, &client::get("/health"));
    let first = sim.take_received(id);
    let mut other = Sim::new(dev(), 7, Instant::now());
    let other_id = other.connect();
    other.send(other_id, &client::get("/health"));
    assert_eq!(first, other.take_received(other_id));
    assert!(String::from_utf8_lossy(&first).contains("\"uptimeMs\":0"));
    let _ = SIM_START_UNIX_MS;
}

// ---------------------------------------------------------------- connection limits (issue 11)

fn peer(text: &str) -> std::net::SocketAddr {
    text.parse().expect("a test address")
}

/// Connects from `from` and sends `bytes`; the response, and whether the server closed.
fn request_from(sim: &mut Sim, from: &str, bytes: &[u8]) -> (diminuendo_core::ConnectionId, u16) {
    let id = sim.connect_from(peer(from));
    sim.send(id, bytes);
    let response = sim.take_response(id).expect("a response");
    (id, response.status)
}

#[test]
fn plain_http_connections_count_toward_max_connections() {
    let config = CoreConfig {
        max_connections: 2,
        ..dev()
    };
    let mut sim = Sim::new(config, 1, Instant::now());
    let first = sim.connect();
    let _second = sim.connect();
    let third = sim.connect();
    sim.send(third, &client::get("/livez"));
    let response = sim.take_response(third).expect("a response");
    assert_eq!(response.status, 503, "{response:?}");
    assert_eq!(response.header("Connection"), Some("close"));
    assert_eq!(response.header("Retry-After"), Some("1"));
    assert!(sim.is_closed(third));
    // The refused connection took no slot; when an admitted one goes, a new one is served.
    sim.disconnect(first);
    let (_, response) = one_response(&mut sim, &client::get("/livez"));
    assert_eq!(response.status, 200);
}

#[test]
fn connections_per_ip_are_limited_by_tcp_peer() {
    let config = CoreConfig {
        max_connections_per_ip: 2,
        ..dev()
    };
    let mut sim = Sim::new(config, 1, Instant::now());
    let a = sim.connect_from(peer("198.51.100.1:1"));
    let _b = sim.connect_from(peer("198.51.100.1:2"));
    // Beyond the limit: 503 for an upgrade and for a plain request alike, then closed.
    let (c, status) = request_from(&mut sim, "198.51.100.1:3", &client::upgrade("/ws"));
    assert_eq!(status, 503);
    assert!(sim.is_closed(c));
    let (d, status) = request_from(&mut sim, "198.51.100.1:4", &client::get("/health"));
    assert_eq!(status, 503);
    assert!(sim.is_closed(d));
    // A forwarding header changes nothing: the count is by TCP peer.
    let forged = upgrade_with("/ws", "X-Forwarded-For: 203.0.113.9\r\n");
    assert_eq!(request_from(&mut sim, "198.51.100.1:5", &forged).1, 503);
    // Other addresses are served; IPv6 counts per /64.
    assert_eq!(
        request_from(&mut sim, "198.51.100.2:1", &client::upgrade("/ws")).1,
        101
    );
    let _v6a = sim.connect_from(peer("[2001:db8:1:2::1]:1"));
    let _v6b = sim.connect_from(peer("[2001:db8:1:2::ffff]:1"));
    assert_eq!(
        request_from(&mut sim, "[2001:db8:1:2::7]:1", &client::get("/livez")).1,
        503
    );
    assert_eq!(
        request_from(&mut sim, "[2001:db8:1:3::7]:1", &client::get("/livez")).1,
        200
    );
    // A slot of the address frees up when one of its connections goes.
    sim.disconnect(a);
    assert_eq!(
        request_from(&mut sim, "198.51.100.1:6", &client::get("/livez")).1,
        200
    );
}

#[test]
fn refused_connections_waiting_for_their_503_are_bounded() {
    let config = CoreConfig {
        max_connections: 1,
        ..dev()
    };
    let mut sim = Sim::new(config, 1, Instant::now());
    let _admitted = sim.connect();
    let waiting: Vec<_> = (0..diminuendo_core::gateway::MAX_REFUSED_OPEN)
        .map(|_| sim.connect())
        .collect();
    assert!(waiting.iter().all(|id| !sim.is_closed(*id)));
    // One more is closed at once, unanswered.
    let dropped = sim.connect();
    assert!(sim.is_closed(dropped));
    assert!(sim.take_received(dropped).is_empty());
    // The waiting ones get their 503, or are closed at the request-head timeout.
    sim.send(waiting[0], &client::get("/livez"));
    assert_eq!(sim.take_response(waiting[0]).map(|r| r.status), Some(503));
    sim.advance(Duration::from_secs(10));
    assert!(waiting.iter().all(|id| sim.is_closed(*id)));
    // (So is the admitted one, which sent nothing either.)
    assert_eq!(sim.gateway.connection_count(), 0);
}

#[test]
fn an_idle_keep_alive_connection_and_a_silent_one_have_their_own_timeouts() {
    let mut sim = sim();
    let silent = sim.connect();
    let served = sim.connect();
    sim.send(served, &client::get("/livez"));
    assert_eq!(sim.take_response(served).map(|r| r.status), Some(200));
    sim.advance(Duration::from_secs(10));
    assert!(
        sim.is_closed(silent),
        "a connection that sent nothing goes at 10 s"
    );
    assert!(sim.take_received(silent).is_empty());
    assert!(
        !sim.is_closed(served),
        "between requests, the keep-alive minute applies"
    );
    sim.advance(Duration::from_secs(50));
    assert!(sim.is_closed(served));
}
