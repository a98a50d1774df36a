//! Criterion benches of single lookups and membership changes at 100 nodes.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use distkit_core::NodeId;
use distkit_hashring::{HashRing, JumpHash, Ketama, Maglev, Node, Rendezvous, hash_key};

fn nodes(n: usize) -> Vec<Node> {
    (0..n)
        .map(|i| {
            Node::new(
                NodeId::new(format!("node-{i}")).unwrap(),
                format!("10.0.0.{i}:7000"),
            )
        })
        .collect()
}

fn keys() -> Vec<[u8; 16]> {
    (0..4096u64)
        .map(|i| {
            let mut k = [0u8; 16];
            k[..8].copy_from_slice(&hash_key(&i.to_le_bytes()).to_le_bytes());
            k[8..].copy_from_slice(&i.to_le_bytes());
            k
        })
        .collect()
}

fn lookups(c: &mut Criterion) {
    let ns = nodes(100);
    let ring = HashRing::builder().build_with(ns.clone()).unwrap();
    let jump = JumpHash::new(ns.iter().map(|n| n.id().clone()).collect());
    let maglev = Maglev::new(ns.clone()).unwrap();
    let hrw = Rendezvous::new(ns.clone()).unwrap();
    let ketama = Ketama::new(ns.clone()).unwrap();
    let keys = keys();
    let mut g = c.benchmark_group("lookup_n100");
    let mut i = 0usize;
    let mut next = move || {
        i = (i + 1) & 4095;
        i
    };
    g.bench_function("hash_only", |b| {
        b.iter(|| hash_key(black_box(&keys[next()])))
    });
    g.bench_function("hash_ring", |b| {
        b.iter(|| ring.locate(black_box(&keys[next()])).map(Node::weight))
    });
    g.bench_function("jump", |b| b.iter(|| jump.bucket(black_box(&keys[next()]))));
    g.bench_function("maglev", |b| {
        b.iter(|| maglev.locate(black_box(&keys[next()])).map(Node::weight))
    });
    g.bench_function("rendezvous", |b| {
        b.iter(|| hrw.locate(black_box(&keys[next()])).map(Node::weight))
    });
    g.bench_function("ketama", |b| {
        b.iter(|| ketama.locate(black_box(&keys[next()])).map(Node::weight))
    });
    g.bench_function("hash_ring_replicas3", |b| {
        b.iter(|| ring.replicas(black_box(&keys[next()]), 3).map(|r| r.len()))
    });
    g.finish();
}

fn changes(c: &mut Criterion) {
    let ns = nodes(100);
    let mut ring = HashRing::builder().build_with(ns.clone()).unwrap();
    let extra = Node::new(NodeId::new("extra").unwrap(), "10.0.1.1:7000");
    c.bench_function("ring_add_remove_n100", |b| {
        b.iter(|| {
            ring.add_node(extra.clone()).unwrap();
            ring.remove_node("extra").unwrap();
        })
    });
    c.bench_function("ring_rebuild_n100", |b| {
        b.iter(|| HashRing::builder().build_with(ns.clone()).unwrap())
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = lookups, changes
}
criterion_main!(benches);
