//! Graceful shutdown on SIGTERM/SIGINT (PROTOCOL section 8).

use std::time::{Duration, Instant};

use diminuendo_tests::{
    assert_common_headers, expect_dev_greeting, expect_end, next_json, read_close, wire, RawWs,
};

use crate::with_each_gateway;

/// Longer than any drain may take (the close timeout is 5 s).
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

fn expect_server_shutdown(message: &serde_json::Value) {
    assert_eq!(message["type"], "server_shutdown", "{message}");
    assert!(message["reason"].is_string(), "{message}");
    let after = message["reconnectAfterMs"]
        .as_u64()
        .unwrap_or_else(|| panic!("no reconnectAfterMs: {message}"));
    assert!((1000..=5000).contains(&after), "{message}");
}

/// A hand-driven client past its greeting: it does not answer the server's close, so it holds
/// the drain open until the test lets it go.
fn raw_client(gateway: &diminuendo_tests::Gateway) -> RawWs {
    let mut ws = gateway.raw_ws("/ws");
    for _ in 0..3 {
        ws.json();
    }
    ws
}

/// Reads the drain's `server_shutdown` and close 1001 on a hand-driven client.
fn expect_drain_notice(ws: &mut RawWs) {
    let notice = ws.json();
    expect_server_shutdown(&notice);
    let close = ws.frame();
    assert_eq!(close.close_code(), Some(1001), "{close:?}");
}

#[test]
fn sigterm_tells_every_client_then_closes_1001_and_exits_0() {
    with_each_gateway(&["--dev"], |gateway| {
        let mut first = gateway.ws();
        let mut second = gateway.ws();
        expect_dev_greeting(&mut first);
        expect_dev_greeting(&mut second);
        // An idle keep-alive HTTP connection is simply closed.
        let mut http = gateway.http();
        http.send(&wire::get("/livez"));
        assert_eq!(http.read_response().status, 200);

        gateway.signal(libc::SIGTERM);
        let mut delays = Vec::new();
        for ws in [&mut first, &mut second] {
            let notice = next_json(ws);
            expect_server_shutdown(&notice);
            delays.push(notice["reconnectAfterMs"].as_u64());
            assert_eq!(read_close(ws), Some(1001));
            // tungstenite answers the close on the next read; the server then ends the stream.
            expect_end(ws);
        }
        http.expect_closed();
        let status = gateway
            .wait_exit(EXIT_TIMEOUT)
            .expect("the gateway did not exit after draining");
        assert_eq!(status.code(), Some(0), "{status:?}");
    });
}

#[test]
fn sigint_with_no_connections_exits_0_at_once() {
    with_each_gateway(&["--dev"], |gateway| {
        let signalled = Instant::now();
        gateway.signal(libc::SIGINT);
        let status = gateway
            .wait_exit(EXIT_TIMEOUT)
            .expect("the gateway did not exit");
        assert_eq!(status.code(), Some(0), "{status:?}");
        assert!(signalled.elapsed() < Duration::from_secs(3));
    });
}

#[test]
fn readyz_and_new_upgrades_get_503_during_the_drain() {
    with_each_gateway(&["--dev"], |gateway| {
        let mut holder = raw_client(gateway);
        gateway.signal(libc::SIGTERM);
        expect_drain_notice(&mut holder);

        // The drain is in progress (the holder has not answered the close).
        let mut http = gateway.http();
        http.send(&wire::get("/readyz"));
        let readyz = http.try_read_response().unwrap_or_else(|| {
            panic!("a draining gateway closed a new connection without answering /readyz")
        });
        assert_common_headers(&readyz);
        assert_eq!(readyz.status, 503, "{readyz:?}");

        let mut http = gateway.http();
        http.send(&wire::upgrade("/ws"));
        let upgrade = http.try_read_response().unwrap_or_else(|| {
            panic!("a draining gateway closed a new connection without answering its upgrade")
        });
        assert_eq!(upgrade.status, 503, "{upgrade:?}");

        holder.send(&wire::close(1001));
        assert!(holder.read_frame().is_none(), "a frame after the close");
        let status = gateway
            .wait_exit(EXIT_TIMEOUT)
            .expect("the gateway did not exit after draining");
        assert_eq!(status.code(), Some(0), "{status:?}");
    });
}

#[test]
fn a_second_signal_during_the_drain_exits_at_once() {
    with_each_gateway(&["--dev"], |gateway| {
        let mut holder = raw_client(gateway);
        gateway.signal(libc::SIGTERM);
        expect_drain_notice(&mut holder);
        let signalled = Instant::now();
        gateway.signal(libc::SIGTERM);
        let status = gateway
            .wait_exit(Duration::from_secs(3))
            .expect("the second signal did not end the process");
        assert!(
            signalled.elapsed() < Duration::from_secs(3),
            "{:?}",
            signalled.elapsed()
        );
        assert!(!status.success(), "{status:?}");
    });
}
