//! The distributed configuration store as Patroni lays it out in etcd v3: the typed cluster model
//! ([`model`]), the key names ([`keys`]), and [`Dcs`], which implements every Patroni operation
//! (initialize race, leader lock, member keys, status, history, config, failover) once over the
//! [`kv::Kv`] primitives, so that etcd ([`etcd::EtcdKv`]) and the in-memory store used by tests and
//! simulation ([`mem::MemKv`]) behave the same.

pub mod etcd;
pub mod keys;
pub mod kv;
pub mod mem;
pub mod model;
pub mod view;

pub use kv::{Cond, KeyValue, Kv, KvError, LeaseId, WatchEvent};
pub use model::*;

use std::sync::Mutex;
use tracing::warn;

/// Logs a garbage value once per key and revision (the same value is read every cycle).
fn warn_garbage(kv: &KeyValue, what: &str) {
    static SEEN: Mutex<Option<std::collections::HashMap<String, i64>>> = Mutex::new(None);
    let mut seen = lock(&SEEN);
    let map = seen.get_or_insert_with(Default::default);
    if map.get(&kv.key) != Some(&kv.mod_revision) {
        map.insert(kv.key.clone(), kv.mod_revision);
        warn!(key = %kv.key, "ignoring {what}; treating it as absent");
    }
}

/// Every cluster under `/<namespace>/`, read in one linearizable range, sorted by scope.
pub async fn load_namespace<K: Kv>(kv: &K, namespace: &str) -> Result<Vec<Cluster>, DcsError> {
    let prefix = keys::namespace_prefix(namespace);
    let (kvs, revision) = kv.range(&prefix).await?;
    let mut scopes: Vec<String> = kvs
        .iter()
        .filter_map(|kv| {
            let rest = kv.key.strip_prefix(&prefix)?;
            let (scope, _) = rest.split_once('/')?;
            (!scope.is_empty()).then(|| scope.to_string())
        })
        .collect();
    scopes.sort();
    scopes.dedup();
    Ok(scopes
        .into_iter()
        .map(|scope| {
            let p = keys::cluster_prefix(namespace, &scope);
            parse_cluster(&p, &scope, &kvs, revision)
        })
        .collect())
}

/// Builds the cluster view from the keys under one prefix. Garbage values are logged and treated
/// as absent.
pub fn parse_cluster(prefix: &str, scope: &str, kvs: &[KeyValue], revision: i64) -> Cluster {
    let mut c = Cluster {
        scope: scope.to_string(),
        revision,
        ..Default::default()
    };
    for kv in kvs {
        let Some(rel) = kv.key.strip_prefix(prefix) else {
            continue;
        };
        match rel {
            keys::INITIALIZE => c.initialize = Some(kv.value.clone()),
            keys::CONFIG => match DynamicConfig::parse(&kv.value) {
                Some(cfg) => {
                    c.config = Some(Versioned {
                        value: cfg,
                        mod_revision: kv.mod_revision,
                    })
                }
                None => warn_garbage(kv, "config key: not a JSON object"),
            },
            keys::LEADER => {
                if kv.value.is_empty() {
                    warn_garbage(kv, "empty leader key");
                } else {
                    c.leader = Some(Leader {
                        name: kv.value.clone(),
                        lease: kv.lease,
                        mod_revision: kv.mod_revision,
                    })
                }
            }
            keys::STATUS => match Status::parse(&kv.value) {
                Some(s) => {
                    if s.optime.is_some() || c.status.optime.is_none() {
                        c.status = s
                    }
                }
                None => warn_garbage(kv, "status key: not valid JSON"),
            },
            keys::OPTIME_LEADER => {
                if c.status.optime.is_none() {
                    c.status.optime = kv.value.trim().parse().ok();
                }
            }
            keys::HISTORY => match parse_history(&kv.value) {
                Some(h) => c.history = h,
                None => warn_garbage(kv, "history key: not a JSON array"),
            },
            keys::FAILOVER => {
                c.failover = Failover::parse(&kv.value).map(|f| Versioned {
                    value: f,
                    mod_revision: kv.mod_revision,
                })
            }
            keys::SYNC => match SyncState::parse(&kv.value) {
                Some(s) => {
                    c.sync = Some(Versioned {
                        value: s,
                        mod_revision: kv.mod_revision,
                    })
                }
                None => warn_garbage(kv, "sync key: not a JSON object"),
            },
            keys::FAILSAFE => {
                c.failsafe = serde_json::from_str::<serde_json::Value>(&kv.value)
                    .ok()
                    .and_then(|v| v.as_object().cloned())
            }
            _ => {
                if let Some(name) = rel.strip_prefix(keys::MEMBERS) {
                    if name.is_empty() || name.contains('/') {
                        continue;
                    }
                    match MemberData::parse(&kv.value) {
                        Some(data) => c.members.push(Member {
                            name: name.to_string(),
                            data,
                            lease: kv.lease,
                            mod_revision: kv.mod_revision,
                        }),
                        None => warn_garbage(kv, "member key: value is not Patroni member JSON"),
                    }
                }
            }
        }
    }
    c.members.sort_by(|a, b| a.name.cmp(&b.name));
    c
}

/// Errors of DCS operations.
#[derive(Debug, thiserror::Error)]
pub enum DcsError {
    #[error(transparent)]
    Kv(#[from] KvError),
}

/// One node's (or one console's) handle on a cluster's keys. A node holds one lease, bound to
/// its member key and, while it leads, the leader key.
pub struct Dcs<K: Kv> {
    kv: K,
    prefix: String,
    scope: String,
    name: String,
    ttl: Mutex<i64>,
    lease: Mutex<Option<LeaseId>>,
    last_member_json: Mutex<Option<(String, LeaseId)>>,
}

impl<K: Kv> Dcs<K> {
    /// A handle for member `name` of cluster `scope` under `namespace`.
    pub fn new(kv: K, namespace: &str, scope: &str, name: &str, ttl: i64) -> Self {
        Dcs {
            kv,
            prefix: keys::cluster_prefix(namespace, scope),
            scope: scope.to_string(),
            name: name.to_string(),
            ttl: Mutex::new(ttl),
            lease: Mutex::new(None),
            last_member_json: Mutex::new(None),
        }
    }

    /// Reaches etcd with new settings (a reload), once they are proved to reach the same etcd
    /// cluster; the current connection stays when they do not.
    pub async fn reconnect(&self, cfg: &crate::config::EtcdConfig) -> Result<(), DcsError> {
        let probe = format!("{}initialize", self.prefix);
        Ok(self.kv.reconnect(cfg, &probe).await?)
    }

    /// The member name this handle writes for.
    pub fn member_name(&self) -> &str {
        &self.name
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn key(&self, rel: &str) -> String {
        format!("{}{rel}", self.prefix)
    }

    /// Reads the whole cluster with one range request.
    pub async fn load(&self) -> Result<Cluster, DcsError> {
        let (kvs, rev) = self.kv.range(&self.prefix).await?;
        Ok(parse_cluster(&self.prefix, &self.scope, &kvs, rev))
    }

    /// Reads the whole cluster with one range request, as a [`view::View`] a watch from the
    /// next revision keeps current.
    pub async fn load_view(&self) -> Result<view::View, DcsError> {
        let (kvs, rev) = self.kv.range(&self.prefix).await?;
        Ok(view::View::new(kvs, rev))
    }

    /// The cluster a view shows.
    pub fn view_cluster(&self, view: &view::View) -> Cluster {
        view.cluster(&self.prefix, &self.scope)
    }

    /// Reads the leader key alone (linearizable): who holds the lock now, as etcd's quorum
    /// says. A lock holder whose view of the rest is current reads this instead of everything.
    pub async fn load_leader(&self) -> Result<Option<Leader>, DcsError> {
        let key = self.key(keys::LEADER);
        let (kvs, rev) = self.kv.range(&key).await?;
        let exact: Vec<KeyValue> = kvs.into_iter().filter(|kv| kv.key == key).collect();
        Ok(parse_cluster(&self.prefix, &self.scope, &exact, rev).leader)
    }

    /// The current lease id, if one was granted.
    pub fn lease(&self) -> Option<LeaseId> {
        *lock(&self.lease)
    }

    /// Changes the TTL; the next [`Dcs::ensure_lease`] grants a new lease with it.
    pub fn set_ttl(&self, ttl: i64) {
        let mut cur = lock(&self.ttl);
        if *cur != ttl {
            *cur = ttl;
            *lock(&self.lease) = None;
        }
    }

    /// Returns a live lease: refreshes the current one, or grants a new one when it is gone.
    pub async fn ensure_lease(&self) -> Result<LeaseId, DcsError> {
        if let Some(id) = self.lease() {
            match self.kv.keepalive(id).await {
                Ok(()) => return Ok(id),
                Err(KvError::LeaseNotFound(_)) => {
                    warn!(lease = id, "etcd lease expired; granting a new one");
                }
                Err(e) => return Err(e.into()),
            }
        }
        let ttl = *lock(&self.ttl);
        let id = self.kv.grant(ttl).await?;
        *lock(&self.lease) = Some(id);
        Ok(id)
    }

    /// Writes our member key (lease-bound), skipping the write when nothing changed; refreshes
    /// the lease first.
    pub async fn touch_member(&self, data: &MemberData) -> Result<(), DcsError> {
        self.touch_member_with(data, true).await
    }

    /// As [`Dcs::touch_member`]; with `refresh` false the current lease is used as it is (the
    /// caller refreshed it moments ago, e.g. renewing the lock in the same cycle: one keepalive
    /// per cycle is enough).
    pub async fn touch_member_with(
        &self,
        data: &MemberData,
        refresh: bool,
    ) -> Result<(), DcsError> {
        let lease = match (refresh, self.lease()) {
            (false, Some(id)) => id,
            _ => self.ensure_lease().await?,
        };
        let json = data.to_json();
        if lock(&self.last_member_json).as_ref() == Some(&(json.clone(), lease)) {
            return Ok(());
        }
        self.kv
            .put(&keys::member(&self.prefix, &self.name), &json, Some(lease))
            .await?;
        *lock(&self.last_member_json) = Some((json, lease));
        Ok(())
    }

    /// Tries to take the leader lock (create-if-absent, bound to our lease).
    pub async fn acquire_leader(&self) -> Result<bool, DcsError> {
        let lease = self.ensure_lease().await?;
        let won = self
            .kv
            .put_if(
                &self.key(keys::LEADER),
                &self.name,
                Some(lease),
                Cond::Absent,
            )
            .await?;
        Ok(won)
    }

    /// Keeps the lock: refreshes our lease and, if the leader key is bound to another lease
    /// (agent restarted, lease re-granted), re-attaches it by value compare. `false` = lock lost.
    /// A key that is gone is never written again here: it expired, and whoever raced since may
    /// lead (a holder stopped past its ttl that re-created it from its last view started a
    /// second primary in the simulation); taking it again is the race's, with its rules.
    pub async fn update_leader(&self, cluster: &Cluster) -> Result<bool, DcsError> {
        let lease = self.ensure_lease().await?;
        match &cluster.leader {
            Some(l) if l.name == self.name && l.lease == lease => Ok(true),
            _ => Ok(self
                .kv
                .put_if(
                    &self.key(keys::LEADER),
                    &self.name,
                    Some(lease),
                    Cond::ValueIs(self.name.clone()),
                )
                .await?),
        }
    }

    /// Writes the leader key unconditionally (after a successful bootstrap).
    pub async fn take_leader(&self) -> Result<(), DcsError> {
        let lease = self.ensure_lease().await?;
        self.kv
            .put(&self.key(keys::LEADER), &self.name, Some(lease))
            .await?;
        Ok(())
    }

    /// Releases the lock if we hold it (value-compare delete).
    pub async fn release_leader(&self) -> Result<bool, DcsError> {
        Ok(self
            .kv
            .delete_if(
                &self.key(keys::LEADER),
                Some(Cond::ValueIs(self.name.clone())),
            )
            .await?)
    }

    /// Races for the right to bootstrap: creates `initialize` with `""` if absent.
    pub async fn race_initialize(&self) -> Result<bool, DcsError> {
        Ok(self
            .kv
            .put_if(&self.key(keys::INITIALIZE), "", None, Cond::Absent)
            .await?)
    }

    /// Stores the system identifier in `initialize`.
    pub async fn set_initialize(&self, sysid: &str) -> Result<(), DcsError> {
        Ok(self
            .kv
            .put(&self.key(keys::INITIALIZE), sysid, None)
            .await?)
    }

    /// Creates `initialize` with our system identifier if absent (adopting an existing data dir).
    pub async fn adopt_initialize(&self, sysid: &str) -> Result<bool, DcsError> {
        Ok(self
            .kv
            .put_if(&self.key(keys::INITIALIZE), sysid, None, Cond::Absent)
            .await?)
    }

    /// Deletes `initialize` only while it is the empty "bootstrap in progress" claim.
    pub async fn abandon_initialize(&self) -> Result<bool, DcsError> {
        Ok(self
            .kv
            .delete_if(
                &self.key(keys::INITIALIZE),
                Some(Cond::ValueIs(String::new())),
            )
            .await?)
    }

    /// Deletes `initialize` after a failed bootstrap.
    pub async fn cancel_initialization(&self) -> Result<(), DcsError> {
        self.kv.delete_if(&self.key(keys::INITIALIZE), None).await?;
        Ok(())
    }

    /// Writes the `config` key; with a version, only if it was not modified since.
    pub async fn set_config(
        &self,
        config: &DynamicConfig,
        version: Option<i64>,
    ) -> Result<bool, DcsError> {
        let key = self.key(keys::CONFIG);
        let json = config.to_json();
        match version {
            Some(rev) => Ok(self
                .kv
                .put_if(&key, &json, None, Cond::ModRevisionIs(rev))
                .await?),
            None => {
                self.kv.put(&key, &json, None).await?;
                Ok(true)
            }
        }
    }

    /// Creates the `config` key only if absent (first bootstrap).
    pub async fn init_config(&self, config: &DynamicConfig) -> Result<bool, DcsError> {
        Ok(self
            .kv
            .put_if(
                &self.key(keys::CONFIG),
                &config.to_json(),
                None,
                Cond::Absent,
            )
            .await?)
    }

    pub async fn write_status(&self, status: &Status) -> Result<(), DcsError> {
        Ok(self
            .kv
            .put(&self.key(keys::STATUS), &status.to_json(), None)
            .await?)
    }

    /// Writes the `sync` key with compare-and-swap on the version read (create-if-absent when
    /// there was none); returns whether it was written.
    pub async fn write_sync(
        &self,
        sync: &SyncState,
        version: Option<i64>,
    ) -> Result<bool, DcsError> {
        let cond = match version {
            Some(rev) => Cond::ModRevisionIs(rev),
            None => Cond::Absent,
        };
        Ok(self
            .kv
            .put_if(&self.key(keys::SYNC), &sync.to_json(), None, cond)
            .await?)
    }

    /// Deletes the `sync` key if it is still at the version read (synchronous mode turned off).
    pub async fn delete_sync(&self, version: i64) -> Result<bool, DcsError> {
        Ok(self
            .kv
            .delete_if(&self.key(keys::SYNC), Some(Cond::ModRevisionIs(version)))
            .await?)
    }

    /// Writes the `failsafe` key: every member's name and `api_url` (the leader included).
    pub async fn write_failsafe(
        &self,
        members: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), DcsError> {
        let value = serde_json::Value::Object(members.clone()).to_string();
        Ok(self.kv.put(&self.key(keys::FAILSAFE), &value, None).await?)
    }

    pub async fn write_history(&self, history: &[HistoryEntry]) -> Result<(), DcsError> {
        Ok(self
            .kv
            .put(&self.key(keys::HISTORY), &history_json(history), None)
            .await?)
    }

    /// Writes the `failover` key; `None` clears it (writes `{}`). With a version, CAS.
    pub async fn set_failover(
        &self,
        failover: Option<&Failover>,
        version: Option<i64>,
    ) -> Result<bool, DcsError> {
        let key = self.key(keys::FAILOVER);
        let json = failover
            .map(Failover::to_json)
            .unwrap_or_else(|| "{}".into());
        match version {
            Some(rev) => Ok(self
                .kv
                .put_if(&key, &json, None, Cond::ModRevisionIs(rev))
                .await?),
            None => {
                self.kv.put(&key, &json, None).await?;
                Ok(true)
            }
        }
    }

    /// Watches the cluster prefix from `revision`.
    pub async fn watch(
        &self,
        revision: i64,
    ) -> Result<tokio::sync::mpsc::Receiver<WatchEvent>, DcsError> {
        Ok(self.kv.watch(&self.prefix, revision).await?)
    }

    /// Watches the cluster prefix from `revision`, with a progress report whenever the stream
    /// was quiet for `quiet` ([`Kv::watch_with_progress`]).
    pub async fn watch_with_progress(
        &self,
        revision: i64,
        quiet: std::time::Duration,
    ) -> Result<tokio::sync::mpsc::Receiver<WatchEvent>, DcsError> {
        Ok(self
            .kv
            .watch_with_progress(&self.prefix, revision, quiet)
            .await?)
    }
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it (the values guarded here
/// are plain caches that stay consistent).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
