//! `LocalLock`: the same contract inside one process, for tests and single-node deployments.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use distkit_core::{
    AcquireOptions, DistributedLock, Error, FencingToken, Lease, LockGuard, LockToken,
};
use tokio::sync::Notify;

use crate::name::validate;
use crate::redis_lock::DEFAULT_TTL;
use crate::util::{Deadline, guard, random_token, validate_ttl};

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
    inner: Arc<Inner>,
}

struct Inner {
    table: Mutex<HashMap<String, Slot>>,
    fence: AtomicU64,
    ttl: Duration,
    watchdog: bool,
    max_locks: usize,
}

/// The most lock names a [`LocalLock`] keeps by default (held, or with waiters).
pub const DEFAULT_MAX_LOCKS: usize = 100_000;

#[derive(Default)]
struct Slot {
    holder: Option<(LockToken, Instant)>,
    notify: Arc<Notify>,
}

impl Slot {
    fn held_by_other(&self, now: Instant) -> Option<Instant> {
        self.holder.and_then(|(_, exp)| (exp > now).then_some(exp))
    }
}

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
    /// (held, or with waiters): a new name beyond that is refused with
    /// [`Error::NoCapacity`] once expired leases are swept, so a client that takes locks and
    /// never releases them cannot grow the table without bound.
    ///
    /// # Errors
    ///
    /// As for [`new`](Self::new), and [`Error::InvalidInput`] for a zero limit.
    pub fn with_limit(ttl: Duration, watchdog: bool, max_locks: usize) -> Result<Self, Error> {
        validate_ttl(ttl)?;
        if max_locks == 0 {
            return Err(Error::invalid_input("max locks", "it must be at least 1"));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                table: Mutex::new(HashMap::new()),
                fence: AtomicU64::new(0),
                ttl,
                watchdog,
                max_locks,
            }),
        })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.inner
            .table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn holds(&self, lease: &Lease, now: Instant) -> bool {
        self.table()
            .get(lease.name())
            .and_then(|s| s.holder)
            .is_some_and(|(t, exp)| t == lease.token() && exp > now)
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
            .field("ttl", &self.inner.ttl)
            .field("held", &self.table().len())
            .finish()
    }
}

#[async_trait]
impl DistributedLock for LocalLock {
    async fn acquire_with(&self, name: &str, options: AcquireOptions) -> Result<LockGuard, Error> {
        validate(name)?;
        let ttl = options.ttl_value().unwrap_or(self.inner.ttl);
        validate_ttl(ttl)?;
        let started = Instant::now();
        let wait = options.wait_limit().unwrap_or(Duration::ZERO);
        let deadline = Deadline::after(started, wait);
        loop {
            let now = Instant::now();
            let notify;
            let expires;
            {
                let mut table = self.table();
                if !table.contains_key(name) && table.len() >= self.inner.max_locks {
                    // Full: forget names whose lease ran out and that nobody waits for.
                    table.retain(|_, s| {
                        s.held_by_other(now).is_some() || Arc::strong_count(&s.notify) > 1
                    });
                    if table.len() >= self.inner.max_locks {
                        // Retryable: the table frees itself as leases end.
                        return Err(Error::Unavailable {
                            endpoint: "in-process lock table".into(),
                            reason: format!(
                                "it holds {} locks, its limit; retry when some are released \
                                 or expire",
                                self.inner.max_locks
                            ),
                            source: None,
                        });
                    }
                }
                let slot = table.entry(name.to_owned()).or_default();
                match slot.held_by_other(now) {
                    None => {
                        let fence =
                            next_fence(&self.inner.fence).ok_or_else(|| Error::NoCapacity {
                                reason: "the in-process lock table's fencing tokens are \
                                         exhausted (the counter is at u64::MAX)"
                                    .into(),
                            })?;
                        let token = random_token();
                        slot.holder = Some((token, now + ttl));
                        drop(table);
                        let lease =
                            Lease::new(name, token, FencingToken::new(fence), ttl, now + ttl);
                        let watchdog = options.watchdog_value().unwrap_or(self.inner.watchdog);
                        return Ok(guard(lease, Arc::new(self.clone()), watchdog, ttl / 3));
                    }
                    Some(exp) => {
                        notify = slot.notify.clone();
                        expires = exp;
                    }
                }
            }
            if wait.is_zero() || deadline.passed(now) {
                return Err(Error::Busy {
                    what: format!("lock {name:?}"),
                    waited: now - started,
                });
            }
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // A release may have happened between dropping the table and enabling: look again.
            if self
                .table()
                .get(name)
                .is_some_and(|s| s.held_by_other(Instant::now()).is_some())
            {
                let now = Instant::now();
                let wake = deadline.cap(now, expires.saturating_duration_since(now));
                tokio::select! {
                    () = notified => {}
                    () = tokio::time::sleep(wake) => {}
                }
            }
        }
    }

    async fn release(&self, lease: &Lease) -> Result<bool, Error> {
        let now = Instant::now();
        let mut table = self.table();
        let Some(slot) = table.get_mut(lease.name()) else {
            return Ok(false);
        };
        match slot.holder {
            Some((t, exp)) if t == lease.token() && exp > now => {
                slot.holder = None;
                if Arc::strong_count(&slot.notify) == 1 {
                    // Nobody waits (waiters clone the notifier under this lock): forget the
                    // name so the table does not grow with every name ever used.
                    table.remove(lease.name());
                } else {
                    slot.notify.notify_one();
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn extend(&self, lease: &mut Lease, ttl: Duration) -> Result<bool, Error> {
        validate_ttl(ttl)?;
        let now = Instant::now();
        let mut table = self.table();
        match table.get_mut(lease.name()) {
            Some(slot)
                if slot
                    .holder
                    .is_some_and(|(t, exp)| t == lease.token() && exp > now) =>
            {
                slot.holder = Some((lease.token(), now + ttl));
                lease.renewed(ttl, now + ttl);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn is_held(&self, lease: &Lease) -> Result<bool, Error> {
        Ok(self.holds(lease, Instant::now()))
    }
}

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
