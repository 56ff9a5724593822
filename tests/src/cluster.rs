//! A test cluster of real agents and PostgreSQL: its nodes, their YAML, starting and stopping
//! them, and the lab (work directory, etcd, cluster) most tests start from.

use crate::*;
use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// One node of a test cluster.
pub struct Node {
    pub name: String,
    /// The address its REST API and PostgreSQL listen on.
    pub host: String,
    pub api_port: u16,
    pub pg_port: u16,
    pub config_path: PathBuf,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    pub agent: Option<Proc>,
    /// The REST API serves https (the harness trusts any certificate).
    pub tls: bool,
}

impl Node {
    pub fn api(&self, path: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}:{}{path}", self.host, self.api_port)
    }

    /// `GET` on the node's REST API.
    pub fn get(&self, path: &str) -> Result<(u16, String)> {
        http_get(&self.api(path))
    }

    /// `GET /patroni` as JSON.
    pub fn status(&self) -> Option<Value> {
        let (code, body) = self.get("/patroni").ok()?;
        (code == 200)
            .then(|| serde_json::from_str(&body).ok())
            .flatten()
    }

    /// A libpq connection string to this node's PostgreSQL as the superuser.
    pub fn dsn(&self) -> String {
        format!(
            "host={} port={} user=postgres password=postgres-secret dbname=postgres connect_timeout=3",
            self.host, self.pg_port
        )
    }

    /// The postmaster PID, from postmaster.pid.
    pub fn postmaster_pid(&self) -> Option<i32> {
        let text = fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// Waits until the agent process exits (it is expected to stop by itself) and returns how.
    pub fn wait_agent_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let agent = self
            .agent
            .as_mut()
            .ok_or_else(|| anyhow!("{} has no agent running", self.name))?;
        wait_for("the agent to exit", timeout, || {
            agent.child.try_wait().ok().flatten()
        })
    }

    /// The agent log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

/// Options for a test cluster.
#[derive(Clone)]
pub struct ClusterSpec {
    pub scope: String,
    pub namespace: String,
    pub nodes: usize,
    pub ttl: u64,
    pub loop_wait: u64,
    pub retry_timeout: u64,
    /// Extra YAML appended to every node's config.
    pub extra_yaml: String,
    /// Extra lines inside `bootstrap.dcs` (indented four spaces), e.g. `synchronous_mode`.
    pub dcs_yaml: String,
    /// Extra lines inside the `restapi` section (indented two spaces), e.g. authentication.
    pub restapi_yaml: String,
    /// Extra lines inside the `postgresql` section (indented two spaces), e.g. callbacks.
    pub postgresql_yaml: String,
    /// Extra lines inside the `etcd3` section (indented two spaces), e.g. TLS files.
    pub etcd_yaml: String,
    /// The daemon run for each node: pgpilot's `agent` (default) or, for side-by-side
    /// measurements, another program that takes the same YAML, such as Patroni's `patroni`.
    pub daemon: Option<PathBuf>,
    /// Per node: the address it listens on (empty: all on loopback) and the network namespace
    /// its agent and PostgreSQL run in (empty: none), from a [`NetLab`].
    pub hosts: Vec<String>,
    pub netns: Vec<String>,
    /// Extra environment of every agent (e.g. systemd's NOTIFY_SOCKET).
    pub env: Vec<(String, String)>,
    /// Start agents in their own process group, so that a terminal's Ctrl-C or the end of the
    /// starting process leaves them running (the demo's cluster outlives `demo up`).
    pub detached: bool,
    /// `postgresql.bin_dir` of every node: Debian's PostgreSQL 15 ([`PG_BIN`]) unless set,
    /// e.g. to [`pg18_bin`].
    pub bin_dir: Option<PathBuf>,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        ClusterSpec {
            scope: "e2e".into(),
            namespace: "/service".into(),
            nodes: 3,
            ttl: 10,
            loop_wait: 2,
            retry_timeout: 3,
            extra_yaml: String::new(),
            dcs_yaml: String::new(),
            restapi_yaml: String::new(),
            postgresql_yaml: String::new(),
            etcd_yaml: String::new(),
            daemon: None,
            hosts: Vec::new(),
            netns: Vec::new(),
            env: Vec::new(),
            detached: false,
            bin_dir: None,
        }
    }
}

/// A set of agents sharing one etcd.
pub struct TestCluster {
    pub spec: ClusterSpec,
    pub nodes: Vec<Node>,
    pub dir: PathBuf,
    pub etcd_endpoint: String,
}

impl TestCluster {
    /// Writes the configs of a cluster under `dir` (nothing is started).
    pub fn new(spec: ClusterSpec, dir: &Path, etcd_endpoint: &str) -> Result<TestCluster> {
        let mut nodes = Vec::new();
        for i in 1..=spec.nodes {
            let name = format!("{}-node{i}", spec.scope);
            let api_port = free_port();
            let pg_port = free_port();
            let node_dir = dir.join(&name);
            fs::create_dir_all(&node_dir)?;
            fs::set_permissions(&node_dir, fs::Permissions::from_mode(0o755))?;
            let data_dir = node_dir.join("data");
            let config_path = node_dir.join("pgpilot.yml");
            let host = spec
                .hosts
                .get(i - 1)
                .cloned()
                .unwrap_or_else(|| "127.0.0.1".into());
            let yaml = node_yaml(
                &spec,
                &name,
                (&host, api_port, pg_port),
                &node_dir,
                etcd_endpoint,
            );
            fs::write(&config_path, yaml)?;
            chown_postgres(&node_dir)?;
            nodes.push(Node {
                name,
                host,
                api_port,
                pg_port,
                config_path,
                data_dir,
                log_path: node_dir.join("agent.log"),
                agent: None,
                tls: spec.restapi_yaml.contains("certfile:"),
            });
        }
        Ok(TestCluster {
            spec,
            nodes,
            dir: dir.to_path_buf(),
            etcd_endpoint: etcd_endpoint.to_string(),
        })
    }

    /// Starts the agent of node `i`.
    pub fn start_agent(&mut self, i: usize) -> Result<()> {
        let node = &mut self.nodes[i];
        let agent = self.spec.daemon.clone().unwrap_or_else(agent_bin);
        let mut cmd = agent_command(&AgentLaunch {
            program: &agent,
            config: &node.config_path,
            log: &node.log_path,
            netns: self.spec.netns.get(i).map(String::as_str),
            home: &self.dir,
            env: &self.spec.env,
            detached: self.spec.detached,
        })?;
        let child = cmd.spawn().context("cannot start agent")?;
        node.agent = Some(Proc {
            child,
            name: node.name.clone(),
        });
        Ok(())
    }

    pub fn start_all(&mut self) -> Result<()> {
        for i in 0..self.nodes.len() {
            self.start_agent(i)?;
        }
        Ok(())
    }

    /// SIGKILLs the agent of node `i`, its postmaster and every child: what the machine's death
    /// does to them.
    pub fn kill_machine(&mut self, i: usize) {
        if let Some(mut agent) = self.nodes[i].agent.take() {
            // the fencing guard dies with the machine too, before it could act: the agent is
            // frozen first, so that it cannot start a new guard between the two kills
            agent.signal(nix::sys::signal::Signal::SIGSTOP);
            for child in child_pids(agent.pid()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(child),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            agent.signal(nix::sys::signal::Signal::SIGKILL);
            let _ = agent.stop(Duration::from_secs(5));
        }
        kill_postgres_group(&self.nodes[i]);
    }

    /// Stops the agent of node `i` with SIGTERM (it stops PostgreSQL and hands over the lock).
    pub fn stop_agent(&mut self, i: usize) -> Option<std::process::ExitStatus> {
        self.nodes[i]
            .agent
            .take()
            .and_then(|mut p| p.stop(Duration::from_secs(90)))
    }

    /// The node whose REST API says it is the primary.
    pub fn primary(&self) -> Option<usize> {
        self.nodes
            .iter()
            .position(|n| n.get("/primary").map(|(c, _)| c == 200).unwrap_or(false))
    }

    /// Waits until one node is primary and all others stream from it; returns the primary index.
    pub fn wait_healthy(&self, timeout: Duration) -> Result<usize> {
        wait_for("one primary and streaming replicas", timeout, || {
            let p = self.primary()?;
            let all_stream = self.nodes.iter().enumerate().all(|(i, n)| {
                i == p
                    || n.status().is_some_and(|s| {
                        s["replication_state"] == "streaming" && s["role"] == "replica"
                    })
            });
            all_stream.then_some(p)
        })
        .map_err(|e| anyhow!("{e}\n{}", self.logs_tail()))
    }

    /// Waits until one of `among` is primary and every other of them streams from the
    /// cluster; returns the primary's index (members outside `among` are not looked at).
    pub fn wait_streaming_among(&self, among: &[usize], timeout: Duration) -> Result<usize> {
        wait_for("one primary and streaming replicas", timeout, || {
            let p = self.primary()?;
            among
                .iter()
                .filter(|&&i| i != p)
                .all(|&i| {
                    self.nodes[i].status().is_some_and(|s| {
                        s["replication_state"] == "streaming" && s["role"] == "replica"
                    })
                })
                .then_some(p)
        })
        .map_err(|e| anyhow!("{e}\n{}", self.logs_tail()))
    }

    /// The last lines of every agent's log, for failure messages.
    pub fn logs_tail(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            let log = n.log();
            let lines: Vec<&str> = log.lines().collect();
            let start = lines.len().saturating_sub(25);
            out.push_str(&format!(
                "--- {} ---\n{}\n",
                n.name,
                lines[start..].join("\n")
            ));
        }
        out
    }

    /// Stops everything (agents first; then any postmaster left behind).
    pub fn shutdown(&mut self) {
        // Replicas first, so that stopping the primary does not promote anybody.
        let primary = self.primary();
        for i in 0..self.nodes.len() {
            if Some(i) != primary {
                self.stop_agent(i);
            }
        }
        if let Some(p) = primary {
            self.stop_agent(p);
        }
        for n in &self.nodes {
            kill_postmaster(n);
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// How to run one agent.
pub struct AgentLaunch<'a> {
    /// `agent` (or another daemon taking the same YAML, such as `patroni`).
    pub program: &'a Path,
    pub config: &'a Path,
    /// Its output is appended here.
    pub log: &'a Path,
    /// The network namespace it runs in.
    pub netns: Option<&'a str>,
    /// `HOME` when it runs as `postgres`.
    pub home: &'a Path,
    pub env: &'a [(String, String)],
    /// In its own process group (see [`ClusterSpec::detached`]).
    pub detached: bool,
}

/// The command that starts an agent: as `postgres` through `setpriv` when we are root, inside
/// its namespace through `ip netns exec` (both exec, so the PID stays the agent's).
pub fn agent_command(l: &AgentLaunch) -> Result<Command> {
    if !l.program.is_file() {
        bail!("{} not found: run `cargo build` first", l.program.display());
    }
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(l.log)?;
    let mut cmd = if is_root() {
        let mut c = match l.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "setpriv"]);
                c
            }
            None => Command::new("setpriv"),
        };
        c.args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
            .arg(l.program);
        c.env("HOME", l.home);
        c
    } else {
        Command::new(l.program)
    };
    cmd.arg(l.config)
        .env(
            "PGPILOT_LOG",
            std::env::var("PGPILOT_LOG").unwrap_or_else(|_| "info".into()),
        )
        .envs(l.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    own_process_group(&mut cmd, l.detached);
    Ok(cmd)
}

/// Stops a postmaster left running by a killed agent (immediate shutdown by PID).
pub fn kill_postmaster(n: &Node) {
    if let Some(pid) = n.postmaster_pid() {
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "postgres" {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGQUIT,
            );
            let _ = wait_for("postmaster to exit", Duration::from_secs(10), || {
                (!Path::new(&format!("/proc/{pid}")).exists()).then_some(())
            });
        }
    }
}

/// The YAML of one test node: a normal Patroni configuration.
pub fn node_yaml(
    spec: &ClusterSpec,
    name: &str,
    (host, api_port, pg_port): (&str, u16, u16),
    node_dir: &Path,
    etcd: &str,
) -> String {
    format!(
        r#"scope: {scope}
namespace: {ns}
name: {name}

restapi:
  listen: {host}:{api_port}
  connect_address: {host}:{api_port}
{restapi_extra}
etcd3:
  hosts: {etcd}
{etcd_extra}

bootstrap:
  dcs:
    ttl: {ttl}
    loop_wait: {loop_wait}
    retry_timeout: {retry}
    maximum_lag_on_failover: 1048576
{dcs_extra}    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        max_connections: 50
        shared_buffers: 16MB
        wal_keep_size: 64MB
  initdb:
    - encoding: UTF8
    - data-checksums
    - auth-local: trust
    - auth-host: scram-sha-256

postgresql:
  listen: {host}:{pg_port}
  connect_address: {host}:{pg_port}
  data_dir: {data}
  bin_dir: {bin}
  pgpass: {pgpass}
  authentication:
    superuser:
      username: postgres
      password: postgres-secret
    replication:
      username: replicator
      password: rep-secret
    rewind:
      username: rewinder
      password: rewind-secret
  parameters:
    unix_socket_directories: '{sock}'
    fsync: 'off'
  pg_hba:
    - local all all trust
    - host replication replicator samenet scram-sha-256
    - host all all samenet scram-sha-256
{postgresql_extra}
tags:
  nofailover: false
  noloadbalance: false
  clonefrom: false
  nosync: false
{extra}"#,
        scope = spec.scope,
        ns = spec.namespace,
        ttl = spec.ttl,
        loop_wait = spec.loop_wait,
        retry = spec.retry_timeout,
        data = node_dir.join("data").display(),
        bin = spec
            .bin_dir
            .as_deref()
            .unwrap_or(Path::new(PG_BIN))
            .display(),
        pgpass = node_dir.join("pgpass").display(),
        sock = node_dir.display(),
        extra = spec.extra_yaml,
        dcs_extra = spec.dcs_yaml,
        restapi_extra = spec.restapi_yaml,
        postgresql_extra = spec.postgresql_yaml,
        etcd_extra = spec.etcd_yaml,
    )
}

/// Runs one SQL query on a node; first column of each row as text.
pub fn sql(node: &Node, q: &str) -> Result<Vec<String>> {
    sql_dsn(&node.dsn(), q)
}

/// A whole test environment: a scratch directory, one etcd and one cluster's configs. Fields
/// drop in order: the agents stop first, then etcd, then the directory goes.
pub struct Lab {
    pub cluster: TestCluster,
    pub etcd: Etcd,
    pub work: Workdir,
}

impl Lab {
    /// Prepares a lab under `/var/tmp/pgpilot-<tag>-…`, starting etcd if asked (agents are not
    /// started).
    pub fn new(tag: &str, spec: ClusterSpec, start_etcd: bool) -> Result<Lab> {
        let work = Workdir::new(tag)?;
        let mut etcd = Etcd::new(&work.path);
        if start_etcd {
            etcd.start()?;
        }
        let cluster = TestCluster::new(spec, &work.path, &etcd.endpoint())?;
        Ok(Lab {
            cluster,
            etcd,
            work,
        })
    }
}

impl Lab {
    /// A lab under `/var/tmp/pgpilot-e2e-<scope>-…` whose cluster is up: one primary and
    /// streaming replicas within two minutes. Returns it and the primary's index.
    pub fn healthy(spec: ClusterSpec) -> Result<(Lab, usize)> {
        let mut lab = Lab::new(&format!("e2e-{}", spec.scope), spec, true)?;
        lab.cluster.start_all()?;
        let p = lab.cluster.wait_healthy(Duration::from_secs(120))?;
        Ok((lab, p))
    }
}

impl TestCluster {
    /// Who holds the leader key now, as etcd says.
    pub fn leader_name(&self, etcd: &Etcd) -> Option<String> {
        etcd.leader(&self.spec.scope).map(|(n, _)| n)
    }

    /// The index of the member holding the leader key.
    pub fn leader_index(&self, etcd: &Etcd) -> Option<usize> {
        let name = self.leader_name(etcd)?;
        self.nodes.iter().position(|n| n.name == name)
    }
}

/// SIGKILLs a node's postmaster and every process of its process group (backends, WAL
/// sender, checkpointer…): what the machine's death does to PostgreSQL.
pub fn kill_postgres_group(n: &Node) {
    if let Some(pid) = n.postmaster_pid() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(-pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Every `pgpilot_writes` id a node holds.
pub fn written_ids(node: &Node) -> Result<std::collections::HashSet<i64>> {
    Ok(sql(node, "SELECT id FROM pgpilot_writes")?
        .into_iter()
        .filter_map(|s| s.parse().ok())
        .collect())
}

/// What a node's fencing guard would do if its agent died now (`armed`, `disarmed`), from
/// `/patroni`.
pub fn fencing_state(n: &Node) -> Option<String> {
    n.status()?["pgpilot"]["fencing"]
        .as_str()
        .map(str::to_string)
}

/// Turns `failsafe_mode` on through the leader's REST API and waits until the leader has
/// written the `failsafe` key listing every member.
pub fn enable_failsafe(c: &TestCluster, etcd: &Etcd, leader: usize) -> Result<()> {
    let (code, body) = http_request(
        "PATCH",
        &c.nodes[leader].api("/config"),
        Some(r#"{"failsafe_mode": true}"#),
    )?;
    anyhow::ensure!(code == 200, "PATCH /config answered {code}: {body}");
    let key = format!("{}/{}/failsafe", c.spec.namespace, c.spec.scope);
    wait_for("the failsafe key", Duration::from_secs(60), || {
        let v = etcd.get_prefix(&key).ok()?;
        let (_, value, _) = v.first()?;
        c.nodes
            .iter()
            .all(|n| value.contains(&format!("\"{}\"", n.name)))
            .then_some(())
    })
}
