use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

const LEASE: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Actor {
    Idle,
    Leading(AttemptId),
    Following(SlotId),
}

#[derive(Clone, Debug)]
enum Op {
    Claim(usize, u8),
    Finish(usize),
    Abandon(usize),
    Leave(usize),
    Wake(usize, u8),
    Tick(u64),
    Take(u8),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![
            (0usize..8, 0u8..3).prop_map(|(a, k)| Op::Claim(a, k)),
            (0usize..8).prop_map(Op::Finish),
            (0usize..8).prop_map(Op::Abandon),
            (0usize..8).prop_map(Op::Leave),
            (0usize..8, 0u8..3).prop_map(|(a, k)| Op::Wake(a, k)),
            (0u64..150).prop_map(Op::Tick),
            (0u8..3).prop_map(Op::Take),
        ],
        0..200,
    )
}

/// The actors' keys, by actor.
fn key(k: u8) -> String {
    format!("k{k}")
}

fn check(t: &LoadTable<u64>, actors: &[(Actor, String)]) -> Result<(), TestCaseError> {
    for (k, slot) in &t.slots {
        let leaders = actors
            .iter()
            .filter(|(a, key)| key == k && *a == Actor::Leading(slot.attempt))
            .count();
        prop_assert!(leaders <= 1, "two leaders of {}", k);
        if slot.led {
            prop_assert_eq!(leaders, 1, "a led slot without its leader: {}", k);
        }
        let holding = actors
            .iter()
            .filter(|(a, key)| {
                key == k
                    && match *a {
                        Actor::Leading(at) => at == slot.attempt && slot.led,
                        Actor::Following(s) => s == slot.id,
                        Actor::Idle => false,
                    }
            })
            .count();
        prop_assert_eq!(slot.interested, holding, "interest of {} miscounted", k);
        prop_assert!(slot.interested > 0, "an empty slot kept: {}", k);
    }
    Ok(())
}

proptest! {
    /// Any interleaving of claims, outcomes, abandons, cancellations, wake-ups and expiries:
    /// at most one leader per key, interest counted exactly, no slot without interest, and
    /// an empty table once every caller is gone.
    #[test]
    fn proptests_one_leader_per_key_and_no_leaked_slots(ops in ops()) {
        let start = Instant::now();
        let mut now = start;
        let mut t: LoadTable<u64> = LoadTable::new(LEASE);
        let mut signals = 0u64;
        let mut actors: Vec<(Actor, String)> = vec![(Actor::Idle, String::new()); 8];
        for op in ops {
            match op {
                Op::Claim(a, k) | Op::Wake(a, k) => {
                    // A waking follower leaves its slot first, then claims again.
                    if let (Op::Wake(..), Actor::Following(slot)) = (&op, actors[a].0) {
                        let key = actors[a].1.clone();
                        t.leave(&key, slot);
                        actors[a].0 = Actor::Idle;
                    }
                    if actors[a].0 != Actor::Idle {
                        continue;
                    }
                    let key = if matches!(op, Op::Wake(..)) && !actors[a].1.is_empty() {
                        actors[a].1.clone()
                    } else {
                        super::tests::key(k)
                    };
                    let claim = t.claim(&key, now, || {
                        signals += 1;
                        signals
                    }, None);
                    actors[a] = match claim {
                        Claim::Lead { attempt } => (Actor::Leading(attempt), key),
                        Claim::Follow { slot, .. } => (Actor::Following(slot), key),
                    };
                }
                Op::Finish(a) => {
                    if let Actor::Leading(attempt) = actors[a].0 {
                        let key = actors[a].1.clone();
                        if t.finish(&key, attempt).is_some() {
                            // Its followers got the outcome and stop waiting.
                            for other in &mut actors {
                                if other.1 == key && matches!(other.0, Actor::Following(..)) {
                                    other.0 = Actor::Idle;
                                }
                            }
                        }
                        actors[a].0 = Actor::Idle;
                    }
                }
                Op::Abandon(a) => {
                    if let Actor::Leading(attempt) = actors[a].0 {
                        let key = actors[a].1.clone();
                        t.abandon(&key, attempt, now);
                        actors[a].0 = Actor::Idle;
                    }
                }
                Op::Leave(a) => {
                    if let Actor::Following(slot) = actors[a].0 {
                        let key = actors[a].1.clone();
                        t.leave(&key, slot);
                        actors[a].0 = Actor::Idle;
                    }
                }
                Op::Take(k) => {
                    // A write superseded the load: everyone on the key is told and stops.
                    let key = super::tests::key(k);
                    if t.take(&key).is_some() {
                        for other in &mut actors {
                            if other.1 == key {
                                other.0 = Actor::Idle;
                            }
                        }
                    }
                }
                Op::Tick(ms) => {
                    now += Duration::from_millis(ms);
                    t.expire(now);
                    // Expired leaders are presumed gone; in real life they may come back late,
                    // which `finish` and `abandon` ignore. Model them as gone.
                    for (actor, key) in &mut actors {
                        if let Actor::Leading(at) = *actor
                            && t.slots.get(key.as_str()).is_none_or(|slot| slot.attempt != at || !slot.led)
                        {
                            *actor = Actor::Idle;
                        }
                    }
                }
            }
            check(&t, &actors)?;
        }
        // Everyone goes: leaders abandon, followers leave.
        for (actor, key) in &mut actors {
            match *actor {
                Actor::Leading(at) => {
                    t.abandon(key, at, now);
                }
                Actor::Following(s) => t.leave(key, s),
                Actor::Idle => {}
            }
            *actor = Actor::Idle;
        }
        prop_assert_eq!(t.len(), 0, "slots leaked: {:?}", t.slots.keys().collect::<Vec<_>>());
    }
}

#[test]
fn a_cancelled_leader_hands_over_at_once() {
    let now = Instant::now();
    let mut t: LoadTable<u32> = LoadTable::new(Duration::from_secs(10));
    let Claim::Lead { attempt: a1 } = t.claim("k", now, || 1, None) else {
        panic!("first claim leads")
    };
    let Claim::Follow { slot, .. } = t.claim("k", now, || 2, None) else {
        panic!("second claim follows")
    };
    assert_eq!(t.abandon("k", a1, now), Some(1), "the followers are told");
    t.leave("k", slot);
    let Claim::Lead { attempt: a2 } = t.claim("k", now, || 3, None) else {
        panic!("the follower takes over at once, long before the lease ends")
    };
    assert_ne!(a1, a2);
    // A late word from the first leader changes nothing.
    assert_eq!(t.finish("k", a1), None);
    assert_eq!(t.abandon("k", a1, now), None);
    assert_eq!(t.finish("k", a2), Some(3));
    assert_eq!(t.len(), 0);
}

#[test]
fn a_lease_that_cannot_end_is_not_an_overflow() {
    let mut t: LoadTable<()> = LoadTable::new(Duration::MAX);
    assert!(matches!(
        t.claim("k", Instant::now(), || (), None),
        Claim::Lead { .. }
    ));
    assert!(matches!(
        t.claim("k", Instant::now(), || (), None),
        Claim::Follow { .. }
    ));
    assert!(t.expire(Instant::now()).is_empty());
}

#[test]
fn an_abandon_that_overtakes_its_claim_keeps_it_from_leading() {
    let now = Instant::now();
    let mut t: LoadTable<()> = LoadTable::new(Duration::from_secs(10));
    assert_eq!(t.abandon("k", 77, now), None);
    assert!(t.is_buried(77, now));
    assert!(!t.is_buried(78, now));
    assert!(!t.is_buried(77, now + Duration::from_secs(11)));
}

#[test]
fn a_leader_nobody_waits_for_is_swept_when_its_lease_ends() {
    let now = Instant::now();
    let mut t: LoadTable<()> = LoadTable::new(Duration::from_millis(100));
    assert!(matches!(
        t.claim("gone", now, || (), Some(5)),
        Claim::Lead { attempt: 5 }
    ));
    assert_eq!(t.len(), 1);
    // Another key's claim, after the lease: the silent leader's slot is swept.
    let later = now + Duration::from_millis(200);
    assert!(matches!(
        t.claim("other", later, || (), None),
        Claim::Lead { .. }
    ));
    assert_eq!(t.len(), 1, "only the new slot is left");
}
