//! Hostile input through the public API: weights, point counts, table sizes and bucket
//! counts at their limits, node churn in any order, and keys of any size. Every call
//! answers or returns a typed error; nothing panics, nothing allocates without bound.

use distkit_core::{Locator, NodeId};
use distkit_hashring::{
    BoundedLoads, HashRing, JumpHash, Ketama, Maglev, Node, Rendezvous, RingError, jump_hash,
};
use proptest::prelude::*;

fn node(i: u32, w: u32) -> Node {
    Node::new(
        NodeId::new(format!("n{i}")).unwrap(),
        format!("10.0.0.{i}:1"),
    )
    .with_weight(w)
}

fn weight() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(2),
        Just(u32::MAX),
        Just(u32::MAX / 2),
        1u32..8
    ]
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(Vec::new()),
        Just(vec![0u8; 1 << 20]),
        prop::collection::vec(any::<u8>(), 0..64),
    ]
}

#[derive(Clone, Debug)]
enum Op {
    Add(u32, u32),
    Remove(u32),
    Reweight(u32, u32),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![
            (0u32..6, weight()).prop_map(|(i, w)| Op::Add(i, w)),
            (0u32..8).prop_map(Op::Remove),
            (0u32..6, weight()).prop_map(|(i, w)| Op::Reweight(i, w)),
        ],
        0..20,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Churn in any order with weights from 0 to `u32::MAX` on a ring with any point count:
    /// every call answers or refuses with a typed error, and lookups stay consistent with
    /// the member set.
    #[test]
    fn proptests_ring_churn_with_extreme_weights_never_panics(
        points in prop_oneof![Just(0u32), Just(1), Just(u32::MAX), 1u32..200],
        ops in ops(),
        keys in prop::collection::vec(key(), 1..4),
    ) {
        let Ok(mut ring) = HashRing::builder().points_per_weight(points).build() else {
            prop_assert_eq!(points, 0);
            return Ok(());
        };
        for op in ops {
            let r = match op {
                Op::Add(i, w) => ring.add_node(node(i, w)),
                Op::Remove(i) => ring.remove_node(&format!("n{i}")).map(|_| ()),
                Op::Reweight(i, w) => ring.set_weight(&format!("n{i}"), w),
            };
            if let Err(e) = r {
                // A typed error that converts at the trait boundary.
                let _ = distkit_core::Error::from(e);
            }
            for k in &keys {
                match ring.locate(k) {
                    Ok(n) => prop_assert!(ring.node(n.id().as_str()).is_some()),
                    Err(e) => prop_assert_eq!(e, RingError::Empty),
                }
                let n = ring.len();
                let r = ring.replicas(k, usize::MAX).map(|v| v.len()).unwrap_or(0);
                prop_assert_eq!(r, n);
            }
        }
    }

    #[test]
    fn proptests_jump_maglev_ketama_rendezvous_take_any_sizes(
        buckets in prop_oneof![Just(0u32), Just(1), Just(u32::MAX), any::<u32>()],
        key_hash in any::<u64>(),
        size in prop_oneof![Just(0u64), Just(1), Just(2), Just(4), Just(1009), Just(u64::MAX), any::<u64>()],
        weights in prop::collection::vec(weight(), 0..5),
        k in key(),
    ) {
        match jump_hash(key_hash, buckets) {
            Ok(b) => prop_assert!(b < buckets),
            Err(e) => prop_assert_eq!(e, RingError::ZeroBuckets),
        }
        let nodes: Vec<Node> = weights.iter().enumerate().map(|(i, &w)| node(i as u32, w)).collect();
        if let Ok(m) = Maglev::with_table_size(nodes.clone(), size) {
            let _ = m.locate(&k);
        }
        if let Ok(r) = Rendezvous::new(nodes.clone()) {
            let _ = r.locate(&k);
            let top = r.top(&k, usize::MAX).map(|v| v.len()).unwrap_or(0);
            prop_assert!(top <= nodes.len());
        }
        if let Ok(kt) = Ketama::new(nodes.clone()) {
            let _ = kt.locate(&k);
        }
        let jump = JumpHash::new(nodes.iter().map(|n| n.id().clone()).collect());
        let _ = Locator::owner(&jump, &k);
        let _ = Locator::replicas(&jump, &k, usize::MAX);
    }

    /// The first wave's bounded loads kept every key it ever saw. The table is bounded now
    /// and refuses new keys when full; releases make room.
    #[test]
    fn proptests_bounded_loads_stay_within_their_table(
        max in 1u64..50,
        eps in prop_oneof![Just(f64::MIN_POSITIVE), Just(1e-9), Just(1e9), 0.01f64..2.0],
        keys in prop::collection::vec(any::<u32>(), 0..200),
    ) {
        let mut ring = HashRing::new();
        for i in 0..3 {
            ring.add_node(node(i, 1)).unwrap();
        }
        let b = BoundedLoads::new(ring, eps).unwrap().with_max_keys(max);
        for (i, k) in keys.iter().enumerate() {
            match b.assign(&k.to_le_bytes()) {
                Ok(_) => {}
                Err(RingError::TableFull { max: m }) => prop_assert_eq!(m, max),
                Err(e) => prop_assert!(false, "{e}"),
            }
            prop_assert!(b.assigned() <= max);
            if i % 3 == 0 {
                b.release(&k.to_le_bytes());
            }
        }
    }
}

#[test]
fn bad_constructor_arguments_are_typed_errors() {
    for eps in [f64::NAN, f64::INFINITY, -1.0, 0.0] {
        assert!(matches!(
            BoundedLoads::new(HashRing::new(), eps),
            Err(RingError::InvalidEpsilon { .. })
        ));
    }
    assert!(matches!(
        HashRing::builder().points_per_weight(0).build(),
        Err(RingError::ZeroPoints)
    ));
    assert!(matches!(
        Maglev::with_table_size([node(0, 1)], 4),
        Err(RingError::NotPrime { .. })
    ));
}
