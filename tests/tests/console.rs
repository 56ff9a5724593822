//! End-to-end `console --batch`: every read command against a real pgpilot cluster and against a
//! cluster run by real Patroni in the same etcd, compared with `patronictl`'s view of the same
//! cluster; bad input and etcd down give the documented exit codes and messages.

use pgpilot_e2e::*;
use serde_json::Value;
use std::time::Duration;

const HEALTHY: Duration = Duration::from_secs(120);

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// `patronictl -c CONFIG ARGS…` → stdout (it must succeed).
fn patronictl(config: &std::path::Path, args: &[&str]) -> Option<String> {
    let ctl = patroni_program("patronictl")?;
    let out = std::process::Command::new(ctl)
        .arg("-c")
        .arg(config)
        .args(args)
        .output()
        .ok()?;
    assert!(
        out.status.success(),
        "patronictl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `console -c CONFIG --batch ARGS…`, which must succeed; stdout.
fn batch(config: &std::path::Path, args: &[&str]) -> String {
    let mut all = vec!["-c", config.to_str().unwrap(), "--batch"];
    all.extend_from_slice(args);
    let (code, out, err) = console(&all).unwrap();
    assert_eq!(code, 0, "console {args:?} failed: {err}");
    out
}

/// The columns both tools agree on at any instant (lag moves between two reads).
fn stable(rows: &Value) -> Vec<Vec<String>> {
    let mut v: Vec<Vec<String>> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            ["Cluster", "Member", "Host", "Role", "State", "TL"]
                .iter()
                .map(|k| match &r[*k] {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect()
        })
        .collect();
    v.sort();
    v
}

/// Member, Host, Role, State and TL of each row of a pretty table.
fn table_cells(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| Member"))
        .map(|l| {
            l.split('|')
                .skip(1)
                .take(5)
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect()
}

/// Compares the read commands of the console and patronictl on one cluster.
fn compare_with_patronictl(config: &std::path::Path) {
    if patronictl_or_skip("so the console was not compared with it").is_none() {
        return;
    }
    // both read the same keys; a member may change state between the two reads, so compare
    // until they agree (a real difference never does)
    let mut theirs = patronictl(config, &["list", "-f", "json"]);
    wait_for(
        "console and patronictl to agree on list",
        Duration::from_secs(30),
        || {
            let t = theirs
                .take()
                .or_else(|| patronictl(config, &["list", "-f", "json"]))?;
            let ours = batch(config, &["list", "-f", "json"]);
            (stable(&json(&ours)) == stable(&json(&t))).then_some(())
        },
    )
    .unwrap();
    // patronictl prints topology as a table only: compare the tables' first five columns, in
    // order (the tree order is the point)
    wait_for(
        "console and patronictl to agree on topology",
        Duration::from_secs(30),
        || {
            let ours = batch(config, &["topology", "-f", "pretty"]);
            let theirs = patronictl(config, &["topology"])?;
            (table_cells(&ours) == table_cells(&theirs)).then_some(())
        },
    )
    .unwrap();
    let ours = batch(config, &["history", "-f", "json"]);
    let theirs = patronictl(config, &["history", "-f", "json"]).unwrap();
    let strip = |v: Value| -> Vec<(Value, Value, Value)> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| (e["TL"].clone(), e["LSN"].clone(), e["New Leader"].clone()))
            .collect()
    };
    assert_eq!(strip(json(&ours)), strip(json(&theirs)), "history");
    let ours: Value = serde_saphyr::from_str(&batch(config, &["show-config"])).unwrap();
    let theirs: Value =
        serde_saphyr::from_str(&patronictl(config, &["show-config"]).unwrap()).unwrap();
    assert_eq!(ours, theirs, "show-config");
    let ours = batch(config, &["dsn"]);
    let theirs = patronictl(config, &["dsn"]).unwrap();
    assert_eq!(ours.trim(), theirs.trim(), "dsn");
}

#[test]
fn batch_reads_a_pgpilot_cluster_as_patronictl_does() {
    if !prerequisites() {
        return;
    }
    let spec = ClusterSpec {
        scope: "consolepg".into(),
        ..Default::default()
    };
    let mut lab = Lab::new("e2e-consolepg", spec, true).unwrap();
    let Lab {
        cluster: c, etcd, ..
    } = &mut lab;
    c.start_all().unwrap();
    let p = c.wait_healthy(HEALTHY).unwrap();
    // a hand-over, so that the history has an entry
    c.stop_agent(p);
    wait_for("a new leader", HEALTHY, || {
        etcd.leader("consolepg")
            .filter(|(n, _)| *n != c.nodes[p].name)
    })
    .unwrap();
    c.start_agent(p).unwrap();
    c.wait_healthy(HEALTHY).unwrap();
    wait_for("the history key", HEALTHY, || {
        etcd.get_prefix("/service/consolepg/history")
            .ok()
            .filter(|h| !h.is_empty())
    })
    .unwrap();
    let cfg = c.nodes[0].config_path.clone();

    // list: the table shapes (member keys follow the REST API within a loop_wait)
    let pretty = wait_for("both replicas streaming in etcd", HEALTHY, || {
        let p = batch(&cfg, &["list", "-f", "pretty"]);
        (p.matches("| streaming ").count() == 2).then_some(p)
    })
    .unwrap();
    assert!(
        pretty.starts_with("+ Cluster: consolepg ("),
        "pretty list:\n{pretty}"
    );
    assert!(pretty.contains("| Leader "), "{pretty}");
    let tsv = batch(&cfg, &["list"]);
    assert!(
        tsv.starts_with("Cluster\tMember\tHost\tRole\tState\tTL"),
        "{tsv}"
    );
    assert_eq!(tsv.lines().count(), 4, "{tsv}");
    let rows = json(&batch(&cfg, &["list", "-e", "-f", "json"]));
    assert_eq!(rows.as_array().unwrap().len(), 3);
    assert_eq!(
        rows.as_array()
            .unwrap()
            .iter()
            .filter(|r| r["Role"] == "Leader")
            .count(),
        1
    );
    let yaml: Value = serde_saphyr::from_str(&batch(&cfg, &["list", "-f", "yaml"])).unwrap();
    assert_eq!(yaml.as_array().unwrap().len(), 3);
    let topo = batch(&cfg, &["topology", "-f", "pretty"]);
    assert!(topo.contains("| + "), "{topo}");
    let history = json(&batch(&cfg, &["history", "-f", "json"]));
    assert_eq!(history[0]["TL"], 1, "{history}");
    let version = batch(&cfg, &["version", "consolepg"]);
    assert_eq!(
        version
            .lines()
            .filter(|l| l.contains("pgpilot (Patroni"))
            .count(),
        3,
        "{version}"
    );
    assert!(version.contains("PostgreSQL 15."), "{version}");
    let replica = c
        .nodes
        .iter()
        .find(|n| n.get("/replica").is_ok_and(|(code, _)| code == 200))
        .unwrap();
    let dsn = batch(&cfg, &["dsn", "-m", &replica.name]);
    assert_eq!(
        dsn.trim(),
        format!("host=127.0.0.1 port={}", replica.pg_port)
    );

    // query: SQL on the leader (default), a replica (-r) or a member by name (-m), with the
    // password from PGPASSWORD or from --password (standard input when it is no terminal)
    let query = |args: &[&str], password: Option<&str>, stdin: Option<&str>| {
        use std::io::Write;
        let mut cmd = std::process::Command::new(bin_dir().join("pgpilot-console"));
        cmd.arg("-c")
            .arg(&cfg)
            .args(["--batch", "query", "consolepg"])
            .args(args)
            .env_remove("PGPASSWORD")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        if let Some(p) = password {
            cmd.env("PGPASSWORD", p);
        }
        let mut child = cmd.spawn().unwrap();
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).unwrap();
        }
        drop(input);
        let out = child.wait_with_output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let sql = "SELECT pg_is_in_recovery() AS standby, inet_server_port() AS port, NULL AS nothing";
    let (code, out, err) = query(
        &["--command", sql, "-U", "postgres"],
        Some("postgres-secret"),
        None,
    );
    assert_eq!(code, 0, "{err}");
    let leader_port = c.nodes[c.leader_index(etcd).unwrap()].pg_port;
    assert_eq!(
        out,
        format!("standby\tport\tnothing\nf\t{leader_port}\t\n"),
        "{err}"
    );
    let (code, out, err) = query(
        &[
            "-r",
            "replica",
            "--command",
            sql,
            "-U",
            "postgres",
            "--password",
            "-f",
            "json",
        ],
        None,
        Some("postgres-secret\n"),
    );
    assert_eq!(code, 0, "{err}");
    let rows = json(&out);
    assert_eq!(rows[0]["standby"], "t", "{out}");
    let (code, out, err) = query(
        &[
            "-m",
            &replica.name,
            "--command",
            "SELECT 1 AS a, 2 AS b",
            "-U",
            "postgres",
            "--delimiter",
            ",",
        ],
        Some("postgres-secret"),
        None,
    );
    assert_eq!((code, out.as_str()), (0, "a,b\n1,2\n"), "{err}");
    // the last statement's rows, as a driver's cursor holds them
    let (code, out, err) = query(
        &[
            "--command",
            "SELECT 1 AS first; SELECT 2 AS second",
            "-U",
            "postgres",
        ],
        Some("postgres-secret"),
        None,
    );
    assert_eq!((code, out.as_str()), (0, "second\n2\n"), "{err}");
    // failures: exit 1 with the server's words and SQLSTATE, nothing on stdout
    let (code, out, err) = query(
        &["--command", "SELECT nosuchcolumn", "-U", "postgres"],
        Some("postgres-secret"),
        None,
    );
    assert_eq!(code, 1, "{out}");
    assert!(err.contains("42703") && out.is_empty(), "{err}");
    let (code, _, err) = query(
        &["--command", "SELECT 1", "-U", "postgres"],
        Some("wrong"),
        None,
    );
    assert_eq!(code, 1);
    assert!(err.contains("password authentication failed"), "{err}");
    let (code, _, err) = query(
        &["-r", "primary", "-m", "x", "--command", "SELECT 1"],
        None,
        None,
    );
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = query(&["-U", "postgres"], None, None);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--command"), "{err}");

    // every cluster of the namespace when no scope is given
    etcd.put(
        "/service/zz-other/members/ghost",
        r#"{"conn_url":"postgres://127.0.0.1:6000/postgres","api_url":"http://127.0.0.1:1/patroni","state":"stopped","role":"replica","version":"4.1.4"}"#,
    )
    .unwrap();
    let (code, out, err) =
        console(&["--etcd", &etcd.endpoint(), "--batch", "list", "-f", "json"]).unwrap();
    assert_eq!(code, 0, "{err}");
    let all = json(&out);
    let scopes: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["Cluster"].as_str())
        .collect();
    assert!(
        scopes.contains(&"consolepg") && scopes.contains(&"zz-other"),
        "{out}"
    );

    // patronictl sees the same
    compare_with_patronictl(&cfg);

    // bad input: exit codes and messages, nothing on stdout
    let cases: Vec<(Vec<String>, i32, &str)> = vec![
        (
            vec!["list".into(), "nosuch".into()],
            1,
            "no cluster \"nosuch\"",
        ),
        (
            vec!["dsn".into(), "-m".into(), "ghost9".into()],
            1,
            "no member \"ghost9\"",
        ),
        (
            vec!["dsn".into(), "-r".into(), "boss".into()],
            2,
            "unknown role",
        ),
        (vec!["list".into(), "-f".into(), "xml".into()], 2, "xml"),
        (
            vec!["version".into(), "consolepg".into(), "ghost9".into()],
            1,
            "no member",
        ),
    ];
    for (args, want, msg) in cases {
        let mut all = vec![
            "-c".to_string(),
            cfg.display().to_string(),
            "--batch".into(),
        ];
        all.extend(args.clone());
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        let (code, out, err) = console(&refs).unwrap();
        assert_eq!(code, want, "{args:?}: {err}");
        assert!(err.contains(msg), "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?} printed {out}");
    }
    // etcd down: exit 1, says so, prints nothing stale
    let (code, out, err) =
        console(&["--etcd", "127.0.0.1:1", "--batch", "list", "-f", "json"]).unwrap();
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("etcd"), "{err}");
    assert!(out.is_empty());
    // no configuration at all, or a broken one: exit 2 with the key or line
    let (code, _, err) = console(&["--batch", "list"]).unwrap();
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--etcd"), "{err}");
    let bad = c.dir.join("bad-console.yml");
    std::fs::write(&bad, "etcd3:\n  hosts: [nohostport]\n").unwrap();
    let (code, _, err) = console(&["-c", bad.to_str().unwrap(), "--batch", "list"]).unwrap();
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("etcd3.hosts[0]"), "{err}");
    c.shutdown();
}

#[test]
fn batch_reads_a_patroni_cluster_as_patronictl_does() {
    if !prerequisites() {
        return;
    }
    let Some(spec) = patroni_cluster_spec("consolepatroni") else {
        return;
    };
    let mut lab = Lab::new("e2e-consolepatroni", spec, true).unwrap();
    lab.cluster.start_all().unwrap();
    lab.cluster.wait_healthy(Duration::from_secs(180)).unwrap();
    let cfg = lab.cluster.nodes[0].config_path.clone();
    let rows = json(&batch(&cfg, &["list", "-f", "json"]));
    assert_eq!(rows.as_array().unwrap().len(), 3, "{rows}");
    compare_with_patronictl(&cfg);
    // pausing a Patroni cluster from the console: Patroni's members report it
    batch(&cfg, &["pause", "--wait"]);
    let theirs = patronictl(&cfg, &["list"]).unwrap();
    assert!(theirs.contains("Maintenance mode: on"), "{theirs}");
    batch(&cfg, &["resume", "--wait"]);
    let version = batch(&cfg, &["version", "consolepatroni"]);
    assert_eq!(
        version
            .lines()
            .filter(|l| l.contains(": Patroni 4."))
            .count(),
        3,
        "{version}"
    );
    lab.cluster.shutdown();
}

/// `console -c CONFIG --batch ARGS…` → (exit code, stdout, stderr).
fn batch_any(config: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["-c", config.to_str().unwrap(), "--batch"];
    all.extend_from_slice(args);
    console(&all).unwrap()
}

#[test]
fn batch_changes_config_pauses_flushes_and_removes() {
    if !prerequisites() {
        return;
    }
    let spec = ClusterSpec {
        scope: "consoleops".into(),
        ..Default::default()
    };
    let mut lab = Lab::new("e2e-consoleops", spec, true).unwrap();
    let Lab {
        cluster: c, etcd, ..
    } = &mut lab;
    c.start_all().unwrap();
    c.wait_healthy(HEALTHY).unwrap();
    let cfg = c.nodes[0].config_path.clone();
    let config = || -> Value { json(&batch(&cfg, &["show-config", "-f", "json"])) };

    // edit-config: --set and --pg, with the diff on stdout
    let out = batch(
        &cfg,
        &[
            "edit-config",
            "-s",
            "ttl=20",
            "-p",
            "work_mem=8MB",
            "--force",
        ],
    );
    assert!(
        out.contains("-ttl: 10") && out.contains("+ttl: 20"),
        "{out}"
    );
    assert_eq!(config()["ttl"], 20);
    assert_eq!(config()["postgresql"]["parameters"]["work_mem"], "8MB");
    // the same again: not changed
    let (code, out, err) = batch_any(&cfg, &["edit-config", "-s", "ttl=20", "--force"]);
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    assert!(err.contains("Not changed"), "{err}");
    // --apply merges a file; null removes
    let patch = c.dir.join("patch.yml");
    std::fs::write(
        &patch,
        "maximum_lag_on_failover: 2097152\npostgresql:\n  parameters:\n    work_mem: null\n",
    )
    .unwrap();
    batch(
        &cfg,
        &[
            "edit-config",
            "--apply",
            patch.to_str().unwrap(),
            "--force",
            "-q",
        ],
    );
    assert_eq!(config()["maximum_lag_on_failover"], 2097152);
    assert!(
        config()["postgresql"]["parameters"]
            .get("work_mem")
            .is_none()
    );
    // refusals: nothing written
    let before = config();
    for (args, want, msg) in [
        (vec!["edit-config", "-s", "ttl=30"], 2, "--force"),
        (
            vec!["edit-config", "-s", "ttl", "--force"],
            2,
            "key.path=value",
        ),
        (vec!["edit-config", "-s", "ttl=soon", "--force"], 2, "ttl"),
        (vec!["edit-config", "--force"], 2, "nothing to change"),
    ] {
        let (code, _, err) = batch_any(&cfg, &args);
        assert_eq!(code, want, "{args:?}: {err}");
        assert!(err.contains(msg), "{args:?}: {err}");
    }
    assert_eq!(config(), before, "a refused edit wrote something");
    // a timing Patroni accepts is taken, with the values the agents will use (as Patroni)
    let loop_wait = before["loop_wait"].clone();
    let (code, _, err) = batch_any(&cfg, &["edit-config", "-s", "loop_wait=15", "--force"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning: ttl: ttl 20 is below loop_wait 15"),
        "{err}"
    );
    assert!(err.contains("using loop_wait"), "{err}");
    let back = format!("loop_wait={loop_wait}");
    batch(&cfg, &["edit-config", "-s", &back, "--force", "-q"]);

    // pause / resume, seen by every member
    batch(&cfg, &["pause", "--wait"]);
    let pretty = batch(&cfg, &["list", "-f", "pretty"]);
    assert!(pretty.contains("Maintenance mode: on"), "{pretty}");
    for n in &c.nodes {
        assert_eq!(n.status().unwrap()["pause"], true, "{}", n.name);
    }
    let (code, _, err) = batch_any(&cfg, &["pause"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("already paused"), "{err}");
    batch(&cfg, &["resume", "--wait"]);
    assert!(!batch(&cfg, &["list", "-f", "pretty"]).contains("Maintenance mode"));

    // a scheduled switchover is shown and flushed
    let (code, _, err) = batch_any(&cfg, &["flush", "consoleops", "switchover", "--force"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no switchover is scheduled"), "{err}");
    // (a request naming another member as leader would be cleared by the leader at once)
    let (leader, _) = etcd.leader("consoleops").unwrap();
    let other = ["consoleops-node1", "consoleops-node2"]
        .into_iter()
        .find(|n| *n != leader)
        .unwrap();
    etcd.put(
        "/service/consoleops/failover",
        &format!(
            r#"{{"leader":"{leader}","member":"{other}","scheduled_at":"2099-01-01T00:00:00+00:00"}}"#
        ),
    )
    .unwrap();
    let pretty = batch(&cfg, &["list", "-f", "pretty"]);
    assert!(
        pretty.contains("Switchover scheduled at: 2099-01-01T00:00:00+00:00"),
        "{pretty}"
    );
    let (code, _, err) = batch_any(&cfg, &["flush", "consoleops", "switchover"]);
    assert_eq!(code, 2, "not on a terminal without --force: {err}");
    batch(&cfg, &["flush", "consoleops", "switchover", "--force"]);
    assert!(!batch(&cfg, &["list", "-f", "pretty"]).contains("Switchover scheduled"));

    // remove: --force off a terminal, then every key goes
    etcd.put("/service/doomed/config", r#"{"ttl":30}"#).unwrap();
    etcd.put("/service/doomed/initialize", "123").unwrap();
    let (code, _, err) = batch_any(&cfg, &["remove", "doomed"]);
    assert_eq!(code, 2, "{err}");
    assert!(!etcd.get_prefix("/service/doomed/").unwrap().is_empty());
    let (code, _, err) = batch_any(&cfg, &["remove", "doomed", "--force"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("2 keys deleted"), "{err}");
    assert!(etcd.get_prefix("/service/doomed/").unwrap().is_empty());
    assert!(!etcd.get_prefix("/service/consoleops/").unwrap().is_empty());
    c.shutdown();
}
