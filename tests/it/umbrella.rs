use distkit::{Error, NodeId};

#[test]
fn umbrella_reexports_core_under_both_paths() {
    let a: distkit::core::NodeId = "n1".parse().unwrap();
    let b: NodeId = distkit::NodeId::new("n1").unwrap();
    assert_eq!(a, b);
    let e: Error = NodeId::new("").unwrap_err();
    assert!(matches!(e, distkit::core::Error::InvalidInput { .. }));
}

#[test]
fn redis_from_testkit_is_reachable_from_the_integration_package() {
    let redis = distkit_testkit::RedisServer::start().expect("redis-server starts");
    redis.ping().expect("PONG");
}

#[test]
fn umbrella_exposes_the_ring_behind_the_trait() {
    use distkit::Locator;
    let mut ring = distkit::hashring::HashRing::new();
    for id in ["a", "b", "c"] {
        ring.add_node(distkit::hashring::Node::new(NodeId::new(id).unwrap(), id))
            .unwrap();
    }
    let locator: std::sync::Arc<dyn Locator> = std::sync::Arc::new(ring);
    assert_eq!(locator.replicas(b"k", 3).unwrap().len(), 3);
}
