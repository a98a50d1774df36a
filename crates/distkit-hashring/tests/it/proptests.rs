//! Property tests: each name states the invariant it checks. `cargo test` runs them at
//! proptest's default case count; `cargo xtask proptest` runs them deeper.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use distkit_core::{Locator, NodeId};
use distkit_hashring::{
    BoundedLoads, HashRing, JumpHash, Ketama, Maglev, Node, Rendezvous, jump_hash,
};
use proptest::prelude::*;

fn node(i: u32, weight: u32) -> Node {
    Node::new(
        NodeId::new(format!("n{i}")).unwrap(),
        format!("10.0.0.{i}:7000"),
    )
    .with_weight(weight)
}

fn small_ring(nodes: &[Node]) -> HashRing {
    let mut r = HashRing::builder().points_per_weight(40).build().unwrap();
    for n in nodes {
        r.add_node(n.clone()).unwrap();
    }
    r
}

fn keys(n: usize, salt: u64) -> Vec<Vec<u8>> {
    (0..n as u64)
        .map(|i| format!("key-{salt}-{i}").into_bytes())
        .collect()
}

fn owners(l: &dyn Locator, keys: &[Vec<u8>]) -> Vec<NodeId> {
    keys.iter().map(|k| l.owner(k).unwrap()).collect()
}

/// Distinct node numbers with weights 1..=4.
fn members(max: usize) -> impl Strategy<Value = Vec<Node>> {
    prop::collection::btree_map(0u32..1000, 1u32..=4, 2..=max)
        .prop_map(|m| m.into_iter().map(|(i, w)| node(i, w)).collect())
}

proptest! {
    #[test]
    fn removing_a_node_moves_only_its_keys(nodes in members(8), pick in any::<prop::sample::Index>(), salt in any::<u64>()) {
        let ks = keys(300, salt);
        let gone = nodes[pick.index(nodes.len())].id().clone();
        let rest: Vec<Node> = nodes.iter().filter(|n| n.id() != &gone).cloned().collect();

        let (before, after) = (small_ring(&nodes), small_ring(&rest));
        let mut incremental = before.clone();
        incremental.remove_node(gone.as_str()).unwrap();
        let hrw_before = Rendezvous::new(nodes.clone()).unwrap();
        let hrw_after = Rendezvous::new(rest.clone()).unwrap();

        for (b, a) in [(&before as &dyn Locator, &incremental as &dyn Locator), (&hrw_before, &hrw_after)] {
            for (old, new) in owners(b, &ks).iter().zip(owners(a, &ks)) {
                if old != &gone {
                    prop_assert_eq!(old, &new);
                }
            }
        }
        // Incremental removal equals a ring built without the node.
        prop_assert_eq!(owners(&incremental, &ks), owners(&after, &ks));
    }

    #[test]
    fn adding_a_node_moves_keys_only_onto_it(nodes in members(8), salt in any::<u64>()) {
        let ks = keys(300, salt);
        let newcomer = node(5000, 2);
        let mut ring = small_ring(&nodes);
        let before = owners(&ring, &ks);
        ring.add_node(newcomer.clone()).unwrap();
        let mut hrw = Rendezvous::new(nodes.clone()).unwrap();
        let hrw_before = owners(&hrw, &ks);
        hrw.add_node(newcomer.clone()).unwrap();
        for (old, new) in before.iter().zip(owners(&ring, &ks)).chain(hrw_before.iter().zip(owners(&hrw, &ks))) {
            prop_assert!(old == &new || &new == newcomer.id(), "{old} moved to {new}");
        }
    }

    #[test]
    fn mapping_is_independent_of_insertion_order(nodes in members(8), seed in any::<u64>(), salt in any::<u64>()) {
        let ks = keys(200, salt);
        let mut shuffled = nodes.clone();
        // A deterministic permutation driven by the seed.
        shuffled.sort_by_key(|n| distkit_hashring::hash_key_with_seed(n.id().as_str().as_bytes(), seed));
        let pairs: [(Arc<dyn Locator>, Arc<dyn Locator>); 4] = [
            (Arc::new(small_ring(&nodes)), Arc::new(small_ring(&shuffled))),
            (
                Arc::new(HashRing::builder().points_per_weight(40).build_with(nodes.clone()).unwrap()),
                Arc::new(small_ring(&shuffled)),
            ),
            (
                Arc::new(Maglev::with_table_size(nodes.clone(), 1009).unwrap()),
                Arc::new(Maglev::with_table_size(shuffled.clone(), 1009).unwrap()),
            ),
            (Arc::new(Rendezvous::new(nodes.clone()).unwrap()), Arc::new(Rendezvous::new(shuffled.clone()).unwrap())),
        ];
        for (a, b) in pairs {
            prop_assert_eq!(owners(a.as_ref(), &ks), owners(b.as_ref(), &ks));
        }
    }

    #[test]
    fn replicas_are_distinct_and_start_with_the_owner(nodes in members(8), n in 1usize..12, salt in any::<u64>()) {
        let shard_ids: Vec<NodeId> = nodes.iter().map(|x| x.id().clone()).collect();
        let ketama_nodes: Vec<Node> = nodes.iter().map(|x| Node::new(x.id().clone(), x.address()).with_weight(x.weight())).collect();
        let locators: [Arc<dyn Locator>; 5] = [
            Arc::new(small_ring(&nodes)),
            Arc::new(Ketama::new(ketama_nodes).unwrap()),
            Arc::new(JumpHash::new(shard_ids)),
            Arc::new(Maglev::with_table_size(nodes.clone(), 1009).unwrap()),
            Arc::new(Rendezvous::new(nodes.clone()).unwrap()),
        ];
        let bounded = BoundedLoads::new(small_ring(&nodes), 0.2).unwrap();
        for k in keys(30, salt) {
            let r = bounded.assign_with_replicas(&k, n).unwrap();
            prop_assert_eq!(r.len(), n.min(nodes.len()));
            prop_assert_eq!(&r[0], &bounded.assign(&k).unwrap());
            let distinct: BTreeSet<&NodeId> = r.iter().collect();
            prop_assert_eq!(distinct.len(), r.len());
        }
        for l in locators {
            for k in keys(30, salt) {
                let r = l.replicas(&k, n).unwrap();
                prop_assert_eq!(r.len(), n.min(nodes.len()), "{:?}", l);
                prop_assert_eq!(&r[0], &l.owner(&k).unwrap(), "{:?}", l);
                let distinct: BTreeSet<&NodeId> = r.iter().collect();
                prop_assert_eq!(distinct.len(), r.len(), "{:?}", l);
            }
        }
    }

    #[test]
    fn bounded_loads_never_exceed_the_cap(nodes in members(10), eps in 0.01f64..1.0, count in 1usize..600, salt in any::<u64>()) {
        let b = BoundedLoads::new(small_ring(&nodes), eps).unwrap();
        for (i, k) in keys(count, salt).iter().enumerate() {
            b.assign(k).unwrap();
            let cap = b.cap_for(i as u64 + 1);
            for (id, load) in b.loads() {
                prop_assert!(load <= cap, "{id} holds {load} > cap {cap} after {} keys", i + 1);
            }
        }
        prop_assert_eq!(b.loads().iter().map(|(_, l)| l).sum::<u64>(), count as u64);
    }

    #[test]
    fn ring_load_is_proportional_to_weight_within_tolerance(weights in prop::collection::vec(1u32..=4, 2..=5)) {
        // 1,000 points per weight: each node's share is within 15% of its weight's share
        // (about 5 standard deviations at these point counts).
        let nodes: Vec<Node> = weights.iter().enumerate().map(|(i, &w)| node(i as u32, w)).collect();
        let ring = HashRing::builder().build_with(nodes).unwrap();
        let total: f64 = weights.iter().map(|&w| f64::from(w)).sum();
        for (n, share) in ring.shares() {
            let want = f64::from(n.weight()) / total;
            prop_assert!((share / want - 1.0).abs() < 0.15, "{} has {share}, wants {want}", n.id());
        }
    }

    #[test]
    fn jump_moves_keys_only_into_the_new_bucket(key in any::<u64>(), n in 1u32..2000) {
        // The paper's defining property: growing from n to n+1 buckets either keeps a key's
        // bucket or moves it to bucket n.
        let before = jump_hash(key, n).unwrap();
        let after = jump_hash(key, n + 1).unwrap();
        prop_assert!(before < n);
        prop_assert!(after == before || after == n);
    }

    #[test]
    fn maglev_table_is_the_papers_population(ids in prop::collection::btree_set(0u32..10_000, 1..12), size in prop::sample::select(vec![251u64, 1009, 4099])) {
        let nodes: Vec<Node> = ids.iter().map(|&i| node(i, 1)).collect();
        let m = Maglev::with_table_size(nodes, size).unwrap();
        // Pseudocode 1 of Eisenbud et al.: full permutation tables, then backends take turns.
        let perms: Vec<Vec<u64>> = m
            .nodes()
            .iter()
            .map(|n| {
                let (offset, skip) = m.offset_and_skip(n.id().as_str());
                (0..size).map(|j| (offset + j * skip) % size).collect()
            })
            .collect();
        let mut next = vec![0usize; perms.len()];
        let mut entry = vec![u32::MAX; size as usize];
        let mut filled = 0;
        'outer: loop {
            for i in 0..perms.len() {
                let mut c = perms[i][next[i]];
                while entry[c as usize] != u32::MAX {
                    next[i] += 1;
                    c = perms[i][next[i]];
                }
                entry[c as usize] = i as u32;
                next[i] += 1;
                filled += 1;
                if filled == size {
                    break 'outer;
                }
            }
        }
        prop_assert_eq!(m.table(), &entry[..]);
    }

    #[test]
    fn set_weight_moves_keys_only_to_or_from_that_node(nodes in members(6), pick in any::<prop::sample::Index>(), w in 1u32..=6, salt in any::<u64>()) {
        let ks = keys(300, salt);
        let target = nodes[pick.index(nodes.len())].id().clone();
        let mut ring = small_ring(&nodes);
        let before = owners(&ring, &ks);
        ring.set_weight(target.as_str(), w).unwrap();
        for (old, new) in before.iter().zip(owners(&ring, &ks)) {
            prop_assert!(old == &new || old == &target || new == target);
        }
    }
}

#[test]
fn ring_balance_at_100_nodes_is_within_target() {
    // 100 equal nodes at the default 1,000 points: the busiest node's share of the hash space
    // stays under 1.10x the mean (the benchmark measures the same with 1M keys).
    let ring = HashRing::builder()
        .build_with((0..100).map(|i| node(i, 1)))
        .unwrap();
    let shares: HashMap<&str, f64> = ring
        .shares()
        .into_iter()
        .map(|(n, s)| (n.id().as_str(), s))
        .collect();
    let peak = shares.values().cloned().fold(0.0, f64::max);
    assert!(peak * 100.0 < 1.10, "peak/mean {}", peak * 100.0);
}
