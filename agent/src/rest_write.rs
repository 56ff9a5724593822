//! The REST API's write endpoints, Patroni-compatible: `POST /switchover`, `/failover`,
//! `DELETE /switchover`, `PATCH`/`PUT /config`, `POST`/`DELETE /restart`, `POST /reinitialize`,
//! `POST /reload`, `POST /failsafe` (a primary that lost etcd asking to be confirmed), with
//! `restapi.authentication` (HTTP Basic) on every one of them. Cluster-wide
//! operations go through [`shared::ops`]; local ones are [`Command`]s for the agent's loop, which
//! answers each with a definite outcome.

use crate::rest::{Api, text_response};
use axum::body::Body;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::Response;
use serde_json::{Map, Value};
use shared::dcs::{DynamicConfig, Kv};
use shared::ops::{self, OpsError, RestartRequest, switchover};
use std::time::Duration;
use tokio::sync::oneshot;
use tracing::{info, warn};

/// A local operation for the agent's loop, answered on `reply` with an HTTP status and message.
#[derive(Debug)]
pub enum Command {
    Restart(RestartRequest),
    CancelRestart,
    /// `from_leader`: clone from the leader with pg_basebackup (not a `clonefrom` member, not
    /// another replica method).
    Reinitialize {
        force: bool,
        from_leader: bool,
    },
    Reload,
}

/// What the loop answers a [`Command`] with.
pub type Reply = (u16, String);

/// A command and the channel its answer goes back on.
pub struct Envelope {
    pub command: Command,
    pub reply: oneshot::Sender<Reply>,
}

/// Who is calling: the peer's address and whether its connection presented a verified client
/// certificate.
#[derive(Debug, Clone, Copy, Default)]
pub struct Caller {
    pub peer: Option<std::net::IpAddr>,
    pub client_cert: bool,
}

/// The largest request body accepted.
const MAX_BODY: usize = 64 * 1024;

/// Checks `restapi.allowlist` (403) and `restapi.authentication` (401) for an unsafe method:
/// `None` when the request may go on, else the answer. The log lines name the address and the
/// user, never the password.
async fn denied<K: Kv>(
    api: &Api<K>,
    headers: &HeaderMap,
    what: &str,
    caller: Caller,
) -> Option<Response> {
    let peer = caller.peer;
    let access = api.access.read().unwrap_or_else(|p| p.into_inner()).clone();
    if access.allowlist.restricts() {
        let members: Vec<String> = api
            .snapshot
            .borrow()
            .cluster
            .as_ref()
            .map(|c| c.members.iter().map(|m| m.data.api_url.clone()).collect())
            .unwrap_or_default();
        let allowed = match peer {
            Some(ip) => access.allowlist.allows(ip, &members).await,
            None => false,
        };
        if !allowed {
            let from = peer.map_or_else(|| "an unknown address".to_string(), |ip| ip.to_string());
            warn!("REST {what}: refused, {from} is not in restapi.allowlist");
            return Some(refusal(StatusCode::FORBIDDEN, "Access is denied"));
        }
    }
    if access.client_cert_for_writes && !caller.client_cert {
        warn!("REST {what}: refused, no client certificate (restapi.verify_client)");
        return Some(refusal(
            StatusCode::FORBIDDEN,
            "client certificate required",
        ));
    }
    let credentials = access.credentials.as_ref()?;
    let deny = |text: &str| {
        let mut r = refusal(StatusCode::UNAUTHORIZED, text);
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Basic realm=\"Patroni\""),
        );
        r
    };
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        warn!("REST {what}: refused, no credentials sent (restapi.authentication is set)");
        return Some(deny("no auth header received"));
    };
    if credentials.accept(value.as_bytes()) {
        None
    } else {
        let user = crate::rest_access::user_of(value.as_bytes());
        warn!(user = ?user, "REST {what}: refused, wrong credentials");
        Some(deny("not authenticated"))
    }
}

/// An [`OpsError`] as Patroni's status codes: 400 bad request, 422 bad time, 412 refused by the
/// cluster's state, 409 lost compare-and-swap, 503 failed or etcd unreachable.
fn ops_error(e: &OpsError) -> Response {
    let code = match e {
        OpsError::Invalid(_) => StatusCode::BAD_REQUEST,
        OpsError::BadTime(_) => StatusCode::UNPROCESSABLE_ENTITY,
        OpsError::Refused(_) => StatusCode::PRECONDITION_FAILED,
        OpsError::Conflict(_) => StatusCode::CONFLICT,
        OpsError::Failed(_) | OpsError::Dcs(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    match e {
        // Patroni answers a lost compare-and-swap with its HTTP server's error page
        OpsError::Conflict(_) => python_error(code),
        _ => refusal(code, &e.to_string()),
    }
}

/// Reads a JSON body; an empty body is `{}`. The error is the answer's status and reason: 413
/// for a body over [`MAX_BODY`], 408 for one not sent within the body timeout, 400 otherwise.
async fn json_body(body: Body) -> Result<Value, (StatusCode, String)> {
    let read = tokio::time::timeout(
        crate::rest_access::BODY_READ_TIMEOUT,
        axum::body::to_bytes(body, MAX_BODY),
    )
    .await
    .map_err(|_| {
        (
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the body did not arrive within {} s",
                crate::rest_access::BODY_READ_TIMEOUT.as_secs()
            ),
        )
    })?;
    let bytes = read.map_err(|e| {
        let mut source: Option<&dyn std::error::Error> = Some(&e);
        while let Some(err) = source {
            if err.is::<http_body_util::LengthLimitError>() {
                return (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the body is larger than {} bytes", MAX_BODY),
                );
            }
            source = err.source();
        }
        (
            StatusCode::BAD_REQUEST,
            format!("cannot read the body: {e}"),
        )
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Map::new()));
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        (
            StatusCode::BAD_REQUEST,
            format!("the body is not valid JSON: {e}"),
        )
    })
}

/// A plain answer as Patroni writes one (`write_response`): the text as the body,
/// `Content-Type: text/html` — patronictl prints it and operators' scripts match it.
fn text(code: u16, body: String) -> Response {
    text_response(
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        "text/html",
        body,
    )
}

/// A refusal on one of Patroni's endpoints: its status and the reason as plain text.
fn refusal(code: StatusCode, reason: &str) -> Response {
    text(code.as_u16(), reason.to_string())
}

/// Dispatches an unsafe method; `None` when no write endpoint matches.
pub async fn handle<K: Kv>(
    api: &Api<K>,
    method: &Method,
    first: &str,
    headers: &HeaderMap,
    body: Body,
    caller: Caller,
) -> Option<Response> {
    let what = format!("{method} /{first}");
    let known = matches!(
        (method.as_str(), first),
        (
            "POST",
            "switchover" | "failover" | "restart" | "reinitialize" | "reload" | "failsafe"
        ) | ("DELETE", "switchover" | "restart")
            | ("PATCH" | "PUT", "config")
    );
    if !known {
        return None;
    }
    if let Some(answer) = denied(api, headers, &what, caller).await {
        return Some(answer);
    }
    // Patroni checks failsafe_mode before it reads anything
    if first == "failsafe" && !api.snapshot.borrow().failsafe_mode {
        return Some(python_error(StatusCode::BAD_GATEWAY));
    }
    // as Patroni's HTTP server: these need a JSON object with something in it (no length at
    // all is 411, anything else 400, on its own error page); restart and reinitialize may
    // have none, but what they have must be a JSON object
    let body_required =
        !matches!(first, "restart" | "reinitialize" | "reload") && method.as_str() != "DELETE";
    if body_required && !headers.contains_key(header::CONTENT_LENGTH) {
        warn!("REST {what}: refused, no Content-Length (a body is required)");
        return Some(python_error(StatusCode::LENGTH_REQUIRED));
    }
    let body = match json_body(body).await {
        Ok(b) => b,
        Err((code, why)) => {
            warn!("REST {what}: refused, {why}");
            // a body that is no JSON object: Patroni's HTTP server's 400 page
            return Some(if code == StatusCode::BAD_REQUEST {
                python_error(code)
            } else {
                refusal(code, &why)
            });
        }
    };
    if body_required && body.as_object().is_none_or(|o| o.is_empty()) {
        warn!("REST {what}: refused, the body must be a non-empty JSON object");
        return Some(python_error(StatusCode::BAD_REQUEST));
    }
    if matches!(first, "restart" | "reinitialize") && !body.is_object() {
        warn!("REST {what}: refused, the body is not a JSON object");
        return Some(python_error(StatusCode::BAD_REQUEST));
    }
    Some(match (method.as_str(), first) {
        ("POST", "switchover") => switch(api, switchover::Kind::Switchover, &body).await,
        ("POST", "failover") => switch(api, switchover::Kind::Failover, &body).await,
        ("DELETE", "switchover") => cancel_switchover(api).await,
        ("PATCH", "config") => patch_config(api, &body).await,
        ("PUT", "config") => put_config(api, &body).await,
        ("POST", "restart") => match RestartRequest::from_json(&body) {
            Ok(r) => command(api, Command::Restart(r)).await,
            Err(e) => ops_error(&e),
        },
        ("DELETE", "restart") => command(api, Command::CancelRestart).await,
        ("POST", "reinitialize") => {
            let force = request_flag(&body, "force");
            let from_leader = request_flag(&body, "from_leader");
            command(api, Command::Reinitialize { force, from_leader }).await
        }
        ("POST", "reload") => command(api, Command::Reload).await,
        ("POST", "failsafe") => confirm_failsafe(api, &body).await,
        _ => return None,
    })
}

/// `POST /failsafe` from a primary that lost etcd: a replica promises not to race for the lock
/// for ttl seconds and answers `Accepted`, with its WAL position in the `lsn` header; a primary
/// refuses. Only with `failsafe_mode` on (Patroni answers 502 otherwise), only for the member
/// this node last saw holding the leader key, never while this node holds the lock itself, and
/// only once that member's own REST API (at the address in the `failsafe` key, else in its
/// member key) answers as a running primary: a forged request, or one naming a leader whose
/// machine is gone, gets a 500 with the reason and no promise. A promise given is kept for the
/// whole ttl, since the primary stays writable on its strength.
async fn confirm_failsafe<K: Kv>(api: &Api<K>, body: &Value) -> Response {
    let snap = api.snapshot.borrow().clone();
    if !snap.failsafe_mode {
        return python_error(StatusCode::BAD_GATEWAY);
    }
    let Some(name) = body
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
    else {
        return refusal(
            StatusCode::BAD_REQUEST,
            "the body must name the primary asking (\"name\")",
        );
    };
    if snap.server.as_ref().is_some_and(|s| !s.in_recovery) {
        return text(500, "Running as a leader".into());
    }
    if snap.lock_until.is_some() {
        return text(500, "this member holds the leader lock".into());
    }
    // where to ask it: the failsafe key, else its member key (this member may have lost etcd
    // before it read a failsafe key written just before); never the address in the body
    let url = snap.cluster.as_ref().and_then(|c| {
        c.failsafe
            .as_ref()
            .and_then(|f| f.get(name))
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| {
                c.member(name)
                    .map(|m| m.data.api_url.clone())
                    .filter(|u| !u.is_empty())
            })
    });
    let Some(url) = url else {
        warn!(
            primary = ?name,
            "failsafe: refused a confirmation: neither the failsafe key nor a member key gives the REST API of {name:?}"
        );
        return text(500, format!("{name:?} is not listed in the failsafe key"));
    };
    if snap.last_leader.as_deref() != Some(name) {
        warn!(
            primary = ?name,
            last_leader = snap.last_leader.as_deref().unwrap_or(""),
            "failsafe: refused a confirmation for {name:?}: it is not the leader this member last saw"
        );
        return text(
            500,
            format!(
                "{name:?} is not the leader this member last saw ({})",
                snap.last_leader.as_deref().unwrap_or("none")
            ),
        );
    }
    // checked on every request: a forged one after a genuine one must not extend the promise
    // past the primary's life
    if let Err(why) = leader_answers_as_primary(&api.client, &url).await {
        warn!(
            primary = ?name,
            "failsafe: refused a confirmation for {name:?}: {why}"
        );
        return text(500, format!("cannot confirm {name:?}: {why}"));
    }
    {
        let mut heard = api.failsafe_heard.lock().unwrap_or_else(|p| p.into_inner());
        let heard_recently = heard
            .as_ref()
            .is_some_and(|(n, at)| n == name && at.elapsed() < Duration::from_secs(snap.ttl));
        if !heard_recently {
            info!(
                primary = ?name,
                "failsafe: {name:?} lost etcd and asked to stay primary; not racing for the lock while it keeps asking"
            );
        }
        *heard = Some((name.to_string(), tokio::time::Instant::now()));
    }
    let mut r = text(200, "Accepted".into());
    if let Some(lsn) = snap.server.as_ref().and_then(|s| s.wal_position())
        && let Ok(v) = header::HeaderValue::from_str(&lsn.to_string())
    {
        r.headers_mut().insert("lsn", v);
    }
    r
}

/// How long a member waits for the primary asking over `POST /failsafe` to answer its own
/// `GET /patroni`: short, since the primary's confirmation call is waiting meanwhile.
const FAILSAFE_CHECK: Duration = Duration::from_secs(1);

/// Whether the member at `url` answers on its REST API as a running primary.
async fn leader_answers_as_primary(
    client: &shared::api::MemberClient,
    url: &str,
) -> Result<(), String> {
    match tokio::time::timeout(FAILSAFE_CHECK, client.status_or_error(url)).await {
        Err(_) => Err(format!(
            "{url} did not answer within {} ms",
            FAILSAFE_CHECK.as_millis()
        )),
        Ok(Err(e)) => Err(format!("{url} did not answer: {e}")),
        Ok(Ok(body)) if shared::api::PeerStatus::from_json(&body).is_primary => Ok(()),
        Ok(Ok(_)) => Err(format!("{url} does not answer as a running primary")),
    }
}

/// The error page Python's HTTP server sends (`send_error`), which Patroni answers with on some
/// refusals; clients compare status codes, and this keeps the body the same too.
pub(crate) fn python_error(code: StatusCode) -> Response {
    let reason = code.canonical_reason().unwrap_or("Error");
    // the explanations of Python's http.server for the codes Patroni sends
    let explanation = match code {
        StatusCode::BAD_REQUEST => "Bad request syntax or unsupported method",
        StatusCode::CONFLICT => "Request conflict",
        StatusCode::LENGTH_REQUIRED => "Client must specify Content-Length",
        StatusCode::BAD_GATEWAY => "Invalid responses from another server/proxy",
        StatusCode::SERVICE_UNAVAILABLE => {
            "The server cannot process the request due to a high load"
        }
        _ => reason,
    };
    let body = format!(
        "<!DOCTYPE HTML>\n<html lang=\"en\">\n    <head>\n        <meta charset=\"utf-8\">\n        <title>Error response</title>\n    </head>\n    <body>\n        <h1>Error response</h1>\n        <p>Error code: {}</p>\n        <p>Message: {reason}.</p>\n        <p>Error code explanation: {} - {explanation}.</p>\n    </body>\n</html>\n",
        code.as_u16(),
        code.as_u16()
    );
    text_response(code, "text/html;charset=utf-8", body)
}

async fn command<K: Kv>(api: &Api<K>, command: Command) -> Response {
    let (tx, rx) = oneshot::channel();
    if api
        .commands
        .send(Envelope { command, reply: tx })
        .await
        .is_err()
    {
        return refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent is shutting down",
        );
    }
    match rx.await {
        Ok((code, msg)) => text(code, msg),
        Err(_) => refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent stopped before answering",
        ),
    }
}

async fn switch<K: Kv>(api: &Api<K>, kind: switchover::Kind, body: &Value) -> Response {
    let req = match switchover::Request::from_json(kind, body) {
        Ok(r) => r,
        Err(e) => return ops_error(&e),
    };
    let ttl = api.snapshot.borrow().ttl;
    let wait = Duration::from_secs(2 * ttl + 20);
    info!(?req, "REST: {} requested", req.kind.noun());
    match switchover::run(&api.dcs, &api.client, &req, wait).await {
        Ok(switchover::Outcome::Done { message, .. }) => text(200, message),
        Ok(switchover::Outcome::Scheduled { at }) => {
            info!(at = %at.to_rfc3339(), "REST: switchover scheduled");
            text(202, "Switchover scheduled".into())
        }
        Err(e) => {
            warn!("REST: {} refused or failed: {e}", req.kind.noun());
            ops_error(&e)
        }
    }
}

async fn cancel_switchover<K: Kv>(api: &Api<K>) -> Response {
    let cluster = match api.dcs.load().await {
        Ok(c) => c,
        Err(e) => return ops_error(&e.into()),
    };
    match ops::clear_scheduled_switchover(&api.dcs, &cluster).await {
        Ok(()) => text(200, "scheduled switchover deleted".into()),
        Err(OpsError::Refused(_)) => refusal(StatusCode::NOT_FOUND, "no switchover is scheduled"),
        Err(e) => ops_error(&e),
    }
}

async fn patch_config<K: Kv>(api: &Api<K>, body: &Value) -> Response {
    let Some(patch) = body.as_object() else {
        return python_error(StatusCode::BAD_REQUEST);
    };
    let cluster = match api.dcs.load().await {
        Ok(c) => c,
        Err(e) => return ops_error(&e.into()),
    };
    if cluster.config.is_none() {
        warn!("REST PATCH /config: refused, there is no valid configuration in etcd to patch");
        return python_error(StatusCode::SERVICE_UNAVAILABLE);
    }
    let (mut config, version) = ops::current_config(&cluster);
    ops::merge_patch(&mut config, patch);
    match ops::write_config(&api.dcs, &config, version).await {
        Ok(()) => {
            api.wake.notify_one();
            crate::rest::json_response(StatusCode::OK, &Value::Object(config))
        }
        Err(e) => ops_error(&e),
    }
}

async fn put_config<K: Kv>(api: &Api<K>, body: &Value) -> Response {
    let Some(config) = body.as_object() else {
        return python_error(StatusCode::BAD_REQUEST);
    };
    if let Err(e) = ops::check_config(config) {
        return ops_error(&e);
    }
    let cfg = DynamicConfig {
        raw: config.clone(),
    };
    match api.dcs.set_config(&cfg, None).await {
        Ok(_) => {
            api.wake.notify_one();
            crate::rest::json_response(StatusCode::OK, body)
        }
        Err(e) => {
            warn!("REST PUT /config: cannot write the config key: {e}");
            python_error(StatusCode::BAD_GATEWAY)
        }
    }
}

/// A yes/no field of a request body read as Patroni reads it: `true`, `"on"`, `"yes"`, `1` …
/// are yes; anything else, or no such field, is no.
fn request_flag(body: &Value, key: &str) -> bool {
    let text = match body.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return false,
    };
    shared::config::parse_bool(&text).unwrap_or(false)
}
