//! Quorum commit (`synchronous_mode: quorum`, as Patroni 4 runs it), pure like [`crate::ha`]:
//! the primary names its standbys as `ANY numsync (a,b,…)` in `synchronous_standby_names`, and
//! the `sync` key says who voted (`sync_standby`, the voters) and how many of them a member
//! must see at or behind its own WAL before it may be promoted (`quorum`).
//!
//! The rule that keeps every acknowledged commit: any group of members that can elect a new
//! primary (a voter and `quorum` others, or `quorum + 1` voters for a member outside them)
//! must overlap any group of standbys that can acknowledge a commit (`numsync` of the
//! setting). [`plan`] moves the setting and the key, one at a time, from where they stand to
//! where they should be (every streaming candidate listed, `numsync` =
//! `min(synchronous_node_count, candidates)`, `quorum` = candidates − `numsync`) along a
//! shortest path of states that each keep that rule, also for commits acknowledged under an
//! earlier setting: a key change that lets smaller groups elect is taken only once the
//! standbys that make it safe are confirmed to hold everything acknowledged before the
//! current setting (see [`crate::synchronous::track_confirmations`]). Raising either number
//! comes first, lowering the other after.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

/// The two halves of quorum commit as they stand (or should stand).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumState {
    /// The `sync` key's `quorum`.
    pub quorum: usize,
    /// The `sync` key's `sync_standby` (the leader is a voter besides them).
    pub voters: Vec<String>,
    /// `ANY numsync (…)` in `synchronous_standby_names`.
    pub numsync: usize,
    pub sync: Vec<String>,
}

/// One change, made in the order given, each only after the one before succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Write the `sync` key with this leader-relative state.
    Key { quorum: usize, voters: Vec<String> },
    /// Set `synchronous_standby_names` to `ANY numsync (sync)` (empty: none).
    Setting { numsync: usize, sync: Vec<String> },
}

/// A state in bitmask form over the names involved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Masks {
    quorum: usize,
    voters: u64,
    numsync: usize,
    sync: u64,
    /// No setting changed on the way here: the confirmations observed still hold.
    fresh: bool,
}

/// The bits of `list` over `names`, adding names not seen yet (case-insensitively; 64 at most,
/// far beyond any cluster).
fn mask(list: &[String], names: &mut Vec<String>) -> u64 {
    list.iter().fold(0u64, |m, n| {
        let i = match names.iter().position(|x| x.eq_ignore_ascii_case(n)) {
            Some(i) => i,
            None => {
                names.push(n.clone());
                names.len() - 1
            }
        };
        if i < 64 { m | (1u64 << i) } else { m }
    })
}

fn count(m: u64) -> usize {
    m.count_ones() as usize
}

fn nested(a: u64, b: u64) -> bool {
    a & !b == 0 || b & !a == 0
}

/// Whether a commit acknowledged under the setting is held by every group the key lets elect.
fn overlaps(quorum: usize, voters: u64, numsync: usize, sync: u64) -> bool {
    voters == 0 || (nested(voters, sync) && count(voters | sync) <= quorum.saturating_add(numsync))
}

fn valid_key(quorum: usize, voters: u64) -> bool {
    if voters == 0 {
        quorum == 0
    } else {
        quorum < count(voters)
    }
}

fn valid_setting(numsync: usize, sync: u64) -> bool {
    if sync == 0 {
        numsync == 0
    } else {
        (1..=count(sync)).contains(&numsync)
    }
}

/// How far a state is from the target (0 when there).
fn distance(s: &Masks, t: &Masks) -> usize {
    count(s.voters ^ t.voters)
        + count(s.sync ^ t.sync)
        + s.quorum.abs_diff(t.quorum)
        + s.numsync.abs_diff(t.numsync)
}

/// The steps from `current` to the state every member of `active` (the streaming standbys that
/// may be synchronous) is listed in, with `numsync = min(wanted, active)`; each step keeps
/// every acknowledged commit on whoever can be elected. `confirmed`: members of the current
/// setting known to hold everything acknowledged before it was set. When the target cannot be
/// reached yet (a confirmation is missing), the steps that bring it closest; none when no safe
/// step helps. Names compare case-insensitively, as PostgreSQL and Patroni compare them.
pub fn plan(
    current: &QuorumState,
    confirmed: &[String],
    active: &[String],
    wanted: usize,
) -> Vec<Step> {
    let mut names: Vec<String> = Vec::new();
    let voters = mask(&current.voters, &mut names);
    let sync = mask(&current.sync, &mut names);
    let active = mask(active, &mut names);
    let confirmed = mask(confirmed, &mut names) & sync;
    if names.len() > 64 {
        // far beyond any cluster: no step rather than a wrong one
        return Vec::new();
    }
    let start = Masks {
        quorum: current.quorum.min(count(voters)),
        voters,
        numsync: current.numsync.min(count(sync)),
        sync,
        fresh: true,
    };
    let numsync = wanted.max(1).min(count(active));
    let target = Masks {
        quorum: count(active) - numsync,
        voters: active,
        numsync,
        sync: active,
        fresh: false,
    };
    if distance(&start, &target) == 0 {
        return Vec::new();
    }
    // the sets a step may use: what is listed now, what should be, and their unions and
    // intersections
    let mut family = vec![0u64, voters, sync, active];
    loop {
        let mut grown = family.clone();
        for a in &family {
            for b in &family {
                for m in [a | b, a & b] {
                    if !grown.contains(&m) {
                        grown.push(m);
                    }
                }
            }
        }
        if grown.len() == family.len() {
            break;
        }
        family = grown;
    }
    // Dijkstra over safe states; a setting that waits for more standbys than stream costs more
    let blocking = |s: &Masks| s.numsync > count(s.sync & active);
    let mut cost: HashMap<Masks, usize> = HashMap::new();
    let mut came: HashMap<Masks, Masks> = HashMap::new();
    let mut heap = BinaryHeap::new();
    cost.insert(start, 0);
    heap.push(Reverse((0usize, start)));
    let mut best = (distance(&start, &target), 0usize, start);
    while let Some(Reverse((c, s))) = heap.pop() {
        if cost.get(&s).is_some_and(|&known| known < c) {
            continue;
        }
        let d = distance(&s, &target);
        if (d, c) < (best.0, best.1) {
            best = (d, c, s);
        }
        if d == 0 {
            break;
        }
        let mut next = Vec::new();
        for &v in &family {
            for q in 0..=count(v) {
                let to = Masks {
                    quorum: q,
                    voters: v,
                    ..s
                };
                let elects_only_as_before = q >= s.quorum.saturating_add(count(v & !s.voters));
                let confirmed_cover = s.fresh && count(v & !confirmed) <= q;
                if to != s
                    && valid_key(q, v)
                    && overlaps(q, v, s.numsync, s.sync)
                    && (elects_only_as_before || confirmed_cover)
                {
                    next.push(to);
                }
            }
        }
        for &g in &family {
            for k in 0..=count(g) {
                let to = Masks {
                    numsync: k,
                    sync: g,
                    fresh: false,
                    ..s
                };
                if (k, g) != (s.numsync, s.sync)
                    && valid_setting(k, g)
                    && overlaps(s.quorum, s.voters, k, g)
                {
                    next.push(to);
                }
            }
        }
        for to in next {
            let step_cost = 1 + if blocking(&to) && !blocking(&s) {
                10
            } else {
                0
            };
            let c2 = c + step_cost;
            if cost.get(&to).is_none_or(|&known| c2 < known) {
                cost.insert(to, c2);
                came.insert(to, s);
                heap.push(Reverse((c2, to)));
            }
        }
    }
    let (d, _, end) = best;
    if d >= distance(&start, &target) {
        return Vec::new();
    }
    let mut path = vec![end];
    while let Some(prev) = came.get(path.last().unwrap_or(&start)) {
        path.push(*prev);
        if *prev == start {
            break;
        }
    }
    path.reverse();
    let list = |m: u64| -> Vec<String> {
        let mut v: Vec<String> = names
            .iter()
            .enumerate()
            .filter(|(i, _)| *i < 64 && m & (1u64 << i) != 0)
            .map(|(_, n)| n.clone())
            .collect();
        v.sort();
        v
    };
    path.windows(2)
        .map(|w| {
            let (a, b) = (w[0], w[1]);
            if (a.quorum, a.voters) != (b.quorum, b.voters) {
                Step::Key {
                    quorum: b.quorum,
                    voters: list(b.voters),
                }
            } else {
                Step::Setting {
                    numsync: b.numsync,
                    sync: list(b.sync),
                }
            }
        })
        .collect()
}

/// Whether a member may win the leader race in quorum commit: `votes` running members of the
/// key's voting set (its leader and voters) at or behind it, and `quorum` from the key. A
/// voter needs `quorum` of them, a member outside the set one more; the leader that wrote the
/// key may take the lock back alone when nobody is ahead of it.
pub fn has_quorum(
    me: &str,
    key_leader: &str,
    voters: &[String],
    quorum: usize,
    votes: usize,
    anyone_ahead: bool,
) -> bool {
    let is_leader = key_leader.eq_ignore_ascii_case(me);
    if is_leader && !anyone_ahead {
        return true;
    }
    let in_set = is_leader || voters.iter().any(|v| v.eq_ignore_ascii_case(me));
    if in_set {
        votes >= quorum
    } else {
        votes > quorum
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn names(s: &str) -> Vec<String> {
        s.split(',')
            .filter(|x| !x.is_empty())
            .map(str::to_string)
            .collect()
    }

    fn state(q: usize, v: &str, k: usize, g: &str) -> QuorumState {
        QuorumState {
            quorum: q,
            voters: names(v),
            numsync: k,
            sync: names(g),
        }
    }

    /// Whether a commit acknowledged under `numsync` of `sync` is on every group `quorum` and
    /// `voters` let elect (the invariant [`plan`] keeps), by name.
    fn overlap_holds(quorum: usize, voters: &[String], numsync: usize, sync: &[String]) -> bool {
        let mut names: Vec<String> = Vec::new();
        let v = mask(voters, &mut names);
        let s = mask(sync, &mut names);
        overlaps(quorum, v, numsync, s)
    }

    fn apply(s: &mut QuorumState, step: &Step) {
        match step {
            Step::Key { quorum, voters } => {
                s.quorum = *quorum;
                s.voters = voters.clone();
            }
            Step::Setting { numsync, sync } => {
                s.numsync = *numsync;
                s.sync = sync.clone();
            }
        }
    }

    #[test]
    fn steady_state_needs_nothing() {
        assert!(plan(&state(1, "a,b", 1, "a,b"), &[], &names("a,b"), 1).is_empty());
    }

    #[test]
    fn a_new_standby_joins_the_key_before_the_setting() {
        let steps = plan(&state(0, "a,b", 2, "a,b"), &[], &names("a,b,c"), 2);
        assert_eq!(
            steps,
            vec![
                Step::Key {
                    quorum: 1,
                    voters: names("a,b,c")
                },
                Step::Setting {
                    numsync: 2,
                    sync: names("a,b,c")
                },
            ]
        );
    }

    #[test]
    fn raising_the_count_waits_for_confirmation_before_lowering_the_quorum() {
        let start = state(2, "a,b,c", 1, "a,b,c");
        let steps = plan(&start, &[], &names("a,b,c"), 2);
        assert_eq!(
            steps,
            vec![Step::Setting {
                numsync: 2,
                sync: names("a,b,c")
            }]
        );
        let mut s = start;
        apply(&mut s, &steps[0]);
        // nothing confirmed under the new setting yet: the quorum stays
        assert!(plan(&s, &[], &names("a,b,c"), 2).is_empty());
        assert_eq!(
            plan(&s, &names("a,b"), &names("a,b,c"), 2),
            vec![Step::Key {
                quorum: 1,
                voters: names("a,b,c")
            }]
        );
    }

    #[test]
    fn lowering_the_count_raises_the_quorum_first() {
        let steps = plan(&state(1, "a,b,c", 2, "a,b,c"), &[], &names("a,b,c"), 1);
        assert_eq!(
            steps,
            vec![
                Step::Key {
                    quorum: 2,
                    voters: names("a,b,c")
                },
                Step::Setting {
                    numsync: 1,
                    sync: names("a,b,c")
                },
            ]
        );
    }

    #[test]
    fn a_lost_standby_leaves_and_the_quorum_drops_once_the_rest_confirmed() {
        let mut s = state(1, "a,b,c", 2, "a,b,c");
        let steps = plan(&s, &[], &names("a,b"), 2);
        for step in &steps {
            apply(&mut s, step);
        }
        // c is gone from both; the quorum still counts it until a and b are confirmed
        assert_eq!(s, state(1, "a,b", 2, "a,b"), "{steps:?}");
        assert!(plan(&s, &[], &names("a,b"), 2).is_empty());
        assert_eq!(
            plan(&s, &names("a,b"), &names("a,b"), 2),
            vec![Step::Key {
                quorum: 0,
                voters: names("a,b")
            }]
        );
    }

    #[test]
    fn no_standby_left_means_only_the_leader_may_be_promoted_before_commits_go_async() {
        let steps = plan(&state(0, "a", 1, "a"), &[], &[], 1);
        assert_eq!(
            steps,
            vec![
                Step::Key {
                    quorum: 0,
                    voters: vec![]
                },
                Step::Setting {
                    numsync: 0,
                    sync: vec![]
                },
            ]
        );
    }

    #[test]
    fn votes() {
        let v = names("b,c");
        assert!(has_quorum("b", "a", &v, 1, 1, true));
        assert!(!has_quorum("b", "a", &v, 1, 0, false));
        assert!(!has_quorum("d", "a", &v, 1, 1, false));
        assert!(has_quorum("d", "a", &v, 1, 2, false));
        assert!(has_quorum("a", "a", &v, 1, 0, false));
        assert!(!has_quorum("a", "a", &v, 1, 0, true));
    }

    /// A brute-force model of the promise: commits are acknowledged by `numsync` standbys of
    /// the setting in force, each standby holds a prefix of the WAL; whoever a key lets elect
    /// (a voter with `quorum` voters at or behind it, or `quorum + 1` voters for anyone else;
    /// the leader is never among the candidates here as it holds everything) must hold every
    /// acknowledged commit. Standbys flush in every order, settings and keys follow `plan`.
    fn elected_has_everything(flushed: &[u64], acked: u64, s: &QuorumState, all: &[String]) {
        let pos = |n: &str| all.iter().position(|x| x == n).map_or(0, |i| flushed[i]);
        for cand in all {
            let mine = pos(cand);
            let in_set = s.voters.contains(cand);
            let behind = s
                .voters
                .iter()
                .filter(|v| *v != cand && pos(v) <= mine)
                .count();
            let wins = if in_set {
                behind >= s.quorum
            } else {
                behind > s.quorum
            } && !s.voters.is_empty();
            assert!(
                !wins || mine >= acked,
                "{cand} at {mine} can be elected without the commit at {acked}: {s:?} {flushed:?}"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn every_path_keeps_acknowledged_commits(
            events in proptest::collection::vec((0usize..4, 0u8..16, 1usize..4, 0u8..4), 1..40),
        ) {
            let all = names("a,b,c,d");
            let mut s = state(0, "", 0, "");
            let mut flushed = vec![0u64; 4];
            let mut wal = 0u64;
            let mut acked = 0u64;
            // confirmation: the primary's position when the current setting was set
            let mut since = 0u64;
            for (who, alive_bits, wanted, writes) in events {
                // some writes: standbys that stream flush some of it, in any order
                for _ in 0..writes {
                    wal += 1;
                    let streaming: Vec<usize> = (0..4).filter(|i| alive_bits & (1 << i) != 0).collect();
                    for (n, &i) in streaming.iter().enumerate() {
                        if !(n + who + wal as usize).is_multiple_of(3) {
                            flushed[i] = wal;
                        }
                    }
                    // acknowledged when numsync of the setting have it (or no setting at all)
                    let holders = s.sync.iter().filter(|n| {
                        let i = all.iter().position(|x| x == *n).unwrap_or(0);
                        flushed[i] >= wal
                    }).count();
                    if s.numsync == 0 || holders >= s.numsync {
                        acked = wal;
                    }
                    elected_has_everything(&flushed, acked, &s, &all);
                }
                let active: Vec<String> = (0..4)
                    .filter(|i| alive_bits & (1 << i) != 0)
                    .map(|i| all[i].clone())
                    .collect();
                let confirmed: Vec<String> = s.sync.iter().filter(|n| {
                    let i = all.iter().position(|x| x == *n).unwrap_or(0);
                    flushed[i] >= since
                }).cloned().collect();
                for step in plan(&s, &confirmed, &active, wanted) {
                    apply(&mut s, &step);
                    prop_assert!(overlap_holds(s.quorum, &s.voters, s.numsync, &s.sync), "{s:?}");
                    if matches!(step, Step::Setting { .. }) {
                        since = wal;
                    }
                    elected_has_everything(&flushed, acked, &s, &all);
                }
            }
        }

        #[test]
        fn the_target_is_reached_once_standbys_confirm(
            v in 0u8..16, g in 0u8..16, a in 0u8..16, wanted in 1usize..4,
        ) {
            let all = names("a,b,c,d");
            let pick = |bits: u8| -> Vec<String> {
                (0..4).filter(|i| bits & (1 << i) != 0).map(|i| all[i].clone()).collect()
            };
            // start from a safe state
            let sync = pick(g);
            let voters = pick(v);
            let numsync = sync.len().min(1);
            let quorum = voters.len().saturating_sub(1);
            prop_assume!(overlap_holds(quorum, &voters, numsync, &sync));
            let mut s = QuorumState { quorum, voters, numsync, sync };
            let active = pick(a);
            for _ in 0..8 {
                let confirmed = s.sync.clone();
                for step in plan(&s, &confirmed, &active, wanted) {
                    apply(&mut s, &step);
                }
            }
            let k = wanted.min(active.len());
            prop_assert_eq!(s.sync.clone(), active.clone());
            prop_assert_eq!(s.voters.clone(), active.clone());
            prop_assert_eq!(s.numsync, k);
            prop_assert_eq!(s.quorum, active.len() - k);
        }
    }
}
