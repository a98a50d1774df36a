//! The distributed lock trait, its lease and its guard.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::watch;

use crate::{Error, FencingToken, LockToken};

/// How one acquisition should behave. Unset fields fall back to the backend's configuration.
///
/// ```
/// use std::time::Duration;
/// use distkit_core::AcquireOptions;
///
/// let opts = AcquireOptions::new()
///     .ttl(Duration::from_secs(10))
///     .wait(Duration::from_secs(2))
///     .watchdog(true);
/// assert_eq!(opts.wait_limit(), Some(Duration::from_secs(2)));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[must_use]
pub struct AcquireOptions {
    ttl: Option<Duration>,
    wait: Option<Duration>,
    watchdog: Option<bool>,
}

impl AcquireOptions {
    /// Options that defer everything to the backend's configuration and try only once.
    pub fn new() -> Self {
        Self::default()
    }

    /// How long the lease lasts unless extended.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// How long to wait for the lock when someone else holds it. Without it the attempt is made
    /// once.
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = Some(wait);
        self
    }

    /// Whether a background task renews the lease while the guard lives.
    pub fn watchdog(mut self, on: bool) -> Self {
        self.watchdog = Some(on);
        self
    }

    /// The requested lease length, if set.
    #[must_use]
    pub fn ttl_value(&self) -> Option<Duration> {
        self.ttl
    }

    /// The wait limit, if set.
    #[must_use]
    pub fn wait_limit(&self) -> Option<Duration> {
        self.wait
    }

    /// The watchdog choice, if set.
    #[must_use]
    pub fn watchdog_value(&self) -> Option<bool> {
        self.watchdog
    }
}

/// What a grant of a lock gives its holder: the lock's name, the secret [`LockToken`] that
/// proves ownership, the [`FencingToken`] of this grant, and how long it is valid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    name: String,
    token: LockToken,
    fencing: FencingToken,
    ttl: Duration,
    valid_until: Instant,
}

impl Lease {
    /// Describes a grant. `valid_until` should be conservative: measured from *before* the
    /// request was sent, less any clock drift allowance, so the holder stops before the server
    /// lets the key expire.
    #[must_use]
    pub fn new(
        name: impl Into<String>,
        token: LockToken,
        fencing: FencingToken,
        ttl: Duration,
        valid_until: Instant,
    ) -> Self {
        Self {
            name: name.into(),
            token,
            fencing,
            ttl,
            valid_until,
        }
    }

    /// The lock's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The ownership secret.
    #[must_use]
    pub fn token(&self) -> LockToken {
        self.token
    }

    /// The fencing token of this grant.
    #[must_use]
    pub fn fencing_token(&self) -> FencingToken {
        self.fencing
    }

    /// The lease length last granted or extended to.
    #[must_use]
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The local instant after which the holder must assume it no longer holds the lock.
    #[must_use]
    pub fn valid_until(&self) -> Instant {
        self.valid_until
    }

    /// Records a successful extension.
    pub fn renewed(&mut self, ttl: Duration, valid_until: Instant) {
        self.ttl = ttl;
        self.valid_until = valid_until;
    }
}

/// Whether a guard still holds its lease, as seen by the backend's watchdog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseStatus {
    /// The lease is held (as of the last renewal).
    Held,
    /// The lease was lost: the key was gone or taken at renewal, or the lease ran out before a
    /// renewal succeeded. Work protected by the lock must stop.
    Lost {
        /// What the watchdog saw.
        reason: String,
    },
    /// The holder released the lease.
    Released,
}

/// A lock service: Redis, Redlock over several Redis servers, or an in-process table.
///
/// Hold it as `Arc<dyn DistributedLock>` to pick a backend at run time. The only required
/// acquisition method is [`acquire_with`](DistributedLock::acquire_with); the others are
/// shorthands. Every grant returns a [`LockGuard`], which releases the lock when dropped (in
/// the background) or explicitly with [`LockGuard::release`].
///
/// # Contract for implementations
///
/// * A grant is exclusive: while a lease is valid, no other caller gets a lease on the same
///   name from the same backend.
/// * Fencing tokens of one name strictly increase from grant to grant.
/// * `release`, `extend` and `is_held` compare the lease's [`LockToken`] with the stored one and
///   never touch a lock that another caller now holds.
/// * An acquisition that fails returns an error and leaves nothing behind; it never reports a
///   grant it does not have.
#[async_trait]
pub trait DistributedLock: Send + Sync + fmt::Debug {
    /// Acquires `name` as `options` say: once when no wait limit is set, otherwise retrying
    /// until the limit runs out.
    ///
    /// # Errors
    ///
    /// [`Error::Busy`] when someone else held the lock until the wait limit ran out,
    /// [`Error::InvalidInput`] for bad options or names, [`Error::Unavailable`] when the backend
    /// cannot be reached.
    async fn acquire_with(&self, name: &str, options: AcquireOptions) -> Result<LockGuard, Error>;

    /// Releases a lease. `Ok(false)` means it was no longer held (expired, or another caller
    /// holds it now) and nothing was changed.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] and [`Error::Timeout`] when the backend cannot be reached.
    async fn release(&self, lease: &Lease) -> Result<bool, Error>;

    /// Extends a held lease to `ttl` from now. `Ok(false)` means it was no longer held.
    ///
    /// # Errors
    ///
    /// As for [`release`](DistributedLock::release), plus [`Error::InvalidInput`] for a zero
    /// `ttl`.
    async fn extend(&self, lease: &mut Lease, ttl: Duration) -> Result<bool, Error>;

    /// Asks the backend whether the lease is still held by its owner.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] and [`Error::Timeout`] when the backend cannot be reached.
    async fn is_held(&self, lease: &Lease) -> Result<bool, Error>;

    /// Tries once; `Ok(None)` when someone else holds the lock.
    ///
    /// # Errors
    ///
    /// As for [`acquire_with`](DistributedLock::acquire_with), except that a held lock is
    /// `Ok(None)`, not an error.
    async fn try_acquire(&self, name: &str) -> Result<Option<LockGuard>, Error> {
        match self.acquire_with(name, AcquireOptions::new()).await {
            Ok(guard) => Ok(Some(guard)),
            Err(Error::Busy { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Waits up to `wait` for the lock.
    ///
    /// # Errors
    ///
    /// As for [`acquire_with`](DistributedLock::acquire_with).
    async fn acquire(&self, name: &str, wait: Duration) -> Result<LockGuard, Error> {
        self.acquire_with(name, AcquireOptions::new().wait(wait))
            .await
    }
}

#[async_trait]
impl<T: DistributedLock + ?Sized> DistributedLock for Arc<T> {
    async fn acquire_with(&self, name: &str, options: AcquireOptions) -> Result<LockGuard, Error> {
        (**self).acquire_with(name, options).await
    }
    async fn release(&self, lease: &Lease) -> Result<bool, Error> {
        (**self).release(lease).await
    }
    async fn extend(&self, lease: &mut Lease, ttl: Duration) -> Result<bool, Error> {
        (**self).extend(lease, ttl).await
    }
    async fn is_held(&self, lease: &Lease) -> Result<bool, Error> {
        (**self).is_held(lease).await
    }
}

#[async_trait]
impl<T: DistributedLock + ?Sized> DistributedLock for Box<T> {
    async fn acquire_with(&self, name: &str, options: AcquireOptions) -> Result<LockGuard, Error> {
        (**self).acquire_with(name, options).await
    }
    async fn release(&self, lease: &Lease) -> Result<bool, Error> {
        (**self).release(lease).await
    }
    async fn extend(&self, lease: &mut Lease, ttl: Duration) -> Result<bool, Error> {
        (**self).extend(lease, ttl).await
    }
    async fn is_held(&self, lease: &Lease) -> Result<bool, Error> {
        (**self).is_held(lease).await
    }
}

/// A read-write lock service: many readers or one writer per name.
///
/// Each side is a [`DistributedLock`] of its own, so guards, watchdogs, release on drop and
/// taking several names together work the same as for a mutex. Read and write grants of one name draw their fencing tokens from **one** counter,
/// so a store that keeps the largest token it saw orders reads and writes alike.
///
/// # Contract for implementations
///
/// * While a write lease is valid, no other read or write lease of the name is valid.
/// * **Writer preference**: once a writer waits, new readers wait behind it, so a stream of
///   readers cannot starve writers.
/// * Upgrading a read lease to a write lease is not offered: two readers upgrading at once
///   would wait for each other forever. Release the read lease and acquire the write lease.
pub trait DistributedRwLock: Send + Sync + fmt::Debug {
    /// The read side: shared with other readers, excluded by a writer.
    fn read_lock(&self) -> Arc<dyn DistributedLock>;
    /// The write side: exclusive.
    fn write_lock(&self) -> Arc<dyn DistributedLock>;
}

/// A counting semaphore service: each name has a limit of permits, and a grant holds `k` of
/// them under its own lease (a holder that dies gives its permits back when the lease ends,
/// like Redisson's `RPermitExpirableSemaphore`).
///
/// [`acquire_with`](DistributedLock::acquire_with) takes one permit; the lease's guard,
/// release, extension and fencing token work as for a lock. Every grant of a name gets a
/// fencing token larger than all earlier grants of that name.
///
/// # Contract for implementations
///
/// * The permits of the valid leases of a name never add up to more than its limit at the
///   time each was granted. Lowering the limit takes nothing from current holders: new
///   grants wait until the holders are back under it.
/// * A name whose limit was never set has the service's default limit.
#[async_trait]
pub trait DistributedSemaphore: DistributedLock {
    /// Acquires `permits` permits of `name` under one lease, waiting as `options` say.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for zero permits; otherwise as
    /// [`DistributedLock::acquire_with`]. Asking for more permits than the limit is not an
    /// error (the limit may be raised meanwhile): the request waits and ends [`Error::Busy`]
    /// at its wait limit.
    async fn acquire_permits(
        &self,
        name: &str,
        permits: u32,
        options: AcquireOptions,
    ) -> Result<LockGuard, Error>;

    /// Sets the limit of `name` (at least 1). Raising it wakes waiters at once.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a zero limit or a bad name; backend errors otherwise.
    async fn set_permits(&self, name: &str, permits: u32) -> Result<(), Error>;

    /// The limit of `name` and the permits its valid leases hold now.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a bad name; backend errors otherwise.
    async fn permits(&self, name: &str) -> Result<PermitCount, Error>;
}

/// A semaphore's limit and the permits held under valid leases.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PermitCount {
    /// The most permits the name grants at once.
    pub limit: u32,
    /// The permits held now.
    pub in_use: u32,
}

/// A held lock. Dropping it releases the lock in the background; [`release`](Self::release)
/// does it in the foreground and reports the outcome.
///
/// When dropped outside a tokio runtime the guard cannot reach the backend: it logs a warning
/// and leaves the lock to expire with its TTL.
pub struct LockGuard {
    lease: Lease,
    backend: Option<Arc<dyn DistributedLock>>,
    status: watch::Receiver<LeaseStatus>,
    on_release: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl LockGuard {
    /// Wraps a granted lease. `status` carries the watchdog's view of the lease; a backend
    /// without a watchdog passes a receiver whose sender it drops (the status then stays
    /// [`LeaseStatus::Held`] and [`lost`](Self::lost) never fires).
    #[must_use]
    pub fn new(
        lease: Lease,
        backend: Arc<dyn DistributedLock>,
        status: watch::Receiver<LeaseStatus>,
    ) -> Self {
        Self {
            lease,
            backend: Some(backend),
            status,
            on_release: None,
        }
    }

    /// Runs `f` once when the guard is released or dropped, before the release is sent (a
    /// backend uses it to stop its watchdog, so no renewal can follow the release).
    #[must_use]
    pub fn with_release_hook(mut self, f: impl FnOnce() + Send + Sync + 'static) -> Self {
        self.on_release = Some(Box::new(f));
        self
    }

    /// The lease this guard holds.
    #[must_use]
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// The lock's name.
    #[must_use]
    pub fn name(&self) -> &str {
        self.lease.name()
    }

    /// The ownership secret.
    #[must_use]
    pub fn token(&self) -> LockToken {
        self.lease.token()
    }

    /// The fencing token to send along with every write the lock protects.
    #[must_use]
    pub fn fencing_token(&self) -> FencingToken {
        self.lease.fencing_token()
    }

    /// The current status as the watchdog last saw it.
    #[must_use]
    pub fn status(&self) -> LeaseStatus {
        self.status.borrow().clone()
    }

    /// A receiver of status changes; it starts with the current value.
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<LeaseStatus> {
        self.status.clone()
    }

    /// Completes when the watchdog reports the lease lost; pending forever otherwise.
    pub async fn lost(&self) -> LeaseStatus {
        let mut rx = self.status.clone();
        loop {
            let now = rx.borrow_and_update().clone();
            if matches!(now, LeaseStatus::Lost { .. }) {
                return now;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Asks the backend whether the lease is still held.
    ///
    /// # Errors
    ///
    /// When the backend cannot be reached.
    pub async fn is_held(&self) -> Result<bool, Error> {
        match &self.backend {
            Some(b) => b.is_held(&self.lease).await,
            None => Ok(false),
        }
    }

    /// Extends the lease to `ttl` from now.
    ///
    /// # Errors
    ///
    /// [`Error::NotHeld`] when the lease was lost; backend errors otherwise.
    pub async fn extend(&mut self, ttl: Duration) -> Result<(), Error> {
        let Some(backend) = &self.backend else {
            return Err(self.not_held("the guard was already released"));
        };
        if backend.extend(&mut self.lease, ttl).await? {
            Ok(())
        } else {
            Err(self.not_held("it expired or another caller holds it now"))
        }
    }

    /// Releases the lock now. `Ok(false)` means it was no longer held (it expired or was taken
    /// over); nothing was changed in that case.
    ///
    /// # Errors
    ///
    /// When the backend cannot be reached. A retryable failure is then tried again in the
    /// background while the lease lasts (at most 20 times, backing off to 5 s), as a dropped
    /// guard's release is; otherwise the lock expires with its TTL.
    pub async fn release(mut self) -> Result<bool, Error> {
        if let Some(hook) = self.on_release.take() {
            hook();
        }
        let Some(backend) = self.backend.take() else {
            return Ok(false);
        };
        let released = backend.release(&self.lease).await;
        if let Err(e) = &released
            && e.is_retryable()
        {
            // The backend is away for now: keep trying in the background while the lease
            // lasts, as a dropped guard does, rather than leave the lock to its whole TTL.
            retry_release(backend, self.lease.clone(), 1);
        }
        released
    }

    /// Detaches the lease from the guard: stops any renewal (runs the release hook) but does
    /// not release. The lock then expires with its TTL unless someone releases the returned
    /// lease through the backend (for example another task or process that took it over).
    #[must_use]
    pub fn into_lease(mut self) -> Lease {
        if let Some(hook) = self.on_release.take() {
            hook();
        }
        self.backend = None;
        self.lease.clone()
    }

    fn not_held(&self, reason: &str) -> Error {
        Error::NotHeld {
            what: format!("lock {:?}", self.lease.name()),
            reason: reason.to_owned(),
        }
    }
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("lease", &self.lease)
            .field("status", &*self.status.borrow())
            .field("released", &self.backend.is_none())
            .finish()
    }
}

/// How many times a dropped guard's background release is tried.
const RELEASE_ATTEMPTS: u32 = 20;

/// Retries a release that just failed `failed` times, in the background (when a runtime
/// is there to run it).
fn retry_release(backend: Arc<dyn DistributedLock>, lease: Lease, failed: u32) {
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn(release_with_retries(backend, lease, failed));
    }
}

/// Releases `lease`, asking a backend that is briefly away (a stalled or restarting Redis)
/// again for as long as the lease lasts and at most [`RELEASE_ATTEMPTS`] times in all, so a
/// lock is not left to its whole TTL for a hiccup (an outside review saw a failed lock set
/// hold its locks for 60 s). `failed` attempts were already made.
async fn release_with_retries(backend: Arc<dyn DistributedLock>, lease: Lease, failed: u32) {
    let mut delay = Duration::from_millis(100);
    let mut attempt = failed;
    loop {
        if attempt > 0 {
            let next = Instant::now().checked_add(delay);
            if attempt >= RELEASE_ATTEMPTS || next.is_none_or(|t| t >= lease.valid_until()) {
                tracing::warn!(
                    lock = lease.name(),
                    "background release failed; the lock will expire with its ttl"
                );
                return;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
        attempt += 1;
        match backend.release(&lease).await {
            Ok(_) => return,
            Err(error) if error.is_retryable() => {
                tracing::debug!(lock = lease.name(), %error, attempt, "release failed; trying again");
            }
            Err(error) => {
                tracing::warn!(lock = lease.name(), %error, "background release failed; the lock will expire with its ttl");
                return;
            }
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Some(hook) = self.on_release.take() {
            hook();
        }
        let Some(backend) = self.backend.take() else {
            return;
        };
        let lease = self.lease.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(release_with_retries(backend, lease, 0));
            }
            Err(_) => {
                tracing::warn!(
                    lock = lease.name(),
                    "lock guard dropped outside a tokio runtime; the lock will expire with its ttl"
                );
            }
        }
    }
}
