//! The dedupe store's memory: one shard's finished records and running marks, behind one
//! lock ([`super::Dedupe`] keeps several, by the key's hash).
//!
//! A finished record is copied into the shard's ring of bytes, behind the records that
//! finished before it; the oldest are passed over (and unindexed) when a new one needs
//! their room, when the shard holds its most entries, or when their TTL has run out. An
//! index from the key's hash to the record's place in the ring finds it again. Nothing
//! is freed per record: the store used to keep each record's own buffers (the ack and the
//! result that were published, its key, its map entry) and free them when the record grew
//! old, long after they had left every cache, which made the eviction the store's largest
//! cost (issue 12, eleventh round). The ack and the result are now freed right after their
//! publish, by the thread that made them, and a duplicate gets a copy out of the ring.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use hashbrown::HashTable;
use tokio::sync::watch;

use super::Record;
use crate::runtime::key::{KeyHasher, TaskKey};

/// Where a second delivery of a running assignment waits for its record.
pub(super) type Waiters = Option<watch::Sender<Option<Arc<Record>>>>;

/// Bytes before a record's key in the ring: the lengths of the tenant, of the key (tenant
/// and id), of the ack and of the result (u32 each), and when it finished (u64, ns since
/// the store began).
const HEADER: usize = 24;

/// One shard's finished records and running marks.
#[derive(Debug)]
pub(super) struct Shard {
    /// Assignments running now, with the channel a second delivery waits on.
    running: HashMap<TaskKey, Waiters, KeyHasher>,
    /// Where each finished record starts in the ring, by its key's hash.
    index: HashTable<Slot>,
    /// The finished records in the order they finished: the oldest is passed over first.
    order: VecDeque<Meta>,
    /// The records' bytes; written up to `size` on the first lap, then over the oldest.
    ring: Vec<u8>,
    size: u64,
    /// Where the next record goes (bytes written since the shard began, padding included).
    head: u64,
    /// Most finished records held.
    most: usize,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    hash: u64,
    pos: u64,
}

#[derive(Debug, Clone, Copy)]
struct Meta {
    hash: u64,
    pos: u64,
    /// When it finished, ns since the store began.
    at: u64,
}

/// What [`Shard::begin`] found.
pub(super) enum Found {
    /// Finished within its TTL: a copy of the record.
    Done(Record),
    /// Running now: wait on this.
    Running(watch::Receiver<Option<Arc<Record>>>),
    /// Neither: marked running now.
    New,
}

impl Shard {
    /// A shard of `size` bytes of records and at most `most` of them. The index and the
    /// order are sized now and never grow: the index gets room for twice the records (a
    /// hash table over half full grows when its removals' tombstones have used up its room;
    /// under half full it tidies them in place). The ring is reserved at its first record
    /// and its pages are touched as records arrive.
    pub(super) fn new(size: usize, most: usize) -> Shard {
        let most = most.max(1);
        Shard {
            running: HashMap::default(),
            index: HashTable::with_capacity(2 * most),
            order: VecDeque::with_capacity(most + 1),
            ring: Vec::new(),
            size: size.max(1) as u64,
            head: 0,
            most,
        }
    }

    /// Looks `key` up; marks it running when it is neither running nor finished within
    /// `ttl` ns of `now`.
    pub(super) fn begin(&mut self, key: &TaskKey, hash: u64, now: u64, ttl: u64) -> Found {
        if let Some(waiters) = self.running.get_mut(key) {
            let rx = match waiters {
                Some(tx) => tx.subscribe(),
                None => {
                    let (tx, rx) = watch::channel(None);
                    *waiters = Some(tx);
                    rx
                }
            };
            return Found::Running(rx);
        }
        if let Some(at) = self.find(key, hash) {
            if let Some((done, record)) = self.read(at) {
                if now.saturating_sub(done) < ttl {
                    return Found::Done(record);
                }
            }
        }
        self.running.insert(key.clone(), None);
        Found::New
    }

    /// Records `record` as `key`'s, finished at `now`, and passes over the records it needs
    /// room from, those past the most held and those older than `ttl`. Returns the running
    /// mark's waiters, to be told. A record larger than the whole ring is not kept.
    pub(super) fn finish(
        &mut self,
        key: &TaskKey,
        hash: u64,
        record: &Record,
        now: u64,
        ttl: u64,
    ) -> Waiters {
        let waiters = self.running.remove(key).flatten();
        let len = (HEADER + key.len() + record.ack.len() + record.result.len()) as u64;
        if len > self.size {
            return waiters;
        }
        let mut pos = self.head;
        let lap_left = self.size - pos % self.size;
        if len > lap_left {
            pos += lap_left; // the rest of this lap stays unused
        }
        let end = pos + len;
        // The records whose bytes the new one overwrites: those that start a lap or more
        // before its end.
        while self.order.front().is_some_and(|m| m.pos + self.size < end) {
            self.pass_oldest();
        }
        self.head = end;
        // Every indexed place holds its record intact here (the overwritten ones were just
        // unindexed), so the key comparison below reads a real key.
        match self.find_slot(key, hash) {
            Some(slot) => slot.pos = pos,
            None => {
                self.index
                    .insert_unique(hash, Slot { hash, pos }, |s| s.hash);
            }
        }
        self.write(pos, key, record, now);
        self.order.push_back(Meta { hash, pos, at: now });
        while self.order.len() > self.most
            || self
                .order
                .front()
                .is_some_and(|m| now.saturating_sub(m.at) >= ttl)
        {
            self.pass_oldest();
        }
        waiters
    }

    /// Forgets `key`'s running mark (its delivery gave up), dropping its waiters.
    pub(super) fn give_up(&mut self, key: &TaskKey) {
        self.running.remove(key);
    }

    /// Finished records indexed and assignments running.
    pub(super) fn len(&self) -> usize {
        self.index.len() + self.running.len()
    }

    /// Bytes of the ring in use, from the oldest record held to the next place.
    pub(super) fn bytes(&self) -> u64 {
        self.order.front().map_or(0, |m| self.head - m.pos)
    }

    /// The index's and the order's room (the tests' check that neither grows).
    #[cfg(test)]
    pub(super) fn room(&self) -> (usize, usize) {
        (self.index.capacity(), self.order.capacity())
    }

    fn pass_oldest(&mut self) {
        let Some(m) = self.order.pop_front() else {
            return;
        };
        // Unindexed only if the index still points here: a key finished again later
        // points at its newer record.
        if let Ok(slot) = self.index.find_entry(m.hash, |s| s.pos == m.pos) {
            slot.remove();
        }
    }

    fn find(&self, key: &TaskKey, hash: u64) -> Option<u64> {
        let (ring, size) = (&self.ring, self.size);
        self.index
            .find(hash, |s| s.hash == hash && holds(ring, size, s.pos, key))
            .map(|s| s.pos)
    }

    fn find_slot(&mut self, key: &TaskKey, hash: u64) -> Option<&mut Slot> {
        let (ring, size) = (&self.ring, self.size);
        self.index
            .find_mut(hash, |s| s.hash == hash && holds(ring, size, s.pos, key))
    }

    fn write(&mut self, pos: u64, key: &TaskKey, record: &Record, now: u64) {
        if self.ring.capacity() == 0 {
            self.ring.reserve_exact(self.size as usize);
        }
        let (ack, result) = (&record.ack[..], &record.result[..]);
        let header = header(key.tenant().len(), key.len(), ack.len(), result.len(), now);
        let parts: [&[u8]; 4] = [&header, key.as_bytes(), ack, result];
        let mut at = (pos % self.size) as usize;
        if self.ring.len() == at {
            // The first lap (or its unused end, reached on a later one): appended.
            for part in parts {
                self.ring.extend_from_slice(part);
            }
            return;
        }
        let end = at + parts.iter().map(|p| p.len()).sum::<usize>();
        if self.ring.len() < end {
            self.ring.resize(end, 0);
        }
        for part in parts {
            if let Some(to) = self.ring.get_mut(at..at + part.len()) {
                to.copy_from_slice(part);
            }
            at += part.len();
        }
    }

    /// When the record at `pos` finished, and a copy of it.
    fn read(&self, pos: u64) -> Option<(u64, Record)> {
        let at = (pos % self.size) as usize;
        let h = self.ring.get(at..at + HEADER)?;
        let (key, ack, result) = (field(h, 4)?, field(h, 8)?, field(h, 12)?);
        let done = u64::from_le_bytes(h.get(16..24)?.try_into().ok()?);
        let ack_at = at + HEADER + key;
        let ack = self.ring.get(ack_at..ack_at + ack)?;
        let result = self
            .ring
            .get(ack_at + ack.len()..ack_at + ack.len() + result)?;
        Some((
            done,
            Record {
                ack: Bytes::copy_from_slice(ack),
                result: Bytes::copy_from_slice(result),
            },
        ))
    }
}

fn header(tenant: usize, key: usize, ack: usize, result: usize, at: u64) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    // Each is under the payload limit, far below 4 GiB (the record fits the ring).
    for (i, n) in [tenant, key, ack, result].into_iter().enumerate() {
        h[4 * i..4 * i + 4].copy_from_slice(&(n as u32).to_le_bytes());
    }
    h[16..].copy_from_slice(&at.to_le_bytes());
    h
}

/// The u32 length at `i` of a header.
fn field(h: &[u8], i: usize) -> Option<usize> {
    Some(u32::from_le_bytes(h.get(i..i + 4)?.try_into().ok()?) as usize)
}

/// Whether the record at `pos` is `key`'s.
fn holds(ring: &[u8], size: u64, pos: u64, key: &TaskKey) -> bool {
    let at = (pos % size) as usize;
    let Some(h) = ring.get(at..at + HEADER) else {
        return false;
    };
    field(h, 0) == Some(key.tenant().len())
        && field(h, 4) == Some(key.len())
        && ring.get(at + HEADER..at + HEADER + key.len()) == Some(key.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(n: u8, result: usize) -> Record {
        Record {
            ack: Bytes::from(vec![n; 3]),
            result: Bytes::from(vec![n; result]),
        }
    }

    fn key(id: &str) -> TaskKey {
        TaskKey::new("t", id)
    }

    const TTL: u64 = 1_000;

    fn finish(s: &mut Shard, id: &str, hash: u64, r: &Record, now: u64) {
        assert!(matches!(s.begin(&key(id), hash, now, TTL), Found::New));
        s.finish(&key(id), hash, r, now, TTL);
    }

    fn done(s: &mut Shard, id: &str, hash: u64, now: u64) -> Option<Record> {
        match s.begin(&key(id), hash, now, TTL) {
            Found::Done(r) => Some(r),
            Found::New => {
                s.give_up(&key(id));
                None
            }
            Found::Running(_) => panic!("{id} is not running"),
        }
    }

    #[test]
    fn a_record_comes_back_byte_for_byte_until_it_is_overwritten() {
        // Each record: 24 + 2 + 3 + 40 = 69 bytes; the ring holds three, not four.
        let mut s = Shard::new(230, 100);
        for (i, id) in ["a", "b", "c", "d"].iter().enumerate() {
            finish(&mut s, id, 7, &rec(i as u8, 40), 0);
        }
        // Same hash for all four: the key comparison tells them apart.
        assert!(done(&mut s, "a", 7, 1).is_none(), "overwritten");
        for (i, id) in ["b", "c", "d"].iter().enumerate() {
            assert_eq!(done(&mut s, id, 7, 1), Some(rec(i as u8 + 1, 40)));
        }
        // "d" did not fit the rest of the first lap (230 - 3 × 69 = 23 bytes): it went to
        // the next lap's start, over "a". "e" follows it, over "b".
        finish(&mut s, "e", 7, &rec(9, 40), 2);
        assert_eq!(done(&mut s, "e", 7, 3), Some(rec(9, 40)));
        assert!(done(&mut s, "b", 7, 3).is_none());
        assert_eq!(done(&mut s, "d", 7, 3), Some(rec(3, 40)));
        assert!(s.bytes() <= 230, "{}", s.bytes());
    }

    #[test]
    fn the_most_held_and_the_ttl_bound_it() {
        let mut s = Shard::new(1 << 20, 2);
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            finish(&mut s, id, i as u64, &rec(0, 10), 10 * i as u64);
        }
        assert!(done(&mut s, "a", 0, 30).is_none(), "past the most held");
        assert!(done(&mut s, "b", 1, 30).is_some());
        assert!(done(&mut s, "b", 1, 10 + TTL).is_none(), "expired");
        assert!(done(&mut s, "c", 2, 10 + TTL).is_some());
    }

    #[test]
    fn a_key_finished_again_keeps_its_newer_record_when_the_older_is_passed_over() {
        let mut s = Shard::new(1 << 20, 2);
        finish(&mut s, "a", 1, &rec(1, 10), 0);
        // Expired, so it runs again and finishes with another record.
        finish(&mut s, "a", 1, &rec(2, 10), TTL);
        finish(&mut s, "b", 2, &rec(3, 10), TTL);
        // The most held (2) passed over the older "a": the index still finds the newer.
        assert_eq!(done(&mut s, "a", 1, TTL + 1), Some(rec(2, 10)));
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn a_record_larger_than_the_ring_is_not_kept_and_its_waiters_are_told() {
        let mut s = Shard::new(100, 10);
        assert!(matches!(s.begin(&key("a"), 1, 0, TTL), Found::New));
        let Found::Running(rx) = s.begin(&key("a"), 1, 0, TTL) else {
            panic!("running")
        };
        let waiters = s.finish(&key("a"), 1, &rec(1, 200), 0, TTL);
        assert!(waiters.is_some(), "the waiters are handed back to be told");
        drop(rx);
        assert!(done(&mut s, "a", 1, 1).is_none());
        assert_eq!((s.len(), s.bytes()), (0, 0));
    }
}
