//! The error type every distkit trait returns.

use std::sync::Arc;
use std::time::Duration;

/// A boxed cause, as loaders and other callers hand it in.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A shared cause, kept as the [`source`](std::error::Error::source) of an [`Error`]. Shared so
/// that an [`Error`] can be cloned to every caller waiting on the same operation without
/// losing its kind or its cause.
pub type ErrorSource = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong in a distkit operation.
///
/// Each variant says what was wrong and what to do; the cause, when there is one, is chained
/// through [`std::error::Error::source`]. Ask [`Error::is_retryable`] whether the same call may
/// succeed later (a timeout, a refused connection) or never will (bad input, a lost lease).
///
/// Component crates keep their own richer error types and convert into this one at the trait
/// boundary, so code that holds an `Arc<dyn DistributedLock>` or `Arc<dyn Cache>` handles one
/// type.
///
/// Errors are [`Clone`]: an error shared with callers that waited on the same operation (a
/// coalesced cache load, say) keeps its variant and its cause for each of them.
///
/// Every HTTP router in distkit answers an error the same way: [`Error::http_status`] picks
/// the status, and the body is `{"error": message, "kind": kind, "retryable": bool}` (see
/// [`Error::kind`]); with the `axum` feature, `Error` implements `IntoResponse` to do exactly
/// that.
///
/// ```
/// use std::time::Duration;
/// use distkit_core::Error;
///
/// let e = Error::Timeout { operation: "acquire lock \"orders\"", after: Duration::from_secs(2) };
/// assert!(e.is_retryable());
/// assert_eq!(e.to_string(), "acquire lock \"orders\" timed out after 2s");
///
/// let e = Error::invalid_input("ttl", "it must be greater than zero");
/// assert!(!e.is_retryable());
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Error {
    /// An argument or a configuration value is not acceptable. Fix the input; retrying the same
    /// call fails the same way.
    InvalidInput {
        /// The name of the argument or setting.
        what: &'static str,
        /// Why it was refused.
        reason: String,
    },

    /// A value is larger than a limit allows (a key, a value, a request body, a name). Send
    /// less; retrying the same call fails the same way.
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its size in bytes.
        actual: u64,
        /// The limit in bytes.
        limit: u64,
    },

    /// The operation did not finish within its time limit.
    Timeout {
        /// What was being done.
        operation: &'static str,
        /// The limit that ran out: the real one, as configured or as it was left.
        after: Duration,
    },

    /// Someone else holds the lock and the wait limit ran out (or no wait was asked for).
    /// Retrying later may succeed.
    Busy {
        /// The lock in question.
        what: String,
        /// How long this caller waited.
        waited: Duration,
    },

    /// A backend or peer could not be reached or stopped answering (connection refused or
    /// reset, a server that is restarting, a peer marked suspect). Retrying later may work.
    Unavailable {
        /// The address or name of what could not be reached.
        endpoint: String,
        /// What was seen, with a hint where there is one.
        reason: String,
        /// The underlying error, when there is one.
        source: Option<ErrorSource>,
    },

    /// The caller does not (or no longer) own what it tried to use: a lock lease that expired
    /// or was taken over, a leadership that was lost. Retrying the same call cannot help; start
    /// again by acquiring.
    NotHeld {
        /// The lock name or role in question.
        what: String,
        /// What was found instead.
        reason: String,
    },

    /// There is nowhere to place the request: a locator with no nodes, or every node at its
    /// capacity bound.
    NoCapacity {
        /// Why no node qualified.
        reason: String,
    },

    /// A peer or a backend answered with something that breaks the protocol (malformed data,
    /// a value of the wrong type under a lock key, a refused credential).
    Protocol {
        /// Who answered.
        peer: String,
        /// What was wrong with it.
        reason: String,
        /// The underlying error, when there is one.
        source: Option<ErrorSource>,
    },

    /// A user-supplied loader (cache `get_or_load`) failed. Nothing was cached.
    Load {
        /// The key being loaded.
        key: String,
        /// The loader's error.
        source: ErrorSource,
    },

    /// Local storage failed (reading or writing a vote file, for example).
    Storage {
        /// The file or store in question.
        path: String,
        /// What failed.
        reason: String,
        /// The underlying error, when there is one.
        source: Option<ErrorSource>,
    },
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::InvalidInput { what, reason } => write!(f, "invalid {what}: {reason}"),
            Self::TooLarge {
                what,
                actual,
                limit,
            } => write!(
                f,
                "{what} is too large: {actual} bytes, the limit is {limit}"
            ),
            Self::Timeout { operation, after } => {
                write!(f, "{operation} timed out after {after:?}")
            }
            Self::Busy { what, waited } => {
                write!(f, "{what} is held by another caller (waited {waited:?})")
            }
            Self::Unavailable {
                endpoint, reason, ..
            } => write!(f, "{endpoint} is unavailable: {reason}"),
            Self::NotHeld { what, reason } => {
                write!(f, "{what} is not held by this caller: {reason}")
            }
            Self::NoCapacity { reason } => write!(f, "no node can take the request: {reason}"),
            Self::Protocol { peer, reason, .. } => {
                write!(f, "{peer} sent an unusable reply: {reason}")
            }
            Self::Load { key, .. } => write!(f, "loading {key:?} failed"),
            Self::Storage { path, reason, .. } => write!(f, "storage at {path} failed: {reason}"),
        }
    }
}

/// The source is the shared cause itself (not the `Arc` around it), so callers can
/// `downcast_ref` it to the concrete error they know.
impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        let cause: &ErrorSource = match self {
            Self::Unavailable { source, .. }
            | Self::Protocol { source, .. }
            | Self::Storage { source, .. } => source.as_ref()?,
            Self::Load { source, .. } => source,
            _ => return None,
        };
        Some(&**cause)
    }
}

impl Error {
    /// Shorthand for [`Error::InvalidInput`].
    #[must_use]
    pub fn invalid_input(what: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidInput {
            what,
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Error::Unavailable`] with a cause.
    #[must_use]
    pub fn unavailable(
        endpoint: impl Into<String>,
        reason: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        Self::Unavailable {
            endpoint: endpoint.into(),
            reason: reason.into(),
            source: Some(Arc::from(source.into())),
        }
    }

    /// Shorthand for [`Error::TooLarge`].
    #[must_use]
    pub fn too_large(what: &'static str, actual: usize, limit: usize) -> Self {
        Self::TooLarge {
            what,
            actual: u64::try_from(actual).unwrap_or(u64::MAX),
            limit: u64::try_from(limit).unwrap_or(u64::MAX),
        }
    }

    /// Shorthand for [`Error::Protocol`] with a cause.
    #[must_use]
    pub fn protocol_with(
        peer: impl Into<String>,
        reason: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        Self::Protocol {
            peer: peer.into(),
            reason: reason.into(),
            source: Some(Arc::from(source.into())),
        }
    }

    /// Shorthand for [`Error::Load`].
    #[must_use]
    pub fn load(key: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Load {
            key: key.into(),
            source: Arc::from(source.into()),
        }
    }

    /// Shorthand for [`Error::Protocol`] without a cause.
    #[must_use]
    pub fn protocol(peer: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Protocol {
            peer: peer.into(),
            reason: reason.into(),
            source: None,
        }
    }

    /// Whether the same call may succeed if tried again later.
    ///
    /// True for [`Error::Timeout`], [`Error::Busy`] and [`Error::Unavailable`]; false for bad input, lost
    /// ownership, protocol violations, loader and storage failures. Loops that retry should also
    /// bound their attempts and back off; this only says whether retrying makes sense at all.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Timeout { .. } | Self::Busy { .. } | Self::Unavailable { .. }
        )
    }

    /// A short, stable, machine-readable name of the variant (`invalid_input`, `too_large`,
    /// `timeout`, `busy`, `unavailable`, `not_held`, `no_capacity`, `protocol`, `load`,
    /// `storage`): the `kind` field of HTTP error bodies.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidInput { .. } => "invalid_input",
            Self::TooLarge { .. } => "too_large",
            Self::Timeout { .. } => "timeout",
            Self::Busy { .. } => "busy",
            Self::Unavailable { .. } => "unavailable",
            Self::NotHeld { .. } => "not_held",
            Self::NoCapacity { .. } => "no_capacity",
            Self::Protocol { .. } => "protocol",
            Self::Load { .. } => "load",
            Self::Storage { .. } => "storage",
        }
    }

    /// The HTTP status that stands for this error, the one every distkit router sends: 400
    /// invalid input, 413 too large, 504 timeout, 409 busy or not held, 503 unavailable or no
    /// capacity, 502 protocol or load failures, 500 storage.
    #[must_use]
    pub fn http_status(&self) -> u16 {
        match self {
            Self::InvalidInput { .. } => 400,
            Self::TooLarge { .. } => 413,
            Self::Timeout { .. } => 504,
            Self::Busy { .. } | Self::NotHeld { .. } => 409,
            Self::Unavailable { .. } | Self::NoCapacity { .. } => 503,
            Self::Protocol { .. } | Self::Load { .. } => 502,
            Self::Storage { .. } => 500,
        }
    }

    /// The JSON body every distkit router sends with an error:
    /// `{"error": message, "kind": kind, "retryable": bool}`.
    #[must_use]
    pub fn http_body(&self) -> String {
        ErrorBody::from(self).to_json()
    }
}

/// The JSON body of an HTTP error, as every distkit router sends it and every distkit client
/// reads it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ErrorBody {
    /// The message, as [`Error`]'s `Display` writes it.
    pub error: String,
    /// [`Error::kind`], or a router's own kind for refusals that are not an [`Error`]
    /// (`not_found`, `method_not_allowed`, `unauthorized`).
    #[serde(default)]
    pub kind: String,
    /// [`Error::is_retryable`].
    #[serde(default)]
    pub retryable: bool,
}

impl ErrorBody {
    /// A body for a refusal that is not an [`Error`] (an unknown route, a missing token).
    #[must_use]
    pub fn new(kind: &str, message: impl Into<String>) -> Self {
        Self {
            error: message.into(),
            kind: kind.to_owned(),
            retryable: false,
        }
    }

    /// The body as JSON text.
    #[must_use]
    pub fn to_json(&self) -> String {
        // Serializing three plain fields cannot fail; the fallback keeps the type honest.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{\"error\":\"\"}"))
    }
}

impl From<&Error> for ErrorBody {
    fn from(e: &Error) -> Self {
        Self {
            error: e.to_string(),
            kind: e.kind().to_owned(),
            retryable: e.is_retryable(),
        }
    }
}

#[cfg(feature = "axum")]
mod http {
    use axum_core::response::{IntoResponse, Response};
    use http::{HeaderValue, StatusCode, header};

    use super::{Error, ErrorBody};

    impl IntoResponse for ErrorBody {
        fn into_response(self) -> Response {
            let status = match self.kind.as_str() {
                "not_found" => StatusCode::NOT_FOUND,
                "method_not_allowed" => StatusCode::METHOD_NOT_ALLOWED,
                "unauthorized" => StatusCode::UNAUTHORIZED,
                "forbidden" => StatusCode::FORBIDDEN,
                "unsupported_media_type" => StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "too_large" => StatusCode::PAYLOAD_TOO_LARGE,
                "unavailable" => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::BAD_REQUEST,
            };
            json(status, &self)
        }
    }

    impl IntoResponse for Error {
        fn into_response(self) -> Response {
            (&self).into_response()
        }
    }

    impl IntoResponse for &Error {
        fn into_response(self) -> Response {
            let status =
                StatusCode::from_u16(self.http_status()).unwrap_or(StatusCode::BAD_GATEWAY);
            json(status, &ErrorBody::from(self))
        }
    }

    fn json(status: StatusCode, body: &ErrorBody) -> Response {
        let mut resp = (status, body.to_json()).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_is_send_sync_static() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<Error>();
    }

    #[test]
    fn retryable_split() {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(Error::unavailable("127.0.0.1:6390", "connection refused", io).is_retryable());
        assert!(
            Error::Timeout {
                operation: "x",
                after: Duration::from_millis(5)
            }
            .is_retryable()
        );
        assert!(!Error::invalid_input("ttl", "zero").is_retryable());
        assert!(
            !Error::NotHeld {
                what: "lock a".into(),
                reason: "expired".into()
            }
            .is_retryable()
        );
        assert!(!Error::protocol("peer", "garbage").is_retryable());
    }

    #[test]
    fn source_is_chained() {
        use std::error::Error as _;
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let e = Error::unavailable(
            "redis at 127.0.0.1:6390",
            "connection refused (is redis-server running?)",
            io,
        );
        assert_eq!(
            e.to_string(),
            "redis at 127.0.0.1:6390 is unavailable: connection refused (is redis-server running?)"
        );
        let src = e.source().expect("a source");
        assert_eq!(
            src.downcast_ref::<std::io::Error>()
                .map(std::io::Error::kind),
            Some(std::io::ErrorKind::ConnectionRefused)
        );
    }
}
