//! A session's subscribers and replay slots (PROTOCOL section 6).
//!
//! A resume is read from storage, whose reads see every earlier write (read-your-writes), so the
//! replay holds every event up to the `lastSeq` measured at the join. Events published while the
//! read is in flight wait in the joining connection's slot and follow the replay: no gap and no
//! duplicate.

use bytes::Bytes;

use crate::ids::ConnectionId;
use crate::session::Session;

/// A join waiting for its replay to be read from storage.
pub(crate) struct ReplaySlot {
    connection: ConnectionId,
    /// The storage query reading the replay: its answer is matched by token, never by
    /// connection, so a later join of the same connection cannot take it.
    token: u64,
    /// Live frames published since the join, sent after the replay.
    waiting: Vec<Bytes>,
}

impl ReplaySlot {
    pub(super) fn hold(&mut self, frame: Bytes) {
        self.waiting.push(frame);
    }
}

impl Session {
    /// The connections that receive live events.
    pub(crate) fn subscribers(&self) -> &[ConnectionId] {
        self.topic.subscribers()
    }

    /// Every connection that joined: subscribed, or waiting for its replay.
    pub(crate) fn watchers(&self) -> impl Iterator<Item = ConnectionId> + '_ {
        self.topic
            .subscribers()
            .iter()
            .copied()
            .chain(self.replaying.iter().map(|slot| slot.connection))
    }

    /// The connection receives live events from now on.
    pub(crate) fn subscribe(&mut self, connection: ConnectionId) {
        self.topic.subscribe(connection);
    }

    /// Takes the connection out of the subscribers; returns the token of its replay still being
    /// read, if it had one (that join is abandoned).
    pub(crate) fn unsubscribe(&mut self, connection: ConnectionId) -> Option<u64> {
        self.topic.unsubscribe(connection);
        let index = self
            .replaying
            .iter()
            .position(|slot| slot.connection == connection)?;
        Some(self.replaying.remove(index).token)
    }

    /// A join whose replay storage reads under `token`: live events wait for it meanwhile.
    pub(crate) fn open_replay(&mut self, connection: ConnectionId, token: u64) {
        self.replaying.push(ReplaySlot {
            connection,
            token,
            waiting: Vec::new(),
        });
    }

    /// The replay read under `token` is answered: the connection is subscribed and gets the
    /// frames that waited for it (after its `session_joined`). `None` when the join was
    /// abandoned meanwhile.
    pub(crate) fn close_replay(&mut self, token: u64) -> Option<(ConnectionId, Vec<Bytes>)> {
        let index = self.replaying.iter().position(|slot| slot.token == token)?;
        let slot = self.replaying.remove(index);
        self.topic.subscribe(slot.connection);
        Some((slot.connection, slot.waiting))
    }
}
