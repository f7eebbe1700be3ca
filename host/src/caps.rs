//! Linux capabilities of this process (the effective set, from /proc/self/status): what the xdp
//! stack needs is asked for by name, not uid 0.

/// A capability by number (linux/capability.h) and name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cap {
    pub bit: u32,
    pub name: &'static str,
}

pub const NET_ADMIN: Cap = Cap {
    bit: 12,
    name: "CAP_NET_ADMIN",
};
pub const NET_RAW: Cap = Cap {
    bit: 13,
    name: "CAP_NET_RAW",
};
pub const IPC_LOCK: Cap = Cap {
    bit: 14,
    name: "CAP_IPC_LOCK",
};
pub const SYS_ADMIN: Cap = Cap {
    bit: 21,
    name: "CAP_SYS_ADMIN",
};
pub const BPF: Cap = Cap {
    bit: 39,
    name: "CAP_BPF",
};
pub const PERFMON: Cap = Cap {
    bit: 38,
    name: "CAP_PERFMON",
};

/// The effective capability set, as a bit mask (0 if it cannot be read).
pub fn effective() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| parse_cap_eff(&s))
        .unwrap_or(0)
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
    u64::from_str_radix(hex, 16).ok()
}

/// Those of `wanted` not in the effective set `have`. CAP_SYS_ADMIN stands in for CAP_BPF and
/// CAP_PERFMON, as the kernel lets it (and older container runtimes know no other).
pub fn missing(have: u64, wanted: &[Cap]) -> Vec<Cap> {
    let holds =
        |c: &Cap| have & (1 << c.bit) != 0 || ((*c == BPF || *c == PERFMON) && have & (1 << SYS_ADMIN.bit) != 0);
    wanted.iter().copied().filter(|c| !holds(c)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_effective_set_is_read_and_compared_by_name() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t0000008000007000\n";
        let have = parse_cap_eff(status).unwrap();
        assert!(missing(have, &[NET_ADMIN, NET_RAW, IPC_LOCK, BPF]).is_empty());
        assert_eq!(missing(have, &[SYS_ADMIN, BPF]), vec![SYS_ADMIN]);
        assert_eq!(missing(0, &[BPF]), vec![BPF]);
        assert!(
            missing(1 << SYS_ADMIN.bit, &[BPF, PERFMON]).is_empty(),
            "SYS_ADMIN stands in"
        );
        assert_eq!(parse_cap_eff("CapEff: zz"), None);
    }
}
