//! `bench`: pgpilot and Patroni side by side on this machine, with the same etcd, PostgreSQL 15
//! and YAML. Scenarios: bootstrap (start → leader + 2 streaming replicas), REST `GET /primary`
//! on the leader under wrk (16 connections), and idle daemon RSS. Prints a line per measurement
//! and a JSON summary (medians) at the end. Timing is measured here, never asserted in tests.
//!
//! Usage: bench [REPS] [PATRONI_EXECUTABLE]

use anyhow::{Context, Result};
use pgpilot_e2e::{ClusterSpec, Lab};
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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("usage: bench [REPS] [PATRONI_EXECUTABLE]   (see BENCHMARKS.md)");
        return Ok(());
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
