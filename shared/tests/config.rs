//! Configuration parsing against real Patroni YAML (from the seeds) and against bad files.

use shared::config::{Config, ConfigError};
use std::path::Path;

fn fixture(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    )
    .expect("fixture")
}

fn invalid_keys(yaml: &str) -> Vec<String> {
    match Config::from_yaml(yaml, "test.yml") {
        Err(ConfigError::Invalid(issues)) => issues.into_iter().map(|i| i.key).collect(),
        Err(other) => panic!("expected key errors, got {other}"),
        Ok(_) => panic!("expected an invalid config"),
    }
}

#[test]
fn vmware_seed_parses() {
    let c = Config::from_yaml(&fixture("vmware.yml"), "vmware.yml").unwrap();
    assert_eq!(c.scope, "patroni_cluster");
    assert_eq!(c.name, "pg1");
    assert_eq!(c.key_prefix(), "/service/patroni_cluster/");
    assert_eq!(c.etcd.hosts.len(), 3);
    assert_eq!(c.etcd.endpoints()[0], "http://10.0.0.1:2379");
    assert_eq!(c.restapi.api_url(), "http://10.0.0.11:8008/patroni");
    assert_eq!(
        c.postgresql.conn_url(),
        "postgres://10.0.0.11:5432/postgres"
    );
    assert_eq!(c.postgresql.replication.username, "replicator");
    assert_eq!(
        c.postgresql.rewind.as_ref().unwrap().username,
        "rewind_user"
    );
    assert_eq!(
        c.bootstrap.initdb,
        vec!["--encoding=UTF8", "--data-checksums"]
    );
    assert_eq!(c.bootstrap.pg_hba.len(), 2);
    assert_eq!(c.bootstrap.dcs["ttl"], 30);
    // 'on' stays a string when quoted; YAML 1.1 booleans are accepted unquoted
    assert_eq!(
        c.bootstrap.dcs["postgresql"]["parameters"]["hot_standby"],
        serde_json::json!("on")
    );
    assert!(!c.tags.no_failover());
    // the etcd (v2) section is read as etcd3, with a warning that says so
    assert!(
        c.warnings.iter().any(|w| w.key == "etcd"),
        "{:?}",
        c.warnings
    );
    // all-false boolean tags are not published
    assert!(c.tags.published().is_empty());
}

#[test]
fn cluster_in_a_box_seed_parses() {
    let c = Config::from_yaml(&fixture("cluster_in_a_box.yml"), "box.yml").unwrap();
    assert_eq!(c.key_prefix(), "/db/demo-cluster-1/");
    assert_eq!(
        c.restapi.authentication.as_ref().unwrap().username,
        "patroni"
    );
    assert_eq!(
        c.postgresql.local_host_port(),
        ("127.0.0.1".to_string(), 5432)
    );
    assert_eq!(
        c.postgresql.binary("pg_ctl"),
        Path::new("/usr/pgsql-14/bin/pg_ctl")
    );
    assert!(
        c.bootstrap
            .initdb
            .contains(&"--auth-host=scram-sha-256".to_string())
    );
    assert_eq!(c.tags.priority(), 1);
    // nofailover false is kept in the member tags when failover_priority is present
    assert_eq!(
        c.tags.published().get("nofailover"),
        Some(&serde_json::json!(false))
    );
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert_eq!(c.warnings[0].key, "tags.failover_priority");
}

#[test]
fn secrets_never_appear_in_debug_output() {
    let yaml = fixture("cluster_in_a_box.yml").replace(
        "      password: confidential\n",
        "      password: confidential\n      sslmode: verify-full\n      sslpassword: key-passphrase\n",
    );
    let c = Config::from_yaml(&yaml, "box.yml").unwrap();
    assert_eq!(
        c.postgresql.replication.options,
        vec![("sslmode".to_string(), "verify-full".to_string())]
    );
    let dbg = format!("{c:?}");
    for secret in [
        "mySupeSecretPassword",
        "confidential",
        "my-super-password",
        "rewind_password",
        "key-passphrase",
    ] {
        assert!(!dbg.contains(secret), "{secret} leaked");
    }
}

#[test]
fn environment_overrides_the_file() {
    let env = vec![
        ("PATRONI_NAME".to_string(), "from-env".to_string()),
        ("PATRONI_POSTGRESQL_DATA_DIR".into(), "/data/env".into()),
        ("PATRONI_REPLICATION_PASSWORD".into(), "env-pass".into()),
        ("PATRONI_RESTAPI_USERNAME".into(), "api".into()),
        ("PATRONI_RESTAPI_PASSWORD".into(), "api-pass".into()),
        (
            "PATRONI_ETCD3_HOSTS".into(),
            "['10.9.9.9:2379','10.9.9.8:2379']".into(),
        ),
        (
            "PATRONI_POSTGRESQL_BIN_PG_CTL".into(),
            "pg_ctl.custom".into(),
        ),
        ("UNRELATED".into(), "x".into()),
    ];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.yml");
    std::fs::write(&path, fixture("vmware.yml")).unwrap();
    let c = Config::load(Some(&path), env).unwrap();
    assert_eq!(c.name, "from-env");
    assert_eq!(c.postgresql.data_dir, Path::new("/data/env"));
    assert_eq!(
        c.postgresql.replication.password.as_ref().unwrap().expose(),
        "env-pass"
    );
    assert_eq!(c.restapi.authentication.as_ref().unwrap().username, "api");
    assert_eq!(c.etcd.hosts, vec!["10.9.9.9:2379", "10.9.9.8:2379"]);
    assert!(c.postgresql.binary("pg_ctl").ends_with("pg_ctl.custom"));
}

#[test]
fn patroni_configuration_variable_and_env_only() {
    let env = vec![("PATRONI_CONFIGURATION".to_string(), fixture("vmware.yml"))];
    assert_eq!(Config::load(None, env).unwrap().name, "pg1");

    let env: Vec<(String, String)> = [
        ("PATRONI_SCOPE", "s"),
        ("PATRONI_NAME", "n"),
        ("PATRONI_RESTAPI_LISTEN", "127.0.0.1:8008"),
        ("PATRONI_RESTAPI_CONNECT_ADDRESS", "127.0.0.1:8008"),
        ("PATRONI_ETCD3_HOSTS", "127.0.0.1:2379"),
        ("PATRONI_POSTGRESQL_LISTEN", "127.0.0.1:5432"),
        ("PATRONI_POSTGRESQL_CONNECT_ADDRESS", "127.0.0.1:5432"),
        ("PATRONI_POSTGRESQL_DATA_DIR", "/d"),
        ("PATRONI_SUPERUSER_USERNAME", "postgres"),
        ("PATRONI_REPLICATION_USERNAME", "rep"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let c = Config::load(None, env).unwrap();
    assert_eq!(c.scope, "s");
    assert!(matches!(
        Config::load(None, Vec::new()),
        Err(ConfigError::Missing)
    ));
}

#[test]
fn directory_of_files_is_merged_in_order() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("00-base.yml"), fixture("vmware.yml")).unwrap();
    std::fs::write(
        dir.path().join("10-local.yaml"),
        "name: override\npostgresql:\n  data_dir: /x\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("README"), "not yaml: [").unwrap();
    let c = Config::load(Some(dir.path()), Vec::new()).unwrap();
    assert_eq!(c.name, "override");
    assert_eq!(c.postgresql.data_dir, Path::new("/x"));
    assert_eq!(c.postgresql.listen, "10.0.0.11:5432");
}

#[test]
fn invalid_yaml_names_the_line() {
    let err = Config::from_yaml("scope: a\nname: [unclosed\n  x: y\n", "bad.yml").unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with("bad.yml: invalid YAML"), "{msg}");
    assert!(msg.contains("line"), "{msg}");
    assert!(matches!(
        Config::from_yaml("- a\n- b\n", "list.yml"),
        Err(ConfigError::NotAMapping { .. })
    ));
}

#[test]
fn missing_and_wrong_keys_are_all_reported() {
    let yaml = fixture("vmware.yml")
        .replace("  data_dir: /var/lib/pgsql/data\n", "")
        .replace("listen: '10.0.0.11:8008'", "listen: 'no-port-here'")
        .replace("    ttl: 30\n", "    ttl: 2\n")
        .replace("  nofailover: false\n", "  nofailover: maybe\n");
    let keys = invalid_keys(&yaml);
    for k in ["postgresql.data_dir", "restapi.listen"] {
        assert!(keys.contains(&k.to_string()), "{k} not in {keys:?}");
    }
    // a ttl below pgpilot's minimum is raised with a warning, as Patroni raises its own
    let low = fixture("vmware.yml").replace("    ttl: 30\n", "    ttl: 2\n");
    let c = Config::from_yaml(&low, "low.yml").unwrap();
    let w = c
        .warnings
        .iter()
        .find(|w| w.key == "bootstrap.dcs.ttl")
        .expect("the ttl is named");
    assert!(
        w.message.contains("below pgpilot's minimums"),
        "{}",
        w.message
    );
    // a tag Patroni takes by truthiness is taken, and what it means is said
    assert!(!keys.contains(&"tags.nofailover".to_string()), "{keys:?}");
    let tags = fixture("vmware.yml").replace("  nofailover: false\n", "  nofailover: 'false'\n");
    let c = Config::from_yaml(&tags, "t.yml").unwrap();
    assert!(
        c.tags.no_failover(),
        "the string 'false' is true, as in Patroni"
    );
    let w = c
        .warnings
        .iter()
        .find(|w| w.key == "tags.nofailover")
        .expect("warned about");
    assert!(w.message.contains("without quotes"), "{}", w.message);
}

#[test]
fn required_sections_and_unsupported_stores() {
    let keys = invalid_keys("scope: a\nname: b\n");
    for k in ["restapi", "postgresql", "etcd3"] {
        assert!(keys.contains(&k.to_string()), "{k} not in {keys:?}");
    }
    // an etcd3 section renamed raft: the keys raft needs are named
    let raft = fixture("cluster_in_a_box.yml").replace("etcd3:", "raft:");
    let keys = invalid_keys(&raft);
    for k in ["raft.self_addr", "raft.data_dir"] {
        assert!(keys.contains(&k.to_string()), "{k} not in {keys:?}");
    }
    let consul = fixture("cluster_in_a_box.yml").replace("etcd3:", "consul:");
    assert!(invalid_keys(&consul).contains(&"consul".to_string()));
    let both =
        fixture("cluster_in_a_box.yml").replace("  nofailover: false\n", "  nofailover: true\n");
    let c = Config::from_yaml(&both, "both.yml").unwrap();
    assert!(
        c.tags.no_failover(),
        "an explicit nofailover wins over failover_priority"
    );
    let forbidden = fixture("vmware.yml").replace("    - data-checksums\n", "    - pgdata: /x\n");
    assert!(invalid_keys(&forbidden).contains(&"bootstrap.initdb[1]".to_string()));
}

#[test]
fn unsupported_tls_is_refused_clearly() {
    let yaml = fixture("cluster_in_a_box.yml").replace(
        "    password: mySupeSecretPassword\n",
        "    password: mySupeSecretPassword\n  certfile: /etc/ssl/api.pem\n  keyfile_password: x\n  verify_client: required\n",
    );
    let keys = invalid_keys(&yaml);
    // verify_client without cafile is refused; keyfile_password is read
    assert!(
        !keys.contains(&"restapi.keyfile_password".to_string()),
        "{keys:?}"
    );
    assert!(
        keys.contains(&"restapi.verify_client".to_string()),
        "{keys:?}"
    );
    assert!(!keys.contains(&"restapi.certfile".to_string()), "{keys:?}");
}

#[test]
fn etcd_over_tls_is_read_as_patroni_writes_it() {
    // https:// endpoints
    let yaml = fixture("cluster_in_a_box.yml")
        .replace("    - 192.0.2.1:2379\n", "    - https://192.0.2.1:2379\n");
    let c = Config::from_yaml(&yaml, "t.yml").unwrap();
    assert!(c.etcd.tls());
    assert!(c.etcd.endpoints().iter().all(|e| e.starts_with("https://")));
    // protocol: https with host:port endpoints, CA and client certificate
    let yaml = fixture("cluster_in_a_box.yml").replace(
        "etcd3:\n",
        "etcd3:\n  protocol: https\n  cacert: /etc/etcd/ca.pem\n  cert: /etc/etcd/client.pem\n  key: /etc/etcd/client.key\n",
    );
    let c = Config::from_yaml(&yaml, "t.yml").unwrap();
    assert!(c.etcd.endpoints().iter().all(|e| e.starts_with("https://")));
    assert_eq!(
        c.etcd.cacert.as_deref(),
        Some(std::path::Path::new("/etc/etcd/ca.pem"))
    );
    assert!(c.etcd.cert.is_some() && c.etcd.key.is_some());
    assert!(!c.warnings.iter().any(|w| w.key.starts_with("etcd3.c")));
    // a CA without TLS, a key without a certificate, mixed schemes: refused by key
    let plain_ca =
        fixture("cluster_in_a_box.yml").replace("etcd3:\n", "etcd3:\n  cacert: /etc/etcd/ca.pem\n");
    assert!(invalid_keys(&plain_ca).contains(&"etcd3.cacert".to_string()));
    let key_only = fixture("cluster_in_a_box.yml").replace(
        "etcd3:\n",
        "etcd3:\n  protocol: https\n  key: /etc/etcd/client.key\n",
    );
    assert!(invalid_keys(&key_only).contains(&"etcd3.key".to_string()));
    let mixed = fixture("cluster_in_a_box.yml").replace(
        "    - 192.0.2.1:2379\n",
        "    - https://192.0.2.1:2379\n    - http://192.0.2.2:2379\n",
    );
    assert!(
        invalid_keys(&mixed)
            .iter()
            .any(|k| k.starts_with("etcd3.hosts["))
    );
    // credentials in a URL are taken out of the endpoint
    let url = fixture("cluster_in_a_box.yml").replace(
        "etcd3:\n",
        "etcd3:\n  protocol: https\n  url: https://pat:s3cret@192.0.2.9:2379\n",
    );
    let c = Config::from_yaml(&url, "t.yml").unwrap();
    assert_eq!(c.etcd.username.as_deref(), Some("pat"));
    assert_eq!(c.etcd.password.as_ref().map(|p| p.expose()), Some("s3cret"));
    assert!(
        c.etcd.hosts.iter().all(|h| !h.contains('@')),
        "{:?}",
        c.etcd.hosts
    );
    assert!(
        c.etcd
            .endpoints()
            .contains(&"https://192.0.2.9:2379".to_string())
    );
}
#[test]
fn rest_tls_settings_are_read() {
    let yaml = fixture("cluster_in_a_box.yml").replace(
        "    password: mySupeSecretPassword\n",
        "    password: mySupeSecretPassword\n  certfile: /etc/ssl/api.pem\n  keyfile: /etc/ssl/api.key\n  cafile: /etc/ssl/ca.pem\nctl:\n  insecure: true\n",
    );
    let c = Config::from_yaml(&yaml, "t.yml").unwrap();
    assert!(c.restapi.api_url().starts_with("https://"));
    assert_eq!(c.restapi.keyfile.as_deref(), Some("/etc/ssl/api.key"));
    assert_eq!(
        c.rest_client_tls.cacert.as_deref(),
        Some(std::path::Path::new("/etc/ssl/ca.pem"))
    );
    assert!(c.rest_client_tls.insecure);
    // a key without a certificate is refused
    let keyonly = fixture("cluster_in_a_box.yml").replace(
        "    password: mySupeSecretPassword\n",
        "    password: mySupeSecretPassword\n  keyfile: /etc/ssl/api.key\n",
    );
    assert!(invalid_keys(&keyonly).contains(&"restapi.keyfile".to_string()));
}

#[test]
fn unknown_keys_are_warnings() {
    let yaml = format!(
        "{}\nmystery: 1\npostgresql_typo: {{}}\n",
        fixture("vmware.yml")
    )
    .replace(
        "  pgpass: /tmp/pgpass0\n",
        "  pgpass: /tmp/pgpass0\n  data_dri: /oops\n",
    );
    let c = Config::from_yaml(&yaml, "t.yml").unwrap();
    let keys: Vec<&str> = c.warnings.iter().map(|w| w.key.as_str()).collect();
    assert!(keys.contains(&"mystery"), "{keys:?}");
    assert!(keys.contains(&"postgresql.data_dri"), "{keys:?}");
    // free-form sections never warn: no PostgreSQL parameter is reported
    assert!(!keys.iter().any(|k| k.contains("parameters")), "{keys:?}");
    // a key of bootstrap.dcs pgpilot does not know is a warning too
    let typo = fixture("vmware.yml").replace(
        "    loop_wait: 10\n",
        "    loop_wait: 10\n    loop_wiat: 5\n",
    );
    let c = Config::from_yaml(&typo, "t.yml").unwrap();
    assert!(
        c.warnings
            .iter()
            .any(|w| w.key == "bootstrap.dcs.loop_wiat"),
        "{:?}",
        c.warnings
    );
}

/// The vmware seed's `bootstrap.dcs` with `extra` (indented lines) added to it.
fn with_dcs(extra: &str) -> String {
    fixture("vmware.yml").replace(
        "    maximum_lag_on_failover: 1048576\n",
        &format!("    maximum_lag_on_failover: 1048576\n{extra}"),
    )
}

fn issues(yaml: &str) -> Vec<shared::config::ConfigIssue> {
    match Config::from_yaml(yaml, "t.yml") {
        Err(ConfigError::Invalid(issues)) => issues,
        other => panic!("expected an invalid config, got {other:?}"),
    }
}

#[test]
fn a_standby_cluster_is_read_and_a_broken_one_refused() {
    let yaml = with_dcs("    standby_cluster:\n      host: 10.1.0.11\n      port: 5432\n");
    let c = Config::from_yaml(&yaml, "t.yml").unwrap();
    assert!(
        !c.warnings.iter().any(|w| w.key.contains("standby_cluster")),
        "{:?}",
        c.warnings
    );
    let dynamic = shared::dcs::DynamicConfig {
        raw: c.bootstrap.dcs.clone(),
    };
    let sc = dynamic.standby_cluster().expect("a standby cluster");
    assert_eq!(sc.address().as_deref(), Some("10.1.0.11:5432"));
    // restore_command alone makes a standby cluster too
    let dynamic = shared::dcs::DynamicConfig {
        raw: serde_json::json!({"standby_cluster": {"restore_command": "cp /wal/%f %p"}})
            .as_object()
            .cloned()
            .unwrap(),
    };
    assert!(
        dynamic
            .standby_cluster()
            .is_some_and(|s| s.address().is_none())
    );
    // a section that asks for nothing (blank values) is not a standby cluster
    let yaml = with_dcs("    standby_cluster:\n      host: ''\n      port: ''\n");
    let c = Config::from_yaml(&yaml, "t.yml").unwrap();
    let dynamic = shared::dcs::DynamicConfig {
        raw: c.bootstrap.dcs.clone(),
    };
    assert!(dynamic.standby_cluster().is_none());
    // a port that is no port is refused by name
    let yaml = with_dcs("    standby_cluster:\n      host: h\n      port: 99999\n");
    assert!(invalid_keys(&yaml).contains(&"bootstrap.dcs.standby_cluster".to_string()));
}

#[test]
fn citus_is_refused_by_name() {
    let yaml = format!(
        "{}\ncitus:\n  group: 0\n  database: citus\n",
        fixture("vmware.yml")
    );
    let refused = issues(&yaml);
    let issue = refused
        .iter()
        .find(|i| i.key == "citus")
        .unwrap_or_else(|| panic!("citus not named: {refused:?}"));
    assert!(issue.message.contains("not supported"), "{}", issue.message);
}

#[test]
fn dynamic_keys_pgpilot_does_not_act_on_are_warnings_that_name_them() {
    let yaml = with_dcs(
        "    maximum_lag_on_syncnode: 1048576\n    primary_stop_timeout: 30\n    max_timelines_history: 10\n    ignore_slots:\n      - {name: keep_me, type: physical}\n",
    );
    let c = Config::from_yaml(&yaml, "t.yml").unwrap();
    let find = |key: &str| {
        c.warnings
            .iter()
            .find(|w| w.key == key)
            .map(|w| w.message.clone())
            .unwrap_or_else(|| panic!("no warning for {key}: {:?}", c.warnings))
    };
    // the seed's permanent slot is applied: no warning
    assert!(
        !c.warnings
            .iter()
            .any(|w| w.key.starts_with("bootstrap.dcs.slots")),
        "{:?}",
        c.warnings
    );
    // maximum_lag_on_syncnode is applied (synchronous standbys too far behind are replaced)
    assert!(
        !c.warnings
            .iter()
            .any(|w| w.key.contains("maximum_lag_on_syncnode")),
        "{:?}",
        c.warnings
    );
    assert!(find("bootstrap.dcs.primary_stop_timeout").contains("pg_ctl_timeout"));
    assert!(find("bootstrap.dcs.max_timelines_history").contains("every timeline"));
    // ignore_slots is applied (by the slot cleanup): no warning
    assert!(
        !c.warnings.iter().any(|w| w.key.contains("ignore_slots")),
        "{:?}",
        c.warnings
    );
    // the values that switch these off ask for what pgpilot does: no warning
    let off = with_dcs(
        "    maximum_lag_on_syncnode: -1\n    primary_stop_timeout: 0\n    max_timelines_history: 0\n",
    )
    .replace(
        "    slots:\n      patroni_standby_leader:\n        type: physical\n",
        "    slots: {}\n",
    );
    let c = Config::from_yaml(&off, "t.yml").unwrap();
    assert!(
        !c.warnings
            .iter()
            .any(|w| w.key.starts_with("bootstrap.dcs")),
        "{:?}",
        c.warnings
    );
}

#[test]
fn the_dynamic_configuration_from_etcd_gets_the_same_notes() {
    use shared::config::{NoteLevel, dynamic_key_notes};
    let raw = |json: &str| match serde_json::from_str::<serde_json::Value>(json) {
        Ok(serde_json::Value::Object(m)) => m,
        other => panic!("not an object: {other:?}"),
    };
    let notes = dynamic_key_notes(&raw(
        r#"{"ttl":30,"loop_wait":10,"standby_cluster":{"host":"10.1.0.11","port":5432},
            "slots":{"keep":{"type":"physical"}},"ignore_slots":[{"name":"x"}],
            "maximum_lag_on_syncnode":1000,"master_stop_timeout":5,"max_timelines_history":3,
            "synchronous_mode":"quorum","postgresql":{"use_slots":true,"pg_ident":["a b c"],
            "parameters":{"max_connections":100}},"mystery":1}"#,
    ));
    let level = |key: &str| {
        notes
            .iter()
            .find(|n| n.key == key)
            .map(|n| n.level)
            .unwrap_or_else(|| panic!("no note for {key}: {notes:?}"))
    };
    for key in [
        "master_stop_timeout",
        "max_timelines_history",
        "postgresql.pg_ident",
        "mystery",
    ] {
        assert_eq!(level(key), NoteLevel::Warning, "{key}");
    }
    // a standby cluster, a valid permanent slot and quorum commit are applied: no note
    assert_eq!(notes.len(), 4, "{notes:?}");
    // what pgpilot applies gets no note
    assert!(
        dynamic_key_notes(&raw(
            r#"{"ttl":30,"pause":true,"ignore_slots":[],"postgresql":{"use_pg_rewind":true}}"#
        ))
        .is_empty()
    );
    // console edit-config and PATCH /config take a standby cluster, refuse a broken one
    assert!(shared::ops::check_config(&raw(r#"{"standby_cluster":{"host":"h"}}"#)).is_ok());
    let err = shared::ops::check_config(&raw(r#"{"standby_cluster":{"host":"h","port":"x"}}"#))
        .expect_err("refused");
    assert!(err.to_string().contains("standby_cluster"), "{err}");
    assert!(shared::ops::check_config(&raw(r#"{"slots":{"a":{"type":"physical"}}}"#)).is_ok());
}

#[test]
fn wrong_bin_dir_is_reported_by_the_environment_check() {
    let yaml = fixture("vmware.yml").replace(
        "  pgpass: /tmp/pgpass0\n",
        "  pgpass: /tmp/pgpass0\n  bin_dir: /nonexistent/bin\n",
    );
    let c = Config::from_yaml(&yaml, "t.yml").unwrap();
    let issues = c.check_environment();
    assert!(
        issues.iter().any(|i| i.key == "postgresql.bin_dir"),
        "{issues:?}"
    );
}

#[test]
fn timing_must_leave_room_for_a_missed_loop_and_two_retries() {
    // ttl 20 < loop_wait 10 + 2 × retry_timeout 10: accepted and adjusted as Patroni does
    let yaml = fixture("vmware.yml").replace("    ttl: 30\n", "    ttl: 20\n");
    let c = Config::from_yaml(&yaml, "t.yml").unwrap();
    let ttl = c
        .warnings
        .iter()
        .find(|i| i.key == "bootstrap.dcs.ttl")
        .expect("the ttl is named");
    assert_eq!(
        ttl.message,
        "ttl 20 is below loop_wait 10 + 2 × retry_timeout 10: using loop_wait 1 and retry_timeout 9 (lowered as Patroni does)"
    );
    let t = shared::dcs::DynamicConfig::parse(&serde_json::to_string(&c.bootstrap.dcs).unwrap())
        .unwrap()
        .timing();
    assert_eq!((t.ttl, t.loop_wait, t.retry_timeout), (20, 1, 9));
    // Patroni's own example: ttl 20, loop_wait 2, retry_timeout 10
    let t = shared::dcs::DynamicConfig::parse(r#"{"ttl":20,"loop_wait":2,"retry_timeout":10}"#)
        .unwrap()
        .timing();
    assert_eq!((t.loop_wait, t.retry_timeout), (1, 9));
    // only loop_wait needs to go down: ttl 30, loop_wait 15, retry_timeout 10 → loop_wait 10
    let t = shared::dcs::DynamicConfig::parse(r#"{"ttl":30,"loop_wait":15,"retry_timeout":10}"#)
        .unwrap()
        .timing();
    assert_eq!((t.loop_wait, t.retry_timeout), (10, 10));
    // the fastest timing pgpilot supports is accepted
    let fast = fixture("vmware.yml")
        .replace("    ttl: 30\n", "    ttl: 5\n")
        .replace("    loop_wait: 10\n", "    loop_wait: 1\n")
        .replace("    retry_timeout: 10\n", "    retry_timeout: 1\n");
    let c = Config::from_yaml(&fast, "fast.yml").unwrap();
    assert_eq!(c.bootstrap.dcs["ttl"], 5);
}

#[test]
fn watchdog_settings_are_read_as_patroni_does() {
    use shared::config::WatchdogMode;
    let base = fixture("vmware.yml");
    let c = Config::from_yaml(&base, "t.yml").unwrap();
    assert_eq!(c.watchdog.mode, WatchdogMode::Automatic);
    assert_eq!(c.watchdog.device, std::path::Path::new("/dev/watchdog"));
    assert_eq!(c.watchdog.timeout(30), 25);
    let yaml = format!(
        "{base}\nwatchdog:\n  mode: require\n  device: /dev/watchdog1\n  safety_margin: -1\n"
    );
    let c = Config::from_yaml(&yaml, "t.yml").unwrap();
    assert_eq!(c.watchdog.mode, WatchdogMode::Required);
    assert_eq!(c.watchdog.timeout(30), 15);
    let off = format!("{base}\nwatchdog:\n  mode: false\n");
    assert_eq!(
        Config::from_yaml(&off, "t.yml").unwrap().watchdog.mode,
        WatchdogMode::Off
    );
    for bad in ["mode: sometimes", "safety_margin: -5", "driver: magic"] {
        let yaml = format!("{base}\nwatchdog:\n  {bad}\n");
        let key = format!("watchdog.{}", bad.split(':').next().unwrap());
        assert!(invalid_keys(&yaml).contains(&key), "{bad}");
    }
}

#[test]
fn patroni_keys_pgpilot_does_not_act_on_are_warnings_that_say_so() {
    let yaml = format!("{}\nlog:\n  dir: /var/log/patroni\n", fixture("vmware.yml"))
        .replace("restapi:\n", "restapi:\n  allowlist: [10.0.0.0/8]\n");
    let c = Config::from_yaml(&yaml, "t.yml").unwrap();
    let find = |key: &str| {
        c.warnings
            .iter()
            .find(|w| w.key == key)
            .map(|w| w.message.clone())
            .unwrap_or_else(|| panic!("no warning for {key}: {:?}", c.warnings))
    };
    assert!(find("log.dir").contains("stderr"));
    // the allowlist is enforced now: read, never warned about nor reported as unknown
    assert_eq!(c.restapi.allowlist, vec!["10.0.0.0/8".to_string()]);
    assert!(
        !c.warnings
            .iter()
            .any(|w| w.key.starts_with("restapi.allowlist"))
    );
}

#[test]
fn the_allowlist_is_read_from_the_file_and_the_environment_list() {
    let yaml = fixture("vmware.yml").replace(
        "restapi:\n",
        "restapi:\n  allowlist: ['10.0.0.1', db2.example.com, 10.1.0.0/16]\n  allowlist_include_members: true\n",
    );
    let c = Config::from_yaml(&yaml, "t.yml").unwrap();
    assert_eq!(
        c.restapi.allowlist,
        vec!["10.0.0.1", "db2.example.com", "10.1.0.0/16"]
    );
    assert!(c.restapi.allowlist_include_members);
}

#[test]
fn an_encrypted_pkcs8_key_is_decrypted_with_its_passphrase() {
    use shared::api::private_key_pem;
    use shared::config::Secret;
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/encrypted_key.pem");
    let pem = private_key_pem(&path, Some(&Secret::new("fixture-pass"))).unwrap();
    assert!(
        String::from_utf8(pem)
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----")
    );
    let wrong = private_key_pem(&path, Some(&Secret::new("nope"))).unwrap_err();
    assert!(wrong.contains("wrong passphrase"), "{wrong}");
    let none = private_key_pem(&path, None).unwrap_err();
    assert!(none.contains("keyfile_password"), "{none}");
    // a traditional OpenSSL encrypted key is refused with the way out
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old.pem");
    std::fs::write(
        &old,
        "-----BEGIN EC PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-256-CBC,00\n\nAAAA\n-----END EC PRIVATE KEY-----\n",
    )
    .unwrap();
    assert!(
        private_key_pem(&old, None)
            .unwrap_err()
            .contains("openssl pkcs8 -topk8")
    );
}

#[test]
fn extra_headers_are_read_and_checked() {
    let with = |extra: &str, tls: bool| {
        let cert = if tls {
            "  certfile: /etc/ssl/api.pem\n"
        } else {
            ""
        };
        fixture("vmware.yml").replace("restapi:\n", &format!("restapi:\n{cert}{extra}"))
    };
    let headers = "  http_extra_headers:\n    X-Frame-Options: SAMEORIGIN\n  https_extra_headers:\n    Strict-Transport-Security: max-age=31536000\n";
    let plain = Config::from_yaml(&with(headers, false), "t.yml").unwrap();
    assert_eq!(
        plain.restapi.extra_headers(),
        vec![("X-Frame-Options".to_string(), "SAMEORIGIN".to_string())]
    );
    assert!(
        plain
            .warnings
            .iter()
            .all(|w| !w.key.contains("extra_headers"))
    );
    // with TLS the https ones are sent too, as Patroni merges them
    let tls = Config::from_yaml(&with(headers, true), "t.yml").unwrap();
    assert_eq!(tls.restapi.extra_headers().len(), 2);
    // a broken name or a value with a line break is refused by name
    let keys = invalid_keys(&with(
        "  http_extra_headers:\n    'Bad Name': x\n    X-Ok: \"a\\r\\nInjected: 1\"\n    Content-Length: 0\n",
        false,
    ));
    for k in ["Bad Name", "X-Ok", "Content-Length"] {
        assert!(
            keys.contains(&format!("restapi.http_extra_headers.{k}")),
            "{k}: {keys:?}"
        );
    }
}

/// Seed 004's `raft:` section: each agent runs an etcd member with these peers; the client
/// port stays on loopback; pysyncobj's own tunables are warned about by name.
#[test]
fn a_raft_section_as_the_seed_writes_it() {
    let raft = "raft:\n  data_dir: /var/lib/raft\n  self_addr: \"10.0.0.1:5010\"\n  partner_addrs: ['10.0.0.2:5010','10.0.0.3:5010']\n  max_timeout: 2\n  append_entries_period: 0.2\n  min_timeout: 1\n  connection_timeout: 5\n";
    let yaml = fixture("cluster_in_a_box.yml").replace(
        "etcd3:\n  hosts:\n    - 192.0.2.1:2379\n    - 192.0.2.2:2379\n",
        raft,
    );
    assert!(yaml.contains("raft:"), "fixture changed: {yaml}");
    let c = Config::from_yaml(&yaml, "raft.yml").unwrap();
    let r = c.raft.as_ref().unwrap();
    assert_eq!(r.self_addr, "10.0.0.1:5010");
    assert_eq!(r.partner_addrs, ["10.0.0.2:5010", "10.0.0.3:5010"]);
    assert_eq!(r.client_port, 5011);
    assert_eq!((r.election_ms, r.heartbeat_ms), (Some(2000), Some(200)));
    assert_eq!(c.etcd.hosts, ["127.0.0.1:5011"]);
    assert_eq!(
        r.members(),
        ["10.0.0.1:5010", "10.0.0.2:5010", "10.0.0.3:5010"]
    );
    let warned: Vec<&str> = c.warnings.iter().map(|w| w.key.as_str()).collect();
    for k in ["raft.min_timeout", "raft.connection_timeout"] {
        assert!(warned.contains(&k), "{k} not warned: {warned:?}");
    }
    // the seed's variable form
    let env = vec![
        (
            "PATRONI_RAFT_SELF_ADDR".to_string(),
            "10.0.0.9:6000".to_string(),
        ),
        (
            "PATRONI_RAFT_PARTNER_ADDRS".to_string(),
            "'10.0.0.2:5010','10.0.0.3:5010'".to_string(),
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.yml");
    std::fs::write(&path, &yaml).unwrap();
    let c = Config::load(Some(&path), env).unwrap();
    let r = c.raft.unwrap();
    assert_eq!(r.self_addr, "10.0.0.9:6000");
    assert_eq!(r.partner_addrs, ["10.0.0.2:5010", "10.0.0.3:5010"]);
    // raft and etcd3 together: refused, both named
    let both = format!("{yaml}\netcd3:\n  hosts: 127.0.0.1:2379\n");
    assert!(invalid_keys(&both).contains(&"etcd3".to_string()));
    // elections quicker than five heartbeats: refused
    let fast = yaml.replace("max_timeout: 2", "max_timeout: 0.5");
    assert!(invalid_keys(&fast).contains(&"raft.max_timeout".to_string()));
    // the members' TLS: all three files or none, the missing one named
    let tls = yaml.replace(
        "  max_timeout: 2\n",
        "  max_timeout: 2\n  cacert: /etc/ca.pem\n  cert: /etc/m.pem\n  key: /etc/m.key\n",
    );
    let r = Config::from_yaml(&tls, "raft.yml").unwrap().raft.unwrap();
    assert_eq!(r.peer_url("10.0.0.2:5010"), "https://10.0.0.2:5010");
    let partial = yaml.replace(
        "  max_timeout: 2\n",
        "  max_timeout: 2\n  cacert: /etc/ca.pem\n",
    );
    let keys = invalid_keys(&partial);
    assert!(
        keys.contains(&"raft.cert".to_string()) && keys.contains(&"raft.key".to_string()),
        "{keys:?}"
    );
    // the console reads a member's YAML: the local member's client port
    let console = shared::config::ConsoleConfig::from_yaml(&yaml, "raft.yml").unwrap();
    assert_eq!(console.etcd.hosts, ["127.0.0.1:5011"]);
    // raft.password: the members' TLS is derived from it, so an empty one is refused and a
    // short one warned about
    let pw = |p: &str| {
        yaml.replace(
            "  max_timeout: 2\n",
            &format!("  max_timeout: 2\n  password: '{p}'\n"),
        )
    };
    assert!(invalid_keys(&pw("")).contains(&"raft.password".to_string()));
    let c = Config::from_yaml(&pw("short"), "raft.yml").unwrap();
    assert!(
        c.warnings.iter().any(|w| w.key == "raft.password"),
        "{:?}",
        c.warnings
    );
    let c = Config::from_yaml(&pw("a-long-random-password-1234"), "raft.yml").unwrap();
    assert!(!c.warnings.iter().any(|w| w.key == "raft.password"));
    // a witness's YAML: what its raft section has that it does not use is warned about too
    let path = dir.path().join("w.yml");
    std::fs::write(
        &path,
        "scope: main\nrestapi:\n  listen: 1.2.3.4:8008\nraft:\n  data_dir: /var/lib/raft\n  self_addr: 10.0.0.3:5010\n  partner_addrs: ['10.0.0.1:5010']\n  min_timeout: 1\n  bogus: 2\n",
    )
    .unwrap();
    let (scope, r, warnings) =
        shared::config::RaftConfig::load_witness(&path, Vec::<(String, String)>::new()).unwrap();
    assert_eq!(
        (scope.as_str(), r.self_addr.as_str()),
        ("main", "10.0.0.3:5010")
    );
    let warned: Vec<&str> = warnings.iter().map(|w| w.key.as_str()).collect();
    assert!(
        warned.contains(&"raft.min_timeout") && warned.contains(&"raft.bogus"),
        "{warned:?}"
    );
    assert!(
        !warned.iter().any(|k| k.starts_with("restapi")),
        "{warned:?}"
    );
}
