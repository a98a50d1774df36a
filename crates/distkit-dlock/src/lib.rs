//! Distributed locks for distkit: Redis locks that are safe and fast, Redlock across several
//! Redis servers, and an in-process lock with the same contract.
//!
//! # Overview
//!
//! | backend | holds the lock | use it for |
//! |---|---|---|
//! | [`RedisLock`] | one Redis server | the default for teams that run Redis |
//! | [`Redlock`] | a majority of N independent Redis servers (or Sentinel deployments) | surviving the loss of a minority of servers |
//! | [`LocalLock`] | this process | tests, single-process deployments |
//!
//! All three implement [`distkit_core::DistributedLock`], so code can hold an
//! `Arc<dyn DistributedLock>` and pick the backend from configuration.
//!
//! The rest of the lock family, each on Redis (made from a [`RedisLock`], sharing its
//! connections) and in-process with the same semantics:
//!
//! | kind | Redis | in-process | choose it when |
//! |---|---|---|---|
//! | mutex | [`RedisLock`] | [`LocalLock`] | one holder at a time, most throughput; under contention a release is handed to a waiter it woke, so grants spread across workers |
//! | fair lock | [`RedisFairLock`] | [`LocalFairLock`] | waiters must be granted in arrival order (no starvation) |
//! | read-write lock | [`RedisRwLock`] | [`LocalRwLock`] | many readers may overlap, writers are exclusive and must not starve (writer preference) |
//! | semaphore | [`RedisSemaphore`] | [`LocalSemaphore`] | at most N holders at once, N changeable at run time, each grant with its own lease |
//! | several names | [`MultiLock`] over any of them | | one operation needs several resources at once |
//!
//! Every kind hands out the same [`LockGuard`](distkit_core::LockGuard) with a fencing token,
//! the same watchdog, release on drop and cancellation safety (a dropped acquire leaves no
//! grant, queue entry or permit behind). The read-write lock and the semaphore implement
//! [`DistributedRwLock`](distkit_core::DistributedRwLock) and
//! [`DistributedSemaphore`](distkit_core::DistributedSemaphore), so code can pick Redis or the
//! in-process table from configuration for them too. [`MultiLock`] takes
//! several names of any of them together, all or none (sorted acquisition, one wait limit for
//! the set, one guard); choose it when one operation must hold several resources at once,
//! such as a transfer between two accounts. Every grant returns a
//! [`LockGuard`](distkit_core::LockGuard) with a **fencing token** that strictly increases per
//! lock name: pass it along with every write the lock protects, and have the resource refuse
//! tokens smaller than the largest it has seen. A lease can always be lost (a GC pause, a
//! network partition, a clock jump); the token is what keeps a paused holder from doing damage.
//!
//! # Topologies, and what survives a failover
//!
//! Every Redis kind runs on one server ([`RedisLock::builder`]), on the primary that Redis
//! Sentinel names ([`RedisLock::sentinel`]: after a promotion the service follows the new
//! primary, pub/sub included) or on a Redis Cluster ([`RedisLock::cluster`]: each lock's keys
//! share a hash tag, so one slot; MOVED and ASK are followed during resharding).
//!
//! * **Without replica acknowledgement** (the default), a grant lives on the primary until
//!   asynchronous replication copies it. A primary that dies before that loses it, and after
//!   the promotion a second client can be granted the same lock while the first still
//!   holds it. Fencing tokens still keep order at the protected store: they are floored by
//!   the server's clock, so the new primary's tokens are larger (unless clocks step back),
//!   and a store that refuses smaller tokens turns the stale holder away. Mutual exclusion
//!   itself is not guaranteed across such a failover.
//! * **With [`min_replicas(k)`](RedisLockBuilder::min_replicas)** (Sentinel, Cluster, or
//!   one server with replicas), a grant is handed out only once `k` replicas acknowledged it (`WAIT`);
//!   otherwise it is given back and reported as a retryable error. An extension fewer
//!   acknowledged is reported the same way and not counted (the holder keeps its old,
//!   shorter validity). Sentinel
//!   promotes the replica with the most replication progress, which then holds every
//!   acknowledged grant: in our tests (4 processes x 8 tasks through a SIGKILL of the
//!   primary) no grant was lost. It is not consensus: losing the acknowledging replica too,
//!   or an election that promotes a replica that had not acknowledged, can still lose a
//!   grant. When two sentinels promote two replicas at once, grants are refused (no
//!   replica acknowledges) until the sentinels agree, which took some 20 s in our runs. On
//!   a Cluster, `WAIT` goes to the primary owning the lock's slot; while an operator
//!   migrates that slot, a grant redirected to the importing primary is acknowledged by the
//!   old owner, so it is only as safe as one without `WAIT` until the migration ends.
//!
//! [`Redlock`] nodes can be deployments too ([`Redlock::over`]): a node that is a Sentinel
//! deployment keeps its vote through a failover of its primary, on the same terms as above.
//! `LeaseElection` (in `distkit-election`) runs on every
//! topology as well, and [`RedisLock::connection`] lends a pooled connection to the same
//! deployment for data kept beside the locks.
//!
//! What sets these locks apart from the Redis lock libraries users complain about:
//!
//! * **No polling loop.** Waiters subscribe to a per-lock channel *before* their failed attempt
//!   and retry when the holder's release is published; they also wake exactly when the holder's
//!   TTL runs out (a crashed holder publishes nothing), and fall back to jittered polling when
//!   pub/sub is down.
//! * **Fencing tokens** come from the same Lua script as the grant, so their order is the grant
//!   order.
//! * **Watchdog renewal** (opt-in) stops before the release is sent and can never bring a
//!   released lock back (renewal is compare-token and never creates the key); loss is reported
//!   through [`LockGuard::lost`](distkit_core::LockGuard::lost).
//! * **Cancellation-safe**: dropping an acquire future while its grant is in flight releases
//!   the grant on the same connection; dropping a guard releases in the background (on the
//!   runtime it is dropped in; dropped outside any runtime, the lock expires with its TTL).
//! * **Typed errors**: Redis down, slow, restarting, a wrong password or a key holding another
//!   program's value are [`Error`](distkit_core::Error)s that say what to do, never a panic or a
//!   false "acquired".
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use distkit_core::{AcquireOptions, DistributedLock, FencingToken};
//! use distkit_dlock::RedisLock;
//!
//! /// A store that refuses writes from holders whose lease has passed on.
//! struct FirmwareStore { highest: FencingToken }
//!
//! impl FirmwareStore {
//!     fn write(&mut self, token: FencingToken, _image: &str) -> Result<(), String> {
//!         if token < self.highest {
//!             return Err(format!("stale fencing token {token} < {}", self.highest));
//!         }
//!         self.highest = token;
//!         Ok(())
//!     }
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
//! # let redis = distkit_testkit::RedisServer::start()?; // a private redis-server for the example
//! # let url = redis.url();
//! let locks = RedisLock::builder(url) // "redis://127.0.0.1:6379/"
//!     .ttl(Duration::from_secs(10))
//!     .build()?;
//! let mut store = FirmwareStore { highest: FencingToken::default() };
//!
//! let guard = locks
//!     .acquire_with("firmware:device-42", AcquireOptions::new().wait(Duration::from_secs(5)).watchdog(true))
//!     .await?;
//! store.write(guard.fencing_token(), "v2.1.0")?;
//!
//! // Another holder after us gets a larger token; our stale token is refused.
//! let stale = guard.fencing_token();
//! guard.release().await?;
//! let next = locks.acquire("firmware:device-42", Duration::from_secs(5)).await?;
//! assert!(next.fencing_token() > stale);
//! store.write(next.fencing_token(), "v2.1.1")?;
//! assert!(store.write(stale, "v2.0.0").is_err());
//! next.release().await?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Feature flags
//!
//! None.
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

mod errors;
mod family;
mod local;
mod local_family;
mod multi;
mod name;
mod notify;
mod redis_lock;
mod redlock;
mod scripts;
mod topology;
mod util;

#[doc(inline)]
pub use family::{RedisFairLock, RedisRwLock, RedisSemaphore};
#[doc(inline)]
pub use local::{DEFAULT_MAX_LOCKS, LocalLock};
#[doc(inline)]
pub use local_family::{LocalFairLock, LocalRwLock, LocalSemaphore};
#[doc(inline)]
pub use multi::{MAX_MULTI, MultiGuard, MultiLock};
#[doc(inline)]
pub use name::{MAX_NAME_LEN, check_name};
#[doc(inline)]
pub use redis_lock::{
    DEFAULT_HANDOFF_WINDOW, DEFAULT_OP_TIMEOUT, DEFAULT_PREFIX, DEFAULT_QUEUE_ENTRY_TTL,
    DEFAULT_TTL, MAX_POOL_SIZE, RedisLock, RedisLockBuilder,
};
#[doc(inline)]
pub use redlock::{Redlock, RedlockBuilder};
#[doc(inline)]
pub use topology::RedisConnection;
