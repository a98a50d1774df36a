//! Leader election for distkit: a Raft-grade election over HTTP, and a Redis lease election.
//!
//! # Overview
//!
//! * [`Election`] is the **sans-IO core**: a deterministic state machine with no clock, no I/O
//!   and no randomness of its own. It follows the Raft paper's election rules for a fixed
//!   member set (at most one vote per term, step down on a higher term, majority wins) plus
//!   **PreVote** (a node rejoining from a partition does not raise the term), **CheckQuorum**
//!   (a leader that has not heard from a majority within the minimum election timeout steps
//!   down) and **leader stickiness** (no vote within the minimum election timeout of hearing
//!   from a live leader). Timeouts are drawn from `[min, max)`, 150-300 ms by default, with a
//!   50 ms heartbeat.
//! * **Durable votes**: term and vote go through a [`VoteStore`] ([`FileVoteStore`]: temp
//!   file, fsync, rename, fsync the directory; [`MemoryVoteStore`] for tests) before any vote
//!   is answered. A corrupt file is an error at start, never a silent reset.
//! * [`Elector`] is the **tokio runtime**: it owns the core, its timers, the store and a
//!   [`Transport`]. [`HttpTransport`] and [`http_router`] carry messages as JSON over HTTP
//!   (axum router to mount in your server, reqwest client), authenticated by a shared cluster
//!   token.
//! * [`LeaseElection`] offers the same [`LeaderElector`](distkit_core::LeaderElector) trait
//!   over a Redis lease from `distkit-dlock`, for teams that already run Redis.
//! * [`sim`] is the deterministic simulator that checks the safety properties under loss,
//!   delay, reordering, duplication, partitions, crashes and clock drift.
//!
//! Leadership is observed through a `tokio::sync::watch` of
//! [`Leadership`](distkit_core::Leadership) `{ leader, term, role }` that starts with the
//! current value and always holds the latest. The term only grows and there is at most one
//! leader per term, so the term doubles as a fencing token for the leader's work.
//! [`Elector::is_leader_with_lease`] is true only while a majority acknowledged the leader
//! within the lease (the minimum election timeout less a drift bound): no other node can have
//! been elected meanwhile.
//!
//! # Example: three nodes on loopback
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use distkit_core::{LeaderElector, NodeId};
//! use distkit_election::{Config, Elector, HttpTransport, MemoryVoteStore, http_router};
//!
//! # tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?.block_on(async {
//! let ids: Vec<NodeId> = ["a", "b", "c"].into_iter().map(NodeId::new).collect::<Result<_, _>>()?;
//! // Bind the listeners first so every node knows every address.
//! let mut listeners = Vec::new();
//! for _ in &ids {
//!     listeners.push(tokio::net::TcpListener::bind("127.0.0.1:0").await?);
//! }
//! let urls: Vec<String> = listeners
//!     .iter()
//!     .map(|l| Ok(format!("http://{}", l.local_addr()?)))
//!     .collect::<Result<_, std::io::Error>>()?;
//! let mut electors = Vec::new();
//! for (i, listener) in listeners.into_iter().enumerate() {
//!     let peers: Vec<(NodeId, String)> = (0..ids.len())
//!         .filter(|&j| j != i)
//!         .map(|j| (ids[j].clone(), urls[j].clone()))
//!         .collect();
//!     let transport = HttpTransport::new(peers.clone(), "cluster-token", Duration::from_millis(200))?;
//!     let config = Config::builder(ids[i].clone(), peers.into_iter().map(|(id, _)| id)).build()?;
//!     let elector = Elector::start(config, Arc::new(MemoryVoteStore::new()), Arc::new(transport))?;
//!     let app = http_router(elector.inbox(), "cluster-token");
//!     tokio::spawn(async move { axum::serve(listener, app).await });
//!     electors.push(elector);
//! }
//! // Wait until one node leads and the others know it.
//! let mut rx = electors[0].subscribe();
//! let leadership = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|l| l.leader.is_some()))
//!     .await?
//!     .map(|l| l.clone())?;
//! let leader = leadership.leader.unwrap();
//! assert_eq!(electors.iter().filter(|e| e.is_leader()).count(), 1);
//! println!("{leader} leads term {}", leadership.term);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Feature flags
//!
//! * `tls` (off by default): [`HttpTransport::with_tls`], peers reached over `https://` and
//!   verified against the cluster's CA (`distkit_core::tls::PeerTls`, rustls).
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

mod config;
mod core;
mod http;
mod lease;
mod runtime;
pub mod sim;
mod store;

#[doc(inline)]
pub use config::{Config, ConfigBuilder, MAX_TIMEOUT};
#[doc(inline)]
pub use core::{Election, Envelope, HardState, Message, Output, Rejected};
#[doc(inline)]
pub use http::{HttpTransport, MAX_BODY, MESSAGE_PATH, http_router};
#[doc(inline)]
pub use lease::{DEFAULT_LEASE, LeaseElection};
#[doc(inline)]
pub use runtime::{Elector, Inbox, Transport};
#[doc(inline)]
pub use store::{FileVoteStore, MemoryVoteStore, VoteStore};
