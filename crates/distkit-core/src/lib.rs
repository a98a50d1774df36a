//! The shared vocabulary of distkit: ids, errors and the traits that locks, elections, caches
//! and locators implement.
//!
//! # Overview
//!
//! distkit's component crates (`distkit-hashring`, `distkit-dlock`, `distkit-dcache`,
//! `distkit-election`) each implement one of the traits here, so an application can hold any
//! backend as an `Arc<dyn Trait>` and choose it at run time (Redis or in-process locks, a ring
//! or rendezvous hashing, ...):
//!
//! | trait | what it does | implemented by |
//! |---|---|---|
//! | [`DistributedLock`] | leases with fencing tokens, released by a [`LockGuard`] | Redis, Redlock, in-process |
//! | [`LeaderElector`] | one leader per [`Term`], observed through a `watch` of [`Leadership`] | Raft-style over HTTP, Redis lease |
//! | [`Cache`] | bytes by key with TTL and coalesced [`Loader`]s | local moka tier, peer cluster |
//! | [`Locator`] | key to owning [`NodeId`] and distinct replicas | ring, ketama, jump, maglev, rendezvous |
//!
//! Every fallible call returns [`Error`], which says what was wrong and whether retrying can
//! help ([`Error::is_retryable`]).
//!
//! This crate depends on no other distkit crate and keeps its dependencies few; it changes
//! rarely.
//!
//! # Example
//!
//! A toy locator used through the trait object that real ones are used through:
//!
//! ```
//! use std::sync::Arc;
//! use distkit_core::{Error, Locator, NodeId};
//!
//! #[derive(Debug)]
//! struct FirstByte(Vec<NodeId>);
//!
//! impl Locator for FirstByte {
//!     fn owner(&self, key: &[u8]) -> Result<NodeId, Error> {
//!         if self.0.is_empty() {
//!             return Err(Error::NoCapacity { reason: "no nodes".into() });
//!         }
//!         let i = usize::from(key.first().copied().unwrap_or(0)) % self.0.len();
//!         Ok(self.0[i].clone())
//!     }
//!     fn replicas(&self, key: &[u8], n: usize) -> Result<Vec<NodeId>, Error> {
//!         let first = self.owner(key)?;
//!         let start = self.0.iter().position(|id| *id == first).unwrap_or(0);
//!         Ok((0..n.min(self.0.len())).map(|k| self.0[(start + k) % self.0.len()].clone()).collect())
//!     }
//!     fn node_count(&self) -> usize {
//!         self.0.len()
//!     }
//! }
//!
//! let nodes = ["a", "b", "c"].into_iter().map(NodeId::new).collect::<Result<Vec<_>, _>>()?;
//! let locator: Arc<dyn Locator> = Arc::new(FirstByte(nodes));
//! assert_eq!(locator.owner(b"\x01key")?.as_str(), "b");
//! assert_eq!(locator.replicas(b"\x01key", 5)?.len(), 3);
//!
//! // Bad input is a typed error, never a panic.
//! let err = NodeId::new("").unwrap_err();
//! assert!(!err.is_retryable());
//! assert_eq!(err.to_string(), "invalid node id: it is empty");
//! # Ok::<(), Error>(())
//! ```
//!
//! # Feature flags
//!
//! * `axum` (off by default): `impl IntoResponse for Error` (and for [`ErrorBody`]), the one
//!   conversion from an error to an HTTP response that every distkit router uses.
//! * `tls` (off by default): [`tls::PeerTls`], the certificate authority a peer client
//!   verifies its peers against (rustls with aws-lc-rs).
//!
//! # Supported Rust versions
//!
//! The minimum supported Rust version is 1.88 (the workspace's `rust-version`).

#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]
#![forbid(unsafe_code)]

mod cache;
mod election;
mod error;
mod ids;
mod locate;
mod lock;
#[cfg(feature = "tls")]
pub mod tls;
mod token;
mod url;

#[doc(inline)]
pub use cache::{Cache, LoadFuture, Loaded, Loader};
#[doc(inline)]
pub use election::{LeaderElector, Leadership, Role};
#[doc(inline)]
pub use error::{BoxError, Error, ErrorBody, ErrorSource};
#[doc(inline)]
pub use ids::{FencingToken, LockToken, MAX_NODE_ID_LEN, NodeId, Term};
#[doc(inline)]
pub use locate::Locator;
#[doc(inline)]
pub use lock::{
    AcquireOptions, DistributedLock, DistributedRwLock, DistributedSemaphore, Lease, LeaseStatus,
    LockGuard, PermitCount,
};
#[doc(inline)]
pub use token::ClusterToken;
#[doc(inline)]
pub use url::PeerUrl;

#[cfg(test)]
mod tests;
