//! `RedisLock`: one Redis server, fencing tokens, watchdog renewal and pub/sub hand-off.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use distkit_core::{
    AcquireOptions, DistributedLock, Error, FencingToken, Lease, LockGuard, LockToken,
};

use crate::errors::from_redis;
use crate::family::{Handle, Kind, RedisFairLock, RedisRwLock, RedisSemaphore, Target};
use crate::name::{Keys, validate};
use crate::notify::{Notifier, Registration};
use crate::scripts;
use crate::topology::{Conn, Pool, Pooled, RedisConnection, Topology};
use crate::util::{Backoff, Deadline, guard, random_token, validate_ttl};

/// Default lease length (Redisson's watchdog default).
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);
/// Default key prefix.
pub const DEFAULT_PREFIX: &str = "distkit:lock:";
/// Default limit for one Redis command, including getting a connection.
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest connection pool accepted (the pool allocates its slots up front).
pub const MAX_POOL_SIZE: usize = 1024;
/// Default expiry of a waiter's entry in a fair lock's queue (or a waiting writer's mark).
pub const DEFAULT_QUEUE_ENTRY_TTL: Duration = Duration::from_secs(3);
/// The least time a later attempt of a waiting acquire gets, even as its wait runs out.
const ATTEMPT_FLOOR: Duration = Duration::from_millis(100);
/// Default hand-off window of the plain lock under contention.
pub const DEFAULT_HANDOFF_WINDOW: Duration = Duration::from_millis(10);

/// Configures a [`RedisLock`].
#[derive(Clone, Debug)]
#[must_use]
pub struct RedisLockBuilder {
    topology: Topology,
    min_replicas: u32,
    replica_timeout: Duration,
    ttl: Duration,
    watchdog: bool,
    renew_every: Option<Duration>,
    prefix: String,
    op_timeout: Duration,
    pool_size: usize,
    queue_entry_ttl: Duration,
    handoff_window: Duration,
}

impl RedisLockBuilder {
    /// Requires `replicas` replicas to acknowledge every grant and every extension (Redis
    /// `WAIT replicas timeout` on the connection that wrote it) within `timeout` (shorter
    /// than the op timeout; default off).
    ///
    /// A grant that fewer replicas acknowledged is released at once and reported as a
    /// retryable [`Error::Unavailable`] (or [`Error::Timeout`] when the op timeout ran out
    /// first; the grant is then given back as soon as the server's `WAIT` ends); it is never
    /// handed to the caller (its fencing
    /// number is used up all the same). An extension that fewer acknowledged is reported the
    /// same way and not counted: the lease keeps its old validity, though the primary has
    /// applied the longer TTL (a `PEXPIRE` cannot be taken back); a replica promoted then
    /// holds the shorter one, which the holder already assumes. The watchdog retries it.
    ///
    /// Each write that waits for replicas takes a connection of its own from the pool
    /// ([`pool_size`](Self::pool_size)), since `WAIT` blocks the connection it runs on; with
    /// more callers than connections, the rest wait for one (within the op timeout). The
    /// timeout must be at least 1 ms and shorter than the op timeout.
    ///
    /// **What it buys**: Redis replicates asynchronously, so without it a grant the old
    /// primary acknowledged can vanish when Sentinel promotes a replica that had not received
    /// it, and a second client gets the same lock. With `min_replicas(1)` every grant was on
    /// at least one replica first; Sentinel promotes the replica with the most replication
    /// progress, which then holds the grant.
    ///
    /// **What it does not**: `WAIT` is not consensus. A promotion of a replica that did not
    /// acknowledge (the acknowledging one was down too, or a partition and an unlucky
    /// election) can still lose a grant. The fencing token stays the safety net: tokens are
    /// floored by the server's clock, so they keep increasing across a promotion as long as
    /// the servers' clocks do not step back, and a fenced store refuses the stale holder.
    ///
    /// With replicas down, every grant waits up to `timeout` and is then refused; so is every
    /// grant when `replicas` is more than the primary has (the count is not checked against
    /// the deployment, which can change). After a failover the promoted replica starts with
    /// the replicas that follow it: with one replica per primary, none is left, and grants are
    /// refused until one returns, so give each primary at least two.
    ///
    /// **On a Redis Cluster** `WAIT` goes to the primary that owns the lock's slot, on the
    /// connection that sent the script, and a cluster failover promotes the replica with the
    /// most replication progress, as Sentinel does. One gap: while an operator migrates the
    /// lock's slot, a grant the cluster redirected (`ASK`) to the importing primary is
    /// acknowledged by the slot's current owner, which did not take it; such a grant is only
    /// as safe as one without `WAIT` until the migration ends.
    pub fn min_replicas(mut self, replicas: u32, timeout: Duration) -> Self {
        self.min_replicas = replicas;
        self.replica_timeout = timeout;
        self
    }

    /// How long a waiter's place in a [`RedisFairLock`]'s queue (or a waiting writer's mark
    /// on a [`RedisRwLock`]) lasts unless its waiter renews it, which it does every third of
    /// this (default 3 s, from 30 ms to a minute). It bounds how long a waiter that died
    /// without a word holds up the others.
    pub fn queue_entry_ttl(mut self, ttl: Duration) -> Self {
        self.queue_entry_ttl = ttl;
        self
    }

    /// How long a released plain lock is kept for the waiters the release woke (default
    /// 10 ms, at most 1 s; zero turns it off). While the window lasts, only a woken waiter
    /// may take the lock, so the worker that just released cannot grab it straight back
    /// ahead of them: under contention, grants spread across workers and processes. The
    /// window ends as soon as a woken waiter takes the lock.
    pub fn handoff_window(mut self, window: Duration) -> Self {
        self.handoff_window = window;
        self
    }

    /// Lease length when an acquisition does not ask for one (default 30 s).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Renew leases in the background while their guards live (default off; an acquisition
    /// can override it with [`AcquireOptions::watchdog`]).
    pub fn watchdog(mut self, on: bool) -> Self {
        self.watchdog = on;
        self
    }

    /// How often the watchdog renews (default a third of the lease's TTL). Must be shorter
    /// than the TTL.
    pub fn renew_every(mut self, every: Duration) -> Self {
        self.renew_every = Some(every);
        self
    }

    /// Prefix of every key (default `distkit:lock:`).
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Limit for one command, including the wait for a pooled connection (default 2 s).
    pub fn op_timeout(mut self, timeout: Duration) -> Self {
        self.op_timeout = timeout;
        self
    }

    /// Connections that can be lent out at once (default 8, at most [`MAX_POOL_SIZE`]): to
    /// writes that wait for replicas ([`min_replicas`](Self::min_replicas)) and to
    /// [`RedisLock::connection`] callers. Every other command shares one multiplexed
    /// connection, which comes on top, so even a pool of 1 serves locks and lends one.
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size;
        self
    }

    pub(crate) fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Validates the settings and creates the pool. Connections are made on first use.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for an unparsable URL, a zero or sub-millisecond TTL, a
    /// renewal interval not shorter than the TTL, a zero timeout, a pool size of 0 or over
    /// [`MAX_POOL_SIZE`], a prefix with braces, a queue entry TTL outside 30 ms to 60 s, a
    /// hand-off window over 1 s, no sentinel or cluster node, or `min_replicas` with a
    /// replica timeout under 1 ms or not shorter than the op timeout.
    pub fn build(self) -> Result<RedisLock, Error> {
        validate_ttl(self.ttl)?;
        if let Some(every) = self.renew_every
            && (every.is_zero() || every >= self.ttl)
        {
            return Err(Error::invalid_input(
                "renewal interval",
                format!(
                    "it must be greater than zero and shorter than the ttl ({:?}), got {every:?}",
                    self.ttl
                ),
            ));
        }
        if self.op_timeout.is_zero() {
            return Err(Error::invalid_input(
                "op timeout",
                "it must be greater than zero",
            ));
        }
        if self.pool_size == 0 || self.pool_size > MAX_POOL_SIZE {
            return Err(Error::invalid_input(
                "pool size",
                format!(
                    "it must be from 1 to {MAX_POOL_SIZE}, got {}",
                    self.pool_size
                ),
            ));
        }
        if self.queue_entry_ttl < Duration::from_millis(30)
            || self.queue_entry_ttl > Duration::from_secs(60)
        {
            return Err(Error::invalid_input(
                "queue entry ttl",
                format!(
                    "it must be from 30 ms to 60 s, got {:?}",
                    self.queue_entry_ttl
                ),
            ));
        }
        if self.handoff_window > Duration::from_secs(1) {
            return Err(Error::invalid_input(
                "hand-off window",
                format!("it must be at most 1 s, got {:?}", self.handoff_window),
            ));
        }
        if self.prefix.contains(['{', '}']) {
            return Err(Error::invalid_input(
                "key prefix",
                "braces are reserved for the hash tag around the lock name",
            ));
        }
        // At least 1 ms: `WAIT k 0` waits for ever, and a shorter timeout would round to it.
        if self.min_replicas > 0
            && (self.replica_timeout < Duration::from_millis(1)
                || self.replica_timeout >= self.op_timeout)
        {
            return Err(Error::invalid_input(
                "replica timeout",
                format!(
                    "it must be at least 1 ms and shorter than the op timeout ({:?}), got {:?}",
                    self.op_timeout, self.replica_timeout
                ),
            ));
        }
        let (pool, pubsub, endpoint) = self.topology.connect(self.pool_size, self.op_timeout)?;
        // The shared connection has a pool of its own: lent connections can never take its
        // place (with one pool, lending before the first lock operation, or after a failure
        // dropped the shared one, left the locks waiting for a lent one to come back).
        let shared = self.topology.pool(1, self.op_timeout)?;
        Ok(RedisLock {
            inner: Arc::new(Inner {
                notifier: Arc::new(Notifier::new(pubsub, self.op_timeout)),
                min_replicas: self.min_replicas,
                replica_timeout: self.replica_timeout,
                pool,
                live: std::sync::Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
                shared,
                endpoint,
                prefix: self.prefix,
                ttl: self.ttl,
                watchdog: self.watchdog,
                renew_every: self.renew_every,
                op_timeout: self.op_timeout,
                queue_entry_ttl: self.queue_entry_ttl,
                handoff_window: self.handoff_window,
            }),
        })
    }
}

/// A distributed lock on one Redis server.
///
/// * **Grant**: one Lua script sets the key (`token`, `PX ttl`) if it is absent and, in the
///   same atomic step, advances the lock's fencing counter, so every grant carries a
///   [`FencingToken`] larger than all earlier ones for that name.
/// * **Release / extend**: compare-token scripts; a lease that expired or passed to another
///   holder is never touched. Release publishes on the lock's channel.
/// * **Waiting**: an acquire tries first; only when the lock is held does it subscribe to the
///   release channel, try once more (so no release slips in between), and then retry on the
///   message; they also wake when the holder's TTL runs out (a crashed holder
///   publishes nothing), and poll with jittered backoff when pub/sub is unavailable.
/// * **Hand-off under contention**: waiters are counted in Redis while they wait; a release
///   while some wait keeps the lock for the waiters it woke for up to
///   [`handoff_window`](RedisLockBuilder::handoff_window) (10 ms, ended by the first woken
///   waiter's grant), so the worker that just released cannot take it straight back. Grants
///   spread evenly across workers and processes; for strict arrival order use
///   [`RedisLock::fair`]. A `try_acquire` in that window finds the lock busy.
/// * **Cancellation**: if the caller's acquire future is dropped while a grant is in flight,
///   a release follows on the same connection, so no orphaned lock waits out its TTL.
/// * **Watchdog** (opt-in): renews every `ttl / 3` while the guard lives, stops before the
///   release is sent, and reports loss through [`LockGuard::lost`].
///
/// Cloning is cheap and shares the pool.
///
/// # What a fencing token guarantees
///
/// For one lock name on one Redis server, tokens strictly increase from grant to grant. A
/// token is `max(previous + 1, server time in microseconds)`, so even after Redis restarts and
/// loses its counter, new tokens exceed old ones unless the server's clock stepped back. The
/// protected resource must remember the largest token it accepted and refuse writes carrying a
/// smaller one; that is what makes a holder that paused past its lease harmless.
#[derive(Clone)]
pub struct RedisLock {
    inner: Arc<Inner>,
}

struct Inner {
    /// Connections lent out: to writes that wait for replicas, and to `connection()`.
    pool: Pool,
    /// Replicas that must acknowledge a grant or an extension (`WAIT`), and for how long.
    min_replicas: u32,
    replica_timeout: Duration,
    /// A pooled connection kept checked out while it works. It is multiplexed, so every
    /// operation uses a clone of it; checking out per operation would cost deadpool's recycle
    /// check (an extra round trip) each time.
    live: std::sync::Mutex<Option<Live>>,
    /// The one shared connection's pool, apart from the lent ones in `pool`.
    shared: Pool,
    /// Held while the live connection is being made.
    connecting: tokio::sync::Mutex<()>,
    notifier: Arc<Notifier>,
    endpoint: String,
    prefix: String,
    ttl: Duration,
    watchdog: bool,
    renew_every: Option<Duration>,
    op_timeout: Duration,
    queue_entry_ttl: Duration,
    handoff_window: Duration,
}

struct Live {
    mux: Conn,
    _pooled: Pooled,
}

/// The outcome of one attempt.
pub(crate) enum Attempt {
    Granted(FencingToken),
    Held { pttl: Option<Duration> },
}

impl RedisLock {
    /// Configures a lock service for the server at `url` (`redis://[:password@]host:port/`).
    pub fn builder(url: impl Into<String>) -> RedisLockBuilder {
        Self::configure(Topology::Single(url.into()))
    }

    /// Configures a lock service for the primary of `master` in a Redis Sentinel deployment,
    /// found through `sentinels` (`redis://host:port/` each; give all of them).
    ///
    /// Every new connection asks the sentinels for the primary, so after a failover the lock
    /// service follows the promotion: a command that fails on the old primary (refused, or
    /// `READONLY` once it is demoted) is a retryable error, the connection is dropped, and the
    /// next operation (a waiter's next attempt) goes to the new one; pub/sub wake-ups move
    /// with it. Replication is asynchronous: see
    /// [`min_replicas`](RedisLockBuilder::min_replicas) for what a promotion can lose.
    pub fn sentinel<S: Into<String>>(
        master: impl Into<String>,
        sentinels: impl IntoIterator<Item = S>,
    ) -> RedisLockBuilder {
        Self::configure(Topology::Sentinel {
            master: master.into(),
            sentinels: sentinels.into_iter().map(Into::into).collect(),
        })
    }

    /// Configures a lock service for a Redis Cluster reached through `nodes` (`redis://host:
    /// port/` each; a few, in case one is down).
    ///
    /// The redis crate's cluster connection routes each script to the primary owning its
    /// slot and follows `MOVED` and `ASK` while slots migrate; every key of one lock shares
    /// the `{name}` hash tag, so a lock's scripts touch one slot. A script that meets a slot
    /// in the middle of a migration (`TRYAGAIN`) is a retryable error. Release wake-ups use
    /// pub/sub on any node (a cluster delivers every `PUBLISH` to every node).
    /// With [`min_replicas`](RedisLockBuilder::min_replicas), `WAIT` goes to the primary
    /// owning the lock's slot (see there for what a slot migration does to it).
    pub fn cluster<S: Into<String>>(nodes: impl IntoIterator<Item = S>) -> RedisLockBuilder {
        Self::configure(Topology::Cluster(
            nodes.into_iter().map(Into::into).collect(),
        ))
    }

    fn configure(topology: Topology) -> RedisLockBuilder {
        RedisLockBuilder {
            topology,
            min_replicas: 0,
            replica_timeout: Duration::from_millis(100),
            ttl: DEFAULT_TTL,
            watchdog: false,
            renew_every: None,
            prefix: DEFAULT_PREFIX.to_owned(),
            op_timeout: DEFAULT_OP_TIMEOUT,
            pool_size: 8,
            queue_entry_ttl: DEFAULT_QUEUE_ENTRY_TTL,
            handoff_window: DEFAULT_HANDOFF_WINDOW,
        }
    }

    /// A fair lock (FIFO waiters) on this service's connections and settings.
    #[must_use]
    pub fn fair(&self) -> RedisFairLock {
        RedisFairLock::new(self.clone())
    }

    /// A read-write lock on this service's connections and settings.
    #[must_use]
    pub fn rw(&self) -> RedisRwLock {
        RedisRwLock::new(self.clone())
    }

    /// A semaphore on this service's connections and settings; a name never given a limit
    /// with [`set_permits`](distkit_core::DistributedSemaphore::set_permits) has
    /// `default_permits`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for zero permits.
    pub fn semaphore(&self, default_permits: u32) -> Result<RedisSemaphore, Error> {
        RedisSemaphore::new(self.clone(), default_permits)
    }

    /// Acquires `name` as one `kind` of the family: one loop for all of them.
    pub(crate) async fn acquire_kind(
        &self,
        name: &str,
        options: AcquireOptions,
        kind: Kind,
        default_limit: u32,
    ) -> Result<LockGuard, Error> {
        validate(name)?;
        let ttl = options.ttl_value().unwrap_or(self.inner.ttl);
        validate_ttl(ttl)?;
        let watchdog = options.watchdog_value().unwrap_or(self.inner.watchdog);
        let renew_every = self
            .inner
            .renew_every
            .filter(|e| *e < ttl)
            .unwrap_or(ttl / 3);
        let wait = options.wait_limit().unwrap_or(Duration::ZERO);
        let token = random_token();
        let target = Target::new(&self.inner.prefix, name, kind, token);
        let started = Instant::now();
        let deadline = Deadline::after(started, wait);
        // Only a caller that may wait takes a place in a queue.
        let join = !wait.is_zero();
        let mut entry = QueueEntry {
            leave: target
                .leave()
                .filter(|_| join)
                .map(|call| (self.clone(), call)),
        };
        // A queued waiter renews its entry by trying again at least this often.
        let heartbeat = target.queues().then(|| self.inner.queue_entry_ttl / 3);
        let (channel, broadcast) = target.wake_channel();
        let ttl_ms = ttl.as_millis() as u64;
        let entry_ms = self.inner.queue_entry_ttl.as_millis() as u64;
        let mut woken = false;
        let mut first = true;
        // Try first: an uncontended acquire pays one round trip. Only when the lock is held
        // (and we may wait) subscribe to its release channel, then try once more before
        // sleeping, so no release can slip between the failed attempt and the wait.
        // When this process already listens on the channel (others of it wait), listen from
        // the start: the first attempt is then covered, and a refused one needs no second.
        let mut registration: Option<Registration> = if join {
            self.inner
                .notifier
                .register_if_live(&channel, broadcast)
                .await
        } else {
            None
        };
        let mut backoff = Backoff::new();
        loop {
            let notified = registration.as_ref().map(|r| {
                let n = r.notify.notified();
                Box::pin(n)
            });
            let mut notified = notified;
            if let Some(n) = notified.as_mut() {
                n.as_mut().enable();
            }
            let sent = Instant::now();
            let call = target.acquire(ttl_ms, entry_ms, join, woken, default_limit);
            // The first attempt may take the whole op timeout (a try needs one); later ones
            // end with the wait, so a slow or paused server cannot hold an acquire past it
            // (an outside review saw 4.8 s for a 3 s wait). A cut attempt's grant, if its
            // script ran, is released by `PendingGrant`.
            let cut_by_op_timeout = first;
            let limit = if first {
                self.inner.op_timeout
            } else {
                // At least a moment: an attempt that starts as the wait ends still gets its
                // round trip, and finds the lock held (Busy) or free.
                let floor = ATTEMPT_FLOOR.min(self.inner.op_timeout);
                deadline.cap(sent, self.inner.op_timeout).max(floor)
            };
            first = false;
            let attempt = self.attempt_call(call, target.release(0), name);
            let outcome = match tokio::time::timeout(limit, attempt).await {
                Ok(outcome) => outcome,
                // Say which limit cut it (an outside review met "after 0ns" on a try whose
                // replica acknowledgement ran past the op timeout).
                Err(_) if cut_by_op_timeout => Err(Error::Timeout {
                    operation: "a lock attempt (the op timeout ran out during it; with \
                                min_replicas, the wait for replicas counts in it)",
                    after: limit,
                }),
                Err(_) => Err(Error::Timeout {
                    operation: "acquiring a lock (the wait ran out during an attempt)",
                    after: started.elapsed(),
                }),
            };
            woken = false;
            let now = Instant::now();
            match outcome {
                Ok(Attempt::Granted(fence)) => {
                    // Conservative validity: measured from before the request was sent.
                    let valid_until = sent + ttl;
                    let lease = Lease::new(name, token, fence, ttl, valid_until);
                    entry.disarm();
                    let backend: Arc<dyn DistributedLock> = match kind {
                        Kind::Plain => Arc::new(self.clone()),
                        _ => Arc::new(Handle {
                            lock: self.clone(),
                            kind,
                            default_limit,
                        }),
                    };
                    return Ok(guard(lease, backend, watchdog, renew_every));
                }
                Ok(Attempt::Held { pttl }) => {
                    if wait.is_zero() || deadline.passed(now) {
                        // `entry` leaves the queue as it drops, in the background: awaiting it
                        // here could hold a caller past its wait on a slow server.
                        return Err(Error::Busy {
                            what: format!("lock {name:?}"),
                            waited: now - started,
                        });
                    }
                    if registration.is_none() {
                        drop(notified);
                        registration =
                            Some(self.inner.notifier.register(&channel, broadcast).await);
                        continue;
                    }
                    let subscribed = registration.as_ref().is_some_and(|r| r.subscribed);
                    let mut poll = if subscribed {
                        backoff.subscribed_poll()
                    } else {
                        backoff.next_poll()
                    };
                    if let Some(beat) = heartbeat {
                        poll = poll.min(beat);
                    }
                    // Wake when the holder's lease runs out: a crashed holder sends no message.
                    let until_expiry = pttl.map_or(poll, |p| p + Duration::from_millis(1));
                    let sleep = deadline.cap(now, poll.min(until_expiry));
                    match notified {
                        Some(n) => {
                            tokio::select! {
                                () = n => woken = true,
                                () = tokio::time::sleep(sleep) => {}
                            }
                        }
                        None => tokio::time::sleep(sleep).await,
                    }
                }
                Err(e) if e.is_retryable() && !wait.is_zero() && !deadline.passed(now) => {
                    tracing::debug!(lock = name, error = %e, "acquire attempt failed; retrying");
                    tokio::time::sleep(deadline.cap(now, backoff.next_poll())).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// Runs one script call under the operation timeout.
    pub(crate) async fn invoke<T: redis::FromRedisValue>(
        &self,
        call: redis::ScriptInvocation<'static>,
    ) -> Result<T, Error> {
        let since = Instant::now();
        let mut conn = self.conn().await?;
        self.timed(since, call.invoke_async(&mut conn)).await
    }

    /// A lock service for `url` with default settings.
    ///
    /// # Errors
    ///
    /// As for [`RedisLockBuilder::build`].
    pub fn new(url: impl Into<String>) -> Result<Self, Error> {
        Self::builder(url).build()
    }

    /// The server's address, for messages.
    #[must_use]
    pub fn endpoint(&self) -> &str {
        &self.inner.endpoint
    }

    /// A connection of this service's pool, to the same deployment as its locks (with
    /// Sentinel, the primary the sentinels name now; on a cluster, routed per command), for
    /// companion data kept beside the locks: a leader note, a fenced store's records. Its
    /// commands are bounded by the op timeout; it goes back to the pool when dropped, so
    /// hold it no longer than needed (the locks share the pool).
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] or [`Error::Timeout`] when no connection can be made within
    /// the op timeout.
    pub async fn connection(&self) -> Result<RedisConnection, Error> {
        let (conn, pooled) = self.checkout().await?;
        Ok(RedisConnection {
            conn,
            _pooled: pooled,
        })
    }

    /// Checks that the server answers.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`], [`Error::Timeout`] or [`Error::Protocol`] (bad credentials).
    pub async fn ping(&self) -> Result<(), Error> {
        let since = Instant::now();
        let mut conn = self.conn().await?;
        let _: String = self
            .timed(since, redis::cmd("PING").query_async(&mut conn))
            .await?;
        Ok(())
    }

    /// The last fencing token granted for `name`, if any (a resource can start its fencing
    /// check from it).
    ///
    /// # Errors
    ///
    /// As for [`ping`](Self::ping), plus [`Error::InvalidInput`] for a bad name.
    pub async fn last_fencing_token(&self, name: &str) -> Result<Option<FencingToken>, Error> {
        validate(name)?;
        let keys = Keys::new(&self.inner.prefix, name);
        let since = Instant::now();
        let mut conn = self.conn().await?;
        let v: Option<u64> = self
            .timed(
                since,
                redis::cmd("GET").arg(&keys.fence).query_async(&mut conn),
            )
            .await?;
        Ok(v.map(FencingToken::new))
    }

    /// A connection of the pool, checked out until the [`Pooled`] is dropped.
    async fn checkout(&self) -> Result<(Conn, Pooled), Error> {
        self.inner
            .pool
            .get(&self.inner.endpoint, self.inner.op_timeout)
            .await
    }

    /// A clone of the live connection (multiplexed, or a cluster's), checking the shared one
    /// out of its own pool when there is none (first use, or after a failure dropped it).
    async fn conn(&self) -> Result<Conn, Error> {
        if let Some(live) = self.live().as_ref() {
            return Ok(live.mux.clone());
        }
        // One caller connects; the others wait for it and share what it made (the shared
        // pool holds one connection, which the live one keeps checked out).
        let _connecting = self.inner.connecting.lock().await;
        if let Some(live) = self.live().as_ref() {
            return Ok(live.mux.clone());
        }
        let (mux, pooled) = self
            .inner
            .shared
            .get(&self.inner.endpoint, self.inner.op_timeout)
            .await?;
        *self.live() = Some(Live {
            mux: mux.clone(),
            _pooled: pooled,
        });
        Ok(mux)
    }

    fn live(&self) -> std::sync::MutexGuard<'_, Option<Live>> {
        self.inner
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs one command within what is left of the op timeout since `since` (taken before
    /// the connection was fetched: the op timeout bounds both, as documented; an outside
    /// review saw `is_held` take two op timeouts).
    async fn timed<T>(
        &self,
        since: Instant,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, Error> {
        let left = self.inner.op_timeout.saturating_sub(since.elapsed());
        let r = match tokio::time::timeout(left, fut).await {
            Ok(r) => r.map_err(|e| from_redis(&self.inner.endpoint, self.inner.op_timeout, e)),
            Err(_) => Err(Error::Timeout {
                operation: "redis command",
                after: self.inner.op_timeout,
            }),
        };
        if let Err(e) = &r
            && e.is_retryable()
        {
            // The connection may be broken: the next operation checks out a fresh one.
            self.live().take();
        }
        r
    }

    /// One plain grant attempt on this server (a Redlock round's), without queueing or
    /// hand-off. Cancellation-safe as [`attempt_call`](Self::attempt_call).
    pub(crate) async fn attempt(
        &self,
        name: &str,
        token: LockToken,
        ttl: Duration,
    ) -> Result<Attempt, Error> {
        let target = Target::new(&self.inner.prefix, name, Kind::Plain, token);
        let call = target.acquire(ttl.as_millis() as u64, 0, false, false, 0);
        self.attempt_call(call, target.release(0), name).await
    }

    /// One grant attempt by script `call`. Cancellation-safe: if this future is dropped while
    /// the script may have run, `release` follows on the same connection.
    async fn attempt_call(
        &self,
        call: redis::ScriptInvocation<'static>,
        release: redis::ScriptInvocation<'static>,
        lock: &str,
    ) -> Result<Attempt, Error> {
        let since = Instant::now();
        let (mut mux, _dedicated) = self.writer().await?;
        let pending = PendingGrant {
            release: Some((mux.clone(), release)),
        };
        let reply: Result<(u8, i64), Error> = self.timed(since, call.invoke_async(&mut mux)).await;
        match reply {
            Ok((1, fence)) => {
                let Ok(fence) = u64::try_from(fence) else {
                    // The script never grants a negative token; release rather than hand out
                    // a grant whose token means nothing (`pending` releases on drop).
                    return Err(Error::protocol(
                        format!("redis at {}", self.inner.endpoint),
                        format!("granted {lock} with a negative fencing token {fence}"),
                    ));
                };
                if let Err(e) = self.replicated(&mut mux, "grant", lock).await {
                    // Not on enough replicas: a promotion could lose it. Give it back now.
                    pending.release_now(self.inner.op_timeout).await;
                    return Err(e);
                }
                pending.disarm();
                Ok(Attempt::Granted(FencingToken::new(fence)))
            }
            Ok((_, pttl)) => {
                pending.disarm();
                Ok(Attempt::Held {
                    pttl: u64::try_from(pttl).ok().map(Duration::from_millis),
                })
            }
            // A timeout leaves the outcome unknown: `pending` releases on drop.
            Err(e) => Err(e),
        }
    }

    /// Redlock's release on this server: raise the fencing counter to `fence`, then release
    /// if `token` still holds the lock.
    pub(crate) async fn release_raising(
        &self,
        name: &str,
        token: LockToken,
        fence: FencingToken,
    ) -> Result<bool, Error> {
        let keys = Keys::new(&self.inner.prefix, name);
        let since = Instant::now();
        let mut conn = self.conn().await?;
        let n: i64 = self
            .timed(
                since,
                scripts::RELEASE_RAISING
                    .key(&keys.lock)
                    .key(&keys.fence)
                    .arg(token.to_string())
                    .arg(&keys.channel)
                    .arg(fence.get())
                    .invoke_async(&mut conn),
            )
            .await?;
        Ok(n == 1)
    }

    pub(crate) async fn release_kind(&self, lease: &Lease, kind: Kind) -> Result<bool, Error> {
        let target = Target::new(&self.inner.prefix, lease.name(), kind, lease.token());
        let window = if kind == Kind::Plain {
            self.inner.handoff_window.as_millis() as u64
        } else {
            0
        };
        let n: i64 = self.invoke(target.release(window)).await?;
        Ok(n == 1)
    }

    pub(crate) async fn extend_kind(
        &self,
        lease: &mut Lease,
        ttl: Duration,
        kind: Kind,
    ) -> Result<bool, Error> {
        validate_ttl(ttl)?;
        let target = Target::new(&self.inner.prefix, lease.name(), kind, lease.token());
        let since = Instant::now();
        let (mut conn, _dedicated) = self.writer().await?;
        let n: i64 = self
            .timed(
                since,
                target
                    .extend(ttl.as_millis() as u64)
                    .invoke_async(&mut conn),
            )
            .await?;
        if n == 1 {
            self.replicated(&mut conn, "extension", lease.name())
                .await?;
            lease.renewed(ttl, since + ttl);
        }
        Ok(n == 1)
    }

    /// The connection for a write: the shared one, or with
    /// [`min_replicas`](RedisLockBuilder::min_replicas) one of its own from the pool (held
    /// until the caller is done). `WAIT` blocks the connection it runs on: on the shared one,
    /// every caller's WAIT queued behind the others' (an outside review saw 40 callers take
    /// 4.7 s, time out, and leave grants behind that nobody held).
    async fn writer(&self) -> Result<(Conn, Option<Pooled>), Error> {
        if self.inner.min_replicas == 0 {
            return Ok((self.conn().await?, None));
        }
        let (conn, pooled) = self.checkout().await?;
        Ok((conn, Some(pooled)))
    }

    /// With [`min_replicas`](RedisLockBuilder::min_replicas): waits until that many replicas
    /// acknowledged what this connection wrote, or says how many did.
    /// `name` finds the primary on a cluster (its hash tag's slot).
    async fn replicated(&self, conn: &mut Conn, what: &str, name: &str) -> Result<(), Error> {
        let want = self.inner.min_replicas;
        if want == 0 {
            return Ok(());
        }
        let limit = self.inner.replica_timeout;
        let slot_key = format!("{{{name}}}");
        // Whole milliseconds, rounded up (never 0, which would wait for ever).
        let ms = u64::try_from(limit.as_micros().div_ceil(1000))
            .unwrap_or(u64::MAX)
            .max(1);
        let acked: i64 = self
            .timed(Instant::now(), conn.wait_replicas(want, ms, &slot_key))
            .await?;
        if acked >= i64::from(want) {
            return Ok(());
        }
        Err(Error::Unavailable {
            endpoint: format!("redis at {}", self.inner.endpoint),
            reason: format!(
                "only {acked} of the {want} replicas required acknowledged the {what} within \
                 {limit:?}; it could be lost in a failover, so it was not kept"
            ),
            source: None,
        })
    }

    pub(crate) async fn held_kind(&self, lease: &Lease, kind: Kind) -> Result<bool, Error> {
        let target = Target::new(&self.inner.prefix, lease.name(), kind, lease.token());
        let n: i64 = self.invoke(target.held()).await?;
        Ok(n == 1)
    }
}

/// Releases a grant whose caller went away before seeing it.
struct PendingGrant {
    release: Option<(Conn, redis::ScriptInvocation<'static>)>,
}

impl PendingGrant {
    fn disarm(mut self) {
        self.release = None;
    }

    /// Releases the grant now, waiting for it at most `limit`. The release runs as a task
    /// of its own: a caller cancelled meanwhile (its attempt cut by the op timeout, say)
    /// cannot take it down halfway, which left a refused grant in Redis for its whole TTL (an
    /// outside review saw it with a replica timeout close to the op timeout).
    async fn release_now(mut self, limit: Duration) {
        if let Some(task) = self.spawn_release()
            && !matches!(tokio::time::timeout(limit, task).await, Ok(Ok(())))
        {
            tracing::debug!("releasing an unreplicated grant is still under way");
        }
    }

    /// Sends the release from a task of its own (none outside a runtime: the grant then
    /// expires with its TTL).
    fn spawn_release(&mut self) -> Option<tokio::task::JoinHandle<()>> {
        let (mut conn, release) = self.release.take()?;
        let handle = tokio::runtime::Handle::try_current().ok()?;
        Some(handle.spawn(async move {
            let r: redis::RedisResult<i64> = release.invoke_async(&mut conn).await;
            match r {
                Ok(1) => tracing::debug!("released a grant its caller did not take"),
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "releasing a grant its caller did not take failed; it expires with its ttl"),
            }
        }))
    }
}

impl Drop for PendingGrant {
    fn drop(&mut self) {
        let _ = self.spawn_release();
    }
}

/// A waiter's entry in a queue (a fair lock's, or a read-write lock's waiting writers):
/// removed when the waiter gives up, fails or is cancelled, unless it was granted.
struct QueueEntry {
    leave: Option<(RedisLock, redis::ScriptInvocation<'static>)>,
}

impl QueueEntry {
    fn disarm(&mut self) {
        self.leave = None;
    }
}

impl Drop for QueueEntry {
    fn drop(&mut self) {
        let Some((lock, call)) = self.leave.take() else {
            return;
        };
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                // At worst the entry expires with its ttl.
                let _: Result<i64, Error> = lock.invoke(call).await;
            });
        }
    }
}

impl fmt::Debug for RedisLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLock")
            .field("endpoint", &self.inner.endpoint)
            .field("prefix", &self.inner.prefix)
            .field("ttl", &self.inner.ttl)
            .field("watchdog", &self.inner.watchdog)
            .finish()
    }
}

#[async_trait]
impl DistributedLock for RedisLock {
    async fn acquire_with(&self, name: &str, options: AcquireOptions) -> Result<LockGuard, Error> {
        self.acquire_kind(name, options, Kind::Plain, 0).await
    }

    async fn release(&self, lease: &Lease) -> Result<bool, Error> {
        self.release_kind(lease, Kind::Plain).await
    }

    async fn extend(&self, lease: &mut Lease, ttl: Duration) -> Result<bool, Error> {
        self.extend_kind(lease, ttl, Kind::Plain).await
    }

    async fn is_held(&self, lease: &Lease) -> Result<bool, Error> {
        self.held_kind(lease, Kind::Plain).await
    }
}
