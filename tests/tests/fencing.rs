//! No split brain, no lost commits, end to end: real etcd, three PostgreSQL 15 servers and
//! agents on loopback, a writer that records every acknowledged id through a multi-host
//! `target_session_attrs=read-write` connection, and a probe that asks every server for a write
//! every 100 ms. The primary's agent killed with SIGKILL (PostgreSQL left running, no hardware
//! watchdog): its guard fences the primary at once, so no tick ever sees two writable primaries.

use pgpilot_e2e::*;
use std::time::{Duration, Instant};

const HEALTHY: Duration = Duration::from_secs(120);

fn kill_agent(c: &mut TestCluster, i: usize) -> i32 {
    let mut agent = c.nodes[i].agent.take().expect("agent running");
    let pid = agent.pid();
    agent.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = agent.stop(Duration::from_secs(5));
    pid
}

fn alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// A replica's agent killed: its PostgreSQL goes on streaming, the writes go on. The primary's
/// agent killed: the guard stops the primary before the lease ends, a replica takes over after
/// it, the old primary rejoins when its agent is back — 0 ticks with two writable primaries,
/// 0 acknowledged ids lost.
#[test]
fn killing_the_primarys_agent_fences_the_primary_and_loses_nothing() {
    if !prerequisites() {
        return;
    }
    let spec = ClusterSpec {
        scope: "fence".into(),
        ..Default::default()
    };
    let (mut lab, p) = Lab::healthy(spec).unwrap();
    let Lab {
        cluster: c, etcd, ..
    } = &mut lab;
    wait_for("the guards to report", Duration::from_secs(30), || {
        let states: Vec<Option<String>> = c.nodes.iter().map(fencing_state).collect();
        states
            .iter()
            .enumerate()
            .all(|(i, s)| s.as_deref() == Some(if i == p { "armed" } else { "disarmed" }))
            .then_some(())
    })
    .unwrap();
    let writer = Writer::start(&c.nodes).unwrap();
    let probe = WriteProbe::start(&c.nodes);
    writer.wait_more(30, Duration::from_secs(30)).unwrap();

    // a replica's agent dies: nothing else changes
    let r = (p + 1) % c.nodes.len();
    let postmaster = c.nodes[r].postmaster_pid().unwrap();
    kill_agent(c, r);
    writer.wait_more(25, Duration::from_secs(30)).unwrap();
    assert!(alive(postmaster), "the replica's PostgreSQL was stopped");
    assert_eq!(
        sql(&c.nodes[r], "SELECT status FROM pg_stat_wal_receiver").unwrap(),
        vec!["streaming".to_string()]
    );
    assert_eq!(c.leader_index(etcd), Some(p));
    c.start_agent(r).unwrap();
    c.wait_healthy(HEALTHY).unwrap();

    // the primary's agent dies
    writer.wait_more(10, Duration::from_secs(30)).unwrap();
    let killed_at = Instant::now();
    kill_agent(c, p);
    let new = wait_for("a new leader", Duration::from_secs(60), || {
        c.leader_index(etcd).filter(|&i| i != p)
    })
    .map_err(|e| format!("{e}\n{}", c.logs_tail()))
    .unwrap();
    writer
        .wait_more(30, Duration::from_secs(60))
        .map_err(|e| format!("{e}\n{}", c.logs_tail()))
        .unwrap();
    let killed_tick = probe.tick_of(killed_at);
    let fenced = probe.last_writable(p).unwrap();
    let takeover = probe.first_writable_since(new, killed_tick).unwrap();
    assert!(
        fenced < takeover,
        "the old primary took writes until tick {fenced}, the new one from tick {takeover}"
    );
    assert!(
        c.nodes[p].log().contains("fencing guard"),
        "{}",
        c.nodes[p].log()
    );

    // healing: the agent comes back and the old primary rejoins as a replica
    c.start_agent(p).unwrap();
    c.wait_healthy(HEALTHY).unwrap();
    assert_eq!(c.leader_index(etcd), Some(new), "leadership moved again");
    writer.wait_more(10, Duration::from_secs(30)).unwrap();
    no_split_brain_and_nothing_lost(c, probe, writer, killed_at);
}

/// `failsafe_mode`: etcd stopped with every member healthy → the primary keeps serving (every
/// member confirms it over REST, nobody races); one member lost as well → it can no longer be
/// confirmed and stops taking writes; etcd back → the cluster heals with every acknowledged id.
#[test]
fn failsafe_mode_keeps_the_primary_while_every_member_confirms_it() {
    if !prerequisites() {
        return;
    }
    let spec = ClusterSpec {
        scope: "failsafe".into(),
        ..Default::default()
    };
    let ttl = spec.ttl;
    let (mut lab, p) = Lab::healthy(spec).unwrap();
    let Lab {
        cluster: c, etcd, ..
    } = &mut lab;
    enable_failsafe(c, etcd, p).unwrap();
    let writer = Writer::start(&c.nodes).unwrap();
    let probe = WriteProbe::start(&c.nodes);
    writer.wait_more(25, Duration::from_secs(30)).unwrap();

    etcd.stop();
    let stopped = Instant::now();
    // well past the ttl the primary still takes writes, confirmed by both replicas
    while stopped.elapsed() < Duration::from_secs(2 * ttl + 5) {
        writer
            .wait_more(10, Duration::from_secs(10))
            .map_err(|e| format!("{e}\n{}", c.logs_tail()))
            .unwrap();
    }
    let s = c.nodes[p].status().unwrap();
    assert_eq!(s["failsafe_mode_is_active"], true, "{s}");
    assert_eq!(s["role"], "primary", "{s}");
    for (i, n) in c.nodes.iter().enumerate() {
        if i != p {
            assert!(
                n.log().contains("failsafe:"),
                "{} never confirmed the primary",
                n.name
            );
            assert_eq!(sql(n, "SELECT pg_is_in_recovery()").unwrap(), vec!["t"]);
        }
    }

    // a replica's machine dies too: the primary cannot be confirmed and stops taking writes
    let r = (p + 1) % c.nodes.len();
    c.kill_machine(r);
    wait_for(
        "the primary to stop taking writes",
        Duration::from_secs(ttl + 20),
        || {
            let rows = sql(&c.nodes[p], "SELECT pg_is_in_recovery()").ok()?;
            (rows == vec!["t".to_string()]).then_some(())
        },
    )
    .map_err(|e| format!("{e}\n{}", c.logs_tail()))
    .unwrap();

    // etcd and the lost member come back: the cluster heals with every acknowledged row
    etcd.start().unwrap();
    c.start_agent(r).unwrap();
    c.wait_healthy(HEALTHY).unwrap();
    writer
        .wait_more(25, Duration::from_secs(90))
        .map_err(|e| format!("{e}\n{}", c.logs_tail()))
        .unwrap();
    no_split_brain_and_nothing_lost(c, probe, writer, stopped);
}

/// `synchronous_mode_strict`: the primary's machine dies under load → only its synchronous
/// standby is promoted and no acknowledged id is lost; a primary left without any standby
/// takes no writes (they wait) instead of acknowledging unsafe commits; everything heals.
#[test]
fn strict_synchronous_mode_loses_no_acknowledged_commit() {
    if !prerequisites() {
        return;
    }
    let spec = ClusterSpec {
        scope: "strictsync".into(),
        ..Default::default()
    };
    let (mut lab, p) = Lab::healthy(spec).unwrap();
    let Lab {
        cluster: c, etcd, ..
    } = &mut lab;
    let scope = c.spec.scope.clone();
    let (code, body) = http_request(
        "PATCH",
        &c.nodes[p].api("/config"),
        Some(r#"{"synchronous_mode": true, "synchronous_mode_strict": true}"#),
    )
    .unwrap();
    assert_eq!(code, 200, "{body}");
    let leader = c.nodes[p].name.clone();
    let s = wait_for("a published synchronous standby", HEALTHY, || {
        let names = etcd.sync_standbys(&scope, &leader)?;
        c.nodes.iter().position(|n| names.contains(&n.name))
    })
    .map_err(|e| format!("{e}\n{}", c.logs_tail()))
    .unwrap();
    let t = (0..c.nodes.len()).find(|&i| i != p && i != s).unwrap();
    // the REST API of each member shows it (as of its next cycle)
    wait_for(
        "GET /sync to answer 200 on the synchronous standby",
        Duration::from_secs(30),
        || {
            let shown = c.nodes[s].status()?["sync_standby"] == true;
            (shown && c.nodes[s].get("/sync").ok()?.0 == 200).then_some(())
        },
    )
    .unwrap();
    assert_eq!(c.nodes[t].get("/sync").unwrap().0, 503);
    let writer = Writer::start(&c.nodes).unwrap();
    let probe = WriteProbe::start(&c.nodes);
    writer.wait_more(50, Duration::from_secs(30)).unwrap();

    // failover under load: only the synchronous standby may take over
    let killed_at = Instant::now();
    c.kill_machine(p);
    let new = wait_for("a new leader", Duration::from_secs(90), || {
        c.leader_index(etcd).filter(|&i| i != p)
    })
    .map_err(|e| format!("{e}\n{}", c.logs_tail()))
    .unwrap();
    assert_eq!(
        new, s,
        "a member that was not the synchronous standby was promoted"
    );
    writer
        .wait_more(30, Duration::from_secs(90))
        .map_err(|e| format!("{e}\n{}", c.logs_tail()))
        .unwrap();

    // the new primary loses its last standby: commits wait rather than being acknowledged
    c.kill_machine(t);
    std::thread::sleep(Duration::from_secs(3));
    let frozen = writer.acked_count();
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        writer.acked_count(),
        frozen,
        "commits were acknowledged without a synchronous standby"
    );
    assert_eq!(
        sql(&c.nodes[s], "SELECT pg_is_in_recovery()").unwrap(),
        vec!["f"]
    );

    // both come back: writes resume, the old primary rejoins, nothing acknowledged is missing
    c.start_agent(t).unwrap();
    c.start_agent(p).unwrap();
    writer
        .wait_more(30, Duration::from_secs(90))
        .map_err(|e| format!("{e}\n{}", c.logs_tail()))
        .unwrap();
    c.wait_healthy(HEALTHY).unwrap();
    writer.wait_more(10, Duration::from_secs(30)).unwrap();
    no_split_brain_and_nothing_lost(c, probe, writer, killed_at);
}

/// The watchdog, Patroni-compatible, through its `testing` driver (a plain file stands in for
/// `/dev/watchdog`; the agent's code path is the real one otherwise): armed with
/// `ttl - safety_margin` and kept alive only while the node leads, closed with the magic `V`
/// when it hands the lock over; a node whose required watchdog cannot be opened never leads.
#[test]
fn the_watchdog_runs_only_while_leading_and_required_means_required() {
    if !prerequisites() {
        return;
    }
    let spec = ClusterSpec {
        scope: "watchdog".into(),
        ..Default::default()
    };
    let mut lab = Lab::new("e2e-watchdog", spec, true).unwrap();
    let Lab {
        cluster: c,
        etcd,
        work,
    } = &mut lab;
    let device = work.path.join("fake-watchdog-device");
    std::fs::write(&device, "").unwrap();
    chown_postgres(&device).unwrap();
    let missing = work.path.join("no-such-watchdog");
    let sections = [
        format!(
            "watchdog:\n  mode: required\n  device: {}\n  driver: testing\n",
            device.display()
        ),
        format!(
            "watchdog:\n  mode: required\n  device: {}\n  driver: testing\n",
            missing.display()
        ),
        "watchdog:\n  mode: automatic\n".to_string(),
    ];
    for (n, extra) in c.nodes.iter().zip(sections) {
        let mut text = std::fs::read_to_string(&n.config_path).unwrap();
        text.push_str(&extra);
        std::fs::write(&n.config_path, text).unwrap();
    }
    // node1 bootstraps and leads; the others join
    c.start_agent(0).unwrap();
    wait_for("node1 to lead", HEALTHY, || {
        (c.leader_index(etcd) == Some(0) && c.primary() == Some(0)).then_some(())
    })
    .unwrap();
    c.start_agent(1).unwrap();
    c.start_agent(2).unwrap();
    c.wait_healthy(HEALTHY).unwrap();
    let armed = wait_for(
        "keepalives on node1's watchdog",
        Duration::from_secs(30),
        || {
            let text = std::fs::read_to_string(&device).ok()?;
            (text.starts_with("Ctimeout=5\n") && text.matches('1').count() >= 3).then_some(text)
        },
    )
    .unwrap();
    assert!(!armed.contains('V'), "{armed}");
    assert_eq!(c.nodes[0].status().unwrap()["pgpilot"]["watchdog"], "armed");
    // a new ttl in the config key sets the armed device's timeout at once (ttl - 5 s margin)
    let (code, text) = http_call(
        "PATCH",
        &c.nodes[0].api("/config"),
        Some(r#"{"ttl": 12}"#),
        None,
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(code, 200, "{text}");
    wait_for(
        "node1's watchdog to take the new ttl",
        Duration::from_secs(30),
        || {
            let text = std::fs::read_to_string(&device).ok()?;
            text.contains("Ctimeout=7\n").then_some(())
        },
    )
    .map_err(|e| format!("{e}\n{}", c.logs_tail()))
    .unwrap();
    assert!(!std::fs::read_to_string(&device).unwrap().contains('V'));
    let s1 = c.nodes[1].status().unwrap();
    assert_eq!(s1["watchdog_failed"], true, "{s1}");

    // a switchover to node3: node1 stops leading and closes its watchdog with the magic V
    let body = format!(
        r#"{{"leader":"{}","candidate":"{}"}}"#,
        c.nodes[0].name, c.nodes[2].name
    );
    let (code, text) = http_post(&c.nodes[0].api("/switchover"), &body).unwrap();
    assert_eq!(code, 200, "{text}");
    wait_for(
        "node1's watchdog to be closed",
        Duration::from_secs(30),
        || {
            std::fs::read_to_string(&device)
                .ok()?
                .ends_with('V')
                .then_some(())
        },
    )
    .unwrap();

    // node3's machine dies: node2 (required watchdog missing) must not take over; node1 does
    c.wait_healthy(HEALTHY).unwrap();
    c.kill_machine(2);
    let new = wait_for("a new leader", Duration::from_secs(60), || {
        c.leader_index(etcd).filter(|&i| i != 2)
    })
    .map_err(|e| format!("{e}\n{}", c.logs_tail()))
    .unwrap();
    assert_eq!(
        new, 0,
        "the member without its required watchdog took the lock"
    );
    wait_for(
        "node1's watchdog armed again",
        Duration::from_secs(30),
        || {
            let text = std::fs::read_to_string(&device).ok()?;
            // the ttl is 12 since the change above: armed again with 7 s
            (text.matches("Ctimeout=7").count() == 2).then_some(())
        },
    )
    .unwrap();
    assert!(c.nodes[1].log().contains("watchdog required but unusable"));
}

/// The primary cut off from etcd and from the other nodes (network namespaces + nftables; the
/// test client still reaches it): it stops taking writes before a new leader is elected, no
/// tick ever sees two writable primaries, and once the network heals it rejoins.
#[test]
fn an_isolated_primary_stops_taking_writes_before_a_new_leader_is_elected() {
    if !prerequisites() || !NetLab::possible() {
        return;
    }
    let net = NetLab::create(3).unwrap();
    let spec = ClusterSpec {
        scope: "isolated".into(),
        ..Default::default()
    };
    let mut lab = Lab::in_netns("e2e-isolated", spec, &net).unwrap();
    let Lab {
        cluster: c, etcd, ..
    } = &mut lab;
    c.start_all().unwrap();
    let p = c.wait_healthy(HEALTHY).unwrap();
    let writer = Writer::start(&c.nodes).unwrap();
    let mut probe = WriteProbe::start(&c.nodes);
    writer.wait_more(30, Duration::from_secs(30)).unwrap();

    let cut_at = Instant::now();
    net.isolate(p).unwrap();
    let new = wait_for("a new leader", Duration::from_secs(60), || {
        c.leader_index(etcd).filter(|&i| i != p)
    })
    .map_err(|e| format!("{e}\n{}", c.logs_tail()))
    .unwrap();
    // etcd is polled: the election happened at most one poll (~0.2 s) before it was seen
    let elected_tick = probe.tick_of(Instant::now()).saturating_sub(3);
    writer
        .wait_more(30, Duration::from_secs(60))
        .map_err(|e| format!("{e}\n{}", c.logs_tail()))
        .unwrap();
    let fenced = probe.last_writable(p).unwrap();
    let cut_tick = probe.tick_of(cut_at);
    eprintln!(
        "isolated at tick {cut_tick}: old primary last writable at tick {fenced}, new leader elected by tick {elected_tick}"
    );
    assert!(
        fenced < elected_tick,
        "the isolated primary took writes until tick {fenced}, after the new leader was elected (tick {elected_tick})"
    );
    assert!(
        c.nodes[p].log().contains("etcd is unreachable"),
        "{}",
        c.logs_tail()
    );

    // the network heals: the old primary rejoins the new leader
    net.heal(p).unwrap();
    c.wait_healthy(HEALTHY).unwrap();
    assert_eq!(c.leader_index(etcd), Some(new));
    probe.stop();
    let split = probe.split_ticks();
    assert!(
        split.is_empty(),
        "two writable primaries at ticks {split:?}"
    );
    drop(writer);
}
