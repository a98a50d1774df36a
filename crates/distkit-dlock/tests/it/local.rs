use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use distkit_core::{AcquireOptions, DistributedLock, Error, LeaseStatus};
use distkit_dlock::LocalLock;

#[tokio::test]
async fn same_contract_as_redis() {
    let locks: Arc<dyn DistributedLock> =
        Arc::new(LocalLock::new(Duration::from_millis(200)).unwrap());
    let mut a = locks.try_acquire("x").await.unwrap().unwrap();
    assert!(locks.try_acquire("x").await.unwrap().is_none());
    a.extend(Duration::from_millis(200)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b = locks.try_acquire("x").await.unwrap().expect("a expired");
    assert!(b.fencing_token() > a.fencing_token());
    assert!(!a.is_held().await.unwrap());
    assert!(matches!(
        a.extend(Duration::from_secs(1)).await,
        Err(Error::NotHeld { .. })
    ));
    assert!(!locks.release(a.lease()).await.unwrap());
    assert!(b.release().await.unwrap());
}

#[tokio::test]
async fn waiters_wake_on_release_and_at_expiry() {
    let locks = LocalLock::new(Duration::from_secs(30)).unwrap();
    let holder = locks.try_acquire("w").await.unwrap().unwrap();
    let l2 = locks.clone();
    let waiter = tokio::spawn(async move {
        l2.acquire("w", Duration::from_secs(5))
            .await
            .map(|_| Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let released = Instant::now();
    holder.release().await.unwrap();
    let got = waiter.await.unwrap().unwrap();
    assert!(got - released < Duration::from_millis(200));

    let short = LocalLock::new(Duration::from_millis(100)).unwrap();
    std::mem::forget(short.try_acquire("e").await.unwrap().unwrap());
    let start = Instant::now();
    short.acquire("e", Duration::from_secs(2)).await.unwrap();
    assert!(start.elapsed() < Duration::from_millis(1000));
}

#[tokio::test]
async fn mutual_exclusion_under_contention() {
    let locks = LocalLock::new(Duration::from_secs(10)).unwrap();
    let inside = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (locks, inside) = (locks.clone(), inside.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..50 {
                let g = locks.acquire("m", Duration::from_secs(10)).await.unwrap();
                assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0);
                tokio::task::yield_now().await;
                inside.fetch_sub(1, Ordering::SeqCst);
                g.release().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn watchdog_renews_and_stops() {
    let locks = LocalLock::new(Duration::from_millis(150)).unwrap();
    let g = locks
        .acquire_with("d", AcquireOptions::new().watchdog(true))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(g.is_held().await.unwrap());
    assert_eq!(g.status(), LeaseStatus::Held);
    g.release().await.unwrap();
    assert!(locks.try_acquire("d").await.unwrap().is_some());
}

#[tokio::test]
async fn bad_input() {
    assert!(LocalLock::new(Duration::ZERO).is_err());
    let locks = LocalLock::default();
    assert!(matches!(
        locks.try_acquire("").await,
        Err(Error::InvalidInput { .. })
    ));
}

/// Found by an outside review of the node: in-process locks had no cap, so a client taking
/// locks under ever new names and never releasing them grew the table without bound (40,000
/// cost 19 MB). The table now keeps at most its limit of names; expired leases are swept to
/// make room, and past that a new name is refused with a retryable typed error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_table_is_bounded_and_sweeps_expired_leases() {
    assert!(LocalLock::with_limit(Duration::from_secs(1), false, 0).is_err());
    let locks = LocalLock::with_limit(Duration::from_secs(30), false, 3).unwrap();
    let short = AcquireOptions::new().ttl(Duration::from_millis(50));
    let mut held = Vec::new();
    held.push(locks.acquire_with("a", short).await.unwrap());
    for name in ["b", "c"] {
        held.push(locks.acquire(name, Duration::ZERO).await.unwrap());
    }
    let full = locks.acquire("d", Duration::ZERO).await.unwrap_err();
    assert!(
        matches!(full, Error::Unavailable { .. }) && full.is_retryable(),
        "{full:?}"
    );
    // A name already in the table is still served (busy here, not refused for room).
    assert!(matches!(
        locks.acquire("b", Duration::ZERO).await.unwrap_err(),
        Error::Busy { .. }
    ));
    // "a"'s lease runs out without a release: its slot is swept for "d".
    tokio::time::sleep(Duration::from_millis(80)).await;
    let d = locks.acquire("d", Duration::ZERO).await.unwrap();
    assert!(d.fencing_token() > held[2].fencing_token());
}

/// Found by an outside review: in-process fencing tokens started again at 1 after a restart,
/// so a fenced store that had seen the old ones refused every new holder. They are floored
/// by the clock, as the Redis backend's are.
#[tokio::test]
async fn fencing_tokens_keep_rising_across_a_restart() {
    let first = LocalLock::new(Duration::from_secs(5)).unwrap();
    let a = first.acquire("f", Duration::ZERO).await.unwrap();
    let before = a.fencing_token();
    drop(first);
    let restarted = LocalLock::new(Duration::from_secs(5)).unwrap();
    let b = restarted.acquire("f", Duration::ZERO).await.unwrap();
    assert!(
        b.fencing_token() > before,
        "{:?} after {before:?}",
        b.fencing_token()
    );
    let c = restarted.acquire("g", Duration::ZERO).await.unwrap();
    assert!(c.fencing_token() > b.fencing_token());
}
