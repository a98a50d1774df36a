//! Turning Redis and pool failures into distkit's typed errors.

use std::time::Duration;

use distkit_core::Error;

/// Maps a Redis error seen while talking to `endpoint` into [`Error`]: refused, dropped and
/// I/O failures are retryable [`Error::Unavailable`], timeouts [`Error::Timeout`] (after
/// `timeout`, the limit the connection was configured with), refused credentials, wrong-typed
/// keys and distkit's own script refusals non-retryable [`Error::Protocol`].
pub(crate) fn from_redis(endpoint: &str, timeout: Duration, e: redis::RedisError) -> Error {
    let code = e.code().unwrap_or("");
    if e.is_timeout() {
        return Error::Timeout {
            operation: "redis command",
            after: timeout,
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
        return Error::protocol_with(
            format!("redis at {endpoint}"),
            "refused the credentials (check the user and password in the URL)",
            e,
        );
    }
    if matches!(
        e.kind(),
        redis::ErrorKind::MasterNameNotFoundBySentinel
            | redis::ErrorKind::NoValidReplicasFoundBySentinel
    ) {
        // During a failover the sentinels name no usable primary for a moment; a wrong
        // master name looks the same and never heals, hence the hint.
        return Error::unavailable(
            format!("redis at {endpoint}"),
            "no sentinel names a reachable primary (a failover in progress, or a wrong master \
             name)",
            e,
        );
    }
    if code.starts_with("DISTKIT_") {
        // Our scripts name the key that is wrong and what is wrong with it.
        let detail = e.detail().unwrap_or("a lock key holds an unexpected value");
        return Error::protocol_with(
            format!("redis at {endpoint}"),
            format!(
                "{detail} (another program uses the key, or it was edited by hand; choose \
                 another lock name or key prefix, or delete the key)"
            ),
            e,
        );
    }
    if code == "WRONGTYPE" {
        return Error::protocol_with(
            format!("redis at {endpoint}"),
            "a lock key holds a value of another type (another program uses the key; choose \
             another lock name or key prefix)",
            e,
        );
    }
    if e.is_io_error()
        || e.is_connection_dropped()
        || matches!(
            code,
            "LOADING" | "BUSY" | "TRYAGAIN" | "MASTERDOWN" | "READONLY" | "NOREPLICAS"
        )
    {
        return Error::unavailable(format!("redis at {endpoint}"), "the connection failed", e);
    }
    Error::protocol_with(format!("redis at {endpoint}"), "answered with an error", e)
}

/// Maps a pool failure (no connection within the time limit, or the connection attempt failed).
pub(crate) fn from_pool(endpoint: &str, timeout: Duration, e: deadpool_redis::PoolError) -> Error {
    match e {
        deadpool_redis::PoolError::Backend(e) => from_redis(endpoint, timeout, e),
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
