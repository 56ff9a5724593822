//! [`Kv`] over etcd v3 with the native gRPC client. Every request has a deadline, requests fail
//! when the contacted etcd member has no leader (lost quorum), and a broken watch is re-created
//! from the last revision seen.

use super::kv::{Cond, KeyValue, Kv, KvError, LeaseId, WatchEvent};
use crate::config::EtcdConfig;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    WatchOptions,
};
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// An etcd v3 connection. Cloning shares the underlying channel; [`Kv::reconnect`] replaces it
/// for every clone.
#[derive(Clone)]
pub struct EtcdKv {
    client: std::sync::Arc<tokio::sync::watch::Sender<Client>>,
    /// The etcd cluster's id, from the answers' headers (0 until one came): a reconnect must
    /// reach the same cluster.
    cluster_id: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// The deadline of each request, streamed answers included (the lease keepalive).
    timeout: Duration,
}

impl EtcdKv {
    /// Connects lazily: an unreachable etcd is reported by the first request, not here, so an
    /// agent can start before etcd does. `timeout` bounds every request.
    pub async fn connect(cfg: &EtcdConfig, timeout: Duration) -> Result<EtcdKv, KvError> {
        let client = Client::connect(cfg.endpoints(), Some(connect_options(cfg, timeout)?))
            .await
            .map_err(map_err)?;
        Ok(EtcdKv {
            client: std::sync::Arc::new(tokio::sync::watch::Sender::new(client)),
            cluster_id: Default::default(),
            timeout,
        })
    }

    /// Revokes a lease (the leader key and member key attached to it go at once).
    pub async fn revoke(&self, lease: LeaseId) -> Result<(), KvError> {
        match self.client().lease_revoke(lease).await.map_err(map_err) {
            Ok(_) | Err(KvError::LeaseNotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// How to reach etcd: deadlines, credentials and, with `protocol: https`, TLS with the CA
/// (`cacert`, else the system's roots) and the client certificate (`cert`, `key`). A file that
/// cannot be read is an error naming its key.
pub fn connect_options(cfg: &EtcdConfig, timeout: Duration) -> Result<ConnectOptions, KvError> {
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(timeout)
        .with_timeout(timeout)
        .with_keep_alive(Duration::from_secs(5), timeout)
        .with_require_leader(true);
    if let (Some(user), Some(pass)) = (&cfg.username, &cfg.password) {
        opts = opts.with_user(user.clone(), pass.expose().to_string());
    }
    if cfg.tls() {
        let read = |key: &str, path: &std::path::Path| {
            std::fs::read(path).map_err(|e| {
                KvError::Other(format!(
                    "etcd3.{key} {}: cannot read it: {e}",
                    path.display()
                ))
            })
        };
        let mut tls = etcd_client::TlsOptions::new();
        tls = match &cfg.cacert {
            Some(ca) => tls.ca_certificate(etcd_client::Certificate::from_pem(read("cacert", ca)?)),
            None => tls.with_native_roots(),
        };
        if let Some(cert) = &cfg.cert {
            let key = cfg.key.as_ref().unwrap_or(cert);
            tls = tls.identity(etcd_client::Identity::from_pem(
                read("cert", cert)?,
                read("key", key)?,
            ));
        }
        opts = opts.with_tls(tls);
    }
    Ok(opts)
}

impl EtcdKv {
    fn client(&self) -> Client {
        self.client.borrow().clone()
    }
}

fn map_err(e: etcd_client::Error) -> KvError {
    use etcd_client::Error as E;
    match e {
        E::TransportError(_) | E::IoError(_) => KvError::Unavailable(e.to_string()),
        E::GRpcStatus(ref s) => match s.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown => {
                KvError::Unavailable(s.message().to_string())
            }
            _ if s.message().contains("lease not found") => KvError::LeaseNotFound(0),
            _ => KvError::Other(s.message().to_string()),
        },
        E::LeaseKeepAliveError(ref m) if m.contains("not found") => KvError::LeaseNotFound(0),
        // a stream (keepalive, watch) that closed without an answer
        E::WatchError(_) => KvError::Unavailable(e.to_string()),
        other => KvError::Other(other.to_string()),
    }
}

fn to_kv(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: String::from_utf8_lossy(kv.value()).into_owned(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        lease: kv.lease(),
    }
}

fn compare(key: &str, cond: &Cond) -> Compare {
    match cond {
        Cond::Absent => Compare::create_revision(key, CompareOp::Equal, 0),
        Cond::ValueIs(v) => Compare::value(key, CompareOp::Equal, v.as_str()),
        Cond::ModRevisionIs(r) => Compare::mod_revision(key, CompareOp::Equal, *r),
    }
}

fn put_options(lease: Option<LeaseId>) -> Option<PutOptions> {
    lease.map(|id| PutOptions::new().with_lease(id))
}

impl Kv for EtcdKv {
    async fn range(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64), KvError> {
        let resp = self
            .client()
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .map_err(map_err)?;
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        if let Some(id) = resp.header().map(|h| h.cluster_id()).filter(|id| *id != 0) {
            self.cluster_id
                .store(id, std::sync::atomic::Ordering::Relaxed);
        }
        Ok((resp.kvs().iter().map(to_kv).collect(), rev))
    }

    async fn put(&self, key: &str, value: &str, lease: Option<LeaseId>) -> Result<(), KvError> {
        self.client()
            .put(key, value, put_options(lease))
            .await
            .map_err(map_err)
            .map_err(|e| with_lease(e, lease))?;
        Ok(())
    }

    async fn put_if(
        &self,
        key: &str,
        value: &str,
        lease: Option<LeaseId>,
        cond: Cond,
    ) -> Result<bool, KvError> {
        let txn = Txn::new()
            .when(vec![compare(key, &cond)])
            .and_then(vec![TxnOp::put(key, value, put_options(lease))]);
        let resp = self
            .client()
            .txn(txn)
            .await
            .map_err(map_err)
            .map_err(|e| with_lease(e, lease))?;
        Ok(resp.succeeded())
    }

    async fn delete_if(&self, key: &str, cond: Option<Cond>) -> Result<bool, KvError> {
        match cond {
            None => {
                self.client().delete(key, None).await.map_err(map_err)?;
                Ok(true)
            }
            Some(cond) => {
                let txn = Txn::new()
                    .when(vec![compare(key, &cond)])
                    .and_then(vec![TxnOp::delete(key, None)]);
                Ok(self.client().txn(txn).await.map_err(map_err)?.succeeded())
            }
        }
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64, KvError> {
        let resp = self
            .client()
            .delete(
                prefix,
                Some(etcd_client::DeleteOptions::new().with_prefix()),
            )
            .await
            .map_err(map_err)?;
        Ok(resp.deleted().max(0) as u64)
    }

    async fn grant(&self, ttl: i64) -> Result<LeaseId, KvError> {
        let resp = self
            .client()
            .lease_grant(ttl, None)
            .await
            .map_err(map_err)?;
        Ok(resp.id())
    }

    async fn keepalive(&self, lease: LeaseId) -> Result<(), KvError> {
        // Opening the keepalive stream sends the one request and reads its answer (a lease
        // that is gone is an error); a second request would double etcd's work for nothing.
        // A streamed answer has no deadline of its own in the gRPC client.
        tokio::time::timeout(self.timeout, self.client().lease_keep_alive(lease))
            .await
            .map_err(|_| {
                KvError::Unavailable(format!(
                    "no keepalive answer within {} ms",
                    self.timeout.as_millis()
                ))
            })?
            .map(|_| ())
            .map_err(map_err)
            .map_err(|e| with_lease(e, Some(lease)))
    }

    async fn watch(
        &self,
        prefix: &str,
        revision: i64,
    ) -> Result<mpsc::Receiver<WatchEvent>, KvError> {
        self.watch_stream(prefix, revision, None).await
    }

    async fn watch_with_progress(
        &self,
        prefix: &str,
        revision: i64,
        quiet: Duration,
    ) -> Result<mpsc::Receiver<WatchEvent>, KvError> {
        self.watch_stream(prefix, revision, Some(quiet)).await
    }

    async fn reconnect(&self, cfg: &EtcdConfig, probe: &str) -> Result<(), KvError> {
        // one deadline for the whole proof: the HA loop waits for it
        tokio::time::timeout(self.timeout, self.reconnect_now(cfg, probe))
            .await
            .map_err(|_| {
                KvError::Unavailable(format!("no answer within {} ms", self.timeout.as_millis()))
            })?
    }
}

impl EtcdKv {
    /// The watch behind [`Kv::watch`] and [`Kv::watch_with_progress`]: events under `prefix`
    /// from `revision`, the stream re-created on a new connection or after a break (resuming
    /// after the last revision seen; [`WatchEvent::Reset`] tells the receiver), and with
    /// `quiet`, a progress request whenever nothing arrived for that long.
    async fn watch_stream(
        &self,
        prefix: &str,
        revision: i64,
        quiet: Option<Duration>,
    ) -> Result<mpsc::Receiver<WatchEvent>, KvError> {
        let (tx, rx) = mpsc::channel(1024);
        let mut clients = self.client.subscribe();
        let prefix = prefix.to_string();
        let first = clients.borrow_and_update().clone();
        let mut stream = open_watch(&first, &prefix, revision).await?;
        tokio::spawn(async move {
            let mut next_rev = revision;
            // when the stream last said something, and whether progress was asked since
            let mut heard = tokio::time::Instant::now();
            let mut asked = false;
            loop {
                // quiet for `quiet`: ask for progress; asked and still nothing after as long
                // again: the stream is taken for dead and re-created
                let patience = quiet.map(|q| heard + if asked { q * 2 } else { q });
                let message = tokio::select! {
                    m = stream.message() => m,
                    // a new connection (reload): the stream moves to it
                    Ok(()) = clients.changed() => Ok(None),
                    _ = async { tokio::time::sleep_until(patience.unwrap_or(heard)).await }, if patience.is_some() => {
                        if asked {
                            debug!("etcd watch stream silent; re-creating it");
                            Ok(None)
                        } else {
                            asked = true;
                            match stream.request_progress().await {
                                Ok(()) => continue,
                                Err(_) => Ok(None),
                            }
                        }
                    }
                };
                match message {
                    Ok(Some(resp)) => {
                        heard = tokio::time::Instant::now();
                        asked = false;
                        if resp.created() {
                            // the stream is open; its catch-up events follow
                            continue;
                        }
                        if !resp.canceled() && resp.events().is_empty() {
                            // a progress report (or the stream's creation): alive, nothing new
                            let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
                            if quiet.is_some()
                                && tx.send(WatchEvent::Progress { revision }).await.is_err()
                            {
                                return;
                            }
                            continue;
                        }
                        if resp.canceled() {
                            warn!(
                                reason = resp.cancel_reason(),
                                "etcd watch cancelled; reloading"
                            );
                            next_rev = 0;
                            if tx.send(WatchEvent::Reset).await.is_err() || quiet.is_some() {
                                return;
                            }
                        } else {
                            for ev in resp.events() {
                                let Some(kv) = ev.kv() else { continue };
                                next_rev = next_rev.max(kv.mod_revision().saturating_add(1));
                                let event = match ev.event_type() {
                                    EventType::Put => WatchEvent::Put(to_kv(kv)),
                                    EventType::Delete => WatchEvent::Delete {
                                        key: String::from_utf8_lossy(kv.key()).into_owned(),
                                    },
                                };
                                if tx.send(event).await.is_err() {
                                    return;
                                }
                            }
                            continue;
                        }
                    }
                    Ok(None) | Err(_) => {
                        debug!("etcd watch stream broke; re-creating it");
                        if tx.send(WatchEvent::Reset).await.is_err() {
                            return;
                        }
                        if quiet.is_some() {
                            // its receiver reads everything again and watches anew
                            return;
                        }
                    }
                }
                // Re-create the stream, backing off while etcd is away.
                loop {
                    if tx.is_closed() {
                        return;
                    }
                    let client = clients.borrow_and_update().clone();
                    match open_watch(&client, &prefix, next_rev).await {
                        Ok(s) => {
                            stream = s;
                            heard = tokio::time::Instant::now();
                            asked = false;
                            break;
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                    }
                }
            }
        });
        Ok(rx)
    }
}

impl EtcdKv {
    async fn reconnect_now(&self, cfg: &EtcdConfig, probe: &str) -> Result<(), KvError> {
        let client = Client::connect(cfg.endpoints(), Some(connect_options(cfg, self.timeout)?))
            .await
            .map_err(map_err)?;
        let id = |r: &etcd_client::GetResponse| r.header().map(|h| h.cluster_id()).unwrap_or(0);
        let new = id(&client.clone().get(probe, None).await.map_err(map_err)?);
        // endpoints of another etcd cluster (a restored copy, a test cluster) would lose the
        // lease and show an empty store a member could bootstrap on: refused. The cluster's id
        // comes from the answers read so far, else from the current connection now.
        let mut known = self.cluster_id.load(std::sync::atomic::Ordering::Relaxed);
        if known == 0
            && let Ok(Ok(old)) =
                tokio::time::timeout(self.timeout / 2, self.client().get(probe, None)).await
        {
            known = id(&old);
        }
        if known != 0 && new != known {
            return Err(KvError::Other(format!(
                "the new settings reach another etcd cluster (id {new:x}, the current one is {known:x})"
            )));
        }
        self.client.send_replace(client);
        Ok(())
    }
}

async fn open_watch(
    client: &Client,
    prefix: &str,
    revision: i64,
) -> Result<etcd_client::WatchStream, KvError> {
    let mut opts = WatchOptions::new().with_prefix();
    if revision > 0 {
        opts = opts.with_start_revision(revision);
    }
    client
        .clone()
        .watch(prefix, Some(opts))
        .await
        .map_err(map_err)
}

fn with_lease(e: KvError, lease: Option<LeaseId>) -> KvError {
    match (e, lease) {
        (KvError::LeaseNotFound(_), Some(id)) => KvError::LeaseNotFound(id),
        (e, _) => e,
    }
}
