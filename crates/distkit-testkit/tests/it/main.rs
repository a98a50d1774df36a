//! Tests of the test support itself: real servers, real failures.

mod redis_server;
