//! Node settings: defaults, then a TOML file, then environment variables, then flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use distkit_core::{ClusterToken, Error, NodeId};
use serde::Deserialize;

/// The cache's default cap: 256 MiB of keys and values, whatever their count (the first
/// version's 100,000 entries allowed 100 GiB of 1 MiB values).
pub(crate) const DEFAULT_CACHE_BYTES: u64 = 256 * 1024 * 1024;

/// `distkit-node`: one node of a distkit cluster.
///
/// A node runs leader election (Raft-style, over HTTP), a distributed cache peer and a lock
/// service, all behind one HTTP listener. Settings come from defaults, then the TOML file
/// given with --config, then DISTKIT_* environment variables, then flags.
#[derive(Debug, Parser)]
#[command(
    name = "distkit-node",
    version,
    about,
    long_about = None,
    after_help = "Logs go to stderr; RUST_LOG sets their level (default info, e.g. \
                  RUST_LOG=debug, or RUST_LOG=distkit_node::access=debug for an access log). \
                  HTTP client and server internals stay at warn unless RUST_LOG names them."
)]
pub struct Cli {
    /// What to run (default: a node).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Node settings.
    #[command(flatten)]
    pub node: NodeArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the IoT demo: start a 3-node cluster of this binary on loopback, play the
    /// scenario, print a summary, and clean up. Exits 0 only when every check passed.
    Demo {
        /// Devices that write their state into the cache.
        #[arg(long, default_value_t = 10_000)]
        devices: usize,
    },
    /// Make a certificate authority and a certificate for each named node, for a TLS
    /// cluster: DIR/ca.pem (every node's --tls-ca), DIR/NODE.pem and DIR/NODE-key.pem (that
    /// node's --tls-cert and --tls-key). Refuses a DIR that already has a CA.
    Certs {
        /// Where to write the files.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// A name or address the node certificates are valid for; repeat for each.
        #[arg(long = "san", default_values_t = ["127.0.0.1".to_owned(), "::1".to_owned(), "localhost".to_owned()])]
        sans: Vec<String>,
        /// The nodes, e.g. node-1 node-2 node-3.
        #[arg(required = true)]
        nodes: Vec<String>,
    },
}

/// Flags (each also settable through the environment variable shown).
#[derive(Debug, Args, Default)]
pub struct NodeArgs {
    /// TOML file with the node's settings (flags and environment override it).
    #[arg(short, long, env = "DISTKIT_CONFIG")]
    pub config: Option<PathBuf>,
    /// This node's id: unique in the cluster, printable, at most 255 bytes [default: node-1,
    /// or dev with --dev].
    #[arg(long, env = "DISTKIT_ID")]
    pub id: Option<String>,
    /// Address to listen on for the public API and the peer routes [default: 127.0.0.1:7001].
    #[arg(long, env = "DISTKIT_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Shared cluster token that peers present to each other (required with peers). Prefer
    /// --token-file: a flag shows in `ps`.
    #[arg(long, env = "DISTKIT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding the cluster token (surrounding whitespace is ignored).
    #[arg(long, env = "DISTKIT_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Development mode: one node that leads at once, in-process locks (unless --redis),
    /// data in a fresh temporary directory. Like `consul agent -dev`.
    #[arg(long, env = "DISTKIT_DEV", value_parser = clap::builder::BoolishValueParser::new(), num_args = 0, default_missing_value = "true")]
    pub dev: bool,
    /// A peer as ID=URL, e.g. node-2=http://127.0.0.1:7002; repeat for each peer (the
    /// environment variable takes a comma-separated list).
    #[arg(long = "peer", env = "DISTKIT_PEERS", value_delimiter = ',')]
    pub peers: Vec<String>,
    /// Redis URL for the lock service (redis://host:port/). Without --redis or --redlock,
    /// locks are in-process: valid only within this node.
    #[arg(long, env = "DISTKIT_REDIS")]
    pub redis: Option<String>,
    /// Redis URLs for Redlock (comma-separated; use 3 or 5 independent servers).
    #[arg(long, env = "DISTKIT_REDLOCK", value_delimiter = ',')]
    pub redlock: Vec<String>,
    /// Redis Sentinel URLs for the lock service (comma-separated, every sentinel); the locks
    /// follow the primary they name for --redis-master.
    #[arg(long, env = "DISTKIT_REDIS_SENTINEL", value_delimiter = ',')]
    pub redis_sentinel: Vec<String>,
    /// Redis Cluster node URLs for the lock service (comma-separated, a few in case one is
    /// down).
    #[arg(long, env = "DISTKIT_REDIS_CLUSTER", value_delimiter = ',')]
    pub redis_cluster: Vec<String>,
    /// The master name the sentinels monitor (with --redis-sentinel).
    #[arg(long, env = "DISTKIT_REDIS_MASTER")]
    pub redis_master: Option<String>,
    /// Replicas that must acknowledge every lock grant and extension (Redis WAIT, within
    /// 100 ms); a grant fewer acknowledged is given back and answered 503. With Sentinel, 1
    /// keeps grants through a promotion [default: 0].
    #[arg(long, env = "DISTKIT_REDIS_MIN_REPLICAS")]
    pub redis_min_replicas: Option<u32>,
    /// Directory for the durable election vote, created if missing [default:
    /// ./distkit-data/ID, or a fresh temporary directory with --dev].
    #[arg(long, env = "DISTKIT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Cache capacity in entries (instead of the default byte cap).
    #[arg(long, env = "DISTKIT_CACHE_ENTRIES")]
    pub cache_entries: Option<u64>,
    /// Cache capacity in bytes of keys and values, hot copies and replicas included [default:
    /// 268435456, 256 MiB].
    #[arg(long, env = "DISTKIT_CACHE_BYTES")]
    pub cache_bytes: Option<u64>,
    /// Default cache TTL in milliseconds, 0 for none [default: 3600000].
    #[arg(long, env = "DISTKIT_CACHE_TTL_MS")]
    pub cache_ttl_ms: Option<u64>,
    /// Nodes that keep each cache value, the owner's included, 1 to 3. With 2 or 3, a key
    /// whose owner is down is still served, by a replica [default: 1].
    #[arg(long, env = "DISTKIT_REPLICAS")]
    pub replicas: Option<usize>,
    /// The shortest election timeout in milliseconds [default: 150].
    #[arg(long, env = "DISTKIT_ELECTION_TIMEOUT_MIN_MS")]
    pub election_timeout_min_ms: Option<u64>,
    /// The longest election timeout in milliseconds [default: 300].
    #[arg(long, env = "DISTKIT_ELECTION_TIMEOUT_MAX_MS")]
    pub election_timeout_max_ms: Option<u64>,
    /// The leader's heartbeat interval in milliseconds [default: 50].
    #[arg(long, env = "DISTKIT_HEARTBEAT_MS")]
    pub heartbeat_ms: Option<u64>,
    /// Log format: text or json (one JSON object a line) [default: text].
    #[arg(long, env = "DISTKIT_LOG_FORMAT", value_parser = ["text", "json"])]
    pub log_format: Option<String>,
    /// The listener's certificate chain (PEM). With it and --tls-key, the node serves its
    /// public API and peer routes over TLS only, and reaches its peers over https.
    #[arg(long, env = "DISTKIT_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The listener's private key (PEM).
    #[arg(long, env = "DISTKIT_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// The CA (PEM) that peers' certificates must be signed by; needed with TLS and peers.
    #[arg(long, env = "DISTKIT_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// A file of client tokens, one `read TOKEN` or `write TOKEN` a line (# for comments).
    /// With it, every public route but /healthz and /readyz needs `Authorization: Bearer`
    /// with a listed token; a read token may only GET.
    #[arg(long, env = "DISTKIT_CLIENT_TOKENS")]
    pub client_tokens: Option<PathBuf>,
}

/// The TOML file's shape.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    client_tokens: Option<PathBuf>,
    log_format: Option<String>,
    id: Option<String>,
    listen: Option<SocketAddr>,
    token: Option<String>,
    token_file: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    #[serde(default)]
    peers: Vec<PeerConfig>,
    #[serde(default)]
    locks: LocksConfig,
    #[serde(default)]
    cache: CacheConfig,
    #[serde(default)]
    election: ElectionConfig,
    #[serde(default)]
    tls: TlsConfig,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsConfig {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PeerConfig {
    id: String,
    url: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LocksConfig {
    redis: Option<String>,
    #[serde(default)]
    redlock: Vec<String>,
    #[serde(default)]
    sentinels: Vec<String>,
    #[serde(default)]
    cluster: Vec<String>,
    master: Option<String>,
    min_replicas: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheConfig {
    max_entries: Option<u64>,
    max_bytes: Option<u64>,
    ttl_ms: Option<u64>,
    replicas: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ElectionConfig {
    timeout_min_ms: Option<u64>,
    timeout_max_ms: Option<u64>,
    heartbeat_ms: Option<u64>,
}

/// Where the node's locks live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LockBackend {
    /// In this process only.
    InProcess,
    /// One Redis server.
    Redis(String),
    /// Redlock over several.
    Redlock(Vec<String>),
    /// A Redis Cluster.
    Cluster(Vec<String>),
    /// The primary of a Redis Sentinel deployment.
    Sentinel {
        /// The master name the sentinels monitor.
        master: String,
        /// The sentinels' URLs.
        sentinels: Vec<String>,
    },
}

/// Resolved settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// This node.
    pub id: NodeId,
    /// Listen address.
    pub listen: SocketAddr,
    /// Cluster token.
    pub token: String,
    /// Peers: id and base URL.
    pub peers: Vec<(NodeId, String)>,
    /// Lock backend.
    pub locks: LockBackend,
    /// Replicas that must acknowledge each grant and extension (Redis and Sentinel).
    pub min_replicas: u32,
    /// Vote directory.
    pub data_dir: PathBuf,
    /// Cache capacity: bytes by default, entries when asked for.
    pub cache_capacity: distkit_dcache::Capacity,
    /// Default cache TTL.
    pub cache_ttl: Option<Duration>,
    /// Copies of each cache value.
    pub replicas: usize,
    /// Election timeout range.
    pub election_timeout: (Duration, Duration),
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Client tokens and their scope (`true`: may write); `None`: the public API is open.
    pub client_tokens: Option<Vec<(bool, ClusterToken)>>,
    /// TLS for the listener and the peer client; `None`: plaintext.
    pub tls: Option<crate::NodeTls>,
    /// Logs as JSON lines instead of text.
    pub log_json: bool,
    /// `--dev`'s temporary data directory, removed when the last copy of the settings goes.
    pub dev_dir: Option<Arc<tempfile::TempDir>>,
}

impl Settings {
    /// Merges defaults, the file named by `args.config`, and `args` (flags and environment).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for an unreadable or malformed file, a bad id or peer, or a
    /// missing token with peers.
    pub fn resolve(args: &NodeArgs) -> Result<Self, Error> {
        let file = match &args.config {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| {
                    Error::invalid_input("config file", format!("{}: {e}", p.display()))
                })?;
                toml::from_str::<FileConfig>(&text).map_err(|e| {
                    Error::invalid_input("config file", format!("{}: {e}", p.display()))
                })?
            }
            None => FileConfig::default(),
        };
        let default_id = if args.dev { "dev" } else { "node-1" };
        let id = NodeId::new(
            args.id
                .clone()
                .or(file.id)
                .unwrap_or_else(|| default_id.into()),
        )?;
        let listen = args
            .listen
            .or(file.listen)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7001)));
        let mut peers = Vec::new();
        if args.peers.is_empty() {
            for p in file.peers {
                peers.push((NodeId::new(&p.id)?, p.url));
            }
        } else {
            for p in &args.peers {
                let (pid, url) = p
                    .split_once('=')
                    .ok_or_else(|| Error::invalid_input("peer", format!("{p:?} must be ID=URL")))?;
                peers.push((NodeId::new(pid)?, url.to_owned()));
            }
        }
        if args.dev && !peers.is_empty() {
            return Err(Error::invalid_input(
                "peers",
                "--dev runs one node on its own; leave out --peer (and the file's peers)",
            ));
        }
        let token_file = args.token_file.clone().or(file.token_file);
        let token = match (args.token.clone().or(file.token), token_file) {
            (Some(_), Some(_)) => {
                return Err(Error::invalid_input(
                    "token",
                    "give the cluster token or a token file, not both",
                ));
            }
            (Some(t), None) => t,
            (None, Some(path)) => {
                let token = std::fs::read_to_string(&path)
                    .map_err(|e| {
                        Error::invalid_input("token file", format!("{}: {e}", path.display()))
                    })?
                    .trim()
                    .to_owned();
                if token.is_empty() {
                    return Err(Error::invalid_input(
                        "token file",
                        format!("{} is empty", path.display()),
                    ));
                }
                token
            }
            (None, None) => String::new(),
        };
        if !peers.is_empty() && token.is_empty() {
            return Err(Error::invalid_input(
                "token",
                "a cluster with peers needs --token-file or --token (or DISTKIT_TOKEN_FILE, \
                 DISTKIT_TOKEN)",
            ));
        }
        let tls = match (
            args.tls_cert.clone().or(file.tls.cert),
            args.tls_key.clone().or(file.tls.key),
            args.tls_ca.clone().or(file.tls.ca),
        ) {
            (Some(cert), Some(key), ca) => {
                if !peers.is_empty() && ca.is_none() {
                    return Err(Error::invalid_input(
                        "tls",
                        "a TLS node with peers needs --tls-ca: the CA its peers' certificates \
                         are signed by",
                    ));
                }
                Some(crate::NodeTls::load(&cert, &key, ca.as_deref())?)
            }
            (None, None, None) => None,
            (None, None, Some(_)) => {
                return Err(Error::invalid_input(
                    "tls",
                    "--tls-ca without --tls-cert and --tls-key: a node whose peers speak TLS \
                     must serve TLS too",
                ));
            }
            _ => {
                return Err(Error::invalid_input(
                    "tls",
                    "give both --tls-cert and --tls-key",
                ));
            }
        };
        for (id, url) in &peers {
            distkit_core::PeerUrl::parse(url)
                .and_then(|u| u.check_scheme(tls.is_some()))
                .map_err(|e| Error::invalid_input("peer", format!("{id}: {e}")))?;
        }
        let redlock = if args.redlock.is_empty() {
            file.locks.redlock
        } else {
            args.redlock.clone()
        };
        let sentinels = if args.redis_sentinel.is_empty() {
            file.locks.sentinels
        } else {
            args.redis_sentinel.clone()
        };
        let cluster = if args.redis_cluster.is_empty() {
            file.locks.cluster
        } else {
            args.redis_cluster.clone()
        };
        let master = args.redis_master.clone().or(file.locks.master);
        let master_given = master.is_some();
        let redis = args.redis.clone().or(file.locks.redis);
        let given = usize::from(redis.is_some())
            + usize::from(!redlock.is_empty())
            + usize::from(!sentinels.is_empty())
            + usize::from(!cluster.is_empty());
        if given > 1 {
            return Err(Error::invalid_input(
                "locks",
                "give one of --redis, --redlock, --redis-sentinel and --redis-cluster",
            ));
        }
        let locks = match (redis, redlock.is_empty(), sentinels.is_empty()) {
            _ if !cluster.is_empty() => LockBackend::Cluster(cluster),
            (Some(url), true, true) => LockBackend::Redis(url),
            (None, false, true) => LockBackend::Redlock(redlock),
            (None, true, false) => LockBackend::Sentinel {
                master: master.ok_or_else(|| {
                    Error::invalid_input(
                        "locks",
                        "--redis-sentinel needs --redis-master, the master name the sentinels \
                         monitor",
                    )
                })?,
                sentinels,
            },
            _ => LockBackend::InProcess,
        };
        if master_given && !matches!(locks, LockBackend::Sentinel { .. }) {
            // An outside review mistyped the sentinel flag and got node-local locks quietly.
            return Err(Error::invalid_input(
                "locks",
                "--redis-master names the master of --redis-sentinel, which is missing",
            ));
        }
        let min_replicas = args
            .redis_min_replicas
            .or(file.locks.min_replicas)
            .unwrap_or(0);
        if min_replicas > 0
            && !matches!(
                locks,
                LockBackend::Redis(_) | LockBackend::Sentinel { .. } | LockBackend::Cluster(_)
            )
        {
            return Err(Error::invalid_input(
                "locks",
                "--redis-min-replicas needs --redis, --redis-sentinel or --redis-cluster",
            ));
        }
        let mut dev_dir = None;
        let data_dir = match args.data_dir.clone().or(file.data_dir) {
            Some(d) => d,
            None if args.dev => {
                // A fresh directory with a random name, made for this run only (never one
                // that already exists) and removed when the node exits.
                let dir = tempfile::Builder::new()
                    .prefix("distkit-dev-")
                    .tempdir()
                    .map_err(|e| {
                        Error::invalid_input(
                            "data dir",
                            format!("cannot make a temporary directory: {e}"),
                        )
                    })?;
                let path = dir.path().to_owned();
                dev_dir = Some(Arc::new(dir));
                path
            }
            None => {
                let name = id.as_str();
                if name == "." || name == ".." || name.contains(['/', '\\']) {
                    return Err(Error::invalid_input(
                        "id",
                        format!(
                            "{name:?} cannot name the default data directory ./distkit-data/ID; \
                             choose another id or give --data-dir"
                        ),
                    ));
                }
                PathBuf::from(format!("./distkit-data/{name}"))
            }
        };
        let ms = Duration::from_millis;
        let ttl_ms = args.cache_ttl_ms.or(file.cache.ttl_ms).unwrap_or(3_600_000);
        Ok(Self {
            id,
            listen,
            token,
            peers,
            locks,
            min_replicas,
            data_dir,
            cache_capacity: match (
                args.cache_entries.or(file.cache.max_entries),
                args.cache_bytes.or(file.cache.max_bytes),
            ) {
                (Some(n), None) => distkit_dcache::Capacity::Entries(n),
                (None, b) => distkit_dcache::Capacity::Bytes(b.unwrap_or(DEFAULT_CACHE_BYTES)),
                (Some(_), Some(_)) => {
                    return Err(Error::invalid_input(
                        "cache capacity",
                        "give entries or bytes, not both",
                    ));
                }
            },
            cache_ttl: (ttl_ms > 0).then(|| ms(ttl_ms)),
            replicas: args.replicas.or(file.cache.replicas).unwrap_or(1),
            election_timeout: (
                ms(args
                    .election_timeout_min_ms
                    .or(file.election.timeout_min_ms)
                    .unwrap_or(150)),
                ms(args
                    .election_timeout_max_ms
                    .or(file.election.timeout_max_ms)
                    .unwrap_or(300)),
            ),
            heartbeat: ms(args
                .heartbeat_ms
                .or(file.election.heartbeat_ms)
                .unwrap_or(50)),
            client_tokens: match args.client_tokens.clone().or(file.client_tokens) {
                Some(path) => Some(read_client_tokens(&path)?),
                None => None,
            },
            tls,
            dev_dir,
            log_json: match args.log_format.clone().or(file.log_format).as_deref() {
                None | Some("text") => false,
                Some("json") => true,
                Some(other) => {
                    return Err(Error::invalid_input(
                        "log format",
                        format!("{other:?}: use text or json"),
                    ));
                }
            },
        })
    }
}

/// The shortest client token accepted.
const MIN_CLIENT_TOKEN: usize = 16;

/// Reads a client token file: `read TOKEN` or `write TOKEN` a line, `#` comments.
fn read_client_tokens(path: &std::path::Path) -> Result<Vec<(bool, ClusterToken)>, Error> {
    let bad =
        |why: String| Error::invalid_input("client tokens", format!("{}: {why}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let mut tokens = Vec::new();
    let mut seen = std::collections::HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (scope, token) = line.split_once(char::is_whitespace).ok_or_else(|| {
            bad(format!(
                "line {} is not `read TOKEN` or `write TOKEN`",
                n + 1
            ))
        })?;
        let write = match scope {
            "read" => false,
            "write" => true,
            other => return Err(bad(format!("line {}: unknown scope {other:?}", n + 1))),
        };
        let token = token.trim();
        if token.len() < MIN_CLIENT_TOKEN {
            return Err(bad(format!(
                "line {}: a token must be at least {MIN_CLIENT_TOKEN} bytes (use a random one, \
                 e.g. `openssl rand -hex 16`)",
                n + 1
            )));
        }
        // The same token twice is a mistake whatever the scopes: with `read` and `write` it
        // would get write, which defeats taking a client down to read by adding a line.
        if let Some(line_before) = seen.insert(token.to_owned(), n + 1) {
            return Err(bad(format!(
                "line {}: the token of line {line_before} again; list each token once",
                n + 1
            )));
        }
        let token = ClusterToken::new(token).map_err(|e| bad(format!("line {}: {e}", n + 1)))?;
        tokens.push((write, token));
    }
    if tokens.is_empty() {
        return Err(bad("it lists no token".into()));
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_flags() {
        let dir =
            std::env::temp_dir().join(format!("distkit-node-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("n.toml");
        std::fs::write(
            &path,
            r#"
id = "from-file"
listen = "127.0.0.1:7100"
token = "t"
[[peers]]
id = "b"
url = "http://127.0.0.1:7101"
[locks]
redis = "redis://127.0.0.1:6379/"
[cache]
max_entries = 5
"#,
        )
        .unwrap();
        let args = NodeArgs {
            config: Some(path.clone()),
            id: Some("from-flag".into()),
            ..NodeArgs::default()
        };
        let s = Settings::resolve(&args).unwrap();
        assert_eq!(s.id.as_str(), "from-flag");
        assert_eq!(s.listen.port(), 7100);
        assert_eq!(s.peers.len(), 1);
        assert_eq!(
            s.locks,
            LockBackend::Redis("redis://127.0.0.1:6379/".into())
        );
        assert_eq!(s.cache_capacity, distkit_dcache::Capacity::Entries(5));
        // Without a word about the cache, it is capped in bytes; entries and bytes together
        // are refused.
        let plain = NodeArgs {
            id: Some("n".into()),
            ..NodeArgs::default()
        };
        assert_eq!(
            Settings::resolve(&plain).unwrap().cache_capacity,
            distkit_dcache::Capacity::Bytes(DEFAULT_CACHE_BYTES)
        );
        let both = NodeArgs {
            id: Some("n".into()),
            cache_entries: Some(5),
            cache_bytes: Some(5),
            ..NodeArgs::default()
        };
        assert!(Settings::resolve(&both).is_err());
        // The token from a file (kept out of `ps`), trimmed; not both.
        let token_path = dir.join("token");
        std::fs::write(&token_path, "  from-a-file\n").unwrap();
        let from_file = NodeArgs {
            id: Some("n".into()),
            token_file: Some(token_path.clone()),
            peers: vec!["m=http://127.0.0.1:1".into()],
            ..NodeArgs::default()
        };
        assert_eq!(Settings::resolve(&from_file).unwrap().token, "from-a-file");
        let two = NodeArgs {
            token: Some("x".into()),
            ..from_file
        };
        assert!(Settings::resolve(&two).is_err());
        // --dev: one node named dev, data in a fresh temporary directory, no peers.
        let dev = NodeArgs {
            dev: true,
            ..NodeArgs::default()
        };
        let s = Settings::resolve(&dev).unwrap();
        assert_eq!(s.id.as_str(), "dev");
        assert!(s.peers.is_empty());
        assert!(s.data_dir.starts_with(std::env::temp_dir()));
        assert!(s.data_dir.is_dir(), "made at once, for this run only");
        let again = Settings::resolve(&dev).unwrap();
        assert_ne!(again.data_dir, s.data_dir, "a random name, never reused");
        let dev_path = s.data_dir.clone();
        drop(s);
        assert!(!dev_path.exists(), "removed with the settings");
        // An id that would steer the default data directory elsewhere is refused.
        for id in ["..", ".", "../../escaped", "a/b"] {
            let args = NodeArgs {
                id: Some(id.into()),
                ..NodeArgs::default()
            };
            assert!(Settings::resolve(&args).is_err(), "{id:?}");
        }
        let dev_with_peers = NodeArgs {
            dev: true,
            peers: vec!["m=http://127.0.0.1:1".into()],
            ..NodeArgs::default()
        };
        assert!(Settings::resolve(&dev_with_peers).is_err());
        // Client token files: scopes read and write, comments; anything else is refused.
        let clients = dir.join("clients");
        for (text, ok) in [
            (
                "read reader-token-0123\nwrite writer-token-0123\n# note\n\n",
                true,
            ),
            ("read short\n", false),
            (
                "read the-same-token-twice\nwrite the-same-token-twice\n",
                false,
            ),
            ("admin x\n", false),
            ("read\n", false),
            ("# nothing\n", false),
            ("read tab-in-the-middle\there\n", false),
        ] {
            std::fs::write(&clients, text).unwrap();
            let args = NodeArgs {
                id: Some("n".into()),
                client_tokens: Some(clients.clone()),
                ..NodeArgs::default()
            };
            assert_eq!(Settings::resolve(&args).is_ok(), ok, "{text:?}");
        }
        // Election timings as flags too (over the file).
        let timed = NodeArgs {
            config: Some(path.clone()),
            election_timeout_min_ms: Some(400),
            election_timeout_max_ms: Some(800),
            heartbeat_ms: Some(100),
            ..NodeArgs::default()
        };
        let s = Settings::resolve(&timed).unwrap();
        assert_eq!(
            s.election_timeout,
            (Duration::from_millis(400), Duration::from_millis(800))
        );
        assert_eq!(s.heartbeat, Duration::from_millis(100));
        std::fs::write(&path, "bogus = 1").unwrap();
        assert!(
            Settings::resolve(&args).is_err(),
            "unknown keys are refused"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn tls_settings_refuse_half_configurations_and_plaintext_peers() {
        let dir =
            std::env::temp_dir().join(format!("distkit-node-tls-settings-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        crate::generate_certs(&dir, &["a".into()], &["127.0.0.1".into()]).unwrap();
        let tls = |peer: Option<&str>, cert: bool, key: bool, ca: bool| NodeArgs {
            id: Some("a".into()),
            token: Some("t".into()),
            peers: peer.map(|p| vec![p.to_owned()]).unwrap_or_default(),
            tls_cert: cert.then(|| dir.join("a.pem")),
            tls_key: key.then(|| dir.join("a-key.pem")),
            tls_ca: ca.then(|| dir.join("ca.pem")),
            ..NodeArgs::default()
        };
        let https = Some("b=https://127.0.0.1:7002");
        let http = Some("b=http://127.0.0.1:7002");
        assert!(
            Settings::resolve(&tls(https, true, true, true))
                .unwrap()
                .tls
                .is_some()
        );
        assert!(
            Settings::resolve(&tls(None, true, true, false)).is_ok(),
            "alone: no CA needed"
        );
        for (args, why) in [
            (
                tls(http, true, true, true),
                "a plaintext peer of a TLS node",
            ),
            (
                tls(https, false, false, false),
                "an https peer of a plaintext node",
            ),
            (tls(https, true, true, false), "TLS peers without a CA"),
            (
                tls(https, true, false, true),
                "a certificate without its key",
            ),
            (tls(https, false, false, true), "a CA without a certificate"),
        ] {
            assert!(Settings::resolve(&args).is_err(), "{why}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_flags() {
        let peers = NodeArgs {
            peers: vec!["b=http://x:1".into()],
            ..NodeArgs::default()
        };
        assert!(Settings::resolve(&peers).is_err(), "peers without a token");
        let bad = NodeArgs {
            peers: vec!["no-equals".into()],
            token: Some("t".into()),
            ..NodeArgs::default()
        };
        assert!(Settings::resolve(&bad).is_err());
        let both = NodeArgs {
            redis: Some("redis://a/".into()),
            redlock: vec!["redis://b/".into()],
            ..NodeArgs::default()
        };
        assert!(Settings::resolve(&both).is_err());
        let args =
            |redis: bool, sentinel: bool, master: bool, redlock: bool, replicas: u32| NodeArgs {
                id: Some("a".into()),
                redis: redis.then(|| "redis://a/".into()),
                redis_sentinel: if sentinel {
                    vec!["redis://s1/".into(), "redis://s2/".into()]
                } else {
                    Vec::new()
                },
                redis_master: master.then(|| "m".into()),
                redlock: if redlock {
                    vec!["redis://b/".into()]
                } else {
                    Vec::new()
                },
                redis_min_replicas: Some(replicas),
                ..NodeArgs::default()
            };
        let sentinel = Settings::resolve(&args(false, true, true, false, 1)).unwrap();
        assert_eq!(
            sentinel.locks,
            LockBackend::Sentinel {
                master: "m".into(),
                sentinels: vec!["redis://s1/".into(), "redis://s2/".into()]
            }
        );
        assert_eq!(sentinel.min_replicas, 1);
        for (a, why) in [
            (
                args(false, true, false, false, 0),
                "sentinels without a master name",
            ),
            (
                args(true, true, true, false, 0),
                "--redis and --redis-sentinel",
            ),
            (
                args(false, true, true, true, 0),
                "--redlock and --redis-sentinel",
            ),
            (
                args(false, false, false, true, 1),
                "min replicas on Redlock",
            ),
            (
                args(false, false, false, false, 1),
                "min replicas in-process",
            ),
            (
                args(false, false, true, false, 0),
                "a master name without sentinels",
            ),
            (
                args(true, false, true, false, 0),
                "a master name with --redis",
            ),
        ] {
            assert!(Settings::resolve(&a).is_err(), "{why}");
        }
        let cluster = |redis: bool, replicas: Option<u32>| NodeArgs {
            id: Some("a".into()),
            redis: redis.then(|| "redis://a/".into()),
            redis_cluster: vec!["redis://c1/".into(), "redis://c2/".into()],
            redis_min_replicas: replicas,
            ..NodeArgs::default()
        };
        assert_eq!(
            Settings::resolve(&cluster(false, None)).unwrap().locks,
            LockBackend::Cluster(vec!["redis://c1/".into(), "redis://c2/".into()])
        );
        assert!(
            Settings::resolve(&cluster(true, None)).is_err(),
            "--redis and --redis-cluster"
        );
        assert_eq!(
            Settings::resolve(&cluster(false, Some(1)))
                .unwrap()
                .min_replicas,
            1,
            "min replicas on a cluster"
        );
        let id = NodeArgs {
            id: Some(String::new()),
            ..NodeArgs::default()
        };
        assert!(Settings::resolve(&id).is_err());
    }
}
