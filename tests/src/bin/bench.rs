//! `bench`: pgpilot and Patroni side by side on this machine, with the same etcd, PostgreSQL 15
//! and YAML. Scenarios: bootstrap (start → leader + 2 streaming replicas), REST `GET /primary`
//! on the leader under wrk (16 connections), and idle daemon RSS; with `failover`, the client
//! write gap (a writer inserting every 20 ms through a multi-host `target_session_attrs=
//! read-write` connection string) when the leader's machine dies (agent, postmaster and
//! children SIGKILLed) at default and at the fastest accepted timing, and when only the
//! postmaster is killed. Prints a line per measurement and a JSON summary (medians) at the end.
//! Timing is measured here, never asserted in tests.
//!
//! Usage: bench [REPS] [PATRONI_EXECUTABLE]
//!        bench failover [REPS] [PATRONI_EXECUTABLE]
//!        bench console [REPS] [PATRONICTL_EXECUTABLE]   (`console --batch list` vs `patronictl list`)
//!        bench switchover [REPS] [PATRONI_EXECUTABLE]
//!
//! `switchover`: `POST /switchover` to a named candidate on the leader while the writer runs:
//! the time until the request returns, the client write gap, and the time until the old
//! primary streams from the new one.

use anyhow::{Context, Result};
use pgpilot_e2e::{ClusterSpec, Lab, Writer, bin_dir};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

struct Run {
    bootstrap_s: f64,
    rest_rps: f64,
    rest_p99_ms: f64,
    idle_rss_mib: f64,
}

/// Runs wrk against `url`: (requests per second, p99 latency in ms).
fn wrk(url: &str) -> Result<(f64, f64)> {
    let out = Command::new("wrk")
        .args(["-t2", "-c16", "-d10s", "--latency", url])
        .output()
        .context("cannot run wrk: apt-get install wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(|v| v.trim())
        .and_then(|v| {
            let (num, unit) = v.split_at(v.find(|c: char| c.is_alphabetic()).unwrap_or(v.len()));
            let n: f64 = num.parse().ok()?;
            Some(match unit {
                "us" => n / 1000.0,
                "ms" => n,
                "s" => n * 1000.0,
                _ => n,
            })
        })
        .unwrap_or(0.0);
    Ok((rps, p99))
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

fn run(kind: &str, daemon: Option<PathBuf>, rep: usize) -> Result<Run> {
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
    let (rest_rps, rest_p99_ms) = wrk(&lab.cluster.nodes[p].api("/primary"))?;
    std::thread::sleep(Duration::from_secs(20));
    let rss: Vec<f64> = lab
        .cluster
        .nodes
        .iter()
        .filter_map(|n| n.agent.as_ref().map(|a| rss_mib(a.pid())))
        .collect();
    let idle_rss_mib = rss.iter().sum::<f64>() / rss.len().max(1) as f64;
    lab.cluster.shutdown();
    Ok(Run {
        bootstrap_s,
        rest_rps,
        rest_p99_ms,
        idle_rss_mib,
    })
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
    daemon: Option<PathBuf>,
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

/// One switchover measurement: (request returns, write gap, old primary streaming), seconds.
fn switchover_once(kind: &str, daemon: Option<PathBuf>, rep: usize) -> Result<(f64, f64, f64)> {
    let spec = ClusterSpec {
        scope: format!("sw-{kind}-{rep}"),
        ttl: 30,
        loop_wait: 10,
        retry_timeout: 10,
        daemon,
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

/// `bench switchover`: pgpilot then Patroni.
fn switchover(reps: usize, patroni: Option<PathBuf>) -> Result<()> {
    let mut kinds: Vec<(&str, Option<PathBuf>)> = vec![("pgpilot", None)];
    if let Some(p) = patroni {
        kinds.push(("patroni", Some(p)));
    }
    let mut summary = serde_json::Map::new();
    for (kind, daemon) in kinds {
        let (mut ret, mut gaps, mut streams) = (Vec::new(), Vec::new(), Vec::new());
        for rep in 1..=reps {
            let (r, g, s) = switchover_once(kind, daemon.clone(), rep)?;
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
    println!("{}", Value::Object(summary));
    Ok(())
}

/// `bench failover`: write gaps, pgpilot then Patroni.
fn failover(reps: usize, patroni: Option<PathBuf>) -> Result<()> {
    let mut kinds: Vec<(&str, Option<PathBuf>)> = vec![("pgpilot", None)];
    if let Some(p) = patroni {
        kinds.push(("patroni", Some(p)));
    }
    let mut summary = serde_json::Map::new();
    for (kind, daemon) in kinds {
        // The fastest timing each accepts: pgpilot ttl 5 / loop_wait 1 / retry_timeout 1;
        // Patroni refuses a ttl under 20.
        let fast = if kind == "pgpilot" {
            (5, 1, 1)
        } else {
            (20, 1, 5)
        };
        let scenarios = [
            ("machine_loss_ttl30_s", Fault::MachineLoss, (30, 10, 10)),
            ("machine_loss_fastest_s", Fault::MachineLoss, fast),
            ("postmaster_crash_s", Fault::PostmasterCrash, (30, 10, 10)),
        ];
        let mut out = serde_json::Map::new();
        for (name, fault, timing) in scenarios {
            let mut gaps = Vec::new();
            for rep in 1..=reps {
                let g = write_gap(kind, daemon.clone(), rep, fault, timing)?;
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
    println!("{}", Value::Object(summary));
    Ok(())
}

/// `bench console`: wall time of `console --batch list` and `patronictl list` on the same
/// 3-node cluster, each run `reps` times.
fn console_list(reps: usize, patronictl: Option<PathBuf>) -> Result<()> {
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
            Command::new(bin_dir().join("console"))
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
    println!(
        "{}",
        json!({"console_list_ms": {"runs": ours.clone(), "median": median(ours)},
               "patronictl_list_ms": {"runs": theirs.clone(), "median": median(theirs)}})
    );
    lab.cluster.shutdown();
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn main() -> Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!(
            "usage: bench [REPS] [PATRONI_EXECUTABLE]\n       bench failover [REPS] [PATRONI_EXECUTABLE]\n       bench switchover [REPS] [PATRONI_EXECUTABLE]\n       bench console [REPS] [PATRONICTL_EXECUTABLE]   (see BENCHMARKS.md)"
        );
        return Ok(());
    }
    if args.first().is_some_and(|a| a == "console") {
        args.remove(0);
        let reps = args
            .first()
            .and_then(|r| r.parse().ok())
            .unwrap_or(20)
            .max(1);
        return console_list(reps, args.get(1).map(PathBuf::from));
    }
    if args.first().is_some_and(|a| a == "switchover") {
        args.remove(0);
        let reps = args
            .first()
            .and_then(|r| r.parse().ok())
            .unwrap_or(3)
            .max(1);
        return switchover(reps, args.get(1).map(PathBuf::from));
    }
    if args.first().is_some_and(|a| a == "failover") {
        args.remove(0);
        let reps = args
            .first()
            .and_then(|r| r.parse().ok())
            .unwrap_or(3)
            .max(1);
        return failover(reps, args.get(1).map(PathBuf::from));
    }
    let reps: usize = args
        .first()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3)
        .max(1);
    let mut kinds: Vec<(&str, Option<PathBuf>)> = vec![("pgpilot", None)];
    if let Some(p) = args.get(1) {
        kinds.push(("patroni", Some(PathBuf::from(p))));
    }
    let mut summary = serde_json::Map::new();
    for (kind, daemon) in kinds {
        let mut runs = Vec::new();
        for rep in 1..=reps {
            let r = run(kind, daemon.clone(), rep)?;
            println!(
                "{kind} run {rep}: bootstrap {:.2} s, GET /primary {:.0} req/s p99 {:.2} ms, idle RSS {:.1} MiB",
                r.bootstrap_s, r.rest_rps, r.rest_p99_ms, r.idle_rss_mib
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
                "rest_primary_p99_ms": col(|r| r.rest_p99_ms),
                "idle_rss_mib": col(|r| r.idle_rss_mib),
            }),
        );
    }
    println!("{}", Value::Object(summary));
    Ok(())
}
