//! Who owns the background work: every task an elector starts ends with `shutdown`, or with
//! the last handle, inside or outside a runtime; `resign` means one thing on both electors.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use distkit_core::{Error, LeaderElector, NodeId, Role};
use distkit_election::{
    Config, Elector, Envelope, HttpTransport, Inbox, LeaseElection, MemoryVoteStore, Transport,
};
use distkit_testkit::{RedisServer, tasks};

/// Delivers straight into the other electors' inboxes: no sockets, so every task alive is
/// one the electors started.
#[derive(Debug, Default)]
struct InMemory {
    inboxes: OnceLock<HashMap<NodeId, Inbox>>,
}

#[async_trait]
impl Transport for InMemory {
    async fn send(&self, envelope: Envelope) -> Result<(), Error> {
        let inbox = self
            .inboxes
            .get()
            .and_then(|m| m.get(&envelope.to))
            .ok_or_else(|| Error::invalid_input("peer", "unknown"))?;
        inbox.deliver(envelope)
    }
}

fn ids(n: usize) -> Vec<NodeId> {
    (0..n)
        .map(|i| NodeId::new(format!("n{i}")).unwrap())
        .collect()
}

fn start_cluster(n: usize) -> Vec<Elector> {
    let ids = ids(n);
    let transport = Arc::new(InMemory::default());
    let electors: Vec<Elector> = ids
        .iter()
        .map(|id| {
            let peers = ids.iter().filter(|p| *p != id).cloned();
            let cfg = Config::builder(id.clone(), peers).build().unwrap();
            Elector::start(cfg, Arc::new(MemoryVoteStore::new()), transport.clone()).unwrap()
        })
        .collect();
    let inboxes = electors
        .iter()
        .map(|e| (e.id().clone(), e.inbox()))
        .collect();
    transport.inboxes.set(inboxes).unwrap();
    electors
}

async fn wait_leader(es: &[Elector]) -> usize {
    for _ in 0..400 {
        if let Some(i) = es.iter().position(LeaderElector::is_leader) {
            return i;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("no leader within 2 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_the_driver_and_every_peer_sender() {
    let base = tasks::alive();
    let es = start_cluster(3);
    wait_leader(&es).await;
    // Three drivers; the leader's sender to each follower, each follower's to the leader.
    assert!(tasks::alive() >= base + 3 + 4, "{}", tasks::alive());
    for e in &es {
        e.shutdown().await;
        assert!(e.has_ended());
        // Twice, and from a clone, returns at once.
        e.clone().shutdown().await;
    }
    tasks::settle(base, Duration::from_secs(2))
        .await
        .unwrap_or_else(|n| panic!("{n} tasks alive after shutdown, {base} before"));
    // A stopped elector refuses politely.
    assert!(es[0].resign().await.is_err());
    assert!(
        es[0]
            .inbox()
            .deliver(Envelope {
                from: es[1].id().clone(),
                to: es[0].id().clone(),
                msg: distkit_election::Message::PreVote {
                    term: distkit_core::Term::new(9)
                },
            })
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_handle_ends_the_tasks() {
    let base = tasks::alive();
    let es = start_cluster(3);
    wait_leader(&es).await;
    drop(es);
    tasks::settle(base, Duration::from_secs(2))
        .await
        .unwrap_or_else(|n| panic!("{n} tasks alive after the drop, {base} before"));
}

#[test]
fn an_elector_dropped_outside_a_runtime_ends_its_tasks() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (base, es) = rt.block_on(async {
        let base = tasks::alive();
        let es = start_cluster(3);
        wait_leader(&es).await;
        (base, es)
    });
    drop(es); // no runtime context here
    rt.block_on(async {
        tasks::settle(base, Duration::from_secs(2))
            .await
            .unwrap_or_else(|n| panic!("{n} tasks alive, {base} before"));
    });
    // Starting outside a runtime is a typed error, not a panic.
    let cfg = Config::builder(NodeId::new("x").unwrap(), [])
        .build()
        .unwrap();
    let r = Elector::start(
        cfg,
        Arc::new(MemoryVoteStore::new()),
        Arc::new(InMemory::default()),
    );
    assert!(matches!(r, Err(Error::Unavailable { .. })), "{r:?}");
}

/// The first wave refused a cluster of one; etcd and Consul allow it, and so does the
/// elector: it leads at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_elector_without_peers_leads_at_once() {
    let id = NodeId::new("solo").unwrap();
    let cfg = Config::builder(id.clone(), []).build().unwrap();
    let transport = HttpTransport::new(Vec::new(), "token", Duration::from_millis(100)).unwrap();
    let e = Elector::start(cfg, Arc::new(MemoryVoteStore::new()), Arc::new(transport)).unwrap();
    let mut rx = e.subscribe();
    tokio::time::timeout(Duration::from_secs(1), rx.wait_for(|l| l.is_leader()))
        .await
        .expect("leads within a second")
        .unwrap();
    assert_eq!(e.leader_id(), Some(id));
    assert!(e.is_leader_with_lease());
    e.shutdown().await;
}

/// `resign` on a node that does not lead does nothing, now or later: the first wave's lease
/// election stored the request and resigned at its next win.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resign_while_following_is_not_kept_for_later() {
    // The Raft elector.
    let es = start_cluster(3);
    let leader = wait_leader(&es).await;
    let follower = (leader + 1) % 3;
    es[follower].resign().await.unwrap();
    es[leader].transfer_to(es[follower].id()).await.unwrap();
    let mut rx = es[follower].subscribe();
    tokio::time::timeout(Duration::from_secs(2), rx.wait_for(|l| l.is_leader()))
        .await
        .expect("the transfer target leads")
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(es[follower].is_leader(), "an old resign took effect");
    for e in &es {
        e.shutdown().await;
    }

    // The lease election.
    let redis = RedisServer::start().unwrap();
    let lease = Duration::from_millis(400);
    let a = LeaseElection::start(&redis.url(), "resign", NodeId::new("a").unwrap(), lease).unwrap();
    let mut rx = a.subscribe();
    tokio::time::timeout(Duration::from_secs(3), rx.wait_for(|l| l.is_leader()))
        .await
        .expect("a leads")
        .unwrap();
    let b = LeaseElection::start(&redis.url(), "resign", NodeId::new("b").unwrap(), lease).unwrap();
    tokio::time::sleep(lease).await;
    assert_eq!(b.leadership().role, Role::Follower);
    b.resign().await.unwrap(); // b does not lead: nothing to give up
    a.resign().await.unwrap(); // a hands over; resign returns after the release
    assert!(!a.is_leader());
    let mut rx = b.subscribe();
    tokio::time::timeout(Duration::from_secs(3), rx.wait_for(|l| l.is_leader()))
        .await
        .expect("b takes over")
        .unwrap();
    // b keeps leading: its resign was not stored for this win.
    tokio::time::sleep(lease * 3).await;
    assert!(b.is_leader(), "an old resign took effect");
    let base_before_shutdown = tasks::alive();
    a.shutdown().await;
    b.shutdown().await;
    assert!(a.has_ended() && b.has_ended());
    assert!(tasks::alive() <= base_before_shutdown);
}

/// Dropping every handle of a lease election ends its campaign: the lease is released (the
/// other member takes over well before the lease could run out) and no task is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_lease_election_releases_and_ends() {
    let redis = RedisServer::start().unwrap();
    let lease = Duration::from_secs(5);
    let base = tasks::alive();
    let a = LeaseElection::start(&redis.url(), "drop", NodeId::new("a").unwrap(), lease).unwrap();
    let mut rx = a.subscribe();
    tokio::time::timeout(Duration::from_secs(3), rx.wait_for(|l| l.is_leader()))
        .await
        .expect("a leads")
        .unwrap();
    let b = LeaseElection::start(&redis.url(), "drop", NodeId::new("b").unwrap(), lease).unwrap();
    drop(rx);
    drop(a);
    let mut rx = b.subscribe();
    tokio::time::timeout(Duration::from_secs(2), rx.wait_for(|l| l.is_leader()))
        .await
        .expect("b takes over long before a's 5 s lease could end")
        .unwrap();
    drop(rx);
    b.shutdown().await;
    drop(b);
    tasks::settle(base, Duration::from_secs(3))
        .await
        .unwrap_or_else(|n| panic!("{n} tasks alive, {base} before"));
}
