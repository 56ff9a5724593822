//! A standby cluster (a DR site) following a running primary cluster through
//! `standby_cluster` in its dynamic configuration: its first member clones the other cluster's
//! primary and is the standby leader (`/standby-leader` 200, never writable), the other members
//! cascade from it; writes on the primary cluster appear on all; when the standby leader's
//! machine is lost another member becomes standby leader, the third follows it, and it keeps
//! replicating; a switchover is refused (no primary); `console --batch promote-cluster` makes
//! the standby cluster a cluster of its own that takes writes.

use pgpilot_e2e::*;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(120);

fn role(n: &Node) -> Option<String> {
    n.status()
        .and_then(|s| s["role"].as_str().map(str::to_string))
}

/// Waits until `rows` rows are in the table on node `n`.
fn wait_rows(n: &Node, rows: usize, c: &TestCluster) {
    wait_for("the rows replicated", LONG, || {
        (sql(n, "SELECT count(*) FROM dr").ok()? == vec![rows.to_string()]).then_some(())
    })
    .map_err(|e| format!("{e}\n{}", c.logs_tail()))
    .unwrap();
}

#[test]
fn a_standby_cluster_follows_fails_over_and_is_promoted() {
    if !prerequisites() {
        return;
    }
    let spec = ClusterSpec {
        scope: "dcmain".into(),
        nodes: 1,
        ..Default::default()
    };
    let (lab, p) = Lab::healthy(spec).unwrap();
    let main = &lab.cluster.nodes[p];
    sql(main, "CREATE TABLE dr (id int)").unwrap();
    sql(main, "INSERT INTO dr VALUES (1)").unwrap();

    // the standby cluster, in the same etcd under another scope
    let spec = ClusterSpec {
        scope: "dcstandby".into(),
        nodes: 3,
        ..Default::default()
    };
    let dir = lab.work.path.join("standby");
    std::fs::create_dir_all(&dir).unwrap();
    chown_postgres(&dir).unwrap();
    let mut dr = TestCluster::new(spec, &dir, &lab.etcd.endpoint()).unwrap();
    for n in &dr.nodes {
        let yaml = std::fs::read_to_string(&n.config_path).unwrap();
        std::fs::write(
            &n.config_path,
            yaml.replace(
                "    maximum_lag_on_failover: 1048576\n",
                &format!(
                    "    maximum_lag_on_failover: 1048576\n    standby_cluster:\n      host: {}\n      port: {}\n",
                    main.host, main.pg_port
                ),
            ),
        )
        .unwrap();
    }
    dr.start_all().unwrap();
    // a standby leader, and every other member cascading from it
    let cascade = |dr: &TestCluster, among: &[usize]| {
        let l = among
            .iter()
            .copied()
            .find(|&i| role(&dr.nodes[i]).as_deref() == Some("standby_leader"))?;
        among
            .iter()
            .filter(|&&i| i != l)
            .all(|&i| {
                dr.nodes[i].status().is_some_and(|s| {
                    s["role"] == "replica" && s["replication_state"] == "streaming"
                })
            })
            .then_some(l)
    };
    let leader = wait_for("a standby leader and cascading replicas", LONG, || {
        cascade(&dr, &[0, 1, 2])
    })
    .map_err(|e| format!("{e}\n{}", dr.logs_tail()))
    .unwrap();
    let other = (leader + 1) % 3;
    assert_eq!(dr.nodes[leader].get("/standby-leader").unwrap().0, 200);
    assert_eq!(dr.nodes[other].get("/standby-leader").unwrap().0, 503);
    for n in &dr.nodes {
        assert_eq!(n.get("/primary").unwrap().0, 503, "{}", n.name);
    }
    // writes on the primary cluster reach both members; the standby cluster takes none
    sql(main, "INSERT INTO dr VALUES (2)").unwrap();
    for n in &dr.nodes {
        wait_rows(n, 2, &dr);
    }
    assert!(sql(&dr.nodes[leader], "INSERT INTO dr VALUES (99)").is_err());

    // the standby leader's machine is lost: another member becomes standby leader and the
    // third cascades from it
    dr.kill_machine(leader);
    let rest: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let other = wait_for(
        "a new standby leader and the cascade following it",
        LONG,
        || cascade(&dr, &rest),
    )
    .map_err(|e| format!("{e}\n{}", dr.logs_tail()))
    .unwrap();
    sql(main, "INSERT INTO dr VALUES (3)").unwrap();
    for &i in &rest {
        wait_rows(&dr.nodes[i], 3, &dr);
    }
    assert_eq!(dr.nodes[other].get("/primary").unwrap().0, 503);
    // a switchover in a standby cluster is refused: it has no primary
    let (code, out, err) = console(&[
        "-c",
        &dr.nodes[other].config_path.display().to_string(),
        "--batch",
        "switchover",
        "dcstandby",
        "--force",
    ])
    .unwrap();
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        format!("{out}{err}").contains("standby cluster"),
        "{out}{err}"
    );

    // promote-cluster: the standby cluster becomes a cluster of its own
    let config = dr.nodes[other].config_path.display().to_string();
    let (code, out, err) = console(&[
        "-c",
        &config,
        "--batch",
        "promote-cluster",
        "dcstandby",
        "--force",
    ])
    .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    wait_for("the promoted cluster's primary", LONG, || {
        (dr.nodes[other].get("/primary").ok()?.0 == 200).then_some(())
    })
    .map_err(|e| format!("{e}\n{}", dr.logs_tail()))
    .unwrap();
    sql(&dr.nodes[other], "INSERT INTO dr VALUES (4)").unwrap();
    assert_eq!(
        sql(&dr.nodes[other], "SELECT count(*) FROM dr").unwrap(),
        vec!["4"]
    );
    dr.shutdown();
}
