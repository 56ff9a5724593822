//! The etcd member a `raft:` agent runs beside itself (seed 004: a cluster with no DCS run by
//! anyone else). The consensus is etcd's own; this module only starts the member, keeps it
//! running, admits it again when its data was lost, and reports its health for `/patroni`,
//! `/metrics` and the console.
//!
//! - **Forming the group.** Every member lists the same peer addresses (`self_addr` plus
//!   `partner_addrs`), so each derives the same etcd `--initial-cluster`; the first start of
//!   each member forms the group once a majority is up.
//! - **Restarting.** A member with data restarts from it (etcd ignores the initial flags).
//! - **Data lost.** A member without data whose address the group lists as a started member
//!   must not come back under its old identity: it would have forgotten entries it had
//!   acknowledged, and a committed leader-key write could be lost. It serves a join request on
//!   its peer port instead; a running member that sees it removes the old identity and adds the
//!   address again through the remaining quorum, and the member starts as a new one
//!   (`--initial-cluster-state existing`) that catches up before it counts.
//! - **Client traffic** stays on 127.0.0.1 (`raft.client_port`): only the peer port is exposed.
//! - **`raft.password`**: the members speak mutual TLS derived from it (raft_tls.rs), so the
//!   peer port answers nobody who does not know it; a join request also carries an HMAC of the
//!   member's address keyed by it, and a running member admits nobody without it.
//!
//! If the agent dies, its member dies with it (the parent-death signal): a machine that lost
//! its agent counts as lost for the consensus too, and a restarted agent starts the member
//! from its data.

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
use serde_json::Value;
use shared::config::RaftConfig;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::process::{Child, Command};
use tracing::{error, info, warn};

/// The member's health, as `/patroni` (`pgpilot.raft`), `/metrics` and the console show it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Health {
    /// The etcd process runs.
    pub running: bool,
    /// This member's peer address.
    pub self_addr: String,
    /// How many members the group has, and how many of them answer over the peer port.
    pub members: usize,
    pub reachable: usize,
    /// The group's leader, by peer address (`None`: no leader seen, e.g. no quorum).
    pub leader: Option<String>,
    /// What is wrong, when something is (waiting for admission, the process exits, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// Shared, updated by the supervisor.
pub type SharedHealth = Arc<RwLock<Health>>;

/// How often the supervisor looks at the group (health, members waiting to be admitted).
const LOOK_EVERY: Duration = Duration::from_secs(2);
/// How long a call to a peer or to the local member may take.
const CALL: Duration = Duration::from_secs(1);
/// The path a member without data serves its join request on (on its peer port).
const JOIN_PATH: &str = "/pgpilot/raft-join";

/// What the group says about this member before it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Start {
    /// Its data is there: etcd restarts from it.
    FromData,
    /// No member answers, or none has started yet: form the group.
    New,
    /// The group runs and lists this address as a member that never started: join it.
    Existing { initial_cluster: String },
    /// The group runs and lists this address as a started member (its data was lost), or does
    /// not list it: wait until a running member admits it again.
    AwaitAdmission { reason: String },
}

/// A member as etcd's peer `/members` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PeerMember {
    id: u64,
    name: String,
    peer_urls: Vec<String>,
    /// Empty until the member has started and published itself.
    client_urls: Vec<String>,
}

/// The address in a peer URL (`http://a:1` → `a:1`).
fn url_addr(url: &str) -> &str {
    url.split("://").last().unwrap_or(url)
}

/// The member's etcd data directory.
fn etcd_dir(cfg: &RaftConfig) -> PathBuf {
    cfg.data_dir.join("etcd")
}

/// `--initial-cluster` of the configured members.
fn configured_cluster(cfg: &RaftConfig) -> String {
    cfg.members()
        .iter()
        .map(|a| format!("{}={}", RaftConfig::member_name(a), cfg.peer_url(a)))
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses etcd's peer `/members` answer.
fn parse_members(body: &Value) -> Option<Vec<PeerMember>> {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    body.as_array()?
        .iter()
        .map(|m| {
            Some(PeerMember {
                id: m["id"].as_u64()?,
                name: m["name"].as_str().unwrap_or_default().to_string(),
                peer_urls: strings(&m["peerURLs"]),
                client_urls: strings(&m["clientURLs"]),
            })
        })
        .collect()
}

/// What one partner's peer port said before this member starts.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    /// Its etcd runs and lists these members.
    Members(Vec<PeerMember>),
    /// It has no raft data and waits too (its `GET /pgpilot/raft-state`).
    Fresh,
}

/// The etcd cluster token of a scope (the same on every member).
fn token(scope: &str) -> String {
    format!("pgpilot-{scope}")
}

/// The ID etcd gives a member of the initial cluster: the first 8 bytes (big-endian) of the
/// SHA-1 of its sorted peer URLs joined, then the token. A member added later has another.
fn bootstrap_id(peer_urls: &[String], token: &str) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let mut b = urls.concat().into_bytes();
    b.extend_from_slice(token.as_bytes());
    let d = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &b);
    let mut id = [0u8; 8];
    id.copy_from_slice(&d.as_ref()[..8]);
    u64::from_be_bytes(id)
}

/// Whether a partner's member list is that of a group never formed: the configured members
/// with their initial IDs, none started.
fn unformed(cfg: &RaftConfig, token: &str, ms: &[PeerMember]) -> bool {
    let mut urls: Vec<String> = ms.iter().flat_map(|m| m.peer_urls.clone()).collect();
    urls.sort();
    let mut want: Vec<String> = cfg.members().iter().map(|a| cfg.peer_url(a)).collect();
    want.sort();
    urls == want
        && ms
            .iter()
            .all(|m| m.client_urls.is_empty() && m.id == bootstrap_id(&m.peer_urls, token))
}

/// Decides how this member starts from what the partners' peer ports said (pure).
/// `has_data`: its etcd data (a write-ahead log) exists.
///
/// A group is formed only when every configured member is known to have none: partners that
/// wait without data, or whose etcd runs with the initial, never-formed member list. A member
/// that lost its data while any partner is unknown waits, so it never forms a group beside one
/// that holds the cluster's state.
fn plan_start(cfg: &RaftConfig, token: &str, has_data: bool, answers: &[Answer]) -> Start {
    if has_data {
        return Start::FromData;
    }
    let me = cfg.peer_url(&cfg.self_addr);
    let formed: Vec<&Vec<PeerMember>> = answers
        .iter()
        .filter_map(|a| match a {
            Answer::Members(ms) if ms.iter().any(|m| !m.client_urls.is_empty()) => Some(ms),
            _ => None,
        })
        .collect();
    // a list that shows this member added and not started yet is the newest word on it; else
    // the group as the partner that knows the most started members sees it
    let added = |ms: &[PeerMember]| {
        ms.iter()
            .any(|m| m.peer_urls.contains(&me) && m.client_urls.is_empty())
    };
    let group = formed.iter().copied().find(|ms| added(ms)).or_else(|| {
        formed
            .iter()
            .copied()
            .max_by_key(|ms| ms.iter().filter(|m| !m.client_urls.is_empty()).count())
    });
    let Some(group) = group else {
        // this member, the partners waiting without data, and those whose etcd runs with the
        // initial list (a list of other IDs, e.g. a member that joins, proves nothing)
        let fresh = 1 + answers
            .iter()
            .filter(|a| match a {
                Answer::Fresh => true,
                Answer::Members(ms) => unformed(cfg, token, ms),
            })
            .count();
        let all = cfg.members().len();
        return if fresh >= all {
            Start::New
        } else {
            Start::AwaitAdmission {
                reason: format!(
                    "no raft data here and no group found: {fresh} of {all} members are known to have none; the group is formed when all of them are (waiting for the partners)"
                ),
            }
        };
    };
    match group.iter().find(|m| m.peer_urls.contains(&me)) {
        Some(m) if m.client_urls.is_empty() => Start::Existing {
            initial_cluster: group
                .iter()
                .flat_map(|o| {
                    let name = if o.id == m.id || o.name.is_empty() {
                        o.peer_urls
                            .first()
                            .map(|u| RaftConfig::member_name(url_addr(u)))
                            .unwrap_or_default()
                    } else {
                        o.name.clone()
                    };
                    o.peer_urls
                        .iter()
                        .map(move |u| format!("{name}={u}"))
                        .collect::<Vec<_>>()
                })
                .collect::<Vec<_>>()
                .join(","),
        },
        Some(_) => Start::AwaitAdmission {
            reason: "the group lists this member as started but its raft data is missing: waiting for a running member to admit it again".into(),
        },
        None => Start::AwaitAdmission {
            reason: "the group does not list this member: waiting for a running member to admit it".into(),
        },
    }
}

/// The join request's proof: HMAC-SHA256 of the address, keyed by `raft.password` (hex).
fn proof(password: &str, addr: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, password.as_bytes());
    let tag = ring::hmac::sign(&key, addr.as_bytes());
    tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn proof_ok(password: Option<&str>, addr: &str, given: &str) -> bool {
    match password {
        None => true,
        Some(p) => {
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, p.as_bytes());
            let Some(tag) = (0..given.len())
                .step_by(2)
                .map(|i| {
                    given
                        .get(i..i + 2)
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                })
                .collect::<Option<Vec<u8>>>()
            else {
                return false;
            };
            ring::hmac::verify(&key, addr.as_bytes(), &tag).is_ok()
        }
    }
}

/// The etcd program: `raft.etcd_bin`'s stand-in is `PGPILOT_ETCD`, else `etcd` on the PATH.
fn etcd_program() -> PathBuf {
    std::env::var_os("PGPILOT_ETCD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("etcd"))
}

/// The etcd command line for this member.
/// Where the peer port listens: `bind_addr` (a host takes `self_addr`'s port), else
/// `self_addr`.
fn peer_listen(cfg: &RaftConfig) -> String {
    match &cfg.bind_addr {
        Some(b) if shared::config::split_host_port(b).is_some() => b.clone(),
        Some(host) => {
            let port = shared::config::split_host_port(&cfg.self_addr)
                .map(|(_, p)| p)
                .unwrap_or(0);
            format!("{host}:{port}")
        }
        None => cfg.self_addr.clone(),
    }
}

fn etcd_args(cfg: &RaftConfig, scope: &str, start: &Start) -> Vec<String> {
    let listen_peer = peer_listen(cfg);
    let mut a = vec![
        format!("--name={}", RaftConfig::member_name(&cfg.self_addr)),
        format!("--data-dir={}", etcd_dir(cfg).display()),
        format!("--listen-peer-urls={}", cfg.peer_url(&listen_peer)),
        format!(
            "--initial-advertise-peer-urls={}",
            cfg.peer_url(&cfg.self_addr)
        ),
        format!("--listen-client-urls=http://{}", cfg.client_endpoint()),
        format!("--advertise-client-urls=http://{}", cfg.client_endpoint()),
        format!("--initial-cluster-token={}", token(scope)),
        "--logger=zap".into(),
        "--log-level=warn".into(),
        // the leader key is written every loop_wait: keep an hour of history, no more
        "--auto-compaction-mode=periodic".into(),
        "--auto-compaction-retention=1h".into(),
    ];
    match start {
        Start::Existing { initial_cluster } => {
            a.push(format!("--initial-cluster={initial_cluster}"));
            a.push("--initial-cluster-state=existing".into());
        }
        _ => {
            a.push(format!("--initial-cluster={}", configured_cluster(cfg)));
            a.push("--initial-cluster-state=new".into());
        }
    }
    if let Some(t) = &cfg.tls {
        // mutual TLS between the members; etcd's client API on the peer port needs it too
        a.push(format!("--peer-trusted-ca-file={}", t.cacert.display()));
        a.push(format!("--peer-cert-file={}", t.cert.display()));
        a.push(format!("--peer-key-file={}", t.key.display()));
        a.push("--peer-client-cert-auth".into());
        if crate::raft_tls::is_derived(cfg) {
            // anyone who knows the password can issue a certificate for any address, so
            // matching it against the connection's source adds nothing, and would refuse
            // members whose traffic leaves from another address than self_addr's
            a.push(SAN_FLAG.get().copied().unwrap_or(san_flag("")).to_string());
        }
    }
    if let Some(ms) = cfg.heartbeat_ms {
        a.push(format!("--heartbeat-interval={ms}"));
    }
    if let Some(ms) = cfg.election_ms {
        a.push(format!("--election-timeout={ms}"));
    }
    a
}

/// Whether the member has data to restart from: a write-ahead log. A `member` directory
/// without one (a start that failed before it wrote any) is removed, so that the next start is
/// planned afresh rather than taken for a restart. Any error but "not there" is an error: a
/// directory that cannot be read is never taken for an empty one.
fn has_data(cfg: &RaftConfig) -> std::io::Result<bool> {
    let member = etcd_dir(cfg).join("member");
    let wal = match std::fs::read_dir(member.join("wal")) {
        Ok(d) => {
            let mut found = false;
            for e in d {
                if e?.file_name().to_string_lossy().ends_with(".wal") {
                    found = true;
                }
            }
            found
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(e),
    };
    if !wal && member.try_exists()? {
        warn!(
            path = %member.display(),
            "raft: removing a member directory without a write-ahead log (a start that never completed)"
        );
        std::fs::remove_dir_all(&member)?;
    }
    Ok(wal)
}

/// How long a waiting member serves its join request before it looks again: 2 to 4 s, varied
/// so that members started together do not keep missing each other.
fn serve_window() -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    Duration::from_millis(2000 + u64::from(nanos % 2000))
}

/// Runs the member until `stop` fires: prepares its start, runs etcd, restarts it when it
/// exits, admits members that lost their data.
pub async fn supervise(
    cfg: RaftConfig,
    scope: String,
    health: SharedHealth,
    stop: Arc<tokio::sync::Notify>,
) {
    let http = match peer_client(&cfg) {
        Ok(c) => c,
        Err(e) => {
            error!("raft: {e}");
            return;
        }
    };
    set(&health, |h| h.self_addr = cfg.self_addr.clone());
    let mut backoff = Duration::from_secs(1);
    let mut last_wait: Option<String> = None;
    loop {
        let start = loop {
            // the raft directory wiped while the agent runs: the derived TLS goes with it
            if let Err(e) = crate::raft_tls::restore(&cfg, &scope) {
                warn!("raft: cannot write the members' TLS again: {e:#}");
            }
            let answers = partner_answers(&http, &cfg).await;
            let data = match has_data(&cfg) {
                Ok(d) => d,
                Err(e) => {
                    // never taken for "no data": that would remove or replace real data
                    let text = format!("cannot tell whether the member has data: {e:#}");
                    error!("raft: {text}");
                    set(&health, |h| h.problem = Some(text.clone()));
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(5)) => continue,
                        _ = stop.notified() => return,
                    }
                }
            };
            match plan_start(&cfg, &token(&scope), data, &answers) {
                Start::AwaitAdmission { reason } => {
                    if last_wait.as_deref() != Some(reason.as_str()) {
                        warn!("raft: {reason}");
                        last_wait = Some(reason.clone());
                    }
                    set(&health, |h| {
                        h.running = false;
                        h.problem = Some(reason.clone());
                    });
                    // the join request on the peer port (partners without data count it too)
                    // until a running member admits us or a majority can form a group
                    tokio::select! {
                        r = serve_join_request(&cfg, serve_window()) => {
                            if let Err(e) = r {
                                warn!("raft: cannot serve the join request on {}: {e:#}", cfg.self_addr);
                                tokio::time::sleep(Duration::from_secs(2)).await;
                            }
                        }
                        _ = stop.notified() => return,
                    }
                }
                s => break s,
            }
        };
        if matches!(start, Start::FromData | Start::New) && !etcd_dir(&cfg).exists() {
            info!(
                members = configured_cluster(&cfg),
                "raft: forming the group (first start of this member)"
            );
        } else if let Start::Existing { initial_cluster } = &start {
            info!(
                initial_cluster,
                "raft: joining the running group as a new member"
            );
        }
        let mut child = match spawn(&cfg, &scope, &start) {
            Ok(c) => c,
            Err(e) => {
                let text = format!("{e:#}");
                error!("raft: {text}");
                set(&health, |h| {
                    h.running = false;
                    h.problem = Some(text.clone());
                });
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.notified() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        info!(pid = child.id(), "raft: etcd member started");
        set(&health, |h| {
            h.running = true;
            h.problem = None;
        });
        let started = std::time::Instant::now();
        let mut tick = tokio::time::interval(LOOK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                status = child.wait() => {
                    let text = match status {
                        Ok(s) => format!("the etcd member exited ({s}); see {}", log_path(&cfg).display()),
                        Err(e) => format!("the etcd member is lost: {e}"),
                    };
                    error!("raft: {text}");
                    set(&health, |h| { h.running = false; h.problem = Some(text.clone()); });
                    break;
                }
                _ = stop.notified() => {
                    terminate(&mut child).await;
                    set(&health, |h| h.running = false);
                    return;
                }
                _ = tick.tick() => {
                    // a stop is heard while the look waits on peers
                    tokio::select! {
                        _ = look(&http, &cfg, &health) => {}
                        _ = stop.notified() => {
                            terminate(&mut child).await;
                            set(&health, |h| h.running = false);
                            return;
                        }
                    }
                }
            }
        }
        // a member that ran for a while is restarted at once; one that keeps failing, slower
        if started.elapsed() > Duration::from_secs(60) {
            backoff = Duration::from_secs(1);
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.notified() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// The HTTP client for the partners' peer ports: with the members' TLS, it presents this
/// member's certificate and trusts only their CA.
fn peer_client(cfg: &RaftConfig) -> Result<reqwest::Client, String> {
    let tls = shared::config::RestClientTls {
        cacert: cfg.tls.as_ref().map(|t| t.cacert.clone()),
        certfile: cfg.tls.as_ref().map(|t| t.cert.clone()),
        keyfile: cfg.tls.as_ref().map(|t| t.key.clone()),
        ..Default::default()
    };
    shared::api::MemberClient::with_tls(CALL, &tls)
        .map(|c| c.http().clone())
        .map_err(|e| format!("raft.cacert / raft.cert / raft.key: {e}"))
}

fn set(health: &SharedHealth, f: impl FnOnce(&mut Health)) {
    let mut h = health.write().unwrap_or_else(|p| p.into_inner());
    f(&mut h);
}

fn log_path(cfg: &RaftConfig) -> PathBuf {
    cfg.data_dir.join("etcd.log")
}

/// Starts etcd, its output appended to `raft.data_dir/etcd.log`; it dies with the agent.
fn spawn(cfg: &RaftConfig, scope: &str, start: &Start) -> Result<Child> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("raft.data_dir {}", cfg.data_dir.display()))?;
    set_private(&cfg.data_dir);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path(cfg))
        .with_context(|| format!("cannot open {}", log_path(cfg).display()))?;
    let err = log.try_clone()?;
    let program = etcd_program();
    let mut cmd = Command::new(&program);
    // nothing of the agent's environment (passwords in PATRONI_*, ETCD_* settings) reaches etcd
    cmd.env_clear()
        .envs(std::env::vars_os().filter(|(k, _)| k == "PATH" || k == "LANG" || k == "TZ"))
        .args(etcd_args(cfg, scope, start))
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(err)
        .kill_on_drop(true);
    // SAFETY: prctl only, async-signal-safe, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
    cmd.spawn().with_context(|| {
        format!(
            "cannot start {} (install Debian's etcd-server, or set PGPILOT_ETCD to the etcd program)",
            program.display()
        )
    })
}

/// The member's data is readable by this user only, as etcd wants it.
fn set_private(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
}

/// SIGTERM, then SIGKILL after 10 s.
async fn terminate(child: &mut Child) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    if tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

/// What each partner's peer port says: its etcd's member list, or that it waits without data
/// (partners that answer neither are left out).
async fn partner_answers(http: &reqwest::Client, cfg: &RaftConfig) -> Vec<Answer> {
    let mut out = Vec::new();
    for p in &cfg.partner_addrs {
        if let Ok(r) = http
            .get(format!("{}/members", cfg.peer_url(p)))
            .send()
            .await
            && r.status().is_success()
            && let Ok(v) = r.json::<Value>().await
            && let Some(ms) = parse_members(&v)
        {
            out.push(Answer::Members(ms));
            continue;
        }
        if let Ok(r) = http
            .get(format!("{}{JOIN_PATH}", cfg.peer_url(p)))
            .send()
            .await
            && r.status().is_success()
            && let Ok(v) = r.json::<Value>().await
            && v["addr"].as_str() == Some(p.as_str())
        {
            out.push(Answer::Fresh);
        }
    }
    out
}

/// One look at the group: health, and the partners that wait to be admitted again.
async fn look(http: &reqwest::Client, cfg: &RaftConfig, health: &SharedHealth) {
    let client = match local_client(cfg).await {
        Ok(c) => c,
        Err(e) => {
            set(health, |h| h.problem = Some(format!("local member: {e:#}")));
            return;
        }
    };
    let mut client = client;
    let members = match tokio::time::timeout(CALL, client.member_list()).await {
        Ok(Ok(r)) => r.members().to_vec(),
        Ok(Err(e)) => {
            set(health, |h| h.problem = Some(format!("member list: {e}")));
            return;
        }
        Err(_) => {
            set(health, |h| {
                h.problem = Some("member list: no answer within 1 s".into())
            });
            return;
        }
    };
    let leader_id = match tokio::time::timeout(CALL, client.status()).await {
        Ok(Ok(s)) => Some(s.leader()),
        _ => None,
    };
    let mut reachable = 0;
    for m in &members {
        let Some(u) = m.peer_urls().first() else {
            continue;
        };
        if http
            .get(format!("{u}/version"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            reachable += 1;
        }
    }
    let leader = leader_id.and_then(|id| {
        members
            .iter()
            .find(|m| m.id() == id && id != 0)
            .and_then(|m| m.peer_urls().first())
            .map(|u| url_addr(u).to_string())
    });
    // a group formed before raft.password or the TLS files were added keeps its old scheme
    let own = cfg.peer_url(&cfg.self_addr);
    let stale = members.iter().find_map(|m| {
        m.peer_urls()
            .iter()
            .find(|u| url_addr(u) == cfg.self_addr && u.as_str() != own)
            .cloned()
    });
    set(health, |h| {
        h.members = members.len();
        h.reachable = reachable;
        h.leader = leader.clone();
        h.problem = if let Some(u) = &stale {
            Some(format!(
                "the group lists this member as {u}, it listens on {own}: raft.password or the TLS files changed the scheme; form the group again (README, raft clusters)"
            ))
        } else if leader.is_none() {
            Some("no raft leader: the group has no quorum".into())
        } else {
            None
        };
    });
    // partners that wait to be admitted (their data was lost), when this member has a leader
    if leader.is_none() {
        return;
    }
    // learners that caught up become voters (etcd refuses while they lag: asked again later)
    for m in members
        .iter()
        .filter(|m| m.is_learner() && !m.client_urls().is_empty())
    {
        if let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_secs(3), client.member_promote(m.id())).await
        {
            info!(
                member = m.name(),
                "raft: a re-admitted member caught up: now a voter"
            );
        }
    }
    // etcd takes one learner at a time: nobody else is admitted while one catches up
    if members.iter().any(|m| m.is_learner()) {
        return;
    }
    for p in &cfg.partner_addrs {
        let url = format!("{}{JOIN_PATH}", cfg.peer_url(p));
        let Ok(r) = http.get(&url).send().await else {
            continue;
        };
        if !r.status().is_success() {
            continue;
        }
        let Ok(v) = r.json::<Value>().await else {
            continue;
        };
        let given = v["proof"].as_str().unwrap_or_default();
        if v["addr"].as_str() != Some(p.as_str()) {
            continue;
        }
        if !proof_ok(cfg.password.as_ref().map(|s| s.expose()), p, given) {
            warn!(
                partner = p,
                "raft: a join request without the right proof of raft.password: ignored"
            );
            continue;
        }
        match readmit(&mut client, &members, &cfg.peer_url(p)).await {
            Ok(false) => {}
            Ok(true) => info!(
                partner = p,
                "raft: admitted again a member that lost its data (old identity removed, address added)"
            ),
            Err(e) => warn!(partner = p, "raft: cannot admit the member again: {e:#}"),
        }
    }
}

/// Removes the old identity of the member at peer URL `url` (if any) and adds the URL as a
/// new member; `false` when it was added already and has not started yet.
async fn readmit(
    client: &mut etcd_client::Client,
    members: &[etcd_client::Member],
    url: &str,
) -> Result<bool> {
    let url = url.to_string();
    if let Some(old) = members.iter().find(|m| m.peer_urls().contains(&url)) {
        if old.client_urls().is_empty() && old.name().is_empty() {
            // already added and not started yet: nothing to do
            return Ok(false);
        }
        tokio::time::timeout(Duration::from_secs(5), client.member_remove(old.id()))
            .await
            .map_err(|_| anyhow!("member remove: no answer within 5 s"))?
            .context("member remove")?;
    }
    // a learner first: it counts for the quorum only once it has caught up (promoted by
    // `promote_learners`)
    tokio::time::timeout(
        Duration::from_secs(5),
        client.member_add(
            [url.as_str()],
            Some(etcd_client::MemberAddOptions::new().with_is_learner()),
        ),
    )
    .await
    .map_err(|_| anyhow!("member add: no answer within 5 s"))?
    .context("member add")?;
    Ok(true)
}

async fn local_client(cfg: &RaftConfig) -> Result<etcd_client::Client> {
    // reads are cut at CALL by their callers; membership changes get 5 s
    let opts = etcd_client::ConnectOptions::new()
        .with_connect_timeout(CALL)
        .with_timeout(Duration::from_secs(5));
    etcd_client::Client::connect([format!("http://{}", cfg.client_endpoint())], Some(opts))
        .await
        .context("cannot connect to the local etcd member")
}

/// Serves the join request on the peer port for `for_how_long` (a member without data that
/// waits to be admitted again): `GET /pgpilot/raft-join` answers the address and its proof.
async fn serve_join_request(cfg: &RaftConfig, for_how_long: Duration) -> Result<()> {
    let bind = peer_listen(cfg);
    let listener = tokio::net::TcpListener::bind(&bind)
        .await
        .with_context(|| format!("bind {bind}"))?;
    // with the members' TLS the request is answered over it, to members only
    let acceptor = match &cfg.tls {
        Some(t) => Some(tokio_rustls::TlsAcceptor::from(
            crate::rest_access::tls_server_config(
                &t.cert.display().to_string(),
                &t.key.display().to_string(),
                None,
                Some((&t.cacert.display().to_string(), false)),
            )
            .context("raft.cert / raft.key / raft.cacert")?,
        )),
        None => None,
    };
    let body = serde_json::json!({
        "addr": cfg.self_addr,
        "proof": cfg.password.as_ref().map(|p| proof(p.expose(), &cfg.self_addr)).unwrap_or_default(),
        "data": false,
    })
    .to_string();
    let deadline = tokio::time::Instant::now() + for_how_long;
    loop {
        let accepted = tokio::time::timeout_at(deadline, listener.accept()).await;
        let Ok(Ok((mut sock, _))) = accepted else {
            return Ok(());
        };
        let body = body.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            match acceptor {
                None => answer_join(&mut sock, &body).await,
                Some(a) => {
                    if let Ok(Ok(mut tls)) = tokio::time::timeout(CALL, a.accept(sock)).await {
                        answer_join(&mut tls, &body).await;
                    }
                }
            }
        });
    }
}

/// Answers one request on the peer port of a member that waits without data.
async fn answer_join<S>(sock: &mut S, body: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(CALL, sock.read(&mut buf))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..n]);
    let answer = if head.starts_with(&format!("GET {JOIN_PATH} ")) {
        // the address, its proof, and that this member has no raft data
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    } else {
        "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            .to_string()
    };
    let _ = tokio::time::timeout(CALL, sock.write_all(answer.as_bytes())).await;
    let _ = tokio::time::timeout(CALL, sock.shutdown()).await;
}

/// Checks the raft section against the machine before the member starts (the etcd program
/// runs, the data directory can be made) and returns it ready to run: with `raft.password`
/// and no TLS files, with the members' TLS derived from the password (raft_tls.rs).
pub fn prepare(cfg: &RaftConfig, scope: &str) -> Result<RaftConfig> {
    let program = etcd_program();
    let out = std::process::Command::new(&program)
        .arg("--version")
        .output()
        .map_err(|e| {
            anyhow!(
                "raft: cannot run {} ({e}): install Debian's etcd-server (or set PGPILOT_ETCD)",
                program.display()
            )
        })?;
    if !out.status.success() {
        bail!("raft: {} --version failed", program.display());
    }
    let _ = SAN_FLAG.set(san_flag(&String::from_utf8_lossy(&out.stdout)));
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("raft.data_dir {}", cfg.data_dir.display()))?;
    set_private(&cfg.data_dir);
    crate::raft_tls::derive(cfg, scope).context("raft.password: the members' TLS")
}

/// etcd's flag that stops it checking a peer's certificate against the address the peer's
/// connection comes from, as the installed etcd spells it (set by [`prepare`]).
static SAN_FLAG: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

/// The flag's name for the etcd whose `--version` printed `version`: etcd 3.6 dropped the
/// "experimental" prefix (3.4 and 3.5 know only the prefixed name).
fn san_flag(version: &str) -> &'static str {
    let v = version
        .lines()
        .find_map(|l| l.strip_prefix("etcd Version:"))
        .map(str::trim)
        .unwrap_or("");
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) >= (3, 6) {
        "--peer-skip-client-san-verification"
    } else {
        "--experimental-peer-skip-client-san-verification"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_san_flag_follows_the_installed_etcd() {
        let v34 = "etcd Version: 3.4.23\nGit SHA: Not provided\nGo Version: go1.19.8\n";
        assert_eq!(
            san_flag(v34),
            "--experimental-peer-skip-client-san-verification"
        );
        assert_eq!(
            san_flag("etcd Version: 3.6.1\n"),
            "--peer-skip-client-san-verification"
        );
        assert_eq!(
            san_flag("garbage"),
            "--experimental-peer-skip-client-san-verification"
        );
    }

    fn cfg() -> RaftConfig {
        crate::tests_support::raft_section("/var/lib/raft", "10.0.0.2:5010")
    }

    fn member(id: u64, addr: &str, started: bool) -> PeerMember {
        PeerMember {
            id,
            name: RaftConfig::member_name(addr),
            peer_urls: vec![format!("http://{addr}")],
            client_urls: if started {
                vec!["http://127.0.0.1:5011".into()]
            } else {
                vec![]
            },
        }
    }

    #[test]
    fn every_member_derives_the_same_initial_cluster() {
        let a = configured_cluster(&cfg());
        let mut other = cfg();
        other.self_addr = "10.0.0.1:5010".into();
        other.partner_addrs = vec!["10.0.0.3:5010".into(), "10.0.0.2:5010".into()];
        assert_eq!(a, configured_cluster(&other));
        assert_eq!(
            a,
            "10.0.0.1-5010=http://10.0.0.1:5010,10.0.0.2-5010=http://10.0.0.2:5010,10.0.0.3-5010=http://10.0.0.3:5010"
        );
    }

    const TOKEN: &str = "pgpilot-demo";

    #[test]
    fn how_a_member_starts() {
        let c = cfg();
        let ms = |v: Vec<PeerMember>| Answer::Members(v);
        let initial = |addr: &str| {
            let urls = vec![format!("http://{addr}")];
            PeerMember {
                id: bootstrap_id(&urls, TOKEN),
                name: RaftConfig::member_name(addr),
                peer_urls: urls,
                client_urls: vec![],
            }
        };
        let plan = |answers: &[Answer]| plan_start(&c, TOKEN, false, answers);
        // data: restart from it, whatever the partners say
        assert_eq!(plan_start(&c, TOKEN, true, &[]), Start::FromData);
        // nobody answers, or not every member is known to have no group: wait (a member that
        // lost its data must never form a group beside one that holds the state)
        assert!(matches!(plan(&[]), Start::AwaitAdmission { .. }));
        assert!(matches!(
            plan(&[Answer::Fresh]),
            Start::AwaitAdmission { .. }
        ));
        // every member known to have none: form it
        assert_eq!(plan(&[Answer::Fresh, Answer::Fresh]), Start::New);
        let unformed_list = vec![
            initial("10.0.0.1:5010"),
            initial("10.0.0.2:5010"),
            initial("10.0.0.3:5010"),
        ];
        assert_eq!(plan(&[ms(unformed_list), Answer::Fresh]), Start::New);
        // a list with other IDs and nobody started (a member that joins) proves nothing
        let joining = vec![
            member(1, "10.0.0.1:5010", false),
            member(2, "10.0.0.2:5010", false),
            member(3, "10.0.0.3:5010", false),
        ];
        assert!(matches!(
            plan(&[ms(joining), Answer::Fresh]),
            Start::AwaitAdmission { .. }
        ));
        // the group formed without this member (it started late): join it
        let formed = vec![
            member(1, "10.0.0.1:5010", true),
            member(2, "10.0.0.2:5010", false),
            member(3, "10.0.0.3:5010", true),
        ];
        match plan(&[ms(formed), Answer::Fresh]) {
            Start::Existing { initial_cluster } => assert!(
                initial_cluster.contains("10.0.0.2-5010=http://10.0.0.2:5010"),
                "{initial_cluster}"
            ),
            other => panic!("{other:?}"),
        }
        // its data was lost: never back under the old identity, even with a fresh partner
        let lost = vec![
            member(1, "10.0.0.1:5010", true),
            member(2, "10.0.0.2:5010", true),
            member(3, "10.0.0.3:5010", true),
        ];
        assert!(matches!(
            plan(&[ms(lost.clone()), Answer::Fresh]),
            Start::AwaitAdmission { .. }
        ));
        // re-added (new identity, no name yet): join, even when a stale list still shows the
        // old identity started
        let readded = vec![
            member(1, "10.0.0.1:5010", true),
            PeerMember {
                id: 9,
                name: String::new(),
                peer_urls: vec!["http://10.0.0.2:5010".into()],
                client_urls: vec![],
            },
            member(3, "10.0.0.3:5010", true),
        ];
        match plan(&[ms(lost), ms(readded)]) {
            Start::Existing { initial_cluster } => assert_eq!(
                initial_cluster,
                "10.0.0.1-5010=http://10.0.0.1:5010,10.0.0.2-5010=http://10.0.0.2:5010,10.0.0.3-5010=http://10.0.0.3:5010"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bootstrap_ids_are_etcds() {
        // etcd 3.4 with --initial-cluster of http://127.0.0.1:42380 and http://127.0.0.1:42390
        // and --initial-cluster-token t1 listed these IDs on its peer port
        let id = |u: &str| bootstrap_id(&[u.to_string()], "t1");
        assert_eq!(id("http://127.0.0.1:42380"), 5068672569658588005);
        assert_eq!(id("http://127.0.0.1:42390"), 9463437347953233933);
    }

    #[test]
    fn a_member_directory_without_a_wal_is_no_data() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg();
        c.data_dir = dir.path().to_path_buf();
        assert!(!has_data(&c).unwrap());
        let member = dir.path().join("etcd/member");
        std::fs::create_dir_all(member.join("snap")).unwrap();
        assert!(!has_data(&c).unwrap());
        assert!(
            !member.exists(),
            "the leftover of a failed start is removed"
        );
        std::fs::create_dir_all(member.join("wal")).unwrap();
        std::fs::write(
            member.join("wal/0000000000000000-0000000000000000.wal"),
            b"x",
        )
        .unwrap();
        assert!(has_data(&c).unwrap());
    }

    #[test]
    fn the_peer_member_list_parses() {
        let v: Value = serde_json::from_str(
            r#"[{"id":5068672569658588005,"peerURLs":["http://127.0.0.1:42380"],"name":"a","clientURLs":["http://127.0.0.1:42379"]},
                {"id":9463437347953233933,"peerURLs":["http://127.0.0.1:42390"]}]"#,
        )
        .unwrap();
        let ms = parse_members(&v).unwrap();
        assert_eq!(ms.len(), 2);
        assert_eq!(ms[1].id, 9463437347953233933);
        assert!(ms[1].client_urls.is_empty() && ms[1].name.is_empty());
        assert!(parse_members(&serde_json::json!({"no": "list"})).is_none());
    }

    #[test]
    fn a_join_request_needs_the_password_when_one_is_set() {
        let p = proof("s3cret", "10.0.0.2:5010");
        assert!(proof_ok(Some("s3cret"), "10.0.0.2:5010", &p));
        assert!(!proof_ok(Some("other"), "10.0.0.2:5010", &p));
        assert!(!proof_ok(Some("s3cret"), "10.0.0.9:5010", &p));
        assert!(!proof_ok(Some("s3cret"), "10.0.0.2:5010", "zz"));
        assert!(proof_ok(None, "10.0.0.2:5010", ""));
    }

    #[test]
    fn the_command_line_keeps_clients_on_loopback() {
        let args = etcd_args(&cfg(), "demo", &Start::New);
        assert!(args.contains(&"--listen-client-urls=http://127.0.0.1:5011".to_string()));
        assert!(args.contains(&"--listen-peer-urls=http://10.0.0.2:5010".to_string()));
        assert!(args.contains(&"--initial-cluster-state=new".to_string()));
        let mut c = cfg();
        c.bind_addr = Some("0.0.0.0".into());
        c.election_ms = Some(2000);
        c.heartbeat_ms = Some(200);
        let args = etcd_args(&c, "demo", &Start::New);
        assert!(args.contains(&"--listen-peer-urls=http://0.0.0.0:5010".to_string()));
        c.tls = Some(shared::config::RaftTls {
            cacert: "/etc/ca.pem".into(),
            cert: "/etc/m.pem".into(),
            key: "/etc/m.key".into(),
        });
        let args = etcd_args(&c, "demo", &Start::New);
        assert!(args.contains(&"--listen-peer-urls=https://0.0.0.0:5010".to_string()));
        assert!(args.contains(&"--peer-client-cert-auth".to_string()));
        assert!(
            args.iter().any(
                |a| a.starts_with("--initial-cluster=") && a.contains("=https://10.0.0.1:5010")
            )
        );
        assert!(args.contains(&"--election-timeout=2000".to_string()));
        assert!(args.contains(&"--heartbeat-interval=200".to_string()));
    }
}
