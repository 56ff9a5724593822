//! The few key-value primitives the Patroni layout needs from a store: ranged reads, puts bound
//! to a lease, single-comparison transactions, leases and a prefix watch. [`super::etcd::EtcdKv`]
//! implements them against etcd v3, [`super::mem::MemKv`] in memory with a fake clock.

use std::future::Future;

/// An etcd lease id.
pub type LeaseId = i64;

/// One stored key with its etcd revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub lease: LeaseId,
}

/// The single comparison a conditional write is guarded by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cond {
    /// The key does not exist.
    Absent,
    /// The key's value equals this string.
    ValueIs(String),
    /// The key was last modified at this revision.
    ModRevisionIs(i64),
}

/// A change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    Put(KeyValue),
    Delete {
        key: String,
    },
    /// The watch was interrupted; the watcher must reload the whole prefix.
    Reset,
    /// The store reports the stream alive and complete up to `revision`, with nothing new
    /// under the prefix (asked for by [`Kv::watch_with_progress`] when the stream was quiet).
    Progress {
        revision: i64,
    },
}

/// Store errors. The store being unreachable is the only one callers usually distinguish.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error("etcd unreachable: {0}")]
    Unavailable(String),
    #[error("lease {0} not found (expired or revoked)")]
    LeaseNotFound(LeaseId),
    #[error("etcd error: {0}")]
    Other(String),
}

/// What the Patroni layout needs from a key-value store.
pub trait Kv: Send + Sync + 'static {
    /// Every key under `prefix`, and the store revision the read was served at.
    fn range(
        &self,
        prefix: &str,
    ) -> impl Future<Output = Result<(Vec<KeyValue>, i64), KvError>> + Send;
    /// Puts a value, optionally bound to a lease.
    fn put(
        &self,
        key: &str,
        value: &str,
        lease: Option<LeaseId>,
    ) -> impl Future<Output = Result<(), KvError>> + Send;
    /// Puts a value only when `cond` holds; returns whether it did.
    fn put_if(
        &self,
        key: &str,
        value: &str,
        lease: Option<LeaseId>,
        cond: Cond,
    ) -> impl Future<Output = Result<bool, KvError>> + Send;
    /// Deletes a key, only when `cond` holds if given; returns whether the condition held.
    fn delete_if(
        &self,
        key: &str,
        cond: Option<Cond>,
    ) -> impl Future<Output = Result<bool, KvError>> + Send;
    /// Deletes every key under `prefix`; returns how many there were.
    fn delete_prefix(&self, prefix: &str) -> impl Future<Output = Result<u64, KvError>> + Send;
    /// Grants a lease of `ttl` seconds.
    fn grant(&self, ttl: i64) -> impl Future<Output = Result<LeaseId, KvError>> + Send;
    /// Refreshes a lease; `LeaseNotFound` when it is gone.
    fn keepalive(&self, lease: LeaseId) -> impl Future<Output = Result<(), KvError>> + Send;
    /// Streams changes under `prefix` after `revision` until the receiver is dropped. A broken
    /// stream reports [`WatchEvent::Reset`] and resumes.
    fn watch(
        &self,
        prefix: &str,
        revision: i64,
    ) -> impl Future<Output = Result<tokio::sync::mpsc::Receiver<WatchEvent>, KvError>> + Send;
    /// As [`Kv::watch`], and whenever the stream has been quiet for `quiet`, asks the store
    /// to report its progress ([`WatchEvent::Progress`]), so that the receiver hears from a
    /// live stream at least about that often and can tell a stream that went silent. A store
    /// that cannot tell reports nothing: its watcher never hears that the stream is alive.
    fn watch_with_progress(
        &self,
        prefix: &str,
        revision: i64,
        _quiet: std::time::Duration,
    ) -> impl Future<Output = Result<tokio::sync::mpsc::Receiver<WatchEvent>, KvError>> + Send {
        self.watch(prefix, revision)
    }
    /// Connects again with new settings (endpoints, TLS files, credentials) once a read of the
    /// key `probe` through them works and is answered by the same store (etcd: the same
    /// cluster id); until then, and when it fails, the current connection stays. Watches move
    /// to the new connection. A store without such settings has nothing to do.
    fn reconnect(
        &self,
        _cfg: &crate::config::EtcdConfig,
        _probe: &str,
    ) -> impl Future<Output = Result<(), KvError>> + Send {
        async { Ok(()) }
    }
}
