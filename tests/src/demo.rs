//! The demo's cluster in a box: one etcd, three agents with PostgreSQL 15 and (optionally)
//! HAProxy, started detached so that they outlive the command that started them, recorded by
//! PID in `<dir>/demo.json`, and stopped by PID. The failure switches (cut a node, crash its
//! postmaster, isolate it, stop etcd, and their way back) act on that record; the `demo`
//! binary, the console's demo keys (which run `demo`) and the tests all go through here.
//!
//! As root with iproute2 and nftables, each node runs in its own network namespace on a bridge
//! (10.210.x.0/24) so that it can be isolated; elsewhere everything is on loopback and isolation
//! is refused with the reason.

use crate::{
    AgentLaunch, ClusterSpec, Etcd, Haproxy, NetLab, Node, TestCluster, agent_command, bin_dir,
    child_pids, chown_postgres, free_port, is_root, kill_postgres_group, kill_postmaster, wait_for,
};
use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where the demo lives unless told otherwise.
pub const DEFAULT_DIR: &str = "/var/tmp/pgpilot-demo";
/// The record of what runs, read by the console for its demo keys (`nodes[].name`, `.cut`,
/// `.isolated`, `etcd.stopped`, `net`, `control`).
pub const STATE_FILE: &str = "demo.json";
/// The cluster's name.
pub const SCOPE: &str = "demo";

/// Everything the demo started, by PID.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub scope: String,
    pub dir: PathBuf,
    /// The `demo` program: the console runs it for the failure switches.
    pub control: PathBuf,
    /// Where `agent` and `console` are.
    pub bin_dir: PathBuf,
    /// Network namespaces, when the nodes run in them.
    pub net: Option<NetState>,
    pub etcd: EtcdState,
    pub nodes: Vec<NodeState>,
    pub haproxy: Option<HaproxyState>,
    pub ttl: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetState {
    pub tag: String,
    pub subnet: u8,
    pub host_ip: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EtcdState {
    pub host: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub pid: Option<i32>,
    /// Stopped with the `etcd stop` switch.
    pub stopped: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeState {
    pub name: String,
    pub host: String,
    pub api_port: u16,
    pub pg_port: u16,
    pub data_dir: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    pub netns: Option<String>,
    pub agent_pid: Option<i32>,
    /// Cut with the `cut` switch (agent and PostgreSQL killed).
    pub cut: bool,
    /// Isolated with the `isolate` switch.
    pub isolated: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HaproxyState {
    pub pid: Option<i32>,
    pub bind: String,
    pub write_port: u16,
    pub read_port: u16,
    pub stats_port: u16,
    pub config: PathBuf,
}

/// How `up` starts the demo.
#[derive(Debug, Clone)]
pub struct UpOptions {
    pub dir: PathBuf,
    /// Start HAProxy in front of the cluster (when installed).
    pub haproxy: bool,
    /// Run the nodes in network namespaces when this machine allows it.
    pub netns: bool,
}

/// A failure switch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Switch {
    /// SIGKILL a node's agent and PostgreSQL, as the machine's death would.
    Cut(String),
    /// Start a cut node's agent again.
    Restore(String),
    /// SIGKILL only the postmaster.
    Crash(String),
    /// Drop the node's traffic to and from etcd and the other nodes.
    Isolate(String),
    /// Let an isolated node reach everyone again.
    Heal(String),
    EtcdStop,
    EtcdStart,
}

/// Whether `pid` is a live (not zombie) process.
pub fn alive(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(|st| st != "Z"))
        })
        .unwrap_or(false)
}

/// Whether `pid` is alive and its command line mentions `needle` (a PID reused by another
/// program is never signalled).
fn is_ours(pid: i32, needle: &str) -> bool {
    alive(pid)
        && fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| {
                String::from_utf8_lossy(&c)
                    .replace('\0', " ")
                    .contains(needle)
            })
            .unwrap_or(false)
}

/// `first` (SIGTERM), then SIGKILL (and its children) after `grace`; true when it is gone.
/// Only for a PID one of the `running_*` checks just vouched for.
fn stop_pid(pid: i32, first: Signal, grace: Duration) -> bool {
    let _ = kill(Pid::from_raw(pid), first);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if !alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for child in child_pids(pid) {
        let _ = kill(Pid::from_raw(child), Signal::SIGKILL);
    }
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    wait_for("a killed process to go", Duration::from_secs(10), || {
        (!alive(pid)).then_some(())
    })
    .is_ok()
}

/// A port on `host` that is free now: `preferred` when it is, else any.
fn port_near(host: &str, preferred: u16) -> u16 {
    if std::net::TcpListener::bind((host, preferred)).is_ok() {
        preferred
    } else {
        free_port()
    }
}

fn answers(host: &str, port: u16) -> bool {
    format!("{host}:{port}")
        .parse::<SocketAddr>()
        .ok()
        .is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_millis(300)).is_ok())
}

impl State {
    fn path(dir: &Path) -> PathBuf {
        dir.join(STATE_FILE)
    }

    /// Reads the record of the demo in `dir`.
    pub fn load(dir: &Path) -> Result<State> {
        let path = State::path(dir);
        let text = fs::read_to_string(&path).with_context(|| {
            format!(
                "no demo in {} ({} cannot be read): start one with `demo up`",
                dir.display(),
                path.display()
            )
        })?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a demo record", path.display()))
    }

    /// Writes the record (atomically; readable by the console whoever runs it).
    pub fn save(&self) -> Result<()> {
        let tmp = self.dir.join(".demo.json.tmp");
        fs::write(&tmp, serde_json::to_string_pretty(self)?)?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644))?;
        fs::rename(&tmp, State::path(&self.dir))?;
        Ok(())
    }

    /// The index of a node named `demo-node2`, `node2` or `2`.
    pub fn node(&self, name: &str) -> Result<usize> {
        self.nodes
            .iter()
            .position(|n| {
                n.name == name
                    || n.name.strip_prefix(&format!("{}-", self.scope)) == Some(name)
                    || n.name
                        .strip_suffix(name)
                        .is_some_and(|p| p.ends_with("node"))
            })
            .ok_or_else(|| {
                let names: Vec<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();
                anyhow!("no node {name:?} in the demo: {}", names.join(", "))
            })
    }

    /// The harness's view of node `i` (for its REST API and data directory).
    pub fn node_view(&self, i: usize) -> Node {
        let n = &self.nodes[i];
        Node {
            name: n.name.clone(),
            host: n.host.clone(),
            api_port: n.api_port,
            pg_port: n.pg_port,
            config_path: n.config.clone(),
            data_dir: n.data_dir.clone(),
            log_path: n.log.clone(),
            agent: None,
            tls: false,
        }
    }

    fn etcd(&self) -> Etcd {
        let mut e = Etcd::at(
            &self.dir,
            &self.etcd.host,
            self.etcd.client_port,
            self.etcd.peer_port,
        );
        e.detached = true;
        e
    }

    /// `host:port` of etcd.
    pub fn etcd_endpoint(&self) -> String {
        format!("{}:{}", self.etcd.host, self.etcd.client_port)
    }

    fn net(&self) -> Option<NetLab> {
        self.net
            .as_ref()
            .map(|n| NetLab::attach(&n.tag, n.subnet, self.nodes.len()))
    }

    /// Whether anything the record names still runs.
    pub fn anything_running(&self) -> bool {
        self.running_etcd().is_some()
            || (0..self.nodes.len())
                .any(|i| self.running_agent(i).is_some() || self.running_postmaster(i).is_some())
            || self.running_haproxy().is_some()
    }

    /// etcd's PID while the recorded process runs (its command line names our data directory).
    fn running_etcd(&self) -> Option<i32> {
        let data_dir = self.etcd().data_dir.display().to_string();
        self.etcd.pid.filter(|p| is_ours(*p, &data_dir))
    }

    /// Node `i`'s agent's PID while the recorded process runs (it names the node's config).
    fn running_agent(&self, i: usize) -> Option<i32> {
        let n = &self.nodes[i];
        let config = n.config.display().to_string();
        n.agent_pid.filter(|p| is_ours(*p, &config))
    }

    /// HAProxy's PID while the recorded process runs (it names the demo's configuration).
    fn running_haproxy(&self) -> Option<i32> {
        let h = self.haproxy.as_ref()?;
        let config = h.config.display().to_string();
        h.pid.filter(|p| is_ours(*p, &config))
    }

    /// Node `i`'s postmaster PID (postmaster.pid) while a `postgres` process has it.
    fn running_postmaster(&self, i: usize) -> Option<i32> {
        let pid = self.node_view(i).postmaster_pid()?;
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        (alive(pid) && comm.trim() == "postgres").then_some(pid)
    }

    fn start_etcd(&mut self) -> Result<()> {
        let etcd = self.etcd();
        let child = etcd
            .command()?
            .spawn()
            .context("cannot start etcd: install etcd-server")?;
        self.etcd.pid = Some(child.id() as i32);
        self.etcd.stopped = false;
        self.save()?;
        etcd.wait_ready()
    }

    fn start_agent(&mut self, i: usize) -> Result<()> {
        let n = &self.nodes[i];
        let agent = self.bin_dir.join("pgpilot-agent");
        let child = agent_command(&AgentLaunch {
            program: &agent,
            config: &n.config,
            log: &n.log,
            netns: n.netns.as_deref(),
            home: &self.dir,
            env: &[],
            detached: true,
        })?
        .spawn()
        .with_context(|| format!("cannot start the agent of {}", n.name))?;
        self.nodes[i].agent_pid = Some(child.id() as i32);
        self.nodes[i].cut = false;
        self.save()
    }

    fn start_haproxy(&mut self) -> Result<()> {
        let Some(h) = self.haproxy.clone() else {
            return Ok(());
        };
        let nodes: Vec<Node> = (0..self.nodes.len()).map(|i| self.node_view(i)).collect();
        let options = shared::haproxy::Options {
            bind: h.bind.clone(),
            write_port: h.write_port,
            read_port: h.read_port,
            stats_port: Some(h.stats_port),
            check_interval_ms: 500,
            ca_file: None,
        };
        let cfg = shared::haproxy::render(&self.scope, &crate::haproxy_backends(&nodes), &options);
        let proxy = Haproxy::start_with(&self.dir, &self.scope, nodes.len(), &cfg, &options, true)?;
        if let Some(h) = self.haproxy.as_mut() {
            h.pid = Some(proxy.proc.detach());
        }
        self.save()
    }

    /// The primary's index when one node runs as primary and every other streams from it.
    pub fn healthy(&self) -> Option<usize> {
        let p = self.primary()?;
        (0..self.nodes.len())
            .all(|i| {
                i == p
                    || self.node_view(i).status().is_some_and(|s| {
                        s["replication_state"] == "streaming" && s["role"] == "replica"
                    })
            })
            .then_some(p)
    }

    /// The primary's index, as the REST APIs say.
    pub fn primary(&self) -> Option<usize> {
        (0..self.nodes.len()).find(|&i| {
            self.node_view(i)
                .get("/primary")
                .is_ok_and(|(c, _)| c == 200)
        })
    }
}

/// Serializes the demo commands acting on one directory (the console may run a switch while a
/// person types another); then reads the record, under the lock.
fn lock_and_load(dir: &Path) -> Result<(nix::fcntl::Flock<fs::File>, State)> {
    // say "no demo here" rather than fail to create the lock file in a missing directory
    State::load(dir)?;
    let lock = lock(dir)?;
    Ok((lock, State::load(dir)?))
}

/// Serializes the demo commands acting on one directory.
fn lock(dir: &Path) -> Result<nix::fcntl::Flock<fs::File>> {
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(".lock"))
        .with_context(|| format!("cannot open {}/.lock", dir.display()))?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow!("cannot lock {}/.lock: {e}", dir.display()))
}

/// One line per member: its role and state as its REST API says, or why it does not answer.
fn member_line(state: &State, i: usize) -> String {
    let n = &state.nodes[i];
    let mut flags = Vec::new();
    if n.cut {
        flags.push("CUT");
    }
    if n.isolated {
        flags.push("ISOLATED");
    }
    let live = match state.node_view(i).status() {
        Some(s) => {
            let role = s["role"].as_str().unwrap_or("?");
            let st = s["state"].as_str().unwrap_or("?");
            let rep = s["replication_state"].as_str().unwrap_or("");
            format!("{role} {st} {rep}").trim_end().to_string()
        }
        None if n.cut => "down".into(),
        None => "REST API not answering".into(),
    };
    let mut line = format!("{:<11} {live}", n.name);
    if !flags.is_empty() {
        line.push_str(&format!("  [{}]", flags.join(", ")));
    }
    line
}

/// Starts the demo (or starts again the one kept in `dir` by `down` without `--wipe`), and
/// waits until one primary and streaming replicas run, reporting progress through `say`.
pub fn up(o: &UpOptions, say: &mut dyn FnMut(&str)) -> Result<State> {
    fs::create_dir_all(&o.dir).with_context(|| format!("cannot create {}", o.dir.display()))?;
    fs::set_permissions(&o.dir, fs::Permissions::from_mode(0o755))?;
    let _lock = lock(&o.dir)?;
    let started = Instant::now();
    let mut state = match State::load(&o.dir) {
        Ok(s) if s.anything_running() => bail!(
            "a demo already runs in {}: `demo status` shows it, `demo down` stops it",
            o.dir.display()
        ),
        Ok(s) => {
            say(&format!(
                "starting the demo kept in {} again (its data is kept; `demo down --wipe` starts from scratch)",
                o.dir.display()
            ));
            if let Some(net) = &s.net {
                say("creating the network namespaces again");
                NetLab::create_named(&net.tag, net.subnet, s.nodes.len())?.keep();
            }
            s
        }
        Err(_) => create(o, say)?,
    };
    say(&format!("starting etcd on {}", state.etcd_endpoint()));
    state.start_etcd()?;
    for i in 0..state.nodes.len() {
        say(&format!(
            "starting the agent of {} (PostgreSQL on {}:{}, REST API on :{}){}",
            state.nodes[i].name,
            state.nodes[i].host,
            state.nodes[i].pg_port,
            state.nodes[i].api_port,
            if is_root() { ", as user postgres" } else { "" }
        ));
        state.start_agent(i)?;
    }
    if state.haproxy.is_some() {
        say("starting HAProxy");
        state.start_haproxy()?;
    }
    say(
        "waiting for a primary and two streaming replicas (the first start runs initdb and pg_basebackup)…",
    );
    let mut last: Vec<String> = vec![String::new(); state.nodes.len()];
    let healthy = wait_for(
        "one primary and streaming replicas",
        Duration::from_secs(180),
        || {
            for (i, seen) in last.iter_mut().enumerate() {
                let line = member_line(&state, i);
                if *seen != line {
                    say(&format!(
                        "[{:5.1}s] {line}",
                        started.elapsed().as_secs_f32()
                    ));
                    *seen = line;
                }
            }
            state.healthy()
        },
    );
    match healthy {
        Ok(p) => say(&format!(
            "healthy after {:.1}s: {} is the primary",
            started.elapsed().as_secs_f32(),
            state.nodes[p].name
        )),
        Err(e) => bail!(
            "{e}; the agents' logs are {}/*/agent.log, `demo down` stops what was started",
            state.dir.display()
        ),
    }
    Ok(state)
}

/// Writes the configuration of a new demo and its record (nothing started yet).
fn create(o: &UpOptions, say: &mut dyn FnMut(&str)) -> Result<State> {
    chown_postgres(&o.dir)?;
    let mut net = None;
    // the namespaces are removed again if anything fails before the record names them
    let mut made_lab = None;
    let mut hosts = Vec::new();
    let mut namespaces = Vec::new();
    let mut etcd_host = "127.0.0.1".to_string();
    if o.netns && NetLab::available() {
        // 10.210.220-254.0/24 (the tests' labs use 20-219): the first free one from a hash of
        // the directory, so that two demos in different directories can run side by side
        let hash = o
            .dir
            .display()
            .to_string()
            .bytes()
            .map(u32::from)
            .sum::<u32>();
        let mut made = None;
        for k in 0..35 {
            let subnet = 220 + ((hash + k) % 35) as u8;
            let tag = format!("pgpd{subnet}");
            if Path::new(&format!("/sys/class/net/{tag}br")).exists() {
                continue;
            }
            say(&format!(
                "creating network namespaces {tag}n0..{tag}n2 on bridge {tag}br (10.210.{subnet}.0/24)"
            ));
            match NetLab::create_named(&tag, subnet, 3) {
                Ok(lab) => {
                    made = Some((lab, tag, subnet));
                    break;
                }
                // a half-made lab removed itself on drop
                Err(e) => say(&format!("{e:#}; trying the next subnet")),
            }
        }
        let (lab, tag, subnet) = made.ok_or_else(|| {
            anyhow!("no free subnet in 10.210.220-254.0/24 for the demo's namespaces")
        })?;
        hosts = (0..3).map(|i| lab.node_ip(i)).collect();
        namespaces = lab.namespaces.clone();
        etcd_host = lab.etcd_ip();
        net = Some(NetState {
            tag,
            subnet,
            host_ip: lab.host_ip(),
        });
        made_lab = Some(lab);
    } else if o.netns {
        say(
            "network namespaces need root, iproute2 and nftables: running on loopback (the isolate switch is off)",
        );
    }
    let spec = ClusterSpec {
        scope: SCOPE.into(),
        ttl: 15,
        loop_wait: 5,
        retry_timeout: 5,
        hosts,
        netns: namespaces.clone(),
        detached: true,
        ..Default::default()
    };
    let etcd = Etcd::on_host(&o.dir, &etcd_host);
    let cluster = TestCluster::new(spec.clone(), &o.dir, &etcd.endpoint())?;
    let nodes = cluster
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| NodeState {
            name: n.name.clone(),
            host: n.host.clone(),
            api_port: n.api_port,
            pg_port: n.pg_port,
            data_dir: n.data_dir.clone(),
            config: n.config_path.clone(),
            log: n.log_path.clone(),
            netns: namespaces.get(i).cloned(),
            agent_pid: None,
            cut: false,
            isolated: false,
        })
        .collect();
    // nothing of the harness's cluster runs: it has nothing to stop
    std::mem::forget(cluster);
    let haproxy = (o.haproxy && crate::have_program("haproxy")).then(|| {
        let bind = "127.0.0.1".to_string();
        HaproxyState {
            write_port: port_near(&bind, 5000),
            read_port: port_near(&bind, 5001),
            stats_port: port_near(&bind, 7000),
            bind,
            pid: None,
            config: o.dir.join("haproxy.cfg"),
        }
    });
    if o.haproxy && haproxy.is_none() {
        say("HAProxy is not installed (apt-get install haproxy): running without it");
    }
    let state = State {
        scope: SCOPE.into(),
        dir: o.dir.clone(),
        control: std::env::current_exe()?,
        bin_dir: bin_dir(),
        net,
        etcd: EtcdState {
            host: etcd.host.clone(),
            client_port: etcd.client_port,
            peer_port: etcd.peer_port,
            pid: None,
            stopped: false,
        },
        nodes,
        haproxy,
        ttl: spec.ttl,
    };
    state.save()?;
    if let Some(lab) = made_lab {
        lab.keep();
    }
    Ok(state)
}

/// What `down` found and did.
#[derive(Debug, Default)]
pub struct DownReport {
    pub stopped: Vec<String>,
    /// Processes or ports still there afterwards (empty when all went).
    pub left: Vec<String>,
}

/// Stops everything the demo in `dir` started, by PID (replicas first, so nobody is promoted;
/// then any postmaster left, etcd, HAProxy, the namespaces); with `wipe`, deletes `dir`.
pub fn down(dir: &Path, wipe: bool) -> Result<DownReport> {
    let (_lock, mut state) = lock_and_load(dir)?;
    let mut r = DownReport::default();
    if let Some(pid) = state.running_haproxy() {
        stop_pid(pid, Signal::SIGTERM, Duration::from_secs(5));
        r.stopped.push(format!("HAProxy (pid {pid})"));
    }
    if let Some(h) = state.haproxy.as_mut() {
        h.pid = None;
    }
    let primary = state.primary();
    let mut order: Vec<usize> = (0..state.nodes.len())
        .filter(|i| Some(*i) != primary)
        .collect();
    order.extend(primary);
    for i in order {
        if let Some(pid) = state.running_agent(i) {
            // the agent stops PostgreSQL itself (fast) and hands the lock over
            stop_pid(pid, Signal::SIGTERM, Duration::from_secs(90));
            r.stopped
                .push(format!("agent of {} (pid {pid})", state.nodes[i].name));
        }
        state.nodes[i].agent_pid = None;
    }
    for i in 0..state.nodes.len() {
        if let Some(pm) = state.running_postmaster(i) {
            let view = state.node_view(i);
            kill_postmaster(&view);
            kill_postgres_group(&view);
            r.stopped
                .push(format!("PostgreSQL of {} (pid {pm})", state.nodes[i].name));
        }
    }
    if let Some(pid) = state.running_etcd() {
        stop_pid(pid, Signal::SIGTERM, Duration::from_secs(10));
        r.stopped.push(format!("etcd (pid {pid})"));
    }
    state.etcd.pid = None;
    // what is left: processes, then ports (while the namespaces still exist to reach them)
    for (i, n) in state.nodes.iter().enumerate() {
        if let Some(pm) = state.running_postmaster(i) {
            r.left.push(format!("PostgreSQL of {} (pid {pm})", n.name));
        }
        for (what, port) in [("REST API", n.api_port), ("PostgreSQL", n.pg_port)] {
            if answers(&n.host, port) {
                r.left.push(format!(
                    "{what} of {} on {}:{port}",
                    state.nodes[i].name, n.host
                ));
            }
        }
    }
    for port in [state.etcd.client_port, state.etcd.peer_port] {
        if answers(&state.etcd.host, port) {
            r.left.push(format!("etcd on {}:{port}", state.etcd.host));
        }
    }
    if let Some(h) = &state.haproxy {
        for port in [h.write_port, h.read_port, h.stats_port] {
            if answers(&h.bind, port) {
                r.left.push(format!("HAProxy on {}:{port}", h.bind));
            }
        }
    }
    if let Some(net) = state.net() {
        net.destroy();
        if net.exists() {
            r.left.push("network namespaces or bridge".into());
        } else {
            r.stopped.push("network namespaces".into());
        }
    }
    for n in state.nodes.iter_mut() {
        n.cut = false;
        n.isolated = false;
    }
    state.etcd.stopped = false;
    state.save()?;
    if wipe && r.left.is_empty() {
        drop(_lock);
        fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))?;
        r.stopped.push(format!("wiped {}", dir.display()));
    }
    Ok(r)
}

/// Throws a failure switch; returns what happened and what to watch for.
pub fn flip(dir: &Path, switch: &Switch) -> Result<String> {
    let (_lock, mut state) = lock_and_load(dir)?;
    let ttl = state.ttl;
    match switch {
        Switch::Cut(name) => {
            let i = state.node(name)?;
            let n = state.nodes[i].clone();
            if n.cut {
                bail!(
                    "{} is already cut: `demo restore {}` brings it back",
                    n.name,
                    n.name
                );
            }
            let was_primary = state.primary() == Some(i);
            if let Some(pid) = state.running_agent(i) {
                // the fencing guard dies with the machine, before it could act
                for child in child_pids(pid) {
                    let _ = kill(Pid::from_raw(child), Signal::SIGKILL);
                }
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            kill_postgres_group(&state.node_view(i));
            state.nodes[i].agent_pid = None;
            state.nodes[i].cut = true;
            state.save()?;
            Ok(if was_primary {
                format!(
                    "cut {}: agent and PostgreSQL SIGKILLed, as if the machine died. It was the primary: a replica takes over when its leader key expires (ttl {ttl} s). `restore {}` brings it back (it rejoins with pg_rewind).",
                    n.name, n.name
                )
            } else {
                format!(
                    "cut {}: agent and PostgreSQL SIGKILLed, as if the machine died. `restore {}` brings it back.",
                    n.name, n.name
                )
            })
        }
        Switch::Restore(name) => {
            let i = state.node(name)?;
            let n = state.nodes[i].clone();
            if state.running_agent(i).is_some() {
                bail!("{} runs: nothing to restore", n.name);
            }
            state.start_agent(i)?;
            Ok(format!(
                "restored {}: its agent starts PostgreSQL again in the role the cluster gives it",
                n.name
            ))
        }
        Switch::Crash(name) => {
            let i = state.node(name)?;
            let n = state.nodes[i].clone();
            let pm = state.running_postmaster(i).ok_or_else(|| {
                anyhow!("{}'s PostgreSQL is not running: nothing to crash", n.name)
            })?;
            let _ = kill(Pid::from_raw(pm), Signal::SIGKILL);
            Ok(format!(
                "crashed {}'s postmaster (pid {pm}, SIGKILL): its agent sees it gone and starts it again (crash recovery)",
                n.name
            ))
        }
        Switch::Isolate(name) | Switch::Heal(name) => {
            let i = state.node(name)?;
            let Some(net) = state.net() else {
                bail!(
                    "isolating a node needs network namespaces, and this demo runs on loopback: start it as root with iproute2 and nftables installed (`demo down --wipe`, then `demo up` as root)"
                );
            };
            let n = state.nodes[i].name.clone();
            let isolate = matches!(switch, Switch::Isolate(_));
            if isolate == state.nodes[i].isolated {
                bail!(
                    "{n} is already {}",
                    if isolate {
                        "isolated: `heal` reconnects it"
                    } else {
                        "connected"
                    }
                );
            }
            if isolate {
                net.isolate(i)?;
            } else {
                net.heal(i)?;
            }
            state.nodes[i].isolated = isolate;
            state.save()?;
            Ok(if isolate {
                format!(
                    "isolated {n} from etcd and the other nodes (this host still reaches it). A primary goes read-only after retry_timeout; a replica takes over when the leader key expires. `heal {n}` reconnects it."
                )
            } else {
                format!("healed {n}: it reaches etcd and the other nodes again and rejoins")
            })
        }
        Switch::EtcdStop => {
            if state.etcd.stopped {
                bail!("etcd is already stopped: `etcd start` starts it");
            }
            if let Some(pid) = state.running_etcd() {
                stop_pid(pid, Signal::SIGTERM, Duration::from_secs(10));
            }
            state.etcd.pid = None;
            state.etcd.stopped = true;
            state.save()?;
            Ok("stopped etcd: the primary goes read-only after retry_timeout (no failsafe_mode) and nobody is promoted; replicas keep streaming. `etcd start` brings it back.".into())
        }
        Switch::EtcdStart => {
            if state.running_etcd().is_some() {
                bail!("etcd runs: nothing to start");
            }
            state.start_etcd()?;
            Ok("started etcd: the agents reach it again and a primary takes the lock back".into())
        }
    }
}

/// The demo for a script: its record, with what runs now (`running` for etcd, each agent and
/// HAProxy; each member's `role`, `state` and `replication_state` from its REST API, or null).
pub fn status_json(dir: &Path) -> Result<serde_json::Value> {
    let state = State::load(dir)?;
    let mut v = serde_json::to_value(&state)?;
    v["etcd"]["running"] = state.running_etcd().is_some().into();
    for i in 0..state.nodes.len() {
        let live = state.node_view(i).status();
        let field = |k: &str| live.as_ref().map(|s| s[k].clone()).unwrap_or_default();
        let node = &mut v["nodes"][i];
        node["running"] = state.running_agent(i).is_some().into();
        node["role"] = field("role");
        node["state"] = field("state");
        node["replication_state"] = field("replication_state");
    }
    if state.haproxy.is_some() {
        v["haproxy"]["running"] = state.running_haproxy().is_some().into();
    }
    Ok(v)
}

/// The demo as a person reads it: what runs, where, and how to reach it.
pub fn status(dir: &Path) -> Result<String> {
    let state = State::load(dir)?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "demo in {}{}",
        state.dir.display(),
        match &state.net {
            Some(n) => format!(
                " (nodes in network namespaces on bridge {}br, 10.210.{}.0/24)",
                n.tag, n.subnet
            ),
            None => " (loopback)".into(),
        }
    );
    let _ = writeln!(
        out,
        "etcd        {}  {}",
        state.etcd_endpoint(),
        if let Some(pid) = state.running_etcd() {
            format!("running (pid {pid})")
        } else if state.etcd.stopped {
            "STOPPED by the switch".into()
        } else {
            "not running".into()
        }
    );
    for i in 0..state.nodes.len() {
        let _ = writeln!(out, "{}", member_line(&state, i));
    }
    if let Some(h) = &state.haproxy {
        let up = state.running_haproxy().is_some();
        let _ = writeln!(
            out,
            "haproxy     writes {b}:{w}  reads {b}:{r}  stats http://{b}:{s}/  {}",
            if up { "running" } else { "not running" },
            b = h.bind,
            w = h.write_port,
            r = h.read_port,
            s = h.stats_port
        );
    }
    Ok(out)
}

/// How to use the running demo, printed after `up`.
pub fn hints(state: &State) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "connect:");
    if let Some(h) = &state.haproxy {
        let _ = writeln!(
            out,
            "  psql 'host={} port={} user=postgres password=postgres-secret'   # the primary, through HAProxy",
            h.bind, h.write_port
        );
        let _ = writeln!(
            out,
            "  psql 'host={} port={} user=postgres password=postgres-secret'   # a replica",
            h.bind, h.read_port
        );
    }
    for n in &state.nodes {
        let _ = writeln!(
            out,
            "  {}: PostgreSQL {}:{}  REST http://{}:{}/patroni  log {}",
            n.name,
            n.host,
            n.pg_port,
            n.host,
            n.api_port,
            n.log.display()
        );
    }
    let _ = writeln!(
        out,
        "watch:    {}/pgpilot-console --etcd {} --demo {}",
        state.bin_dir.display(),
        state.etcd_endpoint(),
        state.dir.display()
    );
    let _ = writeln!(
        out,
        "break:    demo cut|restore|crash|isolate|heal NODE, demo etcd stop|start   (or C K N E in the console)"
    );
    let _ = writeln!(out, "stop:     demo down [--wipe]");
    out
}

/// Appends a line to the demo's own log (what the switches did, for the record).
pub fn journal(dir: &Path, line: &str) {
    if let Ok(mut f) = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("switches.log"))
    {
        let _ = writeln!(f, "{} {line}", chrono::Utc::now().format("%H:%M:%S"));
    }
}
