//! Public-API tests of distkit-dcache on real nodes talking HTTP on loopback.

mod cluster;
mod hostile;
mod local;
