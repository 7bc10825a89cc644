//! The web console's route (`/` and `/assets/*` from `CoreConfig::console`), driven through the
//! simulator: its headers, `ETag` revalidation, `HEAD`, unknown assets, and the console turned off.

mod common;

use std::time::Instant;

use common::*;
use diminuendo_core::http::{Asset, Assets};
use diminuendo_core::sim::client::{self, parse_response_with};
use diminuendo_core::sim::Sim;
use diminuendo_core::CoreConfig;

const INDEX: &[u8] = b"<!doctype html><script src=\"/assets/app.js\"></script>";
const SCRIPT: &[u8] = b"console.log(1);\n";

fn assets() -> Assets {
    Assets::new(vec![
        Asset::new("/", "text/html; charset=utf-8", INDEX),
        Asset::new("/assets/app.js", "text/javascript; charset=utf-8", SCRIPT),
    ])
}

fn sim_with(console: Option<Assets>) -> Sim {
    Sim::new(CoreConfig { console, ..dev() }, 11, Instant::now())
}

fn request(method: &str, path: &str, extra: &str) -> Vec<u8> {
    format!("{method} {path} HTTP/1.1\r\nHost: test\r\n{extra}\r\n").into_bytes()
}

/// Sends `bytes` and parses one response (without a body when `head_only`).
fn exchange(
    sim: &mut Sim,
    id: diminuendo_core::ConnectionId,
    bytes: &[u8],
    head_only: bool,
) -> HttpResponse {
    sim.send(id, bytes);
    let received = sim.take_received(id);
    let (response, len) = parse_response_with(&received, head_only).expect("a whole response");
    assert_eq!(len, received.len(), "one response, nothing after it");
    response
}

fn assert_console_headers(response: &HttpResponse) {
    let csp = response
        .header("Content-Security-Policy")
        .unwrap_or_else(|| panic!("no CSP: {response:?}"));
    for directive in [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ] {
        assert!(csp.contains(directive), "{directive} missing from {csp}");
    }
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(response.header("X-Frame-Options"), Some("DENY"));
    assert_eq!(response.header("X-Content-Type-Options"), Some("nosniff"));
    assert_eq!(response.header("Cache-Control"), Some("no-cache"));
    let etag = response.header("ETag").unwrap_or_default();
    assert!(
        etag.len() == 34 && etag.starts_with('"') && etag.ends_with('"'),
        "{etag}"
    );
}

#[test]
fn the_index_and_its_assets_are_served_with_strict_headers() {
    let mut sim = sim_with(Some(assets()));
    let id = sim.connect();
    let index = exchange(&mut sim, id, &client::get("/"), false);
    assert_eq!(index.status, 200);
    assert_eq!(index.body, INDEX);
    assert_eq!(
        index.header("Content-Type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(
        index.header("Content-Length"),
        Some(INDEX.len().to_string().as_str())
    );
    assert_console_headers(&index);

    let script = exchange(&mut sim, id, &client::get("/assets/app.js?v=2"), false);
    assert_eq!(script.status, 200);
    assert_eq!(script.body, SCRIPT);
    assert_eq!(
        script.header("Content-Type"),
        Some("text/javascript; charset=utf-8")
    );
    assert_console_headers(&script);
    assert_ne!(index.header("ETag"), script.header("ETag"));
    assert!(!sim.is_closed(id), "keep-alive");
}

#[test]
fn a_matching_if_none_match_is_answered_304_without_a_body() {
    let mut sim = sim_with(Some(assets()));
    let id = sim.connect();
    let first = exchange(&mut sim, id, &client::get("/"), false);
    let etag = first.header("ETag").unwrap_or_default().to_owned();

    for header in [
        etag.clone(),
        format!("W/{etag}"),
        format!("\"other\", {etag}"),
        "*".to_owned(),
    ] {
        let again = exchange(
            &mut sim,
            id,
            &request("GET", "/", &format!("If-None-Match: {header}\r\n")),
            true,
        );
        assert_eq!(again.status, 304, "{header}");
        assert_eq!(again.header("ETag"), Some(etag.as_str()));
        assert_eq!(again.header("Content-Length"), None, "{again:?}");
        assert!(again.body.is_empty());
        assert_console_headers(&again);
    }
    // A stale tag gets the whole asset again.
    let stale = exchange(
        &mut sim,
        id,
        &request("GET", "/", "If-None-Match: \"0123\"\r\n"),
        false,
    );
    assert_eq!(stale.status, 200);
    assert_eq!(stale.body, INDEX);
    // The next request on the connection is still parsed right after a 304.
    let livez = exchange(&mut sim, id, &client::get("/livez"), false);
    assert_eq!(livez.body, b"ok\n");
}

#[test]
fn head_is_get_without_the_body() {
    let mut sim = sim_with(Some(assets()));
    let id = sim.connect();
    let head = exchange(&mut sim, id, &request("HEAD", "/assets/app.js", ""), true);
    let get = exchange(&mut sim, id, &client::get("/assets/app.js"), false);
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(head.headers, get.headers);
    assert_eq!(
        head.header("Content-Length"),
        Some(SCRIPT.len().to_string().as_str())
    );
}

#[test]
fn unknown_assets_are_404_and_other_methods_405() {
    let mut sim = sim_with(Some(assets()));
    let id = sim.connect();
    for path in [
        "/assets/nope.js",
        "/index.html",
        "/assets/",
        "/assets/app.js/x",
    ] {
        let response = exchange(&mut sim, id, &client::get(path), false);
        assert_eq!(response.status, 404, "{path}");
        assert_eq!(response.header("Cache-Control"), Some("no-store"));
        assert_eq!(response.header("ETag"), None);
    }
    for method in ["POST", "PUT", "DELETE"] {
        let response = exchange(&mut sim, id, &request(method, "/", ""), false);
        assert_eq!(response.status, 405, "{method}");
        assert_eq!(response.header("Allow"), Some("GET, HEAD"));
    }
    // Asset paths are counted under the console's label, others under `other`.
    let metrics = exchange(&mut sim, id, &client::get("/metrics"), false);
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains(r#"diminuendo_http_requests_total{route="console",status="405"} 3"#),
        "{text}"
    );
    assert!(
        text.contains(r#"diminuendo_http_requests_total{route="other",status="404"} 4"#),
        "{text}"
    );
}

#[test]
fn without_the_console_the_root_is_404() {
    let mut sim = sim_with(None);
    let id = sim.connect();
    for path in ["/", "/assets/app.js"] {
        let response = exchange(&mut sim, id, &client::get(path), false);
        assert_eq!(response.status, 404, "{path}");
        assert_eq!(response.header("Content-Security-Policy"), None);
    }
}
