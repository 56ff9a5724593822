//! Agent-death fencing: a tiny guard process that stops a primary PostgreSQL the moment its
//! agent dies abruptly (SIGKILL, OOM kill, panic), so that the old primary has stopped taking
//! writes long before its leader lease can run out and a replica is promoted.
//!
//! The agent starts the guard (its own binary with `--fence-guard <data_dir>`) with a pipe as the
//! guard's stdin and tells it, one line at a time, whether the local PostgreSQL runs as an
//! unpaused primary (`armed`) or not (`disarmed`). An orderly exit says `exit`. When the pipe
//! ends without `exit` — the kernel closes it whatever way the agent died — an armed guard sends
//! the postmaster a fast shutdown (SIGINT: sessions are terminated at once, new ones refused),
//! and an immediate one (SIGQUIT) if it has not stopped after [`FAST_STOP_GRACE`]. A restarted
//! agent finds PostgreSQL stopped and starts it again in whatever role the cluster gives it.

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
    child: Option<(Child, ChildStdin)>,
    state: Fencing,
}

impl FenceGuard {
    /// Starts a guard for the PostgreSQL in `data_dir`, disarmed.
    pub fn start(data_dir: &Path) -> FenceGuard {
        let mut g = FenceGuard {
            data_dir: data_dir.to_path_buf(),
            child: None,
            state: Fencing::Unavailable,
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
                Some(stdin) => {
                    tracing::debug!(pid = child.id(), "fencing guard started");
                    self.child = Some((child, stdin));
                    self.state = Fencing::Disarmed;
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

    /// Arms or disarms the guard; a guard that died is started again (and told).
    pub fn set(&mut self, armed: bool) {
        let want = if armed {
            Fencing::Armed
        } else {
            Fencing::Disarmed
        };
        if self.state == want {
            return;
        }
        for attempt in 0..2 {
            if self.child.is_none() {
                self.respawn();
            }
            let Some((child, stdin)) = self.child.as_mut() else {
                return;
            };
            let line = if armed { "armed\n" } else { "disarmed\n" };
            match stdin.write_all(line.as_bytes()).and_then(|_| stdin.flush()) {
                Ok(()) => {
                    tracing::debug!(state = want.as_str(), "fencing guard");
                    self.state = want;
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
            self.state = Fencing::Unavailable;
            self.respawn();
            if want {
                self.set(true);
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
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        match line.as_deref().map(str::trim) {
            Ok("armed") => armed = true,
            Ok("disarmed") => armed = false,
            Ok("exit") => return 0,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    if !armed {
        return 0;
    }
    eprintln!(
        "pgpilot fencing guard: the agent died while PostgreSQL ran as primary in {}: stopping it so that no second primary can appear",
        data_dir.display()
    );
    match fence(data_dir) {
        Ok(msg) => {
            eprintln!("pgpilot fencing guard: {msg}");
            0
        }
        Err(msg) => {
            eprintln!("pgpilot fencing guard: {msg}");
            1
        }
    }
}

/// Stops the postmaster of `data_dir`: fast, then immediate.
fn fence(data_dir: &Path) -> Result<String, String> {
    use nix::sys::signal::{Signal, kill};
    let pid = postmaster_pid(data_dir)
        .ok_or_else(|| "no postmaster.pid: PostgreSQL is not running".to_string())?;
    let pid = nix::unistd::Pid::from_raw(pid);
    kill(pid, Signal::SIGINT).map_err(|e| format!("cannot signal the postmaster {pid}: {e}"))?;
    let started = Instant::now();
    while kill(pid, None).is_ok() {
        if started.elapsed() > FAST_STOP_GRACE {
            let _ = kill(pid, Signal::SIGQUIT);
            return Ok(format!(
                "the fast shutdown of postmaster {pid} took more than {}s: sent an immediate shutdown",
                FAST_STOP_GRACE.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(format!("postmaster {pid} stopped"))
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
