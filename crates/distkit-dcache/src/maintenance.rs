//! The background work of a cache node, owned by the [`Maintenance`] handle.

use std::collections::HashMap;
use std::sync::Weak;
use std::time::Duration;

use distkit_core::NodeId;

use crate::cache::Inner;
use crate::local;

/// The cache's background work (sweeps of entries whose own TTL ran out, and the staleness
/// check against peers' write sequence numbers), owned by whoever holds this handle.
///
/// [`shutdown`](Self::shutdown) stops it and returns once it has ended; dropping the handle
/// aborts it at its next await point (no runtime needed for that).
#[derive(Debug)]
#[must_use = "dropping the handle stops the maintenance task"]
pub struct Maintenance {
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Maintenance {
    pub(crate) fn spawn(
        handle: &tokio::runtime::Handle,
        inner: Weak<Inner>,
        every: Duration,
    ) -> Self {
        Self {
            task: Some(handle.spawn(run(inner, every))),
        }
    }

    /// Stops the task and waits until it has ended.
    pub async fn shutdown(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Whether the task has ended.
    #[must_use]
    pub fn is_finished(&self) -> bool {
        self.task
            .as_ref()
            .is_none_or(tokio::task::JoinHandle::is_finished)
    }
}

impl Drop for Maintenance {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Every `every`: sweeps entries whose own TTL ran out (only once some entry has one), and
/// asks every peer at once for its write sequence number; when a number seen in the previous
/// round has still not arrived as an invalidation, messages were lost and that owner's hot
/// copies are dropped (all of them: copies do not record their owner).
async fn run(inner: Weak<Inner>, every: Duration) {
    let mut expected: HashMap<NodeId, u64> = HashMap::new();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.has_own_ttls() {
            local::sweep(&inner.local).await;
        }
        let Some(hot) = inner.hot.clone() else {
            continue;
        };
        if inner.has_own_ttls() {
            local::sweep(&hot).await;
        }
        let members = inner.members.load();
        for (id, _) in members.peers() {
            let applied = inner.versions.applied(id);
            if let Some(&e) = expected.get(id)
                && e > applied
            {
                tracing::debug!(peer = %id, "invalidations were lost; dropping hot copies");
                hot.invalidate_all();
                inner.versions.raise(id, e);
            }
        }
        let probes = members
            .peers()
            .map(|(id, url)| async { (id.clone(), inner.client.seq(url).await) });
        for (id, seq) in futures_util::future::join_all(probes).await {
            if let Ok(seq) = seq {
                expected.insert(id, seq);
            }
        }
        expected.retain(|id, _| members.is_peer(id));
    }
}
