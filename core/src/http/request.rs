//! Request heads: only what the routes need is kept, so a parsed head owns little.

use crate::http::route::Route;

/// Most headers a request may carry; more is answered 431 like an oversized head.
const MAX_HEADERS: usize = 64;

/// The longest path kept in [`RequestHead::asset_path`]; no asset has a longer one.
pub const MAX_ASSET_PATH: usize = 128;

/// The request methods the routes tell apart; every route takes `GET` and `HEAD` only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `GET`.
    Get,
    /// `HEAD`: answered like `GET`, without the body.
    Head,
    /// Any other method: a known path answers `405` with `Allow: GET, HEAD`.
    Other,
}

/// The parts of a request head the gateway acts on.
#[derive(Debug, Clone, Default)]
pub struct RequestHead {
    /// The request method; `None` only in a default head (read it with [`RequestHead::method`]).
    pub method: Option<Method>,
    /// The route of the path (query and fragment ignored); `None` for any other path (`404`,
    /// unless it is one of the console's assets).
    pub route: Option<Route>,
    /// The path (query and fragment cut) when it has no route and is at most
    /// [`MAX_ASSET_PATH`] bytes: what the console's asset table is searched for.
    pub asset_path: Option<Box<str>>,
    /// `If-None-Match`, trimmed (an asset whose `ETag` it names is answered `304`).
    pub if_none_match: Option<String>,
    /// HTTP/1.1 (true) or HTTP/1.0 (false).
    pub http11: bool,
    /// `Connection: close` (or HTTP/1.0 without `keep-alive`).
    pub wants_close: bool,
    /// `Connection` lists the `upgrade` token (required for a WebSocket upgrade).
    pub connection_upgrade: bool,
    /// An `Upgrade` header was present.
    pub has_upgrade: bool,
    /// `Upgrade` lists the `websocket` token.
    pub upgrade_websocket: bool,
    /// `Sec-WebSocket-Key`, trimmed (checked with `ws::handshake::is_valid_client_key`).
    pub websocket_key: Option<Vec<u8>>,
    /// `Sec-WebSocket-Version`, trimmed; anything but `13` is answered `426`.
    pub websocket_version: Option<Vec<u8>>,
    /// The subprotocols offered in `Sec-WebSocket-Protocol` headers, in order (`diminuendo.v1`,
    /// `bearer.<JWT>`).
    pub websocket_protocols: Vec<String>,
    /// `Origin`, checked against the allowed origins; `None` when absent (not a browser).
    pub origin: Option<String>,
    /// `Authorization`, trimmed (a `Bearer` token authenticates the upgrade).
    pub authorization: Option<String>,
    /// `X-Forwarded-For` values, in order (read only when the peer is a trusted proxy).
    pub x_forwarded_for: Vec<String>,
    /// `Forwarded` values, in order (read only when the peer is a trusted proxy and there is no
    /// `X-Forwarded-For`).
    pub forwarded: Vec<String>,
    /// Declared body length; `None` when absent.
    pub content_length: Option<u64>,
    /// A `Content-Length` that is not a number, or two that disagree: answered `400`.
    pub content_length_invalid: bool,
    /// A `Transfer-Encoding` header was present (no route takes a body: `413`).
    pub transfer_encoding: bool,
}

impl RequestHead {
    /// The request method, [`Method::Other`] when unset.
    pub fn method(&self) -> Method {
        self.method.unwrap_or(Method::Other)
    }
}

/// The outcome of [`parse_head`] on bytes that are not (yet) an error.
#[derive(Debug)]
pub enum HeadParse {
    /// A whole head of `len` bytes.
    Complete {
        /// The parsed head.
        head: Box<RequestHead>,
        /// Bytes the head took at the front of the buffer, its blank line included.
        len: usize,
    },
    /// More bytes are needed.
    Partial,
}

/// Why a request head was refused; the connection is closed after the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// Not HTTP/1.x: answered 400.
    Malformed,
    /// Over the head size or header count limit: answered 431.
    TooLarge,
}

/// Parses one request head from the front of `buffer`; a head (complete or not) longer than
/// `max_head` bytes, or with more than 64 headers, is [`HeadError::TooLarge`].
pub fn parse_head(buffer: &[u8], max_head: usize) -> Result<HeadParse, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let status = match request.parse(buffer) {
        Ok(status) => status,
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Malformed),
    };
    let len = match status {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => {
            return if buffer.len() > max_head {
                Err(HeadError::TooLarge)
            } else {
                Ok(HeadParse::Partial)
            };
        }
    };
    if len > max_head {
        return Err(HeadError::TooLarge);
    }
    let mut head = RequestHead {
        method: Some(match request.method {
            Some("GET") => Method::Get,
            Some("HEAD") => Method::Head,
            _ => Method::Other,
        }),
        http11: request.version == Some(1),
        ..RequestHead::default()
    };
    let target = request.path.unwrap_or("");
    let path = target.split(['?', '#']).next().unwrap_or("");
    head.route = Route::from_path(path);
    if head.route.is_none() && path.len() <= MAX_ASSET_PATH {
        head.asset_path = Some(path.into());
    }

    let mut keep_alive_token = false;
    for header in request.headers.iter() {
        let value = header.value;
        let name = header.name;
        if name.eq_ignore_ascii_case("connection") {
            for token in tokens(value) {
                if token.eq_ignore_ascii_case(b"close") {
                    head.wants_close = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    head.connection_upgrade = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive_token = true;
                }
            }
        } else if name.eq_ignore_ascii_case("upgrade") {
            head.has_upgrade = true;
            if tokens(value).any(|token| token.eq_ignore_ascii_case(b"websocket")) {
                head.upgrade_websocket = true;
            }
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            head.websocket_key = Some(value.trim_ascii().to_vec());
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            head.websocket_version = Some(value.trim_ascii().to_vec());
        } else if name.eq_ignore_ascii_case("sec-websocket-protocol") {
            head.websocket_protocols.extend(
                tokens(value)
                    .filter_map(|token| std::str::from_utf8(token).ok())
                    .map(str::to_owned),
            );
        } else if name.eq_ignore_ascii_case("origin") {
            head.origin = std::str::from_utf8(value.trim_ascii())
                .ok()
                .map(str::to_owned);
        } else if name.eq_ignore_ascii_case("authorization") {
            head.authorization = std::str::from_utf8(value.trim_ascii())
                .ok()
                .map(str::to_owned);
        } else if name.eq_ignore_ascii_case("if-none-match") {
            head.if_none_match = std::str::from_utf8(value.trim_ascii())
                .ok()
                .map(str::to_owned);
        } else if name.eq_ignore_ascii_case("x-forwarded-for") {
            if let Ok(text) = std::str::from_utf8(value) {
                head.x_forwarded_for.push(text.to_owned());
            }
        } else if name.eq_ignore_ascii_case("forwarded") {
            if let Ok(text) = std::str::from_utf8(value) {
                head.forwarded.push(text.to_owned());
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            let parsed = std::str::from_utf8(value.trim_ascii())
                .ok()
                .and_then(|text| text.parse::<u64>().ok());
            match (parsed, head.content_length) {
                (Some(length), None) => head.content_length = Some(length),
                (Some(length), Some(previous)) if length == previous => {}
                _ => head.content_length_invalid = true,
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            head.transfer_encoding = true;
        }
    }
    if !head.http11 && !keep_alive_token {
        head.wants_close = true;
    }
    Ok(HeadParse::Complete {
        head: Box::new(head),
        len,
    })
}

/// The comma-separated tokens of a header value, trimmed.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|byte| *byte == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|token| !token.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(text: &str) -> Box<RequestHead> {
        match parse_head(text.as_bytes(), 16 * 1024) {
            Ok(HeadParse::Complete { head, len }) => {
                assert_eq!(len, text.len());
                head
            }
            other => panic!("expected a complete head, got {other:?}"),
        }
    }

    #[test]
    fn upgrade_headers_are_recognised_case_insensitively() {
        let head = complete(
            "GET /ws?x=1 HTTP/1.1\r\nHost: a\r\nUPGRADE: WebSocket\r\nConnection: keep-alive, Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: diminuendo.v1, bearer.abc\r\n\r\n",
        );
        assert_eq!(head.route, Some(Route::WebSocket));
        assert!(head.upgrade_websocket && head.connection_upgrade && head.http11);
        assert_eq!(
            head.websocket_protocols,
            vec!["diminuendo.v1", "bearer.abc"]
        );
    }

    #[test]
    fn an_unrouted_path_is_kept_for_the_asset_table() {
        let head = complete("GET /assets/app.js?v=1 HTTP/1.1\r\nIf-None-Match:  \"abc\" \r\n\r\n");
        assert_eq!(head.route, None);
        assert_eq!(head.asset_path.as_deref(), Some("/assets/app.js"));
        assert_eq!(head.if_none_match.as_deref(), Some("\"abc\""));
        assert_eq!(complete("GET /livez HTTP/1.1\r\n\r\n").asset_path, None);
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_ASSET_PATH));
        assert_eq!(complete(&long).asset_path, None);
    }

    #[test]
    fn http10_closes_unless_keep_alive() {
        assert!(complete("GET /livez HTTP/1.0\r\n\r\n").wants_close);
        assert!(!complete("GET /livez HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").wants_close);
        assert!(!complete("GET /livez HTTP/1.1\r\n\r\n").wants_close);
    }

    #[test]
    fn conflicting_content_lengths_are_invalid() {
        let head = complete("GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n");
        assert!(head.content_length_invalid);
    }

    #[test]
    fn limits() {
        assert!(matches!(
            parse_head(b"GET / HTTP/1.1\r\nHost:", 16),
            Err(HeadError::TooLarge)
        ));
        assert!(matches!(
            parse_head(b"GET / HTTP/1.1\r\nHo", 1024),
            Ok(HeadParse::Partial)
        ));
        assert!(matches!(
            parse_head(b"\x00\x01garbage\r\n\r\n", 1024),
            Err(HeadError::Malformed)
        ));
    }
}
