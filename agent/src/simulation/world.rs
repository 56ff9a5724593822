//! The simulated machines under the agents: one PostgreSQL server per member (its WAL position,
//! timeline and the fork points of its history, running or not, primary or streaming from an
//! upstream), the fencing guard beside each agent, and the faults the driver injects into
//! them (hung statements and programs, slow CHECKPOINTs, failing pg_rewind runs, servers that
//! will not start). The agents reach it only through [`crate::postgres::Server`] and
//! [`crate::guard::Fence`]; the files they write (configuration, `standby.signal`, markers,
//! timeline history files) are real files under each member's data directory, and the server
//! reads its upstream and role from them as PostgreSQL would.

use crate::guard::{Fence, Fencing};
use crate::postgres::server::Pending;
use crate::postgres::{Server, ServerStatus, SlotInfo, Upstream};
use anyhow::{Result, anyhow, bail};
use shared::types::Lsn;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// The PostgreSQL port of member `i` (its index in the world).
pub fn pg_port(i: usize) -> u16 {
    5500 + i as u16
}

/// What pg_control says about the server's last state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    InProduction,
    ShutDown,
    ShutDownInRecovery,
    InArchiveRecovery,
}

impl Control {
    fn text(self) -> &'static str {
        match self {
            Control::InProduction => "in production",
            Control::ShutDown => "shut down",
            Control::ShutDownInRecovery => "shut down in recovery",
            Control::InArchiveRecovery => "in archive recovery",
        }
    }
}

/// A data directory's contents as far as replication cares.
#[derive(Clone, Debug)]
pub struct Data {
    pub sysid: String,
    pub timeline: u64,
    /// `(timeline, fork point)` of every ancestor timeline, as in a timeline history file.
    pub history: Vec<(u64, u64)>,
    pub wal: u64,
    pub control: Control,
    /// The timeline of the last checkpoint (or restartpoint): what a replica that does not
    /// stream reports, and pg_control shows. A replica streaming a new timeline keeps the old
    /// one here until its next restartpoint (never, in this world).
    pub checkpoint_tl: u64,
}

impl Data {
    /// Whether WAL from `up` can be streamed into this data: its history continues ours.
    pub fn fits(&self, up: &Data) -> bool {
        if up.sysid != self.sysid {
            return false;
        }
        if up.timeline == self.timeline {
            return true;
        }
        if up.timeline < self.timeline {
            return false;
        }
        up.history
            .iter()
            .find(|(tl, _)| *tl == self.timeline)
            .is_some_and(|(_, at)| self.wal <= *at)
    }

    fn history_file(&self) -> String {
        self.history
            .iter()
            .map(|(tl, at)| format!("{tl}\t{}\tno recovery target specified\n", Lsn(*at)))
            .collect()
    }
}

/// One member's server.
#[derive(Debug)]
pub struct Machine {
    pub name: String,
    pub data_dir: PathBuf,
    pub data: Option<Data>,
    pub running: bool,
    pub in_recovery: bool,
    pub pid: u32,
    pub started_at: String,
    pub upstream: Option<usize>,
    pub streaming: bool,
    pub slots: BTreeMap<String, Option<u64>>,
    pub exited: Option<Arc<Notify>>,
    /// Statements and programs wait until this moment (a frozen server, a stuck disk).
    pub hung_until: Option<Instant>,
    /// A CHECKPOINT takes this long.
    pub checkpoint_takes: Duration,
    /// The next pg_rewind fails half way.
    pub rewind_fails: bool,
    /// The server does not start until then.
    pub start_fails_until: Option<Instant>,
    /// Replication from the upstream is held back until then.
    pub lag_until: Option<Instant>,
    /// The fencing guard beside the agent.
    pub guard: Guard,
    /// The agent was last stopped (SIGSTOP) until then.
    pub agent_stopped_until: Option<Instant>,
    /// `synchronous_standby_names` as the running server read it from `postgresql.conf`.
    pub sync: Option<SyncRule>,
    /// Tagged `nofailover`: never promoted.
    pub nofailover: bool,
}

/// A `synchronous_standby_names` value as PostgreSQL applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncRule {
    /// The standbys named, in priority order; `*` is any.
    pub names: Vec<String>,
    /// How many of them a commit waits for.
    pub k: usize,
    /// `ANY k (…)`: any k of them; else the first k that stream.
    pub quorum: bool,
    /// The value as written (`current_setting` reports it so).
    pub value: String,
}

impl SyncRule {
    /// Reads the value from the parameters part of `postgresql.conf`, as the server does.
    fn read(conf: &str) -> Option<SyncRule> {
        let line = conf
            .lines()
            .take_while(|l| !l.starts_with("# recovery"))
            .filter(|l| l.trim_start().starts_with("synchronous_standby_names"))
            .last()?;
        let value = line.split_once('=')?.1.trim();
        let value = value
            .strip_prefix('\'')
            .and_then(|v| v.strip_suffix('\''))
            .unwrap_or(value)
            .replace("''", "'");
        let (names, any) = crate::synchronous::parse_guc_value(&value)?;
        if names.is_empty() {
            return None;
        }
        let quorum = value.trim_start().to_ascii_uppercase().starts_with("ANY");
        let k = any.unwrap_or(names.len());
        Some(SyncRule {
            names,
            k,
            quorum,
            value,
        })
    }

    fn names(&self, standby: &str) -> bool {
        self.names.iter().any(|n| n == standby || n == "*")
    }
}

/// The fencing guard's state, as the agent last told it.
#[derive(Debug, Default, Clone)]
pub struct Guard {
    pub armed: bool,
    pub lease: Option<i64>,
    pub deadline: Option<Instant>,
    /// The agent is gone (killed): an armed guard fences at once.
    pub agent_gone: bool,
}

/// Totals over a run.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    pub promotions: u64,
    pub rewinds: u64,
    pub failed_rewinds: u64,
    pub clones: u64,
    pub fenced: u64,
    pub crashes: u64,
    /// Steps in which a primary acknowledged commits its synchronous standbys had flushed.
    pub sync_acked: u64,
}

impl Tally {
    pub fn add(&mut self, o: Tally) {
        self.promotions += o.promotions;
        self.rewinds += o.rewinds;
        self.failed_rewinds += o.failed_rewinds;
        self.clones += o.clones;
        self.fenced += o.fenced;
        self.crashes += o.crashes;
        self.sync_acked += o.sync_acked;
    }
}

/// Every member's machine, and what went wrong.
pub struct World {
    pub machines: Vec<Machine>,
    /// System identifiers of every initdb: more than one is a cluster initialized twice.
    pub sysids: BTreeSet<String>,
    pub next_pid: u32,
    pub tally: Tally,
    /// Safety rules broken, with when.
    pub violations: Vec<String>,
    /// Leases the guards revoked, for the driver to revoke in etcd.
    pub revoked: Vec<i64>,
    pub trace: Vec<String>,
    pub origin: Instant,
    /// How long after a stall or a hung server the guard may still be what stops a primary
    /// (the ttl).
    pub grace: Duration,
    /// Synchronous mode is strict, or quorum commit: no commit a client was told about may be
    /// missing from the next primary.
    pub strict: bool,
    /// The furthest commit acknowledged to a client: `(timeline, position)`.
    pub acked: Option<(u64, u64)>,
    /// The etcd the members use, and `maximum_lag_on_failover`: no member may be promoted
    /// further behind the last leader position published there.
    pub etcd: Option<(shared::dcs::mem::MemStore, u64)>,
}

/// The world shared by the driver and every member's stand-ins.
pub type Shared = Arc<Mutex<World>>;

pub fn lock(world: &Shared) -> std::sync::MutexGuard<'_, World> {
    world.lock().unwrap_or_else(|p| p.into_inner())
}

impl World {
    pub fn new(dirs: Vec<(String, PathBuf)>) -> World {
        World {
            machines: dirs
                .into_iter()
                .map(|(name, data_dir)| Machine {
                    name,
                    data_dir,
                    data: None,
                    running: false,
                    in_recovery: false,
                    pid: 0,
                    started_at: String::new(),
                    upstream: None,
                    streaming: false,
                    slots: BTreeMap::new(),
                    exited: None,
                    hung_until: None,
                    checkpoint_takes: Duration::ZERO,
                    rewind_fails: false,
                    start_fails_until: None,
                    lag_until: None,
                    guard: Guard::default(),
                    agent_stopped_until: None,
                    sync: None,
                    nofailover: false,
                })
                .collect(),
            sysids: BTreeSet::new(),
            next_pid: 1000,
            tally: Tally::default(),
            violations: Vec::new(),
            revoked: Vec::new(),
            trace: Vec::new(),
            origin: Instant::now(),
            grace: Duration::ZERO,
            strict: false,
            acked: None,
            etcd: None,
        }
    }

    pub fn note(&mut self, what: String) {
        let at = self.origin.elapsed().as_millis();
        self.trace.push(format!("{:>9} ms  {what}", at));
        if self.trace.len() > 400 {
            self.trace.remove(0);
        }
    }

    /// Whether member `i`'s server takes writes.
    pub fn writable(&self, i: usize) -> bool {
        let m = &self.machines[i];
        m.running && !m.in_recovery
    }

    /// Member `i` is about to take writes: no other server may (after the guards acted).
    fn becomes_writable(&mut self, i: usize, how: &str) {
        self.apply_guards();
        let others: Vec<String> = (0..self.machines.len())
            .filter(|&j| j != i && self.writable(j))
            .map(|j| self.machines[j].name.clone())
            .collect();
        let name = self.machines[i].name.clone();
        self.note(format!("{name}: {how}"));
        if self.strict
            && let Some((tl, lsn)) = self.acked
            && let Some(d) = &self.machines[i].data
        {
            let holds = if d.timeline == tl {
                d.wal >= lsn
            } else {
                d.history.iter().any(|(t, at)| *t == tl && *at >= lsn)
            };
            if !holds {
                let at = self.origin.elapsed().as_millis();
                self.violations.push(format!(
                    "at {at} ms {name} became writable ({how}) without the commit acknowledged at {} on timeline {tl} (strict synchronous mode or quorum commit): {d:?}",
                    Lsn(lsn)
                ));
            }
        }
        if !others.is_empty() {
            let at = self.origin.elapsed().as_millis();
            self.violations.push(format!(
                "at {at} ms {name} became writable ({how}) while {others:?} took writes"
            ));
        }
    }

    /// The guards whose agent is gone or whose deadline passed stop their primary.
    pub fn apply_guards(&mut self) {
        let now = Instant::now();
        for i in 0..self.machines.len() {
            let g = &self.machines[i].guard;
            let due = g.armed && (g.agent_gone || g.deadline.is_some_and(|d| now >= d));
            if !due {
                continue;
            }
            let lease = g.lease;
            // the guard is for an agent that cannot act: one that runs, on a server that
            // answers, demotes its primary itself before the guard's deadline
            let recently = |t: Option<Instant>| t.is_some_and(|t| now < t + self.grace);
            if !g.agent_gone
                && !recently(self.machines[i].agent_stopped_until)
                && !recently(self.machines[i].hung_until)
                && self.writable(i)
            {
                let name = self.machines[i].name.clone();
                let at = self.origin.elapsed().as_millis();
                self.violations.push(format!(
                    "at {at} ms the guard had to stop {name}'s primary although its agent ran and its server answered: the agent missed its own demotion deadline"
                ));
            }
            let why = if g.agent_gone {
                "its agent died"
            } else {
                "the deadline passed"
            };
            self.machines[i].guard = Guard {
                agent_gone: self.machines[i].guard.agent_gone,
                ..Guard::default()
            };
            if let Some(l) = lease {
                self.revoked.push(l);
            }
            if self.writable(i) {
                self.tally.fenced += 1;
                let name = self.machines[i].name.clone();
                self.note(format!("{name}: the guard stops the primary ({why})"));
                self.stop(i, "fast");
            }
        }
    }

    /// Stops member `i`'s server (`fast` is clean, `immediate` is not).
    pub fn stop(&mut self, i: usize, mode: &str) {
        if !self.machines[i].running {
            return;
        }
        if mode != "immediate" && !self.machines[i].in_recovery {
            // a primary's clean shutdown sends its WAL to the standbys streaming from it first
            let ours = self.machines[i].data.clone();
            for j in 0..self.machines.len() {
                let r = &mut self.machines[j];
                if j != i
                    && r.running
                    && r.streaming
                    && r.upstream == Some(i)
                    && let (Some(d), Some(u)) = (r.data.as_mut(), ours.as_ref())
                    && d.fits(u)
                {
                    d.wal = d.wal.max(u.wal);
                    d.timeline = u.timeline;
                    d.history = u.history.clone();
                }
            }
        }
        let m = &mut self.machines[i];
        m.running = false;
        m.streaming = false;
        if let Some(d) = m.data.as_mut() {
            d.control = match (mode == "immediate", m.in_recovery) {
                (false, false) => Control::ShutDown,
                (false, true) => Control::ShutDownInRecovery,
                (true, false) => Control::InProduction,
                (true, true) => Control::InArchiveRecovery,
            };
        }
        if let Some(n) = m.exited.take() {
            n.notify_one();
        }
    }

    /// The member whose PostgreSQL listens on `port`.
    fn member_at(&self, port: u16) -> Option<usize> {
        (0..self.machines.len()).find(|&i| pg_port(i) == port)
    }

    /// Forgets data the agent removed (its files are gone).
    fn sync_files(&mut self, i: usize) {
        let m = &mut self.machines[i];
        if !m.data_dir.join("global/pg_control").is_file() {
            m.data = None;
        }
    }

    /// The upstream member configured in `postgresql.conf`, and whether the server starts in
    /// recovery (`standby.signal` or `recovery.signal`), as PostgreSQL reads them.
    fn read_role(&self, i: usize) -> (bool, Option<usize>) {
        let dir = &self.machines[i].data_dir;
        let recovery = dir.join("standby.signal").exists() || dir.join("recovery.signal").exists();
        let conf = self.conf(i);
        let upstream = conf
            .lines()
            .find(|l| l.starts_with("primary_conninfo = "))
            .and_then(|l| {
                l.split_whitespace()
                    .find_map(|p| p.trim_matches('\'').strip_prefix("port="))
                    .and_then(|p| p.trim_matches('\'').parse::<u16>().ok())
            })
            .and_then(|port| self.member_at(port));
        (recovery, upstream)
    }

    fn conf(&self, i: usize) -> String {
        std::fs::read_to_string(self.machines[i].data_dir.join("postgresql.conf"))
            .unwrap_or_default()
    }

    /// The standbys streaming from member `i` on its timeline, with their flush positions and
    /// `pg_stat_replication.sync_state`, as its `synchronous_standby_names` makes them.
    fn standbys(&self, i: usize) -> Vec<(usize, u64, &'static str)> {
        let timeline = self.machines[i].data.as_ref().map(|d| d.timeline);
        let streaming: Vec<(usize, u64)> = (0..self.machines.len())
            .filter_map(|j| {
                let r = &self.machines[j];
                let d = r.data.as_ref()?;
                (r.running && r.streaming && r.upstream == Some(i)).then_some((j, d.wal))
            })
            .collect();
        let rule = self.machines[i].sync.as_ref();
        // priority: the listed ones in list order, the first k synchronous
        let mut by_priority: Vec<usize> = streaming
            .iter()
            .filter(|(j, _)| rule.is_some_and(|r| r.names(&self.machines[*j].name)))
            .map(|(j, _)| *j)
            .collect();
        if let Some(r) = rule {
            by_priority.sort_by_key(|j| {
                r.names
                    .iter()
                    .position(|n| *n == self.machines[*j].name)
                    .unwrap_or(r.names.len())
            });
        }
        streaming
            .into_iter()
            .map(|(j, wal)| {
                let state = match rule {
                    None => "async",
                    Some(r) if !r.names(&self.machines[j].name) => "async",
                    Some(r) if r.quorum => "quorum",
                    Some(r) => {
                        if by_priority.iter().take(r.k).any(|s| *s == j) {
                            "sync"
                        } else {
                            "potential"
                        }
                    }
                };
                let on_timeline = self.machines[j].data.as_ref().map(|d| d.timeline) == timeline;
                (j, if on_timeline { wal } else { 0 }, state)
            })
            .collect()
    }

    /// The commits member `i`, a primary, has acknowledged: all of its WAL without
    /// synchronous standbys, else what k of them have flushed (`None`: commits wait).
    fn acknowledged(&self, i: usize) -> Option<u64> {
        let wal = self.machines[i].data.as_ref()?.wal;
        let Some(rule) = &self.machines[i].sync else {
            return Some(wal);
        };
        let mut flushed: Vec<u64> = self
            .standbys(i)
            .into_iter()
            .filter(|(_, _, state)| matches!(*state, "sync" | "quorum"))
            .map(|(_, lsn, _)| lsn)
            .collect();
        flushed.sort_unstable_by(|a, b| b.cmp(a));
        flushed.get(rule.k.checked_sub(1)?).map(|f| (*f).min(wal))
    }

    /// One step of replication and writes: every replica catches up with its upstream when
    /// its history fits, then every running primary takes `writes` bytes of WAL.
    pub fn step(&mut self, writes: u64) {
        self.apply_guards();
        let now = Instant::now();
        for i in 0..self.machines.len() {
            let m = &self.machines[i];
            if !m.running || !m.in_recovery {
                continue;
            }
            let lagging = m.lag_until.is_some_and(|l| now < l);
            let source = m.upstream.filter(|&j| {
                let up = &self.machines[j];
                up.running && up.data.is_some()
            });
            let (fits, up_data) = match (source, &m.data) {
                (Some(j), Some(d)) => {
                    let up = self.machines[j].data.clone();
                    (up.as_ref().is_some_and(|u| d.fits(u)), up)
                }
                _ => (false, None),
            };
            let m = &mut self.machines[i];
            m.streaming = fits;
            if fits
                && !lagging
                && let (Some(d), Some(u)) = (m.data.as_mut(), up_data)
            {
                d.wal = d.wal.max(u.wal);
                d.timeline = u.timeline;
                d.history = u.history;
            }
        }
        // the writes after replication: a primary is always a step ahead of its standbys, and
        // one that crashes leaves WAL they never received
        for i in 0..self.machines.len() {
            if self.writable(i)
                && self.machines[i].hung_until.is_none_or(|h| now >= h)
                && let Some(d) = self.machines[i].data.as_mut()
            {
                d.wal += writes;
            }
        }
        let writable: Vec<usize> = (0..self.machines.len())
            .filter(|&i| self.writable(i))
            .collect();
        if let [i] = writable[..]
            && let Some(lsn) = self.acknowledged(i)
            && let Some(tl) = self.machines[i].data.as_ref().map(|d| d.timeline)
            && self.acked.is_none_or(|(t, l)| t != tl || lsn > l)
        {
            self.acked = Some((tl, lsn));
            if self.machines[i].sync.is_some() {
                self.tally.sync_acked += 1;
            }
        }
    }

    /// The WAL segment file (16 MiB, sparse) holding the server's last byte of WAL, on its
    /// timeline, as the server writes it.
    fn write_segment(&self, i: usize) -> Result<()> {
        const SEGMENT: u64 = 16 << 20;
        let m = &self.machines[i];
        let Some(d) = &m.data else { return Ok(()) };
        let Some(at) = d.wal.checked_sub(1) else {
            return Ok(());
        };
        let dir = m.data_dir.join("pg_wal");
        let path = dir.join(format!(
            "{:08X}{:08X}{:08X}",
            d.timeline,
            at >> 32,
            (at & 0xFFFF_FFFF) / SEGMENT
        ));
        if !path.exists() {
            std::fs::create_dir_all(&dir)?;
            std::fs::File::create(&path)?.set_len(SEGMENT)?;
        }
        Ok(())
    }

    /// Writes the files initdb or a clone leaves: `PG_VERSION`, pg_control, the timeline
    /// history files.
    fn write_data_files(&self, i: usize) -> Result<()> {
        let m = &self.machines[i];
        let dir = &m.data_dir;
        std::fs::create_dir_all(dir.join("global"))?;
        std::fs::create_dir_all(dir.join("pg_wal"))?;
        std::fs::write(dir.join("PG_VERSION"), "15\n")?;
        std::fs::write(dir.join("global/pg_control"), "simulated\n")?;
        std::fs::write(dir.join("postgresql.conf"), "")?;
        std::fs::write(dir.join("pg_hba.conf"), "")?;
        if let Some(d) = &m.data {
            for k in 1..=d.history.len() {
                let part = Data {
                    history: d.history[..k].to_vec(),
                    ..d.clone()
                };
                let tl = d.history[k - 1].0 + 1;
                std::fs::write(
                    dir.join("pg_wal").join(format!("{tl:08X}.history")),
                    part.history_file(),
                )?;
            }
        }
        self.write_segment(i)
    }

    /// Removes the WAL segment files (a clone starts from an empty directory; pg_rewind
    /// leaves the source's).
    fn clear_segments(&self, i: usize) {
        let dir = self.machines[i].data_dir.join("pg_wal");
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_name().len() == 24 {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    fn controldata(&mut self, i: usize) -> Result<String> {
        self.sync_files(i);
        self.write_segment(i)?;
        let d = self.machines[i]
            .data
            .as_ref()
            .ok_or_else(|| anyhow!("pg_controldata: could not open file global/pg_control"))?;
        Ok(format!(
            "Database system identifier:           {}\n\
             Database cluster state:               {}\n\
             Latest checkpoint location:           {}\n\
             Latest checkpoint's TimeLineID:       {}\n\
             Minimum recovery ending location:     0/0\n\
             Min recovery ending loc's timeline:   0\n\
             wal_log_hints setting:                on\n\
             Data page checksum version:           0\n",
            d.sysid,
            d.control.text(),
            Lsn(d.wal),
            d.checkpoint_tl
        ))
    }

    /// The member a `--source-server=` or `--dbname=` conninfo names, running.
    fn source(&self, args: &[String], flag: &str) -> Result<usize> {
        let conninfo = args
            .iter()
            .find_map(|a| a.strip_prefix(flag))
            .ok_or_else(|| anyhow!("no {flag}"))?;
        let port = conninfo
            .split_whitespace()
            .find_map(|p| p.strip_prefix("port="))
            .and_then(|p| p.trim_matches('\'').parse::<u16>().ok())
            .ok_or_else(|| anyhow!("no port in the conninfo"))?;
        let j = self
            .member_at(port)
            .ok_or_else(|| anyhow!("could not connect to server: no member at port {port}"))?;
        if !self.machines[j].running || self.machines[j].data.is_none() {
            bail!("could not connect to server: Connection refused");
        }
        Ok(j)
    }

    fn run(&mut self, i: usize, program: &str, args: &[String]) -> Result<(String, String)> {
        self.sync_files(i);
        let name = self.machines[i].name.clone();
        match program {
            "initdb" => {
                let sysid = format!(
                    "{}",
                    7_000_000_000_000_000_000u64 + self.sysids.len() as u64
                );
                self.sysids.insert(sysid.clone());
                self.machines[i].data = Some(Data {
                    sysid,
                    timeline: 1,
                    checkpoint_tl: 1,
                    history: Vec::new(),
                    wal: 0x100_0000,
                    control: Control::ShutDown,
                });
                self.write_data_files(i)?;
                self.note(format!("{name}: initdb"));
                Ok((String::new(), String::new()))
            }
            "pg_controldata" => Ok((self.controldata(i)?, String::new())),
            "pg_ctl" if args.iter().any(|a| a == "stop") => {
                let mode = args
                    .iter()
                    .position(|a| a == "-m")
                    .and_then(|p| args.get(p + 1))
                    .cloned()
                    .unwrap_or_else(|| "fast".into());
                self.stop(i, &mode);
                Ok((String::new(), String::new()))
            }
            "postgres" if args.iter().any(|a| a == "--single") => {
                if let Some(d) = self.machines[i].data.as_mut() {
                    d.control = Control::ShutDown;
                }
                Ok((String::new(), String::new()))
            }
            "pg_basebackup" => {
                if self.machines[i].running {
                    let at = self.origin.elapsed().as_millis();
                    self.violations.push(format!(
                        "at {at} ms {name}'s agent cloned over the data directory of its running server"
                    ));
                    bail!("pg_basebackup: directory exists but is not empty");
                }
                let j = self.source(args, "--dbname=")?;
                let data = self.machines[j].data.clone();
                self.clear_segments(i);
                self.machines[i].data = data.map(|d| Data {
                    control: Control::InArchiveRecovery,
                    checkpoint_tl: d.timeline,
                    ..d
                });
                self.write_data_files(i)?;
                self.tally.clones += 1;
                let from = self.machines[j].name.clone();
                self.note(format!("{name}: cloned from {from}"));
                Ok((String::new(), String::new()))
            }
            "pg_rewind" => self.rewind(i, args),
            other => bail!("{other}: not simulated"),
        }
    }

    fn rewind(&mut self, i: usize, args: &[String]) -> Result<(String, String)> {
        let j = self.source(args, "--source-server=")?;
        let up = self.machines[j]
            .data
            .clone()
            .ok_or_else(|| anyhow!("the source has no data"))?;
        let name = self.machines[i].name.clone();
        let ours = self.machines[i]
            .data
            .clone()
            .ok_or_else(|| anyhow!("pg_rewind: no data directory"))?;
        if self.machines[i].running {
            bail!("pg_rewind: target server must be shut down cleanly");
        }
        if ours.sysid != up.sysid {
            bail!("pg_rewind: source and target clusters are from different systems");
        }
        let dry = args.iter().any(|a| a == "--dry-run");
        if ours.fits(&up) || ours.timeline == up.timeline {
            if ours.timeline == up.timeline {
                return Ok((
                    String::new(),
                    "pg_rewind: source and target cluster are on the same timeline\npg_rewind: no rewind required\n".into(),
                ));
            }
            return Ok((String::new(), "pg_rewind: no rewind required\n".into()));
        }
        let fork = up
            .history
            .iter()
            .find(|(tl, _)| *tl == ours.timeline)
            .map(|(_, at)| *at)
            .unwrap_or(0);
        let diverged = format!(
            "pg_rewind: servers diverged at WAL location {} on timeline {}\n",
            Lsn(fork),
            ours.timeline
        );
        if dry {
            return Ok((String::new(), diverged));
        }
        if std::mem::take(&mut self.machines[i].rewind_fails) {
            // half way: the data directory is neither the old nor the new
            if let Some(d) = self.machines[i].data.as_mut() {
                d.control = Control::InArchiveRecovery;
                d.timeline = 0;
            }
            self.tally.failed_rewinds += 1;
            self.note(format!("{name}: pg_rewind fails half way"));
            bail!("pg_rewind: fatal: could not read file: simulated failure");
        }
        self.clear_segments(i);
        self.machines[i].data = Some(Data {
            wal: fork.min(ours.wal),
            control: Control::InArchiveRecovery,
            checkpoint_tl: up.timeline,
            ..up
        });
        self.write_data_files(i)?;
        self.tally.rewinds += 1;
        let from = self.machines[j].name.clone();
        self.note(format!("{name}: rewound onto {from}'s timeline"));
        Ok((String::new(), diverged))
    }

    fn start(&mut self, i: usize, exited: Arc<Notify>) -> Result<u32> {
        self.sync_files(i);
        let now = Instant::now();
        if self.machines[i].running {
            return Ok(self.machines[i].pid);
        }
        if self.machines[i].start_fails_until.is_some_and(|u| now < u) {
            bail!("postgres: could not start: simulated failure");
        }
        let Some(d) = self.machines[i].data.as_ref() else {
            bail!("postgres: no data directory");
        };
        if d.timeline == 0 {
            let name = self.machines[i].name.clone();
            let at = self.origin.elapsed().as_millis();
            self.violations.push(format!(
                "at {at} ms {name}'s agent started PostgreSQL on a data directory whose pg_rewind failed"
            ));
            bail!("postgres: invalid checkpoint record (a half-rewound data directory)");
        }
        let (recovery, upstream) = self.read_role(i);
        let sync = SyncRule::read(&self.conf(i));
        self.next_pid += 1;
        let pid = self.next_pid;
        let started_at = format!("{:?}", self.origin.elapsed());
        let m = &mut self.machines[i];
        m.running = true;
        m.in_recovery = recovery;
        m.upstream = if recovery { upstream } else { None };
        m.pid = pid;
        m.started_at = started_at;
        m.sync = sync;
        m.exited = Some(exited);
        if let Some(d) = m.data.as_mut() {
            d.control = if recovery {
                Control::InArchiveRecovery
            } else {
                Control::InProduction
            };
        }
        if !recovery {
            self.becomes_writable(i, "started as a primary");
        } else {
            let name = self.machines[i].name.clone();
            self.note(format!("{name}: started as a replica of {upstream:?}"));
        }
        Ok(pid)
    }

    fn promote(&mut self, i: usize) -> Result<()> {
        let m = &mut self.machines[i];
        if !m.running {
            bail!("could not connect to server: Connection refused");
        }
        if !m.in_recovery {
            return Ok(());
        }
        if m.nofailover {
            let at = self.origin.elapsed().as_millis();
            let name = m.name.clone();
            self.violations.push(format!(
                "at {at} ms {name}, tagged nofailover, was promoted"
            ));
        }
        if let Some((store, max_lag)) = &self.etcd
            && let Some(optime) = published_optime(store)
            && let Some(d) = &self.machines[i].data
            && optime.saturating_sub(d.wal) > *max_lag
        {
            let at = self.origin.elapsed().as_millis();
            let name = self.machines[i].name.clone();
            self.violations.push(format!(
                "at {at} ms {name} was promoted {} bytes behind the last leader position (maximum_lag_on_failover {max_lag})",
                optime - d.wal
            ));
        }
        let m = &mut self.machines[i];
        // PostgreSQL takes the timeline after the newest it finds a history file for
        let newest_known = std::fs::read_dir(m.data_dir.join("pg_wal"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                u64::from_str_radix(name.strip_suffix(".history")?, 16).ok()
            })
            .max()
            .unwrap_or(0);
        let d = m.data.as_mut().ok_or_else(|| anyhow!("no data"))?;
        d.history.push((d.timeline, d.wal));
        d.timeline = d.timeline.max(newest_known) + 1;
        d.checkpoint_tl = d.timeline;
        d.control = Control::InProduction;
        let tl = d.timeline;
        let file = d.history_file();
        m.in_recovery = false;
        m.upstream = None;
        m.streaming = false;
        std::fs::create_dir_all(m.data_dir.join("pg_wal"))?;
        std::fs::write(
            m.data_dir.join("pg_wal").join(format!("{tl:08X}.history")),
            file,
        )?;
        self.tally.promotions += 1;
        self.becomes_writable(i, &format!("promoted to timeline {tl}"));
        Ok(())
    }

    fn status(&mut self, i: usize) -> Result<ServerStatus> {
        if self.machines[i].running {
            self.write_segment(i)?;
        }
        let m = &self.machines[i];
        if !m.running {
            bail!("could not connect to server: Connection refused");
        }
        let d = m.data.as_ref().ok_or_else(|| anyhow!("no data"))?;
        let rule = m.sync.as_ref();
        let replication = self
            .standbys(i)
            .into_iter()
            .map(|(j, _, state)| {
                let name = self.machines[j].name.clone();
                let priority = rule
                    .and_then(|r| r.names.iter().position(|n| *n == name || n == "*"))
                    .map_or(0, |p| p as i32 + 1);
                crate::postgres::Walsender {
                    usename: Some("replicator".into()),
                    application_name: name,
                    client_addr: Some("127.0.0.1".into()),
                    state: Some("streaming".into()),
                    sync_state: Some(state.into()),
                    sync_priority: Some(priority),
                    flush_lsn: self.machines[j].data.as_ref().map(|d| d.wal),
                }
            })
            .collect();
        Ok(ServerStatus {
            in_recovery: m.in_recovery,
            write_lsn: (!m.in_recovery).then_some(d.wal),
            receive_lsn: m.in_recovery.then_some(d.wal),
            replay_lsn: m.in_recovery.then_some(d.wal),
            replayed_timestamp: None,
            replay_paused: false,
            // a replica that does not stream reports its last restartpoint's timeline
            timeline: Some(if m.in_recovery && !m.streaming {
                d.checkpoint_tl
            } else {
                d.timeline
            }),
            postmaster_start_time: m.started_at.clone(),
            server_version: 150000,
            system_identifier: d.sysid.clone(),
            replication_state: m.in_recovery.then(|| {
                if m.streaming {
                    "streaming"
                } else {
                    "in archive recovery"
                }
                .into()
            }),
            replication,
            pending_restart: None,
            sync_standby_names: Some(m.sync.as_ref().map(|r| r.value.clone()).unwrap_or_default()),
        })
    }
}

/// The last leader position the members published in etcd.
fn published_optime(store: &shared::dcs::mem::MemStore) -> Option<u64> {
    let status = store
        .dump()
        .into_iter()
        .find(|kv| kv.key.ends_with("/status"))?;
    serde_json::from_str::<serde_json::Value>(&status.value)
        .ok()?
        .get("optime")?
        .as_u64()
}

/// Member `i`'s server, as its agent's [`crate::postgres::Postgres`] reaches it.
pub struct SimServer {
    pub world: Shared,
    pub index: usize,
}

impl SimServer {
    /// Waits while the server is hung, then runs `f` on the world.
    async fn call<T>(&self, f: impl FnOnce(&mut World, usize) -> Result<T>) -> Result<T> {
        loop {
            let until = lock(&self.world).machines[self.index].hung_until;
            match until {
                Some(u) if Instant::now() < u => tokio::time::sleep_until(u).await,
                _ => break,
            }
        }
        f(&mut lock(&self.world), self.index)
    }
}

impl Server for SimServer {
    fn run(&self, program: &str, args: Vec<String>) -> Pending<'_, (String, String)> {
        let program = program.to_string();
        Box::pin(async move { self.call(|w, i| w.run(i, &program, &args)).await })
    }
    fn start_postmaster(&self, exited: Arc<Notify>) -> Result<u32> {
        lock(&self.world).start(self.index, exited)
    }
    fn kill_all(&self) {
        let mut w = lock(&self.world);
        if w.machines[self.index].running {
            let name = w.machines[self.index].name.clone();
            w.note(format!("{name}: the agent SIGKILLs the server"));
            w.stop(self.index, "immediate");
        }
    }
    fn postmaster_pid(&self) -> Option<i32> {
        let w = lock(&self.world);
        let m = &w.machines[self.index];
        m.running.then_some(m.pid as i32)
    }
    fn status(&self) -> Pending<'_, ServerStatus> {
        Box::pin(self.call(|w, i| w.status(i)))
    }
    fn promote(&self) -> Pending<'_, ()> {
        Box::pin(self.call(|w, i| w.promote(i)))
    }
    fn checkpoint(&self) -> Pending<'_, ()> {
        Box::pin(async move {
            let takes = lock(&self.world).machines[self.index].checkpoint_takes;
            tokio::time::sleep(takes).await;
            self.call(|w, i| {
                if w.machines[i].running {
                    Ok(())
                } else {
                    bail!("could not connect to server: Connection refused")
                }
            })
            .await
        })
    }
    fn reload(&self) -> Pending<'_, ()> {
        Box::pin(self.call(|w, i| {
            if !w.machines[i].running {
                bail!("could not connect to server: Connection refused");
            }
            // PostgreSQL 13+ takes a changed primary_conninfo with a reload
            let (_, upstream) = w.read_role(i);
            if w.machines[i].in_recovery {
                w.machines[i].upstream = upstream;
            }
            w.machines[i].sync = SyncRule::read(&w.conf(i));
            Ok(())
        }))
    }
    fn create_roles(&self) -> Pending<'_, ()> {
        Box::pin(self.call(|_, _| Ok(())))
    }
    fn slots(&self) -> Pending<'_, Vec<SlotInfo>> {
        Box::pin(self.call(|w, i| {
            Ok(w.machines[i]
                .slots
                .iter()
                .map(|(name, lsn)| SlotInfo {
                    name: name.clone(),
                    logical: false,
                    database: None,
                    plugin: None,
                    restart_lsn: *lsn,
                    confirmed_flush_lsn: None,
                    failover: false,
                    synced: false,
                })
                .collect())
        }))
    }
    fn create_slot(&self, name: &str) -> Pending<'_, ()> {
        let name = name.to_string();
        Box::pin(self.call(move |w, i| {
            let m = &mut w.machines[i];
            let at = m.data.as_ref().map(|d| d.wal);
            m.slots.entry(name).or_insert(at);
            Ok(())
        }))
    }
    fn drop_slot(&self, name: &str) -> Pending<'_, ()> {
        let name = name.to_string();
        Box::pin(self.call(move |w, i| {
            w.machines[i].slots.remove(&name);
            Ok(())
        }))
    }
    fn show(&self, setting: &str) -> Pending<'_, String> {
        let setting = setting.to_string();
        Box::pin(self.call(move |_, _| match setting.as_str() {
            "wal_level" => Ok("replica".into()),
            other => bail!("unrecognized configuration parameter \"{other}\""),
        }))
    }
    fn timeline_history(&self, from: &Upstream) -> Pending<'_, Option<(String, Vec<u8>)>> {
        let port = from.port;
        Box::pin(self.call(move |w, _| {
            let j = w
                .member_at(port)
                .ok_or_else(|| anyhow!("no member at port {port}"))?;
            let m = &w.machines[j];
            if !m.running {
                bail!("could not connect to server: Connection refused");
            }
            let d = m.data.as_ref().ok_or_else(|| anyhow!("no data"))?;
            Ok((d.timeline > 1).then(|| {
                (
                    format!("{:08X}.history", d.timeline),
                    d.history_file().into_bytes(),
                )
            }))
        }))
    }
}

/// Member `i`'s fencing guard: what the agent tells it goes into the world, where the driver
/// and every state change apply it.
pub struct SimFence {
    pub world: Shared,
    pub index: usize,
}

impl Fence for SimFence {
    fn state(&self) -> Fencing {
        if lock(&self.world).machines[self.index].guard.armed {
            Fencing::Armed
        } else {
            Fencing::Disarmed
        }
    }
    fn set(&mut self, armed: bool, lease: Option<i64>) {
        let mut w = lock(&self.world);
        let g = &mut w.machines[self.index].guard;
        if g.armed != armed {
            g.deadline = None;
        }
        g.armed = armed;
        g.lease = lease.filter(|_| armed);
    }
    fn deadline(&mut self, left: Duration) {
        let mut w = lock(&self.world);
        let g = &mut w.machines[self.index].guard;
        if g.armed {
            g.deadline = Some(Instant::now() + left);
        }
    }
    fn reconfigure(&mut self, _etcd: &shared::config::EtcdConfig) {}
    fn release(&mut self) {
        lock(&self.world).machines[self.index].guard = Guard::default();
    }
    fn check(&mut self) {}
}
