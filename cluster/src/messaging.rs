//! Plain subjects: live event subscriptions, commands to a session's owner (request/reply),
//! tenant notifications.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_nats::Client;
use bytes::Bytes;
use futures_lite::StreamExt;

use crate::engine::*;
use crate::log::parse_event;
use crate::types::*;

impl Engine {
    pub(crate) fn message_command(&mut self, cmd: ClusterCommand, t: Duration, out: Completer) {
        match cmd {
            ClusterCommand::Subscribe {
                tenant_id,
                session_id,
            } => {
                let subject = live_subject(&tenant_id, &session_id);
                if self.subscriptions.contains_key(&subject) {
                    out.send(ClusterCompletion::Subscribed {
                        tenant_id,
                        session_id,
                        result: Ok(()),
                    });
                    return;
                }
                let client = self.nats.client.clone();
                let key = subject.clone();
                let task = tokio::spawn(async move {
                    let sub = bounded(t, async {
                        let sub = client.subscribe(subject).await.map_err(nats_err)?;
                        round_trip(&client).await?;
                        Ok(sub)
                    })
                    .await;
                    let mut sub = match sub {
                        Ok(sub) => {
                            out.send(ClusterCompletion::Subscribed {
                                tenant_id: tenant_id.clone(),
                                session_id: session_id.clone(),
                                result: Ok(()),
                            });
                            sub
                        }
                        Err(e) => {
                            out.send(ClusterCompletion::Subscribed {
                                tenant_id,
                                session_id,
                                result: Err(e),
                            });
                            return;
                        }
                    };
                    while let Some(m) = sub.next().await {
                        // The republished copy names its stream sequence.
                        let stream_seq = m
                            .headers
                            .as_ref()
                            .and_then(|h| h.get("Nats-Sequence"))
                            .and_then(|v| v.as_str().parse::<u64>().ok());
                        match parse_event(m.headers.as_ref(), m.payload, stream_seq) {
                            Ok(event) => out.send(ClusterCompletion::LiveEvent {
                                tenant_id: tenant_id.clone(),
                                session_id: session_id.clone(),
                                event,
                            }),
                            Err(error) => out.send(ClusterCompletion::Failed {
                                what: format!("live event of session {session_id}"),
                                error,
                            }),
                        }
                    }
                });
                self.track(key, task);
            }
            ClusterCommand::Unsubscribe {
                tenant_id,
                session_id,
            } => self.untrack(&live_subject(&tenant_id, &session_id)),
            ClusterCommand::ServeCommands { session_id } => {
                let subject = command_subject(&session_id);
                if self.subscriptions.contains_key(&subject) {
                    out.send(ClusterCompletion::Serving {
                        session_id,
                        result: Ok(()),
                    });
                    return;
                }
                let client = self.nats.client.clone();
                let replies = self.replies.clone();
                let next = self.next_request.clone();
                let key = subject.clone();
                let task = tokio::spawn(async move {
                    let sub = bounded(t, async {
                        let sub = client.subscribe(subject).await.map_err(nats_err)?;
                        round_trip(&client).await?;
                        Ok(sub)
                    })
                    .await;
                    let ok = sub.as_ref().map(|_| ()).map_err(Clone::clone);
                    out.send(ClusterCompletion::Serving {
                        session_id: session_id.clone(),
                        result: ok,
                    });
                    let Ok(mut sub) = sub else { return };
                    while let Some(m) = sub.next().await {
                        let Some(reply) = m.reply else { continue };
                        let request = next.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut r) = replies.lock() {
                            let now = Instant::now();
                            while let Some(entry) = r.first_entry() {
                                if now.duration_since(entry.get().1) < t * 2 {
                                    break;
                                }
                                entry.remove();
                            }
                            r.insert(request, (reply, now));
                        }
                        out.send(ClusterCompletion::CommandRequest {
                            session_id: session_id.clone(),
                            request,
                            payload: m.payload,
                        });
                    }
                });
                self.track(key, task);
            }
            ClusterCommand::StopServing { session_id } => {
                self.untrack(&command_subject(&session_id))
            }
            ClusterCommand::Reply { request, payload } => {
                let reply = self
                    .replies
                    .lock()
                    .ok()
                    .and_then(|mut r| r.remove(&request))
                    .map(|(subject, _)| subject);
                let client = self.nats.client.clone();
                tokio::spawn(async move {
                    let result = match reply {
                        None => Err(ClusterError::NotFound),
                        Some(subject) => {
                            bounded(t, async {
                                client.publish(subject, payload).await.map_err(nats_err)?;
                                client.flush().await.map_err(nats_err)
                            })
                            .await
                        }
                    };
                    if let Err(error) = result {
                        out.send(ClusterCompletion::Failed {
                            what: format!("reply to request {request}"),
                            error,
                        });
                    }
                });
            }
            ClusterCommand::Forward {
                token,
                session_id,
                payload,
            } => {
                let client = self.nats.client.clone();
                let shared = self.shared.clone();
                tokio::spawn(async move {
                    shared.stats.forwarded.fetch_add(1, Ordering::Relaxed);
                    let result = bounded(t, async {
                        client
                            .request(command_subject(&session_id), payload)
                            .await
                            .map(|m| m.payload)
                            .map_err(|e| match e.kind() {
                                async_nats::RequestErrorKind::NoResponders => {
                                    ClusterError::NoResponders
                                }
                                async_nats::RequestErrorKind::TimedOut => ClusterError::Timeout,
                                _ => nats_err(e),
                            })
                    })
                    .await;
                    out.send(ClusterCompletion::Forwarded { token, result });
                });
            }
            ClusterCommand::WatchTenant { tenant_id } => {
                let subject = tenant_subject(&tenant_id);
                if self.subscriptions.contains_key(&subject) {
                    out.send(ClusterCompletion::Watching {
                        tenant_id,
                        result: Ok(()),
                    });
                    return;
                }
                let client = self.nats.client.clone();
                let key = subject.clone();
                let task = tokio::spawn(async move {
                    let sub = bounded(t, async {
                        let sub = client.subscribe(subject).await.map_err(nats_err)?;
                        round_trip(&client).await?;
                        Ok(sub)
                    })
                    .await;
                    let ok = sub.as_ref().map(|_| ()).map_err(Clone::clone);
                    out.send(ClusterCompletion::Watching {
                        tenant_id: tenant_id.clone(),
                        result: ok,
                    });
                    let Ok(mut sub) = sub else { return };
                    while let Some(m) = sub.next().await {
                        out.send(ClusterCompletion::TenantNotice {
                            tenant_id: tenant_id.clone(),
                            payload: m.payload,
                        });
                    }
                });
                self.track(key, task);
            }
            ClusterCommand::UnwatchTenant { tenant_id } => {
                self.untrack(&tenant_subject(&tenant_id))
            }
            ClusterCommand::Notify { tenant_id, payload } => {
                let client = self.nats.client.clone();
                tokio::spawn(async move {
                    let result = bounded(t, async {
                        client
                            .publish(tenant_subject(&tenant_id), payload)
                            .await
                            .map_err(nats_err)?;
                        client.flush().await.map_err(nats_err)
                    })
                    .await;
                    if let Err(error) = result {
                        out.send(ClusterCompletion::Failed {
                            what: format!("notification to tenant {tenant_id}"),
                            error,
                        });
                    }
                });
            }
            _ => {}
        }
    }

    fn track(&mut self, key: String, task: tokio::task::JoinHandle<()>) {
        if let Some(old) = self.subscriptions.insert(key, task.abort_handle()) {
            old.abort();
        }
    }

    fn untrack(&mut self, key: &str) {
        if let Some(task) = self.subscriptions.remove(key) {
            task.abort();
        }
    }
}

/// Returns once the server has processed everything this client sent before (a subscription is
/// then active for every other client): a message to a fresh inbox of our own, received back.
/// (`Client::flush` only writes the socket.)
pub(crate) async fn round_trip(client: &Client) -> Result<(), ClusterError> {
    let inbox = client.new_inbox();
    let mut probe = client.subscribe(inbox.clone()).await.map_err(nats_err)?;
    client
        .publish(inbox, Bytes::new())
        .await
        .map_err(nats_err)?;
    client.flush().await.map_err(nats_err)?;
    match probe.next().await {
        Some(_) => Ok(()),
        None => Err(ClusterError::Nats("the connection closed".into())),
    }
}
