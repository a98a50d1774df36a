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
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// Configures a [`RedisServer`] before it starts.
#[derive(Debug, Default, Clone)]
#[must_use]
pub struct RedisServerBuilder {
    password: Option<String>,
}

impl RedisServerBuilder {
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
        cmd.args(["--port", &port, "--bind", "127.0.0.1", "--dir", &dir])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--logfile", &log, "--databases", "1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p]);
        }
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
