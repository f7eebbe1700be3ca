//! What runs on an interface: which XDP program is attached and how, whether it is a left-over
//! of ours (a process that crashed, a script's pin), and where a pinned one lives.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

use libbpf_rs::Xdp;

use crate::steering::{bpf, Attached, Result, SteerError, PROGRAM_NAME};

/// The interface index of `iface` in the calling thread's network namespace.
pub fn ifindex(iface: &str) -> Result<u32> {
    let name = CString::new(iface).map_err(|_| SteerError::NoSuchInterface(iface.to_string()))?;
    // SAFETY: if_nametoindex reads a NUL-terminated string we own.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(SteerError::NoSuchInterface(iface.to_string())),
        index => Ok(index),
    }
}

pub(crate) fn ifname(index: u32) -> String {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer has IF_NAMESIZE bytes, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return format!("ifindex {index}");
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned()
}

/// Id and name of a loaded program.
pub(crate) fn prog_info(fd: BorrowedFd<'_>) -> Result<(u32, String)> {
    let mut info = libbpf_sys::bpf_prog_info::default();
    let mut len = std::mem::size_of::<libbpf_sys::bpf_prog_info>() as u32;
    // SAFETY: the kernel writes at most `len` bytes into `info`.
    let rc = unsafe { libbpf_sys::bpf_prog_get_info_by_fd(fd.as_raw_fd(), &mut info, &mut len) };
    if rc != 0 {
        return Err(SteerError::Io {
            what: "reading program info".into(),
            source: std::io::Error::from_raw_os_error(-rc),
        });
    }
    // SAFETY: `name` is a fixed array the kernel NUL-terminates.
    let name = unsafe { CStr::from_ptr(info.name.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    Ok((info.id, name))
}

/// The maps our program's code uses, by name (the `config` map is userspace's only, so the
/// kernel does not list it): with its name, what makes a program ours (another program could
/// take the name, not these maps as well).
const OUR_MAPS: [&str; 3] = ["xsks", "endpoints", "counters"];

/// The ids of the maps program `prog` uses.
pub(crate) fn map_ids(prog: BorrowedFd<'_>) -> Vec<u32> {
    let mut info = libbpf_sys::bpf_prog_info::default();
    let mut len = std::mem::size_of::<libbpf_sys::bpf_prog_info>() as u32;
    // SAFETY: the kernel writes at most `len` bytes into `info`.
    if unsafe { libbpf_sys::bpf_prog_get_info_by_fd(prog.as_raw_fd(), &mut info, &mut len) } != 0 {
        return Vec::new();
    }
    let mut ids = vec![0u32; info.nr_map_ids as usize];
    let mut info = libbpf_sys::bpf_prog_info {
        nr_map_ids: ids.len() as u32,
        map_ids: ids.as_mut_ptr() as u64,
        ..Default::default()
    };
    let mut len = std::mem::size_of::<libbpf_sys::bpf_prog_info>() as u32;
    // SAFETY: the kernel writes at most `nr_map_ids` ids into `ids`, which has that many.
    if unsafe { libbpf_sys::bpf_prog_get_info_by_fd(prog.as_raw_fd(), &mut info, &mut len) } != 0 {
        return Vec::new();
    }
    ids.truncate(info.nr_map_ids as usize);
    ids
}

/// The names of the maps program `prog` uses.
fn map_names(prog: BorrowedFd<'_>) -> Vec<String> {
    map_ids(prog)
        .into_iter()
        .filter_map(|id| {
            // SAFETY: returns a new fd for the map id (or an error).
            let fd = unsafe { libbpf_sys::bpf_map_get_fd_by_id(id) };
            if fd < 0 {
                return None;
            }
            // SAFETY: a fresh fd that we own from here.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let mut m = libbpf_sys::bpf_map_info::default();
            let mut len = std::mem::size_of::<libbpf_sys::bpf_map_info>() as u32;
            // SAFETY: the kernel writes at most `len` bytes into `m`.
            if unsafe { libbpf_sys::bpf_map_get_info_by_fd(fd.as_raw_fd(), &mut m, &mut len) } != 0 {
                return None;
            }
            // SAFETY: `name` is a fixed array the kernel NUL-terminates.
            Some(
                unsafe { CStr::from_ptr(m.name.as_ptr()) }
                    .to_string_lossy()
                    .into_owned(),
            )
        })
        .collect()
}

/// The kernel's XDP state of `iface`: what is attached, how, and what its driver offers.
fn xdp_query(iface: &str) -> Result<libbpf_sys::bpf_xdp_query_opts> {
    let index = ifindex(iface)?;
    let mut opts = libbpf_sys::bpf_xdp_query_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_xdp_query_opts>() as _,
        ..Default::default()
    };
    // SAFETY: bpf_xdp_query fills the opts struct we own, whose size field is set.
    let rc = unsafe { libbpf_sys::bpf_xdp_query(index as i32, 0, &mut opts) };
    if rc != 0 {
        return Err(SteerError::Io {
            what: format!("querying XDP on {iface}"),
            source: std::io::Error::from_raw_os_error(-rc),
        });
    }
    Ok(opts)
}

/// What runs on an interface now: (program id, name, mode), if anything. A program named like
/// ours whose maps are not ours is reported with its name and "(not ours)".
pub fn attached_program(iface: &str) -> Result<Option<(u32, String, Option<Attached>)>> {
    let opts = xdp_query(iface)?;
    if opts.prog_id == 0 {
        return Ok(None);
    }
    let mode = match u32::from(opts.attach_mode) {
        libbpf_sys::XDP_ATTACHED_DRV => Some(Attached::Native),
        libbpf_sys::XDP_ATTACHED_SKB => Some(Attached::Generic),
        _ => None,
    };
    let name = if let Ok(fd) = prog_by_id(opts.prog_id) {
        let name = prog_info(fd.as_fd()).map(|(_, n)| n).unwrap_or_default();
        let maps = map_names(fd.as_fd());
        if name == PROGRAM_NAME && !OUR_MAPS.iter().all(|m| maps.iter().any(|n| n == m)) {
            format!("{name} (not ours: its maps are {maps:?})")
        } else {
            name
        }
    } else {
        String::new()
    };
    Ok(Some((opts.prog_id, name, mode)))
}

/// A descriptor of loaded program `id` (opening a program by id takes CAP_SYS_ADMIN).
pub(crate) fn prog_by_id(id: u32) -> Result<OwnedFd> {
    // SAFETY: returns a new fd for the program id, or a negative error.
    let fd = unsafe { libbpf_sys::bpf_prog_get_fd_by_id(id) };
    if fd < 0 {
        return Err(SteerError::Io {
            what: format!("opening program {id} by id (needs CAP_SYS_ADMIN)"),
            source: std::io::Error::from_raw_os_error(-fd),
        });
    }
    // SAFETY: a fresh fd that we own from here.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether program `id` is ours: its name and our maps (the check `attached_program` makes).
fn is_ours(id: u32) -> bool {
    let Ok(fd) = prog_by_id(id) else { return false };
    let maps = map_names(fd.as_fd());
    prog_info(fd.as_fd()).is_ok_and(|(_, name)| name == PROGRAM_NAME)
        && OUR_MAPS.iter().all(|m| maps.iter().any(|n| n == m))
}

/// The name libxdp's dispatcher runs under (`xdp-loader load` of several programs).
pub const DISPATCHER_NAME: &str = "xdp_dispatcher";

/// The steering program another loader attached to `iface` (`xdp-loader load IFACE
/// wsb_steer.o`): its id and mode, whether it runs alone or as a component under libxdp's
/// dispatcher. Anything else is an error that says what runs there.
pub fn external_program(iface: &str) -> Result<(u32, Attached)> {
    let Some((id, name, mode)) = attached_program(iface)? else {
        return Err(SteerError::NotAttached(iface.to_string()));
    };
    let mode = mode.unwrap_or(Attached::Native);
    if name == PROGRAM_NAME {
        return Ok((id, mode));
    }
    if name == DISPATCHER_NAME {
        return dispatcher_component(id)?
            .map(|c| (c, mode))
            .ok_or_else(|| SteerError::NotAmongComponents {
                iface: iface.to_string(),
                id,
            });
    }
    if name.is_empty() {
        // Its name could not be read: opening a program by id takes CAP_SYS_ADMIN.
        return Err(SteerError::Io {
            what: format!("opening program {id} attached to {iface} by id (needs CAP_SYS_ADMIN)"),
            source: std::io::ErrorKind::PermissionDenied.into(),
        });
    }
    Err(SteerError::AttachedBySomeoneElse {
        iface: iface.to_string(),
        id,
        name,
    })
}

/// Our program among the components of dispatcher `dispatcher`: libxdp attaches each component
/// as an extension (freplace) program through a BPF link whose target is the dispatcher. The
/// first one found by link id, if several copies run.
fn dispatcher_component(dispatcher: u32) -> Result<Option<u32>> {
    let mut id = 0u32;
    loop {
        let mut next = 0u32;
        // SAFETY: writes the next link id into `next`.
        let rc = unsafe { libbpf_sys::bpf_link_get_next_id(id, &mut next) };
        if rc != 0 {
            // libbpf returns -errno; ENOENT: no link after `id`.
            if -rc == libc::ENOENT {
                return Ok(None);
            }
            return Err(SteerError::Io {
                what: "listing BPF links (needs CAP_SYS_ADMIN)".into(),
                source: std::io::Error::from_raw_os_error(-rc),
            });
        }
        id = next;
        // SAFETY: returns a new fd for the link id (or an error).
        let fd = unsafe { libbpf_sys::bpf_link_get_fd_by_id(id) };
        if fd < 0 {
            if -fd == libc::EPERM {
                return Err(SteerError::Io {
                    what: format!("opening BPF link {id} (needs CAP_SYS_ADMIN)"),
                    source: std::io::Error::from_raw_os_error(libc::EPERM),
                });
            }
            continue;
        }
        // SAFETY: a fresh fd that we own from here.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut info = libbpf_sys::bpf_link_info::default();
        let mut len = std::mem::size_of::<libbpf_sys::bpf_link_info>() as u32;
        // SAFETY: the kernel writes at most `len` bytes into `info`.
        if unsafe { libbpf_sys::bpf_link_get_info_by_fd(fd.as_raw_fd(), &mut info, &mut len) } != 0 {
            continue;
        }
        if info.type_ != libbpf_sys::BPF_LINK_TYPE_TRACING {
            continue;
        }
        // SAFETY: a tracing link's info fills the `tracing` member of the union.
        let target = unsafe { info.__bindgen_anon_1.tracing.target_obj_id };
        if target == dispatcher && is_ours(info.prog_id) {
            return Ok(Some(info.prog_id));
        }
    }
}

/// Detach a steering program of ours that no handle refers to (left attached by a process that
/// crashed, or pinned by a script). Returns its id, or `None` if nothing was attached; refuses
/// another program (`AttachedBySomeoneElse`).
pub fn detach_left_over(iface: &str) -> Result<Option<u32>> {
    let Some((id, name, mode)) = attached_program(iface)? else {
        return Ok(None);
    };
    if name != PROGRAM_NAME {
        return Err(SteerError::AttachedBySomeoneElse {
            iface: iface.to_string(),
            id,
            name,
        });
    }
    let fd = prog_by_id(id)?;
    let flags = mode.unwrap_or(Attached::Native).flags();
    Xdp::new(fd.as_fd())
        .detach(ifindex(iface)? as i32, flags)
        .map_err(bpf(&format!("detaching program {id} from {iface}")))?;
    Ok(Some(id))
}

/// The pin directory under `root` (one level deep, as `testbed/attach.sh` makes them) whose
/// program is `prog_id`, if any.
pub fn find_pin(root: &Path, prog_id: u32) -> Option<std::path::PathBuf> {
    let entries = std::fs::read_dir(root).ok()?;
    entries.flatten().map(|e| e.path()).find(|dir| {
        dir.join("prog").exists()
            && libbpf_rs::Program::fd_from_pinned_path(dir.join("prog"))
                .ok()
                .and_then(|fd| prog_info(fd.as_fd()).ok())
                .is_some_and(|(id, _)| id == prog_id)
    })
}

/// What an interface's driver offers XDP (the kernel's netdev XDP features, Linux 6.3 and later).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct XdpFeatures {
    pub flags: u64,
    /// The most fragments a zero-copy AF_XDP frame may have (0: no zero-copy).
    pub zc_max_segs: u32,
}

/// `NETDEV_XDP_ACT_*` of linux/netdev.h, and their names.
const XDP_ACT: [(u64, &str); 7] = [
    (1 << 0, "basic"),
    (1 << 1, "redirect"),
    (1 << 2, "ndo-xmit"),
    (1 << 3, "xsk-zerocopy"),
    (1 << 4, "hw-offload"),
    (1 << 5, "rx-sg"),
    (1 << 6, "ndo-xmit-sg"),
];

impl XdpFeatures {
    /// The driver runs XDP programs itself (native mode), not only the generic (skb) path.
    pub fn native(&self) -> bool {
        self.flags & 1 != 0
    }

    /// AF_XDP sockets can share the driver's buffers (zero-copy).
    pub fn zero_copy(&self) -> bool {
        self.flags & (1 << 3) != 0
    }

    pub fn names(&self) -> Vec<&'static str> {
        XDP_ACT
            .iter()
            .filter(|(bit, _)| self.flags & bit != 0)
            .map(|&(_, name)| name)
            .collect()
    }
}

/// What `iface`'s driver offers XDP.
pub fn xdp_features(iface: &str) -> Result<XdpFeatures> {
    let opts = xdp_query(iface)?;
    Ok(XdpFeatures {
        flags: opts.feature_flags,
        zc_max_segs: opts.xdp_zc_max_segs,
    })
}

/// The interfaces of this network namespace, by name.
pub fn interfaces() -> Vec<String> {
    let mut names = Vec::new();
    // SAFETY: if_nameindex returns a list we free with if_freenameindex; its names are C strings.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return names;
        }
        let mut p = list;
        while (*p).if_index != 0 && !(*p).if_name.is_null() {
            names.push(std::ffi::CStr::from_ptr((*p).if_name).to_string_lossy().into_owned());
            p = p.add(1);
        }
        libc::if_freenameindex(list);
    }
    names
}
