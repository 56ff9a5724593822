//! End-to-end `raft:` clusters (seed 004, "Patroni on pure Raft"): agents whose YAML has a
//! `raft:` section and no etcd section, each running its own etcd member, with no etcd started
//! by anyone else. Bootstrap, machine loss and return, loss of two members (no writable
//! primary), a member whose raft data was wiped (admitted again through the quorum), two
//! database members plus a witness, and the console reading the cluster from a member's YAML.

use pgpilot_e2e::raft::RaftLab;
use pgpilot_e2e::*;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(180);

/// A raft lab of `nodes` database members (and a witness when asked), every raft section with
/// `password` when one is given.
fn raft_lab(scope: &str, nodes: usize, witness: bool, password: Option<&str>) -> RaftLab {
    let spec = ClusterSpec {
        scope: scope.into(),
        nodes,
        ..Default::default()
    };
    RaftLab::with_password(&format!("e2e-{scope}"), spec, witness, password).unwrap()
}

/// Member `i`'s `pgpilot.raft` health from its `/patroni`.
fn raft_health(c: &TestCluster, i: usize) -> Option<serde_json::Value> {
    Some(c.nodes[i].status()?["pgpilot"]["raft"].clone())
}

/// A replica's machine lost and its raft data wiped, then started again: waits until the
/// cluster is healthy and the member is back in a group of three; returns its index.
fn wipe_a_replica_and_wait_for_it(c: &mut TestCluster) -> usize {
    let r = (0..3).find(|i| Some(*i) != c.primary()).unwrap();
    c.kill_machine(r);
    let raft_dir = c.nodes[r].config_path.parent().unwrap().join("raft");
    std::fs::remove_dir_all(&raft_dir).unwrap();
    c.start_agent(r).unwrap();
    c.wait_healthy(LONG).unwrap();
    wait_for("the wiped member back in a group of three", LONG, || {
        raft_health(c, r)
            .filter(|h| h["running"] == true && h["reachable"] == 3 && h["members"] == 3)
    })
    .unwrap();
    r
}

#[test]
fn three_agents_form_their_own_consensus_fail_over_and_readmit_a_wiped_member() {
    if !prerequisites() {
        return;
    }
    let mut rl = raft_lab("raft3", 3, false, None);
    rl.lab.cluster.start_all().unwrap();
    let p = rl.lab.cluster.wait_healthy(LONG).unwrap();
    let c = &rl.lab.cluster;
    // every member runs its etcd member and sees a group of three with a leader
    for i in 0..3 {
        let h = wait_for("the raft member's health", LONG, || {
            raft_health(c, i).filter(|h| h["reachable"] == 3 && h["leader"].is_string())
        })
        .unwrap();
        assert_eq!(h["running"], true, "{h}");
        assert_eq!(h["members"], 3, "{h}");
    }
    let (_, metrics) = c.nodes[p].get("/metrics").unwrap();
    assert!(
        metrics.contains("pgpilot_raft_has_leader{")
            && metrics.contains("pgpilot_raft_member_running{"),
        "{metrics}"
    );
    // the keys are Patroni's, in the member's own etcd
    assert_eq!(rl.leader().as_deref(), Some(c.nodes[p].name.as_str()));
    // clients stay on loopback: nothing listens on the client port but 127.0.0.1
    let listening = std::fs::read_to_string("/proc/net/tcp").unwrap();
    assert!(
        !listening.contains(&format!("00000000:{:04X}", rl.clients[0])),
        "the client port listens on every address"
    );
    // the console reads the cluster from a member's YAML
    let cfg = c.nodes[0].config_path.to_str().unwrap().to_string();
    let (code, out, err) = console(&["-c", &cfg, "--batch", "list", "-f", "json"]).unwrap();
    assert_eq!(code, 0, "{err}");
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 3, "{out}");
    if need_program("tmux", "tmux") {
        let tty = Tmux::start(
            "raftconsole",
            120,
            32,
            &format!(
                "TERM=xterm-256color {} -c {cfg}",
                bin_dir().join("pgpilot-console").display()
            ),
        )
        .unwrap();
        tty.wait_for("raft3", LONG).unwrap();
        tty.wait_for("3/3", LONG).unwrap();
    }

    // the leader's machine is lost (agent, PostgreSQL and its etcd member): another leads
    let writer = Writer::start(&c.nodes).unwrap();
    writer.wait_more(10, LONG).unwrap();
    let c = &mut rl.lab.cluster;
    c.kill_machine(p);
    let q = wait_for("a new primary", LONG, || c.primary().filter(|q| *q != p)).unwrap();
    writer.wait_more(10, LONG).unwrap();
    // it comes back and rejoins
    c.start_agent(p).unwrap();
    c.wait_healthy(LONG).unwrap();
    assert_eq!(c.primary(), Some(q));

    // two members lost: no quorum, no writable primary (the primary stops taking writes)
    let others: Vec<usize> = (0..3).filter(|i| *i != q).collect();
    for i in &others {
        c.kill_machine(*i);
    }
    wait_for("the lone primary to stop being primary", LONG, || {
        (c.primary().is_none()).then_some(())
    })
    .unwrap();
    for i in &others {
        c.start_agent(*i).unwrap();
    }
    c.wait_healthy(LONG).unwrap();
    writer.wait_more(10, LONG).unwrap();

    // a replica's raft data wiped: it is admitted again through the quorum, with a new identity
    let r = wipe_a_replica_and_wait_for_it(c);
    let logs: String = (0..3)
        .filter(|i| *i != r)
        .map(|i| std::fs::read_to_string(&c.nodes[i].log_path).unwrap_or_default())
        .collect();
    assert!(
        logs.contains("admitted again a member that lost its data"),
        "{}",
        c.logs_tail()
    );
    writer.wait_more(10, LONG).unwrap();
    let (acked, _) = writer.finish(std::time::Instant::now());
    let primary = c.primary().unwrap();
    let on_leader = written_ids(&c.nodes[primary]).unwrap();
    let missing: Vec<&i64> = acked.iter().filter(|id| !on_leader.contains(id)).collect();
    assert!(missing.is_empty(), "acknowledged rows lost: {missing:?}");
    c.shutdown();
}

#[test]
fn two_database_members_and_a_witness_fail_over() {
    if !prerequisites() {
        return;
    }
    // with raft.password: the witness derives the members' TLS too
    let mut rl = raft_lab("raftw", 2, true, Some("witness and members"));
    rl.lab.cluster.start_all().unwrap();
    let p = rl.lab.cluster.wait_healthy(LONG).unwrap();
    let c = &rl.lab.cluster;
    let h = wait_for("a group of three, the witness included", LONG, || {
        raft_health(c, p).filter(|h| h["reachable"] == 3)
    })
    .unwrap();
    assert_eq!(h["members"], 3, "{h}");
    // losing one database machine: the other and the witness keep the quorum and fail over
    let c = &mut rl.lab.cluster;
    c.kill_machine(p);
    let q = 1 - p;
    wait_for("the other database member to lead", LONG, || {
        (c.primary() == Some(q)).then_some(())
    })
    .unwrap();
    assert_eq!(
        rl.leader().as_deref(),
        Some(rl.lab.cluster.nodes[q].name.as_str())
    );
    let c = &mut rl.lab.cluster;
    c.start_agent(p).unwrap();
    c.wait_healthy(LONG).unwrap();
    c.shutdown();
}

#[test]
fn a_raft_section_is_checked_by_name() {
    if !prerequisites() {
        return;
    }
    let rl = raft_lab("raftbad", 1, false, None);
    let cfg = &rl.lab.cluster.nodes[0].config_path;
    let text = std::fs::read_to_string(cfg).unwrap();
    // raft and etcd3 both: refused, exit 2, both named
    let both = rl.lab.work.path.join("both.yml");
    std::fs::write(&both, format!("{text}\netcd3:\n  hosts: 127.0.0.1:2379\n")).unwrap();
    let out = std::process::Command::new(agent_bin())
        .arg("--validate-config")
        .arg(&both)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("etcd3") && err.contains("raft"), "{err}");
    // a partner that is not host:port: named
    let bad = rl.lab.work.path.join("bad.yml");
    std::fs::write(
        &bad,
        text.replace("partner_addrs: []", "partner_addrs: ['nohostport']"),
    )
    .unwrap();
    let out = std::process::Command::new(agent_bin())
        .arg("--validate-config")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("raft.partner_addrs[0]"), "{err}");
    // a witness without a raft section: exit 2 naming it
    let w = rl.lab.work.path.join("witness-bad.yml");
    std::fs::write(&w, "scope: x\n").unwrap();
    let out = std::process::Command::new(agent_bin())
        .arg("--witness")
        .arg(&w)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("raft"));
}

/// The members' mutual TLS (`raft.cacert`, `raft.cert`, `raft.key`): the group forms and
/// serves over TLS, a peer port refuses a client without a member's certificate (etcd serves its
/// client API there too), and a member whose raft data was wiped is admitted again over TLS.
#[test]
fn members_speak_mutual_tls_and_refuse_strangers() {
    if !prerequisites() {
        return;
    }
    let mut rl = raft_lab("rafttls", 3, false, None);
    let ca = TestCa::new("rafttls").unwrap();
    for (i, n) in rl.lab.cluster.nodes.iter().enumerate() {
        let (cert, key) = ca.issue(&format!("member{i}"), "").unwrap();
        let text = std::fs::read_to_string(&n.config_path).unwrap();
        let text = text.replacen(
            "raft:\n",
            &format!(
                "raft:\n  cacert: {}\n  cert: {}\n  key: {}\n",
                ca.ca().display(),
                cert.display(),
                key.display()
            ),
            1,
        );
        std::fs::write(&n.config_path, text).unwrap();
    }
    let peer = tls_group_up(&mut rl);
    if need_program("curl", "curl") {
        let https = format!("https://{peer}");
        assert!(
            !curl(&https, &["-k".as_ref()]).contains("peerURLs"),
            "the member list went to a client without a certificate"
        );
        // with a member's certificate it answers (the check above is not vacuous)
        let (cert, key) = ca.issue("probe", "").unwrap();
        assert_member_list_with(&https, &ca.ca(), &cert, &key);
    }
    // a replica's raft data wiped: admitted again over TLS
    let c = &mut rl.lab.cluster;
    wipe_a_replica_and_wait_for_it(c);
    c.shutdown();
}

/// Starts the lab's members and waits for a healthy cluster on a group of three whose peers
/// speak TLS; checks that plain http gets no member list; returns member 0's member list
/// address (`host:port/members`).
fn tls_group_up(rl: &mut RaftLab) -> String {
    rl.lab.cluster.start_all().unwrap();
    rl.lab.cluster.wait_healthy(LONG).unwrap();
    let c = &rl.lab.cluster;
    wait_for("a group of three over TLS", LONG, || {
        raft_health(c, 0).filter(|h| h["reachable"] == 3 && h["leader"].is_string())
    })
    .unwrap();
    // a stranger speaking plain http gets nothing
    let peer = format!("127.0.0.1:{}/members", rl.peers[0]);
    let plain = http_get(&format!("http://{peer}"));
    assert!(
        plain.as_ref().map_or(true, |(code, body)| *code >= 400
            && !body.contains("peerURLs")),
        "plain http answered on a TLS peer port: {plain:?}"
    );
    peer
}

/// A member's certificate (`cert`, `key`, issued by `ca`) gets the member list at `url`.
fn assert_member_list_with(
    url: &str,
    ca: &std::path::Path,
    cert: &std::path::Path,
    key: &std::path::Path,
) {
    let answer = curl(
        url,
        &[
            "--cacert".as_ref(),
            ca.as_os_str(),
            "--cert".as_ref(),
            cert.as_os_str(),
            "--key".as_ref(),
            key.as_os_str(),
        ],
    );
    assert!(
        answer.contains("peerURLs"),
        "a member's certificate is refused: {answer}"
    );
}

/// `curl` of `url` with extra arguments; its standard output.
fn curl(url: &str, extra: &[&std::ffi::OsStr]) -> String {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--http1.1", "--max-time", "5"])
        .args(extra)
        .arg(url)
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_password_alone_puts_the_peers_behind_tls() {
    if !prerequisites() || !need_program("curl", "curl") {
        return;
    }
    let mut rl = raft_lab("raftpw", 3, false, Some("correct horse battery"));
    let peer = tls_group_up(&mut rl);
    let c = &rl.lab.cluster;
    let https = format!("https://{peer}");
    assert!(
        !curl(&https, &["-k".as_ref()]).contains("peerURLs"),
        "the member list went to a client without a certificate"
    );
    // a certificate from another CA (a stranger's, or a member with the wrong password)
    let ca = TestCa::new("raftpw").unwrap();
    let (cert, key) = ca.issue("stranger", "").unwrap();
    assert!(
        !curl(
            &https,
            &[
                "-k".as_ref(),
                "--cert".as_ref(),
                cert.as_os_str(),
                "--key".as_ref(),
                key.as_os_str()
            ]
        )
        .contains("peerURLs"),
        "a certificate from another CA was accepted"
    );
    // a member's derived certificate is accepted (the checks above are not vacuous)
    let tls = c.nodes[1].config_path.parent().unwrap().join("raft/tls");
    assert_member_list_with(
        &https,
        &tls.join("ca.pem"),
        &tls.join("member.pem"),
        &tls.join("member.key"),
    );
    // a replica's raft data (its derived TLS too) wiped: admitted again over TLS
    let c = &mut rl.lab.cluster;
    wipe_a_replica_and_wait_for_it(c);
    c.shutdown();
}
