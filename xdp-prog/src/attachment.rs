//! The steering policy a stack on an interface follows (the server's, or a load generator's):
//! attach the program (or adopt the one `testbed/attach.sh` pinned), add its endpoints, and on
//! exit take back exactly what it set up, since another stack may share the program. Its own
//! attachment is a BPF link (the kernel drops it when the process dies, even by SIGKILL); a
//! program of ours attached without a pin is not touched (another loader's, or a crashed
//! `xdp-steer attach`'s: the error says how to go on).
//! With `--xdp-mode external` the program an operator's loader attached (`xdp-loader`, maybe
//! beside other programs under libxdp's dispatcher) is used and left as it was found.

use std::net::SocketAddrV4;
use std::path::Path;

use anyhow::{bail, Context};

use crate::{Counters, Mode, SteerError, Steering};

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

#[derive(Default)]
struct Added {
    dest: Option<SocketAddrV4>,
    source: Option<SocketAddrV4>,
    locals: Vec<std::net::Ipv4Addr>,
}

pub struct Attachment {
    steering: Steering,
    iface: String,
    /// We attached it, so we detach it; an adopted (pinned) program stays.
    ours: bool,
    /// What we added to an adopted program, to remove again (and nothing else: another stack
    /// may share it).
    added: Added,
    queues: u32,
    finished: bool,
}

impl Attachment {
    /// Steer `what` on `iface` to AF_XDP sockets on `queues` queues. [`Mode::External`]: use the
    /// program another loader attached (xdp-loader, alone or under libxdp's dispatcher). `pin`:
    /// adopt the program pinned there; otherwise one pinned under [`PIN_ROOT`] is adopted if it
    /// is the one attached, and else we attach our own (an interface running any other program,
    /// an unpinned one of ours included, is refused).
    pub fn prepare(
        iface: &str,
        mode: Mode,
        what: Steer,
        pin: Option<&Path>,
        queues: u32,
    ) -> anyhow::Result<Attachment> {
        let pinned = if mode == Mode::External {
            None
        } else {
            find_pinned(iface, pin)?
        };
        let mut att = match pinned {
            Some(dir) => adopt(&dir, iface)?,
            None if mode == Mode::External => Attachment {
                steering: Steering::open_external(iface).with_context(|| {
                    format!("--xdp-mode external: using the program another loader attached to {iface}")
                })?,
                iface: iface.to_string(),
                ours: false,
                added: Added::default(),
                queues,
                finished: false,
            },
            None => {
                // A BPF link: the kernel detaches it when this process ends, even by SIGKILL. An
                // unpinned program of ours already there is refused, not replaced: xdp-loader
                // may own it (`--xdp-mode external`), and ours never outlive their process.
                let steering = Steering::attach_link(iface, mode)?;
                Attachment {
                    steering,
                    iface: iface.to_string(),
                    ours: true,
                    added: Added::default(),
                    queues,
                    finished: false,
                }
            }
        };
        att.queues = queues;
        let added = att.add(&what)?;
        if !att.ours {
            att.added = added;
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
            match (att.ours, mode) {
                (true, _) => "",
                (false, Mode::External) => ", attached by another loader",
                (false, _) => ", adopted from its pin",
            }
        );
        Ok(att)
    }

    /// Add what `what` steers to the program's maps; returns what was not there before (what is
    /// ours to remove again).
    fn add(&mut self, what: &Steer) -> anyhow::Result<Added> {
        let mut added = Added::default();
        match what {
            &Steer::To(listen) => {
                let mut endpoints = self.steering.endpoints();
                if !endpoints.contains(&listen) {
                    endpoints.push(listen);
                    self.steering.set_endpoints(&endpoints)?;
                    added.dest = Some(listen);
                }
            }
            Steer::From(server, ours) => {
                let (mut sources, mut locals) = self.steering.sources();
                if !sources.contains(server) {
                    sources.push(*server);
                    added.source = Some(*server);
                }
                for a in ours {
                    if !locals.contains(a) {
                        locals.push(*a);
                        added.locals.push(*a);
                    }
                }
                if added.source.is_some() || !added.locals.is_empty() {
                    self.steering.set_sources(&sources, &locals)?;
                }
            }
        }
        Ok(added)
    }

    /// The XSKMAP's descriptor, passed to the workers to register their sockets in.
    pub fn xsks_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.steering.xsks_fd()
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
            let added = std::mem::take(&mut self.added);
            if let Some(listen) = added.dest {
                let mut endpoints = self.steering.endpoints();
                endpoints.retain(|e| *e != listen);
                let _ = self.steering.set_endpoints(&endpoints);
            }
            if added.source.is_some() || !added.locals.is_empty() {
                let (mut sources, mut locals) = self.steering.sources();
                sources.retain(|e| Some(*e) != added.source);
                locals.retain(|a| !added.locals.contains(a));
                let _ = self.steering.set_sources(&sources, &locals);
            }
        }
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The pin directory of the program to adopt: `pin` if given (it must hold one), else the pin
/// under [`PIN_ROOT`] of the program of ours attached to `iface`, if any.
fn find_pinned(iface: &str, pin: Option<&Path>) -> anyhow::Result<Option<std::path::PathBuf>> {
    if let Some(dir) = pin {
        if !dir.join("prog").exists() {
            bail!(
                "--xdp-pin {}: nothing pinned there (attach with testbed/attach.sh, or leave --xdp-pin out and the server attaches the program itself)",
                dir.display()
            );
        }
        return Ok(Some(dir.to_path_buf()));
    }
    match crate::attached_program(iface) {
        Ok(Some((id, name, _))) if name == crate::PROGRAM_NAME => Ok(crate::find_pin(Path::new(PIN_ROOT), id)),
        Ok(_) => Ok(None),
        Err(SteerError::NoSuchInterface(_)) => {
            bail!("--iface {iface}: no such interface in this network namespace")
        }
        Err(e) => Err(e.into()),
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
        added: Added::default(),
        queues: 0,
        finished: false,
    })
}
