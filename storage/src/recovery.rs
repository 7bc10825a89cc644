//! Start-up recovery: statuses back to `inactive`, sequence counters from the event logs, new
//! epochs after an unclean stop.

use crate::config::UncleanEpochPolicy;
use crate::paths::{registry_rel, session_rel, validate_id};
use crate::schema::{self, io_err, sqlite_err, DbKind, HandleOptions};
use crate::writer::take_clean_marker;
use diminuendo_core::storage::{
    QueryResult, RecoveryReport, SessionResume, StorageError, StorageQuery,
};
use rusqlite::{params, Connection};
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

/// The highest stored seq of a session (0 without a log).
fn log_max_seq(
    data_dir: &Path,
    session_id: &str,
    opts: &HandleOptions,
) -> Result<u64, StorageError> {
    let rel = session_rel(session_id)?;
    let name = rel.display().to_string();
    let path = data_dir.join(&rel);
    if !path.exists() {
        return Ok(0);
    }
    let conn = schema::open_rw(&path, DbKind::Session, &name, opts)?;
    let max: i64 = conn
        .query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))
        .map_err(|e| sqlite_err(&name, e))?;
    schema::close(conn, &name);
    Ok(u64::try_from(max).unwrap_or(0))
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
        let (log_last, log_ok) = match log_max_seq(data_dir, &row.id, opts) {
            Ok(n) => (n, true),
            Err(e) => {
                tracing::error!(session = %row.id, error = %e, "recovery could not read a session log");
                report.failed.push(e);
                (stored_last, false)
            }
        };
        let was_active = row.status != "inactive";
        let new_epoch = !clean
            && (policy == UncleanEpochPolicy::AllSessions
                || was_active
                || stored_last > log_last
                || !log_ok);
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
        }
    }
    report.orphan_session_dirs = dir_names(&data_dir.join("sessions"))
        .into_iter()
        .filter(|s| !known.contains(s))
        .count();
    tracing::info!(
        clean = report.clean_shutdown,
        tenants = report.tenants,
        sessions = report.sessions,
        deactivated = report.sessions_deactivated,
        new_epochs = report.sessions_new_epoch,
        orphans = report.orphan_session_dirs,
        failed = report.failed.len(),
        "storage recovery done"
    );
    Ok(report)
}
