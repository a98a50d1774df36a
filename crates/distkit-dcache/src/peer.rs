//! The peer protocol: an axum router every node mounts and the reqwest client that calls it.
//!
//! All routes live under `/v1/peer/cache`, require `Authorization: Bearer <cluster token>`,
//! and are only ever served from the receiving node's own tier: a node never forwards a
//! peer's request, so members that disagree about the ring cannot bounce a request between
//! them (groupcache's open forwarding-loop bug). Values travel as raw bytes; the remaining
//! TTL travels in `x-distkit-ttl-ms` (never an absolute time), the owner's write sequence
//! number in `x-distkit-seq`. A key travels in the path as the lowercase hex of its bytes, so
//! every key arrives unchanged: no URL normalisation can drop a tab, fold `..` or split at a
//! `/`.
//!
//! | route | answer |
//! |---|---|
//! | `GET /v1/peer/cache/{hex key}` | 200 value, 404 miss |
//! | `PUT /v1/peer/cache/{hex key}[?lease=N]` | 204; with a lease, completes that load |
//! | `PUT /v1/peer/cache/{hex key}?replica=V` | 204: the owner's write number V, for a replica (kept unless it holds a newer one; 400 at a node that is not a replica of the key) |
//! | `DELETE /v1/peer/cache/{hex key}` | 200 `{"deleted": bool}` |
//! | `DELETE /v1/peer/cache/{hex key}?replica=V` | 204: the owner's delete, for a replica |
//! | `POST /v1/peer/cache/{hex key}/load?lease=N` | 200 value, 202 `{"lease": N}` (you load it, under the lease you proposed), 409 claim again, an error with kind `load_failed` (the load you waited for failed) |
//! | `POST /v1/peer/cache/{hex key}/abandon?lease=N` | 204: the loader went away (empty body: waiters claim again) or failed (body `{"from", "error"}`: waiters get that failure) |
//! | `POST /v1/peer/invalidate` | 204; body `{"from", "seq", "keys"}` |
//! | `GET /v1/peer/seq` | 200 `{"seq": N}` |
//! | `POST /v1/peer/join` | 204; body `{"from"}`: the sender adds this node to its members, so this node drops what it holds (it may have missed writes while it was out) |
//!
//! Every key request carries the sender's membership fingerprint in `x-distkit-members`; a
//! node whose members differ, or a request without it, gets 421 (kind `membership_mismatch`, retryable) instead of
//! acting under a ring the sender does not share.
//!
//! Errors: 401 wrong or missing token, 400 malformed input, 413 key or value over the limit,
//! always with the JSON body every distkit router sends (`{"error", "kind", "retryable"}`, see
//! `distkit_core::ErrorBody`); the client hands the peer's reason on to the caller.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use distkit_core::{ClusterToken, Error, ErrorBody, NodeId, PeerUrl};
use serde::Deserialize;

use crate::local::Entry;
use crate::membership::Members;

const TTL_HEADER: &str = "x-distkit-ttl-ms";
const SEQ_HEADER: &str = "x-distkit-seq";
const FORWARDED_HEADER: &str = "x-distkit-forwarded";
/// The sender's membership fingerprint, on every key request.
const MEMBERS_HEADER: &str = "x-distkit-members";

pub(crate) fn check_url(id: &NodeId, url: &str, tls: bool) -> Result<String, Error> {
    PeerUrl::parse(url)
        .and_then(|u| u.check_scheme(tls).map(|()| u))
        .map(|u| u.as_str().to_owned())
        .map_err(|e| Error::invalid_input("peer url", format!("for {id}: {e}")))
}

/// Whether `e` means the peer did not answer at all (a connection that failed or broke, or
/// a timeout), as opposed to an answer that was an error.
pub(crate) fn unreachable(e: &Error) -> bool {
    matches!(e, Error::Timeout { .. })
        || std::error::Error::source(e).is_some_and(|s| s.is::<reqwest::Error>())
}

/// The peer client's TLS configuration; without the `tls` feature there is none to give.
#[cfg(feature = "tls")]
pub(crate) type TlsConfig = distkit_core::tls::PeerTls;
#[cfg(not(feature = "tls"))]
pub(crate) type TlsConfig = std::convert::Infallible;

/// What the owner answered to a load claim.
pub(crate) enum RemoteLoad {
    Value(Bytes, Option<Duration>, u64),
    Lease(u64),
    /// The attempt this node waited for at the owner failed; the owner's error.
    Failed(Error),
    Retry,
}

#[derive(Clone, Debug)]
pub(crate) struct PeerClient {
    http: reqwest::Client,
    timeout: Duration,
    /// What this node presents; empty when it has no peers (nothing is then sent).
    token: Arc<str>,
    /// This node's members, whose fingerprint goes with every key request.
    members: Arc<Members>,
    /// Whether peers are reached over https.
    tls: bool,
}

impl PeerClient {
    pub(crate) fn new(
        token: String,
        timeout: Duration,
        members: Arc<Members>,
        tls: Option<&TlsConfig>,
    ) -> Result<Self, Error> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true);
        #[cfg(feature = "tls")]
        let http = match tls {
            Some(tls) => http.tls_backend_preconfigured(tls.client_config()),
            None => http,
        };
        let http = http
            .build()
            .map_err(|e| Error::invalid_input("http client", e.to_string()))?;
        Ok(Self {
            http,
            timeout,
            token: token.into(),
            members,
            tls: tls.is_some(),
        })
    }

    /// Whether peers are reached over https.
    pub(crate) fn tls(&self) -> bool {
        self.tls
    }

    /// Tells the node at `base` that it is being added to this node's members: it drops
    /// whatever it holds (it may have missed writes while it was out).
    pub(crate) async fn join(&self, base: &str, from: &NodeId) -> Result<(), Error> {
        let url = format!("{base}/v1/peer/join");
        let resp = self
            .send(
                self.http
                    .post(url)
                    .bearer_auth(&*self.token)
                    .json(&serde_json::json!({ "from": from })),
                base,
            )
            .await?;
        Self::ok_or_refused(resp, base).await
    }

    fn url(base: &str, key: &str, suffix: Option<&str>) -> Result<reqwest::Url, Error> {
        let mut u = reqwest::Url::parse(base)
            .map_err(|e| Error::invalid_input("peer url", e.to_string()))?;
        {
            let mut segs = u
                .path_segments_mut()
                .map_err(|()| Error::invalid_input("peer url", "it cannot have a path"))?;
            segs.extend(["v1", "peer", "cache", &hex_encode(key.as_bytes())]);
            if let Some(s) = suffix {
                segs.push(s);
            }
        }
        Ok(u)
    }

    fn request(&self, method: reqwest::Method, url: reqwest::Url) -> reqwest::RequestBuilder {
        let members = self.members.peek().fingerprint();
        self.http
            .request(method, url)
            .bearer_auth(&*self.token)
            .header(FORWARDED_HEADER, "1")
            .header(MEMBERS_HEADER, format!("{members:016x}"))
    }

    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<reqwest::Response, Error> {
        self.send_within(req, what, self.timeout).await
    }

    async fn send_within(
        &self,
        req: reqwest::RequestBuilder,
        what: &str,
        limit: Duration,
    ) -> Result<reqwest::Response, Error> {
        req.send().await.map_err(|e| {
            if e.is_timeout() {
                Error::Timeout {
                    operation: "cache peer request",
                    after: limit,
                }
            } else {
                Error::unavailable(what.to_owned(), "the request failed", e)
            }
        })
    }

    async fn body(resp: reqwest::Response, what: &str) -> Result<Bytes, Error> {
        resp.bytes()
            .await
            .map_err(|e| Error::unavailable(what.to_owned(), "the response was cut off", e))
    }

    /// A peer's refusal, with the peer's own reason and kind: a 413 stays a size error, a
    /// 400 a bad input, a 503 a retryable outage.
    async fn refused(resp: reqwest::Response, what: &str) -> Error {
        let status = resp.status();
        let body: Option<ErrorBody> = resp
            .bytes()
            .await
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        Self::refusal(status, body.as_ref().map_or("", |b| &b.error), what)
    }

    fn refusal(status: StatusCode, message: &str, what: &str) -> Error {
        let reason = if message.is_empty() {
            format!("answered {status}")
        } else {
            format!("answered {status}: {message}")
        };
        match status {
            StatusCode::BAD_REQUEST => Error::invalid_input("cache request", reason),
            StatusCode::PAYLOAD_TOO_LARGE => Error::invalid_input("cache request size", reason),
            StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::GATEWAY_TIMEOUT
            | StatusCode::MISDIRECTED_REQUEST => Error::Unavailable {
                endpoint: what.to_owned(),
                reason,
                source: None,
            },
            _ => Error::protocol(what.to_owned(), reason),
        }
    }

    pub(crate) async fn get(
        &self,
        base: &str,
        key: &str,
    ) -> Result<Option<(Bytes, Option<Duration>, u64)>, Error> {
        let resp = self
            .send(
                self.request(reqwest::Method::GET, Self::url(base, key, None)?),
                base,
            )
            .await?;
        match resp.status() {
            StatusCode::OK => {
                let (ttl, seq) = (ttl_of(resp.headers()), seq_of(resp.headers()));
                Ok(Some((Self::body(resp, base).await?, ttl, seq)))
            }
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(Self::refused(resp, base).await),
        }
    }

    pub(crate) async fn put(
        &self,
        base: &str,
        key: &str,
        value: &Bytes,
        ttl: Option<Duration>,
    ) -> Result<(), Error> {
        self.put_inner(base, key, None, value, ttl).await
    }

    pub(crate) async fn fill(
        &self,
        base: &str,
        key: &str,
        lease: u64,
        value: &Bytes,
        ttl: Option<Duration>,
    ) -> Result<(), Error> {
        self.put_inner(base, key, Some(lease), value, ttl).await
    }

    async fn put_inner(
        &self,
        base: &str,
        key: &str,
        lease: Option<u64>,
        value: &Bytes,
        ttl: Option<Duration>,
    ) -> Result<(), Error> {
        self.put_with(base, key, lease.map(|l| ("lease", l)), value, ttl)
            .await
    }

    /// A PUT of `value`, with one query parameter (a lease or a replica's write number) and
    /// the remaining TTL (a TTL that ran out travels as the smallest, 1 ms).
    async fn put_with(
        &self,
        base: &str,
        key: &str,
        query: Option<(&str, u64)>,
        value: &Bytes,
        ttl: Option<Duration>,
    ) -> Result<(), Error> {
        let mut url = Self::url(base, key, None)?;
        if let Some((name, v)) = query {
            url.query_pairs_mut().append_pair(name, &v.to_string());
        }
        let mut req = self
            .request(reqwest::Method::PUT, url)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(value.clone());
        if let Some(t) = ttl {
            req = req.header(TTL_HEADER, t.as_millis().max(1).to_string());
        }
        let resp = self.send(req, base).await?;
        Self::ok_or_refused(resp, base).await
    }

    /// `Ok` for a success, else the peer's refusal with its reason.
    async fn ok_or_refused(resp: reqwest::Response, base: &str) -> Result<(), Error> {
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(Self::refused(resp, base).await)
        }
    }

    /// Sends the owner's write `version` of `key` to a replica.
    pub(crate) async fn replicate(
        &self,
        base: &str,
        key: &str,
        version: u64,
        value: &Bytes,
        ttl: Option<Duration>,
    ) -> Result<(), Error> {
        self.put_with(base, key, Some(("replica", version)), value, ttl)
            .await
    }

    /// Sends the owner's delete (write `version`) of `key` to a replica.
    pub(crate) async fn unreplicate(
        &self,
        base: &str,
        key: &str,
        version: u64,
    ) -> Result<(), Error> {
        let mut url = Self::url(base, key, None)?;
        url.query_pairs_mut()
            .append_pair("replica", &version.to_string());
        let resp = self
            .send(self.request(reqwest::Method::DELETE, url), base)
            .await?;
        Self::ok_or_refused(resp, base).await
    }

    pub(crate) async fn delete(&self, base: &str, key: &str) -> Result<bool, Error> {
        let resp = self
            .send(
                self.request(reqwest::Method::DELETE, Self::url(base, key, None)?),
                base,
            )
            .await?;
        if !resp.status().is_success() {
            return Err(Self::refused(resp, base).await);
        }
        let v: serde_json::Value = serde_json::from_slice(&Self::body(resp, base).await?)
            .map_err(|e| Error::protocol(base.to_owned(), e.to_string()))?;
        Ok(v["deleted"].as_bool().unwrap_or(false))
    }

    /// Asks the owner to load `key`, proposing `lease` as the attempt's id should this node
    /// be the one to load it.
    pub(crate) async fn load(
        &self,
        base: &str,
        key: &str,
        wait: Duration,
        lease: u64,
    ) -> Result<RemoteLoad, Error> {
        let limit = wait.saturating_add(Duration::from_secs(1));
        let mut url = Self::url(base, key, Some("load"))?;
        url.query_pairs_mut()
            .append_pair("lease", &lease.to_string());
        let req = self.request(reqwest::Method::POST, url).timeout(limit);
        let resp = self.send_within(req, base, limit).await?;
        match resp.status() {
            StatusCode::OK => {
                let (ttl, seq) = (ttl_of(resp.headers()), seq_of(resp.headers()));
                Ok(RemoteLoad::Value(Self::body(resp, base).await?, ttl, seq))
            }
            StatusCode::ACCEPTED => {
                let v: serde_json::Value =
                    serde_json::from_slice(&Self::body(resp, base).await?)
                        .map_err(|e| Error::protocol(base.to_owned(), e.to_string()))?;
                v["lease"]
                    .as_u64()
                    .map(RemoteLoad::Lease)
                    .ok_or_else(|| Error::protocol(base.to_owned(), "no lease in a 202 answer"))
            }
            StatusCode::CONFLICT => Ok(RemoteLoad::Retry),
            status => {
                let body = Self::body(resp, base).await?;
                match serde_json::from_slice::<ErrorBody>(&body) {
                    Ok(b) if b.kind == "load_failed" => Ok(RemoteLoad::Failed(Error::load(
                        key,
                        format!("at the owner {base}: {}", b.error),
                    ))),
                    Ok(b) => Err(Self::refusal(status, &b.error, base)),
                    Err(_) => Err(Self::refusal(status, "", base)),
                }
            }
        }
    }

    /// Tells the owner that the loader of `lease` failed with `e` (its waiters share it).
    pub(crate) async fn fail(
        &self,
        base: &str,
        key: &str,
        lease: u64,
        from: &NodeId,
        e: &Error,
    ) -> Result<(), Error> {
        let mut url = Self::url(base, key, Some("abandon"))?;
        url.query_pairs_mut()
            .append_pair("lease", &lease.to_string());
        let mut message = e.to_string();
        let mut cause = std::error::Error::source(e);
        while let Some(c) = cause {
            message.push_str(": ");
            message.push_str(&c.to_string());
            cause = c.source();
        }
        let mut cut = message.len().min(3000);
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        let resp = self
            .send(
                self.request(reqwest::Method::POST, url)
                    .json(&serde_json::json!({ "from": from, "error": message })),
                base,
            )
            .await?;
        Self::ok_or_refused(resp, base).await
    }

    pub(crate) async fn abandon(&self, base: &str, key: &str, lease: u64) -> Result<(), Error> {
        let mut url = Self::url(base, key, Some("abandon"))?;
        url.query_pairs_mut()
            .append_pair("lease", &lease.to_string());
        let resp = self
            .send(self.request(reqwest::Method::POST, url), base)
            .await?;
        Self::ok_or_refused(resp, base).await
    }

    pub(crate) async fn invalidate(
        &self,
        base: &str,
        from: &NodeId,
        seq: u64,
        keys: &[String],
    ) -> Result<(), Error> {
        let url = format!("{base}/v1/peer/invalidate");
        let body = serde_json::json!({ "from": from, "seq": seq, "keys": keys });
        let resp = self
            .send(
                self.http.post(url).bearer_auth(&*self.token).json(&body),
                base,
            )
            .await?;
        Self::ok_or_refused(resp, base).await
    }

    pub(crate) async fn seq(&self, base: &str) -> Result<u64, Error> {
        let url = format!("{base}/v1/peer/seq");
        let resp = self
            .send(self.http.get(url).bearer_auth(&*self.token), base)
            .await?;
        if !resp.status().is_success() {
            return Err(Self::refused(resp, base).await);
        }
        let v: serde_json::Value = serde_json::from_slice(&Self::body(resp, base).await?)
            .map_err(|e| Error::protocol(base.to_owned(), e.to_string()))?;
        v["seq"]
            .as_u64()
            .ok_or_else(|| Error::protocol(base.to_owned(), "no seq"))
    }
}

fn ttl_of(h: &HeaderMap) -> Option<Duration> {
    h.get(TTL_HEADER)?
        .to_str()
        .ok()?
        .parse()
        .ok()
        .map(Duration::from_millis)
}

fn seq_of(h: &HeaderMap) -> u64 {
    h.get(SEQ_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// What a node offers its peers: the narrow interface the router is written against (the
/// cache implements it; this module knows nothing of the cache's fields).
#[async_trait]
pub(crate) trait PeerService: Send + Sync + 'static {
    /// The cluster token peers must present; `None` refuses every request.
    fn token(&self) -> Option<&ClusterToken>;
    /// This node's membership fingerprint.
    fn members(&self) -> u64;
    /// Another node adds this one to its members: drop what this node holds.
    fn joined(&self, by: &NodeId);
    /// The value limit in bytes.
    fn max_value(&self) -> usize;
    /// The key limit in bytes.
    fn max_key(&self) -> usize;
    /// Checks a decoded key.
    fn check_key(&self, key: &str) -> Result<(), Error>;
    /// This node's write sequence number now (read before the value a response carries).
    fn seq(&self) -> u64;
    /// Whether `id` is a member.
    fn is_peer(&self, id: &NodeId) -> bool;
    /// The value this node holds as owner.
    async fn get_owned(&self, key: &str) -> Option<Entry>;
    /// Stores as owner and invalidates the peers' copies before returning; `Err` when a
    /// peer did not confirm.
    async fn set_owned(&self, key: &str, value: Bytes, ttl: Option<Duration>) -> Result<(), Error>;
    /// Deletes as owner, likewise.
    async fn delete_owned(&self, key: &str) -> Result<bool, Error>;
    /// A peer's load request, with the attempt id the peer proposes should it lead.
    async fn load_for_peer(&self, key: &str, proposed: Option<u64>) -> PeerLoad;
    /// The peer holding `lease` loaded the value.
    async fn fill(&self, key: &str, lease: u64, value: Bytes, ttl: Option<Duration>);
    /// The peer holding `lease` gave up.
    fn abandon(&self, key: &str, lease: u64);
    /// A peer's invalidation.
    async fn invalidated(&self, from: &NodeId, seq: u64, keys: &[String]);
    /// The owner's write of a key this node holds a replica of (`None`: a delete).
    async fn store_replica(
        &self,
        key: &str,
        version: u64,
        value: Option<(Bytes, Option<Duration>)>,
    ) -> Result<(), Error>;
    /// The loader of the peer holding `lease` failed, with `message`.
    fn fail(&self, key: &str, lease: u64, from: &str, message: &str);
}

/// The owner's answer to a peer's load request.
pub(crate) enum PeerLoad {
    /// The value (cached, or loaded by another caller meanwhile).
    Value(Entry),
    /// The peer loads it, holding this lease.
    Lease(u64),
    /// The attempt the peer waited for failed: the peer reports that, it does not retry.
    Failed(Error),
    /// The attempt was abandoned or its lease ran out: claim again.
    Retry,
}

type Service = Arc<dyn PeerService>;

pub(crate) fn router(service: Service) -> Router {
    // A wrong method gets the same JSON body as every other refusal. Unknown paths are the
    // mounting router's to answer (axum cannot merge two routers that both have a fallback).
    Router::new()
        .route(
            "/v1/peer/cache/{key}",
            get(get_key).put(put_key).delete(delete_key),
        )
        .route("/v1/peer/cache/{key}/load", post(load_key))
        .route("/v1/peer/cache/{key}/abandon", post(abandon_key))
        .route("/v1/peer/invalidate", post(invalidate))
        .route("/v1/peer/join", post(join))
        .route("/v1/peer/seq", get(seq))
        .method_not_allowed_fallback(|| async {
            error(
                "method_not_allowed",
                "this peer route does not take that method",
            )
        })
        .with_state(service)
}

/// A refusal that is not an [`Error`]: the same JSON body every distkit router sends.
fn error(kind: &str, message: &str) -> Response {
    ErrorBody::new(kind, message).into_response()
}

/// Checks the token, decodes the key (hex of its bytes; anything else is refused with 400),
/// then the sender's membership fingerprint (421 when absent or different). The error is the
/// finished response.
#[allow(clippy::result_large_err)] // a refusal is returned once per request, not stored
fn admit(
    service: &Service,
    headers: &HeaderMap,
    key: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<String, Response> {
    if !authorized(headers, service.token()) {
        return Err(error("unauthorized", "missing or wrong cluster token"));
    }
    let Path(hex) = key.map_err(|e| error("invalid_input", &format!("bad key: {e}")))?;
    // Checked against the limit before decoding, so a huge path costs nothing.
    let limit = service.max_key();
    if hex.len() > limit.saturating_mul(2) {
        return Err(Error::too_large("cache key", hex.len() / 2, limit).into_response());
    }
    let key = hex_decode(&hex)
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| error("invalid_input", "the key must be the hex of UTF-8 bytes"))?;
    service
        .check_key(&key)
        .map_err(IntoResponse::into_response)?;
    // A sender that disagrees about the members may have the wrong owner in mind: refuse
    // rather than store or serve under a different ring.
    let theirs = headers
        .get(MEMBERS_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| u64::from_str_radix(v, 16).ok());
    if theirs != Some(service.members()) {
        return Err((
            StatusCode::MISDIRECTED_REQUEST,
            [(header::CONTENT_TYPE, "application/json")],
            ErrorBody {
                retryable: true,
                ..ErrorBody::new(
                    "membership_mismatch",
                    "the sender and this node disagree about the members; retry once both \
                     have the same view",
                )
            }
            .to_json(),
        )
            .into_response());
    }
    Ok(key)
}

fn authorized(headers: &HeaderMap, token: Option<&ClusterToken>) -> bool {
    let header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    token.is_some_and(|t| t.matches_authorization(header))
}

/// What a key handler answers: the error side is a finished error response, so request
/// checks can use `?`.
type Reply = Result<Response, Response>;

/// A value with its remaining TTL and the owner's write sequence number as it was *before*
/// the value was read (so a reader's hot copy is never newer than its number says).
fn value_response(entry: Entry, seq: u64) -> Response {
    let ttl = entry.remaining();
    let mut resp = (StatusCode::OK, entry.value).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(t) = ttl
        && let Ok(v) = HeaderValue::from_str(&t.as_millis().to_string())
    {
        h.insert(TTL_HEADER, v);
    }
    if let Ok(v) = HeaderValue::from_str(&seq.to_string()) {
        h.insert(SEQ_HEADER, v);
    }
    resp
}

async fn get_key(
    State(service): State<Service>,
    headers: HeaderMap,
    key: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Reply {
    let key = admit(&service, &headers, key)?;
    let seq = service.seq();
    match service.get_owned(&key).await {
        Some(e) => Ok(value_response(e, seq)),
        None => Err(error("not_found", "not cached")),
    }
}

#[derive(Deserialize)]
struct LeaseQuery {
    lease: Option<u64>,
    /// Set on a write the owner sends to a replica: the owner's write number.
    replica: Option<u64>,
}

async fn read_value(limit: usize, body: Body) -> Result<Bytes, Response> {
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| error("too_large", &format!("values are at most {limit} bytes")))
}

async fn put_key(
    State(service): State<Service>,
    headers: HeaderMap,
    key: Result<Path<String>, axum::extract::rejection::PathRejection>,
    query: Result<Query<LeaseQuery>, axum::extract::rejection::QueryRejection>,
    body: Body,
) -> Reply {
    let key = admit(&service, &headers, key)?;
    let Ok(Query(q)) = query else {
        return Err(error("invalid_input", "bad lease"));
    };
    let ttl = match headers
        .get(TTL_HEADER)
        .map(|v| v.to_str().ok().and_then(|s| s.parse::<u64>().ok()))
    {
        None => None,
        Some(Some(ms)) if ms > 0 && Duration::from_millis(ms) <= crate::MAX_TTL => {
            Some(Duration::from_millis(ms))
        }
        Some(_) => {
            return Err(error(
                "invalid_input",
                &format!(
                    "x-distkit-ttl-ms must be a whole number from 1 to {}",
                    crate::MAX_TTL.as_millis()
                ),
            ));
        }
    };
    let value = read_value(service.max_value(), body).await?;
    match (q.replica, q.lease) {
        (Some(version), _) => service
            .store_replica(&key, version, Some((value, ttl)))
            .await
            .map_err(IntoResponse::into_response)?,
        (None, Some(lease)) => service.fill(&key, lease, value, ttl).await,
        (None, None) => service
            .set_owned(&key, value, ttl)
            .await
            .map_err(IntoResponse::into_response)?,
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn delete_key(
    State(service): State<Service>,
    headers: HeaderMap,
    key: Result<Path<String>, axum::extract::rejection::PathRejection>,
    query: Result<Query<LeaseQuery>, axum::extract::rejection::QueryRejection>,
) -> Reply {
    let key = admit(&service, &headers, key)?;
    if let Ok(Query(LeaseQuery {
        replica: Some(version),
        ..
    })) = query
    {
        service
            .store_replica(&key, version, None)
            .await
            .map_err(IntoResponse::into_response)?;
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let deleted = service
        .delete_owned(&key)
        .await
        .map_err(IntoResponse::into_response)?;
    Ok(axum::Json(serde_json::json!({ "deleted": deleted })).into_response())
}

async fn load_key(
    State(service): State<Service>,
    headers: HeaderMap,
    key: Result<Path<String>, axum::extract::rejection::PathRejection>,
    query: Result<Query<LeaseQuery>, axum::extract::rejection::QueryRejection>,
) -> Reply {
    let key = admit(&service, &headers, key)?;
    let Ok(Query(q)) = query else {
        return Err(error("invalid_input", "bad lease"));
    };
    if q.lease == Some(0) {
        return Err(error(
            "invalid_input",
            "a proposed lease is a number other than 0",
        ));
    }
    let seq = service.seq();
    // If the peer goes away while this waits, the handler's future is dropped and the wait
    // leaves its slot: nothing is left behind.
    match service.load_for_peer(&key, q.lease).await {
        PeerLoad::Value(e) => Ok(value_response(e, seq)),
        PeerLoad::Lease(lease) => Ok((
            StatusCode::ACCEPTED,
            axum::Json(serde_json::json!({ "lease": lease })),
        )
            .into_response()),
        PeerLoad::Failed(e) => Err((
            StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_GATEWAY),
            [(header::CONTENT_TYPE, "application/json")],
            ErrorBody {
                kind: "load_failed".into(),
                ..ErrorBody::from(&e)
            }
            .to_json(),
        )
            .into_response()),
        PeerLoad::Retry => Err((
            StatusCode::CONFLICT,
            [(header::CONTENT_TYPE, "application/json")],
            ErrorBody {
                retryable: true,
                ..ErrorBody::new(
                    "conflict",
                    "the load was abandoned or its lease ended; claim again",
                )
            }
            .to_json(),
        )
            .into_response()),
    }
}

/// A load's failure, as its loader's node reports it.
#[derive(Deserialize)]
struct Failure {
    from: NodeId,
    error: String,
}

async fn abandon_key(
    State(service): State<Service>,
    headers: HeaderMap,
    key: Result<Path<String>, axum::extract::rejection::PathRejection>,
    query: Result<Query<LeaseQuery>, axum::extract::rejection::QueryRejection>,
    body: Body,
) -> Reply {
    let key = admit(&service, &headers, key)?;
    let Ok(Query(LeaseQuery {
        lease: Some(lease), ..
    })) = query
    else {
        return Err(error("invalid_input", "abandon needs ?lease=N"));
    };
    let body = axum::body::to_bytes(body, 4096)
        .await
        .map_err(|_| error("too_large", "a failure report is at most 4 KiB"))?;
    if body.is_empty() {
        // The loader went away without an outcome: whoever waits claims again.
        service.abandon(&key, lease);
    } else {
        // The loader failed: everyone who waited gets the failure, nobody loads again.
        let f: Failure = serde_json::from_slice(&body)
            .map_err(|e| error("invalid_input", &format!("malformed failure: {e}")))?;
        service.fail(&key, lease, f.from.as_str(), &f.error);
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
struct Invalidation {
    from: NodeId,
    seq: u64,
    keys: Vec<String>,
}

async fn invalidate(State(service): State<Service>, headers: HeaderMap, body: Body) -> Response {
    if !authorized(&headers, service.token()) {
        return error("unauthorized", "missing or wrong cluster token");
    }
    let Ok(body) = axum::body::to_bytes(body, 64 * 1024).await else {
        return error("too_large", "invalidations are at most 64 KiB");
    };
    let msg: Invalidation = match serde_json::from_slice(&body) {
        Ok(m) => m,
        Err(e) => {
            return error("invalid_input", &format!("malformed invalidation: {e}"));
        }
    };
    if !service.is_peer(&msg.from) {
        return error("invalid_input", &format!("{} is not a peer", msg.from));
    }
    service.invalidated(&msg.from, msg.seq, &msg.keys).await;
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
struct Join {
    from: NodeId,
}

async fn join(State(service): State<Service>, headers: HeaderMap, body: Body) -> Response {
    if !authorized(&headers, service.token()) {
        return error("unauthorized", "missing or wrong cluster token");
    }
    let Ok(body) = axum::body::to_bytes(body, 4 * 1024).await else {
        return error("too_large", "a join is at most 4 KiB");
    };
    match serde_json::from_slice::<Join>(&body) {
        Ok(j) => {
            service.joined(&j.from);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => error("invalid_input", &format!("malformed join: {e}")),
    }
}

async fn seq(State(service): State<Service>, headers: HeaderMap) -> Response {
    if !authorized(&headers, service.token()) {
        return error("unauthorized", "missing or wrong cluster token");
    }
    axum::Json(serde_json::json!({ "seq": service.seq() })).into_response()
}

/// Lowercase hex of `bytes`: how a key travels in a peer URL.
fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// The bytes of a hex string (either case); `None` for anything else.
fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| {
        char::from(c)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    s.as_bytes()
        .chunks(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_hex() {
        for k in [
            "",
            "a",
            "..",
            ".",
            "user:0\n",
            "\t\r\n",
            "a/b?c#d%2F",
            "ключ",
            "\u{0}",
        ] {
            assert_eq!(
                hex_decode(&hex_encode(k.as_bytes())).as_deref(),
                Some(k.as_bytes())
            );
        }
        for bad in ["0", "zz", "0g", "é0"] {
            assert_eq!(hex_decode(bad), None, "{bad}");
        }
    }
}
