//! The lock family inside one process: a fair lock, a read-write lock and a semaphore with the
//! semantics of their Redis counterparts, for tests and single-process deployments.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use distkit_core::{
    AcquireOptions, DistributedLock, DistributedRwLock, DistributedSemaphore, Error, FencingToken,
    Lease, LockGuard, LockToken, PermitCount,
};
use tokio::sync::Notify;

use crate::family::check_permits;
use crate::local::{DEFAULT_MAX_LOCKS, next_fence};
use crate::name::validate;
use crate::util::{Deadline, delegate_lock, guard, random_token, validate_ttl};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// `LocalLock`: exclusive; it does not queue, and it may go ahead of a fair queue.
    Plain,
    Fair,
    Read,
    Write,
    Permits(u32),
}

/// One table of names: a `LocalLock` and the fair locks made from it, both sides of a
/// read-write lock, or a semaphore.
pub(crate) struct Table {
    slots: Mutex<HashMap<String, Slot>>,
    fence: AtomicU64,
    tickets: AtomicU64,
    ttl: Duration,
    watchdog: bool,
    max_names: usize,
    default_limit: u32,
}

#[derive(Default)]
struct Slot {
    holders: Vec<Holder>,
    /// Waiting tickets: a fair lock's line, or a read-write lock's waiting writers.
    queue: VecDeque<u64>,
    /// A semaphore's own limit, once set.
    limit: Option<u32>,
    notify: Arc<Notify>,
}

#[derive(Clone, Copy)]
struct Holder {
    token: LockToken,
    permits: u32,
    exclusive: bool,
    expires: Instant,
}

impl Slot {
    fn sweep(&mut self, now: Instant) {
        self.holders.retain(|h| h.expires > now);
    }

    /// The permits held, in `u64`: a sum of `u32`s that must not saturate into a count that
    /// stops growing (an outside review got unlimited grants under a limit of `u32::MAX`).
    fn in_use(&self) -> u64 {
        self.holders.iter().map(|h| u64::from(h.permits)).sum()
    }

    /// Nothing to remember: no holder, waiter, limit or listener.
    fn idle(&self, now: Instant) -> bool {
        !self.holders.iter().any(|h| h.expires > now)
            && self.queue.is_empty()
            && self.limit.is_none()
            && Arc::strong_count(&self.notify) == 1
    }
}

/// One kind of lock on a table.
#[derive(Clone)]
pub(crate) struct Local {
    pub(crate) table: Arc<Table>,
    pub(crate) mode: Mode,
}

impl fmt::Debug for Local {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Local")
            .field("mode", &self.mode)
            .field("ttl", &self.table.ttl)
            .finish_non_exhaustive()
    }
}

impl Table {
    fn new(ttl: Duration, default_limit: u32) -> Result<Arc<Self>, Error> {
        Self::with(ttl, default_limit, false, DEFAULT_MAX_LOCKS)
    }

    pub(crate) fn with(
        ttl: Duration,
        default_limit: u32,
        watchdog: bool,
        max_names: usize,
    ) -> Result<Arc<Self>, Error> {
        validate_ttl(ttl)?;
        if max_names == 0 {
            return Err(Error::invalid_input("max locks", "it must be at least 1"));
        }
        Ok(Arc::new(Self {
            slots: Mutex::new(HashMap::new()),
            fence: AtomicU64::new(0),
            tickets: AtomicU64::new(0),
            ttl,
            watchdog,
            max_names,
            default_limit,
        }))
    }

    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Names with a holder, a waiter or a limit.
    pub(crate) fn names(&self) -> usize {
        self.slots().len()
    }

    fn slots(&self) -> MutexGuard<'_, HashMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The slot of `name`, making room (forgetting idle names) or refusing when full.
    fn slot<'a>(
        &self,
        slots: &'a mut HashMap<String, Slot>,
        name: &str,
        now: Instant,
    ) -> Result<&'a mut Slot, Error> {
        if !slots.contains_key(name) && slots.len() >= self.max_names {
            slots.retain(|_, s| !s.idle(now));
            if slots.len() >= self.max_names {
                return Err(Error::Unavailable {
                    endpoint: "in-process lock table".into(),
                    reason: format!(
                        "it holds {} names, its limit; retry when some are released or expire",
                        self.max_names
                    ),
                    source: None,
                });
            }
        }
        Ok(slots.entry(name.to_owned()).or_default())
    }
}

/// Takes a waiter's ticket out of the line when it stops waiting without a grant.
struct Ticket<'a> {
    table: &'a Table,
    name: &'a str,
    id: u64,
    queued: bool,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if !self.queued {
            return;
        }
        let mut slots = self.table.slots();
        if let Some(slot) = slots.get_mut(self.name) {
            slot.queue.retain(|t| *t != self.id);
            // Whoever was behind may go now.
            slot.notify.notify_waiters();
        }
    }
}

impl Local {
    async fn acquire(&self, name: &str, options: AcquireOptions) -> Result<LockGuard, Error> {
        validate(name)?;
        if let Mode::Permits(k) = self.mode {
            check_permits("permits", k)?;
        }
        let table = &*self.table;
        let ttl = options.ttl_value().unwrap_or(table.ttl);
        validate_ttl(ttl)?;
        let wait = options.wait_limit().unwrap_or(Duration::ZERO);
        let started = Instant::now();
        let deadline = Deadline::after(started, wait);
        let mut ticket = Ticket {
            table,
            name,
            id: table.tickets.fetch_add(1, Ordering::Relaxed),
            queued: false,
        };
        loop {
            // Listen before looking, so a change after the look wakes us.
            let notify = {
                let mut slots = table.slots();
                table.slot(&mut slots, name, Instant::now())?.notify.clone()
            };
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = Instant::now();
            let next_change = {
                let mut slots = table.slots();
                let slot = table.slot(&mut slots, name, now)?;
                slot.sweep(now);
                let free = match self.mode {
                    Mode::Plain => slot.holders.is_empty(),
                    Mode::Fair => {
                        slot.holders.is_empty()
                            && slot.queue.front().is_none_or(|t| *t == ticket.id)
                    }
                    Mode::Read => {
                        !slot.holders.iter().any(|h| h.exclusive) && slot.queue.is_empty()
                    }
                    Mode::Write => slot.holders.is_empty(),
                    Mode::Permits(k) => {
                        slot.in_use() + u64::from(k)
                            <= u64::from(slot.limit.unwrap_or(table.default_limit))
                    }
                };
                if free {
                    let fence = next_fence(&table.fence).ok_or_else(|| Error::NoCapacity {
                        reason: "the in-process lock table's fencing tokens are exhausted \
                                 (the counter is at u64::MAX)"
                            .into(),
                    })?;
                    slot.queue.retain(|t| *t != ticket.id);
                    ticket.queued = false;
                    let token = random_token();
                    slot.holders.push(Holder {
                        token,
                        permits: match self.mode {
                            Mode::Permits(k) => k,
                            _ => 1,
                        },
                        exclusive: self.exclusive(),
                        expires: now + ttl,
                    });
                    drop(slots);
                    let lease = Lease::new(name, token, FencingToken::new(fence), ttl, now + ttl);
                    let watchdog = options.watchdog_value().unwrap_or(table.watchdog);
                    return Ok(guard(lease, Arc::new(self.clone()), watchdog, ttl / 3));
                }
                if !wait.is_zero()
                    && !ticket.queued
                    && matches!(self.mode, Mode::Fair | Mode::Write)
                {
                    slot.queue.push_back(ticket.id);
                    ticket.queued = true;
                }
                slot.holders.iter().map(|h| h.expires).min()
            };
            if wait.is_zero() || deadline.passed(now) {
                return Err(Error::Busy {
                    what: format!("lock {name:?}"),
                    waited: now - started,
                });
            }
            let sleep = deadline.cap(
                now,
                next_change.map_or(Duration::from_secs(1), |t| t.saturating_duration_since(now)),
            );
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep(sleep) => {}
            }
        }
    }

    /// Whether this mode's grants exclude everyone else.
    fn exclusive(&self) -> bool {
        matches!(self.mode, Mode::Plain | Mode::Fair | Mode::Write)
    }

    fn with_holder<T>(
        &self,
        lease: &Lease,
        f: impl FnOnce(&mut Slot, usize, Instant) -> T,
    ) -> Option<T> {
        let now = Instant::now();
        let mut slots = self.table.slots();
        let slot = slots.get_mut(lease.name())?;
        let i = slot.holders.iter().position(|h| {
            // A reader's token never releases a writer's lease, nor the other way round.
            h.token == lease.token() && h.expires > now && h.exclusive == self.exclusive()
        })?;
        let out = f(slot, i, now);
        if slot.idle(now) {
            slots.remove(lease.name());
        }
        Some(out)
    }
}

#[async_trait]
impl DistributedLock for Local {
    async fn acquire_with(&self, name: &str, options: AcquireOptions) -> Result<LockGuard, Error> {
        self.acquire(name, options).await
    }

    async fn release(&self, lease: &Lease) -> Result<bool, Error> {
        Ok(self
            .with_holder(lease, |slot, i, _| {
                slot.holders.swap_remove(i);
                slot.notify.notify_waiters();
            })
            .is_some())
    }

    async fn extend(&self, lease: &mut Lease, ttl: Duration) -> Result<bool, Error> {
        validate_ttl(ttl)?;
        let until = self.with_holder(lease, |slot, i, now| {
            slot.holders[i].expires = now + ttl;
            now + ttl
        });
        if let Some(until) = until {
            lease.renewed(ttl, until);
        }
        Ok(until.is_some())
    }

    async fn is_held(&self, lease: &Lease) -> Result<bool, Error> {
        Ok(self.with_holder(lease, |_, _, _| ()).is_some())
    }
}

/// [`RedisFairLock`](crate::RedisFairLock)'s semantics inside one process: waiters are
/// granted in arrival order; one that gives up or is cancelled leaves the line at once.
///
/// [`LocalLock::fair`](crate::LocalLock::fair) makes one on a `LocalLock`'s names, so the
/// two exclude each other as their Redis counterparts do; [`new`](Self::new) makes one with
/// names of its own.
///
/// ```
/// use std::time::Duration;
/// use distkit_core::DistributedLock;
/// use distkit_dlock::LocalFairLock;
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let fair = LocalFairLock::new(Duration::from_secs(5))?;
/// let a = fair.acquire("ota", Duration::from_secs(1)).await?;
/// assert!(fair.try_acquire("ota").await?.is_none());
/// a.release().await?;
/// assert!(fair.try_acquire("ota").await?.is_some());
/// # Ok::<(), distkit_core::Error>(())
/// # }).unwrap();
/// ```
#[derive(Clone, Debug)]
pub struct LocalFairLock {
    local: Local,
}

impl LocalFairLock {
    /// A fair lock table whose leases last `ttl` unless an acquisition asks otherwise.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a TTL under 1 ms or over a day.
    pub fn new(ttl: Duration) -> Result<Self, Error> {
        Ok(Self::on(Table::new(ttl, 1)?))
    }

    pub(crate) fn on(table: Arc<Table>) -> Self {
        Self {
            local: Local {
                table,
                mode: Mode::Fair,
            },
        }
    }
}

delegate_lock!(LocalFairLock, local);

/// [`RedisRwLock`](crate::RedisRwLock)'s semantics inside one process: many readers or one
/// writer, writer preference, one fencing counter for both sides.
///
/// ```
/// use std::time::Duration;
/// use distkit_core::{DistributedLock, DistributedRwLock};
/// use distkit_dlock::LocalRwLock;
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let rw = LocalRwLock::new(Duration::from_secs(5))?;
/// let r = rw.read_lock().acquire("config", Duration::from_secs(1)).await?;
/// assert!(rw.read_lock().try_acquire("config").await?.is_some());
/// assert!(rw.write_lock().try_acquire("config").await?.is_none());
/// # drop(r);
/// # Ok::<(), distkit_core::Error>(())
/// # }).unwrap();
/// ```
#[derive(Clone, Debug)]
pub struct LocalRwLock {
    read: Arc<Local>,
    write: Arc<Local>,
}

impl LocalRwLock {
    /// A read-write lock table whose leases last `ttl` unless an acquisition asks otherwise.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a TTL under 1 ms or over a day.
    pub fn new(ttl: Duration) -> Result<Self, Error> {
        let table = Table::new(ttl, 1)?;
        Ok(Self {
            read: Arc::new(Local {
                table: table.clone(),
                mode: Mode::Read,
            }),
            write: Arc::new(Local {
                table,
                mode: Mode::Write,
            }),
        })
    }
}

impl DistributedRwLock for LocalRwLock {
    fn read_lock(&self) -> Arc<dyn DistributedLock> {
        self.read.clone()
    }
    fn write_lock(&self) -> Arc<dyn DistributedLock> {
        self.write.clone()
    }
}

/// [`RedisSemaphore`](crate::RedisSemaphore)'s semantics inside one process: leased permits,
/// a limit per name that can change at run time.
///
/// ```
/// use std::time::Duration;
/// use distkit_core::{AcquireOptions, DistributedSemaphore};
/// use distkit_dlock::LocalSemaphore;
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let sem = LocalSemaphore::new(Duration::from_secs(5), 3)?;
/// let two = sem.acquire_permits("downloads", 2, AcquireOptions::new()).await?;
/// assert!(sem.acquire_permits("downloads", 2, AcquireOptions::new()).await.is_err());
/// assert_eq!(sem.permits("downloads").await?.in_use, 2);
/// # drop(two);
/// # Ok::<(), distkit_core::Error>(())
/// # }).unwrap();
/// ```
#[derive(Clone, Debug)]
pub struct LocalSemaphore {
    local: Local,
}

impl LocalSemaphore {
    /// A semaphore table whose leases last `ttl` unless an acquisition asks otherwise, and
    /// whose names have `default_permits` until given their own limit.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a TTL under 1 ms or over a day, or zero permits.
    pub fn new(ttl: Duration, default_permits: u32) -> Result<Self, Error> {
        check_permits("default permits", default_permits)?;
        Ok(Self {
            local: Local {
                table: Table::new(ttl, default_permits)?,
                mode: Mode::Permits(1),
            },
        })
    }
}

delegate_lock!(LocalSemaphore, local);

#[async_trait]
impl DistributedSemaphore for LocalSemaphore {
    async fn acquire_permits(
        &self,
        name: &str,
        permits: u32,
        options: AcquireOptions,
    ) -> Result<LockGuard, Error> {
        let local = Local {
            table: self.local.table.clone(),
            mode: Mode::Permits(permits),
        };
        local.acquire(name, options).await
    }

    async fn set_permits(&self, name: &str, permits: u32) -> Result<(), Error> {
        validate(name)?;
        check_permits("permits", permits)?;
        let table = &self.local.table;
        let mut slots = table.slots();
        let slot = table.slot(&mut slots, name, Instant::now())?;
        slot.limit = Some(permits);
        slot.notify.notify_waiters();
        Ok(())
    }

    async fn permits(&self, name: &str) -> Result<PermitCount, Error> {
        validate(name)?;
        let table = &self.local.table;
        let now = Instant::now();
        let slots = table.slots();
        let (limit, in_use) = slots.get(name).map_or((None, 0), |s| {
            let live = s.holders.iter().filter(|h| h.expires > now);
            (s.limit, live.map(|h| u64::from(h.permits)).sum::<u64>())
        });
        Ok(PermitCount {
            limit: limit.unwrap_or(table.default_limit),
            // Never above u32::MAX: every grant fitted under a limit that is a u32.
            in_use: u32::try_from(in_use).unwrap_or(u32::MAX),
        })
    }
}
