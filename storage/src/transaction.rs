//! One group of writes applied to one database in one transaction: the SQL of each write
//! command, which failures refuse one command and which abort the group, and what the group did
//! (for the writer to answer its `CommitNow` markers and count).

use diminuendo_core::storage::StorageCommand;
use rusqlite::{params, Connection, ErrorCode};

/// What one group's transaction did.
pub(crate) struct GroupOutcome {
    pub(crate) committed: usize,
    /// Of `committed`, how many were events.
    pub(crate) events: usize,
    pub(crate) failed: usize,
    pub(crate) error: Option<rusqlite::Error>,
    pub(crate) deleted_sessions: Vec<String>,
    /// Each `CommitNow` of the group, with the failure of a write before it (since the previous
    /// marker), if any.
    pub(crate) markers: Vec<(u64, Option<String>)>,
    /// A write after the group's last marker (or in a group without one) failed.
    pub(crate) tail_failed: bool,
}

/// A failure that aborts the whole transaction (as opposed to one refused command).
fn aborts_transaction(e: &rusqlite::Error) -> bool {
    match e {
        rusqlite::Error::SqliteFailure(f, _) => f.code != ErrorCode::ConstraintViolation,
        rusqlite::Error::ToSqlConversionFailure(_) | rusqlite::Error::InvalidParameterCount(..) => {
            false
        }
        _ => true,
    }
}

/// Binds bytes as SQLite TEXT without re-encoding, so stored payloads are byte-identical.
struct RawText<'a>(&'a [u8]);

impl rusqlite::ToSql for RawText<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(rusqlite::types::ToSqlOutput::Borrowed(
            rusqlite::types::ValueRef::Text(self.0),
        ))
    }
}

/// Executes one write inside the group's transaction. Returns a session id to delete after commit.
fn apply(tx: &Connection, cmd: &StorageCommand) -> rusqlite::Result<Option<String>> {
    match cmd {
        StorageCommand::AppendEvent { event, .. } => {
            let mut st = tx.prepare_cached(
                "INSERT INTO events (seq, type, turn_id, payload, ts) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            st.execute(params![
                event.seq,
                event.event_type,
                event.turn_id,
                RawText(&event.payload),
                event.ts_ms
            ])?;
        }
        StorageCommand::UpsertTurn { turn, .. } => {
            let mut st = tx.prepare_cached(
                "INSERT INTO turns (turn_id, user_id, user_text, final_text, final_text_truncated,
                    stop_reason, usage, tool_calls, started_at, completed_at, content)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                 ON CONFLICT (turn_id) DO UPDATE SET user_id = excluded.user_id,
                    user_text = excluded.user_text, final_text = excluded.final_text,
                    final_text_truncated = excluded.final_text_truncated,
                    stop_reason = excluded.stop_reason, usage = excluded.usage,
                    tool_calls = excluded.tool_calls, started_at = excluded.started_at,
                    completed_at = excluded.completed_at, content = excluded.content",
            )?;
            st.execute(params![
                turn.turn_id,
                turn.user_id,
                turn.user_text,
                turn.final_text,
                turn.final_text_truncated,
                turn.stop_reason,
                turn.usage_json,
                turn.tool_calls_json,
                turn.started_at_ms,
                turn.completed_at_ms,
                turn.content_json
            ])?;
        }
        StorageCommand::UpsertSession { session: s } => {
            let mut st = tx.prepare_cached(
                "INSERT INTO sessions (id, tenant_id, name, agent_type, status, archived,
                    created_by, created_at, updated_at, last_seq, epoch, acp_session_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
                 ON CONFLICT (id) DO UPDATE SET tenant_id = excluded.tenant_id,
                    name = excluded.name, agent_type = excluded.agent_type,
                    status = excluded.status, archived = excluded.archived,
                    created_by = excluded.created_by, created_at = excluded.created_at,
                    updated_at = excluded.updated_at, last_seq = excluded.last_seq,
                    epoch = excluded.epoch, acp_session_id = excluded.acp_session_id",
            )?;
            st.execute(params![
                s.id,
                s.tenant_id,
                s.name,
                s.agent_type,
                s.status.as_str(),
                s.archived,
                s.created_by,
                s.created_at_ms,
                s.updated_at_ms,
                s.last_seq,
                s.epoch,
                s.acp_session_id
            ])?;
        }
        StorageCommand::DeleteSession { session_id, .. } => {
            let mut st = tx.prepare_cached("DELETE FROM sessions WHERE id = ?1")?;
            if st.execute(params![session_id])? > 0 {
                return Ok(Some(session_id.clone()));
            }
        }
        StorageCommand::UpsertMember { member: m } => {
            let mut st = tx.prepare_cached(
                "INSERT INTO tenant_members (tenant_id, user_id, role, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (tenant_id, user_id) DO UPDATE SET role = excluded.role,
                    created_at = excluded.created_at, updated_at = excluded.updated_at",
            )?;
            st.execute(params![
                m.tenant_id,
                m.user_id,
                m.role,
                m.created_at_ms,
                m.updated_at_ms
            ])?;
        }
        StorageCommand::DeleteMember { tenant_id, user_id } => {
            let mut st = tx.prepare_cached(
                "DELETE FROM tenant_members WHERE tenant_id = ?1 AND user_id = ?2",
            )?;
            st.execute(params![tenant_id, user_id])?;
        }
        StorageCommand::Flush { .. }
        | StorageCommand::Shutdown { .. }
        | StorageCommand::Query { .. }
        | StorageCommand::CommitNow { .. } => {}
    }
    Ok(None)
}

/// Runs one group in one transaction. Refused commands (constraint violations, unrepresentable
/// values) are skipped and counted; anything else rolls the whole group back. `CommitNow`
/// markers are not rows: they collect the failures of the writes before them.
pub(crate) fn commit_group(conn: &mut Connection, cmds: &[StorageCommand]) -> GroupOutcome {
    let tokens = || {
        cmds.iter().filter_map(|c| match c {
            StorageCommand::CommitNow { token, .. } => Some(*token),
            _ => None,
        })
    };
    let writes = cmds
        .iter()
        .filter(|c| !matches!(c, StorageCommand::CommitNow { .. }))
        .count();
    let tail_writes = cmds
        .iter()
        .rev()
        .take_while(|c| !matches!(c, StorageCommand::CommitNow { .. }))
        .count();
    let mut out = GroupOutcome {
        committed: 0,
        events: 0,
        failed: 0,
        error: None,
        deleted_sessions: Vec::new(),
        markers: Vec::new(),
        tail_failed: false,
    };
    let abort = |mut out: GroupOutcome, e: rusqlite::Error| {
        let message = e.to_string();
        out.failed = writes;
        out.committed = 0;
        out.events = 0;
        out.deleted_sessions.clear();
        out.markers = tokens().map(|t| (t, Some(message.clone()))).collect();
        out.tail_failed = tail_writes > 0;
        out.error = Some(e);
        out
    };
    let tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => return abort(out, e),
    };
    let mut refused: Option<String> = None;
    for cmd in cmds {
        if let StorageCommand::CommitNow { token, .. } = cmd {
            out.markers.push((*token, refused.take()));
            continue;
        }
        match apply(&tx, cmd) {
            Ok(deleted) => {
                out.committed += 1;
                if matches!(cmd, StorageCommand::AppendEvent { .. }) {
                    out.events += 1;
                }
                out.deleted_sessions.extend(deleted);
            }
            Err(e) if !aborts_transaction(&e) => {
                out.failed += 1;
                refused.get_or_insert_with(|| e.to_string());
                out.error.get_or_insert(e);
            }
            Err(e) => {
                // Dropping `tx` rolls back.
                drop(tx);
                return abort(out, e);
            }
        }
    }
    out.tail_failed = refused.is_some();
    if let Err(e) = tx.commit() {
        return abort(out, e);
    }
    out
}
