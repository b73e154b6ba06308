//! The key-value calls the runtime makes (the dedupe record of each finished assignment,
//! the `expires_at` of each approval request): a small surface over a JetStream bucket, so
//! the runtime needs no NATS type.

use async_nats::jetstream::kv;
use bytes::Bytes;

/// A JetStream key-value bucket.
#[derive(Debug, Clone)]
pub struct Bucket {
    store: kv::Store,
}

/// Why a bucket call failed; callers match on it.
#[derive(Debug, thiserror::Error)]
pub enum BucketError {
    /// `create` found the key already there (first writer wins).
    #[error("the key exists already")]
    Exists,
    /// The key has characters a bucket key may not have.
    #[error("invalid key: {0}")]
    InvalidKey(#[source] super::BoxError),
    /// The bucket did not answer (outage, leader election, timeout).
    #[error("bucket unavailable: {0}")]
    Unavailable(#[source] super::BoxError),
}

impl Bucket {
    pub(super) fn new(store: kv::Store) -> Bucket {
        Bucket { store }
    }

    /// The bucket's name.
    pub fn name(&self) -> String {
        self.store.name.clone()
    }

    /// The value under `key`, if any.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, BucketError> {
        self.store
            .get(key)
            .await
            .map_err(|e| BucketError::Unavailable(e.into()))
    }

    /// Stores `value` under `key` unless the key exists ([`BucketError::Exists`]).
    pub async fn create(&self, key: &str, value: Bytes) -> Result<(), BucketError> {
        match self.store.create(key, value).await {
            Ok(_) => Ok(()),
            Err(e) => Err(match e.kind() {
                kv::CreateErrorKind::AlreadyExists => BucketError::Exists,
                kv::CreateErrorKind::InvalidKey => BucketError::InvalidKey(e.into()),
                _ => BucketError::Unavailable(e.into()),
            }),
        }
    }
}
