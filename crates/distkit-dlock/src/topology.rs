//! Where a `RedisLock`'s Redis is: one server, or the primary that Redis Sentinel names.
//!
//! Both give the lock the same two things: a pool of multiplexed connections to the primary,
//! and a client for the pub/sub connection. With Sentinel both ask the sentinels for the
//! primary each time they connect, so after a promotion the next connection (a failed one is
//! dropped at once) goes to the new primary, and the waiters' subscriptions move with it.

use std::time::Duration;

use distkit_core::Error;
use redis::aio::MultiplexedConnection;
use redis::sentinel::{SentinelClient, SentinelServerType};

use crate::errors::{from_pool, from_redis};

/// The deployment a lock service talks to.
#[derive(Clone, Debug)]
pub(crate) enum Topology {
    /// One server at this URL.
    Single(String),
    /// The primary of `master` as these sentinels report it.
    Sentinel {
        master: String,
        sentinels: Vec<String>,
    },
}

/// Connections to the primary.
pub(crate) enum Pool {
    Single(deadpool_redis::Pool),
    Sentinel(deadpool_redis::sentinel::Pool),
}

/// A connection checked out of a [`Pool`]; it goes back when dropped.
pub(crate) enum Pooled {
    // Held only to keep the connection checked out.
    Single(#[allow(dead_code)] deadpool_redis::Connection),
    Sentinel(#[allow(dead_code)] deadpool_redis::sentinel::Connection),
}

/// Where the pub/sub connection goes.
pub(crate) enum PubSubSource {
    Single(redis::Client),
    Sentinel(tokio::sync::Mutex<SentinelClient>),
}

impl std::fmt::Debug for PubSubSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Single(_) => "PubSubSource::Single",
            Self::Sentinel(_) => "PubSubSource::Sentinel",
        })
    }
}

impl PubSubSource {
    /// A client for the current primary.
    pub(crate) async fn client(&self) -> redis::RedisResult<redis::Client> {
        match self {
            Self::Single(c) => Ok(c.clone()),
            Self::Sentinel(s) => s.lock().await.async_get_client().await,
        }
    }
}

fn bad_url(e: impl std::fmt::Display) -> Error {
    Error::invalid_input(
        "redis url",
        format!("{e} (expected redis://[:password@]host:port/[db])"),
    )
}

impl Topology {
    /// The pool, the pub/sub source and a description of the endpoint for messages.
    pub(crate) fn connect(
        &self,
        pool_size: usize,
        op_timeout: Duration,
    ) -> Result<(Pool, PubSubSource, String), Error> {
        let mut pool_cfg = deadpool_redis::PoolConfig::new(pool_size);
        pool_cfg.timeouts.wait = Some(op_timeout);
        pool_cfg.timeouts.create = Some(op_timeout);
        pool_cfg.timeouts.recycle = Some(op_timeout);
        match self {
            Self::Single(url) => {
                let client = redis::Client::open(url.as_str()).map_err(bad_url)?;
                let endpoint = client.get_connection_info().addr().to_string();
                let mut cfg = deadpool_redis::Config::from_url(url.as_str());
                cfg.pool = Some(pool_cfg);
                let pool = cfg
                    .create_pool(Some(deadpool_redis::Runtime::Tokio1))
                    .map_err(|e| Error::invalid_input("redis url", e.to_string()))?;
                Ok((Pool::Single(pool), PubSubSource::Single(client), endpoint))
            }
            Self::Sentinel { master, sentinels } => {
                if sentinels.is_empty() {
                    return Err(Error::invalid_input(
                        "sentinels",
                        "give at least one sentinel URL (three or more in production)",
                    ));
                }
                if master.is_empty() {
                    return Err(Error::invalid_input("sentinel master", "it is empty"));
                }
                let mut addrs = Vec::with_capacity(sentinels.len());
                for url in sentinels {
                    let c = redis::Client::open(url.as_str()).map_err(bad_url)?;
                    addrs.push(c.get_connection_info().addr().to_string());
                }
                let client = SentinelClient::build(
                    sentinels.clone(),
                    master.clone(),
                    None,
                    SentinelServerType::Master,
                )
                .map_err(bad_url)?;
                let mut cfg = deadpool_redis::sentinel::Config::from_urls(
                    sentinels.clone(),
                    master.clone(),
                    deadpool_redis::sentinel::SentinelServerType::Master,
                );
                cfg.pool = Some(pool_cfg);
                let pool = cfg
                    .create_pool(Some(deadpool_redis::Runtime::Tokio1))
                    .map_err(|e| Error::invalid_input("sentinels", e.to_string()))?;
                let endpoint = format!("sentinel master {master} via {}", addrs.join(","));
                Ok((
                    Pool::Sentinel(pool),
                    PubSubSource::Sentinel(tokio::sync::Mutex::new(client)),
                    endpoint,
                ))
            }
        }
    }
}

impl Pool {
    /// A connection to the primary (with Sentinel, the primary the sentinels name now when a
    /// new connection is made).
    pub(crate) async fn get(
        &self,
        endpoint: &str,
        op_timeout: Duration,
    ) -> Result<(MultiplexedConnection, Pooled), Error> {
        match self {
            Self::Single(p) => {
                let c = p
                    .get()
                    .await
                    .map_err(|e| from_pool(endpoint, op_timeout, e))?;
                Ok(((*c).clone(), Pooled::Single(c)))
            }
            Self::Sentinel(p) => {
                let c = p.get().await.map_err(|e| match e {
                    deadpool_redis::sentinel::PoolError::Backend(e) => {
                        from_redis(endpoint, op_timeout, e)
                    }
                    deadpool_redis::sentinel::PoolError::Timeout(_) => Error::Timeout {
                        operation: "getting a redis connection",
                        after: op_timeout,
                    },
                    other => Error::unavailable(
                        format!("redis at {endpoint}"),
                        "no connection to the primary could be made",
                        other,
                    ),
                })?;
                Ok(((*c).clone(), Pooled::Sentinel(c)))
            }
        }
    }
}
