//! Control of the local PostgreSQL server: initdb, pg_basebackup, starting the postmaster as our
//! child (so its exit is seen at once), stopping and the binaries' environment. The configuration
//! files live in [`files`], the libpq queries in [`sql`], pg_control in [`controldata`].

mod catalog;
mod controldata;
mod files;
pub mod methods;
pub mod server;
mod sql;
mod tls;

pub use catalog::{Catalog, binaries_issues, version_text};
pub use controldata::ControlData;
pub use server::Server;
#[cfg(test)]
pub use sql::Walsender;
pub use sql::{ServerStatus, SlotInfo, Unresponsive};

use anyhow::{Context, Result, anyhow, bail};
use shared::config::Config;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::{Mutex, Notify};
use tokio::time::Instant;
use tracing::{info, warn};

/// What a rewind did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RewindOutcome {
    /// pg_rewind found the local WAL to be a prefix of the source's history.
    NotNeeded,
    Rewound,
}

/// Where a replica streams from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub host: String,
    pub port: u16,
}

/// Handle on the local PostgreSQL.
pub struct Postgres {
    /// The agent's configuration; replaced by a reload.
    cfg: std::sync::RwLock<Arc<Config>>,
    /// `postgresql.data_dir`, fixed for the agent's life.
    data_dir: PathBuf,
    /// The postmaster we started, if any; `None` for one adopted from a previous agent.
    child_pid: Mutex<Option<u32>>,
    client: Mutex<Option<Arc<tokio_postgres::Client>>>,
    /// A connection of its own for the status queries, so that they never queue behind a
    /// CHECKPOINT or another long statement on the shared one.
    status_client: Mutex<Option<Arc<tokio_postgres::Client>>>,
    /// Signalled when the postmaster we started exits.
    pub exited: Arc<Notify>,
    /// Set while pgpilot itself stops the postmaster, so its exit is not reported as a crash.
    stopping: Arc<AtomicBool>,
    /// `use_slots` of the dynamic configuration in force: replicas name their slot only then.
    use_slots: AtomicBool,
    /// How long a status query may take, in milliseconds (from the timing in force).
    query_timeout_ms: std::sync::atomic::AtomicU64,
    sysid_cache: std::sync::Mutex<Option<String>>,
    /// The postmaster whose exit is being watched (ours or adopted).
    watched_pid: Arc<std::sync::Mutex<Option<i32>>>,
    /// The members pgpilot puts into `synchronous_standby_names` (synchronous mode), in place
    /// of the configured value; `None` leaves the configuration's.
    sync_names: std::sync::Mutex<Option<Vec<String>>>,
    /// Quorum commit: those names as `ANY k (…)`.
    sync_any: std::sync::Mutex<Option<usize>>,
    /// The parameters last left out of postgresql.conf (warned about once per change), and
    /// why the binaries' catalog could not be read (logged once).
    dropped_parameters: std::sync::Mutex<(Vec<String>, Option<String>)>,
    /// The replica method building the data directory now.
    replica_method: std::sync::Mutex<Option<String>>,
    /// The dynamic configuration's `postgresql` section in force (`recovery_conf`, replica
    /// methods).
    dynamic_postgresql: std::sync::Mutex<Option<serde_json::Map<String, serde_json::Value>>>,
    /// The `recovery_conf` keys last left out (warned about once per change).
    recovery_left_out: std::sync::Mutex<Vec<String>>,
    /// Permanent logical slots are configured: replicas send hot standby feedback, so the
    /// primary keeps the catalog rows their copies of the slots need.
    logical_slots: AtomicBool,
    /// The dynamic configuration's `standby_cluster` in force.
    standby_cluster: std::sync::Mutex<Option<shared::dcs::StandbyCluster>>,
    /// The machine and server stood in for (the simulation); `None` runs everything for real.
    server: Option<Arc<dyn Server>>,
}

impl Postgres {
    pub fn new(cfg: Arc<Config>) -> Postgres {
        Postgres {
            data_dir: cfg.postgresql.data_dir.clone(),
            cfg: std::sync::RwLock::new(cfg),
            child_pid: Mutex::new(None),
            client: Mutex::new(None),
            status_client: Mutex::new(None),
            exited: Arc::new(Notify::new()),
            stopping: Arc::new(AtomicBool::new(false)),
            use_slots: AtomicBool::new(true),
            query_timeout_ms: std::sync::atomic::AtomicU64::new(5000),
            sysid_cache: std::sync::Mutex::new(None),
            watched_pid: Arc::new(std::sync::Mutex::new(None)),
            sync_names: std::sync::Mutex::new(None),
            sync_any: std::sync::Mutex::new(None),
            dropped_parameters: std::sync::Mutex::new((Vec::new(), None)),
            replica_method: std::sync::Mutex::new(None),
            dynamic_postgresql: std::sync::Mutex::new(None),
            recovery_left_out: std::sync::Mutex::new(Vec::new()),
            logical_slots: AtomicBool::new(false),
            standby_cluster: std::sync::Mutex::new(None),
            server: None,
        }
    }

    /// A handle whose programs, postmaster and statements go to `server` instead of the
    /// machine (the seeded simulation); files are still written under the data directory.
    #[cfg(test)]
    pub fn with_server(cfg: Arc<Config>, server: Arc<dyn Server>) -> Postgres {
        Postgres {
            server: Some(server),
            ..Postgres::new(cfg)
        }
    }

    /// The stand-in for the machine and server, if one is installed.
    pub(crate) fn server(&self) -> Option<&Arc<dyn Server>> {
        self.server.as_ref()
    }

    /// Puts the dynamic configuration's `standby_cluster` in force.
    pub fn set_standby_cluster(&self, sc: Option<shared::dcs::StandbyCluster>) {
        *self
            .standby_cluster
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = sc;
    }

    pub fn standby_cluster(&self) -> Option<shared::dcs::StandbyCluster> {
        self.standby_cluster
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether permanent logical slots are configured (see [`Postgres::logical_slots`]).
    pub fn set_logical_slots(&self, on: bool) {
        self.logical_slots.store(on, Ordering::Relaxed);
    }

    pub fn logical_slots(&self) -> bool {
        self.logical_slots.load(Ordering::Relaxed)
    }

    /// Whether permanent logical slots are PostgreSQL failover slots here: the operator asked
    /// for them cluster-wide (`sync_replication_slots: on` in the dynamic configuration's
    /// parameters) and the server has them (PostgreSQL 17 and later). Off by default, as in
    /// Patroni, whose replicas copy only slots without the flag: the leader then creates the
    /// permanent logical slots with `failover` and the replicas' servers keep them.
    pub fn failover_slots(&self) -> bool {
        let asked = self
            .dynamic_postgresql
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .and_then(|d| d.get("parameters"))
            .and_then(|p| p.get("sync_replication_slots"))
            .and_then(shared::tags::strict_bool)
            .unwrap_or(false);
        asked && self.catalog().is_some_and(|c| c.version_num >= 170_000)
    }

    /// Whether PostgreSQL's own slot synchronization (`sync_replication_slots`) keeps this
    /// member's copies of the permanent logical slots: failover slots are in use, such slots
    /// are configured, and the member streams from the primary through its own slot
    /// (`use_slots`, not `nostream`, not `replicatefrom`: a cascading standby cannot sync) and
    /// may be promoted (not `nofailover`).
    pub fn syncs_failover_slots(&self) -> bool {
        self.failover_slots()
            && self.logical_slots()
            && self.can_sync_slots()
            && !self.cfg().tags.no_failover()
    }

    /// Whether this member's server can run slot synchronization at all: it streams from the
    /// primary through its own slot (`use_slots`, not `nostream`, not `replicatefrom`: a
    /// cascading standby cannot sync).
    pub fn can_sync_slots(&self) -> bool {
        let cfg = self.cfg();
        self.use_slots() && !cfg.tags.nostream && cfg.tags.replicatefrom.is_none()
    }

    /// Puts the dynamic configuration's `postgresql` section in force.
    pub fn set_dynamic_postgresql(
        &self,
        section: Option<serde_json::Map<String, serde_json::Value>>,
    ) {
        *self
            .dynamic_postgresql
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = section;
    }

    /// A replica's settings from `recovery_conf` (the member's own, else the dynamic
    /// configuration's); the keys pgpilot owns on a replica are left out, with a warning once.
    pub fn replica_recovery_settings(&self) -> Vec<(String, String)> {
        let dynamic = self
            .dynamic_postgresql
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let (kept, left_out) =
            methods::replica_recovery_settings(&self.cfg().postgresql, dynamic.as_ref());
        let mut warned = self
            .recovery_left_out
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if *warned != left_out {
            if !left_out.is_empty() {
                warn!(
                    keys = ?left_out,
                    "recovery_conf: left out on replicas (pgpilot sets the upstream, the slot and the timeline itself; a recovery target would stop, pause or promote a replica)"
                );
            }
            *warned = left_out;
        }
        kept
    }

    /// Records the replica method building the data directory (shown in `/patroni`).
    pub fn set_replica_method(&self, method: Option<&str>) {
        *self
            .replica_method
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = method.map(str::to_string);
    }

    /// The replica method building the data directory now, if one is.
    pub fn replica_method(&self) -> Option<String> {
        self.replica_method
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The version and parameters of the `postgres` binary in `bin_dir`; `None` when it cannot
    /// be run (logged once per reason): parameters are then written as configured.
    pub fn catalog(&self) -> Option<Arc<Catalog>> {
        if self.server.is_some() {
            // the stand-in has no binaries: parameters are written as configured
            return None;
        }
        match Catalog::of(&self.bin("postgres")) {
            Ok(c) => Some(c),
            Err(e) => {
                let reason = format!("{e:#}");
                let mut noted = self
                    .dropped_parameters
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if noted.1.as_deref() != Some(reason.as_str()) {
                    warn!(
                        "cannot read the PostgreSQL binaries' version and parameters: {reason}; parameters are written unchecked"
                    );
                    noted.1 = Some(reason);
                }
                None
            }
        }
    }

    /// Warns about parameters left out of postgresql.conf when the list changes.
    fn note_dropped(&self, dropped: Vec<String>) {
        let mut noted = self
            .dropped_parameters
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if noted.0 != dropped {
            if !dropped.is_empty() {
                let version = self
                    .catalog_version()
                    .map(version_text)
                    .unwrap_or_else(|| "?".into());
                warn!(
                    parameters = ?dropped,
                    "left out of postgresql.conf: PostgreSQL {version} in bin_dir does not know these parameters (misspelt, retired, or internal); fix them in the configuration"
                );
            }
            noted.0 = dropped;
        }
    }

    /// The major version the data directory was made by (`PG_VERSION`: 15, 18).
    pub fn data_major(&self) -> Option<i32> {
        std::fs::read_to_string(self.data_dir().join("PG_VERSION"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn catalog_version(&self) -> Option<i32> {
        Catalog::of(&self.bin("postgres"))
            .ok()
            .map(|c| c.version_num)
    }

    /// The configuration in force.
    pub fn cfg(&self) -> Arc<Config> {
        self.cfg.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether replicas stream through a physical slot (`use_slots`, from the dynamic
    /// configuration in force).
    pub fn set_use_slots(&self, on: bool) {
        self.use_slots.store(on, Ordering::Relaxed);
    }

    pub fn use_slots(&self) -> bool {
        self.use_slots.load(Ordering::Relaxed)
    }

    /// The deadline of the HA loop's status queries: half retry_timeout, between 1 and 5 s.
    pub fn set_query_timeout(&self, retry_timeout_secs: u64) {
        let ms = retry_timeout_secs.saturating_mul(500).clamp(1000, 5000);
        self.query_timeout_ms.store(ms, Ordering::Relaxed);
    }

    pub fn query_timeout(&self) -> Duration {
        Duration::from_millis(self.query_timeout_ms.load(Ordering::Relaxed))
    }

    /// The members named in `synchronous_standby_names` by synchronous mode.
    pub fn sync_names(&self) -> Option<Vec<String>> {
        self.sync_names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Sets (or with `None` gives back to the configuration) `synchronous_standby_names`; the
    /// caller rewrites the parameters and reloads.
    pub fn set_sync_names(&self, names: Option<Vec<String>>) {
        self.set_sync_setting(names, None);
    }

    /// The same, with quorum commit's `ANY k` when `any` is given.
    pub fn set_sync_setting(&self, names: Option<Vec<String>>, any: Option<usize>) {
        *self.sync_names.lock().unwrap_or_else(|p| p.into_inner()) = names;
        *self.sync_any.lock().unwrap_or_else(|p| p.into_inner()) = any;
    }

    /// Quorum commit's `k` in `ANY k (…)`, when the setting is in that form.
    pub fn sync_any(&self) -> Option<usize> {
        *self.sync_any.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Puts a reloaded configuration in force (the data directory is never changed by a reload).
    pub fn set_cfg(&self, cfg: Arc<Config>) {
        *self.cfg.write().unwrap_or_else(|p| p.into_inner()) = cfg;
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    fn conf_dir(&self) -> PathBuf {
        self.cfg()
            .postgresql
            .config_dir
            .clone()
            .unwrap_or_else(|| self.data_dir().to_path_buf())
    }

    /// `--config-file=…` when postgresql.conf lives outside the data directory (`config_dir`),
    /// for every program that reads it (postgres, pg_rewind, single-user mode).
    fn config_file_arg(&self) -> Option<String> {
        self.cfg().postgresql.config_dir.as_ref().map(|_| {
            format!(
                "--config-file={}",
                self.conf_dir().join("postgresql.conf").display()
            )
        })
    }

    fn bin(&self, name: &str) -> PathBuf {
        self.cfg().postgresql.binary(name)
    }

    /// A command for a PostgreSQL binary, with pgpilot's own secrets kept out of its environment.
    fn command(&self, name: &str) -> Command {
        let mut cmd = Command::new(self.bin(name));
        keep_secrets_out(&mut cmd);
        cmd.env("LC_ALL", "C")
            .env("PGPASSFILE", &self.cfg().postgresql.pgpass)
            .env("PGSERVICEFILE", self.service_file());
        // The postmaster must outlive the agent; short-lived tools opt in to kill_on_drop.
        cmd.stdin(Stdio::null()).kill_on_drop(false);
        cmd
    }

    /// Runs a command to completion, returning stdout or an error carrying its stderr.
    async fn run(&self, cmd: Command, what: &str, timeout: Duration) -> Result<String> {
        self.run_output(cmd, what, timeout)
            .await
            .map(|(out, _)| out)
    }

    /// Runs a command to completion, returning stdout and stderr, or an error carrying stderr.
    async fn run_output(
        &self,
        mut cmd: Command,
        what: &str,
        timeout: Duration,
    ) -> Result<(String, String)> {
        if let Some(server) = &self.server {
            let (program, args) = server::program_and_args(&cmd);
            return tokio::time::timeout(timeout, server.run(&program, args))
                .await
                .map_err(|_| anyhow!("{what} did not finish within {}s", timeout.as_secs()))?
                .with_context(|| format!("{what} failed"));
        }
        // A tool whose job is cancelled (agent shutdown) must not run on unattended.
        cmd.kill_on_drop(true);
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
        Ok((
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
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

    /// A file beside the data directory that exists while pgpilot creates it (initdb or
    /// pg_basebackup), so that a creation cut short by a crash is recognised as pgpilot's own.
    fn creation_marker(&self) -> PathBuf {
        self.beside_data_dir(".pgpilot-creating")
    }

    /// `<data_dir><suffix>`, a file next to the data directory (pg_rewind and initdb would
    /// delete or refuse one inside it).
    fn beside_data_dir(&self, suffix: &str) -> PathBuf {
        let mut name = self
            .data_dir()
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        name.push(suffix);
        self.data_dir().with_file_name(name)
    }

    /// Whether a creation of the data directory by pgpilot was interrupted.
    pub fn creation_interrupted(&self) -> bool {
        self.creation_marker().exists()
    }

    /// Marks the start of a creation; leftovers of an interrupted one (pgpilot's own) are removed
    /// first, since initdb and pg_basebackup want an empty directory.
    pub fn begin_creation(&self) -> Result<()> {
        if self.creation_interrupted() {
            warn!(
                data_dir = %self.data_dir().display(),
                "removing what an interrupted initdb or clone left behind"
            );
            wipe_dir(self.data_dir());
        }
        std::fs::write(self.creation_marker(), "")
            .with_context(|| format!("cannot write {}", self.creation_marker().display()))
    }

    /// Marks the end of a creation (successful or cleaned up).
    pub fn end_creation(&self) {
        let _ = std::fs::remove_file(self.creation_marker());
    }

    /// Empties the data directory pgpilot was creating (a failed pg_basebackup).
    pub fn discard_creation(&self) {
        wipe_dir(self.data_dir());
        self.end_creation();
    }

    /// A file beside the data directory that exists while pg_rewind changes it and stays when
    /// pg_rewind fails: such a directory is inconsistent and must never be started.
    fn rewind_marker(&self) -> PathBuf {
        self.beside_data_dir(".pgpilot-rewinding")
    }

    /// Whether a pg_rewind of the data directory failed or was cut short.
    pub fn rewind_broken(&self) -> bool {
        self.rewind_marker().exists()
    }

    /// Stops PostgreSQL if it runs and rewinds the data directory from `from` with pg_rewind.
    /// A dry run decides first, so a failure to connect or a source that is not ready leaves
    /// the data untouched (and is retried); only a failure of the real run marks the directory
    /// broken.
    /// `expect_timeline_change`: the source runs on a newer timeline than this data (so
    /// "same timeline" can only mean the source's pg_control is stale).
    pub async fn rewind(
        &self,
        from: &Upstream,
        expect_timeline_change: bool,
        timeout: Duration,
    ) -> Result<RewindOutcome> {
        self.stop("fast", timeout).await?;
        let pg = &self.cfg().postgresql;
        let user = pg.rewind.as_ref().unwrap_or(&pg.superuser);
        let app = format!("{}-rewind", self.cfg().name);
        let conninfo = self.conninfo(
            user,
            &from.host,
            from.port,
            &[("dbname", &pg.database), ("application_name", &app)],
        );
        let rewind_cmd = |extra: &str| {
            let mut cmd = self.command("pg_rewind");
            cmd.arg("-D")
                .arg(self.data_dir())
                .arg(format!("--source-server={conninfo}"))
                .arg(extra);
            cmd.args(self.config_file_arg());
            cmd
        };
        self.ensure_clean_shutdown(timeout).await?;
        let source = format!("{}:{}", from.host, from.port);
        let started = Instant::now();
        let (_, dry) = self
            .run_output(rewind_cmd("--dry-run"), "pg_rewind --dry-run", timeout)
            .await?;
        if dry.contains("on the same timeline") && expect_timeline_change {
            // A freshly promoted source whose pg_control still shows the old timeline (no
            // checkpoint since the promotion) makes pg_rewind see nothing to do: wait for it.
            bail!(
                "the source has not written a checkpoint since its promotion (pg_control still shows the old timeline); retrying"
            );
        }
        if dry.contains("no rewind required") {
            info!(
                source,
                "pg_rewind: no rewind required; the data directory can follow as it is"
            );
            return Ok(RewindOutcome::NotNeeded);
        }
        if let Some(line) = dry.lines().find(|l| l.contains("diverged")) {
            info!("{}", line.trim_start_matches("pg_rewind: "));
        }
        std::fs::write(
            self.rewind_marker(),
            format!("pg_rewind from {source} started\n"),
        )
        .with_context(|| format!("cannot write {}", self.rewind_marker().display()))?;
        info!(source, "running pg_rewind");
        match self
            .run_output(
                rewind_cmd("--progress"),
                "pg_rewind",
                timeout.max(Duration::from_secs(3600)),
            )
            .await
        {
            Ok(_) => {
                let _ = std::fs::remove_file(self.rewind_marker());
                info!(
                    seconds = started.elapsed().as_secs_f32(),
                    "pg_rewind finished: the data directory follows the new leader's timeline"
                );
                Ok(RewindOutcome::Rewound)
            }
            Err(e) => {
                let _ = std::fs::write(self.rewind_marker(), format!("pg_rewind failed: {e:#}\n"));
                Err(e.context(
                    "pg_rewind failed; the data directory is left as it is and will not be started",
                ))
            }
        }
    }

    /// pg_rewind needs a cleanly stopped target: a server that crashed goes through crash
    /// recovery first, in single-user mode (no connections, no archiving), which ends with a
    /// shutdown checkpoint.
    async fn ensure_clean_shutdown(&self, timeout: Duration) -> Result<()> {
        let cd = self.controldata().await?;
        if cd.clean_shutdown() {
            return Ok(());
        }
        info!(
            state = cd.cluster_state,
            "PostgreSQL did not stop cleanly: running crash recovery in single-user mode before pg_rewind"
        );
        // Single-user mode cannot run as a standby; recovery of the local WAL is all it needs.
        for signal in ["standby.signal", "recovery.signal"] {
            let _ = std::fs::remove_file(self.data_dir().join(signal));
        }
        let mut cmd = self.command("postgres");
        cmd.arg("--single")
            .arg("-F")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-c", "archive_mode=off", "-c", "hot_standby=off"]);
        cmd.args(self.config_file_arg());
        cmd.arg("template1");
        self.run(
            cmd,
            "postgres --single (crash recovery)",
            timeout.max(Duration::from_secs(600)),
        )
        .await?;
        Ok(())
    }

    /// Stops PostgreSQL if it runs and empties the data directory (markers included), so that
    /// the member is cloned again.
    pub async fn wipe(&self, timeout: Duration) -> Result<()> {
        self.stop("immediate", timeout).await?;
        wipe_dir(self.data_dir());
        let _ = std::fs::remove_file(self.rewind_marker());
        self.end_creation();
        if !self.data_dir_is_empty() {
            bail!("cannot empty {}", self.data_dir().display());
        }
        Ok(())
    }

    /// The timeline WAL ending at `lsn` on timeline `base` continues on: the newest timeline
    /// whose `*.history` file is in pg_wal (a replica fetches it before streaming a timeline;
    /// a promotion writes it) when that history forks off `base` at or after `lsn`, else `base`.
    /// A replica that ran past the fork point stays on `base` whatever files it holds: it
    /// cannot replay the newer timeline, and its WAL diverged from it.
    ///
    /// First of all, the segment files say it: the highest timeline with a segment file for
    /// the segment holding `lsn` is the one the server received or replayed that WAL on (a
    /// replica's reported timeline — its last restartpoint's, when it does not stream — can
    /// be the previous one for minutes after a switch, and the history file alone cannot tell
    /// a replica that followed the switch from one that diverged before it).
    pub fn wal_timeline(&self, base: u64, lsn: u64) -> u64 {
        if let Some(tl) = segment_timeline(&self.data_dir().join("pg_wal"), lsn) {
            return tl.max(base);
        }
        let Ok(entries) = std::fs::read_dir(self.data_dir().join("pg_wal")) else {
            return base;
        };
        let newest = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name();
                let name = name.to_str()?;
                let hex = name.strip_suffix(".history")?;
                (hex.len() == 8).then(|| u64::from_str_radix(hex, 16).ok())?
            })
            .fold(base, u64::max);
        if newest == base {
            return base;
        }
        let fits = self.timeline_history(newest).is_some_and(|(switches, _)| {
            switches
                .iter()
                .find(|(tl, _, _)| *tl == base)
                .is_some_and(|(_, at, _)| lsn <= *at)
        });
        if fits { newest } else { base }
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
        if let Some(server) = &self.server {
            return server.postmaster_pid();
        }
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

    /// Runs initdb with the `bootstrap.initdb` options.
    pub async fn initdb(&self) -> Result<()> {
        let su = &self.cfg().postgresql.superuser;
        let mut cmd = self.command("initdb");
        cmd.arg("-D")
            .arg(self.data_dir())
            .arg(format!("--username={}", su.username));
        for opt in &self.cfg().bootstrap.initdb {
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
                Duration::from_secs(self.cfg().postgresql.pg_ctl_timeout.max(120)),
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
        if let Some(server) = &self.server {
            self.stopping.store(false, Ordering::SeqCst);
            let pid = server.start_postmaster(self.exited.clone())?;
            info!(pid, "started postmaster");
            return self
                .wait_until_accepting(pid, timeout, Path::new("the server"))
                .await;
        }
        self.kill_orphans().await;
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
        cmd.args(self.config_file_arg());
        cmd.stdout(log.try_clone()?).stderr(log).process_group(0);
        let mut child = cmd.spawn().context("cannot start postgres")?;
        let pid = child.id().unwrap_or(0);
        info!(pid, "started postmaster");
        *self.child_pid.lock().await = Some(pid);
        *self.watched_pid.lock().unwrap_or_else(|p| p.into_inner()) = Some(pid as i32);
        let exited = self.exited.clone();
        let stopping = self.stopping.clone();
        stopping.store(false, Ordering::SeqCst);
        tokio::spawn(async move {
            let status = child.wait().await;
            if stopping.load(Ordering::SeqCst) {
                info!(pid, "postmaster stopped");
            } else {
                warn!(pid, ?status, "postmaster exited unexpectedly");
            }
            exited.notify_one();
        });
        self.wait_until_accepting(pid, timeout, &log_path).await
    }

    /// Waits until the postmaster `pid` just started accepts connections, at most `timeout`.
    async fn wait_until_accepting(
        &self,
        pid: u32,
        timeout: Duration,
        log_path: &Path,
    ) -> Result<()> {
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
                        // the last attempt's reason: a TLS or authentication setting at
                        // fault is named there
                        bail!(
                            "PostgreSQL did not accept connections within {}s ({e:#}); see {}",
                            timeout.as_secs(),
                            log_path.display()
                        );
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Backends and auxiliary processes a killed postmaster left behind (their working directory
    /// is the data directory). While they live, the old shared memory is attached and a new
    /// postmaster refuses to start; the postmaster is gone, so they are killed.
    pub async fn kill_orphans(&self) {
        if let Some(server) = self.server() {
            server.kill_all();
            return;
        }
        let Ok(dir) = std::fs::canonicalize(self.data_dir()) else {
            return;
        };
        let me = std::process::id();
        let orphans = || -> Vec<i32> {
            let Ok(procs) = std::fs::read_dir("/proc") else {
                return Vec::new();
            };
            procs
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|pid| *pid as u32 != me)
                .filter(|pid| {
                    let comm =
                        std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                    matches!(comm.trim(), "postgres" | "postmaster")
                        && std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|c| c == dir)
                })
                .collect()
        };
        let found = orphans();
        if found.is_empty() {
            return;
        }
        warn!(pids = ?found, "killing processes the dead postmaster left behind");
        for pid in &found {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !orphans().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Watches a postmaster this agent did not start (adopted after an agent restart), so that
    /// its exit wakes the HA loop at once, as for our own child.
    pub fn watch_adopted(&self, pid: i32) {
        if self.server.is_some() {
            // the stand-in notifies `exited` for every postmaster it runs
            return;
        }
        {
            let mut watched = self.watched_pid.lock().unwrap_or_else(|p| p.into_inner());
            if *watched == Some(pid) {
                return;
            }
            *watched = Some(pid);
        }
        let exited = self.exited.clone();
        let stopping = self.stopping.clone();
        let watched = self.watched_pid.clone();
        tokio::spawn(async move {
            let proc_dir = PathBuf::from(format!("/proc/{pid}"));
            while proc_dir.exists() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if !stopping.load(Ordering::SeqCst) {
                warn!(pid, "the adopted postmaster exited unexpectedly");
            }
            let mut w = watched.lock().unwrap_or_else(|p| p.into_inner());
            if *w == Some(pid) {
                *w = None;
            }
            exited.notify_one();
        });
    }

    fn is_child_alive(&self, pid: u32) -> bool {
        if let Some(server) = &self.server {
            return server.postmaster_pid() == Some(pid as i32);
        }
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
        self.stopping.store(true, Ordering::SeqCst);
        let result = self.pg_ctl_stop(mode, timeout).await;
        let result = match result {
            Err(e) if mode != "immediate" => {
                // A server that will not stop must not keep taking writes: escalate.
                warn!("stopping PostgreSQL ({mode}) failed: {e:#}; stopping it immediately");
                self.pg_ctl_stop("immediate", Duration::from_secs(30)).await
            }
            other => other,
        };
        if result.is_ok() {
            *self.child_pid.lock().await = None;
        }
        result
    }

    async fn pg_ctl_stop(&self, mode: &str, timeout: Duration) -> Result<()> {
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
            .await
            .map(|_| ())
    }

    /// Runs a replica or bootstrap method's command (`what` names it in the log), as the
    /// agent's user with the pgpass file (`PGPASSFILE`) and without pgpilot's secrets in its
    /// environment; its output goes to the agent's log line by line. Fails with the exit status
    /// and the last lines of output.
    pub async fn run_method(&self, what: &str, argv: &[String]) -> Result<()> {
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| anyhow!("{what}: no command"))?;
        if let Some(server) = &self.server {
            return server
                .run(program, args.to_vec())
                .await
                .map(|_| ())
                .with_context(|| format!("{what} failed"));
        }
        let mut cmd = Command::new(program);
        keep_secrets_out(&mut cmd);
        cmd.args(args)
            .env("PGPASSFILE", &self.cfg().postgresql.pgpass)
            .env("PGSERVICEFILE", self.service_file())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // its own process group: a cancelled method (reinit --force, shutdown) takes its
            // children with it
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("{what}: cannot run {program}"))?;
        let _group = child.id().map(ProcessGroupGuard);
        let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) else {
            bail!("{what}: output not captured");
        };
        let tail = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
        let pump = |stream: Box<dyn tokio::io::AsyncRead + Unpin + Send>| {
            let tail = tail.clone();
            let what = what.to_string();
            async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if line.trim().is_empty() {
                        continue;
                    }
                    info!(method = what, "{line}");
                    let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
                    t.push_back(line);
                    if t.len() > 5 {
                        t.pop_front();
                    }
                }
            }
        };
        let pumps = tokio::spawn({
            let (a, b) = (pump(Box::new(out)), pump(Box::new(err)));
            async move {
                tokio::join!(a, b);
            }
        });
        let status = child
            .wait()
            .await
            .with_context(|| format!("{what}: cannot wait for {program}"))?;
        // a process it left behind may hold its output open: read what is there, not forever
        let _ = tokio::time::timeout(Duration::from_secs(5), pumps).await;
        if !status.success() {
            let last: Vec<String> = tail
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .cloned()
                .collect();
            bail!("{what} failed ({status}): {}", last.join("; "));
        }
        Ok(())
    }

    /// Removes recovery settings a restore wrote into `postgresql.auto.conf` (they would
    /// override the ones pgpilot writes).
    pub fn sanitize_auto_conf(&self) -> Result<()> {
        let path = self.data_dir().join("postgresql.auto.conf");
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(());
        };
        if let Some(clean) = methods::without_recovery_settings(&text) {
            info!(file = %path.display(), "removed the recovery settings a restore left there");
            std::fs::write(&path, clean)
                .with_context(|| format!("cannot rewrite {}", path.display()))?;
        }
        Ok(())
    }

    /// Puts a logical slot's state file, copied from the leader, into this (stopped) server's
    /// `pg_replslot`, written to a temporary directory, synced and renamed into place as
    /// PostgreSQL does.
    pub fn install_slot_state(&self, name: &str, state: &[u8]) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        anyhow::ensure!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "not a slot name: {name:?}"
        );
        let dir = self.data_dir().join("pg_replslot");
        let tmp = dir.join(format!("{name}.tmp"));
        let target = dir.join(name);
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o700))?;
        let file = tmp.join("state");
        std::fs::write(&file, state).with_context(|| format!("cannot write {}", file.display()))?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
        std::fs::File::open(&file)?.sync_all()?;
        let _ = std::fs::remove_dir_all(&target);
        std::fs::rename(&tmp, &target)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), target.display()))?;
        std::fs::File::open(&dir)?.sync_all()?;
        Ok(())
    }

    /// Empties the data directory (before a method that needs it empty).
    pub fn empty_data_dir(&self) {
        wipe_dir(self.data_dir());
    }

    /// Clones the data directory from `from` with pg_basebackup, logging progress.
    pub async fn basebackup(&self, from: &Upstream) -> Result<()> {
        let user = &self.cfg().postgresql.replication;
        let conninfo = self.conninfo(
            user,
            &from.host,
            from.port,
            &[
                ("application_name", &self.cfg().name),
                ("dbname", "postgres"),
            ],
        );
        let mut cmd = self.command("pg_basebackup");
        cmd.kill_on_drop(true);
        cmd.arg(format!("--pgdata={}", self.data_dir().display()))
            .arg("-X")
            .arg("stream")
            .arg(format!("--dbname={conninfo}"))
            // never a "Password:" prompt: a missing or unreadable pgpass fails at once
            .arg("--no-password")
            .arg("--progress");
        if !self
            .cfg()
            .postgresql
            .basebackup
            .iter()
            .any(|o| o.starts_with("--checkpoint"))
        {
            cmd.arg("--checkpoint=fast");
        }
        for opt in &self.cfg().postgresql.basebackup {
            cmd.arg(opt);
        }
        if let Some(server) = &self.server {
            let (program, args) = server::program_and_args(&cmd);
            return server
                .run(&program, args)
                .await
                .map(|_| ())
                .context("pg_basebackup failed");
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

    /// Runs `bootstrap.post_bootstrap` with the agent's own local connection as its argument,
    /// as Patroni passes it: a libpq `key=value` string (the Unix socket with
    /// `use_unix_socket`, the superuser's TLS options, no password: that is in the pgpass file),
    /// and `PGOPTIONS` making its statements local-commit and untimed.
    pub async fn post_bootstrap(&self, script: &str) -> Result<()> {
        let cfg = self.cfg();
        let local = self.local_address(&cfg);
        let url = self.conninfo(
            &cfg.postgresql.superuser,
            &local.host_text(),
            local.port,
            &[("dbname", &cfg.postgresql.database)],
        );
        let mut cmd = Command::new("/bin/sh");
        keep_secrets_out(&mut cmd);
        cmd.arg("-c")
            .arg(format!("{script} \"$1\""))
            .arg("post_bootstrap")
            .arg(url)
            .env("PGPASSFILE", &cfg.postgresql.pgpass)
            .env("PGSERVICEFILE", self.service_file())
            .env(
                "PGOPTIONS",
                "-c synchronous_commit=local -c statement_timeout=0",
            )
            .stdin(Stdio::null())
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

/// The highest timeline with a WAL segment file (`TTTTTTTTLLLLLLLLSSSSSSSS`) in `pg_wal` for
/// the segment that holds the byte before `lsn`; the segment size is the files' own (they are
/// created at full size). `None` when no such file is there.
pub(crate) fn segment_timeline(pg_wal: &Path, lsn: u64) -> Option<u64> {
    let entries = std::fs::read_dir(pg_wal).ok()?;
    let mut files = Vec::new();
    let mut size = None;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        let field = |r: std::ops::Range<usize>| u64::from_str_radix(&name[r], 16).ok();
        let (Some(tl), Some(log), Some(seg)) = (field(0..8), field(8..16), field(16..24)) else {
            continue;
        };
        if size.is_none() {
            size = e
                .metadata()
                .ok()
                .map(|m| m.len())
                .filter(|l| l.is_power_of_two() && (1 << 20..=1 << 30).contains(l));
        }
        files.push((tl, log, seg));
    }
    let size = size?;
    let at = lsn.checked_sub(1)?;
    let (log, seg) = (at >> 32, (at & 0xFFFF_FFFF) / size);
    files
        .iter()
        .filter(|(_, l, s)| *l == log && *s == seg)
        .map(|(tl, _, _)| *tl)
        .max()
}

/// Removes everything inside `dir`, keeping `dir` itself.
fn wipe_dir(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        }
    }
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        // a link planted where the secret goes is not followed
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    // a file that existed before keeps its mode through open(): libpq ignores a pgpass others
    // can read, and a secret must not stay readable
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot make {} private (mode 0600)", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// Removes pgpilot's own `PATRONI_*` variables (which may carry passwords) from the environment
/// of a program the agent runs.
/// Kills a method's whole process group when the method ends or is cancelled.
struct ProcessGroupGuard(u32);

impl Drop for ProcessGroupGuard {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

pub(crate) fn keep_secrets_out(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PATRONI_") {
            cmd.env_remove(k);
        }
    }
}
