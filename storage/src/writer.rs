//! The writer thread: buffers writes, commits them in batches, routes queries to the reader.

use crate::config::{Clock, CommitHook};
use crate::database::{error_database, query_target, write_target};
use crate::lru::Lru;
use crate::paths::{database_rel, session_path, CLEAN_MARKER};
use crate::reader::ReaderMsg;
use crate::schema::{self, DbKind, HandleOptions};
use crate::shared::{Completer, Stats};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use diminuendo_core::storage::{
    DatabaseId, StorageCommand, StorageCompletion, StorageError, QUERY_QUEUED_BYTES,
};
use rusqlite::{params, Connection, ErrorCode};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The batching rule, kept apart so it can be tested with plain instants.
#[derive(Debug, Clone, Copy)]
pub struct BatchPolicy {
    pub interval: Duration,
    pub batch_size: usize,
}

impl BatchPolicy {
    /// Flush now? `first_at` is when the oldest buffered write arrived.
    pub fn due(&self, buffered: usize, first_at: Option<Instant>, now: Instant) -> bool {
        match first_at {
            None => false,
            Some(first) => buffered >= self.batch_size.max(1) || now >= first + self.interval,
        }
    }

    /// How long to wait for the next command before the interval expires (`None`: no deadline).
    pub fn wait(&self, first_at: Option<Instant>, now: Instant) -> Option<Duration> {
        first_at.map(|first| (first + self.interval).saturating_duration_since(now))
    }
}

fn kind_of(db: &DatabaseId) -> DbKind {
    match db {
        DatabaseId::Registry { .. } => DbKind::Registry,
        DatabaseId::Session { .. } => DbKind::Session,
    }
}

struct Group {
    order: u64,
    cmds: Vec<StorageCommand>,
}

pub struct WriterParts {
    pub rx: Receiver<StorageCommand>,
    pub reader_tx: Sender<ReaderMsg>,
    pub reader: JoinHandle<()>,
    pub completer: Completer,
    pub stats: Arc<Stats>,
    pub data_dir: PathBuf,
    pub policy: BatchPolicy,
    pub max_batch: usize,
    pub handles: usize,
    pub opts: HandleOptions,
    pub clock: Arc<dyn Clock>,
    pub probe_interval: Duration,
    pub commit_hook: Option<CommitHook>,
    pub durable_spin: Duration,
}

pub struct Writer {
    rx: Receiver<StorageCommand>,
    reader_tx: Sender<ReaderMsg>,
    reader: Option<JoinHandle<()>>,
    completer: Completer,
    stats: Arc<Stats>,
    data_dir: PathBuf,
    policy: BatchPolicy,
    max_batch: usize,
    opts: HandleOptions,
    clock: Arc<dyn Clock>,
    handles: Lru<DatabaseId, Connection>,
    groups: HashMap<DatabaseId, Group>,
    next_order: u64,
    buffered: usize,
    first_at: Option<Instant>,
    /// A non-write met while draining the queue; handled before anything else.
    stash: Option<StorageCommand>,
    /// Some write failed in this run: the next start must not trust the log (no clean marker).
    lost_writes: bool,
    /// Per database, a failure of writes that no `CommitNow` followed in their group: the next
    /// `CommitNow` of that database answers it (the writes it follows were not all stored).
    unreported: HashMap<DatabaseId, StorageError>,
    /// Why the storage medium refuses writes (disk full, read-only, I/O error), while it does.
    unwritable: Option<String>,
    /// While unwritable: when to probe the data directory with a small write.
    probe_at: Option<Instant>,
    probe_interval: Duration,
    commit_hook: Option<CommitHook>,
    /// See `StorageConfig::durable_spin`.
    durable_spin: Duration,
    /// After a `CommitNow`: until when to poll for the next command instead of sleeping.
    spin_until: Option<Instant>,
}

/// What one group's transaction did.
struct GroupOutcome {
    committed: usize,
    /// Of `committed`, how many were events.
    events: usize,
    failed: usize,
    error: Option<rusqlite::Error>,
    deleted_sessions: Vec<String>,
    /// Each `CommitNow` of the group, with the failure of a write before it (since the previous
    /// marker), if any.
    markers: Vec<(u64, Option<String>)>,
    /// A write after the group's last marker (or in a group without one) failed.
    tail_failed: bool,
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
                    stop_reason, usage, tool_calls, started_at, completed_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT (turn_id) DO UPDATE SET user_id = excluded.user_id,
                    user_text = excluded.user_text, final_text = excluded.final_text,
                    final_text_truncated = excluded.final_text_truncated,
                    stop_reason = excluded.stop_reason, usage = excluded.usage,
                    tool_calls = excluded.tool_calls, started_at = excluded.started_at,
                    completed_at = excluded.completed_at",
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
                turn.completed_at_ms
            ])?;
        }
        StorageCommand::UpsertSession { session: s } => {
            let mut st = tx.prepare_cached(
                "INSERT INTO sessions (id, tenant_id, name, agent_type, status, archived,
                    created_by, created_at, updated_at, last_seq, epoch)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                 ON CONFLICT (id) DO UPDATE SET tenant_id = excluded.tenant_id,
                    name = excluded.name, agent_type = excluded.agent_type,
                    status = excluded.status, archived = excluded.archived,
                    created_by = excluded.created_by, created_at = excluded.created_at,
                    updated_at = excluded.updated_at, last_seq = excluded.last_seq,
                    epoch = excluded.epoch",
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
                s.epoch
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
fn commit_group(conn: &mut Connection, cmds: &[StorageCommand]) -> GroupOutcome {
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

fn fsync_dir(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

impl Writer {
    pub fn new(p: WriterParts) -> Writer {
        Writer {
            rx: p.rx,
            reader_tx: p.reader_tx,
            reader: Some(p.reader),
            completer: p.completer,
            stats: p.stats,
            data_dir: p.data_dir,
            policy: p.policy,
            max_batch: p.max_batch.max(1),
            opts: p.opts,
            clock: p.clock,
            handles: Lru::new(p.handles),
            groups: HashMap::new(),
            next_order: 0,
            buffered: 0,
            first_at: None,
            stash: None,
            lost_writes: false,
            unreported: HashMap::new(),
            unwritable: None,
            probe_at: None,
            probe_interval: p.probe_interval,
            commit_hook: p.commit_hook,
            durable_spin: p.durable_spin,
            spin_until: None,
        }
    }

    pub fn run(mut self) {
        while let Some(msg) = self.next_msg() {
            // The interval may have passed while the thread was busy: flush before handling.
            if self
                .policy
                .due(self.buffered, self.first_at, self.clock.now())
            {
                self.flush_all(false);
            }
            if let Some(token) = self.handle(msg) {
                self.finish(Some(token));
                return;
            }
        }
        // Every sender is gone without a shutdown: flush and stop all the same.
        self.finish(None);
    }

    /// The next command, flushing whenever the interval expires while waiting.
    fn next_msg(&mut self) -> Option<StorageCommand> {
        loop {
            if let Some(m) = self.stash.take() {
                return Some(m);
            }
            let now = self.clock.now();
            if self.probe_at.is_some_and(|at| now >= at) {
                self.probe(now);
            }
            let flush_wait = self.policy.wait(self.first_at, now);
            // While unwritable, the probe's deadline bounds the wait too.
            let probe_wait = self.probe_at.map(|at| at.saturating_duration_since(now));
            let wait = match (flush_wait, probe_wait) {
                (Some(f), Some(p)) if !f.is_zero() => Some(f.min(p)),
                (None, p) => p,
                (f, _) => f,
            };
            if let Some(m) = self.spin(wait) {
                return m;
            }
            match wait {
                None => return self.rx.recv().ok(),
                Some(d) if d.is_zero() => self.flush_all(true),
                Some(d) => match self.rx.recv_timeout(d) {
                    Ok(m) => return Some(m),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return None,
                },
            }
        }
    }

    /// Right after a `CommitNow`, polls the queue (at most until the spin deadline, and never past
    /// `wait`) rather than sleeping: registry changes come in bursts, and waking a sleeping
    /// thread costs tens of microseconds on a virtual machine, which a durable reply would pay
    /// twice. `Some(next)` is the command (or the end of the queue) that came meanwhile.
    fn spin(&mut self, wait: Option<Duration>) -> Option<Option<StorageCommand>> {
        let until = self.spin_until.take()?;
        let until = match wait {
            Some(wait) => until.min(Instant::now() + wait),
            None => until,
        };
        while Instant::now() < until {
            match self.rx.try_recv() {
                Ok(m) => return Some(Some(m)),
                Err(crossbeam_channel::TryRecvError::Empty) => std::hint::spin_loop(),
                Err(crossbeam_channel::TryRecvError::Disconnected) => return Some(None),
            }
        }
        None
    }

    /// Handles one command; returns the shutdown token when it is `Shutdown`.
    fn handle(&mut self, msg: StorageCommand) -> Option<u64> {
        match msg {
            StorageCommand::Flush { token } => {
                self.flush_all(false);
                self.completer.send(StorageCompletion::Flushed { token });
            }
            StorageCommand::Shutdown { token } => return Some(token),
            StorageCommand::Query { token, query } => {
                let target = query_target(&query);
                match target {
                    // This session's pending writes stand between the query and its data. The
                    // pending registry rows go first (as in every flush): a log is never
                    // committed before the row that names its session.
                    DatabaseId::Session { .. } => self.flush_where(|db| {
                        *db == target || matches!(db, DatabaseId::Registry { .. })
                    }),
                    // Registries come first in every flush: nothing else has to go with it.
                    DatabaseId::Registry { .. } => self.flush_where(|db| *db == target),
                }
                let cost = QUERY_QUEUED_BYTES;
                if let Err(e) = self.reader_tx.send(ReaderMsg::Query { token, query, cost }) {
                    self.stats.release(cost);
                    if let ReaderMsg::Query { token, .. } = e.0 {
                        self.completer.send(StorageCompletion::QueryResult {
                            token,
                            result: Err(StorageError::Closed),
                        });
                    }
                }
            }
            write => {
                // A delete runs at once, so that writes issued after it (to a session of the same
                // id) are not deleted with the directory when the registry commits.
                let delete = matches!(write, StorageCommand::DeleteSession { .. });
                let commit_now = match &write {
                    StorageCommand::CommitNow { database, .. } => Some(database.clone()),
                    _ => None,
                };
                self.push(write);
                if delete {
                    self.flush_all(false);
                } else if let Some(target) = commit_now {
                    self.group_commit(target);
                    if !self.durable_spin.is_zero() {
                        self.spin_until = Some(Instant::now() + self.durable_spin);
                    }
                } else if self.buffered >= self.policy.batch_size.max(1) {
                    self.flush_all(true);
                }
            }
        }
        None
    }

    fn push(&mut self, cmd: StorageCommand) {
        let Some(target) = write_target(&cmd) else {
            return;
        };
        let order = self.next_order;
        let group = self.groups.entry(target).or_insert_with(|| Group {
            order,
            cmds: Vec::new(),
        });
        if group.order == order {
            self.next_order += 1;
        }
        group.cmds.push(cmd);
        self.buffered += 1;
        if self.first_at.is_none() {
            self.first_at = Some(self.clock.now());
        }
    }

    /// Flushes every group; with `drain`, first takes the writes already queued (up to
    /// `max_batch` buffered), so batches grow under load.
    fn flush_all(&mut self, drain: bool) {
        if drain {
            self.take_queued_writes();
        }
        self.flush_where(|_| true);
    }

    /// Buffers the writes already queued (up to `max_batch` buffered), so that a flush about to
    /// happen takes them too; stops at the first command that is not such a write (it is
    /// stashed and handled next).
    fn take_queued_writes(&mut self) {
        if self.stash.is_some() {
            return;
        }
        while self.buffered < self.max_batch {
            match self.rx.try_recv() {
                // A delete is handled on its own (see `handle`).
                Ok(m) if m.is_write() && !matches!(m, StorageCommand::DeleteSession { .. }) => {
                    self.push(m)
                }
                Ok(m) => {
                    self.stash = Some(m);
                    break;
                }
                Err(_) => break,
            }
        }
    }

    /// Group commit for a `CommitNow`: takes every write already queued (so every create that
    /// arrived while the previous commit ran joins this one, up to `max_batch`), then commits
    /// the registries (and `target`, were it a session log) at once; session logs keep batching.
    fn group_commit(&mut self, target: DatabaseId) {
        self.take_queued_writes();
        self.flush_where(|db| matches!(db, DatabaseId::Registry { .. }) || *db == target);
    }

    /// Commits the selected groups: registries first, then session logs, each in the order its
    /// first write arrived. Registries first means a session log is never committed before the
    /// row that names its session (a crash between the two cannot leave a log no registry
    /// lists). A registry row may then be ahead of its log (`last_seq`, status); recovery takes
    /// `last_seq` from the log, sets every status to `inactive` and gives such a session a new
    /// epoch, so that never misleads a client.
    fn flush_where(&mut self, select: impl Fn(&DatabaseId) -> bool) {
        let mut keys: Vec<(bool, u64, DatabaseId)> = self
            .groups
            .iter()
            .filter(|(db, _)| select(db))
            .map(|(db, g)| {
                (
                    matches!(db, DatabaseId::Session { .. }),
                    g.order,
                    db.clone(),
                )
            })
            .collect();
        if keys.is_empty() {
            return;
        }
        keys.sort_by_key(|k| (k.0, k.1));
        for (_, _, db) in keys {
            if let Some(group) = self.groups.remove(&db) {
                self.buffered -= group.cmds.len();
                self.commit(db, group.cmds);
            }
        }
        if self.buffered == 0 {
            self.first_at = None;
        }
        self.stats.flushes.fetch_add(1, Ordering::Relaxed);
        // The event loop reads the counters (events persisted) when it wakes.
        self.completer.nudge();
    }

    fn report_failure(&mut self, db: DatabaseId, commands: usize, error: StorageError) {
        self.lost_writes = true;
        self.stats
            .write_failures
            .fetch_add(commands as u64, Ordering::Relaxed);
        tracing::error!(database = %error_database(&db), %error, commands, "storage write failed");
        self.completer.send(StorageCompletion::WriteFailed {
            database: db,
            commands,
            error,
        });
    }

    /// Returns the open handle of `db`, opening (and migrating) it if needed.
    fn connection(&mut self, db: &DatabaseId) -> Result<&mut Connection, StorageError> {
        if !self.handles.contains(db) {
            let rel = database_rel(db)?;
            let name = rel.display().to_string();
            let conn = schema::open_rw(&self.data_dir.join(&rel), kind_of(db), &name, &self.opts)?;
            if let Some((old, conn)) = self.handles.insert(db.clone(), conn) {
                schema::close(conn, &error_database(&old));
                self.stats.writer_evictions.fetch_add(1, Ordering::Relaxed);
            }
            self.stats
                .writer_handles
                .store(self.handles.len() as u64, Ordering::Relaxed);
        }
        self.handles.get_mut(db).ok_or(StorageError::Closed)
    }

    /// Commits one group; its commands leave the storage queue once it is done.
    fn commit(&mut self, db: DatabaseId, cmds: Vec<StorageCommand>) {
        let cost: u64 = cmds.iter().map(StorageCommand::queued_bytes).sum();
        self.commit_group_of(db, cmds);
        self.stats.release(cost);
    }

    fn commit_group_of(&mut self, db: DatabaseId, cmds: Vec<StorageCommand>) {
        let name = error_database(&db);
        let writes = cmds
            .iter()
            .filter(|c| !matches!(c, StorageCommand::CommitNow { .. }))
            .count();
        if writes == 0 {
            // Only markers: what they follow was committed (or failed) earlier.
            for cmd in &cmds {
                if let StorageCommand::CommitNow { token, .. } = cmd {
                    let result = match self.unreported.remove(&db) {
                        Some(e) => Err(e),
                        None => Ok(()),
                    };
                    self.completer.send(StorageCompletion::Committed {
                        token: *token,
                        result,
                    });
                }
            }
            return;
        }
        if let Some(hook) = &self.commit_hook {
            if let Err(e) = hook(&db) {
                self.medium_failed(format!("{e}"), &name);
                self.fail_group(db, &cmds, writes, schema::io_err(&name, e));
                return;
            }
        }
        let started = Instant::now();
        let outcome = match self.connection(&db) {
            Ok(conn) => commit_group(conn, &cmds),
            Err(e) => {
                if let Some(kind) = medium_failure_of(&e) {
                    self.medium_failed(kind, &name);
                }
                self.fail_group(db, &cmds, writes, e);
                return;
            }
        };
        match outcome.error.as_ref().and_then(medium_failure) {
            Some(kind) if outcome.committed == 0 => self.medium_failed(kind.to_owned(), &name),
            _ if outcome.committed > 0 || outcome.failed == 0 => self.medium_works(),
            _ => {}
        }
        let mut earlier = self.unreported.remove(&db);
        for (token, failure) in &outcome.markers {
            let result = match (failure, earlier.take()) {
                (Some(message), _) => Err(StorageError::Sqlite {
                    database: name.clone(),
                    message: message.clone(),
                }),
                (None, Some(e)) => Err(e),
                (None, None) => Ok(()),
            };
            self.completer.send(StorageCompletion::Committed {
                token: *token,
                result,
            });
        }
        if let Some(e) = earlier {
            // No marker in this group: still owed to the next one.
            self.unreported.insert(db.clone(), e);
        }
        let nanos = started.elapsed().as_nanos() as u64;
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        #[cfg(test)]
        if let Ok(mut order) = self.stats.commit_order.lock() {
            order.push(db.clone());
        }
        self.stats
            .rows
            .fetch_add(outcome.committed as u64, Ordering::Relaxed);
        self.stats
            .events
            .fetch_add(outcome.events as u64, Ordering::Relaxed);
        self.stats
            .commit_nanos_total
            .fetch_add(nanos, Ordering::Relaxed);
        self.stats
            .commit_nanos_max
            .fetch_max(nanos, Ordering::Relaxed);
        if outcome.failed > 0 {
            let error = match outcome.error {
                Some(e) => schema::sqlite_err(&name, e),
                None => StorageError::Sqlite {
                    database: name.clone(),
                    message: "write failed".into(),
                },
            };
            // A failed commit may leave a handle in a bad state: reopen it next time.
            if outcome.committed == 0 {
                if let Some(conn) = self.handles.remove(&db) {
                    schema::close(conn, &name);
                }
            }
            if outcome.tail_failed {
                self.unreported.insert(db.clone(), error.clone());
            }
            self.report_failure(db, outcome.failed, error);
        }
        for session_id in outcome.deleted_sessions {
            self.delete_session_dir(&session_id);
        }
    }

    /// A group that could not be committed at all: its markers are answered with the failure (or,
    /// if none ends the group, the failure is owed to the next marker of that database) and the
    /// writes are reported failed.
    fn fail_group(
        &mut self,
        db: DatabaseId,
        cmds: &[StorageCommand],
        writes: usize,
        e: StorageError,
    ) {
        let ends_with_marker = matches!(cmds.last(), Some(StorageCommand::CommitNow { .. }));
        self.unreported.remove(&db);
        for cmd in cmds {
            if let StorageCommand::CommitNow { token, .. } = cmd {
                self.completer.send(StorageCompletion::Committed {
                    token: *token,
                    result: Err(e.clone()),
                });
            }
        }
        if !ends_with_marker {
            self.unreported.insert(db.clone(), e.clone());
        }
        self.report_failure(db, writes, e);
    }

    /// The storage medium refused a write: storage is unwritable (reported on a change).
    fn medium_failed(&mut self, kind: String, database: &str) {
        let reason = format!("storage: {kind} writing {database}");
        if self.unwritable.as_deref() != Some(reason.as_str()) {
            tracing::warn!(%reason, "storage cannot write");
            self.unwritable = Some(reason.clone());
            self.completer.send(StorageCompletion::Health {
                writable: false,
                reason: Some(reason),
            });
        }
        if self.probe_at.is_none() {
            self.probe_at =
                Some(self.clock.now() + self.probe_interval.max(Duration::from_millis(1)));
        }
    }

    /// A write succeeded: storage is writable again (reported on a change).
    fn medium_works(&mut self) {
        if self.unwritable.take().is_some() {
            tracing::info!("storage can write again");
            self.probe_at = None;
            self.completer.send(StorageCompletion::Health {
                writable: true,
                reason: None,
            });
        }
    }

    /// While unwritable: a small write of a file in the data directory, so health comes back
    /// once the medium takes writes again, without waiting for traffic to try.
    fn probe(&mut self, now: Instant) {
        match write_probe(&self.data_dir) {
            Ok(()) => self.medium_works(),
            Err(e) => {
                tracing::debug!(error = %e, "storage write probe failed");
                self.probe_at = Some(now + self.probe_interval.max(Duration::from_millis(1)));
            }
        }
    }

    fn delete_session_dir(&mut self, session_id: &str) {
        let db = DatabaseId::Session {
            session_id: session_id.to_string(),
        };
        if let Some(conn) = self.handles.remove(&db) {
            schema::close(conn, &error_database(&db));
        }
        let _ = self.reader_tx.send(ReaderMsg::Evict(db.clone()));
        // Pending writes to a deleted session are dropped with it.
        if let Some(g) = self.groups.remove(&db) {
            self.buffered -= g.cmds.len();
            self.stats
                .release(g.cmds.iter().map(StorageCommand::queued_bytes).sum());
        }
        let Ok(path) = session_path(&self.data_dir, session_id) else {
            return;
        };
        let Some(dir) = path.parent() else {
            return;
        };
        match std::fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                let err = schema::io_err(&error_database(&db), e);
                self.report_failure(db, 1, err);
            }
        }
    }

    /// Final flush, close every handle, stop the reader, leave the clean marker.
    fn finish(mut self, token: Option<u64>) {
        self.flush_all(false);
        // The reader closes first, so that the writer's handles are the last ones and closing
        // them checkpoints and removes the WAL files.
        let _ = self.reader_tx.send(ReaderMsg::Shutdown);
        if let Some(reader) = self.reader.take() {
            if reader.join().is_err() {
                tracing::error!("storage reader thread panicked");
            }
        }
        for (db, conn) in self.handles.drain() {
            schema::close(conn, &error_database(&db));
        }
        self.stats.writer_handles.store(0, Ordering::Relaxed);
        if self.lost_writes {
            tracing::warn!("some writes failed in this run: not marking the shutdown clean");
        } else if let Err(e) = write_clean_marker(&self.data_dir) {
            tracing::error!(data_dir = %self.data_dir.display(), error = %e, "could not write the clean-shutdown marker");
        }
        if let Some(token) = token {
            self.completer
                .send(StorageCompletion::ShutdownComplete { token });
        }
    }
}

/// The file [`write_probe`] writes and removes.
pub const PROBE_FILE: &str = ".write-probe";

/// Writes one page to a file in the data directory, syncs it and removes it.
fn write_probe(data_dir: &std::path::Path) -> std::io::Result<()> {
    use std::io::Write;
    let path = data_dir.join(PROBE_FILE);
    let result = (|| {
        let mut f = std::fs::File::create(&path)?;
        f.write_all(&[0u8; 4096])?;
        f.sync_all()
    })();
    let removed = std::fs::remove_file(&path);
    result?;
    match removed {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// What a failed SQLite call says about the storage medium: `Some` for a full disk, a
/// read-only file system, an I/O error, a file that cannot be opened; `None` for anything that
/// concerns one database or one command (corruption, a constraint, a newer schema).
fn medium_failure(e: &rusqlite::Error) -> Option<&'static str> {
    let rusqlite::Error::SqliteFailure(f, _) = e else {
        return None;
    };
    Some(match f.code {
        ErrorCode::DiskFull => "disk full (SQLITE_FULL)",
        ErrorCode::ReadOnly => "read-only (SQLITE_READONLY)",
        ErrorCode::SystemIoFailure => "I/O error (SQLITE_IOERR)",
        ErrorCode::CannotOpen => "cannot open (SQLITE_CANTOPEN)",
        ErrorCode::PermissionDenied => "permission denied (SQLITE_PERM)",
        _ => return None,
    })
}

/// [`medium_failure`] for an error already converted (opening a handle): a file-system error,
/// or SQLite's fixed message of one of those codes.
fn medium_failure_of(e: &StorageError) -> Option<String> {
    match e {
        StorageError::Io { message, .. } => Some(message.clone()),
        StorageError::Sqlite { message, .. } => {
            let kind = if message.contains("disk is full") {
                "disk full (SQLITE_FULL)"
            } else if message.contains("readonly") {
                "read-only (SQLITE_READONLY)"
            } else if message.contains("disk I/O error") {
                "I/O error (SQLITE_IOERR)"
            } else if message.contains("unable to open") {
                "cannot open (SQLITE_CANTOPEN)"
            } else {
                return None;
            };
            Some(kind.to_owned())
        }
        _ => None,
    }
}

fn write_clean_marker(data_dir: &std::path::Path) -> std::io::Result<()> {
    use std::io::Write;
    let path = data_dir.join(CLEAN_MARKER);
    let mut f = std::fs::File::create(&path)?;
    f.write_all(b"clean\n")?;
    f.sync_all()?;
    fsync_dir(data_dir)
}

/// Removes the marker (durably) so that a crash from now on is seen as unclean.
pub fn take_clean_marker(data_dir: &std::path::Path) -> std::io::Result<bool> {
    let path = data_dir.join(CLEAN_MARKER);
    match std::fs::remove_file(&path) {
        Ok(()) => {
            fsync_dir(data_dir)?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_honours_both_thresholds() {
        let p = BatchPolicy {
            interval: Duration::from_millis(50),
            batch_size: 100,
        };
        let t0 = Instant::now();
        assert!(!p.due(0, None, t0));
        assert_eq!(p.wait(None, t0), None);
        assert!(!p.due(1, Some(t0), t0));
        assert!(!p.due(99, Some(t0), t0 + Duration::from_millis(49)));
        assert_eq!(
            p.wait(Some(t0), t0 + Duration::from_millis(20)),
            Some(Duration::from_millis(30))
        );
        assert!(p.due(1, Some(t0), t0 + Duration::from_millis(50)));
        assert!(p.due(100, Some(t0), t0));
        assert_eq!(
            p.wait(Some(t0), t0 + Duration::from_millis(80)),
            Some(Duration::ZERO)
        );
    }
}
