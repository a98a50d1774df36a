//! Hostile input through the public API: extreme terms, strangers, misaddressed envelopes,
//! random numbers outside `[0, 1)`, a cluster of one. Each test names the defect it pins.

use std::time::Duration;

use distkit_core::{NodeId, Role, Term};
use distkit_election::sim::{Sim, SimConfig};
use distkit_election::{Config, Election, Envelope, HardState, Message, Rejected};
use proptest::prelude::*;

fn id(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

fn three(me: &str) -> Config {
    let peers = ["a", "b", "c"].into_iter().filter(|p| *p != me).map(id);
    Config::builder(id(me), peers).build().unwrap()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn every_kind(term: Term) -> Vec<Message> {
    vec![
        Message::PreVote { term },
        Message::PreVoteReply {
            term,
            granted: true,
        },
        Message::Vote {
            term,
            transfer: true,
        },
        Message::VoteReply {
            term,
            granted: true,
        },
        Message::Heartbeat {
            term,
            sent_at_us: u64::MAX,
        },
        Message::HeartbeatReply {
            term,
            sent_at_us: u64::MAX,
        },
        Message::TimeoutNow { term },
    ]
}

/// The first wave's safety bug: a vote request at `u64::MAX` was adopted, the next campaign
/// saturated back into the same term, and a node voted twice in it. Now a term above
/// `Term::MAX` is refused with no state change, whatever the message.
#[test]
fn a_term_above_the_limit_is_refused_by_every_message_kind() {
    for raw in [Term::MAX.get() + 1, u64::MAX - 1, u64::MAX] {
        for msg in every_kind(Term::new(raw)) {
            let mut e = Election::new(three("a"), HardState::default(), ms(0), 0.5);
            let before = e.hard_state().clone();
            let r = e.step(ms(500), &id("b"), msg.clone(), 0.5);
            assert_eq!(r, Err(Rejected::TermOutOfRange(Term::new(raw))), "{msg:?}");
            assert_eq!(e.hard_state(), &before, "{msg:?}");
        }
    }
}

/// A node that reached `Term::MAX` (a peer asked for a vote there) never campaigns again:
/// campaigning would mean a term it may already have voted in.
#[test]
fn a_node_at_the_top_term_never_campaigns_and_never_votes_twice() {
    let mut e = Election::new(three("a"), HardState::default(), ms(0), 0.5);
    let out = e
        .step(
            ms(1000),
            &id("b"),
            Message::Vote {
                term: Term::MAX,
                transfer: false,
            },
            0.5,
        )
        .unwrap();
    assert_eq!(e.hard_state().term, Term::MAX);
    assert_eq!(e.hard_state().voted_for, Some(id("b")));
    assert!(
        out.send
            .iter()
            .any(|(_, m)| matches!(m, Message::VoteReply { granted: true, .. }))
    );
    // Minutes of election timeouts: no campaign, no second vote, the term stays.
    let mut now = ms(1000);
    for _ in 0..1000 {
        now += ms(301);
        let out = e.tick(now, 0.3);
        assert!(
            out.send
                .iter()
                .all(|(_, m)| !matches!(m, Message::Vote { .. } | Message::PreVote { .. })),
            "campaigned at the top: {out:?}"
        );
        assert_eq!(e.hard_state().term, Term::MAX);
        assert_eq!(e.hard_state().voted_for, Some(id("b")));
        assert_ne!(e.leadership().role, Role::Candidate);
    }
    // Another candidate in the same term gets no vote.
    let out = e
        .step(
            now,
            &id("c"),
            Message::Vote {
                term: Term::MAX,
                transfer: true,
            },
            0.5,
        )
        .unwrap();
    assert!(
        out.send
            .iter()
            .all(|(_, m)| matches!(m, Message::VoteReply { granted: false, .. }))
    );
}

/// The reproduction on five simulated nodes: one vote request at the extremes, then splits
/// and quiet leaders. The safety checker stays silent.
#[test]
fn extreme_vote_requests_in_a_five_node_cluster_break_no_safety_property() {
    for (seed, raw) in [
        (1, u64::MAX),
        (2, u64::MAX - 1),
        (3, Term::MAX.get()),
        (4, Term::MAX.get() - 1),
    ] {
        let mut sim = Sim::new(seed, SimConfig::default()).unwrap();
        sim.run_for(Duration::from_secs(1));
        let leader = sim.leader().expect("a leader");
        let victim = (leader + 1) % 5;
        let from = sim.node((leader + 2) % 5).unwrap().config().id().clone();
        let to = sim.node(victim).unwrap().config().id().clone();
        sim.inject(
            from,
            victim,
            to,
            Message::Vote {
                term: Term::new(raw),
                transfer: true,
            },
            Duration::ZERO,
        );
        for round in 0..6 {
            sim.run_for(ms(400));
            if round % 2 == 0 {
                sim.partition(&[victim, (victim + 1) % 5]);
            } else {
                sim.heal();
                if let Some(l) = sim.leader() {
                    sim.isolate(l);
                }
            }
        }
        sim.heal();
        sim.run_for(Duration::from_secs(2));
        assert!(
            sim.violations().is_empty(),
            "term {raw}: {:?}",
            sim.violations()
        );
        assert!(sim.max_term().is_valid());
        if raw > Term::MAX.get() {
            assert!(sim.refused() >= 1, "the term {raw} was not refused");
            assert!(
                sim.leader().is_some(),
                "term {raw}: no leader after healing"
            );
        }
    }
}

/// Raft 5.1: every message with a higher term moves the receiver to it. The first wave
/// dropped a `TimeoutNow` with a higher term without adopting it.
#[test]
fn timeout_now_with_a_higher_term_moves_the_receiver_to_it() {
    let mut e = Election::new(three("a"), HardState::default(), ms(0), 0.5);
    let out = e
        .step(
            ms(10),
            &id("b"),
            Message::TimeoutNow { term: Term::new(7) },
            0.5,
        )
        .unwrap();
    assert!(e.hard_state().term >= Term::new(7));
    assert!(out.persist.is_some(), "the new term is persisted");
    // It took the hand-over as from the leader of term 7: it campaigns in term 8.
    assert_eq!(e.hard_state().term, Term::new(8));
    assert_eq!(e.leadership().role, Role::Candidate);
}

#[test]
fn strangers_and_misaddressed_envelopes_change_nothing() {
    let mut e = Election::new(three("a"), HardState::default(), ms(0), 0.5);
    let before = e.hard_state().clone();
    for msg in every_kind(Term::new(5)) {
        assert_eq!(
            e.step(ms(500), &id("zed"), msg.clone(), 0.5),
            Err(Rejected::UnknownPeer(id("zed")))
        );
        let env = Envelope {
            from: id("b"),
            to: id("c"),
            msg,
        };
        assert_eq!(
            e.receive(ms(500), env, 0.5),
            Err(Rejected::Misaddressed(id("c")))
        );
    }
    assert_eq!(e.hard_state(), &before);
}

/// A node without peers is a cluster of one: it leads on its first tick, for good.
#[test]
fn a_cluster_of_one_leads_at_once_and_holds_its_lease() {
    let cfg = Config::builder(id("solo"), []).build().unwrap();
    let mut e = Election::new(cfg, HardState::default(), ms(0), 0.5);
    assert!(e.next_deadline() <= ms(0));
    let out = e.tick(ms(0), 0.5);
    assert_eq!(e.leadership().role, Role::Leader);
    assert_eq!(e.leadership().leader, Some(id("solo")));
    assert_eq!(e.hard_state().term, Term::new(1));
    assert!(out.persist.is_some());
    assert!(e.has_lease(ms(0)));
    for k in 1..100 {
        e.tick(ms(k * 100), 0.5);
        assert!(e.has_lease(ms(k * 100)));
    }
    // A resign hands over to nobody; it leads again at its next timeout, in a new term.
    e.resign(ms(10_000), 0.5);
    assert_ne!(e.leadership().role, Role::Leader);
    e.tick(ms(20_000), 0.5);
    assert_eq!(e.leadership().role, Role::Leader);
    assert_eq!(e.hard_state().term, Term::new(2));
}

fn any_f64() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(1.0),
        Just(-0.0),
        Just(-1.0),
        Just(f64::MAX),
        Just(f64::MIN_POSITIVE),
        any::<f64>(),
        0.0f64..1.0,
    ]
}

fn any_term() -> impl Strategy<Value = Term> {
    prop_oneof![
        Just(Term::ZERO),
        Just(Term::MAX),
        Just(Term::new(Term::MAX.get() - 1)),
        Just(Term::new(Term::MAX.get() + 1)),
        Just(Term::new(u64::MAX)),
        (0u64..10).prop_map(Term::new),
        any::<u64>().prop_map(Term::new),
    ]
}

fn any_time() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::MAX),
        Just(Duration::MAX - Duration::from_nanos(1)),
        (0u64..10_000).prop_map(Duration::from_millis),
        any::<u64>().prop_map(Duration::from_micros),
    ]
}

fn any_message() -> impl Strategy<Value = Message> {
    (any_term(), any::<bool>(), any::<u64>(), 0u8..7).prop_map(
        |(term, flag, us, kind)| match kind {
            0 => Message::PreVote { term },
            1 => Message::PreVoteReply {
                term,
                granted: flag,
            },
            2 => Message::Vote {
                term,
                transfer: flag,
            },
            3 => Message::VoteReply {
                term,
                granted: flag,
            },
            4 => Message::Heartbeat {
                term,
                sent_at_us: us,
            },
            5 => Message::HeartbeatReply {
                term,
                sent_at_us: us,
            },
            _ => Message::TimeoutNow { term },
        },
    )
}

proptest! {
    /// The core takes any clock value, any random number (NaN, infinities, 1.0, negatives)
    /// and any message from anyone without panicking, and keeps its invariants: the term
    /// never goes back and never above `Term::MAX`, and one vote per term.
    #[test]
    fn proptests_the_core_never_panics_and_keeps_its_invariants(
        inputs in prop::collection::vec((any_time(), any_f64(), any_message(), 0u8..6), 1..60),
        start in any_time(),
        r0 in any_f64(),
    ) {
        let mut e = Election::new(three("a"), HardState::default(), start, r0);
        let mut votes: std::collections::HashMap<Term, NodeId> = Default::default();
        let mut last = e.hard_state().term;
        for (now, r, msg, who) in inputs {
            let from = ["b", "c", "zed", "a", "b", "c"][usize::from(who)];
            let out = match who {
                3 => Some(e.tick(now, r)),
                4 => Some(e.resign(now, r)),
                _ => e.step(now, &id(from), msg, r).ok(),
            };
            let _ = e.next_deadline();
            let _ = e.lease_expiry();
            let _ = e.has_lease(now);
            let hs = e.hard_state().clone();
            prop_assert!(hs.term.is_valid());
            prop_assert!(hs.term >= last);
            last = hs.term;
            if let Some(out) = out
                && let Some(p) = out.persist
                && let Some(v) = p.voted_for
            {
                let prev = votes.entry(p.term).or_insert_with(|| v.clone());
                prop_assert_eq!(&*prev, &v, "two votes in term {}", p.term);
            }
        }
    }
}

/// A stored term above `Term::MAX` (a damaged store) is read as `Term::MAX` with its vote
/// kept: the node never campaigns and never sends a term its peers would refuse.
#[test]
fn a_stored_term_above_the_limit_is_read_as_the_limit() {
    let hs = HardState {
        term: Term::new(u64::MAX),
        voted_for: Some(id("b")),
    };
    let mut e = Election::new(three("a"), hs, ms(0), 0.5);
    assert_eq!(e.hard_state().term, Term::MAX);
    let mut now = ms(0);
    for _ in 0..100 {
        now += ms(400);
        let out = e.tick(now, 0.5);
        assert!(out.send.iter().all(|(_, m)| m.term().is_valid()));
        let out = e
            .step(
                now,
                &id("c"),
                Message::Vote {
                    term: Term::MAX,
                    transfer: true,
                },
                0.5,
            )
            .unwrap();
        assert!(
            out.send.iter().all(|(_, m)| m.term().is_valid()
                && !matches!(m, Message::VoteReply { granted: true, .. }))
        );
    }
}

/// Found by an outside review: the public simulator panicked or hung on out-of-range input.
#[test]
fn the_simulator_refuses_bad_settings_and_ignores_unknown_nodes() {
    let bad = [
        SimConfig {
            nodes: 0,
            ..SimConfig::default()
        },
        SimConfig {
            delay: (ms(20), ms(1)),
            ..SimConfig::default()
        },
        SimConfig {
            delay: (Duration::MAX, Duration::MAX),
            ..SimConfig::default()
        },
        SimConfig {
            drift: f64::NAN,
            ..SimConfig::default()
        },
        SimConfig {
            drift: 2.0,
            ..SimConfig::default()
        },
        SimConfig {
            loss: -0.1,
            ..SimConfig::default()
        },
        SimConfig {
            timeout: (ms(300), ms(150)),
            ..SimConfig::default()
        },
    ];
    for cfg in bad {
        assert!(Sim::new(1, cfg.clone()).is_err(), "{cfg:?}");
    }
    let mut sim = Sim::new(1, SimConfig::default()).unwrap();
    sim.crash(99);
    sim.restart(99);
    assert!(!sim.is_up(99));
    assert!(sim.node(99).is_none());
    sim.inject(
        id("n0"),
        99,
        id("n0"),
        Message::PreVote { term: Term::new(1) },
        ms(1),
    );
    sim.run_for(ms(500));
    assert!(sim.violations().is_empty());
}

/// Found by an outside review: the HTTP transport took peer URLs its docs say it refuses,
/// and a peer listed twice.
#[test]
fn the_transport_refuses_bad_peer_urls_and_duplicates() {
    for url in [
        "http://a:99999",
        "http://h",
        "http://h:1/path",
        "http://h:1?x=1",
        "http://user:pw@h:1",
        "http:// h:1",
        "http://h:1\n",
        "http://h\u{202e}:1",
        "https://h:1",
    ] {
        let r = distkit_election::HttpTransport::new([(id("b"), url.to_owned())], "t", ms(100));
        assert!(r.is_err(), "{url:?}");
    }
    let host = "a".repeat(1 << 20);
    assert!(
        distkit_election::HttpTransport::new([(id("b"), format!("http://{host}:1"))], "t", ms(100))
            .is_err()
    );
    let twice = [
        (id("b"), "http://127.0.0.1:1".to_owned()),
        (id("b"), "http://127.0.0.1:2".to_owned()),
    ];
    assert!(distkit_election::HttpTransport::new(twice, "t", ms(100)).is_err());
}
