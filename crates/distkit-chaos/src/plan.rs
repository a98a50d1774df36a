//! The run's plan and the nemesis schedule it implies: a pure function of the seed, the
//! duration, the fault kinds and the node count, so `--replay` gets the same schedule.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// What a run does.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Plan {
    /// Seeds the schedule and the clients' choices.
    pub seed: u64,
    /// How long the nemesis runs, in seconds (the run adds a warm-up and a healed tail).
    pub time_s: u64,
    /// Fault kinds: `kill`, `pause`, `partition`, `redis`, `token`.
    pub faults: Vec<String>,
    /// Nodes in the cluster.
    pub nodes: usize,
    /// Whether the nodes run in network namespaces (partitions need them).
    pub netns: bool,
}

/// Every fault kind the nemesis knows.
pub const FAULTS: [&str; 5] = ["kill", "pause", "partition", "redis", "token"];

/// One fault.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Fault {
    /// SIGKILL a node; heal restarts it with its data directory.
    Kill(usize),
    /// SIGSTOP a node; heal sends SIGCONT.
    Pause(usize),
    /// Cut one node off from everyone, clients and Redis included.
    Isolate(usize),
    /// Split the nodes in two sides that cannot reach each other; clients and Redis see both.
    Split(Vec<usize>, Vec<usize>),
    /// The first and last node cannot reach each other; the one between sees both.
    Bridge(usize, usize, usize),
    /// SIGKILL Redis and start it again, empty (it keeps no data on disk), 300 ms later, as a
    /// supervisor would: the locks it held are gone while their holders still work.
    Redis,
    /// Restart a node with the wrong cluster token; heal restarts it with the right one.
    Token(usize),
}

impl Fault {
    /// The kind, as `--faults` names it.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Kill(_) => "kill",
            Self::Pause(_) => "pause",
            Self::Isolate(_) | Self::Split(..) | Self::Bridge(..) => "partition",
            Self::Redis => "redis",
            Self::Token(_) => "token",
        }
    }

    /// When the fault heals before its hold is over (a restart right after a crash).
    #[must_use]
    pub fn heals_after_ms(&self) -> Option<u64> {
        match self {
            Self::Redis => Some(300),
            _ => None,
        }
    }

    /// A short description, e.g. `kill node-1`.
    #[must_use]
    pub fn describe(&self) -> String {
        let n = |i: &usize| format!("node-{i}");
        let side = |s: &[usize]| s.iter().map(n).collect::<Vec<_>>().join(", ");
        match self {
            Self::Kill(i) => format!("kill {}", n(i)),
            Self::Pause(i) => format!("pause {}", n(i)),
            Self::Isolate(i) => format!("isolate {}", n(i)),
            Self::Split(a, b) => format!("split [{}] | [{}]", side(a), side(b)),
            Self::Bridge(a, b, c) => format!("bridge {} - {} - {}", n(a), n(b), n(c)),
            Self::Redis => "kill and restart redis".into(),
            Self::Token(i) => format!("wrong token on {}", n(i)),
        }
    }
}

/// One step of the schedule: after waiting `after_ms` (from the previous step's heal), apply
/// `fault` for `hold_ms`, then heal it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// Quiet time before the fault.
    pub after_ms: u64,
    /// The fault.
    pub fault: Fault,
    /// How long it lasts.
    pub hold_ms: u64,
}

impl Plan {
    /// The nemesis schedule: faults of the enabled kinds, 1.5 to 4 s each, 1 to 3 s apart,
    /// filling `time_s`.
    #[must_use]
    pub fn schedule(&self) -> Vec<Step> {
        let mut rng = StdRng::seed_from_u64(self.seed);
        let kinds: Vec<&str> = FAULTS
            .iter()
            .copied()
            .filter(|k| self.faults.iter().any(|f| f == k))
            .filter(|k| *k != "partition" || (self.netns && self.nodes >= 2))
            .collect();
        let mut steps = Vec::new();
        if kinds.is_empty() || self.nodes == 0 {
            return steps;
        }
        let budget = self.time_s.saturating_mul(1000);
        let mut used = 0u64;
        loop {
            let after_ms = rng.random_range(1000..3000);
            let hold_ms = rng.random_range(1500..4000);
            if used + after_ms + hold_ms > budget {
                break;
            }
            used += after_ms + hold_ms;
            let node = rng.random_range(0..self.nodes);
            let fault = match kinds[rng.random_range(0..kinds.len())] {
                "kill" => Fault::Kill(node),
                "pause" => Fault::Pause(node),
                "redis" => Fault::Redis,
                "token" => Fault::Token(node),
                _ => match rng.random_range(0..3) {
                    0 => Fault::Isolate(node),
                    1 if self.nodes >= 3 => {
                        let mut order: Vec<usize> = (0..self.nodes).collect();
                        for i in (1..order.len()).rev() {
                            order.swap(i, rng.random_range(0..=i));
                        }
                        Fault::Bridge(order[0], order[1], order[2])
                    }
                    _ => {
                        let minority = self.nodes.saturating_sub(1) / 2;
                        let mut order: Vec<usize> = (0..self.nodes).collect();
                        for i in (1..order.len()).rev() {
                            order.swap(i, rng.random_range(0..=i));
                        }
                        let (a, b) = order.split_at(minority.max(1));
                        let (mut a, mut b) = (a.to_vec(), b.to_vec());
                        a.sort_unstable();
                        b.sort_unstable();
                        Fault::Split(a, b)
                    }
                },
            };
            steps.push(Step {
                after_ms,
                fault,
                hold_ms,
            });
        }
        steps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(seed: u64, faults: &[&str], netns: bool) -> Plan {
        Plan {
            seed,
            time_s: 60,
            faults: faults.iter().map(|s| (*s).to_owned()).collect(),
            nodes: 3,
            netns,
        }
    }

    #[test]
    fn the_schedule_is_a_function_of_the_plan() {
        let all = plan(7, &FAULTS, true);
        assert_eq!(all.schedule(), all.schedule());
        assert_ne!(all.schedule(), plan(8, &FAULTS, true).schedule());
        let steps = all.schedule();
        let total: u64 = steps.iter().map(|s| s.after_ms + s.hold_ms).sum();
        assert!(total <= 60_000 && steps.len() >= 10, "{steps:?}");
        // Without namespaces there are no partitions; only the kinds asked for.
        assert!(
            plan(7, &["partition", "kill"], false)
                .schedule()
                .iter()
                .all(|s| s.fault.kind() == "kill")
        );
        assert!(plan(7, &[], true).schedule().is_empty());
        for s in plan(3, &["partition"], true).schedule() {
            if let Fault::Split(a, b) = &s.fault {
                assert!(a.len() < b.len() && a.len() + b.len() == 3);
            }
        }
    }
}
