//! The demo, as a new user runs it: `demo up --no-console` reaches a healthy cluster, HAProxy
//! sends writes to the leader before and after a switchover, every failure switch breaks what
//! it says and the cluster heals when it is switched back, and `demo down --wipe` leaves no
//! process, port, namespace or file behind.

use pgpilot_e2e::demo::{State, alive};
use pgpilot_e2e::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(120);

fn demo(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin_dir().join("demo"))
        .arg("--dir")
        .arg(dir)
        .args(args)
        .output()
        .expect("run demo (cargo build first)");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A demo directory of this test process, stopped and wiped whatever happens to the test.
fn demo_dir(tag: &str) -> (PathBuf, Down) {
    let dir = PathBuf::from(format!("/var/tmp/pgpilot-{tag}-{}", std::process::id()));
    (dir.clone(), Down(dir))
}

/// Stops the demo whatever happens to the test.
struct Down(PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        if self.0.join("demo.json").exists() {
            let _ = demo(&self.0, &["down", "--wipe"]);
        }
    }
}

fn healthy(dir: &Path) -> (State, usize) {
    let state = State::load(dir).unwrap();
    let p = wait_for("a primary and two streaming replicas", LONG, || {
        state.healthy()
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n{}",
            pgpilot_e2e::demo::status(dir).unwrap_or_default()
        )
    });
    (State::load(dir).unwrap(), p)
}

fn leader(dir: &Path) -> Option<String> {
    let state = State::load(dir).ok()?;
    let etcd = Etcd::at(
        dir,
        &state.etcd.host,
        state.etcd.client_port,
        state.etcd.peer_port,
    );
    etcd.leader(&state.scope).map(|(name, _)| name)
}

/// Waits until node `i` runs a postmaster other than the crashed `before`.
fn wait_restarted(state: &State, i: usize, before: i32) {
    wait_for("the crashed postmaster to be restarted", LONG, || {
        state
            .node_view(i)
            .postmaster_pid()
            .filter(|pid| *pid != before && alive(*pid))
    })
    .unwrap();
}

/// Port of the server a write through HAProxy lands on (and it is writable).
fn write_lands_on(port: u16) -> Option<String> {
    let dsn = Haproxy::dsn(port);
    sql_dsn(&dsn, "CREATE TABLE IF NOT EXISTS through_haproxy(x int)").ok()?;
    sql_dsn(&dsn, "INSERT INTO through_haproxy VALUES (1)").ok()?;
    sql_dsn(&dsn, "SELECT current_setting('port')").ok()?.pop()
}

#[test]
fn the_demo_starts_breaks_heals_and_leaves_nothing_behind() {
    if !prerequisites() {
        return;
    }
    let (dir, _down) = demo_dir("demotest");
    let (code, out, err) = demo(&dir, &["up", "--no-console"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("healthy after"), "{out}");
    assert!(
        out.contains("creating replica") || out.contains("streaming"),
        "progress shown: {out}"
    );
    let (state, p) = healthy(&dir);
    let etcd = state.etcd_endpoint();
    // a second `up` on a running demo is refused and changes nothing
    let (code, _, err) = demo(&dir, &["up", "--no-console"]);
    assert_eq!(code, 1);
    assert!(err.contains("already runs"), "{err}");

    // HAProxy: writes reach the leader, before and after a switchover
    if let Some(h) = &state.haproxy {
        let port = wait_for("writes through HAProxy", LONG, || {
            write_lands_on(h.write_port)
        })
        .unwrap();
        assert_eq!(port, state.nodes[p].pg_port.to_string());
        let (code, out, err) =
            console(&["--etcd", &etcd, "--batch", "switchover", "demo", "--force"]).unwrap();
        assert_eq!(code, 0, "{out}{err}");
        let (_, q) = healthy(&dir);
        assert_ne!(q, p);
        let port = wait_for("writes through HAProxy to the new leader", LONG, || {
            write_lands_on(h.write_port).filter(|port| *port == state.nodes[q].pg_port.to_string())
        });
        assert!(
            port.is_ok(),
            "HAProxy did not follow the switchover to {}",
            state.nodes[q].name
        );
    } else {
        assert!(
            !have_program("haproxy"),
            "HAProxy installed but not started"
        );
        skip(
            "haproxy is not installed, so the demo's HAProxy checks were skipped (apt-get install haproxy, or tests/run.sh)",
        );
    }

    // cut the leader: another member takes over; restore: it rejoins
    let (_, p) = healthy(&dir);
    let old = state.nodes[p].name.clone();
    let (code, out, err) = demo(&dir, &["cut", &old]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("SIGKILLed"), "{out}");
    assert!(State::load(&dir).unwrap().nodes[p].cut);
    let new = wait_for("a new leader after the cut", LONG, || {
        leader(&dir).filter(|l| *l != old)
    })
    .unwrap();
    let (code, _, err) = demo(&dir, &["cut", &old]);
    assert_eq!(code, 1, "cutting twice is refused");
    assert!(err.contains("already cut"), "{err}");
    let (code, _, err) = demo(&dir, &["restore", &old]);
    assert_eq!(code, 0, "{err}");
    let (_, q) = healthy(&dir);
    assert_eq!(state.nodes[q].name, new);

    // crash a postmaster: its agent starts it again
    let victim = (q + 1) % 3;
    let before = state.node_view(victim).postmaster_pid().unwrap();
    let (code, out, err) = demo(&dir, &["crash", &state.nodes[victim].name]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("crashed"), "{out}");
    wait_restarted(&state, victim, before);
    healthy(&dir);

    // isolate the leader (namespaces) or be told why not (loopback)
    let (_, p) = healthy(&dir);
    let name = state.nodes[p].name.clone();
    let (code, out, err) = demo(&dir, &["isolate", &name]);
    if state.net.is_some() {
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("isolated"), "{out}");
        wait_for("another leader while it is isolated", LONG, || {
            leader(&dir).filter(|l| *l != name)
        })
        .unwrap();
        // the isolated old primary stopped taking writes
        wait_for("the isolated node to stop being primary", LONG, || {
            state
                .node_view(p)
                .status()
                .filter(|s| s["role"] != "primary")
        })
        .unwrap();
        let (code, _, err) = demo(&dir, &["heal", &name]);
        assert_eq!(code, 0, "{err}");
        healthy(&dir);
    } else {
        assert_eq!(code, 1);
        assert!(err.contains("network namespaces"), "{err}");
    }

    // stop etcd: the console says so (exit 1), nobody runs as primary; start it: healed
    let (code, out, err) = demo(&dir, &["etcd", "stop"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("stopped etcd"), "{out}");
    let (code, _, err) = console(&["--etcd", &etcd, "--batch", "list"]).unwrap();
    assert_eq!(code, 1, "{err}");
    wait_for("the primary to go read-only without etcd", LONG, || {
        State::load(&dir).unwrap().primary().is_none().then_some(())
    })
    .unwrap();
    let (code, _, err) = demo(&dir, &["etcd", "start"]);
    assert_eq!(code, 0, "{err}");
    healthy(&dir);
    let status = demo(&dir, &["status"]).1;
    assert!(status.contains("running (pid"), "{status}");
    let (code, out, _) = demo(&dir, &["status", "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["etcd"]["running"], true, "{v:#}");
    let roles: Vec<&str> = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["role"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        roles.iter().filter(|r| **r == "primary").count(),
        1,
        "{v:#}"
    );
    assert_eq!(
        roles.iter().filter(|r| **r == "replica").count(),
        2,
        "{v:#}"
    );

    // down --wipe: nothing left
    let state = State::load(&dir).unwrap();
    let pids: Vec<i32> = state
        .nodes
        .iter()
        .filter_map(|n| n.agent_pid)
        .chain(state.etcd.pid)
        .chain(state.haproxy.as_ref().and_then(|h| h.pid))
        .chain((0..3).filter_map(|i| state.node_view(i).postmaster_pid()))
        .collect();
    assert!(pids.len() >= 7, "{pids:?}");
    let (code, out, err) = demo(&dir, &["down", "--wipe"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("nothing left running"), "{out}");
    for pid in pids {
        assert!(!alive(pid), "pid {pid} is still running");
    }
    let mut ports = vec![
        (state.etcd.host.clone(), state.etcd.client_port),
        (state.etcd.host.clone(), state.etcd.peer_port),
    ];
    for n in &state.nodes {
        ports.push((n.host.clone(), n.pg_port));
        ports.push((n.host.clone(), n.api_port));
    }
    if let Some(h) = &state.haproxy {
        for port in [h.write_port, h.read_port, h.stats_port] {
            ports.push((h.bind.clone(), port));
        }
    }
    for (host, port) in ports {
        assert!(
            std::net::TcpStream::connect_timeout(
                &format!("{host}:{port}").parse().unwrap(),
                Duration::from_millis(300)
            )
            .is_err(),
            "{host}:{port} still answers"
        );
    }
    assert!(!dir.exists(), "the directory is wiped");
    if let Some(net) = &state.net {
        assert!(
            !Path::new(&format!("/sys/class/net/{}br", net.tag)).exists(),
            "the bridge is gone"
        );
    }
    // and a demo that is not there is reported as such
    let (code, _, err) = demo(&dir, &["status"]);
    assert_eq!(code, 1);
    assert!(err.contains("no demo in"), "{err}");
}

#[test]
fn on_loopback_isolation_is_refused_with_the_way_out() {
    if !prerequisites() {
        return;
    }
    let (dir, _down) = demo_dir("demolo");
    let (code, out, err) = demo(&dir, &["up", "--no-console", "--no-netns", "--no-haproxy"]);
    assert_eq!(code, 0, "{out}{err}");
    let state = State::load(&dir).unwrap();
    assert!(state.net.is_none() && state.haproxy.is_none());
    assert!(state.nodes.iter().all(|n| n.host == "127.0.0.1"));
    let (code, _, err) = demo(&dir, &["isolate", "node1"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("network namespaces") && err.contains("as root"),
        "{err}"
    );
    assert!(
        !State::load(&dir).unwrap().nodes[0].isolated,
        "nothing changed"
    );
    // `down` without --wipe keeps the data; `up` starts the same cluster again
    let (code, out, err) = demo(&dir, &["down"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(dir.join("demo-node1/data/PG_VERSION").exists());
    let (code, out, err) = demo(&dir, &["up", "--no-console"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("again"), "{out}");
    healthy(&dir);
    let (code, out, err) = demo(&dir, &["down", "--wipe"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!dir.exists());
}

#[test]
fn the_interactive_demo_opens_the_console_switches_from_it_and_asks_before_stopping() {
    if !prerequisites() || !need_program("tmux", "tmux") {
        return;
    }
    let (dir, _down) = demo_dir("demotty");
    let command = format!(
        "{} --dir {} up --no-haproxy --no-netns; echo demo-exited-$?; sleep 60",
        bin_dir().join("demo").display(),
        dir.display()
    );
    let tty = Tmux::start("demotty", 120, 32, &command).unwrap();
    // the console opens on the healthy cluster, with the demo's switches
    tty.wait_for("demo: C K N E", LONG).unwrap();
    tty.wait_for("3/3", LONG).unwrap();
    let state = State::load(&dir).unwrap();
    let (_, p) = healthy(&dir);
    let replica = (p + 1) % 3;
    let before = state.node_view(replica).postmaster_pid().unwrap();
    // crash a replica's postmaster from the console: a dialog, then the demo program runs
    tty.keys(&["Enter"]);
    tty.wait_for("Members", LONG).unwrap();
    tty.keys(&[":"]);
    tty.keys(&["-l", &format!("crash {}", state.nodes[replica].name)]);
    tty.keys(&["Enter"]);
    tty.wait_for(" do it", LONG).unwrap();
    tty.keys(&["y"]);
    tty.wait_for("crashed", LONG).unwrap();
    wait_restarted(&state, replica, before);
    // cut the leader from the console: once its key expired it stays listed as gone, and
    // `:restore` on it brings it back
    let old = state.nodes[p].name.clone();
    tty.keys(&[":"]);
    tty.keys(&["-l", &format!("cut {old}")]);
    tty.keys(&["Enter"]);
    tty.wait_for(" do it", LONG).unwrap();
    tty.keys(&["y"]);
    wait_for("a new leader after the cut", LONG, || {
        leader(&dir).filter(|l| *l != old)
    })
    .unwrap();
    wait_for("the cut member listed as gone", LONG, || {
        let screen = tty.screen();
        screen
            .lines()
            .any(|l| l.contains(old.as_str()) && l.contains("gone "))
            .then_some(())
    })
    .unwrap();
    tty.keys(&[":"]);
    tty.keys(&["-l", &format!("restore {old}")]);
    tty.keys(&["Enter"]);
    tty.wait_for(" do it", LONG).unwrap();
    tty.keys(&["y"]);
    tty.wait_for(&format!("restored {old}"), LONG).unwrap();
    healthy(&dir);
    wait_for("the restored member listed as streaming", LONG, || {
        tty.screen()
            .lines()
            .any(|l| l.contains(old.as_str()) && l.contains("streaming"))
            .then_some(())
    })
    .unwrap();
    // quitting asks; yes stops everything
    tty.keys(&["q"]);
    tty.wait_for("stop the demo cluster?", LONG).unwrap();
    tty.keys(&["y", "Enter"]);
    let screen = tty.wait_for("demo-exited-", LONG).unwrap();
    assert!(screen.contains("nothing left running"), "{screen}");
    assert!(screen.contains("demo-exited-0"), "{screen}");
    let state = State::load(&dir).unwrap();
    assert!(!state.anything_running(), "{screen}");
}
