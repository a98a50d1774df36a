//! distkit's development tasks, run as `cargo xtask <task>`.
//!
//! Kept to the standard library so it builds in seconds; it calls cargo through `$CARGO`.

use std::env;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const TASKS: &str = "\
cargo xtask <task>

tasks:
  demo               build distkit-node and run the IoT demo: a 3-node cluster on loopback
                     (with a private redis-server when one is installed), 10,000 devices,
                     a fenced firmware roll-out, a killed leader; exits 0 when all checks pass
  test               install redis-server if missing (root on Debian), then run every test:
                     unit, integration and doc tests of the whole workspace
  proptest [--cases N]
                     run only the property tests, with PROPTEST_CASES=N
                     (default 2560, ten times proptest's default)
  bench [CRATE...]   run the benchmarks (all, or: hashring dlock election dcache); each writes
                     target/bench/CRATE.json and docs/benchmarks/CRATE.md, then runs its
                     criterion benches
  sim [--seeds N]    run N randomized election simulations (default 100000) in release mode;
                     a failing seed is printed with the command that replays it
  chaos [--quick | --long | ARGS...]
                     run distkit-node clusters under a seeded nemesis (kills, pauses, network
                     partitions in namespaces when root, Redis kills, wrong tokens), record
                     every client operation and check the history; writes target/chaos/RUN/
                     (history.jsonl, faults.json, verdicts.json, latency.svg). ARGS go to
                     distkit-chaos: --seed S --time 60s --faults kill,pause,partition
                     --nodes N --replay DIR (target/debug/distkit-chaos --check DIR runs
                     the checkers again on a stored history). --quick: the CI pass (seed 1, 40 s);
                     --long: 3 seeds x 190 s with every fault kind
  lint               cargo fmt --check, clippy --all-targets -D warnings, doc with warnings denied
  ci                 lint, then test
";

type Result<T = ()> = std::result::Result<T, String>;

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let run = match args.first().map(String::as_str) {
        None | Some("help" | "--help" | "-h") => {
            print!("{TASKS}");
            return ExitCode::SUCCESS;
        }
        Some("demo") => demo(),
        Some("test") => test(),
        Some("proptest") => proptest(&args[1..]),
        Some("bench") => bench(&args[1..]),
        Some("sim") => sim(&args[1..]),
        Some("chaos") => chaos(&args[1..]),
        Some("lint") => lint(),
        Some("ci") => lint().and_then(|()| test()),
        Some(other) => Err(format!("unknown task {other:?}\n\n{TASKS}")),
    };
    match run {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn demo() -> Result {
    cargo(&["build", "--locked", "-p", "distkit-node"], &[])?;
    let exe = workspace_root().join("target/debug/distkit-node");
    let exe = std::env::var_os("CARGO_TARGET_DIR")
        .map_or(exe, |d| PathBuf::from(d).join("debug/distkit-node"));
    let status = Command::new(&exe)
        .arg("demo")
        .status()
        .map_err(|e| format!("could not run {}: {e}", exe.display()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("the demo failed ({status})"))
    }
}

fn test() -> Result {
    ensure_redis_server()?;
    cargo(&["test", "--workspace", "--locked"], &[])
}

fn proptest(args: &[String]) -> Result {
    let cases = match args {
        [] => 2560,
        [flag, n] if flag == "--cases" => n
            .parse::<u32>()
            .map_err(|e| format!("--cases takes a whole number: {e}"))?,
        _ => return Err("usage: cargo xtask proptest [--cases N]".into()),
    };
    ensure_redis_server()?;
    // Property tests are named `proptests_*` (or live in a `proptests` module).
    cargo(
        &["test", "--workspace", "--locked", "proptests"],
        &[("PROPTEST_CASES", cases.to_string())],
    )
}

fn sim(args: &[String]) -> Result {
    let seeds = match args {
        [] => 100_000,
        [flag, n] if flag == "--seeds" => n
            .parse::<u64>()
            .map_err(|e| format!("--seeds takes a whole number: {e}"))?,
        _ => return Err("usage: cargo xtask sim [--seeds N]".into()),
    };
    cargo(
        &[
            "test",
            "--locked",
            "--release",
            "-p",
            "distkit-election",
            "--test",
            "it",
            "chaos_runs",
        ],
        &[("DISTKIT_SIM_SEEDS", seeds.to_string())],
    )
}

/// Seeds of `chaos --long`: each runs 190 s of faults, 10 minutes of nemesis in all.
const LONG_SEEDS: [u64; 3] = [11, 12, 13];

fn chaos(args: &[String]) -> Result {
    ensure_redis_server()?;
    cargo(
        &[
            "build",
            "--locked",
            "-p",
            "distkit-node",
            "-p",
            "distkit-chaos",
        ],
        &[],
    )?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from);
    let run = |extra: &[&str]| -> Result<bool> {
        let status = Command::new(target.join("debug/distkit-chaos"))
            .arg("--node-bin")
            .arg(target.join("debug/distkit-node"))
            .arg("--out")
            .arg(target.join("chaos"))
            .args(extra)
            .current_dir(workspace_root())
            .status()
            .map_err(|e| format!("could not run distkit-chaos: {e}"))?;
        match status.code() {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            _ => Err(format!("distkit-chaos failed ({status})")),
        }
    };
    let ok = match args.first().map(String::as_str) {
        Some("--quick") => run(&[
            "--seed",
            "1",
            "--time",
            "40s",
            "--faults",
            "kill,pause,partition",
        ])?,
        Some("--long") => {
            let mut all = true;
            for seed in LONG_SEEDS {
                let seed = seed.to_string();
                all &= run(&[
                    "--seed",
                    &seed,
                    "--time",
                    "190s",
                    "--faults",
                    "kill,pause,partition,redis,token",
                ])?;
            }
            all
        }
        _ => run(&args.iter().map(String::as_str).collect::<Vec<_>>())?,
    };
    if ok {
        Ok(())
    } else {
        Err("the chaos run found violations (see its verdicts above)".into())
    }
}

/// Component crates with benchmarks: the summary run (figures and report) and criterion.
const BENCHES: &[(&str, &str, &[&str])] = &[
    ("hashring", "distkit-hashring", &["summary", "lookup"]),
    ("dlock", "distkit-dlock", &["summary"]),
    ("election", "distkit-election", &["summary"]),
    ("dcache", "distkit-dcache", &["summary"]),
];

fn bench(args: &[String]) -> Result {
    ensure_redis_server()?;
    let wanted: Vec<&str> = if args.is_empty() {
        BENCHES.iter().map(|(name, ..)| *name).collect()
    } else {
        args.iter().map(String::as_str).collect()
    };
    for name in wanted {
        let (_, package, benches) = BENCHES.iter().find(|(n, ..)| *n == name).ok_or_else(|| {
            let known: Vec<&str> = BENCHES.iter().map(|(n, ..)| *n).collect();
            format!("no benchmarks for {name:?}; known: {}", known.join(", "))
        })?;
        for b in *benches {
            cargo(&["bench", "--locked", "-p", package, "--bench", b], &[])?;
        }
    }
    Ok(())
}

fn lint() -> Result {
    cargo(&["fmt", "--all", "--", "--check"], &[])?;
    cargo(
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )?;
    cargo(
        &["doc", "--workspace", "--no-deps", "--locked"],
        &[("RUSTDOCFLAGS", "-D warnings".into())],
    )
}

fn cargo(args: &[&str], envs: &[(&str, String)]) -> Result {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    eprintln!("xtask: cargo {}", args.join(" "));
    let status = Command::new(&cargo)
        .args(args)
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .current_dir(workspace_root())
        .status()
        .map_err(|e| format!("could not run {cargo:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("cargo {} failed ({status})", args.join(" ")))
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

const INSTALL: &str = "apt-get update && apt-get install -y redis-server";

/// Makes sure `redis-server` is installed: installs it when running as root on Debian or
/// Ubuntu, otherwise stops with the exact command to run.
fn ensure_redis_server() -> Result {
    if have("redis-server") {
        return Ok(());
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let debian = Path::new("/etc/debian_version").exists();
    if !(root && debian) {
        return Err(format!(
            "redis-server is missing and tests need it; install it with `sudo {INSTALL}` \
             (or your system's package manager) and run again"
        ));
    }
    eprintln!("xtask: redis-server is missing; running `{INSTALL}`");
    run_quiet("apt-get", &["update"])?;
    run_quiet(
        "apt-get",
        &["install", "-y", "--no-install-recommends", "redis-server"],
    )?;
    if have("redis-server") {
        Ok(())
    } else {
        Err(format!(
            "`{INSTALL}` ran but redis-server is still not on PATH"
        ))
    }
}

fn run_quiet(program: &str, args: &[&str]) -> Result {
    let out = Command::new(program)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .map_err(|e| format!("could not run {program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {} failed ({}):\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn have(binary: &str) -> bool {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .any(|d| d.join(binary).is_file())
}
