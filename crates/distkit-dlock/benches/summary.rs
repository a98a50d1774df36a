//! The summary run behind `cargo xtask bench dlock`: lock latency, hand-off and throughput
//! against private loopback redis-servers, each against a baseline measured in the same run.
//! Writes `target/bench/dlock.json` and `docs/benchmarks/dlock.md`.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use distkit_core::{DistributedLock, DistributedRwLock};
use distkit_dlock::{RedisLock, Redlock};
use distkit_testkit::RedisServer;
use distkit_testkit::report::{Report, median, quantile};
use redis::aio::MultiplexedConnection;

const CHILD_ENV: &str = "DISTKIT_DLOCK_BENCH_CHILD";
const FAIRNESS_ENV: &str = "DISTKIT_DLOCK_BENCH_FAIRNESS";

fn main() {
    // Re-executed as one of the two processes of the 8-worker fairness run.
    if let Ok(spec) = std::env::var(FAIRNESS_ENV) {
        let mut it = spec.split(' ');
        let (kind, url, secs) = (
            it.next().expect("kind").to_owned(),
            it.next().expect("url").to_owned(),
            it.next().expect("seconds").parse::<f64>().expect("seconds"),
        );
        let rt = runtime(true);
        let (counts, waits) = rt.block_on(workers(kind, url, Duration::from_secs_f64(secs), 4));
        let line = |v: Vec<String>| v.join(" ");
        println!("{}", line(counts.iter().map(u64::to_string).collect()));
        println!(
            "{}",
            line(waits.iter().map(|w| format!("{w:.4}")).collect())
        );
        return;
    }
    // Re-executed as the second process of the contended run.
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        let (url, secs) = spec.split_once(' ').expect("url and seconds");
        let rt = runtime(true);
        let n = rt.block_on(contend(
            url.to_owned(),
            Duration::from_secs_f64(secs.parse().unwrap()),
        ));
        println!("{n}");
        return;
    }
    let rt = runtime(false);
    rt.block_on(run());
}

fn runtime(multi: bool) -> tokio::runtime::Runtime {
    let mut b = if multi {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    b.enable_all().build().expect("runtime")
}

async fn run() {
    let redis = RedisServer::start().expect("redis-server (cargo xtask test installs it)");
    let url = redis.url();
    let mut r = Report::new("dlock", "distkit-dlock benchmarks");

    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let lock = RedisLock::builder(url.clone())
        .ttl(Duration::from_secs(10))
        .build()
        .unwrap();
    // Warm up: connections made, scripts cached.
    for _ in 0..200 {
        ping(&mut conn).await;
        lock.try_acquire("warm")
            .await
            .unwrap()
            .unwrap()
            .release()
            .await
            .unwrap();
    }

    // Latency: medians of interleaved rounds, so drift on the shared machine hits all alike.
    let (mut rtt, mut ping2, mut pair) = (Vec::new(), Vec::new(), Vec::new());
    let scripts_before = evalsha_usec(&redis);
    for _ in 0..5 {
        let mut a = Vec::new();
        let mut b = Vec::new();
        let mut c = Vec::new();
        for _ in 0..400 {
            let t = Instant::now();
            ping(&mut conn).await;
            a.push(us(t));
            let t = Instant::now();
            ping(&mut conn).await;
            ping(&mut conn).await;
            b.push(us(t));
            let t = Instant::now();
            let g = lock.try_acquire("pair").await.unwrap().unwrap();
            g.release().await.unwrap();
            c.push(us(t));
        }
        rtt.push(median(&mut a));
        ping2.push(median(&mut b));
        pair.push(median(&mut c));
    }
    let (rtt, ping2, pair) = (median(&mut rtt), median(&mut ping2), median(&mut pair));
    r.figure("rtt_us", rtt, "one PING round trip (median)");
    r.figure(
        "ping2_us",
        ping2,
        "two sequential PINGs on the same kind of connection",
    );
    r.figure("pair_us", pair, "uncontended acquire + release (median)");
    let scripts_us = (evalsha_usec(&redis) - scripts_before) / 2000.0;
    r.target(
        "pair_ratio",
        pair / ping2,
        &format!(
            "pair_us / ping2_us (Redis ran the pair's two scripts for {scripts_us:.1} us of it)"
        ),
        "<= 1.15 (seed: 1.58)",
    );
    r.figure(
        "pair_scripts_us",
        scripts_us,
        &format!(
            "Redis's own time for the pair's two scripts (mean, INFO commandstats), {:.2} x ping2: the floor of pair_ratio is 1 + this / ping2",
            scripts_us / ping2
        ),
    );

    // Hand-off: from the holder's release to the blocked waiter holding the lock.
    let handoffs = handoff(&url, 240).await;
    let (mut h1, mut h2) = (handoffs.clone(), handoffs);
    let p50 = quantile(&mut h1, 0.5);
    let p99 = quantile(&mut h2, 0.99);
    r.target(
        "handoff_p50_ms",
        p50,
        "release to waiter holding, 240 hand-offs",
        &format!("<= 5 x rtt = {:.3}", 5.0 * rtt / 1000.0),
    );
    r.target(
        "handoff_p99_ms",
        p99,
        "release to waiter holding",
        &format!("<= 20 x rtt = {:.3}", 20.0 * rtt / 1000.0),
    );
    let mut seed = seed_handoff(&url, 40).await;
    let seed_p50 = quantile(&mut seed, 0.5);
    r.figure(
        "seed_handoff_p50_ms",
        seed_p50,
        "the seed's 100 ms polling, 40 hand-offs",
    );
    r.target(
        "handoff_vs_seed",
        seed_p50 / p50,
        "seed_handoff_p50_ms / handoff_p50_ms",
        ">= 20",
    );

    // Contended: 16 waiters here and 16 in a second process on one lock.
    let secs = 3.0;
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .env(CHILD_ENV, format!("{url} {secs}"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let here = contend(url.clone(), Duration::from_secs_f64(secs)).await;
    let out = child.wait_with_output().unwrap();
    let there: u64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    let per_s = (here + there) as f64 / secs;
    r.target(
        "contended_handoffs_per_s",
        per_s,
        &format!("16 + 16 waiters in two processes ({here} + {there} grants in {secs} s); implies {:.1} us a hand-off", 1e6 / per_s),
        &format!(">= 1 / (6 x rtt) = {:.0}", 1e6 / (6.0 * rtt)),
    );

    // Fairness under contention: 8 workers in two processes (4 + 4) on one lock.
    for (kind, prefix) in [("plain", ""), ("fair", "fair_")] {
        let secs = 3.0;
        let (counts, mut waits) = fairness_run(kind, &url, secs);
        let grants: u64 = counts.iter().sum();
        let (most, least) = (
            counts.iter().copied().max().unwrap_or(0),
            counts.iter().copied().min().unwrap_or(0),
        );
        let spread = most as f64 / least.max(1) as f64;
        let per_s = grants as f64 / secs;
        let mut w2 = waits.clone();
        let (p50, p99) = (quantile(&mut waits, 0.5), quantile(&mut w2, 0.99));
        let what = if kind == "fair" {
            "RedisFairLock"
        } else {
            "RedisLock"
        };
        put(
            &mut r,
            &format!(
                "{prefix}{}",
                if kind == "fair" {
                    "grants_per_s_8"
                } else {
                    "contended_grants_per_s_8"
                }
            ),
            per_s,
            &format!(
                "{what}: 8 workers (4 + 4 in two processes) on one lock for {secs} s, grants per worker {counts:?}"
            ),
            if kind == "fair" { "" } else { ">= 10000" },
        );
        put(
            &mut r,
            &format!("{prefix}grant_spread_8"),
            spread,
            "most / fewest grants of one worker",
            if kind == "fair" { "<= 1.5" } else { "<= 2" },
        );
        r.figure(
            &format!("{prefix}wait_p50_ms"),
            p50,
            &format!("{what}: one acquire under that contention, median"),
        );
        put(
            &mut r,
            &format!("{prefix}wait_p99_ms"),
            p99,
            &format!("{what}: one acquire under that contention, p99"),
            &if kind == "fair" {
                format!("<= 10 x {prefix}wait_p50_ms = {:.3}", 10.0 * p50)
            } else {
                String::new()
            },
        );
    }

    // Uncontended pairs of the family, interleaved with their baseline.
    let rw = lock.rw();
    let (reads, writes) = (rw.read_lock(), rw.write_lock());
    let sem = lock.semaphore(4).unwrap();
    let fair = lock.fair();
    let family: [(&str, &dyn DistributedLock); 4] = [
        ("rw_read_pair_us", &*reads),
        ("rw_write_pair_us", &*writes),
        ("semaphore_pair_us", &sem),
        ("fair_pair_us", &fair),
    ];
    for (_, l) in &family {
        for _ in 0..200 {
            l.try_acquire("warm-f")
                .await
                .unwrap()
                .unwrap()
                .release()
                .await
                .unwrap();
        }
    }
    let mut rounds: Vec<Vec<f64>> = vec![Vec::new(); family.len() + 1];
    for _ in 0..5 {
        let mut samples: Vec<Vec<f64>> = vec![Vec::new(); family.len() + 1];
        for _ in 0..300 {
            let t = Instant::now();
            ping(&mut conn).await;
            ping(&mut conn).await;
            samples[0].push(us(t));
            for (i, (_, l)) in family.iter().enumerate() {
                let t = Instant::now();
                let g = l.try_acquire("pair-f").await.unwrap().unwrap();
                g.release().await.unwrap();
                samples[i + 1].push(us(t));
            }
        }
        for (round, mut s) in rounds.iter_mut().zip(samples) {
            round.push(median(&mut s));
        }
    }
    let base = median(&mut rounds[0]);
    for (i, (name, _)) in family.iter().enumerate() {
        let pair = median(&mut rounds[i + 1]);
        r.target(
            name,
            pair,
            &format!(
                "uncontended acquire + release, median (ping2 here: {base:.1} us; ratio {:.3})",
                pair / base
            ),
            &format!("<= 1.2 x ping2_us = {:.1}", 1.2 * base),
        );
    }

    // Redlock over 5 servers vs one server: acquire latency.
    let servers = RedisServer::start_many(5).unwrap();
    let rl = Redlock::builder(servers.iter().map(RedisServer::url))
        .ttl(Duration::from_secs(10))
        .build()
        .unwrap();
    for _ in 0..100 {
        rl.try_acquire("warm")
            .await
            .unwrap()
            .unwrap()
            .release()
            .await
            .unwrap();
    }
    let (mut one, mut five) = (Vec::new(), Vec::new());
    for _ in 0..400 {
        let t = Instant::now();
        let g = lock.try_acquire("rl").await.unwrap().unwrap();
        one.push(us(t));
        g.release().await.unwrap();
        let t = Instant::now();
        let g = rl.try_acquire("rl").await.unwrap().unwrap();
        five.push(us(t));
        g.release().await.unwrap();
    }
    let (one, five) = (median(&mut one), median(&mut five));
    r.figure("acquire_p50_us", one, "RedisLock acquire, one server");
    r.figure(
        "redlock5_acquire_p50_us",
        five,
        "Redlock acquire over 5 servers",
    );
    r.target(
        "redlock5_acquire_ratio",
        five / one,
        "Redlock(5) p50 / one-server p50",
        "<= 1.3",
    );
    // Replica acknowledgement: a pair with min_replicas(1) against a pair without, on a
    // primary with one replica.
    let replica = RedisServer::builder()
        .replica_of(redis.port())
        .start()
        .unwrap();
    let acked = RedisLock::builder(url.clone())
        .ttl(Duration::from_secs(10))
        .min_replicas(1, Duration::from_millis(500))
        .build()
        .unwrap();
    // Until the replica is in sync, grants are refused: bounded wait.
    for _ in 0..200 {
        if let Ok(Some(g)) = acked.try_acquire("warm-w").await {
            g.release().await.unwrap();
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (mut plain_pairs, mut acked_pairs) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..300 {
            let t = Instant::now();
            let g = lock.try_acquire("pair-w").await.unwrap().unwrap();
            g.release().await.unwrap();
            a.push(us(t));
            let t = Instant::now();
            let g = acked.try_acquire("pair-w").await.unwrap().unwrap();
            g.release().await.unwrap();
            b.push(us(t));
        }
        plain_pairs.push(median(&mut a));
        acked_pairs.push(median(&mut b));
    }
    let (plain_pair, acked_pair) = (median(&mut plain_pairs), median(&mut acked_pairs));
    r.figure(
        "wait1_pair_ratio",
        acked_pair / plain_pair,
        &format!(
            "pair with min_replicas(1) / pair without, one replica on loopback ({acked_pair:.1} vs {plain_pair:.1} us: the WAIT for the replica's acknowledgement adds {:.1} us, its replication round trip)",
            acked_pair - plain_pair
        ),
    );
    drop(replica);

    // Cluster: an uncontended pair against two PINGs to the primary owning the lock's slot.
    {
        let cluster = distkit_testkit::RedisCluster::start(3, 1).expect("a redis cluster");
        let on_cluster = RedisLock::cluster(cluster.urls())
            .ttl(Duration::from_secs(10))
            .build()
            .unwrap();
        let owner = cluster.owner_of("distkit:lock:{pair-c}").expect("an owner");
        let direct = redis::Client::open(format!("redis://127.0.0.1:{owner}/")).unwrap();
        let mut owner_conn = direct.get_multiplexed_async_connection().await.unwrap();
        for _ in 0..200 {
            ping(&mut owner_conn).await;
            on_cluster
                .try_acquire("pair-c")
                .await
                .unwrap()
                .unwrap()
                .release()
                .await
                .unwrap();
        }
        let owner_node = cluster
            .nodes
            .iter()
            .find(|n| n.port() == owner)
            .expect("the owner");
        let scripts_before = evalsha_usec(owner_node);
        let (mut pings, mut pairs) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for _ in 0..300 {
                let t = Instant::now();
                ping(&mut owner_conn).await;
                ping(&mut owner_conn).await;
                a.push(us(t));
                let t = Instant::now();
                let g = on_cluster.try_acquire("pair-c").await.unwrap().unwrap();
                g.release().await.unwrap();
                b.push(us(t));
            }
            pings.push(median(&mut a));
            pairs.push(median(&mut b));
        }
        let (ping2_owner, pair_c) = (median(&mut pings), median(&mut pairs));
        // What Redis itself spent running the pair's two scripts (mean, from INFO
        // commandstats): the part of the pair no client can save.
        let scripts_us = (evalsha_usec(owner_node) - scripts_before) / 1500.0;
        r.target(
            "cluster_pair_ratio",
            pair_c / ping2_owner,
            &format!(
                "uncontended pair on a 3 + 3 Redis Cluster ({pair_c:.1} us) / two PINGs to the owning primary ({ping2_owner:.1} us); the primary spent {scripts_us:.1} us of it running the two scripts"
            ),
            "<= 1.2",
        );
        r.figure(
            "cluster_pair_scripts_us",
            scripts_us,
            &format!(
                "Redis's own time for the pair's two scripts (mean, INFO commandstats), {:.2} x ping2: the floor of cluster_pair_ratio is 1 + this / ping2",
                scripts_us / ping2_owner
            ),
        );
    }

    // Sentinel failovers under the fenced workload, without and with min_replicas(1).
    let failovers: usize = std::env::var("DISTKIT_BENCH_FAILOVERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10);
    let mut unavailable = Vec::new();
    for replicas in [0u32, 1] {
        let mut lost = 0u64;
        for _ in 0..failovers {
            let (ms, l) = failover_run(replicas).await;
            unavailable.push(ms);
            lost += l;
        }
        put(
            &mut r,
            &format!("sentinel_lost_grants_wait{replicas}"),
            lost as f64,
            &format!(
                "grants lost to promotions over {failovers} SIGKILLs of the primary (1 primary, 2 replicas, 3 sentinels; 8 tasks on one lock; two holders inside at once or a fencing token going back)"
            ),
            if replicas == 1 { "0" } else { "" },
        );
    }
    let mut u = unavailable.clone();
    r.figure(
        "sentinel_failover_unavailable_ms",
        median(&mut u),
        &format!(
            "from the primary's SIGKILL to the next grant, median of {} failovers (the sentinels declare it down after 500 ms)",
            unavailable.len()
        ),
    );
    r.note("All servers are private redis-server processes on loopback, started by the testkit.");
    r.note("Hand-offs are measured inside one process between two lock clients with separate connections.");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let (json, md) = r.write(&root).expect("write the report");
    eprintln!("wrote {} and {}", json.display(), md.display());
    drop(servers);
    drop(redis);
}

fn us(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e6
}

/// Microseconds `server` has spent in EVALSHA since it started (INFO commandstats).
fn evalsha_usec(server: &RedisServer) -> f64 {
    let text = server
        .command(&["INFO", "commandstats"])
        .ok()
        .and_then(|r| r.as_text())
        .unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:"))
        .and_then(|l| l.split(',').find_map(|f| f.strip_prefix("usec=")))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0)
}

async fn ping(conn: &mut MultiplexedConnection) {
    let _: String = redis::cmd("PING").query_async(conn).await.unwrap();
}

/// `n` hand-offs from a holder to a waiter that is already blocked; milliseconds each.
async fn handoff(url: &str, n: usize) -> Vec<f64> {
    let holder = RedisLock::builder(url)
        .ttl(Duration::from_secs(10))
        .build()
        .unwrap();
    let waiter = RedisLock::builder(url)
        .ttl(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let g = holder.try_acquire("h").await.unwrap().unwrap();
        let w = waiter.clone();
        let task = tokio::spawn(async move {
            let g = w.acquire("h", Duration::from_secs(10)).await.unwrap();
            let at = Instant::now();
            g.release().await.unwrap();
            at
        });
        // Let the waiter subscribe, try, and block.
        tokio::time::sleep(Duration::from_millis(3)).await;
        let released = Instant::now();
        g.release().await.unwrap();
        let got = task.await.unwrap();
        out.push(got.saturating_duration_since(released).as_secs_f64() * 1e3);
    }
    out
}

/// The seed's waiting: `SET NX EX 60` every 100 ms.
async fn seed_handoff(url: &str, n: usize) -> Vec<f64> {
    let client = redis::Client::open(url).unwrap();
    let mut holder = client.get_multiplexed_async_connection().await.unwrap();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let key = format!("seed-{i}");
        let _: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg("holder")
            .arg("NX")
            .arg("EX")
            .arg(60)
            .query_async(&mut holder)
            .await
            .unwrap();
        let mut w = client.get_multiplexed_async_connection().await.unwrap();
        let k2 = key.clone();
        let task = tokio::spawn(async move {
            loop {
                let r: Option<String> = redis::cmd("SET")
                    .arg(&k2)
                    .arg("waiter")
                    .arg("NX")
                    .arg("EX")
                    .arg(60)
                    .query_async(&mut w)
                    .await
                    .unwrap();
                if r.is_some() {
                    return Instant::now();
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        // Release at a uniform point of the waiter's polling period.
        tokio::time::sleep(Duration::from_millis(3 + (i as u64 * 97) % 100)).await;
        let released = Instant::now();
        let _: i64 = redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut holder)
            .await
            .unwrap();
        let got = task.await.unwrap();
        out.push(got.saturating_duration_since(released).as_secs_f64() * 1e3);
    }
    out
}

/// 16 tasks take and release one lock for `dur`; returns their grants.
async fn contend(url: String, dur: Duration) -> u64 {
    let lock = RedisLock::builder(url)
        .ttl(Duration::from_secs(10))
        .build()
        .unwrap();
    let grants = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (lock, grants, stop) = (lock.clone(), grants.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(g) = lock.acquire("contended", Duration::from_millis(500)).await {
                    grants.fetch_add(1, Ordering::Relaxed);
                    let _ = g.release().await;
                }
            }
        }));
    }
    tokio::time::sleep(dur).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    grants.load(Ordering::Relaxed)
}

/// Runs the 8-worker contention on `kind` in two child processes of 4 workers each; returns
/// the grants of each worker and every acquire's wait in ms.
fn fairness_run(kind: &str, url: &str, secs: f64) -> (Vec<u64>, Vec<f64>) {
    let children: Vec<_> = (0..2)
        .map(|_| {
            std::process::Command::new(std::env::current_exe().unwrap())
                .env(FAIRNESS_ENV, format!("{kind} {url} {secs}"))
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let (mut counts, mut waits) = (Vec::new(), Vec::new());
    for child in children {
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines();
        counts.extend(
            lines
                .next()
                .unwrap_or("")
                .split_whitespace()
                .map(|n| n.parse::<u64>().unwrap()),
        );
        waits.extend(
            lines
                .next()
                .unwrap_or("")
                .split_whitespace()
                .map(|n| n.parse::<f64>().unwrap()),
        );
    }
    (counts, waits)
}

/// `n` workers take and release one lock of `kind` for `dur`, on this runtime's worker
/// threads; returns each worker's grants and every acquire's wait in ms.
async fn workers(kind: String, url: String, dur: Duration, n: usize) -> (Vec<u64>, Vec<f64>) {
    let lock = RedisLock::builder(url)
        .ttl(Duration::from_secs(10))
        .build()
        .unwrap();
    let backend: Arc<dyn DistributedLock> = if kind == "fair" {
        Arc::new(lock.fair())
    } else {
        Arc::new(lock)
    };
    backend
        .acquire("warm", Duration::from_secs(10))
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (backend, stop) = (backend.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut grants, mut waits) = (0u64, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    if let Ok(g) = backend.acquire("fairness", Duration::from_secs(10)).await {
                        waits.push(t.elapsed().as_secs_f64() * 1e3);
                        grants += 1;
                        let _ = g.release().await;
                    }
                }
                (grants, waits)
            })
        })
        .collect();
    tokio::time::sleep(dur).await;
    stop.store(true, Ordering::Relaxed);
    let (mut counts, mut waits) = (Vec::new(), Vec::new());
    for t in tasks {
        let (g, w) = t.await.unwrap();
        counts.push(g);
        waits.extend(w);
    }
    (counts, waits)
}

/// A figure, with its target when it has one.
fn put(r: &mut Report, name: &str, value: f64, what: &str, target: &str) {
    if target.is_empty() {
        r.figure(name, value, what);
    } else {
        r.target(name, value, what, target);
    }
}

/// One SIGKILL of the primary of a fresh Sentinel deployment while 8 tasks take one lock:
/// milliseconds from the kill to the next grant, and the grants lost (two tasks inside at
/// once, or a fencing token not above the last).
async fn failover_run(min_replicas: u32) -> (f64, u64) {
    use std::sync::Mutex;
    let mut setup = distkit_testkit::SentinelSetup::start(2, 3).expect("sentinel setup");
    let mut builder = RedisLock::sentinel(distkit_testkit::SENTINEL_MASTER, setup.sentinel_urls())
        .ttl(Duration::from_secs(2))
        .op_timeout(Duration::from_millis(500));
    if min_replicas > 0 {
        builder = builder.min_replicas(min_replicas, Duration::from_millis(200));
    }
    let lock = builder.build().unwrap();
    let inside = Arc::new(Mutex::new((false, 0u64)));
    let lost = Arc::new(AtomicU64::new(0));
    let killed_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let first_after: Arc<Mutex<Option<Instant>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (lock, inside, lost, stop) =
                (lock.clone(), inside.clone(), lost.clone(), stop.clone());
            let (killed_at, first_after) = (killed_at.clone(), first_after.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let Ok(g) = lock.acquire("fo", Duration::from_secs(2)).await else {
                        continue;
                    };
                    let now = Instant::now();
                    if killed_at.lock().unwrap().is_some_and(|k| now > k) {
                        first_after.lock().unwrap().get_or_insert(now);
                    }
                    let fence = g.fencing_token().get();
                    {
                        let mut s = inside.lock().unwrap();
                        if s.0 || fence <= s.1 {
                            lost.fetch_add(1, Ordering::Relaxed);
                        }
                        *s = (true, s.1.max(fence));
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    inside.lock().unwrap().0 = false;
                    let _ = g.release().await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let port = setup.kill_primary().unwrap();
    *killed_at.lock().unwrap() = Some(Instant::now());
    let settle = tokio::task::spawn_blocking(move || {
        let r = setup.wait_for_failover(port, Duration::from_secs(60));
        (setup, r)
    });
    let (setup, settled) = settle.await.unwrap();
    settled.expect("the failover settles");
    // Bounded: at most 30 s for the first grant after the kill.
    for _ in 0..300 {
        if first_after.lock().unwrap().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    drop(setup);
    let killed = killed_at.lock().unwrap().expect("killed");
    let ms = first_after
        .lock()
        .unwrap()
        .map_or(f64::NAN, |t| (t - killed).as_secs_f64() * 1e3);
    (ms, lost.load(Ordering::Relaxed))
}
