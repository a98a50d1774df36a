//! What the node tells an operator: metric families (each with a HELP line), the HTTP layer
//! that counts requests by route and status, the election gauges, and process figures.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use distkit_core::{LeaderElector, Role};
use distkit_election::Elector;

/// Latency buckets in seconds: 100 us to 10 s (the exporter then writes histograms).
pub(crate) const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// HELP lines for every family the node and its libraries write.
pub(crate) fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "distkit_node_http_requests_total",
        "HTTP requests answered, by route and status"
    );
    describe_histogram!(
        "distkit_node_http_request_seconds",
        "time to answer an HTTP request, by route"
    );
    describe_counter!(
        "distkit_node_lock_acquires_total",
        "lock acquisitions through this node, by result (granted, busy, refused while shutting down, invalid requests, backend error)"
    );
    describe_counter!(
        "distkit_node_lock_releases_total",
        "lock releases through this node, by result (released, not_held, error)"
    );
    describe_histogram!(
        "distkit_node_lock_wait_seconds",
        "time an acquire through this node took, granted or not (waits included)"
    );
    describe_counter!(
        "distkit_node_peer_tls_failures_total",
        "probes of a peer whose TLS handshake failed (a certificate or CA mistake)"
    );
    describe_gauge!(
        "distkit_election_has_leader",
        "1 when this node knows a leader, else 0"
    );
    describe_gauge!(
        "distkit_election_is_leader",
        "1 when this node leads, else 0"
    );
    describe_gauge!("distkit_election_term", "this node's current election term");
    describe_counter!(
        "distkit_election_leader_changes_total",
        "times the leader this node knows of changed"
    );
    describe_gauge!(
        "distkit_process_uptime_seconds",
        "seconds since this node started"
    );
    describe_gauge!(
        "distkit_process_resident_memory_bytes",
        "resident memory of the process"
    );
    describe_gauge!("distkit_process_open_fds", "open file descriptors");
    describe_counter!("distkit_dcache_hits_total", "cache hits, by tier");
    describe_counter!("distkit_dcache_misses_total", "cache misses, by tier");
    describe_counter!("distkit_dcache_loads_total", "loader runs");
    describe_counter!(
        "distkit_dcache_loads_coalesced_total",
        "callers that waited for another caller's load"
    );
    describe_counter!(
        "distkit_dcache_peer_errors_total",
        "failed requests to cache peers"
    );
    describe_histogram!(
        "distkit_dcache_remote_seconds",
        "time to read a value from its owner"
    );
}

/// Counts every request by its route (the pattern, never the raw path: keys stay out of
/// labels) and status, and times it.
pub(crate) async fn http_layer(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let started = Instant::now();
    let method = req.method().clone();
    let resp = next.run(req).await;
    let code = resp.status().as_u16();
    // The access log: one line per request at debug (`RUST_LOG=distkit_node::access=debug`);
    // the peers' own traffic (heartbeats: tens a second) only at trace.
    if route.starts_with("/v1/election/") || route.starts_with("/v1/peer/") {
        tracing::trace!(
            target: "distkit_node::access",
            %method,
            route = %route,
            status = code,
            "peer request"
        );
    } else {
        tracing::debug!(
            target: "distkit_node::access",
            %method,
            route = %route,
            status = code,
            micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            "request"
        );
    }
    let status = code.to_string();
    metrics::counter!("distkit_node_http_requests_total", "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("distkit_node_http_request_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    resp
}

/// Follows the elector's leadership into gauges until the elector stops.
pub(crate) async fn follow_election(elector: Elector) {
    let mut rx = elector.subscribe();
    let mut leader = None;
    loop {
        let l = rx.borrow_and_update().clone();
        metrics::gauge!("distkit_election_has_leader").set(f64::from(u8::from(l.leader.is_some())));
        metrics::gauge!("distkit_election_is_leader")
            .set(f64::from(u8::from(l.role == Role::Leader)));
        // Terms stay below 2^63; as a float they lose precision only past 2^53.
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!("distkit_election_term").set(l.term.get() as f64);
        if l.leader.is_some() && l.leader != leader {
            metrics::counter!("distkit_election_leader_changes_total").increment(1);
        }
        leader = l.leader;
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Process figures, read when `/metrics` is scraped.
pub(crate) fn process(started: Instant) {
    metrics::gauge!("distkit_process_uptime_seconds").set(started.elapsed().as_secs_f64());
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    if let Some(pages) = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse::<u64>().ok())
    {
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!("distkit_process_resident_memory_bytes").set((pages * 4096) as f64);
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!("distkit_process_open_fds").set(fds.count() as f64);
    }
}
