//! The reader thread: answers queries on its own read-only handles.

use crate::database::{error_database, query_target};
use crate::lru::Lru;
use crate::paths::database_rel;
use crate::schema::{self, sqlite_err, DbKind, HandleOptions};
use crate::shared::{Completer, Stats};
use bytes::Bytes;
use crossbeam_channel::Receiver;
use diminuendo_core::storage::{
    DatabaseId, QueryResult, SessionRecord, SessionStatus, StorageCompletion, StorageError,
    StorageQuery, StoredEvent, TurnRecord,
};
use rusqlite::{params, Connection, OptionalExtension, Row};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// What the writer forwards to the reader, in order.
pub enum ReaderMsg {
    Query {
        token: u64,
        query: StorageQuery,
        /// What the query costs in the storage queue; released once it is answered.
        cost: u64,
    },
    /// Close the handle of a database that is being deleted.
    Evict(DatabaseId),
    Shutdown,
}

pub struct Reader {
    pub rx: Receiver<ReaderMsg>,
    pub completer: Completer,
    pub stats: Arc<Stats>,
    pub data_dir: PathBuf,
    pub opts: HandleOptions,
    pub handles: Lru<DatabaseId, Connection>,
}

const SESSION_COLUMNS: &str = "id, tenant_id, name, agent_type, status, archived, created_by, \
     created_at, updated_at, last_seq, epoch, acp_session_id";

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

pub fn session_from_row(row: &Row<'_>) -> rusqlite::Result<SessionRecord> {
    let status: String = row.get(4)?;
    let status = SessionStatus::parse(&status).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            4,
            rusqlite::types::Type::Text,
            format!("unknown session status {status:?}").into(),
        )
    })?;
    Ok(SessionRecord {
        id: row.get(0)?,
        tenant_id: row.get(1)?,
        name: row.get(2)?,
        agent_type: row.get(3)?,
        status,
        archived: row.get(5)?,
        created_by: row.get(6)?,
        created_at_ms: row.get(7)?,
        updated_at_ms: row.get(8)?,
        last_seq: to_u64(row.get(9)?),
        epoch: row.get(10)?,
        acp_session_id: row.get(11)?,
    })
}

fn event_from_row(row: &Row<'_>) -> rusqlite::Result<StoredEvent> {
    let payload = match row.get_ref(3)? {
        rusqlite::types::ValueRef::Text(b) | rusqlite::types::ValueRef::Blob(b) => {
            Bytes::copy_from_slice(b)
        }
        _ => Bytes::new(),
    };
    Ok(StoredEvent {
        seq: to_u64(row.get(0)?),
        event_type: row.get(1)?,
        turn_id: row.get(2)?,
        payload,
        ts_ms: row.get(4)?,
    })
}

fn turn_from_row(row: &Row<'_>) -> rusqlite::Result<TurnRecord> {
    Ok(TurnRecord {
        turn_id: row.get(0)?,
        user_id: row.get(1)?,
        user_text: row.get(2)?,
        final_text: row.get(3)?,
        final_text_truncated: row.get(4)?,
        stop_reason: row.get(5)?,
        usage_json: row.get(6)?,
        tool_calls_json: row.get(7)?,
        started_at_ms: row.get(8)?,
        completed_at_ms: row.get(9)?,
        content_json: row.get(10)?,
    })
}

/// Runs a query on an open handle (used by the reader thread and by tests).
pub fn run_query(conn: &Connection, query: &StorageQuery) -> rusqlite::Result<QueryResult> {
    match query {
        StorageQuery::ListSessions {
            include_archived, ..
        } => {
            let mut st = conn.prepare_cached(&format!(
                "SELECT {SESSION_COLUMNS} FROM sessions WHERE (?1 OR archived = 0) \
                 ORDER BY created_at, id"
            ))?;
            let rows = st.query_map(params![include_archived], session_from_row)?;
            Ok(QueryResult::Sessions(rows.collect::<Result<_, _>>()?))
        }
        StorageQuery::LoadSession { session_id, .. } => {
            let mut st = conn.prepare_cached(&format!(
                "SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?1"
            ))?;
            Ok(QueryResult::Session(
                st.query_row(params![session_id], session_from_row)
                    .optional()?,
            ))
        }
        StorageQuery::EventsAfter {
            after_seq, limit, ..
        } => {
            let after = i64::try_from(*after_seq).unwrap_or(i64::MAX);
            let mut st = conn.prepare_cached(
                "SELECT seq, type, turn_id, payload, ts FROM events WHERE seq > ?1 \
                 ORDER BY seq LIMIT ?2",
            )?;
            let rows = st.query_map(params![after, i64::from(*limit) + 1], event_from_row)?;
            let mut events: Vec<StoredEvent> = rows.collect::<Result<_, _>>()?;
            let has_more = events.len() > *limit as usize;
            events.truncate(*limit as usize);
            Ok(QueryResult::Events { events, has_more })
        }
        StorageQuery::History {
            before_turn, limit, ..
        } => {
            let before_idx = match before_turn {
                None => i64::MAX,
                Some(turn) => {
                    let mut st = conn.prepare_cached("SELECT idx FROM turns WHERE turn_id = ?1")?;
                    match st.query_row(params![turn], |r| r.get(0)).optional()? {
                        Some(idx) => idx,
                        None => {
                            return Ok(QueryResult::History {
                                turns: Vec::new(),
                                has_more: false,
                            })
                        }
                    }
                }
            };
            let mut st = conn.prepare_cached(
                "SELECT turn_id, user_id, user_text, final_text, final_text_truncated, stop_reason,
                        usage, tool_calls, started_at, completed_at, content
                 FROM turns WHERE idx < ?1 ORDER BY idx DESC LIMIT ?2",
            )?;
            let rows = st.query_map(params![before_idx, i64::from(*limit) + 1], turn_from_row)?;
            let mut turns: Vec<TurnRecord> = rows.collect::<Result<_, _>>()?;
            let has_more = turns.len() > *limit as usize;
            turns.truncate(*limit as usize);
            turns.reverse();
            Ok(QueryResult::History { turns, has_more })
        }
    }
}

/// What a query answers when its database does not exist yet.
fn empty_result(query: &StorageQuery) -> QueryResult {
    match query {
        StorageQuery::ListSessions { .. } => QueryResult::Sessions(Vec::new()),
        StorageQuery::LoadSession { .. } => QueryResult::Session(None),
        StorageQuery::EventsAfter { .. } => QueryResult::Events {
            events: Vec::new(),
            has_more: false,
        },
        StorageQuery::History { .. } => QueryResult::History {
            turns: Vec::new(),
            has_more: false,
        },
    }
}

impl Reader {
    pub fn run(mut self) {
        while let Ok(msg) = self.rx.recv() {
            match msg {
                ReaderMsg::Query { token, query, cost } => {
                    let result = self.answer(&query);
                    self.stats.release(cost);
                    if let Err(error) = &result {
                        tracing::warn!(%error, "storage query failed");
                    }
                    self.completer
                        .send(StorageCompletion::QueryResult { token, result });
                }
                ReaderMsg::Evict(db) => self.close(&db),
                ReaderMsg::Shutdown => break,
            }
        }
        for (db, conn) in self.handles.drain() {
            schema::close(conn, &error_database(&db));
        }
        self.stats.reader_handles.store(0, Ordering::Relaxed);
    }

    fn close(&mut self, db: &DatabaseId) {
        if let Some(conn) = self.handles.remove(db) {
            schema::close(conn, &error_database(db));
        }
        self.stats
            .reader_handles
            .store(self.handles.len() as u64, Ordering::Relaxed);
    }

    fn answer(&mut self, query: &StorageQuery) -> Result<QueryResult, StorageError> {
        let db = query_target(query);
        let rel = database_rel(&db)?;
        let name = rel.display().to_string();
        if !self.handles.contains(&db) {
            let path = self.data_dir.join(&rel);
            if !path.exists() {
                return Ok(empty_result(query));
            }
            let kind = match db {
                DatabaseId::Registry { .. } => DbKind::Registry,
                DatabaseId::Session { .. } => DbKind::Session,
            };
            let conn = schema::open_ro(&path, kind, &name, &self.opts)?;
            if let Some((old, conn)) = self.handles.insert(db.clone(), conn) {
                schema::close(conn, &error_database(&old));
                self.stats.reader_evictions.fetch_add(1, Ordering::Relaxed);
            }
            self.stats
                .reader_handles
                .store(self.handles.len() as u64, Ordering::Relaxed);
        }
        let conn = self.handles.get_mut(&db).ok_or(StorageError::Closed)?;
        match run_query(conn, query) {
            Ok(r) => Ok(r),
            Err(e) => {
                // Don't keep a handle that just failed (the file may have been replaced).
                self.close(&db);
                Err(sqlite_err(&name, e))
            }
        }
    }
}
