//! pgpilot against an etcd run the way production estates run it: clients over TLS, client
//! certificates required (`--client-cert-auth`), authentication enabled (a user with a
//! password), all from a private CA made by the test with openssl. The cluster bootstraps, the
//! console (batch and live) and real patronictl read it with the same YAML, patronictl switches
//! it over, the primary's agent SIGKILLed is
//! fenced and its lease revoked over TLS (a replica leads long before the ttl), and a wrong CA
//! is a clear error naming the key, not a hang.

use pgpilot_e2e::*;
use std::path::Path;
use std::time::{Duration, Instant};

const TTL: u64 = 30;

/// Adds the `root` user with a password and turns authentication on, over TLS with the
/// client certificate.
fn enable_auth(etcd: &Etcd, ca: &Path, cert: &Path, key: &Path) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let tls = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(std::fs::read(ca)?))
            .identity(etcd_client::Identity::from_pem(
                std::fs::read(cert)?,
                std::fs::read(key)?,
            ));
        let opts = etcd_client::ConnectOptions::new()
            .with_tls(tls)
            .with_timeout(Duration::from_secs(5));
        let mut client = etcd_client::Client::connect([etcd.url()], Some(opts)).await?;
        client.user_add("root", "root-secret", None).await?;
        client.user_grant_role("root", "root").await?;
        client.auth_enable().await?;
        anyhow::Ok(())
    })
}

fn etcd_yaml(ca: &Path, cert: &Path, key: &Path) -> String {
    format!(
        "  protocol: https\n  cacert: {}\n  cert: {}\n  key: {}\n  username: root\n  password: root-secret\n",
        ca.display(),
        cert.display(),
        key.display()
    )
}

#[test]
fn a_cluster_runs_on_an_etcd_with_tls_client_certificates_and_users() {
    if !prerequisites() || !need_program("openssl", "openssl") {
        return;
    }
    let work = Workdir::new("etcd-tls").unwrap();
    let ca = TestCa::new("etcd").unwrap();
    let (server_cert, server_key) = ca.issue("server", "etcd").unwrap();
    let (cert, key) = ca.issue("client", "").unwrap();
    let mut etcd = Etcd::new(&work.path);
    etcd.tls = Some(EtcdTls {
        ca: ca.ca(),
        cert: server_cert,
        key: server_key,
    });
    etcd.start().unwrap();
    enable_auth(&etcd, &ca.ca(), &cert, &key).unwrap();
    let spec = ClusterSpec {
        scope: "tlsetcd".into(),
        ttl: TTL,
        loop_wait: 2,
        retry_timeout: 3,
        etcd_yaml: etcd_yaml(&ca.ca(), &cert, &key),
        ..Default::default()
    };
    // Patroni's way: host:port endpoints and `protocol: https`
    let mut c = TestCluster::new(spec, &work.path, &etcd.endpoint()).unwrap();
    c.start_all().unwrap();
    let p = c
        .wait_healthy(Duration::from_secs(120))
        .map_err(|e| format!("{e}\n{}", c.logs_tail()))
        .unwrap();

    // the console reads the cluster with the same YAML, in batch and live mode
    let config = c.nodes[p].config_path.display().to_string();
    let (code, out, err) = console(&["-c", &config, "--batch", "list", "-f", "json"]).unwrap();
    assert_eq!(code, 0, "{out}{err}");
    for n in &c.nodes {
        assert!(out.contains(&n.name), "{out}");
    }
    if need_program("tmux", "tmux") {
        let tmux = Tmux::start(
            "tlscon",
            120,
            36,
            &format!(
                "TERM=xterm-256color {} -c {config}",
                bin_dir().join("pgpilot-console").display()
            ),
        )
        .unwrap();
        tmux.wait_for("tlsetcd", Duration::from_secs(30)).unwrap();
        tmux.keys(&["Enter"]);
        let screen = tmux.wait_for("Members", Duration::from_secs(20)).unwrap();
        for n in &c.nodes {
            assert!(screen.contains(&n.name), "{screen}");
        }
    }
    // real patronictl with the same YAML lists the cluster and switches it over
    let p = if let Some(ctl) = patronictl_or_skip("patronictl over etcd TLS") {
        let ctl_run = |args: &[&str]| patronictl_run(&ctl, std::path::Path::new(&config), args);
        let (ok, text) = ctl_run(&["list"]);
        assert!(
            ok && c.nodes.iter().all(|n| text.contains(&n.name)),
            "{text}"
        );
        let cand = (p + 1) % 3;
        let (ok, text) = ctl_run(&[
            "switchover",
            "tlsetcd",
            "--leader",
            &c.nodes[p].name,
            "--candidate",
            &c.nodes[cand].name,
            "--force",
        ]);
        assert!(ok && text.contains("Successfully switched over"), "{text}");
        c.wait_healthy(Duration::from_secs(120))
            .map_err(|e| format!("{e}\n{}", c.logs_tail()))
            .unwrap()
    } else {
        p
    };

    // the primary's agent SIGKILLed: its guard stops PostgreSQL and revokes the lease over
    // TLS with the same certificate and user, so a replica leads long before the ttl
    let mut agent = c.nodes[p].agent.take().unwrap();
    let killed = Instant::now();
    agent.signal(nix::sys::signal::Signal::SIGKILL);
    let _ = agent.stop(Duration::from_secs(5));
    let new = wait_for(
        "a replica to lead before the lease could have expired",
        Duration::from_secs(TTL - 10),
        || c.primary().filter(|&i| i != p),
    )
    .map_err(|e| format!("{e}\n{}", c.logs_tail()))
    .unwrap();
    eprintln!(
        "new leader {} {:.1}s after the kill (ttl {TTL})",
        c.nodes[new].name,
        killed.elapsed().as_secs_f64()
    );
    assert!(
        c.nodes[p].log().contains("revoked the agent's etcd lease"),
        "{}",
        c.nodes[p].log()
    );
    c.start_agent(p).unwrap();
    c.wait_healthy(Duration::from_secs(120))
        .map_err(|e| format!("{e}\n{}", c.logs_tail()))
        .unwrap();

    // a reload to a renewed client certificate moves the agent's connection to it (proved by a
    // switchover to that member afterwards); a reload to another CA's files or to an address
    // where no etcd answers is refused by name and the running connection stays
    let other = TestCa::new("wrong").unwrap();
    let (wrong_cert, wrong_key) = other.issue("client", "").unwrap();
    let leader = c.primary().unwrap();
    let r = (leader + 1) % 3;
    let (renewed_cert, renewed_key) = ca.issue("client-renewed", "").unwrap();
    let yaml = std::fs::read_to_string(&c.nodes[r].config_path).unwrap();
    let with = |new_ca: &Path, new_cert: &Path, new_key: &Path, hosts: &str| {
        let y = yaml.replace(
            &etcd_yaml(&ca.ca(), &cert, &key),
            &etcd_yaml(new_ca, new_cert, new_key),
        );
        y.replace(
            &format!("hosts: {}", etcd.endpoint()),
            &format!("hosts: {hosts}"),
        )
    };
    assert!(yaml.contains(&etcd_yaml(&ca.ca(), &cert, &key)), "{yaml}");
    let reload = |text: String| {
        std::fs::write(&c.nodes[r].config_path, text).unwrap();
        http_post(&c.nodes[r].api("/reload"), "").unwrap()
    };
    let (code, body) = reload(with(
        &ca.ca(),
        &renewed_cert,
        &renewed_key,
        &etcd.endpoint(),
    ));
    assert_eq!(code, 202, "{body}\n{}", c.logs_tail());
    assert!(
        c.nodes[r]
            .log()
            .contains("etcd reached with the new settings"),
        "{}\n{}",
        c.nodes[r].log(),
        std::fs::read_to_string(&c.nodes[r].config_path).unwrap()
    );
    for (text, what) in [
        (
            with(&other.ca(), &wrong_cert, &wrong_key, &etcd.endpoint()),
            "another CA",
        ),
        (
            with(
                &ca.ca(),
                &renewed_cert,
                &renewed_key,
                &format!("127.0.0.1:{}", free_port()),
            ),
            "no etcd at that address",
        ),
    ] {
        let (code, body) = reload(text);
        assert_eq!(code, 400, "{what}: {body}");
        assert!(body.contains("etcd3"), "{what}: {body}");
    }
    // another etcd cluster that the same files and user reach (a restored copy, a test
    // cluster): refused, its empty store is never taken for this cluster's
    let other_dir = work.path.join("other-etcd");
    std::fs::create_dir_all(&other_dir).unwrap();
    let mut other_etcd = Etcd::new(&other_dir);
    other_etcd.tls = etcd.tls.clone();
    other_etcd.start().unwrap();
    enable_auth(&other_etcd, &ca.ca(), &cert, &key).unwrap();
    let (code, body) = reload(with(
        &ca.ca(),
        &renewed_cert,
        &renewed_key,
        &other_etcd.endpoint(),
    ));
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("another etcd cluster"), "{body}");
    other_etcd.stop();
    // the renewed certificate's connection carries the switchover to that member
    std::fs::write(
        &c.nodes[r].config_path,
        with(&ca.ca(), &renewed_cert, &renewed_key, &etcd.endpoint()),
    )
    .unwrap();
    let (code, body) = http_call(
        "POST",
        &c.nodes[leader].api("/switchover"),
        Some(
            &serde_json::json!({"leader": c.nodes[leader].name, "candidate": c.nodes[r].name})
                .to_string(),
        ),
        None,
        Duration::from_secs(120),
    )
    .unwrap();
    assert_eq!(code, 200, "{body}\n{}", c.logs_tail());
    c.wait_healthy(Duration::from_secs(120))
        .map_err(|e| format!("{e}\n{}", c.logs_tail()))
        .unwrap();
    assert_eq!(c.primary(), Some(r));

    // a wrong CA: the agent says which keys to check and exits, it does not hang
    let spec = ClusterSpec {
        scope: "tlswrong".into(),
        nodes: 1,
        etcd_yaml: etcd_yaml(&other.ca(), &wrong_cert, &wrong_key),
        ..Default::default()
    };
    let wrong_dir = work.path.join("wrong");
    std::fs::create_dir_all(&wrong_dir).unwrap();
    chown_postgres(&wrong_dir).unwrap();
    let mut w = TestCluster::new(spec, &wrong_dir, &etcd.endpoint()).unwrap();
    w.start_agent(0).unwrap();
    let status = w.nodes[0]
        .wait_agent_exit(Duration::from_secs(60))
        .map_err(|e| format!("{e}\n{}", w.logs_tail()))
        .unwrap();
    assert!(!status.success());
    let log = w.nodes[0].log();
    assert!(log.contains("etcd3.cacert"), "{log}");
    w.shutdown();
    c.shutdown();
}
