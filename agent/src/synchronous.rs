//! The synchronous-replication rules of the decision core (pure, like [`crate::ha`]): which
//! standbys the primary names in `synchronous_standby_names`, when it publishes them in the
//! `sync` key, and who may be promoted while that key holds.
//!
//! The ordering that keeps acknowledged commits safe: a standby is put into the setting first
//! and published in `sync` only once PostgreSQL reports it synchronous *and* it has flushed
//! past where the primary stood a cycle after that was first seen (commits acknowledged before
//! then may have waited for someone else, while every process took the new setting in); a
//! standby leaves `sync` first and the setting after.
//! Only members listed in `sync` (or the leader that wrote it) may be promoted, so a promoted
//! member always holds every commit a client was told about. In strict mode a primary with no
//! synchronous standby names a placeholder nobody matches: commits wait instead of being
//! acknowledged unsafely.

use crate::ha::{Action, Observation};
use shared::dcs::{Cluster, STRICT_SYNC_PLACEHOLDER, SyncMode};

/// A standby connected to the local primary, from `pg_stat_replication`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandbyLink {
    /// Its `application_name` (the member name).
    pub name: String,
    pub streaming: bool,
    /// PostgreSQL counts it as synchronous (`sync_state` `sync` or `quorum`).
    pub sync: bool,
    pub flush_lsn: Option<u64>,
}

/// Members that may serve as synchronous standbys, as Patroni chooses them: every member but
/// those that are `nosync` (the tag, or a `sync_priority` at or below 0 without it). Members
/// that may be promoted come first (a `nofailover` one only when no other will do), then the
/// higher `sync_priority`, then the name.
fn candidates(cluster: &Cluster, me: &str) -> Vec<(String, i64)> {
    let mut v: Vec<(bool, String, i64)> = cluster
        .members
        .iter()
        .filter(|m| m.name != me)
        .filter(|m| !m.data.tag_view().no_sync())
        .map(|m| {
            (
                m.data.no_failover(),
                m.name.clone(),
                m.data.tag_view().sync_priority(),
            )
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0).then(b.2.cmp(&a.2)).then(a.1.cmp(&b.1)));
    v.into_iter().map(|(_, name, prio)| (name, prio)).collect()
}

fn same(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// The members that stream from this primary and may be synchronous, by priority; as
/// Patroni applies `maximum_lag_on_syncnode`, one further behind the most advanced (or this
/// primary's position when there is one) than that is left out, so that a hung synchronous
/// standby is replaced by one that keeps up.
fn streaming_candidates(obs: &Observation<'_>, cluster: &Cluster) -> Vec<(String, i64)> {
    let link = |name: &str| obs.pg.standbys.iter().find(|s| same(&s.name, name));
    let mut eligible: Vec<(String, i64)> = candidates(cluster, obs.me)
        .into_iter()
        .filter(|(n, _)| link(n).is_some_and(|l| l.streaming))
        .collect();
    if let Some(max_lag) = cluster.dynamic_config().maximum_lag_on_syncnode() {
        let flushed = |n: &str| link(n).and_then(|l| l.flush_lsn);
        let reference = if eligible.len() > 1 {
            eligible.iter().filter_map(|(n, _)| flushed(n)).max()
        } else {
            obs.pg.wal_position
        };
        if let Some(reference) = reference {
            eligible.retain(|(n, _)| {
                flushed(n).is_some_and(|f| reference.saturating_sub(f) <= max_lag)
            });
        }
    }
    eligible
}

/// Members of the setting PostgreSQL reports synchronous that flushed past the position read a
/// cycle after that was first seen: they hold every commit acknowledged before the setting.
fn confirmed(obs: &Observation<'_>) -> Vec<String> {
    let names = obs.pg.sync_names.clone().unwrap_or_default();
    names
        .into_iter()
        .filter(|n| {
            let since = obs
                .pg
                .sync_since
                .iter()
                .find(|(x, _)| same(x, n))
                .map(|(_, lsn)| *lsn);
            obs.pg.standbys.iter().any(|l| {
                same(&l.name, n) && l.sync && l.flush_lsn.zip(since).is_some_and(|(f, s)| f >= s)
            })
        })
        .collect()
}

/// What the lock holder running as primary does about synchronous replication this cycle.
pub fn primary_duty(obs: &Observation<'_>, cluster: &Cluster) -> Vec<Action> {
    let cfg = cluster.dynamic_config();
    let key = cluster.sync.as_ref();
    if cfg.synchronous_mode() == SyncMode::Off {
        let mut actions = Vec::new();
        if let Some(k) = key {
            actions.push(Action::DeleteSync {
                version: k.mod_revision,
            });
        }
        if obs.pg.sync_names.is_some() {
            actions.push(Action::SetSyncNames {
                names: None,
                any: None,
            });
        }
        return actions;
    }
    if cfg.synchronous_mode() == SyncMode::Quorum {
        return quorum_duty(obs, cluster);
    }
    let strict = cfg.synchronous_mode_strict();
    let count = cfg.synchronous_node_count();
    // a setting or key quorum commit left (synchronous_mode was quorum) promises nothing in
    // priority terms: the key is emptied and the setting named anew before anyone is published
    let from_quorum = obs.pg.sync_any.is_some() || key.is_some_and(|k| k.value.quorum > 0);
    // what the key says now, when it is this leader's
    let published: Vec<String> = key
        .map(|k| &k.value)
        .filter(|k| k.leader.as_deref() == Some(obs.me) && !from_quorum)
        .map(|k| k.sync_standby.clone())
        .unwrap_or_default();
    let link = |name: &str| obs.pg.standbys.iter().find(|s| same(&s.name, name));
    let mut eligible = streaming_candidates(obs, cluster);
    eligible.sort_by_key(|(n, prio)| {
        (
            !published.iter().any(|p| same(p, n)),
            !link(n).is_some_and(|l| l.sync),
            -prio,
        )
    });
    let picked: Vec<String> = eligible.into_iter().take(count).map(|(n, _)| n).collect();
    let confirmed_now = if from_quorum {
        Vec::new()
    } else {
        confirmed(obs)
    };
    let publish: Vec<String> = picked
        .iter()
        .filter(|n| {
            published.iter().any(|p| same(p, n)) || confirmed_now.iter().any(|c| same(c, n))
        })
        .cloned()
        .collect();
    let mut actions = Vec::new();
    let key_is_mine = key.is_some_and(|k| k.value.leader.as_deref() == Some(obs.me));
    let mut sorted_pub = publish.clone();
    sorted_pub.sort();
    let mut sorted_old = published.clone();
    sorted_old.sort();
    if !key_is_mine || sorted_pub != sorted_old || from_quorum {
        // removals reach the key before the setting; additions only once confirmed
        actions.push(Action::WriteSync {
            standbys: publish.clone(),
            quorum: 0,
            version: key.map(|k| k.mod_revision),
        });
    }
    let mut names = picked;
    if names.is_empty() && strict {
        names = strict_names(obs.me, cluster, publish);
    }
    names.sort();
    if obs.pg.sync_names.as_ref() != Some(&names) || obs.pg.sync_any.is_some() {
        actions.push(Action::SetSyncNames {
            names: Some(names),
            any: None,
        });
    }
    actions
}

/// The setting as quorum commit reads it: `(k, names)`; a priority setting (`k (…)`, every
/// name needed) as `ANY` of all its names, which promises the same.
fn quorum_setting(obs: &Observation<'_>) -> (usize, Vec<String>) {
    let names: Vec<String> = obs
        .pg
        .sync_names
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n != STRICT_SYNC_PLACEHOLDER)
        .collect();
    let k = obs.pg.sync_any.unwrap_or(names.len()).min(names.len());
    (k, names)
}

/// Quorum commit on the primary holding the lock: after a failover the key is taken over with
/// the old leader among the voters (the setting already says as much, see
/// [`before_primary`]); then [`crate::quorum::plan`] moves the setting and the key step by
/// step to every streaming candidate. Strict mode with no candidate keeps the voters named (or
/// the placeholder), so that commits wait.
fn quorum_duty(obs: &Observation<'_>, cluster: &Cluster) -> Vec<Action> {
    let cfg = cluster.dynamic_config();
    let key = cluster.sync.as_ref();
    let version = key.map(|k| k.mod_revision);
    let (numsync, sync) = quorum_setting(obs);
    let setting = |numsync: usize, mut names: Vec<String>| {
        names.sort();
        Action::SetSyncNames {
            names: Some(names),
            any: Some(numsync),
        }
    };
    let mut actions = Vec::new();
    let key_leader = key.and_then(|k| k.value.leader.clone());
    let (quorum, voters) = match key_leader {
        Some(l) if same(&l, obs.me) => {
            let k = &key.map(|k| k.value.clone()).unwrap_or_default();
            (
                usize::try_from(k.quorum).unwrap_or(usize::MAX),
                k.sync_standby.clone(),
            )
        }
        // promoted in place of the key's leader: the voting set stays what it was, with this
        // node as its leader and the old one as a voter
        Some(_) if key.is_some_and(|k| !k.value.sync_standby.is_empty()) => {
            return quorum_takeover(obs, cluster);
        }
        _ => {
            // no key of this leader's yet: claim it, naming nobody (only the leader may be
            // promoted), which holds whatever the setting says
            actions.push(Action::WriteSync {
                standbys: Vec::new(),
                quorum: 0,
                version,
            });
            (0, Vec::new())
        }
    };
    // as Patroni: members that may be promoted; nofailover ones only to make up
    // synchronous_node_count (a voter that can never win would only hold others back)
    let wanted = cfg.synchronous_node_count();
    let (mut active, others): (Vec<String>, Vec<String>) = streaming_candidates(obs, cluster)
        .into_iter()
        .map(|(n, _)| n)
        .partition(|n| !cluster.member(n).is_some_and(|m| m.data.no_failover()));
    let missing = wanted.saturating_sub(active.len());
    active.extend(others.into_iter().take(missing));
    if active.is_empty() && cfg.synchronous_mode_strict() {
        // nobody to name: commits wait on the voters (or a name nobody has), the key stays
        let (k, names) = if voters.is_empty() {
            (1, vec![STRICT_SYNC_PLACEHOLDER.to_string()])
        } else {
            (voters.len().saturating_sub(quorum).max(1), voters.clone())
        };
        if setting_differs(obs, k, &names) {
            actions.push(setting(k, names));
        }
        return actions;
    }
    let current = crate::quorum::QuorumState {
        quorum,
        voters,
        numsync,
        sync,
    };
    let mut keys_written = usize::from(!actions.is_empty());
    for step in crate::quorum::plan(&current, &confirmed(obs), &active, wanted) {
        match step {
            crate::quorum::Step::Key { quorum, voters } => {
                // one compare-and-swap write a cycle: the next needs the version this one makes
                keys_written += 1;
                if keys_written > 1 {
                    break;
                }
                actions.push(Action::WriteSync {
                    standbys: voters,
                    quorum: quorum as u64,
                    version,
                });
            }
            crate::quorum::Step::Setting { numsync, sync } => {
                actions.push(setting(numsync, sync));
            }
        }
    }
    // a priority setting left from synchronous_mode: on becomes ANY with the same promise
    if actions.is_empty() && obs.pg.sync_any.is_none() && !current.sync.is_empty() {
        actions.push(setting(current.numsync, current.sync));
    }
    actions
}

/// Whether the setting in force is other than `ANY k` of `names` (in any order).
fn setting_differs(obs: &Observation<'_>, k: usize, names: &[String]) -> bool {
    let mut want = names.to_vec();
    want.sort();
    let mut current = obs.pg.sync_names.clone().unwrap_or_default();
    current.sort();
    current != want || obs.pg.sync_any != Some(k)
}

/// Quorum commit on a member taking over (about to promote, or promoted) from the key's
/// leader, or starting as primary with voters in the key: the setting the old voting set
/// promises (see [`takeover_setting`]) unless it is in force, then — when the key names
/// another leader — the key naming this node with the same voters and quorum, so that the
/// old leader can no longer take the lock back alone.
fn quorum_takeover(obs: &Observation<'_>, cluster: &Cluster) -> Vec<Action> {
    let strict = cluster.dynamic_config().synchronous_mode_strict();
    let (k, mut names) = takeover_setting(obs.me, cluster, strict);
    names.sort();
    let mut actions = Vec::new();
    if setting_differs(obs, k, &names) {
        actions.push(Action::SetSyncNames {
            names: Some(names.clone()),
            any: Some(k),
        });
    }
    if let Some(key) = cluster.sync.as_ref().filter(|k| {
        !k.value.sync_standby.is_empty()
            && k.value.leader.as_deref().is_some_and(|l| !same(l, obs.me))
    }) {
        names.retain(|n| n != STRICT_SYNC_PLACEHOLDER);
        actions.push(Action::WriteSync {
            quorum: if names.is_empty() {
                0
            } else {
                key.value.quorum
            },
            standbys: names,
            version: Some(key.mod_revision),
        });
    }
    actions
}

/// What a member promoted in quorum commit names from its first commit: every other member of
/// the key's voting set (its leader and voters), `ANY k` with `k` = members − quorum − 1 (one
/// more when this node was no voter), so that whoever the key lets elect next still holds
/// every commit; at least one in strict mode.
fn takeover_setting(me: &str, cluster: &Cluster, strict: bool) -> (usize, Vec<String>) {
    let Some(key) = cluster.sync.as_ref().map(|k| &k.value) else {
        return (0, Vec::new());
    };
    let mut members: Vec<String> = key.leader.iter().cloned().collect();
    for v in &key.sync_standby {
        if !members.iter().any(|m| same(m, v)) {
            members.push(v.clone());
        }
    }
    let was_member = members.iter().any(|m| same(m, me));
    let quorum = usize::try_from(key.quorum).unwrap_or(usize::MAX);
    let mut k = members
        .len()
        .saturating_sub(quorum)
        .saturating_sub(1)
        .saturating_add(usize::from(!was_member));
    members.retain(|m| !same(m, me));
    if strict {
        k = k.max(1);
    } else if k == 0 {
        // the key asked for no standby's acknowledgement (`ANY 0` is no setting)
        return (0, Vec::new());
    }
    if members.is_empty() {
        return if strict {
            (1, vec![STRICT_SYNC_PLACEHOLDER.to_string()])
        } else {
            (0, Vec::new())
        };
    }
    (k.min(members.len()), members)
}

/// Strict mode with no streaming standby to pick: the published ones, else the best running
/// candidates from the member keys (so that commits flow the moment one of them streams from
/// this node, without waiting for a cycle), else the placeholder. Naming a standby that is not
/// confirmed yet is safe: commits wait for it, and it is published only once confirmed.
fn strict_names(me: &str, cluster: &Cluster, published: Vec<String>) -> Vec<String> {
    if !published.is_empty() {
        return published;
    }
    let running: Vec<String> = candidates(cluster, me)
        .into_iter()
        .filter(|(n, _)| cluster.member(n).is_some_and(|m| m.data.state == "running"))
        .take(cluster.dynamic_config().synchronous_node_count())
        .map(|(n, _)| n)
        .collect();
    if running.is_empty() {
        vec![STRICT_SYNC_PLACEHOLDER.to_string()]
    } else {
        running
    }
}

/// Before this node promotes or starts as primary in strict synchronous mode: what
/// `synchronous_standby_names` must say from its first commit, so that nothing is acknowledged
/// without a synchronous standby.
pub fn before_primary(obs: &Observation<'_>, cluster: &Cluster) -> Vec<Action> {
    let cfg = cluster.dynamic_config();
    let mut actions = Vec::new();
    if cfg.synchronous_mode() == SyncMode::Quorum {
        // with voters in the key, the setting they promise from the first commit (also after a
        // restart of this leader); without, only strict mode asks for one
        let voters = cluster
            .sync
            .as_ref()
            .is_some_and(|k| k.value.leader.is_some() && !k.value.sync_standby.is_empty());
        if !voters && !cfg.synchronous_mode_strict() {
            return actions;
        }
        return quorum_takeover(obs, cluster);
    }
    if cfg.synchronous_mode() == SyncMode::Off {
        return actions;
    }
    if !cfg.synchronous_mode_strict() {
        // the key names this node before its first commit (asynchronous until a standby is
        // synchronous): else the members the old key allows — its leader among them — could
        // be promoted past commits this primary acknowledged (the simulation's seed 746).
        // Patroni writes it before promoting too; a key changed meanwhile stops the promotion
        // until the next cycle.
        let key = cluster.sync.as_ref();
        if key.is_none_or(|k| k.value.leader.as_deref().is_none_or(|l| !same(l, obs.me))) {
            actions.push(Action::WriteSync {
                standbys: Vec::new(),
                quorum: 0,
                version: key.map(|k| k.mod_revision),
            });
        }
        return actions;
    }
    let published: Vec<String> = cluster
        .sync
        .as_ref()
        .map(|k| &k.value)
        .filter(|k| k.leader.as_deref() == Some(obs.me))
        .map(|k| k.sync_standby.clone())
        .unwrap_or_default();
    let mut names = strict_names(obs.me, cluster, published);
    names.sort();
    if obs.pg.sync_names.as_ref() != Some(&names) {
        actions.push(Action::SetSyncNames {
            names: Some(names),
            any: None,
        });
    }
    actions
}

/// In synchronous mode: why this node may not race for the lock (it is neither a published
/// synchronous standby nor the leader that published them), or `None`.
pub fn race_refusal(me: &str, cluster: &Cluster) -> Option<String> {
    // quorum commit counts votes instead (see `crate::ha::race_refusal`)
    if cluster.dynamic_config().synchronous_mode() == SyncMode::Quorum {
        return None;
    }
    listed_refusal(me, cluster)
}

/// Why the `sync` key does not list `name` among those who may be promoted, or `None`.
fn listed_refusal(me: &str, cluster: &Cluster) -> Option<String> {
    if cluster.sync_allows_promotion(me) {
        return None;
    }
    let standbys = &cluster.sync.as_ref()?.value.sync_standby;
    Some(if standbys.is_empty() {
        "synchronous mode: no synchronous standby is published, and only one may be promoted".into()
    } else {
        format!(
            "synchronous mode: only the synchronous standby ({}) may be promoted",
            standbys.join(", ")
        )
    })
}

/// For a member named in a `failover` key while there is no leader: why synchronous mode
/// forbids promoting it, or `None`. A switchover (the key names a leader) keeps the rule; a
/// failover is the operator's explicit choice and may override it, except in strict mode,
/// whose promise is that no acknowledged commit is lost (turn strict mode off to force it).
pub fn requested_refusal(name: &str, cluster: &Cluster, switchover: bool) -> Option<String> {
    let cfg = cluster.dynamic_config();
    // quorum commit: votes decide, not the list (see `crate::ha::requested_race`)
    if (!switchover && !cfg.synchronous_mode_strict()) || cfg.synchronous_mode() == SyncMode::Quorum
    {
        return None;
    }
    listed_refusal(name, cluster)
}

/// Follows which members of the setting PostgreSQL reports synchronous, across
/// observations: a member first seen so is noted (`None`); at the next observation it gets the
/// primary's position read then. Returns the members with a position (`sync_since`).
/// With `settled` false (the setting changed only just now) nobody gets a position yet.
pub fn track_confirmations(
    seen: &mut std::collections::HashMap<String, Option<u64>>,
    names: &[String],
    standbys: &[StandbyLink],
    position: Option<u64>,
    settled: bool,
) -> Vec<(String, u64)> {
    let sync_now: Vec<&str> = standbys
        .iter()
        .filter(|l| l.sync && names.iter().any(|n| same(n, &l.name)))
        .map(|l| l.name.as_str())
        .collect();
    seen.retain(|n, _| sync_now.contains(&n.as_str()));
    for n in sync_now {
        seen.entry(n.to_string())
            .and_modify(|since| {
                if since.is_none() && settled {
                    *since = position;
                }
            })
            .or_insert(None);
    }
    let mut out: Vec<(String, u64)> = seen
        .iter()
        .filter_map(|(n, since)| since.map(|l| (n.clone(), l)))
        .collect();
    out.sort();
    out
}

/// The value of `synchronous_standby_names` for these member names: priority mode (`any`
/// `None`) `a`, or `2 (a,b)`; quorum commit `ANY 1 (a,b)`; names quoted as identifiers when
/// needed.
pub fn guc_value(names: &[String], any: Option<usize>) -> String {
    let quoted: Vec<String> = names
        .iter()
        .map(|n| {
            // `any` and `first` are keywords there
            let plain = n.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                && n.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                && n != "any"
                && n != "first";
            if plain {
                n.clone()
            } else {
                format!("\"{}\"", n.replace('"', "\"\""))
            }
        })
        .collect();
    match (quoted.len(), any) {
        (0, _) => String::new(),
        (_, Some(k)) => format!("ANY {k} ({})", quoted.join(",")),
        (1, None) => quoted[0].clone(),
        (n, None) => format!("{n} ({})", quoted.join(",")),
    }
}

/// Reads a `synchronous_standby_names` value back as `(names, any)`: `ANY k (…)` as
/// `Some(k)`; a priority form that needs every name (`a`, `n (…)`, `FIRST n (…)` with n names)
/// as `None`; one that needs fewer (`FIRST 1 (a,b)`, or a bare list `a, b`, which is FIRST 1)
/// as `Some(k)`, since k of them are all a commit is known to be on. `None` when it is none of
/// these. Names are split outside double quotes.
pub fn parse_guc_value(v: &str) -> Option<(Vec<String>, Option<usize>)> {
    let v = v.trim();
    if v.is_empty() {
        return Some((Vec::new(), None));
    }
    let (head, list) = match v.split_once('(') {
        Some((head, rest)) => (head.trim(), rest.trim_end().strip_suffix(')')?),
        None => ("", v),
    };
    let words: Vec<&str> = head.split_whitespace().collect();
    // (the number of names needed, whether it is ANY)
    let (k, quorum) = match words.as_slice() {
        [] => (None, false),
        [n] => (Some(n.parse::<usize>().ok()?), false),
        [kw, n] if kw.eq_ignore_ascii_case("any") => (Some(n.parse::<usize>().ok()?), true),
        [kw, n] if kw.eq_ignore_ascii_case("first") => (Some(n.parse::<usize>().ok()?), false),
        _ => return None,
    };
    let mut names = Vec::new();
    let (mut current, mut quoted) = (String::new(), false);
    let mut chars = list.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                current.push('"');
            }
            '"' => quoted = !quoted,
            ',' if !quoted => names.push(std::mem::take(&mut current)),
            c if quoted => current.push(c),
            c if c.is_whitespace() => {}
            c => current.push(c.to_ascii_lowercase()),
        }
    }
    names.push(current);
    names.retain(|n| !n.is_empty());
    let any = match (k, quorum) {
        (Some(k), true) => Some(k),
        (Some(k), false) if k < names.len() => Some(k),
        (None, false) if names.len() > 1 => Some(1),
        _ => None,
    };
    Some((names, any))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ha::tests::{cluster, obs, primary_pg, replica_pg};
    use shared::dcs::{DynamicConfig, SyncState, Versioned};

    fn with_config(json: &str) -> Cluster {
        let mut c = cluster(Some("n1"));
        c.config = Some(Versioned {
            value: DynamicConfig::parse(json).unwrap(),
            mod_revision: 1,
        });
        c
    }

    fn link(name: &str, sync: bool, flush: u64) -> StandbyLink {
        StandbyLink {
            name: name.into(),
            streaming: true,
            sync,
            flush_lsn: Some(flush),
        }
    }

    fn key(leader: &str, standbys: &[&str]) -> Versioned<SyncState> {
        Versioned {
            value: SyncState {
                leader: Some(leader.into()),
                quorum: 0,
                sync_standby: standbys.iter().map(|s| s.to_string()).collect(),
            },
            mod_revision: 9,
        }
    }

    #[test]
    fn off_removes_the_key_and_gives_the_setting_back() {
        let mut c = with_config("{}");
        c.sync = Some(key("n1", &["n2"]));
        let mut pg = primary_pg();
        pg.sync_names = Some(vec!["n2".into()]);
        assert_eq!(
            primary_duty(&obs("n1", Some(&c), pg, &[]), &c),
            vec![
                Action::DeleteSync { version: 9 },
                Action::SetSyncNames {
                    names: None,
                    any: None
                }
            ]
        );
    }

    #[test]
    fn a_standby_is_set_first_and_published_once_confirmed_past_the_mark() {
        let mut c = with_config(r#"{"synchronous_mode": true}"#);
        let mut pg = primary_pg();
        pg.standbys = vec![link("n2", false, 900), link("n3", false, 900)];
        // first: claim the key (nobody yet), name the best standby
        assert_eq!(
            primary_duty(&obs("n1", Some(&c), pg.clone(), &[]), &c),
            vec![
                Action::WriteSync {
                    standbys: vec![],
                    quorum: 0,
                    version: None
                },
                Action::SetSyncNames {
                    names: Some(vec!["n2".into()]),
                    any: None,
                }
            ]
        );
        c.sync = Some(key("n1", &[]));
        pg.sync_names = Some(vec!["n2".into()]);
        pg.standbys[0].sync = true;
        // synchronous, but not yet past the mark read a cycle after: not published
        pg.sync_since = vec![("n2".into(), 1000)];
        assert_eq!(
            primary_duty(&obs("n1", Some(&c), pg.clone(), &[]), &c),
            vec![]
        );
        pg.standbys[0].flush_lsn = Some(1000);
        assert_eq!(
            primary_duty(&obs("n1", Some(&c), pg.clone(), &[]), &c),
            vec![Action::WriteSync {
                standbys: vec!["n2".into()],
                quorum: 0,
                version: Some(9)
            }]
        );
        // n2 disconnects: it leaves the key first, then the setting names n3
        c.sync = Some(key("n1", &["n2"]));
        pg.standbys.remove(0);
        assert_eq!(
            primary_duty(&obs("n1", Some(&c), pg, &[]), &c),
            vec![
                Action::WriteSync {
                    standbys: vec![],
                    quorum: 0,
                    version: Some(9)
                },
                Action::SetSyncNames {
                    names: Some(vec!["n3".into()]),
                    any: None,
                }
            ]
        );
    }

    #[test]
    fn a_synchronous_standby_lagging_beyond_maximum_lag_on_syncnode_is_replaced() {
        let mut c = with_config(r#"{"synchronous_mode": true, "maximum_lag_on_syncnode": 1000}"#);
        c.sync = Some(key("n1", &["n2"]));
        let mut pg = primary_pg();
        pg.sync_names = Some(vec!["n2".into()]);
        // n2 (synchronous) hung 5000 bytes behind n3: n3 takes its place, n2 leaves the key
        pg.standbys = vec![link("n2", true, 1_000), link("n3", false, 6_000)];
        let actions = primary_duty(&obs("n1", Some(&c), pg.clone(), &[]), &c);
        assert!(
            actions.contains(&Action::WriteSync {
                standbys: vec![],
                quorum: 0,
                version: Some(9)
            }),
            "{actions:?}"
        );
        assert!(
            actions.contains(&Action::SetSyncNames {
                names: Some(vec!["n3".into()]),
                any: None,
            }),
            "{actions:?}"
        );
        // within the limit: nothing changes
        pg.standbys = vec![link("n2", true, 5_500), link("n3", false, 6_000)];
        assert_eq!(
            primary_duty(&obs("n1", Some(&c), pg.clone(), &[]), &c),
            vec![]
        );
        // without the key (or at 0): a lagging standby stays
        let c0 = with_config(r#"{"synchronous_mode": true}"#);
        let mut c0 = c0;
        c0.sync = Some(key("n1", &["n2"]));
        pg.standbys = vec![link("n2", true, 1_000), link("n3", false, 6_000)];
        assert_eq!(primary_duty(&obs("n1", Some(&c0), pg, &[]), &c0), vec![]);
    }

    /// Synchronous mode (not strict): the standby taking over names itself in the key before
    /// its first (asynchronous) commit, else the old leader the key still allows could be
    /// promoted past it (the simulation's seed 746 lost such a commit).
    #[test]
    fn a_new_primary_names_itself_in_the_key_before_promoting() {
        let mut c = with_config(r#"{"synchronous_mode": true}"#);
        c.sync = Some(key("n1", &["n2"]));
        let seen = c.clone();
        let o = obs(
            "n2",
            Some(&seen),
            crate::ha::tests::replica_pg(1000, None),
            &[],
        );
        assert_eq!(
            before_primary(&o, &c),
            vec![Action::WriteSync {
                standbys: vec![],
                quorum: 0,
                version: Some(9),
            }]
        );
        // already its own: nothing to write
        c.sync = Some(key("n2", &[]));
        assert_eq!(before_primary(&o, &c), vec![]);
        // no key yet: created
        c.sync = None;
        assert_eq!(
            before_primary(&o, &c),
            vec![Action::WriteSync {
                standbys: vec![],
                quorum: 0,
                version: None,
            }]
        );
    }

    #[test]
    fn nosync_members_are_never_chosen_and_strict_mode_blocks_without_one() {
        let mut c = with_config(r#"{"synchronous_mode": true, "synchronous_mode_strict": true}"#);
        c.members[1]
            .data
            .tags
            .insert("nosync".into(), serde_json::Value::Bool(true));
        c.sync = Some(key("n1", &[]));
        let mut pg = primary_pg();
        pg.standbys = vec![link("n2", false, 900)];
        pg.sync_names = Some(vec![]);
        // n3 runs (its member key says so) but does not stream from here yet: named already,
        // so that commits flow as soon as it does
        assert_eq!(
            primary_duty(&obs("n1", Some(&c), pg.clone(), &[]), &c),
            vec![Action::SetSyncNames {
                names: Some(vec!["n3".into()]),
                any: None,
            }]
        );
        // nobody could serve: commits wait on a name nobody has
        c.members[2].data.state = "stopped".into();
        assert_eq!(
            primary_duty(&obs("n1", Some(&c), pg, &[]), &c),
            vec![Action::SetSyncNames {
                names: Some(vec![STRICT_SYNC_PLACEHOLDER.into()]),
                any: None,
            }]
        );
    }

    #[test]
    fn only_published_members_race_and_strict_overrides_nothing() {
        let mut c = with_config(r#"{"synchronous_mode": true}"#);
        c.leader = None;
        c.sync = Some(key("n1", &["n2"]));
        assert_eq!(race_refusal("n2", &c), None);
        assert_eq!(race_refusal("n1", &c), None);
        assert!(race_refusal("n3", &c).unwrap().contains("n2"));
        // a failover names n3: the operator's choice, unless strict
        assert_eq!(requested_refusal("n3", &c, false), None);
        assert!(requested_refusal("n3", &c, true).is_some());
        let mut strict =
            with_config(r#"{"synchronous_mode": true, "synchronous_mode_strict": true}"#);
        strict.sync = c.sync.clone();
        assert!(requested_refusal("n3", &strict, false).is_some());
    }

    fn quorum_key(leader: &str, quorum: u64, voters: &[&str]) -> Versioned<SyncState> {
        let mut k = key(leader, voters);
        k.value.quorum = quorum;
        k
    }

    #[test]
    fn quorum_commit_claims_the_key_names_every_standby_then_publishes_the_voters() {
        let mut c = with_config(r#"{"synchronous_mode": "quorum"}"#);
        let mut pg = primary_pg();
        pg.standbys = vec![link("n2", false, 900), link("n3", false, 900)];
        // nothing yet: the key says only this leader may be promoted, the setting names both
        assert_eq!(
            primary_duty(&obs("n1", Some(&c), pg.clone(), &[]), &c),
            vec![
                Action::WriteSync {
                    standbys: vec![],
                    quorum: 0,
                    version: None
                },
                Action::SetSyncNames {
                    names: Some(vec!["n2".into(), "n3".into()]),
                    any: Some(1)
                },
            ]
        );
        c.sync = Some(quorum_key("n1", 0, &[]));
        pg.sync_names = Some(vec!["n2".into(), "n3".into()]);
        pg.sync_any = Some(1);
        pg.standbys = vec![link("n2", true, 900), link("n3", true, 900)];
        // not confirmed past the mark: the voters wait
        pg.sync_since = vec![("n2".into(), 1000), ("n3".into(), 1000)];
        assert_eq!(
            primary_duty(&obs("n1", Some(&c), pg.clone(), &[]), &c),
            vec![]
        );
        pg.standbys = vec![link("n2", true, 1000), link("n3", true, 1000)];
        assert_eq!(
            primary_duty(&obs("n1", Some(&c), pg, &[]), &c),
            vec![Action::WriteSync {
                standbys: vec!["n2".into(), "n3".into()],
                quorum: 1,
                version: Some(9)
            }]
        );
    }

    #[test]
    fn a_member_promoted_in_quorum_commit_names_the_old_voting_set_then_takes_the_key() {
        let mut c = with_config(r#"{"synchronous_mode": "quorum"}"#);
        c.leader = None;
        c.sync = Some(quorum_key("n1", 1, &["n2", "n3"]));
        let pg = replica_pg(1000, None);
        assert_eq!(
            before_primary(&obs("n2", Some(&c), pg, &[]), &c),
            vec![
                Action::SetSyncNames {
                    names: Some(vec!["n1".into(), "n3".into()]),
                    any: Some(1)
                },
                Action::WriteSync {
                    standbys: vec!["n1".into(), "n3".into()],
                    quorum: 1,
                    version: Some(9)
                }
            ]
        );
        let mut pg = primary_pg();
        pg.sync_names = Some(vec!["n1".into(), "n3".into()]);
        pg.sync_any = Some(1);
        assert_eq!(
            primary_duty(&obs("n2", Some(&c), pg, &[]), &c),
            vec![Action::WriteSync {
                standbys: vec!["n1".into(), "n3".into()],
                quorum: 1,
                version: Some(9)
            }]
        );
        // strict, a key naming nobody: a placeholder until a standby streams
        let mut strict =
            with_config(r#"{"synchronous_mode": "quorum", "synchronous_mode_strict": true}"#);
        strict.sync = Some(quorum_key("n2", 0, &[]));
        let mut pg = primary_pg();
        pg.standbys = vec![];
        assert_eq!(
            primary_duty(&obs("n2", Some(&strict), pg, &[]), &strict),
            vec![Action::SetSyncNames {
                names: Some(vec![STRICT_SYNC_PLACEHOLDER.into()]),
                any: Some(1)
            }]
        );
    }

    #[test]
    fn guc_values_quote_what_needs_it() {
        assert_eq!(guc_value(&[], None), "");
        assert_eq!(guc_value(&[], Some(0)), "");
        assert_eq!(guc_value(&["node2".into()], None), "node2");
        assert_eq!(
            guc_value(&["e2e-node2".into(), "n3".into()], None),
            "2 (\"e2e-node2\",n3)"
        );
        assert_eq!(
            guc_value(&["e2e-node2".into(), "n3".into()], Some(1)),
            "ANY 1 (\"e2e-node2\",n3)"
        );
        assert_eq!(
            guc_value(&[STRICT_SYNC_PLACEHOLDER.into()], None),
            STRICT_SYNC_PLACEHOLDER
        );
        // and read back as written
        for (names, any) in [
            (vec!["e2e-node2".to_string(), "n3".to_string()], Some(1)),
            (vec!["e2e-node2".to_string(), "n3".to_string()], None),
            (vec!["node2".to_string()], None),
        ] {
            assert_eq!(
                parse_guc_value(&guc_value(&names, any)),
                Some((names.clone(), any))
            );
        }
        // fewer needed than named: what a commit is known to be on
        assert_eq!(
            parse_guc_value("FIRST 1 (a, \"B\")"),
            Some((vec!["a".into(), "B".into()], Some(1)))
        );
        assert_eq!(
            parse_guc_value("a, b"),
            Some((vec!["a".into(), "b".into()], Some(1)))
        );
        // a comma inside a quoted name stays in it
        assert_eq!(
            parse_guc_value("ANY 1 (\"x,y\", z)"),
            Some((vec!["x,y".into(), "z".into()], Some(1)))
        );
        assert_eq!(parse_guc_value("ANY x (a)"), None);
        assert_eq!(parse_guc_value("ANY 1 (a"), None);
    }
}
