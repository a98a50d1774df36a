//! Consistent hashing with bounded loads (Mirrokni, Thorup and Zadimoghaddam, 2018).

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;

use distkit_core::{Locator, NodeId};

use crate::RingError;
use crate::hash::hash_key;

/// Caps every node at `ceil((1 + eps) x average)` keys among the keys assigned through it.
///
/// A new key goes to the first node in the inner locator's preference order (for a ring: the
/// owner, then clockwise) that is below the cap, where the cap counts the new key:
/// `ceil((1 + eps) x (assigned + 1) / nodes)`. Once assigned, a key stays on its node until
/// [`release`](Self::release)d, so [`Locator::owner`] is stable. A node is never assigned a
/// key that would take it over the cap; the cap is uniform (node weights of the inner locator
/// decide only the preference order).
///
/// Like HAProxy's `hash-balance-factor`, this trades a little consistency (a key may land on
/// its second or third choice) for a hard bound on the busiest node. Unlike libraries that
/// panic when no node can take a key, [`assign`](Self::assign) returns an error.
///
/// The wrapper is for a fixed member set: after the inner locator's membership changes, build a
/// new wrapper (or [`clear`](Self::clear) it) so no key stays on a node that left.
///
/// It is deliberately **not** a [`Locator`]: a locator's owner depends only on the member set,
/// while an assignment here depends on the order keys arrived in and is remembered. Keys are
/// remembered by their 64-bit hash in a table of at most [`max_keys`](Self::max_keys) entries
/// (default [`BoundedLoads::DEFAULT_MAX_KEYS`]); a new key beyond that is refused with
/// [`RingError::TableFull`] until keys are released, so memory stays bounded.
///
/// ```
/// use distkit_core::NodeId;
/// use distkit_hashring::{BoundedLoads, HashRing, Node};
///
/// let mut ring = HashRing::new();
/// for id in ["a", "b", "c"] {
///     ring.add_node(Node::new(NodeId::new(id)?, id))?;
/// }
/// let bounded = BoundedLoads::new(ring, 0.25)?;
/// for i in 0..300u32 {
///     bounded.assign(&i.to_le_bytes())?;
/// }
/// // No node holds more than ceil(1.25 x 100) = 125 keys.
/// assert!(bounded.loads().iter().all(|(_, load)| *load <= 125));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct BoundedLoads<L> {
    inner: L,
    eps: f64,
    max_keys: u64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    loads: HashMap<NodeId, u64>,
    assigned: HashMap<u64, NodeId>,
}

impl<L: Locator> BoundedLoads<L> {
    /// The default limit of the assignment table: about a million keys (some 40 MiB).
    pub const DEFAULT_MAX_KEYS: u64 = 1 << 20;

    /// Wraps `inner` with load factor `eps` (0.25 caps nodes at 125% of the average).
    ///
    /// # Errors
    ///
    /// [`RingError::InvalidEpsilon`] unless `eps` is finite and greater than 0.
    pub fn new(inner: L, eps: f64) -> Result<Self, RingError> {
        if !(eps.is_finite() && eps > 0.0) {
            return Err(RingError::InvalidEpsilon { eps });
        }
        Ok(Self {
            inner,
            eps,
            max_keys: Self::DEFAULT_MAX_KEYS,
            state: Mutex::new(State::default()),
        })
    }

    /// Sets the most keys the table holds at once (at least 1).
    #[must_use]
    pub fn with_max_keys(mut self, max: u64) -> Self {
        self.max_keys = max.max(1);
        self
    }

    /// The most keys the table holds at once.
    #[must_use]
    pub fn max_keys(&self) -> u64 {
        self.max_keys
    }

    /// The wrapped locator.
    pub fn inner(&self) -> &L {
        &self.inner
    }

    /// The load factor.
    #[must_use]
    pub fn eps(&self) -> f64 {
        self.eps
    }

    /// The cap that applies to `keys` assigned keys over the inner locator's nodes.
    #[must_use]
    pub fn cap_for(&self, keys: u64) -> u64 {
        let nodes = self.inner.node_count().max(1) as f64;
        // Float to int casts saturate; a cap is at least 1 for any key.
        (((1.0 + self.eps) * keys as f64 / nodes).ceil() as u64).max(1)
    }

    /// The node `key` is assigned to, if it is; records nothing.
    #[must_use]
    pub fn lookup(&self, key: &[u8]) -> Option<NodeId> {
        self.lock().assigned.get(&hash_key(key)).cloned()
    }

    /// The assigned node first, then the inner locator's other choices, `n` at most
    /// (assigning the key if it is new).
    ///
    /// # Errors
    ///
    /// As for [`assign`](Self::assign).
    pub fn assign_with_replicas(&self, key: &[u8], n: usize) -> Result<Vec<NodeId>, RingError> {
        let first = self.assign(key)?;
        let mut out = vec![first];
        for id in self
            .inner
            .replicas(key, self.inner.node_count())
            .map_err(inner_error)?
        {
            if out.len() >= n {
                break;
            }
            if !out.contains(&id) {
                out.push(id);
            }
        }
        out.truncate(n);
        Ok(out)
    }

    /// Assigns `key` (or returns the node it was already assigned to).
    ///
    /// # Errors
    ///
    /// [`RingError::Empty`] without nodes; [`RingError::Full`] when no node is below the
    /// cap (possible only when the inner locator offers fewer nodes than it counts);
    /// [`RingError::TableFull`] for a new key when the table is full; [`RingError::Inner`]
    /// when the inner locator fails otherwise.
    pub fn assign(&self, key: &[u8]) -> Result<NodeId, RingError> {
        let kh = hash_key(key);
        let mut state = self.lock();
        if let Some(node) = state.assigned.get(&kh) {
            return Ok(node.clone());
        }
        let assigned = state.assigned.len() as u64;
        if assigned >= self.max_keys {
            return Err(RingError::TableFull { max: self.max_keys });
        }
        let total = assigned + 1;
        let cap = self.cap_for(total);
        let below = |state: &State, id: &NodeId| state.loads.get(id).copied().unwrap_or(0) < cap;
        let owner = self.inner.owner(key).map_err(inner_error)?;
        let chosen = if below(&state, &owner) {
            owner
        } else {
            let all = self
                .inner
                .replicas(key, self.inner.node_count())
                .map_err(inner_error)?;
            all.into_iter()
                .find(|id| below(&state, id))
                .ok_or(RingError::Full { cap })?
        };
        *state.loads.entry(chosen.clone()).or_insert(0) += 1;
        state.assigned.insert(kh, chosen.clone());
        Ok(chosen)
    }

    /// Releases `key`'s assignment; returns the node it was on.
    pub fn release(&self, key: &[u8]) -> Option<NodeId> {
        let mut state = self.lock();
        let node = state.assigned.remove(&hash_key(key))?;
        if let Some(load) = state.loads.get_mut(&node) {
            *load = load.saturating_sub(1);
        }
        Some(node)
    }

    /// Forgets every assignment.
    pub fn clear(&self) {
        *self.lock() = State::default();
    }

    /// The number of keys assigned.
    #[must_use]
    pub fn assigned(&self) -> u64 {
        self.lock().assigned.len() as u64
    }

    /// Each node's load (nodes with no keys are left out).
    #[must_use]
    pub fn loads(&self) -> Vec<(NodeId, u64)> {
        let mut v: Vec<_> = self
            .lock()
            .loads
            .iter()
            .filter(|(_, l)| **l > 0)
            .map(|(id, l)| (id.clone(), *l))
            .collect();
        v.sort();
        v
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent at every await-free step, so a poisoned lock (a panic in
        // another thread while holding it) still holds usable data.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl<L: fmt::Debug> fmt::Debug for BoundedLoads<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoundedLoads")
            .field("inner", &self.inner)
            .field("eps", &self.eps)
            .finish_non_exhaustive()
    }
}

/// The inner locator's error: "no nodes" stays [`RingError::Empty`]; anything else keeps its
/// message.
fn inner_error(e: distkit_core::Error) -> RingError {
    match e {
        distkit_core::Error::NoCapacity { .. } => RingError::Empty,
        other => RingError::Inner(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{HashRing, Node};

    #[test]
    fn eps_must_be_positive_and_finite() {
        for eps in [0.0, -0.5, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                BoundedLoads::new(HashRing::new(), eps),
                Err(RingError::InvalidEpsilon { .. })
            ));
        }
    }

    #[test]
    fn empty_inner_is_an_error_not_a_panic() {
        let b = BoundedLoads::new(HashRing::new(), 0.1).unwrap();
        assert_eq!(b.assign(b"k"), Err(RingError::Empty));
        assert_eq!(b.lookup(b"k"), None);
    }

    #[test]
    fn assignments_are_sticky_and_releasable() {
        let mut ring = HashRing::new();
        for id in ["a", "b"] {
            ring.add_node(Node::new(NodeId::new(id).unwrap(), id))
                .unwrap();
        }
        let b = BoundedLoads::new(ring, 0.5).unwrap();
        let first = b.assign(b"k").unwrap();
        assert_eq!(b.assign(b"k").unwrap(), first);
        assert_eq!(b.assigned(), 1);
        assert_eq!(b.release(b"k"), Some(first));
        assert_eq!(b.assigned(), 0);
        assert_eq!(b.release(b"k"), None);
    }

    #[test]
    fn the_table_is_bounded() {
        let mut ring = HashRing::new();
        ring.add_node(Node::new(NodeId::new("a").unwrap(), "a"))
            .unwrap();
        let b = BoundedLoads::new(ring, 0.5).unwrap().with_max_keys(3);
        for k in [b"1", b"2", b"3"] {
            b.assign(k).unwrap();
        }
        assert_eq!(b.assign(b"4"), Err(RingError::TableFull { max: 3 }));
        // A key already assigned is still answered; a release makes room.
        assert!(b.assign(b"1").is_ok());
        b.release(b"1");
        assert!(b.assign(b"4").is_ok());
        assert_eq!(b.assigned(), 3);
    }
}
