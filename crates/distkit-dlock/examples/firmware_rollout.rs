//! The design document's lock example, done properly: several workers roll firmware out to
//! devices, each device under its own lock, and a fencing check in the "device registry"
//! refuses any write carrying a stale token.
//!
//! Runs on the in-process backend; set `REDIS_URL=redis://127.0.0.1:6379/` to use Redis.
//!
//! `cargo run -p distkit-dlock --example firmware_rollout`

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use distkit_core::{DistributedLock, FencingToken};
use distkit_dlock::{LocalLock, RedisLock};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let locks: Arc<dyn DistributedLock> = match std::env::var("REDIS_URL") {
        Ok(url) => {
            println!("using Redis at {url}");
            Arc::new(
                RedisLock::builder(url)
                    .ttl(Duration::from_secs(5))
                    .build()?,
            )
        }
        Err(_) => {
            println!("using the in-process lock (set REDIS_URL to use Redis)");
            Arc::new(LocalLock::new(Duration::from_secs(5))?)
        }
    };
    // The device registry: the highest fencing token it accepted per device.
    let registry: Arc<Mutex<HashMap<String, FencingToken>>> = Arc::default();
    let mut workers = Vec::new();
    for w in 0..4 {
        let (locks, registry) = (locks.clone(), registry.clone());
        workers.push(tokio::spawn(async move {
            let mut updated = 0;
            for d in 0..20 {
                let device = format!("device-{d}");
                let guard = locks
                    .acquire(&format!("firmware:{device}"), Duration::from_secs(5))
                    .await?;
                let token = guard.fencing_token();
                {
                    let mut reg = registry.lock().unwrap_or_else(|e| e.into_inner());
                    let seen = reg.entry(device.clone()).or_default();
                    if token < *seen {
                        return Err(format!("stale token {token} for {device}").into());
                    }
                    *seen = token;
                }
                updated += 1;
                guard.release().await?;
            }
            println!("worker {w} updated {updated} devices");
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(updated)
        }));
    }
    let mut total = 0;
    for w in workers {
        total += w.await?.map_err(|e| e.to_string())?;
    }
    println!("{total} updates, every one fenced");
    Ok(())
}
