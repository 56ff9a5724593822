//! The watch's view of the cluster between cycles: the keys under the cluster's prefix from
//! one read with every change since applied (shared/src/dcs/view.rs), kept by a task that
//! watches etcd and wakes the loop on what matters; when a cycle may decide on it instead of
//! reading etcd, and what is never decided on it.

use super::Agent;
use crate::ha::{Action, Decision};
use shared::dcs::view::View;
use shared::dcs::{Cluster, Kv, WatchEvent, keys};
use std::time::Duration;
use tokio::time::Instant;

/// The watch's view and when its stream last said something.
pub(super) struct Watched {
    view: View,
    heard: Instant,
}

/// A watch stream quiet for this long is asked for a progress report, and taken for dead when
/// it does not answer within as long again: the ttl, at least 5 s and at most 30 s, so that a
/// view is never trusted longer than twice the ttl after its stream went silent. Broken
/// connections and an etcd member cut from its group end the stream much sooner (HTTP/2
/// keepalive, `require_leader`); this covers a stream that went silent on a live connection.
pub(super) fn watch_quiet(ttl: u64) -> Duration {
    Duration::from_secs(ttl.clamp(5, 30))
}

/// Whether a decision taken on the watch's view may be carried out without reading etcd:
/// only the upkeep of a steady cluster. Anything else — above all who leads — is decided again
/// on a linearizable read.
pub(super) fn steady(decision: &Decision) -> bool {
    !decision.stands_down
        && decision.actions.iter().all(|a| {
            matches!(
                a,
                // the lock holder's renewal: its leader key was read from etcd this cycle
                Action::RenewLock
                    | Action::EnsureSlots { .. }
                    | Action::SyncSlots
                    | Action::PublishStatus
            )
        })
}

/// Locks the watch's view (a panic elsewhere leaves it usable: it is re-read on a Reset).
pub(super) fn lock_view(
    m: &std::sync::Mutex<Option<Watched>>,
) -> std::sync::MutexGuard<'_, Option<Watched>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<K: Kv> Agent<K> {
    /// Watches the cluster prefix and wakes the loop on changes that matter.
    pub(super) fn spawn_watch(&mut self) {
        let dcs = self.dcs.clone();
        let wake = self.wake.clone();
        let shared_view = self.view.clone();
        let ttl = self.watch_ttl.clone();
        let prefix = dcs.prefix().to_string();
        let task = tokio::spawn(async move {
            let mut first = true;
            loop {
                if !std::mem::take(&mut first) {
                    // read again after an interruption, but never in a tight loop
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                // one read, then every change after it
                let view = match dcs.load_view().await {
                    Ok(v) => v,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                let from = view.revision().saturating_add(1);
                let quiet = watch_quiet(ttl.load(std::sync::atomic::Ordering::Relaxed));
                let mut rx = match dcs.watch_with_progress(from, quiet).await {
                    Ok(rx) => rx,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                *lock_view(&shared_view) = Some(Watched {
                    view,
                    heard: Instant::now(),
                });
                while let Some(ev) = rx.recv().await {
                    let wakes = match &ev {
                        WatchEvent::Put(kv) => {
                            let rel = kv.key.strip_prefix(&prefix).unwrap_or("");
                            // (the leader's `status` is read on the next cycle: it changes
                            // with the WAL, and waking every member for it would double the
                            // cycles of a cluster that is not idle)
                            match rel {
                                keys::LEADER
                                | keys::CONFIG
                                | keys::FAILOVER
                                | keys::HISTORY
                                | keys::INITIALIZE => true,
                                _ => {
                                    rel.starts_with(keys::MEMBERS)
                                        && kv.create_revision == kv.mod_revision
                                }
                            }
                        }
                        WatchEvent::Delete { key } => {
                            let rel = key.strip_prefix(&prefix).unwrap_or("");
                            rel == keys::LEADER
                                || rel == keys::CONFIG
                                || rel.starts_with(keys::MEMBERS)
                        }
                        WatchEvent::Reset => true,
                        WatchEvent::Progress { .. } => false,
                    };
                    let (current, leader_moved) = {
                        let mut guard = lock_view(&shared_view);
                        let applied = guard.as_mut().is_some_and(|w| {
                            w.heard = Instant::now();
                            w.view.apply(&ev)
                        });
                        // the leader's member key: a replica waiting for a new leader to run
                        // as primary follows it as soon as it says so
                        let leader_moved = match (&ev, guard.as_ref()) {
                            (WatchEvent::Put(kv), Some(w)) => w
                                .view
                                .value(&format!("{prefix}{}", keys::LEADER))
                                .is_some_and(|l| kv.key == keys::member(&prefix, l)),
                            _ => false,
                        };
                        if !applied {
                            *guard = None;
                        }
                        (applied, leader_moved)
                    };
                    let wakes = wakes || leader_moved;
                    if wakes {
                        wake.notify_one();
                    }
                    if !current {
                        // the stream was interrupted: read everything again
                        break;
                    }
                }
                *lock_view(&shared_view) = None;
            }
        });
        self.background.push(task.abort_handle());
    }

    /// A call to etcd (a read, or a write of the loop's own keys), given up when it would
    /// outlast the moment a lock holder must demote (retry_timeout before its lease can end;
    /// see [`Agent::loop_deadline`]): an unreachable or slow etcd is noticed in time whatever
    /// the client's own timeout, and a primary's demotion never waits behind a write.
    pub(super) async fn with_demote_deadline<T>(
        &self,
        read: impl std::future::Future<Output = Result<T, shared::dcs::DcsError>>,
    ) -> Result<T, shared::dcs::DcsError> {
        match self.loop_deadline() {
            Some(deadline) => {
                let left = deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(200));
                tokio::time::timeout(left, read).await.unwrap_or_else(|_| {
                    Err(shared::dcs::DcsError::Kv(
                        shared::dcs::KvError::Unavailable(
                            "no answer before the leader lease runs short".into(),
                        ),
                    ))
                })
            }
            None => read.await,
        }
    }

    /// This cycle's cluster and whether it came from the watch's view. The view stands in for
    /// a read of the whole prefix when it is current (its stream spoke within twice
    /// [`watch_quiet`]), etcd answered the last read, nothing asked for a full read and the view
    /// shows a leader (without one, this cycle is about the race: etcd is read at once); a
    /// member that holds or renewed the lock then still reads the leader key itself
    /// (linearizable, within the demotion deadline): what it holds is never taken from a view.
    pub(super) async fn observe_cluster(
        &mut self,
    ) -> (Result<Cluster, shared::dcs::DcsError>, bool) {
        let watched = if std::mem::take(&mut self.read_etcd_next) || self.dcs_down_since.is_some() {
            None
        } else {
            let quiet = watch_quiet(self.last_dynamic.timing().ttl);
            let guard = lock_view(&self.view);
            guard
                .as_ref()
                .filter(|w| w.heard.elapsed() <= quiet * 2 + Duration::from_secs(1))
                .map(|w| self.dcs.view_cluster(&w.view))
                .filter(|c| c.leader.is_some())
        };
        let Some(mut cluster) = watched else {
            // the whole cluster from etcd (linearizable)
            return (self.with_demote_deadline(self.dcs.load()).await, false);
        };
        let holder = self.lock_renewed.is_some()
            || cluster
                .leader
                .as_ref()
                .is_some_and(|l| l.name == self.cfg.name);
        if holder {
            match self.with_demote_deadline(self.dcs.load_leader()).await {
                Ok(leader) => cluster.leader = leader,
                Err(e) => return (Err(e), false),
            }
        }
        (Ok(cluster), true)
    }
}
