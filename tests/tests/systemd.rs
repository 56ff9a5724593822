//! The agent under systemd's service protocol (`Type=notify`), with a notification socket of
//! our own standing in for systemd: READY only once the REST API answers and the first HA cycle
//! ran, keepalives while the loop turns, STOPPING at SIGTERM, PostgreSQL not inheriting the
//! socket; and the shipped unit file passes `systemd-analyze verify`.

use pgpilot_e2e::*;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

#[test]
fn the_agent_speaks_systemds_notify_protocol() {
    if !prerequisites() {
        return;
    }
    let sockdir = tempfile::tempdir_in("/var/tmp").unwrap();
    std::fs::set_permissions(sockdir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = sockdir.path().join("notify");
    let server = UnixDatagram::bind(&path).unwrap();
    // the agent runs as postgres when we are root
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let spec = ClusterSpec {
        scope: "systemd".into(),
        nodes: 1,
        env: vec![
            ("NOTIFY_SOCKET".into(), path.display().to_string()),
            ("WATCHDOG_USEC".into(), "1000000".into()),
        ],
        ..Default::default()
    };
    let mut lab = Lab::new("systemd", spec, true).unwrap();
    lab.cluster.start_all().unwrap();
    let mut messages = Vec::new();
    let mut next = || {
        let mut buf = [0u8; 1024];
        let n = server.recv(&mut buf).expect("a notification within 120 s");
        let m = String::from_utf8_lossy(&buf[..n]).to_string();
        messages.push(m.clone());
        m
    };
    // nothing before READY: no keepalive or status can come first
    let first = next();
    assert!(first.starts_with("READY=1\nSTATUS="), "{first:?}");
    // READY means the API answers and the node has decided on a role
    let (code, body) = lab.cluster.nodes[0].get("/patroni").unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(
        first.len() > "READY=1\nSTATUS=\n".len(),
        "a status is given"
    );
    let mut keepalives = 0;
    while keepalives < 3 {
        let m = next();
        assert!(!m.contains("READY=1"), "READY is sent once: {m:?}");
        if m == "WATCHDOG=1\n" {
            keepalives += 1;
        }
    }
    lab.cluster.wait_healthy(Duration::from_secs(120)).unwrap();
    // the postmaster did not inherit the socket (Debian builds PostgreSQL with sd_notify)
    let pm = lab.cluster.nodes[0]
        .postmaster_pid()
        .expect("postmaster.pid");
    let environ = std::fs::read(format!("/proc/{pm}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(!environ.contains("NOTIFY_SOCKET"), "{environ}");
    assert!(!environ.contains("WATCHDOG_USEC"), "{environ}");
    // SIGTERM: STOPPING, then a clean exit with PostgreSQL stopped
    lab.cluster.nodes[0]
        .agent
        .as_ref()
        .unwrap()
        .signal(nix::sys::signal::Signal::SIGTERM);
    loop {
        let m = next();
        if m.starts_with("STOPPING=1") {
            break;
        }
    }
    let status = lab.cluster.nodes[0]
        .wait_agent_exit(Duration::from_secs(90))
        .unwrap();
    assert!(status.success(), "{status:?}\n{}", lab.cluster.logs_tail());
    assert!(
        !std::path::Path::new(&format!("/proc/{pm}")).exists(),
        "PostgreSQL stopped with the agent"
    );
}

#[test]
fn the_unit_file_is_valid() {
    let Ok(out) = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
    else {
        skip("systemd-analyze is not installed (apt-get install systemd)");
        return;
    };
    assert!(out.status.success());
    let unit = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../agent/debian/pgpilot-agent.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    for line in [
        "Type=notify",
        "WatchdogSec=",
        "KillMode=process",
        "Restart=on-failure",
        "RestartPreventExitStatus=2",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(text.lines().any(|l| l.starts_with(line)), "{line} missing");
    }
    // verify against the binary just built (the unit names its installed path)
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("pgpilot-agent.service");
    std::fs::write(
        &copy,
        text.replace("/usr/bin/pgpilot-agent", &agent_bin().display().to_string()),
    )
    .unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // only complaints about this unit count (the host's own units may be incomplete)
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("pgpilot-agent.service"))
        // the manual page it names is installed by the package (tests/tests/package.rs
        // verifies the installed unit with it), not by a build
        .filter(|l| !l.contains("Command 'man pgpilot-agent(1)'"))
        .collect();
    assert!(ours.is_empty(), "{stderr}");
}
