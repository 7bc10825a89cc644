//! Plain HTTP on the gateway's port (PROTOCOL section 1), with a raw `TcpStream`.

use std::time::{Duration, Instant};

use diminuendo_tests::{assert_common_headers, expect_dev_greeting, expect_end, wire, Http};
use serde_json::{json, Value};

use crate::with_each_gateway;

fn request(method: &str, path: &str) -> Vec<u8> {
    format!("{method} {path} HTTP/1.1\r\nHost: test\r\n\r\n").into_bytes()
}

#[test]
fn probes_answer() {
    with_each_gateway(&[], |gateway| {
        let livez = gateway.get("/livez");
        assert_eq!(livez.status, 200);
        assert_eq!(livez.body, b"ok\n");

        let readyz = gateway.get("/readyz");
        assert_eq!(readyz.status, 200, "{readyz:?}");

        let health = gateway.get("/health");
        assert_eq!(health.status, 200);
        assert_eq!(health.header("Content-Type"), Some("application/json"));
        let body: Value = serde_json::from_slice(&health.body).expect("/health is JSON");
        assert_eq!(body["status"], "ok", "{body}");
        assert!(body["uptimeMs"].is_u64(), "{body}");
        assert!(body["connections"].is_object(), "{body}");
    });
}

#[test]
fn metrics_are_prometheus_text_and_count_traffic() {
    with_each_gateway(&["--dev"], |gateway| {
        let response = gateway.get("/metrics");
        assert_eq!(response.status, 200);
        let content_type = response.header("Content-Type").unwrap_or_default();
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        let before = gateway.metrics();
        assert_eq!(
            before.get(r#"diminuendo_build_info{version="0.1.0"}"#),
            Some(&1.0)
        );
        assert_eq!(
            before.get(r#"diminuendo_connections_open{protocol="websocket"}"#),
            Some(&0.0)
        );
        assert!(before[r#"diminuendo_connections_open{protocol="http"}"#] >= 1.0);
        let livez = r#"diminuendo_http_requests_total{route="/livez",status="200"}"#;
        let not_found = r#"diminuendo_http_requests_total{route="other",status="404"}"#;
        let received = "diminuendo_websocket_messages_received_total";
        let sent = "diminuendo_websocket_messages_sent_total";
        let count = |metrics: &std::collections::HashMap<String, f64>, key: &str| {
            metrics.get(key).copied().unwrap_or(0.0)
        };

        assert_eq!(gateway.get("/livez").status, 200);
        assert_eq!(gateway.get("/nope").status, 404);
        let mut ws = gateway.ws();
        expect_dev_greeting(&mut ws);
        let pong = diminuendo_tests::request(&mut ws, &json!({"type": "ping"}));
        assert_eq!(pong["type"], "pong");
        // While the WebSocket is open it is counted.
        let during = gateway.metrics();
        assert_eq!(
            during[r#"diminuendo_connections_open{protocol="websocket"}"#],
            1.0
        );
        ws.close(None).expect("close");
        assert_eq!(diminuendo_tests::read_close(&mut ws), None);
        expect_end(&mut ws);

        let after = gateway.metrics();
        assert_eq!(count(&after, livez), count(&before, livez) + 1.0);
        assert_eq!(count(&after, not_found), count(&before, not_found) + 1.0);
        assert_eq!(
            count(
                &after,
                r#"diminuendo_http_requests_total{route="/ws",status="101"}"#
            ),
            1.0
        );
        // `ping` and the close frame.
        assert!(count(&after, received) >= count(&before, received) + 2.0);
        // welcome, connected, authenticated, pong, the close reply.
        assert!(count(&after, sent) >= count(&before, sent) + 5.0);
        assert_eq!(
            after[r#"diminuendo_connections_open{protocol="websocket"}"#],
            0.0
        );
    });
}

#[test]
fn head_is_get_without_the_body() {
    with_each_gateway(&[], |gateway| {
        let mut http = gateway.http();
        for path in ["/livez", "/readyz", "/health", "/metrics", "/nope"] {
            http.send(&request("HEAD", path));
            let head = http.read_head_response();
            // Had the HEAD response a body, it would be read as the start of the next response.
            http.send(&request("GET", path));
            let get = http.read_response();
            assert_common_headers(&head);
            assert_common_headers(&get);
            assert_eq!(head.status, get.status, "{path}");
            assert!(head.body.is_empty());
            let names = |response: &diminuendo_tests::HttpResponse| {
                let mut names: Vec<String> = response
                    .headers
                    .iter()
                    .map(|(name, _)| name.to_ascii_lowercase())
                    .collect();
                names.sort();
                names
            };
            assert_eq!(names(&head), names(&get), "{path}");
            if matches!(path, "/livez" | "/readyz" | "/nope") {
                // Fixed bodies: the very same headers, Content-Length included.
                assert_eq!(head.headers, get.headers, "{path}");
                assert_eq!(
                    head.header("Content-Length"),
                    Some(get.body.len().to_string().as_str())
                );
            }
        }
    });
}

#[test]
fn unknown_paths_are_404_and_other_methods_405() {
    with_each_gateway(&[], |gateway| {
        let mut http = gateway.http();
        for path in ["/", "/nope", "/livez/x", "/wss", "/echo"] {
            http.send(&request("GET", path));
            let response = http.read_response();
            assert_common_headers(&response);
            assert_eq!(response.status, 404, "{path}");
        }
        for path in ["/livez", "/readyz", "/health", "/metrics"] {
            for method in ["POST", "PUT", "DELETE"] {
                http.send(&request(method, path));
                let response = http.read_response();
                assert_common_headers(&response);
                assert_eq!(response.status, 405, "{method} {path}");
                let allow = response.header("Allow").expect("405 has Allow");
                assert!(allow.contains("GET") && allow.contains("HEAD"), "{allow}");
            }
        }
        // A query string does not change the route.
        http.send(&request("GET", "/livez?verbose=1"));
        assert_eq!(http.read_response().status, 200);
    });
}

#[test]
fn keep_alive_serves_several_requests_on_one_connection() {
    with_each_gateway(&[], |gateway| {
        let mut http = gateway.http();
        for round in 0..5 {
            http.send(&request("GET", "/livez"));
            let response = http.read_response();
            assert_common_headers(&response);
            assert_eq!(response.status, 200, "round {round}");
            assert_eq!(response.header("Connection"), None, "round {round}");
        }
    });
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    with_each_gateway(&[], |gateway| {
        let paths = ["/livez", "/nope", "/readyz", "/health", "/metrics"];
        let mut burst = Vec::new();
        let mut expected = Vec::new();
        for index in 0..40 {
            let path = paths[index % paths.len()];
            burst.extend_from_slice(&request("GET", path));
            expected.push(path);
        }
        let mut http = gateway.http();
        http.send(&burst);
        for (index, path) in expected.into_iter().enumerate() {
            let response = http.read_response();
            assert_common_headers(&response);
            match path {
                "/livez" => assert_eq!(response.body, b"ok\n", "#{index}"),
                "/nope" => assert_eq!(response.status, 404, "#{index}"),
                "/readyz" => assert_eq!(response.body, b"ready\n", "#{index}"),
                "/health" => assert!(
                    serde_json::from_slice::<Value>(&response.body).is_ok(),
                    "#{index}"
                ),
                _ => assert!(
                    String::from_utf8_lossy(&response.body).contains("diminuendo_build_info"),
                    "#{index}"
                ),
            }
        }
        // Still open for more.
        http.send(&request("GET", "/livez"));
        assert_eq!(http.read_response().status, 200);
    });
}

#[test]
fn a_request_split_into_one_byte_writes() {
    with_each_gateway(&[], |gateway| {
        let mut http = gateway.http();
        for byte in request("GET", "/livez") {
            http.send(&[byte]);
        }
        let response = http.read_response();
        assert_eq!(response.status, 200);
        assert_eq!(response.body, b"ok\n");
    });
}

/// Sends `bytes` on a new connection; expects one response with `status` and `Connection: close`,
/// then the end of the connection.
fn expect_refusal_and_close(http: &mut Http, bytes: &[u8], status: u16) {
    http.send(bytes);
    let response = http.read_response();
    assert_common_headers(&response);
    assert_eq!(response.status, status, "{response:?}");
    assert_eq!(response.header("Connection"), Some("close"), "{response:?}");
    http.expect_closed();
}

#[test]
fn malformed_requests_get_400_then_close() {
    with_each_gateway(&[], |gateway| {
        for bytes in [
            &b"\x00\x01garbage\r\n\r\n"[..],
            b"GET /livez HTTP/1.1\r\nNo colon here\r\n\r\n",
            b"GET /livez HTTP/9.9\r\n\r\n",
            b"GET /livez HTTP/1.1\r\nContent-Length: nope\r\n\r\n",
        ] {
            expect_refusal_and_close(&mut gateway.http(), bytes, 400);
        }
        // After a good request on the same connection too.
        let mut http = gateway.http();
        http.send(&request("GET", "/livez"));
        assert_eq!(http.read_response().status, 200);
        expect_refusal_and_close(&mut http, b"\x16\x03\x01\x02\x00\r\n\r\n", 400);
    });
}

#[test]
fn oversized_heads_get_431_then_close() {
    with_each_gateway(&[], |gateway| {
        // One big header, never finished: refused once it passes 16 KiB.
        let mut big = b"GET /livez HTTP/1.1\r\nX-Big: ".to_vec();
        big.resize(16 * 1024 + 64, b'a');
        expect_refusal_and_close(&mut gateway.http(), &big, 431);

        // A complete head just over the limit.
        let mut complete = b"GET /livez HTTP/1.1\r\nX-Big: ".to_vec();
        complete.resize(16 * 1024 + 10, b'a');
        complete.extend_from_slice(b"\r\n\r\n");
        expect_refusal_and_close(&mut gateway.http(), &complete, 431);

        // Too many headers.
        let mut many = b"GET /livez HTTP/1.1\r\n".to_vec();
        for index in 0..100 {
            many.extend_from_slice(format!("X-{index}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        expect_refusal_and_close(&mut gateway.http(), &many, 431);

        // Just under the limit is fine.
        let mut fits = b"GET /livez HTTP/1.1\r\nX-Big: ".to_vec();
        fits.resize(15 * 1024, b'a');
        fits.extend_from_slice(b"\r\n\r\n");
        let mut http = gateway.http();
        http.send(&fits);
        assert_eq!(http.read_response().status, 200);
    });
}

#[test]
fn request_bodies_get_413_then_close() {
    with_each_gateway(&[], |gateway| {
        expect_refusal_and_close(
            &mut gateway.http(),
            b"GET /livez HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
            413,
        );
        expect_refusal_and_close(
            &mut gateway.http(),
            b"POST /livez HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            413,
        );
        // An explicit empty body is no body.
        let mut http = gateway.http();
        http.send(b"GET /livez HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(http.read_response().status, 200);
    });
}

#[test]
fn http10_without_keep_alive_is_closed_after_the_response() {
    with_each_gateway(&[], |gateway| {
        let mut http = gateway.http();
        http.send(b"GET /livez HTTP/1.0\r\n\r\n");
        let response = http.read_response();
        assert_eq!(response.status, 200);
        assert_eq!(response.header("Connection"), Some("close"));
        http.expect_closed();
    });
}

#[test]
fn slowloris_heads_get_408_after_the_head_timeout() {
    with_each_gateway(&["--request-head-timeout-ms", "300"], |gateway| {
        let mut http = gateway.http();
        let started = Instant::now();
        http.send(b"GET /livez HTTP/1.1\r\nHost: slow\r\n");
        let response = http.read_response();
        let elapsed = started.elapsed();
        assert_common_headers(&response);
        assert_eq!(response.status, 408);
        assert!(
            elapsed >= Duration::from_millis(280),
            "408 too early: {elapsed:?}"
        );
        assert!(
            elapsed < Duration::from_secs(3),
            "408 too late: {elapsed:?}"
        );
        http.expect_closed();

        // A connection that trickles in a head faster than the timeout is served.
        let mut http = gateway.http();
        for part in [&b"GET /livez HTTP/1.1\r\n"[..], b"Host: a\r\n", b"\r\n"] {
            http.send(part);
        }
        assert_eq!(http.read_response().status, 200);
    });
}

#[test]
fn a_connection_that_sends_nothing_is_closed_at_the_head_timeout() {
    with_each_gateway(&["--request-head-timeout-ms", "300"], |gateway| {
        // Served once: between requests the keep-alive timeout (60 s) applies.
        let mut served = gateway.http();
        served.send(&request("GET", "/livez"));
        assert_eq!(served.read_response().status, 200);
        let started = Instant::now();
        let mut silent = gateway.http();
        silent.expect_closed();
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(280),
            "closed too early: {elapsed:?}"
        );
        assert!(
            elapsed < Duration::from_secs(5),
            "closed too late: {elapsed:?}"
        );
        // The served connection, idle for longer than that, is still open.
        served.send(&request("GET", "/livez"));
        assert_eq!(served.read_response().status, 200);
    });
}

/// A new connection's answer to `GET /livez`: 200, or 503 with `Connection: close` and the end
/// of the stream.
fn livez_on(http: &mut Http) -> u16 {
    http.send(&request("GET", "/livez"));
    let response = http.read_response();
    assert_common_headers(&response);
    if response.status == 503 {
        assert_eq!(response.header("Connection"), Some("close"), "{response:?}");
        assert_eq!(response.header("Retry-After"), Some("1"), "{response:?}");
        http.expect_closed();
    }
    response.status
}

/// Opens connections until one is served (the gateway notices a closed one asynchronously).
fn served_within(gateway: &diminuendo_tests::Gateway, deadline: Duration) -> Http {
    let until = Instant::now() + deadline;
    loop {
        let mut http = gateway.http();
        if livez_on(&mut http) == 200 {
            return http;
        }
        assert!(Instant::now() < until, "no slot came free");
    }
}

#[test]
fn connections_beyond_the_per_ip_limit_get_503() {
    with_each_gateway(&["--dev", "--max-connections-per-ip", "2"], |gateway| {
        let mut first = gateway.http();
        assert_eq!(livez_on(&mut first), 200);
        let mut second = gateway.raw_ws("/ws");
        // A third, plain HTTP or an upgrade, is refused and closed.
        assert_eq!(livez_on(&mut gateway.http()), 503);
        let mut upgrade = gateway.http();
        upgrade.send(&wire::upgrade("/ws"));
        let refused = upgrade.read_upgrade_response();
        assert_eq!(refused.status, 503, "{refused:?}");
        upgrade.expect_closed();
        // The admitted ones are unaffected.
        assert_eq!(livez_on(&mut first), 200);
        second.send(&wire::text(&json!({"type": "ping"}).to_string()));
        // After the greeting (welcome, connected, authenticated), the pong.
        let types: Vec<Value> = (0..4).map(|_| second.json()["type"].clone()).collect();
        assert_eq!(types, ["welcome", "connected", "authenticated", "pong"]);
        // When one goes, there is room again.
        drop(first);
        let _third = served_within(gateway, Duration::from_secs(5));
    });
}

#[test]
fn plain_http_connections_count_toward_max_connections() {
    with_each_gateway(&["--max-connections", "2"], |gateway| {
        let mut first = gateway.http();
        assert_eq!(livez_on(&mut first), 200);
        let mut second = gateway.http();
        assert_eq!(livez_on(&mut second), 200);
        assert_eq!(livez_on(&mut gateway.http()), 503);
        assert_eq!(livez_on(&mut second), 200);
        drop(first);
        let _third = served_within(gateway, Duration::from_secs(5));
    });
}
