//! Hostile input through the public API: every duration from zero to `Duration::MAX`, keys
//! made of any characters, extreme sequence numbers from a peer, peers that refuse, loaders
//! that fail for many callers at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use distkit_core::{Error, Loaded, Loader, NodeId};
use distkit_dcache::{DistributedCache, MAX_TTL};
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestRunner};
use tokio::net::TcpListener;

const TOKEN: &str = "hostile-token";

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64)
}

fn any_duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::from_nanos(1)),
        Just(Duration::from_millis(1)),
        Just(MAX_TTL),
        Just(MAX_TTL + Duration::from_nanos(1)),
        Just(Duration::from_secs(1001 * 365 * 24 * 3600)),
        Just(Duration::MAX),
        Just(Duration::MAX - Duration::from_nanos(1)),
        (0u64..100_000).prop_map(Duration::from_millis),
        any::<u64>().prop_map(Duration::from_secs),
    ]
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn refused_or_ok<T: std::fmt::Debug>(r: &Result<T, Error>) -> bool {
    matches!(
        r,
        Ok(_) | Err(Error::InvalidInput { .. } | Error::TooLarge { .. })
    )
}

/// The first wave panicked in `build()` for TTLs over about 1,000 years, on every
/// `get_or_load` with `load_timeout(Duration::MAX)`, and on the first peer failure with
/// `suspect_for(Duration::MAX)`. Every duration is now accepted or refused with a typed
/// error, and a cache that builds serves every call.
#[test]
fn proptests_every_duration_builds_or_is_refused_and_never_panics() {
    let mut runner = TestRunner::new(RunnerConfig::with_cases(cases()));
    let rt = rt();
    let strategy = (
        prop::collection::vec(any_duration(), 7),
        any_duration(),
        any_duration(),
    );
    runner
        .run(&strategy, |(ds, entry_ttl, loaded_ttl)| {
            let built = DistributedCache::builder(NodeId::new("n").unwrap())
                .ttl(ds[0])
                .tti(ds[1])
                .hot_ttl(ds[2])
                .request_timeout(ds[3])
                .load_timeout(ds[4])
                .suspect_for(ds[5])
                .staleness_check(ds[6])
                .build();
            prop_assert!(refused_or_ok(&built), "{built:?}");
            let Ok(cache) = built else { return Ok(()) };
            rt.block_on(async {
                let maintenance = cache.start_maintenance().unwrap();
                let r = cache.set_with_ttl("k", "v", entry_ttl).await;
                prop_assert!(refused_or_ok(&r), "{r:?}");
                if entry_ttl.is_zero() || entry_ttl > MAX_TTL {
                    let refused = matches!(r, Err(Error::InvalidInput { .. }));
                    prop_assert!(refused, "{:?}", r);
                }
                let _ = cache.get("k").await.unwrap();
                let v = cache
                    .get_or_load(
                        "loaded",
                        Loader::new(move || async move {
                            Ok::<_, std::io::Error>(Loaded::with_ttl("x", loaded_ttl))
                        }),
                    )
                    .await;
                // A loader's TTL obeys the same rule as a caller's.
                if loaded_ttl.is_zero() || loaded_ttl > MAX_TTL {
                    let refused = matches!(v, Err(Error::InvalidInput { .. }));
                    prop_assert!(refused, "{:?}", v);
                } else {
                    prop_assert!(v.is_ok(), "{v:?}");
                }
                let _ = cache.get("loaded").await.unwrap();
                cache.delete("k").await.unwrap();
                maintenance.shutdown().await;
                Ok(())
            })
        })
        .unwrap();
}

struct Pair {
    caches: Vec<DistributedCache>,
    servers: Vec<tokio::task::JoinHandle<()>>,
}

async fn pair(max_values: [usize; 2], suspect_for: Duration) -> Pair {
    let ids = [NodeId::new("p0").unwrap(), NodeId::new("p1").unwrap()];
    let (listeners, urls) = distkit_testkit::loopback_listeners(2).unwrap();
    let mut caches = Vec::new();
    let mut servers = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        let c = DistributedCache::builder(ids[i].clone())
            .token(TOKEN)
            .max_value_len(max_values[i])
            .load_timeout(Duration::MAX)
            .suspect_for(suspect_for)
            .peer(ids[1 - i].clone(), urls[1 - i].clone())
            .build()
            .unwrap();
        let app = c.router();
        let l = TcpListener::from_std(l).unwrap();
        servers.push(tokio::spawn(async move {
            let _ = axum::serve(l, app).await;
        }));
        caches.push(c);
    }
    Pair { caches, servers }
}

fn key_chars() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(".".to_owned()),
        Just("..".to_owned()),
        Just("/".to_owned()),
        Just("a/../b".to_owned()),
        Just("%2F%00".to_owned()),
        Just("user:0\n".to_owned()),
        Just("\t\r\n".to_owned()),
        Just("?#&=+ ".to_owned()),
        Just("\u{0}\u{7f}\u{200b}\u{feff}".to_owned()),
        "\\PC{1,40}",
        any::<String>().prop_filter("not empty", |s| !s.is_empty() && s.len() <= 1024),
    ]
}

/// The first wave stripped `\t`, `\n`, `\r` from keys written through a non-owner
/// (`set("user:0\n")` overwrote `user:0`), and keys `.` and `..` missed or failed with 404.
/// Every key arrives unchanged, through whichever node it is written and read.
#[test]
fn proptests_any_key_round_trips_through_either_node_unchanged() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let p = rt.block_on(pair([1 << 20, 1 << 20], Duration::from_secs(1)));
    let mut runner = TestRunner::new(RunnerConfig::with_cases(cases()));
    runner
        .run(&(key_chars(), any::<u8>()), |(key, tag)| {
            rt.block_on(async {
                let value = format!("v{tag}:{key}");
                let via = usize::from(tag % 2);
                p.caches[via].set(&key, value.clone()).await.unwrap();
                for c in &p.caches {
                    let got = c.get(&key).await.unwrap();
                    prop_assert_eq!(got.as_deref(), Some(value.as_bytes()), "key {:?}", key);
                }
                // A neighbour that differs by one stripped character was not touched.
                let trimmed: String = key.chars().filter(|c| !c.is_control()).collect();
                if trimmed != key && !trimmed.is_empty() {
                    prop_assert_eq!(p.caches[0].get(&trimmed).await.unwrap(), None);
                }
                prop_assert!(p.caches[1 - via].delete(&key).await.unwrap());
                prop_assert_eq!(p.caches[via].get(&key).await.unwrap(), None);
                Ok(())
            })
        })
        .unwrap();
    for s in &p.servers {
        s.abort();
    }
}

fn owned_by(c: &DistributedCache, owner: &NodeId, prefix: &str) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|k| c.owner_of(k).unwrap() == *owner)
        .unwrap()
}

/// A peer's refusal reaches the caller with its reason and kind; a zero TTL is refused the
/// same way locally and remotely (the first wave accepted it locally and failed remotely
/// with a bare 400).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peers_refusal_keeps_its_reason() {
    let p = pair([4, 1 << 20], Duration::from_secs(1)).await;
    let owner = p.caches[0].id().clone();
    let key = owned_by(&p.caches[1], &owner, "small");
    let r = p.caches[1].set(&key, "0123456789").await;
    match r {
        Err(Error::InvalidInput { reason, .. }) => {
            assert!(reason.contains("413"), "{reason}");
            assert!(reason.contains("at most 4 bytes"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    for c in &p.caches {
        let r = c.set_with_ttl(&key, "v", Duration::ZERO).await;
        assert!(
            matches!(r, Err(Error::InvalidInput { what: "ttl", .. })),
            "{r:?}"
        );
    }
}

/// With `suspect_for(Duration::MAX)` and `load_timeout(Duration::MAX)` a dead owner is a
/// typed error or a local load, never a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maximal_timeouts_with_a_dead_peer_do_not_panic() {
    let p = pair([1 << 20, 1 << 20], Duration::MAX).await;
    p.servers[0].abort();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let owner = p.caches[0].id().clone();
    let key = owned_by(&p.caches[1], &owner, "dead");
    let r = p.caches[1].set(&key, "v").await;
    assert!(matches!(&r, Err(e) if e.is_retryable()), "{r:?}");
    let _ = p.caches[1].get(&key).await;
    let v = p.caches[1]
        .get_or_load(
            &key,
            Loader::new(|| async { Ok::<_, std::io::Error>("local".to_owned()) }),
        )
        .await
        .unwrap();
    assert_eq!(&v[..], b"local");
}

/// Callers that share another caller's load get its error itself: kind and cause intact
/// (the first wave flattened it to a string, so a retryable cause read as final).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesced_callers_share_the_loaders_error_with_its_cause() {
    let p = pair([1 << 20, 1 << 20], Duration::from_secs(1)).await;
    let owner = p.caches[0].id().clone();
    let key = owned_by(&p.caches[1], &owner, "fails");
    let runs = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (c, key, runs) = (p.caches[1].clone(), key.clone(), runs.clone());
        tasks.push(tokio::spawn(async move {
            c.get_or_load(
                &key,
                Loader::new(move || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    Err::<Vec<u8>, _>(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))
                }),
            )
            .await
        }));
    }
    for t in tasks {
        let e = t.await.unwrap().unwrap_err();
        let Error::Load { .. } = &e else {
            panic!("{e:?}")
        };
        let cause = std::error::Error::source(&e).expect("a cause");
        assert_eq!(
            cause
                .downcast_ref::<std::io::Error>()
                .map(std::io::Error::kind),
            Some(std::io::ErrorKind::ConnectionRefused),
            "{e:?}"
        );
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "one load for all callers");
}

/// A peer's invalidation with `seq = u64::MAX` overflowed in the first wave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_invalidation_sequence_numbers_are_harmless() {
    let p = pair([1 << 20, 1 << 20], Duration::from_secs(1)).await;
    // A second listener on node 1's router, to talk to it as a peer would.
    let (listeners, urls) = distkit_testkit::loopback_listeners(1).unwrap();
    let app = p.caches[1].router();
    let l = TcpListener::from_std(listeners.into_iter().next().unwrap()).unwrap();
    let server = tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    let http = reqwest::Client::new();
    for seq in [u64::MAX, u64::MAX, 0, 1, u64::MAX - 1] {
        let resp = http
            .post(format!("{}/v1/peer/invalidate", urls[0]))
            .bearer_auth(TOKEN)
            .json(&serde_json::json!({"from": "p0", "seq": seq, "keys": ["k"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 204, "seq {seq}");
    }
    p.caches[1].set("after", "ok").await.unwrap();
    assert_eq!(
        p.caches[0].get("after").await.unwrap().as_deref(),
        Some(&b"ok"[..])
    );
    server.abort();
}

/// The first wave's `build()` started maintenance only when a runtime happened to exist,
/// and kept no handle. Now `build()` spawns nothing, and the maintenance handle owns its
/// task: `shutdown` ends it, a drop (even outside a runtime) aborts it.
#[test]
fn maintenance_is_owned_by_its_handle() {
    // Outside a runtime: building works and spawns nothing; starting is a typed error.
    let cache = DistributedCache::new(10, None).unwrap();
    assert!(matches!(
        cache.start_maintenance(),
        Err(Error::Unavailable { .. })
    ));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (base, handle) = rt.block_on(async {
        let base = distkit_testkit::tasks::alive();
        let _built = DistributedCache::new(10, None).unwrap();
        assert_eq!(
            distkit_testkit::tasks::alive(),
            base,
            "build() spawned a task"
        );
        let m = cache.start_maintenance().unwrap();
        assert_eq!(distkit_testkit::tasks::alive(), base + 1);
        m.shutdown().await;
        // Ended; the runtime releases it a moment later.
        distkit_testkit::tasks::settle(base, Duration::from_secs(2))
            .await
            .unwrap_or_else(|n| panic!("{n} tasks alive after shutdown, {base} before"));
        (base, cache.start_maintenance().unwrap())
    });
    drop(handle); // outside the runtime
    rt.block_on(async {
        distkit_testkit::tasks::settle(base, Duration::from_secs(2))
            .await
            .unwrap_or_else(|n| panic!("{n} tasks alive, {base} before"));
    });
}
