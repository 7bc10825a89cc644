//! Minimal client-side WebSocket and HTTP/1.1: what the load generator sends, and a zero-copy
//! scanner for what the gateway sends back. Nothing here allocates per frame: the scanner only
//! finds frame boundaries in a caller-owned buffer, and the field readers look for a key's bytes
//! instead of parsing JSON.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::ops::Range;
use std::time::Duration;

/// A fixed masking key: RFC 6455 wants client frames masked; the server cannot tell a fixed key
/// from a random one, and a fixed one costs nothing to produce.
pub const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

pub const UPGRADE: &[u8] = b"GET /ws HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

pub const OP_TEXT: u8 = 1;
pub const OP_CLOSE: u8 = 8;

/// Appends one masked, final text frame carrying `payload` to `out`.
pub fn encode_text(out: &mut Vec<u8>, payload: &[u8]) {
    out.push(0x80 | OP_TEXT);
    match payload.len() {
        len @ 0..=125 => out.push(0x80 | len as u8),
        len @ 126..=65535 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&MASK);
    out.extend(
        payload
            .iter()
            .zip(MASK.iter().cycle())
            .map(|(byte, mask)| byte ^ mask),
    );
}

/// Where one whole server frame lies in a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameAt {
    pub fin: bool,
    pub opcode: u8,
    /// Payload start and end, relative to the buffer given to [`scan_frame`].
    pub payload: (usize, usize),
    /// Bytes the frame takes, header included.
    pub len: usize,
}

/// The frame at the front of `bytes`, if it is there whole. Server frames are unmasked.
#[inline]
pub fn scan_frame(bytes: &[u8]) -> Option<FrameAt> {
    if bytes.len() < 2 {
        return None;
    }
    let first = bytes[0];
    let second = bytes[1];
    let (len, mut offset): (usize, usize) = match second & 0x7F {
        126 => {
            if bytes.len() < 4 {
                return None;
            }
            (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4)
        }
        127 => {
            let raw: [u8; 8] = bytes.get(2..10)?.try_into().ok()?;
            (usize::try_from(u64::from_be_bytes(raw)).ok()?, 10)
        }
        len => (len as usize, 2),
    };
    if second & 0x80 != 0 {
        offset += 4;
    }
    let end = offset.checked_add(len)?;
    if bytes.len() < end {
        return None;
    }
    Some(FrameAt {
        fin: first & 0x80 != 0,
        opcode: first & 0x0F,
        payload: (offset, end),
        len: end,
    })
}

/// The first position of `needle` in `haystack`.
#[inline]
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, rest) = needle.split_first()?;
    let mut from = 0;
    while from + needle.len() <= haystack.len() {
        let at = from
            + haystack[from..=haystack.len() - needle.len()]
                .iter()
                .position(|&byte| byte == first)?;
        if &haystack[at + 1..at + needle.len()] == rest {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// The unsigned decimal at the front of `bytes` and the number of digits.
#[inline]
pub fn leading_u64(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value: u64 = 0;
    let mut digits = 0;
    for &byte in bytes {
        if !byte.is_ascii_digit() {
            break;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(byte - b'0'))?;
        digits += 1;
    }
    (digits > 0).then_some((value, digits))
}

/// The number after `key` (e.g. `,"seq":`), searched for in the first `window` bytes only.
#[inline]
pub fn number_after(payload: &[u8], key: &[u8], window: usize) -> Option<u64> {
    let head = &payload[..payload.len().min(window)];
    let at = find(head, key)? + key.len();
    leading_u64(&payload[at..]).map(|(value, _)| value)
}

/// Whether the payload is a message of `kind` (the gateway writes `type` first).
#[inline]
pub fn is_type(payload: &[u8], kind: &[u8]) -> bool {
    const PREFIX: &[u8] = b"{\"type\":\"";
    payload.len() > PREFIX.len() + kind.len()
        && payload.starts_with(PREFIX)
        && &payload[PREFIX.len()..PREFIX.len() + kind.len()] == kind
        && payload[PREFIX.len() + kind.len()] == b'"'
}

/// A blocking WebSocket client on `/ws`, for the sequential subcommands and for setting up the
/// connections the multiplexed ones then drive.
pub struct BlockingWs {
    pub stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    out: Vec<u8>,
}

impl BlockingWs {
    /// Connects, upgrades, and stops right after the `101` head.
    pub fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<BlockingWs> {
        let mut stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.write_all(UPGRADE)?;
        let mut ws = BlockingWs {
            stream,
            buf: vec![0; 4096],
            start: 0,
            end: 0,
            out: Vec::with_capacity(256),
        };
        let head_end = loop {
            if let Some(at) = find(&ws.buf[..ws.end], b"\r\n\r\n") {
                break at + 4;
            }
            ws.fill()?;
        };
        if !ws.buf.starts_with(b"HTTP/1.1 101") {
            let head = String::from_utf8_lossy(&ws.buf[..head_end]).into_owned();
            return Err(io::Error::other(format!("upgrade refused: {head:?}")));
        }
        ws.start = head_end;
        Ok(ws)
    }

    /// Connects and waits for `authenticated` (dev mode sends it at once).
    pub fn connect_authenticated(addr: SocketAddr, timeout: Duration) -> io::Result<BlockingWs> {
        let mut ws = BlockingWs::connect(addr, timeout)?;
        ws.wait_for(|payload| is_type(payload, b"authenticated"))?;
        Ok(ws)
    }

    /// Reads more bytes after `end`, compacting or growing the buffer first when it is full.
    fn fill(&mut self) -> io::Result<()> {
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
                self.buf.resize(self.buf.len() * 2, 0);
            }
        }
        loop {
            match self.stream.read(&mut self.buf[self.end..]) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(read) => {
                    self.end += read;
                    return Ok(());
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
    }

    /// The next frame's opcode and payload range (valid until the next read).
    pub fn next_frame(&mut self) -> io::Result<(u8, Range<usize>)> {
        loop {
            if let Some(frame) = scan_frame(&self.buf[self.start..self.end]) {
                let range = self.start + frame.payload.0..self.start + frame.payload.1;
                self.start += frame.len;
                if !frame.fin || frame.opcode == 0 {
                    return Err(io::Error::other("fragmented server message"));
                }
                return Ok((frame.opcode, range));
            }
            self.fill()?;
        }
    }

    pub fn payload(&self, range: Range<usize>) -> &[u8] {
        &self.buf[range]
    }

    /// Reads text messages until one satisfies `wanted`; returns its range. A close frame is an
    /// error that names its code.
    pub fn wait_for(&mut self, wanted: impl Fn(&[u8]) -> bool) -> io::Result<Range<usize>> {
        loop {
            let (opcode, range) = self.next_frame()?;
            match opcode {
                OP_TEXT if wanted(&self.buf[range.clone()]) => return Ok(range),
                OP_CLOSE => {
                    let payload = &self.buf[range];
                    let code =
                        (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                    return Err(io::Error::other(format!("closed by the server ({code:?})")));
                }
                _ => {}
            }
        }
    }

    /// Waits for the reply carrying `request_id`; an `error` reply is an error.
    pub fn wait_reply(&mut self, request_id: &str) -> io::Result<Range<usize>> {
        let key = format!("\"requestId\":\"{request_id}\"");
        let range = self.wait_for(|payload| find(payload, key.as_bytes()).is_some())?;
        if is_type(&self.buf[range.clone()], b"error") {
            let text = String::from_utf8_lossy(&self.buf[range]).into_owned();
            return Err(io::Error::other(format!("the gateway answered {text}")));
        }
        Ok(range)
    }

    pub fn send_text(&mut self, payload: &[u8]) -> io::Result<()> {
        self.out.clear();
        encode_text(&mut self.out, payload);
        self.stream.write_all(&self.out)
    }

    /// Sends `message` and returns the reply to its `requestId`, parsed.
    pub fn request(&mut self, request_id: &str, message: &str) -> io::Result<serde_json::Value> {
        self.send_text(message.as_bytes())?;
        let range = self.wait_reply(request_id)?;
        serde_json::from_slice(self.payload(range)).map_err(io::Error::other)
    }

    /// The socket and the bytes read but not consumed yet.
    pub fn into_parts(self) -> (TcpStream, Vec<u8>) {
        let rest = self.buf[self.start..self.end].to_vec();
        (self.stream, rest)
    }
}

/// One `GET` on a new connection: the status, or an error.
pub fn http_get_status(addr: SocketAddr, path: &str, timeout: Duration) -> io::Result<u16> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut buf = [0u8; 512];
    let mut len = 0;
    while len < 12 {
        match stream.read(&mut buf[len..])? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            read => len += read,
        }
    }
    std::str::from_utf8(&buf[9..12])
        .ok()
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| io::Error::other("not an HTTP response"))
}

/// A whole HTTP response at the front of `bytes`: (status, total length). Reads the body by
/// `Content-Length`.
#[inline]
pub fn scan_response(bytes: &[u8]) -> Option<(u16, usize)> {
    let head_end = find(bytes, b"\r\n\r\n")? + 4;
    let head = &bytes[..head_end];
    let status = leading_u64(head.get(9..)?)?.0 as u16;
    let mut body = 0usize;
    for line in head.split(|&byte| byte == b'\n') {
        const NAME: &[u8] = b"content-length:";
        if line.len() > NAME.len() && line[..NAME.len()].eq_ignore_ascii_case(NAME) {
            let value = &line[NAME.len()..];
            let skip = value.iter().take_while(|&&byte| byte == b' ').count();
            body = leading_u64(&value[skip..])?.0 as usize;
            break;
        }
    }
    let total = head_end + body;
    (bytes.len() >= total).then_some((status, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0x80 | opcode];
        match payload.len() {
            len @ 0..=125 => out.push(len as u8),
            len @ 126..=65535 => {
                out.push(126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                out.push(127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn scans_frames_of_every_length_form() {
        for len in [0, 1, 125, 126, 65535, 65536] {
            let payload = vec![b'x'; len];
            let bytes = server_frame(1, &payload);
            let frame = scan_frame(&bytes).expect("a whole frame");
            assert_eq!(frame.len, bytes.len());
            assert_eq!(frame.payload.1 - frame.payload.0, len);
            assert!(scan_frame(&bytes[..bytes.len() - 1]).is_none() || len == 0);
        }
    }

    #[test]
    fn encoded_frames_unmask_to_the_payload() {
        let mut out = Vec::new();
        encode_text(&mut out, b"{\"type\":\"ping\"}");
        let (frame, len) = diminuendo_free_parse(&out);
        assert_eq!(len, out.len());
        assert_eq!(frame, b"{\"type\":\"ping\"}");
    }

    fn diminuendo_free_parse(bytes: &[u8]) -> (Vec<u8>, usize) {
        assert_eq!(bytes[0], 0x81);
        let len = (bytes[1] & 0x7F) as usize;
        let mask = &bytes[2..6];
        let payload = bytes[6..6 + len]
            .iter()
            .enumerate()
            .map(|(index, byte)| byte ^ mask[index % 4])
            .collect();
        (payload, 6 + len)
    }

    #[test]
    fn reads_fields_without_parsing() {
        let delta = br#"{"type":"text_delta","sessionId":"s-1","seq":42,"ts":1700000000123,"turnId":"t","text":"abc"}"#;
        assert!(is_type(delta, b"text_delta"));
        assert!(!is_type(delta, b"text"));
        assert_eq!(number_after(delta, b",\"seq\":", 128), Some(42));
        assert_eq!(
            number_after(delta, b",\"ts\":", 128),
            Some(1_700_000_000_123)
        );
        let updated = br#"{"type":"session_updated","session":{"id":"s","lastSeq":7}}"#;
        assert_eq!(number_after(updated, b",\"seq\":", 128), None);
    }

    #[test]
    fn scans_http_responses() {
        let response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX: y\r\n\r\n{}rest";
        assert_eq!(scan_response(response), Some((200, response.len() - 4)));
        assert_eq!(scan_response(&response[..20]), None);
    }
}
