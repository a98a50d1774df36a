//! Builders and names at their limits, and the tasks a lock service starts: every one ends
//! with its owner, inside or outside a runtime.

use std::time::Duration;

use distkit_core::{AcquireOptions, DistributedLock, Error};
use distkit_dlock::{LocalLock, RedisLock, Redlock};
use distkit_testkit::{RedisServer, tasks};
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestRunner};

fn any_duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::from_nanos(1)),
        Just(Duration::from_millis(1)),
        Just(Duration::from_secs(24 * 3600)),
        Just(Duration::from_secs(24 * 3600 + 1)),
        Just(Duration::MAX),
        (1u64..5_000).prop_map(Duration::from_millis),
    ]
}

fn any_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("x".repeat(256)),
        Just("x".repeat(257)),
        Just("x".repeat(1 << 20)),
        Just("a{b}".to_owned()),
        Just("line\nbreak".to_owned()),
        Just("\u{0}".to_owned()),
        Just("\u{200b}\u{feff}".to_owned()),
        "\\PC{1,40}",
    ]
}

fn typed<T: std::fmt::Debug>(r: &Result<T, Error>) -> bool {
    matches!(
        r,
        Ok(_) | Err(Error::InvalidInput { .. } | Error::TooLarge { .. } | Error::Busy { .. })
    )
}

/// Every setting from zero to `Duration::MAX` and every name: a lock service builds or is
/// refused with a typed error, and one that builds answers every call with a typed result.
#[test]
fn proptests_builders_and_names_at_their_limits() {
    let server = RedisServer::start().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(48);
    let mut runner = TestRunner::new(RunnerConfig {
        failure_persistence: None,
        ..RunnerConfig::with_cases(cases)
    });
    let strategy = (
        prop::collection::vec(any_duration(), 4),
        prop_oneof![Just(0usize), Just(1), Just(usize::MAX), 1usize..16],
        prop_oneof![
            Just(f64::NAN),
            Just(-1.0),
            Just(0.5),
            Just(0.0),
            0.0f64..0.6
        ],
        any_name(),
    );
    runner
        .run(&strategy, |(ds, pool, drift, name)| {
            rt.block_on(async {
                let mut services: Vec<Box<dyn DistributedLock>> = Vec::new();
                let redis = RedisLock::builder(server.url())
                    .ttl(ds[0])
                    .renew_every(ds[1])
                    .op_timeout(ds[2])
                    .pool_size(pool)
                    .build();
                prop_assert!(typed(&redis), "{redis:?}");
                services.extend(redis.ok().map(|l| Box::new(l) as _));
                let redlock = Redlock::builder([server.url()])
                    .ttl(ds[0])
                    .node_timeout(ds[2])
                    .drift_factor(drift)
                    .retry_delay(ds[3], ds[1])
                    .build();
                prop_assert!(typed(&redlock), "{redlock:?}");
                services.extend(redlock.ok().map(|l| Box::new(l) as _));
                let local = LocalLock::new(ds[0]);
                prop_assert!(typed(&local), "{local:?}");
                services.extend(local.ok().map(|l| Box::new(l) as _));
                for s in &services {
                    let opts = AcquireOptions::new().ttl(ds[3]).wait(Duration::ZERO);
                    let r = s.acquire_with(&name, opts).await;
                    // A per-request limit shorter than a loopback round trip (CI drew a 1 ns
                    // Redlock node timeout) makes "unreachable" the right, typed answer.
                    let too_short = ds[2] < Duration::from_micros(100)
                        && matches!(r, Err(Error::Unavailable { .. } | Error::Timeout { .. }));
                    prop_assert!(typed(&r) || too_short, "{s:?} {r:?}");
                    if let Ok(g) = r {
                        let _ = g.release().await;
                    }
                }
                Ok(())
            })
        })
        .unwrap();
}

/// The pub/sub reader of a lock service and the watchdog of a guard end with their owners.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_task_outlives_the_lock_service_or_the_guard() {
    let server = RedisServer::start().unwrap();
    let base = tasks::alive();
    {
        let lock = RedisLock::builder(server.url())
            .ttl(Duration::from_millis(300))
            .build()
            .unwrap();
        // A watchdog task per guard.
        let g = lock
            .acquire_with("life", AcquireOptions::new().watchdog(true))
            .await
            .unwrap();
        // A contended acquire starts the pub/sub reader.
        let waiter = tokio::spawn({
            let lock = lock.clone();
            async move {
                lock.acquire_with("life", AcquireOptions::new().wait(Duration::from_secs(5)))
                    .await
            }
        });
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(g.is_held().await.unwrap(), "the watchdog renewed");
        g.release().await.unwrap();
        waiter.await.unwrap().unwrap().release().await.unwrap();
    }
    tasks::settle(base, Duration::from_secs(3))
        .await
        .unwrap_or_else(|n| panic!("{n} tasks alive after the lock service went, {base} before"));
}

/// A guard dropped outside any runtime cannot release in the background: it says so and the
/// lease runs out with its TTL (the documented fallback); nothing panics.
#[test]
fn a_guard_dropped_outside_a_runtime_expires_with_its_ttl() {
    let server = RedisServer::start().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let lock = RedisLock::builder(server.url())
        .ttl(Duration::from_millis(300))
        .build()
        .unwrap();
    let g = rt.block_on(lock.try_acquire("outside")).unwrap().unwrap();
    drop(g); // outside the runtime
    rt.block_on(async {
        assert!(
            lock.try_acquire("outside").await.unwrap().is_none(),
            "still held"
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(
            lock.try_acquire("outside").await.unwrap().is_some(),
            "expired"
        );
    });
    drop(lock); // the service too, outside the runtime
    drop(rt);
}
