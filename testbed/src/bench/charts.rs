//! The report's charts, as SVG (plotters, pure Rust) and PNG (the SVG rendered by resvg): bytes
//! per connection against N for every server (log scales), the delivery-latency CDF of every
//! server at the largest N, and the connect rate against N. Text needs a font: DejaVu Sans
//! (Debian's fonts-dejavu-core, which install-deps.sh installs).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, Context};
use plotters::prelude::*;

use super::render::thousands;
use super::{BenchReport, StackResult};
use crate::load::hist;

const FONT_FILES: [&str; 2] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];
const SIZE: (u32, u32) = (960, 600);

/// Write every chart of `report` into `dir` (`<name>.svg` and `<name>.png`); returns the files.
pub fn write(report: &BenchReport, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    register_font()?;
    let charts: [(&str, String); 3] = [
        ("bytes-per-connection", bytes_per_connection(report)?),
        ("delivery-latency-cdf", latency_cdf(report)?),
        ("connect-rate", connect_rate(report)?),
    ];
    let mut files = Vec::new();
    for (name, svg) in charts {
        files.extend(save(dir, name, &svg)?);
    }
    Ok(files)
}

/// `<dir>/<name>.svg` and the same rendered as `<name>.png`; returns both paths.
pub fn save(dir: &Path, name: &str, svg: &str) -> anyhow::Result<[PathBuf; 2]> {
    let svg_path = dir.join(format!("{name}.svg"));
    std::fs::write(&svg_path, svg).with_context(|| format!("writing {}", svg_path.display()))?;
    let png_path = dir.join(format!("{name}.png"));
    png(svg, &png_path)?;
    Ok([svg_path, png_path])
}

/// plotters measures text with ab_glyph, from a font we give it once.
fn register_font() -> anyhow::Result<()> {
    static REGISTERED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let bytes = FONT_FILES
                .iter()
                .find_map(|f| std::fs::read(f).ok())
                .ok_or_else(|| format!("no DejaVu Sans font (install fonts-dejavu-core); looked at {FONT_FILES:?}"))?;
            plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(bytes.into_boxed_slice()))
                .map_err(|_| "the DejaVu Sans font did not load".to_string())
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

/// The servers of the report in their order, each with its results by N.
fn by_server(report: &BenchReport) -> Vec<(&str, Vec<&StackResult>)> {
    let mut out: Vec<(&str, Vec<&StackResult>)> = Vec::new();
    for r in &report.results {
        match out.iter_mut().find(|(name, _)| *name == r.stack) {
            Some((_, rs)) => rs.push(r),
            None => out.push((&r.stack, vec![r])),
        }
    }
    for (_, rs) in &mut out {
        rs.sort_by_key(|r| r.conns_target);
    }
    out
}

/// Each server its own colour in every chart, whichever ran at which N.
fn color(server: &str) -> RGBColor {
    match server {
        "kernel" => RGBColor(0x1f, 0x77, 0xb4),
        "xdp" => RGBColor(0xd6, 0x27, 0x28),
        "gorilla" => RGBColor(0x2c, 0xa0, 0x2c),
        "node-ws" => RGBColor(0xff, 0x7f, 0x0e),
        "tokio-tungstenite" => RGBColor(0x94, 0x67, 0xbd),
        _ => RGBColor(0x8c, 0x56, 0x4b),
    }
}

fn caption(report: &BenchReport, what: &str) -> String {
    format!("{what} ({} load generator, {})", report.client, report.generated_utc)
}

/// A line's name, its points and its colour.
pub type Series<'a> = (&'a str, Vec<(f64, f64)>, RGBColor);

/// One line per server over N, with its points marked.
fn per_n_chart(
    report: &BenchReport,
    title: &str,
    y_desc: &str,
    log_y: bool,
    value: impl Fn(&StackResult) -> f64,
) -> anyhow::Result<String> {
    let series: Vec<Series> = by_server(report)
        .into_iter()
        .map(|(name, rs)| {
            let points = rs.iter().map(|r| (r.conns_target as f64, value(r))).collect();
            (name, points, color(name))
        })
        .collect();
    over_n(&caption(report, title), y_desc, log_y, &series)
}

/// Lines over N (a log scale), points marked: the chart as SVG.
pub fn over_n(caption: &str, y_desc: &str, log_y: bool, series: &[Series]) -> anyhow::Result<String> {
    register_font()?;
    let values: Vec<f64> = series
        .iter()
        .flat_map(|(_, p, _)| p.iter().map(|(_, y)| *y))
        .filter(|v| *v > 0.0)
        .collect();
    let xs: Vec<f64> = series.iter().flat_map(|(_, p, _)| p.iter().map(|(x, _)| *x)).collect();
    // Padded on the log scale.
    let x_lo = xs.iter().copied().fold(f64::MAX, f64::min).min(1e12);
    let x_hi = xs.iter().copied().fold(1.0, f64::max);
    let x_range = (x_lo / 2.0).max(1.0)..x_hi * 2.0;
    let y_hi = values.iter().copied().fold(1.0, f64::max) * 1.5;
    let y_lo = values.iter().copied().fold(f64::MAX, f64::min).min(y_hi) / 1.5;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e:?}"))?;
        let mut builder = ChartBuilder::on(&root);
        builder
            .caption(caption, ("sans-serif", 20))
            .margin(18)
            .x_label_area_size(50)
            .y_label_area_size(80);
        macro_rules! lines {
            ($chart:expr) => {{
                let mut chart = $chart;
                chart
                    .configure_mesh()
                    .x_desc("concurrent connections (N)")
                    .y_desc(y_desc)
                    .x_label_formatter(&|x| thousands(*x))
                    .y_label_formatter(&|y| thousands(*y))
                    .draw()
                    .map_err(|e| anyhow!("{e:?}"))?;
                for (name, points, c) in series {
                    let c = *c;
                    chart
                        .draw_series(points.iter().map(|&p| Circle::new(p, 4, c.filled())))
                        .map_err(|e| anyhow!("{e:?}"))?
                        .label(*name)
                        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], c.stroke_width(3)));
                    // A line needs two points (one N: the points alone).
                    if points.len() > 1 {
                        chart
                            .draw_series(LineSeries::new(points.clone(), c.stroke_width(2)))
                            .map_err(|e| anyhow!("{e:?}"))?;
                    }
                }
                chart
                    .configure_series_labels()
                    .position(SeriesLabelPosition::UpperLeft)
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK)
                    .label_font(("sans-serif", 15))
                    .draw()
                    .map_err(|e| anyhow!("{e:?}"))?;
            }};
        }
        let x = x_range.log_scale();
        if log_y {
            lines!(builder
                .build_cartesian_2d(x, (y_lo..y_hi).log_scale())
                .map_err(|e| anyhow!("{e:?}"))?);
        } else {
            lines!(builder.build_cartesian_2d(x, 0.0..y_hi).map_err(|e| anyhow!("{e:?}"))?);
        }
        root.present().map_err(|e| anyhow!("{e:?}"))?;
    }
    Ok(svg)
}

fn bytes_per_connection(report: &BenchReport) -> anyhow::Result<String> {
    per_n_chart(
        report,
        "Bytes per connection, all-in (server RSS + its kernel memory)",
        "bytes per connection",
        true,
        |r| r.all_in_total_bytes_per_conn,
    )
}

fn connect_rate(report: &BenchReport) -> anyhow::Result<String> {
    per_n_chart(
        report,
        "Connect rate (the load generator offers --rate)",
        "connections established per second",
        false,
        |r| r.connect_rate_per_s,
    )
}

/// The share of deliveries (y, %) that arrived within a latency (x, ms, log scale): one curve
/// per server at the largest N, from its raw histogram.
fn latency_cdf(report: &BenchReport) -> anyhow::Result<String> {
    let n = report.results.iter().map(|r| r.conns_target).max().unwrap_or(0);
    let mut curves = Vec::new();
    for r in report.results.iter().filter(|r| r.conns_target == n) {
        let h = hist::decode(&r.histograms.push_latency_us).map_err(|e| anyhow!("{}: {e}", r.stack))?;
        if h.is_empty() {
            continue;
        }
        let points: Vec<(f64, f64)> = (0..=400)
            .map(|i| {
                let q = i as f64 / 400.0;
                ((h.value_at_quantile(q) as f64 / 1000.0).max(0.01), q * 100.0)
            })
            .collect();
        curves.push((r.stack.as_str(), points));
    }
    let x_hi = curves
        .iter()
        .flat_map(|(_, p)| p.iter().map(|&(x, _)| x))
        .fold(1.0, f64::max)
        * 1.5;
    let x_lo = curves
        .iter()
        .flat_map(|(_, p)| p.iter().map(|&(x, _)| x))
        .fold(f64::MAX, f64::min)
        .min(x_hi)
        / 1.5;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e:?}"))?;
        let title = format!("Broadcast delivery latency at N = {}", thousands(n as f64));
        let mut chart = ChartBuilder::on(&root)
            .caption(caption(report, &title), ("sans-serif", 20))
            .margin(18)
            .x_label_area_size(50)
            .y_label_area_size(70)
            .build_cartesian_2d((x_lo..x_hi).log_scale(), 0.0..100.0)
            .map_err(|e| anyhow!("{e:?}"))?;
        chart
            .configure_mesh()
            .x_desc("from the broadcast to its delivery at a client (ms)")
            .y_desc("deliveries within (%)")
            .draw()
            .map_err(|e| anyhow!("{e:?}"))?;
        for (name, points) in curves {
            let c = color(name);
            chart
                .draw_series(LineSeries::new(points, c.stroke_width(2)))
                .map_err(|e| anyhow!("{e:?}"))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], c.stroke_width(3)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 15))
            .draw()
            .map_err(|e| anyhow!("{e:?}"))?;
        root.present().map_err(|e| anyhow!("{e:?}"))?;
    }
    Ok(svg)
}

/// Render an SVG to a PNG with resvg (system fonts for its text).
fn png(svg: &str, path: &Path) -> anyhow::Result<()> {
    let mut options = resvg::usvg::Options::default();
    let fonts = Arc::make_mut(&mut options.fontdb);
    fonts.load_system_fonts();
    // plotters names the generic family; fontdb would look for Arial.
    fonts.set_sans_serif_family("DejaVu Sans");
    let tree = resvg::usvg::Tree::from_str(svg, &options).context("reading our own SVG")?;
    let size = tree.size().to_int_size();
    let mut pixmap =
        resvg::tiny_skia::Pixmap::new(size.width(), size.height()).context("a pixmap of the chart's size")?;
    pixmap.fill(resvg::tiny_skia::Color::WHITE);
    resvg::render(&tree, resvg::tiny_skia::Transform::default(), &mut pixmap.as_mut());
    pixmap
        .save_png(path)
        .map_err(|e| anyhow!("writing {}: {e}", path.display()))
}
