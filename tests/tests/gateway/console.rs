//! The web console on every binary: `/` and `/assets/*` served from the assets embedded in the
//! binary (`console/dist/`), with a strict Content-Security-Policy, `X-Frame-Options`, and `ETag`
//! revalidation; on by default in dev mode, `--console` otherwise, `--console false` turns it off.

use diminuendo_tests::{wire, Http, HttpResponse};

use crate::with_each_gateway;

fn request(method: &str, path: &str, extra: &str) -> Vec<u8> {
    format!("{method} {path} HTTP/1.1\r\nHost: test\r\n{extra}\r\n").into_bytes()
}

fn get(http: &mut Http, path: &str) -> HttpResponse {
    http.send(&wire::get(path));
    http.read_response()
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
    ] {
        assert!(csp.contains(directive), "{directive} missing: {csp}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(response.header("X-Frame-Options"), Some("DENY"));
    assert_eq!(response.header("X-Content-Type-Options"), Some("nosniff"));
    assert_eq!(response.header("Cache-Control"), Some("no-cache"));
    assert!(response.header("ETag").is_some(), "{response:?}");
}

#[test]
fn dev_mode_serves_the_console_and_revalidates_by_etag() {
    with_each_gateway(&["--dev"], |gateway| {
        let mut http = gateway.http();
        let index = get(&mut http, "/");
        assert_eq!(index.status, 200);
        assert_eq!(
            index.header("Content-Type"),
            Some("text/html; charset=utf-8")
        );
        assert_console_headers(&index);
        let page = String::from_utf8_lossy(&index.body).into_owned();
        assert!(page.contains("<script src=\"/assets/app.js\""), "{page}");

        for (path, content_type) in [
            ("/assets/app.js", "text/javascript; charset=utf-8"),
            ("/assets/app.css", "text/css; charset=utf-8"),
            ("/assets/favicon.svg", "image/svg+xml"),
        ] {
            let asset = get(&mut http, path);
            assert_eq!(asset.status, 200, "{path}");
            assert_eq!(asset.header("Content-Type"), Some(content_type), "{path}");
            assert!(!asset.body.is_empty(), "{path}");
            assert_console_headers(&asset);
            // Revalidation: the same tag gets 304 and no body; the connection stays usable.
            let etag = asset.header("ETag").unwrap_or_default().to_owned();
            http.send(&request("GET", path, &format!("If-None-Match: {etag}\r\n")));
            let again = http.read_response();
            assert_eq!(again.status, 304, "{path}");
            assert!(again.body.is_empty());
            assert_eq!(again.header("ETag"), Some(etag.as_str()));
            assert_eq!(again.header("Content-Length"), None);
        }

        // HEAD: GET's headers, no body (had it one, the next response would not parse).
        http.send(&request("HEAD", "/", ""));
        let head = http.read_head_response();
        assert_eq!(head.status, 200);
        assert_eq!(head.headers, index.headers);
        assert_eq!(get(&mut http, "/livez").body, b"ok\n");

        for path in ["/assets/nope.js", "/index.html", "/assets"] {
            assert_eq!(get(&mut http, path).status, 404, "{path}");
        }
        http.send(&request("POST", "/", ""));
        assert_eq!(http.read_response().status, 405);

        let metrics = gateway.metrics();
        assert!(
            metrics[r#"diminuendo_http_requests_total{route="console",status="200"}"#] >= 5.0,
            "{metrics:?}"
        );
        assert_eq!(
            metrics[r#"diminuendo_http_requests_total{route="console",status="304"}"#],
            3.0
        );
    });
}

#[test]
fn the_console_is_off_without_dev_mode_unless_asked_for() {
    with_each_gateway(&[], |gateway| {
        let response = get(&mut gateway.http(), "/");
        assert_eq!(response.status, 404);
        assert_eq!(response.header("Content-Security-Policy"), None);
    });
    with_each_gateway(&["--dev", "--console", "false"], |gateway| {
        assert_eq!(get(&mut gateway.http(), "/").status, 404);
        assert_eq!(get(&mut gateway.http(), "/assets/app.js").status, 404);
    });
    with_each_gateway(&["--console"], |gateway| {
        let index = get(&mut gateway.http(), "/");
        assert_eq!(index.status, 200);
        assert_console_headers(&index);
    });
}
