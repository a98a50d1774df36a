//! Election settings, validated once.

use std::time::Duration;

use distkit_core::{Error, NodeId};

/// The longest election timeout accepted: an hour is far beyond any useful election, and the
/// bound keeps every deadline the core computes far from overflow.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// Election settings for one node. Build with [`Config::builder`].
///
/// A node without peers is a cluster of one: it elects itself on its first tick and holds a
/// lease for as long as it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub(crate) id: NodeId,
    pub(crate) peers: Vec<NodeId>,
    pub(crate) timeout_min: Duration,
    pub(crate) timeout_max: Duration,
    pub(crate) heartbeat: Duration,
    pub(crate) lease_drift: Duration,
    pub(crate) pre_vote: bool,
    pub(crate) check_quorum: bool,
}

impl Config {
    /// Settings for node `id` in a cluster with `peers` (the other members).
    pub fn builder(id: NodeId, peers: impl IntoIterator<Item = NodeId>) -> ConfigBuilder {
        ConfigBuilder {
            id,
            peers: peers.into_iter().collect(),
            timeout_min: Duration::from_millis(150),
            timeout_max: Duration::from_millis(300),
            heartbeat: Duration::from_millis(50),
            lease_drift: None,
            pre_vote: true,
            check_quorum: true,
        }
    }

    /// This node.
    #[must_use]
    pub fn id(&self) -> &NodeId {
        &self.id
    }

    /// The other members.
    #[must_use]
    pub fn peers(&self) -> &[NodeId] {
        &self.peers
    }

    /// Votes needed to win: a majority of all members.
    #[must_use]
    pub fn quorum(&self) -> usize {
        let members = self.peers.len() + 1;
        members / 2 + 1
    }

    /// The election timeout range `[min, max)`.
    #[must_use]
    pub fn election_timeout(&self) -> (Duration, Duration) {
        (self.timeout_min, self.timeout_max)
    }

    /// The heartbeat interval.
    #[must_use]
    pub fn heartbeat(&self) -> Duration {
        self.heartbeat
    }

    /// How long a leader's lease lasts after a majority acknowledged a heartbeat:
    /// the minimum election timeout less the drift bound.
    #[must_use]
    pub fn lease(&self) -> Duration {
        self.timeout_min - self.lease_drift
    }
}

/// Builds a [`Config`].
#[derive(Clone, Debug)]
#[must_use]
pub struct ConfigBuilder {
    id: NodeId,
    peers: Vec<NodeId>,
    timeout_min: Duration,
    timeout_max: Duration,
    heartbeat: Duration,
    lease_drift: Option<Duration>,
    pre_vote: bool,
    check_quorum: bool,
}

impl ConfigBuilder {
    /// The election timeout is drawn uniformly from `[min, max)` (default 150-300 ms, the Raft
    /// paper's recommendation).
    pub fn election_timeout(mut self, min: Duration, max: Duration) -> Self {
        self.timeout_min = min;
        self.timeout_max = max;
        self
    }

    /// The leader's heartbeat interval (default 50 ms); it must be under half the minimum
    /// election timeout.
    pub fn heartbeat(mut self, interval: Duration) -> Self {
        self.heartbeat = interval;
        self
    }

    /// The clock drift allowance subtracted from the minimum election timeout to get the
    /// leader lease (default a fifth of the minimum timeout, which covers clocks running up
    /// to 10% fast or slow).
    pub fn lease_drift(mut self, drift: Duration) -> Self {
        self.lease_drift = Some(drift);
        self
    }

    /// PreVote (default on): a node asks whether it could win before raising its term, so a
    /// node rejoining from a partition does not disrupt a working leader.
    pub fn pre_vote(mut self, on: bool) -> Self {
        self.pre_vote = on;
        self
    }

    /// CheckQuorum (default on): a leader that has not heard from a majority within the
    /// minimum election timeout steps down.
    pub fn check_quorum(mut self, on: bool) -> Self {
        self.check_quorum = on;
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] with duplicate peers or the node among its own peers, with
    /// `min >= max`, a maximum timeout over an hour, a zero heartbeat or one not under half the minimum timeout,
    /// or a drift not under the minimum timeout.
    pub fn build(self) -> Result<Config, Error> {
        let bad = |reason: String| Err(Error::invalid_input("election config", reason));
        // No peers is a cluster of one: it leads at once (a laptop, a dev setup).
        let mut seen = std::collections::HashSet::new();
        for p in &self.peers {
            if p == &self.id {
                return bad(format!(
                    "{p} is this node; list only the other members as peers"
                ));
            }
            if !seen.insert(p) {
                return bad(format!("peer {p} is listed twice"));
            }
        }
        if self.timeout_min.is_zero() || self.timeout_min >= self.timeout_max {
            return bad(format!(
                "the election timeout range must satisfy 0 < min < max, got {:?}..{:?}",
                self.timeout_min, self.timeout_max
            ));
        }
        if self.timeout_max > MAX_TIMEOUT {
            return bad(format!(
                "the maximum election timeout must be at most {MAX_TIMEOUT:?}, got {:?}",
                self.timeout_max
            ));
        }
        if self.heartbeat.is_zero() || self.heartbeat.saturating_mul(2) > self.timeout_min {
            return bad(format!(
                "the heartbeat ({:?}) must be greater than zero and at most half the minimum election timeout ({:?})",
                self.heartbeat, self.timeout_min
            ));
        }
        let lease_drift = self.lease_drift.unwrap_or(self.timeout_min / 5);
        if lease_drift >= self.timeout_min {
            return bad(format!(
                "the lease drift ({lease_drift:?}) must be shorter than the minimum election timeout"
            ));
        }
        Ok(Config {
            id: self.id,
            peers: self.peers,
            timeout_min: self.timeout_min,
            timeout_max: self.timeout_max,
            heartbeat: self.heartbeat,
            lease_drift,
            pre_vote: self.pre_vote,
            check_quorum: self.check_quorum,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    #[test]
    fn defaults_are_the_papers() {
        let c = Config::builder(id("a"), [id("b"), id("c")])
            .build()
            .unwrap();
        assert_eq!(
            c.election_timeout(),
            (Duration::from_millis(150), Duration::from_millis(300))
        );
        assert_eq!(c.heartbeat(), Duration::from_millis(50));
        assert_eq!(c.lease(), Duration::from_millis(120));
        assert_eq!(c.quorum(), 2);
    }

    #[test]
    fn bad_configs_are_refused() {
        let ms = Duration::from_millis;
        let base = || Config::builder(id("a"), [id("b"), id("c")]);
        for b in [
            Config::builder(id("a"), [id("a")]),
            base().election_timeout(ms(150), Duration::MAX),
            Config::builder(id("a"), [id("b"), id("b")]),
            base().election_timeout(ms(300), ms(300)),
            base().election_timeout(ms(0), ms(300)),
            base().heartbeat(ms(0)),
            base().heartbeat(ms(100)),
            base().lease_drift(ms(150)),
        ] {
            assert!(matches!(b.build(), Err(Error::InvalidInput { .. })));
        }
    }

    #[test]
    fn a_cluster_of_one_is_allowed() {
        let c = Config::builder(id("a"), []).build().unwrap();
        assert_eq!(c.quorum(), 1);
        assert!(c.peers().is_empty());
    }
}
