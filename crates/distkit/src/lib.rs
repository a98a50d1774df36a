//! distkit: distributed-systems primitives for Rust services that run on more than one machine.
//!
//! # Overview
//!
//! This umbrella crate re-exports the distkit crates under one name, so an application can
//! depend on `distkit` alone and write `distkit::core::NodeId`, or depend on the one crate it
//! needs (`distkit-core`, ...) directly. The shared vocabulary is always present:
//!
//! * [`core`]: ids ([`NodeId`], [`FencingToken`], [`Term`]), the [`Error`] type, and the traits
//!   every backend implements ([`DistributedLock`], [`LeaderElector`], [`Cache`], [`Locator`]).
//!
//! * [`hashring`] (feature `hashring`): consistent hashing, the weighted [`hashring::HashRing`]
//!   and ketama, jump, maglev, rendezvous and bounded-load locators.
//! * [`dlock`] (feature `dlock`): distributed locks with fencing tokens:
//!   [`dlock::RedisLock`], [`dlock::Redlock`] and the in-process [`dlock::LocalLock`].
//! * [`election`] (feature `election`): leader election: the Raft-style
//!   [`election::Elector`] over HTTP and the Redis [`election::LeaseElection`].
//! * [`dcache`] (feature `dcache`): the distributed cache, [`dcache::DistributedCache`]:
//!   keys owned by ring, loaded once per cluster, hot copies with invalidation.
//!
//! Each component crate is re-exported behind a feature named after it; all are on by
//! default. Turn off default features and pick the ones you use to build less.
//!
//! # Example
//!
//! ```
//! use distkit::{Error, NodeId};
//!
//! let id: NodeId = "gateway-1".parse()?;
//! assert_eq!(id.to_string(), "gateway-1");
//! # #[cfg(feature = "hashring")]
//! # {
//! let mut ring = distkit::hashring::HashRing::new();
//! ring.add_node(distkit::hashring::Node::new(id, "10.0.0.1:7000"))?;
//! assert_eq!(ring.locate(b"device:42")?.id().as_str(), "gateway-1");
//! # }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Feature flags
//!
//! | feature | default | re-exports |
//! |---|---|---|
//! | `hashring` | yes | `distkit-hashring` as `distkit::hashring` |
//! | `dlock` | yes | `distkit-dlock` as `distkit::dlock` |
//! | `election` | yes | `distkit-election` as `distkit::election` |
//! | `dcache` | yes | `distkit-dcache` as `distkit::dcache` |
//! | `tls` | no | TLS between peers: `distkit::core::tls`, `HttpTransport::with_tls`, `DistributedCacheBuilder::tls` |
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

#[doc(inline)]
pub use distkit_core as core;

#[cfg(feature = "hashring")]
#[doc(inline)]
pub use distkit_hashring as hashring;

#[cfg(feature = "dlock")]
#[doc(inline)]
pub use distkit_dlock as dlock;

#[cfg(feature = "election")]
#[doc(inline)]
pub use distkit_election as election;

#[cfg(feature = "dcache")]
#[doc(inline)]
pub use distkit_dcache as dcache;

#[doc(inline)]
pub use distkit_core::{
    AcquireOptions, Cache, DistributedLock, DistributedRwLock, DistributedSemaphore, Error,
    FencingToken, LeaderElector, Leadership, Lease, LeaseStatus, Loaded, Loader, Locator,
    LockGuard, LockToken, NodeId, PermitCount, Role, Term,
};
