//! `DistributedCache`: the local tier, key ownership, coalesced loads, hot copies and
//! invalidation.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use distkit_core::{Cache, ClusterToken, Error, Loader, NodeId};
use distkit_hashring::{HashRing, Node};
use tokio::sync::watch;

use crate::local::{self, Capacity, Entry};
use crate::metrics::Metrics;
use crate::peer::{PeerClient, RemoteLoad};

/// Default key limit in bytes.
pub const DEFAULT_MAX_KEY: usize = 1024;
/// Default value limit in bytes.
pub const DEFAULT_MAX_VALUE: usize = 1024 * 1024;
/// The longest TTL, idle time or hot-copy life accepted: 100 years (moka refuses more than
/// 1,000; nothing cached needs more than a few days).
pub const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `d` from now, or `None` when the clock cannot represent it (a limit that long never ends).
fn from_now(d: Duration) -> Option<Instant> {
    Instant::now().checked_add(d)
}

/// Configures a [`DistributedCache`].
#[derive(Clone, Debug)]
#[must_use]
pub struct DistributedCacheBuilder {
    id: NodeId,
    peers: Vec<(NodeId, String)>,
    capacity: Capacity,
    ttl: Option<Duration>,
    tti: Option<Duration>,
    max_key: usize,
    max_value: usize,
    hot_copies: bool,
    hot_ttl: Duration,
    token: Option<String>,
    request_timeout: Duration,
    load_timeout: Duration,
    suspect_for: Duration,
    staleness_check: Duration,
}

impl DistributedCacheBuilder {
    /// Bound the local tier by entry count (default 10,000 entries).
    pub fn max_entries(mut self, n: u64) -> Self {
        self.capacity = Capacity::Entries(n);
        self
    }

    /// Bound the local tier by the bytes of keys and values instead.
    pub fn max_bytes(mut self, n: u64) -> Self {
        self.capacity = Capacity::Bytes(n);
        self
    }

    /// Default time to live for entries stored without one.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Drop entries not read for this long.
    pub fn tti(mut self, tti: Duration) -> Self {
        self.tti = Some(tti);
        self
    }

    /// Longest key in bytes (default 1 KiB).
    pub fn max_key_len(mut self, n: usize) -> Self {
        self.max_key = n;
        self
    }

    /// Largest value in bytes (default 1 MiB).
    pub fn max_value_len(mut self, n: usize) -> Self {
        self.max_value = n;
        self
    }

    /// A peer: its id and base URL (`http://host:port`, where its router is mounted).
    pub fn peer(mut self, id: NodeId, url: impl Into<String>) -> Self {
        self.peers.push((id, url.into()));
        self
    }

    /// The shared cluster token peers authenticate with (required with peers).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Keep hot copies of remote keys (default on; at most 1/8 of the capacity, admitted
    /// by moka's TinyLFU so only keys read often stay).
    pub fn hot_copies(mut self, on: bool) -> Self {
        self.hot_copies = on;
        self
    }

    /// Longest life of a hot copy (default 10 s; never longer than the owner's remaining TTL).
    pub fn hot_ttl(mut self, ttl: Duration) -> Self {
        self.hot_ttl = ttl;
        self
    }

    /// Limit for one peer request (default 500 ms); a timeout marks the peer suspect.
    pub fn request_timeout(mut self, t: Duration) -> Self {
        self.request_timeout = t;
        self
    }

    /// How long a caller waits for another node's load of the same key (default 10 s).
    pub fn load_timeout(mut self, t: Duration) -> Self {
        self.load_timeout = t;
        self
    }

    /// How long a failed peer is skipped (default 2 s); then it is tried again.
    pub fn suspect_for(mut self, t: Duration) -> Self {
        self.suspect_for = t;
        self
    }

    /// How often maintenance runs (default 1 s): entries whose own TTL ran out are swept, and
    /// peers' write sequence numbers are compared, bounding how long a hot copy can outlive a
    /// lost invalidation.
    pub fn staleness_check(mut self, t: Duration) -> Self {
        self.staleness_check = t;
        self
    }

    /// Validates and builds. Nothing is spawned: start the background work (sweeps and the
    /// staleness check) with [`DistributedCache::start_maintenance`].
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a zero capacity or limit, zero timeouts, a TTL, idle time
    /// or hot-copy life over [`MAX_TTL`], peers without a token, a peer equal to this node or
    /// listed twice, or a URL that is not `http://...`.
    pub fn build(self) -> Result<DistributedCache, Error> {
        let bad = |what: &'static str, reason: &str| Err(Error::invalid_input(what, reason));
        match self.capacity {
            Capacity::Entries(0) | Capacity::Bytes(0) => {
                return bad("capacity", "it must be at least 1");
            }
            _ => {}
        }
        if self.max_key == 0 || self.max_value == 0 {
            return bad("size limit", "key and value limits must be at least 1 byte");
        }
        for d in [
            self.request_timeout,
            self.load_timeout,
            self.suspect_for,
            self.staleness_check,
            self.hot_ttl,
        ] {
            if d.is_zero() {
                return bad(
                    "timeout",
                    "timeouts and intervals must be greater than zero",
                );
            }
        }
        for (what, d) in [
            ("ttl", self.ttl),
            ("tti", self.tti),
            ("hot ttl", Some(self.hot_ttl)),
        ] {
            if let Some(d) = d {
                check_ttl(what, d)?;
            }
        }
        if !self.peers.is_empty() && self.token.as_deref().is_none_or(str::is_empty) {
            return bad("cluster token", "peers need a shared token");
        }
        let mut ring = HashRing::new();
        ring.add_node(Node::new(self.id.clone(), "self"))
            .map_err(|e| Error::invalid_input("node", e.to_string()))?;
        let client = PeerClient::new(self.token.clone().unwrap_or_default(), self.request_timeout)?;
        let mut peers = HashMap::new();
        for (id, url) in self.peers {
            let url = crate::peer::check_url(&id, &url)?;
            ring.add_node(Node::new(id.clone(), url.clone()))
                .map_err(|e| Error::invalid_input("peer", e.to_string()))?;
            peers.insert(id, url);
        }
        let hot_capacity = match self.capacity {
            Capacity::Entries(n) => Capacity::Entries((n / 8).max(1)),
            Capacity::Bytes(n) => Capacity::Bytes((n / 8).max(1)),
        };
        let inner = Arc::new(Inner {
            id: self.id,
            local: local::build(self.capacity, self.ttl, self.tti),
            hot: self
                .hot_copies
                .then(|| local::build(hot_capacity, Some(self.hot_ttl), None)),
            default_ttl: self.ttl,
            hot_ttl: self.hot_ttl,
            ring: RwLock::new(ring),
            alone: std::sync::atomic::AtomicBool::new(peers.is_empty()),
            peers: RwLock::new(peers),
            client,
            token: match self.token.as_deref() {
                Some(t) => Some(ClusterToken::new(t)?),
                None => None,
            },
            max_key: self.max_key,
            max_value: self.max_value,
            load_timeout: self.load_timeout,
            suspect_for: self.suspect_for,
            flights: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            own_ttls: std::sync::atomic::AtomicBool::new(false),
            seq: AtomicU64::new(0),
            seen: Mutex::new(HashMap::new()),
            suspects: Mutex::new(HashMap::new()),
            metrics: Metrics::new(),
        });
        Ok(DistributedCache {
            inner,
            staleness_check: self.staleness_check,
        })
    }
}

/// Refuses a zero TTL (it would store nothing a reader could see) and one over [`MAX_TTL`].
fn check_ttl(what: &'static str, ttl: Duration) -> Result<(), Error> {
    if ttl.is_zero() || ttl > MAX_TTL {
        return Err(Error::invalid_input(
            what,
            format!("it must be greater than zero and at most {MAX_TTL:?}, got {ttl:?}"),
        ));
    }
    Ok(())
}

/// The cache's background work (sweeps of entries whose own TTL ran out, and the staleness
/// check against peers' write sequence numbers), owned by whoever holds this handle.
///
/// [`shutdown`](Self::shutdown) stops it and returns once it has ended; dropping the handle
/// aborts it at its next await point (no runtime needed for that).
#[derive(Debug)]
#[must_use = "dropping the handle stops the maintenance task"]
pub struct Maintenance {
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Maintenance {
    /// Stops the task and waits until it has ended.
    pub async fn shutdown(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Whether the task has ended.
    #[must_use]
    pub fn is_finished(&self) -> bool {
        self.task
            .as_ref()
            .is_none_or(tokio::task::JoinHandle::is_finished)
    }
}

impl Drop for Maintenance {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A cache whose keys are each owned by one node of a cluster, chosen by a consistent hash
/// ring; see the crate docs. Cheap to clone.
#[derive(Clone)]
pub struct DistributedCache {
    pub(crate) inner: Arc<Inner>,
    staleness_check: Duration,
}

pub(crate) struct Inner {
    pub(crate) id: NodeId,
    pub(crate) local: moka::future::Cache<String, Entry>,
    hot: Option<moka::future::Cache<String, Entry>>,
    default_ttl: Option<Duration>,
    hot_ttl: Duration,
    ring: RwLock<HashRing>,
    /// No peers: every key is ours, without a ring lookup.
    alone: std::sync::atomic::AtomicBool,
    peers: RwLock<HashMap<NodeId, String>>,
    pub(crate) client: PeerClient,
    /// `None` without peers: then the peer routes refuse every request.
    pub(crate) token: Option<ClusterToken>,
    pub(crate) max_key: usize,
    pub(crate) max_value: usize,
    load_timeout: Duration,
    suspect_for: Duration,
    /// Owner side: loads in progress, one per key.
    flights: Mutex<HashMap<String, Flight>>,
    /// Non-owner side: this node's one request per key to its owner.
    pending: Mutex<HashMap<String, watch::Receiver<Pending>>>,
    /// Set once an entry with a TTL of its own was stored: only then does maintenance sweep.
    own_ttls: std::sync::atomic::AtomicBool,
    /// Writes to keys this node owns, for peers to notice missed invalidations.
    pub(crate) seq: AtomicU64,
    /// Per peer: the newest invalidation sequence number applied here.
    seen: Mutex<HashMap<NodeId, u64>>,
    suspects: Mutex<HashMap<NodeId, Instant>>,
    pub(crate) metrics: Metrics,
}

/// The outcome of a non-owner's coalesced load, as its followers see it: the leader's own
/// error, kind and cause kept.
type Pending = Option<Result<Bytes, Error>>;

pub(crate) struct Flight {
    lease: u64,
    expires: Instant,
    done: watch::Sender<Option<Outcome>>,
}

#[derive(Clone, Debug)]
pub(crate) enum Outcome {
    Value(Entry),
    Failed,
}

/// What the owner tells a caller of `get_or_load`.
pub(crate) enum Claim {
    Hit(Entry),
    Lease(u64),
    Wait(watch::Receiver<Option<Outcome>>, Instant),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl DistributedCache {
    /// A single-node cache of at most `max_size` entries with an optional default TTL (the
    /// design document's constructor). Add peers with [`add_node`](Self::add_node) after
    /// setting a token through [`builder`](Self::builder), or use it as a local cache.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a zero size.
    pub fn new(max_size: u64, ttl: Option<Duration>) -> Result<Self, Error> {
        let mut b = Self::builder(NodeId::new("local")?).max_entries(max_size);
        if let Some(t) = ttl {
            b = b.ttl(t);
        }
        b.build()
    }

    /// Configures a cache node with id `id`.
    pub fn builder(id: NodeId) -> DistributedCacheBuilder {
        DistributedCacheBuilder {
            id,
            peers: Vec::new(),
            capacity: Capacity::Entries(10_000),
            ttl: None,
            tti: None,
            max_key: DEFAULT_MAX_KEY,
            max_value: DEFAULT_MAX_VALUE,
            hot_copies: true,
            hot_ttl: Duration::from_secs(10),
            token: None,
            request_timeout: Duration::from_millis(500),
            load_timeout: Duration::from_secs(10),
            suspect_for: Duration::from_secs(2),
            staleness_check: Duration::from_secs(1),
        }
    }

    /// This node's id.
    #[must_use]
    pub fn id(&self) -> &NodeId {
        &self.inner.id
    }

    /// Adds a peer at run time; keys it now owns reach it lazily (on their next miss).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a bad URL, a duplicate id, or a cache built without a
    /// token.
    pub fn add_node(&self, id: NodeId, url: &str) -> Result<(), Error> {
        if self.inner.token.is_none() {
            return Err(Error::invalid_input(
                "cluster token",
                "build the cache with a token before adding peers",
            ));
        }
        let url = crate::peer::check_url(&id, url)?;
        self.inner
            .ring
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .add_node(Node::new(id.clone(), url.clone()))
            .map_err(|e| Error::invalid_input("peer", e.to_string()))?;
        self.inner
            .peers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, url);
        Ok(())
    }

    /// Removes a peer; its keys fall to the others lazily.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] when it is not a peer.
    pub fn remove_node(&self, id: &str) -> Result<(), Error> {
        if id == self.inner.id.as_str() {
            return Err(Error::invalid_input("peer", "a node cannot remove itself"));
        }
        self.inner
            .ring
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove_node(id)
            .map_err(|e| Error::invalid_input("peer", e.to_string()))?;
        self.inner
            .peers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
        Ok(())
    }

    /// The node that owns `key` in this node's view of the ring.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a key over the limit.
    pub fn owner_of(&self, key: &str) -> Result<NodeId, Error> {
        self.inner.check_key(key)?;
        Ok(self.inner.owner(key))
    }

    /// Whether this node holds `key` in its local tier (as owner); hot copies excluded. An
    /// entry whose own TTL ran out counts until it is read or swept.
    #[must_use]
    pub fn holds_locally(&self, key: &str) -> bool {
        self.inner.local.contains_key(key)
    }

    /// Whether this node holds a hot copy of `key`.
    #[must_use]
    pub fn holds_hot_copy(&self, key: &str) -> bool {
        self.inner.hot.as_ref().is_some_and(|h| h.contains_key(key))
    }

    /// Each member's share of the key space in this node's view of the ring.
    #[must_use]
    pub fn ring_shares(&self) -> Vec<(NodeId, f64)> {
        let ring = self
            .inner
            .ring
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let mut v: Vec<(NodeId, f64)> = ring
            .shares()
            .into_iter()
            .map(|(n, s)| (n.id().clone(), s))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Entries in the local tier (approximate, as moka counts).
    #[must_use]
    pub fn local_len(&self) -> u64 {
        self.inner.local.entry_count()
    }

    /// Runs pending moka maintenance (evictions, expirations) now; useful in tests.
    pub async fn sync(&self) {
        self.inner.local.run_pending_tasks().await;
        if let Some(h) = &self.inner.hot {
            h.run_pending_tasks().await;
        }
    }

    /// The peer-facing HTTP routes of this node; merge them into your axum server.
    pub fn router(&self) -> axum::Router {
        crate::peer::router(self.inner.clone())
    }

    /// Starts the background work on the current tokio runtime: every `staleness_check`
    /// interval, entries whose own TTL ran out are swept, and (with peers) each peer's write
    /// sequence number is compared with the invalidations applied here, so a hot copy cannot
    /// outlive a lost invalidation by more than two intervals. Without it, expired entries
    /// are still never served (they are checked on read), but their memory is freed only
    /// when they are read or evicted, and lost invalidations are noticed only through gaps.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] when called outside a tokio runtime.
    pub fn start_maintenance(&self) -> Result<Maintenance, Error> {
        let handle = tokio::runtime::Handle::try_current().map_err(|e| Error::Unavailable {
            endpoint: self.inner.id.to_string(),
            reason: "cache maintenance needs a tokio runtime (start it inside one)".into(),
            source: Some(Arc::new(e)),
        })?;
        let task = handle.spawn(maintenance(
            Arc::downgrade(&self.inner),
            self.staleness_check,
        ));
        Ok(Maintenance { task: Some(task) })
    }
}

impl Inner {
    pub(crate) fn check_key(&self, key: &str) -> Result<(), Error> {
        if key.is_empty() {
            return Err(Error::invalid_input("cache key", "it is empty"));
        }
        if key.len() > self.max_key {
            return Err(Error::too_large("cache key", key.len(), self.max_key));
        }
        Ok(())
    }

    pub(crate) fn check_value(&self, value: &[u8]) -> Result<(), Error> {
        if value.len() > self.max_value {
            return Err(Error::too_large("cache value", value.len(), self.max_value));
        }
        Ok(())
    }

    /// The owner of `key` when it is another node; `None` when it is this one (checked
    /// without cloning or comparing ids on the hot path).
    fn remote_owner(&self, key: &str) -> Option<NodeId> {
        if self.alone.load(Ordering::Acquire) {
            return None;
        }
        let ring = self.ring.read().unwrap_or_else(PoisonError::into_inner);
        let node = ring.locate(key.as_bytes()).ok()?;
        (node.id() != &self.id).then(|| node.id().clone())
    }

    fn owner(&self, key: &str) -> NodeId {
        self.remote_owner(key).unwrap_or_else(|| self.id.clone())
    }

    fn peer_url(&self, id: &NodeId) -> Option<String> {
        self.peers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    pub(crate) fn is_peer(&self, id: &NodeId) -> bool {
        self.peers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(id)
    }

    fn suspect(&self, id: &NodeId) -> bool {
        lock(&self.suspects)
            .get(id)
            .is_some_and(|until| Instant::now() < *until)
    }

    fn mark_suspect(&self, id: &NodeId, why: &Error) {
        self.metrics.peer_errors.increment(1);
        tracing::warn!(peer = %id, error = %why, "cache peer failed; serving locally for a while");
        // A suspicion too long for the clock lasts as long as the process.
        let until = from_now(self.suspect_for).unwrap_or_else(|| Instant::now() + MAX_TTL);
        lock(&self.suspects).insert(id.clone(), until);
    }

    /// The entry to store: an explicit TTL is the entry's own (checked on read, swept);
    /// otherwise the tier's default TTL applies and only travels on the wire.
    fn entry(&self, value: Bytes, ttl: Option<Duration>) -> Entry {
        match ttl {
            Some(t) if self.default_ttl != Some(t) => {
                self.own_ttls.store(true, Ordering::Relaxed);
                Entry::with_own_ttl(value, t)
            }
            _ => Entry::new(value, self.default_ttl),
        }
    }

    /// Owner: the local value, without going anywhere.
    pub(crate) async fn get_owned(&self, key: &str) -> Option<Entry> {
        let e = local::live(&self.local, key).await;
        if e.is_some() {
            self.metrics.hit_local.increment(1);
        } else {
            self.metrics.miss_local.increment(1);
        }
        e
    }

    /// Owner: stores and tells peers to drop their hot copies.
    pub(crate) async fn set_owned(&self, key: &str, value: Bytes, ttl: Option<Duration>) {
        let entry = self.entry(value, ttl);
        self.local.insert(key.to_owned(), entry).await;
        self.announce(key).await;
    }

    /// Owner: deletes and tells peers.
    pub(crate) async fn delete_owned(&self, key: &str) -> bool {
        let removed = self.local.remove(key).await.is_some();
        self.announce(key).await;
        removed
    }

    /// Bumps this node's write sequence number and tells every peer to drop its hot copy,
    /// waiting (at most one request timeout) so that reads after the write returns do not
    /// see the old value anywhere. A peer that misses the message notices the gap in
    /// sequence numbers.
    async fn announce(&self, key: &str) {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        let peers: Vec<(NodeId, String)> = self
            .peers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(id, url)| (id.clone(), url.clone()))
            .collect();
        if peers.is_empty() {
            return;
        }
        let keys = [key.to_owned()];
        let sends = peers
            .iter()
            .map(|(_, url)| self.client.invalidate(url, &self.id, seq, &keys));
        for r in futures_util::future::join_all(sends).await {
            if let Err(e) = r {
                tracing::debug!(error = %e, "invalidation not delivered; the staleness check will catch it");
            }
        }
    }

    /// A peer's invalidation: drop the keys' hot copies; a gap in its sequence numbers means
    /// messages were lost, so every hot copy goes.
    pub(crate) async fn invalidated(&self, from: &NodeId, seq: u64, keys: &[String]) {
        let Some(hot) = &self.hot else {
            return;
        };
        let gap = {
            let mut seen = lock(&self.seen);
            let last = seen.entry(from.clone()).or_insert(0);
            let gap = seq > last.saturating_add(1);
            *last = (*last).max(seq);
            gap
        };
        if gap {
            hot.invalidate_all();
        } else {
            for k in keys {
                hot.invalidate(k).await;
            }
        }
    }

    /// Owner: join or start the load of `key`.
    pub(crate) async fn claim(&self, key: &str) -> Claim {
        if let Some(e) = local::live(&self.local, key).await {
            self.metrics.hit_local.increment(1);
            return Claim::Hit(e);
        }
        let now = Instant::now();
        let mut flights = lock(&self.flights);
        if let Some(f) = flights.get(key)
            && f.expires > now
        {
            self.metrics.coalesced.increment(1);
            return Claim::Wait(f.done.subscribe(), f.expires);
        }
        let lease = rand::random::<u64>() | 1;
        let (tx, _) = watch::channel(None);
        flights.insert(
            key.to_owned(),
            Flight {
                lease,
                expires: now.checked_add(self.load_timeout).unwrap_or(now + MAX_TTL),
                done: tx,
            },
        );
        Claim::Lease(lease)
    }

    /// Owner: the holder of `lease` finished (with a value or without).
    pub(crate) async fn complete(
        &self,
        key: &str,
        lease: u64,
        value: Option<(Bytes, Option<Duration>)>,
    ) {
        let flight = {
            let mut flights = lock(&self.flights);
            match flights.get(key) {
                Some(f) if f.lease == lease => flights.remove(key),
                _ => None,
            }
        };
        let stored = value.is_some();
        let outcome = match value {
            Some((v, ttl)) => {
                let entry = self.entry(v, ttl);
                self.local.insert(key.to_owned(), entry.clone()).await;
                Outcome::Value(entry)
            }
            None => Outcome::Failed,
        };
        if let Some(f) = flight {
            f.done.send_replace(Some(outcome));
        }
        if stored {
            // An older value may live on as a hot copy elsewhere (evicted here, reloaded).
            self.announce(key).await;
        }
    }

    /// Owner side of `get_or_load`: loads at most once at a time per key, whoever asks.
    async fn load_as_owner(&self, key: &str, loader: Loader) -> Result<Bytes, Error> {
        let deadline = from_now(self.load_timeout);
        let mut loader = Some(loader);
        loop {
            match self.claim(key).await {
                Claim::Hit(e) => return Ok(e.value),
                Claim::Lease(lease) => {
                    let Some(l) = loader.take() else {
                        self.complete(key, lease, None).await;
                        return Err(Error::Timeout {
                            operation: "cache load",
                            after: self.load_timeout,
                        });
                    };
                    self.metrics.loads.increment(1);
                    match l.load().await {
                        Ok(loaded) => {
                            if let Err(e) = self.check_value(&loaded.value) {
                                self.complete(key, lease, None).await;
                                return Err(e);
                            }
                            let v = loaded.value.clone();
                            self.complete(key, lease, Some((loaded.value, loaded.ttl)))
                                .await;
                            return Ok(v);
                        }
                        Err(source) => {
                            self.complete(key, lease, None).await;
                            return Err(Error::load(key, source));
                        }
                    }
                }
                Claim::Wait(mut rx, expires) => {
                    let until = deadline.map_or(expires, |d| expires.min(d));
                    let waited =
                        tokio::time::timeout_at(until.into(), rx.wait_for(Option::is_some)).await;
                    if let Ok(Ok(outcome)) = waited
                        && let Some(Outcome::Value(e)) = outcome.clone()
                    {
                        return Ok(e.value);
                    }
                    // Failed or timed out: claim again (the lease may now be ours).
                }
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Error::Timeout {
                    operation: "cache load",
                    after: self.load_timeout,
                });
            }
        }
    }

    /// Non-owner side of `get_or_load`: one request per key from this node.
    async fn load_via_owner(
        self: &Arc<Self>,
        owner: NodeId,
        key: &str,
        loader: Loader,
    ) -> Result<Bytes, Error> {
        let (tx, leader) = {
            let mut pending = lock(&self.pending);
            match pending.get(key) {
                Some(rx) => (None, Some(rx.clone())),
                None => {
                    let (tx, rx) = watch::channel(None);
                    pending.insert(key.to_owned(), rx);
                    (Some(tx), None)
                }
            }
        };
        if let Some(mut rx) = leader {
            self.metrics.coalesced.increment(1);
            let r = rx
                .wait_for(Option::is_some)
                .await
                .map_err(|_| Error::Unavailable {
                    endpoint: self.id.to_string(),
                    reason: "the coalesced load was dropped".into(),
                    source: None,
                })?
                .clone();
            return match r {
                Some(result) => result,
                None => unreachable!("waited for Some"),
            };
        }
        let tx = tx.unwrap_or_else(|| unreachable!("one of leader or follower"));
        // Remove the pending entry however this ends (including cancellation).
        struct Clear<'a>(&'a Inner, &'a str);
        impl Drop for Clear<'_> {
            fn drop(&mut self) {
                lock(&self.0.pending).remove(self.1);
            }
        }
        let _clear = Clear(self, key);
        let r = self.remote_load(&owner, key, loader).await;
        tx.send_replace(Some(r.clone()));
        r
    }

    async fn remote_load(&self, owner: &NodeId, key: &str, loader: Loader) -> Result<Bytes, Error> {
        let Some(url) = self.peer_url(owner) else {
            return self.run_loader_here(key, loader).await;
        };
        let deadline = from_now(self.load_timeout);
        let mut loader = Some(loader);
        while deadline.is_none_or(|d| Instant::now() < d) {
            let started = Instant::now();
            match self.client.load(&url, key, self.load_timeout).await {
                Ok(RemoteLoad::Value(v, ttl, seq)) => {
                    self.metrics
                        .remote_latency
                        .record(started.elapsed().as_secs_f64());
                    self.metrics.hit_remote.increment(1);
                    self.keep_hot(owner, key, &v, ttl, seq).await;
                    return Ok(v);
                }
                Ok(RemoteLoad::Lease(lease)) => {
                    let Some(l) = loader.take() else { break };
                    self.metrics.loads.increment(1);
                    return match l.load().await {
                        Ok(loaded) => {
                            self.check_value(&loaded.value)?;
                            if let Err(e) = self
                                .client
                                .fill(
                                    &url,
                                    key,
                                    lease,
                                    &loaded.value,
                                    loaded.ttl.or(self.default_ttl),
                                )
                                .await
                            {
                                tracing::debug!(error = %e, "could not hand the loaded value to its owner");
                            }
                            Ok(loaded.value)
                        }
                        Err(source) => {
                            let _ = self.client.abandon(&url, key, lease).await;
                            Err(Error::load(key, source))
                        }
                    };
                }
                Ok(RemoteLoad::Retry) => continue,
                Err(e) => {
                    self.mark_suspect(owner, &e);
                    break;
                }
            }
        }
        match loader {
            Some(l) => self.run_loader_here(key, l).await,
            None => Err(Error::Timeout {
                operation: "cache load",
                after: self.load_timeout,
            }),
        }
    }

    /// The owner is unreachable or unknown: load here and do not cache (the owner is the only
    /// place a value lives, so nothing here can go stale).
    async fn run_loader_here(&self, key: &str, loader: Loader) -> Result<Bytes, Error> {
        self.metrics.loads.increment(1);
        let loaded = loader
            .load()
            .await
            .map_err(|source| Error::load(key, source))?;
        self.check_value(&loaded.value)?;
        Ok(loaded.value)
    }

    /// Keeps a hot copy when the value was read under no newer invalidation than the ones
    /// applied here.
    async fn keep_hot(
        &self,
        owner: &NodeId,
        key: &str,
        v: &Bytes,
        ttl: Option<Duration>,
        seq: u64,
    ) {
        let Some(hot) = &self.hot else { return };
        let applied = lock(&self.seen).get(owner).copied().unwrap_or(0);
        if seq < applied {
            return;
        }
        let life = ttl.map_or(self.hot_ttl, |t| t.min(self.hot_ttl));
        if life.is_zero() {
            return;
        }
        self.own_ttls.store(true, Ordering::Relaxed);
        hot.insert(key.to_owned(), Entry::with_own_ttl(v.clone(), life))
            .await;
    }

    async fn hot_get(&self, key: &str) -> Option<Bytes> {
        let e = local::live(self.hot.as_ref()?, key).await?;
        self.metrics.hit_hot.increment(1);
        Some(e.value)
    }

    /// Before a write through the owner: drop our own hot copy and find the owner's address.
    async fn write_target(&self, owner: &NodeId, key: &str) -> Result<String, Error> {
        if let Some(h) = &self.hot {
            h.invalidate(key).await;
        }
        self.peer_url(owner).ok_or_else(|| Error::Unavailable {
            endpoint: owner.to_string(),
            reason: "no address for the owner".into(),
            source: None,
        })
    }

    fn note_write_failure<T>(&self, owner: &NodeId, r: &Result<T, Error>) {
        if let Err(e) = r
            && e.is_retryable()
        {
            self.mark_suspect(owner, e);
        }
    }

    async fn get(self: &Arc<Self>, key: &str) -> Result<Option<Bytes>, Error> {
        self.check_key(key)?;
        let Some(owner) = self.remote_owner(key) else {
            return Ok(self.get_owned(key).await.map(|e| e.value));
        };
        if let Some(v) = self.hot_get(key).await {
            return Ok(Some(v));
        }
        if self.suspect(&owner) {
            self.metrics.miss_remote.increment(1);
            return Ok(None);
        }
        let Some(url) = self.peer_url(&owner) else {
            return Ok(None);
        };
        let started = Instant::now();
        match self.client.get(&url, key).await {
            Ok(Some((v, ttl, seq))) => {
                self.metrics
                    .remote_latency
                    .record(started.elapsed().as_secs_f64());
                self.metrics.hit_remote.increment(1);
                self.keep_hot(&owner, key, &v, ttl, seq).await;
                Ok(Some(v))
            }
            Ok(None) => {
                self.metrics.miss_remote.increment(1);
                Ok(None)
            }
            Err(e) => {
                self.mark_suspect(&owner, &e);
                Ok(None)
            }
        }
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<(), Error> {
        self.check_key(key)?;
        self.check_value(&value)?;
        if let Some(t) = ttl {
            check_ttl("ttl", t)?;
        }
        let Some(owner) = self.remote_owner(key) else {
            self.set_owned(key, value, ttl).await;
            return Ok(());
        };
        let url = self.write_target(&owner, key).await?;
        let r = self
            .client
            .put(&url, key, &value, ttl.or(self.default_ttl))
            .await;
        self.note_write_failure(&owner, &r);
        r
    }

    async fn delete(&self, key: &str) -> Result<bool, Error> {
        self.check_key(key)?;
        let Some(owner) = self.remote_owner(key) else {
            return Ok(self.delete_owned(key).await);
        };
        let url = self.write_target(&owner, key).await?;
        let r = self.client.delete(&url, key).await;
        self.note_write_failure(&owner, &r);
        r
    }

    async fn get_or_load(self: &Arc<Self>, key: &str, loader: Loader) -> Result<Bytes, Error> {
        self.check_key(key)?;
        let Some(owner) = self.remote_owner(key) else {
            return self.load_as_owner(key, loader).await;
        };
        if let Some(v) = self.hot_get(key).await {
            return Ok(v);
        }
        if self.suspect(&owner) {
            return self.run_loader_here(key, loader).await;
        }
        self.load_via_owner(owner, key, loader).await
    }
}

/// Every `every`: sweeps entries whose own TTL ran out, and compares each peer's write
/// sequence number with the invalidations applied here; when one seen in the previous round
/// still has not arrived, messages were lost and every hot copy is dropped.
async fn maintenance(inner: Weak<Inner>, every: Duration) {
    let mut expected: HashMap<NodeId, u64> = HashMap::new();
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = inner.upgrade() else { return };
        local::sweep(&inner.local).await;
        let Some(hot) = inner.hot.clone() else {
            continue;
        };
        local::sweep(&hot).await;
        let peers: Vec<(NodeId, String)> = inner
            .peers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(i, u)| (i.clone(), u.clone()))
            .collect();
        for (id, url) in peers {
            let applied = lock(&inner.seen).get(&id).copied().unwrap_or(0);
            if expected.get(&id).is_some_and(|e| *e > applied) {
                tracing::debug!(peer = %id, "invalidations were lost; dropping hot copies");
                hot.invalidate_all();
                let mut seen = lock(&inner.seen);
                let s = seen.entry(id.clone()).or_insert(0);
                *s = (*s).max(expected[&id]);
            }
            if let Ok(seq) = inner.client.seq(&url).await {
                expected.insert(id, seq);
            }
        }
    }
}

impl fmt::Debug for DistributedCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DistributedCache")
            .field("id", &self.inner.id)
            .field(
                "peers",
                &self.inner.peers.read().map(|p| p.len()).unwrap_or(0),
            )
            .field("entries", &self.inner.local.entry_count())
            .finish()
    }
}

#[async_trait]
impl Cache for DistributedCache {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, Error> {
        self.inner.get(key).await
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<(), Error> {
        self.inner.set(key, value, ttl).await
    }

    async fn delete(&self, key: &str) -> Result<bool, Error> {
        self.inner.delete(key).await
    }

    async fn get_or_load(&self, key: &str, loader: Loader) -> Result<Bytes, Error> {
        self.inner.get_or_load(key, loader).await
    }
}

impl DistributedCache {
    /// The value under `key` (the design document's `get`; also [`Cache::get`]).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a key over the limit. An unreachable owner is a miss.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, Error> {
        self.inner.get(key).await
    }

    /// Stores `value` with the cache's default TTL (the design document's `set`).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for sizes over the limits; [`Error::Unavailable`] or
    /// [`Error::Timeout`] when the owner cannot be reached (a write is never dropped silently).
    pub async fn set(&self, key: &str, value: impl Into<Bytes>) -> Result<(), Error> {
        self.inner.set(key, value.into(), None).await
    }

    /// Stores `value` for `ttl`.
    ///
    /// # Errors
    ///
    /// As for [`set`](Self::set).
    pub async fn set_with_ttl(
        &self,
        key: &str,
        value: impl Into<Bytes>,
        ttl: Duration,
    ) -> Result<(), Error> {
        self.inner.set(key, value.into(), Some(ttl)).await
    }

    /// Removes `key`; `true` when a value was removed (the design document's `delete`).
    ///
    /// # Errors
    ///
    /// As for [`set`](Self::set).
    pub async fn delete(&self, key: &str) -> Result<bool, Error> {
        self.inner.delete(key).await
    }

    /// The value under `key`, loading it once per cluster when missing.
    ///
    /// # Errors
    ///
    /// [`Error::Load`] when the loader failed (nothing is cached), [`Error::InvalidInput`]
    /// for sizes over the limits, [`Error::Timeout`] when another node's load of the key did
    /// not finish within the load timeout.
    pub async fn get_or_load(&self, key: &str, loader: Loader) -> Result<Bytes, Error> {
        self.inner.get_or_load(key, loader).await
    }
}
