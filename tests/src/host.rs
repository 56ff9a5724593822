//! The machine the tests run on: free ports, programs, the postgres OS user, work directories,
//! processes tracked by PID, the binaries under test.

use anyhow::{Context, Result, bail};
use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// PostgreSQL 15's binaries on Debian.
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A free TCP port on 127.0.0.1 (bind to 0 and read it back), never the same one twice in this
/// process: tests run in parallel threads, and the kernel may hand a released port out again.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    for _ in 0..1000 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(0);
        if port != 0 && !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
    panic!("no free loopback port after 1000 tries");
}

/// Whether `program` is on the PATH.
pub fn have_program(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(program).is_file()))
}

/// Whether we run as root (then PostgreSQL and agents run as `postgres`).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The directory holding the workspace's binaries (next to this test executable's `deps/`).
pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("PGPILOT_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// Path of the `agent` binary.
pub fn agent_bin() -> PathBuf {
    bin_dir().join("pgpilot-agent")
}

/// Polls `f` every 100 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {}s waiting for {what}", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A scratch directory that the `postgres` user can use; removed on drop unless `PGPILOT_KEEP`.
pub struct Workdir {
    pub path: PathBuf,
}

impl Workdir {
    pub fn new(tag: &str) -> Result<Workdir> {
        let base = std::env::var("PGPILOT_E2E_DIR").unwrap_or_else(|_| "/var/tmp".into());
        let path = PathBuf::from(base).join(format!(
            "pgpilot-{tag}-{}-{}",
            std::process::id(),
            Instant::now().elapsed().as_nanos() ^ (free_port() as u128)
        ));
        fs::create_dir_all(&path)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
        chown_postgres(&path)?;
        Ok(Workdir { path })
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        if std::env::var_os("PGPILOT_KEEP").is_none() {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Hands a path to the `postgres` user when we are root.
pub fn chown_postgres(path: &Path) -> Result<()> {
    if is_root() {
        let status = Command::new("chown")
            .arg("-R")
            .arg("postgres:postgres")
            .arg(path)
            .status()?;
        if !status.success() {
            bail!("chown postgres {} failed", path.display());
        }
    }
    Ok(())
}

/// A process we started, stopped by PID on drop.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends a signal.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig);
    }

    /// SIGTERM, then SIGKILL after `grace`; reaps the process.
    pub fn stop(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        if let Ok(Some(st)) = self.child.try_wait() {
            return Some(st);
        }
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.signal(nix::sys::signal::Signal::SIGKILL);
        self.child.wait().ok()
    }

    /// Lets the process run on after we are gone; returns its PID.
    pub fn detach(self) -> i32 {
        let pid = self.pid();
        std::mem::forget(self);
        pid
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(20));
    }
}

/// Puts the process `cmd` starts in a process group of its own when `detached`: a terminal's
/// Ctrl-C (sent to the foreground group) then leaves it running.
pub fn own_process_group(cmd: &mut Command, detached: bool) {
    if detached {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
}

/// The PIDs of a process's children (from `/proc/*/stat`).
pub fn child_pids(parent: i32) -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // `pid (comm) state ppid …`; comm may hold spaces and parentheses
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<i32>().ok())
                == Some(parent)
        })
        .collect()
}

/// Runs the `console` binary with `args`; returns (exit code, stdout, stderr).
pub fn console(args: &[&str]) -> Result<(i32, String, String)> {
    let out = Command::new(bin_dir().join("pgpilot-console"))
        .args(args)
        .env_remove("PGPILOT_CONSOLE_CONFIG")
        .env_remove("PATRONICTL_CONFIG_FILE")
        .stdin(Stdio::null())
        .output()
        .context("cannot run console: run `cargo build` first")?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}
