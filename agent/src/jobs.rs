//! The long operations the runtime runs in the background while its loop keeps cycling:
//! bootstrapping a new cluster, cloning a replica, starting PostgreSQL with fresh configuration.

use crate::postgres::{Postgres, Upstream};
use anyhow::{Context, Result, bail};
use serde_json::{Map, Value};
use shared::config::Config;
use shared::dcs::{Dcs, DynamicConfig, Kv};
use std::sync::Arc;
use std::time::{Duration, Instant};
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
/// for its server version first).
pub(crate) struct CloneSource {
    pub upstream: Upstream,
    pub name: String,
    pub api_url: String,
    pub peers: shared::api::MemberClient,
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

/// Clones the data directory from `source` and starts as a replica of the leader.
pub(crate) async fn clone_replica(
    pg: Arc<Postgres>,
    source: CloneSource,
    leader: Option<Upstream>,
    params: Map<String, Value>,
    hba: Option<Vec<String>>,
    timeout: Duration,
) -> Result<()> {
    let started = Instant::now();
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
    info!(
        host = from.host,
        port = from.port,
        "creating replica with pg_basebackup"
    );
    pg.write_pgpass()?;
    pg.begin_creation()?;
    std::fs::create_dir_all(pg.data_dir())
        .with_context(|| format!("cannot create {}", pg.data_dir().display()))?;
    set_mode_0700(pg.data_dir());
    if let Err(e) = pg.basebackup(&from).await {
        // Only what this clone wrote is removed: the directory was empty before (see ha.rs).
        pg.discard_creation();
        return Err(e);
    }
    // and after it, from the copy itself (a source whose REST API did not answer)
    if let (Some(ours), Some(theirs)) = (ours, pg.data_major())
        && let Err(e) = same_major(&source.name, theirs.saturating_mul(10000), ours)
    {
        pg.discard_creation();
        return Err(e);
    }
    pg.end_creation();
    info!(
        seconds = started.elapsed().as_secs_f32(),
        "pg_basebackup finished"
    );
    let upstream = leader.or(Some(from));
    start_postgres(pg, params, hba, Some(upstream), timeout).await?;
    info!(
        seconds = started.elapsed().as_secs_f32(),
        "replica is running"
    );
    Ok(())
}

fn set_mode_0700(dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
}

/// initdb → configuration → start → roles → post_bootstrap → initialize/config/leader keys.
pub(crate) async fn bootstrap<K: Kv>(
    cfg: Arc<Config>,
    pg: Arc<Postgres>,
    dcs: Arc<Dcs<K>>,
) -> Result<()> {
    let result = bootstrap_steps(&cfg, &pg, &dcs).await;
    if let Err(e) = &result {
        error!(
            "bootstrap failed: {e:#}; removing the initialize key so another attempt can be made"
        );
        if let Err(e) = dcs.cancel_initialization().await {
            warn!("cannot delete the initialize key: {e}");
        }
        let _ = pg.stop("immediate", Duration::from_secs(30)).await;
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
    info!(data_dir = %pg.data_dir().display(), "running initdb");
    pg.begin_creation()?;
    pg.initdb().await?;
    pg.end_creation();
    info!(
        seconds = started.elapsed().as_secs_f32(),
        "initdb finished; starting PostgreSQL"
    );
    let dynamic = DynamicConfig {
        raw: cfg.bootstrap.dcs.clone(),
    };
    pg.write_pgpass()?;
    pg.write_config(&dynamic.parameters(), None)?;
    pg.write_hba(dynamic.pg_hba(), true)?;
    pg.start(Duration::from_secs(cfg.postgresql.pg_ctl_timeout))
        .await?;
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
