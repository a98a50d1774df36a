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
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    loads: HashMap<NodeId, u64>,
    assigned: HashMap<u64, NodeId>,
}

impl<L: Locator> BoundedLoads<L> {
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
            state: Mutex::new(State::default()),
        })
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
        ((1.0 + self.eps) * keys as f64 / nodes).ceil() as u64
    }

    /// Assigns `key` (or returns the node it was already assigned to).
    ///
    /// # Errors
    ///
    /// [`RingError::Empty`] without nodes; [`RingError::Full`] when no node is below the
    /// cap (possible only when the inner locator offers fewer nodes than it counts).
    pub fn assign(&self, key: &[u8]) -> Result<NodeId, RingError> {
        let kh = hash_key(key);
        let mut state = self.lock();
        if let Some(node) = state.assigned.get(&kh) {
            return Ok(node.clone());
        }
        let total = state.assigned.len() as u64 + 1;
        let cap = self.cap_for(total);
        let below = |state: &State, id: &NodeId| state.loads.get(id).copied().unwrap_or(0) < cap;
        let owner = self.inner.owner(key).map_err(|_| RingError::Empty)?;
        let chosen = if below(&state, &owner) {
            owner
        } else {
            let all = self
                .inner
                .replicas(key, self.inner.node_count())
                .map_err(|_| RingError::Empty)?;
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
            *load -= 1;
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

impl<L: Locator> Locator for BoundedLoads<L> {
    /// Assigns the key if it is new (this records it), else returns its node.
    fn owner(&self, key: &[u8]) -> Result<NodeId, distkit_core::Error> {
        Ok(self.assign(key)?)
    }

    /// The assigned node first, then the inner locator's other choices.
    fn replicas(&self, key: &[u8], n: usize) -> Result<Vec<NodeId>, distkit_core::Error> {
        let first = self.assign(key)?;
        let mut out = vec![first];
        for id in self.inner.replicas(key, self.inner.node_count())? {
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

    fn node_count(&self) -> usize {
        self.inner.node_count()
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
        assert!(Locator::owner(&b, b"k").is_err());
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
}
