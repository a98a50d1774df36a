//! The local tier: a moka cache of byte values with per-entry TTL.
//!
//! Per-entry TTLs are enforced lazily: a read that finds an expired entry removes it and
//! reports a miss, and a background sweep removes expired entries nobody reads (Redis'
//! approach). Reads, the hot path, then pay no timer-wheel bookkeeping; the cache-wide TTL and
//! TTI are moka's own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// How a local tier is bounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capacity {
    /// At most this many entries.
    Entries(u64),
    /// At most this many bytes of keys and values.
    Bytes(u64),
}

/// A cached value with the TTL it was stored for. Small (a `Bytes` and a pointer) because
/// every read clones it.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub(crate) value: Bytes,
    /// `None`: no TTL at all.
    meta: Option<Arc<Meta>>,
    /// The owner's write number for this value (0 when unknown): a replica never replaces a
    /// newer value with an older one.
    pub(crate) version: u64,
}

#[derive(Debug)]
struct Meta {
    ttl: Duration,
    stored: Instant,
    /// Set when the TTL is the entry's own (checked on read, swept); unset when the tier's
    /// TTL enforces it and it only travels on the wire.
    expires: Option<Instant>,
}

impl Entry {
    /// A value whose TTL (if any) is enforced by the tier's own TTL.
    pub(crate) fn new(value: Bytes, ttl: Option<Duration>) -> Self {
        Self {
            value,
            meta: ttl.map(|ttl| {
                Arc::new(Meta {
                    ttl,
                    stored: Instant::now(),
                    expires: None,
                })
            }),
            version: 0,
        }
    }

    /// The same entry, stamped with the owner's write number.
    pub(crate) fn with_version(mut self, version: u64) -> Self {
        self.version = version;
        self
    }

    /// A value with a TTL of its own, checked on read and swept.
    pub(crate) fn with_own_ttl(value: Bytes, ttl: Duration) -> Self {
        let stored = Instant::now();
        Self {
            value,
            meta: Some(Arc::new(Meta {
                ttl,
                stored,
                expires: stored.checked_add(ttl),
            })),
            version: 0,
        }
    }

    fn expires(&self) -> Option<Instant> {
        self.meta.as_ref().and_then(|m| m.expires)
    }

    /// Whether its own TTL has run out.
    pub(crate) fn expired(&self, now: Instant) -> bool {
        self.expires().is_some_and(|e| now >= e)
    }

    /// What is left of the TTL, for the wire (never an absolute time).
    pub(crate) fn remaining(&self) -> Option<Duration> {
        self.meta
            .as_ref()
            .map(|m| m.ttl.saturating_sub(m.stored.elapsed()))
    }
}

/// Builds the moka cache behind a tier.
pub(crate) fn build(
    capacity: Capacity,
    ttl: Option<Duration>,
    tti: Option<Duration>,
) -> moka::future::Cache<String, Entry> {
    let mut b = moka::future::Cache::builder();
    b = match capacity {
        Capacity::Entries(n) => b.max_capacity(n),
        Capacity::Bytes(n) => b
            .weigher(|k: &String, v: &Entry| {
                u32::try_from(k.len() + v.value.len()).unwrap_or(u32::MAX)
            })
            .max_capacity(n),
    };
    if let Some(t) = ttl {
        b = b.time_to_live(t);
    }
    if let Some(t) = tti {
        b = b.time_to_idle(t);
    }
    b.build()
}

/// The entry under `key` unless its own TTL ran out (then it is removed).
pub(crate) async fn live(cache: &moka::future::Cache<String, Entry>, key: &str) -> Option<Entry> {
    let e = cache.get(key).await?;
    // Read the clock only for entries that have a TTL of their own.
    if e.expires().is_some_and(|at| Instant::now() >= at) {
        cache.invalidate(key).await;
        return None;
    }
    Some(e)
}

/// Removes every entry whose own TTL ran out; returns how many.
pub(crate) async fn sweep(cache: &moka::future::Cache<String, Entry>) -> usize {
    let now = Instant::now();
    let expired: Vec<String> = cache
        .iter()
        .filter(|(_, e)| e.expired(now))
        .map(|(k, _)| (*k).clone())
        .collect();
    for k in &expired {
        cache.invalidate(k).await;
    }
    expired.len()
}
