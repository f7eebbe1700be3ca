//! The side-by-side table: one column per stack, then each stack's memory breakdown.

use std::fmt::Write as _;

use ws_server::admin::Report;

use super::{BenchReport, StackResult};
use crate::measure;

/// Where an xdp server's resident memory goes, per connection, from its `/stats` (each stack
/// structure by its resident pages, the UMEM, the core's tables) and the rest of its RSS.
pub(super) fn xdp_breakdown(stats: &Report, rss: u64, held: u64) -> Vec<(String, f64)> {
    use ws_server::control::WorkerStats;
    use ws_server::io::userspace::XdpWorkerStats;
    let per = |v: f64| v / held.max(1) as f64;
    let sum_of = |f: &dyn Fn(&WorkerStats, &XdpWorkerStats) -> u64| -> f64 {
        let total: u64 = stats
            .per_worker
            .iter()
            .filter_map(|w| w.xdp.as_deref().map(|x| f(w, x)))
            .sum();
        total as f64
    };
    let parts: [(&str, f64); 9] = [
        ("smoltcp sockets", sum_of(&|_, x| x.resident.socket_bytes as u64)),
        ("rx + tx buffers (arena)", sum_of(&|_, x| x.resident.arena_bytes as u64)),
        ("4-tuple table", sum_of(&|_, x| x.resident.table_bytes as u64)),
        (
            "slots (tuple, flags, user)",
            sum_of(&|_, x| x.resident.slot_bytes as u64),
        ),
        ("free list", sum_of(&|_, x| x.resident.free_list_bytes as u64)),
        (
            "stack timer wheel and queues",
            sum_of(&|_, x| (x.resident.wheel_bytes + x.resident.queue_bytes) as u64),
        ),
        ("AF_XDP UMEM", sum_of(&|_, x| x.umem_bytes)),
        (
            "server core (32 B state, devices, timers)",
            sum_of(&|w, _| w.core_heap_bytes),
        ),
        ("message log (shared by all)", sum_of(&|w, _| w.log_bytes)),
    ];
    let sum: f64 = parts.iter().map(|(_, v)| v).sum();
    let mut rows: Vec<(String, f64)> = parts.iter().map(|(name, v)| (name.to_string(), per(*v))).collect();
    rows.push((
        "rest of the processes' RSS (code, libraries, pools, supervisor)".into(),
        per((rss as f64 - sum).max(0.0)),
    ));
    rows
}

/// Where the xdp load generator's bytes go, per connection: its stack's structures at their
/// largest, the UMEM, and the rest of its largest RSS (code, the latency histograms, the
/// connections' protocol state).
pub(super) fn load_breakdown(x: &crate::load::XdpClientCounters, max_rss: u64, held: u64) -> Vec<(String, f64)> {
    let per = |v: u64| v as f64 / held.max(1) as f64;
    let m = &x.memory_peak;
    let parts = [
        ("smoltcp sockets", m.socket_bytes as u64),
        ("rx + tx buffers (arena)", m.arena_bytes as u64),
        ("4-tuple table", m.table_bytes as u64),
        ("slots (tuple, flags, user)", m.slot_bytes as u64),
        ("stack timer wheel and queues", (m.wheel_bytes + m.queue_bytes) as u64),
        ("AF_XDP UMEM", x.umem_bytes),
    ];
    let sum: u64 = parts.iter().map(|(_, v)| v).sum();
    let mut rows: Vec<(String, f64)> = parts.iter().map(|(n, v)| (n.to_string(), per(*v))).collect();
    rows.push((
        "rest of its largest RSS (protocol state, histograms, code)".into(),
        per(max_rss.saturating_sub(sum)),
    ));
    rows.push(("largest RSS".into(), per(max_rss)));
    rows
}

pub(super) fn thousands(v: f64) -> String {
    let n = v.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// The side-by-side tables: for each N, one column per server; then the breakdowns.
pub fn render(r: &BenchReport) -> String {
    let mut out = String::new();
    for &n in &r.conns {
        let cols: Vec<&StackResult> = r.results.iter().filter(|c| c.conns_target == n).collect();
        table(&mut out, r, n, &cols);
        tls_proxy_cost(&mut out, &cols);
    }
    breakdowns(&mut out, r);
    for s in &r.skipped {
        let _ = writeln!(out, "\nskipped: {s}");
    }
    out
}

/// With `kernel` and `kernel-tls` in one table: what the TLS proxy adds per connection.
fn tls_proxy_cost(out: &mut String, cols: &[&StackResult]) {
    let of = |name: &str| cols.iter().find(|c| c.stack == name);
    let (Some(plain), Some(tls)) = (of("kernel"), of("kernel-tls")) else {
        return;
    };
    let _ = writeln!(
        out,
        "\nTLS proxy (haproxy, TLS 1.3, ECDSA P-256) per connection: {} B all-in = kernel-tls {} - kernel {} (resident in processes: {} B of it)",
        thousands(tls.all_in_total_bytes_per_conn - plain.all_in_total_bytes_per_conn),
        thousands(tls.all_in_total_bytes_per_conn),
        thousands(plain.all_in_total_bytes_per_conn),
        thousands(tls.memory.user_bytes_per_conn - plain.memory.user_bytes_per_conn),
    );
}

/// One N's table.
fn table(out: &mut String, r: &BenchReport, n: u64, cols: &[&StackResult]) {
    let m = &r.machine;
    let _ = writeln!(
        out,
        "\nws-bench: N = {} connections from the {} load generator, {}; machine: {} CPUs, {:.1} GiB, Linux {}, open-file hard limit {}\n",
        thousands(n as f64),
        r.client,
        if r.device_tokens {
            "each a device with its token (HS256, checked in the handshake by ours; peers take any)"
        } else {
            "anonymous (no ids, no tokens)"
        },
        m.cpus,
        m.mem_total_bytes as f64 / (1u64 << 30) as f64,
        m.kernel,
        m.fd_hard_limit
    );
    let mut row = |label: &str, f: &dyn Fn(&StackResult) -> String| {
        let _ = write!(out, "  {label:<34}");
        for c in cols {
            let _ = write!(out, "{:>26}", f(c));
        }
        out.push('\n');
    };
    row("stack", &|c| c.stack.clone());
    row("connections held / target", &|c| {
        format!("{} / {}", thousands(c.held as f64), thousands(c.conns_target as f64))
    });
    row("connect failures", &|c| thousands(c.failed as f64));
    row("connect rate (established/s)", &|c| thousands(c.connect_rate_per_s));
    row("server processes", &|c| c.server_workers.to_string());
    row("broadcast hand-off to all, median (ms)", &|c| {
        format!("{:.1}", c.fanout_ms_median)
    });
    row("broadcast written to all, median (ms)", &|c| {
        let mut v: Vec<f64> = c.broadcasts.iter().filter_map(|b| b.written_ms).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).map_or("-".into(), |m| format!("{m:.0}"))
    });
    row("  xdp: last frame on the link (ms)", &|c| {
        let mut v: Vec<f64> = c.broadcasts.iter().filter_map(|b| b.handed_to_link_ms).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).map_or("-".into(), |m| format!("{m:.1}"))
    });
    if let Some(link) = r.link_frames_per_s {
        row("  xdp: pushes/s to the link vs the raw path", &|c| {
            let mut v: Vec<f64> = c.broadcasts.iter().filter_map(|b| b.handed_to_link_ms).collect();
            v.sort_by(f64::total_cmp);
            match v.get(v.len() / 2) {
                Some(&ms) if ms > 0.0 => {
                    let pps = c.held as f64 / (ms / 1000.0);
                    format!("{} = {:.0}% of {}", thousands(pps), 100.0 * pps / link, thousands(link))
                }
                _ => "-".into(),
            }
        });
    }
    row("deliveries / expected", &|c| {
        format!(
            "{} / {}",
            thousands(c.deliveries as f64),
            thousands(c.deliveries_expected as f64)
        )
    });
    row("message size (push payload bytes)", &|c| {
        c.broadcasts
            .first()
            .map_or("-".into(), |b| thousands(b.payload_bytes as f64))
    });
    row("corrupt messages / bytes checked", &|c| {
        format!(
            "{} / {}",
            thousands(c.corrupt as f64),
            thousands(c.checked_bytes as f64)
        )
    });
    row("closed as slow readers", &|c| thousands(c.slow_readers_closed as f64));
    if cols.iter().any(|c| c.load_dropped_frames.is_some()) {
        row(
            "load generator frames dropped rx/tx",
            &|c| match c.load_dropped_frames {
                Some((rx, tx)) => format!("{} / {}", thousands(rx as f64), thousands(tx as f64)),
                None => "-".into(),
            },
        );
    }
    if cols.iter().any(|c| c.data_rounds.is_some()) {
        let d =
            |c: &StackResult, f: &dyn Fn(&super::DataRounds) -> String| c.data_rounds.as_ref().map_or("-".into(), f);
        row("data rounds: payload / interval", &|c| {
            d(c, &|r| format!("{} B / {:.0} ms", r.payload_bytes, r.interval_ms))
        });
        row("  echoes / sent (missing)", &|c| {
            d(c, &|r| {
                format!(
                    "{} / {} ({})",
                    thousands(r.echoed as f64),
                    thousands(r.sent as f64),
                    thousands(r.missing as f64)
                )
            })
        });
        row("  echoes/s (whole run)", &|c| d(c, &|r| thousands(r.echoes_per_s)));
        row("  echo RTT p50 / p99 (ms)", &|c| {
            d(c, &|r| format!("{:.1} / {:.1}", r.echo_rtt.p50_ms, r.echo_rtt.p99_ms))
        });
    }
    row("delivery latency p50 (ms)", &|c| {
        format!("{:.1}", c.push_latency.p50_ms)
    });
    row("delivery latency p99 (ms)", &|c| {
        format!("{:.1}", c.push_latency.p99_ms)
    });
    row("delivery latency max (ms)", &|c| {
        format!("{:.1}", c.push_latency.max_ms)
    });
    row("CPU s: server user+sys", &|c| {
        format!("{:.2}+{:.2}", c.cpu.server_user_s, c.cpu.server_sys_s)
    });
    row("CPU s: load generator user+sys", &|c| {
        format!("{:.2}+{:.2}", c.cpu.load_user_s, c.cpu.load_sys_s)
    });
    row("CPU s: whole machine busy (softirq)", &|c| {
        format!("{:.2} ({:.2})", c.cpu.system_busy_s, c.cpu.system_softirq_s)
    });
    row("bytes/conn ALL-IN (server RSS + kernel)", &|c| {
        thousands(c.all_in_total_bytes_per_conn)
    });
    row("  same with PSS (shared pages once)", &|c| {
        thousands(c.all_in_pss_bytes_per_conn)
    });
    // Each server's cost in units of ours on the userspace stack, when that ran too.
    let ours = cols
        .iter()
        .find(|c| c.stack == "xdp")
        .map(|c| c.all_in_total_bytes_per_conn);
    if let Some(ours) = ours.filter(|&o| o > 0.0) {
        row("  ÷ ours on xdp", &|c| {
            format!("{:.1}×", c.all_in_total_bytes_per_conn / ours)
        });
    }
    row("  server RSS total / N", &|c| thousands(c.server_rss_total_per_conn));
    row("  same, after the broadcasts", &|c| {
        thousands(c.server_rss_after_broadcasts_per_conn)
    });
    row("bytes/conn Δ (from the idle server)", &|c| {
        thousands(c.memory.all_in_bytes_per_conn)
    });
    row("  user space (server RSS Δ / N)", &|c| {
        thousands(c.memory.user_bytes_per_conn)
    });
    row("  kernel slab (server share)", &|c| {
        thousands(c.memory.kernel_slab_bytes_per_conn)
    });
    row("  kernel socket buffers", &|c| {
        thousands(c.memory.kernel_sockbuf_bytes_per_conn)
    });
    row("wall time (s)", &|c| format!("{:.1}", c.cpu.wall_s));
}

/// Below the table: each stack's memory breakdown and notes.
fn breakdowns(out: &mut String, r: &BenchReport) {
    for c in &r.results {
        let _ = writeln!(
            out,
            "\n--- {} at N = {}: memory breakdown ---\n{}",
            c.stack,
            thousands(c.conns_target as f64),
            measure::render_table(&c.memory)
        );
        if let Some(rows) = &c.xdp_breakdown {
            let _ = writeln!(out, "  where the xdp server's resident bytes go (per connection):");
            for (name, v) in rows {
                let _ = writeln!(out, "    {name:<62}{v:>10.1}");
            }
        }
        if let Some(rows) = &c.load_breakdown {
            let _ = writeln!(
                out,
                "  where the xdp load generator's bytes go (per connection, its stack at its largest):"
            );
            for (name, v) in rows {
                let _ = writeln!(out, "    {name:<62}{v:>10.1}");
            }
        }
        for n in &c.notes {
            let _ = writeln!(out, "  note: {n}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::thousands;

    #[test]
    fn the_load_generators_rows_add_up_to_its_largest_rss() {
        let x = crate::load::XdpClientCounters {
            link: Default::default(),
            stack: Default::default(),
            memory_peak: stack::MemoryReport {
                socket_bytes: 384_000,
                arena_bytes: 10_000,
                table_bytes: 8_000,
                slot_bytes: 40_000,
                ..Default::default()
            },
            umem_bytes: 100_000,
        };
        let rows = super::load_breakdown(&x, 1_000_000, 1000);
        let get = |n: &str| rows.iter().find(|(k, _)| k.starts_with(n)).unwrap().1;
        assert_eq!(get("smoltcp sockets"), 384.0);
        assert_eq!(get("rest of its largest RSS"), 458.0);
        let parts: f64 = rows[..rows.len() - 1].iter().map(|(_, v)| v).sum();
        assert_eq!(parts, get("largest RSS"));
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1234567.0), "1,234,567");
        assert_eq!(thousands(-1000.0), "-1,000");
    }
}
