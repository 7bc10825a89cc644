//! Start-up recovery: statuses back to `inactive`, sequence counters from the event logs, new
//! epochs after an unclean stop.

use crate::config::UncleanEpochPolicy;
use crate::medium::take_clean_marker;
use crate::paths::{registry_rel, session_rel, validate_id};
use crate::schema::{self, io_err, sqlite_err, DbKind, HandleOptions};
use diminuendo_core::storage::{
    QueryResult, RecoveryReport, SessionResume, StorageError, StorageQuery,
};
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// A new epoch, different from `old`: 64 bits from the operating system's CSPRNG, as 16 hex
/// digits like the core's own epochs, so an epoch cannot be guessed (and two never meet in
/// practice; the result is also checked against `old`). Should the random source fail (the
/// gateway checks it before opening storage, so it does not), wall-clock nanoseconds, the pid and
/// a counter keep it unique.
pub fn fresh_epoch(old: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    loop {
        let mut bytes = [0u8; 8];
        let epoch = match getrandom::fill(&mut bytes) {
            Ok(()) => format!("{:016x}", u64::from_le_bytes(bytes)),
            Err(error) => {
                tracing::error!(%error, "the random source failed; a clock-based epoch instead");
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0);
                let n = COUNTER.fetch_add(1, Ordering::Relaxed);
                format!("{nanos:x}-{:x}-{n:x}", std::process::id())
            }
        };
        if epoch != old {
            return epoch;
        }
    }
}

fn dir_names(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// The message of the `turn_error` that closes a turn a crash cut off.
pub const INTERRUPTED_MESSAGE: &str = "the gateway stopped before the turn ended";

/// What recovery found in (and did to) one session log.
struct LogRecovery {
    /// The highest stored seq after recovery (0 without a log).
    last_seq: u64,
    /// A turn was closed with `turn_error` `INTERRUPTED`.
    closed_turn: bool,
}

fn unix_ms_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Reads a session log's `MAX(seq)`; after an unclean stop also closes its last turn if it has
/// no end (see [`close_interrupted_turn`]).
fn recover_log(
    data_dir: &Path,
    session_id: &str,
    clean: bool,
    opts: &HandleOptions,
) -> Result<LogRecovery, StorageError> {
    let rel = session_rel(session_id)?;
    let name = rel.display().to_string();
    let path = data_dir.join(&rel);
    if !path.exists() {
        return Ok(LogRecovery {
            last_seq: 0,
            closed_turn: false,
        });
    }
    let mut conn = schema::open_rw(&path, DbKind::Session, &name, opts)?;
    let result = (|| {
        let max: i64 =
            conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))?;
        let mut last_seq = u64::try_from(max).unwrap_or(0);
        let mut closed_turn = false;
        if !clean && close_interrupted_turn(&mut conn, session_id, last_seq)? {
            last_seq += 1;
            closed_turn = true;
        }
        Ok(LogRecovery {
            last_seq,
            closed_turn,
        })
    })()
    .map_err(|e: rusqlite::Error| sqlite_err(&name, e));
    schema::close(conn, &name);
    result
}

/// Closes the turn a crash cut off: when the log's last `turn_started` has no `turn_complete` or
/// `turn_error` after it, appends a `turn_error` with code `INTERRUPTED` at `last_seq + 1`, its
/// payload written by the core's own writer (byte-compatible with a published one), and ends the
/// turn's history row (`stop_reason` `error`, as the core writes for a `turn_error`; the row is
/// created from the `turn_started` event if the crash lost it). History rows left open without
/// any event are ended too. One transaction. Returns whether an event was appended.
fn close_interrupted_turn(
    conn: &mut Connection,
    session_id: &str,
    last_seq: u64,
) -> rusqlite::Result<bool> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let started: Option<(i64, Option<String>, String, i64)> = tx
        .query_row(
            "SELECT seq, turn_id, payload, ts FROM events WHERE type = 'turn_started'
             ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()?;
    let last_ts: i64 = tx.query_row("SELECT COALESCE(MAX(ts), 0) FROM events", [], |r| r.get(0))?;
    let now = unix_ms_now().max(last_ts);
    let mut appended = false;
    if let Some((seq, Some(turn_id), payload, started_at)) = started {
        let ended: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM events WHERE seq > ?1 AND turn_id = ?2
                 AND type IN ('turn_complete', 'turn_error'))",
            params![seq, turn_id],
            |r| r.get(0),
        )?;
        if !ended {
            let next = last_seq + 1;
            let payload_out = diminuendo_core::session::turn_error_payload(
                session_id,
                next,
                now,
                &turn_id,
                diminuendo_core::session::INTERRUPTED,
                INTERRUPTED_MESSAGE,
            );
            tx.execute(
                "INSERT INTO events (seq, type, turn_id, payload, ts)
                 VALUES (?1, 'turn_error', ?2, ?3, ?4)",
                params![next, turn_id, RawText(&payload_out), now],
            )?;
            // The history row, if the crash lost it: from the `turn_started` event.
            let (user_text, user_id) = turn_started_fields(&payload);
            tx.execute(
                "INSERT OR IGNORE INTO turns (turn_id, user_id, user_text, started_at)
                 VALUES (?1, ?2, ?3, ?4)",
                params![turn_id, user_id, user_text, started_at],
            )?;
            appended = true;
        }
    }
    tx.execute(
        "UPDATE turns SET stop_reason = 'error', completed_at = ?1,
             final_text = COALESCE(final_text, '')
         WHERE completed_at IS NULL",
        params![now],
    )?;
    tx.commit()?;
    Ok(appended)
}

/// `text` and `userId` of a `turn_started` payload (empty / none if unreadable).
fn turn_started_fields(payload: &str) -> (String, Option<String>) {
    match serde_json::from_str::<serde_json::Value>(payload) {
        Ok(v) => (
            v["text"].as_str().unwrap_or_default().to_owned(),
            v["userId"].as_str().map(str::to_owned),
        ),
        Err(_) => (String::new(), None),
    }
}

/// Binds bytes as SQLite TEXT without re-encoding.
struct RawText<'a>(&'a [u8]);

impl rusqlite::ToSql for RawText<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(rusqlite::types::ToSqlOutput::Borrowed(
            rusqlite::types::ValueRef::Text(self.0),
        ))
    }
}

struct Row {
    id: String,
    status: String,
    last_seq: i64,
    epoch: String,
}

fn recover_tenant(
    data_dir: &Path,
    tenant_id: &str,
    clean: bool,
    policy: UncleanEpochPolicy,
    opts: &HandleOptions,
    report: &mut RecoveryReport,
    known: &mut HashSet<String>,
) -> Result<(), StorageError> {
    let rel = registry_rel(tenant_id)?;
    let name = rel.display().to_string();
    let path = data_dir.join(&rel);
    if !path.exists() {
        return Ok(());
    }
    let mut conn: Connection = schema::open_rw(&path, DbKind::Registry, &name, opts)?;
    let rows: Vec<Row> = {
        let mut st = conn
            .prepare("SELECT id, status, last_seq, epoch FROM sessions ORDER BY created_at, id")
            .map_err(|e| sqlite_err(&name, e))?;
        let it = st
            .query_map([], |r| {
                Ok(Row {
                    id: r.get(0)?,
                    status: r.get(1)?,
                    last_seq: r.get(2)?,
                    epoch: r.get(3)?,
                })
            })
            .map_err(|e| sqlite_err(&name, e))?;
        it.collect::<Result<_, _>>()
            .map_err(|e| sqlite_err(&name, e))?
    };
    report.tenants += 1;
    let tx = conn.transaction().map_err(|e| sqlite_err(&name, e))?;
    for row in rows {
        known.insert(row.id.clone());
        report.sessions += 1;
        let stored_last = u64::try_from(row.last_seq).unwrap_or(0);
        let (log_last, log_ok, closed_turn) = match recover_log(data_dir, &row.id, clean, opts) {
            Ok(log) => (log.last_seq, true, log.closed_turn),
            Err(e) => {
                tracing::error!(session = %row.id, error = %e, "recovery could not read a session log");
                report.failed.push(e);
                (stored_last, false, false)
            }
        };
        if closed_turn {
            report.turns_interrupted += 1;
        }
        let was_active = row.status != "inactive";
        // A closed turn is a new event after what clients saw: it comes under a new epoch.
        let new_epoch = !clean
            && (policy == UncleanEpochPolicy::AllSessions
                || was_active
                || stored_last > log_last
                || !log_ok
                || closed_turn);
        let epoch = if new_epoch {
            fresh_epoch(&row.epoch)
        } else {
            row.epoch.clone()
        };
        if was_active {
            report.sessions_deactivated += 1;
        }
        if new_epoch {
            report.sessions_new_epoch += 1;
        }
        if log_last != stored_last {
            report.last_seq_corrected += 1;
        }
        if was_active || new_epoch || log_last != stored_last {
            tx.execute(
                "UPDATE sessions SET status = 'inactive', last_seq = ?2, epoch = ?3 WHERE id = ?1",
                params![row.id, log_last, epoch],
            )
            .map_err(|e| sqlite_err(&name, e))?;
        }
        report.resume.push(SessionResume {
            tenant_id: tenant_id.to_string(),
            session_id: row.id,
            last_seq: log_last,
            epoch,
            new_epoch,
        });
    }
    tx.commit().map_err(|e| sqlite_err(&name, e))?;
    // The core keeps the registry in memory (it is the registry's only writer), so recovery
    // hands it every row as recovered.
    let listed = crate::reader::run_query(
        &conn,
        &StorageQuery::ListSessions {
            tenant_id: tenant_id.to_string(),
            include_archived: true,
        },
    )
    .map_err(|e| sqlite_err(&name, e))?;
    if let QueryResult::Sessions(records) = listed {
        report.records.extend(records);
    }
    schema::close(conn, &name);
    Ok(())
}

/// Removes the session directories no registry row names; returns how many went. Such a
/// directory can only come from a create that was never acknowledged (its row is committed
/// before its log, and its id is only known once the row is) or from a delete whose directory
/// removal a crash cut off. Entries that are not valid session ids are not ours: left alone.
fn remove_orphans(data_dir: &Path, orphans: &[String]) -> usize {
    let sessions = data_dir.join("sessions");
    let mut removed = 0;
    for name in orphans {
        if validate_id("session id", name).is_err() {
            continue;
        }
        match std::fs::remove_dir_all(sessions.join(name)) {
            Ok(()) => removed += 1,
            Err(e) => {
                tracing::error!(session = %name, error = %e, "could not remove an orphan session directory")
            }
        }
    }
    if removed > 0 {
        if let Err(e) = std::fs::File::open(&sessions).and_then(|d| d.sync_all()) {
            tracing::warn!(error = %e, "could not sync the sessions directory");
        }
    }
    removed
}

/// Runs before the threads start; nothing else touches the files meanwhile.
pub fn recover(
    data_dir: &Path,
    policy: UncleanEpochPolicy,
    opts: &HandleOptions,
) -> Result<RecoveryReport, StorageError> {
    let dd = data_dir.display().to_string();
    for sub in ["tenants", "sessions"] {
        std::fs::create_dir_all(data_dir.join(sub)).map_err(|e| io_err(&dd, e))?;
    }
    let clean = take_clean_marker(data_dir).map_err(|e| io_err(&dd, e))?;
    let mut report = RecoveryReport {
        clean_shutdown: clean,
        ..RecoveryReport::default()
    };
    let mut known = HashSet::new();
    let mut registries_failed = 0usize;
    let mut tenants = dir_names(&data_dir.join("tenants"));
    tenants.sort();
    for tenant in tenants {
        if validate_id("tenant id", &tenant).is_err() {
            tracing::warn!(entry = %tenant, "ignoring a tenants/ entry that is not a valid tenant id");
            continue;
        }
        if let Err(e) = recover_tenant(
            data_dir,
            &tenant,
            clean,
            policy,
            opts,
            &mut report,
            &mut known,
        ) {
            tracing::error!(tenant = %tenant, error = %e, "recovery of a tenant registry failed");
            report.failed.push(e);
            registries_failed += 1;
        }
    }
    let orphans: Vec<String> = dir_names(&data_dir.join("sessions"))
        .into_iter()
        .filter(|s| !known.contains(s))
        .collect();
    report.orphan_session_dirs = orphans.len();
    if !orphans.is_empty() {
        if registries_failed > 0 {
            // Their rows may be in the registry that could not be read: keep them.
            tracing::warn!(
                orphans = orphans.len(),
                "session directories with no registry row kept: some registry could not be read"
            );
        } else {
            report.orphan_session_dirs_removed = remove_orphans(data_dir, &orphans);
            tracing::warn!(
                found = orphans.len(),
                removed = report.orphan_session_dirs_removed,
                "removed session directories that no registry row names (creates never acknowledged, or deletes cut off)"
            );
        }
    }
    tracing::info!(
        clean = report.clean_shutdown,
        tenants = report.tenants,
        sessions = report.sessions,
        deactivated = report.sessions_deactivated,
        new_epochs = report.sessions_new_epoch,
        orphans = report.orphan_session_dirs,
        orphans_removed = report.orphan_session_dirs_removed,
        turns_interrupted = report.turns_interrupted,
        failed = report.failed.len(),
        "storage recovery done"
    );
    Ok(report)
}
