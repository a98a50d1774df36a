//! Weighted rendezvous (highest-random-weight) hashing.

use std::fmt;

use distkit_core::{Locator, NodeId};

use crate::hash::{hash_key_with_seed, mix64};
use crate::{DEFAULT_SEED, Node, RingError};

/// Rendezvous hashing: every node scores every key and the highest score wins.
///
/// With weights, node `i` scores `w_i / -ln(u_i)` where `u_i` in (0, 1) comes from hashing
/// the key with the node (Schindelhauer and Schomaker's weighted HRW), so each node wins a share
/// proportional to its weight. With equal weights the score is the hash itself (no logarithm).
/// A lookup costs O(n) in the node count; in exchange there is no table, removing any node
/// moves only its keys, and [`top`](Self::top) gives the best k distinct nodes for replication
/// at no extra cost. Choose it for small clusters (tens of nodes) that need replicas.
///
/// ```
/// use distkit_core::NodeId;
/// use distkit_hashring::{Node, Rendezvous};
///
/// let nodes = ["a", "b", "c", "d"].map(|id| Node::new(NodeId::new(id).unwrap(), id));
/// let hrw = Rendezvous::new(nodes)?;
/// let top2 = hrw.top(b"sensor-7", 2)?;
/// assert_eq!(top2[0].id(), hrw.locate(b"sensor-7")?.id());
/// assert_ne!(top2[0].id(), top2[1].id());
/// # Ok::<(), distkit_hashring::RingError>(())
/// ```
#[derive(Clone)]
pub struct Rendezvous {
    /// Nodes with the hash of their id, sorted by id.
    nodes: Vec<(Node, u64)>,
    seed: u64,
    equal_weights: bool,
}

impl Rendezvous {
    /// Rendezvous hashing over `nodes`.
    ///
    /// # Errors
    ///
    /// [`RingError::ZeroWeight`], [`RingError::DuplicateNode`].
    pub fn new(nodes: impl IntoIterator<Item = Node>) -> Result<Self, RingError> {
        let mut r = Self {
            nodes: Vec::new(),
            seed: DEFAULT_SEED,
            equal_weights: true,
        };
        for n in nodes {
            r.add_node(n)?;
        }
        Ok(r)
    }

    /// The same nodes under another seed.
    #[must_use]
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        for (n, h) in &mut self.nodes {
            *h = hash_key_with_seed(n.id().as_str().as_bytes(), seed);
        }
        self
    }

    /// Adds a node.
    ///
    /// # Errors
    ///
    /// [`RingError::ZeroWeight`], [`RingError::DuplicateNode`].
    pub fn add_node(&mut self, node: Node) -> Result<(), RingError> {
        if node.weight() == 0 {
            return Err(RingError::ZeroWeight {
                id: node.id().clone(),
            });
        }
        let at = match self.nodes.binary_search_by(|(n, _)| n.id().cmp(node.id())) {
            Ok(_) => {
                return Err(RingError::DuplicateNode {
                    id: node.id().clone(),
                });
            }
            Err(at) => at,
        };
        let h = hash_key_with_seed(node.id().as_str().as_bytes(), self.seed);
        self.nodes.insert(at, (node, h));
        self.refresh();
        Ok(())
    }

    /// Removes a node; only its keys move.
    ///
    /// # Errors
    ///
    /// [`RingError::UnknownNode`].
    pub fn remove_node(&mut self, id: &str) -> Result<Node, RingError> {
        let at = self
            .nodes
            .iter()
            .position(|(n, _)| n.id().as_str() == id)
            .ok_or_else(|| RingError::UnknownNode { id: id.to_owned() })?;
        let (node, _) = self.nodes.remove(at);
        self.refresh();
        Ok(node)
    }

    /// The nodes, sorted by id.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().map(|(n, _)| n)
    }

    /// The node that owns `key`.
    ///
    /// # Errors
    ///
    /// [`RingError::Empty`] without nodes.
    pub fn locate(&self, key: &[u8]) -> Result<&Node, RingError> {
        let kh = hash_key_with_seed(key, self.seed);
        let mut best: Option<(u64, &Node)> = None;
        for (n, nh) in &self.nodes {
            let s = self.score(kh, *nh, n.weight());
            // Nodes are sorted by id, so a strict `>` keeps the smallest id among ties, as `top`.
            if best.is_none_or(|(b, _)| s > b) {
                best = Some((s, n));
            }
        }
        best.map(|(_, n)| n).ok_or(RingError::Empty)
    }

    /// The `k` best nodes for `key`, best first (fewer when there are fewer nodes).
    ///
    /// # Errors
    ///
    /// [`RingError::Empty`] without nodes.
    pub fn top(&self, key: &[u8], k: usize) -> Result<Vec<&Node>, RingError> {
        if self.nodes.is_empty() {
            return Err(RingError::Empty);
        }
        let kh = hash_key_with_seed(key, self.seed);
        let mut scored: Vec<(u64, &Node)> = self
            .nodes
            .iter()
            .map(|(n, nh)| (self.score(kh, *nh, n.weight()), n))
            .collect();
        // Stable sort: ties stay in id order.
        scored.sort_by_key(|s| std::cmp::Reverse(s.0));
        Ok(scored.into_iter().take(k).map(|(_, n)| n).collect())
    }

    /// A node's score for a key as an ordered integer: the combined hash at equal weights, or
    /// the bits of the positive float `w / -ln(u)` (positive floats order like their bits).
    #[inline]
    fn score(&self, key_hash: u64, node_hash: u64, weight: u32) -> u64 {
        let x = mix64(key_hash ^ node_hash);
        if self.equal_weights {
            return x;
        }
        let u = ((x >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64);
        (f64::from(weight) / -u.ln()).to_bits()
    }

    fn refresh(&mut self) {
        let first = self.nodes.first().map(|(n, _)| n.weight());
        self.equal_weights = self.nodes.iter().all(|(n, _)| Some(n.weight()) == first);
    }
}

impl fmt::Debug for Rendezvous {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rendezvous")
            .field("nodes", &self.nodes.len())
            .field("equal_weights", &self.equal_weights)
            .finish()
    }
}

impl Locator for Rendezvous {
    fn owner(&self, key: &[u8]) -> Result<NodeId, distkit_core::Error> {
        Ok(self.locate(key)?.id().clone())
    }

    fn replicas(&self, key: &[u8], n: usize) -> Result<Vec<NodeId>, distkit_core::Error> {
        Ok(self
            .top(key, n)?
            .into_iter()
            .map(|n| n.id().clone())
            .collect())
    }

    fn node_count(&self) -> usize {
        self.nodes.len()
    }
}
