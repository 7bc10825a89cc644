//! The bounded cache of verified tokens.
//!
//! Keyed by the SHA-256 of the token: a cryptographic hash, because two tokens sharing a key would
//! let the second one borrow the first one's identity (an authentication bypass). The raw token is
//! not kept, so a heap dump does not hand out bearer tokens either.
//!
//! Two indexes keep every operation `O(log n)`: by deadline (to drop expired entries first) and by
//! insertion order (to drop the oldest when nothing has expired).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::protocol::Identity;

pub(crate) type TokenKey = [u8; 32];

pub(crate) fn token_key(token: &str) -> TokenKey {
    Sha256::digest(token.as_bytes()).into()
}

struct Entry {
    identity: Arc<Identity>,
    /// The entry answers only while `valid_from_ms <= now < until_ms`.
    valid_from_ms: u64,
    until_ms: u64,
    seq: u64,
}

pub(crate) struct TokenCache {
    capacity: usize,
    entries: HashMap<TokenKey, Entry>,
    by_deadline: BTreeMap<(u64, u64), TokenKey>,
    by_age: BTreeMap<u64, TokenKey>,
    next_seq: u64,
}

impl TokenCache {
    pub(crate) fn new(capacity: usize) -> Self {
        TokenCache {
            capacity,
            entries: HashMap::new(),
            by_deadline: BTreeMap::new(),
            by_age: BTreeMap::new(),
            next_seq: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The cached identity, if the entry exists and is live at `now_ms`. A stale entry is removed
    /// so the caller's full verification decides (and reports) what is wrong with the token.
    pub(crate) fn get(&mut self, key: &TokenKey, now_ms: u64) -> Option<Arc<Identity>> {
        let entry = self.entries.get(key)?;
        if entry.valid_from_ms <= now_ms && now_ms < entry.until_ms {
            return Some(Arc::clone(&entry.identity));
        }
        self.remove(key);
        None
    }

    pub(crate) fn insert(
        &mut self,
        key: TokenKey,
        identity: Arc<Identity>,
        valid_from_ms: u64,
        until_ms: u64,
        now_ms: u64,
    ) {
        if self.capacity == 0 || until_ms <= now_ms {
            return;
        }
        self.remove(&key);
        if self.entries.len() >= self.capacity {
            self.purge_expired(now_ms);
        }
        while self.entries.len() >= self.capacity {
            let Some((_, oldest)) = self.by_age.pop_first() else {
                break;
            };
            self.remove(&oldest);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.by_deadline.insert((until_ms, seq), key);
        self.by_age.insert(seq, key);
        self.entries.insert(
            key,
            Entry {
                identity,
                valid_from_ms,
                until_ms,
                seq,
            },
        );
    }

    /// Drops every entry whose deadline is at or before `now_ms`.
    pub(crate) fn purge_expired(&mut self, now_ms: u64) {
        while let Some((&(until, _), &key)) = self.by_deadline.first_key_value() {
            if until > now_ms {
                break;
            }
            self.remove(&key);
        }
    }

    fn remove(&mut self, key: &TokenKey) {
        if let Some(entry) = self.entries.remove(key) {
            self.by_deadline.remove(&(entry.until_ms, entry.seq));
            self.by_age.remove(&entry.seq);
        }
    }
}
