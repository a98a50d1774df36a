//! A memory test in a test binary of its own: resident memory is a fact about the whole
//! process, so no other test may run beside it.

use std::time::Duration;

use distkit_core::{Loader, NodeId};
use distkit_dcache::DistributedCache;

/// The process's resident memory, from /proc (Linux).
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// 200,000 `get_or_load` calls cancelled mid-load, each of its own key, with the cache capped at
/// 1 MiB: the process grows by a bounded margin, not with the calls (the first version kept
/// every abandoned load: 532 MiB for 1M of them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_loads_do_not_grow_memory() {
    let cache = DistributedCache::builder(NodeId::new("mem").unwrap())
        .max_bytes(1 << 20)
        .build()
        .unwrap();
    let round = |first: u32| {
        let cache = cache.clone();
        async move {
            let mut tasks = Vec::with_capacity(10_000);
            for i in first..first + 10_000 {
                let cache = cache.clone();
                tasks.push(tokio::spawn(async move {
                    let key = format!("cancelled-{i}");
                    let l = Loader::new(|| async {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        Ok::<_, std::io::Error>("never")
                    });
                    tokio::time::timeout(Duration::from_micros(100), cache.get_or_load(&key, l))
                        .await
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
        }
    };
    // A warm-up round first, so allocator pools are in place before the baseline.
    round(0).await;
    let before = rss_bytes();
    for r in 1..20u32 {
        round(r * 10_000).await;
    }
    let grown = rss_bytes().saturating_sub(before);
    assert_eq!(cache.loads_in_flight(), 0);
    assert!(
        grown < 32 << 20,
        "resident memory grew by {} MiB over 190,000 cancelled loads",
        grown >> 20
    );
}
