//! The design document's ring example, done properly: spread 10,000 IoT devices over five
//! gateways (one of them twice as big), show the spread, then remove a gateway and count
//! how many devices had to move.
//!
//! Run with `cargo run -p distkit-hashring --example iot_devices`.

use std::collections::BTreeMap;

use distkit_core::NodeId;
use distkit_hashring::{HashRing, Node, RingError};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut ring = HashRing::new();
    for i in 1..=5 {
        let node = Node::new(
            NodeId::new(format!("gateway-{i}"))?,
            format!("192.168.1.{}:8080", 10 + i),
        );
        ring.add_node(if i == 5 { node.with_weight(2) } else { node })?;
    }

    let devices: Vec<String> = (0..10_000).map(|i| format!("device:{i}")).collect();
    let owners = |ring: &HashRing| -> Result<Vec<NodeId>, RingError> {
        devices
            .iter()
            .map(|d| Ok(ring.locate(d.as_bytes())?.id().clone()))
            .collect()
    };
    let before = owners(&ring)?;
    let mut spread: BTreeMap<&NodeId, usize> = BTreeMap::new();
    for o in &before {
        *spread.entry(o).or_default() += 1;
    }
    println!("10,000 devices over 5 gateways (gateway-5 has weight 2):");
    for (id, n) in &spread {
        println!("  {id:<10} {n:>5} devices");
    }

    ring.remove_node("gateway-3")?;
    let after = owners(&ring)?;
    let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
    let had = spread
        .iter()
        .find(|(id, _)| id.as_str() == "gateway-3")
        .map_or(0, |(_, n)| *n);
    println!("removed gateway-3: {moved} devices moved, exactly the {had} it held");
    assert_eq!(moved, had);

    let replicas = ring.replicas(b"device:42", 2)?;
    println!(
        "device:42 is stored on {} with a replica on {}",
        replicas[0].id(),
        replicas[1].id()
    );
    Ok(())
}
