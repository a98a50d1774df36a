//! `MultiLock`: several named locks taken together, all or none, held under one guard.

use std::sync::Arc;
use std::time::{Duration, Instant};

use distkit_core::{AcquireOptions, DistributedLock, Error, FencingToken, LockGuard};

use crate::util::Deadline;

/// The most names one [`MultiLock`] acquisition may take.
pub const MAX_MULTI: usize = 64;

/// Takes several named locks of one backend together: all of them or none, like Redisson's
/// `RedissonMultiLock`, over any [`DistributedLock`] (Redis, Redlock, in-process).
///
/// Names are taken one at a time in sorted order, so two callers wanting overlapping sets
/// never wait on each other in a cycle; the wait limit covers the whole set. When one name
/// cannot be had in time, the names already taken are released before the error returns. A
/// dropped acquisition releases what it had taken (each guard releases on drop). Once all are
/// held, leases whose time ran low while later names were waited for are renewed to their
/// full TTL, so the set starts with every lease whole. Each name keeps its own fencing token.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use distkit_core::AcquireOptions;
/// use distkit_dlock::{LocalLock, MultiLock};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let locks = MultiLock::new(Arc::new(LocalLock::new(Duration::from_secs(5))?));
/// let opts = AcquireOptions::new().wait(Duration::from_secs(1));
/// let both = locks.acquire(&["account:7", "account:3"], opts).await?;
/// assert_eq!(both.names().collect::<Vec<_>>(), ["account:3", "account:7"]);
/// // Overlapping sets exclude each other: account:7 is taken.
/// assert!(locks.try_acquire(&["account:7", "account:9"]).await?.is_none());
/// let fence = both.fencing_token("account:7").expect("held");
/// both.release().await?;
/// let again = locks.try_acquire(&["account:7", "account:9"]).await?.expect("free");
/// assert!(again.fencing_token("account:7").expect("held") > fence);
/// # Ok::<(), distkit_core::Error>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct MultiLock {
    locks: Arc<dyn DistributedLock>,
}

impl std::fmt::Debug for MultiLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MultiLock").finish_non_exhaustive()
    }
}

/// The locks of one [`MultiLock`] acquisition, in name order; released together.
#[derive(Debug)]
pub struct MultiGuard {
    guards: Vec<LockGuard>,
}

impl MultiLock {
    /// Sets of locks of `locks`.
    pub fn new(locks: Arc<dyn DistributedLock>) -> Self {
        Self { locks }
    }

    /// Takes every lock in `names`, waiting at most `options`' wait limit for the whole set
    /// (none: fail at once when one is held).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for no name, more than [`MAX_MULTI`], a name given twice, or a
    /// name or option the backend refuses; [`Error::Busy`] when a name stayed held past the
    /// wait (nothing is held then); the backend's errors.
    pub async fn acquire(
        &self,
        names: &[&str],
        options: AcquireOptions,
    ) -> Result<MultiGuard, Error> {
        let mut sorted: Vec<&str> = names.to_vec();
        sorted.sort_unstable();
        if sorted.is_empty() || sorted.len() > MAX_MULTI {
            return Err(Error::invalid_input(
                "lock set",
                format!("it must name 1 to {MAX_MULTI} locks, got {}", sorted.len()),
            ));
        }
        if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::invalid_input(
                "lock set",
                format!("{:?} is named twice", w[0]),
            ));
        }
        let started = Instant::now();
        let wait = options.wait_limit().unwrap_or(Duration::ZERO);
        let deadline = Deadline::after(started, wait);
        // Dropped on any early return (or if this future is dropped): each guard releases.
        let mut guards = Vec::with_capacity(sorted.len());
        for name in &sorted {
            let left = deadline.cap(Instant::now(), wait);
            let one = options.wait(left);
            match self.locks.acquire_with(name, one).await {
                Ok(g) => guards.push(g),
                Err(e) => {
                    release_all(guards).await;
                    return Err(match e {
                        Error::Busy { what, .. } => Error::Busy {
                            what: format!("{what} (of the set {sorted:?})"),
                            waited: started.elapsed(),
                        },
                        other => other,
                    });
                }
            }
        }
        // Leases taken early ran while later names were waited for: renew those that lost
        // more than half their time, so every lease of the set starts whole.
        let now = Instant::now();
        for i in 0..guards.len() {
            let (left, ttl) = {
                let lease = guards[i].lease();
                (
                    lease.valid_until().saturating_duration_since(now),
                    lease.ttl(),
                )
            };
            if left < ttl / 2
                && let Err(e) = guards[i].extend(ttl).await
            {
                release_all(guards).await;
                return Err(match e {
                    Error::NotHeld { .. } => Error::Busy {
                        what: format!(
                            "lock set {sorted:?} (a lease ran out while the others were waited for)"
                        ),
                        waited: started.elapsed(),
                    },
                    other => other,
                });
            }
        }
        Ok(MultiGuard { guards })
    }

    /// Takes every lock in `names` if all are free now; `None` (holding nothing) otherwise.
    ///
    /// # Errors
    ///
    /// As [`acquire`](Self::acquire), except that a held name is `Ok(None)`.
    pub async fn try_acquire(&self, names: &[&str]) -> Result<Option<MultiGuard>, Error> {
        match self.acquire(names, AcquireOptions::new()).await {
            Ok(g) => Ok(Some(g)),
            Err(Error::Busy { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

async fn release_all(guards: Vec<LockGuard>) {
    for g in guards.into_iter().rev() {
        // A failed release leaves the lock to its TTL, as a dropped guard would.
        let _ = g.release().await;
    }
}

impl MultiGuard {
    /// The names held, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.guards.iter().map(LockGuard::name)
    }

    /// The fencing token of `name`'s lease, if `name` is in the set.
    #[must_use]
    pub fn fencing_token(&self, name: &str) -> Option<FencingToken> {
        self.guards
            .iter()
            .find(|g| g.name() == name)
            .map(LockGuard::fencing_token)
    }

    /// The guards themselves, in name order (each then releases, extends or is dropped on its
    /// own).
    #[must_use]
    pub fn into_guards(self) -> Vec<LockGuard> {
        self.guards
    }

    /// Each lock's guard, in name order.
    #[must_use]
    pub fn guards(&self) -> &[LockGuard] {
        &self.guards
    }

    /// Extends every lease to `ttl` from now.
    ///
    /// # Errors
    ///
    /// [`Error::NotHeld`] when one of them was lost (the others stay extended and held until
    /// released); backend errors otherwise.
    pub async fn extend(&mut self, ttl: Duration) -> Result<(), Error> {
        for g in &mut self.guards {
            g.extend(ttl).await?;
        }
        Ok(())
    }

    /// Releases every lock. `Ok(true)` when each was still held.
    ///
    /// # Errors
    ///
    /// The first backend error; every release is attempted regardless, and the locks it could
    /// not release expire with their TTL.
    pub async fn release(self) -> Result<bool, Error> {
        let mut all = true;
        let mut first_error = None;
        for g in self.guards.into_iter().rev() {
            match g.release().await {
                Ok(held) => all &= held,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(all),
        }
    }
}
