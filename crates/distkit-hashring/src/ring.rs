//! The default locator: a weighted consistent hash ring with a prefix index.

use std::collections::HashMap;
use std::fmt;

use distkit_core::{Locator, NodeId};

use crate::hash::hash_key_with_seed;
use crate::points::{Entry, Points};
use crate::{DEFAULT_SEED, Node, RingError};

/// Points per unit of weight unless configured otherwise.
///
/// With 1,000 points a node, the busiest of 100 equal nodes holds about 1.08x the mean load
/// (the standard deviation of a node's share is about 1/sqrt(points)); 160 points, libketama's
/// count, gives about 1.21x. The prefix index keeps lookups near 20 ns even at 100,000 points,
/// so the better balance costs memory (12 bytes a point, plus the index), not lookup time.
pub const DEFAULT_POINTS_PER_WEIGHT: u32 = 1000;

/// The most points one ring may hold (about 32 bytes a point with the bucket slack).
pub const MAX_POINTS: u64 = 1 << 24;

/// Configures a [`HashRing`].
#[derive(Clone, Debug)]
#[must_use]
pub struct HashRingBuilder {
    points_per_weight: u32,
    seed: u64,
}

impl Default for HashRingBuilder {
    fn default() -> Self {
        Self {
            points_per_weight: DEFAULT_POINTS_PER_WEIGHT,
            seed: DEFAULT_SEED,
        }
    }
}

impl HashRingBuilder {
    /// Points a node gets per unit of weight (default [`DEFAULT_POINTS_PER_WEIGHT`]).
    pub fn points_per_weight(mut self, points: u32) -> Self {
        self.points_per_weight = points;
        self
    }

    /// The hash seed (default [`DEFAULT_SEED`]). Rings that must agree need the same seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Builds an empty ring.
    ///
    /// # Errors
    ///
    /// [`RingError::ZeroPoints`] when points per weight is 0.
    pub fn build(self) -> Result<HashRing, RingError> {
        if self.points_per_weight == 0 {
            return Err(RingError::ZeroPoints);
        }
        Ok(HashRing {
            seed: self.seed,
            points_per_weight: self.points_per_weight,
            members: Vec::new(),
            free: Vec::new(),
            by_id: HashMap::new(),
            points: Points::from_sorted(&[]),
            scratch: Vec::new(),
        })
    }

    /// Builds a ring holding `nodes`, all at once (one sort instead of one merge a node).
    ///
    /// # Errors
    ///
    /// As for [`build`](Self::build) and [`HashRing::add_node`].
    pub fn build_with(self, nodes: impl IntoIterator<Item = Node>) -> Result<HashRing, RingError> {
        let mut ring = self.build()?;
        let mut points: Vec<Entry> = Vec::new();
        let mut total = 0u64;
        for node in nodes {
            let slot = ring.admit(node, total)?;
            let m = ring.member(slot);
            total += u64::from(m.points);
            let (id, count) = (m.node.id().clone(), m.points);
            ring.point_hashes(&id, 0..count, |hash| {
                points.push(Entry { hash, owner: slot })
            });
        }
        ring.lay_out(points);
        Ok(ring)
    }
}

#[derive(Clone)]
struct Member {
    node: Node,
    points: u32,
}

/// A weighted consistent hash ring: the default [`Locator`].
///
/// Each node places `weight x points_per_weight` points on a 64-bit ring; point `i` of node
/// `id` sits at `xxh3(id bytes ++ i as little-endian u32, seed)`. A key belongs to the node of
/// the first point at or after `xxh3(key, seed)`, wrapping around. So:
///
/// * adding a node moves keys only onto it, and removing one moves only its own keys;
/// * the mapping depends only on the member set (and seed), never on insertion order: points
///   that collide are ordered by node id;
/// * changing a weight adds or removes only that node's highest-numbered points.
///
/// Points live sorted in buckets by hash prefix (two to four points a bucket, with two free
/// slots each), so a lookup reads one bucket header and a short run of points. A membership
/// change inserts or deletes only the changed node's points, each within its bucket; only when
/// a bucket overflows, or the point count doubles or halves, are all points laid out anew.
///
/// ```
/// use distkit_core::NodeId;
/// use distkit_hashring::{HashRing, Node};
///
/// let mut ring = HashRing::new();
/// for (id, addr) in [("a", "10.0.0.1:7000"), ("b", "10.0.0.2:7000"), ("c", "10.0.0.3:7000")] {
///     ring.add_node(Node::new(NodeId::new(id)?, addr))?;
/// }
/// let owner = ring.locate(b"device:42")?.id().clone();
/// let replicas = ring.replicas(b"device:42", 2)?;
/// assert_eq!(replicas[0].id(), &owner);
/// assert_ne!(replicas[0].id(), replicas[1].id());
///
/// // Removing another node never moves this key.
/// let other = ["a", "b", "c"].into_iter().find(|id| *id != owner.as_str()).unwrap();
/// ring.remove_node(other)?;
/// assert_eq!(ring.locate(b"device:42")?.id(), &owner);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct HashRing {
    seed: u64,
    points_per_weight: u32,
    members: Vec<Option<Member>>,
    free: Vec<u32>,
    by_id: HashMap<NodeId, u32>,
    points: Points,
    scratch: Vec<u8>,
}

impl Default for HashRing {
    fn default() -> Self {
        Self::new()
    }
}

impl HashRing {
    /// An empty ring with the default points per weight and seed.
    #[must_use]
    pub fn new() -> Self {
        HashRingBuilder::default()
            .build()
            .unwrap_or_else(|_| unreachable!("the default configuration is valid"))
    }

    /// Configures a ring.
    pub fn builder() -> HashRingBuilder {
        HashRingBuilder::default()
    }

    /// The number of nodes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether the ring has no nodes.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The number of points on the ring.
    #[must_use]
    pub fn point_count(&self) -> usize {
        self.points.len()
    }

    /// The points in ring order: each point's position and the id of its node.
    pub fn points(&self) -> impl Iterator<Item = (u64, &NodeId)> {
        self.points
            .iter()
            .map(|e| (e.hash, self.member(e.owner).node.id()))
    }

    /// The hash seed.
    #[must_use]
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The members, in no particular order.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.members.iter().flatten().map(|m| &m.node)
    }

    /// The member with this id.
    #[must_use]
    pub fn node(&self, id: &str) -> Option<&Node> {
        self.by_id.get(id).map(|&slot| &self.member(slot).node)
    }

    /// Adds a node and its points.
    ///
    /// # Errors
    ///
    /// [`RingError::ZeroWeight`], [`RingError::DuplicateNode`], or
    /// [`RingError::TooManyPoints`]; the ring is unchanged on error.
    pub fn add_node(&mut self, node: Node) -> Result<(), RingError> {
        let slot = self.admit(node, self.points.len() as u64)?;
        let m = self.member(slot);
        let (id, count) = (m.node.id().clone(), m.points);
        self.insert_points(slot, &id, 0..count);
        Ok(())
    }

    /// Removes a node and its points, returning it.
    ///
    /// # Errors
    ///
    /// [`RingError::UnknownNode`] when it is not a member.
    pub fn remove_node(&mut self, id: &str) -> Result<Node, RingError> {
        let slot = self.slot_of(id)?;
        let m = self.member(slot);
        let (node_id, count) = (m.node.id().clone(), m.points);
        self.remove_points(slot, &node_id, 0..count);
        self.by_id.remove(id);
        self.free.push(slot);
        let member = self.members[slot as usize]
            .take()
            .unwrap_or_else(|| unreachable!("by_id points at live slots"));
        Ok(member.node)
    }

    /// Changes a node's weight, adding or removing only its highest-numbered points.
    ///
    /// # Errors
    ///
    /// [`RingError::UnknownNode`], [`RingError::ZeroWeight`] or [`RingError::TooManyPoints`];
    /// the ring is unchanged on error.
    pub fn set_weight(&mut self, id: &str, weight: u32) -> Result<(), RingError> {
        let slot = self.slot_of(id)?;
        let node_id = self.member(slot).node.id().clone();
        if weight == 0 {
            return Err(RingError::ZeroWeight { id: node_id });
        }
        let old = self.member(slot).points;
        let new = self.points_for(weight)?;
        let total = self.points.len() as u64 - u64::from(old) + u64::from(new);
        if total > MAX_POINTS {
            return Err(RingError::TooManyPoints {
                requested: total,
                limit: MAX_POINTS,
            });
        }
        if new > old {
            self.insert_points(slot, &node_id, old..new);
        } else if new < old {
            self.remove_points(slot, &node_id, new..old);
        }
        let m = self.members[slot as usize]
            .as_mut()
            .unwrap_or_else(|| unreachable!("by_id points at live slots"));
        m.points = new;
        m.node.set_weight(weight);
        Ok(())
    }

    /// The node that owns `key`.
    ///
    /// # Errors
    ///
    /// [`RingError::Empty`] when the ring has no nodes.
    #[inline]
    pub fn locate(&self, key: &[u8]) -> Result<&Node, RingError> {
        self.locate_hash(hash_key_with_seed(key, self.seed))
    }

    /// The node that owns a key whose hash (with this ring's seed) is `hash`.
    ///
    /// # Errors
    ///
    /// [`RingError::Empty`] when the ring has no nodes.
    #[inline]
    pub fn locate_hash(&self, hash: u64) -> Result<&Node, RingError> {
        match self.points.owner_at(hash) {
            Some(slot) => Ok(&self.member(slot).node),
            None => Err(RingError::Empty),
        }
    }

    /// Up to `n` distinct nodes for `key` in ring order, the owner first.
    ///
    /// # Errors
    ///
    /// [`RingError::Empty`] when the ring has no nodes.
    pub fn replicas(&self, key: &[u8], n: usize) -> Result<Vec<&Node>, RingError> {
        self.replicas_hash(hash_key_with_seed(key, self.seed), n)
    }

    /// [`replicas`](Self::replicas) for a pre-computed hash.
    ///
    /// # Errors
    ///
    /// [`RingError::Empty`] when the ring has no nodes.
    pub fn replicas_hash(&self, hash: u64, n: usize) -> Result<Vec<&Node>, RingError> {
        if self.points.len() == 0 {
            return Err(RingError::Empty);
        }
        let want = n.min(self.len());
        let mut slots: Vec<u32> = Vec::with_capacity(want);
        for e in self.points.walk(hash) {
            if slots.len() == want {
                break;
            }
            if !slots.contains(&e.owner) {
                slots.push(e.owner);
            }
        }
        Ok(slots.into_iter().map(|s| &self.member(s).node).collect())
    }

    /// Each node's share of the hash space (the fraction of uniformly random keys it owns),
    /// summing to 1.
    #[must_use]
    pub fn shares(&self) -> Vec<(&Node, f64)> {
        let mut arcs = vec![0u128; self.members.len()];
        let full_circle = u128::from(u64::MAX) + 1;
        let mut prev = self.points.iter().last().map(|e| e.hash);
        for e in self.points.iter() {
            let arc = match prev {
                // A ring of one point owns everything.
                Some(p) if self.points.len() > 1 => u128::from(e.hash.wrapping_sub(p)),
                _ => full_circle,
            };
            arcs[e.owner as usize] += arc;
            prev = Some(e.hash);
        }
        let full = full_circle as f64;
        self.members
            .iter()
            .zip(arcs)
            .filter_map(|(m, a)| m.as_ref().map(|m| (&m.node, a as f64 / full)))
            .collect()
    }

    fn member(&self, slot: u32) -> &Member {
        self.members[slot as usize]
            .as_ref()
            .unwrap_or_else(|| unreachable!("owners only name live slots"))
    }

    fn slot_of(&self, id: &str) -> Result<u32, RingError> {
        self.by_id
            .get(id)
            .copied()
            .ok_or_else(|| RingError::UnknownNode { id: id.to_owned() })
    }

    fn points_for(&self, weight: u32) -> Result<u32, RingError> {
        let points = u64::from(weight) * u64::from(self.points_per_weight);
        u32::try_from(points)
            .ok()
            .filter(|&p| u64::from(p) <= MAX_POINTS)
            .ok_or(RingError::TooManyPoints {
                requested: points,
                limit: MAX_POINTS,
            })
    }

    /// Validates a new member and gives it a slot (points not yet placed).
    fn admit(&mut self, node: Node, points_before: u64) -> Result<u32, RingError> {
        if node.weight() == 0 {
            return Err(RingError::ZeroWeight {
                id: node.id().clone(),
            });
        }
        if self.by_id.contains_key(node.id()) {
            return Err(RingError::DuplicateNode {
                id: node.id().clone(),
            });
        }
        let points = self.points_for(node.weight())?;
        let total = points_before + u64::from(points);
        if total > MAX_POINTS {
            return Err(RingError::TooManyPoints {
                requested: total,
                limit: MAX_POINTS,
            });
        }
        let member = Member { node, points };
        let id = member.node.id().clone();
        let slot = match self.free.pop() {
            Some(s) => {
                self.members[s as usize] = Some(member);
                s
            }
            None => {
                self.members.push(Some(member));
                u32::try_from(self.members.len() - 1)
                    .unwrap_or_else(|_| unreachable!("MAX_POINTS bounds the member count"))
            }
        };
        self.by_id.insert(id, slot);
        Ok(slot)
    }

    /// Calls `f` with the hash of each point `i` in `range` of node `id`.
    fn point_hashes(&mut self, id: &NodeId, range: std::ops::Range<u32>, mut f: impl FnMut(u64)) {
        let buf = &mut self.scratch;
        buf.clear();
        buf.extend_from_slice(id.as_str().as_bytes());
        let at = buf.len();
        buf.extend_from_slice(&[0; 4]);
        for i in range {
            buf[at..].copy_from_slice(&i.to_le_bytes());
            f(hash_key_with_seed(buf, self.seed));
        }
    }

    /// Places points `range` of member `slot`, each into its bucket; lays everything out anew
    /// when a bucket overflows or the bucket count no longer suits the point count.
    fn insert_points(&mut self, slot: u32, id: &NodeId, range: std::ops::Range<u32>) {
        let mut new = Vec::with_capacity(range.len());
        self.point_hashes(id, range, |hash| new.push(Entry { hash, owner: slot }));
        let members = &self.members;
        let tie = |a: u32, b: u32| id_of(members, a).cmp(&id_of(members, b));
        for (i, e) in new.iter().enumerate() {
            if self.points.insert(*e, tie).is_err() {
                let all: Vec<Entry> = self
                    .points
                    .iter()
                    .copied()
                    .chain(new[i..].iter().copied())
                    .collect();
                self.lay_out(all);
                return;
            }
        }
        if self.points.wants_relayout() {
            self.lay_out(self.points.iter().copied().collect());
        }
    }

    /// Removes points `range` of member `slot`.
    fn remove_points(&mut self, slot: u32, id: &NodeId, range: std::ops::Range<u32>) {
        let mut gone = Vec::with_capacity(range.len());
        self.point_hashes(id, range, |h| gone.push(h));
        for h in gone {
            let removed = self.points.remove(h, slot);
            debug_assert!(removed, "every point of a member is on the ring");
        }
        if self.points.wants_relayout() {
            self.lay_out(self.points.iter().copied().collect());
        }
    }

    /// Sorts `points` (ties by node id, so the order depends only on the member set) and lays
    /// them out.
    fn lay_out(&mut self, mut points: Vec<Entry>) {
        let members = &self.members;
        points.sort_unstable_by(|a, b| {
            a.hash
                .cmp(&b.hash)
                .then_with(|| id_of(members, a.owner).cmp(&id_of(members, b.owner)))
        });
        self.points = Points::from_sorted(&points);
    }
}

fn id_of(members: &[Option<Member>], slot: u32) -> Option<&NodeId> {
    members
        .get(slot as usize)
        .and_then(Option::as_ref)
        .map(|m| m.node.id())
}

impl fmt::Debug for HashRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HashRing")
            .field("nodes", &self.len())
            .field("points", &self.points.len())
            .field("points_per_weight", &self.points_per_weight)
            .field("seed", &self.seed)
            .finish()
    }
}

impl Locator for HashRing {
    fn owner(&self, key: &[u8]) -> Result<NodeId, distkit_core::Error> {
        Ok(self.locate(key)?.id().clone())
    }

    fn replicas(&self, key: &[u8], n: usize) -> Result<Vec<NodeId>, distkit_core::Error> {
        Ok(HashRing::replicas(self, key, n)?
            .into_iter()
            .map(|node| node.id().clone())
            .collect())
    }

    fn node_count(&self) -> usize {
        self.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str) -> Node {
        Node::new(NodeId::new(id).unwrap(), format!("{id}:7000"))
    }

    fn ring(ids: &[&str]) -> HashRing {
        let mut r = HashRing::new();
        for id in ids {
            r.add_node(node(id)).unwrap();
        }
        r
    }

    /// Pins the mapping of the default ring: a change here remaps every deployed fleet.
    #[test]
    fn golden_mapping_never_changes() {
        let r = ring(&["node-a", "node-b", "node-c", "node-d"]);
        let got: Vec<&str> = (0..12)
            .map(|i| {
                r.locate(format!("device:{i}").as_bytes())
                    .unwrap()
                    .id()
                    .as_str()
            })
            .collect();
        assert_eq!(got, GOLDEN);
    }

    const GOLDEN: [&str; 12] = [
        "node-c", "node-d", "node-d", "node-d", "node-d", "node-b", "node-d", "node-b", "node-d",
        "node-b", "node-d", "node-d",
    ];

    #[test]
    fn bad_input_is_typed() {
        let mut r = ring(&["a"]);
        assert_eq!(
            r.add_node(node("a")).unwrap_err(),
            RingError::DuplicateNode {
                id: NodeId::new("a").unwrap()
            }
        );
        assert!(matches!(
            r.add_node(node("z").with_weight(0)),
            Err(RingError::ZeroWeight { .. })
        ));
        assert!(matches!(
            r.remove_node("nope"),
            Err(RingError::UnknownNode { .. })
        ));
        assert!(matches!(
            r.set_weight("nope", 2),
            Err(RingError::UnknownNode { .. })
        ));
        assert!(matches!(
            r.set_weight("a", 0),
            Err(RingError::ZeroWeight { .. })
        ));
        assert!(matches!(
            r.add_node(node("huge").with_weight(u32::MAX)),
            Err(RingError::TooManyPoints { .. })
        ));
        assert!(matches!(
            r.set_weight("a", 100_000),
            Err(RingError::TooManyPoints { .. })
        ));
        assert_eq!(
            r.point_count(),
            1000,
            "refused changes leave the ring as it was"
        );
        assert!(matches!(
            HashRing::builder().points_per_weight(0).build(),
            Err(RingError::ZeroPoints)
        ));
        let empty = HashRing::new();
        assert_eq!(empty.locate(b"k").unwrap_err(), RingError::Empty);
        assert_eq!(empty.replicas(b"k", 3).unwrap_err(), RingError::Empty);
        let e: distkit_core::Error = empty.owner(b"k").unwrap_err();
        assert!(matches!(e, distkit_core::Error::NoCapacity { .. }));
    }

    #[test]
    fn one_point_per_node_still_works() {
        let mut r = HashRing::builder().points_per_weight(1).build().unwrap();
        r.add_node(node("a")).unwrap();
        assert_eq!(r.point_count(), 1);
        assert_eq!(r.locate(b"anything").unwrap().id().as_str(), "a");
        let shares = r.shares();
        assert_eq!(shares.len(), 1);
        assert!((shares[0].1 - 1.0).abs() < 1e-12);
        r.add_node(node("b")).unwrap();
        let total: f64 = r.shares().iter().map(|s| s.1).sum();
        assert!((total - 1.0).abs() < 1e-9);
    }

    #[test]
    fn set_weight_matches_a_fresh_ring() {
        let mut r = ring(&["a", "b", "c"]);
        r.set_weight("b", 3).unwrap();
        let fresh = HashRing::builder()
            .build_with([node("a"), node("b").with_weight(3), node("c")])
            .unwrap();
        let pts = |r: &HashRing| -> Vec<(u64, String)> {
            r.points().map(|(h, id)| (h, id.to_string())).collect()
        };
        assert_eq!(pts(&r), pts(&fresh));
        r.set_weight("b", 1).unwrap();
        assert_eq!(pts(&r), pts(&ring(&["a", "b", "c"])));
        assert_eq!(r.node("b").unwrap().weight(), 1);
    }

    #[test]
    fn removed_slots_are_reused() {
        let mut r = ring(&["a", "b"]);
        r.remove_node("a").unwrap();
        r.add_node(node("c")).unwrap();
        assert_eq!(r.members.len(), 2);
        assert_eq!(r.len(), 2);
        assert!(r.node("a").is_none());
    }
}
