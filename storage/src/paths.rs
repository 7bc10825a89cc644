//! Where databases live, and the validation of identifiers that become path segments.

use diminuendo_core::storage::{DatabaseId, StorageError};
use std::path::{Path, PathBuf};

pub use diminuendo_core::storage::MAX_IDENTIFIER_LEN as MAX_ID_LEN;

/// Name of the clean-shutdown marker file in the data directory.
pub const CLEAN_MARKER: &str = "clean-shutdown";

/// Checks an identifier that becomes a path segment: 1 to [`MAX_ID_LEN`] bytes of
/// `[A-Za-z0-9._-]`, and neither `.` nor `..`. So it can hold no separator, no NUL, no `..`.
pub fn validate_id(what: &'static str, value: &str) -> Result<(), StorageError> {
    if diminuendo_core::storage::is_valid_identifier(value) {
        Ok(())
    } else {
        Err(StorageError::InvalidIdentifier {
            what,
            value: value.chars().take(MAX_ID_LEN + 8).collect(),
        })
    }
}

/// `tenants/{tenantId}/registry.db`, relative to the data directory.
pub fn registry_rel(tenant_id: &str) -> Result<PathBuf, StorageError> {
    validate_id("tenant id", tenant_id)?;
    Ok(Path::new("tenants").join(tenant_id).join("registry.db"))
}

/// `sessions/{sessionId}/session.db`, relative to the data directory.
pub fn session_rel(session_id: &str) -> Result<PathBuf, StorageError> {
    validate_id("session id", session_id)?;
    Ok(Path::new("sessions").join(session_id).join("session.db"))
}

/// The database file of a [`DatabaseId`], relative to the data directory.
pub fn database_rel(db: &DatabaseId) -> Result<PathBuf, StorageError> {
    match db {
        DatabaseId::Registry { tenant_id } => registry_rel(tenant_id),
        DatabaseId::Session { session_id } => session_rel(session_id),
    }
}

/// The registry database of a tenant under `data_dir`.
pub fn registry_path(data_dir: &Path, tenant_id: &str) -> Result<PathBuf, StorageError> {
    Ok(data_dir.join(registry_rel(tenant_id)?))
}

/// The database of a session under `data_dir`.
pub fn session_path(data_dir: &Path, session_id: &str) -> Result<PathBuf, StorageError> {
    Ok(data_dir.join(session_rel(session_id)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_path_tricks() {
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a\\b",
            "../x",
            "a\0b",
            "é",
            " a",
            &"x".repeat(MAX_ID_LEN + 1),
        ] {
            assert!(validate_id("id", bad).is_err(), "{bad:?} accepted");
        }
        for good in ["a", "dev", "0f3e-uuid_v4.x", "...", &"x".repeat(MAX_ID_LEN)] {
            assert!(validate_id("id", good).is_ok(), "{good:?} refused");
        }
        assert_eq!(
            session_rel("s1").unwrap(),
            Path::new("sessions/s1/session.db")
        );
    }
}
