//! Fencing of a primary whose agent dies or stalls: a tiny guard process that stops a primary
//! PostgreSQL the moment its agent dies abruptly (SIGKILL, OOM kill, panic), or stops making
//! progress (SIGSTOP, a process stuck in uninterruptible I/O, a swap storm), so that the old
//! primary has stopped taking writes before its leader lease can run out and a replica is
//! promoted.
//!
//! The agent starts the guard (its own binary with `--fence-guard <data_dir>`) with a pipe as the
//! guard's stdin and tells it, one line at a time, how to reach etcd (`etcd-config <json>`:
//! endpoints, TLS files and credentials, the same as the agent's, again after a reload),
//! whether the local PostgreSQL runs as an unpaused primary (`armed <lease>`, with the agent's
//! etcd lease) or not (`disarmed`), and, while armed, how long the primary may stay writable
//! without news from the HA loop (`deadline <ms>`: the agent's last lease renewal, or last
//! confirmed failsafe round, plus ttl, less a margin). An orderly exit says `exit`.
//!
//! When the pipe ends without `exit` — the kernel closes it whatever way the agent died — or an
//! armed guard's deadline passes without a newer one, the guard sends the postmaster a fast
//! shutdown (SIGINT: sessions are terminated at once, new ones refused), and an immediate one
//! (SIGQUIT) if it has not stopped after [`FAST_STOP_GRACE`]. A server with `standby.signal` is a
//! replica and is left alone. Once the postmaster is gone the guard revokes the agent's lease, so
//! that the leader key goes at once and a replica takes over without waiting out the ttl (if etcd
//! cannot be reached, the lease simply expires). After a stall the guard stays, disarmed: a
//! thawed agent finds PostgreSQL stopped and another member leading, and rejoins it as a replica;
//! a restarted agent does the same.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the guard lets a fast shutdown run before it forces an immediate one.
const FAST_STOP_GRACE: Duration = Duration::from_secs(20);

/// The longest deadline the guard takes (a day, the longest ttl); a longer one is ignored.
const MAX_DEADLINE_MS: u64 = 86_400_000;

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

/// What the HA loop tells whatever stops its PostgreSQL when the agent cannot: the guard
/// process ([`FenceGuard`]), or the simulation's stand-in.
pub trait Fence: Send + Sync {
    /// What would happen if the agent died now.
    fn state(&self) -> Fencing;
    /// Arms (with the agent's current etcd lease) or disarms.
    fn set(&mut self, armed: bool, lease: Option<i64>);
    /// While armed: the primary may stay writable for `left` more without another deadline.
    fn deadline(&mut self, left: Duration);
    /// How to reach etcd now (a reload changed it).
    fn reconfigure(&mut self, etcd: &shared::config::EtcdConfig);
    /// An orderly exit: PostgreSQL is left alone.
    fn release(&mut self);
    /// Notices a guard that is gone, so the next `set` starts it again.
    fn check(&mut self);
}

impl Fence for FenceGuard {
    fn state(&self) -> Fencing {
        FenceGuard::state(self)
    }
    fn set(&mut self, armed: bool, lease: Option<i64>) {
        FenceGuard::set(self, armed, lease)
    }
    fn deadline(&mut self, left: Duration) {
        FenceGuard::deadline(self, left)
    }
    fn reconfigure(&mut self, etcd: &shared::config::EtcdConfig) {
        FenceGuard::reconfigure(self, etcd)
    }
    fn release(&mut self) {
        FenceGuard::release(self)
    }
    fn check(&mut self) {
        FenceGuard::check(self)
    }
}

/// The agent's handle on its guard process.
pub struct FenceGuard {
    data_dir: PathBuf,
    /// How to reach etcd, for revoking the lease.
    etcd: EtcdAccess,
    child: Option<(Child, ChildStdin)>,
    state: Fencing,
    /// The lease the guard was last told about while armed.
    lease: Option<i64>,
}

impl FenceGuard {
    /// Starts a guard for the PostgreSQL in `data_dir`, disarmed.
    pub fn start(data_dir: &Path, etcd: &shared::config::EtcdConfig) -> FenceGuard {
        let mut g = FenceGuard {
            data_dir: data_dir.to_path_buf(),
            etcd: EtcdAccess::from(etcd),
            child: None,
            state: Fencing::Unavailable,
            lease: None,
        };
        g.respawn();
        g
    }

    fn respawn(&mut self) {
        // /proc/self/exe is this very program even after a package upgrade replaced (deleted)
        // the file it was started from: the guard is the same binary as the agent it watches
        let exe = std::path::PathBuf::from("/proc/self/exe");
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
                    let hello = self.etcd.line();
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

    /// While armed: the primary may stay writable for `left` more without another deadline
    /// from the HA loop; past it the guard fences PostgreSQL as if the agent had died.
    pub fn deadline(&mut self, left: Duration) {
        if self.state != Fencing::Armed {
            return;
        }
        let Some((_, stdin)) = self.child.as_mut() else {
            return;
        };
        let line = format!("deadline {}\n", left.as_millis());
        if let Err(e) = stdin.write_all(line.as_bytes()).and_then(|_| stdin.flush()) {
            tracing::warn!("cannot reach the fencing guard ({e}); it is started again next cycle");
        }
    }

    /// Tells the guard how to reach etcd now (certificates or credentials changed on a
    /// reload).
    pub fn reconfigure(&mut self, etcd: &shared::config::EtcdConfig) {
        self.etcd = EtcdAccess::from(etcd);
        if let Some((_, stdin)) = self.child.as_mut() {
            let _ = stdin
                .write_all(self.etcd.line().as_bytes())
                .and_then(|_| stdin.flush());
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

/// What ends an armed guard's wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// The pipe ended without `exit`: the agent is dead.
    Death,
    /// The deadline passed without a newer one: the agent's HA loop stalled.
    Stall,
}

/// How often a guard past its deadline (or whose agent died while a replica was being
/// promoted) looks again at the server.
const RECHECK: Duration = Duration::from_millis(100);

/// How long a guard whose agent died watches a server that still has `standby.signal`, in
/// case a promotion the agent started completes.
const PROMOTION_WATCH: Duration = Duration::from_secs(120);

/// The guard's view of the agent, from its lines.
#[derive(Debug, Default)]
struct Watch {
    armed: bool,
    lease: Option<i64>,
    etcd: EtcdAccess,
    deadline: Option<Instant>,
    /// The deadline passed: every primary found running is fenced until a new deadline comes.
    expired: bool,
    /// The lease was revoked in this expiry (once is enough).
    revoked: bool,
}

impl Watch {
    /// Takes one line; `true` for `exit`.
    fn line(&mut self, line: &str, now: Instant) -> bool {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("armed"), id) => {
                self.armed = true;
                self.lease = id.and_then(|i| i.parse().ok());
            }
            (Some("disarmed"), _) => {
                self.armed = false;
                self.deadline = None;
                self.expired = false;
            }
            (Some("deadline"), Some(ms)) if self.armed => {
                // a malformed or absurd value is not a deadline: keep the last one
                if let Some(ms) = ms.parse::<u64>().ok().filter(|ms| *ms <= MAX_DEADLINE_MS) {
                    // a deadline of 0 (the lease is over) keeps an expired guard expired
                    if ms > 0 || !self.expired {
                        self.deadline = now.checked_add(Duration::from_millis(ms));
                        self.expired = false;
                        self.revoked = false;
                    }
                }
            }
            (Some("etcd-config"), Some(_)) => {
                let json = line.trim_start().trim_start_matches("etcd-config").trim();
                if let Ok(access) = serde_json::from_str(json) {
                    self.etcd = access;
                }
            }
            (Some("exit"), _) => return true,
            _ => {}
        }
        false
    }

    /// How long to wait for the next line before acting (`None`: no deadline).
    fn wait(&self, now: Instant) -> Option<Duration> {
        if !self.armed {
            return None;
        }
        if self.expired {
            return Some(RECHECK);
        }
        self.deadline.map(|d| d.saturating_duration_since(now))
    }
}

/// What one look at the server found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Look {
    /// No postmaster runs.
    Stopped,
    /// A postmaster runs with `standby.signal`: a replica (perhaps being promoted).
    Replica,
    /// A primary ran and was stopped.
    Fenced,
    /// A primary runs and could not be stopped.
    Failed,
}

/// The guard process's whole life: follows the agent's state lines on stdin, fences an armed
/// primary when stdin ends without `exit` or its deadline passes. Returns the process exit code.
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
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let say = |msg: &str| eprintln!("pgpilot fencing guard: {msg}");
    let mut watch = Watch::default();
    loop {
        let next = match watch.wait(Instant::now()) {
            Some(left) => rx.recv_timeout(left),
            None => rx
                .recv()
                .map_err(|_| std::sync::mpsc::RecvTimeoutError::Disconnected),
        };
        match next {
            Ok(line) => {
                if watch.line(&line, Instant::now()) {
                    return 0;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                // past the deadline: stays so (and armed, the agent may die too) until the
                // agent sends a new deadline or disarms
                if !watch.expired {
                    watch.expired = true;
                    watch.revoked = false;
                }
                let _ = look_and_fence(data_dir, &mut watch, Trigger::Stall, &say);
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                if !watch.armed {
                    return 0;
                }
                // a replica the dead agent was promoting is watched until it is a primary (and
                // fenced) or stops, for a while
                let since = Instant::now();
                loop {
                    match look_and_fence(data_dir, &mut watch, Trigger::Death, &say) {
                        Look::Replica if since.elapsed() < PROMOTION_WATCH => {
                            std::thread::sleep(RECHECK)
                        }
                        Look::Failed => return 1,
                        _ => return 0,
                    }
                }
            }
        }
    }
}

/// One look at the server for an armed guard whose agent died or stalled: a running primary is
/// stopped, and the agent's lease is revoked (once) after that or after the agent's death.
fn look_and_fence(
    data_dir: &Path,
    watch: &mut Watch,
    trigger: Trigger,
    say: &dyn Fn(&str),
) -> Look {
    // the PID first: a replica started after the check below cannot be taken for the primary
    let pid = postmaster_pid(data_dir);
    if pid.is_some() && data_dir.join("standby.signal").exists() {
        return Look::Replica;
    }
    let look = match pid {
        None => Look::Stopped,
        Some(pid) => {
            say(&match trigger {
                Trigger::Death => format!(
                    "the agent died while PostgreSQL ran as primary in {}: stopping it so that no second primary can appear",
                    data_dir.display()
                ),
                Trigger::Stall => format!(
                    "the agent's HA loop made no progress before its deadline (stopped, swapping or stuck in I/O) while PostgreSQL ran as primary in {}: stopping it before the leader lease can run out",
                    data_dir.display()
                ),
            });
            match stop_postmaster(pid) {
                Ok(msg) => {
                    say(&msg);
                    Look::Fenced
                }
                Err(msg) => {
                    say(&msg);
                    Look::Failed
                }
            }
        }
    };
    // after a death, or once a primary was stopped: the leader key can go now
    let revoke = look == Look::Fenced || (trigger == Trigger::Death && look == Look::Stopped);
    if revoke
        && !watch.revoked
        && let Some(id) = watch.lease
    {
        watch.revoked = true;
        match revoke_lease(&watch.etcd, id) {
            Ok(host) => say(&format!(
                "revoked the agent's etcd lease {id} at {host}: a replica can take over now"
            )),
            Err(e) => say(&format!(
                "could not revoke the agent's etcd lease {id} ({e}); it expires after the ttl"
            )),
        }
    }
    look
}

/// How the guard reaches etcd: what the agent's `etcd3` section says (endpoints, TLS files,
/// credentials), passed over the private pipe.
#[derive(Clone, Default, serde::Serialize, serde::Deserialize)]
struct EtcdAccess {
    hosts: Vec<String>,
    protocol: String,
    username: Option<String>,
    password: Option<String>,
    cacert: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

impl std::fmt::Debug for EtcdAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdAccess")
            .field("hosts", &self.hosts)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .finish_non_exhaustive()
    }
}

impl EtcdAccess {
    fn from(c: &shared::config::EtcdConfig) -> EtcdAccess {
        EtcdAccess {
            hosts: c.hosts.clone(),
            protocol: c.protocol.clone(),
            username: c.username.clone(),
            password: c.password.as_ref().map(|p| p.expose().to_string()),
            cacert: c.cacert.clone(),
            cert: c.cert.clone(),
            key: c.key.clone(),
        }
    }

    fn config(&self) -> shared::config::EtcdConfig {
        shared::config::EtcdConfig {
            hosts: self.hosts.clone(),
            protocol: self.protocol.clone(),
            username: self.username.clone(),
            password: self.password.clone().map(shared::config::Secret::new),
            cacert: self.cacert.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
        }
    }

    /// The line that tells the guard.
    fn line(&self) -> String {
        format!(
            "etcd-config {}\n",
            serde_json::to_string(self).unwrap_or_default()
        )
    }
}

/// Revokes an etcd lease the way the agent talks to etcd (TLS, client certificate, user), within
/// a few seconds; returns the endpoints tried.
fn revoke_lease(etcd: &EtcdAccess, id: i64) -> Result<String, String> {
    let cfg = etcd.config();
    if cfg.hosts.is_empty() {
        return Err("no etcd endpoint known".into());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    let outcome = runtime.block_on(async {
        let attempt = async {
            let kv = shared::dcs::etcd::EtcdKv::connect(&cfg, Duration::from_secs(2))
                .await
                .map_err(|e| e.to_string())?;
            kv.revoke(id).await.map_err(|e| e.to_string())
        };
        match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(Ok(())) => Ok(cfg.hosts.join(",")),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("etcd did not answer within 5 s".into()),
        }
    });
    // a name lookup still running must not hold the guard
    runtime.shutdown_timeout(Duration::from_millis(500));
    outcome
}

/// Stops the postmaster of `data_dir`: fast, then immediate.
#[cfg(test)]
fn fence(data_dir: &Path) -> Result<String, String> {
    match postmaster_pid(data_dir) {
        None => Ok("PostgreSQL is not running".into()),
        Some(pid) => stop_postmaster(pid),
    }
}

/// Whether a process runs: exists and is not a zombie (a postmaster whose parent, a stopped
/// agent, cannot reap it has exited all the same).
fn running(pid: nix::unistd::Pid) -> bool {
    if nix::sys::signal::kill(pid, None).is_err() {
        return false;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // `pid (comm) state …`; comm may hold spaces and parentheses
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, Some("Z" | "X"))
}

/// Stops a postmaster: fast shutdown, then immediate after [`FAST_STOP_GRACE`].
fn stop_postmaster(pid: i32) -> Result<String, String> {
    use nix::sys::signal::{Signal, kill};
    let pid = nix::unistd::Pid::from_raw(pid);
    kill(pid, Signal::SIGINT).map_err(|e| format!("cannot signal the postmaster {pid}: {e}"))?;
    let started = Instant::now();
    let mut immediate = false;
    while running(pid) {
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
    fn the_deadline_counts_only_while_armed_and_garbage_keeps_the_last_one() {
        let now = Instant::now();
        let mut w = Watch::default();
        assert!(!w.line("deadline 100", now));
        assert_eq!(w.wait(now), None, "a disarmed guard has no deadline");
        w.line("armed 42", now);
        assert_eq!(w.lease, Some(42));
        assert_eq!(w.wait(now), None, "armed, no deadline yet: death only");
        w.line("deadline 1500", now);
        assert_eq!(w.wait(now), Some(Duration::from_millis(1500)));
        w.line("deadline soon", now);
        w.line(&format!("deadline {}", u64::MAX), now);
        assert_eq!(w.wait(now), Some(Duration::from_millis(1500)));
        w.line("deadline 500", now);
        assert_eq!(w.wait(now), Some(Duration::from_millis(500)));
        assert_eq!(w.wait(now + Duration::from_secs(1)), Some(Duration::ZERO));
        // expired: it looks again and again until a fresh deadline; "the lease is over" (0)
        // does not end that
        w.expired = true;
        assert_eq!(w.wait(now), Some(RECHECK));
        w.line("deadline 0", now);
        assert!(w.expired);
        w.line("deadline 2000", now);
        assert!(!w.expired);
        assert_eq!(w.wait(now), Some(Duration::from_millis(2000)));
        w.line("disarmed", now);
        assert_eq!(w.wait(now), None);
        assert!(w.line("exit", now));
    }

    /// A stand-in postmaster: `sleep` running in a new data directory, named in its
    /// postmaster.pid.
    fn fake_postmaster() -> (tempfile::TempDir, std::process::Child) {
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("sleep")
            .arg("30")
            .current_dir(dir.path())
            .spawn()
            .unwrap();
        std::fs::write(
            dir.path().join("postmaster.pid"),
            format!("{}\n{}\n", child.id(), dir.path().display()),
        )
        .unwrap();
        (dir, child)
    }

    #[test]
    fn a_replica_is_watched_not_fenced_and_a_dead_agents_lease_revoked_once() {
        let (dir, mut child) = fake_postmaster();
        std::fs::write(dir.path().join("standby.signal"), "").unwrap();
        let mut w = Watch {
            armed: true,
            lease: Some(7),
            ..Default::default()
        };
        assert_eq!(
            look_and_fence(dir.path(), &mut w, Trigger::Stall, &|_| {}),
            Look::Replica
        );
        assert!(!w.revoked, "nothing is revoked while a replica runs");
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(
            look_and_fence(dir.path(), &mut w, Trigger::Stall, &|_| {}),
            Look::Stopped
        );
        assert!(
            !w.revoked,
            "a stalled agent's lease is left while nothing was fenced"
        );
        assert_eq!(
            look_and_fence(dir.path(), &mut w, Trigger::Death, &|_| {}),
            Look::Stopped
        );
        assert!(w.revoked, "tried once (no etcd here)");
    }

    #[test]
    fn a_zombie_postmaster_counts_as_stopped() {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        // not reaped yet: a zombie, as the postmaster of a stopped agent
        std::thread::sleep(Duration::from_millis(200));
        assert!(!running(pid));
        child.wait().unwrap();
        assert!(!running(pid));
    }

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
        let (dir, mut child) = fake_postmaster();
        let pid = child.id();
        assert_eq!(postmaster_pid(dir.path()), Some(pid as i32));
        // reaped at once, as init reaps an orphaned postmaster
        let reaper = std::thread::spawn(move || child.wait());
        // SIGINT ends `sleep`, as it starts a postmaster's fast shutdown
        let msg = fence(dir.path()).unwrap();
        assert!(msg.contains("stopped"), "{msg}");
        reaper.join().unwrap().unwrap();
    }
}
