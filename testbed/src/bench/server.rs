//! The servers a benchmark can measure: ours on each stack, and the ones our users would pick
//! instead (`testbed/peers/`), all driven by the same load and measured the same way.

use serde::Serialize;
use ws_server::cli::Stack;

/// A server under test (`ws-bench --stacks`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Server {
    /// ws-server on Linux TCP: epoll workers, sharded over processes.
    Kernel,
    /// ws-server on the userspace stack behind XDP: no file descriptor per connection.
    Xdp,
    /// ws-server on Linux TCP behind haproxy terminating TLS (needs --client kernel, which
    /// speaks TLS): less the `kernel` row, what a TLS proxy costs per connection.
    KernelTls,
    /// Go + gorilla/websocket, a goroutine per connection (testbed/peers/gorilla).
    Gorilla,
    /// Node.js + the ws package, cluster workers (testbed/peers/node-ws).
    NodeWs,
    /// Rust tokio + tokio-tungstenite, a task per connection (testbed/peers/tokio-tungstenite).
    TokioTungstenite,
}

impl Server {
    /// The name on the command line, in the table and in file names.
    pub fn name(self) -> &'static str {
        match self {
            Server::Kernel => "kernel",
            Server::Xdp => "xdp",
            Server::KernelTls => "kernel-tls",
            Server::Gorilla => "gorilla",
            Server::NodeWs => "node-ws",
            Server::TokioTungstenite => "tokio-tungstenite",
        }
    }

    /// The stack ws-server runs on, for ours; `None` for a peer.
    pub fn ours(self) -> Option<Stack> {
        match self {
            Server::Kernel | Server::KernelTls => Some(Stack::Kernel),
            Server::Xdp => Some(Stack::Xdp),
            Server::Gorilla | Server::NodeWs | Server::TokioTungstenite => None,
        }
    }
}

/// The load generator's name for a stack (`--client`).
pub fn client_name(client: Stack) -> &'static str {
    match client {
        Stack::Kernel => "kernel",
        Stack::Xdp => "xdp",
    }
}
