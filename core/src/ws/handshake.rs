//! The opening handshake's key check and `Sec-WebSocket-Accept` (RFC 6455 section 4.2).

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use sha1::{Digest, Sha1};

const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// A client key is valid when it is base64 of exactly 16 bytes.
pub fn is_valid_client_key(key: &[u8]) -> bool {
    let key = key.trim_ascii();
    key.len() == 24 && matches!(STANDARD.decode(key), Ok(decoded) if decoded.len() == 16)
}

/// The `Sec-WebSocket-Accept` value for a client key.
pub fn accept_key(client_key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(client_key.trim_ascii());
    sha.update(GUID);
    STANDARD.encode(sha.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_example_key() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert!(is_valid_client_key(b"dGhlIHNhbXBsZSBub25jZQ=="));
    }

    #[test]
    fn keys_of_other_lengths_are_refused() {
        assert!(!is_valid_client_key(b""));
        assert!(!is_valid_client_key(b"c2hvcnQ="));
        assert!(!is_valid_client_key(b"not base64 at all!!!!!!!"));
    }
}
