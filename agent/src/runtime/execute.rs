//! Execution: carries out the actions [`ha::decide`] returned — lock and key writes, promotion,
//! demotion, rewinds, restarts, clones — each with a deadline from the timing; starts the
//! background jobs (bootstrap, clone, start) and reaps their outcomes; follows a handover.

use super::{
    Agent, JOB_RETRY_PAUSE, RunningJob, SYNC_REWRITE_PAUSE, SYNC_SETTLE, Step,
    standby_replica_methods, upstream_of,
};
use crate::ha::{self, Action, Decision, Job};
use crate::handover;
use crate::jobs::{bootstrap, clone_replica, start_postgres};
use crate::postgres::{RewindOutcome, ServerStatus, Upstream};
use anyhow::{Result, anyhow};
use serde_json::{Map, Value};
use shared::dcs::{Cluster, DynamicConfig, Kv};
use std::time::Duration;
use tokio::time::Instant;
use tracing::{error, info, warn};

impl<K: Kv> Agent<K> {
    /// Runs the decided actions in order. Returns whether another cycle should run at once.
    pub(super) async fn execute(
        &mut self,
        d: &Decision,
        cluster: Option<&Cluster>,
        server: &Option<ServerStatus>,
        dynamic: &DynamicConfig,
    ) -> bool {
        if self.last_summary != d.summary {
            info!(rule = d.rule, actions = ?d.actions, "{}", d.summary);
            self.journal.record(d.summary.clone());
            self.last_summary = d.summary.clone();
        } else {
            tracing::debug!(rule = d.rule, actions = ?d.actions, "{}", d.summary);
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

    /// Carries out one action: small ones here, the others in the method of their name below
    /// (in the order of this match).
    pub(super) async fn execute_one(
        &mut self,
        action: &Action,
        cluster: Option<&Cluster>,
        server: &Option<ServerStatus>,
        dynamic: &DynamicConfig,
    ) -> Result<Step> {
        match action {
            Action::BootstrapIfWon => self.bootstrap_if_won(dynamic).await,
            Action::CloneWithoutLeader => self.clone_without_leader(dynamic).await,
            Action::Clone { from } => self.clone_member(cluster, from, dynamic).await,
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
            } => self.start(*as_primary, upstream, cluster, dynamic).await,
            Action::AcquireLock => self.acquire_lock().await,
            Action::RenewLock => self.renew_lock(cluster).await,
            Action::ReleaseLock => {
                self.dcs.release_leader().await?;
                self.lock_renewed = None;
                Ok(Step::Again)
            }
            Action::Promote => self.promote(cluster).await,
            Action::KillPostgres { reason } => {
                error!("{reason}");
                self.pg.kill_orphans().await;
                self.pg.disconnect().await;
                self.pg_unresponsive_since = None;
                Ok(Step::Continue)
            }
            Action::CancelJob { reason } => self.cancel_job(reason).await,
            Action::Demote { upstream } => self.demote(upstream, cluster, dynamic).await,
            Action::Follow { upstream } => self.follow(upstream, cluster, dynamic).await,
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
            Action::WriteConfig => self.restore_config().await,
            Action::Rewind { from } => self.rewind(cluster, from).await,
            Action::WipeData { reason } => {
                warn!(data_dir = %self.pg.data_dir().display(), "removing the data directory: {reason}");
                let pg = self.pg.clone();
                let timeout = Duration::from_secs(self.cfg.postgresql.pg_ctl_timeout);
                self.spawn_job(Job::Wipe, async move { pg.wipe(timeout).await });
                Ok(Step::Continue)
            }
            Action::Switchover { candidate } => self.switchover(candidate, cluster, dynamic).await,
            Action::ClearFailover { reason } => self.clear_failover(reason, cluster).await,
            Action::ApplyConfig => self.apply_config(dynamic).await,
            Action::SetSyncNames { names, any } => {
                self.set_sync_names(names, *any, server, dynamic).await
            }
            Action::WriteSync {
                standbys,
                quorum,
                version,
            } => self.write_sync(standbys, *quorum, *version, dynamic).await,
            Action::DeleteSync { version } => {
                if self
                    .with_demote_deadline(self.dcs.delete_sync(*version))
                    .await?
                {
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

    /// Races for `initialize`; the winner bootstraps (initdb, or a standby cluster from its remote primary).
    async fn bootstrap_if_won(&mut self, dynamic: &DynamicConfig) -> Result<Step> {
        let params = dynamic.parameters();
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
                    info!("won the initialize race: bootstrapping a new cluster with initdb");
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

    /// Builds this member from a backup while nobody leads (replica methods with `no_leader`).
    async fn clone_without_leader(&mut self, dynamic: &DynamicConfig) -> Result<Step> {
        let params = dynamic.parameters();
        let source = crate::jobs::CloneSource {
            upstream: None,
            name: "a backup (no leader)".into(),
            api_url: String::new(),
            peers: self.peers.clone(),
            methods: standby_replica_methods(dynamic),
        };
        info!("no leader: building this member from a backup (replica methods with no_leader)");
        self.clone_from_leader = false;
        self.spawn_clone(source, None, params, dynamic);
        Ok(Step::Continue)
    }

    /// Builds this member's data directory from member `from` (or its replica methods).
    async fn clone_member(
        &mut self,
        cluster: Option<&Cluster>,
        from: &String,
        dynamic: &DynamicConfig,
    ) -> Result<Step> {
        let params = dynamic.parameters();
        let cluster = cluster.ok_or_else(|| anyhow!("no cluster view"))?;
        let up = upstream_of(cluster, from)
            .ok_or_else(|| anyhow!("member {from} has no usable conn_url"))?;
        let leader = cluster.leader.as_ref().map(|l| l.name.clone());
        let leader_up = leader.as_deref().and_then(|l| upstream_of(cluster, l));
        // a reinitialize --from-leader: pg_basebackup from the leader, this once
        let methods =
            std::mem::take(&mut self.clone_from_leader).then(|| vec!["basebackup".to_string()]);
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

    /// Starts PostgreSQL as primary or as a replica of `upstream` (a background job).
    async fn start(
        &mut self,
        as_primary: bool,
        upstream: &Option<String>,
        cluster: Option<&Cluster>,
        dynamic: &DynamicConfig,
    ) -> Result<Step> {
        let params = dynamic.parameters();
        let up = named_upstream(upstream, cluster);
        let replica_of = if as_primary { None } else { Some(up) };
        if as_primary {
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

    /// Takes the free leader lock.
    async fn acquire_lock(&mut self) -> Result<Step> {
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

    /// Renews the leader lock, never waiting past the moment this primary must be read-only; the guard's deadline follows at once.
    async fn renew_lock(&mut self, cluster: Option<&Cluster>) -> Result<Step> {
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
            self.push_fence_deadline(self.last_dynamic.timing());
            Ok(Step::Continue)
        } else {
            warn!("lost the leader lock");
            self.lock_renewed = None;
            Ok(Step::Abort)
        }
    }

    /// Promotes the local replica (fenced from before its first write), then checkpoints in the background.
    async fn promote(&mut self, cluster: Option<&Cluster>) -> Result<Step> {
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

    /// Cancels the running job (a demotion must not wait for it).
    async fn cancel_job(&mut self, reason: &str) -> Result<Step> {
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

    /// Stops the primary; offline (no upstream) it comes back read-only at once, else it rejoins next cycle.
    async fn demote(
        &mut self,
        upstream: &Option<String>,
        cluster: Option<&Cluster>,
        dynamic: &DynamicConfig,
    ) -> Result<Step> {
        let params = dynamic.parameters();
        let up = named_upstream(upstream, cluster);
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

    /// Points the replica at `upstream` (its slot and timeline history first) and reloads.
    async fn follow(
        &mut self,
        upstream: &Option<String>,
        cluster: Option<&Cluster>,
        dynamic: &DynamicConfig,
    ) -> Result<Step> {
        let params = dynamic.parameters();
        let up = named_upstream(upstream, cluster);
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

    /// Writes the config key back from the cached copy, else bootstrap.dcs.
    async fn restore_config(&mut self) -> Result<Step> {
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

    /// Rewinds the data directory from member `from` (a background job).
    async fn rewind(&mut self, cluster: Option<&Cluster>, from: &String) -> Result<Step> {
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

    /// Hands the lock over (handover.rs) to the candidate, or to the healthiest ready member.
    async fn switchover(
        &mut self,
        candidate: &Option<String>,
        cluster: Option<&Cluster>,
        dynamic: &DynamicConfig,
    ) -> Result<Step> {
        let params = dynamic.parameters();
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
            handover::hand_over(self.pg.clone(), self.dcs.clone(), self.peers.clone(), plan),
        );
        Ok(Step::Continue)
    }

    /// Clears the switchover request: fulfilled, or refused with its reason.
    async fn clear_failover(
        &mut self,
        reason: &Option<String>,
        cluster: Option<&Cluster>,
    ) -> Result<Step> {
        let id = cluster
            .and_then(|c| c.failover.as_ref())
            .map(|f| f.mod_revision);
        if let Some(rev) = id {
            self.with_demote_deadline(self.dcs.set_failover(None, Some(rev)))
                .await?;
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

    /// Rewrites the parameters and pg_hba.conf from the dynamic configuration and reloads.
    async fn apply_config(&mut self, dynamic: &DynamicConfig) -> Result<Step> {
        let params = dynamic.parameters();
        self.pg.rewrite_parameters(&params)?;
        self.pg.write_hba(dynamic.pg_hba(), false)?;
        self.pg.reload().await?;
        info!(
            "configuration changed: rewrote the parameters and pg_hba.conf and reloaded PostgreSQL (parameters that need a restart show as pending_restart)"
        );
        self.run_callback(crate::callbacks::Event::Reload);
        Ok(Step::Continue)
    }

    /// Puts `synchronous_standby_names` in force (not again while the server ignores a value written moments ago).
    async fn set_sync_names(
        &mut self,
        names: &Option<Vec<String>>,
        any: Option<usize>,
        server: &Option<ServerStatus>,
        dynamic: &DynamicConfig,
    ) -> Result<Step> {
        let params = dynamic.parameters();
        // the same value written moments ago and still not what the server reports:
        // something overrides it (ALTER SYSTEM's postgresql.auto.conf, or PostgreSQL
        // refused it); rewriting and reloading every cycle would not help
        let wanted = names
            .as_ref()
            .map(|n| crate::synchronous::guc_value(n, any));
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
        self.pg.set_sync_setting(names.clone(), any);
        self.pg.rewrite_parameters(&params)?;
        if server.is_some() {
            self.pg.reload().await?;
        }
        match names {
            Some(n) => info!(
                "synchronous mode: synchronous_standby_names = '{}'",
                crate::synchronous::guc_value(n, any)
            ),
            None => info!(
                "synchronous mode is off: synchronous_standby_names is the configuration's again"
            ),
        }
        Ok(Step::Continue)
    }

    /// Publishes the synchronous standbys (or quorum commit's voters) in the sync key.
    async fn write_sync(
        &mut self,
        standbys: &[String],
        quorum: u64,
        version: Option<i64>,
        dynamic: &DynamicConfig,
    ) -> Result<Step> {
        let state = shared::dcs::SyncState {
            leader: Some(self.cfg.name.clone()),
            quorum,
            sync_standby: standbys.to_vec(),
        };
        if !self
            .with_demote_deadline(self.dcs.write_sync(&state, version))
            .await?
        {
            anyhow::bail!("the sync key changed meanwhile; looking again next cycle");
        }
        if dynamic.synchronous_mode() == shared::dcs::SyncMode::Quorum {
            info!(voters = ?standbys, quorum, "quorum commit: published the voters and the quorum a new primary must see");
        } else {
            info!(standbys = ?standbys, "synchronous mode: published the synchronous standbys");
        }
        Ok(Step::Continue)
    }

    /// Starts building this member's data directory from `source` (a member, or a backup when
    /// nobody leads), with the parameters and pg_hba of the dynamic configuration in force.
    pub(super) fn spawn_clone(
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

    pub(super) fn spawn_job(
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
    pub(super) async fn reap_job(&mut self) {
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
                if let Err(e) = self
                    .with_demote_deadline(self.dcs.set_failover(None, None))
                    .await
                {
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

    /// Fires the callback for `event` with the role as of the last cycle.
    pub(super) fn run_callback(&self, event: crate::callbacks::Event) {
        self.callbacks
            .fire(&self.cfg, event, self.last_role.as_str());
    }

    /// After this node handed the lock over: the switchover succeeded once another member holds
    /// the lock and runs as primary; it failed if nobody did within ttl + 10 s.
    pub(super) fn follow_handover(&mut self, cluster: &Cluster, timing: shared::dcs::Timing) {
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
}

/// The upstream member an action names, with its address from the member keys.
fn named_upstream(upstream: &Option<String>, cluster: Option<&Cluster>) -> Option<Upstream> {
    upstream_of(cluster?, upstream.as_deref()?)
}
