//! The Sentinel setup the lock tests rely on: it settles, and a killed primary is replaced.

use std::time::Duration;

use distkit_testkit::{Reply, SentinelSetup};

#[test]
fn a_killed_primary_is_replaced_by_a_replica_that_takes_writes() {
    let mut setup = SentinelSetup::start(2, 3).unwrap();
    let first = setup.primary_port().unwrap();
    assert_eq!(first, setup.servers[0].port());
    let killed = setup.kill_primary().unwrap();
    let next = setup
        .wait_for_failover(killed, Duration::from_secs(60))
        .unwrap();
    assert_ne!(next, killed);
    let primary = setup.server_on(next).unwrap();
    assert_eq!(
        primary.command(&["SET", "k", "v"]).unwrap(),
        Reply::Status("OK".into())
    );
}
