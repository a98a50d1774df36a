//! The history: every operation a client invoked, with when it was invoked and completed (in
//! nanoseconds since the run began) and what came back. Written as JSON lines, read back by
//! `--replay` and by the checkers.

use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What an operation came back with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It succeeded; the op's `result` holds what it returned.
    Ok,
    /// It definitely did not take effect (the server refused it: busy, not found, 4xx).
    Fail,
    /// It may or may not have taken effect (a timeout, a reset connection, a 5xx).
    Info,
}

/// One operation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Op {
    /// The logical client that ran it.
    pub process: String,
    /// `acquire`, `release`, `enter`, `exit`, `observe`, `set`, `get`.
    pub op: String,
    /// What it was asked to do (lock name, key, value, node).
    pub args: Value,
    /// When it was invoked, in ns since the run began.
    pub invoke_ns: u64,
    /// When it completed.
    pub complete_ns: u64,
    /// How it ended.
    pub outcome: Outcome,
    /// What it returned.
    pub result: Value,
}

/// A fault the nemesis applied, from `start_ns` until `end_ns`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FaultSpan {
    /// What it was, e.g. `kill node-1`, `partition [node-0] | [node-1, node-2]`.
    pub what: String,
    /// The kind: `kill`, `pause`, `partition`, `redis`, `token`.
    pub kind: String,
    /// When it began.
    pub start_ns: u64,
    /// When it was healed.
    pub end_ns: u64,
}

/// Collects operations from every client task.
#[derive(Debug)]
pub struct Recorder {
    start: Instant,
    ops: Mutex<Vec<Op>>,
}

impl Recorder {
    /// A recorder whose clock starts now.
    #[must_use]
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            ops: Mutex::new(Vec::new()),
        }
    }

    /// Nanoseconds since the run began.
    #[must_use]
    pub fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Records a completed operation.
    pub fn push(&self, op: Op) {
        self.ops
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(op);
    }

    /// Every operation so far, in completion order.
    #[must_use]
    pub fn ops(&self) -> Vec<Op> {
        let mut ops = self
            .ops
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        ops.sort_by_key(|o| o.complete_ns);
        ops
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}
