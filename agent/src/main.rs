//! `pgpilot-agent` (crate `agent`): the pgpilot node daemon. Reads a Patroni-compatible configuration, serves the REST
//! API, and runs the HA loop that keeps this PostgreSQL server in its cluster.

mod callbacks;
mod guard;
mod ha;
mod handover;
mod jobs;
mod journal;
mod postgres;
mod quorum;
mod raft;
mod raft_tls;
mod rest;
mod rest_access;
mod rest_write;
mod runtime;
#[cfg(test)]
mod simulation;
mod snapshot;
mod synchronous;
mod systemd;
#[cfg(test)]
mod tests_support;
mod watchdog;

use anyhow::{Context, Result};
use clap::Parser;
use shared::config::{Config, ConfigError};
use shared::dcs::Dcs;
use shared::dcs::etcd::EtcdKv;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tracing::{error, info, warn};

/// pgpilot agent: keeps one PostgreSQL server highly available, Patroni-compatible.
///
/// Run one agent beside each PostgreSQL server, with the same Patroni YAML you would give
/// `patroni`. The agents elect a leader through etcd v3, bootstrap the cluster (one runs initdb,
/// the others clone it), fail over when the leader dies, and serve Patroni's REST API.
///
/// Examples:
///   pgpilot-agent /etc/pgpilot/pgpilot.yml
///   pgpilot-agent --validate-config /etc/pgpilot/pgpilot.yml
///   PATRONI_CONFIGURATION="$(cat node1.yml)" pgpilot-agent
///
/// Under systemd: `systemctl enable --now pgpilot-agent` (the unit runs it as postgres with
/// /etc/pgpilot/pgpilot.yml; /etc/pgpilot/pgpilot.yml.example is a commented start).
///
/// Signals: SIGHUP re-reads the configuration (as POST /reload); SIGTERM or SIGINT stops
/// PostgreSQL, publishes the last WAL position, releases the leader lock and exits.
///
/// Exit codes: 0 stopped cleanly; 1 failed while running; 2 the configuration is wrong (each
/// wrong key is named; a restart will not help).
#[derive(Parser, Debug)]
#[command(name = "pgpilot-agent", version = VERSION, about, long_about, verbatim_doc_comment)]
struct Cli {
    /// Patroni YAML configuration file, or a directory of *.yml files merged in name order.
    /// Without it, PATRONI_CONFIGURATION or the PATRONI_* variables alone are used.
    config: Option<PathBuf>,

    /// Check the configuration and exit: 0 when valid, 2 with each wrong key otherwise.
    #[arg(long, value_name = "FILE")]
    validate_config: Option<PathBuf>,

    /// Run only the consensus member of a `raft:` cluster, no PostgreSQL (a witness: two
    /// database machines and this one keep a quorum when either database machine is lost).
    /// CONFIG needs `scope` and `raft` only; a member's YAML works too.
    #[arg(long, value_name = "CONFIG", conflicts_with_all = ["config", "validate_config"])]
    witness: Option<PathBuf>,

    /// Internal: run as the fencing guard of this data directory (started by the agent itself).
    #[arg(long, value_name = "DATA_DIR", hide = true)]
    fence_guard: Option<PathBuf>,

    #[command(flatten)]
    docs: shared::cli::DocArgs,
}

/// `--version`: the package version and the git revision the binary was built from.
const VERSION: &str = shared::version!();

fn main() -> ExitCode {
    // SAFETY: no other thread exists yet (the runtime starts below).
    let systemd = unsafe { systemd::Notifier::from_env() };
    let cli = Cli::parse();
    if let Some(dir) = &cli.fence_guard {
        return ExitCode::from(guard::run_guard(dir));
    }
    if let Some(path) = &cli.validate_config {
        return validate(path);
    }
    if let Some(path) = &cli.witness {
        return witness(path, systemd);
    }
    if let Some(code) = shared::cli::write_docs(
        <Cli as clap::CommandFactory>::command(),
        cli.docs.completions.as_deref(),
        cli.docs.man_pages.as_deref(),
    ) {
        return ExitCode::from(code);
    }
    let cfg = match Config::load(cli.config.as_deref(), std::env::vars()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pgpilot-agent: {e}");
            return ExitCode::from(2);
        }
    };
    init_tracing(&cfg);
    for w in &cfg.warnings {
        warn!(key = w.key, "configuration: {}", w.message);
    }
    let mut env_issues = cfg.check_environment();
    if env_issues.is_empty() {
        env_issues = postgres::binaries_issues(&cfg);
    }
    if env_issues.is_empty()
        && let Some(parent) = cfg.missing_data_dir_parent()
    {
        // as Patroni: the data directory's missing parents are made, readable by this user only
        use std::os::unix::fs::DirBuilderExt;
        match std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
        {
            Ok(()) => info!(
                path = %parent.display(),
                "created the data directory's parent (postgresql.data_dir)"
            ),
            Err(e) => env_issues.push(shared::config::ConfigIssue {
                key: "postgresql.data_dir".into(),
                message: format!("cannot create its parent {}: {e}", parent.display()),
            }),
        }
    }
    if !env_issues.is_empty() {
        for i in &env_issues {
            error!(key = i.key, "configuration: {}", i.message);
        }
        error!("fix the configuration above and start the agent again");
        return ExitCode::from(2);
    }
    let Some(rt) = runtime(2) else {
        return ExitCode::FAILURE;
    };
    match rt.block_on(run(cfg, systemd)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("agent stopped: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The async runtime with `workers` threads; `None` (said on stderr) if it cannot start.
fn runtime(workers: usize) -> Option<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .map_err(|e| eprintln!("pgpilot-agent: cannot start the async runtime: {e}"))
        .ok()
}

fn validate(path: &std::path::Path) -> ExitCode {
    match Config::load(Some(path), std::env::vars()) {
        Ok(cfg) => {
            for w in &cfg.warnings {
                eprintln!("warning: {}: {}", w.key, w.message);
            }
            let mut issues = cfg.check_environment();
            if issues.is_empty() {
                issues = postgres::binaries_issues(&cfg);
            }
            if let Some(parent) = cfg.missing_data_dir_parent() {
                eprintln!(
                    "note: postgresql.data_dir: its parent {} does not exist yet: the agent creates it (mode 0700) at start",
                    parent.display()
                );
            }
            if issues.is_empty() {
                println!("{}: configuration is valid", path.display());
                ExitCode::SUCCESS
            } else {
                eprintln!("{}: invalid configuration:", path.display());
                for i in issues {
                    eprintln!("  - {i}");
                }
                ExitCode::from(2)
            }
        }
        Err(e @ ConfigError::Io { .. }) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            ExitCode::from(2)
        }
    }
}

fn init_tracing(cfg: &Config) {
    use tracing_subscriber::EnvFilter;
    let level = cfg
        .log
        .level
        .clone()
        .unwrap_or_else(|| "info".into())
        .to_lowercase();
    let level = match level.as_str() {
        "warning" => "warn".to_string(),
        "critical" | "fatal" => "error".to_string(),
        other => other.to_string(),
    };
    let filter = EnvFilter::try_from_env("PGPILOT_LOG").unwrap_or_else(|_| {
        EnvFilter::new(format!("{level},h2=warn,tower=warn,hyper=warn,tonic=warn"))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none()
                && std::env::var("TERM").map(|t| t != "dumb").unwrap_or(false),
        );
    if cfg.log.json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// `--witness CONFIG`: the raft member alone, until SIGTERM or SIGINT.
fn witness(path: &std::path::Path, systemd: systemd::Notifier) -> ExitCode {
    let (scope, raft_cfg, warnings) =
        match shared::config::RaftConfig::load_witness(path, std::env::vars()) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("pgpilot-agent --witness: {e}");
                return ExitCode::from(2);
            }
        };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PGPILOT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    for w in &warnings {
        warn!(key = w.key, "configuration: {}", w.message);
    }
    let raft_cfg = match raft::prepare(&raft_cfg, &scope) {
        Ok(c) => c,
        Err(e) => {
            error!("{e:#}");
            return ExitCode::from(2);
        }
    };
    let Some(rt) = runtime(1) else {
        return ExitCode::FAILURE;
    };
    rt.block_on(async move {
        info!(
            scope,
            self_addr = raft_cfg.self_addr,
            "pgpilot witness {} starting: the raft member only, no PostgreSQL",
            shared::VERSION
        );
        let health = raft::SharedHealth::default();
        let stop = Arc::new(tokio::sync::Notify::new());
        let mut member = tokio::spawn(raft::supervise(raft_cfg, scope, health, stop.clone()));
        systemd.ready("witness: raft member running");
        tokio::select! {
            _ = shutdown_signal() => {
                info!("stopping the raft member");
                stop.notify_one();
                let _ = tokio::time::timeout(Duration::from_secs(15), member).await;
                ExitCode::SUCCESS
            }
            // the supervisor gave up (its reason is in the log): a witness without its member
            // is nothing
            _ = &mut member => ExitCode::FAILURE,
        }
    })
}

async fn run(cfg: Config, systemd: systemd::Notifier) -> Result<()> {
    // one set of signal listeners from the start: a stop while etcd is awaited or the REST API
    // starts is heard by the loop too
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let cfg = Arc::new(cfg);
    // raft: the etcd member this agent runs, before anything talks to etcd
    let raft_member = match &cfg.raft {
        Some(r) => {
            let r = raft::prepare(r, &cfg.scope)?;
            let health = raft::SharedHealth::default();
            let stop = Arc::new(tokio::sync::Notify::new());
            let task = tokio::spawn(raft::supervise(
                r,
                cfg.scope.clone(),
                health.clone(),
                stop.clone(),
            ));
            Some((health, stop, task))
        }
        None => None,
    };
    let Some((health, stop, mut task)) = raft_member else {
        return run_agent(cfg, systemd, shutdown, None).await;
    };
    let agent = run_agent(cfg, systemd, shutdown, Some(health));
    tokio::pin!(agent);
    tokio::select! {
        result = &mut agent => {
            // after the agent let its lock and member key go
            stop.notify_one();
            let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
            result
        }
        ended = &mut task => {
            // the supervisor never returns before it is told to: a failure, not a way to run on
            anyhow::bail!(
                "the raft member's supervisor stopped ({}): exiting so that the service manager starts the agent again",
                match ended {
                    Ok(()) => "returned".to_string(),
                    Err(e) => e.to_string(),
                }
            )
        }
    }
}

async fn run_agent(
    cfg: Arc<Config>,
    systemd: systemd::Notifier,
    mut shutdown: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    raft_health: Option<raft::SharedHealth>,
) -> Result<()> {
    info!(
        scope = cfg.scope,
        name = cfg.name,
        config = cfg.origin,
        "pgpilot agent {} starting",
        shared::VERSION
    );
    let timing = shared::dcs::DynamicConfig {
        raw: cfg.bootstrap.dcs.clone(),
    }
    .timing();
    let kv = EtcdKv::connect(
        &cfg.etcd,
        Duration::from_secs(timing.retry_timeout.clamp(1, 5)),
    )
    .await
    .with_context(|| etcd_hint(&cfg.etcd))?;
    let dcs = Arc::new(Dcs::new(
        kv,
        &cfg.namespace,
        &cfg.scope,
        &cfg.name,
        timing.ttl as i64,
    ));
    check_duplicate_name(&cfg, &dcs, shutdown.as_mut()).await?;

    let peers = shared::api::MemberClient::with_tls(Duration::from_secs(2), &cfg.rest_client_tls)
        .map_err(|e| anyhow::anyhow!("ctl.cacert / restapi.cafile: {e}"))?;
    let pg = Arc::new(postgres::Postgres::new(cfg.clone()));
    let (mut agent, api) = runtime::assemble(cfg.clone(), dcs.clone(), pg, peers).await;
    let commands_tx = api.commands.clone();
    agent.set_systemd(systemd);
    agent.raft = raft_health;
    agent.set_fence_guard(guard::FenceGuard::start(
        &cfg.postgresql.data_dir,
        &cfg.etcd,
    ));
    spawn_reload_on_sighup(commands_tx.clone());
    let listener = tokio::net::TcpListener::bind(&cfg.restapi.listen)
        .await
        .with_context(|| format!("cannot listen on restapi.listen {}", cfg.restapi.listen))?;
    let app = rest::router(api).into_make_service_with_connect_info::<std::net::SocketAddr>();
    let cap = rest_access::ConnectionCap::new(
        rest_access::MAX_CONNECTIONS,
        rest_access::MAX_CONNECTIONS_PER_ADDRESS,
    );
    let std_listener = listener.into_std()?;
    match &cfg.restapi.certfile {
        None => {
            let mut server = axum_server::from_tcp(std_listener)
                .context("cannot serve on restapi.listen")?
                .http1_only()
                .acceptor(cap);
            limit_requests(server.http_builder());
            info!(listen = cfg.restapi.listen, "REST API listening (http)");
            tokio::spawn(async move {
                if let Err(e) = server.serve(app).await {
                    error!("REST server stopped: {e}");
                }
            });
        }
        Some(cert) => {
            let key = cfg.restapi.keyfile.clone().unwrap_or_else(|| cert.clone());
            shared::api::install_tls_provider();
            let tls = axum_server::tls_rustls::RustlsConfig::from_config(
                rest_access::server_tls(&cfg.restapi, cert, &key).with_context(|| {
                    format!("restapi.certfile {cert} / restapi.keyfile {key}: cannot load the certificate and key (PEM)")
                })?,
            );
            agent.set_tls(tls.clone());
            let mut server = axum_server::from_tcp(std_listener)
                .context("cannot serve TLS on restapi.listen")?
                .http1_only()
                .acceptor(rest_access::CertAware::new(
                    axum_server::tls_rustls::RustlsAcceptor::new(tls).acceptor(cap),
                ));
            limit_requests(server.http_builder());
            info!(listen = cfg.restapi.listen, "REST API listening (https)");
            tokio::spawn(async move {
                if let Err(e) = server.serve(app).await {
                    error!("REST server stopped: {e}");
                }
            });
        }
    }

    agent.run(shutdown).await
}

/// A client that takes longer than [`rest_access::HEADER_READ_TIMEOUT`] to send its request
/// headers (or sends nothing at all) is cut off; the server speaks HTTP/1 only (what Patroni's
/// clients speak: nothing can hold a connection open outside these timeouts).
fn limit_requests(
    builder: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
) {
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(rest_access::HEADER_READ_TIMEOUT);
}

/// What to check when etcd cannot be reached, naming the keys involved.
fn etcd_hint(etcd: &shared::config::EtcdConfig) -> String {
    let mut keys = vec!["etcd3.hosts"];
    if etcd.tls() {
        keys.extend([
            "etcd3.cacert (the CA that signed etcd's certificate)",
            "etcd3.cert and etcd3.key (a client certificate etcd trusts)",
        ]);
    }
    if etcd.username.is_some() {
        keys.push("etcd3.username and etcd3.password");
    }
    format!(
        "cannot reach etcd at {}: check {}",
        etcd.endpoints().join(", "),
        keys.join(", ")
    )
}

/// Refuses to start when a live process already answers for our member name.
async fn check_duplicate_name(
    cfg: &Config,
    dcs: &Dcs<EtcdKv>,
    mut shutdown: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> Result<()> {
    let cluster = loop {
        match dcs.load().await {
            Ok(c) => break c,
            Err(e) => {
                error!(
                    endpoints = ?cfg.etcd.hosts,
                    "{}: {e}; retrying in 2s", etcd_hint(&cfg.etcd)
                );
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    _ = &mut shutdown => anyhow::bail!("stopped while waiting for etcd"),
                }
            }
        }
    };
    if let Some(m) = cluster.member(&cfg.name)
        && !m.data.api_url.is_empty()
    {
        let client = shared::api::MemberClient::new(Duration::from_secs(2));
        if client.answers_liveness(&m.data.api_url).await {
            anyhow::bail!(
                "another live agent already uses the name {:?} in cluster {:?} (its API {} answers); give this node a unique name",
                cfg.name,
                cfg.scope,
                m.data.api_url
            );
        }
    }
    Ok(())
}

/// SIGHUP re-reads the configuration, as `POST /reload` does (and as Patroni does).
fn spawn_reload_on_sighup(commands: tokio::sync::mpsc::Sender<rest_write::Envelope>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        warn!("cannot listen for SIGHUP: reload through POST /reload instead");
        return;
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            info!("SIGHUP received: reloading the configuration");
            let (reply, answer) = tokio::sync::oneshot::channel();
            let envelope = rest_write::Envelope {
                command: rest_write::Command::Reload,
                reply,
            };
            if commands.send(envelope).await.is_err() {
                return;
            }
            let _ = answer.await;
        }
    });
}

/// Resolves at SIGTERM or SIGINT. The handlers are installed when this is called, not when the
/// future is first polled: a stop during the agent's first cycle (a bootstrap starting) is a
/// clean shutdown too, not the signal's default death.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            std::future::pending::<()>().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => info!("SIGTERM received: shutting down"),
            _ = int.recv() => info!("SIGINT received: shutting down"),
        }
    }
}
