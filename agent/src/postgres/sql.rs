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
  (SELECT written_lsn::text FROM pg_stat_wal_receiver LIMIT 1),
  (SELECT json_object_agg(s.name, json_build_object('old_value', s.setting, 'new_value', f.setting))::text
     FROM pg_settings s
     LEFT JOIN LATERAL (SELECT setting FROM pg_file_settings fs
                        WHERE fs.name = s.name ORDER BY seqno DESC LIMIT 1) f ON true
    WHERE s.pending_restart)";
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

    /// Connection settings for the superuser (user, password, database) of `cfg`; host and
    /// port are the caller's.
    fn superuser_login(cfg: &shared::config::Config) -> tokio_postgres::Config {
        let su = &cfg.postgresql.superuser;
        let mut pgc = tokio_postgres::Config::new();
        // TCP keepalives notice a peer whose machine is gone; a statement no agent call should
        // need longer than a minute for is cancelled by the server itself
        pgc.user(&su.username)
            .dbname(&cfg.postgresql.database)
            .application_name("pgpilot")
            .connect_timeout(Duration::from_secs(3))
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(5))
            .keepalives_interval(Duration::from_secs(2))
            .keepalives_retries(3)
            .options("-c statement_timeout=60000");
        if let Some(pw) = &su.password {
            pgc.password(pw.expose());
        }
        pgc
    }

    /// A superuser connection to another member's server (the leader's), with the TLS
    /// options in force; its connection task, to abort when done.
    async fn connect_remote(
        cfg: &shared::config::Config,
        from: &super::Upstream,
    ) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>)> {
        let mut pgc = Self::superuser_login(cfg);
        pgc.host(&from.host).port(from.port);
        let (tls, how) = Self::superuser_tls(cfg, &mut pgc, false)
            .map_err(|e| anyhow!("cannot connect to {}:{}: {e:#}", from.host, from.port))?;
        let (client, conn) = pgc.connect(tls).await.map_err(|e| {
            anyhow!(
                "cannot connect to {}:{} ({how}): {:#}",
                from.host,
                from.port,
                anyhow::Error::new(e)
            )
        })?;
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok((client, task))
    }

    /// TLS for a superuser connection, from `postgresql.authentication.superuser`'s libpq
    /// options (errors name the option at fault).
    fn superuser_tls(
        cfg: &shared::config::Config,
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
        let su = &cfg.postgresql.superuser;
        let tls = super::tls::PgTls::from_user(su, super::tls::home().as_deref())
            .map_err(|e| anyhow!("postgresql.authentication.superuser: {e:#}"))?;
        let connector = tls
            .connector(pgc, false, su.sslpassword.as_ref())
            .map_err(|e| anyhow!("postgresql.authentication.superuser: {e:#}"))?;
        Ok((connector, tls.describe(false)))
    }

    /// Whether `cfg`'s superuser TLS options can make a connection (files readable, values
    /// known): a reload is refused rather than the next connection failing.
    pub fn check_superuser_tls(&self, cfg: &shared::config::Config) -> Result<()> {
        let mut pgc = tokio_postgres::Config::new();
        // the local connection, and the remote ones (a new primary's history) over TCP
        Self::superuser_tls(cfg, &mut pgc, false).map(|_| ())
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
        let mut pgc = Self::superuser_login(cfg);
        if let Some(db) = dbname {
            pgc.dbname(db);
        }
        let (host, port) = cfg.postgresql.local_host_port();
        if cfg.postgresql.use_unix_socket {
            let dir = self
                .socket_dir()
                .unwrap_or_else(|| PathBuf::from("/var/run/postgresql"));
            pgc.host_path(dir);
        } else {
            pgc.host(&host);
        }
        pgc.port(port);
        let (tls, how) = Self::superuser_tls(cfg, &mut pgc, cfg.postgresql.use_unix_socket)
            .map_err(|e| anyhow!("cannot connect to local PostgreSQL at {host}:{port}: {e:#}"))?;
        let (client, conn) = pgc.connect(tls).await.map_err(|e| {
            anyhow!(
                "cannot connect to local PostgreSQL at {host}:{port} ({how}): {:#}",
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

    fn socket_dir(&self) -> Option<PathBuf> {
        self.cfg()
            .postgresql
            .parameters
            .get("unix_socket_directories")
            .map(guc_value)
            .and_then(|s| s.split(',').next().map(|d| PathBuf::from(d.trim())))
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
        // and this member's slot there, so that streaming starts at once
        if self.use_slots() && !cfg.tags.nostream {
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
        let client = self.client().await?;
        client.query_one("SELECT pg_promote(false)", &[]).await?;
        let started = std::time::Instant::now();
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
            let client = self.client().await?;
            client.batch_execute("CHECKPOINT").await?;
            Ok(())
        })
        .await
    }

    /// Reloads the configuration files.
    pub async fn reload(&self) -> Result<()> {
        self.bounded("a reload", self.query_timeout(), async {
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
        let rows = self
            .bounded("the slot list", self.query_timeout(), async {
                let client = self.client().await?;
                Ok(client
                    .query(
                        "SELECT slot_name::text, slot_type, database::text, plugin::text,
                                restart_lsn::text, confirmed_flush_lsn::text
                         FROM pg_replication_slots WHERE NOT temporary",
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
            })
            .collect())
    }

    /// Creates a logical slot in `database` with `plugin`, if it does not exist.
    pub async fn create_logical_slot(
        &self,
        name: &str,
        database: &str,
        plugin: &str,
    ) -> Result<()> {
        let cfg = self.cfg();
        // creating a logical slot waits for running transactions: bounded by the statement
        // limit, beside the loop's status queries
        self.bounded("a logical slot creation", STATEMENT_LIMIT, async {
            let client = self.connect_local_to(&cfg, Some(database)).await?;
            client
                .execute(
                    "SELECT pg_create_logical_replication_slot($1, $2)
                     WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
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
    /// superuser connection (`pg_read_binary_file`), with its type, database and plugin there.
    pub async fn remote_slot_state(
        &self,
        from: &super::Upstream,
        name: &str,
    ) -> Result<(Vec<u8>, Option<String>, Option<String>)> {
        let cfg = self.cfg();
        self.remote_deadline(from, async {
            let (client, task) = Self::connect_remote(&cfg, from).await?;
            let row = client
                .query_opt(
                    "SELECT database::text, plugin::text,
                            pg_read_binary_file('pg_replslot/' || slot_name || '/state')
                     FROM pg_replication_slots WHERE slot_name = $1 AND slot_type = 'logical'",
                    &[&name],
                )
                .await?;
            task.abort();
            let row = row.ok_or_else(|| anyhow!("no logical slot {name} on the leader"))?;
            Ok((row.get(2), row.get(0), row.get(1)))
        })
        .await
    }

    /// Drops a slot if it exists and is not active.
    pub async fn drop_slot(&self, name: &str) -> Result<()> {
        self.bounded("a slot drop", self.query_timeout(), async {
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
}
