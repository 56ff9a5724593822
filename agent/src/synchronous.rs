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

/// Members that may serve as synchronous standbys: not tagged `nosync` or `nofailover` (a
/// synchronous standby must be promotable), `sync_priority` not at or below 0. Ordered by
/// `sync_priority`, highest first, then name.
fn candidates(cluster: &Cluster, me: &str) -> Vec<(String, i64)> {
    let mut v: Vec<(String, i64)> = cluster
        .members
        .iter()
        .filter(|m| m.name != me)
        .filter(|m| m.data.tags.get("nosync").and_then(|v| v.as_bool()) != Some(true))
        .filter(|m| !m.data.no_failover())
        .filter_map(|m| {
            let prio = m
                .data
                .tags
                .get("sync_priority")
                .and_then(|v| v.as_i64())
                .unwrap_or(1);
            (prio > 0).then(|| (m.name.clone(), prio))
        })
        .collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v
}

fn same(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
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
            actions.push(Action::SetSyncNames { names: None });
        }
        return actions;
    }
    let strict = cfg.synchronous_mode_strict();
    let count = cfg.synchronous_node_count();
    // what the key says now, when it is this leader's
    let published: Vec<String> = key
        .map(|k| &k.value)
        .filter(|k| k.leader.as_deref() == Some(obs.me))
        .map(|k| k.sync_standby.clone())
        .unwrap_or_default();
    let link = |name: &str| obs.pg.standbys.iter().find(|s| same(&s.name, name));
    // streaming candidates: those published first (stability), then PostgreSQL's current
    // synchronous ones, then by priority
    let mut eligible: Vec<(String, i64)> = candidates(cluster, obs.me)
        .into_iter()
        .filter(|(n, _)| link(n).is_some_and(|l| l.streaming))
        .collect();
    eligible.sort_by_key(|(n, prio)| {
        (
            !published.iter().any(|p| same(p, n)),
            !link(n).is_some_and(|l| l.sync),
            -prio,
        )
    });
    let picked: Vec<String> = eligible.into_iter().take(count).map(|(n, _)| n).collect();
    let in_setting = |n: &str| {
        obs.pg
            .sync_names
            .as_ref()
            .is_some_and(|v| v.iter().any(|x| same(x, n)))
    };
    let confirmed = |n: &str| {
        let since = obs
            .pg
            .sync_since
            .iter()
            .find(|(x, _)| same(x, n))
            .map(|(_, lsn)| *lsn);
        in_setting(n)
            && link(n)
                .is_some_and(|l| l.sync && l.flush_lsn.zip(since).is_some_and(|(f, s)| f >= s))
    };
    let publish: Vec<String> = picked
        .iter()
        .filter(|n| published.iter().any(|p| same(p, n)) || confirmed(n))
        .cloned()
        .collect();
    let mut actions = Vec::new();
    let key_is_mine = key.is_some_and(|k| k.value.leader.as_deref() == Some(obs.me));
    let mut sorted_pub = publish.clone();
    sorted_pub.sort();
    let mut sorted_old = published.clone();
    sorted_old.sort();
    if !key_is_mine || sorted_pub != sorted_old {
        // removals reach the key before the setting; additions only once confirmed
        actions.push(Action::WriteSync {
            standbys: publish.clone(),
            version: key.map(|k| k.mod_revision),
        });
    }
    let mut names = picked;
    if names.is_empty() && strict {
        names = strict_names(obs.me, cluster, publish);
    }
    names.sort();
    if obs.pg.sync_names.as_ref() != Some(&names) {
        actions.push(Action::SetSyncNames { names: Some(names) });
    }
    actions
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
pub fn before_primary(obs: &Observation<'_>, cluster: &Cluster) -> Option<Action> {
    let cfg = cluster.dynamic_config();
    if cfg.synchronous_mode() == SyncMode::Off || !cfg.synchronous_mode_strict() {
        return None;
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
    (obs.pg.sync_names.as_ref() != Some(&names))
        .then_some(Action::SetSyncNames { names: Some(names) })
}

/// In synchronous mode: why this node may not race for the lock (it is neither a published
/// synchronous standby nor the leader that published them), or `None`.
pub fn race_refusal(me: &str, cluster: &Cluster) -> Option<String> {
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
    let strict = cluster.dynamic_config().synchronous_mode_strict();
    if !switchover && !strict {
        return None;
    }
    race_refusal(name, cluster)
}

/// Follows which members of the setting PostgreSQL reports synchronous, across
/// observations: a member first seen so is noted (`None`); at the next observation it gets the
/// primary's position read then. Returns the members with a position (`sync_since`).
pub fn track_confirmations(
    seen: &mut std::collections::HashMap<String, Option<u64>>,
    names: &[String],
    standbys: &[StandbyLink],
    position: Option<u64>,
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
                if since.is_none() {
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

/// The value of `synchronous_standby_names` for these member names (priority mode):
/// `a`, or `2 (a,b)`; names quoted as identifiers when needed.
pub fn guc_value(names: &[String]) -> String {
    let quoted: Vec<String> = names
        .iter()
        .map(|n| {
            let plain = n.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                && n.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if plain {
                n.clone()
            } else {
                format!("\"{}\"", n.replace('"', "\"\""))
            }
        })
        .collect();
    match quoted.len() {
        0 => String::new(),
        1 => quoted[0].clone(),
        n => format!("{n} ({})", quoted.join(",")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ha::tests::{cluster, obs, primary_pg};
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
                Action::SetSyncNames { names: None }
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
                    version: None
                },
                Action::SetSyncNames {
                    names: Some(vec!["n2".into()])
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
                    version: Some(9)
                },
                Action::SetSyncNames {
                    names: Some(vec!["n3".into()])
                }
            ]
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
                names: Some(vec!["n3".into()])
            }]
        );
        // nobody could serve: commits wait on a name nobody has
        c.members[2].data.state = "stopped".into();
        assert_eq!(
            primary_duty(&obs("n1", Some(&c), pg, &[]), &c),
            vec![Action::SetSyncNames {
                names: Some(vec![STRICT_SYNC_PLACEHOLDER.into()])
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

    #[test]
    fn guc_values_quote_what_needs_it() {
        assert_eq!(guc_value(&[]), "");
        assert_eq!(guc_value(&["node2".into()]), "node2");
        assert_eq!(
            guc_value(&["e2e-node2".into(), "n3".into()]),
            "2 (\"e2e-node2\",n3)"
        );
        assert_eq!(
            guc_value(&[STRICT_SYNC_PLACEHOLDER.into()]),
            STRICT_SYNC_PLACEHOLDER
        );
    }
}
