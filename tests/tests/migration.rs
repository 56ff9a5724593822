//! Migrating a running Patroni cluster to pgpilot member by member, as the README describes it,
//! against real Patroni 4.x: the same YAML, the same data directories, writes running all along.
//! Each replica's `patroni` is stopped and `agent` started in its place; a switchover moves the
//! leadership from the Patroni leader to a pgpilot member (Patroni carries it out, pgpilot takes
//! the lock); the last Patroni member is replaced; every acknowledged row is still there.

use pgpilot_e2e::*;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(180);

/// Whether node `i` answers as pgpilot (its `/patroni` carries the `pgpilot` object).
fn runs_pgpilot(c: &TestCluster, i: usize) -> bool {
    c.nodes[i]
        .status()
        .is_some_and(|s| s.get("pgpilot").is_some())
}

/// Waits until node `i` streams as a replica under its new agent.
fn wait_replica(c: &TestCluster, i: usize) {
    wait_for("the member to stream again under pgpilot", LONG, || {
        c.nodes[i]
            .status()
            .filter(|s| {
                s.get("pgpilot").is_some()
                    && s["role"] == "replica"
                    && s["replication_state"] == "streaming"
            })
            .map(|_| ())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs_tail()));
}

#[test]
fn a_patroni_cluster_moves_to_pgpilot_member_by_member() {
    if !prerequisites() {
        return;
    }
    let Some(spec) = patroni_cluster_spec("migrate") else {
        return;
    };
    let mut lab = Lab::new("e2e-migrate", spec, true).unwrap();
    let Lab {
        cluster: c, etcd, ..
    } = &mut lab;
    c.start_all().unwrap();
    let leader = c.wait_healthy(LONG).unwrap();
    assert!(
        !runs_pgpilot(c, leader),
        "Patroni runs the cluster at first"
    );
    let writer = Writer::start(&c.nodes).unwrap();
    writer.wait_more(20, LONG).unwrap();
    let started = std::time::Instant::now();

    // 1. each replica: stop patroni (it stops PostgreSQL), start the agent on the same YAML
    c.spec.daemon = None;
    let replicas: Vec<usize> = (0..c.nodes.len()).filter(|&i| i != leader).collect();
    for &i in &replicas {
        c.stop_agent(i);
        c.start_agent(i).unwrap();
        wait_replica(c, i);
        writer.wait_more(20, LONG).unwrap();
    }
    // the mixed cluster: patronictl-shaped listing by the console shows all three
    let (code, out, err) = console(&[
        "--etcd",
        &etcd.endpoint(),
        "--batch",
        "list",
        "migrate",
        "-f",
        "json",
    ])
    .unwrap();
    assert_eq!(code, 0, "{err}");
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 3, "{out}");

    // 2. move the leadership to a pgpilot member: Patroni's leader hands over, pgpilot promotes
    let candidate = c.nodes[replicas[0]].name.clone();
    let (code, out, err) = console(&[
        "--etcd",
        &etcd.endpoint(),
        "--batch",
        "switchover",
        "migrate",
        "--candidate",
        &candidate,
        "--force",
    ])
    .unwrap();
    assert_eq!(code, 0, "{out}{err}\n{}", c.logs_tail());
    assert_eq!(c.leader_name(etcd).as_deref(), Some(candidate.as_str()));
    writer.wait_more(20, LONG).unwrap();

    // 3. the old Patroni leader, now a replica, gets its agent too
    wait_for("the old leader to stream from the new one", LONG, || {
        c.nodes[leader]
            .status()
            .filter(|s| s["role"] == "replica" && s["state"] == "running")
            .map(|_| ())
    })
    .unwrap();
    c.stop_agent(leader);
    c.start_agent(leader).unwrap();
    wait_replica(c, leader);
    let p = c.wait_healthy(LONG).unwrap();
    assert_eq!(c.nodes[p].name, candidate);
    assert!(
        (0..3).all(|i| runs_pgpilot(c, i)),
        "every member runs pgpilot"
    );
    writer.wait_more(20, LONG).unwrap();

    // nothing acknowledged was lost, and every member holds it
    let (acked, gap) = writer.finish(started);
    eprintln!(
        "{} rows acknowledged, longest write gap {:.2}s",
        acked.len(),
        gap.as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(2));
    for n in &c.nodes {
        let have = written_ids(n).unwrap();
        let missing = acked.iter().filter(|id| !have.contains(id)).count();
        assert_eq!(missing, 0, "{} misses {missing} acknowledged rows", n.name);
    }
}
