//! Beyond one Redis: the lock service on a Redis Sentinel deployment (a primary, replicas
//! and sentinels, real processes on loopback) through a SIGKILL of the primary, and replica
//! acknowledgement (`min_replicas`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use distkit_core::{
    AcquireOptions, DistributedLock, DistributedRwLock, DistributedSemaphore, Error,
};
use distkit_dlock::RedisLock;
use distkit_testkit::{RedisServer, Reply, SENTINEL_MASTER, SentinelSetup};

/// Retries `f` while it fails with a retryable error (at most 30 times, 100 ms apart).
async fn retried<T, Fut: std::future::Future<Output = Result<T, Error>>>(
    mut f: impl FnMut() -> Fut,
) -> T {
    for _ in 0..30 {
        match f().await {
            Ok(v) => return v,
            Err(e) if e.is_retryable() => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("{e:?}"),
        }
    }
    panic!("still failing after 30 tries")
}

fn keys(server: &RedisServer) -> Vec<String> {
    match server.command(&["KEYS", "*"]).unwrap() {
        Reply::Array(v) => v.iter().filter_map(Reply::as_text).collect(),
        other => panic!("KEYS answered {other:?}"),
    }
}

/// With no replica to acknowledge it, a grant is given back and reported as a retryable
/// error; nothing is left on the server, and an extension is refused the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_no_replica_acknowledged_is_released_and_reported() {
    let server = RedisServer::start().unwrap();
    let strict = RedisLock::builder(server.url())
        .min_replicas(1, Duration::from_millis(50))
        .build()
        .unwrap();
    let err = strict.try_acquire("k").await.unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    assert!(err.is_retryable());
    assert!(err.to_string().contains("0 of the 1 replicas"), "{err}");
    let left: Vec<String> = keys(&server)
        .into_iter()
        .filter(|k| !k.ends_with(":fence"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    // Every kind goes through the same check.
    assert!(strict.fair().try_acquire("f").await.is_err());
    assert!(strict.rw().write_lock().try_acquire("w").await.is_err());
    assert!(strict.semaphore(2).unwrap().try_acquire("s").await.is_err());
    // An extension is checked too.
    let loose = RedisLock::new(server.url()).unwrap();
    let g = loose.try_acquire("e").await.unwrap().unwrap();
    let mut lease = g.lease().clone();
    let err = strict
        .extend(&mut lease, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    // A timeout not shorter than the op timeout is refused at build.
    assert!(
        RedisLock::builder(server.url())
            .min_replicas(1, Duration::from_secs(5))
            .build()
            .is_err()
    );
}

/// With a replica, grants are acknowledged: the replica holds the lock key when the grant
/// returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_replica_a_grant_is_on_it_before_it_is_handed_out() {
    let primary = RedisServer::start().unwrap();
    let replica = RedisServer::builder()
        .replica_of(primary.port())
        .start()
        .unwrap();
    let lock = RedisLock::builder(primary.url())
        .min_replicas(1, Duration::from_millis(500))
        .build()
        .unwrap();
    // The replica may still be syncing: bounded retries.
    let mut got = None;
    for _ in 0..100 {
        match lock.try_acquire("k").await {
            Ok(g) => {
                got = g;
                break;
            }
            Err(e) if e.is_retryable() => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("{e:?}"),
        }
    }
    let g = got.expect("granted once the replica is in sync");
    assert_eq!(
        replica.command(&["GET", "distkit:lock:{k}"]).unwrap(),
        Reply::Bulk(g.token().to_string().into_bytes())
    );
    g.release().await.unwrap();
}

/// Found by an outside review: a replica timeout close to the op timeout had the attempt
/// cut while `WAIT` ran, and the give-back was cancelled with it, leaving the refused grant
/// in Redis for its whole TTL (30 s); a sub-millisecond timeout became `WAIT 1 0`, which
/// waits for ever. Now the give-back runs on its own, and under 1 ms is refused at build.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_grant_is_given_back_even_when_its_attempt_is_cut() {
    let primary = RedisServer::start().unwrap();
    let mut replica = RedisServer::builder()
        .replica_of(primary.port())
        .start()
        .unwrap();
    for tiny in [Duration::from_nanos(1), Duration::from_micros(999)] {
        let r = RedisLock::builder(primary.url())
            .min_replicas(1, tiny)
            .build();
        assert!(
            matches!(r, Err(Error::InvalidInput { .. })),
            "{tiny:?}: {r:?}"
        );
    }
    let plain = RedisLock::new(primary.url()).unwrap();
    replica.pause().unwrap();
    for (i, wait) in [290u64, 299].into_iter().enumerate() {
        let strict = RedisLock::builder(primary.url())
            .op_timeout(Duration::from_millis(300))
            .min_replicas(1, Duration::from_millis(wait))
            .build()
            .unwrap();
        let name = format!("cut-{i}");
        let err = strict.try_acquire(&name).await.unwrap_err();
        assert!(err.is_retryable(), "{err:?}");
        // It says which limit ran out (it said "after 0ns" for a try).
        assert!(!err.to_string().contains("after 0ns"), "{err}");
        // Given back once the server's WAIT ends (bounded: 3 s, against a 30 s TTL).
        let mut free = false;
        for _ in 0..60 {
            if let Some(g) = plain.try_acquire(&name).await.unwrap() {
                g.release().await.unwrap();
                free = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(free, "the refused grant of {name} stayed in Redis");
    }
    replica.resume().unwrap();
}

/// Found by an outside review: the shared connection kept one of the pool's connections for
/// good, so with `pool_size(1)` the first lock operation left none to lend: `connection()`
/// timed out for ever, and with `min_replicas` every second grant failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_of_one_serves_locks_and_lends_a_connection() {
    let primary = RedisServer::start().unwrap();
    let _replica = RedisServer::builder()
        .replica_of(primary.port())
        .start()
        .unwrap();
    let lock = RedisLock::builder(primary.url())
        .pool_size(1)
        .min_replicas(1, Duration::from_millis(500))
        .build()
        .unwrap();
    let mut grants = 0;
    // The replica may still be syncing: bounded retries.
    for _ in 0..100 {
        match lock.try_acquire("one").await {
            Ok(Some(g)) => {
                g.release().await.unwrap();
                grants += 1;
                if grants == 5 {
                    break;
                }
            }
            Ok(None) => panic!("nobody else holds it"),
            Err(e) if e.is_retryable() && grants == 0 => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("grant {grants}: {e:?}"),
        }
    }
    assert_eq!(grants, 5);
    for _ in 0..3 {
        let mut c = lock.connection().await.unwrap();
        let pong: String = redis::cmd("PING").query_async(&mut c).await.unwrap();
        assert_eq!(pong, "PONG");
        // The one lent connection is back in the pool once dropped.
        drop(c);
        let g = lock.try_acquire("one").await.unwrap().expect("free");
        g.release().await.unwrap();
    }
}

/// Sentinel: locks of every kind work, the primary is SIGKILLed, and after the promotion the
/// service follows the new primary: grants resume, fencing tokens keep increasing, a waiter
/// blocked through the failover is granted, and pub/sub hand-off is prompt again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_follow_a_sentinel_failover() {
    let mut setup = SentinelSetup::start(2, 3).unwrap();
    let lock = RedisLock::sentinel(SENTINEL_MASTER, setup.sentinel_urls())
        .ttl(Duration::from_secs(5))
        .op_timeout(Duration::from_millis(500))
        .min_replicas(1, Duration::from_millis(200))
        .build()
        .unwrap();
    assert!(
        lock.endpoint()
            .starts_with("sentinel master distkit via 127.0.0.1:")
    );
    let before = lock.acquire("a", Duration::from_secs(5)).await.unwrap();
    let fence_before = before.fencing_token();
    before.release().await.unwrap();
    // Held across the failover: its lease was acknowledged by a replica.
    let held = lock.acquire("held", Duration::from_secs(5)).await.unwrap();
    let blocked = tokio::spawn({
        let lock = lock.clone();
        async move { lock.acquire("held", Duration::from_secs(90)).await }
    });

    let killed = setup.kill_primary().unwrap();
    let at = Instant::now();
    // Settled: when two sentinels promote two replicas, they take about 20 s to agree.
    let promoted = setup
        .wait_for_failover(killed, Duration::from_secs(60))
        .unwrap();
    let after = lock
        .acquire("a", Duration::from_secs(30))
        .await
        .expect("grants resume on the new primary");
    eprintln!(
        "failover: {:?} from the kill to a grant on {promoted}",
        at.elapsed()
    );
    assert!(
        after.fencing_token() > fence_before,
        "tokens keep increasing"
    );
    // The lease held through the failover survived the promotion: nobody else has it.
    // A one-shot call can still meet a connection Sentinel closed as it reconfigured the
    // servers (CI saw a broken pipe): a retryable error, retried as a caller would.
    assert!(
        retried(|| held.is_held()).await,
        "the acknowledged lease survived"
    );
    for _ in 0..3 {
        retried(|| lock.ping()).await;
    }
    assert!(!blocked.is_finished(), "the waiter did not get a held lock");
    held.release().await.unwrap();
    let waiter = blocked
        .await
        .unwrap()
        .expect("the blocked waiter is granted");
    waiter.release().await.unwrap();
    after.release().await.unwrap();

    // Pub/sub hand-off on the new primary.
    let h = lock.acquire("h", Duration::from_secs(5)).await.unwrap();
    let w = tokio::spawn({
        let lock = lock.clone();
        async move {
            let g = lock.acquire("h", Duration::from_secs(10)).await.unwrap();
            (Instant::now(), g)
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let released = Instant::now();
    h.release().await.unwrap();
    let (got, g) = w.await.unwrap();
    assert!(
        got - released < Duration::from_millis(300),
        "hand-off took {:?}",
        got - released
    );
    g.release().await.unwrap();

    // Every kind works on the new primary.
    let fair = lock
        .fair()
        .acquire("f", Duration::from_secs(5))
        .await
        .unwrap();
    let rw = lock.rw();
    let read = rw
        .read_lock()
        .acquire("r", Duration::from_secs(5))
        .await
        .unwrap();
    let sem = Arc::new(lock.semaphore(2).unwrap());
    let two = sem
        .acquire_permits("s", 2, AcquireOptions::new().wait(Duration::from_secs(5)))
        .await
        .unwrap();
    for g in [fair, read, two] {
        assert!(g.release().await.unwrap());
    }
}

/// Found by an outside review: with `min_replicas`, WAITs queued behind each other on the
/// one shared connection; 40 callers with a paused replica took 4.7 s, timed out, and left
/// grants in Redis that nobody held. Each waiting write now has a connection of its own:
/// every caller is refused promptly and nothing is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_grants_under_load_leave_nothing_behind() {
    let primary = RedisServer::start().unwrap();
    let mut replica = RedisServer::builder()
        .replica_of(primary.port())
        .start()
        .unwrap();
    let lock = RedisLock::builder(primary.url())
        .min_replicas(1, Duration::from_millis(100))
        .build()
        .unwrap();
    // Until the replica is in sync: bounded.
    let mut synced = false;
    for _ in 0..100 {
        if let Ok(Some(g)) = lock.try_acquire("sync").await {
            g.release().await.unwrap();
            synced = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(synced, "the replica synced");
    replica.pause().unwrap();
    let started = Instant::now();
    let callers: Vec<_> = (0..40)
        .map(|i| {
            let lock = lock.clone();
            tokio::spawn(async move { lock.try_acquire(&format!("c{i}")).await })
        })
        .collect();
    for c in callers {
        let r = c.await.unwrap();
        assert!(
            matches!(r, Err(ref e) if e.is_retryable()),
            "refused with a retryable error: {r:?}"
        );
    }
    let took = started.elapsed();
    // Bounded wait for the releases to land.
    let mut left = Vec::new();
    for _ in 0..40 {
        left = keys(&primary)
            .into_iter()
            .filter(|k| k.starts_with("distkit:lock:{c") && !k.ends_with(":fence"))
            .collect();
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        left.is_empty(),
        "grants left behind: {left:?} (after {took:?})"
    );
    replica.resume().unwrap();
}

/// Found by an outside review: an acquire could run past its wait by an op timeout or more
/// when the server stopped answering mid-wait. Later attempts now end with the wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquire_ends_with_its_wait_when_the_server_stops_answering() {
    let mut server = RedisServer::start().unwrap();
    let lock = RedisLock::new(server.url()).unwrap();
    let held = lock.try_acquire("slow").await.unwrap().unwrap();
    let waiter = tokio::spawn({
        let lock = lock.clone();
        async move {
            let t = Instant::now();
            let r = lock.acquire("slow", Duration::from_millis(600)).await;
            (t.elapsed(), r.map(|g| g.fencing_token()))
        }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    server.pause().unwrap();
    let (took, r) = waiter.await.unwrap();
    server.resume().unwrap();
    assert!(r.is_err(), "{r:?}");
    // The op timeout is 2 s: an attempt in flight would have held it past 2.1 s.
    assert!(
        took < Duration::from_millis(1200),
        "the acquire took {took:?}"
    );
    drop(held);
}
