//! Permanent replication slots from the dynamic configuration: a logical slot (test_decoding,
//! a CDC consumer's) and a physical one are created on the leader and kept on every replica
//! that may be promoted; across a switchover and a failover the logical consumer reads every
//! change exactly once (skipping, by LSN, what a new primary's copy of the slot delivers again,
//! as CDC consumers such as Debezium do), and the physical slot is there on each new primary.
//! On PostgreSQL 15 (replicas keep copies the agents make) and 18 (a failover slot on the leader,
//! kept on the replicas by PostgreSQL's own `sync_replication_slots`; the old primary's own
//! copy dropped after the switchover so that its server syncs it).

use pgpilot_e2e::*;
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(120);

/// A logical consumer: changes read from the slot with `pg_logical_slot_get_changes`, each
/// inserted id kept once (a change at or before the last LSN seen is one already read).
#[derive(Default)]
struct Consumer {
    last_lsn: u64,
    ids: BTreeMap<i64, u32>,
}

impl Consumer {
    fn read(&mut self, node: &Node) -> anyhow::Result<()> {
        let rows = sql(
            node,
            "SELECT lsn::text || ' ' || data FROM pg_logical_slot_get_changes('cdc', NULL, NULL)",
        )?;
        for row in rows {
            let (lsn, data) = row.split_once(' ').unwrap_or_default();
            let lsn = lsn.parse::<shared::types::Lsn>().map(|l| l.0).unwrap_or(0);
            let Some(id) = data
                .strip_prefix("table public.cdc_t: INSERT: id[integer]:")
                .and_then(|v| v.trim().parse::<i64>().ok())
            else {
                continue;
            };
            if lsn <= self.last_lsn {
                continue;
            }
            self.last_lsn = lsn;
            *self.ids.entry(id).or_default() += 1;
        }
        Ok(())
    }
}

fn insert(node: &Node, from: i64, to: i64) {
    for id in from..=to {
        sql(node, &format!("INSERT INTO cdc_t VALUES ({id})")).unwrap();
    }
}

/// The kind of slot `name` on `node`, if it has one (a temporary one — a slot PostgreSQL 17+
/// is still synchronizing — does not count); with PostgreSQL 17+ `failover` and `synced`.
fn slot_kind(node: &Node, name: &str) -> Option<String> {
    sql(
        node,
        &format!(
            "SELECT slot_type || coalesce(' failover=' || (to_jsonb(s) ->> 'failover') || ' synced=' || (to_jsonb(s) ->> 'synced'), '')
             FROM pg_replication_slots s WHERE slot_name = '{name}' AND NOT temporary"
        ),
    )
    .ok()?
    .into_iter()
    .next()
}

/// Waits until every running member has both permanent slots; with `failover_slots`
/// (PostgreSQL 17+) the logical one is a failover slot on the primary and kept by the server's
/// own synchronization on the replicas.
fn wait_slots_everywhere(c: &TestCluster, nodes: &[usize], failover_slots: bool) {
    wait_for("the permanent slots on every member", LONG, || {
        let p = c.primary()?;
        nodes
            .iter()
            .all(|&i| {
                let logical = slot_kind(&c.nodes[i], "cdc");
                let logical_ok = match (failover_slots, i == p) {
                    (false, _) => logical.is_some_and(|k| k.starts_with("logical")),
                    (true, true) => {
                        logical.as_deref() == Some("logical failover=true synced=false")
                            || logical.as_deref() == Some("logical failover=true synced=true")
                    }
                    (true, false) => {
                        logical.as_deref() == Some("logical failover=true synced=true")
                    }
                };
                logical_ok
                    && slot_kind(&c.nodes[i], "keeper").is_some_and(|k| k.starts_with("physical"))
            })
            .then_some(())
    })
    .map_err(|e| format!("{e}\n{}\n{}", c.logs_tail(), server_logs(c, nodes)))
    .unwrap();
}

/// The last lines of each server's own log (slot synchronization reports there).
fn server_logs(c: &TestCluster, nodes: &[usize]) -> String {
    let mut out = String::new();
    for &i in nodes {
        let log = std::fs::read_to_string(c.nodes[i].data_dir.join("log/postmaster.log"))
            .unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
        out.push_str(&format!("--- {} server ---\n{tail}\n", c.nodes[i].name));
    }
    out
}

/// Waits until every node in `nodes` holds `n` rows.
fn wait_replicated(c: &TestCluster, nodes: &[usize], n: i64) {
    wait_for("the rows on every member", LONG, || {
        nodes
            .iter()
            .all(|&i| {
                sql(&c.nodes[i], "SELECT count(*) FROM cdc_t").ok() == Some(vec![n.to_string()])
            })
            .then_some(())
    })
    .unwrap();
}

#[test]
fn permanent_slots_survive_switchover_and_failover() {
    if !prerequisites() {
        return;
    }
    slots_across_switchover_and_failover("slots", None);
}

#[test]
fn permanent_slots_survive_switchover_and_failover_on_postgresql_18() {
    if !prerequisites() {
        return;
    }
    let Some(pg18) = pg18_or_skip() else { return };
    slots_across_switchover_and_failover("slots18", Some(pg18));
}

fn slots_across_switchover_and_failover(scope: &str, bin_dir: Option<std::path::PathBuf>) {
    // PostgreSQL 18 with failover slots asked for (sync_replication_slots: on, cluster-wide):
    // the replicas' servers keep the logical slot themselves
    let failover_slots = bin_dir.is_some();
    let spec = ClusterSpec {
        scope: scope.into(),
        bin_dir,
        ..Default::default()
    };
    let mut lab = Lab::new(scope, spec, true).unwrap();
    for n in &lab.cluster.nodes {
        let yaml = std::fs::read_to_string(&n.config_path).unwrap();
        let yaml = yaml
            .replace(
                "        max_connections: 50\n",
                if failover_slots {
                    "        max_connections: 50\n        wal_level: logical\n        sync_replication_slots: 'on'\n"
                } else {
                    "        max_connections: 50\n        wal_level: logical\n"
                },
            )
            .replace(
                "    maximum_lag_on_failover: 1048576\n",
                "    maximum_lag_on_failover: 1048576\n    slots:\n      cdc:\n        type: logical\n        database: postgres\n        plugin: test_decoding\n      keeper:\n        type: physical\n",
            );
        std::fs::write(&n.config_path, yaml).unwrap();
    }
    let c = &mut lab.cluster;
    c.start_all().unwrap();
    let p = c.wait_healthy(LONG).unwrap();
    let all = [0, 1, 2];
    sql(&c.nodes[p], "CREATE TABLE cdc_t (id int PRIMARY KEY)").unwrap();
    // replicas send feedback for their copies of the logical slot
    let r = (p + 1) % 3;
    assert_eq!(
        sql(&c.nodes[r], "SHOW hot_standby_feedback").unwrap(),
        vec!["on"]
    );
    if failover_slots {
        assert_eq!(
            sql(&c.nodes[r], "SHOW sync_replication_slots").unwrap(),
            vec!["on"]
        );
    }

    let mut consumer = Consumer::default();
    insert(&c.nodes[p], 1, 20);
    consumer.read(&c.nodes[p]).unwrap();
    insert(&c.nodes[p], 21, 40);
    consumer.read(&c.nodes[p]).unwrap();
    // (a failover slot reaches a replica for good once its consumer has moved it on: until
    // then PostgreSQL keeps the replica's copy temporary)
    wait_slots_everywhere(c, &all, failover_slots);
    wait_replicated(c, &all, 40);

    // a switchover: the consumer goes on on the new primary
    let (code, body) = http_call(
        "POST",
        &c.nodes[p].api("/switchover"),
        Some(&json!({"leader": c.nodes[p].name, "candidate": c.nodes[r].name}).to_string()),
        None,
        LONG,
    )
    .unwrap();
    assert_eq!(code, 200, "{body}");
    let p = c.wait_healthy(LONG).unwrap();
    assert_eq!(p, r);
    consumer.read(&c.nodes[p]).unwrap();
    insert(&c.nodes[p], 41, 60);
    consumer.read(&c.nodes[p]).unwrap();
    wait_slots_everywhere(c, &all, failover_slots);
    wait_replicated(c, &all, 60);

    // a failover: the primary's machine is lost
    c.kill_machine(p);
    let q = wait_for("a new primary", LONG, || c.primary().filter(|&i| i != p))
        .map_err(|e| format!("{e}\n{}", c.logs_tail()))
        .unwrap();
    consumer
        .read(&c.nodes[q])
        .map_err(|e| format!("{e}\n{}", c.logs_tail()))
        .unwrap();
    insert(&c.nodes[q], 61, 80);
    consumer.read(&c.nodes[q]).unwrap();

    // every change exactly once, none missing
    let expected: Vec<i64> = (1..=80).collect();
    let seen: Vec<i64> = consumer.ids.keys().copied().collect();
    assert_eq!(seen, expected, "changes missing or extra");
    assert!(
        consumer.ids.values().all(|&n| n == 1),
        "a change read twice: {:?}",
        consumer
            .ids
            .iter()
            .filter(|(_, n)| **n > 1)
            .collect::<Vec<_>>()
    );
    // the physical slot is on the new primary, holding WAL
    let keeper = sql(
        &c.nodes[q],
        "SELECT restart_lsn IS NOT NULL FROM pg_replication_slots WHERE slot_name = 'keeper'",
    )
    .unwrap();
    assert_eq!(keeper, vec!["t"]);
}
