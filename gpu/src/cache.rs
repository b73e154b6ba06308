//! A byte-budgeted LRU map with pins: the host model cache and each device's weight
//! cache are the same structure, so the CPU path accounts bytes exactly as a GPU does.

use std::collections::HashMap;
use std::hash::Hash;

#[derive(Debug)]
struct Entry<V> {
    value: V,
    bytes: u64,
    last_used: u64,
    /// Batches using the entry right now; a pinned entry is never evicted.
    pins: u32,
}

/// Entries of known size under a byte budget, least recently used evicted first.
/// `reserved` bytes (a device's in-flight activations) count against the budget too.
#[derive(Debug)]
pub(crate) struct Lru<K, V> {
    budget: u64,
    used: u64,
    reserved: u64,
    clock: u64,
    map: HashMap<K, Entry<V>>,
}

impl<K: Hash + Eq + Clone, V> Lru<K, V> {
    pub(crate) fn new(budget: u64) -> Self {
        Lru {
            budget,
            used: 0,
            reserved: 0,
            clock: 0,
            map: HashMap::new(),
        }
    }

    pub(crate) fn budget(&self) -> u64 {
        self.budget
    }

    /// Bytes held by entries.
    pub(crate) fn used(&self) -> u64 {
        self.used
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    pub(crate) fn contains(&self, k: &K) -> bool {
        self.map.contains_key(k)
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// The value, marked as just used.
    pub(crate) fn get(&mut self, k: &K) -> Option<&V> {
        let now = self.tick();
        self.map.get_mut(k).map(|e| {
            e.last_used = now;
            &e.value
        })
    }

    fn free(&self) -> u64 {
        self.budget.saturating_sub(self.used + self.reserved)
    }

    /// Evicts unpinned entries, least recently used first, until `bytes` more fit.
    /// Returns the evicted entries, or `None` (and evicts nothing) when even evicting
    /// every unpinned entry would not make room.
    pub(crate) fn make_room(&mut self, bytes: u64) -> Option<Vec<(K, V)>> {
        if self.free() >= bytes {
            return Some(Vec::new());
        }
        let evictable: u64 = self
            .map
            .values()
            .filter(|e| e.pins == 0)
            .map(|e| e.bytes)
            .sum();
        if self.free() + evictable < bytes {
            return None;
        }
        let mut order: Vec<(u64, K)> = self
            .map
            .iter()
            .filter(|(_, e)| e.pins == 0)
            .map(|(k, e)| (e.last_used, k.clone()))
            .collect();
        order.sort_unstable_by_key(|(t, _)| *t);
        let mut evicted = Vec::new();
        for (_, k) in order {
            if self.free() >= bytes {
                break;
            }
            if let Some(e) = self.map.remove(&k) {
                self.used -= e.bytes;
                evicted.push((k, e.value));
            }
        }
        Some(evicted)
    }

    /// Inserts (or replaces) an entry after making room. `Err` gives the value back when
    /// it cannot fit; otherwise the entries evicted for it are returned.
    pub(crate) fn insert(&mut self, k: K, value: V, bytes: u64) -> Result<Vec<(K, V)>, V> {
        let old = self.remove(&k);
        let Some(mut evicted) = self.make_room(bytes) else {
            return Err(value);
        };
        let now = self.tick();
        self.used += bytes;
        self.map.insert(
            k.clone(),
            Entry {
                value,
                bytes,
                last_used: now,
                pins: 0,
            },
        );
        if let Some(v) = old {
            evicted.push((k, v));
        }
        Ok(evicted)
    }

    pub(crate) fn remove(&mut self, k: &K) -> Option<V> {
        self.map.remove(k).map(|e| {
            self.used -= e.bytes;
            e.value
        })
    }

    pub(crate) fn pin(&mut self, k: &K) {
        let now = self.tick();
        if let Some(e) = self.map.get_mut(k) {
            e.pins += 1;
            e.last_used = now;
        }
    }

    pub(crate) fn unpin(&mut self, k: &K) {
        if let Some(e) = self.map.get_mut(k) {
            e.pins = e.pins.saturating_sub(1);
        }
    }

    /// Holds `bytes` of the budget for something that is not an entry.
    pub(crate) fn reserve(&mut self, bytes: u64) {
        self.reserved += bytes;
    }

    pub(crate) fn release(&mut self, bytes: u64) {
        self.reserved = self.reserved.saturating_sub(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used_first() {
        let mut c: Lru<&str, u32> = Lru::new(100);
        assert!(c.insert("a", 1, 40).expect("fits").is_empty());
        assert!(c.insert("b", 2, 40).expect("fits").is_empty());
        c.get(&"a");
        let ev = c.insert("c", 3, 40).expect("fits after evicting");
        assert_eq!(ev.iter().map(|(k, _)| *k).collect::<Vec<_>>(), vec!["b"]);
        assert!(c.contains(&"a") && c.contains(&"c"));
        assert_eq!(c.used(), 80);
    }

    #[test]
    fn pinned_entries_stay_and_reservations_count() {
        let mut c: Lru<&str, ()> = Lru::new(100);
        c.insert("a", (), 60).expect("fits");
        c.pin(&"a");
        assert!(c.make_room(50).is_none(), "a is pinned");
        assert!(c.insert("b", (), 50).is_err());
        c.unpin(&"a");
        c.reserve(30);
        assert!(c.make_room(80).is_none(), "30 reserved: 70 at most");
        assert_eq!(c.make_room(70).expect("evicts a").len(), 1);
        c.release(30);
        assert_eq!(c.used(), 0);
    }

    #[test]
    fn too_big_is_refused_without_evicting() {
        let mut c: Lru<u8, ()> = Lru::new(10);
        c.insert(1, (), 5).expect("fits");
        assert!(c.insert(2, (), 11).is_err());
        assert!(c.contains(&1));
    }
}
