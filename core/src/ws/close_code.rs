//! Close codes the gateway sends or accepts (RFC 6455 section 7.4 and PROTOCOL section 2).

/// 1000, normal closure (the gateway never starts one; it echoes a client's close with its code).
pub const NORMAL: u16 = 1000;
/// 1001, going away: the gateway shuts down (after `server_shutdown`).
pub const GOING_AWAY: u16 = 1001;
/// 1002, protocol error: a frame RFC 6455 forbids (unmasked, reserved bits or opcodes, ...).
pub const PROTOCOL_ERROR: u16 = 1002;
/// 1003, unsupported data: a binary message on `/ws`.
pub const UNSUPPORTED_DATA: u16 = 1003;
/// 1007, invalid payload: a text message (or close reason) that is not UTF-8.
pub const INVALID_PAYLOAD: u16 = 1007;
/// 1008, policy violation (RFC 6455); the gateway does not send it.
pub const POLICY_VIOLATION: u16 = 1008;
/// 1009, message too big: over the configured message size.
pub const MESSAGE_TOO_BIG: u16 = 1009;
/// 1011, internal error (PROTOCOL section 2); the gateway does not send it at present.
pub const INTERNAL_ERROR: u16 = 1011;
/// 4001: authentication failed or was not done in time.
pub const AUTH_FAILED: u16 = 4001;
/// 4003, forbidden (PROTOCOL section 2); reserved: a refused origin is answered `403` before
/// the upgrade.
pub const FORBIDDEN: u16 = 4003;
/// 4100, slow consumer: the outbound queue passed its limit.
pub const SLOW_CONSUMER: u16 = 4100;
/// 4101: rate limited too often (or a token in the upgrade had to wait for a verification).
pub const RATE_LIMITED: u16 = 4101;
/// 4102, connection limit (PROTOCOL section 2); reserved: connections over a limit are
/// answered `503` before the upgrade.
pub const CONNECTION_LIMIT: u16 = 4102;
/// 4103: no whole frame from the client for 2.5 heartbeat intervals.
pub const HEARTBEAT_TIMEOUT: u16 = 4103;

/// Whether a peer may send `code` in a close frame (RFC 6455 section 7.4.1 and the IANA registry):
/// 1000-1003, 1007-1014 and 3000-4999 are valid; 1004-1006, 1015 and everything else are not.
pub fn is_valid_received(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}
