//! Counting live tokio tasks, for lifecycle tests: "no task outlives its owner".
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::time::Duration;
//! use distkit_testkit::tasks;
//!
//! let before = tasks::alive();
//! let t = tokio::spawn(std::future::pending::<()>());
//! assert_eq!(tasks::alive(), before + 1);
//! t.abort();
//! assert!(tasks::settle(before, Duration::from_secs(1)).await.is_ok());
//! # });
//! ```

use std::time::{Duration, Instant};

/// Tasks alive on the current tokio runtime (spawned and not yet finished and released).
///
/// # Panics
///
/// Outside a tokio runtime (test code only).
#[must_use]
pub fn alive() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Waits until at most `most` tasks are alive, polling for up to `limit` (an aborted task is
/// released at its next poll, not at once). `Err` carries the count seen last.
///
/// # Errors
///
/// The number of tasks still alive when `limit` ran out.
pub async fn settle(most: usize, limit: Duration) -> Result<(), usize> {
    let start = Instant::now();
    loop {
        let n = alive();
        if n <= most {
            return Ok(());
        }
        if start.elapsed() >= limit {
            return Err(n);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
