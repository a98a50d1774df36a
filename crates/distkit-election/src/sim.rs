//! A deterministic simulator for the election core: virtual time, a lossy, delaying,
//! duplicating and reordering network, partitions (symmetric and one-way), crashes and
//! restarts that keep the vote store, and node clocks that run up to ±10% fast or slow.
//!
//! Everything random comes from one seeded generator, so a run is replayed exactly from its
//! seed. After every event the simulator checks the safety properties and records any
//! violation:
//!
//! * at most one leader per term;
//! * no node votes twice in one term (even across restarts);
//! * no two nodes hold a valid leader lease at the same instant;
//! * no node's term ever decreases, and none goes above [`Term::MAX`].
//!
//! With [`SimConfig::hostile`] the cluster gains a hostile member, `h`: it runs no election
//! of its own, but sends messages a correct node could send in some state (pre-votes, votes
//! without a transfer, refusals and heartbeat replies) with terms anywhere from 0 to
//! `u64::MAX`, replays real messages late and twice, delivers them to nodes they were not
//! addressed to, and speaks for strangers. It never claims a leadership or a vote it does not
//! have (it is byzantine-free), so every safety property must hold.
//!
//! ```
//! use std::time::Duration;
//! use distkit_election::sim::{Sim, SimConfig};
//!
//! let mut sim = Sim::new(7, SimConfig::default())?;
//! sim.run_for(Duration::from_secs(2));
//! let leader = sim.leader().expect("a leader within two seconds");
//! sim.crash(leader);
//! sim.run_for(Duration::from_secs(1));
//! assert!(sim.leader().is_some_and(|l| l != leader));
//! assert!(sim.violations().is_empty(), "{:?}", sim.violations());
//! # Ok::<(), distkit_core::Error>(())
//! ```

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::time::Duration;

use distkit_core::{Error, NodeId, Role, Term};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{Config, Election, Envelope, MemoryVoteStore, Message, Output, VoteStore};

/// Simulation settings.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Cluster size.
    pub nodes: usize,
    /// Probability that a message is lost.
    pub loss: f64,
    /// Probability that a delivered message is delivered twice.
    pub duplicate: f64,
    /// One-way delay range; uniform, so messages also reorder.
    pub delay: (Duration, Duration),
    /// Each node's clock runs at a rate in `[1 - drift, 1 + drift]`.
    pub drift: f64,
    /// Election timeout range.
    pub timeout: (Duration, Duration),
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// PreVote on or off.
    pub pre_vote: bool,
    /// The lease drift bound; `None` for the default (a fifth of the minimum timeout).
    pub lease_drift: Option<Duration>,
    /// Add the hostile member `h` (see the module docs); [`chaos_run_with`] then lets it act.
    pub hostile: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            nodes: 5,
            loss: 0.0,
            duplicate: 0.0,
            delay: (Duration::from_micros(100), Duration::from_micros(1000)),
            drift: 0.0,
            timeout: (Duration::from_millis(150), Duration::from_millis(300)),
            heartbeat: Duration::from_millis(50),
            pre_vote: true,
            lease_drift: None,
            hostile: false,
        }
    }
}

impl SimConfig {
    fn validate(&self) -> Result<(), Error> {
        let bad = |reason: String| Err(Error::invalid_input("simulation config", reason));
        if !(1..=1000).contains(&self.nodes) {
            return bad(format!("nodes must be from 1 to 1,000, got {}", self.nodes));
        }
        let hour = Duration::from_secs(3600);
        if self.delay.0 > self.delay.1 || self.delay.1 > hour {
            return bad(format!(
                "the delay range must satisfy min <= max <= 1 h, got {:?}..{:?}",
                self.delay.0, self.delay.1
            ));
        }
        if !(0.0..=0.5).contains(&self.drift) {
            return bad(format!("drift must be in [0, 0.5], got {}", self.drift));
        }
        for (what, p) in [("loss", self.loss), ("duplicate", self.duplicate)] {
            if !(0.0..=1.0).contains(&p) {
                return bad(format!("{what} must be a probability in [0, 1], got {p}"));
            }
        }
        Ok(())
    }
}

/// The id of the hostile member.
pub const HOSTILE_ID: &str = "h";

/// How many real messages the hostile member remembers for replays.
const REPLAY_MEMORY: usize = 64;

#[derive(Debug)]
enum Event {
    Deliver {
        from: NodeId,
        to: usize,
        /// The addressee written on the envelope (another node's id for a misdelivery).
        addressed: NodeId,
        msg: Message,
    },
    Timer {
        node: usize,
        version: u64,
    },
}

#[derive(Debug)]
struct SimNode {
    id: NodeId,
    cfg: Config,
    core: Option<Election>,
    store: MemoryVoteStore,
    rate: f64,
    offset: Duration,
    timer_version: u64,
    last_term: Term,
}

/// The simulator. See the module docs.
#[derive(Debug)]
pub struct Sim {
    cfg: SimConfig,
    rng: StdRng,
    now: Duration,
    nodes: Vec<SimNode>,
    queue: BinaryHeap<Reverse<(Duration, u64)>>,
    events: HashMap<u64, Event>,
    seq: u64,
    cut: HashSet<(usize, usize)>,
    leaders_by_term: HashMap<Term, usize>,
    votes: HashMap<(usize, Term), NodeId>,
    violations: Vec<String>,
    index: HashMap<NodeId, usize>,
    /// Real messages lately sent, for the hostile member's replays: (from, to, message).
    recent: Vec<(NodeId, usize, Message)>,
    /// Inputs the cores refused (strangers, misaddressed, terms out of range).
    refused: u64,
}

impl Sim {
    /// A cluster of `cfg.nodes` started at time zero from empty vote stores.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a configuration no run could use: no nodes (or more than
    /// 1,000), a delay range with `min > max` or over an hour, a drift outside `[0, 0.5]`,
    /// a loss or duplication probability outside `[0, 1]`, or election settings the
    /// [`Config`] builder refuses.
    pub fn new(seed: u64, cfg: SimConfig) -> Result<Self, Error> {
        cfg.validate()?;
        let mut rng = StdRng::seed_from_u64(seed);
        let ids: Vec<NodeId> = (0..cfg.nodes)
            .map(|i| NodeId::new(format!("n{i}")).unwrap_or_else(|_| unreachable!("valid id")))
            .collect();
        let hostile = cfg
            .hostile
            .then(|| NodeId::new(HOSTILE_ID).unwrap_or_else(|_| unreachable!("valid id")));
        let nodes = ids
            .iter()
            .map(|id| {
                let peers = ids
                    .iter()
                    .filter(|p| *p != id)
                    .chain(hostile.iter())
                    .cloned();
                let mut b = Config::builder(id.clone(), peers)
                    .election_timeout(cfg.timeout.0, cfg.timeout.1)
                    .heartbeat(cfg.heartbeat)
                    .pre_vote(cfg.pre_vote);
                if let Some(d) = cfg.lease_drift {
                    b = b.lease_drift(d);
                }
                let c = b.build()?;
                Ok(SimNode {
                    id: id.clone(),
                    cfg: c,
                    core: None,
                    store: MemoryVoteStore::new(),
                    rate: 1.0 + rng.random_range(-cfg.drift..=cfg.drift),
                    offset: Duration::from_millis(rng.random_range(0..1_000_000)),
                    timer_version: 0,
                    last_term: Term::ZERO,
                })
            })
            .collect::<Result<_, Error>>()?;
        let index = ids
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, id)| (id, i))
            .collect();
        let mut sim = Self {
            cfg,
            rng,
            now: Duration::ZERO,
            nodes,
            queue: BinaryHeap::new(),
            events: HashMap::new(),
            seq: 0,
            cut: HashSet::new(),
            leaders_by_term: HashMap::new(),
            votes: HashMap::new(),
            violations: Vec::new(),
            index,
            recent: Vec::new(),
            refused: 0,
        };
        for i in 0..sim.nodes.len() {
            sim.restart(i);
        }
        Ok(sim)
    }

    /// The simulated (global) time.
    #[must_use]
    pub fn now(&self) -> Duration {
        self.now
    }

    /// Safety violations seen so far.
    #[must_use]
    pub fn violations(&self) -> &[String] {
        &self.violations
    }

    /// How many inputs the cores refused so far (strangers, misaddressed envelopes, terms
    /// above [`Term::MAX`]).
    #[must_use]
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// Delivers `msg` to node `to` after `delay`, as sent by `from` (any id: a member, the
    /// hostile member, a stranger) and addressed to `addressed` (another id than node `to`'s
    /// makes a misdelivery, which the node must refuse).
    pub fn inject(
        &mut self,
        from: NodeId,
        to: usize,
        addressed: NodeId,
        msg: Message,
        delay: Duration,
    ) {
        if to >= self.nodes.len() {
            return;
        }
        self.push(
            self.now.saturating_add(delay),
            Event::Deliver {
                from,
                to,
                addressed,
                msg,
            },
        );
    }

    /// One act of the hostile member (see the module docs), at a random point within
    /// `within` from now. Needs [`SimConfig::hostile`]; does nothing otherwise.
    pub fn hostile_act(&mut self, within: Duration) {
        if !self.cfg.hostile || self.nodes.is_empty() {
            return;
        }
        let h = NodeId::new(HOSTILE_ID).unwrap_or_else(|_| unreachable!("valid id"));
        let n = self.nodes.len();
        let delay = within.mul_f64(self.rng.random::<f64>());
        let to = self.rng.random_range(0..n);
        let addressee = self.nodes[to].id.clone();
        match self.rng.random_range(0..10) {
            0..=4 => {
                let term = self.hostile_term();
                let msg = match self.rng.random_range(0..5) {
                    0 => Message::PreVote { term },
                    1 => Message::Vote {
                        term,
                        transfer: false,
                    },
                    2 => Message::PreVoteReply {
                        term,
                        granted: false,
                    },
                    3 => Message::VoteReply {
                        term,
                        granted: false,
                    },
                    _ => Message::HeartbeatReply {
                        term,
                        sent_at_us: self.rng.random(),
                    },
                };
                self.inject(h, to, addressee, msg, delay);
            }
            5..=6 => {
                // A real message again, late (and so perhaps twice).
                if !self.recent.is_empty() {
                    let k = self.rng.random_range(0..self.recent.len());
                    let (from, j, msg) = self.recent[k].clone();
                    let addressed = self.nodes[j].id.clone();
                    self.inject(from, j, addressed, msg, delay);
                }
            }
            7..=8 => {
                // A real message delivered to a node it was not addressed to.
                if !self.recent.is_empty() {
                    let k = self.rng.random_range(0..self.recent.len());
                    let (from, j, msg) = self.recent[k].clone();
                    let addressed = self.nodes[j].id.clone();
                    self.inject(from, to, addressed, msg, delay);
                }
            }
            _ => {
                // A stranger.
                let stranger = NodeId::new("stranger").unwrap_or_else(|_| unreachable!("valid id"));
                let term = self.hostile_term();
                self.inject(stranger, to, addressee, Message::TimeoutNow { term }, delay);
            }
        }
    }

    /// A term near the cluster's, or at the numeric extremes (the accepted ones rarely, so
    /// most runs keep a term space to elect in).
    fn hostile_term(&mut self) -> Term {
        let top = self.max_term().get();
        match self.rng.random_range(0..100) {
            0..=9 => Term::new(u64::MAX),
            10..=19 => Term::new(Term::MAX.get().saturating_add(1)),
            20..=21 => Term::new(Term::MAX.get() - 1),
            22..=23 => Term::MAX,
            24..=29 => Term::ZERO,
            30..=49 => Term::new(top.saturating_sub(self.rng.random_range(0..3))),
            50..=89 => Term::new(top.saturating_add(self.rng.random_range(1..3))),
            _ => Term::new(top.saturating_add(self.rng.random_range(3..1_000_000))),
        }
    }

    /// Sets the message loss probability.
    pub fn set_loss(&mut self, p: f64) {
        self.cfg.loss = p.clamp(0.0, 1.0);
    }

    /// The random generator (for fault schedules that must replay with the seed).
    pub fn rng(&mut self) -> &mut StdRng {
        &mut self.rng
    }

    /// Crashes node `i`: it loses everything but its vote store. No such node: nothing.
    pub fn crash(&mut self, i: usize) {
        if let Some(n) = self.nodes.get_mut(i) {
            n.core = None;
            n.timer_version += 1;
        }
    }

    /// (Re)starts node `i` from its vote store. No such node: nothing.
    pub fn restart(&mut self, i: usize) {
        if i >= self.nodes.len() {
            return;
        }
        let hs = self.nodes[i].store.load().unwrap_or_default();
        let local = self.local(i);
        let r = self.rng.random::<f64>();
        self.nodes[i].core = Some(Election::new(self.nodes[i].cfg.clone(), hs, local, r));
        self.schedule_timer(i);
    }

    /// Whether node `i` is up (false for a node that does not exist).
    #[must_use]
    pub fn is_up(&self, i: usize) -> bool {
        self.nodes.get(i).is_some_and(|n| n.core.is_some())
    }

    /// Cuts both directions between `i` and every other node.
    pub fn isolate(&mut self, i: usize) {
        for j in 0..self.nodes.len() {
            if j != i {
                self.cut.insert((i, j));
                self.cut.insert((j, i));
            }
        }
    }

    /// Splits the cluster: nodes in `side` can talk only among themselves.
    pub fn partition(&mut self, side: &[usize]) {
        for i in 0..self.nodes.len() {
            for j in 0..self.nodes.len() {
                if side.contains(&i) != side.contains(&j) {
                    self.cut.insert((i, j));
                }
            }
        }
    }

    /// Drops messages from `from` to `to` (one way).
    pub fn cut_link(&mut self, from: usize, to: usize) {
        self.cut.insert((from, to));
    }

    /// Removes every cut.
    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Node `i`'s core, when it exists and is up.
    #[must_use]
    pub fn node(&self, i: usize) -> Option<&Election> {
        self.nodes.get(i)?.core.as_ref()
    }

    /// Up nodes that consider themselves leader.
    #[must_use]
    pub fn leaders(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| {
                self.node(i)
                    .is_some_and(|c| c.leadership().role == Role::Leader)
            })
            .collect()
    }

    /// The leader of the highest term among up nodes, if exactly one node leads that term.
    #[must_use]
    pub fn leader(&self) -> Option<usize> {
        let leaders = self.leaders();
        let top = leaders
            .iter()
            .max_by_key(|&&i| self.node(i).map(|c| c.hard_state().term))?;
        Some(*top)
    }

    /// The highest term any node (up or down) has persisted.
    #[must_use]
    pub fn max_term(&self) -> Term {
        self.nodes
            .iter()
            .map(|n| n.store.load().unwrap_or_default().term)
            .max()
            .unwrap_or_default()
    }

    /// Runs until global time `until`.
    pub fn run_until(&mut self, until: Duration) {
        while self.step_one(until) {}
        self.now = self.now.max(until);
    }

    /// Runs for `d` of global time.
    pub fn run_for(&mut self, d: Duration) {
        self.run_until(self.now.saturating_add(d));
    }

    /// Runs until `done` holds (checked after every event) or `limit` passes; returns the
    /// time it first held.
    pub fn run_until_cond(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&Sim) -> bool,
    ) -> Option<Duration> {
        let until = self.now.saturating_add(limit);
        while self.step_one(until) {
            if done(self) {
                return Some(self.now);
            }
        }
        self.now = self.now.max(until);
        None
    }

    /// Processes the next event if it is due by `until`; false when none is.
    fn step_one(&mut self, until: Duration) -> bool {
        let Some(&Reverse((at, seq))) = self.queue.peek() else {
            return false;
        };
        if at > until {
            return false;
        }
        self.queue.pop();
        self.now = at;
        let Some(ev) = self.events.remove(&seq) else {
            return true;
        };
        match ev {
            Event::Timer { node, version } => {
                if version == self.nodes[node].timer_version && self.is_up(node) {
                    let local = self.local(node);
                    let r = self.rng.random::<f64>();
                    let out = self.nodes[node].core.as_mut().map(|c| c.tick(local, r));
                    if let Some(out) = out {
                        self.apply(node, out);
                    }
                    self.schedule_timer(node);
                }
            }
            Event::Deliver {
                from,
                to,
                addressed,
                msg,
            } => {
                if self.is_up(to) {
                    let local = self.local(to);
                    let r = self.rng.random::<f64>();
                    let envelope = Envelope {
                        from,
                        to: addressed,
                        msg,
                    };
                    let out = self.nodes[to]
                        .core
                        .as_mut()
                        .map(|c| c.receive(local, envelope, r));
                    match out {
                        Some(Ok(out)) => self.apply(to, out),
                        Some(Err(_)) => self.refused += 1,
                        None => {}
                    }
                    self.schedule_timer(to);
                }
            }
        }
        self.check();
        true
    }

    fn local(&self, i: usize) -> Duration {
        self.nodes[i].offset + self.now.mul_f64(self.nodes[i].rate)
    }

    fn schedule_timer(&mut self, i: usize) {
        let Some(core) = &self.nodes[i].core else {
            return;
        };
        let deadline = core.next_deadline();
        let n = &self.nodes[i];
        let local_delta = deadline.saturating_sub(n.offset + self.now.mul_f64(n.rate));
        let at = self.now + local_delta.div_f64(n.rate);
        self.nodes[i].timer_version += 1;
        let version = self.nodes[i].timer_version;
        self.push(at, Event::Timer { node: i, version });
    }

    fn push(&mut self, at: Duration, ev: Event) {
        self.seq += 1;
        self.events.insert(self.seq, ev);
        self.queue.push(Reverse((at, self.seq)));
    }

    fn apply(&mut self, i: usize, out: Output) {
        if let Some(hs) = out.persist {
            if let Some(v) = &hs.voted_for {
                match self.votes.get(&(i, hs.term)) {
                    Some(prev) if prev != v => self.violations.push(format!(
                        "t={:?}: {} voted for {prev} and then {v} in term {}",
                        self.now, self.nodes[i].id, hs.term
                    )),
                    _ => {
                        self.votes.insert((i, hs.term), v.clone());
                    }
                }
            }
            let _ = self.nodes[i].store.save(&hs);
        }
        for (to, msg) in out.send {
            let Some(&j) = self.index.get(&to) else {
                continue;
            };
            if self.cfg.hostile {
                if self.recent.len() >= REPLAY_MEMORY {
                    let k = self.rng.random_range(0..self.recent.len());
                    self.recent.swap_remove(k);
                }
                self.recent.push((self.nodes[i].id.clone(), j, msg.clone()));
            }
            if self.cut.contains(&(i, j)) || self.rng.random::<f64>() < self.cfg.loss {
                continue;
            }
            let copies = if self.rng.random::<f64>() < self.cfg.duplicate {
                2
            } else {
                1
            };
            for _ in 0..copies {
                let (lo, hi) = self.cfg.delay;
                let delay = lo + (hi - lo).mul_f64(self.rng.random::<f64>());
                self.push(
                    self.now + delay,
                    Event::Deliver {
                        from: self.nodes[i].id.clone(),
                        to: j,
                        addressed: to.clone(),
                        msg: msg.clone(),
                    },
                );
            }
        }
    }

    fn check(&mut self) {
        let mut leased = Vec::new();
        for i in 0..self.nodes.len() {
            let local = self.local(i);
            let Some((term, leads, leased_now)) = self.nodes[i].core.as_ref().map(|c| {
                (
                    c.hard_state().term,
                    c.leadership().role == Role::Leader,
                    c.has_lease(local),
                )
            }) else {
                continue;
            };
            if !term.is_valid() {
                self.violations.push(format!(
                    "t={:?}: {} went to term {term}, above the largest valid term",
                    self.now, self.nodes[i].id
                ));
            }
            if term < self.nodes[i].last_term {
                self.violations.push(format!(
                    "t={:?}: {} went back from term {} to {term}",
                    self.now, self.nodes[i].id, self.nodes[i].last_term
                ));
            }
            self.nodes[i].last_term = term;
            if leads {
                match self.leaders_by_term.get(&term) {
                    Some(&other) if other != i => self.violations.push(format!(
                        "t={:?}: {} and {} both led term {term}",
                        self.now, self.nodes[other].id, self.nodes[i].id
                    )),
                    _ => {
                        self.leaders_by_term.insert(term, i);
                    }
                }
            }
            if leased_now {
                leased.push(i);
            }
        }
        if leased.len() > 1 {
            let names: Vec<String> = leased
                .iter()
                .map(|&i| self.nodes[i].id.to_string())
                .collect();
            self.violations.push(format!(
                "t={:?}: {} hold leader leases at once",
                self.now,
                names.join(" and ")
            ));
        }
    }
}

/// One randomized run for seed `seed`: a few seconds of crashes, restarts, partitions
/// (symmetric and one-way), loss, duplication, delay and clock drift; then the network heals
/// and exactly one leader must exist within `2 x max timeout + max delay`. Returns the
/// violations (empty when the run is clean).
#[must_use]
pub fn chaos_run(seed: u64) -> Vec<String> {
    chaos_run_with(seed, chaos_config())
}

/// [`chaos_run`] with the hostile member acting throughout the faults (see the module docs).
/// Safety must hold; after healing one leader must emerge within six maximum timeouts (the
/// hostile member counts toward the quorum but never votes, so split votes take longer to
/// resolve) unless a hostile term left the term space exhausted (a node at [`Term::MAX`] cannot campaign: by the rule for extreme
/// terms it stays a follower rather than vote twice).
#[must_use]
pub fn hostile_chaos_run(seed: u64) -> Vec<String> {
    chaos_run_with(
        seed,
        SimConfig {
            hostile: true,
            ..chaos_config()
        },
    )
}

/// The fault settings of [`chaos_run`]: 5% loss, 5% duplication, 0.2-20 ms delays, clocks
/// within ±10%.
#[must_use]
pub fn chaos_config() -> SimConfig {
    SimConfig {
        loss: 0.05,
        duplicate: 0.05,
        delay: (Duration::from_micros(200), Duration::from_millis(20)),
        drift: 0.1,
        ..SimConfig::default()
    }
}

/// [`chaos_run`] with other settings.
#[must_use]
pub fn chaos_run_with(seed: u64, cfg: SimConfig) -> Vec<String> {
    let (max_timeout, max_delay) = (cfg.timeout.1, cfg.delay.1);
    let n = cfg.nodes;
    let hostile = cfg.hostile;
    let mut sim = match Sim::new(seed, cfg) {
        Ok(sim) => sim,
        Err(e) => return vec![format!("seed {seed}: {e}")],
    };
    for _ in 0..12 {
        let span = Duration::from_millis(sim.rng().random_range(50..400));
        if hostile {
            let acts = sim.rng().random_range(0..30);
            for _ in 0..acts {
                sim.hostile_act(span);
            }
        }
        sim.run_for(span);
        match sim.rng().random_range(0..7) {
            0 => {
                let i = sim.rng().random_range(0..n);
                sim.crash(i);
            }
            1 => {
                let i = sim.rng().random_range(0..n);
                if !sim.is_up(i) {
                    sim.restart(i);
                }
            }
            2 => {
                let size = sim.rng().random_range(1..n);
                let mut side: Vec<usize> = (0..n).collect();
                for k in (1..side.len()).rev() {
                    let j = sim.rng().random_range(0..=k);
                    side.swap(k, j);
                }
                side.truncate(size);
                sim.partition(&side);
            }
            3 => {
                let (a, b) = (sim.rng().random_range(0..n), sim.rng().random_range(0..n));
                if a != b {
                    sim.cut_link(a, b);
                }
            }
            4 => {
                let p = sim.rng().random_range(0.0..0.3);
                sim.set_loss(p);
            }
            5 => {
                if let Some(l) = sim.leader() {
                    sim.isolate(l);
                }
            }
            _ => sim.heal(),
        }
    }
    // Heal everything; a leader must emerge in time.
    sim.heal();
    sim.set_loss(0.0);
    for i in 0..n {
        if !sim.is_up(i) {
            sim.restart(i);
        }
    }
    // The hostile member counts toward the quorum but never votes: four of the five honest
    // votes are needed, split votes are likelier and may take a few more rounds.
    let window = if hostile {
        max_timeout * 6 + max_delay
    } else {
        max_timeout * 2 + max_delay
    };
    sim.run_for(window);
    let mut v = sim.violations().to_vec();
    let leaders = sim.leaders();
    // A term at the top leaves no term to campaign in: no leader is expected then.
    let exhausted = sim.max_term().checked_next().is_none();
    if leaders.len() != 1 && !exhausted {
        let states: Vec<String> = (0..n)
            .filter_map(|i| sim.node(i))
            .map(|c| {
                let l = c.leadership();
                format!(
                    "{}: {} of term {} (leader {:?}, voted {:?})",
                    c.config().id(),
                    l.role,
                    l.term,
                    l.leader.as_ref().map(NodeId::as_str),
                    c.hard_state().voted_for.as_ref().map(NodeId::as_str)
                )
            })
            .collect();
        v.push(format!(
            "seed {seed}: {} leaders {:?} at {:?}, {:?} after the network healed; {}",
            leaders.len(),
            leaders,
            sim.now(),
            window,
            states.join("; ")
        ));
    }
    v
}
