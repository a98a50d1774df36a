//! Turning Redis and pool failures into distkit's typed errors.

use std::time::Duration;

use distkit_core::Error;

/// Maps a Redis error seen while talking to `endpoint` into [`Error`]: refused, dropped and
/// I/O failures are retryable [`Error::Unavailable`], timeouts [`Error::Timeout`], refused
/// credentials and wrong-typed keys non-retryable [`Error::Protocol`].
pub(crate) fn from_redis(endpoint: &str, e: redis::RedisError) -> Error {
    let code = e.code().unwrap_or("");
    if e.is_timeout() {
        return Error::Timeout {
            operation: "redis command",
            after: Duration::ZERO,
        };
    }
    if e.is_connection_refusal() {
        return Error::unavailable(
            format!("redis at {endpoint}"),
            "connection refused (is redis-server running?)",
            e,
        );
    }
    if matches!(e.kind(), redis::ErrorKind::AuthenticationFailed)
        || matches!(code, "NOAUTH" | "WRONGPASS")
    {
        return Error::Protocol {
            peer: format!("redis at {endpoint}"),
            reason: "refused the credentials (check the user and password in the URL)".into(),
            source: Some(Box::new(e)),
        };
    }
    if code == "WRONGTYPE" || e.to_string().contains("DISTKIT_NOT_A_LOCK") {
        return Error::Protocol {
            peer: format!("redis at {endpoint}"),
            reason: "the lock key holds a value that is not a distkit lock (another program uses \
                     the key; choose another lock name or key prefix)"
                .into(),
            source: Some(Box::new(e)),
        };
    }
    if e.is_io_error()
        || e.is_connection_dropped()
        || matches!(code, "LOADING" | "BUSY" | "TRYAGAIN" | "MASTERDOWN")
    {
        return Error::unavailable(format!("redis at {endpoint}"), "the connection failed", e);
    }
    Error::Protocol {
        peer: format!("redis at {endpoint}"),
        reason: "answered with an error".into(),
        source: Some(Box::new(e)),
    }
}

/// Maps a pool failure (no connection within the time limit, or the connection attempt failed).
pub(crate) fn from_pool(endpoint: &str, timeout: Duration, e: deadpool_redis::PoolError) -> Error {
    match e {
        deadpool_redis::PoolError::Backend(e) => from_redis(endpoint, e),
        deadpool_redis::PoolError::Timeout(_) => Error::Timeout {
            operation: "getting a redis connection",
            after: timeout,
        },
        other => Error::unavailable(
            format!("redis at {endpoint}"),
            "no connection could be made",
            other,
        ),
    }
}
