//! Cross-crate and multi-process tests: the umbrella crate's paths, and locks shared by
//! real OS processes.

mod dlock;
mod node;
mod node_tls;
mod umbrella;
