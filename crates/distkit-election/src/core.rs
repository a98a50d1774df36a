//! The sans-IO election core: a deterministic state machine with no clock, no I/O and no
//! randomness of its own.
//!
//! The caller passes the current time (any monotonic clock, as a [`Duration`] since an epoch
//! of its choosing) and a random number in `[0, 1)` with every input; the core returns what
//! to persist, what to send and whether leadership changed. The tokio runtime, the simulator
//! and the tests drive the same code.
//!
//! The core never panics on its inputs: a random number outside `[0, 1)` is clamped into it
//! (NaN counts as 0.5), deadlines computed from a clock near `Duration::MAX` saturate there
//! (a timer that never fires, not a panic), and a message whose term is above
//! [`Term::MAX`] is refused with [`Rejected::TermOutOfRange`].

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use distkit_core::{Leadership, NodeId, Role, Term};
use serde::{Deserialize, Serialize};

use crate::Config;

/// What must survive a restart: the current term and the vote cast in it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HardState {
    /// The latest term this node has seen.
    pub term: Term,
    /// The candidate this node voted for in `term`, if any.
    pub voted_for: Option<NodeId>,
}

/// A message between election peers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// "Would you vote for me in `term`?" (PreVote; changes no state).
    PreVote {
        /// The term the sender would campaign in.
        term: Term,
    },
    /// The answer to a [`Message::PreVote`].
    PreVoteReply {
        /// The proposed term when granted, else the replier's current term.
        term: Term,
        /// Whether the replier would vote.
        granted: bool,
    },
    /// "Vote for me in `term`."
    Vote {
        /// The candidate's term.
        term: Term,
        /// Set when the old leader handed over: voters ignore their leader stickiness.
        transfer: bool,
    },
    /// The answer to a [`Message::Vote`].
    VoteReply {
        /// The replier's current term.
        term: Term,
        /// Whether the vote was granted.
        granted: bool,
    },
    /// The leader's heartbeat.
    Heartbeat {
        /// The leader's term.
        term: Term,
        /// When the leader sent it, on the leader's clock (echoed back for leases).
        sent_at_us: u64,
    },
    /// The answer to a [`Message::Heartbeat`].
    HeartbeatReply {
        /// The replier's current term.
        term: Term,
        /// The heartbeat's `sent_at_us`, echoed.
        sent_at_us: u64,
    },
    /// The leader hands over: "start an election now".
    TimeoutNow {
        /// The leader's term.
        term: Term,
    },
}

/// What the caller must do after an input, in this order: persist, then send, then publish.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Output {
    /// Write this to stable storage before sending anything.
    pub persist: Option<HardState>,
    /// Messages to send, by destination.
    pub send: Vec<(NodeId, Message)>,
    /// The new leadership, when it changed.
    pub leadership: Option<Leadership>,
}

/// A message with its sender and addressee, as it travels between peers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The sender.
    pub from: NodeId,
    /// The addressee.
    pub to: NodeId,
    /// The message.
    pub msg: Message,
}

impl Message {
    /// The term the message carries.
    #[must_use]
    pub fn term(&self) -> Term {
        match self {
            Self::PreVote { term }
            | Self::PreVoteReply { term, .. }
            | Self::Vote { term, .. }
            | Self::VoteReply { term, .. }
            | Self::Heartbeat { term, .. }
            | Self::HeartbeatReply { term, .. }
            | Self::TimeoutNow { term } => *term,
        }
    }
}

/// Why an input was refused without any state change.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejected {
    /// The sender is not a member of this cluster.
    #[error("{0} is not a member of this election")]
    UnknownPeer(NodeId),
    /// The message was addressed to another node.
    #[error("the message is addressed to {0}, not to this node")]
    Misaddressed(NodeId),
    /// The message carries a term above [`Term::MAX`] (see the rule for extreme terms on
    /// [`Term`]): a protocol error, never adopted.
    #[error("term {0} is above the largest valid term")]
    TermOutOfRange(Term),
    /// A transfer target that is not a peer.
    #[error("{0} is not a peer to transfer leadership to")]
    NotAPeer(NodeId),
}

/// One node's election state machine.
#[derive(Clone, Debug)]
pub struct Election {
    cfg: Config,
    hs: HardState,
    role: Role,
    leader: Option<NodeId>,
    election_deadline: Duration,
    /// When this node last heard from a live leader (or started): it grants no votes within
    /// the minimum election timeout of that (Raft thesis 4.2.3).
    last_leader_contact: Duration,
    votes: HashSet<NodeId>,
    next_heartbeat: Duration,
    became_leader_at: Duration,
    /// Leader: per peer, (send time of the newest acknowledged heartbeat, when the ack came).
    acks: HashMap<NodeId, (Duration, Duration)>,
    published: Leadership,
}

impl Election {
    /// Starts (or restarts) a node from its persisted state. A restarted node treats the
    /// start as contact with a leader, so it grants no vote within the minimum election
    /// timeout (it may have acknowledged a leader's lease just before going down). A node
    /// without peers (a cluster of one) elects itself on its first [`tick`](Self::tick).
    ///
    /// A persisted term above [`Term::MAX`] (only a damaged or hand-edited store holds one)
    /// is read as [`Term::MAX`] with its vote kept: the node then never campaigns and votes
    /// at most once more, for the candidate it already voted for.
    #[must_use]
    pub fn new(cfg: Config, hs: HardState, now: Duration, random: f64) -> Self {
        let hs = if hs.term.is_valid() {
            hs
        } else {
            tracing::error!(
                term = hs.term.get(),
                "the stored term is above the largest valid term; using the largest"
            );
            HardState {
                term: Term::MAX,
                ..hs
            }
        };
        let mut e = Self {
            cfg,
            hs,
            role: Role::Follower,
            leader: None,
            election_deadline: now,
            last_leader_contact: now,
            votes: HashSet::new(),
            next_heartbeat: now,
            became_leader_at: now,
            acks: HashMap::new(),
            published: Leadership::initial(),
        };
        e.published = e.leadership();
        e.reset_election_timer(now, random);
        if e.cfg.peers.is_empty() {
            e.election_deadline = now;
        }
        e
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The persisted part of the state.
    #[must_use]
    pub fn hard_state(&self) -> &HardState {
        &self.hs
    }

    /// Who leads, in which term, and this node's role.
    #[must_use]
    pub fn leadership(&self) -> Leadership {
        Leadership {
            leader: self.leader.clone(),
            term: self.hs.term,
            role: self.role,
        }
    }

    /// When the caller should call [`tick`](Self::tick) next.
    #[must_use]
    pub fn next_deadline(&self) -> Duration {
        if self.role == Role::Leader {
            self.next_heartbeat
        } else {
            self.election_deadline
        }
    }

    /// Until when this node holds a leader lease, if it leads: a majority (itself included)
    /// acknowledged heartbeats sent at or after `expiry - lease`. Followers of this leader
    /// grant no vote to anyone else until then, so no other node can lead meanwhile.
    #[must_use]
    pub fn lease_expiry(&self) -> Option<Duration> {
        if self.role != Role::Leader {
            return None;
        }
        // The leader counts itself; it needs quorum - 1 peers.
        let need = self.cfg.quorum() - 1;
        let Some(index) = need.checked_sub(1) else {
            // A cluster of one: no other node can lead, ever.
            return Some(Duration::MAX);
        };
        let mut sent: Vec<Duration> = self.acks.values().map(|(s, _)| *s).collect();
        sent.sort_unstable_by(|a, b| b.cmp(a));
        let oldest_needed = *sent.get(index)?;
        Some(oldest_needed.saturating_add(self.cfg.lease()))
    }

    /// Whether this node leads and holds a lease at `now`.
    #[must_use]
    pub fn has_lease(&self, now: Duration) -> bool {
        self.lease_expiry().is_some_and(|e| now < e)
    }

    /// Advances timers: sends heartbeats, checks the quorum, starts elections.
    pub fn tick(&mut self, now: Duration, random: f64) -> Output {
        let mut out = Output::default();
        if self.role == Role::Leader {
            if self.cfg.check_quorum
                && now >= self.became_leader_at.saturating_add(self.cfg.timeout_min)
            {
                let since = now.saturating_sub(self.cfg.timeout_min);
                let heard = self
                    .acks
                    .values()
                    .filter(|(_, recv)| *recv >= since)
                    .count();
                if heard + 1 < self.cfg.quorum() {
                    tracing::info!(
                        term = self.hs.term.get(),
                        "no quorum heard within the election timeout; stepping down"
                    );
                    self.become_follower(now, random, None);
                    self.publish(&mut out);
                    return out;
                }
            }
            if now >= self.next_heartbeat {
                self.broadcast_heartbeat(now, &mut out);
            }
        } else if now >= self.election_deadline {
            if self.cfg.pre_vote {
                self.become_pre_candidate(now, random, &mut out);
            } else {
                self.become_candidate(now, random, false, &mut out);
            }
        }
        self.publish(&mut out);
        out
    }

    /// Handles an envelope as it came off the network: refuses one addressed to another
    /// node, then [`step`](Self::step)s its message.
    ///
    /// # Errors
    ///
    /// [`Rejected::Misaddressed`], and as for [`step`](Self::step); nothing changes then.
    pub fn receive(
        &mut self,
        now: Duration,
        envelope: Envelope,
        random: f64,
    ) -> Result<Output, Rejected> {
        if envelope.to != self.cfg.id {
            return Err(Rejected::Misaddressed(envelope.to));
        }
        self.step(now, &envelope.from, envelope.msg, random)
    }

    /// Handles a message from `from`.
    ///
    /// # Errors
    ///
    /// [`Rejected::UnknownPeer`] when `from` is not a member, [`Rejected::TermOutOfRange`]
    /// when the message's term is above [`Term::MAX`]; nothing changes then.
    pub fn step(
        &mut self,
        now: Duration,
        from: &NodeId,
        msg: Message,
        random: f64,
    ) -> Result<Output, Rejected> {
        if !self.cfg.peers.contains(from) {
            return Err(Rejected::UnknownPeer(from.clone()));
        }
        if !msg.term().is_valid() {
            return Err(Rejected::TermOutOfRange(msg.term()));
        }
        let mut out = Output::default();
        match msg {
            Message::Heartbeat { term, sent_at_us } => {
                if term >= self.hs.term {
                    if term > self.hs.term {
                        self.adopt_term(term, &mut out);
                    }
                    if self.role != Role::Follower || self.leader.as_ref() != Some(from) {
                        self.become_follower(now, random, Some(from.clone()));
                    }
                    self.last_leader_contact = now;
                    self.reset_election_timer(now, random);
                }
                out.send.push((
                    from.clone(),
                    Message::HeartbeatReply {
                        term: self.hs.term,
                        sent_at_us,
                    },
                ));
            }
            Message::HeartbeatReply { term, sent_at_us } => {
                if term > self.hs.term {
                    self.adopt_term(term, &mut out);
                    self.become_follower(now, random, None);
                } else if self.role == Role::Leader && term == self.hs.term {
                    let sent = Duration::from_micros(sent_at_us);
                    // The leader's own timestamp, so never later than now; keep the newest.
                    let entry = self.acks.entry(from.clone()).or_insert((sent, now));
                    entry.0 = entry.0.max(sent.min(now));
                    entry.1 = now;
                }
            }
            Message::PreVote { term } => {
                let granted = term > self.hs.term && !self.in_lease(now);
                let reply_term = if granted { term } else { self.hs.term };
                out.send.push((
                    from.clone(),
                    Message::PreVoteReply {
                        term: reply_term,
                        granted,
                    },
                ));
            }
            Message::PreVoteReply { term, granted } => {
                if granted {
                    if self.role == Role::PreCandidate && Some(term) == self.hs.term.checked_next()
                    {
                        self.votes.insert(from.clone());
                        if self.votes.len() >= self.cfg.quorum() {
                            self.become_candidate(now, random, false, &mut out);
                        }
                    }
                } else if term > self.hs.term {
                    self.adopt_term(term, &mut out);
                    self.become_follower(now, random, None);
                }
            }
            Message::Vote { term, transfer } => {
                if !transfer && self.in_lease(now) {
                    // A live leader exists as far as we know: neither update the term nor vote.
                    out.send.push((
                        from.clone(),
                        Message::VoteReply {
                            term: self.hs.term,
                            granted: false,
                        },
                    ));
                } else {
                    if term > self.hs.term {
                        self.adopt_term(term, &mut out);
                        self.become_follower(now, random, None);
                    }
                    let granted = term == self.hs.term
                        && self.hs.voted_for.as_ref().is_none_or(|v| v == from);
                    if granted && self.hs.voted_for.is_none() {
                        self.hs.voted_for = Some(from.clone());
                        out.persist = Some(self.hs.clone());
                    }
                    if granted {
                        self.reset_election_timer(now, random);
                    }
                    out.send.push((
                        from.clone(),
                        Message::VoteReply {
                            term: self.hs.term,
                            granted,
                        },
                    ));
                }
            }
            Message::VoteReply { term, granted } => {
                if term > self.hs.term {
                    self.adopt_term(term, &mut out);
                    self.become_follower(now, random, None);
                } else if granted && self.role == Role::Candidate && term == self.hs.term {
                    self.votes.insert(from.clone());
                    if self.votes.len() >= self.cfg.quorum() {
                        self.become_leader(now, &mut out);
                    }
                }
            }
            Message::TimeoutNow { term } => {
                if term > self.hs.term {
                    // Every higher term moves this node to it (Raft 5.1). Only a leader sends
                    // TimeoutNow, so the sender led that term: follow it, then take the
                    // hand-over as from the leader we follow (as etcd's raft does).
                    self.adopt_term(term, &mut out);
                    self.become_follower(now, random, Some(from.clone()));
                }
                // Only the leader we follow may hand over to us.
                if term == self.hs.term && self.leader.as_ref() == Some(from) {
                    self.become_candidate(now, random, true, &mut out);
                }
            }
        }
        self.publish(&mut out);
        Ok(out)
    }

    /// Gives up leadership: hands over to the peer that acknowledged most recently (if any),
    /// gives up the lease at once, and stays out of the next election. A follower's resign
    /// does nothing.
    pub fn resign(&mut self, now: Duration, random: f64) -> Output {
        let target = self
            .acks
            .iter()
            .max_by_key(|(id, (_, recv))| (*recv, std::cmp::Reverse((*id).clone())))
            .map(|(id, _)| id.clone());
        self.hand_over(now, random, target)
    }

    /// Hands leadership to `to`: sends it `TimeoutNow`, gives up the lease at once.
    ///
    /// # Errors
    ///
    /// [`Rejected::NotAPeer`] when `to` is not a peer.
    pub fn transfer(
        &mut self,
        now: Duration,
        to: &NodeId,
        random: f64,
    ) -> Result<Output, Rejected> {
        if !self.cfg.peers.contains(to) {
            return Err(Rejected::NotAPeer(to.clone()));
        }
        Ok(self.hand_over(now, random, Some(to.clone())))
    }

    fn hand_over(&mut self, now: Duration, random: f64, to: Option<NodeId>) -> Output {
        let mut out = Output::default();
        if self.role != Role::Leader {
            return out;
        }
        let term = self.hs.term;
        self.become_follower(now, random, None);
        // Stay out of the next election: the target (or the others) should win it.
        self.election_deadline = now
            .saturating_add(self.cfg.timeout_max)
            .saturating_add(self.cfg.timeout_min);
        if let Some(to) = to {
            out.send.push((to, Message::TimeoutNow { term }));
        }
        self.publish(&mut out);
        out
    }

    fn in_lease(&self, now: Duration) -> bool {
        self.role == Role::Leader
            || now
                < self
                    .last_leader_contact
                    .saturating_add(self.cfg.timeout_min)
    }

    fn adopt_term(&mut self, term: Term, out: &mut Output) {
        self.hs.term = term;
        self.hs.voted_for = None;
        out.persist = Some(self.hs.clone());
    }

    fn reset_election_timer(&mut self, now: Duration, random: f64) {
        let span = self.cfg.timeout_max - self.cfg.timeout_min;
        self.election_deadline = now
            .saturating_add(self.cfg.timeout_min)
            .saturating_add(span.mul_f64(unit(random)));
    }

    fn become_follower(&mut self, now: Duration, random: f64, leader: Option<NodeId>) {
        self.role = Role::Follower;
        self.leader = leader;
        self.votes.clear();
        self.acks.clear();
        self.reset_election_timer(now, random);
    }

    /// The term this node would campaign in, or `None` (logged) when the term space is
    /// exhausted: it then stays a follower rather than reuse a term it may have voted in.
    fn campaign_term(&mut self, now: Duration, random: f64) -> Option<Term> {
        let next = self.hs.term.checked_next();
        if next.is_none() {
            tracing::error!(
                term = self.hs.term.get(),
                "the term cannot be raised any further; this node will not campaign (a peer \
                 sent a term at the limit: reset the cluster's vote stores)"
            );
            self.become_follower(now, random, self.leader.clone());
        }
        next
    }

    fn become_pre_candidate(&mut self, now: Duration, random: f64, out: &mut Output) {
        let Some(term) = self.campaign_term(now, random) else {
            return;
        };
        self.role = Role::PreCandidate;
        self.leader = None;
        self.votes = HashSet::from([self.cfg.id.clone()]);
        self.reset_election_timer(now, random);
        for p in &self.cfg.peers {
            out.send.push((p.clone(), Message::PreVote { term }));
        }
        if self.votes.len() >= self.cfg.quorum() {
            // A cluster of one needs no one's word.
            self.become_candidate(now, random, false, out);
        }
    }

    fn become_candidate(&mut self, now: Duration, random: f64, transfer: bool, out: &mut Output) {
        let Some(term) = self.campaign_term(now, random) else {
            return;
        };
        self.hs.term = term;
        self.hs.voted_for = Some(self.cfg.id.clone());
        out.persist = Some(self.hs.clone());
        self.role = Role::Candidate;
        self.leader = None;
        self.votes = HashSet::from([self.cfg.id.clone()]);
        self.reset_election_timer(now, random);
        let term = self.hs.term;
        for p in &self.cfg.peers {
            out.send.push((p.clone(), Message::Vote { term, transfer }));
        }
        if self.votes.len() >= self.cfg.quorum() {
            self.become_leader(now, out);
        }
    }

    fn become_leader(&mut self, now: Duration, out: &mut Output) {
        tracing::info!(term = self.hs.term.get(), id = %self.cfg.id, "became leader");
        self.role = Role::Leader;
        self.leader = Some(self.cfg.id.clone());
        self.votes.clear();
        self.acks.clear();
        self.became_leader_at = now;
        self.broadcast_heartbeat(now, out);
    }

    fn broadcast_heartbeat(&mut self, now: Duration, out: &mut Output) {
        let sent_at_us = u64::try_from(now.as_micros()).unwrap_or(u64::MAX);
        for p in &self.cfg.peers {
            out.send.push((
                p.clone(),
                Message::Heartbeat {
                    term: self.hs.term,
                    sent_at_us,
                },
            ));
        }
        self.next_heartbeat = now.saturating_add(self.cfg.heartbeat);
    }

    fn publish(&mut self, out: &mut Output) {
        let now = self.leadership();
        if now != self.published {
            self.published = now.clone();
            out.leadership = Some(now);
        }
    }
}

/// A caller's random number as a fraction in `[0, 1)`: clamped, NaN as one half.
fn unit(random: f64) -> f64 {
    if random.is_nan() {
        0.5
    } else {
        random.clamp(0.0, 0.999_999)
    }
}
