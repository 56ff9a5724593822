//! Permanent replication slots (`slots` in the dynamic configuration), as Patroni keeps them:
//! the leader creates them (physical, and logical in their database with their plugin) and
//! publishes their positions in the `status` key; every member that may be promoted keeps them
//! too — physical ones created here, logical ones copied from the leader (their state file;
//! PostgreSQL loads it at a restart) — and moves them to the published positions, so that a
//! consumer of a logical slot goes on after a switchover or failover from where the new
//! primary's copy stands (at or before where it was: consumers skip what they saw by LSN).
//! From PostgreSQL 17, when the operator asks for failover slots (`sync_replication_slots: on`
//! in the dynamic configuration's parameters), the leader creates the logical ones with
//! `failover` and the replicas' servers keep them themselves; copying stays for slots the
//! leader has without the flag (made before), and for members that cannot sync.

use super::{Agent, Step, upstream_of};
use crate::jobs::start_postgres;
use crate::postgres::Upstream;
use crate::postgres::{ServerStatus, SlotInfo};
use anyhow::Result;
use serde_json::{Map, Value};
use shared::dcs::{Cluster, DynamicConfig, Kv, PermanentSlot};
use shared::types::slot_name;
use std::collections::HashSet;
use std::time::Duration;
use tokio::time::Instant;
use tracing::{info, warn};

/// A logical slot's name and its state file read from the leader.
pub(super) type SlotState = (String, Vec<u8>);

/// A slot's position for the `status` key: a logical slot's confirmed flush position, a
/// physical slot's restart position.
fn position(slot: &SlotInfo) -> Option<u64> {
    if slot.logical {
        slot.confirmed_flush_lsn
    } else {
        slot.restart_lsn
    }
}

impl<K: Kv> Agent<K> {
    /// Whether the slot work of an earlier cycle still runs (it runs beside the loop: creating
    /// a logical slot waits for running transactions, an advance decodes WAL).
    fn slot_work_running(&self) -> bool {
        self.slot_work.as_ref().is_some_and(|h| !h.is_finished())
    }

    /// On the leader: creates the permanent slots that are missing, beside the loop. A failure
    /// is logged and tried again next cycle.
    pub(super) fn ensure_permanent_slots(&mut self, dynamic: &DynamicConfig) {
        let wanted = dynamic.permanent_slots();
        if wanted.is_empty() || self.slot_work_running() {
            return;
        }
        let pg = self.pg.clone();
        self.slot_work = Some(tokio::spawn(async move {
            let existing = match pg.slot_list().await {
                Ok(l) => l,
                Err(e) => {
                    warn!("cannot list the replication slots: {e:#}");
                    return Vec::new();
                }
            };
            for slot in wanted {
                if existing.iter().any(|s| s.name == slot.name) {
                    continue;
                }
                let made = match &slot.logical {
                    None => pg.create_slot(&slot.name).await,
                    Some((database, plugin)) => {
                        pg.create_logical_slot(&slot.name, database, plugin, pg.failover_slots())
                            .await
                    }
                };
                match made {
                    Ok(()) => info!(
                        slot = slot.name,
                        kind = if slot.logical.is_some() {
                            "logical"
                        } else {
                            "physical"
                        },
                        "created permanent replication slot"
                    ),
                    Err(e) => warn!(slot = slot.name, "cannot create the permanent slot: {e:#}"),
                }
            }
            Vec::new()
        }));
    }

    /// The permanent slots' positions on this server, for the `status` key.
    pub(super) async fn permanent_slot_positions(
        &self,
        dynamic: &DynamicConfig,
    ) -> Map<String, Value> {
        let wanted = dynamic.permanent_slots();
        let mut out = Map::new();
        if wanted.is_empty() {
            return out;
        }
        if let Ok(existing) = self.pg.slot_list().await {
            for s in existing {
                if wanted.iter().any(|w| w.name == s.name)
                    && let Some(p) = position(&s)
                {
                    out.insert(s.name.clone(), Value::from(p));
                }
            }
        }
        out
    }

    /// On a replica that may become leader: the permanent slots exist here and stand at the
    /// positions the leader published (never past what this server replayed), worked out
    /// beside the loop. Logical slots missing here are read from the leader there; installing
    /// them takes a restart (a job), started once that work has finished.
    pub(super) async fn sync_permanent_slots(
        &mut self,
        cluster: &Cluster,
        dynamic: &DynamicConfig,
        server: &Option<ServerStatus>,
    ) -> Result<Step> {
        if self.slot_work_running() {
            return Ok(Step::Continue);
        }
        if let Some(done) = self.slot_work.take()
            && let Ok(states) = done.await
            && !states.is_empty()
            && self.job.is_none()
            && let Some(from) = self.slot_copy_from.take()
        {
            self.install_logical_slots(states, from);
            return Ok(Step::Continue);
        }
        let Some(server) = server.clone() else {
            return Ok(Step::Continue);
        };
        let leader = cluster.leader.as_ref().map(|l| l.name.clone());
        let from = leader.as_deref().and_then(|l| upstream_of(cluster, l));
        self.slot_copy_from = from.clone();
        let published = cluster.status.slots.clone().unwrap_or_default();
        let slots = dynamic.permanent_slots();
        let pg = self.pg.clone();
        self.slot_work = Some(tokio::spawn(async move {
            sync_slots(pg, slots, published, server, from, leader).await
        }));
        Ok(Step::Continue)
    }

    /// Restarts this replica with the logical slots' state files from the leader in place
    /// (PostgreSQL reads slots only at start).
    fn install_logical_slots(&mut self, states: Vec<SlotState>, from: Upstream) {
        let names: Vec<&str> = states.iter().map(|(n, _)| n.as_str()).collect();
        info!(
            slots = ?names,
            "copying permanent logical slots from the leader: restarting to load them"
        );
        let pg = self.pg.clone();
        let params = self.last_dynamic.parameters();
        let hba = self.last_dynamic.pg_hba();
        let timeout = Duration::from_secs(self.cfg.postgresql.pg_ctl_timeout);
        self.spawn_job(crate::ha::Job::Restart, async move {
            pg.stop("fast", timeout).await?;
            for (name, state) in &states {
                pg.install_slot_state(name, state)?;
            }
            start_postgres(pg, params, hba, Some(Some(from)), timeout).await
        });
    }
}

/// One round of a replica's slot work: creates the missing physical slots, moves the slots to
/// the published positions, and reads from the leader the state files of the logical slots
/// missing here (returned, to be installed with a restart).
async fn sync_slots(
    pg: std::sync::Arc<crate::postgres::Postgres>,
    slots: Vec<PermanentSlot>,
    published: Map<String, Value>,
    server: ServerStatus,
    from: Option<Upstream>,
    leader: Option<String>,
) -> Vec<SlotState> {
    let target = |name: &str| -> Option<u64> {
        let p = published.get(name)?.as_u64()?;
        Some(match server.replay_lsn {
            Some(r) => p.min(r),
            None => p,
        })
    };
    let local = match pg.slot_list().await {
        Ok(l) => l,
        Err(e) => {
            warn!("cannot list the replication slots: {e:#}");
            return Vec::new();
        }
    };
    let advance = |name: String, database: Option<String>, to: u64| {
        let pg = pg.clone();
        async move {
            if let Err(e) = pg.advance_slot(&name, database.as_deref(), to).await {
                warn!(
                    slot = name,
                    "cannot move the permanent slot to the leader's position: {e:#}"
                );
            }
        }
    };
    let mut missing_logical = Vec::new();
    let server_syncs = pg.syncs_failover_slots();
    for slot in slots {
        let here = local.iter().find(|s| s.name == slot.name);
        match (&slot.logical, here) {
            // PostgreSQL's slot synchronization keeps failover slots here: a copy of its own
            // is left to it; one this member kept as primary (failover, not synced) stands in
            // its way and goes (the leader's is the one that counts)
            (Some(_), Some(h)) if server_syncs && h.logical && h.synced => {}
            (Some(_), Some(h)) if server_syncs && h.logical && h.failover => {
                match pg.drop_slot(&slot.name).await {
                    Ok(()) => info!(
                        slot = slot.name,
                        "dropped this member's own copy of a failover slot: PostgreSQL syncs it from the leader"
                    ),
                    Err(e) => warn!(
                        slot = slot.name,
                        "cannot drop the failover slot left from leading: {e:#}"
                    ),
                }
            }
            (None, None) => match pg.create_slot(&slot.name).await {
                Ok(()) => info!(
                    slot = slot.name,
                    "created permanent physical slot on this replica"
                ),
                Err(e) => warn!(
                    slot = slot.name,
                    "cannot create the permanent slot here: {e:#}"
                ),
            },
            (None, Some(h)) if !h.logical => {
                if let Some(t) = target(&slot.name)
                    && h.restart_lsn.is_some_and(|r| r < t)
                {
                    advance(slot.name.clone(), None, t).await;
                }
            }
            // copied once the leader has a position for it
            (Some(_), None) if published.contains_key(&slot.name) => missing_logical.push(slot),
            (Some(_), None) => {}
            (Some((database, _)), Some(h)) if h.logical => {
                if let Some(t) = target(&slot.name)
                    && h.confirmed_flush_lsn.is_some_and(|c| c < t)
                {
                    advance(slot.name.clone(), Some(database.clone()), t).await;
                }
            }
            (_, Some(_)) => warn!(
                slot = slot.name,
                "a slot of this name exists here with another type than the permanent slot: left alone"
            ),
        }
    }
    if missing_logical.is_empty() {
        return Vec::new();
    }
    let (Some(from), Some(leader)) = (from, leader) else {
        return Vec::new();
    };
    // a logical slot in a server below wal_level logical keeps it from starting
    match pg.show("wal_level").await {
        Ok(level) if level == "logical" => {}
        Ok(level) => {
            warn!(
                wal_level = level,
                "permanent logical slots are not copied to this replica: they need wal_level logical (set it in postgresql.parameters)"
            );
            return Vec::new();
        }
        Err(e) => {
            warn!("cannot read wal_level: {e:#}");
            return Vec::new();
        }
    }
    let mut states = Vec::new();
    for slot in missing_logical {
        let Some((database, plugin)) = &slot.logical else {
            continue;
        };
        match pg.remote_slot_state(&from, &slot.name).await {
            // a failover slot reaches this member through PostgreSQL's own synchronization
            Ok(remote) if remote.failover && server_syncs => {}
            Ok(remote)
                if remote.database.as_deref() == Some(database.as_str())
                    && remote.plugin.as_deref() == Some(plugin.as_str()) =>
            {
                states.push((slot.name.clone(), remote.state));
            }
            Ok(remote) => warn!(
                slot = slot.name,
                "the leader's slot is in database {:?} with plugin {:?}, not as configured: not copied",
                remote.database,
                remote.plugin
            ),
            Err(e) => warn!(
                slot = slot.name,
                "cannot read the slot from {leader}: {e:#}"
            ),
        }
    }
    states
}

impl<K: Kv> Agent<K> {
    /// Creates the slots of the members that stream from this leader, and drops the slot of a
    /// member gone for longer than `member_slots_ttl`. Which slots are members' survives agent
    /// restarts and failovers: besides those this agent created, the names in the `status`
    /// key's `retain_slots` (which every leader publishes), counted from when this agent first
    /// sees them missing, as Patroni 4 does. Slots named by `ignore_slots` or the permanent
    /// `slots` are never dropped, nor one in use; a failed drop is retried next cycle.
    pub(super) async fn ensure_slots(
        &mut self,
        members: &[String],
        keep: Duration,
        retained: &[String],
        dynamic: &DynamicConfig,
    ) -> Result<()> {
        let existing = self.pg.slots().await?;
        let wanted: HashSet<String> = members.iter().map(|m| slot_name(m)).collect();
        for name in &wanted {
            self.member_slots.insert(name.clone());
            self.slot_missing_since.remove(name);
            if !existing.iter().any(|(s, _)| s == name) {
                self.pg.create_slot(name).await?;
                info!(slot = name, "created replication slot for member");
            }
        }
        let own = slot_name(&self.cfg.name);
        for name in retained {
            if *name != own {
                self.member_slots.insert(name.clone());
            }
        }
        for (name, _) in existing {
            if wanted.contains(&name)
                || !self.member_slots.contains(&name)
                || dynamic.keeps_physical_slot(&name)
            {
                continue;
            }
            let since = *self
                .slot_missing_since
                .entry(name.clone())
                .or_insert_with(Instant::now);
            if since.elapsed() > keep {
                info!(
                    slot = name,
                    "dropping the slot of a member gone for over member_slots_ttl"
                );
                if let Err(e) = self.pg.drop_slot(&name).await {
                    warn!(slot = name, "cannot drop the slot yet: {e:#}");
                    continue;
                }
                self.slot_missing_since.remove(&name);
                self.member_slots.remove(&name);
            }
        }
        Ok(())
    }
}
