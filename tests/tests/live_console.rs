//! End-to-end: the live console in tmux against a real 3-node cluster. It shows the cluster,
//! pauses it and switches it over after confirmations (checked on the screen and in etcd), and
//! notices a lost node within seconds.

use pgpilot_e2e::*;
use std::time::{Duration, Instant};

/// A healthy 3-member cluster `scope` (its lab `e2e-SCOPE`), its primary, and the command
/// line of a live console on it; `None` (the test skipped, or failed under CI) when a
/// prerequisite or tmux is missing.
fn healthy_cluster_and_console(scope: &str) -> Option<(Lab, usize, String)> {
    if !prerequisites() || !need_program("tmux", "tmux") {
        return None;
    }
    let spec = ClusterSpec {
        scope: scope.into(),
        ..Default::default()
    };
    let mut lab = Lab::new(&format!("e2e-{scope}"), spec, true).unwrap();
    lab.cluster.start_all().unwrap();
    let p = lab.cluster.wait_healthy(Duration::from_secs(120)).unwrap();
    let command = format!(
        "TERM=xterm-256color {} --etcd {}",
        bin_dir().join("pgpilot-console").display(),
        lab.etcd.endpoint()
    );
    Some((lab, p, command))
}

#[test]
fn live_console_follows_the_cluster_pauses_and_switches_it_over() {
    let Some((mut lab, p, command)) = healthy_cluster_and_console("livecon") else {
        return;
    };
    let Lab {
        cluster: c, etcd, ..
    } = &mut lab;
    let tmux = Tmux::start("livecon", 120, 36, &command).unwrap();
    tmux.wait_for("livecon", Duration::from_secs(20)).unwrap();
    tmux.wait_for("healthy", Duration::from_secs(20)).unwrap();
    // open the cluster: three members, the leader among them
    tmux.keys(&["Enter"]);
    let screen = tmux.wait_for("Members", Duration::from_secs(10)).unwrap();
    for n in &c.nodes {
        assert!(screen.contains(&n.name), "{screen}");
    }
    tmux.wait_for("failover ready", Duration::from_secs(20))
        .unwrap();

    // pause from the keyboard: a confirmation first, then etcd and the screen agree
    tmux.keys(&["p"]);
    tmux.wait_for("Pause cluster livecon", Duration::from_secs(5))
        .unwrap();
    tmux.keys(&["y"]);
    wait_for("pause in etcd", Duration::from_secs(10), || {
        etcd.get_prefix("/service/livecon/config")
            .ok()?
            .first()
            .filter(|(_, v, _)| v.contains("\"pause\":true"))
            .map(|_| ())
    })
    .unwrap();
    tmux.wait_for("PAUSED", Duration::from_secs(5)).unwrap();
    // a change made elsewhere shows up at once (the etcd watch)
    let t = Instant::now();
    let (_, raw, _) = etcd
        .get_prefix("/service/livecon/config")
        .unwrap()
        .remove(0);
    etcd.put(
        "/service/livecon/config",
        &raw.replace("\"pause\":true", "\"pause\":false"),
    )
    .unwrap();
    // poll the screen tightly to time the change (measured, not asserted)
    let deadline = t + Duration::from_secs(5);
    while tmux.screen().contains("PAUSED") {
        assert!(
            Instant::now() < deadline,
            "the resume never showed:\n{}",
            tmux.screen()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!("etcd change → screen: {:?}", t.elapsed());

    // a switchover from the keyboard: select a replica, confirm, and the new leader shows on
    // the screen and in etcd (the members tab lists the leader first, then replicas by name)
    let leader = c.nodes[p].name.clone();
    let candidate = c
        .nodes
        .iter()
        .map(|n| n.name.clone())
        .filter(|n| *n != leader)
        .min()
        .unwrap();
    tmux.keys(&["j", "s"]);
    // the dialog names both members (its text wraps: compare without line breaks and borders)
    tmux.wait_for("Switch over cluster", Duration::from_secs(5))
        .unwrap();
    let words: String = tmux
        .screen()
        .replace(['│', '┌', '┐', '└', '┘', '─'], " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        words.contains(&format!("from {leader} to {candidate} now")),
        "{words}"
    );
    tmux.keys(&["y"]);
    tmux.wait_for("Successfully switched over", Duration::from_secs(60))
        .unwrap();
    assert_eq!(
        etcd.leader("livecon").map(|(n, _)| n).as_deref(),
        Some(candidate.as_str())
    );
    wait_for("the new leader on screen", Duration::from_secs(10), || {
        tmux.screen()
            .lines()
            .any(|l| l.contains(&candidate) && l.contains("leader"))
            .then_some(())
    })
    .map_err(|e| format!("{e}\n{}", tmux.screen()))
    .unwrap();

    // a node is lost: the screen shows it within seconds
    let lost = c.nodes[(p + 1) % 3].name.clone();
    c.kill_machine((p + 1) % 3);
    let screen = tmux.wait_for("REST down", Duration::from_secs(15)).unwrap();
    assert!(screen.contains(&lost), "{screen}");
    tmux.keys(&["q"]);
    wait_for("the console to quit", Duration::from_secs(5), || {
        (!tmux.screen().contains("pgpilot console")).then_some(())
    })
    .unwrap();
    c.shutdown();
}

/// After an incident: the primary's machine is cut; the console that watched keeps it listed
/// as gone once its member key expired; a second console opened after the failover tells the
/// story from the agents' journals and the history key (old and new leader); the batch console
/// reaches etcd the way patronictl does (`-d etcd3://…`) and prints the same journal.
#[test]
fn a_console_opened_after_a_failover_tells_it_and_keeps_the_lost_member() {
    let Some((mut lab, p, command)) = healthy_cluster_and_console("incident") else {
        return;
    };
    let Lab {
        cluster: c, etcd, ..
    } = &mut lab;
    let old = c.nodes[p].name.clone();
    let console = bin_dir().join("pgpilot-console");
    let watching = Tmux::start("incident-a", 120, 36, &command).unwrap();
    watching
        .wait_for("incident", Duration::from_secs(20))
        .unwrap();
    watching.keys(&["Enter"]);
    watching
        .wait_for("Members", Duration::from_secs(10))
        .unwrap();

    // the primary's machine is cut: a replica takes over, the old leader's key expires
    c.kill_machine(p);
    let new = wait_for("a new leader", Duration::from_secs(90), || {
        etcd.leader("incident")
            .map(|(n, _)| n)
            .filter(|n| *n != old)
    })
    .map_err(|e| format!("{e}\n{}", c.logs_tail()))
    .unwrap();
    wait_for(
        "the old leader's key to expire",
        Duration::from_secs(90),
        || {
            etcd.get_prefix(&format!("/service/incident/members/{old}"))
                .ok()?
                .is_empty()
                .then_some(())
        },
    )
    .unwrap();
    // still listed, as gone
    wait_for(
        "the lost member listed as gone",
        Duration::from_secs(15),
        || {
            watching
                .screen()
                .lines()
                .any(|l| l.contains(&old) && l.contains("gone"))
                .then_some(())
        },
    )
    .map_err(|e| format!("{e}\n{}", watching.screen()))
    .unwrap();

    // a console opened now: its Events tab tells what happened
    let late = Tmux::start("incident-b", 160, 40, &command).unwrap();
    late.wait_for("incident", Duration::from_secs(20)).unwrap();
    late.keys(&["Enter", "4"]);
    late.wait_for("Journal", Duration::from_secs(10)).unwrap();
    late.wait_for(&format!("{new} leads timeline"), Duration::from_secs(20))
        .map_err(|e| format!("{e}\n{}", late.screen()))
        .unwrap();
    wait_for("the new leader's journal", Duration::from_secs(20), || {
        late.screen()
            .lines()
            .any(|l| l.contains(&new) && l.contains("promoting"))
            .then_some(())
    })
    .map_err(|e| format!("{e}\n{}", late.screen()))
    .unwrap();
    late.keys(&["q"]);
    watching.keys(&["q"]);

    // the batch console without a configuration file, as patronictl -d
    let url = format!("etcd3://{}", etcd.endpoint());
    let out = std::process::Command::new(&console)
        .args(["-d", &url, "--batch", "list", "incident"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(&new), "{text}");
    let out = std::process::Command::new(&console)
        .args(["-d", &url, "--batch", "events", "incident", "-f", "json"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events: serde_json::Value = serde_json::from_str(&text).unwrap();
    let lines: Vec<String> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| format!("{} {}", e["Member"], e["Event"]))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&new) && l.contains("promoting")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("(history)") && l.contains(&format!("{new} leads"))),
        "{lines:?}"
    );
    // a store pgpilot does not speak is refused by name, exit 2
    let out = std::process::Command::new(&console)
        .args(["-d", "consul://127.0.0.1:8500", "--batch", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("consul"));
    c.shutdown();
}
