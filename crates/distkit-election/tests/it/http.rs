use std::sync::Arc;
use std::time::{Duration, Instant};

use distkit_core::{LeaderElector, NodeId, Role, Term};
use distkit_election::{
    Config, Elector, FileVoteStore, HttpTransport, MemoryVoteStore, VoteStore, http_router,
};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

const TOKEN: &str = "test-cluster-token";

struct Node {
    elector: Elector,
    server: JoinHandle<()>,
    url: String,
}

struct Cluster {
    ids: Vec<NodeId>,
    urls: Vec<String>,
    nodes: Vec<Option<Node>>,
}

impl Cluster {
    async fn start(n: usize) -> Self {
        let ids: Vec<NodeId> = (0..n)
            .map(|i| NodeId::new(format!("node-{i}")).unwrap())
            .collect();
        let (listeners, urls) = distkit_testkit::loopback_listeners(n).unwrap();
        let listeners = listeners
            .into_iter()
            .map(|l| TcpListener::from_std(l).unwrap());
        let mut c = Self {
            ids,
            urls,
            nodes: Vec::new(),
        };
        for (i, l) in listeners.into_iter().enumerate() {
            let node = c.start_node(i, l, Arc::new(MemoryVoteStore::new()));
            c.nodes.push(Some(node));
        }
        c
    }

    fn start_node(&self, i: usize, listener: TcpListener, store: Arc<dyn VoteStore>) -> Node {
        let peers: Vec<(NodeId, String)> = (0..self.ids.len())
            .filter(|&j| j != i)
            .map(|j| (self.ids[j].clone(), self.urls[j].clone()))
            .collect();
        let transport =
            HttpTransport::new(peers.clone(), TOKEN, Duration::from_millis(200)).unwrap();
        let cfg = Config::builder(self.ids[i].clone(), peers.into_iter().map(|(id, _)| id))
            .build()
            .unwrap();
        let elector = Elector::start(cfg, store, Arc::new(transport)).unwrap();
        let app = http_router(elector.inbox(), TOKEN);
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Node {
            elector,
            server,
            url: self.urls[i].clone(),
        }
    }

    async fn crash(&mut self, i: usize) {
        if let Some(n) = self.nodes[i].take() {
            n.server.abort();
            let _ = n.server.await; // the listener is closed once the task is gone
            n.elector.shutdown().await;
        }
    }

    fn live(&self) -> impl Iterator<Item = (usize, &Node)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.as_ref().map(|n| (i, n)))
    }

    /// Samples every live node; panics if two lead the same term.
    fn check_one_leader_per_term(&self) -> Option<(usize, Term)> {
        let mut leaders: Vec<(usize, Term)> = self
            .live()
            .filter_map(|(i, n)| {
                let l = n.elector.leadership();
                (l.role == Role::Leader).then_some((i, l.term))
            })
            .collect();
        leaders.sort_by_key(|(_, t)| *t);
        for w in leaders.windows(2) {
            assert_ne!(w[0].1, w[1].1, "two leaders in term {}", w[0].1);
        }
        leaders.last().copied()
    }

    async fn wait_leader(&self, limit: Duration, not: Option<usize>) -> (usize, Term, Duration) {
        let start = Instant::now();
        loop {
            if let Some((i, t)) = self.check_one_leader_per_term()
                && Some(i) != not
            {
                return (i, t, start.elapsed());
            }
            assert!(start.elapsed() < limit, "no leader within {limit:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_http_nodes_elect_one_leader_and_replace_a_crashed_one() {
    let mut c = Cluster::start(5).await;
    let (leader, term, _) = c.wait_leader(Duration::from_secs(5), None).await;
    // Followers learn who leads.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (i, n) in c.live() {
        let l = n.elector.leadership();
        assert_eq!(l.leader.as_ref(), Some(&c.ids[leader]), "node {i}");
        assert_eq!(l.term, term);
    }
    assert!(
        c.nodes[leader]
            .as_ref()
            .unwrap()
            .elector
            .is_leader_with_lease()
    );
    for (i, n) in c.live() {
        if i != leader {
            assert!(!n.elector.is_leader_with_lease());
        }
    }
    c.crash(leader).await;
    let (next, next_term, took) = c.wait_leader(Duration::from_secs(3), Some(leader)).await;
    assert_ne!(next, leader);
    assert!(next_term > term);
    assert!(took < Duration::from_secs(1), "failover took {took:?}");
    // Keep sampling for a while: never two leaders in one term.
    for _ in 0..100 {
        c.check_one_leader_per_term();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resign_and_transfer_hand_over() {
    let c = Cluster::start(3).await;
    let (leader, term, _) = c.wait_leader(Duration::from_secs(5), None).await;
    let l = &c.nodes[leader].as_ref().unwrap().elector;
    l.resign().await.unwrap();
    assert!(!l.is_leader(), "resign steps down at once");
    assert!(!l.is_leader_with_lease());
    let (next, t2, took) = c.wait_leader(Duration::from_secs(3), Some(leader)).await;
    assert!(t2 > term);
    assert!(took < Duration::from_millis(500), "hand-over took {took:?}");
    let target = (0..3).find(|&i| i != next).unwrap();
    let e = &c.nodes[next].as_ref().unwrap().elector;
    e.transfer_to(&c.ids[target]).await.unwrap();
    let start = Instant::now();
    loop {
        if let Some((i, _)) = c.check_one_leader_per_term()
            && i == target
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "transfer did not complete"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        e.transfer_to(&NodeId::new("stranger").unwrap())
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_http_input_is_refused_without_state_change() {
    let c = Cluster::start(3).await;
    let (leader, term, _) = c.wait_leader(Duration::from_secs(5), None).await;
    let follower = (leader + 1) % 3;
    let url = format!(
        "{}{}",
        c.nodes[follower].as_ref().unwrap().url,
        distkit_election::MESSAGE_PATH
    );
    let http = reqwest::Client::new();
    let vote = |from: &str, to: &str| serde_json::json!({"from": from, "to": to, "msg": {"type": "vote", "term": 1_000_000, "transfer": true}});
    let to = c.ids[follower].as_str();
    let cases: Vec<(reqwest::RequestBuilder, u16)> = vec![
        (http.post(&url).json(&vote("node-0", to)), 401),
        (http.post(&url).bearer_auth("wrong").json(&vote("node-0", to)), 401),
        (http.post(&url).bearer_auth(TOKEN).header("content-type", "application/json").body("{not json"), 400),
        (http.post(&url).bearer_auth(TOKEN).json(&vote("intruder", to)), 400),
        (http.post(&url).bearer_auth(TOKEN).json(&vote("node-0", "someone-else")), 400),
        (http.post(&url).bearer_auth(TOKEN).header("content-type", "application/json").body(vec![b' '; 64 * 1024]), 413),
        (http.post(&url).bearer_auth(TOKEN).json(&serde_json::json!({"from": "node-0", "to": to, "msg": {"type": "vote", "term": -1}})), 400),
        // A wrong method gets the JSON error body too.
        (http.get(&url).bearer_auth(TOKEN), 405),
        (http.put(&url).bearer_auth(TOKEN).body("{}"), 405),
        // Terms above Term::MAX (2^63 - 1) are refused before they reach the core.
        (http.post(&url).bearer_auth(TOKEN).json(&serde_json::json!({"from": "node-0", "to": to, "msg": {"type": "vote", "term": u64::MAX, "transfer": true}})), 400),
        (http.post(&url).bearer_auth(TOKEN).json(&serde_json::json!({"from": "node-0", "to": to, "msg": {"type": "heartbeat", "term": 1u64 << 63, "sent_at_us": 0}})), 400),
    ];
    for (i, (req, want)) in cases.into_iter().enumerate() {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), want, "case {i}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert!(body["error"].is_string(), "case {i}: JSON error body");
        assert!(body["kind"].is_string(), "case {i}: the error's kind");
    }
    // The huge-term vote from a stranger or without a token changed nothing.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (now_leader, now_term, _) = c.wait_leader(Duration::from_secs(1), None).await;
    assert_eq!((now_leader, now_term), (leader, term));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_keeps_its_persisted_term_and_vote() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(3).await;
    let (leader, _, _) = c.wait_leader(Duration::from_secs(5), None).await;
    let victim = (leader + 1) % 3;
    // Replace the victim with a node on a file store, let it take part, then restart it.
    c.crash(victim).await;
    let path = dir.path().join("vote.json");
    let addr = c.urls[victim].trim_start_matches("http://").to_owned();
    let listener = TcpListener::bind(&addr).await.unwrap();
    c.nodes[victim] = Some(c.start_node(victim, listener, Arc::new(FileVoteStore::new(&path))));
    // Force an election so the victim votes and persists.
    let l = c.nodes[leader].as_ref().unwrap().elector.clone();
    l.resign().await.unwrap();
    let (_, term, _) = c.wait_leader(Duration::from_secs(3), Some(leader)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let saved = FileVoteStore::new(&path).load().unwrap();
    assert!(
        saved.term >= term,
        "persisted term {} < {}",
        saved.term,
        term
    );
    c.crash(victim).await;
    let listener = TcpListener::bind(&addr).await.unwrap();
    c.nodes[victim] = Some(c.start_node(victim, listener, Arc::new(FileVoteStore::new(&path))));
    let restarted = c.nodes[victim].as_ref().unwrap().elector.leadership();
    assert!(
        restarted.term >= saved.term,
        "restarted at term {}",
        restarted.term
    );
    let reloaded = FileVoteStore::new(&path).load().unwrap();
    assert!(reloaded.term >= saved.term);
    if reloaded.term == saved.term {
        assert_eq!(
            reloaded.voted_for, saved.voted_for,
            "no second vote in the same term"
        );
    }
}

#[tokio::test]
async fn a_corrupt_vote_file_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vote.json");
    std::fs::write(&path, b"{\"version\":1,\"term\":3").unwrap();
    let (a, b) = (NodeId::new("a").unwrap(), NodeId::new("b").unwrap());
    let t = HttpTransport::new(
        [(b.clone(), "http://127.0.0.1:9".into())],
        TOKEN,
        Duration::from_millis(50),
    )
    .unwrap();
    let cfg = Config::builder(a, [b]).build().unwrap();
    let e = Elector::start(cfg, Arc::new(FileVoteStore::new(&path)), Arc::new(t)).unwrap_err();
    assert!(matches!(e, distkit_core::Error::Storage { .. }), "{e}");
}

#[test]
fn transport_settings_are_checked() {
    let b = NodeId::new("b").unwrap();
    assert!(
        HttpTransport::new(
            [(b.clone(), "http://x:1".into())],
            "",
            Duration::from_secs(1)
        )
        .is_err()
    );
    assert!(
        HttpTransport::new([(b.clone(), "ftp://x".into())], "t", Duration::from_secs(1)).is_err()
    );
    assert!(HttpTransport::new([(b, "http://x:1".into())], "t", Duration::ZERO).is_err());
}
