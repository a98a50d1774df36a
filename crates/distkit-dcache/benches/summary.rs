//! The summary run behind `cargo xtask bench dcache`: local and remote latency against bare
//! moka and a bare axum + reqwest echo, hit ratios and insert speed against the design
//! document's cache, and the herd. Writes `target/bench/dcache.json` and
//! `docs/benchmarks/dcache.md`.

use std::collections::HashMap;
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use distkit_core::{Loader, NodeId};
use distkit_dcache::DistributedCache;
use distkit_testkit::report::{Report, median, quantile};
use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio::net::TcpListener;

const TOKEN: &str = "bench";

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run());
}

async fn run() {
    let mut r = Report::new("dcache", "distkit-dcache benchmarks");

    // Local hits: a key this node owns, versus a bare moka get of the same keys.
    let keys: Vec<String> = (0..10_000).map(|i| format!("device:{i}")).collect();
    let ours = DistributedCache::new(100_000, None).unwrap();
    let moka: moka::future::Cache<String, Bytes> = moka::future::Cache::new(100_000);
    for k in &keys {
        ours.set(k, "state").await.unwrap();
        moka.insert(k.clone(), Bytes::from_static(b"state")).await;
    }
    // Interleaved rounds with alternating order; the ratio is the median of per-round
    // ratios, so drift on the shared machine cancels out.
    let (mut a, mut b, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..41 {
        let (mut ours_ns, mut bare_ns) = (0.0, 0.0);
        for turn in 0..2 {
            let t = Instant::now();
            if (round + turn) % 2 == 0 {
                for k in &keys {
                    black_box(moka.get(k.as_str()).await);
                }
                bare_ns = t.elapsed().as_nanos() as f64 / keys.len() as f64;
            } else {
                for k in &keys {
                    black_box(ours.get(k).await.unwrap());
                }
                ours_ns = t.elapsed().as_nanos() as f64 / keys.len() as f64;
            }
        }
        a.push(ours_ns);
        b.push(bare_ns);
        ratios.push(ours_ns / bare_ns);
    }
    let (local, bare) = (median(&mut a), median(&mut b));
    r.figure(
        "local_hit_ns",
        local,
        "DistributedCache::get, key owned here",
    );
    r.figure("moka_hit_ns", bare, "bare moka::future::Cache::get");
    r.target(
        "local_overhead_ratio",
        median(&mut ratios),
        "local / bare moka get: median of 41 interleaved rounds",
        "<= 1.10",
    );

    // Owner hits in a 3-node cluster: the ring lookup included.
    let (three, _three_servers) = cluster(3, false).await;
    let owned: Vec<String> = keys
        .iter()
        .filter(|k| three[0].owner_of(k).unwrap() == *three[0].id())
        .cloned()
        .collect();
    for k in &owned {
        three[0].set(k, "state").await.unwrap();
    }
    let mut c = Vec::new();
    for _ in 0..15 {
        let t = Instant::now();
        for k in &owned {
            black_box(three[0].get(k).await.unwrap());
        }
        c.push(t.elapsed().as_nanos() as f64 / owned.len() as f64);
    }
    r.figure(
        "owner_hit_ns_3nodes",
        median(&mut c),
        "get of a key owned here in a 3-node cluster (ring lookup included)",
    );

    // Remote: a bare echo through the same stack and a non-owner reading from its owner,
    // sampled alternately so drift on the shared machine hits both alike.
    let (echo_url, echo_server) = echo_server().await;
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .unwrap();
    let (nodes, _servers) = cluster(2, false).await;
    let key = (0..)
        .map(|i| format!("r{i}"))
        .find(|k| nodes[0].owner_of(k).unwrap() == *nodes[1].id())
        .unwrap();
    nodes[1].set(&key, vec![7u8; 100]).await.unwrap();
    for _ in 0..200 {
        nodes[0].get(&key).await.unwrap();
        client
            .get(&echo_url)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
    }
    let (mut lat, mut echo_lat) = (Vec::new(), Vec::new());
    for _ in 0..3000 {
        let t = Instant::now();
        black_box(
            client
                .get(&echo_url)
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap(),
        );
        echo_lat.push(t.elapsed().as_secs_f64() * 1e6);
        let t = Instant::now();
        black_box(nodes[0].get(&key).await.unwrap());
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    echo_server.abort();
    let echo = quantile(&mut echo_lat, 0.5);
    r.figure(
        "http_echo_p50_us",
        echo,
        "GET through axum + reqwest, handler returns 100 bytes, loopback",
    );
    let p50 = quantile(&mut lat, 0.5);
    r.target(
        "remote_hit_p50_us",
        p50,
        "non-owner get from its owner, 100-byte value, sequential",
        "<= 1.3 x echo and <= 100 (groupcache: 145-227)",
    );
    r.figure("remote_hit_p99_us", quantile(&mut lat, 0.99), "same, p99");
    r.target(
        "remote_vs_echo",
        p50 / echo,
        "remote_hit_p50_us / http_echo_p50_us",
        "<= 1.3",
    );
    let per_s = remote_throughput(&nodes[0], &key, 64, Duration::from_secs(2)).await;
    r.figure(
        "remote_hits_per_s_64",
        per_s,
        "remote gets per second with 64 concurrent callers",
    );

    // Hit ratio: Zipf(0.99) over 100k keys with a scan mixed in, capacity 10%.
    let (ours_ratio, seed_ratio) = zipf_hit_ratios().await;
    r.figure(
        "zipf_hit_ratio",
        ours_ratio,
        "ours (moka TinyLFU), Zipf 0.99 + 10% scan, capacity 10% of keys",
    );
    r.figure(
        "seed_zipf_hit_ratio",
        seed_ratio,
        "the design document's cache, same requests",
    );

    // Inserts when full.
    let ins = insert_rates().await;
    r.figure(
        "insert_at_capacity_per_s",
        ins.ours_rate,
        "new keys into a full cache of 100,000",
    );
    r.figure(
        "seed_insert_at_capacity_per_s",
        ins.seed_rate,
        "the design document's cache, same",
    );
    r.target(
        "insert_at_capacity_speedup_vs_seed",
        ins.ours_rate / ins.seed_rate,
        "ours / seed",
        ">= 50",
    );
    r.figure("insert_max_us", ins.ours_max, "slowest single insert, ours");
    r.figure(
        "seed_insert_max_us",
        ins.seed_max,
        "slowest single insert, seed (a whole-map sort under the write lock every reader needs)",
    );
    r.figure(
        "insert_stall_ratio_seed_vs_ours",
        ins.seed_max / ins.ours_max,
        "seed_insert_max_us / insert_max_us",
    );

    // The herd.
    let (herd_nodes, _herd_servers) = cluster(3, true).await;
    let loads = Arc::new(AtomicU64::new(0));
    let herd_keys = 10;
    for k in 0..herd_keys {
        let mut tasks = Vec::new();
        for i in 0..1000 {
            let cache = herd_nodes[i % 3].clone();
            let loads = loads.clone();
            let key = format!("herd-{k}");
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_load(
                        &key,
                        Loader::new(move || async move {
                            loads.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            Ok::<_, std::io::Error>(Bytes::from_static(b"v"))
                        }),
                    )
                    .await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
    }
    r.target(
        "herd_loads_per_key",
        loads.load(Ordering::SeqCst) as f64 / herd_keys as f64,
        "loader runs per key, 1,000 callers over 3 nodes, 10 keys",
        "= 1",
    );

    r.note("Nodes run in this process on loopback; values are 100 bytes unless said otherwise.");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let (json, md) = r.write(&root).expect("write the report");
    eprintln!("wrote {} and {}", json.display(), md.display());
}

async fn cluster(n: usize, hot: bool) -> (Vec<DistributedCache>, Vec<tokio::task::JoinHandle<()>>) {
    let ids: Vec<NodeId> = (0..n)
        .map(|i| NodeId::new(format!("b{i}")).unwrap())
        .collect();
    let (listeners, urls) = distkit_testkit::loopback_listeners(n).unwrap();
    let listeners = listeners
        .into_iter()
        .map(|l| TcpListener::from_std(l).unwrap());
    let mut nodes = Vec::new();
    let mut servers = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        let mut b = DistributedCache::builder(ids[i].clone())
            .token(TOKEN)
            .hot_copies(hot);
        for j in (0..n).filter(|&j| j != i) {
            b = b.peer(ids[j].clone(), urls[j].clone());
        }
        let c = b.build().unwrap();
        let app = c.router();
        servers.push(tokio::spawn(async move {
            let _ = axum::serve(l, app).await;
        }));
        nodes.push(c);
    }
    (nodes, servers)
}

async fn echo_server() -> (String, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/echo", l.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/echo",
        axum::routing::get(|| async { Bytes::from_static(&[7u8; 100]) }),
    );
    let server = tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    (url, server)
}

async fn remote_throughput(
    node: &DistributedCache,
    key: &str,
    callers: usize,
    dur: Duration,
) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..callers {
        let (node, key, stop, count) = (node.clone(), key.to_owned(), stop.clone(), count.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if node.get(&key).await.is_ok_and(|v| v.is_some()) {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(dur).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    count.load(Ordering::Relaxed) as f64 / dur.as_secs_f64()
}

/// Zipf(s) over `n` ranks by inverse CDF.
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: usize, s: f64) -> Self {
        let mut cdf = Vec::with_capacity(n);
        let mut total = 0.0;
        for k in 1..=n {
            total += 1.0 / (k as f64).powf(s);
            cdf.push(total);
        }
        for c in &mut cdf {
            *c /= total;
        }
        Self { cdf }
    }

    fn sample(&self, rng: &mut StdRng) -> usize {
        let u: f64 = rng.random();
        self.cdf.partition_point(|c| *c < u)
    }
}

fn requests() -> Vec<String> {
    let zipf = Zipf::new(100_000, 0.99);
    let mut rng = StdRng::seed_from_u64(99);
    let mut scan = 0u64;
    (0..500_000)
        .map(|i| {
            if i % 10 == 9 {
                scan += 1;
                format!("scan:{scan}")
            } else {
                format!("item:{}", zipf.sample(&mut rng))
            }
        })
        .collect()
}

async fn zipf_hit_ratios() -> (f64, f64) {
    let reqs = requests();
    let ours = DistributedCache::new(10_000, None).unwrap();
    let mut hits = 0u64;
    for k in &reqs {
        if ours.get(k).await.unwrap().is_some() {
            hits += 1;
        } else {
            ours.set(k, "v").await.unwrap();
        }
    }
    let seed = SeedCache::new(10_000);
    let mut seed_hits = 0u64;
    for k in &reqs {
        if seed.get(k).await.is_some() {
            seed_hits += 1;
        } else {
            seed.set(k, Bytes::from_static(b"v")).await;
        }
    }
    (
        hits as f64 / reqs.len() as f64,
        seed_hits as f64 / reqs.len() as f64,
    )
}

struct Inserts {
    ours_rate: f64,
    seed_rate: f64,
    ours_max: f64,
    seed_max: f64,
}

async fn insert_rates() -> Inserts {
    let cap = 100_000u64;
    let ours = DistributedCache::new(cap, None).unwrap();
    let seed = SeedCache::new(cap as usize);
    for i in 0..cap {
        let k = format!("fill:{i}");
        ours.set(&k, "v").await.unwrap();
        seed.set(&k, Bytes::from_static(b"v")).await;
    }
    let n = 200_000;
    let keys: Vec<String> = (0..n).map(|i| format!("new:{i}")).collect();
    let (mut ours_max, mut seed_max) = (0f64, 0f64);
    let t = Instant::now();
    for k in &keys {
        let one = Instant::now();
        ours.set(k, "v").await.unwrap();
        ours_max = ours_max.max(one.elapsed().as_secs_f64() * 1e6);
    }
    let ours_rate = n as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for k in &keys {
        let one = Instant::now();
        seed.set(k, Bytes::from_static(b"v")).await;
        seed_max = seed_max.max(one.elapsed().as_secs_f64() * 1e6);
    }
    let seed_rate = n as f64 / t.elapsed().as_secs_f64();
    Inserts {
        ours_rate,
        seed_rate,
        ours_max,
        seed_max,
    }
}

/// The design document's cache: a HashMap behind one async RwLock; when full, sort every
/// entry by last access and drop the oldest 20%.
struct SeedCache {
    map: tokio::sync::RwLock<HashMap<String, SeedEntry>>,
    max_size: usize,
}

struct SeedEntry {
    value: Bytes,
    last_accessed: Instant,
    access_count: u64,
}

impl SeedCache {
    fn new(max_size: usize) -> Self {
        Self {
            map: tokio::sync::RwLock::new(HashMap::new()),
            max_size,
        }
    }

    async fn set(&self, key: &str, value: Bytes) {
        let mut cache = self.map.write().await;
        if cache.len() >= self.max_size {
            let mut entries: Vec<(&String, &SeedEntry)> = cache.iter().collect();
            entries.sort_by_key(|e| e.1.last_accessed);
            let evict_count = (cache.len() * 20) / 100;
            let victims: Vec<String> = entries
                .iter()
                .take(evict_count)
                .map(|(k, _)| (*k).clone())
                .collect();
            for k in victims {
                cache.remove(&k);
            }
        }
        cache.insert(
            key.to_owned(),
            SeedEntry {
                value,
                last_accessed: Instant::now(),
                access_count: 0,
            },
        );
    }

    async fn get(&self, key: &str) -> Option<Bytes> {
        let mut cache = self.map.write().await;
        let e = cache.get_mut(key)?;
        e.access_count += 1;
        e.last_accessed = Instant::now();
        Some(e.value.clone())
    }
}
