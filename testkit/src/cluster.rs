//! The hosts of a cluster on one machine (`netns-scripts/cluster.sh`): N server hosts, one client
//! host that reaches them all, a broker host on the servers' backbone; removed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

use crate::netns::lock_prefix;
use crate::repo_root;

/// Where the broker host listens (on the backbone bridge).
pub const BROKER_ADDR: &str = "198.18.100.254";

pub struct ClusterNetns {
    pub prefix: String,
    pub nodes: usize,
    /// The client host.
    pub cli: String,
    /// The broker host.
    pub bus: String,
    root: PathBuf,
    _lock: std::fs::File,
}

impl ClusterNetns {
    pub fn setup(prefix: &str, nodes: usize) -> anyhow::Result<ClusterNetns> {
        let root = repo_root()?;
        let lock = lock_prefix(prefix)?;
        let cluster = ClusterNetns {
            prefix: prefix.to_string(),
            nodes,
            cli: format!("{prefix}-cli"),
            bus: format!("{prefix}-bus"),
            root,
            _lock: lock,
        };
        let out = Command::new("bash")
            .arg(cluster.root.join("netns-scripts/cluster.sh"))
            .args(["up", "--prefix", prefix, "--nodes", &nodes.to_string()])
            .stdin(Stdio::null())
            .output()
            .context("running netns-scripts/cluster.sh")?;
        if !out.status.success() {
            bail!(
                "netns-scripts/cluster.sh failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(cluster)
    }

    /// Node `k`'s host (1-based).
    pub fn node_ns(&self, k: usize) -> String {
        format!("{}-n{k}", self.prefix)
    }

    /// Node `k`'s address, on its link to the client host.
    pub fn node_addr(&self, k: usize) -> String {
        format!("198.18.{k}.1")
    }

    /// Node `k`'s interface towards the client host (where an xdp node attaches).
    pub fn node_dev(&self, k: usize) -> String {
        format!("{}-s{k}", self.prefix)
    }

    /// `ip netns exec <ns> <program>`.
    pub fn command(&self, ns: &str, program: &Path) -> Command {
        crate::netns::exec_in(ns, program)
    }
}

impl Drop for ClusterNetns {
    fn drop(&mut self) {
        let status = Command::new("bash")
            .arg(self.root.join("netns-scripts/cluster.sh"))
            .args(["down", "--prefix", &self.prefix])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!(
                "warning: removing the cluster hosts {}-* failed; run netns-scripts/cluster.sh down --prefix {}",
                self.prefix, self.prefix
            );
        }
    }
}
