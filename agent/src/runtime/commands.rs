//! The agent's side of the local operations the REST API hands it: restart (now or scheduled,
//! with Patroni's filters), cancelling a scheduled restart, reinitialize, and reload of the YAML
//! file. Each is answered with a status code and a sentence; a restart is answered when it has
//! finished.

use super::{Agent, Job};
use crate::jobs::start_postgres;
use crate::postgres::Upstream;
use crate::rest_write::{Command, Envelope, Reply};
use serde_json::{Value, json};
use shared::config::Config;
use shared::dcs::Kv;
use shared::ops::RestartRequest;
use std::sync::Arc;
use std::time::Duration;
use tracing::{error, info, warn};

/// A job's name as Patroni names its background actions ("restart already in progress").
fn job_name(kind: super::Job) -> String {
    format!("{kind:?}").to_lowercase()
}

fn answer(reply: Option<tokio::sync::oneshot::Sender<Reply>>, code: u16, text: impl Into<String>) {
    if let Some(tx) = reply {
        let _ = tx.send((code, text.into()));
    }
}

impl<K: Kv> Agent<K> {
    pub(super) async fn on_command(&mut self, envelope: Envelope) {
        let Envelope { command, reply } = envelope;
        match command {
            Command::Restart(req) if req.schedule.is_some() => {
                let r = self.schedule_restart(req).await;
                self.show_scheduled_restart();
                answer(Some(reply), r.0, r.1);
            }
            Command::Restart(req) => self.start_restart(req, Some(reply)),
            Command::CancelRestart => {
                let r = match self.scheduled_restart.take() {
                    Some(_) => {
                        info!("the scheduled restart was cancelled");
                        (200, "scheduled restart deleted".to_string())
                    }
                    None => (404, "no restarts are scheduled".to_string()),
                };
                self.show_scheduled_restart();
                answer(Some(reply), r.0, r.1);
            }
            Command::Reinitialize { force, from_leader } => {
                let r = self.reinitialize(force, from_leader).await;
                answer(Some(reply), r.0, r.1);
            }
            Command::Reload => {
                let r = self.reload().await;
                answer(Some(reply), r.0, r.1);
            }
        }
        self.wake.notify_one();
    }

    /// Puts a scheduled (or cancelled) restart into the REST snapshot before the caller is
    /// answered, so a read right after the answer sees it.
    fn show_scheduled_restart(&self) {
        let scheduled = self.scheduled_restart_json(false);
        self.snapshot.send_if_modified(|s| {
            if s.scheduled_restart == scheduled {
                return false;
            }
            Arc::make_mut(s).scheduled_restart = scheduled.clone();
            true
        });
    }

    /// When the running postmaster started, asked of PostgreSQL itself (the snapshot may
    /// predate a restart that just finished); `None` when it does not answer.
    async fn postmaster_start_time(&self) -> Option<String> {
        match self.pg.status().await {
            Ok(s) => Some(s.postmaster_start_time),
            Err(_) => None,
        }
    }

    async fn schedule_restart(&mut self, req: RestartRequest) -> Reply {
        let snap = self.snapshot.borrow().clone();
        if snap.paused {
            return (500, "Can't schedule restart in the paused state".into());
        }
        if self.scheduled_restart.is_some() {
            return (409, "Another restart is already scheduled".into());
        }
        let started = self.postmaster_start_time().await.unwrap_or_default();
        let at = req.schedule.map(|t| t.to_rfc3339()).unwrap_or_default();
        info!(at, "restart scheduled");
        self.scheduled_restart = Some((req, started));
        (202, "Restart scheduled".into())
    }

    /// `scheduled_restart` as the member key and `/patroni` show it.
    pub(super) fn scheduled_restart_json(&self, with_start_time: bool) -> Option<Value> {
        let (req, started) = self.scheduled_restart.as_ref()?;
        let mut v = req.to_json();
        if let Some(o) = v.as_object_mut() {
            if let Some(s) = o.remove("schedule") {
                o.insert("schedule".into(), s);
            }
            if with_start_time {
                o.insert("postmaster_start_time".into(), json!(started));
            }
        }
        Some(v)
    }

    /// Runs a scheduled restart once it is due; returns how long until it is, if it is later.
    pub(super) async fn run_scheduled_restart(&mut self, now_ms: i64) -> Option<Duration> {
        let (req, started) = self.scheduled_restart.as_ref()?;
        let due = req.schedule.map(|t| t.timestamp_millis()).unwrap_or(now_ms);
        if due > now_ms {
            return Some(Duration::from_millis((due - now_ms) as u64));
        }
        if self.job.is_some() {
            return Some(Duration::from_millis(500));
        }
        let (req, started) = (req.clone(), started.clone());
        self.scheduled_restart = None;
        let now_started = self.postmaster_start_time().await;
        if now_started.as_deref() != Some(started.as_str()) {
            info!(
                "PostgreSQL was restarted (or stopped) since the restart was scheduled: dropping the scheduled restart"
            );
            return None;
        }
        info!("running the scheduled restart");
        self.start_restart(req, None);
        None
    }

    /// Restarts PostgreSQL in its current role with fresh configuration, if the request's
    /// filters hold; `reply` is answered when the restart has finished.
    pub(super) fn start_restart(
        &mut self,
        req: RestartRequest,
        reply: Option<tokio::sync::oneshot::Sender<Reply>>,
    ) {
        if let Some(j) = &self.job {
            answer(
                reply,
                503,
                format!("{} already in progress", job_name(j.kind)),
            );
            return;
        }
        let snap = self.snapshot.borrow().clone();
        if snap.server.is_none() && snap.state == shared::types::PgState::Starting {
            warn!("restart refused: postgres is still starting");
            answer(reply, 503, "postgres is still starting");
            return;
        }
        if snap.server.is_none() && !self.pg.data_dir_initialized() {
            let why =
                "restart failed: PostgreSQL is not running and there is no data directory yet";
            warn!("restart refused: {why}");
            answer(reply, 503, why);
            return;
        }
        // a stopped server (e.g. stopped by hand while paused) is started, as Patroni does —
        // always read-only, following the leader when another member leads: whether it may be
        // the primary (the lock still held, no standby cluster, no unfinished rewind) is for
        // the HA loop's next cycle to decide, never for a request on a view that may be stale
        let in_recovery = snap.server.as_ref().is_none_or(|s| s.in_recovery);
        // the filters compare with the role it had (its last known one while stopped)
        let role = match (&snap.server, snap.role) {
            (Some(s), _) if !s.in_recovery => "primary",
            (None, shared::types::Role::Primary) => "primary",
            _ => "replica",
        };
        let version = snap.server.as_ref().map_or_else(
            || self.pg.catalog().map_or(0, |c| c.version_num),
            |s| s.server_version,
        );
        let pending = snap
            .server
            .as_ref()
            .is_some_and(|s| s.pending_restart.is_some());
        if let Some(why) = req.unmet(role, version, pending) {
            info!("restart not done: {why}");
            // Patroni's words exactly (scripts match them); the reason is in the log
            answer(reply, 503, "restart conditions are not satisfied");
            return;
        }
        let replica_of = match (&snap.server, in_recovery) {
            (_, false) => None,
            (Some(_), true) => Some(self.pg.configured_upstream().and_then(|hp| {
                let (host, port) = shared::config::split_host_port(&hp)?;
                Some(Upstream { host, port })
            })),
            (None, true) => Some(snap.cluster.as_ref().and_then(|c| {
                let leader = c.leader.as_ref().filter(|l| l.name != self.cfg.name)?;
                super::upstream_of(c, &leader.name)
            })),
        };
        let params = self.last_dynamic.parameters();
        let hba = self.last_dynamic.pg_hba();
        let timeout =
            Duration::from_secs(req.timeout.unwrap_or(self.cfg.postgresql.pg_ctl_timeout));
        let pg = self.pg.clone();
        if snap.server.is_none() {
            info!(
                role,
                "starting PostgreSQL as requested (a restart of a stopped server)"
            );
        } else {
            info!(role, "restarting PostgreSQL as requested");
        }
        self.last_job_failure = None;
        self.spawn_job(Job::Restart, async move {
            pg.stop("fast", timeout).await?;
            start_postgres(pg, params, hba, replica_of, timeout).await
        });
        match self.job.as_mut() {
            Some(j) => j.reply = reply,
            None => answer(reply, 503, "restart failed: the job could not be started"),
        }
    }

    async fn reinitialize(&mut self, force: bool, from_leader: bool) -> Reply {
        let cluster = match self.dcs.load().await {
            Ok(c) => c,
            Err(e) => return (503, format!("cannot read the cluster from etcd: {e}")),
        };
        match &cluster.leader {
            None => return (503, "Cluster has no leader, can not reinitialize".into()),
            Some(l) if l.name == self.cfg.name => {
                return (503, "I am the leader, can not reinitialize".into());
            }
            _ => {}
        }
        if let Some(j) = self.job.take() {
            if !force {
                let text = format!("{} already in progress", job_name(j.kind));
                self.job = Some(j);
                return (503, text);
            }
            warn!(job = ?j.kind, "reinitialize with force: cancelling the running job");
            j.handle.abort();
            let _ = j.handle.await;
        }
        warn!(
            data_dir = %self.pg.data_dir().display(),
            from_leader,
            "reinitializing as requested: removing the data directory to clone it again"
        );
        self.clone_from_leader = from_leader;
        *self.rewind_ok_for.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.last_job_failure = None;
        let pg = self.pg.clone();
        let timeout = Duration::from_secs(self.cfg.postgresql.pg_ctl_timeout);
        self.spawn_job(Job::Wipe, async move { pg.wipe(timeout).await });
        (200, "reinitialize started".into())
    }

    /// Re-reads the configuration (file and `PATRONI_*` variables) and puts it in force. A
    /// file with errors changes nothing. Settings fixed for the agent's life are kept, with a
    /// warning; PostgreSQL parameters are applied by the next cycle (reload, or pending restart).
    async fn reload(&mut self) -> Reply {
        let origin = self.cfg.origin.clone();
        let path = std::path::Path::new(&origin);
        let loaded = if path.exists() {
            Config::load(Some(path), std::env::vars())
        } else {
            Config::load(None, std::env::vars())
        };
        let mut new = match loaded {
            Ok(c) => c,
            Err(e) => {
                error!("reload failed, the running configuration is kept: {e}");
                return (
                    400,
                    format!("reload failed, the running configuration is kept: {e}"),
                );
            }
        };
        let mut issues = new.check_environment();
        if issues.is_empty() {
            issues = crate::postgres::binaries_issues(&new);
        }
        if !issues.is_empty() {
            let text: Vec<String> = issues
                .iter()
                .map(|i| format!("{}: {}", i.key, i.message))
                .collect();
            error!(
                "reload failed, the running configuration is kept: {}",
                text.join("; ")
            );
            return (
                400,
                format!(
                    "reload failed, the running configuration is kept: {}",
                    text.join("; ")
                ),
            );
        }
        for w in &new.warnings {
            warn!(key = w.key, "configuration: {}", w.message);
        }
        let old = self.cfg.clone();
        let mut kept = Vec::new();
        if new.name != old.name {
            kept.push("name");
            new.name = old.name.clone();
        }
        if new.scope != old.scope {
            kept.push("scope");
            new.scope = old.scope.clone();
        }
        if new.namespace != old.namespace {
            kept.push("namespace");
            new.namespace = old.namespace.clone();
        }
        if new.restapi.listen != old.restapi.listen {
            kept.push("restapi.listen");
            new.restapi.listen = old.restapi.listen.clone();
        }
        if new.restapi.certfile.is_some() != old.restapi.certfile.is_some() {
            kept.push("restapi.certfile (switching between http and https)");
            new.restapi.certfile = old.restapi.certfile.clone();
            new.restapi.keyfile = old.restapi.keyfile.clone();
        }
        if new.postgresql.data_dir != old.postgresql.data_dir {
            kept.push("postgresql.data_dir");
            new.postgresql.data_dir = old.postgresql.data_dir.clone();
        }
        if new.raft != old.raft {
            // the etcd member runs with the settings it started with
            kept.push("raft");
            new.raft = old.raft.clone();
            new.etcd = old.etcd.clone();
        }
        for k in &kept {
            warn!(
                key = k,
                "reload: {k} cannot change while the agent runs; keeping the old value (restart the agent to change it)"
            );
        }
        // the REST certificate is read and checked first, put in force only once nothing else
        // can fail
        let mut rest_tls = None;
        if let (Some(tls), Some(cert)) = (&self.tls, &new.restapi.certfile) {
            let key = new.restapi.keyfile.clone().unwrap_or_else(|| cert.clone());
            match crate::rest_access::server_tls(&new.restapi, cert, &key) {
                Ok(config) => rest_tls = Some((tls.clone(), config, cert.clone())),
                Err(e) => {
                    let reason = format!(
                        "reload failed, the running configuration is kept: restapi.certfile {cert} / keyfile {key}: {e}"
                    );
                    error!("{reason}");
                    return (400, reason);
                }
            }
        }
        // etcd: endpoints, TLS files and credentials are proved (the same cluster answers
        // through them) before the connection moves to them; the files are read again even
        // when their names did not change (renewed certificates)
        if new.etcd != old.etcd {
            if let Err(e) = self.dcs.reconnect(&new.etcd).await {
                let reason = format!(
                    "reload failed, the running configuration is kept: etcd3 ({}): {e}",
                    new.etcd.endpoints().join(",")
                );
                error!("{reason}");
                return (400, reason);
            }
            info!(endpoints = ?new.etcd.endpoints(), "reload: etcd reached with the new settings");
        } else if new.etcd.tls() {
            // the same settings: renewed files are taken when etcd answers through them; an
            // etcd outage must not stop the rest of the reload
            if let Err(e) = self.dcs.reconnect(&new.etcd).await {
                warn!(
                    "reload: etcd3 TLS files not re-read ({e}); the current connection stays, reload again once etcd answers"
                );
            }
        }
        // the superuser's TLS options for the agent's own connections, checked now rather than
        // at the next new connection
        if let Err(e) = self.pg.check_superuser_tls(&new) {
            let reason = format!("reload failed, the running configuration is kept: {e:#}");
            error!("{reason}");
            return (400, reason);
        }
        if let Some((tls, config, cert)) = rest_tls {
            tls.reload_from_config(config);
            info!(certfile = cert, "reloaded the REST certificate");
        }
        let new = Arc::new(new);
        *self.rest_auth.write().unwrap_or_else(|p| p.into_inner()) =
            new.restapi.authentication.clone();
        // the allowlist's names are resolved again, as Patroni does on a reload
        *self.rest_access.write().unwrap_or_else(|p| p.into_inner()) =
            Arc::new(crate::rest_access::Access::from_config(&new.restapi).await);
        self.pg.set_cfg(new.clone());
        if let Err(e) = self.pg.write_pgpass() {
            warn!("reload: cannot rewrite the pgpass file: {e:#}");
        }
        self.watchdog.reconfigure(new.watchdog.clone());
        // the guard revokes the lease with the same TLS files and credentials
        if let Some(g) = self.fence.as_mut() {
            g.reconfigure(&new.etcd);
        }
        // changed role passwords are set on the primary (the change replicates), on a session
        // of their own beside the loop, never logged
        if passwords(&old) != passwords(&new)
            && self.last_role == shared::types::Role::Primary
            && self.lock_renewed.is_some()
        {
            let pg = self.pg.clone();
            let before = old.clone();
            let target = Arc::new(new.clone());
            // a newer rotation replaces one still running
            if let Some(previous) = self.password_task.take() {
                previous.abort();
            }
            self.password_task = Some(tokio::spawn(async move {
                // logged in with the old password, which the server still has
                let set = match pg.create_roles_as(&before, &target).await {
                    Err(_) => pg.create_roles_as(&target, &target).await,
                    done => done,
                };
                match set {
                    Ok(()) => info!("reload: the changed role passwords are set"),
                    Err(e) => error!(
                        "reload: cannot set the changed role passwords: {e:#}; set them with ALTER ROLE, or reload again"
                    ),
                }
            }));
        }
        self.cfg = new;
        info!(config = origin, "configuration reloaded");
        self.run_callback(crate::callbacks::Event::Reload);
        (202, "reload scheduled".into())
    }
}

/// The roles' names and passwords in `postgresql.authentication`, to notice a change.
fn passwords(cfg: &Config) -> Vec<(String, Option<String>)> {
    let pg = &cfg.postgresql;
    [
        Some(&pg.superuser),
        Some(&pg.replication),
        pg.rewind.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|u| {
        (
            u.username.clone(),
            u.password.as_ref().map(|p| p.expose().to_string()),
        )
    })
    .collect()
}
