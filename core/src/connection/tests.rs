//! One `Connection` driven alone: bytes in, bytes and outputs out, on a virtual clock.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::http::Upgraded;
use super::*;
use crate::http::{RequestHead, Route};
use crate::protocol::refusal::Refusal;
use crate::protocol::ErrorCode;

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// A connection with the gateway's side played by hand: settings, counters, outputs.
struct Harness {
    config: CoreConfig,
    metrics: Metrics,
    out: Vec<Output>,
    connection: Connection,
    start: Instant,
}

impl Harness {
    fn new(config: CoreConfig) -> Self {
        let start = Instant::now();
        let peer = "192.0.2.7:40000".parse().expect("an address");
        Harness {
            config,
            metrics: Metrics::default(),
            out: Vec::new(),
            connection: Connection::new(peer, false, start),
            start,
        }
    }

    fn at(&self, seconds: f64) -> Instant {
        self.start + Duration::from_secs_f64(seconds)
    }

    fn drive<R>(&mut self, input: impl FnOnce(&mut Connection, &mut Env<'_>) -> R) -> R {
        let mut env = Env {
            config: &self.config,
            metrics: &mut self.metrics,
            out: &mut self.out,
        };
        input(&mut self.connection, &mut env)
    }

    /// What the connection reported since the last call.
    fn outputs(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.out)
    }

    /// Feeds HTTP bytes as the gateway does: after what was kept from the previous read.
    fn request(&mut self, bytes: &[u8], now: Instant) -> Option<Box<RequestHead>> {
        let mut input = self.connection.take_partial_head();
        input.extend_from_slice(bytes);
        self.drive(|connection, env| connection.read_request(&input, now, env))
            .map(|(head, len)| {
                assert_eq!(len, input.len(), "one whole request");
                head
            })
    }

    /// Writes everything waiting, as a fast socket would.
    fn write_all(&mut self, now: Instant) -> Vec<u8> {
        // Off the transmit queue, as the gateway's `poll_transmit` takes it.
        self.connection.poll_transmit();
        let mut written = Vec::new();
        let mut slices = [std::io::IoSlice::new(&[]); 16];
        let filled = self.connection.outbound(&mut slices);
        for slice in &slices[..filled] {
            written.extend_from_slice(slice);
        }
        let len = written.len();
        self.drive(|connection, env| connection.handle_sent(len, now, env));
        written
    }

    /// Feeds WebSocket bytes; returns the client text messages for the gateway.
    fn frames(&mut self, bytes: &[u8], now: Instant) -> Vec<String> {
        let mut data = bytes.to_vec();
        let Some((mut decoder, limits)) = self.connection.take_decoder(&self.config) else {
            return Vec::new();
        };
        let mut texts = Vec::new();
        let mut input = &mut data[..];
        while !input.is_empty() {
            let (consumed, event) = decoder.decode(&limits, &mut *input);
            match event {
                Some(Ok(message)) => {
                    if let Some(text) =
                        self.drive(|connection, env| connection.receive(message, now, env))
                    {
                        texts.push(text.to_owned());
                    }
                }
                Some(Err(error)) => {
                    self.drive(|connection, env| {
                        connection.fail_websocket(error.code, error.reason, now, env);
                    });
                    return texts;
                }
                None => {}
            }
            if consumed == 0 || self.connection.is_closing() {
                break;
            }
            input = &mut std::mem::take(&mut input)[consumed..];
        }
        self.connection.put_decoder(decoder);
        texts
    }

    /// Upgrades to `/ws` (the gateway's checks passed) and returns what the client received.
    fn upgrade(&mut self, extra_headers: &str, now: Instant) -> (Upgraded, Vec<u8>) {
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra_headers}\r\n"
        );
        let head = self.request(request.as_bytes(), now).expect("a head");
        let upgraded = self
            .drive(|connection, env| {
                connection.upgrade(Route::WebSocket, &head, 7, 1_000, now, env)
            })
            .expect("upgraded");
        let written = self.write_all(now);
        (upgraded, written)
    }
}

/// A masked client frame (payloads under 126 bytes).
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [0x11, 0x22, 0x33, 0x44];
    let mut frame = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// The server's frames in `bytes`: (opcode, payload).
fn server_frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    while bytes.len() >= 2 {
        let opcode = bytes[0] & 0x0f;
        let (len, header) = match bytes[1] & 0x7f {
            126 => (usize::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4),
            127 => panic!("no test frame is that long"),
            len => (usize::from(len), 2),
        };
        frames.push((opcode, bytes[header..header + len].to_vec()));
        bytes = &bytes[header + len..];
    }
    assert!(bytes.is_empty(), "a torn frame");
    frames
}

fn status_line(response: &[u8]) -> String {
    String::from_utf8_lossy(response)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn close_code_of(payload: &[u8]) -> u16 {
    u16::from_be_bytes([payload[0], payload[1]])
}

#[test]
fn keep_alive_serves_requests_until_the_idle_timeout() {
    let mut h = Harness::new(CoreConfig::default());
    // Before the first request, only the request-head timeout holds the connection.
    assert_eq!(
        h.connection.deadline(&h.config),
        Some(h.start + h.config.request_head_timeout)
    );
    for second in [1.0, 2.0] {
        let now = h.at(second);
        let head = h
            .request(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n", now)
            .expect("a complete head");
        assert_eq!(head.route, Some(Route::Livez));
        let response = Response::new(200).body("text/plain", Bytes::from_static(b"ok\n"));
        h.drive(|connection, env| connection.respond(head.route, response, false, now, env));
        assert_eq!(h.outputs(), vec![Output::Transmit]);
        assert!(h.connection.poll_transmit());
        let written = h.write_all(now);
        assert_eq!(status_line(&written), "HTTP/1.1 200 OK");
        assert!(written.ends_with(b"ok\n"));
        assert!(!h.connection.is_closing());
        assert_eq!(
            h.connection.deadline(&h.config),
            Some(now + h.config.keep_alive_timeout)
        );
    }
    assert_eq!(h.metrics.http_requests.values().sum::<u64>(), 2);
    // Idle for the keep-alive timeout: closed without a word.
    let idle = h.at(2.0) + h.config.keep_alive_timeout;
    h.drive(|connection, env| connection.handle_timeout(idle - Duration::from_millis(1), 0, env));
    assert!(h.outputs().is_empty());
    h.drive(|connection, env| connection.handle_timeout(idle, 0, env));
    assert_eq!(h.outputs(), vec![Output::Close]);
    assert_eq!(h.connection.outbound_len(), 0);
}

#[test]
fn an_unfinished_head_is_kept_and_answered_408_when_it_times_out() {
    let mut h = Harness::new(CoreConfig::default());
    let started = h.at(1.0);
    assert!(h.request(b"GET /livez HTTP/1.1\r\nHo", started).is_none());
    assert_eq!(
        h.connection.deadline(&h.config),
        Some(started + h.config.request_head_timeout)
    );
    // More bytes, still unfinished: the timeout counts from the first byte.
    assert!(h.request(b"st: x\r\n", h.at(5.0)).is_none());
    let due = started + h.config.request_head_timeout;
    assert_eq!(h.connection.deadline(&h.config), Some(due));
    h.drive(|connection, env| connection.handle_timeout(due, 0, env));
    assert_eq!(h.outputs(), vec![Output::Transmit, Output::Deadline]);
    assert!(h.connection.is_closing());
    let written = h.write_all(due);
    assert!(status_line(&written).starts_with("HTTP/1.1 408"));
    assert_eq!(
        h.outputs(),
        vec![Output::Close],
        "closed once the 408 is written"
    );
}

#[test]
fn a_head_split_across_reads_completes() {
    let mut h = Harness::new(CoreConfig::default());
    assert!(h.request(b"GET /metr", h.at(0.1)).is_none());
    let head = h
        .request(b"ics HTTP/1.1\r\nHost: x\r\n\r\n", h.at(0.2))
        .expect("the whole head");
    assert_eq!(head.route, Some(Route::Metrics));
}

#[test]
fn a_malformed_head_is_answered_400_and_closes() {
    let mut h = Harness::new(CoreConfig::default());
    let now = h.at(0.1);
    assert!(h.request(b"\x00\x01 nonsense\r\n\r\n", now).is_none());
    assert!(h.connection.is_closing());
    let written = h.write_all(now);
    assert!(status_line(&written).starts_with("HTTP/1.1 400"));
    assert_eq!(
        h.outputs(),
        vec![Output::Transmit, Output::Deadline, Output::Close]
    );
}

#[test]
fn an_upgrade_greets_and_hands_text_messages_to_the_gateway() {
    let mut h = Harness::new(CoreConfig::default());
    let now = h.at(1.0);
    let (upgraded, written) = h.upgrade("", now);
    assert_eq!(upgraded, Upgraded::Client { token: None });
    assert!(h.connection.is_websocket());
    assert_eq!(status_line(&written), "HTTP/1.1 101 Switching Protocols");
    let end = written
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head")
        + 4;
    let frames = server_frames(&written[end..]);
    assert_eq!(frames.len(), 2);
    let welcome = String::from_utf8(frames[0].1.clone()).expect("text");
    let connected = String::from_utf8(frames[1].1.clone()).expect("text");
    assert!(welcome.starts_with(r#"{"type":"welcome""#), "{welcome}");
    assert!(welcome.contains(r#""requiresAuth":true"#), "{welcome}");
    assert!(
        connected.starts_with(r#"{"type":"connected""#),
        "{connected}"
    );
    assert_eq!(h.connection.gauge_state(), Some("unauthenticated"));
    // Not authenticated: the authentication timeout is its next deadline.
    assert_eq!(
        h.connection.deadline(&h.config),
        Some(now + h.config.auth_timeout)
    );

    let mut two = client_frame(0x1, br#"{"type":"ping"}"#);
    two.extend(client_frame(0x1, "é".as_bytes()));
    let texts = h.frames(&two, h.at(2.0));
    assert_eq!(texts, vec![r#"{"type":"ping"}"#.to_owned(), "é".to_owned()]);
    assert_eq!(h.metrics.websocket_messages_received, 2);
}

#[test]
fn the_upgrade_token_is_read_from_the_bearer_subprotocol_or_the_header() {
    let mut h = Harness::new(CoreConfig::default());
    let (upgraded, _) = h.upgrade(
        "Sec-WebSocket-Protocol: diminuendo.v1, bearer.abc\r\n",
        h.at(0.5),
    );
    assert_eq!(
        upgraded,
        Upgraded::Client {
            token: Some("abc".to_owned())
        }
    );
    let mut h = Harness::new(CoreConfig::default());
    let (upgraded, _) = h.upgrade("Authorization: Bearer xyz \r\n", h.at(0.5));
    assert_eq!(
        upgraded,
        Upgraded::Client {
            token: Some("xyz".to_owned())
        }
    );
}

#[test]
fn a_ping_is_answered_with_its_payload() {
    let mut h = Harness::new(CoreConfig::default());
    h.upgrade("", h.at(0.1));
    h.outputs();
    let texts = h.frames(&client_frame(0x9, b"hi"), h.at(1.0));
    assert!(texts.is_empty());
    assert_eq!(h.outputs(), vec![Output::Transmit]);
    let written = h.write_all(h.at(1.0));
    assert_eq!(server_frames(&written), vec![(0xA, b"hi".to_vec())]);
}

#[test]
fn the_close_handshake_echoes_the_code_and_closes_after_the_write() {
    let mut h = Harness::new(CoreConfig::default());
    h.upgrade("", h.at(0.1));
    h.outputs();
    let now = h.at(1.0);
    let mut input = client_frame(0x8, &1000u16.to_be_bytes());
    // Anything after the close frame is ignored.
    input.extend(client_frame(0x1, b"late"));
    assert!(h.frames(&input, now).is_empty());
    assert!(h.connection.is_closing());
    assert_eq!(h.connection.gauge_state(), Some("closing"));
    assert_eq!(h.outputs(), vec![Output::Transmit, Output::Deadline]);
    // Nothing may follow the close frame.
    h.drive(|connection, env| connection.send(Bytes::from_static(b"x"), now, env));
    let written = h.write_all(now);
    let frames = server_frames(&written);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].0, 0x8);
    assert_eq!(close_code_of(&frames[0].1), 1000);
    assert_eq!(h.outputs(), vec![Output::Close]);
}

#[test]
fn a_close_the_server_begins_waits_for_the_peer_at_most_the_close_timeout() {
    let mut h = Harness::new(CoreConfig::default());
    h.upgrade("", h.at(0.1));
    let now = h.at(1.0);
    h.drive(|connection, env| connection.close_websocket(close_code::NORMAL, "bye", now, env));
    assert_eq!(
        h.metrics.websocket_closes.get(&close_code::NORMAL),
        Some(&1)
    );
    let written = h.write_all(now);
    assert_eq!(
        close_code_of(&server_frames(&written)[0].1),
        close_code::NORMAL
    );
    let due = now + h.config.close_timeout;
    assert_eq!(h.connection.deadline(&h.config), Some(due));
    h.outputs();
    h.drive(|connection, env| connection.handle_timeout(due, 0, env));
    assert_eq!(h.outputs(), vec![Output::Close]);
}

#[test]
fn binary_on_ws_fails_the_connection_with_1003() {
    let mut h = Harness::new(CoreConfig::default());
    h.upgrade("", h.at(0.1));
    let now = h.at(1.0);
    assert!(h.frames(&client_frame(0x2, b"\x01\x02"), now).is_empty());
    assert!(h.connection.is_closing());
    let written = h.write_all(now);
    let frames = server_frames(&written);
    assert_eq!(close_code_of(&frames[0].1), close_code::UNSUPPORTED_DATA);
}

#[test]
fn a_consumer_that_does_not_read_is_closed_4100_and_its_queue_discarded() {
    let config = CoreConfig {
        outbound_queue_limit: 1000,
        ..CoreConfig::default()
    };
    let mut h = Harness::new(config);
    h.upgrade("", h.at(0.1));
    h.outputs();
    let now = h.at(1.0);
    // One large frame onto an empty queue is never a slow consumer's fault.
    let frame = ws::text_frame(&"x".repeat(1200));
    h.drive(|connection, env| connection.send(frame.clone(), now, env));
    assert!(!h.connection.is_closing());
    // The socket takes part of it; the rest waits, and bytes pile up behind it.
    h.drive(|connection, env| connection.handle_sent(400, now, env));
    h.drive(|connection, env| connection.send(ws::text_frame("more"), now, env));
    assert!(
        !h.connection.is_closing(),
        "810 bytes wait: within the limit"
    );
    let more = ws::text_frame(&"y".repeat(300));
    h.drive(|connection, env| connection.send(more, now, env));
    assert!(h.connection.is_closing());
    assert_eq!(h.metrics.slow_consumer_closes, 1);
    assert_eq!(
        h.metrics.websocket_closes.get(&close_code::SLOW_CONSUMER),
        Some(&1)
    );
    // What the socket had begun is finished (no torn frame), then only the close frame.
    let written = h.write_all(now);
    let mut stream = frame[..400].to_vec();
    stream.extend(written);
    let frames = server_frames(&stream);
    assert_eq!(
        frames.len(),
        2,
        "the small frame and the large one were discarded"
    );
    assert_eq!(frames[0].1.len(), 1200);
    assert_eq!(close_code_of(&frames[1].1), close_code::SLOW_CONSUMER);
    assert!(h.outputs().contains(&Output::Close));
}

#[test]
fn heartbeats_go_out_when_idle_and_a_silent_client_is_closed_4103() {
    let config = CoreConfig {
        dev_mode: true,
        ..CoreConfig::default()
    };
    let mut h = Harness::new(config);
    let opened = h.at(0.0);
    h.upgrade("", opened);
    let interval = h.config.heartbeat_interval;
    assert_eq!(h.connection.deadline(&h.config), Some(opened + interval));
    h.drive(|connection, env| connection.handle_timeout(opened + interval, 42, env));
    let written = h.write_all(opened + interval);
    let frames = server_frames(&written);
    assert_eq!(frames.len(), 2);
    assert_eq!(frames[0].1, br#"{"type":"heartbeat","ts":42}"#.to_vec());
    assert_eq!(frames[1].0, 0x9, "a ping");
    // A pong keeps the client alive; silence does not.
    h.frames(&client_frame(0xA, b""), opened + interval);
    let liveness = h.config.liveness_timeout();
    let silent_until = opened + interval + liveness;
    let mut now = opened + interval;
    while now < silent_until {
        now = h.connection.deadline(&h.config).expect("a deadline");
        h.drive(|connection, env| connection.handle_timeout(now, 0, env));
        h.write_all(now);
    }
    assert_eq!(now, silent_until);
    assert!(h.connection.gauge_state() == Some("closing"));
    assert_eq!(
        h.metrics
            .websocket_closes
            .get(&close_code::HEARTBEAT_TIMEOUT),
        Some(&1)
    );
}

#[test]
fn an_unauthenticated_client_is_closed_4001_at_the_auth_timeout() {
    let mut h = Harness::new(CoreConfig::default());
    let opened = h.at(0.0);
    h.upgrade("", opened);
    let due = opened + h.config.auth_timeout;
    h.drive(|connection, env| connection.handle_timeout(due, 0, env));
    let frames = server_frames(&h.write_all(due));
    assert_eq!(close_code_of(&frames[0].1), close_code::AUTH_FAILED);
}

#[test]
fn authentication_answers_and_asks_the_gateway_to_join_the_tenant() {
    let mut h = Harness::new(CoreConfig::default());
    let opened = h.at(0.0);
    h.upgrade("", opened);
    h.outputs();
    let identity = Arc::new(Identity::dev());
    h.drive(|connection, env| {
        connection.complete_authentication(identity.clone(), Some("r1"), opened, env);
    });
    assert_eq!(
        h.outputs(),
        vec![
            Output::Transmit,
            Output::Authenticated(identity.clone()),
            Output::Deadline
        ]
    );
    assert_eq!(h.connection.gauge_state(), Some("authenticated"));
    let frames = server_frames(&h.write_all(opened));
    let reply = String::from_utf8(frames[0].1.clone()).expect("text");
    assert!(reply.starts_with(r#"{"type":"authenticated""#), "{reply}");
    assert!(reply.contains(r#""requestId":"r1""#), "{reply}");
    // Authenticated: the heartbeat, not the authentication timeout, is next.
    assert_eq!(
        h.connection.deadline(&h.config),
        Some(opened + h.config.heartbeat_interval)
    );
    let gone = h.connection.depart();
    let client = gone.client.expect("a client");
    assert_eq!(client.identity, Some(identity));
    assert!(gone.websocket && !gone.refused);
}

#[test]
fn a_refused_upgrade_token_closes_4001_or_4101_when_only_rate_limited() {
    for (code, close) in [
        (ErrorCode::AuthFailed, close_code::AUTH_FAILED),
        (ErrorCode::AuthRateLimited, close_code::RATE_LIMITED),
    ] {
        let mut h = Harness::new(CoreConfig::default());
        let now = h.at(0.0);
        h.upgrade("", now);
        let refusal = Refusal::new(code, "no");
        h.drive(|connection, env| connection.refuse_upgrade_token(&refusal, now, env));
        let frames = server_frames(&h.write_all(now));
        assert_eq!(frames.len(), 2);
        assert!(String::from_utf8_lossy(&frames[0].1).starts_with(r#"{"type":"error""#));
        assert_eq!(close_code_of(&frames[1].1), close);
    }
}

#[test]
fn over_the_rate_limit_messages_are_refused_then_the_client_closed_4101() {
    let config = CoreConfig {
        rate_limit_messages: 3,
        ..CoreConfig::default()
    };
    let mut h = Harness::new(config);
    let now = h.at(0.0);
    h.upgrade("", now);
    // (Once the close has begun, the connection hands over no more messages to count.)
    let counted: Vec<bool> = (0..7)
        .map(|_| h.drive(|connection, env| connection.count_message(Some("r"), now, env)))
        .collect();
    assert_eq!(counted, [true, true, true, false, false, false, false]);
    let frames = server_frames(&h.write_all(now));
    let errors = frames
        .iter()
        .filter(|(_, payload)| payload.starts_with(br#"{"type":"error","code":"RATE_LIMITED""#))
        .count();
    assert_eq!(errors, 3, "refused three times (the limit), then closed");
    assert_eq!(
        close_code_of(&frames.last().expect("a close").1),
        close_code::RATE_LIMITED
    );
    assert_eq!(h.metrics.rate_limit_closes, 1);
}

#[test]
fn shutdown_tells_a_client_when_to_come_back_and_closes_1001() {
    let mut h = Harness::new(CoreConfig::default());
    let now = h.at(0.0);
    h.upgrade("", now);
    assert!(h.connection.wants_shutdown_notice());
    h.drive(|connection, env| connection.begin_shutdown(Some(2500), now, env));
    assert!(!h.connection.wants_shutdown_notice());
    let frames = server_frames(&h.write_all(now));
    let notice = String::from_utf8_lossy(&frames[0].1).into_owned();
    assert!(notice.contains(r#""reconnectAfterMs":2500"#), "{notice}");
    assert_eq!(close_code_of(&frames[1].1), close_code::GOING_AWAY);

    // An idle HTTP connection closes at once.
    let mut h = Harness::new(CoreConfig::default());
    h.drive(|connection, env| connection.begin_shutdown(None, now, env));
    assert_eq!(h.outputs(), vec![Output::Close]);
}

/// What an idle connection costs the core (the benchmark holds the whole process to under
/// 1.5 KiB per idle connection).
#[test]
fn an_idle_connection_is_small() {
    let connection = std::mem::size_of::<Connection>();
    let client = std::mem::size_of::<ClientState>();
    println!("Connection {connection} bytes, ClientState {client} bytes (boxed)");
    assert!(connection <= 224, "Connection grew to {connection} bytes");
    assert!(client <= 128, "ClientState grew to {client} bytes");
}
