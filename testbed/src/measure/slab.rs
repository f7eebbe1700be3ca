//! `/proc/slabinfo` snapshots and deltas.
//!
//! Kernel objects per socket live in a handful of slab caches; their growth
//! over a run, times the object size, is the kernel's per-connection cost.
//! On SLUB, `active_objs` counts objects on CPU-local slabs as active, so it
//! can overstate by a few slabs per CPU: noise at 1M connections, visible at
//! small N. The slab-pages figure (what the caches hold from the page
//! allocator, fragmentation included) is kept as an alternative.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{page_size, read_text, MeasureError, Result};

/// Caches attributed to connections (per-socket objects). Caches merged away
/// on a given kernel (e.g. `eventpoll_pwq`, `skbuff_fclone_cache` under slab
/// merging) are simply absent and reported as such.
pub const SOCKET_CACHES: &[&str] = &[
    "TCP",
    "request_sock_TCP",
    "tw_sock_TCP",
    "sock_inode_cache",
    "filp",
    "dentry",
    "eventpoll_epi",
    "eventpoll_pwq",
    "skbuff_head_cache",
    "skbuff_fclone_cache",
];

/// Generic caches reported as "other slab" but not attributed: everything on
/// the machine allocates from them, so their delta is noisy.
pub const OTHER_SLAB_PREFIX: &str = "kmalloc-";

/// True for caches summed into "other slab" (kmalloc-*, kmalloc-cg-*, kmalloc-rcl-*).
pub fn is_other_slab(name: &str) -> bool {
    name.starts_with(OTHER_SLAB_PREFIX)
}

/// One cache line of slabinfo.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlabCache {
    pub active_objs: u64,
    pub num_objs: u64,
    pub objsize: u64,
    pub objperslab: u64,
    pub pagesperslab: u64,
}

impl SlabCache {
    /// Bytes in live objects: active_objs × objsize.
    pub fn active_bytes(&self) -> u64 {
        self.active_objs * self.objsize
    }

    /// Bytes of slab pages the cache holds: ⌈num_objs / objperslab⌉ × pagesperslab × page.
    pub fn slab_bytes(&self, page_size: u64) -> u64 {
        if self.objperslab == 0 {
            return 0;
        }
        self.num_objs.div_ceil(self.objperslab) * self.pagesperslab * page_size
    }
}

/// A snapshot of `/proc/slabinfo`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlabInfo {
    /// Page size used for slab-page figures (this machine's, at parse time).
    pub page_size: u64,
    pub caches: BTreeMap<String, SlabCache>,
    /// Slab merging: for each [`SOCKET_CACHES`] name that shares its slab
    /// with other caches, the other names. slabinfo lists a merged group
    /// under one name only, so that line mixes objects of all of them.
    /// Filled by [`SlabInfo::read`] from `/sys/kernel/slab` (SLUB); empty if
    /// unknown.
    #[serde(default)]
    pub merged: BTreeMap<String, Vec<String>>,
}

/// Change of one cache between two snapshots. A cache missing on one side
/// counts as zero objects there.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheDelta {
    pub name: String,
    pub objsize: u64,
    pub present_before: bool,
    pub present_after: bool,
    /// Δ active_objs.
    pub active_objs_delta: i64,
    /// Δ active_objs × objsize.
    pub bytes_delta: i64,
    /// Δ slab pages held, in bytes (alternative figure, includes free slots).
    pub slab_pages_bytes_delta: i64,
}

/// Per-cache deltas between two [`SlabInfo`] snapshots.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlabDelta {
    pub caches: BTreeMap<String, CacheDelta>,
}

impl SlabInfo {
    /// Reads `/proc/slabinfo` (mode 0400: needs root, else an `Io` error),
    /// plus the merge groups of the socket caches from `/sys/kernel/slab`.
    pub fn read() -> Result<SlabInfo> {
        let mut s = SlabInfo::read_from(Path::new("/proc/slabinfo"))?;
        s.merged = merge_groups(Path::new("/sys/kernel/slab"), SOCKET_CACHES);
        Ok(s)
    }

    pub fn read_from(path: &Path) -> Result<SlabInfo> {
        SlabInfo::parse(&read_text(path)?, path)
    }

    /// Parses slabinfo 2.x: `name active_objs num_objs objsize objperslab
    /// pagesperslab : tunables ... : slabdata ...`. Header and odd lines are
    /// skipped; another major version, or no cache at all, is an error.
    pub fn parse(text: &str, path: &Path) -> Result<SlabInfo> {
        let mut caches = BTreeMap::new();
        for (idx, line) in text.lines().enumerate() {
            if let Some(version) = line.strip_prefix("slabinfo - version:") {
                if !version.trim().starts_with("2.") {
                    return Err(MeasureError::parse(
                        path,
                        idx + 1,
                        format!("unsupported slabinfo version {}", version.trim()),
                    ));
                }
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let mut toks = line.split_whitespace();
            let Some(name) = toks.next() else { continue };
            let nums: Vec<u64> = toks.take(5).map_while(|t| t.parse().ok()).collect();
            let [active_objs, num_objs, objsize, objperslab, pagesperslab] = nums[..] else {
                log::debug!("{}:{}: skipping unparseable slabinfo line", path.display(), idx + 1);
                continue;
            };
            caches.insert(
                name.to_string(),
                SlabCache {
                    active_objs,
                    num_objs,
                    objsize,
                    objperslab,
                    pagesperslab,
                },
            );
        }
        if caches.is_empty() {
            return Err(MeasureError::parse(path, 0, "no slab cache lines"));
        }
        Ok(SlabInfo {
            page_size: page_size(),
            caches,
            merged: BTreeMap::new(),
        })
    }

    pub fn get(&self, name: &str) -> Option<&SlabCache> {
        self.caches.get(name)
    }

    /// Per-cache change from `before` to `after`, over the union of caches.
    pub fn delta(before: &SlabInfo, after: &SlabInfo) -> SlabDelta {
        let page = after.page_size.max(before.page_size).max(1);
        let mut caches = BTreeMap::new();
        for name in before.caches.keys().chain(after.caches.keys()) {
            if caches.contains_key(name) {
                continue;
            }
            let b = before.get(name);
            let a = after.get(name);
            let zero = SlabCache::default();
            let (bc, ac) = (b.unwrap_or(&zero), a.unwrap_or(&zero));
            let diff = |x: u64, y: u64| y as i64 - x as i64;
            caches.insert(
                name.clone(),
                CacheDelta {
                    name: name.clone(),
                    objsize: a.or(b).map_or(0, |c| c.objsize),
                    present_before: b.is_some(),
                    present_after: a.is_some(),
                    active_objs_delta: diff(bc.active_objs, ac.active_objs),
                    bytes_delta: diff(bc.active_bytes(), ac.active_bytes()),
                    slab_pages_bytes_delta: diff(bc.slab_bytes(page), ac.slab_bytes(page)),
                },
            );
        }
        SlabDelta { caches }
    }
}

/// For each of `names` that is merged with other caches, the other names.
///
/// Under SLUB, `/sys/kernel/slab/<name>` is a symlink to a shared `:xxx`
/// directory when the cache was merged; every name linking to the same
/// target shares one slab. Best effort: an unreadable directory (SLAB/SLOB,
/// no sysfs) yields an empty map, since this only feeds warnings.
pub fn merge_groups(sysfs_slab: &Path, names: &[&str]) -> BTreeMap<String, Vec<String>> {
    let mut by_target: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut target_of: BTreeMap<String, String> = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(sysfs_slab) else {
        return BTreeMap::new();
    };
    for entry in entries.flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue; // a directory: an unmerged cache (or a group itself)
        };
        let name = entry.file_name().to_string_lossy().into_owned();
        let target = target.to_string_lossy().into_owned();
        by_target.entry(target.clone()).or_default().push(name.clone());
        target_of.insert(name, target);
    }
    let mut out = BTreeMap::new();
    for &name in names {
        let Some(target) = target_of.get(name) else {
            continue;
        };
        let mut others: Vec<String> = by_target[target].iter().filter(|n| *n != name).cloned().collect();
        others.sort();
        if !others.is_empty() {
            out.insert(name.to_string(), others);
        }
    }
    out
}

impl SlabDelta {
    pub fn get(&self, name: &str) -> Option<&CacheDelta> {
        self.caches.get(name)
    }

    /// The [`SOCKET_CACHES`] that exist on this kernel, in list order.
    pub fn socket_caches(&self) -> Vec<&CacheDelta> {
        SOCKET_CACHES.iter().filter_map(|n| self.get(n)).collect()
    }

    /// The [`SOCKET_CACHES`] this kernel does not have (merged or renamed).
    pub fn absent_socket_caches(&self) -> Vec<&'static str> {
        SOCKET_CACHES
            .iter()
            .copied()
            .filter(|n| self.get(n).is_none())
            .collect()
    }

    /// Σ Δbytes of kmalloc-* caches (reported, not attributed).
    pub fn other_slab_bytes(&self) -> i64 {
        self.caches
            .values()
            .filter(|c| is_other_slab(&c.name))
            .map(|c| c.bytes_delta)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLABINFO: &str = "\
slabinfo - version: 2.1
# name            <active_objs> <num_objs> <objsize> <objperslab> <pagesperslab> : tunables <limit> <batchcount> <sharedfactor> : slabdata <active_slabs> <num_slabs> <sharedavail>
tw_sock_TCP           32     32    256   16    1 : tunables    0    0    0 : slabdata      2      2      0
request_sock_TCP      12     12    320   12    1 : tunables    0    0    0 : slabdata      1      1      0
TCP                   26     26   2368   13    8 : tunables    0    0    0 : slabdata      2      2      0
eventpoll_epi        256    256    128   32    1 : tunables    0    0    0 : slabdata      8      8      0
sock_inode_cache      76     76    832   19    4 : tunables    0    0    0 : slabdata      4      4      0
skbuff_head_cache    339    368    256   16    1 : tunables    0    0    0 : slabdata     23     23      0
filp                 525    525    192   21    1 : tunables    0    0    0 : slabdata     25     25      0
dentry             16107  16107    192   21    1 : tunables    0    0    0 : slabdata    767    767      0
kmalloc-cg-512       128    128    512   16    2 : tunables    0    0    0 : slabdata      8      8      0
kmalloc-64          4096   4096     64   64    1 : tunables    0    0    0 : slabdata     64     64      0
broken_line  12 x
";

    fn parse(text: &str) -> SlabInfo {
        let mut s = SlabInfo::parse(text, Path::new("/proc/slabinfo")).unwrap();
        s.page_size = 4096; // fixed so expected numbers do not depend on the host
        s
    }

    #[test]
    fn parses_slabinfo() {
        let s = parse(SLABINFO);
        assert_eq!(s.caches.len(), 10, "broken line skipped, header skipped");
        let tcp = s.get("TCP").unwrap();
        assert_eq!(
            *tcp,
            SlabCache {
                active_objs: 26,
                num_objs: 26,
                objsize: 2368,
                objperslab: 13,
                pagesperslab: 8
            }
        );
        assert_eq!(tcp.slab_bytes(4096), 2 * 8 * 4096);
        assert_eq!(s.get("skbuff_head_cache").unwrap().active_objs, 339);
        assert!(s.get("eventpoll_pwq").is_none());
    }

    #[test]
    fn rejects_bad_slabinfo() {
        let p = Path::new("/proc/slabinfo");
        assert!(SlabInfo::parse("slabinfo - version: 1.1\nTCP 1 1 1 1 1\n", p).is_err());
        assert!(SlabInfo::parse("slabinfo - version: 2.1\n# name\n", p).is_err());
    }

    #[test]
    fn delta_per_cache() {
        let before = parse(SLABINFO);
        let mut after = before.clone();
        let tcp = after.caches.get_mut("TCP").unwrap();
        tcp.active_objs += 2000;
        tcp.num_objs += 2002; // ⌈2028/13⌉ = 156 slabs
        after.caches.get_mut("kmalloc-64").unwrap().active_objs -= 96;
        after.caches.get_mut("kmalloc-cg-512").unwrap().active_objs += 10;
        after.caches.insert(
            "new_cache".into(),
            SlabCache {
                active_objs: 3,
                num_objs: 4,
                objsize: 100,
                objperslab: 4,
                pagesperslab: 1,
            },
        );
        let d = SlabInfo::delta(&before, &after);
        let t = d.get("TCP").unwrap();
        assert_eq!(t.active_objs_delta, 2000);
        assert_eq!(t.bytes_delta, 2000 * 2368);
        assert_eq!(t.slab_pages_bytes_delta, (156 - 2) * 8 * 4096);
        assert_eq!(d.other_slab_bytes(), 10 * 512 - 96 * 64);
        let n = d.get("new_cache").unwrap();
        assert!(!n.present_before && n.present_after);
        assert_eq!(n.bytes_delta, 300);
        assert_eq!(d.socket_caches().len(), 8);
        assert_eq!(d.absent_socket_caches(), vec!["eventpoll_pwq", "skbuff_fclone_cache"]);
    }

    #[test]
    fn finds_merge_groups() {
        let dir = std::env::temp_dir().join(format!("slabmerge-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("TCP")).unwrap();
        std::fs::create_dir_all(dir.join(":A-0000128")).unwrap();
        for n in ["eventpoll_epi", "tcp_bind_bucket", "tcp_bind2_bucket"] {
            std::os::unix::fs::symlink(":A-0000128", dir.join(n)).unwrap();
        }
        std::os::unix::fs::symlink(":A-0000064", dir.join("eventpoll_pwq")).unwrap();
        let m = merge_groups(&dir, SOCKET_CACHES);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(m.len(), 1, "{m:?}");
        assert_eq!(m["eventpoll_epi"], vec!["tcp_bind2_bucket", "tcp_bind_bucket"]);
        assert!(merge_groups(Path::new("/nonexistent"), SOCKET_CACHES).is_empty());
    }

    #[test]
    fn live_slabinfo() {
        let s = match SlabInfo::read() {
            Ok(s) => s,
            // Not root: the error must say which file, and we stop here.
            Err(e @ MeasureError::Io { .. }) if !host::is_root() => {
                assert!(e.to_string().contains("/proc/slabinfo"));
                return;
            }
            Err(e) => panic!("reading /proc/slabinfo as root failed: {e:?}"),
        };
        assert!(s.caches.len() > 20);
        if let Some(tcp) = s.get("TCP") {
            assert!((1000..5000).contains(&tcp.objsize), "TCP objsize {}", tcp.objsize);
        }
        assert!(s.caches.values().all(|c| c.active_objs <= c.num_objs));
        let d = SlabInfo::delta(&s, &s);
        assert!(d.caches.values().all(|c| c.bytes_delta == 0));
    }
}
