//! A separate OS process for the multi-process lock tests.
//!
//! `dlock-worker count URL NAME TASKS ITERATIONS`: TASKS tasks each take the lock ITERATIONS
//! times and, holding it, do a deliberately non-atomic read-modify-write of a counter in
//! Redis; the counter's owner also checks that fencing tokens only increase (a violation is
//! counted under `NAME:violations`).
//!
//! `dlock-worker hold URL NAME TTL_MS`: takes the lock, prints `held FENCE`, and sleeps until
//! killed.
//!
//! `dlock-worker KIND URL NAME TASKS ITERATIONS` with KIND `fair`, `rw` or `semaphore`: the
//! same workload on that kind. `rw`: one grant in four is a write (the non-atomic counter,
//! fencing checked as above, and a `NAME:writing` mark while inside); a read checks that no
//! writer is inside and that its token is above the last write's. `semaphore` (3 permits):
//! holders count themselves in `NAME:inside`; more than 3 at once is a violation.
//!
//! `dlock-worker sentinel MASTER SENTINELS STORE NAME TASKS SECONDS MIN_REPLICAS`: TASKS
//! tasks take the lock of the Sentinel deployment (SENTINELS comma-separated) for SECONDS,
//! through whatever failovers happen, each time marking themselves inside at the store (a
//! separate server): finding someone else inside, or a fencing token below the last one,
//! counts a violation (`NAME:violations`: a grant lost to a promotion). Prints `grants N
//! last_grant_ms M` (M: ms since start of the last grant of any task).
//!
//! `dlock-worker hold-KIND URL NAME TTL_MS` (KIND `fair`, `read`, `write`, `semaphore`): holds
//! one grant of that kind (a semaphore of 1 permit) and sleeps until killed.

use std::time::Duration;

use std::sync::Arc;

use distkit::dlock::RedisLock;
use distkit::{AcquireOptions, DistributedLock, DistributedRwLock, DistributedSemaphore};
use rand::Rng;
use redis::AsyncCommands;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

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
        [
            kind @ ("fair" | "rw" | "semaphore"),
            url,
            name,
            tasks,
            iterations,
        ] => family(kind, url, name, tasks.parse()?, iterations.parse()?).await,
        [
            "sentinel",
            master,
            sentinels,
            store,
            name,
            tasks,
            secs,
            replicas,
        ] => {
            sentinel(
                master,
                sentinels,
                store,
                name,
                tasks.parse()?,
                Duration::from_secs_f64(secs.parse()?),
                replicas.parse()?,
            )
            .await
        }
        [kind, url, name, ttl_ms] if kind.starts_with("hold-") => {
            hold_kind(&kind["hold-".len()..], url, name, ttl_ms.parse()?).await
        }
        _ => Err(
            "usage: dlock-worker count|fair|rw|semaphore URL NAME TASKS ITERATIONS \
                  | hold[-fair|-read|-write|-semaphore] URL NAME TTL_MS"
                .into(),
        ),
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

/// The permits of the multi-process semaphore workload.
const PERMITS: u32 = 3;

async fn family(
    kind: &str,
    url: &str,
    name: &str,
    tasks: usize,
    iterations: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let lock = RedisLock::builder(url)
        .ttl(std::time::Duration::from_secs(10))
        .build()?;
    let rw = Arc::new(lock.rw());
    let sem = Arc::new(lock.semaphore(PERMITS)?);
    let fair: Arc<dyn DistributedLock> = Arc::new(lock.fair());
    let client = redis::Client::open(url)?;
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (rw, sem, fair) = (rw.clone(), sem.clone(), fair.clone());
        let mut conn = client.get_multiplexed_async_connection().await?;
        let (name, kind) = (name.to_owned(), kind.to_owned());
        handles.push(tokio::spawn(async move {
            let wait = AcquireOptions::new().wait(Duration::from_secs(60));
            for _ in 0..iterations {
                match kind.as_str() {
                    "fair" => {
                        let g = fair.acquire_with(&name, wait).await?;
                        exclusive_section(&mut conn, &name, g.fencing_token().get()).await?;
                        g.release().await?;
                    }
                    "rw" if rand::rng().random_ratio(1, 4) => {
                        let g = rw.write_lock().acquire_with(&name, wait).await?;
                        let _: () = conn.set(format!("{name}:writing"), 1).await?;
                        exclusive_section(&mut conn, &name, g.fencing_token().get()).await?;
                        let _: () = conn.del(format!("{name}:writing")).await?;
                        g.release().await?;
                    }
                    "rw" => {
                        let g = rw.read_lock().acquire_with(&name, wait).await?;
                        let writing: Option<u64> = conn.get(format!("{name}:writing")).await?;
                        let last: u64 = conn
                            .get::<_, Option<u64>>(format!("{name}:last_fence"))
                            .await?
                            .unwrap_or(0);
                        if writing.is_some() || g.fencing_token().get() <= last {
                            let _: u64 = conn.incr(format!("{name}:violations"), 1).await?;
                        }
                        tokio::task::yield_now().await;
                        g.release().await?;
                    }
                    _ => {
                        let g = sem.acquire_permits(&name, 1, wait).await?;
                        let inside: u32 = conn.incr(format!("{name}:inside"), 1).await?;
                        if inside > PERMITS {
                            let _: u64 = conn.incr(format!("{name}:violations"), 1).await?;
                        }
                        tokio::task::yield_now().await;
                        let _: i64 = conn.decr(format!("{name}:inside"), 1).await?;
                        let _: u64 = conn.incr(format!("{name}:counter"), 1).await?;
                        g.release().await?;
                    }
                }
            }
            Ok::<(), BoxError>(())
        }));
    }
    for h in handles {
        h.await?.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The non-atomic read-modify-write of `NAME:counter`, with the store's fencing check.
async fn exclusive_section(
    conn: &mut redis::aio::MultiplexedConnection,
    name: &str,
    fence: u64,
) -> Result<(), BoxError> {
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
    Ok(())
}

async fn hold_kind(
    kind: &str,
    url: &str,
    name: &str,
    ttl_ms: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let lock = RedisLock::builder(url)
        .ttl(Duration::from_millis(ttl_ms))
        .build()?;
    let backend: Arc<dyn DistributedLock> = match kind {
        "fair" => Arc::new(lock.fair()),
        "read" => lock.rw().read_lock(),
        "write" => lock.rw().write_lock(),
        "semaphore" => Arc::new(lock.semaphore(1)?),
        other => return Err(format!("no kind {other:?}").into()),
    };
    let guard = backend.acquire(name, Duration::from_secs(10)).await?;
    println!("held {}", guard.fencing_token());
    std::future::pending::<()>().await;
    Ok(())
}

async fn sentinel(
    master: &str,
    sentinels: &str,
    store: &str,
    name: &str,
    tasks: usize,
    run: Duration,
    replicas: u32,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut builder = RedisLock::sentinel(master, sentinels.split(','))
        .ttl(Duration::from_secs(2))
        .op_timeout(Duration::from_millis(500));
    if replicas > 0 {
        builder = builder.min_replicas(replicas, Duration::from_millis(200));
    }
    let lock = builder.build()?;
    let client = redis::Client::open(store)?;
    let start = std::time::Instant::now();
    let last_grant = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let grants = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (lock, last_grant, grants) = (lock.clone(), last_grant.clone(), grants.clone());
        let mut conn = client.get_multiplexed_async_connection().await?;
        let name = name.to_owned();
        handles.push(tokio::spawn(async move {
            while start.elapsed() < run {
                // Failovers make acquires fail for a while: retryable errors are retried.
                let Ok(g) = lock.acquire(&name, Duration::from_secs(2)).await else {
                    continue;
                };
                grants.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                last_grant.fetch_max(
                    start.elapsed().as_millis() as u64,
                    std::sync::atomic::Ordering::Relaxed,
                );
                let fence = g.fencing_token().get();
                let entered: bool = redis::cmd("SET")
                    .arg(format!("{name}:inside"))
                    .arg(1)
                    .arg("NX")
                    .query_async::<Option<String>>(&mut conn)
                    .await?
                    .is_some();
                let last: u64 = conn
                    .get::<_, Option<u64>>(format!("{name}:last_fence"))
                    .await?
                    .unwrap_or(0);
                if !entered || fence <= last {
                    let _: u64 = conn.incr(format!("{name}:violations"), 1).await?;
                }
                let _: () = conn
                    .set(format!("{name}:last_fence"), fence.max(last))
                    .await?;
                tokio::time::sleep(Duration::from_millis(1)).await;
                if entered {
                    let _: () = conn.del(format!("{name}:inside")).await?;
                }
                // A release that fails (the primary just died) is retried in the background.
                let _ = g.release().await;
            }
            Ok::<(), BoxError>(())
        }));
    }
    for h in handles {
        h.await?.map_err(|e| e.to_string())?;
    }
    println!(
        "grants {} last_grant_ms {}",
        grants.load(std::sync::atomic::Ordering::Relaxed),
        last_grant.load(std::sync::atomic::Ordering::Relaxed)
    );
    Ok(())
}
