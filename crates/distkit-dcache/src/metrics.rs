//! Counters and histograms through the `metrics` facade (the application installs an
//! exporter; without one they cost next to nothing). Handles are created once.

use metrics::{Counter, Histogram, counter, histogram};

pub(crate) struct Metrics {
    pub(crate) hit_local: Counter,
    pub(crate) miss_local: Counter,
    pub(crate) hit_hot: Counter,
    pub(crate) hit_remote: Counter,
    pub(crate) hit_replica: Counter,
    pub(crate) miss_remote: Counter,
    pub(crate) loads: Counter,
    pub(crate) coalesced: Counter,
    pub(crate) peer_errors: Counter,
    pub(crate) remote_latency: Histogram,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        Self {
            hit_local: counter!("distkit_dcache_hits_total", "tier" => "local"),
            miss_local: counter!("distkit_dcache_misses_total", "tier" => "local"),
            hit_hot: counter!("distkit_dcache_hits_total", "tier" => "hot"),
            hit_remote: counter!("distkit_dcache_hits_total", "tier" => "remote"),
            hit_replica: counter!("distkit_dcache_hits_total", "tier" => "replica"),
            miss_remote: counter!("distkit_dcache_misses_total", "tier" => "remote"),
            loads: counter!("distkit_dcache_loads_total"),
            coalesced: counter!("distkit_dcache_loads_coalesced_total"),
            peer_errors: counter!("distkit_dcache_peer_errors_total"),
            remote_latency: histogram!("distkit_dcache_remote_seconds"),
        }
    }
}
