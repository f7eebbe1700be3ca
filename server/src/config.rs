//! The settings of one server, whatever its stack: what `main.rs` makes of the command line and
//! the supervisor runs with.

use std::net::SocketAddr;
use std::time::Duration;

/// Settings of a server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    /// Worker processes (kernel stack: sharing the port; xdp: one per receive queue).
    pub workers: usize,
    pub max_conns_per_worker: usize,
    pub push_interval: Option<Duration>,
    pub idle_timeout: Duration,
    pub request_timeout: Duration,
    pub poll_hold: (Duration, Duration),
    pub echo: bool,
    pub max_frame: usize,
    pub max_message: usize,
    /// Bytes of each worker's message log.
    pub log_size: usize,
    /// How long a connection may take no output before it is closed as a slow reader (0: off).
    pub write_timeout: Duration,
    /// A worker that answers no ping for this long is killed and restarted (None: not checked).
    pub hang_timeout: Option<Duration>,
    /// Restarts of one worker within a minute before the server gives up and stops (0: a dead
    /// worker stops the server).
    pub max_restarts: usize,
    /// Connections one client address may hold per worker (None: no limit).
    pub max_conns_per_source: Option<u32>,
    /// The HS256 key device tokens must be signed with (None: device ids are not checked).
    pub device_jwt_key: Option<crate::secret::Secret>,
    /// Browser origins allowed to connect (empty: any).
    pub allowed_origins: Vec<String>,
    /// Without a device key, take ids on the client's word (`--insecure-ids`).
    pub insecure_ids: bool,
    /// Serve connections without a device id (broadcast listeners).
    pub anonymous: bool,
    /// Who may use the admin endpoint (token, public metrics, Host names).
    pub admin_access: crate::admin::AdminAccess,
    /// Connections closed per second when draining on SIGTERM (0: all at once).
    pub drain_rate: f64,
    /// One node of a cluster (`--cluster`); None: a single server.
    pub cluster: Option<crate::supervisor::cluster::ClusterOptions>,
    /// Serve the WebSocket port on the userspace stack (`--stack xdp`); `None`: kernel sockets.
    #[cfg(feature = "xdp")]
    pub xdp: Option<XdpOptions>,
}

impl ServerConfig {
    /// The stack's name, as `/stats` and the logs say it.
    pub fn stack_name(&self) -> &'static str {
        #[cfg(feature = "xdp")]
        if self.xdp.is_some() {
            return "xdp";
        }
        "kernel"
    }
}

/// The `--stack xdp` settings of a server.
#[cfg(feature = "xdp")]
#[derive(Clone, Debug)]
pub struct XdpOptions {
    pub iface: String,
    /// Receive queues served, one worker process each (queue i by worker i).
    pub queues: u32,
    pub mode: xdp_prog::Mode,
    /// Adopt the program `testbed/attach.sh` pinned here instead of attaching our own.
    pub pin: Option<std::path::PathBuf>,
    pub rx_buf: usize,
    pub tx_buf: usize,
    pub spill_buffers: usize,
}
