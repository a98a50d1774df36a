//! The latency-over-time plot: one dot per operation (its latency against when it was
//! invoked, colored by kind, hollow when it did not succeed) over the fault timeline.

use std::fmt::Write;

use crate::history::{FaultSpan, Op, Outcome};

const W: f64 = 1200.0;
const H: f64 = 500.0;
const LEFT: f64 = 60.0;
const TOP: f64 = 30.0;
const PLOT_H: f64 = 380.0;
const PLOT_W: f64 = W - LEFT - 20.0;
/// Latencies are drawn on a log scale from 0.1 ms to 10 s.
const LOG_MIN: f64 = -1.0;
const LOG_MAX: f64 = 4.0;

const KINDS: [(&str, &str); 7] = [
    ("acquire", "#1f77b4"),
    ("release", "#17becf"),
    ("set", "#2ca02c"),
    ("get", "#98df8a"),
    ("observe", "#9467bd"),
    ("enter", "#8c564b"),
    ("exit", "#c49c94"),
];

/// An SVG document of `ops` over `faults`; at most `max_points` dots (evenly thinned).
#[must_use]
pub fn plot(title: &str, ops: &[Op], faults: &[FaultSpan], max_points: usize) -> String {
    let end = ops
        .iter()
        .map(|o| o.complete_ns)
        .chain(faults.iter().map(|f| f.end_ns))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let x = |ns: u64| LEFT + PLOT_W * (ns as f64 / end);
    let y = |ms: f64| {
        let l = ms.max(0.1).log10().clamp(LOG_MIN, LOG_MAX);
        TOP + PLOT_H * (1.0 - (l - LOG_MIN) / (LOG_MAX - LOG_MIN))
    };
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">
<rect width="{W}" height="{H}" fill="white"/>
<text x="{LEFT}" y="18" font-size="14">{}</text>
"#,
        escape(title)
    );
    for (i, f) in faults.iter().enumerate() {
        let (x0, x1) = (x(f.start_ns), x(f.end_ns));
        let _ = writeln!(
            svg,
            r##"<rect x="{x0:.1}" y="{TOP}" width="{:.1}" height="{PLOT_H}" fill="{}" fill-opacity="0.15"><title>{}</title></rect><text x="{x0:.1}" y="{:.1}" font-size="9" fill="#b00">{}</text>"##,
            (x1 - x0).max(1.0),
            match f.kind.as_str() {
                "partition" => "#d62728",
                "pause" => "#ff7f0e",
                "redis" => "#7f7f7f",
                "token" => "#bcbd22",
                _ => "#e377c2",
            },
            escape(&f.what),
            TOP + PLOT_H + 12.0 + 10.0 * (i % 4) as f64,
            escape(&f.what)
        );
    }
    for ms in [0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0] {
        let yy = y(ms);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" x2="{:.1}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="4" y="{:.1}">{ms} ms</text>"##,
            LEFT + PLOT_W,
            yy + 4.0
        );
    }
    let step = ops.len().div_ceil(max_points.max(1)).max(1);
    for o in ops.iter().step_by(step) {
        let color = KINDS
            .iter()
            .find(|(k, _)| *k == o.op)
            .map_or("#000", |(_, c)| c);
        let ms = o.complete_ns.saturating_sub(o.invoke_ns) as f64 / 1e6;
        let fill = if o.outcome == Outcome::Ok {
            color
        } else {
            "none"
        };
        let _ = writeln!(
            svg,
            r##"<circle cx="{:.1}" cy="{:.1}" r="2" fill="{fill}" stroke="{color}"/>"##,
            x(o.invoke_ns),
            y(ms)
        );
    }
    for (i, (k, c)) in KINDS.iter().enumerate() {
        let lx = LEFT + 90.0 * i as f64;
        let _ = writeln!(
            svg,
            r##"<circle cx="{lx:.1}" cy="{:.1}" r="4" fill="{c}"/><text x="{:.1}" y="{:.1}">{k}</text>"##,
            H - 12.0,
            lx + 8.0,
            H - 8.0
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}">run time: {:.1} s; hollow: failed or indeterminate</text></svg>"#,
        LEFT + 650.0,
        H - 8.0,
        end / 1e9
    );
    svg
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
