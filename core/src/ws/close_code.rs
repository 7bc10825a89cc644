//! Close codes the gateway sends or accepts (RFC 6455 section 7.4 and PROTOCOL section 2).

pub const NORMAL: u16 = 1000;
pub const GOING_AWAY: u16 = 1001;
pub const PROTOCOL_ERROR: u16 = 1002;
pub const UNSUPPORTED_DATA: u16 = 1003;
pub const INVALID_PAYLOAD: u16 = 1007;
pub const POLICY_VIOLATION: u16 = 1008;
pub const MESSAGE_TOO_BIG: u16 = 1009;
pub const INTERNAL_ERROR: u16 = 1011;
pub const AUTH_FAILED: u16 = 4001;
pub const FORBIDDEN: u16 = 4003;
pub const SLOW_CONSUMER: u16 = 4100;
pub const RATE_LIMITED: u16 = 4101;
pub const CONNECTION_LIMIT: u16 = 4102;
pub const HEARTBEAT_TIMEOUT: u16 = 4103;

/// Whether a peer may send `code` in a close frame (RFC 6455 section 7.4.1 and the IANA registry):
/// 1000-1003, 1007-1014 and 3000-4999 are valid; 1004-1006, 1015 and everything else are not.
pub fn is_valid_received(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}
