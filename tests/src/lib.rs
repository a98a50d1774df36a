//! Cross-crate and multi-process integration tests of distkit.
//!
//! The tests live in `it/`; this library holds what they share.

#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
#![forbid(unsafe_code)]

/// The umbrella crate, re-exported for the tests.
pub use distkit;
