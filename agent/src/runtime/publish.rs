//! Publication: the member key (what the other members, the console and Patroni tools read of
//! this member), the `history` key after a promotion, and the failover readiness report.

use super::Agent;
use crate::ha::{self};
use crate::postgres::ServerStatus;
use anyhow::Result;
use serde_json::{Map, Value};
use shared::dcs::{Cluster, HistoryEntry, Kv, MemberData, Status};
use shared::types::{PgState, Role, slot_name};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;
use tracing::{error, info, warn};

impl<K: Kv> Agent<K> {
    pub(super) async fn publish_status(
        &mut self,
        cluster: &Cluster,
        server: &ServerStatus,
    ) -> Result<()> {
        let optime = server.wal_position();
        let mut slots = Map::new();
        let mut retain: Vec<String> = Vec::new();
        if cluster.dynamic_config().use_slots() {
            if let Ok(existing) = self.pg.slots().await {
                for (name, lsn) in existing {
                    if self.member_slots.contains(&name) {
                        if let Some(l) = lsn {
                            slots.insert(name.clone(), Value::from(l));
                        }
                        retain.push(name);
                    }
                }
            }
            // the permanent slots' positions: replicas move their copies to them
            slots.extend(
                self.permanent_slot_positions(&cluster.dynamic_config())
                    .await,
            );
            let own = slot_name(&self.cfg.name);
            if let Some(o) = optime {
                slots.insert(own.clone(), Value::from(o));
            }
            retain.push(own);
            retain.sort();
            retain.dedup();
        }
        let status = Status {
            optime,
            slots: Some(slots),
            retain_slots: Some(retain),
        };
        let json = status.to_json();
        if self.last_status_json.as_deref() != Some(&json) {
            self.with_demote_deadline(self.dcs.write_status(&status))
                .await?;
            self.last_status_json = Some(json);
        }
        if let Some(tl) = server.timeline {
            self.publish_history(cluster, tl).await?;
        }
        Ok(())
    }

    pub(super) async fn publish_history(&self, cluster: &Cluster, timeline: u64) -> Result<()> {
        if timeline <= 1 {
            if !cluster.history.is_empty() {
                self.with_demote_deadline(self.dcs.write_history(&[]))
                    .await?;
            }
            return Ok(());
        }
        // Cheap test first: the newest entry is the parent of our timeline (the usual case).
        let up_to_date = cluster.history.last().is_some_and(|e| {
            e.timeline == timeline - 1 && e.timestamp.is_some() && e.new_leader.is_some()
        });
        if up_to_date {
            return Ok(());
        }
        let Some((lines, mtime)) = self.pg.timeline_history(timeline) else {
            return Ok(());
        };
        // After a timeline jump (say 2 → 4) the parent is not timeline - 1: compare entries.
        let same = lines.len() == cluster.history.len()
            && lines
                .iter()
                .zip(&cluster.history)
                .all(|((tl, lsn, _), e)| *tl == e.timeline && *lsn == e.lsn)
            && cluster
                .history
                .last()
                .is_some_and(|e| e.timestamp.is_some() && e.new_leader.is_some());
        if same {
            return Ok(());
        }
        let known: BTreeMap<u64, &HistoryEntry> =
            cluster.history.iter().map(|e| (e.timeline, e)).collect();
        let n = lines.len();
        let entries: Vec<HistoryEntry> = lines
            .into_iter()
            .enumerate()
            .map(|(i, (tl, lsn, reason))| {
                let old = known.get(&tl);
                let newest = i + 1 == n;
                HistoryEntry {
                    timeline: tl,
                    lsn,
                    reason,
                    timestamp: old.and_then(|o| o.timestamp.clone()).or_else(|| {
                        newest.then(|| {
                            chrono::DateTime::<chrono::Local>::from(mtime)
                                .format("%Y-%m-%dT%H:%M:%S%.6f%:z")
                                .to_string()
                        })
                    }),
                    new_leader: old
                        .and_then(|o| o.new_leader.clone())
                        .or_else(|| newest.then(|| self.cfg.name.clone())),
                }
            })
            .collect();
        self.with_demote_deadline(self.dcs.write_history(&entries))
            .await?;
        info!(timeline, "wrote the timeline history to the history key");
        Ok(())
    }

    pub(super) fn member_data(
        &self,
        state: PgState,
        role: Role,
        server: Option<&ServerStatus>,
        paused: bool,
    ) -> MemberData {
        let mut m = MemberData {
            conn_url: self.cfg.postgresql.conn_url(),
            api_url: self.cfg.restapi.api_url(),
            state: state.as_str().into(),
            role: role.as_str().into(),
            version: shared::PATRONI_COMPAT_VERSION.into(),
            proxy_url: self
                .cfg
                .postgresql
                .proxy_address
                .as_ref()
                .map(|p| format!("postgres://{p}/{}", self.cfg.postgresql.database)),
            tags: self.cfg.tags.published(),
            pause: paused.then_some(true),
            scheduled_restart: self.scheduled_restart_json(true),
            ..Default::default()
        };
        if let Some(s) = server {
            if let Some(reason) = &s.pending_restart {
                m.pending_restart = Some(true);
                m.pending_restart_reason = Some(reason.clone());
            }
            m.xlog_location = s.wal_position();
            m.timeline = s.timeline;
            if s.in_recovery {
                m.replay_lsn = s.replay_lsn;
                m.receive_lsn = s.receive_lsn;
                m.replication_state = s.replication_state.clone();
            }
        }
        m
    }

    /// Logs, once per change, whether any member could take over from the leader, and keeps
    /// the answer for the REST API (patroni#1849: learn it before the outage).
    pub(super) fn report_failover_readiness(&mut self, cluster: &Cluster, ttl: u64) {
        // Nothing to say before the cluster exists.
        let initialized = cluster.initialize.as_deref().is_some_and(|i| !i.is_empty())
            && (cluster.leader.is_some() || self.seen_leader);
        let blocked = ha::failover_blocked(cluster).filter(|_| initialized);
        if blocked.is_none() {
            if self.failover_blocked_logged {
                info!("failover is possible again");
            }
            self.failover_blocked_logged = false;
            self.failover_blocked_leaderless = false;
            self.failover_blocked_since = None;
        } else {
            let since = *self.failover_blocked_since.get_or_insert_with(Instant::now);
            let changed = blocked != self.last_failover_blocked;
            if let Some(why) = &blocked {
                if cluster.leader.is_none() {
                    if changed || !self.failover_blocked_leaderless {
                        error!("failover is blocked, no member can take over: {why}");
                        self.failover_blocked_logged = true;
                        self.failover_blocked_leaderless = true;
                    }
                } else if since.elapsed() >= Duration::from_secs(ttl)
                    && (changed || !self.failover_blocked_logged)
                {
                    // Members starting or cloning block failover for a moment; a state that
                    // lasts a ttl is worth an operator's attention before the outage.
                    warn!("no member could take over if the leader failed now: {why}");
                    self.failover_blocked_logged = true;
                }
            }
        }
        self.last_failover_blocked = blocked;
    }
}
