//! The local tier: a moka cache of byte values with per-entry TTL.

use std::time::{Duration, Instant};

use bytes::Bytes;
use moka::Expiry;

/// How a local tier is bounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capacity {
    /// At most this many entries.
    Entries(u64),
    /// At most this many bytes of keys and values.
    Bytes(u64),
}

/// A cached value with the TTL it was stored for.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub(crate) value: Bytes,
    /// `None`: no expiry of its own (the tier's TTL/TTI still apply).
    pub(crate) ttl: Option<Duration>,
    pub(crate) stored: Instant,
}

impl Entry {
    pub(crate) fn new(value: Bytes, ttl: Option<Duration>) -> Self {
        Self {
            value,
            ttl,
            stored: Instant::now(),
        }
    }

    /// What is left of the TTL, for the wire (never an absolute time).
    pub(crate) fn remaining(&self) -> Option<Duration> {
        self.ttl.map(|t| t.saturating_sub(self.stored.elapsed()))
    }
}

struct PerEntry;

impl Expiry<String, Entry> for PerEntry {
    fn expire_after_create(&self, _: &String, v: &Entry, _: Instant) -> Option<Duration> {
        v.ttl
    }

    fn expire_after_update(
        &self,
        _: &String,
        v: &Entry,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        v.ttl
    }
}

/// Builds the moka cache behind a tier.
pub(crate) fn build(
    capacity: Capacity,
    ttl: Option<Duration>,
    tti: Option<Duration>,
) -> moka::future::Cache<String, Entry> {
    let mut b = moka::future::Cache::builder().expire_after(PerEntry);
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
