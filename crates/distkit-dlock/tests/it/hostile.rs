//! Hostile input through the public API: waits and TTLs at their limits, the configured
//! command timeout, keys that another program wrote, and the first round trip of a wait.

use std::sync::Arc;
use std::time::{Duration, Instant};

use distkit_core::{AcquireOptions, DistributedLock, Error};
use distkit_dlock::{LocalLock, RedisLock, Redlock};
use distkit_testkit::{RedisServer, Reply};

fn backends(servers: &[RedisServer]) -> Vec<Arc<dyn DistributedLock>> {
    let ttl = Duration::from_secs(5);
    vec![
        Arc::new(LocalLock::new(ttl).unwrap()),
        Arc::new(
            RedisLock::builder(servers[0].url())
                .ttl(ttl)
                .build()
                .unwrap(),
        ),
        Arc::new(
            Redlock::builder(servers.iter().map(RedisServer::url).collect::<Vec<_>>())
                .ttl(ttl)
                .build()
                .unwrap(),
        ),
    ]
}

/// The first wave panicked with "overflow when adding duration to instant" for a wait of
/// `Duration::MAX`, free or held. A wait too long for the clock means "wait forever".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_of_duration_max_waits_forever_without_panicking() {
    let servers = RedisServer::start_many(3).unwrap();
    for (i, lock) in backends(&servers).into_iter().enumerate() {
        let name = format!("max-wait-{i}");
        let forever = AcquireOptions::new().wait(Duration::MAX);
        // Free: granted at once.
        let g = lock.acquire_with(&name, forever).await.unwrap();
        // Held: the waiter waits, and gets the lock when it is released.
        let waiter = {
            let (lock, name) = (lock.clone(), name.clone());
            tokio::spawn(async move { lock.acquire_with(&name, forever).await })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !waiter.is_finished(),
            "backend {i} gave up a wait of Duration::MAX"
        );
        g.release().await.unwrap();
        let g2 = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the waiter is granted after the release")
            .unwrap()
            .unwrap();
        g2.release().await.unwrap();
        // Long, but not MAX: still no overflow anywhere.
        for wait in [
            Duration::MAX - Duration::from_nanos(1),
            Duration::from_secs(u64::MAX / 2),
        ] {
            let g = lock
                .acquire_with(&name, AcquireOptions::new().wait(wait))
                .await
                .unwrap();
            g.release().await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttls_at_the_limits_are_typed_errors() {
    let servers = RedisServer::start_many(3).unwrap();
    for (i, lock) in backends(&servers).into_iter().enumerate() {
        for ttl in [
            Duration::ZERO,
            Duration::from_nanos(1),
            Duration::from_micros(999),
            Duration::from_secs(24 * 3600 + 1),
            Duration::MAX,
        ] {
            let r = lock
                .acquire_with("ttl", AcquireOptions::new().ttl(ttl).wait(Duration::MAX))
                .await;
            assert!(
                matches!(r, Err(Error::InvalidInput { what: "ttl", .. })),
                "backend {i}, ttl {ttl:?}: {r:?}"
            );
            let mut g = lock.try_acquire("ttl-ext").await.unwrap().unwrap();
            let r = g.extend(ttl).await;
            assert!(
                matches!(r, Err(Error::InvalidInput { .. })),
                "backend {i}: {r:?}"
            );
            // A refused extension loses nothing: the lease is still held.
            assert!(g.is_held().await.unwrap(), "backend {i}");
            g.release().await.unwrap();
        }
    }
}

/// The first wave's `op_timeout` had no effect: the client's own 500 ms response timeout cut
/// every command, and timeouts said "timed out after 0ns".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configured_command_timeout_is_the_one_that_applies() {
    let mut server = RedisServer::start().unwrap();
    let patient = RedisLock::builder(server.url())
        .op_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let hasty = RedisLock::builder(server.url())
        .op_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    // Connect both first, so the pause hits a command, not a connect.
    patient.ping().await.unwrap();
    hasty.ping().await.unwrap();
    server.pause().unwrap();
    let a = tokio::spawn({
        let l = patient.clone();
        async move { l.try_acquire("slow").await }
    });
    let started = Instant::now();
    let b = hasty.try_acquire("slow-too").await;
    let hasty_took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(1200).saturating_sub(started.elapsed())).await;
    server.resume().unwrap();
    // 1.2 s of silence: within 5 s, so the patient one is granted.
    let a = a.await.unwrap();
    assert!(matches!(a, Ok(Some(_))), "{a:?}");
    match b {
        Err(Error::Timeout { after, .. }) => {
            assert_eq!(
                after,
                Duration::from_millis(300),
                "the real limit is reported"
            );
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(hasty_took >= Duration::from_millis(300), "{hasty_took:?}");
}

/// The first wave subscribed before its first attempt, so an uncontended acquire with a
/// wait paid an extra round trip. It tries first and subscribes only when the lock is held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncontended_acquire_with_a_wait_does_not_subscribe() {
    let server = RedisServer::start().unwrap();
    let lock = RedisLock::new(server.url()).unwrap();
    let subscribes = || -> u64 {
        let Ok(Reply::Bulk(info)) = server.command(&["INFO", "commandstats"]) else {
            panic!("INFO answered");
        };
        let info = String::from_utf8_lossy(&info).into_owned();
        info.lines()
            .find(|l| l.starts_with("cmdstat_subscribe:"))
            .and_then(|l| l.split("calls=").nth(1))
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    for _ in 0..20 {
        let g = lock
            .acquire_with("quiet", AcquireOptions::new().wait(Duration::from_secs(1)))
            .await
            .unwrap();
        g.release().await.unwrap();
    }
    assert_eq!(subscribes(), 0, "an uncontended acquire subscribed");
    // Contended: it does subscribe, and the release wakes it at once.
    let g = lock.try_acquire("busy").await.unwrap().unwrap();
    let waiter = tokio::spawn({
        let lock = lock.clone();
        async move {
            lock.acquire_with("busy", AcquireOptions::new().wait(Duration::from_secs(10)))
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(subscribes() >= 1);
    let released = Instant::now();
    g.release().await.unwrap();
    waiter.await.unwrap().unwrap().release().await.unwrap();
    // Woken by the message, not by the one-second safety-net poll.
    assert!(
        released.elapsed() < Duration::from_millis(500),
        "{:?}",
        released.elapsed()
    );
}

/// The first wave reported a bad fencing counter as a foreign value under the lock key.
/// The error names the key that is wrong, and counters where Lua's doubles stop counting
/// exactly are refused rather than handing out a token that does not grow.
#[tokio::test]
async fn a_bad_fencing_counter_is_named_and_refused() {
    let server = RedisServer::start().unwrap();
    let lock = RedisLock::new(server.url()).unwrap();
    for bad in [
        "abc",
        "",
        "1.5",
        "-3",
        "nan",
        "inf",
        "9007199254740991",
        "1e300",
    ] {
        server
            .command(&["SET", "distkit:lock:{fenced}:fence", bad])
            .unwrap();
        let r = lock.try_acquire("fenced").await;
        match r {
            Err(Error::Protocol { reason, .. }) => {
                assert!(
                    reason.contains("distkit:lock:{fenced}:fence"),
                    "counter {bad:?}: {reason}"
                );
                assert!(!reason.contains("lock key"), "{reason}");
            }
            other => panic!("counter {bad:?}: {other:?}"),
        }
        // Nothing was granted.
        assert_eq!(
            server.command(&["GET", "distkit:lock:{fenced}"]).unwrap(),
            Reply::Nil
        );
    }
    // A foreign value under the lock key itself is named as such.
    server
        .command(&["SET", "distkit:lock:{foreign}", "not a token"])
        .unwrap();
    match lock.try_acquire("foreign").await {
        Err(Error::Protocol { reason, .. }) => {
            assert!(
                reason.contains("lock key distkit:lock:{foreign}"),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    // A large but exact counter still works and the token grows past it.
    server
        .command(&["SET", "distkit:lock:{fenced}:fence", "9007199254740000"])
        .unwrap();
    let g = lock.try_acquire("fenced").await.unwrap().unwrap();
    assert!(g.fencing_token().get() > 9_007_199_254_740_000);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

    /// `check_name` on any text (empty, control characters, braces, multibyte, over the
    /// limit): never a panic; Ok exactly for 1 to MAX_NAME_LEN bytes without control
    /// characters or braces, and the error names what was checked.
    #[test]
    fn check_name_takes_any_text(name in "\\PC{0,300}|[\\x00-\\x7f{}]{0,8}|.{250,260}") {
        let r = distkit_dlock::check_name("thing", &name);
        let fine = !name.is_empty()
            && name.len() <= distkit_dlock::MAX_NAME_LEN
            && !name.chars().any(|c| c.is_control() || c == '{' || c == '}');
        proptest::prop_assert_eq!(r.is_ok(), fine, "{:?}: {:?}", name, r);
        if let Err(e) = r {
            proptest::prop_assert!(e.to_string().contains("thing"), "{}", e);
        }
    }
}

/// `connection()` cancelled at random points, held past the pool's size, and dropped outside
/// a runtime: the pool stays whole, the locks keep working, nothing panics.
#[test]
fn lent_connections_survive_cancellation_exhaustion_and_a_dropped_runtime() {
    let server = RedisServer::start().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let held = rt.block_on(async {
        let lock = RedisLock::builder(server.url())
            .pool_size(2)
            .op_timeout(Duration::from_millis(300))
            .build()
            .unwrap();
        // Cancelled halfway, 200 times (bounded).
        for i in 0..200u64 {
            let cut = Duration::from_micros(i * 37 % 1500);
            let _ = tokio::time::timeout(cut, lock.connection()).await;
        }
        // Every lent slot came back: both can be held at once, and a third waits out the op
        // timeout with a typed, retryable error while the locks still work.
        let a = lock.connection().await.unwrap();
        let b = lock.connection().await.unwrap();
        let third = lock.connection().await.unwrap_err();
        assert!(matches!(third, Error::Timeout { .. }), "{third:?}");
        assert!(third.is_retryable());
        let g = lock.try_acquire("lent").await.unwrap().expect("free");
        g.release().await.unwrap();
        drop(a);
        let again = lock.connection().await.unwrap();
        (lock, b, again)
    });
    // Dropped after their runtime is gone: no panic.
    drop(rt);
    drop(held);
}
