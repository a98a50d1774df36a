//! Three election nodes on loopback: watch a leader emerge, kill it, watch the failover.
//!
//! `cargo run -p distkit-election --example three_nodes`

use std::sync::Arc;
use std::time::{Duration, Instant};

use distkit_core::{LeaderElector, NodeId};
use distkit_election::{Config, Elector, HttpTransport, MemoryVoteStore, http_router};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ids: Vec<NodeId> = ["sensor-hub", "gateway", "billing"]
        .into_iter()
        .map(NodeId::new)
        .collect::<Result<_, _>>()?;
    let mut listeners = Vec::new();
    for _ in &ids {
        listeners.push(tokio::net::TcpListener::bind("127.0.0.1:0").await?);
    }
    let urls: Vec<String> = listeners
        .iter()
        .map(|l| Ok(format!("http://{}", l.local_addr()?)))
        .collect::<Result<_, std::io::Error>>()?;
    let mut nodes = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let peers: Vec<(NodeId, String)> = (0..ids.len())
            .filter(|&j| j != i)
            .map(|j| (ids[j].clone(), urls[j].clone()))
            .collect();
        let transport =
            HttpTransport::new(peers.clone(), "example-token", Duration::from_millis(200))?;
        let config =
            Config::builder(ids[i].clone(), peers.into_iter().map(|(id, _)| id)).build()?;
        let elector = Elector::start(
            config,
            Arc::new(MemoryVoteStore::new()),
            Arc::new(transport),
        )?;
        let app = http_router(elector.inbox(), "example-token");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        println!("{} listens on {}", ids[i], urls[i]);
        nodes.push((elector, server));
    }
    let leader = loop {
        if let Some(i) = nodes.iter().position(|(e, _)| e.is_leader()) {
            break i;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let term = nodes[leader].0.leadership().term;
    println!(
        "{} leads term {term} (lease held: {})",
        ids[leader],
        nodes[leader].0.is_leader_with_lease()
    );
    let (elector, server) = nodes.remove(leader);
    server.abort();
    elector.shutdown().await;
    let killed = Instant::now();
    println!("killed {}", ids[leader]);
    loop {
        if let Some((e, _)) = nodes.iter().find(|(e, _)| e.is_leader()) {
            println!(
                "{} leads term {} after {:?}",
                e.id(),
                e.leadership().term,
                killed.elapsed()
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}
