//! Observation: what the agent sees of PostgreSQL (its state, WAL position, timeline,
//! synchronous standbys), of the leader lock's freshness and of the peers' REST APIs, turned
//! into the [`PgView`] and [`PeerReport`]s the pure core decides on; and the watchdog and the
//! fencing window that follow from them.

use super::{Agent, SYNC_SETTLE, futures_join_all, standby_replica_methods};
use crate::ha::{self, DataDir, Job, PeerReport, PgView, RewindPolicy, WalEnd};
use crate::postgres::ServerStatus;
use shared::api::PeerStatus;
use shared::dcs::{Cluster, DynamicConfig, Kv};
use shared::types::{PgState, Role};
use std::time::Duration;
use tokio::time::Instant;
use tracing::warn;

impl<K: Kv> Agent<K> {
    /// The deadline of one etcd call of the loop: retry_timeout, and for a lock holder never
    /// past its demotion point (at least 200 ms).
    pub(super) fn dcs_call_limit(&self, t: shared::dcs::Timing) -> Duration {
        let limit = Duration::from_secs(t.retry_timeout);
        match self.loop_deadline() {
            Some(d) => limit
                .min(d.saturating_duration_since(Instant::now()))
                .max(Duration::from_millis(200)),
            None => limit,
        }
    }

    pub(super) async fn observe_pg(
        &mut self,
        cluster: Option<&Cluster>,
    ) -> (PgView, Option<ServerStatus>) {
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
        } else if self.job.is_some() || running {
            // pg_control may be half-written while a job runs; a running server that does not
            // answer is not asked about through pg_controldata either (on a stuck disk that
            // waits too, and the renewal after it comes late): reuse what we knew
            DataDir::Present {
                sysid: self.pg.cached_sysid().unwrap_or_default(),
                was_primary: false,
            }
        } else {
            match self.pg.controldata().await {
                Ok(cd) => {
                    self.note_rewind_capability(cd.wal_log_hints || cd.data_checksums);
                    stopped_end = cd.wal_end().map(|(tl, lsn)| WalEnd {
                        timeline: self.pg.wal_timeline(tl, lsn),
                        lsn,
                    });
                    DataDir::Present {
                        was_primary: cd.was_primary(),
                        sysid: cd.system_identifier,
                    }
                }
                Err(e) => {
                    // never taken for an empty directory: that would clone over the data
                    warn!(
                        "cannot read pg_control: {e:#}; nothing is decided on the data directory until pg_controldata answers"
                    );
                    DataDir::Unreadable
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
                // a replica's timeline is already the one its WAL files hold (Postgres::status)
                Some(s) => s
                    .wal_position()
                    .zip(s.timeline)
                    .map(|(lsn, timeline)| WalEnd { timeline, lsn }),
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

    /// Fills in the standbys connected to a primary and how far each synchronous one is
    /// confirmed (see [`crate::synchronous`]).
    pub(super) fn observe_sync(&mut self, view: &mut PgView, server: Option<&ServerStatus>) {
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

    /// The lock was renewed recently enough to act on: less than ttl - retry_timeout ago.
    pub(super) fn lock_fresh(&self) -> bool {
        self.demote_deadline().is_some_and(|d| Instant::now() < d)
    }

    /// How long the local primary may stay writable without news from this loop, for the
    /// fencing guard: until its last lock renewal (or last failsafe round every member
    /// confirmed) plus ttl, less a margin of half retry_timeout (at least 1 s) — after the loop's
    /// own demotion deadline, before the lease can end. A primary holding neither gets one such
    /// span from now.
    pub(super) fn fence_window(&self, t: shared::dcs::Timing) -> Duration {
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

    /// Moves the armed guard's deadline to what the lease (or failsafe confirmation) now
    /// covers: the guard fences the primary if this loop does not come back in time. Called
    /// at the end of each cycle and at once after a renewal (the rest of a cycle with slow
    /// etcd answers can outlast the previous renewal's deadline).
    pub(super) fn push_fence_deadline(&mut self, t: shared::dcs::Timing) {
        if self.fencing() == crate::guard::Fencing::Armed {
            let window = self.fence_window(t);
            if let Some(g) = self.fence.as_mut() {
                g.deadline(window);
            }
        }
    }

    /// While this node holds the lock: when it must have renewed it or demote (its last
    /// renewal + ttl - retry_timeout).
    pub(super) fn demote_deadline(&self) -> Option<Instant> {
        let t = self.last_dynamic.timing();
        let ttl = t.ttl.min(self.lock_renewed_ttl);
        self.lock_renewed
            .map(|r| r + Duration::from_secs(ttl.saturating_sub(t.retry_timeout)))
    }

    /// The point this loop's etcd calls and sleeps are bounded by: the demotion deadline, and
    /// while the fencing guard is armed without one (a switchover stops renewing the lock but
    /// keeps the lease until PostgreSQL is stopped; a failed one leaves the primary running)
    /// the same point counted from the last renewal: the cycles of a primary never outlast
    /// the moment its agent must have made it read-only.
    ///
    /// Only while the guard is armed (a server that may take writes): once it is demoted, or
    /// while it is a replica or paused, there is no demotion to make in time, and a deadline
    /// long past would cap every etcd call at 200 ms (a slow etcd never read again). A primary
    /// kept by failsafe confirmations counts from the last one as well.
    pub(super) fn loop_deadline(&self) -> Option<Instant> {
        if self.fencing() != crate::guard::Fencing::Armed {
            return None;
        }
        let t = self.last_dynamic.timing();
        let ttl = t.ttl.min(self.lock_renewed_ttl);
        let lease = self.demote_deadline().or_else(|| {
            self.lease_kept
                .map(|r| r + Duration::from_secs(ttl.saturating_sub(t.retry_timeout)))
        });
        let failsafe = self
            .failsafe_confirmed
            .map(|r| r + Duration::from_secs(t.ttl.saturating_sub(t.retry_timeout)));
        lease.into_iter().chain(failsafe).max()
    }

    /// Keeps the watchdog alive while this node leads and renewed the lock this cycle (or runs
    /// confirmed in failsafe mode); disarms it once it does not lead, or the cluster is paused.
    /// While etcd cannot be read it is left to run down: the demotion that follows disarms it.
    pub(super) fn tend_watchdog(
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

    pub(super) fn use_pg_rewind(&self, dynamic: &DynamicConfig) -> bool {
        self.cfg
            .postgresql
            .use_pg_rewind
            .or_else(|| dynamic.use_pg_rewind())
            .unwrap_or(false)
    }

    /// Whether a member without data may be built while nobody leads: a replica method with
    /// `no_leader` among this member's (in a standby cluster, among `standby_cluster`'s own,
    /// none when it lists none — as Patroni).
    pub(super) fn can_build_without_leader(&self, dynamic: &DynamicConfig) -> bool {
        crate::postgres::methods::can_build_without_leader(
            &self.cfg.postgresql,
            dynamic.postgresql_section().as_ref(),
            standby_replica_methods(dynamic).as_deref(),
        )
    }

    pub(super) fn rewind_policy(&self, dynamic: &DynamicConfig) -> RewindPolicy {
        let pg = &self.cfg.postgresql;
        RewindPolicy {
            possible: self.use_pg_rewind(dynamic) && self.rewind_capable != Some(false),
            remove_on_failure: pg.remove_data_directory_on_rewind_failure,
            remove_on_diverged: pg.remove_data_directory_on_diverged_timelines,
        }
    }

    pub(super) fn note_rewind_capability(&mut self, capable: bool) {
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

    pub(super) async fn probe_peers(&self, cluster: &Cluster) -> Vec<PeerReport> {
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
                        timeline: st.as_ref().and_then(|s| s.timeline),
                        failover_priority: priority,
                        no_failover,
                        watchdog_failed: st.as_ref().is_some_and(|s| s.watchdog_failed),
                        standing_down: st.as_ref().is_some_and(|s| s.standing_down),
                    }
                }
            });
        futures_join_all(futures).await
    }

    pub(super) fn pg_state(&self, v: &PgView) -> PgState {
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

    pub(super) fn role(&mut self, v: &PgView) -> Role {
        let role = if matches!(
            v.data,
            DataDir::Empty | DataDir::Foreign | DataDir::Unreadable
        ) {
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
}
