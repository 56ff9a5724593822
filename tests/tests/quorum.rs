//! Quorum commit (`synchronous_mode: quorum`, Patroni 4) against real etcd and PostgreSQL: the
//! primary names every streaming standby as `ANY k (…)`, the `sync` key carries Patroni's
//! `quorum` and voters, `/quorum` and `/read-only-quorum` answer as Patroni's; the primary's
//! machine lost under load promotes a member that holds every acknowledged write, the voting
//! set follows the members that come and go, and `synchronous_node_count` changes move the
//! setting and the key in the order that keeps acknowledged commits safe both ways.

use pgpilot_e2e::*;
use serde_json::Value;
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(120);

/// The `sync` key: `(leader, quorum, voters)`.
fn sync_key(etcd: &Etcd, scope: &str) -> Option<(String, u64, Vec<String>)> {
    let v = etcd.get_prefix(&format!("/service/{scope}/sync")).ok()?;
    let (_, raw, _) = v.first()?;
    let json: Value = serde_json::from_str(raw).ok()?;
    let voters = json["sync_standby"]
        .as_str()
        .map(|s| s.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    Some((
        json["leader"].as_str()?.to_string(),
        json["quorum"].as_u64()?,
        voters,
    ))
}

fn setting(n: &Node) -> String {
    sql(n, "SHOW synchronous_standby_names")
        .ok()
        .and_then(|r| r.into_iter().next())
        .unwrap_or_default()
}

/// `ANY k ("a","b")` for these members, sorted.
fn any(k: usize, names: &[&str]) -> String {
    let mut names: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    names.sort();
    format!("ANY {k} ({})", names.join(","))
}

fn sorted(names: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// Waits until the key says `leader`, `quorum`, `voters` and the leader's setting is `guc`.
fn wait_quorum_state(
    c: &TestCluster,
    etcd: &Etcd,
    leader: usize,
    quorum: u64,
    voters: &[&str],
    guc: &str,
) {
    let scope = c.spec.scope.clone();
    let want = (c.nodes[leader].name.clone(), quorum, sorted(voters));
    wait_for(
        &format!("sync key {want:?} and synchronous_standby_names {guc}"),
        LONG,
        || (sync_key(etcd, &scope)? == want && setting(&c.nodes[leader]) == guc).then_some(()),
    )
    .map_err(|e| {
        format!(
            "{e}\nkey now {:?}, setting now {:?}\n{}",
            sync_key(etcd, &scope),
            setting(&c.nodes[leader]),
            c.logs_tail()
        )
    })
    .unwrap();
}

/// The position in the leader's log of the first line after `from` containing `needle`.
fn log_position(log: &str, from: usize, needle: &str) -> Option<usize> {
    log[from..].find(needle).map(|i| i + from)
}

/// Sets `synchronous_node_count` to `count` on leader `q` and waits for the key's `quorum` and
/// the setting `ANY count` of `voters`; the leader's log must show `order.0` before `order.1`
/// (the raising step before the lowering one).
fn change_count(
    c: &TestCluster,
    etcd: &Etcd,
    q: usize,
    count: usize,
    quorum: u64,
    voters: &[&str],
    order: (&str, &str),
) {
    let from = c.nodes[q].log().len();
    let (code, body) = http_request(
        "PATCH",
        &c.nodes[q].api("/config"),
        Some(&format!(r#"{{"synchronous_node_count": {count}}}"#)),
    )
    .unwrap();
    assert_eq!(code, 200, "{body}");
    wait_quorum_state(c, etcd, q, quorum, voters, &any(count, voters));
    let log = c.nodes[q].log();
    let first = log_position(&log, from, order.0).expect(order.0);
    let second = log_position(&log, from, order.1).expect(order.1);
    assert!(
        first < second,
        "{:?} came after {:?}: a decrease before the matching increase",
        order.0,
        order.1
    );
}

#[test]
fn quorum_commit_fails_over_under_load_and_changes_its_count_safely() {
    if !prerequisites() {
        return;
    }
    let spec = ClusterSpec {
        scope: "quorum".into(),
        dcs_yaml: "    synchronous_mode: quorum\n".into(),
        ..Default::default()
    };
    let (mut lab, p) = Lab::healthy(spec).unwrap();
    let Lab {
        cluster: c, etcd, ..
    } = &mut lab;
    let names: Vec<String> = c.nodes.iter().map(|n| n.name.clone()).collect();
    let name = |i: usize| names[i].clone();
    let (r1, r2) = ((p + 1) % 3, (p + 2) % 3);
    let (n1, n2) = (name(r1), name(r2));

    // every streaming standby votes; one acknowledgement of the two is needed, so a new
    // primary must see one other voter at or behind it
    wait_quorum_state(c, etcd, p, 1, &[&n1, &n2], &any(1, &[&n1, &n2]));
    for &r in &[r1, r2] {
        wait_for(
            &format!("/quorum to answer 200 on {}", c.nodes[r].name),
            Duration::from_secs(30),
            || (c.nodes[r].get("/quorum").ok()?.0 == 200).then_some(()),
        )
        .unwrap();
        assert_eq!(c.nodes[r].get("/read-only-quorum").unwrap().0, 200);
        assert_eq!(c.nodes[r].get("/sync").unwrap().0, 503);
        assert_eq!(c.nodes[r].get("/async").unwrap().0, 503);
        assert_eq!(c.nodes[r].status().unwrap()["quorum_standby"], true);
    }
    assert_eq!(c.nodes[p].get("/quorum").unwrap().0, 503);
    assert_eq!(c.nodes[p].get("/read-only-quorum").unwrap().0, 200);
    let (_, cluster) = c.nodes[p].get("/cluster").unwrap();
    let cluster: Value = serde_json::from_str(&cluster).unwrap();
    let roles: Vec<&str> = cluster["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["role"].as_str())
        .collect();
    assert_eq!(
        roles.iter().filter(|r| **r == "quorum_standby").count(),
        2,
        "{cluster}"
    );
    // real patronictl reads the same keys the same way
    if let Some(ctl) = patronictl_or_skip("checking patronictl list against quorum commit") {
        let (ok, out) = patronictl_run(&ctl, &c.nodes[p].config_path, &["list", "-f", "json"]);
        assert!(ok, "{out}");
        assert_eq!(out.matches("Quorum Standby").count(), 2, "{out}");
    }

    // the primary's machine is lost under load: a voter with the other's vote takes over
    let writer = Writer::start(&c.nodes).unwrap();
    let probe = WriteProbe::start(&c.nodes);
    writer.wait_more(50, Duration::from_secs(30)).unwrap();
    let since = Instant::now();
    c.kill_machine(p);
    let q = wait_for("a new leader", Duration::from_secs(90), || {
        c.leader_index(etcd).filter(|&i| i != p)
    })
    .map_err(|e| format!("{e}\n{}", c.logs_tail()))
    .unwrap();
    writer
        .wait_more(30, Duration::from_secs(90))
        .map_err(|e| format!("{e}\n{}", c.logs_tail()))
        .unwrap();
    // the lost primary leaves the voting set once the remaining standby confirmed
    let other = if q == r1 { r2 } else { r1 };
    let on = name(other);
    wait_quorum_state(c, etcd, q, 0, &[&on], &any(1, &[&on]));

    // it comes back, rewound: a voter again, and the quorum is 1 again
    let old = name(p);
    c.start_agent(p).unwrap();
    c.wait_healthy(LONG).unwrap();
    wait_quorum_state(c, etcd, q, 1, &[&on, &old], &any(1, &[&on, &old]));
    writer
        .wait_more(30, Duration::from_secs(90))
        .map_err(|e| format!("{e}\n{}", c.logs_tail()))
        .unwrap();

    // synchronous_node_count 2: the setting asks for both before the key lowers the quorum;
    // and back to 1: the key raises the quorum before the setting asks for fewer
    let voters = [on.as_str(), old.as_str()];
    change_count(c, etcd, q, 2, 0, &voters, ("ANY 2 (", "quorum=0"));
    writer
        .wait_more(20, Duration::from_secs(90))
        .map_err(|e| format!("{e}\n{}", c.logs_tail()))
        .unwrap();
    change_count(c, etcd, q, 1, 1, &voters, ("quorum=1", "ANY 1 ("));
    writer
        .wait_more(20, Duration::from_secs(90))
        .map_err(|e| format!("{e}\n{}", c.logs_tail()))
        .unwrap();
    no_split_brain_and_nothing_lost(c, probe, writer, since);
}
