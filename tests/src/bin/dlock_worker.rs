//! A separate OS process for the multi-process lock tests.
//!
//! `dlock-worker count URL NAME TASKS ITERATIONS`: TASKS tasks each take the lock ITERATIONS
//! times and, holding it, do a deliberately non-atomic read-modify-write of a counter in
//! Redis; the counter's owner also checks that fencing tokens only increase (a violation is
//! counted under `NAME:violations`).
//!
//! `dlock-worker hold URL NAME TTL_MS`: takes the lock, prints `held FENCE`, and sleeps until
//! killed.

use std::time::Duration;

use distkit::DistributedLock;
use distkit::dlock::RedisLock;
use redis::AsyncCommands;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["count", url, name, tasks, iterations] => {
            count(url, name, tasks.parse()?, iterations.parse()?).await
        }
        ["hold", url, name, ttl_ms] => hold(url, name, ttl_ms.parse()?).await,
        _ => {
            Err("usage: dlock-worker count URL NAME TASKS ITERATIONS | hold URL NAME TTL_MS".into())
        }
    }
}

async fn count(
    url: &str,
    name: &str,
    tasks: usize,
    iterations: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let lock = RedisLock::builder(url)
        .ttl(Duration::from_secs(10))
        .build()?;
    let client = redis::Client::open(url)?;
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let lock = lock.clone();
        let mut conn = client.get_multiplexed_async_connection().await?;
        let name = name.to_owned();
        handles.push(tokio::spawn(async move {
            for _ in 0..iterations {
                let guard = lock.acquire(&name, Duration::from_secs(60)).await?;
                let fence = guard.fencing_token().get();
                let counter: u64 = conn
                    .get::<_, Option<u64>>(format!("{name}:counter"))
                    .await?
                    .unwrap_or(0);
                let last: u64 = conn
                    .get::<_, Option<u64>>(format!("{name}:last_fence"))
                    .await?
                    .unwrap_or(0);
                if fence <= last {
                    let _: u64 = conn.incr(format!("{name}:violations"), 1).await?;
                }
                tokio::task::yield_now().await;
                let _: () = conn.set(format!("{name}:counter"), counter + 1).await?;
                let _: () = conn.set(format!("{name}:last_fence"), fence).await?;
                guard.release().await?;
            }
            Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
        }));
    }
    for h in handles {
        h.await?.map_err(|e| e.to_string())?;
    }
    Ok(())
}

async fn hold(url: &str, name: &str, ttl_ms: u64) -> Result<(), Box<dyn std::error::Error>> {
    let lock = RedisLock::builder(url)
        .ttl(Duration::from_millis(ttl_ms))
        .build()?;
    let guard = lock.acquire(name, Duration::from_secs(10)).await?;
    println!("held {}", guard.fencing_token());
    std::future::pending::<()>().await;
    Ok(())
}
