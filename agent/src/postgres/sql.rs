//! The libpq side: one round of queries that observes the server's state, promotion, reload,
//! roles and replication slots. Statements that carry passwords are never logged.

use super::Postgres;
use anyhow::{Context, Result, anyhow, bail};
use shared::config::{PgUser, guc_value};
use shared::types::Lsn;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tracing::debug;

/// A walsender connected to this server.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Walsender {
    pub usename: Option<String>,
    pub application_name: String,
    pub client_addr: Option<String>,
    pub state: Option<String>,
    pub sync_state: Option<String>,
    pub sync_priority: Option<i32>,
    /// How far the standby has flushed WAL (not part of Patroni's `/patroni` output).
    #[serde(skip)]
    pub flush_lsn: Option<u64>,
}

/// A replication slot as `pg_replication_slots` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    pub name: String,
    pub logical: bool,
    pub database: Option<String>,
    pub plugin: Option<String>,
    pub restart_lsn: Option<u64>,
    pub confirmed_flush_lsn: Option<u64>,
    /// PostgreSQL 17+: a failover slot (standbys with `sync_replication_slots` keep a copy).
    pub failover: bool,
    /// PostgreSQL 17+: this copy is kept by the server's slot synchronization.
    pub synced: bool,
}

/// A logical slot on the leader, as a replica copies it.
#[derive(Debug, Clone)]
pub struct RemoteSlot {
    /// Its state file (`pg_replslot/NAME/state`).
    pub state: Vec<u8>,
    pub database: Option<String>,
    pub plugin: Option<String>,
    /// A failover slot: PostgreSQL's slot synchronization copies it (PostgreSQL 17+).
    pub failover: bool,
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
    /// Parameters changed in the configuration that need a restart (from `pg_settings`):
    /// name → `{"old_value", "new_value"}`; `None` when nothing is pending.
    pub pending_restart: Option<serde_json::Map<String, serde_json::Value>>,
    /// `synchronous_standby_names` as the server runs with it (a reload that failed, or was
    /// not read yet, leaves the old value).
    pub sync_standby_names: Option<String>,
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

/// Escapes an SQL string literal.
fn sql_literal(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

/// Quotes an SQL identifier.
fn sql_ident(v: &str) -> String {
    format!("\"{}\"", v.replace('"', "\"\""))
}

impl Postgres {
    /// Queries the server's state. Fails when it does not accept connections.
    /// The server's state. Never waits longer than the query deadline (see
    /// [`Postgres::set_query_timeout`]): a server that is frozen or stuck answers with an error,
    /// and the connection is dropped.
    pub async fn status(&self) -> Result<ServerStatus> {
        let limit = self.query_timeout();
        let res = match tokio::time::timeout(limit, async {
            if let Some(server) = self.server() {
                return server.status().await;
            }
            let client = self.connected(&self.status_client).await?;
            Self::query_status(&client).await
        })
        .await
        {
            Ok(r) => r,
            Err(_) => Err(
                anyhow!("PostgreSQL did not answer within {} ms", limit.as_millis())
                    .context(Unresponsive),
            ),
        };
        if res.is_err() {
            *self.status_client.lock().await = None;
        }
        // a replica that does not stream reports its last restartpoint's timeline, which can
        // be the previous one for minutes after a switch: the WAL files say which it is on
        res.map(|mut st| {
            if st.in_recovery
                && let (Some(tl), Some(lsn)) = (st.timeline, st.wal_position())
            {
                st.timeline = Some(self.wal_timeline(tl, lsn));
            }
            st
        })
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
  (SELECT written_lsn::text FROM pg_stat_wal_receiver LIMIT 1),
  (SELECT json_object_agg(s.name, json_build_object('old_value', s.setting, 'new_value', f.setting))::text
     FROM pg_settings s
     LEFT JOIN LATERAL (SELECT setting FROM pg_file_settings fs
                        WHERE fs.name = s.name ORDER BY seqno DESC LIMIT 1) f ON true
    WHERE s.pending_restart),
  current_setting('synchronous_standby_names')";
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
            pending_restart: row
                .get::<_, Option<String>>(12)
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .and_then(|v| v.as_object().cloned()),
            sync_standby_names: row.get(13),
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
                    "SELECT usename::text, application_name, client_addr::text, state, sync_state, sync_priority,
                            flush_lsn::text
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
                    flush_lsn: r
                        .get::<_, Option<String>>(6)
                        .and_then(|s| s.parse::<Lsn>().ok())
                        .map(|l| l.0),
                })
                .collect();
        }
        Ok(st)
    }

    /// Connection settings for `user` (user, password, database) of `cfg`; host and port are
    /// the caller's.
    fn login(cfg: &shared::config::Config, user: &PgUser) -> tokio_postgres::Config {
        let mut pgc = tokio_postgres::Config::new();
        // TCP keepalives notice a peer whose machine is gone; a statement no agent call should
        // need longer than a minute for is cancelled by the server itself
        pgc.user(&user.username)
            .dbname(&cfg.postgresql.database)
            .application_name("pgpilot")
            .connect_timeout(Duration::from_secs(3))
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(5))
            .keepalives_interval(Duration::from_secs(2))
            .keepalives_retries(3)
            .options("-c statement_timeout=60000");
        if let Some(pw) = &user.password {
            pgc.password(pw.expose());
        }
        pgc
    }

    /// The role the agent reads another member's server with (the leader's timeline history
    /// and slot state files): the rewind user when there is one, as Patroni, since it holds
    /// the file functions and a pg_hba may refuse the superuser over the network; else the
    /// superuser. With its section's name, for errors.
    fn remote_user(cfg: &shared::config::Config) -> (&PgUser, &'static str) {
        match &cfg.postgresql.rewind {
            Some(rw) => (rw, "postgresql.authentication.rewind"),
            None => (
                &cfg.postgresql.superuser,
                "postgresql.authentication.superuser",
            ),
        }
    }

    /// A connection to another member's server (the leader's) as [`Self::remote_user`], with
    /// the TLS options in force; its connection task, to abort when done.
    async fn connect_remote(
        cfg: &shared::config::Config,
        from: &super::Upstream,
    ) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>)> {
        let (user, section) = Self::remote_user(cfg);
        let mut pgc = Self::login(cfg, user);
        pgc.host(&from.host).port(from.port);
        let (tls, how) = Self::user_tls(user, section, &mut pgc, false)
            .map_err(|e| anyhow!("cannot connect to {}:{}: {e:#}", from.host, from.port))?;
        let (client, conn) = pgc.connect(tls).await.map_err(|e| {
            anyhow!(
                "cannot connect to {}:{} as {} ({how}): {:#}",
                from.host,
                from.port,
                user.username,
                anyhow::Error::new(e)
            )
        })?;
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok((client, task))
    }

    /// TLS for a connection as `user`, from its section's libpq options (errors name the
    /// section at fault).
    fn user_tls(
        user: &PgUser,
        section: &str,
        pgc: &mut tokio_postgres::Config,
        unix_socket: bool,
    ) -> Result<(tokio_postgres_rustls::MakeRustlsConnect, String)> {
        // libpq ignores every TLS option on a Unix socket, errors in them included
        if unix_socket {
            return Ok((
                super::tls::PgTls::plain(pgc),
                "Unix socket, without TLS".into(),
            ));
        }
        let tls = super::tls::PgTls::from_user(user, super::tls::home().as_deref())
            .map_err(|e| anyhow!("{section}: {e:#}"))?;
        let connector = tls
            .connector(pgc, false, user.sslpassword.as_ref())
            .map_err(|e| anyhow!("{section}: {e:#}"))?;
        Ok((connector, tls.describe(false)))
    }

    /// Whether `cfg`'s superuser TLS options can make a connection (files readable, values
    /// known): a reload is refused rather than the next connection failing.
    pub fn check_superuser_tls(&self, cfg: &shared::config::Config) -> Result<()> {
        // the local connection over TCP (the remote reads, as the rewind user, are allowed to
        // fail: they only save time)
        let su = &cfg.postgresql.superuser;
        let mut pgc = tokio_postgres::Config::new();
        Self::user_tls(su, "postgresql.authentication.superuser", &mut pgc, false).map(|_| ())
    }

    /// A connection to the local server as the superuser (reused across cycles).
    async fn client(&self) -> Result<Arc<tokio_postgres::Client>> {
        self.connected(&self.client).await
    }

    /// The connection cached in `slot`, made again when it is gone.
    async fn connected(
        &self,
        slot: &tokio::sync::Mutex<Option<Arc<tokio_postgres::Client>>>,
    ) -> Result<Arc<tokio_postgres::Client>> {
        let mut guard = slot.lock().await;
        if let Some(c) = guard.as_ref()
            && !c.is_closed()
        {
            return Ok(c.clone());
        }
        let client = Arc::new(self.connect_local(&self.cfg()).await?);
        *guard = Some(client.clone());
        Ok(client)
    }

    /// A new connection to the local server as the superuser of `cfg` (the running
    /// configuration, or the one before a reload).
    async fn connect_local(&self, cfg: &shared::config::Config) -> Result<tokio_postgres::Client> {
        self.connect_local_to(cfg, None).await
    }

    /// The same, to database `dbname` instead of `postgresql.database` (a logical slot lives in
    /// its database).
    async fn connect_local_to(
        &self,
        cfg: &shared::config::Config,
        dbname: Option<&str>,
    ) -> Result<tokio_postgres::Client> {
        let su = &cfg.postgresql.superuser;
        let mut pgc = Self::login(cfg, su);
        if let Some(db) = dbname {
            pgc.dbname(db);
        }
        let local = self.local_address(cfg);
        let unix_socket = match &local.host {
            LocalHost::Socket(dir) => {
                pgc.host_path(dir);
                true
            }
            LocalHost::Tcp(host) => {
                pgc.host(host);
                false
            }
        };
        pgc.port(local.port);
        let (tls, how) = Self::user_tls(
            su,
            "postgresql.authentication.superuser",
            &mut pgc,
            unix_socket,
        )
        .map_err(|e| anyhow!("cannot connect to local PostgreSQL at {local}: {e:#}"))?;
        let (client, conn) = pgc.connect(tls).await.map_err(|e| {
            anyhow!(
                "cannot connect to local PostgreSQL at {local} ({how}): {:#}",
                anyhow::Error::new(e)
            )
        })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!("local PostgreSQL connection closed: {e}");
            }
        });
        Ok(client)
    }

    /// Where the agent reaches its own server, as Patroni: with `postgresql.use_unix_socket`,
    /// the first absolute directory of `unix_socket_directories` (the binaries' built-in one
    /// when the parameter is not set; TCP when it lists no absolute directory); otherwise TCP
    /// to the listen address (loopback for a wildcard).
    pub fn local_address(&self, cfg: &shared::config::Config) -> LocalAddress {
        let (host, port) = cfg.postgresql.local_host_port();
        let tcp = LocalAddress {
            host: LocalHost::Tcp(host),
            port,
        };
        if !cfg.postgresql.use_unix_socket {
            return tcp;
        }
        // as postgresql.conf gets it: the local YAML over the dynamic configuration
        let name = "unix_socket_directories";
        let configured = cfg
            .postgresql
            .parameters
            .get(name)
            .map(guc_value)
            .or_else(|| {
                self.dynamic_postgresql
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_ref()
                    .and_then(|d| d.get("parameters")?.get(name).map(guc_value))
            });
        let dirs = configured.unwrap_or_else(|| {
            super::catalog::Catalog::of(&self.bin("postgres"))
                .ok()
                .and_then(|c| c.socket_default.clone())
                .unwrap_or_else(|| "/var/run/postgresql".into())
        });
        match first_absolute_dir(&dirs) {
            Some(dir) => LocalAddress {
                host: LocalHost::Socket(dir),
                port,
            },
            None => tcp,
        }
    }

    /// Prepares this server to follow the primary at `from` at once (instead of after
    /// wal_retrieve_retry_interval): creates its replication slot there if missing, and copies
    /// the primary's newest timeline history file into the local pg_wal. Returns the file's name
    /// when one was copied.
    pub async fn fetch_timeline_history(&self, from: &super::Upstream) -> Result<Option<String>> {
        // the HA loop waits for this: a new primary that does not answer cannot hold it
        self.remote_deadline(from, self.fetch_timeline_history_now(from))
            .await
    }

    /// `call` on another member's server, within max(query timeout, 5 s).
    async fn remote_deadline<T>(
        &self,
        from: &super::Upstream,
        call: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        let limit = self.query_timeout().max(Duration::from_secs(5));
        tokio::time::timeout(limit, call).await.map_err(|_| {
            anyhow!(
                "{}:{} did not answer within {} ms",
                from.host,
                from.port,
                limit.as_millis()
            )
        })?
    }

    async fn fetch_timeline_history_now(&self, from: &super::Upstream) -> Result<Option<String>> {
        if let Some(server) = self.server() {
            let Some((name, bytes)) = server.timeline_history(from).await? else {
                return Ok(None);
            };
            let path = self.data_dir().join("pg_wal").join(&name);
            if path.exists() {
                return Ok(None);
            }
            std::fs::write(&path, bytes)
                .map_err(|e| anyhow!("cannot write {}: {e}", path.display()))?;
            return Ok(Some(name));
        }
        let cfg = self.cfg();
        let (client, task) = Self::connect_remote(&cfg, from).await?;
        let row = client
            .query_one(
                "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) || '.history'",
                &[],
            )
            .await?;
        let name: String = row.get(0);
        let path = self.data_dir().join("pg_wal").join(&name);
        // and this member's slot there, so that streaming starts at once (a superuser's work:
        // as the rewind user the new primary's own slot upkeep creates it)
        if self.use_slots() && !cfg.tags.nostream && cfg.postgresql.rewind.is_none() {
            let slot = shared::types::slot_name(&cfg.name);
            // the leader may create it at the same moment: that is fine too
            if let Err(e) = client
                .execute(
                    "SELECT pg_create_physical_replication_slot($1, true) \
                     WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
                    &[&slot],
                )
                .await
            {
                debug!(slot, "slot on the new primary not created here: {e}");
            }
        }
        let result = if name.starts_with("00000001") || path.exists() {
            None
        } else {
            let row = client
                .query_one(
                    "SELECT pg_read_binary_file('pg_wal/' || $1::text)",
                    &[&name],
                )
                .await?;
            let bytes: Vec<u8> = row.get(0);
            std::fs::write(&path, bytes)
                .map_err(|e| anyhow!("cannot write {}: {e}", path.display()))?;
            Some(name)
        };
        task.abort();
        Ok(result)
    }
}

/// Where the agent reaches its own server: a Unix socket directory or a TCP host, and the port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalAddress {
    pub host: LocalHost,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalHost {
    Socket(PathBuf),
    Tcp(String),
}

impl LocalAddress {
    /// libpq's `host`: the socket directory or the TCP host.
    pub fn host_text(&self) -> String {
        match &self.host {
            LocalHost::Socket(dir) => dir.display().to_string(),
            LocalHost::Tcp(host) => host.clone(),
        }
    }
}

impl std::fmt::Display for LocalAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.host {
            LocalHost::Socket(dir) => {
                write!(f, "{} (Unix socket, port {})", dir.display(), self.port)
            }
            LocalHost::Tcp(host) if host.contains(':') => write!(f, "[{host}]:{}", self.port),
            LocalHost::Tcp(host) => write!(f, "{host}:{}", self.port),
        }
    }
}

/// The first absolute directory of a `unix_socket_directories` value (a relative one or an
/// abstract socket, `@name`, cannot be connected to by path), as Patroni picks it.
fn first_absolute_dir(dirs: &str) -> Option<PathBuf> {
    dirs.split(',')
        .map(str::trim)
        .find(|d| d.starts_with('/'))
        .map(PathBuf::from)
}

/// Session settings that keep statements out of the server's logs: no statement logging, no
/// duration or sampled logging, and no statement printed beside an error.
const QUIET: &str = "SET log_statement TO 'none'; SET log_min_duration_statement TO -1; \
SET log_min_duration_sample TO -1; SET log_transaction_sample_rate TO 0; \
SET log_min_error_statement TO 'panic'";

/// How long a statement of the agent's may take before the agent gives up on it (the server's
/// own `statement_timeout` for the agent's connections is one minute; this bounds a frozen one).
const STATEMENT_LIMIT: Duration = Duration::from_secs(65);

/// Marks a status query that ran out of time (the server is frozen or stuck), as opposed to one
/// that was refused (the server is starting or stopping).
#[derive(Debug, Clone, Copy)]
pub struct Unresponsive;

impl std::fmt::Display for Unresponsive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PostgreSQL is not answering")
    }
}

impl Postgres {
    /// Drops the cached connection (after a stop or restart).
    pub async fn disconnect(&self) {
        *self.client.lock().await = None;
        *self.status_client.lock().await = None;
    }

    /// Runs `call` on the shared connection within `limit`: a server that is frozen or stuck
    /// cannot hold the HA loop, and the connection it holds is dropped.
    async fn bounded<T, F>(&self, what: &str, limit: Duration, call: F) -> Result<T>
    where
        F: std::future::Future<Output = Result<T>>,
    {
        match tokio::time::timeout(limit, call).await {
            Ok(r) => r,
            Err(_) => {
                *self.client.lock().await = None;
                Err(anyhow!(
                    "PostgreSQL did not answer {what} within {} ms",
                    limit.as_millis()
                )
                .context(Unresponsive))
            }
        }
    }

    /// Promotes a replica and waits until it accepts writes.
    ///
    /// A standby whose upstream died sits in a `wal_retrieve_retry_interval` sleep (5 s by
    /// default) that PostgreSQL 15 does not cut short for a promote request; a configuration
    /// reload wakes it, so the promotion is followed by reloads until it has happened.
    pub async fn promote(&self, timeout: Duration) -> Result<()> {
        // every query below is bounded too: a frozen server ends the wait at `timeout`
        self.bounded(
            "the promotion",
            timeout + Duration::from_secs(5),
            self.promote_and_wait(timeout),
        )
        .await
    }

    async fn promote_and_wait(&self, timeout: Duration) -> Result<()> {
        if let Some(server) = self.server() {
            return server.promote().await;
        }
        let client = self.client().await?;
        client.query_one("SELECT pg_promote(false)", &[]).await?;
        let started = tokio::time::Instant::now();
        let mut poll = 0u32;
        loop {
            let row = client.query_one("SELECT pg_is_in_recovery()", &[]).await?;
            if !row.get::<_, bool>(0) {
                return Ok(());
            }
            if started.elapsed() > timeout {
                bail!("the promotion did not finish within {}s", timeout.as_secs());
            }
            if poll.is_multiple_of(3) {
                client.execute("SELECT pg_reload_conf()", &[]).await?;
            }
            poll += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs a checkpoint. After a promotion it brings pg_control's timeline up to date, which
    /// pg_rewind on the other members reads to see that this server changed timeline.
    pub async fn checkpoint(&self) -> Result<()> {
        self.bounded("a CHECKPOINT", STATEMENT_LIMIT, async {
            if let Some(server) = self.server() {
                return server.checkpoint().await;
            }
            let client = self.client().await?;
            client.batch_execute("CHECKPOINT").await?;
            Ok(())
        })
        .await
    }

    /// Reloads the configuration files.
    pub async fn reload(&self) -> Result<()> {
        self.bounded("a reload", self.query_timeout(), async {
            if let Some(server) = self.server() {
                return server.reload().await;
            }
            let client = self.client().await?;
            client.batch_execute("SELECT pg_reload_conf()").await?;
            Ok(())
        })
        .await
    }

    /// Creates the replication (and rewind) roles and sets the superuser password, after
    /// bootstrap. Statements carry passwords and are never logged.
    pub async fn create_roles(&self) -> Result<()> {
        let cfg = self.cfg();
        self.create_roles_as(&cfg, &cfg).await
    }

    /// The same with `target`'s passwords, logged in as `login`'s superuser: after a reload
    /// that changed the passwords, the configuration before it (whose password the server
    /// still knows).
    pub async fn create_roles_as(
        &self,
        login: &shared::config::Config,
        target: &shared::config::Config,
    ) -> Result<()> {
        // Passwords never reach the server's logs: they are sent on a session of their own
        // (ended afterwards, so nothing else runs with its settings) whose statement logging is
        // off before they are sent (a separate round trip: the server logs a query string as a
        // whole), and what is sent is a verifier computed here, never the password.
        self.bounded("the role setup", STATEMENT_LIMIT, async {
            if let Some(server) = self.server() {
                return server.create_roles().await;
            }
            let session = self.connect_local(login).await?;
            session
                .batch_execute(QUIET)
                .await
                .context("cannot turn statement logging off for the role setup")?;
            let md5 = session
                .query_one("SHOW password_encryption", &[])
                .await?
                .get::<_, String>(0)
                .eq_ignore_ascii_case("md5");
            Self::create_roles_on(target, &session, md5).await
        })
        .await
    }

    async fn create_roles_on(
        target: &shared::config::Config,
        session: &tokio_postgres::Client,
        md5: bool,
    ) -> Result<()> {
        let pg = &target.postgresql;
        let verifier = |user: &str, password: &str| {
            sql_literal(&if md5 {
                postgres_protocol::password::md5(password.as_bytes(), user)
            } else {
                postgres_protocol::password::scram_sha_256(password.as_bytes())
            })
        };
        if let Some(pw) = &pg.superuser.password {
            session
                .batch_execute(&format!(
                    "ALTER ROLE {} WITH PASSWORD {}",
                    sql_ident(&pg.superuser.username),
                    verifier(&pg.superuser.username, pw.expose())
                ))
                .await
                .map_err(|e| anyhow!("{e}"))
                .context("cannot set the superuser password")?;
        }
        let create = |user: &PgUser, attrs: &str| {
            let pw = user
                .password
                .as_ref()
                .map(|p| format!(" PASSWORD {}", verifier(&user.username, p.expose())))
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
            session
                .batch_execute(&create(&pg.replication, "REPLICATION"))
                .await
                .map_err(|e| anyhow!("{e}"))
                .context("cannot create the replication role")?;
        }
        if let Some(rw) = &pg.rewind
            && rw.username != pg.superuser.username
        {
            session
                .batch_execute(&create(rw, ""))
                .await
                .map_err(|e| anyhow!("{e}"))
                .context("cannot create the rewind role")?;
            let name = sql_ident(&rw.username);
            session
                .batch_execute(&format!(
                    "GRANT EXECUTE ON function pg_catalog.pg_ls_dir(text, boolean, boolean) TO {name};
                 GRANT EXECUTE ON function pg_catalog.pg_stat_file(text, boolean) TO {name};
                 GRANT EXECUTE ON function pg_catalog.pg_read_binary_file(text) TO {name};
                 GRANT EXECUTE ON function pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean) TO {name};"
                ))
                .await
                .map_err(|e| anyhow!("{e}"))
                .context("cannot grant the rewind role its functions")?;
        }
        Ok(())
    }

    /// Physical replication slots that exist, with their restart LSN.
    pub async fn slots(&self) -> Result<Vec<(String, Option<u64>)>> {
        if let Some(server) = self.server() {
            let all = self
                .bounded("the slot list", self.query_timeout(), server.slots())
                .await?;
            return Ok(all
                .into_iter()
                .filter(|s| !s.logical)
                .map(|s| (s.name, s.restart_lsn))
                .collect());
        }
        let rows = self
            .bounded("the slot list", self.query_timeout(), async {
                let client = self.client().await?;
                Ok(client
                    .query(
                        "SELECT slot_name::text, restart_lsn::text FROM pg_replication_slots WHERE slot_type = 'physical'",
                        &[],
                    )
                    .await?)
            })
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
        self.bounded("a slot creation", self.query_timeout(), async {
            if let Some(server) = self.server() {
                return server.create_slot(name).await;
            }
            let client = self.client().await?;
            client
                .execute(
                    "SELECT pg_create_physical_replication_slot($1, true)
                     WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
                    &[&name],
                )
                .await?;
            Ok(())
        })
        .await
    }

    /// A setting's current value (`SHOW`).
    pub async fn show(&self, setting: &str) -> Result<String> {
        self.bounded("a SHOW", self.query_timeout(), async {
            if let Some(server) = self.server() {
                return server.show(setting).await;
            }
            let client = self.client().await?;
            let row = client
                .query_one("SELECT current_setting($1)", &[&setting])
                .await?;
            Ok(row.get(0))
        })
        .await
    }

    /// Every replication slot that is not temporary, with its kind and position.
    pub async fn slot_list(&self) -> Result<Vec<SlotInfo>> {
        if let Some(server) = self.server() {
            return self
                .bounded("the slot list", self.query_timeout(), server.slots())
                .await;
        }
        let rows = self
            .bounded("the slot list", self.query_timeout(), async {
                let client = self.client().await?;
                Ok(client
                    // failover and synced exist from PostgreSQL 17 (NULL below)
                    .query(
                        "SELECT slot_name::text, slot_type, database::text, plugin::text,
                                restart_lsn::text, confirmed_flush_lsn::text,
                                coalesce((to_jsonb(s) ->> 'failover')::bool, false),
                                coalesce((to_jsonb(s) ->> 'synced')::bool, false)
                         FROM pg_replication_slots s WHERE NOT temporary",
                        &[],
                    )
                    .await?)
            })
            .await?;
        let lsn = |v: Option<String>| v.and_then(|s| s.parse::<Lsn>().ok()).map(|l| l.0);
        Ok(rows
            .iter()
            .map(|r| SlotInfo {
                name: r.get(0),
                logical: r.get::<_, String>(1) == "logical",
                database: r.get(2),
                plugin: r.get(3),
                restart_lsn: lsn(r.get(4)),
                confirmed_flush_lsn: lsn(r.get(5)),
                failover: r.get(6),
                synced: r.get(7),
            })
            .collect())
    }

    /// Creates a logical slot in `database` with `plugin`, if it does not exist; a failover
    /// slot (PostgreSQL 17+) when `failover`.
    pub async fn create_logical_slot(
        &self,
        name: &str,
        database: &str,
        plugin: &str,
        failover: bool,
    ) -> Result<()> {
        let cfg = self.cfg();
        // creating a logical slot waits for running transactions: bounded by the statement
        // limit, beside the loop's status queries
        self.bounded("a logical slot creation", STATEMENT_LIMIT, async {
            let client = self.connect_local_to(&cfg, Some(database)).await?;
            client
                .execute(
                    if failover {
                        "SELECT pg_create_logical_replication_slot($1, $2, false, false, true)
                         WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)"
                    } else {
                        "SELECT pg_create_logical_replication_slot($1, $2)
                         WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)"
                    },
                    &[&name, &plugin],
                )
                .await?;
            Ok(())
        })
        .await
    }

    /// Moves a slot forward to `lsn` (never past what this server has replayed or flushed);
    /// a logical slot is moved from a session in its database.
    pub async fn advance_slot(&self, name: &str, database: Option<&str>, lsn: u64) -> Result<()> {
        let cfg = self.cfg();
        let target = Lsn(lsn).to_string();
        self.bounded("a slot advance", STATEMENT_LIMIT, async {
            let client = self.connect_local_to(&cfg, database).await?;
            client
                .execute(
                    "SELECT pg_replication_slot_advance($1, $2::text::pg_lsn)",
                    &[&name, &target],
                )
                .await?;
            Ok(())
        })
        .await
    }

    /// The state file of slot `name` on the server at `from` (the leader), read over a
    /// superuser connection (`pg_read_binary_file`), with its database, plugin and whether it
    /// is a failover slot there.
    pub async fn remote_slot_state(
        &self,
        from: &super::Upstream,
        name: &str,
    ) -> Result<RemoteSlot> {
        let cfg = self.cfg();
        self.remote_deadline(from, async {
            let (client, task) = Self::connect_remote(&cfg, from).await?;
            let row = client
                .query_opt(
                    "SELECT database::text, plugin::text,
                            pg_read_binary_file('pg_replslot/' || slot_name || '/state'),
                            coalesce((to_jsonb(s) ->> 'failover')::bool, false)
                     FROM pg_replication_slots s WHERE slot_name = $1 AND slot_type = 'logical'",
                    &[&name],
                )
                .await?;
            task.abort();
            let row = row.ok_or_else(|| anyhow!("no logical slot {name} on the leader"))?;
            Ok(RemoteSlot {
                state: row.get(2),
                database: row.get(0),
                plugin: row.get(1),
                failover: row.get(3),
            })
        })
        .await
    }

    /// Drops a slot if it exists and is not active.
    pub async fn drop_slot(&self, name: &str) -> Result<()> {
        self.bounded("a slot drop", self.query_timeout(), async {
            if let Some(server) = self.server() {
                return server.drop_slot(name).await;
            }
            let client = self.client().await?;
            client
                .execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
                     WHERE slot_name = $1 AND NOT active",
                    &[&name],
                )
                .await?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_quoting() {
        assert_eq!(sql_literal("o'k"), "'o''k'");
        assert_eq!(sql_ident("we\"ird"), "\"we\"\"ird\"");
    }

    #[test]
    fn the_socket_directory_patroni_would_use() {
        assert_eq!(
            first_absolute_dir("@pg, relative, /run/pg , /tmp"),
            Some(PathBuf::from("/run/pg"))
        );
        assert_eq!(first_absolute_dir("@abstract,sockets"), None);
        assert_eq!(first_absolute_dir(""), None);
        let socket = LocalAddress {
            host: LocalHost::Socket("/run/pg".into()),
            port: 5433,
        };
        assert_eq!(socket.to_string(), "/run/pg (Unix socket, port 5433)");
        assert_eq!(socket.host_text(), "/run/pg");
        let v6 = LocalAddress {
            host: LocalHost::Tcp("::1".into()),
            port: 5432,
        };
        assert_eq!(v6.to_string(), "[::1]:5432");
    }
}
