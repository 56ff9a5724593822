//! Control of the local PostgreSQL server: initdb, pg_basebackup, starting the postmaster as our
//! child (so its exit is seen at once), stopping, promoting, the configuration files pgpilot
//! manages (`postgresql.conf`, `pg_hba.conf`, `standby.signal`, the pgpass file), and the libpq
//! queries that observe the server's state.

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Map, Value};
use shared::config::{Config, PgUser, guc_value};
use shared::types::Lsn;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::{Mutex, Notify};
use tracing::{debug, info, warn};

/// What `pg_controldata` says about a data directory.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ControlData {
    pub system_identifier: String,
    pub cluster_state: String,
    pub timeline: Option<u64>,
    pub checkpoint_lsn: Option<Lsn>,
    pub wal_log_hints: bool,
    pub data_checksums: bool,
}

impl ControlData {
    /// Parses `pg_controldata` output (run with `LC_ALL=C`).
    pub fn parse(text: &str) -> ControlData {
        let mut c = ControlData::default();
        for line in text.lines() {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let v = v.trim();
            match k.trim() {
                "Database system identifier" => c.system_identifier = v.to_string(),
                "Database cluster state" => c.cluster_state = v.to_string(),
                "Latest checkpoint's TimeLineID" => c.timeline = v.parse().ok(),
                "Latest checkpoint location" => c.checkpoint_lsn = v.parse().ok(),
                "wal_log_hints setting" => c.wal_log_hints = v == "on",
                "Data page checksum version" => c.data_checksums = v != "0",
                _ => {}
            }
        }
        c
    }

    /// Whether the server last ran as a primary.
    pub fn was_primary(&self) -> bool {
        matches!(self.cluster_state.as_str(), "in production" | "shut down")
    }
}

/// A walsender connected to this server.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Walsender {
    pub usename: Option<String>,
    pub application_name: String,
    pub client_addr: Option<String>,
    pub state: Option<String>,
    pub sync_state: Option<String>,
    pub sync_priority: Option<i32>,
}

/// The server's state from one round of queries.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServerStatus {
    pub in_recovery: bool,
    /// Primary: flush LSN.
    pub write_lsn: Option<u64>,
    pub receive_lsn: Option<u64>,
    pub replay_lsn: Option<u64>,
    pub replayed_timestamp: Option<String>,
    pub replay_paused: bool,
    pub timeline: Option<u64>,
    pub postmaster_start_time: String,
    pub server_version: i32,
    pub system_identifier: String,
    /// `streaming` when a WAL receiver streams, `in archive recovery` otherwise (replicas).
    pub replication_state: Option<String>,
    pub replication: Vec<Walsender>,
}

impl ServerStatus {
    /// Patroni's WAL position: primary flush, replica max(receive, replay).
    pub fn wal_position(&self) -> Option<u64> {
        if self.in_recovery {
            match (self.receive_lsn, self.replay_lsn) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            }
        } else {
            self.write_lsn
        }
    }
}

/// One line of a timeline history file: parent timeline, switch LSN, reason.
pub type TimelineSwitch = (u64, u64, String);

/// Where a replica streams from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub host: String,
    pub port: u16,
}

/// Handle on the local PostgreSQL.
pub struct Postgres {
    cfg: Arc<Config>,
    /// The postmaster we started, if any; `None` for one adopted from a previous agent.
    child_pid: Mutex<Option<u32>>,
    client: Mutex<Option<Arc<tokio_postgres::Client>>>,
    /// Signalled when the postmaster we started exits.
    pub exited: Arc<Notify>,
    sysid_cache: std::sync::Mutex<Option<String>>,
}

/// Quotes a GUC value for postgresql.conf.
fn quote_guc(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "''"))
}

/// Quotes a libpq connection-string value.
fn quote_conninfo(v: &str) -> String {
    if !v.is_empty() && !v.contains([' ', '\'', '\\']) {
        v.to_string()
    } else {
        format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
    }
}

/// Escapes a pgpass field.
fn pgpass_field(v: &str) -> String {
    v.replace('\\', "\\\\").replace(':', "\\:")
}

/// Escapes an SQL string literal.
fn sql_literal(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

/// Quotes an SQL identifier.
fn sql_ident(v: &str) -> String {
    format!("\"{}\"", v.replace('"', "\"\""))
}

impl Postgres {
    pub fn new(cfg: Arc<Config>) -> Postgres {
        Postgres {
            cfg,
            child_pid: Mutex::new(None),
            client: Mutex::new(None),
            exited: Arc::new(Notify::new()),
            sysid_cache: std::sync::Mutex::new(None),
        }
    }

    pub fn data_dir(&self) -> &Path {
        &self.cfg.postgresql.data_dir
    }

    fn conf_dir(&self) -> PathBuf {
        self.cfg
            .postgresql
            .config_dir
            .clone()
            .unwrap_or_else(|| self.data_dir().to_path_buf())
    }

    fn bin(&self, name: &str) -> PathBuf {
        self.cfg.postgresql.binary(name)
    }

    /// A command for a PostgreSQL binary, with pgpilot's own secrets kept out of its environment.
    fn command(&self, name: &str) -> Command {
        let mut cmd = Command::new(self.bin(name));
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("PATRONI_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("LC_ALL", "C")
            .env("PGPASSFILE", &self.cfg.postgresql.pgpass);
        cmd.stdin(Stdio::null()).kill_on_drop(false);
        cmd
    }

    /// Runs a command to completion, returning stdout or an error carrying its stderr.
    async fn run(&self, mut cmd: Command, what: &str, timeout: Duration) -> Result<String> {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot run {what}: is postgresql.bin_dir right?"))?;
        let out = tokio::time::timeout(timeout, child.wait_with_output())
            .await
            .map_err(|_| anyhow!("{what} did not finish within {}s", timeout.as_secs()))??;
        if !out.status.success() {
            bail!(
                "{what} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Whether the data directory holds an initialized cluster.
    pub fn data_dir_initialized(&self) -> bool {
        self.data_dir().join("PG_VERSION").is_file()
            && self.data_dir().join("global/pg_control").is_file()
    }

    /// Whether the data directory is missing or empty (safe to initialize or clone into).
    pub fn data_dir_is_empty(&self) -> bool {
        match std::fs::read_dir(self.data_dir()) {
            Ok(mut entries) => entries.next().is_none(),
            Err(e) => e.kind() == std::io::ErrorKind::NotFound,
        }
    }

    /// Reads pg_control.
    pub async fn controldata(&self) -> Result<ControlData> {
        let mut cmd = self.command("pg_controldata");
        cmd.arg("-D").arg(self.data_dir());
        let out = self
            .run(cmd, "pg_controldata", Duration::from_secs(10))
            .await?;
        let cd = ControlData::parse(&out);
        if cd.system_identifier.is_empty() {
            bail!("pg_controldata printed no system identifier");
        }
        *self.sysid_cache.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(cd.system_identifier.clone());
        Ok(cd)
    }

    /// The postmaster PID from `postmaster.pid`, if that process is alive and is a postgres.
    pub fn running_pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        let pid: i32 = text.lines().next()?.trim().parse().ok()?;
        if pid <= 0 {
            return None;
        }
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        let comm = comm.trim();
        if comm == "postgres" || comm == "postmaster" {
            Some(pid)
        } else {
            None
        }
    }

    /// Queries the server's state. Fails when it does not accept connections.
    pub async fn status(&self) -> Result<ServerStatus> {
        let client = self.client().await?;
        let res = Self::query_status(&client).await;
        if res.is_err() {
            *self.client.lock().await = None;
        }
        res
    }

    async fn query_status(client: &tokio_postgres::Client) -> Result<ServerStatus> {
        const Q: &str = "SELECT pg_is_in_recovery(),
  CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_flush_lsn()::text END,
  pg_last_wal_receive_lsn()::text,
  pg_last_wal_replay_lsn()::text,
  to_char(pg_last_xact_replay_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00:00',
  CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() ELSE false END,
  CASE WHEN pg_is_in_recovery()
       THEN COALESCE((SELECT received_tli FROM pg_stat_wal_receiver WHERE status = 'streaming'),
                     (SELECT timeline_id FROM pg_control_checkpoint()))::bigint
       ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint END,
  to_char(pg_postmaster_start_time() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00:00',
  current_setting('server_version_num')::int,
  (SELECT system_identifier FROM pg_control_system())::text,
  (SELECT status FROM pg_stat_wal_receiver LIMIT 1),
  (SELECT written_lsn::text FROM pg_stat_wal_receiver LIMIT 1)";
        let row = client.query_one(Q, &[]).await?;
        let lsn = |i: usize| -> Option<u64> {
            row.get::<_, Option<String>>(i)
                .and_then(|s| s.parse::<Lsn>().ok())
                .map(|l| l.0)
        };
        let in_recovery: bool = row.get(0);
        let receiver_status: Option<String> = row.get(10);
        let mut receive = lsn(2);
        if let Some(written) = lsn(11) {
            receive = Some(receive.map_or(written, |r| r.max(written)));
        }
        let mut st = ServerStatus {
            in_recovery,
            write_lsn: lsn(1),
            receive_lsn: receive,
            replay_lsn: lsn(3),
            replayed_timestamp: row.get(4),
            replay_paused: row.get(5),
            timeline: row.get::<_, Option<i64>>(6).map(|t| t as u64),
            postmaster_start_time: row.get::<_, Option<String>>(7).unwrap_or_default(),
            server_version: row.get(8),
            system_identifier: row.get::<_, Option<String>>(9).unwrap_or_default(),
            replication_state: None,
            replication: Vec::new(),
        };
        if in_recovery {
            st.replication_state = Some(if receiver_status.as_deref() == Some("streaming") {
                "streaming".into()
            } else {
                "in archive recovery".into()
            });
        } else {
            let rows = client
                .query(
                    "SELECT usename::text, application_name, client_addr::text, state, sync_state, sync_priority
                     FROM pg_stat_replication ORDER BY application_name",
                    &[],
                )
                .await?;
            st.replication = rows
                .iter()
                .map(|r| Walsender {
                    usename: r.get(0),
                    application_name: r.get::<_, Option<String>>(1).unwrap_or_default(),
                    client_addr: r.get(2),
                    state: r.get(3),
                    sync_state: r.get(4),
                    sync_priority: r.get(5),
                })
                .collect();
        }
        Ok(st)
    }

    /// A connection to the local server as the superuser (reused across cycles).
    async fn client(&self) -> Result<Arc<tokio_postgres::Client>> {
        let mut guard = self.client.lock().await;
        if let Some(c) = guard.as_ref()
            && !c.is_closed()
        {
            return Ok(c.clone());
        }
        let su = &self.cfg.postgresql.superuser;
        let mut pgc = tokio_postgres::Config::new();
        let (host, port) = self.cfg.postgresql.local_host_port();
        if self.cfg.postgresql.use_unix_socket {
            let dir = self
                .socket_dir()
                .unwrap_or_else(|| PathBuf::from("/var/run/postgresql"));
            pgc.host_path(dir);
        } else {
            pgc.host(&host);
        }
        pgc.port(port)
            .user(&su.username)
            .dbname(&self.cfg.postgresql.database)
            .application_name("pgpilot")
            .connect_timeout(Duration::from_secs(3));
        if let Some(pw) = &su.password {
            pgc.password(pw.expose());
        }
        let (client, conn) = pgc
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| anyhow!("cannot connect to local PostgreSQL at {host}:{port}: {e:#}"))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!("local PostgreSQL connection closed: {e}");
            }
        });
        let client = Arc::new(client);
        *guard = Some(client.clone());
        Ok(client)
    }

    fn socket_dir(&self) -> Option<PathBuf> {
        self.cfg
            .postgresql
            .parameters
            .get("unix_socket_directories")
            .map(guc_value)
            .and_then(|s| s.split(',').next().map(|d| PathBuf::from(d.trim())))
    }

    /// Drops the cached connection (after a stop or restart).
    pub async fn disconnect(&self) {
        *self.client.lock().await = None;
    }

    /// Runs a statement as the superuser. The statement is never logged: it may carry a password.
    pub async fn execute(&self, sql: &str) -> Result<()> {
        let client = self.client().await?;
        client
            .batch_execute(sql)
            .await
            .map_err(|e| anyhow!("{e}"))?;
        Ok(())
    }

    /// Writes the pgpass file with the replication and superuser credentials (mode 0600).
    pub fn write_pgpass(&self) -> Result<()> {
        let mut text = String::new();
        for user in [
            &self.cfg.postgresql.replication,
            &self.cfg.postgresql.superuser,
        ]
        .into_iter()
        .chain(self.cfg.postgresql.rewind.as_ref())
        {
            if let Some(pw) = &user.password {
                text.push_str(&format!(
                    "*:*:*:{}:{}\n",
                    pgpass_field(&user.username),
                    pgpass_field(pw.expose())
                ));
            }
        }
        let path = &self.cfg.postgresql.pgpass;
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent).ok();
        }
        write_private(path, &text).context("cannot write the pgpass file (postgresql.pgpass)")
    }

    /// A libpq connection string for `user` to `host:port`, password taken from the pgpass file.
    pub fn conninfo(&self, user: &PgUser, host: &str, port: u16, extra: &[(&str, &str)]) -> String {
        let mut parts = vec![
            format!("user={}", quote_conninfo(&user.username)),
            format!(
                "passfile={}",
                quote_conninfo(&self.cfg.postgresql.pgpass.to_string_lossy())
            ),
            format!("host={}", quote_conninfo(host)),
            format!("port={port}"),
        ];
        for (k, v) in &user.options {
            parts.push(format!("{k}={}", quote_conninfo(v)));
        }
        for (k, v) in extra {
            parts.push(format!("{k}={}", quote_conninfo(v)));
        }
        parts.join(" ")
    }

    /// The GUCs pgpilot writes: Patroni's defaults, then the dynamic configuration's parameters,
    /// then the local ones; `listen_addresses`, `port`, `cluster_name` and `hot_standby` always
    /// come from pgpilot.
    pub fn effective_parameters(&self, dynamic: &Map<String, Value>) -> Vec<(String, String)> {
        let mut params: Vec<(String, String)> = [
            ("max_connections", "100"),
            ("max_locks_per_transaction", "64"),
            ("max_worker_processes", "8"),
            ("max_prepared_transactions", "0"),
            ("track_commit_timestamp", "off"),
            ("wal_level", "replica"),
            ("max_wal_senders", "10"),
            ("max_replication_slots", "10"),
            ("wal_keep_size", "128MB"),
            ("wal_log_hints", "on"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let mut set = |k: &str, v: String| match params.iter_mut().find(|(pk, _)| pk == k) {
            Some(p) => p.1 = v,
            None => params.push((k.to_string(), v)),
        };
        for (k, v) in dynamic.iter().chain(self.cfg.postgresql.parameters.iter()) {
            if matches!(
                k.as_str(),
                "listen_addresses" | "port" | "cluster_name" | "hot_standby"
            ) || v.is_null()
            {
                continue;
            }
            set(k, guc_value(v));
        }
        let (host, port) = shared::config::split_host_port(&self.cfg.postgresql.listen)
            .unwrap_or(("127.0.0.1".into(), 5432));
        set("listen_addresses", host);
        set("port", port.to_string());
        set("cluster_name", self.cfg.scope.clone());
        set("hot_standby", "on".into());
        params
    }

    /// Writes `postgresql.conf` (the original is kept as `postgresql.base.conf` and included),
    /// and `standby.signal` plus recovery settings for a replica.
    pub fn write_config(
        &self,
        dynamic: &Map<String, Value>,
        replica_of: Option<Option<&Upstream>>,
    ) -> Result<()> {
        let dir = self.conf_dir();
        let conf = dir.join("postgresql.conf");
        let base = dir.join("postgresql.base.conf");
        if !base.exists() {
            if conf.exists() {
                std::fs::rename(&conf, &base).with_context(|| {
                    format!("cannot rename {} to {}", conf.display(), base.display())
                })?;
            } else {
                std::fs::write(&base, "")?;
            }
        }
        let mut text = String::from(
            "# Written by pgpilot; edits are overwritten. Set parameters in the agent's YAML\n\
             # (postgresql.parameters) or cluster-wide in the DCS config key.\n\
             include 'postgresql.base.conf'\n\n",
        );
        for (k, v) in self.effective_parameters(dynamic) {
            text.push_str(&format!("{k} = {}\n", quote_guc(&v)));
        }
        if self.cfg.postgresql.config_dir.is_some() {
            text.push_str(&format!(
                "hba_file = {}\nident_file = {}\n",
                quote_guc(&dir.join("pg_hba.conf").to_string_lossy()),
                quote_guc(&dir.join("pg_ident.conf").to_string_lossy())
            ));
        }
        let signal = self.data_dir().join("standby.signal");
        if let Some(upstream) = replica_of {
            text.push_str("\n# recovery\nrecovery_target_timeline = 'latest'\n");
            if let Some(up) = upstream {
                let ci = self.conninfo(
                    &self.cfg.postgresql.replication,
                    &up.host,
                    up.port,
                    &[("application_name", &self.cfg.name), ("dbname", "postgres")],
                );
                text.push_str(&format!("primary_conninfo = {}\n", quote_guc(&ci)));
                if !self.cfg.tags.nostream {
                    text.push_str(&format!(
                        "primary_slot_name = {}\n",
                        quote_guc(&shared::types::slot_name(&self.cfg.name))
                    ));
                }
            }
            std::fs::write(&signal, "")?;
        } else if signal.exists() {
            std::fs::remove_file(&signal)?;
        }
        write_atomic(&conf, &text)?;
        Ok(())
    }

    /// The upstream `host:port` configured in postgresql.conf, if any.
    pub fn configured_upstream(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.conf_dir().join("postgresql.conf")).ok()?;
        let line = text
            .lines()
            .find(|l| l.starts_with("primary_conninfo = "))?;
        let mut host = None;
        let mut port = None;
        for part in line.split_whitespace() {
            let part = part.trim_matches('\'');
            if let Some(h) = part.strip_prefix("host=") {
                host = Some(h.trim_matches('\'').to_string());
            } else if let Some(p) = part.strip_prefix("port=") {
                port = Some(p.trim_matches('\'').to_string());
            }
        }
        Some(format!("{}:{}", host?, port?))
    }

    /// Writes pg_hba.conf from `postgresql.pg_hba` (local config first, then dynamic), or
    /// appends `bootstrap.pg_hba` to initdb's file at bootstrap.
    pub fn write_hba(&self, dynamic_hba: Option<Vec<String>>, bootstrap: bool) -> Result<()> {
        let path = self.conf_dir().join("pg_hba.conf");
        if let Some(lines) = self.cfg.postgresql.pg_hba.clone().or(dynamic_hba) {
            let mut text = String::from("# Written by pgpilot from postgresql.pg_hba\n");
            for l in lines {
                text.push_str(&l);
                text.push('\n');
            }
            write_atomic(&path, &text)?;
        } else if bootstrap && !self.cfg.bootstrap.pg_hba.is_empty() {
            let mut text = std::fs::read_to_string(&path).unwrap_or_default();
            text.push_str("\n# bootstrap.pg_hba\n");
            for l in &self.cfg.bootstrap.pg_hba {
                text.push_str(l);
                text.push('\n');
            }
            write_atomic(&path, &text)?;
        }
        Ok(())
    }

    /// Runs initdb with the `bootstrap.initdb` options.
    pub async fn initdb(&self) -> Result<()> {
        let su = &self.cfg.postgresql.superuser;
        let mut cmd = self.command("initdb");
        cmd.arg("-D")
            .arg(self.data_dir())
            .arg(format!("--username={}", su.username));
        for opt in &self.cfg.bootstrap.initdb {
            cmd.arg(opt);
        }
        let pwfile = match &su.password {
            Some(pw) => {
                let path = self
                    .data_dir()
                    .with_extension(format!("pwfile.{}", std::process::id()));
                write_private(&path, pw.expose())?;
                cmd.arg(format!("--pwfile={}", path.display()));
                Some(path)
            }
            None => None,
        };
        let res = self
            .run(
                cmd,
                "initdb",
                Duration::from_secs(self.cfg.postgresql.pg_ctl_timeout.max(120)),
            )
            .await;
        if let Some(p) = pwfile {
            std::fs::remove_file(p).ok();
        }
        res.map(|_| ())
    }

    /// Starts the postmaster as our child and waits until it accepts connections.
    pub async fn start(&self, timeout: Duration) -> Result<()> {
        if let Some(pid) = self.running_pid() {
            info!(pid, "PostgreSQL is already running");
            return Ok(());
        }
        let log_dir = self.data_dir().join("log");
        std::fs::create_dir_all(&log_dir).ok();
        let log_path = log_dir.join("postmaster.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("cannot open {}", log_path.display()))?;
        let mut cmd = self.command("postgres");
        cmd.arg("-D").arg(self.data_dir());
        if self.cfg.postgresql.config_dir.is_some() {
            cmd.arg(format!(
                "--config-file={}",
                self.conf_dir().join("postgresql.conf").display()
            ));
        }
        cmd.stdout(log.try_clone()?).stderr(log).process_group(0);
        let mut child = cmd.spawn().context("cannot start postgres")?;
        let pid = child.id().unwrap_or(0);
        info!(pid, "started postmaster");
        *self.child_pid.lock().await = Some(pid);
        let exited = self.exited.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            warn!(pid, ?status, "postmaster exited");
            exited.notify_one();
        });
        self.disconnect().await;
        let deadline = Instant::now() + timeout;
        loop {
            match self.status().await {
                Ok(_) => return Ok(()),
                Err(e) => {
                    if self.running_pid().is_none() && !self.is_child_alive(pid) {
                        bail!(
                            "PostgreSQL exited during startup; see {}: {e:#}",
                            log_path.display()
                        );
                    }
                    if Instant::now() > deadline {
                        bail!(
                            "PostgreSQL did not accept connections within {}s; see {}",
                            timeout.as_secs(),
                            log_path.display()
                        );
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn is_child_alive(&self, pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
    }

    /// Stops PostgreSQL (`fast` or `immediate`) and waits for it to be gone.
    pub async fn stop(&self, mode: &str, timeout: Duration) -> Result<()> {
        self.disconnect().await;
        if self.running_pid().is_none() {
            return Ok(());
        }
        let mut cmd = self.command("pg_ctl");
        cmd.arg("stop")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-m")
            .arg(mode)
            .arg("-w")
            .arg("-t")
            .arg(timeout.as_secs().max(1).to_string());
        self.run(cmd, "pg_ctl stop", timeout + Duration::from_secs(5))
            .await?;
        *self.child_pid.lock().await = None;
        Ok(())
    }

    /// Promotes a replica and waits until it accepts writes.
    pub async fn promote(&self, timeout: Duration) -> Result<()> {
        let client = self.client().await?;
        let secs = timeout.as_secs().max(1) as i32;
        let row = client
            .query_one("SELECT pg_promote(true, $1)", &[&secs])
            .await?;
        let ok: bool = row.get(0);
        if !ok {
            bail!("pg_promote did not finish within {secs}s");
        }
        Ok(())
    }

    /// Reloads the configuration files.
    pub async fn reload(&self) -> Result<()> {
        let client = self.client().await?;
        client.batch_execute("SELECT pg_reload_conf()").await?;
        Ok(())
    }

    /// Clones the data directory from `from` with pg_basebackup, logging progress.
    pub async fn basebackup(&self, from: &Upstream) -> Result<()> {
        let user = &self.cfg.postgresql.replication;
        let conninfo = self.conninfo(
            user,
            &from.host,
            from.port,
            &[("application_name", &self.cfg.name), ("dbname", "postgres")],
        );
        let mut cmd = self.command("pg_basebackup");
        cmd.arg(format!("--pgdata={}", self.data_dir().display()))
            .arg("-X")
            .arg("stream")
            .arg(format!("--dbname={conninfo}"))
            .arg("--progress");
        if !self
            .cfg
            .postgresql
            .basebackup
            .iter()
            .any(|o| o.starts_with("--checkpoint"))
        {
            cmd.arg("--checkpoint=fast");
        }
        for opt in &self.cfg.postgresql.basebackup {
            cmd.arg(opt);
        }
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().context("cannot run pg_basebackup")?;
        let mut stderr = child
            .stderr
            .take()
            .ok_or_else(|| anyhow!("pg_basebackup stderr not captured"))?;
        let mut last_log = Instant::now();
        let mut tail = String::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = stderr.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            tail.push_str(&String::from_utf8_lossy(&buf[..n]));
            if let Some(line) = tail.rsplit(['\r', '\n']).find(|l| !l.trim().is_empty())
                && last_log.elapsed() > Duration::from_secs(1)
            {
                info!(progress = line.trim(), "pg_basebackup");
                last_log = Instant::now();
            }
            if tail.len() > 8192 {
                tail = tail[tail.len() - 2048..].to_string();
            }
        }
        let status = child.wait().await?;
        if !status.success() {
            let msg: Vec<&str> = tail
                .split(['\r', '\n'])
                .filter(|l| !l.trim().is_empty() && !l.contains("kB ("))
                .collect();
            bail!("pg_basebackup failed ({status}): {}", msg.join("; "));
        }
        Ok(())
    }

    /// Creates the replication (and rewind) roles and sets the superuser password, after
    /// bootstrap. Statements carry passwords and are never logged.
    pub async fn create_roles(&self) -> Result<()> {
        let pg = &self.cfg.postgresql;
        if let Some(pw) = &pg.superuser.password {
            self.execute(&format!(
                "ALTER ROLE {} WITH PASSWORD {}",
                sql_ident(&pg.superuser.username),
                sql_literal(pw.expose())
            ))
            .await
            .context("cannot set the superuser password")?;
        }
        let create = |user: &PgUser, attrs: &str| {
            let pw = user
                .password
                .as_ref()
                .map(|p| format!(" PASSWORD {}", sql_literal(p.expose())))
                .unwrap_or_default();
            let name = sql_ident(&user.username);
            format!(
                "DO $pgpilot$ BEGIN
                   IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {lit}) THEN
                     CREATE ROLE {name} WITH LOGIN {attrs};
                   END IF;
                 END $pgpilot$;
                 ALTER ROLE {name} WITH LOGIN {attrs}{pw};",
                lit = sql_literal(&user.username)
            )
        };
        if pg.replication.username != pg.superuser.username {
            self.execute(&create(&pg.replication, "REPLICATION"))
                .await
                .context("cannot create the replication role")?;
        }
        if let Some(rw) = &pg.rewind
            && rw.username != pg.superuser.username
        {
            self.execute(&create(rw, ""))
                .await
                .context("cannot create the rewind role")?;
            let name = sql_ident(&rw.username);
            self.execute(&format!(
                "GRANT EXECUTE ON function pg_catalog.pg_ls_dir(text, boolean, boolean) TO {name};
                 GRANT EXECUTE ON function pg_catalog.pg_stat_file(text, boolean) TO {name};
                 GRANT EXECUTE ON function pg_catalog.pg_read_binary_file(text) TO {name};
                 GRANT EXECUTE ON function pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean) TO {name};"
            ))
            .await
            .context("cannot grant the rewind role its functions")?;
        }
        Ok(())
    }

    /// Physical replication slots that exist, with their restart LSN.
    pub async fn slots(&self) -> Result<Vec<(String, Option<u64>)>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT slot_name::text, restart_lsn::text FROM pg_replication_slots WHERE slot_type = 'physical'",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    r.get::<_, Option<String>>(1)
                        .and_then(|s| s.parse::<Lsn>().ok())
                        .map(|l| l.0),
                )
            })
            .collect())
    }

    /// Creates a physical slot reserving WAL at once, if it does not exist.
    pub async fn create_slot(&self, name: &str) -> Result<()> {
        let client = self.client().await?;
        client
            .execute(
                "SELECT pg_create_physical_replication_slot($1, true)
                 WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
                &[&name],
            )
            .await?;
        Ok(())
    }

    /// Drops a slot if it exists and is not active.
    pub async fn drop_slot(&self, name: &str) -> Result<()> {
        let client = self.client().await?;
        client
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
                 WHERE slot_name = $1 AND NOT active",
                &[&name],
            )
            .await?;
        Ok(())
    }

    /// Reads `<timeline>.history` from pg_wal: `(parent timeline, switch LSN, reason)` lines.
    pub fn timeline_history(
        &self,
        timeline: u64,
    ) -> Option<(Vec<TimelineSwitch>, std::time::SystemTime)> {
        let path = self
            .data_dir()
            .join("pg_wal")
            .join(format!("{timeline:08X}.history"));
        let text = std::fs::read_to_string(&path).ok()?;
        let mtime = std::fs::metadata(&path).and_then(|m| m.modified()).ok()?;
        let entries = text
            .lines()
            .filter_map(|l| {
                let mut parts = l.splitn(3, '\t');
                let tl = parts.next()?.trim().parse().ok()?;
                let lsn = parts.next()?.trim().parse::<Lsn>().ok()?.0;
                let reason = parts.next().unwrap_or("").trim().to_string();
                Some((tl, lsn, reason))
            })
            .collect();
        Some((entries, mtime))
    }

    /// Runs `bootstrap.post_bootstrap` with a connection URL argument.
    pub async fn post_bootstrap(&self, script: &str) -> Result<()> {
        let (host, port) = self.cfg.postgresql.local_host_port();
        let url = format!(
            "postgres://{}@{host}:{port}/{}",
            self.cfg.postgresql.superuser.username, self.cfg.postgresql.database
        );
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(format!("{script} \"$1\""))
            .arg("post_bootstrap")
            .arg(url)
            .env("PGPASSFILE", &self.cfg.postgresql.pgpass)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let out = cmd.output().await.context("cannot run post_bootstrap")?;
        if !out.status.success() {
            bail!(
                "post_bootstrap script failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Tail of the postmaster log, for error messages.
    pub async fn log_tail(&self) -> String {
        let path = self.data_dir().join("log").join("postmaster.log");
        let Ok(f) = tokio::fs::File::open(&path).await else {
            return String::new();
        };
        let mut lines = BufReader::new(f).lines();
        let mut tail = std::collections::VecDeque::new();
        while let Ok(Some(l)) = lines.next_line().await {
            tail.push_back(l);
            if tail.len() > 5 {
                tail.pop_front();
            }
        }
        tail.into_iter().collect::<Vec<_>>().join(" | ")
    }

    /// The system identifier last seen, if any.
    pub fn cached_sysid(&self) -> Option<String> {
        self.sysid_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("pgpilot-tmp");
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controldata_parses() {
        let text = "pg_control version number:            1300\n\
Database system identifier:           7449876543210987654\n\
Database cluster state:               shut down in recovery\n\
Latest checkpoint location:           0/5000060\n\
Latest checkpoint's TimeLineID:       3\n\
wal_log_hints setting:                on\n\
Data page checksum version:           0\n";
        let c = ControlData::parse(text);
        assert_eq!(c.system_identifier, "7449876543210987654");
        assert_eq!(c.timeline, Some(3));
        assert_eq!(c.checkpoint_lsn, Some(Lsn(0x5000060)));
        assert!(c.wal_log_hints);
        assert!(!c.data_checksums);
        assert!(!c.was_primary());
        assert!(ControlData::parse("Database cluster state: in production").was_primary());
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_guc("it's"), "'it''s'");
        assert_eq!(quote_conninfo("plain"), "plain");
        assert_eq!(quote_conninfo("a b"), "'a b'");
        assert_eq!(pgpass_field("a:b\\c"), "a\\:b\\\\c");
        assert_eq!(sql_literal("o'k"), "'o''k'");
        assert_eq!(sql_ident("we\"ird"), "\"we\"\"ird\"");
    }
}
