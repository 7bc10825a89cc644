//! Configuration and the injectable clock.

use diminuendo_core::storage::DatabaseId;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `PRAGMA synchronous` for every write handle (the database is always in WAL mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// Commits survive a crash of the process; a power loss or OS crash may roll back the last
    /// commits (never corrupts). The default.
    #[default]
    Normal,
    /// Every commit is fsynced: commits also survive a power loss or OS crash. Slower.
    Full,
}

impl Synchronous {
    pub fn pragma(self) -> &'static str {
        match self {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        }
    }
}

/// Which sessions get a new epoch after an unclean stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UncleanEpochPolicy {
    /// Every session (the default). A lost batch can hold a session's whole
    /// `inactive → activating` change together with the events published after it, leaving the
    /// stored status `inactive` although clients saw events that are gone; only this policy
    /// rules out serving two different events under one `(epoch, seq)` in that case.
    #[default]
    AllSessions,
    /// Only sessions whose stored status was not `inactive`, or whose stored `last_seq` is ahead
    /// of their event log.
    ActiveSessions,
}

/// Called by the writer before every commit, with the database: may block (a test's gate or
/// slow-down) or fail (an injected fault, reported like an I/O error of that commit).
pub type CommitHook = Arc<dyn Fn(&DatabaseId) -> std::io::Result<()> + Send + Sync>;

/// "Now" for the writer's batching decisions; tests inject a manual clock.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Instant;
}

/// The real monotonic clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// Everything [`crate::Storage::open`] needs besides the wake-up hook.
#[derive(Clone)]
pub struct StorageConfig {
    /// `DATA_DIR`: holds `tenants/`, `sessions/` and the clean-shutdown marker.
    pub data_dir: PathBuf,
    pub synchronous: Synchronous,
    /// Flush once this long has passed since the first buffered write (default 50 ms).
    pub flush_interval: Duration,
    /// ... or once this many writes are buffered (default 100).
    pub batch_size: usize,
    /// A flush also takes writes already queued when it starts, up to this many in all, so
    /// batches grow under load (default 100,000).
    pub max_batch: usize,
    /// Open handles kept by the writer (default 128) and the reader (default 64).
    pub writer_handles: usize,
    pub reader_handles: usize,
    /// SQLite busy timeout of every handle (default 5 s).
    pub busy_timeout: Duration,
    /// Prepared statements cached per handle (default 16).
    pub statement_cache: usize,
    pub unclean_epoch_policy: UncleanEpochPolicy,
    pub clock: Arc<dyn Clock>,
    /// The storage queue's hard limit in bytes (default 64 MiB): commands submitted and not yet
    /// written or answered (see `StorageCommand::queued_bytes`). `submit` refuses a write or a
    /// query that would pass it with `StorageError::QueueFull`; flushes and the shutdown are
    /// never refused.
    pub queue_limit: u64,
    /// While storage cannot write, how often the writer probes the data directory with a small
    /// file write (default 1 s), so that health comes back without waiting for traffic.
    pub health_probe_interval: Duration,
    /// For tests: called before every commit (see [`CommitHook`]).
    pub commit_hook: Option<CommitHook>,
    /// After it answers a `CommitNow` (a durable reply), the writer polls its queue this long
    /// for the next command before it sleeps (default 150 µs; zero never polls). Registry
    /// changes come in bursts, and waking a sleeping thread costs tens of microseconds on a
    /// virtual machine: polling starts the next create's commit at once. It costs at most this
    /// much CPU per durable commit; event writes never poll.
    pub durable_spin: Duration,
}

/// `StorageConfig::queue_limit`'s default.
pub const DEFAULT_QUEUE_LIMIT: u64 = 64 * 1024 * 1024;

impl StorageConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> StorageConfig {
        StorageConfig {
            data_dir: data_dir.into(),
            synchronous: Synchronous::Normal,
            flush_interval: Duration::from_millis(50),
            batch_size: 100,
            max_batch: 100_000,
            writer_handles: 128,
            reader_handles: 64,
            busy_timeout: Duration::from_secs(5),
            statement_cache: 16,
            unclean_epoch_policy: UncleanEpochPolicy::AllSessions,
            clock: Arc::new(SystemClock),
            queue_limit: DEFAULT_QUEUE_LIMIT,
            health_probe_interval: Duration::from_secs(1),
            commit_hook: None,
            durable_spin: Duration::from_micros(150),
        }
    }
}

impl std::fmt::Debug for StorageConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageConfig")
            .field("data_dir", &self.data_dir)
            .field("synchronous", &self.synchronous)
            .field("flush_interval", &self.flush_interval)
            .field("batch_size", &self.batch_size)
            .field("max_batch", &self.max_batch)
            .field("writer_handles", &self.writer_handles)
            .field("reader_handles", &self.reader_handles)
            .field("busy_timeout", &self.busy_timeout)
            .field("statement_cache", &self.statement_cache)
            .field("unclean_epoch_policy", &self.unclean_epoch_policy)
            .field("queue_limit", &self.queue_limit)
            .field("health_probe_interval", &self.health_probe_interval)
            .field("durable_spin", &self.durable_spin)
            .finish_non_exhaustive()
    }
}
