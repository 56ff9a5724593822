//! Replica and bootstrap methods as Patroni defines them, and replicas' recovery settings: which
//! methods build a replica (`create_replica_methods`, tried in order: the built-in `basebackup`
//! or a named method whose section holds a `command`, such as pgBackRest's restore), the
//! command line each gets, the command of a custom `bootstrap.method`, and the
//! `recovery_conf` settings a replica takes. Pure: configuration in, decisions out; running
//! the commands is [`super::Postgres::run_method`]'s.
//!
//! The dynamic configuration's `postgresql` section may hold all of these too; a key of the
//! member's own YAML wins over it, as in Patroni.

use anyhow::{Result, anyhow, bail};
use serde_json::{Map, Value};
use shared::config::PostgresConfig;

/// The built-in method: pg_basebackup from the source member.
pub const BASEBACKUP: &str = "basebackup";

/// One way to build a replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaMethod {
    Basebackup,
    Command {
        name: String,
        argv: Vec<String>,
        /// `keep_data`: the data directory is not emptied before the command nor after a
        /// failure (a delta restore reuses what is there).
        keep_data: bool,
        /// `no_leader`: the method needs no running source (it restores from a backup).
        no_leader: bool,
    },
}

impl ReplicaMethod {
    pub fn name(&self) -> &str {
        match self {
            ReplicaMethod::Basebackup => BASEBACKUP,
            ReplicaMethod::Command { name, .. } => name,
        }
    }
}

/// Where a replica is built from, for the methods' parameters.
pub struct Source<'a> {
    pub scope: &'a str,
    pub data_dir: &'a str,
    /// libpq `key=value` connection string of the source, with the replication user and no
    /// password (that is in the pgpass file, `PGPASSFILE`); empty without a source.
    pub connstring: &'a str,
}

/// `key` from the member's own `postgresql` section, else from the dynamic configuration's.
fn effective<'a>(
    local: Option<&'a Value>,
    dynamic_pg: Option<&'a Map<String, Value>>,
    key: &str,
) -> Option<&'a Value> {
    local
        .filter(|v| !v.is_null())
        .or_else(|| dynamic_pg.and_then(|d| d.get(key)).filter(|v| !v.is_null()))
}

/// A value as Patroni puts it on a command line (Python's `str`): `True`/`False` for booleans.
fn param_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Null => "None".into(),
        other => other.to_string(),
    }
}

fn truthy(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64().is_some_and(|n| n != 0.0),
        Some(Value::String(s)) => {
            matches!(
                s.trim().to_ascii_lowercase().as_str(),
                "true" | "on" | "yes" | "1"
            )
        }
        _ => false,
    }
}

/// The methods to try, in order, for a new replica or a reinit.
pub fn replica_methods(
    local: &PostgresConfig,
    dynamic_pg: Option<&Map<String, Value>>,
    source: &Source<'_>,
) -> (Vec<ReplicaMethod>, Vec<String>) {
    let local_list = local
        .create_replica_methods
        .as_ref()
        .map(|l| Value::from(l.clone()));
    let names: Vec<String> =
        match effective(local_list.as_ref(), dynamic_pg, "create_replica_methods")
            .or_else(|| dynamic_pg.and_then(|d| d.get("create_replica_method")))
        {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|i| i.as_str().map(str::to_string))
                .collect(),
            Some(Value::String(s)) => s
                .split(',')
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect(),
            _ => Vec::new(),
        };
    let names = if names.is_empty() {
        vec![BASEBACKUP.to_string()]
    } else {
        names
    };
    // a method that cannot be run is reported and skipped: the others (basebackup) still can
    let mut methods = Vec::new();
    let mut problems = Vec::new();
    for name in names {
        if name == BASEBACKUP {
            methods.push(ReplicaMethod::Basebackup);
            continue;
        }
        let section = effective(local.methods.get(&name), dynamic_pg, &name)
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        match replica_command(&name, &section, source) {
            Ok(m) => methods.push(m),
            Err(e) => problems.push(format!("{e:#}")),
        }
    }
    (methods, problems)
}

/// The methods that can run without a leader: named methods with `no_leader` (a restore from a
/// backup), as Patroni filters them when a member must be built while nobody leads. Pg_basebackup
/// never can.
pub fn without_leader(methods: Vec<ReplicaMethod>) -> Vec<ReplicaMethod> {
    methods
        .into_iter()
        .filter(|m| {
            matches!(
                m,
                ReplicaMethod::Command {
                    no_leader: true,
                    ..
                }
            )
        })
        .collect()
}

/// Whether a member without data can be built while no leader runs: one of the methods it
/// would use (`create_replica_methods`, or `methods` when given: a standby cluster's) has
/// `no_leader`.
pub fn can_build_without_leader(
    local: &PostgresConfig,
    dynamic_pg: Option<&Map<String, Value>>,
    methods: Option<&[String]>,
) -> bool {
    let mut local = local.clone();
    if let Some(list) = methods {
        local.create_replica_methods = Some(list.to_vec());
    }
    let source = Source {
        scope: "",
        data_dir: "",
        connstring: "",
    };
    !without_leader(replica_methods(&local, dynamic_pg, &source).0).is_empty()
}

/// Whether `name` can be a PostgreSQL parameter in a configuration file (a letter or `_`,
/// then letters, digits, `_`, `.`): anything else could inject lines.
pub fn is_parameter_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

/// Whether a parameter is one pgpilot owns on a replica or that would stop, pause or promote
/// one (case does not matter to PostgreSQL).
pub fn replica_owned(name: &str) -> bool {
    REPLICA_OWNED.contains(&name.to_ascii_lowercase().as_str())
}

/// The values of a method's command line for the log: those of options whose name speaks of
/// a secret are replaced.
pub fn redacted(argv: &[String]) -> String {
    argv.iter()
        .map(|a| match a.split_once('=') {
            Some((k, _))
                if ["pass", "secret", "token", "key"]
                    .iter()
                    .any(|w| k.to_ascii_lowercase().contains(w))
                    && !k.contains("keep_") =>
            {
                format!("{k}=…")
            }
            _ => a.clone(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A custom replica method's command line: its `command` (shell words; the method's name when
/// it has none), then its other keys as `--key=value`, then — unless `no_params` —
/// `--scope`, `--role=replica`, `--datadir` and `--connstring`.
fn replica_command(
    name: &str,
    section: &Map<String, Value>,
    source: &Source<'_>,
) -> Result<ReplicaMethod> {
    let command = match section.get("command") {
        Some(Value::String(c)) => c.clone(),
        Some(_) => bail!("postgresql.{name}.command: expected a string"),
        None => name.to_string(),
    };
    let mut argv = shell_words::split(&command)
        .map_err(|e| anyhow!("postgresql.{name}.command {command:?}: {e}"))?;
    if argv.is_empty() {
        bail!("postgresql.{name}.command is empty");
    }
    let no_params = truthy(section.get("no_params"));
    let mut params: Vec<(String, String)> = section
        .iter()
        .filter(|(k, _)| k.as_str() != "command")
        .filter(|(k, _)| {
            !no_params || !matches!(k.as_str(), "keep_data" | "no_leader" | "no_params")
        })
        .map(|(k, v)| (k.clone(), param_value(v)))
        .collect();
    if !no_params {
        for (k, v) in [
            ("scope", source.scope),
            ("role", "replica"),
            ("datadir", source.data_dir),
            ("connstring", source.connstring),
        ] {
            params.retain(|(pk, _)| pk != k);
            params.push((k.to_string(), v.to_string()));
        }
    }
    argv.extend(params.into_iter().map(|(k, v)| format!("--{k}={v}")));
    Ok(ReplicaMethod::Command {
        name: name.to_string(),
        argv,
        keep_data: truthy(section.get("keep_data")),
        no_leader: truthy(section.get("no_leader")),
    })
}

/// The command line of a custom `bootstrap.method`: its `command` (shell words), its other
/// keys as `--key=value` (not the reserved ones), and unless `no_params` `--scope` and
/// `--datadir`.
pub fn bootstrap_command(
    name: &str,
    section: &Map<String, Value>,
    scope: &str,
    data_dir: &str,
) -> Result<Vec<String>> {
    let command = section
        .get("command")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("bootstrap.{name}.command is required"))?;
    let mut argv = shell_words::split(command)
        .map_err(|e| anyhow!("bootstrap.{name}.command {command:?}: {e}"))?;
    if argv.is_empty() {
        bail!("bootstrap.{name}.command is empty");
    }
    const RESERVED: &[&str] = &[
        "command",
        "no_params",
        "keep_existing_recovery_conf",
        "recovery_conf",
        "scope",
        "datadir",
    ];
    if !truthy(section.get("no_params")) {
        argv.push(format!("--scope={scope}"));
        argv.push(format!("--datadir={data_dir}"));
    }
    argv.extend(
        section
            .iter()
            .filter(|(k, _)| !RESERVED.contains(&k.as_str()))
            .map(|(k, v)| format!("--{k}={}", param_value(v))),
    );
    Ok(argv)
}

/// Whether a custom bootstrap keeps the recovery settings its command wrote.
pub fn keeps_existing_recovery_conf(section: &Map<String, Value>) -> bool {
    truthy(section.get("keep_existing_recovery_conf"))
}

/// Recovery settings pgpilot sets itself on a replica (or must never be set there): left out
/// of `recovery_conf` with a warning.
const REPLICA_OWNED: &[&str] = &[
    "primary_conninfo",
    "primary_slot_name",
    "standby_mode",
    "recovery_target",
    "recovery_target_name",
    "recovery_target_time",
    "recovery_target_xid",
    "recovery_target_lsn",
    "recovery_target_inclusive",
    "recovery_target_timeline",
    "recovery_target_action",
];

/// A replica's settings from `recovery_conf` (`restore_command`, `archive_cleanup_command`,
/// `recovery_min_apply_delay`, …) and the keys left out because pgpilot owns them on a
/// replica (the upstream, the slot, the timeline) or they would stop, pause or promote a
/// replica (the recovery targets).
pub fn replica_recovery_settings(
    local: &PostgresConfig,
    dynamic_pg: Option<&Map<String, Value>>,
) -> (Vec<(String, String)>, Vec<String>) {
    let local_conf = local
        .recovery_conf
        .as_ref()
        .map(|m| Value::Object(m.clone()));
    let Some(Value::Object(conf)) = effective(local_conf.as_ref(), dynamic_pg, "recovery_conf")
    else {
        return (Vec::new(), Vec::new());
    };
    let mut kept = Vec::new();
    let mut left_out = Vec::new();
    for (k, v) in conf {
        if v.is_null() {
            continue;
        }
        if replica_owned(k) || !is_parameter_name(k) {
            left_out.push(k.clone());
        } else {
            kept.push((k.clone(), shared::config::guc_value(v)));
        }
    }
    (kept, left_out)
}

/// Recovery settings PostgreSQL 12+ reads from its configuration files beside the ones of
/// [`REPLICA_OWNED`]: with them, every setting removed from `postgresql.auto.conf` after a
/// restore (a backup tool writes its own `restore_command` and targets there, which would
/// override pgpilot's).
const OTHER_RECOVERY_SETTINGS: &[&str] = &[
    "restore_command",
    "archive_cleanup_command",
    "recovery_end_command",
    "recovery_min_apply_delay",
    "promote_trigger_file",
];

fn is_recovery_setting(name: &str) -> bool {
    replica_owned(name) || OTHER_RECOVERY_SETTINGS.contains(&name)
}

/// `postgresql.auto.conf` without recovery settings; `None` when nothing changes.
pub fn without_recovery_settings(auto_conf: &str) -> Option<String> {
    let mut changed = false;
    let kept: Vec<&str> = auto_conf
        .lines()
        .filter(|l| {
            let name = l
                .trim_start()
                .split(|c: char| c == '=' || c.is_whitespace())
                .next()
                .unwrap_or("")
                .to_ascii_lowercase();
            let recovery = is_recovery_setting(&name);
            changed |= recovery;
            !recovery
        })
        .collect();
    changed.then(|| {
        let mut text = kept.join("\n");
        text.push('\n');
        text
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pg(methods: Option<&[&str]>, sections: Value) -> PostgresConfig {
        PostgresConfig {
            create_replica_methods: methods.map(|m| m.iter().map(|s| s.to_string()).collect()),
            methods: sections.as_object().cloned().unwrap_or_default(),
            ..Default::default()
        }
    }

    const SOURCE: Source<'static> = Source {
        scope: "demo",
        data_dir: "/data",
        connstring: "host=10.0.0.1 port=5432 user=replicator",
    };

    #[test]
    fn only_no_leader_methods_run_without_a_leader() {
        let local = pg(
            Some(&["pgbackrest", "wal_g", "basebackup"]),
            json!({"pgbackrest": {"command": "pgbackrest restore", "no_leader": "true"}, "wal_g": {"command": "restore"}}),
        );
        let (m, _) = replica_methods(&local, None, &SOURCE);
        let names: Vec<_> = without_leader(m)
            .iter()
            .map(|m| m.name().to_string())
            .collect();
        assert_eq!(names, ["pgbackrest"]);
        assert!(can_build_without_leader(&local, None, None));
        // basebackup alone, or a method without the key: a member waits for a leader
        assert!(!can_build_without_leader(&pg(None, json!({})), None, None));
        let plain = pg(
            Some(&["wal_g"]),
            json!({"wal_g": {"command": "restore", "no_leader": false}}),
        );
        assert!(!can_build_without_leader(&plain, None, None));
        // a standby cluster's own list replaces create_replica_methods
        assert!(!can_build_without_leader(
            &local,
            None,
            Some(&["basebackup".to_string()])
        ));
        // and the dynamic configuration may define the method
        let dynamic =
            json!({"create_replica_methods": ["br"], "br": {"command": "x", "no_leader": true}});
        assert!(can_build_without_leader(
            &pg(None, json!({})),
            dynamic.as_object(),
            None
        ));
    }

    #[test]
    fn basebackup_alone_by_default() {
        let (m, _) = replica_methods(&pg(None, json!({})), None, &SOURCE);
        assert_eq!(m, vec![ReplicaMethod::Basebackup]);
    }

    #[test]
    fn a_custom_method_gets_patroni_s_parameters() {
        let local = pg(
            Some(&["wal_g", "basebackup"]),
            json!({"wal_g": {"command": "/usr/bin/restore --fast 'a b'", "keep_data": true, "threads": 4}}),
        );
        let (m, _) = replica_methods(&local, None, &SOURCE);
        assert_eq!(m.len(), 2);
        let ReplicaMethod::Command {
            argv,
            keep_data,
            no_leader,
            ..
        } = &m[0]
        else {
            panic!("{m:?}")
        };
        assert!(*keep_data && !*no_leader);
        assert_eq!(
            argv,
            &[
                "/usr/bin/restore",
                "--fast",
                "a b",
                "--keep_data=True",
                "--threads=4",
                "--scope=demo",
                "--role=replica",
                "--datadir=/data",
                "--connstring=host=10.0.0.1 port=5432 user=replicator",
            ]
        );
        assert_eq!(m[1], ReplicaMethod::Basebackup);
    }

    #[test]
    fn no_params_passes_only_the_command() {
        // seed 000's pgbackrest method, from the dynamic configuration
        let dynamic = json!({
            "create_replica_methods": ["pgbackrest", "basebackup"],
            "pgbackrest": {
                "command": "/usr/bin/pgbackrest --stanza=patroni --log-level-file=detail --delta restore",
                "keep_data": true,
                "no_params": true
            }
        });
        let (m, _) = replica_methods(&pg(None, json!({})), dynamic.as_object(), &SOURCE);
        let ReplicaMethod::Command {
            argv, keep_data, ..
        } = &m[0]
        else {
            panic!("{m:?}")
        };
        assert!(*keep_data);
        assert_eq!(
            argv,
            &[
                "/usr/bin/pgbackrest",
                "--stanza=patroni",
                "--log-level-file=detail",
                "--delta",
                "restore"
            ]
        );
        // the member's own list wins over the dynamic one
        let local = pg(Some(&["basebackup"]), json!({}));
        let (m, _) = replica_methods(&local, dynamic.as_object(), &SOURCE);
        assert_eq!(m, vec![ReplicaMethod::Basebackup]);
    }

    #[test]
    fn a_method_without_a_section_runs_its_name() {
        let (m, _) = replica_methods(&pg(Some(&["my_clone"]), json!({})), None, &SOURCE);
        let ReplicaMethod::Command { argv, .. } = &m[0] else {
            panic!()
        };
        assert_eq!(argv[0], "my_clone");
        // a broken one is reported and skipped, basebackup still runs
        let broken = pg(
            Some(&["x", "basebackup"]),
            json!({"x": {"command": "restore 'unclosed"}}),
        );
        let (m, problems) = replica_methods(&broken, None, &SOURCE);
        assert_eq!(m, vec![ReplicaMethod::Basebackup]);
        assert!(problems[0].contains("postgresql.x.command"), "{problems:?}");
    }

    #[test]
    fn bootstrap_commands() {
        let section = json!({
            "command": "pgbackrest --stanza=s --type=time \"--target=2022-12-13 15:46:04\" restore",
            "no_params": true,
            "keep_existing_recovery_conf": true,
            "recovery_conf": {"recovery_target_action": "promote"}
        });
        let argv =
            bootstrap_command("pitr", section.as_object().unwrap(), "demo", "/data").unwrap();
        assert_eq!(
            argv,
            &[
                "pgbackrest",
                "--stanza=s",
                "--type=time",
                "--target=2022-12-13 15:46:04",
                "restore"
            ]
        );
        assert!(keeps_existing_recovery_conf(section.as_object().unwrap()));
        let section = json!({"command": "/restore.sh", "target": "x"});
        let argv =
            bootstrap_command("custom", section.as_object().unwrap(), "demo", "/data").unwrap();
        assert_eq!(
            argv,
            &[
                "/restore.sh",
                "--scope=demo",
                "--datadir=/data",
                "--target=x"
            ]
        );
    }

    #[test]
    fn recovery_settings_of_a_replica() {
        let local = PostgresConfig {
            recovery_conf: json!({
                "restore_command": "pgbackrest --stanza=s archive-get %f \"%p\"",
                "recovery_min_apply_delay": "5min",
                "recovery_target_time": "2024-01-01",
                "primary_conninfo": "host=x",
                "Recovery_Target_Action": "promote",
                "a.b = 1\nrecovery_target_action": "x"
            })
            .as_object()
            .cloned(),
            ..Default::default()
        };
        let (kept, left_out) = replica_recovery_settings(&local, None);
        assert_eq!(
            kept,
            vec![
                (
                    "restore_command".to_string(),
                    "pgbackrest --stanza=s archive-get %f \"%p\"".to_string()
                ),
                ("recovery_min_apply_delay".to_string(), "5min".to_string()),
            ]
        );
        assert_eq!(
            left_out,
            vec![
                "recovery_target_time",
                "primary_conninfo",
                "Recovery_Target_Action",
                "a.b = 1\nrecovery_target_action"
            ]
        );
        assert!(is_parameter_name("pg_stat_statements.max") && !is_parameter_name("9x"));
        assert_eq!(
            redacted(&[
                "restore".into(),
                "--repo-password=s3cr3t".into(),
                "--keep_data=True".into()
            ]),
            "restore --repo-password=… --keep_data=True"
        );
    }

    #[test]
    fn auto_conf_loses_recovery_settings_only() {
        let text = "# Do not edit this file manually!\nrestore_command = 'pgbackrest archive-get %f \"%p\"'\nwork_mem = '8MB'\nRecovery_Target_Time = 'x'\n";
        assert_eq!(
            without_recovery_settings(text).unwrap(),
            "# Do not edit this file manually!\nwork_mem = '8MB'\n"
        );
        assert_eq!(without_recovery_settings("work_mem = '8MB'\n"), None);
    }
}
