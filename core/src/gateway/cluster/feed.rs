//! Sessions owned by another instance, delivered to the watchers here.
//!
//! The first join here subscribes to the session's live events and reads the log from the seq
//! the local registry knows up to its end; the join is answered once that is done, so its
//! `lastSeq` is what this instance has delivered. From then on each event is delivered exactly
//! when its `seq` is the next one: an older one is dropped (a duplicate), a later one is kept
//! and the missing range fetched from the log first (a gap). So a connection never sees a gap
//! or a duplicate, whichever order live events arrive in and whichever are lost.

use std::collections::BTreeMap;
use std::time::Instant;

use super::{Deferred, Pending};
use crate::cluster::{ClusterCommand, ClusterError, LogEvent};
use crate::ids::SessionId;
use crate::protocol::encode_frame;
use crate::protocol::session_reply::SessionReply;
use crate::storage::{QueryResult, StorageCompletion, StorageError, StoredEvent};
use crate::Gateway;

/// A session followed from the log.
pub(crate) struct Feed {
    /// The subscription is confirmed (every later stored event reaches it).
    subscribed: bool,
    /// Caught up with the log once: joins are answered.
    synced: bool,
    fetching: bool,
    /// Read the log again once the fetch in flight is answered (a reconnection meanwhile).
    again: bool,
    /// Live events ahead of the next seq, by seq.
    ahead: BTreeMap<u64, LogEvent>,
    /// Joins waiting for the first catch-up.
    waiting: Vec<Deferred>,
    /// Catch up at least to this seq (a take-over here waits for it).
    target: u64,
}

impl Feed {
    /// The connection is gone: its joins waiting here are forgotten.
    pub(crate) fn forget(&mut self, id: crate::ids::ConnectionId) {
        self.waiting
            .retain(|deferred| deferred.ctx.connection != id);
    }
}

impl Gateway {
    /// Whether joins of the session are answered from a feed caught up with the log (or the
    /// session is owned here): otherwise `deferred` waits for it, and the feed is started.
    pub(crate) fn feed_ready(&mut self, session_id: &SessionId, deferred: Deferred) -> bool {
        if self.is_owned(session_id) {
            return true;
        }
        let Some(tenant_id) = self
            .sessions
            .get(session_id)
            .map(|s| s.record().tenant_id.clone())
        else {
            return true;
        };
        let Some(cluster) = self.cluster.as_mut() else {
            return true;
        };
        if let Some(acquiring) = cluster.acquiring.get_mut(session_id) {
            // The session is being taken over here: the join is answered once it is (its
            // `lastSeq` then is the log's).
            acquiring.waiting.push(deferred);
            return false;
        }
        match cluster.feeds.get_mut(session_id) {
            Some(feed) if feed.synced => true,
            Some(feed) => {
                feed.waiting.push(deferred);
                false
            }
            None => {
                cluster.feeds.insert(
                    session_id.clone(),
                    Feed {
                        subscribed: false,
                        synced: false,
                        fetching: false,
                        again: false,
                        ahead: BTreeMap::new(),
                        waiting: vec![deferred],
                        target: 0,
                    },
                );
                self.cluster_command(ClusterCommand::Subscribe {
                    tenant_id,
                    session_id: session_id.to_string(),
                });
                false
            }
        }
    }

    fn feed_mut(&mut self, session_id: &str) -> Option<&mut Feed> {
        self.cluster.as_mut()?.feeds.get_mut(session_id)
    }

    /// The subscription is confirmed: read the log from what is known here to its end.
    pub(crate) fn feed_subscribed(&mut self, session_id: &str, _now: Instant) {
        let Some(feed) = self.feed_mut(session_id) else {
            return;
        };
        feed.subscribed = true;
        self.feed_fetch(session_id);
    }

    /// After a reconnection: read the log from what was delivered (live events may be lost).
    pub(crate) fn feed_resync(&mut self, session_id: &str) {
        let Some(feed) = self.feed_mut(session_id) else {
            return;
        };
        if feed.fetching {
            feed.again = true;
        } else if feed.synced {
            self.feed_fetch(session_id);
        }
    }

    fn feed_fetch(&mut self, session_id: &str) {
        let Some((id, session)) = self.sessions.get_key_value(session_id) else {
            return;
        };
        let (id, tenant_id, after_seq) = (
            id.clone(),
            session.record().tenant_id.clone(),
            session.record().last_seq,
        );
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        let limit = cluster.mode.max_fetch;
        let Some(feed) = cluster.feeds.get_mut(&id) else {
            return;
        };
        if feed.fetching || !feed.subscribed {
            return;
        }
        feed.fetching = true;
        if feed.synced {
            self.metrics.cluster_catchup_fetches += 1;
        }
        let token = self.cluster_pending(Pending::Fetch(id.clone()));
        self.cluster_command(ClusterCommand::Fetch {
            token,
            tenant_id,
            session_id: id.to_string(),
            after_seq,
            from_stream_seq: None,
            limit,
        });
    }

    /// A fetch answered: a feed's catch-up, or a storage query read from the log.
    pub(crate) fn fetched(
        &mut self,
        token: u64,
        result: Result<(Vec<LogEvent>, bool), ClusterError>,
        now: Instant,
    ) {
        let of =
            |p: &Pending| matches!(p, Pending::Query | Pending::Fetch(_) | Pending::History(_));
        match self.take_pending(token, of) {
            Some(Pending::History(read)) => self.history_fetched(token, *read, result, now),
            Some(Pending::Query) => {
                let result = result
                    .map(|(events, has_more)| QueryResult::Events {
                        events: events
                            .into_iter()
                            .map(|event| StoredEvent {
                                seq: event.seq,
                                event_type: String::new(),
                                turn_id: None,
                                payload: event.payload,
                                ts_ms: 0,
                            })
                            .collect(),
                        has_more,
                    })
                    .map_err(|error| StorageError::Io {
                        database: "cluster log".to_owned(),
                        message: error.to_string(),
                    });
                self.handle_storage(StorageCompletion::QueryResult { token, result }, now);
            }
            Some(Pending::Fetch(session_id)) => {
                let Some(feed) = self.feed_mut(&session_id) else {
                    return;
                };
                feed.fetching = false;
                let again = std::mem::take(&mut feed.again);
                let (events, has_more) = match result {
                    Ok(answer) => answer,
                    // Tried again at the next live event (or join).
                    Err(_) => return,
                };
                for event in events {
                    self.feed_offer(&session_id, event, now);
                }
                if has_more || again {
                    self.feed_fetch(&session_id);
                    return;
                }
                self.feed_drain(&session_id, now);
                let Some(feed) = self.feed_mut(&session_id) else {
                    return;
                };
                let waiting = if feed.synced {
                    Vec::new()
                } else {
                    feed.synced = true;
                    std::mem::take(&mut feed.waiting)
                };
                let target = feed.target;
                for deferred in waiting {
                    self.rerun(deferred, now);
                }
                let delivered = self
                    .sessions
                    .get(&session_id)
                    .map_or(0, |s| s.record().last_seq);
                let taking_over = self
                    .cluster
                    .as_ref()
                    .is_some_and(|c| c.acquiring.contains_key(&session_id));
                if taking_over && delivered >= target {
                    self.finish_takeover(&session_id, now);
                } else if taking_over {
                    // The log is ahead of what this fetch read: read on.
                    self.feed_fetch(&session_id);
                }
            }
            _ => {}
        }
    }

    /// A live event from the owner.
    pub(crate) fn live_event(&mut self, session_id: &str, event: LogEvent, now: Instant) {
        let Some(feed) = self.feed_mut(session_id) else {
            return;
        };
        if !feed.synced || feed.fetching {
            feed.ahead.insert(event.seq, event);
            return;
        }
        self.feed_offer(session_id, event, now);
        self.feed_drain(session_id, now);
    }

    /// Delivers `event` if its seq is the next one, keeps it if it is ahead, drops it if it
    /// was delivered already.
    fn feed_offer(&mut self, session_id: &str, event: LogEvent, now: Instant) {
        let Some((id, session)) = self.sessions.get_key_value(session_id) else {
            return;
        };
        let id = id.clone();
        let next = session.record().last_seq + 1;
        if event.seq < next {
            return;
        }
        if event.seq > next {
            if let Some(feed) = self.feed_mut(session_id) {
                feed.ahead.insert(event.seq, event);
            }
            return;
        }
        let Ok(text) = std::str::from_utf8(&event.payload) else {
            return;
        };
        let frame = crate::ws::encoder::text_frame(text);
        self.drive(&id, now, |session, _, out| {
            session.deliver_remote(event.seq, &event.epoch, &event.payload, frame, out)
        });
    }

    /// Delivers the events kept ahead that are next; a gap left fetches the missing range.
    fn feed_drain(&mut self, session_id: &str, now: Instant) {
        loop {
            let next = self
                .sessions
                .get(session_id)
                .map_or(0, |s| s.record().last_seq)
                + 1;
            let Some(feed) = self.feed_mut(session_id) else {
                return;
            };
            while feed
                .ahead
                .first_key_value()
                .is_some_and(|(seq, _)| *seq < next)
            {
                feed.ahead.pop_first();
            }
            match feed.ahead.first_key_value() {
                Some((seq, _)) if *seq == next => {
                    if let Some((_, event)) = feed.ahead.pop_first() {
                        self.feed_offer(session_id, event, now);
                    }
                }
                Some(_) => {
                    // A gap: the missing events come from the log before any later one.
                    self.feed_fetch(session_id);
                    return;
                }
                None => return,
            }
        }
    }

    /// A take-over here: the watchers first get every stored event up to `tail`. Returns true
    /// when that needs a fetch (`finish_takeover` follows it).
    pub(crate) fn feed_catch_up(&mut self, session_id: &SessionId, tail: u64) -> bool {
        let Some(feed) = self.feed_mut(session_id) else {
            return false;
        };
        feed.target = tail;
        feed.synced = true;
        self.feed_fetch(session_id);
        self.feed_mut(session_id).is_some_and(|feed| feed.fetching)
    }

    /// The last watcher here left a session owned elsewhere: stop following it (a later join
    /// starts again from the log).
    pub(crate) fn feed_unwatched(&mut self, session_id: &SessionId) {
        let watched = self
            .sessions
            .get(session_id)
            .is_some_and(|s| s.watchers().next().is_some());
        let Some(feed) = self.feed_mut(session_id) else {
            return;
        };
        if watched || !feed.synced || feed.fetching {
            return;
        }
        self.drop_feed(session_id);
    }

    /// The session is owned here from now on: no more live events from the log.
    pub(crate) fn drop_feed(&mut self, session_id: &SessionId) {
        let Some(feed) = self
            .cluster
            .as_mut()
            .and_then(|c| c.feeds.remove(session_id))
        else {
            return;
        };
        let _ = feed;
        if let Some(session) = self.sessions.get(session_id) {
            let tenant_id = session.record().tenant_id.clone();
            self.cluster_command(ClusterCommand::Unsubscribe {
                tenant_id,
                session_id: session_id.to_string(),
            });
        }
    }

    /// The session is no longer owned here: watchers follow it from the log (the next owner's
    /// events continue after what this instance published and the log acknowledged).
    pub(crate) fn feed_after_release(&mut self, session_id: &SessionId, _now: Instant) {
        let Some(session) = self.sessions.get(session_id) else {
            return;
        };
        if session.watchers().next().is_none() {
            return;
        }
        let tenant_id = session.record().tenant_id.clone();
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        cluster.feeds.insert(
            session_id.clone(),
            Feed {
                subscribed: false,
                synced: true,
                fetching: false,
                again: false,
                ahead: BTreeMap::new(),
                waiting: Vec::new(),
                target: 0,
            },
        );
        self.cluster_command(ClusterCommand::Subscribe {
            tenant_id,
            session_id: session_id.to_string(),
        });
    }

    /// Watchers here may have seen events the log never stored (published after `acked`): the
    /// next owner may give those seqs to other events. They leave the session and are told so
    /// with a `session_left` that answers no request; joining again reloads it (an explicit
    /// reload, never a silent gap or duplicate).
    pub(crate) fn reload_watchers(&mut self, session_id: &SessionId, acked: u64, now: Instant) {
        let Some(session) = self.sessions.get_mut(session_id) else {
            return;
        };
        let watchers: Vec<_> = session.watchers().collect();
        for watcher in &watchers {
            session.unsubscribe(*watcher);
        }
        session.rewind(acked);
        let left = encode_frame(&SessionReply::SessionLeft {
            request_id: None,
            session_id,
        });
        for watcher in watchers {
            if let Some(client) = self.client_state_mut(watcher) {
                client.leave(session_id);
            }
            self.send(watcher, left.clone(), now);
        }
    }
}
