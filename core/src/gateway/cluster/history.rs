//! `get_history` (and the transcript an agent without `session/resume`/`load` gets) in cluster
//! mode: there is no turn table, so the turns are rebuilt from the session's log, read from its
//! first event (`turn_started`, the deltas, `turn_complete` or `turn_error`, `usage`).

use serde::Deserialize;
use serde_json::Value;

use super::Pending;
use crate::cluster::{ClusterCommand, LogEvent};
use crate::storage::{QueryResult, StorageCompletion, StorageError, TurnRecord};
use crate::Gateway;

/// A history read in progress: the turns so far and the page asked for.
pub(crate) struct HistoryRead {
    tenant_id: String,
    session_id: String,
    before_turn: Option<String>,
    limit: u32,
    read_to: u64,
    turns: Vec<TurnRecord>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Event {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    turn_id: Option<String>,
    #[serde(default)]
    ts: i64,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    final_text: Option<String>,
    #[serde(default)]
    final_text_truncated: bool,
    #[serde(default)]
    content: Option<Value>,
    #[serde(default)]
    used: Option<Value>,
    #[serde(default)]
    size: Option<Value>,
    #[serde(default)]
    cost: Option<Value>,
}

impl HistoryRead {
    fn take(&mut self, events: &[LogEvent]) {
        for event in events {
            self.read_to = self.read_to.max(event.seq);
            let Ok(event) = serde_json::from_slice::<Event>(&event.payload) else {
                continue;
            };
            let Some(turn_id) = event.turn_id else {
                continue;
            };
            let turn = self.turns.iter_mut().rev().find(|t| t.turn_id == turn_id);
            match (event.kind.as_str(), turn) {
                ("turn_started", None) => self.turns.push(TurnRecord {
                    turn_id,
                    user_id: event.user_id,
                    user_text: event.text.unwrap_or_default(),
                    final_text: None,
                    final_text_truncated: false,
                    stop_reason: None,
                    usage_json: None,
                    tool_calls_json: None,
                    started_at_ms: event.ts,
                    completed_at_ms: None,
                    content_json: event.content.map(|c| c.to_string()),
                }),
                ("turn_complete", Some(turn)) => {
                    turn.final_text = event.final_text;
                    turn.final_text_truncated = event.final_text_truncated;
                    turn.stop_reason = event.stop_reason;
                    turn.completed_at_ms = Some(event.ts);
                }
                ("turn_error", Some(turn)) => {
                    turn.final_text.get_or_insert_with(String::new);
                    turn.stop_reason = Some("error".to_owned());
                    turn.completed_at_ms = Some(event.ts);
                }
                ("usage", Some(turn)) => {
                    let mut usage = serde_json::Map::new();
                    for (key, value) in [
                        ("used", event.used),
                        ("size", event.size),
                        ("cost", event.cost),
                    ] {
                        if let Some(value) = value {
                            usage.insert(key.to_owned(), value);
                        }
                    }
                    turn.usage_json = Some(Value::Object(usage).to_string());
                }
                _ => {}
            }
        }
    }

    /// The page: up to `limit` turns that started before `before_turn` (or the latest), oldest
    /// first, and whether older ones exist.
    fn page(self) -> QueryResult {
        let end = match &self.before_turn {
            Some(before) => self
                .turns
                .iter()
                .position(|t| &t.turn_id == before)
                .unwrap_or(0),
            None => self.turns.len(),
        };
        let start = end.saturating_sub(self.limit as usize);
        QueryResult::History {
            turns: self.turns[start..end].to_vec(),
            has_more: start > 0,
        }
    }
}

impl Gateway {
    /// A `StorageQuery::History` in cluster mode: read the log from its start.
    pub(crate) fn history_from_log(
        &mut self,
        token: u64,
        session_id: String,
        before_turn: Option<String>,
        limit: u32,
    ) {
        let tenant_id = self
            .sessions
            .get(session_id.as_str())
            .map(|s| s.record().tenant_id.clone())
            .unwrap_or_default();
        let read = HistoryRead {
            tenant_id,
            session_id,
            before_turn,
            limit,
            read_to: 0,
            turns: Vec::new(),
        };
        self.history_fetch(token, read);
    }

    fn history_fetch(&mut self, token: u64, read: HistoryRead) {
        let limit = self.cluster.as_ref().map_or(10_000, |c| c.mode.max_fetch);
        let command = ClusterCommand::Fetch {
            token,
            tenant_id: read.tenant_id.clone(),
            session_id: read.session_id.clone(),
            after_seq: read.read_to,
            from_stream_seq: None,
            limit,
        };
        if let Some(cluster) = self.cluster.as_mut() {
            cluster
                .pending
                .insert(token, Pending::History(Box::new(read)));
        }
        self.cluster_command(command);
    }

    /// A page of the log for a history read: read on, or answer.
    pub(crate) fn history_fetched(
        &mut self,
        token: u64,
        mut read: HistoryRead,
        result: Result<(Vec<LogEvent>, bool), crate::cluster::ClusterError>,
        now: std::time::Instant,
    ) {
        let result = match result {
            Ok((events, has_more)) => {
                read.take(&events);
                if has_more && !events.is_empty() {
                    self.history_fetch(token, read);
                    return;
                }
                Ok(read.page())
            }
            Err(error) => Err(StorageError::Io {
                database: "cluster log".to_owned(),
                message: error.to_string(),
            }),
        };
        self.handle_storage(StorageCompletion::QueryResult { token, result }, now);
    }
}
