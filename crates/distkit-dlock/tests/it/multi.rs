//! `MultiLock` on the in-process and the Redis backend: overlapping sets never overlap in
//! time, a set is taken whole or not at all, and a dropped acquisition holds nothing.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use distkit_core::{AcquireOptions, DistributedLock, Error};
use distkit_dlock::{LocalLock, MAX_MULTI, MultiLock};
use rand::{Rng, SeedableRng};

use crate::server_and_lock;

/// 6 tasks x 25 rounds, each taking a random set of 1 to 4 of 6 names and checking, inside,
/// that no other task is inside with any of them.
async fn overlapping_sets_exclude_each_other(locks: Arc<dyn DistributedLock>) {
    let multi = MultiLock::new(locks);
    let inside: Arc<Mutex<HashSet<String>>> = Arc::default();
    let names: Vec<String> = (0..6).map(|i| format!("m{i}")).collect();
    let tasks: Vec<_> = (0..6u64)
        .map(|t| {
            let (multi, inside, names) = (multi.clone(), inside.clone(), names.clone());
            tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(t);
                for _ in 0..25 {
                    let k = rng.random_range(1..=4);
                    let mut set: Vec<&str> = names.iter().map(String::as_str).collect();
                    for i in (1..set.len()).rev() {
                        set.swap(i, rng.random_range(0..=i));
                    }
                    set.truncate(k);
                    let opts = AcquireOptions::new()
                        .ttl(Duration::from_secs(10))
                        .wait(Duration::from_secs(10));
                    let guard = multi
                        .acquire(&set, opts)
                        .await
                        .expect("the set within 10 s");
                    {
                        let mut now = inside.lock().unwrap();
                        for n in &set {
                            assert!(now.insert((*n).to_owned()), "{n} was already inside");
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(rng.random_range(0..3))).await;
                    {
                        let mut now = inside.lock().unwrap();
                        for n in &set {
                            now.remove(*n);
                        }
                    }
                    assert!(guard.release().await.unwrap(), "every lock was still held");
                }
            })
        })
        .collect();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("no deadlock")
            .unwrap();
    }
}

async fn all_or_nothing_and_cancel_safe(locks: Arc<dyn DistributedLock>) {
    let multi = MultiLock::new(locks.clone());
    let b = locks.acquire("b", Duration::ZERO).await.unwrap();
    // b is held: the set is refused and a and c stay free.
    assert!(multi.try_acquire(&["c", "a", "b"]).await.unwrap().is_none());
    let a = locks
        .acquire("a", Duration::ZERO)
        .await
        .expect("a was released");
    a.release().await.unwrap();
    // An acquisition waiting for b, dropped halfway: a (taken first) is released.
    let waiting = multi.acquire(
        &["a", "b"],
        AcquireOptions::new().wait(Duration::from_secs(30)),
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(100), waiting)
            .await
            .is_err()
    );
    let mut freed = false;
    for _ in 0..100 {
        if let Some(g) = locks.try_acquire("a").await.unwrap() {
            g.release().await.unwrap();
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(freed, "the dropped acquisition left a held");
    // Once b is free the set is taken whole, each name with its own fencing token.
    b.release().await.unwrap();
    let mut set = multi
        .acquire(
            &["b", "a"],
            AcquireOptions::new().wait(Duration::from_secs(1)),
        )
        .await
        .unwrap();
    assert_eq!(set.names().collect::<Vec<_>>(), ["a", "b"]);
    assert!(set.fencing_token("a").is_some() && set.fencing_token("x").is_none());
    set.extend(Duration::from_secs(5)).await.unwrap();
    assert!(set.release().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sets_are_refused() {
    let multi = MultiLock::new(Arc::new(LocalLock::new(Duration::from_secs(1)).unwrap()));
    let many: Vec<String> = (0..=MAX_MULTI).map(|i| format!("n{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    for set in [&[][..], &["a", "a"][..], &many[..], &["ok", ""][..]] {
        let e = multi.try_acquire(set).await.unwrap_err();
        assert!(matches!(e, Error::InvalidInput { .. }), "{set:?}: {e:?}");
    }
    // Nothing was left held by the refused sets.
    assert!(multi.try_acquire(&["ok", "a"]).await.unwrap().is_some());
    // A wait of Duration::MAX is a wait without end, not a panic.
    let g = multi
        .acquire(&["x"], AcquireOptions::new().wait(Duration::MAX))
        .await
        .unwrap();
    g.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_multi_lock() {
    let locks: Arc<dyn DistributedLock> = Arc::new(LocalLock::new(Duration::from_secs(5)).unwrap());
    overlapping_sets_exclude_each_other(locks.clone()).await;
    all_or_nothing_and_cancel_safe(locks).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_multi_lock() {
    let (_server, lock) = server_and_lock(Duration::from_secs(5));
    let locks: Arc<dyn DistributedLock> = Arc::new(lock);
    overlapping_sets_exclude_each_other(locks.clone()).await;
    all_or_nothing_and_cancel_safe(locks).await;
}

/// Found by an outside review: a set whose TTL was shorter than its wait lost its first lock
/// while waiting for the next, then failed as "busy" long before its wait ran out. The locks
/// already taken are renewed while a later one is waited for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_ttl_set_keeps_its_early_locks_through_a_long_wait() {
    let locks: Arc<dyn DistributedLock> = Arc::new(LocalLock::new(Duration::from_secs(5)).unwrap());
    let multi = MultiLock::new(locks.clone());
    let b = locks.acquire("b", Duration::ZERO).await.unwrap();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        b.release().await.unwrap();
    });
    let set = multi
        .acquire(
            &["a", "b"],
            AcquireOptions::new()
                .ttl(Duration::from_millis(400))
                .wait(Duration::from_secs(3)),
        )
        .await
        .expect("a was kept alive while b was waited for");
    for g in set.guards() {
        assert!(g.is_held().await.unwrap(), "{} is held", g.name());
    }
    assert!(set.release().await.unwrap());
}

/// Found by an outside review: when Redis stalled while a set waited, the set failed but the
/// locks it had taken stayed held for their whole TTL (their releases timed out and nobody
/// tried again). A release the backend cannot take is now retried while the lease lasts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_that_fails_in_a_redis_stall_frees_its_locks_when_redis_is_back() {
    let (mut server, lock) = server_and_lock(Duration::from_secs(5));
    let locks: Arc<dyn DistributedLock> = Arc::new(lock);
    let multi = MultiLock::new(locks.clone());
    let _x = locks.acquire("x", Duration::ZERO).await.unwrap();
    let waiting = tokio::spawn(async move {
        multi
            .acquire(
                &["a", "x"],
                AcquireOptions::new()
                    .ttl(Duration::from_secs(60))
                    .wait(Duration::from_secs(1)),
            )
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.pause().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.resume().unwrap();
    assert!(waiting.await.unwrap().is_err(), "the set failed");
    let start = std::time::Instant::now();
    loop {
        if let Some(a) = locks.try_acquire("a").await.unwrap() {
            a.release().await.unwrap();
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "a stayed held after Redis came back (its TTL is 60 s)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
