//! "Not executed twice": completed results by (tenant, assignment_id), in memory (bounded,
//! with a TTL) and, in JetStream mode, in a key-value bucket that survives restarts and is
//! shared by every instance. A duplicate that arrives while the first copy still runs waits
//! for its result instead of running the block again.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::sync::watch;

use crate::transport::{Bucket, BucketError};

use super::key::{KeyHasher, TaskKey};

/// What was published for a finished assignment; re-published byte for byte on a duplicate.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub ack: Bytes,
    pub result: Bytes,
}

impl Record {
    fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(8 + self.ack.len() + self.result.len());
        b.put_u32(self.ack.len() as u32);
        b.put_slice(&self.ack);
        b.put_slice(&self.result);
        b.freeze()
    }

    fn decode(mut b: Bytes) -> Option<Record> {
        if b.len() < 4 {
            return None;
        }
        let n = b.get_u32() as usize;
        if b.len() < n {
            return None;
        }
        let ack = b.split_to(n);
        Some(Record { ack, result: b })
    }
}

type Key = TaskKey;

thread_local! {
    /// This CPU thread's way to the bucket: the same bucket bound through the thread's own
    /// lane connection ([`use_lane_bucket`]).
    static LANE_BUCKET: RefCell<Option<Arc<Bucket>>> = const { RefCell::new(None) };
}

/// Makes `bucket` (the results bucket bound through this thread's lane connection) the one
/// this thread's lookups and stores use: they then travel on the connection this thread
/// drives, instead of crossing to the control connection's thread and back. A thread that
/// has none (no lane, core mode) uses the store's own.
pub fn use_lane_bucket(bucket: Bucket) {
    LANE_BUCKET.with(|b| *b.borrow_mut() = Some(Arc::new(bucket)));
}

#[derive(Debug)]
enum Entry {
    /// Running here; the channel exists once a second delivery waits for the result.
    Running(Option<watch::Sender<Option<Arc<Record>>>>),
    Done(Arc<Record>, Instant),
}

/// What [`Dedupe::begin_key`] found.
#[derive(Debug)]
pub enum Begin {
    /// First sight: run it; the guard must be completed (or dropped to give up).
    New(Guard),
    /// Already finished: re-publish this.
    Done(Arc<Record>),
    /// Running right now in this process: wait for it.
    Running(watch::Receiver<Option<Arc<Record>>>),
}

#[derive(Debug)]
struct Inner {
    map: HashMap<Key, Entry, KeyHasher>,
    order: VecDeque<(Key, Instant)>,
    /// What the finished entries hold, by [`cost`].
    bytes: usize,
}

/// Bookkeeping counted per finished entry on top of its bytes ([`cost`]).
const OVERHEAD: usize = 192;

/// What one finished entry costs the process: its record, its key (one allocation, shared
/// by map and order) and the bookkeeping around them (map slot, queue slot, `Arc`s,
/// allocation headers).
fn cost(key: &Key, record: &Record) -> usize {
    record.ack.len() + record.result.len() + key.len() + OVERHEAD
}

/// The dedupe store.
#[derive(Debug, Clone)]
pub struct Dedupe {
    inner: Arc<Mutex<Inner>>,
    /// Behind an `Arc`: a `Store` is over a kilobyte, and every guard carries the store.
    kv: Option<Arc<Bucket>>,
    ttl: Duration,
    capacity: usize,
    /// Most bytes the finished entries may hold ([`cost`]); the oldest go first past it.
    budget: usize,
}

/// Holds the "running" mark of one assignment.
#[derive(Debug)]
pub struct Guard {
    store: Dedupe,
    key: Option<Key>,
}

fn kv_key(tenant: &str, id: &str) -> String {
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    // Both parts encoded: key-value keys allow only [-/_=.a-zA-Z0-9].
    // An empty tenant (a rejected assignment that had none) would leave an empty subject
    // token that no request reaches; "-" is never the encoding of a non-empty string.
    let tenant = if tenant.is_empty() {
        "-".to_owned()
    } else {
        e.encode(tenant)
    };
    format!("r.{tenant}.{}", e.encode(id))
}

impl Dedupe {
    pub fn new(kv: Option<Bucket>, ttl: Duration, capacity: usize) -> Dedupe {
        Dedupe {
            inner: Arc::new(Mutex::new(Inner {
                map: HashMap::default(),
                order: VecDeque::new(),
                bytes: 0,
            })),
            kv: kv.map(Arc::new),
            ttl,
            capacity: capacity.max(16),
            budget: usize::MAX,
        }
    }

    /// Bounds what the finished entries hold to `bytes` (a share of `--max-memory-mb`), on
    /// top of the entry count: a store of large results stays within its share of memory.
    ///
    /// The map and the eviction queue are sized here for the most entries the store can
    /// hold (the entry cap, or what the budget holds of the smallest entries), so they
    /// never grow under load: growing the map moved every entry to a new table under the
    /// store's lock (both CPU threads waiting), at 28 k and 57 k entries in the first
    /// seconds of a busy worker, and once more later. The map gets room for twice the
    /// entries: a hash table that is over half full grows when the tombstones its removals
    /// leave have used up its room; under half full it only tidies them in place. The
    /// queue holds one more than the cap (a new entry goes in before the oldest goes out).
    /// Only the map's control bytes are written now (two to three bytes an entry); the
    /// slots' pages are touched as entries arrive. The table is the store's fixed cost
    /// beside the byte budget: at the default 100 000 entries, 262 144 slots of about 56
    /// bytes (~15 MB once the store has filled).
    pub fn with_byte_budget(mut self, bytes: usize) -> Dedupe {
        self.budget = bytes.max(64 << 10);
        let most = self.capacity.min(self.budget / OVERHEAD);
        {
            let mut g = self.lock();
            g.map.reserve(2 * most);
            g.order.reserve(most + 1);
        }
        self
    }

    /// Bytes the finished entries hold now (tests, metrics).
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_durable(&self) -> bool {
        self.kv.is_some()
    }

    /// The bucket for a call made on this thread: its lane's ([`use_lane_bucket`]) when the
    /// store is durable and the thread has one, else the store's own.
    fn bucket(&self) -> Option<Arc<Bucket>> {
        let own = self.kv.as_ref()?;
        Some(
            LANE_BUCKET
                .with(|b| b.borrow().clone())
                .unwrap_or_else(|| own.clone()),
        )
    }

    /// [`Dedupe::begin_key`] by tenant and id (the unit tests' shorthand).
    #[cfg(test)]
    async fn begin(&self, tenant: &str, id: &str) -> Begin {
        self.begin_key(&TaskKey::new(tenant, id)).await
    }

    /// Looks the assignment up by the key the pipeline made for it; marks it running when
    /// it is new.
    pub async fn begin_key(&self, key: &TaskKey) -> Begin {
        let (tenant, id) = (key.tenant(), key.id());
        {
            let mut g = self.lock();
            match g.map.get_mut(key) {
                Some(Entry::Done(r, at)) if at.elapsed() < self.ttl => {
                    return Begin::Done(r.clone())
                }
                Some(Entry::Running(Some(tx))) => return Begin::Running(tx.subscribe()),
                Some(Entry::Running(waiters @ None)) => {
                    let (tx, rx) = watch::channel(None);
                    *waiters = Some(tx);
                    return Begin::Running(rx);
                }
                _ => {}
            }
            g.map.insert(key.clone(), Entry::Running(None));
        }
        if let Some(kv) = self.bucket() {
            // Boxed: the lookup's state is large and only JetStream mode has it.
            match Box::pin(kv.get(&kv_key(tenant, id))).await {
                Ok(Some(bytes)) => {
                    if let Some(r) = Record::decode(bytes) {
                        let r = Arc::new(r);
                        self.finish(key, r.clone());
                        return Begin::Done(r);
                    }
                }
                Ok(None) => {}
                // The bucket is unreachable: run it (at-least-once) rather than stall.
                Err(e) => tracing::warn!(error = %e, "dedupe lookup failed"),
            }
        }
        Begin::New(Guard {
            store: self.clone(),
            key: Some(key.clone()),
        })
    }

    fn finish(&self, key: &Key, record: Arc<Record>) {
        let now = Instant::now();
        let mut g = self.lock();
        g.bytes += cost(key, &record);
        match g.map.insert(key.clone(), Entry::Done(record.clone(), now)) {
            Some(Entry::Running(Some(tx))) => {
                let _ = tx.send(Some(record));
            }
            Some(Entry::Running(None)) => {}
            Some(Entry::Done(old, _)) => g.bytes = g.bytes.saturating_sub(cost(key, &old)),
            None => {}
        }
        g.order.push_back((key.clone(), now));
        // Bounded: evict the oldest finished entries past capacity, byte budget or TTL. An
        // entry that was finished again later carries a newer instant and stays.
        while g.order.len() > self.capacity
            || g.bytes > self.budget
            || g.order
                .front()
                .is_some_and(|(_, at)| now.saturating_duration_since(*at) >= self.ttl)
        {
            let Some((k, at)) = g.order.pop_front() else {
                break;
            };
            // One lookup: taken out, and put back in the rare case that it is not this
            // record (finished again later, or running again after its TTL).
            match g.map.remove(&k) {
                Some(Entry::Done(old, done)) if done == at => {
                    g.bytes = g.bytes.saturating_sub(cost(&k, &old));
                }
                Some(other) => {
                    g.map.insert(k, other);
                }
                None => {}
            }
        }
    }

    /// Number of assignments remembered in memory (tests, metrics).
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Stores `record` under `k`, first writer wins, retrying through outages; returns the
/// record that is stored (`record`, or the one another delivery stored first).
async fn store_first(kv: &Bucket, k: String, mut record: Arc<Record>) -> Arc<Record> {
    let deadline = Instant::now() + STORE_PATIENCE;
    let mut delay = Duration::from_millis(50);
    loop {
        let problem = match kv.create(&k, record.encode()).await {
            Ok(()) => break,
            Err(BucketError::Exists) => match kv.get(&k).await {
                Ok(Some(bytes)) => {
                    if let Some(first) = Record::decode(bytes) {
                        record = Arc::new(first);
                    }
                    break;
                }
                Ok(None) => "the stored record vanished".to_owned(),
                Err(e) => e.to_string(),
            },
            Err(e @ BucketError::InvalidKey(_)) => {
                tracing::warn!(error = %e, "storing the result for dedupe failed");
                break;
            }
            Err(e) => e.to_string(),
        };
        if Instant::now() + delay > deadline {
            tracing::warn!(error = %problem, "storing the result for dedupe failed");
            break;
        }
        tracing::debug!(error = %problem, "storing the result for dedupe failed; retrying");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
    record
}

/// How long storing a result record is retried through a JetStream outage (as long as
/// `Publisher::publish` keeps trying the result itself).
const STORE_PATIENCE: Duration = Duration::from_secs(60);

impl Guard {
    /// Stores the finished record in the bucket, first writer wins, retrying through
    /// outages; then in memory (waiters released). Returns the record to publish: `record`
    /// itself, or the one another delivery of the same assignment stored first (a
    /// redelivery that ran while this one was cut off from the broker), so every copy of
    /// a result is the same bytes.
    pub async fn complete(mut self, record: Record) -> Arc<Record> {
        let mut record = Arc::new(record);
        let Some(key) = self.key.take() else {
            return record;
        };
        if let Some(kv) = self.store.bucket() {
            // Boxed: the store's state is large and only JetStream mode has it.
            record = Box::pin(store_first(&kv, kv_key(key.tenant(), key.id()), record)).await;
        }
        self.store.finish(&key, record.clone());
        record
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        // Given up (shutdown, nak): forget the running mark so a redelivery runs it.
        if let Some(key) = self.key.take() {
            let mut g = self.store.lock();
            if matches!(g.map.get(&key), Some(Entry::Running(_))) {
                g.map.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(n: u8) -> Record {
        Record {
            ack: Bytes::from(vec![n; 3]),
            result: Bytes::from(vec![n; 5]),
        }
    }

    #[test]
    fn record_round_trips() {
        let r = rec(7);
        assert_eq!(Record::decode(r.encode()), Some(r));
        assert_eq!(Record::decode(Bytes::from_static(b"\0\0")), None);
    }

    #[tokio::test]
    async fn second_sight_gets_the_stored_record_and_tenants_are_separate() {
        let d = Dedupe::new(None, Duration::from_secs(60), 100);
        let Begin::New(g) = d.begin("t1", "a").await else {
            panic!("new")
        };
        let Begin::Running(mut rx) = d.begin("t1", "a").await else {
            panic!("running")
        };
        let Begin::New(_other_tenant) = d.begin("t2", "a").await else {
            panic!("tenant isolation")
        };
        g.complete(rec(1)).await;
        rx.changed().await.expect("released");
        assert_eq!(rx.borrow().as_deref(), Some(&rec(1)));
        let Begin::Done(r) = d.begin("t1", "a").await else {
            panic!("done")
        };
        assert_eq!(*r, rec(1));
    }

    #[tokio::test]
    async fn a_dropped_guard_lets_the_next_delivery_run() {
        let d = Dedupe::new(None, Duration::from_secs(60), 100);
        let Begin::New(g) = d.begin("t", "a").await else {
            panic!("new")
        };
        drop(g);
        assert!(matches!(d.begin("t", "a").await, Begin::New(_)));
    }

    #[tokio::test]
    async fn memory_is_bounded() {
        let d = Dedupe::new(None, Duration::from_secs(60), 16);
        for i in 0..100 {
            let Begin::New(g) = d.begin("t", &i.to_string()).await else {
                panic!("new")
            };
            g.complete(rec(0)).await;
        }
        assert!(d.len() <= 17, "{}", d.len());
    }

    #[tokio::test]
    async fn the_store_is_sized_once_and_never_grows_while_it_fills() {
        // Entry cap 2 000; a budget that holds more than that of the smallest entries.
        let d = Dedupe::new(None, Duration::from_secs(60), 2_000).with_byte_budget(64 << 20);
        let sized = {
            let g = d.lock();
            (g.map.capacity(), g.order.capacity())
        };
        assert!(sized.0 >= 4_000 && sized.1 > 2_000, "{sized:?}");
        // Ten times the cap: evictions leave enough tombstones to use up the map's room.
        for i in 0..20_000 {
            let Begin::New(g) = d.begin("t", &i.to_string()).await else {
                panic!("new")
            };
            g.complete(rec(1)).await;
            let g = d.lock();
            // A grown map would report about twice the room; the queue never moves.
            assert!(
                g.map.capacity() <= sized.0,
                "map grew at {i}: {}",
                g.map.capacity()
            );
            assert_eq!(g.order.capacity(), sized.1, "queue grew at {i}");
        }
        assert_eq!(d.len(), 2_000);
    }

    #[tokio::test]
    async fn memory_is_bounded_by_bytes() {
        // 1 MiB budget, 10 KiB results: at most ~100 remembered, however many finish.
        let d = Dedupe::new(None, Duration::from_secs(60), 100_000).with_byte_budget(1 << 20);
        let big = Record {
            ack: Bytes::from(vec![b'a'; 100]),
            result: Bytes::from(vec![b'r'; 10 << 10]),
        };
        for i in 0..1000 {
            let Begin::New(g) = d.begin("t", &i.to_string()).await else {
                panic!("new")
            };
            g.complete(big.clone()).await;
        }
        assert!(d.bytes() <= 1 << 20, "{} bytes held", d.bytes());
        assert!((90..=100).contains(&d.len()), "{} entries", d.len());
        // The newest are the ones kept.
        assert!(matches!(d.begin("t", "999").await, Begin::Done(_)));
        assert!(matches!(d.begin("t", "0").await, Begin::New(_)));
    }
}
