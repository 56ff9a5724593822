//! Switchover and failover: reading a request (REST body or console flags), checking it against
//! the cluster with Patroni's rules and messages, writing the `failover` key, and following the
//! cluster until the outcome is definite — the new leader, or the reason it did not happen. Used
//! by the agents' `POST /switchover` and `/failover`, the console and the tests.

use super::OpsError;
use crate::api::{MemberClient, PeerStatus};
use crate::dcs::{Cluster, Dcs, Failover, Kv, failover_readiness};
use chrono::{DateTime, FixedOffset, NaiveDateTime, Utc};
use serde_json::Value;
use std::time::{Duration, Instant};

/// A planned switchover (a leader hands over) or a failover (a named candidate takes over a
/// cluster without a healthy leader).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Switchover,
    Failover,
}

impl Kind {
    pub fn noun(self) -> &'static str {
        match self {
            Kind::Switchover => "switchover",
            Kind::Failover => "failover",
        }
    }
}

/// What an operator asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub kind: Kind,
    pub leader: Option<String>,
    pub candidate: Option<String>,
    pub scheduled_at: Option<DateTime<FixedOffset>>,
}

/// How a request ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// `new_leader` holds the lock and runs as primary.
    Done { new_leader: String, message: String },
    /// Stored in the `failover` key for the leader to carry out at that time.
    Scheduled { at: DateTime<FixedOffset> },
}

/// Parses `scheduled_at` as Patroni accepts it: ISO 8601 with a time zone. `now` (any case) or an
/// empty string mean "at once".
pub fn parse_time(text: &str) -> Result<Option<DateTime<FixedOffset>>, OpsError> {
    let t = text.trim();
    if t.is_empty() || t.eq_ignore_ascii_case("now") {
        return Ok(None);
    }
    let iso = t.replacen(' ', "T", 1);
    if let Ok(d) = DateTime::parse_from_rfc3339(&iso) {
        return Ok(Some(d));
    }
    for f in [
        "%Y-%m-%dT%H:%M%:z",
        "%Y-%m-%dT%H:%M:%S%z",
        "%Y-%m-%dT%H:%M%z",
    ] {
        if let Ok(d) = DateTime::parse_from_str(&iso, f) {
            return Ok(Some(d));
        }
    }
    for f in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M"] {
        if NaiveDateTime::parse_from_str(&iso, f).is_ok() {
            return Err(OpsError::Invalid(format!(
                "Timezone information is mandatory for the scheduled switchover: {t:?} has none (add +00:00 or Z)"
            )));
        }
    }
    Err(OpsError::BadTime(format!(
        "cannot parse the scheduled time {t:?}: expected ISO 8601 with a time zone, such as 2026-11-23T22:00:00+00:00"
    )))
}

impl Request {
    /// A switchover from `leader` to `candidate` (the healthiest replica when `None`), now or at
    /// `at` (ISO 8601 with a zone), as the console's command line and dialogs give it.
    pub fn switchover(
        leader: Option<String>,
        candidate: Option<String>,
        at: Option<&str>,
    ) -> Result<Request, OpsError> {
        Ok(Request {
            kind: Kind::Switchover,
            leader,
            candidate,
            scheduled_at: match at {
                Some(t) => parse_time(t)?,
                None => None,
            },
        })
    }

    /// A failover to `candidate`.
    pub fn failover(candidate: Option<String>) -> Request {
        Request {
            kind: Kind::Failover,
            leader: None,
            candidate,
            scheduled_at: None,
        }
    }

    /// Reads a `POST /switchover` or `/failover` body: `leader`, `candidate` (or Patroni's
    /// `member`), `scheduled_at`. A failover that names a leader is a switchover, as in Patroni.
    pub fn from_json(kind: Kind, body: &Value) -> Result<Request, OpsError> {
        let o = body.as_object().ok_or_else(|| {
            OpsError::Invalid("the request body must be a JSON object".to_string())
        })?;
        let text = |k: &str| -> Result<Option<String>, OpsError> {
            match o.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.trim().to_string())),
                Some(other) => Err(OpsError::Invalid(format!(
                    "{k} must be a string, not {other}"
                ))),
            }
        };
        let leader = text("leader")?;
        let candidate = match text("candidate")? {
            Some(c) => Some(c),
            None => text("member")?,
        };
        let scheduled_at = match text("scheduled_at")? {
            Some(t) => parse_time(&t)?,
            None => None,
        };
        let kind = if kind == Kind::Failover && leader.is_some() {
            Kind::Switchover
        } else {
            kind
        };
        Ok(Request {
            kind,
            leader,
            candidate,
            scheduled_at,
        })
    }
}

/// Why `candidate` cannot take over now, from a cluster view (member keys, or live answers laid
/// over them by [`live_view`]). The lag is only checked for a switchover: a failover to a named
/// candidate is the operator's explicit choice.
fn candidate_refusal(cluster: &Cluster, kind: Kind, candidate: &str) -> Option<String> {
    let m = cluster.member(candidate)?;
    if m.data.no_failover() {
        return Some(format!("candidate {candidate} is tagged nofailover"));
    }
    if m.data.state != "running" {
        return Some(format!(
            "candidate {candidate} is not healthy: PostgreSQL is {}",
            m.data.state
        ));
    }
    if kind == Kind::Failover {
        // the operator's explicit choice, except where strict mode promises no lost commit
        let cfg = cluster.dynamic_config();
        if cfg.synchronous_mode_strict() && !cluster.sync_allows_promotion(candidate) {
            return Some(format!(
                "candidate {candidate} is not a synchronous standby and synchronous_mode_strict is on: promoting it could lose acknowledged commits (turn synchronous_mode_strict off to force it)"
            ));
        }
        return None;
    }
    failover_readiness(cluster)
        .into_iter()
        .find(|(n, _)| n == candidate)
        .and_then(|(_, why)| why)
        .map(|why| format!("candidate {candidate} is not eligible: {why}"))
}

/// Checks a request against the cluster, in Patroni's order and with its messages (and the
/// numbers behind a refusal). `Invalid` = the request is wrong (400), `BadTime` = the schedule
/// is (422), `Refused` = the cluster's state does not allow it now (412).
pub fn check(cluster: &Cluster, req: &Request, now: DateTime<Utc>) -> Result<Failover, OpsError> {
    let noun = req.kind.noun();
    match req.kind {
        Kind::Failover if req.candidate.is_none() => {
            return Err(OpsError::Invalid(
                "Failover could be performed only to a specific candidate".into(),
            ));
        }
        Kind::Switchover if req.leader.is_none() => {
            return Err(OpsError::Invalid(
                "Switchover could be performed only from a specific leader".into(),
            ));
        }
        _ => {}
    }
    if cluster.dynamic_config().standby_cluster().is_some() {
        return Err(OpsError::Refused(format!(
            "{} of a standby cluster is not possible: it has no primary; promote the cluster first (promote-cluster)",
            noun
        )));
    }
    let paused = cluster.is_paused();
    if let Some(at) = req.scheduled_at {
        if req.kind == Kind::Failover {
            return Err(OpsError::Invalid("Failover can't be scheduled".into()));
        }
        if paused {
            return Err(OpsError::Invalid(
                "Can't schedule switchover in the paused state".into(),
            ));
        }
        if at.with_timezone(&Utc) < now {
            return Err(OpsError::BadTime(format!(
                "Cannot schedule switchover in the past ({at} is before {})",
                now.format("%Y-%m-%dT%H:%M:%S%:z")
            )));
        }
    }
    if paused && req.candidate.is_none() {
        return Err(OpsError::Invalid(
            "Switchover is possible only to a specific candidate in a paused state".into(),
        ));
    }
    if req.leader.is_some() && req.leader == req.candidate {
        return Err(OpsError::Invalid(
            "Switchover target and source are the same".into(),
        ));
    }
    let current = cluster.leader.as_ref().map(|l| l.name.as_str());
    if let Some(l) = &req.leader
        && Some(l.as_str()) != current
    {
        return Err(OpsError::Refused(match current {
            Some(c) => format!("leader name does not match: {l} is not the leader, {c} is"),
            None => format!("leader name does not match: {l} is not the leader, there is none"),
        }));
    }
    if let Some(c) = &req.candidate
        && cluster.member(c).is_none()
    {
        return Err(OpsError::Refused(format!(
            "candidate does not exists: no member is named {c}"
        )));
    }
    if let Some(c) = &req.candidate
        && Some(c.as_str()) == current
    {
        return Err(OpsError::Refused(format!(
            "{noun} is not possible: {c} already holds the leader lock"
        )));
    }
    if req.scheduled_at.is_none() {
        match &req.candidate {
            Some(c) => {
                if let Some(why) = candidate_refusal(cluster, req.kind, c) {
                    return Err(OpsError::Refused(format!("{noun} is not possible: {why}")));
                }
            }
            None => {
                let others = failover_readiness(cluster);
                if others.is_empty() {
                    return Err(OpsError::Refused(format!(
                        "{noun} is not possible: cluster does not have members except leader"
                    )));
                }
                if others.iter().all(|(_, why)| why.is_some()) {
                    let reasons: Vec<String> = others
                        .iter()
                        .map(|(n, why)| format!("{n}: {}", why.as_deref().unwrap_or_default()))
                        .collect();
                    return Err(OpsError::Refused(format!(
                        "{noun} is not possible: no good candidates have been found ({})",
                        reasons.join("; ")
                    )));
                }
            }
        }
    }
    Ok(Failover {
        leader: req.leader.clone(),
        member: req.candidate.clone(),
        scheduled_at: req.scheduled_at.map(|t| t.to_rfc3339()),
    })
}

/// The cluster with each member's state and WAL position replaced by what its REST API says
/// now (member keys may be `loop_wait` old). Members that do not answer keep their keys' data.
pub async fn live_view(cluster: &Cluster, client: &MemberClient) -> Cluster {
    let mut live = cluster.clone();
    let urls: Vec<String> = cluster
        .members
        .iter()
        .map(|m| m.data.api_url.clone())
        .collect();
    let answers = client.statuses(&urls).await;
    for (m, answer) in live.members.iter_mut().zip(answers) {
        let Some(body) = answer else { continue };
        let st = PeerStatus::from_json(&body);
        if let Some(state) = body.get("state").and_then(Value::as_str) {
            m.data.state = state.to_string();
        }
        if st.wal_position.is_some() {
            m.data.xlog_location = st.wal_position;
        }
    }
    // The leader's live position is the reference a candidate's lag is measured against.
    if let Some(l) = live.leader_member().and_then(|m| m.data.xlog_location) {
        live.status.optime = Some(live.status.optime.unwrap_or(0).max(l));
    }
    live
}

/// Where a switchover the old leader acted on stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    InProgress,
    Succeeded(String),
    Failed(String),
}

/// What the old leader reports about the last switchover it handled (`pgpilot.switchover` in
/// its `GET /patroni`): `id` is the `failover` key's revision it acted on. The agent writes it,
/// requesters read it: one type for both sides of the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub id: i64,
    pub candidate: Option<String>,
    pub progress: Progress,
}

impl Report {
    pub fn to_json(&self) -> Value {
        let mut o = serde_json::Map::new();
        o.insert("id".into(), Value::from(self.id));
        if let Some(c) = &self.candidate {
            o.insert("candidate".into(), Value::from(c.clone()));
        }
        let (state, extra) = match &self.progress {
            Progress::InProgress => ("in_progress", None),
            Progress::Succeeded(n) => ("succeeded", Some(("new_leader", n))),
            Progress::Failed(r) => ("failed", Some(("reason", r))),
        };
        o.insert("state".into(), Value::from(state));
        if let Some((k, v)) = extra {
            o.insert(k.into(), Value::from(v.clone()));
        }
        Value::Object(o)
    }

    /// Reads the report out of a `GET /patroni` body.
    pub fn from_status(body: &Value) -> Option<Report> {
        let r = body.get("pgpilot")?.get("switchover")?;
        let text = |k: &str| r.get(k).and_then(Value::as_str).map(str::to_string);
        let progress = match r.get("state").and_then(Value::as_str)? {
            "failed" => {
                Progress::Failed(text("reason").unwrap_or_else(|| "no reason given".into()))
            }
            "succeeded" => Progress::Succeeded(text("new_leader").unwrap_or_default()),
            _ => Progress::InProgress,
        };
        Some(Report {
            id: r.get("id")?.as_i64()?,
            candidate: text("candidate"),
            progress,
        })
    }
}

/// Carries out a request: checks it against a live view, writes the `failover` key and, unless
/// it is scheduled, follows the cluster until a member other than the old leader holds the lock
/// and runs as primary (success), the old leader reports why it did not hand over, or `wait`
/// passes (failure naming who leads now).
pub async fn run<K: Kv>(
    dcs: &Dcs<K>,
    client: &MemberClient,
    req: &Request,
    wait: Duration,
) -> Result<Outcome, OpsError> {
    let cluster = dcs.load().await?;
    let live = live_view(&cluster, client).await;
    let failover = check(&live, req, Utc::now())?;
    let before = cluster.revision;
    dcs.set_failover(Some(&failover), None).await?;
    if let Some(at) = req.scheduled_at {
        return Ok(Outcome::Scheduled { at });
    }
    follow(dcs, client, req, &cluster, before, wait).await
}

async fn follow<K: Kv>(
    dcs: &Dcs<K>,
    client: &MemberClient,
    req: &Request,
    start: &Cluster,
    before: i64,
    wait: Duration,
) -> Result<Outcome, OpsError> {
    let noun = req.kind.noun();
    let old = start.leader.as_ref().map(|l| l.name.clone());
    let old_api = old
        .as_deref()
        .and_then(|o| start.member(o))
        .map(|m| m.data.api_url.clone())
        .filter(|u| !u.is_empty());
    let began = Instant::now();
    let mut cleared_since: Option<Instant> = None;
    let mut last = start.clone();
    while began.elapsed() < wait {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let Ok(c) = dcs.load().await else { continue };
        let new_leader = c
            .leader
            .as_ref()
            .filter(|l| Some(&l.name) != old.as_ref())
            .and_then(|l| c.member(&l.name))
            .filter(|m| m.data.runs_as_primary())
            .map(|m| m.name.clone());
        if let Some(n) = new_leader {
            let message = match &req.candidate {
                Some(want) if *want != n => {
                    format!("{} over to {n:?} instead of {want:?}", past(req.kind))
                }
                _ => format!("Successfully {} over to {n:?}", past(req.kind)),
            };
            return Ok(Outcome::Done {
                new_leader: n,
                message,
            });
        }
        if let Some(api) = &old_api
            && let Some(report) = client
                .status(api)
                .await
                .as_ref()
                .and_then(Report::from_status)
            && report.id > before
            && let Progress::Failed(why) = report.progress
        {
            return Err(OpsError::Failed(format!("{noun} failed: {why}")));
        }
        let still_requested = c.failover.is_some();
        let same_leader = c.leader.as_ref().map(|l| &l.name) == old.as_ref();
        if !still_requested && same_leader && c.leader.is_some() {
            let since = *cleared_since.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_secs(3) {
                return Err(OpsError::Failed(format!(
                    "{noun} failed: the leader {} withdrew the request without handing over, and its REST API did not say why (see its log)",
                    old.as_deref().unwrap_or("?")
                )));
            }
        } else {
            cleared_since = None;
        }
        last = c;
    }
    let now = match (&last.leader, req.candidate.as_deref()) {
        (Some(l), Some(c)) => format!(
            "{} holds the lock; candidate {c} is {}",
            l.name,
            last.member(c).map_or("gone", |m| m.data.state.as_str())
        ),
        (Some(l), None) => format!("{} holds the lock", l.name),
        (None, _) => "nobody holds the leader lock yet".to_string(),
    };
    Err(OpsError::Failed(format!(
        "{noun} did not complete within {}s: {now}",
        wait.as_secs()
    )))
}

fn past(kind: Kind) -> &'static str {
    match kind {
        Kind::Switchover => "switched",
        Kind::Failover => "failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dcs::{DynamicConfig, Leader, Member, MemberData, Versioned};
    use serde_json::json;

    fn member(name: &str, state: &str, xlog: u64, tags: Value) -> Member {
        Member {
            name: name.into(),
            data: MemberData {
                state: state.into(),
                role: "replica".into(),
                xlog_location: Some(xlog),
                tags: tags.as_object().cloned().unwrap_or_default(),
                ..Default::default()
            },
            lease: 0,
            mod_revision: 1,
        }
    }

    fn cluster(paused: bool) -> Cluster {
        let mut raw = json!({"ttl": 30, "maximum_lag_on_failover": 1000});
        if paused {
            raw["pause"] = json!(true);
        }
        Cluster {
            scope: "demo".into(),
            leader: Some(Leader {
                name: "n1".into(),
                lease: 1,
                mod_revision: 1,
            }),
            members: vec![
                member("n1", "running", 10_000, json!({})),
                member("n2", "running", 9_500, json!({})),
                member("n3", "running", 5_000, json!({})),
                member("n4", "running", 10_000, json!({"nofailover": true})),
                member("n5", "stopped", 10_000, json!({})),
            ],
            config: Some(Versioned {
                value: DynamicConfig {
                    raw: raw.as_object().cloned().unwrap(),
                },
                mod_revision: 1,
            }),
            ..Default::default()
        }
    }

    fn req(kind: Kind, leader: Option<&str>, cand: Option<&str>, at: Option<&str>) -> Request {
        Request {
            kind,
            leader: leader.map(str::to_string),
            candidate: cand.map(str::to_string),
            scheduled_at: at.map(|t| parse_time(t).unwrap().unwrap()),
        }
    }

    fn now() -> DateTime<Utc> {
        "2026-11-23T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn requests_are_checked_in_patronis_order_with_numbers() {
        let c = cluster(false);
        let sw = |cand, at| check(&c, &req(Kind::Switchover, Some("n1"), cand, at), now());
        assert!(sw(Some("n2"), None).is_ok());
        assert!(sw(None, None).is_ok());
        let lag = sw(Some("n3"), None).unwrap_err();
        assert!(matches!(lag, OpsError::Refused(_)), "{lag}");
        let text = lag.to_string();
        assert!(
            text.contains("5000 bytes") && text.contains("maximum_lag_on_failover 1000"),
            "{text}"
        );
        assert!(
            sw(Some("n4"), None)
                .unwrap_err()
                .to_string()
                .contains("nofailover")
        );
        assert!(
            sw(Some("n5"), None)
                .unwrap_err()
                .to_string()
                .contains("stopped")
        );
        assert!(
            sw(Some("n9"), None)
                .unwrap_err()
                .to_string()
                .contains("does not exist")
        );
        assert!(matches!(
            check(&c, &req(Kind::Switchover, Some("n2"), Some("n3"), None), now()),
            Err(OpsError::Refused(m)) if m.contains("n1 is")
        ));
        assert!(matches!(
            check(&c, &req(Kind::Switchover, Some("n1"), Some("n1"), None), now()),
            Err(OpsError::Invalid(m)) if m.contains("same")
        ));
        assert!(matches!(
            check(&c, &req(Kind::Switchover, None, Some("n2"), None), now()),
            Err(OpsError::Invalid(_))
        ));
        // a failover needs a candidate and ignores the lag
        assert!(matches!(
            check(&c, &req(Kind::Failover, None, None, None), now()),
            Err(OpsError::Invalid(_))
        ));
        assert!(check(&c, &req(Kind::Failover, None, Some("n3"), None), now()).is_ok());
        // scheduling: future ok (feasibility is the leader's at that time), past 422-like
        let f = sw(Some("n3"), Some("2026-11-23T13:00:00+00:00")).unwrap();
        assert_eq!(f.scheduled_at.as_deref(), Some("2026-11-23T13:00:00+00:00"));
        assert!(matches!(
            sw(Some("n2"), Some("2026-11-23T11:00:00+00:00")),
            Err(OpsError::BadTime(_))
        ));
        assert!(matches!(
            check(
                &c,
                &req(
                    Kind::Failover,
                    None,
                    Some("n2"),
                    Some("2026-11-23T13:00:00Z")
                ),
                now()
            ),
            Err(OpsError::Invalid(_))
        ));
        // paused: only to a named candidate, never scheduled
        let p = cluster(true);
        assert!(
            check(
                &p,
                &req(Kind::Switchover, Some("n1"), Some("n2"), None),
                now()
            )
            .is_ok()
        );
        assert!(matches!(
            check(&p, &req(Kind::Switchover, Some("n1"), None, None), now()),
            Err(OpsError::Invalid(m)) if m.contains("paused")
        ));
        assert!(matches!(
            check(
                &p,
                &req(Kind::Switchover, Some("n1"), Some("n2"), Some("2026-11-23T13:00:00Z")),
                now()
            ),
            Err(OpsError::Invalid(m)) if m.contains("paused")
        ));
    }

    #[test]
    fn no_candidate_at_all_names_each_member() {
        let mut c = cluster(false);
        c.members.retain(|m| m.name != "n2");
        let e = check(&c, &req(Kind::Switchover, Some("n1"), None, None), now()).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("n3: lagging") && text.contains("n4: tagged"),
            "{text}"
        );
        c.members.retain(|m| m.name == "n1");
        let e = check(&c, &req(Kind::Switchover, Some("n1"), None, None), now()).unwrap_err();
        assert!(e.to_string().contains("except leader"), "{e}");
    }

    #[test]
    fn bodies_and_times_parse_as_patroni_sends_them() {
        let r = Request::from_json(
            Kind::Switchover,
            &json!({"leader": "n1", "member": "n2", "scheduled_at": "2026-11-23T13:00+01:00"}),
        )
        .unwrap();
        assert_eq!(r.candidate.as_deref(), Some("n2"));
        assert!(r.scheduled_at.is_some());
        let f = Request::from_json(Kind::Failover, &json!({"leader": "n1", "candidate": "n2"}))
            .unwrap();
        assert_eq!(f.kind, Kind::Switchover);
        assert!(matches!(
            Request::from_json(Kind::Switchover, &json!({"leader": 3})),
            Err(OpsError::Invalid(_))
        ));
        assert!(matches!(
            Request::from_json(Kind::Switchover, &json!([1])),
            Err(OpsError::Invalid(_))
        ));
        assert!(matches!(
            parse_time("2026-11-23T13:00:00"),
            Err(OpsError::Invalid(m)) if m.contains("Timezone")
        ));
        assert!(matches!(parse_time("tomorrow"), Err(OpsError::BadTime(_))));
        assert_eq!(parse_time("now").unwrap(), None);
        assert!(parse_time("2026-11-23 13:00:00+00:00").unwrap().is_some());
        assert!(parse_time("2026-11-23T13:00:00Z").unwrap().is_some());
    }

    #[test]
    fn reports_read_back_what_the_agent_writes() {
        for progress in [
            Progress::InProgress,
            Progress::Succeeded("n2".into()),
            Progress::Failed("n2 is not streaming from this primary".into()),
        ] {
            let r = Report {
                id: 42,
                candidate: Some("n2".into()),
                progress,
            };
            let body = json!({"pgpilot": {"switchover": r.to_json()}});
            assert_eq!(Report::from_status(&body), Some(r));
        }
        assert_eq!(Report::from_status(&json!({"pgpilot": {}})), None);
    }
}
