//! Restart requests (`POST /restart`, `console restart`): reading the body with Patroni's filters
//! and messages, and deciding whether a member meets them.

use super::OpsError;
use super::switchover::parse_time;
use chrono::{DateTime, FixedOffset, Utc};
use serde_json::{Map, Value, json};

/// A restart, now or at `schedule`, only where the filters hold.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RestartRequest {
    pub schedule: Option<DateTime<FixedOffset>>,
    /// Only a member in this role (`primary`, `replica`, `standby_leader`).
    pub role: Option<String>,
    /// Only a member whose server version is lower than this (`15.4`, or `9.6.24`).
    pub postgres_version: Option<String>,
    /// Seconds to wait for the start.
    pub timeout: Option<u64>,
    /// Only a member with a pending restart.
    pub restart_pending: bool,
}

/// `15.4` → 150004, `9.6.24` → 90624, as `server_version_num` counts.
pub fn version_number(v: &str) -> Option<i32> {
    let parts: Vec<i32> = v
        .split('.')
        .map(|p| p.parse::<i32>().ok().filter(|n| *n >= 0))
        .collect::<Option<_>>()?;
    match parts.as_slice() {
        [major, minor] if *major >= 10 => Some(major * 10000 + minor),
        [major, minor, patch] if *major < 10 => Some(major * 10000 + minor * 100 + patch),
        _ => None,
    }
}

impl RestartRequest {
    /// Reads a `POST /restart` body; an unknown key, a bad role, version, timeout or time is
    /// refused with the key at fault.
    pub fn from_json(body: &Value) -> Result<RestartRequest, OpsError> {
        let o = body
            .as_object()
            .ok_or_else(|| OpsError::Invalid("the request body must be a JSON object".into()))?;
        let mut r = RestartRequest::default();
        for (k, v) in o {
            let s = || match v {
                Value::String(s) => Ok(s.trim().to_string()),
                Value::Number(n) => Ok(n.to_string()),
                other => Err(OpsError::Invalid(format!(
                    "{k} must be a string, not {other}"
                ))),
            };
            match k.as_str() {
                "schedule" => {
                    r.schedule = parse_time(&s()?)?;
                    if let Some(at) = r.schedule
                        && at.with_timezone(&Utc) < Utc::now()
                    {
                        return Err(OpsError::BadTime(format!(
                            "Cannot schedule restart in the past ({at})"
                        )));
                    }
                }
                "role" => {
                    let role = match s()?.as_str() {
                        "master" | "primary" => "primary".to_string(),
                        "replica" | "standby_leader" => s()?,
                        // Patroni's words exactly: scripts match them
                        _ => {
                            return Err(OpsError::Invalid(
                                "PostgreSQL role should be either primary, standby_leader, or replica"
                                    .into(),
                            ));
                        }
                    };
                    r.role = Some(role);
                }
                "postgres_version" => {
                    let text = s()?;
                    if version_number(&text).is_none() {
                        return Err(OpsError::Invalid(format!(
                            "PostgreSQL version should be in the first.major (10 and later) or first.major.minor (9.x) form, not {text:?}"
                        )));
                    }
                    r.postgres_version = Some(text);
                }
                "timeout" => {
                    let t = crate::types::parse_seconds(&s()?)
                        .filter(|t| *t > 0)
                        .ok_or_else(|| {
                            OpsError::Invalid(
                                "Timeout should be a positive number of seconds".into(),
                            )
                        })?;
                    r.timeout = Some(t);
                }
                "restart_pending" => r.restart_pending = !v.is_null(),
                other => {
                    return Err(OpsError::Invalid(format!(
                        "Unknown filter for the scheduled restart: {other}"
                    )));
                }
            }
        }
        Ok(r)
    }

    /// The body that asks for this restart (what the console sends).
    pub fn to_json(&self) -> Value {
        let mut o = Map::new();
        if let Some(s) = &self.schedule {
            o.insert("schedule".into(), json!(s.to_rfc3339()));
        }
        if let Some(r) = &self.role {
            o.insert("role".into(), json!(r));
        }
        if let Some(v) = &self.postgres_version {
            o.insert("postgres_version".into(), json!(v));
        }
        if let Some(t) = self.timeout {
            o.insert("timeout".into(), json!(t));
        }
        if self.restart_pending {
            o.insert("restart_pending".into(), json!(true));
        }
        Value::Object(o)
    }

    /// Why a member in `role`, running `server_version`, with or without a pending restart, is
    /// not to be restarted; `None` when every filter holds.
    pub fn unmet(&self, role: &str, server_version: i32, pending: bool) -> Option<String> {
        let role = if role == "master" { "primary" } else { role };
        if let Some(want) = &self.role
            && want != role
        {
            return Some(format!("the role is {role}, not {want}"));
        }
        if let Some(v) = &self.postgres_version
            && let Some(n) = version_number(v)
            && server_version >= n
        {
            return Some(format!(
                "the server version {server_version} is not lower than {v}"
            ));
        }
        if self.restart_pending && !pending {
            return Some("no restart is pending".into());
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_and_apply_as_patroni_documents() {
        let r = RestartRequest::from_json(
            &json!({"role": "master", "postgres_version": "16.1", "restart_pending": true, "timeout": "30"}),
        )
        .unwrap();
        assert_eq!(r.role.as_deref(), Some("primary"));
        assert_eq!(r.timeout, Some(30));
        assert_eq!(r.unmet("primary", 150004, true), None);
        assert!(
            r.unmet("replica", 150004, true)
                .unwrap()
                .contains("not primary")
        );
        assert!(
            r.unmet("primary", 160001, true)
                .unwrap()
                .contains("not lower")
        );
        assert!(
            r.unmet("primary", 150004, false)
                .unwrap()
                .contains("pending")
        );
        for bad in [
            json!({"role": "leader"}),
            json!({"postgres_version": "15"}),
            json!({"timeout": 0}),
            json!({"when": "now"}),
            json!({"schedule": "2026-01-01T00:00:00"}),
            json!([1]),
        ] {
            assert!(
                matches!(RestartRequest::from_json(&bad), Err(OpsError::Invalid(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            RestartRequest::from_json(&json!({"schedule": "2001-01-01T00:00:00+00:00"})),
            Err(OpsError::BadTime(_))
        ));
        assert_eq!(version_number("9.6.24"), Some(90624));
        assert_eq!(version_number("15.4"), Some(150004));
        let round = RestartRequest::from_json(&r.to_json()).unwrap();
        assert_eq!(round, r);
    }
}
