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
//! * no node's term ever decreases.
//!
//! ```
//! use std::time::Duration;
//! use distkit_election::sim::{Sim, SimConfig};
//!
//! let mut sim = Sim::new(7, SimConfig::default());
//! sim.run_for(Duration::from_secs(2));
//! let leader = sim.leader().expect("a leader within two seconds");
//! sim.crash(leader);
//! sim.run_for(Duration::from_secs(1));
//! assert!(sim.leader().is_some_and(|l| l != leader));
//! assert!(sim.violations().is_empty(), "{:?}", sim.violations());
//! ```

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::time::Duration;

use distkit_core::{NodeId, Role, Term};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{Config, Election, MemoryVoteStore, Message, Output, VoteStore};

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
        }
    }
}

#[derive(Debug)]
enum Event {
    Deliver {
        from: usize,
        to: usize,
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
}

impl Sim {
    /// A cluster of `cfg.nodes` started at time zero from empty vote stores.
    #[must_use]
    pub fn new(seed: u64, cfg: SimConfig) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let ids: Vec<NodeId> = (0..cfg.nodes)
            .map(|i| NodeId::new(format!("n{i}")).unwrap_or_else(|_| unreachable!("valid id")))
            .collect();
        let nodes = ids
            .iter()
            .map(|id| {
                let peers = ids.iter().filter(|p| *p != id).cloned();
                let mut b = Config::builder(id.clone(), peers)
                    .election_timeout(cfg.timeout.0, cfg.timeout.1)
                    .heartbeat(cfg.heartbeat)
                    .pre_vote(cfg.pre_vote);
                if let Some(d) = cfg.lease_drift {
                    b = b.lease_drift(d);
                }
                let c = b
                    .build()
                    .unwrap_or_else(|e| panic!("simulation config: {e}"));
                SimNode {
                    id: id.clone(),
                    cfg: c,
                    core: None,
                    store: MemoryVoteStore::new(),
                    rate: 1.0 + rng.random_range(-cfg.drift..=cfg.drift),
                    offset: Duration::from_millis(rng.random_range(0..1_000_000)),
                    timer_version: 0,
                    last_term: Term::ZERO,
                }
            })
            .collect();
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
        };
        for i in 0..sim.nodes.len() {
            sim.restart(i);
        }
        sim
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

    /// Sets the message loss probability.
    pub fn set_loss(&mut self, p: f64) {
        self.cfg.loss = p.clamp(0.0, 1.0);
    }

    /// The random generator (for fault schedules that must replay with the seed).
    pub fn rng(&mut self) -> &mut StdRng {
        &mut self.rng
    }

    /// Crashes node `i`: it loses everything but its vote store.
    pub fn crash(&mut self, i: usize) {
        self.nodes[i].core = None;
        self.nodes[i].timer_version += 1;
    }

    /// (Re)starts node `i` from its vote store.
    pub fn restart(&mut self, i: usize) {
        let hs = self.nodes[i].store.load().unwrap_or_default();
        let local = self.local(i);
        let r = self.rng.random::<f64>();
        self.nodes[i].core = Some(Election::new(self.nodes[i].cfg.clone(), hs, local, r));
        self.schedule_timer(i);
    }

    /// Whether node `i` is up.
    #[must_use]
    pub fn is_up(&self, i: usize) -> bool {
        self.nodes[i].core.is_some()
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

    /// Node `i`'s core, when up.
    #[must_use]
    pub fn node(&self, i: usize) -> Option<&Election> {
        self.nodes[i].core.as_ref()
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
        self.run_until(self.now + d);
    }

    /// Runs until `done` holds (checked after every event) or `limit` passes; returns the
    /// time it first held.
    pub fn run_until_cond(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&Sim) -> bool,
    ) -> Option<Duration> {
        let until = self.now + limit;
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
            Event::Deliver { from, to, msg } => {
                if self.is_up(to) {
                    let local = self.local(to);
                    let r = self.rng.random::<f64>();
                    let from_id = self.nodes[from].id.clone();
                    let out = self.nodes[to]
                        .core
                        .as_mut()
                        .map(|c| c.step(local, &from_id, msg, r));
                    if let Some(Ok(out)) = out {
                        self.apply(to, out);
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
                        from: i,
                        to: j,
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
    let mut sim = Sim::new(seed, cfg);
    for _ in 0..12 {
        let span = Duration::from_millis(sim.rng().random_range(50..400));
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
    sim.run_for(max_timeout * 2 + max_delay);
    let mut v = sim.violations().to_vec();
    let leaders = sim.leaders();
    if leaders.len() != 1 {
        v.push(format!(
            "seed {seed}: {} leaders {:?} at {:?}, {:?} after the network healed",
            leaders.len(),
            leaders,
            sim.now(),
            max_timeout * 2 + max_delay
        ));
    }
    v
}
