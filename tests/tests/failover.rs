//! End-to-end failover and self-healing: real etcd, three PostgreSQL 15 servers and agents on
//! loopback, with a client writing through a multi-host `target_session_attrs=read-write`
//! connection string the whole time. Machine loss (agent + postmaster + children killed),
//! postmaster crash, SIGTERM hand-over, etcd loss, and the members that must never be promoted
//! (`nofailover`, lagging beyond `maximum_lag_on_failover`).

use pgpilot_e2e::*;
use serde_json::Value;
use std::time::{Duration, Instant};

const HEALTHY: Duration = Duration::from_secs(120);

/// (a) The leader's machine dies: a replica takes over, writes resume, and the old primary,
/// started again, rejoins as a streaming replica through pg_rewind with every acknowledged row.
#[test]
fn machine_loss_fails_over_and_the_old_primary_rejoins_with_pg_rewind() {
    machine_loss("machineloss", 10, 2, 3);
}

/// (a) at the fastest timing pgpilot accepts (Patroni refuses a ttl under 20).
#[test]
fn machine_loss_at_ttl_5_fails_over_and_rejoins() {
    machine_loss("fastloss", 5, 1, 1);
}

fn machine_loss(scope: &str, ttl: u64, loop_wait: u64, retry_timeout: u64) {
    if !prerequisites() {
        return;
    }
    let spec = ClusterSpec {
        scope: scope.into(),
        ttl,
        loop_wait,
        retry_timeout,
        ..Default::default()
    };
    let (mut lab, p) = Lab::healthy(spec).unwrap();
    let Lab {
        cluster: c, etcd, ..
    } = &mut lab;
    // Commits are acknowledged once a standby has them, so that "every acknowledged row
    // survives" holds whichever way the kill lands (asynchronous replication may lose the last
    // in-flight commits; synchronous_mode is its own feature). Set on the primary only, so
    // the writes after the failover are asynchronous again.
    sql(
        &c.nodes[p],
        "ALTER SYSTEM SET synchronous_standby_names = '*'",
    )
    .unwrap();
    sql(&c.nodes[p], "SELECT pg_reload_conf()").unwrap();
    let writer = Writer::start(&c.nodes).unwrap();
    writer.wait_more(50, Duration::from_secs(30)).unwrap();

    let killed_at = Instant::now();
    let old = c.nodes[p].name.clone();
    let new = lose_leader_machine(c, etcd, p);
    writer
        .wait_more(50, Duration::from_secs(60))
        .map_err(|e| format!("{e}\n{}", c.logs_tail()))
        .unwrap();
    // the history key records the failover
    let history = etcd
        .get_prefix(&format!("/service/{scope}/history"))
        .unwrap();
    assert!(
        history
            .first()
            .is_some_and(|(_, v, _)| v.starts_with("[[1,")),
        "{history:?}"
    );

    // the old primary comes back and rejoins through pg_rewind
    c.start_agent(p).unwrap();
    c.wait_healthy(HEALTHY)
        .map_err(|e| format!("{e}\n{}", c.logs_tail()))
        .unwrap();
    assert_eq!(c.leader_index(etcd), Some(new), "leadership moved again");
    let log = c.nodes[p].log();
    assert!(
        log.contains("rewinding the data directory from") && log.contains("pg_rewind"),
        "{old} did not go through pg_rewind:\n{}",
        c.logs_tail()
    );
    let rewound = log.contains("pg_rewind finished");
    assert!(
        rewound || log.contains("no rewind required"),
        "{}",
        c.logs_tail()
    );
    eprintln!(
        "{old}: {}",
        if rewound {
            "rewound with pg_rewind"
        } else {
            "pg_rewind found nothing to undo"
        }
    );
    let (acked, gap) = writer.finish(killed_at);
    eprintln!(
        "machine loss at ttl {}: write gap {:.2}s",
        c.spec.ttl,
        gap.as_secs_f64()
    );
    let on_leader = written_ids(&c.nodes[new]).unwrap();
    let missing: Vec<&i64> = acked.iter().filter(|id| !on_leader.contains(id)).collect();
    assert!(missing.is_empty(), "acknowledged rows lost: {missing:?}");
    // the rejoined node catches up with all of them
    wait_for(
        "the rejoined node to hold every row",
        Duration::from_secs(60),
        || {
            let ids = written_ids(&c.nodes[p]).ok()?;
            acked.iter().all(|id| ids.contains(id)).then_some(())
        },
    )
    .unwrap();
    c.shutdown();
}

/// (b) Only the postmaster is killed: the agent notices at once, restarts PostgreSQL while it
/// still holds the lock, and the same node leads on the same timeline.
#[test]
fn a_crashed_postmaster_is_restarted_by_the_same_leader() {
    if !prerequisites() {
        return;
    }
    let spec = ClusterSpec {
        scope: "pmcrash".into(),
        ttl: 30,
        loop_wait: 10,
        retry_timeout: 10,
        ..Default::default()
    };
    let (mut lab, p) = Lab::healthy(spec).unwrap();
    let Lab {
        cluster: c, etcd, ..
    } = &mut lab;
    // a parameter that needs a restart: reported from pg_settings, cleared by the restart
    sql(&c.nodes[p], "ALTER SYSTEM SET shared_buffers = '24MB'").unwrap();
    sql(&c.nodes[p], "SELECT pg_reload_conf()").unwrap();
    let pending = wait_for("pending_restart in /patroni", HEALTHY, || {
        c.nodes[p]
            .status()
            .filter(|s| s["pending_restart"] == Value::Bool(true))
    })
    .unwrap();
    assert_eq!(
        pending["pending_restart_reason"]["shared_buffers"]["new_value"],
        "24MB"
    );
    let writer = Writer::start(&c.nodes).unwrap();
    writer.wait_more(25, Duration::from_secs(30)).unwrap();
    let pid = c.nodes[p].postmaster_pid().unwrap();
    let crashed_at = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    writer
        .wait_more(25, Duration::from_secs(60))
        .map_err(|e| format!("{e}\n{}", c.logs_tail()))
        .unwrap();
    assert_ne!(c.nodes[p].postmaster_pid(), Some(pid));
    assert_eq!(c.leader_index(etcd), Some(p), "the lock moved");
    let st = c.nodes[p].status().unwrap();
    assert_eq!(st["role"], "primary");
    assert_eq!(st["timeline"], 1, "a crash restart keeps the timeline");
    assert_eq!(
        st.get("pending_restart"),
        None,
        "the restart applied it: {st}"
    );
    assert!(c.nodes[p].log().contains("postmaster exited unexpectedly"));
    let (acked, gap) = writer.finish(crashed_at);
    eprintln!(
        "postmaster crash at loop_wait {}: write gap {:.2}s",
        c.spec.loop_wait,
        gap.as_secs_f64()
    );
    assert!(!acked.is_empty());
    c.wait_healthy(HEALTHY).unwrap();
    c.shutdown();
}

/// (c) SIGTERM on the leader's agent: PostgreSQL stops, the lock is released, a replica takes
/// over long before the ttl, and writes resume there.
#[test]
fn sigterm_on_the_leader_hands_over_and_writes_resume() {
    if !prerequisites() {
        return;
    }
    let spec = ClusterSpec {
        scope: "termwrite".into(),
        // with this ttl, only a released key lets a new leader appear quickly
        ttl: 60,
        loop_wait: 5,
        retry_timeout: 10,
        ..Default::default()
    };
    let (mut lab, p) = Lab::healthy(spec).unwrap();
    let Lab {
        cluster: c, etcd, ..
    } = &mut lab;
    let writer = Writer::start(&c.nodes).unwrap();
    writer.wait_more(25, Duration::from_secs(30)).unwrap();
    let stopped_at = Instant::now();
    let status = c.stop_agent(p).unwrap();
    assert!(status.success(), "agent exit status {status:?}");
    writer
        .wait_more(25, Duration::from_secs(40))
        .map_err(|e| format!("{e}\n{}", c.logs_tail()))
        .unwrap();
    let new = c.leader_index(etcd).unwrap();
    assert_ne!(new, p);
    let (acked, gap) = writer.finish(stopped_at);
    eprintln!("SIGTERM hand-over: write gap {:.2}s", gap.as_secs_f64());
    // a clean hand-over loses nothing: the new leader had everything up to the shutdown
    let ids = written_ids(&c.nodes[new]).unwrap();
    assert!(acked.iter().all(|id| ids.contains(id)));
    // the old primary comes back as a replica without needing a rewind
    c.start_agent(p).unwrap();
    c.wait_healthy(HEALTHY).unwrap();
    assert!(
        !c.nodes[p].log().contains("rewinding the data directory"),
        "a clean hand-over needed a rewind:\n{}",
        c.logs_tail()
    );
    c.shutdown();
}

/// (d) etcd is gone for longer than the ttl: the primary stops taking writes, nobody is
/// promoted, and everything heals when etcd returns.
#[test]
fn etcd_loss_stops_writes_and_the_cluster_recovers() {
    if !prerequisites() {
        return;
    }
    let spec = ClusterSpec {
        scope: "etcdwrite".into(),
        ttl: 10,
        loop_wait: 2,
        retry_timeout: 3,
        ..Default::default()
    };
    let (mut lab, p) = Lab::healthy(spec).unwrap();
    let Lab {
        cluster: c, etcd, ..
    } = &mut lab;
    let writer = Writer::start(&c.nodes).unwrap();
    writer.wait_more(25, Duration::from_secs(30)).unwrap();
    etcd.stop();
    let stopped = Instant::now();
    // writes stop within the ttl (the primary demotes itself before its lease could end)
    wait_for(
        "writes to stop",
        Duration::from_secs(c.spec.ttl + 20),
        || {
            let before = writer.acked_count();
            std::thread::sleep(Duration::from_secs(2));
            (writer.acked_count() == before).then_some(())
        },
    )
    .unwrap();
    eprintln!(
        "writes stopped {:.1}s after etcd (ttl {})",
        stopped.elapsed().as_secs_f64(),
        c.spec.ttl
    );
    // past the ttl: nobody is writable
    std::thread::sleep(Duration::from_secs(c.spec.ttl));
    for n in &c.nodes {
        assert_eq!(
            sql(n, "SELECT pg_is_in_recovery()").unwrap(),
            vec!["t"],
            "{} is writable without etcd",
            n.name
        );
    }
    let frozen = writer.acked_count();
    etcd.start().unwrap();
    writer
        .wait_more(25, Duration::from_secs(90))
        .map_err(|e| format!("{e}\n{}", c.logs_tail()))
        .unwrap();
    assert!(writer.acked_count() > frozen);
    c.wait_healthy(HEALTHY).unwrap();
    let _ = p;
    c.shutdown();
}

/// (e) A replica tagged `nofailover` is never promoted: when the leader dies, the other replica
/// takes over and the tagged one follows it.
#[test]
fn a_nofailover_replica_is_never_promoted() {
    if !prerequisites() {
        return;
    }
    let spec = ClusterSpec {
        scope: "nofail".into(),
        ..Default::default()
    };
    let mut lab = Lab::new("e2e-nofail", spec, true).unwrap();
    let Lab {
        cluster: c, etcd, ..
    } = &mut lab;
    // node 1 bootstraps alone and leads; then node 2 (nofailover) and node 3 join
    c.start_agent(0).unwrap();
    wait_for("node 1 to lead", HEALTHY, || {
        (c.leader_index(etcd) == Some(0)).then_some(())
    })
    .unwrap();
    let yaml = std::fs::read_to_string(&c.nodes[1].config_path)
        .unwrap()
        .replace("  nofailover: false\n", "  nofailover: true\n");
    std::fs::write(&c.nodes[1].config_path, yaml).unwrap();
    c.start_agent(1).unwrap();
    c.start_agent(2).unwrap();
    c.wait_healthy(HEALTHY).unwrap();
    // the leader's machine dies: only the untagged replica may take over
    let new = lose_leader_machine(c, etcd, 0);
    assert_eq!(new, 2, "the nofailover member took the lock");
    wait_for("the tagged replica to follow", HEALTHY, || {
        c.nodes[1]
            .status()
            .filter(|s| s["replication_state"] == "streaming")
    })
    .unwrap();
    // with the only other candidate tagged, failover would be blocked: the leader says so
    let st = c.nodes[2].status().unwrap();
    let blocked = st["pgpilot"]["failover_blocked"].as_str().unwrap_or("");
    assert!(
        blocked.contains("tagged nofailover"),
        "failover_blocked: {st}"
    );
    assert_eq!(st["pgpilot"]["failover_possible"], Value::Bool(false));
    c.shutdown();
}

/// (f) A replica lagging beyond `maximum_lag_on_failover` is not promoted (and, its only peer
/// being tagged `nofailover`, nobody is): every member says why, and the old leader takes
/// over again when it comes back.
#[test]
fn a_replica_lagging_beyond_the_limit_is_not_promoted() {
    if !prerequisites() {
        return;
    }
    let spec = ClusterSpec {
        scope: "laggard".into(),
        ..Default::default()
    };
    let mut lab = Lab::new("e2e-laggard", spec, true).unwrap();
    let Lab {
        cluster: c, etcd, ..
    } = &mut lab;
    c.start_agent(0).unwrap();
    wait_for("node 1 to lead", HEALTHY, || {
        (c.leader_index(etcd) == Some(0)).then_some(())
    })
    .unwrap();
    let yaml = std::fs::read_to_string(&c.nodes[1].config_path)
        .unwrap()
        .replace("  nofailover: false\n", "  nofailover: true\n");
    std::fs::write(&c.nodes[1].config_path, yaml).unwrap();
    c.start_agent(1).unwrap();
    c.start_agent(2).unwrap();
    c.wait_healthy(HEALTHY).unwrap();
    // freeze node 3's WAL receiver, then write well past the 1 MiB limit
    let receiver: i32 = sql(&c.nodes[2], "SELECT pid FROM pg_stat_wal_receiver")
        .unwrap()
        .first()
        .and_then(|p| p.parse().ok())
        .unwrap();
    let walrcv = nix::unistd::Pid::from_raw(receiver);
    nix::sys::signal::kill(walrcv, nix::sys::signal::Signal::SIGSTOP).unwrap();
    sql(
        &c.nodes[0],
        "CREATE TABLE ballast AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 40000) g",
    )
    .unwrap();
    // wait until the leader has published its new position
    wait_for("the leader to publish its position", HEALTHY, || {
        let st = c.nodes[2].status()?;
        st["pgpilot"]["failover_blocked"]
            .as_str()
            .filter(|s| s.contains("lagging"))
            .map(str::to_string)
    })
    .unwrap();
    c.kill_machine(0);
    // well past the ttl, nobody took the lock
    std::thread::sleep(Duration::from_secs(c.spec.ttl + 8));
    assert_eq!(etcd.leader("laggard"), None, "{}", c.logs_tail());
    for i in [1, 2] {
        assert_eq!(
            sql(&c.nodes[i], "SELECT pg_is_in_recovery()").unwrap(),
            vec!["t"]
        );
    }
    let log = c.nodes[2].log();
    assert!(
        log.contains("maximum_lag_on_failover"),
        "node 3 does not say why it does not race:\n{}",
        c.logs_tail()
    );
    assert!(log.contains("failover is blocked"), "{}", c.logs_tail());
    let why = c.nodes[1].status().unwrap();
    assert!(
        why["pgpilot"]["failover_blocked"]
            .as_str()
            .is_some_and(|s| s.contains("nofailover") && s.contains("lagging")),
        "{why}"
    );
    let _ = nix::sys::signal::kill(walrcv, nix::sys::signal::Signal::SIGCONT);
    // the old leader comes back and leads again (it is the most advanced)
    c.start_agent(0).unwrap();
    let leader = wait_for("a leader", HEALTHY, || c.leader_index(etcd)).unwrap();
    assert_eq!(leader, 0);
    c.wait_healthy(HEALTHY).unwrap();
    c.shutdown();
}

/// Kills the leader's machine and waits for another member to lead; returns the new leader.
fn lose_leader_machine(c: &mut TestCluster, etcd: &Etcd, p: usize) -> usize {
    c.kill_machine(p);
    wait_for("a new leader", Duration::from_secs(60), || {
        c.leader_index(etcd).filter(|&i| i != p)
    })
    .map_err(|e| format!("{e}\n{}", c.logs_tail()))
    .unwrap()
}

/// A rewind that was cut short leaves its marker: PostgreSQL is never started from that
/// directory; with `remove_data_directory_on_rewind_failure` the member is cloned again.
#[test]
fn a_data_directory_with_an_unfinished_rewind_is_never_started() {
    if !prerequisites() {
        return;
    }
    let spec = ClusterSpec {
        scope: "halfrewind".into(),
        ..Default::default()
    };
    let (mut lab, p) = Lab::healthy(spec).unwrap();
    let Lab {
        cluster: c, etcd, ..
    } = &mut lab;
    lose_leader_machine(c, etcd, p);
    // as if the agent had died in the middle of pg_rewind
    let marker = c.nodes[p].data_dir.with_file_name("data.pgpilot-rewinding");
    std::fs::write(&marker, "pg_rewind from 127.0.0.1:1 started\n").unwrap();
    c.start_agent(p).unwrap();
    wait_for("the refusal", Duration::from_secs(30), || {
        c.nodes[p]
            .log()
            .contains("PostgreSQL will not be started from it")
            .then_some(())
    })
    .map_err(|e| format!("{e}\n{}", c.logs_tail()))
    .unwrap();
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        c.nodes[p]
            .postmaster_pid()
            .is_none_or(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists()),
        "PostgreSQL was started from a half-rewound directory"
    );
    let st = c.nodes[p].status().unwrap();
    assert_eq!(st["state"], "stopped");
    assert!(
        st["pgpilot"]["decision"]
            .as_str()
            .is_some_and(|d| d.contains("reinitialize")),
        "{st}"
    );
    // allowed to remove it: the member is cloned again and streams
    c.stop_agent(p);
    let yaml = std::fs::read_to_string(&c.nodes[p].config_path)
        .unwrap()
        .replace(
            "  pgpass:",
            "  remove_data_directory_on_rewind_failure: true\n  pgpass:",
        );
    std::fs::write(&c.nodes[p].config_path, yaml).unwrap();
    c.start_agent(p).unwrap();
    c.wait_healthy(HEALTHY)
        .map_err(|e| format!("{e}\n{}", c.logs_tail()))
        .unwrap();
    assert!(!marker.exists());
    assert!(c.nodes[p].log().contains("removing the data directory"));
    c.shutdown();
}

/// A leader whose PostgreSQL will not start gives the lock up after `primary_start_timeout`,
/// and a healthy replica takes over (patroni#1663).
#[test]
fn a_primary_that_cannot_start_hands_over_after_primary_start_timeout() {
    if !prerequisites() {
        return;
    }
    let spec = ClusterSpec {
        scope: "nostart".into(),
        ..Default::default()
    };
    let (mut lab, p) = Lab::healthy(spec).unwrap();
    let Lab {
        cluster: c, etcd, ..
    } = &mut lab;
    // primary_start_timeout: 5 in the dynamic configuration
    let key = "/service/nostart/config";
    let (_, raw, _) = etcd.get_prefix(key).unwrap().remove(0);
    let mut cfg: Value = serde_json::from_str(&raw).unwrap();
    cfg["primary_start_timeout"] = Value::from(5);
    etcd.put(key, &cfg.to_string()).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    // a setting PostgreSQL refuses, then a crash: every restart fails
    let auto = c.nodes[p].data_dir.join("postgresql.auto.conf");
    let mut text = std::fs::read_to_string(&auto).unwrap();
    text.push_str("shared_buffers = 'not-a-size'\n");
    std::fs::write(&auto, text).unwrap();
    let pid = c.nodes[p].postmaster_pid().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let new = wait_for("a replica to take over", Duration::from_secs(90), || {
        c.leader_index(etcd).filter(|&i| i != p)
    })
    .map_err(|e| format!("{e}\n{}", c.logs_tail()))
    .unwrap();
    assert!(
        c.nodes[p].log().contains("primary_start_timeout"),
        "{}",
        c.logs_tail()
    );
    wait_for("the new leader to accept writes", HEALTHY, || {
        sql(
            &c.nodes[new],
            "CREATE TABLE IF NOT EXISTS after_nostart(x int)",
        )
        .ok()
    })
    .unwrap();
    c.shutdown();
}

/// Only the leader loses etcd (the others keep it): the leader stops being writable before its
/// lease can end, another member takes over, and at no sampled moment are two servers
/// writable. When the partition heals, the old leader rejoins as a replica.
#[test]
fn a_leader_cut_from_etcd_alone_steps_down_before_anyone_else_promotes() {
    leader_partition("partition", 10, 2, 3);
}

/// The same at the fastest timing pgpilot accepts.
#[test]
fn a_leader_cut_from_etcd_at_ttl_5_steps_down_in_time() {
    leader_partition("fastpartition", 5, 1, 1);
}

fn leader_partition(scope: &str, ttl: u64, loop_wait: u64, retry_timeout: u64) {
    if !prerequisites() {
        return;
    }
    let spec = ClusterSpec {
        scope: scope.into(),
        ttl,
        loop_wait,
        retry_timeout,
        ..Default::default()
    };
    let mut lab = Lab::new(&format!("e2e-{scope}"), spec, true).unwrap();
    let proxy = CutProxy::start(&lab.etcd.endpoint()).unwrap();
    let Lab {
        cluster: c, etcd, ..
    } = &mut lab;
    // node 1 reaches etcd through the proxy, and leads
    let yaml = std::fs::read_to_string(&c.nodes[0].config_path)
        .unwrap()
        .replace(
            &format!("hosts: {}", etcd.endpoint()),
            &format!("hosts: 127.0.0.1:{}", proxy.port),
        );
    std::fs::write(&c.nodes[0].config_path, yaml).unwrap();
    c.start_agent(0).unwrap();
    wait_for("node 1 to lead", HEALTHY, || {
        (c.leader_index(etcd) == Some(0)).then_some(())
    })
    .unwrap();
    c.start_agent(1).unwrap();
    c.start_agent(2).unwrap();
    c.wait_healthy(HEALTHY).unwrap();
    let writer = Writer::start(&c.nodes).unwrap();
    writer.wait_more(25, Duration::from_secs(30)).unwrap();

    proxy.cut();
    let cut_at = Instant::now();
    // sample who is writable until another member leads and takes writes
    let mut new_leader = None;
    while cut_at.elapsed() < Duration::from_secs(60) {
        let writable: Vec<usize> = (0..3)
            .filter(|&i| {
                sql(&c.nodes[i], "SELECT NOT pg_is_in_recovery()").is_ok_and(|v| v == ["t"])
            })
            .collect();
        assert!(writable.len() <= 1, "two writable primaries: {writable:?}");
        if let Some(&w) = writable.first()
            && w != 0
        {
            new_leader = Some(w);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let new = new_leader.ok_or_else(|| c.logs_tail()).unwrap();
    assert!(
        c.nodes[0].log().contains("etcd is unreachable: demoting"),
        "{}",
        c.logs_tail()
    );
    writer.wait_more(25, Duration::from_secs(30)).unwrap();
    let (acked, gap) = writer.finish(cut_at);
    eprintln!(
        "leader cut from etcd at ttl {}: write gap {:.2}s",
        c.spec.ttl,
        gap.as_secs_f64()
    );
    assert!(!acked.is_empty());
    // the partition heals: the old leader follows the new one
    proxy.heal();
    c.wait_healthy(HEALTHY)
        .map_err(|e| format!("{e}\n{}", c.logs_tail()))
        .unwrap();
    assert_eq!(c.leader_index(etcd), Some(new));
    c.shutdown();
}

/// A replica's postmaster is killed: its agent restarts it at once and it streams again; the
/// leader is not disturbed.
#[test]
fn a_crashed_replica_restarts_and_streams_again() {
    if !prerequisites() {
        return;
    }
    let spec = ClusterSpec {
        scope: "replcrash".into(),
        ttl: 30,
        loop_wait: 10,
        retry_timeout: 10,
        ..Default::default()
    };
    let (mut lab, p) = Lab::healthy(spec).unwrap();
    let Lab {
        cluster: c, etcd, ..
    } = &mut lab;
    let r = (p + 1) % 3;
    let pid = c.nodes[r].postmaster_pid().unwrap();
    kill_postgres_group(&c.nodes[r]);
    wait_for("the replica to stream again", HEALTHY, || {
        let st = c.nodes[r].status()?;
        (st["replication_state"] == "streaming"
            && c.nodes[r].postmaster_pid().is_some_and(|n| n != pid))
        .then_some(())
    })
    .map_err(|e| format!("{e}\n{}", c.logs_tail()))
    .unwrap();
    assert_eq!(c.leader_index(etcd), Some(p));
    assert!(c.nodes[r].log().contains("postmaster exited unexpectedly"));
    c.shutdown();
}
