//! Seeded simulation of several agents' decision cores over the in-memory etcd, with simulated
//! PostgreSQL servers, a manual clock and injected faults (etcd partitions of single nodes, lost
//! machines coming back, peers unreachable over REST). After every step it checks the safety
//! rules: at most one writable primary, never a promotion beyond `maximum_lag_on_failover`, never
//! two data directories initialized as different clusters; and after the faults heal, that the
//! cluster converges to one primary holding the lock.

use crate::ha::{self, Action, DataDir, Job, Observation, PeerReport, PgView};
use shared::dcs::mem::{MemKv, MemStore};
use shared::dcs::{Cluster, Dcs, DynamicConfig, MemberData, Status};

/// A tiny deterministic PRNG (xorshift64*), so that every run of a seed is the same.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// True with probability `per_mille`/1000.
    fn chance(&mut self, per_mille: u64) -> bool {
        self.next() % 1000 < per_mille
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const TTL: u64 = 10;
const LOOP_WAIT: u64 = 2;
const RETRY: u64 = 3;
const MAX_LAG: u64 = 1 << 20;
const TICK_MS: u64 = 100;

#[derive(Clone, Debug)]
struct SimPg {
    data: DataDir,
    running: bool,
    in_recovery: bool,
    wal: u64,
    timeline: u64,
    upstream: Option<String>,
}

struct SimNode {
    name: String,
    kv: MemKv,
    dcs: Dcs<MemKv>,
    alive: bool,
    pg: SimPg,
    job: Option<(Job, u64, Vec<Action>)>,
    next_cycle_ms: u64,
    lock_renewed_ms: Option<u64>,
    dcs_down_since_ms: Option<u64>,
    seen_leader: bool,
    started_ms: u64,
    /// Peers cannot reach this node's REST API.
    unreachable: bool,
}

fn fresh_pg() -> SimPg {
    SimPg {
        data: DataDir::Empty,
        running: false,
        in_recovery: true,
        wal: 0,
        timeline: 1,
        upstream: None,
    }
}

impl SimNode {
    fn new(store: &MemStore, name: &str) -> SimNode {
        let kv = store.client();
        SimNode {
            name: name.to_string(),
            dcs: Dcs::new(kv.clone(), "/service", "sim", name, TTL as i64),
            kv,
            alive: true,
            pg: fresh_pg(),
            job: None,
            next_cycle_ms: 0,
            lock_renewed_ms: None,
            dcs_down_since_ms: None,
            seen_leader: false,
            started_ms: 0,
            unreachable: false,
        }
    }

    fn writable(&self) -> bool {
        self.alive && self.pg.running && !self.pg.in_recovery
    }

    fn view(&self) -> PgView {
        PgView {
            data: self.pg.data.clone(),
            running: self.pg.running,
            ready: self.pg.running,
            in_recovery: self.pg.in_recovery,
            wal_position: self.pg.running.then_some(self.pg.wal),
            timeline: Some(self.pg.timeline),
            upstream: self.pg.upstream.as_ref().map(|u| address(u)),
        }
    }

    fn member(&self, paused: bool) -> MemberData {
        let role = match (&self.pg.data, self.pg.running, self.pg.in_recovery) {
            (DataDir::Empty, _, _) => "uninitialized",
            (_, true, false) => "primary",
            _ => "replica",
        };
        MemberData {
            conn_url: format!("postgres://{}/postgres", address(&self.name)),
            api_url: format!("http://{}/patroni", address(&self.name)),
            state: if self.pg.running {
                "running"
            } else {
                "stopped"
            }
            .into(),
            role: role.into(),
            version: "4.1.4".into(),
            xlog_location: self.pg.running.then_some(self.pg.wal),
            timeline: Some(self.pg.timeline),
            pause: paused.then_some(true),
            ..Default::default()
        }
    }
}

/// A fake `host:port` per member name, consistent between member keys and `upstream`.
fn address(name: &str) -> String {
    let port = 5000 + name.bytes().map(u64::from).sum::<u64>();
    format!("10.0.0.1:{port}")
}

struct Sim {
    store: MemStore,
    nodes: Vec<SimNode>,
    rng: Rng,
    now_ms: u64,
    log: Vec<String>,
    sysids: Vec<String>,
    stats: Stats,
}

/// What happened in a run, to prove the faults really forced failovers.
#[derive(Default, Debug, Clone, Copy)]
struct Stats {
    promotions: u64,
    demotions: u64,
    machines_lost: u64,
    etcd_cuts: u64,
}

impl Sim {
    fn new(seed: u64, n: usize) -> Sim {
        let store = MemStore::new();
        let nodes = (1..=n)
            .map(|i| SimNode::new(&store, &format!("n{i}")))
            .collect();
        Sim {
            store,
            nodes,
            rng: Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1),
            now_ms: 0,
            log: Vec::new(),
            sysids: Vec::new(),
            stats: Stats::default(),
        }
    }

    fn trace(&mut self, line: String) {
        self.log.push(format!("{:>7}ms {line}", self.now_ms));
    }

    fn fail(&self, why: &str) -> ! {
        let tail: Vec<&String> = self.log.iter().rev().take(40).collect();
        let tail: Vec<String> = tail.into_iter().rev().cloned().collect();
        panic!("{why}\n--- last events ---\n{}", tail.join("\n"));
    }

    /// One tick of simulated time: faults, replication, due cycles, invariants.
    async fn step(&mut self, faults: bool) {
        self.now_ms += TICK_MS;
        self.store.advance_ms(TICK_MS);
        if faults {
            self.inject_faults();
        }
        self.replicate();
        for i in 0..self.nodes.len() {
            self.finish_job(i).await;
            if self.nodes[i].alive && self.nodes[i].next_cycle_ms <= self.now_ms {
                self.cycle(i).await;
            }
        }
        self.check_invariants();
    }

    fn inject_faults(&mut self) {
        for i in 0..self.nodes.len() {
            // partition one node from etcd, or heal it
            if self.rng.chance(4) {
                let cut = self.rng.chance(500);
                self.nodes[i].kv.set_cut(cut);
                self.stats.etcd_cuts += u64::from(cut);
                let name = self.nodes[i].name.clone();
                self.trace(format!(
                    "{name}: etcd {}",
                    if cut { "CUT" } else { "healed" }
                ));
            }
            // REST unreachable from peers
            if self.rng.chance(3) {
                self.nodes[i].unreachable = !self.nodes[i].unreachable;
            }
            // the whole machine dies (agent and PostgreSQL), and later comes back
            if self.nodes[i].alive && self.rng.chance(2) {
                let n = &mut self.nodes[i];
                n.alive = false;
                n.pg.running = false;
                n.job = None;
                let name = n.name.clone();
                self.stats.machines_lost += 1;
                self.trace(format!("{name}: machine LOST"));
            } else if !self.nodes[i].alive && self.rng.chance(20) {
                let now = self.now_ms;
                let n = &mut self.nodes[i];
                n.alive = true;
                n.started_ms = now;
                n.seen_leader = false;
                n.lock_renewed_ms = None;
                n.dcs_down_since_ms = None;
                n.next_cycle_ms = now;
                n.dcs = Dcs::new(n.kv.clone(), "/service", "sim", &n.name, TTL as i64);
                let name = n.name.clone();
                self.trace(format!("{name}: machine back"));
            }
        }
    }

    /// The primary takes writes; replicas copy the WAL of their upstream.
    fn replicate(&mut self) {
        for n in self.nodes.iter_mut() {
            if n.writable() {
                n.pg.wal += 100 + (self.rng.below(3) * 1000);
            }
        }
        let snapshot: Vec<(String, bool, u64, u64, bool)> = self
            .nodes
            .iter()
            .map(|n| {
                (
                    n.name.clone(),
                    n.alive && n.pg.running,
                    n.pg.wal,
                    n.pg.timeline,
                    n.unreachable,
                )
            })
            .collect();
        for n in self.nodes.iter_mut() {
            if !(n.alive && n.pg.running && n.pg.in_recovery) {
                continue;
            }
            let Some(up) = &n.pg.upstream else { continue };
            if let Some((_, running, wal, tl, _)) = snapshot.iter().find(|s| &s.0 == up)
                && *running
                && *tl >= n.pg.timeline
            {
                n.pg.wal = n.pg.wal.max(*wal);
                n.pg.timeline = *tl;
            }
        }
    }

    fn peers(&self, i: usize) -> Vec<PeerReport> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, p)| PeerReport {
                name: p.name.clone(),
                reachable: p.alive && p.pg.running && !p.unreachable && !self.nodes[i].unreachable,
                is_primary: !p.pg.in_recovery,
                wal_position: p.pg.running.then_some(p.pg.wal),
                failover_priority: 1,
                no_failover: false,
                watchdog_failed: false,
            })
            .collect()
    }

    async fn cycle(&mut self, i: usize) {
        let now = self.now_ms;
        let cluster = self.nodes[i].dcs.load().await.ok();
        match &cluster {
            Some(c) => {
                self.nodes[i].dcs_down_since_ms = None;
                if c.leader.is_some() {
                    self.nodes[i].seen_leader = true;
                }
            }
            None => {
                self.nodes[i].dcs_down_since_ms.get_or_insert(now);
            }
        }
        let peers = self.peers(i);
        let n = &self.nodes[i];
        let timing = shared::dcs::Timing {
            ttl: TTL,
            loop_wait: LOOP_WAIT,
            retry_timeout: RETRY,
        };
        let obs = Observation {
            me: &n.name,
            cluster: cluster.as_ref(),
            pg: n.view(),
            job: n.job.as_ref().map(|j| j.0),
            no_failover: false,
            failover_priority: 1,
            replicatefrom: None,
            nostream: &[],
            peers: &peers,
            seen_leader: n.seen_leader,
            uptime_secs: (now - n.started_ms) / 1000,
            timing,
            dcs_unreachable_secs: n.dcs_down_since_ms.map(|t| (now - t) / 1000).unwrap_or(0),
            lock_age_secs: n.lock_renewed_ms.map(|t| (now - t) / 1000),
        };
        let decision = ha::decide(&obs);
        if !decision.actions.is_empty() {
            let name = self.nodes[i].name.clone();
            self.trace(format!(
                "{name}: {} {:?}",
                decision.summary, decision.actions
            ));
        }
        let mut again = false;
        for action in decision.actions {
            match self.apply(i, action, cluster.as_ref()).await {
                Some(true) => {}
                Some(false) => {
                    again = true;
                    break;
                }
                None => break,
            }
        }
        let paused = cluster.as_ref().is_some_and(|c| c.is_paused());
        if cluster.is_some() {
            let m = self.nodes[i].member(paused);
            let _ = self.nodes[i].dcs.touch_member(&m).await;
        }
        let n = &mut self.nodes[i];
        n.next_cycle_ms = now
            + if again {
                TICK_MS
            } else if cluster.is_none() || n.job.is_some() {
                1000
            } else {
                LOOP_WAIT * 1000
            };
    }

    /// Applies one action; `Some(true)` = go on, `Some(false)` = stop and cycle again soon,
    /// `None` = stop (a lock action failed or an error).
    async fn apply(&mut self, i: usize, action: Action, cluster: Option<&Cluster>) -> Option<bool> {
        let now = self.now_ms;
        let n = &mut self.nodes[i];
        match action {
            Action::BootstrapIfWon => {
                if n.dcs.race_initialize().await.ok()? {
                    n.job = Some((Job::Bootstrap, now + 1000, vec![]));
                }
                Some(false)
            }
            Action::Clone { from } => {
                n.job = Some((Job::Clone, now + 1000, vec![Action::Clone { from }]));
                Some(true)
            }
            Action::AdoptInitialize { sysid } => {
                n.dcs.adopt_initialize(&sysid).await.ok()?;
                Some(true)
            }
            Action::Exit { reason } => {
                let msg = format!("{} exited: {reason}", n.name);
                self.fail(&msg)
            }
            Action::Start {
                as_primary,
                upstream,
            } => {
                n.job = Some((
                    Job::Start,
                    now + 500,
                    vec![Action::Start {
                        as_primary,
                        upstream,
                    }],
                ));
                Some(true)
            }
            Action::AcquireLock => {
                if n.dcs.acquire_leader().await.ok()? {
                    n.lock_renewed_ms = Some(now);
                    Some(false)
                } else {
                    None
                }
            }
            Action::RenewLock => {
                if n.dcs.update_leader(cluster?).await.ok()? {
                    n.lock_renewed_ms = Some(now);
                    Some(true)
                } else {
                    n.lock_renewed_ms = None;
                    None
                }
            }
            Action::ReleaseLock => {
                n.dcs.release_leader().await.ok()?;
                n.lock_renewed_ms = None;
                Some(false)
            }
            Action::Promote => {
                let c = cluster?;
                let optime = c.status.optime.unwrap_or(0);
                if optime.saturating_sub(n.pg.wal) > MAX_LAG {
                    let msg = format!(
                        "{} promotes {} bytes behind the last leader position",
                        n.name,
                        optime - n.pg.wal
                    );
                    self.fail(&msg);
                }
                n.job = Some((Job::Promote, now + 200, vec![Action::Promote]));
                self.stats.promotions += 1;
                Some(true)
            }
            Action::Demote { upstream } => {
                // A stopping primary takes no more writes.
                n.pg.running = false;
                n.job = Some((Job::Demote, now + 500, vec![Action::Demote { upstream }]));
                self.stats.demotions += 1;
                Some(true)
            }
            Action::Follow { upstream } => {
                n.pg.upstream = upstream;
                Some(true)
            }
            Action::EnsureSlots { .. } => Some(true),
            Action::WriteConfig => {
                n.dcs.set_config(&sim_config(), None).await.ok()?;
                Some(true)
            }
            Action::PublishStatus => {
                let status = Status {
                    optime: Some(n.pg.wal),
                    ..Default::default()
                };
                n.dcs.write_status(&status).await.ok()?;
                Some(true)
            }
        }
    }

    async fn finish_job(&mut self, i: usize) {
        let now = self.now_ms;
        let Some((kind, done_at, effect)) = self.nodes[i].job.clone() else {
            return;
        };
        if done_at > now || !self.nodes[i].alive {
            return;
        }
        self.nodes[i].job = None;
        self.nodes[i].next_cycle_ms = now;
        match (kind, effect.first()) {
            (Job::Bootstrap, _) => {
                let sysid = format!("70000000000000{:05}", self.sysids.len() + 1);
                let n = &mut self.nodes[i];
                let ok = n.dcs.set_initialize(&sysid).await.is_ok()
                    && n.dcs.init_config(&sim_config()).await.is_ok()
                    && n.dcs.take_leader().await.is_ok();
                if ok {
                    n.pg = SimPg {
                        data: DataDir::Present {
                            sysid: sysid.clone(),
                            was_primary: true,
                        },
                        running: true,
                        in_recovery: false,
                        wal: 1000,
                        timeline: 1,
                        upstream: None,
                    };
                    n.lock_renewed_ms = Some(now);
                    self.sysids.push(sysid.clone());
                    self.trace(format!("{}: bootstrapped {sysid}", self.nodes[i].name));
                } else {
                    let _ = n.dcs.cancel_initialization().await;
                    n.pg = fresh_pg();
                }
            }
            (Job::Clone, Some(Action::Clone { from })) => {
                let source = self.nodes.iter().find(|s| &s.name == from).cloned_pg();
                if let Some(src) = source.filter(|s| s.running) {
                    let n = &mut self.nodes[i];
                    n.pg = SimPg {
                        data: src.data.clone(),
                        running: true,
                        in_recovery: true,
                        wal: src.wal,
                        timeline: src.timeline,
                        upstream: Some(from.clone()),
                    };
                }
            }
            (
                Job::Start,
                Some(Action::Start {
                    as_primary,
                    upstream,
                }),
            ) => {
                let n = &mut self.nodes[i];
                n.pg.running = true;
                n.pg.in_recovery = !as_primary;
                n.pg.upstream = upstream.clone();
            }
            (Job::Promote, _) => {
                let n = &mut self.nodes[i];
                if n.pg.running {
                    n.pg.in_recovery = false;
                    n.pg.timeline += 1;
                    n.pg.upstream = None;
                }
                let name = self.nodes[i].name.clone();
                self.trace(format!("{name}: promoted"));
            }
            (Job::Demote, Some(Action::Demote { upstream })) => {
                let n = &mut self.nodes[i];
                n.pg.running = true;
                n.pg.in_recovery = true;
                n.pg.upstream = upstream.clone();
            }
            _ => {}
        }
    }

    fn check_invariants(&self) {
        let writable: Vec<&str> = self
            .nodes
            .iter()
            .filter(|n| n.writable())
            .map(|n| n.name.as_str())
            .collect();
        if writable.len() > 1 {
            self.fail(&format!("two writable primaries: {writable:?}"));
        }
        if self.sysids.len() > 1 {
            self.fail(&format!(
                "the cluster was initialized twice: {:?}",
                self.sysids
            ));
        }
    }

    fn heal(&mut self) {
        for n in self.nodes.iter_mut() {
            n.kv.set_cut(false);
            n.unreachable = false;
            if !n.alive {
                n.alive = true;
                n.started_ms = self.now_ms;
                n.seen_leader = false;
                n.next_cycle_ms = self.now_ms;
                n.dcs = Dcs::new(n.kv.clone(), "/service", "sim", &n.name, TTL as i64);
            }
        }
        self.trace("all faults healed".into());
    }

    /// Exactly one primary, holding the lock.
    async fn converged(&self) -> bool {
        let Ok(c) = self.nodes[0].dcs.load().await else {
            return false;
        };
        let writable: Vec<&SimNode> = self.nodes.iter().filter(|n| n.writable()).collect();
        writable.len() == 1
            && c.leader.as_ref().map(|l| l.name.as_str()) == Some(writable[0].name.as_str())
    }
}

trait ClonedPg {
    fn cloned_pg(self) -> Option<SimPg>;
}

impl ClonedPg for Option<&SimNode> {
    fn cloned_pg(self) -> Option<SimPg> {
        self.filter(|n| n.alive).map(|n| n.pg.clone())
    }
}

fn sim_config() -> DynamicConfig {
    DynamicConfig::parse(&format!(
        r#"{{"ttl":{TTL},"loop_wait":{LOOP_WAIT},"retry_timeout":{RETRY},"maximum_lag_on_failover":{MAX_LAG}}}"#
    ))
    .unwrap_or_default()
}

async fn run_seed(seed: u64, nodes: usize) -> Stats {
    let mut sim = Sim::new(seed, nodes);
    // bootstrap without faults
    for _ in 0..200 {
        sim.step(false).await;
    }
    if !sim.converged().await {
        sim.fail(&format!("seed {seed}: no primary after bootstrap"));
    }
    // ten simulated minutes of faults
    for _ in 0..6000 {
        sim.step(true).await;
    }
    sim.heal();
    for _ in 0..1200 {
        sim.step(false).await;
        if sim.converged().await {
            return sim.stats;
        }
    }
    sim.fail(&format!(
        "seed {seed}: no single primary two minutes after the faults healed"
    ));
}

#[tokio::test]
async fn seeded_simulation_keeps_one_writable_primary() {
    let seeds: u64 = std::env::var("PGPILOT_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let mut total = Stats::default();
    for seed in 1..=seeds {
        let s = run_seed(seed, 3 + (seed as usize % 3)).await;
        total.promotions += s.promotions;
        total.demotions += s.demotions;
        total.machines_lost += s.machines_lost;
        total.etcd_cuts += s.etcd_cuts;
    }
    eprintln!("simulation of {seeds} seeds: {total:?}");
    // The faults must really have forced failovers and self-demotions, or the run proves nothing.
    assert!(total.promotions > 2 * seeds, "{total:?}");
    assert!(total.demotions > seeds / 2, "{total:?}");
}
