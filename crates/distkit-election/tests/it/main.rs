//! Public-API tests of distkit-election.

mod hostile;
mod http;
mod lease;
mod lifecycle;
mod sim;
