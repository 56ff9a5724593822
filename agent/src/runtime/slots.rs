//! Permanent replication slots (`slots` in the dynamic configuration), as Patroni keeps them:
//! the leader creates them (physical, and logical in their database with their plugin) and
//! publishes their positions in the `status` key; every member that may be promoted keeps them
//! too — physical ones created here, logical ones copied from the leader (their state file;
//! PostgreSQL loads it at a restart) — and moves them to the published positions, so that a
//! consumer of a logical slot goes on after a switchover or failover from where the new
//! primary's copy stands (at or before where it was: consumers skip what they saw by LSN).

use super::{Agent, Step, upstream_of};
use crate::jobs::start_postgres;
use crate::postgres::{ServerStatus, SlotInfo};
use anyhow::Result;
use serde_json::{Map, Value};
use shared::dcs::{Cluster, DynamicConfig, Kv, PermanentSlot};
use std::time::Duration;
use tracing::{info, warn};

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
    /// On the leader: creates the permanent slots that are missing. A failure is logged and
    /// tried again next cycle; it never stops the cycle.
    pub(super) async fn ensure_permanent_slots(&mut self, dynamic: &DynamicConfig) {
        let wanted = dynamic.permanent_slots();
        if wanted.is_empty() {
            return;
        }
        let existing = match self.pg.slot_list().await {
            Ok(l) => l,
            Err(e) => {
                warn!("cannot list the replication slots: {e:#}");
                return;
            }
        };
        for slot in wanted {
            if existing.iter().any(|s| s.name == slot.name) {
                continue;
            }
            let made = match &slot.logical {
                None => self.pg.create_slot(&slot.name).await,
                Some((database, plugin)) => {
                    self.pg
                        .create_logical_slot(&slot.name, database, plugin)
                        .await
                }
            };
            match made {
                Ok(()) => info!(
                    slot = slot.name,
                    kind = if slot.logical.is_some() { "logical" } else { "physical" },
                    "created permanent replication slot"
                ),
                Err(e) => warn!(slot = slot.name, "cannot create the permanent slot: {e:#}"),
            }
        }
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
    /// positions the leader published (never past what this server replayed). Logical slots
    /// missing here are copied from the leader, which takes a restart (a job).
    pub(super) async fn sync_permanent_slots(
        &mut self,
        cluster: &Cluster,
        dynamic: &DynamicConfig,
        server: &Option<ServerStatus>,
    ) -> Result<Step> {
        let Some(server) = server else {
            return Ok(Step::Continue);
        };
        let published = cluster.status.slots.clone().unwrap_or_default();
        let target = |name: &str| -> Option<u64> {
            let p = published.get(name)?.as_u64()?;
            Some(match server.replay_lsn {
                Some(r) => p.min(r),
                None => p,
            })
        };
        let local = self.pg.slot_list().await?;
        let mut to_copy: Vec<PermanentSlot> = Vec::new();
        for slot in dynamic.permanent_slots() {
            let here = local.iter().find(|s| s.name == slot.name);
            match (&slot.logical, here) {
                (None, None) => {
                    if let Err(e) = self.pg.create_slot(&slot.name).await {
                        warn!(slot = slot.name, "cannot create the permanent slot here: {e:#}");
                    } else {
                        info!(slot = slot.name, "created permanent physical slot on this replica");
                    }
                }
                (None, Some(h)) if !h.logical => {
                    if let Some(t) = target(&slot.name)
                        && h.restart_lsn.is_some_and(|r| r < t)
                    {
                        self.advance(&slot.name, None, t).await;
                    }
                }
                (Some(_), None) => {
                    // copied once the leader has a position for it
                    if published.contains_key(&slot.name) {
                        to_copy.push(slot);
                    }
                }
                (Some((database, _)), Some(h)) if h.logical => {
                    if let Some(t) = target(&slot.name)
                        && h.confirmed_flush_lsn.is_some_and(|c| c < t)
                    {
                        self.advance(&slot.name, Some(database), t).await;
                    }
                }
                (_, Some(_)) => warn!(
                    slot = slot.name,
                    "a slot of this name exists here with another type than the permanent slot: left alone"
                ),
            }
        }
        if to_copy.is_empty() {
            return Ok(Step::Continue);
        }
        self.copy_logical_slots(cluster, &to_copy).await
    }

    async fn advance(&self, name: &str, database: Option<&str>, to: u64) {
        if let Err(e) = self.pg.advance_slot(name, database, to).await {
            warn!(
                slot = name,
                "cannot move the permanent slot to the leader's position: {e:#}"
            );
        }
    }

    /// Reads the logical slots' state files from the leader and restarts this replica with
    /// them in place (PostgreSQL reads slots only at start).
    async fn copy_logical_slots(&mut self, cluster: &Cluster, slots: &[PermanentSlot]) -> Result<Step> {
        let Some(leader) = cluster.leader.as_ref().map(|l| l.name.clone()) else {
            return Ok(Step::Continue);
        };
        let Some(from) = upstream_of(cluster, &leader) else {
            return Ok(Step::Continue);
        };
        let mut states = Vec::new();
        for slot in slots {
            let Some((database, plugin)) = &slot.logical else {
                continue;
            };
            match self.pg.remote_slot_state(&from, &slot.name).await {
                Ok((state, db, pl))
                    if db.as_deref() == Some(database.as_str())
                        && pl.as_deref() == Some(plugin.as_str()) =>
                {
                    states.push((slot.name.clone(), state));
                }
                Ok((_, db, pl)) => warn!(
                    slot = slot.name,
                    "the leader's slot is in database {db:?} with plugin {pl:?}, not as configured: not copied"
                ),
                Err(e) => warn!(slot = slot.name, "cannot read the slot from {leader}: {e:#}"),
            }
        }
        if states.is_empty() {
            return Ok(Step::Continue);
        }
        let names: Vec<&str> = states.iter().map(|(n, _)| n.as_str()).collect();
        info!(
            slots = ?names,
            leader,
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
        Ok(Step::Continue)
    }
}
