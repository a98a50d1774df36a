use std::time::Duration;

use distkit_election::sim::{Sim, SimConfig, chaos_run, hostile_chaos_run};

/// How many randomized runs `cargo xtask test` makes; `cargo xtask sim --seeds N` sets more.
fn seeds() -> u64 {
    std::env::var("DISTKIT_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000)
}

/// Runs `run` over the seeds `cargo xtask sim` asks for and fails with every failing seed and
/// the command that replays it.
fn over_seeds(what: &str, run: fn(u64) -> Vec<String>) {
    let base: u64 = std::env::var("DISTKIT_SIM_SEED_BASE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut failures = Vec::new();
    for seed in base..base + seeds() {
        let v = run(seed);
        if !v.is_empty() {
            failures.push(format!(
                "{what} seed {seed} (replay: DISTKIT_SIM_SEED_BASE={seed} DISTKIT_SIM_SEEDS=1):\n  {}",
                v.join("\n  ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failing seeds:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn chaos_runs_are_safe_and_elect_one_leader_after_healing() {
    over_seeds("chaos", chaos_run);
}

#[test]
fn chaos_runs_with_a_hostile_peer_stay_safe() {
    over_seeds("hostile", hostile_chaos_run);
}

#[test]
fn a_crashed_leader_is_replaced_quickly() {
    let mut sim = Sim::new(1, SimConfig::default()).unwrap();
    sim.run_for(Duration::from_secs(1));
    let old = sim.leader().expect("a leader");
    let term = sim.node(old).unwrap().hard_state().term;
    sim.crash(old);
    let crashed = sim.now();
    let t = sim
        .run_until_cond(Duration::from_secs(2), |s| {
            s.leader()
                .is_some_and(|l| l != old && s.node(l).unwrap().hard_state().term > term)
        })
        .expect("a new leader");
    assert!(
        t - crashed < Duration::from_millis(600),
        "{:?}",
        t - crashed
    );
    assert!(sim.violations().is_empty(), "{:?}", sim.violations());
}

#[test]
fn prevote_keeps_a_rejoining_node_from_raising_the_term() {
    let mut sim = Sim::new(3, SimConfig::default()).unwrap();
    sim.run_for(Duration::from_secs(1));
    let leader = sim.leader().unwrap();
    let lonely = (leader + 1) % 5;
    sim.isolate(lonely);
    sim.run_for(Duration::from_secs(10));
    let before = sim.max_term();
    sim.heal();
    sim.run_for(Duration::from_secs(2));
    assert_eq!(
        sim.max_term(),
        before,
        "the rejoining node disrupted the cluster"
    );
    assert_eq!(sim.leader(), Some(leader), "the leader kept its place");
}

#[test]
fn without_prevote_a_rejoining_node_does_raise_the_term() {
    // The control experiment: the same scenario without PreVote bumps terms.
    let mut sim = Sim::new(
        3,
        SimConfig {
            pre_vote: false,
            ..SimConfig::default()
        },
    )
    .unwrap();
    sim.run_for(Duration::from_secs(1));
    let leader = sim.leader().unwrap();
    sim.isolate((leader + 1) % 5);
    sim.run_for(Duration::from_secs(10));
    let before = sim.max_term();
    assert!(before.get() > 5, "the isolated node campaigned alone");
}

#[test]
fn an_isolated_leader_steps_down_within_the_max_timeout() {
    let mut sim = Sim::new(5, SimConfig::default()).unwrap();
    sim.run_for(Duration::from_secs(1));
    let leader = sim.leader().unwrap();
    sim.isolate(leader);
    let cut = sim.now();
    let t = sim
        .run_until_cond(Duration::from_secs(2), |s| {
            s.node(leader)
                .is_some_and(|c| c.leadership().role != distkit_core::Role::Leader)
        })
        .expect("steps down");
    assert!(t - cut <= Duration::from_millis(300), "{:?}", t - cut);
    assert!(sim.violations().is_empty(), "{:?}", sim.violations());
}

#[test]
fn a_node_restarted_from_its_store_keeps_term_and_vote() {
    let mut sim = Sim::new(9, SimConfig::default()).unwrap();
    sim.run_for(Duration::from_secs(1));
    let l = sim.leader().unwrap();
    let other = (l + 2) % 5;
    let hs = sim.node(other).unwrap().hard_state().clone();
    sim.crash(other);
    sim.restart(other);
    assert_eq!(sim.node(other).unwrap().hard_state(), &hs);
}

#[test]
fn the_checker_catches_leases_that_ignore_clock_drift() {
    // With no drift allowance and clocks up to 10% apart, an isolated leader's lease can
    // outlive the followers' stickiness: the simulator must notice (so its silence with the
    // default allowance means something).
    let cfg = SimConfig {
        lease_drift: Some(Duration::ZERO),
        drift: 0.1,
        delay: (Duration::from_micros(50), Duration::from_micros(200)),
        ..SimConfig::default()
    };
    let mut caught = 0;
    for seed in 0..300u64 {
        let mut sim = Sim::new(seed, cfg.clone()).unwrap();
        sim.run_for(Duration::from_millis(500));
        if let Some(l) = sim.leader() {
            sim.isolate(l);
            sim.run_for(Duration::from_millis(600));
        }
        caught += sim
            .violations()
            .iter()
            .filter(|v| v.contains("leases at once"))
            .count();
    }
    assert!(
        caught > 0,
        "no overlapping lease found without a drift allowance"
    );
}

#[test]
fn the_default_drift_allowance_prevents_those_overlaps() {
    let cfg = SimConfig {
        drift: 0.1,
        delay: (Duration::from_micros(50), Duration::from_micros(200)),
        ..SimConfig::default()
    };
    for seed in 0..300u64 {
        let mut sim = Sim::new(seed, cfg.clone()).unwrap();
        sim.run_for(Duration::from_millis(500));
        if let Some(l) = sim.leader() {
            sim.isolate(l);
            sim.run_for(Duration::from_millis(600));
        }
        assert!(
            sim.violations().is_empty(),
            "seed {seed}: {:?}",
            sim.violations()
        );
    }
}

/// The hostile member really acts: its out-of-range terms, misdeliveries and strangers are
/// refused, its accepted extreme terms move the cluster, and no safety property breaks.
#[test]
fn the_hostile_member_is_refused_where_it_must_be_and_breaks_nothing() {
    let mut refused = 0;
    let mut top = distkit_core::Term::ZERO;
    for seed in 0..50 {
        let cfg = SimConfig {
            hostile: true,
            ..SimConfig::default()
        };
        let mut sim = Sim::new(seed, cfg).unwrap();
        for _ in 0..20 {
            for _ in 0..20 {
                sim.hostile_act(Duration::from_millis(100));
            }
            sim.run_for(Duration::from_millis(100));
        }
        assert!(
            sim.violations().is_empty(),
            "seed {seed}: {:?}",
            sim.violations()
        );
        refused += sim.refused();
        top = top.max(sim.max_term());
    }
    assert!(refused > 1000, "only {refused} hostile inputs were refused");
    assert!(
        top > distkit_core::Term::new(1_000),
        "hostile terms were never adopted: {top}"
    );
    assert!(top.is_valid());
}
