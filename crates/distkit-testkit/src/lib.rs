//! Test support for distkit: private `redis-server` processes on free loopback ports.
//!
//! # Overview
//!
//! Tests of Redis-backed code run against real servers, never mocks. [`RedisServer::start`]
//! spawns a `redis-server` bound to `127.0.0.1` on a free port, with a private temporary
//! directory and persistence off, waits until it answers `PING`, and kills it when dropped.
//! Tests simulate failures with [`RedisServer::kill`], [`RedisServer::stop`],
//! [`RedisServer::pause`] / [`RedisServer::resume`] and [`RedisServer::restart`], and start as
//! many servers as a multi-instance test needs.
//!
//! [`RedisServer::command`] speaks RESP over a plain socket, so a test can inspect or tamper
//! with keys "from outside" without the client under test.
//!
//! [`report`] writes benchmark figures where the project keeps them.
//!
//! # Example
//!
//! ```
//! use distkit_testkit::{RedisServer, Reply};
//!
//! let mut redis = RedisServer::start()?;
//! assert!(redis.url().starts_with("redis://127.0.0.1:"));
//! assert_eq!(redis.command(&["SET", "k", "v"])?, Reply::Status("OK".into()));
//! redis.kill()?;
//! assert!(redis.ping().is_err());
//! redis.restart()?;
//! // Persistence is off: a restarted server starts empty.
//! assert_eq!(redis.command(&["GET", "k"])?, Reply::Nil);
//! # Ok::<(), distkit_testkit::TestkitError>(())
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

pub mod report;
mod resp;
pub mod tasks;

use std::io::{BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use resp::Reply;

/// The command that installs `redis-server` on Debian and Ubuntu.
pub const INSTALL_HINT: &str = "apt-get update && apt-get install -y redis-server";

/// How long [`RedisServer::start`] waits for the first `PONG`.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// What can go wrong while running a test server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestkitError {
    /// `redis-server` is not on `PATH`.
    #[error(
        "redis-server is not installed or not on PATH; install it with `{INSTALL_HINT}` (cargo xtask test does this itself when run as root)"
    )]
    NotInstalled,
    /// The server process could not be spawned or signalled.
    #[error("could not {action} redis-server")]
    Process {
        /// What was being done.
        action: &'static str,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The server exited or never answered `PING`.
    #[error("redis-server on port {port} did not come up: {reason}")]
    NotReady {
        /// Its port.
        port: u16,
        /// What was seen, including the end of its log.
        reason: String,
    },
    /// Talking to the server failed.
    #[error("redis-server on port {port} did not answer")]
    Io {
        /// Its port.
        port: u16,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
    /// The server answered something the RESP reader does not understand.
    #[error("redis-server on port {port} sent an unreadable reply: {reason}")]
    BadReply {
        /// Its port.
        port: u16,
        /// What was wrong.
        reason: String,
    },
}

/// A private `redis-server` process for one test.
#[derive(Debug)]
pub struct RedisServer {
    binary: PathBuf,
    port: u16,
    password: Option<String>,
    role: Role,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// What a server process is.
#[derive(Debug, Default, Clone)]
enum Role {
    #[default]
    Primary,
    /// A replica of the server on this port.
    Replica(u16),
    /// A node of a Redis Cluster (`--cluster-enabled yes`).
    ClusterNode,
    /// A sentinel watching the primary on `primary` as master `distkit`: it needs `quorum`
    /// sentinels to agree the primary is down, and thinks it down after `down_after_ms`.
    Sentinel {
        primary: u16,
        quorum: u8,
        down_after_ms: u32,
    },
}

/// Configures a [`RedisServer`] before it starts.
#[derive(Debug, Default, Clone)]
#[must_use]
pub struct RedisServerBuilder {
    password: Option<String>,
    role: Role,
}

impl RedisServerBuilder {
    /// Starts the server as a replica of the one on `port` (`--replicaof`).
    pub fn replica_of(mut self, port: u16) -> Self {
        self.role = Role::Replica(port);
        self
    }

    /// Starts a sentinel (`redis-server --sentinel`) that monitors the primary on `port` as
    /// master [`SENTINEL_MASTER`], with a quorum of 2 and a primary declared down after
    /// 500 ms without an answer.
    pub fn sentinel_of(mut self, port: u16) -> Self {
        self.role = Role::Sentinel {
            primary: port,
            quorum: 2,
            down_after_ms: 500,
        };
        self
    }

    /// Requires clients to `AUTH` with `password` (`requirepass`).
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// Spawns the server and waits until it answers.
    ///
    /// # Errors
    ///
    /// [`TestkitError::NotInstalled`] with the install command when `redis-server` is missing;
    /// [`TestkitError::NotReady`] when it did not answer within ten seconds.
    pub fn start(self) -> Result<RedisServer, TestkitError> {
        let binary = find_redis_server().ok_or(TestkitError::NotInstalled)?;
        let dir = tempfile::Builder::new()
            .prefix("distkit-redis-")
            .tempdir()
            .map_err(|source| TestkitError::Process {
                action: "create a temporary directory for",
                source,
            })?;
        let mut server = RedisServer {
            binary,
            port: pick_port()?,
            password: self.password,
            role: self.role,
            dir,
            child: None,
        };
        // A free port can be taken by another process between our probe and redis' bind, so
        // a failed start is retried on a new port.
        let mut attempts = 0;
        loop {
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(e) if attempts >= 4 => return Err(e),
                Err(_) => {
                    attempts += 1;
                    server.port = pick_port()?;
                }
            }
        }
    }
}

impl RedisServer {
    /// Starts a server with default settings (no password).
    ///
    /// # Errors
    ///
    /// As for [`RedisServerBuilder::start`].
    pub fn start() -> Result<Self, TestkitError> {
        Self::builder().start()
    }

    /// Starts configuring a server.
    pub fn builder() -> RedisServerBuilder {
        RedisServerBuilder::default()
    }

    /// Starts `n` independent servers (for Redlock tests).
    ///
    /// # Errors
    ///
    /// As for [`RedisServerBuilder::start`].
    pub fn start_many(n: usize) -> Result<Vec<Self>, TestkitError> {
        (0..n).map(|_| Self::start()).collect()
    }

    /// The server's port on 127.0.0.1.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's socket address.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// A `redis://` URL for clients, with the password when one is set.
    #[must_use]
    pub fn url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/", self.port),
            None => format!("redis://127.0.0.1:{}/", self.port),
        }
    }

    /// The process id, while running.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is running (it may be paused).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Sends `PING` and expects `PONG`.
    ///
    /// # Errors
    ///
    /// When the server does not answer or answers something else.
    pub fn ping(&self) -> Result<(), TestkitError> {
        match self.command(&["PING"])? {
            Reply::Status(s) if s == "PONG" => Ok(()),
            other => Err(TestkitError::BadReply {
                port: self.port,
                reason: format!("PING answered {other:?}"),
            }),
        }
    }

    /// Runs one command on a fresh connection (authenticating first when a password is set)
    /// and returns the reply. Error replies come back as [`Reply::Error`], not as `Err`.
    ///
    /// # Errors
    ///
    /// When the connection fails or times out (two seconds) or the reply cannot be read.
    pub fn command(&self, args: &[&str]) -> Result<Reply, TestkitError> {
        let io = |source| TestkitError::Io {
            port: self.port,
            source,
        };
        let mut stream =
            TcpStream::connect_timeout(&self.addr(), Duration::from_secs(2)).map_err(io)?;
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(io)?;
        stream
            .set_write_timeout(Some(Duration::from_secs(2)))
            .map_err(io)?;
        let mut reader = BufReader::new(stream.try_clone().map_err(io)?);
        if let Some(p) = &self.password {
            stream
                .write_all(&resp::encode(&["AUTH", p.as_str()]))
                .map_err(io)?;
            if let Reply::Error(e) = resp::read(&mut reader, self.port)? {
                return Ok(Reply::Error(e));
            }
        }
        stream.write_all(&resp::encode(args)).map_err(io)?;
        resp::read(&mut reader, self.port)
    }

    /// Whether the text `args` answer contains `want` (false when the server does not answer
    /// with text).
    #[must_use]
    pub fn reports(&self, args: &[&str], want: &str) -> bool {
        self.command(args)
            .ok()
            .and_then(|r| r.as_text())
            .is_some_and(|t| t.contains(want))
    }

    /// Kills the process with `SIGKILL` (a crash) and waits for it to exit.
    ///
    /// # Errors
    ///
    /// When the signal cannot be sent.
    pub fn kill(&mut self) -> Result<(), TestkitError> {
        if let Some(mut child) = self.child.take() {
            // A paused process dies on SIGKILL too.
            child.kill().map_err(|source| TestkitError::Process {
                action: "kill",
                source,
            })?;
            child.wait().map_err(|source| TestkitError::Process {
                action: "reap",
                source,
            })?;
        }
        Ok(())
    }

    /// Stops the process with `SIGTERM` (a clean shutdown) and waits for it to exit.
    ///
    /// # Errors
    ///
    /// When the signal cannot be sent.
    pub fn stop(&mut self) -> Result<(), TestkitError> {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), "TERM")?;
            signal(child.id(), "CONT")?;
            child.wait().map_err(|source| TestkitError::Process {
                action: "reap",
                source,
            })?;
        }
        Ok(())
    }

    /// Freezes the process with `SIGSTOP`: it keeps its sockets but answers nothing, like a
    /// server stuck in a long pause.
    ///
    /// # Errors
    ///
    /// When the signal cannot be sent.
    pub fn pause(&mut self) -> Result<(), TestkitError> {
        match &self.child {
            Some(c) => signal(c.id(), "STOP"),
            None => Ok(()),
        }
    }

    /// Resumes a paused process with `SIGCONT`.
    ///
    /// # Errors
    ///
    /// When the signal cannot be sent.
    pub fn resume(&mut self) -> Result<(), TestkitError> {
        match &self.child {
            Some(c) => signal(c.id(), "CONT"),
            None => Ok(()),
        }
    }

    /// Kills the server if it runs and starts it again on the same port, empty.
    ///
    /// # Errors
    ///
    /// As for [`RedisServerBuilder::start`].
    pub fn restart(&mut self) -> Result<(), TestkitError> {
        self.kill()?;
        // The port was just released by our own process; a few tries cover TIME_WAIT races.
        let mut last = None;
        for _ in 0..20 {
            match self.spawn() {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(last.unwrap_or(TestkitError::NotReady {
            port: self.port,
            reason: "no attempt was made".into(),
        }))
    }

    /// The server's log so far.
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn spawn(&mut self) -> Result<(), TestkitError> {
        let port = self.port.to_string();
        let dir = self.dir.path().to_string_lossy().into_owned();
        let log = self.log_path().to_string_lossy().into_owned();
        let mut cmd = Command::new(&self.binary);
        if let Role::Sentinel {
            primary,
            quorum,
            down_after_ms,
        } = self.role
        {
            // A sentinel needs a config file it can rewrite.
            let conf = self.dir.path().join("sentinel.conf");
            let text = format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\nlogfile {log}\n\
                 sentinel resolve-hostnames no\n\
                 sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {primary} {quorum}\n\
                 sentinel down-after-milliseconds {SENTINEL_MASTER} {down_after_ms}\n\
                 sentinel failover-timeout {SENTINEL_MASTER} 3000\n\
                 sentinel parallel-syncs {SENTINEL_MASTER} 1\n"
            );
            std::fs::write(&conf, text).map_err(|source| TestkitError::Process {
                action: "write the sentinel config for",
                source,
            })?;
            cmd.arg(&conf).arg("--sentinel");
        } else {
            cmd.args(["--port", &port, "--bind", "127.0.0.1", "--dir", &dir])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .args(["--logfile", &log, "--databases", "1"]);
            if let Some(p) = &self.password {
                cmd.args(["--requirepass", p]);
            }
            if let Role::Replica(primary) = self.role {
                cmd.args(["--replicaof", "127.0.0.1", &primary.to_string()]);
            }
            if let Role::ClusterNode = self.role {
                let conf = self.dir.path().join("nodes.conf");
                cmd.args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
                    .arg("--cluster-config-file")
                    .arg(conf);
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().map_err(|source| TestkitError::Process {
            action: "spawn",
            source,
        })?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(c) = &mut self.child
                && let Ok(Some(status)) = c.try_wait()
            {
                self.child = None;
                return Err(self.not_ready(format!("it exited with {status}")));
            }
            if self.ping().is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = self.kill();
                return Err(self.not_ready(format!("no PONG within {START_TIMEOUT:?}")));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn not_ready(&self, what: String) -> TestkitError {
        let log = self.log();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        TestkitError::NotReady {
            port: self.port,
            reason: format!("{what}; log: {}", tail.join(" | ")),
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// The master name the testkit's sentinels monitor.
pub const SENTINEL_MASTER: &str = "distkit";

/// A Redis Sentinel deployment on loopback: one primary, its replicas, and sentinels that
/// watch it and promote a replica when it dies (`redis-server --sentinel`, no other package).
#[derive(Debug)]
pub struct SentinelSetup {
    /// The data servers; index 0 started as the primary.
    pub servers: Vec<RedisServer>,
    /// The sentinels.
    pub sentinels: Vec<RedisServer>,
}

impl SentinelSetup {
    /// Starts a primary, `replicas` replicas and `sentinels` sentinels, and waits (at most
    /// 30 s) until the replicas are in sync and every sentinel knows every replica and every
    /// other sentinel, so a failover can happen.
    ///
    /// For failovers the tests can count on, the first sentinel notices a dead primary after
    /// 500 ms and may act alone (quorum 1; it still needs a majority of the sentinels' votes
    /// to fail over), the others only after 3 s: by then they have voted for the first, so
    /// two sentinels do not promote two replicas in competing elections (which happened in
    /// about half the runs with three equal sentinels, and took the sentinels some 20 s to
    /// settle).
    ///
    /// # Errors
    ///
    /// As for [`RedisServerBuilder::start`], and [`TestkitError::NotReady`] when the
    /// deployment does not settle in time.
    pub fn start(replicas: usize, sentinels: usize) -> Result<Self, TestkitError> {
        let primary = RedisServer::start()?;
        let port = primary.port();
        let mut servers = vec![primary];
        for _ in 0..replicas {
            servers.push(RedisServer::builder().replica_of(port).start()?);
        }
        let sentinels = (0..sentinels)
            .map(|i| {
                let mut b = RedisServer::builder();
                b.role = Role::Sentinel {
                    primary: port,
                    quorum: 1,
                    down_after_ms: if i == 0 { 500 } else { 3000 },
                };
                b.start()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let setup = Self { servers, sentinels };
        setup.wait_until(
            Duration::from_secs(30),
            "replicas in sync and sentinels acquainted",
            |s| s.settled(port, replicas),
        )?;
        Ok(setup)
    }

    fn settled(&self, primary: u16, replicas: usize) -> bool {
        let synced = self.servers[0]
            .command(&["INFO", "replication"])
            .ok()
            .and_then(|r| r.as_text())
            .is_some_and(|t| {
                t.lines()
                    .filter(|l| l.starts_with("slave") && l.contains("state=online"))
                    .count()
                    == replicas
            });
        synced
            && self.sentinels.iter().all(|s| {
                let count = |args: &[&str]| match s.command(args) {
                    Ok(Reply::Array(v)) => v.len(),
                    _ => 0,
                };
                count(&["SENTINEL", "replicas", SENTINEL_MASTER]) == replicas
                    && count(&["SENTINEL", "sentinels", SENTINEL_MASTER]) + 1
                        == self.sentinels.len()
            })
            && self.primary_port() == Some(primary)
    }

    /// The sentinels' URLs (`redis://127.0.0.1:PORT/`), for a client to discover the primary.
    #[must_use]
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels.iter().map(RedisServer::url).collect()
    }

    /// The primary's port as the first sentinel that answers reports it.
    #[must_use]
    pub fn primary_port(&self) -> Option<u16> {
        self.sentinels.iter().find_map(named_primary)
    }

    /// The data server on `port`.
    pub fn server_on(&mut self, port: u16) -> Option<&mut RedisServer> {
        self.servers.iter_mut().find(|s| s.port() == port)
    }

    /// SIGKILLs the current primary and returns its port.
    ///
    /// # Errors
    ///
    /// [`TestkitError::NotReady`] when no sentinel names a primary, or the kill fails.
    pub fn kill_primary(&mut self) -> Result<u16, TestkitError> {
        let port = self.primary_port().ok_or_else(|| TestkitError::NotReady {
            port: 0,
            reason: "no sentinel names a primary".into(),
        })?;
        if let Some(s) = self.server_on(port) {
            s.kill()?;
        }
        Ok(port)
    }

    /// Waits (at most `timeout`) until the failover has settled and returns the new
    /// primary's port: every sentinel names the same primary other than `old`, it answers as
    /// a primary, and every other running data server replicates from it.
    ///
    /// Settled matters: when two sentinels win elections in different epochs, two replicas
    /// are promoted and both act as primaries (for about 20 s here) until the sentinels
    /// agree on the later one. A client must survive that window; a test that wants to
    /// look at the outcome waits for this.
    ///
    /// # Errors
    ///
    /// [`TestkitError::NotReady`] when no failover completes in time.
    pub fn wait_for_failover(&self, old: u16, timeout: Duration) -> Result<u16, TestkitError> {
        let mut found = None;
        self.wait_until(
            timeout,
            "a replica promoted and the rest following it",
            |s| {
                found = s.settled_primary().filter(|p| *p != old);
                found.is_some()
            },
        )?;
        found.ok_or_else(|| TestkitError::NotReady {
            port: old,
            reason: "no primary after the failover".into(),
        })
    }

    /// The primary when every sentinel names it, it is the only running data server that
    /// answers as a primary, and the others replicate from it.
    fn settled_primary(&self) -> Option<u16> {
        let named: Vec<Option<u16>> = self.sentinels.iter().map(named_primary).collect();
        let primary = named.first().copied().flatten()?;
        if named.iter().any(|p| *p != Some(primary)) {
            return None;
        }
        let mut saw_primary = false;
        for srv in &self.servers {
            let Ok(Reply::Array(role)) = srv.command(&["ROLE"]) else {
                continue; // not running
            };
            let kind = role.first().and_then(Reply::as_text);
            if srv.port() == primary {
                saw_primary = kind.as_deref() == Some("master");
            } else {
                let follows = kind.as_deref() == Some("slave")
                    && role.get(2).and_then(|p| match p {
                        Reply::Integer(n) => u16::try_from(*n).ok(),
                        other => other.as_text()?.parse().ok(),
                    }) == Some(primary);
                if !follows {
                    return None;
                }
            }
        }
        saw_primary.then_some(primary)
    }

    fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        mut done: impl FnMut(&Self) -> bool,
    ) -> Result<(), TestkitError> {
        poll_until(
            timeout,
            self.servers[0].port(),
            &format!("the sentinel setup: {what}"),
            || done(self),
        )
    }
}

/// Checks `done` every 50 ms until it holds, or fails after `timeout` saying `what` was not
/// reached (reported against `port`).
fn poll_until(
    timeout: Duration,
    port: u16,
    what: &str,
    mut done: impl FnMut() -> bool,
) -> Result<(), TestkitError> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if done() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(TestkitError::NotReady {
        port,
        reason: format!("not reached within {timeout:?}: {what}"),
    })
}

/// The primary's port as `sentinel` names it.
fn named_primary(sentinel: &RedisServer) -> Option<u16> {
    match sentinel.command(&["SENTINEL", "get-master-addr-by-name", SENTINEL_MASTER]) {
        Ok(Reply::Array(v)) if v.len() == 2 => v[1].as_text()?.parse().ok(),
        _ => None,
    }
}

/// A Redis Cluster on loopback: `primaries` primaries with `replicas` replicas each, joined
/// by `redis-cli --cluster create` (Debian's redis-server package brings redis-cli).
#[derive(Debug)]
pub struct RedisCluster {
    /// Every node, in the order given to `redis-cli --cluster create` (primaries first).
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts the nodes, creates the cluster (the 16384 slots spread evenly over the
    /// primaries) and waits (at most 30 s) until every node reports `cluster_state:ok` and
    /// every replica's link to its primary is up.
    ///
    /// # Errors
    ///
    /// As for [`RedisServerBuilder::start`]; [`TestkitError::NotReady`] when `redis-cli`
    /// fails or the cluster does not come up.
    pub fn start(primaries: usize, replicas: usize) -> Result<Self, TestkitError> {
        let nodes = (0..primaries * (1 + replicas))
            .map(|_| {
                let mut b = RedisServer::builder();
                b.role = Role::ClusterNode;
                b.start()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let cluster = Self { nodes };
        let mut args: Vec<String> = vec!["--cluster".into(), "create".into()];
        args.extend(
            cluster
                .nodes
                .iter()
                .map(|n| format!("127.0.0.1:{}", n.port())),
        );
        args.extend(["--cluster-replicas".into(), replicas.to_string()]);
        args.push("--cluster-yes".into());
        cluster.cli(&args)?;
        // Every node sees the cluster ok, and every replica has finished its first sync.
        poll_until(
            Duration::from_secs(30),
            cluster.nodes[0].port(),
            "the cluster: cluster_state:ok with its replicas in sync",
            || {
                cluster.nodes.iter().enumerate().all(|(i, n)| {
                    n.reports(&["CLUSTER", "INFO"], "cluster_state:ok")
                        && (i < primaries
                            || n.reports(&["INFO", "replication"], "master_link_status:up"))
                })
            },
        )?;
        Ok(cluster)
    }

    /// The nodes' URLs.
    #[must_use]
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The port of the primary that owns `key`'s slot (asked of the first node).
    #[must_use]
    pub fn owner_of(&self, key: &str) -> Option<u16> {
        let slot = match self.nodes[0].command(&["CLUSTER", "KEYSLOT", key]).ok()? {
            Reply::Integer(n) => n,
            _ => return None,
        };
        let Reply::Array(ranges) = self.nodes[0].command(&["CLUSTER", "SLOTS"]).ok()? else {
            return None;
        };
        ranges.iter().find_map(|r| {
            let Reply::Array(r) = r else { return None };
            let (Reply::Integer(lo), Reply::Integer(hi)) = (r.first()?, r.get(1)?) else {
                return None;
            };
            if !(*lo..=*hi).contains(&slot) {
                return None;
            }
            let Reply::Array(primary) = r.get(2)? else {
                return None;
            };
            match primary.get(1)? {
                Reply::Integer(p) => u16::try_from(*p).ok(),
                _ => None,
            }
        })
    }

    /// The index in [`nodes`](Self::nodes) of a replica of the primary on `port` (asked of
    /// each node with `ROLE`).
    #[must_use]
    pub fn replica_of(&self, port: u16) -> Option<usize> {
        self.nodes.iter().position(|n| {
            let Ok(Reply::Array(role)) = n.command(&["ROLE"]) else {
                return false;
            };
            role.first() == Some(&Reply::Bulk(b"slave".to_vec()))
                && role.get(2) == Some(&Reply::Integer(i64::from(port)))
        })
    }

    /// Runs `redis-cli` with `args` (for `--cluster reshard` and the like), bounded to 60 s.
    ///
    /// # Errors
    ///
    /// [`TestkitError::NotReady`] when it fails or does not finish in time.
    pub fn cli(&self, args: &[String]) -> Result<String, TestkitError> {
        let cli = self
            .nodes
            .first()
            .map(|n| n.binary.with_file_name("redis-cli"))
            .filter(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("redis-cli"));
        let child = Command::new(cli)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| TestkitError::Process {
                action: "spawn redis-cli for",
                source,
            })?;
        let pid = child.id();
        // Read while it runs (a reshard prints a line per slot, more than a pipe holds).
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        let out = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(out) => out.map_err(|source| TestkitError::Process {
                action: "read redis-cli for",
                source,
            })?,
            Err(_) => {
                let _ = signal(pid, "KILL");
                return Err(TestkitError::NotReady {
                    port: self.nodes[0].port(),
                    reason: format!("redis-cli {args:?} did not finish within 60 s"),
                });
            }
        };
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            return Err(TestkitError::NotReady {
                port: self.nodes[0].port(),
                reason: format!(
                    "redis-cli {args:?} failed: {} {}",
                    text.lines().last().unwrap_or(""),
                    String::from_utf8_lossy(&out.stderr)
                ),
            });
        }
        Ok(text)
    }
}

/// Finds `redis-server` on `PATH` (or in Debian's `/usr/bin`, `/usr/sbin`).
#[must_use]
pub fn find_redis_server() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join("redis-server"))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// A port on 127.0.0.1 that was free a moment ago.
///
/// # Errors
///
/// When no loopback socket can be bound.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// `n` listeners on free loopback ports, non-blocking (ready for
/// `tokio::net::TcpListener::from_std`), with their `http://127.0.0.1:PORT` URLs. Binding all
/// of them before any node starts lets every node know every address.
///
/// # Errors
///
/// When no loopback socket can be bound.
pub fn loopback_listeners(n: usize) -> std::io::Result<(Vec<TcpListener>, Vec<String>)> {
    let listeners = (0..n)
        .map(|_| {
            let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
            l.set_nonblocking(true)?;
            Ok(l)
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    let urls = listeners
        .iter()
        .map(|l| Ok(format!("http://{}", l.local_addr()?)))
        .collect::<std::io::Result<Vec<_>>>()?;
    Ok((listeners, urls))
}

fn pick_port() -> Result<u16, TestkitError> {
    free_port().map_err(|source| TestkitError::Process {
        action: "find a free port for",
        source,
    })
}

fn signal(pid: u32, sig: &str) -> Result<(), TestkitError> {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status()
        .map_err(|source| TestkitError::Process {
            action: "signal",
            source,
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(TestkitError::Process {
            action: "signal",
            source: std::io::Error::other(format!("kill -{sig} {pid} failed with {status}")),
        })
    }
}
