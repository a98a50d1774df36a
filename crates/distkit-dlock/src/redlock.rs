//! `Redlock`: a lock held by a majority of independent Redis servers.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use distkit_core::{
    AcquireOptions, DistributedLock, Error, FencingToken, Lease, LockGuard, LockToken,
};
use futures_util::future::join_all;

use crate::name::validate;
use crate::redis_lock::{Attempt, DEFAULT_PREFIX, DEFAULT_TTL, RedisLock, RedisLockBuilder};
use crate::util::{Deadline, guard, random_token, uniform, validate_ttl};

/// Configures a [`Redlock`].
#[derive(Clone, Debug)]
#[must_use]
pub struct RedlockBuilder {
    nodes: Vec<RedisLockBuilder>,
    ttl: Duration,
    node_timeout: Duration,
    drift_factor: f64,
    retry_delay: (Duration, Duration),
    watchdog: bool,
    prefix: String,
}

impl RedlockBuilder {
    /// Lease length (default 30 s).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How long to wait for each server per attempt (default 50 ms); must be well under the
    /// TTL so that a slow server cannot eat the lease.
    pub fn node_timeout(mut self, timeout: Duration) -> Self {
        self.node_timeout = timeout;
        self
    }

    /// Clock drift allowance as a fraction of the TTL (default 0.01); 2 ms are added on top.
    pub fn drift_factor(mut self, factor: f64) -> Self {
        self.drift_factor = factor;
        self
    }

    /// Random delay between failed attempts, uniformly in `[min, max]` (default 50-250 ms).
    pub fn retry_delay(mut self, min: Duration, max: Duration) -> Self {
        self.retry_delay = (min, max);
        self
    }

    /// Renew leases in the background by default.
    pub fn watchdog(mut self, on: bool) -> Self {
        self.watchdog = on;
        self
    }

    /// Key prefix on every server (default `distkit:lock:`).
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Validates the settings.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] without servers, for a bad URL or TTL, a node timeout not
    /// shorter than the TTL, a drift factor outside `[0, 0.5)`, or `min > max` retry delays.
    pub fn build(self) -> Result<Redlock, Error> {
        if self.nodes.is_empty() {
            return Err(Error::invalid_input(
                "redlock servers",
                "at least one url is needed (use 3 or 5 independent servers)",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for node in &self.nodes {
            for server in node.topology().servers() {
                if !seen.insert(server.clone()) {
                    return Err(Error::invalid_input(
                        "redlock servers",
                        format!(
                            "{server:?} is listed twice; each vote must come from an \
                             independent server"
                        ),
                    ));
                }
            }
        }
        validate_ttl(self.ttl)?;
        if self.node_timeout.is_zero() || self.node_timeout >= self.ttl {
            return Err(Error::invalid_input(
                "node timeout",
                format!(
                    "it must be greater than zero and shorter than the ttl ({:?})",
                    self.ttl
                ),
            ));
        }
        if !(0.0..0.5).contains(&self.drift_factor) {
            return Err(Error::invalid_input(
                "drift factor",
                "it must be in [0, 0.5)",
            ));
        }
        if self.retry_delay.0 > self.retry_delay.1 {
            return Err(Error::invalid_input(
                "retry delay",
                "min must not exceed max",
            ));
        }
        let nodes = self
            .nodes
            .into_iter()
            .map(|node| {
                node.ttl(self.ttl)
                    .key_prefix(self.prefix.clone())
                    .op_timeout(self.node_timeout)
                    .pool_size(4)
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Redlock {
            inner: Arc::new(Inner {
                quorum: nodes.len() / 2 + 1,
                nodes,
                ttl: self.ttl,
                node_timeout: self.node_timeout,
                drift_factor: self.drift_factor,
                retry_delay: self.retry_delay,
                watchdog: self.watchdog,
            }),
        })
    }
}

/// The Redlock algorithm over N independent Redis servers (no replication between them).
///
/// An attempt sends the same key and token to every server in parallel, each with a short
/// timeout. The lock is held when a majority (N/2 + 1) granted it and the validity
/// `ttl - elapsed - (drift_factor x ttl + 2 ms)` is still positive; otherwise every server is
/// told to release, and the next attempt follows a random delay. Extending needs a majority
/// too. It keeps working while a minority of servers is down.
///
/// # Fencing tokens: a weaker guarantee
///
/// Each server keeps its own counter (`max(previous + 1, server time in microseconds)`); a
/// grant's token is the largest among the granting majority. The release raises every
/// server's counter to that token before it frees the lock, so, as any two majorities share a
/// server, the next grant's token is larger. When a holder never releases (it crashed and its
/// lease ran out), no raise happens, and the next token is larger only because the servers'
/// clocks moved on: it can come out smaller if their clocks disagree by more than the time
/// between the two grants.
/// When a protected resource must never accept a stale writer, prefer a single
/// [`RedisLock`](crate::RedisLock) (with Redis persistence on) or a consensus system.
#[derive(Clone)]
pub struct Redlock {
    inner: Arc<Inner>,
}

struct Inner {
    nodes: Vec<RedisLock>,
    quorum: usize,
    ttl: Duration,
    node_timeout: Duration,
    drift_factor: f64,
    retry_delay: (Duration, Duration),
    watchdog: bool,
}

impl Redlock {
    /// Configures Redlock over the servers at `urls`.
    pub fn builder<I, S>(urls: I) -> RedlockBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::over(urls.into_iter().map(|u| RedisLock::builder(u)))
    }

    /// Configures Redlock over `nodes`, each a deployment of its own: one server
    /// ([`RedisLock::builder`]), or a Redis Sentinel deployment
    /// ([`RedisLock::sentinel`]) whose vote survives a failover of its primary, or a
    /// Cluster. Each node keeps its own settings (such as
    /// [`min_replicas`](RedisLockBuilder::min_replicas)) except the TTL, key prefix, op
    /// timeout (the node timeout) and pool size (4), which are Redlock's.
    ///
    /// Two nodes that share a server URL, a sentinel (of the same master) or a cluster seed
    /// are refused, their votes would not be independent, in whatever spelling of the same
    /// address (`127.1`, `[::ffff:127.0.0.1]`, another database or user on one server).
    /// Overlaps only the network reveals are not detected, since `build` asks no server:
    /// a Sentinel node and a plain URL of its primary, one cluster through two disjoint seed
    /// lists, two host names of one address. Keep the nodes truly apart.
    pub fn over(nodes: impl IntoIterator<Item = RedisLockBuilder>) -> RedlockBuilder {
        RedlockBuilder {
            nodes: nodes.into_iter().collect(),
            ttl: DEFAULT_TTL,
            node_timeout: Duration::from_millis(50),
            drift_factor: 0.01,
            retry_delay: (Duration::from_millis(50), Duration::from_millis(250)),
            watchdog: false,
            prefix: DEFAULT_PREFIX.to_owned(),
        }
    }

    /// How many servers must agree.
    #[must_use]
    pub fn quorum(&self) -> usize {
        self.inner.quorum
    }

    fn drift(&self, ttl: Duration) -> Duration {
        ttl.mul_f64(self.inner.drift_factor) + Duration::from_millis(2)
    }

    /// One round over all servers: grants and how many servers answered at all.
    async fn round(
        &self,
        name: &str,
        token: LockToken,
        ttl: Duration,
    ) -> (Vec<(usize, FencingToken)>, usize) {
        let attempts =
            self.inner.nodes.iter().map(|n| {
                tokio::time::timeout(self.inner.node_timeout, n.attempt(name, token, ttl))
            });
        let mut granted = Vec::new();
        let mut answered = 0;
        for (i, r) in join_all(attempts).await.into_iter().enumerate() {
            match r {
                Ok(Ok(Attempt::Granted(f))) => {
                    answered += 1;
                    granted.push((i, f));
                }
                Ok(Ok(Attempt::Held { .. })) => answered += 1,
                Ok(Err(_)) | Err(_) => {}
            }
        }
        (granted, answered)
    }

    /// Releases on every server, raising each one's fencing counter to `fence` first.
    async fn release_everywhere(&self, name: &str, token: LockToken, fence: FencingToken) -> usize {
        let releases = self.inner.nodes.iter().map(|n| {
            tokio::time::timeout(
                self.inner.node_timeout,
                n.release_raising(name, token, fence),
            )
        });
        join_all(releases)
            .await
            .into_iter()
            .filter(|r| matches!(r, Ok(Ok(true))))
            .count()
    }
}

impl fmt::Debug for Redlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redlock")
            .field(
                "nodes",
                &self
                    .inner
                    .nodes
                    .iter()
                    .map(RedisLock::endpoint)
                    .collect::<Vec<_>>(),
            )
            .field("quorum", &self.inner.quorum)
            .field("ttl", &self.inner.ttl)
            .finish()
    }
}

#[async_trait]
impl DistributedLock for Redlock {
    async fn acquire_with(&self, name: &str, options: AcquireOptions) -> Result<LockGuard, Error> {
        validate(name)?;
        let ttl = options.ttl_value().unwrap_or(self.inner.ttl);
        validate_ttl(ttl)?;
        let started = Instant::now();
        let wait = options.wait_limit().unwrap_or(Duration::ZERO);
        let deadline = Deadline::after(started, wait);
        let n = self.inner.nodes.len();
        loop {
            let token = random_token();
            let sent = Instant::now();
            let (granted, answered) = self.round(name, token, ttl).await;
            let validity = ttl
                .checked_sub(sent.elapsed())
                .and_then(|v| v.checked_sub(self.drift(ttl)));
            if granted.len() >= self.inner.quorum
                && let Some(validity) = validity.filter(|v| !v.is_zero())
            {
                let fence = granted.iter().map(|(_, f)| *f).max().unwrap_or_default();
                let lease = Lease::new(name, token, fence, ttl, sent + validity);
                let watchdog = options.watchdog_value().unwrap_or(self.inner.watchdog);
                return Ok(guard(lease, Arc::new(self.clone()), watchdog, ttl / 3));
            }
            // Not held by a majority in time: give back whatever was granted.
            self.release_everywhere(name, token, FencingToken::default())
                .await;
            let now = Instant::now();
            if wait.is_zero() || deadline.passed(now) {
                if answered < self.inner.quorum {
                    return Err(Error::Unavailable {
                        endpoint: "redlock".into(),
                        reason: format!(
                            "only {answered} of {n} redis servers answered within {:?}; a majority of {} is needed",
                            self.inner.node_timeout, self.inner.quorum
                        ),
                        source: None,
                    });
                }
                return Err(Error::Busy {
                    what: format!("lock {name:?}"),
                    waited: now - started,
                });
            }
            let (lo, hi) = self.inner.retry_delay;
            tokio::time::sleep(deadline.cap(now, uniform(lo, hi))).await;
        }
    }

    async fn release(&self, lease: &Lease) -> Result<bool, Error> {
        let released = self
            .release_everywhere(lease.name(), lease.token(), lease.fencing_token())
            .await;
        Ok(released >= self.inner.quorum)
    }

    async fn extend(&self, lease: &mut Lease, ttl: Duration) -> Result<bool, Error> {
        validate_ttl(ttl)?;
        let sent = Instant::now();
        let mut probe = lease.clone();
        let extends = self.inner.nodes.iter().map(|n| {
            let mut l = probe.clone();
            async move { tokio::time::timeout(self.inner.node_timeout, n.extend(&mut l, ttl)).await }
        });
        let ok = join_all(extends)
            .await
            .into_iter()
            .filter(|r| matches!(r, Ok(Ok(true))))
            .count();
        let validity = ttl
            .checked_sub(sent.elapsed())
            .and_then(|v| v.checked_sub(self.drift(ttl)));
        match validity {
            Some(v) if ok >= self.inner.quorum && !v.is_zero() => {
                probe.renewed(ttl, sent + v);
                *lease = probe;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn is_held(&self, lease: &Lease) -> Result<bool, Error> {
        let checks = self
            .inner
            .nodes
            .iter()
            .map(|n| tokio::time::timeout(self.inner.node_timeout, n.is_held(lease)));
        let held = join_all(checks)
            .await
            .into_iter()
            .filter(|r| matches!(r, Ok(Ok(true))))
            .count();
        Ok(held >= self.inner.quorum && Instant::now() < lease.valid_until())
    }
}
