//! A Jepsen-style fault harness for distkit-node clusters, run as `cargo xtask chaos`.
//!
//! Real `distkit-node` processes (each in its own network namespace, joined by a bridge, when
//! the harness runs as root with `ip`; on loopback otherwise) and a real `redis-server` for
//! their locks. Client tasks run the workloads and record every operation with its invoke and
//! complete times ([`history`]); a seeded nemesis ([`plan`]) kills, pauses and partitions
//! nodes, kills Redis and gives a node the wrong cluster token; afterwards the [`check`]ers
//! read the history. A run writes its history, faults, verdicts and a latency plot under
//! `target/chaos/<run>/`, and prints the command that replays its schedule.
//!
//! Partitions are real packet drops: blackhole routes inside the nodes' namespaces (the
//! kernels this runs on may lack `netem`, so loss and delay are not offered).

#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

pub mod check;
pub mod history;
pub mod plan;
pub mod svg;
