//! Cross-crate tests: the umbrella crate's paths and the test support, used together.

mod umbrella;
