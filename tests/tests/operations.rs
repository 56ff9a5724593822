//! End-to-end operations on a running cluster (real etcd, three PostgreSQL 15 servers, agents)
//! with a client writing the whole time: switchover now, to any member, scheduled and refused;
//! failover to a candidate; restart now, scheduled and pending-only; dynamic parameters; reload
//! of an edited file; reinitialize; pause; REST authentication and callbacks.

use pgpilot_e2e::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(90);

/// A cluster (ttl 10, loop_wait 2) whose REST API requires [`ADMIN`]'s credentials for writes.
fn authenticated(scope: &str) -> ClusterSpec {
    ClusterSpec {
        scope: scope.into(),
        ttl: 10,
        loop_wait: 2,
        retry_timeout: 3,
        restapi_yaml: "  authentication:\n    username: admin\n    password: admin-secret\n".into(),
        ..Default::default()
    }
}

/// A REST call that may take as long as an operation does.
fn call(
    node: &Node,
    method: &str,
    path: &str,
    body: &Value,
    auth: Option<(&str, &str)>,
) -> (u16, String) {
    http_call(
        method,
        &node.api(path),
        Some(&body.to_string()),
        auth,
        Duration::from_secs(120),
    )
    .unwrap()
}

fn index_of(c: &TestCluster, name: &str) -> usize {
    c.nodes.iter().position(|n| n.name == name).unwrap()
}

/// Waits until `node` runs as a replica streaming from the primary.
fn wait_streaming(c: &TestCluster, i: usize, timeout: Duration) {
    wait_for(
        &format!("{} to stream again", c.nodes[i].name),
        timeout,
        || {
            let s = c.nodes[i].status()?;
            (s["role"] == "replica" && s["replication_state"] == "streaming").then_some(())
        },
    )
    .map_err(|e| format!("{e}\n{}", c.logs_tail()))
    .unwrap();
}

fn start_time(n: &Node) -> Option<String> {
    n.status()?["postmaster_start_time"]
        .as_str()
        .map(str::to_string)
}

/// Switchover to a named candidate, then to any member, while a client writes: each answers
/// with the new leader, no acknowledged row is lost, and the old primary streams again without
/// a rewind or a re-clone. A scheduled switchover waits for its time; refused requests change
/// nothing and say why; a failover names its candidate after the leader's machine is lost
/// (asynchronous replication: only what the primary acknowledged in the instant before its
/// machine died, after the candidate was seen holding everything before, may be missing).
#[test]
fn switchover_and_failover_have_definite_outcomes() {
    if !prerequisites() {
        return;
    }
    let spec = ClusterSpec {
        scope: "switchover".into(),
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
    writer.wait_more(30, Duration::from_secs(30)).unwrap();

    // 1. to a named candidate
    let old = c.nodes[p].name.clone();
    let cand = (p + 1) % 3;
    let target = c.nodes[cand].name.clone();
    let began = Instant::now();
    let (code, body) = call(
        &c.nodes[p],
        "POST",
        "/switchover",
        &json!({"leader": old, "candidate": target}),
        None,
    );
    let took = began.elapsed();
    assert_eq!(code, 200, "{body}\n{}", c.logs_tail());
    assert!(
        body.contains(&format!("Successfully switched over to \"{target}\"")),
        "{body}"
    );
    assert_eq!(c.leader_name(etcd).as_deref(), Some(target.as_str()));
    writer.wait_more(30, LONG).unwrap();
    wait_streaming(c, p, LONG);
    let streaming_after = began.elapsed();
    let log = c.nodes[p].log();
    assert!(
        !log.contains("pg_rewind"),
        "the old primary needed no rewind:\n{log}"
    );
    eprintln!(
        "switchover: answered in {:.2}s, old primary streaming after {:.2}s",
        took.as_secs_f64(),
        streaming_after.as_secs_f64()
    );

    // 2. to any member (patroni's switchover without a candidate), asked on a replica
    let other = (0..3).find(|i| *i != cand).unwrap();
    let (code, body) = call(
        &c.nodes[other],
        "POST",
        "/switchover",
        &json!({"leader": target}),
        None,
    );
    assert_eq!(code, 200, "{body}\n{}", c.logs_tail());
    let now_leader = c.leader_name(etcd).unwrap();
    assert_ne!(now_leader, target);
    assert!(body.contains(&now_leader), "{body}");
    writer.wait_more(30, LONG).unwrap();
    wait_streaming(c, cand, LONG);

    // 3. refused: nothing changes, the reason says why
    let l = index_of(c, &now_leader);
    let r = (l + 1) % 3;
    let replica = c.nodes[r].name.clone();
    for (body, want, text) in [
        (
            json!({"leader": now_leader, "candidate": "nobody"}),
            412,
            "does not exist",
        ),
        (
            json!({"leader": replica, "candidate": now_leader}),
            412,
            "leader name does not match",
        ),
        (json!({"candidate": replica}), 400, "specific leader"),
        (
            json!({"leader": now_leader, "candidate": now_leader}),
            400,
            "same",
        ),
        (
            json!({"leader": now_leader, "scheduled_at": "2020-01-01T00:00:00+00:00"}),
            422,
            "past",
        ),
        (
            json!({"leader": now_leader, "scheduled_at": "2030-01-01T00:00:00"}),
            400,
            "Timezone",
        ),
        (
            json!({"leader": now_leader, "scheduled_at": "soonish"}),
            422,
            "cannot parse",
        ),
    ] {
        let (code, answer) = call(&c.nodes[l], "POST", "/switchover", &body, None);
        assert_eq!(code, want, "{body}: {answer}");
        assert!(answer.contains(text), "{body}: {answer}");
    }
    assert_eq!(c.leader_name(etcd).as_deref(), Some(now_leader.as_str()));
    // a stopped candidate is refused with its state
    let killed = c.nodes[r].postmaster_pid();
    sql(&c.nodes[l], "SELECT 1").unwrap();
    let (code, _) = call(
        &c.nodes[l],
        "PATCH",
        "/config",
        &json!({"pause": true}),
        None,
    );
    assert_eq!(code, 200);
    wait_for("members to see the pause", LONG, || {
        c.nodes[r].status().filter(|s| s["pause"] == true)
    })
    .unwrap();
    // paused: a switchover needs a named candidate
    let (code, answer) = call(
        &c.nodes[l],
        "POST",
        "/switchover",
        &json!({"leader": now_leader}),
        None,
    );
    assert_eq!(code, 400, "{answer}");
    assert!(answer.contains("paused"), "{answer}");
    kill_postmaster(&c.nodes[r]);
    wait_for("the killed replica to show as stopped", LONG, || {
        let s = c.nodes[r].status()?;
        (s["state"] != "running").then_some(())
    })
    .unwrap();
    // paused: nothing restarts the killed postmaster
    std::thread::sleep(Duration::from_secs(3 * c.spec.loop_wait));
    assert!(
        c.nodes[r].status().is_some_and(|s| s["state"] != "running"),
        "a paused agent restarted PostgreSQL"
    );
    let (code, answer) = call(
        &c.nodes[l],
        "POST",
        "/switchover",
        &json!({"leader": now_leader, "candidate": replica}),
        None,
    );
    assert_eq!(code, 412, "{answer}");
    assert!(answer.contains("not healthy"), "{answer}");
    assert!(killed.is_some());
    let (code, _) = call(
        &c.nodes[l],
        "PATCH",
        "/config",
        &json!({"pause": null}),
        None,
    );
    assert_eq!(code, 200);
    wait_streaming(c, r, LONG);

    // 4. scheduled a few seconds ahead: accepted with 202, visible, carried out at its time
    let at = chrono::Utc::now() + chrono::Duration::seconds(6);
    let (code, answer) = call(
        &c.nodes[l],
        "POST",
        "/switchover",
        &json!({"leader": now_leader, "candidate": replica, "scheduled_at": at.to_rfc3339()}),
        None,
    );
    assert_eq!(code, 202, "{answer}");
    let (_, cluster) = c.nodes[l].get("/cluster").unwrap();
    assert!(cluster.contains("scheduled_switchover"), "{cluster}");
    wait_for("the scheduled switchover", LONG, || {
        (c.leader_name(etcd).as_deref() == Some(replica.as_str())).then_some(())
    })
    .map_err(|e| format!("{e}\n{}", c.logs_tail()))
    .unwrap();
    assert!(chrono::Utc::now() >= at, "carried out before its time");
    wait_streaming(c, l, LONG);
    // scheduled, then cancelled
    let at = chrono::Utc::now() + chrono::Duration::seconds(3600);
    let rl = index_of(c, &replica);
    let (code, _) = call(
        &c.nodes[rl],
        "POST",
        "/switchover",
        &json!({"leader": replica, "scheduled_at": at.to_rfc3339()}),
        None,
    );
    assert_eq!(code, 202);
    let (code, answer) = call(&c.nodes[rl], "DELETE", "/switchover", &json!({}), None);
    assert_eq!(
        (code, answer.as_str()),
        (200, "scheduled switchover deleted")
    );
    let (code, _) = call(&c.nodes[rl], "DELETE", "/switchover", &json!({}), None);
    assert_eq!(code, 404);

    // 5. failover: the leader's machine is lost, the operator names the member to take over
    let leader_now = index_of(c, &c.leader_name(etcd).unwrap());
    let chosen = (leader_now + 2) % 3;
    let chosen_name = c.nodes[chosen].name.clone();
    // With asynchronous replication, what the primary acknowledged in the instant before its
    // machine died may not have reached anyone: the check below covers every row acknowledged
    // until the candidate was seen holding them, and every row after the failover.
    let synced: Vec<i64> = writer.acked().into_iter().map(|(id, _)| id).collect();
    let synced_at = Instant::now();
    wait_for(
        "the candidate to hold every row acknowledged so far",
        LONG,
        || {
            let have = written_ids(&c.nodes[chosen]).ok()?;
            synced.iter().all(|id| have.contains(id)).then_some(())
        },
    )
    .unwrap();
    c.kill_machine(leader_now);
    let (code, answer) = call(
        &c.nodes[chosen],
        "POST",
        "/failover",
        &json!({"candidate": chosen_name}),
        None,
    );
    assert_eq!(code, 200, "{answer}\n{}", c.logs_tail());
    assert!(
        answer.contains(&format!("Successfully failed over to \"{chosen_name}\"")),
        "{answer}"
    );
    let failed_over_at = Instant::now();
    writer.wait_more(30, LONG).unwrap();
    let in_flight: Vec<i64> = writer
        .acked()
        .into_iter()
        .filter(|(_, at)| *at > synced_at && *at < failed_over_at)
        .filter(|(id, _)| !synced.contains(id))
        .map(|(id, _)| id)
        .collect();

    // every acknowledged row is on the final primary
    let (ids, gap) = writer.finish(began);
    let have = written_ids(&c.nodes[chosen]).unwrap();
    let lost: Vec<&i64> = ids
        .iter()
        .filter(|id| !have.contains(id) && !in_flight.contains(id))
        .collect();
    assert!(lost.is_empty(), "acknowledged rows lost: {lost:?}");
    eprintln!(
        "longest write gap over the whole test: {:.2}s",
        gap.as_secs_f64()
    );
}

/// Basic credentials the `localops` cluster requires for every write.
const ADMIN: Option<(&str, &str)> = Some(("admin", "admin-secret"));

/// A callback program that appends its arguments to a log everyone can write.
struct CallbackLog {
    script: std::path::PathBuf,
    log: std::path::PathBuf,
}

impl CallbackLog {
    fn new() -> CallbackLog {
        use std::os::unix::fs::PermissionsExt;
        let base = format!("/var/tmp/pgpilot-callback-{}", std::process::id());
        let script = std::path::PathBuf::from(format!("{base}.sh"));
        let log = std::path::PathBuf::from(format!("{base}.log"));
        std::fs::write(
            &script,
            format!("#!/bin/sh\necho \"$@\" >> {}\n", log.display()),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(&log, "").unwrap();
        std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o666)).unwrap();
        CallbackLog { script, log }
    }

    fn wait_line(&self, line: &str) {
        wait_for(&format!("callback line {line:?}"), LONG, || {
            let text = std::fs::read_to_string(&self.log).ok()?;
            text.lines().any(|l| l == line).then_some(())
        })
        .map_err(|e| {
            format!(
                "{e}\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            )
        })
        .unwrap();
    }
}

impl Drop for CallbackLog {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.script);
        let _ = std::fs::remove_file(&self.log);
    }
}

fn show(n: &Node, guc: &str) -> String {
    sql(n, &format!("SHOW {guc}"))
        .ok()
        .and_then(|r| r.into_iter().next())
        .unwrap_or_default()
}

/// Restart (now, scheduled, pending-only), dynamic parameters, reload of an edited file,
/// reinitialize and callbacks on a cluster whose REST API requires credentials, while a client
/// writes; every acknowledged row survives.
#[test]
fn restart_reload_reinitialize_and_parameters_with_authentication() {
    if !prerequisites() {
        return;
    }
    let cb = CallbackLog::new();
    let script = cb.script.display().to_string();
    let spec = ClusterSpec {
        postgresql_yaml: format!(
            "  callbacks:\n    on_start: {script}\n    on_restart: {script}\n    on_role_change: {script}\n    on_reload: {script}\n"
        ),
        ..authenticated("localops")
    };
    let (mut lab, p) = Lab::healthy(spec).unwrap();
    let c = &mut lab.cluster;
    let r = (p + 1) % 3;
    let writer = Writer::start(&c.nodes).unwrap();
    writer.wait_more(20, Duration::from_secs(30)).unwrap();

    // authentication: writes need the credentials, reads do not; no secret in the log
    let (code, body) = call(&c.nodes[r], "POST", "/restart", &json!({}), None);
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("no auth header received"), "{body}");
    let (code, body) = call(
        &c.nodes[r],
        "POST",
        "/restart",
        &json!({}),
        Some(("admin", "guess-pass")),
    );
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("not authenticated"), "{body}");
    assert!(c.nodes[r].status().is_some());
    let log = c.nodes[r].log();
    assert!(
        log.contains("wrong credentials") && !log.contains("guess-pass"),
        "{log}"
    );

    // callbacks of the start: the primary and the replicas, with action, role and scope
    cb.wait_line("on_start primary localops");
    cb.wait_line("on_start replica localops");

    // restart now
    let before = start_time(&c.nodes[r]).unwrap();
    let (code, body) = call(&c.nodes[r], "POST", "/restart", &json!({}), ADMIN);
    assert_eq!((code, body.as_str()), (200, "restarted successfully"));
    wait_for("the new postmaster start time", LONG, || {
        (start_time(&c.nodes[r])? != before).then_some(())
    })
    .unwrap();
    cb.wait_line("on_restart replica localops");
    // pending-only: nothing pending, nothing done
    let (code, body) = call(
        &c.nodes[r],
        "POST",
        "/restart",
        &json!({"restart_pending": true}),
        ADMIN,
    );
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("restart conditions are not satisfied"),
        "{body}"
    );
    // bad filters are refused with the key
    let (code, body) = call(
        &c.nodes[r],
        "POST",
        "/restart",
        &json!({"role": "boss"}),
        ADMIN,
    );
    assert_eq!(code, 400, "{body}");

    // dynamic parameters: one applied by reload everywhere, one pending a restart
    let (code, body) = call(
        &c.nodes[r],
        "PATCH",
        "/config",
        &json!({"postgresql": {"parameters": {"work_mem": "7MB", "max_connections": 60}}}),
        ADMIN,
    );
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"max_connections\":60"), "{body}");
    for n in &c.nodes {
        wait_for(
            &format!("{} to apply work_mem and flag the restart", n.name),
            LONG,
            || {
                let s = n.status()?;
                (show(n, "work_mem") == "7MB" && s["pending_restart"] == true).then_some(())
            },
        )
        .map_err(|e| format!("{e}\n{}", c.logs_tail()))
        .unwrap();
    }
    let (code, body) = call(
        &c.nodes[r],
        "PATCH",
        "/config",
        &json!({"ttl": "soon"}),
        ADMIN,
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("ttl"), "{body}");
    for n in &c.nodes {
        let (code, body) = call(
            n,
            "POST",
            "/restart",
            &json!({"restart_pending": true}),
            ADMIN,
        );
        assert_eq!(code, 200, "{}: {body}", n.name);
        assert_eq!(show(n, "max_connections"), "60");
        wait_for(
            &format!("{}: pending_restart cleared", n.name),
            LONG,
            || n.status()?.get("pending_restart").is_none().then_some(()),
        )
        .unwrap();
    }
    writer.wait_more(20, LONG).unwrap();

    // scheduled restart: visible in /patroni and the member key, one at a time, then done
    let before = start_time(&c.nodes[r]).unwrap();
    let at = chrono::Utc::now() + chrono::Duration::seconds(5);
    let (code, body) = call(
        &c.nodes[r],
        "POST",
        "/restart",
        &json!({"schedule": at.to_rfc3339(), "role": "replica"}),
        ADMIN,
    );
    assert_eq!(code, 202, "{body}");
    let s = c.nodes[r].status().unwrap();
    assert_eq!(s["scheduled_restart"]["role"], "replica", "{s}");
    let (code, _) = call(
        &c.nodes[r],
        "POST",
        "/restart",
        &json!({"schedule": at.to_rfc3339()}),
        ADMIN,
    );
    assert_eq!(code, 409);
    wait_for("the scheduled restart", LONG, || {
        let now = start_time(&c.nodes[r])?;
        (now != before).then_some(())
    })
    .unwrap();
    assert!(chrono::Utc::now() >= at);
    let (code, _) = call(&c.nodes[r], "DELETE", "/restart", &json!({}), ADMIN);
    assert_eq!(code, 404);

    // reload after editing the file: a local parameter changes; a broken file changes nothing
    let path = c.nodes[r].config_path.clone();
    let original = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        original.replace("fsync: 'off'", "fsync: 'off'\n    work_mem: 9MB"),
    )
    .unwrap();
    let (code, body) = call(&c.nodes[r], "POST", "/reload", &json!({}), ADMIN);
    assert_eq!(code, 202, "{body}");
    wait_for("the reloaded work_mem", LONG, || {
        (show(&c.nodes[r], "work_mem") == "9MB").then_some(())
    })
    .map_err(|e| format!("{e}\n{}", c.nodes[r].log()))
    .unwrap();
    cb.wait_line("on_reload replica localops");
    // SIGHUP does the same
    std::fs::write(
        &path,
        original.replace("fsync: 'off'", "fsync: 'off'\n    work_mem: 11MB"),
    )
    .unwrap();
    c.nodes[r]
        .agent
        .as_ref()
        .unwrap()
        .signal(nix::sys::signal::Signal::SIGHUP);
    wait_for("work_mem reloaded on SIGHUP", LONG, || {
        (show(&c.nodes[r], "work_mem") == "11MB").then_some(())
    })
    .map_err(|e| format!("{e}\n{}", c.nodes[r].log()))
    .unwrap();
    std::fs::write(&path, format!("{original}\n  : [broken")).unwrap();
    let (code, body) = call(&c.nodes[r], "POST", "/reload", &json!({}), ADMIN);
    assert_eq!(code, 400, "{body}");
    assert_eq!(show(&c.nodes[r], "work_mem"), "11MB");
    std::fs::write(&path, &original).unwrap();

    // reinitialize: refused on the leader, a replica is cloned again while writes go on
    let (code, body) = call(&c.nodes[p], "POST", "/reinitialize", &json!({}), ADMIN);
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("I am the leader"), "{body}");
    let marker = c.nodes[r].data_dir.join("pgpilot-test-marker");
    std::fs::write(&marker, "left by the test").unwrap();
    let (code, body) = call(&c.nodes[r], "POST", "/reinitialize", &json!({}), ADMIN);
    assert_eq!((code, body.as_str()), (200, "reinitialize started"));
    wait_for("the reinitialized replica", LONG, || {
        let s = c.nodes[r].status()?;
        (!marker.exists() && s["role"] == "replica" && s["replication_state"] == "streaming")
            .then_some(())
    })
    .map_err(|e| format!("{e}\n{}", c.logs_tail()))
    .unwrap();
    writer.wait_more(20, LONG).unwrap();
    let (ids, _) = writer.finish(Instant::now());
    let last = *ids.last().unwrap();
    wait_for("the reinitialized replica to hold every row", LONG, || {
        let have = written_ids(&c.nodes[r]).ok()?;
        (have.contains(&last) && ids.iter().all(|i| have.contains(i))).then_some(())
    })
    .unwrap();

    // a switchover changes two roles: both callbacks fire
    let (code, body) = call(
        &c.nodes[p],
        "POST",
        "/switchover",
        &json!({"leader": c.nodes[p].name, "candidate": c.nodes[r].name}),
        ADMIN,
    );
    assert_eq!(code, 200, "{body}");
    cb.wait_line("on_role_change primary localops");
    cb.wait_line("on_role_change replica localops");
}

/// `patronictl ARGS…` with a node's YAML (its `restapi.authentication` is what patronictl
/// sends): (success, stdout + stderr).
fn patronictl(config: &std::path::Path, args: &[&str]) -> Option<(bool, String)> {
    Some(patronictl_run(
        &patroni_program("patronictl")?,
        config,
        args,
    ))
}

/// Real `patronictl` (Patroni 4.x) operates a pgpilot cluster whose REST API requires
/// credentials: switchover, failover, restart, reload, reinit, pause/resume, edit-config and
/// flush, each with its real effect.
#[test]
fn patronictl_operates_a_pgpilot_cluster() {
    if !prerequisites() {
        return;
    }
    if patronictl_or_skip("so it cannot operate the cluster").is_none() {
        return;
    }
    let spec = authenticated("ctlops");
    let (mut lab, p) = Lab::healthy(spec).unwrap();
    let Lab {
        cluster: c, etcd, ..
    } = &mut lab;
    let cfg = c.nodes[p].config_path.clone();
    let ctl = |args: &[&str]| {
        let (ok, out) = patronictl(&cfg, args).unwrap();
        assert!(ok, "patronictl {args:?}:\n{out}");
        out
    };
    let writer = Writer::start(&c.nodes).unwrap();
    writer.wait_more(20, Duration::from_secs(30)).unwrap();

    // switchover to a named candidate
    let old = c.nodes[p].name.clone();
    let cand = c.nodes[(p + 1) % 3].name.clone();
    let out = ctl(&[
        "switchover",
        "ctlops",
        "--leader",
        &old,
        "--candidate",
        &cand,
        "--force",
    ]);
    assert!(
        out.contains(&format!("Successfully switched over to \"{cand}\"")),
        "{out}"
    );
    assert_eq!(c.leader_name(etcd).as_deref(), Some(cand.as_str()));
    wait_streaming(c, p, LONG);

    // a refused switchover is reported with the reason, and nothing changes
    let (ok, out) = patronictl(
        &cfg,
        &[
            "switchover",
            "ctlops",
            "--leader",
            &cand,
            "--candidate",
            &cand,
            "--force",
        ],
    )
    .unwrap();
    assert!(
        !ok || out.contains("failed") || out.contains("same"),
        "{out}"
    );
    assert_eq!(c.leader_name(etcd).as_deref(), Some(cand.as_str()));

    // restart, reload, reinit of a replica
    let replica = c.nodes[p].name.clone();
    let before = start_time(&c.nodes[p]).unwrap();
    let out = ctl(&["restart", "ctlops", &replica, "--force"]);
    assert!(out.contains("Success: restart on member"), "{out}");
    wait_for("the new postmaster start time", LONG, || {
        (start_time(&c.nodes[p])? != before).then_some(())
    })
    .unwrap();
    let out = ctl(&["reload", "ctlops", &replica, "--force"]);
    assert!(out.contains("Reload request received for member"), "{out}");
    let marker = c.nodes[p].data_dir.join("pgpilot-test-marker");
    std::fs::write(&marker, "left by the test").unwrap();
    let out = ctl(&["reinit", "ctlops", &replica, "--force", "--wait"]);
    assert!(out.contains("Success: reinitialize for member"), "{out}");
    wait_for("the reinitialized replica", LONG, || {
        let s = c.nodes[p].status()?;
        (!marker.exists() && s["replication_state"] == "streaming").then_some(())
    })
    .unwrap();

    // edit-config: a reloadable parameter reaches every member
    ctl(&["edit-config", "ctlops", "--pg", "work_mem=5MB", "--force"]);
    for n in &c.nodes {
        wait_for(&format!("{} to apply work_mem", n.name), LONG, || {
            (show(n, "work_mem") == "5MB").then_some(())
        })
        .unwrap();
    }

    // pause and resume, waiting as patronictl does for every member to see it
    let out = ctl(&["pause", "ctlops", "--wait"]);
    assert!(
        out.contains("Success: cluster management is paused"),
        "{out}"
    );
    let out = ctl(&["resume", "ctlops", "--wait"]);
    assert!(
        out.contains("Success: cluster management is resumed"),
        "{out}"
    );

    // a scheduled restart and a scheduled switchover, both flushed
    let at = (chrono::Utc::now() + chrono::Duration::hours(2)).to_rfc3339();
    ctl(&["restart", "ctlops", &replica, "--scheduled", &at, "--force"]);
    assert!(c.nodes[p].status().unwrap()["scheduled_restart"].is_object());
    ctl(&["flush", "ctlops", &replica, "restart", "--force"]);
    assert!(
        c.nodes[p]
            .status()
            .unwrap()
            .get("scheduled_restart")
            .is_none()
    );
    let out = ctl(&[
        "switchover",
        "ctlops",
        "--leader",
        &cand,
        "--scheduled",
        &at,
        "--force",
    ]);
    assert!(out.contains("Switchover scheduled"), "{out}");
    ctl(&["flush", "ctlops", "switchover", "--force"]);
    let (_, cluster) = c.nodes[p].get("/cluster").unwrap();
    assert!(!cluster.contains("scheduled_switchover"), "{cluster}");

    // failover to a named replica (patronictl warns that it is not a switchover)
    let target = c
        .nodes
        .iter()
        .map(|n| n.name.clone())
        .find(|n| *n != cand)
        .unwrap();
    let out = ctl(&["failover", "ctlops", "--candidate", &target, "--force"]);
    assert!(out.contains(&target), "{out}");
    wait_for("the failover target to lead", LONG, || {
        (c.leader_name(etcd).as_deref() == Some(target.as_str())).then_some(())
    })
    .unwrap();
    writer.wait_more(20, LONG).unwrap();
}

/// `console --batch` carries out the same operations (one implementation in shared::ops) with
/// exit codes for scripts: 0 done, 1 refused or failed, 2 bad input.
#[test]
fn console_batch_operates_a_cluster() {
    if !prerequisites() {
        return;
    }
    let spec = authenticated("batchops");
    let (mut lab, p) = Lab::healthy(spec).unwrap();
    let Lab {
        cluster: c, etcd, ..
    } = &mut lab;
    let cfg = c.nodes[p].config_path.display().to_string();
    let run = |args: &[&str]| {
        let mut all = vec!["-c", cfg.as_str(), "--batch"];
        all.extend_from_slice(args);
        console(&all).unwrap()
    };
    let writer = Writer::start(&c.nodes).unwrap();
    writer.wait_more(20, Duration::from_secs(30)).unwrap();

    // switchover with JSON output
    let cand = c.nodes[(p + 1) % 3].name.clone();
    let (code, out, err) = run(&[
        "-f",
        "json",
        "switchover",
        "batchops",
        "--candidate",
        &cand,
        "--force",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["target"], cand.as_str(), "{v}");
    assert_eq!(c.leader_name(etcd).as_deref(), Some(cand.as_str()));
    wait_streaming(c, p, LONG);

    // refused (exit 1) and bad input (exit 2), nothing changes
    let (code, _, err) = run(&["switchover", "batchops", "--candidate", "nobody", "--force"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("does not exist"), "{err}");
    let (code, _, err) = run(&[
        "switchover",
        "batchops",
        "--scheduled",
        "tomorrow",
        "--force",
    ]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = run(&["restart", "batchops", "nobody", "--force"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = run(&["restart", "batchops", "--role", "boss", "--force"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = run(&["switchover", "batchops", "--candidate", &cand]);
    assert_eq!(code, 2, "not on a terminal without --force: {err}");
    assert_eq!(c.leader_name(etcd).as_deref(), Some(cand.as_str()));

    // restart replicas, only where pending: none is, so each reports the unmet condition
    let (code, out, err) = run(&[
        "restart",
        "batchops",
        "-r",
        "replica",
        "--pending",
        "--force",
    ]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("restart conditions are not satisfied"),
        "{err}"
    );
    let replica = c.nodes[p].name.clone();
    let (code, out, err) = run(&["restart", "batchops", &replica, "--force"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("restarted successfully"), "{out}");
    let (code, out, err) = run(&["reload", "batchops", "--force"]);
    assert_eq!(code, 0, "{out}{err}");
    // without the REST credentials the agents refuse, and the console says what to set
    let bare = c.dir.join("no-credentials.yml");
    std::fs::write(
        &bare,
        format!(
            "scope: batchops\nnamespace: /service\netcd3:\n  hosts: {}\n",
            c.etcd_endpoint
        ),
    )
    .unwrap();
    let (code, _, err) = console(&[
        "-c",
        bare.to_str().unwrap(),
        "--batch",
        "restart",
        "batchops",
        &replica,
        "--force",
    ])
    .unwrap();
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("refused the credentials") && err.contains("ctl.authentication"),
        "{err}"
    );

    // a scheduled restart, listed and flushed
    let at = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let (code, _, err) = run(&[
        "restart",
        "batchops",
        &replica,
        "--scheduled",
        &at,
        "--force",
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run(&["flush", "batchops", "restart", "--force"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("scheduled restart deleted"), "{out}");

    // reinit with --wait returns once the member streams again; refused on the leader
    let (code, _, err) = run(&["reinit", "batchops", &cand, "--force"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("I am the leader"), "{err}");
    // the third member tagged clonefrom (its file edited, then reloaded): a reinit clones from
    // it, a reinit --from-leader from the leader all the same
    let third = (0..3)
        .find(|i| *i != p && c.nodes[*i].name != cand)
        .unwrap();
    let file = &c.nodes[third].config_path;
    let text = std::fs::read_to_string(file).unwrap();
    std::fs::write(file, text.replace("clonefrom: false", "clonefrom: true")).unwrap();
    let (code, out, err) = run(&["reload", "batchops", &c.nodes[third].name, "--force"]);
    assert_eq!(code, 0, "{out}{err}");
    wait_for("the clonefrom tag in etcd", LONG, || {
        let key = format!("/service/batchops/members/{}", c.nodes[third].name);
        let (_, v, _) = etcd.get_prefix(&key).ok()?.into_iter().next()?;
        v.contains("\"clonefrom\":true").then_some(())
    })
    .unwrap();
    let cloned_from = |from: &str| {
        let want = format!("cloning a replica from {from}");
        wait_for(&want, LONG, || {
            let (code, body) = c.nodes[p].get("/journal").ok()?;
            (code == 200 && body.contains(&want)).then_some(())
        })
        .unwrap();
    };
    let (code, out, err) = run(&["reinit", "batchops", &replica, "--force", "--wait"]);
    assert_eq!(code, 0, "{out}{err}");
    cloned_from(&c.nodes[third].name);
    // (--wait followed the member key; the REST answer follows within a sampling period)
    wait_streaming(c, p, LONG);
    let (code, out, err) = run(&[
        "reinit",
        "batchops",
        &replica,
        "--from-leader",
        "--force",
        "--wait",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    cloned_from(&cand);
    wait_streaming(c, p, LONG);

    // failover to a named member, once it has caught up (with a healthy leader the request is
    // carried out as a switchover, lag limit included)
    let target = c
        .nodes
        .iter()
        .map(|n| n.name.clone())
        .find(|n| *n != cand)
        .unwrap();
    let t = index_of(c, &target);
    let l = index_of(c, &cand);
    wait_for("the target to catch up", LONG, || {
        let leader = c.nodes[l].status()?["xlog"]["location"].as_u64()?;
        let theirs = c.nodes[t].status()?["xlog"]["received_location"].as_u64()?;
        (leader.saturating_sub(theirs) < 1 << 20).then_some(())
    })
    .unwrap();
    // a replica that just caught up after its re-clone may still be refused for its lag (with
    // the numbers): that is a definite outcome; ask again until it is eligible
    let out = wait_for("the failover to the caught-up member", LONG, || {
        let (code, out, err) = run(&["failover", "batchops", "--candidate", &target, "--force"]);
        if code == 0 {
            return Some(out);
        }
        assert!(code == 1 && err.contains("behind"), "{out}{err}");
        std::thread::sleep(Duration::from_secs(1));
        None
    })
    .unwrap();
    assert!(out.contains(&target), "{out}");
    writer.wait_more(20, LONG).unwrap();
}

/// The REST API over TLS (`restapi.certfile`/`keyfile`, peers and the console checking it
/// against `restapi.cafile`): health checks with certificate verification, no plain http, a
/// switchover (the leader probes its candidate over https) and a console restart.
#[test]
fn rest_api_over_tls() {
    if !prerequisites() || !need_program("openssl", "openssl") {
        return;
    }
    let ca = TestCa::new("restapi").unwrap();
    let (cert, key) = ca.issue("server", "127.0.0.1").unwrap();
    let spec = ClusterSpec {
        restapi_yaml: format!(
            "  certfile: {}\n  keyfile: {}\n  cafile: {}\n{}",
            cert.display(),
            key.display(),
            ca.ca().display(),
            authenticated("tlsops").restapi_yaml
        ),
        ..authenticated("tlsops")
    };
    let (mut lab, p) = Lab::healthy(spec).unwrap();
    let Lab {
        cluster: c, etcd, ..
    } = &mut lab;
    // the certificate verifies, the member keys advertise https, plain http gets nothing
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--cacert",
            &ca.ca().display().to_string(),
        ])
        .arg(c.nodes[p].api("/primary"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    let (_, cluster) = c.nodes[p].get("/cluster").unwrap();
    let v: Value = serde_json::from_str(&cluster).unwrap();
    assert!(
        v["members"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["api_url"].as_str().unwrap().starts_with("https://")),
        "{v}"
    );
    let plain = http_request(
        "GET",
        &format!("http://127.0.0.1:{}/patroni", c.nodes[p].api_port),
        None,
    );
    assert!(
        plain.is_err() || plain.as_ref().unwrap().0 != 200,
        "{plain:?}"
    );

    // a switchover between TLS members
    let cand = c.nodes[(p + 1) % 3].name.clone();
    let (code, body) = call(
        &c.nodes[p],
        "POST",
        "/switchover",
        &json!({"leader": c.nodes[p].name, "candidate": cand}),
        ADMIN,
    );
    assert_eq!(code, 200, "{body}\n{}", c.logs_tail());
    assert_eq!(c.leader_name(etcd).as_deref(), Some(cand.as_str()));
    wait_streaming(c, p, LONG);

    // the console talks to the members over https with the config's cafile and credentials
    let cfg = c.nodes[p].config_path.display().to_string();
    let replica = c.nodes[p].name.clone();
    let (code, out, err) = console(&[
        "-c", &cfg, "--batch", "restart", "tlsops", &replica, "--force",
    ])
    .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("restarted successfully"), "{out}");
}

/// The slot of a member whose machine is gone is dropped after `member_slots_ttl` even when the
/// leader's agent restarted in between (it learns which slots are members' from the `status`
/// key's `retain_slots`, as Patroni 4 does); the other members' slots stay.
#[test]
fn a_vanished_members_slot_is_dropped_after_member_slots_ttl_across_an_agent_restart() {
    if !prerequisites() {
        return;
    }
    let spec = ClusterSpec {
        scope: "slots".into(),
        ..Default::default()
    };
    let (mut lab, p) = Lab::healthy(spec).unwrap();
    let Lab {
        cluster: c, etcd, ..
    } = &mut lab;
    let (code, _) = call(
        &c.nodes[p],
        "PATCH",
        "/config",
        &json!({"member_slots_ttl": 20}),
        None,
    );
    assert_eq!(code, 200);
    let (r, q) = ((p + 1) % 3, (p + 2) % 3);
    let slot_of = |i: usize| shared::types::slot_name(&c.nodes[i].name);
    let (gone, kept) = (slot_of(r), slot_of(q));
    let slots = |c: &TestCluster| {
        sql(
            &c.nodes[p],
            "SELECT slot_name FROM pg_replication_slots ORDER BY 1",
        )
        .unwrap_or_default()
    };
    assert!(slots(c).contains(&gone) && slots(c).contains(&kept));
    let status = format!("/service/{}/status", c.spec.scope);
    wait_for("retain_slots in the status key", LONG, || {
        let (_, raw, _) = etcd.get_prefix(&status).ok()?.pop()?;
        raw.contains(&format!("\"{gone}\"")).then_some(())
    })
    .unwrap();

    // a replica's machine is lost; meanwhile the leader's agent restarts (paused, so that
    // PostgreSQL and the leadership stay) and forgets everything it knew
    c.kill_machine(r);
    let (code, _) = call(
        &c.nodes[p],
        "PATCH",
        "/config",
        &json!({"pause": true}),
        None,
    );
    assert_eq!(code, 200);
    wait_for("the leader to see the pause", LONG, || {
        c.nodes[p].status().filter(|s| s["pause"] == true)
    })
    .unwrap();
    c.stop_agent(p);
    c.start_agent(p).unwrap();
    wait_for("the restarted agent to lead again", LONG, || {
        let s = c.nodes[p].status()?;
        (s["role"] == "primary" && c.leader_index(etcd) == Some(p)).then_some(())
    })
    .unwrap();
    let (code, _) = call(
        &c.nodes[p],
        "PATCH",
        "/config",
        &json!({"pause": null}),
        None,
    );
    assert_eq!(code, 200);
    wait_for(
        "the lost member's slot to be dropped",
        Duration::from_secs(20 + 60),
        || (!slots(c).contains(&gone)).then_some(()),
    )
    .map_err(|e| format!("{e}\n{}", c.logs_tail()))
    .unwrap();
    assert!(slots(c).contains(&kept), "{:?}", slots(c));
    assert!(c.nodes[p].log().contains("member_slots_ttl"));
}

/// The write endpoints of a REST API with `restapi.allowlist` and credentials: a write from an
/// address outside the allowlist is refused with 403 even with the right credentials; once a
/// reload (SIGHUP) allows it, the credentials decide. A client that never finishes its headers,
/// or stays silent on a kept-alive connection, is cut off, an oversized body gets 413, and one
/// address holding its whole share of connections cannot shut out another's health check.
#[test]
fn the_allowlist_and_the_listener_limits_guard_the_rest_api() {
    if !prerequisites() {
        return;
    }
    let mut spec = authenticated("access");
    spec.nodes = 1;
    spec.restapi_yaml.push_str(
        "  allowlist: [10.1.2.3, 192.168.0.0/16]\n  http_extra_headers:\n    X-Frame-Options: DENY\n",
    );
    let (mut lab, p) = Lab::healthy(spec).unwrap();
    let c = &mut lab.cluster;
    let n = &c.nodes[p];
    // 127.0.0.1 is not in the allowlist: the right credentials do not help
    let (code, body) = call(n, "POST", "/reload", &json!({}), ADMIN);
    // Patroni's answer, byte for byte; the address and the key are in the agent's log
    assert_eq!((code, body.as_str()), (403, "Access is denied"));
    assert!(
        n.log().contains("is not in restapi.allowlist"),
        "{}",
        n.log()
    );
    // reads are never restricted
    assert_eq!(n.get("/primary").unwrap().0, 200);
    // allow loopback through the file and SIGHUP
    let yaml = std::fs::read_to_string(&n.config_path).unwrap();
    std::fs::write(
        &n.config_path,
        yaml.replace(
            "allowlist: [10.1.2.3, 192.168.0.0/16]",
            "allowlist: [10.1.2.3, 127.0.0.0/8]",
        ),
    )
    .unwrap();
    n.agent
        .as_ref()
        .unwrap()
        .signal(nix::sys::signal::Signal::SIGHUP);
    wait_for("the reloaded allowlist", LONG, || {
        let (code, _) = call(n, "POST", "/reload", &json!({}), ADMIN);
        (code == 202).then_some(())
    })
    .unwrap();
    let (code, _) = call(n, "POST", "/reload", &json!({}), Some(("admin", "wrong")));
    assert_eq!(code, 401);
    // an oversized body
    let big = format!("{{\"x\": \"{}\"}}", "a".repeat(100 * 1024));
    let (code, body) = http_call(
        "POST",
        &n.api("/reload"),
        Some(&big),
        ADMIN,
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(code, 413, "{body}");
    // a client that never finishes its request headers is cut off
    use std::io::{Read, Write};
    let mut slow = std::net::TcpStream::connect((n.host.as_str(), n.api_port)).unwrap();
    slow.write_all(b"GET /patroni HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let started = Instant::now();
    // meanwhile health checks answer
    assert_eq!(n.get("/primary").unwrap().0, 200);
    let mut buf = [0u8; 512];
    let cut = match slow.read(&mut buf) {
        Ok(0) => true,
        // hyper may answer 408 before it closes
        Ok(k) => String::from_utf8_lossy(&buf[..k]).contains("408"),
        // our own read timeout: the server kept waiting
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            false
        }
        Err(_) => true,
    };
    assert!(
        cut,
        "the client that never finished its headers was still connected after {:?}",
        started.elapsed()
    );
    // nor one that made a request and then stays silent on its kept-alive connection
    let mut kept = std::net::TcpStream::connect((n.host.as_str(), n.api_port)).unwrap();
    kept.write_all(b"GET /liveness HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    kept.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let k = kept.read(&mut buf).unwrap();
    let answer = String::from_utf8_lossy(&buf[..k]).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    // restapi.http_extra_headers on every answer
    assert!(answer.contains("x-frame-options: deny"), "{answer}");
    assert!(
        matches!(kept.read(&mut buf), Ok(0) | Err(_)),
        "an idle kept-alive connection was kept"
    );
    // one address holding its whole share of connections: its next one is closed at once,
    // another address's health check is answered
    if need_program("curl", "curl") {
        let flood: Vec<std::net::TcpStream> = (0..128)
            .map(|_| std::net::TcpStream::connect((n.host.as_str(), n.api_port)).unwrap())
            .collect();
        // the server takes connections in tasks of their own: let it take these first
        std::thread::sleep(Duration::from_secs(1));
        let mut extra = std::net::TcpStream::connect((n.host.as_str(), n.api_port)).unwrap();
        extra
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let _ = extra.write_all(b"GET /liveness HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(
            matches!(extra.read(&mut buf), Ok(0) | Err(_)),
            "a connection over the address's share was served"
        );
        let out = std::process::Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--interface",
                "127.0.0.2",
            ])
            .arg(n.api("/primary"))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
        drop(flood);
    }
    // nor can one that sends nothing at all, or an HTTP/2 preface, hold a connection
    for opening in [&b""[..], b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"] {
        let mut idle = std::net::TcpStream::connect((n.host.as_str(), n.api_port)).unwrap();
        idle.write_all(opening).unwrap();
        idle.set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let closed = match idle.read(&mut buf) {
            Ok(_) => true,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        };
        assert!(closed, "a connection opened with {opening:?} was kept");
    }
    assert_eq!(n.get("/primary").unwrap().0, 200);
}

/// Every process's command line, sampled while `during` runs: no role password may appear.
fn argv_while<T>(secrets: &[&str], during: impl FnOnce() -> T) -> (T, Vec<String>) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        let secrets: Vec<String> = secrets.iter().map(|s| s.to_string()).collect();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                    let Ok(argv) = std::fs::read(entry.path().join("cmdline")) else {
                        continue;
                    };
                    let argv = String::from_utf8_lossy(&argv).replace('\0', " ");
                    if secrets.iter().any(|s| argv.contains(s.as_str())) {
                        seen.push(argv);
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            seen
        })
    };
    let out = during();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    (out, sampler.join().unwrap())
}

/// With `log_statement: all` from the first start, no role password reaches PostgreSQL's log,
/// the agents' logs or any process's command line, through bootstrap, cloning, a switchover, a
/// failover with the old primary's rejoin, and new passwords set by a reload (then used by a
/// restarted replica to stream).
#[test]
fn role_passwords_never_reach_a_log_or_a_command_line() {
    if !prerequisites() {
        return;
    }
    let spec = ClusterSpec {
        scope: "secrets".into(),
        ..Default::default()
    };
    let mut lab = Lab::new("e2e-secrets", spec, true).unwrap();
    let c = &mut lab.cluster;
    for n in &c.nodes {
        let yaml = std::fs::read_to_string(&n.config_path).unwrap();
        std::fs::write(
            &n.config_path,
            yaml.replacen(
                "max_connections: 50",
                "max_connections: 50\n        log_statement: all",
                1,
            ),
        )
        .unwrap();
    }
    let secrets = [
        "postgres-secret",
        "rep-secret",
        "rewind-secret",
        "postgres-rotated",
        "rep-rotated",
        "rewind-rotated",
    ];
    let (p, argv) = argv_while(&secrets, || {
        c.start_all().unwrap();
        let p = c.wait_healthy(LONG).unwrap();
        let r = (p + 1) % c.nodes.len();
        let (code, body) = call(
            &c.nodes[p],
            "POST",
            "/switchover",
            &json!({"leader": c.nodes[p].name, "candidate": c.nodes[r].name}),
            None,
        );
        assert_eq!(code, 200, "{body}");
        let p = c.wait_healthy(LONG).unwrap();
        // a failover: the primary's machine dies; it comes back and rejoins (pg_rewind with
        // the rewind role's password)
        c.kill_machine(p);
        wait_for("a replica to take over", LONG, || {
            c.primary().filter(|&i| i != p)
        })
        .unwrap();
        c.start_agent(p).unwrap();
        let p = c.wait_healthy(LONG).unwrap();
        // the passwords changed in every member's YAML and reloaded: the primary sets them
        for n in &c.nodes {
            let yaml = std::fs::read_to_string(&n.config_path).unwrap();
            let yaml = ["postgres", "rep", "rewind"].iter().fold(yaml, |y, role| {
                y.replace(
                    &format!("password: {role}-secret"),
                    &format!("password: {role}-rotated"),
                )
            });
            std::fs::write(&n.config_path, yaml).unwrap();
        }
        for n in &c.nodes {
            let (code, body) = call(n, "POST", "/reload", &json!({}), None);
            assert_eq!(code, 202, "{body}");
        }
        let rotated = format!(
            "host={} port={} user=postgres password=postgres-rotated dbname=postgres connect_timeout=3",
            c.nodes[p].host, c.nodes[p].pg_port
        );
        wait_for("the new superuser password to work", LONG, || {
            sql_dsn(&rotated, "SELECT 1").ok()
        })
        .map_err(|e| format!("{e}\n{}", c.logs_tail()))
        .unwrap();
        // a replica restarted connects to the primary with the new replication password
        let r = (p + 1) % c.nodes.len();
        let (code, body) = call(&c.nodes[r], "POST", "/restart", &json!({}), None);
        assert_eq!(code, 200, "{body}\n{}", c.logs_tail());
        c.wait_healthy(LONG).unwrap()
    });
    assert!(argv.is_empty(), "a password on a command line: {argv:?}");
    let statements_logged = c.nodes.iter().any(|n| {
        let log = std::fs::read_to_string(n.data_dir.join("log").join("postmaster.log"))
            .unwrap_or_default();
        log.contains("statement:")
    });
    assert!(statements_logged, "log_statement: all logged nothing");
    for n in &c.nodes {
        let pg_log = std::fs::read_to_string(n.data_dir.join("log").join("postmaster.log"))
            .unwrap_or_default();
        for s in secrets {
            assert!(!pg_log.contains(s), "{s} in {}'s PostgreSQL log", n.name);
            assert!(!n.log().contains(s), "{s} in {}'s agent log", n.name);
        }
    }
    assert!(p < c.nodes.len());
}

/// `curl` against a node's REST API with the test CA, with or without a client certificate;
/// the HTTP status, or `000` when no TLS session came about.
fn curl_status(
    url: &str,
    method: &str,
    ca: &std::path::Path,
    client: Option<(&std::path::Path, &std::path::Path)>,
) -> String {
    let mut cmd = std::process::Command::new("curl");
    cmd.args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        method,
        "--cacert",
    ])
    .arg(ca);
    if let Some((cert, key)) = client {
        cmd.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    let out = cmd.arg(url).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Client certificates on the REST API (`restapi.verify_client` with `restapi.cafile`, the
/// server's key encrypted and opened with `restapi.keyfile_password`): with
/// `optional`, reads need none and writes are refused (403) without one; after a reload to
/// `required`, a client without a certificate gets no TLS session at all, one with a
/// certificate the CA signed is served.
#[test]
fn client_certificates_guard_the_rest_api() {
    if !prerequisites() || !need_program("openssl", "openssl") || !need_program("curl", "curl") {
        return;
    }
    let ca = TestCa::new("rest").unwrap();
    let (server_cert, server_key) = ca.issue("server", "127.0.0.1").unwrap();
    let (cert, key) = ca.issue("client", "console").unwrap();
    // the server's key encrypted (PKCS#8), opened with restapi.keyfile_password
    let encrypted = ca.dir.join("server-encrypted.key");
    let out = std::process::Command::new("openssl")
        .args([
            "pkcs8",
            "-topk8",
            "-v2",
            "aes-256-cbc",
            "-passout",
            "pass:key-phrase",
            "-in",
        ])
        .arg(&server_key)
        .arg("-out")
        .arg(&encrypted)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&encrypted, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let spec = ClusterSpec {
        scope: "clientcert".into(),
        nodes: 1,
        restapi_yaml: format!(
            "  certfile: {}\n  keyfile: {}\n  keyfile_password: key-phrase\n  cafile: {}\n  verify_client: optional\n",
            server_cert.display(),
            encrypted.display(),
            ca.ca().display()
        ),
        extra_yaml: format!(
            "ctl:\n  certfile: {}\n  keyfile: {}\n",
            cert.display(),
            key.display()
        ),
        ..Default::default()
    };
    let (lab, p) = Lab::healthy(spec).unwrap();
    let n = &lab.cluster.nodes[p];
    let client = Some((cert.as_path(), key.as_path()));
    assert_eq!(
        curl_status(&n.api("/patroni"), "GET", &ca.ca(), None),
        "200"
    );
    assert_eq!(
        curl_status(&n.api("/reload"), "POST", &ca.ca(), None),
        "403"
    );
    assert_eq!(
        curl_status(&n.api("/reload"), "POST", &ca.ca(), client),
        "202"
    );
    // required, by a reload
    let yaml = std::fs::read_to_string(&n.config_path).unwrap();
    std::fs::write(
        &n.config_path,
        yaml.replace("verify_client: optional", "verify_client: required"),
    )
    .unwrap();
    n.agent
        .as_ref()
        .unwrap()
        .signal(nix::sys::signal::Signal::SIGHUP);
    wait_for("the reload to require certificates", LONG, || {
        (curl_status(&n.api("/patroni"), "GET", &ca.ca(), None) == "000").then_some(())
    })
    .map_err(|e| format!("{e}\n{}", lab.cluster.logs_tail()))
    .unwrap();
    assert_eq!(
        curl_status(&n.api("/patroni"), "GET", &ca.ca(), client),
        "200"
    );
    assert_eq!(
        curl_status(&n.api("/reload"), "POST", &ca.ca(), client),
        "202"
    );
    // a certificate from another CA is no better than none
    let other = TestCa::new("rest-other").unwrap();
    let (ocert, okey) = other.issue("client", "intruder").unwrap();
    assert_eq!(
        curl_status(&n.api("/patroni"), "GET", &ca.ca(), Some((&ocert, &okey))),
        "000"
    );
}
