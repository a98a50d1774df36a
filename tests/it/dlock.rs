//! Locks across real OS processes.

use std::process::Stdio;
use std::time::{Duration, Instant};

use distkit::DistributedLock;
use distkit::dlock::RedisLock;
use distkit_testkit::{RedisServer, Reply};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const WORKER: &str = env!("CARGO_BIN_EXE_dlock-worker");

/// 4 processes x 8 tasks take one lock 2,016 times and increment a counter non-atomically
/// while holding it: the count equals the grants, and fencing tokens only ever increase.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_exclusion_across_four_processes() {
    let redis = RedisServer::start().unwrap();
    let (processes, tasks, iterations) = (4, 8, 63);
    let mut children = Vec::new();
    for _ in 0..processes {
        children.push(
            Command::new(WORKER)
                .args([
                    "count",
                    &redis.url(),
                    "mx",
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
        assert!(status.success(), "worker failed: {status}");
    }
    let grants = (processes * tasks * iterations) as i64;
    let counter = redis
        .command(&["GET", "mx:counter"])
        .unwrap()
        .as_text()
        .unwrap();
    assert_eq!(
        counter.parse::<i64>().unwrap(),
        grants,
        "lost updates mean two holders overlapped"
    );
    assert_eq!(
        redis.command(&["GET", "mx:violations"]).unwrap(),
        Reply::Nil,
        "a fencing token went backwards"
    );
}

/// A holder process is SIGKILLed; another process gets the lock within the TTL plus a margin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_holders_lock_passes_on_after_its_ttl() {
    let redis = RedisServer::start().unwrap();
    let ttl = Duration::from_millis(1000);
    let mut child = Command::new(WORKER)
        .args(["hold", &redis.url(), "k", &ttl.as_millis().to_string()])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .await
        .unwrap();
    assert!(line.starts_with("held "), "{line:?}");
    let their_fence: u64 = line.trim()["held ".len()..].parse().unwrap();
    child.start_kill().unwrap(); // SIGKILL: no release, no message
    let killed = Instant::now();
    child.wait().await.unwrap();

    let lock = RedisLock::new(redis.url()).unwrap();
    let g = lock.acquire("k", Duration::from_secs(10)).await.unwrap();
    let took = killed.elapsed();
    assert!(g.fencing_token().get() > their_fence);
    assert!(took <= ttl + Duration::from_millis(500), "took {took:?}");
}
