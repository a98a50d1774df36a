//! Locks across real OS processes.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use distkit::dlock::RedisLock;
use distkit::{DistributedLock, DistributedRwLock};
use distkit_testkit::{RedisServer, Reply};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const WORKER: &str = env!("CARGO_BIN_EXE_dlock-worker");

/// Runs `dlock-worker MODE` in 4 processes x 8 tasks, `iterations` each, on a fresh name.
async fn four_processes(redis: &RedisServer, mode: &str, name: &str, iterations: usize) {
    let (processes, tasks) = (4, 8);
    let mut children = Vec::new();
    for _ in 0..processes {
        children.push(
            Command::new(WORKER)
                .args([
                    mode,
                    &redis.url(),
                    name,
                    &tasks.to_string(),
                    &iterations.to_string(),
                ])
                .kill_on_drop(true)
                .spawn()
                .unwrap(),
        );
    }
    for mut c in children {
        let status = tokio::time::timeout(Duration::from_secs(240), c.wait())
            .await
            .expect("workers finish")
            .unwrap();
        assert!(status.success(), "{mode} worker failed: {status}");
    }
    assert_eq!(
        redis
            .command(&["GET", &format!("{name}:violations")])
            .unwrap(),
        Reply::Nil,
        "{mode}: a fencing token went backwards or holders overlapped"
    );
}

fn counter(redis: &RedisServer, name: &str) -> i64 {
    redis
        .command(&["GET", &format!("{name}:counter")])
        .unwrap()
        .as_text()
        .map_or(0, |t| t.parse().unwrap())
}

/// 4 processes x 8 tasks take one lock 2,016 times and increment a counter non-atomically
/// while holding it: the count equals the grants, and fencing tokens only ever increase.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_exclusion_across_four_processes() {
    let redis = RedisServer::start().unwrap();
    four_processes(&redis, "count", "mx", 63).await;
    assert_eq!(
        counter(&redis, "mx"),
        4 * 8 * 63,
        "lost updates mean two holders overlapped"
    );
}

/// The same workload on the fair lock, the read-write lock (a write in four; readers check
/// that no writer is inside and that their token is above the last write's) and a
/// semaphore of 3 permits (never more than 3 holders inside).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_family_holds_across_four_processes() {
    let redis = RedisServer::start().unwrap();
    four_processes(&redis, "fair", "fair", 20).await;
    assert_eq!(counter(&redis, "fair"), 4 * 8 * 20, "fair: lost updates");
    four_processes(&redis, "rw", "rw", 24).await;
    let writes = counter(&redis, "rw");
    assert!(writes > 0, "some grants were writes");
    four_processes(&redis, "semaphore", "sem", 20).await;
    assert_eq!(
        counter(&redis, "sem"),
        4 * 8 * 20,
        "semaphore: every grant counted"
    );
}

/// Starts `dlock-worker MODE` holding `name` with `ttl`, SIGKILLs it once it holds, and
/// returns its fencing token and when it was killed.
async fn kill_a_holder(
    redis: &RedisServer,
    mode: &str,
    name: &str,
    ttl: Duration,
) -> (u64, Instant) {
    let mut child = Command::new(WORKER)
        .args([mode, &redis.url(), name, &ttl.as_millis().to_string()])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .await
        .unwrap();
    assert!(line.starts_with("held "), "{mode}: {line:?}");
    let their_fence: u64 = line.trim()["held ".len()..].parse().unwrap();
    child.start_kill().unwrap(); // SIGKILL: no release, no message
    let killed = Instant::now();
    child.wait().await.unwrap();
    (their_fence, killed)
}

/// A holder process is SIGKILLed; another process gets the lock within the TTL plus a margin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_holders_lock_passes_on_after_its_ttl() {
    let redis = RedisServer::start().unwrap();
    let ttl = Duration::from_millis(1000);
    let (their_fence, killed) = kill_a_holder(&redis, "hold", "k", ttl).await;
    let lock = RedisLock::new(redis.url()).unwrap();
    let g = lock.acquire("k", Duration::from_secs(10)).await.unwrap();
    let took = killed.elapsed();
    assert!(g.fencing_token().get() > their_fence);
    assert!(took <= ttl + Duration::from_millis(500), "took {took:?}");
}

/// The same for every kind of the family: a SIGKILLed fair-lock holder, writer, reader (a
/// writer waits for it) and semaphore holder (of the only permit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_holder_of_every_kind_passes_on_after_its_ttl() {
    let redis = RedisServer::start().unwrap();
    let ttl = Duration::from_millis(800);
    let lock = RedisLock::new(redis.url()).unwrap();
    let rw = lock.rw();
    let next: Vec<(&str, Arc<dyn DistributedLock>)> = vec![
        ("hold-fair", Arc::new(lock.fair())),
        ("hold-write", rw.read_lock()),
        ("hold-read", rw.write_lock()),
        ("hold-semaphore", Arc::new(lock.semaphore(1).unwrap())),
    ];
    for (mode, backend) in next {
        let name = format!("k-{mode}");
        let (their_fence, killed) = kill_a_holder(&redis, mode, &name, ttl).await;
        let g = backend
            .acquire(&name, Duration::from_secs(10))
            .await
            .unwrap();
        let took = killed.elapsed();
        assert!(g.fencing_token().get() > their_fence, "{mode}");
        assert!(
            took <= ttl + Duration::from_millis(500),
            "{mode}: took {took:?}"
        );
    }
}

/// A waiter at the head of a fair queue is SIGKILLed while it waits: the next waiter is
/// held up by at most the dead one's queue-entry expiry (3 s by default), not by the lock's
/// TTL or forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_waiter_at_the_head_of_a_fair_queue_delays_the_next_by_its_entry_ttl() {
    let redis = RedisServer::start().unwrap();
    let fair = RedisLock::new(redis.url()).unwrap().fair();
    let holder = fair.acquire("q", Duration::from_secs(1)).await.unwrap();
    let mut child = Command::new(WORKER)
        .args(["hold-fair", &redis.url(), "q", "30000"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Bounded: 10 s for the worker to queue.
    let mut queued = false;
    for _ in 0..200 {
        if redis.command(&["ZCARD", "distkit:lock:{q}:queue"]).unwrap() == Reply::Integer(1) {
            queued = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(queued, "the worker queued");
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let killed = Instant::now();
    let next = tokio::spawn({
        let fair = fair.clone();
        async move { fair.acquire("q", Duration::from_secs(10)).await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    holder.release().await.unwrap();
    let g = next
        .await
        .unwrap()
        .expect("granted after the dead entry expires");
    let took = killed.elapsed();
    assert!(
        took <= distkit::dlock::DEFAULT_QUEUE_ENTRY_TTL + Duration::from_millis(500),
        "took {took:?}"
    );
    g.release().await.unwrap();
}

/// Sentinel: 4 processes x 8 tasks run the fenced workload with `min_replicas(1)` while the
/// primary is SIGKILLed. No grant is lost to the promotion (the store never sees two holders
/// inside at once, nor a fencing token going back), and every process is granted again after
/// the failover. (`cargo xtask bench dlock` measures the time to the next grant.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_grant_is_lost_to_a_sentinel_failover_with_replica_acknowledgement() {
    let mut setup = distkit_testkit::SentinelSetup::start(2, 3).unwrap();
    let store = RedisServer::start().unwrap();
    let sentinels = setup.sentinel_urls().join(",");
    let run = Duration::from_secs(9);
    let started = Instant::now();
    let children: Vec<_> = (0..4)
        .map(|_| {
            Command::new(WORKER)
                .args([
                    "sentinel",
                    distkit_testkit::SENTINEL_MASTER,
                    &sentinels,
                    &store.url(),
                    "fo",
                    "8",
                    &run.as_secs_f64().to_string(),
                    "1",
                ])
                .stdout(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .unwrap()
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let killed = setup.kill_primary().unwrap();
    let killed_at = started.elapsed();
    setup
        .wait_for_failover(killed, Duration::from_secs(60))
        .unwrap();
    for child in children {
        let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
            .await
            .expect("workers finish")
            .unwrap();
        assert!(out.status.success(), "worker failed: {}", out.status);
        let text = String::from_utf8_lossy(&out.stdout);
        let last_ms: u64 = text
            .split_whitespace()
            .nth(3)
            .and_then(|n| n.parse().ok())
            .expect("grants N last_grant_ms M");
        let last = Duration::from_millis(last_ms);
        assert!(
            last > killed_at,
            "a process was not granted after the failover: {text}"
        );
    }
    assert_eq!(
        store.command(&["GET", "fo:violations"]).unwrap(),
        Reply::Nil,
        "a grant was lost to the promotion"
    );
}
