//! `LocalLock`: the same contract inside one process, for tests and single-node deployments.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use distkit_core::{AcquireOptions, DistributedLock, Error, Lease, LockGuard};

use crate::local_family::{Local, LocalFairLock, Mode, Table};
use crate::redis_lock::DEFAULT_TTL;
use crate::util::delegate_lock;

/// An in-process lock table with the semantics of [`RedisLock`](crate::RedisLock): leases
/// with TTLs, secret tokens, strictly increasing fencing tokens, waiters woken on release (and
/// at the holder's expiry), and an optional watchdog.
///
/// Use it in tests and in deployments of a single process; it coordinates nothing across
/// processes.
///
/// ```
/// use std::time::Duration;
/// use distkit_core::DistributedLock;
/// use distkit_dlock::LocalLock;
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let locks = LocalLock::new(Duration::from_secs(5))?;
/// let a = locks.acquire("firmware:device-7", Duration::from_secs(1)).await?;
/// assert!(locks.try_acquire("firmware:device-7").await?.is_none());
/// let fence = a.fencing_token();
/// a.release().await?;
/// let b = locks.try_acquire("firmware:device-7").await?.expect("free again");
/// assert!(b.fencing_token() > fence);
/// # Ok::<(), distkit_core::Error>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct LocalLock {
    local: Local,
}

/// The most lock names a [`LocalLock`] keeps by default (held, or with waiters).
pub const DEFAULT_MAX_LOCKS: usize = 100_000;

/// The next fencing token: `max(previous + 1, microseconds since the epoch)`, as the Redis
/// backend's, so tokens keep rising across a restart of the process (an outside review saw
/// them start again at 1, which a fenced store would refuse) as long as the clock does not
/// step back. `None` once the counter is at `u64::MAX`: a token that stopped growing would
/// let two holders carry the same one.
pub(crate) fn next_fence(fence: &AtomicU64) -> Option<u64> {
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    let step = |prev: u64| Some(prev.checked_add(1)?.max(now_us));
    fence
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, step)
        .ok()
        .and_then(step)
}

impl LocalLock {
    /// A table whose leases last `ttl` unless an acquisition asks otherwise.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a TTL under 1 ms or over a day.
    pub fn new(ttl: Duration) -> Result<Self, Error> {
        Self::with_watchdog(ttl, false)
    }

    /// As [`new`](Self::new), with the watchdog on or off by default.
    ///
    /// # Errors
    ///
    /// As for [`new`](Self::new).
    pub fn with_watchdog(ttl: Duration, watchdog: bool) -> Result<Self, Error> {
        Self::with_limit(ttl, watchdog, DEFAULT_MAX_LOCKS)
    }

    /// As [`with_watchdog`](Self::with_watchdog), keeping at most `max_locks` lock names
    /// (held, or with waiters): a new name beyond that is refused with a retryable
    /// [`Error::Unavailable`] once expired leases are swept, so a client that takes locks and
    /// never releases them cannot grow the table without bound.
    ///
    /// # Errors
    ///
    /// As for [`new`](Self::new), and [`Error::InvalidInput`] for a zero limit.
    pub fn with_limit(ttl: Duration, watchdog: bool, max_locks: usize) -> Result<Self, Error> {
        Ok(Self {
            local: Local {
                table: Table::with(ttl, 1, watchdog, max_locks)?,
                mode: Mode::Plain,
            },
        })
    }

    /// A fair lock on this table's names: it excludes this lock's holders (and they it), as
    /// a [`RedisFairLock`](crate::RedisFairLock) and a [`RedisLock`](crate::RedisLock) of one
    /// name do. A plain acquire does not queue: it may go ahead of the fair queue.
    #[must_use]
    pub fn fair(&self) -> LocalFairLock {
        LocalFairLock::on(self.local.table.clone())
    }
}

impl Default for LocalLock {
    fn default() -> Self {
        Self::new(DEFAULT_TTL).unwrap_or_else(|_| unreachable!("the default ttl is valid"))
    }
}

impl fmt::Debug for LocalLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalLock")
            .field("ttl", &self.local.table.ttl())
            .field("held", &self.local.table.names())
            .finish()
    }
}

delegate_lock!(LocalLock, local);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fencing_tokens_rise_and_refuse_to_wrap() {
        let fence = AtomicU64::new(5);
        let a = next_fence(&fence).unwrap();
        assert!(a > 1_000_000_000_000_000, "floored by the clock: {a}");
        assert!(next_fence(&fence).unwrap() > a);
        let at_max = AtomicU64::new(u64::MAX);
        assert_eq!(next_fence(&at_max), None);
        assert_eq!(at_max.load(Ordering::SeqCst), u64::MAX, "nothing stored");
    }
}
