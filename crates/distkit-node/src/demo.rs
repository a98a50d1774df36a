//! `distkit-node demo`: the design document's IoT example as a live 3-node cluster.

use std::collections::{BTreeMap, HashMap};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

const TOKEN: &str = "demo-cluster-token";
const NODES: usize = 3;

struct Procs {
    children: Vec<Option<Child>>,
    redis: Option<Child>,
}

impl Drop for Procs {
    fn drop(&mut self) {
        for c in self.children.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(r) = &mut self.redis {
            let _ = r.kill();
            let _ = r.wait();
        }
    }
}

struct Check {
    name: String,
    value: String,
    ok: bool,
}

/// Runs the demo; returns whether every check passed.
///
/// # Errors
///
/// When the cluster cannot be started or queried at all.
pub async fn run(devices: usize) -> Result<bool, Box<dyn std::error::Error>> {
    let started = Instant::now();
    let exe = std::env::current_exe()?;
    let work = std::env::temp_dir().join(format!("distkit-demo-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let ports: Vec<u16> = (0..NODES).map(|_| free_port()).collect::<Result<_, _>>()?;
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    let mut procs = Procs {
        children: Vec::new(),
        redis: None,
    };

    let redis_url = start_redis(&work, &mut procs)?;
    match &redis_url {
        Some(u) => println!("locks: a private redis-server at {u}"),
        None => println!(
            "locks: redis-server is not installed, so each node uses its in-process lock backend (fine for this demo: the roll-out runs on the leader)"
        ),
    }
    for i in 0..NODES {
        procs.children.push(Some(spawn_node(
            &exe,
            &work,
            &ports,
            i,
            redis_url.as_deref(),
        )?));
    }
    println!("started {NODES} nodes: {}", urls.join(", "));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;

    // 1. A leader.
    let (leader, term) = wait_for_leader(&http, &urls, None, Duration::from_secs(10))
        .await
        .ok_or("no leader within 10 s")?;
    println!("node-{leader} leads term {term}");

    // 2. Devices write their state.
    let bar = progress(devices as u64, "devices reporting");
    let written = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..32 {
        let (http, urls, bar, written) = (http.clone(), urls.clone(), bar.clone(), written.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while i < devices {
                let url = format!("{}/v1/cache/device:{i}", urls[i % NODES]);
                let state = format!("{{\"device\":{i},\"firmware\":\"1.0.0\",\"online\":true}}");
                if http
                    .put(url)
                    .body(state)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
                {
                    written.fetch_add(1, Ordering::Relaxed);
                }
                bar.inc(1);
                i += 32;
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    bar.finish();
    let mut per_node = Vec::new();
    for u in &urls {
        let c = cluster(&http, u).await?;
        per_node.push(c["local_entries"].as_u64().unwrap_or(0));
    }
    println!(
        "the ring spread {} device states over the nodes:",
        written.load(Ordering::Relaxed)
    );
    for (i, n) in per_node.iter().enumerate() {
        println!("  node-{i}: {n:>6} keys");
    }

    // 3. The leader rolls out firmware: two workers race for each device's lock.
    let rollout = devices.min(300);
    let bar = progress(rollout as u64 * 2, "firmware roll-out (lock per device)");
    let tokens: Arc<std::sync::Mutex<HashMap<usize, Vec<u64>>>> = Arc::default();
    let refused = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for worker in 0..2 {
        let (http, url, bar, tokens, refused) = (
            http.clone(),
            urls[leader].clone(),
            bar.clone(),
            tokens.clone(),
            refused.clone(),
        );
        tasks.push(tokio::spawn(async move {
            for d in 0..rollout {
                let lock_url = format!("{url}/v1/locks/firmware:device-{d}");
                let resp = http
                    .post(&lock_url)
                    .json(&serde_json::json!({"ttl_ms": 5000, "wait_ms": 5000}))
                    .send()
                    .await;
                let Ok(resp) = resp else { continue };
                let Ok(grant) = resp.json::<Value>().await else {
                    continue;
                };
                let (Some(token), Some(fence)) =
                    (grant["token"].as_str(), grant["fencing_token"].as_u64())
                else {
                    continue;
                };
                {
                    // The fencing check a device registry would make.
                    let mut t = tokens.lock().unwrap_or_else(|e| e.into_inner());
                    let seen = t.entry(d).or_default();
                    if seen.last().is_some_and(|last| fence <= *last) {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    seen.push(fence);
                }
                let state = format!(
                    "{{\"device\":{d},\"firmware\":\"2.0.{worker}\",\"fencing_token\":{fence}}}"
                );
                let _ = http
                    .put(format!("{url}/v1/cache/device:{d}"))
                    .body(state)
                    .send()
                    .await;
                let _ = http
                    .delete(&lock_url)
                    .json(&serde_json::json!({"token": token}))
                    .send()
                    .await;
                bar.inc(1);
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    bar.finish();
    let tokens = tokens.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let grants: usize = tokens.values().map(Vec::len).sum();
    let handoffs = grants.saturating_sub(tokens.len());
    let monotonic = refused.load(Ordering::Relaxed) == 0
        && tokens.values().all(|v| v.windows(2).all(|w| w[0] < w[1]));
    println!(
        "{grants} lock grants over {} devices, {handoffs} hand-offs between workers",
        tokens.len()
    );

    // 4. Kill the leader.
    let killed_at = Instant::now();
    if let Some(mut c) = procs.children[leader].take() {
        c.kill()?;
        c.wait()?;
    }
    println!("SIGKILLed the leader, node-{leader}");
    let others: Vec<String> = (0..NODES)
        .filter(|&i| i != leader)
        .map(|i| urls[i].clone())
        .collect();
    let failover = wait_for_leader(&http, &others, Some(term), Duration::from_secs(10)).await;
    let failover_ms = killed_at.elapsed().as_secs_f64() * 1e3;
    let (new_leader, new_term) = match failover {
        Some((i, t)) => {
            let idx = (0..NODES).filter(|&j| j != leader).nth(i).unwrap_or(0);
            println!("node-{idx} leads term {t} after {failover_ms:.0} ms");
            (Some(idx), t)
        }
        None => (None, term),
    };

    // 5. Restart the dead node; it rejoins and follows.
    procs.children[leader] = Some(spawn_node(
        &exe,
        &work,
        &ports,
        leader,
        redis_url.as_deref(),
    )?);
    let rejoined = {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut ok = false;
        while Instant::now() < deadline {
            if let Ok(c) = cluster(&http, &urls[leader]).await
                && c["leader"].as_str().is_some()
                && c["term"].as_u64().unwrap_or(0) >= new_term
            {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ok
    };
    println!(
        "node-{leader} restarted and {}",
        if rejoined {
            "follows the new leader"
        } else {
            "did not rejoin"
        }
    );

    let checks = [
        Check {
            name: "device states written".into(),
            value: format!("{}/{devices}", written.load(Ordering::Relaxed)),
            ok: written.load(Ordering::Relaxed) as usize == devices,
        },
        Check {
            name: "keys per node".into(),
            value: per_node
                .iter()
                .enumerate()
                .map(|(i, n)| format!("node-{i}={n}"))
                .collect::<Vec<_>>()
                .join(" "),
            ok: per_node.iter().sum::<u64>() as usize == devices && per_node.iter().all(|&n| n > 0),
        },
        Check {
            name: "lock hand-offs".into(),
            value: handoffs.to_string(),
            ok: grants == rollout * 2,
        },
        Check {
            name: "fencing tokens monotonic".into(),
            value: if monotonic { "yes".into() } else { "no".into() },
            ok: monotonic,
        },
        Check {
            name: "failover time".into(),
            value: match new_leader {
                Some(_) => format!("{failover_ms:.0} ms"),
                None => "no new leader".into(),
            },
            ok: new_leader.is_some() && failover_ms < 2000.0,
        },
        Check {
            name: "new term > old term".into(),
            value: format!("{new_term} > {term}"),
            ok: new_term > term,
        },
        Check {
            name: "restarted node rejoined".into(),
            value: if rejoined { "yes".into() } else { "no".into() },
            ok: rejoined,
        },
    ];
    print_summary(&checks, started.elapsed());
    drop(procs);
    let _ = std::fs::remove_dir_all(&work);
    Ok(checks.iter().all(|c| c.ok))
}

fn progress(len: u64, msg: &'static str) -> ProgressBar {
    let b = ProgressBar::new(len);
    b.set_style(
        ProgressStyle::with_template("{msg:38} [{bar:30}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    b.set_message(msg);
    b
}

fn print_summary(checks: &[Check], took: Duration) {
    println!();
    println!("{:<28} {:<40} ok", "check", "value");
    println!("{}", "-".repeat(74));
    for c in checks {
        println!(
            "{:<28} {:<40} {}",
            c.name,
            c.value,
            if c.ok { "yes" } else { "NO" }
        );
    }
    println!("{}", "-".repeat(74));
    println!("demo took {:.1} s", took.as_secs_f64());
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn start_redis(
    work: &Path,
    procs: &mut Procs,
) -> Result<Option<String>, Box<dyn std::error::Error>> {
    let Some(bin) = find("redis-server") else {
        return Ok(None);
    };
    let port = free_port()?;
    let dir = work.join("redis");
    std::fs::create_dir_all(&dir)?;
    let child = Command::new(bin)
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    procs.redis = Some(child);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(Some(format!("redis://127.0.0.1:{port}/")));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err("redis-server did not start".into())
}

fn find(bin: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

fn spawn_node(
    exe: &Path,
    work: &Path,
    ports: &[u16],
    i: usize,
    redis: Option<&str>,
) -> std::io::Result<Child> {
    let peers: Vec<String> = (0..ports.len())
        .filter(|&j| j != i)
        .map(|j| format!("node-{j}=http://127.0.0.1:{}", ports[j]))
        .collect();
    let log = std::fs::File::create(work.join(format!("node-{i}.log")))?;
    let mut cmd = Command::new(exe);
    cmd.arg("--id")
        .arg(format!("node-{i}"))
        .arg("--listen")
        .arg(format!("127.0.0.1:{}", ports[i]))
        .arg("--token")
        .arg(TOKEN)
        .arg("--peer")
        .arg(peers.join(","))
        .arg("--data-dir")
        .arg(work.join(format!("node-{i}")))
        .env_remove("DISTKIT_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    if let Some(r) = redis {
        cmd.arg("--redis").arg(r);
    }
    cmd.spawn()
}

async fn cluster(http: &reqwest::Client, url: &str) -> Result<Value, reqwest::Error> {
    http.get(format!("{url}/v1/cluster"))
        .send()
        .await?
        .json()
        .await
}

/// Waits until exactly one of `urls` reports itself leader in a term above `after`;
/// returns its index in `urls` and the term.
async fn wait_for_leader(
    http: &reqwest::Client,
    urls: &[String],
    after: Option<u64>,
    limit: Duration,
) -> Option<(usize, u64)> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let mut leaders = BTreeMap::new();
        for (i, u) in urls.iter().enumerate() {
            if let Ok(c) = cluster(http, u).await
                && c["role"] == "leader"
            {
                leaders.insert(i, c["term"].as_u64().unwrap_or(0));
            }
        }
        if leaders.len() == 1
            && let Some((&i, &t)) = leaders.iter().next()
            && after.is_none_or(|a| t > a)
        {
            return Some((i, t));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}
