//! The Redis Cluster the lock tests rely on: it forms, and keys spread over its primaries.

use distkit_testkit::{RedisCluster, Reply};

#[test]
fn a_cluster_of_three_primaries_and_three_replicas_forms() {
    let cluster = RedisCluster::start(3, 1).unwrap();
    assert_eq!(cluster.nodes.len(), 6);
    let owners: std::collections::HashSet<u16> = ["a", "b", "c", "d", "e", "f", "g", "h"]
        .iter()
        .filter_map(|k| cluster.owner_of(k))
        .collect();
    assert!(owners.len() >= 2, "keys spread over primaries: {owners:?}");
    let owner = cluster.owner_of("{x}").unwrap();
    let node = cluster.nodes.iter().find(|n| n.port() == owner).unwrap();
    assert_eq!(
        node.command(&["SET", "{x}", "1"]).unwrap(),
        Reply::Status("OK".into())
    );
}
