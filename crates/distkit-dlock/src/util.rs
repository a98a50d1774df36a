//! Pieces shared by the backends: tokens, TTL checks, backoff and the watchdog.

use std::sync::Arc;
use std::time::{Duration, Instant};

use distkit_core::{DistributedLock, Error, Lease, LeaseStatus, LockGuard, LockToken};
use rand::Rng;
use tokio::sync::watch;

/// The longest lease accepted (Redis takes any 64-bit PX; a day is far beyond any sane lock).
pub(crate) const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// 128 random bits from the thread's CSPRNG.
pub(crate) fn random_token() -> LockToken {
    LockToken::from_u128(rand::rng().random())
}

pub(crate) fn validate_ttl(ttl: Duration) -> Result<(), Error> {
    if ttl < Duration::from_millis(1) || ttl > MAX_TTL {
        return Err(Error::invalid_input(
            "ttl",
            format!("it must be between 1 ms and {MAX_TTL:?}, got {ttl:?}"),
        ));
    }
    Ok(())
}

/// When a wait ends: `None` inside means never (a wait too long for the clock to represent,
/// such as `Duration::MAX`, waits forever instead of overflowing).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Deadline(Option<Instant>);

impl Deadline {
    /// `wait` after `start`.
    pub(crate) fn after(start: Instant, wait: Duration) -> Self {
        Self(start.checked_add(wait))
    }

    /// Whether the deadline has passed at `now`.
    pub(crate) fn passed(self, now: Instant) -> bool {
        self.0.is_some_and(|d| now >= d)
    }

    /// `d`, shortened to what is left of the wait at `now`.
    pub(crate) fn cap(self, now: Instant, d: Duration) -> Duration {
        self.0
            .map_or(d, |dl| d.min(dl.saturating_duration_since(now)))
    }
}

/// Jittered exponential backoff for polling and retries.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_millis(500);
    /// With a live subscription, polling is only a safety net.
    const SUBSCRIBED: Duration = Duration::from_secs(1);

    pub(crate) fn new() -> Self {
        Self { next: Self::FIRST }
    }

    /// The next delay: uniformly in [d/2, d], with d doubling up to 500 ms.
    pub(crate) fn next_poll(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        jitter(d)
    }

    /// The safety-net poll while release messages are expected.
    pub(crate) fn subscribed_poll(&mut self) -> Duration {
        jitter(Self::SUBSCRIBED)
    }
}

/// Uniform in [d/2, d].
pub(crate) fn jitter(d: Duration) -> Duration {
    uniform(d / 2, d)
}

/// Uniform in [lo, hi].
pub(crate) fn uniform(lo: Duration, hi: Duration) -> Duration {
    lo + (hi.saturating_sub(lo)).mul_f64(rand::rng().random::<f64>())
}

/// Wraps a grant in a guard; with `watchdog`, a task renews it every `renew_every` until the
/// guard's release hook aborts the task (before the release is sent).
pub(crate) fn guard(
    lease: Lease,
    backend: Arc<dyn DistributedLock>,
    watchdog_on: bool,
    renew_every: Duration,
) -> LockGuard {
    let (tx, rx) = watch::channel(LeaseStatus::Held);
    if !watchdog_on {
        return LockGuard::new(lease, backend, rx);
    }
    let task = tokio::spawn(watchdog(backend.clone(), lease.clone(), renew_every, tx));
    LockGuard::new(lease, backend, rx).with_release_hook(move || task.abort())
}

/// Renews `lease` every `every` until aborted; reports loss on `status` and stops.
pub(crate) async fn watchdog(
    backend: Arc<dyn DistributedLock>,
    mut lease: Lease,
    every: Duration,
    status: watch::Sender<LeaseStatus>,
) {
    let name = lease.name().to_owned();
    let lost = |reason: String| {
        tracing::warn!(lock = name, %reason, "lock lease lost");
        let _ = status.send(LeaseStatus::Lost { reason });
    };
    loop {
        tokio::time::sleep(every).await;
        loop {
            let now = Instant::now();
            let Some(left) = lease.valid_until().checked_duration_since(now) else {
                lost("the lease ran out before a renewal succeeded".into());
                return;
            };
            let ttl = lease.ttl();
            match tokio::time::timeout(left, backend.extend(&mut lease, ttl)).await {
                Ok(Ok(true)) => break,
                Ok(Ok(false)) => {
                    lost("at renewal the key was gone or held by another token".into());
                    return;
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "lease renewal failed; retrying");
                    let retry = (every / 4).min(
                        lease
                            .valid_until()
                            .saturating_duration_since(Instant::now()),
                    );
                    tokio::time::sleep(retry).await;
                }
                Err(_) => {
                    lost("the lease ran out while a renewal was pending".into());
                    return;
                }
            }
        }
    }
}

/// Implements [`DistributedLock`] for a wrapper by delegating to its field.
macro_rules! delegate_lock {
    ($ty:ty, $field:ident) => {
        #[async_trait]
        impl DistributedLock for $ty {
            async fn acquire_with(
                &self,
                name: &str,
                options: AcquireOptions,
            ) -> Result<LockGuard, Error> {
                self.$field.acquire_with(name, options).await
            }
            async fn release(&self, lease: &Lease) -> Result<bool, Error> {
                self.$field.release(lease).await
            }
            async fn extend(&self, lease: &mut Lease, ttl: Duration) -> Result<bool, Error> {
                self.$field.extend(lease, ttl).await
            }
            async fn is_held(&self, lease: &Lease) -> Result<bool, Error> {
                self.$field.is_held(lease).await
            }
        }
    };
}

pub(crate) use delegate_lock;
