//! Which database a storage command touches, and how a database is named in logs and errors:
//! what the writer, the reader and `Storage::submit` all need, so neither thread's module
//! imports the other's for it.

use crate::paths::database_rel;
use diminuendo_core::storage::{DatabaseId, StorageCommand, StorageQuery};

/// The database a write goes to; `None` for flush, shutdown and queries.
pub fn write_target(cmd: &StorageCommand) -> Option<DatabaseId> {
    match cmd {
        StorageCommand::UpsertSession { session } => Some(DatabaseId::Registry {
            tenant_id: session.tenant_id.clone(),
        }),
        StorageCommand::DeleteSession { tenant_id, .. }
        | StorageCommand::DeleteMember { tenant_id, .. } => Some(DatabaseId::Registry {
            tenant_id: tenant_id.clone(),
        }),
        StorageCommand::UpsertMember { member } => Some(DatabaseId::Registry {
            tenant_id: member.tenant_id.clone(),
        }),
        StorageCommand::AppendEvent { session_id, .. }
        | StorageCommand::UpsertTurn { session_id, .. } => Some(DatabaseId::Session {
            session_id: session_id.clone(),
        }),
        // A marker in its database's group: answered when the writes before it are committed.
        StorageCommand::CommitNow { database, .. } => Some(database.clone()),
        StorageCommand::Flush { .. }
        | StorageCommand::Shutdown { .. }
        | StorageCommand::Query { .. } => None,
    }
}

/// The database a query reads.
pub fn query_target(q: &StorageQuery) -> DatabaseId {
    match q {
        StorageQuery::ListSessions { tenant_id, .. }
        | StorageQuery::LoadSession { tenant_id, .. } => DatabaseId::Registry {
            tenant_id: tenant_id.clone(),
        },
        StorageQuery::EventsAfter { session_id, .. } | StorageQuery::History { session_id, .. } => {
            DatabaseId::Session {
                session_id: session_id.clone(),
            }
        }
    }
}

/// The database's path relative to the data directory, for logs and errors.
pub fn error_database(db: &DatabaseId) -> String {
    match database_rel(db) {
        Ok(p) => p.display().to_string(),
        Err(_) => db.to_string(),
    }
}
