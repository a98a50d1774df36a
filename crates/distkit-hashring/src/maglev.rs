//! Maglev hashing (Eisenbud et al., NSDI 2016): O(1) lookups from a prime-sized table.

use std::fmt;

use distkit_core::{Locator, NodeId};

use crate::hash::hash_key_with_seed;
use crate::{DEFAULT_SEED, Node, RingError};

/// The table size unless configured otherwise: the paper's default, a prime.
pub const DEFAULT_TABLE_SIZE: u64 = 65_537;

/// The largest table size accepted.
pub const MAX_TABLE_SIZE: u64 = 1 << 24;

const OFFSET_SALT: u64 = 0x6d61_676c_6576_6f66; // "maglevof"
const SKIP_SALT: u64 = 0x6d61_676c_6576_736b; // "maglevsk"
const EMPTY: u32 = u32::MAX;

/// Maglev consistent hashing: every node fills table slots in the order of its own
/// permutation, taking turns in proportion to its weight, and a key's slot names its node.
///
/// Lookups are one hash and one table read, whatever the node count. The table is rebuilt on
/// every membership change (milliseconds at the default size); a change moves somewhat more
/// keys than the ideal, and balance is within about 1% when the table has more than 100 slots
/// per node. Choose it for read-heavy routing (load balancers, request routers) where
/// membership changes rarely.
///
/// Permutations follow the paper: `offset = h1(id) mod M`, `skip = h2(id) mod (M - 1) + 1`,
/// slot `j` of a node's permutation is `(offset + j x skip) mod M`, with `h1`, `h2` XXH3 under
/// two salts of the seed. Nodes take turns in id order, so the table depends only on the member
/// set. A key's slot is `xxh3(key) x M / 2^64` (a multiply, not a division).
///
/// ```
/// use distkit_core::NodeId;
/// use distkit_hashring::{Maglev, Node};
///
/// let nodes = ["lb-a", "lb-b", "lb-c"].map(|id| Node::new(NodeId::new(id).unwrap(), id));
/// let maglev = Maglev::new(nodes)?;
/// let node = maglev.locate(b"flow 10.1.2.3:5555")?;
/// assert!(node.id().as_str().starts_with("lb-"));
/// # Ok::<(), distkit_hashring::RingError>(())
/// ```
#[derive(Clone)]
pub struct Maglev {
    nodes: Vec<Node>,
    table: Vec<u32>,
    size: u64,
    seed: u64,
}

impl Maglev {
    /// A table of [`DEFAULT_TABLE_SIZE`] slots over `nodes`.
    ///
    /// # Errors
    ///
    /// As for [`with_table_size`](Self::with_table_size).
    pub fn new(nodes: impl IntoIterator<Item = Node>) -> Result<Self, RingError> {
        Self::with_table_size(nodes, DEFAULT_TABLE_SIZE)
    }

    /// A table of `size` slots over `nodes`.
    ///
    /// # Errors
    ///
    /// [`RingError::NotPrime`], [`RingError::TableSize`] (not larger than the node count, or
    /// over [`MAX_TABLE_SIZE`]), [`RingError::ZeroWeight`], [`RingError::DuplicateNode`].
    pub fn with_table_size(
        nodes: impl IntoIterator<Item = Node>,
        size: u64,
    ) -> Result<Self, RingError> {
        let mut m = Self {
            nodes: Vec::new(),
            table: Vec::new(),
            size,
            seed: DEFAULT_SEED,
        };
        for n in nodes {
            m.check_new(&n)?;
            m.nodes.push(n);
        }
        m.check_size()?;
        m.rebuild();
        Ok(m)
    }

    /// The same nodes under another hash seed.
    #[must_use]
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self.rebuild();
        self
    }

    /// Adds a node and rebuilds the table.
    ///
    /// # Errors
    ///
    /// [`RingError::ZeroWeight`], [`RingError::DuplicateNode`], [`RingError::TableSize`].
    pub fn add_node(&mut self, node: Node) -> Result<(), RingError> {
        self.check_new(&node)?;
        self.nodes.push(node);
        if let Err(e) = self.check_size() {
            self.nodes.pop();
            return Err(e);
        }
        self.rebuild();
        Ok(())
    }

    /// Removes a node and rebuilds the table.
    ///
    /// # Errors
    ///
    /// [`RingError::UnknownNode`].
    pub fn remove_node(&mut self, id: &str) -> Result<Node, RingError> {
        let i = self.index_of(id)?;
        let node = self.nodes.remove(i);
        self.rebuild();
        Ok(node)
    }

    /// Changes a node's weight and rebuilds the table.
    ///
    /// # Errors
    ///
    /// [`RingError::UnknownNode`], [`RingError::ZeroWeight`].
    pub fn set_weight(&mut self, id: &str, weight: u32) -> Result<(), RingError> {
        let i = self.index_of(id)?;
        if weight == 0 {
            return Err(RingError::ZeroWeight {
                id: self.nodes[i].id().clone(),
            });
        }
        self.nodes[i].set_weight(weight);
        self.rebuild();
        Ok(())
    }

    /// The node that owns `key`.
    ///
    /// # Errors
    ///
    /// [`RingError::Empty`] without nodes.
    #[inline]
    pub fn locate(&self, key: &[u8]) -> Result<&Node, RingError> {
        self.locate_hash(hash_key_with_seed(key, self.seed))
    }

    /// The node for a pre-computed key hash.
    ///
    /// # Errors
    ///
    /// [`RingError::Empty`] without nodes.
    #[inline]
    pub fn locate_hash(&self, hash: u64) -> Result<&Node, RingError> {
        if self.nodes.is_empty() {
            return Err(RingError::Empty);
        }
        Ok(&self.nodes[self.table[self.slot(hash)] as usize])
    }

    /// The lookup table: for each slot, the index into [`nodes`](Self::nodes).
    #[must_use]
    pub fn table(&self) -> &[u32] {
        &self.table
    }

    /// The nodes, sorted by id (the order they take turns in).
    #[must_use]
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The table size.
    #[must_use]
    pub fn table_size(&self) -> u64 {
        self.size
    }

    /// The paper's `(offset, skip)` of a node id: its permutation is
    /// `(offset + j x skip) mod M` for `j = 0, 1, ...`.
    #[must_use]
    pub fn offset_and_skip(&self, id: &str) -> (u64, u64) {
        let offset = hash_key_with_seed(id.as_bytes(), self.seed ^ OFFSET_SALT) % self.size;
        let skip = hash_key_with_seed(id.as_bytes(), self.seed ^ SKIP_SALT) % (self.size - 1) + 1;
        (offset, skip)
    }

    #[inline]
    fn slot(&self, hash: u64) -> usize {
        ((u128::from(hash) * u128::from(self.size)) >> 64) as usize
    }

    fn index_of(&self, id: &str) -> Result<usize, RingError> {
        self.nodes
            .iter()
            .position(|n| n.id().as_str() == id)
            .ok_or_else(|| RingError::UnknownNode { id: id.to_owned() })
    }

    fn check_new(&self, node: &Node) -> Result<(), RingError> {
        if node.weight() == 0 {
            return Err(RingError::ZeroWeight {
                id: node.id().clone(),
            });
        }
        if self.nodes.iter().any(|n| n.id() == node.id()) {
            return Err(RingError::DuplicateNode {
                id: node.id().clone(),
            });
        }
        Ok(())
    }

    fn check_size(&self) -> Result<(), RingError> {
        let bad_size = RingError::TableSize {
            size: self.size,
            nodes: self.nodes.len(),
            max: MAX_TABLE_SIZE,
        };
        if self.size > MAX_TABLE_SIZE || self.size <= self.nodes.len() as u64 || self.size < 2 {
            return Err(bad_size);
        }
        if !is_prime(self.size) {
            return Err(RingError::NotPrime { size: self.size });
        }
        Ok(())
    }

    /// The paper's population, with turns in proportion to weight: in each round a node earns
    /// its weight in credit and takes one slot per `max_weight` of credit.
    fn rebuild(&mut self) {
        self.nodes.sort_by(|a, b| a.id().cmp(b.id()));
        let m = self.size;
        self.table.clear();
        if self.nodes.is_empty() {
            return;
        }
        self.table.resize(m as usize, EMPTY);
        let perms: Vec<(u64, u64)> = self
            .nodes
            .iter()
            .map(|n| self.offset_and_skip(n.id().as_str()))
            .collect();
        let max_w = u64::from(self.nodes.iter().map(Node::weight).max().unwrap_or(1));
        let mut next = vec![0u64; self.nodes.len()];
        let mut credit = vec![0u64; self.nodes.len()];
        let mut filled = 0u64;
        'fill: loop {
            for (i, node) in self.nodes.iter().enumerate() {
                credit[i] += u64::from(node.weight());
                while credit[i] >= max_w {
                    credit[i] -= max_w;
                    let (offset, skip) = perms[i];
                    let mut c = (offset + next[i] % m * skip) % m;
                    while self.table[c as usize] != EMPTY {
                        next[i] += 1;
                        c = (offset + next[i] % m * skip) % m;
                    }
                    self.table[c as usize] = i as u32;
                    next[i] += 1;
                    filled += 1;
                    if filled == m {
                        break 'fill;
                    }
                }
            }
        }
    }
}

/// Deterministic trial division; sizes are at most [`MAX_TABLE_SIZE`].
fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut d = 3;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

impl fmt::Debug for Maglev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Maglev")
            .field("nodes", &self.nodes.len())
            .field("table_size", &self.size)
            .finish()
    }
}

impl Locator for Maglev {
    fn owner(&self, key: &[u8]) -> Result<NodeId, distkit_core::Error> {
        Ok(self.locate(key)?.id().clone())
    }

    /// Replicas walk the table from the key's slot and collect distinct nodes.
    fn replicas(&self, key: &[u8], n: usize) -> Result<Vec<NodeId>, distkit_core::Error> {
        if self.nodes.is_empty() {
            return Err(RingError::Empty.into());
        }
        let want = n.min(self.nodes.len());
        let start = self.slot(hash_key_with_seed(key, self.seed));
        let mut out: Vec<u32> = Vec::with_capacity(want);
        for step in 0..self.table.len() {
            if out.len() == want {
                break;
            }
            let i = self.table[(start + step) % self.table.len()];
            if !out.contains(&i) {
                out.push(i);
            }
        }
        Ok(out
            .into_iter()
            .map(|i| self.nodes[i as usize].id().clone())
            .collect())
    }

    fn node_count(&self) -> usize {
        self.nodes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str) -> Node {
        Node::new(NodeId::new(id).unwrap(), id)
    }

    #[test]
    fn bad_sizes_are_typed_errors() {
        assert_eq!(
            Maglev::with_table_size([node("a")], 65_536).unwrap_err(),
            RingError::NotPrime { size: 65_536 }
        );
        assert!(matches!(
            Maglev::with_table_size([node("a"), node("b"), node("c")], 3),
            Err(RingError::TableSize { .. })
        ));
        assert!(matches!(
            Maglev::with_table_size([node("a")], 0),
            Err(RingError::TableSize { .. })
        ));
        assert!(matches!(
            Maglev::with_table_size([node("a")], MAX_TABLE_SIZE + 43),
            Err(RingError::TableSize { .. })
        ));
        let mut m = Maglev::with_table_size([node("a"), node("b")], 3).unwrap();
        assert!(matches!(
            m.add_node(node("c")),
            Err(RingError::TableSize { .. })
        ));
        assert_eq!(
            m.nodes().len(),
            2,
            "a refused add leaves the table as it was"
        );
    }

    #[test]
    fn every_slot_is_filled_and_shares_follow_weights() {
        let m =
            Maglev::with_table_size([node("a").with_weight(1), node("b").with_weight(3)], 10_007)
                .unwrap();
        assert!(m.table().iter().all(|&s| s != EMPTY));
        let b = m
            .table()
            .iter()
            .filter(|&&s| m.nodes()[s as usize].id().as_str() == "b")
            .count();
        let share = b as f64 / 10_007.0;
        assert!((share - 0.75).abs() < 0.01, "b's share {share}");
    }

    #[test]
    fn primes() {
        let small: Vec<u64> = (0..30).filter(|&n| is_prime(n)).collect();
        assert_eq!(small, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        assert!(is_prime(65_537));
        assert!(!is_prime(65_535));
    }
}
