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
