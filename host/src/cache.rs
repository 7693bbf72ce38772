//! A map that keeps at most a fixed number of entries and forgets the oldest first.
//!
//! What a host keeps in memory per module (compiled code, admissions, agent manifests) must not
//! grow with every module its clients send; everything in these maps can be built again from the
//! module store, so forgetting an entry costs only the time to rebuild it.

use std::borrow::Borrow;
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// How many modules a host keeps compiled and admitted in memory.
pub(crate) const MODULES_KEPT: usize = 256;

#[derive(Debug)]
pub(crate) struct Bounded<K, V> {
    map: HashMap<K, V>,
    /// Keys in the order they were first inserted: the front is forgotten first.
    order: VecDeque<K>,
    keep: usize,
}

impl<K: Hash + Eq + Clone, V> Bounded<K, V> {
    /// A map that keeps at most `keep` entries (at least one).
    pub(crate) fn new(keep: usize) -> Self {
        Self { map: HashMap::new(), order: VecDeque::new(), keep: keep.max(1) }
    }

    pub(crate) fn get<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.map.get(key)
    }

    /// Forgets every entry.
    pub(crate) fn clear(&mut self) {
        self.map.clear();
        self.order.clear();
    }

    /// How many entries are kept.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// The values kept, in no particular order.
    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.map.values()
    }

    /// Inserts or replaces `key`'s value, forgetting the oldest entries beyond the bound.
    pub(crate) fn insert(&mut self, key: K, value: V) {
        if self.map.insert(key.clone(), value).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > self.keep {
            if let Some(oldest) = self.order.pop_front() {
                self.map.remove(&oldest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_entries_are_forgotten_beyond_the_bound() {
        let mut map = Bounded::new(3);
        for n in 0..10 {
            map.insert(n, n * 10);
            assert!(map.len() <= 3);
        }
        assert_eq!((map.get(&6), map.get(&7), map.get(&9)), (None, Some(&70), Some(&90)));
        // Replacing a value keeps one entry for its key.
        map.insert(9, 0);
        assert_eq!((map.len(), map.get(&9), map.get(&7)), (3, Some(&0), Some(&70)));
    }
}
