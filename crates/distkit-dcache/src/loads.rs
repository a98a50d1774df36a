//! The load table: which caller loads a missing key, and who waits for it. A sans-IO state
//! machine like the election core: no clock of its own (`now` comes in), no I/O, no tasks.
//!
//! Per key there is at most one *attempt* in progress. The first caller to claim a key leads
//! the attempt (it runs the loader, or is told to run it by the owner); the others follow it
//! and wait for its outcome. The table guarantees:
//!
//! * **One leader at a time per key.** A new leader is chosen only when the old one finished,
//!   gave up (it was cancelled, its loader panicked, its HTTP request was dropped) or let its
//!   lease run out.
//! * **A leader that goes away hands over at once.** `abandon` makes the attempt leaderless
//!   and tells its followers through the attempt's signal; the next of them to claim leads.
//!   Nobody waits for the lease to run out unless the leader is silently gone (a remote
//!   loader whose process died).
//! * **An outcome goes to that attempt's followers only.** A failed load is shared with the
//!   callers that waited for it, not retried by each of them in turn.
//! * **Memory is bounded by the keys in flight.** A slot is removed when its attempt
//!   finishes, or when its last interested caller (leader or follower) is gone.
//!
//! The signal `S` of each attempt is the runtime's business (a `watch` channel in the cache);
//! the table only creates it with the attempt and hands it out.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Identifies one attempt at loading one key; also the lease its leader holds.
pub(crate) type AttemptId = u64;

/// Identifies a slot (the interest in one key, from its first claim until it is removed);
/// followers leave by it, so a late `leave` never touches a newer slot of the same key.
pub(crate) type SlotId = u64;

/// What a claim gives the caller.
#[derive(Debug)]
pub(crate) enum Claim<S> {
    /// Load the key: this caller leads `attempt` until `finish`, `abandon` or the lease ends.
    Lead { attempt: AttemptId },
    /// Someone else loads it: wait on `signal` (at most until `lease_ends`, when the leader
    /// may be silently gone). On an outcome, use it (the slot is gone); on an abandon or at
    /// `lease_ends`, `leave` and claim again; when cancelled, `leave`.
    Follow {
        slot: SlotId,
        signal: S,
        lease_ends: Instant,
    },
}

#[derive(Debug)]
struct Slot<S> {
    id: SlotId,
    attempt: AttemptId,
    /// Whether the attempt's leader is still there (false after `abandon` or expiry).
    led: bool,
    lease_ends: Instant,
    /// Callers that hold this attempt (the leader, if led, and the followers).
    interested: usize,
    signal: S,
}

/// The most abandons of unknown attempts remembered at once (see `abandon`).
const MAX_BURIED: usize = 1 << 16;

/// The table; see the module docs.
#[derive(Debug)]
pub(crate) struct LoadTable<S> {
    slots: HashMap<String, Slot<S>>,
    next: AttemptId,
    lease: Duration,
    /// Attempts abandoned before they were granted (a remote caller's abandon overtook its
    /// own load request), until their lease would have ended: such a claim does not lead.
    buried: HashMap<AttemptId, Instant>,
    /// When `claim` next sweeps leaders whose lease ended (no caller may be left to notice).
    next_sweep: Option<Instant>,
}

impl<S: Clone> LoadTable<S> {
    /// A table whose leaders hold their lease for `lease` (the load timeout).
    pub(crate) fn new(lease: Duration) -> Self {
        Self {
            slots: HashMap::new(),
            next: 1,
            lease,
            buried: HashMap::new(),
            next_sweep: None,
        }
    }

    /// Whether `attempt` was abandoned before it was granted (see `abandon`).
    pub(crate) fn is_buried(&self, attempt: AttemptId, now: Instant) -> bool {
        self.buried.get(&attempt).is_some_and(|until| now < *until)
    }

    /// Drops leaders whose lease ended and slots nobody holds any more, and forgets old
    /// burials; at most every quarter lease, so a claim stays O(1) amortised. Followers of a
    /// swept attempt wake at its lease end on their own timers.
    fn sweep(&mut self, now: Instant) {
        if self.next_sweep.is_some_and(|at| now < at) {
            return;
        }
        let quarter = (self.lease / 4).max(Duration::from_millis(10));
        self.next_sweep = now.checked_add(quarter);
        let _ = self.expire(now);
        self.buried.retain(|_, until| now < *until);
    }

    /// Keys with an attempt in flight.
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    fn lease_end(&self, now: Instant) -> Instant {
        // A lease too long for the clock lasts a century: "until the leader says so".
        now.checked_add(self.lease)
            .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
            .unwrap_or(now)
    }

    /// Joins the attempt at `key`, or starts one (then `signal` makes its signal). A caller
    /// across the network proposes the id its attempt should have if it leads (a random
    /// number it chose), so it can abandon the attempt even when it never saw the answer.
    pub(crate) fn claim(
        &mut self,
        key: &str,
        now: Instant,
        signal: impl FnOnce() -> S,
        proposed: Option<AttemptId>,
    ) -> Claim<S> {
        self.sweep(now);
        let lease_ends = self.lease_end(now);
        let next = &mut self.next;
        let mut fresh = || match proposed {
            Some(id) => id,
            None => {
                let id = *next;
                *next += 1;
                id
            }
        };
        if let Some(slot) = self.slots.get_mut(key) {
            if slot.led && now < slot.lease_ends {
                slot.interested += 1;
                return Claim::Follow {
                    slot: slot.id,
                    signal: slot.signal.clone(),
                    lease_ends: slot.lease_ends,
                };
            }
            // Leaderless (abandoned, or the lease ended): this caller takes over, in a new
            // attempt so that a late word from the old leader changes nothing. An expired
            // leader that never said goodbye no longer counts.
            if slot.led {
                slot.interested = slot.interested.saturating_sub(1);
            }
            slot.attempt = fresh();
            slot.led = true;
            slot.lease_ends = lease_ends;
            slot.interested += 1;
            slot.signal = signal();
            return Claim::Lead {
                attempt: slot.attempt,
            };
        }
        let attempt = fresh();
        let id = *next;
        *next += 1;
        let slot = Slot {
            id,
            attempt,
            led: true,
            lease_ends,
            interested: 1,
            signal: signal(),
        };
        self.slots.insert(key.to_owned(), slot);
        Claim::Lead { attempt }
    }

    /// The leader of `attempt` is done (with a value or an error): the slot goes, and the
    /// signal it returns is the one to publish the outcome on. `None` when `attempt` is no
    /// longer current (it was taken over); then nothing changes.
    pub(crate) fn finish(&mut self, key: &str, attempt: AttemptId) -> Option<S> {
        match self.slots.get(key) {
            Some(s) if s.attempt == attempt => self.slots.remove(key).map(|s| s.signal),
            _ => None,
        }
    }

    /// The leader of `attempt` went away without an outcome: the attempt becomes leaderless
    /// and its signal (returned) tells the followers to claim again. `None` when `attempt` is
    /// not current; then it is remembered until a lease from `now` would end, so that a
    /// remote caller's claim that arrives after its own abandon does not lead.
    pub(crate) fn abandon(&mut self, key: &str, attempt: AttemptId, now: Instant) -> Option<S> {
        let current = self
            .slots
            .get(key)
            .is_some_and(|s| s.attempt == attempt && s.led);
        if !current {
            if self.buried.len() >= MAX_BURIED {
                self.buried.retain(|_, until| now < *until);
                if self.buried.len() >= MAX_BURIED {
                    // Under a flood, forget the oldest burials wholesale; a slot they would
                    // have prevented ends with its lease.
                    self.buried.clear();
                }
            }
            let until = self.lease_end(now);
            self.buried.insert(attempt, until);
            return None;
        }
        let slot = self.slots.get_mut(key)?;
        slot.led = false;
        slot.interested = slot.interested.saturating_sub(1);
        let signal = slot.signal.clone();
        if slot.interested == 0 {
            self.slots.remove(key);
        }
        Some(signal)
    }

    /// Ends whatever attempt is in flight at `key` (a write or a delete superseded it) and
    /// removes the slot; returns its signal to tell the followers. A late word from its
    /// leader then changes nothing.
    pub(crate) fn take(&mut self, key: &str) -> Option<S> {
        self.slots.remove(key).map(|s| s.signal)
    }

    /// A follower of `slot` is gone (cancelled, or about to claim again). When nobody is left,
    /// the slot goes. A slot that is gone already (finished) or newer is not touched.
    pub(crate) fn leave(&mut self, key: &str, slot: SlotId) {
        let Some(slot) = self.slots.get_mut(key).filter(|s| s.id == slot) else {
            return;
        };
        slot.interested = slot.interested.saturating_sub(1);
        if slot.interested == 0 {
            self.slots.remove(key);
        }
    }

    /// Leaders whose lease ended by `now` are presumed gone: their attempts become
    /// leaderless. Returns the signals to tell their followers.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<S> {
        let mut told = Vec::new();
        self.slots.retain(|_, slot| {
            if slot.led && now >= slot.lease_ends {
                slot.led = false;
                slot.interested = slot.interested.saturating_sub(1);
                told.push(slot.signal.clone());
            }
            slot.interested > 0
        });
        told
    }
}

#[cfg(test)]
mod tests;
