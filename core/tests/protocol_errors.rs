//! The replies to bad and odd client messages, byte for byte (PROTOCOL sections 3 to 5): the
//! typed protocol (one parse per message, typed replies) answers exactly what the untyped one
//! did. The transcripts below were recorded on the code before the protocol was typed. The one
//! intended difference is in `a_field_error_now_comes_before_the_session_lookup`.

mod common;

use common::*;
use diminuendo_core::auth::{testing, AuthConfig, Authenticator};
use diminuendo_core::sim::{client, Sim, SIM_START_UNIX_MS};
use diminuendo_core::ConnectionId;
use std::time::Instant;

/// Sends each message as one text frame and returns every reply as its exact text, one line
/// per message received (`> sent` lines between).
fn transcript(sim: &mut Sim, id: ConnectionId, messages: &[String]) -> String {
    let mut out = String::new();
    for message in messages {
        out.push_str("> ");
        out.push_str(message);
        out.push('\n');
        sim.send(id, &client::text(message));
        for frame in parse_frames(&sim.take_received(id)) {
            out.push_str(&String::from_utf8_lossy(&frame.payload));
            out.push('\n');
        }
    }
    out
}

fn created_session(sim: &mut Sim, id: ConnectionId) -> String {
    sim.send(
        id,
        &client::text(r#"{"type":"create_session","agentType":"echo","requestId":"c"}"#),
    );
    let reply = sim
        .take_messages(id)
        .into_iter()
        .find(|message| message["requestId"] == "c")
        .expect("session_created");
    reply["session"]["id"].as_str().expect("an id").to_owned()
}

#[test]
fn bad_messages_are_answered_byte_for_byte_as_before() {
    let mut sim = Sim::new(dev(), 7, Instant::now());
    let id = open_ws(&mut sim);
    let session = created_session(&mut sim, id);
    let messages: Vec<String> = [
        "nope",
        "[1]",
        r#"{"type":"ping","requestId":5}"#,
        r#"{"requestId":"r"}"#,
        r#"{"type":7,"requestId":"r"}"#,
        r#"{"type":"nope","requestId":"r"}"#,
        r#"{"type":"ping","requestId":null,"extra":1}"#,
        r#"{"type":"authenticate","requestId":"r"}"#,
        r#"{"type":"list_sessions","requestId":"r","includeArchived":"yes"}"#,
        r#"{"type":"list_sessions","requestId":"r","includeArchived":null,"x":[]}"#,
        r#"{"type":"create_session","requestId":"r"}"#,
        r#"{"type":"create_session","requestId":"r","agentType":5}"#,
        r#"{"type":"create_session","requestId":"r","agentType":"echo","name":5}"#,
        r#"{"type":"create_session","requestId":"r","agentType":"echo","name":" "}"#,
        r#"{"type":"create_session","requestId":"r","agentType":"nope"}"#,
        r#"{"type":"rename_session","requestId":"r"}"#,
        r#"{"type":"rename_session","requestId":"r","sessionId":"S"}"#,
        r#"{"type":"rename_session","requestId":"r","sessionId":"S","name":5}"#,
        r#"{"type":"rename_session","requestId":"r","sessionId":"S","name":""}"#,
        r#"{"type":"archive_session","requestId":"r","sessionId":null}"#,
        r#"{"type":"unarchive_session","requestId":"r","sessionId":"missing"}"#,
        r#"{"type":"delete_session","requestId":"r"}"#,
        r#"{"type":"join_session","requestId":"r","sessionId":7}"#,
        r#"{"type":"join_session","requestId":"r","sessionId":"S","afterSeq":-1}"#,
        r#"{"type":"join_session","requestId":"r","sessionId":"S","afterSeq":1.5}"#,
        r#"{"type":"join_session","requestId":"r","sessionId":"S","epoch":5}"#,
        r#"{"type":"leave_session","requestId":"r","sessionId":[]}"#,
        r#"{"type":"get_events","requestId":"r","sessionId":"S"}"#,
        r#"{"type":"get_events","requestId":"r","sessionId":"S","afterSeq":"0"}"#,
        r#"{"type":"get_events","requestId":"r","sessionId":"S","afterSeq":0,"limit":-1}"#,
        r#"{"type":"get_history","requestId":"r","sessionId":"S","beforeTurn":1}"#,
        r#"{"type":"get_history","requestId":"r","sessionId":"S","limit":"x"}"#,
        r#"{"type":"run_turn","requestId":"r","sessionId":"S"}"#,
        r#"{"type":"run_turn","requestId":"r","sessionId":"S","text":5}"#,
        r#"{"type":"run_turn","requestId":"r","sessionId":"missing","text":"x"}"#,
        r#"{"type":"steer","requestId":"r","sessionId":"S","text":null}"#,
        r#"{"type":"stop_turn","requestId":"r","sessionId":5}"#,
        r#"{"type":"stop_turn","requestId":"r","sessionId":"S"}"#,
        r#"{"type":"answer_question","requestId":"r","sessionId":"S"}"#,
        r#"{"type":"answer_question","requestId":"r","sessionId":"S","questionId":"q","optionId":1}"#,
        r#"{"type":"answer_question","requestId":"r","sessionId":"S","questionId":"q","cancelled":"y"}"#,
        r#"{"type":"answer_question","requestId":"r","sessionId":"S","questionId":"q"}"#,
        r#"{"type":"answer_question","requestId":"r","sessionId":"S","questionId":"q","cancelled":true}"#,
    ]
    .iter()
    .map(|message| message.replace("\"S\"", &format!("\"{session}\"")))
    .collect();
    let got = transcript(&mut sim, id, &messages).replace(&session, "S");
    assert_eq!(got, AUTHENTICATED, "\n{got}");
}

#[test]
fn before_authentication_only_ping_and_authenticate_are_answered() {
    let mut sim = Sim::new(prod(), 7, Instant::now());
    let id = open_ws(&mut sim);
    let messages: Vec<String> = [
        r#"{"type":"ping","requestId":"r"}"#,
        r#"{"type":"list_sessions","requestId":"r"}"#,
        r#"{"type":"nope","requestId":"r"}"#,
        r#"{"type":"run_turn","requestId":"r","sessionId":5}"#,
        r#"{"type":"authenticate","requestId":"r"}"#,
        r#"{"type":"authenticate","requestId":"r","token":5}"#,
        r#"{"type":"authenticate","requestId":"r","token":"garbage"}"#,
    ]
    .iter()
    .map(|message| message.to_string())
    .collect();
    let got = transcript(&mut sim, id, &messages);
    assert_eq!(got, UNAUTHENTICATED, "\n{got}");
}

/// A connection of `role` in tenant `acme`, past its `authenticated`.
fn login(sim: &mut Sim, role: &str) -> ConnectionId {
    const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";
    let auth = Authenticator::new(AuthConfig {
        hs256_secret: Some(SECRET.into()),
        ..AuthConfig::default()
    });
    sim.gateway
        .set_authenticator(auth.expect("valid auth settings"));
    let exp = SIM_START_UNIX_MS / 1000 + 3600;
    let token =
        testing::sign_hs256(SECRET, &testing::claims(role, "acme", role, exp)).expect("signed");
    let id = open_ws(sim);
    sim.send(
        id,
        &client::text(&format!(r#"{{"type":"authenticate","token":"{token}"}}"#)),
    );
    let replies = sim.take_messages(id);
    assert_eq!(replies[0]["type"], "authenticated", "{replies:?}");
    id
}

/// The role is checked on the message's type before its fields.
#[test]
fn the_role_is_checked_before_the_fields() {
    let mut sim = Sim::new(prod(), 7, Instant::now());
    let viewer = login(&mut sim, "viewer");
    let member = login(&mut sim, "member");
    let as_viewer: Vec<String> = [
        r#"{"type":"delete_session","requestId":"r"}"#,
        r#"{"type":"run_turn","requestId":"r","sessionId":5}"#,
        r#"{"type":"steer","requestId":"r","sessionId":"missing","text":"x"}"#,
        r#"{"type":"create_session","requestId":"r","agentType":5}"#,
        r#"{"type":"archive_session","requestId":"r"}"#,
        r#"{"type":"list_sessions","requestId":"r","includeArchived":"x"}"#,
        r#"{"type":"nope","requestId":"r"}"#,
    ]
    .iter()
    .map(|message| message.to_string())
    .collect();
    let as_member: Vec<String> = [
        r#"{"type":"delete_session","requestId":"r","sessionId":5}"#,
        r#"{"type":"archive_session","requestId":"r"}"#,
        r#"{"type":"steer","requestId":"r","sessionId":"missing","text":"x"}"#,
    ]
    .iter()
    .map(|message| message.to_string())
    .collect();
    let got = transcript(&mut sim, viewer, &as_viewer) + &transcript(&mut sim, member, &as_member);
    assert_eq!(got, ROLES, "\n{got}");
}

/// Every field is checked when the message is parsed, so a request with a bad field and an unknown
/// session is `INVALID_MESSAGE` (it was `SESSION_NOT_FOUND` while the handler looked the session
/// up before its other fields). A bad `sessionId` itself was always answered first.
#[test]
fn a_field_error_now_comes_before_the_session_lookup() {
    let mut sim = Sim::new(dev(), 7, Instant::now());
    let id = open_ws(&mut sim);
    let messages: Vec<String> = [
        r#"{"type":"rename_session","requestId":"r","sessionId":"missing"}"#,
        r#"{"type":"join_session","requestId":"r","sessionId":"missing","afterSeq":-1}"#,
        r#"{"type":"get_events","requestId":"r","sessionId":"missing"}"#,
        r#"{"type":"run_turn","requestId":"r","sessionId":"missing"}"#,
        r#"{"type":"get_history","requestId":"r","sessionId":"missing","limit":"x"}"#,
        r#"{"type":"answer_question","requestId":"r","sessionId":"missing"}"#,
        r#"{"type":"rename_session","requestId":"r","sessionId":"missing","name":"ok"}"#,
    ]
    .iter()
    .map(|message| message.to_string())
    .collect();
    let got = transcript(&mut sim, id, &messages);
    let expected = r#"> {"type":"rename_session","requestId":"r","sessionId":"missing"}
{"type":"error","code":"INVALID_MESSAGE","message":"name must be a string","requestId":"r"}
> {"type":"join_session","requestId":"r","sessionId":"missing","afterSeq":-1}
{"type":"error","code":"INVALID_MESSAGE","message":"afterSeq must be a non-negative integer","requestId":"r"}
> {"type":"get_events","requestId":"r","sessionId":"missing"}
{"type":"error","code":"INVALID_MESSAGE","message":"afterSeq must be a non-negative integer","requestId":"r"}
> {"type":"run_turn","requestId":"r","sessionId":"missing"}
{"type":"error","code":"INVALID_MESSAGE","message":"text must be a string","requestId":"r"}
> {"type":"get_history","requestId":"r","sessionId":"missing","limit":"x"}
{"type":"error","code":"INVALID_MESSAGE","message":"limit must be a non-negative integer","requestId":"r"}
> {"type":"answer_question","requestId":"r","sessionId":"missing"}
{"type":"error","code":"INVALID_MESSAGE","message":"questionId must be a string","requestId":"r"}
> {"type":"rename_session","requestId":"r","sessionId":"missing","name":"ok"}
{"type":"error","code":"SESSION_NOT_FOUND","message":"no such session","requestId":"r"}
"#;
    assert_eq!(got, expected, "\n{got}");
}

const ROLES: &str = r#"> {"type":"delete_session","requestId":"r"}
{"type":"error","code":"FORBIDDEN","message":"the role viewer may not delete_session","requestId":"r"}
> {"type":"run_turn","requestId":"r","sessionId":5}
{"type":"error","code":"FORBIDDEN","message":"the role viewer may not run_turn","requestId":"r"}
> {"type":"steer","requestId":"r","sessionId":"missing","text":"x"}
{"type":"error","code":"FORBIDDEN","message":"the role viewer may not steer","requestId":"r"}
> {"type":"create_session","requestId":"r","agentType":5}
{"type":"error","code":"FORBIDDEN","message":"the role viewer may not create_session","requestId":"r"}
> {"type":"archive_session","requestId":"r"}
{"type":"error","code":"FORBIDDEN","message":"the role viewer may not archive_session","requestId":"r"}
> {"type":"list_sessions","requestId":"r","includeArchived":"x"}
{"type":"error","code":"INVALID_MESSAGE","message":"includeArchived must be a boolean","requestId":"r"}
> {"type":"nope","requestId":"r"}
{"type":"error","code":"INVALID_MESSAGE","message":"unknown message type","requestId":"r"}
> {"type":"delete_session","requestId":"r","sessionId":5}
{"type":"error","code":"FORBIDDEN","message":"the role member may not delete_session","requestId":"r"}
> {"type":"archive_session","requestId":"r"}
{"type":"error","code":"INVALID_MESSAGE","message":"sessionId must be a string","requestId":"r"}
> {"type":"steer","requestId":"r","sessionId":"missing","text":"x"}
{"type":"error","code":"SESSION_NOT_FOUND","message":"no such session","requestId":"r"}
"#;

const AUTHENTICATED: &str = r#"> nope
{"type":"error","code":"INVALID_JSON","message":"the message is not valid JSON"}
> [1]
{"type":"error","code":"INVALID_MESSAGE","message":"a message must be a JSON object"}
> {"type":"ping","requestId":5}
{"type":"error","code":"INVALID_MESSAGE","message":"requestId must be a string of at most 64 characters"}
> {"requestId":"r"}
{"type":"error","code":"INVALID_MESSAGE","message":"type must be a string","requestId":"r"}
> {"type":7,"requestId":"r"}
{"type":"error","code":"INVALID_MESSAGE","message":"type must be a string","requestId":"r"}
> {"type":"nope","requestId":"r"}
{"type":"error","code":"INVALID_MESSAGE","message":"unknown message type","requestId":"r"}
> {"type":"ping","requestId":null,"extra":1}
{"type":"pong","ts":1767225600000}
> {"type":"authenticate","requestId":"r"}
{"type":"authenticated","identity":{"userId":"dev-user-001","email":"developer@example.com","tenantId":"dev","role":"owner"},"requestId":"r"}
> {"type":"list_sessions","requestId":"r","includeArchived":"yes"}
{"type":"error","code":"INVALID_MESSAGE","message":"includeArchived must be a boolean","requestId":"r"}
> {"type":"list_sessions","requestId":"r","includeArchived":null,"x":[]}
{"type":"session_list","requestId":"r","sessions":[{"id":"S","tenantId":"dev","name":"New session","agentType":"echo","status":"inactive","archived":false,"createdBy":"dev-user-001","createdAt":1767225600000,"updatedAt":1767225600000,"lastSeq":0,"epoch":"73d33b666a1e21da"}]}
> {"type":"create_session","requestId":"r"}
{"type":"error","code":"INVALID_MESSAGE","message":"agentType must be a string","requestId":"r"}
> {"type":"create_session","requestId":"r","agentType":5}
{"type":"error","code":"INVALID_MESSAGE","message":"agentType must be a string","requestId":"r"}
> {"type":"create_session","requestId":"r","agentType":"echo","name":5}
{"type":"error","code":"INVALID_MESSAGE","message":"name must be a string","requestId":"r"}
> {"type":"create_session","requestId":"r","agentType":"echo","name":" "}
{"type":"error","code":"INVALID_MESSAGE","message":"name must be 1 to 200 characters","requestId":"r"}
> {"type":"create_session","requestId":"r","agentType":"nope"}
{"type":"error","code":"AGENT_UNAVAILABLE","message":"unknown agent type nope","requestId":"r"}
> {"type":"rename_session","requestId":"r"}
{"type":"error","code":"INVALID_MESSAGE","message":"sessionId must be a string","requestId":"r"}
> {"type":"rename_session","requestId":"r","sessionId":"S"}
{"type":"error","code":"INVALID_MESSAGE","message":"name must be a string","requestId":"r"}
> {"type":"rename_session","requestId":"r","sessionId":"S","name":5}
{"type":"error","code":"INVALID_MESSAGE","message":"name must be a string","requestId":"r"}
> {"type":"rename_session","requestId":"r","sessionId":"S","name":""}
{"type":"error","code":"INVALID_MESSAGE","message":"name must be 1 to 200 characters","requestId":"r"}
> {"type":"archive_session","requestId":"r","sessionId":null}
{"type":"error","code":"INVALID_MESSAGE","message":"sessionId must be a string","requestId":"r"}
> {"type":"unarchive_session","requestId":"r","sessionId":"missing"}
{"type":"error","code":"SESSION_NOT_FOUND","message":"no such session","requestId":"r"}
> {"type":"delete_session","requestId":"r"}
{"type":"error","code":"INVALID_MESSAGE","message":"sessionId must be a string","requestId":"r"}
> {"type":"join_session","requestId":"r","sessionId":7}
{"type":"error","code":"INVALID_MESSAGE","message":"sessionId must be a string","requestId":"r"}
> {"type":"join_session","requestId":"r","sessionId":"S","afterSeq":-1}
{"type":"error","code":"INVALID_MESSAGE","message":"afterSeq must be a non-negative integer","requestId":"r"}
> {"type":"join_session","requestId":"r","sessionId":"S","afterSeq":1.5}
{"type":"error","code":"INVALID_MESSAGE","message":"afterSeq must be a non-negative integer","requestId":"r"}
> {"type":"join_session","requestId":"r","sessionId":"S","epoch":5}
{"type":"error","code":"INVALID_MESSAGE","message":"epoch must be a string","requestId":"r"}
> {"type":"leave_session","requestId":"r","sessionId":[]}
{"type":"error","code":"INVALID_MESSAGE","message":"sessionId must be a string","requestId":"r"}
> {"type":"get_events","requestId":"r","sessionId":"S"}
{"type":"error","code":"INVALID_MESSAGE","message":"afterSeq must be a non-negative integer","requestId":"r"}
> {"type":"get_events","requestId":"r","sessionId":"S","afterSeq":"0"}
{"type":"error","code":"INVALID_MESSAGE","message":"afterSeq must be a non-negative integer","requestId":"r"}
> {"type":"get_events","requestId":"r","sessionId":"S","afterSeq":0,"limit":-1}
{"type":"error","code":"INVALID_MESSAGE","message":"limit must be a non-negative integer","requestId":"r"}
> {"type":"get_history","requestId":"r","sessionId":"S","beforeTurn":1}
{"type":"error","code":"INVALID_MESSAGE","message":"beforeTurn must be a string","requestId":"r"}
> {"type":"get_history","requestId":"r","sessionId":"S","limit":"x"}
{"type":"error","code":"INVALID_MESSAGE","message":"limit must be a non-negative integer","requestId":"r"}
> {"type":"run_turn","requestId":"r","sessionId":"S"}
{"type":"error","code":"INVALID_MESSAGE","message":"text must be a string","requestId":"r"}
> {"type":"run_turn","requestId":"r","sessionId":"S","text":5}
{"type":"error","code":"INVALID_MESSAGE","message":"text must be a string","requestId":"r"}
> {"type":"run_turn","requestId":"r","sessionId":"missing","text":"x"}
{"type":"error","code":"SESSION_NOT_FOUND","message":"no such session","requestId":"r"}
> {"type":"steer","requestId":"r","sessionId":"S","text":null}
{"type":"error","code":"INVALID_MESSAGE","message":"text must be a string","requestId":"r"}
> {"type":"stop_turn","requestId":"r","sessionId":5}
{"type":"error","code":"INVALID_MESSAGE","message":"sessionId must be a string","requestId":"r"}
> {"type":"stop_turn","requestId":"r","sessionId":"S"}
{"type":"error","code":"INVALID_STATE","message":"no turn is running","requestId":"r"}
> {"type":"answer_question","requestId":"r","sessionId":"S"}
{"type":"error","code":"INVALID_MESSAGE","message":"questionId must be a string","requestId":"r"}
> {"type":"answer_question","requestId":"r","sessionId":"S","questionId":"q","optionId":1}
{"type":"error","code":"INVALID_MESSAGE","message":"optionId must be a string","requestId":"r"}
> {"type":"answer_question","requestId":"r","sessionId":"S","questionId":"q","cancelled":"y"}
{"type":"error","code":"INVALID_MESSAGE","message":"cancelled must be a boolean","requestId":"r"}
> {"type":"answer_question","requestId":"r","sessionId":"S","questionId":"q"}
{"type":"error","code":"INVALID_MESSAGE","message":"give either optionId or cancelled: true","requestId":"r"}
> {"type":"answer_question","requestId":"r","sessionId":"S","questionId":"q","cancelled":true}
{"type":"error","code":"INVALID_STATE","message":"no question is pending","requestId":"r"}
"#;

const UNAUTHENTICATED: &str = r#"> {"type":"ping","requestId":"r"}
{"type":"pong","ts":1767225600000,"requestId":"r"}
> {"type":"list_sessions","requestId":"r"}
{"type":"error","code":"NOT_AUTHENTICATED","message":"authenticate first","requestId":"r"}
> {"type":"nope","requestId":"r"}
{"type":"error","code":"NOT_AUTHENTICATED","message":"authenticate first","requestId":"r"}
> {"type":"run_turn","requestId":"r","sessionId":5}
{"type":"error","code":"NOT_AUTHENTICATED","message":"authenticate first","requestId":"r"}
> {"type":"authenticate","requestId":"r"}
{"type":"error","code":"INVALID_MESSAGE","message":"token must be a string","requestId":"r"}
> {"type":"authenticate","requestId":"r","token":5}
{"type":"error","code":"INVALID_MESSAGE","message":"token must be a string","requestId":"r"}
> {"type":"authenticate","requestId":"r","token":"garbage"}
{"type":"error","code":"AUTH_FAILED","message":"token verification is not configured on this gateway","requestId":"r"}
"#;
