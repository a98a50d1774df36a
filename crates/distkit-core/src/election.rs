//! The leader elector trait and the leadership it reports.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::{Error, NodeId, Term};

/// The part a node plays in an election.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Follows a leader, or waits for one.
    Follower,
    /// Asks whether it could win before raising the term (Raft's PreVote).
    PreCandidate,
    /// Asks for votes in a new term.
    Candidate,
    /// Leads its term.
    Leader,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Follower => "follower",
            Self::PreCandidate => "pre-candidate",
            Self::Candidate => "candidate",
            Self::Leader => "leader",
        })
    }
}

/// Who leads, in which term, and what this node is.
///
/// ```
/// use distkit_core::{Leadership, Role, Term};
///
/// let l = Leadership::initial();
/// assert_eq!((l.leader.clone(), l.term, l.role), (None, Term::ZERO, Role::Follower));
/// assert!(!l.is_leader());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Leadership {
    /// The leader this node knows of in `term`, if any.
    pub leader: Option<NodeId>,
    /// This node's current term.
    pub term: Term,
    /// This node's role.
    pub role: Role,
}

impl Leadership {
    /// What a node reports before it has heard of any leader.
    #[must_use]
    pub fn initial() -> Self {
        Self {
            leader: None,
            term: Term::ZERO,
            role: Role::Follower,
        }
    }

    /// Whether this node is the leader.
    #[must_use]
    pub fn is_leader(&self) -> bool {
        self.role == Role::Leader
    }
}

/// A participant in leader election: Raft-style over HTTP, or a lease in Redis.
///
/// Leadership is observed through a [`watch::Receiver`] that starts with the current value and
/// always holds the latest one, so a slow observer can miss intermediate states but never the
/// current one.
#[async_trait]
pub trait LeaderElector: Send + Sync + fmt::Debug {
    /// This node's id.
    fn id(&self) -> &NodeId;

    /// A receiver of leadership changes, starting with the current value.
    fn subscribe(&self) -> watch::Receiver<Leadership>;

    /// The current leadership.
    fn leadership(&self) -> Leadership {
        self.subscribe().borrow().clone()
    }

    /// Whether this node leads right now, as far as it knows. For work that must not overlap
    /// with a new leader, fence it with the term (see [`Term::as_fencing_token`]).
    fn is_leader(&self) -> bool {
        self.subscribe().borrow().is_leader()
    }

    /// The leader this node knows of, if any.
    fn leader_id(&self) -> Option<NodeId> {
        self.subscribe().borrow().leader.clone()
    }

    /// Gives up leadership if this node leads, and returns once the hand-over is made: the
    /// Raft elector's `TimeoutNow` has been delivered to its successor, the lease election's
    /// lease has been released in Redis. If this node does not lead, it does nothing, now or
    /// later: a resign is never kept for a later win.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] when the elector has stopped; when the backend cannot be told,
    /// the lease runs out on its own.
    async fn resign(&self) -> Result<(), Error>;
}

#[async_trait]
impl<T: LeaderElector + ?Sized> LeaderElector for Arc<T> {
    fn id(&self) -> &NodeId {
        (**self).id()
    }
    fn subscribe(&self) -> watch::Receiver<Leadership> {
        (**self).subscribe()
    }
    async fn resign(&self) -> Result<(), Error> {
        (**self).resign().await
    }
}

#[async_trait]
impl<T: LeaderElector + ?Sized> LeaderElector for Box<T> {
    fn id(&self) -> &NodeId {
        (**self).id()
    }
    fn subscribe(&self) -> watch::Receiver<Leadership> {
        (**self).subscribe()
    }
    async fn resign(&self) -> Result<(), Error> {
        (**self).resign().await
    }
}
