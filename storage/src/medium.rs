//! The storage medium as the writer sees it: which failures mean it refuses writes (a full
//! disk, a read-only file system, an I/O error) rather than concerning one database or command,
//! the health state the writer reports and the probe that notices when writes work again, and the
//! clean-shutdown marker.

use std::path::Path;
use std::time::{Duration, Instant};

use diminuendo_core::storage::{StorageCompletion, StorageError};
use rusqlite::ErrorCode;

use crate::config::Clock;
use crate::paths::CLEAN_MARKER;
use crate::shared::Completer;

/// Whether the medium takes writes, as the last write found it, and while it does not, when to
/// probe it. Changes are reported as `StorageCompletion::Health`.
pub(crate) struct Health {
    /// Why the storage medium refuses writes (disk full, read-only, I/O error), while it does.
    unwritable: Option<String>,
    /// While unwritable: when to probe the data directory with a small write.
    probe_at: Option<Instant>,
    probe_interval: Duration,
}

impl Health {
    /// Writable, probing every `probe_interval` (at least 1 ms) once a write fails.
    pub(crate) fn new(probe_interval: Duration) -> Health {
        Health {
            unwritable: None,
            probe_at: None,
            probe_interval,
        }
    }

    /// While unwritable: when the next probe is due.
    pub(crate) fn probe_at(&self) -> Option<Instant> {
        self.probe_at
    }

    /// The storage medium refused a write: storage is unwritable (reported on a change).
    pub(crate) fn failed(
        &mut self,
        kind: String,
        database: &str,
        clock: &dyn Clock,
        completer: &Completer,
    ) {
        let reason = format!("storage: {kind} writing {database}");
        if self.unwritable.as_deref() != Some(reason.as_str()) {
            tracing::warn!(%reason, "storage cannot write");
            self.unwritable = Some(reason.clone());
            completer.send(StorageCompletion::Health {
                writable: false,
                reason: Some(reason),
            });
        }
        if self.probe_at.is_none() {
            self.probe_at = Some(clock.now() + self.probe_interval.max(Duration::from_millis(1)));
        }
    }

    /// A write succeeded: storage is writable again (reported on a change).
    pub(crate) fn works(&mut self, completer: &Completer) {
        if self.unwritable.take().is_some() {
            tracing::info!("storage can write again");
            self.probe_at = None;
            completer.send(StorageCompletion::Health {
                writable: true,
                reason: None,
            });
        }
    }

    /// While unwritable: a small write of a file in the data directory, so health comes back
    /// once the medium takes writes again, without waiting for traffic to try.
    pub(crate) fn probe(&mut self, data_dir: &Path, now: Instant, completer: &Completer) {
        match write_probe(data_dir) {
            Ok(()) => self.works(completer),
            Err(e) => {
                tracing::debug!(error = %e, "storage write probe failed");
                self.probe_at = Some(now + self.probe_interval.max(Duration::from_millis(1)));
            }
        }
    }
}

/// The file [`write_probe`] writes and removes.
pub const PROBE_FILE: &str = ".write-probe";

/// Writes one page to a file in the data directory, syncs it and removes it.
fn write_probe(data_dir: &Path) -> std::io::Result<()> {
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
pub(crate) fn medium_failure(e: &rusqlite::Error) -> Option<&'static str> {
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
pub(crate) fn medium_failure_of(e: &StorageError) -> Option<String> {
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

pub(crate) fn write_clean_marker(data_dir: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let path = data_dir.join(CLEAN_MARKER);
    let mut f = std::fs::File::create(&path)?;
    f.write_all(b"clean\n")?;
    f.sync_all()?;
    fsync_dir(data_dir)
}

/// Removes the marker (durably) so that a crash from now on is seen as unclean.
pub fn take_clean_marker(data_dir: &Path) -> std::io::Result<bool> {
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

/// Syncs a directory, so that a file created or removed in it survives a crash.
fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}
