//! The circuit breaker: a peer that failed is skipped until a deadline, then tried again.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use distkit_core::NodeId;

/// Suspected peers and until when.
#[derive(Debug)]
pub(crate) struct Breaker {
    suspects: Mutex<HashMap<NodeId, Instant>>,
    hold: Duration,
}

impl Breaker {
    /// A breaker that holds a failed peer open for `hold`.
    pub(crate) fn new(hold: Duration) -> Self {
        Self {
            suspects: Mutex::new(HashMap::new()),
            hold,
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Instant>> {
        self.suspects.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Until when `id` is skipped, if it is.
    pub(crate) fn open_until(&self, id: &NodeId) -> Option<Instant> {
        let now = Instant::now();
        self.table().get(id).copied().filter(|until| now < *until)
    }

    /// Marks `id` failed; true when it was not suspect already. A hold too long for the
    /// clock lasts a century.
    pub(crate) fn trip(&self, id: &NodeId) -> bool {
        let now = Instant::now();
        let until = now
            .checked_add(self.hold)
            .or_else(|| now.checked_add(crate::MAX_TTL))
            .unwrap_or(now);
        self.table()
            .insert(id.clone(), until)
            .is_none_or(|before| before <= now)
    }

    /// Forgets `id` (it answered again, or it left).
    pub(crate) fn reset(&self, id: &NodeId) {
        self.table().remove(id);
    }
}
