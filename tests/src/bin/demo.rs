//! `demo`: a local 3-node pgpilot cluster (one etcd, three agents, three PostgreSQL 15 servers)
//! on loopback, for trying pgpilot out. Opens the live console on it (on a terminal; otherwise
//! prints the cluster every second) and stops everything it started when the console quits.

use anyhow::Result;
use pgpilot_e2e::{ClusterSpec, Lab, bin_dir};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!(
            "demo: run a local 3-node pgpilot cluster\n\n\
             Usage: demo [--exit-when-healthy]\n\n\
             Starts etcd and three agents (PostgreSQL 15 as the postgres user when run as root)\n\
             under /var/tmp, waits until there is a primary and two streaming replicas, then\n\
             opens the live console on it (q quits it; on a non-terminal, `GET /cluster` is\n\
             printed every second until Enter), and stops everything.\n\
             --exit-when-healthy  stop as soon as the cluster is healthy (for scripts)"
        );
        return Ok(());
    }
    let exit_when_healthy = args.iter().any(|a| a == "--exit-when-healthy");
    let spec = ClusterSpec {
        scope: "demo".into(),
        ..Default::default()
    };
    let mut lab = Lab::new("demo", spec, true)?;
    println!("working directory: {}", lab.work.path.display());
    println!("etcd listening on {}", lab.etcd.endpoint());
    let Lab { cluster, etcd, .. } = &mut lab;
    let started = Instant::now();
    cluster.start_all()?;
    println!("started 3 agents; waiting for a primary and two streaming replicas…");
    let primary = cluster.wait_healthy(Duration::from_secs(120))?;
    println!(
        "healthy after {:.1}s: {} is primary",
        started.elapsed().as_secs_f32(),
        cluster.nodes[primary].name
    );
    for n in &cluster.nodes {
        println!(
            "  {}  REST http://127.0.0.1:{}  PostgreSQL port {}  log {}",
            n.name,
            n.api_port,
            n.pg_port,
            n.log_path.display()
        );
    }
    if exit_when_healthy {
        return Ok(());
    }
    if std::io::stdout().is_terminal() && std::io::stdin().is_terminal() {
        println!("opening the console (q quits it and stops the cluster)…");
        let status = std::process::Command::new(bin_dir().join("console"))
            .arg("--etcd")
            .arg(etcd.endpoint())
            .status();
        if let Err(e) = status {
            eprintln!("cannot run the console: {e}");
        }
        println!("stopping…");
        cluster.shutdown();
        etcd.stop();
        return Ok(());
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::spawn(move || {
        let mut buf = String::new();
        let _ = std::io::stdin().read_line(&mut buf);
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    println!("press Enter (or Ctrl-C) to stop the cluster");
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        if let Some(n) = cluster.nodes.first()
            && let Ok((200, body)) = n.get("/cluster")
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&body)
        {
            print!("\x1b[2K");
            for m in v["members"].as_array().cloned().unwrap_or_default() {
                print!(
                    "{} {} {} lag={}  ",
                    m["name"].as_str().unwrap_or(""),
                    m["role"].as_str().unwrap_or(""),
                    m["state"].as_str().unwrap_or(""),
                    m.get("lag")
                        .map(|l| l.to_string())
                        .unwrap_or_else(|| "-".into())
                );
            }
            print!("\r");
            use std::io::Write;
            let _ = std::io::stdout().flush();
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    println!("\nstopping…");
    cluster.shutdown();
    etcd.stop();
    Ok(())
}
