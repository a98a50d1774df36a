//! One membership snapshot: the ring, every member's address and an epoch, immutable and
//! swapped whole.
//!
//! The first version kept the same facts in three structures under three locks (the ring, a
//! URL map and an "alone" flag), so a `get` between two updates could find an owner without an
//! address, and `add_node` on a cache built alone left every key local. Here a change builds a
//! new [`Membership`] from the old one and swaps it in atomically; every operation loads one
//! snapshot and uses it from start to end.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use distkit_core::{Error, Locator, NodeId};
use distkit_hashring::{HashRing, Node};

/// Where a key lives in one snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Owner {
    /// This node.
    Me,
    /// A peer, with its base URL (taken from the same snapshot as the ring).
    Peer(NodeId, String),
}

/// The members as one immutable value.
#[derive(Clone, Debug)]
pub(crate) struct Membership {
    /// Raised by every change; tells snapshots apart.
    pub(crate) epoch: u64,
    me: NodeId,
    ring: HashRing,
    urls: HashMap<NodeId, String>,
    /// A digest of the member ids, derived once per snapshot (every key request sends it).
    fingerprint: u64,
}

impl Membership {
    pub(crate) fn new(me: NodeId, peers: &[(NodeId, String)]) -> Result<Self, Error> {
        let mut m = Self {
            epoch: 0,
            me: me.clone(),
            ring: HashRing::new(),
            urls: HashMap::new(),
            fingerprint: 0,
        };
        m.ring
            .add_node(Node::new(me, "self"))
            .map_err(|e| Error::invalid_input("node", e.to_string()))?;
        for (id, url) in peers {
            m = m.with_peer(id.clone(), url.clone())?;
        }
        m.epoch = 0;
        m.fingerprint = m.digest();
        Ok(m)
    }

    /// A copy with `id` at `url` added.
    pub(crate) fn with_peer(&self, id: NodeId, url: String) -> Result<Self, Error> {
        if id == self.me {
            return Err(Error::invalid_input(
                "peer",
                format!("{id} is this node; list only the other members as peers"),
            ));
        }
        let mut next = self.clone();
        next.ring
            .add_node(Node::new(id.clone(), url.clone()))
            .map_err(|e| Error::invalid_input("peer", e.to_string()))?;
        next.urls.insert(id, url);
        next.changed()
    }

    /// A copy without peer `id`.
    pub(crate) fn without_peer(&self, id: &str) -> Result<Self, Error> {
        if id == self.me.as_str() {
            return Err(Error::invalid_input("peer", "a node cannot remove itself"));
        }
        let mut next = self.clone();
        next.ring
            .remove_node(id)
            .map_err(|e| Error::invalid_input("peer", e.to_string()))?;
        next.urls.remove(id);
        next.changed()
    }

    /// The snapshot after a change: the next epoch (refused rather than wrapped or
    /// saturated: two snapshots must never share one) and a fresh fingerprint.
    fn changed(mut self) -> Result<Self, Error> {
        self.epoch = self.epoch.checked_add(1).ok_or_else(|| {
            Error::invalid_input("members", "the membership epoch cannot go any higher")
        })?;
        self.fingerprint = self.digest();
        Ok(self)
    }

    /// The owner of `key`. Without peers, this node, without a ring lookup.
    pub(crate) fn owner(&self, key: &str) -> Owner {
        if self.urls.is_empty() {
            return Owner::Me;
        }
        match self.ring.owner(key.as_bytes()) {
            Ok(id) if id != self.me => match self.urls.get(&id) {
                Some(url) => Owner::Peer(id, url.clone()),
                // Impossible within one snapshot: the ring and the addresses change together.
                None => Owner::Me,
            },
            _ => Owner::Me,
        }
    }

    /// The `r` nodes that hold `key` (the owner first, then the next distinct members of the
    /// ring), at most as many as there are members.
    pub(crate) fn holders(&self, key: &str, r: usize) -> Vec<Owner> {
        if self.urls.is_empty() || r <= 1 {
            return vec![self.owner(key)];
        }
        Locator::replicas(&self.ring, key.as_bytes(), r)
            .unwrap_or_default()
            .into_iter()
            .map(|id| {
                if id == self.me {
                    Owner::Me
                } else {
                    match self.urls.get(&id) {
                        Some(url) => Owner::Peer(id, url.clone()),
                        None => Owner::Me,
                    }
                }
            })
            .collect()
    }

    /// The peers and their addresses.
    pub(crate) fn peers(&self) -> impl Iterator<Item = (&NodeId, &String)> {
        self.urls.iter()
    }

    pub(crate) fn is_peer(&self, id: &NodeId) -> bool {
        self.urls.contains_key(id)
    }

    pub(crate) fn peer_count(&self) -> usize {
        self.urls.len()
    }

    pub(crate) fn ring(&self) -> &HashRing {
        &self.ring
    }

    /// A digest of the member set (ids only: a node does not know its own address), equal
    /// on two nodes exactly when they agree on who the members are. Peers compare it on
    /// every key request and refuse to act on a disagreement rather than use a wrong owner.
    pub(crate) fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    fn digest(&self) -> u64 {
        let mut ids: Vec<&str> = self.urls.keys().map(NodeId::as_str).collect();
        ids.push(self.me.as_str());
        ids.sort_unstable();
        let mut bytes = Vec::new();
        for id in ids {
            bytes.extend_from_slice(&(id.len() as u64).to_le_bytes());
            bytes.extend_from_slice(id.as_bytes());
        }
        distkit_hashring::hash_key(&bytes)
    }
}

/// The current snapshot, swapped whole.
#[derive(Debug)]
pub(crate) struct Members(ArcSwap<Membership>);

impl Members {
    pub(crate) fn new(m: Membership) -> Self {
        Self(ArcSwap::from_pointee(m))
    }

    /// The snapshot to use for one whole operation (it may be held across awaits).
    pub(crate) fn load(&self) -> Arc<Membership> {
        self.0.load_full()
    }

    /// The snapshot for one quick look, without touching the reference count (the hot path
    /// of every read); not to be held across an await.
    pub(crate) fn peek(&self) -> arc_swap::Guard<Arc<Membership>> {
        self.0.load()
    }

    /// Applies `change` to the current snapshot and swaps the result in; concurrent changes
    /// are applied one after the other, none is lost.
    pub(crate) fn update(
        &self,
        change: impl Fn(&Membership) -> Result<Membership, Error>,
    ) -> Result<(), Error> {
        let mut failed = None;
        self.0.rcu(|cur| {
            failed = None;
            match change(cur) {
                Ok(next) => Arc::new(next),
                Err(e) => {
                    failed = Some(e);
                    Arc::clone(cur)
                }
            }
        });
        failed.map_or(Ok(()), Err)
    }
}
