//! `bench`: pgpilot and Patroni side by side on this machine, with the same etcd, PostgreSQL 15
//! and YAML, in one run. Scenarios: bootstrap (start → leader + 2 streaming replicas); REST
//! `GET /primary` on the leader under wrk (16 connections): throughput, p50, p99; idle daemon
//! RSS and CPU; a planned switchover while a client writes (a writer inserting every 20 ms through
//! a multi-host `target_session_attrs=read-write` connection string): request time, write gap,
//! time until the old primary streams again; the write gap when the leader's machine dies
//! (agent, postmaster and children SIGKILLed) at default and at the fastest accepted timing, and
//! when only the postmaster is killed; `console --batch list` vs `patronictl list`; the live
//! console's frame time with 1,000 members and its etcd change → screen latency; split brain
//! and lost commits when only the primary's agent is SIGKILLed, when the primary loses the
//! network (namespaces + nftables, root only), in a strict synchronous failover, when the
//! primary's agent is stopped (SIGSTOP) until another member leads and then continued, and when
//! the primary's machine dies under a flood of `POST /failsafe` in its name (a probe
//! asks every server for a write every 100 ms; acknowledged ids are checked after healing). Prints a line
//! per measurement and a JSON document (runs and medians) at the end. Every cluster is stopped by
//! PID when its scenario ends. Timing is measured here, never asserted in tests.
//!
//! Usage: bench all [REPS] [PATRONI] [PATRONICTL]   every scenario, one JSON document
//!        bench quick                              one repetition, pgpilot only, short (CI checks
//!                                                 that every scenario yields a number)
//!        bench [REPS] [PATRONI]                   bootstrap, REST, idle RSS and CPU
//!        bench failover [REPS] [PATRONI]
//!        bench switchover [REPS] [PATRONI]
//!        bench console [REPS] [PATRONICTL]
//!        bench tls [REPS] [PATRONI]               bootstrap over etcd TLS, REST over TLS
//!        bench split [REPS] [PATRONI] [SCENARIOS]  (comma-separated names, default all)

use anyhow::{Context, Result, bail};
use pgpilot_e2e::{ClusterSpec, Lab, NetLab, WriteProbe, Writer, bin_dir};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

struct Run {
    bootstrap_s: f64,
    rest_rps: f64,
    rest_p50_ms: f64,
    rest_p99_ms: f64,
    idle_rss_mib: f64,
    idle_cpu_pct: f64,
    /// What the members cost etcd while idle, per member per minute: gRPC messages it
    /// received (unary calls and messages on streams) and bytes it sent to clients.
    idle_etcd_msgs: f64,
    idle_etcd_kib: f64,
}

/// etcd's own counters from its `/metrics`: (gRPC messages received, by method; bytes sent to
/// clients).
fn etcd_traffic(endpoint: &str) -> Result<(std::collections::BTreeMap<String, f64>, f64)> {
    let (code, text) = pgpilot_e2e::http_get(&format!("http://{endpoint}/metrics"))?;
    anyhow::ensure!(code == 200, "etcd /metrics answered {code}");
    let mut msgs = std::collections::BTreeMap::new();
    let mut sent = 0.0;
    for line in text.lines() {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = value.parse::<f64>() else {
            continue;
        };
        if let Some(labels) = name.strip_prefix("grpc_server_msg_received_total{") {
            let method = labels
                .split(',')
                .find_map(|l| l.strip_prefix("grpc_method=\""))
                .map(|m| m.trim_end_matches(['"', '}']))
                .unwrap_or("?");
            *msgs.entry(method.to_string()).or_insert(0.0) += v;
        } else if name == "etcd_network_client_grpc_sent_bytes_total" {
            sent += v;
        }
    }
    Ok((msgs, sent))
}

/// How long each measurement runs.
#[derive(Clone, Copy)]
struct Durations {
    wrk_secs: u64,
    idle_secs: u64,
}

impl Durations {
    const FULL: Durations = Durations {
        wrk_secs: 10,
        idle_secs: 60,
    };
    const QUICK: Durations = Durations {
        wrk_secs: 2,
        idle_secs: 5,
    };
}

/// Runs wrk against `url` for `secs`: (requests per second, p50 and p99 latency in ms).
fn wrk(url: &str, secs: u64) -> Result<(f64, f64, f64)> {
    let out = Command::new("wrk")
        .args(["-t2", "-c16", &format!("-d{secs}s"), "--latency", url])
        .output()
        .context("cannot run wrk: apt-get install wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    let percentile = |p: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(p))
            .map(|v| v.trim())
            .and_then(|v| {
                let (num, unit) =
                    v.split_at(v.find(|c: char| c.is_alphabetic()).unwrap_or(v.len()));
                let n: f64 = num.parse().ok()?;
                Some(match unit {
                    "us" => n / 1000.0,
                    "ms" => n,
                    "s" => n * 1000.0,
                    _ => n,
                })
            })
            .unwrap_or(0.0)
    };
    if rps == 0.0 {
        bail!(
            "wrk measured nothing at {url}:\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((rps, percentile("50%"), percentile("99%")))
}

/// `GET path` over TLS to `127.0.0.1:port` from 16 clients for `secs`, each request on a
/// connection of its own (`Connection: close`: what an HAProxy health check does, and the only
/// way to read Patroni, whose HTTP/1.0 answers end when it closes the connection, which wrk
/// cannot count over TLS). Certificates are checked against `ca`. (requests per second, p50
/// and p99 latency in ms); every answer must be 200.
fn tls_load(port: u16, path: &str, ca: &Path, secs: u64) -> Result<(f64, f64, f64)> {
    use rustls::pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    shared::api::install_tls_provider();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let config = std::sync::Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let until = Instant::now() + Duration::from_secs(secs);
    let results = runtime.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let connector = tokio_rustls::TlsConnector::from(config.clone());
            let request = request.clone();
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut failures = 0usize;
                while Instant::now() < until {
                    let began = Instant::now();
                    let once = async {
                        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
                        let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?;
                        let mut tls = connector.connect(name, tcp).await?;
                        tls.write_all(request.as_bytes()).await?;
                        let mut answer = Vec::new();
                        // a close without TLS's close_notify ends the answer too
                        match tls.read_to_end(&mut answer).await {
                            Ok(_) => {}
                            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
                            Err(e) => return Err(anyhow::Error::from(e)),
                        }
                        let head =
                            String::from_utf8_lossy(&answer[..answer.len().min(16)]).into_owned();
                        anyhow::ensure!(
                            head.starts_with("HTTP/1.") && head[8..].starts_with(" 200"),
                            "answer {head:?}"
                        );
                        anyhow::Ok(())
                    };
                    match once.await {
                        Ok(()) => latencies.push(began.elapsed().as_secs_f64() * 1000.0),
                        Err(_) => failures += 1,
                    }
                }
                (latencies, failures)
            }));
        }
        let mut all = Vec::new();
        let mut failures = 0;
        for t in tasks {
            if let Ok((l, f)) = t.await {
                all.extend(l);
                failures += f;
            }
        }
        (all, failures)
    });
    let (mut latencies, failures) = results;
    if latencies.is_empty() || failures > latencies.len() / 100 {
        bail!(
            "GET {path} over TLS on port {port}: {} answered 200, {failures} failed",
            latencies.len()
        );
    }
    latencies.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    Ok((latencies.len() as f64 / secs as f64, at(0.5), at(0.99)))
}

/// CPU time (user + system) a process has used, in seconds (/proc counts in USER_HZ = 100).
fn cpu_secs(pid: i32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1.split_whitespace().collect::<Vec<_>>();
            let utime: f64 = after.get(11)?.parse().ok()?;
            let stime: f64 = after.get(12)?.parse().ok()?;
            Some((utime + stime) / 100.0)
        })
        .unwrap_or(0.0)
}

fn rss_mib(pid: i32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn run(kind: &str, daemon: Option<PathBuf>, rep: usize, d: Durations) -> Result<Run> {
    let spec = ClusterSpec {
        scope: format!("bench-{kind}-{rep}"),
        // Patroni refuses ttl < 20: both run with Patroni's defaults.
        ttl: 30,
        loop_wait: 10,
        retry_timeout: 10,
        daemon,
        ..Default::default()
    };
    let mut lab = Lab::new(&format!("bench-{kind}"), spec, true)?;
    let started = Instant::now();
    lab.cluster.start_all()?;
    let p = lab.cluster.wait_healthy(Duration::from_secs(180))?;
    let bootstrap_s = started.elapsed().as_secs_f64();
    let (rest_rps, rest_p50_ms, rest_p99_ms) =
        wrk(&lab.cluster.nodes[p].api("/primary"), d.wrk_secs)?;
    // idle: every daemon's CPU over the window, and its RSS at the end (means of the nodes)
    let pids: Vec<i32> = lab
        .cluster
        .nodes
        .iter()
        .filter_map(|n| n.agent.as_ref().map(|a| a.pid()))
        .collect();
    let before: Vec<f64> = pids.iter().map(|p| cpu_secs(*p)).collect();
    let etcd_before = etcd_traffic(&lab.etcd.endpoint())?;
    std::thread::sleep(Duration::from_secs(d.idle_secs));
    let etcd_after = etcd_traffic(&lab.etcd.endpoint())?;
    let used: f64 = pids
        .iter()
        .zip(&before)
        .map(|(p, b)| cpu_secs(*p) - b)
        .sum::<f64>();
    let n = pids.len().max(1) as f64;
    let idle_cpu_pct = used / n / d.idle_secs as f64 * 100.0;
    let idle_rss_mib = pids.iter().map(|p| rss_mib(*p)).sum::<f64>() / n;
    let per_member_minute = n * d.idle_secs as f64 / 60.0;
    let by_method: Vec<String> = etcd_after
        .0
        .iter()
        .map(|(m, v)| (m, v - etcd_before.0.get(m).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .map(|(m, v)| format!("{m} {:.1}", v / per_member_minute))
        .collect();
    let msgs: f64 = etcd_after.0.values().sum::<f64>() - etcd_before.0.values().sum::<f64>();
    let idle_etcd_msgs = msgs / per_member_minute;
    let idle_etcd_kib = (etcd_after.1 - etcd_before.1) / 1024.0 / per_member_minute;
    println!(
        "{kind} idle etcd traffic per member per minute: {idle_etcd_msgs:.1} messages ({}), {idle_etcd_kib:.2} KiB sent",
        by_method.join(", ")
    );
    lab.cluster.shutdown();
    Ok(Run {
        bootstrap_s,
        rest_rps,
        rest_p50_ms,
        rest_p99_ms,
        idle_rss_mib,
        idle_cpu_pct,
        idle_etcd_msgs,
        idle_etcd_kib,
    })
}

/// One secured-estate run: etcd over TLS with client certificates and the REST API over TLS,
/// the same certificates for both daemons: (bootstrap s, GET /primary req/s, p50 ms, p99 ms).
fn tls_once(
    kind: &str,
    daemon: Option<PathBuf>,
    rep: usize,
    wrk_secs: u64,
) -> Result<(f64, f64, f64, f64)> {
    let work = pgpilot_e2e::Workdir::new(&format!("bench-tls-{kind}"))?;
    let ca = pgpilot_e2e::TestCa::new(&format!("bench-{kind}-{rep}"))?;
    let (server_cert, server_key) = ca.issue("server", "127.0.0.1")?;
    // no CN: Patroni talks to etcd's JSON gateway, which refuses a client certificate with one
    let (cert, key) = ca.issue("client", "")?;
    let mut etcd = pgpilot_e2e::Etcd::new(&work.path);
    etcd.tls = Some(pgpilot_e2e::EtcdTls {
        ca: ca.ca(),
        cert: server_cert.clone(),
        key: server_key.clone(),
    });
    etcd.start()?;
    let spec = ClusterSpec {
        scope: format!("bench-tls-{kind}-{rep}"),
        ttl: 30,
        loop_wait: 10,
        retry_timeout: 10,
        daemon,
        restapi_yaml: format!(
            "  certfile: {}\n  keyfile: {}\n  cafile: {}\n",
            server_cert.display(),
            server_key.display(),
            ca.ca().display()
        ),
        etcd_yaml: format!(
            "  protocol: https\n  cacert: {}\n  cert: {}\n  key: {}\n",
            ca.ca().display(),
            cert.display(),
            key.display()
        ),
        ..Default::default()
    };
    let mut cluster = pgpilot_e2e::TestCluster::new(spec, &work.path, &etcd.endpoint())?;
    let started = Instant::now();
    cluster.start_all()?;
    let p = cluster.wait_healthy(Duration::from_secs(180))?;
    let bootstrap_s = started.elapsed().as_secs_f64();
    let (rps, p50, p99) = tls_load(cluster.nodes[p].api_port, "/primary", &ca.ca(), wrk_secs)?;
    cluster.shutdown();
    etcd.stop();
    Ok((bootstrap_s, rps, p50, p99))
}

/// `bench tls`: bootstrap with etcd over TLS (client certificates) and REST `GET /primary`
/// over TLS, pgpilot then Patroni.
fn tls_summary(reps: usize, patroni: Option<PathBuf>, wrk_secs: u64) -> Result<Value> {
    let mut summary = serde_json::Map::new();
    for (kind, daemon) in kinds(patroni) {
        let (mut boot, mut rps, mut p50, mut p99) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for rep in 1..=reps {
            let (b, r, m, t) = tls_once(kind, daemon.clone(), rep, wrk_secs)?;
            println!(
                "{kind} tls run {rep}: bootstrap {b:.2} s over etcd TLS, GET /primary over TLS {r:.0} req/s, p50 {m:.2} ms, p99 {t:.2} ms"
            );
            boot.push(b);
            rps.push(r);
            p50.push(m);
            p99.push(t);
        }
        summary.insert(
            kind.into(),
            json!({
                "bootstrap_etcd_tls_s": {"runs": boot.clone(), "median": median(boot)},
                "rest_tls_rps": {"runs": rps.clone(), "median": median(rps)},
                "rest_tls_p50_ms": {"runs": p50.clone(), "median": median(p50)},
                "rest_tls_p99_ms": {"runs": p99.clone(), "median": median(p99)},
            }),
        );
    }
    Ok(Value::Object(summary))
}

/// What is broken in a failover measurement.
#[derive(Clone, Copy)]
enum Fault {
    /// The leader's agent, postmaster and children are SIGKILLed.
    MachineLoss,
    /// Only the leader's postmaster is SIGKILLed.
    PostmasterCrash,
}

/// One failover measurement: the client write gap in seconds.
fn write_gap(
    kind: &str,
    (daemon, bin_dir): (Option<PathBuf>, Option<PathBuf>),
    rep: usize,
    fault: Fault,
    (ttl, loop_wait, retry_timeout): (u64, u64, u64),
) -> Result<f64> {
    let spec = ClusterSpec {
        scope: format!("gap-{kind}-{ttl}-{rep}"),
        ttl,
        loop_wait,
        retry_timeout,
        daemon,
        bin_dir,
        ..Default::default()
    };
    let mut lab = Lab::new(&format!("gap-{kind}"), spec, true)?;
    let c = &mut lab.cluster;
    c.start_all()?;
    let p = c.wait_healthy(Duration::from_secs(180))?;
    let writer = Writer::start(&c.nodes)?;
    writer.wait_more(100, Duration::from_secs(60))?;
    let at = Instant::now();
    match fault {
        Fault::MachineLoss => c.kill_machine(p),
        Fault::PostmasterCrash => {
            let pid = c.nodes[p]
                .postmaster_pid()
                .context("no postmaster.pid on the leader")?;
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            )?;
        }
    }
    writer.wait_more(50, Duration::from_secs(ttl * 4 + 60))?;
    let (_, gap) = writer.finish(at);
    c.shutdown();
    Ok(gap.as_secs_f64())
}

/// Where the consensus of a raft measurement runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Consensus {
    /// Each agent's own etcd member (`raft:`).
    Embedded,
    /// A three-member etcd run beside the agents by the test (`etcd3:` with three hosts).
    External,
}

/// The write gap of a machine loss (agent, PostgreSQL and the etcd member on that machine),
/// at ttl 10 / loop_wait 2 / retry_timeout 3, with the consensus embedded or external.
fn raft_gap(consensus: Consensus, rep: usize) -> Result<f64> {
    let tag = match consensus {
        Consensus::Embedded => "embedded",
        Consensus::External => "external",
    };
    let spec = ClusterSpec {
        scope: format!("raft-{tag}-{rep}"),
        ..Default::default()
    };
    let mut rl = pgpilot_e2e::raft::RaftLab::new(&format!("raft-{tag}"), spec, false)?;
    let mut trio = None;
    if consensus == Consensus::External {
        // the same nodes with an etcd3 section naming the three external members
        let t = pgpilot_e2e::raft::EtcdTrio::start(&rl.lab.work.path)?;
        for n in &rl.lab.cluster.nodes {
            let text = std::fs::read_to_string(&n.config_path)?;
            let start = text.find("raft:\n").context("no raft section")?;
            let end = text[start..]
                .find("\n\n")
                .map(|e| start + e)
                .context("raft section end")?;
            let text = format!(
                "{}etcd3:\n  hosts: {}\n{}",
                &text[..start],
                t.hosts(),
                &text[end..]
            );
            std::fs::write(&n.config_path, text)?;
        }
        trio = Some(t);
    }
    let c = &mut rl.lab.cluster;
    c.start_all()?;
    let p = c.wait_healthy(Duration::from_secs(180))?;
    let writer = Writer::start(&c.nodes)?;
    writer.wait_more(100, Duration::from_secs(60))?;
    let at = Instant::now();
    c.kill_machine(p);
    if let Some(t) = trio.as_mut() {
        t.kill(p);
    }
    writer.wait_more(50, Duration::from_secs(100))?;
    let (_, gap) = writer.finish(at);
    c.shutdown();
    Ok(gap.as_secs_f64())
}

/// `bench raft`: machine loss with the embedded members and with an external three-member
/// etcd, same timings, same run.
fn raft_summary(reps: usize) -> Result<Value> {
    let mut out = serde_json::Map::new();
    for (name, consensus) in [
        ("embedded_machine_loss_s", Consensus::Embedded),
        ("external_machine_loss_s", Consensus::External),
    ] {
        let mut gaps = Vec::new();
        for rep in 1..=reps {
            let g = raft_gap(consensus, rep)?;
            println!(
                "raft {name} (ttl 10/loop_wait 2/retry_timeout 3) run {rep}: write gap {g:.2} s"
            );
            gaps.push(g);
        }
        out.insert(
            name.into(),
            json!({"timing": [10, 2, 3], "runs": gaps.clone(), "median": median(gaps)}),
        );
    }
    Ok(Value::Object(out))
}

/// One switchover measurement: (request returns, write gap, old primary streaming), seconds.
fn switchover_once(
    kind: &str,
    (daemon, bin_dir): (Option<PathBuf>, Option<PathBuf>),
    rep: usize,
) -> Result<(f64, f64, f64)> {
    let spec = ClusterSpec {
        scope: format!("sw-{kind}-{rep}"),
        ttl: 30,
        loop_wait: 10,
        retry_timeout: 10,
        daemon,
        bin_dir,
        ..Default::default()
    };
    let mut lab = Lab::new(&format!("sw-{kind}"), spec, true)?;
    let c = &mut lab.cluster;
    c.start_all()?;
    let p = c.wait_healthy(Duration::from_secs(180))?;
    let cand = (p + 1) % c.nodes.len();
    // every replica streaming before the measurement
    pgpilot_e2e::wait_for("replicas streaming", Duration::from_secs(60), || {
        c.nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != p)
            .all(|(_, n)| {
                n.status()
                    .is_some_and(|s| s["replication_state"] == "streaming")
            })
            .then_some(())
    })?;
    let writer = Writer::start(&c.nodes)?;
    writer.wait_more(100, Duration::from_secs(60))?;
    let body = json!({"leader": c.nodes[p].name, "candidate": c.nodes[cand].name}).to_string();
    let at = Instant::now();
    let (code, answer) = pgpilot_e2e::http_call(
        "POST",
        &c.nodes[p].api("/switchover"),
        Some(&body),
        None,
        Duration::from_secs(120),
    )?;
    let returned = at.elapsed().as_secs_f64();
    anyhow::ensure!(code == 200, "switchover answered {code}: {answer}");
    pgpilot_e2e::wait_for(
        "the old primary to stream",
        Duration::from_secs(120),
        || {
            let s = c.nodes[p].status()?;
            (s["role"] == "replica" && s["replication_state"] == "streaming").then_some(())
        },
    )?;
    let streaming = at.elapsed().as_secs_f64();
    writer.wait_more(50, Duration::from_secs(60))?;
    let (_, gap) = writer.finish(at);
    c.shutdown();
    Ok((returned, gap.as_secs_f64(), streaming))
}

/// `bench versions`: pgpilot on PostgreSQL 15 and on 18, the same run: bootstrap (3 agents →
/// leader + 2 streaming), a switchover's write gap, and the write gap when the leader's
/// postmaster alone is SIGKILLed.
fn versions_summary(reps: usize) -> Result<Value> {
    let pg18 = pgpilot_e2e::pg18_bin()
        .context("PostgreSQL 18 is not installed: . tests/prereqs.sh; pgpilot_pg18")?;
    let mut summary = serde_json::Map::new();
    for (label, bin) in [
        ("postgresql15", PathBuf::from(pgpilot_e2e::PG_BIN)),
        ("postgresql18", pg18),
    ] {
        let (mut boot, mut sw, mut crash) = (Vec::new(), Vec::new(), Vec::new());
        for rep in 1..=reps {
            let kind = format!("v{}", &label[10..]);
            let spec = ClusterSpec {
                scope: format!("boot-{kind}-{rep}"),
                ttl: 30,
                loop_wait: 10,
                retry_timeout: 10,
                bin_dir: Some(bin.clone()),
                ..Default::default()
            };
            let mut lab = Lab::new(&format!("boot-{kind}"), spec, true)?;
            let started = Instant::now();
            lab.cluster.start_all()?;
            lab.cluster.wait_healthy(Duration::from_secs(180))?;
            let b = started.elapsed().as_secs_f64();
            lab.cluster.shutdown();
            drop(lab);
            let (_, g, _) = switchover_once(&kind, (None, Some(bin.clone())), rep)?;
            let c = write_gap(
                &kind,
                (None, Some(bin.clone())),
                rep,
                Fault::PostmasterCrash,
                (30, 10, 10),
            )?;
            println!(
                "{label} run {rep}: bootstrap {b:.2} s, switchover gap {g:.2} s, postmaster crash gap {c:.2} s"
            );
            boot.push(b);
            sw.push(g);
            crash.push(c);
        }
        summary.insert(
            label.into(),
            json!({
                "bootstrap_s": {"runs": boot.clone(), "median": median(boot)},
                "switchover_gap_s": {"runs": sw.clone(), "median": median(sw)},
                "postmaster_crash_gap_s": {"runs": crash.clone(), "median": median(crash)},
            }),
        );
    }
    Ok(Value::Object(summary))
}

/// Bytes sent over the loopback interface so far (all of this machine's test traffic: the
/// replica builds below run alone, so a difference is what the build moved).
fn loopback_tx_bytes() -> u64 {
    std::fs::read_to_string("/proc/net/dev")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.trim_start().starts_with("lo:"))
                .and_then(|l| l.split_once(':'))
                .and_then(|(_, rest)| rest.split_whitespace().nth(8)?.parse().ok())
        })
        .unwrap_or(0)
}

/// `bench replicas`: a replica of a pgbench database (`scale` 70 ≈ 1 GB) built with
/// pg_basebackup from the primary, then another with a pgBackRest restore from a full backup
/// (`create_replica_methods: [pgbackrest, basebackup]`, seed 000's YAML), for each daemon:
/// wall time from the daemon's start until the replica streams, and bytes sent over the
/// loopback meanwhile (the primary's copy to the replica; a restore reads the repository).
fn replicas_summary(patroni: Option<PathBuf>, scale: u32) -> Result<Value> {
    let mut summary = serde_json::Map::new();
    for (kind, daemon) in kinds(patroni) {
        let stanza = format!("benchrep{kind}");
        let spec = ClusterSpec {
            scope: stanza.clone(),
            ttl: 30,
            loop_wait: 10,
            retry_timeout: 10,
            daemon,
            ..Default::default()
        };
        let mut lab = Lab::new(&format!("replicas-{kind}"), spec, true)?;
        let repo = lab.work.path.join("repo");
        std::fs::create_dir_all(&repo)?;
        pgpilot_e2e::chown_postgres(&repo)?;
        let mut confs = Vec::new();
        for (i, n) in lab.cluster.nodes.iter().enumerate() {
            let dir = n
                .config_path
                .parent()
                .context("a node's directory")?
                .to_path_buf();
            let conf = pgpilot_e2e::backrest_conf(&dir, &repo, &stanza, n);
            let mut yaml = pgpilot_e2e::with_backrest(
                &std::fs::read_to_string(&n.config_path)?,
                &conf,
                &stanza,
            );
            if i == 1 {
                yaml = yaml.replace("    - pgbackrest\n    - basebackup\n", "    - basebackup\n");
            }
            std::fs::write(&n.config_path, yaml)?;
            confs.push(conf);
        }
        let c = &mut lab.cluster;
        c.start_agent(0)?;
        pgpilot_e2e::wait_for("the primary", Duration::from_secs(120), || {
            (c.primary() == Some(0)).then_some(())
        })?;
        let n = &c.nodes[0];
        let loaded = Instant::now();
        let out = Command::new(Path::new(pgpilot_e2e::PG_BIN).join("pgbench"))
            .args(["-i", "-q", "-s", &scale.to_string(), "-h", &n.host, "-p"])
            .arg(n.pg_port.to_string())
            .args(["-U", "postgres", "postgres"])
            .env("PGPASSWORD", "postgres-secret")
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "pgbench -i: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let size = pgpilot_e2e::sql(n, "SELECT pg_database_size('postgres')")?;
        println!(
            "{kind}: pgbench scale {scale} loaded in {:.0} s ({} bytes)",
            loaded.elapsed().as_secs_f64(),
            size[0]
        );
        let config = format!("--config={}", confs[0].display());
        let stanza_arg = format!("--stanza={stanza}");
        pgpilot_e2e::pgbackrest(&[&config, &stanza_arg, "stanza-create"])
            .map_err(|e| anyhow::anyhow!("stanza-create: {e}"))?;
        let backed = Instant::now();
        pgpilot_e2e::pgbackrest(&[&config, &stanza_arg, "--type=full", "backup"])
            .map_err(|e| anyhow::anyhow!("backup: {e}"))?;
        let backup_s = backed.elapsed().as_secs_f64();
        let mut results = serde_json::Map::new();
        for (i, method) in [(1, "pg_basebackup"), (2, "pgbackrest")] {
            let sent = loopback_tx_bytes();
            let started = Instant::now();
            c.start_agent(i)?;
            pgpilot_e2e::wait_for(
                "the new replica to stream",
                Duration::from_secs(1800),
                || {
                    let s = c.nodes[i].status()?;
                    (s["role"] == "replica" && s["replication_state"] == "streaming").then_some(())
                },
            )?;
            let secs = started.elapsed().as_secs_f64();
            let bytes = loopback_tx_bytes().saturating_sub(sent);
            println!(
                "{kind}: replica built with {method} and streaming in {secs:.1} s, {:.0} MB over the loopback",
                bytes as f64 / 1e6
            );
            results.insert(
                method.into(),
                json!({"seconds": secs, "loopback_bytes": bytes}),
            );
        }
        results.insert("backup_s".into(), json!(backup_s));
        results.insert("database_bytes".into(), json!(size[0]));
        summary.insert(kind.into(), Value::Object(results));
        c.shutdown();
    }
    Ok(Value::Object(summary))
}

/// `bench switchover`: pgpilot then Patroni.
fn switchover(reps: usize, patroni: Option<PathBuf>) -> Result<()> {
    println!("{}", switchover_summary(reps, patroni)?);
    Ok(())
}

fn switchover_summary(reps: usize, patroni: Option<PathBuf>) -> Result<Value> {
    let mut summary = serde_json::Map::new();
    for (kind, daemon) in kinds(patroni) {
        let (mut ret, mut gaps, mut streams) = (Vec::new(), Vec::new(), Vec::new());
        for rep in 1..=reps {
            let (r, g, s) = switchover_once(kind, (daemon.clone(), None), rep)?;
            println!(
                "{kind} switchover run {rep}: request returned after {r:.2} s, write gap {g:.2} s, old primary streaming after {s:.2} s"
            );
            ret.push(r);
            gaps.push(g);
            streams.push(s);
        }
        summary.insert(
            kind.into(),
            json!({
                "request_s": {"runs": ret.clone(), "median": median(ret)},
                "write_gap_s": {"runs": gaps.clone(), "median": median(gaps)},
                "old_primary_streaming_s": {"runs": streams.clone(), "median": median(streams)},
            }),
        );
    }
    Ok(Value::Object(summary))
}

/// The daemons to compare: pgpilot, and Patroni when its executable is given.
fn kinds(patroni: Option<PathBuf>) -> Vec<(&'static str, Option<PathBuf>)> {
    let mut k: Vec<(&'static str, Option<PathBuf>)> = vec![("pgpilot", None)];
    if let Some(p) = patroni {
        k.push(("patroni", Some(p)));
    }
    k
}

/// `bench failover`: write gaps, pgpilot then Patroni.
fn failover(reps: usize, patroni: Option<PathBuf>) -> Result<()> {
    println!("{}", failover_summary(reps, patroni, false)?);
    Ok(())
}

/// Write gaps of the failure scenarios; `quick` uses ttl 10 for the default timing.
fn failover_summary(reps: usize, patroni: Option<PathBuf>, quick: bool) -> Result<Value> {
    let mut summary = serde_json::Map::new();
    for (kind, daemon) in kinds(patroni) {
        // The fastest timing each accepts: pgpilot ttl 5 / loop_wait 1 / retry_timeout 1;
        // Patroni refuses a ttl under 20.
        let fast = if kind == "pgpilot" {
            (5, 1, 1)
        } else {
            (20, 1, 5)
        };
        let default = if quick { (10, 2, 3) } else { (30, 10, 10) };
        let scenarios = [
            ("machine_loss_default_s", Fault::MachineLoss, default),
            ("machine_loss_fastest_s", Fault::MachineLoss, fast),
            ("postmaster_crash_s", Fault::PostmasterCrash, default),
        ];
        let mut out = serde_json::Map::new();
        for (name, fault, timing) in scenarios {
            let mut gaps = Vec::new();
            for rep in 1..=reps {
                let g = write_gap(kind, (daemon.clone(), None), rep, fault, timing)?;
                println!(
                    "{kind} {name} (ttl {}/loop_wait {}/retry_timeout {}) run {rep}: write gap {g:.2} s",
                    timing.0, timing.1, timing.2
                );
                gaps.push(g);
            }
            out.insert(
                name.into(),
                json!({"timing": [timing.0, timing.1, timing.2], "runs": gaps.clone(), "median": median(gaps)}),
            );
        }
        summary.insert(kind.into(), Value::Object(out));
    }
    Ok(Value::Object(summary))
}

/// What a split-brain measurement breaks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Split {
    /// Only the primary's agent (pgpilot's agent, or the `patroni` process) is SIGKILLed;
    /// PostgreSQL runs on.
    AgentKill,
    /// The primary is cut off from etcd and the other nodes (the clients still reach it).
    NetworkLoss,
    /// `synchronous_mode_strict` on, and the primary's machine dies under load.
    StrictSyncFailover,
    /// The primary's agent (or `patroni` process) stopped with SIGSTOP until another member
    /// leads, then continued; PostgreSQL runs on.
    AgentStop,
    /// `failsafe_mode` on, the primary's machine dies, and every replica is sent
    /// `POST /failsafe` in the old leader's name each second (for up to [`FLOOD_FOR`]).
    FailsafeFlood,
}

/// How long the failsafe flood lasts at most (it stops once another member leads).
const FLOOD_FOR: Duration = Duration::from_secs(90);

impl Split {
    fn name(self) -> &'static str {
        match self {
            Split::AgentKill => "agent_sigkill",
            Split::NetworkLoss => "network_loss",
            Split::StrictSyncFailover => "strict_sync_failover",
            Split::AgentStop => "agent_sigstop",
            Split::FailsafeFlood => "failsafe_flood",
        }
    }

    const ALL: [Split; 5] = [
        Split::AgentKill,
        Split::NetworkLoss,
        Split::StrictSyncFailover,
        Split::AgentStop,
        Split::FailsafeFlood,
    ];
}

/// One split-brain measurement.
struct SplitRun {
    /// The longest time without an acknowledged write after the fault.
    write_gap_s: f64,
    /// How long two servers took writes at once (probe ticks × 100 ms).
    split_brain_s: f64,
    /// Acknowledged ids missing on the leader once everything healed.
    lost: usize,
    acked: usize,
}

/// How long a broken node stays broken after another member took the lock (an agent that
/// nobody restarts, a network that stays down), before it is healed and the cluster checked.
const BROKEN_AFTER_TAKEOVER: Duration = Duration::from_secs(10);

fn split_once(
    kind: &str,
    daemon: Option<PathBuf>,
    rep: usize,
    scenario: Split,
    (ttl, loop_wait, retry_timeout): (u64, u64, u64),
) -> Result<SplitRun> {
    let net = match scenario {
        Split::NetworkLoss => Some(NetLab::create(3)?),
        _ => None,
    };
    let spec = ClusterSpec {
        scope: format!("split-{kind}-{}-{rep}", scenario.name()),
        ttl,
        loop_wait,
        retry_timeout,
        daemon,
        ..Default::default()
    };
    let tag = format!("split-{kind}");
    let mut lab = match &net {
        Some(n) => Lab::in_netns(&tag, spec, n)?,
        None => Lab::new(&tag, spec, true)?,
    };
    let Lab {
        cluster: c, etcd, ..
    } = &mut lab;
    c.start_all()?;
    let p = c.wait_healthy(Duration::from_secs(180))?;
    if scenario == Split::StrictSyncFailover {
        let (code, text) = pgpilot_e2e::http_request(
            "PATCH",
            &c.nodes[p].api("/config"),
            Some(r#"{"synchronous_mode": true, "synchronous_mode_strict": true}"#),
        )?;
        anyhow::ensure!(code == 200, "PATCH /config answered {code}: {text}");
        let key = format!("/service/{}/sync", c.spec.scope);
        pgpilot_e2e::wait_for("a synchronous standby", Duration::from_secs(120), || {
            let v = etcd.get_prefix(&key).ok()?;
            let (_, raw, _) = v.first()?;
            let j: Value = serde_json::from_str(raw).ok()?;
            j["sync_standby"].is_string().then_some(())
        })?;
    }
    if scenario == Split::FailsafeFlood {
        pgpilot_e2e::enable_failsafe(c, etcd, p)?;
    }
    let writer = Writer::start(&c.nodes)?;
    let mut probe = WriteProbe::start(&c.nodes);
    writer.wait_more(100, Duration::from_secs(60))?;
    let at = Instant::now();
    let mut stopped_agent = None;
    let mut flood = None;
    match scenario {
        Split::AgentStop => {
            let pid = c.nodes[p]
                .agent
                .as_ref()
                .context("no agent on the leader")?
                .pid();
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGSTOP,
            );
            stopped_agent = Some(pid);
        }
        Split::FailsafeFlood => {
            let ask = format!(r#"{{"name": "{}"}}"#, c.nodes[p].name);
            let targets: Vec<String> = (0..c.nodes.len())
                .filter(|&i| i != p)
                .map(|i| c.nodes[i].api("/failsafe"))
                .collect();
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let stop2 = stop.clone();
            let thread = std::thread::spawn(move || {
                let started = Instant::now();
                while !stop2.load(std::sync::atomic::Ordering::Relaxed)
                    && started.elapsed() < FLOOD_FOR
                {
                    for t in &targets {
                        let _ = pgpilot_e2e::http_post(t, &ask);
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
            });
            flood = Some((stop, thread));
            c.kill_machine(p);
        }
        Split::AgentKill => {
            let mut agent = c.nodes[p].agent.take().context("no agent on the leader")?;
            agent.signal(nix::sys::signal::Signal::SIGKILL);
            let _ = agent.stop(Duration::from_secs(5));
        }
        Split::NetworkLoss => {
            if let Some(n) = &net {
                n.isolate(p)?;
            }
        }
        Split::StrictSyncFailover => c.kill_machine(p),
    }
    let elected = pgpilot_e2e::wait_for(
        "another leader",
        FLOOD_FOR + Duration::from_secs(ttl * 4 + 60),
        || c.leader_index(etcd).filter(|&i| i != p),
    );
    if let Some((stop, thread)) = flood {
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = thread.join();
    }
    if let Some(pid) = stopped_agent {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGCONT,
        );
    }
    elected?;
    if scenario != Split::AgentStop {
        std::thread::sleep(BROKEN_AFTER_TAKEOVER);
    }
    match scenario {
        Split::NetworkLoss => {
            if let Some(n) = &net {
                n.heal(p)?;
            }
        }
        // the continued agent is still there
        Split::AgentStop => {}
        _ => c.start_agent(p)?,
    }
    c.wait_healthy(Duration::from_secs(300))?;
    writer.wait_more(20, Duration::from_secs(120))?;
    probe.stop();
    let split_brain_s = probe.split_ticks().len() as f64 * pgpilot_e2e::PROBE_TICK.as_secs_f64();
    let (acked, gap) = writer.finish(at);
    let leader = c.primary().context("no primary after healing")?;
    let held = pgpilot_e2e::written_ids(&c.nodes[leader])?;
    let lost = acked.iter().filter(|id| !held.contains(id)).count();
    c.shutdown();
    drop(lab);
    drop(net);
    Ok(SplitRun {
        write_gap_s: gap.as_secs_f64(),
        split_brain_s,
        lost,
        acked: acked.len(),
    })
}

/// `bench split`: split brain and lost commits, pgpilot then Patroni, at default timing (ttl
/// 10 in quick mode). The network scenario needs root.
fn split_summary(
    reps: usize,
    patroni: Option<PathBuf>,
    quick: bool,
    only: Option<&str>,
) -> Result<Value> {
    let timing = if quick { (10, 2, 3) } else { (30, 10, 10) };
    let wanted = |s: &Split| only.is_none_or(|o| o.split(',').any(|n| n == s.name()));
    let mut scenarios: Vec<Split> = Split::ALL.into_iter().filter(wanted).collect();
    if let Some(o) = only {
        for name in o.split(',') {
            anyhow::ensure!(
                Split::ALL.iter().any(|s| s.name() == name),
                "unknown split scenario {name:?} (known: {})",
                Split::ALL.map(|s| s.name()).join(", ")
            );
        }
    }
    if !NetLab::available() {
        if scenarios.contains(&Split::NetworkLoss) {
            eprintln!("network_loss left out: it needs root, iproute2 and nftables");
        }
        scenarios.retain(|s| *s != Split::NetworkLoss);
    }
    let mut summary = serde_json::Map::new();
    for (kind, daemon) in kinds(patroni) {
        let mut out = serde_json::Map::new();
        for scenario in &scenarios {
            let (mut gaps, mut splits, mut lost, mut acked) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for rep in 1..=reps {
                let r = split_once(kind, daemon.clone(), rep, *scenario, timing)?;
                println!(
                    "{kind} {} run {rep}: write gap {:.2} s, two writable primaries for {:.1} s, {} of {} acknowledged writes lost",
                    scenario.name(),
                    r.write_gap_s,
                    r.split_brain_s,
                    r.lost,
                    r.acked
                );
                gaps.push(r.write_gap_s);
                splits.push(r.split_brain_s);
                lost.push(r.lost as f64);
                acked.push(r.acked as f64);
            }
            out.insert(
                scenario.name().into(),
                json!({
                    "timing": [timing.0, timing.1, timing.2],
                    "write_gap_s": {"runs": gaps.clone(), "median": median(gaps)},
                    "split_brain_s": {"runs": splits.clone(), "median": median(splits)},
                    "lost_acknowledged": {"runs": lost.clone(), "median": median(lost)},
                    "acknowledged": {"runs": acked.clone(), "median": median(acked)},
                }),
            );
        }
        summary.insert(kind.into(), Value::Object(out));
    }
    Ok(Value::Object(summary))
}

/// `bench console`: wall time of `console --batch list` and `patronictl list` on the same
/// 3-node cluster, each run `reps` times; the live console's frame time with 1,000 members and
/// its etcd change → screen latency.
fn console_summary(reps: usize, patronictl: Option<PathBuf>) -> Result<Value> {
    let spec = ClusterSpec {
        scope: "bench-console".into(),
        ..Default::default()
    };
    let mut lab = Lab::new("bench-console", spec, true)?;
    lab.cluster.start_all()?;
    lab.cluster.wait_healthy(Duration::from_secs(180))?;
    let cfg = lab.cluster.nodes[0].config_path.clone();
    let time = |cmd: &mut Command| -> Result<f64> {
        let t = Instant::now();
        let out = cmd.output()?;
        anyhow::ensure!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(t.elapsed().as_secs_f64() * 1000.0)
    };
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for _ in 0..reps {
        ours.push(time(
            Command::new(bin_dir().join("pgpilot-console"))
                .arg("-c")
                .arg(&cfg)
                .args(["--batch", "list"]),
        )?);
        if let Some(ctl) = &patronictl {
            theirs.push(time(Command::new(ctl).arg("-c").arg(&cfg).arg("list"))?);
        }
    }
    println!(
        "console --batch list: median {:.1} ms over {reps} runs (min {:.1}, max {:.1})",
        median(ours.clone()),
        ours.iter().cloned().fold(f64::MAX, f64::min),
        ours.iter().cloned().fold(0.0, f64::max)
    );
    if !theirs.is_empty() {
        println!(
            "patronictl list:      median {:.1} ms over {reps} runs (min {:.1}, max {:.1})",
            median(theirs.clone()),
            theirs.iter().cloned().fold(f64::MAX, f64::min),
            theirs.iter().cloned().fold(0.0, f64::max)
        );
    }
    let (frame, charts) = render_ms()?;
    println!("live console frame, 1,000 members: {frame:.2} ms");
    println!("live console frame, Charts tab of 1,000 members: {charts:.2} ms");
    let latency = change_to_screen_ms(&lab)?;
    println!("live console, etcd change → screen: {latency:.0} ms");
    let journal = journal_to_screen_ms(&lab)?;
    println!("live console started after a switchover, start → journal on screen: {journal:.0} ms");
    lab.cluster.shutdown();
    let mut v = json!({"console_list_ms": {"runs": ours.clone(), "median": median(ours)},
        "frame_ms_1000_members": frame, "frame_ms_charts_1000_members": charts,
        "change_to_screen_ms": latency, "journal_to_screen_ms": journal});
    if !theirs.is_empty() {
        v["patronictl_list_ms"] = json!({"runs": theirs.clone(), "median": median(theirs)});
    }
    Ok(v)
}

/// `console --bench-render`: one frame of the 1,000-member cluster list and one of the Charts
/// tab of a 1,000-member cluster, in ms.
fn render_ms() -> Result<(f64, f64)> {
    let out = Command::new(bin_dir().join("pgpilot-console"))
        .arg("--bench-render")
        .output()
        .context("cannot run console --bench-render")?;
    let v: Value = serde_json::from_slice(&out.stdout).context("console --bench-render")?;
    let ms = |k: &str| {
        v[k].as_f64()
            .with_context(|| format!("no {k} in console --bench-render"))
    };
    Ok((
        ms("frame_ms_1000_members")?,
        ms("frame_ms_charts_1000_members")?,
    ))
}

/// A switchover, then a live console started afresh: the time from its start until the
/// journal's newest entry (the first line `--batch events` prints) shows on its Events tab.
fn journal_to_screen_ms(lab: &Lab) -> Result<f64> {
    let scope = &lab.cluster.spec.scope;
    let console = bin_dir().join("pgpilot-console");
    let ep = lab.etcd.endpoint();
    let out = Command::new(&console)
        .args(["--etcd", &ep, "--batch", "switchover", scope, "--force"])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "switchover: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    lab.cluster.wait_healthy(Duration::from_secs(120))?;
    // the journal as a script reads it, once the new leader's promotion is in it
    let deadline = Instant::now() + Duration::from_secs(60);
    let newest = loop {
        let out = Command::new(&console)
            .args(["--etcd", &ep, "--batch", "events", scope, "-f", "json"])
            .output()?;
        let entries: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let first = entries[0]["Event"].as_str().unwrap_or_default().to_string();
        if entries.as_array().is_some_and(|a| {
            a.iter()
                .any(|e| e["Event"].as_str().is_some_and(|t| t.contains("promot")))
        }) && !first.is_empty()
        {
            break first;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no promotion in the journal: {entries}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    // what the screen shows of it: its first words (a long line is cut at the edge)
    let shown: String = newest.chars().take(24).collect();
    let t = Instant::now();
    let tmux = pgpilot_e2e::Tmux::start(
        "bench-journal",
        160,
        40,
        &format!(
            "TERM=xterm-256color {} --etcd {} --read-only",
            console.display(),
            ep
        ),
    )?;
    tmux.wait_for(scope, Duration::from_secs(20))?;
    tmux.keys(&["Enter", "4"]);
    while !tmux.screen().contains(&shown) {
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(20),
            "the journal's newest entry {shown:?} never showed:\n{}",
            tmux.screen()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(t.elapsed().as_secs_f64() * 1000.0)
}

/// The live console in tmux: the time from a `config` write by another client until the screen
/// shows it (polled every 5 ms).
fn change_to_screen_ms(lab: &Lab) -> Result<f64> {
    let scope = &lab.cluster.spec.scope;
    let tmux = pgpilot_e2e::Tmux::start(
        "bench-console",
        120,
        36,
        &format!(
            "TERM=xterm-256color {} --etcd {}",
            bin_dir().join("pgpilot-console").display(),
            lab.etcd.endpoint()
        ),
    )?;
    tmux.wait_for(scope, Duration::from_secs(20))?;
    let key = format!("/service/{scope}/config");
    let (_, raw, _) = lab
        .etcd
        .get_prefix(&key)?
        .into_iter()
        .next()
        .context("no config key")?;
    let paused = raw.replacen('{', "{\"pause\":true,", 1);
    let t = Instant::now();
    lab.etcd.put(&key, &paused)?;
    while !tmux.screen().contains("PAUSED") {
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(10),
            "the pause never showed on the console"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    lab.etcd.put(&key, &raw)?;
    Ok(ms)
}

/// The repetition count given as the first argument, else `default`; at least 1.
fn reps_arg(args: &[String], default: usize) -> usize {
    args.first()
        .and_then(|r| r.parse().ok())
        .unwrap_or(default)
        .max(1)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn main() -> Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!(
            "usage: bench all [REPS] [PATRONI_EXECUTABLE] [PATRONICTL_EXECUTABLE]   every scenario, one JSON document\n       bench quick                                  one repetition, pgpilot only, short (CI)\n       bench [REPS] [PATRONI_EXECUTABLE]            bootstrap, REST, idle RSS/CPU\n       bench failover [REPS] [PATRONI_EXECUTABLE]\n       bench switchover [REPS] [PATRONI_EXECUTABLE]\n       bench console [REPS] [PATRONICTL_EXECUTABLE]\n       bench tls [REPS] [PATRONI_EXECUTABLE]        bootstrap over etcd TLS, REST over TLS\n       bench raft [REPS]                            machine loss: each agent's own etcd member (raft:) vs an external 3-member etcd\n       bench versions [REPS]                        pgpilot on PostgreSQL 15 and 18: bootstrap, switchover gap, postmaster crash gap\n       bench replicas [PATRONI_EXECUTABLE] [SCALE]  a replica of a pgbench database (scale 70: ~1 GB) by pg_basebackup and by pgBackRest\n       bench split [REPS] [PATRONI_EXECUTABLE] [SCENARIOS]   split brain, lost commits (see BENCHMARKS.md); SCENARIOS: comma-separated, of agent_sigkill, network_loss, strict_sync_failover, agent_sigstop, failsafe_flood"
        );
        return Ok(());
    }
    if args.first().is_some_and(|a| a == "console") {
        args.remove(0);
        let reps = reps_arg(&args, 20);
        println!("{}", console_summary(reps, args.get(1).map(PathBuf::from))?);
        return Ok(());
    }
    if args.first().is_some_and(|a| a == "split") {
        args.remove(0);
        let reps = reps_arg(&args, 1);
        println!(
            "{}",
            split_summary(
                reps,
                args.get(1).map(PathBuf::from),
                false,
                args.get(2).map(String::as_str)
            )?
        );
        return Ok(());
    }
    if args.first().is_some_and(|a| a == "replicas") {
        args.remove(0);
        let scale = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(70);
        println!(
            "{}",
            replicas_summary(args.first().map(PathBuf::from), scale)?
        );
        return Ok(());
    }
    if args.first().is_some_and(|a| a == "versions") {
        args.remove(0);
        let reps = reps_arg(&args, 3);
        println!("{}", versions_summary(reps)?);
        return Ok(());
    }
    if args.first().is_some_and(|a| a == "tls") {
        args.remove(0);
        let reps = reps_arg(&args, 3);
        println!("{}", tls_summary(reps, args.get(1).map(PathBuf::from), 10)?);
        return Ok(());
    }
    if args.first().is_some_and(|a| a == "raft") {
        args.remove(0);
        let reps = reps_arg(&args, 3);
        println!("{}", raft_summary(reps)?);
        return Ok(());
    }
    if args.first().is_some_and(|a| a == "quick") {
        return all(1, None, None, true);
    }
    if args.first().is_some_and(|a| a == "all") {
        args.remove(0);
        let reps = reps_arg(&args, 3);
        return all(
            reps,
            args.get(1).map(PathBuf::from),
            args.get(2).map(PathBuf::from),
            false,
        );
    }
    if args.first().is_some_and(|a| a == "switchover") {
        args.remove(0);
        let reps = reps_arg(&args, 3);
        return switchover(reps, args.get(1).map(PathBuf::from));
    }
    if args.first().is_some_and(|a| a == "failover") {
        args.remove(0);
        let reps = reps_arg(&args, 3);
        return failover(reps, args.get(1).map(PathBuf::from));
    }
    let reps = reps_arg(&args, 3);
    println!(
        "{}",
        basics_summary(reps, args.get(1).map(PathBuf::from), Durations::FULL)?
    );
    Ok(())
}

/// Bootstrap, REST throughput/latency, idle RSS and CPU, pgpilot then Patroni.
fn basics_summary(reps: usize, patroni: Option<PathBuf>, d: Durations) -> Result<Value> {
    let mut summary = serde_json::Map::new();
    for (kind, daemon) in kinds(patroni) {
        let mut runs = Vec::new();
        for rep in 1..=reps {
            let r = run(kind, daemon.clone(), rep, d)?;
            println!(
                "{kind} run {rep}: bootstrap {:.2} s, GET /primary {:.0} req/s p50 {:.2} ms p99 {:.2} ms, idle RSS {:.1} MiB, idle CPU {:.2} %",
                r.bootstrap_s,
                r.rest_rps,
                r.rest_p50_ms,
                r.rest_p99_ms,
                r.idle_rss_mib,
                r.idle_cpu_pct
            );
            runs.push(r);
        }
        let col = |f: fn(&Run) -> f64| -> Value {
            json!({"runs": runs.iter().map(f).collect::<Vec<_>>(), "median": median(runs.iter().map(f).collect())})
        };
        summary.insert(
            kind.to_string(),
            json!({
                "bootstrap_s": col(|r| r.bootstrap_s),
                "rest_primary_rps": col(|r| r.rest_rps),
                "rest_primary_p50_ms": col(|r| r.rest_p50_ms),
                "rest_primary_p99_ms": col(|r| r.rest_p99_ms),
                "idle_rss_mib": col(|r| r.idle_rss_mib),
                "idle_cpu_pct": col(|r| r.idle_cpu_pct),
                "idle_etcd_msgs_per_member_minute": col(|r| r.idle_etcd_msgs),
                "idle_etcd_kib_sent_per_member_minute": col(|r| r.idle_etcd_kib),
            }),
        );
    }
    Ok(Value::Object(summary))
}

/// `bench all` / `bench quick`: every scenario in one run, one JSON document at the end.
fn all(
    reps: usize,
    patroni: Option<PathBuf>,
    patronictl: Option<PathBuf>,
    quick: bool,
) -> Result<()> {
    let started = Instant::now();
    let d = if quick {
        Durations::QUICK
    } else {
        Durations::FULL
    };
    let basics = basics_summary(reps, patroni.clone(), d)?;
    let switchover = switchover_summary(reps, patroni.clone())?;
    let failures = failover_summary(reps, patroni.clone(), quick)?;
    let split = split_summary(if quick { 1 } else { reps.min(2) }, patroni, quick, None)?;
    let console = console_summary(if quick { 3 } else { 20 }, patronictl)?;
    let date = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let doc = json!({
        "date": date,
        "quick": quick,
        "seconds": started.elapsed().as_secs(),
        "basics": basics,
        "switchover": switchover,
        "failures": failures,
        "split": split,
        "console": console,
    });
    let missing = missing_numbers(&doc);
    println!("{doc}");
    anyhow::ensure!(
        missing.is_empty(),
        "scenarios without a number: {missing:?}"
    );
    Ok(())
}

/// The scenarios of an `all` document that produced no number (for pgpilot).
fn missing_numbers(doc: &Value) -> Vec<String> {
    let wanted = [
        "/basics/pgpilot/bootstrap_s/median",
        "/basics/pgpilot/rest_primary_rps/median",
        "/basics/pgpilot/rest_primary_p50_ms/median",
        "/basics/pgpilot/rest_primary_p99_ms/median",
        "/basics/pgpilot/idle_rss_mib/median",
        "/basics/pgpilot/idle_cpu_pct/median",
        "/switchover/pgpilot/request_s/median",
        "/switchover/pgpilot/write_gap_s/median",
        "/switchover/pgpilot/old_primary_streaming_s/median",
        "/failures/pgpilot/machine_loss_default_s/median",
        "/failures/pgpilot/machine_loss_fastest_s/median",
        "/failures/pgpilot/postmaster_crash_s/median",
        "/split/pgpilot/agent_sigkill/split_brain_s/median",
        "/split/pgpilot/agent_sigkill/lost_acknowledged/median",
        "/split/pgpilot/strict_sync_failover/lost_acknowledged/median",
        "/console/console_list_ms/median",
        "/console/frame_ms_1000_members",
        "/console/frame_ms_charts_1000_members",
        "/console/change_to_screen_ms",
        "/console/journal_to_screen_ms",
    ];
    wanted
        .iter()
        .filter(|p| {
            !doc.pointer(p)
                .and_then(Value::as_f64)
                .is_some_and(|n| n.is_finite() && n >= 0.0)
        })
        .map(|p| p.to_string())
        .collect()
}
