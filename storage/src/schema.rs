//! Schemas, migrations through `PRAGMA user_version`, and opening handles.
//!
//! Each kind of database has a list of migrations; migration `i` (0-based) takes a file from
//! version `i` to `i + 1`, so the current version is the list's length. Opening a file for
//! writing reads `user_version` *before* changing anything: a newer file is refused untouched;
//! an older one is migrated step by step, each step in its own transaction with the version bump.

use crate::config::Synchronous;
use diminuendo_core::storage::StorageError;
use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use std::path::Path;
use std::time::Duration;

/// The registry of one tenant: its sessions (SessionMeta) and members.
pub const REGISTRY_MIGRATIONS: &[&str] = &[
    // v1
    "CREATE TABLE sessions (
        id          TEXT PRIMARY KEY NOT NULL,
        tenant_id   TEXT NOT NULL,
        name        TEXT NOT NULL,
        agent_type  TEXT NOT NULL,
        status      TEXT NOT NULL CHECK (status IN
                    ('inactive','activating','ready','running','waiting','deactivating','error')),
        archived    INTEGER NOT NULL DEFAULT 0 CHECK (archived IN (0, 1)),
        created_by  TEXT NOT NULL,
        created_at  INTEGER NOT NULL,
        updated_at  INTEGER NOT NULL,
        last_seq    INTEGER NOT NULL DEFAULT 0,
        epoch       TEXT NOT NULL
    );
    CREATE INDEX sessions_by_created ON sessions (created_at, id);
    CREATE TABLE tenant_members (
        tenant_id   TEXT NOT NULL,
        user_id     TEXT NOT NULL,
        role        TEXT NOT NULL,
        created_at  INTEGER NOT NULL,
        updated_at  INTEGER NOT NULL,
        PRIMARY KEY (tenant_id, user_id)
    );",
    // v2: the agent's own ACP session id (`session/new`'s answer), so a later activation can
    // reopen it with `session/resume` or `session/load`. NULL until the agent first started.
    "ALTER TABLE sessions ADD COLUMN acp_session_id TEXT;",
];

/// The log and history of one session.
pub const SESSION_MIGRATIONS: &[&str] = &[
    // v1. `payload` holds the exact published JSON text (bound as text, byte for byte).
    "CREATE TABLE events (
        seq      INTEGER PRIMARY KEY NOT NULL,
        type     TEXT NOT NULL,
        turn_id  TEXT,
        payload  TEXT NOT NULL,
        ts       INTEGER NOT NULL
    );
    CREATE TABLE turns (
        idx                   INTEGER PRIMARY KEY AUTOINCREMENT,
        turn_id               TEXT NOT NULL UNIQUE,
        user_id               TEXT,
        user_text             TEXT NOT NULL,
        final_text            TEXT,
        final_text_truncated  INTEGER NOT NULL DEFAULT 0,
        stop_reason           TEXT,
        usage                 TEXT,
        tool_calls            TEXT,
        started_at            INTEGER NOT NULL,
        completed_at          INTEGER
    );",
    // v2: the content blocks (images, resources) the turn's prompt carried besides its text,
    // as JSON text (an array); NULL for a text-only prompt.
    "ALTER TABLE turns ADD COLUMN content TEXT;",
];

/// Which kind of database a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DbKind {
    Registry,
    Session,
}

impl DbKind {
    pub fn migrations(self) -> &'static [&'static str] {
        match self {
            DbKind::Registry => REGISTRY_MIGRATIONS,
            DbKind::Session => SESSION_MIGRATIONS,
        }
    }
}

/// The settings every handle gets.
#[derive(Debug, Clone, Copy)]
pub struct HandleOptions {
    pub synchronous: Synchronous,
    pub busy_timeout: Duration,
    pub statement_cache: usize,
}

pub fn sqlite_err(database: &str, e: rusqlite::Error) -> StorageError {
    StorageError::Sqlite {
        database: database.to_string(),
        message: e.to_string(),
    }
}

pub fn io_err(database: &str, e: std::io::Error) -> StorageError {
    StorageError::Io {
        database: database.to_string(),
        message: e.to_string(),
    }
}

fn user_version(conn: &Connection, database: &str) -> Result<i64, StorageError> {
    conn.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))
        .map_err(|e| sqlite_err(database, e))
}

/// Migrates `conn` to `migrations.len()`. Refuses a newer file without touching it.
pub fn migrate(
    conn: &mut Connection,
    migrations: &[&str],
    database: &str,
) -> Result<(), StorageError> {
    let supported = migrations.len() as i64;
    let found = user_version(conn, database)?;
    if found > supported {
        return Err(StorageError::NewerSchema {
            database: database.to_string(),
            found,
            supported,
        });
    }
    if found == supported {
        return Ok(());
    }
    for (i, sql) in migrations.iter().enumerate().skip(found.max(0) as usize) {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| sqlite_err(database, e))?;
        // Someone else may have migrated meanwhile: re-read under the write lock.
        let now = user_version(&tx, database)?;
        if now > i as i64 {
            continue;
        }
        tx.execute_batch(sql).map_err(|e| sqlite_err(database, e))?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)
            .map_err(|e| sqlite_err(database, e))?;
        tx.commit().map_err(|e| sqlite_err(database, e))?;
    }
    Ok(())
}

/// Opens (creating it and its directory if needed) a database for writing: version checked
/// first, then WAL, `synchronous`, busy timeout, foreign keys, then migrations.
pub fn open_rw(
    path: &Path,
    kind: DbKind,
    database: &str,
    opts: &HandleOptions,
) -> Result<Connection, StorageError> {
    open_rw_with(path, kind.migrations(), database, opts)
}

pub fn open_rw_with(
    path: &Path,
    migrations: &[&str],
    database: &str,
    opts: &HandleOptions,
) -> Result<Connection, StorageError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io_err(database, e))?;
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags(path, flags).map_err(|e| sqlite_err(database, e))?;
    conn.busy_timeout(opts.busy_timeout)
        .map_err(|e| sqlite_err(database, e))?;
    // Refuse a newer file before any pragma below could rewrite its header.
    let found = user_version(&conn, database)?;
    let supported = migrations.len() as i64;
    if found > supported {
        return Err(StorageError::NewerSchema {
            database: database.to_string(),
            found,
            supported,
        });
    }
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
        .map_err(|e| sqlite_err(database, e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StorageError::Sqlite {
            database: database.to_string(),
            message: format!("could not enable WAL (journal_mode is {mode})"),
        });
    }
    conn.pragma_update(None, "synchronous", opts.synchronous.pragma())
        .map_err(|e| sqlite_err(database, e))?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(|e| sqlite_err(database, e))?;
    conn.set_prepared_statement_cache_capacity(opts.statement_cache);
    migrate(&mut conn, migrations, database)?;
    Ok(conn)
}

/// Opens an existing, already migrated database read-only (for the reader thread).
pub fn open_ro(
    path: &Path,
    kind: DbKind,
    database: &str,
    opts: &HandleOptions,
) -> Result<Connection, StorageError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| sqlite_err(database, e))?;
    conn.busy_timeout(opts.busy_timeout)
        .map_err(|e| sqlite_err(database, e))?;
    let found = user_version(&conn, database)?;
    let supported = kind.migrations().len() as i64;
    if found > supported {
        return Err(StorageError::NewerSchema {
            database: database.to_string(),
            found,
            supported,
        });
    }
    if found < supported {
        return Err(StorageError::Sqlite {
            database: database.to_string(),
            message: format!("schema version {found} not migrated to {supported} yet"),
        });
    }
    conn.set_prepared_statement_cache_capacity(opts.statement_cache);
    Ok(conn)
}

/// Finalizes a handle's cached statements and closes it, logging a failure.
pub fn close(conn: Connection, database: &str) {
    conn.flush_prepared_statement_cache();
    if let Err((_conn, e)) = conn.close() {
        tracing::warn!(database, error = %e, "closing a database handle failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> HandleOptions {
        HandleOptions {
            synchronous: Synchronous::Normal,
            busy_timeout: Duration::from_secs(1),
            statement_cache: 16,
        }
    }

    fn version(path: &Path) -> i64 {
        let c = Connection::open(path).unwrap();
        c.pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn fresh_file_gets_current_version_and_wal() {
        let dir = tempfile::tempdir().unwrap();
        for kind in [DbKind::Registry, DbKind::Session] {
            let p = dir.path().join(format!("{kind:?}/x.db"));
            let c = open_rw(&p, kind, "x", &opts()).unwrap();
            let mode: String = c
                .pragma_query_value(None, "journal_mode", |r| r.get(0))
                .unwrap();
            assert_eq!(mode, "wal");
            let fk: i64 = c
                .pragma_query_value(None, "foreign_keys", |r| r.get(0))
                .unwrap();
            assert_eq!(fk, 1);
            close(c, "x");
            assert_eq!(version(&p), kind.migrations().len() as i64);
            // Reopening a current file is a no-op.
            close(open_rw(&p, kind, "x", &opts()).unwrap(), "x");
            assert_eq!(version(&p), kind.migrations().len() as i64);
        }
    }

    #[test]
    fn migrates_every_older_version_step_by_step() {
        // A synthetic three-step history, to exercise the machinery beyond v1.
        let steps: &[&str] = &[
            "CREATE TABLE t (a INTEGER);",
            "ALTER TABLE t ADD COLUMN b TEXT;",
            "CREATE INDEX t_b ON t (b);",
        ];
        let dir = tempfile::tempdir().unwrap();
        for from in 0..=steps.len() {
            let p = dir.path().join(format!("m{from}.db"));
            if from > 0 {
                close(open_rw_with(&p, &steps[..from], "m", &opts()).unwrap(), "m");
                assert_eq!(version(&p), from as i64);
            }
            let c = open_rw_with(&p, steps, "m", &opts()).unwrap();
            c.execute("INSERT INTO t (a, b) VALUES (1, 'x')", [])
                .unwrap();
            close(c, "m");
            assert_eq!(version(&p), steps.len() as i64);
        }
    }

    #[test]
    fn newer_version_is_refused_and_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("new.db");
        {
            let c = Connection::open(&p).unwrap();
            c.execute_batch("CREATE TABLE future (x); PRAGMA user_version = 99;")
                .unwrap();
        }
        let before = std::fs::read(&p).unwrap();
        for kind in [DbKind::Registry, DbKind::Session] {
            match open_rw(&p, kind, "tenants/t/registry.db", &opts()) {
                Err(StorageError::NewerSchema {
                    found: 99,
                    supported,
                    database,
                }) => {
                    assert_eq!(database, "tenants/t/registry.db");
                    assert_eq!(supported, kind.migrations().len() as i64);
                }
                other => panic!("expected NewerSchema, got {other:?}"),
            }
            assert!(matches!(
                open_ro(&p, kind, "x", &opts()),
                Err(StorageError::NewerSchema { .. })
            ));
        }
        assert_eq!(std::fs::read(&p).unwrap(), before, "file was modified");
        assert!(!dir.path().join("new.db-wal").exists());
        let msg = StorageError::NewerSchema {
            database: "d".into(),
            found: 99,
            supported: 1,
        }
        .to_string();
        assert!(msg.contains("newer"), "{msg}");
    }

    #[test]
    fn garbage_file_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.db");
        std::fs::write(&p, vec![0x5a; 8192]).unwrap();
        assert!(matches!(
            open_rw(&p, DbKind::Session, "bad", &opts()),
            Err(StorageError::Sqlite { .. })
        ));
    }
}
