//! The incremental decoder of client frames into messages.
//!
//! API CONTRACT (implemented by the codec work; the gateway is written against it):
//! - `decode` consumes bytes from the front of `input` and returns how many it consumed, together
//!   with at most one event. It returns as soon as one event is complete, so the caller loops until
//!   the input is empty. It never asks for the input again: a partial header is kept inline and a
//!   partial message's payload is appended (unmasked) to an owned buffer.
//! - A text or binary message wholly inside `input` (one frame, no fragmentation in progress) is
//!   unmasked in place and returned borrowed from `input`: no copy.
//! - After an error the decoder is poisoned: later calls consume everything and return nothing.
//!
//! Memory: the owned buffer exists only while a message (or a control frame) is split across
//! calls. An event returned from it borrows the decoder, so the buffer is freed at the start of the
//! next call, or by [`Decoder::release`]; call that after the last event of a read so that an idle
//! connection holds no heap memory.
//!
//! On an error the whole input counts as consumed (nothing after it will ever be parsed).

use super::close_code;
use super::utf8::Utf8Validator;

/// The limits a decoder applies; passed to every [`Decoder::decode`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderConfig {
    /// Largest message (the sum of its fragments' payloads); more closes with 1009, detected on the
    /// frame header before its payload is buffered.
    pub max_message_size: usize,
    /// When false, the first binary frame fails with 1003 at its header.
    pub accept_binary: bool,
}

/// One complete event from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// A whole text message, validated UTF-8.
    Text(&'a str),
    /// A whole binary message (only when `accept_binary`).
    Binary(&'a [u8]),
    /// A ping, with its payload (at most 125 bytes) to echo in the pong.
    Ping(&'a [u8]),
    /// A pong, with its payload.
    Pong(&'a [u8]),
    /// A close frame whose code (if any) is valid and whose reason is valid UTF-8.
    Close {
        /// The close code; `None` for an empty close payload.
        code: Option<u16>,
        /// The reason text, empty when none was given.
        reason: &'a str,
    },
}

/// Why the connection must be failed: the close code to send and a short reason for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WsError {
    /// The close code to send (1002, 1003, 1007 or 1009).
    pub code: u16,
    /// What was wrong, for the log and the close frame's reason.
    pub reason: &'static str,
}

impl WsError {
    /// A protocol error (close code 1002) with `reason`.
    pub const fn protocol(reason: &'static str) -> Self {
        WsError {
            code: close_code::PROTOCOL_ERROR,
            reason,
        }
    }

    const fn invalid_payload(reason: &'static str) -> Self {
        WsError {
            code: close_code::INVALID_PAYLOAD,
            reason,
        }
    }
}

const INVALID_TEXT: WsError = WsError::invalid_payload("invalid UTF-8 in a text message");

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Longest client frame header: 2 bytes, a 64-bit extended length and the masking key.
const MAX_HEADER: usize = 14;
/// Largest payload of a control frame (RFC 6455 section 5.5).
const MAX_CONTROL_PAYLOAD: u8 = 125;
/// How much room to reserve ahead when a message starts being buffered: enough to avoid
/// reallocating for typical messages, bounded so that a client declaring a large frame and then
/// trickling bytes cannot make the server commit the whole declared size up front.
const RESERVE_AHEAD: usize = 64 * 1024;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading a frame header (`hdr_len` bytes of it are in `hdr`).
    #[default]
    Header,
    /// Reading the payload of the frame described by `frame_*`, `mask*` and `remaining`.
    Payload,
    /// A protocol error was reported; every later byte is ignored.
    Poisoned,
}

/// What to drop from `buf` on the next call: the bytes behind the event returned last.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Release {
    #[default]
    Nothing,
    /// A message was returned from `buf`: free it.
    All,
    /// A control frame's payload was returned from the end of `buf`, after the bytes of a
    /// fragmented message still being assembled: drop that many bytes.
    Tail(u8),
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy)]
struct Head {
    len: usize,
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    payload_len: u64,
}

/// Where the payload of a completed event lies.
#[derive(Debug, Clone, Copy)]
enum Source {
    /// `input[start..end]`, unmasked in place.
    Input(usize, usize),
    /// `buf[start..]`.
    Buffer(usize),
}

#[derive(Debug, Clone, Copy)]
struct Event {
    opcode: u8,
    source: Source,
}

/// The incremental decoder of one connection's client frames (see the module documentation).
#[derive(Debug, Default)]
pub struct Decoder {
    /// Unmasked payload of a message (or control frame) split across calls; empty and unallocated
    /// otherwise.
    buf: Vec<u8>,
    /// Payload bytes of the current frame not received yet.
    remaining: usize,
    /// A partial frame header.
    hdr: [u8; MAX_HEADER],
    hdr_len: u8,
    /// Masking key of the current frame and the key index of its next payload byte.
    mask: [u8; 4],
    mask_offset: u8,
    frame_opcode: u8,
    frame_fin: bool,
    /// Payload length of the current frame when it is a control frame.
    control_len: u8,
    /// Opcode (text or binary) of the message in progress, `OP_CONTINUATION` when none.
    message: u8,
    phase: Phase,
    release: Release,
    utf8: Utf8Validator,
}

impl Decoder {
    /// A decoder at the start of a stream, holding no heap memory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Consumes bytes from the front of `input` (unmasking them in place) and returns how many,
    /// with at most one event: a message, or the error that fails the connection. Call it again
    /// with the rest until `input` is empty.
    pub fn decode<'a>(
        &'a mut self,
        config: &DecoderConfig,
        input: &'a mut [u8],
    ) -> (usize, Option<Result<Message<'a>, WsError>>) {
        self.release();
        let total = input.len();
        if self.phase == Phase::Poisoned {
            return (total, None);
        }
        let (consumed, event) = match self.advance(config, input) {
            Ok(progress) => progress,
            Err(error) => {
                self.poison();
                return (total, Some(Err(error)));
            }
        };
        let Some(Event { opcode, source }) = event else {
            return (consumed, None);
        };
        let input: &'a [u8] = input;
        let payload: &'a [u8] = match source {
            Source::Input(start, end) => input.get(start..end).unwrap_or_default(),
            Source::Buffer(start) => self.buf.get(start..).unwrap_or_default(),
        };
        match message(opcode, payload) {
            Ok(message) => (consumed, Some(Ok(message))),
            Err(error) => {
                // `buf` is borrowed by nothing once we return the error, but it is borrowed for
                // 'a here, so it is freed on the next call (or by `release`).
                self.phase = Phase::Poisoned;
                self.release = Release::All;
                (total, Some(Err(error)))
            }
        }
    }

    /// True when no frame or message is partially received. The buffer behind the last event
    /// returned may still be held until the next `decode` or [`Decoder::release`].
    pub fn is_idle(&self) -> bool {
        self.phase != Phase::Payload && self.hdr_len == 0 && self.message == OP_CONTINUATION
    }

    /// Frees the buffer behind the last event returned (`decode` does it itself when called
    /// again). After this an idle decoder owns no heap memory.
    pub fn release(&mut self) {
        match std::mem::take(&mut self.release) {
            Release::Nothing => {}
            Release::All => self.buf = Vec::new(),
            Release::Tail(len) => {
                let keep = self.buf.len().saturating_sub(usize::from(len));
                self.buf.truncate(keep);
                if self.buf.is_empty() {
                    self.buf = Vec::new();
                }
            }
        }
    }

    /// Heap memory currently owned (capacity of the assembly buffer), for tests and metrics.
    pub fn heap_bytes(&self) -> usize {
        self.buf.capacity()
    }

    fn poison(&mut self) {
        *self = Decoder {
            phase: Phase::Poisoned,
            ..Decoder::default()
        };
    }

    /// Consumes input until one event is complete or the input runs out. Payloads are unmasked in
    /// place; the event says where its payload is instead of borrowing it.
    fn advance(
        &mut self,
        config: &DecoderConfig,
        input: &mut [u8],
    ) -> Result<(usize, Option<Event>), WsError> {
        let mut pos = 0;
        loop {
            if self.phase == Phase::Header {
                let Some(head) = self.read_header(config, input, &mut pos)? else {
                    return Ok((pos, None));
                };
                self.start_frame(&head);
            }

            // Payload phase.
            let rest = input.get_mut(pos..).unwrap_or_default();
            let available = self.remaining.min(rest.len());
            let chunk = rest.get_mut(..available).unwrap_or_default();
            let start = pos;
            pos += available;
            self.remaining -= available;
            self.mask_offset = unmask(chunk, self.mask, self.mask_offset);
            let done = self.remaining == 0;

            if self.frame_opcode & 0x8 != 0 {
                // Control frame: delivered on its own, even inside a fragmented message.
                if done && available == usize::from(self.control_len) {
                    self.phase = Phase::Header;
                    return Ok((
                        pos,
                        Some(self.event(self.frame_opcode, Source::Input(start, pos))),
                    ));
                }
                self.buf.extend_from_slice(chunk);
                if !done {
                    return Ok((pos, None));
                }
                self.phase = Phase::Header;
                self.release = Release::Tail(self.control_len);
                let from = self.buf.len().saturating_sub(usize::from(self.control_len));
                return Ok((
                    pos,
                    Some(self.event(self.frame_opcode, Source::Buffer(from))),
                ));
            }

            // Data frame.
            if done && self.frame_fin && self.frame_opcode != OP_CONTINUATION && self.buf.is_empty()
            {
                // A whole single-frame message in this input: zero copy. Text is validated when
                // the event is built, still within this call.
                self.phase = Phase::Header;
                self.message = OP_CONTINUATION;
                return Ok((
                    pos,
                    Some(self.event(self.frame_opcode, Source::Input(start, pos))),
                ));
            }
            if self.message == OP_TEXT {
                self.utf8.feed(chunk).map_err(|_| INVALID_TEXT)?;
            }
            if self.buf.capacity() - self.buf.len() < chunk.len() {
                self.buf
                    .reserve(chunk.len() + self.remaining.min(RESERVE_AHEAD));
            }
            self.buf.extend_from_slice(chunk);
            if !done {
                return Ok((pos, None));
            }
            self.phase = Phase::Header;
            if self.frame_fin {
                if self.message == OP_TEXT && self.utf8.finish().is_err() {
                    // Same reason as when the whole message is checked at once, so that the
                    // outcome does not depend on how the input was chunked.
                    return Err(INVALID_TEXT);
                }
                let opcode = std::mem::replace(&mut self.message, OP_CONTINUATION);
                self.release = Release::All;
                return Ok((pos, Some(self.event(opcode, Source::Buffer(0)))));
            }
            // A non-final fragment: go on with the next frame header.
        }
    }

    fn event(&self, opcode: u8, source: Source) -> Event {
        Event { opcode, source }
    }

    /// Reads a frame header, straight from `input` when it is there whole (the common case),
    /// otherwise by accumulating it in `hdr`. Advances `pos` past the bytes used.
    fn read_header(
        &mut self,
        config: &DecoderConfig,
        input: &[u8],
        pos: &mut usize,
    ) -> Result<Option<Head>, WsError> {
        let rest = input.get(*pos..).unwrap_or_default();
        if self.hdr_len == 0 {
            if let Some(head) = self.parse_header(config, rest)? {
                *pos += head.len;
                return Ok(Some(head));
            }
            // Incomplete (and, as far as it goes, valid): keep it. It is shorter than a header.
            if let Some(slot) = self.hdr.get_mut(..rest.len()) {
                slot.copy_from_slice(rest);
                self.hdr_len = rest.len() as u8;
            }
            *pos = input.len();
            return Ok(None);
        }
        let mut rest = rest;
        loop {
            let have = usize::from(self.hdr_len);
            // Bytes needed to learn more: the first two, then the rest of the header.
            let need = match self.hdr.get(1) {
                Some(&b1) if have >= 2 => header_len(b1),
                _ => 2,
            };
            let take = need.saturating_sub(have).min(rest.len());
            let (taken, left) = rest.split_at(take);
            if let Some(slot) = self.hdr.get_mut(have..have + take) {
                slot.copy_from_slice(taken);
            }
            self.hdr_len += take as u8;
            *pos += take;
            rest = left;
            let hdr = self
                .hdr
                .get(..usize::from(self.hdr_len))
                .unwrap_or_default();
            if let Some(head) = self.parse_header(config, hdr)? {
                self.hdr_len = 0;
                return Ok(Some(head));
            }
            if rest.is_empty() {
                return Ok(None);
            }
        }
    }

    /// Checks as much of a header as `bytes` holds, failing as soon as a byte is wrong; returns
    /// the header once it is complete.
    fn parse_header(&self, config: &DecoderConfig, bytes: &[u8]) -> Result<Option<Head>, WsError> {
        let Some(&b0) = bytes.first() else {
            return Ok(None);
        };
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0F;
        if b0 & 0x70 != 0 {
            return Err(WsError::protocol("reserved bits set without an extension"));
        }
        match opcode {
            OP_CONTINUATION if self.message == OP_CONTINUATION => {
                return Err(WsError::protocol("continuation frame without a message"));
            }
            OP_TEXT | OP_BINARY if self.message != OP_CONTINUATION => {
                return Err(WsError::protocol("new message inside a fragmented message"));
            }
            OP_BINARY if !config.accept_binary => {
                return Err(WsError {
                    code: close_code::UNSUPPORTED_DATA,
                    reason: "binary messages are not accepted",
                });
            }
            OP_CONTINUATION | OP_TEXT | OP_BINARY => {}
            OP_CLOSE | OP_PING | OP_PONG if !fin => {
                return Err(WsError::protocol("fragmented control frame"));
            }
            OP_CLOSE | OP_PING | OP_PONG => {}
            _ => return Err(WsError::protocol("reserved opcode")),
        }
        let control = opcode & 0x8 != 0;

        let Some(&b1) = bytes.get(1) else {
            return Ok(None);
        };
        if b1 & 0x80 == 0 {
            return Err(WsError::protocol("client frame not masked"));
        }
        let len7 = b1 & 0x7F;
        if control && len7 > MAX_CONTROL_PAYLOAD {
            return Err(WsError::protocol("control frame payload over 125 bytes"));
        }

        let len = header_len(b1);
        let Some(header) = bytes.get(..len) else {
            return Ok(None);
        };
        let (payload_len, key) = match (len7, header) {
            (126, &[_, _, l0, l1, m0, m1, m2, m3]) => {
                (u64::from(u16::from_be_bytes([l0, l1])), [m0, m1, m2, m3])
            }
            (127, &[_, _, l0, l1, l2, l3, l4, l5, l6, l7, m0, m1, m2, m3]) => (
                u64::from_be_bytes([l0, l1, l2, l3, l4, l5, l6, l7]),
                [m0, m1, m2, m3],
            ),
            (_, &[_, _, m0, m1, m2, m3]) => (u64::from(len7), [m0, m1, m2, m3]),
            // Unreachable: `header` is exactly `header_len(b1)` bytes long.
            _ => return Err(WsError::protocol("malformed frame header")),
        };
        if payload_len >> 63 != 0 {
            return Err(WsError::protocol(
                "64-bit payload length with the high bit set",
            ));
        }
        if !control {
            let assembled = if opcode == OP_CONTINUATION {
                self.buf.len()
            } else {
                0
            };
            let limit = config.max_message_size.saturating_sub(assembled);
            if usize::try_from(payload_len).map_or(true, |n| n > limit)
                || assembled > config.max_message_size
            {
                return Err(WsError {
                    code: close_code::MESSAGE_TOO_BIG,
                    reason: "message over the size limit",
                });
            }
        }
        Ok(Some(Head {
            len,
            fin,
            opcode,
            mask: key,
            payload_len,
        }))
    }

    fn start_frame(&mut self, head: &Head) {
        // Both casts are lossless: a control payload is at most 125 bytes (checked), and a data
        // payload at most `max_message_size` (checked), itself a usize.
        self.remaining = usize::try_from(head.payload_len).unwrap_or(usize::MAX);
        self.control_len = u8::try_from(head.payload_len).unwrap_or(MAX_CONTROL_PAYLOAD);
        self.mask = head.mask;
        self.mask_offset = 0;
        self.frame_opcode = head.opcode;
        self.frame_fin = head.fin;
        if matches!(head.opcode, OP_TEXT | OP_BINARY) {
            self.message = head.opcode;
            self.utf8.reset();
        }
        self.phase = Phase::Payload;
    }
}

/// Length of a client (masked) frame header given its second byte.
fn header_len(b1: u8) -> usize {
    match b1 & 0x7F {
        126 => 2 + 2 + 4,
        127 => 2 + 8 + 4,
        _ => 2 + 4,
    }
}

/// XORs `data` with the masking key, starting at key index `offset`; returns the key index of
/// the byte after `data`. Works a word (8 bytes) at a time.
fn unmask(data: &mut [u8], mask: [u8; 4], offset: u8) -> u8 {
    let offset = usize::from(offset & 3);
    let mut key = mask;
    key.rotate_left(offset);
    let [k0, k1, k2, k3] = key;
    let word = u64::from_ne_bytes([k0, k1, k2, k3, k0, k1, k2, k3]);
    let mut words = data.chunks_exact_mut(8);
    for chunk in &mut words {
        if let Ok(bytes) = <[u8; 8]>::try_from(&*chunk) {
            chunk.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ word).to_ne_bytes());
        }
    }
    for (byte, k) in words.into_remainder().iter_mut().zip(key.iter().cycle()) {
        *byte ^= k;
    }
    ((offset + data.len()) % 4) as u8
}

/// Builds the event for a complete payload, validating what is left to validate.
fn message(opcode: u8, payload: &[u8]) -> Result<Message<'_>, WsError> {
    match opcode {
        OP_TEXT => std::str::from_utf8(payload)
            .map(Message::Text)
            .map_err(|_| INVALID_TEXT),
        OP_BINARY => Ok(Message::Binary(payload)),
        OP_PING => Ok(Message::Ping(payload)),
        OP_PONG => Ok(Message::Pong(payload)),
        OP_CLOSE => match payload {
            [] => Ok(Message::Close {
                code: None,
                reason: "",
            }),
            [_] => Err(WsError::protocol("close frame with a 1-byte payload")),
            [hi, lo, reason @ ..] => {
                let code = u16::from_be_bytes([*hi, *lo]);
                if !close_code::is_valid_received(code) {
                    return Err(WsError::protocol("invalid close code"));
                }
                let reason = std::str::from_utf8(reason)
                    .map_err(|_| WsError::invalid_payload("close reason is not UTF-8"))?;
                Ok(Message::Close {
                    code: Some(code),
                    reason,
                })
            }
        },
        _ => Err(WsError::protocol("reserved opcode")),
    }
}

#[cfg(test)]
#[path = "decoder_tests.rs"]
mod tests;
