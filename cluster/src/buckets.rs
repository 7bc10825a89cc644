//! The KV buckets: the session registry (compare-and-set, listing, the cache fed by a watch),
//! owner leases, instance liveness.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::kv::{self, Operation};
use async_nats::jetstream::stream;
use async_nats::HeaderMap;
use bytes::Bytes;
use futures_lite::StreamExt;
use tracing::debug;

use crate::encode::{decode, encode};
use crate::engine::*;
use crate::layout;
use crate::log::{header, WriterJob};
use crate::types::*;

impl Engine {
    pub(crate) fn kv_command(&mut self, cmd: ClusterCommand, t: Duration, out: Completer) {
        match cmd {
            ClusterCommand::RegistryCreate { token, meta } => {
                let kv = self.nats.registry.clone();
                let shared = self.shared.clone();
                tokio::spawn(async move {
                    let result = bounded(t, async {
                        let value = serde_json::to_vec(&meta).map_err(nats_err)?;
                        let key = registry_key(&meta.tenant_id, &meta.id);
                        kv.create(key, value.into())
                            .await
                            .map_err(|e| match e.kind() {
                                kv::CreateErrorKind::AlreadyExists => ClusterError::Conflict,
                                _ => nats_err(e),
                            })
                    })
                    .await;
                    if let Ok(revision) = result {
                        cache_put(&shared, RegistryEntry { meta, revision });
                    }
                    out.send(ClusterCompletion::Registry { token, result });
                });
            }
            ClusterCommand::RegistryUpdate {
                token,
                meta,
                revision,
            } => {
                let kv = self.nats.registry.clone();
                let shared = self.shared.clone();
                tokio::spawn(async move {
                    let result = bounded(t, async {
                        let value = serde_json::to_vec(&meta).map_err(nats_err)?;
                        let key = registry_key(&meta.tenant_id, &meta.id);
                        kv.update(key, value.into(), revision)
                            .await
                            .map_err(|e| match e.kind() {
                                kv::UpdateErrorKind::WrongLastRevision => ClusterError::Conflict,
                                _ => nats_err(e),
                            })
                    })
                    .await;
                    if let Ok(revision) = result {
                        cache_put(&shared, RegistryEntry { meta, revision });
                    }
                    out.send(ClusterCompletion::Registry { token, result });
                });
            }
            ClusterCommand::RegistryDelete {
                token,
                tenant_id,
                session_id,
                revision,
            } => {
                let kv = self.nats.registry.clone();
                let shared = self.shared.clone();
                tokio::spawn(async move {
                    let key = registry_key(&tenant_id, &session_id);
                    let result = bounded(t, async {
                        kv.delete_expect_revision(key, revision)
                            .await
                            .map(|()| 0)
                            .map_err(|e| match e.kind() {
                                kv::UpdateErrorKind::WrongLastRevision => ClusterError::Conflict,
                                _ => nats_err(e),
                            })
                    })
                    .await;
                    if result.is_ok() {
                        cache_remove(&shared, &tenant_id, &session_id);
                    }
                    out.send(ClusterCompletion::Registry { token, result });
                });
            }
            ClusterCommand::RegistryGet {
                token,
                tenant_id,
                session_id,
            } => {
                let kv = self.nats.registry.clone();
                tokio::spawn(async move {
                    let result = bounded(t, async {
                        match kv
                            .entry(registry_key(&tenant_id, &session_id))
                            .await
                            .map_err(nats_err)?
                        {
                            Some(e) if e.operation == Operation::Put => Ok(Some(RegistryEntry {
                                meta: parse_meta(&e.value)?,
                                revision: e.revision,
                            })),
                            _ => Ok(None),
                        }
                    })
                    .await;
                    out.send(ClusterCompletion::RegistryEntry { token, result });
                });
            }
            ClusterCommand::RegistryList { token, tenant_id } => {
                let stream = self.nats.registry_stream.clone();
                tokio::spawn(async move {
                    let filter = format!("$KV.{}.{}.>", layout::REGISTRY, encode(&tenant_id));
                    let result = bounded(t, async {
                        let mut entries = Vec::new();
                        for (_, value, revision) in kv_latest(&stream, filter).await? {
                            entries.push(RegistryEntry {
                                meta: parse_meta(&value)?,
                                revision,
                            });
                        }
                        entries.sort_by(|a, b| {
                            (a.meta.created_at_ms, &a.meta.id)
                                .cmp(&(b.meta.created_at_ms, &b.meta.id))
                        });
                        Ok(entries)
                    })
                    .await;
                    out.send(ClusterCompletion::RegistryList { token, result });
                });
            }
            ClusterCommand::AcquireLease {
                token,
                session_id,
                fence,
            } => {
                let kv = self.nats.owners.clone();
                let leases = self.leases.clone();
                let value = LeaseValue {
                    instance: self.cfg.instance_id.clone(),
                    fence,
                };
                let gate = self.lease_gate(&session_id);
                tokio::spawn(async move {
                    let _turn = gate.lock().await;
                    let key = encode(&session_id);
                    let result = bounded(t, async {
                        let bytes: Bytes = serde_json::to_vec(&value).map_err(nats_err)?.into();
                        // Two rounds: the holder's entry may expire between the refused create
                        // and the read that names it.
                        for _ in 0..2 {
                            match kv.create(key.as_str(), bytes.clone()).await {
                                Ok(revision) => return Ok(revision),
                                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                                    if let Some(held) = read_lease(&kv, &key).await? {
                                        return Err(ClusterError::LeaseHeld(held));
                                    }
                                }
                                Err(e) => return Err(nats_err(e)),
                            }
                        }
                        Err(ClusterError::Conflict)
                    })
                    .await;
                    if let (Ok(revision), Ok(mut map)) = (&result, leases.lock()) {
                        map.insert(session_id.clone(), (value, *revision));
                    }
                    out.send(ClusterCompletion::Lease {
                        token,
                        session_id,
                        result,
                    });
                });
            }
            ClusterCommand::RenewLease { token, session_id } => {
                let kv = self.nats.owners.clone();
                let leases = self.leases.clone();
                let shared = self.shared.clone();
                let gate = self.lease_gate(&session_id);
                // A lost lease also stops the session's appends here, whatever the core does next.
                let writer = self.writers.get(&session_id).cloned();
                tokio::spawn(async move {
                    let _turn = gate.lock().await;
                    let held = leases.lock().ok().and_then(|m| m.get(&session_id).cloned());
                    let result = match held {
                        None => Err(ClusterError::LeaseLost),
                        Some((value, revision)) => {
                            bounded(t, async {
                                let bytes = serde_json::to_vec(&value).map_err(nats_err)?;
                                kv.update(encode(&session_id), bytes.into(), revision)
                                    .await
                                    .map_err(|e| match e.kind() {
                                        kv::UpdateErrorKind::WrongLastRevision => {
                                            ClusterError::LeaseLost
                                        }
                                        _ => nats_err(e),
                                    })
                            })
                            .await
                        }
                    };
                    if let Ok(mut map) = leases.lock() {
                        match &result {
                            Ok(revision) => {
                                if let Some(entry) = map.get_mut(&session_id) {
                                    entry.1 = *revision;
                                }
                                shared.stats.lease_renewals.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(ClusterError::LeaseLost) => {
                                map.remove(&session_id);
                                shared.stats.leases_lost.fetch_add(1, Ordering::Relaxed);
                                if let Some(w) = &writer {
                                    let _ = w.send(WriterJob::LeaseLost);
                                }
                            }
                            Err(_) => {}
                        }
                    }
                    out.send(ClusterCompletion::Lease {
                        token,
                        session_id,
                        result,
                    });
                });
            }
            ClusterCommand::ReleaseLease { token, session_id } => {
                let kv = self.nats.owners.clone();
                let leases = self.leases.clone();
                let gate = self.lease_gate(&session_id);
                tokio::spawn(async move {
                    let _turn = gate.lock().await;
                    let held = leases.lock().ok().and_then(|mut m| m.remove(&session_id));
                    let result = match held {
                        None => Err(ClusterError::LeaseLost),
                        Some((_, revision)) => {
                            bounded(t, async {
                                kv.delete_expect_revision(encode(&session_id), Some(revision))
                                    .await
                                    .map(|()| 0)
                                    .map_err(|e| match e.kind() {
                                        kv::UpdateErrorKind::WrongLastRevision => {
                                            ClusterError::LeaseLost
                                        }
                                        _ => nats_err(e),
                                    })
                            })
                            .await
                        }
                    };
                    out.send(ClusterCompletion::Lease {
                        token,
                        session_id,
                        result,
                    });
                });
            }
            ClusterCommand::GetLease { token, session_id } => {
                let kv = self.nats.owners.clone();
                tokio::spawn(async move {
                    let result = bounded(t, read_lease(&kv, &encode(&session_id))).await;
                    out.send(ClusterCompletion::LeaseHolder { token, result });
                });
            }
            ClusterCommand::ListInstances { token } => {
                let stream = self.nats.instances_stream.clone();
                tokio::spawn(async move {
                    let filter = format!("$KV.{}.>", layout::INSTANCES);
                    let result = bounded(t, async {
                        let mut list = Vec::new();
                        for (_, value, _) in kv_latest(&stream, filter).await? {
                            list.push(serde_json::from_slice::<InstanceInfo>(&value).map_err(
                                |e| ClusterError::Corrupt(format!("instance entry: {e}")),
                            )?);
                        }
                        Ok(list)
                    })
                    .await;
                    out.send(ClusterCompletion::Instances { token, result });
                });
            }
            _ => {}
        }
    }

    /// Lease operations of one session run one at a time, in submission order: a renewal sent
    /// while the previous one is still in flight must use that one's new revision.
    fn lease_gate(&self, session_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        match self.lease_gates.lock() {
            Ok(mut gates) => gates.entry(session_id.to_string()).or_default().clone(),
            Err(_) => Arc::default(),
        }
    }
}

/// Latest value of every key under `prefix` (KV subjects), deletes left out.
pub(crate) async fn kv_latest(
    stream: &stream::Stream,
    filter: String,
) -> Result<Vec<(String, Bytes, u64)>, ClusterError> {
    let (messages, _) = read_ordered(
        stream,
        filter,
        DeliverPolicy::LastPerSubject,
        usize::MAX,
        |_| true,
    )
    .await?;
    let mut out = Vec::new();
    for m in messages {
        if is_kv_removal(m.headers.as_ref()) {
            continue;
        }
        let revision = m.info().map_err(nats_err)?.stream_sequence;
        out.push((m.subject.to_string(), m.payload.clone(), revision));
    }
    Ok(out)
}

pub(crate) fn parse_meta(value: &[u8]) -> Result<SessionMeta, ClusterError> {
    serde_json::from_slice(value).map_err(|e| ClusterError::Corrupt(format!("registry value: {e}")))
}

pub(crate) fn cache_put(shared: &Shared, entry: RegistryEntry) {
    if let Ok(mut cache) = shared.cache.write() {
        let key = (entry.meta.tenant_id.clone(), entry.meta.id.clone());
        match cache.get(&key) {
            Some(old) if old.revision >= entry.revision => {}
            _ => {
                cache.insert(key, entry);
            }
        }
    }
}

pub(crate) fn cache_remove(shared: &Shared, tenant_id: &str, session_id: &str) {
    if let Ok(mut cache) = shared.cache.write() {
        cache.remove(&(tenant_id.to_string(), session_id.to_string()));
    }
}

pub(crate) async fn read_lease(
    kv: &kv::Store,
    key: &str,
) -> Result<Option<LeaseInfo>, ClusterError> {
    match kv.entry(key).await.map_err(nats_err)? {
        Some(e) if e.operation == Operation::Put => Ok(Some(LeaseInfo {
            value: serde_json::from_slice(&e.value)
                .map_err(|e| ClusterError::Corrupt(format!("lease value: {e}")))?,
            revision: e.revision,
        })),
        _ => Ok(None),
    }
}

/// Keeps the registry cache current; restarts the watch (from the last revision seen) when it
/// ends, e.g. after the server restarted.
pub(crate) async fn watch_registry(kv: kv::Store, shared: Arc<Shared>) {
    let mut last_revision = 0u64;
    loop {
        // First the latest value of every key, then every change; after a restart of the watch,
        // every change since the last one seen.
        let watch = if last_revision == 0 {
            kv.watch_with_history(">").await
        } else {
            kv.watch_all_from_revision(last_revision + 1).await
        };
        match watch {
            Ok(mut watch) => {
                while let Some(entry) = watch.next().await {
                    match entry {
                        Ok(e) => apply_watch_entry(&shared, &e, &mut last_revision),
                        Err(e) => {
                            debug!(error = %e, "registry watch error");
                            break;
                        }
                    }
                }
            }
            Err(e) => debug!(error = %e, "registry watch could not start"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub(crate) fn apply_watch_entry(shared: &Shared, e: &kv::Entry, last_revision: &mut u64) {
    *last_revision = (*last_revision).max(e.revision);
    let Some((t, s)) = e.key.split_once('.') else {
        return;
    };
    let (Some(tenant_id), Some(session_id)) = (decode(t), decode(s)) else {
        return;
    };
    if e.operation == Operation::Put {
        match parse_meta(&e.value) {
            Ok(meta) => cache_put(
                shared,
                RegistryEntry {
                    meta,
                    revision: e.revision,
                },
            ),
            Err(err) => debug!(error = %err, key = %e.key, "unreadable registry entry"),
        }
    } else if let Ok(mut cache) = shared.cache.write() {
        if cache
            .get(&(tenant_id.clone(), session_id.clone()))
            .is_some_and(|c| c.revision < e.revision)
        {
            cache.remove(&(tenant_id, session_id));
        }
    }
}

pub(crate) fn is_kv_removal(headers: Option<&HeaderMap>) -> bool {
    matches!(header(headers, "KV-Operation"), Some("DEL") | Some("PURGE"))
}
