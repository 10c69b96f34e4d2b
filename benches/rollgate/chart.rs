//! A small line chart, hand-written SVG (no plotting dependency): a few series over N, written to
//! `target/bench/NAME` (or `ROLLGATE_BENCH_CHARTS/NAME`).

use std::fmt::Write;
use std::path::PathBuf;

const W: f64 = 560.0;
const H: f64 = 300.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 36.0;
const BOTTOM: f64 = 78.0;
const COLOURS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

/// The SVG text: x on a log scale (N spans 20 to 1,000), y linear from 0.
pub fn svg(title: &str, x_label: &str, series: &[(&str, Vec<(f64, f64)>)]) -> String {
    let xs: Vec<f64> = series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.0))
        .collect();
    let (x0, x1) = (
        xs.iter().cloned().fold(f64::INFINITY, f64::min).max(1.0),
        xs.iter().cloned().fold(0.0, f64::max).max(2.0),
    );
    let (lx0, lx1) = (x0.ln(), x1.ln().max(x0.ln() + 1e-9));
    let y1 = series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.1))
        .fold(0.0, f64::max)
        .max(1e-9)
        * 1.15;
    let px = |x: f64| LEFT + (x.max(1.0).ln() - lx0) / (lx1 - lx0) * (W - LEFT - RIGHT);
    let py = |y: f64| TOP + (1.0 - y / y1) * (H - TOP - BOTTOM);
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="11">
<rect width="{W}" height="{H}" fill="white"/>
<text x="{cx}" y="18" text-anchor="middle" font-size="13">{title}</text>
<line x1="{LEFT}" y1="{yb}" x2="{xr}" y2="{yb}" stroke="black"/>
<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{yb}" stroke="black"/>
<text x="{cx}" y="{xl}" text-anchor="middle">{x_label}, log scale</text>
"##,
        cx = W / 2.0,
        yb = H - BOTTOM,
        xr = W - RIGHT,
        xl = H - BOTTOM + 30.0,
    );
    for i in 0..=4 {
        let y = y1 / 1.15 * i as f64 / 4.0;
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{p:.1}" x2="{xr}" y2="{p:.1}" stroke="#ddd"/><text x="{t}" y="{q:.1}" text-anchor="end">{y:.2}</text>"##,
            p = py(y),
            q = py(y) + 4.0,
            t = LEFT - 4.0,
            xr = W - RIGHT,
        );
    }
    let mut ticks: Vec<f64> = xs.clone();
    ticks.sort_by(f64::total_cmp);
    ticks.dedup();
    for x in ticks {
        let _ = writeln!(
            s,
            r##"<text x="{p:.1}" y="{y}" text-anchor="middle">{x}</text>"##,
            p = px(x),
            y = H - BOTTOM + 14.0,
        );
    }
    for (i, (name, points)) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let path: Vec<String> = points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        let _ = writeln!(
            s,
            r##"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"##,
            path.join(" ")
        );
        for (x, y) in points {
            let _ = writeln!(
                s,
                r##"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"/>"##,
                px(*x),
                py(*y)
            );
        }
        let ly = H - BOTTOM + 46.0 + 12.0 * (i / 2) as f64;
        let lx = LEFT + (i % 2) as f64 * 250.0;
        let _ = writeln!(
            s,
            r##"<rect x="{lx}" y="{r}" width="10" height="10" fill="{colour}"/><text x="{t}" y="{ly}">{name}</text>"##,
            r = ly - 9.0,
            t = lx + 14.0,
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Writes the chart and says where.
pub fn write(name: &str, title: &str, x_label: &str, series: &[(&str, Vec<(f64, f64)>)]) {
    let dir = std::env::var_os("ROLLGATE_BENCH_CHARTS").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench"),
        PathBuf::from,
    );
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(name);
    match std::fs::write(&path, svg(title, x_label, series)) {
        Ok(()) => println!("chart: {}", path.display()),
        Err(e) => eprintln!("chart {}: {e}", path.display()),
    }
}
