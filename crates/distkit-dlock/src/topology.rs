//! Where a `RedisLock`'s Redis is: one server, the primary that Redis Sentinel names, or a
//! Redis Cluster.
//!
//! Each gives the lock the same two things: a pool of connections that carry its commands
//! ([`Conn`]), and a client for the pub/sub connection. With Sentinel both ask the sentinels
//! for the primary each time they connect, so after a promotion the next connection (a failed
//! one is dropped at once) goes to the new primary, and the waiters' subscriptions move with
//! it. With Cluster the redis crate's cluster connection routes each script by its keys (one
//! lock's keys share a hash tag, so one slot) and follows MOVED and ASK; pub/sub uses any
//! node, since a cluster delivers every PUBLISH to every node.

use std::time::Duration;

use distkit_core::Error;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelServerType};

use crate::errors::from_pool;

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
    /// A Redis Cluster reached through these seed nodes.
    Cluster(Vec<String>),
}

/// A connection that carries commands: to one server, or to a cluster (routed per command).
#[derive(Clone)]
pub(crate) enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// Connections to the primary.
pub(crate) enum Pool {
    Single(deadpool_redis::Pool),
    Sentinel(deadpool_redis::sentinel::Pool),
    Cluster(deadpool_redis::cluster::Pool),
}

/// A connection checked out of a [`Pool`]; it goes back when dropped.
pub(crate) enum Pooled {
    // Held only to keep the connection checked out.
    Single(#[allow(dead_code)] deadpool_redis::Connection),
    Sentinel(#[allow(dead_code)] deadpool_redis::sentinel::Connection),
    Cluster(#[allow(dead_code)] deadpool_redis::cluster::Connection),
}

/// Where the pub/sub connection goes.
pub(crate) enum PubSubSource {
    Single(redis::Client),
    Sentinel(tokio::sync::Mutex<SentinelClient>),
    /// Any node of a cluster: each reconnection tries the next.
    Cluster(Vec<redis::Client>, std::sync::atomic::AtomicUsize),
}

impl std::fmt::Debug for PubSubSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Single(_) => "PubSubSource::Single",
            Self::Sentinel(_) => "PubSubSource::Sentinel",
            Self::Cluster(..) => "PubSubSource::Cluster",
        })
    }
}

impl PubSubSource {
    /// A client for the current primary.
    pub(crate) async fn client(&self) -> redis::RedisResult<redis::Client> {
        match self {
            Self::Single(c) => Ok(c.clone()),
            Self::Sentinel(s) => s.lock().await.async_get_client().await,
            Self::Cluster(nodes, next) => {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(nodes[i % nodes.len()].clone())
            }
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
            Self::Cluster(nodes) => {
                if nodes.is_empty() {
                    return Err(Error::invalid_input(
                        "cluster nodes",
                        "give at least one node URL (several, in case one is down)",
                    ));
                }
                let mut clients = Vec::with_capacity(nodes.len());
                let mut addrs = Vec::with_capacity(nodes.len());
                for url in nodes {
                    let c = redis::Client::open(url.as_str()).map_err(bad_url)?;
                    addrs.push(c.get_connection_info().addr().to_string());
                    clients.push(c);
                }
                let mut cfg = deadpool_redis::cluster::Config::from_urls(nodes.clone());
                cfg.pool = Some(pool_cfg);
                let pool = cfg
                    .create_pool(Some(deadpool_redis::Runtime::Tokio1))
                    .map_err(|e| Error::invalid_input("cluster nodes", e.to_string()))?;
                let endpoint = format!("cluster via {}", addrs.join(","));
                Ok((
                    Pool::Cluster(pool),
                    PubSubSource::Cluster(clients, std::sync::atomic::AtomicUsize::new(0)),
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
    ) -> Result<(Conn, Pooled), Error> {
        let failed = |e| from_pool(endpoint, op_timeout, e);
        match self {
            Self::Single(p) => {
                let c = p.get().await.map_err(failed)?;
                let mut mux = (*c).clone();
                // The configured limit, not the client's own 500 ms default, cuts commands.
                mux.set_response_timeout(op_timeout);
                Ok((Conn::Single(mux), Pooled::Single(c)))
            }
            Self::Sentinel(p) => {
                let c = p.get().await.map_err(failed)?;
                let mut mux = (*c).clone();
                mux.set_response_timeout(op_timeout);
                Ok((Conn::Single(mux), Pooled::Sentinel(c)))
            }
            Self::Cluster(p) => {
                let c = p.get().await.map_err(failed)?;
                Ok((Conn::Cluster((*c).clone()), Pooled::Cluster(c)))
            }
        }
    }
}
