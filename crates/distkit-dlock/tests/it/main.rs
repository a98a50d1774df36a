//! Public-API tests of distkit-dlock against real `redis-server` processes started by the
//! testkit on free loopback ports.

mod cluster;
mod family;
mod hostile;
mod lifecycle_and_input;
mod local;
mod multi;
mod redis;
mod redlock;
mod sentinel;

use std::time::Duration;

use distkit_dlock::RedisLock;
use distkit_testkit::RedisServer;

/// A private server and a lock service on it with a short default TTL.
pub(crate) fn server_and_lock(ttl: Duration) -> (RedisServer, RedisLock) {
    let server = RedisServer::start().expect("redis-server starts (cargo xtask test installs it)");
    let lock = RedisLock::builder(server.url())
        .ttl(ttl)
        .op_timeout(Duration::from_millis(500))
        .build()
        .expect("valid settings");
    (server, lock)
}
