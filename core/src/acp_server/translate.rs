//! The gateway's events and replies as ACP: each session event (as published on `/ws`) becomes
//! zero or more `session/update` notifications, each reply the result of the method it
//! answers. Every message is read back into the protocol's own type before it is sent, so what
//! does not have ACP's shape is left out rather than sent malformed.

use agent_client_protocol_schema::v1::{
    InitializeResponse, ListSessionsResponse, LoadSessionResponse, NewSessionResponse,
    PromptResponse, RequestPermissionRequest, ResumeSessionResponse, SessionNotification,
    SetSessionConfigOptionResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::acp::AgentFeatures;

/// `value` read as the ACP type `T` (which is what gets serialized), or why it is not one.
pub(crate) fn typed<T: DeserializeOwned + Serialize>(value: Value) -> Result<T, String> {
    serde_json::from_value(value).map_err(|error| error.to_string())
}

/// The `session/update` notifications (their params) for one session event, in order. A
/// `permission_requested`, `permission_resolved`, `turn_complete`, `turn_error`,
/// `session_state` or `file_changed` has none: the first two are the gateway's requests and
/// updates of each client, the turn's end answers `session/prompt`, the others have no ACP
/// counterpart.
pub(crate) fn session_updates(event: &Value) -> Vec<SessionNotification> {
    let field = |key: &str| event.get(key);
    let text = |key: &str| field(key).and_then(Value::as_str);
    let Some(session_id) = text("sessionId") else {
        return Vec::new();
    };
    let mut updates = Vec::new();
    let chunk = |kind: &str, content: Value| json!({ "sessionUpdate": kind, "content": content });
    match text("type").unwrap_or_default() {
        "turn_started" => {
            if let Some(text) = text("text").filter(|text| !text.is_empty()) {
                updates.push(chunk(
                    "user_message_chunk",
                    json!({ "type": "text", "text": text }),
                ));
            }
            if let Some(Value::Array(blocks)) = field("content") {
                for block in blocks {
                    updates.push(chunk("user_message_chunk", block.clone()));
                }
            }
        }
        "text_delta" => {
            if let Some(text) = text("text") {
                updates.push(chunk(
                    "agent_message_chunk",
                    json!({ "type": "text", "text": text }),
                ));
            }
        }
        "thinking_delta" => {
            if let Some(text) = text("text") {
                updates.push(chunk(
                    "agent_thought_chunk",
                    json!({ "type": "text", "text": text }),
                ));
            }
        }
        kind @ ("tool_call" | "tool_call_update") => {
            let mut update = Map::new();
            update.insert("sessionUpdate".into(), json!(kind));
            for (from, to) in [
                ("toolCallId", "toolCallId"),
                ("title", "title"),
                ("kind", "kind"),
                ("status", "status"),
                ("content", "content"),
                ("locations", "locations"),
                ("input", "rawInput"),
                ("rawOutput", "rawOutput"),
            ] {
                if let Some(value) = field(from) {
                    update.insert(to.into(), value.clone());
                }
            }
            updates.push(Value::Object(update));
        }
        "plan" => {
            if let Some(entries) = field("entries") {
                updates.push(json!({ "sessionUpdate": "plan", "entries": entries }));
            }
        }
        "usage" => {
            let mut update = json!({
                "sessionUpdate": "usage_update",
                "used": field("used"),
                "size": field("size"),
            });
            if let Some(cost) = field("cost") {
                update["cost"] = cost.clone();
            }
            updates.push(update);
        }
        "available_commands_update" => updates.push(json!({
            "sessionUpdate": "available_commands_update",
            "availableCommands": field("availableCommands"),
        })),
        "current_mode_update" => updates.push(json!({
            "sessionUpdate": "current_mode_update",
            "currentModeId": field("currentModeId"),
        })),
        "config_option_update" => updates.push(json!({
            "sessionUpdate": "config_option_update",
            "configOptions": field("configOptions"),
        })),
        "agent_update" => {
            if let Some(update) = field("update") {
                updates.push(update.clone());
            }
        }
        _ => {}
    }
    let mut meta = json!({ "seq": field("seq") });
    if let Some(turn_id) = field("turnId") {
        meta["turnId"] = turn_id.clone();
    }
    updates
        .into_iter()
        .filter_map(|update| {
            typed(json!({
                "sessionId": session_id,
                "update": update,
                "_meta": { "diminuendo": meta },
            }))
            .ok()
        })
        .collect()
}

/// `session/request_permission` for a `permission_requested` event (or a join's open
/// question, which has the same fields).
pub(crate) fn permission_request(
    session_id: &str,
    question: &Value,
) -> Option<RequestPermissionRequest> {
    let options: Vec<Value> = question
        .get("options")
        .and_then(Value::as_array)?
        .iter()
        .map(|option| {
            json!({
                "optionId": option.get("optionId"),
                "name": option.get("name"),
                "kind": option.get("kind"),
            })
        })
        .collect();
    typed(json!({
        "sessionId": session_id,
        "toolCall": {
            "toolCallId": question.get("toolCallId"),
            "title": question.get("title"),
        },
        "options": options,
        "_meta": { "diminuendo": { "questionId": question.get("questionId") } },
    }))
    .ok()
}

/// What a client whose permission request was answered by someone else sees: a
/// `tool_call_update` of the tool call, with no field changed and the resolution in `_meta`
/// (ACP has no way to withdraw a request; the client's own late answer is then ignored).
pub(crate) fn permission_resolved(
    session_id: &str,
    tool_call_id: &str,
    event: &Value,
) -> Option<SessionNotification> {
    let mut resolved = Map::new();
    for key in ["questionId", "optionId", "cancelled", "userId"] {
        if let Some(value) = event.get(key) {
            resolved.insert(key.into(), value.clone());
        }
    }
    typed(json!({
        "sessionId": session_id,
        "update": { "sessionUpdate": "tool_call_update", "toolCallId": tool_call_id },
        "_meta": { "diminuendo": { "permissionResolved": resolved, "seq": event.get("seq") } },
    }))
    .ok()
}

/// ACP's `promptCapabilities` for what an agent's `initialize` said; unknown (no agent of the
/// type has answered yet): everything, which the gateway then checks per prompt (`-32602`).
pub(crate) fn prompt_capabilities(features: Option<AgentFeatures>) -> Value {
    let features = features.unwrap_or(AgentFeatures {
        image: true,
        audio: true,
        embedded_context: true,
        ..AgentFeatures::default()
    });
    json!({
        "image": features.image,
        "audio": features.audio,
        "embeddedContext": features.embedded_context,
    })
}

/// The `initialize` result: protocol version 1, what the gateway serves, the agent types (the
/// first is the default), and the prompt capabilities of each type whose agent answered
/// `initialize` in a running session (`known`): the default type's are the advertised ones.
pub(crate) fn initialize(
    agent_types: &[String],
    known: &[(String, AgentFeatures)],
) -> Result<InitializeResponse, String> {
    let of_type = |name: &String| {
        known
            .iter()
            .find(|(known, _)| known == name)
            .map(|(_, features)| *features)
    };
    let advertised = prompt_capabilities(agent_types.first().and_then(of_type));
    let per_type: Map<String, Value> = agent_types
        .iter()
        .filter_map(|name| Some((name.clone(), prompt_capabilities(Some(of_type(name)?)))))
        .collect();
    typed(json!({
        "protocolVersion": 1,
        "agentCapabilities": {
            "loadSession": true,
            "promptCapabilities": advertised,
            "mcpCapabilities": { "http": false, "sse": false },
            "sessionCapabilities": { "list": {}, "resume": {} },
        },
        "authMethods": [],
        "agentInfo": { "name": "diminuendo", "version": env!("CARGO_PKG_VERSION") },
        "_meta": { "diminuendo": {
            "agentTypes": agent_types,
            "defaultAgentType": agent_types.first(),
            "promptCapabilities": per_type,
        } },
    }))
}

/// The modes and config options of a `session_joined` (its `agent` snapshot), as the fields of
/// ACP's `session/new`, `session/load` and `session/resume` results.
fn controls(joined: &Value) -> Map<String, Value> {
    let mut fields = Map::new();
    let Some(agent) = joined.get("agent") else {
        return fields;
    };
    if let (Some(current), Some(modes)) = (agent.get("currentModeId"), agent.get("availableModes"))
    {
        fields.insert(
            "modes".into(),
            json!({ "currentModeId": current, "availableModes": modes }),
        );
    }
    if let Some(options) = agent.get("configOptions") {
        fields.insert("configOptions".into(), options.clone());
    }
    fields
}

fn session_meta(joined: &Value, features: Option<AgentFeatures>) -> Value {
    let session = joined.get("session");
    json!({ "diminuendo": {
        "agentType": session.and_then(|s| s.get("agentType")),
        "name": session.and_then(|s| s.get("name")),
        "lastSeq": joined.get("lastSeq"),
        "epoch": joined.get("epoch"),
        "promptCapabilities": prompt_capabilities(features),
    } })
}

/// The `session/new` result for the `session_joined` of the new session (`features`: its agent
/// type's, when known; `_meta.diminuendo.promptCapabilities`).
pub(crate) fn new_session(
    joined: &Value,
    features: Option<AgentFeatures>,
) -> Result<NewSessionResponse, String> {
    let mut result = controls(joined);
    result.insert(
        "sessionId".into(),
        joined
            .get("session")
            .and_then(|session| session.get("id"))
            .cloned()
            .unwrap_or_default(),
    );
    result.insert("_meta".into(), session_meta(joined, features));
    typed(Value::Object(result))
}

/// The `session/load` result for the join that ends a load.
pub(crate) fn load_session(
    joined: &Value,
    features: Option<AgentFeatures>,
) -> Result<LoadSessionResponse, String> {
    let mut result = controls(joined);
    result.insert("_meta".into(), session_meta(joined, features));
    typed(Value::Object(result))
}

/// The `session/resume` result for its join.
pub(crate) fn resume_session(
    joined: &Value,
    features: Option<AgentFeatures>,
) -> Result<ResumeSessionResponse, String> {
    let mut result = controls(joined);
    result.insert("_meta".into(), session_meta(joined, features));
    typed(Value::Object(result))
}

/// A page of `session_list.sessions` from `offset`, with the cursor of the next page.
pub(crate) fn list_sessions(
    sessions: &[Value],
    offset: usize,
    page: usize,
) -> Result<ListSessionsResponse, String> {
    let listed: Vec<Value> = sessions
        .iter()
        .skip(offset)
        .take(page)
        .map(|session| {
            let mut info = json!({
                "sessionId": session.get("id"),
                "cwd": "/",
                "title": session.get("name"),
                "_meta": { "diminuendo": {
                    "agentType": session.get("agentType"),
                    "status": session.get("status"),
                    "createdBy": session.get("createdBy"),
                    "lastSeq": session.get("lastSeq"),
                } },
            });
            if let Some(updated) = session.get("updatedAt").and_then(Value::as_i64) {
                info["updatedAt"] = json!(iso8601(updated));
            }
            info
        })
        .collect();
    let mut result = json!({ "sessions": listed });
    if offset.saturating_add(page) < sessions.len() {
        result["nextCursor"] = json!((offset + page).to_string());
    }
    typed(result)
}

/// The `session/prompt` result of a turn that ended with `stopReason`.
pub(crate) fn prompt(stop_reason: &str, turn_id: &str) -> Result<PromptResponse, String> {
    typed(json!({
        "stopReason": stop_reason,
        "_meta": { "diminuendo": { "turnId": turn_id } },
    }))
}

/// The `session/set_config_option` result for `config_option_set`.
pub(crate) fn config_option_set(reply: &Value) -> Result<SetSessionConfigOptionResponse, String> {
    typed(json!({ "configOptions": reply.get("configOptions") }))
}

/// Unix milliseconds as an RFC 3339 UTC timestamp (`2026-01-02T03:04:05.678Z`).
pub(crate) fn iso8601(unix_ms: i64) -> String {
    let ms = unix_ms.rem_euclid(1000);
    let secs = unix_ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
