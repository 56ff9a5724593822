//! The HA decision core. Pure: an [`Observation`] of the cluster (as read from etcd), of the
//! local PostgreSQL and of the peers goes in, a [`Decision`] (actions and a one-line summary)
//! comes out. No IO, no clock, no async: every rule of leader election, bootstrap, following and
//! self-fencing lives here and is tested table-driven.
//!
//! Sequencing contract with the runtime: actions run in order, and when a lock action
//! ([`Action::AcquireLock`], [`Action::RenewLock`]) does not succeed, the actions after it are
//! skipped. Anything that depends on the outcome of an action is decided in the next cycle.

use shared::dcs::{Cluster, Member, Timing};

/// What the node knows about its data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataDir {
    /// Missing or empty: the node must bootstrap or clone.
    Empty,
    /// Not empty, yet no PostgreSQL cluster: never touched (it may be someone's files).
    Foreign,
    /// An initialized data directory with this system identifier.
    Present {
        sysid: String,
        /// pg_control says the server last ran as a primary (`in production` / `shut down`).
        was_primary: bool,
    },
}

/// The local PostgreSQL as observed this cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgView {
    pub data: DataDir,
    /// A postmaster is running for the data directory.
    pub running: bool,
    /// It accepts queries (false while starting up).
    pub ready: bool,
    pub in_recovery: bool,
    /// Primary: flush LSN; replica: max(receive, replay).
    pub wal_position: Option<u64>,
    pub timeline: Option<u64>,
    /// `host:port` of the upstream configured in `primary_conninfo`, if any.
    pub upstream: Option<String>,
}

/// A peer's answer to `GET /patroni`, gathered by the runtime before a leader race.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerReport {
    pub name: String,
    /// Answered in time with a WAL position (Patroni's `xlog`).
    pub reachable: bool,
    pub is_primary: bool,
    pub wal_position: Option<u64>,
    pub failover_priority: i64,
    pub no_failover: bool,
    pub watchdog_failed: bool,
}

/// A long-running operation the runtime is executing in the background.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    Bootstrap,
    Clone,
    Start,
    Promote,
    Demote,
}

/// Everything the core decides from.
#[derive(Debug, Clone)]
pub struct Observation<'a> {
    pub me: &'a str,
    /// `None` when etcd could not be read this cycle.
    pub cluster: Option<&'a Cluster>,
    pub pg: PgView,
    pub job: Option<Job>,
    pub no_failover: bool,
    pub failover_priority: i64,
    pub replicatefrom: Option<&'a str>,
    /// Member names that take no slot (tagged `nostream`).
    pub nostream: &'a [String],
    /// Answers of the peers' REST APIs; gathered only when there is no leader.
    pub peers: &'a [PeerReport],
    /// Whether this agent has seen any leader since it started.
    pub seen_leader: bool,
    /// Seconds since this agent started.
    pub uptime_secs: u64,
    /// ttl, loop_wait and retry_timeout in force (from the last dynamic configuration seen).
    pub timing: Timing,
    /// For how long etcd has been unreachable (0 when the last read worked).
    pub dcs_unreachable_secs: u64,
    /// Seconds since this node last renewed the leader lock, if it holds it.
    pub lock_age_secs: Option<u64>,
}

/// One thing for the runtime to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Race for `initialize`; the winner bootstraps a new cluster with initdb.
    BootstrapIfWon,
    /// Clone the data directory from this member with pg_basebackup, then start as replica.
    Clone { from: String },
    /// Store our system identifier in an absent `initialize` key (adopting existing data).
    AdoptInitialize { sysid: String },
    /// Exit the agent: continuing would be unsafe.
    Exit { reason: String },
    /// Start PostgreSQL: as primary (only while holding the lock), or as a replica of `upstream`
    /// (a member name; `None` = no upstream yet).
    Start {
        as_primary: bool,
        upstream: Option<String>,
    },
    /// Take the leader key if nobody holds it.
    AcquireLock,
    /// Keep the leader key (lease keepalive, re-attach if needed).
    RenewLock,
    /// Give the leader key up.
    ReleaseLock,
    /// Promote the local replica to primary.
    Promote,
    /// Stop the primary and start it again as a replica of `upstream`.
    Demote { upstream: Option<String> },
    /// Point the replica at a (new) upstream member.
    Follow { upstream: Option<String> },
    /// Create the physical slots of these members (if missing).
    EnsureSlots { members: Vec<String> },
    /// Write the dynamic configuration from `bootstrap.dcs` (the key is missing or invalid).
    WriteConfig,
    /// Publish `status` (optime, slots) and, when the timeline moved, `history`.
    PublishStatus,
}

/// The outcome of one cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub actions: Vec<Action>,
    /// One sentence for the log and `/patroni`.
    pub summary: String,
}

fn decision(actions: Vec<Action>, summary: impl Into<String>) -> Decision {
    Decision {
        actions,
        summary: summary.into(),
    }
}

/// Why this node may not take part in a leader race, or `None` when it is the healthiest.
pub fn race_refusal(obs: &Observation<'_>, cluster: &Cluster) -> Option<String> {
    if obs.no_failover {
        return Some("tagged nofailover".into());
    }
    let cfg = cluster.dynamic_config();
    let Some(mine) = obs.pg.wal_position else {
        return Some("own WAL position unknown".into());
    };
    if let Some(optime) = cluster.status.optime {
        let lag = optime.saturating_sub(mine);
        // After a whole-cluster restart nobody is in a hurry: give the member that wrote the last
        // leader position (usually the old primary, ahead by its shutdown checkpoint) one ttl to
        // come back before a member behind it promotes and forces it to rewind.
        let ttl = cfg.timing().ttl;
        if lag > 0 && !obs.seen_leader && obs.uptime_secs < ttl {
            return Some(format!(
                "just started and {lag} bytes behind the last leader position: giving the member that wrote it up to {ttl}s to come back"
            ));
        }
        if lag > cfg.maximum_lag_on_failover() {
            return Some(format!(
                "lagging {lag} bytes behind the last leader position, more than maximum_lag_on_failover {}",
                cfg.maximum_lag_on_failover()
            ));
        }
    }
    if cfg.check_timeline() {
        match obs.pg.timeline {
            Some(tl) if tl >= cluster.timeline() => {}
            Some(tl) => {
                return Some(format!(
                    "timeline {tl} is behind the cluster timeline {}",
                    cluster.timeline()
                ));
            }
            None => return Some("own timeline unknown".into()),
        }
    }
    for peer in obs.peers {
        if peer.name == obs.me || !peer.reachable || peer.no_failover || peer.watchdog_failed {
            continue;
        }
        if peer.is_primary {
            return Some(format!("{} is still running as primary", peer.name));
        }
        if let Some(theirs) = peer.wal_position {
            if theirs > mine {
                return Some(format!("{} is ahead (WAL {theirs} > {mine})", peer.name));
            }
            if theirs == mine && peer.failover_priority > obs.failover_priority {
                return Some(format!(
                    "{} is as far ahead and has a higher failover_priority ({} > {})",
                    peer.name, peer.failover_priority, obs.failover_priority
                ));
            }
        }
    }
    None
}

/// The member to clone from: a running member tagged `clonefrom` (not us, not the leader), else
/// the leader.
fn clone_source(cluster: &Cluster, me: &str) -> Option<String> {
    let leader = cluster.leader.as_ref()?;
    let tagged = cluster.members.iter().find(|m: &&Member| {
        m.name != me
            && m.name != leader.name
            && m.data.state == "running"
            && m.data.tags.get("clonefrom").and_then(|v| v.as_bool()) == Some(true)
    });
    Some(
        tagged
            .map(|m| m.name.clone())
            .unwrap_or_else(|| leader.name.clone()),
    )
}

/// The member this replica should stream from: `replicatefrom` when that member exists and is
/// not us, else the leader.
fn upstream_for(obs: &Observation<'_>, cluster: &Cluster) -> Option<String> {
    if let Some(rf) = obs.replicatefrom
        && rf != obs.me
        && cluster.member(rf).is_some()
    {
        return Some(rf.to_string());
    }
    cluster.leader.as_ref().map(|l| l.name.clone())
}

/// The `host:port` of a member's `conn_url`.
fn member_address(cluster: &Cluster, name: &str) -> Option<String> {
    let (h, p) = cluster.member(name)?.data.host_port()?;
    Some(format!("{h}:{p}"))
}

/// Decides what to do this cycle.
pub fn decide(obs: &Observation<'_>) -> Decision {
    if let Some(job) = obs.job {
        // Long operations are never interrupted or doubled; the holder keeps its lock meanwhile.
        let holds_lock = obs
            .cluster
            .and_then(|c| c.leader.as_ref())
            .is_some_and(|l| l.name == obs.me);
        let actions = if holds_lock {
            vec![Action::RenewLock]
        } else {
            vec![]
        };
        return decision(actions, format!("{job:?} in progress"));
    }
    let Some(cluster) = obs.cluster else {
        // etcd unreachable: a primary can no longer prove it holds the lock. It retries for
        // retry_timeout, and demotes sooner once less than retry_timeout of its lease is left,
        // so it is read-only before the lease can expire and another node can lead.
        let t = obs.timing;
        if obs.pg.running && !obs.pg.in_recovery {
            let lease_ending = obs
                .lock_age_secs
                .is_none_or(|age| age + t.retry_timeout >= t.ttl);
            if obs.dcs_unreachable_secs >= t.retry_timeout || lease_ending {
                return decision(
                    vec![Action::Demote { upstream: None }],
                    "etcd is unreachable: demoting to read-only so that no second primary can appear",
                );
            }
            return decision(
                vec![],
                format!(
                    "etcd is unreachable: retrying for up to {}s before demoting",
                    t.retry_timeout
                ),
            );
        }
        return decision(vec![], "etcd is unreachable: keeping PostgreSQL as it is");
    };
    let holds_lock = cluster.leader.as_ref().is_some_and(|l| l.name == obs.me);
    let paused = cluster.is_paused();

    let (sysid, was_primary) = match &obs.pg.data {
        DataDir::Foreign => {
            let actions = if holds_lock {
                vec![Action::ReleaseLock]
            } else {
                vec![]
            };
            return decision(
                actions,
                "the data directory is not empty but holds no PostgreSQL cluster: refusing to initialize or clone over it; empty it or point postgresql.data_dir elsewhere",
            );
        }
        DataDir::Empty => {
            let mut actions = Vec::new();
            if holds_lock {
                actions.push(Action::ReleaseLock);
            }
            if paused {
                return decision(
                    actions,
                    "PAUSE: data directory empty, not bootstrapping while paused",
                );
            }
            if cluster.initialize.is_none() && cluster.leader.is_none() {
                if obs.no_failover {
                    return decision(
                        actions,
                        "waiting for another member to bootstrap (tagged nofailover)",
                    );
                }
                actions.push(Action::BootstrapIfWon);
                return decision(actions, "no cluster yet: racing to bootstrap it");
            }
            return match clone_source(cluster, obs.me) {
                Some(from) if !holds_lock => {
                    let summary = format!("cloning a replica from {from}");
                    actions.push(Action::Clone { from });
                    decision(actions, summary)
                }
                _ => decision(actions, "waiting for the leader to bootstrap the cluster"),
            };
        }
        DataDir::Present { sysid, was_primary } => (sysid.clone(), *was_primary),
    };

    let mut actions = Vec::new();
    match cluster.initialize.as_deref() {
        Some(init) if !init.is_empty() && init != sysid => {
            return decision(
                vec![Action::Exit {
                    reason: format!(
                        "system identifier {sysid} of the data directory differs from the cluster's {init}: this data belongs to another cluster; move it away or fix the scope"
                    ),
                }],
                "system identifier mismatch",
            );
        }
        None if cluster.leader.is_none() => actions.push(Action::AdoptInitialize {
            sysid: sysid.clone(),
        }),
        _ => {}
    }

    if !obs.pg.running {
        if paused {
            if holds_lock {
                actions.push(Action::ReleaseLock);
            }
            return decision(actions, "PAUSE: PostgreSQL is not running; doing nothing");
        }
        let leader_other = cluster
            .leader
            .as_ref()
            .filter(|l| l.name != obs.me)
            .map(|_| upstream_for(obs, cluster))
            .unwrap_or(None);
        if holds_lock {
            actions.push(Action::RenewLock);
        }
        let as_primary = holds_lock && was_primary;
        let summary = if as_primary {
            "starting PostgreSQL as primary (holding the leader lock)".to_string()
        } else {
            match &leader_other {
                Some(u) => format!("starting PostgreSQL as a replica of {u}"),
                None => "starting PostgreSQL as a replica (no leader yet)".to_string(),
            }
        };
        actions.push(Action::Start {
            as_primary,
            upstream: leader_other,
        });
        return decision(actions, summary);
    }

    if !obs.pg.ready {
        if holds_lock {
            actions.push(Action::RenewLock);
        }
        return decision(actions, "PostgreSQL is starting");
    }

    match &cluster.leader {
        None => {
            if paused {
                if !obs.pg.in_recovery {
                    actions.push(Action::AcquireLock);
                    return decision(
                        actions,
                        "PAUSE: taking the free leader lock for the running primary",
                    );
                }
                return decision(actions, "PAUSE: no leader, not racing while paused");
            }
            match race_refusal(obs, cluster) {
                Some(why) => decision(actions, format!("no leader, not racing: {why}")),
                None => {
                    actions.push(Action::AcquireLock);
                    decision(
                        actions,
                        "no leader: this node is the healthiest, taking the lock",
                    )
                }
            }
        }
        Some(l) if l.name == obs.me => {
            actions.push(Action::RenewLock);
            if cluster.config.is_none() {
                actions.push(Action::WriteConfig);
            }
            if obs.pg.in_recovery {
                if paused {
                    actions.pop();
                    actions.push(Action::ReleaseLock);
                    return decision(
                        actions,
                        "PAUSE: holding the lock as a replica; releasing it",
                    );
                }
                actions.push(Action::Promote);
                return decision(actions, "holding the leader lock: promoting");
            }
            actions.push(Action::PublishStatus);
            if cluster.dynamic_config().use_slots() {
                let members: Vec<String> = cluster
                    .members
                    .iter()
                    .filter(|m| m.name != obs.me && !obs.nostream.contains(&m.name))
                    .map(|m| m.name.clone())
                    .collect();
                actions.push(Action::EnsureSlots { members });
            }
            decision(actions, "leader: holding the lock")
        }
        Some(l) => {
            let upstream = upstream_for(obs, cluster);
            if !obs.pg.in_recovery {
                if paused {
                    return decision(
                        actions,
                        format!("PAUSE: running as primary while {} holds the lock", l.name),
                    );
                }
                let summary = format!("{} holds the lock: demoting to follow it", l.name);
                actions.push(Action::Demote { upstream });
                return decision(actions, summary);
            }
            let want = upstream.as_deref().and_then(|u| member_address(cluster, u));
            if want.is_some() && want != obs.pg.upstream {
                let summary = format!("following {}", upstream.as_deref().unwrap_or_default());
                actions.push(Action::Follow { upstream });
                return decision(actions, summary);
            }
            decision(actions, format!("replica following {}", l.name))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::dcs::{DynamicConfig, Leader, Member, MemberData, Status, Versioned};

    fn member(name: &str, port: u16, state: &str) -> Member {
        Member {
            name: name.into(),
            data: MemberData {
                conn_url: format!("postgres://127.0.0.1:{port}/postgres"),
                api_url: format!("http://127.0.0.1:{}/patroni", port + 3000),
                state: state.into(),
                role: "replica".into(),
                version: "4.1.4".into(),
                ..Default::default()
            },
            lease: 1,
            mod_revision: 1,
        }
    }

    fn cluster(leader: Option<&str>) -> Cluster {
        Cluster {
            scope: "demo".into(),
            initialize: Some("7000000000000000001".into()),
            config: Some(Versioned {
                value: DynamicConfig::default(),
                mod_revision: 1,
            }),
            leader: leader.map(|n| Leader {
                name: n.into(),
                lease: 7,
                mod_revision: 2,
            }),
            members: vec![
                member("n1", 5432, "running"),
                member("n2", 5433, "running"),
                member("n3", 5434, "running"),
            ],
            status: Status {
                optime: Some(1000),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn replica_pg(wal: u64, upstream: Option<&str>) -> PgView {
        PgView {
            data: DataDir::Present {
                sysid: "7000000000000000001".into(),
                was_primary: false,
            },
            running: true,
            ready: true,
            in_recovery: true,
            wal_position: Some(wal),
            timeline: Some(1),
            upstream: upstream.map(str::to_string),
        }
    }

    fn primary_pg() -> PgView {
        PgView {
            in_recovery: false,
            upstream: None,
            data: DataDir::Present {
                sysid: "7000000000000000001".into(),
                was_primary: true,
            },
            ..replica_pg(1000, None)
        }
    }

    fn obs<'a>(
        me: &'a str,
        c: Option<&'a Cluster>,
        pg: PgView,
        peers: &'a [PeerReport],
    ) -> Observation<'a> {
        Observation {
            me,
            cluster: c,
            pg,
            job: None,
            no_failover: false,
            failover_priority: 1,
            replicatefrom: None,
            nostream: &[],
            peers,
            seen_leader: true,
            uptime_secs: 1000,
            timing: Timing {
                ttl: 30,
                loop_wait: 10,
                retry_timeout: 10,
            },
            dcs_unreachable_secs: 0,
            lock_age_secs: Some(1),
        }
    }

    fn peer(name: &str, wal: u64, primary: bool) -> PeerReport {
        PeerReport {
            name: name.into(),
            reachable: true,
            is_primary: primary,
            wal_position: Some(wal),
            failover_priority: 1,
            no_failover: false,
            watchdog_failed: false,
        }
    }

    #[test]
    fn empty_cluster_races_to_bootstrap() {
        let mut c = cluster(None);
        c.initialize = None;
        let mut pg = replica_pg(0, None);
        pg.data = DataDir::Empty;
        pg.running = false;
        let d = decide(&obs("n1", Some(&c), pg.clone(), &[]));
        assert_eq!(d.actions, vec![Action::BootstrapIfWon]);

        let mut o = obs("n1", Some(&c), pg, &[]);
        o.no_failover = true;
        assert_eq!(decide(&o).actions, vec![]);
    }

    #[test]
    fn empty_data_with_leader_clones() {
        let c = cluster(Some("n1"));
        let mut pg = replica_pg(0, None);
        pg.data = DataDir::Empty;
        pg.running = false;
        let d = decide(&obs("n2", Some(&c), pg.clone(), &[]));
        assert_eq!(d.actions, vec![Action::Clone { from: "n1".into() }]);

        // while someone bootstraps (initialize = "") and no leader yet: wait
        let mut c2 = cluster(None);
        c2.initialize = Some(String::new());
        assert_eq!(decide(&obs("n2", Some(&c2), pg, &[])).actions, vec![]);
    }

    #[test]
    fn clone_prefers_clonefrom_member() {
        let mut c = cluster(Some("n1"));
        c.members[2]
            .data
            .tags
            .insert("clonefrom".into(), serde_json::Value::Bool(true));
        let mut pg = replica_pg(0, None);
        pg.data = DataDir::Empty;
        pg.running = false;
        let d = decide(&obs("n2", Some(&c), pg, &[]));
        assert_eq!(d.actions, vec![Action::Clone { from: "n3".into() }]);
    }

    #[test]
    fn a_foreign_data_directory_is_never_touched() {
        let mut pg = replica_pg(0, None);
        pg.data = DataDir::Foreign;
        pg.running = false;
        let mut c = cluster(None);
        c.initialize = None;
        let d = decide(&obs("n1", Some(&c), pg.clone(), &[]));
        assert_eq!(d.actions, vec![]);
        assert!(d.summary.contains("refusing"));
        let d = decide(&obs("n2", Some(&cluster(Some("n1"))), pg, &[]));
        assert_eq!(d.actions, vec![]);
    }

    #[test]
    fn sysid_mismatch_exits() {
        let mut c = cluster(Some("n1"));
        c.initialize = Some("7999999999999999999".into());
        let d = decide(&obs("n2", Some(&c), replica_pg(10, None), &[]));
        assert!(matches!(d.actions.as_slice(), [Action::Exit { .. }]));
    }

    #[test]
    fn missing_initialize_is_adopted() {
        let mut c = cluster(None);
        c.initialize = None;
        let d = decide(&obs("n2", Some(&c), replica_pg(1000, None), &[]));
        assert_eq!(
            d.actions[0],
            Action::AdoptInitialize {
                sysid: "7000000000000000001".into()
            }
        );
    }

    #[test]
    fn stopped_postgres_is_started_in_the_right_role() {
        let c = cluster(Some("n1"));
        let mut pg = primary_pg();
        pg.running = false;
        pg.ready = false;
        // holder whose data was primary: start as primary, renewing first
        let d = decide(&obs("n1", Some(&c), pg.clone(), &[]));
        assert_eq!(
            d.actions,
            vec![
                Action::RenewLock,
                Action::Start {
                    as_primary: true,
                    upstream: None
                }
            ]
        );
        // not the holder: start as replica of the leader even if it was a primary
        let d = decide(&obs("n2", Some(&c), pg, &[]));
        assert_eq!(
            d.actions,
            vec![Action::Start {
                as_primary: false,
                upstream: Some("n1".into())
            }]
        );
    }

    #[test]
    fn healthiest_replica_takes_the_free_lock() {
        let c = cluster(None);
        let peers = [peer("n1", 900, false), peer("n3", 1000, false)];
        let d = decide(&obs("n2", Some(&c), replica_pg(1000, None), &peers));
        assert_eq!(d.actions, vec![Action::AcquireLock]);
    }

    #[test]
    fn race_refused_when_behind_a_peer_or_primary_alive_or_lagging() {
        let c = cluster(None);
        let ahead = [peer("n3", 1001, false)];
        let d = decide(&obs("n2", Some(&c), replica_pg(1000, None), &ahead));
        assert_eq!(d.actions, vec![]);
        assert!(d.summary.contains("n3 is ahead"), "{}", d.summary);

        let alive = [peer("n1", 10, true)];
        let d = decide(&obs("n2", Some(&c), replica_pg(1000, None), &alive));
        assert!(
            d.summary.contains("still running as primary"),
            "{}",
            d.summary
        );

        let mut far = cluster(None);
        far.status.optime = Some(10 << 20);
        let d = decide(&obs("n2", Some(&far), replica_pg(1000, None), &[]));
        assert_eq!(d.actions, vec![]);
        assert!(
            d.summary.contains("maximum_lag_on_failover"),
            "{}",
            d.summary
        );

        let mut o = obs("n2", Some(&c), replica_pg(1000, None), &[]);
        o.no_failover = true;
        assert!(decide(&o).summary.contains("nofailover"));
    }

    #[test]
    fn after_a_full_restart_members_behind_the_last_leader_position_wait() {
        let c = cluster(None);
        let mut o = obs("n2", Some(&c), replica_pg(990, None), &[]);
        o.seen_leader = false;
        o.uptime_secs = 3;
        let d = decide(&o);
        assert_eq!(d.actions, vec![]);
        assert!(d.summary.contains("come back"), "{}", d.summary);
        // the member at the last position races at once
        o.pg = replica_pg(1000, None);
        assert_eq!(decide(&o).actions, vec![Action::AcquireLock]);
        // and after one ttl the others race too
        o.pg = replica_pg(990, None);
        o.uptime_secs = 31;
        assert_eq!(decide(&o).actions, vec![Action::AcquireLock]);
    }

    #[test]
    fn equal_position_higher_priority_wins() {
        let c = cluster(None);
        let mut p = peer("n3", 1000, false);
        p.failover_priority = 5;
        let d = decide(&obs(
            "n2",
            Some(&c),
            replica_pg(1000, None),
            std::slice::from_ref(&p),
        ));
        assert_eq!(d.actions, vec![]);
        // unreachable peers do not count
        p.reachable = false;
        let d = decide(&obs("n2", Some(&c), replica_pg(1000, None), &[p]));
        assert_eq!(d.actions, vec![Action::AcquireLock]);
    }

    #[test]
    fn holder_replica_promotes_and_holder_primary_publishes() {
        let c = cluster(Some("n2"));
        let d = decide(&obs("n2", Some(&c), replica_pg(1000, None), &[]));
        assert_eq!(d.actions, vec![Action::RenewLock, Action::Promote]);

        let d = decide(&obs("n1", Some(&cluster(Some("n1"))), primary_pg(), &[]));
        assert_eq!(
            d.actions,
            vec![
                Action::RenewLock,
                Action::PublishStatus,
                Action::EnsureSlots {
                    members: vec!["n2".into(), "n3".into()]
                }
            ]
        );
    }

    #[test]
    fn primary_without_lock_demotes_and_replica_follows() {
        let c = cluster(Some("n1"));
        let d = decide(&obs("n2", Some(&c), primary_pg(), &[]));
        assert_eq!(
            d.actions,
            vec![Action::Demote {
                upstream: Some("n1".into())
            }]
        );
        let d = decide(&obs(
            "n2",
            Some(&c),
            replica_pg(1000, Some("127.0.0.1:9999")),
            &[],
        ));
        assert_eq!(
            d.actions,
            vec![Action::Follow {
                upstream: Some("n1".into())
            }]
        );
        let d = decide(&obs(
            "n2",
            Some(&c),
            replica_pg(1000, Some("127.0.0.1:5432")),
            &[],
        ));
        assert_eq!(d.actions, vec![]);
    }

    #[test]
    fn primary_demotes_when_etcd_is_unreachable() {
        // a short hiccup is retried
        let mut o = obs("n1", None, primary_pg(), &[]);
        o.dcs_unreachable_secs = 2;
        assert_eq!(decide(&o).actions, vec![]);
        // after retry_timeout, or when the lease could end, the primary goes read-only
        o.dcs_unreachable_secs = 10;
        assert_eq!(decide(&o).actions, vec![Action::Demote { upstream: None }]);
        o.dcs_unreachable_secs = 2;
        o.lock_age_secs = Some(15);
        assert_eq!(decide(&o).actions, vec![]);
        o.lock_age_secs = Some(20);
        assert_eq!(decide(&o).actions, vec![Action::Demote { upstream: None }]);
        o.lock_age_secs = None;
        assert_eq!(decide(&o).actions, vec![Action::Demote { upstream: None }]);
        let d = decide(&obs("n2", None, replica_pg(1, None), &[]));
        assert_eq!(d.actions, vec![]);
    }

    #[test]
    fn a_running_job_is_never_doubled_even_without_etcd() {
        let mut o = obs("n1", None, primary_pg(), &[]);
        o.job = Some(Job::Demote);
        assert_eq!(decide(&o).actions, vec![]);
    }

    #[test]
    fn holder_only_renews_while_a_job_runs() {
        let c = cluster(Some("n1"));
        let mut o = obs("n1", Some(&c), primary_pg(), &[]);
        o.job = Some(Job::Start);
        assert_eq!(decide(&o).actions, vec![Action::RenewLock]);
        let mut o = obs("n2", Some(&c), replica_pg(1, None), &[]);
        o.job = Some(Job::Clone);
        assert_eq!(decide(&o).actions, vec![]);
    }

    #[test]
    fn paused_cluster_does_nothing_automatic() {
        let mut c = cluster(Some("n1"));
        c.config = Some(Versioned {
            value: DynamicConfig::parse(r#"{"pause":true}"#).unwrap(),
            mod_revision: 3,
        });
        // replica under a foreign primary: no demotion of a primary while paused
        let d = decide(&obs("n2", Some(&c), primary_pg(), &[]));
        assert_eq!(d.actions, vec![]);
        // no leader: replicas do not race
        c.leader = None;
        let d = decide(&obs("n2", Some(&c), replica_pg(1000, None), &[]));
        assert_eq!(d.actions, vec![]);
        // stopped postgres is not started
        let mut pg = replica_pg(1000, None);
        pg.running = false;
        assert_eq!(decide(&obs("n2", Some(&c), pg, &[])).actions, vec![]);
    }

    #[test]
    fn missing_config_is_rewritten_by_the_holder() {
        let mut c = cluster(Some("n1"));
        c.config = None;
        let d = decide(&obs("n1", Some(&c), primary_pg(), &[]));
        assert_eq!(d.actions[1], Action::WriteConfig);
    }
}
