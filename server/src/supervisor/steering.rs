//! `--stack xdp`: before the workers start, the supervisor attaches the steering program (or
//! adopts a pinned one) and works out what every worker needs to know (address, XSKMAP).

use std::net::SocketAddr;

use anyhow::{bail, Context};
use xdp_prog::{Attachment, Steer};

use crate::config::XdpOptions;
use crate::io::userspace::XdpWorkerConfig;

/// Steering attached and the workers' common xdp settings (`--stack xdp`).
pub(super) fn prepare_xdp(x: &XdpOptions, listen: SocketAddr) -> anyhow::Result<(Attachment, XdpWorkerConfig)> {
    let SocketAddr::V4(listen) = listen else {
        bail!("--stack xdp serves IPv4 only (got --listen {listen})");
    };
    if xdp_prog::ifindex(&x.iface).is_err() {
        bail!("--iface {}: no such interface in this network namespace", x.iface);
    }
    let addrs = host::iface::iface_ipv4(&x.iface);
    let (addr, prefix_len) = if listen.ip().is_unspecified() {
        addrs.first().copied().with_context(|| {
            format!(
                "--iface {} has no IPv4 address: give it one (the kernel keeps the address, ARP and ICMP)",
                x.iface
            )
        })?
    } else {
        addrs.iter().find(|(a, _)| a == listen.ip()).copied().with_context(|| {
            format!(
                "{} is not an address of --iface {} (it has: {:?})",
                listen.ip(),
                x.iface,
                addrs.iter().map(|(a, _)| a.to_string()).collect::<Vec<_>>()
            )
        })?
    };
    let endpoint = std::net::SocketAddrV4::new(addr, listen.port());
    let att = Attachment::prepare(&x.iface, x.mode, Steer::To(endpoint), x.pin.as_deref(), x.queues)?;
    let base = XdpWorkerConfig {
        iface: x.iface.clone(),
        queue: 0,
        addr,
        prefix_len,
        port: listen.port(),
        rx_buf: x.rx_buf,
        tx_buf: x.tx_buf,
        spill_buffers: x.spill_buffers,
    };
    Ok((att, base))
}
