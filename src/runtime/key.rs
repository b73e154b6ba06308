//! One assignment's identity inside this process: (tenant, assignment id), the key of the
//! dedupe store and of the cancel registry. Made once per assignment by the pipeline and
//! shared (an `Arc` clone) by every map and queue that holds it.

use std::sync::Arc;

/// (tenant, assignment id) in one allocation. `split` is where the id starts, so no
/// separator byte can make two keys alike.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TaskKey {
    joined: Arc<str>,
    split: u32,
}

impl TaskKey {
    pub fn new(tenant: &str, id: &str) -> TaskKey {
        thread_local! {
            static SCRATCH: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
        }
        // Joined in a per-thread scratch string, so the `Arc` is the one allocation.
        let joined: Arc<str> = SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
            Ok(mut s) => {
                s.clear();
                s.push_str(tenant);
                s.push_str(id);
                Arc::from(s.as_str())
            }
            Err(_) => Arc::from(format!("{tenant}{id}")),
        });
        TaskKey {
            joined,
            // Both parts are bounded by the payload limit, far below 4 GiB.
            split: u32::try_from(tenant.len()).unwrap_or(u32::MAX),
        }
    }

    pub fn tenant(&self) -> &str {
        self.joined.get(..self.split as usize).unwrap_or("")
    }

    pub fn id(&self) -> &str {
        self.joined.get(self.split as usize..).unwrap_or("")
    }

    /// The tenant and the id, joined.
    pub fn as_bytes(&self) -> &[u8] {
        self.joined.as_bytes()
    }

    /// Bytes of the two ids together.
    pub fn len(&self) -> usize {
        self.joined.len()
    }

    pub fn is_empty(&self) -> bool {
        self.joined.is_empty()
    }
}

/// The hasher of maps keyed by the Router's ids: seeded per process (foldhash's, as
/// hashbrown uses by default), several times cheaper than SipHash on short ids.
pub type KeyHasher = foldhash::fast::RandomState;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn where_the_tenant_ends_is_part_of_the_key() {
        let a = TaskKey::new("ab", "c");
        assert_eq!((a.tenant(), a.id()), ("ab", "c"));
        assert_ne!(a, TaskKey::new("a", "bc"));
        assert_ne!(a, TaskKey::new("", "abc"));
        assert_eq!(a, TaskKey::new("ab", "c"));
    }
}
