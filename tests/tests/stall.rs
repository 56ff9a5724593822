//! What must never hold back a failover or keep a stale primary writable, end to end (real etcd,
//! three PostgreSQL 15 servers and agents on loopback, a writer recording every acknowledged id,
//! a probe asking every server for a write every 100 ms): the primary's agent frozen with
//! SIGSTOP, a flood of forged `POST /failsafe` during a machine loss, the primary's PostgreSQL
//! frozen, an absurd ttl written into the `config` key.

use pgpilot_e2e::*;
use serde_json::Value;
use std::time::{Duration, Instant};

const HEALTHY: Duration = Duration::from_secs(120);

fn signal(pid: i32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
}

/// The primary's agent stopped (SIGSTOP: alive, not scheduled) until another member leads, then
/// continued: its guard fences the primary before the lease ends, so no tick sees two writable
/// primaries and no acknowledged id is lost; the thawed agent rejoins as a replica.
#[test]
fn a_frozen_agent_is_fenced_by_its_guard_and_rejoins_when_thawed() {
    if !prerequisites() {
        return;
    }
    let spec = ClusterSpec {
        scope: "stall".into(),
        ..Default::default()
    };
    let (mut lab, p) = Lab::healthy(spec).unwrap();
    let Lab {
        cluster: c, etcd, ..
    } = &mut lab;
    wait_for(
        "the primary's guard to arm",
        Duration::from_secs(30),
        || (fencing_state(&c.nodes[p]).as_deref() == Some("armed")).then_some(()),
    )
    .unwrap();
    let writer = Writer::start(&c.nodes).unwrap();
    let probe = WriteProbe::start(&c.nodes);
    writer.wait_more(30, Duration::from_secs(30)).unwrap();

    let agent = c.nodes[p].agent.as_ref().expect("agent running").pid();
    let frozen_at = Instant::now();
    signal(agent, nix::sys::signal::Signal::SIGSTOP);
    let new = wait_for("a new leader", Duration::from_secs(60), || {
        c.leader_index(etcd).filter(|&i| i != p)
    })
    .map_err(|e| format!("{e}\n{}", c.logs_tail()));
    // whatever happened, the agent runs again before anything is asserted
    signal(agent, nix::sys::signal::Signal::SIGCONT);
    let new = new.unwrap();
    eprintln!(
        "agent frozen: new leader after {:.1}s",
        frozen_at.elapsed().as_secs_f64()
    );
    writer
        .wait_more(30, Duration::from_secs(60))
        .map_err(|e| format!("{e}\n{}", c.logs_tail()))
        .unwrap();
    let frozen_tick = probe.tick_of(frozen_at);
    let fenced = probe.last_writable(p).unwrap();
    let takeover = probe.first_writable_since(new, frozen_tick).unwrap();
    assert!(
        fenced < takeover,
        "the old primary took writes until tick {fenced}, the new one from tick {takeover}"
    );
    assert!(
        c.nodes[p]
            .log()
            .contains("made no progress before its deadline"),
        "{}",
        c.nodes[p].log()
    );
    // the thawed agent finds another member leading and rejoins it
    c.wait_healthy(HEALTHY)
        .map_err(|e| format!("{e}\n{}", c.logs_tail()))
        .unwrap();
    assert_eq!(c.leader_index(etcd), Some(new));
    assert_eq!(
        sql(&c.nodes[p], "SELECT pg_is_in_recovery()").unwrap(),
        vec!["t".to_string()]
    );
    writer.wait_more(20, Duration::from_secs(60)).unwrap();
    no_split_brain_and_nothing_lost(c, probe, writer, frozen_at);
}

/// `failsafe_mode` on, the leader's machine lost, and every replica sent `POST /failsafe` in the
/// old leader's name each second: a new leader is elected within ttl and a few seconds all the
/// same (a replica confirms only a leader whose own REST API answers as a running primary);
/// requests naming any other member are refused outright.
#[test]
fn a_failsafe_flood_does_not_hold_back_a_failover() {
    if !prerequisites() {
        return;
    }
    let spec = ClusterSpec {
        scope: "fsflood".into(),
        ..Default::default()
    };
    let ttl = spec.ttl;
    let (mut lab, p) = Lab::healthy(spec).unwrap();
    let Lab {
        cluster: c, etcd, ..
    } = &mut lab;
    // without failsafe_mode the endpoint answers 502, as Patroni's
    let r = (p + 1) % c.nodes.len();
    let leader_name = c.nodes[p].name.clone();
    let ask = format!(r#"{{"name": "{leader_name}"}}"#);
    let (code, _) = http_post(&c.nodes[r].api("/failsafe"), &ask).unwrap();
    assert_eq!(code, 502);
    enable_failsafe(c, etcd, p).unwrap();
    // a name other than the leader's is refused
    let other = c.nodes[(p + 2) % c.nodes.len()].name.clone();
    wait_for(
        "replicas to see failsafe mode",
        Duration::from_secs(30),
        || {
            let (code, body) = http_post(
                &c.nodes[r].api("/failsafe"),
                &format!(r#"{{"name": "{other}"}}"#),
            )
            .ok()?;
            (code == 500 && body.contains("not the leader")).then_some(())
        },
    )
    .unwrap();
    let writer = Writer::start(&c.nodes).unwrap();
    writer.wait_more(20, Duration::from_secs(30)).unwrap();

    // the flood: every replica, every second, in the old leader's name
    let targets: Vec<String> = (0..c.nodes.len())
        .filter(|&i| i != p)
        .map(|i| c.nodes[i].api("/failsafe"))
        .collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let (stop, ask) = (stop.clone(), ask.clone());
        std::thread::spawn(move || {
            let mut accepted = 0;
            let started = Instant::now();
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && started.elapsed() < Duration::from_secs(180)
            {
                for t in &targets {
                    if let Ok((200, _)) = http_post(t, &ask) {
                        accepted += 1;
                    }
                }
                std::thread::sleep(Duration::from_secs(1));
            }
            accepted
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    let lost_at = Instant::now();
    c.kill_machine(p);
    let new = wait_for(
        "a new leader despite the flood",
        Duration::from_secs(ttl + 20),
        || c.leader_index(etcd).filter(|&i| i != p),
    )
    .map_err(|e| format!("{e}\n{}", c.logs_tail()));
    let took = lost_at.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let accepted = flood.join().unwrap();
    let new = new.unwrap();
    eprintln!(
        "machine lost under a failsafe flood ({accepted} requests accepted): new leader {} after {:.1}s (ttl {ttl})",
        c.nodes[new].name,
        took.as_secs_f64()
    );
    assert!(accepted > 0, "the flood never reached a replica");
    assert!(
        c.nodes
            .iter()
            .enumerate()
            .any(|(i, n)| i != p && n.log().contains("refused a confirmation")),
        "{}",
        c.logs_tail()
    );
    writer
        .wait_more(20, Duration::from_secs(60))
        .map_err(|e| format!("{e}\n{}", c.logs_tail()))
        .unwrap();
    c.start_agent(p).unwrap();
    c.wait_healthy(HEALTHY)
        .map_err(|e| format!("{e}\n{}", c.logs_tail()))
        .unwrap();
    drop(writer);
}

/// Every process of the primary's PostgreSQL frozen (SIGSTOP): the agent's loop keeps its
/// deadlines (its REST API answers, its status queries time out), kills the frozen server and
/// gives the lock up; a replica takes over, no tick sees two writable primaries, and the old
/// primary rejoins once it is thawed.
#[test]
fn a_frozen_primary_postgres_is_killed_and_replaced() {
    if !prerequisites() {
        return;
    }
    let spec = ClusterSpec {
        scope: "pgfreeze".into(),
        ..Default::default()
    };
    let (mut lab, p) = Lab::healthy(spec).unwrap();
    let Lab {
        cluster: c, etcd, ..
    } = &mut lab;
    let writer = Writer::start(&c.nodes).unwrap();
    let mut probe = WriteProbe::start(&c.nodes);
    writer.wait_more(30, Duration::from_secs(30)).unwrap();

    let postmaster = c.nodes[p].postmaster_pid().unwrap();
    let mut frozen = vec![postmaster];
    frozen.extend(child_pids(postmaster));
    for pid in &frozen {
        signal(*pid, nix::sys::signal::Signal::SIGSTOP);
    }
    let new = wait_for("a new leader", Duration::from_secs(60), || {
        c.leader_index(etcd).filter(|&i| i != p)
    })
    .map_err(|e| format!("{e}\n{}", c.logs_tail()));
    // the agent answered all along: its loop never hung on the frozen server
    let answered = c.nodes[p].status().is_some();
    for pid in &frozen {
        signal(*pid, nix::sys::signal::Signal::SIGCONT);
    }
    let new = new.unwrap();
    assert!(answered, "the agent's REST API did not answer");
    assert!(
        c.nodes[p].log().contains("answered no query"),
        "{}",
        c.nodes[p].log()
    );
    writer
        .wait_more(30, Duration::from_secs(60))
        .map_err(|e| format!("{e}\n{}", c.logs_tail()))
        .unwrap();
    c.wait_healthy(HEALTHY)
        .map_err(|e| format!("{e}\n{}", c.logs_tail()))
        .unwrap();
    assert_eq!(c.leader_index(etcd), Some(new));
    probe.stop();
    let split = probe.split_ticks();
    assert!(
        split.is_empty(),
        "two writable primaries at ticks {split:?}"
    );
    drop(writer);
}

/// An absurd ttl written into the `config` key by another tool: every agent refuses the key by
/// name and keeps the last good configuration, so a lost leader is still replaced within the
/// old ttl and a few seconds; the REST API refuses the same value.
#[test]
fn an_absurd_ttl_in_the_config_key_is_refused_and_failover_timing_stays() {
    if !prerequisites() {
        return;
    }
    let spec = ClusterSpec {
        scope: "absurd".into(),
        ..Default::default()
    };
    let ttl = spec.ttl;
    let (mut lab, p) = Lab::healthy(spec).unwrap();
    let Lab {
        cluster: c, etcd, ..
    } = &mut lab;
    let (code, body) = http_request(
        "PATCH",
        &c.nodes[p].api("/config"),
        Some(r#"{"ttl": 18446744073709551615}"#),
    )
    .unwrap();
    assert!((400..500).contains(&code), "{code} {body}");
    let key = format!("/service/{}/config", c.spec.scope);
    let (_, raw, _) = etcd.get_prefix(&key).unwrap().remove(0);
    let mut config: Value = serde_json::from_str(&raw).unwrap();
    config["ttl"] = serde_json::json!(u64::MAX);
    etcd.put(&key, &config.to_string()).unwrap();
    wait_for(
        "every agent to refuse the config key",
        Duration::from_secs(30),
        || {
            c.nodes
                .iter()
                .all(|n| n.log().contains("the config key) is refused: ttl"))
                .then_some(())
        },
    )
    .map_err(|e| format!("{e}\n{}", c.logs_tail()))
    .unwrap();
    // the ttl in force is still the old one
    assert_eq!(
        c.nodes[p].status().unwrap()["pgpilot"]["ttl"],
        ttl,
        "{}",
        c.logs_tail()
    );
    let lost_at = Instant::now();
    c.kill_machine(p);
    let new = wait_for(
        "a new leader within the old ttl",
        Duration::from_secs(ttl + 20),
        || c.leader_index(etcd).filter(|&i| i != p),
    )
    .map_err(|e| format!("{e}\n{}", c.logs_tail()))
    .unwrap();
    eprintln!(
        "absurd ttl refused: new leader {} after {:.1}s (ttl {ttl})",
        c.nodes[new].name,
        lost_at.elapsed().as_secs_f64()
    );
}
