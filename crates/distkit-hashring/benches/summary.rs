//! The summary run behind `cargo xtask bench hashring`: balance, lookup, change and movement
//! figures of every locator, the seed's ring and the `hashring` crate, measured in one process
//! so ratios compare like with like. Writes `target/bench/hashring.json` and
//! `docs/benchmarks/hashring.md`.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::hint::black_box;
use std::path::Path;

use distkit_core::NodeId;
use distkit_hashring::{
    BoundedLoads, HashRing, JumpHash, Ketama, Maglev, Node, Rendezvous, hash_key,
};
use distkit_testkit::report::{Report, median_time};
use rand::{Rng, SeedableRng, rngs::StdRng};

const KEYS: usize = 1_000_000;
const RUNS: usize = 7;

fn main() {
    // `cargo bench` passes `--bench`; a quick mode keeps CI-style smoke runs short.
    let quick = std::env::args().any(|a| a == "--quick");
    let keys = random_keys(if quick { 100_000 } else { KEYS });
    let mut r = Report::new("hashring", "distkit-hashring benchmarks");

    let nodes100 = nodes(100);
    let ring10 = HashRing::builder().build_with(nodes(10)).unwrap();
    let ring100 = HashRing::builder().build_with(nodes100.clone()).unwrap();
    let ring1000 = HashRing::builder().build_with(nodes(1000)).unwrap();
    let seed100 = SeedRing::new(&nodes100);
    let jump100 = JumpHash::new(nodes100.iter().map(|n| n.id().clone()).collect());
    let maglev100 = Maglev::new(nodes100.clone()).unwrap();
    let hrw100 = Rendezvous::new(nodes100.clone()).unwrap();
    let crate100 = crate_ring(
        &nodes100,
        distkit_hashring::DEFAULT_POINTS_PER_WEIGHT as usize,
    );

    // Balance: the busiest node's keys over the mean.
    let peak = |f: &dyn Fn(&[u8]) -> String, n: usize| {
        let mut counts: HashMap<String, u64> = HashMap::new();
        for k in &keys {
            *counts.entry(f(k)).or_insert(0) += 1;
        }
        let max = counts.values().copied().max().unwrap_or(0) as f64;
        max / (keys.len() as f64 / n as f64)
    };
    r.target(
        "ring_peak_mean_n10",
        peak(&|k| ring10.locate(k).unwrap().id().to_string(), 10),
        "HashRing, 10 nodes, default points",
        "",
    );
    r.target(
        "ring_peak_mean_n100",
        peak(&|k| ring100.locate(k).unwrap().id().to_string(), 100),
        "HashRing, 100 nodes, default points",
        "<= 1.10",
    );
    r.figure(
        "seed_peak_mean_n100",
        peak(&|k| seed100.get(k).to_owned(), 100),
        "the seed's ring (3 points, DefaultHasher)",
    );
    r.target(
        "jump_peak_mean_n100",
        peak(&|k| jump100.locate(k).unwrap().to_string(), 100),
        "JumpHash",
        "<= 1.04",
    );
    r.target(
        "maglev_peak_mean_n100",
        peak(&|k| maglev100.locate(k).unwrap().id().to_string(), 100),
        "Maglev, 65537 slots",
        "<= 1.04",
    );
    r.target(
        "rendezvous_peak_mean_n100",
        peak(&|k| hrw100.locate(k).unwrap().id().to_string(), 100),
        "Rendezvous",
        "<= 1.04",
    );
    let eps = 0.05;
    let bounded = BoundedLoads::new(ring100.clone(), eps).unwrap();
    let bounded_peak = peak(&|k| bounded.assign(k).unwrap().to_string(), 100);
    r.target(
        "bounded_peak_mean_n100",
        bounded_peak,
        "BoundedLoads over HashRing, eps 0.05",
        "<= 1.05",
    );
    let ketama100 = Ketama::new(nodes100.clone()).unwrap();
    r.figure(
        "ketama_peak_mean_n100",
        peak(&|k| ketama100.locate(k).unwrap().id().to_string(), 100),
        "Ketama (160 points a server)",
    );
    drop(bounded);

    // Lookups: ns per key over all keys, key hashing included; median of RUNS passes. Each
    // closure is monomorphized into its own loop, so no call overhead is measured.
    let hash_only = per_key(&keys, |k: &[u8]| hash_key(k) as usize);
    r.figure("hash_only_ns", hash_only, "xxh3 of a 16-byte key alone");
    let ring_ns = per_key(&keys, |k: &[u8]| {
        ring100.locate(k).unwrap().weight() as usize
    });
    r.figure("ring_lookup_ns_n100", ring_ns, "HashRing, 100 nodes");
    r.figure(
        "ring_lookup_ns_n1000",
        per_key(&keys, |k: &[u8]| {
            ring1000.locate(k).unwrap().weight() as usize
        }),
        "HashRing, 1000 nodes",
    );
    r.figure(
        "jump_lookup_ns_n100",
        per_key(&keys, |k: &[u8]| jump100.bucket(k).unwrap() as usize),
        "JumpHash, 100 shards",
    );
    let maglev_ns = per_key(&keys, |k: &[u8]| {
        maglev100.locate(k).unwrap().weight() as usize
    });
    r.figure("maglev_lookup_ns_n100", maglev_ns, "Maglev, 100 nodes");
    r.figure(
        "rendezvous_lookup_ns_n100",
        per_key(&keys, |k: &[u8]| {
            hrw100.locate(k).unwrap().weight() as usize
        }),
        "Rendezvous, 100 nodes",
    );
    let crate_ns = per_key(&keys, |k: &[u8]| crate_ring_get(&crate100, k));
    r.figure(
        "hashring_crate_lookup_ns_n100",
        crate_ns,
        "hashring 0.3, same 100,000 points",
    );
    let seed_ns = per_key(&keys, |k: &[u8]| seed100.get(k).len());
    r.figure("seed_lookup_ns_n100", seed_ns, "the seed's ring, 100 nodes");
    r.target(
        "ring_vs_hashring_crate_speedup",
        crate_ns / ring_ns,
        "hashring crate ns / HashRing ns",
        ">= 3",
    );
    r.target(
        "ring_vs_seed_speedup",
        seed_ns / ring_ns,
        "seed ring ns / HashRing ns",
        ">= 2",
    );
    r.target(
        "maglev_vs_hash_only",
        maglev_ns / hash_only,
        "Maglev ns / hash-only ns",
        "<= 2.5",
    );

    // Changes: add then remove one node at 100 nodes, versus building the same ring anew.
    let mut ring = ring100.clone();
    let extra = node(100_000);
    let add_remove = median_time(21, || {
        ring.add_node(extra.clone()).unwrap();
        ring.remove_node(extra.id().as_str()).unwrap();
    });
    let rebuild = median_time(RUNS, || {
        black_box(HashRing::builder().build_with(nodes100.clone()).unwrap());
    });
    let add_remove_us = add_remove.as_secs_f64() * 1e6;
    let rebuild_us = rebuild.as_secs_f64() * 1e6;
    r.figure(
        "ring_add_remove_us_n100",
        add_remove_us,
        "add then remove one node, 100 nodes x 1000 points",
    );
    r.figure(
        "rebuild_us_n100",
        rebuild_us,
        "full rebuild of the same ring (all points hashed and sorted)",
    );
    r.target(
        "change_speedup",
        rebuild_us / add_remove_us,
        "rebuild / incremental add+remove",
        ">= 20",
    );
    let seed_rebuild = median_time(RUNS, || {
        black_box(SeedRing::with_points(&nodes100, 1000));
    });
    r.figure(
        "seed_rebuild_us_n100_1000pts",
        seed_rebuild.as_secs_f64() * 1e6,
        "the seed's rebuild at the same 100,000 points",
    );

    // Movement.
    let owners = |ring: &HashRing| -> Vec<NodeId> {
        keys.iter()
            .map(|k| ring.locate(k).unwrap().id().clone())
            .collect()
    };
    let before = owners(&ring100);
    let mut removed = ring100.clone();
    let gone = nodes100[37].id().clone();
    removed.remove_node(gone.as_str()).unwrap();
    let extra_moved = before
        .iter()
        .zip(owners(&removed))
        .filter(|(old, new)| **old != gone && *old != new)
        .count();
    r.target(
        "ring_remove_extra_moved",
        extra_moved as f64,
        "keys that moved although their node stayed",
        "= 0",
    );
    let mut grown = ring100.clone();
    grown.add_node(node(100)).unwrap();
    let moved = before
        .iter()
        .zip(owners(&grown))
        .filter(|(o, n)| **o != *n)
        .count();
    r.target(
        "ring_add_moved_ratio",
        (moved as f64 / keys.len() as f64) * 101.0,
        "keys moved on adding a 101st node / the ideal 1/101",
        "0.9 - 1.1",
    );
    r.figure("keys", keys.len() as f64, "random 16-byte keys per figure");
    r.note("Time figures are medians of repeated passes over all keys; a lookup includes hashing the key.");
    r.note(
        "The seed's ring and the `hashring` crate are measured in the same process as baselines.",
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let (json, md) = r.write(&root).expect("write the report");
    eprintln!("wrote {} and {}", json.display(), md.display());
}

fn per_key(keys: &[[u8; 16]], f: impl Fn(&[u8]) -> usize) -> f64 {
    let d = median_time(RUNS, || {
        let mut acc = 0usize;
        for k in keys {
            acc = acc.wrapping_add(f(black_box(k)));
        }
        black_box(acc);
    });
    d.as_nanos() as f64 / keys.len() as f64
}

fn node(i: usize) -> Node {
    Node::new(
        NodeId::new(format!("node-{i}")).unwrap(),
        format!("10.0.{}.{}:7000", i / 250, i % 250),
    )
}

fn nodes(n: usize) -> Vec<Node> {
    (0..n).map(node).collect()
}

/// 16 random alphanumeric bytes a key (valid UTF-8, so the seed's `&str` API takes them too),
/// stored contiguously so every locator pays the same for reading its keys.
fn random_keys(n: usize) -> Vec<[u8; 16]> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = StdRng::seed_from_u64(0x5eed);
    (0..n)
        .map(|_| std::array::from_fn(|_| ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

#[derive(Clone, Copy, Debug, Hash, PartialEq)]
struct CrateVnode {
    node: usize,
    point: usize,
}

fn crate_ring(nodes: &[Node], points: usize) -> hashring::HashRing<CrateVnode> {
    let mut ring = hashring::HashRing::new();
    let vnodes = (0..nodes.len())
        .flat_map(|node| (0..points).map(move |point| CrateVnode { node, point }))
        .collect();
    ring.batch_add(vnodes);
    ring
}

fn crate_ring_get(ring: &hashring::HashRing<CrateVnode>, key: &[u8]) -> usize {
    ring.get(&key).map_or(0, |v| v.node)
}

/// The seed's ring, as the design document wrote it: string virtual node ids, `DefaultHasher`,
/// a full rebuild on every change, binary search, then a second hash-map lookup.
struct SeedRing {
    virtual_nodes: Vec<(String, String, u64)>,
    physical_nodes: HashMap<String, (String, String, u32)>,
}

impl SeedRing {
    fn new(nodes: &[Node]) -> Self {
        Self::with_points(nodes, 3)
    }

    fn with_points(nodes: &[Node], replication_factor: usize) -> Self {
        let mut ring = Self {
            virtual_nodes: Vec::new(),
            physical_nodes: HashMap::new(),
        };
        for n in nodes {
            ring.physical_nodes.insert(
                n.id().to_string(),
                (n.id().to_string(), n.address().to_owned(), 1),
            );
        }
        for node_id in ring.physical_nodes.keys() {
            for i in 0..replication_factor {
                let id = format!("{node_id}:{i}");
                let hash = seed_hash(&id);
                ring.virtual_nodes.push((id, node_id.clone(), hash));
            }
        }
        ring.virtual_nodes.sort_by_key(|v| v.2);
        ring
    }

    fn get(&self, key: &[u8]) -> &str {
        let key = std::str::from_utf8(key).unwrap_or("");
        let hash = seed_hash(key);
        let (mut left, mut right) = (0, self.virtual_nodes.len());
        while left < right {
            let mid = (left + right) / 2;
            if self.virtual_nodes[mid].2 < hash {
                left = mid + 1;
            } else {
                right = mid;
            }
        }
        let index = if left >= self.virtual_nodes.len() {
            0
        } else {
            left
        };
        let physical = &self.virtual_nodes[index].1;
        &self.physical_nodes[physical].0
    }
}

fn seed_hash(key: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    key.hash(&mut hasher);
    hasher.finish()
}
