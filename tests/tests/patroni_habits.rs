//! Patroni's habits where a migrated cluster would notice them, against real etcd and
//! PostgreSQL: a timing Patroni accepts (`ttl: 20, loop_wait: 2, retry_timeout: 10`, below
//! `loop_wait + 2 × retry_timeout`) is adjusted and warned about, at bootstrap and through
//! `PATCH /config`, not refused; a `data_dir` whose parent does not exist is created (0700, the
//! agent's user); and while paused, `patronictl restart` of a member whose PostgreSQL was stopped
//! by hand starts it (read-only until the member holds the leader lock again, at resume).

use pgpilot_e2e::*;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(120);

#[test]
fn timing_data_dir_parent_and_restart_while_paused_as_patroni() {
    if !prerequisites() {
        return;
    }
    let Some(ctl) = patronictl_or_skip("the paused restart is driven by real patronictl") else {
        return;
    };
    let spec = ClusterSpec {
        scope: "habits".into(),
        nodes: 1,
        ttl: 20,
        loop_wait: 2,
        retry_timeout: 10,
        ..Default::default()
    };
    let mut lab = Lab::new("habits", spec, true).unwrap();
    // the data directory two levels below directories that do not exist yet
    let node = &mut lab.cluster.nodes[0];
    let parent = node.data_dir.parent().unwrap().join("not-yet/made");
    let data_dir = parent.join("data");
    let yaml = std::fs::read_to_string(&node.config_path).unwrap();
    let old = format!("data_dir: {}", node.data_dir.display());
    assert!(yaml.contains(&old), "{yaml}");
    std::fs::write(
        &node.config_path,
        yaml.replace(&old, &format!("data_dir: {}", data_dir.display())),
    )
    .unwrap();
    node.data_dir = data_dir.clone();

    let c = &mut lab.cluster;
    c.start_all().unwrap();
    c.wait_healthy(LONG)
        .map_err(|e| format!("{e}\n{}", c.logs_tail()))
        .unwrap();
    let log = c.nodes[0].log();
    // the timing was lowered as Patroni lowers it, and said so
    assert!(
        log.contains("ttl 20 is below loop_wait 2 + 2 × retry_timeout 10: using loop_wait 1 and retry_timeout 9"),
        "{log}"
    );
    assert!(log.contains("created the data directory's parent"), "{log}");
    let meta = std::fs::metadata(&parent).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o700);
    if is_root() {
        let postgres = nix::unistd::User::from_name("postgres").unwrap().unwrap();
        assert_eq!(meta.uid(), postgres.uid.as_raw());
    }

    // PATCH /config with such a timing is taken too (Patroni takes it), then adjusted
    let api = |path: &str| c.nodes[0].api(path);
    let (code, body) = http_call(
        "PATCH",
        &api("/config"),
        Some(r#"{"ttl": 20, "loop_wait": 5, "retry_timeout": 10}"#),
        None,
        LONG,
    )
    .unwrap();
    assert_eq!(code, 200, "{body}");
    wait_for("the adjusted timing warned about", LONG, || {
        c.nodes[0]
            .log()
            .contains("loop_wait 5 + 2 × retry_timeout 10: using loop_wait 1 and retry_timeout 9")
            .then_some(())
    })
    .unwrap();

    // paused, PostgreSQL stopped by hand: patronictl restart starts it again
    let (ok, out) = patronictl_run(
        &ctl,
        &c.nodes[0].config_path,
        &["pause", "habits", "--wait"],
    );
    assert!(ok, "{out}");
    kill_postmaster(&c.nodes[0]);
    wait_for("the server seen stopped", LONG, || {
        let (_, body) = c.nodes[0].get("/patroni").ok()?;
        (!body.contains("\"state\":\"running\"")).then_some(())
    })
    .unwrap();
    // paused: nobody starts it on its own
    std::thread::sleep(Duration::from_secs(3));
    assert!(sql(&c.nodes[0], "SELECT 1").is_err());
    let (ok, out) = patronictl_run(
        &ctl,
        &c.nodes[0].config_path,
        &["restart", "habits", &c.nodes[0].name, "--force"],
    );
    assert!(ok && !out.contains("Failed"), "{out}");
    // started; read-only, since the member gave the leader lock up when its server stopped
    // (as Patroni does while paused) and pgpilot never runs a primary without the lock
    wait_for("PostgreSQL started by the restart", LONG, || {
        (sql(&c.nodes[0], "SELECT pg_is_in_recovery()").ok()? == vec!["t"]).then_some(())
    })
    .map_err(|e| format!("{e}\n{}", c.logs_tail()))
    .unwrap();
    assert!(
        c.nodes[0]
            .log()
            .contains("starting PostgreSQL as requested (a restart of a stopped server)"),
        "{}",
        c.logs_tail()
    );
    // resumed, it takes the lock again and is the writable primary
    let (ok, out) = patronictl_run(
        &ctl,
        &c.nodes[0].config_path,
        &["resume", "habits", "--wait"],
    );
    assert!(ok, "{out}");
    wait_for("the primary again after resume", LONG, || {
        (sql(&c.nodes[0], "SELECT pg_is_in_recovery()").ok()? == vec!["f"]).then_some(())
    })
    .map_err(|e| format!("{e}\n{}", c.logs_tail()))
    .unwrap();
}

/// The tags section of node `i`'s YAML replaced by `tags` (a YAML block at top level).
fn set_tags(c: &TestCluster, i: usize, tags: &str) {
    let yaml = std::fs::read_to_string(&c.nodes[i].config_path).unwrap();
    let start = yaml.find("\ntags:\n").expect("a tags section") + 1;
    let mut end = start + "tags:\n".len();
    for line in yaml[end..].split_inclusive('\n') {
        if !line.starts_with(' ') {
            break;
        }
        end += line.len();
    }
    let new = format!("{}{tags}{}", &yaml[..start], &yaml[end..]);
    std::fs::write(&c.nodes[i].config_path, new).unwrap();
}

/// A real Patroni member publishing its tags as strings, beside two pgpilot members: the new
/// pgpilot member clones from the Patroni member tagged `clonefrom: 'true'`; the pgpilot
/// leader never makes the member tagged `sync_priority: '0'` its synchronous standby; and when
/// the leader's machine is lost the member with the highest `failover_priority` ('3', the
/// Patroni member) takes over.
#[test]
fn string_tags_of_a_patroni_member_mean_what_patroni_means() {
    if !prerequisites() {
        return;
    }
    let Some(patroni) = patroni_daemon_or_skip() else {
        return;
    };
    let spec = ClusterSpec {
        scope: "strtags".into(),
        nodes: 3,
        ..Default::default()
    };
    let mut lab = Lab::new("strtags", spec, true).unwrap();
    let Lab {
        cluster: c, etcd, ..
    } = &mut lab;
    // node0: Patroni, its tags strings; node1 and node2: pgpilot
    set_tags(
        c,
        0,
        "tags:\n  failover_priority: '3'\n  sync_priority: '0'\n  clonefrom: 'true'\n",
    );
    set_tags(c, 2, "tags:\n  failover_priority: 1\n");
    // node1 bootstraps the cluster under pgpilot
    c.start_agent(1).unwrap();
    wait_for("node1 to lead", LONG, || {
        (c.primary() == Some(1)).then_some(())
    })
    .map_err(|e| format!("{e}\n{}", c.logs_tail()))
    .unwrap();
    // node0 joins under real Patroni, and publishes its tags as written
    c.spec.daemon = Some(patroni);
    c.start_agent(0).unwrap();
    c.spec.daemon = None;
    c.wait_streaming_among(&[0, 1], LONG)
        .map_err(|e| format!("{e}\n{}", c.logs_tail()))
        .unwrap();
    let published = etcd
        .get_prefix(&format!("/service/strtags/members/{}", c.nodes[0].name))
        .unwrap();
    let (_, member, _) = published.first().expect("node0's member key");
    assert!(
        member.contains(r#""failover_priority": "3""#)
            || member.contains(r#""failover_priority":"3""#),
        "{member}"
    );
    // node2 (pgpilot) clones from the member tagged clonefrom: 'true', not from the leader
    c.start_agent(2).unwrap();
    c.wait_streaming_among(&[0, 1, 2], LONG)
        .map_err(|e| format!("{e}\n{}", c.logs_tail()))
        .unwrap();
    let log = c.nodes[2].log();
    assert!(
        log.contains(&format!("cloning a replica from {}", c.nodes[0].name)),
        "{log}"
    );

    // the same refused requests to Patroni's replica (node0) and pgpilot's (node2): the same
    // status and, byte for byte, the same body
    for (method, path, body) in [
        ("POST", "/switchover", "{}"),
        ("POST", "/failover", "{}"),
        ("POST", "/restart", r#"{"role": "boss"}"#),
        ("POST", "/restart", r#"{"timeout": "-5"}"#),
        ("POST", "/restart", r#"{"color": "blue"}"#),
        ("DELETE", "/switchover", ""),
        ("DELETE", "/restart", ""),
        ("PATCH", "/config", "{not json"),
    ] {
        let answer = |i: usize| {
            let body = (!body.is_empty()).then_some(body);
            http_call(method, &c.nodes[i].api(path), body, None, LONG).unwrap()
        };
        assert_eq!(answer(2), answer(0), "{method} {path} {body}");
    }
    // and from each leader in turn (node1, pgpilot, now; node0, Patroni, at the end)
    let pgpilot_leader = http_call(
        "POST",
        &c.nodes[1].api("/reinitialize"),
        Some("{}"),
        None,
        LONG,
    )
    .unwrap();
    assert_eq!(
        pgpilot_leader,
        (503, "I am the leader, can not reinitialize".to_string())
    );

    // synchronous mode under the pgpilot leader: node0 (sync_priority '0') is never chosen
    let (code, body) = http_call(
        "PATCH",
        &c.nodes[1].api("/config"),
        Some(r#"{"synchronous_mode": true}"#),
        None,
        LONG,
    )
    .unwrap();
    assert_eq!(code, 200, "{body}");
    wait_for("node2 as the synchronous standby", LONG, || {
        let sync = etcd.get_prefix("/service/strtags/sync").ok()?;
        let (_, value, _) = sync.first()?;
        value.contains(&c.nodes[2].name).then_some(())
    })
    .map_err(|e| format!("{e}\n{}", c.logs_tail()))
    .unwrap();
    let names = sql(&c.nodes[1], "SHOW synchronous_standby_names").unwrap();
    assert!(
        names[0].contains(&c.nodes[2].name) && !names[0].contains(&c.nodes[0].name),
        "{names:?}"
    );
    let (code, body) = http_call(
        "PATCH",
        &c.nodes[1].api("/config"),
        Some(r#"{"synchronous_mode": false}"#),
        None,
        LONG,
    )
    .unwrap();
    assert_eq!(code, 200, "{body}");
    wait_for("synchronous mode off", LONG, || {
        (sql(&c.nodes[1], "SHOW synchronous_standby_names").ok()? == vec![""]).then_some(())
    })
    .unwrap();
    wait_replicated_everywhere(c);

    // the leader's machine lost: the highest failover_priority ('3', Patroni's node0) leads
    c.kill_machine(1);
    wait_for("a new leader", LONG, || {
        c.primary().filter(|&i| i != 1).map(|_| ())
    })
    .map_err(|e| format!("{e}\n{}", c.logs_tail()))
    .unwrap();
    assert_eq!(
        c.leader_name(etcd).as_deref(),
        Some(c.nodes[0].name.as_str()),
        "{}",
        c.logs_tail()
    );
    let patroni_leader = http_call(
        "POST",
        &c.nodes[0].api("/reinitialize"),
        Some("{}"),
        None,
        LONG,
    )
    .unwrap();
    assert_eq!(patroni_leader, pgpilot_leader);
}

/// Waits until both replicas have replayed what the leader (node1) wrote, so that the race
/// after its loss is decided by failover_priority alone.
fn wait_replicated_everywhere(c: &TestCluster) {
    sql(
        &c.nodes[1],
        "CREATE TABLE IF NOT EXISTS strtags_mark (id int)",
    )
    .unwrap();
    sql(&c.nodes[1], "INSERT INTO strtags_mark VALUES (1)").unwrap();
    wait_for("both replicas caught up", LONG, || {
        [0, 2]
            .iter()
            .all(|&i| {
                sql(&c.nodes[i], "SELECT count(*) FROM strtags_mark").ok() == Some(vec!["1".into()])
            })
            .then_some(())
    })
    .unwrap();
}

/// A member tagged `nostream` takes WAL from the archive only, as Patroni's: no
/// `primary_conninfo`, no WAL receiver, no walsender for it on the primary; it keeps up through
/// `restore_command` and its server is not restarted over and over for want of an upstream.
#[test]
fn a_nostream_member_replays_the_archive_without_streaming() {
    if !prerequisites() {
        return;
    }
    let spec = ClusterSpec {
        scope: "nostream".into(),
        nodes: 2,
        ..Default::default()
    };
    let mut lab = Lab::new("nostream", spec, true).unwrap();
    let archive = lab.work.path.join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    chown_postgres(&archive).unwrap();
    let c = &mut lab.cluster;
    for n in &c.nodes {
        let yaml = std::fs::read_to_string(&n.config_path).unwrap();
        let a = archive.display();
        let yaml = yaml
            .replace(
                "    fsync: 'off'\n",
                &format!("    fsync: 'off'\n    archive_mode: 'on'\n    archive_command: 'cp %p {a}/%f'\n"),
            )
            .replace(
                "  pg_hba:\n",
                &format!("  recovery_conf:\n    restore_command: 'cp {a}/%f %p'\n  pg_hba:\n"),
            );
        std::fs::write(&n.config_path, yaml).unwrap();
    }
    set_tags(c, 1, "tags:\n  nostream: true\n");
    c.start_agent(0).unwrap();
    wait_for("node1 to lead", LONG, || {
        (c.primary() == Some(0)).then_some(())
    })
    .map_err(|e| format!("{e}\n{}", c.logs_tail()))
    .unwrap();
    c.start_agent(1).unwrap();
    wait_for("node2 running as a replica", LONG, || {
        let s = c.nodes[1].status()?;
        (s["role"] == "replica" && s["state"] == "running").then_some(())
    })
    .map_err(|e| format!("{e}\n{}", c.logs_tail()))
    .unwrap();

    let primary = &c.nodes[0];
    sql(primary, "CREATE TABLE nostream_t (id int)").unwrap();
    let batch = |from: i32| {
        sql(
            primary,
            &format!(
                "INSERT INTO nostream_t SELECT generate_series({from}, {})",
                from + 9
            ),
        )
        .unwrap();
        sql(primary, "SELECT pg_switch_wal()").unwrap();
    };
    let replayed = |n: i64| {
        wait_for("the rows replayed from the archive", LONG, || {
            (sql(&c.nodes[1], "SELECT count(*) FROM nostream_t").ok()? == vec![n.to_string()])
                .then_some(())
        })
        .map_err(|e| format!("{e}\n{}", c.logs_tail()))
        .unwrap();
    };
    batch(1);
    replayed(10);
    let pid = c.nodes[1].postmaster_pid().unwrap();
    // never streamed: no upstream configured, no WAL receiver, no walsender for it
    assert_eq!(sql(&c.nodes[1], "SHOW primary_conninfo").unwrap(), vec![""]);
    assert_eq!(
        sql(&c.nodes[1], "SELECT count(*) FROM pg_stat_wal_receiver").unwrap(),
        vec!["0"]
    );
    assert_eq!(
        sql(primary, "SELECT count(*) FROM pg_stat_replication").unwrap(),
        vec!["0"]
    );
    // and it keeps up without being restarted
    batch(11);
    replayed(20);
    assert_eq!(c.nodes[1].postmaster_pid(), Some(pid), "{}", c.logs_tail());
}

/// `maximum_lag_on_syncnode`, as Patroni: the synchronous standby's WAL receiver frozen while
/// the primary writes (with `synchronous_commit = local`, so those writes do not wait) — once
/// it is more than the limit behind the other standby, the other one becomes synchronous.
#[test]
fn a_hung_synchronous_standby_is_replaced_past_maximum_lag_on_syncnode() {
    if !prerequisites() {
        return;
    }
    let spec = ClusterSpec {
        scope: "syncnode".into(),
        dcs_yaml: "    synchronous_mode: true\n    maximum_lag_on_syncnode: 1048576\n".into(),
        ..Default::default()
    };
    let mut lab = Lab::new("syncnode", spec, true).unwrap();
    let Lab {
        cluster: c, etcd, ..
    } = &mut lab;
    c.start_all().unwrap();
    let p = c.wait_healthy(LONG).unwrap();
    let sync_standby = || -> Option<String> {
        let sync = etcd.get_prefix("/service/syncnode/sync").ok()?;
        let (_, value, _) = sync.first()?;
        let v: serde_json::Value = serde_json::from_str(value).ok()?;
        Some(v["sync_standby"].as_str()?.to_string())
    };
    let first = wait_for("a synchronous standby", LONG, || {
        sync_standby().filter(|s| !s.is_empty())
    })
    .map_err(|e| format!("{e}\n{}", c.logs_tail()))
    .unwrap();
    let hung = c.nodes.iter().position(|n| n.name == first).unwrap();
    let receiver: i32 = sql(&c.nodes[hung], "SELECT pid FROM pg_stat_wal_receiver").unwrap()[0]
        .parse()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(receiver);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    // about 8 MB of WAL the hung standby never gets
    let filled = sql(
        &c.nodes[p],
        "BEGIN; SET LOCAL synchronous_commit = local; \
         CREATE TABLE filler AS SELECT repeat('x', 1000) AS pad FROM generate_series(1, 8000); \
         COMMIT",
    );
    let replaced = wait_for("the other standby made synchronous", LONG, || {
        sync_standby().filter(|s| !s.is_empty() && *s != first)
    })
    .map_err(|e| format!("{e}\n{}", c.logs_tail()));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    filled.unwrap();
    let now = replaced.unwrap();
    assert_ne!(now, c.nodes[p].name);
    // commits go on, acknowledged by the new synchronous standby
    sql(&c.nodes[p], "CREATE TABLE after_replacement (id int)").unwrap();
}

/// `primary_start_timeout: 0`: the leader whose PostgreSQL stopped gives the lock up at once, and
/// the replica it names takes over. Before, the replica read the old leader's REST answer from
/// before the stop ("running as primary") and declined, and the old leader, its server started
/// again as a replica and the furthest ahead, took the lock straight back and promoted itself.
#[test]
fn a_primary_that_cannot_start_hands_the_lock_to_the_replica_it_names() {
    if !prerequisites() {
        return;
    }
    let spec = ClusterSpec {
        scope: "startout".into(),
        dcs_yaml: "    primary_start_timeout: 0\n".into(),
        ..Default::default()
    };
    let mut lab = Lab::new("startout", spec, true).unwrap();
    let Lab {
        cluster: c, etcd, ..
    } = &mut lab;
    c.start_all().unwrap();
    let p = c.wait_healthy(LONG).unwrap();
    let old = c.nodes[p].name.clone();
    let replicas: Vec<usize> = (0..c.nodes.len()).filter(|&i| i != p).collect();
    c.wait_streaming_among(&replicas, LONG)
        .map_err(|e| format!("{e}\n{}", c.logs_tail()))
        .unwrap();
    let timeline = |i: usize| -> Option<u64> { c.nodes[i].status()?["timeline"].as_u64() };
    let before = timeline(p).unwrap();
    sql(&c.nodes[p], "CREATE TABLE startout (id int)").unwrap();
    sql(&c.nodes[p], "INSERT INTO startout VALUES (1)").unwrap();
    wait_for("the row on both replicas", LONG, || {
        replicas
            .iter()
            .all(|&i| {
                sql(&c.nodes[i], "SELECT count(*) FROM startout").ok() == Some(vec!["1".into()])
            })
            .then_some(())
    })
    .unwrap();

    kill_postmaster(&c.nodes[p]);
    let new = wait_for("another member holding the lock", LONG, || {
        c.leader_name(etcd).filter(|l| *l != old)
    })
    .map_err(|e| format!("{e}\n{}", c.logs_tail()))
    .unwrap();
    let log = c.nodes[p].log();
    let gave_up = log
        .find("giving the leader lock up so that a healthy replica")
        .unwrap_or_else(|| panic!("no hand-over in the old leader's log:\n{log}"));
    let named = &log[gave_up..log[gave_up..].find('\n').map_or(log.len(), |e| gave_up + e)];
    assert!(named.contains(&new), "{new} was not named: {named}");
    // the old leader comes back as a replica of the new one and never leads again
    let n = c.nodes.iter().position(|x| x.name == new).unwrap();
    wait_for("the old leader streaming from the new one", LONG, || {
        let rows = sql(
            &c.nodes[n],
            "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'",
        )
        .ok()?;
        rows.contains(&old).then_some(())
    })
    .map_err(|e| format!("{e}\n{}", c.logs_tail()))
    .unwrap();
    assert_eq!(c.leader_name(etcd).as_deref(), Some(new.as_str()));
    let log = c.nodes[p].log();
    assert!(
        !log[gave_up..].contains("taking the lock"),
        "the old leader raced again:\n{}",
        &log[gave_up..]
    );
    // one promotion: the new leader's timeline follows the old one directly
    assert_eq!(timeline(n), Some(before + 1), "{}", c.logs_tail());
    assert_eq!(
        sql(&c.nodes[n], "SELECT count(*) FROM startout").unwrap(),
        vec!["1"]
    );
}

/// `use_unix_socket: true` where pg_hba refuses the superuser over TCP (as an estate demanding
/// client certificates there does for a client without one): the agent's own connections and
/// the `post_bootstrap` script go through the socket, as Patroni's do, and what the agent reads
/// from another member's server (the new timeline's history at a switchover) it reads as the
/// rewind user. Before, `post_bootstrap` was given a TCP URL and the bootstrap failed.
#[test]
fn local_connections_go_through_the_unix_socket_as_patroni() {
    if !prerequisites() {
        return;
    }
    let spec = ClusterSpec {
        scope: "socket".into(),
        postgresql_yaml: "  use_unix_socket: true\n".into(),
        ..Default::default()
    };
    let mut lab = Lab::new("socket", spec, true).unwrap();
    let hooks = lab.work.path.join("hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    let script = hooks.join("post_bootstrap.sh");
    let seen = hooks.join("post_bootstrap.seen");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nset -e\nprintf '%s\\n%s\\n' \"$1\" \"$PGOPTIONS\" > {seen}\n\
             {PG_BIN}/psql \"$1\" -v ON_ERROR_STOP=1 -Atc \
             \"CREATE TABLE made_by_post_bootstrap AS SELECT current_setting('synchronous_commit') AS sc\"\n",
            seen = seen.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    chown_postgres(&hooks).unwrap();
    for n in &lab.cluster.nodes {
        let yaml = std::fs::read_to_string(&n.config_path).unwrap();
        let yaml = yaml
            .replacen(
                "  initdb:\n",
                &format!("  post_bootstrap: {}\n  initdb:\n", script.display()),
                1,
            )
            .replacen(
                "    - host all all samenet scram-sha-256\n",
                "    - host all rewinder samenet scram-sha-256\n    - host all postgres all reject\n    - host all all samenet scram-sha-256\n",
                1,
            );
        assert!(yaml.contains("host all postgres all reject"), "{yaml}");
        std::fs::write(&n.config_path, yaml).unwrap();
    }
    let c = &mut lab.cluster;
    c.start_all().unwrap();
    let p = c
        .wait_healthy(LONG)
        .map_err(|e| format!("{e}\n{}", c.logs_tail()))
        .unwrap();
    // the superuser is refused over TCP: only the socket could have done all this
    assert!(sql(&c.nodes[p], "SELECT 1").is_err());
    let socket_sql = |i: usize, q: &str| {
        let n = &c.nodes[i];
        sql_dsn(
            &format!(
                "host={} port={} user=postgres dbname=postgres connect_timeout=3",
                n.data_dir.parent().unwrap().display(),
                n.pg_port
            ),
            q,
        )
    };
    let seen = std::fs::read_to_string(&seen).unwrap();
    let mut lines = seen.lines();
    let dsn = lines.next().unwrap();
    let sock = c.nodes[p].data_dir.parent().unwrap().display().to_string();
    assert!(dsn.contains(&format!("host={sock} ")), "{dsn}");
    assert!(
        dsn.contains("user=postgres") && dsn.contains("dbname=postgres"),
        "{dsn}"
    );
    assert!(
        !dsn.contains("secret"),
        "no password in the argument: {dsn}"
    );
    assert_eq!(
        lines.next(),
        Some("-c synchronous_commit=local -c statement_timeout=0")
    );
    assert_eq!(
        socket_sql(p, "SELECT sc FROM made_by_post_bootstrap").unwrap(),
        vec!["local"]
    );
    let replicas: Vec<usize> = (0..c.nodes.len()).filter(|&i| i != p).collect();
    c.wait_streaming_among(&replicas, LONG).unwrap();

    // a switchover: the old primary reads the new timeline's history from its successor as the
    // rewind user (the superuser would be refused) and follows it
    let to = replicas[0];
    let (code, body) = http_call(
        "POST",
        &c.nodes[p].api("/switchover"),
        Some(
            &serde_json::json!({"leader": c.nodes[p].name, "candidate": c.nodes[to].name})
                .to_string(),
        ),
        None,
        LONG,
    )
    .unwrap();
    assert_eq!(code, 200, "{body}\n{}", c.logs_tail());
    wait_for("the old primary streaming from the new one", LONG, || {
        let s = c.nodes[p].status()?;
        (c.primary() == Some(to) && s["replication_state"] == "streaming").then_some(())
    })
    .map_err(|e| format!("{e}\n{}", c.logs_tail()))
    .unwrap();
    let log = c.nodes[p].log();
    assert!(
        log.contains("copied the new timeline's history file"),
        "{log}"
    );
}
