//! The scripted commands behind `console --batch`: each reads etcd once (linearizable; refused
//! without quorum), renders through [`shared::view`] and returns an exit code. Data goes to
//! stdout, everything else to stderr, so `-f json` output always parses.

use crate::{Command, EditArgs, Watch};
use serde_json::Value;
use shared::api::MemberClient;
use shared::config::{ConfigError, ConsoleConfig};
use shared::dcs::etcd::EtcdKv;
use shared::dcs::{Cluster, Dcs, load_namespace};
use shared::ops::{self, OpsError, switchover};
use shared::view::{self, Format, Table};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

/// Global options of the command line.
pub struct Options {
    pub config: Option<PathBuf>,
    pub etcd: Vec<String>,
    pub namespace: Option<String>,
    pub format: Option<String>,
    /// `-k`: members' REST certificates are not checked.
    pub insecure: bool,
}

/// Why a command did not complete: usage or configuration (exit 2), or a refusal or failure
/// (exit 1).
pub enum Failure {
    Usage(String),
    Failed(String),
}

impl Failure {
    pub fn code(&self) -> i32 {
        match self {
            Failure::Usage(_) => 2,
            Failure::Failed(_) => 1,
        }
    }
    pub fn message(&self) -> &str {
        match self {
            Failure::Usage(m) | Failure::Failed(m) => m,
        }
    }
}

type Outcome = Result<(), Failure>;

/// How long etcd may take to answer before the command fails.
const ETCD_TIMEOUT: Duration = Duration::from_secs(3);

/// Runs one command; returns the process exit code.
pub async fn run(opts: Options, command: Command) -> i32 {
    match run_inner(opts, command).await {
        Ok(()) => 0,
        Err(f) => {
            eprintln!("pgpilot-console: {}", f.message());
            f.code()
        }
    }
}

/// The configuration and an etcd connection.
struct Session {
    cfg: ConsoleConfig,
    kv: EtcdKv,
    format: Format,
}

pub fn load_config(opts: &Options) -> Result<ConsoleConfig, Failure> {
    let path = opts.config.clone().or_else(|| {
        std::env::var_os("PATRONICTL_CONFIG_FILE")
            .map(PathBuf::from)
            .filter(|p| p.exists())
    });
    let mut cfg = match ConsoleConfig::load(path.as_deref(), std::env::vars()) {
        Ok(c) => c,
        Err(ConfigError::Invalid(issues)) => {
            let lines: Vec<String> = issues.iter().map(|i| format!("  {i}")).collect();
            return Err(Failure::Usage(format!(
                "invalid configuration:\n{}",
                lines.join("\n")
            )));
        }
        Err(e) => return Err(Failure::Usage(e.to_string())),
    };
    if !opts.etcd.is_empty() {
        cfg.set_etcd_hosts(&opts.etcd)
            .map_err(|i| Failure::Usage(i.to_string()))?;
    }
    if let Some(ns) = &opts.namespace {
        cfg.namespace = ns.clone();
    }
    if opts.insecure {
        cfg.rest_tls.insecure = true;
    }
    if cfg.etcd.hosts.is_empty() {
        return Err(Failure::Usage(
            "no etcd endpoints: give -c CONFIG (a Patroni YAML with etcd3.hosts), --etcd host:port or -d etcd3://host:port"
                .into(),
        ));
    }
    Ok(cfg)
}

impl Session {
    async fn open(opts: &Options) -> Result<Session, Failure> {
        let cfg = load_config(opts)?;
        let format = match opts.format.as_deref() {
            Some(f) => {
                Format::parse(f).ok_or_else(|| Failure::Usage(format!("unknown format {f:?}")))?
            }
            None if std::io::stdout().is_terminal() => Format::Pretty,
            None => Format::Tsv,
        };
        let kv = EtcdKv::connect(&cfg.etcd, ETCD_TIMEOUT)
            .await
            .map_err(|e| Failure::Failed(etcd_failure(&cfg, &e.to_string())))?;
        Ok(Session { cfg, kv, format })
    }

    /// Every cluster of the namespace, fresh from etcd.
    async fn clusters(&self) -> Result<Vec<Cluster>, Failure> {
        load_namespace(&self.kv, &self.cfg.namespace)
            .await
            .map_err(|e| Failure::Failed(etcd_failure(&self.cfg, &e.to_string())))
    }

    /// The clusters a command acts on: those named, else the config's scope, else all.
    async fn selected(&self, names: &[String]) -> Result<Vec<Cluster>, Failure> {
        let all = self.clusters().await?;
        let wanted: Vec<String> = if !names.is_empty() {
            names.to_vec()
        } else if let Some(s) = &self.cfg.scope {
            vec![s.clone()]
        } else {
            return if all.is_empty() {
                Err(Failure::Failed(format!(
                    "no cluster under {} in etcd",
                    self.namespace_prefix()
                )))
            } else {
                Ok(all)
            };
        };
        let mut out = Vec::new();
        for name in wanted {
            match all.iter().find(|c| c.scope == name) {
                Some(c) => out.push(c.clone()),
                None => {
                    return Err(Failure::Failed(format!(
                        "no cluster {name:?} under {} (clusters there: {})",
                        self.namespace_prefix(),
                        names_or_none(all.iter().map(|c| c.scope.as_str()))
                    )));
                }
            }
        }
        Ok(out)
    }

    /// Exactly one cluster: the one named, the config's, or the only one in the namespace.
    async fn one(&self, name: Option<&String>) -> Result<Cluster, Failure> {
        let names: Vec<String> = name.cloned().into_iter().collect();
        let mut clusters = self.selected(&names).await?;
        if clusters.len() > 1 {
            return Err(Failure::Usage(format!(
                "several clusters under {} ({}): name one",
                self.namespace_prefix(),
                names_or_none(clusters.iter().map(|c| c.scope.as_str()))
            )));
        }
        clusters
            .pop()
            .ok_or_else(|| Failure::Failed("no cluster".into()))
    }

    /// A handle on one cluster's keys, for writes.
    fn dcs(&self, c: &Cluster) -> Dcs<EtcdKv> {
        ops::operator_handle(self.kv.clone(), &self.cfg.namespace, &c.scope)
    }

    /// A client for the members' REST APIs, with the config's TLS settings.
    fn client(&self, timeout: Duration) -> Result<MemberClient, Failure> {
        MemberClient::with_tls(timeout, &self.cfg.rest_tls)
            .map_err(|e| Failure::Usage(format!("ctl.cacert / restapi.cafile: {e}")))
    }

    /// A member's agent, asked with the config's credentials.
    fn agent<'a>(
        &'a self,
        client: &'a MemberClient,
        member: &'a shared::dcs::Member,
    ) -> ops::member::MemberAgent<'a> {
        ops::member::MemberAgent {
            client,
            auth: self.cfg.rest_auth.as_ref(),
            member,
        }
    }

    /// One operation's outcome on stdout: a JSON object with -f json, else a line.
    fn report(&self, operation: &str, target: &str, ok: bool, message: &str) {
        if self.format == Format::Json {
            println!(
                "{}",
                serde_json::json!({"operation": operation, "target": target, "ok": ok, "message": message})
            );
        } else if ok {
            println!("{message}");
        } else {
            eprintln!("pgpilot-console: {message}");
        }
    }

    fn namespace_prefix(&self) -> String {
        shared::dcs::keys::namespace_prefix(&self.cfg.namespace)
    }
}

fn names_or_none<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<&str> = names.collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

fn etcd_failure(cfg: &ConsoleConfig, err: &str) -> String {
    format!(
        "cannot read the cluster state from etcd ({}): {err}. etcd is down, unreachable or without quorum; nothing is shown rather than data that may be stale",
        cfg.etcd.hosts.join(",")
    )
}

fn print(text: &str) -> Outcome {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|_| out.flush())
        .map_err(|e| Failure::Failed(format!("cannot write the output: {e}")))
}

async fn run_inner(opts: Options, command: Command) -> Outcome {
    let s = Session::open(&opts).await?;
    match command {
        Command::List {
            clusters,
            extended,
            timestamp,
            watch,
        } => members(&s, &clusters, extended, timestamp, false, &watch).await,
        Command::Topology { clusters, watch } => {
            members(&s, &clusters, false, false, true, &watch).await
        }
        Command::History { cluster } => {
            let c = s.one(cluster.as_ref()).await?;
            print(&view::render(&[view::history_table(&c)], s.format))
        }
        Command::Events { cluster } => {
            let c = s.one(cluster.as_ref()).await?;
            let client = s.client(Duration::from_secs(2))?;
            let (entries, silent) =
                shared::journal::collect(&c, &client, Duration::from_secs(2)).await;
            if !silent.is_empty() {
                eprintln!(
                    "no journal from {} (not answering, or not pgpilot agents)",
                    silent.join(", ")
                );
            }
            print(&view::render(&[view::journal_table(&entries)], s.format))
        }
        Command::ShowConfig { cluster } => {
            let c = s.one(cluster.as_ref()).await?;
            let cfg = c
                .config
                .as_ref()
                .map(|v| Value::Object(v.value.raw.clone()))
                .ok_or_else(|| Failure::Failed(format!("cluster {} has no config key", c.scope)))?;
            let text = match s.format {
                Format::Json => format!("{cfg}\n"),
                _ => serde_saphyr::to_string(&cfg)
                    .map_err(|e| Failure::Failed(format!("cannot render YAML: {e}")))?,
            };
            print(&text)
        }
        Command::Query {
            cluster,
            role,
            member,
            command,
            file,
            username,
            password,
            dbname,
            delimiter,
            watch,
        } => {
            let sql = match (command, file) {
                (Some(c), _) => c,
                (None, Some(p)) => std::fs::read_to_string(&p)
                    .map_err(|e| Failure::Usage(format!("--file {}: {e}", p.display())))?,
                (None, None) => {
                    return Err(Failure::Usage(
                        "give the SQL with --command or --file".into(),
                    ));
                }
            };
            let password = if password {
                Some(ask_password()?)
            } else {
                std::env::var("PGPASSWORD").ok()
            };
            let q = Query {
                role,
                member,
                sql,
                username,
                password,
                dbname,
                // tab-separated unless asked otherwise, as patronictl query
                format: if opts.format.is_some() {
                    s.format
                } else {
                    Format::Tsv
                },
                delimiter: delimiter.replace("\\t", "\t"),
            };
            query(&s, cluster.as_ref(), &q, &watch).await
        }
        Command::Dsn {
            cluster,
            role,
            member,
        } => {
            let c = s.one(cluster.as_ref()).await?;
            let name = pick_member(&c, role.as_deref(), member.as_deref())?;
            let dsn = view::dsn(&c, &name)
                .ok_or_else(|| Failure::Failed(format!("member {name} has no usable conn_url")))?;
            print(&format!("{dsn}\n"))
        }
        Command::Version { cluster, members } => version(&s, cluster.as_ref(), &members).await,
        Command::EditConfig(edit) => edit_config(&s, edit).await,
        Command::DemoteCluster {
            cluster,
            host,
            port,
            restore_command,
            primary_slot_name,
            force,
        } => {
            let c = s.one(cluster.as_ref()).await?;
            let mut m = serde_json::Map::new();
            for (k, v) in [
                ("host", host.map(Value::from)),
                ("port", port.map(Value::from)),
                ("restore_command", restore_command.map(Value::from)),
                ("primary_slot_name", primary_slot_name.map(Value::from)),
            ] {
                if let Some(v) = v {
                    m.insert(k.into(), v);
                }
            }
            confirm(
                &format!(
                    "Demote cluster {} to a standby cluster (its primary stops taking writes)?",
                    c.scope
                ),
                force,
            )?;
            ops::set_standby_cluster(&s.dcs(&c), &c, Some(m))
                .await
                .map_err(ops_failure)?;
            eprintln!("Success: cluster {} is a standby cluster now", c.scope);
            Ok(())
        }
        Command::PromoteCluster { cluster, force } => {
            let c = s.one(cluster.as_ref()).await?;
            confirm(
                &format!(
                    "Promote standby cluster {} (its standby leader starts taking writes)?",
                    c.scope
                ),
                force,
            )?;
            ops::set_standby_cluster(&s.dcs(&c), &c, None)
                .await
                .map_err(ops_failure)?;
            eprintln!(
                "Success: cluster {} is promoted: its leader becomes a primary",
                c.scope
            );
            Ok(())
        }
        Command::Pause { cluster, wait } => pause(&s, cluster.as_ref(), true, wait).await,
        Command::Resume { cluster, wait } => pause(&s, cluster.as_ref(), false, wait).await,
        Command::Flush {
            cluster,
            target,
            members,
            role,
            force,
        } => flush(&s, &cluster, &target, &members, role.as_deref(), force).await,
        Command::Switchover {
            cluster,
            leader,
            candidate,
            scheduled,
            force,
        } => {
            let c = s.one(cluster.as_ref()).await?;
            let leader = leader.or_else(|| c.leader.as_ref().map(|l| l.name.clone()));
            let req = switchover::Request::switchover(leader, candidate, scheduled.as_deref())
                .map_err(ops_failure)?;
            hand_over(&s, &c, req, force).await
        }
        Command::Failover {
            cluster,
            candidate,
            force,
        } => {
            let c = s.one(cluster.as_ref()).await?;
            hand_over(&s, &c, switchover::Request::failover(candidate), force).await
        }
        Command::Restart {
            cluster,
            members,
            role,
            any,
            scheduled,
            pg_version,
            pending,
            timeout,
            force,
        } => {
            let mut body = serde_json::Map::new();
            if let Some(t) = &scheduled {
                body.insert("schedule".into(), Value::from(t.clone()));
            }
            if let Some(v) = &pg_version {
                body.insert("postgres_version".into(), Value::from(v.clone()));
            }
            if let Some(t) = &timeout {
                body.insert("timeout".into(), Value::from(t.clone()));
            }
            if pending {
                body.insert("restart_pending".into(), Value::Bool(true));
            }
            let req = ops::RestartRequest::from_json(&Value::Object(body)).map_err(ops_failure)?;
            let c = s.one(Some(&cluster)).await?;
            let mut chosen = pick_members(&c, &members, role.as_deref())?;
            if any {
                chosen.truncate(1);
            }
            restart(&s, &c, &chosen, &req, force).await
        }
        Command::Reinit {
            cluster,
            members,
            force,
            from_leader,
            wait,
        } => {
            let c = s.one(Some(&cluster)).await?;
            let chosen = pick_members(&c, &members, None)?;
            reinit(&s, &c, &chosen, force, from_leader, wait).await
        }
        Command::Reload {
            cluster,
            members,
            role,
            force,
        } => {
            let c = s.one(Some(&cluster)).await?;
            let chosen = pick_members(&c, &members, role.as_deref())?;
            confirm(
                &format!("Reload the configuration of {}?", chosen.join(", ")),
                force,
            )?;
            let client = s.client(Duration::from_secs(5))?;
            let mut failed = 0;
            for name in &chosen {
                let Some(m) = c.member(name) else { continue };
                match s.agent(&client, m).reload().await {
                    Ok(_) => s.report("reload", name, true, "reload requested"),
                    Err(e) => {
                        failed += 1;
                        s.report("reload", name, false, &e.to_string());
                    }
                }
            }
            some_failed(failed, "reload")
        }
        Command::Remove { cluster, force } => remove(&s, &cluster, force).await,
        Command::HaproxyConfig {
            cluster,
            bind,
            write_port,
            read_port,
            stats_port,
            check_interval,
            ca_file,
        } => {
            let c = s.one(cluster.as_ref()).await?;
            let backends =
                shared::haproxy::backends(&c).map_err(|e| Failure::Failed(e.to_string()))?;
            if write_port == read_port {
                return Err(Failure::Usage(format!(
                    "--write-port and --read-port are both {write_port}"
                )));
            }
            let options = shared::haproxy::Options {
                bind,
                write_port,
                read_port,
                stats_port: (stats_port != 0).then_some(stats_port),
                check_interval_ms: check_interval,
                ca_file,
            };
            print(&shared::haproxy::render(&c.scope, &backends, &options))
        }
    }
}

/// The member names an operation applies to: those named (each must exist), else every
/// member, kept to `role` (leader/primary, replica, any) when given.
fn pick_members(c: &Cluster, names: &[String], role: Option<&str>) -> Result<Vec<String>, Failure> {
    for n in names {
        if c.member(n).is_none() {
            return Err(Failure::Usage(format!(
                "{n} is not a member of {} (members: {})",
                c.scope,
                names_or_none(c.members.iter().map(|m| m.name.as_str()))
            )));
        }
    }
    let leader = c.leader.as_ref().map(|l| l.name.as_str());
    let want = match role.unwrap_or("any") {
        r @ ("leader" | "primary" | "master" | "replica" | "any") => r,
        other => {
            return Err(Failure::Usage(format!(
                "--role {other:?}: expected leader, primary, replica or any"
            )));
        }
    };
    let chosen: Vec<String> = c
        .members
        .iter()
        .filter(|m| names.is_empty() || names.contains(&m.name))
        .filter(|m| match want {
            "leader" | "primary" | "master" => Some(m.name.as_str()) == leader,
            "replica" => Some(m.name.as_str()) != leader,
            _ => true,
        })
        .map(|m| m.name.clone())
        .collect();
    if chosen.is_empty() {
        return Err(Failure::Failed(format!(
            "no member of {} matches (role {want})",
            c.scope
        )));
    }
    Ok(chosen)
}

/// Exit 1 when any member's operation failed.
fn some_failed(failed: usize, what: &str) -> Outcome {
    if failed == 0 {
        Ok(())
    } else {
        Err(Failure::Failed(format!(
            "{what} failed on {failed} member(s)"
        )))
    }
}

/// A switchover or failover: confirm, carry out, report the definite outcome.
async fn hand_over(s: &Session, c: &Cluster, req: switchover::Request, force: bool) -> Outcome {
    let noun = req.kind.noun();
    let when = req
        .scheduled_at
        .map(|t| format!(" at {}", t.to_rfc3339()))
        .unwrap_or_default();
    confirm(
        &format!(
            "{} cluster {}{} from {} to {}{when}?",
            if noun == "switchover" {
                "Switch over"
            } else {
                "Fail over"
            },
            c.scope,
            "",
            req.leader.as_deref().unwrap_or("no leader"),
            req.candidate.as_deref().unwrap_or("the healthiest replica"),
        ),
        force,
    )?;
    let client = s.client(Duration::from_secs(2))?;
    let ttl = c.dynamic_config().timing().ttl;
    let wait = Duration::from_secs(2 * ttl + 20);
    match switchover::run(&s.dcs(c), &client, &req, wait).await {
        Ok(switchover::Outcome::Done {
            new_leader,
            message,
        }) => {
            s.report(noun, &new_leader, true, &message);
            Ok(())
        }
        Ok(switchover::Outcome::Scheduled { at }) => {
            s.report(
                noun,
                req.candidate.as_deref().unwrap_or(""),
                true,
                &format!("Switchover scheduled at {}", at.to_rfc3339()),
            );
            Ok(())
        }
        Err(e) => Err(ops_failure(e)),
    }
}

async fn restart(
    s: &Session,
    c: &Cluster,
    names: &[String],
    req: &ops::RestartRequest,
    force: bool,
) -> Outcome {
    let when = req
        .schedule
        .map(|t| format!(" at {}", t.to_rfc3339()))
        .unwrap_or_default();
    confirm(&format!("Restart {}{when}?", names.join(", ")), force)?;
    let client = s.client(Duration::from_secs(5))?;
    let mut failed = 0;
    for name in names {
        let Some(m) = c.member(name) else { continue };
        match s.agent(&client, m).restart(req).await {
            Ok(text) => s.report("restart", name, true, &text),
            Err(e) => {
                failed += 1;
                s.report("restart", name, false, &e.to_string());
            }
        }
    }
    some_failed(failed, "restart")
}

async fn reinit(
    s: &Session,
    c: &Cluster,
    names: &[String],
    force: bool,
    from_leader: bool,
    wait: bool,
) -> Outcome {
    let source = if from_leader {
        " from the leader with pg_basebackup"
    } else {
        ""
    };
    confirm(
        &format!(
            "Wipe the data directory of {} and clone it again{source}?",
            names.join(", ")
        ),
        force,
    )?;
    let client = s.client(Duration::from_secs(5))?;
    let mut failed = 0;
    let mut started = Vec::new();
    for name in names {
        let Some(m) = c.member(name) else { continue };
        match s.agent(&client, m).reinitialize(force, from_leader).await {
            Ok(text) => {
                s.report("reinit", name, true, &text);
                started.push(name.clone());
            }
            Err(e) => {
                failed += 1;
                s.report("reinit", name, false, &e.to_string());
            }
        }
    }
    if wait && !started.is_empty() {
        let deadline = std::time::Instant::now() + Duration::from_secs(3600);
        let mut last = String::new();
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = s.one(Some(&c.scope)).await?;
            let states: Vec<String> = started
                .iter()
                .map(|n| {
                    let st = now.member(n).map_or("gone", |m| {
                        m.data
                            .replication_state
                            .as_deref()
                            .unwrap_or(m.data.state.as_str())
                    });
                    format!("{n}: {st}")
                })
                .collect();
            let line = states.join(", ");
            if line != last {
                eprintln!("{line}");
                last = line;
            }
            if started.iter().all(|n| {
                now.member(n)
                    .is_some_and(|m| m.data.replication_state.as_deref() == Some("streaming"))
            }) {
                break;
            }
            if std::time::Instant::now() > deadline {
                return Err(Failure::Failed(format!(
                    "not streaming again after an hour: {last}"
                )));
            }
        }
    }
    some_failed(failed, "reinit")
}

async fn flush(
    s: &Session,
    cluster: &str,
    target: &str,
    names: &[String],
    role: Option<&str>,
    force: bool,
) -> Outcome {
    let c = s.one(Some(&cluster.to_string())).await?;
    if target == "switchover" {
        let f = c
            .failover
            .as_ref()
            .and_then(|f| f.value.scheduled_at.clone())
            .unwrap_or_default();
        if !f.is_empty() {
            confirm(
                &format!("Cancel the switchover of {} scheduled at {f}?", c.scope),
                force,
            )?;
        }
        ops::clear_scheduled_switchover(&s.dcs(&c), &c)
            .await
            .map_err(ops_failure)?;
        s.report("flush", &c.scope, true, "scheduled switchover deleted");
        return Ok(());
    }
    // Every chosen member is asked: a member key may not show a restart scheduled a moment ago.
    let chosen = pick_members(&c, names, role)?;
    confirm(
        &format!("Cancel the scheduled restarts of {}?", chosen.join(", ")),
        force,
    )?;
    let client = s.client(Duration::from_secs(5))?;
    let (mut failed, mut cancelled) = (0, 0);
    for name in &chosen {
        let Some(m) = c.member(name) else { continue };
        match s.agent(&client, m).cancel_restart().await {
            Ok(Some(text)) => {
                cancelled += 1;
                s.report("flush", name, true, &text);
            }
            Ok(None) => {}
            Err(e) => {
                failed += 1;
                s.report("flush", name, false, &e.to_string());
            }
        }
    }
    if cancelled == 0 && failed == 0 {
        return Err(Failure::Failed(format!(
            "no scheduled restart in {}",
            c.scope
        )));
    }
    some_failed(failed, "flush")
}

fn ops_failure(e: OpsError) -> Failure {
    match e {
        OpsError::Invalid(m) | OpsError::BadTime(m) => Failure::Usage(m),
        other => Failure::Failed(other.to_string()),
    }
}

fn interactive() -> bool {
    std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
}

/// Reads one answer from the terminal (never from a pipe).
fn ask(prompt: &str) -> Result<String, Failure> {
    if !interactive() {
        return Err(Failure::Usage(
            "not on a terminal: nothing is asked or read from stdin; add --force".into(),
        ));
    }
    eprint!("{prompt} ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| Failure::Failed(format!("cannot read the answer: {e}")))?;
    Ok(line.trim().to_string())
}

/// Asks a yes/no question unless `force`; "no" is a refusal (exit 1).
fn confirm(question: &str, force: bool) -> Outcome {
    if force {
        return Ok(());
    }
    match ask(&format!("{question} [y/N]"))?.to_lowercase().as_str() {
        "y" | "yes" => Ok(()),
        _ => Err(Failure::Failed("aborted: nothing was changed".into())),
    }
}

fn read_yaml_source(source: &str, force: bool) -> Result<serde_json::Map<String, Value>, Failure> {
    let text = if source == "-" {
        if !force {
            return Err(Failure::Usage(
                "reading the configuration from stdin needs --force (nothing can be confirmed)"
                    .into(),
            ));
        }
        let mut t = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut t)
            .map_err(|e| Failure::Failed(format!("cannot read stdin: {e}")))?;
        t
    } else {
        std::fs::read_to_string(source)
            .map_err(|e| Failure::Usage(format!("cannot read {source}: {e}")))?
    };
    match serde_saphyr::from_str::<Value>(&text) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(Value::Null) => Ok(serde_json::Map::new()),
        Ok(_) => Err(Failure::Usage(format!("{source}: expected a YAML mapping"))),
        Err(e) => Err(Failure::Usage(format!("{source}: {e}"))),
    }
}

fn to_yaml(v: &serde_json::Map<String, Value>) -> String {
    if v.is_empty() {
        return String::new();
    }
    serde_saphyr::to_string(&Value::Object(v.clone())).unwrap_or_default()
}

/// Opens $EDITOR (else vi) on `text`; returns what was saved.
fn edit_in_editor(text: &str) -> Result<String, Failure> {
    let file = tempfile::Builder::new()
        .suffix(".yaml")
        .tempfile()
        .map_err(|e| Failure::Failed(format!("cannot create a temporary file: {e}")))?;
    std::fs::write(file.path(), text)
        .map_err(|e| Failure::Failed(format!("cannot write a temporary file: {e}")))?;
    let editor = std::env::var("VISUAL")
        .or_else(|_| std::env::var("EDITOR"))
        .unwrap_or_else(|_| "vi".into());
    let status = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("editor")
        .arg(file.path())
        .status()
        .map_err(|e| Failure::Failed(format!("cannot run {editor}: {e}")))?;
    if !status.success() {
        return Err(Failure::Failed(format!(
            "{editor} exited with {status}; nothing was changed"
        )));
    }
    std::fs::read_to_string(file.path())
        .map_err(|e| Failure::Failed(format!("cannot read the edited file: {e}")))
}

async fn edit_config(s: &Session, e: EditArgs) -> Outcome {
    let c = s.one(e.cluster.as_ref()).await?;
    let (before, version) = ops::current_config(&c);
    let mut after = match &e.replace {
        Some(src) => read_yaml_source(src, e.force)?,
        None => before.clone(),
    };
    if let Some(src) = &e.apply {
        let patch = read_yaml_source(src, e.force)?;
        ops::merge_patch(&mut after, &patch);
    }
    for arg in &e.set {
        let (path, v) = ops::parse_assignment(arg).map_err(ops_failure)?;
        ops::set_path(&mut after, &path, v);
    }
    for arg in &e.pg {
        let (path, v) = ops::parse_pg_assignment(arg).map_err(ops_failure)?;
        ops::set_path(&mut after, &path, v);
    }
    let nothing_given =
        e.set.is_empty() && e.pg.is_empty() && e.apply.is_none() && e.replace.is_none();
    if nothing_given {
        if !(interactive() && std::io::stdout().is_terminal()) {
            return Err(Failure::Usage(
                "nothing to change: give --set, --pg, --apply or --replace (an editor opens only on a terminal)".into(),
            ));
        }
        let edited = edit_in_editor(&to_yaml(&before))?;
        after = match serde_saphyr::from_str::<Value>(&edited) {
            Ok(Value::Object(o)) => o,
            Ok(Value::Null) => serde_json::Map::new(),
            Ok(_) => {
                return Err(Failure::Usage(
                    "the edited text is not a YAML mapping".into(),
                ));
            }
            Err(err) => {
                return Err(Failure::Usage(format!(
                    "the edited text is not valid YAML: {err}"
                )));
            }
        };
    }
    if after == before {
        eprintln!("Not changed");
        return Ok(());
    }
    ops::check_config(&after).map_err(ops_failure)?;
    // what the agents will adjust or not act on (a ttl too short for the others, …)
    for note in shared::config::dynamic_key_notes(&after) {
        if note.level == shared::config::NoteLevel::Warning {
            eprintln!("warning: {note}");
        }
    }
    if !e.quiet {
        let (old, new) = (to_yaml(&before), to_yaml(&after));
        let diff = similar::TextDiff::from_lines(&old, &new);
        print(&diff.unified_diff().header("before", "after").to_string())?;
    }
    confirm("Apply these changes?", e.force)?;
    ops::write_config(&s.dcs(&c), &after, version)
        .await
        .map_err(ops_failure)?;
    eprintln!("Configuration of {} changed", c.scope);
    Ok(())
}

async fn pause(s: &Session, cluster: Option<&String>, on: bool, wait: bool) -> Outcome {
    let c = s.one(cluster).await?;
    ops::set_pause(&s.dcs(&c), &c, on)
        .await
        .map_err(ops_failure)?;
    let what = if on { "paused" } else { "resumed" };
    if wait {
        let limit = c.dynamic_config().timing().loop_wait + 5;
        let deadline = std::time::Instant::now() + Duration::from_secs(limit);
        loop {
            let now = s.one(Some(&c.scope)).await?;
            if ops::members_see_pause(&now, on) {
                break;
            }
            if std::time::Instant::now() > deadline {
                let late: Vec<&str> = now
                    .members
                    .iter()
                    .filter(|m| m.data.pause.unwrap_or(false) != on)
                    .map(|m| m.name.as_str())
                    .collect();
                return Err(Failure::Failed(format!(
                    "{} written, but after {limit}s these members do not report it yet: {}",
                    if on { "pause" } else { "resume" },
                    late.join(", ")
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    eprintln!("Success: cluster management of {} is {what}", c.scope);
    Ok(())
}

async fn remove(s: &Session, scope: &str, force: bool) -> Outcome {
    let c = s.one(Some(&scope.to_string())).await?;
    if !force {
        let name = ask(&format!(
            "Type the name of the cluster to remove ({scope}):"
        ))?;
        if name != scope {
            return Err(Failure::Failed(
                "the name does not match: nothing was removed".into(),
            ));
        }
        let phrase =
            ask("This deletes every key of the cluster in etcd. Type \"Yes I am aware\":")?;
        if phrase != "Yes I am aware" {
            return Err(Failure::Failed("nothing was removed".into()));
        }
        if let Some(l) = &c.leader {
            let leader = ask("The cluster has a running leader. Type its name to go on:")?;
            if leader != l.name {
                return Err(Failure::Failed(
                    "not the leader's name: nothing was removed".into(),
                ));
            }
        }
    }
    let n = ops::remove_cluster(&s.kv, &s.cfg.namespace, scope)
        .await
        .map_err(ops_failure)?;
    eprintln!("Removed cluster {scope}: {n} keys deleted");
    Ok(())
}

/// `list` and `topology`, once or every interval.
async fn members(
    s: &Session,
    names: &[String],
    extended: bool,
    timestamp: bool,
    topology: bool,
    watch: &Watch,
) -> Outcome {
    let interval = watch.interval();
    let clear = interval.is_some() && std::io::stdout().is_terminal();
    loop {
        let clusters = s.selected(names).await?;
        let tables: Vec<Table> = clusters
            .iter()
            .map(|c| view::members_table(c, extended, topology))
            .collect();
        let mut text = String::new();
        if clear {
            text.push_str("\x1b[2J\x1b[H");
        }
        if timestamp && matches!(s.format, Format::Pretty | Format::Tsv) {
            text.push_str(&format!(
                "{}\n",
                chrono_like_now().unwrap_or_else(|| "time unknown".into())
            ));
        }
        text.push_str(&view::render(&tables, s.format));
        print(&text)?;
        match interval {
            Some(d) => tokio::time::sleep(d).await,
            None => return Ok(()),
        }
    }
}

/// What `query` runs, where and as whom.
struct Query {
    role: Option<String>,
    member: Option<String>,
    sql: String,
    username: Option<String>,
    password: Option<String>,
    dbname: Option<String>,
    format: Format,
    delimiter: String,
}

/// `query`: the SQL on the chosen member, its last result set printed (again every interval
/// with -W/-w, the member chosen again each time).
async fn query(s: &Session, cluster: Option<&String>, q: &Query, watch: &Watch) -> Outcome {
    let interval = watch.interval();
    loop {
        let c = s.one(cluster).await?;
        let name = pick_member(&c, q.role.as_deref(), q.member.as_deref())?;
        let table = run_query(&c, &name, q).await?;
        let text = match q.format {
            // a last statement without rows prints nothing
            Format::Tsv if table.columns.is_empty() => String::new(),
            Format::Tsv => {
                let mut out = String::new();
                for row in std::iter::once(table.columns.clone()).chain(
                    table
                        .rows
                        .iter()
                        .map(|r| r.iter().map(cell).collect::<Vec<String>>()),
                ) {
                    out.push_str(&row.join(&q.delimiter));
                    out.push('\n');
                }
                out
            }
            f => view::render(std::slice::from_ref(&table), f),
        };
        print(&text)?;
        match interval {
            Some(d) => tokio::time::sleep(d).await,
            None => return Ok(()),
        }
    }
}

/// A cell as text: SQL NULL prints empty.
fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Connects to member `name` (5 s to connect, as patronictl), checks its role when one was
/// asked for, runs the SQL and returns the last result set (values as PostgreSQL prints them).
async fn run_query(c: &Cluster, name: &str, q: &Query) -> Result<Table, Failure> {
    let m = c
        .member(name)
        .ok_or_else(|| Failure::Failed(format!("member {name} is gone")))?;
    let (host, port) = m
        .data
        .host_port()
        .ok_or_else(|| Failure::Failed(format!("member {name} has no usable conn_url")))?;
    let user = q
        .username
        .clone()
        .or_else(|| conn_url_user(&m.data.conn_url))
        .or_else(|| std::env::var("PGUSER").ok())
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "postgres".into());
    let dbname = q
        .dbname
        .clone()
        .or_else(|| std::env::var("PGDATABASE").ok())
        .unwrap_or_else(|| user.clone());
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&host)
        .port(port)
        .user(&user)
        .dbname(&dbname)
        .application_name("pgpilot console")
        .connect_timeout(Duration::from_secs(5));
    if let Some(p) = &q.password {
        cfg.password(p);
    }
    let failed = |e: tokio_postgres::Error| {
        let why = e
            .as_db_error()
            .map(|d| format!("{} (SQLSTATE {})", d.message(), d.code().code()))
            .unwrap_or_else(|| e.to_string());
        Failure::Failed(format!(
            "{name} ({host}:{port}, user {user}, database {dbname}): {why}"
        ))
    };
    let (client, conn) = cfg.connect(tokio_postgres::NoTls).await.map_err(failed)?;
    let conn = tokio::spawn(conn);
    let want_recovery = match q.role.as_deref() {
        Some("replica" | "standby" | "standby-leader") => Some(true),
        Some("primary" | "master") => Some(false),
        _ => None,
    };
    if let Some(want) = want_recovery {
        let row = client
            .query_one("SELECT pg_catalog.pg_is_in_recovery()", &[])
            .await
            .map_err(failed)?;
        let in_recovery: bool = row.get(0);
        if in_recovery != want {
            conn.abort();
            return Err(Failure::Failed(format!(
                "{name} is {} now, not a {}",
                if in_recovery {
                    "in recovery"
                } else {
                    "a primary"
                },
                q.role.as_deref().unwrap_or_default()
            )));
        }
    }
    let messages = client.simple_query(&q.sql).await.map_err(failed);
    drop(client);
    conn.abort();
    // the last statement's result, as a driver's cursor holds it (none when the last
    // statement returns no rows)
    let mut columns = Vec::new();
    let mut rows = Vec::new();
    let mut described = false;
    for msg in messages? {
        match msg {
            tokio_postgres::SimpleQueryMessage::RowDescription(cols) => {
                columns = cols.iter().map(|c| c.name().to_string()).collect();
                rows.clear();
                described = true;
            }
            tokio_postgres::SimpleQueryMessage::CommandComplete(_) => {
                if !described {
                    columns.clear();
                    rows.clear();
                }
                described = false;
            }
            tokio_postgres::SimpleQueryMessage::Row(r) => rows.push(
                (0..r.len())
                    .map(|i| r.get(i).map_or(Value::Null, Value::from))
                    .collect(),
            ),
            _ => {}
        }
    }
    Ok(Table {
        title: String::new(),
        columns,
        rows,
        footer: Vec::new(),
    })
}

/// The user named in a `postgres://user@host…` conn_url, if any.
fn conn_url_user(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let (userinfo, _) = rest.split_once('@')?;
    let user = userinfo.split(':').next()?;
    (!user.is_empty()).then(|| user.to_string())
}

/// `--password`: read without echo from the terminal, else one line of standard input.
fn ask_password() -> Result<String, Failure> {
    use crossterm::event::{Event, KeyCode, KeyEventKind, read};
    let failed = |e: std::io::Error| Failure::Failed(format!("cannot read the password: {e}"));
    if !std::io::stdin().is_terminal() {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map_err(failed)?;
        return Ok(line.trim_end_matches(['\r', '\n']).to_string());
    }
    eprint!("Password: ");
    crossterm::terminal::enable_raw_mode().map_err(failed)?;
    let mut typed = String::new();
    let outcome = loop {
        match read() {
            Ok(Event::Key(k)) if k.kind == KeyEventKind::Press => match k.code {
                KeyCode::Enter => break Ok(()),
                KeyCode::Backspace => {
                    typed.pop();
                }
                KeyCode::Esc => break Err(Failure::Failed("no password given".into())),
                KeyCode::Char('c')
                    if k.modifiers
                        .contains(crossterm::event::KeyModifiers::CONTROL) =>
                {
                    break Err(Failure::Failed("no password given".into()));
                }
                KeyCode::Char(ch) => typed.push(ch),
                _ => {}
            },
            Ok(_) => {}
            Err(e) => break Err(failed(e)),
        }
    };
    let _ = crossterm::terminal::disable_raw_mode();
    eprintln!();
    outcome.map(|()| typed)
}

/// The local time as `YYYY-MM-DD HH:MM:SS`, from the `date` the system knows.
fn chrono_like_now() -> Option<String> {
    let out = std::process::Command::new("date")
        .arg("+%Y-%m-%d %H:%M:%S")
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The member `dsn` points at: `-m NAME`, else the first of role `-r` (default: the leader).
fn pick_member(c: &Cluster, role: Option<&str>, member: Option<&str>) -> Result<String, Failure> {
    if let Some(m) = member {
        return c.member(m).map(|m| m.name.clone()).ok_or_else(|| {
            Failure::Failed(format!(
                "no member {m:?} in cluster {} (members: {})",
                c.scope,
                names_or_none(c.members.iter().map(|m| m.name.as_str()))
            ))
        });
    }
    let leader = c.leader.as_ref().map(|l| l.name.as_str());
    let role = role.unwrap_or("leader");
    let found = match role {
        "leader" | "primary" | "master" | "standby-leader" => leader.map(str::to_string),
        "replica" | "standby" => c
            .members
            .iter()
            .find(|m| Some(m.name.as_str()) != leader)
            .map(|m| m.name.clone()),
        "any" => leader
            .map(str::to_string)
            .or_else(|| c.members.first().map(|m| m.name.clone())),
        other => {
            return Err(Failure::Usage(format!(
                "unknown role {other:?}: use leader, primary, standby-leader, replica, standby or any"
            )));
        }
    };
    found.ok_or_else(|| Failure::Failed(format!("cluster {} has no {role}", c.scope)))
}

/// `version`: the console's, or each member's daemon and PostgreSQL.
async fn version(s: &Session, cluster: Option<&String>, names: &[String]) -> Outcome {
    let mine = format!(
        "pgpilot console {} (Patroni {} compatible)\n",
        shared::VERSION,
        shared::PATRONI_COMPAT_VERSION
    );
    let Some(cluster) = cluster else {
        return print(&mine);
    };
    let c = s.one(Some(cluster)).await?;
    for n in names {
        if c.member(n).is_none() {
            return Err(Failure::Failed(format!(
                "no member {n:?} in cluster {}",
                c.scope
            )));
        }
    }
    let client = s.client(Duration::from_secs(2))?;
    let mut text = mine;
    for m in c
        .members
        .iter()
        .filter(|m| names.is_empty() || names.contains(&m.name))
    {
        let line = match client.status(&m.data.api_url).await {
            Some(st) => {
                let daemon = if st.get("pgpilot").is_some() {
                    format!(
                        "pgpilot (Patroni {} compatible)",
                        st["patroni"]["version"].as_str().unwrap_or("?")
                    )
                } else {
                    format!(
                        "Patroni {}",
                        st["patroni"]["version"].as_str().unwrap_or("?")
                    )
                };
                let pg = st["server_version"]
                    .as_u64()
                    .map(|v| format!(" PostgreSQL {}.{}", v / 10000, v % 10000))
                    .unwrap_or_default();
                format!("{}: {daemon}{pg}\n", m.name)
            }
            None => format!(
                "{}: REST API at {} did not answer\n",
                m.name, m.data.api_url
            ),
        };
        text.push_str(&line);
    }
    print(&text)
}
