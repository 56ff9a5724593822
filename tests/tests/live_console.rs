//! End-to-end: the live console in tmux against a real 3-node cluster. It shows the cluster,
//! pauses it and switches it over after confirmations (checked on the screen and in etcd), and
//! notices a lost node within seconds.

use pgpilot_e2e::*;
use std::time::{Duration, Instant};

#[test]
fn live_console_follows_the_cluster_pauses_and_switches_it_over() {
    if !prerequisites() {
        return;
    }
    if !need_program("tmux", "tmux") {
        return;
    }
    let spec = ClusterSpec {
        scope: "livecon".into(),
        ..Default::default()
    };
    let mut lab = Lab::new("e2e-livecon", spec, true).unwrap();
    let Lab {
        cluster: c, etcd, ..
    } = &mut lab;
    c.start_all().unwrap();
    let p = c.wait_healthy(Duration::from_secs(120)).unwrap();
    let console = bin_dir().join("console");
    let tmux = Tmux::start(
        "livecon",
        120,
        36,
        &format!(
            "TERM=xterm-256color {} --etcd {}",
            console.display(),
            etcd.endpoint()
        ),
    )
    .unwrap();
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
