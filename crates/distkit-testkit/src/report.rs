//! Benchmark reports: a flat JSON object of figures and a Markdown table, written where the
//! project keeps them (`target/bench/<name>.json`, `docs/benchmarks/<name>.md`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// One benchmark run's figures, in the order they were recorded.
#[derive(Debug)]
pub struct Report {
    name: String,
    title: String,
    figures: Vec<Figure>,
    notes: Vec<String>,
}

#[derive(Debug)]
struct Figure {
    name: String,
    value: f64,
    what: String,
    target: Option<String>,
}

impl Report {
    /// A report named `name` (the file stem) with a human title.
    #[must_use]
    pub fn new(name: &str, title: &str) -> Self {
        Self {
            name: name.to_owned(),
            title: title.to_owned(),
            figures: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Records a figure and prints it.
    pub fn figure(&mut self, name: &str, value: f64, what: &str) -> &mut Self {
        self.push(name, value, what, None)
    }

    /// Records a figure with the target it is held to, and prints it.
    pub fn target(&mut self, name: &str, value: f64, what: &str, target: &str) -> &mut Self {
        self.push(name, value, what, Some(target.to_owned()))
    }

    /// Adds a free-text note under the table.
    pub fn note(&mut self, text: &str) -> &mut Self {
        self.notes.push(text.to_owned());
        self
    }

    /// The value of a recorded figure.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<f64> {
        self.figures
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.value)
    }

    fn push(&mut self, name: &str, value: f64, what: &str, target: Option<String>) -> &mut Self {
        eprintln!(
            "{name:<36} {value:>14.4}  {what}{}",
            target
                .as_deref()
                .map(|t| format!("  (target: {t})"))
                .unwrap_or_default()
        );
        self.figures.push(Figure {
            name: name.to_owned(),
            value,
            what: what.to_owned(),
            target,
        });
        self
    }

    /// Writes `target/bench/<name>.json` and `docs/benchmarks/<name>.md` under `workspace`,
    /// returning both paths.
    ///
    /// # Errors
    ///
    /// When a file cannot be written.
    pub fn write(&self, workspace: &Path) -> std::io::Result<(PathBuf, PathBuf)> {
        let target_dir = std::env::var_os("CARGO_TARGET_DIR")
            .map_or_else(|| workspace.join("target"), PathBuf::from);
        let json_path = target_dir.join("bench").join(format!("{}.json", self.name));
        let md_path = workspace
            .join("docs")
            .join("benchmarks")
            .join(format!("{}.md", self.name));
        std::fs::create_dir_all(json_path.parent().unwrap_or(workspace))?;
        std::fs::create_dir_all(md_path.parent().unwrap_or(workspace))?;
        std::fs::write(&json_path, self.json())?;
        std::fs::write(&md_path, self.markdown())?;
        Ok((json_path, md_path))
    }

    fn json(&self) -> String {
        let body: Vec<String> = self
            .figures
            .iter()
            .map(|f| {
                let v = if f.value.is_finite() {
                    format!("{}", f.value)
                } else {
                    "null".to_owned()
                };
                format!("  \"{}\": {v}", f.name)
            })
            .collect();
        format!("{{\n{}\n}}\n", body.join(",\n"))
    }

    fn markdown(&self) -> String {
        let mut s = format!("# {}\n\n", self.title);
        let _ = writeln!(
            s,
            "Written by `cargo xtask bench {}`; every target is a ratio against a baseline \
             measured in the same run, because the machine is shared and noisy.\n",
            self.name
        );
        let _ = writeln!(s, "Machine: {}\n", machine());
        s.push_str("| figure | value | what | target |\n|---|---:|---|---|\n");
        for f in &self.figures {
            let _ = writeln!(
                s,
                "| `{}` | {} | {} | {} |",
                f.name,
                format_value(f.value),
                f.what,
                f.target.as_deref().unwrap_or("")
            );
        }
        if !self.notes.is_empty() {
            s.push('\n');
            for n in &self.notes {
                let _ = writeln!(s, "- {n}");
            }
        }
        s
    }
}

fn format_value(v: f64) -> String {
    if v == v.trunc() && v.abs() < 1e12 {
        format!("{v:.0}")
    } else if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// A one-line description of this machine: CPU model, cores, memory, OS, compiler.
#[must_use]
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or_else(
            || "?".into(),
            |kb| format!("{:.0} GiB", kb / 1024.0 / 1024.0),
        );
    let rustc = std::process::Command::new("rustc")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    format!(
        "{cpu}, {cores} cores, {mem}, {} {}, {rustc}",
        std::env::consts::OS,
        std::env::consts::ARCH
    )
}

/// The median of `runs` timings of `f`, each the duration of one call.
pub fn median_time(runs: usize, mut f: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..runs.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

/// The median of a sample, or NaN when it is empty.
#[must_use]
pub fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The `q` quantile (0..=1) of a sample, or NaN when it is empty.
#[must_use]
pub fn quantile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let i = ((values.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
    values[i]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_json_and_markdown() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Report::new("unit", "Unit report");
        r.figure("a_ns", 12.5, "a thing")
            .target("b_ratio", 1.05, "b over a", "<= 1.10");
        let (json, md) = r.write(dir.path()).unwrap();
        let json = std::fs::read_to_string(json).unwrap();
        assert_eq!(json, "{\n  \"a_ns\": 12.5,\n  \"b_ratio\": 1.05\n}\n");
        let md = std::fs::read_to_string(md).unwrap();
        assert!(
            md.contains("| `b_ratio` | 1.050 | b over a | <= 1.10 |"),
            "{md}"
        );
        assert_eq!(r.get("a_ns"), Some(12.5));
    }

    #[test]
    fn quantiles() {
        let mut v = vec![5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(median(&mut v), 3.0);
        assert_eq!(quantile(&mut v, 1.0), 5.0);
        assert_eq!(quantile(&mut v, 0.0), 1.0);
        assert!(median(&mut []).is_nan());
    }
}
