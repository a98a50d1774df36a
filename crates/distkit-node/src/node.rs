//! One running node: election, cache peer and lock service behind one HTTP listener.

// Request helpers return the finished error response as their `Err`: built once per request
// and returned straight to axum, never stored.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use distkit_core::{
    AcquireOptions, DistributedLock, Error, ErrorBody, FencingToken, LeaderElector, Lease,
    LockToken, NodeId,
};
use distkit_dcache::DistributedCache;
use distkit_dlock::{LocalLock, LocalRwLock, LocalSemaphore, RedisLock, Redlock};
use distkit_election::{Config, Elector, FileVoteStore, HttpTransport, http_router};
use serde::Deserialize;
use tokio::net::TcpListener;

use crate::settings::{LockBackend, Settings};

/// JSON bodies are small; anything larger is refused with 413.
const MAX_JSON: usize = 64 * 1024;

struct App {
    settings: Settings,
    elector: Elector,
    cache: DistributedCache,
    locks: Arc<dyn DistributedLock>,
    /// The rest of the lock family on the same backend (none on Redlock).
    family: Option<Family>,
    lock_backend: &'static str,
    /// Set when shutdown starts: new lock grants are refused from then on.
    stopping: tokio::sync::watch::Sender<bool>,
    http: reqwest::Client,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// What the background probes last saw of each peer.
    peer_health: std::sync::Mutex<HashMap<NodeId, Probe>>,
    started: std::time::Instant,
}

/// The fair lock, read-write lock and semaphore of the node's lock backend.
struct Family {
    fair: Arc<dyn DistributedLock>,
    rw: Arc<dyn distkit_core::DistributedRwLock>,
    semaphores: Arc<dyn distkit_core::DistributedSemaphore>,
}

/// The permits of a semaphore name never given a limit (`PUT /v1/semaphores/{name}`).
const DEFAULT_PERMITS: u32 = 1;

/// Which lock of the family a route serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Lock,
    Fair,
    Read,
    Write,
    Semaphore,
}

/// One peer as the background probe last saw it.
#[derive(Clone, Copy, Debug)]
struct Probe {
    state: PeerState,
    at: std::time::Instant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PeerState {
    /// It answered an authenticated request.
    Ok,
    /// It refused this node's cluster token (or this node refused its): a configuration
    /// mistake, never healed by waiting.
    TokenRefused,
    /// It did not answer in time, or answered with an error.
    Unreachable,
    /// The TLS handshake failed: it serves plaintext, or its certificate is not signed by
    /// this node's CA, has expired, or does not name the address in its URL.
    TlsRefused,
    /// Another node answered at its URL (or this node itself): the peer list is wrong.
    WrongNode,
}

impl PeerState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::TokenRefused => "token_refused",
            Self::Unreachable => "unreachable",
            Self::TlsRefused => "tls_refused",
            Self::WrongNode => "wrong_node",
        }
    }
}

/// The header every response of a node carries, naming it: a peer probe checks that the
/// node at a peer's URL is that peer.
const NODE_HEADER: &str = "x-distkit-node";

/// Whether a failed request failed in its TLS handshake (a rustls error somewhere in its
/// causes; an I/O error carries it inside rather than as its source).
fn tls_failure(e: &reqwest::Error) -> bool {
    use distkit_core::tls::rustls;
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.is::<rustls::Error>() {
            return true;
        }
        // An I/O error's `source` skips the error it wraps: look inside it instead.
        cause = match c.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => c.source(),
        };
    }
    false
}

/// How often the peers are probed.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Probes every peer at once, every [`PROBE_EVERY`], with an authenticated request, and keeps
/// what it saw for `/v1/cluster`. A peer that refuses the cluster token is reported loudly:
/// a WARN when it starts, and `distkit_node_peer_auth_failures_total{peer}` every time.
async fn probe_peers(app: std::sync::Weak<App>) {
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(app) = app.upgrade() else { return };
        let probes = app.settings.peers.iter().map(|(id, url)| {
            let app = &app;
            async move {
                let r = app
                    .http
                    .get(format!("{url}/v1/peer/seq"))
                    .bearer_auth(&app.settings.token)
                    .send()
                    .await;
                if let Err(e) = &r {
                    tracing::debug!(peer = %id, error = ?e, "peer probe failed");
                }
                let answered_as = r.as_ref().ok().and_then(|r| {
                    r.headers()
                        .get(NODE_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                });
                let state = match &r {
                    _ if answered_as.as_deref().is_some_and(|a| a != id.as_str()) => {
                        PeerState::WrongNode
                    }
                    Ok(r) if r.status().is_success() => PeerState::Ok,
                    Ok(r) if r.status() == StatusCode::UNAUTHORIZED => PeerState::TokenRefused,
                    Err(e) if tls_failure(e) => PeerState::TlsRefused,
                    _ => PeerState::Unreachable,
                };
                (id.clone(), state, answered_as)
            }
        });
        let seen = futures_util::future::join_all(probes).await;
        let now = std::time::Instant::now();
        let mut health = app
            .peer_health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (id, state, answered_as) in seen {
            let before = health.get(&id).map(|p| p.state);
            // Configuration mistakes are counted at every probe that sees them...
            match state {
                PeerState::TokenRefused => {
                    metrics::counter!("distkit_node_peer_auth_failures_total", "peer" => id.to_string())
                        .increment(1);
                }
                PeerState::TlsRefused => {
                    metrics::counter!("distkit_node_peer_tls_failures_total", "peer" => id.to_string())
                        .increment(1);
                }
                _ => {}
            }
            // ...and said once, when they begin.
            if before != Some(state) {
                match state {
                    PeerState::TokenRefused => tracing::warn!(
                        peer = %id,
                        "the peer refuses this node's cluster token (or uses another one): \
                         check --token on both nodes; until then they cannot elect or share \
                         the cache together"
                    ),
                    PeerState::TlsRefused => tracing::warn!(
                        peer = %id,
                        "the TLS handshake with the peer failed: it serves plaintext, or \
                         its certificate is not signed by --tls-ca, has expired or is not \
                         yet valid, or does not name the address in its URL"
                    ),
                    PeerState::WrongNode => tracing::warn!(
                        peer = %id,
                        answered_as = answered_as.as_deref().unwrap_or(""),
                        "another node answers at this peer's URL: check --peer"
                    ),
                    PeerState::Ok | PeerState::Unreachable => {
                        if before == Some(PeerState::TokenRefused) {
                            tracing::info!(peer = %id, "the peer accepts this node's cluster token again");
                        }
                    }
                }
            }
            health.insert(id, Probe { state, at: now });
        }
    }
}

/// Runs a node until `shutdown` completes, then resigns leadership, finishes in-flight
/// requests and releases the locks it holds for clients.
///
/// # Errors
///
/// Bad settings, an unreadable vote file, or a listener that cannot be bound.
pub async fn run(
    settings: Settings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    // Installed first: components take their metric handles when they are built.
    let started = std::time::Instant::now();
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(crate::observe::LATENCY_BUCKETS)
        .ok()
        .and_then(|b| b.install_recorder().ok());
    crate::observe::describe();
    std::fs::create_dir_all(&settings.data_dir).map_err(|e| Error::Storage {
        path: settings.data_dir.display().to_string(),
        reason: format!("cannot create the data directory: {e}"),
        source: Some(Arc::new(e)),
    })?;
    // One process per data directory: two nodes sharing one durable vote could both vote in a
    // term (an outside review ran a second node on a live node's directory; it overwrote the
    // vote). Held until the process exits.
    let _data_lock = lock_data_dir(&settings.data_dir)?;
    let ttl = Duration::from_secs(30);
    let (locks, family, lock_backend): (Arc<dyn DistributedLock>, _, &'static str) = match &settings
        .locks
    {
        LockBackend::InProcess => {
            tracing::warn!(
                "no --redis or --redlock given: locks are in-process and coordinate only clients of this node"
            );
            let plain = LocalLock::new(ttl)?;
            let family = Family {
                // On the plain lock's names, so the two exclude each other as on Redis.
                fair: Arc::new(plain.fair()),
                rw: Arc::new(LocalRwLock::new(ttl)?),
                semaphores: Arc::new(LocalSemaphore::new(ttl, DEFAULT_PERMITS)?),
            };
            (Arc::new(plain), Some(family), "in-process")
        }
        LockBackend::Redis(url) => {
            let (locks, family) = redis_locks(RedisLock::builder(url.clone()), &settings).await?;
            (locks, family, "redis")
        }
        LockBackend::Cluster(nodes) => {
            let (locks, family) = redis_locks(RedisLock::cluster(nodes.clone()), &settings).await?;
            (locks, family, "redis-cluster")
        }
        LockBackend::Sentinel { master, sentinels } => {
            let builder = RedisLock::sentinel(master.clone(), sentinels.clone());
            let (locks, family) = redis_locks(builder, &settings).await?;
            (locks, family, "redis-sentinel")
        }
        LockBackend::Redlock(urls) => {
            if urls.len() < 3 {
                tracing::warn!(
                    servers = urls.len(),
                    "Redlock over fewer than 3 servers tolerates no failure; use 3 or 5"
                );
            }
            (
                Arc::new(Redlock::builder(urls.clone()).build()?),
                None,
                "redlock",
            )
        }
    };
    tracing::info!(id = %settings.id, listen = %settings.listen, locks = lock_backend, peers = settings.peers.len(), "starting node");
    // Without peers the node is a cluster of one: it leads at once. Its peer routes still
    // need a token; with none configured, one nobody knows refuses every peer request.
    let mut settings = settings;
    if settings.peers.is_empty() && settings.token.is_empty() {
        settings.token = format!("{:032x}", rand::random::<u128>());
    }
    let peer_tls = settings.tls.as_ref().and_then(|t| t.peers.clone());
    if !settings.peers.is_empty() && settings.token.len() < 16 {
        tracing::warn!(
            "the cluster token is shorter than 16 bytes: anyone who guesses it can act as a \
             member; use a random one (e.g. `openssl rand -hex 16`)"
        );
    }
    let transport = match &peer_tls {
        Some(tls) => HttpTransport::with_tls(
            settings.peers.clone(),
            settings.token.clone(),
            Duration::from_millis(200),
            tls,
        )?,
        None => HttpTransport::new(
            settings.peers.clone(),
            settings.token.clone(),
            Duration::from_millis(200),
        )?,
    };
    let cfg = Config::builder(
        settings.id.clone(),
        settings.peers.iter().map(|(id, _)| id.clone()),
    )
    .election_timeout(settings.election_timeout.0, settings.election_timeout.1)
    .heartbeat(settings.heartbeat)
    .build()?;
    let store = FileVoteStore::new(settings.data_dir.join("vote.json"));
    let elector = Elector::start(cfg, Arc::new(store), Arc::new(transport))?;
    match settings.cache_capacity {
        distkit_dcache::Capacity::Bytes(b) => {
            tracing::info!(
                bytes = b,
                "the cache is capped at {b} bytes of keys and values"
            );
        }
        distkit_dcache::Capacity::Entries(n) => {
            tracing::info!(
                entries = n,
                "the cache is capped at {n} entries, whatever their size"
            );
        }
    }
    let cache = DistributedCache::builder(settings.id.clone());
    let mut cache = match settings.cache_capacity {
        distkit_dcache::Capacity::Bytes(b) => cache.max_bytes(b),
        distkit_dcache::Capacity::Entries(n) => cache.max_entries(n),
    }
    .replicas(settings.replicas)
    .token(settings.token.clone());
    if let Some(ttl) = settings.cache_ttl {
        cache = cache.ttl(ttl);
    }
    for (id, url) in &settings.peers {
        cache = cache.peer(id.clone(), url.clone());
    }
    if let Some(tls) = &peer_tls {
        cache = cache.tls(tls.clone());
    }
    let cache = cache.build()?;
    let maintenance = cache.start_maintenance()?;
    let app = Arc::new(App {
        http: match &peer_tls {
            Some(tls) => reqwest::Client::builder().tls_backend_preconfigured(tls.client_config()),
            None => reqwest::Client::builder(),
        }
        .timeout(Duration::from_millis(300))
        .build()
        .map_err(|e| Error::invalid_input("http client", e.to_string()))?,
        settings,
        elector,
        cache,
        locks,
        family,
        lock_backend,
        stopping: tokio::sync::watch::Sender::new(false),
        metrics,
        peer_health: std::sync::Mutex::new(HashMap::new()),
        started,
    });
    metrics::describe_counter!(
        "distkit_node_peer_auth_failures_total",
        "probes of a peer that refused this node's cluster token (a configuration mistake)"
    );
    // Owned: aborted when the node stops.
    let probes = tokio::spawn(probe_peers(Arc::downgrade(&app)));
    let router = Router::new()
        .route(
            "/v1/cache/{key}",
            get(cache_get).put(cache_put).delete(cache_delete),
        )
        .route("/v1/locks/{name}", post(lock_acquire).delete(lock_release))
        .route("/v1/locks/{name}/extend", post(lock_extend))
        .route(
            "/v1/fair-locks/{name}",
            post(|s, n, b| acquire_kind(s, n, b, Kind::Fair))
                .delete(|s, n, b| release_kind(s, n, b, Kind::Fair)),
        )
        .route(
            "/v1/fair-locks/{name}/extend",
            post(|s, n, b| extend_kind(s, n, b, Kind::Fair)),
        )
        .route(
            "/v1/rwlocks/{name}/read",
            post(|s, n, b| acquire_kind(s, n, b, Kind::Read))
                .delete(|s, n, b| release_kind(s, n, b, Kind::Read)),
        )
        .route(
            "/v1/rwlocks/{name}/read/extend",
            post(|s, n, b| extend_kind(s, n, b, Kind::Read)),
        )
        .route(
            "/v1/rwlocks/{name}/write",
            post(|s, n, b| acquire_kind(s, n, b, Kind::Write))
                .delete(|s, n, b| release_kind(s, n, b, Kind::Write)),
        )
        .route(
            "/v1/rwlocks/{name}/write/extend",
            post(|s, n, b| extend_kind(s, n, b, Kind::Write)),
        )
        .route(
            "/v1/semaphores/{name}",
            post(|s, n, b| acquire_kind(s, n, b, Kind::Semaphore))
                .delete(|s, n, b| release_kind(s, n, b, Kind::Semaphore))
                .get(semaphore_state)
                .put(semaphore_limit),
        )
        .route(
            "/v1/semaphores/{name}/extend",
            post(|s, n, b| extend_kind(s, n, b, Kind::Semaphore)),
        )
        .route("/v1/lock-sets", post(lock_set_acquire))
        .route("/v1/cluster", get(cluster))
        .route(
            "/healthz",
            get(|| async { axum::Json(serde_json::json!({ "status": "ok" })) }),
        )
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route") })
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "this route does not take that method",
            )
        })
        .route_layer(axum::middleware::from_fn_with_state(
            app.clone(),
            client_auth,
        ))
        .with_state(app.clone())
        .merge(http_router(app.elector.inbox(), app.settings.token.clone()))
        .merge(app.cache.router())
        .layer(axum::middleware::from_fn(crate::observe::http_layer))
        .layer(axum::middleware::map_response_with_state(
            axum::http::HeaderValue::from_str(app.settings.id.as_str())
                .map_err(|e| Error::invalid_input("id", e.to_string()))?,
            |axum::extract::State(id): axum::extract::State<axum::http::HeaderValue>,
             mut resp: Response| async move {
                resp.headers_mut().insert(NODE_HEADER, id);
                resp
            },
        ));
    // Owned: ends with the elector (its leadership channel closes), and is aborted at exit.
    let election_gauges = tokio::spawn(crate::observe::follow_election(app.elector.clone()));
    let listener = TcpListener::bind(app.settings.listen).await.map_err(|e| {
        Error::unavailable(
            app.settings.listen.to_string(),
            "cannot listen (is the port taken?)",
            e,
        )
    })?;
    tracing::info!(
        addr = %listener.local_addr().unwrap_or(app.settings.listen),
        tls = app.settings.tls.is_some(),
        "listening"
    );
    let stopping = app.clone();
    let server_tls = app.settings.tls.as_ref().map(|t| t.server.clone());
    crate::serve::serve(listener, router, server_tls, async move {
        shutdown.await;
        tracing::info!("shutting down: refusing new lock grants and resigning");
        stopping.stopping.send_replace(true);
        let _ = stopping.elector.resign().await;
    })
    .await;
    probes.abort();
    let _ = probes.await;
    election_gauges.abort();
    let _ = election_gauges.await;
    app.elector.shutdown().await;
    maintenance.shutdown().await;
    Ok(())
}

/// The lock service and the rest of its family on Redis (one server or Sentinel's primary).
async fn redis_locks(
    builder: distkit_dlock::RedisLockBuilder,
    settings: &Settings,
) -> Result<(Arc<dyn DistributedLock>, Option<Family>), Error> {
    let builder = if settings.min_replicas > 0 {
        builder.min_replicas(settings.min_replicas, Duration::from_millis(100))
    } else {
        builder
    };
    let redis = builder.build()?;
    // Said at start, not at the first client's acquire: the node runs either way (the
    // election and the cache need no Redis) and grants locks once Redis answers.
    match tokio::time::timeout(Duration::from_secs(2), redis.ping()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(
            error = %e,
            "the lock backend does not answer yet; lock requests fail until it does"
        ),
        Err(_) => tracing::warn!(
            "the lock backend did not answer within 2 s; lock requests fail until it does"
        ),
    }
    let family = Family {
        fair: Arc::new(redis.fair()),
        rw: Arc::new(redis.rw()),
        semaphores: Arc::new(redis.semaphore(DEFAULT_PERMITS)?),
    };
    Ok((Arc::new(redis), Some(family)))
}

/// Takes the data directory's lock file (`LOCK`), or says which process holds it.
fn lock_data_dir(dir: &std::path::Path) -> Result<std::fs::File, Error> {
    let path = dir.join("LOCK");
    let storage = |reason: String, e: Option<std::io::Error>| Error::Storage {
        path: path.display().to_string(),
        reason,
        source: e.map(|e| Arc::new(e) as distkit_core::ErrorSource),
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| storage(format!("cannot open the lock file: {e}"), Some(e)))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            return Err(storage(
                format!(
                    "another node process (pid {}) uses this data directory; give each node its own",
                    holder.trim()
                ),
                None,
            ));
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(storage(format!("cannot lock it: {e}"), Some(e)));
        }
    }
    let _ = file.set_len(0);
    let _ = std::io::Write::write_all(&mut &file, std::process::id().to_string().as_bytes());
    Ok(file)
}

/// With client tokens configured, every public route but /healthz and /readyz needs a listed
/// bearer token, and a read token may only GET: 401 without a known token, 403 for a write
/// with a read token. (The peer routes check the cluster token themselves.)
async fn client_auth(
    State(app): State<Arc<App>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(tokens) = &app.settings.client_tokens else {
        return next.run(req).await;
    };
    if matches!(req.uri().path(), "/healthz" | "/readyz") {
        return next.run(req).await;
    }
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    // Every token is compared (in constant time), whichever matches.
    let mut known = None;
    for (write, t) in tokens {
        if t.matches_authorization(header) {
            known = Some(known.unwrap_or(false) | *write);
        }
    }
    let Some(may_write) = known else {
        let mut refused = error(StatusCode::UNAUTHORIZED, "missing or unknown client token");
        refused.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static("Bearer realm=\"distkit\""),
        );
        return refused;
    };
    let reads = matches!(
        *req.method(),
        axum::http::Method::GET | axum::http::Method::HEAD
    );
    if !reads && !may_write {
        return error(StatusCode::FORBIDDEN, "this client token may only read");
    }
    next.run(req).await
}

/// A refusal that is not an [`Error`], with the JSON body every distkit router sends.
fn error(status: StatusCode, message: &str) -> Response {
    let kind = match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::PAYLOAD_TOO_LARGE | StatusCode::URI_TOO_LONG => "too_large",
        StatusCode::REQUEST_TIMEOUT => "timeout",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        _ => "invalid_input",
    };
    let body = ErrorBody {
        // Waiting and sending again can help with these; not with the rest.
        retryable: matches!(
            status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::REQUEST_TIMEOUT
        ),
        ..ErrorBody::new(kind, message)
    };
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_json(),
    )
        .into_response()
}

/// The one conversion from an [`Error`] to a response, shared with every distkit router.
fn from_error(e: &Error) -> Response {
    e.into_response()
}

/// The key or name in the path: 414 when it is longer than `max` bytes (the URI is too
/// long for what it names), 400 when it is not UTF-8.
fn path(
    p: Result<Path<String>, PathRejection>,
    max: usize,
    what: &str,
) -> Result<String, Response> {
    let s = p
        .map(|Path(s)| s)
        .map_err(|e| error(StatusCode::BAD_REQUEST, &format!("bad path: {e}")))?;
    if s.len() > max {
        return Err(error(
            StatusCode::URI_TOO_LONG,
            &format!("{what} are at most {max} bytes, got {}", s.len()),
        ));
    }
    Ok(s)
}

/// A request body of at most `limit` bytes, sent within [`BODY_READ`].
async fn read_body(body: Body, limit: usize, what: &str) -> Result<axum::body::Bytes, Response> {
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("{what} are at most {limit} bytes"),
        )
    };
    // A body over the limit is read up to the limit before the 413, not refused on its
    // declared length: a client still sending would see its connection reset, not the 413.
    match tokio::time::timeout(crate::serve::BODY_READ, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => {
            let over = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
                || e.into_inner().is::<http_body_util::LengthLimitError>();
            Err(if over {
                too_large()
            } else {
                // Cut off before its declared length, or a malformed chunked encoding.
                error(
                    StatusCode::BAD_REQUEST,
                    "the request body was cut off or malformed",
                )
            })
        }
        Err(_) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            &format!(
                "the body did not arrive within {:?}",
                crate::serve::BODY_READ
            ),
        )),
    }
}

async fn json_body<T: serde::de::DeserializeOwned + Default>(body: Body) -> Result<T, Response> {
    let bytes = read_body(body, MAX_JSON, "JSON bodies").await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| error(StatusCode::BAD_REQUEST, &format!("malformed JSON: {e}")))
}

/// What a handler answers: the error side is a finished error response, so request checks
/// can use `?`.
type Reply = Result<Response, Response>;

/// A component error as its HTTP error response.
fn failed(e: Error) -> Response {
    from_error(&e)
}

async fn cache_get(State(app): State<Arc<App>>, key: Result<Path<String>, PathRejection>) -> Reply {
    let key = path(key, distkit_dcache::DEFAULT_MAX_KEY, "cache keys")?;
    match app.cache.get(&key).await.map_err(failed)? {
        Some(v) => Ok(([(header::CONTENT_TYPE, "application/octet-stream")], v).into_response()),
        None => Err(error(StatusCode::NOT_FOUND, "not cached")),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TtlQuery {
    ttl_ms: Option<u64>,
}

async fn cache_put(
    State(app): State<Arc<App>>,
    key: Result<Path<String>, PathRejection>,
    query: Result<Query<TtlQuery>, QueryRejection>,
    body: Body,
) -> Reply {
    let key = path(key, distkit_dcache::DEFAULT_MAX_KEY, "cache keys")?;
    let Ok(Query(q)) = query else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "the only query parameter is ttl_ms, once, a whole number of milliseconds",
        ));
    };
    let value = read_body(body, distkit_dcache::DEFAULT_MAX_VALUE, "values").await?;
    match q.ttl_ms {
        Some(0) => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "ttl_ms must be greater than zero",
            ));
        }
        Some(ms) => {
            app.cache
                .set_with_ttl(&key, value, Duration::from_millis(ms))
                .await
        }
        None => app.cache.set(&key, value).await,
    }
    .map_err(failed)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn cache_delete(
    State(app): State<Arc<App>>,
    key: Result<Path<String>, PathRejection>,
) -> Reply {
    let key = path(key, distkit_dcache::DEFAULT_MAX_KEY, "cache keys")?;
    let deleted = app.cache.delete(&key).await.map_err(failed)?;
    Ok(axum::Json(serde_json::json!({ "deleted": deleted })).into_response())
}

#[derive(Deserialize, Default)]
#[serde(
    deny_unknown_fields,
    expecting = "a JSON object with the optional fields ttl_ms and wait_ms (and permits, for a semaphore)"
)]
struct AcquireBody {
    ttl_ms: Option<u64>,
    wait_ms: Option<u64>,
    permits: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(
    deny_unknown_fields,
    expecting = "a JSON object with the lock's token (and ttl_ms to extend)"
)]
struct TokenBody {
    token: Option<String>,
    ttl_ms: Option<u64>,
}

type NameParam = Result<Path<String>, PathRejection>;

/// The node's fair lock, read-write lock and semaphore, or 501 when its lock backend has
/// none.
fn family(app: &App) -> Result<&Family, Response> {
    app.family.as_ref().ok_or_else(|| {
        error(
            StatusCode::NOT_IMPLEMENTED,
            "this node's lock backend (redlock) offers plain locks and lock sets only; fair \
             locks, read-write locks and semaphores need --redis or the in-process backend",
        )
    })
}

/// The backend of `kind`, or 501 when the node's lock backend has no such lock.
fn backend(app: &App, kind: Kind) -> Result<Arc<dyn DistributedLock>, Response> {
    Ok(match kind {
        Kind::Lock => app.locks.clone(),
        Kind::Fair => family(app)?.fair.clone(),
        Kind::Read => family(app)?.rw.read_lock(),
        Kind::Write => family(app)?.rw.write_lock(),
        Kind::Semaphore => family(app)?.semaphores.clone(),
    })
}

async fn lock_acquire(State(app): State<Arc<App>>, name: NameParam, body: Body) -> Reply {
    acquire_kind(State(app), name, body, Kind::Lock).await
}

/// `POST` on a lock of any kind: `{ttl_ms, wait_ms}` (and `permits` for a semaphore) to
/// `{name, token, fencing_token, ttl_ms}` (and `permits`).
async fn acquire_kind(
    State(app): State<Arc<App>>,
    name: NameParam,
    body: Body,
    kind: Kind,
) -> Reply {
    let name = path(name, distkit_dlock::MAX_NAME_LEN, "lock names")?;
    let req: AcquireBody = json_body(body).await?;
    let opts = acquire_options(req.ttl_ms, req.wait_ms)?;
    if req.permits.is_some() && kind != Kind::Semaphore {
        count_acquire("invalid");
        return Err(error(
            StatusCode::BAD_REQUEST,
            "permits is a field of semaphore acquisitions only",
        ));
    }
    let permits = req.permits.unwrap_or(1);
    let locks = backend(&app, kind)?;
    let sem = match kind {
        Kind::Semaphore => Some(family(&app)?.semaphores.clone()),
        _ => None,
    };
    let one = async {
        match sem {
            Some(sem) => sem.acquire_permits(&name, permits, opts).await,
            None => locks.acquire_with(&name, opts).await,
        }
        .map(|g| vec![g])
    };
    let guards = granted(&app, one).await?;
    let mut body = serde_json::json!({
        "name": name,
        "token": guards[0].token().to_string(),
        "fencing_token": guards[0].fencing_token().get(),
        "ttl_ms": guards[0].lease().ttl().as_millis() as u64,
    });
    if kind == Kind::Semaphore {
        body["permits"] = permits.into();
    }
    keep_leases(guards);
    Ok(axum::Json(body).into_response())
}

#[derive(Deserialize, Default)]
#[serde(
    deny_unknown_fields,
    expecting = "a JSON object with names (a list of lock names) and the optional ttl_ms and wait_ms"
)]
struct LockSetBody {
    #[serde(default)]
    names: Vec<String>,
    ttl_ms: Option<u64>,
    wait_ms: Option<u64>,
}

/// `POST /v1/lock-sets`: several locks at once, all or none (a `MultiLock`); each is then
/// released or extended by its own name and token.
async fn lock_set_acquire(State(app): State<Arc<App>>, body: Body) -> Reply {
    let req: LockSetBody = json_body(body).await?;
    let opts = acquire_options(req.ttl_ms, req.wait_ms)?;
    let names: Vec<&str> = req.names.iter().map(String::as_str).collect();
    let multi = distkit_dlock::MultiLock::new(app.locks.clone());
    let acquire = async {
        let set = multi.acquire(&names, opts).await?;
        Ok::<_, Error>(set.into_guards())
    };
    let guards = granted(&app, acquire).await?;
    let locks: Vec<serde_json::Value> = guards
        .iter()
        .map(|g| {
            serde_json::json!({
                "name": g.name(),
                "token": g.token().to_string(),
                "fencing_token": g.fencing_token().get(),
            })
        })
        .collect();
    let ttl_ms = guards
        .first()
        .map_or(0, |g| g.lease().ttl().as_millis() as u64);
    keep_leases(guards);
    Ok(axum::Json(serde_json::json!({ "locks": locks, "ttl_ms": ttl_ms })).into_response())
}

/// The acquire options of a request: `wait_ms` up to a minute, like a TTL's own limit.
fn acquire_options(ttl_ms: Option<u64>, wait_ms: Option<u64>) -> Result<AcquireOptions, Response> {
    let mut opts = AcquireOptions::new();
    if let Some(ms) = ttl_ms {
        opts = opts.ttl(Duration::from_millis(ms));
    }
    if let Some(ms) = wait_ms {
        if ms > MAX_WAIT_MS {
            count_acquire("invalid");
            return Err(error(
                StatusCode::BAD_REQUEST,
                &format!("wait_ms is at most {MAX_WAIT_MS} (one minute), got {ms}"),
            ));
        }
        opts = opts.wait(Duration::from_millis(ms));
    }
    Ok(opts)
}

/// Runs an acquisition unless shutdown begins first, and counts its result. A waiting
/// acquisition is answered 503 as soon as shutdown begins (dropping it is cancel safe: it
/// leaves no grant behind), instead of being cut off with the connection; a grant that
/// arrives as shutdown begins is handed back.
async fn granted(
    app: &App,
    acquire: impl std::future::Future<Output = Result<Vec<distkit_core::LockGuard>, Error>>,
) -> Result<Vec<distkit_core::LockGuard>, Response> {
    let mut stopping = app.stopping.subscribe();
    if *stopping.borrow_and_update() {
        count_acquire("refused");
        return Err(shutting_down());
    }
    let waited = std::time::Instant::now();
    let acquired = tokio::select! {
        r = acquire => Some(r),
        _ = stopping.wait_for(|s| *s) => None,
    };
    metrics::histogram!("distkit_node_lock_wait_seconds").record(waited.elapsed().as_secs_f64());
    let guards: Vec<distkit_core::LockGuard> = match acquired {
        None => {
            count_acquire("refused");
            return Err(shutting_down());
        }
        Some(Ok(g)) => g,
        Some(Err(e)) => {
            count_acquire(match &e {
                Error::Busy { .. } => "busy",
                e if e.http_status() < 500 => "invalid",
                _ => "error",
            });
            return Err(failed(e));
        }
    };
    if *app.stopping.borrow() {
        for g in guards {
            let _ = g.release().await;
        }
        count_acquire("refused");
        return Err(shutting_down());
    }
    count_acquire("granted");
    Ok(guards)
}

/// The node keeps no state for a grant: the lease lives in the backend until the client
/// releases or extends it (through any node) or its TTL ends.
fn keep_leases(guards: Vec<distkit_core::LockGuard>) {
    for g in guards {
        drop(g.into_lease());
    }
}

/// The longest `wait_ms` an acquire may ask for.
const MAX_WAIT_MS: u64 = 60_000;

/// Counts an acquire by its result: granted, busy, refused (shutting down), invalid (the
/// client's mistake) or error (the backend's).
fn count_acquire(result: &'static str) {
    metrics::counter!("distkit_node_lock_acquires_total", "result" => result).increment(1);
}

fn shutting_down() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "this node is shutting down; acquire through another node",
    )
}

/// The lease a client names by lock name and token (the node kept no state for it).
fn named_lease(name: &str, token: Option<&str>, ttl: Duration) -> Result<Lease, Response> {
    let token: LockToken = token
        .ok_or_else(|| error(StatusCode::BAD_REQUEST, "the body needs the lock's token"))?
        .parse()
        .map_err(|e: Error| e.into_response())?;
    Ok(Lease::new(
        name,
        token,
        FencingToken::default(),
        ttl,
        std::time::Instant::now(),
    ))
}

async fn lock_release(State(app): State<Arc<App>>, name: NameParam, body: Body) -> Reply {
    release_kind(State(app), name, body, Kind::Lock).await
}

async fn release_kind(
    State(app): State<Arc<App>>,
    name: NameParam,
    body: Body,
    kind: Kind,
) -> Reply {
    let name = path(name, distkit_dlock::MAX_NAME_LEN, "lock names")?;
    let req: TokenBody = json_body(body).await?;
    let lease = named_lease(&name, req.token.as_deref(), Duration::ZERO)?;
    let released = backend(&app, kind)?.release(&lease).await;
    let result = match &released {
        Ok(true) => "released",
        Ok(false) => "not_held",
        Err(_) => "error",
    };
    metrics::counter!("distkit_node_lock_releases_total", "result" => result).increment(1);
    let released = released.map_err(failed)?;
    Ok(axum::Json(serde_json::json!({ "released": released })).into_response())
}

async fn lock_extend(State(app): State<Arc<App>>, name: NameParam, body: Body) -> Reply {
    extend_kind(State(app), name, body, Kind::Lock).await
}

async fn extend_kind(
    State(app): State<Arc<App>>,
    name: NameParam,
    body: Body,
    kind: Kind,
) -> Reply {
    let name = path(name, distkit_dlock::MAX_NAME_LEN, "lock names")?;
    let req: TokenBody = json_body(body).await?;
    let ttl = Duration::from_millis(req.ttl_ms.unwrap_or(30_000));
    let mut lease = named_lease(&name, req.token.as_deref(), ttl)?;
    // A refused TTL is an error that changes nothing: the lease stays as it was.
    let extended = backend(&app, kind)?
        .extend(&mut lease, ttl)
        .await
        .map_err(failed)?;
    Ok(
        axum::Json(serde_json::json!({ "extended": extended, "ttl_ms": ttl.as_millis() as u64 }))
            .into_response(),
    )
}

/// `GET /v1/semaphores/{name}`: `{limit, in_use}`.
async fn semaphore_state(State(app): State<Arc<App>>, name: NameParam) -> Reply {
    let name = path(name, distkit_dlock::MAX_NAME_LEN, "lock names")?;
    let count = family(&app)?
        .semaphores
        .permits(&name)
        .await
        .map_err(failed)?;
    Ok(
        axum::Json(serde_json::json!({ "limit": count.limit, "in_use": count.in_use }))
            .into_response(),
    )
}

#[derive(Deserialize, Default)]
#[serde(
    deny_unknown_fields,
    expecting = "a JSON object with permits, the new limit"
)]
struct LimitBody {
    permits: Option<u32>,
}

/// `PUT /v1/semaphores/{name}` `{permits}`: sets the limit (holders keep what they hold).
async fn semaphore_limit(State(app): State<Arc<App>>, name: NameParam, body: Body) -> Reply {
    let name = path(name, distkit_dlock::MAX_NAME_LEN, "lock names")?;
    let req: LimitBody = json_body(body).await?;
    let permits = req.permits.ok_or_else(|| {
        error(
            StatusCode::BAD_REQUEST,
            "the body needs permits, the new limit",
        )
    })?;
    let sem = &family(&app)?.semaphores;
    sem.set_permits(&name, permits).await.map_err(failed)?;
    let count = sem.permits(&name).await.map_err(failed)?;
    Ok(
        axum::Json(serde_json::json!({ "limit": count.limit, "in_use": count.in_use }))
            .into_response(),
    )
}

async fn cluster(State(app): State<Arc<App>>) -> Response {
    // Settle moka's pending bookkeeping so the entry count is exact.
    app.cache.sync().await;
    let l = app.elector.leadership();
    let shares: HashMap<NodeId, f64> = app.cache.ring_shares().into_iter().collect();
    // From the background probes' state: this answers at once even when a peer hangs.
    let health: HashMap<NodeId, Probe> = app
        .peer_health
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let mut members = vec![serde_json::json!({
        "id": app.settings.id,
        "url": format!(
            "{}://{}",
            if app.settings.tls.is_some() { "https" } else { "http" },
            app.settings.listen
        ),
        "healthy": true,
        "state": "ok",
        "ring_share": shares.get(&app.settings.id).copied().unwrap_or(0.0),
    })];
    for (id, url) in &app.settings.peers {
        let probe = health.get(id);
        members.push(serde_json::json!({
            "id": id,
            "url": url,
            "healthy": probe.is_some_and(|p| p.state == PeerState::Ok),
            "state": probe.map_or("unknown", |p| p.state.as_str()),
            "checked_ms_ago": probe.map(|p| u64::try_from(p.at.elapsed().as_millis()).unwrap_or(u64::MAX)),
            "ring_share": shares.get(id).copied().unwrap_or(0.0),
        }));
    }
    axum::Json(serde_json::json!({
        "id": app.settings.id,
        "role": l.role,
        "leader": l.leader,
        "term": l.term,
        "lease": app.elector.is_leader_with_lease(),
        "lock_backend": app.lock_backend,
        "local_entries": app.cache.local_len(),
        "members": members,
    }))
    .into_response()
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    match app.elector.leader_id() {
        Some(leader) => {
            axum::Json(serde_json::json!({ "ready": true, "leader": leader })).into_response()
        }
        None => error(StatusCode::SERVICE_UNAVAILABLE, "no leader known yet"),
    }
}

async fn metrics_text(State(app): State<Arc<App>>) -> Response {
    crate::observe::process(app.started);
    match &app.metrics {
        Some(h) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            h.render(),
        )
            .into_response(),
        None => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder not installed in this process",
        ),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_data_directory_serves_one_node_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let first = super::lock_data_dir(dir.path()).unwrap();
        let err = super::lock_data_dir(dir.path()).unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(first);
        assert!(
            super::lock_data_dir(dir.path()).is_ok(),
            "free once the first is gone"
        );
    }
}
