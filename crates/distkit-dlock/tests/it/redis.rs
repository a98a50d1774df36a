use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use distkit_core::{AcquireOptions, DistributedLock, Error, FencingToken, LeaseStatus};
use distkit_dlock::RedisLock;
use distkit_testkit::{RedisServer, Reply};

use crate::server_and_lock;

#[tokio::test]
async fn grant_is_exclusive_and_release_frees_it() {
    let (server, lock) = server_and_lock(Duration::from_secs(10));
    let a = lock.try_acquire("orders").await.unwrap().expect("free");
    assert!(
        lock.try_acquire("orders").await.unwrap().is_none(),
        "held by a"
    );
    assert!(a.is_held().await.unwrap());
    // The key holds a's token with a ttl.
    let stored = server.command(&["GET", "distkit:lock:{orders}"]).unwrap();
    assert_eq!(stored.as_text().unwrap(), a.token().to_string());
    match server.command(&["PTTL", "distkit:lock:{orders}"]).unwrap() {
        Reply::Integer(ms) => assert!(ms > 0 && ms <= 10_000, "pttl {ms}"),
        other => panic!("PTTL gave {other:?}"),
    }
    assert!(a.release().await.unwrap());
    assert_eq!(
        server.command(&["GET", "distkit:lock:{orders}"]).unwrap(),
        Reply::Nil
    );
    assert!(lock.try_acquire("orders").await.unwrap().is_some());
}

#[tokio::test]
async fn fencing_tokens_strictly_increase() {
    let (_server, lock) = server_and_lock(Duration::from_secs(10));
    let mut last = FencingToken::default();
    for _ in 0..20 {
        let g = lock.try_acquire("fenced").await.unwrap().unwrap();
        assert!(
            g.fencing_token() > last,
            "{} after {last}",
            g.fencing_token()
        );
        last = g.fencing_token();
        g.release().await.unwrap();
    }
    assert_eq!(lock.last_fencing_token("fenced").await.unwrap(), Some(last));
}

#[tokio::test]
async fn fencing_tokens_survive_a_restart_that_loses_the_counter() {
    let (mut server, lock) = server_and_lock(Duration::from_secs(10));
    let before = lock
        .try_acquire("f")
        .await
        .unwrap()
        .unwrap()
        .fencing_token();
    server.restart().unwrap(); // persistence is off: every key is gone
    let mut after = None;
    for _ in 0..50 {
        match lock.try_acquire("f").await {
            Ok(Some(g)) => {
                after = Some(g.fencing_token());
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let after = after.expect("the lock works again after the restart");
    assert!(after > before, "{after} after restart must exceed {before}");
}

#[tokio::test]
async fn release_and_extend_never_touch_another_holders_lock() {
    let (server, lock) = server_and_lock(Duration::from_millis(150));
    let mut a = lock.try_acquire("shared").await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await; // a's lease expires
    let b = lock
        .try_acquire("shared")
        .await
        .unwrap()
        .expect("expired, so free");
    assert!(!a.is_held().await.unwrap());
    let err = a.extend(Duration::from_secs(5)).await.unwrap_err();
    assert!(matches!(err, Error::NotHeld { .. }), "{err}");
    assert!(
        !lock.release(a.lease()).await.unwrap(),
        "a's release must be a no-op"
    );
    let stored = server.command(&["GET", "distkit:lock:{shared}"]).unwrap();
    assert_eq!(stored.as_text().unwrap(), b.token().to_string());
    assert!(b.is_held().await.unwrap());
}

#[tokio::test]
async fn extend_pushes_the_expiry() {
    let (server, lock) = server_and_lock(Duration::from_millis(300));
    let mut g = lock.try_acquire("ext").await.unwrap().unwrap();
    g.extend(Duration::from_secs(20)).await.unwrap();
    match server.command(&["PTTL", "distkit:lock:{ext}"]).unwrap() {
        Reply::Integer(ms) => assert!(ms > 10_000, "pttl {ms}"),
        other => panic!("{other:?}"),
    }
    assert!(g.lease().valid_until() > Instant::now() + Duration::from_secs(10));
}

#[tokio::test]
async fn a_waiter_gets_the_lock_when_the_holder_releases() {
    let (_server, lock) = server_and_lock(Duration::from_secs(30));
    let holder = lock.try_acquire("handoff").await.unwrap().unwrap();
    let l2 = lock.clone();
    let waiter = tokio::spawn(async move {
        let g = l2
            .acquire("handoff", Duration::from_secs(10))
            .await
            .unwrap();
        (Instant::now(), g.fencing_token())
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let fence = holder.fencing_token();
    let released = Instant::now();
    holder.release().await.unwrap();
    let (got, token) = waiter.await.unwrap();
    assert!(token > fence);
    // Woken by the release message, not by the 30 s ttl or a slow poll (generous bound).
    assert!(
        got - released < Duration::from_millis(500),
        "{:?}",
        got - released
    );
}

#[tokio::test]
async fn a_waiter_gets_the_lock_when_a_crashed_holders_ttl_runs_out() {
    let (_server, lock) = server_and_lock(Duration::from_millis(300));
    let holder = lock.try_acquire("crash").await.unwrap().unwrap();
    std::mem::forget(holder); // a crashed holder: no release, no message
    let start = Instant::now();
    let g = lock.acquire("crash", Duration::from_secs(5)).await.unwrap();
    let waited = start.elapsed();
    assert!(g.is_held().await.unwrap());
    assert!(
        waited < Duration::from_millis(1500),
        "woke at expiry, waited {waited:?}"
    );
}

#[tokio::test]
async fn wait_limit_gives_a_busy_error() {
    let (_server, lock) = server_and_lock(Duration::from_secs(30));
    let _holder = lock.try_acquire("busy").await.unwrap().unwrap();
    let start = Instant::now();
    let err = lock
        .acquire("busy", Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Busy { .. }), "{err}");
    assert!(err.is_retryable());
    assert!(start.elapsed() >= Duration::from_millis(200));
    assert!(start.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn dropped_guard_releases_in_the_background() {
    let (server, lock) = server_and_lock(Duration::from_secs(30));
    drop(lock.try_acquire("dropped").await.unwrap().unwrap());
    let mut free = false;
    for _ in 0..100 {
        if server
            .command(&["EXISTS", "distkit:lock:{dropped}"])
            .unwrap()
            == Reply::Integer(0)
        {
            free = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(free, "the drop released the lock long before its 30 s ttl");
}

#[tokio::test]
async fn a_cancelled_acquire_leaves_no_orphan() {
    let (mut server, lock) = server_and_lock(Duration::from_secs(30));
    // Warm up: a pooled connection exists and redis has the script cached, so the cancelled
    // attempt's EVALSHA is the grant itself.
    lock.try_acquire("warm")
        .await
        .unwrap()
        .unwrap()
        .release()
        .await
        .unwrap();
    // Pause redis so the grant is in flight when the caller gives up.
    server.pause().unwrap();
    let l2 = lock.clone();
    let attempt = tokio::spawn(async move { l2.try_acquire("cancel").await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    attempt.abort();
    let _ = attempt.await;
    server.resume().unwrap();
    // The script ran when redis woke up; the cancelled caller's release follows it.
    let mut free = false;
    for _ in 0..100 {
        if server
            .command(&["EXISTS", "distkit:lock:{cancel}"])
            .unwrap()
            == Reply::Integer(0)
        {
            free = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(free, "no orphaned lock until the 30 s ttl");
    // The grant did happen (its fencing counter exists), and was given back.
    assert_ne!(
        server
            .command(&["GET", "distkit:lock:{cancel}:fence"])
            .unwrap(),
        Reply::Nil
    );
    assert!(lock.try_acquire("cancel").await.unwrap().is_some());
}

#[tokio::test]
async fn watchdog_keeps_the_lock_for_many_ttls_and_stops_at_release() {
    let (server, lock) = server_and_lock(Duration::from_millis(300));
    let opts = AcquireOptions::new().watchdog(true);
    let g = lock.acquire_with("dog", opts).await.unwrap();
    tokio::time::sleep(Duration::from_millis(3000)).await; // 10 x ttl
    assert!(g.is_held().await.unwrap(), "renewed all along");
    assert_eq!(g.status(), LeaseStatus::Held);
    g.release().await.unwrap();
    // Gone, and it stays gone: no renewal after release.
    for _ in 0..5 {
        assert_eq!(
            server.command(&["EXISTS", "distkit:lock:{dog}"]).unwrap(),
            Reply::Integer(0)
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

#[tokio::test]
async fn watchdog_reports_loss_when_the_key_is_deleted() {
    let (server, lock) = server_and_lock(Duration::from_millis(600));
    let g = lock
        .acquire_with("lost", AcquireOptions::new().watchdog(true))
        .await
        .unwrap();
    server.command(&["DEL", "distkit:lock:{lost}"]).unwrap();
    let deleted = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(5), g.lost())
        .await
        .unwrap();
    assert!(matches!(status, LeaseStatus::Lost { .. }));
    // Within one renewal interval (ttl / 3 = 200 ms), plus a generous scheduling margin.
    assert!(
        deleted.elapsed() < Duration::from_millis(200 + 400),
        "{:?}",
        deleted.elapsed()
    );
}

#[tokio::test]
async fn watchdog_survives_a_dropped_connection() {
    let (server, lock) = server_and_lock(Duration::from_millis(600));
    let g = lock
        .acquire_with("reconnect", AcquireOptions::new().watchdog(true))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Drop every client connection, as a proxy restart or network blip would.
    let killed = server
        .command(&["CLIENT", "KILL", "TYPE", "normal"])
        .unwrap();
    assert!(matches!(killed, Reply::Integer(n) if n >= 1), "{killed:?}");
    tokio::time::sleep(Duration::from_millis(1800)).await; // three ttls
    assert_eq!(
        g.status(),
        LeaseStatus::Held,
        "renewals resumed on a new connection"
    );
    assert!(g.is_held().await.unwrap());
    let stored = server
        .command(&["GET", "distkit:lock:{reconnect}"])
        .unwrap();
    assert_eq!(stored.as_text().unwrap(), g.token().to_string());
}

#[tokio::test]
async fn watchdog_reports_loss_when_redis_is_gone() {
    let (mut server, lock) = server_and_lock(Duration::from_millis(300));
    let g = lock
        .acquire_with("gone", AcquireOptions::new().watchdog(true))
        .await
        .unwrap();
    server.kill().unwrap();
    let status = tokio::time::timeout(Duration::from_secs(5), g.lost())
        .await
        .unwrap();
    match status {
        LeaseStatus::Lost { reason } => assert!(reason.contains("ran out"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn many_tasks_never_overlap() {
    let (_server, lock) = server_and_lock(Duration::from_secs(10));
    let inside = Arc::new(AtomicU64::new(0));
    let grants = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (lock, inside, grants) = (lock.clone(), inside.clone(), grants.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..25 {
                let g = lock
                    .acquire("mutex", Duration::from_secs(20))
                    .await
                    .unwrap();
                assert_eq!(
                    inside.fetch_add(1, Ordering::SeqCst),
                    0,
                    "two holders at once"
                );
                tokio::task::yield_now().await;
                inside.fetch_sub(1, Ordering::SeqCst);
                grants.fetch_add(1, Ordering::SeqCst);
                g.release().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(grants.load(Ordering::SeqCst), 200);
}

#[tokio::test]
async fn bad_settings_and_names_are_typed_errors() {
    for b in [
        RedisLock::builder("redis://127.0.0.1:1/").ttl(Duration::ZERO),
        RedisLock::builder("redis://127.0.0.1:1/")
            .ttl(Duration::from_secs(10))
            .renew_every(Duration::from_secs(10)),
        RedisLock::builder("redis://127.0.0.1:1/").op_timeout(Duration::ZERO),
        RedisLock::builder("redis://127.0.0.1:1/").pool_size(0),
        RedisLock::builder("redis://127.0.0.1:1/").key_prefix("a{b"),
        RedisLock::builder("not a url"),
    ] {
        let e = b.build().unwrap_err();
        assert!(matches!(e, Error::InvalidInput { .. }), "{e}");
    }
    let (_server, lock) = server_and_lock(Duration::from_secs(1));
    for name in ["", "a{b}", "nul\0"] {
        let e = lock.try_acquire(name).await.unwrap_err();
        assert!(matches!(e, Error::InvalidInput { .. }), "{e}");
    }
    let e = lock
        .acquire_with("ok", AcquireOptions::new().ttl(Duration::from_micros(10)))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::InvalidInput { .. }), "{e}");
}

#[tokio::test]
async fn redis_down_is_unavailable_and_retryable() {
    let port = distkit_testkit::free_port().unwrap();
    let lock = RedisLock::builder(format!("redis://127.0.0.1:{port}/"))
        .op_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let e = lock.try_acquire("x").await.unwrap_err();
    assert!(e.is_retryable(), "{e}");
    assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");
    // With a wait limit it retries with backoff, then gives up with the last error.
    let start = Instant::now();
    let e = lock
        .acquire("x", Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(e.is_retryable(), "{e}");
    assert!(start.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn restarted_redis_is_usable_again() {
    let (mut server, lock) = server_and_lock(Duration::from_secs(5));
    lock.ping().await.unwrap();
    server.kill().unwrap();
    assert!(lock.try_acquire("r").await.unwrap_err().is_retryable());
    server.restart().unwrap();
    let mut ok = false;
    for _ in 0..50 {
        if let Ok(Some(_)) = lock.try_acquire("r").await {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "the pool reconnects after a restart");
}

#[tokio::test]
async fn slow_redis_is_a_timeout_not_a_hang() {
    let (mut server, lock) = server_and_lock(Duration::from_secs(5));
    lock.ping().await.unwrap();
    server.pause().unwrap();
    let start = Instant::now();
    let e = lock.try_acquire("slow").await.unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    assert!(start.elapsed() < Duration::from_secs(3));
    server.resume().unwrap();
}

#[tokio::test]
async fn wrong_password_is_a_clear_protocol_error() {
    let server = RedisServer::builder().password("right").start().unwrap();
    let url = format!("redis://:wrong@127.0.0.1:{}/", server.port());
    let lock = RedisLock::builder(url)
        .op_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let e = lock.try_acquire("p").await.unwrap_err();
    assert!(!e.is_retryable(), "{e}");
    assert!(e.to_string().contains("credentials"), "{e}");
    let ok = RedisLock::new(server.url()).unwrap();
    assert!(ok.try_acquire("p").await.unwrap().is_some());
}

#[tokio::test]
async fn a_key_holding_another_programs_value_is_refused() {
    let (server, lock) = server_and_lock(Duration::from_secs(5));
    server
        .command(&["SET", "distkit:lock:{cfg}", "some json"])
        .unwrap();
    server
        .command(&["LPUSH", "distkit:lock:{queue}", "job"])
        .unwrap();
    for name in ["cfg", "queue"] {
        let e = lock.try_acquire(name).await.unwrap_err();
        assert!(matches!(e, Error::Protocol { .. }), "{name}: {e}");
        assert!(!e.is_retryable());
    }
    // Nothing was overwritten.
    assert_eq!(
        server
            .command(&["GET", "distkit:lock:{cfg}"])
            .unwrap()
            .as_text()
            .as_deref(),
        Some("some json")
    );
}

#[test]
fn lock_types_are_send_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<RedisLock>();
    assert_send_sync::<distkit_dlock::Redlock>();
    assert_send_sync::<distkit_dlock::LocalLock>();
    let _: Option<Arc<dyn DistributedLock>> = None;
}
