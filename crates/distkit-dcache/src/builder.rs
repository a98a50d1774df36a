//! Configuring a cache node: every setting validated once, nothing spawned.

use std::sync::Arc;
use std::time::Duration;

use distkit_core::{ClusterToken, Error, NodeId};

use crate::cache::{DistributedCache, Inner, Parts};
use crate::local::{self, Capacity};
use crate::membership::{Members, Membership};
use crate::peer::PeerClient;

/// Default key limit in bytes.
pub const DEFAULT_MAX_KEY: usize = 1024;
/// Default value limit in bytes.
pub const DEFAULT_MAX_VALUE: usize = 1024 * 1024;
/// The longest TTL, idle time or hot-copy life accepted: 100 years (moka refuses more than
/// 1,000; nothing cached needs more than a few days).
pub const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

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
    replicas: usize,
    write_acks: Option<usize>,
    tls: Option<crate::peer::TlsConfig>,
}

/// The most copies of a value a cluster keeps (the owner's included).
pub const MAX_REPLICAS: usize = 3;

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

    /// How many nodes keep each value (default 1, at most [`MAX_REPLICAS`]): the owner and
    /// the next `r - 1` distinct members of the ring. When the owner cannot be reached, a
    /// read is served by a replica, without running any loader.
    pub fn replicas(mut self, r: usize) -> Self {
        self.replicas = r;
        self
    }

    /// How many of the `r` copies (the owner's included) must confirm a write before it
    /// returns `Ok` (default all `r`). A write that fewer confirmed returns a retryable
    /// error that says how many did; it is stored where it was confirmed.
    pub fn write_acks(mut self, w: usize) -> Self {
        self.write_acks = Some(w);
        self
    }

    /// How often maintenance runs (default 1 s): entries whose own TTL ran out are swept, and
    /// peers' write sequence numbers are compared, bounding how long a hot copy can outlive a
    /// lost invalidation.
    pub fn staleness_check(mut self, t: Duration) -> Self {
        self.staleness_check = t;
        self
    }

    /// Reaches peers over TLS: every peer URL must then be `https://`, and each peer's
    /// certificate must be signed by the CA in `tls`.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: distkit_core::tls::PeerTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Validates and builds. Nothing is spawned: start the background work (sweeps and the
    /// staleness check) with [`DistributedCache::start_maintenance`].
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a zero capacity or limit, zero timeouts, a TTL, idle time
    /// or hot-copy life over [`MAX_TTL`], replicas outside `1..=`[`MAX_REPLICAS`] or write
    /// acks outside `1..=replicas`, peers without a token, a peer equal to this node or
    /// listed twice, or a URL that is not `http://host:port` (`https://` with [`tls`](Self::tls)).
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
        if !(1..=MAX_REPLICAS).contains(&self.replicas) {
            return Err(Error::invalid_input(
                "replicas",
                format!("it must be from 1 to {MAX_REPLICAS}, got {}", self.replicas),
            ));
        }
        let write_acks = self.write_acks.unwrap_or(self.replicas);
        if !(1..=self.replicas).contains(&write_acks) {
            return Err(Error::invalid_input(
                "write acks",
                format!(
                    "it must be from 1 to the replica count {}, got {write_acks}",
                    self.replicas
                ),
            ));
        }
        let members = Arc::new(Members::new(Membership::new(
            self.id.clone(),
            &self.peers_checked()?,
        )?));
        let token = match self.token.as_deref() {
            Some(t) => Some(ClusterToken::new(t)?),
            None => None,
        };
        let client = PeerClient::new(
            self.token.clone().unwrap_or_default(),
            self.request_timeout,
            members.clone(),
            self.tls.as_ref(),
        )?;
        let hot_capacity = match self.capacity {
            Capacity::Entries(n) => Capacity::Entries((n / 8).max(1)),
            Capacity::Bytes(n) => Capacity::Bytes((n / 8).max(1)),
        };
        let inner = Inner::new(Parts {
            id: self.id,
            local: local::build(self.capacity, self.ttl, self.tti),
            hot: self
                .hot_copies
                .then(|| local::build(hot_capacity, Some(self.hot_ttl), None)),
            default_ttl: self.ttl,
            hot_ttl: self.hot_ttl,
            members,
            client,
            token,
            max_key: self.max_key,
            max_value: self.max_value,
            load_timeout: self.load_timeout,
            suspect_for: self.suspect_for,
            replicas: self.replicas,
            write_acks,
        });
        Ok(DistributedCache::from_parts(inner, self.staleness_check))
    }
}

impl DistributedCacheBuilder {
    /// The defaults; see [`DistributedCache::builder`].
    pub(crate) fn new(id: NodeId) -> Self {
        Self {
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
            replicas: 1,
            write_acks: None,
            tls: None,
        }
    }

    fn peers_checked(&self) -> Result<Vec<(NodeId, String)>, Error> {
        self.peers
            .iter()
            .map(|(id, url)| {
                Ok((
                    id.clone(),
                    crate::peer::check_url(id, url, self.tls.is_some())?,
                ))
            })
            .collect()
    }
}

/// Refuses a zero TTL (it would store nothing a reader could see) and one over [`MAX_TTL`].
pub(crate) fn check_ttl(what: &'static str, ttl: Duration) -> Result<(), Error> {
    if ttl.is_zero() || ttl > MAX_TTL {
        return Err(Error::invalid_input(
            what,
            format!("it must be greater than zero and at most {MAX_TTL:?}, got {ttl:?}"),
        ));
    }
    Ok(())
}
