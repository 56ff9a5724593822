//! Operations on a cluster, one implementation each, called by the console (batch commands and
//! live view), the agents' REST API and the tests. This part holds what goes through etcd alone:
//! editing the dynamic configuration (compare-and-swap on the `config` key), pause and resume,
//! clearing a scheduled switchover, and removing a cluster's keys. [`switchover`] holds the
//! switchover and failover requests.

pub mod member;
pub mod restart;
pub mod switchover;

pub use restart::RestartRequest;

use crate::dcs::{Cluster, Dcs, DcsError, DynamicConfig, Kv, keys};
use serde_json::{Map, Value};

/// Why an operation did not happen. Nothing was written in any case.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// The request itself is wrong (console exit 2, HTTP 400).
    #[error("{0}")]
    Invalid(String),
    /// The cluster's state does not allow it (console exit 1, HTTP 412).
    #[error("{0}")]
    Refused(String),
    /// Someone changed the key between our read and our write.
    #[error(
        "the {0} key changed while this change was prepared; nothing was written, read it again and retry"
    )]
    Conflict(&'static str),
    /// A time that cannot be used (HTTP 422).
    #[error("{0}")]
    BadTime(String),
    /// The operation was tried and did not happen; the reason says why (HTTP 503, exit 1).
    #[error("{0}")]
    Failed(String),
    #[error("etcd: {0}")]
    Dcs(#[from] DcsError),
}

/// A handle on one cluster's keys for an operator's tool (the console): it writes shared keys
/// only, never a member key or a lease, so its member name and ttl are placeholders.
pub fn operator_handle<K: Kv>(kv: K, namespace: &str, scope: &str) -> Dcs<K> {
    Dcs::new(kv, namespace, scope, "console", 30)
}

/// Parses YAML text into JSON (a scalar, list or mapping).
fn yaml_value(text: &str) -> Result<Value, String> {
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_saphyr::from_str::<Value>(text).map_err(|e| e.to_string())
}

/// `key.path=value` (as `edit-config --set`): the path split on dots, the value read as YAML
/// (`10`, `true`, `'text'`, `{a: 1}`; empty or `null` deletes the key).
pub fn parse_assignment(arg: &str) -> Result<(Vec<String>, Value), OpsError> {
    let (key, value) = arg
        .split_once('=')
        .ok_or_else(|| OpsError::Invalid(format!("{arg:?}: expected key.path=value")))?;
    let path: Vec<String> = key.trim().split('.').map(str::to_string).collect();
    if path.iter().any(|p| p.is_empty()) {
        return Err(OpsError::Invalid(format!("{arg:?}: empty key")));
    }
    let value = yaml_value(value)
        .map_err(|e| OpsError::Invalid(format!("{arg:?}: the value is not valid YAML: {e}")))?;
    Ok((path, value))
}

/// `name=value` (as `edit-config --pg`): a PostgreSQL parameter, dots kept in its name.
pub fn parse_pg_assignment(arg: &str) -> Result<(Vec<String>, Value), OpsError> {
    let (name, value) = arg
        .split_once('=')
        .ok_or_else(|| OpsError::Invalid(format!("{arg:?}: expected name=value")))?;
    if name.trim().is_empty() {
        return Err(OpsError::Invalid(format!("{arg:?}: empty parameter name")));
    }
    let value = yaml_value(value)
        .map_err(|e| OpsError::Invalid(format!("{arg:?}: the value is not valid YAML: {e}")))?;
    Ok((
        vec![
            "postgresql".into(),
            "parameters".into(),
            name.trim().to_string(),
        ],
        value,
    ))
}

/// Sets `path` to `value` (creating mappings on the way); `null` removes the key.
pub fn set_path(map: &mut Map<String, Value>, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut here = map;
    for p in parents {
        let entry = here
            .entry(p.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        let Value::Object(next) = entry else { return };
        here = next;
    }
    if value.is_null() {
        here.remove(last);
    } else {
        here.insert(last.clone(), value);
    }
}

/// Merges `patch` into `base` as `PATCH /config` and `edit-config --apply` do: mappings merge
/// recursively, `null` removes a key, anything else replaces.
pub fn merge_patch(base: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (k, v) in patch {
        match (base.get_mut(k), v) {
            (_, Value::Null) => {
                base.remove(k);
            }
            (Some(Value::Object(b)), Value::Object(p)) => merge_patch(b, p),
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}

/// Checks a whole dynamic configuration; every problem is named by its key. Keys pgpilot
/// refuses (a `standby_cluster`, see [`crate::config::dynamic_key_notes`]) are problems too.
pub fn check_config(config: &Map<String, Value>) -> Result<(), OpsError> {
    let mut problems = Vec::new();
    DynamicConfig::check_bootstrap(config, |key, msg| problems.push(format!("{key}: {msg}")));
    problems.extend(
        crate::config::dynamic_key_notes(config)
            .into_iter()
            .filter(|n| n.level == crate::config::NoteLevel::Refusal)
            .map(|n| n.to_string()),
    );
    if problems.is_empty() {
        Ok(())
    } else {
        Err(OpsError::Invalid(format!(
            "the new configuration is invalid: {}",
            problems.join("; ")
        )))
    }
}

/// The `config` key as read, with its version for the compare-and-swap.
pub fn current_config(cluster: &Cluster) -> (Map<String, Value>, Option<i64>) {
    match &cluster.config {
        Some(v) => (v.value.raw.clone(), Some(v.mod_revision)),
        None => (Map::new(), None),
    }
}

/// Writes a new dynamic configuration if the key is still at `version` (absent when `None`).
/// The configuration is checked first; a concurrent change is a [`OpsError::Conflict`].
pub async fn write_config<K: Kv>(
    dcs: &Dcs<K>,
    config: &Map<String, Value>,
    version: Option<i64>,
) -> Result<(), OpsError> {
    check_config(config)?;
    let cfg = DynamicConfig {
        raw: config.clone(),
    };
    let written = match version {
        Some(v) => dcs.set_config(&cfg, Some(v)).await?,
        None => dcs.init_config(&cfg).await?,
    };
    if written {
        Ok(())
    } else {
        Err(OpsError::Conflict("config"))
    }
}

/// Pauses (`true`) or resumes (`false`) automatic failover: `pause` in the config key, written
/// with compare-and-swap. Refused when the cluster is already in that state.
pub async fn set_pause<K: Kv>(
    dcs: &Dcs<K>,
    cluster: &Cluster,
    pause: bool,
) -> Result<(), OpsError> {
    if cluster.is_paused() == pause {
        return Err(OpsError::Refused(format!(
            "cluster {} is already {}",
            cluster.scope,
            if pause { "paused" } else { "not paused" }
        )));
    }
    let (mut config, version) = current_config(cluster);
    if pause {
        config.insert("pause".into(), Value::Bool(true));
    } else {
        config.remove("pause");
    }
    write_config(dcs, &config, version).await
}

/// Makes a cluster a standby cluster of the primary at `standby` (`demote-cluster`: the
/// `standby_cluster` section written, compare-and-swap), or with `None` a cluster of its own
/// again (`promote-cluster`: the section removed; its standby leader promotes). Refused when
/// the cluster already is what is asked.
pub async fn set_standby_cluster<K: Kv>(
    dcs: &Dcs<K>,
    cluster: &Cluster,
    standby: Option<Map<String, Value>>,
) -> Result<(), OpsError> {
    let is_standby = cluster.dynamic_config().standby_cluster().is_some();
    match (&standby, is_standby) {
        (None, false) => {
            return Err(OpsError::Refused(format!(
                "cluster {} is not a standby cluster",
                cluster.scope
            )));
        }
        (Some(m), _)
            if !["host", "port", "restore_command"]
                .iter()
                .any(|k| m.contains_key(*k)) =>
        {
            return Err(OpsError::Refused(
                "a standby cluster needs a host, a port or a restore_command".into(),
            ));
        }
        (Some(_), true) => {
            return Err(OpsError::Refused(format!(
                "cluster {} is already a standby cluster",
                cluster.scope
            )));
        }
        _ => {}
    }
    let (mut config, version) = current_config(cluster);
    match standby {
        Some(m) => {
            config.insert("standby_cluster".into(), Value::Object(m));
        }
        None => {
            config.remove("standby_cluster");
        }
    }
    write_config(dcs, &config, version).await
}

/// Whether every member's key agrees with the pause state (members publish `pause: true`
/// while paused).
pub fn members_see_pause(cluster: &Cluster, pause: bool) -> bool {
    cluster
        .members
        .iter()
        .all(|m| m.data.pause.unwrap_or(false) == pause)
}

/// Clears a scheduled switchover (the `failover` key back to `{}`), with compare-and-swap.
/// Refused when none is scheduled.
pub async fn clear_scheduled_switchover<K: Kv>(
    dcs: &Dcs<K>,
    cluster: &Cluster,
) -> Result<(), OpsError> {
    let Some(f) = cluster
        .failover
        .as_ref()
        .filter(|f| f.value.scheduled_at.is_some())
    else {
        return Err(OpsError::Refused(format!(
            "no switchover is scheduled in cluster {}",
            cluster.scope
        )));
    };
    if dcs.set_failover(None, Some(f.mod_revision)).await? {
        Ok(())
    } else {
        Err(OpsError::Conflict("failover"))
    }
}

/// Deletes every key of a cluster (`/<namespace>/<scope>/…`); returns how many there were.
/// PostgreSQL is not touched: running agents re-create their member keys, and the next agent
/// to start finds no cluster and may bootstrap or adopt its data again.
pub async fn remove_cluster<K: Kv>(kv: &K, namespace: &str, scope: &str) -> Result<u64, OpsError> {
    if scope.is_empty() || scope.contains('/') {
        return Err(OpsError::Invalid(format!(
            "{scope:?} is not a cluster name"
        )));
    }
    Ok(kv
        .delete_prefix(&keys::cluster_prefix(namespace, scope))
        .await
        .map_err(DcsError::from)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dcs::mem::MemStore;
    use serde_json::json;

    #[test]
    fn assignments_are_yaml_and_null_deletes() {
        let (p, v) = parse_assignment("postgresql.parameters.work_mem='8MB'").unwrap();
        assert_eq!(p, vec!["postgresql", "parameters", "work_mem"]);
        assert_eq!(v, json!("8MB"));
        assert_eq!(parse_assignment("ttl=20").unwrap().1, json!(20));
        assert_eq!(parse_assignment("pause=").unwrap().1, Value::Null);
        assert!(matches!(parse_assignment("ttl"), Err(OpsError::Invalid(_))));
        assert!(matches!(
            parse_assignment("a..b=1"),
            Err(OpsError::Invalid(_))
        ));
        assert!(matches!(
            parse_assignment("ttl={"),
            Err(OpsError::Invalid(_))
        ));
        let (p, _) = parse_pg_assignment("auto_explain.log_min_duration=100").unwrap();
        assert_eq!(p[2], "auto_explain.log_min_duration");
        let mut m = Map::new();
        set_path(&mut m, &p, json!(100));
        set_path(&mut m, &["ttl".to_string()], json!(20));
        set_path(&mut m, &["ttl".to_string()], Value::Null);
        assert_eq!(
            Value::Object(m),
            json!({"postgresql": {"parameters": {"auto_explain.log_min_duration": 100}}})
        );
    }

    #[test]
    fn merge_patch_merges_and_deletes() {
        let mut base = json!({"ttl": 30, "postgresql": {"parameters": {"a": 1, "b": 2}}})
            .as_object()
            .cloned()
            .unwrap();
        let patch = json!({"ttl": null, "postgresql": {"parameters": {"b": null, "c": 3}}});
        merge_patch(&mut base, patch.as_object().unwrap());
        assert_eq!(
            Value::Object(base),
            json!({"postgresql": {"parameters": {"a": 1, "c": 3}}})
        );
    }

    #[tokio::test]
    async fn config_writes_are_checked_and_compare_and_swap() {
        let store = MemStore::new();
        let dcs = Dcs::new(store.client(), "/service", "demo", "console", 30);
        let cfg = json!({"ttl": 30}).as_object().cloned().unwrap();
        write_config(&dcs, &cfg, None).await.unwrap();
        let c = dcs.load().await.unwrap();
        let (mut now, version) = current_config(&c);
        // a bad value names its key and writes nothing
        now.insert("ttl".into(), json!("soon"));
        let err = write_config(&dcs, &now, version).await.unwrap_err();
        assert!(err.to_string().contains("ttl"), "{err}");
        // pause, then a stale version conflicts
        set_pause(&dcs, &c, true).await.unwrap();
        let again = set_pause(&dcs, &c, false).await.unwrap_err();
        assert!(matches!(again, OpsError::Refused(_)), "{again}");
        let stale = write_config(&dcs, &cfg, version).await.unwrap_err();
        assert!(matches!(stale, OpsError::Conflict("config")), "{stale}");
        let c = dcs.load().await.unwrap();
        assert!(c.is_paused());
        set_pause(&dcs, &c, false).await.unwrap();
        assert!(!dcs.load().await.unwrap().is_paused());
        // no switchover scheduled: refused; removal deletes every key
        let c = dcs.load().await.unwrap();
        assert!(matches!(
            clear_scheduled_switchover(&dcs, &c).await,
            Err(OpsError::Refused(_))
        ));
        assert_eq!(
            remove_cluster(&store.client(), "/service", "demo")
                .await
                .unwrap(),
            1
        );
        assert!(dcs.load().await.unwrap().config.is_none());
    }
}
