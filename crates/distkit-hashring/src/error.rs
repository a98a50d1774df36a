//! Errors of ring construction, membership changes and lookups.

use distkit_core::NodeId;

/// What went wrong in a locator of this crate. Converts into [`distkit_core::Error`] at the
/// [`Locator`](distkit_core::Locator) boundary.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RingError {
    /// A node was given weight 0. Every member needs a weight of at least 1.
    #[error("node {id} has weight 0; give it a weight of at least 1 or remove it")]
    ZeroWeight {
        /// The node.
        id: NodeId,
    },
    /// The node is already a member; remove it first or change its weight.
    #[error("node {id} is already a member (use set_weight to change it)")]
    DuplicateNode {
        /// The node.
        id: NodeId,
    },
    /// The node is not a member.
    #[error("node {id:?} is not a member")]
    UnknownNode {
        /// The id that was asked for.
        id: String,
    },
    /// A lookup on a locator without nodes.
    #[error("the locator has no nodes (add a node first)")]
    Empty,
    /// A bounded-loads table holds as many keys as it may; release some first.
    #[error("the assignment table is full at {max} keys (release keys, or allow more)")]
    TableFull {
        /// The table's limit.
        max: u64,
    },
    /// The locator wrapped by a bounded-loads table failed.
    #[error("the inner locator failed: {0}")]
    Inner(String),
    /// The configuration would place more points than the limit.
    #[error(
        "{requested} points requested, more than the limit of {limit} (lower the weights or the points per weight)"
    )]
    TooManyPoints {
        /// What the change would need.
        requested: u64,
        /// The limit.
        limit: u64,
    },
    /// Points per weight unit of 0.
    #[error("points per weight must be at least 1")]
    ZeroPoints,
    /// A jump hash over 0 buckets.
    #[error("the number of buckets must be at least 1")]
    ZeroBuckets,
    /// A bounded-load factor that is not a positive finite number.
    #[error("the load factor epsilon must be a finite number greater than 0, got {eps}")]
    InvalidEpsilon {
        /// The value given.
        eps: f64,
    },
    /// A Maglev table size that is not prime.
    #[error("the maglev table size {size} is not prime (65537 is a good default)")]
    NotPrime {
        /// The size given.
        size: u64,
    },
    /// A Maglev table too small (or too large) for its nodes.
    #[error(
        "the maglev table size {size} cannot hold {nodes} nodes (it must be prime, larger than the node count, at most {max})"
    )]
    TableSize {
        /// The size given.
        size: u64,
        /// The node count.
        nodes: usize,
        /// The largest size allowed.
        max: u64,
    },
    /// Every node is at its load cap.
    #[error("every node is at its cap of {cap} keys")]
    Full {
        /// The cap in force.
        cap: u64,
    },
}

impl From<RingError> for distkit_core::Error {
    fn from(e: RingError) -> Self {
        match e {
            RingError::Empty | RingError::Full { .. } | RingError::TableFull { .. } => {
                Self::NoCapacity {
                    reason: e.to_string(),
                }
            }
            other => Self::InvalidInput {
                what: "locator",
                reason: other.to_string(),
            },
        }
    }
}
