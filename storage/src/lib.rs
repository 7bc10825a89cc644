//! Diminuendo's storage: executes the core's [`StorageCommand`]s against SQLite on a writer and
//! a reader thread, and hands [`StorageCompletion`]s back through a queue and the core's
//! runtime-agnostic [`Wake`] hook. See `README.md` for the design.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use diminuendo_storage::*;
//! # struct W; impl diminuendo_core::Wake for W { fn wake(&self) {} }
//! let (storage, report) = Storage::open(StorageConfig::new("/var/lib/diminuendo"), Arc::new(W))?;
//! storage.submit(StorageCommand::Flush { token: 1 })?;
//! // ... in the event loop, when woken:
//! let mut done = Vec::new();
//! storage.drain_completions(&mut done);
//! # Ok::<(), StorageError>(())
//! ```

#![forbid(unsafe_code)]

mod batch;
mod config;
mod database;
mod lru;
mod medium;
mod paths;
mod reader;
mod recovery;
mod schema;
mod shared;
mod transaction;
mod writer;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_health;

pub use config::{
    Clock, CommitHook, StorageConfig, Synchronous, SystemClock, UncleanEpochPolicy,
    DEFAULT_QUEUE_LIMIT,
};
pub use database::write_target;
pub use diminuendo_core::storage::{
    DatabaseId, MemberRecord, QueryResult, RecoveryReport, SessionRecord, SessionResume,
    SessionStatus, StorageCommand, StorageCompletion, StorageError, StorageQuery, StoredEvent,
    TurnRecord,
};
pub use diminuendo_core::Wake;
pub use paths::{registry_path, session_path, validate_id, CLEAN_MARKER, MAX_ID_LEN};
pub use recovery::fresh_epoch;
pub use schema::{REGISTRY_MIGRATIONS, SESSION_MIGRATIONS};
pub use shared::StorageStats;

use crossbeam_channel::{Receiver, Sender};
use schema::HandleOptions;
use shared::{Completer, Stats};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// The token of the `Shutdown` that [`Storage::shutdown_blocking`] and `Drop` submit.
pub const SHUTDOWN_TOKEN: u64 = u64::MAX;

/// A running storage: a writer and a reader thread over the data directory.
///
/// Usable from any runtime: [`Storage::submit`] never blocks on disk, completions are queued and
/// announced with the [`Wake`] hook, and the event loop collects them with
/// [`Storage::drain_completions`] or [`Storage::try_recv`]. Dropping it shuts down and joins the
/// threads.
pub struct Storage {
    tx: Sender<StorageCommand>,
    completions: Receiver<StorageCompletion>,
    wake_pending: Arc<AtomicBool>,
    writer: Option<JoinHandle<()>>,
    stats: Arc<Stats>,
    queue_limit: u64,
}

impl Storage {
    /// Runs recovery (see [`RecoveryReport`]), then starts the threads.
    pub fn open(
        config: StorageConfig,
        wake: Arc<dyn Wake>,
    ) -> Result<(Storage, RecoveryReport), StorageError> {
        let opts = HandleOptions {
            synchronous: config.synchronous,
            busy_timeout: config.busy_timeout,
            statement_cache: config.statement_cache,
        };
        let report = recovery::recover(&config.data_dir, config.unclean_epoch_policy, &opts)?;

        let (tx, rx) = crossbeam_channel::unbounded();
        let (ctx, crx) = crossbeam_channel::unbounded();
        let (reader_tx, reader_rx) = crossbeam_channel::unbounded();
        let wake_pending = Arc::new(AtomicBool::new(false));
        let completer = Completer {
            tx: ctx,
            wake,
            wake_pending: wake_pending.clone(),
        };
        let stats = Arc::new(Stats::default());
        let io_err = |e: std::io::Error| StorageError::Io {
            database: config.data_dir.display().to_string(),
            message: format!("could not start a storage thread: {e}"),
        };

        let reader = reader::Reader {
            rx: reader_rx,
            completer: completer.clone(),
            stats: stats.clone(),
            data_dir: config.data_dir.clone(),
            opts,
            handles: lru::Lru::new(config.reader_handles),
        };
        let reader = std::thread::Builder::new()
            .name("storage-reader".into())
            .spawn(move || reader.run())
            .map_err(io_err)?;
        let writer = writer::Writer::new(writer::WriterParts {
            rx,
            reader_tx,
            reader,
            completer,
            stats: stats.clone(),
            data_dir: config.data_dir.clone(),
            policy: batch::BatchPolicy {
                interval: config.flush_interval,
                batch_size: config.batch_size,
            },
            max_batch: config.max_batch,
            handles: config.writer_handles,
            opts,
            clock: config.clock.clone(),
            probe_interval: config.health_probe_interval,
            commit_hook: config.commit_hook.clone(),
            durable_spin: config.durable_spin,
        });
        let writer = std::thread::Builder::new()
            .name("storage-writer".into())
            .spawn(move || writer.run())
            .map_err(io_err)?;
        Ok((
            Storage {
                tx,
                completions: crx,
                wake_pending,
                writer: Some(writer),
                stats,
                queue_limit: config.queue_limit,
            },
            report,
        ))
    }

    /// Queues a command; never waits on disk. Refuses identifiers that cannot be path segments
    /// (nothing is queued then) and answers [`StorageError::Closed`] after shutdown.
    ///
    /// The queue is bounded in bytes (`StorageConfig::queue_limit`): a write or a query that
    /// would pass the limit is refused with [`StorageError::QueueFull`] and nothing is queued.
    /// The caller decides what a refused write means (the core gives the session a new epoch,
    /// see the adapters' services layer); [`Storage::queued_bytes`] lets it act before that.
    pub fn submit(&self, cmd: StorageCommand) -> Result<(), StorageError> {
        validate(&cmd)?;
        let cost = cmd.queued_bytes();
        if cost > 0 {
            let queued = self.stats.queued_bytes.fetch_add(cost, Ordering::AcqRel);
            if queued + cost > self.queue_limit {
                self.stats.release(cost);
                return Err(StorageError::QueueFull {
                    queued,
                    limit: self.queue_limit,
                });
            }
        }
        self.tx.send(cmd).map_err(|_| {
            self.stats.release(cost);
            StorageError::Closed
        })
    }

    /// Bytes in the storage queue now: submitted, not yet written or answered.
    pub fn queued_bytes(&self) -> u64 {
        self.stats.queued_bytes.load(Ordering::Acquire)
    }

    /// The queue's hard limit (`StorageConfig::queue_limit`).
    pub fn queue_limit(&self) -> u64 {
        self.queue_limit
    }

    /// One queued completion, if any.
    pub fn try_recv(&self) -> Option<StorageCompletion> {
        self.wake_pending.store(false, Ordering::Release);
        self.completions.try_recv().ok()
    }

    /// Moves every queued completion into `out`; returns how many.
    pub fn drain_completions(&self, out: &mut Vec<StorageCompletion>) -> usize {
        self.wake_pending.store(false, Ordering::Release);
        let before = out.len();
        out.extend(self.completions.try_iter());
        out.len() - before
    }

    /// Flushes everything, closes every handle, stops and joins the threads (blocking; call it
    /// once the event loop has stopped). Idempotent.
    pub fn shutdown_blocking(&mut self) -> Result<(), StorageError> {
        let Some(writer) = self.writer.take() else {
            return Ok(());
        };
        // If the writer is already gone the send fails; joining is all that is left.
        let _ = self.tx.send(StorageCommand::Shutdown {
            token: SHUTDOWN_TOKEN,
        });
        writer.join().map_err(|_| StorageError::Io {
            database: String::new(),
            message: "the storage writer thread panicked".into(),
        })
    }

    /// Counters: flushes, commits, rows, commit latency, open handles, evictions, failures.
    pub fn stats(&self) -> StorageStats {
        self.stats.snapshot()
    }
}

#[cfg(test)]
impl Storage {
    /// The databases committed so far, in order.
    pub(crate) fn stats_commit_order(&self) -> Vec<DatabaseId> {
        self.stats
            .commit_order
            .lock()
            .map(|o| o.clone())
            .unwrap_or_default()
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        let _ = self.shutdown_blocking();
    }
}

/// Checks every identifier of a command that becomes a path segment.
fn validate(cmd: &StorageCommand) -> Result<(), StorageError> {
    let target = match cmd {
        StorageCommand::Query { query, .. } => {
            if let StorageQuery::LoadSession { session_id, .. } = query {
                validate_id("session id", session_id)?;
            }
            Some(database::query_target(query))
        }
        StorageCommand::UpsertSession { session } => {
            validate_id("session id", &session.id)?;
            database::write_target(cmd)
        }
        StorageCommand::DeleteSession { session_id, .. } => {
            validate_id("session id", session_id)?;
            database::write_target(cmd)
        }
        _ => database::write_target(cmd),
    };
    match target {
        Some(db) => paths::database_rel(&db).map(|_| ()),
        None => Ok(()),
    }
}
