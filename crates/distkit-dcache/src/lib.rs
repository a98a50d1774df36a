//! A distributed cache for distkit: every key is owned by one node, chosen by a consistent
//! hash ring; each key is loaded once per cluster; readers never see stale data silently.
//!
//! # Overview
//!
//! * **Local tier on moka**: bounded by entries or bytes ([`Capacity`]), TTL and TTI, a TTL
//!   per entry, TinyLFU admission. The design document's API is kept: [`DistributedCache::new`]
//!   `(max_size, ttl)`, [`add_node`](DistributedCache::add_node), `set`, `get`, `delete`.
//! * **Ownership**: a key lives only at its owner (`distkit-hashring`'s `HashRing` over the
//!   members). Other nodes ask the owner over HTTP ([`DistributedCache::router`] is the axum
//!   router to mount; a reqwest client with keep-alive and timeouts calls it), sending values
//!   as raw bytes and the *remaining* TTL, never an absolute time.
//! * **Load once per cluster**: [`get_or_load`](DistributedCache::get_or_load) coalesces
//!   concurrent callers on each node, and the owner grants one load lease per key: one caller
//!   in the whole cluster runs its loader, everyone else gets its value. A failed load is not
//!   cached; a lease whose holder vanished expires.
//! * **Hot keys**: non-owners keep copies of remote keys they read often (at most 1/8 of the
//!   capacity, admitted by TinyLFU, never longer than the owner's TTL).
//! * **Invalidation**: writes and deletes go to the owner, which tells every peer to drop its
//!   copy before it answers, so the next read anywhere sees the change. Each owner numbers
//!   its writes; a peer that sees a gap, or whose periodic check finds a newer number it
//!   never heard about, drops its hot copies.
//! * **No forwarding loops**: a node serves a peer's request from its own tier and never
//!   passes it on, even when members disagree about the ring (groupcache's open bug).
//! * **Replicas** ([`replicas`](DistributedCacheBuilder::replicas), 1 to 3): each value is
//!   also kept by the next members of the ring; a key whose owner is down is served by a
//!   replica without running any loader. A write returns `Ok` when
//!   [`write_acks`](DistributedCacheBuilder::write_acks) copies confirmed it (default: all).
//! * **Membership changes**: one snapshot of the members, swapped whole.
//!   [`add_node`](DistributedCache::add_node) tells the new member first (it drops what it
//!   held, so a node that comes back never serves what it had before), and every node drops
//!   what it no longer owns. Members that disagree refuse each other's key requests with a
//!   retryable error until their views agree.
//! * **Peer failure**: a failed or slow peer is skipped for a while (a circuit breaker).
//!   A read of a key whose owner cannot be reached is served by a replica when there is one,
//!   and is otherwise a retryable [`Error::Unavailable`](distkit_core::Error::Unavailable),
//!   never a miss; `get_or_load` then runs the loader locally without caching.
//! * **Limits and security**: keys up to 1 KiB and values up to 1 MiB by default (typed
//!   errors, HTTP 413); peer routes require the shared cluster token; malformed requests get
//!   400 with a JSON error; keys travel between nodes as the hex of their bytes, so every key
//!   arrives unchanged; durations are checked (TTLs up to [`MAX_TTL`]), so nothing a caller
//!   or a peer sends can panic the node.
//! * **Background work has an owner**: `build()` spawns nothing.
//!   [`start_maintenance`](DistributedCache::start_maintenance) starts the sweeps of expired
//!   entries and the periodic staleness check and returns the [`Maintenance`] handle that owns
//!   the task (`shutdown().await` ends it; dropping the handle aborts it).
//! * **Metrics** through the `metrics` facade: `distkit_dcache_hits_total{tier}`,
//!   `distkit_dcache_misses_total{tier}`, `distkit_dcache_loads_total`,
//!   `distkit_dcache_loads_coalesced_total`, `distkit_dcache_peer_errors_total`,
//!   `distkit_dcache_remote_seconds`.
//!
//! # Example: three nodes on loopback
//!
//! ```
//! use std::time::Duration;
//! use distkit_core::{Loader, NodeId};
//! use distkit_dcache::DistributedCache;
//!
//! # tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?.block_on(async {
//! let ids: Vec<NodeId> = ["cache-a", "cache-b", "cache-c"].into_iter().map(NodeId::new).collect::<Result<_, _>>()?;
//! let mut listeners = Vec::new();
//! for _ in &ids {
//!     listeners.push(tokio::net::TcpListener::bind("127.0.0.1:0").await?);
//! }
//! let urls: Vec<String> = listeners.iter().map(|l| Ok(format!("http://{}", l.local_addr()?))).collect::<Result<_, std::io::Error>>()?;
//! let mut nodes = Vec::new();
//! for (i, listener) in listeners.into_iter().enumerate() {
//!     let mut b = DistributedCache::builder(ids[i].clone())
//!         .max_entries(100_000)
//!         .ttl(Duration::from_secs(3600))
//!         .token("cluster-token");
//!     for j in (0..ids.len()).filter(|&j| j != i) {
//!         b = b.peer(ids[j].clone(), urls[j].clone());
//!     }
//!     let cache = b.build()?;
//!     let maintenance = cache.start_maintenance()?; // keep it for as long as the node runs
//!     # drop(maintenance);
//!     let app = cache.router();
//!     tokio::spawn(async move { axum::serve(listener, app).await });
//!     nodes.push(cache);
//! }
//!
//! // Written through any node, stored at the owner, readable everywhere.
//! nodes[0].set("device:42", "online").await?;
//! let owner = nodes[0].owner_of("device:42")?;
//! for n in &nodes {
//!     assert_eq!(n.get("device:42").await?.as_deref(), Some(&b"online"[..]));
//!     assert_eq!(n.holds_locally("device:42"), *n.id() == owner);
//! }
//!
//! // Loaded once for the whole cluster.
//! let v = nodes[2]
//!     .get_or_load("firmware:latest", Loader::new(|| async { Ok::<_, std::io::Error>("v2.1.0") .map(String::from) }))
//!     .await?;
//! assert_eq!(&v[..], b"v2.1.0");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Feature flags
//!
//! * `tls` (off by default): [`DistributedCacheBuilder::tls`], peers reached over `https://`
//!   and verified against the cluster's CA (`distkit_core::tls::PeerTls`, rustls).
//!
//! # Supported Rust versions
//!
//! The minimum supported Rust version is 1.88.

#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]
#![forbid(unsafe_code)]

mod breaker;
mod builder;
mod cache;
mod loads;
mod local;
mod maintenance;
mod membership;
mod metrics;
pub mod peer;
mod replicas;
mod versions;

#[doc(inline)]
pub use builder::{
    DEFAULT_MAX_KEY, DEFAULT_MAX_VALUE, DistributedCacheBuilder, MAX_REPLICAS, MAX_TTL,
};
#[doc(inline)]
pub use cache::DistributedCache;
#[doc(inline)]
pub use local::Capacity;
#[doc(inline)]
pub use maintenance::Maintenance;
