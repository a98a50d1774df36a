//! Jump consistent hash (Lamping & Veach, 2014) for numbered shards.

use distkit_core::{Locator, NodeId};

use crate::hash::{hash_key_with_seed, mix64};
use crate::{DEFAULT_SEED, RingError};

/// The published jump consistent hash: the bucket in `0..buckets` for a 64-bit key.
///
/// Exactly the algorithm of "A Fast, Minimal Memory, Consistent Hash Algorithm" (Lamping and
/// Veach, 2014): no memory, O(ln n) time, perfect balance, and growing from n to n + 1 buckets
/// moves exactly the keys that land in the new bucket (about 1/(n+1) of them).
///
/// ```
/// use distkit_hashring::jump_hash;
///
/// assert_eq!(jump_hash(42, 57)?, 43);
/// assert_eq!(jump_hash(0xDEAD_10CC, 666)?, 361);
/// # Ok::<(), distkit_hashring::RingError>(())
/// ```
///
/// # Errors
///
/// [`RingError::ZeroBuckets`] when `buckets` is 0.
pub fn jump_hash(mut key: u64, buckets: u32) -> Result<u32, RingError> {
    if buckets == 0 {
        return Err(RingError::ZeroBuckets);
    }
    let (mut b, mut j): (i64, i64) = (-1, 0);
    while j < i64::from(buckets) {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    Ok(b as u32)
}

/// Jump hash over a list of shards: key bytes are hashed with XXH3, then jumped.
///
/// Choose it for numbered shards that only ever grow or shrink at the end (database shards,
/// partitions): it needs no memory and balances perfectly, but only the last shard can be
/// removed without remapping others. For members that come and go in any order, use
/// [`HashRing`](crate::HashRing).
///
/// ```
/// use distkit_core::NodeId;
/// use distkit_hashring::JumpHash;
///
/// let shards = (0..8).map(|i| NodeId::new(format!("shard-{i}"))).collect::<Result<Vec<_>, _>>()?;
/// let jump = JumpHash::new(shards);
/// let shard = jump.locate(b"order:1001")?;
/// assert!(shard.as_str().starts_with("shard-"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct JumpHash {
    shards: Vec<NodeId>,
    seed: u64,
}

impl JumpHash {
    /// Shards numbered in the order given.
    #[must_use]
    pub fn new(shards: Vec<NodeId>) -> Self {
        Self {
            shards,
            seed: DEFAULT_SEED,
        }
    }

    /// The same shards with another hash seed.
    #[must_use]
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Appends a shard (the only growth that moves just 1/(n+1) of the keys).
    pub fn push(&mut self, shard: NodeId) {
        self.shards.push(shard);
    }

    /// Removes the last shard.
    pub fn pop(&mut self) -> Option<NodeId> {
        self.shards.pop()
    }

    /// The shards, in bucket order.
    #[must_use]
    pub fn shards(&self) -> &[NodeId] {
        &self.shards
    }

    /// The bucket number of `key`.
    ///
    /// # Errors
    ///
    /// [`RingError::Empty`] without shards.
    #[inline]
    pub fn bucket(&self, key: &[u8]) -> Result<u32, RingError> {
        let n = u32::try_from(self.shards.len()).unwrap_or(u32::MAX);
        if n == 0 {
            return Err(RingError::Empty);
        }
        jump_hash(hash_key_with_seed(key, self.seed), n)
    }

    /// The shard of `key`.
    ///
    /// # Errors
    ///
    /// [`RingError::Empty`] without shards.
    #[inline]
    pub fn locate(&self, key: &[u8]) -> Result<&NodeId, RingError> {
        Ok(&self.shards[self.bucket(key)? as usize])
    }
}

impl Locator for JumpHash {
    fn owner(&self, key: &[u8]) -> Result<NodeId, distkit_core::Error> {
        Ok(self.locate(key)?.clone())
    }

    /// Replicas re-jump with the key hash re-mixed until `n` distinct shards are found.
    fn replicas(&self, key: &[u8], n: usize) -> Result<Vec<NodeId>, distkit_core::Error> {
        let count = u32::try_from(self.shards.len()).unwrap_or(u32::MAX);
        if count == 0 {
            return Err(RingError::Empty.into());
        }
        let want = n.min(self.shards.len());
        let mut h = hash_key_with_seed(key, self.seed);
        let mut out: Vec<u32> = Vec::with_capacity(want);
        // Each round finds a new shard with probability >= 1/count; bound the rounds anyway and
        // fill any remainder in bucket order.
        for _ in 0..want.saturating_mul(64).max(64) {
            if out.len() == want {
                break;
            }
            let b = jump_hash(h, count)?;
            if !out.contains(&b) {
                out.push(b);
            }
            h = mix64(h.wrapping_add(0x9e37_79b9_7f4a_7c15));
        }
        let mut next = 0;
        while out.len() < want {
            if !out.contains(&next) {
                out.push(next);
            }
            next += 1;
        }
        // A node listed in several buckets counts once: replicas are distinct nodes.
        let mut ids: Vec<NodeId> = Vec::with_capacity(want);
        for b in out
            .into_iter()
            .chain(0..count)
            .map(|b| &self.shards[b as usize])
        {
            if ids.len() == want {
                break;
            }
            if !ids.contains(b) {
                ids.push(b.clone());
            }
        }
        Ok(ids)
    }

    fn node_count(&self) -> usize {
        self.shards.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values from independent implementations' published tests (ClickHouse's
    /// `jumpConsistentHash` reference output and the `jump-consistent-hash` crate's docs).
    #[test]
    fn matches_published_values() {
        let cases: [(u64, u32, u32); 9] = [
            (1, 1, 0),
            (42, 57, 43),
            (256, 1024, 520),
            (3_735_883_980, 1, 0),
            (3_735_883_980, 666, 361),
            (16_045_690_984_833_335_023, 255, 237),
            (0, 60, 0),
            (1, 60, 55),
            (2, 60, 46),
        ];
        for (key, buckets, want) in cases {
            assert_eq!(
                jump_hash(key, buckets).unwrap(),
                want,
                "{key} over {buckets}"
            );
        }
    }

    #[test]
    fn zero_buckets_is_an_error() {
        assert_eq!(jump_hash(1, 0), Err(RingError::ZeroBuckets));
        assert_eq!(
            JumpHash::new(Vec::new()).bucket(b"k"),
            Err(RingError::Empty)
        );
    }

    #[test]
    fn a_node_listed_twice_is_one_replica() {
        let (a, b) = (NodeId::new("a").unwrap(), NodeId::new("b").unwrap());
        let j = JumpHash::new(vec![a.clone(), a, b]);
        for k in 0..100u32 {
            let r = Locator::replicas(&j, &k.to_le_bytes(), usize::MAX).unwrap();
            assert_eq!(r.len(), 2, "{r:?}");
            assert_ne!(r[0], r[1]);
        }
    }

    #[test]
    fn replicas_are_distinct_and_start_with_the_owner() {
        let shards: Vec<NodeId> = (0..5)
            .map(|i| NodeId::new(format!("s{i}")).unwrap())
            .collect();
        let j = JumpHash::new(shards);
        for k in 0..200u32 {
            let key = k.to_le_bytes();
            let r = Locator::replicas(&j, &key, 9).unwrap();
            assert_eq!(r.len(), 5);
            assert_eq!(&r[0], j.locate(&key).unwrap());
            let set: std::collections::HashSet<_> = r.iter().collect();
            assert_eq!(set.len(), 5);
        }
    }
}
