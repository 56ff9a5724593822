//! The agent's loop: observe (etcd, PostgreSQL, peers) → [`ha::decide`] → execute the actions →
//! publish the member key and the in-memory [`Snapshot`] the REST API answers from. It wakes on
//! the `loop_wait` timer, on etcd watch events (leader, config, status, failover, new members),
//! on postmaster exit and when a background job finishes.

use crate::ha::{
    self, Action, DataDir, Decision, Job, Observation, PeerReport, PgView, RewindPolicy, WalEnd,
};
mod commands;
mod failsafe;
mod slots;
pub use failsafe::FailsafeHeard;

use crate::handover;
use crate::jobs::{bootstrap, clone_replica, start_postgres};
use crate::postgres::{Postgres, RewindOutcome, ServerStatus, Upstream};
use crate::rest_write::{Envelope, Reply};
pub use crate::snapshot::Snapshot;
use anyhow::{Result, anyhow};
use serde_json::{Map, Value};

/// How long a changed `synchronous_standby_names` is in force before standbys are confirmed
/// against it (every walsender and the checkpointer take a reload in at their own pace).
const SYNC_SETTLE: Duration = Duration::from_secs(1);

/// How long the same synchronous setting is not written again while the server does not
/// report it.
const SYNC_REWRITE_PAUSE: Duration = Duration::from_secs(30);
use shared::api::{MemberClient, PeerStatus};
use shared::config::Config;
use shared::dcs::{
    Cluster, Dcs, DynamicConfig, HistoryEntry, Kv, MemberData, Status, WatchEvent, keys,
};
use shared::types::{PgState, Role, slot_name};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};
use tracing::{error, info, warn};

/// How often the REST snapshot's PostgreSQL figures are refreshed between cycles.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// How long a failed job waits before it is tried again.
const JOB_RETRY_PAUSE: Duration = Duration::from_secs(5);

/// A background operation and its outcome channel.
struct RunningJob {
    kind: Job,
    handle: tokio::task::JoinHandle<Result<()>>,
    /// An operator waiting for this job's outcome (`POST /restart`).
    reply: Option<tokio::sync::oneshot::Sender<Reply>>,
}

/// The node agent.
pub struct Agent<K: Kv> {
    cfg: Arc<Config>,
    dcs: Arc<Dcs<K>>,
    pg: Arc<Postgres>,
    snapshot: watch::Sender<Arc<Snapshot>>,
    /// Wakes the loop early.
    pub wake: Arc<Notify>,
    peers: MemberClient,
    job: Option<RunningJob>,
    lock_renewed: Option<Instant>,
    last_role: Role,
    was_running: bool,
    last_status_json: Option<String>,
    slot_missing_since: HashMap<String, Instant>,
    member_slots: HashSet<String>,
    fatal: Option<String>,
    dcs_error_logged: bool,
    last_summary: String,
    seen_leader: bool,
    started: Instant,
    dcs_down_since: Option<Instant>,
    /// The last dynamic configuration read (used while etcd is unreachable).
    last_dynamic: DynamicConfig,
    /// Since when this node holds the lock without its PostgreSQL up (primary_start_timeout).
    primary_down_since: Option<Instant>,
    /// When this node last gave the lock up because its PostgreSQL could not serve as primary.
    gave_up_lock_at: Option<Instant>,
    /// pg_control of the data directory shows wal_log_hints or checksums (pg_rewind can work).
    rewind_capable: Option<bool>,
    /// The last "no member could take over" line logged, to log each change once.
    last_failover_blocked: Option<String>,
    failover_blocked_since: Option<Instant>,
    failover_blocked_logged: bool,
    failover_blocked_leaderless: bool,
    /// Where the local WAL ended at the last observation.
    last_wal_end: Option<WalEnd>,
    /// The last job that failed, and when: it is not retried before [`JOB_RETRY_PAUSE`].
    last_job_failure: Option<(Job, Instant)>,
    /// The leader (and its timeline) pg_rewind last found nothing to undo for.
    rewind_ok_for: Arc<std::sync::Mutex<Option<(String, u64)>>>,
    /// A reinitialize asked to clone from the leader with pg_basebackup; cleared when that
    /// clone starts.
    clone_from_leader: bool,
    /// The health of the etcd member this agent runs (`raft:`), for `/patroni` and `/metrics`.
    pub raft: Option<crate::raft::SharedHealth>,
    /// The last switchover this node handled as leader, and since when it waits for the
    /// successor to run as primary.
    handover: Option<(handover::Report, Instant)>,
    /// Local operations from the REST API.
    commands: tokio::sync::mpsc::Receiver<Envelope>,
    /// A restart scheduled through `POST /restart`, with the postmaster start time it was
    /// scheduled against (a restart in the meantime drops it).
    scheduled_restart: Option<(shared::ops::RestartRequest, String)>,
    callbacks: crate::callbacks::Callbacks,
    /// A callback for a finished job, fired once the cycle knows the role.
    pending_callback: Option<crate::callbacks::Event>,
    /// The REST server's certificate, reloaded from its files by a reload.
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
    /// `restapi.authentication`, for this agent's own calls to its peers; replaced by a reload.
    pub rest_auth: Arc<std::sync::RwLock<Option<shared::config::BasicAuth>>>,
    /// What the REST API's write endpoints check (allowlist, credentials); replaced by a
    /// reload.
    pub rest_access: Arc<std::sync::RwLock<Arc<crate::rest_access::Access>>>,
    /// The process that stops a primary PostgreSQL if this agent dies abruptly.
    fence: Option<crate::guard::FenceGuard>,
    /// systemd's notification socket and watchdog (inactive outside a `Type=notify` unit).
    systemd: crate::systemd::Notifier,
    /// Who last asked this node over `POST /failsafe` to confirm it as primary, and when.
    pub failsafe_heard: FailsafeHeard,
    /// What this agent decided and did, with times (`GET /journal`).
    pub journal: crate::journal::Journal,
    /// This primary runs on the members' confirmations while etcd is unreachable.
    failsafe_active: bool,
    /// The `failsafe` key this leader wrote during the current cycle: the cycle's cluster view
    /// was read before the write, and etcd may be gone before the next read.
    failsafe_written: Option<Map<String, Value>>,
    /// Members of `synchronous_standby_names` PostgreSQL reports synchronous: `None` when
    /// first seen so, then the primary position read at the next observation.
    sync_seen: HashMap<String, Option<u64>>,
    /// `synchronous_standby_names` as the server last reported it, and since when: standbys
    /// are confirmed against a setting only once it has been in force for a while (the
    /// server's processes take a reload in at their own pace).
    sync_in_force: Option<(String, Instant)>,
    /// The synchronous setting last written, when, and whether the server not taking it in
    /// was reported.
    sync_written: Option<(String, Instant, bool)>,
    watchdog: crate::watchdog::Watchdog,
    /// Why the required watchdog could not be kept alive at the last try.
    watchdog_failed: Option<String>,
    /// The dynamic configuration's keys last warned about.
    config_warned: Vec<String>,
    /// Why the `config` key in etcd is refused (logged once per reason).
    config_refused: Option<String>,
    /// The last member seen holding the leader key.
    last_leader: Option<String>,
    /// Since when the running PostgreSQL has answered no status query within its deadline, and
    /// how many queries in a row ran out of time.
    pg_unresponsive_since: Option<(Instant, u32)>,
    /// The ttl of the lease at the last successful lock renewal: a ttl raised since counts
    /// only from the next renewal.
    lock_renewed_ttl: u64,
    /// The start of the last successful lock renewal, kept through a switchover (which stops
    /// claiming the lock but still holds its lease): what the fencing guard's deadline counts
    /// from.
    lease_kept: Option<Instant>,
    /// The last cluster view read shows another member holding the lock.
    other_leads: bool,
    /// When the last failsafe round that every member confirmed began.
    failsafe_confirmed: Option<Instant>,
    /// Role passwords being set after a reload changed them.
    password_task: Option<tokio::task::JoinHandle<()>>,
    /// Permanent-slot work running beside the loop; on a replica its result is the logical
    /// slots' state files read from the leader (`slot_copy_from`), to install with a restart.
    slot_work: Option<tokio::task::JoinHandle<Vec<slots::SlotState>>>,
    slot_copy_from: Option<Upstream>,
}

impl<K: Kv> Agent<K> {
    pub fn new(
        cfg: Arc<Config>,
        dcs: Arc<Dcs<K>>,
        snapshot: watch::Sender<Arc<Snapshot>>,
        commands: tokio::sync::mpsc::Receiver<Envelope>,
        peers: MemberClient,
    ) -> Self {
        let pg = Arc::new(Postgres::new(cfg.clone()));
        // a restarted agent goes on with the synchronous setting the server runs with, so that
        // no rewrite of the parameters drops it before synchronous mode looked at it again
        pg.adopt_sync_setting();
        // until etcd is read: the copy kept beside the data, else bootstrap.dcs
        let last_dynamic = pg
            .cached_dynamic_config()
            .and_then(|text| DynamicConfig::parse(&text))
            .filter(|d| d.refusal().is_none())
            .unwrap_or_else(|| DynamicConfig {
                raw: cfg.bootstrap.dcs.clone(),
            });
        Agent {
            dcs,
            pg,
            snapshot,
            wake: Arc::new(Notify::new()),
            peers,
            job: None,
            lock_renewed: None,
            last_role: Role::Uninitialized,
            was_running: false,
            last_status_json: None,
            slot_missing_since: HashMap::new(),
            member_slots: HashSet::new(),
            fatal: None,
            dcs_error_logged: false,
            last_summary: String::new(),
            seen_leader: false,
            started: Instant::now(),
            dcs_down_since: None,
            last_dynamic,
            primary_down_since: None,
            gave_up_lock_at: None,
            rewind_capable: None,
            last_failover_blocked: None,
            failover_blocked_since: None,
            failover_blocked_logged: false,
            failover_blocked_leaderless: false,
            last_job_failure: None,
            last_wal_end: None,
            rewind_ok_for: Arc::new(std::sync::Mutex::new(None)),
            clone_from_leader: false,
            raft: None,
            handover: None,
            commands,
            scheduled_restart: None,
            callbacks: Default::default(),
            pending_callback: None,
            tls: None,
            rest_auth: Arc::new(std::sync::RwLock::new(cfg.restapi.authentication.clone())),
            rest_access: Default::default(),
            fence: None,
            systemd: crate::systemd::Notifier::default(),
            failsafe_heard: Default::default(),
            journal: Default::default(),
            failsafe_active: false,
            failsafe_written: None,
            sync_seen: HashMap::new(),
            sync_in_force: None,
            sync_written: None,
            watchdog: crate::watchdog::Watchdog::new(cfg.watchdog.clone()),
            watchdog_failed: None,
            config_warned: Vec::new(),
            config_refused: None,
            last_leader: None,
            failsafe_confirmed: None,
            password_task: None,
            slot_work: None,
            slot_copy_from: None,
            pg_unresponsive_since: None,
            lock_renewed_ttl: u64::MAX,
            lease_kept: None,
            other_leads: false,
            cfg,
        }
    }

    /// The REST server's TLS configuration, so that a reload picks up a renewed certificate.
    pub fn set_tls(&mut self, tls: axum_server::tls_rustls::RustlsConfig) {
        self.tls = Some(tls);
    }

    /// The guard that fences a primary PostgreSQL when this agent dies abruptly.
    pub fn set_fence_guard(&mut self, guard: crate::guard::FenceGuard) {
        self.fence = Some(guard);
    }

    /// Reports readiness, status and keepalives to systemd.
    pub fn set_systemd(&mut self, notifier: crate::systemd::Notifier) {
        self.systemd = notifier;
    }

    /// Arms the fencing guard (PostgreSQL runs or is about to run as an unpaused primary) or
    /// disarms it.
    fn set_fencing(&mut self, armed: bool) {
        let lease = self.dcs.lease();
        if let Some(g) = self.fence.as_mut() {
            g.check();
            g.set(armed, lease);
        }
    }

    /// What the guard would do if the agent died now.
    fn fencing(&self) -> crate::guard::Fencing {
        self.fence
            .as_ref()
            .map_or(crate::guard::Fencing::Unavailable, |g| g.state())
    }

    /// Runs until `shutdown` resolves or a fatal condition; returns the reason for a fatal exit.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
        self.spawn_watch();
        self.spawn_sampler();
        let exited = self.pg.exited.clone();
        tokio::pin!(shutdown);
        // systemd hears from the loop itself: keepalives stop when a cycle hangs
        let keepalive_every = self
            .systemd
            .keepalive_every
            .unwrap_or(Duration::from_secs(3600));
        let mut ready = false;
        let mut told = String::new();
        'cycles: loop {
            let wait = self.cycle().await;
            if let Some(reason) = self.fatal.take() {
                self.systemd.stopping();
                self.stop_everything().await;
                if let Some(g) = self.fence.as_mut() {
                    g.release();
                }
                return Err(anyhow!(reason));
            }
            let decision = self.snapshot.borrow().decision.clone();
            if !ready {
                // the REST API listened before the loop started
                self.systemd.ready(&decision);
                ready = true;
                told = decision;
            } else if decision != told {
                self.systemd.status(&decision);
                told = decision;
            }
            self.systemd.keepalive();
            let sleep = tokio::time::sleep(wait);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    _ = &mut shutdown => break 'cycles,
                    _ = &mut sleep => break,
                    _ = self.wake.notified() => break,
                    _ = exited.notified() => { info!("postmaster exited: running a cycle now"); break },
                    Some(envelope) = self.commands.recv() => { self.on_command(envelope).await; break },
                    _ = tokio::time::sleep(keepalive_every) => self.systemd.keepalive(),
                }
            }
        }
        self.systemd.stopping();
        self.stop_everything().await;
        if let Some(g) = self.fence.as_mut() {
            g.release();
        }
        Ok(())
    }

    /// Keeps the REST snapshot's view of PostgreSQL (WAL positions, lag, replication, timeline,
    /// pending restart) at most [`SAMPLE_EVERY`] old between HA cycles, which may be `loop_wait`
    /// apart. Roles and states still change only with a cycle's decision; a failed query leaves
    /// the snapshot to the next cycle.
    fn spawn_sampler(&self) {
        let pg = self.pg.clone();
        let snapshot = self.snapshot.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(SAMPLE_EVERY).await;
                if snapshot.is_closed() {
                    return;
                }
                // only refresh a server the last cycle saw running and queryable
                if snapshot.borrow().server.is_none() {
                    continue;
                }
                let Ok(now) = pg.status().await else { continue };
                snapshot.send_if_modified(|s| match &s.server {
                    // a role change (or a stop) is the cycle's to report
                    Some(cur) if cur.in_recovery == now.in_recovery => {
                        Arc::make_mut(s).server = Some(now);
                        true
                    }
                    _ => false,
                });
            }
        });
    }

    /// Watches the cluster prefix and wakes the loop on changes that matter.
    fn spawn_watch(&self) {
        let dcs = self.dcs.clone();
        let wake = self.wake.clone();
        let prefix = dcs.prefix().to_string();
        tokio::spawn(async move {
            loop {
                let rev = match dcs.load().await {
                    Ok(c) => c.revision + 1,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                let mut rx = match dcs.watch(rev).await {
                    Ok(rx) => rx,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                while let Some(ev) = rx.recv().await {
                    let wakes = match &ev {
                        WatchEvent::Put(kv) => {
                            let rel = kv.key.strip_prefix(&prefix).unwrap_or("");
                            match rel {
                                keys::LEADER
                                | keys::CONFIG
                                | keys::STATUS
                                | keys::FAILOVER
                                | keys::HISTORY
                                | keys::INITIALIZE => true,
                                _ => {
                                    rel.starts_with(keys::MEMBERS)
                                        && kv.create_revision == kv.mod_revision
                                }
                            }
                        }
                        WatchEvent::Delete { key } => {
                            let rel = key.strip_prefix(&prefix).unwrap_or("");
                            rel == keys::LEADER
                                || rel == keys::CONFIG
                                || rel.starts_with(keys::MEMBERS)
                        }
                        WatchEvent::Reset => true,
                    };
                    if wakes {
                        wake.notify_one();
                    }
                }
            }
        });
    }

    /// One HA cycle; returns how long to sleep before the next.
    async fn cycle(&mut self) -> Duration {
        self.reap_job().await;
        if self.fatal.is_some() {
            return Duration::ZERO;
        }
        // While this node holds the lock, a read of etcd may not outlast the moment it must
        // demote (retry_timeout before its lease can end): an unreachable etcd is noticed in
        // time whatever the client's own timeout.
        let read_started = Instant::now();
        let read = match self.demote_deadline() {
            Some(deadline) => {
                let left = deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(200));
                tokio::time::timeout(left, self.dcs.load())
                    .await
                    .unwrap_or_else(|_| {
                        Err(shared::dcs::DcsError::Kv(
                            shared::dcs::KvError::Unavailable(
                                "no answer before the leader lease runs short".into(),
                            ),
                        ))
                    })
            }
            None => self.dcs.load().await,
        };
        let mut cluster = match read {
            Ok(c) => {
                self.dcs_down_since = None;
                if self.dcs_error_logged {
                    info!("etcd is reachable again");
                    self.dcs_error_logged = false;
                }
                Some(c)
            }
            Err(e) => {
                // unreachable since the first read that failed began, not since it gave up
                self.dcs_down_since.get_or_insert(read_started);
                if !self.dcs_error_logged {
                    error!(
                        endpoints = ?self.cfg.etcd.hosts,
                        "cannot read cluster state from etcd: {e}; check that etcd is running and etcd3.hosts is right; retrying"
                    );
                    self.dcs_error_logged = true;
                }
                None
            }
        };
        // The dynamic configuration in force: etcd's, else bootstrap.dcs before the first
        // bootstrap wrote it, else (etcd unreachable) the last one seen.
        // A `config` key with a value out of range or of the wrong type is refused: the last good
        // configuration stays in force, for this node's decisions and for the core's view.
        let dynamic = match cluster.as_mut() {
            Some(c) => {
                let d = c
                    .config
                    .as_ref()
                    .map(|v| v.value.clone())
                    .unwrap_or_else(|| DynamicConfig {
                        raw: self.cfg.bootstrap.dcs.clone(),
                    });
                match d.refusal() {
                    Some(why) => {
                        if self.config_refused.as_deref() != Some(why.as_str()) {
                            error!(
                                "the dynamic configuration in etcd (the config key) is refused: {why}; the last good configuration stays in force until the key is fixed (pgpilot-console --batch edit-config)"
                            );
                            self.config_refused = Some(why);
                        }
                        if let Some(v) = c.config.as_mut() {
                            v.value = self.last_dynamic.clone();
                        }
                        self.last_dynamic.clone()
                    }
                    None => {
                        if self.config_refused.take().is_some() {
                            info!("the dynamic configuration in etcd is valid again");
                        }
                        self.last_dynamic = d.clone();
                        if let Some(v) = &c.config
                            && self.pg.data_dir_initialized()
                            && let Err(e) = self.pg.cache_dynamic_config(&v.value.to_json())
                        {
                            warn!("cannot keep a copy of the dynamic configuration: {e:#}");
                        }
                        d
                    }
                }
            }
            None => self.last_dynamic.clone(),
        };
        let timing = dynamic.timing();
        // keys of the configuration in force that pgpilot does not act on or adjusts (a ttl
        // too short for loop_wait and retry_timeout), each change once
        let warnings = dynamic.warnings();
        if warnings != self.config_warned {
            for w in &warnings {
                warn!("dynamic configuration: {w}");
            }
            self.config_warned = warnings;
        }
        self.dcs.set_ttl(timing.ttl as i64);
        self.pg.set_use_slots(dynamic.use_slots());
        self.pg.set_logical_slots(
            dynamic
                .permanent_slots()
                .iter()
                .any(|s| s.logical.is_some()),
        );
        self.pg.set_dynamic_postgresql(dynamic.postgresql_section());
        self.pg.set_standby_cluster(dynamic.standby_cluster());
        self.pg.set_query_timeout(timing.retry_timeout);
        if let Some(c) = &cluster {
            self.seen_leader |= c.leader.is_some();
            if let Some(l) = &c.leader {
                self.last_leader = Some(l.name.clone());
            }
            self.other_leads = c.leader.as_ref().is_some_and(|l| l.name != self.cfg.name);
            if self.other_leads && self.gave_up_lock_at.take().is_some() {
                // somebody took over: this node races as any other from now on
                self.snapshot
                    .send_modify(|s| Arc::make_mut(s).standing_down_until = None);
            }
            // etcd answers again: the lock, not the members' confirmations, keeps a primary
            self.failsafe_confirmed = None;
            if c.leader.as_ref().is_none_or(|l| l.name != self.cfg.name) {
                // whatever we renewed before, etcd says the lock is not ours now
                self.lock_renewed = None;
            }
        }

        if let Some(c) = &cluster {
            self.follow_handover(c, timing);
        }
        let restart_due = self
            .run_scheduled_restart(chrono::Utc::now().timestamp_millis())
            .await;
        let (pg_view, server) = self.observe_pg(cluster.as_ref()).await;
        let holder = cluster
            .as_ref()
            .and_then(|c| c.leader.as_ref())
            .is_some_and(|l| l.name == self.cfg.name);
        if holder && !pg_view.ready {
            self.primary_down_since.get_or_insert_with(Instant::now);
        } else if cluster.is_some() {
            self.primary_down_since = None;
        }
        if let Some(c) = &cluster {
            self.report_failover_readiness(c, timing.ttl);
        }
        let peers = match &cluster {
            Some(c) if c.leader.is_none() && pg_view.ready && self.job.is_none() => {
                self.probe_peers(c).await
            }
            _ => Vec::new(),
        };
        let nostream: Vec<String> = cluster
            .as_ref()
            .map(|c| {
                c.members
                    .iter()
                    .filter(|m| m.data.tag_view().nostream())
                    .map(|m| m.name.clone())
                    .collect()
            })
            .unwrap_or_default();
        let failsafe = if cluster.is_none()
            && pg_view.ready
            && !pg_view.in_recovery
            && self.job.is_none()
            && dynamic.failsafe_mode()
        {
            let round_started = Instant::now();
            let r = self
                .failsafe_round(pg_view.wal_position, self.failsafe_round_limit(timing))
                .await;
            if r.is_ok() {
                self.failsafe_confirmed = Some(round_started);
            }
            match &r {
                Ok(()) if !self.failsafe_active => {
                    warn!(
                        "etcd is unreachable: failsafe mode is active, every member confirmed this primary"
                    )
                }
                Err(why) => warn!("failsafe mode cannot keep this primary: {why}"),
                _ => {}
            }
            Some(r)
        } else {
            None
        };
        self.failsafe_active = matches!(failsafe, Some(Ok(())));
        // A primary this node confirmed over POST /failsafe (after checking that it answers as
        // a running primary) stays writable on that promise for ttl: no racing meanwhile.
        let failsafe_leader = self
            .failsafe_leader(timing.ttl)
            .filter(|_| dynamic.failsafe_mode());
        let decision = {
            let obs = Observation {
                me: &self.cfg.name,
                cluster: cluster.as_ref(),
                pg: pg_view.clone(),
                job: self.job.as_ref().map(|j| j.kind),
                no_failover: self.cfg.tags.no_failover(),
                failover_priority: self.cfg.tags.priority(),
                replicatefrom: self.cfg.tags.replicatefrom.as_deref(),
                nostream: &nostream,
                peers: &peers,
                seen_leader: self.seen_leader,
                uptime_secs: self.started.elapsed().as_secs(),
                timing,
                dcs_unreachable_secs: self
                    .dcs_down_since
                    .map(|t| t.elapsed().as_secs())
                    .unwrap_or(0),
                // rounded up: the demotion rule errs on the early side
                // (a ttl raised since the renewal does not lengthen that lease: the age counts
                // as much older)
                lock_age_secs: self.lock_renewed.map(|t| {
                    (t.elapsed().as_millis().div_ceil(1000) as u64)
                        .saturating_add(timing.ttl.saturating_sub(self.lock_renewed_ttl))
                }),
                rewind: self.rewind_policy(&dynamic),
                primary_down_secs: self.primary_down_since.map(|t| t.elapsed().as_secs()),
                gave_up_lock_secs: self.gave_up_lock_at.map(|t| t.elapsed().as_secs()),
                now_ms: chrono::Utc::now().timestamp_millis(),
                handed_over: self
                    .handover
                    .as_ref()
                    .filter(|(r, _)| !matches!(r.progress, handover::Progress::Failed(_)))
                    .map(|(r, _)| r.id),
                failsafe,
                failsafe_leader,
                watchdog_refusal: self
                    .watchdog
                    .allows_leading(timing.ttl, timing.loop_wait)
                    .err()
                    .or_else(|| self.watchdog_failed.clone()),
                clone_without_leader: matches!(pg_view.data, DataDir::Empty)
                    && self.can_build_without_leader(&dynamic),
                clone_from_leader: self.clone_from_leader,
            };
            ha::decide(&obs)
        };
        if decision.stands_down {
            // Said on the REST API before the lock goes, since the replica racing for it reads
            // this node's /patroni at once: no running primary any more (the snapshot, and the
            // sampler with it, still holds the last answer), and out of the race for a ttl.
            let now = Instant::now();
            self.gave_up_lock_at = Some(now);
            let state = self.pg_state(&pg_view);
            let until = now + Duration::from_secs(timing.ttl);
            self.snapshot.send_modify(|s| {
                let s = Arc::make_mut(s);
                s.server = None;
                s.state = state;
                s.standing_down_until = Some(until);
            });
        }
        let again = self
            .execute(&decision, cluster.as_ref(), &server, &dynamic)
            .await;

        // Publish our member key and snapshot.
        let (pg_view, server) = if again {
            self.observe_pg(cluster.as_ref()).await
        } else {
            (pg_view, server)
        };
        let paused = cluster.as_ref().is_some_and(|c| c.is_paused());
        self.tend_watchdog(cluster.as_ref(), &pg_view, paused, timing);
        if self.job.is_none() {
            // A primary is fenced if this agent dies; a starting server keeps the last state.
            let paused_known = cluster
                .as_ref()
                .map_or(self.snapshot.borrow().paused, |c| c.is_paused());
            if !pg_view.running {
                self.set_fencing(false);
            } else if pg_view.ready {
                self.set_fencing(!pg_view.in_recovery && !paused_known);
            }
        }
        // the guard fences the primary if this loop does not come back in time
        if self.fencing() == crate::guard::Fencing::Armed {
            let window = self.fence_window(timing);
            if let Some(g) = self.fence.as_mut() {
                g.deadline(window);
            }
        }
        let state = self.pg_state(&pg_view);
        let mut role = self.role(&pg_view);
        // the lock holder of a standby cluster, replicating from the remote primary
        if role == Role::Replica
            && let Some(c) = &cluster
            && c.leader.as_ref().is_some_and(|l| l.name == self.cfg.name)
            && c.dynamic_config().standby_cluster().is_some()
        {
            role = Role::StandbyLeader;
            self.last_role = role;
        }
        if let Some(event) = self.pending_callback.take() {
            self.run_callback(event);
        }
        if cluster.is_some() {
            let member = self.member_data(state, role, server.as_ref(), paused);
            let limit = self.dcs_call_limit(timing);
            match tokio::time::timeout(limit, self.dcs.touch_member(&member)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!("cannot update member key: {e}"),
                Err(_) => warn!(
                    "cannot update member key: etcd did not answer within {} ms",
                    limit.as_millis()
                ),
            }
        }
        let prev = self.snapshot.borrow().clone();
        // We lead until our last renewal + ttl, as far as we know: when etcd cannot be read, the
        // lock we held stays ours until then (the decision core demotes us before it ends).
        let holds = match &cluster {
            Some(c) => again || c.leader.as_ref().is_some_and(|l| l.name == self.cfg.name),
            None => prev.lock_until.is_some(),
        };
        let lock_until = self
            .lock_renewed
            .filter(|_| holds)
            .map(|t| t + Duration::from_secs(timing.ttl));
        let written = self.failsafe_written.take();
        let snap = Snapshot {
            state,
            role,
            server: server.clone(),
            lock_until,
            cluster: cluster
                .clone()
                .map(|mut c| {
                    if written.is_some() {
                        c.failsafe = written;
                    }
                    Arc::new(c)
                })
                .or_else(|| prev.cluster.clone()),
            dcs_ok: cluster.is_some(),
            dcs_last_seen: if cluster.is_some() {
                Some(unix_now())
            } else {
                prev.dcs_last_seen
            },
            last_cycle: Instant::now(),
            paused,
            ttl: timing.ttl,
            maximum_lag_on_failover: dynamic.maximum_lag_on_failover(),
            sysid: server
                .as_ref()
                .map(|s| s.system_identifier.clone())
                .or_else(|| self.pg.cached_sysid()),
            decision: decision.summary.clone(),
            handover: self.handover.as_ref().map(|(r, _)| r.clone()),
            scheduled_restart: self.scheduled_restart_json(false),
            tags: self.cfg.tags.published(),
            failover_blocked: self.last_failover_blocked.clone(),
            fencing: self.fencing(),
            failsafe_active: self.failsafe_active,
            failsafe_mode: dynamic.failsafe_mode(),
            last_leader: self.last_leader.clone(),
            watchdog_armed: self.watchdog.is_armed(),
            raft: self
                .raft
                .as_ref()
                .map(|h| h.read().unwrap_or_else(|p| p.into_inner()).clone()),
            watchdog_failed: self.watchdog_failed.is_some()
                || self
                    .watchdog
                    .allows_leading(timing.ttl, timing.loop_wait)
                    .is_err(),
            binaries_version: self.pg.catalog().map(|c| c.version_num),
            replica_method: self.pg.replica_method(),
            ..(*prev).clone()
        };
        self.snapshot.send_replace(Arc::new(snap));
        let due = decision
            .wake_in_ms
            .map(Duration::from_millis)
            .into_iter()
            .chain(restart_due)
            .min();
        let wait = if again {
            Duration::from_millis(10)
        } else if let Some(due) = due.filter(|d| *d < Duration::from_secs(timing.loop_wait)) {
            due
        } else if cluster.is_none() {
            Duration::from_secs(1)
        } else if self.job.is_some() {
            Duration::from_millis(500)
        } else if !pg_view.ready {
            // PostgreSQL is down or waiting to rejoin: look again soon.
            Duration::from_secs(timing.loop_wait.min(1))
        } else {
            Duration::from_secs(timing.loop_wait)
        };
        // A node that renewed the lock never sleeps past its demotion point (a renewal that
        // failed while etcd could be read included); a primary kept by failsafe confirmations
        // asks again each second.
        match self.demote_deadline() {
            Some(d) if !self.failsafe_active => wait.min(
                d.saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(50)),
            ),
            _ => wait,
        }
    }

    /// The deadline of one etcd call of the loop: retry_timeout, and for a lock holder never
    /// past its demotion point (at least 200 ms).
    fn dcs_call_limit(&self, t: shared::dcs::Timing) -> Duration {
        let limit = Duration::from_secs(t.retry_timeout);
        match self.demote_deadline() {
            Some(d) => limit
                .min(d.saturating_duration_since(Instant::now()))
                .max(Duration::from_millis(200)),
            None => limit,
        }
    }

    async fn observe_pg(&mut self, cluster: Option<&Cluster>) -> (PgView, Option<ServerStatus>) {
        // a creation (initdb, clone, restore) that did not finish — the agent died in it — left
        // a directory that is no server to run, even if its pg_control exists: it is made again
        let unfinished = self.job.is_none() && self.pg.creation_interrupted();
        if unfinished && self.pg.data_dir_initialized() && self.pg.running_pid().is_some() {
            warn!(
                "stopping the PostgreSQL an unfinished creation of the data directory left running"
            );
            let timeout = Duration::from_secs(self.cfg.postgresql.pg_ctl_timeout);
            if let Err(e) = self.pg.stop("immediate", timeout).await {
                warn!("cannot stop it: {e:#}");
            }
        }
        let initialized = self.pg.data_dir_initialized() && !unfinished;
        let pid = if initialized {
            self.pg.running_pid()
        } else {
            None
        };
        if let Some(pid) = pid {
            self.pg.watch_adopted(pid);
        }
        let running = pid.is_some();
        let mut stopped_end = None;
        let server = if running {
            match self.pg.status().await {
                Ok(s) => {
                    self.pg_unresponsive_since = None;
                    Some(s)
                }
                Err(e) => {
                    if e.downcast_ref::<crate::postgres::Unresponsive>().is_some() {
                        if self.pg_unresponsive_since.is_none() {
                            warn!("{e:#}: PostgreSQL seems frozen or stuck");
                        }
                        let (_, count) = self
                            .pg_unresponsive_since
                            .get_or_insert_with(|| (Instant::now(), 0));
                        *count = count.saturating_add(1);
                    } else {
                        // refused, not ignored: starting, stopping or restarting
                        self.pg_unresponsive_since = None;
                    }
                    None
                }
            }
        } else {
            self.pg_unresponsive_since = None;
            None
        };
        let data = if !initialized {
            if self.job.is_none() && !self.pg.data_dir_is_empty() && !self.pg.creation_interrupted()
            {
                DataDir::Foreign
            } else {
                DataDir::Empty
            }
        } else if let Some(s) = &server {
            DataDir::Present {
                sysid: s.system_identifier.clone(),
                was_primary: !s.in_recovery,
            }
        } else if self.job.is_some() {
            // pg_control may be half-written while a job runs; reuse what we knew.
            DataDir::Present {
                sysid: self.pg.cached_sysid().unwrap_or_default(),
                was_primary: false,
            }
        } else {
            match self.pg.controldata().await {
                Ok(cd) => {
                    self.note_rewind_capability(cd.wal_log_hints || cd.data_checksums);
                    stopped_end = cd.wal_end().map(|(tl, lsn)| WalEnd {
                        timeline: self.pg.wal_timeline(tl),
                        lsn,
                    });
                    DataDir::Present {
                        was_primary: cd.was_primary(),
                        sysid: cd.system_identifier,
                    }
                }
                Err(e) => {
                    warn!("cannot read pg_control: {e:#}");
                    DataDir::Empty
                }
            }
        };
        if self.was_running && !running && self.job.is_none() {
            warn!("PostgreSQL is not running any more");
        }
        self.was_running = running;
        let view = PgView {
            data,
            running,
            ready: server.is_some(),
            // three queries in a row out of time, not one slow answer
            unresponsive_secs: self
                .pg_unresponsive_since
                .filter(|(_, count)| *count >= 3)
                .map(|(t, _)| t.elapsed().as_secs()),
            in_recovery: server.as_ref().is_none_or(|s| s.in_recovery),
            wal_position: server.as_ref().and_then(|s| s.wal_position()),
            timeline: server.as_ref().and_then(|s| s.timeline),
            upstream: self.pg.configured_upstream(),
            wal_end: match &server {
                Some(s) => s.wal_position().zip(s.timeline).map(|(lsn, tl)| WalEnd {
                    timeline: if s.in_recovery {
                        self.pg.wal_timeline(tl)
                    } else {
                        tl
                    },
                    lsn,
                }),
                None => stopped_end,
            },
            streaming: server
                .as_ref()
                .is_some_and(|s| s.replication_state.as_deref() == Some("streaming")),
            rewind_broken: initialized && self.pg.rewind_broken(),
            config_outdated: server.is_some()
                && self.job.is_none()
                && (self.pg.parameters_outdated(&self.last_dynamic.parameters())
                    || self.pg.hba_outdated(self.last_dynamic.pg_hba())),
            rewind_not_needed: {
                let leader = cluster.and_then(ha::leader_identity);
                leader.is_some()
                    && leader == *self.rewind_ok_for.lock().unwrap_or_else(|p| p.into_inner())
            },
            standbys: Vec::new(),
            sync_names: None,
            sync_any: None,
            sync_since: Vec::new(),
        };
        self.last_wal_end = view.wal_end;
        let mut view = view;
        self.observe_sync(&mut view, server.as_ref());
        if view.ready && self.rewind_capable.is_none() {
            // Learn once whether pg_rewind could work on this data (and warn if not).
            if let Ok(cd) = self.pg.controldata().await {
                self.note_rewind_capability(cd.wal_log_hints || cd.data_checksums);
            }
        }
        (view, server)
    }

    /// Keeps the watchdog alive while this node leads and renewed the lock this cycle (or runs
    /// confirmed in failsafe mode); disarms it once it does not lead, or the cluster is paused.
    /// While etcd cannot be read it is left to run down: the demotion that follows disarms it.
    fn tend_watchdog(
        &mut self,
        cluster: Option<&Cluster>,
        pg: &PgView,
        paused: bool,
        timing: shared::dcs::Timing,
    ) {
        let renewed = self
            .lock_renewed
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1));
        let leads = match cluster {
            Some(c) => {
                !paused && renewed && c.leader.as_ref().is_none_or(|l| l.name == self.cfg.name)
            }
            None if self.failsafe_active => true,
            None if pg.running && !pg.in_recovery => return,
            None => false,
        };
        if leads {
            match self.watchdog.keepalive(timing.ttl, timing.loop_wait) {
                Ok(()) => self.watchdog_failed = None,
                Err(e) => {
                    self.watchdog_failed = Some(e);
                    self.wake.notify_one();
                }
            }
        } else {
            self.watchdog.disarm();
        }
    }

    /// The lock was renewed recently enough to act on: less than ttl - retry_timeout ago.
    fn lock_fresh(&self) -> bool {
        self.demote_deadline().is_some_and(|d| Instant::now() < d)
    }

    /// How long the local primary may stay writable without news from this loop, for the
    /// fencing guard: until its last lock renewal (or last failsafe round every member
    /// confirmed) plus ttl, less a margin of half retry_timeout (at least 1 s) — after the loop's
    /// own demotion deadline, before the lease can end. A primary holding neither gets one such
    /// span from now.
    fn fence_window(&self, t: shared::dcs::Timing) -> Duration {
        if self.other_leads {
            // another member holds the lock: this primary should not be writable at all
            return Duration::ZERO;
        }
        let margin =
            Duration::from_millis(t.retry_timeout.saturating_mul(500)).max(Duration::from_secs(1));
        let span = |ttl: u64| Duration::from_secs(ttl).saturating_sub(margin);
        let lease = self
            .lease_kept
            .map(|r| r + span(t.ttl.min(self.lock_renewed_ttl)));
        let failsafe = self.failsafe_confirmed.map(|r| r + span(t.ttl));
        match lease.into_iter().chain(failsafe).max() {
            Some(until) => until.saturating_duration_since(Instant::now()),
            // bootstrap, or a running primary adopted before its first renewal
            None => span(t.ttl),
        }
    }

    /// While this node holds the lock: when it must have renewed it or demote (its last
    /// renewal + ttl - retry_timeout).
    fn demote_deadline(&self) -> Option<Instant> {
        let t = self.last_dynamic.timing();
        let ttl = t.ttl.min(self.lock_renewed_ttl);
        self.lock_renewed
            .map(|r| r + Duration::from_secs(ttl.saturating_sub(t.retry_timeout)))
    }

    /// Fills in the standbys connected to a primary and how far each synchronous one is
    /// confirmed (see [`crate::synchronous`]).
    fn observe_sync(&mut self, view: &mut PgView, server: Option<&ServerStatus>) {
        let names = self.pg.sync_names();
        view.sync_names = names.clone();
        view.sync_any = self.pg.sync_any();
        let Some(s) = server.filter(|s| !s.in_recovery) else {
            self.sync_seen.clear();
            self.sync_in_force = None;
            return;
        };
        // What the server runs with decides, not what was last written: a reload that failed
        // (or was not taken in yet) leaves the old setting in force, and the confirmations
        // gathered under it stay valid for it alone.
        let reported = s.sync_standby_names.clone().unwrap_or_default();
        if self
            .sync_in_force
            .as_ref()
            .is_none_or(|(value, _)| *value != reported)
        {
            self.sync_seen.clear();
            self.sync_in_force = Some((reported.clone(), Instant::now()));
        }
        if names.is_some()
            && let Some((actual, any)) = crate::synchronous::parse_guc_value(&reported)
        {
            view.sync_names = Some(actual);
            view.sync_any = any;
        }
        let settled = self
            .sync_in_force
            .as_ref()
            .is_some_and(|(_, since)| since.elapsed() >= SYNC_SETTLE);
        view.standbys = s
            .replication
            .iter()
            .map(|w| crate::synchronous::StandbyLink {
                name: w.application_name.clone(),
                streaming: w.state.as_deref() == Some("streaming"),
                sync: matches!(w.sync_state.as_deref(), Some("sync" | "quorum")),
                flush_lsn: w.flush_lsn,
            })
            .collect();
        view.sync_since = crate::synchronous::track_confirmations(
            &mut self.sync_seen,
            &view.sync_names.clone().unwrap_or_default(),
            &view.standbys,
            s.write_lsn,
            settled,
        );
    }

    fn use_pg_rewind(&self, dynamic: &DynamicConfig) -> bool {
        self.cfg
            .postgresql
            .use_pg_rewind
            .or_else(|| dynamic.use_pg_rewind())
            .unwrap_or(false)
    }

    /// Whether a member without data may be built while nobody leads: a replica method with
    /// `no_leader` among this member's (in a standby cluster, among `standby_cluster`'s own,
    /// none when it lists none — as Patroni).
    fn can_build_without_leader(&self, dynamic: &DynamicConfig) -> bool {
        crate::postgres::methods::can_build_without_leader(
            &self.cfg.postgresql,
            dynamic.postgresql_section().as_ref(),
            standby_replica_methods(dynamic).as_deref(),
        )
    }

    fn rewind_policy(&self, dynamic: &DynamicConfig) -> RewindPolicy {
        let pg = &self.cfg.postgresql;
        RewindPolicy {
            possible: self.use_pg_rewind(dynamic) && self.rewind_capable != Some(false),
            remove_on_failure: pg.remove_data_directory_on_rewind_failure,
            remove_on_diverged: pg.remove_data_directory_on_diverged_timelines,
        }
    }

    fn note_rewind_capability(&mut self, capable: bool) {
        if self.rewind_capable != Some(capable)
            && !capable
            && self.use_pg_rewind(&self.last_dynamic)
        {
            warn!(
                "use_pg_rewind is on, but pg_control shows neither wal_log_hints nor data checksums: pg_rewind cannot be used until PostgreSQL restarts with wal_log_hints = on"
            );
        }
        self.rewind_capable = Some(capable);
    }

    /// Fires the callback for `event` with the role as of the last cycle.
    fn run_callback(&self, event: crate::callbacks::Event) {
        self.callbacks
            .fire(&self.cfg, event, self.last_role.as_str());
    }

    /// After this node handed the lock over: the switchover succeeded once another member holds
    /// the lock and runs as primary; it failed if nobody did within ttl + 10 s.
    fn follow_handover(&mut self, cluster: &Cluster, timing: shared::dcs::Timing) {
        let Some((report, since)) = self.handover.as_mut() else {
            return;
        };
        if report.progress != handover::Progress::InProgress
            || self.job.as_ref().is_some_and(|j| j.kind == Job::Switchover)
        {
            return;
        }
        let successor = cluster
            .leader_member()
            .filter(|m| m.name != self.cfg.name)
            .filter(|m| m.data.runs_as_primary());
        if let Some(m) = successor {
            info!(new_leader = m.name, "switchover succeeded");
            report.progress = handover::Progress::Succeeded(m.name.clone());
        } else if since.elapsed() > Duration::from_secs(timing.ttl + 10) {
            let why = format!(
                "no member took over within {}s after this node stepped down",
                timing.ttl + 10
            );
            warn!("switchover failed: {why}");
            report.progress = handover::Progress::Failed(why);
        }
    }

    /// Logs, once per change, whether any member could take over from the leader, and keeps
    /// the answer for the REST API (patroni#1849: learn it before the outage).
    fn report_failover_readiness(&mut self, cluster: &Cluster, ttl: u64) {
        // Nothing to say before the cluster exists.
        let initialized = cluster.initialize.as_deref().is_some_and(|i| !i.is_empty())
            && (cluster.leader.is_some() || self.seen_leader);
        let blocked = ha::failover_blocked(cluster).filter(|_| initialized);
        if blocked.is_none() {
            if self.failover_blocked_logged {
                info!("failover is possible again");
            }
            self.failover_blocked_logged = false;
            self.failover_blocked_leaderless = false;
            self.failover_blocked_since = None;
        } else {
            let since = *self.failover_blocked_since.get_or_insert_with(Instant::now);
            let changed = blocked != self.last_failover_blocked;
            if let Some(why) = &blocked {
                if cluster.leader.is_none() {
                    if changed || !self.failover_blocked_leaderless {
                        error!("failover is blocked, no member can take over: {why}");
                        self.failover_blocked_logged = true;
                        self.failover_blocked_leaderless = true;
                    }
                } else if since.elapsed() >= Duration::from_secs(ttl)
                    && (changed || !self.failover_blocked_logged)
                {
                    // Members starting or cloning block failover for a moment; a state that
                    // lasts a ttl is worth an operator's attention before the outage.
                    warn!("no member could take over if the leader failed now: {why}");
                    self.failover_blocked_logged = true;
                }
            }
        }
        self.last_failover_blocked = blocked;
    }

    async fn probe_peers(&self, cluster: &Cluster) -> Vec<PeerReport> {
        let futures = cluster
            .members
            .iter()
            .filter(|m| m.name != self.cfg.name && !m.data.api_url.is_empty())
            .map(|m| {
                let client = self.peers.clone();
                let name = m.name.clone();
                let url = m.data.api_url.clone();
                let priority = m.data.failover_priority();
                let no_failover = m.data.no_failover();
                async move {
                    let body = client.status(&url).await;
                    let st = body.as_ref().map(PeerStatus::from_json);
                    PeerReport {
                        name,
                        reachable: st.as_ref().is_some_and(|s| s.has_wal),
                        is_primary: st.as_ref().is_some_and(|s| s.is_primary),
                        wal_position: st.as_ref().and_then(|s| s.wal_position),
                        failover_priority: priority,
                        no_failover,
                        watchdog_failed: st.as_ref().is_some_and(|s| s.watchdog_failed),
                        standing_down: st.as_ref().is_some_and(|s| s.standing_down),
                    }
                }
            });
        futures_join_all(futures).await
    }

    fn pg_state(&self, v: &PgView) -> PgState {
        match self.job.as_ref().map(|j| j.kind) {
            Some(Job::Bootstrap) => PgState::Initdb,
            Some(Job::Clone) => PgState::CreatingReplica,
            Some(Job::Start) | Some(Job::Promote) => {
                if v.ready {
                    PgState::Running
                } else {
                    PgState::Starting
                }
            }
            Some(Job::Demote) | Some(Job::Restart) => PgState::Restarting,
            Some(Job::Rewind) => PgState::Rewinding,
            Some(Job::Wipe) | Some(Job::Switchover) => PgState::Stopping,
            None => {
                if v.ready {
                    PgState::Running
                } else if v.running {
                    PgState::Starting
                } else {
                    PgState::Stopped
                }
            }
        }
    }

    fn role(&mut self, v: &PgView) -> Role {
        let role = if matches!(v.data, DataDir::Empty | DataDir::Foreign) {
            Role::Uninitialized
        } else if v.ready {
            if v.in_recovery {
                Role::Replica
            } else {
                Role::Primary
            }
        } else if self.last_role == Role::Uninitialized {
            Role::Replica
        } else {
            self.last_role
        };
        let changed = matches!(
            (self.last_role, role),
            (Role::Primary, Role::Replica) | (Role::Replica, Role::Primary)
        );
        self.last_role = role;
        if changed {
            self.run_callback(crate::callbacks::Event::RoleChange);
        }
        role
    }

    fn member_data(
        &self,
        state: PgState,
        role: Role,
        server: Option<&ServerStatus>,
        paused: bool,
    ) -> MemberData {
        let mut m = MemberData {
            conn_url: self.cfg.postgresql.conn_url(),
            api_url: self.cfg.restapi.api_url(),
            state: state.as_str().into(),
            role: role.as_str().into(),
            version: shared::PATRONI_COMPAT_VERSION.into(),
            proxy_url: self
                .cfg
                .postgresql
                .proxy_address
                .as_ref()
                .map(|p| format!("postgres://{p}/{}", self.cfg.postgresql.database)),
            tags: self.cfg.tags.published(),
            pause: paused.then_some(true),
            scheduled_restart: self.scheduled_restart_json(true),
            ..Default::default()
        };
        if let Some(s) = server {
            if let Some(reason) = &s.pending_restart {
                m.pending_restart = Some(true);
                m.pending_restart_reason = Some(reason.clone());
            }
            m.xlog_location = s.wal_position();
            m.timeline = s.timeline;
            if s.in_recovery {
                m.replay_lsn = s.replay_lsn;
                m.receive_lsn = s.receive_lsn;
                m.replication_state = s.replication_state.clone();
            }
        }
        m
    }

    /// Runs the decided actions in order. Returns whether another cycle should run at once.
    async fn execute(
        &mut self,
        d: &Decision,
        cluster: Option<&Cluster>,
        server: &Option<ServerStatus>,
        dynamic: &DynamicConfig,
    ) -> bool {
        if self.last_summary != d.summary {
            info!(actions = ?d.actions, "{}", d.summary);
            self.journal.record(d.summary.clone());
            self.last_summary = d.summary.clone();
        } else {
            tracing::debug!(actions = ?d.actions, "{}", d.summary);
        }
        let mut again = false;
        for action in &d.actions {
            // A decision acts on an observation: if this loop was held up (stopped, swapping)
            // long enough that the lease it renewed may run out, nothing makes or keeps a
            // primary on its strength; the next cycle looks again.
            let makes_primary = matches!(
                action,
                Action::Promote
                    | Action::Start {
                        as_primary: true,
                        ..
                    }
            );
            if makes_primary && !self.lock_fresh() {
                warn!(
                    ?action,
                    "the leader lock was last renewed too long ago to act on this decision (was this agent stopped?); looking again"
                );
                return true;
            }
            match self.execute_one(action, cluster, server, dynamic).await {
                Ok(Step::Continue) => {}
                Ok(Step::Again) => again = true,
                Ok(Step::Abort) => return true,
                Err(e) => {
                    warn!(?action, "action failed: {e:#}");
                    return again;
                }
            }
        }
        again
    }

    async fn execute_one(
        &mut self,
        action: &Action,
        cluster: Option<&Cluster>,
        server: &Option<ServerStatus>,
        dynamic: &DynamicConfig,
    ) -> Result<Step> {
        let params = dynamic.parameters();
        match action {
            Action::BootstrapIfWon => {
                // before the cluster exists its configuration is bootstrap.dcs
                let standby = dynamic.standby_cluster();
                if self.dcs.race_initialize().await? {
                    match standby {
                        Some(sc) => {
                            // a standby cluster starts as a copy of the remote primary
                            info!(
                                remote = sc.address(),
                                "won the initialize race: bootstrapping a standby cluster from the remote primary"
                            );
                            self.spawn_job(
                                Job::Bootstrap,
                                crate::jobs::bootstrap_standby(
                                    self.pg.clone(),
                                    self.dcs.clone(),
                                    sc,
                                    (params, dynamic.postgresql_section()),
                                    dynamic.clone(),
                                    self.peers.clone(),
                                ),
                            );
                        }
                        None => {
                            info!(
                                "won the initialize race: bootstrapping a new cluster with initdb"
                            );
                            self.set_fencing(true);
                            self.spawn_job(
                                Job::Bootstrap,
                                bootstrap(self.cfg.clone(), self.pg.clone(), self.dcs.clone()),
                            );
                        }
                    }
                } else {
                    info!("another member is bootstrapping the cluster; waiting for it");
                }
                Ok(Step::Again)
            }
            Action::CloneWithoutLeader => {
                let source = crate::jobs::CloneSource {
                    upstream: None,
                    name: "a backup (no leader)".into(),
                    api_url: String::new(),
                    peers: self.peers.clone(),
                    methods: standby_replica_methods(dynamic),
                };
                info!(
                    "no leader: building this member from a backup (replica methods with no_leader)"
                );
                self.clone_from_leader = false;
                self.spawn_clone(source, None, params, dynamic);
                Ok(Step::Continue)
            }
            Action::Clone { from } => {
                let cluster = cluster.ok_or_else(|| anyhow!("no cluster view"))?;
                let up = upstream_of(cluster, from)
                    .ok_or_else(|| anyhow!("member {from} has no usable conn_url"))?;
                let leader = cluster.leader.as_ref().map(|l| l.name.clone());
                let leader_up = leader.as_deref().and_then(|l| upstream_of(cluster, l));
                // a reinitialize --from-leader: pg_basebackup from the leader, this once
                let methods = std::mem::take(&mut self.clone_from_leader)
                    .then(|| vec!["basebackup".to_string()]);
                let source = crate::jobs::CloneSource {
                    upstream: Some(up),
                    name: from.clone(),
                    api_url: cluster
                        .member(from)
                        .map(|m| m.data.api_url.clone())
                        .unwrap_or_default(),
                    peers: self.peers.clone(),
                    methods,
                };
                self.spawn_clone(source, leader_up, params, dynamic);
                Ok(Step::Continue)
            }
            Action::AdoptInitialize { sysid } => {
                if self.dcs.adopt_initialize(sysid).await? {
                    info!(
                        sysid,
                        "stored the system identifier of the existing data directory in initialize"
                    );
                }
                Ok(Step::Continue)
            }
            Action::Exit { reason } => {
                error!("{reason}");
                self.fatal = Some(reason.clone());
                Ok(Step::Abort)
            }
            Action::Start {
                as_primary,
                upstream,
            } => {
                let up = match (upstream, cluster) {
                    (Some(u), Some(c)) => upstream_of(c, u),
                    _ => None,
                };
                let replica_of = if *as_primary { None } else { Some(up) };
                if *as_primary {
                    self.set_fencing(!cluster.is_some_and(|c| c.is_paused()));
                }
                let timeout = Duration::from_secs(self.cfg.postgresql.pg_ctl_timeout);
                self.spawn_job(
                    Job::Start,
                    start_postgres(
                        self.pg.clone(),
                        params,
                        dynamic.pg_hba(),
                        replica_of,
                        timeout,
                    ),
                );
                Ok(Step::Continue)
            }
            Action::AcquireLock => {
                // the lease is renewed no earlier than the request starts: it ends no earlier
                // than that instant + ttl, which is what the demotion deadlines count from
                let started = Instant::now();
                if self.dcs.acquire_leader().await? {
                    info!("acquired the leader lock");
                    self.lock_renewed = Some(started);
                    self.lock_renewed_ttl = self.last_dynamic.timing().ttl;
                    self.lease_kept = Some(started);
                    Ok(Step::Again)
                } else {
                    info!("another member took the leader lock first");
                    Ok(Step::Abort)
                }
            }
            Action::RenewLock => {
                let cluster = cluster.ok_or_else(|| anyhow!("no cluster view"))?;
                let started = Instant::now();
                // never waits past the moment this primary must be read-only
                let left = self.demote_deadline().map_or(Duration::from_secs(1), |d| {
                    d.saturating_duration_since(started)
                        .max(Duration::from_millis(200))
                });
                let renewed = tokio::time::timeout(left, self.dcs.update_leader(cluster))
                    .await
                    .map_err(|_| {
                        anyhow!(
                            "etcd did not answer the lock renewal within {} ms, before the lease runs short",
                            left.as_millis()
                        )
                    })??;
                if renewed {
                    self.lock_renewed = Some(started);
                    self.lock_renewed_ttl = self.last_dynamic.timing().ttl;
                    self.lease_kept = Some(started);
                    Ok(Step::Continue)
                } else {
                    warn!("lost the leader lock");
                    self.lock_renewed = None;
                    Ok(Step::Abort)
                }
            }
            Action::ReleaseLock => {
                self.dcs.release_leader().await?;
                self.lock_renewed = None;
                Ok(Step::Again)
            }
            Action::Promote => {
                // fenced from before the first write it could accept
                self.set_fencing(!cluster.is_some_and(|c| c.is_paused()));
                let timeout = Duration::from_secs(self.cfg.postgresql.pg_ctl_timeout);
                let pg = self.pg.clone();
                self.spawn_job(Job::Promote, async move {
                    pg.promote(timeout).await?;
                    info!("promoted: now accepting writes");
                    // In the background: members rejoining with pg_rewind need pg_control to
                    // show the new timeline, which only a checkpoint writes.
                    tokio::spawn(async move {
                        match pg.checkpoint().await {
                            Ok(()) => info!("checkpoint after promotion done"),
                            Err(e) => warn!("checkpoint after promotion failed: {e:#}"),
                        }
                    });
                    Ok(())
                });
                Ok(Step::Continue)
            }
            Action::KillPostgres { reason } => {
                error!("{reason}");
                self.pg.kill_orphans().await;
                self.pg.disconnect().await;
                self.pg_unresponsive_since = None;
                Ok(Step::Continue)
            }
            Action::CancelJob { reason } => {
                if let Some(job) = self.job.take() {
                    warn!(job = ?job.kind, "cancelling the running job: {reason}");
                    job.handle.abort();
                    if let Some(tx) = job.reply {
                        let _ = tx.send((503, format!("cancelled: {reason}")));
                    }
                    // the postmaster may be stopping or starting: the next cycle looks
                    self.pg.disconnect().await;
                }
                Ok(Step::Continue)
            }
            Action::Demote { upstream } => {
                let up = match (upstream, cluster) {
                    (Some(u), Some(c)) => upstream_of(c, u),
                    _ => None,
                };
                let pg = self.pg.clone();
                let timeout = Duration::from_secs(self.cfg.postgresql.pg_ctl_timeout);
                let hba = dynamic.pg_hba();
                let offline = upstream.is_none();
                self.spawn_job(Job::Demote, async move {
                    pg.stop("fast", timeout).await?;
                    if offline {
                        // etcd is unreachable: stay up, read-only, until it is back.
                        start_postgres(pg, params, hba, Some(up), timeout).await
                    } else {
                        // Another member leads: whether this data can follow it as it is or
                        // needs pg_rewind is decided next cycle, from its timeline history.
                        info!("stopped the demoted primary; it rejoins as a replica next");
                        Ok(())
                    }
                });
                Ok(Step::Continue)
            }
            Action::Follow { upstream } => {
                let up = match (upstream, cluster) {
                    (Some(u), Some(c)) => upstream_of(c, u),
                    _ => None,
                };
                if let Some(u) = &up {
                    // our slot and the new timeline's history there first: streaming then
                    // starts at once
                    if let Err(e) = self.pg.fetch_timeline_history(u).await {
                        tracing::debug!("preparing to follow {}:{}: {e:#}", u.host, u.port);
                    }
                }
                self.pg.write_config(&params, Some(up.as_ref()))?;
                self.pg.reload().await?;
                Ok(Step::Continue)
            }
            Action::EnsureSlots { members } => {
                let keep = Duration::from_secs(dynamic.member_slots_ttl());
                let retained = cluster
                    .and_then(|c| c.status.retain_slots.clone())
                    .unwrap_or_default();
                self.ensure_slots(members, keep, &retained, dynamic).await?;
                self.ensure_permanent_slots(dynamic);
                Ok(Step::Continue)
            }
            Action::SyncSlots => match cluster {
                Some(c) => self.sync_permanent_slots(c, dynamic, server).await,
                None => Ok(Step::Continue),
            },
            Action::WriteConfig => {
                let (cfg, source) = match self
                    .pg
                    .cached_dynamic_config()
                    .and_then(|t| DynamicConfig::parse(&t))
                {
                    Some(cached) => (cached, "the copy in patroni.dynamic.json"),
                    None => (
                        DynamicConfig {
                            raw: self.cfg.bootstrap.dcs.clone(),
                        },
                        "bootstrap.dcs",
                    ),
                };
                self.dcs.set_config(&cfg, None).await?;
                warn!("the config key was missing or invalid: restored it from {source}");
                Ok(Step::Continue)
            }
            Action::Rewind { from } => {
                let cluster = cluster.ok_or_else(|| anyhow!("no cluster view"))?;
                let up = upstream_of(cluster, from)
                    .ok_or_else(|| anyhow!("member {from} has no usable conn_url"))?;
                let pg = self.pg.clone();
                let timeout = Duration::from_secs(self.cfg.postgresql.pg_ctl_timeout);
                let leader_tl = cluster
                    .member(from)
                    .and_then(|m| m.data.timeline)
                    .unwrap_or_default();
                let ok_for = self.rewind_ok_for.clone();
                let from = from.clone();
                let local_tl = self.last_wal_end.map(|e| e.timeline).unwrap_or(0);
                let newer = leader_tl > local_tl;
                self.spawn_job(Job::Rewind, async move {
                    if pg.rewind(&up, newer, timeout).await? == RewindOutcome::NotNeeded {
                        *ok_for.lock().unwrap_or_else(|p| p.into_inner()) = Some((from, leader_tl));
                    }
                    Ok(())
                });
                Ok(Step::Continue)
            }
            Action::WipeData { reason } => {
                warn!(data_dir = %self.pg.data_dir().display(), "removing the data directory: {reason}");
                let pg = self.pg.clone();
                let timeout = Duration::from_secs(self.cfg.postgresql.pg_ctl_timeout);
                self.spawn_job(Job::Wipe, async move { pg.wipe(timeout).await });
                Ok(Step::Continue)
            }
            Action::Switchover { candidate } => {
                let cluster = cluster.ok_or_else(|| anyhow!("no cluster view"))?;
                let id = cluster.failover.as_ref().map_or(0, |f| f.mod_revision);
                let candidates: Vec<(String, String)> = match candidate {
                    Some(c) => vec![c.clone()],
                    None => ha::failover_readiness(cluster)
                        .into_iter()
                        .filter(|(_, why)| why.is_none())
                        .map(|(n, _)| n)
                        .collect(),
                }
                .into_iter()
                .filter_map(|n| {
                    let url = cluster.member(&n)?.data.api_url.clone();
                    Some((n, url))
                })
                .collect();
                let plan = handover::Plan {
                    candidates,
                    max_lag: dynamic.maximum_lag_on_failover(),
                    upstream: candidate.as_deref().and_then(|c| upstream_of(cluster, c)),
                    status: cluster.status.clone(),
                    params,
                    hba: dynamic.pg_hba(),
                    timeout: Duration::from_secs(self.cfg.postgresql.pg_ctl_timeout),
                    checkpoint_deadline: self
                        .demote_deadline()
                        .unwrap_or_else(|| Instant::now() + Duration::from_secs(1)),
                };
                self.handover = Some((
                    handover::Report {
                        id,
                        candidate: candidate.clone(),
                        progress: handover::Progress::InProgress,
                    },
                    Instant::now(),
                ));
                // From now on this node does not claim the lock to load balancers.
                self.lock_renewed = None;
                self.spawn_job(
                    Job::Switchover,
                    handover::hand_over(
                        self.pg.clone(),
                        self.dcs.clone(),
                        self.peers.clone(),
                        plan,
                    ),
                );
                Ok(Step::Continue)
            }
            Action::ClearFailover { reason } => {
                let id = cluster
                    .and_then(|c| c.failover.as_ref())
                    .map(|f| f.mod_revision);
                if let Some(rev) = id {
                    self.dcs.set_failover(None, Some(rev)).await?;
                }
                match reason {
                    Some(why) => {
                        warn!("refused the requested switchover: {why}");
                        self.handover = Some((
                            handover::Report {
                                id: id.unwrap_or(0),
                                candidate: cluster
                                    .and_then(|c| c.failover.as_ref())
                                    .and_then(|f| f.value.member.clone()),
                                progress: handover::Progress::Failed(why.clone()),
                            },
                            Instant::now(),
                        ));
                    }
                    None => info!("cleared the fulfilled switchover request"),
                }
                Ok(Step::Continue)
            }
            Action::ApplyConfig => {
                self.pg.rewrite_parameters(&params)?;
                self.pg.write_hba(dynamic.pg_hba(), false)?;
                self.pg.reload().await?;
                info!(
                    "configuration changed: rewrote the parameters and pg_hba.conf and reloaded PostgreSQL (parameters that need a restart show as pending_restart)"
                );
                self.run_callback(crate::callbacks::Event::Reload);
                Ok(Step::Continue)
            }
            Action::SetSyncNames { names, any } => {
                // the same value written moments ago and still not what the server reports:
                // something overrides it (ALTER SYSTEM's postgresql.auto.conf, or PostgreSQL
                // refused it); rewriting and reloading every cycle would not help
                let wanted = names
                    .as_ref()
                    .map(|n| crate::synchronous::guc_value(n, *any));
                if let Some((value, at, warned)) = self.sync_written.as_mut()
                    && Some(&*value) == wanted.as_ref()
                    && at.elapsed() < SYNC_REWRITE_PAUSE
                {
                    if !*warned && at.elapsed() >= SYNC_SETTLE {
                        *warned = true;
                        warn!(
                            "PostgreSQL does not run with synchronous_standby_names = '{value}' although it was written and reloaded: is it set with ALTER SYSTEM (postgresql.auto.conf)? Remove it there (ALTER SYSTEM RESET synchronous_standby_names); the server's log says whether it refused the value"
                        );
                    }
                    return Ok(Step::Continue);
                }
                self.sync_written = wanted.map(|v| (v, Instant::now(), false));
                self.pg.set_sync_setting(names.clone(), *any);
                self.pg.rewrite_parameters(&params)?;
                if server.is_some() {
                    self.pg.reload().await?;
                }
                match names {
                    Some(n) => info!(
                        "synchronous mode: synchronous_standby_names = '{}'",
                        crate::synchronous::guc_value(n, *any)
                    ),
                    None => info!(
                        "synchronous mode is off: synchronous_standby_names is the configuration's again"
                    ),
                }
                Ok(Step::Continue)
            }
            Action::WriteSync {
                standbys,
                quorum,
                version,
            } => {
                let state = shared::dcs::SyncState {
                    leader: Some(self.cfg.name.clone()),
                    quorum: *quorum,
                    sync_standby: standbys.clone(),
                };
                if !self.dcs.write_sync(&state, *version).await? {
                    anyhow::bail!("the sync key changed meanwhile; looking again next cycle");
                }
                if dynamic.synchronous_mode() == shared::dcs::SyncMode::Quorum {
                    info!(voters = ?standbys, quorum, "quorum commit: published the voters and the quorum a new primary must see");
                } else {
                    info!(standbys = ?standbys, "synchronous mode: published the synchronous standbys");
                }
                Ok(Step::Continue)
            }
            Action::DeleteSync { version } => {
                if self.dcs.delete_sync(*version).await? {
                    info!("synchronous mode is off: removed the sync key");
                }
                Ok(Step::Continue)
            }
            Action::PublishStatus => {
                if let (Some(c), Some(s)) = (cluster, server) {
                    self.publish_status(c, s).await?;
                    self.publish_failsafe(c).await;
                }
                Ok(Step::Continue)
            }
        }
    }

    /// Starts building this member's data directory from `source` (a member, or a backup when
    /// nobody leads), with the parameters and pg_hba of the dynamic configuration in force.
    fn spawn_clone(
        &mut self,
        source: crate::jobs::CloneSource,
        leader: Option<Upstream>,
        params: Map<String, Value>,
        dynamic: &DynamicConfig,
    ) {
        let job = clone_replica(
            self.pg.clone(),
            source,
            leader,
            (params, dynamic.postgresql_section()),
            dynamic.pg_hba(),
            Duration::from_secs(self.cfg.postgresql.pg_ctl_timeout),
        );
        self.spawn_job(Job::Clone, job);
    }

    fn spawn_job(
        &mut self,
        kind: Job,
        fut: impl std::future::Future<Output = Result<()>> + Send + 'static,
    ) {
        // A job that just failed is not retried in a tight loop: the decision asks again each
        // cycle, and it runs again once the pause is over.
        if let Some((failed, at)) = self.last_job_failure
            && failed == kind
            && at.elapsed() < JOB_RETRY_PAUSE
        {
            tracing::debug!(job = ?kind, "not retrying yet: it failed {:?} ago", at.elapsed());
            return;
        }
        let wake = self.wake.clone();
        let handle = tokio::spawn(async move {
            let r = fut.await;
            wake.notify_one();
            r
        });
        self.job = Some(RunningJob {
            kind,
            handle,
            reply: None,
        });
    }

    /// Collects a finished job and reacts to its failure.
    async fn reap_job(&mut self) {
        let finished = self.job.as_ref().is_some_and(|j| j.handle.is_finished());
        if !finished {
            return;
        }
        let Some(job) = self.job.take() else { return };
        let result = match job.handle.await {
            Ok(r) => r,
            Err(e) => Err(anyhow!("job panicked or was cancelled: {e}")),
        };
        if let Some(tx) = job.reply {
            let _ = tx.send(match &result {
                Ok(()) => (200, "restarted successfully".to_string()),
                Err(e) => (503, format!("restart failed: {e:#}")),
            });
        }
        if result.is_ok() {
            self.pending_callback = match job.kind {
                Job::Start | Job::Clone | Job::Bootstrap => Some(crate::callbacks::Event::Start),
                Job::Restart => Some(crate::callbacks::Event::Restart),
                _ => None,
            };
        }
        // the failure's first words only: the full chain (a tool's output) stays in the log
        self.journal.record(match &result {
            Ok(()) => format!("{:?} finished", job.kind),
            Err(e) => {
                let what: String = e.to_string().chars().take(200).collect();
                format!(
                    "{:?} failed: {what} (the agent's log has the details)",
                    job.kind
                )
            }
        });
        if job.kind == Job::Wipe && result.is_err() {
            // a reinitialize --from-leader whose wipe failed asks nothing of a later clone
            self.clone_from_leader = false;
        }
        match (job.kind, result) {
            (kind, Ok(())) => info!(job = ?kind, "finished"),
            (Job::Bootstrap, Err(e)) => {
                error!("bootstrap failed: {e:#}");
                self.fatal = Some(format!("bootstrap failed: {e:#}"));
            }
            (Job::Switchover, Err(e)) => {
                error!("switchover failed: {e:#}; this node stays the leader");
                if let Some((report, _)) = self.handover.as_mut() {
                    report.progress = handover::Progress::Failed(format!("{e:#}"));
                }
                // the request is answered: nothing is left for the next cycle to carry out
                if let Err(e) = self.dcs.set_failover(None, None).await {
                    warn!("cannot clear the failover key: {e}");
                }
            }
            (Job::Clone, Err(e)) => {
                self.last_job_failure = Some((Job::Clone, Instant::now()));
                error!(
                    "creating the replica failed: {e:#}; retrying in {}s",
                    JOB_RETRY_PAUSE.as_secs()
                );
            }
            (kind @ (Job::Start | Job::Promote | Job::Demote), Err(e)) => {
                self.last_job_failure = Some((kind, Instant::now()));
                error!(job = ?kind, "failed: {e:#}; PostgreSQL log: {}", self.pg.log_tail().await);
            }
            (kind, Err(e)) => {
                self.last_job_failure = Some((kind, Instant::now()));
                error!(job = ?kind, "failed: {e:#}; retrying in {}s", JOB_RETRY_PAUSE.as_secs());
            }
        }
    }

    /// Creates the slots of the members that stream from this leader, and drops the slot of a
    /// member gone for longer than `member_slots_ttl`. Which slots are members' survives agent
    /// restarts and failovers: besides those this agent created, the names in the `status`
    /// key's `retain_slots` (which every leader publishes), counted from when this agent first
    /// sees them missing, as Patroni 4 does. Slots named by `ignore_slots` or the permanent
    /// `slots` are never dropped, nor one in use; a failed drop is retried next cycle.
    async fn ensure_slots(
        &mut self,
        members: &[String],
        keep: Duration,
        retained: &[String],
        dynamic: &DynamicConfig,
    ) -> Result<()> {
        let existing = self.pg.slots().await?;
        let wanted: HashSet<String> = members.iter().map(|m| slot_name(m)).collect();
        for name in &wanted {
            self.member_slots.insert(name.clone());
            self.slot_missing_since.remove(name);
            if !existing.iter().any(|(s, _)| s == name) {
                self.pg.create_slot(name).await?;
                info!(slot = name, "created replication slot for member");
            }
        }
        let own = slot_name(&self.cfg.name);
        for name in retained {
            if *name != own {
                self.member_slots.insert(name.clone());
            }
        }
        for (name, _) in existing {
            if wanted.contains(&name)
                || !self.member_slots.contains(&name)
                || dynamic.keeps_physical_slot(&name)
            {
                continue;
            }
            let since = *self
                .slot_missing_since
                .entry(name.clone())
                .or_insert_with(Instant::now);
            if since.elapsed() > keep {
                info!(
                    slot = name,
                    "dropping the slot of a member gone for over member_slots_ttl"
                );
                if let Err(e) = self.pg.drop_slot(&name).await {
                    warn!(slot = name, "cannot drop the slot yet: {e:#}");
                    continue;
                }
                self.slot_missing_since.remove(&name);
                self.member_slots.remove(&name);
            }
        }
        Ok(())
    }

    async fn publish_status(&mut self, cluster: &Cluster, server: &ServerStatus) -> Result<()> {
        let optime = server.wal_position();
        let mut slots = Map::new();
        let mut retain: Vec<String> = Vec::new();
        if cluster.dynamic_config().use_slots() {
            if let Ok(existing) = self.pg.slots().await {
                for (name, lsn) in existing {
                    if self.member_slots.contains(&name) {
                        if let Some(l) = lsn {
                            slots.insert(name.clone(), Value::from(l));
                        }
                        retain.push(name);
                    }
                }
            }
            // the permanent slots' positions: replicas move their copies to them
            slots.extend(
                self.permanent_slot_positions(&cluster.dynamic_config())
                    .await,
            );
            let own = slot_name(&self.cfg.name);
            if let Some(o) = optime {
                slots.insert(own.clone(), Value::from(o));
            }
            retain.push(own);
            retain.sort();
            retain.dedup();
        }
        let status = Status {
            optime,
            slots: Some(slots),
            retain_slots: Some(retain),
        };
        let json = status.to_json();
        if self.last_status_json.as_deref() != Some(&json) {
            self.dcs.write_status(&status).await?;
            self.last_status_json = Some(json);
        }
        if let Some(tl) = server.timeline {
            self.publish_history(cluster, tl).await?;
        }
        Ok(())
    }

    async fn publish_history(&self, cluster: &Cluster, timeline: u64) -> Result<()> {
        if timeline <= 1 {
            if !cluster.history.is_empty() {
                self.dcs.write_history(&[]).await?;
            }
            return Ok(());
        }
        // Cheap test first: the newest entry is the parent of our timeline (the usual case).
        let up_to_date = cluster.history.last().is_some_and(|e| {
            e.timeline == timeline - 1 && e.timestamp.is_some() && e.new_leader.is_some()
        });
        if up_to_date {
            return Ok(());
        }
        let Some((lines, mtime)) = self.pg.timeline_history(timeline) else {
            return Ok(());
        };
        // After a timeline jump (say 2 → 4) the parent is not timeline - 1: compare entries.
        let same = lines.len() == cluster.history.len()
            && lines
                .iter()
                .zip(&cluster.history)
                .all(|((tl, lsn, _), e)| *tl == e.timeline && *lsn == e.lsn)
            && cluster
                .history
                .last()
                .is_some_and(|e| e.timestamp.is_some() && e.new_leader.is_some());
        if same {
            return Ok(());
        }
        let known: BTreeMap<u64, &HistoryEntry> =
            cluster.history.iter().map(|e| (e.timeline, e)).collect();
        let n = lines.len();
        let entries: Vec<HistoryEntry> = lines
            .into_iter()
            .enumerate()
            .map(|(i, (tl, lsn, reason))| {
                let old = known.get(&tl);
                let newest = i + 1 == n;
                HistoryEntry {
                    timeline: tl,
                    lsn,
                    reason,
                    timestamp: old.and_then(|o| o.timestamp.clone()).or_else(|| {
                        newest.then(|| {
                            chrono::DateTime::<chrono::Local>::from(mtime)
                                .format("%Y-%m-%dT%H:%M:%S%.6f%:z")
                                .to_string()
                        })
                    }),
                    new_leader: old
                        .and_then(|o| o.new_leader.clone())
                        .or_else(|| newest.then(|| self.cfg.name.clone())),
                }
            })
            .collect();
        self.dcs.write_history(&entries).await?;
        info!(timeline, "wrote the timeline history to the history key");
        Ok(())
    }

    /// Clean shutdown: stop PostgreSQL (unless paused), hand the lock over, mark us stopped.
    async fn stop_everything(&mut self) {
        if let Some(job) = self.job.take() {
            info!(job = ?job.kind, "shutting down: cancelling the running job");
            job.handle.abort();
            let _ = job.handle.await;
            if job.kind == Job::Bootstrap {
                // Nobody else may bootstrap while initialize says someone is: give the claim up.
                match self.dcs.abandon_initialize().await {
                    Ok(true) => info!("bootstrap cancelled: removed the empty initialize key"),
                    Ok(false) => {}
                    Err(e) => {
                        warn!("cannot remove the initialize key of the cancelled bootstrap: {e}")
                    }
                }
            }
        }
        let cluster = self.dcs.load().await.ok();
        let paused = cluster.as_ref().is_some_and(|c| c.is_paused());
        let holds = cluster
            .as_ref()
            .and_then(|c| c.leader.as_ref())
            .is_some_and(|l| l.name == self.cfg.name);
        if paused {
            info!(
                "shutting down while paused: leaving PostgreSQL running and the leader key in place"
            );
            return;
        }
        let timeout = Duration::from_secs(self.cfg.postgresql.pg_ctl_timeout);
        if let Err(e) = self.pg.stop("fast", timeout).await {
            error!("cannot stop PostgreSQL cleanly: {e:#}");
        } else {
            info!("PostgreSQL stopped");
            if let Some(cb) = self.callbacks.fire(
                &self.cfg,
                crate::callbacks::Event::Stop,
                self.last_role.as_str(),
            ) {
                // the agent exits next: give the callback a moment to finish
                let _ = tokio::time::timeout(Duration::from_secs(10), cb).await;
            }
        }
        if holds {
            if let Ok(cd) = self.pg.controldata().await
                && let Some(lsn) = cd.checkpoint_lsn
            {
                let mut status = cluster
                    .as_ref()
                    .map(|c| c.status.clone())
                    .unwrap_or_default();
                // One byte past the start of the shutdown checkpoint: a replica that did not
                // receive that record counts as behind, one that did is at or past it.
                status.optime = Some(lsn.0.saturating_add(1));
                if let Err(e) = self.dcs.write_status(&status).await {
                    warn!("cannot write the final status: {e}");
                }
            }
            match self.dcs.release_leader().await {
                Ok(_) => info!("released the leader lock"),
                Err(e) => warn!("cannot release the leader lock: {e}"),
            }
        }
        let member = self.member_data(PgState::Stopped, self.last_role, None, false);
        if let Err(e) = self.dcs.touch_member(&member).await {
            warn!("cannot mark the member stopped: {e}");
        }
    }
}

enum Step {
    Continue,
    Again,
    Abort,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Runs the futures as tasks at once and returns their outputs in order (a task that panicked
/// is left out).
pub(crate) async fn futures_join_all<
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
>(
    futs: impl Iterator<Item = F>,
) -> Vec<T> {
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}

fn upstream_of(cluster: &Cluster, member: &str) -> Option<Upstream> {
    if member == shared::dcs::STANDBY_REMOTE {
        // a standby cluster's remote primary (none: it replicates from the archive alone)
        let address = cluster.dynamic_config().standby_cluster()?.address()?;
        let (host, port) = shared::config::split_host_port(&address)?;
        return Some(Upstream { host, port });
    }
    let (host, port) = cluster.member(member)?.data.host_port()?;
    Some(Upstream { host, port })
}

/// In a standby cluster, the replica methods its members are built with (`standby_cluster`'s
/// own list, none when it lists none — as Patroni); `None` elsewhere.
fn standby_replica_methods(dynamic: &DynamicConfig) -> Option<Vec<String>> {
    dynamic
        .standby_cluster()
        .map(|sc| sc.create_replica_methods.unwrap_or_default())
}
