//! The testbed: the load generator (`ws-load`), the benchmark harness (`ws-bench`) and the
//! measurements they share.
//!
//! - [`load`]: many WebSocket/long-poll clients over many source addresses and processes.
//! - [`bench`]: the side-by-side benchmark (`ws-bench`).
//! - [`flood`]: a bounded SYN flood from spoofed sources (hardening tests).
//! - [`impair`]: loss, delay and reordering on a path, through NFQUEUE (hardening tests).
//! - [`measure`]: memory (RSS, slab, socket buffers) and CPU from /proc, bytes per connection.

pub mod bench;
pub mod flood;
pub mod impair;
pub mod load;
pub mod measure;
