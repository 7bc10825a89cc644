//! A small least-recently-used map for open database handles (capacities are ~100, so eviction
//! scans; lookups are hash lookups).

use std::collections::HashMap;
use std::hash::Hash;

pub struct Lru<K, V> {
    cap: usize,
    tick: u64,
    map: HashMap<K, (V, u64)>,
}

impl<K: Eq + Hash + Clone, V> Lru<K, V> {
    pub fn new(cap: usize) -> Self {
        Lru {
            cap: cap.max(1),
            tick: 0,
            map: HashMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn contains(&self, k: &K) -> bool {
        self.map.contains_key(k)
    }

    /// Marks `k` most recently used and returns its value.
    pub fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        self.tick += 1;
        let t = self.tick;
        self.map.get_mut(k).map(|(v, used)| {
            *used = t;
            v
        })
    }

    /// Inserts `k` (which must be absent); returns the entry evicted to make room, if any.
    pub fn insert(&mut self, k: K, v: V) -> Option<(K, V)> {
        let evicted = if self.map.len() >= self.cap && !self.map.contains_key(&k) {
            let oldest = self
                .map
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone());
            oldest.and_then(|o| self.map.remove(&o).map(|(v, _)| (o, v)))
        } else {
            None
        };
        self.tick += 1;
        self.map.insert(k, (v, self.tick));
        evicted
    }

    pub fn remove(&mut self, k: &K) -> Option<V> {
        self.map.remove(k).map(|(v, _)| v)
    }

    pub fn drain(&mut self) -> Vec<(K, V)> {
        self.map.drain().map(|(k, (v, _))| (k, v)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used() {
        let mut l = Lru::new(2);
        assert!(l.insert("a", 1).is_none());
        assert!(l.insert("b", 2).is_none());
        assert_eq!(l.get_mut(&"a"), Some(&mut 1));
        assert_eq!(l.insert("c", 3), Some(("b", 2)));
        assert_eq!(l.insert("d", 4), Some(("a", 1)));
        assert_eq!(l.len(), 2);
        assert!(l.contains(&"c") && l.contains(&"d"));
        assert_eq!(l.remove(&"c"), Some(3));
        assert_eq!(l.drain(), vec![("d", 4)]);
    }
}
