//! What the PostgreSQL binaries in `bin_dir` are: their version (`postgres --version`) and the
//! parameters they know with the context each takes effect in (`postgres --describe-config`),
//! read once per binary (again when the file changes, e.g. a minor upgrade). From them the
//! parameters pgpilot writes are made to fit the server: `wal_keep_segments` becomes
//! `wal_keep_size` (13+), and names the server does not know are left out with a warning, so
//! that a misspelt or retired parameter never keeps PostgreSQL from starting.

use anyhow::{Context, Result, anyhow, bail};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// A catalog read from a binary, with the binary's modification time then.
type Cached = (PathBuf, Option<SystemTime>, Arc<Catalog>);

/// One PostgreSQL installation's version and parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    /// As `server_version_num`: 150018 for 15.18, 180006 for 18.6.
    pub version_num: i32,
    /// Parameter names (lower case) and their context (`postmaster`, `sighup`, `internal`, …).
    parameters: HashMap<String, String>,
    /// The built-in `unix_socket_directories` (Debian's `/var/run/postgresql`, else often
    /// `/tmp`): where the server listens when the parameter is not set.
    pub socket_default: Option<String>,
}

impl Catalog {
    /// Whether a parameter of this name may be written to postgresql.conf: one the server
    /// knows and may be set (not `internal`, such as `block_size`), or a custom one of an
    /// extension (a name with a dot, which the server accepts as a placeholder).
    pub fn accepts(&self, name: &str) -> bool {
        if name.contains('.') {
            return true;
        }
        self.parameters
            .get(&name.to_ascii_lowercase())
            .is_some_and(|context| context != "internal")
    }

    /// Reads the binary's version and parameters.
    pub fn read(postgres: &Path) -> Result<Catalog> {
        let run = |arg: &str| -> Result<String> {
            let child = std::process::Command::new(postgres)
                .arg(arg)
                .env("LC_ALL", "C")
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .with_context(|| format!("cannot run {} {arg}", postgres.display()))?;
            // a binary that hangs (a stuck network file system) must not hold the agent: its
            // output is read beside, for at most 10 s
            let pid = child.id();
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let _ = tx.send(child.wait_with_output());
            });
            let out = match rx.recv_timeout(std::time::Duration::from_secs(10)) {
                Ok(out) => out?,
                Err(_) => {
                    if let Ok(pid) = i32::try_from(pid) {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                    bail!("{} {arg} did not finish within 10 s", postgres.display());
                }
            };
            if !out.status.success() {
                bail!(
                    "{} {arg} failed: {}",
                    postgres.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        let version = run("--version")?;
        let version_num = parse_version(&version)
            .ok_or_else(|| anyhow!("{}: no version in {:?}", postgres.display(), version.trim()))?;
        let described = run("--describe-config")?;
        let parameters = parse_describe(&described);
        if parameters.is_empty() {
            bail!(
                "{} --describe-config listed no parameter",
                postgres.display()
            );
        }
        Ok(Catalog {
            version_num,
            parameters,
            socket_default: described_default(&described, "unix_socket_directories"),
        })
    }

    /// The catalog of the binary at `postgres`, read once per file version; `None` (logged by
    /// the caller) when it cannot be run.
    pub fn of(postgres: &Path) -> Result<Arc<Catalog>> {
        static CACHE: Mutex<Vec<Cached>> = Mutex::new(Vec::new());
        let stamp = std::fs::metadata(postgres).and_then(|m| m.modified()).ok();
        let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, _, c)) = cache.iter().find(|(p, s, _)| p == postgres && *s == stamp) {
            return Ok(c.clone());
        }
        let catalog = Arc::new(Catalog::read(postgres)?);
        cache.retain(|(p, _, _)| p != postgres);
        cache.push((postgres.to_path_buf(), stamp, catalog.clone()));
        Ok(catalog)
    }
}

/// The oldest PostgreSQL pgpilot runs: recovery settings in postgresql.conf with
/// `standby.signal` (12) and a reload that changes `primary_conninfo` (13).
pub const OLDEST_VERSION: i32 = 130000;

/// What is wrong with the binaries in `bin_dir`: a `postgres` that does not run, or a version
/// older than [`OLDEST_VERSION`].
pub fn binaries_issues(cfg: &shared::config::Config) -> Vec<shared::config::ConfigIssue> {
    let issue = |message: String| shared::config::ConfigIssue {
        key: "postgresql.bin_dir".into(),
        message,
    };
    match Catalog::of(&cfg.postgresql.binary("postgres")) {
        Err(e) => vec![issue(format!("{e:#}"))],
        Ok(c) if c.version_num < OLDEST_VERSION => vec![issue(format!(
            "PostgreSQL {} there: pgpilot runs PostgreSQL {} or newer",
            version_text(c.version_num),
            OLDEST_VERSION / 10000
        ))],
        Ok(_) => Vec::new(),
    }
}

/// `postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)` → 150018; `18.6` → 180006;
/// `18beta1`/`18rc1` → 180000.
pub fn parse_version(text: &str) -> Option<i32> {
    let word = text
        .split_whitespace()
        .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))?;
    let digits_end = |s: &str| s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let major_end = digits_end(word);
    let major: i32 = word[..major_end].parse().ok()?;
    let rest = &word[major_end..];
    let minor: i32 = match rest.strip_prefix('.') {
        Some(m) => m[..digits_end(m)].parse().unwrap_or(0),
        None => 0,
    };
    if !(10..=99).contains(&major) || !(0..10000).contains(&minor) {
        return None;
    }
    major.checked_mul(10000)?.checked_add(minor)
}

/// `postgres --describe-config`: one parameter per line, tab-separated, name then context.
fn parse_describe(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let name = f.next()?.trim();
            let context = f.next()?.trim();
            (!name.is_empty()).then(|| (name.to_ascii_lowercase(), context.to_string()))
        })
        .collect()
}

/// The built-in value of parameter `name` in `--describe-config`'s output (its fifth field).
fn described_default(text: &str, name: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split('\t').collect();
        (f.first()?.trim() == name)
            .then(|| f.get(4).map(|v| v.trim().to_string()))
            .flatten()
            .filter(|v| !v.is_empty())
    })
}

/// A version number for people: 150018 → "15.18".
pub fn version_text(version_num: i32) -> String {
    format!("{}.{}", version_num / 10000, version_num % 10000)
}

/// `wal_keep_segments` (before 13) as `wal_keep_size` (13 and later), as Patroni converts it:
/// 16 MB segments. `None` for a value that is not a number of segments.
pub fn wal_keep_size_of_segments(segments: &str) -> Option<String> {
    let n: u64 = segments.trim().parse().ok()?;
    Some(format!("{}MB", n.checked_mul(16)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(
            parse_version("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"),
            Some(150018)
        );
        assert_eq!(parse_version("postgres (PostgreSQL) 18.6"), Some(180006));
        assert_eq!(parse_version("postgres (PostgreSQL) 18beta1"), Some(180000));
        assert_eq!(parse_version("postgres (PostgreSQL)"), None);
        assert_eq!(parse_version("postgres 9999999999.1"), None);
        assert_eq!(version_text(150018), "15.18");
        assert_eq!(version_text(180006), "18.6");
    }

    #[test]
    fn parameters_the_server_takes() {
        let c = Catalog {
            version_num: 150018,
            parameters: parse_describe(
                "wal_keep_size\tsighup\tReplication\tINTEGER\t0\n\
                 shared_buffers\tpostmaster\tResource\tINTEGER\t1024\n\
                 block_size\tinternal\tPreset\tINTEGER\t8192\n",
            ),
            socket_default: None,
        };
        assert!(c.accepts("wal_keep_size") && c.accepts("Shared_Buffers"));
        assert!(!c.accepts("wal_keep_segments"), "retired in 13");
        assert!(!c.accepts("block_size"), "internal");
        assert!(!c.accepts("shared_bufers"), "misspelt");
        assert!(c.accepts("pg_stat_statements.max"), "an extension's");
    }

    #[test]
    fn the_built_in_socket_directory() {
        let text = "port\tpostmaster\tConnections\tINTEGER\t5432\t1\t65535\tPort\t\n\
                    unix_socket_directories\tpostmaster\tConnections\tSTRING\t/var/run/postgresql\t\t\tSets\t\n\
                    krb_server_keyfile\tsighup\tAuth\tSTRING\t\t\t\tKeys\t\n";
        assert_eq!(
            described_default(text, "unix_socket_directories").as_deref(),
            Some("/var/run/postgresql")
        );
        assert_eq!(described_default(text, "krb_server_keyfile"), None);
        assert_eq!(described_default(text, "missing"), None);
    }

    #[test]
    fn segments_to_size() {
        assert_eq!(wal_keep_size_of_segments("20").as_deref(), Some("320MB"));
        assert_eq!(wal_keep_size_of_segments("x"), None);
        assert_eq!(wal_keep_size_of_segments("18446744073709551615"), None);
    }
}
