//! Golden tests: every event kind, tenant notification and session reply, byte for byte as the
//! core has always sent it. Two references: the hand-written frame writer these types replaced
//! (kept below, test-only), and the texts it produced, committed in `golden/*.txt` (one
//! `label<TAB>payload` line per case, in the order the tests encode them).

use std::cell::RefCell;

use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::*;
use crate::protocol::encode_frame_with_payload;
use crate::protocol::session_reply::{
    AgentControls, HistoryTurn, OpenQuestion, OpenQuestionOption, RunningTurn, SessionReply,
    StoredEvents,
};
use crate::protocol::{ServerMessage, SessionMeta};
use crate::storage::{SessionRecord, SessionStatus, StoredEvent, TurnRecord};

fn old_event(
    kind: &str,
    turn_id: Option<&str>,
    build: impl FnOnce(&mut FrameWriter),
) -> (Bytes, Bytes) {
    let mut writer = FrameWriter::new(kind);
    writer
        .field("sessionId", "s-1")
        .field("seq", &7u64)
        .field("ts", &1_700_000_000_123i64);
    if let Some(turn_id) = turn_id {
        writer.field("turnId", turn_id);
    }
    build(&mut writer);
    writer.finish()
}

thread_local! {
    /// The golden lines of the running test, and how many it has checked.
    static GOLDEN: RefCell<(Vec<&'static str>, usize)> = const { RefCell::new((Vec::new(), 0)) };
}

fn golden(text: &'static str) {
    GOLDEN.with(|golden| *golden.borrow_mut() = (text.lines().collect(), 0));
}

fn golden_done() {
    GOLDEN.with(|golden| {
        let golden = golden.borrow();
        assert_eq!(golden.1, golden.0.len(), "every golden line was checked");
    });
}

/// The new encoding equals the committed golden text, and the old writer's up to the order of
/// keys inside agent-provided JSON: the old writer's maps were sorted all the way down; since
/// the ACP schema crate turned on serde_json's `preserve_order`, what an agent wrote (a tool's
/// input, a usage object) keeps the agent's key order, as the golden text records.
fn check(old: (Bytes, Bytes), new: (Bytes, Bytes), label: &str) {
    assert_eq!(old.0.len(), new.0.len(), "{label}: frame length");
    assert_eq!(canonical(&old.1), canonical(&new.1), "{label}");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        // `UPDATE_GOLDEN=1 cargo test -p diminuendo-core byte_identical -- --nocapture
        // --test-threads=1` prints the lines to review and commit.
        println!("GOLDEN {label}\t{}", String::from_utf8_lossy(&new.1));
        return;
    }
    let payload = String::from_utf8_lossy(&new.1).into_owned();
    GOLDEN.with(|golden| {
        let mut golden = golden.borrow_mut();
        let index = golden.1;
        golden.1 += 1;
        let line = golden.0.get(index).copied().unwrap_or_default();
        assert_eq!(
            line,
            format!("{label}\t{payload}"),
            "golden line {}",
            index + 1
        );
    });
}

/// A payload with every object's keys sorted, to compare two encodings up to key order.
fn canonical(payload: &[u8]) -> String {
    fn sort(value: Value) -> Value {
        match value {
            Value::Object(map) => {
                let mut entries: Vec<_> = map.into_iter().collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                Value::Object(entries.into_iter().map(|(k, v)| (k, sort(v))).collect())
            }
            Value::Array(items) => Value::Array(items.into_iter().map(sort).collect()),
            other => other,
        }
    }
    let value: Value = serde_json::from_slice(payload).unwrap_or(Value::Null);
    sort(value).to_string()
}

fn event(turn_id: Option<&str>, body: EventBody<'_>) -> (Bytes, Bytes) {
    encode_frame_with_payload(&SessionEvent::new(
        "s-1",
        7,
        1_700_000_000_123,
        turn_id,
        body,
    ))
}

fn map(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

#[test]
fn session_events_are_byte_identical() {
    golden(include_str!("golden/events.txt"));
    let t = Some("t-1");
    check(
        old_event("session_state", None, |w| {
            w.field("status", "ready").field("previous", "activating");
        }),
        event(
            None,
            EventBody::SessionState(SessionState {
                status: "ready",
                previous: "activating",
            }),
        ),
        "session_state",
    );
    check(
        old_event("turn_started", t, |w| {
            w.field("text", "hi \"there\"\n").field("userId", "u-1");
        }),
        event(
            t,
            EventBody::TurnStarted(TurnStarted {
                text: "hi \"there\"\n",
                user_id: "u-1",
                content: &[],
            }),
        ),
        "turn_started",
    );
    for kind in ["text_delta", "thinking_delta"] {
        let old = old_event(kind, t, |w| {
            w.field("text", "héllo ✓");
        });
        let fields = map(json!({"text": "héllo ✓"}));
        check(old, event(t, agent_update_body(kind, &fields)), kind);
    }
    let updates = [
        (
            "tool_call",
            json!({"toolCallId": "c1", "title": "Read", "kind": "read", "status": "pending", "input": {"path": "/a", "b": [1, 2]}}),
        ),
        (
            "tool_call",
            json!({"toolCallId": "c1", "title": "", "kind": "other", "status": "pending"}),
        ),
        (
            "tool_call_update",
            json!({"toolCallId": "c1", "status": "completed", "content": [{"type": "text"}]}),
        ),
        ("tool_call_update", json!({"toolCallId": "c1"})),
        (
            "plan",
            json!({"entries": [{"content": "x", "status": "pending", "priority": "high"}]}),
        ),
        (
            "usage",
            json!({"used": 10, "size": 200000, "cost": {"amount": 0.5, "currency": "USD"}}),
        ),
        ("usage", json!({"used": 10, "size": 200000})),
        (
            "agent_update",
            json!({"update": {"sessionUpdate": "x", "a": null}}),
        ),
        ("text_delta", json!({"text": "no turn"})),
        // Issue 13: tool calls in full (the mapping's keys, sorted).
        (
            "tool_call",
            json!({"content": [{"newText": "b", "oldText": "a", "path": "/a", "type": "diff"}, {"terminalId": "term", "type": "terminal"}], "input": {"path": "/a"}, "kind": "edit", "locations": [{"line": 3, "path": "/a"}], "rawOutput": {"ok": true}, "status": "completed", "title": "Edit", "toolCallId": "c2", "truncated": true}),
        ),
        (
            "tool_call_update",
            json!({"content": [], "input": "x", "kind": "edit", "locations": [], "rawOutput": [1], "status": "failed", "title": "T", "toolCallId": "c2", "truncated": true}),
        ),
    ];
    for (kind, fields) in updates {
        let fields = map(fields);
        for turn_id in [t, None] {
            let old = old_event(kind, turn_id, |w| {
                w.fields(&fields);
            });
            check(old, event(turn_id, agent_update_body(kind, &fields)), kind);
        }
    }
    let options: Vec<Value> = [("o1", "Allow", "allow_once"), ("o2", "Deny", "reject_once")]
        .iter()
        .map(|(id, name, kind)| json!({"optionId": id, "name": name, "kind": kind}))
        .collect();
    check(
        old_event("permission_requested", t, |w| {
            w.field("questionId", "q1")
                .field("toolCallId", "c1")
                .field("title", "May I?");
            w.field("options", &options);
        }),
        event(
            t,
            EventBody::PermissionRequested(PermissionRequested {
                question_id: "q1",
                tool_call_id: "c1",
                title: "May I?",
                options: vec![
                    QuestionOption {
                        kind: "allow_once",
                        name: "Allow",
                        option_id: "o1",
                    },
                    QuestionOption {
                        kind: "reject_once",
                        name: "Deny",
                        option_id: "o2",
                    },
                ],
            }),
        ),
        "permission_requested",
    );
    check(
        old_event("permission_resolved", t, |w| {
            w.field("questionId", "q1")
                .field("optionId", "o1")
                .field("userId", "u-1");
        }),
        event(
            t,
            EventBody::PermissionResolved(PermissionResolved {
                question_id: "q1",
                option_id: Some("o1"),
                cancelled: None,
                user_id: Some("u-1"),
            }),
        ),
        "permission_resolved answered",
    );
    check(
        old_event("permission_resolved", t, |w| {
            w.field("questionId", "q1")
                .field("cancelled", &true)
                .field("userId", "u-1");
        }),
        event(
            t,
            EventBody::PermissionResolved(PermissionResolved {
                question_id: "q1",
                option_id: None,
                cancelled: Some(true),
                user_id: Some("u-1"),
            }),
        ),
        "permission_resolved cancelled by user",
    );
    check(
        old_event("permission_resolved", t, |w| {
            w.field("questionId", "q1").field("cancelled", &true);
        }),
        event(
            t,
            EventBody::PermissionResolved(PermissionResolved {
                question_id: "q1",
                option_id: None,
                cancelled: Some(true),
                user_id: None,
            }),
        ),
        "permission_resolved cancelled",
    );
    for truncated in [false, true] {
        check(
            old_event("turn_complete", t, |w| {
                w.field("stopReason", "end_turn").field("finalText", "done");
                if truncated {
                    w.field("finalTextTruncated", &true);
                }
            }),
            event(
                t,
                EventBody::TurnComplete(TurnComplete {
                    stop_reason: "end_turn",
                    final_text: "done",
                    final_text_truncated: truncated,
                }),
            ),
            "turn_complete",
        );
    }
    check(
        old_event("turn_error", t, |w| {
            w.field("code", "AGENT_UNAVAILABLE")
                .field("message", "the agent process exited");
        }),
        event(
            t,
            EventBody::TurnError(TurnError {
                code: "AGENT_UNAVAILABLE",
                message: "the agent process exited",
                agent_code: None,
            }),
        ),
        "turn_error",
    );
    // Issue 13: the agent's controls as typed events.
    let commands = json!([{"description": "Search", "input": {"hint": "q"}, "name": "web"}]);
    check(
        old_event("available_commands_update", t, |w| {
            w.field("availableCommands", &commands);
        }),
        event(
            t,
            EventBody::AvailableCommandsUpdate(AvailableCommandsUpdate {
                available_commands: &commands,
            }),
        ),
        "available_commands_update",
    );
    check(
        old_event("current_mode_update", None, |w| {
            w.field("currentModeId", "code");
        }),
        event(
            None,
            EventBody::CurrentModeUpdate(CurrentModeUpdate {
                current_mode_id: "code",
            }),
        ),
        "current_mode_update",
    );
    let options = json!([{"currentValue": "fast", "id": "speed", "name": "Speed", "options": [], "type": "select"}]);
    check(
        old_event("config_option_update", t, |w| {
            w.field("configOptions", &options);
        }),
        event(
            t,
            EventBody::ConfigOptionUpdate(ConfigOptionUpdate {
                config_options: &options,
            }),
        ),
        "config_option_update",
    );
    golden_done();
}

fn record() -> SessionRecord {
    SessionRecord {
        id: "s-1".into(),
        tenant_id: "acme".into(),
        name: "Röbot \"one\"".into(),
        agent_type: "mock".into(),
        status: SessionStatus::Running,
        archived: false,
        created_by: "u-1".into(),
        created_at_ms: 1,
        updated_at_ms: 2,
        last_seq: 9,
        epoch: "00ff".into(),
        acp_session_id: None,
    }
}

fn old_reply(
    kind: &str,
    request_id: Option<&str>,
    build: impl FnOnce(&mut FrameWriter),
) -> (Bytes, Bytes) {
    let mut writer = FrameWriter::new(kind);
    if let Some(request_id) = request_id {
        writer.field("requestId", request_id);
    }
    build(&mut writer);
    writer.finish()
}

fn reply<T: serde::Serialize>(reply: &T) -> (Bytes, Bytes) {
    encode_frame_with_payload(reply)
}

#[test]
fn tenant_notifications_and_replies_are_byte_identical() {
    golden(include_str!("golden/replies.txt"));
    let record = record();
    let meta = SessionMeta::from(&record);
    for (kind, notification) in [
        (
            "session_created",
            ServerMessage::SessionCreated {
                request_id: None,
                session: meta.clone(),
            },
        ),
        (
            "session_updated",
            ServerMessage::SessionUpdated {
                request_id: None,
                session: meta.clone(),
            },
        ),
    ] {
        check(
            old_reply(kind, None, |w| {
                w.field("session", &meta);
            }),
            encode_frame_with_payload(&notification),
            kind,
        );
    }
    check(
        old_reply("session_deleted", None, |w| {
            w.field("sessionId", "s-1");
        }),
        encode_frame_with_payload(&ServerMessage::SessionDeleted {
            request_id: None,
            session_id: "s-1",
        }),
        "session_deleted",
    );
    let events = [
        StoredEvent {
            seq: 1,
            event_type: "x".into(),
            turn_id: None,
            payload: Bytes::from_static(br#"{"type":"x","sessionId":"s-1","seq":1}"#),
            ts_ms: 1,
        },
        StoredEvent {
            seq: 2,
            event_type: "y".into(),
            turn_id: None,
            payload: Bytes::from_static(br#"{"type":"y","z":[1,{"b":2,"a":1}]}"#),
            ts_ms: 2,
        },
    ];
    let raw = |events: &[StoredEvent]| {
        let mut out = b"[".to_vec();
        for (i, e) in events.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&e.payload);
        }
        out.push(b']');
        out
    };
    for request_id in [Some("r-1"), None] {
        check(
            old_reply("session_created", request_id, |w| {
                w.field("session", &meta);
            }),
            reply(&ServerMessage::SessionCreated {
                request_id,
                session: meta.clone(),
            }),
            "created",
        );
        check(
            old_reply("session_updated", request_id, |w| {
                w.field("session", &meta);
            }),
            reply(&ServerMessage::SessionUpdated {
                request_id,
                session: meta.clone(),
            }),
            "updated",
        );
        check(
            old_reply("session_deleted", request_id, |w| {
                w.field("sessionId", "s-1");
            }),
            reply(&ServerMessage::SessionDeleted {
                request_id,
                session_id: "s-1",
            }),
            "deleted",
        );
        check(
            old_reply("session_list", request_id, |w| {
                w.field("sessions", &vec![meta.clone(), meta.clone()]);
            }),
            reply(&ServerMessage::SessionList {
                request_id,
                sessions: vec![meta.clone(), meta.clone()],
            }),
            "list",
        );
        for evs in [&events[..], &[][..]] {
            check(
                old_reply("session_joined", request_id, |w| {
                    w.field("session", &meta)
                        .field("epoch", "00ff")
                        .field("lastSeq", &9u64)
                        .field("recovered", &true)
                        .raw_field("events", &raw(evs));
                }),
                reply(&SessionReply::SessionJoined {
                    request_id,
                    session: meta.clone(),
                    epoch: "00ff",
                    last_seq: 9,
                    recovered: true,
                    turn: None,
                    questions: &[],
                    agent: None,
                    events: StoredEvents(evs),
                }),
                "joined",
            );
            check(
                old_reply("events", request_id, |w| {
                    w.field("sessionId", "s-1")
                        .field("epoch", "00ff")
                        .raw_field("events", &raw(evs))
                        .field("lastSeq", &9u64)
                        .field("hasMore", &false);
                }),
                reply(&SessionReply::Events {
                    request_id,
                    session_id: "s-1",
                    epoch: "00ff",
                    events: StoredEvents(evs),
                    last_seq: 9,
                    has_more: false,
                }),
                "events",
            );
        }
        check(
            old_reply("session_left", request_id, |w| {
                w.field("sessionId", "s-1");
            }),
            reply(&SessionReply::SessionLeft {
                request_id,
                session_id: "s-1",
            }),
            "left",
        );
        check(
            old_reply("turn_accepted", request_id, |w| {
                w.field("sessionId", "s-1").field("turnId", "t-1");
            }),
            reply(&SessionReply::TurnAccepted {
                request_id,
                session_id: "s-1",
                turn_id: "t-1",
            }),
            "accepted",
        );
        check(
            old_reply("turn_stopping", request_id, |w| {
                w.field("sessionId", "s-1").field("turnId", "t-1");
            }),
            reply(&SessionReply::TurnStopping {
                request_id,
                session_id: "s-1",
                turn_id: "t-1",
            }),
            "stopping",
        );
        check(
            old_reply("question_answered", request_id, |w| {
                w.field("sessionId", "s-1").field("questionId", "q1");
            }),
            reply(&SessionReply::QuestionAnswered {
                request_id,
                session_id: "s-1",
                question_id: "q1",
            }),
            "answered",
        );
        let turns = [
            TurnRecord {
                turn_id: "t-1".into(),
                user_id: Some("u-1".into()),
                user_text: "hi".into(),
                final_text: Some("done".into()),
                final_text_truncated: false,
                stop_reason: Some("end_turn".into()),
                usage_json: Some(r#"{"used":1,"size":2}"#.into()),
                tool_calls_json: Some(r#"[{"toolCallId":"c1","title":"x"}]"#.into()),
                started_at_ms: 5,
                completed_at_ms: Some(6),
                content_json: None,
            },
            TurnRecord {
                turn_id: "t-2".into(),
                user_id: None,
                user_text: "yo".into(),
                final_text: None,
                final_text_truncated: true,
                stop_reason: None,
                usage_json: None,
                tool_calls_json: None,
                started_at_ms: 7,
                completed_at_ms: None,
                content_json: None,
            },
        ];
        let old_turns: Vec<Value> = turns.iter().map(|turn| {
            let parse = |text: &Option<String>| text.as_deref().and_then(|t| serde_json::from_str::<Value>(t).ok());
            json!({
                "turnId": turn.turn_id, "userId": turn.user_id, "userText": turn.user_text,
                "finalText": turn.final_text, "finalTextTruncated": turn.final_text_truncated,
                "toolCalls": parse(&turn.tool_calls_json).unwrap_or_else(|| Value::Array(Vec::new())),
                "stopReason": turn.stop_reason, "usage": parse(&turn.usage_json),
                "startedAt": turn.started_at_ms, "completedAt": turn.completed_at_ms,
            })
        }).collect();
        check(
            old_reply("history", request_id, |w| {
                w.field("sessionId", "s-1")
                    .field("turns", &old_turns)
                    .field("hasMore", &true);
            }),
            reply(&SessionReply::History {
                request_id,
                session_id: "s-1",
                turns: turns.iter().map(HistoryTurn::from).collect(),
                has_more: true,
            }),
            "history",
        );
        // Issue 13: the agent's controls and the join's snapshot.
        check(
            old_reply("mode_set", request_id, |w| {
                w.field("sessionId", "s-1").field("modeId", "code");
            }),
            reply(&SessionReply::ModeSet {
                request_id,
                session_id: "s-1",
                mode_id: "code",
            }),
            "mode_set",
        );
        let options = json!([{"currentValue": true, "id": "x", "name": "X", "type": "boolean"}]);
        check(
            old_reply("config_option_set", request_id, |w| {
                w.field("sessionId", "s-1").field("configOptions", &options);
            }),
            reply(&SessionReply::ConfigOptionSet {
                request_id,
                session_id: "s-1",
                config_options: &options,
            }),
            "config_option_set",
        );
        let turn = RunningTurn {
            turn_id: "t-2".into(),
            text: "go".into(),
            user_id: "u-1".into(),
            started_at: 5,
            agent_text: "so far".into(),
            agent_text_truncated: false,
        };
        let questions = [OpenQuestion {
            question_id: "q1".into(),
            tool_call_id: "c1".into(),
            title: "May I?".into(),
            options: vec![OpenQuestionOption {
                kind: "allow_once".into(),
                name: "Yes".into(),
                option_id: "y".into(),
            }],
        }];
        let agent = AgentControls {
            current_mode_id: Some("ask".into()),
            available_modes: json!([{"id": "ask", "name": "Ask"}]),
            config_options: Some(options.clone()),
            available_commands: None,
        };
        check(
            old_reply("session_joined", request_id, |w| {
                w.field("session", &meta)
                    .field("epoch", "00ff")
                    .field("lastSeq", &9)
                    .field("recovered", &false)
                    .field("turn", &json!({"turnId": "t-2", "text": "go", "userId": "u-1", "startedAt": 5, "agentText": "so far"}))
                    .field("questions", &json!([{"questionId": "q1", "toolCallId": "c1", "title": "May I?", "options": [{"kind": "allow_once", "name": "Yes", "optionId": "y"}]}]))
                    .field("agent", &json!({"currentModeId": "ask", "availableModes": [{"id": "ask", "name": "Ask"}], "configOptions": options}))
                    .field("events", &json!([]));
            }),
            reply(&SessionReply::SessionJoined {
                request_id,
                session: meta.clone(),
                epoch: "00ff",
                last_seq: 9,
                recovered: false,
                turn: Some(&turn),
                questions: &questions,
                agent: Some(&agent),
                events: StoredEvents(&[]),
            }),
            "joined_snapshot",
        );
    }
    golden_done();
}

/// The hand-written writer the typed values replaced (test-only now): a text frame whose payload
/// is a JSON object, written field by field behind room for the header.
pub(crate) struct FrameWriter {
    buffer: bytes::BytesMut,
    first_field: bool,
}

const HEADER_ROOM: usize = 10;

impl FrameWriter {
    pub(crate) fn new(kind: &str) -> Self {
        use bytes::BufMut;
        let mut buffer = bytes::BytesMut::with_capacity(256);
        buffer.put_bytes(0, HEADER_ROOM);
        let mut writer = FrameWriter {
            buffer,
            first_field: true,
        };
        writer.buffer.put_u8(b'{');
        writer.field("type", kind);
        writer
    }

    fn key(&mut self, key: &str) {
        use bytes::BufMut;
        if !self.first_field {
            self.buffer.put_u8(b',');
        }
        self.first_field = false;
        let _ = serde_json::to_writer((&mut self.buffer).writer(), key);
        self.buffer.put_u8(b':');
    }

    pub(crate) fn field<T: serde::Serialize + ?Sized>(
        &mut self,
        key: &str,
        value: &T,
    ) -> &mut Self {
        use bytes::BufMut;
        self.key(key);
        let _ = serde_json::to_writer((&mut self.buffer).writer(), value);
        self
    }

    pub(crate) fn raw_field(&mut self, key: &str, json: &[u8]) -> &mut Self {
        use bytes::BufMut;
        self.key(key);
        self.buffer.put_slice(json);
        self
    }

    /// Every field of `fields`, in key order: the old writer's maps were sorted (serde_json
    /// without `preserve_order`, which the ACP schema crate now turns on), and so are the
    /// updates the ACP mapping publishes.
    pub(crate) fn fields(&mut self, fields: &Map<String, Value>) -> &mut Self {
        let mut sorted: Vec<_> = fields.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(b.0));
        for (key, value) in sorted {
            self.field(key, value);
        }
        self
    }

    pub(crate) fn finish(mut self) -> (Bytes, Bytes) {
        use crate::ws::encoder::{header_len, put_header, OpCode};
        use bytes::{BufMut, BytesMut};
        self.buffer.put_u8(b'}');
        let payload_len = self.buffer.len() - HEADER_ROOM;
        let header = header_len(payload_len);
        let mut head = BytesMut::with_capacity(header);
        put_header(&mut head, OpCode::Text, payload_len);
        self.buffer[HEADER_ROOM - header..HEADER_ROOM].copy_from_slice(&head);
        let frame = self.buffer.split_off(HEADER_ROOM - header).freeze();
        let payload = frame.slice(header..);
        (frame, payload)
    }
}

#[test]
fn the_events_and_replies_have_a_json_schema() {
    let event = serde_json::to_value(schemars::schema_for!(SessionEvent<'static>))
        .unwrap_or_default()
        .to_string();
    for name in [
        "sessionId",
        "turnId",
        "toolCallId",
        "finalTextTruncated",
        "options",
    ] {
        assert!(event.contains(name), "{name} in {event}");
    }
    let replies = serde_json::to_value(schemars::schema_for!(SessionReply<'static>))
        .unwrap_or_default()
        .to_string();
    for name in ["session_joined", "turn_accepted", "hasMore", "lastSeq"] {
        assert!(replies.contains(name), "{name}");
    }
}

#[test]
fn storage_recovery_builds_the_turn_error_a_session_publishes() {
    let recovered = crate::session::turn_error_payload(
        "s-1",
        7,
        1_700_000_000_123,
        "t-1",
        "AGENT_UNAVAILABLE",
        "the agent process exited",
    );
    let published = event(
        Some("t-1"),
        EventBody::TurnError(TurnError {
            code: "AGENT_UNAVAILABLE",
            message: "the agent process exited",
            agent_code: None,
        }),
    );
    assert_eq!(recovered, published.1);
    let golden = include_str!("golden/events.txt");
    let line = golden.lines().find(|line| line.starts_with("turn_error\t"));
    assert_eq!(
        line.map(|line| line.trim_start_matches("turn_error\t")),
        std::str::from_utf8(&recovered).ok()
    );
}
