//! Ring members.

use std::fmt;

use distkit_core::NodeId;

/// A physical node: its id, the address clients reach it at, and its weight.
///
/// The weight scales the node's share of keys: a node of weight 2 gets about twice the keys of
/// a node of weight 1. Weight 0 is refused when the node is added.
///
/// ```
/// use distkit_core::NodeId;
/// use distkit_hashring::Node;
///
/// let n = Node::new(NodeId::new("cache-1")?, "10.0.0.1:7000").with_weight(3);
/// assert_eq!((n.id().as_str(), n.address(), n.weight()), ("cache-1", "10.0.0.1:7000", 3));
/// # Ok::<(), distkit_core::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Node {
    id: NodeId,
    address: String,
    weight: u32,
}

impl Node {
    /// A node of weight 1.
    #[must_use]
    pub fn new(id: NodeId, address: impl Into<String>) -> Self {
        Self {
            id,
            address: address.into(),
            weight: 1,
        }
    }

    /// The same node with another weight.
    #[must_use]
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// The node's id.
    #[must_use]
    pub fn id(&self) -> &NodeId {
        &self.id
    }

    /// The address clients reach it at.
    #[must_use]
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Its weight.
    #[must_use]
    pub fn weight(&self) -> u32 {
        self.weight
    }

    pub(crate) fn set_weight(&mut self, weight: u32) {
        self.weight = weight;
    }
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Node({} @ {}, w={})", self.id, self.address, self.weight)
    }
}
