//! The answer that refuses a command without doing it (the engine unreachable or stopped).

use super::types::{ClusterCommand, ClusterCompletion, ClusterError};

impl ClusterCommand {
    /// The answer that refuses this command with `error` without doing it; `None` for the
    /// commands that are never refused (subscriptions are kept and resumed by the client across
    /// reconnections; `CloseLog` is local).
    pub fn refusal(&self, error: ClusterError) -> Option<ClusterCompletion> {
        use ClusterCommand as C;
        use ClusterCompletion as D;
        Some(match self {
            C::RegistryCreate { token, .. }
            | C::RegistryUpdate { token, .. }
            | C::RegistryDelete { token, .. } => D::Registry {
                token: *token,
                result: Err(error),
            },
            C::RegistryGet { token, .. } => D::RegistryEntry {
                token: *token,
                result: Err(error),
            },
            C::RegistryList { token, .. } => D::RegistryList {
                token: *token,
                result: Err(error),
            },
            C::AcquireLease {
                token, session_id, ..
            }
            | C::RenewLease { token, session_id }
            | C::ReleaseLease { token, session_id } => D::Lease {
                token: *token,
                session_id: session_id.clone(),
                result: Err(error),
            },
            C::GetLease { token, .. } => D::LeaseHolder {
                token: *token,
                result: Err(error),
            },
            C::OpenLog {
                token, session_id, ..
            } => D::LogOpened {
                token: *token,
                session_id: session_id.clone(),
                result: Err(error),
            },
            C::Append {
                session_id, seq, ..
            } => D::Appended {
                session_id: session_id.clone(),
                seq: *seq,
                result: Err(error),
            },
            C::Fetch { token, .. } => D::Fetched {
                token: *token,
                result: Err(error),
            },
            C::Forward { token, .. } => D::Forwarded {
                token: *token,
                result: Err(error),
            },
            C::ListInstances { token } => D::Instances {
                token: *token,
                result: Err(error),
            },
            C::PurgeLog { token, .. } => D::Purged {
                token: *token,
                result: Err(error),
            },
            C::Reply { request, .. } => D::Failed {
                what: format!("reply to request {request}"),
                error,
            },
            C::Notify { tenant_id, .. } => D::Failed {
                what: format!("notification to tenant {tenant_id}"),
                error,
            },
            C::CloseLog { .. }
            | C::Subscribe { .. }
            | C::Unsubscribe { .. }
            | C::ServeCommands { .. }
            | C::StopServing { .. }
            | C::WatchTenant { .. }
            | C::UnwatchTenant { .. } => return None,
        })
    }
}
