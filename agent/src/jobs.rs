//! The long operations the runtime runs in the background while its loop keeps cycling:
//! bootstrapping a new cluster, cloning a replica, starting PostgreSQL with fresh configuration.

use crate::postgres::{Postgres, Upstream};
use anyhow::{Context, Result, bail};
use serde_json::{Map, Value};
use shared::config::Config;
use shared::dcs::{Dcs, DynamicConfig, Kv};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tracing::{error, info, warn};

/// Writes the configuration files and starts PostgreSQL.
pub(crate) async fn start_postgres(
    pg: Arc<Postgres>,
    params: Map<String, Value>,
    hba: Option<Vec<String>>,
    replica_of: Option<Option<Upstream>>,
    timeout: Duration,
) -> Result<()> {
    pg.write_pgpass()?;
    pg.write_config(&params, replica_of.as_ref().map(|u| u.as_ref()))?;
    pg.write_hba(hba, false)?;
    pg.start(timeout).await
}

/// The member a replica is cloned from: where its PostgreSQL listens, and its REST API (asked
/// for its server version first). Without an upstream (nobody leads; a standby cluster fed by
/// the archive alone) only the methods with `no_leader` run.
pub(crate) struct CloneSource {
    pub upstream: Option<Upstream>,
    pub name: String,
    pub api_url: String,
    pub peers: shared::api::MemberClient,
    /// Replica methods that replace `create_replica_methods` (a standby cluster's own).
    pub methods: Option<Vec<String>>,
}

/// Refuses a source whose PostgreSQL major version is not this member's (`bin_dir`): a clone
/// would not start, a replica could not follow. Names both versions.
fn same_major(source: &str, theirs: i32, ours: i32) -> Result<()> {
    if theirs / 10000 != ours / 10000 {
        bail!(
            "{source} runs PostgreSQL {}, this member's bin_dir has PostgreSQL {}: a member never clones from or follows a server of another major version; point postgresql.bin_dir at a PostgreSQL {} installation",
            crate::postgres::version_text(theirs),
            crate::postgres::version_text(ours),
            theirs / 10000
        );
    }
    Ok(())
}

/// Builds the data directory from `source` with the replica methods in order
/// (`create_replica_methods`: pg_basebackup, or a named method such as a pgBackRest restore,
/// falling back to the next when one fails) and starts as a replica of the leader.
pub(crate) async fn clone_replica(
    pg: Arc<Postgres>,
    source: CloneSource,
    leader: Option<Upstream>,
    (params, dynamic_pg): (Map<String, Value>, Option<Map<String, Value>>),
    hba: Option<Vec<String>>,
    timeout: Duration,
) -> Result<()> {
    use crate::postgres::methods::{self, ReplicaMethod};
    let started = Instant::now();
    let mut cfg = (*pg.cfg()).clone();
    if let Some(list) = &source.methods {
        cfg.postgresql.create_replica_methods = Some(list.clone());
    }
    let ours = pg.catalog().map(|c| c.version_num);
    // before copying anything: the source's version, from its REST API
    if let Some(ours) = ours
        && let Ok(status) = source.peers.status_or_error(&source.api_url).await
        && let Some(theirs) = status["server_version"]
            .as_i64()
            .and_then(|v| i32::try_from(v).ok())
            .filter(|v| *v > 0)
    {
        same_major(&source.name, theirs, ours)?;
    }
    let from = source.upstream;
    let connstring = from
        .as_ref()
        .map(|from| {
            pg.conninfo(
                &cfg.postgresql.replication,
                &from.host,
                from.port,
                &[("dbname", cfg.postgresql.database.as_str())],
            )
        })
        .unwrap_or_default();
    let data_dir = pg.data_dir().display().to_string();
    let (tries, problems) = methods::replica_methods(
        &cfg.postgresql,
        dynamic_pg.as_ref(),
        &methods::Source {
            scope: &cfg.scope,
            data_dir: &data_dir,
            connstring: &connstring,
        },
    );
    for p in &problems {
        warn!("replica method skipped: {p}");
    }
    let tries = if from.is_some() {
        tries
    } else {
        methods::without_leader(tries)
    };
    anyhow::ensure!(
        !tries.is_empty(),
        "no replica method can run{}: {}",
        if from.is_some() {
            ""
        } else {
            " without a leader (only methods with no_leader: true do)"
        },
        problems.join("; ")
    );
    pg.write_pgpass()?;
    pg.begin_creation()?;
    std::fs::create_dir_all(pg.data_dir())
        .with_context(|| format!("cannot create {}", pg.data_dir().display()))?;
    set_mode_0700(pg.data_dir());
    let mut failures = Vec::new();
    let mut built_with = None;
    for method in &tries {
        pg.set_replica_method(Some(method.name()));
        let outcome = match method {
            ReplicaMethod::Basebackup => {
                let Some(from) = &from else {
                    // filtered out above: pg_basebackup needs a running source
                    continue;
                };
                info!(
                    host = from.host,
                    port = from.port,
                    "creating replica with pg_basebackup"
                );
                // a method before it may have left files (keep_data)
                pg.empty_data_dir();
                pg.basebackup(from).await
            }
            ReplicaMethod::Command {
                name,
                argv,
                keep_data,
                ..
            } => {
                info!(
                    method = name,
                    command = methods::redacted(argv),
                    "creating replica with {name}"
                );
                if !keep_data {
                    pg.empty_data_dir();
                }
                match pg.run_method(&format!("replica method {name}"), argv).await {
                    Ok(()) if pg.data_major().is_none() => Err(anyhow::anyhow!(
                        "replica method {name} succeeded but left no data directory (no PG_VERSION in {data_dir})"
                    )),
                    other => other,
                }
            }
        };
        match outcome {
            Ok(()) => {
                built_with = Some(method.name().to_string());
                break;
            }
            Err(e) => {
                warn!(
                    method = method.name(),
                    "{e:#}; trying the next replica method"
                );
                failures.push(format!("{}: {e:#}", method.name()));
                let keep = matches!(
                    method,
                    ReplicaMethod::Command {
                        keep_data: true,
                        ..
                    }
                );
                if !keep {
                    pg.empty_data_dir();
                }
            }
        }
    }
    pg.set_replica_method(None);
    let Some(method) = built_with else {
        // only what this clone wrote is removed: the directory was empty before (see ha.rs)
        pg.discard_creation();
        bail!(
            "no replica method built the data directory: {}",
            failures.join("; ")
        );
    };
    // and after it, from the copy itself (a source whose REST API did not answer)
    if let (Some(ours), Some(theirs)) = (ours, pg.data_major())
        && let Err(e) = same_major(&source.name, theirs.saturating_mul(10000), ours)
    {
        pg.discard_creation();
        return Err(e);
    }
    // a restore leaves its own recovery settings: pgpilot's are the ones in force
    if let Err(e) = pg.sanitize_auto_conf() {
        pg.discard_creation();
        return Err(e);
    }
    let _ = std::fs::remove_file(pg.data_dir().join("recovery.signal"));
    pg.end_creation();
    info!(
        method,
        seconds = started.elapsed().as_secs_f32(),
        "replica data directory built"
    );
    // without a leader: a replica fed by restore_command until one leads
    let upstream = leader.or(from);
    start_postgres(pg, params, hba, Some(upstream), timeout).await?;
    info!(
        seconds = started.elapsed().as_secs_f32(),
        "replica is running"
    );
    Ok(())
}

/// A custom `bootstrap.method`: its command builds the data directory (a restore from a
/// backup); PostgreSQL then recovers with the section's `recovery_conf` (a point-in-time
/// target, `recovery_target_action: promote`) and this returns once it accepts writes. A
/// server that pauses at its target waits for the operator; one that shuts down there fails
/// the bootstrap.
async fn restore(
    cfg: &Config,
    pg: &Postgres,
    dynamic: &DynamicConfig,
    name: &str,
    section: &Map<String, Value>,
) -> Result<()> {
    use crate::postgres::methods;
    let started = Instant::now();
    let data_dir = pg.data_dir().display().to_string();
    let argv = methods::bootstrap_command(name, section, &cfg.scope, &data_dir)?;
    info!(
        method = name,
        command = methods::redacted(&argv),
        "bootstrapping the cluster with bootstrap method {name}"
    );
    pg.begin_creation()?;
    std::fs::create_dir_all(pg.data_dir())
        .with_context(|| format!("cannot create {}", pg.data_dir().display()))?;
    set_mode_0700(pg.data_dir());
    pg.run_method(&format!("bootstrap method {name}"), &argv)
        .await?;
    if pg.data_major().is_none() {
        bail!(
            "bootstrap method {name} succeeded but left no data directory (no PG_VERSION in {data_dir})"
        );
    }
    // the creation marker stays until the restored server has ended recovery: a directory an
    // interrupted restore left is never started as it is
    info!(
        method = name,
        seconds = started.elapsed().as_secs_f32(),
        "data directory restored; starting PostgreSQL to recover"
    );
    pg.write_pgpass()?;
    let recovery = section.get("recovery_conf").and_then(Value::as_object);
    let keep = methods::keeps_existing_recovery_conf(section);
    let _ = std::fs::remove_file(pg.data_dir().join("standby.signal"));
    match recovery {
        Some(settings) => {
            pg.sanitize_auto_conf()?;
            pg.write_recovery_target(&dynamic.parameters(), settings)?;
        }
        None if keep => {
            // what the restore wrote stays in force (postgresql.auto.conf, recovery.signal)
            pg.write_config(&dynamic.parameters(), None)?;
        }
        None => {
            pg.sanitize_auto_conf()?;
            let _ = std::fs::remove_file(pg.data_dir().join("recovery.signal"));
            pg.write_config(&dynamic.parameters(), None)?;
        }
    }
    pg.write_hba(dynamic.pg_hba(), true)?;
    // reaching a consistent state may replay a lot of WAL: no start timeout, the postmaster
    // exiting is what ends the wait
    pg.start(Duration::from_secs(7 * 24 * 3600)).await?;
    let mut last_log = Instant::now();
    loop {
        match pg.status().await {
            Ok(s) if !s.in_recovery => break,
            Ok(s) => {
                if last_log.elapsed() > Duration::from_secs(15) {
                    if s.replay_paused {
                        warn!(
                            "recovery paused at its target: check the data, then end recovery with SELECT pg_promote() (or resume replay with pg_wal_replay_resume()); the bootstrap waits"
                        );
                    } else {
                        info!(
                            replayed = s.replay_lsn.map(|l| shared::types::Lsn(l).to_string()),
                            "waiting for the end of recovery after the restore"
                        );
                    }
                    last_log = Instant::now();
                }
            }
            Err(e) => {
                if pg.running_pid().is_none() {
                    bail!(
                        "PostgreSQL stopped during recovery after bootstrap method {name} (a recovery_target_action of shutdown, or a missing WAL file): {e:#}"
                    );
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    info!(
        method = name,
        seconds = started.elapsed().as_secs_f32(),
        "recovery ended: the restored server accepts writes"
    );
    // from now on a primary like any other: no recovery settings left anywhere (they take
    // effect only at a start: a restart, before the cluster is announced)
    pg.sanitize_auto_conf()?;
    pg.write_config(&dynamic.parameters(), None)?;
    let timeout = Duration::from_secs(cfg.postgresql.pg_ctl_timeout);
    pg.stop("fast", timeout).await?;
    pg.end_creation();
    pg.start(timeout).await?;
    Ok(())
}

fn set_mode_0700(dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
}

/// A standby cluster's first member: a copy of the remote primary made with
/// `standby_cluster.create_replica_methods` (default `basebackup`), started as its replica; then
/// the initialize key (the remote's system identifier), the config key and the leader key —
/// this member is the standby leader. No roles and no post_bootstrap: the remote's replicate.
pub(crate) async fn bootstrap_standby<K: Kv>(
    pg: Arc<Postgres>,
    dcs: Arc<Dcs<K>>,
    sc: shared::dcs::StandbyCluster,
    params: (Map<String, Value>, Option<Map<String, Value>>),
    dynamic: DynamicConfig,
    peers: shared::api::MemberClient,
) -> Result<()> {
    let result = async {
        // without a host the standby cluster is fed by the archive alone: its first member is
        // restored by a method with no_leader and replays with restore_command
        let address = sc.address();
        let upstream = match &address {
            Some(address) => {
                let (host, port) = shared::config::split_host_port(address).ok_or_else(|| {
                    anyhow::anyhow!("standby_cluster.host {address:?} is not host:port")
                })?;
                Some(Upstream { host, port })
            }
            None => None,
        };
        let remote = address.unwrap_or_else(|| "the archive (no standby_cluster.host)".into());
        let source = CloneSource {
            upstream,
            name: format!("the remote primary {remote}"),
            api_url: String::new(),
            peers,
            methods: Some(
                sc.create_replica_methods
                    .clone()
                    .unwrap_or_else(|| vec!["basebackup".into()]),
            ),
        };
        let hba = dynamic.pg_hba();
        let timeout = Duration::from_secs(pg.cfg().postgresql.pg_ctl_timeout);
        clone_replica(pg.clone(), source, None, params, hba, timeout).await?;
        let cd = pg.controldata().await?;
        dcs.set_initialize(&cd.system_identifier).await?;
        dcs.init_config(&dynamic).await?;
        dcs.take_leader().await?;
        info!(
            sysid = cd.system_identifier,
            remote, "standby cluster bootstrapped: this node is its standby leader"
        );
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = &result {
        give_up_bootstrap("standby cluster bootstrap", e, &pg, &dcs).await;
        if pg.data_dir_initialized() {
            pg.discard_creation();
        }
    }
    result
}

/// After a failed bootstrap: logs it, gives the `initialize` claim up so another attempt can be
/// made, and stops the server it may have started. The caller deals with the data directory.
async fn give_up_bootstrap<K: Kv>(what: &str, e: &anyhow::Error, pg: &Postgres, dcs: &Dcs<K>) {
    error!("{what} failed: {e:#}; removing the initialize key so another attempt can be made");
    if let Err(e) = dcs.cancel_initialization().await {
        warn!("cannot delete the initialize key: {e}");
    }
    let _ = pg.stop("immediate", Duration::from_secs(30)).await;
}

/// initdb → configuration → start → roles → post_bootstrap → initialize/config/leader keys.
pub(crate) async fn bootstrap<K: Kv>(
    cfg: Arc<Config>,
    pg: Arc<Postgres>,
    dcs: Arc<Dcs<K>>,
) -> Result<()> {
    let result = bootstrap_steps(&cfg, &pg, &dcs).await;
    if let Err(e) = &result {
        give_up_bootstrap("bootstrap", e, &pg, &dcs).await;
        pg.end_creation();
        let failed = pg.data_dir().with_extension("failed");
        if pg.data_dir().exists() {
            let _ = std::fs::remove_dir_all(&failed);
            match std::fs::rename(pg.data_dir(), &failed) {
                Ok(()) => warn!("moved the failed data directory to {}", failed.display()),
                Err(e) => warn!("cannot move the failed data directory aside: {e}"),
            }
        }
    }
    result
}

async fn bootstrap_steps<K: Kv>(cfg: &Config, pg: &Postgres, dcs: &Dcs<K>) -> Result<()> {
    let started = Instant::now();
    let dynamic = DynamicConfig {
        raw: cfg.bootstrap.dcs.clone(),
    };
    if let Some((name, section)) = &cfg.bootstrap.method {
        restore(cfg, pg, &dynamic, name, section).await?;
    } else {
        info!(data_dir = %pg.data_dir().display(), "running initdb");
        pg.begin_creation()?;
        pg.initdb().await?;
        pg.end_creation();
        info!(
            seconds = started.elapsed().as_secs_f32(),
            "initdb finished; starting PostgreSQL"
        );
        pg.write_pgpass()?;
        pg.write_config(&dynamic.parameters(), None)?;
        pg.write_hba(dynamic.pg_hba(), true)?;
        pg.start(Duration::from_secs(cfg.postgresql.pg_ctl_timeout))
            .await?;
    }
    info!("creating roles");
    pg.create_roles().await?;
    if let Some(script) = &cfg.bootstrap.post_bootstrap {
        info!("running post_bootstrap script");
        pg.post_bootstrap(script).await?;
    }
    if dynamic.synchronous_mode() != shared::dcs::SyncMode::Off && dynamic.synchronous_mode_strict()
    {
        // strict: from the first commit a client can make, none is acknowledged without a
        // synchronous standby
        pg.set_sync_names(Some(vec![shared::dcs::STRICT_SYNC_PLACEHOLDER.to_string()]));
        pg.rewrite_parameters(&dynamic.parameters())?;
        pg.reload().await?;
    }
    let cd = pg.controldata().await?;
    dcs.set_initialize(&cd.system_identifier).await?;
    dcs.init_config(&dynamic).await?;
    dcs.take_leader().await?;
    info!(
        sysid = cd.system_identifier,
        seconds = started.elapsed().as_secs_f32(),
        "bootstrap finished: this node leads the new cluster"
    );
    Ok(())
}
