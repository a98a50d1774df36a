//! The design document's cache example, done properly: two cache nodes on loopback share
//! device states; each key lives at its owner, reads go through it, loads happen once.
//!
//! `cargo run -p distkit-dcache --example device_states`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use distkit_core::{Loader, NodeId};
use distkit_dcache::DistributedCache;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ids = [NodeId::new("edge-1")?, NodeId::new("edge-2")?];
    let listeners = [
        tokio::net::TcpListener::bind("127.0.0.1:0").await?,
        tokio::net::TcpListener::bind("127.0.0.1:0").await?,
    ];
    let urls: Vec<String> = listeners
        .iter()
        .map(|l| Ok(format!("http://{}", l.local_addr()?)))
        .collect::<Result<_, std::io::Error>>()?;
    let mut nodes = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let other = 1 - i;
        let cache = DistributedCache::builder(ids[i].clone())
            .max_entries(1000)
            .ttl(Duration::from_secs(3600))
            .token("demo-token")
            .peer(ids[other].clone(), urls[other].clone())
            .build()?;
        let app = cache.router();
        tokio::spawn(async move { axum::serve(listener, app).await });
        nodes.push(cache);
    }
    for (key, name) in [("user:1", "John Doe"), ("user:2", "Jane Smith")] {
        nodes[0].set(key, name).await?;
        println!("{key} is owned by {}", nodes[0].owner_of(key)?);
    }
    if let Some(v) = nodes[1].get("user:1").await? {
        println!("edge-2 read user:1 = {}", String::from_utf8_lossy(&v));
    }
    let loads = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..100 {
        let (cache, loads) = (nodes[i % 2].clone(), loads.clone());
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_load(
                    "firmware:manifest",
                    Loader::new(move || async move {
                        loads.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok::<_, std::io::Error>("v2.1.0".to_owned())
                    }),
                )
                .await
        }));
    }
    for t in tasks {
        t.await??;
    }
    println!(
        "100 readers on two nodes, loader ran {} time(s)",
        loads.load(Ordering::SeqCst)
    );
    Ok(())
}
