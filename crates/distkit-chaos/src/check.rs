//! Checkers: each reads a whole history and says whether it holds, with the first
//! violations it found. Each is tested on histories that contain the violation it looks for.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;
use serde_json::Value;

use crate::history::{FaultSpan, Op, Outcome};

/// What one checker found.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    /// The checker.
    pub checker: &'static str,
    /// Whether the property held.
    pub valid: bool,
    /// How many operations (or pairs, or observations) it looked at.
    pub checked: usize,
    /// The first violations, described.
    pub violations: Vec<String>,
    /// Figures worth reading even when it held (refusals, excused reads, ...).
    pub notes: BTreeMap<String, u64>,
}

/// At most this many violations are kept per checker.
const KEEP: usize = 20;

impl Verdict {
    fn new(checker: &'static str) -> Self {
        Self {
            checker,
            valid: true,
            checked: 0,
            violations: Vec::new(),
            notes: BTreeMap::new(),
        }
    }

    fn violation(&mut self, what: String) {
        self.valid = false;
        if self.violations.len() < KEEP {
            self.violations.push(what);
        }
        *self.notes.entry("violations".into()).or_default() += 1;
    }

    fn note(&mut self, what: &str) {
        *self.notes.entry(what.into()).or_default() += 1;
    }
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

fn n(v: &Value, k: &str) -> Option<u64> {
    v.get(k).and_then(Value::as_u64)
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// The fenced register: critical sections that the store acknowledged (both the entering and
/// the leaving write accepted) never overlap on one lock, the tokens the store accepted never
/// go back, and a grant that completed before another began has the smaller fencing token.
#[must_use]
pub fn fenced_locks(ops: &[Op]) -> Verdict {
    let mut v = Verdict::new("locks: fenced register");
    // (lock) -> sections [enter, exit] acknowledged
    let mut enters: HashMap<(String, String, u64), &Op> = HashMap::new();
    let mut sections: BTreeMap<String, Vec<(u64, u64, u64, String)>> = BTreeMap::new();
    let mut accepted: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    for op in ops {
        if op.op != "enter" && op.op != "exit" {
            continue;
        }
        let lock = s(&op.args, "lock").to_owned();
        let Some(f) = n(&op.args, "fencing") else {
            continue;
        };
        if op.outcome == Outcome::Ok {
            accepted
                .entry(lock.clone())
                .or_default()
                .push((op.complete_ns, f));
        } else {
            v.note("writes refused by the fence");
        }
        let id = (lock.clone(), op.process.clone(), f);
        if op.op == "enter" {
            enters.insert(id, op);
        } else if let Some(e) = enters.remove(&id)
            && e.outcome == Outcome::Ok
            && op.outcome == Outcome::Ok
        {
            sections.entry(lock).or_default().push((
                e.complete_ns,
                op.invoke_ns,
                f,
                op.process.clone(),
            ));
        }
    }
    for (lock, mut list) in sections {
        list.sort_unstable();
        v.checked += list.len();
        let mut open: Option<(u64, u64, String)> = None;
        for (start, end, f, p) in list {
            if let Some((o_end, o_f, o_p)) = &open
                && start < *o_end
            {
                v.violation(format!(
                    "{lock}: {p} (token {f}) entered at {:.3} ms while {o_p} (token {o_f}) was inside until {:.3} ms; both acknowledged",
                    ms(start),
                    ms(*o_end)
                ));
            }
            if open.as_ref().is_none_or(|(o_end, ..)| end > *o_end) {
                open = Some((end, f, p));
            }
        }
    }
    for (lock, mut list) in accepted {
        list.sort_unstable();
        let mut highest = 0;
        for (t, f) in list {
            if f < highest {
                v.violation(format!(
                    "{lock}: the store accepted token {f} at {:.3} ms after token {highest}",
                    ms(t)
                ));
            }
            highest = highest.max(f);
        }
    }
    // Grants in real-time order have increasing tokens.
    let mut grants: BTreeMap<String, Vec<&Op>> = BTreeMap::new();
    for op in ops {
        if op.op == "acquire" && op.outcome == Outcome::Ok {
            grants
                .entry(s(&op.args, "lock").to_owned())
                .or_default()
                .push(op);
        }
    }
    for (lock, list) in grants {
        let mut tokens: HashMap<u64, &Op> = HashMap::new();
        for o in &list {
            if let Some(f) = n(&o.result, "fencing")
                && let Some(first) = tokens.insert(f, o)
            {
                v.violation(format!(
                    "{lock}: token {f} was granted twice, to {} at {:.3} ms and to {} at {:.3} ms",
                    first.process,
                    ms(first.complete_ns),
                    o.process,
                    ms(o.complete_ns)
                ));
            }
        }
        let mut by_complete: Vec<(u64, u64)> = list
            .iter()
            .filter_map(|o| Some((o.complete_ns, n(&o.result, "fencing")?)))
            .collect();
        by_complete.sort_unstable();
        let mut by_invoke: Vec<(u64, u64, &str)> = list
            .iter()
            .filter_map(|o| Some((o.invoke_ns, n(&o.result, "fencing")?, o.process.as_str())))
            .collect();
        by_invoke.sort_unstable();
        let (mut i, mut max_before) = (0, None::<u64>);
        for (invoke, f, p) in by_invoke {
            while i < by_complete.len() && by_complete[i].0 < invoke {
                max_before = Some(max_before.map_or(by_complete[i].1, |m| m.max(by_complete[i].1)));
                i += 1;
            }
            v.checked += 1;
            if let Some(m) = max_before
                && f <= m
            {
                v.violation(format!(
                    "{lock}: {p} was granted token {f} (invoked at {:.3} ms) after a grant of token {m} had completed",
                    ms(invoke)
                ));
            }
        }
    }
    v
}

/// Leases: no grant of a lock happens wholly inside another client's lease of it (from the
/// grant's completion until its TTL ran out from its invocation, or its release was sent).
/// The fence above makes such overlaps harmless to a fenced store; this says how often the
/// lock alone would not have been enough.
#[must_use]
pub fn lock_leases(ops: &[Op]) -> Verdict {
    let mut v = Verdict::new("locks: one lease holder at a time");
    let mut released: HashMap<(String, u64), u64> = HashMap::new();
    for op in ops {
        if op.op == "release"
            && let Some(f) = n(&op.args, "fencing")
        {
            let at = released
                .entry((s(&op.args, "lock").to_owned(), f))
                .or_insert(op.invoke_ns);
            *at = (*at).min(op.invoke_ns);
        }
    }
    let mut grants: BTreeMap<String, Vec<Grant>> = BTreeMap::new();
    for op in ops {
        if op.op != "acquire" || op.outcome != Outcome::Ok {
            continue;
        }
        let (Some(f), Some(ttl)) = (n(&op.result, "fencing"), n(&op.result, "ttl_ms")) else {
            continue;
        };
        let lock = s(&op.args, "lock").to_owned();
        let mut end = op.invoke_ns.saturating_add(ttl.saturating_mul(1_000_000));
        if let Some(r) = released.get(&(lock.clone(), f)) {
            end = end.min(*r);
        }
        grants.entry(lock).or_default().push((
            op.invoke_ns,
            op.complete_ns,
            end,
            f,
            op.process.clone(),
        ));
    }
    for (lock, list) in &grants {
        v.checked += list.len();
        for a in list {
            for b in list {
                // b's grant happened within [b.invoke, b.complete]: a definite overlap when
                // that whole span lies inside a's lease.
                if a.3 != b.3 && b.0 >= a.1 && b.1 <= a.2 {
                    v.violation(format!(
                        "{lock}: {} was granted token {} between {:.3} and {:.3} ms, inside {}'s lease of token {} ({:.3} to {:.3} ms)",
                        b.4,
                        b.3,
                        ms(b.0),
                        ms(b.1),
                        a.4,
                        a.3,
                        ms(a.1),
                        ms(a.2)
                    ));
                }
            }
        }
    }
    v
}

/// A grant as the lease checker sees it: invoked, completed, the lease's end, the fencing
/// token and the client.
type Grant = (u64, u64, u64, u64, String);

/// Election: one leader per term across every observation (a node's own role, and the
/// leader every node names), and no node claims a leader lease once a leader of a higher term
/// has been seen.
#[must_use]
pub fn election(ops: &[Op]) -> Verdict {
    let mut v = Verdict::new("election: one leader per term");
    let mut leaders: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    let mut first_seen: BTreeMap<u64, u64> = BTreeMap::new();
    let observed: Vec<&Op> = ops
        .iter()
        .filter(|o| o.op == "observe" && o.outcome == Outcome::Ok)
        .collect();
    for o in &observed {
        v.checked += 1;
        let Some(term) = n(&o.result, "term") else {
            continue;
        };
        let node = s(&o.args, "node");
        if s(&o.result, "role") == "leader" {
            leaders.entry(term).or_default().insert(node.to_owned());
            let t = first_seen.entry(term).or_insert(o.complete_ns);
            *t = (*t).min(o.complete_ns);
        }
        if let Some(l) = o.result.get("leader").and_then(Value::as_str) {
            leaders.entry(term).or_default().insert(l.to_owned());
        }
    }
    for (term, set) in &leaders {
        if set.len() > 1 {
            v.violation(format!("term {term} had leaders {set:?}"));
        }
    }
    // The highest term whose leader had been seen, by time.
    let mut seen: Vec<(u64, u64)> = first_seen.iter().map(|(t, at)| (*at, *t)).collect();
    seen.sort_unstable();
    for o in &observed {
        let (Some(term), true) = (
            n(&o.result, "term"),
            o.result.get("lease").and_then(Value::as_bool) == Some(true)
                && s(&o.result, "role") == "leader",
        ) else {
            continue;
        };
        if let Some((at, higher)) = seen
            .iter()
            .take_while(|(at, _)| *at < o.invoke_ns)
            .max_by_key(|(_, t)| *t)
            && *higher > term
        {
            v.violation(format!(
                "{} claimed a leader lease in term {term} at {:.3} ms, after a leader of term {higher} was seen at {:.3} ms",
                s(&o.args, "node"),
                ms(o.invoke_ns),
                ms(*at)
            ));
        }
    }
    v.notes
        .insert("terms with a leader".into(), leaders.len() as u64);
    v
}

/// The cache, per key (every value written once): a read returns a value that was written
/// (not one whose write was refused, nor one written after the read ended), and never one
/// that a later write had replaced before the read began, except within `window_ns` of that
/// write while a fault was active (a copy whose invalidation could not be delivered is
/// dropped by the staleness check). A read of nothing is allowed: a cache may lose entries.
#[must_use]
pub fn cache(ops: &[Op], faults: &[FaultSpan], window_ns: u64) -> Verdict {
    let mut v = Verdict::new("cache: no stale reads");
    let mut writes: HashMap<(String, String), &Op> = HashMap::new();
    let mut ok_writes: HashMap<String, Vec<&Op>> = HashMap::new();
    for op in ops.iter().filter(|o| o.op == "set") {
        let key = s(&op.args, "key").to_owned();
        writes.insert((key.clone(), s(&op.args, "value").to_owned()), op);
        if op.outcome == Outcome::Ok {
            ok_writes.entry(key).or_default().push(op);
        }
    }
    // Only faults that can keep an invalidation from a node excuse a stale read; Redis
    // holds no cache data.
    let faulted = |from: u64, to: u64| {
        faults
            .iter()
            .any(|f| f.kind != "redis" && f.start_ns < to && f.end_ns > from)
    };
    for read in ops
        .iter()
        .filter(|o| o.op == "get" && o.outcome == Outcome::Ok)
    {
        v.checked += 1;
        let key = s(&read.args, "key");
        let Some(value) = read.result.get("value").and_then(Value::as_str) else {
            v.note("reads of nothing");
            continue;
        };
        let Some(w) = writes.get(&(key.to_owned(), value.to_owned())) else {
            v.violation(format!(
                "{key}: read {value:?} at {:.3} ms, which nobody wrote",
                ms(read.invoke_ns)
            ));
            continue;
        };
        if w.outcome == Outcome::Fail {
            v.violation(format!("{key}: read {value:?}, whose write was refused",));
            continue;
        }
        if w.invoke_ns > read.complete_ns {
            v.violation(format!("{key}: read {value:?} before it was written"));
            continue;
        }
        let newer = ok_writes
            .get(key)
            .into_iter()
            .flatten()
            .find(|w2| w2.invoke_ns > w.complete_ns && w2.complete_ns < read.invoke_ns);
        if let Some(w2) = newer {
            if read.invoke_ns - w2.complete_ns < window_ns && faulted(w2.invoke_ns, read.invoke_ns)
            {
                v.note("stale reads excused: within the window of a fault");
            } else {
                v.violation(format!(
                    "{key}: {} read {value:?} at {:.3} ms via {}, but {:?} had replaced it at {:.3} ms",
                    read.process,
                    ms(read.invoke_ns),
                    s(&read.args, "node"),
                    s(&w2.args, "value"),
                    ms(w2.complete_ns)
                ));
            }
        }
    }
    v
}

/// Liveness: after the last fault was healed at `healed_ns`, every kind of operation
/// succeeds again within `bound_ns`.
#[must_use]
pub fn liveness(ops: &[Op], healed_ns: u64, bound_ns: u64) -> Verdict {
    let mut v = Verdict::new("liveness after the faults");
    for kind in ["acquire", "release", "set", "get", "observe"] {
        v.checked += 1;
        let ok = ops.iter().any(|o| {
            o.op == kind
                && o.outcome == Outcome::Ok
                && o.invoke_ns >= healed_ns
                && o.complete_ns <= healed_ns.saturating_add(bound_ns)
                && (kind != "observe" || o.result.get("leader").is_some_and(Value::is_string))
        });
        if !ok {
            v.violation(format!(
                "no {kind} succeeded within {:.1} s after the faults were healed at {:.3} ms",
                bound_ns as f64 / 1e9,
                ms(healed_ns)
            ));
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn op(
        process: &str,
        kind: &str,
        args: Value,
        t: (u64, u64),
        outcome: Outcome,
        result: Value,
    ) -> Op {
        Op {
            process: process.into(),
            op: kind.into(),
            args,
            invoke_ns: t.0 * 1_000_000,
            complete_ns: t.1 * 1_000_000,
            outcome,
            result,
        }
    }

    fn grant(p: &str, lock: &str, t: (u64, u64), f: u64) -> Op {
        op(
            p,
            "acquire",
            json!({"lock": lock}),
            t,
            Outcome::Ok,
            json!({"fencing": f, "ttl_ms": 1000}),
        )
    }

    fn write(p: &str, kind: &str, lock: &str, at: u64, f: u64, ok: bool) -> Op {
        let outcome = if ok { Outcome::Ok } else { Outcome::Fail };
        op(
            p,
            kind,
            json!({"lock": lock, "fencing": f}),
            (at, at),
            outcome,
            Value::Null,
        )
    }

    #[test]
    fn fenced_locks_hold_on_a_clean_history() {
        let h = vec![
            grant("a", "L", (0, 1), 5),
            write("a", "enter", "L", 2, 5, true),
            write("a", "exit", "L", 3, 5, true),
            grant("b", "L", (4, 5), 6),
            write("b", "enter", "L", 6, 6, true),
            write("b", "exit", "L", 7, 6, true),
            // A stale holder refused by the fence is no violation.
            write("a", "enter", "L", 8, 5, false),
        ];
        let v = fenced_locks(&h);
        assert!(v.valid, "{v:?}");
        assert_eq!(v.notes["writes refused by the fence"], 1);
    }

    #[test]
    fn fenced_locks_catch_overlap_going_back_and_misordered_tokens() {
        let overlap = vec![
            write("a", "enter", "L", 2, 5, true),
            write("b", "enter", "L", 3, 6, true),
            write("b", "exit", "L", 4, 6, true),
            write("a", "exit", "L", 5, 5, true),
        ];
        let v = fenced_locks(&overlap);
        assert!(!v.valid);
        assert!(
            v.violations.iter().any(|m| m.contains("both acknowledged")),
            "{v:?}"
        );
        assert!(
            v.violations.iter().any(|m| m.contains("accepted token 5")),
            "{v:?}"
        );
        let misordered = vec![grant("a", "L", (0, 1), 9), grant("b", "L", (2, 3), 7)];
        let v = fenced_locks(&misordered);
        assert!(!v.valid);
        assert!(v.violations[0].contains("granted token 7"), "{v:?}");
        // Concurrent grants may come in either order.
        let concurrent = vec![grant("a", "L", (0, 3), 9), grant("b", "L", (1, 2), 7)];
        assert!(fenced_locks(&concurrent).valid);
        // One token for two grants, even overlapping ones whose sections never met.
        let twice = vec![grant("a", "L", (0, 3), 9), grant("b", "L", (1, 2), 9)];
        let v = fenced_locks(&twice);
        assert!(
            v.violations.iter().any(|m| m.contains("granted twice")),
            "{v:?}"
        );
    }

    #[test]
    fn lock_leases_catch_a_grant_inside_another_lease() {
        let h = vec![grant("a", "L", (0, 1), 5), grant("b", "L", (100, 200), 6)];
        let v = lock_leases(&h);
        assert!(!v.valid, "{v:?}");
        // Released first, or after the TTL: fine.
        let released = vec![
            grant("a", "L", (0, 1), 5),
            op(
                "a",
                "release",
                json!({"lock": "L", "fencing": 5}),
                (50, 60),
                Outcome::Ok,
                json!({"released": true}),
            ),
            grant("b", "L", (100, 200), 6),
        ];
        assert!(lock_leases(&released).valid);
        let expired = vec![grant("a", "L", (0, 1), 5), grant("b", "L", (1500, 1600), 6)];
        assert!(lock_leases(&expired).valid);
    }

    fn observe(
        node: &str,
        t: (u64, u64),
        term: u64,
        role: &str,
        leader: Option<&str>,
        lease: bool,
    ) -> Op {
        op(
            "observer",
            "observe",
            json!({"node": node}),
            t,
            Outcome::Ok,
            json!({"term": term, "role": role, "leader": leader, "lease": lease}),
        )
    }

    #[test]
    fn election_catches_two_leaders_of_a_term_and_a_stale_lease() {
        let fine = vec![
            observe("n1", (0, 1), 1, "leader", Some("n1"), true),
            observe("n2", (0, 1), 1, "follower", Some("n1"), false),
            observe("n2", (5, 6), 2, "leader", Some("n2"), true),
            // n1 still believes it leads term 1, without a lease: allowed.
            observe("n1", (7, 8), 1, "leader", Some("n1"), false),
        ];
        assert!(election(&fine).valid, "{:?}", election(&fine));
        let two = vec![
            observe("n1", (0, 1), 3, "leader", Some("n1"), true),
            observe("n2", (0, 1), 3, "leader", Some("n2"), true),
        ];
        assert!(!election(&two).valid);
        let named = vec![
            observe("n1", (0, 1), 3, "leader", Some("n1"), true),
            observe("n3", (0, 1), 3, "follower", Some("n2"), false),
        ];
        assert!(!election(&named).valid);
        let stale_lease = vec![
            observe("n2", (5, 6), 2, "leader", Some("n2"), true),
            observe("n1", (7, 8), 1, "leader", Some("n1"), true),
        ];
        let v = election(&stale_lease);
        assert!(v.violations.iter().any(|m| m.contains("lease")), "{v:?}");
    }

    fn set(p: &str, key: &str, value: &str, t: (u64, u64), outcome: Outcome) -> Op {
        op(
            p,
            "set",
            json!({"key": key, "value": value}),
            t,
            outcome,
            Value::Null,
        )
    }

    fn get(p: &str, key: &str, t: (u64, u64), value: Option<&str>) -> Op {
        op(
            p,
            "get",
            json!({"key": key, "node": "n1"}),
            t,
            Outcome::Ok,
            json!({"value": value}),
        )
    }

    #[test]
    fn cache_catches_stale_unwritten_refused_and_future_reads() {
        let fine = vec![
            set("a", "k", "1", (0, 1), Outcome::Ok),
            set("a", "k", "2", (2, 3), Outcome::Ok),
            get("b", "k", (4, 5), Some("2")),
            // Concurrent with the write of 3: either value.
            set("a", "k", "3", (6, 9), Outcome::Ok),
            get("b", "k", (7, 8), Some("2")),
            get("b", "k", (10, 11), None),
            // An indeterminate write may have happened.
            set("a", "k", "4", (12, 13), Outcome::Info),
            get("b", "k", (14, 15), Some("4")),
        ];
        let v = cache(&fine, &[], 2_000_000_000);
        assert!(v.valid, "{v:?}");
        let stale = vec![
            set("a", "k", "1", (0, 1), Outcome::Ok),
            set("a", "k", "2", (2, 3), Outcome::Ok),
            get("b", "k", (4, 5), Some("1")),
        ];
        assert!(!cache(&stale, &[], 2_000_000_000).valid);
        // Within the window of a fault: excused, and counted.
        let fault = FaultSpan {
            what: "partition".into(),
            kind: "partition".into(),
            start_ns: 0,
            end_ns: 10_000_000,
        };
        let v = cache(&stale, &[fault], 2_000_000_000);
        assert!(v.valid && v.notes["stale reads excused: within the window of a fault"] == 1);
        // A Redis fault has nothing to do with the cache: no excuse.
        let redis = FaultSpan {
            what: "kill and restart redis".into(),
            kind: "redis".into(),
            start_ns: 0,
            end_ns: 10_000_000,
        };
        assert!(!cache(&stale, &[redis], 2_000_000_000).valid);
        let unwritten = vec![get("b", "k", (4, 5), Some("9"))];
        assert!(!cache(&unwritten, &[], 0).valid);
        let refused = vec![
            set("a", "k", "1", (0, 1), Outcome::Fail),
            get("b", "k", (4, 5), Some("1")),
        ];
        assert!(!cache(&refused, &[], 0).valid);
        let future = vec![
            get("b", "k", (0, 1), Some("1")),
            set("a", "k", "1", (4, 5), Outcome::Ok),
        ];
        assert!(!cache(&future, &[], 0).valid);
    }

    #[test]
    fn liveness_needs_every_kind_after_the_heal() {
        let mut h = vec![
            grant("a", "L", (10, 11), 1),
            op("a", "release", json!({}), (12, 13), Outcome::Ok, json!({})),
            set("a", "k", "1", (10, 11), Outcome::Ok),
            get("a", "k", (10, 11), Some("1")),
        ];
        assert!(
            !liveness(&h, 10_000_000, 5_000_000_000).valid,
            "no observation with a leader"
        );
        h.push(observe("n1", (10, 11), 1, "leader", Some("n1"), true));
        assert!(liveness(&h, 10_000_000, 5_000_000_000).valid);
        assert!(
            !liveness(&h, 20_000_000, 5_000_000_000).valid,
            "all of it before the heal"
        );
    }
}
