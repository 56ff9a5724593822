//! A real HAProxy in front of a test cluster, with Patroni users' checks.

use crate::*;
use anyhow::{Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A real HAProxy routing a write port to whichever node answers `OPTIONS /primary` with 200 and
/// a read port to nodes answering `OPTIONS /replica`, the checks Patroni users run; its
/// configuration is `shared::haproxy`'s, as `console --batch haproxy-config` prints it.
pub struct Haproxy {
    pub write_port: u16,
    pub read_port: u16,
    pub proc: Proc,
    log: PathBuf,
    scope: String,
    nodes: usize,
}

/// The HAProxy backends of test nodes.
pub fn haproxy_backends(nodes: &[Node]) -> Vec<shared::haproxy::Backend> {
    nodes
        .iter()
        .map(|n| shared::haproxy::Backend {
            name: n.name.clone(),
            pg_host: n.host.clone(),
            pg_port: n.pg_port,
            api_host: n.host.clone(),
            api_port: n.api_port,
            api_tls: n.tls,
        })
        .collect()
}

impl Haproxy {
    /// Options for a test HAProxy: free loopback ports, no statistics page, checks every 300 ms.
    pub fn loopback_options() -> shared::haproxy::Options {
        shared::haproxy::Options {
            bind: "127.0.0.1".into(),
            write_port: free_port(),
            read_port: free_port(),
            stats_port: None,
            check_interval_ms: 300,
            ca_file: None,
        }
    }

    /// Starts HAProxy with configuration `cfg` (made with `options`) for `nodes` servers;
    /// `detached` puts it in its own process group.
    pub fn start_with(
        dir: &Path,
        scope: &str,
        nodes: usize,
        cfg: &str,
        options: &shared::haproxy::Options,
        detached: bool,
    ) -> Result<Haproxy> {
        let path = dir.join("haproxy.cfg");
        fs::write(&path, cfg)?;
        let log_path = dir.join("haproxy.log");
        let log = fs::File::create(&log_path)?;
        let mut cmd = Command::new("haproxy");
        cmd.arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        own_process_group(&mut cmd, detached);
        let child = cmd
            .spawn()
            .context("cannot start haproxy: install haproxy")?;
        Ok(Haproxy {
            write_port: options.write_port,
            read_port: options.read_port,
            proc: Proc {
                child,
                name: "haproxy".into(),
            },
            log: log_path,
            scope: scope.to_string(),
            nodes,
        })
    }

    /// Waits until the first health checks have run: HAProxy starts every server as up, so
    /// until the replicas fail `OPTIONS /primary` (and the primary `/replica`) a connection may
    /// land on the wrong node and be cut when its server is marked down.
    pub fn wait_checked(&self, timeout: Duration) -> Result<()> {
        wait_for("HAProxy's first health checks", timeout, || {
            let log = fs::read_to_string(&self.log).unwrap_or_default();
            let down = |backend: &str| {
                let server = format!("Server {}_{backend}/", self.scope);
                log.lines()
                    .filter(|l| l.contains(&server) && l.contains(" is DOWN"))
                    .count()
            };
            (down("primary") + 1 >= self.nodes && down("replicas") >= 1).then_some(())
        })
    }

    /// A DSN through one of HAProxy's ports.
    pub fn dsn(port: u16) -> String {
        format!(
            "host=127.0.0.1 port={port} user=postgres password=postgres-secret dbname=postgres connect_timeout=3"
        )
    }
}
