//! Public-API tests of distkit-election.

mod http;
mod lease;
mod sim;
