//! An in-memory [`Kv`] with etcd's semantics (revisions, leases, compare transactions, prefix
//! watches) and a manual clock, for unit tests and the seeded simulation. Several [`MemKv`]
//! handles share one [`MemStore`], like several agents sharing one etcd; a handle can be cut off
//! to inject a partition, or hung (every call waits until it is released, as a call to an etcd
//! that stopped answering). The clock is manual, or tokio's (paused in the simulation).

use super::kv::{Cond, KeyValue, Kv, KvError, LeaseId, WatchEvent};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// A watch: its prefix, its channel, and the `cut` and `hung` switches of its handle.
type Watcher = (
    String,
    mpsc::Sender<WatchEvent>,
    Arc<AtomicBool>,
    Arc<AtomicBool>,
);

#[derive(Default)]
struct State {
    revision: i64,
    /// Milliseconds on the manual clock.
    now_ms: u64,
    next_lease: LeaseId,
    keys: BTreeMap<String, KeyValue>,
    /// lease → (ttl seconds, expiry in ms)
    leases: HashMap<LeaseId, (i64, u64)>,
    /// prefix, the watch's channel, and the handle's `cut` and `hung` switches: a watch of a
    /// handle cut off or hung ends (as etcd's stream breaks) and is made again.
    watchers: Vec<Watcher>,
    /// The clock follows tokio's from this instant (else it is advanced by hand).
    origin: Option<tokio::time::Instant>,
}

impl State {
    fn expire(&mut self) {
        let now = self.now_ms;
        let dead: Vec<LeaseId> = self
            .leases
            .iter()
            .filter(|(_, (_, exp))| *exp <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in dead {
            self.drop_lease(id);
        }
    }

    fn drop_lease(&mut self, id: LeaseId) {
        self.leases.remove(&id);
        let doomed: Vec<String> = self
            .keys
            .values()
            .filter(|kv| kv.lease == id)
            .map(|kv| kv.key.clone())
            .collect();
        for k in doomed {
            self.delete(&k);
        }
    }

    /// Ends the watches nobody reads and those of handles cut off or hung.
    fn prune(&mut self) {
        self.watchers.retain(|(_, tx, cut, hung)| {
            !tx.is_closed() && !cut.load(Ordering::SeqCst) && !hung.load(Ordering::SeqCst)
        });
    }

    fn notify(&mut self, key: &str, ev: WatchEvent) {
        self.prune();
        for (prefix, tx, _, _) in &self.watchers {
            if key.starts_with(prefix.as_str()) {
                let _ = tx.try_send(ev.clone());
            }
        }
    }

    fn put(&mut self, key: &str, value: &str, lease: Option<LeaseId>) -> Result<(), KvError> {
        let lease = lease.unwrap_or(0);
        if lease != 0 && !self.leases.contains_key(&lease) {
            return Err(KvError::LeaseNotFound(lease));
        }
        self.revision += 1;
        let rev = self.revision;
        let create_revision = self
            .keys
            .get(key)
            .map(|kv| kv.create_revision)
            .unwrap_or(rev);
        let kv = KeyValue {
            key: key.to_string(),
            value: value.to_string(),
            create_revision,
            mod_revision: rev,
            lease,
        };
        self.keys.insert(key.to_string(), kv.clone());
        self.notify(key, WatchEvent::Put(kv));
        Ok(())
    }

    fn delete(&mut self, key: &str) {
        if self.keys.remove(key).is_some() {
            self.revision += 1;
            self.notify(
                key,
                WatchEvent::Delete {
                    key: key.to_string(),
                },
            );
        }
    }

    fn holds(&self, key: &str, cond: &Cond) -> bool {
        let cur = self.keys.get(key);
        match cond {
            Cond::Absent => cur.is_none(),
            Cond::ValueIs(v) => cur.is_some_and(|kv| &kv.value == v),
            Cond::ModRevisionIs(r) => cur.map(|kv| kv.mod_revision).unwrap_or(0) == *r,
        }
    }
}

/// The shared store: what one etcd cluster holds.
#[derive(Clone, Default)]
pub struct MemStore {
    state: Arc<Mutex<State>>,
}

impl MemStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// A store whose clock is tokio's (leases expire as tokio's time passes, paused or not).
    pub fn on_tokio_clock() -> Self {
        let store = Self::default();
        store.with(|st| st.origin = Some(tokio::time::Instant::now()));
        store
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(origin) = st.origin {
            st.now_ms = u64::try_from(origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        }
        st.expire();
        f(&mut st)
    }

    /// Advances the manual clock; leases past their TTL expire and their keys disappear.
    pub fn advance_ms(&self, ms: u64) {
        self.with(|st| {
            st.now_ms += ms;
            st.expire();
        })
    }

    /// Milliseconds on the manual clock.
    pub fn now_ms(&self) -> u64 {
        self.with(|st| st.now_ms)
    }

    /// A client handle (like one agent's etcd connection).
    pub fn client(&self) -> MemKv {
        MemKv {
            store: self.clone(),
            cut: Arc::new(AtomicBool::new(false)),
            hung: Arc::new(AtomicBool::new(false)),
            released: Arc::new(tokio::sync::Notify::new()),
            delay_ms: Arc::default(),
            write_delay_ms: Arc::default(),
            timeout: None,
        }
    }

    /// A snapshot of every key, for assertions.
    pub fn dump(&self) -> Vec<KeyValue> {
        self.with(|st| st.keys.values().cloned().collect())
    }

    /// Revokes a lease: its keys disappear at once (what the fencing guard asks of etcd).
    pub fn revoke(&self, lease: LeaseId) {
        self.with(|st| st.drop_lease(lease))
    }

    /// Writes a raw value (to plant garbage in tests).
    pub fn put_raw(&self, key: &str, value: &str) {
        self.with(|st| {
            let _ = st.put(key, value, None);
        })
    }
}

/// One client of a [`MemStore`]. `set_cut(true)` makes every call fail as if etcd were
/// unreachable from this client only.
#[derive(Clone)]
pub struct MemKv {
    store: MemStore,
    cut: Arc<AtomicBool>,
    hung: Arc<AtomicBool>,
    released: Arc<tokio::sync::Notify>,
    /// Every call answers this many milliseconds late (an overloaded etcd, a slow link).
    delay_ms: Arc<std::sync::atomic::AtomicU64>,
    /// Writes and lease calls answer this much later still (etcd's disk stalls its commits
    /// while reads are served).
    write_delay_ms: Arc<std::sync::atomic::AtomicU64>,
    /// A call not answered within this fails, as the etcd client's request timeout makes it.
    timeout: Option<std::time::Duration>,
}

impl MemKv {
    pub fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
        // its watches end now, not at the next change
        self.store.with(State::prune);
    }

    /// Every call of this handle waits until `set_hung(false)`, as calls to an etcd that
    /// stopped answering (or a network that drops packets) wait.
    pub fn set_hung(&self, hung: bool) {
        self.hung.store(hung, Ordering::SeqCst);
        if hung {
            self.store.with(State::prune);
        } else {
            self.released.notify_waiters();
        }
    }

    /// Every call of this handle answers `delay` late.
    pub fn set_delay(&self, delay: std::time::Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Writes and lease calls of this handle answer `delay` late (on top of [`Self::set_delay`]).
    pub fn set_write_delay(&self, delay: std::time::Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.write_delay_ms.store(ms, Ordering::SeqCst);
    }

    /// The same handle with the etcd client's request timeout: a hung or late call fails
    /// after `timeout`.
    pub fn with_timeout(mut self, timeout: std::time::Duration) -> MemKv {
        self.timeout = Some(timeout);
        self
    }

    async fn run<R>(&self, f: impl FnOnce(&mut State) -> Result<R, KvError>) -> Result<R, KvError> {
        self.call(false, f).await
    }

    async fn write<R>(
        &self,
        f: impl FnOnce(&mut State) -> Result<R, KvError>,
    ) -> Result<R, KvError> {
        self.call(true, f).await
    }

    async fn call<R>(
        &self,
        write: bool,
        f: impl FnOnce(&mut State) -> Result<R, KvError>,
    ) -> Result<R, KvError> {
        match self.timeout {
            Some(limit) => tokio::time::timeout(limit, self.answer(write))
                .await
                .map_err(|_| {
                    KvError::Unavailable(format!(
                        "etcd did not answer within {} ms (simulated)",
                        limit.as_millis()
                    ))
                })?,
            None => self.answer(write).await,
        }
        if self.cut.load(Ordering::SeqCst) {
            return Err(KvError::Unavailable(
                "partitioned from etcd (simulated)".into(),
            ));
        }
        self.store.with(f)
    }

    /// Waits as long as this handle's etcd takes to answer: late, or hung until released.
    async fn answer(&self, write: bool) {
        let mut delay = self.delay_ms.load(Ordering::SeqCst);
        if write {
            delay = delay.saturating_add(self.write_delay_ms.load(Ordering::SeqCst));
        }
        if delay > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
        }
        while self.hung.load(Ordering::SeqCst) {
            let released = self.released.notified();
            if !self.hung.load(Ordering::SeqCst) {
                break;
            }
            released.await;
        }
    }
}

impl Kv for MemKv {
    async fn range(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64), KvError> {
        self.run(|st| {
            let kvs = st
                .keys
                .range(prefix.to_string()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(_, v)| v.clone())
                .collect();
            Ok((kvs, st.revision))
        })
        .await
    }

    async fn put(&self, key: &str, value: &str, lease: Option<LeaseId>) -> Result<(), KvError> {
        self.write(|st| st.put(key, value, lease)).await
    }

    async fn put_if(
        &self,
        key: &str,
        value: &str,
        lease: Option<LeaseId>,
        cond: Cond,
    ) -> Result<bool, KvError> {
        self.write(|st| {
            if st.holds(key, &cond) {
                st.put(key, value, lease)?;
                Ok(true)
            } else {
                Ok(false)
            }
        })
        .await
    }

    async fn delete_if(&self, key: &str, cond: Option<Cond>) -> Result<bool, KvError> {
        self.write(|st| {
            if cond.as_ref().is_none_or(|c| st.holds(key, c)) {
                st.delete(key);
                Ok(true)
            } else {
                Ok(false)
            }
        })
        .await
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64, KvError> {
        self.write(|st| {
            let doomed: Vec<String> = st
                .keys
                .range(prefix.to_string()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(k, _)| k.clone())
                .collect();
            for k in &doomed {
                st.delete(k);
            }
            Ok(doomed.len() as u64)
        })
        .await
    }

    async fn grant(&self, ttl: i64) -> Result<LeaseId, KvError> {
        self.write(|st| {
            st.next_lease += 1;
            let id = 0x1000 + st.next_lease;
            let exp = st.now_ms + (ttl.max(1) as u64) * 1000;
            st.leases.insert(id, (ttl, exp));
            Ok(id)
        })
        .await
    }

    async fn keepalive(&self, lease: LeaseId) -> Result<(), KvError> {
        self.write(|st| {
            let now = st.now_ms;
            match st.leases.get_mut(&lease) {
                Some((ttl, exp)) => {
                    *exp = now + (*ttl as u64) * 1000;
                    Ok(())
                }
                None => Err(KvError::LeaseNotFound(lease)),
            }
        })
        .await
    }

    async fn watch(
        &self,
        prefix: &str,
        _revision: i64,
    ) -> Result<mpsc::Receiver<WatchEvent>, KvError> {
        let (tx, rx) = mpsc::channel(4096);
        self.run(|st| {
            st.watchers
                .push((prefix.to_string(), tx, self.cut.clone(), self.hung.clone()));
            Ok(())
        })
        .await?;
        Ok(rx)
    }
}
