//! Invalidation bookkeeping: which write of each owner this node has heard of, and the
//! per-key serialisation that keeps "is this copy still current?" and "store it" one step.
//!
//! An owner numbers its writes (its `seq`) and sends each invalidation with the new number
//! before the write returns. A value read from an owner carries the owner's number at the
//! time of the read. A hot copy is kept only if that number is not older than the newest
//! invalidation applied here for that owner, and the check and the insert happen under the
//! key's shard lock, which an invalidation takes too: an invalidation that arrives while a
//! read is in flight is either seen by the check or removes the copy after the insert, never
//! neither (the first version's stale hot copies came from that gap).
//!
//! The same shard locks order an owner's stores: a loaded value is stored only if its load
//! attempt is still current, in one step against writes of that key.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use distkit_core::NodeId;
use tokio::sync::{Mutex as AsyncMutex, MutexGuard as AsyncGuard};

/// Key shards: enough that unrelated keys rarely wait on each other.
const SHARDS: usize = 64;

#[derive(Debug)]
pub(crate) struct Versions {
    /// Per peer: the newest invalidation sequence number applied here.
    seen: Mutex<HashMap<NodeId, u64>>,
    shards: Box<[AsyncMutex<()>]>,
}

impl Versions {
    pub(crate) fn new() -> Self {
        Self {
            seen: Mutex::new(HashMap::new()),
            shards: (0..SHARDS).map(|_| AsyncMutex::new(())).collect(),
        }
    }

    /// Serialises the version-sensitive steps on `key` (held across one check and one store).
    pub(crate) async fn lock(&self, key: &str) -> AsyncGuard<'_, ()> {
        let h = distkit_hashring::hash_key(key.as_bytes());
        // The shard count is a small constant: the cast cannot truncate meaningfully.
        #[allow(clippy::cast_possible_truncation)]
        let i = (h % SHARDS as u64) as usize;
        self.shards[i].lock().await
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, u64>> {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The newest invalidation applied here from `owner`.
    pub(crate) fn applied(&self, owner: &NodeId) -> u64 {
        self.seen().get(owner).copied().unwrap_or(0)
    }

    /// Records invalidation `seq` from `from`; true when numbers were skipped (messages were
    /// lost, so every hot copy of that owner must go).
    pub(crate) fn record(&self, from: &NodeId, seq: u64) -> bool {
        let mut seen = self.seen();
        let last = seen.entry(from.clone()).or_insert(0);
        let gap = seq > last.saturating_add(1);
        *last = (*last).max(seq);
        gap
    }

    /// Raises what is applied from `owner` to at least `seq` (after dropping its copies).
    pub(crate) fn raise(&self, owner: &NodeId, seq: u64) {
        let mut seen = self.seen();
        let s = seen.entry(owner.clone()).or_insert(0);
        *s = (*s).max(seq);
    }

    /// Forgets a peer that left: a copy from its next incarnation starts from scratch.
    pub(crate) fn forget(&self, owner: &NodeId) {
        self.seen().remove(owner);
    }
}
