//! The seeded simulation over the daemon's own runtime: N members, each the real
//! [`crate::runtime::Agent`] (observe → decide → execute → publish, the watch's view, jobs,
//! handover, failsafe) with its real REST API, in tokio's paused time, over the in-memory etcd
//! and the simulated machines of [`world`]. Members reach each other's REST APIs through the
//! routers in memory. A seed decides the faults: agents killed (their guard fences an armed
//! primary) or stopped for longer than the ttl, etcd cut off or hung for one member, PostgreSQL
//! hung or crashed, slow CHECKPOINTs, failing pg_rewind runs, lagging replicas, switchovers
//! asked over REST, and requests forged without credentials. After every change of a server
//! and every step the safety rules are checked (never two servers taking writes, never a start
//! on a data directory whose rewind failed, never two initdbs); after the faults heal, the
//! cluster must converge: one primary holding the leader key, every other member streaming
//! from it on a history that fits.

mod world;

use crate::postgres::Postgres;
use shared::api::{MemberClient, Route};
use shared::config::{BasicAuth, Config};
use shared::dcs::Dcs;
use shared::dcs::mem::{MemKv, MemStore};
use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::time::Instant;
use tracing::Instrument;
use world::{SimFence, SimServer, Tally, World, lock, pg_port};

const TTL: u64 = 30;
const LOOP_WAIT: u64 = 10;
const RETRY_TIMEOUT: u64 = 10;
const STEP: Duration = Duration::from_millis(250);
const USER: &str = "admin";
const PASSWORD: &str = "simulated-secret";

/// A deterministic PRNG (xorshift64*), so that every run of a seed is the same.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
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
        self.next() % n.max(1)
    }
    fn secs(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_secs(from + self.below(to - from + 1))
    }
}

/// Stops polling a member's agent while it is stopped (SIGSTOP, a swap storm): its memory
/// stays, nothing of it runs, its REST API does not answer.
#[derive(Default)]
struct Gate {
    state: Mutex<(bool, Vec<Waker>)>,
}

impl Gate {
    fn set(&self, closed: bool) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.0 = closed;
        if !closed {
            for w in st.1.drain(..) {
                w.wake();
            }
        }
    }
    /// Pending while closed.
    fn poll_open(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.0 {
            st.1.push(cx.waker().clone());
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }
    async fn open(&self) {
        std::future::poll_fn(|cx| self.poll_open(cx)).await
    }
}

/// A future polled only while its gate is open.
struct Gated<F> {
    inner: Pin<Box<F>>,
    gate: Arc<Gate>,
}

impl<F: Future> Future for Gated<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        if self.gate.poll_open(cx).is_pending() {
            return Poll::Pending;
        }
        self.inner.as_mut().poll(cx)
    }
}

/// A member's REST API as its peers reach it.
#[derive(Clone)]
struct Endpoint {
    router: axum::Router,
    gate: Arc<Gate>,
}

/// The REST APIs by port: requests go to the member's router in memory; a member that is
/// down refuses, a stopped one does not answer, an unreachable one (a firewall dropping its
/// packets) does not answer until then.
#[derive(Clone, Default)]
struct Network {
    endpoints: Arc<Mutex<HashMap<u16, Endpoint>>>,
    unreachable: Arc<Mutex<HashMap<u16, Instant>>>,
}

impl Network {
    fn drop_until(&self, port: u16, until: Option<Instant>) {
        let mut map = self.unreachable.lock().unwrap_or_else(|p| p.into_inner());
        match until {
            Some(u) => map.insert(port, u),
            None => map.remove(&port),
        };
    }

    fn set(&self, port: u16, endpoint: Option<Endpoint>) {
        let mut map = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        match endpoint {
            Some(e) => map.insert(port, e),
            None => map.remove(&port),
        };
    }
}

impl Route for Network {
    fn send(
        &self,
        method: reqwest::Method,
        url: String,
        body: Option<serde_json::Value>,
        auth: Option<BasicAuth>,
    ) -> shared::api::Routed {
        let endpoints = self.endpoints.clone();
        let unreachable = self.unreachable.clone();
        Box::pin(async move {
            use tower::ServiceExt;
            let rest = url
                .strip_prefix("http://127.0.0.1:")
                .ok_or_else(|| format!("{url}: not a simulated member"))?;
            let (port, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let port: u16 = port.parse().map_err(|_| format!("{url}: no port"))?;
            let dropped = unreachable
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&port)
                .copied();
            if let Some(until) = dropped {
                // the caller's timeout ends the wait, as a real client's would
                tokio::time::sleep_until(until).await;
            }
            let endpoint = endpoints
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&port)
                .cloned()
                .ok_or_else(|| "Connection refused".to_string())?;
            endpoint.gate.open().await;
            let method_has_body = body.is_some();
            let mut req = axum::http::Request::builder()
                .method(method)
                .uri(if path.is_empty() { "/" } else { path })
                .header("content-type", "application/json");
            if let Some(a) = auth {
                use base64::Engine;
                let token = base64::engine::general_purpose::STANDARD.encode(format!(
                    "{}:{}",
                    a.username,
                    a.password.expose()
                ));
                req = req.header("authorization", format!("Basic {token}"));
            }
            let body = body.map(|b| b.to_string()).unwrap_or_default();
            if method_has_body {
                req = req.header("content-length", body.len());
            }
            let mut req = req
                .body(axum::body::Body::from(body))
                .map_err(|e| e.to_string())?;
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((
                    [127, 0, 0, 1],
                    40000,
                ))));
            let resp = endpoint
                .router
                .oneshot(req)
                .await
                .map_err(|e| e.to_string())?;
            let code = resp.status().as_u16();
            let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .map_err(|e| e.to_string())?;
            Ok((code, String::from_utf8_lossy(&bytes).into_owned()))
        })
    }
}

fn rest_port(i: usize) -> u16 {
    8100 + i as u16
}

fn rest_url(i: usize) -> String {
    format!("http://127.0.0.1:{}/patroni", rest_port(i))
}

/// Synchronous replication as a seed runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sync {
    Off,
    On,
    Strict,
    /// Quorum commit (`synchronous_node_count: 2`).
    Quorum,
    QuorumStrict,
}

/// What a seed's cluster looks like.
#[derive(Debug, Clone, Copy)]
struct Setup {
    members: usize,
    /// `remove_data_directory_on_rewind_failure` (else an operator reinitializes such a
    /// member).
    wipe_failed_rewinds: bool,
    failsafe: bool,
    sync: Sync,
    /// The last member is tagged `nofailover`.
    nofailover_last: bool,
    /// The last member is tagged `replicatefrom: n0` (cascading while n0 is a replica).
    cascade_last: bool,
    maximum_lag_on_failover: u64,
    /// `use_pg_rewind: false` with `remove_data_directory_on_diverged_timelines`: a diverged
    /// member is wiped and cloned again.
    no_rewind: bool,
    /// `(ttl, loop_wait, retry_timeout)`: Patroni's defaults, or a tight 10/2/3 (one seed in
    /// six) where the etcd client's own timeout no longer covers a late lock renewal.
    timing: (u64, u64, u64),
}

impl Setup {
    fn of(seed: u64) -> Setup {
        Setup {
            members: if seed % 4 == 3 { 4 } else { 3 },
            wipe_failed_rewinds: seed.is_multiple_of(2),
            failsafe: seed % 3 == 1,
            sync: [
                Sync::Off,
                Sync::On,
                Sync::Strict,
                Sync::Quorum,
                Sync::QuorumStrict,
            ][(seed % 5) as usize],
            nofailover_last: seed % 7 == 2,
            cascade_last: seed % 7 == 5,
            maximum_lag_on_failover: if seed % 4 == 1 { 64 << 10 } else { 1 << 20 },
            no_rewind: seed % 11 == 4,
            timing: if seed % 6 == 5 {
                (10, 2, 3)
            } else {
                (TTL, LOOP_WAIT, RETRY_TIMEOUT)
            },
        }
    }

    /// No commit acknowledged to a client may ever be lost: in every synchronous mode (when
    /// no standby is synchronous, commits go asynchronous only once the sync key names none,
    /// and then nobody but the leader may be promoted).
    fn strict(&self) -> bool {
        self.sync != Sync::Off
    }

    fn dynamic(&self) -> String {
        let sync = match self.sync {
            Sync::Off => "",
            Sync::On => "synchronous_mode: true",
            Sync::Strict => "synchronous_mode: true, synchronous_mode_strict: true",
            Sync::Quorum => "synchronous_mode: quorum, synchronous_node_count: 2",
            Sync::QuorumStrict => "synchronous_mode: quorum, synchronous_mode_strict: true",
        };
        format!(
            "{{ttl: {}, loop_wait: {}, retry_timeout: {}, maximum_lag_on_failover: {}, failsafe_mode: {}, postgresql: {{use_pg_rewind: {}}}{}{sync}}}",
            self.timing.0,
            self.timing.1,
            self.timing.2,
            self.maximum_lag_on_failover,
            self.failsafe,
            !self.no_rewind,
            if sync.is_empty() { "" } else { ", " },
        )
    }

    /// Member `i`'s tags: failover priorities varied by the seed.
    fn tags(&self, seed: u64, i: usize) -> String {
        let last = i + 1 == self.members;
        let mut tags = vec![format!("failover_priority: {}", (seed >> i) % 3 + 1)];
        if last && self.nofailover_last {
            tags.push("nofailover: true".into());
        }
        if last && self.cascade_last {
            tags.push("replicatefrom: n0".into());
        }
        format!("{{{}}}", tags.join(", "))
    }
}

/// Member `i`'s configuration, its files under `root`.
fn member_config(root: &Path, seed: u64, i: usize) -> Config {
    let setup = Setup::of(seed);
    let dir = root.join(format!("n{i}"));
    let yaml = format!(
        "scope: sim
name: n{i}
tags: {tags}
restapi:
  listen: 127.0.0.1:{rest}
  connect_address: 127.0.0.1:{rest}
  authentication: {{username: {USER}, password: {PASSWORD}}}
etcd3: {{hosts: 127.0.0.1:2379}}
watchdog: {{mode: 'off'}}
bootstrap:
  dcs: {dynamic}
postgresql:
  listen: 127.0.0.1:{pg}
  connect_address: 127.0.0.1:{pg}
  data_dir: {data}
  bin_dir: {root}/no-binaries
  pgpass: {dir}/pgpass
  use_pg_rewind: {rewind}
  remove_data_directory_on_diverged_timelines: {no_rewind}
  remove_data_directory_on_rewind_failure: {wipe}
  authentication:
    superuser: {{username: postgres, password: secret}}
    replication: {{username: replicator, password: rep-secret}}
",
        rest = rest_port(i),
        pg = pg_port(i),
        tags = setup.tags(seed, i),
        dynamic = setup.dynamic(),
        wipe = setup.wipe_failed_rewinds,
        rewind = !setup.no_rewind,
        no_rewind = setup.no_rewind,
        data = dir.join("data").display(),
        dir = dir.display(),
        root = root.display(),
    );
    match Config::from_yaml(&yaml, "simulation") {
        Ok(c) => c,
        Err(e) => panic!("the simulation's configuration is refused: {e}"),
    }
}

/// A member: its etcd handle, its agent's task while it runs, its gate.
struct Member {
    kv: MemKv,
    gate: Arc<Gate>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// Down (killed) until then.
    down_until: Option<Instant>,
    stalled_until: Option<Instant>,
    cut_until: Option<Instant>,
    hung_until: Option<Instant>,
    slow_until: Option<Instant>,
    /// Its REST API unreachable until then.
    unreachable_until: Option<Instant>,
}

/// Counters of what the driver asked for.
#[derive(Debug, Default, Clone, Copy)]
pub struct Asked {
    pub switchovers: u64,
    pub switchovers_done: u64,
    pub forged: u64,
    pub forged_refused: u64,
    pub kills: u64,
    pub reinits: u64,
    pub stalls: u64,
    pub long_stalls: u64,
    pub cuts: u64,
    pub outages: u64,
    pub hangs: u64,
    pub slow: u64,
    pub machines_lost: u64,
    pub rest_unreachable: u64,
}

impl Asked {
    fn add(&mut self, o: Asked) {
        self.switchovers += o.switchovers;
        self.switchovers_done += o.switchovers_done;
        self.forged += o.forged;
        self.forged_refused += o.forged_refused;
        self.kills += o.kills;
        self.reinits += o.reinits;
        self.stalls += o.stalls;
        self.long_stalls += o.long_stalls;
        self.cuts += o.cuts;
        self.outages += o.outages;
        self.hangs += o.hangs;
        self.slow += o.slow;
        self.machines_lost += o.machines_lost;
        self.rest_unreachable += o.rest_unreachable;
    }
}

/// One seed's run.
struct Sim {
    seed: u64,
    rng: Rng,
    root: tempfile::TempDir,
    store: MemStore,
    world: world::Shared,
    net: Network,
    /// Requests to the members' REST APIs (the agents' own clients and the operator's).
    client: MemberClient,
    members: Vec<Member>,
    asked: Arc<Mutex<Asked>>,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let setup = Setup::of(seed);
        let n = setup.members;
        let root = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("no temporary directory: {e}"),
        };
        let dirs = (0..n)
            .map(|i| {
                let dir = root.path().join(format!("n{i}"));
                let _ = std::fs::create_dir_all(&dir);
                (format!("n{i}"), dir.join("data"))
            })
            .collect();
        let store = MemStore::on_tokio_clock();
        let net = Network::default();
        let members = (0..n)
            .map(|_| Member {
                // the request timeout the daemon gives its etcd client
                kv: store
                    .client()
                    .with_timeout(Duration::from_secs(setup.timing.2.clamp(1, 5))),
                gate: Arc::new(Gate::default()),
                task: None,
                down_until: None,
                stalled_until: None,
                cut_until: None,
                hung_until: None,
                slow_until: None,
                unreachable_until: None,
            })
            .collect();
        Sim {
            seed,
            rng: Rng::new(seed),
            root,
            store: store.clone(),
            world: Arc::new(Mutex::new({
                let mut w = World {
                    grace: Duration::from_secs(setup.timing.0),
                    strict: setup.strict(),
                    etcd: Some((store.clone(), setup.maximum_lag_on_failover)),
                    ..World::new(dirs)
                };
                if setup.nofailover_last {
                    w.machines[n - 1].nofailover = true;
                }
                w
            })),
            client: MemberClient::routed(Duration::from_secs(2), Arc::new(net.clone())),
            net,
            members,
            asked: Arc::default(),
        }
    }

    fn note(&self, what: String) {
        lock(&self.world).note(what);
    }

    /// Starts member `i`'s agent (a new process: nothing of the last one's memory).
    async fn start_agent(&mut self, i: usize) {
        let cfg = Arc::new(member_config(self.root.path(), self.seed, i));
        let dcs = Arc::new(Dcs::new(
            self.members[i].kv.clone(),
            &cfg.namespace,
            &cfg.scope,
            &cfg.name,
            Setup::of(self.seed).timing.0 as i64,
        ));
        let server = Arc::new(SimServer {
            world: self.world.clone(),
            index: i,
        });
        let pg = Arc::new(Postgres::with_server(cfg.clone(), server));
        let peers = self.client.clone();
        let (mut agent, api) = crate::runtime::assemble(cfg.clone(), dcs, pg, peers).await;
        {
            let mut w = lock(&self.world);
            w.machines[i].guard = world::Guard::default();
        }
        agent.set_fence_guard(SimFence {
            world: self.world.clone(),
            index: i,
        });
        let gate = Arc::new(Gate::default());
        self.members[i].gate = gate.clone();
        self.net.set(
            rest_port(i),
            Some(Endpoint {
                router: crate::rest::router(api),
                gate: gate.clone(),
            }),
        );
        let span = tracing::info_span!("member", name = %cfg.name);
        let run = async move {
            if let Err(e) = agent.run(std::future::pending()).await {
                tracing::error!("agent ended: {e:#}");
            }
        }
        .instrument(span);
        self.members[i].task = Some(tokio::spawn(Gated {
            inner: Box::pin(run),
            gate,
        }));
        self.note(format!("n{i}: agent starts"));
    }

    /// Kills member `i`'s agent abruptly: PostgreSQL runs on; the guard fences an armed
    /// primary.
    fn kill_agent(&mut self, i: usize) {
        if let Some(t) = self.members[i].task.take() {
            t.abort();
        }
        self.members[i].gate.set(false);
        self.members[i].stalled_until = None;
        self.net.set(rest_port(i), None);
        let mut w = lock(&self.world);
        w.machines[i].guard.agent_gone = true;
        w.note(format!("n{i}: agent killed"));
        w.apply_guards();
    }

    fn revoke_leases(&self) {
        let revoked = std::mem::take(&mut lock(&self.world).revoked);
        for lease in revoked {
            self.store.revoke(lease);
        }
    }

    /// The faults of one step.
    async fn inject(&mut self, now: Instant) {
        let n = self.members.len();
        let k = self.rng.below(n as u64) as usize;
        let alive = self.members[k].task.is_some();
        if alive && self.members[k].stalled_until.is_none() && self.rng.chance(2) {
            let d = self.rng.secs(5, 90);
            self.members[k].down_until = Some(now + d);
            self.asked_mut().kills += 1;
            self.kill_agent(k);
        } else if alive && self.members[k].stalled_until.is_none() && self.rng.chance(1) {
            // the whole machine: agent and PostgreSQL gone at once, back later
            let d = self.rng.secs(10, 120);
            self.members[k].down_until = Some(now + d);
            self.asked_mut().machines_lost += 1;
            self.note(format!("n{k}: machine lost for {d:?}"));
            lock(&self.world).stop(k, "immediate");
            self.kill_agent(k);
        } else if alive && self.members[k].unreachable_until.is_none() && self.rng.chance(2) {
            let d = self.rng.secs(5, 60);
            self.members[k].unreachable_until = Some(now + d);
            self.net.drop_until(rest_port(k), Some(now + d));
            self.asked_mut().rest_unreachable += 1;
            self.note(format!("n{k}: REST API unreachable for {d:?}"));
        } else if alive && self.members[k].stalled_until.is_none() && self.rng.chance(2) {
            // a stall: shorter or longer than the ttl
            let ttl = Setup::of(self.seed).timing.0;
            let d = self.rng.secs(3, 2 * ttl);
            self.members[k].stalled_until = Some(now + d);
            self.members[k].gate.set(true);
            lock(&self.world).machines[k].agent_stopped_until = Some(now + d);
            {
                let mut a = self.asked_mut();
                a.stalls += 1;
                if d.as_secs() > ttl {
                    a.long_stalls += 1;
                }
            }
            self.note(format!("n{k}: agent stopped for {d:?}"));
        } else if self.members.iter().all(|m| m.cut_until.is_none()) && self.rng.chance(1) {
            // etcd down for everyone (failsafe mode's case)
            let d = self.rng.secs(10, 120);
            for m in &mut self.members {
                m.cut_until = Some(now + d);
                m.kv.set_cut(true);
            }
            self.asked_mut().outages += 1;
            self.note(format!("etcd is down for {d:?}"));
        } else if self.members[k].cut_until.is_none() && self.rng.chance(2) {
            let d = self.rng.secs(5, 60);
            self.members[k].cut_until = Some(now + d);
            self.members[k].kv.set_cut(true);
            self.asked_mut().cuts += 1;
            self.note(format!("n{k}: cut off from etcd for {d:?}"));
        } else if self.members[k].hung_until.is_none() && self.rng.chance(2) {
            let d = self.rng.secs(5, 60);
            self.members[k].hung_until = Some(now + d);
            self.members[k].kv.set_hung(true);
            self.asked_mut().hangs += 1;
            self.note(format!("n{k}: etcd calls hang for {d:?}"));
        } else if self.members[k].slow_until.is_none() && self.rng.chance(2) {
            let d = self.rng.secs(10, 90);
            let late = Duration::from_millis(500 + self.rng.below(12_000));
            self.members[k].slow_until = Some(now + d);
            // reads late too, or only writes and lease calls (a stalled disk under etcd)
            if self.rng.chance(500) {
                self.members[k].kv.set_delay(late);
            } else {
                self.members[k].kv.set_write_delay(late);
            }
            self.asked_mut().slow += 1;
            self.note(format!("n{k}: etcd answers {late:?} late for {d:?}"));
        } else if self.rng.chance(2) {
            let d = self.rng.secs(3, 40);
            let mut w = lock(&self.world);
            w.machines[k].hung_until = Some(now + d);
            w.note(format!("n{k}: PostgreSQL hangs for {d:?}"));
        } else if self.rng.chance(1) {
            let mut w = lock(&self.world);
            if w.machines[k].running {
                w.tally.crashes += 1;
                w.note(format!("n{k}: the postmaster crashes"));
                w.stop(k, "immediate");
                // and sometimes will not start again for a while (primary_start_timeout's case)
                if self.rng.chance(500) {
                    let d = self.rng.secs(5, 90);
                    w.machines[k].start_fails_until = Some(now + d);
                    w.note(format!("n{k}: PostgreSQL does not start for {d:?}"));
                }
            }
        } else if self.rng.chance(2) {
            let d = self.rng.secs(1, 40);
            let mut w = lock(&self.world);
            w.machines[k].checkpoint_takes = d;
            w.note(format!("n{k}: a CHECKPOINT takes {d:?}"));
        } else if self.rng.chance(2) {
            let mut w = lock(&self.world);
            w.machines[k].rewind_fails = true;
        } else if self.rng.chance(2) {
            let d = self.rng.secs(5, 60);
            let mut w = lock(&self.world);
            w.machines[k].lag_until = Some(now + d);
        } else if self.rng.chance(3) {
            self.ask_switchover();
        } else if self.rng.chance(3) {
            self.forge(k);
        }
    }

    fn asked_mut(&self) -> std::sync::MutexGuard<'_, Asked> {
        self.asked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The member holding the leader key, if any.
    fn leader(&self) -> Option<usize> {
        let key = "/service/sim/leader";
        let name = self
            .store
            .dump()
            .into_iter()
            .find(|kv| kv.key == key)?
            .value;
        name.strip_prefix('n')?.parse().ok()
    }

    /// An operator's switchover over REST, as `console --batch switchover` sends it.
    fn ask_switchover(&mut self) {
        let Some(leader) = self.leader() else { return };
        let n = self.members.len();
        let candidate = (leader + 1 + self.rng.below(n as u64 - 1) as usize) % n;
        let asked = self.asked.clone();
        self.note(format!("switchover n{leader} → n{candidate} asked"));
        let client = self.client.clone();
        tokio::spawn(async move {
            asked.lock().unwrap_or_else(|p| p.into_inner()).switchovers += 1;
            let auth = BasicAuth {
                username: USER.into(),
                password: shared::config::Secret::new(PASSWORD),
            };
            let body = serde_json::json!({"leader": format!("n{leader}"), "candidate": format!("n{candidate}")});
            let answer = client
                .call(
                    reqwest::Method::POST,
                    &rest_url(leader),
                    "/switchover",
                    &body,
                    Some(&auth),
                    Duration::from_secs(60),
                )
                .await;
            tracing::info!(?answer, "switchover n{leader} → n{candidate}");
            if matches!(answer, Ok((200, _))) {
                asked
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .switchovers_done += 1;
            }
        });
    }

    /// A request without credentials, as anyone who reaches the port could send: it must be
    /// refused, and change nothing.
    fn forge(&mut self, k: usize) {
        let client = self.client.clone();
        let asked = self.asked.clone();
        let n = self.members.len();
        let other = format!("n{}", (k + 1) % n);
        let pick = self.rng.below(4);
        tokio::spawn(async move {
            let (path, body) = match pick {
                0 => ("/switchover", serde_json::json!({"candidate": other})),
                1 => (
                    "/failsafe",
                    serde_json::json!({"name": other, "conn_url": "postgres://x", "api_url": "http://x", "slots": {}}),
                ),
                2 => ("/restart", serde_json::json!({})),
                _ => ("/reinitialize", serde_json::json!({"force": true})),
            };
            let answer = client
                .call(
                    reqwest::Method::POST,
                    &rest_url(k),
                    path,
                    &body,
                    None,
                    Duration::from_secs(5),
                )
                .await;
            let mut a = asked.lock().unwrap_or_else(|p| p.into_inner());
            a.forged += 1;
            match answer {
                Ok((401, _)) | Ok((403, _)) => a.forged_refused += 1,
                Ok((code, text)) => {
                    panic!("a forged POST {path} got {code}: {text}")
                }
                // a member down or stopped: nothing reached it
                Err(_) => a.forged_refused += 1,
            }
        });
    }

    /// What an operator does after a pg_rewind failed (the agent says so in its log and will
    /// not start that data): `POST /reinitialize` on that member.
    fn reinit_broken(&mut self) {
        for i in 0..self.members.len() {
            let marker = self
                .root
                .path()
                .join(format!("n{i}/data.pgpilot-rewinding"));
            if !marker.exists() || self.members[i].task.is_none() {
                continue;
            }
            self.note(format!("the operator reinitializes n{i}"));
            self.asked_mut().reinits += 1;
            let client = self.client.clone();
            tokio::spawn(async move {
                let auth = BasicAuth {
                    username: USER.into(),
                    password: shared::config::Secret::new(PASSWORD),
                };
                let answer = client
                    .call(
                        reqwest::Method::POST,
                        &rest_url(i),
                        "/reinitialize",
                        &serde_json::json!({"force": true}),
                        Some(&auth),
                        Duration::from_secs(10),
                    )
                    .await;
                tracing::info!(?answer, "reinitialize n{i}");
            });
        }
    }

    /// Ends the faults whose time is up.
    async fn heal_due(&mut self, now: Instant, all: bool) {
        for i in 0..self.members.len() {
            let m = &mut self.members[i];
            if m.stalled_until.is_some_and(|u| all || now >= u) {
                m.stalled_until = None;
                m.gate.set(false);
                self.note(format!("n{i}: agent runs again"));
            }
            let m = &mut self.members[i];
            if m.cut_until.is_some_and(|u| all || now >= u) {
                m.cut_until = None;
                m.kv.set_cut(false);
            }
            if m.hung_until.is_some_and(|u| all || now >= u) {
                m.hung_until = None;
                m.kv.set_hung(false);
            }
            if m.slow_until.is_some_and(|u| all || now >= u) {
                m.slow_until = None;
                m.kv.set_delay(Duration::ZERO);
                m.kv.set_write_delay(Duration::ZERO);
            }
            if m.unreachable_until.is_some_and(|u| all || now >= u) {
                m.unreachable_until = None;
                self.net.drop_until(rest_port(i), None);
            }
            if m.down_until.is_some_and(|u| all || now >= u) {
                self.members[i].down_until = None;
                self.start_agent(i).await;
            }
            if all {
                let mut w = lock(&self.world);
                let m = &mut w.machines[i];
                m.hung_until = None;
                m.checkpoint_takes = Duration::ZERO;
                m.rewind_fails = false;
                m.lag_until = None;
                m.start_fails_until = None;
            }
        }
    }

    fn check(&self) {
        let w = lock(&self.world);
        if let Some(v) = w.violations.first() {
            self.fail(&w, v);
        }
        if w.sysids.len() > 1 {
            self.fail(
                &w,
                &format!("the cluster was initialized twice: {:?}", w.sysids),
            );
        }
    }

    fn fail(&self, w: &World, why: &str) -> ! {
        panic!(
            "seed {}: {why}\nlast events:\n{}\nmachines:\n{:#?}",
            self.seed,
            w.trace.join("\n"),
            w.machines
                .iter()
                .map(|m| (&m.name, m.running, m.in_recovery, m.upstream, &m.data))
                .collect::<Vec<_>>()
        )
    }

    /// Whether the cluster has converged: one primary holding the leader key, every other
    /// member running as a replica streaming from it (or from a replica that does).
    fn converged(&self) -> Result<(), String> {
        let leader = self.leader().ok_or("no leader key")?;
        let w = lock(&self.world);
        if !w.writable(leader) {
            return Err(format!(
                "n{leader} holds the leader key but is not a running primary"
            ));
        }
        for (i, m) in w.machines.iter().enumerate() {
            if i == leader {
                continue;
            }
            if !m.running || !m.in_recovery {
                return Err(format!("{} is not running as a replica", m.name));
            }
            if !m.streaming || m.upstream.is_none() {
                return Err(format!("{} does not stream", m.name));
            }
        }
        Ok(())
    }

    /// Runs the seed: bootstrap, `faulty` of faults, then healing until it converges.
    async fn run(mut self, faulty: Duration) -> (Tally, Asked, Duration) {
        SEED_BEGAN.with(|b| b.set(Some(Instant::now())));
        for i in 0..self.members.len() {
            self.start_agent(i).await;
        }
        let began = Instant::now();
        let mut steps = 0u64;
        // bootstrap first: a leader and streaming replicas
        while self.converged().is_err() {
            self.step(false).await;
            if began.elapsed() > Duration::from_secs(600) {
                let why = self.converged().err().unwrap_or_default();
                self.fail(
                    &lock(&self.world),
                    &format!("no cluster after bootstrap: {why}"),
                );
            }
        }
        let faults_from = Instant::now();
        while faults_from.elapsed() < faulty {
            let now = Instant::now();
            self.heal_due(now, false).await;
            self.inject(now).await;
            self.step(true).await;
            steps += 1;
        }
        self.heal_due(Instant::now(), true).await;
        let healing = Instant::now();
        let mut operator_looked = Instant::now();
        loop {
            self.step(false).await;
            if operator_looked.elapsed() > Duration::from_secs(60) {
                operator_looked = Instant::now();
                self.reinit_broken();
            }
            match self.converged() {
                Ok(()) => break,
                Err(why) if healing.elapsed() > Duration::from_secs(900) => {
                    self.fail(
                        &lock(&self.world),
                        &format!("no convergence 15 minutes after the faults ended: {why}"),
                    );
                }
                Err(_) => {}
            }
        }
        let _ = steps;
        let tally = lock(&self.world).tally;
        let asked = *self.asked_mut();
        for m in &mut self.members {
            if let Some(t) = m.task.take() {
                t.abort();
            }
        }
        (tally, asked, began.elapsed())
    }

    async fn step(&mut self, writes: bool) {
        tokio::time::sleep(STEP).await;
        {
            let mut w = lock(&self.world);
            w.step(if writes { 4096 } else { 0 });
        }
        self.revoke_leases();
        self.check();
    }
}

/// Runs one seed on a current-thread runtime with tokio's clock paused: time moves only when
/// every task waits, straight to the next timer.
fn run_seed(seed: u64, faulty: Duration) -> (Tally, Asked, Duration) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("no runtime: {e}"),
    };
    rt.block_on(Sim::new(seed).run(faulty))
}

/// Log lines stamped with the simulated time (tokio's paused clock since the runtime began).
struct SimulatedTime;

thread_local! {
    /// When the seed running on this thread began (its runtime's clock).
    static SEED_BEGAN: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
}

impl tracing_subscriber::fmt::time::FormatTime for SimulatedTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        match SEED_BEGAN.with(|b| b.get()) {
            Some(began) => write!(w, "{:>9} ms", began.elapsed().as_millis()),
            None => write!(w, "        - ms"),
        }
    }
}

fn env_seeds(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The seeded simulation: `PGPILOT_SIM_SEEDS` seeds (300 by default, as CI runs them;
/// thousands locally) from `PGPILOT_SIM_FIRST`, each `PGPILOT_SIM_FAULT_MINUTES` (10) of
/// simulated faults and then healing, shared round-robin between the machine's cores (each
/// seed on a runtime of its own: deterministic whichever thread runs it). `PGPILOT_SIM_LOG`
/// (`info`, `debug`) logs the agents with simulated timestamps. Over enough seeds the totals
/// must show that the faults really forced failovers, rewinds, fencing and switchovers.
#[test]
fn the_runtime_keeps_one_primary_through_faults() {
    if std::env::var_os("PGPILOT_SIM_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_timer(SimulatedTime)
            .with_test_writer()
            .with_env_filter(std::env::var("PGPILOT_SIM_LOG").unwrap_or_else(|_| "info".into()))
            .try_init();
    }
    let seeds = env_seeds("PGPILOT_SIM_SEEDS", 300);
    let first = env_seeds("PGPILOT_SIM_FIRST", 1);
    let faulty = Duration::from_secs(60 * env_seeds("PGPILOT_SIM_FAULT_MINUTES", 10));
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8) as u64;
    let cpu = std::time::Instant::now();
    let handles: Vec<_> = (0..workers.min(seeds.max(1)))
        .map(|w| {
            std::thread::spawn(move || {
                let mut total = (Tally::default(), Asked::default(), Duration::ZERO);
                let mut seed = first + w;
                while seed < first + seeds {
                    let (tally, asked, took) = run_seed(seed, faulty);
                    total.0.add(tally);
                    total.1.add(asked);
                    total.2 += took;
                    seed += workers;
                }
                total
            })
        })
        .collect();
    let mut total = Tally::default();
    let mut asked = Asked::default();
    let mut simulated = Duration::ZERO;
    for h in handles {
        match h.join() {
            Ok((t, a, d)) => {
                total.add(t);
                asked.add(a);
                simulated += d;
            }
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
    let cpu = cpu.elapsed();
    println!(
        "simulation over the runtime: {seeds} seeds on {workers} threads, {:.0} simulated minutes in {:.1} s ({:.1} simulated minutes per CPU-second); {total:?}; {asked:?}",
        simulated.as_secs_f64() / 60.0,
        cpu.as_secs_f64(),
        simulated.as_secs_f64() / 60.0 / (cpu.as_secs_f64() * workers as f64).max(0.001)
    );
    assert_eq!(
        asked.forged, asked.forged_refused,
        "a forged request was taken"
    );
    if seeds >= 100 {
        // the faults must really have forced what the rules are about, or the run proves
        // little: failovers, rewinds (and failed ones), fencing by the guard, switchovers
        // carried out through the hand-over, commits acknowledged by synchronous standbys
        assert!(total.promotions > seeds, "{total:?}");
        assert!(total.rewinds > 0 && total.failed_rewinds > 0, "{total:?}");
        assert!(total.fenced > seeds / 4, "{total:?}");
        assert!(total.sync_acked > seeds, "{total:?}");
        assert!(asked.switchovers_done > seeds / 10, "{asked:?}");
        assert!(
            asked.long_stalls > seeds / 4 && asked.machines_lost > 0,
            "{asked:?}"
        );
    }
}
