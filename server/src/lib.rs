//! ws-server: a WebSocket push server for millions of long-lived connections.
//!
//! - [`core`]: the server logic, sans-I/O (upgrade, frames, push, devices, expiry, long-poll, stats).
//! - [`io`]: the transports the core runs over: [`io::epoll`] (kernel sockets) and, with the
//!   `xdp` feature, `io::userspace` (our TCP stack over AF_XDP), behind one driver contract.
//! - [`worker`]: the one worker process around either transport.
//! - [`supervisor`]: the process that starts the workers, keeps the device directory across them,
//!   runs the periodic push and answers the admin endpoint.
//! - [`control`]: the supervisor ↔ worker protocol.
//! - [`admin`]: routing of admin requests and rendering of their reports.
//! - [`config`], [`cli`]: the server's settings and the command-line helpers.
//!
//! `ARCHITECTURE.md` at the repository root follows a packet through all of them.

pub mod admin;
pub mod cli;
pub mod config;
pub mod control;
pub mod core;
pub mod io;
pub mod layers;
pub mod logging;
pub mod metrics;
pub mod secret;
pub mod supervisor;
pub mod worker;
