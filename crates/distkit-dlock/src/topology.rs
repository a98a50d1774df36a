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

impl Conn {
    /// `WAIT replicas timeout_ms` on the server that took this connection's last write to
    /// `key`: the one server, or on a cluster the primary owning `key`'s slot (the cluster
    /// connection would otherwise send `WAIT` to every primary and report the least).
    pub(crate) async fn wait_replicas(
        &mut self,
        replicas: u32,
        timeout_ms: u64,
        key: &str,
    ) -> redis::RedisResult<i64> {
        let mut wait = redis::cmd("WAIT");
        wait.arg(replicas).arg(timeout_ms);
        match self {
            Self::Single(c) => wait.query_async(c).await,
            Self::Cluster(c) => {
                use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
                let owner = Route::with_key(key, SlotAddr::Master);
                let reply = c
                    .route_command(
                        wait,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(owner)),
                    )
                    .await?;
                Ok(redis::from_redis_value(reply)?)
            }
        }
    }
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

/// A connection of a lock service's pool, to the deployment it uses: the server, the
/// primary the sentinels named when it was made, or the cluster (each command routed by its
/// keys). It goes back to the pool when dropped. Get one with
/// [`RedisLock::connection`](crate::RedisLock::connection) to keep companion data beside the
/// locks (a leader note, a fenced store's records); commands on it are bounded by the
/// service's op timeout.
pub struct RedisConnection {
    pub(crate) conn: Conn,
    pub(crate) _pooled: Pooled,
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.conn {
            Conn::Single(_) => "RedisConnection::Single",
            Conn::Cluster(_) => "RedisConnection::Cluster",
        })
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        self.conn.req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        self.conn.req_packed_commands(pipeline, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.conn.get_db()
    }
}

/// Connections to the primary.
pub(crate) enum Pool {
    Single(deadpool_redis::Pool),
    Sentinel(deadpool_redis::sentinel::Pool),
    Cluster(deadpool::managed::Pool<ClusterManager>),
}

/// A connection checked out of a [`Pool`]; it goes back when dropped.
pub(crate) enum Pooled {
    // Held only to keep the connection checked out.
    Single(#[allow(dead_code)] deadpool_redis::Connection),
    Sentinel(#[allow(dead_code)] deadpool_redis::sentinel::Connection),
    Cluster(#[allow(dead_code)] deadpool::managed::Object<ClusterManager>),
}

/// Makes a pool's cluster connections, as deadpool-redis's cluster manager does, but with a
/// connect timeout per node: a cluster connection first connects to every seed node and
/// waits for all of them, so one seed that accepts and then answers nothing (a frozen
/// process) held every new connection for the redis crate's 1 s default, longer than an op
/// timeout of 1 s (an outside test saw it). It also bounds every command by the op timeout.
pub(crate) struct ClusterManager {
    client: redis::cluster::ClusterClient,
    pings: std::sync::atomic::AtomicUsize,
}

impl deadpool::managed::Manager for ClusterManager {
    type Type = ClusterConnection;
    type Error = redis::RedisError;

    async fn create(&self) -> Result<ClusterConnection, redis::RedisError> {
        self.client.get_async_connection().await
    }

    async fn recycle(
        &self,
        conn: &mut ClusterConnection,
        _: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<redis::RedisError> {
        let n = self
            .pings
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .to_string();
        let echoed: String = redis::cmd("PING").arg(&n).query_async(conn).await?;
        if echoed == n {
            Ok(())
        } else {
            Err(deadpool::managed::RecycleError::message(
                "a cluster node answered PING with another text",
            ))
        }
    }
}

/// The connect timeout per cluster node: a quarter of the op timeout, so that the seed
/// nodes and then the slot map's nodes fit in one op timeout with room to spare.
fn node_connect_timeout(op_timeout: Duration) -> Duration {
    (op_timeout / 4).max(Duration::from_millis(1))
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

/// The server a URL names, in one spelling whatever the URL's: `ip:port` for an address
/// written in any numeric form (`127.1`, `2130706433`, `0x7f.0.0.1`, `[::ffff:127.0.0.1]`,
/// a trailing dot), the lower-cased
/// host name otherwise; the database, user, password and options do not change the server.
/// No name is resolved over the network. An unparsable URL stays as written (the build
/// refuses it later).
fn server_address(url: &str) -> String {
    let Ok(client) = redis::Client::open(url.trim()) else {
        return url.trim().to_owned();
    };
    let (host, port) = match client.get_connection_info().addr() {
        redis::ConnectionAddr::Tcp(host, port)
        | redis::ConnectionAddr::TcpTls { host, port, .. } => (host.clone(), *port),
        redis::ConnectionAddr::Unix(path) => return format!("unix:{}", path.display()),
        other => return other.to_string(),
    };
    // A trailing dot names the same host (the DNS root).
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let bare = bare.strip_suffix('.').unwrap_or(bare);
    if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
        return std::net::SocketAddr::new(ip.to_canonical(), port).to_string();
    }
    if let Some(ip) = inet_aton(bare) {
        return std::net::SocketAddr::new(ip.into(), port).to_string();
    }
    format!("{}:{port}", bare.to_ascii_lowercase())
}

/// The IPv4 forms the C resolver takes without asking the network (`inet_aton`): one to
/// four parts, each decimal, octal (leading `0`) or hexadecimal (`0x`), the last filling the
/// bytes left (`127.1`, `2130706433`, `0x7f.0.0.1`, `0177.0.0.1`).
fn inet_aton(s: &str) -> Option<std::net::Ipv4Addr> {
    let parts: Vec<u64> = s
        .split('.')
        .map(|p| {
            if let Some(hex) = p.strip_prefix("0x").or_else(|| p.strip_prefix("0X")) {
                u64::from_str_radix(hex, 16).ok()
            } else if p.len() > 1 && p.starts_with('0') {
                u64::from_str_radix(&p[1..], 8).ok()
            } else if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) {
                p.parse().ok()
            } else {
                None
            }
        })
        .collect::<Option<_>>()?;
    let (last, head) = parts.split_last()?;
    if head.len() > 3 || head.iter().any(|p| *p > 255) {
        return None;
    }
    let room = 8 * (4 - head.len() as u32);
    if room < 64 && *last >= 1u64 << room {
        return None;
    }
    let mut n = 0u64;
    for (i, p) in head.iter().enumerate() {
        n |= p << (24 - 8 * i as u32);
    }
    u32::try_from(n | last).ok().map(std::net::Ipv4Addr::from)
}

fn bad_url(e: impl std::fmt::Display) -> Error {
    Error::invalid_input(
        "redis url",
        format!("{e} (expected redis://[:password@]host:port/[db])"),
    )
}

impl Topology {
    /// Names for the servers this deployment is reached through: two deployments that share
    /// one are not independent (Redlock refuses them).
    pub(crate) fn servers(&self) -> Vec<String> {
        match self {
            Self::Single(url) => vec![server_address(url)],
            Self::Sentinel { master, sentinels } => sentinels
                .iter()
                .map(|s| format!("{master} via {}", server_address(s)))
                .collect(),
            Self::Cluster(nodes) => nodes.iter().map(|n| server_address(n)).collect(),
        }
    }

    /// The pool, the pub/sub source and a description of the endpoint for messages.
    pub(crate) fn connect(
        &self,
        pool_size: usize,
        op_timeout: Duration,
    ) -> Result<(Pool, PubSubSource, String), Error> {
        let (pubsub, endpoint) = match self {
            Self::Single(url) => {
                let client = redis::Client::open(url.as_str()).map_err(bad_url)?;
                let endpoint = client.get_connection_info().addr().to_string();
                (PubSubSource::Single(client), endpoint)
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
                let endpoint = format!("sentinel master {master} via {}", addrs.join(","));
                (
                    PubSubSource::Sentinel(tokio::sync::Mutex::new(client)),
                    endpoint,
                )
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
                let endpoint = format!("cluster via {}", addrs.join(","));
                (
                    PubSubSource::Cluster(clients, std::sync::atomic::AtomicUsize::new(0)),
                    endpoint,
                )
            }
        };
        Ok((self.pool(pool_size, op_timeout)?, pubsub, endpoint))
    }

    /// A pool of up to `size` connections (made on first use).
    pub(crate) fn pool(&self, size: usize, op_timeout: Duration) -> Result<Pool, Error> {
        let mut pool_cfg = deadpool_redis::PoolConfig::new(size);
        pool_cfg.timeouts.wait = Some(op_timeout);
        pool_cfg.timeouts.create = Some(op_timeout);
        pool_cfg.timeouts.recycle = Some(op_timeout);
        match self {
            Self::Single(url) => {
                let mut cfg = deadpool_redis::Config::from_url(url.as_str());
                cfg.pool = Some(pool_cfg);
                cfg.create_pool(Some(deadpool_redis::Runtime::Tokio1))
                    .map(Pool::Single)
                    .map_err(|e| Error::invalid_input("redis url", e.to_string()))
            }
            Self::Sentinel { master, sentinels } => {
                let mut cfg = deadpool_redis::sentinel::Config::from_urls(
                    sentinels.clone(),
                    master.clone(),
                    deadpool_redis::sentinel::SentinelServerType::Master,
                );
                cfg.pool = Some(pool_cfg);
                cfg.create_pool(Some(deadpool_redis::Runtime::Tokio1))
                    .map(Pool::Sentinel)
                    .map_err(|e| Error::invalid_input("sentinels", e.to_string()))
            }
            Self::Cluster(nodes) => {
                let client = redis::cluster::ClusterClientBuilder::new(nodes.clone())
                    .connection_timeout(node_connect_timeout(op_timeout))
                    .response_timeout(op_timeout)
                    .build()
                    .map_err(bad_url)?;
                let manager = ClusterManager {
                    client,
                    pings: std::sync::atomic::AtomicUsize::new(0),
                };
                deadpool::managed::Pool::builder(manager)
                    .config(pool_cfg)
                    .runtime(deadpool::Runtime::Tokio1)
                    .build()
                    .map(Pool::Cluster)
                    .map_err(|e| Error::invalid_input("cluster nodes", e.to_string()))
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
        // The pool's own timeouts apply one after another (recycling an idle connection,
        // then making a new one), so together they can exceed the op timeout: bound the lot.
        match tokio::time::timeout(op_timeout, self.get_unbounded(endpoint, op_timeout)).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout {
                operation: "getting a redis connection",
                after: op_timeout,
            }),
        }
    }

    async fn get_unbounded(
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

#[cfg(test)]
mod tests {
    use super::{inet_aton, server_address};

    #[test]
    fn numeric_spellings_name_one_server() {
        for s in [
            "127.0.0.1",
            "127.1",
            "127.0.1",
            "2130706433",
            "0x7f.0.0.1",
            "0x7f000001",
            "0177.0.0.1",
            "0x7F.0.0.01",
        ] {
            assert_eq!(inet_aton(s), Some([127, 0, 0, 1].into()), "{s}");
        }
        for s in [
            "",
            ".",
            "1.2.3.4.5",
            "256.0.0.1",
            "1.2.3.256",
            "0x",
            "08",
            "a.b",
            "1..2",
            "4294967296",
        ] {
            assert_eq!(inet_aton(s), None, "{s}");
        }
        let one = server_address("redis://127.0.0.1:7/");
        for other in [
            "redis://127.0.0.1.:7/",
            "redis://0x7f.0.0.1:7/",
            "redis://[::ffff:127.0.0.1]:7/1",
        ] {
            assert_eq!(server_address(other), one, "{other}");
        }
        assert_ne!(server_address("redis://127.0.0.2:7/"), one);
        assert_eq!(
            server_address("redis://Cache.Example:7/"),
            "cache.example:7"
        );
    }
}
