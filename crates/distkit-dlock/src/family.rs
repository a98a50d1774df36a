//! The lock family on Redis: a fair lock, a read-write lock and a semaphore, sharing
//! `RedisLock`'s pool, pub/sub wake-ups, watchdog and cancellation safety.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use distkit_core::{
    AcquireOptions, DistributedLock, DistributedRwLock, DistributedSemaphore, Error, Lease,
    LockGuard, LockToken, PermitCount,
};
use redis::ScriptInvocation;

use crate::name::{Keys, validate};
use crate::redis_lock::RedisLock;
use crate::scripts;
use crate::util::delegate_lock;

/// Which member of the family an operation is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Plain,
    Fair,
    Read,
    Write,
    Permits(u32),
}

/// The keys and script calls of one lock name of one kind, for one token. Every key of a
/// name shares the `{name}` hash tag, so a Redis Cluster keeps them in one slot.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    kind: Kind,
    /// The lock key (plain, fair), the writer key (read-write) or the holders set (semaphore).
    base: String,
    fence: String,
    channel: String,
    token: String,
}

impl Target {
    pub(crate) fn new(prefix: &str, name: &str, kind: Kind, token: LockToken) -> Self {
        let base = match kind {
            Kind::Plain | Kind::Fair => Keys::new(prefix, name).lock,
            Kind::Read | Kind::Write => format!("{prefix}rw:{{{name}}}"),
            Kind::Permits(_) => format!("{prefix}sem:{{{name}}}"),
        };
        Self {
            kind,
            fence: format!("{base}:fence"),
            channel: format!("{base}:released"),
            base,
            token: token.to_string(),
        }
    }

    fn key(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.base)
    }

    /// Whether a waiter of this kind keeps an entry in Redis while it waits (a plain lock's
    /// waiters, a fair lock's queue, a read-write lock's waiting writers), which must be
    /// renewed and removed.
    pub(crate) fn queues(&self) -> bool {
        matches!(self.kind, Kind::Plain | Kind::Fair | Kind::Write)
    }

    /// The channel a waiter listens on, and whether a message wakes all of its waiters.
    pub(crate) fn wake_channel(&self) -> (String, bool) {
        match self.kind {
            Kind::Plain => (self.channel.clone(), false),
            // Each fair waiter has its own channel: a release wakes exactly the head.
            Kind::Fair => (format!("{}{}", self.waiter_prefix(), self.token), false),
            Kind::Read | Kind::Write | Kind::Permits(_) => (self.channel.clone(), true),
        }
    }

    fn waiter_prefix(&self) -> String {
        format!("{}:w:", self.base)
    }

    fn invocation(script: &'static redis::Script) -> ScriptInvocation<'static> {
        script.prepare_invoke()
    }

    /// One grant attempt. `join`: a refused waiter takes (or keeps) its place in the queue.
    /// `woken`: the caller was just woken by a release (may use the plain lock's hand-off).
    pub(crate) fn acquire(
        &self,
        ttl_ms: u64,
        entry_ms: u64,
        join: bool,
        woken: bool,
        default_limit: u32,
    ) -> ScriptInvocation<'static> {
        let flag = |b: bool| if b { "1" } else { "0" };
        let mut inv;
        match self.kind {
            Kind::Plain => {
                inv = Self::invocation(&scripts::ACQUIRE);
                inv.key(&self.base).key(&self.fence);
                inv.key(self.key("handoff")).key(self.key("waiters"));
                inv.arg(&self.token).arg(ttl_ms).arg(flag(woken));
                inv.arg(flag(join)).arg(entry_ms);
            }
            Kind::Fair => {
                inv = Self::invocation(&scripts::FAIR_ACQUIRE);
                inv.key(&self.base).key(&self.fence);
                inv.key(self.key("queue")).key(self.key("queue-expiry"));
                inv.arg(&self.token)
                    .arg(ttl_ms)
                    .arg(entry_ms)
                    .arg(flag(join));
            }
            Kind::Read => {
                inv = Self::invocation(&scripts::READ_ACQUIRE);
                inv.key(&self.base).key(self.key("readers"));
                inv.key(self.key("writers-waiting")).key(&self.fence);
                inv.arg(&self.token).arg(ttl_ms);
            }
            Kind::Write => {
                inv = Self::invocation(&scripts::WRITE_ACQUIRE);
                inv.key(&self.base).key(self.key("readers"));
                inv.key(self.key("writers-waiting")).key(&self.fence);
                inv.arg(&self.token)
                    .arg(ttl_ms)
                    .arg(entry_ms)
                    .arg(flag(join));
            }
            Kind::Permits(k) => {
                inv = Self::invocation(&scripts::SEM_ACQUIRE);
                inv.key(&self.base).key(self.key("permits"));
                inv.key(self.key("limit")).key(&self.fence);
                inv.arg(&self.token).arg(ttl_ms).arg(k).arg(default_limit);
            }
        }
        inv
    }

    /// The release. `handoff_ms`: the plain lock's hand-off window (0: none).
    pub(crate) fn release(&self, handoff_ms: u64) -> ScriptInvocation<'static> {
        let mut inv;
        match self.kind {
            Kind::Plain => {
                inv = Self::invocation(&scripts::RELEASE_HANDING_OFF);
                inv.key(&self.base).key(self.key("handoff"));
                inv.key(self.key("waiters")).key(self.key("queue"));
                inv.key(self.key("queue-expiry"));
                inv.arg(&self.token).arg(&self.channel).arg(handoff_ms);
                inv.arg(self.waiter_prefix());
            }
            Kind::Fair => {
                inv = Self::invocation(&scripts::FAIR_RELEASE);
                inv.key(&self.base).key(self.key("queue"));
                inv.key(self.key("queue-expiry")).key(self.key("waiters"));
                inv.arg(&self.token)
                    .arg(self.waiter_prefix())
                    .arg(&self.channel);
            }
            Kind::Write => {
                inv = Self::invocation(&scripts::RELEASE);
                inv.key(&self.base).arg(&self.token).arg(&self.channel);
            }
            Kind::Read => {
                inv = Self::invocation(&scripts::ZLEASE_RELEASE);
                let readers = self.key("readers");
                inv.key(&readers).key(&readers);
                inv.arg(&self.token).arg(&self.channel).arg("last");
            }
            Kind::Permits(_) => {
                inv = Self::invocation(&scripts::ZLEASE_RELEASE);
                inv.key(&self.base).key(self.key("permits"));
                inv.arg(&self.token).arg(&self.channel).arg("always");
            }
        }
        inv
    }

    /// Extends a valid lease to `ttl_ms` from now; never creates one.
    pub(crate) fn extend(&self, ttl_ms: u64) -> ScriptInvocation<'static> {
        let mut inv;
        match self.kind {
            Kind::Plain | Kind::Fair | Kind::Write => {
                inv = Self::invocation(&scripts::EXTEND);
                inv.key(&self.base);
            }
            Kind::Read => {
                inv = Self::invocation(&scripts::ZLEASE_EXTEND);
                let readers = self.key("readers");
                inv.key(&readers).key(&readers);
            }
            Kind::Permits(_) => {
                inv = Self::invocation(&scripts::ZLEASE_EXTEND);
                inv.key(&self.base).key(self.key("permits"));
            }
        }
        inv.arg(&self.token).arg(ttl_ms);
        inv
    }

    /// Whether the lease is still held and valid.
    pub(crate) fn held(&self) -> ScriptInvocation<'static> {
        let mut inv;
        match self.kind {
            Kind::Plain | Kind::Fair | Kind::Write => {
                inv = Self::invocation(&scripts::HELD);
                inv.key(&self.base);
            }
            Kind::Read => {
                inv = Self::invocation(&scripts::ZLEASE_HELD);
                inv.key(self.key("readers"));
            }
            Kind::Permits(_) => {
                inv = Self::invocation(&scripts::ZLEASE_HELD);
                inv.key(&self.base);
            }
        }
        inv.arg(&self.token);
        inv
    }

    /// Takes a waiter that gives up out of the queue, waking whoever may go next.
    pub(crate) fn leave(&self) -> Option<ScriptInvocation<'static>> {
        let mut inv;
        match self.kind {
            Kind::Plain => {
                inv = Self::invocation(&scripts::PLAIN_LEAVE);
                inv.key(self.key("waiters")).arg(&self.token);
            }
            Kind::Fair => {
                inv = Self::invocation(&scripts::FAIR_LEAVE);
                inv.key(&self.base)
                    .key(self.key("queue"))
                    .key(self.key("queue-expiry"));
                inv.arg(&self.token).arg(self.waiter_prefix());
            }
            Kind::Write => {
                inv = Self::invocation(&scripts::WRITE_LEAVE);
                inv.key(self.key("writers-waiting"));
                inv.arg(&self.token).arg(&self.channel);
            }
            _ => return None,
        }
        Some(inv)
    }

    /// A semaphore's state (`SEM_STATE`).
    fn semaphore_state(&self, default_limit: u32) -> ScriptInvocation<'static> {
        let mut inv = Self::invocation(&scripts::SEM_STATE);
        inv.key(&self.base)
            .key(self.key("permits"))
            .key(self.key("limit"));
        inv.arg(default_limit);
        inv
    }

    /// Sets a semaphore's limit and wakes its waiters.
    fn set_limit(&self, permits: u32) -> ScriptInvocation<'static> {
        let mut inv = Self::invocation(&scripts::SEM_SET_LIMIT);
        inv.key(self.key("limit")).arg(permits).arg(&self.channel);
        inv
    }
}

/// One kind of the family on a `RedisLock`'s connections: the backend behind its guards.
#[derive(Clone)]
pub(crate) struct Handle {
    pub(crate) lock: RedisLock,
    pub(crate) kind: Kind,
    /// A semaphore's limit for names that were never given one.
    pub(crate) default_limit: u32,
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("kind", &self.kind)
            .field("endpoint", &self.lock.endpoint())
            .finish()
    }
}

#[async_trait]
impl DistributedLock for Handle {
    async fn acquire_with(&self, name: &str, options: AcquireOptions) -> Result<LockGuard, Error> {
        self.lock
            .acquire_kind(name, options, self.kind, self.default_limit)
            .await
    }
    async fn release(&self, lease: &Lease) -> Result<bool, Error> {
        self.lock.release_kind(lease, self.kind).await
    }
    async fn extend(&self, lease: &mut Lease, ttl: Duration) -> Result<bool, Error> {
        self.lock.extend_kind(lease, ttl, self.kind).await
    }
    async fn is_held(&self, lease: &Lease) -> Result<bool, Error> {
        self.lock.held_kind(lease, self.kind).await
    }
}

/// A fair lock on Redis: waiters are granted in arrival order, like Redisson's `RFairLock`.
///
/// Made by [`RedisLock::fair`]; same guard, fencing tokens, watchdog and cancellation safety
/// as [`RedisLock`], and it excludes plain `RedisLock` holders of the same name (they share
/// the lock key, though a plain acquire does not queue).
///
/// * **Queue**: a waiter that is refused joins a queue in Redis (a sorted set in the lock's
///   hash slot). The lock goes only to the head of the queue, so a newcomer cannot overtake.
/// * **Wake-ups**: each waiter listens on its own channel and a release wakes exactly the
///   head of the queue; nobody else stampedes Redis.
/// * **Dead or gone waiters**: each queue entry has its own expiry
///   ([`queue_entry_ttl`](crate::RedisLockBuilder::queue_entry_ttl), default 3 s), renewed by
///   its waiter every third of it. A waiter that gives up, fails or is cancelled leaves the
///   queue at once; one that is SIGKILLed holds up the waiters behind it for at most what
///   was left of its entry's expiry.
///
/// The queue lives in Redis: a Redis that restarts without persistence forgets it, and the
/// waiters queue again in the order of their next attempts (each within a third of the
/// entry's expiry).
///
/// Choose it when waiters must not starve (a device's firmware job queued behind a busy
/// stream of others); choose [`RedisLock`] for the most throughput.
///
/// ```
/// use std::time::Duration;
/// use distkit_core::DistributedLock;
/// use distkit_dlock::RedisLock;
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
/// # let redis = distkit_testkit::RedisServer::start()?;
/// # let url = redis.url();
/// let fair = RedisLock::new(url)?.fair();
/// let first = fair.acquire("ota:device-42", Duration::from_secs(1)).await?;
/// // A second caller queues; it is granted when the first releases.
/// let waiting = tokio::spawn({
///     let fair = fair.clone();
///     async move { fair.acquire("ota:device-42", Duration::from_secs(5)).await }
/// });
/// tokio::time::sleep(Duration::from_millis(50)).await;
/// let fence = first.fencing_token();
/// first.release().await?;
/// let second = waiting.await??;
/// assert!(second.fencing_token() > fence);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct RedisFairLock {
    handle: Handle,
}

impl RedisFairLock {
    pub(crate) fn new(lock: RedisLock) -> Self {
        Self {
            handle: Handle {
                lock,
                kind: Kind::Fair,
                default_limit: 0,
            },
        }
    }
}

delegate_lock!(RedisFairLock, handle);

/// A read-write lock on Redis: many readers or one writer per name, with **writer
/// preference** (a waiting writer holds new readers back, so 16 readers cycling cannot starve
/// it; in turn, readers wait while writers keep coming). Like Redisson's `RReadWriteLock`.
///
/// Made by [`RedisLock::rw`]; each side ([`read_lock`](DistributedRwLock::read_lock),
/// [`write_lock`](DistributedRwLock::write_lock)) is a [`DistributedLock`] with the usual
/// guard, watchdog and cancellation safety. Read and write grants of a name take fencing
/// tokens from one counter, so a store that keeps the largest token it saw orders them all.
/// Each reader has its own lease: a reader that dies frees its share when its TTL ends.
/// Upgrading a read lease to a write lease is not offered (two upgrading readers would wait
/// for each other forever): release the read lease, then take the write lease.
///
/// Its keys (`<prefix>rw:{name}...`) are separate from the plain lock's: a read-write lock
/// and a plain lock of the same name do not exclude each other.
///
/// ```
/// use std::time::Duration;
/// use distkit_core::{DistributedLock, DistributedRwLock};
/// use distkit_dlock::RedisLock;
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
/// # let redis = distkit_testkit::RedisServer::start()?;
/// # let url = redis.url();
/// let rw = RedisLock::new(url)?.rw();
/// let (reads, writes) = (rw.read_lock(), rw.write_lock());
/// let a = reads.acquire("config:fleet", Duration::from_secs(1)).await?;
/// let b = reads.acquire("config:fleet", Duration::from_secs(1)).await?; // readers share
/// assert!(writes.try_acquire("config:fleet").await?.is_none()); // the writer must wait
/// let newest_read = b.fencing_token();
/// a.release().await?;
/// b.release().await?;
/// let w = writes.acquire("config:fleet", Duration::from_secs(1)).await?;
/// assert!(w.fencing_token() > newest_read); // one counter orders reads and writes
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct RedisRwLock {
    read: Arc<Handle>,
    write: Arc<Handle>,
}

impl RedisRwLock {
    pub(crate) fn new(lock: RedisLock) -> Self {
        Self {
            read: Arc::new(Handle {
                lock: lock.clone(),
                kind: Kind::Read,
                default_limit: 0,
            }),
            write: Arc::new(Handle {
                lock,
                kind: Kind::Write,
                default_limit: 0,
            }),
        }
    }
}

impl DistributedRwLock for RedisRwLock {
    fn read_lock(&self) -> Arc<dyn DistributedLock> {
        self.read.clone()
    }
    fn write_lock(&self) -> Arc<dyn DistributedLock> {
        self.write.clone()
    }
}

/// A counting semaphore on Redis whose permits each have a lease, like Redisson's
/// `RPermitExpirableSemaphore`: a holder that dies gives its permits back when its TTL ends.
///
/// Made by [`RedisLock::semaphore`] with the limit of names that were never given one
/// ([`set_permits`](DistributedSemaphore::set_permits) stores a name's own limit in Redis,
/// where every process sees it; it can change at run time). A grant holds `k` permits under
/// one lease with its own fencing token; [`DistributedLock::acquire_with`] takes one. A release or
/// a raised limit wakes the waiters. Lowering the limit takes nothing from current holders;
/// new grants wait until the holders are back under it.
///
/// A limit lives in Redis like the leases: a Redis that restarts without persistence forgets
/// it, and the name has the default limit again until `set_permits` is called.
///
/// Choose it to bound concurrency across processes (at most 5 firmware downloads at once).
/// Waiters are not queued: a request for many permits can wait while small ones keep fitting.
///
/// ```
/// use std::time::Duration;
/// use distkit_core::{AcquireOptions, DistributedLock, DistributedSemaphore};
/// use distkit_dlock::RedisLock;
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
/// # let redis = distkit_testkit::RedisServer::start()?;
/// # let url = redis.url();
/// let downloads = RedisLock::new(url)?.semaphore(2)?;
/// let a = downloads.acquire("firmware-downloads", Duration::from_secs(1)).await?;
/// let b = downloads.acquire("firmware-downloads", Duration::from_secs(1)).await?;
/// assert!(downloads.try_acquire("firmware-downloads").await?.is_none()); // both in use
/// downloads.set_permits("firmware-downloads", 4).await?; // raised at run time
/// let two = downloads
///     .acquire_permits("firmware-downloads", 2, AcquireOptions::new())
///     .await?;
/// assert_eq!(downloads.permits("firmware-downloads").await?.in_use, 4);
/// # drop((a, b, two));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct RedisSemaphore {
    /// One permit a grant, with the default limit; release, extend and is-held go by token.
    handle: Handle,
}

impl RedisSemaphore {
    pub(crate) fn new(lock: RedisLock, default_limit: u32) -> Result<Self, Error> {
        check_permits("default permits", default_limit)?;
        Ok(Self {
            handle: Handle {
                lock,
                kind: Kind::Permits(1),
                default_limit,
            },
        })
    }

    fn target(&self, name: &str) -> Target {
        Target::new(
            self.handle.lock.prefix(),
            name,
            self.handle.kind,
            LockToken::from_u128(0),
        )
    }
}

/// A limit or a request of permits must be at least 1.
pub(crate) fn check_permits(what: &'static str, permits: u32) -> Result<(), Error> {
    if permits == 0 {
        return Err(Error::invalid_input(what, "it must be at least 1"));
    }
    Ok(())
}

delegate_lock!(RedisSemaphore, handle);

#[async_trait]
impl DistributedSemaphore for RedisSemaphore {
    async fn acquire_permits(
        &self,
        name: &str,
        permits: u32,
        options: AcquireOptions,
    ) -> Result<LockGuard, Error> {
        check_permits("permits", permits)?;
        let h = &self.handle;
        h.lock
            .acquire_kind(name, options, Kind::Permits(permits), h.default_limit)
            .await
    }

    async fn set_permits(&self, name: &str, permits: u32) -> Result<(), Error> {
        validate(name)?;
        check_permits("permits", permits)?;
        let _: i64 = self
            .handle
            .lock
            .invoke(self.target(name).set_limit(permits))
            .await?;
        Ok(())
    }

    async fn permits(&self, name: &str) -> Result<PermitCount, Error> {
        validate(name)?;
        let h = &self.handle;
        let (limit, in_use): (i64, i64) = h
            .lock
            .invoke(self.target(name).semaphore_state(h.default_limit))
            .await?;
        let clamp = |v: i64| u32::try_from(v.max(0)).unwrap_or(u32::MAX);
        Ok(PermitCount {
            limit: clamp(limit),
            in_use: clamp(in_use),
        })
    }
}
