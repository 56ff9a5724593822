//! The HA decision core. Pure: an [`Observation`] of the cluster (as read from etcd), of the
//! local PostgreSQL and of the peers goes in, a [`Decision`] (actions and a one-line summary)
//! comes out. No IO, no clock, no async: every rule of leader election, bootstrap, following and
//! self-fencing lives here and is tested table-driven.
//!
//! Sequencing contract with the runtime: actions run in order, and when a lock action
//! ([`Action::AcquireLock`], [`Action::RenewLock`]) does not succeed, the actions after it are
//! skipped. Anything that depends on the outcome of an action is decided in the next cycle.

use shared::dcs::{Cluster, Member, SyncMode, Timing};

/// What the node knows about its data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataDir {
    /// Missing or empty: the node must bootstrap or clone.
    Empty,
    /// Not empty, yet no PostgreSQL cluster: never touched (it may be someone's files).
    Foreign,
    /// A PostgreSQL cluster whose pg_control could not be read this cycle (pg_controldata
    /// failed or did not finish: a stuck disk) while no server runs: nothing is decided on it.
    Unreadable,
    /// An initialized data directory with this system identifier (empty when it is not known
    /// this cycle: a running server that does not answer, pg_control unreadable).
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
    /// Running, yet no status query has been answered within its deadline for this many
    /// seconds (a frozen or stuck server, not one starting up).
    pub unresponsive_secs: Option<u64>,
    pub in_recovery: bool,
    /// Primary: flush LSN; replica: max(receive, replay).
    pub wal_position: Option<u64>,
    pub timeline: Option<u64>,
    /// `host:port` of the upstream configured in `primary_conninfo`, if any.
    pub upstream: Option<String>,
    /// Where the local WAL ends: for a running server its WAL position on the newest timeline it
    /// knows; for a stopped one what pg_control shows. `None` when unknown (a primary that
    /// crashed: its WAL may run past the last checkpoint).
    pub wal_end: Option<WalEnd>,
    /// A WAL receiver is streaming from the upstream.
    pub streaming: bool,
    /// A pg_rewind of this data directory failed or was cut short: it must never be started.
    pub rewind_broken: bool,
    /// pg_rewind already found that this data needs no rewind to follow the current leader on
    /// its current timeline.
    pub rewind_not_needed: bool,
    /// The configuration files hold other parameters or pg_hba lines than the configuration in
    /// force asks for (the dynamic configuration changed, or a reload).
    pub config_outdated: bool,
    /// Primary: the standbys connected to it.
    pub standbys: Vec<crate::synchronous::StandbyLink>,
    /// The members pgpilot put into `synchronous_standby_names` (`None`: not managed).
    pub sync_names: Option<Vec<String>>,
    /// Quorum commit: that setting is `ANY k (…)` with this `k` (`None`: priority, `k (…)`).
    pub sync_any: Option<usize>,
    /// For members of that setting that PostgreSQL reports synchronous: a primary position
    /// read a cycle after that was first seen. Everything a client was told about before it
    /// is below it; a standby that flushed past it may be published in `sync`.
    pub sync_since: Vec<(String, u64)>,
}

/// The end of the local WAL: a position on a timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalEnd {
    pub timeline: u64,
    /// The first byte past the last record this node has.
    pub lsn: u64,
}

/// How this node may repair a data directory whose timeline diverged from the leader's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RewindPolicy {
    /// `use_pg_rewind` is on and pg_control shows `wal_log_hints` or data checksums.
    pub possible: bool,
    /// `remove_data_directory_on_rewind_failure`.
    pub remove_on_failure: bool,
    /// `remove_data_directory_on_diverged_timelines`.
    pub remove_on_diverged: bool,
}

/// How the local WAL relates to the leader's timeline history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Divergence {
    /// The local WAL is a prefix of the leader's history: streaming can resume.
    No,
    /// The local WAL runs past the point where the leader's history forked off `timeline`.
    Diverged { timeline: u64, at: u64 },
    /// Not enough is known (a crashed primary, or history not published yet).
    Unknown,
}

/// A peer's answer to `GET /patroni`, gathered by the runtime before a leader race.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerReport {
    pub name: String,
    /// Answered in time with a WAL position (Patroni's `xlog`).
    pub reachable: bool,
    pub is_primary: bool,
    pub wal_position: Option<u64>,
    /// The timeline its WAL position is on.
    pub timeline: Option<u64>,
    pub failover_priority: i64,
    pub no_failover: bool,
    pub watchdog_failed: bool,
    /// It gave the leader lock up because its server could not serve as primary, less than a
    /// ttl ago (pgpilot's `/patroni`): it leaves the race to the others, who do not wait for it.
    pub standing_down: bool,
}

/// A long-running operation the runtime is executing in the background.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    Bootstrap,
    Clone,
    Start,
    Promote,
    Demote,
    Rewind,
    Wipe,
    /// A restart requested by an operator.
    Restart,
    /// A planned hand-over of the leader lock (checkpoint, stop, release, restart as replica).
    Switchover,
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
    pub rewind: RewindPolicy,
    /// While this node holds the lock: for how long its PostgreSQL has not been up as primary.
    pub primary_down_secs: Option<u64>,
    /// Seconds since this node gave the leader lock up because its PostgreSQL could not serve
    /// as primary (would not start, or stopped answering): the member named to take over gets
    /// one ttl before this one races again.
    pub gave_up_lock_secs: Option<u64>,
    /// The wall-clock time of the observation (Unix milliseconds), for scheduled switchovers.
    pub now_ms: i64,
    /// The revision of the `failover` key this node last handed the lock over for.
    pub handed_over: Option<i64>,
    /// With etcd unreachable, PostgreSQL primary and `failsafe_mode` on: whether every member
    /// listed in the `failsafe` key confirmed this primary over REST (`Ok`), or why not.
    pub failsafe: Option<Result<(), String>>,
    /// A primary in failsafe mode that reached this node over REST less than ttl ago.
    pub failsafe_leader: Option<String>,
    /// `watchdog.mode: required` and the watchdog cannot be used: why. Such a node never leads.
    pub watchdog_refusal: Option<String>,
    /// A replica method with `no_leader` (a restore from a backup) is configured: a member
    /// without data can be built while nobody leads.
    pub clone_without_leader: bool,
    /// A reinitialize asked for `from_leader`: the next clone takes the leader, whatever the
    /// `clonefrom` tags say.
    pub clone_from_leader: bool,
}

/// One thing for the runtime to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Race for `initialize`; the winner bootstraps a new cluster with initdb.
    BootstrapIfWon,
    /// Clone the data directory from this member with pg_basebackup, then start as replica.
    Clone { from: String },
    /// Build the data directory with the replica methods that need no leader (`no_leader`: a
    /// restore from a backup), then start as a replica fed by the archive.
    CloneWithoutLeader,
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
    /// Create the physical slots of these members (if missing), and the permanent slots.
    EnsureSlots { members: Vec<String> },
    /// On a replica that may become leader: keep the permanent slots (physical and logical)
    /// here too, at the positions the leader publishes.
    SyncSlots,
    /// Write the dynamic configuration from `bootstrap.dcs` (the key is missing or invalid).
    WriteConfig,
    /// Publish `status` (optime, slots) and, when the timeline moved, `history`.
    PublishStatus,
    /// Stop PostgreSQL if it runs, and rewind the data directory with pg_rewind from `from`.
    Rewind { from: String },
    /// Stop PostgreSQL if it runs and empty the data directory, so that it is cloned again.
    WipeData { reason: String },
    /// Hand the leader lock over as the `failover` key asks: to `candidate`, or to the
    /// healthiest member when none is named.
    Switchover { candidate: Option<String> },
    /// Clear the `failover` key: done, or refused for `reason` (reported to the requester).
    ClearFailover { reason: Option<String> },
    /// Rewrite the parameters and pg_hba.conf and reload PostgreSQL.
    ApplyConfig,
    /// Put these members into `synchronous_standby_names` and reload (`None`: leave the
    /// setting to the configuration again); with `any`, as `ANY any (…)` (quorum commit). A
    /// failure skips the actions after it.
    SetSyncNames {
        names: Option<Vec<String>>,
        any: Option<usize>,
    },
    /// Publish the synchronous standbys in the `sync` key, with `quorum` (0 but in quorum
    /// commit), compare-and-swap on `version`. A failure skips the actions after it.
    WriteSync {
        standbys: Vec<String>,
        quorum: u64,
        version: Option<i64>,
    },
    /// Delete the `sync` key (synchronous mode is off).
    DeleteSync { version: i64 },
    /// Stop the running job where it is (a demotion must not wait for it), for this reason.
    CancelJob { reason: String },
    /// Kill every process of the local PostgreSQL (SIGKILL), for this reason.
    KillPostgres { reason: String },
}

/// The outcome of one cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub actions: Vec<Action>,
    /// One sentence for the log and `/patroni`.
    pub summary: String,
    /// Run the next cycle after at most this many milliseconds (a scheduled switchover is due).
    pub wake_in_ms: Option<u64>,
    /// This holder gives the lock up because its PostgreSQL cannot serve as primary: it stands
    /// down from the next race (see [`Observation::gave_up_lock_secs`]).
    pub stands_down: bool,
    /// The rule that decided (the name [`decide`] gives it; tests and the journal read it).
    pub rule: &'static str,
}

fn decision(actions: Vec<Action>, summary: impl Into<String>) -> Decision {
    Decision {
        actions,
        summary: summary.into(),
        wake_in_ms: None,
        stands_down: false,
        rule: "",
    }
}

/// A holder giving the lock up because its server cannot serve as primary.
fn standing_down(actions: Vec<Action>, summary: impl Into<String>) -> Decision {
    Decision {
        stands_down: true,
        ..decision(actions, summary)
    }
}

/// What the lock holder does about a `failover` key.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Handover {
    /// Scheduled later: look again in `ms`.
    Wait { ms: u64, summary: String },
    /// Clear the key; `None` = the request is fulfilled, else why it is refused.
    Clear(Option<String>),
    /// Hand over now.
    Go(Option<String>),
}

/// The lock holder's reading of the `failover` key (Patroni's rules: a key naming another
/// leader, a stale or paused schedule, or an infeasible candidate is cleared with the reason).
fn handover(obs: &Observation<'_>, cluster: &Cluster) -> Option<Handover> {
    use shared::ops::switchover::{self, Kind, Request};
    let versioned = cluster.failover.as_ref()?;
    let f = &versioned.value;
    if f.member.as_deref() == Some(obs.me) {
        return Some(Handover::Clear(None));
    }
    if obs.handed_over == Some(versioned.mod_revision) {
        // The lock came back: nobody else could take it. Doing it again would only loop.
        return Some(Handover::Clear(Some(format!(
            "{} handed the lock over for this request, but no other member took it; it leads again",
            obs.me
        ))));
    }
    if f.leader.as_deref().is_some_and(|l| l != obs.me) {
        // a switchover away from another leader: done (this node took over) or moot
        return Some(Handover::Clear(None));
    }
    if let Some(at) = &f.scheduled_at {
        let when = match switchover::parse_time(at) {
            Ok(Some(t)) => t,
            Ok(None) => {
                return Some(Handover::Clear(Some(format!(
                    "scheduled_at {at:?} is not a time"
                ))));
            }
            Err(e) => return Some(Handover::Clear(Some(e.to_string()))),
        };
        if cluster.is_paused() {
            return Some(Handover::Clear(Some(
                "scheduled switchovers are not carried out while the cluster is paused".into(),
            )));
        }
        let due = when.timestamp_millis();
        if due > obs.now_ms {
            return Some(Handover::Wait {
                ms: (due - obs.now_ms) as u64,
                summary: format!(
                    "leader: holding the lock; switchover to {} scheduled at {at}",
                    f.member.as_deref().unwrap_or("the healthiest member")
                ),
            });
        }
        let late_ms = obs.now_ms - due;
        let window = (obs.timing.loop_wait as i64 * 1500).max(1500);
        if late_ms > window {
            return Some(Handover::Clear(Some(format!(
                "the switchover scheduled at {at} is {}s overdue (more than 1.5 × loop_wait): not carried out; schedule it again",
                late_ms / 1000
            ))));
        }
    }
    let req = Request {
        kind: Kind::Switchover,
        leader: Some(obs.me.to_string()),
        candidate: f.member.clone(),
        scheduled_at: None,
    };
    let now = chrono::DateTime::from_timestamp_millis(obs.now_ms).unwrap_or_default();
    match switchover::check(cluster, &req, now) {
        Ok(_) => Some(Handover::Go(f.member.clone())),
        Err(e) => Some(Handover::Clear(Some(e.to_string()))),
    }
}

/// For a member without the lock: whether a pending `failover` key makes it take the lock
/// (`Some(true)`: it is the named candidate), stand back (`Some(false)`, with the reason) or
/// changes nothing (`None`).
fn requested_race(obs: &Observation<'_>, cluster: &Cluster) -> Option<(bool, String)> {
    let f = &cluster.failover.as_ref()?.value;
    // A switchover scheduled for later is the leader's business; once due, its leader may be
    // handing over right now.
    if let Some(at) = &f.scheduled_at {
        let due = shared::ops::switchover::parse_time(at)
            .ok()
            .flatten()
            .map(|t| t.timestamp_millis());
        if due.is_none_or(|d| d > obs.now_ms + 1000) {
            return None;
        }
    }
    // How far a position is behind the last leader position, against the limit.
    let max = cluster.dynamic_config().maximum_lag_on_failover();
    let lag_of = |pos: Option<u64>| {
        cluster
            .status
            .optime
            .map(|o| o.saturating_sub(pos.unwrap_or(0)))
    };
    let within = |pos: Option<u64>| lag_of(pos).is_none_or(|lag| lag <= max);
    match f.member.as_deref() {
        Some(c) if c == obs.me => {
            if obs.no_failover {
                return None;
            }
            if let Some(why) = obs
                .watchdog_refusal
                .as_ref()
                .map(|w| format!("watchdog required but unusable: {w}"))
                .or_else(|| {
                    crate::synchronous::requested_refusal(obs.me, cluster, f.leader.is_some())
                })
                .or_else(|| {
                    // quorum commit: a switchover, or any request in strict mode, also needs
                    // the votes that prove this node holds every acknowledged commit
                    let strict = cluster.dynamic_config().synchronous_mode_strict();
                    (f.leader.is_some() || strict)
                        .then(|| quorum_refusal(obs, cluster))
                        .flatten()
                })
            {
                return Some((
                    false,
                    format!("no leader: requested as candidate, but {why}"),
                ));
            }
            // A failover (no leader named) is the operator's explicit choice of this member,
            // whatever it lags. A switchover whose leader vanished still respects the lag limit.
            if f.leader.is_some()
                && let Some(lag) = lag_of(obs.pg.wal_position).filter(|lag| *lag > max)
            {
                return Some((
                    false,
                    format!(
                        "no leader: requested as switchover candidate, but lagging {lag} bytes behind the last leader position, more than maximum_lag_on_failover {max}"
                    ),
                ));
            }
            Some((
                true,
                "no leader: taking the lock as the requested candidate".into(),
            ))
        }
        Some(c) => obs
            .peers
            .iter()
            .any(|p| {
                p.name == c
                    && p.reachable
                    && !p.is_primary
                    && !p.no_failover
                    && !p.watchdog_failed
                    && (f.leader.is_none() || within(p.wal_position))
                    && crate::synchronous::requested_refusal(c, cluster, f.leader.is_some())
                        .is_none()
                    && (f.leader.is_none() && !cluster.dynamic_config().synchronous_mode_strict()
                        || {
                            // its votes as this node sees them: the others and this node
                            let others = obs
                                .peers
                                .iter()
                                .filter(|o| {
                                    o.name != c && o.name != obs.me && o.reachable && !o.is_primary
                                })
                                .map(|o| (o.name.as_str(), wal_end(o.timeline, o.wal_position)))
                                .chain(std::iter::once((
                                    obs.me,
                                    wal_end(obs.pg.timeline, obs.pg.wal_position),
                                )));
                            quorum_refusal_for(
                                cluster,
                                c,
                                wal_end(p.timeline, p.wal_position),
                                others,
                            )
                            .is_none()
                        })
            })
            .then(|| {
                (
                    false,
                    format!("no leader: leaving the lock to the requested candidate {c}"),
                )
            }),
        None if f.leader.as_deref() == Some(obs.me) => obs
            .peers
            .iter()
            .any(|p| {
                // one that can win the race: within the limit and as far ahead as this node
                p.name != obs.me
                    && p.reachable
                    && !p.is_primary
                    && !p.no_failover
                    && within(p.wal_position)
                    && match (
                        wal_end(p.timeline, p.wal_position),
                        wal_end(obs.pg.timeline, obs.pg.wal_position),
                    ) {
                        (Some(theirs), Some(mine)) => wal_order(theirs, mine).is_ge(),
                        (theirs, mine) => theirs.is_some() || mine.is_none(),
                    }
                    && cluster.sync_allows_promotion(&p.name)
            })
            .then(|| {
                (
                    false,
                    "no leader: this node handed the lock over, leaving it to the others".into(),
                )
            }),
        None => None,
    }
}

/// Why this node may not take part in a leader race, or `None` when it is the healthiest.
pub fn race_refusal(obs: &Observation<'_>, cluster: &Cluster) -> Option<String> {
    if obs.no_failover {
        return Some("tagged nofailover".into());
    }
    if let Some(why) = &obs.watchdog_refusal {
        return Some(format!("watchdog required but unusable: {why}"));
    }
    if let Some(why) = crate::synchronous::race_refusal(obs.me, cluster) {
        return Some(why);
    }
    let cfg = cluster.dynamic_config();
    if let Some(ago) = obs.gave_up_lock_secs.filter(|s| *s < obs.timing.ttl) {
        // the replica this node named when it let go takes over; racing it now (with a server
        // just restarted, and often the longest WAL) would take the lock straight back
        return Some(format!(
            "gave the leader lock up {ago}s ago because PostgreSQL could not serve as primary: leaving the race to the others for {}s",
            obs.timing.ttl
        ));
    }
    if cfg.failsafe_mode()
        && let Some(listed) = cluster.failsafe.as_ref().filter(|f| !f.is_empty())
        && !listed.contains_key(obs.me)
    {
        return Some("failsafe mode is on and the failsafe key does not list this member".into());
    }
    let Some(mine) = obs.pg.wal_position else {
        return Some("own WAL position unknown".into());
    };
    // the last leader position is on the cluster's timeline: a member already on a newer one
    // (promoted, then gone before it published) continues the history past it, and is
    // measured by no position of the old one (else it refuses for lag while every other
    // member defers to it for its newer timeline, and nobody leads)
    let newer_timeline = obs.pg.timeline.is_some_and(|tl| tl > cluster.timeline());
    if let Some(optime) = cluster.status.optime.filter(|_| !newer_timeline) {
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
    // the leader a switchover without a candidate moves away from stands aside (see
    // `requested_race`) once another member is as far ahead: it takes no part in ties
    let standing_aside = cluster
        .failover
        .as_ref()
        .filter(|f| f.value.member.is_none())
        .and_then(|f| f.value.leader.clone());
    let quorum_key = quorum_key(cluster);
    // in failsafe mode with a failsafe key, only the members it lists race (as each of them
    // checks for itself above): one left out is no rival (the simulation's seed 433: every
    // member deferred to one the key left out, which refused, and nobody led)
    let failsafe_listed = cluster
        .failsafe
        .as_ref()
        .filter(|f| cfg.failsafe_mode() && !f.is_empty());
    for peer in obs.peers {
        if peer.name == obs.me || !peer.reachable {
            continue;
        }
        if failsafe_listed.is_some_and(|l| !l.contains_key(&peer.name)) && !peer.is_primary {
            continue;
        }
        // a server still taking writes keeps everyone out, whatever its tags or sync state
        if peer.is_primary {
            return Some(format!("{} is still running as primary", peer.name));
        }
        // in quorum commit every member may win with enough votes (a former leader ahead is
        // rewound); a nofailover voter only votes
        let in_race = !peer.no_failover
            && if quorum_key.is_some() {
                !quorum_key.is_some_and(|k| {
                    k.leader
                        .as_deref()
                        .is_some_and(|l| l.eq_ignore_ascii_case(&peer.name))
                })
            } else {
                cluster.sync_allows_promotion(&peer.name)
            };
        if !in_race || peer.watchdog_failed || peer.standing_down {
            continue;
        }
        if let Some(theirs) = peer.wal_position {
            let order = wal_order((peer.timeline, theirs), (obs.pg.timeline, mine));
            if order.is_gt() && theirs <= mine {
                return Some(format!(
                    "{} is ahead: its WAL is on the newer timeline {} (this node's is on {})",
                    peer.name,
                    peer.timeline.unwrap_or_default(),
                    obs.pg.timeline.unwrap_or_default()
                ));
            }
            if order.is_gt() {
                return Some(format!("{} is ahead (WAL {theirs} > {mine})", peer.name));
            }
            if order.is_eq()
                && peer.failover_priority > obs.failover_priority
                && standing_aside.as_deref() != Some(peer.name.as_str())
            {
                return Some(format!(
                    "{} is as far ahead and has a higher failover_priority ({} > {})",
                    peer.name, peer.failover_priority, obs.failover_priority
                ));
            }
        }
    }
    quorum_refusal(obs, cluster)
}

/// The `sync` key, when quorum commit is on and the key names a leader.
fn quorum_key(cluster: &Cluster) -> Option<&shared::dcs::SyncState> {
    let on = cluster.dynamic_config().synchronous_mode() == SyncMode::Quorum;
    cluster
        .sync
        .as_ref()
        .map(|k| &k.value)
        .filter(|k| on && k.leader.is_some())
}

/// Whether `name` is in the key's voting set: its leader and voters.
fn in_voting_set(k: &shared::dcs::SyncState, name: &str) -> bool {
    k.leader
        .as_deref()
        .is_some_and(|l| l.eq_ignore_ascii_case(name))
        || k.is_sync(name)
}

/// Quorum commit: why this node lacks the votes to be promoted — the running members of the
/// voting set at or behind its WAL (see [`crate::quorum::has_quorum`]) — or `None`.
fn quorum_refusal(obs: &Observation<'_>, cluster: &Cluster) -> Option<String> {
    let others = obs
        .peers
        .iter()
        .filter(|p| p.name != obs.me && p.reachable && !p.is_primary)
        .map(|p| (p.name.as_str(), wal_end(p.timeline, p.wal_position)));
    quorum_refusal_for(
        cluster,
        obs.me,
        wal_end(obs.pg.timeline, obs.pg.wal_position),
        others,
    )
}

/// Where a server's WAL ends, for comparing members: `(timeline, position)`.
type WalAt = (Option<u64>, u64);

fn wal_end(timeline: Option<u64>, position: Option<u64>) -> Option<WalAt> {
    position.map(|p| (timeline, p))
}

/// Orders two members' WAL ends. A newer timeline is ahead of any position on an older one:
/// the older timeline's WAL past the fork never became the cluster's (the rules that let the
/// newer timeline be promoted say no commit past the fork was acknowledged), while the newer
/// timeline's may hold acknowledged commits at positions the older one also reached. On one
/// timeline, or when either is unknown, the positions decide.
fn wal_order(a: WalAt, b: WalAt) -> std::cmp::Ordering {
    match (a.0, b.0) {
        (Some(x), Some(y)) if x != y => x.cmp(&y),
        _ => a.1.cmp(&b.1),
    }
}

/// The same for member `who` at WAL `position`, as the running members `others` see it.
fn quorum_refusal_for<'a>(
    cluster: &Cluster,
    who: &str,
    position: Option<WalAt>,
    others: impl Iterator<Item = (&'a str, Option<WalAt>)>,
) -> Option<String> {
    let k = quorum_key(cluster)?;
    let Some(mine) = position else {
        return Some("own WAL position unknown".into());
    };
    let mut votes = 0usize;
    let mut ahead = false;
    for (name, wal) in others {
        if in_voting_set(k, name) && wal.is_some_and(|w| w.1 > 0 && wal_order(w, mine).is_le()) {
            votes += 1;
        }
        ahead |= wal.is_some_and(|w| wal_order(w, mine).is_gt());
    }
    let leader = k.leader.as_deref().unwrap_or_default();
    let quorum = usize::try_from(k.quorum).unwrap_or(usize::MAX);
    if crate::quorum::has_quorum(who, leader, &k.sync_standby, quorum, votes, ahead) {
        return None;
    }
    let needed = if in_voting_set(k, who) {
        quorum
    } else {
        quorum.saturating_add(1)
    };
    Some(format!(
        "quorum commit: {votes} member(s) of the voting set ({leader}, {}) are at or behind the WAL of {who}, and {needed} must be",
        k.sync_standby.join(", ")
    ))
}

/// The leader's name and the timeline its member key shows, when both are known: what a
/// "no rewind required" answer from pg_rewind stays valid for.
pub fn leader_identity(cluster: &Cluster) -> Option<(String, u64)> {
    let l = cluster.leader.as_ref()?;
    Some((l.name.clone(), cluster.member(&l.name)?.data.timeline?))
}

/// The timeline the leader runs on: its member key's, else the one the history key implies.
fn leader_timeline(cluster: &Cluster) -> u64 {
    let from_history = cluster.timeline();
    cluster
        .leader
        .as_ref()
        .and_then(|l| cluster.member(&l.name))
        .and_then(|m| m.data.timeline)
        .map_or(from_history, |t| t.max(from_history))
}

/// Whether the local WAL (`end`) can continue as the leader's history (from the `history` key),
/// or ran past the point where the leader's timeline forked off.
pub fn divergence(cluster: &Cluster, end: Option<WalEnd>) -> Divergence {
    let Some(end) = end else {
        return Divergence::Unknown;
    };
    let leader_tl = leader_timeline(cluster);
    if end.timeline == leader_tl {
        return Divergence::No;
    }
    if end.timeline > leader_tl {
        // We know a newer timeline than the leader: only a rewind (or the leader) can tell.
        return Divergence::Unknown;
    }
    match cluster.history.iter().find(|e| e.timeline == end.timeline) {
        Some(e) if end.lsn > e.lsn => Divergence::Diverged {
            timeline: end.timeline,
            at: e.lsn,
        },
        Some(_) => Divergence::No,
        // Our timeline is not an ancestor of the leader's: it forked off the leader's lineage
        // (a short-lived primary's). Once the leader runs as primary its history is current
        // (it is written in the same cycle as its member key), which the caller checks.
        None if !cluster.history.is_empty() => Divergence::Diverged {
            timeline: end.timeline,
            at: cluster
                .history
                .iter()
                .filter(|e| e.timeline < end.timeline)
                .map(|e| e.lsn)
                .max()
                .unwrap_or(0),
        },
        None => Divergence::Unknown,
    }
}

pub use shared::dcs::{failover_blocked, failover_readiness};

/// The other members that could take over now, when there are any.
fn takeover_candidates(obs: &Observation<'_>, cluster: &Cluster) -> Option<Vec<String>> {
    let candidates: Vec<String> = failover_readiness(cluster)
        .into_iter()
        .filter(|(n, why)| why.is_none() && n != obs.me)
        .map(|(n, _)| n)
        .collect();
    (!candidates.is_empty()).then_some(candidates)
}

/// For the lock holder whose PostgreSQL is down: after `primary_start_timeout`, and when some
/// other member could take over, the reason to give the lock up (patroni#1663).
fn primary_gives_up(obs: &Observation<'_>, cluster: &Cluster) -> Option<String> {
    let down = obs.primary_down_secs?;
    let limit = cluster.dynamic_config().primary_start_timeout();
    if down < limit {
        return None;
    }
    let candidates = takeover_candidates(obs, cluster)?;
    Some(format!(
        "PostgreSQL has not run as primary for {down}s (primary_start_timeout {limit}s): giving the leader lock up so that a healthy replica ({}) takes over",
        candidates.join(", ")
    ))
}

/// For the lock holder whose PostgreSQL runs but has answered no query for retry_timeout (frozen,
/// stuck in I/O): when another member could take over, the reason to kill it and give the lock
/// up. Killed, not stopped: a frozen server cannot act on a shutdown request, and would take
/// writes again the moment it thawed.
fn unresponsive_primary_gives_up(obs: &Observation<'_>, cluster: &Cluster) -> Option<String> {
    let silent = obs.pg.unresponsive_secs?;
    if silent < obs.timing.retry_timeout {
        return None;
    }
    let candidates = takeover_candidates(obs, cluster)?;
    Some(format!(
        "PostgreSQL has answered no query for {silent}s (retry_timeout {}s): killing it and giving the leader lock up so that a healthy replica ({}) takes over",
        obs.timing.retry_timeout,
        candidates.join(", ")
    ))
}

/// What a node that must follow the leader does with its data directory first.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rejoin {
    /// Its WAL continues the leader's history (or PostgreSQL will tell): start or keep streaming.
    Follow,
    /// Rewind from the leader first.
    Rewind,
    /// Wipe the data directory and clone again (the reason says why).
    Wipe(String),
    /// Do nothing yet, for this reason.
    Wait(String),
}

fn rejoin_plan(
    obs: &Observation<'_>,
    cluster: &Cluster,
    leader: &str,
    was_primary: bool,
) -> Rejoin {
    let leader_ready = leader_serves(cluster, leader);
    if obs.pg.rewind_not_needed {
        // pg_rewind compared this data with the leader's history and found nothing to undo.
        return Rejoin::Follow;
    }
    let div = divergence(cluster, obs.pg.wal_end);
    let diverged = match div {
        Divergence::No => return Rejoin::Follow,
        Divergence::Diverged { timeline, at } => Some((timeline, at)),
        // A replica that never led cannot be ahead of the history it streamed; PostgreSQL itself
        // refuses to stream a history that does not fit, and that is caught once it runs.
        // A replica on a newer timeline than the leader's that does not stream (a primary
        // demoted while etcd was away, whose timeline the leader never saw) is the exception:
        // its WAL went its own way (the simulation's seed 530 waited forever).
        Divergence::Unknown
            if !was_primary
                && obs
                    .pg
                    .wal_end
                    .is_none_or(|e| e.timeline <= leader_timeline(cluster)) =>
        {
            return Rejoin::Follow;
        }
        Divergence::Unknown if !obs.rewind.possible => return Rejoin::Follow,
        Divergence::Unknown => None,
    };
    if !leader_ready {
        return Rejoin::Wait(format!(
            "waiting for the new leader {leader} to run as primary before rejoining it"
        ));
    }
    if obs.rewind.possible {
        return Rejoin::Rewind;
    }
    let (timeline, at) = diverged.unwrap_or_default();
    let what = format!(
        "the local WAL runs past the point where timeline {timeline} forked off ({}) and pg_rewind cannot be used (use_pg_rewind off, or neither wal_log_hints nor data checksums)",
        shared::types::Lsn(at)
    );
    if obs.rewind.remove_on_diverged {
        Rejoin::Wipe(format!(
            "{what}: removing the data directory to clone it again (remove_data_directory_on_diverged_timelines)"
        ))
    } else {
        Rejoin::Wait(format!(
            "{what}: not following {leader}; reinitialize this member or set remove_data_directory_on_diverged_timelines"
        ))
    }
}

/// Turns a rejoin plan into this cycle's decision, or `None` when the node just follows.
fn rejoin_decision(plan: Rejoin, leader: &str, actions: &mut Vec<Action>) -> Option<Decision> {
    let summary = match plan {
        Rejoin::Follow => return None,
        Rejoin::Rewind => {
            actions.push(Action::Rewind {
                from: leader.to_string(),
            });
            format!("rewinding the data directory from {leader} with pg_rewind before following it")
        }
        Rejoin::Wipe(reason) => {
            actions.push(Action::WipeData {
                reason: reason.clone(),
            });
            reason
        }
        Rejoin::Wait(why) => why,
    };
    Some(decision(std::mem::take(actions), summary))
}

/// The member to clone from: a running member tagged `clonefrom` (not us, not the leader), else
/// the leader; the leader alone with `from_leader`.
fn clone_source(cluster: &Cluster, me: &str, from_leader: bool) -> Option<String> {
    let leader = cluster.leader.as_ref()?;
    let tagged = cluster.members.iter().find(|m: &&Member| {
        !from_leader
            && m.name != me
            && m.name != leader.name
            && m.data.state == "running"
            && m.data.tag_view().clonefrom()
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
/// With etcd unreachable, whether a primary must be read-only now: it has retried for
/// retry_timeout, or less than retry_timeout of its lease may be left.
fn unreachable_demote_due(obs: &Observation<'_>) -> bool {
    let t = obs.timing;
    let lease_ending = obs
        .lock_age_secs
        .is_none_or(|age| age.saturating_add(t.retry_timeout) >= t.ttl);
    obs.dcs_unreachable_secs >= t.retry_timeout || lease_ending
}

/// While a job runs with PostgreSQL up as an unpaused primary: why that job must give way to a
/// demotion — etcd is unreachable past the deadline, or another member holds the lock — if it
/// must. A switchover hands the lock over itself and a demotion is what is needed.
fn job_blocks_demotion(obs: &Observation<'_>, job: Job) -> Option<String> {
    // a bootstrap holds no lease yet (nobody else can lead before it ends); a switchover
    // hands the lock over itself, but not past the demotion point when etcd is lost
    if matches!(job, Job::Demote | Job::Bootstrap) || !obs.pg.running || obs.pg.in_recovery {
        return None;
    }
    if job == Job::Switchover && obs.cluster.is_some() {
        return None;
    }
    match obs.cluster {
        None if unreachable_demote_due(obs) => Some(format!(
            "etcd is unreachable and the leader lease runs short while a {job:?} job runs: cancelling it to demote to read-only"
        )),
        None => None,
        Some(c) if c.is_paused() => None,
        Some(c) => match &c.leader {
            Some(l) if l.name != obs.me => Some(format!(
                "{} holds the lock while a {job:?} job runs on this primary: cancelling it to demote",
                l.name
            )),
            _ => None,
        },
    }
}

/// Whether the leader `name` serves its members: runs as primary, or in a standby cluster runs
/// as its standby leader.
fn leader_serves(cluster: &Cluster, name: &str) -> bool {
    cluster.member(name).is_some_and(|m| {
        m.data.runs_as_primary()
            || (cluster.dynamic_config().standby_cluster().is_some()
                && m.data.role == "standby_leader"
                && m.data.state == "running")
    })
}

/// The members whose replication slots a leader (or standby leader) keeps: everyone else that
/// streams.
fn slot_members(obs: &Observation<'_>, cluster: &Cluster) -> Vec<String> {
    cluster
        .members
        .iter()
        .filter(|m| m.name != obs.me && !obs.nostream.contains(&m.name))
        .map(|m| m.name.clone())
        .collect()
}

/// What the rules after the first two share: the cluster as read, whether this member holds
/// the lock, whether the cluster is paused, the data directory's system identifier and whether
/// it was a primary's, and actions every later decision carries (adopting `initialize`).
struct Facts<'a> {
    cluster: &'a Cluster,
    holds_lock: bool,
    paused: bool,
    sysid: &'a str,
    was_primary: bool,
    actions: Vec<Action>,
}

/// One rule of the decision: when it applies, and what it decides then.
struct Rule {
    name: &'static str,
    applies: fn(&Observation<'_>, &Facts<'_>) -> bool,
    decide: fn(&Observation<'_>, &mut Facts<'_>) -> Decision,
}

/// The rules after "a job runs" and "etcd is unreachable", in the order they are asked (as
/// Patroni's ha.py reads: the data directory first, then PostgreSQL's state, then the lock).
/// The first that applies decides; the last applies always.
const RULES: &[Rule] = &[
    Rule {
        name: "foreign data directory",
        applies: |o, _| matches!(o.pg.data, DataDir::Foreign),
        decide: foreign_data_directory,
    },
    Rule {
        name: "unreadable data directory",
        applies: |o, _| matches!(o.pg.data, DataDir::Unreadable),
        decide: unreadable_data_directory,
    },
    Rule {
        name: "empty data directory",
        applies: |o, _| matches!(o.pg.data, DataDir::Empty),
        decide: empty_data_directory,
    },
    Rule {
        name: "another cluster's data",
        applies: |_, f| {
            f.cluster
                .initialize
                .as_deref()
                .is_some_and(|init| !init.is_empty() && !f.sysid.is_empty() && init != f.sysid)
        },
        decide: another_clusters_data,
    },
    Rule {
        name: "half-rewound data",
        applies: |o, _| o.pg.rewind_broken,
        decide: half_rewound_data,
    },
    Rule {
        name: "postgres stopped",
        applies: |o, _| !o.pg.running,
        decide: postgres_stopped,
    },
    Rule {
        name: "postgres starting",
        applies: |o, _| !o.pg.ready,
        decide: postgres_starting,
    },
    Rule {
        name: "no leader",
        applies: |_, f| f.cluster.leader.is_none(),
        decide: no_leader,
    },
    Rule {
        name: "this member leads",
        applies: |o, f| f.cluster.leader.as_ref().is_some_and(|l| l.name == o.me),
        decide: this_member_leads,
    },
    Rule {
        name: "another member leads",
        applies: |_, _| true,
        decide: another_member_leads,
    },
];

/// The decision for one cycle: the first rule that applies, named in the decision.
pub fn decide(obs: &Observation<'_>) -> Decision {
    if let Some(job) = obs.job {
        return named("job in progress", job_in_progress(obs, job));
    }
    let Some(cluster) = obs.cluster else {
        return named("etcd unreachable", etcd_unreachable(obs));
    };
    let (sysid, was_primary) = match &obs.pg.data {
        DataDir::Present { sysid, was_primary } => (sysid.as_str(), *was_primary),
        DataDir::Foreign | DataDir::Empty | DataDir::Unreadable => ("", false),
    };
    let mut facts = Facts {
        cluster,
        holds_lock: cluster.leader.as_ref().is_some_and(|l| l.name == obs.me),
        paused: cluster.is_paused(),
        sysid,
        was_primary,
        actions: Vec::new(),
    };
    // a data directory of this cluster's that etcd has no `initialize` for (etcd was wiped):
    // it is adopted, whatever else is decided
    if !sysid.is_empty() && cluster.initialize.is_none() && cluster.leader.is_none() {
        facts.actions.push(Action::AdoptInitialize {
            sysid: sysid.to_string(),
        });
    }
    for rule in RULES {
        if (rule.applies)(obs, &facts) {
            let d = (rule.decide)(obs, &mut facts);
            return named(rule.name, d);
        }
    }
    named("none", decision(facts.actions, "no rule applies"))
}

fn named(rule: &'static str, mut d: Decision) -> Decision {
    d.rule = rule;
    d
}

/// A job runs (bootstrap, clone, restart, …): it is never interrupted or doubled, unless it
/// must give way to a demotion; the holder keeps its lock meanwhile.
fn job_in_progress(obs: &Observation<'_>, job: Job) -> Decision {
    if let Some(why) = job_blocks_demotion(obs, job) {
        return decision(
            vec![
                Action::CancelJob {
                    reason: why.clone(),
                },
                Action::Demote { upstream: None },
            ],
            why,
        );
    }
    // Long operations are never interrupted or doubled; the holder keeps its lock meanwhile.
    let holds_lock = obs
        .cluster
        .and_then(|c| c.leader.as_ref())
        .is_some_and(|l| l.name == obs.me);
    // A switchover hands the lock over itself: renewing could take it back.
    let actions = if holds_lock && job != Job::Switchover {
        vec![Action::RenewLock]
    } else {
        vec![]
    };
    decision(actions, format!("{job:?} in progress"))
}

/// etcd cannot be read: a primary can no longer prove it holds the lock.
fn etcd_unreachable(obs: &Observation<'_>) -> Decision {
    // etcd unreachable: a primary can no longer prove it holds the lock. It retries for
    // retry_timeout, and demotes sooner once less than retry_timeout of its lease is left,
    // so it is read-only before the lease can expire and another node can lead.
    let t = obs.timing;
    if obs.pg.running && !obs.pg.in_recovery {
        // Failsafe: every member answered that it will not promote while this primary
        // keeps asking, so staying writable cannot make a second primary.
        match &obs.failsafe {
            Some(Ok(())) => {
                return decision(
                    vec![],
                    "etcd is unreachable: failsafe mode, every member confirmed this primary; staying writable",
                );
            }
            Some(Err(why)) => {
                return decision(
                    vec![Action::Demote { upstream: None }],
                    format!(
                        "etcd is unreachable and failsafe mode cannot keep this primary ({why}): demoting to read-only"
                    ),
                );
            }
            None => {}
        }
        if unreachable_demote_due(obs) {
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
    decision(vec![], "etcd is unreachable: keeping PostgreSQL as it is")
}

/// The lock given up by a holder that cannot serve; nothing for the others.
fn release_if_held(f: &Facts<'_>) -> Vec<Action> {
    if f.holds_lock {
        vec![Action::ReleaseLock]
    } else {
        vec![]
    }
}

/// The data directory holds something that is not a PostgreSQL cluster: never touched.
fn foreign_data_directory(_obs: &Observation<'_>, f: &mut Facts<'_>) -> Decision {
    let actions = release_if_held(f);
    decision(
        actions,
        "the data directory is not empty but holds no PostgreSQL cluster: refusing to initialize or clone over it; empty it or point postgresql.data_dir elsewhere",
    )
}

/// pg_control cannot be read and no server runs: neither cloned over (the data is there)
/// nor started; a holder gives the lock up so that a member that can serve leads.
fn unreadable_data_directory(_obs: &Observation<'_>, f: &mut Facts<'_>) -> Decision {
    let actions = release_if_held(f);
    decision(
        actions,
        "pg_control cannot be read (see the warning above): leaving the data directory as it is until it can",
    )
}

/// No data yet: bootstrap (the initialize race), clone, or wait for whoever bootstraps.
fn empty_data_directory(obs: &Observation<'_>, f: &mut Facts<'_>) -> Decision {
    let (cluster, holds_lock, paused) = (f.cluster, f.holds_lock, f.paused);
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
    match clone_source(cluster, obs.me, obs.clone_from_leader) {
        Some(from) if !holds_lock => {
            let summary = format!("cloning a replica from {from}");
            actions.push(Action::Clone { from });
            decision(actions, summary)
        }
        // nobody leads, but a finished bootstrap left a backup to restore from
        // (an empty initialize key is a bootstrap under way: wait for it)
        None if cluster.leader.is_none()
            && obs.clone_without_leader
            && cluster.initialize.as_deref().is_some_and(|i| !i.is_empty()) =>
        {
            actions.push(Action::CloneWithoutLeader);
            decision(
                actions,
                "no leader: building a replica with the replica methods that need none (no_leader)",
            )
        }
        _ => decision(actions, "waiting for the leader to bootstrap the cluster"),
    }
}

/// The data directory belongs to another cluster (its system identifier is not the one in
/// `initialize`): the agent exits rather than touch it.
fn another_clusters_data(_obs: &Observation<'_>, f: &mut Facts<'_>) -> Decision {
    let (sysid, init) = (f.sysid, f.cluster.initialize.as_deref().unwrap_or_default());
    decision(
        vec![Action::Exit {
            reason: format!(
                "system identifier {sysid} of the data directory differs from the cluster's {init}: this data belongs to another cluster; move it away or fix the scope"
            ),
        }],
        "system identifier mismatch",
    )
}

/// A pg_rewind of this data directory failed or was interrupted (patroni#3648): never started.
fn half_rewound_data(obs: &Observation<'_>, f: &mut Facts<'_>) -> Decision {
    let (holds_lock, paused) = (f.holds_lock, f.paused);
    let mut actions = std::mem::take(&mut f.actions);
    // patroni#3648: a half-rewound data directory can start and silently serve wrong data.
    if holds_lock {
        actions.push(Action::ReleaseLock);
    }
    if obs.rewind.remove_on_failure && !paused {
        actions.push(Action::WipeData {
            reason: "a pg_rewind of this data directory failed or was interrupted (remove_data_directory_on_rewind_failure)".into(),
        });
        return decision(
            actions,
            "a pg_rewind of this data directory failed or was interrupted: removing it to clone it again",
        );
    }
    decision(
        actions,
        "a pg_rewind of this data directory failed or was interrupted: PostgreSQL will not be started from it; reinitialize this member (POST /reinitialize) or set postgresql.remove_data_directory_on_rewind_failure",
    )
}

/// PostgreSQL is not running: start it in the role the lock gives, rejoin, or give the lock up.
fn postgres_stopped(obs: &Observation<'_>, f: &mut Facts<'_>) -> Decision {
    let (cluster, holds_lock, paused) = (f.cluster, f.holds_lock, f.paused);
    let was_primary = f.was_primary;
    let mut actions = std::mem::take(&mut f.actions);
    if paused {
        if holds_lock {
            actions.push(Action::ReleaseLock);
        }
        return decision(actions, "PAUSE: PostgreSQL is not running; doing nothing");
    }
    if holds_lock
        && was_primary
        && let Some(d) = primary_gives_up(obs, cluster)
    {
        actions.push(Action::ReleaseLock);
        return standing_down(actions, d);
    }
    if let Some(l) = cluster.leader.as_ref().filter(|l| l.name != obs.me)
        && let Some(d) = rejoin_decision(
            rejoin_plan(obs, cluster, &l.name, was_primary),
            &l.name,
            &mut actions,
        )
    {
        return d;
    }
    let standby = cluster.dynamic_config().standby_cluster();
    let leader_other = cluster
        .leader
        .as_ref()
        .filter(|l| l.name != obs.me)
        .map(|_| upstream_for(obs, cluster))
        .unwrap_or(None)
        // a standby leader starts as a replica of the remote primary
        .or_else(|| {
            (holds_lock && standby.is_some()).then(|| shared::dcs::STANDBY_REMOTE.to_string())
        });
    if holds_lock {
        actions.push(Action::RenewLock);
    }
    // without the config key it is not known whether this is a standby cluster
    let as_primary = holds_lock && was_primary && standby.is_none() && cluster.config.is_some();
    if as_primary {
        actions.extend(crate::synchronous::before_primary(obs, cluster));
    }
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
    decision(actions, summary)
}

/// PostgreSQL runs but does not answer yet.
fn postgres_starting(obs: &Observation<'_>, f: &mut Facts<'_>) -> Decision {
    let (cluster, holds_lock, paused) = (f.cluster, f.holds_lock, f.paused);
    let mut actions = std::mem::take(&mut f.actions);
    if holds_lock
        && !paused
        && let Some(why) = unresponsive_primary_gives_up(obs, cluster)
    {
        actions.push(Action::KillPostgres {
            reason: why.clone(),
        });
        actions.push(Action::ReleaseLock);
        return standing_down(actions, why);
    }
    if holds_lock
        && !paused
        && let Some(d) = primary_gives_up(obs, cluster)
    {
        actions.push(Action::ReleaseLock);
        return standing_down(actions, d);
    }
    if holds_lock {
        actions.push(Action::RenewLock);
    }
    decision(actions, "PostgreSQL is starting")
}

/// Nobody holds the lock: race for it, or say why not.
fn no_leader(obs: &Observation<'_>, f: &mut Facts<'_>) -> Decision {
    let (cluster, paused) = (f.cluster, f.paused);
    let mut actions = std::mem::take(&mut f.actions);
    let requested = requested_race(obs, cluster);
    if paused {
        if !obs.pg.in_recovery {
            actions.push(Action::AcquireLock);
            return decision(
                actions,
                "PAUSE: taking the free leader lock for the running primary",
            );
        }
        if let Some((true, why)) = requested {
            actions.push(Action::AcquireLock);
            return decision(actions, format!("PAUSE: {why}"));
        }
        return decision(actions, "PAUSE: no leader, not racing while paused");
    }
    let refusal = if let Some(l) = obs.failsafe_leader.as_deref().filter(|l| *l != obs.me) {
        format!(
            "no leader, not racing: {l} runs as primary in failsafe mode and reached this node less than ttl ago"
        )
    } else {
        match requested {
            Some((true, why)) => {
                actions.push(Action::AcquireLock);
                return decision(actions, why);
            }
            Some((false, why)) => why,
            None => match race_refusal(obs, cluster) {
                Some(why) => format!("no leader, not racing: {why}"),
                None => {
                    // a primary whose last renewal (or failsafe confirmation) is so old that
                    // nothing covers its writes any more takes the lock read-only: the race
                    // may not end before its guard's deadline (a slow etcd after failsafe)
                    let t = obs.timing;
                    let lapsing = obs
                        .lock_age_secs
                        .is_some_and(|age| age.saturating_add(t.retry_timeout) >= t.ttl);
                    if lapsing && obs.pg.running && !obs.pg.in_recovery {
                        actions.push(Action::Demote { upstream: None });
                        actions.push(Action::AcquireLock);
                        return decision(
                            actions,
                            "no leader: this node is the healthiest, taking the lock read-only (its last renewal or failsafe confirmation is too old to keep taking writes)",
                        );
                    }
                    actions.push(Action::AcquireLock);
                    return decision(
                        actions,
                        "no leader: this node is the healthiest, taking the lock",
                    );
                }
            },
        }
    };
    // a primary whose lock expired (etcd was away, or its agent stalled) and that may not
    // take it again stops taking writes, as Patroni's "not the healthiest node": whoever may
    // race (a requested candidate, the healthiest) does once it runs read-only
    if !obs.pg.in_recovery && obs.pg.running {
        actions.push(Action::Demote { upstream: None });
        return decision(
            actions,
            format!("{refusal}; this primary may not take the lock: demoting"),
        );
    }
    decision(actions, refusal)
}

/// This member holds the lock: keep it, promote, publish, hand it over, or give it up.
fn this_member_leads(obs: &Observation<'_>, f: &mut Facts<'_>) -> Decision {
    let (cluster, paused) = (f.cluster, f.paused);
    let mut actions = std::mem::take(&mut f.actions);
    if let Some(why) = obs.watchdog_refusal.as_ref().filter(|_| !paused) {
        // Patroni's rule: a leader whose required watchdog fails stops leading, the
        // primary going read-only first and the lock following once it is
        let summary = format!("watchdog required but unusable ({why}): giving up leadership");
        if obs.pg.in_recovery {
            actions.push(Action::ReleaseLock);
        } else {
            actions.push(Action::Demote { upstream: None });
        }
        return decision(actions, summary);
    }
    // the lock was last renewed so long ago that its lease may end before the next renewal
    // (etcd answers reads, but renewals fail or come too slowly): read-only first, before the
    // fencing guard must make it so (Patroni demotes at the first failed renewal); renewing
    // goes on, and a renewed lock makes it primary again
    let t = obs.timing;
    if let Some(age) = obs
        .lock_age_secs
        .filter(|age| age.saturating_add(t.retry_timeout) >= t.ttl)
        && !paused
        && obs.pg.running
        && !obs.pg.in_recovery
    {
        actions.push(Action::Demote { upstream: None });
        actions.push(Action::RenewLock);
        return decision(
            actions,
            format!(
                "the leader lock was last renewed {age}s ago, too long to keep taking writes (ttl {}s, retry_timeout {}s): demoting",
                t.ttl, t.retry_timeout
            ),
        );
    }
    actions.push(Action::RenewLock);
    if cluster.config.is_none() {
        // the configuration decides what this holder may do (a standby cluster's never
        // promotes): it is restored first, nothing else this cycle
        actions.push(Action::WriteConfig);
        return decision(
            actions,
            "the config key is missing: restoring it before acting on the lock",
        );
    }
    let requested_here = cluster
        .failover
        .as_ref()
        .is_some_and(|f| f.value.member.as_deref() == Some(obs.me));
    let standby = cluster.dynamic_config().standby_cluster();
    if let Some(sc) = &standby
        && !obs.pg.in_recovery
        && !paused
    {
        // standby_cluster set on a running cluster (demote-cluster): its primary
        // becomes the standby leader, replicating from the remote primary
        actions.push(Action::Demote {
            upstream: Some(shared::dcs::STANDBY_REMOTE.to_string()),
        });
        return decision(
            actions,
            format!(
                "standby_cluster is set: demoting this primary to standby leader of {}",
                sc.address().unwrap_or_else(|| "the archive".into())
            ),
        );
    }
    if obs.pg.in_recovery
        && let Some(sc) = &standby
    {
        // the standby leader: it holds the lock and feeds the cascade, replicates from
        // the remote primary (or its archive) and never promotes on its own
        actions.push(Action::PublishStatus);
        if cluster.dynamic_config().use_slots() {
            actions.push(Action::EnsureSlots {
                members: slot_members(obs, cluster),
            });
        }
        if obs.pg.config_outdated {
            actions.push(Action::ApplyConfig);
        }
        // a switchover or failover request makes no primary here: cleared
        if cluster.failover.is_some() {
            actions.push(Action::ClearFailover {
                reason: Some(
                    "a standby cluster has no primary to switch over to: promote the cluster first (promote-cluster)"
                        .into(),
                ),
            });
        }
        let source = sc.address().unwrap_or_else(|| "the archive".into());
        if obs.pg.upstream != sc.address() {
            actions.push(Action::Follow {
                upstream: Some(shared::dcs::STANDBY_REMOTE.to_string()),
            });
            return decision(actions, format!("standby leader: following {source}"));
        }
        return decision(
            actions,
            format!("standby leader: replicating from {source}"),
        );
    }
    if obs.pg.in_recovery {
        if paused && !requested_here {
            actions.pop();
            actions.push(Action::ReleaseLock);
            return decision(
                actions,
                "PAUSE: holding the lock as a replica; releasing it",
            );
        }
        actions.extend(crate::synchronous::before_primary(obs, cluster));
        actions.push(Action::Promote);
        return decision(actions, "holding the leader lock: promoting");
    }
    actions.push(Action::PublishStatus);
    // The members' slots first: a member that just handed the lock over to this node
    // connects at once and must find its slot.
    if cluster.dynamic_config().use_slots() {
        actions.push(Action::EnsureSlots {
            members: slot_members(obs, cluster),
        });
    }
    actions.extend(crate::synchronous::primary_duty(obs, cluster));
    let mut summary = "leader: holding the lock".to_string();
    match handover(obs, cluster) {
        None => {}
        Some(Handover::Wait { ms, summary }) => {
            let mut d = decision(actions, summary);
            d.wake_in_ms = Some(ms);
            return d;
        }
        Some(Handover::Clear(reason)) => {
            summary = match &reason {
                Some(why) => format!("leader: refusing the requested switchover: {why}"),
                None => "leader: the switchover request is fulfilled; clearing it".into(),
            };
            actions.push(Action::ClearFailover { reason });
        }
        Some(Handover::Go(candidate)) => {
            let summary = format!(
                "leader: handing the lock over to {}",
                candidate.as_deref().unwrap_or("the healthiest member")
            );
            actions.push(Action::Switchover { candidate });
            return decision(actions, summary);
        }
    }
    if obs.pg.config_outdated {
        actions.push(Action::ApplyConfig);
    }
    decision(actions, summary)
}

/// Another member holds the lock: follow it, rejoin it, or demote to follow it.
fn another_member_leads(obs: &Observation<'_>, f: &mut Facts<'_>) -> Decision {
    let (cluster, paused) = (f.cluster, f.paused);
    let mut actions = std::mem::take(&mut f.actions);
    let Some(l) = &cluster.leader else {
        return decision(actions, "no leader");
    };
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
    if !obs.pg.streaming
        && !paused
        && let Some(d) = rejoin_decision(
            rejoin_plan(obs, cluster, &l.name, false),
            &l.name,
            &mut actions,
        )
    {
        return d;
    }
    let want = upstream.as_deref().and_then(|u| member_address(cluster, u));
    if want.is_some() && want != obs.pg.upstream {
        // A new leader is followed once it runs as primary: its slot for us and its
        // timeline are then there, and streaming starts at once instead of after a
        // failed attempt and wal_retrieve_retry_interval.
        if upstream.as_deref() == Some(l.name.as_str()) && !leader_serves(cluster, &l.name) {
            return decision(
                actions,
                format!(
                    "waiting for the new leader {} to run as primary before following it",
                    l.name
                ),
            );
        }
        let summary = format!("following {}", upstream.as_deref().unwrap_or_default());
        actions.push(Action::Follow { upstream });
        return decision(actions, summary);
    }
    if obs.pg.config_outdated {
        actions.push(Action::ApplyConfig);
    }
    // a member that may be promoted carries the permanent slots, so that their
    // consumers go on after a failover
    if !obs.no_failover
        && cluster.dynamic_config().use_slots()
        && !cluster.dynamic_config().permanent_slots().is_empty()
    {
        actions.push(Action::SyncSlots);
    }
    decision(actions, format!("replica following {}", l.name))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use shared::dcs::{DynamicConfig, Leader, Member, MemberData, Status, Versioned};

    pub(crate) fn member(name: &str, port: u16, state: &str) -> Member {
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

    pub(crate) fn cluster(leader: Option<&str>) -> Cluster {
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

    /// A cluster whose dynamic configuration makes it a standby cluster of 10.0.9.9:5432.
    fn standby_cluster(leader: Option<&str>) -> Cluster {
        let mut c = cluster(leader);
        c.config = Some(Versioned {
            value: DynamicConfig::parse(
                r#"{"standby_cluster": {"host": "10.0.9.9", "port": 5432}}"#,
            )
            .unwrap(),
            mod_revision: 1,
        });
        c
    }

    #[test]
    fn a_standby_leader_follows_the_remote_and_never_promotes() {
        let c = standby_cluster(Some("n1"));
        let remote = Some(shared::dcs::STANDBY_REMOTE.to_string());
        // the holder in recovery: follows the remote primary, no promotion
        let d = decide(&obs(
            "n1",
            Some(&c),
            replica_pg(1000, Some("127.0.0.1:5433")),
            &[],
        ));
        assert!(!d.actions.contains(&Action::Promote), "{d:?}");
        assert!(
            d.actions.contains(&Action::Follow {
                upstream: remote.clone()
            }),
            "{d:?}"
        );
        assert!(d.actions.contains(&Action::RenewLock), "{d:?}");
        // already following it: nothing to change
        let d = decide(&obs(
            "n1",
            Some(&c),
            replica_pg(1000, Some("10.0.9.9:5432")),
            &[],
        ));
        assert!(
            !d.actions
                .iter()
                .any(|a| matches!(a, Action::Follow { .. } | Action::Promote)),
            "{d:?}"
        );
        // a primary under standby_cluster (demote-cluster) becomes the standby leader
        let d = decide(&obs("n1", Some(&c), primary_pg(), &[]));
        assert!(
            d.actions.contains(&Action::Demote {
                upstream: remote.clone()
            }),
            "{d:?}"
        );
        // stopped: started as a replica of the remote, never as a primary
        let mut stopped = primary_pg();
        stopped.running = false;
        stopped.ready = false;
        let d = decide(&obs("n1", Some(&c), stopped, &[]));
        assert!(
            d.actions.contains(&Action::Start {
                as_primary: false,
                upstream: remote
            }),
            "{d:?}"
        );
        // the other members follow the standby leader
        let d = decide(&obs(
            "n2",
            Some(&c),
            replica_pg(1000, Some("127.0.0.1:5432")),
            &[],
        ));
        assert!(
            !d.actions
                .iter()
                .any(|a| matches!(a, Action::Promote | Action::Follow { .. })),
            "{d:?}"
        );
    }

    pub(crate) fn replica_pg(wal: u64, upstream: Option<&str>) -> PgView {
        PgView {
            data: DataDir::Present {
                sysid: "7000000000000000001".into(),
                was_primary: false,
            },
            running: true,
            ready: true,
            unresponsive_secs: None,
            in_recovery: true,
            wal_position: Some(wal),
            timeline: Some(1),
            upstream: upstream.map(str::to_string),
            wal_end: Some(WalEnd {
                timeline: 1,
                lsn: wal,
            }),
            streaming: upstream.is_some(),
            rewind_broken: false,
            rewind_not_needed: false,
            config_outdated: false,
            standbys: Vec::new(),
            sync_names: None,
            sync_any: None,
            sync_since: Vec::new(),
        }
    }

    pub(crate) fn primary_pg() -> PgView {
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

    pub(crate) fn obs<'a>(
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
            rewind: RewindPolicy {
                possible: true,
                remove_on_failure: false,
                remove_on_diverged: false,
            },
            primary_down_secs: None,
            gave_up_lock_secs: None,
            now_ms: NOW_MS,
            handed_over: None,
            failsafe: None,
            failsafe_leader: None,
            watchdog_refusal: None,
            clone_without_leader: false,
            clone_from_leader: false,
        }
    }

    /// 2026-11-23T12:00:00Z
    const NOW_MS: i64 = 1_795_435_200_000;

    #[test]
    fn quorum_commit_needs_the_votes_of_the_voting_set() {
        let mut c = cluster(None);
        c.config = Some(Versioned {
            value: DynamicConfig::parse(r#"{"synchronous_mode": "quorum"}"#).unwrap(),
            mod_revision: 1,
        });
        c.sync = Some(Versioned {
            value: shared::dcs::SyncState {
                leader: Some("n1".into()),
                quorum: 1,
                sync_standby: vec!["n2".into(), "n3".into()],
            },
            mod_revision: 3,
        });
        // n3 answers at or behind n2: one vote, enough
        let peers = [peer("n3", 900, false)];
        assert_eq!(
            race_refusal(&obs("n2", Some(&c), replica_pg(1000, None), &peers), &c),
            None
        );
        // n3 unreachable: no vote, no promotion (n3 may hold what n2 lacks)
        let mut gone = peer("n3", 900, false);
        gone.reachable = false;
        let why = race_refusal(&obs("n2", Some(&c), replica_pg(1000, None), &[gone]), &c)
            .expect("refused");
        assert!(why.contains("quorum commit"), "{why}");
        // a member outside the voting set needs one vote more
        let mut c4 = c.clone();
        c4.sync.as_mut().unwrap().value.sync_standby = vec!["n3".into()];
        c4.sync.as_mut().unwrap().value.quorum = 0;
        assert!(race_refusal(&obs("n2", Some(&c4), replica_pg(1000, None), &[]), &c4).is_some());
        assert_eq!(
            race_refusal(&obs("n2", Some(&c4), replica_pg(1000, None), &peers), &c4),
            None
        );
    }

    fn peer(name: &str, wal: u64, primary: bool) -> PeerReport {
        PeerReport {
            name: name.into(),
            reachable: true,
            is_primary: primary,
            wal_position: Some(wal),
            timeline: None,
            failover_priority: 1,
            no_failover: false,
            watchdog_failed: false,
            standing_down: false,
        }
    }

    /// Each rule's table: an observation, the rule that must decide it (so no earlier rule
    /// may take it), and the actions. Every rule has rows.
    #[test]
    fn each_rule_decides_its_table() {
        let lead1 = cluster(Some("n1"));
        // a replica as far ahead as the primary, preferred by its failover_priority
        let preferred: &'static [PeerReport] = Box::leak(Box::new([PeerReport {
            failover_priority: 5,
            ..peer("n3", primary_pg().wal_position.unwrap_or(0), false)
        }]));
        let nobody = cluster(None);
        let mut fresh = cluster(None);
        fresh.initialize = None;
        let mut other_cluster = cluster(Some("n1"));
        other_cluster.initialize = Some("7999999999999999999".into());
        let mut paused1 = cluster(Some("n1"));
        paused1.config = Some(Versioned {
            value: DynamicConfig::parse(r#"{"pause": true}"#).unwrap(),
            mod_revision: 1,
        });
        let empty = |running: bool| PgView {
            data: DataDir::Empty,
            running,
            ..replica_pg(0, None)
        };
        let stopped = |pg: PgView| PgView {
            running: false,
            ready: false,
            ..pg
        };
        let starting = PgView {
            ready: false,
            ..replica_pg(900, None)
        };
        let broken = PgView {
            rewind_broken: true,
            ..stopped(replica_pg(900, None))
        };
        let with_job = |mut o: Observation<'static>, j: Job| {
            o.job = Some(j);
            o
        };
        // (case, observation, rule, actions)
        let leaked = |c: Cluster| -> &'static Cluster { Box::leak(Box::new(c)) };
        let (lead1, nobody, fresh, other_cluster, paused1) = (
            leaked(lead1),
            leaked(nobody),
            leaked(fresh),
            leaked(other_cluster),
            leaked(paused1),
        );
        let table: Vec<(&str, Observation<'static>, &str, Vec<Action>)> = vec![
            (
                "a clone runs: nothing else",
                with_job(obs("n2", Some(lead1), empty(false), &[]), Job::Clone),
                "job in progress",
                vec![],
            ),
            (
                "the holder restarts: it keeps renewing",
                with_job(obs("n1", Some(lead1), primary_pg(), &[]), Job::Restart),
                "job in progress",
                vec![Action::RenewLock],
            ),
            (
                "no etcd, a replica: kept as it is",
                obs("n2", None, replica_pg(900, Some("n1")), &[]),
                "etcd unreachable",
                vec![],
            ),
            (
                "foreign data: never touched",
                obs(
                    "n2",
                    Some(lead1),
                    PgView {
                        data: DataDir::Foreign,
                        ..stopped(replica_pg(0, None))
                    },
                    &[],
                ),
                "foreign data directory",
                vec![],
            ),
            (
                "pg_control unreadable, a leader to clone from: never cloned over; the holder lets go",
                obs(
                    "n1",
                    Some(lead1),
                    PgView {
                        data: DataDir::Unreadable,
                        ..stopped(replica_pg(0, None))
                    },
                    &[],
                ),
                "unreadable data directory",
                vec![Action::ReleaseLock],
            ),
            (
                "no cluster yet: the bootstrap race",
                obs("n1", Some(fresh), empty(false), &[]),
                "empty data directory",
                vec![Action::BootstrapIfWon],
            ),
            (
                "a leader: clone from it",
                obs("n2", Some(lead1), empty(false), &[]),
                "empty data directory",
                vec![Action::Clone { from: "n1".into() }],
            ),
            (
                "another cluster's data: exit",
                obs("n2", Some(other_cluster), replica_pg(900, Some("n1")), &[]),
                "another cluster's data",
                vec![Action::Exit {
                    reason: "system identifier 7000000000000000001 of the data directory differs from the cluster's 7999999999999999999: this data belongs to another cluster; move it away or fix the scope".into(),
                }],
            ),
            (
                "half-rewound data: never started",
                obs("n2", Some(lead1), broken, &[]),
                "half-rewound data",
                vec![],
            ),
            (
                "stopped replica: started following the leader",
                obs("n2", Some(lead1), stopped(replica_pg(900, None)), &[]),
                "postgres stopped",
                vec![Action::Start {
                    as_primary: false,
                    upstream: Some("n1".into()),
                }],
            ),
            (
                "etcd wiped: the data directory's initialize adopted, PostgreSQL started",
                obs("n2", Some(fresh), stopped(replica_pg(900, None)), &[]),
                "postgres stopped",
                vec![
                    Action::AdoptInitialize {
                        sysid: "7000000000000000001".into(),
                    },
                    Action::Start {
                        as_primary: false,
                        upstream: None,
                    },
                ],
            ),
            (
                "paused, the holder stopped: the lock given up",
                obs("n1", Some(paused1), stopped(primary_pg()), &[]),
                "postgres stopped",
                vec![Action::ReleaseLock],
            ),
            (
                "paused and stopped: nothing",
                obs("n2", Some(paused1), stopped(replica_pg(900, None)), &[]),
                "postgres stopped",
                vec![],
            ),
            (
                "starting: wait",
                obs("n2", Some(lead1), starting, &[]),
                "postgres starting",
                vec![],
            ),
            (
                "no leader, the healthiest: race",
                obs("n2", Some(nobody), replica_pg(1000, None), &[]),
                "no leader",
                vec![Action::AcquireLock],
            ),
            (
                "no leader, a primary that may not race: demote",
                obs(
                    "n2",
                    Some(nobody),
                    primary_pg(),
                    preferred,
                ),
                "no leader",
                vec![Action::Demote { upstream: None }],
            ),
            (
                "no leader, the healthiest a primary whose renewal is long past: the lock read-only",
                Observation {
                    lock_age_secs: Some(25),
                    ..obs("n1", Some(nobody), primary_pg(), &[])
                },
                "no leader",
                vec![Action::Demote { upstream: None }, Action::AcquireLock],
            ),
            (
                "the holder, its renewal overdue: read-only first",
                Observation {
                    lock_age_secs: Some(25),
                    ..obs("n1", Some(lead1), primary_pg(), &[])
                },
                "this member leads",
                vec![Action::Demote { upstream: None }, Action::RenewLock],
            ),
            (
                "the holder's replica: promote",
                obs("n1", Some(lead1), replica_pg(1000, None), &[]),
                "this member leads",
                vec![Action::RenewLock, Action::Promote],
            ),
            (
                "a primary without the lock: demote",
                obs("n2", Some(lead1), primary_pg(), &[]),
                "another member leads",
                vec![Action::Demote {
                    upstream: Some("n1".into()),
                }],
            ),
            (
                "a streaming replica: nothing",
                obs("n2", Some(lead1), replica_pg(900, Some("n1")), &[]),
                "another member leads",
                vec![],
            ),
        ];
        let mut seen = std::collections::BTreeSet::new();
        for (case, o, rule, actions) in table {
            let d = decide(&o);
            assert_eq!(d.rule, rule, "{case}: {}", d.summary);
            assert_eq!(d.actions, actions, "{case}: {}", d.summary);
            seen.insert(rule);
        }
        for r in RULES {
            assert!(seen.contains(r.name), "rule {:?} has no row", r.name);
        }
        assert!(seen.contains("job in progress") && seen.contains("etcd unreachable"));
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
    fn no_leader_methods_build_a_member_while_nobody_leads() {
        let mut pg = replica_pg(0, None);
        pg.data = DataDir::Empty;
        pg.running = false;
        let nobody = cluster(None);
        assert!(nobody.initialize.as_deref().is_some_and(|i| !i.is_empty()));
        let mut o = obs("n2", Some(&nobody), pg.clone(), &[]);
        // without such a method: wait for a leader
        assert_eq!(decide(&o).actions, vec![]);
        o.clone_without_leader = true;
        assert_eq!(decide(&o).actions, vec![Action::CloneWithoutLeader]);
        // a bootstrap under way (empty initialize) or no cluster at all: not from a backup
        let mut racing = cluster(None);
        racing.initialize = Some(String::new());
        let mut o = obs("n2", Some(&racing), pg.clone(), &[]);
        o.clone_without_leader = true;
        assert_eq!(decide(&o).actions, vec![]);
        // a leader: cloned from it as usual (its methods, no_leader or not, in order)
        let led = cluster(Some("n1"));
        let mut o = obs("n2", Some(&led), pg.clone(), &[]);
        o.clone_without_leader = true;
        assert_eq!(
            decide(&o).actions,
            vec![Action::Clone { from: "n1".into() }]
        );
        // paused: nothing is built
        let mut paused = cluster(None);
        paused.config = Some(Versioned {
            value: DynamicConfig::parse(r#"{"pause":true}"#).unwrap(),
            mod_revision: 3,
        });
        let mut o = obs("n2", Some(&paused), pg, &[]);
        o.clone_without_leader = true;
        assert_eq!(decide(&o).actions, vec![]);
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
    fn a_reinitialize_from_the_leader_ignores_clonefrom() {
        let mut c = cluster(Some("n1"));
        c.members[2]
            .data
            .tags
            .insert("clonefrom".into(), serde_json::Value::Bool(true));
        let mut pg = replica_pg(0, None);
        pg.data = DataDir::Empty;
        pg.running = false;
        let mut o = obs("n2", Some(&c), pg, &[]);
        o.clone_from_leader = true;
        assert_eq!(
            decide(&o).actions,
            vec![Action::Clone { from: "n1".into() }]
        );
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

    /// A running server that answers neither queries nor pg_controldata, its identifier never
    /// seen by this agent: not taken for another cluster's data (the simulation's seed 23,
    /// where the agent exited).
    #[test]
    fn an_unknown_system_identifier_is_no_mismatch() {
        let c = cluster(Some("n1"));
        let mut pg = replica_pg(1000, Some("n1"));
        pg.data = DataDir::Present {
            sysid: String::new(),
            was_primary: false,
        };
        let d = decide(&obs("n2", Some(&c), pg, &[]));
        assert!(
            !d.actions.iter().any(|a| matches!(a, Action::Exit { .. })),
            "{d:?}"
        );
        assert_ne!(d.rule, "another cluster's data");
    }

    /// A member on a newer timeline holds commits at positions an older timeline also
    /// reached: it is ahead whatever the positions say (the simulation's quorum seed 8: a
    /// replica left on timeline 2 promoted past the leader of timeline 4 at the same LSN).
    #[test]
    fn a_peer_on_a_newer_timeline_is_ahead_at_any_position() {
        let c = cluster(None);
        let mut pg = replica_pg(2000, None);
        pg.timeline = Some(2);
        let newer = [PeerReport {
            timeline: Some(4),
            ..peer("n3", 1500, false)
        }];
        let d = decide(&obs("n2", Some(&c), pg.clone(), &newer));
        assert_eq!(d.actions, vec![]);
        assert!(d.summary.contains("newer timeline 4"), "{}", d.summary);
        // an older timeline further on is behind
        let older = [PeerReport {
            timeline: Some(1),
            ..peer("n3", 9000, false)
        }];
        let d = decide(&obs("n2", Some(&c), pg, &older));
        assert_eq!(d.actions, vec![Action::AcquireLock], "{}", d.summary);
        // quorum commit: a voter on a newer timeline at the same position is no vote
        let voter = (Some(4), 2000);
        let me = (Some(2), 2000);
        assert!(wal_order(voter, me).is_gt());
        assert!(wal_order((None, 2000), me).is_eq());
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
    fn a_member_that_gave_the_lock_up_leaves_the_next_race_to_the_others_for_one_ttl() {
        // issue 25: the old leader, its server restarted as a replica and the furthest ahead,
        // took the lock straight back from the replica it had named
        let c = cluster(None);
        let behind = [peer("n2", 900, false)];
        let mut o = obs("n1", Some(&c), replica_pg(1000, None), &behind);
        o.gave_up_lock_secs = Some(0);
        let d = decide(&o);
        assert_eq!(d.actions, vec![]);
        assert!(
            d.summary.contains("leaving the race to the others"),
            "{}",
            d.summary
        );
        o.gave_up_lock_secs = Some(o.timing.ttl - 1);
        assert_eq!(decide(&o).actions, vec![]);
        // nobody took over within a ttl: it races again
        o.gave_up_lock_secs = Some(o.timing.ttl);
        assert_eq!(decide(&o).actions, vec![Action::AcquireLock]);
        // the replica it named does not wait for it, even when it is further ahead (its
        // unreplicated WAL is what primary_start_timeout gives up) ...
        let mut ahead = peer("n1", 1200, false);
        ahead.standing_down = true;
        let named = obs(
            "n2",
            Some(&c),
            replica_pg(1000, None),
            std::slice::from_ref(&ahead),
        );
        assert_eq!(decide(&named).actions, vec![Action::AcquireLock]);
        // ... but a server taking writes still keeps everyone out
        ahead.is_primary = true;
        let named = obs(
            "n2",
            Some(&c),
            replica_pg(1000, None),
            std::slice::from_ref(&ahead),
        );
        assert_eq!(decide(&named).actions, vec![]);
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
        let mut c = cluster(Some("n1"));
        let d = decide(&obs("n2", Some(&c), primary_pg(), &[]));
        assert_eq!(
            d.actions,
            vec![Action::Demote {
                upstream: Some("n1".into())
            }]
        );
        // a new leader is followed once its member key shows it running as primary
        let elsewhere = replica_pg(1000, Some("127.0.0.1:9999"));
        let d = decide(&obs("n2", Some(&c), elsewhere.clone(), &[]));
        assert_eq!(d.actions, vec![]);
        assert!(
            d.summary.contains("waiting for the new leader n1"),
            "{}",
            d.summary
        );
        c.members[0].data.role = "primary".into();
        let d = decide(&obs("n2", Some(&c), elsewhere, &[]));
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
    fn failsafe_keeps_a_confirmed_primary_and_confirmers_do_not_race() {
        // every member confirmed: the primary stays writable past its lease
        let mut o = obs("n1", None, primary_pg(), &[]);
        o.dcs_unreachable_secs = 60;
        o.lock_age_secs = Some(60);
        o.failsafe = Some(Ok(()));
        assert_eq!(decide(&o).actions, vec![]);
        // one member did not answer: read-only at once
        o.failsafe = Some(Err("n3 did not answer".into()));
        o.dcs_unreachable_secs = 1;
        o.lock_age_secs = Some(1);
        let d = decide(&o);
        assert_eq!(d.actions, vec![Action::Demote { upstream: None }]);
        assert!(d.summary.contains("n3 did not answer"), "{}", d.summary);

        // a replica that confirmed n1 lately does not race when etcd shows no leader
        let mut c = cluster(None);
        c.config = Some(Versioned {
            value: DynamicConfig::parse(r#"{"failsafe_mode":true}"#).unwrap(),
            mod_revision: 1,
        });
        let mut o = obs(
            "n2",
            Some(&c),
            replica_pg(1000, Some("127.0.0.1:5432")),
            &[],
        );
        assert_eq!(decide(&o).actions, vec![Action::AcquireLock]);
        o.failsafe_leader = Some("n1".into());
        let d = decide(&o);
        assert_eq!(d.actions, vec![]);
        assert!(d.summary.contains("failsafe"), "{}", d.summary);
        // nor does a member the failsafe key does not list
        o.failsafe_leader = None;
        let listed: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(r#"{"n1":"http://a/patroni","n3":"http://c/patroni"}"#).unwrap();
        c.failsafe = Some(listed);
        let o = obs(
            "n2",
            Some(&c),
            replica_pg(1000, Some("127.0.0.1:5432")),
            &[],
        );
        assert_eq!(decide(&o).actions, vec![]);
        // and a listed member does not defer to one the key leaves out, however far ahead
        let ahead = [PeerReport {
            failover_priority: 9,
            ..peer("n2", 5000, false)
        }];
        let o = obs(
            "n3",
            Some(&c),
            replica_pg(1000, Some("127.0.0.1:5432")),
            &ahead,
        );
        let d = decide(&o);
        assert_eq!(d.actions, vec![Action::AcquireLock], "{}", d.summary);
    }

    #[test]
    fn a_required_watchdog_that_fails_ends_leadership() {
        let c = cluster(Some("n1"));
        let mut o = obs("n1", Some(&c), primary_pg(), &[]);
        o.watchdog_refusal = Some("cannot open /dev/watchdog".into());
        assert_eq!(decide(&o).actions, vec![Action::Demote { upstream: None }]);
        let mut o = obs("n1", Some(&c), replica_pg(1000, None), &[]);
        o.watchdog_refusal = Some("cannot open /dev/watchdog".into());
        assert_eq!(decide(&o).actions, vec![Action::ReleaseLock]);
        // and such a node never races
        let free = cluster(None);
        let mut o = obs(
            "n2",
            Some(&free),
            replica_pg(1000, Some("127.0.0.1:5432")),
            &[],
        );
        assert_eq!(decide(&o).actions, vec![Action::AcquireLock]);
        o.watchdog_refusal = Some("cannot open /dev/watchdog".into());
        let d = decide(&o);
        assert_eq!(d.actions, vec![]);
        assert!(d.summary.contains("watchdog"), "{}", d.summary);
    }

    #[test]
    fn a_peer_still_running_as_primary_blocks_the_race_whatever_its_tags() {
        let mut c = cluster(None);
        c.config = Some(Versioned {
            value: DynamicConfig::parse(r#"{"synchronous_mode":true}"#).unwrap(),
            mod_revision: 1,
        });
        c.sync = Some(Versioned {
            value: shared::dcs::SyncState {
                leader: Some("n3".into()),
                quorum: 0,
                sync_standby: vec!["n2".into()],
            },
            mod_revision: 2,
        });
        let mut stale = peer("n1", 900, true);
        stale.no_failover = true;
        let peers = [stale];
        let o = obs("n2", Some(&c), replica_pg(1000, None), &peers);
        assert!(race_refusal(&o, &c).is_some_and(|w| w.contains("n1 is still running as primary")));
    }

    #[test]
    fn a_running_job_is_never_doubled_even_without_etcd() {
        let mut o = obs("n1", None, primary_pg(), &[]);
        o.job = Some(Job::Demote);
        assert_eq!(decide(&o).actions, vec![]);
    }

    #[test]
    fn a_running_job_never_keeps_a_primary_that_cannot_renew_from_demoting() {
        // etcd lost during a slow restart of the primary: once the lease runs short, the job
        // gives way to a demotion
        let mut o = obs("n1", None, primary_pg(), &[]);
        o.job = Some(Job::Restart);
        o.lock_age_secs = Some(5);
        o.dcs_unreachable_secs = 2;
        assert_eq!(decide(&o).actions, vec![]);
        o.dcs_unreachable_secs = o.timing.retry_timeout;
        let d = decide(&o);
        assert!(matches!(d.actions[0], Action::CancelJob { .. }), "{d:?}");
        assert_eq!(d.actions[1], Action::Demote { upstream: None });
        o.dcs_unreachable_secs = 0;
        o.lock_age_secs = Some(o.timing.ttl - o.timing.retry_timeout);
        assert!(matches!(decide(&o).actions[0], Action::CancelJob { .. }));
        // another member holds the lock while the primary's job runs
        let c = cluster(Some("n2"));
        let mut o = obs("n1", Some(&c), primary_pg(), &[]);
        o.job = Some(Job::Start);
        assert!(matches!(decide(&o).actions[0], Action::CancelJob { .. }));
        // a switchover, a demotion or a bootstrap is left to finish; so is anything on a replica
        o.job = Some(Job::Switchover);
        assert_eq!(decide(&o).actions, vec![]);
        o.job = Some(Job::Demote);
        assert_eq!(decide(&o).actions, vec![]);
        let mut o = obs("n1", None, primary_pg(), &[]);
        o.job = Some(Job::Bootstrap);
        o.dcs_unreachable_secs = 60;
        assert_eq!(decide(&o).actions, vec![]);
        // a switchover whose leader lost etcd past the demotion point gives way
        o.job = Some(Job::Switchover);
        assert!(matches!(decide(&o).actions[0], Action::CancelJob { .. }));
        let mut o = obs("n1", Some(&c), replica_pg(100, None), &[]);
        o.job = Some(Job::Restart);
        assert_eq!(decide(&o).actions, vec![]);
    }

    #[test]
    fn a_frozen_primary_is_killed_and_the_lock_given_up_when_a_replica_can_take_over() {
        let mut c = cluster(Some("n1"));
        for m in &mut c.members {
            m.data.xlog_location = Some(1000);
        }
        let frozen = |secs| PgView {
            ready: false,
            unresponsive_secs: Some(secs),
            ..primary_pg()
        };
        let o = obs("n1", Some(&c), frozen(1), &[]);
        assert_eq!(decide(&o).actions, vec![Action::RenewLock]);
        let o = obs("n1", Some(&c), frozen(10), &[]);
        let d = decide(&o);
        assert!(matches!(d.actions[0], Action::KillPostgres { .. }), "{d:?}");
        assert_eq!(d.actions[1], Action::ReleaseLock);
        // nobody could take over: keep the lock, a kill would gain nothing
        let mut alone = c.clone();
        alone.members.retain(|m| m.name == "n1");
        let o = obs("n1", Some(&alone), frozen(10), &[]);
        assert_eq!(decide(&o).actions, vec![Action::RenewLock]);
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

    /// n1 led timeline 1 and wrote up to 5000; n2 promoted at 3000 and leads timeline 2.
    fn after_failover() -> Cluster {
        let mut c = cluster(Some("n2"));
        c.members[1].data.role = "primary".into();
        c.members[1].data.timeline = Some(2);
        c.history = vec![shared::dcs::HistoryEntry {
            timeline: 1,
            lsn: 3000,
            reason: "no recovery target specified".into(),
            timestamp: None,
            new_leader: Some("n2".into()),
        }];
        c
    }

    fn stopped_old_primary(end: Option<u64>) -> PgView {
        let mut pg = primary_pg();
        pg.running = false;
        pg.ready = false;
        pg.wal_position = None;
        pg.wal_end = end.map(|lsn| WalEnd { timeline: 1, lsn });
        pg
    }

    #[test]
    fn divergence_is_read_from_the_history_key() {
        let c = after_failover();
        let at = |tl, lsn| divergence(&c, Some(WalEnd { timeline: tl, lsn }));
        assert_eq!(at(1, 3000), Divergence::No);
        assert_eq!(at(1, 2000), Divergence::No);
        assert_eq!(
            at(1, 3001),
            Divergence::Diverged {
                timeline: 1,
                at: 3000
            }
        );
        assert_eq!(at(2, 9000), Divergence::No);
        assert_eq!(divergence(&c, None), Divergence::Unknown);
        // a timeline newer than the leader's, or no history at all
        assert_eq!(at(3, 1), Divergence::Unknown);
        let mut fresh = c.clone();
        fresh.history.clear();
        assert_eq!(
            divergence(
                &fresh,
                Some(WalEnd {
                    timeline: 1,
                    lsn: 1
                })
            ),
            Divergence::Unknown
        );
        // timeline 2 forked off timeline 1 at 3000 for a short-lived primary; the leader went
        // from 1 to 3: a member on 2 diverged
        let mut c4 = c.clone();
        c4.members[1].data.timeline = Some(3);
        assert_eq!(
            divergence(
                &c4,
                Some(WalEnd {
                    timeline: 2,
                    lsn: 3100
                })
            ),
            Divergence::Diverged {
                timeline: 2,
                at: 3000
            }
        );
        // ... unless pg_rewind found nothing to undo
        let mut pg = replica_pg(3100, None);
        pg.streaming = false;
        pg.wal_end = Some(WalEnd {
            timeline: 2,
            lsn: 3100,
        });
        c4.members[1].data.role = "primary".into();
        let d = decide(&obs("n3", Some(&c4), pg.clone(), &[]));
        assert_eq!(d.actions, vec![Action::Rewind { from: "n2".into() }]);
        pg.rewind_not_needed = true;
        let d = decide(&obs("n3", Some(&c4), pg, &[]));
        assert!(!d.actions.iter().any(|a| matches!(a, Action::Rewind { .. })));
    }

    #[test]
    fn an_old_primary_rejoins_directly_or_after_pg_rewind() {
        let c = after_failover();
        // its shutdown checkpoint reached the new leader: follow as it is
        let d = decide(&obs("n1", Some(&c), stopped_old_primary(Some(2990)), &[]));
        assert_eq!(
            d.actions,
            vec![Action::Start {
                as_primary: false,
                upstream: Some("n2".into())
            }]
        );
        // it wrote past the fork point: rewind first
        let d = decide(&obs("n1", Some(&c), stopped_old_primary(Some(5000)), &[]));
        assert_eq!(d.actions, vec![Action::Rewind { from: "n2".into() }]);
        // it crashed (end unknown): pg_rewind decides
        let d = decide(&obs("n1", Some(&c), stopped_old_primary(None), &[]));
        assert_eq!(d.actions, vec![Action::Rewind { from: "n2".into() }]);
        // ...but not before the new leader runs as primary
        let mut promoting = c.clone();
        promoting.members[1].data.role = "replica".into();
        let d = decide(&obs("n1", Some(&promoting), stopped_old_primary(None), &[]));
        assert_eq!(d.actions, vec![]);
        assert!(
            d.summary.contains("waiting for the new leader"),
            "{}",
            d.summary
        );
    }

    #[test]
    fn without_pg_rewind_diverged_data_is_removed_only_when_allowed() {
        let c = after_failover();
        let mut o = obs("n1", Some(&c), stopped_old_primary(Some(5000)), &[]);
        o.rewind.possible = false;
        let d = decide(&o);
        assert_eq!(d.actions, vec![]);
        assert!(
            d.summary
                .contains("remove_data_directory_on_diverged_timelines"),
            "{}",
            d.summary
        );
        o.rewind.remove_on_diverged = true;
        let d = decide(&o);
        assert!(matches!(d.actions.as_slice(), [Action::WipeData { .. }]));
        // a crashed primary without pg_rewind starts as a replica: PostgreSQL checks the history
        let mut o = obs("n1", Some(&c), stopped_old_primary(None), &[]);
        o.rewind.possible = false;
        assert!(matches!(
            decide(&o).actions.as_slice(),
            [Action::Start {
                as_primary: false,
                ..
            }]
        ));
    }

    #[test]
    fn a_data_directory_whose_rewind_failed_is_never_started() {
        let c = after_failover();
        let mut pg = stopped_old_primary(Some(5000));
        pg.rewind_broken = true;
        let d = decide(&obs("n1", Some(&c), pg.clone(), &[]));
        assert_eq!(d.actions, vec![]);
        assert!(d.summary.contains("will not be started"), "{}", d.summary);
        // even holding the lock: it is given up, never started as primary
        let mut mine = c.clone();
        mine.leader.as_mut().unwrap().name = "n1".into();
        let d = decide(&obs("n1", Some(&mine), pg.clone(), &[]));
        assert_eq!(d.actions, vec![Action::ReleaseLock]);
        let mut o = obs("n1", Some(&c), pg, &[]);
        o.rewind.remove_on_failure = true;
        assert!(matches!(
            decide(&o).actions.as_slice(),
            [Action::WipeData { .. }]
        ));
    }

    #[test]
    fn a_running_replica_that_diverged_is_rewound_one_that_streams_is_left_alone() {
        let c = after_failover();
        let mut pg = replica_pg(5000, None);
        pg.streaming = false;
        let d = decide(&obs("n3", Some(&c), pg.clone(), &[]));
        assert_eq!(d.actions, vec![Action::Rewind { from: "n2".into() }]);
        pg.streaming = true;
        let d = decide(&obs("n3", Some(&c), pg, &[]));
        assert!(!d.actions.iter().any(|a| matches!(a, Action::Rewind { .. })));
        // behind the fork point: just follow
        let d = decide(&obs("n3", Some(&c), replica_pg(2000, None), &[]));
        assert_eq!(
            d.actions,
            vec![Action::Follow {
                upstream: Some("n2".into())
            }]
        );
    }

    #[test]
    fn a_primary_that_cannot_start_gives_the_lock_up_after_primary_start_timeout() {
        let mut c = cluster(Some("n1"));
        for m in c.members.iter_mut() {
            m.data.xlog_location = Some(1000);
        }
        let mut pg = primary_pg();
        pg.running = false;
        pg.ready = false;
        let mut o = obs("n1", Some(&c), pg, &[]);
        o.primary_down_secs = Some(299);
        assert!(matches!(
            decide(&o).actions.as_slice(),
            [
                Action::RenewLock,
                Action::Start {
                    as_primary: true,
                    ..
                }
            ]
        ));
        o.primary_down_secs = Some(300);
        let d = decide(&o);
        assert_eq!(d.actions, vec![Action::ReleaseLock]);
        assert!(d.stands_down);
        assert!(d.summary.contains("n2, n3"), "{}", d.summary);
        // nobody could take over: keep trying
        let mut lonely = c.clone();
        lonely.members.truncate(1);
        let mut o2 = obs("n1", Some(&lonely), o.pg.clone(), &[]);
        o2.primary_down_secs = Some(9999);
        assert!(matches!(
            decide(&o2).actions.as_slice(),
            [
                Action::RenewLock,
                Action::Start {
                    as_primary: true,
                    ..
                }
            ]
        ));
        // a primary stuck starting (crash recovery) gives up too
        let mut starting = o.clone();
        starting.pg.running = true;
        assert_eq!(decide(&starting).actions, vec![Action::ReleaseLock]);
    }

    #[test]
    fn failover_readiness_names_each_member_and_why() {
        let mut c = cluster(Some("n1"));
        c.status.optime = Some(50 << 20);
        c.members[1]
            .data
            .tags
            .insert("nofailover".into(), serde_json::Value::Bool(true));
        c.members[2].data.xlog_location = Some(1 << 20);
        let why = failover_blocked(&c).expect("blocked");
        assert!(why.contains("n2: tagged nofailover"), "{why}");
        assert!(why.contains("n3: lagging"), "{why}");
        assert!(why.contains("maximum_lag_on_failover"), "{why}");
        c.members[2].data.xlog_location = Some(50 << 20);
        assert_eq!(failover_blocked(&c), None);
        c.members[2].data.state = "stopped".into();
        assert!(
            failover_blocked(&c)
                .unwrap()
                .contains("n3: PostgreSQL is stopped")
        );
    }

    fn with_failover(
        mut c: Cluster,
        leader: Option<&str>,
        member: Option<&str>,
        at: Option<&str>,
    ) -> Cluster {
        for m in c.members.iter_mut() {
            m.data.xlog_location = Some(1000);
        }
        c.failover = Some(Versioned {
            value: shared::dcs::Failover {
                leader: leader.map(str::to_string),
                member: member.map(str::to_string),
                scheduled_at: at.map(str::to_string),
            },
            mod_revision: 7,
        });
        c
    }

    #[test]
    fn a_leader_standing_aside_does_not_win_a_priority_tie_it_left() {
        // found by the simulation: the old leader (priority 3) hands over to "anyone" and stands
        // aside because n2 is as far ahead; n2 must not defer to its higher priority
        let c = with_failover(cluster(None), Some("n1"), None, None);
        let mut high = peer("n1", 1000, false);
        high.failover_priority = 3;
        let peers = [high, peer("n3", 900, false)];
        let mut o = obs("n2", Some(&c), replica_pg(1000, None), &peers);
        o.seen_leader = true;
        assert_eq!(decide(&o).actions, vec![Action::AcquireLock]);
        // without the request the higher priority wins the tie as usual
        let c = cluster(None);
        let mut o = obs("n2", Some(&c), replica_pg(1000, None), &peers);
        o.seen_leader = true;
        assert_eq!(decide(&o).actions, vec![]);
    }

    #[test]
    fn the_holder_hands_over_or_clears_the_request_with_the_reason() {
        let base = cluster(Some("n1"));
        let go = |c: &Cluster| decide(&obs("n1", Some(c), primary_pg(), &[]));
        // named, healthy candidate: hand over (no renewal after it)
        let d = go(&with_failover(base.clone(), Some("n1"), Some("n2"), None));
        assert!(
            d.actions.contains(&Action::Switchover {
                candidate: Some("n2".into())
            }),
            "{d:?}"
        );
        // any candidate
        let d = go(&with_failover(base.clone(), Some("n1"), None, None));
        assert!(
            d.actions.contains(&Action::Switchover { candidate: None }),
            "{d:?}"
        );
        // an unknown candidate: cleared with the reason; a request from another leader is over
        let d = go(&with_failover(base.clone(), Some("n1"), Some("nx"), None));
        assert!(
            matches!(
                d.actions.last(),
                Some(Action::ClearFailover { reason: Some(_) })
            ),
            "{d:?}"
        );
        let d = go(&with_failover(base.clone(), Some("n2"), None, None));
        assert_eq!(
            d.actions.last(),
            Some(&Action::ClearFailover { reason: None })
        );
        // scheduled later: wait and wake at the time; long overdue: cleared
        let d = go(&with_failover(
            base.clone(),
            Some("n1"),
            Some("n2"),
            Some("2026-11-23T12:00:30+00:00"),
        ));
        assert_eq!(d.wake_in_ms, Some(30_000), "{d:?}");
        assert!(
            !d.actions
                .iter()
                .any(|a| matches!(a, Action::Switchover { .. }))
        );
        let d = go(&with_failover(
            base.clone(),
            Some("n1"),
            Some("n2"),
            Some("2026-11-23T11:00:00+00:00"),
        ));
        assert!(
            matches!(d.actions.last(), Some(Action::ClearFailover { reason: Some(r) }) if r.contains("overdue")),
            "{d:?}"
        );
        // the new leader clears a request naming it
        let d = decide(&obs(
            "n2",
            Some(&with_failover(
                cluster(Some("n2")),
                Some("n1"),
                Some("n2"),
                None,
            )),
            primary_pg(),
            &[],
        ));
        assert!(
            d.actions.contains(&Action::ClearFailover { reason: None }),
            "{d:?}"
        );
        // the lock came back after a hand-over for this very request: cleared, not repeated
        let c = with_failover(base.clone(), Some("n1"), None, None);
        let mut o = obs("n1", Some(&c), primary_pg(), &[]);
        o.handed_over = Some(7);
        assert!(
            matches!(decide(&o).actions.last(), Some(Action::ClearFailover { reason: Some(r) }) if r.contains("leads again")),
            "{:?}",
            decide(&o)
        );
        // while a switchover runs, the old holder does not renew (that could take it back)
        let mut o = obs("n1", Some(&base), primary_pg(), &[]);
        o.job = Some(Job::Switchover);
        assert!(decide(&o).actions.is_empty());
    }

    #[test]
    fn without_a_leader_the_requested_candidate_takes_the_lock_and_others_wait() {
        let c = with_failover(cluster(None), Some("n1"), Some("n3"), None);
        let peers = [peer("n3", 990, false), peer("n1", 0, false)];
        // n3 (behind n2) is the candidate: it takes the lock; n2 leaves it to n3
        let d = decide(&obs(
            "n3",
            Some(&c),
            replica_pg(990, None),
            &[peer("n2", 1000, false)],
        ));
        assert!(d.actions.contains(&Action::AcquireLock), "{d:?}");
        let d = decide(&obs("n2", Some(&c), replica_pg(1000, None), &peers));
        assert!(!d.actions.contains(&Action::AcquireLock), "{d:?}");
        // the candidate unreachable: the others race as usual
        let d = decide(&obs("n2", Some(&c), replica_pg(1000, None), &[]));
        assert!(d.actions.contains(&Action::AcquireLock), "{d:?}");
        // paused: only the candidate takes the lock
        let mut p = c.clone();
        p.config = Some(Versioned {
            value: DynamicConfig {
                raw: serde_json::json!({"pause": true})
                    .as_object()
                    .cloned()
                    .unwrap(),
            },
            mod_revision: 1,
        });
        let d = decide(&obs("n3", Some(&p), replica_pg(990, None), &[]));
        assert!(d.actions.contains(&Action::AcquireLock), "{d:?}");
        let d = decide(&obs("n2", Some(&p), replica_pg(1000, None), &[]));
        assert!(!d.actions.contains(&Action::AcquireLock), "{d:?}");
    }

    #[test]
    fn changed_parameters_are_applied_by_reload() {
        let c = cluster(Some("n1"));
        let mut pg = primary_pg();
        pg.config_outdated = true;
        assert!(
            decide(&obs("n1", Some(&c), pg, &[]))
                .actions
                .contains(&Action::ApplyConfig)
        );
        let mut pg = replica_pg(1000, Some("127.0.0.1:5432"));
        pg.config_outdated = true;
        assert!(
            decide(&obs("n2", Some(&c), pg, &[]))
                .actions
                .contains(&Action::ApplyConfig)
        );
    }
}
