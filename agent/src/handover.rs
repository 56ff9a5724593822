//! The old leader's side of a switchover: a live check of the candidates, then the fast path —
//! CHECKPOINT while still primary (so the shutdown checkpoint is short), stop, publish the
//! shutdown checkpoint as the last leader position, release the lock (the candidate's watch wakes
//! it at once), and start again straight away as a replica. Also the report of how the last
//! request ended, which `GET /patroni` shows and the requester reads.

use crate::jobs::start_postgres;
use crate::postgres::{Postgres, Upstream};
use anyhow::{Context, Result, bail};
use serde_json::{Map, Value};
use shared::api::{MemberClient, PeerStatus};
use shared::dcs::{Dcs, Kv, Status};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tracing::{info, warn};

pub use shared::ops::switchover::{Progress, Report};

/// What the hand-over needs from the cluster view.
pub struct Plan {
    /// Members that may take over, with their REST URLs (one when the request names it).
    pub candidates: Vec<(String, String)>,
    pub max_lag: u64,
    /// Where the named candidate's PostgreSQL listens: the old primary follows it at once.
    pub upstream: Option<Upstream>,
    /// The `status` key as last read; its optime becomes the shutdown checkpoint.
    pub status: Status,
    pub params: Map<String, Value>,
    pub hba: Option<Vec<String>>,
    pub timeout: Duration,
    /// When the CHECKPOINT before the stop must have ended: the lock is not renewed during a
    /// hand-over, so it must end before the lease runs short.
    pub checkpoint_deadline: Instant,
}

/// Which candidates can take over right now, asked live: running, a replica streaming from
/// this primary, within `max_lag`. The error names every candidate's problem with its numbers.
async fn ready_candidates(
    pg: &Postgres,
    client: &MemberClient,
    plan: &Plan,
) -> Result<Vec<String>> {
    match candidates_now(pg, client, plan).await? {
        Ok(ready) => Ok(ready),
        // A member's REST figures may be a second old (they are sampled every second): a
        // replica that just caught up gets one more look before the request is refused.
        Err((problems, true)) => {
            info!("switchover: a candidate seems to lag ({problems}); looking again in a second");
            tokio::time::sleep(Duration::from_millis(1100)).await;
            candidates_now(pg, client, plan)
                .await?
                .map_err(|(p, _)| anyhow::anyhow!("{p}"))
        }
        Err((problems, false)) => Err(anyhow::anyhow!("{problems}")),
    }
}

/// One look at the candidates: the ready ones, or every problem (and whether any is a lag).
async fn candidates_now(
    pg: &Postgres,
    client: &MemberClient,
    plan: &Plan,
) -> Result<std::result::Result<Vec<String>, (String, bool)>> {
    let me = pg
        .status()
        .await
        .context("cannot query the local primary")?;
    if me.in_recovery {
        bail!("this node is not running as primary");
    }
    let mine = me.wal_position().unwrap_or(0);
    let mut ready = Vec::new();
    let mut problems = Vec::new();
    let mut lagging = false;
    for (name, url) in &plan.candidates {
        let body = match client.status_or_error(url).await {
            Ok(b) => b,
            Err(e) => {
                problems.push(format!("{name} does not answer on its REST API ({e})"));
                continue;
            }
        };
        let st = PeerStatus::from_json(&body);
        let state = body
            .get("state")
            .and_then(Value::as_str)
            .unwrap_or("unknown");
        if state != "running" || !st.has_wal || st.is_primary {
            problems.push(format!("{name} is not a running replica (state {state})"));
            continue;
        }
        let lag = mine.saturating_sub(st.wal_position.unwrap_or(0));
        if lag > plan.max_lag {
            problems.push(format!(
                "{name} is {lag} bytes behind, more than maximum_lag_on_failover {}",
                plan.max_lag
            ));
            lagging = true;
            continue;
        }
        let streaming = me
            .replication
            .iter()
            .any(|w| w.application_name == *name && w.state.as_deref() == Some("streaming"));
        if !streaming {
            problems.push(format!("{name} is not streaming from this primary"));
            continue;
        }
        ready.push(name.clone());
    }
    if ready.is_empty() {
        if problems.is_empty() {
            return Ok(Err(("no member could take over".into(), false)));
        }
        return Ok(Err((problems.join("; "), lagging)));
    }
    Ok(Ok(ready))
}

/// Waits until another member holds the lock and answers as primary; its name and address,
/// or `None` when that takes longer than `limit`.
async fn wait_for_successor<K: Kv>(
    dcs: &Dcs<K>,
    client: &MemberClient,
    limit: Duration,
) -> Option<(String, Upstream)> {
    let began = Instant::now();
    while began.elapsed() < limit {
        if let Ok(c) = dcs.load().await
            && let Some(m) = c.leader_member()
            && m.name != dcs.member_name()
            && let Some((host, port)) = m.data.host_port()
            && let Some(body) = client.status(&m.data.api_url).await
            && body.get("role").and_then(Value::as_str) == Some("primary")
        {
            return Some((m.name.clone(), Upstream { host, port }));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// Runs the hand-over. An error before the lock is released means nothing changed for the
/// cluster (PostgreSQL may have been restarted as primary by the next cycle); after the release,
/// problems starting as a replica are left to the next cycles.
pub async fn hand_over<K: Kv>(
    pg: Arc<Postgres>,
    dcs: Arc<Dcs<K>>,
    client: MemberClient,
    plan: Plan,
) -> Result<()> {
    let began = Instant::now();
    // the lock is not renewed from here on: asking the candidates and the CHECKPOINT both end
    // before the lease runs short
    let deadline = plan.checkpoint_deadline;
    let ready = tokio::time::timeout_at(deadline, ready_candidates(&pg, &client, &plan))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "the candidates did not answer before the leader lease runs short; the switchover is abandoned"
            )
        })??;
    info!(candidates = ?ready, "switchover: checkpoint before stopping");
    match tokio::time::timeout_at(deadline, pg.checkpoint()).await {
        Ok(done) => done.context("CHECKPOINT before the switchover failed")?,
        Err(_) => {
            pg.disconnect().await;
            anyhow::bail!(
                "the CHECKPOINT before the switchover did not finish before the leader lease runs short; the switchover is abandoned"
            );
        }
    }
    pg.stop("fast", plan.timeout)
        .await
        .context("stopping PostgreSQL for the switchover failed")?;
    // Replicas that were streaming have received everything up to the shutdown checkpoint:
    // the walsenders send it before the primary finishes shutting down.
    let mut status = plan.status.clone();
    match pg.controldata().await {
        Ok(cd) => {
            if let Some(lsn) = cd.checkpoint_lsn {
                status.optime = Some(lsn.0.saturating_add(1));
                if let Err(e) = dcs.write_status(&status).await {
                    warn!("cannot write the last leader position: {e}");
                }
            }
        }
        Err(e) => warn!("cannot read pg_control after stopping: {e:#}"),
    }
    dcs.release_leader()
        .await
        .context("cannot release the leader lock")?;
    info!(
        ms = began.elapsed().as_millis() as u64,
        "switchover: stopped and released the leader lock"
    );
    // Start once the successor runs as primary: a standby that connects before the promotion
    // has to wait wal_retrieve_retry_interval (5 s) to follow the new timeline.
    let successor = wait_for_successor(&dcs, &client, Duration::from_secs(5)).await;
    // With the new timeline's history file in pg_wal the replica follows it at once.
    if let Some((_, up)) = &successor {
        match pg.fetch_timeline_history(up).await {
            Ok(Some(name)) => info!(file = name, "copied the new timeline's history file"),
            Ok(None) => {}
            Err(e) => warn!("cannot copy the new timeline's history file: {e:#}"),
        }
    }
    info!(
        ms = began.elapsed().as_millis() as u64,
        successor = successor.as_ref().map_or("none yet", |(n, _)| n.as_str()),
        "switchover: starting as a replica"
    );
    let upstream = successor.map(|(_, up)| up).or(plan.upstream);
    if let Err(e) = start_postgres(
        pg.clone(),
        plan.params,
        plan.hba,
        Some(upstream),
        plan.timeout,
    )
    .await
    {
        warn!("starting as a replica after the switchover failed: {e:#}; the next cycle retries");
    }
    Ok(())
}
