use std::time::{Duration, Instant};

use distkit_core::{DistributedLock, Error};
use distkit_dlock::Redlock;
use distkit_testkit::RedisServer;

fn redlock(servers: &[RedisServer], ttl: Duration) -> Redlock {
    Redlock::builder(servers.iter().map(RedisServer::url))
        .ttl(ttl)
        .node_timeout(Duration::from_millis(100))
        .retry_delay(Duration::from_millis(10), Duration::from_millis(30))
        .build()
        .unwrap()
}

/// For each of the 32 sets of pre-locked servers, acquisition succeeds exactly when a majority
/// is free (redsync's check).
#[tokio::test]
async fn acquisition_succeeds_exactly_when_a_majority_is_free() {
    let servers = RedisServer::start_many(5).unwrap();
    let rl = redlock(&servers, Duration::from_secs(10));
    assert_eq!(rl.quorum(), 3);
    for mask in 0u32..32 {
        let name = format!("combo-{mask}");
        let key = format!("distkit:lock:{{{name}}}");
        for (i, s) in servers.iter().enumerate() {
            if mask & (1 << i) != 0 {
                s.command(&[
                    "SET",
                    &key,
                    "0123456789abcdef0123456789abcdef",
                    "PX",
                    "10000",
                ])
                .unwrap();
            }
        }
        let free = 5 - mask.count_ones();
        let r = rl.try_acquire(&name).await.unwrap();
        assert_eq!(r.is_some(), free >= 3, "mask {mask:05b}: {free} free");
        if let Some(g) = r {
            // The grant holds exactly on the free servers.
            for (i, s) in servers.iter().enumerate() {
                let v = s.command(&["GET", &key]).unwrap().as_text().unwrap();
                if mask & (1 << i) == 0 {
                    assert_eq!(v, g.token().to_string());
                }
            }
            g.release().await.unwrap();
        } else {
            // A failed attempt leaves nothing behind on the free servers.
            for (i, s) in servers.iter().enumerate() {
                if mask & (1 << i) == 0 {
                    assert_eq!(
                        s.command(&["EXISTS", &key]).unwrap(),
                        distkit_testkit::Reply::Integer(0)
                    );
                }
            }
        }
    }
}

#[tokio::test]
async fn works_with_two_of_five_down_and_fails_cleanly_with_three() {
    let mut servers = RedisServer::start_many(5).unwrap();
    let rl = redlock(&servers, Duration::from_secs(5));
    servers[0].kill().unwrap();
    servers[3].kill().unwrap();
    let g = rl
        .acquire("survivor", Duration::from_secs(2))
        .await
        .unwrap();
    assert!(g.is_held().await.unwrap());
    let f1 = g.fencing_token();
    g.release().await.unwrap();
    let g2 = rl
        .acquire("survivor", Duration::from_secs(2))
        .await
        .unwrap();
    assert!(g2.fencing_token() > f1);
    g2.release().await.unwrap();

    servers[4].kill().unwrap();
    let start = Instant::now();
    let e = rl
        .acquire("survivor", Duration::from_millis(500))
        .await
        .unwrap_err();
    let took = start.elapsed();
    assert!(matches!(e, Error::Unavailable { .. }), "{e}");
    assert!(e.to_string().contains("only 2 of 5"), "{e}");
    assert!(
        took < Duration::from_secs(3),
        "bounded by the wait limit: {took:?}"
    );
}

#[tokio::test]
async fn extend_needs_a_majority() {
    let mut servers = RedisServer::start_many(3).unwrap();
    let rl = redlock(&servers, Duration::from_secs(5));
    let mut g = rl.try_acquire("ext").await.unwrap().unwrap();
    g.extend(Duration::from_secs(5)).await.unwrap();
    servers[0].kill().unwrap();
    servers[1].kill().unwrap();
    assert!(matches!(
        g.extend(Duration::from_secs(5)).await,
        Err(Error::NotHeld { .. })
    ));
}

#[test]
fn bad_settings() {
    assert!(Redlock::builder(Vec::<String>::new()).build().is_err());
    assert!(
        Redlock::builder(["redis://127.0.0.1:1/"])
            .ttl(Duration::from_millis(10))
            .node_timeout(Duration::from_millis(10))
            .build()
            .is_err()
    );
    assert!(
        Redlock::builder(["redis://127.0.0.1:1/"])
            .drift_factor(0.7)
            .build()
            .is_err()
    );
}

/// Found by an outside review: the same server listed three times made a Redlock that could
/// never grant ("busy"). It is refused at build time.
#[test]
fn the_same_server_twice_is_refused() {
    let urls = [
        "redis://127.0.0.1:1/",
        "redis://127.0.0.1:1",
        "redis://127.0.0.1:2/",
    ];
    let r = distkit_dlock::Redlock::builder(urls).build();
    assert!(
        matches!(r, Err(distkit_core::Error::InvalidInput { .. })),
        "{r:?}"
    );
}

/// Two nodes that share a sentinel (the same deployment given twice), or a server listed as
/// a node and again as a seed of another, are refused: their votes are not independent.
#[test]
fn nodes_sharing_a_sentinel_are_refused() {
    use distkit_dlock::RedisLock;
    let twice = Redlock::over([
        RedisLock::sentinel("m", ["redis://127.0.0.1:1/", "redis://127.0.0.1:2/"]),
        RedisLock::sentinel("m", ["redis://127.0.0.1:2"]),
        RedisLock::builder("redis://127.0.0.1:3/"),
    ])
    .build();
    assert!(
        matches!(twice, Err(Error::InvalidInput { .. })),
        "{twice:?}"
    );
    let two_masters = Redlock::over([
        RedisLock::sentinel("a", ["redis://127.0.0.1:1/"]),
        RedisLock::sentinel("b", ["redis://127.0.0.1:1/"]),
        RedisLock::builder("redis://127.0.0.1:3/"),
    ])
    .build();
    assert!(
        two_masters.is_ok(),
        "two masters of one sentinel set are two deployments"
    );
    // Found by an outside review: other spellings of one server were taken for other
    // servers, and with that server down such a Redlock refused every grant.
    for other in [
        "redis://127.0.0.1:7/0",
        "redis://:@127.0.0.1:7/",
        "REDIS://127.0.0.1:7/",
        "redis://[::ffff:127.0.0.1]:7/",
        "redis://127.1:7/",
        "redis://2130706433:7/",
        "redis://127.0.0.1:7/?protocol=resp2",
        "redis://user@127.0.0.1:7/",
        "redis://127.0.0.1:07/",
        "redis://0x7f.0.0.1:7/",
        "redis://0x7f000001:7/",
        "redis://127.0.0.1.:7/",
    ] {
        let r = Redlock::builder(["redis://127.0.0.1:7/", other, "redis://127.0.0.1:8/"]).build();
        assert!(
            matches!(r, Err(Error::InvalidInput { .. })),
            "{other}: {r:?}"
        );
    }
    let sentinel_twice = Redlock::over([
        RedisLock::sentinel("m", ["redis://127.0.0.1:1/"]),
        RedisLock::sentinel("m", ["redis://127.1:1/0"]),
        RedisLock::builder("redis://127.0.0.1:3/"),
    ])
    .build();
    assert!(sentinel_twice.is_err(), "{sentinel_twice:?}");
}

/// Redlock over three nodes, one of them a Sentinel deployment: the sentinel node's primary
/// is SIGKILLed, Redlock keeps granting on the other two meanwhile, and after the promotion
/// the sentinel node votes again: with one of the plain servers stopped, grants need it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_node_keeps_its_vote_through_a_failover() {
    use distkit_dlock::RedisLock;
    use distkit_testkit::{SENTINEL_MASTER, SentinelSetup};
    let mut setup = SentinelSetup::start(1, 3).unwrap();
    let mut plain = RedisServer::start_many(2).unwrap();
    let rl = Redlock::over([
        RedisLock::sentinel(SENTINEL_MASTER, setup.sentinel_urls()),
        RedisLock::builder(plain[0].url()),
        RedisLock::builder(plain[1].url()),
    ])
    .ttl(Duration::from_secs(5))
    .node_timeout(Duration::from_millis(200))
    .retry_delay(Duration::from_millis(10), Duration::from_millis(30))
    .build()
    .unwrap();
    let g = rl.try_acquire("a").await.unwrap().expect("all three up");
    g.release().await.unwrap();
    let killed = setup.kill_primary().unwrap();
    // While the sentinels promote the replica: two of three still grant.
    let g = rl
        .try_acquire("b")
        .await
        .unwrap()
        .expect("a majority is up");
    g.release().await.unwrap();
    let settled = tokio::task::spawn_blocking(move || {
        let r = setup.wait_for_failover(killed, Duration::from_secs(60));
        (setup, r)
    });
    let (_setup, promoted) = settled.await.unwrap();
    promoted.unwrap();
    plain[1].kill().unwrap();
    // Now a grant needs the sentinel node's vote, from the promoted primary. Its first
    // attempts may meet a connection the old primary left (bounded: 50 tries).
    let mut granted = None;
    for _ in 0..50 {
        match rl.try_acquire("c").await {
            Ok(Some(g)) => {
                granted = Some(g);
                break;
            }
            Ok(None) => {}
            Err(e) => assert!(e.is_retryable(), "{e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let g = granted.expect("the sentinel node voted after the failover");
    assert!(g.release().await.unwrap());
}
