//! The XDP steering program as the server uses it: attach it (or adopt the one
//! `testbed/attach.sh` pinned), steer our WebSocket port, and on exit take back exactly what we
//! set up. A program left attached by a server that crashed is replaced, so a restart works.

use std::net::SocketAddrV4;
use std::path::Path;

use anyhow::{bail, Context};
use xdp_prog::{Counters, Mode, SteerError, Steering};

/// Where `testbed/attach.sh` pins what it attaches (one directory per testbed prefix).
pub const PIN_ROOT: &str = "/run/wsb/bpffs";

/// Which segments a stack on the interface owns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Steer {
    /// A server: segments to this endpoint.
    To(SocketAddrV4),
    /// A client stack: every segment from this server endpoint to one of these local addresses.
    From(SocketAddrV4, Vec<std::net::Ipv4Addr>),
}

pub struct Attachment {
    steering: Steering,
    iface: String,
    /// We attached it, so we detach it; an adopted (pinned) program stays.
    ours: bool,
    /// What to remove again from an adopted program.
    added: Option<Steer>,
    queues: u32,
    finished: bool,
}

impl Attachment {
    /// Steer `what` on `iface` to AF_XDP sockets on `queues` queues. `pin`: adopt the program
    /// pinned there; otherwise one pinned under [`PIN_ROOT`] is adopted if it is the one
    /// attached, a left-over of ours is replaced, and else we attach our own.
    pub fn prepare(
        iface: &str,
        mode: Mode,
        what: Steer,
        pin: Option<&Path>,
        queues: u32,
    ) -> anyhow::Result<Attachment> {
        let pinned = match pin {
            Some(dir) => {
                if !dir.join("prog").exists() {
                    bail!(
                        "--xdp-pin {}: nothing pinned there (attach with testbed/attach.sh, or leave --xdp-pin out and the server attaches the program itself)",
                        dir.display()
                    );
                }
                Some(dir.to_path_buf())
            }
            None => match xdp_prog::attached_program(iface) {
                Ok(Some((id, name, _))) if name == xdp_prog::PROGRAM_NAME => {
                    xdp_prog::find_pin(Path::new(PIN_ROOT), id)
                }
                Ok(_) => None,
                Err(SteerError::NoSuchInterface(_)) => {
                    bail!("--iface {iface}: no such interface in this network namespace")
                }
                Err(e) => return Err(e.into()),
            },
        };
        let mut att = match pinned {
            Some(dir) => adopt(&dir, iface)?,
            None => {
                if let Some(id) = xdp_prog::detach_left_over(iface)? {
                    log::warn!("{iface}: replaced steering program {id} left attached by an earlier run");
                }
                let steering = Steering::attach(iface, mode)?;
                Attachment {
                    steering,
                    iface: iface.to_string(),
                    ours: true,
                    added: None,
                    queues,
                    finished: false,
                }
            }
        };
        att.queues = queues;
        let added = match &what {
            &Steer::To(listen) => {
                let (mut endpoints, arp) = att.steering.endpoints()?;
                let new = !endpoints.contains(&listen);
                if new {
                    endpoints.push(listen);
                    att.steering.set_endpoints(&endpoints, arp)?;
                }
                new
            }
            Steer::From(server, ours) => {
                let (mut sources, mut locals) = att.steering.sources();
                let new = !sources.contains(server) || ours.iter().any(|a| !locals.contains(a));
                if new {
                    sources.push(*server);
                    sources.dedup();
                    locals.extend(ours.iter().filter(|a| !locals.contains(a)).copied().collect::<Vec<_>>());
                    att.steering.set_sources(&sources, &locals)?;
                }
                new
            }
        };
        if added && !att.ours {
            att.added = Some(what.clone());
        }
        let how = att
            .steering
            .attachment()
            .map(|(_, m)| format!("{m:?}"))
            .unwrap_or_default();
        let steered = match what {
            Steer::To(listen) => format!("TCP to {listen}"),
            Steer::From(server, locals) => format!("TCP from {server} to {} local address(es)", locals.len()),
        };
        log::info!(
            "XDP steering on {iface} ({how} mode, program {}{}): {steered} goes to AF_XDP, everything else to the kernel",
            att.steering.program_id(),
            if att.ours { "" } else { ", adopted from its pin" }
        );
        Ok(att)
    }

    /// The XSKMAP's id, for the workers to register their sockets in.
    pub fn xsks_map_id(&self) -> anyhow::Result<u32> {
        Ok(self.steering.xsks_map_id()?)
    }

    pub fn counters(&self) -> Option<Counters> {
        self.steering.counters().ok()
    }

    /// Undo what `prepare` did (also run on drop, so an early error cleans up too).
    pub fn finish(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        for q in 0..self.queues {
            let _ = self.steering.unregister_socket(q);
        }
        if self.ours {
            match self.steering.detach() {
                Ok(()) => log::info!("{}: XDP steering detached", self.iface),
                Err(e) => log::error!("{}: detaching the XDP program failed: {e}", self.iface),
            }
        } else {
            match &self.added {
                Some(Steer::To(listen)) => {
                    if let Ok((mut endpoints, arp)) = self.steering.endpoints() {
                        endpoints.retain(|e| e != listen);
                        let _ = self.steering.set_endpoints(&endpoints, arp);
                    }
                }
                Some(Steer::From(server, ours)) => {
                    let (mut sources, mut locals) = self.steering.sources();
                    sources.retain(|e| e != server);
                    locals.retain(|a| !ours.contains(a));
                    let _ = self.steering.set_sources(&sources, &locals);
                }
                None => {}
            }
        }
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        self.finish();
    }
}

fn adopt(dir: &Path, iface: &str) -> anyhow::Result<Attachment> {
    let steering =
        Steering::open_pinned(dir).with_context(|| format!("opening the program pinned at {}", dir.display()))?;
    match steering.attachment() {
        Some((on, _)) if on == iface => {}
        Some((on, _)) => bail!(
            "the program pinned at {} is attached to {on}, not {iface}",
            dir.display()
        ),
        None => bail!("the program pinned at {} is not attached anywhere", dir.display()),
    }
    Ok(Attachment {
        steering,
        iface: iface.to_string(),
        ours: false,
        added: None,
        queues: 0,
        finished: false,
    })
}
