//! The node's state as of its last HA cycle, published by the runtime and read by the REST API
//! without waiting on anything.

use crate::postgres::ServerStatus;
use serde_json::{Map, Value};
use shared::config::Config;
use shared::dcs::Cluster;
use shared::types::{PgState, Role};
use std::sync::Arc;
use tokio::time::Instant;

/// What the REST API serves: the node's state as of the last cycle.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub name: String,
    pub scope: String,
    pub state: PgState,
    pub role: Role,
    pub server: Option<ServerStatus>,
    /// We hold the leader lock until this instant (last successful renewal + ttl).
    pub lock_until: Option<Instant>,
    /// Last cluster view read from etcd.
    pub cluster: Option<Arc<Cluster>>,
    /// Whether the last etcd read succeeded.
    pub dcs_ok: bool,
    /// Unix time of the last successful etcd read.
    pub dcs_last_seen: Option<u64>,
    pub last_cycle: Instant,
    pub paused: bool,
    pub ttl: u64,
    pub maximum_lag_on_failover: u64,
    pub tags: Map<String, Value>,
    pub sysid: Option<String>,
    /// The HA loop's last decision, in one sentence.
    pub decision: String,
    /// Why no member could take over from the leader now, when none could.
    pub failover_blocked: Option<String>,
    /// The last switchover this node handled as leader.
    pub handover: Option<crate::handover::Report>,
    /// A scheduled restart (`schedule` and its filters).
    pub scheduled_restart: Option<Value>,
    /// What the fencing guard does if the agent dies now.
    pub fencing: crate::guard::Fencing,
    /// A primary kept writable by its members' confirmations while etcd is unreachable.
    pub failsafe_active: bool,
    /// Until when this node stays out of leader races, having given the lock up because its
    /// server could not serve as primary (`pgpilot.standing_down` in `/patroni`).
    pub standing_down_until: Option<tokio::time::Instant>,
    /// `failsafe_mode` is on in the dynamic configuration in force.
    pub failsafe_mode: bool,
    /// The last member this node saw holding the leader key.
    pub last_leader: Option<String>,
    /// The watchdog device is armed (this node leads).
    pub watchdog_armed: bool,
    /// The etcd member this agent runs (`raft:`), as last seen.
    pub raft: Option<crate::raft::Health>,
    /// `watchdog.mode: required` and the watchdog cannot be used.
    pub watchdog_failed: bool,
    /// The version of the PostgreSQL binaries in `bin_dir` (as `server_version_num`).
    pub binaries_version: Option<i32>,
    /// The replica method building the data directory now (`basebackup`, `pgbackrest`, …).
    pub replica_method: Option<String>,
}

impl Snapshot {
    pub fn initial(cfg: &Config) -> Snapshot {
        Snapshot {
            name: cfg.name.clone(),
            scope: cfg.scope.clone(),
            state: PgState::Stopped,
            role: Role::Uninitialized,
            server: None,
            lock_until: None,
            cluster: None,
            dcs_ok: false,
            dcs_last_seen: None,
            last_cycle: Instant::now(),
            paused: false,
            ttl: 30,
            maximum_lag_on_failover: 1 << 20,
            tags: cfg.tags.published(),
            sysid: None,
            decision: String::new(),
            failover_blocked: None,
            handover: None,
            scheduled_restart: None,
            fencing: crate::guard::Fencing::Unavailable,
            failsafe_active: false,
            standing_down_until: None,
            failsafe_mode: false,
            last_leader: None,
            watchdog_armed: false,
            raft: None,
            watchdog_failed: false,
            binaries_version: None,
            replica_method: None,
        }
    }
}
