//! The WebSocket upgrade and its refusals (PROTOCOL section 1), with raw requests.

use diminuendo_tests::{assert_common_headers, wire, Gateway, HttpResponse};

use crate::with_each_gateway;

fn upgrade_request(path: &str, headers: &[(&str, &str)], skip: &[&str]) -> Vec<u8> {
    let mut text = format!("GET {path} HTTP/1.1\r\nHost: test\r\n");
    let defaults = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", wire::KEY),
        ("Sec-WebSocket-Version", "13"),
    ];
    for (name, value) in defaults {
        if !skip.contains(&name) && !headers.iter().any(|(other, _)| *other == name) {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    text.into_bytes()
}

/// Sends an upgrade request on a new connection and reads the answer.
fn status_of(
    gateway: &Gateway,
    path: &str,
    headers: &[(&str, &str)],
    skip: &[&str],
) -> HttpResponse {
    let mut http = gateway.http();
    http.send(&upgrade_request(path, headers, skip));
    let response = http.read_upgrade_response();
    assert_common_headers(&response);
    response
}

#[test]
fn a_valid_upgrade_is_switched() {
    with_each_gateway(&["--dev"], |gateway| {
        let response = status_of(gateway, "/ws", &[], &[]);
        assert_eq!(response.status, 101);
        assert_eq!(
            response.header("Sec-WebSocket-Accept"),
            Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        );
        assert!(response
            .header("Upgrade")
            .is_some_and(|value| value.eq_ignore_ascii_case("websocket")));
        // No subprotocol was offered, so none is selected.
        assert_eq!(response.header("Sec-WebSocket-Protocol"), None);
        // Compression is never negotiated.
        let response = status_of(
            gateway,
            "/ws",
            &[("Sec-WebSocket-Extensions", "permessage-deflate")],
            &[],
        );
        assert_eq!(response.status, 101);
        assert_eq!(response.header("Sec-WebSocket-Extensions"), None);
    });
}

#[test]
fn an_upgrade_without_the_upgrade_header_gets_426() {
    with_each_gateway(&["--dev"], |gateway| {
        let response = status_of(gateway, "/ws", &[], &["Upgrade"]);
        assert_eq!(response.status, 426, "{response:?}");
        assert_eq!(response.header("Upgrade"), Some("websocket"));
        // A plain GET of /ws too.
        let response = gateway.get("/ws");
        assert_eq!(response.status, 426, "{response:?}");
        assert_eq!(response.header("Upgrade"), Some("websocket"));
        // An upgrade to something else.
        let response = status_of(gateway, "/ws", &[("Upgrade", "h2c")], &[]);
        assert_eq!(response.status, 426, "{response:?}");
    });
}

#[test]
fn another_websocket_version_gets_426_naming_13() {
    with_each_gateway(&["--dev"], |gateway| {
        for version in ["12", "8", "14"] {
            let response = status_of(gateway, "/ws", &[("Sec-WebSocket-Version", version)], &[]);
            assert_eq!(response.status, 426, "version {version}: {response:?}");
            assert_eq!(response.header("Sec-WebSocket-Version"), Some("13"));
        }
        let response = status_of(gateway, "/ws", &[], &["Sec-WebSocket-Version"]);
        assert_eq!(response.status, 426, "{response:?}");
        assert_eq!(response.header("Sec-WebSocket-Version"), Some("13"));
    });
}

#[test]
fn a_bad_or_missing_key_gets_400() {
    with_each_gateway(&["--dev"], |gateway| {
        for key in [
            "short",
            "not base64 at all!!!!!!!",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            let response = status_of(gateway, "/ws", &[("Sec-WebSocket-Key", key)], &[]);
            assert_eq!(response.status, 400, "key {key:?}: {response:?}");
        }
        let response = status_of(gateway, "/ws", &[], &["Sec-WebSocket-Key"]);
        assert_eq!(response.status, 400, "{response:?}");
    });
}

#[test]
fn echo_is_404_unless_enabled() {
    with_each_gateway(&["--dev"], |gateway| {
        let response = status_of(gateway, "/echo", &[], &[]);
        assert_eq!(response.status, 404, "{response:?}");
    });
    with_each_gateway(&["--dev", "--conformance-echo"], |gateway| {
        let mut echo = gateway.raw_ws("/echo");
        echo.send(&wire::text("hello, echo"));
        let frame = echo.frame();
        assert_eq!(
            (frame.opcode, frame.payload.as_slice()),
            (1, &b"hello, echo"[..])
        );
        echo.send(&wire::frame(2, true, &[0, 1, 2, 255], [9, 8, 7, 6]));
        let frame = echo.frame();
        assert_eq!(
            (frame.opcode, frame.payload.as_slice()),
            (2, &[0u8, 1, 2, 255][..])
        );
        // /echo sends no greeting: it is for the conformance suite only.
        echo.send(&wire::close(1000));
        let close = echo.frame();
        assert_eq!(close.close_code(), Some(1000));
    });
}

#[test]
fn origins_are_checked_against_the_allowlist() {
    let allowed = "https://app.example.com,https://admin.example.com";
    with_each_gateway(&["--allowed-origins", allowed], |gateway| {
        let response = status_of(
            gateway,
            "/ws",
            &[("Origin", "https://evil.example.com")],
            &[],
        );
        assert_eq!(response.status, 403, "{response:?}");
        let response = status_of(
            gateway,
            "/ws",
            &[("Origin", "https://app.example.com.evil")],
            &[],
        );
        assert_eq!(response.status, 403, "{response:?}");
        for origin in ["https://app.example.com", "https://admin.example.com"] {
            let response = status_of(gateway, "/ws", &[("Origin", origin)], &[]);
            assert_eq!(response.status, 101, "{origin}: {response:?}");
        }
    });
    // Dev mode accepts any origin, even with an allowlist.
    with_each_gateway(&["--dev", "--allowed-origins", allowed], |gateway| {
        let response = status_of(
            gateway,
            "/ws",
            &[("Origin", "https://evil.example.com")],
            &[],
        );
        assert_eq!(response.status, 101, "{response:?}");
    });
}

#[test]
fn upgrades_beyond_max_connections_get_503() {
    with_each_gateway(&["--dev", "--max-connections", "2"], |gateway| {
        let mut first = gateway.raw_ws("/ws");
        let _second = gateway.raw_ws("/ws");
        let third = status_of(gateway, "/ws", &[], &[]);
        assert_eq!(third.status, 503, "{third:?}");
        assert!(third.header("Retry-After").is_some(), "{third:?}");
        // Changed on purpose (issue 11, item 9): plain HTTP counts toward the limit too, and a
        // refused connection is closed.
        let mut http = gateway.http();
        http.send(&wire::get("/livez"));
        let refused = http.read_response();
        assert_eq!(refused.status, 503, "{refused:?}");
        assert_eq!(refused.header("Connection"), Some("close"), "{refused:?}");
        http.expect_closed();

        // Once one closes, there is room again.
        first.send(&wire::close(1000));
        let mut saw_close = false;
        while let Some(frame) = first.read_frame() {
            if frame.opcode == 8 {
                assert_eq!(frame.close_code(), Some(1000));
                saw_close = true;
            }
        }
        assert!(saw_close, "no close frame echoed");
        let again = status_of(gateway, "/ws", &[], &[]);
        assert_eq!(again.status, 101, "{again:?}");
    });
}
