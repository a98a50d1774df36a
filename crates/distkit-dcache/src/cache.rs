//! `DistributedCache`: the public API, and `Inner`, which ties the concerns together: the
//! local and hot tiers, the membership snapshot (`membership`), the load tables (`loads`),
//! invalidation bookkeeping (`versions`), the circuit breaker (`breaker`) and the peer
//! protocol (`peer`).

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use distkit_core::{Cache, ClusterToken, Error, Loader, NodeId};
use tokio::sync::watch;

use crate::breaker::Breaker;
use crate::builder::{DistributedCacheBuilder, check_ttl};
use crate::loads::{AttemptId, Claim, LoadTable, SlotId};
use crate::local::{self, Entry};
use crate::maintenance::Maintenance;
use crate::membership::{Members, Owner};
use crate::metrics::Metrics;
use crate::peer::{PeerClient, PeerLoad, PeerService, RemoteLoad};
use crate::versions::Versions;

/// A cache whose keys are each owned by one node of a cluster, chosen by a consistent hash
/// ring; see the crate docs. Cheap to clone.
#[derive(Clone)]
pub struct DistributedCache {
    pub(crate) inner: Arc<Inner>,
    staleness_check: Duration,
}

/// What a load attempt's followers learn.
#[derive(Clone, Debug)]
pub(crate) enum Phase {
    Loading,
    /// The outcome, shared with every follower of the attempt (the error keeps its kind).
    Done(Result<Entry, Error>),
    /// The leader went away without an outcome: claim again.
    Abandoned,
}

/// An attempt's signal: followers subscribe, the leader (or whoever ends the attempt) sends.
pub(crate) type Signal = Arc<watch::Sender<Phase>>;

fn new_signal() -> Signal {
    Arc::new(watch::channel(Phase::Loading).0)
}

/// The settings `Inner` is made of (from the builder).
pub(crate) struct Parts {
    pub(crate) id: NodeId,
    pub(crate) local: moka::future::Cache<String, Entry>,
    pub(crate) hot: Option<moka::future::Cache<String, Entry>>,
    pub(crate) default_ttl: Option<Duration>,
    pub(crate) hot_ttl: Duration,
    pub(crate) members: Arc<Members>,
    pub(crate) client: PeerClient,
    pub(crate) token: Option<ClusterToken>,
    pub(crate) max_key: usize,
    pub(crate) max_value: usize,
    pub(crate) load_timeout: Duration,
    pub(crate) suspect_for: Duration,
    pub(crate) replicas: usize,
    pub(crate) write_acks: usize,
}

pub(crate) struct Inner {
    pub(crate) id: NodeId,
    pub(crate) local: moka::future::Cache<String, Entry>,
    pub(crate) hot: Option<moka::future::Cache<String, Entry>>,
    default_ttl: Option<Duration>,
    hot_ttl: Duration,
    pub(crate) members: Arc<Members>,
    pub(crate) client: PeerClient,
    /// `None` without peers: then the peer routes refuse every request.
    pub(crate) token: Option<ClusterToken>,
    pub(crate) max_key: usize,
    pub(crate) max_value: usize,
    load_timeout: Duration,
    /// Copies of each value (the owner's included), and how many must confirm a write.
    pub(crate) replicas: usize,
    pub(crate) write_acks: usize,
    /// Numbers the owner's writes, under the key's lock: a replica keeps the newest.
    pub(crate) writes: AtomicU64,
    /// Owner side: loads of keys this node owns, for local and remote callers.
    owned_loads: Mutex<LoadTable<Signal>>,
    /// Non-owner side: this node's one request per key to its owner.
    remote_loads: Mutex<LoadTable<Signal>>,
    /// Set once an entry with a TTL of its own was stored: only then does maintenance sweep.
    own_ttls: AtomicBool,
    /// Writes to keys this node owns, for peers to notice missed invalidations.
    pub(crate) seq: AtomicU64,
    pub(crate) versions: Versions,
    pub(crate) breaker: Breaker,
    pub(crate) metrics: Metrics,
}

/// The next number of `counter`, at least `floor`; `None` at the top of the number space
/// (refused rather than wrapped or saturated: a number is never handed out twice).
pub(crate) fn next_number(counter: &AtomicU64, floor: u64) -> Option<u64> {
    let mut next = 0;
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |p| {
            next = p.checked_add(1)?.max(floor);
            Some(next)
        })
        .ok()
        .map(|_| next)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Leads one load attempt; if dropped before `finish` (cancelled, or the loader panicked),
/// it abandons the attempt so a follower takes over at once.
struct LeadGuard<'a> {
    table: &'a Mutex<LoadTable<Signal>>,
    key: &'a str,
    attempt: AttemptId,
    armed: bool,
}

impl LeadGuard<'_> {
    /// Ends the attempt with `outcome`; true when it was still current (then its followers
    /// got the outcome).
    fn finish(mut self, outcome: Result<Entry, Error>) -> bool {
        self.armed = false;
        let signal = lock(self.table).finish(self.key, self.attempt);
        match signal {
            Some(s) => {
                s.send_replace(Phase::Done(outcome));
                true
            }
            None => false,
        }
    }
}

impl Drop for LeadGuard<'_> {
    fn drop(&mut self) {
        if self.armed
            && let Some(s) = lock(self.table).abandon(self.key, self.attempt, Instant::now())
        {
            s.send_replace(Phase::Abandoned);
        }
    }
}

/// Follows one load attempt; leaves the slot when dropped (cancelled, or done waiting).
struct FollowGuard<'a> {
    table: &'a Mutex<LoadTable<Signal>>,
    key: &'a str,
    slot: SlotId,
    armed: bool,
}

impl Drop for FollowGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            lock(self.table).leave(self.key, self.slot);
        }
    }
}

/// How a follower's wait ended.
enum Waited {
    Done(Result<Entry, Error>),
    /// Abandoned, or the leader's lease ran out: claim again.
    Again,
}

/// Waits for the attempt's outcome until `lease_ends`; at the end of the lease the leader is
/// presumed gone and its attempt expires.
async fn follow(
    table: &Mutex<LoadTable<Signal>>,
    key: &str,
    slot: SlotId,
    signal: &Signal,
    lease_ends: Instant,
) -> Waited {
    let mut guard = FollowGuard {
        table,
        key,
        slot,
        armed: true,
    };
    let mut rx = signal.subscribe();
    let waited = tokio::time::timeout_at(
        lease_ends.into(),
        rx.wait_for(|p| !matches!(p, Phase::Loading)),
    )
    .await;
    let phase = match waited {
        Ok(Ok(p)) => p.clone(),
        // The sender lives in the table while the attempt does: gone means ended.
        Ok(Err(_)) => Phase::Abandoned,
        Err(_) => {
            let told = lock(table).expire(Instant::now());
            for s in told {
                s.send_replace(Phase::Abandoned);
            }
            Phase::Abandoned
        }
    };
    match phase {
        Phase::Done(r) => {
            // The attempt finished and its slot is gone: nothing to leave.
            guard.armed = false;
            Waited::Done(r)
        }
        Phase::Loading | Phase::Abandoned => Waited::Again,
    }
}

impl Inner {
    pub(crate) fn new(p: Parts) -> Arc<Self> {
        Arc::new(Self {
            id: p.id,
            local: p.local,
            hot: p.hot,
            default_ttl: p.default_ttl,
            hot_ttl: p.hot_ttl,
            members: p.members,
            client: p.client,
            token: p.token,
            max_key: p.max_key,
            max_value: p.max_value,
            load_timeout: p.load_timeout,
            replicas: p.replicas,
            write_acks: p.write_acks,
            writes: AtomicU64::new(0),
            owned_loads: Mutex::new(LoadTable::new(p.load_timeout)),
            remote_loads: Mutex::new(LoadTable::new(p.load_timeout)),
            own_ttls: AtomicBool::new(false),
            seq: AtomicU64::new(0),
            versions: Versions::new(),
            breaker: Breaker::new(p.suspect_for),
            metrics: Metrics::new(),
        })
    }

    pub(crate) fn has_own_ttls(&self) -> bool {
        self.own_ttls.load(Ordering::Relaxed)
    }

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

    /// The entry to store: an explicit TTL is the entry's own (checked on read, swept);
    /// otherwise the tier's default TTL applies and only travels on the wire.
    pub(crate) fn entry(&self, value: Bytes, ttl: Option<Duration>) -> Entry {
        match ttl {
            Some(t) if self.default_ttl != Some(t) => {
                self.own_ttls.store(true, Ordering::Relaxed);
                Entry::with_own_ttl(value, t)
            }
            _ => Entry::new(value, self.default_ttl),
        }
    }

    /// A counter of this node's that reached the top of its number space.
    pub(crate) fn exhausted(&self, what: &str) -> Error {
        Error::NoCapacity {
            reason: format!("the {what} of node {} cannot go any higher", self.id),
        }
    }

    fn unreachable(&self, owner: &NodeId, until: Instant) -> Error {
        Error::Unavailable {
            endpoint: owner.to_string(),
            reason: format!(
                "the owner of the key failed recently and is skipped for another {:?}",
                until.saturating_duration_since(Instant::now())
            ),
            source: None,
        }
    }

    /// Counts a failed request to `id`, and skips `id` for a while when it did not answer at
    /// all (a connection failure or a timeout). A peer that answered with an error is alive:
    /// an owner's "stored, but a peer did not confirm" or "our members disagree" must not
    /// make its callers avoid it (the chaos harness saw owners skipped for that). Logged at
    /// WARN when the peer becomes suspect, not at every failure.
    pub(crate) fn mark_suspect(&self, id: &NodeId, why: &Error) {
        self.metrics.peer_errors.increment(1);
        if !crate::peer::unreachable(why) {
            tracing::debug!(peer = %id, error = %why, "cache peer refused a request");
            return;
        }
        if self.breaker.trip(id) {
            tracing::warn!(peer = %id, error = %why, "cache peer failed; skipping it for a while");
        } else {
            tracing::debug!(peer = %id, error = %why, "cache peer failed again");
        }
    }

    // ---- owner side -------------------------------------------------------------------

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

    /// Owner: stores and tells peers to drop their hot copies. A load of the key in flight
    /// ends with the written value (its loader's older result is not stored). `Err` when a
    /// peer did not confirm dropping its copy (the value is stored all the same).
    pub(crate) async fn set_owned(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<(), Error> {
        let entry = {
            let _order = self.versions.lock(key).await;
            self.check_still_owner(key)?;
            let entry = self.entry(value, ttl).with_version(self.next_write()?);
            self.local.insert(key.to_owned(), entry.clone()).await;
            self.supersede_load(key, Phase::Done(Ok(entry.clone())));
            entry
        };
        let replicated = self.replicate(key, Some(&entry)).await;
        let announced = self.announce(key).await;
        replicated.and(announced)
    }

    /// Refuses a write of a key this node no longer owns (the members changed while the
    /// write was on its way): storing it would leave a copy that an ownership change back
    /// could serve again.
    fn check_still_owner(&self, key: &str) -> Result<(), Error> {
        match self.members.load().owner(key) {
            Owner::Me => Ok(()),
            Owner::Peer(id, _) => Err(Error::Unavailable {
                endpoint: self.id.to_string(),
                reason: format!(
                    "the members changed during the write: {key:?} now belongs to {id}; retry"
                ),
                source: None,
            }),
        }
    }

    /// After a change of members: drops the entries this node no longer owns (so a change
    /// back cannot serve them) and every hot copy (their owners may have changed).
    async fn drop_unowned(&self) {
        if let Some(hot) = &self.hot {
            hot.invalidate_all();
        }
        let holds = |k: &str| {
            self.members
                .load()
                .holders(k, self.replicas)
                .contains(&Owner::Me)
        };
        let gone: Vec<String> = self
            .local
            .iter()
            .map(|(k, _)| (*k).clone())
            .filter(|k| !holds(k))
            .collect();
        for k in gone {
            let _order = self.versions.lock(&k).await;
            if !holds(&k) {
                self.local.invalidate(&k).await;
            }
        }
    }

    /// Owner: deletes and tells peers. A load in flight is abandoned (its followers load
    /// again, after the delete). `Err` as for [`set_owned`](Self::set_owned).
    pub(crate) async fn delete_owned(&self, key: &str) -> Result<bool, Error> {
        let removed = {
            let _order = self.versions.lock(key).await;
            self.check_still_owner(key)?;
            let removed = self.local.remove(key).await.is_some();
            self.supersede_load(key, Phase::Abandoned);
            removed
        };
        let replicated = self.replicate(key, None).await;
        let announced = self.announce(key).await;
        replicated.and(announced)?;
        Ok(removed)
    }

    /// Ends the attempt in flight for `key`, if any, telling its followers `phase`.
    fn supersede_load(&self, key: &str, phase: Phase) {
        let taken = lock(&self.owned_loads).take(key);
        if let Some(s) = taken {
            s.send_replace(phase);
        }
    }

    /// Owner: stores a loaded value if its attempt is still current (no write superseded
    /// it), in one step against writes of the key; tells the attempt's followers.
    async fn store_loaded(
        &self,
        key: &str,
        guard: LeadGuard<'_>,
        loaded: Result<(Bytes, Option<Duration>), Error>,
    ) -> Result<Entry, Error> {
        let (value, ttl) = match loaded {
            Ok(v) => v,
            Err(e) => {
                guard.finish(Err(e.clone()));
                return Err(e);
            }
        };
        let version = match self.next_write() {
            Ok(v) => v,
            Err(e) => {
                guard.finish(Err(e.clone()));
                return Err(e);
            }
        };
        let entry = self.entry(value, ttl).with_version(version);
        let current = {
            let _order = self.versions.lock(key).await;
            let current = guard.finish(Ok(entry.clone()));
            // A load that outlived this node's ownership of the key (the members changed
            // meanwhile) goes to its callers but is not stored: a change back must not find
            // it here.
            let current = current && self.check_still_owner(key).is_ok();
            if current {
                self.local.insert(key.to_owned(), entry.clone()).await;
            }
            current
        };
        if current && let Err(e) = self.replicate(key, Some(&entry)).await {
            tracing::debug!(error = %e, "a loaded value was not replicated everywhere");
        }
        if current && let Err(e) = self.announce(key).await {
            // An older value may live on as a hot copy elsewhere (evicted here, reloaded);
            // the peer that did not confirm notices through the staleness check.
            tracing::debug!(error = %e, "invalidation after a load not confirmed");
        }
        Ok(entry)
    }

    /// Bumps this node's write sequence number and tells every peer to drop its hot copy,
    /// waiting for each to confirm (one retry after a failure), so that reads after the write
    /// returns do not see the old value anywhere. Peers the breaker holds as suspect are
    /// asked too, once: a peer cut off for a while may be back and holding a copy (the chaos
    /// harness caught a write that skipped such a peer returning `Ok` while that peer served
    /// the old value). A write never returns `Ok` without every peer's confirmation.
    ///
    /// `Err` (retryable) names the peers that did not confirm: the write is stored, but they
    /// may serve an older copy until they notice (the gap in sequence numbers on the next
    /// invalidation, or the staleness check), at most the hot-copy TTL.
    async fn announce(&self, key: &str) -> Result<(), Error> {
        let seq =
            next_number(&self.seq, 0).ok_or_else(|| self.exhausted("write sequence numbers"))?;
        let members = self.members.load();
        if members.peer_count() == 0 {
            return Ok(());
        }
        let keys = [key.to_owned()];
        let sends = members.peers().map(|(id, url)| {
            let keys = &keys;
            let suspect = self.breaker.open_until(id).is_some();
            async move {
                let mut r = self.client.invalidate(url, &self.id, seq, keys).await;
                if r.is_err() && !suspect {
                    r = self.client.invalidate(url, &self.id, seq, keys).await;
                }
                if r.is_ok() && suspect {
                    self.breaker.reset(id);
                }
                (id, r)
            }
        });
        let mut unconfirmed = Vec::new();
        for (id, r) in futures_util::future::join_all(sends).await {
            if let Err(e) = r {
                self.mark_suspect(id, &e);
                unconfirmed.push(id.to_string());
            }
        }
        if unconfirmed.is_empty() {
            return Ok(());
        }
        Err(Error::Unavailable {
            endpoint: unconfirmed.join(", "),
            reason: format!(
                "the write of {key:?} is stored at its owner, but these peers did not confirm \
                 dropping their copies; they may serve an older value for up to {:?}",
                self.hot_ttl
            ),
            source: None,
        })
    }

    /// A peer's invalidation: drop the keys' hot copies; a gap in its sequence numbers means
    /// messages were lost, so every hot copy goes.
    pub(crate) async fn invalidated(&self, from: &NodeId, seq: u64, keys: &[String]) {
        let Some(hot) = &self.hot else {
            return;
        };
        // Recorded under the first key's lock, so a read of that key in flight either sees
        // the new number or has its copy removed here.
        let mut gap = None;
        for k in keys {
            let _order = self.versions.lock(k).await;
            if *gap.get_or_insert_with(|| self.versions.record(from, seq)) {
                hot.invalidate_all();
                return;
            }
            hot.invalidate(k).await;
        }
        if gap.is_none() && self.versions.record(from, seq) {
            hot.invalidate_all();
        }
    }

    /// Owner: a local caller's `get_or_load`: at most one load at a time per key, whoever
    /// asks; a leader that goes away hands over at once.
    async fn load_as_owner(&self, key: &str, loader: Loader) -> Result<Bytes, Error> {
        if let Some(e) = local::live(&self.local, key).await {
            self.metrics.hit_local.increment(1);
            return Ok(e.value);
        }
        let guard = match self.lead_or_follow(&self.owned_loads, key).await {
            Ok(guard) => guard,
            Err(followed) => return followed,
        };
        // A value stored since the look-up (by a write, or a load this caller followed before
        // it came to lead): no load needed.
        if let Some(e) = local::live(&self.local, key).await {
            self.metrics.hit_local.increment(1);
            guard.finish(Ok(e.clone()));
            return Ok(e.value);
        }
        self.metrics.loads.increment(1);
        let loaded = self.run_loader(key, loader).await;
        self.store_loaded(key, guard, loaded).await.map(|e| e.value)
    }

    /// Claims the load of `key` in `table` until this caller leads it (`Ok`, with the guard
    /// that hands over if dropped) or a load it followed ended (`Err`, with that outcome).
    async fn lead_or_follow<'a>(
        &self,
        table: &'a Mutex<LoadTable<Signal>>,
        key: &'a str,
    ) -> Result<LeadGuard<'a>, Result<Bytes, Error>> {
        loop {
            let claim = lock(table).claim(key, Instant::now(), new_signal, None);
            match claim {
                Claim::Lead { attempt } => {
                    return Ok(LeadGuard {
                        table,
                        key,
                        attempt,
                        armed: true,
                    });
                }
                Claim::Follow {
                    slot,
                    signal,
                    lease_ends,
                } => {
                    self.metrics.coalesced.increment(1);
                    if let Waited::Done(r) = follow(table, key, slot, &signal, lease_ends).await {
                        return Err(r.map(|e| e.value));
                    }
                }
            }
        }
    }

    /// Runs a loader and checks its value.
    async fn run_loader(
        &self,
        key: &str,
        loader: Loader,
    ) -> Result<(Bytes, Option<Duration>), Error> {
        let loaded = loader
            .load()
            .await
            .map_err(|source| Error::load(key, source))?;
        self.check_value(&loaded.value)?;
        if let Some(t) = loaded.ttl {
            check_ttl("loaded ttl", t)?;
        }
        Ok((loaded.value, loaded.ttl))
    }

    /// Owner: a peer's load request. Answers with the value, a lease (the peer loads; the
    /// lease is the id the peer proposed, so it can abandon even an answer it never saw), the
    /// shared failure of the attempt it waited for, or "claim again".
    pub(crate) async fn load_for_peer(&self, key: &str, proposed: Option<AttemptId>) -> PeerLoad {
        if let Some(e) = local::live(&self.local, key).await {
            self.metrics.hit_local.increment(1);
            return PeerLoad::Value(e);
        }
        let claim = {
            let mut loads = lock(&self.owned_loads);
            let now = Instant::now();
            if proposed.is_some_and(|p| loads.is_buried(p, now)) {
                // The peer abandoned this request before it arrived: it is gone.
                return PeerLoad::Retry;
            }
            loads.claim(key, now, new_signal, proposed)
        };
        match claim {
            // The peer leads; its fill or abandon ends the attempt, or its lease runs out.
            Claim::Lead { attempt, .. } => PeerLoad::Lease(attempt),
            Claim::Follow {
                slot,
                signal,
                lease_ends,
                ..
            } => {
                self.metrics.coalesced.increment(1);
                match follow(&self.owned_loads, key, slot, &signal, lease_ends).await {
                    Waited::Done(Ok(e)) => PeerLoad::Value(e),
                    Waited::Done(Err(e)) => PeerLoad::Failed(e),
                    Waited::Again => PeerLoad::Retry,
                }
            }
        }
    }

    /// Owner: a peer that holds `lease` finished its load.
    pub(crate) async fn fill(
        &self,
        key: &str,
        lease: AttemptId,
        value: Bytes,
        ttl: Option<Duration>,
    ) {
        let guard = LeadGuard {
            table: &self.owned_loads,
            key,
            attempt: lease,
            armed: false,
        };
        let _ = self.store_loaded(key, guard, Ok((value, ttl))).await;
    }

    /// Owner: the loader of the peer that holds `lease` failed: the attempt ends with that
    /// failure for everyone who waited for it (no one runs the loader again for it).
    pub(crate) fn fail(&self, key: &str, lease: AttemptId, from: &str, message: &str) {
        let told = lock(&self.owned_loads).finish(key, lease);
        if let Some(s) = told {
            let e = Error::load(key, format!("the loader at {from} failed: {message}"));
            s.send_replace(Phase::Done(Err(e)));
        }
    }

    /// Owner: a peer that holds `lease` gave up (it was cancelled).
    pub(crate) fn abandon(&self, key: &str, lease: AttemptId) {
        let told = lock(&self.owned_loads).abandon(key, lease, Instant::now());
        if let Some(s) = told {
            s.send_replace(Phase::Abandoned);
        }
    }

    // ---- non-owner side ---------------------------------------------------------------

    /// Non-owner: one request per key from this node; followers share its result, and a
    /// leader that goes away hands over at once.
    async fn load_via_owner(
        &self,
        owner: &NodeId,
        url: &str,
        key: &str,
        loader: Loader,
    ) -> Result<Bytes, Error> {
        let guard = match self.lead_or_follow(&self.remote_loads, key).await {
            Ok(guard) => guard,
            Err(followed) => return followed,
        };
        let r = self.remote_load(owner, url, key, loader).await;
        // Followers get the same result: an entry carrying the value.
        guard.finish(r.clone().map(|v| Entry::new(v, None)));
        r
    }

    async fn remote_load(
        &self,
        owner: &NodeId,
        url: &str,
        key: &str,
        loader: Loader,
    ) -> Result<Bytes, Error> {
        let started = Instant::now();
        let deadline = started.checked_add(self.load_timeout);
        let mut loader = Some(loader);
        while deadline.is_none_or(|d| Instant::now() < d) {
            let asked = Instant::now();
            // Armed before the request: if this caller is dropped anywhere from here until it
            // reports, the owner is told to drop the attempt it may have granted.
            let mut remote = RemoteLease {
                client: &self.client,
                url,
                key,
                lease: rand::random::<u64>() | 1,
                armed: true,
            };
            let answer = self
                .client
                .load(url, key, self.load_timeout, remote.lease)
                .await;
            if !matches!(answer, Ok(RemoteLoad::Lease(_))) {
                remote.armed = false;
            }
            match answer {
                Ok(RemoteLoad::Value(v, ttl, seq)) => {
                    self.breaker.reset(owner);
                    self.metrics
                        .remote_latency
                        .record(asked.elapsed().as_secs_f64());
                    self.metrics.hit_remote.increment(1);
                    self.keep_hot(owner, key, &v, ttl, seq).await;
                    return Ok(v);
                }
                Ok(RemoteLoad::Lease(lease)) => {
                    remote.lease = lease;
                    let Some(l) = loader.take() else { break };
                    self.metrics.loads.increment(1);
                    let loaded = self.run_loader(key, l).await;
                    remote.armed = false;
                    return match loaded {
                        Ok((value, ttl)) => {
                            if let Err(e) = self
                                .client
                                .fill(url, key, lease, &value, ttl.or(self.default_ttl))
                                .await
                            {
                                tracing::debug!(error = %e, "could not hand the loaded value to its owner");
                            }
                            Ok(value)
                        }
                        Err(e) => {
                            // Shared with everyone who waited for this load at the owner.
                            let _ = self.client.fail(url, key, lease, &self.id, &e).await;
                            Err(e)
                        }
                    };
                }
                Ok(RemoteLoad::Failed(e)) => return Err(e),
                Ok(RemoteLoad::Retry) => {}
                Err(e) => {
                    self.mark_suspect(owner, &e);
                    break;
                }
            }
        }
        if let Some(Some(v)) = self.read_replica(owner, key).await {
            return Ok(v);
        }
        match loader {
            Some(l) => self.load_here(key, l).await,
            None => Err(Error::Timeout {
                operation: "cache load",
                after: self.load_timeout,
            }),
        }
    }

    /// The owner is unreachable: load here and do not cache (the owner is the only place a
    /// value lives, so nothing here can go stale).
    async fn load_here(&self, key: &str, loader: Loader) -> Result<Bytes, Error> {
        self.metrics.loads.increment(1);
        self.run_loader(key, loader).await.map(|(v, _)| v)
    }

    /// Keeps a hot copy when the value was read under no newer invalidation than the ones
    /// applied here, checked and inserted in one step against invalidations of the key.
    async fn keep_hot(
        &self,
        owner: &NodeId,
        key: &str,
        v: &Bytes,
        ttl: Option<Duration>,
        seq: u64,
    ) {
        let Some(hot) = &self.hot else { return };
        let life = ttl.map_or(self.hot_ttl, |t| t.min(self.hot_ttl));
        if life.is_zero() {
            return;
        }
        let _order = self.versions.lock(key).await;
        if seq < self.versions.applied(owner) {
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

    async fn drop_hot(&self, key: &str) {
        if let Some(h) = &self.hot {
            h.invalidate(key).await;
        }
    }

    fn note_failure<T>(&self, owner: &NodeId, r: &Result<T, Error>) {
        match r {
            Err(e) if e.is_retryable() => self.mark_suspect(owner, e),
            Ok(_) => self.breaker.reset(owner),
            Err(_) => {}
        }
    }

    // ---- the operations ---------------------------------------------------------------

    async fn get(&self, key: &str) -> Result<Option<Bytes>, Error> {
        // Hits complete without touching tokio: give a caller that reads in a tight loop a
        // point to yield, so it cannot starve the node's other tasks.
        tokio::task::coop::consume_budget().await;
        self.check_key(key)?;
        let Owner::Peer(owner, url) = self.members.peek().owner(key) else {
            return Ok(self.get_owned(key).await.map(|e| e.value));
        };
        if let Some(v) = self.hot_get(key).await {
            return Ok(Some(v));
        }
        if let Some(until) = self.breaker.open_until(&owner) {
            if let Some(v) = self.read_replica(&owner, key).await {
                return Ok(v);
            }
            return Err(self.unreachable(&owner, until));
        }
        let started = Instant::now();
        match self.client.get(&url, key).await {
            Ok(Some((v, ttl, seq))) => {
                self.breaker.reset(&owner);
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
                if e.is_retryable() {
                    self.mark_suspect(&owner, &e);
                    if let Some(v) = self.read_replica(&owner, key).await {
                        return Ok(v);
                    }
                }
                Err(e)
            }
        }
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<(), Error> {
        self.check_key(key)?;
        self.check_value(&value)?;
        if let Some(t) = ttl {
            check_ttl("ttl", t)?;
        }
        let Owner::Peer(owner, url) = self.members.peek().owner(key) else {
            return self.set_owned(key, value, ttl).await;
        };
        self.drop_hot(key).await;
        let r = self
            .client
            .put(&url, key, &value, ttl.or(self.default_ttl))
            .await;
        self.note_failure(&owner, &r);
        r
    }

    async fn delete(&self, key: &str) -> Result<bool, Error> {
        self.check_key(key)?;
        let Owner::Peer(owner, url) = self.members.peek().owner(key) else {
            return self.delete_owned(key).await;
        };
        self.drop_hot(key).await;
        let r = self.client.delete(&url, key).await;
        self.note_failure(&owner, &r);
        r
    }

    async fn get_or_load(&self, key: &str, loader: Loader) -> Result<Bytes, Error> {
        tokio::task::coop::consume_budget().await;
        self.check_key(key)?;
        let Owner::Peer(owner, url) = self.members.peek().owner(key) else {
            return self.load_as_owner(key, loader).await;
        };
        if let Some(v) = self.hot_get(key).await {
            return Ok(v);
        }
        if self.breaker.open_until(&owner).is_some() {
            if let Some(Some(v)) = self.read_replica(&owner, key).await {
                return Ok(v);
            }
            return self.load_here(key, loader).await;
        }
        self.load_via_owner(&owner, &url, key, loader).await
    }
}

#[async_trait]
impl PeerService for Inner {
    fn token(&self) -> Option<&ClusterToken> {
        self.token.as_ref()
    }
    fn members(&self) -> u64 {
        self.members.load().fingerprint()
    }
    fn joined(&self, by: &NodeId) {
        tracing::info!(by = %by, "added to a peer's members; dropping what this node held");
        self.local.invalidate_all();
        if let Some(hot) = &self.hot {
            hot.invalidate_all();
        }
    }
    fn max_value(&self) -> usize {
        self.max_value
    }
    fn max_key(&self) -> usize {
        self.max_key
    }
    fn check_key(&self, key: &str) -> Result<(), Error> {
        Inner::check_key(self, key)
    }
    fn seq(&self) -> u64 {
        self.seq.load(Ordering::SeqCst)
    }
    fn is_peer(&self, id: &NodeId) -> bool {
        self.members.load().is_peer(id)
    }
    async fn get_owned(&self, key: &str) -> Option<Entry> {
        Inner::get_owned(self, key).await
    }
    async fn set_owned(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<(), Error> {
        Inner::set_owned(self, key, value, ttl).await
    }
    async fn delete_owned(&self, key: &str) -> Result<bool, Error> {
        Inner::delete_owned(self, key).await
    }
    async fn load_for_peer(&self, key: &str, proposed: Option<u64>) -> PeerLoad {
        Inner::load_for_peer(self, key, proposed).await
    }
    async fn fill(&self, key: &str, lease: u64, value: Bytes, ttl: Option<Duration>) {
        Inner::fill(self, key, lease, value, ttl).await;
    }
    fn abandon(&self, key: &str, lease: u64) {
        Inner::abandon(self, key, lease);
    }
    fn fail(&self, key: &str, lease: u64, from: &str, message: &str) {
        Inner::fail(self, key, lease, from, message);
    }
    async fn invalidated(&self, from: &NodeId, seq: u64, keys: &[String]) {
        Inner::invalidated(self, from, seq, keys).await;
    }
    async fn store_replica(
        &self,
        key: &str,
        version: u64,
        value: Option<(Bytes, Option<Duration>)>,
    ) -> Result<(), Error> {
        Inner::store_replica(self, key, version, value).await
    }
}

/// A lease this node holds at a remote owner; if dropped armed (the caller was cancelled or
/// its loader panicked), it tells the owner in the background so the next caller there
/// takes over at once. Outside a runtime the owner's lease simply runs out.
struct RemoteLease<'a> {
    client: &'a PeerClient,
    url: &'a str,
    key: &'a str,
    lease: AttemptId,
    armed: bool,
}

impl Drop for RemoteLease<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let (client, url, key, lease) = (
                self.client.clone(),
                self.url.to_owned(),
                self.key.to_owned(),
                self.lease,
            );
            handle.spawn(async move {
                let _ = client.abandon(&url, &key, lease).await;
            });
        }
    }
}

impl DistributedCache {
    pub(crate) fn from_parts(inner: Arc<Inner>, staleness_check: Duration) -> Self {
        Self {
            inner,
            staleness_check,
        }
    }

    /// A single-node cache of at most `max_size` entries with an optional default TTL (the
    /// design document's constructor). Add peers with [`add_node`](Self::add_node) after
    /// setting a token through [`builder`](Self::builder), or use it as a local cache.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a zero size or a TTL out of range.
    pub fn new(max_size: u64, ttl: Option<Duration>) -> Result<Self, Error> {
        let mut b = Self::builder(NodeId::new("local")?).max_entries(max_size);
        if let Some(t) = ttl {
            b = b.ttl(t);
        }
        b.build()
    }

    /// Configures a cache node with id `id`.
    pub fn builder(id: NodeId) -> DistributedCacheBuilder {
        DistributedCacheBuilder::new(id)
    }

    /// This node's id.
    #[must_use]
    pub fn id(&self) -> &NodeId {
        &self.inner.id
    }

    /// Adds a peer at run time. The new member is told first, and drops what it holds (if
    /// it was a member before, it may have missed writes while it was out: nothing it held
    /// may be served again). Then the ring and the addresses change together, in one
    /// snapshot; this node drops the entries it no longer owns and its hot copies. Keys the
    /// new member now owns are loaded there on their next miss.
    ///
    /// Until every member has made the same change, members that disagree refuse each
    /// other's key requests (a retryable error) rather than act under different rings.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a bad URL, a duplicate id, this node's own id, or a cache
    /// built without a token; [`Error::Unavailable`] or [`Error::Timeout`] when the new
    /// member could not be told (nothing changed then; retry).
    pub async fn add_node(&self, id: NodeId, url: &str) -> Result<(), Error> {
        if self.inner.token.is_none() {
            return Err(Error::invalid_input(
                "cluster token",
                "build the cache with a token before adding peers",
            ));
        }
        let url = crate::peer::check_url(&id, url, self.inner.client.tls())?;
        // Refuse what the snapshot would refuse before telling anyone.
        self.inner
            .members
            .load()
            .with_peer(id.clone(), url.clone())?;
        self.inner.client.join(&url, &self.inner.id).await?;
        self.inner.breaker.reset(&id);
        self.inner
            .members
            .update(|m| m.with_peer(id.clone(), url.clone()))?;
        self.inner.drop_unowned().await;
        Ok(())
    }

    /// Removes a peer; its keys fall to the others (loaded there on their next miss).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] when it is not a peer.
    pub async fn remove_node(&self, id: &str) -> Result<(), Error> {
        self.inner.members.update(|m| m.without_peer(id))?;
        if let Ok(id) = NodeId::new(id) {
            self.inner.versions.forget(&id);
            self.inner.breaker.reset(&id);
        }
        self.inner.drop_unowned().await;
        Ok(())
    }

    /// The node that owns `key` in this node's view of the ring.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for an empty key, [`Error::TooLarge`] for one over the limit.
    pub fn owner_of(&self, key: &str) -> Result<NodeId, Error> {
        self.inner.check_key(key)?;
        Ok(match self.inner.members.load().owner(key) {
            Owner::Me => self.inner.id.clone(),
            Owner::Peer(id, _) => id,
        })
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

    /// A digest of this node's member ids: equal on two nodes exactly when they agree on who
    /// the members are. Peers send it with every key request and refuse one that differs;
    /// compare it across nodes when they report `membership_mismatch`.
    #[must_use]
    pub fn members_fingerprint(&self) -> u64 {
        self.inner.members.peek().fingerprint()
    }

    /// Each member's share of the key space in this node's view of the ring.
    #[must_use]
    pub fn ring_shares(&self) -> Vec<(NodeId, f64)> {
        let members = self.inner.members.load();
        let mut v: Vec<(NodeId, f64)> = members
            .ring()
            .shares()
            .into_iter()
            .map(|(n, s)| (n.id().clone(), s))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Entries in the local tier (approximate, as moka counts; [`sync`](Self::sync) first
    /// for an exact figure).
    #[must_use]
    pub fn local_len(&self) -> u64 {
        self.inner.local.entry_count()
    }

    /// Bytes of keys and values held in both tiers (owned entries, replicas and hot copies).
    /// Walks the tiers, so it costs one pass over the entries: for operators and tests, not
    /// for a hot path.
    #[must_use]
    pub fn bytes_used(&self) -> u64 {
        let tier = |t: &moka::future::Cache<String, Entry>| -> u64 {
            t.iter()
                .map(|(k, e)| (k.len() + e.value.len()) as u64)
                .sum()
        };
        tier(&self.inner.local) + self.inner.hot.as_ref().map_or(0, tier)
    }

    /// Entries in both tiers (owned and hot copies), as moka counts.
    #[must_use]
    pub fn entry_count(&self) -> u64 {
        self.inner.local.entry_count()
            + self
                .inner
                .hot
                .as_ref()
                .map_or(0, moka::future::Cache::entry_count)
    }

    /// Keys whose load is in flight on this node (as owner or as a caller of a remote
    /// owner). Bounded by the callers waiting: an abandoned load leaves nothing behind, and a
    /// remote caller that vanished without a word holds its slot until its lease (the load
    /// timeout) ends.
    #[must_use]
    pub fn loads_in_flight(&self) -> usize {
        let now = Instant::now();
        [&self.inner.owned_loads, &self.inner.remote_loads]
            .into_iter()
            .map(|t| {
                let mut t = lock(t);
                // A leader whose lease ended is gone (a remote caller that died, or whose
                // abandon was lost): its slot does not count, and goes.
                for s in t.expire(now) {
                    s.send_replace(Phase::Abandoned);
                }
                t.len()
            })
            .sum::<usize>()
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
        Ok(Maintenance::spawn(
            &handle,
            Arc::downgrade(&self.inner),
            self.staleness_check,
        ))
    }
}

impl fmt::Debug for DistributedCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let members = self.inner.members.load();
        f.debug_struct("DistributedCache")
            .field("id", &self.inner.id)
            .field("peers", &members.peer_count())
            .field("epoch", &members.epoch)
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
    /// The value under `key` (the design document's `get`; also [`Cache::get`]). A miss is
    /// `Ok(None)`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] or [`Error::TooLarge`] for a bad key; [`Error::Unavailable`]
    /// or [`Error::Timeout`] (both retryable) when the key's owner cannot be reached: an
    /// outage is never reported as a miss.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, Error> {
        self.inner.get(key).await
    }

    /// Stores `value` with the cache's default TTL (the design document's `set`).
    ///
    /// # Errors
    ///
    /// [`Error::TooLarge`] for sizes over the limits; [`Error::Unavailable`] or
    /// [`Error::Timeout`] when the owner cannot be reached (a write is never dropped
    /// silently); the owner's refusal with its reason.
    pub async fn set(&self, key: &str, value: impl Into<Bytes>) -> Result<(), Error> {
        self.inner.set(key, value.into(), None).await
    }

    /// Stores `value` for `ttl`.
    ///
    /// # Errors
    ///
    /// As for [`set`](Self::set), plus [`Error::InvalidInput`] for a zero TTL or one over
    /// [`MAX_TTL`](crate::MAX_TTL).
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

    /// The value under `key`, loading it once per cluster when missing. Concurrent callers
    /// share one load; when the caller that loads is cancelled (or its loader panics) the
    /// next one takes over at once; a failed load is shared with the callers that waited for
    /// it, not retried by each.
    ///
    /// # Errors
    ///
    /// [`Error::Load`] when the loader failed (nothing is cached; the callers that waited for
    /// that load get the same failure), [`Error::TooLarge`] for a value over the limit,
    /// [`Error::InvalidInput`] for a loaded TTL of zero or over
    /// [`MAX_TTL`](crate::MAX_TTL). A load that a write superseded, or that outlived this
    /// node's ownership of the key, is returned to its caller but not stored.
    pub async fn get_or_load(&self, key: &str, loader: Loader) -> Result<Bytes, Error> {
        self.inner.get_or_load(key, loader).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::next_number;

    #[test]
    fn numbers_grow_from_their_floor_and_stop_at_the_top() {
        let c = AtomicU64::new(0);
        assert_eq!(next_number(&c, 0), Some(1));
        assert_eq!(next_number(&c, 100), Some(100));
        assert_eq!(next_number(&c, 5), Some(101));
        c.store(u64::MAX - 1, Ordering::SeqCst);
        assert_eq!(next_number(&c, 0), Some(u64::MAX));
        // Refused, not wrapped to 0 or saturated into a repeat of u64::MAX.
        assert_eq!(next_number(&c, 0), None);
        assert_eq!(c.load(Ordering::SeqCst), u64::MAX);
    }
}
