//! Tenant notifications between instances (`dim.tenant.<tenant>`): every acknowledged registry
//! write is announced with the writer's instance id; the others apply it to their local registry
//! and tell their tenant's connections (`session_created`, `session_updated`, `session_deleted`).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::cluster::{ClusterCommand, SessionMeta};
use crate::ids::SessionId;
use crate::protocol::{encode_frame, ServerMessage};
use crate::Gateway;

/// A tenant notification between instances (`dim.tenant.<tenant>`).
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Notice {
    from: String,
    #[serde(default)]
    meta: Option<SessionMeta>,
    #[serde(default)]
    created: bool,
    #[serde(default)]
    deleted: Option<String>,
}

impl Gateway {
    pub(super) fn notify(
        &mut self,
        tenant_id: &str,
        meta: Option<SessionMeta>,
        created: bool,
        deleted: Option<String>,
    ) {
        let notice = Notice {
            from: self.instance_id().to_owned(),
            meta,
            created,
            deleted,
        };
        let Ok(payload) = serde_json::to_vec(&notice) else {
            return;
        };
        self.cluster_command(ClusterCommand::Notify {
            tenant_id: tenant_id.to_owned(),
            payload: Bytes::from(payload),
        });
    }

    /// Another instance's registry change: applied here and told to this tenant's connections.
    pub(crate) fn tenant_notice(&mut self, payload: &[u8], now: Instant) {
        let Ok(notice) = serde_json::from_slice::<Notice>(payload) else {
            return;
        };
        if notice.from == self.instance_id() {
            return;
        }
        if let Some(meta) = notice.meta {
            if let Some(reg) = self.reg(&meta.id) {
                if reg.in_flight.is_none() {
                    reg.meta = Some(meta.clone());
                }
            }
            let new = self.apply_meta(&meta);
            let id: SessionId = Arc::from(meta.id.as_str());
            self.announce_session(None, &id, new || notice.created, now);
        } else if let Some(session_id) = notice.deleted {
            self.forget_deleted(&session_id, now);
        }
    }

    /// A session deleted by another instance leaves the local registry; its watchers here and
    /// the tenant are told.
    fn forget_deleted(&mut self, session_id: &str, now: Instant) {
        let Some((id, _)) = self.sessions.get_key_value(session_id) else {
            return;
        };
        let id = id.clone();
        if self.is_owned(&id) {
            self.lose(&id, now);
        }
        let Some(session) = self.sessions.remove(&id) else {
            return;
        };
        let tenant_id = session.record().tenant_id.clone();
        for watcher in session.watchers() {
            if let Some(client) = self.client_state_mut(watcher) {
                client.leave(&id);
            }
        }
        if let Some(tenant) = self.tenants.get_mut(tenant_id.as_str()) {
            tenant.sessions.retain(|listed| *listed != id);
        }
        if let Some(cluster) = self.cluster.as_mut() {
            if cluster.feeds.remove(&id).is_some() {
                self.cluster_command(ClusterCommand::Unsubscribe {
                    tenant_id: tenant_id.clone(),
                    session_id: id.to_string(),
                });
            }
        }
        let frame = encode_frame(&ServerMessage::SessionDeleted {
            request_id: None,
            session_id: &id,
        });
        self.broadcast_tenant(&tenant_id, frame, now);
    }
}
