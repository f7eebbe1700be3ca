//! Loading, attaching and driving the steering program.
//!
//! A [`Steering`] holds the program and its maps by file descriptor (not the libbpf object), so the
//! same handle works whether this process loaded the program or opened what another process
//! pinned. The attachment is made over netlink (`bpf_xdp_attach` with `UPDATE_IF_NOEXIST`): it
//! outlives the process, and an interface that already runs someone else's XDP program is refused,
//! not silently taken over. Dropping a handle detaches, unless the handle was pinned.

use std::ffi::CString;
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Mutex;

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, MapHandle, Xdp, XdpFlags};

use crate::interface::{attached_program, ifindex, ifname, prog_info};
use crate::maps::{Config, Counters, EndpointKey, KIND_DEST, KIND_LOCAL, KIND_SOURCE, MAX_ENDPOINTS, MAX_QUEUES};
use crate::skel::SteerSkelBuilder;
use crate::xsk_map::{register_in, unregister_in};

/// How to attach.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Native (driver) mode, falling back to generic with a warning.
    #[default]
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic (skb) mode: works everywhere, slower, no AF_XDP zero-copy.
    Generic,
    /// Attached by another loader (`xdp-loader load IFACE wsb_steer.o`, alone or beside other
    /// programs under libxdp's dispatcher; `xdp-steer object` writes the file): used as it is,
    /// never attached or detached here.
    External,
}

/// How the program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Attached {
    Native,
    Generic,
}

impl Attached {
    pub(crate) fn flags(self) -> XdpFlags {
        match self {
            Attached::Native => XdpFlags::DRV_MODE,
            Attached::Generic => XdpFlags::SKB_MODE,
        }
    }

    fn code(self) -> u32 {
        match self {
            Attached::Native => 1,
            Attached::Generic => 2,
        }
    }

    fn from_code(code: u32) -> Option<Attached> {
        match code {
            1 => Some(Attached::Native),
            2 => Some(Attached::Generic),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SteerError {
    #[error("loading and attaching XDP programs needs CAP_BPF and CAP_NET_ADMIN (missing: {0}); run as root or give these capabilities")]
    MissingCaps(String),
    #[error("no network interface named '{0}' in this network namespace")]
    NoSuchInterface(String),
    #[error("{iface} runs another XDP program (id {id}, '{name}'), not ours: not touching it; detach it first")]
    AttachedBySomeoneElse { iface: String, id: u32, name: String },
    #[error("{iface} already runs our steering program (id {id}), with no pin of ours: if xdp-loader loaded it, start with --xdp-mode external; if a crashed `xdp-steer attach` left it, remove it (xdp-steer detach {iface})")]
    AlreadyAttached { iface: String, id: u32 },
    #[error("the kernel's verifier rejected the XDP program:\n{log}")]
    Verifier { log: String },
    #[error("{what}: {source}")]
    Bpf {
        what: String,
        #[source]
        source: libbpf_rs::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no steering program is attached on {0}")]
    NotAttached(String),
    #[error("queue {0} is out of range: the program has sockets for queues 0 to {max}", max = MAX_QUEUES - 1)]
    BadQueue(u32),
    #[error("{iface} runs libxdp's dispatcher (id {id}) without our program among its components: load it with `xdp-loader load {iface} wsb_steer.o` (`xdp-steer object` writes the file)")]
    NotAmongComponents { iface: String, id: u32 },
    #[error("program {id} has no map '{missing}': not ours")]
    NotOurs { id: u32, missing: String },
    #[error("--mode external uses the program another loader attached (xdp-loader); it is not a way to attach")]
    ExternalIsNotAttaching,
    #[error("too many endpoints: the program holds at most 256 (endpoints, servers and client addresses together)")]
    TooManyEndpoints,
}

pub(crate) type Result<T> = std::result::Result<T, SteerError>;

pub(crate) fn bpf(what: &str) -> impl FnOnce(libbpf_rs::Error) -> SteerError + '_ {
    move |source| SteerError::Bpf {
        what: what.to_string(),
        source,
    }
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> SteerError {
    move |source| SteerError::Io { what, source }
}

/// Pinned objects under a pin directory.
const PINS: [&str; 5] = ["prog", "xsks", "endpoints", "counters", "config"];

/// libbpf's log lines while a program loads (the verifier log, on failure).
static LOAD_LOG: Mutex<String> = Mutex::new(String::new());

fn capture_libbpf_log(_level: libbpf_rs::PrintLevel, line: String) {
    if let Ok(mut log) = LOAD_LOG.lock() {
        log.push_str(&line);
    }
}

/// The program's name as the kernel knows it (first 15 bytes of the function name).
pub const PROGRAM_NAME: &str = "wsb_steer";

pub struct Steering {
    prog: OwnedFd,
    prog_id: u32,
    xsks: MapHandle,
    endpoints: MapHandle,
    counters: MapHandle,
    /// Absent for a program another loader attached: the program does not use it, so the kernel
    /// keeps it only while that loader's object lives.
    config: Option<MapHandle>,
    /// Where it is attached, if it is.
    attachment: Option<(u32, Attached)>,
    /// A BPF link holding the attachment (`attach_link`): closing it detaches, so the kernel
    /// drops the program when its process dies, however it dies.
    link: Option<OwnedFd>,
    detach_on_drop: bool,
}

/// An interface that runs an XDP program already is not ours to attach to: ours (detach it
/// first) or someone else's (never taken over).
fn refuse_occupied(iface: &str) -> Result<()> {
    let Some((id, name, _)) = attached_program(iface)? else {
        return Ok(());
    };
    let iface = iface.to_string();
    Err(if name == PROGRAM_NAME {
        SteerError::AlreadyAttached { iface, id }
    } else {
        SteerError::AttachedBySomeoneElse { iface, id, name }
    })
}

/// What loading and attaching the program needs (root has it all).
fn check_caps() -> Result<()> {
    let missing = host::caps::missing(host::caps::effective(), &[host::caps::BPF, host::caps::NET_ADMIN]);
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = missing.iter().map(|c| c.name).collect();
    Err(SteerError::MissingCaps(names.join(", ")))
}

impl Steering {
    /// Load the program (the verifier checks it) without attaching it anywhere.
    pub fn load() -> Result<Steering> {
        check_caps()?;
        if let Ok(mut log) = LOAD_LOG.lock() {
            log.clear();
        }
        let previous = libbpf_rs::set_print(Some((libbpf_rs::PrintLevel::Debug, capture_libbpf_log)));
        let mut storage = MaybeUninit::uninit();
        let loaded = SteerSkelBuilder::default()
            .open(&mut storage)
            .map_err(bpf("opening the XDP object"))
            .and_then(|open| open.load().map_err(|e| SteerError::Verifier { log: verifier_log(&e) }));
        libbpf_rs::set_print(previous);
        let skel = loaded?;
        let prog = skel
            .progs
            .wsb_steer
            .as_fd()
            .try_clone_to_owned()
            .map_err(io("duplicating the program fd".into()))?;
        let (prog_id, _) = prog_info(prog.as_fd())?;
        let handle =
            |m: &dyn Fn() -> std::result::Result<MapHandle, libbpf_rs::Error>, what: &str| m().map_err(bpf(what));
        Ok(Steering {
            prog_id,
            xsks: handle(&|| MapHandle::try_from(&skel.maps.xsks), "xsks map")?,
            endpoints: handle(&|| MapHandle::try_from(&skel.maps.endpoints), "endpoints map")?,
            counters: handle(&|| MapHandle::try_from(&skel.maps.counters), "counters map")?,
            config: Some(handle(&|| MapHandle::try_from(&skel.maps.config), "config map")?),
            prog,
            attachment: None,
            link: None,
            detach_on_drop: true,
        })
    }

    /// Load the program and attach it to `iface` (in the calling thread's network namespace).
    pub fn attach(iface: &str, mode: Mode) -> Result<Steering> {
        check_caps()?;
        let index = ifindex(iface)?;
        let steering = Steering::load()?;
        refuse_occupied(iface)?;
        let xdp = Xdp::new(steering.prog.as_fd());
        let try_mode = |m: Attached| {
            xdp.attach(index as i32, m.flags() | XdpFlags::UPDATE_IF_NOEXIST)
                .map(|()| m)
        };
        let attached = match mode {
            Mode::Native => try_mode(Attached::Native).map_err(bpf(&format!("attaching in native mode to {iface}")))?,
            Mode::Generic => {
                try_mode(Attached::Generic).map_err(bpf(&format!("attaching in generic mode to {iface}")))?
            }
            Mode::External => return Err(SteerError::ExternalIsNotAttaching),
            Mode::Auto => match try_mode(Attached::Native) {
                Ok(m) => m,
                Err(e) => {
                    log::warn!("{iface}: native XDP failed ({e}); falling back to generic (skb) mode, which is slower");
                    try_mode(Attached::Generic).map_err(bpf(&format!("attaching in generic mode to {iface}")))?
                }
            },
        };
        steering.attached(index, attached)
    }

    /// Record where it is attached, in this handle and in the program's config map.
    fn attached(mut self, index: u32, attached: Attached) -> Result<Steering> {
        self.attachment = Some((index, attached));
        let mut cfg = self.config()?;
        cfg.ifindex = index;
        cfg.attach_mode = attached.code();
        self.set_config(cfg)?;
        Ok(self)
    }

    /// Load the program and attach it to `iface` with a BPF link held by this handle: the
    /// attachment ends when the handle is dropped or the process dies (a SIGKILL leaves nothing
    /// behind). An interface that runs another XDP program is refused, as by `attach`.
    pub fn attach_link(iface: &str, mode: Mode) -> Result<Steering> {
        check_caps()?;
        let index = ifindex(iface)?;
        let mut steering = Steering::load()?;
        refuse_occupied(iface)?;
        let prog = steering.prog.as_raw_fd();
        let try_mode = |m: Attached| -> std::result::Result<(OwnedFd, Attached), std::io::Error> {
            let opts = libbpf_sys::bpf_link_create_opts {
                sz: std::mem::size_of::<libbpf_sys::bpf_link_create_opts>() as _,
                flags: m.flags().bits(),
                ..Default::default()
            };
            // SAFETY: a program fd we own, an interface index, and options whose size is set.
            let fd = unsafe { libbpf_sys::bpf_link_create(prog, index as i32, libbpf_sys::BPF_XDP, &opts) };
            if fd < 0 {
                return Err(std::io::Error::from_raw_os_error(-fd));
            }
            // SAFETY: a new link fd, ours from here.
            Ok((unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }, m))
        };
        let io_err = |what: String| move |source| SteerError::Io { what, source };
        let (link, attached) = match mode {
            Mode::Native => {
                try_mode(Attached::Native).map_err(io_err(format!("attaching in native mode to {iface}")))?
            }
            Mode::Generic => {
                try_mode(Attached::Generic).map_err(io_err(format!("attaching in generic mode to {iface}")))?
            }
            Mode::External => return Err(SteerError::ExternalIsNotAttaching),
            Mode::Auto => match try_mode(Attached::Native) {
                Ok(done) => done,
                Err(e) => {
                    log::warn!("{iface}: native XDP failed ({e}); falling back to generic (skb) mode, which is slower");
                    try_mode(Attached::Generic).map_err(io_err(format!("attaching in generic mode to {iface}")))?
                }
            },
        };
        steering.link = Some(link);
        steering.attached(index, attached)
    }

    /// Whether the attachment is a BPF link held by this handle.
    pub fn is_link(&self) -> bool {
        self.link.is_some()
    }

    /// Open what `pin` made in `dir` (from any process, any network namespace).
    pub fn open_pinned(dir: &Path) -> Result<Steering> {
        let map = |name: &str| {
            MapHandle::from_pinned_path(dir.join(name)).map_err(bpf(&format!("opening {}", dir.join(name).display())))
        };
        let prog = libbpf_rs::Program::fd_from_pinned_path(dir.join("prog"))
            .map_err(bpf(&format!("opening {}", dir.join("prog").display())))?;
        let (prog_id, _) = prog_info(prog.as_fd())?;
        let mut s = Steering {
            prog,
            prog_id,
            xsks: map("xsks")?,
            endpoints: map("endpoints")?,
            counters: map("counters")?,
            config: Some(map("config")?),
            attachment: None,
            link: None,
            detach_on_drop: false,
        };
        let cfg = s.config()?;
        s.attachment = Attached::from_code(cfg.attach_mode).map(|m| (cfg.ifindex, m));
        Ok(s)
    }

    /// Open the program of ours another loader attached to `iface` (`xdp-loader`, alone or as a
    /// component under libxdp's dispatcher) and its maps, by id (needs CAP_SYS_ADMIN). Dropping
    /// the handle leaves it attached: its loader owns the attachment.
    pub fn open_external(iface: &str) -> Result<Steering> {
        let (prog_id, mode) = crate::interface::external_program(iface)?;
        let prog = crate::interface::prog_by_id(prog_id)?;
        let mut maps = std::collections::HashMap::new();
        for id in crate::interface::map_ids(prog.as_fd()) {
            let map = MapHandle::from_map_id(id).map_err(bpf(&format!(
                "opening map {id} of program {prog_id} by id (needs CAP_SYS_ADMIN)"
            )))?;
            maps.insert(map.name().to_string_lossy().into_owned(), map);
        }
        let mut take = |name: &str| {
            maps.remove(name).ok_or_else(|| SteerError::NotOurs {
                id: prog_id,
                missing: name.to_string(),
            })
        };
        let index = ifindex(iface)?;
        Ok(Steering {
            xsks: take("xsks")?,
            endpoints: take("endpoints")?,
            counters: take("counters")?,
            config: None,
            prog,
            prog_id,
            attachment: Some((index, mode)),
            link: None,
            detach_on_drop: false,
        })
    }

    /// Pin the program and its maps under `dir` (on a bpffs); from now on dropping this handle
    /// leaves the program attached. `dir` is created if needed.
    pub fn pin(&mut self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        let path = CString::new(dir.join("prog").as_os_str().as_encoded_bytes()).map_err(|_| SteerError::Io {
            what: "pin path".into(),
            source: std::io::ErrorKind::InvalidInput.into(),
        })?;
        // SAFETY: pins the program fd we own at a NUL-terminated path.
        let rc = unsafe { libbpf_sys::bpf_obj_pin(self.prog.as_raw_fd(), path.as_ptr()) };
        if rc != 0 {
            return Err(SteerError::Io {
                what: format!(
                    "pinning the program at {} (is {} on a bpffs?)",
                    dir.join("prog").display(),
                    dir.display()
                ),
                source: std::io::Error::last_os_error(),
            });
        }
        for (name, map) in [
            ("xsks", Some(&mut self.xsks)),
            ("endpoints", Some(&mut self.endpoints)),
            ("counters", Some(&mut self.counters)),
            ("config", self.config.as_mut()),
        ] {
            let Some(map) = map else { continue };
            map.pin(dir.join(name))
                .map_err(bpf(&format!("pinning {}", dir.join(name).display())))?;
        }
        self.detach_on_drop = false;
        Ok(())
    }

    /// Remove the pins under `dir` (the directory too, if it is then empty). Missing pins are fine.
    pub fn unpin(dir: &Path) -> Result<()> {
        for name in PINS {
            match std::fs::remove_file(dir.join(name)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(SteerError::Io {
                        what: format!("removing {}", dir.join(name).display()),
                        source: e,
                    })
                }
            }
        }
        let _ = std::fs::remove_dir(dir);
        Ok(())
    }

    pub fn program_id(&self) -> u32 {
        self.prog_id
    }

    /// Interface name and mode, if attached.
    pub fn attachment(&self) -> Option<(String, Attached)> {
        self.attachment.map(|(index, mode)| (ifname(index), mode))
    }

    /// Detach from the interface, if our program is what runs there.
    pub fn detach(&mut self) -> Result<()> {
        let Some((index, mode)) = self.attachment else {
            return Ok(());
        };
        if let Some(link) = self.link.take() {
            // Closing the only descriptor of the link detaches the program.
            drop(link);
            self.attachment = None;
            let mut cfg = self.config()?;
            cfg.ifindex = 0;
            cfg.attach_mode = 0;
            return self.set_config(cfg);
        }
        let iface = ifname(index);
        match attached_program(&iface) {
            Ok(Some((id, _, _))) if id == self.prog_id => {
                Xdp::new(self.prog.as_fd())
                    .detach(index as i32, mode.flags())
                    .map_err(bpf(&format!("detaching from {iface}")))?;
            }
            // Gone already (the interface was deleted, or someone detached it).
            Ok(_) | Err(SteerError::NoSuchInterface(_)) => {}
            Err(e) => return Err(e),
        }
        self.attachment = None;
        let mut cfg = self.config()?;
        cfg.ifindex = 0;
        cfg.attach_mode = 0;
        self.set_config(cfg)
    }

    fn config(&self) -> Result<Config> {
        let Some(config) = &self.config else {
            return Ok(Config::default());
        };
        let v = config
            .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
            .map_err(bpf("reading the config map"))?;
        Ok(v.and_then(|v| bytemuck::try_pod_read_unaligned(&v).ok())
            .unwrap_or_default())
    }

    fn set_config(&self, cfg: Config) -> Result<()> {
        let Some(config) = &self.config else {
            return Ok(());
        };
        config
            .update(&0u32.to_ne_bytes(), bytemuck::bytes_of(&cfg), MapFlags::ANY)
            .map_err(bpf("writing the config map"))
    }

    /// Replace the steered endpoints: untagged, unfragmented TCP/IPv4 segments to them go to the
    /// sockets. ARP is never steered: the kernel keeps the address and answers ARP for it.
    pub fn set_endpoints(&self, endpoints: &[SocketAddrV4]) -> Result<()> {
        self.replace_keys(KIND_DEST, endpoints.iter().map(|&e| EndpointKey::new(e)).collect())
    }

    /// Replace the servers whose segments are steered (client mode: a userspace stack that
    /// connects out to these from `locals` owns everything they send back to those addresses, on
    /// any port; segments to the host's other addresses stay the kernel's).
    pub fn set_sources(&self, servers: &[SocketAddrV4], locals: &[Ipv4Addr]) -> Result<()> {
        let wanted = servers.iter().map(|&e| EndpointKey::of_kind(e, KIND_SOURCE)).collect();
        self.replace_keys(KIND_SOURCE, wanted)?;
        let wanted = locals
            .iter()
            .map(|&a| EndpointKey::of_kind(SocketAddrV4::new(a, 0), KIND_LOCAL))
            .collect();
        self.replace_keys(KIND_LOCAL, wanted)
    }

    /// Make the map's keys of `kind` exactly `wanted` (keys of the other kind stay).
    fn replace_keys(&self, kind: u16, mut wanted: Vec<EndpointKey>) -> Result<()> {
        wanted.sort_by_key(|k| bytemuck::bytes_of(k).to_vec());
        wanted.dedup();
        let present: Vec<EndpointKey> = self
            .endpoints
            .keys()
            .filter_map(|k| bytemuck::try_pod_read_unaligned::<EndpointKey>(&k).ok())
            .collect();
        let others = present.iter().filter(|k| k.kind() != kind).count();
        if wanted.len() + others > MAX_ENDPOINTS {
            return Err(SteerError::TooManyEndpoints);
        }
        for key in present.iter().filter(|k| k.kind() == kind && !wanted.contains(k)) {
            self.endpoints
                .delete(bytemuck::bytes_of(key))
                .map_err(bpf("removing an endpoint"))?;
        }
        for key in &wanted {
            self.endpoints
                .update(bytemuck::bytes_of(key), &[1], MapFlags::ANY)
                .map_err(bpf("adding an endpoint"))?;
        }
        Ok(())
    }

    fn keys_of_kind(&self, kind: u16) -> Vec<SocketAddrV4> {
        let mut out: Vec<SocketAddrV4> = self
            .endpoints
            .keys()
            .filter_map(|k| bytemuck::try_pod_read_unaligned::<EndpointKey>(&k).ok())
            .filter(|k| k.kind() == kind)
            .map(|k| k.endpoint())
            .collect();
        out.sort();
        out
    }

    /// The steered endpoints.
    pub fn endpoints(&self) -> Vec<SocketAddrV4> {
        self.keys_of_kind(KIND_DEST)
    }

    /// The servers whose segments are steered (client mode), and the local addresses they are
    /// steered for.
    pub fn sources(&self) -> (Vec<SocketAddrV4>, Vec<Ipv4Addr>) {
        let locals = self
            .endpoints
            .keys()
            .filter_map(|k| bytemuck::try_pod_read_unaligned::<EndpointKey>(&k).ok())
            .filter(|k| k.kind() == KIND_LOCAL)
            .map(|k| *k.endpoint().ip());
        let mut locals: Vec<Ipv4Addr> = locals.collect();
        locals.sort();
        (self.keys_of_kind(KIND_SOURCE), locals)
    }

    /// The kernel's id of the XSKMAP: another process of ours (a worker per queue) opens it with
    /// [`XskMap::open`] to register its own socket, with no pin and no fd passing.
    pub fn xsks_map_id(&self) -> Result<u32> {
        map_id(&self.xsks)
    }

    /// Send this queue's steered segments to the AF_XDP socket `fd`.
    pub fn register_socket(&self, queue: u32, fd: BorrowedFd<'_>) -> Result<()> {
        register_in(self.xsks.as_fd(), queue, fd)
    }

    /// The XSKMAP's descriptor, for the workers to inherit.
    pub fn xsks_fd(&self) -> BorrowedFd<'_> {
        self.xsks.as_fd()
    }

    /// Stop steering this queue to a socket (its segments go to the kernel again).
    pub fn unregister_socket(&self, queue: u32) -> Result<()> {
        unregister_in(self.xsks.as_fd(), queue)
    }

    /// Run the program once on `frame`, as if it had come in on queue 0, without any interface
    /// (BPF_PROG_TEST_RUN), and return its XDP action; the counters count it like any frame.
    /// Tests use it to hold the program to the stack's parser frame by frame.
    pub fn run_once(&self, frame: &[u8]) -> Result<u32> {
        let mut opts = libbpf_sys::bpf_test_run_opts {
            sz: std::mem::size_of::<libbpf_sys::bpf_test_run_opts>() as _,
            data_in: frame.as_ptr().cast(),
            data_size_in: frame.len() as u32,
            repeat: 1,
            ..Default::default()
        };
        // SAFETY: the kernel reads `data_size_in` bytes from `data_in`, our live slice, and writes
        // into `opts` only (no output buffers are given).
        let rc = unsafe { libbpf_sys::bpf_prog_test_run_opts(self.prog.as_raw_fd(), &mut opts) };
        if rc != 0 {
            return Err(SteerError::Io {
                what: format!("running the program on a {}-byte test frame", frame.len()),
                source: std::io::Error::from_raw_os_error(-rc),
            });
        }
        Ok(opts.retval)
    }

    /// The counters, summed over CPUs.
    pub fn counters(&self) -> Result<Counters> {
        let mut c = Counters::default();
        for index in 0..Counters::LEN {
            let per_cpu = self
                .counters
                .lookup_percpu(&index.to_ne_bytes(), MapFlags::ANY)
                .map_err(bpf("reading counters"))?;
            let sum = per_cpu
                .unwrap_or_default()
                .iter()
                .filter_map(|v| v.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_ne_bytes))
                .sum();
            c.set(index, sum);
        }
        Ok(c)
    }
}

impl Drop for Steering {
    fn drop(&mut self) {
        if self.detach_on_drop {
            if let Err(e) = self.detach() {
                log::error!("detaching the XDP program: {e}");
            }
        }
    }
}

/// The verifier's own lines from libbpf's log, if any; else all of it.
fn verifier_log(e: &libbpf_rs::Error) -> String {
    let log = LOAD_LOG.lock().map(|l| l.clone()).unwrap_or_default();
    let start = log.find("-- BEGIN PROG LOAD LOG --");
    let end = log.find("-- END PROG LOAD LOG --");
    let body = match (start, end) {
        (Some(s), Some(e)) if s < e => log[s..e].to_string(),
        _ => log,
    };
    format!("{body}\n({e})")
}

fn map_id(map: &MapHandle) -> Result<u32> {
    map.info().map(|i| i.info.id).map_err(bpf("reading the map's id"))
}
