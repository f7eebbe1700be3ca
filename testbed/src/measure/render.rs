//! Text rendering of a [`MemReport`]: an aligned table with thousands separators.

use std::fmt::Write;

use super::report::{BreakdownRow, MemReport};

/// `1234567.8` → `"1,234,568"` (with `decimals` digits after the point).
fn group(v: f64, decimals: usize) -> String {
    let s = format!("{:.*}", decimals, v.abs());
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (s.as_str(), None),
    };
    let mut out = String::new();
    for (i, ch) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    if let Some(f) = frac {
        out.push('.');
        out.push_str(f);
    }
    // No "-0": only show the sign if something non-zero is printed.
    if v < 0.0 && out.chars().any(|c| c.is_ascii_digit() && c != '0') {
        out.insert(0, '-');
    }
    out
}

/// Bytes per connection: whole bytes when large, one decimal when small.
fn per_conn(v: f64) -> String {
    if v.abs() >= 100.0 {
        group(v, 0)
    } else {
        group(v, 1)
    }
}

/// A readable, aligned table of the report.
pub fn render_table(r: &MemReport) -> String {
    let other_row = BreakdownRow {
        name: "other slab: kmalloc-* (both sides)".into(),
        bytes_per_conn: r.other_slab_delta_per_conn,
        total_bytes: r.other_slab_delta_bytes as f64,
        objects_per_conn: None,
    };
    let all_rows = r.breakdown.iter().chain(&r.system_breakdown).chain([&other_row]);
    let w = all_rows.map(|row| row.name.chars().count()).max().unwrap_or(0).max(24);
    let line = |row: &BreakdownRow| {
        let objs = row.objects_per_conn.map_or(String::new(), |o| format!("{o:.2}"));
        format!(
            "  {:<w$}  {:>12}  {:>16}  {:>9}\n",
            row.name,
            per_conn(row.bytes_per_conn),
            group(row.total_bytes, 0),
            objs
        )
    };
    let rule = format!("  {}\n", "-".repeat(w + 2 + 12 + 2 + 16 + 2 + 9));

    let mut s = String::new();
    let _ = writeln!(
        s,
        "Memory per connection: N = {} connections, server share of kernel sockets = {:.3}",
        group(r.n as f64, 0),
        r.server_share
    );
    let _ = write!(
        s,
        "  {:<w$}  {:>12}  {:>16}  {:>9}\n{rule}",
        "component", "bytes/conn", "total bytes", "objs/conn"
    );
    for row in &r.breakdown {
        s.push_str(&line(row));
    }
    s.push_str(&rule);
    let all_in = BreakdownRow {
        name: "all-in".into(),
        bytes_per_conn: r.all_in_bytes_per_conn,
        total_bytes: r.all_in_bytes_per_conn * r.n as f64,
        objects_per_conn: None,
    };
    s.push_str(&line(&all_in));
    let _ = writeln!(
        s,
        "  (user {} + kernel slab {} + kernel socket buffers {}; slab pages held instead of objects: {}; server PSS: {})",
        per_conn(r.user_bytes_per_conn),
        per_conn(r.kernel_slab_bytes_per_conn),
        per_conn(r.kernel_sockbuf_bytes_per_conn),
        per_conn(r.kernel_slab_pages_bytes_per_conn),
        per_conn(r.user_pss_bytes_per_conn),
    );
    let _ = writeln!(
        s,
        "\nNot attributed (cross-check, whole machine, server and client together):"
    );
    for row in r.system_breakdown.iter().chain([&other_row]) {
        s.push_str(&line(row));
    }
    if !r.absent_caches.is_empty() {
        let _ = writeln!(
            s,
            "\nSocket caches not listed in /proc/slabinfo (merged or absent): {}",
            r.absent_caches.join(", ")
        );
    }
    let _ = writeln!(s, "\nMethod: {}", r.method);
    if !r.warnings.is_empty() {
        let _ = writeln!(s, "Warnings:");
        for warn in &r.warnings {
            let _ = writeln!(s, "  - {warn}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::report::bytes_per_conn;
    use crate::measure::report::tests::input;

    #[test]
    fn renders_aligned_table() {
        let mut i = input();
        i.n = 1_000_000;
        i.server_mem_after.rss = i.server_mem_before.rss + 1_234_567_000;
        let r = bytes_per_conn(&i);
        let t = render_table(&r);
        assert!(t.contains("N = 1,000,000"), "{t}");
        assert!(t.contains("1,235"), "{t}"); // 1,234.567 B/conn of RSS
        assert!(t.contains("1,234,567,000"), "{t}");
        assert!(t.contains("Method: "));
        assert!(t.contains("kernel slab: TCP"));
        // Every data row has the same width, so the numbers line up.
        let rows: Vec<&str> = t
            .lines()
            .filter(|l| {
                ["  user:", "  kernel", "  all-in", "  system:", "  other"]
                    .iter()
                    .any(|p| l.starts_with(p))
            })
            .collect();
        assert_eq!(rows.len(), r.breakdown.len() + 1 + r.system_breakdown.len() + 1, "{t}");
        let width = rows[0].chars().count();
        assert!(rows.iter().all(|l| l.chars().count() == width), "{t}");
        print!("{t}");
    }

    #[test]
    fn groups_thousands() {
        assert_eq!(group(0.0, 0), "0");
        assert_eq!(group(999.0, 0), "999");
        assert_eq!(group(1000.0, 0), "1,000");
        assert_eq!(group(1_234_567.89, 1), "1,234,567.9");
        assert_eq!(group(-12_345.0, 0), "-12,345");
        assert_eq!(group(-0.01, 0), "0");
        assert_eq!(per_conn(3.24), "3.2");
        assert_eq!(per_conn(2368.0), "2,368");
    }
}
