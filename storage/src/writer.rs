//! The writer thread: buffers writes, commits them in batches, routes queries to the reader.

use crate::batch::BatchPolicy;
use crate::config::{Clock, CommitHook};
use crate::database::{error_database, query_target, write_target};
use crate::lru::Lru;
use crate::medium::{medium_failure, medium_failure_of, write_clean_marker, Health};
use crate::paths::{database_rel, session_path};
use crate::reader::ReaderMsg;
use crate::schema::{self, DbKind, HandleOptions};
use crate::shared::{Completer, Stats};
use crate::transaction::commit_group;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use diminuendo_core::storage::{
    DatabaseId, StorageCommand, StorageCompletion, StorageError, QUERY_QUEUED_BYTES,
};
use rusqlite::Connection;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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
    /// Whether the storage medium takes writes, and when to probe it while it does not.
    health: Health,
    commit_hook: Option<CommitHook>,
    /// See `StorageConfig::durable_spin`.
    durable_spin: Duration,
    /// After a `CommitNow`: until when to poll for the next command instead of sleeping.
    spin_until: Option<Instant>,
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
            health: Health::new(p.probe_interval),
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
            if self.health.probe_at().is_some_and(|at| now >= at) {
                self.health.probe(&self.data_dir, now, &self.completer);
            }
            let flush_wait = self.policy.wait(self.first_at, now);
            // While unwritable, the probe's deadline bounds the wait too.
            let probe_wait = self
                .health
                .probe_at()
                .map(|at| at.saturating_duration_since(now));
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
                self.health
                    .failed(format!("{e}"), &name, &*self.clock, &self.completer);
                self.fail_group(db, &cmds, writes, schema::io_err(&name, e));
                return;
            }
        }
        let started = Instant::now();
        let outcome = match self.connection(&db) {
            Ok(conn) => commit_group(conn, &cmds),
            Err(e) => {
                if let Some(kind) = medium_failure_of(&e) {
                    self.health
                        .failed(kind, &name, &*self.clock, &self.completer);
                }
                self.fail_group(db, &cmds, writes, e);
                return;
            }
        };
        match outcome.error.as_ref().and_then(medium_failure) {
            Some(kind) if outcome.committed == 0 => {
                self.health
                    .failed(kind.to_owned(), &name, &*self.clock, &self.completer)
            }
            _ if outcome.committed > 0 || outcome.failed == 0 => self.health.works(&self.completer),
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
