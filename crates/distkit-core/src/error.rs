//! The error type every distkit trait returns.

use std::time::Duration;

/// A boxed cause, kept as the [`source`](std::error::Error::source) of an [`Error`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

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
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An argument or a configuration value is not acceptable. Fix the input; retrying the same
    /// call fails the same way.
    #[error("invalid {what}: {reason}")]
    InvalidInput {
        /// The name of the argument or setting.
        what: &'static str,
        /// Why it was refused.
        reason: String,
    },

    /// The operation did not finish within its time limit.
    #[error("{operation} timed out after {after:?}")]
    Timeout {
        /// What was being done.
        operation: &'static str,
        /// The limit that ran out.
        after: Duration,
    },

    /// Someone else holds the lock and the wait limit ran out (or no wait was asked for).
    /// Retrying later may succeed.
    #[error("{what} is held by another caller (waited {waited:?})")]
    Busy {
        /// The lock in question.
        what: String,
        /// How long this caller waited.
        waited: Duration,
    },

    /// A backend or peer could not be reached or stopped answering (connection refused or
    /// reset, a server that is restarting, a peer marked suspect). Retrying later may work.
    #[error("{endpoint} is unavailable: {reason}")]
    Unavailable {
        /// The address or name of what could not be reached.
        endpoint: String,
        /// What was seen, with a hint where there is one.
        reason: String,
        /// The underlying error, when there is one.
        #[source]
        source: Option<BoxError>,
    },

    /// The caller does not (or no longer) own what it tried to use: a lock lease that expired
    /// or was taken over, a leadership that was lost. Retrying the same call cannot help; start
    /// again by acquiring.
    #[error("{what} is not held by this caller: {reason}")]
    NotHeld {
        /// The lock name or role in question.
        what: String,
        /// What was found instead.
        reason: String,
    },

    /// There is nowhere to place the request: a locator with no nodes, or every node at its
    /// capacity bound.
    #[error("no node can take the request: {reason}")]
    NoCapacity {
        /// Why no node qualified.
        reason: String,
    },

    /// A peer or a backend answered with something that breaks the protocol (malformed data,
    /// a value of the wrong type under a lock key, a refused credential).
    #[error("{peer} sent an unusable reply: {reason}")]
    Protocol {
        /// Who answered.
        peer: String,
        /// What was wrong with it.
        reason: String,
        /// The underlying error, when there is one.
        #[source]
        source: Option<BoxError>,
    },

    /// A user-supplied loader (cache `get_or_load`) failed. Nothing was cached.
    #[error("loading {key:?} failed")]
    Load {
        /// The key being loaded.
        key: String,
        /// The loader's error.
        #[source]
        source: BoxError,
    },

    /// Local storage failed (reading or writing a vote file, for example).
    #[error("storage at {path} failed: {reason}")]
    Storage {
        /// The file or store in question.
        path: String,
        /// What failed.
        reason: String,
        /// The underlying error, when there is one.
        #[source]
        source: Option<BoxError>,
    },
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
            source: Some(source.into()),
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
