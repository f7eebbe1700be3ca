//! The testbed: the load generator (`ws-load`), the benchmark harness (`ws-bench`) and the
//! measurements they share.
//!
//! - [`load`]: many WebSocket/long-poll clients over many source addresses and processes.
//! - [`bench`]: the side-by-side benchmark (`ws-bench`).
//! - [`harness`]: namespaces and child processes that are always cleaned up; admin HTTP in a namespace.
//! - [`measure`]: memory (RSS, slab, socket buffers) and CPU from /proc, bytes per connection.

pub mod bench;
pub mod harness;
pub mod load;
pub mod measure;
