//! The model's KV buckets: the registry (revisions, compare-and-set) and the leases (expiry).

use std::time::Instant;

use super::SimCluster;
use crate::cluster::{
    ClusterCommand, ClusterCompletion, ClusterError, LeaseInfo, LeaseValue, RegistryEntry,
};

impl SimCluster {
    /// A registry or lease command.
    pub(super) fn kv(&mut self, from: usize, command: ClusterCommand, now: Instant) {
        use ClusterCommand as C;
        use ClusterCompletion as D;
        let engine = &mut self.engine;
        match command {
            C::RegistryCreate { token, meta } => {
                let result = if engine.registry.contains_key(&meta.id) {
                    Err(ClusterError::Conflict)
                } else {
                    engine.revision += 1;
                    engine
                        .registry
                        .insert(meta.id.clone(), (meta, engine.revision));
                    Ok(engine.revision)
                };
                self.reply(from, D::Registry { token, result });
            }
            C::RegistryUpdate {
                token,
                meta,
                revision,
            } => {
                let result = match engine.registry.get(&meta.id) {
                    Some((_, current)) if *current == revision => {
                        engine.revision += 1;
                        engine
                            .registry
                            .insert(meta.id.clone(), (meta, engine.revision));
                        Ok(engine.revision)
                    }
                    _ => Err(ClusterError::Conflict),
                };
                self.reply(from, D::Registry { token, result });
            }
            C::RegistryDelete {
                token, session_id, ..
            } => {
                engine.registry.remove(&session_id);
                self.reply(
                    from,
                    D::Registry {
                        token,
                        result: Ok(0),
                    },
                );
            }
            C::RegistryGet {
                token, session_id, ..
            } => {
                let entry =
                    engine
                        .registry
                        .get(&session_id)
                        .map(|(meta, revision)| RegistryEntry {
                            meta: meta.clone(),
                            revision: *revision,
                        });
                self.reply(
                    from,
                    D::RegistryEntry {
                        token,
                        result: Ok(entry),
                    },
                );
            }
            C::RegistryList { token, tenant_id } => {
                let mut entries: Vec<RegistryEntry> = engine
                    .registry
                    .values()
                    .filter(|(meta, _)| meta.tenant_id == tenant_id)
                    .map(|(meta, revision)| RegistryEntry {
                        meta: meta.clone(),
                        revision: *revision,
                    })
                    .collect();
                entries.sort_by_key(|e| (e.meta.created_at_ms, e.meta.id.clone()));
                self.reply(
                    from,
                    D::RegistryList {
                        token,
                        result: Ok(entries),
                    },
                );
            }
            C::AcquireLease {
                token,
                session_id,
                fence,
            } => {
                let result = match engine.leases.get(&session_id) {
                    Some((holder, revision, expires)) if *expires > now => {
                        Err(ClusterError::LeaseHeld(LeaseInfo {
                            value: LeaseValue {
                                instance: format!("gw-{holder}"),
                                fence,
                            },
                            revision: *revision,
                        }))
                    }
                    _ => {
                        engine.revision += 1;
                        engine.leases.insert(
                            session_id.clone(),
                            (from, engine.revision, now + self.lease_ttl),
                        );
                        Ok(engine.revision)
                    }
                };
                self.reply(
                    from,
                    D::Lease {
                        token,
                        session_id,
                        result,
                    },
                );
            }
            C::RenewLease { token, session_id } => {
                let result = match engine.leases.get_mut(&session_id) {
                    Some((holder, _, expires)) if *holder == from && *expires > now => {
                        *expires = now + self.lease_ttl;
                        Ok(1)
                    }
                    _ => {
                        // The engine fences the session's appends itself.
                        engine.anchors.remove(&(from, session_id.clone()));
                        Err(ClusterError::LeaseLost)
                    }
                };
                self.reply(
                    from,
                    D::Lease {
                        token,
                        session_id,
                        result,
                    },
                );
            }
            C::ReleaseLease { token, session_id } => {
                if engine
                    .leases
                    .get(&session_id)
                    .is_some_and(|(holder, _, _)| *holder == from)
                {
                    engine.leases.remove(&session_id);
                }
                self.reply(
                    from,
                    D::Lease {
                        token,
                        session_id,
                        result: Ok(0),
                    },
                );
            }
            C::GetLease { token, .. } => self.reply(
                from,
                D::LeaseHolder {
                    token,
                    result: Ok(None),
                },
            ),
            _ => {}
        }
    }
}
