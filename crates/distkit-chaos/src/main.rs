//! `distkit-chaos`: runs a distkit-node cluster under a seeded nemesis, records the clients'
//! history and checks it. See the crate docs; `cargo xtask chaos` is the way to run it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::Parser;
use distkit_chaos::check::{self, Verdict};
use distkit_chaos::history::{FaultSpan, Op, Outcome, Recorder};
use distkit_chaos::plan::{FAULTS, Fault, Plan};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

/// `println!` that ignores a closed stdout (`| head`) instead of panicking.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// Runs a distkit-node cluster under faults and checks what its clients saw.
#[derive(Debug, Parser)]
#[command(name = "distkit-chaos")]
struct Args {
    /// Seeds the nemesis schedule and the clients (default: from the clock, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// How long the nemesis runs, e.g. 60s or 2m (a warm-up and a healed tail are added).
    #[arg(long, default_value = "60s")]
    time: String,
    /// Fault kinds, comma-separated: kill, pause, partition, redis, token.
    #[arg(long, default_value = "kill,pause,partition", value_delimiter = ',')]
    faults: Vec<String>,
    /// Nodes in the cluster, 1 to 9 (3 or 5 are the sizes worth running).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// The distkit-node binary.
    #[arg(long, default_value = "target/debug/distkit-node")]
    node_bin: PathBuf,
    /// Where runs are written (one directory per run).
    #[arg(long, default_value = "target/chaos")]
    out: PathBuf,
    /// Replays the plan (seed, time, faults, nodes) of the run in this directory.
    #[arg(long)]
    replay: Option<PathBuf>,
    /// Runs on loopback even where namespaces are available (kill, pause, redis, token only).
    #[arg(long)]
    loopback: bool,
    /// Internal: the run directory, when this process is the part inside the hub namespace.
    #[arg(long, hide = true)]
    inner: Option<PathBuf>,
    /// Draws DIR/latency.svg again from the run's history, with at most --points dots.
    #[arg(long, value_name = "DIR")]
    replot: Option<PathBuf>,
    /// Runs the checkers again on the run in DIR (its history.jsonl and faults.json, which
    /// may have been edited) and prints their verdicts; exits 1 when one fails.
    #[arg(long, value_name = "DIR")]
    check: Option<PathBuf>,
    /// Dots in a plot.
    #[arg(long, default_value_t = 4000)]
    points: usize,
    /// Internal: the namespaces' name prefix.
    #[arg(long, hide = true)]
    prefix: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match (&args.inner, &args.replot, &args.check) {
        (Some(dir), _, _) => inner(&args, dir),
        (None, Some(dir), _) => replot(dir, args.points),
        (None, None, Some(dir)) => recheck(dir),
        (None, None, None) => outer(&args),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("distkit-chaos: {e}");
            ExitCode::from(2)
        }
    }
}

type Result<T> = std::result::Result<T, String>;

/// A finished run read back from its directory.
fn load(dir: &Path) -> Result<(Plan, Vec<FaultSpan>, Vec<Op>)> {
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .map_err(|e| format!("{}: {e}", dir.join(name).display()))
    };
    let plan: Plan =
        serde_json::from_str(&read("run.json")?).map_err(|e| format!("run.json: {e}"))?;
    let faults: Vec<FaultSpan> =
        serde_json::from_str(&read("faults.json")?).map_err(|e| format!("faults.json: {e}"))?;
    let ops = read("history.jsonl")?
        .lines()
        .enumerate()
        .map(|(n, l)| {
            serde_json::from_str::<Op>(l).map_err(|e| format!("history.jsonl line {}: {e}", n + 1))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((plan, faults, ops))
}

/// Draws a run's plot again from its files.
fn replot(dir: &Path, points: usize) -> Result<bool> {
    let (plan, faults, ops) = load(dir)?;
    std::fs::write(
        dir.join("latency.svg"),
        distkit_chaos::svg::plot(&title(&plan), &ops, &faults, points),
    )
    .map_err(|e| e.to_string())?;
    Ok(true)
}

/// Runs the checkers on a stored (perhaps edited) history and prints their verdicts.
fn recheck(dir: &Path) -> Result<bool> {
    let (_, faults, mut ops) = load(dir)?;
    ops.sort_by_key(|o| o.complete_ns);
    let healed_ns = faults.iter().map(|f| f.end_ns).max().unwrap_or(0);
    let verdicts = verdicts(&ops, &faults, healed_ns);
    Ok(print_verdicts(&verdicts))
}

/// Every checker's verdict on a history.
fn verdicts(ops: &[Op], faults: &[FaultSpan], healed_ns: u64) -> Vec<Verdict> {
    vec![
        check::fenced_locks(ops),
        check::lock_leases(ops),
        check::election(ops),
        check::cache(ops, faults, duration_ns(STALE_WINDOW)),
        check::liveness(ops, healed_ns, duration_ns(LIVENESS_BOUND)),
    ]
}

fn title(plan: &Plan) -> String {
    format!(
        "distkit chaos: seed {}, {} s, faults {}, {} nodes ({})",
        plan.seed,
        plan.time_s,
        plan.faults.join(","),
        plan.nodes,
        if plan.netns { "namespaces" } else { "loopback" }
    )
}

fn parse_time(s: &str) -> Result<u64> {
    let (n, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, "s"), |i| s.split_at(i));
    let n: u64 = n.parse().map_err(|_| format!("bad --time {s:?}"))?;
    let secs = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        _ => return Err(format!("bad --time {s:?}: use 60s or 2m")),
    };
    secs.filter(|t| (MIN_TIME_S..=MAX_TIME_S).contains(t))
        .ok_or_else(|| {
            format!(
                "--time must be {MIN_TIME_S} s to {} min, got {s:?}",
                MAX_TIME_S / 60
            )
        })
}

/// The shortest run that has room for a fault, and the longest a run may ask for.
const MIN_TIME_S: u64 = 10;
const MAX_TIME_S: u64 = 3600;

/// Whether this process can make network namespaces (root, with `ip`).
fn netns_available() -> bool {
    let probe = format!("dkc{}probe", std::process::id());
    let made = Command::new("ip")
        .args(["netns", "add", &probe])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if made {
        let _ = Command::new("ip").args(["netns", "del", &probe]).status();
    }
    made
}

fn sh(args: &[&str]) -> Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The address plan inside the namespaces: the hub (clients and Redis) and each node.
const HUB_IP: &str = "10.213.0.1";
fn node_ip(i: usize) -> String {
    format!("10.213.0.{}", 11 + i)
}

/// The namespaces of one run, removed when dropped.
struct Namespaces {
    prefix: String,
    nodes: usize,
}

impl Namespaces {
    fn hub(&self) -> String {
        format!("{}h", self.prefix)
    }

    fn node(prefix: &str, i: usize) -> String {
        format!("{prefix}n{i}")
    }

    /// A hub namespace with a bridge, and one namespace per node joined to it by a veth.
    fn create(nodes: usize) -> Result<Self> {
        remove_stale();
        let ns = Self {
            prefix: format!("dkc{}", std::process::id()),
            nodes,
        };
        let hub = ns.hub();
        sh(&["ip", "netns", "add", &hub])?;
        sh(&["ip", "-n", &hub, "link", "set", "lo", "up"])?;
        sh(&["ip", "-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        sh(&[
            "ip",
            "-n",
            &hub,
            "addr",
            "add",
            &format!("{HUB_IP}/24"),
            "dev",
            "br0",
        ])?;
        sh(&["ip", "-n", &hub, "link", "set", "br0", "up"])?;
        for i in 0..nodes {
            let n = Self::node(&ns.prefix, i);
            let v = format!("v{i}");
            sh(&["ip", "netns", "add", &n])?;
            sh(&["ip", "-n", &n, "link", "set", "lo", "up"])?;
            sh(&[
                "ip", "link", "add", &v, "netns", &hub, "type", "veth", "peer", "name", "eth0",
                "netns", &n,
            ])?;
            sh(&["ip", "-n", &hub, "link", "set", &v, "master", "br0", "up"])?;
            sh(&[
                "ip",
                "-n",
                &n,
                "addr",
                "add",
                &format!("{}/24", node_ip(i)),
                "dev",
                "eth0",
            ])?;
            sh(&["ip", "-n", &n, "link", "set", "eth0", "up"])?;
        }
        Ok(ns)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for i in 0..self.nodes {
            let _ = Command::new("ip")
                .args(["netns", "del", &Self::node(&self.prefix, i)])
                .status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.hub()])
            .status();
    }
}

/// Removes namespaces left by runs whose process is gone (a killed harness).
fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix("dkc") else {
            continue;
        };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if !pid.is_empty() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// Sets up the run: its plan and directory, the namespaces when available; runs the inner
/// part (inside the hub namespace, or here on loopback); removes the namespaces.
fn outer(args: &Args) -> Result<bool> {
    let mut plan = match &args.replay {
        Some(dir) => {
            let text = std::fs::read_to_string(dir.join("run.json"))
                .map_err(|e| format!("{}: {e}", dir.join("run.json").display()))?;
            serde_json::from_str::<Plan>(&text).map_err(|e| format!("run.json: {e}"))?
        }
        None => Plan {
            seed: args.seed.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_secs())
            }),
            time_s: parse_time(&args.time)?,
            faults: args.faults.clone(),
            nodes: args.nodes,
            netns: false,
        },
    };
    for f in &plan.faults {
        if !FAULTS.contains(&f.as_str()) {
            return Err(format!("unknown fault {f:?}; known: {}", FAULTS.join(", ")));
        }
    }
    if !(1..=9).contains(&plan.nodes) {
        return Err("--nodes must be 1 to 9".into());
    }
    if !(MIN_TIME_S..=MAX_TIME_S).contains(&plan.time_s) {
        return Err(format!(
            "the time must be {MIN_TIME_S} s to {} min, got {} s",
            MAX_TIME_S / 60,
            plan.time_s
        ));
    }
    let available = netns_available();
    if available {
        // Also on a loopback run: whatever a killed harness left goes.
        remove_stale();
    }
    match &args.replay {
        Some(_) => {
            if args.seed.is_some() || args.loopback {
                say!(
                    "chaos: replaying: --seed, --time, --faults, --nodes and --loopback come from run.json"
                );
            }
            // The schedule depends on it: a replay runs where the original ran.
            if plan.netns && !available {
                return Err(
                    "the run replayed used network namespaces, which this process cannot make \
                     (run it as root, with `ip`)"
                        .into(),
                );
            }
        }
        None => plan.netns = !args.loopback && available,
    }
    let kinds: Vec<&str> = plan
        .faults
        .iter()
        .map(String::as_str)
        .filter(|k| *k != "partition" || (plan.netns && plan.nodes >= 2))
        .collect();
    if kinds.is_empty() {
        return Err(format!(
            "no fault of {:?} can be injected here (partitions need network namespaces and two \
             nodes): a run without faults proves nothing",
            plan.faults
        ));
    }
    if plan.schedule().is_empty() {
        return Err("no fault fits in the time given".into());
    }
    if !plan.netns {
        say!(
            "chaos: network namespaces are not available (not root, no `ip`, or --loopback): \
             running on loopback with {} only",
            plan.faults
                .iter()
                .filter(|f| *f != "partition")
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let dir = args
        .out
        .join(format!("seed-{}-{}", plan.seed, std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    std::fs::write(
        dir.join("run.json"),
        serde_json::to_string_pretty(&plan).unwrap_or_default(),
    )
    .map_err(|e| e.to_string())?;
    say!(
        "chaos: seed {} for {} s, faults {}, {} nodes, {}; writing {}",
        plan.seed,
        plan.time_s,
        plan.faults.join(","),
        plan.nodes,
        if plan.netns {
            "network namespaces"
        } else {
            "loopback"
        },
        dir.display()
    );
    for (i, s) in plan.schedule().iter().enumerate() {
        say!(
            "chaos: step {i:>2}: wait {:>4} ms, {} for {} ms",
            s.after_ms,
            s.fault.describe(),
            s.hold_ms
        );
    }
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    if plan.netns {
        let ns = Namespaces::create(plan.nodes)?;
        let status = Command::new("ip")
            .args(["netns", "exec", &ns.hub()])
            .arg(&me)
            .arg("--node-bin")
            .arg(&args.node_bin)
            .arg("--inner")
            .arg(&dir)
            .arg("--prefix")
            .arg(&ns.prefix)
            .status()
            .map_err(|e| e.to_string())?;
        drop(ns);
        match status.code() {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            _ => Err(format!("the run inside the namespaces failed ({status})")),
        }
    } else {
        inner(args, &dir)
    }
}

/// One node process and how to start it again.
struct NodeProc {
    child: Option<Child>,
    paused: bool,
}

/// The cluster under test: Redis and the nodes.
struct Cluster {
    plan: Plan,
    prefix: Option<String>,
    dir: PathBuf,
    node_bin: PathBuf,
    redis_port: u16,
    redis: Option<Child>,
    ports: Vec<u16>,
    nodes: Vec<NodeProc>,
    /// Blackhole routes in place: (namespace, address).
    routes: Vec<(String, String)>,
}

const TOKEN: &str = "chaos-cluster-token";

impl Cluster {
    fn host(&self, i: usize) -> String {
        if self.plan.netns {
            node_ip(i)
        } else {
            "127.0.0.1".into()
        }
    }

    fn url(&self, i: usize) -> String {
        format!("http://{}:{}", self.host(i), self.ports[i])
    }

    fn redis_host(&self) -> &str {
        if self.plan.netns { HUB_IP } else { "127.0.0.1" }
    }

    fn start_redis(&mut self) -> Result<()> {
        let child = Command::new("redis-server")
            .args(["--bind", self.redis_host()])
            .args(["--port", &self.redis_port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("redis-server: {e} (cargo xtask chaos installs it)"))?;
        self.redis = Some(child);
        Ok(())
    }

    fn start_node(&mut self, i: usize, token: &str) -> Result<()> {
        let peers: Vec<String> = (0..self.plan.nodes)
            .filter(|&j| j != i)
            .map(|j| format!("node-{j}={}", self.url(j)))
            .collect();
        let mut c = match &self.prefix {
            Some(prefix) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &Namespaces::node(prefix, i)])
                    .arg(&self.node_bin);
                c
            }
            None => Command::new(&self.node_bin),
        };
        c.args(["--id", &format!("node-{i}")])
            .args(["--listen", &format!("{}:{}", self.host(i), self.ports[i])])
            .args(["--token", token])
            .args([
                "--redis",
                &format!("redis://{}:{}/", self.redis_host(), self.redis_port),
            ])
            .args(["--replicas", if self.plan.nodes >= 3 { "2" } else { "1" }])
            .arg("--data-dir")
            .arg(self.dir.join(format!("data/node-{i}")))
            .env("RUST_LOG", "warn")
            .env_remove("DISTKIT_PEERS")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        if !peers.is_empty() {
            c.args(["--peer", &peers.join(",")]);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("node-{i}.log")))
            .map_err(|e| e.to_string())?;
        c.stderr(log);
        let child = c
            .spawn()
            .map_err(|e| format!("{}: {e}", self.node_bin.display()))?;
        self.nodes[i] = NodeProc {
            child: Some(child),
            paused: false,
        };
        Ok(())
    }

    fn kill_node(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            if self.nodes[i].paused {
                signal(c.id(), "CONT");
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        self.nodes[i].paused = false;
    }

    fn blackhole(&mut self, from: usize, to: &str) -> Result<()> {
        let Some(prefix) = &self.prefix else {
            return Ok(());
        };
        let ns = Namespaces::node(prefix, from);
        sh(&[
            "ip",
            "-n",
            &ns,
            "route",
            "add",
            "blackhole",
            &format!("{to}/32"),
        ])?;
        self.routes.push((ns, to.to_owned()));
        Ok(())
    }

    fn cut(&mut self, a: usize, b: usize) -> Result<()> {
        self.blackhole(a, &node_ip(b))?;
        self.blackhole(b, &node_ip(a))
    }

    fn apply(&mut self, fault: &Fault) -> Result<()> {
        match fault {
            Fault::Kill(i) => self.kill_node(*i),
            Fault::Pause(i) => {
                if let Some(c) = &self.nodes[*i].child {
                    signal(c.id(), "STOP");
                    self.nodes[*i].paused = true;
                }
            }
            Fault::Isolate(i) => {
                for j in 0..self.plan.nodes {
                    if j != *i {
                        self.cut(*i, j)?;
                    }
                }
                // Clients and Redis live in the hub: cut those too.
                self.blackhole(*i, HUB_IP)?;
                sh(&[
                    "ip",
                    "route",
                    "add",
                    "blackhole",
                    &format!("{}/32", node_ip(*i)),
                ])?;
                self.routes.push((String::new(), node_ip(*i)));
            }
            Fault::Split(a, b) => {
                for x in a {
                    for y in b {
                        self.cut(*x, *y)?;
                    }
                }
            }
            Fault::Bridge(a, _, c) => self.cut(*a, *c)?,
            Fault::Redis => {
                if let Some(mut r) = self.redis.take() {
                    let _ = r.kill();
                    let _ = r.wait();
                }
            }
            Fault::Token(i) => {
                self.kill_node(*i);
                self.start_node(*i, "a-wrong-cluster-token")?;
            }
        }
        Ok(())
    }

    fn heal(&mut self, fault: &Fault) -> Result<()> {
        match fault {
            Fault::Kill(i) | Fault::Token(i) => {
                self.kill_node(*i);
                self.start_node(*i, TOKEN)?;
            }
            Fault::Pause(i) => {
                if let Some(c) = &self.nodes[*i].child {
                    signal(c.id(), "CONT");
                }
                self.nodes[*i].paused = false;
            }
            Fault::Isolate(_) | Fault::Split(..) | Fault::Bridge(..) => {
                for (ns, to) in std::mem::take(&mut self.routes) {
                    let target = format!("{to}/32");
                    let mut args = vec!["ip"];
                    if !ns.is_empty() {
                        args.extend(["-n", ns.as_str()]);
                    }
                    args.extend(["route", "del", "blackhole", target.as_str()]);
                    sh(&args)?;
                }
            }
            Fault::Redis => self.start_redis()?,
        }
        Ok(())
    }

    fn stop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill_node(i);
        }
        if let Some(mut r) = self.redis.take() {
            let _ = r.kill();
            let _ = r.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

fn free_port() -> Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

/// The run itself: the cluster, the clients, the nemesis, then the checkers and reports.
fn inner(args: &Args, dir: &Path) -> Result<bool> {
    let text = std::fs::read_to_string(dir.join("run.json")).map_err(|e| e.to_string())?;
    let plan: Plan = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(run(
        plan,
        args.node_bin.clone(),
        dir.to_owned(),
        args.prefix.clone(),
    ))
}

/// Sorts a client's HTTP result into an outcome: a refusal (4xx) is a definite failure; a
/// timeout, a broken connection (`None`) or a 5xx may have taken effect.
fn outcome(status: Option<reqwest::StatusCode>) -> Outcome {
    match status {
        Some(s) if s.is_success() => Outcome::Ok,
        Some(s) if s.is_client_error() => Outcome::Fail,
        _ => Outcome::Info,
    }
}

struct Ctx {
    rec: Recorder,
    http: reqwest::Client,
    urls: Vec<String>,
    stop: AtomicBool,
    /// The fenced store: the highest fencing token accepted per lock.
    store: std::sync::Mutex<HashMap<String, u64>>,
}

impl Ctx {
    fn record(
        &self,
        process: &str,
        op: &str,
        args: Value,
        invoke_ns: u64,
        outcome: Outcome,
        result: Value,
    ) {
        self.rec.push(Op {
            process: process.into(),
            op: op.into(),
            args,
            invoke_ns,
            complete_ns: self.rec.now(),
            outcome,
            result,
        });
    }

    /// A write to the fenced store: accepted when `fencing` is at least the highest seen.
    fn fenced_write(&self, process: &str, kind: &str, lock: &str, fencing: u64) {
        let at = self.rec.now();
        let ok = {
            let mut store = self
                .store
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let highest = store.entry(lock.to_owned()).or_insert(0);
            if fencing >= *highest {
                *highest = fencing;
                true
            } else {
                false
            }
        };
        self.rec.push(Op {
            process: process.into(),
            op: kind.into(),
            args: json!({"lock": lock, "fencing": fencing}),
            invoke_ns: at,
            complete_ns: at,
            outcome: if ok { Outcome::Ok } else { Outcome::Fail },
            result: Value::Null,
        });
    }
}

async fn lock_worker(ctx: Arc<Ctx>, w: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed ^ (w as u64).wrapping_mul(0x9E37_79B9));
    let process = format!("locker-{w}");
    let lock = format!("chaos-{}", w % 2);
    while !ctx.stop.load(Ordering::Relaxed) {
        let node = rng.random_range(0..ctx.urls.len());
        let name = format!("node-{node}");
        let t = ctx.rec.now();
        let r = ctx
            .http
            .post(format!("{}/v1/locks/{lock}", ctx.urls[node]))
            .body(r#"{"ttl_ms": 1500, "wait_ms": 500}"#)
            .send()
            .await;
        let status = r.as_ref().ok().map(reqwest::Response::status);
        let grant: Option<Value> = match r {
            Ok(resp) if resp.status().is_success() => resp.json().await.ok(),
            _ => None,
        };
        let mut oc = outcome(status);
        if oc == Outcome::Ok && grant.is_none() {
            // Granted, but the body was lost: the client cannot use (or release) it.
            oc = Outcome::Info;
        }
        let fencing = grant.as_ref().and_then(|g| g["fencing_token"].as_u64());
        let token = grant
            .as_ref()
            .and_then(|g| g["token"].as_str())
            .unwrap_or("")
            .to_owned();
        let result = grant.as_ref().map_or(
            Value::Null,
            |g| json!({"fencing": g["fencing_token"], "ttl_ms": g["ttl_ms"]}),
        );
        ctx.record(
            &process,
            "acquire",
            json!({"lock": lock, "node": name}),
            t,
            oc.clone(),
            result,
        );
        if let (Outcome::Ok, Some(fencing)) = (oc, fencing) {
            ctx.fenced_write(&process, "enter", &lock, fencing);
            tokio::time::sleep(Duration::from_millis(rng.random_range(30..150))).await;
            ctx.fenced_write(&process, "exit", &lock, fencing);
            let node = rng.random_range(0..ctx.urls.len());
            release(&ctx, &process, node, &lock, fencing, &token).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..50))).await;
    }
}

/// Releases one lock by its token through `node`, and records it.
async fn release(ctx: &Ctx, process: &str, node: usize, lock: &str, fencing: u64, token: &str) {
    let t = ctx.rec.now();
    let r = ctx
        .http
        .delete(format!("{}/v1/locks/{lock}", ctx.urls[node]))
        .body(json!({"token": token}).to_string())
        .send()
        .await;
    let oc = outcome(r.as_ref().ok().map(reqwest::Response::status));
    let result = match r {
        Ok(resp) if resp.status().is_success() => resp.json().await.unwrap_or(Value::Null),
        _ => Value::Null,
    };
    ctx.record(
        process,
        "release",
        json!({"lock": lock, "fencing": fencing, "node": format!("node-{node}")}),
        t,
        oc,
        result,
    );
}

/// Takes two of three locks at once through `POST /v1/lock-sets`, writes each grant's
/// fencing token to the fenced store on entering and leaving, and releases each lock by its
/// own token. Each lock of a set is recorded as its own `acquire` (same times), so every lock
/// checker covers sets too.
async fn set_worker(ctx: Arc<Ctx>, w: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed ^ (w as u64 + 50).wrapping_mul(0x9E37_79B9));
    let process = format!("setter-{w}");
    let all = ["set-0", "set-1", "set-2"];
    while !ctx.stop.load(Ordering::Relaxed) {
        let skip = rng.random_range(0..all.len());
        let names: Vec<&str> = all
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != skip)
            .map(|(_, n)| *n)
            .collect();
        let node = rng.random_range(0..ctx.urls.len());
        let t = ctx.rec.now();
        let r = ctx
            .http
            .post(format!("{}/v1/lock-sets", ctx.urls[node]))
            .body(json!({"names": names, "ttl_ms": 1500, "wait_ms": 500}).to_string())
            .send()
            .await;
        let status = r.as_ref().ok().map(reqwest::Response::status);
        let body: Option<Value> = match r {
            Ok(resp) if resp.status().is_success() => resp.json().await.ok(),
            _ => None,
        };
        let mut oc = outcome(status);
        if oc == Outcome::Ok && body.is_none() {
            oc = Outcome::Info;
        }
        let grants: Vec<(String, u64, String)> = body
            .as_ref()
            .and_then(|b| b["locks"].as_array())
            .map(|locks| {
                locks
                    .iter()
                    .filter_map(|l| {
                        Some((
                            l["name"].as_str()?.to_owned(),
                            l["fencing_token"].as_u64()?,
                            l["token"].as_str()?.to_owned(),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let ttl_ms = body.as_ref().map_or(Value::Null, |b| b["ttl_ms"].clone());
        for name in &names {
            let grant = grants.iter().find(|g| g.0 == *name);
            // An answer without this name's grant (a lost body) leaves it unknown.
            let outcome = if oc == Outcome::Ok && grant.is_none() {
                Outcome::Info
            } else {
                oc.clone()
            };
            ctx.record(
                &process,
                "acquire",
                json!({"lock": name, "node": format!("node-{node}"), "set": names}),
                t,
                outcome,
                grant.map_or(Value::Null, |g| json!({"fencing": g.1, "ttl_ms": ttl_ms})),
            );
        }
        if oc == Outcome::Ok && grants.len() == names.len() {
            for g in &grants {
                ctx.fenced_write(&process, "enter", &g.0, g.1);
            }
            tokio::time::sleep(Duration::from_millis(rng.random_range(30..150))).await;
            for g in &grants {
                ctx.fenced_write(&process, "exit", &g.0, g.1);
            }
            for g in &grants {
                let node = rng.random_range(0..ctx.urls.len());
                release(&ctx, &process, node, &g.0, g.1, &g.2).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..50))).await;
    }
}

async fn cache_worker(ctx: Arc<Ctx>, w: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed ^ (w as u64 + 100).wrapping_mul(0x9E37_79B9));
    let process = format!("cacher-{w}");
    let mut written = 0u64;
    while !ctx.stop.load(Ordering::Relaxed) {
        let node = rng.random_range(0..ctx.urls.len());
        let key = format!("k{}", rng.random_range(0..4));
        let t = ctx.rec.now();
        if rng.random_bool(0.5) {
            written += 1;
            let value = format!("{w}-{written}");
            let r = ctx
                .http
                .put(format!("{}/v1/cache/{key}", ctx.urls[node]))
                .body(value.clone())
                .send()
                .await;
            let oc = outcome(r.as_ref().ok().map(reqwest::Response::status));
            ctx.record(
                &process,
                "set",
                json!({"key": key, "value": value, "node": format!("node-{node}")}),
                t,
                oc,
                Value::Null,
            );
        } else {
            let r = ctx
                .http
                .get(format!("{}/v1/cache/{key}", ctx.urls[node]))
                .send()
                .await;
            let (oc, value) = match r {
                Ok(resp) if resp.status() == reqwest::StatusCode::NOT_FOUND => {
                    (Outcome::Ok, Value::Null)
                }
                Ok(resp) if resp.status().is_success() => match resp.bytes().await {
                    Ok(b) => (
                        Outcome::Ok,
                        Value::String(String::from_utf8_lossy(&b).into_owned()),
                    ),
                    Err(_) => (Outcome::Info, Value::Null),
                },
                Ok(resp) => (outcome(Some(resp.status())), Value::Null),
                Err(_) => (Outcome::Info, Value::Null),
            };
            ctx.record(
                &process,
                "get",
                json!({"key": key, "node": format!("node-{node}")}),
                t,
                oc,
                json!({"value": value}),
            );
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(5..40))).await;
    }
}

/// Asks every node for its view of the election, every 150 ms.
async fn observer(ctx: Arc<Ctx>) {
    while !ctx.stop.load(Ordering::Relaxed) {
        let asks = (0..ctx.urls.len()).map(|i| {
            let ctx = &ctx;
            async move {
                let t = ctx.rec.now();
                let r = ctx
                    .http
                    .get(format!("{}/v1/cluster", ctx.urls[i]))
                    .timeout(Duration::from_millis(500))
                    .send()
                    .await;
                let body: Option<Value> = match r {
                    Ok(resp) if resp.status().is_success() => resp.json().await.ok(),
                    _ => None,
                };
                let node = format!("node-{i}");
                match body {
                    Some(b) => ctx.record(
                        "observer",
                        "observe",
                        json!({"node": node}),
                        t,
                        Outcome::Ok,
                        json!({"term": b["term"], "role": b["role"], "leader": b["leader"], "lease": b["lease"]}),
                    ),
                    None => ctx.record(
                        "observer",
                        "observe",
                        json!({"node": node}),
                        t,
                        Outcome::Info,
                        Value::Null,
                    ),
                }
            }
        });
        futures_util::future::join_all(asks).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

/// How long the clients run on after the last fault is healed: the liveness bound, and then
/// some.
const TAIL: Duration = Duration::from_secs(12);
/// Every kind of operation must succeed again within this after the last heal.
const LIVENESS_BOUND: Duration = Duration::from_secs(10);
/// A read may return a replaced value this long after the write that replaced it, when a
/// fault was active meanwhile (an invalidation that could not be delivered).
const STALE_WINDOW: Duration = Duration::from_secs(3);

async fn wait_until(what: &str, limit: Duration, mut f: impl AsyncFnMut() -> bool) -> Result<()> {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if f().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("{what} within {limit:?}"))
}

async fn run(plan: Plan, node_bin: PathBuf, dir: PathBuf, prefix: Option<String>) -> Result<bool> {
    let ports = if plan.netns {
        vec![7000; plan.nodes]
    } else {
        (0..plan.nodes)
            .map(|_| free_port())
            .collect::<Result<_>>()?
    };
    let mut cluster = Cluster {
        redis_port: if plan.netns { 6379 } else { free_port()? },
        plan: plan.clone(),
        prefix,
        dir: dir.clone(),
        node_bin,
        redis: None,
        ports,
        nodes: (0..plan.nodes)
            .map(|_| NodeProc {
                child: None,
                paused: false,
            })
            .collect(),
        routes: Vec::new(),
    };
    cluster.start_redis()?;
    let redis_addr = format!("{}:{}", cluster.redis_host(), cluster.redis_port);
    wait_until(
        "redis-server listens",
        Duration::from_secs(10),
        async || tokio::net::TcpStream::connect(&redis_addr).await.is_ok(),
    )
    .await?;
    for i in 0..plan.nodes {
        cluster.start_node(i, TOKEN)?;
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_millis(500))
        .build()
        .map_err(|e| e.to_string())?;
    let urls: Vec<String> = (0..plan.nodes).map(|i| cluster.url(i)).collect();
    wait_until("a leader is elected", Duration::from_secs(30), async || {
        for u in &urls {
            if let Ok(r) = http.get(format!("{u}/v1/cluster")).send().await
                && let Ok(v) = r.json::<Value>().await
                && v["leader"].is_string()
            {
                return true;
            }
        }
        false
    })
    .await?;
    let ctx = Arc::new(Ctx {
        rec: Recorder::new(),
        http,
        urls,
        stop: AtomicBool::new(false),
        store: std::sync::Mutex::new(HashMap::new()),
    });
    let mut tasks = Vec::new();
    for w in 0..4 {
        tasks.push(tokio::spawn(lock_worker(ctx.clone(), w, plan.seed)));
    }
    for w in 0..2 {
        tasks.push(tokio::spawn(set_worker(ctx.clone(), w, plan.seed)));
    }
    for w in 0..3 {
        tasks.push(tokio::spawn(cache_worker(ctx.clone(), w, plan.seed)));
    }
    tasks.push(tokio::spawn(observer(ctx.clone())));

    // The nemesis.
    let mut faults: Vec<FaultSpan> = Vec::new();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut healed_ns = ctx.rec.now();
    let mut failure = None;
    for step in plan.schedule() {
        tokio::time::sleep(Duration::from_millis(step.after_ms)).await;
        let start_ns = ctx.rec.now();
        say!(
            "chaos: {:>8.3} s  {}",
            start_ns as f64 / 1e9,
            step.fault.describe()
        );
        if let Err(e) = cluster.apply(&step.fault) {
            failure = Some(e);
            break;
        }
        let early = step
            .fault
            .heals_after_ms()
            .map_or(step.hold_ms, |ms| ms.min(step.hold_ms));
        tokio::time::sleep(Duration::from_millis(early)).await;
        let healed = cluster.heal(&step.fault);
        tokio::time::sleep(Duration::from_millis(step.hold_ms - early)).await;
        healed_ns = ctx.rec.now();
        faults.push(FaultSpan {
            what: step.fault.describe(),
            kind: step.fault.kind().into(),
            start_ns,
            end_ns: healed_ns,
        });
        if let Err(e) = healed {
            failure = Some(e);
            break;
        }
    }
    if failure.is_none() {
        say!(
            "chaos: {:>8.3} s  healed; clients run on for {TAIL:?}",
            healed_ns as f64 / 1e9
        );
        tokio::time::sleep(TAIL).await;
    }
    ctx.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    cluster.stop();
    if let Some(e) = failure {
        return Err(format!("the nemesis failed: {e}"));
    }

    let ops = ctx.rec.ops();
    let verdicts = verdicts(&ops, &faults, healed_ns);
    report(&plan, &dir, &ops, &faults, &verdicts)
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Writes the history, the faults, the verdicts and the plot; prints the verdicts. True when
/// every checker held.
fn report(
    plan: &Plan,
    dir: &Path,
    ops: &[Op],
    faults: &[FaultSpan],
    verdicts: &[Verdict],
) -> Result<bool> {
    let io = |e: std::io::Error| e.to_string();
    let mut history = String::new();
    for op in ops {
        history.push_str(&serde_json::to_string(op).map_err(|e| e.to_string())?);
        history.push('\n');
    }
    std::fs::write(dir.join("history.jsonl"), history).map_err(io)?;
    std::fs::write(
        dir.join("faults.json"),
        serde_json::to_string_pretty(faults).map_err(|e| e.to_string())?,
    )
    .map_err(io)?;
    std::fs::write(
        dir.join("verdicts.json"),
        serde_json::to_string_pretty(verdicts).map_err(|e| e.to_string())?,
    )
    .map_err(io)?;
    std::fs::write(
        dir.join("latency.svg"),
        distkit_chaos::svg::plot(&title(plan), ops, faults, 4000),
    )
    .map_err(io)?;
    let mut counts: std::collections::BTreeMap<(String, String), u64> = Default::default();
    for op in ops {
        *counts
            .entry((op.op.clone(), format!("{:?}", op.outcome).to_lowercase()))
            .or_default() += 1;
    }
    say!("chaos: {} operations, {} faults", ops.len(), faults.len());
    for ((op, oc), n) in &counts {
        say!("chaos:   {op:<8} {oc:<5} {n}");
    }
    let all = print_verdicts(verdicts);
    say!(
        "chaos: {} — replay with: cargo xtask chaos --replay {}",
        if all {
            "all checkers held"
        } else {
            "VIOLATIONS FOUND"
        },
        dir.display()
    );
    Ok(all)
}

/// Prints each checker's verdict and violations; true when every checker held.
fn print_verdicts(verdicts: &[Verdict]) -> bool {
    let mut all = true;
    for v in verdicts {
        all &= v.valid;
        say!(
            "chaos: {} {} (checked {}{})",
            if v.valid { "VALID  " } else { "INVALID" },
            v.checker,
            v.checked,
            v.notes
                .iter()
                .map(|(k, n)| format!("; {k}: {n}"))
                .collect::<String>()
        );
        for m in &v.violations {
            say!("chaos:     {m}");
        }
    }
    all
}
