//! A userspace TCP stack for millions of mostly idle connections: smoltcp, used one socket at a
//! time, under our own connection table (`table`), buffer arena (`arena`) and timer wheel
//! (`timing::wheel`), over AF_XDP (`xdp_link`) or an in-memory wire (`mem_link`).
//!
//! The application drives it sans-I/O style: `poll` (frames in, events out), reads and writes by
//! connection id, `flush` (frames out). See `stack` for the per-packet path.

pub mod arena;
pub mod clock;
pub mod config;
pub mod echo;
pub mod link;
pub mod mem_link;
pub mod port;
pub mod stack;
pub mod stats;
pub mod table;
pub mod wire;
pub mod xdp_link;

pub use config::StackConfig;
pub use link::{Link, LinkCounters, Sender};
pub use stack::{CloseReason, ConnId, ConnectError, Event, Stack, StackError};
pub use stats::{MemoryReport, StackStats};
pub use wire::FourTuple;
