//! distkit-node processes on loopback: failover, pauses, restarts, bad input.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub(crate) const NODE: &str = env!("CARGO_BIN_EXE_node-under-test");
pub(crate) const TOKEN: &str = "node-test-token";

struct Proc {
    child: Option<Child>,
    url: String,
    port: u16,
    data: PathBuf,
}

struct Cluster {
    procs: Vec<Proc>,
    ports: Vec<u16>,
    _dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in &mut self.procs {
            if let Some(c) = &mut p.child {
                let _ = signal(c.id(), "CONT");
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

pub(crate) fn signal(pid: u32, sig: &str) -> std::io::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("kill -{sig} failed")))
    }
}

fn spawn(ports: &[u16], i: usize, data: &std::path::Path) -> Child {
    spawn_with(ports, i, data, &[])
}

fn spawn_with(ports: &[u16], i: usize, data: &std::path::Path, env: &[(&str, &str)]) -> Child {
    spawn_full(ports, i, data, env, TOKEN)
}

/// The node binary with the tests' defaults: quiet logs, no peers or token from the
/// environment, no standard streams.
pub(crate) fn node_command() -> Command {
    let mut c = Command::new(NODE);
    c.env("RUST_LOG", "warn")
        .env_remove("DISTKIT_PEERS")
        .env_remove("DISTKIT_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

/// Polls `/v1/cluster` at `url` until `ready` holds for the answer (at most 10 s).
pub(crate) async fn wait_status(
    http: &reqwest::Client,
    url: &str,
    what: &str,
    ready: impl Fn(&Value) -> bool,
) -> Value {
    let start = Instant::now();
    loop {
        if let Some(s) = status(http, url).await
            && ready(&s)
        {
            return s;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn spawn_full(
    ports: &[u16],
    i: usize,
    data: &std::path::Path,
    env: &[(&str, &str)],
    token: &str,
) -> Child {
    let peers: Vec<String> = (0..ports.len())
        .filter(|&j| j != i)
        .map(|j| format!("node-{j}=http://127.0.0.1:{}", ports[j]))
        .collect();
    node_command()
        .args([
            "--id",
            &format!("node-{i}"),
            "--listen",
            &format!("127.0.0.1:{}", ports[i]),
        ])
        .args(["--token", token, "--peer", &peers.join(",")])
        .arg("--data-dir")
        .arg(data)
        .envs(env.iter().copied())
        .spawn()
        .expect("the node binary starts")
}

impl Cluster {
    fn start(n: usize) -> Self {
        Self::start_with(n, &[])
    }

    fn start_with(n: usize, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<u16> = (0..n)
            .map(|_| distkit_testkit::free_port().unwrap())
            .collect();
        let procs = (0..n)
            .map(|i| {
                let data = dir.path().join(format!("node-{i}"));
                Proc {
                    child: Some(spawn_with(&ports, i, &data, env)),
                    url: format!("http://127.0.0.1:{}", ports[i]),
                    port: ports[i],
                    data,
                }
            })
            .collect();
        Self {
            procs,
            ports,
            _dir: dir,
        }
    }

    fn restart(&mut self, i: usize) {
        let data = self.procs[i].data.clone();
        self.procs[i].child = Some(spawn(&self.ports, i, &data));
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.procs[i].child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }
}

/// GETs `url` and reads its answer as text.
pub(crate) async fn get_text(http: &reqwest::Client, url: impl reqwest::IntoUrl) -> String {
    http.get(url).send().await.unwrap().text().await.unwrap()
}

/// Sends `req` and reads its answer as JSON.
pub(crate) async fn send_json(req: reqwest::RequestBuilder) -> Value {
    req.send().await.unwrap().json().await.unwrap()
}

pub(crate) async fn status(http: &reqwest::Client, url: &str) -> Option<Value> {
    http.get(format!("{url}/v1/cluster"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}

/// Polls every live node; returns (node, term) of leaders seen in this round.
async fn leaders(http: &reqwest::Client, c: &Cluster, skip: &[usize]) -> Vec<(usize, u64)> {
    let mut out = Vec::new();
    for (i, p) in c.procs.iter().enumerate() {
        if skip.contains(&i) || p.child.is_none() {
            continue;
        }
        if let Some(s) = status(http, &p.url).await
            && s["role"] == "leader"
        {
            out.push((i, s["term"].as_u64().unwrap_or(0)));
        }
    }
    out
}

async fn wait_leader(
    http: &reqwest::Client,
    c: &Cluster,
    skip: &[usize],
    above: u64,
    limit: Duration,
) -> Option<(usize, u64, Duration)> {
    let start = Instant::now();
    while start.elapsed() < limit {
        let l = leaders(http, c, skip).await;
        if let Some(&(i, t)) = l.iter().max_by_key(|(_, t)| *t)
            && t > above
        {
            return Some((i, t, start.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_leader_is_replaced_within_a_second_and_terms_never_have_two_leaders() {
    let mut c = Cluster::start(3);
    let http = client();
    let (leader, term, _) = wait_leader(&http, &c, &[], 0, Duration::from_secs(15))
        .await
        .expect("a leader");
    let mut seen: HashMap<u64, usize> = HashMap::new();
    c.kill(leader);
    let killed = Instant::now();
    let mut replaced = None;
    while killed.elapsed() < Duration::from_secs(3) {
        for (i, t) in leaders(&http, &c, &[leader]).await {
            let first = *seen.entry(t).or_insert(i);
            assert_eq!(first, i, "two leaders in term {t}");
            if t > term && replaced.is_none() {
                replaced = Some(killed.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = replaced.expect("a new leader");
    assert!(took < Duration::from_secs(1), "failover took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_resigns_hands_over_and_exits_cleanly() {
    let mut c = Cluster::start(3);
    let http = client();
    let (leader, term, _) = wait_leader(&http, &c, &[], 0, Duration::from_secs(15))
        .await
        .expect("a leader");
    let pid = c.procs[leader].child.as_ref().unwrap().id();
    signal(pid, "TERM").unwrap();
    let asked = Instant::now();
    let (next, next_term, _) = wait_leader(&http, &c, &[leader], term, Duration::from_secs(3))
        .await
        .expect("a new leader");
    assert_ne!(next, leader);
    assert!(next_term > term);
    // A hand-over (about 15-20 ms here), not an election timeout: no follower starts an
    // election within 150 ms of the last heartbeat, sent at most 50 ms before the signal, so
    // a leader within 100 ms of the signal is the resigning leader's TimeoutNow at work.
    let took = asked.elapsed();
    assert!(took < Duration::from_millis(100), "hand-over took {took:?}");
    let mut child = c.procs[leader].child.take().unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the node did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status}");
    c.procs[leader].child = None;
}

/// The resource side of fencing: refuses tokens below the largest accepted.
#[derive(Default)]
struct Fenced {
    highest: u64,
    log: Vec<(u64, &'static str)>,
}

impl Fenced {
    fn write(&mut self, token: u64, what: &'static str) -> Result<(), String> {
        if token < self.highest {
            return Err(format!("stale token {token} < {}", self.highest));
        }
        self.highest = token;
        self.log.push((token, what));
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_steps_down_and_its_old_token_is_refused() {
    let c = Cluster::start(3);
    let http = client();
    let (old, term, _) = wait_leader(&http, &c, &[], 0, Duration::from_secs(15))
        .await
        .expect("a leader");
    let mut resource = Fenced::default();
    resource.write(term, "old leader before the pause").unwrap();
    let pid = c.procs[old].child.as_ref().unwrap().id();
    signal(pid, "STOP").unwrap(); // a 2 s GC pause
    let (new, new_term, _) = wait_leader(&http, &c, &[old], term, Duration::from_secs(2))
        .await
        .expect("a new leader during the pause");
    assert_ne!(new, old);
    resource.write(new_term, "new leader").unwrap();
    tokio::time::sleep(Duration::from_millis(2000).saturating_sub(Duration::from_millis(300)))
        .await;
    signal(pid, "CONT").unwrap();
    // It notices on its own (CheckQuorum or the new leader's heartbeat) and steps down.
    let start = Instant::now();
    loop {
        if let Some(s) = status(&http, &c.procs[old].url).await
            && s["role"] != "leader"
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "the paused leader did not step down"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // And it learns the new term from the new leader.
    let start = Instant::now();
    while status(&http, &c.procs[old].url)
        .await
        .and_then(|s| s["term"].as_u64())
        .unwrap_or(0)
        < new_term
    {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "the old leader never learned the new term"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Whatever it attempts with its old term as fencing token is refused.
    assert!(resource.write(term, "old leader after the pause").is_err());
    assert_eq!(resource.log.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_keeps_its_persisted_term_and_vote() {
    let mut c = Cluster::start(3);
    let http = client();
    let (leader, _, _) = wait_leader(&http, &c, &[], 0, Duration::from_secs(15))
        .await
        .expect("a leader");
    let victim = (leader + 1) % 3;
    let vote_file = c.procs[victim].data.join("vote.json");
    let before: Value =
        serde_json::from_slice(&std::fs::read(&vote_file).expect("the vote was persisted"))
            .unwrap();
    let persisted_term = before["term"].as_u64().unwrap();
    assert!(persisted_term >= 1);
    c.kill(victim);
    c.restart(victim);
    let start = Instant::now();
    let s = loop {
        if let Some(s) = status(&http, &c.procs[victim].url).await {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the node did not come back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        s["term"].as_u64().unwrap() >= persisted_term,
        "restarted at term {} < {persisted_term}",
        s["term"]
    );
    let after: Value = serde_json::from_slice(&std::fs::read(&vote_file).unwrap()).unwrap();
    if after["term"] == before["term"] {
        assert_eq!(
            after["voted_for"], before["voted_for"],
            "no second vote in one term"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_http_input_gets_4xx_json_and_the_node_keeps_serving() {
    let c = Cluster::start(3);
    let http = client();
    wait_leader(&http, &c, &[], 0, Duration::from_secs(15))
        .await
        .expect("a leader");
    let u = &c.procs[0].url;
    let long_key = "k".repeat(2000);
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (
            http.post(format!("{u}/v1/locks/a")).body("{\"ttl_ms\": "),
            400,
            "malformed JSON",
        ),
        (
            http.post(format!("{u}/v1/locks/a"))
                .body(vec![b' '; 100 * 1024]),
            413,
            "body over the limit",
        ),
        (
            http.post(format!("{u}/v1/locks/a")).body("{\"ttl\": 5}"),
            400,
            "unknown field",
        ),
        (
            http.post(format!("{u}/v1/election/message")).body("{}"),
            401,
            "missing token",
        ),
        (
            http.post(format!("{u}/v1/election/message"))
                .bearer_auth("wrong")
                .body("{}"),
            401,
            "wrong token",
        ),
        (
            http.get(format!("{u}/v1/peer/cache/x"))
                .bearer_auth("wrong"),
            401,
            "wrong peer token",
        ),
        (
            http.get(format!("{u}/v1/cache/{long_key}")),
            414,
            "oversized key",
        ),
        (
            http.post(format!("{u}/v1/locks/{}", "n".repeat(257))),
            414,
            "a lock name over 256 bytes",
        ),
        (
            http.get(format!("{u}/v1/cache/%FF%FE")),
            400,
            "invalid UTF-8 in the path",
        ),
        (
            http.delete(format!("{u}/v1/locks/a"))
                .body("{\"token\": \"nope\"}"),
            400,
            "malformed lock token",
        ),
        (
            http.put(format!("{u}/v1/cache/a?ttl_ms=soon")).body("v"),
            400,
            "bad ttl",
        ),
        (
            http.put(format!("{u}/v1/cache/a?TTL_MS=5")).body("v"),
            400,
            "an unknown query parameter (it was ignored, storing with the default TTL)",
        ),
        (
            http.post(format!("{u}/v1/locks/a"))
                .body("{\"wait_ms\": 60001}"),
            400,
            "a wait over a minute (it was capped silently)",
        ),
        (
            http.get(format!("{u}/v1/nothing-here")),
            404,
            "unknown route",
        ),
        (
            http.put(format!("{u}/v1/cluster")).body("x"),
            405,
            "wrong method",
        ),
        (
            http.put(format!("{u}/v1/cache/a?ttl_ms=18446744073709551615"))
                .body("v"),
            400,
            "a cache TTL past its limit (as a lock TTL past 24 h is)",
        ),
        (
            http.post(format!("{u}/v1/locks/a"))
                .body("{\"ttl_ms\": 18446744073709551615}"),
            400,
            "a lock TTL past its limit",
        ),
    ];
    for (req, want, what) in cases {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), want, "{what}");
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(body["error"].is_string(), "{what}: JSON error body");
        assert!(body["kind"].is_string(), "{what}: the error's kind");
    }
    // What the HTTP parser refuses before any handler sees it (reqwest will not even send
    // it): a 64 KB key in the request line, a 1 MB header.
    let port = c.procs[0].port;
    let long_line = format!(
        "GET /v1/cache/{} HTTP/1.1\r\nHost: x\r\n\r\n",
        "k".repeat(64 * 1024)
    );
    let big_header = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nx-big: {}\r\n\r\n",
        "h".repeat(1024 * 1024)
    );
    for (request, want, what) in [
        (long_line, 414, "a 64 KB key"),
        (big_header, 431, "a 1 MB header"),
        (
            "GET / HTTP/1.1\r\nbad header line\r\n\r\n".to_owned(),
            400,
            "a malformed header",
        ),
        (
            "PUT /v1/cache/cut HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc".to_owned(),
            400,
            "a body cut off before its length",
        ),
        (
            "PUT /v1/cache/bad HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
                .to_owned(),
            400,
            "a malformed chunk",
        ),
    ] {
        let (status, body) = raw_request(port, request.as_bytes()).await;
        assert_eq!(status, want, "{what}");
        let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        assert!(body["error"].is_string(), "{what}: JSON error body {body}");
        assert_eq!(
            body["kind"],
            if want == 400 {
                "invalid_input"
            } else {
                "too_large"
            },
            "{what}"
        );
    }
    // Everything else still works.
    let r = http
        .put(format!("{u}/v1/cache/device:1"))
        .body("on")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let v = http
        .get(format!("{}/v1/cache/device:1", c.procs[1].url))
        .send()
        .await
        .unwrap();
    assert_eq!(v.bytes().await.unwrap().as_ref(), b"on");
    let grant = send_json(
        http.post(format!("{u}/v1/locks/a"))
            .body("{\"ttl_ms\": 5000}"),
    )
    .await;
    let token = grant["token"].as_str().unwrap().to_owned();
    assert!(grant["fencing_token"].as_u64().unwrap() > 0);
    let ext = send_json(
        http.post(format!("{u}/v1/locks/a/extend"))
            .body(format!("{{\"token\": \"{token}\", \"ttl_ms\": 9000}}")),
    )
    .await;
    assert_eq!(ext["extended"], true);
    let rel = send_json(
        http.delete(format!("{u}/v1/locks/a"))
            .body(format!("{{\"token\": \"{token}\"}}")),
    )
    .await;
    assert_eq!(rel["released"], true);
    // A token that holds nothing releases nothing: not an error, as in the library.
    let none = send_json(
        http.delete(format!("{u}/v1/locks/a"))
            .body(format!("{{\"token\": \"{}\"}}", "0".repeat(32))),
    )
    .await;
    assert_eq!(none["released"], false);
    let health = http.get(format!("{u}/healthz")).send().await.unwrap();
    assert!(health.status().is_success());
    let metrics = get_text(&http, format!("{u}/metrics")).await;
    assert!(
        metrics.contains("distkit_dcache"),
        "prometheus text: {metrics}"
    );
    let _ = c.procs[0].port;
}

/// Sends `request` as raw bytes (the part the server reads before it answers, at least) and
/// returns the response's status and body.
async fn raw_request(port: u16, request: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    // The server may answer and close before it has read everything: a failed write is fine.
    let _ = tokio::time::timeout(Duration::from_secs(5), s.write_all(request)).await;
    // Then nothing more: a body shorter than its declared length ends here.
    let _ = s.shutdown().await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

/// The first wave refused a node without peers ("a node needs at least one peer"). A node
/// on its own is a cluster of one: it leads at once and serves locks and the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_peers_leads_at_once_and_serves() {
    let dir = tempfile::tempdir().unwrap();
    let port = distkit_testkit::free_port().unwrap();
    let mut child = node_command()
        .args(["--id", "solo", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir.path())
        .spawn()
        .expect("the node binary starts");
    let u = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let leading = wait_status(&http, &u, "the single node did not lead", |s| {
        s["leader"] == "solo"
    })
    .await;
    assert_eq!(leading["role"], "leader");
    assert_eq!(leading["lease"], true);
    let r = http
        .put(format!("{u}/v1/cache/k"))
        .body("v")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let v = http.get(format!("{u}/v1/cache/k")).send().await.unwrap();
    assert_eq!(v.bytes().await.unwrap().as_ref(), b"v");
    let grant = http
        .post(format!("{u}/v1/locks/a"))
        .body("{\"ttl_ms\": 5000}")
        .send()
        .await
        .unwrap();
    assert_eq!(grant.status().as_u16(), 200);
    // Its peer routes refuse strangers: a token nobody knows was made up for them.
    let peer = http
        .get(format!("{u}/v1/peer/seq"))
        .bearer_auth("")
        .send()
        .await
        .unwrap();
    assert_eq!(peer.status().as_u16(), 401);
    let _ = signal(child.id(), "TERM");
    let _ = child.wait();
}

/// `--replicas 2` end to end: every key stays readable through the other nodes after any one
/// node is SIGKILLed (its keys are served by their replicas).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_replicas_every_key_survives_a_killed_node() {
    let mut c = Cluster::start_with(3, &[("DISTKIT_REPLICAS", "2")]);
    let http = reqwest::Client::new();
    let u0 = c.procs[0].url.clone();
    let start = Instant::now();
    while status(&http, &u0).await.is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "node 0 did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in 0..30 {
        // The peers may still be starting: retry each write a few times.
        let mut stored = false;
        for _ in 0..50 {
            let r = http
                .put(format!("{u0}/v1/cache/device:{i}"))
                .body(format!("state-{i}"))
                .send()
                .await;
            if r.is_ok_and(|r| r.status().as_u16() == 204) {
                stored = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(stored, "device:{i} was not stored");
    }
    c.kill(1);
    for via in [0, 2] {
        let u = c.procs[via].url.clone();
        for i in 0..30 {
            let r = http
                .get(format!("{u}/v1/cache/device:{i}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 200, "device:{i} via node {via}");
            assert_eq!(
                r.bytes().await.unwrap().as_ref(),
                format!("state-{i}").as_bytes()
            );
        }
    }
}

/// The node keeps no state per grant: a lock acquired through one node is extended and
/// released through another (the first version's table leaked, and a client had to come
/// back to the same node). A rejected extend (a zero TTL) changes nothing: the lease is
/// still held and still released with its token (the first version forgot it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_are_released_through_any_node_and_survive_a_rejected_extend() {
    let Some(redis) = distkit_testkit::RedisServer::start().ok() else {
        panic!("redis-server starts (cargo xtask test installs it)");
    };
    let mut c = Cluster::start_with(2, &[("DISTKIT_REDIS", redis.url().as_str())]);
    let http = reqwest::Client::new();
    let (u0, u1) = (c.procs[0].url.clone(), c.procs[1].url.clone());
    let start = Instant::now();
    let grant: Value = loop {
        let r = http
            .post(format!("{u0}/v1/locks/shared"))
            .body("{\"ttl_ms\": 10000}")
            .send()
            .await;
        if let Ok(r) = r
            && r.status().as_u16() == 200
        {
            break r.json().await.unwrap();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "node 0 did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let token = grant["token"].as_str().unwrap().to_owned();
    // Node 1 may still be starting on a loaded machine.
    wait_status(&http, &u1, "node 1 did not start", |_| true).await;
    let zero = http
        .post(format!("{u0}/v1/locks/shared/extend"))
        .body(format!("{{\"token\": \"{token}\", \"ttl_ms\": 0}}"))
        .send()
        .await
        .unwrap();
    assert_eq!(zero.status().as_u16(), 400);
    // Still held: another client cannot take it.
    let other = http
        .post(format!("{u1}/v1/locks/shared"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status().as_u16(), 409);
    let ext = send_json(
        http.post(format!("{u1}/v1/locks/shared/extend"))
            .body(format!("{{\"token\": \"{token}\", \"ttl_ms\": 20000}}")),
    )
    .await;
    assert_eq!(ext["extended"], true, "extended through the other node");
    let rel = send_json(
        http.delete(format!("{u1}/v1/locks/shared"))
            .body(format!("{{\"token\": \"{token}\"}}")),
    )
    .await;
    assert_eq!(rel["released"], true, "released through the other node");
    let again = http
        .post(format!("{u1}/v1/locks/shared"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(again.status().as_u16(), 200);
    c.kill(0);
}

/// The first version granted a lock from a node that was shutting down, and released it a
/// moment later. Now an acquire that is still waiting when shutdown begins gets 503 and
/// leaves nothing held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquire_waiting_at_shutdown_gets_503_and_holds_nothing() {
    let redis = distkit_testkit::RedisServer::start().expect("redis-server starts");
    let c = Cluster::start_with(2, &[("DISTKIT_REDIS", redis.url().as_str())]);
    let http = reqwest::Client::new();
    let (u0, u1) = (c.procs[0].url.clone(), c.procs[1].url.clone());
    // The lock is held through node 1.
    let start = Instant::now();
    let held: Value = loop {
        if let Ok(r) = http
            .post(format!("{u1}/v1/locks/drain"))
            .body("{\"ttl_ms\": 10000}")
            .send()
            .await
            && r.status().as_u16() == 200
        {
            break r.json().await.unwrap();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "node 1 did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    while status(&http, &u0).await.is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "node 0 did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A client waits for it through node 0...
    let waiter = tokio::spawn({
        let (http, u0) = (http.clone(), u0.clone());
        async move {
            http.post(format!("{u0}/v1/locks/drain"))
                .body("{\"wait_ms\": 8000}")
                .send()
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // ...node 0 is told to stop, then the lock comes free.
    let pid = c.procs[0].child.as_ref().unwrap().id();
    signal(pid, "TERM").unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let token = held["token"].as_str().unwrap();
    http.delete(format!("{u1}/v1/locks/drain"))
        .body(format!("{{\"token\": \"{token}\"}}"))
        .send()
        .await
        .unwrap();
    let answer = waiter
        .await
        .unwrap()
        .expect("node 0 answers before it exits");
    assert_eq!(answer.status().as_u16(), 503);
    // Nothing is left held: node 1 grants at once.
    let r = http
        .post(format!("{u1}/v1/locks/drain"))
        .body("{\"wait_ms\": 2000}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

/// One node without peers (in-process locks), started and leading; its data directory lives
/// as long as `dir`.
pub(crate) struct Solo {
    pub(crate) child: Child,
    pub(crate) url: String,
    pub(crate) port: u16,
    pub(crate) http: reqwest::Client,
    pub(crate) dir: tempfile::TempDir,
}

impl Solo {
    pub(crate) async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// With more arguments (`--redis URL`, ...).
    pub(crate) async fn start_with(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = distkit_testkit::free_port().unwrap();
        let child = spawn_solo(port, dir.path(), args);
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        wait_status(&http, &url, "the node did not start and lead", |s| {
            s["leader"].is_string()
        })
        .await;
        Self {
            child,
            url,
            port,
            http,
            dir,
        }
    }
}

fn spawn_solo(port: u16, data: &std::path::Path, args: &[&str]) -> Child {
    node_command()
        .args(["--id", "solo", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .spawn()
        .expect("the node binary starts")
}

/// Found by an outside review: at SIGTERM, clients already waiting for a lock held
/// elsewhere got no answer; the connection was cut when the 10 s drain ran out. They are
/// answered 503 as soon as shutdown begins, and the node exits at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_acquires_are_answered_503_when_shutdown_begins() {
    let Solo {
        mut child,
        url: u,
        port: _,
        http,
        dir: _dir,
    } = Solo::start().await;
    let held = send_json(
        http.post(format!("{u}/v1/locks/busy"))
            .body("{\"ttl_ms\": 30000}"),
    )
    .await;
    assert!(held["token"].is_string());
    let waiters: Vec<_> = (0..5)
        .map(|_| {
            let (http, u) = (http.clone(), u.clone());
            tokio::spawn(async move {
                http.post(format!("{u}/v1/locks/busy"))
                    .body("{\"wait_ms\": 30000}")
                    .send()
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(child.id(), "TERM").unwrap();
    let stopping = Instant::now();
    for w in waiters {
        let answer = w.await.unwrap().expect("an answer, not a cut connection");
        assert_eq!(answer.status().as_u16(), 503);
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["kind"], "unavailable");
    }
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "answered after {:?}",
        stopping.elapsed()
    );
    let _ = child.wait();
}

/// `POST /v1/lock-sets` takes several locks all or none; each is then released by its own
/// name and token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_sets_are_taken_whole_or_not_at_all() {
    let Solo {
        mut child,
        url: u,
        port: _,
        http,
        dir: _dir,
    } = Solo::start().await;
    let set = |names: &str| {
        http.post(format!("{u}/v1/lock-sets"))
            .body(format!("{{\"names\": {names}, \"ttl_ms\": 10000}}"))
    };
    let ab = send_json(set(r#"["b", "a"]"#)).await;
    let locks = ab["locks"].as_array().unwrap();
    assert_eq!(locks.len(), 2);
    assert_eq!(locks[0]["name"], "a", "{ab}");
    assert!(
        locks
            .iter()
            .all(|l| l["fencing_token"].as_u64().unwrap() > 0)
    );
    // b is held: [b, c] is refused, and c is left free.
    let bc = set(r#"["c", "b"]"#).send().await.unwrap();
    assert_eq!(bc.status().as_u16(), 409);
    let c = send_json(http.post(format!("{u}/v1/locks/c")).body("{}")).await;
    assert!(c["token"].is_string(), "c was left free: {c}");
    send_json(http.delete(format!("{u}/v1/locks/c")).body(format!(
        "{{\"token\": \"{}\"}}",
        c["token"].as_str().unwrap()
    )))
    .await;
    for l in locks {
        let r = send_json(
            http.delete(format!("{u}/v1/locks/{}", l["name"].as_str().unwrap()))
                .body(format!(
                    "{{\"token\": \"{}\"}}",
                    l["token"].as_str().unwrap()
                )),
        )
        .await;
        assert_eq!(r["released"], true);
    }
    assert_eq!(
        set(r#"["c", "b"]"#).send().await.unwrap().status().as_u16(),
        200
    );
    for (body, want) in [
        ("[]".to_owned(), 400),
        (r#"["x", "x"]"#.to_owned(), 400),
        (format!("[\"{}\"]", "n".repeat(300)), 413),
    ] {
        let r = set(&body).send().await.unwrap();
        assert_eq!(r.status().as_u16(), want, "{body}");
        let e: Value = r.json().await.unwrap();
        assert!(e["kind"].is_string());
    }
    let _ = signal(child.id(), "TERM");
    let _ = child.wait();
}

/// A second SIGTERM ends a node at once, even while the first one's graceful shutdown is
/// still waiting for a slow request (an outside review found it waited the full 10 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_exits_at_once() {
    use std::io::Write;
    let Solo {
        mut child,
        url: _,
        port,
        http: _,
        dir: _dir,
    } = Solo::start().await;
    // A request whose body is still coming: the graceful shutdown waits for it.
    let mut slow = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    slow.write_all(
        b"PUT /v1/cache/slow HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789",
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    signal(child.id(), "TERM").unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "still draining the slow request"
    );
    signal(child.id(), "TERM").unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "the second SIGTERM was ignored"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(130));
}

/// Found by an outside review: the probes never checked who answered, so a peer list with
/// two URLs swapped (or one pointing back at the node itself) showed every member healthy.
/// Every response names its node; a probe answered by another node reports `wrong_node`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_url_that_reaches_another_node_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let port = distkit_testkit::free_port().unwrap();
    let u = format!("http://127.0.0.1:{port}");
    let mut child = node_command()
        .args(["--id", "a", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--token", TOKEN, "--peer", &format!("b={u}")])
        .arg("--data-dir")
        .arg(dir.path())
        .spawn()
        .expect("the node binary starts");
    let http = reqwest::Client::new();
    let s = wait_status(&http, &u, "member b reported as the wrong node", |s| {
        s["members"][1]["state"] == "wrong_node"
    })
    .await;
    assert_eq!(s["members"][1]["healthy"], false);
    let r = http.get(format!("{u}/healthz")).send().await.unwrap();
    assert_eq!(r.headers()["x-distkit-node"], "a");
    let _ = signal(child.id(), "TERM");
    let _ = child.wait();
}

/// Slowloris: the first version let one client that never finished its headers keep a node
/// alive 30 to 62 s after SIGTERM, and closed none of 200 such clients in 30 s. Headers must
/// now arrive within 5 s, and shutdown is bounded as a whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_are_cut_and_cannot_hold_shutdown() {
    use std::io::{Read, Write};
    let Solo {
        mut child,
        url: u,
        port,
        http,
        dir: _dir,
    } = Solo::start().await;
    let slow = |n: usize| -> Vec<std::net::TcpStream> {
        (0..n)
            .map(|_| {
                let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                    .unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                s
            })
            .collect()
    };
    // Each slow client is disconnected once the header time is up (5 s), with no shutdown.
    let mut first = slow(20);
    let cut = Instant::now();
    for s in &mut first {
        let mut buf = [0u8; 256];
        // EOF, a reset, or a 408 written before the close: anything but a hang.
        let _ = s.read(&mut buf);
    }
    assert!(
        cut.elapsed() < Duration::from_secs(9),
        "slow clients held on for {:?}",
        cut.elapsed()
    );
    // Meanwhile the node serves everyone else.
    assert!(status(&http, &u).await.is_some());
    // A fresh batch of slow clients cannot hold shutdown open.
    let _second = slow(20);
    signal(child.id(), "TERM").unwrap();
    let stopping = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        assert!(
            stopping.elapsed() < Duration::from_secs(12),
            "the node was still running {:?} after SIGTERM",
            stopping.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The first version let a node with the wrong cluster token go unnoticed: every member
/// showed healthy in /v1/cluster and nothing was logged. Now the members report it
/// (`"state": "token_refused"`) and count it in a metric. /v1/cluster answers from the
/// background probes' state, so a hung peer no longer slows it down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_cluster_token_is_reported_and_cluster_status_does_not_block() {
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<u16> = (0..3)
        .map(|_| distkit_testkit::free_port().unwrap())
        .collect();
    let mut children: Vec<Child> = (0..3)
        .map(|i| {
            let token = if i == 2 { "a-wrong-token" } else { TOKEN };
            spawn_full(&ports, i, &dir.path().join(format!("n{i}")), &[], token)
        })
        .collect();
    let http = reqwest::Client::new();
    let u0 = format!("http://127.0.0.1:{}", ports[0]);
    let start = Instant::now();
    let refused = loop {
        if let Some(s) = status(&http, &u0).await {
            let m = s["members"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["id"] == "node-2")
                .cloned()
                .unwrap();
            if m["state"] == "token_refused" {
                break m;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "node 0 never reported node 2's token"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(refused["healthy"], false);
    let metrics = get_text(&http, format!("{u0}/metrics")).await;
    assert!(
        metrics.contains("distkit_node_peer_auth_failures_total{peer=\"node-2\"}"),
        "{metrics}"
    );
    // A hung peer: /v1/cluster still answers from the probes' state.
    signal(children[1].id(), "STOP").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let t = Instant::now();
    for _ in 0..5 {
        let s = status(&http, &u0).await.unwrap();
        assert!(s["members"].as_array().unwrap().len() == 3);
    }
    // The first version probed inline, 300 ms a hung peer each time.
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    let s = status(&http, &u0).await.unwrap();
    let n1 = s["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "node-1")
        .cloned()
        .unwrap();
    assert_eq!(n1["state"], "unreachable");
    signal(children[1].id(), "CONT").unwrap();
    for c in &mut children {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// `--dev`: one node, in-process locks, data in a temporary directory, leader at once; a lock
/// and a cache round trip work. With no arguments at all the node says what to do and exits
/// with 2, creating nothing (the first version created a data directory and exited 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_serves_at_once_and_no_arguments_says_what_to_do() {
    let cwd = tempfile::tempdir().unwrap();
    let bare = Command::new(NODE)
        .current_dir(cwd.path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .output()
        .expect("the node binary runs");
    assert_eq!(bare.status.code(), Some(2));
    let said = String::from_utf8_lossy(&bare.stderr);
    assert!(
        said.contains("--dev") && said.contains("--config"),
        "{said}"
    );
    assert_eq!(
        std::fs::read_dir(cwd.path()).unwrap().count(),
        0,
        "it created files"
    );

    let port = distkit_testkit::free_port().unwrap();
    // Logs as JSON lines at debug: the access log is there, the HTTP pool chatter is not.
    let logs = tempfile::NamedTempFile::new().unwrap();
    let mut child = node_command()
        .current_dir(cwd.path())
        .args(["--dev", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--log-format", "json"])
        .env("RUST_LOG", "debug")
        .stderr(logs.reopen().unwrap())
        .spawn()
        .expect("the node binary starts");
    let u = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let s = wait_status(&http, &u, "dev mode did not lead", |s| s["leader"] == "dev").await;
    assert_eq!(s["lock_backend"], "in-process");
    let put = http
        .put(format!("{u}/v1/cache/greeting"))
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status().as_u16(), 204);
    let got = http
        .get(format!("{u}/v1/cache/greeting"))
        .send()
        .await
        .unwrap();
    assert_eq!(got.bytes().await.unwrap().as_ref(), b"hello");
    let grant = send_json(http.post(format!("{u}/v1/locks/dev-lock")).body("{}")).await;
    let token = grant["token"].as_str().unwrap();
    let rel = send_json(
        http.delete(format!("{u}/v1/locks/dev-lock"))
            .body(format!("{{\"token\": \"{token}\"}}")),
    )
    .await;
    assert_eq!(rel["released"], true);
    // Its data went to a temporary directory, not the working one.
    assert_eq!(std::fs::read_dir(cwd.path()).unwrap().count(), 0);
    let _ = signal(child.id(), "TERM");
    let _ = child.wait();
    let text = std::fs::read_to_string(logs.path()).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines.iter().any(|l| l["target"] == "distkit_node::access"
            && l["fields"]["route"] == "/v1/cache/{key}"
            && l["fields"]["status"] == 204),
        "an access log line for the PUT: {text}"
    );
    let chatter: Vec<&Value> = lines
        .iter()
        .filter(|l| {
            l["target"].as_str().is_some_and(|t| {
                ["hyper", "reqwest", "h2", "rustls"]
                    .iter()
                    .any(|q| t.starts_with(q))
            })
        })
        .collect();
    assert!(chatter.is_empty(), "HTTP internals at debug: {chatter:?}");
}

/// The metrics an operator expects from etcd-like systems: every family has a HELP line,
/// HTTP latency is a histogram (not a summary), and the figures move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_have_help_lines_histograms_and_move() {
    let Solo {
        mut child,
        url: u,
        port: _,
        http,
        dir: _dir,
    } = Solo::start().await;
    let scrape = || async {
        http.get(format!("{u}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let count = |text: &str, line_start: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let before = scrape().await;
    for family in [
        "distkit_node_http_requests_total",
        "distkit_node_http_request_seconds",
        "distkit_election_is_leader",
        "distkit_election_has_leader",
        "distkit_election_term",
        "distkit_election_leader_changes_total",
        "distkit_process_uptime_seconds",
        "distkit_process_resident_memory_bytes",
        "distkit_process_open_fds",
    ] {
        assert!(
            before.contains(&format!("# HELP {family} ")),
            "no HELP for {family}:\n{before}"
        );
    }
    assert!(
        before.contains("# TYPE distkit_node_http_request_seconds histogram"),
        "{before}"
    );
    assert_eq!(count(&before, "distkit_election_is_leader "), 1.0);
    assert!(count(&before, "distkit_election_term ") >= 1.0);
    let cluster_route = "distkit_node_http_requests_total{route=\"/v1/cluster\",status=\"200\"}";
    let seen = count(&before, cluster_route);
    assert!(seen >= 1.0, "{before}");
    for _ in 0..3 {
        status(&http, &u).await.unwrap();
    }
    let grant = http
        .post(format!("{u}/v1/locks/m"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(grant.status().as_u16(), 200);
    let grant_body: Value = grant.json().await.unwrap();
    let after = scrape().await;
    assert_eq!(
        count(&after, cluster_route),
        seen + 3.0,
        "the request count did not move"
    );
    assert_eq!(
        count(
            &after,
            "distkit_node_lock_acquires_total{result=\"granted\"}"
        ),
        1.0
    );
    // Keys never become labels: routes are patterns.
    assert!(!after.contains("route=\"/v1/locks/m\""), "{after}");
    assert!(
        count(&after, "distkit_node_lock_wait_seconds_count") >= 1.0,
        "{after}"
    );
    // The Grafana dashboard in docs/ plots only families the node writes (each with HELP).
    let token = grant_body["token"].as_str().unwrap();
    http.delete(format!("{u}/v1/locks/m"))
        .body(format!("{{\"token\": \"{token}\"}}"))
        .send()
        .await
        .unwrap();
    let scraped = scrape().await;
    let dashboard: Value =
        serde_json::from_str(include_str!("../../docs/ops/grafana-distkit-node.json")).unwrap();
    let mut families = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("distkit_") {
                    families.insert(word.trim_end_matches("_bucket").to_owned());
                }
            }
        }
    }
    assert!(families.len() >= 15, "{families:?}");
    for family in &families {
        // Counted only when a peer refuses the token: this node has no peers.
        if family == "distkit_node_peer_auth_failures_total" {
            continue;
        }
        assert!(
            scraped.contains(&format!("# HELP {family} ")),
            "the dashboard plots {family}, which the node does not write:\n{scraped}"
        );
    }
    let _ = signal(child.id(), "TERM");
    let _ = child.wait();
}

/// Client authentication: with a token file, a request without a listed token gets 401 on
/// every public route (the probes stay open), and a read token cannot write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_tokens_guard_the_public_api_by_scope() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("clients");
    std::fs::write(
        &tokens,
        "# who may do what\nread reader-token-0123\nwrite writer-token-0123\n",
    )
    .unwrap();
    let port = distkit_testkit::free_port().unwrap();
    let mut child = node_command()
        .args(["--id", "solo", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--client-tokens")
        .arg(&tokens)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .spawn()
        .expect("the node binary starts");
    let u = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let start = Instant::now();
    while http.get(format!("{u}/healthz")).send().await.is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the node did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let code = |r: reqwest::Response| r.status().as_u16();
    // No token, or a wrong one: 401 everywhere but the probes.
    for bad in [None, Some("nope")] {
        let with = |rb: reqwest::RequestBuilder| match bad {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        };
        for req in [
            with(http.get(format!("{u}/v1/cluster"))),
            with(http.get(format!("{u}/metrics"))),
            with(http.get(format!("{u}/v1/cache/k"))),
            with(http.put(format!("{u}/v1/cache/k")).body("v")),
            with(http.delete(format!("{u}/v1/cache/k"))),
            with(http.post(format!("{u}/v1/locks/l")).body("{}")),
            with(http.delete(format!("{u}/v1/locks/l")).body("{}")),
            with(http.post(format!("{u}/v1/locks/l/extend")).body("{}")),
        ] {
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status().as_u16(), 401);
            let body: Value = resp.json().await.unwrap();
            assert_eq!(body["kind"], "unauthorized");
        }
    }
    assert_eq!(
        code(http.get(format!("{u}/healthz")).send().await.unwrap()),
        200
    );
    // A refusal says how to authenticate; the scheme's case does not matter.
    let refused = http.get(format!("{u}/v1/cluster")).send().await.unwrap();
    assert_eq!(refused.status().as_u16(), 401);
    assert!(
        refused
            .headers()
            .get("www-authenticate")
            .is_some_and(|v| v.as_bytes().starts_with(b"Bearer")),
        "{:?}",
        refused.headers()
    );
    let lower = http
        .get(format!("{u}/v1/cluster"))
        .header("authorization", "bearer reader-token-0123")
        .send()
        .await
        .unwrap();
    assert_eq!(lower.status().as_u16(), 200);
    // A read token reads, and cannot write.
    let r = |rb: reqwest::RequestBuilder| rb.bearer_auth("reader-token-0123");
    assert_eq!(
        code(r(http.get(format!("{u}/v1/cluster"))).send().await.unwrap()),
        200
    );
    assert_eq!(
        code(r(http.get(format!("{u}/v1/cache/k"))).send().await.unwrap()),
        404
    );
    let denied = r(http.put(format!("{u}/v1/cache/k")).body("v"))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status().as_u16(), 403);
    let body: Value = denied.json().await.unwrap();
    assert_eq!(body["kind"], "forbidden");
    assert_eq!(
        code(
            r(http.post(format!("{u}/v1/locks/l")).body("{}"))
                .send()
                .await
                .unwrap()
        ),
        403
    );
    // A write token does both.
    let w = |rb: reqwest::RequestBuilder| rb.bearer_auth("writer-token-0123");
    assert_eq!(
        code(
            w(http.put(format!("{u}/v1/cache/k")).body("v"))
                .send()
                .await
                .unwrap()
        ),
        204
    );
    assert_eq!(
        code(r(http.get(format!("{u}/v1/cache/k"))).send().await.unwrap()),
        200
    );
    assert_eq!(
        code(
            w(http.post(format!("{u}/v1/locks/l")).body("{}"))
                .send()
                .await
                .unwrap()
        ),
        200
    );
    let _ = signal(child.id(), "TERM");
    let _ = child.wait();
}

/// SIGKILLs nodes however a test ends (a failed assertion included).
struct Reap(Vec<u32>);

impl Drop for Reap {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = signal(*pid, "KILL");
        }
    }
}

/// One request with a JSON body; its status and JSON answer.
async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Value,
) -> (u16, Value) {
    let resp = http.request(method, url).json(&body).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

/// Every route of the lock family on one node: status codes, bodies, fencing order.
async fn family_routes(http: &reqwest::Client, u: &str) {
    use reqwest::Method;
    let post = |path: &str, body: Value| call(http, Method::POST, format!("{u}{path}"), body);
    let delete = |path: &str, body: Value| call(http, Method::DELETE, format!("{u}{path}"), body);
    let put = |path: &str, body: Value| call(http, Method::PUT, format!("{u}{path}"), body);
    let ok = |(status, v): (u16, Value)| {
        assert_eq!(status, 200, "{v}");
        v
    };
    // Fair lock.
    let a = ok(post("/v1/fair-locks/f", json!({"ttl_ms": 5000})).await);
    assert_eq!(post("/v1/fair-locks/f", json!({"wait_ms": 0})).await.0, 409);
    let ext = ok(post(
        "/v1/fair-locks/f/extend",
        json!({"token": a["token"], "ttl_ms": 8000}),
    )
    .await);
    assert_eq!(ext["extended"], true);
    let rel = ok(delete("/v1/fair-locks/f", json!({"token": a["token"]})).await);
    assert_eq!(rel["released"], true);
    // A fair lock and a plain lock of one name exclude each other, on both backends.
    let f = ok(post("/v1/fair-locks/shared-name", json!({})).await);
    assert_eq!(post("/v1/locks/shared-name", json!({})).await.0, 409);
    let rel = ok(delete("/v1/locks/shared-name", json!({"token": f["token"]})).await);
    assert_eq!(rel["released"], true, "one lock, one token");
    // Read-write lock.
    let r1 = ok(post("/v1/rwlocks/doc/read", json!({})).await);
    let r2 = ok(post("/v1/rwlocks/doc/read", json!({})).await);
    assert!(r2["fencing_token"].as_u64() > r1["fencing_token"].as_u64());
    assert_eq!(post("/v1/rwlocks/doc/write", json!({})).await.0, 409);
    for r in [&r1, &r2] {
        let rel = ok(delete("/v1/rwlocks/doc/read", json!({"token": r["token"]})).await);
        assert_eq!(rel["released"], true);
    }
    // The writer's token does not release a reader's lease, nor the other way round.
    let w = ok(post("/v1/rwlocks/doc/write", json!({"wait_ms": 1000})).await);
    assert!(w["fencing_token"].as_u64() > r2["fencing_token"].as_u64());
    assert_eq!(post("/v1/rwlocks/doc/read", json!({})).await.0, 409);
    let wrong = ok(delete("/v1/rwlocks/doc/read", json!({"token": w["token"]})).await);
    assert_eq!(wrong["released"], false);
    let ext = ok(post(
        "/v1/rwlocks/doc/write/extend",
        json!({"token": w["token"], "ttl_ms": 5000}),
    )
    .await);
    assert_eq!(ext["extended"], true);
    let rel = ok(delete("/v1/rwlocks/doc/write", json!({"token": w["token"]})).await);
    assert_eq!(rel["released"], true);
    // Semaphore.
    ok(put("/v1/semaphores/pool", json!({"permits": 2})).await);
    let two = ok(post("/v1/semaphores/pool", json!({"permits": 2})).await);
    assert_eq!(two["permits"], 2);
    assert_eq!(post("/v1/semaphores/pool", json!({})).await.0, 409);
    let state: Value = send_json(http.get(format!("{u}/v1/semaphores/pool"))).await;
    assert_eq!(state, json!({"limit": 2, "in_use": 2}));
    let rel = ok(delete("/v1/semaphores/pool", json!({"token": two["token"]})).await);
    assert_eq!(rel["released"], true);
    let state: Value = send_json(http.get(format!("{u}/v1/semaphores/pool"))).await;
    assert_eq!(state, json!({"limit": 2, "in_use": 0}));
    // Bad input: typed 4xx with a JSON body.
    for (path, body) in [
        ("/v1/semaphores/pool", json!({"permits": 0})),
        ("/v1/locks/plain", json!({"permits": 2})),
        ("/v1/fair-locks/f", json!({"permits": 2})),
        ("/v1/semaphores/pool", json!({"permits": -1})),
        ("/v1/semaphores/pool", json!({"permits": 4294967296u64})),
    ] {
        let (status, v) = post(path, body.clone()).await;
        assert_eq!(status, 400, "{path} {body}");
        assert!(v["error"].is_object() || v["error"].is_string(), "{v}");
    }
    for body in [json!({}), json!({"permits": 0})] {
        assert_eq!(
            put("/v1/semaphores/pool", body.clone()).await.0,
            400,
            "{body}"
        );
    }
}

/// The lock family over HTTP, on the in-process backend and on Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_family_is_served_over_http_on_both_backends() {
    let solo = Solo::start().await;
    let mut reap = Reap(vec![solo.child.id()]);
    family_routes(&solo.http, &solo.url).await;
    let redis = distkit_testkit::RedisServer::start().unwrap();
    let url = redis.url();
    let on_redis = Solo::start_with(&["--redis", &url]).await;
    reap.0.push(on_redis.child.id());
    family_routes(&on_redis.http, &on_redis.url).await;
    // A second node on the same Redis sees the same leases.
    let other = Solo::start_with(&["--redis", &url]).await;
    reap.0.push(other.child.id());
    let held: Value = send_json(
        on_redis
            .http
            .post(format!("{}/v1/rwlocks/shared/write", on_redis.url))
            .json(&json!({})),
    )
    .await;
    let there = other
        .http
        .post(format!("{}/v1/rwlocks/shared/read", other.url))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(there.status(), 409, "the other node sees the writer");
    let rel: Value = send_json(
        other
            .http
            .delete(format!("{}/v1/rwlocks/shared/write", other.url))
            .json(&json!({"token": held["token"]})),
    )
    .await;
    assert_eq!(rel["released"], true, "released through the other node");
    drop(reap);
    for mut c in [solo.child, on_redis.child, other.child] {
        let _ = c.wait();
    }
}

/// A node pointed at a Redis Sentinel deployment (`--redis-sentinel`, `--redis-master`,
/// `--redis-min-replicas 1`) serves locks, and keeps serving them through a SIGKILL of the
/// primary: an acquire waiting through the failover is granted on the new primary with a
/// larger fencing token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_on_redis_sentinel_serves_locks_through_a_failover() {
    let mut setup = distkit_testkit::SentinelSetup::start(2, 3).unwrap();
    let sentinels = setup.sentinel_urls().join(",");
    let solo = Solo::start_with(&[
        "--redis-sentinel",
        &sentinels,
        "--redis-master",
        distkit_testkit::SENTINEL_MASTER,
        "--redis-min-replicas",
        "1",
    ])
    .await;
    let reap = Reap(vec![solo.child.id()]);
    let (http, u) = (&solo.http, &solo.url);
    let cluster: Value = send_json(http.get(format!("{u}/v1/cluster"))).await;
    assert_eq!(cluster["lock_backend"], "redis-sentinel", "{cluster}");
    let first: Value = send_json(
        http.post(format!("{u}/v1/locks/ota"))
            .json(&json!({"ttl_ms": 2000})),
    )
    .await;
    let first_fence = first["fencing_token"].as_u64().expect("granted");
    let killed = setup.kill_primary().unwrap();
    // Waits through the failover: the acknowledged lease survives the promotion and runs
    // out, then the lock is granted on the new primary. (When two sentinels promote two
    // replicas, grants are refused until they agree, about 20 s: the wait allows a minute.)
    let next = http
        .post(format!("{u}/v1/locks/ota"))
        .json(&json!({"ttl_ms": 2000, "wait_ms": 60000}))
        .send()
        .await
        .unwrap();
    let status = next.status();
    let next: Value = next.json().await.unwrap();
    assert_eq!(status, 200, "{next}");
    assert!(next["fencing_token"].as_u64().unwrap() > first_fence);
    assert_ne!(setup.primary_port(), Some(killed));
    drop(reap);
    let mut child = solo.child;
    let _ = child.wait();
}

/// A node on a Redis Cluster (`--redis-cluster`) serves every lock kind over HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_on_redis_cluster_serves_every_lock_kind() {
    let cluster = distkit_testkit::RedisCluster::start(3, 1).unwrap();
    let nodes = cluster.urls().join(",");
    let solo = Solo::start_with(&["--redis-cluster", &nodes]).await;
    let reap = Reap(vec![solo.child.id()]);
    let status: Value = send_json(solo.http.get(format!("{}/v1/cluster", solo.url))).await;
    assert_eq!(status["lock_backend"], "redis-cluster", "{status}");
    family_routes(&solo.http, &solo.url).await;
    drop(reap);
    let mut child = solo.child;
    let _ = child.wait();
}
