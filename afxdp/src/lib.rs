//! One AF_XDP socket on one queue of an interface, through `xdpilone` (pure-Rust rings; no libxdp,
//! no C). The userspace TCP stack's link (`stack::xdp_link`) and the flood benchmark
//! (`xdp-flood`) both use it.
//!
//! - [`area`]: the UMEM's memory.
//! - [`Socket`]: binding, receiving in place, refilling, kicking TX, waiting, statistics.
//! - [`Tx`]: the sending half: free TX chunks, frames built in place, batched commits.
//!
//! Binding a socket is not steering traffic to it: an XDP program must redirect frames to it
//! (the `xdp-prog` crate's XSKMAP, keyed by queue).

pub mod area;
mod socket;
mod tx;

pub use socket::{Config, Counters, Error, Socket, FRAME_SIZE};
pub use tx::Tx;
