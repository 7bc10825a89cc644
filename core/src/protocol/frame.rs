//! The one encoder: a message (any `Serialize` value of this module) straight into a WebSocket
//! text frame, with room for the header reserved in front so the payload is never copied. A
//! session event's frame is encoded once and shared: subscribers get the frame, storage the
//! payload, a slice of the same allocation.

use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;

use crate::ws::encoder::{header_len, put_header, OpCode};

/// The most a frame header takes (a 64-bit length, no mask).
const HEADER_ROOM: usize = 10;

/// Serializes `message` as JSON directly behind room for the frame header, then writes the header
/// in front: one allocation, no copy of the payload.
pub fn encode_frame<T: Serialize>(message: &T) -> Bytes {
    encode(message, 128).0
}

/// As `encode_frame`, and also the payload alone (what storage keeps): a slice of the frame's
/// bytes, so the event is encoded once for its subscribers and its log.
pub fn encode_frame_with_payload<T: Serialize>(message: &T) -> (Bytes, Bytes) {
    // Session events are mostly 150 to 250 bytes: room for them at once saves a reallocation
    // on the publish path.
    let (frame, header) = encode(message, 256);
    let payload = frame.slice(header..);
    (frame, payload)
}

/// The frame and the length of its header.
fn encode<T: Serialize>(message: &T, capacity: usize) -> (Bytes, usize) {
    let mut buffer = BytesMut::with_capacity(capacity);
    buffer.put_bytes(0, HEADER_ROOM);
    let mut writer = buffer.writer();
    if serde_json::to_writer(&mut writer, message).is_err() {
        // Serializing the protocol's types cannot fail (no maps with non-string keys, no I/O);
        // an empty object keeps the stream well-formed should that ever change.
        return (crate::ws::encoder::text_frame("{}"), 2);
    }
    let mut buffer = writer.into_inner();
    let payload_len = buffer.len() - HEADER_ROOM;
    let header = header_len(payload_len);
    let mut head = BytesMut::with_capacity(header);
    put_header(&mut head, OpCode::Text, payload_len);
    buffer[HEADER_ROOM - header..HEADER_ROOM].copy_from_slice(&head);
    let _ = buffer.split_to(HEADER_ROOM - header);
    (buffer.freeze(), header)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payload_is_the_frame_after_its_header() {
        for size in [0, 100, 125, 126, 1000, 65_535, 65_536, 70_000] {
            let message = serde_json::json!({ "type": "x", "text": "a".repeat(size) });
            let (frame, payload) = encode_frame_with_payload(&message);
            assert_eq!(payload, serde_json::to_vec(&message).unwrap());
            assert_eq!(frame.len(), header_len(payload.len()) + payload.len());
            assert!(frame.ends_with(&payload));
            assert_eq!(frame[0], 0x81);
        }
    }
}
