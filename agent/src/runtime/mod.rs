//! The agent's loop: observe (etcd, PostgreSQL, peers) → [`ha::decide`] → execute the actions →
//! publish the member key and the in-memory [`Snapshot`] the REST API answers from. It wakes on
//! the `loop_wait` timer, on etcd watch events (leader, config, status, failover, new members),
//! on postmaster exit and when a background job finishes.
//!
//! This file owns the [`Agent`] and its cycle; each part of the cycle is a file of its own:
//! `observe.rs` (what the agent sees), `execute.rs` (carrying the actions out, background
//! jobs), `publish.rs` (the member and history keys), `slots.rs` (replication slots),
//! `failsafe.rs` (failsafe mode), `commands.rs` (operator requests from the REST API),
//! `view.rs` (the watch's view of the cluster between cycles).

use crate::ha::{self, DataDir, Job, Observation, WalEnd};
mod commands;
mod execute;
mod failsafe;
mod observe;
mod publish;
mod slots;
mod view;
pub use failsafe::FailsafeHeard;

use crate::handover;
use crate::postgres::{Postgres, Upstream};
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
use shared::api::MemberClient;
use shared::config::Config;
use shared::dcs::{Cluster, Dcs, DynamicConfig, Kv};
use shared::types::{PgState, Role};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tracing::{error, info, warn};
use view::{Watched, steady};

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
    /// The cluster as the watch keeps it between cycles (`None` while it is being read again).
    view: Arc<std::sync::Mutex<Option<Watched>>>,
    /// The next cycle reads etcd itself, whatever the view shows.
    read_etcd_next: bool,
    /// The ttl in force, for the watch's progress requests.
    watch_ttl: Arc<std::sync::atomic::AtomicU64>,
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
    fence: Option<Box<dyn crate::guard::Fence>>,
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
    /// The watch and the sampler, which end with the agent.
    background: Vec<tokio::task::AbortHandle>,
}

impl<K: Kv> Drop for Agent<K> {
    /// An agent that ends (or, in the simulation, dies) takes its tasks with it: the
    /// background ones and a job's (a program it runs is killed with it).
    fn drop(&mut self) {
        for task in &self.background {
            task.abort();
        }
        if let Some(job) = &self.job {
            job.handle.abort();
        }
        for task in [
            &self.slot_work.as_ref().map(|t| t.abort_handle()),
            &self.password_task.as_ref().map(|t| t.abort_handle()),
        ]
        .into_iter()
        .flatten()
        {
            task.abort();
        }
    }
}

/// An agent over `pg` and the REST API answering for it, wired together: the snapshot the
/// API reads, the channel its write endpoints send operations on, the access rules of
/// `restapi`. The daemon and the simulation build their members with it.
pub async fn assemble<K: Kv>(
    cfg: Arc<Config>,
    dcs: Arc<Dcs<K>>,
    pg: Arc<Postgres>,
    peers: MemberClient,
) -> (Agent<K>, Arc<crate::rest::Api<K>>) {
    let (tx, rx) = watch::channel(Arc::new(Snapshot::initial(&cfg)));
    let (commands_tx, commands_rx) = tokio::sync::mpsc::channel(8);
    let agent = Agent::new(cfg.clone(), dcs.clone(), pg, tx, commands_rx, peers.clone());
    *agent.rest_access.write().unwrap_or_else(|p| p.into_inner()) =
        Arc::new(crate::rest_access::Access::from_config(&cfg.restapi).await);
    let api = Arc::new(crate::rest::Api {
        snapshot: rx,
        dcs,
        access: agent.rest_access.clone(),
        client: peers,
        commands: commands_tx,
        wake: agent.wake.clone(),
        failsafe_heard: agent.failsafe_heard.clone(),
        journal: agent.journal.clone(),
    });
    (agent, api)
}

impl<K: Kv> Agent<K> {
    /// An agent over `pg` (the simulation's has a stand-in server); see [`assemble`].
    fn new(
        cfg: Arc<Config>,
        dcs: Arc<Dcs<K>>,
        pg: Arc<Postgres>,
        snapshot: watch::Sender<Arc<Snapshot>>,
        commands: tokio::sync::mpsc::Receiver<Envelope>,
        peers: MemberClient,
    ) -> Self {
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
            view: Arc::default(),
            read_etcd_next: false,
            watch_ttl: Arc::new(std::sync::atomic::AtomicU64::new(last_dynamic.timing().ttl)),
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
            background: Vec::new(),
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
    pub fn set_fence_guard(&mut self, guard: impl crate::guard::Fence + 'static) {
        self.fence = Some(Box::new(guard));
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
    fn spawn_sampler(&mut self) {
        let pg = self.pg.clone();
        let snapshot = self.snapshot.clone();
        let task = tokio::spawn(async move {
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
        self.background.push(task.abort_handle());
    }

    /// One HA cycle; returns how long to sleep before the next.
    async fn cycle(&mut self) -> Duration {
        self.reap_job().await;
        if self.fatal.is_some() {
            return Duration::ZERO;
        }
        // The watch's view when it may stand in for a read (observe_cluster), else etcd.
        let read_started = Instant::now();
        let (read, from_view) = self.observe_cluster().await;
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
        self.watch_ttl
            .store(timing.ttl, std::sync::atomic::Ordering::Relaxed);
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
            // from now on; the members' last promise (not to race for a ttl) still covers it
            // until then, unless another member leads already
            if self.other_leads {
                self.failsafe_confirmed = None;
            }
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
                self.push_fence_deadline(timing);
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
                // the last renewal's, or the last failsafe confirmation's when later: what
                // keeps this primary writable
                // (a switchover in flight or failed no longer claims the lock, but the lease it
                // kept is what covers the primary until then)
                lock_age_secs: [
                    self.lock_renewed.or(self.lease_kept).map(|t| {
                        (t.elapsed().as_millis().div_ceil(1000) as u64)
                            .saturating_add(timing.ttl.saturating_sub(self.lock_renewed_ttl))
                    }),
                    self.failsafe_confirmed
                        .map(|t| t.elapsed().as_millis().div_ceil(1000) as u64),
                ]
                .into_iter()
                .flatten()
                .min(),
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
        if from_view && !steady(&decision) {
            // something is to change: decided again on what etcd itself says, at once
            self.read_etcd_next = true;
            return Duration::ZERO;
        }
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
        self.push_fence_deadline(timing);
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
            // the lock renewal of this cycle refreshed the lease already
            let refresh = self.lock_renewed.is_none_or(|t| t < read_started);
            let written =
                tokio::time::timeout(limit, self.dcs.touch_member_with(&member, refresh)).await;
            match &written {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!("cannot update member key: {e}"),
                Err(_) => warn!(
                    "cannot update member key: etcd did not answer within {} ms",
                    limit.as_millis()
                ),
            }
            if !matches!(written, Ok(Ok(()))) {
                // the view says nothing of whether etcd answers: the next cycle reads it
                self.read_etcd_next = true;
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
            // a job wakes the loop when it ends (spawn_job); until then a cycle only renews
            // the lock and publishes, as an idle one does
            Duration::from_secs(timing.loop_wait)
        } else if !pg_view.ready {
            // PostgreSQL is down or waiting to rejoin: look again soon.
            Duration::from_secs(timing.loop_wait.min(1))
        } else {
            Duration::from_secs(timing.loop_wait)
        };
        // A node that renewed the lock never sleeps past its demotion point (a renewal that
        // failed while etcd could be read included); a primary kept by failsafe confirmations
        // asks again each second.
        match self.loop_deadline() {
            Some(d) if !self.failsafe_active => wait.min(
                d.saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(50)),
            ),
            _ => wait,
        }
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
