//! "Not executed twice": completed results by (tenant, assignment_id), in memory (bounded,
//! with a TTL) and, in JetStream mode, in a key-value bucket that survives restarts and is
//! shared by every instance. A duplicate that arrives while the first copy still runs waits
//! for its result instead of running the block again.

mod shard;

use std::cell::RefCell;
use std::hash::BuildHasher as _;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::sync::watch;

use crate::transport::{Bucket, BucketError};

use super::key::{KeyHasher, TaskKey};
use shard::{Found, Shard};

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

/// The smallest share of the budget a shard gets: fewer shards for a small budget, so that
/// each still holds records of a few hundred kilobytes.
const SHARD_BYTES: usize = 4 << 20;

/// Most shards: the CPU threads seldom wait for each other's lock with this many.
const MOST_SHARDS: usize = 16;

/// The dedupe store.
#[derive(Debug, Clone)]
pub struct Dedupe {
    inner: Arc<Inner>,
    /// Behind an `Arc`: a `Store` is over a kilobyte, and every guard carries the store.
    kv: Option<Arc<Bucket>>,
}

#[derive(Debug)]
struct Inner {
    /// By the key's hash: two CPU threads take the same lock only for keys of one shard.
    shards: Box<[Mutex<Shard>]>,
    hasher: KeyHasher,
    /// What a record's "finished at" counts from.
    epoch: Instant,
    /// In ns.
    ttl: u64,
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

impl Inner {
    fn hash(&self, key: &Key) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The shard of a key's hash, locked. Its bits 40 and up pick it: the index inside
    /// uses the low bits for the bucket and the top seven for the tag.
    fn shard(&self, hash: u64) -> MutexGuard<'_, Shard> {
        self.lock((hash >> 40) as usize % self.shards.len())
    }

    fn lock(&self, i: usize) -> MutexGuard<'_, Shard> {
        match self.shards.get(i) {
            Some(shard) => shard.lock().unwrap_or_else(|p| p.into_inner()),
            None => unreachable!("shard {i} of {}", self.shards.len()),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

impl Dedupe {
    /// A store of at most `capacity` finished entries (16 or more) holding at most `budget`
    /// bytes of records (64 KiB or more; the worker gives it a share of `--max-memory-mb`),
    /// so a store of large results stays within its share of memory. The records' rings
    /// take at most `budget` together, in as many shards as it gives [`SHARD_BYTES`] each,
    /// up to [`MOST_SHARDS`]; their pages are touched as records arrive. The index and the
    /// order beside them are sized now for the entry cap and never grow (about 70 bytes an
    /// entry: ~7 MB at the default 100 000).
    pub fn new(kv: Option<Bucket>, ttl: Duration, capacity: usize, budget: usize) -> Dedupe {
        let capacity = capacity.max(16);
        let budget = budget.max(64 << 10);
        let n = (budget / SHARD_BYTES).clamp(1, MOST_SHARDS);
        let inner = Inner {
            shards: (0..n)
                .map(|_| Mutex::new(Shard::new(budget / n, capacity.div_ceil(n))))
                .collect(),
            hasher: KeyHasher::default(),
            epoch: Instant::now(),
            ttl: u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX),
        };
        Dedupe {
            inner: Arc::new(inner),
            kv: kv.map(Arc::new),
        }
    }

    /// Bytes the finished entries hold now (tests, metrics).
    pub fn bytes(&self) -> usize {
        self.each(|s| s.bytes() as usize)
    }

    fn each(&self, f: impl Fn(&Shard) -> usize) -> usize {
        let inner = &self.inner;
        (0..inner.shards.len()).map(|i| f(&inner.lock(i))).sum()
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
        let inner = &self.inner;
        let hash = inner.hash(key);
        let now = inner.now();
        let found = inner.shard(hash).begin(key, hash, now, inner.ttl);
        match found {
            Found::Done(record) => return Begin::Done(Arc::new(record)),
            Found::Running(rx) => return Begin::Running(rx),
            Found::New => {}
        }
        if let Some(kv) = self.bucket() {
            // Boxed: the lookup's state is large and only JetStream mode has it.
            match Box::pin(kv.get(&kv_key(key.tenant(), key.id()))).await {
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

    /// Keeps `record` as `key`'s and tells those waiting for it.
    fn finish(&self, key: &Key, record: Arc<Record>) {
        let inner = &self.inner;
        let hash = inner.hash(key);
        let now = inner.now();
        let waiters = inner.shard(hash).finish(key, hash, &record, now, inner.ttl);
        if let Some(tx) = waiters {
            let _ = tx.send(Some(record));
        }
    }

    /// Number of assignments remembered in memory, running ones included (tests, metrics).
    pub fn len(&self) -> usize {
        self.each(Shard::len)
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
            let inner = &self.store.inner;
            inner.shard(inner.hash(&key)).give_up(&key);
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
        let d = Dedupe::new(None, Duration::from_secs(60), 100, 1 << 20);
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
        let d = Dedupe::new(None, Duration::from_secs(60), 100, 1 << 20);
        let Begin::New(g) = d.begin("t", "a").await else {
            panic!("new")
        };
        drop(g);
        assert!(matches!(d.begin("t", "a").await, Begin::New(_)));
    }

    #[tokio::test]
    async fn memory_is_bounded() {
        let d = Dedupe::new(None, Duration::from_secs(60), 16, 1 << 20);
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
        // Entry cap 2 000 over 16 shards; a budget that holds more than that.
        let d = Dedupe::new(None, Duration::from_secs(60), 2_000, 64 << 20);
        let room = |d: &Dedupe| -> Vec<(usize, usize)> {
            (0..d.inner.shards.len())
                .map(|i| d.inner.lock(i).room())
                .collect()
        };
        let sized = room(&d);
        assert_eq!(sized.len(), 16);
        // 125 entries a shard: twice that in the index, one more in the order.
        assert!(sized.iter().all(|&(i, o)| i >= 250 && o > 125), "{sized:?}");
        // Ten times the cap: evictions leave enough tombstones to use up the index's room.
        // A table's room is its entries plus what it can take before it must tidy or
        // grow: tombstones lower it a little, growing would double it.
        let grown = |now: &[(usize, usize)]| {
            now.iter()
                .zip(&sized)
                .any(|(now, then)| now.0 > then.0 || now.1 != then.1)
        };
        for i in 0..20_000 {
            let Begin::New(g) = d.begin("t", &i.to_string()).await else {
                panic!("new")
            };
            g.complete(rec(1)).await;
            let now = room(&d);
            assert!(!grown(&now), "grew at {i}: {now:?} from {sized:?}");
        }
        assert_eq!(d.len(), 2_000);
    }

    #[tokio::test]
    async fn memory_is_bounded_by_bytes() {
        // 1 MiB budget, 10 KiB results: at most ~100 remembered, however many finish.
        let d = Dedupe::new(None, Duration::from_secs(60), 100_000, 1 << 20);
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
        // One shard at this budget: as many as fit whole in its ring.
        let each = 24 + 4 + 100 + (10 << 10);
        assert_eq!(d.len(), (1 << 20) / each, "{} entries", d.len());
        // The newest are the ones kept.
        assert!(matches!(d.begin("t", "999").await, Begin::Done(_)));
        assert!(matches!(d.begin("t", "0").await, Begin::New(_)));
    }
}
