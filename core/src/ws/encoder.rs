//! Server frames: never masked, so one encoding can be shared by every connection that sends it.

use bytes::{BufMut, Bytes, BytesMut};

/// The frame opcodes of RFC 6455 section 5.2 that the gateway knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    /// 0x0: a later fragment of a message.
    Continuation = 0x0,
    /// 0x1: a text message (UTF-8).
    Text = 0x1,
    /// 0x2: a binary message.
    Binary = 0x2,
    /// 0x8: close, with an optional code and reason.
    Close = 0x8,
    /// 0x9: ping.
    Ping = 0x9,
    /// 0xA: pong, answering a ping with its payload.
    Pong = 0xA,
}

impl OpCode {
    /// The opcode of a frame header's low nibble; `None` for the reserved ones.
    pub fn from_u8(byte: u8) -> Option<OpCode> {
        Some(match byte {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    /// Close, ping and pong (opcodes 0x8 and up): never fragmented, at most 125 bytes of payload.
    pub fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// Length of the header of an unmasked frame carrying `payload_len` bytes.
pub fn header_len(payload_len: usize) -> usize {
    match payload_len {
        0..=125 => 2,
        126..=65535 => 4,
        _ => 10,
    }
}

/// Writes the header of a final, unmasked frame.
pub fn put_header(out: &mut BytesMut, opcode: OpCode, payload_len: usize) {
    out.put_u8(0x80 | opcode as u8);
    match payload_len {
        0..=125 => out.put_u8(payload_len as u8),
        126..=65535 => {
            out.put_u8(126);
            out.put_u16(payload_len as u16);
        }
        _ => {
            out.put_u8(127);
            out.put_u64(payload_len as u64);
        }
    }
}

/// One final, unmasked frame.
pub fn encode_frame(opcode: OpCode, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(header_len(payload.len()) + payload.len());
    put_header(&mut out, opcode, payload.len());
    out.put_slice(payload);
    out.freeze()
}

/// One text frame carrying `text`.
pub fn text_frame(text: &str) -> Bytes {
    encode_frame(OpCode::Text, text.as_bytes())
}

/// One ping frame; `payload` must be at most 125 bytes (not checked).
pub fn ping_frame(payload: &[u8]) -> Bytes {
    encode_frame(OpCode::Ping, payload)
}

/// One pong frame; `payload` (the ping's) must be at most 125 bytes (not checked).
pub fn pong_frame(payload: &[u8]) -> Bytes {
    encode_frame(OpCode::Pong, payload)
}

/// A close frame with `code` and `reason`; the reason is cut at a character boundary so that the
/// payload stays within the 125 bytes a control frame may carry.
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    encode_frame(OpCode::Close, &payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_lengths_switch_at_the_rfc_boundaries() {
        for (len, header) in [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)] {
            let frame = encode_frame(OpCode::Binary, &vec![0u8; len]);
            assert_eq!(frame.len(), header + len, "payload {len}");
            assert_eq!(header_len(len), header);
        }
    }

    #[test]
    fn close_reason_is_cut_on_a_char_boundary() {
        let reason = "é".repeat(100);
        let frame = close_frame(1000, &reason);
        assert!(frame.len() <= 2 + 125);
        assert!(std::str::from_utf8(&frame[4..]).is_ok());
    }
}
