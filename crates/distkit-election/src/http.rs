//! The HTTP transport: an axum router to mount in your server, and a reqwest client.
//!
//! Every message is one `POST {peer}/v1/election/message` with a JSON [`Envelope`] and the
//! cluster token as `Authorization: Bearer ...`. The router answers 202 when the message was
//! queued, 401 for a missing or wrong token, 400 for malformed JSON or an unknown sender or
//! addressee, and 413 for bodies over 16 KiB, always with a JSON error body and without any
//! state change.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use distkit_core::{ClusterToken, Error, ErrorBody, NodeId, PeerUrl};

use crate::Envelope;
use crate::runtime::{Inbox, Transport};

/// The peer client's TLS configuration; without the `tls` feature there is none to give.
#[cfg(feature = "tls")]
type TlsConfig = distkit_core::tls::rustls::ClientConfig;
#[cfg(not(feature = "tls"))]
type TlsConfig = std::convert::Infallible;

/// The path the router serves.
pub const MESSAGE_PATH: &str = "/v1/election/message";
/// The largest message body accepted.
pub const MAX_BODY: usize = 16 * 1024;

/// Sends election messages to peers over HTTP with keep-alive connections and short
/// timeouts.
#[derive(Clone, Debug)]
pub struct HttpTransport {
    client: reqwest::Client,
    peers: Arc<HashMap<NodeId, String>>,
    token: ClusterToken,
    timeout: Duration,
}

impl HttpTransport {
    /// A transport to `peers` (id to base URL such as `http://127.0.0.1:7001`), sending the
    /// shared cluster `token`. Each request may take at most `timeout` (connecting included).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for an empty token, a zero timeout, or a base URL that is not
    /// `http://host:port`.
    pub fn new(
        peers: impl IntoIterator<Item = (NodeId, String)>,
        token: impl Into<String>,
        timeout: Duration,
    ) -> Result<Self, Error> {
        Self::build(peers, token, timeout, None)
    }

    /// A transport to peers reached over TLS (every URL `https://`), whose certificates must
    /// be signed by the CA in `tls`.
    ///
    /// # Errors
    ///
    /// As [`HttpTransport::new`], and [`Error::InvalidInput`] for a plaintext peer URL.
    #[cfg(feature = "tls")]
    pub fn with_tls(
        peers: impl IntoIterator<Item = (NodeId, String)>,
        token: impl Into<String>,
        timeout: Duration,
        tls: &distkit_core::tls::PeerTls,
    ) -> Result<Self, Error> {
        Self::build(peers, token, timeout, Some(tls.client_config()))
    }

    fn build(
        peers: impl IntoIterator<Item = (NodeId, String)>,
        token: impl Into<String>,
        timeout: Duration,
        tls: Option<TlsConfig>,
    ) -> Result<Self, Error> {
        let token = ClusterToken::new(token)?;
        if timeout.is_zero() || timeout > crate::MAX_TIMEOUT {
            return Err(Error::invalid_input(
                "timeout",
                format!(
                    "it must be greater than zero and at most {:?}, got {timeout:?}",
                    crate::MAX_TIMEOUT
                ),
            ));
        }
        let mut checked: HashMap<NodeId, String> = HashMap::new();
        for (id, url) in peers {
            let url = PeerUrl::parse(&url)?;
            url.check_scheme(tls.is_some())?;
            if checked
                .insert(id.clone(), url.as_str().to_owned())
                .is_some()
            {
                return Err(Error::invalid_input(
                    "peer",
                    format!("{id} is listed twice"),
                ));
            }
        }
        let peers = checked;
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true);
        #[cfg(feature = "tls")]
        let client = match tls {
            Some(config) => client.tls_backend_preconfigured(config),
            None => client,
        };
        let client = client
            .build()
            .map_err(|e| Error::invalid_input("http client", e.to_string()))?;
        Ok(Self {
            client,
            peers: Arc::new(peers),
            token,
            timeout,
        })
    }
}

#[async_trait]
impl Transport for HttpTransport {
    async fn send(&self, envelope: Envelope) -> Result<(), Error> {
        let Some(base) = self.peers.get(&envelope.to) else {
            return Err(Error::invalid_input(
                "peer",
                format!("no address for {}", envelope.to),
            ));
        };
        let url = format!("{base}{MESSAGE_PATH}");
        let resp = self
            .client
            .post(&url)
            .bearer_auth(self.token.expose())
            .json(&envelope)
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    Error::Timeout {
                        operation: "sending an election message",
                        after: self.timeout,
                    }
                } else {
                    Error::unavailable(url.clone(), "the request failed", e)
                }
            })?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(Error::protocol(url, format!("answered {}", resp.status())))
        }
    }
}

#[derive(Clone)]
struct RouterState {
    inbox: Inbox,
    /// `None` when the configured token is invalid: every request is then refused.
    token: Option<ClusterToken>,
}

/// The peer-facing routes for one node; merge them into your own axum router.
///
/// ```
/// # use std::sync::Arc;
/// # use std::time::Duration;
/// # use distkit_core::NodeId;
/// # use distkit_election::{Config, Elector, HttpTransport, MemoryVoteStore, http_router};
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let (a, b) = (NodeId::new("a")?, NodeId::new("b")?);
/// let transport = HttpTransport::new([(b.clone(), "http://127.0.0.1:7002".into())], "s3cret", Duration::from_millis(100))?;
/// let elector = Elector::start(Config::builder(a, [b]).build()?, Arc::new(MemoryVoteStore::new()), Arc::new(transport))?;
/// let app: axum::Router = axum::Router::new().merge(http_router(elector.inbox(), "s3cret"));
/// # drop(app);
/// # Ok::<(), distkit_core::Error>(())
/// # }).unwrap();
/// ```
pub fn http_router(inbox: Inbox, token: impl Into<String>) -> Router {
    let state = RouterState {
        inbox,
        token: ClusterToken::new(token).ok(),
    };
    Router::new()
        .route(MESSAGE_PATH, post(receive))
        // Unknown paths are the mounting router's to answer (axum cannot merge two routers
        // that both have a fallback); a wrong method gets the JSON error body here.
        .method_not_allowed_fallback(|| async {
            ErrorBody::new("method_not_allowed", "election messages are POSTed")
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

async fn receive(State(state): State<RouterState>, headers: HeaderMap, body: Body) -> Response {
    let header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if !state
        .token
        .as_ref()
        .is_some_and(|t| t.matches_authorization(header))
    {
        return ErrorBody::new("unauthorized", "missing or wrong cluster token").into_response();
    }
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY).await else {
        return ErrorBody::new(
            "too_large",
            format!("messages are at most {MAX_BODY} bytes"),
        )
        .into_response();
    };
    if headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| !v.starts_with("application/json"))
    {
        return ErrorBody::new("unsupported_media_type", "expected application/json")
            .into_response();
    }
    let envelope: Envelope = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(e) => return Error::invalid_input("message", e.to_string()).into_response(),
    };
    match state.inbox.deliver(envelope) {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(e) => e.into_response(),
    }
}
