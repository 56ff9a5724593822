//! Agent-death fencing: a tiny guard process that stops a primary PostgreSQL the moment its
//! agent dies abruptly (SIGKILL, OOM kill, panic), so that the old primary has stopped taking
//! writes long before its leader lease can run out and a replica is promoted.
//!
//! The agent starts the guard (its own binary with `--fence-guard <data_dir>`) with a pipe as the
//! guard's stdin and tells it, one line at a time, the etcd endpoints (`etcd h1:p1,h2:p2`) and
//! whether the local PostgreSQL runs as an unpaused primary (`armed <lease>`, with the agent's
//! etcd lease) or not (`disarmed`). An orderly exit says `exit`. When the pipe ends without
//! `exit` — the kernel closes it whatever way the agent died — an armed guard sends the
//! postmaster a fast shutdown (SIGINT: sessions are terminated at once, new ones refused), and an
//! immediate one (SIGQUIT) if it has not stopped after [`FAST_STOP_GRACE`]. Once the postmaster
//! is gone it revokes the agent's lease, so that the leader key goes at once and a replica takes
//! over without waiting out the ttl (if etcd cannot be reached, the lease simply expires). A
//! restarted agent finds PostgreSQL stopped and starts it again in whatever role the cluster
//! gives it.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the guard lets a fast shutdown run before it forces an immediate one.
const FAST_STOP_GRACE: Duration = Duration::from_secs(20);

/// What the guard does if the agent dies now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fencing {
    /// PostgreSQL runs (or is about to run) as primary: stop it.
    Armed,
    /// Leave PostgreSQL alone (replica, stopped, or the cluster is paused).
    Disarmed,
    /// No guard process: the agent could not start one (see the log).
    Unavailable,
}

impl Fencing {
    pub fn as_str(self) -> &'static str {
        match self {
            Fencing::Armed => "armed",
            Fencing::Disarmed => "disarmed",
            Fencing::Unavailable => "unavailable",
        }
    }
}

/// The agent's handle on its guard process.
pub struct FenceGuard {
    data_dir: PathBuf,
    /// `host:port` of each etcd endpoint, for revoking the lease.
    etcd: Vec<String>,
    child: Option<(Child, ChildStdin)>,
    state: Fencing,
    /// The lease the guard was last told about while armed.
    lease: Option<i64>,
}

impl FenceGuard {
    /// Starts a guard for the PostgreSQL in `data_dir`, disarmed.
    pub fn start(data_dir: &Path, etcd: &[String]) -> FenceGuard {
        let mut g = FenceGuard {
            data_dir: data_dir.to_path_buf(),
            etcd: etcd.to_vec(),
            child: None,
            state: Fencing::Unavailable,
            lease: None,
        };
        g.respawn();
        g
    }

    fn respawn(&mut self) {
        let exe = match std::env::current_exe() {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(
                    "cannot find the agent's own executable to start the fencing guard: {e}; a primary will not be stopped if this agent dies abruptly"
                );
                self.state = Fencing::Unavailable;
                return;
            }
        };
        let spawned = Command::new(exe)
            .arg("--fence-guard")
            .arg(&self.data_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn();
        match spawned {
            Ok(mut child) => match child.stdin.take() {
                Some(mut stdin) => {
                    tracing::debug!(pid = child.id(), "fencing guard started");
                    let hello = format!("etcd {}\n", self.etcd.join(","));
                    let _ = stdin.write_all(hello.as_bytes());
                    self.child = Some((child, stdin));
                    self.state = Fencing::Disarmed;
                    self.lease = None;
                }
                None => self.state = Fencing::Unavailable,
            },
            Err(e) => {
                tracing::error!(
                    "cannot start the fencing guard: {e}; a primary will not be stopped if this agent dies abruptly"
                );
                self.state = Fencing::Unavailable;
            }
        }
    }

    pub fn state(&self) -> Fencing {
        self.state
    }

    /// Arms (with the agent's current etcd lease) or disarms the guard; a guard that died is
    /// started again (and told).
    pub fn set(&mut self, armed: bool, lease: Option<i64>) {
        let want = if armed {
            Fencing::Armed
        } else {
            Fencing::Disarmed
        };
        let lease = lease.filter(|_| armed);
        if self.state == want && self.lease == lease {
            return;
        }
        for attempt in 0..2 {
            if self.child.is_none() {
                self.respawn();
            }
            let Some((child, stdin)) = self.child.as_mut() else {
                return;
            };
            let line = match (armed, lease) {
                (true, Some(id)) => format!("armed {id}\n"),
                (true, None) => "armed\n".to_string(),
                (false, _) => "disarmed\n".to_string(),
            };
            match stdin.write_all(line.as_bytes()).and_then(|_| stdin.flush()) {
                Ok(()) => {
                    tracing::debug!(state = want.as_str(), "fencing guard");
                    self.state = want;
                    self.lease = lease;
                    return;
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    self.child = None;
                    self.state = Fencing::Unavailable;
                    if attempt == 0 {
                        tracing::warn!("the fencing guard is gone ({e}); starting it again");
                    }
                }
            }
        }
    }

    /// An orderly exit: the guard leaves PostgreSQL alone and ends.
    pub fn release(&mut self) {
        if let Some((mut child, mut stdin)) = self.child.take() {
            let _ = stdin.write_all(b"exit\n").and_then(|_| stdin.flush());
            drop(stdin);
            let _ = child.wait();
        }
        self.state = Fencing::Unavailable;
    }

    /// Reaps a guard that exited on its own (it never should) so the next `set` restarts it.
    pub fn check(&mut self) {
        if let Some((child, _)) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            tracing::warn!("the fencing guard exited ({status}); starting it again");
            self.child = None;
            let want = self.state == Fencing::Armed;
            let lease = self.lease;
            self.state = Fencing::Unavailable;
            self.respawn();
            if want {
                self.set(true, lease);
            }
        }
    }
}

/// The guard process's whole life: follows the agent's state lines on stdin, fences an armed
/// primary when stdin ends without `exit`. Returns the process exit code.
pub fn run_guard(data_dir: &Path) -> u8 {
    // Ctrl-C in a terminal reaches the whole process group: the agent handles it and says
    // `exit`; the guard must outlive it to see that.
    for sig in [
        nix::sys::signal::Signal::SIGINT,
        nix::sys::signal::Signal::SIGHUP,
        nix::sys::signal::Signal::SIGTERM,
    ] {
        // SAFETY: SIG_IGN installs no handler code; nothing can run concurrently this early.
        let _ = unsafe { nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::SigIgn) };
    }
    let mut armed = false;
    let mut lease: Option<i64> = None;
    let mut etcd: Vec<String> = Vec::new();
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("armed"), id) => {
                armed = true;
                lease = id.and_then(|i| i.parse().ok());
            }
            (Some("disarmed"), _) => armed = false,
            (Some("etcd"), Some(hosts)) => {
                etcd = hosts.split(',').map(str::to_string).collect();
            }
            (Some("exit"), _) => return 0,
            _ => {}
        }
    }
    if !armed {
        return 0;
    }
    let say = |msg: &str| eprintln!("pgpilot fencing guard: {msg}");
    say(&format!(
        "the agent died while PostgreSQL ran as primary in {}: stopping it so that no second primary can appear",
        data_dir.display()
    ));
    match fence(data_dir) {
        Ok(msg) => {
            say(&msg);
            if let Some(id) = lease {
                match revoke_lease(&etcd, id) {
                    Ok(host) => say(&format!(
                        "revoked the agent's etcd lease {id} at {host}: a replica can take over now"
                    )),
                    Err(e) => say(&format!(
                        "could not revoke the agent's etcd lease {id} ({e}); it expires after the ttl"
                    )),
                }
            }
            0
        }
        Err(msg) => {
            say(&msg);
            1
        }
    }
}

/// Revokes an etcd lease through the v3 JSON gateway (`POST /v3/lease/revoke`), trying each
/// endpoint; returns the one that answered.
fn revoke_lease(endpoints: &[String], id: i64) -> Result<String, String> {
    use std::io::Read;
    use std::net::ToSocketAddrs;
    let body = format!("{{\"ID\":\"{id}\"}}");
    let mut last = "no etcd endpoint known".to_string();
    for host in endpoints {
        let host = host
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let attempt = (|| -> Result<(), String> {
            let addr = host
                .to_socket_addrs()
                .map_err(|e| e.to_string())?
                .next()
                .ok_or("no address")?;
            let mut conn = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                .map_err(|e| e.to_string())?;
            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = conn.set_write_timeout(Some(Duration::from_secs(2)));
            let req = format!(
                "POST /v3/lease/revoke HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            conn.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
            let mut answer = String::new();
            let _ = conn.read_to_string(&mut answer);
            let status = answer.lines().next().unwrap_or_default().to_string();
            if status.split_whitespace().nth(1) == Some("200") {
                Ok(())
            } else {
                Err(format!("answered {status:?}"))
            }
        })();
        match attempt {
            Ok(()) => return Ok(host),
            Err(e) => last = format!("{host}: {e}"),
        }
    }
    Err(last)
}

/// Stops the postmaster of `data_dir`: fast, then immediate.
fn fence(data_dir: &Path) -> Result<String, String> {
    use nix::sys::signal::{Signal, kill};
    let Some(pid) = postmaster_pid(data_dir) else {
        return Ok("PostgreSQL is not running".into());
    };
    let pid = nix::unistd::Pid::from_raw(pid);
    kill(pid, Signal::SIGINT).map_err(|e| format!("cannot signal the postmaster {pid}: {e}"))?;
    let started = Instant::now();
    let mut immediate = false;
    while kill(pid, None).is_ok() {
        if !immediate && started.elapsed() > FAST_STOP_GRACE {
            let _ = kill(pid, Signal::SIGQUIT);
            immediate = true;
        }
        if started.elapsed() > FAST_STOP_GRACE * 2 {
            return Err(format!(
                "postmaster {pid} did not stop within {}s, even after an immediate shutdown",
                (FAST_STOP_GRACE * 2).as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(if immediate {
        format!("postmaster {pid} stopped (immediate shutdown)")
    } else {
        format!("postmaster {pid} stopped")
    })
}

/// The PID in `postmaster.pid`, when that process exists and runs in `data_dir`.
fn postmaster_pid(data_dir: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    if pid <= 0 {
        return None;
    }
    // a stale file may name an unrelated process: the postmaster's cwd is its data directory
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
    let same = match (cwd.canonicalize(), data_dir.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => cwd == data_dir,
    };
    same.then_some(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_pid_file_names_no_postmaster() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(postmaster_pid(dir.path()), None);
        // PID 1 does not run in this directory
        std::fs::write(dir.path().join("postmaster.pid"), "1\n/data\n").unwrap();
        assert_eq!(postmaster_pid(dir.path()), None);
        std::fs::write(dir.path().join("postmaster.pid"), "garbage").unwrap();
        assert_eq!(postmaster_pid(dir.path()), None);
    }

    #[test]
    fn a_process_running_in_the_directory_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new("sleep")
            .arg("30")
            .current_dir(dir.path())
            .spawn()
            .unwrap();
        let pid = child.id();
        std::fs::write(
            dir.path().join("postmaster.pid"),
            format!("{pid}\n{}\n", dir.path().display()),
        )
        .unwrap();
        assert_eq!(postmaster_pid(dir.path()), Some(pid as i32));
        // reaped at once, as init reaps an orphaned postmaster
        let reaper = std::thread::spawn(move || child.wait());
        // SIGINT ends `sleep`, as it starts a postmaster's fast shutdown
        let msg = fence(dir.path()).unwrap();
        assert!(msg.contains("stopped"), "{msg}");
        reaper.join().unwrap().unwrap();
    }
}
