//! Backups and disaster recovery the way seed 000 runs them, with real pgBackRest (a repository
//! on local disk, no ssh; each member its own pgBackRest configuration file):
//! `create_replica_methods: [pgbackrest, basebackup]` — with no backup yet the first replicas
//! fall back to pg_basebackup; after `stanza-create` and a full backup a new member is built by
//! pgBackRest's restore and streams, and `reinit` goes through pgBackRest too; replicas carry
//! `recovery_conf`'s `restore_command`. Then a new cluster is bootstrapped by point-in-time
//! recovery (`bootstrap.method` with pgBackRest's time restore and `recovery_conf`): the rows
//! committed before the target are there, those after are not, and the restored cluster fails
//! over like any other. Last, `no_leader`: with the whole first cluster stopped, a member whose
//! data is gone is restored from the repository while nobody leads, replays the archive as a
//! replica, and streams from the leader once the others are back.

use pgpilot_e2e::*;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(120);

#[test]
fn pgbackrest_builds_replicas_and_restores_a_cluster_to_a_point_in_time() {
    if !prerequisites() || !need_program("pgbackrest", "pgbackrest") {
        return;
    }
    let stanza = "backups";
    let spec = ClusterSpec {
        scope: stanza.into(),
        nodes: 4,
        ..Default::default()
    };
    let mut lab = Lab::new("backups", spec, true).unwrap();
    let repo = lab.work.path.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    chown_postgres(&repo).unwrap();
    let mut confs = Vec::new();
    for n in &lab.cluster.nodes {
        let dir = n.config_path.parent().unwrap().to_path_buf();
        let conf = backrest_conf(&dir, &repo, stanza, n);
        let yaml = std::fs::read_to_string(&n.config_path).unwrap();
        let yaml = with_backrest(&yaml, &conf, stanza);
        assert!(yaml.contains("create_replica_methods"), "{yaml}");
        std::fs::write(&n.config_path, yaml).unwrap();
        confs.push(conf);
    }
    let c = &mut lab.cluster;
    let three = [0, 1, 2];
    for i in three {
        c.start_agent(i).unwrap();
    }
    let p = c.wait_streaming_among(&three, LONG).unwrap();

    // no backup yet: the replicas fell back to pg_basebackup
    for i in three.iter().filter(|&&i| i != p) {
        let log = c.nodes[*i].log();
        assert!(
            log.contains("replica method pgbackrest failed")
                && log.contains("replica data directory built method=\"basebackup\""),
            "{}",
            c.logs_tail()
        );
    }
    // a replica carries restore_command from recovery_conf
    let r = three.into_iter().find(|&i| i != p).unwrap();
    let restore = sql(&c.nodes[r], "SHOW restore_command").unwrap();
    assert!(restore[0].contains("archive-get"), "{restore:?}");

    // the stanza and a full backup, taken on the primary
    let conf = confs[p].display().to_string();
    let config = format!("--config={conf}");
    let stanza_arg = format!("--stanza={stanza}");
    pgbackrest(&[&config, &stanza_arg, "stanza-create"]).unwrap();
    pgbackrest(&[&config, &stanza_arg, "--type=full", "backup"])
        .map_err(|e| format!("{e}\n{}", c.logs_tail()))
        .unwrap();

    // a new member is built by pgBackRest and streams
    c.start_agent(3).unwrap();
    let all = [0, 1, 2, 3];
    c.wait_streaming_among(&all, LONG).unwrap();
    let log = c.nodes[3].log();
    assert!(
        log.contains("restore command begin")
            && log.contains("replica data directory built method=\"pgbackrest\""),
        "{log}"
    );
    let shown = c.nodes[3].status().unwrap();
    assert_eq!(shown["role"], "replica");

    // reinit goes through pgBackRest too
    let before = c.nodes[r].log().len();
    let (code, body) = http_post(&c.nodes[r].api("/reinitialize"), "{}").unwrap();
    assert_eq!(code, 200, "{body}");
    wait_for("the reinitialized member built by pgBackRest", LONG, || {
        let log = c.nodes[r].log();
        log.get(before..)
            .filter(|l| l.contains("replica data directory built method=\"pgbackrest\""))
            .map(|_| ())
    })
    .map_err(|e| format!("{e}\n{}", c.logs_tail()))
    .unwrap();
    let p = c.wait_streaming_among(&all, LONG).unwrap();

    // rows before and after a point in time, the WAL archived past it
    let n = &c.nodes[p];
    sql(n, "CREATE TABLE pitr (id int, at text)").unwrap();
    sql(
        n,
        "INSERT INTO pitr SELECT g, 'before' FROM generate_series(1, 10) g",
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let target = sql(n, "SELECT (now() AT TIME ZONE 'UTC')::text || '+00'").unwrap()[0].clone();
    std::thread::sleep(Duration::from_millis(1500));
    sql(
        n,
        "INSERT INTO pitr SELECT g, 'after' FROM generate_series(11, 20) g",
    )
    .unwrap();
    let segment = sql(n, "SELECT pg_walfile_name(pg_switch_wal())").unwrap()[0].clone();
    wait_for("the WAL past the target archived", LONG, || {
        let last = sql(
            n,
            "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver",
        )
        .ok()?;
        (last[0].as_str() >= segment.as_str()).then_some(())
    })
    .map_err(|e| format!("{e}\n{}", c.logs_tail()))
    .unwrap();

    // a new cluster restored to that point in time by its first member
    let pitr_spec = ClusterSpec {
        scope: "pitr".into(),
        nodes: 2,
        ..Default::default()
    };
    let pitr_dir = lab.work.path.join("pitr");
    std::fs::create_dir_all(&pitr_dir).unwrap();
    chown_postgres(&pitr_dir).unwrap();
    let mut restored = TestCluster::new(pitr_spec, &pitr_dir, &lab.etcd.endpoint()).unwrap();
    for n in &restored.nodes {
        let dir = n.config_path.parent().unwrap().to_path_buf();
        let conf = backrest_conf(&dir, &repo, stanza, n).display().to_string();
        let yaml = std::fs::read_to_string(&n.config_path).unwrap();
        let bootstrap = format!(
            "bootstrap:\n  method: pitr_restore_by_pgbackrest\n  pitr_restore_by_pgbackrest:\n    command: 'pgbackrest --config={conf} --stanza={stanza} --log-level-file=off --type=time \"--target={target}\" restore'\n    keep_existing_recovery_conf: true\n    no_params: true\n    recovery_conf:\n      recovery_target_action: promote\n      recovery_target_time: '{target}'\n      recovery_target_inclusive: true\n      restore_command: 'pgbackrest --config={conf} --stanza={stanza} archive-get %f \"%p\"'\n"
        );
        std::fs::write(&n.config_path, yaml.replacen("bootstrap:\n", &bootstrap, 1)).unwrap();
    }
    restored.start_all().unwrap();
    let rp = restored
        .wait_healthy(LONG)
        .map_err(|e| format!("{e}\n{}", restored.logs_tail()))
        .unwrap();
    let leader_log = restored.nodes[rp].log();
    assert!(
        leader_log
            .contains("bootstrapping the cluster with bootstrap method pitr_restore_by_pgbackrest")
            && leader_log.contains("recovery ended"),
        "{}",
        restored.logs_tail()
    );
    let rows = sql(
        &restored.nodes[rp],
        "SELECT at, count(*) FROM pitr GROUP BY at",
    )
    .unwrap();
    assert_eq!(rows, vec!["before"], "the restored rows: {rows:?}");
    let count = sql(&restored.nodes[rp], "SELECT count(*) FROM pitr").unwrap();
    assert_eq!(count, vec!["10"]);
    // no recovery setting of the restore is left on the new primary
    let target_left = sql(&restored.nodes[rp], "SHOW recovery_target_time").unwrap();
    assert_eq!(target_left, vec![""], "{target_left:?}");

    // and the restored cluster fails over like any other
    restored.kill_machine(rp);
    let other = 1 - rp;
    wait_for("the restored cluster's replica to take over", LONG, || {
        (restored.primary() == Some(other)).then_some(())
    })
    .map_err(|e| format!("{e}\n{}", restored.logs_tail()))
    .unwrap();
    let count = sql(&restored.nodes[other], "SELECT count(*) FROM pitr").unwrap();
    assert_eq!(count, vec!["10"]);
    restored.shutdown();

    // no leader: the first cluster stopped (replicas first, then the primary, which gives the
    // lock up), one member's data gone; with `no_leader` on its pgBackRest method it is
    // restored from the repository while nobody leads and replays the archive as a replica
    // (tagged nofailover here, so that it waits for a leader instead of racing to be one)
    let c = &mut lab.cluster;
    let p = c.primary().unwrap();
    for i in all.into_iter().filter(|&i| i != p) {
        c.stop_agent(i);
    }
    c.stop_agent(p);
    let lone = all.into_iter().find(|&i| i != p).unwrap();
    std::fs::remove_dir_all(&c.nodes[lone].data_dir).unwrap();
    let yaml = std::fs::read_to_string(&c.nodes[lone].config_path).unwrap();
    let yaml = yaml
        .replacen(
            "    no_params: true\n",
            "    no_params: true\n    no_leader: true\n",
            1,
        )
        .replacen("  nofailover: false\n", "  nofailover: true\n", 1);
    assert!(yaml.contains("no_leader: true") && yaml.contains("nofailover: true"));
    std::fs::write(&c.nodes[lone].config_path, yaml).unwrap();
    c.start_agent(lone).unwrap();
    wait_for(
        "the member restored without a leader, in recovery",
        LONG,
        || {
            let log = c.nodes[lone].log();
            (log.contains("no leader: building this member from a backup")
                && log.contains("replica data directory built method=\"pgbackrest\"")
                && sql(&c.nodes[lone], "SELECT pg_is_in_recovery()").ok()? == vec!["t"])
            .then_some(())
        },
    )
    .map_err(|e| format!("{e}\n{}", c.logs_tail()))
    .unwrap();
    // the archive replayed: every row committed before the cluster stopped
    wait_for("the archive replayed", LONG, || {
        (sql(&c.nodes[lone], "SELECT count(*) FROM pitr").ok()? == vec!["20"]).then_some(())
    })
    .map_err(|e| format!("{e}\n{}", c.logs_tail()))
    .unwrap();
    assert_eq!(c.nodes[lone].status().unwrap()["role"], "replica");
    // the others come back; it follows the new leader
    for i in all.into_iter().filter(|&i| i != lone) {
        c.start_agent(i).unwrap();
    }
    let p = c
        .wait_streaming_among(&all, LONG)
        .map_err(|e| format!("{e}\n{}", c.logs_tail()))
        .unwrap();
    assert_ne!(p, lone);
}
