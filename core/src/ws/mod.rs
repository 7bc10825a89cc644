//! RFC 6455, written for a server: an incremental message decoder for client frames, the encoder
//! for server frames, and the opening-handshake helpers.
//!
//! The decoder never needs the caller to keep leftovers: it consumes every byte it is given and
//! keeps the little state a partial frame needs (at most a 14-byte header, the bytes of a message
//! still being assembled, and up to 3 bytes of an unfinished UTF-8 sequence). An idle decoder owns
//! no heap memory.

pub mod close_code;
pub mod decoder;
pub mod encoder;
pub mod handshake;
pub mod utf8;

pub use decoder::{Decoder, DecoderConfig, Message, WsError};
pub use encoder::{close_frame, encode_frame, ping_frame, pong_frame, text_frame, OpCode};
