//! The distkit node daemon: one process that runs leader election over HTTP, a distributed
//! cache peer and a lock service, all behind one HTTP listener, so services in any language
//! can use them; plus the IoT demo that runs three of them.
//!
//! # Overview
//!
//! [`Settings`] come from defaults, a TOML file, `DISTKIT_*` environment variables and flags
//! (in that order of precedence). [`run`] serves until its shutdown future completes, then
//! resigns leadership, finishes in-flight requests and releases the locks it holds for
//! clients. The HTTP API (see `docs/guide.md`):
//!
//! | route | what |
//! |---|---|
//! | `GET/PUT/DELETE /v1/cache/{key}` | the cache, through the key's owner; values are raw bytes, `PUT ?ttl_ms=N` |
//! | `POST /v1/locks/{name}` | acquire: `{"ttl_ms", "wait_ms"}` gives `{"token", "fencing_token", "ttl_ms"}` |
//! | `DELETE /v1/locks/{name}` | release: `{"token"}` |
//! | `POST /v1/locks/{name}/extend` | extend: `{"token", "ttl_ms"}` |
//! | `POST /v1/lock-sets` | several locks, all or none: `{"names", "ttl_ms", "wait_ms"}` gives `{"locks": [{"name", "token", "fencing_token"}], "ttl_ms"}` |
//! | `GET /v1/cluster` | members, leader, term, health and ring share of each member |
//! | `GET /healthz`, `/readyz`, `/metrics` | liveness, readiness (a leader is known), Prometheus text |
//!
//! Peer routes (`/v1/election/...`, `/v1/peer/...`) need the cluster token. Every error is a
//! 4xx or 5xx with a JSON body `{"error": "..."}`.
//!
//! # Example
//!
//! ```
//! use distkit_node::{NodeArgs, Settings};
//!
//! let args = NodeArgs {
//!     id: Some("node-1".into()),
//!     token: Some("secret".into()),
//!     peers: vec!["node-2=http://127.0.0.1:7002".into()],
//!     ..NodeArgs::default()
//! };
//! let settings = Settings::resolve(&args)?;
//! assert_eq!(settings.peers.len(), 1);
//! // distkit_node::run(settings, shutdown_signal).await?;
//! # Ok::<(), distkit_core::Error>(())
//! ```
//!
//! # Feature flags
//!
//! None.
//!
//! # Supported Rust versions
//!
//! The minimum supported Rust version is 1.89 (the data directory's lock file uses
//! `File::try_lock`); the library crates need 1.88.

#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]
#![forbid(unsafe_code)]

mod cli;
pub mod demo;
mod node;
mod observe;
mod serve;
mod settings;
mod tls;

#[doc(inline)]
pub use cli::cli_main;
#[doc(inline)]
pub use node::run;
#[doc(inline)]
pub use settings::{Cli, Command, FileConfig, LockBackend, NodeArgs, Settings};
#[doc(inline)]
pub use tls::{NodeTls, generate as generate_certs};
