//! End-to-end: real etcd, real PostgreSQL 15, real agents on loopback. Each test owns its etcd
//! and directories, so the tests run in parallel.

use pgpilot_e2e::*;
use serde_json::Value;
use std::time::Duration;

const HEALTHY: Duration = Duration::from_secs(120);

/// Real Patroni's `patronictl`, from `PATRONI_VENV` or the venv `tests/prereqs.sh` installs.
fn patronictl() -> Option<std::path::PathBuf> {
    patroni_program("patronictl")
}

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or(Value::Null)
}

#[test]
fn bootstrap_replicate_observe_and_restart() {
    if !prerequisites() {
        return;
    }
    let mut lab = Lab::new("e2e-main", ClusterSpec::default(), true).unwrap();
    let Lab {
        cluster: c,
        etcd,
        work,
    } = &mut lab;
    // a second cluster in the same etcd, under another scope
    let other_spec = ClusterSpec {
        scope: "other".into(),
        nodes: 1,
        ..Default::default()
    };
    let mut other = TestCluster::new(other_spec, &work.path, &etcd.endpoint()).unwrap();
    c.start_all().unwrap();
    other.start_all().unwrap();

    let p = c.wait_healthy(HEALTHY).unwrap();
    other.wait_healthy(HEALTHY).unwrap();
    let primary = &c.nodes[p];
    let replicas: Vec<usize> = (0..3).filter(|i| *i != p).collect();

    // a row written on the primary is read on both replicas
    sql(
        primary,
        "CREATE TABLE t(id int primary key, v text); INSERT INTO t VALUES (1, 'hello')",
    )
    .unwrap();
    for &r in &replicas {
        wait_for("row replicated", Duration::from_secs(30), || {
            sql(&c.nodes[r], "SELECT v FROM t WHERE id = 1")
                .ok()
                .filter(|v| v == &["hello"])
        })
        .unwrap();
    }

    // REST status codes per role, GET/HEAD/OPTIONS alike
    for (i, n) in c.nodes.iter().enumerate() {
        let is_p = i == p;
        for (path, want_primary, want_replica) in [
            ("/", 200, 503),
            ("/primary", 200, 503),
            ("/master", 200, 503),
            ("/read-write", 200, 503),
            ("/leader", 200, 503),
            ("/replica", 503, 200),
            ("/replica?lag=16MB", 503, 200),
            ("/replica?tag_dc=nowhere", 503, 503),
            ("/read-only", 200, 200),
            ("/health", 200, 200),
            ("/liveness", 200, 200),
            ("/readiness", 200, 200),
            ("/async", 503, 200),
            ("/sync", 503, 503),
            ("/nonsense", 503, 503),
            ("/patroni", 200, 200),
        ] {
            let want = if is_p { want_primary } else { want_replica };
            for method in ["GET", "HEAD", "OPTIONS"] {
                let (code, _) = http_request(method, &n.api(path), None).unwrap();
                assert_eq!(code, want, "{method} {path} on {} (primary={is_p})", n.name);
            }
        }
        let st = n.status().unwrap();
        assert_eq!(st["role"], if is_p { "primary" } else { "replica" });
        assert_eq!(st["state"], "running");
        assert_eq!(st["patroni"]["scope"], "e2e");
        assert_eq!(st["server_version"].as_u64().unwrap() / 10000, 15);
        assert!(st["database_system_identifier"].as_str().unwrap().len() >= 10);
        if is_p {
            assert!(st["xlog"]["location"].as_u64().unwrap() > 0);
            wait_for(
                "both walsenders in /patroni",
                Duration::from_secs(30),
                || {
                    n.status()
                        .filter(|s| s["replication"].as_array().is_some_and(|r| r.len() == 2))
                },
            )
            .unwrap();
        } else {
            assert!(st["xlog"]["replayed_location"].as_u64().unwrap() > 0);
        }
        let (code, metrics) = n.get("/metrics").unwrap();
        assert_eq!(code, 200);
        let line = format!(
            "patroni_primary{{scope=\"e2e\",name=\"{}\"}} {}",
            n.name,
            i32::from(is_p)
        );
        assert!(metrics.contains(&line), "{line} missing in\n{metrics}");
    }
    let (code, body) = http_post(&primary.api("/switchover"), "{}").unwrap();
    assert!((400..600).contains(&code), "{code} {body}");
    // Patroni's answers: an empty body is its HTTP server's 400 page; a switchover without a
    // leader its plain-text reason, byte for byte
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("<p>Error code: 400</p>"), "{body}");
    let (code, body) = http_post(&primary.api("/switchover"), r#"{"candidate": "x"}"#).unwrap();
    assert_eq!(
        (code, body.as_str()),
        (
            400,
            "Switchover could be performed only from a specific leader"
        )
    );

    // /cluster shows the three members with roles and lag
    wait_for(
        "replicas streaming in /cluster",
        Duration::from_secs(30),
        || {
            let (_, body) = primary.get("/cluster").ok()?;
            let v = json(&body);
            let n = v["members"]
                .as_array()?
                .iter()
                .filter(|m| m["state"] == "streaming")
                .count();
            (n == 2).then_some(())
        },
    )
    .unwrap();
    let (code, body) = primary.get("/cluster").unwrap();
    assert_eq!(code, 200);
    let cl = json(&body);
    let members = cl["members"].as_array().unwrap();
    assert_eq!(members.len(), 3);
    assert_eq!(cl["scope"], "e2e");
    for m in members {
        let name = m["name"].as_str().unwrap();
        if name == primary.name {
            assert_eq!(m["role"], "leader");
            assert_eq!(m["state"], "running");
        } else {
            assert_eq!(m["role"], "replica");
            assert_eq!(m["state"], "streaming");
            assert!(m["lag"].is_u64(), "{m}");
            assert!(m["replay_lsn"].as_str().unwrap().contains('/'));
        }
        assert!(m["api_url"].as_str().unwrap().ends_with("/patroni"));
        assert!(m["port"].is_u64());
    }
    let (code, body) = primary.get("/config").unwrap();
    assert_eq!(code, 200);
    assert_eq!(json(&body)["ttl"], 10);
    let (code, body) = primary.get("/history").unwrap();
    assert_eq!((code, body.as_str()), (200, "[]"));

    // the etcd keys have Patroni's names and shapes
    let keys = etcd.get_prefix("/service/e2e/").unwrap();
    let get = |k: &str| {
        keys.iter()
            .find(|(key, _, _)| key == &format!("/service/e2e/{k}"))
    };
    let (_, sysid, _) = get("initialize").expect("initialize");
    assert!(
        sysid.len() >= 10 && sysid.chars().all(|c| c.is_ascii_digit()),
        "{sysid}"
    );
    let (_, leader, leader_lease) = get("leader").expect("leader");
    assert_eq!(leader, &primary.name);
    assert_ne!(*leader_lease, 0, "leader key must be lease-bound");
    let (_, config, _) = get("config").expect("config");
    assert_eq!(json(config)["loop_wait"], 2);
    let (_, status, _) = get("status").expect("status");
    assert!(json(status)["optime"].as_u64().unwrap() > 0, "{status}");
    for n in &c.nodes {
        let (_, raw, lease) = get(&format!("members/{}", n.name)).expect("member key");
        assert_ne!(*lease, 0, "member key must be lease-bound");
        assert!(
            raw.starts_with(r#"{"conn_url":"postgres://127.0.0.1:"#),
            "{raw}"
        );
        let m = json(raw);
        for f in ["conn_url", "api_url", "state", "role", "version"] {
            assert!(m[f].is_string(), "{f} missing in {raw}");
        }
        assert!(
            m["xlog_location"].is_u64() && m["timeline"].is_u64(),
            "{raw}"
        );
    }
    // the other scope lives beside it, untouched
    let other_keys = etcd.get_prefix("/service/other/").unwrap();
    assert!(
        other_keys
            .iter()
            .any(|(k, v, _)| k == "/service/other/leader" && v == "other-node1")
    );
    assert_eq!(
        other_keys
            .iter()
            .filter(|(k, _, _)| k.contains("/members/"))
            .count(),
        1
    );

    // real patronictl reads the cluster pgpilot wrote
    match patronictl() {
        Some(ctl) => {
            let run = |args: &[&str]| {
                let out = std::process::Command::new(&ctl)
                    .arg("-c")
                    .arg(&c.nodes[0].config_path)
                    .args(args)
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "patronictl {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                String::from_utf8_lossy(&out.stdout).into_owned()
            };
            let rows = json(&run(&["list", "-f", "json"]));
            let rows = rows.as_array().unwrap();
            assert_eq!(rows.len(), 3, "{rows:?}");
            for r in rows {
                if r["Member"] == primary.name.as_str() {
                    assert_eq!(r["Role"], "Leader");
                    assert_eq!(r["State"], "running");
                } else {
                    assert_eq!(r["Role"], "Replica");
                    assert_eq!(r["State"], "streaming");
                    assert!(r["Replay Lag"].is_u64(), "{r}");
                }
                assert_eq!(r["TL"], 1);
            }
            let version = run(&["version", "e2e"]);
            for n in &c.nodes {
                assert!(
                    version.contains(&format!("{}: Patroni 4.1.4 PostgreSQL 15", n.name)),
                    "{version}"
                );
            }
            assert!(run(&["show-config"]).contains("loop_wait: 2"));
            assert_eq!(
                run(&["dsn"]).trim(),
                format!("host=127.0.0.1 port={}", primary.pg_port)
            );
        }
        None => skip(&format!(
            "patronictl is not installed, so its checks were skipped; {PATRONI_INSTALL}"
        )),
    }

    // garbage in a member key is ignored with a warning, never a crash
    etcd.put("/service/e2e/members/ghost", "garbage{not json")
        .unwrap();
    etcd.put("/service/e2e/history", "not json either").unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let (code, body) = primary.get("/cluster").unwrap();
    assert_eq!(code, 200);
    assert_eq!(json(&body)["members"].as_array().unwrap().len(), 3);
    wait_for("garbage warning in a log", Duration::from_secs(30), || {
        c.nodes
            .iter()
            .any(|n| n.log().contains("ignoring member key"))
            .then_some(())
    })
    .unwrap();
    for n in c.nodes.iter_mut() {
        assert!(n.agent.as_mut().unwrap().is_running(), "{} died", n.name);
    }
    etcd.put("/service/e2e/history", "[]").unwrap();

    // a lost config key is restored by the leader from its cached copy, not from bootstrap.dcs
    let (_, config, _) = etcd
        .get_prefix("/service/e2e/config")
        .unwrap()
        .into_iter()
        .next()
        .unwrap();
    let mut changed = json(&config);
    changed["maximum_lag_on_failover"] = serde_json::json!(2097152);
    etcd.put("/service/e2e/config", &changed.to_string())
        .unwrap();
    wait_for(
        "the leader to see the new config",
        Duration::from_secs(30),
        || {
            let (_, body) = c.nodes[p].get("/config").ok()?;
            (json(&body)["maximum_lag_on_failover"] == 2097152).then_some(())
        },
    )
    .unwrap();
    let cache = c.nodes[p].data_dir.join("patroni.dynamic.json");
    wait_for("the leader's cached copy", Duration::from_secs(30), || {
        let text = std::fs::read_to_string(&cache).ok()?;
        (json(&text)["maximum_lag_on_failover"] == 2097152).then_some(())
    })
    .unwrap();
    etcd.delete("/service/e2e/config").unwrap();
    wait_for(
        "the config key to come back",
        Duration::from_secs(30),
        || {
            let (_, v, _) = etcd
                .get_prefix("/service/e2e/config")
                .ok()?
                .into_iter()
                .next()?;
            Some(json(&v)).filter(|v| v["maximum_lag_on_failover"] == 2097152)
        },
    )
    .map_err(|e| format!("{e}\n{}", c.logs_tail()))
    .unwrap();
    assert!(
        c.nodes[p]
            .log()
            .contains("restored it from the copy in patroni.dynamic.json")
    );

    // restart every agent: the same cluster comes back, no second initdb
    c.shutdown();
    for n in &c.nodes {
        assert!(
            n.postmaster_pid().is_none()
                || !std::path::Path::new(&format!("/proc/{}", n.postmaster_pid().unwrap()))
                    .exists(),
            "{} left PostgreSQL running",
            n.name
        );
    }
    c.start_all().unwrap();
    let p2 = c.wait_healthy(HEALTHY).unwrap();
    let keys = etcd.get_prefix("/service/e2e/initialize").unwrap();
    assert_eq!(
        &keys[0].1, sysid,
        "system identifier changed: the cluster was re-created"
    );
    assert_eq!(
        sql(&c.nodes[p2], "SELECT v FROM t WHERE id = 1").unwrap(),
        vec!["hello"]
    );
    let initdb_runs: usize = c
        .nodes
        .iter()
        .map(|n| n.log().matches("running initdb").count())
        .sum();
    assert_eq!(initdb_runs, 1, "initdb ran again after a restart");
    other.shutdown();
    c.shutdown();
}

#[test]
fn agents_started_before_etcd_wait_for_it() {
    if !prerequisites() {
        return;
    }
    let spec = ClusterSpec {
        scope: "late".into(),
        ..Default::default()
    };
    let mut lab = Lab::new("e2e-noetcd", spec, false).unwrap();
    let Lab {
        cluster: c, etcd, ..
    } = &mut lab;
    c.start_all().unwrap();
    wait_for(
        "a clear log line about etcd",
        Duration::from_secs(60),
        || {
            c.nodes
                .iter()
                .all(|n| n.log().contains("cannot reach etcd"))
                .then_some(())
        },
    )
    .unwrap();
    for n in c.nodes.iter_mut() {
        assert!(n.agent.as_mut().unwrap().is_running(), "{} gave up", n.name);
    }
    etcd.start().unwrap();
    c.wait_healthy(HEALTHY).unwrap();
    c.shutdown();
}

#[test]
fn sigterm_on_the_leader_hands_over_at_once() {
    if !prerequisites() {
        return;
    }
    let spec = ClusterSpec {
        scope: "handover".into(),
        // a long ttl: the new leader can only appear this fast if the old one released the key
        ttl: 60,
        loop_wait: 5,
        retry_timeout: 10,
        ..Default::default()
    };
    let mut lab = Lab::new("e2e-handover", spec, true).unwrap();
    let Lab {
        cluster: c, etcd, ..
    } = &mut lab;
    c.start_all().unwrap();
    let p = c.wait_healthy(HEALTHY).unwrap();
    let old = c.nodes[p].name.clone();
    let status = c.stop_agent(p).unwrap();
    assert!(status.success(), "agent exit status {status:?}");
    assert!(c.nodes[p].log().contains("released the leader lock"));
    let new_leader = wait_for("a new leader", Duration::from_secs(40), || {
        etcd.leader("handover")
            .map(|(name, _)| name)
            .filter(|name| name != &old)
    })
    .unwrap();
    let idx = c.nodes.iter().position(|n| n.name == new_leader).unwrap();
    wait_for(
        "the new leader to accept writes",
        Duration::from_secs(60),
        || {
            sql(
                &c.nodes[idx],
                "CREATE TABLE IF NOT EXISTS after_handover(x int)",
            )
            .ok()
        },
    )
    .unwrap();
    c.shutdown();
}

/// Every agent SIGKILLed at once: the replicas' PostgreSQL runs on and their restarted agents
/// adopt it (same postmaster); the primary's fencing guard stops the primary and revokes its
/// lease, and the restarted agents elect a leader again with every row.
#[test]
fn killed_agents_adopt_running_replicas_and_the_primary_is_fenced() {
    if !prerequisites() {
        return;
    }
    let spec = ClusterSpec {
        scope: "adopt".into(),
        ttl: 30,
        loop_wait: 2,
        retry_timeout: 5,
        ..Default::default()
    };
    let mut lab = Lab::new("e2e-adopt", spec, true).unwrap();
    let Lab {
        cluster: c, etcd, ..
    } = &mut lab;
    c.start_all().unwrap();
    let p = c.wait_healthy(HEALTHY).unwrap();
    sql(&c.nodes[p], "CREATE TABLE before_kill(x int)").unwrap();
    let postmasters: Vec<Option<i32>> = c.nodes.iter().map(|n| n.postmaster_pid()).collect();

    for n in c.nodes.iter_mut() {
        let mut agent = n.agent.take().unwrap();
        agent.signal(nix::sys::signal::Signal::SIGKILL);
        agent.child.wait().unwrap();
    }
    // the primary stops at once and its lease goes with it: no ttl to wait out
    wait_for("the primary to be fenced", Duration::from_secs(30), || {
        (c.nodes[p].postmaster_pid().is_none() && etcd.leader("adopt").is_none()).then_some(())
    })
    .map_err(|e| anyhow_msg(e, c))
    .unwrap();
    c.start_all().unwrap();
    c.wait_healthy(HEALTHY)
        .map_err(|e| anyhow_msg(e, c))
        .unwrap();
    for (i, n) in c.nodes.iter().enumerate() {
        if i != p {
            assert_eq!(
                n.postmaster_pid(),
                postmasters[i],
                "{}: PostgreSQL was restarted instead of adopted",
                n.name
            );
        }
    }
    let leader = c.primary().unwrap();
    assert_eq!(
        sql(
            &c.nodes[leader],
            "SELECT count(*) FROM pg_tables WHERE tablename = 'before_kill'"
        )
        .unwrap(),
        vec!["1"]
    );
    c.shutdown();
}

fn anyhow_msg(e: impl std::fmt::Display, c: &TestCluster) -> String {
    format!("{e}\n{}", c.logs_tail())
}

#[test]
fn losing_etcd_makes_the_primary_read_only_and_nobody_promotes() {
    if !prerequisites() {
        return;
    }
    let spec = ClusterSpec {
        scope: "etcdloss".into(),
        ..Default::default()
    };
    let mut lab = Lab::new("e2e-etcdloss", spec, true).unwrap();
    let Lab {
        cluster: c, etcd, ..
    } = &mut lab;
    c.start_all().unwrap();
    let p = c.wait_healthy(HEALTHY).unwrap();
    etcd.stop();
    // the primary stops accepting writes; no replica becomes writable
    wait_for(
        "the primary to go read-only",
        Duration::from_secs(60),
        || {
            sql(&c.nodes[p], "SELECT pg_is_in_recovery()")
                .ok()
                .filter(|v| v == &["t"])
        },
    )
    .map_err(|e| format!("{e}\n{}", c.logs_tail()))
    .unwrap();
    assert!(c.nodes[p].log().contains("etcd is unreachable: demoting"));
    std::thread::sleep(Duration::from_secs(3));
    for n in &c.nodes {
        assert_eq!(
            sql(n, "SELECT pg_is_in_recovery()").unwrap(),
            vec!["t"],
            "{} is writable",
            n.name
        );
        let (code, _) = n.get("/primary").unwrap();
        assert_eq!(code, 503, "{} answers /primary without etcd", n.name);
    }
    // etcd back: the cluster heals by itself
    etcd.start().unwrap();
    c.wait_healthy(HEALTHY).unwrap();
    c.shutdown();
}

#[test]
fn a_failed_initdb_is_reported_and_undone() {
    if !prerequisites() {
        return;
    }
    let spec = ClusterSpec {
        scope: "badinit".into(),
        nodes: 1,
        ..Default::default()
    };
    let mut lab = Lab::new("e2e-badinit", spec, true).unwrap();
    let Lab {
        cluster: c, etcd, ..
    } = &mut lab;
    // an initdb option initdb rejects
    let yaml = std::fs::read_to_string(&c.nodes[0].config_path)
        .unwrap()
        .replace(
            "    - encoding: UTF8\n",
            "    - encoding: NO-SUCH-ENCODING\n",
        );
    std::fs::write(&c.nodes[0].config_path, yaml).unwrap();
    c.start_all().unwrap();
    let status = c.nodes[0].wait_agent_exit(Duration::from_secs(60)).unwrap();
    assert!(!status.success());
    let log = c.nodes[0].log();
    assert!(
        log.contains("bootstrap failed") && log.contains("initdb failed"),
        "{log}"
    );
    assert!(
        log.contains("NO-SUCH-ENCODING"),
        "initdb's own message must reach the log: {log}"
    );
    // nothing is left claiming the cluster: another attempt can be made after fixing the config
    let keys = etcd.get_prefix("/service/badinit/").unwrap();
    assert!(
        !keys
            .iter()
            .any(|(k, _, _)| k.ends_with("/initialize") || k.ends_with("/leader")),
        "{keys:?}"
    );
    assert!(!c.nodes[0].data_dir.join("PG_VERSION").exists());
}

#[test]
fn a_second_agent_with_a_live_name_refuses_to_start() {
    if !prerequisites() {
        return;
    }
    let spec = ClusterSpec {
        scope: "dupname".into(),
        nodes: 1,
        ..Default::default()
    };
    let mut lab = Lab::new("e2e-dupname", spec, true).unwrap();
    let Lab { cluster: c, .. } = &mut lab;
    c.start_all().unwrap();
    c.wait_healthy(HEALTHY).unwrap();
    let node = &c.nodes[0];
    let mut cmd = if is_root() {
        let mut cmd = std::process::Command::new("setpriv");
        cmd.args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
            .arg(agent_bin());
        cmd
    } else {
        std::process::Command::new(agent_bin())
    };
    let out = cmd.arg(&node.config_path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("already uses the name"), "{stderr}");
    // the running node is untouched
    assert_eq!(c.primary(), Some(0));
    c.shutdown();
}

#[test]
fn a_data_directory_of_another_cluster_is_refused() {
    if !prerequisites() {
        return;
    }
    let spec = ClusterSpec {
        scope: "mismatch".into(),
        nodes: 1,
        ..Default::default()
    };
    let mut lab = Lab::new("e2e-mismatch", spec, true).unwrap();
    let Lab {
        cluster: c, etcd, ..
    } = &mut lab;
    c.start_all().unwrap();
    c.wait_healthy(HEALTHY).unwrap();
    c.stop_agent(0);
    // etcd now says the cluster is another database
    etcd.put("/service/mismatch/initialize", "7000000000000000001")
        .unwrap();
    c.start_agent(0).unwrap();
    let status = c.nodes[0].wait_agent_exit(Duration::from_secs(60)).unwrap();
    assert_eq!(status.code(), Some(1));
    let log = c.nodes[0].log();
    assert!(
        log.contains("differs from the cluster's 7000000000000000001"),
        "{log}"
    );
    // the data directory is left as it was
    assert!(c.nodes[0].data_dir.join("PG_VERSION").exists());
}

#[test]
fn interrupted_clones_are_redone_and_foreign_directories_left_alone() {
    if !prerequisites() {
        return;
    }
    let spec = ClusterSpec {
        scope: "leftovers".into(),
        ..Default::default()
    };
    let mut lab = Lab::new("e2e-leftovers", spec, true).unwrap();
    let Lab { cluster: c, .. } = &mut lab;
    // node2: what a clone killed half-way leaves behind, with pgpilot's marker beside it
    let half = &c.nodes[1].data_dir.clone();
    std::fs::create_dir_all(half.join("base")).unwrap();
    std::fs::write(half.join("PG_VERSION"), "15\n").unwrap();
    std::fs::write(half.with_file_name("data.pgpilot-creating"), "").unwrap();
    // node3: somebody's files, no marker
    let foreign = &c.nodes[2].data_dir.clone();
    std::fs::create_dir_all(foreign).unwrap();
    std::fs::write(foreign.join("precious.txt"), "keep me").unwrap();
    for d in [half, foreign] {
        chown_postgres(d.parent().unwrap()).unwrap();
    }
    c.start_all().unwrap();
    // node2 redoes its creation (by initdb or by cloning, whichever race it wins)
    wait_for(
        "node1 and node2 as primary and streaming replica",
        HEALTHY,
        || {
            let roles: Vec<String> = c.nodes[..2]
                .iter()
                .filter_map(|n| n.status())
                .filter(|s| s["state"] == "running")
                .map(|s| format!("{}/{}", s["role"], s["replication_state"]))
                .collect();
            (roles.len() == 2
                && roles.iter().any(|r| r.starts_with("\"primary\""))
                && roles.iter().any(|r| r.contains("streaming")))
            .then_some(())
        },
    )
    .map_err(|e| format!("{e}\n{}", c.logs_tail()))
    .unwrap();
    assert!(c.nodes[1].log().contains("interrupted initdb or clone"));
    assert!(!half.with_file_name("data.pgpilot-creating").exists());
    wait_for(
        "node3 to refuse its directory",
        Duration::from_secs(30),
        || {
            c.nodes[2]
                .log()
                .contains("refusing to initialize or clone")
                .then_some(())
        },
    )
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(foreign.join("precious.txt")).unwrap(),
        "keep me"
    );
    let (code, _) = c.nodes[2].get("/health").unwrap();
    assert_eq!(code, 503);
    c.shutdown();
}

#[test]
fn haproxy_config_from_the_console_routes_writes_to_the_leader_across_switchover_and_failover() {
    if !prerequisites() {
        return;
    }
    if !need_program("haproxy", "haproxy") {
        return;
    }
    let spec = ClusterSpec {
        scope: "haproxy".into(),
        ..Default::default()
    };
    let mut lab = Lab::new("e2e-haproxy", spec, true).unwrap();
    let Lab {
        cluster: c,
        work,
        etcd,
    } = &mut lab;
    c.start_all().unwrap();
    let p = c.wait_healthy(HEALTHY).unwrap();
    // the configuration an operator would generate: `console --batch haproxy-config`
    let options = Haproxy::loopback_options();
    let (code, cfg, err) = console(&[
        "--etcd",
        &etcd.endpoint(),
        "--batch",
        "haproxy-config",
        "haproxy",
        "--bind",
        "127.0.0.1",
        "--write-port",
        &options.write_port.to_string(),
        "--read-port",
        &options.read_port.to_string(),
        "--stats-port",
        "0",
        "--check-interval",
        "300",
    ])
    .unwrap();
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        cfg,
        shared::haproxy::render("haproxy", &haproxy_backends(&c.nodes), &options)
    );
    let haproxy =
        Haproxy::start_with(&work.path, "haproxy", c.nodes.len(), &cfg, &options, false).unwrap();
    haproxy.wait_checked(Duration::from_secs(30)).unwrap();
    let port_of = |dsn: &str| sql_dsn(dsn, "SELECT current_setting('port')").ok();
    let write = Haproxy::dsn(haproxy.write_port);
    let read = Haproxy::dsn(haproxy.read_port);
    let via_write = wait_for("HAProxy to route writes", Duration::from_secs(30), || {
        port_of(&write)
    })
    .unwrap();
    assert_eq!(via_write, vec![c.nodes[p].pg_port.to_string()]);
    sql_dsn(&write, "CREATE TABLE throughhaproxy(x int)").unwrap();
    let via_read = wait_for("HAProxy to route reads", Duration::from_secs(30), || {
        port_of(&read)
    })
    .unwrap();
    assert_ne!(
        via_read,
        vec![c.nodes[p].pg_port.to_string()],
        "reads went to the primary"
    );
    // a switchover: HAProxy follows the new leader through the same checks
    let old = c.nodes[p].pg_port.to_string();
    let (code, out, err) = console(&[
        "--etcd",
        &etcd.endpoint(),
        "--batch",
        "switchover",
        "haproxy",
        "--force",
    ])
    .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    // the node writes through HAProxy land on, once it is no longer the one on `old`
    let moved_from = |c: &TestCluster, old: &str| {
        let moved = wait_for(
            "HAProxy to route writes to the new primary",
            Duration::from_secs(60),
            || port_of(&write).filter(|v| v[0] != old),
        )
        .unwrap();
        c.nodes
            .iter()
            .position(|n| n.pg_port.to_string() == moved[0])
            .unwrap()
    };
    let new_idx = moved_from(c, &old);
    assert_eq!(c.leader_index(etcd), Some(new_idx));
    sql_dsn(&write, "INSERT INTO throughhaproxy VALUES (0)").unwrap();
    // the (new) leader stops: HAProxy follows the next one
    let old = c.nodes[new_idx].pg_port.to_string();
    c.stop_agent(new_idx);
    let new_idx = moved_from(c, &old);
    assert_eq!(c.primary(), Some(new_idx));
    sql_dsn(&write, "INSERT INTO throughhaproxy VALUES (1)").unwrap();
}

#[test]
fn sigterm_during_bootstrap_gives_the_claim_up_and_a_restart_bootstraps() {
    if !prerequisites() {
        return;
    }
    let spec = ClusterSpec {
        scope: "termboot".into(),
        nodes: 1,
        ..Default::default()
    };
    let mut lab = Lab::new("e2e-termboot", spec, true).unwrap();
    let Lab {
        cluster: c, etcd, ..
    } = &mut lab;
    // an initdb that takes a while, so the stop lands in the middle of the bootstrap
    let node_dir = c.nodes[0].config_path.parent().unwrap().to_path_buf();
    let slow = node_dir.join("slow-initdb");
    std::fs::write(
        &slow,
        format!("#!/bin/sh\nsleep 4\nexec {PG_BIN}/initdb \"$@\"\n"),
    )
    .unwrap();
    std::fs::set_permissions(&slow, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    chown_postgres(&slow).unwrap();
    let original = std::fs::read_to_string(&c.nodes[0].config_path).unwrap();
    let with_slow = original.replace(
        &format!("  bin_dir: {PG_BIN}\n"),
        &format!(
            "  bin_dir: {PG_BIN}\n  bin_name:\n    initdb: {}\n",
            slow.display()
        ),
    );
    assert_ne!(with_slow, original);
    std::fs::write(&c.nodes[0].config_path, with_slow).unwrap();
    c.start_agent(0).unwrap();
    wait_for("initdb to start", Duration::from_secs(30), || {
        c.nodes[0].log().contains("running initdb").then_some(())
    })
    .unwrap();
    assert_eq!(
        etcd.get_prefix("/service/termboot/initialize").unwrap()[0].1,
        "",
        "the bootstrap claim is taken"
    );
    let status = c.stop_agent(0).unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        etcd.get_prefix("/service/termboot/initialize")
            .unwrap()
            .is_empty(),
        "the claim of a cancelled bootstrap must be given up\n{}",
        c.nodes[0].log()
    );
    // a normal restart bootstraps the cluster
    std::fs::write(&c.nodes[0].config_path, original).unwrap();
    c.start_agent(0).unwrap();
    c.wait_healthy(HEALTHY).unwrap();
    c.shutdown();
}
