//! The summary run behind `cargo xtask bench election`: failover times in the simulator (the
//! Raft paper's experiment), over real HTTP on loopback, and with the Redis lease; plus the
//! simulator's safety and PreVote figures. Writes `target/bench/election.json` and
//! `docs/benchmarks/election.md`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use distkit_core::{LeaderElector, NodeId, Role, Term};
use distkit_election::sim::{Sim, SimConfig, chaos_run};
use distkit_election::{
    Config, DEFAULT_LEASE, Elector, HttpTransport, LeaseElection, MemoryVoteStore, http_router,
};
use distkit_testkit::RedisServer;
use distkit_testkit::report::{Report, quantile};
use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio::net::TcpListener;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut r = Report::new("election", "distkit-election benchmarks");

    // The paper's experiment in the simulator: 5 nodes, defaults, the leader crashes at a
    // uniform point of its heartbeat interval; time until a new leader is elected.
    let trials = 10_000;
    let mut failover = Vec::with_capacity(trials);
    let mut rng = StdRng::seed_from_u64(42);
    for seed in 0..trials as u64 {
        let mut sim = Sim::new(seed, SimConfig::default()).unwrap();
        sim.run_for(Duration::from_millis(800));
        let Some(old) = sim.leader() else { continue };
        sim.run_for(Duration::from_micros(rng.random_range(0..50_000)));
        let Some(old) = sim.leader().filter(|l| *l == old) else {
            continue;
        };
        let term = sim
            .node(old)
            .map(|c| c.hard_state().term)
            .unwrap_or_default();
        sim.crash(old);
        let crashed = sim.now();
        if let Some(t) = sim.run_until_cond(Duration::from_secs(5), |s| new_leader(s, old, term)) {
            failover.push((t - crashed).as_secs_f64() * 1e3);
        }
    }
    let n = failover.len() as f64;
    r.figure(
        "sim_trials",
        n,
        "simulated crash trials, 5 nodes, 150-300 ms, 0.1-1 ms delays",
    );
    r.target(
        "sim_failover_p50_ms",
        quantile(&mut failover, 0.5),
        "crash to new leader, median",
        "<= 200 (paper: 287 at 150-155 ms)",
    );
    r.target(
        "sim_failover_p99_ms",
        quantile(&mut failover, 0.99),
        "crash to new leader, p99",
        "<= 350",
    );
    r.target(
        "sim_failover_max_ms",
        quantile(&mut failover, 1.0),
        "crash to new leader, worst",
        "<= 500 (paper: 513 at 150-200 ms)",
    );

    // Safety under chaos.
    let seeds = 2000u64;
    let violations: usize = (0..seeds).map(|s| chaos_run(s).len()).sum();
    r.figure(
        "sim_seeds",
        seeds as f64,
        "randomized chaos runs (loss, duplication, delay, partitions, crashes, 10% drift)",
    );
    r.target(
        "safety_violations",
        violations as f64,
        "violations found in those runs",
        "= 0",
    );

    // PreVote: a node isolated for 10 s rejoins; terms gained by the cluster.
    let mut bumps = 0u64;
    for seed in 0..20 {
        let mut sim = Sim::new(seed, SimConfig::default()).unwrap();
        sim.run_for(Duration::from_secs(1));
        let Some(l) = sim.leader() else { continue };
        sim.isolate((l + 1) % 5);
        sim.run_for(Duration::from_secs(10));
        let before = sim.max_term();
        sim.heal();
        sim.run_for(Duration::from_secs(2));
        bumps += sim.max_term().get() - before.get();
    }
    r.target(
        "prevote_term_bumps",
        bumps as f64,
        "terms gained when a node isolated for 10 s rejoins (20 runs)",
        "= 0",
    );

    // CheckQuorum: an isolated leader steps down.
    let mut stepdown = Vec::new();
    for seed in 0..200 {
        let mut sim = Sim::new(seed, SimConfig::default()).unwrap();
        sim.run_for(Duration::from_secs(1));
        let Some(l) = sim.leader() else { continue };
        sim.isolate(l);
        let cut = sim.now();
        if let Some(t) = sim.run_until_cond(Duration::from_secs(2), |s| {
            s.node(l)
                .is_some_and(|c| c.leadership().role != Role::Leader)
        }) {
            stepdown.push((t - cut).as_secs_f64() * 1e3);
        }
    }
    r.target(
        "isolated_leader_stepdown_ms",
        quantile(&mut stepdown, 1.0),
        "worst of 200 runs: isolation to step-down",
        "<= 300 (max election timeout)",
    );

    // Real HTTP on loopback.
    let mut http = rt.block_on(http_failover(60));
    r.figure(
        "http_trials",
        http.len() as f64,
        "crash trials, 5 HTTP nodes on loopback",
    );
    r.figure(
        "http_failover_p50_ms",
        quantile(&mut http, 0.5),
        "crash to new leader over HTTP, median",
    );
    r.figure(
        "http_failover_p99_ms",
        quantile(&mut http, 0.99),
        "crash to new leader over HTTP, p99",
    );

    // The Redis lease.
    let mut lease = rt.block_on(lease_failover(20));
    r.figure(
        "lease_failover_p50_ms",
        quantile(&mut lease, 0.5),
        &format!(
            "LeaseElection, {DEFAULT_LEASE:?} lease, holder stopped without release, median of {}",
            lease.len()
        ),
    );

    r.note("Simulated delays are uniform in 0.1-1 ms (a LAN); the paper's cluster had a similar broadcast time.");
    r.note("HTTP and lease trials run on this 2-core machine with every node in one process.");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let (json, md) = r.write(&root).expect("write the report");
    eprintln!("wrote {} and {}", json.display(), md.display());
}

fn new_leader(s: &Sim, old: usize, term: Term) -> bool {
    s.leader()
        .is_some_and(|l| l != old && s.node(l).is_some_and(|c| c.hard_state().term > term))
}

struct HttpNode {
    elector: Elector,
    server: tokio::task::JoinHandle<()>,
}

async fn start_node(
    ids: &[NodeId],
    urls: &[String],
    i: usize,
    listener: TcpListener,
    store: Arc<MemoryVoteStore>,
) -> HttpNode {
    let peers: Vec<(NodeId, String)> = (0..ids.len())
        .filter(|&j| j != i)
        .map(|j| (ids[j].clone(), urls[j].clone()))
        .collect();
    let transport = HttpTransport::new(peers.clone(), "bench", Duration::from_millis(100)).unwrap();
    let cfg = Config::builder(ids[i].clone(), peers.into_iter().map(|(id, _)| id))
        .build()
        .unwrap();
    let elector = Elector::start(cfg, store, Arc::new(transport)).unwrap();
    let app = http_router(elector.inbox(), "bench");
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    HttpNode { elector, server }
}

async fn http_failover(trials: usize) -> Vec<f64> {
    let ids: Vec<NodeId> = (0..5)
        .map(|i| NodeId::new(format!("n{i}")).unwrap())
        .collect();
    let (listeners, urls) = distkit_testkit::loopback_listeners(5).unwrap();
    let listeners = listeners
        .into_iter()
        .map(|l| TcpListener::from_std(l).unwrap());
    let stores: Vec<Arc<MemoryVoteStore>> =
        (0..5).map(|_| Arc::new(MemoryVoteStore::new())).collect();
    let mut nodes = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        nodes.push(Some(start_node(&ids, &urls, i, l, stores[i].clone()).await));
    }
    let leader_of = |nodes: &[Option<HttpNode>]| -> Option<(usize, Term)> {
        nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.as_ref().map(|n| (i, n.elector.leadership())))
            .filter(|(_, l)| l.role == Role::Leader)
            .max_by_key(|(_, l)| l.term)
            .map(|(i, l)| (i, l.term))
    };
    let mut out = Vec::new();
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..trials {
        // A settled leader.
        let start = Instant::now();
        let (old, term) = loop {
            if let Some(x) = leader_of(&nodes) {
                break x;
            }
            if start.elapsed() > Duration::from_secs(5) {
                return out;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        tokio::time::sleep(Duration::from_millis(100 + rng.random_range(0..50))).await;
        if leader_of(&nodes).map(|x| x.0) != Some(old) {
            continue;
        }
        let n = nodes[old].take().unwrap();
        let crashed = Instant::now();
        n.server.abort();
        let _ = n.server.await;
        n.elector.shutdown().await;
        loop {
            if let Some((l, t)) = leader_of(&nodes)
                && l != old
                && t > term
            {
                out.push(crashed.elapsed().as_secs_f64() * 1e3);
                break;
            }
            if crashed.elapsed() > Duration::from_secs(5) {
                break;
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        // Bring the node back for the next trial.
        let addr = urls[old].trim_start_matches("http://").to_owned();
        let listener = TcpListener::bind(&addr).await.unwrap();
        nodes[old] = Some(start_node(&ids, &urls, old, listener, stores[old].clone()).await);
    }
    for n in nodes.into_iter().flatten() {
        n.server.abort();
        n.elector.shutdown().await;
    }
    out
}

async fn lease_failover(trials: usize) -> Vec<f64> {
    let redis = RedisServer::start().expect("redis-server");
    let mut out = Vec::new();
    for t in 0..trials {
        let group = format!("bench-{t}");
        let ms: Vec<LeaseElection> = (0..3)
            .map(|i| {
                LeaseElection::start(
                    &redis.url(),
                    &group,
                    NodeId::new(format!("m{i}")).unwrap(),
                    DEFAULT_LEASE,
                )
                .unwrap()
            })
            .collect();
        let start = Instant::now();
        let old = loop {
            if let Some(i) = (0..3).find(|&i| ms[i].is_leader()) {
                break i;
            }
            if start.elapsed() > Duration::from_secs(5) {
                break usize::MAX;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        if old == usize::MAX {
            continue;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        // A crash: the task dies and nothing is released on its behalf.
        let crashed = Instant::now();
        ms[old].abandon();
        loop {
            if (0..3).any(|i| i != old && ms[i].is_leader()) {
                out.push(crashed.elapsed().as_secs_f64() * 1e3);
                break;
            }
            if crashed.elapsed() > Duration::from_secs(5) {
                break;
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        for m in &ms {
            m.shutdown().await;
        }
    }
    out
}
