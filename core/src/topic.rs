//! In-process topics: a subscriber list per topic. A publish encodes its frame once; each
//! subscriber gets a reference to the same bytes.

use crate::ConnectionId;

/// The connections subscribed to one topic (`session:{id}` or `tenant:{id}:sessions`), in the
/// order they subscribed; each at most once.
#[derive(Debug, Default)]
pub struct Topic {
    subscribers: Vec<ConnectionId>,
}

impl Topic {
    /// Adds `id`; returns false when it was subscribed already (never subscribed twice).
    pub fn subscribe(&mut self, id: ConnectionId) -> bool {
        if self.subscribers.contains(&id) {
            return false;
        }
        self.subscribers.push(id);
        true
    }

    /// Removes `id`; returns false when it was not subscribed.
    pub fn unsubscribe(&mut self, id: ConnectionId) -> bool {
        let before = self.subscribers.len();
        self.subscribers.retain(|subscriber| *subscriber != id);
        before != self.subscribers.len()
    }

    /// Whether `id` is subscribed.
    pub fn contains(&self, id: ConnectionId) -> bool {
        self.subscribers.contains(&id)
    }

    /// The subscribers, in the order they subscribed (the order a publish reaches them).
    pub fn subscribers(&self) -> &[ConnectionId] {
        &self.subscribers
    }

    /// How many connections are subscribed.
    pub fn len(&self) -> usize {
        self.subscribers.len()
    }

    /// Whether no connection is subscribed.
    pub fn is_empty(&self) -> bool {
        self.subscribers.is_empty()
    }
}
