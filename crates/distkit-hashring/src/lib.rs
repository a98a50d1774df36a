//! Consistent hashing for distkit: a weighted ring that is fast and well balanced by default,
//! plus ketama, jump, maglev, rendezvous and bounded-load locators behind one trait.
//!
//! # Overview
//!
//! Every locator maps a key's bytes to a [`Node`] and implements
//! [`distkit_core::Locator`], so an application can swap algorithms without touching the code
//! that routes keys. Keys are hashed with XXH3 ([`hash_key`]), whose output is fixed by its
//! specification: no Rust release can remap a fleet.
//!
//! | locator | lookup | balance (peak/mean, 100 nodes) | membership changes | choose it for |
//! |---|---|---|---|---|
//! | [`HashRing`] | ~20 ns, prefix index | ~1.08 at 1,000 points a node | any node, incremental; only its keys move | the default: caches, sharded services |
//! | [`Ketama`] | binary search, MD5 | ~1.2 (160 points) | rebuild | moving a memcached/twemproxy fleet without remapping |
//! | [`JumpHash`] | O(ln n), no memory | perfect | append or drop the last shard only | numbered shards that only grow |
//! | [`Maglev`] | one table read | within ~1% | rebuild (ms) | read-heavy routing, load balancers |
//! | [`Rendezvous`] | O(n) | perfect up to sampling | any node; only its keys move | small clusters needing top-k replicas |
//! | [`BoundedLoads`] | inner + cap check | at most `ceil((1+eps) x mean)` | fixed member set | hard caps on hot nodes |
//!
//! The first five implement [`Locator`](distkit_core::Locator): the owner depends only on
//! the member set. [`BoundedLoads`] does not, on purpose: its assignments depend on the order
//! keys arrive in and are remembered (in a bounded table), so it offers `assign`/`release`
//! instead.
//!
//! All of them refuse bad input with a [`RingError`] (weight 0, duplicate or unknown nodes,
//! lookups on an empty locator, eps <= 0, too many points, a table size that is not prime, a
//! full assignment table)
//! and never panic on it.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use distkit_core::{Locator, NodeId};
//! use distkit_hashring::{HashRing, Node, Rendezvous};
//!
//! let nodes: Vec<Node> = (1..=3)
//!     .map(|i| Ok(Node::new(NodeId::new(format!("cache-{i}"))?, format!("10.0.0.{i}:7000"))))
//!     .collect::<Result<_, distkit_core::Error>>()?;
//!
//! // The default ring, weighted: cache-3 has twice the capacity of the others.
//! let mut ring = HashRing::new();
//! for n in nodes.iter().cloned() {
//!     let heavy = n.id().as_str() == "cache-3";
//!     ring.add_node(if heavy { n.with_weight(2) } else { n })?;
//! }
//! let owner = ring.locate(b"device:42")?;
//! println!("device:42 lives on {} at {}", owner.id(), owner.address());
//!
//! // Any locator behind the same trait.
//! let locators: Vec<Arc<dyn Locator>> = vec![Arc::new(ring), Arc::new(Rendezvous::new(nodes)?)];
//! for l in &locators {
//!     let replicas = l.replicas(b"device:42", 2)?;
//!     assert_eq!(replicas.len(), 2);
//!     assert_eq!(replicas[0], l.owner(b"device:42")?);
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Feature flags
//!
//! None.
//!
//! # Supported Rust versions
//!
//! The minimum supported Rust version is 1.88.

#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]
#![forbid(unsafe_code)]

mod bounded;
mod error;
mod hash;
mod jump;
mod ketama;
mod maglev;
mod node;
mod points;
mod rendezvous;
mod ring;

#[doc(inline)]
pub use bounded::BoundedLoads;
#[doc(inline)]
pub use error::RingError;
#[doc(inline)]
pub use hash::{DEFAULT_SEED, hash_key, hash_key_with_seed};
#[doc(inline)]
pub use jump::{JumpHash, jump_hash};
#[doc(inline)]
pub use ketama::Ketama;
#[doc(inline)]
pub use maglev::{DEFAULT_TABLE_SIZE, MAX_TABLE_SIZE, Maglev};
#[doc(inline)]
pub use node::Node;
#[doc(inline)]
pub use rendezvous::Rendezvous;
#[doc(inline)]
pub use ring::{DEFAULT_POINTS_PER_WEIGHT, HashRing, HashRingBuilder, MAX_POINTS};
