//! Per-process figures: memory from `smaps_rollup`, the process tree, CPU
//! times from `/proc/PID/stat`, and machine-wide CPU from `/proc/stat`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{parse_kb_line, read_text, MeasureError, Result};

/// Memory of a set of processes from `/proc/PID/smaps_rollup`, in bytes, summed.
///
/// `rss` is what the report uses. Summed RSS counts pages shared between the
/// server's processes once per process; they are constant over a run
/// (binary, libraries), so the *delta* is still right. `pss` is kept as a
/// cross-check for multi-process servers that share written memory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcMem {
    /// Pids whose smaps_rollup was read and summed.
    pub pids: Vec<u32>,
    /// Pids that disappeared before they could be read (not an error).
    pub vanished: Vec<u32>,
    pub rss: u64,
    pub pss: u64,
    pub shared_clean: u64,
    pub shared_dirty: u64,
    pub private_clean: u64,
    pub private_dirty: u64,
    pub anonymous: u64,
    /// Swapped-out memory: RSS under-counts if this grows during a run.
    pub swap: u64,
}

impl ProcMem {
    /// Parses one smaps_rollup text. Unknown or odd lines are skipped; an
    /// empty text (kernel thread) gives zeros, which is the truth for it.
    pub fn parse(text: &str) -> ProcMem {
        let mut m = ProcMem::default();
        for (key, bytes) in text.lines().filter_map(parse_kb_line) {
            let slot = match key {
                "Rss" => &mut m.rss,
                "Pss" => &mut m.pss,
                "Shared_Clean" => &mut m.shared_clean,
                "Shared_Dirty" => &mut m.shared_dirty,
                "Private_Clean" => &mut m.private_clean,
                "Private_Dirty" => &mut m.private_dirty,
                "Anonymous" => &mut m.anonymous,
                "Swap" => &mut m.swap,
                _ => continue,
            };
            *slot = bytes;
        }
        m
    }

    /// Reads `/proc/PID/smaps_rollup` of one process.
    pub fn read_pid(pid: u32) -> Result<ProcMem> {
        let text = read_text(&PathBuf::from(format!("/proc/{pid}/smaps_rollup")))?;
        let mut m = ProcMem::parse(&text);
        m.pids.push(pid);
        Ok(m)
    }

    /// Reads and sums several processes. A process that exits meanwhile is
    /// listed in `vanished`; any other failure (e.g. permission) is an error,
    /// because silently dropping a live process would under-report.
    pub fn read(pids: &[u32]) -> Result<ProcMem> {
        let mut sum = ProcMem::default();
        for &pid in pids {
            match ProcMem::read_pid(pid) {
                Ok(m) => sum.add(&m),
                Err(e) if e.is_vanished() => sum.vanished.push(pid),
                Err(e) => return Err(e),
            }
        }
        Ok(sum)
    }

    /// Adds another measurement (byte fields and pid lists).
    pub fn add(&mut self, o: &ProcMem) {
        self.pids.extend_from_slice(&o.pids);
        self.vanished.extend_from_slice(&o.vanished);
        self.rss += o.rss;
        self.pss += o.pss;
        self.shared_clean += o.shared_clean;
        self.shared_dirty += o.shared_dirty;
        self.private_clean += o.private_clean;
        self.private_dirty += o.private_dirty;
        self.anonymous += o.anonymous;
        self.swap += o.swap;
    }
}

/// `root_pid` plus all its descendants, parents before children.
///
/// Uses `/proc/PID/task/*/children` (children are listed under the thread
/// that forked them, so every thread is read). Processes that vanish
/// mid-walk are skipped. If the kernel lacks that file
/// (CONFIG_PROC_CHILDREN off), falls back to a ppid scan of `/proc/*/stat`.
/// Returns an empty list if `root_pid` does not exist.
pub fn process_tree(root_pid: u32) -> Vec<u32> {
    if !Path::new(&format!("/proc/{root_pid}")).exists() {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut queue = VecDeque::from([root_pid]);
    let mut fallback: Option<HashMap<u32, Vec<u32>>> = None;
    while let Some(pid) = queue.pop_front() {
        // Guards against cycles from pid reuse during the walk.
        if !seen.insert(pid) {
            continue;
        }
        out.push(pid);
        let kids = if let Some(map) = &fallback {
            map_children(map, pid)
        } else if let Some(kids) = children_of(pid) {
            kids
        } else {
            // Built once, then reused for the rest of the walk.
            let map = ppid_map();
            let kids = map_children(&map, pid);
            fallback = Some(map);
            kids
        };
        queue.extend(kids);
    }
    out
}

fn map_children(map: &HashMap<u32, Vec<u32>>, pid: u32) -> Vec<u32> {
    map.get(&pid).cloned().unwrap_or_default()
}

/// Children of `pid` from its tasks' `children` files; `None` if the kernel
/// does not provide them (file absent while the task still exists).
fn children_of(pid: u32) -> Option<Vec<u32>> {
    let task_dir = PathBuf::from(format!("/proc/{pid}/task"));
    let Ok(entries) = std::fs::read_dir(&task_dir) else {
        return Some(Vec::new()); // process gone: no children to follow
    };
    let mut kids = Vec::new();
    for entry in entries.flatten() {
        let task = entry.path();
        match std::fs::read_to_string(task.join("children")) {
            Ok(text) => kids.extend(text.split_whitespace().filter_map(|s| s.parse::<u32>().ok())),
            // Thread exited between readdir and open: fine. Task still there
            // but no file: the kernel does not support it.
            Err(_) if task.exists() && !task.join("children").exists() => return None,
            Err(_) => {}
        }
    }
    Some(kids)
}

/// ppid → children for every process, from `/proc/*/stat` (fallback path).
fn ppid_map() -> HashMap<u32, Vec<u32>> {
    let mut map: HashMap<u32, Vec<u32>> = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return map;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Field 4 (ppid) is the 2nd field after the closing paren of comm.
        if let Some(ppid) = stat_fields(&text).and_then(|f| f.get(1)?.parse::<u32>().ok()) {
            map.entry(ppid).or_default().push(pid);
        }
    }
    map
}

/// Fields of `/proc/PID/stat` after `comm`, i.e. starting at field 3 (state).
/// comm may contain spaces and parentheses, so split after the *last* ')'.
fn stat_fields(text: &str) -> Option<Vec<&str>> {
    let (_, rest) = text.rsplit_once(')')?;
    Some(rest.split_whitespace().collect())
}

/// Clock ticks per second for `/proc` CPU counters (USER_HZ, normally 100).
pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let v = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if v > 0 {
        v as u64
    } else {
        100
    }
}

/// CPU time consumed, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuTimes {
    pub user_secs: f64,
    pub system_secs: f64,
}

impl CpuTimes {
    pub fn total_secs(&self) -> f64 {
        self.user_secs + self.system_secs
    }

    /// `later - self`, floored at 0 (a pid set can shrink between snapshots).
    pub fn delta(&self, later: &CpuTimes) -> CpuTimes {
        CpuTimes {
            user_secs: (later.user_secs - self.user_secs).max(0.0),
            system_secs: (later.system_secs - self.system_secs).max(0.0),
        }
    }
}

/// `(utime, stime)` in clock ticks from a `/proc/PID/stat` text (fields 14, 15).
pub fn parse_stat_ticks(text: &str, path: &Path) -> Result<(u64, u64)> {
    let fields = stat_fields(text).ok_or_else(|| MeasureError::parse(path, 1, "no ')' after comm"))?;
    // Field N is at index N - 3 once comm (field 2) and pid (field 1) are cut.
    let get = |n: usize, name: &str| -> Result<u64> {
        fields
            .get(n - 3)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| MeasureError::parse(path, 1, format!("field {n} ({name}) missing or not a number")))
    };
    Ok((get(14, "utime")?, get(15, "stime")?))
}

/// User and system CPU seconds of one process (its threads included).
pub fn cpu_seconds(pid: u32) -> Result<CpuTimes> {
    let path = PathBuf::from(format!("/proc/{pid}/stat"));
    let (utime, stime) = parse_stat_ticks(&read_text(&path)?, &path)?;
    let hz = clock_ticks() as f64;
    Ok(CpuTimes {
        user_secs: utime as f64 / hz,
        system_secs: stime as f64 / hz,
    })
}

/// Sum of [`cpu_seconds`] over `pids`; processes that vanished are skipped.
pub fn cpu_seconds_sum(pids: &[u32]) -> Result<CpuTimes> {
    let mut sum = CpuTimes::default();
    for &pid in pids {
        match cpu_seconds(pid) {
            Ok(t) => {
                sum.user_secs += t.user_secs;
                sum.system_secs += t.system_secs;
            }
            Err(e) if e.is_vanished() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(sum)
}

/// Machine-wide CPU counters: the first (`cpu `) line of `/proc/stat`, in ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemCpu {
    pub user: u64,
    pub nice: u64,
    pub system: u64,
    pub idle: u64,
    pub iowait: u64,
    pub irq: u64,
    pub softirq: u64,
    pub steal: u64,
    /// Ticks per second the counters are in (USER_HZ).
    pub ticks_per_sec: u64,
}

/// Difference of two [`SystemCpu`] readings, in CPU-seconds (summed over cores).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct SystemCpuDelta {
    /// user + nice + system + irq + softirq (guest time is inside user).
    pub busy_secs: f64,
    /// softirq alone: network receive processing lands here.
    pub softirq_secs: f64,
    /// idle + iowait.
    pub idle_secs: f64,
    /// Taken by the hypervisor: neither busy nor idle for us.
    pub steal_secs: f64,
    /// busy + idle + steal.
    pub total_secs: f64,
}

impl SystemCpu {
    pub fn read() -> Result<SystemCpu> {
        let path = Path::new("/proc/stat");
        SystemCpu::parse(&read_text(path)?, path)
    }

    /// Parses the aggregate `cpu ` line. Old kernels have fewer columns:
    /// missing trailing ones count as 0, but the first four are required.
    pub fn parse(text: &str, path: &Path) -> Result<SystemCpu> {
        let (idx, line) = text
            .lines()
            .enumerate()
            .find(|(_, l)| l.starts_with("cpu "))
            .ok_or_else(|| MeasureError::parse(path, 0, "no aggregate 'cpu ' line"))?;
        let v: Vec<u64> = line.split_whitespace().skip(1).map_while(|s| s.parse().ok()).collect();
        if v.len() < 4 {
            return Err(MeasureError::parse(path, idx + 1, "fewer than 4 cpu counters"));
        }
        let at = |i: usize| v.get(i).copied().unwrap_or(0);
        Ok(SystemCpu {
            user: at(0),
            nice: at(1),
            system: at(2),
            idle: at(3),
            iowait: at(4),
            irq: at(5),
            softirq: at(6),
            steal: at(7),
            ticks_per_sec: clock_ticks(),
        })
    }

    /// `later - self` in seconds. Saturating: iowait is known to go backwards.
    pub fn delta(&self, later: &SystemCpu) -> SystemCpuDelta {
        let hz = self.ticks_per_sec.max(1) as f64;
        let d = |a: u64, b: u64| b.saturating_sub(a) as f64 / hz;
        let busy = d(self.user, later.user)
            + d(self.nice, later.nice)
            + d(self.system, later.system)
            + d(self.irq, later.irq)
            + d(self.softirq, later.softirq);
        let idle = d(self.idle, later.idle) + d(self.iowait, later.iowait);
        let steal = d(self.steal, later.steal);
        SystemCpuDelta {
            busy_secs: busy,
            softirq_secs: d(self.softirq, later.softirq),
            idle_secs: idle,
            steal_secs: steal,
            total_secs: busy + idle + steal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS_ROLLUP: &str = "\
55d1049ca000-7ffea978a000 ---p 00000000 00:00 0                          [rollup]
Rss:              123456 kB
Pss:              120000 kB
Pss_Dirty:        110000 kB
Shared_Clean:       3000 kB
Shared_Dirty:        456 kB
Private_Clean:       100 kB
Private_Dirty:    119900 kB
Referenced:       123456 kB
Anonymous:        119800 kB
Swap:                  0 kB
weird line without colon
Locked:                0 kB
";

    #[test]
    fn parses_smaps_rollup() {
        let m = ProcMem::parse(SMAPS_ROLLUP);
        assert_eq!(m.rss, 123_456 * 1024);
        assert_eq!(m.pss, 120_000 * 1024);
        assert_eq!(m.shared_clean, 3000 * 1024);
        assert_eq!(m.shared_dirty, 456 * 1024);
        assert_eq!(m.private_clean, 100 * 1024);
        assert_eq!(m.private_dirty, 119_900 * 1024);
        assert_eq!(m.anonymous, 119_800 * 1024);
        assert_eq!(m.swap, 0);
        // Kernel threads have an empty rollup: zeros, not an error.
        assert_eq!(ProcMem::parse(""), ProcMem::default());
    }

    #[test]
    fn sums_proc_mem() {
        let mut a = ProcMem::parse(SMAPS_ROLLUP);
        a.pids.push(1);
        let mut b = a.clone();
        b.pids = vec![2];
        a.add(&b);
        assert_eq!(a.rss, 2 * 123_456 * 1024);
        assert_eq!(a.pids, vec![1, 2]);
    }

    #[test]
    fn parses_stat_with_odd_comm() {
        // comm "(ws (x) srv)" contains spaces and parentheses.
        let stat = "4715 ((ws (x) srv)) S 4711 4711 4069 0 -1 4194304 99 0 0 0 \
                    1234 567 8 9 20 0 3 0 39496 3133440 407 18446744073709551615";
        let p = Path::new("/proc/4715/stat");
        assert_eq!(parse_stat_ticks(stat, p).unwrap(), (1234, 567));
        let stat2 = "7 (ws (x) srv) R 1 1 1 0 -1 0 0 0 0 0 50 25 0 0 20 0 1 0 1 1 1";
        assert_eq!(parse_stat_ticks(stat2, p).unwrap(), (50, 25));
        assert!(parse_stat_ticks("7 (short) R 1 2", p).is_err());
        assert!(parse_stat_ticks("garbage", p).is_err());
        assert_eq!(stat_fields(stat2).unwrap()[1], "1"); // ppid
    }

    #[test]
    fn parses_proc_stat_and_delta() {
        let p = Path::new("/proc/stat");
        let a = SystemCpu::parse(
            "cpu  3988 0 1672 72831 195 0 11 11 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\nintr 1 2\n",
            p,
        )
        .unwrap();
        assert_eq!(
            (a.user, a.system, a.idle, a.iowait, a.softirq, a.steal),
            (3988, 1672, 72831, 195, 11, 11)
        );
        let mut b = a;
        b.user += 2 * a.ticks_per_sec;
        b.softirq += a.ticks_per_sec;
        b.idle += 3 * a.ticks_per_sec;
        b.iowait = a.iowait - 5; // iowait may go backwards: saturate
        let d = a.delta(&b);
        assert!((d.busy_secs - 3.0).abs() < 1e-9);
        assert!((d.softirq_secs - 1.0).abs() < 1e-9);
        assert!((d.idle_secs - 3.0).abs() < 1e-9);
        assert!((d.total_secs - 6.0).abs() < 1e-9);
        assert!(SystemCpu::parse("intr 1 2\n", p).is_err());
        assert!(SystemCpu::parse("cpu  1 2\n", p).is_err());
    }

    #[test]
    fn live_self() {
        let me = std::process::id();
        let m = ProcMem::read(&[me]).unwrap();
        assert!(m.rss > 0 && m.rss < 64 << 30, "implausible RSS {}", m.rss);
        assert!(m.pss > 0 && m.pss <= m.rss);
        let t = cpu_seconds(me).unwrap();
        assert!(t.total_secs() >= 0.0 && t.total_secs() < 1e6);
        let s = SystemCpu::read().unwrap();
        assert!(s.idle > 0);
        // A pid that does not exist is "vanished", not an error.
        let gone = ProcMem::read(&[me, u32::MAX - 1]).unwrap();
        assert_eq!(gone.vanished, vec![u32::MAX - 1]);
        assert!(cpu_seconds_sum(&[me, u32::MAX - 1]).is_ok());
        assert!(process_tree(u32::MAX - 1).is_empty());
    }

    #[test]
    fn live_process_tree_finds_child() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let me = std::process::id();
        let tree = process_tree(me);
        let via_ppid = map_children(&ppid_map(), me);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(tree[0], me);
        assert!(tree.contains(&child.id()), "child {} not in {tree:?}", child.id());
        // The fallback path (ppid scan) sees the same child.
        assert!(via_ppid.contains(&child.id()), "ppid scan missed child: {via_ppid:?}");
    }
}
