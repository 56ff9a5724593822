//! `demo`: pgpilot's cluster in a box — a local etcd, three agents with PostgreSQL 15 and
//! HAProxy, with failure switches to watch it heal. This module owns the command line; the
//! work is in `pgpilot_e2e::demo`.

use anyhow::Result;
use clap::{Parser, Subcommand};
use pgpilot_e2e::demo::{self, Switch, UpOptions};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const AFTER: &str = "\
Examples:
  demo                          start the cluster, wait until healthy, open the console
  demo up --no-console          the same for scripts: returns once healthy
  demo cut node1                kill node1's agent and PostgreSQL (a dead machine)
  demo restore node1            start its agent again: it rejoins
  demo crash node2              SIGKILL only node2's postmaster: its agent restarts it
  demo isolate node1            cut node1 off from etcd and the other nodes (root: namespaces)
  demo heal node1               reconnect it
  demo etcd stop                stop etcd (the primary goes read-only); demo etcd start
  demo status                   what runs, where (--json for scripts); demo down --wipe stops
                                and deletes it all

In the console (demo console, or demo up): C cut/restore, K crash, N isolate/heal, E etcd
stop/start on the selected member, each after a confirmation.

Exit codes: 0 done; 1 failed or refused (the reason on stderr); 2 usage error.";

/// pgpilot demo: a local 3-node cluster to watch and break.
///
/// Starts one etcd, three pgpilot agents that bootstrap PostgreSQL 15 (as the postgres user
/// when run as root) and HAProxy (writes on port 5000, reads on 5001, when free), all under
/// --dir and detached: they run until `demo down`. As root with nftables, each node gets its
/// own network namespace so that it can be isolated; otherwise everything is on loopback.
#[derive(Parser, Debug)]
#[command(name = "demo", version, about, long_about, after_help = AFTER)]
struct Cli {
    /// Where the demo keeps its data, logs and record (demo.json).
    #[arg(long, global = true, env = "PGPILOT_DEMO_DIR", default_value = demo::DEFAULT_DIR)]
    dir: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start the cluster (or the one `down` kept), wait until healthy, open the console.
    ///
    /// Quitting the console asks whether to stop the cluster.
    Up {
        /// Return once the cluster is healthy instead of opening the console.
        #[arg(long)]
        no_console: bool,
        /// Do not start HAProxy.
        #[arg(long)]
        no_haproxy: bool,
        /// Keep every node on loopback even as root (no isolate switch).
        #[arg(long)]
        no_netns: bool,
    },
    /// Stop everything the demo started, by PID, and check that no process or port is left.
    Down {
        /// Also delete the data directory (the next `up` starts from scratch).
        #[arg(long)]
        wipe: bool,
    },
    /// What runs and where.
    Status {
        /// As JSON, for scripts: the record (demo.json) with what runs now and each member's
        /// role and state.
        #[arg(long)]
        json: bool,
    },
    /// Open the live console on the running demo, with the failure-switch keys.
    Console,
    /// Kill a node's agent and PostgreSQL with SIGKILL, as the machine's death would.
    Cut { node: String },
    /// Start a cut node's agent again.
    Restore { node: String },
    /// SIGKILL a node's postmaster only; its agent starts it again.
    Crash { node: String },
    /// Drop a node's traffic to and from etcd and the other nodes (needs the namespaces).
    Isolate { node: String },
    /// Reconnect an isolated node.
    Heal { node: String },
    /// Stop or start etcd.
    Etcd {
        #[arg(value_parser = ["stop", "start"])]
        action: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let dir = cli.dir;
    let command = cli.command.unwrap_or(Command::Up {
        no_console: false,
        no_haproxy: false,
        no_netns: false,
    });
    let switch = match command {
        Command::Up {
            no_console,
            no_haproxy,
            no_netns,
        } => return up(&dir, no_console, !no_haproxy, !no_netns),
        Command::Down { wipe } => return down(&dir, wipe),
        Command::Status { json: false } => {
            print!("{}", demo::status(&dir)?);
            return Ok(());
        }
        Command::Status { json: true } => {
            println!("{:#}", demo::status_json(&dir)?);
            return Ok(());
        }
        Command::Console => return console(&demo::State::load(&dir)?),
        Command::Cut { node } => Switch::Cut(node),
        Command::Restore { node } => Switch::Restore(node),
        Command::Crash { node } => Switch::Crash(node),
        Command::Isolate { node } => Switch::Isolate(node),
        Command::Heal { node } => Switch::Heal(node),
        Command::Etcd { action } if action == "stop" => Switch::EtcdStop,
        Command::Etcd { .. } => Switch::EtcdStart,
    };
    match demo::flip(&dir, &switch) {
        Ok(msg) => {
            demo::journal(&dir, &msg);
            println!("{msg}");
            Ok(())
        }
        Err(e) => {
            demo::journal(&dir, &format!("refused {switch:?}: {e:#}"));
            Err(e)
        }
    }
}

fn up(dir: &Path, no_console: bool, haproxy: bool, netns: bool) -> Result<()> {
    let options = UpOptions {
        dir: dir.to_path_buf(),
        haproxy,
        netns,
    };
    let state = demo::up(&options, &mut |line| {
        println!("{line}");
        let _ = std::io::stdout().flush();
    })?;
    print!("{}", demo::hints(&state));
    if no_console {
        return Ok(());
    }
    let interactive = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    if !interactive {
        println!("not a terminal: the cluster keeps running (`demo down` stops it)");
        return Ok(());
    }
    console(&state)?;
    print!("stop the demo cluster? [Y]es / [n]o, keep it running / [w]ipe it too: ");
    std::io::stdout().flush()?;
    let answer = one_key()?;
    println!("{answer}");
    match answer.to_lowercase().as_str() {
        "n" | "no" => {
            println!("still running: `demo console` opens the console again, `demo down` stops it");
            Ok(())
        }
        "w" | "wipe" => down(dir, true),
        _ => down(dir, false),
    }
}

/// One key pressed, without waiting for Enter (Enter or Escape: the default, an empty answer;
/// Ctrl-C: "n", leaving the cluster running as an interrupted demo always did).
fn one_key() -> Result<String> {
    use crossterm::event::{Event, KeyCode, KeyEventKind, KeyModifiers, read};
    use crossterm::terminal::{disable_raw_mode, enable_raw_mode};
    enable_raw_mode()?;
    let key = loop {
        match read() {
            Ok(Event::Key(k)) if k.kind == KeyEventKind::Press => {
                break match k.code {
                    KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => {
                        "n".to_string()
                    }
                    KeyCode::Char(c) => c.to_string(),
                    _ => String::new(),
                };
            }
            Ok(_) => continue,
            Err(e) => {
                let _ = disable_raw_mode();
                return Err(e.into());
            }
        }
    };
    disable_raw_mode()?;
    Ok(key)
}

fn console(state: &demo::State) -> Result<()> {
    let status = std::process::Command::new(state.bin_dir.join("pgpilot-console"))
        .arg("--etcd")
        .arg(state.etcd_endpoint())
        .arg("--demo")
        .arg(&state.dir)
        .status()
        .map_err(|e| anyhow::anyhow!("cannot run the console: {e}"))?;
    if !status.success() {
        eprintln!("the console ended with {status}");
    }
    Ok(())
}

fn down(dir: &Path, wipe: bool) -> Result<()> {
    println!("stopping the demo in {}…", dir.display());
    let report = demo::down(dir, wipe)?;
    for s in &report.stopped {
        println!("  {s}");
    }
    if report.left.is_empty() {
        println!("nothing left running");
        Ok(())
    } else {
        for l in &report.left {
            eprintln!("  still there: {l}");
        }
        anyhow::bail!("some of the demo is still running (see above)")
    }
}
