//! The REST API (axum), Patroni-compatible: health checks for HAProxy and load balancers,
//! `/patroni`, `/cluster`, `/history`, `/config`, `/metrics`. Health endpoints answer from the
//! in-memory [`Snapshot`] and never wait on etcd or PostgreSQL; HEAD and OPTIONS return the same
//! status code as GET without a body.

use crate::runtime::Snapshot;
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use serde_json::{Map, Value, json};
use shared::dcs::{Dcs, Kv};
use shared::types::{PgState, Role, parse_bytes};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Shared state of the handlers.
pub struct Api<K: Kv> {
    pub snapshot: watch::Receiver<Arc<Snapshot>>,
    pub dcs: Arc<Dcs<K>>,
    /// `restapi.allowlist` and `restapi.authentication`: checked for every write endpoint.
    pub access: Arc<std::sync::RwLock<Arc<crate::rest_access::Access>>>,
    /// For probing members during a switchover.
    pub client: shared::api::MemberClient,
    /// Local operations for the agent's loop.
    pub commands: tokio::sync::mpsc::Sender<crate::rest_write::Envelope>,
    /// Wakes the agent's loop (after a configuration change).
    pub wake: Arc<tokio::sync::Notify>,
    /// Records `POST /failsafe` from a primary that lost etcd.
    pub failsafe_heard: crate::runtime::FailsafeHeard,
    /// pgpilot's own `GET /journal`.
    pub journal: crate::journal::Journal,
}

/// The router: one handler that dispatches on method and path, as Patroni's server does.
pub fn router<K: Kv>(api: Arc<Api<K>>) -> Router {
    Router::new().fallback(serve::<K>).with_state(api)
}

/// One request: its answer, with `restapi.http_extra_headers` (and `https_extra_headers`).
async fn serve<K: Kv>(State(api): State<Arc<Api<K>>>, req: Request) -> Response {
    let access = api.access.read().unwrap_or_else(|p| p.into_inner()).clone();
    let mut response = handle(State(api), req).await;
    // beside the server's own (Content-Type, WWW-Authenticate …), never in their place
    for (name, value) in &access.extra_headers {
        response.headers_mut().append(name.clone(), value.clone());
    }
    response
}

pub(crate) fn json_response(code: StatusCode, body: &Value) -> Response {
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

pub(crate) fn text_response(
    code: StatusCode,
    content_type: &'static str,
    body: String,
) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = code;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn status_only(code: StatusCode) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = code;
    r
}

pub(crate) fn error(code: StatusCode, reason: &str) -> Response {
    json_response(code, &json!({ "error": reason }))
}

fn parse_query(q: Option<&str>) -> Vec<(String, String)> {
    q.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn handle<K: Kv>(State(api): State<Arc<Api<K>>>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = parse_query(req.uri().query());
    let snap = api.snapshot.borrow().clone();
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    let head_like = method == Method::HEAD || method == Method::OPTIONS;
    if method == Method::GET || head_like {
        match first {
            "patroni" => {
                return if head_like {
                    status_only(StatusCode::OK)
                } else {
                    json_response(StatusCode::OK, &status_json(&snap))
                };
            }
            "cluster" if !head_like => return cluster(&api).await,
            "journal" if !head_like => {
                let name = api.snapshot.borrow().name.clone();
                return json_response(StatusCode::OK, &api.journal.json(&name));
            }
            "history" if !head_like => {
                let history = match api.dcs.load().await {
                    Ok(c) => c.history,
                    Err(_) => snap
                        .cluster
                        .as_ref()
                        .map(|c| c.history.clone())
                        .unwrap_or_default(),
                };
                let raw: Value = serde_json::from_str(&shared::dcs::history_json(&history))
                    .unwrap_or(Value::Array(vec![]));
                return json_response(StatusCode::OK, &raw);
            }
            "config" if !head_like => {
                return match snap.cluster.as_ref().and_then(|c| c.config.as_ref()) {
                    Some(c) => json_response(StatusCode::OK, &Value::Object(c.value.raw.clone())),
                    None => crate::rest_write::python_error(StatusCode::BAD_GATEWAY),
                };
            }
            "failsafe" if !head_like => {
                return match snap.cluster.as_ref().and_then(|c| c.failsafe.as_ref()) {
                    Some(f) => json_response(StatusCode::OK, &Value::Object(f.clone())),
                    None => crate::rest_write::python_error(StatusCode::BAD_GATEWAY),
                };
            }
            "metrics" if !head_like => {
                return text_response(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    metrics(&snap),
                );
            }
            _ => {}
        }
        let code = health_code(first, &query, &snap, Instant::now());
        let code = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        if head_like || first == "liveness" || first == "readiness" {
            return status_only(code);
        }
        return json_response(code, &status_json(&snap));
    }
    if matches!(
        method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    ) {
        let first = first.to_string();
        let (parts, body) = req.into_parts();
        let peer = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip());
        let client_cert = parts
            .extensions
            .get::<crate::rest_access::ClientCert>()
            .is_some_and(|c| c.0);
        let caller = crate::rest_write::Caller { peer, client_cert };
        if let Some(r) =
            crate::rest_write::handle(&api, &method, &first, &parts.headers, body, caller).await
        {
            return r;
        }
        return error(
            StatusCode::NOT_FOUND,
            &format!("{method} {path}: no such endpoint"),
        );
    }
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("method {method} is not allowed"),
    )
}

async fn cluster<K: Kv>(api: &Api<K>) -> Response {
    match api.dcs.load().await {
        Ok(c) => json_response(StatusCode::OK, &shared::api::cluster_json(&c)),
        Err(e) => error(
            StatusCode::BAD_GATEWAY,
            &format!("cannot read the cluster from etcd: {e}"),
        ),
    }
}

/// Whether the node serves as a healthy replica: running, a replica, not `noloadbalance`, within
/// the requested lag and replication state, and matching every `tag_*` filter.
fn replica_ok(q: &[(String, String)], s: &Snapshot) -> bool {
    let Some(server) = &s.server else {
        return false;
    };
    if s.state != PgState::Running || s.role != Role::Replica {
        return false;
    }
    if shared::tags::TagView(&s.tags).noloadbalance() {
        return false;
    }
    for (k, v) in q {
        if k == "lag" {
            let Some(max) = parse_bytes(v) else {
                return false;
            };
            let optime = s
                .cluster
                .as_ref()
                .and_then(|c| c.status.optime)
                .unwrap_or(0)
                .max(server.receive_lsn.unwrap_or(0));
            let replayed = server.replay_lsn.unwrap_or(0);
            if optime > replayed.saturating_add(max) {
                return false;
            }
        } else if k == "replication_state" {
            if server.replication_state.as_deref() != Some(v.as_str()) {
                return false;
            }
        } else if let Some(tag) = k.strip_prefix("tag_") {
            match s.tags.get(tag) {
                Some(Value::String(t)) if t == v => {}
                Some(Value::String(_)) | None => return false,
                Some(other) => {
                    if other.to_string().to_lowercase() != v.to_lowercase() {
                        return false;
                    }
                }
            }
        }
    }
    true
}

fn is_sync(s: &Snapshot) -> Option<(bool, bool)> {
    let c = s.cluster.as_ref()?;
    if !s.dcs_ok {
        return None;
    }
    let sync = c.sync.as_ref().map(|v| &v.value);
    let listed = sync.is_some_and(|x| x.is_sync(&s.name));
    let quorum = c.dynamic_config().synchronous_mode() == shared::dcs::SyncMode::Quorum;
    Some((listed && !quorum, listed && quorum))
}

/// The status code of a health-check path.
pub fn health_code(path: &str, q: &[(String, String)], s: &Snapshot, now: Instant) -> u16 {
    let ok = |b: bool| if b { 200 } else { 503 };
    let lock = s.lock_until.is_some_and(|t| now < t);
    let primary = lock && s.role == Role::Primary && s.state == PgState::Running;
    match path {
        "" | "primary" | "master" | "read-write" => ok(primary),
        "leader" => ok(lock && s.state == PgState::Running),
        "standby-leader" | "standby_leader" => ok(lock && s.role == Role::StandbyLeader),
        "replica" => ok(replica_ok(q, s)),
        "read-only" => ok(primary || replica_ok(q, s)),
        "health" => ok(s.state == PgState::Running),
        "sync" | "synchronous" => ok(is_sync(s).is_some_and(|(sy, _)| sy) && replica_ok(q, s)),
        "quorum" => ok(is_sync(s).is_some_and(|(_, qu)| qu) && replica_ok(q, s)),
        "async" | "asynchronous" => {
            ok(is_sync(s).is_some_and(|(sy, qu)| !sy && !qu) && replica_ok(q, s))
        }
        "read-only-sync" | "read-only-synchronous" => ok(is_sync(s).is_some()
            && (primary || (is_sync(s).is_some_and(|(sy, _)| sy) && replica_ok(q, s)))),
        "read-only-quorum" => ok(is_sync(s).is_some()
            && (primary || (is_sync(s).is_some_and(|(_, qu)| qu) && replica_ok(q, s)))),
        "liveness" => {
            let threshold = if s.role == Role::Primary && s.state == PgState::Running {
                s.ttl
            } else {
                2 * s.ttl
            };
            ok(s.paused || s.last_cycle + Duration::from_secs(threshold) > now)
        }
        "readiness" => {
            if lock {
                return 200;
            }
            let Some(server) = &s.server else { return 503 };
            if s.state != PgState::Running
                || server.replication_state.as_deref() != Some("streaming")
            {
                return 503;
            }
            let max = q
                .iter()
                .find(|(k, _)| k == "lag")
                .and_then(|(_, v)| parse_bytes(v))
                .unwrap_or(s.maximum_lag_on_failover);
            let write_mode = q.iter().any(|(k, v)| k == "mode" && v == "write");
            let pos = if write_mode {
                server.receive_lsn
            } else {
                server.replay_lsn
            }
            .unwrap_or(0);
            let optime = s
                .cluster
                .as_ref()
                .and_then(|c| c.status.optime)
                .unwrap_or(0);
            ok(optime <= pos.saturating_add(max))
        }
        _ => 503,
    }
}

/// The `/patroni` body.
pub fn status_json(s: &Snapshot) -> Value {
    let mut o = Map::new();
    let running = s.state == PgState::Running && s.server.is_some();
    let state = if s.server.is_none() && s.state == PgState::Running {
        PgState::Unknown
    } else {
        s.state
    };
    o.insert("state".into(), json!(state.as_str()));
    if let (true, Some(srv)) = (running, &s.server) {
        o.insert(
            "postmaster_start_time".into(),
            json!(srv.postmaster_start_time.replace('T', " ")),
        );
        o.insert("role".into(), json!(s.role.as_str()));
        o.insert("server_version".into(), json!(srv.server_version));
        if let Some(reason) = &srv.pending_restart {
            o.insert("pending_restart".into(), json!(true));
            o.insert(
                "pending_restart_reason".into(),
                Value::Object(reason.clone()),
            );
        }
        if srv.in_recovery {
            o.insert(
                "xlog".into(),
                json!({
                    "received_location": srv.receive_lsn.or(srv.replay_lsn),
                    "replayed_location": srv.replay_lsn,
                    "replayed_timestamp": srv.replayed_timestamp,
                    "paused": srv.replay_paused,
                }),
            );
        } else {
            o.insert("xlog".into(), json!({ "location": srv.write_lsn }));
        }
        if let Some(tl) = srv.timeline {
            o.insert("timeline".into(), json!(tl));
        }
        if let Some(rs) = &srv.replication_state {
            o.insert("replication_state".into(), json!(rs));
        }
        if !srv.replication.is_empty() {
            o.insert("replication".into(), json!(srv.replication));
        }
    } else {
        o.insert("role".into(), json!(s.role.as_str()));
    }
    if let Some((sync, quorum)) = is_sync(s) {
        if sync {
            o.insert("sync_standby".into(), json!(true));
        }
        if quorum {
            o.insert("quorum_standby".into(), json!(true));
        }
    }
    if let Some(r) = &s.scheduled_restart {
        o.insert("scheduled_restart".into(), r.clone());
    }
    if s.paused {
        o.insert("pause".into(), json!(true));
    }
    if s.dcs_ok && s.cluster.as_ref().is_some_and(|c| c.leader.is_none()) {
        o.insert("cluster_unlocked".into(), json!(true));
    }
    if let Some(t) = s.dcs_last_seen {
        o.insert("dcs_last_seen".into(), json!(t));
    }
    if !s.tags.is_empty() {
        o.insert("tags".into(), Value::Object(s.tags.clone()));
    }
    if let Some(sysid) = &s.sysid
        && !sysid.is_empty()
    {
        o.insert("database_system_identifier".into(), json!(sysid));
    }
    o.insert(
        "patroni".into(),
        json!({"version": shared::PATRONI_COMPAT_VERSION, "scope": s.scope, "name": s.name}),
    );
    if s.failsafe_active {
        o.insert("failsafe_mode_is_active".into(), json!(true));
    }
    if s.watchdog_failed {
        o.insert("watchdog_failed".into(), json!(true));
    }
    // pgpilot's own additions; Patroni clients ignore unknown keys.
    let mut own = serde_json::Map::new();
    if !s.decision.is_empty() {
        own.insert("decision".into(), json!(s.decision));
    }
    if s.dcs_ok {
        own.insert(
            "failover_possible".into(),
            json!(s.failover_blocked.is_none()),
        );
    }
    if let Some(why) = &s.failover_blocked {
        own.insert("failover_blocked".into(), json!(why));
    }
    if let Some(h) = &s.handover {
        own.insert("switchover".into(), h.to_json());
    }
    own.insert("fencing".into(), json!(s.fencing.as_str()));
    if s.standing_down_until
        .is_some_and(|t| t > tokio::time::Instant::now())
    {
        // read by pgpilot peers before a race: they do not wait for this member
        own.insert("standing_down".into(), json!(true));
    }
    if let Some(m) = &s.replica_method {
        own.insert("replica_method".into(), json!(m));
    }
    if let Some(v) = s.binaries_version {
        // what bin_dir holds: the version the server runs after its next start
        own.insert(
            "bin_version".into(),
            json!(crate::postgres::version_text(v)),
        );
        if !running {
            o.insert("server_version".into(), json!(v));
        }
    }
    // the ttl in force (a refused config key leaves the last good one)
    own.insert("ttl".into(), json!(s.ttl));
    own.insert(
        "watchdog".into(),
        json!(if s.watchdog_armed { "armed" } else { "off" }),
    );
    if let Some(r) = &s.raft {
        own.insert("raft".into(), json!(r));
    }
    o.insert("pgpilot".into(), Value::Object(own));
    Value::Object(o)
}

/// Patroni's version as the zero-padded number the metric uses (`4.1.4` → 40104).
fn version_number(v: &str) -> u64 {
    v.split('.')
        .take(3)
        .map(|p| p.parse::<u64>().unwrap_or(0))
        .fold(0, |acc, p| acc * 100 + p)
}

/// The `/metrics` body, with Patroni's metric names.
pub fn metrics(s: &Snapshot) -> String {
    let labels = format!("{{scope=\"{}\",name=\"{}\"}}", s.scope, s.name);
    let mut out = String::with_capacity(4096);
    let mut metric = |name: &str, kind: &str, help: &str, value: String| {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{labels} {value}\n"
        ));
    };
    let srv = s.server.as_ref();
    let running = s.state == PgState::Running && srv.is_some();
    let b = |x: bool| if x { "1".to_string() } else { "0".to_string() };
    let is_primary = running && s.role == Role::Primary;
    let is_replica = running && s.role == Role::Replica;
    let (sync, quorum) = is_sync(s).unwrap_or((false, false));
    metric(
        "patroni_version",
        "gauge",
        "Patroni semver without periods (pgpilot reports the compatible version).",
        format!("{:06}", version_number(shared::PATRONI_COMPAT_VERSION)),
    );
    metric(
        "pgpilot_failover_possible",
        "gauge",
        "Value is 1 if some member could take over from the leader now, 0 if failover is blocked.",
        b(s.dcs_ok && s.failover_blocked.is_none()),
    );
    if let Some(r) = &s.raft {
        metric(
            "pgpilot_raft_member_running",
            "gauge",
            "Value is 1 if the etcd member this agent runs (raft:) is running, 0 otherwise.",
            b(r.running),
        );
        metric(
            "pgpilot_raft_members_reachable",
            "gauge",
            "How many members of the raft group answer over their peer port.",
            r.reachable.to_string(),
        );
        metric(
            "pgpilot_raft_has_leader",
            "gauge",
            "Value is 1 if the raft group has a leader (a quorum), 0 otherwise.",
            b(r.leader.is_some()),
        );
    }
    metric(
        "patroni_postgres_running",
        "gauge",
        "Value is 1 if Postgres is running, 0 otherwise.",
        b(running),
    );
    let start = srv
        .and_then(|x| {
            chrono::DateTime::parse_from_str(&x.postmaster_start_time, "%Y-%m-%d %H:%M:%S%.f%:z")
                .ok()
        })
        .map(|t| t.timestamp_micros() as f64 / 1e6)
        .unwrap_or(0.0);
    metric(
        "patroni_postmaster_start_time",
        "gauge",
        "Epoch seconds since Postgres started.",
        format!("{start}"),
    );
    metric(
        "patroni_primary",
        "gauge",
        "Value is 1 if this node is the leader, 0 otherwise.",
        b(is_primary),
    );
    metric(
        "patroni_xlog_location",
        "counter",
        "Current location of the Postgres transaction log, 0 if this node is not the leader.",
        srv.filter(|_| is_primary)
            .and_then(|x| x.write_lsn)
            .unwrap_or(0)
            .to_string(),
    );
    metric(
        "patroni_standby_leader",
        "gauge",
        "Value is 1 if this node is the standby_leader, 0 otherwise.",
        b(running && s.role == Role::StandbyLeader),
    );
    metric(
        "patroni_replica",
        "gauge",
        "Value is 1 if this node is a replica, 0 otherwise.",
        b(is_replica),
    );
    metric(
        "patroni_sync_standby",
        "gauge",
        "Value is 1 if this node is a sync standby, 0 otherwise.",
        b(sync),
    );
    metric(
        "patroni_quorum_standby",
        "gauge",
        "Value is 1 if this node is a quorum standby, 0 otherwise.",
        b(quorum),
    );
    let rec = |f: fn(&crate::postgres::ServerStatus) -> Option<u64>| {
        srv.filter(|x| x.in_recovery)
            .and_then(f)
            .unwrap_or(0)
            .to_string()
    };
    metric(
        "patroni_xlog_received_location",
        "counter",
        "Current location of the received Postgres transaction log, 0 if this node is not a replica.",
        rec(|x| x.receive_lsn),
    );
    metric(
        "patroni_xlog_replayed_location",
        "counter",
        "Current location of the replayed Postgres transaction log, 0 if this node is not a replica.",
        rec(|x| x.replay_lsn),
    );
    let replayed_ts = srv
        .and_then(|x| x.replayed_timestamp.as_deref())
        .and_then(|t| chrono::DateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f%:z").ok())
        .map(|t| t.timestamp_micros() as f64 / 1e6)
        .unwrap_or(0.0);
    metric(
        "patroni_xlog_replayed_timestamp",
        "gauge",
        "Current timestamp of the replayed Postgres transaction log, 0 if null.",
        format!("{replayed_ts}"),
    );
    metric(
        "patroni_xlog_paused",
        "gauge",
        "Value is 1 if the Postgres xlog is paused, 0 otherwise.",
        b(srv.is_some_and(|x| x.replay_paused)),
    );
    let rs = srv.and_then(|x| x.replication_state.as_deref());
    metric(
        "patroni_postgres_streaming",
        "gauge",
        "Value is 1 if Postgres is streaming, 0 otherwise.",
        b(rs == Some("streaming")),
    );
    metric(
        "patroni_postgres_in_archive_recovery",
        "gauge",
        "Value is 1 if Postgres is replicating from archive, 0 otherwise.",
        b(rs == Some("in archive recovery")),
    );
    metric(
        "patroni_postgres_server_version",
        "gauge",
        "Version of Postgres (if running), 0 otherwise.",
        srv.map(|x| x.server_version).unwrap_or(0).to_string(),
    );
    let unlocked = s.dcs_ok && s.cluster.as_ref().is_some_and(|c| c.leader.is_none());
    metric(
        "patroni_cluster_unlocked",
        "gauge",
        "Value is 1 if the cluster is unlocked, 0 if locked.",
        b(unlocked),
    );
    metric(
        "patroni_failsafe_mode_is_active",
        "gauge",
        "Value is 1 if failsafe mode is active, 0 if inactive.",
        b(s.failsafe_active),
    );
    metric(
        "patroni_postgres_timeline",
        "counter",
        "Postgres timeline of this node (if running), 0 otherwise.",
        srv.and_then(|x| x.timeline).unwrap_or(0).to_string(),
    );
    metric(
        "patroni_dcs_last_seen",
        "gauge",
        "Epoch timestamp when DCS was last contacted successfully by Patroni.",
        s.dcs_last_seen.unwrap_or(0).to_string(),
    );
    metric(
        "patroni_pending_restart",
        "gauge",
        "Value is 1 if the node needs a restart, 0 otherwise.",
        b(srv.is_some_and(|x| x.pending_restart.is_some())),
    );
    metric(
        "patroni_is_paused",
        "gauge",
        "Value is 1 if auto failover is disabled, 0 otherwise.",
        b(s.paused),
    );
    metric(
        "patroni_postgres_state",
        "gauge",
        "Numeric representation of Postgres state.",
        s.state.metric_index().to_string(),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::ServerStatus;
    use shared::dcs::{Cluster, Status};

    fn snap(role: Role, lock: bool) -> Snapshot {
        let cfg =
            shared::config::Config::from_yaml(crate::tests_support::MIN_YAML, "test").unwrap();
        let mut s = Snapshot::initial(&cfg);
        s.state = PgState::Running;
        s.role = role;
        s.ttl = 30;
        s.dcs_ok = true;
        s.lock_until = lock.then(|| Instant::now() + Duration::from_secs(30));
        s.cluster = Some(Arc::new(Cluster {
            status: Status {
                optime: Some(1000),
                ..Default::default()
            },
            ..Default::default()
        }));
        s.server = Some(ServerStatus {
            in_recovery: role == Role::Replica,
            write_lsn: Some(1000),
            receive_lsn: Some(900),
            replay_lsn: Some(900),
            replication_state: (role == Role::Replica).then(|| "streaming".into()),
            server_version: 150010,
            timeline: Some(1),
            ..Default::default()
        });
        s
    }

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn primary_endpoints() {
        let now = Instant::now();
        let p = snap(Role::Primary, true);
        for path in [
            "",
            "primary",
            "master",
            "read-write",
            "leader",
            "read-only",
            "health",
            "liveness",
            "readiness",
        ] {
            assert_eq!(health_code(path, &[], &p, now), 200, "{path}");
        }
        for path in ["replica", "standby-leader", "async", "sync", "nonsense"] {
            assert_eq!(health_code(path, &[], &p, now), 503, "{path}");
        }
        // a primary whose lock expired is not a primary for load balancers
        let mut expired = p.clone();
        expired.lock_until = Some(now - Duration::from_secs(1));
        assert_eq!(health_code("primary", &[], &expired, now), 503);
    }

    #[test]
    fn replica_endpoints_and_filters() {
        let now = Instant::now();
        let r = snap(Role::Replica, false);
        for path in [
            "replica",
            "read-only",
            "health",
            "async",
            "liveness",
            "readiness",
        ] {
            assert_eq!(health_code(path, &[], &r, now), 200, "{path}");
        }
        for path in ["", "primary", "leader", "sync"] {
            assert_eq!(health_code(path, &[], &r, now), 503, "{path}");
        }
        // lag: optime 1000, replayed 900
        assert_eq!(health_code("replica", &q(&[("lag", "50")]), &r, now), 503);
        assert_eq!(health_code("replica", &q(&[("lag", "1kB")]), &r, now), 200);
        assert_eq!(
            health_code("replica", &q(&[("lag", "bogus")]), &r, now),
            503
        );
        // tags
        let mut tagged = r.clone();
        tagged.tags.insert("dc".into(), json!("east"));
        assert_eq!(
            health_code("replica", &q(&[("tag_dc", "east")]), &tagged, now),
            200
        );
        assert_eq!(
            health_code("replica", &q(&[("tag_dc", "west")]), &tagged, now),
            503
        );
        assert_eq!(
            health_code("replica", &q(&[("tag_rack", "1")]), &tagged, now),
            503
        );
        tagged.tags.insert("noloadbalance".into(), json!(true));
        assert_eq!(health_code("replica", &[], &tagged, now), 503);
        // stopped replica
        let mut stopped = r.clone();
        stopped.state = PgState::Stopped;
        stopped.server = None;
        assert_eq!(health_code("health", &[], &stopped, now), 503);
        assert_eq!(health_code("replica", &[], &stopped, now), 503);
        assert_eq!(health_code("readiness", &[], &stopped, now), 503);
        // liveness goes away when the loop stalls
        let mut stale = r.clone();
        stale.last_cycle = now - Duration::from_secs(61);
        assert_eq!(health_code("liveness", &[], &stale, now), 503);
        stale.paused = true;
        assert_eq!(health_code("liveness", &[], &stale, now), 200);
    }

    #[test]
    fn status_json_shapes() {
        let p = status_json(&snap(Role::Primary, true));
        assert_eq!(p["role"], "primary");
        assert_eq!(p["xlog"]["location"], 1000);
        assert_eq!(p["patroni"]["version"], "4.1.4");
        let r = status_json(&snap(Role::Replica, false));
        assert_eq!(r["xlog"]["received_location"], 900);
        assert_eq!(r["replication_state"], "streaming");
        let mut down = snap(Role::Replica, false);
        down.state = PgState::Stopped;
        down.server = None;
        let d = status_json(&down);
        assert!(
            d.get("xlog").is_none(),
            "a stopped node must not advertise a WAL position"
        );
        assert_eq!(d["state"], "stopped");
    }

    #[test]
    fn metrics_have_patroni_names() {
        let m = metrics(&snap(Role::Primary, true));
        assert!(
            m.contains("patroni_version{scope=\"demo\",name=\"n1\"} 040104"),
            "{m}"
        );
        assert!(m.contains("patroni_primary{scope=\"demo\",name=\"n1\"} 1"));
        assert!(m.contains("patroni_postgres_state{scope=\"demo\",name=\"n1\"} 5"));
    }

    #[test]
    fn query_decoding() {
        assert_eq!(
            parse_query(Some("lag=16MB&tag_dc=e%61st")),
            q(&[("lag", "16MB"), ("tag_dc", "east")])
        );
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }

    /// Drives the real router (no socket) and returns status and body.
    async fn call(method: &str, uri: &str, body: &str) -> (u16, String) {
        call_on(
            snap(Role::Primary, true),
            Default::default(),
            method,
            uri,
            body,
        )
        .await
    }

    /// The real router over an in-memory store.
    fn app_with(
        snapshot: Snapshot,
        heard: crate::runtime::FailsafeHeard,
        access: crate::rest_access::Access,
    ) -> Router {
        let store = shared::dcs::mem::MemStore::new();
        let dcs = Arc::new(Dcs::new(store.client(), "/service", "demo", "n1", 30));
        // the snapshot stays as given (a receiver keeps the last value)
        let (_, rx) = watch::channel(Arc::new(snapshot));
        let (commands, _rx) = tokio::sync::mpsc::channel(1);
        router(Arc::new(Api {
            snapshot: rx,
            dcs,
            access: Arc::new(std::sync::RwLock::new(Arc::new(access))),
            client: shared::api::MemberClient::new(Duration::from_millis(200)),
            commands,
            wake: Arc::new(tokio::sync::Notify::new()),
            failsafe_heard: heard,
            journal: Default::default(),
        }))
    }

    #[tokio::test]
    async fn extra_headers_go_on_every_answer() {
        use tower::ServiceExt;
        let mut rest = shared::config::RestApiConfig {
            listen: "127.0.0.1:8008".into(),
            connect_address: "127.0.0.1:8008".into(),
            authentication: None,
            certfile: None,
            keyfile: None,
            allowlist: Vec::new(),
            allowlist_include_members: false,
            verify_client: Default::default(),
            cafile: None,
            keyfile_password: None,
            http_extra_headers: vec![("X-Frame-Options".into(), "DENY".into())],
            https_extra_headers: vec![("Strict-Transport-Security".into(), "max-age=60".into())],
        };
        let access = crate::rest_access::Access::from_config(&rest).await;
        let app = app_with(snap(Role::Primary, true), Default::default(), access);
        for (method, uri) in [
            ("GET", "/primary"),
            ("OPTIONS", "/replica"),
            ("POST", "/nothing"),
        ] {
            let req = axum::http::Request::builder()
                .method(method)
                .uri(uri)
                .body(Body::empty())
                .unwrap();
            let resp = app.clone().oneshot(req).await.unwrap();
            assert_eq!(resp.headers()["x-frame-options"], "DENY", "{method} {uri}");
            // the https ones only with TLS
            assert!(!resp.headers().contains_key("strict-transport-security"));
        }
        rest.http_extra_headers.clear();
        assert!(
            crate::rest_access::Access::from_config(&rest)
                .await
                .extra_headers
                .is_empty()
        );
    }

    /// The same, with the snapshot given and `POST /failsafe` recorded in `heard`.
    async fn call_on(
        snapshot: Snapshot,
        heard: crate::runtime::FailsafeHeard,
        method: &str,
        uri: &str,
        body: &str,
    ) -> (u16, String) {
        use http_body_util::BodyExt;
        use tower::ServiceExt;
        let app = app_with(snapshot, heard, Default::default());
        // as an HTTP client sends it: with its length
        let req = axum::http::Request::builder()
            .method(method)
            .uri(uri)
            .header(header::CONTENT_LENGTH, body.len())
            .body(Body::from(body.to_string()))
            .unwrap();
        let resp = app.oneshot(req).await.unwrap();
        let code = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (code, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn router_methods_and_bodies() {
        let (code, body) = call("GET", "/primary", "").await;
        assert_eq!(code, 200);
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap()["role"],
            "primary"
        );
        for m in ["HEAD", "OPTIONS"] {
            let (code, body) = call(m, "/primary", "").await;
            assert_eq!((code, body.as_str()), (200, ""));
            let (code, _) = call(m, "/replica", "").await;
            assert_eq!(code, 503);
        }
        // liveness/readiness answer with the status line only
        assert_eq!(call("GET", "/liveness", "").await, (200, String::new()));
        // an empty cluster in etcd: /cluster answers with no members, /config 502 with a reason
        let (code, body) = call("GET", "/cluster", "").await;
        assert_eq!(code, 200, "{body}");
        let (code, _) = call("GET", "/config", "").await;
        assert_eq!(code, 502);
        // Patroni's write endpoints answer a body that is no JSON as Patroni's HTTP server
        // does (its 400 page); unknown endpoints get a JSON reason; never an empty 500
        for (m, path) in [
            ("POST", "/switchover"),
            ("PATCH", "/config"),
            ("PUT", "/config"),
            ("POST", "/restart"),
        ] {
            let (code, body) = call(m, path, "{not json").await;
            assert_eq!(code, 400, "{m} {path}");
            assert!(
                body.contains("<p>Error code: 400</p>")
                    && body.contains("Bad request syntax or unsupported method"),
                "{body}"
            );
        }
        // an optional body must still be an object: a stray `[]` never starts a reinitialize
        for (m, path, body) in [
            ("POST", "/reinitialize", "[]"),
            ("POST", "/restart", "true"),
            ("POST", "/switchover", "{}"),
        ] {
            let (code, page) = call(m, path, body).await;
            assert_eq!(code, 400, "{m} {path} {body}");
            assert!(page.contains("<p>Error code: 400</p>"), "{page}");
        }
        for (m, path) in [("DELETE", "/nothing"), ("PUT", "/switchover")] {
            let (code, body) = call(m, path, "{}").await;
            assert_eq!(code, 404, "{m} {path}");
            assert!(serde_json::from_str::<Value>(&body).unwrap()["error"].is_string());
        }
        // checked requests change nothing: a switchover without a leader, a bad restart filter
        let (code, body) = call("POST", "/switchover", r#"{"candidate": "n2"}"#).await;
        assert_eq!(code, 400, "{body}");
        assert_eq!(
            body,
            "Switchover could be performed only from a specific leader"
        );
        let (code, body) = call("POST", "/restart", r#"{"role": "boss"}"#).await;
        assert_eq!(code, 400, "{body}");
        let (code, body) = call("PATCH", "/config", r#"{"ttl": "soon"}"#).await;
        assert_eq!(code, 503, "no config to patch yet: {body}");
        let (code, body) = call("TRACE", "/", "").await;
        assert_eq!(code, 405);
        assert!(body.contains("error"));
        // without failsafe_mode, POST /failsafe is refused as Patroni refuses it
        let (code, body) = call("POST", "/failsafe", r#"{"name": "n2"}"#).await;
        assert_eq!(code, 502, "{body}");
        assert!(body.contains("Error code: 502"), "{body}");
    }

    /// A member's REST API that answers every request with `body`; its `/patroni` URL.
    async fn fake_member(body: &'static str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(answer.as_bytes()).await;
            }
        });
        format!("http://127.0.0.1:{port}/patroni")
    }

    #[tokio::test]
    async fn failsafe_confirmations_only_for_the_last_leader_listed_in_the_key() {
        let primary = fake_member(r#"{"role":"primary","xlog":{"location":100}}"#).await;
        let replica = fake_member(r#"{"role":"replica","xlog":{"received_location":90}}"#).await;
        let with_failsafe = |role: Role, leader_url: &str| {
            let mut s = snap(role, false);
            s.failsafe_mode = true;
            s.last_leader = Some("n2".into());
            let mut c = (**s.cluster.as_ref().unwrap()).clone();
            c.failsafe = Some(
                serde_json::from_str(&format!(
                    r#"{{"n1":"http://127.0.0.1:1/patroni","n2":"{leader_url}"}}"#
                ))
                .unwrap(),
            );
            s.cluster = Some(Arc::new(c));
            s
        };
        let heard: crate::runtime::FailsafeHeard = Default::default();
        let post = |s: Snapshot, body: &'static str| {
            let heard = heard.clone();
            async move { call_on(s, heard, "POST", "/failsafe", body).await }
        };
        let alive = || with_failsafe(Role::Replica, &primary);
        // a primary never confirms another primary; a nameless ask is refused
        let (code, body) = post(with_failsafe(Role::Primary, &primary), r#"{"name": "n2"}"#).await;
        assert_eq!((code, body.as_str()), (500, "Running as a leader"));
        let (code, _) = post(alive(), "{}").await;
        assert_eq!(code, 400);
        // a name the failsafe key does not list, or that is not the last leader: refused,
        // and nothing is recorded
        let (code, body) = post(alive(), r#"{"name": "n9"}"#).await;
        assert_eq!(code, 500, "{body}");
        assert!(body.contains("not listed"), "{body}");
        let (code, body) = post(alive(), r#"{"name": "n1"}"#).await;
        assert_eq!(code, 500, "{body}");
        assert!(
            body.contains("not the leader this member last saw (n2)"),
            "{body}"
        );
        // the last leader, but its REST API is gone or it runs as a replica: refused
        let gone = with_failsafe(Role::Replica, "http://127.0.0.1:1/patroni");
        let (code, body) = post(gone, r#"{"name": "n2"}"#).await;
        assert_eq!(code, 500, "{body}");
        assert!(body.contains("did not answer"), "{body}");
        let (code, body) = post(with_failsafe(Role::Replica, &replica), r#"{"name": "n2"}"#).await;
        assert_eq!(code, 500, "{body}");
        assert!(body.contains("running primary"), "{body}");
        // this member holding the lock itself (promoting) never confirms another
        let mut holder = alive();
        holder.lock_until = Some(Instant::now() + Duration::from_secs(10));
        let (code, _) = post(holder, r#"{"name": "n2"}"#).await;
        assert_eq!(code, 500);
        assert!(heard.lock().unwrap().is_none());
        // the last leader, listed, answering as a running primary: accepted and recorded
        let (code, body) = post(alive(), r#"{"name": "n2"}"#).await;
        assert_eq!((code, body.as_str()), (200, "Accepted"));
        assert_eq!(heard.lock().unwrap().as_ref().unwrap().0, "n2");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        #[test]
        fn any_request_gets_a_status_not_a_panic(
            path in "/[a-zA-Z0-9_?&=./-]{0,40}",
            method in "(GET|HEAD|OPTIONS|POST|PUT|PATCH|DELETE)",
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let (code, _) = rt.block_on(call(&method, &path, "x"));
            proptest::prop_assert!((200..600).contains(&code));
        }
    }
}
