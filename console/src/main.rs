//! `pgpilot-console` (crate `console`): the operator's cockpit for pgpilot and Patroni clusters. Without a command it
//! opens the live full-screen view ([`live`], [`app`], [`ui`]); `pgpilot-console --batch <command>`
//! runs one command the way a script wants it: data on stdout in the chosen format, messages on
//! stderr, exit code 0 (done), 1 (refused, failed, etcd unreachable) or 2 (usage or
//! configuration error). This module owns the command line; [`batch`] runs the commands.

mod app;
mod batch;
mod live;
mod ui;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

const EXAMPLES: &str = "\
Examples:
  pgpilot-console -c /etc/patroni/patroni.yml --batch list          every member of the config's cluster
  pgpilot-console --etcd 10.0.0.1:2379 --batch list                 every cluster in /service/
  pgpilot-console -d etcd3://10.0.0.1:2379 --batch list             the same, as patronictl -d
  pgpilot-console -c node.yml --batch list -e -f json | jq .         extended columns, as JSON
  pgpilot-console -c node.yml --batch topology -W                    the replication tree, refreshed every 2 s
  pgpilot-console -c node.yml --batch history demo                   timeline history of cluster demo
  pgpilot-console -c node.yml --batch dsn demo -r replica            a replica's host and port
  pgpilot-console -c node.yml --batch edit-config demo -p work_mem=64MB --force
  pgpilot-console -c node.yml --batch pause demo --wait
  pgpilot-console -c node.yml --batch haproxy-config demo > /etc/haproxy/haproxy.cfg

Exit codes: 0 done; 1 refused or failed (the reason on stderr; also when etcd is unreachable
or has no quorum, rather than printing stale data); 2 usage or configuration error.";

/// pgpilot console: watch and operate pgpilot (and Patroni) clusters.
///
/// Without a command it opens the live view of every cluster in the namespace (press ? for
/// the keys). With `--batch COMMAND` it runs one command non-interactively, like patronictl: the same
/// commands and columns, output as a table, TSV, JSON or YAML. The configuration is any
/// Patroni YAML (only etcd3, namespace, scope and ctl/restapi authentication are read) or a
/// small file with just those keys; `PATRONI_*` variables override it.
#[derive(Parser, Debug)]
#[command(name = "pgpilot-console", version = VERSION, about, long_about, after_help = EXAMPLES)]
struct Cli {
    /// Patroni YAML or console config (etcd3.hosts, namespace, scope, ctl.authentication).
    #[arg(short = 'c', long, global = true, env = "PGPILOT_CONSOLE_CONFIG")]
    config: Option<PathBuf>,
    /// etcd endpoints as host:port, comma-separated; override the config's etcd3.hosts.
    #[arg(long, global = true, value_delimiter = ',')]
    etcd: Vec<String>,
    /// The DCS as patronictl names it: etcd3://HOST:PORT (etcd:// too; comma-separated hosts),
    /// in place of a configuration file or --etcd.
    #[arg(
        short = 'd',
        long = "dcs-url",
        visible_alias = "dcs",
        global = true,
        value_name = "URL"
    )]
    dcs_url: Option<String>,
    /// Do not check the members' REST API certificates (patronictl's -k), as
    /// ctl.insecure: true does.
    #[arg(short = 'k', long = "insecure", global = true)]
    insecure: bool,
    /// Key namespace (default: the config's, else /service).
    #[arg(long, global = true)]
    namespace: Option<String>,
    /// Run COMMAND for a script: no screen, no prompts, exit codes.
    #[arg(long, global = true)]
    batch: bool,
    /// Live view only: disable every action (pause, resume, cancel).
    #[arg(long)]
    read_only: bool,
    /// Live view only: leave the mouse to the terminal (no click to select, no wheel
    /// scrolling), for copying text without holding Shift.
    #[arg(long)]
    no_mouse: bool,
    /// Live view only: watch the demo kept in DIR and enable its failure switches (C cut or
    /// restore a member, K crash its postmaster, N isolate or reconnect it, E stop or start
    /// etcd), run through the `demo` program its demo.json names.
    #[arg(long, value_name = "DIR")]
    demo: Option<PathBuf>,
    /// Output format: pretty (default on a terminal), tsv (default otherwise), json, yaml.
    #[arg(short = 'f', long, global = true, value_parser = ["pretty", "tsv", "json", "yaml", "yml"])]
    format: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
    /// Print the per-frame render time of a 1,000-member cluster list (for `bench`).
    #[arg(long, hide = true)]
    bench_render: bool,
    #[command(flatten)]
    docs: shared::cli::DocArgs,
}

/// `--version`: the package version and the git revision the binary was built from.
const VERSION: &str = shared::version!();

#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Members of one or more clusters: host, role, state, timeline, received and replayed
    /// WAL with their lag in MB.
    ///
    /// Without CLUSTER, the config's scope, or every cluster of the namespace when the config
    /// names none. Pending restarts, scheduled restarts and tags appear when any member has
    /// them (always with -e). The pretty table ends with "Maintenance mode: on" and a scheduled
    /// switchover, when there are.
    ///
    /// Examples: list demo -e          list -f json | jq '.[] | select(.Role=="Leader")'
    ///           list -W               (refresh every 2 s)
    List {
        clusters: Vec<String>,
        /// Always show the pending-restart, scheduled-restart and tags columns.
        #[arg(short = 'e', long)]
        extended: bool,
        /// Print the time before the table.
        #[arg(short = 't', long)]
        timestamp: bool,
        #[command(flatten)]
        watch: Watch,
    },
    /// Like list, ordered as the replication tree: cascaded replicas indented under the
    /// member they stream from.
    ///
    /// Example: topology demo -w 5
    Topology {
        clusters: Vec<String>,
        #[command(flatten)]
        watch: Watch,
    },
    /// The timeline history of a cluster: TL, LSN, reason, time, new leader.
    ///
    /// Example: history demo -f json
    History { cluster: Option<String> },
    /// The cluster journal, newest first: what each reachable agent recorded (decisions,
    /// promotions, demotions, rewinds, clones, failed jobs, with times) merged with the history
    /// key (each timeline's end and new leader) — the story of an incident, for a console
    /// opened after it. Members that did not answer are named on stderr.
    ///
    /// Example: events demo -f json
    Events { cluster: Option<String> },
    /// The dynamic configuration (the config key) as YAML (or JSON with -f json).
    ///
    /// Example: show-config demo > demo-config.yml
    ShowConfig { cluster: Option<String> },
    /// host=… port=… of the leader, a member (-m) or a member of a role (-r).
    ///
    /// Example: psql "$(pgpilot-console -c node.yml --batch dsn demo -r replica) dbname=app"
    Dsn {
        cluster: Option<String>,
        /// leader, primary, replica, standby-leader or any.
        #[arg(short = 'r', long)]
        role: Option<String>,
        /// A member by name.
        #[arg(short = 'm', long)]
        member: Option<String>,
    },
    /// This console's version; with CLUSTER, each member's daemon and PostgreSQL versions.
    ///
    /// Example: version demo
    Version {
        cluster: Option<String>,
        members: Vec<String>,
    },
    /// Change the dynamic configuration (the config key), shown as a diff first.
    ///
    /// Build the change with --set/--pg (repeatable), --apply (merge a YAML file) or --replace
    /// (the whole configuration from a YAML file); with none of them on a terminal, $EDITOR
    /// opens on the current configuration. The result is checked (bad values are named) and
    /// written only if nobody changed the key in between. Asks before writing on a terminal;
    /// elsewhere --force is required.
    ///
    /// Examples: edit-config demo -s ttl=20 -s loop_wait=5 --force
    ///           edit-config demo -p work_mem=64MB -p max_connections=200 --force
    ///           edit-config demo -s maximum_lag_on_failover=null --force   (null removes a key)
    EditConfig(EditArgs),
    /// Pause automatic failover and every other automatic action of the agents.
    ///
    /// PostgreSQL keeps running; nothing is promoted, demoted or restarted until resume.
    /// Refused (exit 1) when the cluster is already paused.
    ///
    /// Example: pause demo --wait
    Pause {
        cluster: Option<String>,
        /// Wait until every member reports the pause.
        #[arg(long)]
        wait: bool,
    },
    /// Make a cluster a standby cluster of another cluster's primary (patronictl 4.1's
    /// demote-cluster): its primary becomes the standby leader, replicating from HOST:PORT
    /// (and/or fetching WAL with --restore-command), and never promotes on its own.
    ///
    /// Example: demote-cluster dr --host 10.0.1.5 --port 5432 --force
    DemoteCluster {
        cluster: Option<String>,
        /// The other cluster's primary (or a proxy that reaches it).
        #[arg(long)]
        host: Option<String>,
        #[arg(long)]
        port: Option<u16>,
        /// How to fetch WAL from the other cluster's archive.
        #[arg(long = "restore-command")]
        restore_command: Option<String>,
        /// A replication slot on the other cluster's primary to stream from.
        #[arg(long = "primary-slot-name")]
        primary_slot_name: Option<String>,
        /// Do not ask for confirmation.
        #[arg(long)]
        force: bool,
    },
    /// Make a standby cluster a cluster of its own (patronictl 4.1's promote-cluster): its
    /// standby leader promotes and takes writes.
    ///
    /// Example: promote-cluster dr --force
    PromoteCluster {
        cluster: Option<String>,
        /// Do not ask for confirmation.
        #[arg(long)]
        force: bool,
    },
    /// Resume automatic failover after a pause.
    ///
    /// Example: resume demo --wait
    Resume {
        cluster: Option<String>,
        /// Wait until every member reports the resume.
        #[arg(long)]
        wait: bool,
    },
    /// Hand the leader lock over to a replica, now or at a time, and report the outcome.
    ///
    /// The old primary checkpoints, stops, releases the lock and comes back as a replica of
    /// the new leader; clients see a write gap of a fraction of a second. The command returns
    /// when the new leader runs as primary (exit 0, its name printed) or with the reason it
    /// did not happen (exit 1) — never "status unknown". Refused (exit 1, the numbers named)
    /// when the candidate is not a healthy replica within maximum_lag_on_failover, or tagged
    /// nofailover. Without --candidate the healthiest replica takes over.
    ///
    /// Examples: switchover demo --candidate node2 --force
    ///           switchover demo --scheduled 2026-11-24T02:00+00:00 --force
    Switchover {
        cluster: Option<String>,
        /// The current leader (default: whoever holds the lock).
        #[arg(long, alias = "primary", alias = "master")]
        leader: Option<String>,
        /// The member to take over (default: the healthiest replica).
        #[arg(long)]
        candidate: Option<String>,
        /// When, as ISO 8601 with a time zone (default: now).
        #[arg(long, value_name = "TIME")]
        scheduled: Option<String>,
        /// Do not ask.
        #[arg(long)]
        force: bool,
    },
    /// Promote a named replica when the cluster has no healthy leader.
    ///
    /// The candidate takes over even if it lags: that is the operator's choice. With a
    /// healthy leader, prefer switchover.
    ///
    /// Example: failover demo --candidate node3 --force
    Failover {
        cluster: Option<String>,
        /// The member to promote.
        #[arg(long)]
        candidate: Option<String>,
        /// Do not ask.
        #[arg(long)]
        force: bool,
    },
    /// Restart PostgreSQL on members (all, those named, or those of a role), now or at a
    /// time; each restart is reported when it has finished.
    ///
    /// Examples: restart demo --pending --force        (only where a parameter needs it)
    ///           restart demo node2 --scheduled 2026-11-24T03:00+00:00 --force
    ///           restart demo -r replica --pg-version 15.9 --force
    Restart {
        cluster: String,
        members: Vec<String>,
        /// Only members of this role: leader, primary, replica, any.
        #[arg(short = 'r', long)]
        role: Option<String>,
        /// Restart one member only, the first that matches.
        #[arg(long)]
        any: bool,
        /// When, as ISO 8601 with a time zone (default: now).
        #[arg(long, value_name = "TIME")]
        scheduled: Option<String>,
        /// Only members running an older PostgreSQL than this (e.g. 15.9).
        #[arg(long = "pg-version", value_name = "VERSION")]
        pg_version: Option<String>,
        /// Only members with a pending restart.
        #[arg(long)]
        pending: bool,
        /// Seconds the start may take.
        #[arg(long, value_name = "SECONDS")]
        timeout: Option<String>,
        /// Do not ask.
        #[arg(long)]
        force: bool,
    },
    /// Run SQL on a member, as patronictl query: the leader by default, a member of a role
    /// (-r), or a member by name (-m). Rows print as TSV with a header (or -f pretty, json,
    /// yaml).
    ///
    /// The connection goes to the member's conn_url as the user of -U (else the conn_url's,
    /// else $PGUSER, else the OS user) to --dbname (else $PGDATABASE, else the user's name),
    /// with the password of $PGPASSWORD or --password (asked for). A role other than leader
    /// and any is checked against pg_is_in_recovery(). patronictl's short -c, -d and -f are
    /// the console's global options: use --command, --dbname and --file.
    ///
    /// Examples: query demo --command "SELECT now()" -U postgres
    ///           query demo -r replica --file report.sql -U postgres -f json
    Query {
        cluster: Option<String>,
        /// leader, primary, standby-leader, replica, standby or any.
        #[arg(short = 'r', long)]
        role: Option<String>,
        /// The member by name.
        #[arg(short = 'm', long, conflicts_with = "role")]
        member: Option<String>,
        /// The SQL to run.
        #[arg(long, conflicts_with = "file", required_unless_present = "file")]
        command: Option<String>,
        /// A file with the SQL to run.
        #[arg(long, value_name = "PATH")]
        file: Option<PathBuf>,
        /// The database user.
        #[arg(short = 'U', long)]
        username: Option<String>,
        /// Ask for the password (read from standard input when it is not a terminal).
        #[arg(long)]
        password: bool,
        /// The database to connect to.
        #[arg(long)]
        dbname: Option<String>,
        /// The column delimiter of TSV output.
        #[arg(long, default_value = "\t")]
        delimiter: String,
        #[command(flatten)]
        watch: Watch,
    },
    /// Wipe the data directory of replicas and clone them again.
    ///
    /// The source is the one a new replica would use (a member tagged clonefrom, else the
    /// leader; create_replica_methods in order); --from-leader takes the leader with
    /// pg_basebackup whatever the tags and methods say. Refused on the leader. With --wait,
    /// returns when each member streams again.
    ///
    /// Example: reinit demo node3 --force --wait
    Reinit {
        cluster: String,
        #[arg(required = true)]
        members: Vec<String>,
        /// Do not ask; also cancels a job the member is running.
        #[arg(long)]
        force: bool,
        /// Clone from the leader with pg_basebackup, not from a clonefrom member or with
        /// another replica method.
        #[arg(long)]
        from_leader: bool,
        /// Wait until each member runs and streams again.
        #[arg(long)]
        wait: bool,
    },
    /// Make members re-read their configuration file (as SIGHUP does).
    ///
    /// Example: reload demo --force
    Reload {
        cluster: String,
        members: Vec<String>,
        /// Only members of this role: leader, primary, replica, any.
        #[arg(short = 'r', long)]
        role: Option<String>,
        /// Do not ask.
        #[arg(long)]
        force: bool,
    },
    /// Cancel a scheduled switchover, or members' scheduled restarts.
    ///
    /// Examples: flush demo switchover --force
    ///           flush demo restart node2 --force
    Flush {
        cluster: String,
        /// What to cancel: switchover or restart.
        #[arg(value_parser = ["switchover", "restart"])]
        target: String,
        /// For restart: the members (default: all).
        members: Vec<String>,
        /// For restart: only members of this role (leader, primary, replica or any), as
        /// patronictl flush --role.
        #[arg(short = 'r', long)]
        role: Option<String>,
        /// Do not ask.
        #[arg(long)]
        force: bool,
    },
    /// Print an HAProxy configuration for a cluster: a write port reaching the member whose
    /// REST API answers `OPTIONS /primary` with 200, a read port balanced over members answering
    /// `OPTIONS /replica` (Patroni's checks, so it also fronts Patroni members).
    ///
    /// Servers come from the member keys' conn_url and api_url; an https API is checked with
    /// check-ssl (verified with --ca-file). Members added later need a new file and a reload.
    ///
    /// Example: haproxy-config demo --write-port 5000 --read-port 5001 > /etc/haproxy/haproxy.cfg
    HaproxyConfig {
        cluster: Option<String>,
        /// Address the frontends bind to.
        #[arg(long, default_value = "*")]
        bind: String,
        /// Port for writes (the primary).
        #[arg(long, default_value_t = 5000)]
        write_port: u16,
        /// Port for reads (the replicas, round robin).
        #[arg(long, default_value_t = 5001)]
        read_port: u16,
        /// Port of HAProxy's statistics page; 0 for none.
        #[arg(long, default_value_t = 7000)]
        stats_port: u16,
        /// Milliseconds between health checks (a new primary gets writes within about two).
        #[arg(long, value_name = "MS", default_value_t = 1000)]
        check_interval: u64,
        /// CA file that verifies https REST APIs (default: not verified).
        #[arg(long, value_name = "FILE")]
        ca_file: Option<String>,
    },
    /// Delete every key of a cluster from etcd (PostgreSQL is not touched). Asks for the
    /// cluster's name, a phrase and the leader's name on a terminal; elsewhere --force.
    ///
    /// Example: remove old-cluster --force
    Remove {
        cluster: String,
        /// Do not ask.
        #[arg(long)]
        force: bool,
    },
}

/// What `edit-config` changes and how.
#[derive(clap::Args, Debug, Clone)]
pub struct EditArgs {
    cluster: Option<String>,
    /// key.path=value (value in YAML; null removes the key). Repeatable.
    #[arg(short = 's', long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// A PostgreSQL parameter: name=value, under postgresql.parameters. Repeatable.
    #[arg(short = 'p', long = "pg", value_name = "NAME=VALUE")]
    pg: Vec<String>,
    /// Merge this YAML file into the configuration (- for stdin, with --force).
    #[arg(long, value_name = "FILE")]
    apply: Option<String>,
    /// Replace the whole configuration by this YAML file (- for stdin, with --force).
    #[arg(long, value_name = "FILE", conflicts_with = "apply")]
    replace: Option<String>,
    /// Do not show the diff.
    #[arg(short = 'q', long)]
    quiet: bool,
    /// Apply without asking.
    #[arg(long)]
    force: bool,
}

/// Refreshing output.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Watch {
    /// Refresh every 2 seconds.
    #[arg(short = 'W')]
    pub every_two: bool,
    /// Refresh every N seconds.
    #[arg(short = 'w', long = "watch", value_name = "N")]
    pub every: Option<f64>,
}

impl Watch {
    pub fn interval(&self) -> Option<std::time::Duration> {
        match (self.every, self.every_two) {
            (Some(n), _) if n > 0.0 => Some(std::time::Duration::from_secs_f64(n)),
            (_, true) => Some(std::time::Duration::from_secs(2)),
            _ => None,
        }
    }
}

/// The etcd endpoints of a patronictl-style DCS URL: `etcd3://h1:2379,h2:2379` (or `etcd://`;
/// a trailing `/` allowed). Other stores are refused by name.
fn dcs_url_hosts(url: &str) -> Result<Vec<String>, String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err("expected etcd3://HOST:PORT".into());
    };
    if !matches!(scheme.to_ascii_lowercase().as_str(), "etcd3" | "etcd") {
        return Err(format!(
            "{scheme} is not supported: pgpilot works with etcd (etcd3://HOST:PORT)"
        ));
    }
    let hosts: Vec<String> = rest
        .trim_end_matches('/')
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|h| {
            if h.contains(':') {
                h.to_string()
            } else {
                format!("{h}:2379")
            }
        })
        .collect();
    if hosts.is_empty() || hosts.iter().any(|h| h.contains('/') || h.contains('@')) {
        return Err("expected etcd3://HOST:PORT[,HOST:PORT…]".into());
    }
    Ok(hosts)
}

fn main() {
    let cli = Cli::parse();
    if let Some(code) = shared::cli::write_docs(
        <Cli as clap::CommandFactory>::command(),
        cli.docs.completions.as_deref(),
        cli.docs.man_pages.as_deref(),
    ) {
        std::process::exit(code.into());
    }
    if cli.bench_render {
        let per_frame = ui::render_benchmark(50);
        let charts = ui::charts_benchmark(20);
        println!(
            "{}",
            serde_json::json!({
                "frame_ms_1000_members": per_frame.as_secs_f64() * 1000.0,
                "frame_ms_charts_1000_members": charts.as_secs_f64() * 1000.0,
            })
        );
        return;
    }
    let filter = std::env::var("PGPILOT_LOG").unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let mut etcd = cli.etcd;
    if let Some(url) = &cli.dcs_url {
        match dcs_url_hosts(url) {
            Ok(hosts) => etcd.extend(hosts),
            Err(why) => {
                eprintln!("pgpilot-console: --dcs-url {url:?}: {why}");
                std::process::exit(2);
            }
        }
    }
    let opts = batch::Options {
        config: cli.config,
        etcd,
        namespace: cli.namespace,
        format: cli.format,
        insecure: cli.insecure,
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pgpilot-console: cannot start: {e}");
            std::process::exit(1);
        }
    };
    let code = match cli.command {
        Some(command) => rt.block_on(batch::run(opts, command)),
        None if cli.batch => {
            eprintln!(
                "pgpilot-console: --batch needs a command, e.g. `pgpilot-console --batch list` (see --help)"
            );
            2
        }
        None => match batch::load_config(&opts) {
            Ok(cfg) => rt.block_on(live::run(cfg, cli.read_only, cli.demo, !cli.no_mouse)),
            Err(f) => {
                eprintln!("pgpilot-console: {}", f.message());
                f.code()
            }
        },
    };
    std::process::exit(code);
}

#[cfg(test)]
mod tests {
    use super::dcs_url_hosts;

    #[test]
    fn dcs_urls_as_patronictl_writes_them() {
        assert_eq!(
            dcs_url_hosts("etcd3://10.0.0.1:2379").unwrap(),
            vec!["10.0.0.1:2379"]
        );
        assert_eq!(
            dcs_url_hosts("etcd://a:1,b/").unwrap(),
            vec!["a:1", "b:2379"]
        );
        assert!(
            dcs_url_hosts("consul://a:8500")
                .unwrap_err()
                .contains("consul")
        );
        assert!(dcs_url_hosts("10.0.0.1:2379").is_err());
        assert!(dcs_url_hosts("etcd3://").is_err());
    }
}
