//! Time for the server core and the userspace stack, with no dependencies (the sans-I/O core
//! uses it without linking smoltcp):
//!
//! - [`wheel`]: a hashed timer wheel whose 8-byte entries carry no deadline.
//! - [`clock`]: a monotonic clock that starts with the process.
#![forbid(unsafe_code)]

pub mod clock;
pub mod wheel;

pub use wheel::{Due, Entry, TimerWheel};
