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
//! Each component crate is re-exported behind a feature named after it as it lands; all are
//! on by default.
//!
//! # Example
//!
//! ```
//! use distkit::{Error, NodeId};
//!
//! let id: NodeId = "gateway-1".parse()?;
//! assert_eq!(id.to_string(), "gateway-1");
//! # Ok::<(), Error>(())
//! ```
//!
//! # Feature flags
//!
//! None yet; component crates arrive behind features named after them.
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

#[doc(inline)]
pub use distkit_core::{
    AcquireOptions, Cache, DistributedLock, Error, FencingToken, LeaderElector, Leadership, Lease,
    LeaseStatus, Loaded, Loader, Locator, LockGuard, LockToken, NodeId, Role, Term,
};
