//! What a process of ours asks of the Linux host, in one place so that the server, the stack, the
//! steering loader and the testbed agree on it (and no copy drifts):
//!
//! - [`process`]: open-file limits, resident memory, whether we are root.
//! - [`caps`]: the capabilities we hold (what the xdp stack needs, by name).
//! - [`time`]: CLOCK_MONOTONIC, one clock for every process on the machine.
//! - [`iface`]: an interface's IPv4 addresses and MAC, the kernel's neighbour table.
//! - [`netns`]: moving a thread into a network namespace.
//! - [`tcp`]: what the kernel knows about one of our TCP sockets (the peer's window).

pub mod caps;
pub mod iface;
pub mod netns;
pub mod process;
pub mod tcp;
pub mod time;

pub use process::is_root;
pub use time::monotonic_ns;
