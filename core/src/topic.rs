//! In-process topics: a subscriber list per topic. A publish encodes its frame once; each
//! subscriber gets a reference to the same bytes.

use crate::ConnectionId;

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

    pub fn unsubscribe(&mut self, id: ConnectionId) -> bool {
        let before = self.subscribers.len();
        self.subscribers.retain(|subscriber| *subscriber != id);
        before != self.subscribers.len()
    }

    pub fn contains(&self, id: ConnectionId) -> bool {
        self.subscribers.contains(&id)
    }

    pub fn subscribers(&self) -> &[ConnectionId] {
        &self.subscribers
    }

    pub fn len(&self) -> usize {
        self.subscribers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.subscribers.is_empty()
    }
}
