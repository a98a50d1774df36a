use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use distkit_core::{Error, Loader, NodeId};
use distkit_dcache::DistributedCache;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

const TOKEN: &str = "cache-test-token";

struct Cluster {
    ids: Vec<NodeId>,
    urls: Vec<String>,
    caches: Vec<DistributedCache>,
    servers: Vec<Option<JoinHandle<()>>>,
    _maintenance: Vec<distkit_dcache::Maintenance>,
}

async fn cluster(n: usize, hot: bool) -> Cluster {
    cluster_with(n, hot, Duration::from_secs(10)).await
}

async fn cluster_with(n: usize, hot: bool, load_timeout: Duration) -> Cluster {
    cluster_full(n, hot, load_timeout, 1).await
}

async fn cluster_full(n: usize, hot: bool, load_timeout: Duration, replicas: usize) -> Cluster {
    let ids: Vec<NodeId> = (0..n)
        .map(|i| NodeId::new(format!("c{i}")).unwrap())
        .collect();
    let (listeners, urls) = distkit_testkit::loopback_listeners(n).unwrap();
    let listeners = listeners
        .into_iter()
        .map(|l| TcpListener::from_std(l).unwrap());
    let mut caches = Vec::new();
    let mut servers = Vec::new();
    let mut maintenance = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        let c = node(&ids, &urls, i, hot, load_timeout, replicas);
        servers.push(Some(serve(&c, l)));
        maintenance.push(c.start_maintenance().unwrap());
        caches.push(c);
    }
    Cluster {
        ids,
        urls,
        caches,
        servers,
        _maintenance: maintenance,
    }
}

fn node(
    ids: &[NodeId],
    urls: &[String],
    i: usize,
    hot: bool,
    load_timeout: Duration,
    replicas: usize,
) -> DistributedCache {
    let mut b = DistributedCache::builder(ids[i].clone())
        .token(TOKEN)
        .replicas(replicas)
        .load_timeout(load_timeout)
        .hot_copies(hot)
        .request_timeout(Duration::from_millis(300))
        .suspect_for(Duration::from_millis(500))
        .staleness_check(Duration::from_millis(200));
    for j in (0..ids.len()).filter(|&j| j != i) {
        b = b.peer(ids[j].clone(), urls[j].clone());
    }
    b.build().unwrap()
}

fn serve(c: &DistributedCache, l: TcpListener) -> JoinHandle<()> {
    let app = c.router();
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    })
}

impl Cluster {
    async fn kill(&mut self, i: usize) {
        if let Some(s) = self.servers[i].take() {
            s.abort();
            let _ = s.await;
        }
    }

    fn owner_index(&self, key: &str) -> usize {
        let owner = self.caches[0].owner_of(key).unwrap();
        self.ids.iter().position(|id| *id == owner).unwrap()
    }
}

fn loader_counting(counter: Arc<AtomicU64>, value: &'static str, delay: Duration) -> Loader {
    Loader::new(move || async move {
        counter.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(delay).await;
        Ok::<_, std::io::Error>(Bytes::from_static(value.as_bytes()))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_key_lives_only_at_its_owner() {
    let c = cluster(3, false).await;
    for i in 0..60 {
        let key = format!("device:{i}");
        c.caches[i % 3]
            .set(&key, format!("state-{i}"))
            .await
            .unwrap();
    }
    let mut per_node = [0; 3];
    for i in 0..60 {
        let key = format!("device:{i}");
        let owner = c.owner_index(&key);
        for (n, cache) in c.caches.iter().enumerate() {
            assert_eq!(
                cache.owner_of(&key).unwrap(),
                c.ids[owner],
                "all nodes agree on the owner"
            );
            assert_eq!(cache.holds_locally(&key), n == owner, "{key} on node {n}");
            let v = cache.get(&key).await.unwrap().unwrap();
            assert_eq!(&v[..], format!("state-{i}").as_bytes());
        }
        per_node[owner] += 1;
    }
    assert!(
        per_node.iter().all(|&n| n > 5),
        "keys spread over the ring: {per_node:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_callers_on_three_nodes_load_once() {
    let c = cluster(3, true).await;
    let loads = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let cache = c.caches[i % 3].clone();
        let l = loader_counting(loads.clone(), "expensive", Duration::from_millis(200));
        tasks.push(tokio::spawn(
            async move { cache.get_or_load("herd", l).await },
        ));
    }
    for t in tasks {
        assert_eq!(&t.await.unwrap().unwrap()[..], b"expensive");
    }
    assert_eq!(
        loads.load(Ordering::SeqCst),
        1,
        "the loader ran once for the whole cluster"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_owner_means_local_loads_and_no_hangs() {
    let mut c = cluster(3, false).await;
    let key = (0..)
        .map(|i| format!("k{i}"))
        .find(|k| c.owner_index(k) == 2)
        .unwrap();
    let loads = Arc::new(AtomicU64::new(0));
    c.kill(2).await;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let cache = c.caches[i % 2].clone();
        let (key, l) = (
            key.clone(),
            loader_counting(loads.clone(), "fallback", Duration::from_millis(10)),
        );
        tasks.push(tokio::spawn(
            async move { cache.get_or_load(&key, l).await },
        ));
    }
    for t in tasks {
        let v = tokio::time::timeout(Duration::from_secs(5), t)
            .await
            .expect("no hang")
            .unwrap()
            .unwrap();
        assert_eq!(&v[..], b"fallback");
    }
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert!(loads.load(Ordering::SeqCst) >= 1);
    // Plain reads say the owner is unreachable (retryable), never a miss, and quickly (the
    // peer is suspect after the first failure). The first version answered Ok(None).
    let t = Instant::now();
    for _ in 0..20 {
        let r = c.caches[0].get(&key).await;
        assert!(
            matches!(&r, Err(e @ Error::Unavailable { .. }) if e.is_retryable()),
            "{r:?}"
        );
    }
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // Writes do not vanish silently.
    assert!(c.caches[0].set(&key, "v").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovered_owner_is_used_again() {
    let mut c = cluster(3, false).await;
    let key = (0..)
        .map(|i| format!("r{i}"))
        .find(|k| c.owner_index(k) == 1)
        .unwrap();
    let addr = c.urls[1].trim_start_matches("http://").to_owned();
    c.kill(1).await;
    assert!(c.caches[0].get(&key).await.unwrap_err().is_retryable());
    let l = TcpListener::bind(&addr).await.unwrap();
    c.servers[1] = Some(serve(&c.caches[1], l));
    c.caches[1].set(&key, "back").await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await; // past the suspect period
    assert_eq!(
        c.caches[0].get(&key).await.unwrap().as_deref(),
        Some(&b"back"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_that_disagree_never_loop() {
    let c = cluster(3, false).await;
    // Node 0 forgets node 2: for some keys it now names node 1 the owner, while node 1
    // (like node 2) still thinks node 2 owns them.
    c.caches[0].remove_node(c.ids[2].as_str()).await.unwrap();
    let key = (0..)
        .map(|i| format!("d{i}"))
        .find(|k| {
            c.caches[1].owner_of(k).unwrap() == c.ids[2]
                && c.caches[0].owner_of(k).unwrap() == c.ids[1]
        })
        .unwrap();
    let start = Instant::now();
    // Node 1 sees that node 0's members differ from its own and refuses, loudly and at once
    // (the first version stored the write where node 0's ring said, silently losing it
    // for readers using the other ring); nobody passes it on.
    let r = c.caches[0].set(&key, "here").await;
    assert!(
        matches!(&r, Err(e @ Error::Unavailable { reason, .. }) if e.is_retryable() && reason.contains("disagree")),
        "{r:?}"
    );
    assert!(!c.caches[1].holds_locally(&key), "node 1 stored it");
    assert!(!c.caches[2].holds_locally(&key), "it was passed on");
    let loads = Arc::new(AtomicU64::new(0));
    let v = c.caches[0]
        .get_or_load(
            &format!("{key}-load"),
            loader_counting(loads, "x", Duration::ZERO),
        )
        .await
        .unwrap();
    assert_eq!(&v[..], b"x");
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttls_hold_across_nodes_and_hot_copies() {
    let c = cluster(3, true).await;
    let key = (0..)
        .map(|i| format!("t{i}"))
        .find(|k| c.owner_index(k) == 0)
        .unwrap();
    c.caches[1]
        .set_with_ttl(&key, "brief", Duration::from_millis(300))
        .await
        .unwrap();
    for _ in 0..5 {
        for cache in &c.caches {
            assert!(cache.get(&key).await.unwrap().is_some());
        }
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    for (i, cache) in c.caches.iter().enumerate() {
        assert_eq!(
            cache.get(&key).await.unwrap(),
            None,
            "node {i} still has it"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_on_one_node_is_seen_by_every_nodes_next_read() {
    let c = cluster(3, true).await;
    let key = (0..)
        .map(|i| format!("x{i}"))
        .find(|k| c.owner_index(k) == 0)
        .unwrap();
    c.caches[0].set(&key, "v1").await.unwrap();
    // Non-owners read it often enough to keep hot copies.
    for _ in 0..20 {
        for cache in &c.caches {
            cache.get(&key).await.unwrap();
        }
    }
    c.caches[1].sync().await;
    c.caches[2].sync().await;
    assert!(
        c.caches[1].holds_hot_copy(&key) || c.caches[2].holds_hot_copy(&key),
        "hot copies were kept"
    );
    assert!(c.caches[2].delete(&key).await.unwrap());
    for (i, cache) in c.caches.iter().enumerate() {
        assert_eq!(
            cache.get(&key).await.unwrap(),
            None,
            "node {i} served a deleted value"
        );
    }
    // And an update replaces hot copies everywhere.
    c.caches[0].set(&key, "v2").await.unwrap();
    for _ in 0..5 {
        for cache in &c.caches {
            cache.get(&key).await.unwrap();
        }
    }
    c.caches[1].set(&key, "v3").await.unwrap();
    for (i, cache) in c.caches.iter().enumerate() {
        assert_eq!(
            cache.get(&key).await.unwrap().as_deref(),
            Some(&b"v3"[..]),
            "node {i}"
        );
    }
}

/// Reads `key` at `node` until it holds a hot copy.
async fn warm_hot_copy(c: &Cluster, node: usize, key: &str) {
    for _ in 0..50 {
        c.caches[node].get(key).await.unwrap();
        c.caches[node].sync().await;
        if c.caches[node].holds_hot_copy(key) {
            return;
        }
    }
    panic!("node {node} never kept a hot copy of {key}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_in_sequence_numbers_drops_hot_copies() {
    let c = cluster(3, true).await;
    let key = (0..)
        .map(|i| format!("g{i}"))
        .find(|k| c.owner_index(k) == 0)
        .unwrap();
    c.caches[0].set(&key, "v1").await.unwrap();
    warm_hot_copy(&c, 1, &key).await;
    // An invalidation from node 0 whose sequence number skips ahead: messages were lost.
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/peer/invalidate", c.urls[1]))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"from": c.ids[0], "seq": 1000, "keys": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    c.caches[1].sync().await;
    assert!(
        !c.caches[1].holds_hot_copy(&key),
        "the gap dropped every hot copy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_invalidation_is_caught_by_the_periodic_check() {
    let mut c = cluster(3, true).await;
    let key = (0..)
        .map(|i| format!("l{i}"))
        .find(|k| c.owner_index(k) == 0)
        .unwrap();
    c.caches[0].set(&key, "v1").await.unwrap();
    warm_hot_copy(&c, 1, &key).await;
    // Node 1's listener goes away, so node 0's invalidation for the next write is lost.
    let addr = c.urls[1].trim_start_matches("http://").to_owned();
    c.kill(1).await;
    // The write is stored, but the owner says that node 1 did not confirm (the first
    // version returned Ok and left the caller to believe every copy was gone).
    match c.caches[0].set(&key, "v2").await {
        Err(Error::Unavailable {
            endpoint, reason, ..
        }) => {
            assert_eq!(endpoint, "c1");
            assert!(reason.contains("is stored at its owner"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        c.caches[0].get(&key).await.unwrap().as_deref(),
        Some(&b"v2"[..])
    );
    let l = TcpListener::bind(&addr).await.unwrap();
    c.servers[1] = Some(serve(&c.caches[1], l));
    // The invalidation really was lost: node 1 still serves its hot copy...
    assert_eq!(
        c.caches[1].get(&key).await.unwrap().as_deref(),
        Some(&b"v1"[..])
    );
    // ...until, within two check rounds (200 ms each), it notices node 0's newer sequence
    // number and drops it.
    let start = Instant::now();
    loop {
        let v = c.caches[1].get(&key).await.unwrap();
        if v.as_deref() == Some(&b"v2"[..]) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "node 1 kept serving {v:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Found by `cargo xtask chaos` (seed 1): after a partition healed, the owner still held
/// the peer as suspect and skipped it when invalidating, yet returned `Ok`; the peer, alive
/// again and holding a hot copy, served the replaced value. A write now asks suspect peers
/// too and returns `Ok` only when every peer confirmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_returns_ok_only_when_even_a_suspect_peer_dropped_its_copy() {
    let mut c = cluster(3, true).await;
    let key = (0..)
        .map(|i| format!("s{i}"))
        .find(|k| c.owner_index(k) == 0)
        .unwrap();
    c.caches[0].set(&key, "v0").await.unwrap();
    warm_hot_copy(&c, 1, &key).await;
    let addr = c.urls[1].trim_start_matches("http://").to_owned();
    c.kill(1).await;
    // Node 1 misses this invalidation; node 0 now holds it as suspect (500 ms).
    assert!(c.caches[0].set(&key, "lost").await.is_err());
    let l = TcpListener::bind(&addr).await.unwrap();
    c.servers[1] = Some(serve(&c.caches[1], l));
    for i in 0..5 {
        let value = format!("v{}", i + 1);
        if c.caches[0].set(&key, value.clone()).await.is_ok() {
            assert_eq!(
                c.caches[1].get(&key).await.unwrap().as_deref(),
                Some(value.as_bytes()),
                "a write returned Ok, and node 1 still served an older value"
            );
        }
    }
}

/// Found by `cargo xtask chaos` (seed 2): an owner that answered a forwarded write with
/// "stored, but a third peer did not confirm" (a 503) was then skipped as if it were down,
/// so reads of its keys through that node failed for the breaker's whole hold. Only a peer
/// that does not answer is skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_that_answers_with_an_error_is_not_skipped() {
    let mut c = cluster(3, true).await;
    let key = (0..)
        .map(|i| format!("a{i}"))
        .find(|k| c.owner_index(k) == 0)
        .unwrap();
    c.kill(2).await;
    let forwarded = c.caches[1].set(&key, "v").await;
    assert!(
        matches!(&forwarded, Err(Error::Unavailable { reason, .. }) if reason.contains("stored")),
        "{forwarded:?}"
    );
    assert_eq!(
        c.caches[1].get(&key).await.unwrap().as_deref(),
        Some(&b"v"[..]),
        "the owner answered; it is not down"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_peer_input_is_refused_with_json_errors() {
    let c = cluster(2, false).await;
    let base = &c.urls[1];
    let http = reqwest::Client::new();
    // Keys travel as the hex of their bytes: "61" is "a". Key requests carry the sender's
    // membership fingerprint; node 0 shares node 1's.
    let long = "6b".repeat(2000);
    let fp = format!("{:016x}", c.caches[0].members_fingerprint());
    let cases: Vec<(reqwest::RequestBuilder, u16)> = vec![
        (http.get(format!("{base}/v1/peer/cache/61")), 401),
        (
            http.get(format!("{base}/v1/peer/cache/61"))
                .bearer_auth("wrong"),
            401,
        ),
        (
            http.get(format!("{base}/v1/peer/cache/{long}"))
                .bearer_auth(TOKEN),
            413,
        ),
        (
            http.put(format!("{base}/v1/peer/cache/61"))
                .bearer_auth(TOKEN)
                .header("x-distkit-members", &fp)
                .header("x-distkit-ttl-ms", "soon")
                .body("v"),
            400,
        ),
        // Without the fingerprint, or with another one: 421, found by an outside review.
        (
            http.get(format!("{base}/v1/peer/cache/61"))
                .bearer_auth(TOKEN),
            421,
        ),
        (
            http.get(format!("{base}/v1/peer/cache/61"))
                .bearer_auth(TOKEN)
                .header("x-distkit-members", "0000000000000000"),
            421,
        ),
        // A proposed lease of 0 is refused, not swapped for another.
        (
            http.post(format!("{base}/v1/peer/cache/61/load?lease=0"))
                .bearer_auth(TOKEN)
                .header("x-distkit-members", &fp),
            400,
        ),
        (
            http.get(format!("{base}/v1/peer/cache/%FF%FE"))
                .bearer_auth(TOKEN),
            400,
        ),
        (
            http.post(format!("{base}/v1/peer/invalidate"))
                .bearer_auth(TOKEN)
                .body("{nope"),
            400,
        ),
        (
            http.post(format!("{base}/v1/peer/invalidate"))
                .bearer_auth(TOKEN)
                .json(&serde_json::json!({"from": "stranger", "seq": 1, "keys": []})),
            400,
        ),
        (
            http.post(format!("{base}/v1/peer/cache/61/abandon"))
                .bearer_auth(TOKEN)
                .header("x-distkit-members", &fp),
            400,
        ),
        (
            http.delete(format!("{base}/v1/peer/seq"))
                .bearer_auth(TOKEN),
            405,
        ),
        (
            http.get(format!("{base}/v1/peer/join")).bearer_auth(TOKEN),
            405,
        ),
    ];
    for (i, (req, want)) in cases.into_iter().enumerate() {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), want, "case {i}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert!(body["error"].is_string(), "case {i}");
    }
    // A value over the limit: the node answers 413 as soon as it has read the limit and
    // closes with the rest unread, so a client still sending may see its connection reset
    // before the answer (a race of the sockets, seen once in CI). One of three tries must
    // get the 413 with its JSON body, and none may get anything else.
    let mut answered = false;
    for _ in 0..3 {
        let sent = http
            .put(format!("{base}/v1/peer/cache/61"))
            .bearer_auth(TOKEN)
            .header("x-distkit-members", &fp)
            .body(vec![0u8; 2 * 1024 * 1024])
            .send()
            .await;
        match sent {
            Ok(resp) => {
                assert_eq!(resp.status().as_u16(), 413);
                let body: serde_json::Value = resp.json().await.unwrap();
                assert_eq!(body["kind"], "too_large");
                answered = true;
                break;
            }
            Err(e) => assert!(e.is_request(), "{e}"),
        }
    }
    assert!(answered, "three resets in a row, no 413");
    // The node still serves.
    c.caches[0].set("after", "ok").await.unwrap();
    assert_eq!(
        c.caches[1].get("after").await.unwrap().as_deref(),
        Some(&b"ok"[..])
    );
}

fn key_owned_by(c: &Cluster, owner: usize, prefix: &str) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|k| c.owner_index(k) == owner)
        .unwrap()
}

/// The first version's membership lived in three copies: `add_node` on a cache built alone
/// moved the ring but not the "alone" flag, so every key stayed local. One snapshot now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_added_to_a_lone_cache_owns_its_keys_at_once() {
    let c = cluster(1, false).await;
    let lone = DistributedCache::builder(NodeId::new("lone").unwrap())
        .token(TOKEN)
        .build()
        .unwrap();
    let (listeners, urls) = distkit_testkit::loopback_listeners(1).unwrap();
    let _lone_server = serve(
        &lone,
        TcpListener::from_std(listeners.into_iter().next().unwrap()).unwrap(),
    );
    lone.add_node(c.ids[0].clone(), &c.urls[0]).await.unwrap();
    c.caches[0]
        .add_node(lone.id().clone(), &urls[0])
        .await
        .unwrap();
    let shares = lone.ring_shares();
    assert_eq!(shares.len(), 2);
    let key = (0..)
        .map(|i| format!("a{i}"))
        .find(|k| lone.owner_of(k).unwrap() == c.ids[0])
        .unwrap();
    lone.set(&key, "at the peer").await.unwrap();
    assert!(!lone.holds_locally(&key), "the key stayed local");
    assert!(c.caches[0].holds_locally(&key), "the peer did not get it");
    assert_eq!(
        c.caches[0].get(&key).await.unwrap().as_deref(),
        Some(&b"at the peer"[..])
    );
    lone.remove_node(c.ids[0].as_str()).await.unwrap();
    assert_eq!(lone.owner_of(&key).unwrap().as_str(), "lone");
}

/// "Invalidation finishes before a write returns" must hold with reads in flight: the first
/// version stored a hot copy from a read that raced a write, after the invalidation had
/// passed (2 to 13 stale reads per 20,000 rounds). Background readers keep reads in flight
/// on the reading node the whole time; every read after a write returns sees that write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_is_seen_by_the_next_read_with_reads_in_flight() {
    let c = cluster(3, true).await;
    let key = key_owned_by(&c, 0, "race");
    c.caches[0].set(&key, "0").await.unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..3 {
        let (cache, key, stop) = (c.caches[1].clone(), key.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && n < 200_000 {
                let _ = cache.get(&key).await;
                n += 1;
            }
        }));
    }
    let mut stale = Vec::new();
    let (rounds, mut checked) = (1500u64, 0u64);
    let started = Instant::now();
    for i in 1..=rounds {
        let writer = &c.caches[if i % 2 == 0 { 0 } else { 2 }];
        // A write that timed out on the loaded machine was not acknowledged: it promises
        // nothing, so its round is not checked (the next acknowledged one is).
        if writer.set(&key, i.to_string()).await.is_err() {
            continue;
        }
        let Ok(Some(got)) = c.caches[1].get(&key).await else {
            continue;
        };
        checked += 1;
        let got: u64 = std::str::from_utf8(&got).unwrap().parse().unwrap();
        if got < i {
            stale.push((i, got));
        }
        if started.elapsed() > Duration::from_secs(30) {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.await.unwrap();
    }
    assert!(stale.is_empty(), "stale reads (wrote, read): {stale:?}");
    assert!(checked >= 100, "only {checked} rounds could be checked");
}

/// The first version stalled every other caller of a key for the load timeout (10 s) when
/// the caller holding the load was cancelled, and loaded the key twice. Now the next caller
/// takes over at once, on the owner and on a node that asks the owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_loader_hands_over_at_once() {
    let c = cluster(2, false).await;
    for (owner, via) in [(0usize, 0usize), (0, 1)] {
        let key = key_owned_by(&c, owner, &format!("cancel{via}-"));
        let slow = Arc::new(AtomicU64::new(0));
        let fast = Arc::new(AtomicU64::new(0));
        // The first caller leads with a slow loader and is cancelled after 100 ms.
        let first = {
            let (cache, key) = (c.caches[via].clone(), key.clone());
            let l = loader_counting(slow.clone(), "slow", Duration::from_secs(30));
            tokio::spawn(async move {
                tokio::time::timeout(Duration::from_millis(100), cache.get_or_load(&key, l)).await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let started = Instant::now();
        let mut others = Vec::new();
        for i in 0..6 {
            let (cache, key) = (c.caches[i % 2].clone(), key.clone());
            let l = loader_counting(fast.clone(), "fast", Duration::from_millis(50));
            others.push(tokio::spawn(
                async move { cache.get_or_load(&key, l).await },
            ));
        }
        assert!(
            first.await.unwrap().is_err(),
            "the first caller was cancelled"
        );
        for o in others {
            let v = o.await.unwrap().unwrap();
            assert_eq!(&v[..], b"fast");
        }
        // Far below the 10 s load timeout: the cancellation handed over.
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "owner {owner} via {via}: the others waited {:?}",
            started.elapsed()
        );
        assert_eq!(slow.load(Ordering::SeqCst), 1);
        assert_eq!(
            fast.load(Ordering::SeqCst),
            1,
            "one load after the hand-over"
        );
        for cache in &c.caches {
            assert_eq!(cache.loads_in_flight(), 0);
        }
    }
}

/// A loader that panics hands over like a cancelled one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_loader_hands_over_at_once() {
    let c = cluster(1, false).await;
    let cache = c.caches[0].clone();
    let panicking = tokio::spawn({
        let cache = cache.clone();
        async move {
            cache
                .get_or_load(
                    "p",
                    Loader::new(|| async {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        if true {
                            panic!("the loader panics");
                        }
                        Ok::<_, std::io::Error>("never")
                    }),
                )
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let started = Instant::now();
    let v = cache
        .get_or_load(
            "p",
            Loader::new(|| async { Ok::<_, std::io::Error>("second") }),
        )
        .await
        .unwrap();
    assert_eq!(&v[..], b"second");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(panicking.await.is_err(), "the first task panicked");
    assert_eq!(cache.loads_in_flight(), 0);
}

/// A failing loader's error goes to the callers that waited for it; it is not run again by
/// each of them in turn (the first version ran it 52 times in a row).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_load_is_shared_not_retried_in_a_storm() {
    let c = cluster(2, false).await;
    let key = key_owned_by(&c, 0, "storm");
    let runs = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (cache, key, runs) = (c.caches[i % 2].clone(), key.clone(), runs.clone());
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_load(
                    &key,
                    Loader::new(move || async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        Err::<Vec<u8>, _>(std::io::Error::other("the database is down"))
                    }),
                )
                .await
        }));
        if i == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for t in tasks {
        let e = t.await.unwrap().unwrap_err();
        assert!(matches!(e, Error::Load { .. }), "{e:?}");
    }
    // One run for the attempt everyone joined (a caller on the second node may miss it by
    // a hair and start one more; never one each).
    assert!(
        runs.load(Ordering::SeqCst) <= 2,
        "{} runs",
        runs.load(Ordering::SeqCst)
    );
}

/// 20,000 callers cancelled mid-load leave nothing behind (the first version kept every
/// abandoned load: 532 MiB for 1M of them with a 1 MiB cache). A remote caller's abandon
/// can be lost in the flood; its slot then goes when its lease (here 1 s) ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_loads_leave_nothing_behind() {
    let c = cluster_with(2, false, Duration::from_secs(1)).await;
    for via in 0..2 {
        let mut tasks = Vec::new();
        for i in 0..10_000u32 {
            let cache = c.caches[via].clone();
            tasks.push(tokio::spawn(async move {
                let key = format!("gone-{}", i % 500);
                let l = Loader::new(|| async {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    Ok::<_, std::io::Error>("never")
                });
                tokio::time::timeout(Duration::from_millis(1), cache.get_or_load(&key, l)).await
            }));
        }
        for t in tasks {
            assert!(t.await.unwrap().is_err());
        }
    }
    // Abandons sent to the owner in the background land within a moment.
    let start = Instant::now();
    while c.caches.iter().any(|c| c.loads_in_flight() > 0) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?} loads still in flight",
            c.caches
                .iter()
                .map(DistributedCache::loads_in_flight)
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Churn: 16 tasks write and read while a node is removed from every other member and
/// added back, twice. The first version served the values the node held before its removal
/// (822 to 941 stale reads a phase). Every read that returns a value returns the latest
/// acknowledged write of that key or a newer one; misses and retryable errors are allowed
/// (members disagree for a moment during each change).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_serves_no_stale_value() {
    let c = Arc::new(cluster(5, true).await);
    let out = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stale = Arc::new(AtomicU64::new(0));
    let reads = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for t in 0..16u64 {
        let (c, out, stop, stale, reads) = (
            c.clone(),
            out.clone(),
            stop.clone(),
            stale.clone(),
            reads.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut acked = [0u64; 8];
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && n < 20_000 {
                n += 1;
                let k = (n % 8) as usize;
                let key = format!("churn-{t}-{k}");
                // Clients use nodes that every member agrees on (node 4 is the one that
                // leaves and comes back).
                let nodes = if out.load(Ordering::Relaxed) { 4 } else { 5 };
                let via = ((n * 7 + t) % nodes) as usize;
                if n.is_multiple_of(3) {
                    let v = acked[k] + 1;
                    if c.caches[via].set(&key, v.to_string()).await.is_ok() {
                        acked[k] = v;
                    }
                } else if let Ok(Some(got)) = c.caches[via].get(&key).await {
                    reads.fetch_add(1, Ordering::Relaxed);
                    let got: u64 = std::str::from_utf8(&got).unwrap().parse().unwrap();
                    if got < acked[k] {
                        stale.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let leaving = c.ids[4].clone();
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        out.store(true, Ordering::Relaxed);
        for i in 0..4 {
            c.caches[i].remove_node(leaving.as_str()).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        for i in 0..4 {
            c.caches[i]
                .add_node(leaving.clone(), &c.urls[4])
                .await
                .unwrap();
        }
        out.store(false, Ordering::Relaxed);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(stale.load(Ordering::Relaxed), 0, "stale reads");
    assert!(reads.load(Ordering::Relaxed) > 100, "too few reads to tell");
}

/// With two copies of every value, a dead owner's keys are served by their replica: reads
/// hit and no loader runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_replicas_a_dead_owners_keys_still_hit() {
    let mut c = cluster_full(3, false, Duration::from_secs(10), 2).await;
    let keys: Vec<String> = (0..)
        .map(|i| format!("rep{i}"))
        .filter(|k| c.owner_index(k) == 0)
        .take(60)
        .collect();
    for (i, k) in keys.iter().enumerate() {
        c.caches[1 + i % 2].set(k, format!("v-{k}")).await.unwrap();
    }
    // Replicas are kept only where the ring says: one copy besides the owner's.
    for k in &keys {
        let holders = c.caches.iter().filter(|c| c.holds_locally(k)).count();
        assert_eq!(holders, 2, "{k}");
    }
    c.kill(0).await;
    let loads = Arc::new(AtomicU64::new(0));
    for k in &keys {
        for via in [1, 2] {
            let v = c.caches[via]
                .get_or_load(
                    k,
                    loader_counting(loads.clone(), "reloaded", Duration::ZERO),
                )
                .await
                .unwrap();
            assert_eq!(v, format!("v-{k}").as_bytes(), "{k} via {via}");
            let v = c.caches[via].get(k).await.unwrap();
            assert_eq!(
                v.as_deref(),
                Some(format!("v-{k}").as_bytes()),
                "{k} via {via}"
            );
        }
    }
    assert_eq!(
        loads.load(Ordering::SeqCst),
        0,
        "a loader ran although a replica had it"
    );
}

/// A write that a replica cannot confirm says so (it is stored where it was confirmed);
/// with `write_acks(1)` the owner's copy is enough. A replica keeps the newest write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_acknowledgements_are_counted() {
    let mut c = cluster_full(2, false, Duration::from_secs(10), 2).await;
    let key = key_owned_by(&c, 0, "ack");
    c.caches[0].set(&key, "1").await.unwrap();
    assert!(c.caches[1].holds_locally(&key), "the replica has it");
    c.caches[0].set(&key, "2").await.unwrap();
    // An old write that arrives late (number 1, far below the owner's clock-based numbers)
    // does not replace the newer copy at the replica.
    let hex: String = key.bytes().map(|b| format!("{b:02x}")).collect();
    let fp = format!("{:016x}", c.caches[0].members_fingerprint());
    let http = reqwest::Client::new();
    let late = http
        .put(format!("{}/v1/peer/cache/{hex}?replica=1", c.urls[1]))
        .bearer_auth(TOKEN)
        .header("x-distkit-members", &fp)
        .body("stale")
        .send()
        .await
        .unwrap();
    assert_eq!(late.status().as_u16(), 204);
    let held = http
        .get(format!("{}/v1/peer/cache/{hex}", c.urls[1]))
        .bearer_auth(TOKEN)
        .header("x-distkit-members", &fp)
        .send()
        .await
        .unwrap();
    assert_eq!(held.bytes().await.unwrap().as_ref(), b"2");
    // A replica write sent to the owner itself is refused and replaces nothing (found by an
    // outside review: it used to overwrite the owner's value).
    let forged = http
        .put(format!("{}/v1/peer/cache/{hex}?replica=999", c.urls[0]))
        .bearer_auth(TOKEN)
        .header("x-distkit-members", &fp)
        .body("forged")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status().as_u16(), 400);
    assert_eq!(
        c.caches[0].get(&key).await.unwrap().as_deref(),
        Some(&b"2"[..])
    );
    c.kill(1).await;
    let r = c.caches[0].set(&key, "3").await;
    match r {
        Err(Error::Unavailable { reason, .. }) => {
            assert!(reason.contains("stored on 1 of 2 nodes"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        c.caches[0].get(&key).await.unwrap().as_deref(),
        Some(&b"3"[..])
    );
    let relaxed = DistributedCache::builder(NodeId::new("solo").unwrap())
        .replicas(2)
        .write_acks(1)
        .build()
        .unwrap();
    relaxed.set("k", "v").await.unwrap();
    assert!(
        DistributedCache::builder(NodeId::new("x").unwrap())
            .replicas(4)
            .build()
            .is_err()
    );
    assert!(
        DistributedCache::builder(NodeId::new("x").unwrap())
            .replicas(2)
            .write_acks(3)
            .build()
            .is_err()
    );
}

/// The first version failed every co-follower on a non-owner at once ("the coalesced load
/// was dropped") when one of them was cancelled. A follower that goes away just leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_follower_leaves_the_others_alone() {
    let c = cluster(2, false).await;
    let key = key_owned_by(&c, 0, "follow");
    let loads = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..6 {
        let (cache, key) = (c.caches[1].clone(), key.clone());
        let l = loader_counting(loads.clone(), "v", Duration::from_millis(200));
        tasks.push(tokio::spawn(async move {
            if i % 2 == 1 {
                // Followers that give up early.
                tokio::time::timeout(Duration::from_millis(50), cache.get_or_load(&key, l))
                    .await
                    .ok()
            } else {
                Some(cache.get_or_load(&key, l).await)
            }
        }));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await.unwrap() {
            Some(r) => assert_eq!(&r.unwrap()[..], b"v", "caller {i}"),
            None => assert_eq!(i % 2, 1, "only the cancelled ones gave up"),
        }
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    assert!(
        c.caches[1].bytes_used() == 0,
        "a non-owner keeps no copy without hot copies"
    );
    assert!(c.caches[0].bytes_used() >= (key.len() + 1) as u64);
}

/// Found by an outside review: a load that finished after its node lost the key (the
/// members changed meanwhile) was stored, and a change back served it over a newer write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_that_outlives_its_ownership_is_not_stored() {
    let c = cluster(3, false).await;
    // Nodes 0 and 1 start without node 2; node 2 knows them all.
    for i in 0..2 {
        c.caches[i].remove_node(c.ids[2].as_str()).await.unwrap();
    }
    let key = (0..)
        .map(|i| format!("moved{i}"))
        .find(|k| {
            c.caches[0].owner_of(k).unwrap() == c.ids[0]
                && c.caches[2].owner_of(k).unwrap() == c.ids[2]
        })
        .unwrap();
    let slow = tokio::spawn({
        let (cache, key) = (c.caches[0].clone(), key.clone());
        async move {
            cache
                .get_or_load(
                    &key,
                    Loader::new(|| async {
                        tokio::time::sleep(Duration::from_millis(600)).await;
                        Ok::<_, std::io::Error>("OLD")
                    }),
                )
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    for i in 0..2 {
        c.caches[i]
            .add_node(c.ids[2].clone(), &c.urls[2])
            .await
            .unwrap();
    }
    c.caches[1].set(&key, "NEW").await.unwrap();
    let _ = slow.await.unwrap();
    assert!(
        !c.caches[0].holds_locally(&key),
        "node 0 stored a key it no longer owns"
    );
    // The key falls back to node 0: nothing old may come back.
    for i in 0..2 {
        c.caches[i].remove_node(c.ids[2].as_str()).await.unwrap();
    }
    for i in 0..2 {
        let v = c.caches[i].get(&key).await.unwrap();
        assert_ne!(
            v.as_deref(),
            Some(&b"OLD"[..]),
            "node {i} served the old load"
        );
    }
}

/// Found by an outside review: when the caller running a failing load was not the key's
/// owner, the callers waiting at other nodes ran their own loaders. The failure is shared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_loaders_failure_is_shared_with_every_node() {
    let c = cluster(3, false).await;
    let key = key_owned_by(&c, 0, "remote-fail");
    let runs = Arc::new(AtomicU64::new(0));
    let failing = |runs: Arc<AtomicU64>| {
        Loader::new(move || async move {
            runs.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(300)).await;
            Err::<Vec<u8>, _>(std::io::Error::other("db down"))
        })
    };
    // The leader is on node 1 (not the owner); followers on the owner and on node 2.
    let leader = tokio::spawn({
        let (cache, key, l) = (c.caches[1].clone(), key.clone(), failing(runs.clone()));
        async move { cache.get_or_load(&key, l).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut followers = Vec::new();
    for node in [0, 2, 0, 2] {
        let (cache, key, l) = (c.caches[node].clone(), key.clone(), failing(runs.clone()));
        followers.push(tokio::spawn(
            async move { cache.get_or_load(&key, l).await },
        ));
    }
    assert!(matches!(leader.await.unwrap(), Err(Error::Load { .. })));
    for f in followers {
        let r = f.await.unwrap();
        assert!(matches!(r, Err(Error::Load { .. })), "{r:?}");
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the loader ran again");
}

/// Found by an outside review: settings that could never be met were accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_beyond_the_members_and_bad_loaded_ttls() {
    // Three copies on a lone node: every member holds the key, and that is enough.
    let lone = DistributedCache::builder(NodeId::new("lone").unwrap())
        .replicas(3)
        .build()
        .unwrap();
    lone.set("k", "v").await.unwrap();
    for ttl in [
        Duration::ZERO,
        crate_max_ttl() + Duration::from_secs(1),
        Duration::MAX,
    ] {
        let r = lone
            .get_or_load(
                &format!("ttl-{}", ttl.as_nanos()),
                Loader::new(move || async move {
                    Ok::<_, std::io::Error>(distkit_core::Loaded::with_ttl("v", ttl))
                }),
            )
            .await;
        assert!(
            matches!(r, Err(Error::InvalidInput { .. })),
            "{ttl:?}: {r:?}"
        );
    }
}

fn crate_max_ttl() -> Duration {
    distkit_dcache::MAX_TTL
}
