//! ws-server: a WebSocket push server for millions of long-lived connections.
//!
//! - [`core`]: the server logic, sans-I/O (upgrade, frames, push, devices, expiry, long-poll, stats).
//! - [`kernel`]: the baseline transport: epoll over kernel sockets, sharded over worker processes.
//! - [`admin`]: the admin/stats HTTP endpoint.

pub mod admin;
pub mod cli;
pub mod core;
pub mod kernel;
pub mod xdp;
