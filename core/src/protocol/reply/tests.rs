//! The exact bytes of every reply of this module: the field order is the wire's.

use super::*;
use crate::protocol::encode_frame;
use crate::ws::encoder::header_len;

fn json(message: &ServerMessage<'_>) -> String {
    serde_json::to_string(message).unwrap_or_default()
}

fn record() -> SessionRecord {
    SessionRecord {
        id: "s-1".into(),
        tenant_id: "t".into(),
        name: "a \"name\"".into(),
        agent_type: "echo".into(),
        status: SessionStatus::Ready,
        archived: false,
        created_by: "u".into(),
        created_at_ms: 5,
        updated_at_ms: 6,
        last_seq: 7,
        epoch: "00000000000000ff".into(),
        acp_session_id: None,
    }
}

const META: &str = r#"{"id":"s-1","tenantId":"t","name":"a \"name\"","agentType":"echo","status":"ready","archived":false,"createdBy":"u","createdAt":5,"updatedAt":6,"lastSeq":7,"epoch":"00000000000000ff"}"#;

#[test]
fn frames_are_well_formed_text_frames() {
    for size in [0usize, 100, 200, 70_000] {
        let text = "x".repeat(size);
        let message = ServerMessage::Error {
            code: ErrorCode::Internal,
            message: &text,
            request_id: Some("r1"),
            retry_after_ms: None,
        };
        let frame = encode_frame(&message);
        let json = json(&message);
        assert_eq!(frame.len(), header_len(json.len()) + json.len());
        assert_eq!(&frame[frame.len() - json.len()..], json.as_bytes());
        assert_eq!(frame[0], 0x81);
    }
}

#[test]
fn server_messages_use_the_wire_names() {
    assert_eq!(
        json(&ServerMessage::Connected {
            client_id: "c",
            heartbeat_interval_ms: 30000,
            ts: 5,
        }),
        r#"{"type":"connected","clientId":"c","heartbeatIntervalMs":30000,"ts":5}"#
    );
    assert_eq!(
        json(&ServerMessage::ServerShutdown {
            reason: "r",
            reconnect_after_ms: 1,
        }),
        r#"{"type":"server_shutdown","reason":"r","reconnectAfterMs":1}"#
    );
}

#[test]
fn golden_bytes_of_the_handshake_and_errors() {
    let identity = Identity::dev();
    let cases = [
        (
            ServerMessage::Welcome {
                protocol_version: 1,
                requires_auth: true,
            },
            r#"{"type":"welcome","protocolVersion":1,"requiresAuth":true}"#,
        ),
        (
            ServerMessage::Authenticated {
                identity: &identity,
                request_id: Some("r"),
            },
            r#"{"type":"authenticated","identity":{"userId":"dev-user-001","email":"developer@example.com","tenantId":"dev","role":"owner"},"requestId":"r"}"#,
        ),
        (
            ServerMessage::Authenticated {
                identity: &identity,
                request_id: None,
            },
            r#"{"type":"authenticated","identity":{"userId":"dev-user-001","email":"developer@example.com","tenantId":"dev","role":"owner"}}"#,
        ),
        (
            ServerMessage::Pong {
                ts: 9,
                request_id: Some("p"),
            },
            r#"{"type":"pong","ts":9,"requestId":"p"}"#,
        ),
        (
            ServerMessage::Pong {
                ts: 9,
                request_id: None,
            },
            r#"{"type":"pong","ts":9}"#,
        ),
        (
            ServerMessage::Heartbeat { ts: 3 },
            r#"{"type":"heartbeat","ts":3}"#,
        ),
        (
            ServerMessage::Error {
                code: ErrorCode::RateLimited,
                message: "too many messages; slow down",
                request_id: Some("r"),
                retry_after_ms: Some(250),
            },
            r#"{"type":"error","code":"RATE_LIMITED","message":"too many messages; slow down","requestId":"r","retryAfterMs":250}"#,
        ),
        (
            ServerMessage::Error {
                code: ErrorCode::InvalidJson,
                message: "the message is not valid JSON",
                request_id: None,
                retry_after_ms: None,
            },
            r#"{"type":"error","code":"INVALID_JSON","message":"the message is not valid JSON"}"#,
        ),
    ];
    for (message, expected) in cases {
        assert_eq!(json(&message), expected);
        assert!(encode_frame(&message).ends_with(expected.as_bytes()));
    }
}

#[test]
fn every_error_code_has_its_wire_name() {
    let names: Vec<String> = [
        ErrorCode::InvalidJson,
        ErrorCode::InvalidMessage,
        ErrorCode::MessageTooLarge,
        ErrorCode::RateLimited,
        ErrorCode::NotAuthenticated,
        ErrorCode::AuthFailed,
        ErrorCode::AuthRateLimited,
        ErrorCode::Forbidden,
        ErrorCode::SessionNotFound,
        ErrorCode::InvalidState,
        ErrorCode::AgentUnavailable,
        ErrorCode::AgentRefused,
        ErrorCode::ShuttingDown,
        ErrorCode::Internal,
    ]
    .iter()
    .map(|code| serde_json::to_string(code).unwrap_or_default())
    .collect();
    assert_eq!(
        names.join(","),
        r#""INVALID_JSON","INVALID_MESSAGE","MESSAGE_TOO_LARGE","RATE_LIMITED","NOT_AUTHENTICATED","AUTH_FAILED","AUTH_RATE_LIMITED","FORBIDDEN","SESSION_NOT_FOUND","INVALID_STATE","AGENT_UNAVAILABLE","AGENT_REFUSED","SHUTTING_DOWN","INTERNAL""#
    );
}

/// The registry's replies as `FrameWriter` wrote them: `type`, `requestId` (when given), then
/// the reply's own fields.
#[test]
fn golden_bytes_of_the_registry_replies() {
    let record = record();
    let meta = || SessionMeta::from(&record);
    assert_eq!(serde_json::to_string(&meta()).unwrap_or_default(), META);
    let cases = [
        (
            ServerMessage::SessionList {
                request_id: Some("r"),
                sessions: vec![meta(), meta()],
            },
            format!(r#"{{"type":"session_list","requestId":"r","sessions":[{META},{META}]}}"#),
        ),
        (
            ServerMessage::SessionList {
                request_id: None,
                sessions: Vec::new(),
            },
            r#"{"type":"session_list","sessions":[]}"#.to_owned(),
        ),
        (
            ServerMessage::SessionCreated {
                request_id: Some("c"),
                session: meta(),
            },
            format!(r#"{{"type":"session_created","requestId":"c","session":{META}}}"#),
        ),
        (
            ServerMessage::SessionCreated {
                request_id: None,
                session: meta(),
            },
            format!(r#"{{"type":"session_created","session":{META}}}"#),
        ),
        (
            ServerMessage::SessionUpdated {
                request_id: Some("u"),
                session: meta(),
            },
            format!(r#"{{"type":"session_updated","requestId":"u","session":{META}}}"#),
        ),
        (
            ServerMessage::SessionDeleted {
                request_id: Some("d"),
                session_id: "s-1",
            },
            r#"{"type":"session_deleted","requestId":"d","sessionId":"s-1"}"#.to_owned(),
        ),
        (
            ServerMessage::SessionDeleted {
                request_id: None,
                session_id: "s-1",
            },
            r#"{"type":"session_deleted","sessionId":"s-1"}"#.to_owned(),
        ),
    ];
    for (message, expected) in cases {
        assert_eq!(json(&message), expected);
        let frame = encode_frame(&message);
        assert!(frame.ends_with(expected.as_bytes()));
        assert_eq!(frame.len(), header_len(expected.len()) + expected.len());
    }
}
