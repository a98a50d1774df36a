//! The key-to-node locator trait.

use std::fmt;
use std::sync::Arc;

use crate::{Error, NodeId};

/// Maps keys to the nodes that own them: a consistent hash ring, ketama, jump hash, maglev,
/// rendezvous hashing, or a bounded-load wrapper around one of them.
///
/// Implementations are deterministic: the same member set maps the same key to the same node
/// on every machine and every release.
pub trait Locator: Send + Sync + fmt::Debug {
    /// The node that owns `key`.
    ///
    /// # Errors
    ///
    /// [`Error::NoCapacity`] when there are no nodes (or, for a bounded-load locator, every
    /// node is full).
    fn owner(&self, key: &[u8]) -> Result<NodeId, Error>;

    /// Up to `n` distinct nodes for `key`, the owner first, in the locator's preference order.
    /// Fewer than `n` come back when there are fewer nodes.
    ///
    /// # Errors
    ///
    /// As for [`owner`](Locator::owner).
    fn replicas(&self, key: &[u8], n: usize) -> Result<Vec<NodeId>, Error>;

    /// How many nodes the locator places keys on.
    fn node_count(&self) -> usize;
}

impl<T: Locator + ?Sized> Locator for Arc<T> {
    fn owner(&self, key: &[u8]) -> Result<NodeId, Error> {
        (**self).owner(key)
    }
    fn replicas(&self, key: &[u8], n: usize) -> Result<Vec<NodeId>, Error> {
        (**self).replicas(key, n)
    }
    fn node_count(&self) -> usize {
        (**self).node_count()
    }
}

impl<T: Locator + ?Sized> Locator for Box<T> {
    fn owner(&self, key: &[u8]) -> Result<NodeId, Error> {
        (**self).owner(key)
    }
    fn replicas(&self, key: &[u8], n: usize) -> Result<Vec<NodeId>, Error> {
        (**self).replicas(key, n)
    }
    fn node_count(&self) -> usize {
        (**self).node_count()
    }
}
