//! Responses. Every one carries `X-Content-Type-Options: nosniff`, `Cache-Control` (`no-store`
//! unless set) and `Content-Length` (but `101`, which may not have a length: RFC 9110 section
//! 8.6, and `304`, whose length would be the unsent representation's).

use bytes::{BufMut, Bytes, BytesMut};

/// An HTTP/1.1 response being built; [`Response::encode`] gives its bytes.
pub struct Response {
    status: u16,
    headers: Vec<(&'static str, String)>,
    content_type: &'static str,
    body: Bytes,
    cache_control: &'static str,
    close: bool,
}

impl Response {
    /// A response with `status`, no extra header and an empty `text/plain` body.
    pub fn new(status: u16) -> Self {
        Response {
            status,
            headers: Vec::new(),
            content_type: "text/plain; charset=utf-8",
            body: Bytes::new(),
            cache_control: "no-store",
            close: false,
        }
    }

    /// A plain-text response whose body is the reason phrase, so a human reading it knows why.
    pub fn plain(status: u16) -> Self {
        let body = format!("{}\n", reason_phrase(status));
        Response::new(status).body("text/plain; charset=utf-8", Bytes::from(body))
    }

    /// Sets the body and its `Content-Type`.
    pub fn body(mut self, content_type: &'static str, body: Bytes) -> Self {
        self.content_type = content_type;
        self.body = body;
        self
    }

    /// Sets `Cache-Control` (`no-store` by default; the console's assets are `no-cache`).
    pub fn cache_control(mut self, value: &'static str) -> Self {
        self.cache_control = value;
        self
    }

    /// Adds a header, written after the standard ones in the order added (`Allow`,
    /// `Retry-After`, `Upgrade`, the `Sec-WebSocket-*` of a `101`, ...).
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// Adds `Connection: close`: the connection ends after this response.
    pub fn close(mut self) -> Self {
        self.close = true;
        self
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// Whether the connection ends after this response (see [`Response::close`]).
    pub fn closes(&self) -> bool {
        self.close
    }

    /// The bytes on the wire; for `HEAD` (`head_only`) the body is left out, the length kept.
    pub fn encode(&self, head_only: bool) -> Bytes {
        let mut out = BytesMut::with_capacity(192 + self.body.len());
        out.put_slice(b"HTTP/1.1 ");
        out.put_slice(self.status.to_string().as_bytes());
        out.put_u8(b' ');
        out.put_slice(reason_phrase(self.status).as_bytes());
        out.put_slice(b"\r\n");
        if self.status != 101 && self.status != 304 {
            out.put_slice(b"Content-Type: ");
            out.put_slice(self.content_type.as_bytes());
            out.put_slice(b"\r\nContent-Length: ");
            out.put_slice(self.body.len().to_string().as_bytes());
            out.put_slice(b"\r\n");
        }
        out.put_slice(b"X-Content-Type-Options: nosniff\r\nCache-Control: ");
        out.put_slice(self.cache_control.as_bytes());
        out.put_slice(b"\r\n");
        for (name, value) in &self.headers {
            out.put_slice(name.as_bytes());
            out.put_slice(b": ");
            out.put_slice(value.as_bytes());
            out.put_slice(b"\r\n");
        }
        if self.close {
            out.put_slice(b"Connection: close\r\n");
        }
        out.put_slice(b"\r\n");
        if !head_only {
            out.put_slice(&self.body);
        }
        out.freeze()
    }
}

/// The reason phrase of the status codes the gateway sends; `Unknown` for any other.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_keeps_the_length_and_drops_the_body() {
        let response = Response::new(200).body("text/plain", Bytes::from_static(b"ok\n"));
        let get = response.encode(false);
        let head = response.encode(true);
        let text = std::str::from_utf8(&head).unwrap_or_default();
        assert!(text.contains("Content-Length: 3\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
        assert_eq!(get.len(), head.len() + 3);
    }

    #[test]
    fn switching_protocols_has_no_length() {
        let text = Response::new(101).encode(false);
        assert!(!std::str::from_utf8(&text)
            .unwrap_or_default()
            .contains("Content-Length"));
    }
}
