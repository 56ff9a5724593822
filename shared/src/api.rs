//! REST types and a small client for member APIs: probing a peer's `GET /patroni` the way
//! Patroni does before a leader race (2 s timeout, no retry).

use serde_json::Value;
use std::time::Duration;

/// What a peer's `GET /patroni` told us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    /// The body had a WAL position (`xlog`); Patroni ignores peers without one.
    pub has_wal: bool,
    pub is_primary: bool,
    pub wal_position: Option<u64>,
    pub timeline: Option<u64>,
    pub watchdog_failed: bool,
    /// A pgpilot member that gave the leader lock up because its server could not serve as
    /// primary, and leaves the next race to the others (`pgpilot.standing_down`).
    pub standing_down: bool,
    pub tags: serde_json::Map<String, Value>,
}

impl PeerStatus {
    /// Interprets a `/patroni` body.
    pub fn from_json(v: &Value) -> PeerStatus {
        let xlog = v.get("xlog").or_else(|| v.get("wal"));
        let location = xlog.and_then(|x| x.get("location")).and_then(Value::as_u64);
        let received = xlog
            .and_then(|x| x.get("received_location"))
            .and_then(Value::as_u64);
        let replayed = xlog
            .and_then(|x| x.get("replayed_location"))
            .and_then(Value::as_u64);
        let role = v.get("role").and_then(Value::as_str).unwrap_or("");
        let is_primary = location.is_some() || role == "primary" || role == "master";
        let wal_position = location.or(match (received, replayed) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        });
        PeerStatus {
            has_wal: xlog.is_some(),
            is_primary,
            wal_position,
            timeline: v.get("timeline").and_then(Value::as_u64),
            watchdog_failed: v.get("watchdog_failed").and_then(Value::as_bool) == Some(true),
            standing_down: v
                .get("pgpilot")
                .and_then(|p| p.get("standing_down"))
                .and_then(Value::as_bool)
                == Some(true),
            tags: v
                .get("tags")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default(),
        }
    }
}

/// Makes ring rustls's process-wide crypto provider (once), before any TLS client or server is
/// built; the only provider compiled in.
pub fn install_tls_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A routed request's answer: (status, body text), or why nothing answered.
pub type Routed =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(u16, String), String>> + Send>>;

/// Where member REST requests go instead of the network (the seeded simulation routes them to
/// each member's own router in memory): `(method, url, body, Basic credentials)` → (status,
/// body text), or why nothing answered.
pub trait Route: Send + Sync {
    fn send(
        &self,
        method: reqwest::Method,
        url: String,
        body: Option<Value>,
        auth: Option<crate::config::BasicAuth>,
    ) -> Routed;
}

/// A client for member REST APIs.
#[derive(Clone)]
pub struct MemberClient {
    http: reqwest::Client,
    /// Requests go here instead of over HTTP, within `timeout`.
    route: Option<std::sync::Arc<dyn Route>>,
    timeout: Duration,
}

impl MemberClient {
    /// The HTTP client underneath (its timeouts and TLS settings), for other HTTP peers.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub fn new(timeout: Duration) -> MemberClient {
        install_tls_provider();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_max_idle_per_host(2)
            .build()
            .unwrap_or_default();
        MemberClient {
            http,
            route: None,
            timeout,
        }
    }

    /// A client whose requests go to `route`, each answered within `timeout`.
    pub fn routed(timeout: Duration, route: std::sync::Arc<dyn Route>) -> MemberClient {
        MemberClient {
            route: Some(route),
            ..MemberClient::new(timeout)
        }
    }

    /// A request through the route, bounded as the HTTP client bounds its own.
    async fn routed_call(
        &self,
        route: &std::sync::Arc<dyn Route>,
        method: reqwest::Method,
        url: String,
        body: Option<Value>,
        auth: Option<&crate::config::BasicAuth>,
        timeout: Duration,
    ) -> Result<(u16, String), String> {
        tokio::time::timeout(timeout, route.send(method, url, body, auth.cloned()))
            .await
            .map_err(|_| "operation timed out".to_string())?
    }

    /// A client for members whose REST APIs may use https: certificates are checked against
    /// `tls.cacert` (else the system's roots), or not at all with `tls.insecure`. The error
    /// names the file at fault.
    pub fn with_tls(
        timeout: Duration,
        tls: &crate::config::RestClientTls,
    ) -> Result<MemberClient, String> {
        install_tls_provider();
        let mut b = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_max_idle_per_host(2);
        if let Some(path) = &tls.cacert {
            let pem = std::fs::read(path)
                .map_err(|e| format!("cannot read the CA file {}: {e}", path.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("{} holds no PEM certificate: {e}", path.display()))?;
            b = b.tls_certs_only(certs);
        }
        if tls.insecure {
            b = b.tls_danger_accept_invalid_certs(true);
        }
        if let Some(cert) = &tls.certfile {
            let key = tls.keyfile.as_ref().unwrap_or(cert);
            let text = std::fs::read_to_string(cert)
                .map_err(|e| format!("cannot read ctl.certfile {}: {e}", cert.display()))?;
            // the certificates, then the key alone, decrypted when it is encrypted
            let mut pem = pem_blocks(&text, "CERTIFICATE").into_bytes();
            pem.extend(
                private_key_pem(key, tls.keyfile_password.as_ref())
                    .map_err(|e| format!("ctl.keyfile {}: {e}", key.display()))?,
            );
            let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                format!(
                    "ctl.certfile {} / ctl.keyfile {}: not a PEM certificate and key: {e}",
                    cert.display(),
                    key.display()
                )
            })?;
            b = b.identity(identity);
        }
        let http = b
            .build()
            .map_err(|e| format!("cannot set up the REST client: {e}"))?;
        Ok(MemberClient {
            http,
            route: None,
            timeout,
        })
    }

    /// `GET <api_url>` (the member's `/patroni`); `None` when it does not answer in time or the
    /// body is not JSON.
    pub async fn status(&self, api_url: &str) -> Option<Value> {
        self.status_or_error(api_url).await.ok()
    }

    /// `GET <api_url>`, or why there is no answer (refused, timed out, certificate, not JSON).
    pub async fn status_or_error(&self, api_url: &str) -> Result<Value, String> {
        if let Some(route) = &self.route {
            let (_, text) = self
                .routed_call(
                    route,
                    reqwest::Method::GET,
                    api_url.to_string(),
                    None,
                    None,
                    self.timeout,
                )
                .await?;
            return serde_json::from_str(&text).map_err(|e| format!("the answer is not JSON: {e}"));
        }
        let resp = self.http.get(api_url).send().await.map_err(|e| {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            text
        })?;
        resp.json::<Value>()
            .await
            .map_err(|e| format!("the answer is not JSON: {e}"))
    }

    /// `method` on `path` beside a member's `api_url` (its `/patroni`), with a JSON body and
    /// Basic credentials when given: (status, body text). The error is why nothing answered.
    pub async fn call(
        &self,
        method: reqwest::Method,
        api_url: &str,
        path: &str,
        body: &Value,
        auth: Option<&crate::config::BasicAuth>,
        timeout: Duration,
    ) -> Result<(u16, String), String> {
        let base = api_url.trim_end_matches("/patroni").trim_end_matches('/');
        if let Some(route) = &self.route {
            return self
                .routed_call(
                    route,
                    method,
                    format!("{base}{path}"),
                    Some(body.clone()),
                    auth,
                    timeout,
                )
                .await;
        }
        let mut req = self
            .http
            .request(method, format!("{base}{path}"))
            .timeout(timeout)
            .json(body);
        if let Some(a) = auth {
            req = req.basic_auth(&a.username, Some(a.password.expose()));
        }
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let code = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| e.to_string())?;
        Ok((code, text))
    }

    /// `GET` each of `api_urls` at once; answers in the same order (`None` for an empty URL or
    /// no answer in time).
    pub async fn statuses(&self, api_urls: &[String]) -> Vec<Option<Value>> {
        let mut set = tokio::task::JoinSet::new();
        for (i, url) in api_urls.iter().enumerate() {
            let client = self.clone();
            let url = url.clone();
            set.spawn(async move {
                let answer = if url.is_empty() {
                    None
                } else {
                    client.status(&url).await
                };
                (i, answer)
            });
        }
        let mut out = vec![None; api_urls.len()];
        while let Some(joined) = set.join_next().await {
            if let Ok((i, answer)) = joined {
                out[i] = answer;
            }
        }
        out
    }

    /// Whether anything answers `GET /liveness` next to `api_url` (duplicate-name guard).
    pub async fn answers_liveness(&self, api_url: &str) -> bool {
        let base = api_url.trim_end_matches("/patroni");
        if let Some(route) = &self.route {
            return self
                .routed_call(
                    route,
                    reqwest::Method::GET,
                    format!("{base}/liveness"),
                    None,
                    None,
                    self.timeout,
                )
                .await
                .is_ok();
        }
        self.http
            .get(format!("{base}/liveness"))
            .send()
            .await
            .is_ok()
    }
}

/// The `GET /cluster` body for a cluster view, as Patroni renders it: members sorted by name with
/// cluster roles (`leader`, `sync_standby`, `replica`, …), `X/X` LSNs and lags in bytes against
/// the leader's last known position.
pub fn cluster_json(cluster: &crate::dcs::Cluster) -> Value {
    use crate::types::Lsn;
    use serde_json::{Map, json};
    let leader = cluster.leader.as_ref().map(|l| l.name.as_str());
    let optime = cluster.status.optime;
    let sync = cluster.sync.as_ref().map(|s| &s.value);
    let quorum_mode = cluster.dynamic_config().synchronous_mode() == crate::dcs::SyncMode::Quorum;
    let mut members = Vec::new();
    for m in &cluster.members {
        let d = &m.data;
        let is_leader = Some(m.name.as_str()) == leader;
        let role = if is_leader {
            if d.role == "standby_leader" {
                "standby_leader"
            } else {
                "leader"
            }
        } else if sync.is_some_and(|s| s.is_sync(&m.name)) {
            if quorum_mode {
                "quorum_standby"
            } else {
                "sync_standby"
            }
        } else {
            "replica"
        };
        let mut o = Map::new();
        o.insert("name".into(), json!(m.name));
        o.insert("role".into(), json!(role));
        let state = if !is_leader {
            d.replication_state
                .clone()
                .unwrap_or_else(|| d.state.clone())
        } else {
            d.state.clone()
        };
        o.insert("state".into(), json!(state));
        o.insert("api_url".into(), json!(d.api_url));
        if let Some((host, port)) = d.host_port() {
            o.insert("host".into(), json!(host));
            o.insert("port".into(), json!(port));
        }
        if let Some(tl) = d.timeline {
            o.insert("timeline".into(), json!(tl));
        }
        if d.pending_restart == Some(true) {
            o.insert("pending_restart".into(), json!(true));
            if let Some(r) = &d.pending_restart_reason {
                o.insert("pending_restart_reason".into(), Value::Object(r.clone()));
            }
        }
        if let Some(s) = &d.scheduled_restart {
            o.insert("scheduled_restart".into(), s.clone());
        }
        if !d.tags.is_empty() {
            o.insert("tags".into(), Value::Object(d.tags.clone()));
        }
        if !is_leader {
            let lag = |lsn: Option<u64>| -> (Value, Value) {
                match (lsn, optime) {
                    (Some(l), Some(o)) => (json!(Lsn(l).to_string()), json!(o.saturating_sub(l))),
                    (Some(l), None) => (json!(Lsn(l).to_string()), json!("unknown")),
                    _ => (json!("unknown"), json!("unknown")),
                }
            };
            let receive = d.receive_lsn.or(d.xlog_location);
            let replay = d.replay_lsn.or(d.xlog_location);
            let (rl, rlag) = lag(receive);
            o.insert("receive_lsn".into(), rl);
            o.insert("receive_lag".into(), rlag);
            let (pl, plag) = lag(replay);
            o.insert("replay_lsn".into(), pl);
            o.insert("replay_lag".into(), plag);
            let (l, lg) = lag(d.xlog_location);
            o.insert("lsn".into(), l);
            o.insert("lag".into(), lg);
        }
        members.push(Value::Object(o));
    }
    let mut out = Map::new();
    out.insert("members".into(), Value::Array(members));
    out.insert("scope".into(), json!(cluster.scope));
    if cluster.is_paused() {
        out.insert("pause".into(), json!(true));
    }
    if let Some(f) = cluster.failover.as_ref().map(|f| &f.value)
        && let Some(at) = &f.scheduled_at
    {
        let mut s = Map::new();
        s.insert("at".into(), json!(at));
        if let Some(l) = &f.leader {
            s.insert("from".into(), json!(l));
        }
        if let Some(m) = &f.member {
            s.insert("to".into(), json!(m));
        }
        out.insert("scheduled_switchover".into(), Value::Object(s));
    }
    Value::Object(out)
}

/// The PEM blocks of `text` whose label is `label`, as text.
fn pem_blocks(text: &str, label: &str) -> String {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let mut out = String::new();
    let mut inside = false;
    for line in text.lines() {
        if line.trim() == begin {
            inside = true;
        }
        if inside {
            out.push_str(line);
            out.push('\n');
        }
        if line.trim() == end {
            inside = false;
        }
    }
    out
}

/// The private key in the PEM file `path` as unencrypted PEM: an encrypted PKCS#8 key
/// (`ENCRYPTED PRIVATE KEY`, PBES2) is decrypted with `password`; another key is returned as it
/// is. An OpenSSL "traditional" encrypted key (`Proc-Type: 4,ENCRYPTED`) is refused with the
/// command that converts it.
pub fn private_key_pem(
    path: &std::path::Path,
    password: Option<&crate::config::Secret>,
) -> Result<Vec<u8>, String> {
    use pkcs8::der::pem::LineEnding;
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
    if text.contains("Proc-Type: 4,ENCRYPTED") {
        return Err("an OpenSSL traditional encrypted key: convert it with `openssl pkcs8 -topk8 -v2 aes-256-cbc -in KEY -out KEY.p8` (PKCS#8)".into());
    }
    let encrypted = pem_blocks(&text, "ENCRYPTED PRIVATE KEY");
    if encrypted.is_empty() {
        let plain = ["PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY"]
            .into_iter()
            .map(|l| pem_blocks(&text, l))
            .find(|b| !b.is_empty())
            .ok_or("no private key in it")?;
        return Ok(plain.into_bytes());
    }
    let password = password.ok_or("the key is encrypted: set its passphrase (keyfile_password)")?;
    let (_, doc) = pkcs8::der::Document::from_pem(&encrypted)
        .map_err(|e| format!("not a PEM encrypted key: {e}"))?;
    let info = pkcs8::EncryptedPrivateKeyInfo::try_from(doc.as_bytes())
        .map_err(|e| format!("not a PKCS#8 encrypted key: {e}"))?;
    let key = info.decrypt(password.expose()).map_err(|_| {
        "cannot decrypt the key: wrong passphrase (keyfile_password) or an unsupported cipher"
            .to_string()
    })?;
    let pem = key
        .to_pem("PRIVATE KEY", LineEnding::LF)
        .map_err(|e| format!("cannot re-encode the key: {e}"))?;
    Ok(pem.as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_status_from_patroni_bodies() {
        let replica: Value = serde_json::from_str(
            r#"{"state":"running","role":"replica","xlog":{"received_location":100,"replayed_location":90,"replayed_timestamp":null,"paused":false},"timeline":3,"tags":{"nofailover":true}}"#,
        )
        .unwrap();
        let p = PeerStatus::from_json(&replica);
        assert!(p.has_wal && !p.is_primary);
        assert_eq!(p.wal_position, Some(100));
        assert_eq!(p.timeline, Some(3));
        let primary: Value =
            serde_json::from_str(r#"{"role":"primary","xlog":{"location":500}}"#).unwrap();
        let p = PeerStatus::from_json(&primary);
        assert!(p.is_primary);
        assert_eq!(p.wal_position, Some(500));
        let down: Value = serde_json::from_str(r#"{"state":"stopped","role":"replica"}"#).unwrap();
        assert!(!PeerStatus::from_json(&down).has_wal);
    }

    #[test]
    fn cluster_json_matches_patroni_shape() {
        use crate::dcs::{KeyValue, parse_cluster};
        let p = "/service/demo/";
        let kv = |k: &str, v: &str| KeyValue {
            key: format!("{p}{k}"),
            value: v.into(),
            create_revision: 1,
            mod_revision: 1,
            lease: 0,
        };
        let c = parse_cluster(
            p,
            "demo",
            &[
                kv("leader", "node1"),
                kv("status", r#"{"optime":83886176}"#),
                kv(
                    "sync",
                    r#"{"leader":"node1","quorum":0,"sync_standby":"node2"}"#,
                ),
                kv(
                    "failover",
                    r#"{"leader":"node1","member":"node2","scheduled_at":"2025-04-01T02:00:00+00:00"}"#,
                ),
                kv(
                    "members/node1",
                    r#"{"conn_url":"postgres://10.1.0.11:5432/postgres","api_url":"http://10.1.0.11:8008/patroni","state":"running","role":"primary","version":"4.1.4","xlog_location":83886176,"timeline":5}"#,
                ),
                kv(
                    "members/node2",
                    r#"{"conn_url":"postgres://10.1.0.12:5432/postgres","api_url":"http://10.1.0.12:8008/patroni","state":"running","role":"replica","version":"4.1.4","tags":{"clonefrom":true},"xlog_location":83886176,"replay_lsn":83886176,"receive_lsn":83886176,"replication_state":"streaming","timeline":5}"#,
                ),
            ],
            3,
        );
        let want: Value = serde_json::from_str(
            r#"{"members":[{"name":"node1","role":"leader","state":"running","api_url":"http://10.1.0.11:8008/patroni","host":"10.1.0.11","port":5432,"timeline":5},
            {"name":"node2","role":"sync_standby","state":"streaming","api_url":"http://10.1.0.12:8008/patroni","host":"10.1.0.12","port":5432,"timeline":5,"tags":{"clonefrom":true},"receive_lsn":"0/5000060","receive_lag":0,"replay_lsn":"0/5000060","replay_lag":0,"lsn":"0/5000060","lag":0}],
            "scope":"demo","scheduled_switchover":{"at":"2025-04-01T02:00:00+00:00","from":"node1","to":"node2"}}"#,
        )
        .unwrap();
        assert_eq!(cluster_json(&c), want);
    }
}
