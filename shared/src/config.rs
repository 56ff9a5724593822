//! Local configuration: reads a Patroni YAML file (or a directory of them, or
//! `PATRONI_CONFIGURATION`), overlays the `PATRONI_*` environment variables with Patroni's
//! precedence, and validates everything into a typed [`Config`]. Every problem is reported with the
//! dotted key at fault; unknown keys are warnings; secrets are wrapped in [`Secret`] and never printed.

use serde_json::{Map, Value};
use std::fmt;
use std::path::{Path, PathBuf};

/// A password or other secret. Its `Debug` output is redacted and it has no `Display`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The secret itself, for the few places that must hand it to PostgreSQL or etcd.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

/// One problem with the configuration, tied to the key (or file line) at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}: invalid YAML: {message}")]
    Yaml { origin: String, message: String },
    #[error("{origin}: the top level must be a mapping of keys to values")]
    NotAMapping { origin: String },
    #[error(
        "no configuration: give a config file, or set PATRONI_CONFIGURATION, or PATRONI_* variables (at least PATRONI_NAME and PATRONI_SCOPE)"
    )]
    Missing,
    #[error("invalid configuration:\n{}", .0.iter().map(|i| format!("  - {i}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ConfigIssue>),
}

/// Credentials of one PostgreSQL role from `postgresql.authentication`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PgUser {
    pub username: String,
    pub password: Option<Secret>,
    /// Extra libpq options (sslmode, sslcert, …) passed through to connection strings.
    pub options: Vec<(String, String)>,
    /// The client key's passphrase (libpq `sslpassword`), kept apart because it is a secret.
    pub sslpassword: Option<Secret>,
}

/// HTTP Basic credentials (`restapi.authentication`, `ctl.authentication`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BasicAuth {
    pub username: String,
    pub password: Secret,
}

/// The `restapi` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestApiConfig {
    pub listen: String,
    pub connect_address: String,
    pub authentication: Option<BasicAuth>,
    /// TLS: the server certificate (PEM; may hold the key too).
    pub certfile: Option<String>,
    /// TLS: the private key (PEM); defaults to `certfile`.
    pub keyfile: Option<String>,
    /// `restapi.allowlist`: the addresses, networks (CIDR) and host names allowed to call the
    /// write endpoints; empty = everyone.
    pub allowlist: Vec<String>,
    /// `restapi.allowlist_include_members`: the hosts of the members' REST APIs are allowed
    /// too.
    pub allowlist_include_members: bool,
    /// `restapi.verify_client`: whether clients must present a certificate signed by
    /// `restapi.cafile`.
    pub verify_client: VerifyClient,
    /// `restapi.cafile`: the CA that signs client certificates.
    pub cafile: Option<String>,
    /// `restapi.keyfile_password`: the passphrase of an encrypted (PKCS#8) key.
    pub keyfile_password: Option<Secret>,
    /// `restapi.http_extra_headers`: added to every answer.
    pub http_extra_headers: Vec<(String, String)>,
    /// `restapi.https_extra_headers`: added to every answer too when the API serves TLS.
    pub https_extra_headers: Vec<(String, String)>,
}

impl RestApiConfig {
    /// The headers added to every answer: the http ones, and with TLS the https ones too (as
    /// Patroni merges them).
    pub fn extra_headers(&self) -> Vec<(String, String)> {
        let mut all = self.http_extra_headers.clone();
        if self.certfile.is_some() {
            all.extend(self.https_extra_headers.iter().cloned());
        }
        all
    }
}

/// `restapi.verify_client`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VerifyClient {
    /// No client certificates asked for.
    #[default]
    None,
    /// A certificate is checked when sent; the write endpoints need one.
    Optional,
    /// Every connection needs one (the TLS handshake fails without).
    Required,
}

/// How an agent or the console checks the certificates of members' REST APIs over https:
/// `ctl.cacert`, else `restapi.cafile`, as trusted roots; `ctl.insecure` skips the check.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RestClientTls {
    pub cacert: Option<PathBuf>,
    pub insecure: bool,
    /// `ctl.certfile`/`ctl.keyfile`: the client certificate presented to members' REST APIs.
    pub certfile: Option<PathBuf>,
    pub keyfile: Option<PathBuf>,
    /// `ctl.keyfile_password`: the passphrase of an encrypted (PKCS#8) `ctl.keyfile`.
    pub keyfile_password: Option<Secret>,
}

/// Reads the REST client TLS settings (`ctl.cacert`/`restapi.cafile`, `ctl.insecure`).
fn read_rest_client_tls(r: &mut Reader<'_>) -> RestClientTls {
    let cafile = r.string("restapi.cafile");
    let certfile = r.string("ctl.certfile").map(PathBuf::from);
    let keyfile = r.string("ctl.keyfile").map(PathBuf::from);
    if keyfile.is_some() && certfile.is_none() {
        r.err("ctl.keyfile", "needs ctl.certfile (the certificate)");
    }
    RestClientTls {
        cacert: r.string("ctl.cacert").or(cafile).map(PathBuf::from),
        insecure: r.boolean("ctl.insecure").unwrap_or(false),
        certfile,
        keyfile,
        keyfile_password: r.string("ctl.keyfile_password").map(Secret),
    }
}

impl RestApiConfig {
    /// `api_url` published in the member key.
    pub fn api_url(&self) -> String {
        let scheme = if self.certfile.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}/patroni", self.connect_address)
    }
}

/// The `etcd3` section: where etcd is and how to log in.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EtcdConfig {
    /// `host:port` endpoints.
    pub hosts: Vec<String>,
    pub protocol: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// TLS: the CA that signed etcd's certificate (PEM); without it, the system's roots.
    pub cacert: Option<PathBuf>,
    /// TLS: the client certificate (PEM; may hold the key too).
    pub cert: Option<PathBuf>,
    /// TLS: the client certificate's key (PEM); defaults to `cert`.
    pub key: Option<PathBuf>,
}

impl EtcdConfig {
    /// Whether etcd is reached over TLS (`protocol: https` or `https://` endpoints).
    pub fn tls(&self) -> bool {
        self.protocol == "https" || self.hosts.iter().any(|h| h.starts_with("https://"))
    }

    /// Endpoints as URLs, as etcd-client wants them.
    pub fn endpoints(&self) -> Vec<String> {
        self.hosts
            .iter()
            .map(|h| {
                if h.contains("://") {
                    h.clone()
                } else if self.tls() {
                    format!("https://{h}")
                } else {
                    format!("{}://{h}", self.protocol)
                }
            })
            .collect()
    }
}

/// The `bootstrap` section.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BootstrapConfig {
    /// Dynamic configuration written to the `config` key by the node that bootstraps the cluster.
    pub dcs: Map<String, Value>,
    /// `bootstrap.method` other than `initdb`, with its section `bootstrap.<method>` (which
    /// holds a `command`): the first member restores the cluster with it (e.g. a
    /// point-in-time recovery from a backup).
    pub method: Option<(String, Map<String, Value>)>,
    /// Options for initdb, already rendered as `--key=value` / `--flag`.
    pub initdb: Vec<String>,
    /// Lines appended to pg_hba.conf after initdb.
    pub pg_hba: Vec<String>,
    pub post_bootstrap: Option<String>,
}

/// Patroni's built-in tags plus custom ones.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Tags {
    pub nofailover: Option<bool>,
    pub failover_priority: Option<i64>,
    pub clonefrom: bool,
    pub noloadbalance: bool,
    pub replicatefrom: Option<String>,
    pub nosync: Option<bool>,
    pub sync_priority: Option<i64>,
    pub nostream: bool,
    /// Every tag as configured (built-ins included), in file order, for `tag_<key>` filters.
    pub all: Map<String, Value>,
}

impl Tags {
    /// Whether this node may never become leader.
    pub fn no_failover(&self) -> bool {
        crate::tags::TagView(&self.all).no_failover()
    }

    /// Priority used at equal WAL position (default 1; 0 when nofailover).
    pub fn priority(&self) -> i64 {
        crate::tags::TagView(&self.all).failover_priority()
    }

    /// The tags as published in the member key, as Patroni publishes them: the boolean
    /// built-ins only when true (by truthiness), except `nofailover`/`nosync` when their
    /// priority tag is also present; values as written.
    pub fn published(&self) -> Map<String, Value> {
        let truthy = crate::tags::truthy;
        let mut out = Map::new();
        for (k, v) in &self.all {
            let keep = match k.as_str() {
                "clonefrom" | "noloadbalance" | "nostream" => truthy(v),
                "nofailover" => truthy(v) || self.all.contains_key("failover_priority"),
                "nosync" => truthy(v) || self.all.contains_key("sync_priority"),
                _ => true,
            };
            if keep {
                out.insert(k.clone(), v.clone());
            }
        }
        out
    }
}

/// The `postgresql` section.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PostgresConfig {
    pub listen: String,
    pub connect_address: String,
    pub proxy_address: Option<String>,
    pub data_dir: PathBuf,
    pub config_dir: Option<PathBuf>,
    pub bin_dir: Option<PathBuf>,
    /// Overrides of binary names (`pg_ctl`, `initdb`, …).
    pub bin_name: Vec<(String, String)>,
    pub pgpass: PathBuf,
    pub database: String,
    pub superuser: PgUser,
    pub replication: PgUser,
    pub rewind: Option<PgUser>,
    /// Local GUCs, in file order (values may be strings, numbers or booleans).
    pub parameters: Map<String, Value>,
    /// When set, pg_hba.conf is written from this list.
    pub pg_hba: Option<Vec<String>>,
    pub use_pg_rewind: Option<bool>,
    pub use_unix_socket: bool,
    pub remove_data_directory_on_rewind_failure: bool,
    pub remove_data_directory_on_diverged_timelines: bool,
    pub basebackup: Vec<String>,
    /// `create_replica_methods` (or the older `create_replica_method`), when set here (else
    /// the dynamic configuration's, else `basebackup`).
    pub create_replica_methods: Option<Vec<String>>,
    /// Sections of replica methods: `postgresql.<name>` mappings holding a `command`.
    pub methods: Map<String, Value>,
    /// `recovery_conf`: recovery settings for replicas (`restore_command`, …), when set here.
    pub recovery_conf: Option<Map<String, Value>>,
    pub pg_ctl_timeout: u64,
    pub callbacks: Map<String, Value>,
}

impl PostgresConfig {
    /// Path of a PostgreSQL binary, honouring `bin_name` and `bin_dir`.
    pub fn binary(&self, name: &str) -> PathBuf {
        let file = self
            .bin_name
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or(name);
        match &self.bin_dir {
            Some(dir) => dir.join(file),
            None => PathBuf::from(file),
        }
    }

    /// `conn_url` published in the member key.
    pub fn conn_url(&self) -> String {
        format!("postgres://{}/{}", self.connect_address, self.database)
    }

    /// Host and port this server listens on, for local connections (a wildcard becomes loopback).
    pub fn local_host_port(&self) -> (String, u16) {
        let (host, port) = split_host_port(&self.listen).unwrap_or(("127.0.0.1".into(), 5432));
        let first = host.split(',').next().unwrap_or("").trim().to_string();
        let host = match first.as_str() {
            "" | "*" | "0.0.0.0" => "127.0.0.1".to_string(),
            "::" => "::1".to_string(),
            _ => first,
        };
        (host, port)
    }
}

/// The `log` section (only what pgpilot uses).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogConfig {
    pub level: Option<String>,
    pub json: bool,
}

/// The whole local configuration of one node.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub scope: String,
    pub namespace: String,
    pub name: String,
    pub restapi: RestApiConfig,
    pub ctl_authentication: Option<BasicAuth>,
    /// How this agent checks its peers' REST certificates.
    pub rest_client_tls: RestClientTls,
    pub etcd: EtcdConfig,
    /// `raft`: no etcd run by anyone else — the agent runs a local etcd member as the DCS
    /// (then `etcd` points at that member's local client address).
    pub raft: Option<RaftConfig>,
    pub bootstrap: BootstrapConfig,
    pub postgresql: PostgresConfig,
    pub tags: Tags,
    pub log: LogConfig,
    pub watchdog: WatchdogConfig,
    /// Where the configuration came from (file path, or the environment).
    pub origin: String,
    /// Keys that were not understood; logged, not fatal.
    pub warnings: Vec<ConfigIssue>,
}

/// `raft`: Patroni's section for a cluster without a separate DCS. pgpilot runs an etcd member
/// beside each agent instead of a Raft library of its own: its peers are `self_addr` and
/// `partner_addrs`, its data is under `data_dir`, and its client address is on loopback only.
#[derive(Debug, Clone, PartialEq)]
pub struct RaftConfig {
    /// Where the member keeps its data (`raft.data_dir`; the etcd member's under `etcd/`).
    pub data_dir: PathBuf,
    /// This member's peer address, `host:port`: what the partners dial.
    pub self_addr: String,
    /// The other members' peer addresses (this member's own is dropped if listed).
    pub partner_addrs: Vec<String>,
    /// Where the peer port listens (`raft.bind_addr`, a host or host:port); `self_addr` if unset.
    pub bind_addr: Option<String>,
    /// Protects the peer traffic: the members' mutual TLS is derived from it unless `tls` is
    /// given, and join requests prove it (agent/src/raft_tls.rs, agent/src/raft.rs).
    pub password: Option<Secret>,
    /// The member's client port on 127.0.0.1 (pgpilot's `raft.client_port`; default the peer
    /// port + 1).
    pub client_port: u16,
    /// etcd's election timeout in ms, from `raft.max_timeout` (seconds).
    pub election_ms: Option<u64>,
    /// etcd's heartbeat interval in ms, from `raft.append_entries_period` (seconds).
    pub heartbeat_ms: Option<u64>,
    /// Mutual TLS between the members (pgpilot's `raft.cacert`, `raft.cert`, `raft.key`).
    pub tls: Option<RaftTls>,
}

/// The files of the members' mutual TLS: every member presents `cert` (signed by `cacert`,
/// naming its `self_addr` host) and accepts only peers whose certificate `cacert` signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftTls {
    pub cacert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl RaftConfig {
    /// Every member's peer address, this one's included, sorted (the same list on every member).
    pub fn members(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .partner_addrs
            .iter()
            .chain(std::iter::once(&self.self_addr))
            .cloned()
            .collect();
        all.sort();
        all.dedup();
        all
    }

    /// The peer URL of a member's address: https with the members' TLS.
    pub fn peer_url(&self, addr: &str) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{addr}")
    }

    /// The etcd member name of a peer address (the address itself, `:` as `-`).
    pub fn member_name(addr: &str) -> String {
        addr.replace([':', '[', ']'], "-")
    }

    /// The local client endpoint, `127.0.0.1:PORT`.
    pub fn client_endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// For `agent --witness`: `scope` and `raft` of a YAML file (a member's whole YAML works;
    /// its other sections are not read), with the `PATRONI_*` variables over it.
    pub fn load_witness(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(String, RaftConfig, Vec<ConfigIssue>), ConfigError> {
        let env: Vec<(String, String)> = env.into_iter().collect();
        let mut tree = read_path(path)?;
        apply_env(&mut tree, &env);
        let mut r = Reader::new(&tree);
        let scope = r.required_string("scope");
        if r.get("raft").is_none() {
            r.err("raft", "is required: a witness runs the raft member only");
            return Err(ConfigError::Invalid(r.errors));
        }
        let raft = read_raft(&mut r);
        if r.errors.is_empty() {
            // what the raft section has that the witness does not use is said, not dropped
            // (other sections of a member's YAML are simply not the witness's)
            let mut warnings = r.notes.clone();
            warnings.extend(
                r.unknown_keys()
                    .into_iter()
                    .filter(|w| w.key.starts_with("raft.")),
            );
            Ok((scope, raft, warnings))
        } else {
            Err(ConfigError::Invalid(r.errors))
        }
    }

    /// The etcd configuration that reaches this member's client port.
    pub fn etcd(&self) -> EtcdConfig {
        EtcdConfig {
            hosts: vec![self.client_endpoint()],
            protocol: "http".into(),
            ..Default::default()
        }
    }
}

/// Reads `raft`: Patroni's keys (`data_dir`, `self_addr`, `partner_addrs`, `bind_addr`,
/// `password`, the timeouts) and pgpilot's `client_port`. Keys that tune pysyncobj's own
/// connections are read and warned about by name.
fn read_raft(r: &mut Reader<'_>) -> RaftConfig {
    let self_addr = r.address("raft.self_addr", true).unwrap_or_default();
    let mut partner_addrs = Vec::new();
    for (i, a) in r
        .string_list("raft.partner_addrs")
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        // a YAML list written as one string keeps its quotes: 'a:1','b:2'
        let a = a.trim().trim_matches(|c| c == '\'' || c == '"').to_string();
        if split_host_port(&a).is_none() {
            r.err(
                &format!("raft.partner_addrs[{i}]"),
                format!("{a:?} is not host:port"),
            );
        } else if a != self_addr {
            partner_addrs.push(a);
        }
    }
    if partner_addrs.is_empty() && !self_addr.is_empty() {
        r.err(
            "raft.partner_addrs",
            "is empty: list the other members' self_addr (a member without partners would form a group of its own and lead its own cluster)",
        );
    }
    let data_dir = PathBuf::from(r.required_string("raft.data_dir"));
    let bind_addr = r.string("raft.bind_addr");
    let password = r.string("raft.password").map(Secret);
    match password.as_ref().map(|p| p.expose().chars().count()) {
        Some(0) => r.err(
            "raft.password",
            "is empty: the members' TLS is derived from it; set a long random one, or remove the key",
        ),
        Some(n) if n < 16 => r.notes.push(ConfigIssue {
            key: "raft.password".into(),
            message: format!(
                "has {n} characters: whoever reaches a peer port can test guesses offline against the members' CA; use 16 or more random characters"
            ),
        }),
        _ => {}
    }
    let peer_port = split_host_port(&self_addr).map(|(_, p)| p).unwrap_or(0);
    let client_port = match r.integer("raft.client_port") {
        Some(p) => u16::try_from(p).ok().filter(|p| *p > 0).unwrap_or_else(|| {
            r.err("raft.client_port", format!("{p} is not a TCP port"));
            0
        }),
        None => peer_port.checked_add(1).unwrap_or_else(|| {
            r.err(
                "raft.client_port",
                "is required when raft.self_addr's port is 65535 (the default is that port + 1)",
            );
            0
        }),
    };
    let ms = |r: &mut Reader<'_>, key: &str| -> Option<u64> {
        let v = r.get(key)?;
        let secs = match v {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse::<f64>().ok(),
            _ => None,
        };
        match secs {
            Some(s) if s.is_finite() && s > 0.0 && s <= 60.0 => Some((s * 1000.0).round() as u64),
            _ => {
                r.err(
                    key,
                    format!("expected seconds between 0 and 60, found {}", describe(v)),
                );
                None
            }
        }
    };
    let election_ms = ms(r, "raft.max_timeout");
    let heartbeat_ms = ms(r, "raft.append_entries_period");
    if r.get("raft.min_timeout").is_some() {
        r.notes.push(ConfigIssue {
            key: "raft.min_timeout".into(),
            message: "not used: the etcd member randomizes its election timeout between raft.max_timeout and twice it".into(),
        });
    }
    for key in [
        "connection_timeout",
        "connection_retry_time",
        "leader_fallback_timeout",
    ] {
        if r.get(&format!("raft.{key}")).is_some() {
            r.notes.push(ConfigIssue {
                key: format!("raft.{key}"),
                message: "not used: it tunes Patroni's Raft library; the etcd member manages its peer connections itself".into(),
            });
        }
    }
    if let (Some(e), Some(h)) = (election_ms, heartbeat_ms)
        && e < h.saturating_mul(5)
    {
        r.err(
            "raft.max_timeout",
            format!("{e} ms must be at least five times raft.append_entries_period ({h} ms), or elections would start between heartbeats"),
        );
    }
    let file = |r: &mut Reader<'_>, k: &str| r.string(&format!("raft.{k}")).map(PathBuf::from);
    let tls = match (file(r, "cacert"), file(r, "cert"), file(r, "key")) {
        (None, None, None) => None,
        (Some(cacert), Some(cert), Some(key)) => Some(RaftTls { cacert, cert, key }),
        (ca, cert, key) => {
            for (k, v) in [
                ("cacert", ca.is_none()),
                ("cert", cert.is_none()),
                ("key", key.is_none()),
            ] {
                if v {
                    r.err(
                        &format!("raft.{k}"),
                        "is required with the other TLS files of raft (cacert, cert, key): the members' TLS is mutual",
                    );
                }
            }
            None
        }
    };
    RaftConfig {
        data_dir,
        self_addr,
        partner_addrs,
        bind_addr,
        password,
        client_port,
        election_ms,
        heartbeat_ms,
        tls,
    }
}

/// A loaded configuration plus the raw tree (for `/config`-style merges and debugging).
impl Config {
    /// Loads a config the way `patroni CONFIG_FILE` does: the file (or directory of YAML files)
    /// overlaid with `PATRONI_*` variables; without a file, `PATRONI_CONFIGURATION` alone; without
    /// either, the variables alone.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = env.into_iter().collect();
        let (tree, origin) = match path {
            Some(p) => {
                let mut tree = read_path(p)?;
                apply_env(&mut tree, &env);
                (tree, p.display().to_string())
            }
            None => match env.iter().find(|(k, _)| k == "PATRONI_CONFIGURATION") {
                Some((_, text)) => (
                    parse_yaml(text, "PATRONI_CONFIGURATION")?,
                    "PATRONI_CONFIGURATION".to_string(),
                ),
                None => {
                    let mut tree = Map::new();
                    apply_env(&mut tree, &env);
                    if tree.is_empty() {
                        return Err(ConfigError::Missing);
                    }
                    (tree, "environment".to_string())
                }
            },
        };
        Config::from_tree(&tree, origin)
    }

    /// Parses YAML text (as from a file) without environment overlay.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let tree = parse_yaml(text, origin)?;
        Config::from_tree(&tree, origin.to_string())
    }

    /// Validates a parsed tree into a typed config, collecting every problem.
    pub fn from_tree(tree: &Map<String, Value>, origin: String) -> Result<Config, ConfigError> {
        let mut r = Reader::new(tree);
        let config = read_config(&mut r, origin);
        if r.errors.is_empty() {
            let mut config = config;
            let mut warnings = r.notes.clone();
            warnings.extend(r.unknown_keys());
            config.warnings = warnings;
            Ok(config)
        } else {
            Err(ConfigError::Invalid(r.errors))
        }
    }

    /// Checks that the binaries and directories this config points at are usable; problems are
    /// returned with their key (used by `--validate-config` and at agent start).
    pub fn check_environment(&self) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        if let Some(dir) = &self.postgresql.bin_dir
            && !dir.is_dir()
        {
            issues.push(ConfigIssue {
                key: "postgresql.bin_dir".into(),
                message: format!("{} is not a directory", dir.display()),
            });
        }
        for bin in [
            "pg_ctl",
            "initdb",
            "pg_basebackup",
            "pg_controldata",
            "postgres",
        ] {
            let path = self.postgresql.binary(bin);
            let found = if path.is_absolute() || path.components().count() > 1 {
                path.is_file()
            } else {
                std::env::var_os("PATH")
                    .map(|p| std::env::split_paths(&p).any(|d| d.join(&path).is_file()))
                    .unwrap_or(false)
            };
            if !found {
                let key = if self.postgresql.bin_dir.is_some() {
                    "postgresql.bin_dir"
                } else {
                    "postgresql.bin_dir (unset, searched PATH)"
                };
                issues.push(ConfigIssue {
                    key: key.into(),
                    message: format!("{bin} not found at {}", path.display()),
                });
                break;
            }
        }
        if let Some(parent) = self.missing_data_dir_parent()
            && parent.exists()
        {
            issues.push(ConfigIssue {
                key: "postgresql.data_dir".into(),
                message: format!("{} is not a directory", parent.display()),
            });
        }
        issues
    }

    /// The data directory's parent when it is not a directory yet: the agent creates it (and
    /// what is missing above it) at start, mode 0700, as Patroni does.
    pub fn missing_data_dir_parent(&self) -> Option<&std::path::Path> {
        self.postgresql
            .data_dir
            .parent()
            .filter(|p| !p.as_os_str().is_empty() && !p.is_dir())
    }

    /// The DCS key prefix `/<namespace>/<scope>/`, with repeated slashes collapsed.
    pub fn key_prefix(&self) -> String {
        crate::dcs::keys::cluster_prefix(&self.namespace, &self.scope)
    }
}

/// What the console needs from a configuration: where etcd is, the namespace, optionally one
/// scope, and REST credentials (`ctl.authentication`, else `restapi.authentication`). Any Patroni
/// YAML works (its other sections are ignored), as does a small file with just these keys.
#[derive(Debug, Clone, Default)]
pub struct ConsoleConfig {
    pub etcd: EtcdConfig,
    pub namespace: String,
    /// `scope`: the cluster commands act on by default; `None` = every cluster of the namespace.
    pub scope: Option<String>,
    pub rest_auth: Option<BasicAuth>,
    /// How the members' REST certificates are checked.
    pub rest_tls: RestClientTls,
    pub origin: String,
}

impl ConsoleConfig {
    /// Replaces the etcd endpoints (`--etcd`); each must be `host:port`.
    pub fn set_etcd_hosts(&mut self, hosts: &[String]) -> Result<(), ConfigIssue> {
        for h in hosts {
            let bare = h.split("://").last().unwrap_or(h).trim_end_matches('/');
            if split_host_port(bare).is_none() {
                return Err(ConfigIssue {
                    key: "--etcd".into(),
                    message: format!("{h:?} is not host:port"),
                });
            }
        }
        self.etcd.hosts = hosts.to_vec();
        Ok(())
    }

    /// Reads a file (or directory of YAML files) overlaid with `PATRONI_*` variables, or the
    /// variables alone when `path` is `None`.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<ConsoleConfig, ConfigError> {
        let env: Vec<(String, String)> = env.into_iter().collect();
        let (mut tree, origin) = match path {
            Some(p) => (read_path(p)?, p.display().to_string()),
            None => (Map::new(), "environment".to_string()),
        };
        apply_env(&mut tree, &env);
        ConsoleConfig::from_tree(&tree, origin)
    }

    /// Parses YAML text without environment overlay.
    pub fn from_yaml(text: &str, origin: &str) -> Result<ConsoleConfig, ConfigError> {
        let tree = parse_yaml(text, origin)?;
        ConsoleConfig::from_tree(&tree, origin.to_string())
    }

    fn from_tree(tree: &Map<String, Value>, origin: String) -> Result<ConsoleConfig, ConfigError> {
        let mut r = Reader::new(tree);
        let namespace = r.string("namespace").unwrap_or_else(|| "/service".into());
        let scope = r.string("scope");
        let etcd = if r.get("etcd3").is_some() {
            read_etcd(&mut r, "etcd3")
        } else if r.get("etcd").is_some() {
            read_etcd(&mut r, "etcd")
        } else if r.get("raft").is_some() {
            // a member's YAML of a raft: cluster: its etcd member's local client port
            read_raft(&mut r).etcd()
        } else {
            EtcdConfig {
                protocol: "http".into(),
                ..Default::default()
            }
        };
        let rest_auth = r
            .basic_auth("ctl.authentication")
            .or_else(|| r.basic_auth("restapi.authentication"));
        let rest_tls = read_rest_client_tls(&mut r);
        if r.errors.is_empty() {
            Ok(ConsoleConfig {
                etcd,
                namespace,
                scope,
                rest_auth,
                rest_tls,
                origin,
            })
        } else {
            Err(ConfigError::Invalid(r.errors))
        }
    }
}

fn read_path(path: &Path) -> Result<Map<String, Value>, ConfigError> {
    let io = |source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    };
    if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(io)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && matches!(p.extension().and_then(|e| e.to_str()), Some("yml" | "yaml"))
            })
            .collect();
        files.sort();
        let mut tree = Map::new();
        for f in files {
            let text = std::fs::read_to_string(&f).map_err(|source| ConfigError::Io {
                path: f.clone(),
                source,
            })?;
            let part = parse_yaml(&text, &f.display().to_string())?;
            deep_merge(&mut tree, part);
        }
        Ok(tree)
    } else {
        let text = std::fs::read_to_string(path).map_err(io)?;
        parse_yaml(&text, &path.display().to_string())
    }
}

/// Parses YAML into a JSON tree; YAML 1.1 booleans (`on`, `yes`) become booleans, as in Patroni.
pub fn parse_yaml(text: &str, origin: &str) -> Result<Map<String, Value>, ConfigError> {
    if text.trim().is_empty() {
        return Ok(Map::new());
    }
    let value: Value = serde_saphyr::from_str(text).map_err(|e| ConfigError::Yaml {
        origin: origin.to_string(),
        message: e.to_string(),
    })?;
    match value {
        Value::Object(m) => Ok(m),
        Value::Null => Ok(Map::new()),
        _ => Err(ConfigError::NotAMapping {
            origin: origin.to_string(),
        }),
    }
}

/// Merges `other` into `base`: mappings merge key by key, anything else replaces.
pub fn deep_merge(base: &mut Map<String, Value>, other: Map<String, Value>) {
    for (k, v) in other {
        match (base.get_mut(&k), v) {
            (Some(Value::Object(b)), Value::Object(o)) => deep_merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

fn set_path(tree: &mut Map<String, Value>, path: &[&str], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut node = tree;
    for p in parents {
        let entry = node
            .entry(p.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        let Value::Object(m) = entry else { return };
        node = m;
    }
    node.insert(last.to_string(), value);
}

/// Overlays `PATRONI_*` variables onto the tree, using Patroni's variable names.
fn apply_env(tree: &mut Map<String, Value>, env: &[(String, String)]) {
    const PG_KEYS: [&str; 7] = [
        "LISTEN",
        "CONNECT_ADDRESS",
        "PROXY_ADDRESS",
        "CONFIG_DIR",
        "DATA_DIR",
        "PGPASS",
        "BIN_DIR",
    ];
    const AUTH_FIELDS: [&str; 12] = [
        "USERNAME",
        "PASSWORD",
        "SSLMODE",
        "SSLCERT",
        "SSLKEY",
        "SSLPASSWORD",
        "SSLROOTCERT",
        "SSLCRL",
        "SSLCRLDIR",
        "GSSENCMODE",
        "CHANNEL_BINDING",
        "SSLNEGOTIATION",
    ];
    for (key, val) in env {
        let Some(rest) = key.strip_prefix("PATRONI_") else {
            continue;
        };
        let s = Value::String(val.clone());
        let lower = |x: &str| x.to_ascii_lowercase();
        match rest {
            "NAME" | "NAMESPACE" | "SCOPE" => set_path(tree, &[&lower(rest)], s),
            "CONFIGURATION" | "THREAD_POOL_SIZE" | "THREAD_STACK_SIZE" => {}
            _ => {
                if let Some(k) = rest.strip_prefix("RESTAPI_") {
                    match k {
                        "USERNAME" | "PASSWORD" => {
                            set_path(tree, &["restapi", "authentication", &lower(k)], s)
                        }
                        _ => set_path(tree, &["restapi", &lower(k)], s),
                    }
                } else if let Some(k) = rest.strip_prefix("CTL_") {
                    match k {
                        "USERNAME" | "PASSWORD" => {
                            set_path(tree, &["ctl", "authentication", &lower(k)], s)
                        }
                        _ => set_path(tree, &["ctl", &lower(k)], s),
                    }
                } else if let Some(k) = rest.strip_prefix("POSTGRESQL_BIN_") {
                    set_path(tree, &["postgresql", "bin_name", &lower(k)], s)
                } else if let Some(k) = rest.strip_prefix("POSTGRESQL_") {
                    if PG_KEYS.contains(&k) {
                        set_path(tree, &["postgresql", &lower(k)], s)
                    }
                } else if let Some(k) = rest.strip_prefix("LOG_") {
                    set_path(tree, &["log", &lower(k)], s)
                } else if let Some(k) = rest.strip_prefix("ETCD3_") {
                    set_path(tree, &["etcd3", &lower(k)], env_dcs_value(k, val))
                } else if let Some(k) = rest.strip_prefix("ETCD_") {
                    set_path(tree, &["etcd", &lower(k)], env_dcs_value(k, val))
                } else if let Some(k) = rest.strip_prefix("RAFT_") {
                    if RAFT_KEYS.contains(&k) {
                        let v = if k == "PARTNER_ADDRS" {
                            env_list(val)
                        } else {
                            s
                        };
                        set_path(tree, &["raft", &lower(k)], v)
                    }
                } else {
                    for role in ["SUPERUSER", "REPLICATION", "REWIND"] {
                        if let Some(field) =
                            rest.strip_prefix(role).and_then(|r| r.strip_prefix('_'))
                            && AUTH_FIELDS.contains(&field)
                        {
                            set_path(
                                tree,
                                &["postgresql", "authentication", &lower(role), &lower(field)],
                                s.clone(),
                            );
                        }
                    }
                }
            }
        }
    }
}

/// The `raft` keys `PATRONI_RAFT_*` set.
const RAFT_KEYS: [&str; 15] = [
    "CACERT",
    "CERT",
    "KEY",
    "DATA_DIR",
    "SELF_ADDR",
    "PARTNER_ADDRS",
    "PASSWORD",
    "BIND_ADDR",
    "CLIENT_PORT",
    "MIN_TIMEOUT",
    "MAX_TIMEOUT",
    "CONNECTION_TIMEOUT",
    "APPEND_ENTRIES_PERIOD",
    "CONNECTION_RETRY_TIME",
    "LEADER_FALLBACK_TIMEOUT",
];

/// A list in a variable, as Patroni reads one: YAML (`['a:1', 'b:2']`, `- a`), else
/// comma-separated (`'a:1','b:2'`, `a:1,b:2`).
fn env_list(val: &str) -> Value {
    let t = val.trim();
    if (t.starts_with('[') || t.starts_with('-'))
        && let Ok(v @ Value::Array(_)) = serde_saphyr::from_str::<Value>(t)
    {
        return v;
    }
    Value::Array(
        t.split(',')
            .map(|p| p.trim().trim_matches(|c| c == '\'' || c == '"').to_string())
            .filter(|p| !p.is_empty())
            .map(Value::String)
            .collect(),
    )
}

/// `PATRONI_ETCD3_HOSTS` may be a YAML list or a comma-separated string.
fn env_dcs_value(key: &str, val: &str) -> Value {
    if key == "HOSTS"
        && val.trim_start().starts_with('[')
        && let Ok(v @ Value::Array(_)) = serde_saphyr::from_str::<Value>(val)
    {
        return v;
    }
    Value::String(val.to_string())
}

/// Parses a boolean the way YAML 1.1 and Patroni do.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "on" | "yes" | "y" | "1" => Some(true),
        "false" | "off" | "no" | "n" | "0" => Some(false),
        _ => None,
    }
}

/// Splits `host:port` (IPv6 may be bracketed).
pub fn split_host_port(s: &str) -> Option<(String, u16)> {
    let s = s.trim();
    if let Some(rest) = s.strip_prefix('[') {
        let (host, port) = rest.split_once("]:")?;
        return Some((host.to_string(), port.parse().ok()?));
    }
    let (host, port) = s.rsplit_once(':')?;
    Some((host.to_string(), port.parse().ok()?))
}

/// Reads typed values out of the tree, recording each key it looks at and each problem found.
struct Reader<'a> {
    tree: &'a Map<String, Value>,
    seen: Vec<String>,
    /// Sections whose children are free-form (no unknown-key warnings below them).
    open: Vec<String>,
    errors: Vec<ConfigIssue>,
    /// Warnings other than unknown keys.
    notes: Vec<ConfigIssue>,
}

impl<'a> Reader<'a> {
    fn new(tree: &'a Map<String, Value>) -> Self {
        Reader {
            tree,
            seen: Vec::new(),
            open: Vec::new(),
            errors: Vec::new(),
            notes: Vec::new(),
        }
    }

    fn get(&mut self, key: &str) -> Option<&'a Value> {
        self.seen.push(key.to_string());
        let mut node: &'a Value = self.tree.get(key.split('.').next()?)?;
        for part in key.split('.').skip(1) {
            node = node.as_object()?.get(part)?;
        }
        if node.is_null() { None } else { Some(node) }
    }

    fn err(&mut self, key: &str, message: impl Into<String>) {
        self.errors.push(ConfigIssue {
            key: key.to_string(),
            message: message.into(),
        });
    }

    fn string(&mut self, key: &str) -> Option<String> {
        match self.get(key)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            other => {
                self.err(key, format!("expected a string, found {}", kind(other)));
                None
            }
        }
    }

    fn required_string(&mut self, key: &str) -> String {
        match self.string(key) {
            Some(s) if !s.trim().is_empty() => s,
            Some(_) => {
                self.err(key, "must not be empty");
                String::new()
            }
            None => {
                if !self.errors.iter().any(|e| e.key == key) {
                    self.err(key, "is required");
                }
                String::new()
            }
        }
    }

    fn address(&mut self, key: &str, required: bool) -> Option<String> {
        let s = if required {
            Some(self.required_string(key)).filter(|s| !s.is_empty())
        } else {
            self.string(key)
        }?;
        if split_host_port(&s).is_none() {
            self.err(key, format!("{s:?} is not host:port"));
        }
        Some(s)
    }

    fn boolean(&mut self, key: &str) -> Option<bool> {
        match self.get(key)? {
            Value::Bool(b) => Some(*b),
            Value::String(s) => parse_bool(s).or_else(|| {
                self.err(key, format!("expected true or false, found {s:?}"));
                None
            }),
            Value::Number(n) if n.as_i64() == Some(0) || n.as_i64() == Some(1) => {
                Some(n.as_i64() == Some(1))
            }
            other => {
                self.err(
                    key,
                    format!("expected true or false, found {}", kind(other)),
                );
                None
            }
        }
    }

    fn integer(&mut self, key: &str) -> Option<i64> {
        match self.get(key)? {
            Value::Number(n) if n.is_i64() => n.as_i64(),
            Value::String(s) if s.trim().parse::<i64>().is_ok() => s.trim().parse().ok(),
            other => {
                self.err(
                    key,
                    format!("expected an integer, found {}", describe(other)),
                );
                None
            }
        }
    }

    fn map(&mut self, key: &str) -> Option<&'a Map<String, Value>> {
        match self.get(key)? {
            Value::Object(m) => Some(m),
            other => {
                self.err(key, format!("expected a mapping, found {}", kind(other)));
                None
            }
        }
    }

    /// A mapping of HTTP header names to values; a name or value HTTP does not allow is an
    /// error naming it.
    fn headers(&mut self, key: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (name, value) in self.open_map(key) {
            let at = format!("{key}.{name}");
            let value = match value {
                Value::String(s) => s,
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                other => {
                    self.err(&at, format!("expected a string, found {}", kind(&other)));
                    continue;
                }
            };
            let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
            // headers that frame the answer or the connection are the server's own
            const FRAMING: &[&str] = &[
                "content-length",
                "transfer-encoding",
                "connection",
                "keep-alive",
                "upgrade",
                "te",
                "trailer",
                "proxy-connection",
            ];
            if name.is_empty() || !name.chars().all(token) {
                self.err(&at, "is not an HTTP header name");
            } else if FRAMING.contains(&name.to_ascii_lowercase().as_str()) {
                self.err(
                    &at,
                    "frames the HTTP answer or connection: the server sets it itself",
                );
            } else if !value.chars().all(|c| c == '\t' || (' '..='~').contains(&c)) {
                self.err(
                    &at,
                    "an HTTP header value holds printable ASCII only (no line breaks)",
                );
            } else {
                out.push((name, value));
            }
        }
        out
    }

    fn open_map(&mut self, key: &str) -> Map<String, Value> {
        self.open.push(key.to_string());
        self.map(key).cloned().unwrap_or_default()
    }

    fn string_list(&mut self, key: &str) -> Option<Vec<String>> {
        match self.get(key)? {
            Value::Array(items) => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::String(s) => out.push(s.clone()),
                        Value::Number(n) => out.push(n.to_string()),
                        other => self.err(
                            &format!("{key}[{i}]"),
                            format!("expected a string, found {}", kind(other)),
                        ),
                    }
                }
                Some(out)
            }
            Value::String(s) => Some(
                s.split(',')
                    .map(|p| p.trim().to_string())
                    .filter(|p| !p.is_empty())
                    .collect(),
            ),
            other => {
                self.err(key, format!("expected a list, found {}", kind(other)));
                None
            }
        }
    }

    fn pg_user(&mut self, key: &str, required: bool) -> Option<PgUser> {
        if self.get(key).is_none() {
            if required {
                self.err(key, "is required (username and password of this role)");
            }
            return None;
        }
        let section = self.map(key)?;
        let username = self.required_string(&format!("{key}.username"));
        let password = self.string(&format!("{key}.password")).map(Secret);
        let mut options = Vec::new();
        for opt in [
            "sslmode",
            "sslcert",
            "sslkey",
            "sslrootcert",
            "sslcrl",
            "sslcrldir",
            "gssencmode",
            "channel_binding",
            "sslnegotiation",
        ] {
            if section.contains_key(opt)
                && let Some(v) = self.string(&format!("{key}.{opt}"))
            {
                options.push((opt.to_string(), v));
            }
        }
        let sslpassword = self.string(&format!("{key}.sslpassword")).map(Secret);
        Some(PgUser {
            username,
            password,
            options,
            sslpassword,
        })
    }

    fn basic_auth(&mut self, key: &str) -> Option<BasicAuth> {
        self.get(key)?;
        self.map(key)?;
        let username = self.required_string(&format!("{key}.username"));
        let password = self.required_string(&format!("{key}.password"));
        Some(BasicAuth {
            username,
            password: Secret(password),
        })
    }

    /// Every key present in the tree that no reader asked for, outside free-form sections.
    fn unknown_keys(&self) -> Vec<ConfigIssue> {
        let mut out = Vec::new();
        let mut stack: Vec<(String, &Value)> =
            self.tree.iter().map(|(k, v)| (k.clone(), v)).collect();
        while let Some((path, value)) = stack.pop() {
            if self
                .open
                .iter()
                .any(|o| path == *o || path.starts_with(&format!("{o}.")))
            {
                continue;
            }
            let known = self.seen.iter().any(|s| s == &path);
            let parent_of_known = self.seen.iter().any(|s| s.starts_with(&format!("{path}.")));
            if !known && !parent_of_known {
                out.push(ConfigIssue {
                    key: path,
                    message: "unknown key, ignored".into(),
                });
                continue;
            }
            if let Value::Object(m) = value
                && parent_of_known
            {
                for (k, v) in m {
                    stack.push((format!("{path}.{k}"), v));
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        other => kind(other).to_string(),
    }
}

/// Keys Patroni understands that pgpilot handles elsewhere (refused with a reason when they ask
/// for something pgpilot does not do), so they are not reported as unknown.
const CHECKED_KEYS: &[&str] = &[
    "restapi.keyfile_password",
    "restapi.verify_client",
    "bootstrap.method",
];

/// Keys Patroni understands that pgpilot does not act on: each present one is a warning saying
/// what that means for the operator.
const IGNORED_KEYS: &[(&str, &str)] = &[
    (
        "thread_pool_size",
        "pgpilot's HTTP server needs no thread pool: ignored",
    ),
    (
        "restapi.ciphers",
        "pgpilot's TLS (rustls) offers only TLS 1.2 and 1.3 suites with forward secrecy and authenticated encryption (ECDHE with AES-GCM or ChaCha20-Poly1305), what a cipher list is set for: ignored",
    ),
    (
        "restapi.request_queue_size",
        "not used by pgpilot's HTTP server: ignored",
    ),
    (
        "restapi.thread_pool_size",
        "not used by pgpilot's HTTP server: ignored",
    ),
    (
        "restapi.server_tokens",
        "pgpilot sends no Server header: ignored",
    ),
    (
        "etcd3.use_proxies",
        "not supported: list the etcd members in etcd3.hosts",
    ),
    (
        "etcd3.srv",
        "DNS SRV discovery is not supported: list the etcd members in etcd3.hosts",
    ),
    (
        "etcd3.srv_suffix",
        "DNS SRV discovery is not supported: ignored",
    ),
    (
        "etcd3.proxy",
        "not supported: list the etcd members in etcd3.hosts",
    ),
    (
        "bootstrap.users",
        "not created by pgpilot (Patroni dropped it too): create them in bootstrap.post_bootstrap",
    ),
    (
        "postgresql.pg_ident",
        "pg_ident.conf is not written by pgpilot: ignored",
    ),
    (
        "postgresql.custom_conf",
        "not used: pgpilot includes the original postgresql.conf as postgresql.base.conf",
    ),
    ("postgresql.rewind", "not used by pgpilot: ignored"),
    ("postgresql.pre_promote", "not run by pgpilot: ignored"),
    ("postgresql.before_stop", "not run by pgpilot: ignored"),
    (
        "postgresql.use_unix_socket_repl",
        "replication connects over TCP: ignored",
    ),
    (
        "log.format",
        "pgpilot's log lines have their own format (log.type: json for JSON): ignored",
    ),
    ("log.dateformat", "ignored (log lines carry RFC 3339 times)"),
    ("log.traceback_level", "ignored"),
    ("log.static_fields", "ignored"),
    ("log.max_queue_size", "ignored"),
    (
        "log.dir",
        "pgpilot logs to stderr (the journal under systemd): log.dir is ignored",
    ),
    ("log.mode", "ignored (pgpilot writes no log files)"),
    ("log.file_num", "ignored (pgpilot writes no log files)"),
    ("log.file_size", "ignored (pgpilot writes no log files)"),
    (
        "log.loggers",
        "use PGPILOT_LOG (e.g. agent=debug,info) for per-module levels: ignored",
    ),
    (
        "log.deduplicate_heartbeat_logs",
        "pgpilot logs only changes of decision: ignored",
    ),
];

const OPEN_SECTIONS: &[&str] = &["ctl.authentication"];

/// How pgpilot treats a key of the dynamic configuration (`bootstrap.dcs`, the `config` key)
/// that it does not simply apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoteLevel {
    /// Accepted, but pgpilot does not do what the key asks: the message says what it does.
    Warning,
    /// pgpilot cannot run the cluster the way the key asks: the configuration is refused.
    Refusal,
}

/// One key of a dynamic configuration that is warned about or refused, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyNote {
    /// The dotted key inside the dynamic configuration (`slots`, `postgresql.pg_ident`).
    pub key: String,
    pub level: NoteLevel,
    pub message: String,
}

impl fmt::Display for KeyNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Keys of the dynamic configuration that pgpilot applies as Patroni does (`postgresql` is
/// looked into by [`dynamic_key_notes`]).
/// `ignore_slots` names slots that the slot cleanup leaves alone.
const DYNAMIC_KEYS: &[&str] = &[
    "ttl",
    "loop_wait",
    "retry_timeout",
    "maximum_lag_on_failover",
    "primary_start_timeout",
    "master_start_timeout",
    "member_slots_ttl",
    "check_timeline",
    "synchronous_mode",
    "synchronous_mode_strict",
    "synchronous_node_count",
    "failsafe_mode",
    "pause",
    "ignore_slots",
];

/// Keys of the dynamic configuration's `postgresql` section that pgpilot applies.
const DYNAMIC_POSTGRESQL_KEYS: &[&str] = &["parameters", "pg_hba", "use_pg_rewind", "use_slots"];

/// Whether a numeric setting asks for something: above 0 (0 and negative values mean "off" to
/// Patroni). A value that is not a number counts as set (its type is refused elsewhere).
fn positive(v: &Value) -> bool {
    let n = match v {
        Value::Null => return false,
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    n.is_none_or(|n| n > 0.0)
}

/// Whether a value holds anything: not null, not an empty string, list or mapping, and not a
/// mapping of only such values.
fn has_content(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::String(s) => !s.trim().is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(m) => m.values().any(has_content),
        Value::Bool(_) | Value::Number(_) => true,
    }
}

/// What makes a `standby_cluster` section unusable: not a mapping, or a `port` that is no
/// port number. An absent or empty section asks for nothing.
fn standby_cluster_problem(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::Object(m) if ["host", "restore_command", "primary_slot_name", "archive_cleanup_command"]
            .iter()
            .any(|k| m.get(*k).is_some_and(|v| !v.is_null() && !v.is_string())) =>
        {
            Some("standby_cluster: host, restore_command, primary_slot_name and archive_cleanup_command are strings".into())
        }
        Value::Object(m) => match m.get("port") {
            None | Some(Value::Null) => None,
            Some(Value::String(p)) if p.trim().is_empty() => None,
            Some(p) => {
                let port = match p {
                    Value::Number(n) => n.as_u64(),
                    Value::String(s) => s.trim().parse().ok(),
                    _ => None,
                };
                port.filter(|p| (1..=65535).contains(p))
                    .is_none()
                    .then(|| format!("standby_cluster.port {p} is not a port number"))
            }
        },
        other => has_content(other).then(|| "standby_cluster must be a mapping".to_string()),
    }
}

/// The keys of a dynamic configuration (`bootstrap.dcs` or the `config` key in etcd) that
/// pgpilot warns about or refuses, each with what that means; keys it applies give nothing.
/// A refusal means the configuration must not be used (the agent keeps the last good one); a
/// warning is logged once. Types and ranges of the applied keys are checked by
/// [`crate::dcs::DynamicConfig::check_bootstrap`], not here.
pub fn dynamic_key_notes(raw: &Map<String, Value>) -> Vec<KeyNote> {
    let mut notes = Vec::new();
    if let Some(adjusted) = (crate::dcs::DynamicConfig { raw: raw.clone() }).timing_adjustment() {
        notes.push(KeyNote {
            key: "ttl".into(),
            level: NoteLevel::Warning,
            message: adjusted,
        });
    }
    let mut note = |key: &str, level: NoteLevel, message: &str| {
        notes.push(KeyNote {
            key: key.to_string(),
            level,
            message: message.to_string(),
        })
    };
    for (key, value) in raw {
        match key.as_str() {
            k if DYNAMIC_KEYS.contains(&k) => {}
            "standby_cluster" => {
                if let Some(why) = standby_cluster_problem(value) {
                    note(key, NoteLevel::Refusal, &why);
                }
            }
            "slots" | "permanent_slots" | "permanent_replication_slots" => {
                let one = crate::dcs::DynamicConfig {
                    raw: Map::from_iter([("slots".to_string(), value.clone())]),
                };
                for (name, why) in one.permanent_slot_problems() {
                    note(
                        &format!("{key}.{name}"),
                        NoteLevel::Warning,
                        &format!("{why}: this slot is left out"),
                    );
                }
            }
            "primary_stop_timeout" | "master_stop_timeout" if positive(value) => note(
                key,
                NoteLevel::Warning,
                "ignored: pgpilot stops PostgreSQL with a fast shutdown that may take up to postgresql.pg_ctl_timeout, then an immediate one if it is still running",
            ),
            "max_timelines_history" if positive(value) => note(
                key,
                NoteLevel::Warning,
                "ignored: the history key keeps every timeline of PostgreSQL's timeline history",
            ),
            "maximum_lag_on_syncnode"
            | "primary_stop_timeout"
            | "master_stop_timeout"
            | "max_timelines_history" => {}
            "postgresql" => {
                // a postgresql that is not a mapping is refused by the type checks
                for (sub, v) in value.as_object().into_iter().flatten() {
                    let dotted = format!("postgresql.{sub}");
                    match sub.as_str() {
                        s if DYNAMIC_POSTGRESQL_KEYS.contains(&s) => {}
                        "pg_ident" if has_content(v) => note(
                            &dotted,
                            NoteLevel::Warning,
                            "pg_ident.conf is not written by pgpilot: ignored",
                        ),
                        // replica methods, their sections, and replicas' recovery settings
                        // (the member's own YAML wins over them)
                        "recovery_conf" | "create_replica_methods" | "create_replica_method" => {}
                        _ if v.get("command").is_some_and(Value::is_string) => {}
                        "pg_ident" => {}
                        _ => note(
                            &dotted,
                            NoteLevel::Warning,
                            "not a dynamic configuration key pgpilot knows: ignored",
                        ),
                    }
                }
            }
            _ => note(
                key,
                NoteLevel::Warning,
                "not a dynamic configuration key pgpilot knows: ignored",
            ),
        }
    }
    notes
}

/// `watchdog.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchdogMode {
    Off,
    /// Use a watchdog device when one can be opened.
    Automatic,
    /// Refuse leadership without a working watchdog device.
    Required,
}

/// The `watchdog` section, as Patroni reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchdogConfig {
    pub mode: WatchdogMode,
    pub device: PathBuf,
    /// Seconds between the watchdog firing and the leader lease ending; -1 = half the ttl.
    pub safety_margin: i64,
    /// `testing`: timeout requests are written to the device as text (`Ctimeout=N`) instead of
    /// ioctls, so that a named pipe or file can stand in for a device in tests.
    pub testing: bool,
}

impl Default for WatchdogConfig {
    fn default() -> Self {
        WatchdogConfig {
            mode: WatchdogMode::Automatic,
            device: PathBuf::from("/dev/watchdog"),
            safety_margin: 5,
            testing: false,
        }
    }
}

impl WatchdogConfig {
    /// The timeout to program for a leader lease of `ttl` seconds.
    pub fn timeout(&self, ttl: u64) -> u64 {
        if self.safety_margin < 0 {
            ttl / 2
        } else {
            ttl.saturating_sub(self.safety_margin as u64)
        }
    }
}

fn read_watchdog(r: &mut Reader<'_>) -> WatchdogConfig {
    let mut w = WatchdogConfig::default();
    match r.get("watchdog.mode") {
        None => {}
        Some(Value::Bool(false)) => w.mode = WatchdogMode::Off,
        Some(Value::String(s)) => match s.trim().to_lowercase().as_str() {
            "off" | "disable" | "disabled" | "false" => w.mode = WatchdogMode::Off,
            "automatic" | "auto" => w.mode = WatchdogMode::Automatic,
            "required" | "require" => w.mode = WatchdogMode::Required,
            other => r.err(
                "watchdog.mode",
                format!("{other:?} is not a mode: use off, automatic or required"),
            ),
        },
        Some(other) => r.err(
            "watchdog.mode",
            format!("expected off, automatic or required, found {}", kind(other)),
        ),
    }
    if let Some(d) = r.string("watchdog.device") {
        w.device = PathBuf::from(d);
    }
    if let Some(m) = r.integer("watchdog.safety_margin") {
        if m < -1 {
            r.err(
                "watchdog.safety_margin",
                "must be -1 (half the ttl) or more",
            );
        }
        w.safety_margin = m;
    }
    match r.string("watchdog.driver").as_deref() {
        None | Some("default") => {}
        Some("testing") => w.testing = true,
        Some(other) => r.err(
            "watchdog.driver",
            format!("{other:?} is not a driver: use default (Linux) or testing"),
        ),
    }
    w
}

fn read_config(r: &mut Reader<'_>, origin: String) -> Config {
    for k in CHECKED_KEYS {
        r.seen.push((*k).to_string());
    }
    for (k, why) in IGNORED_KEYS {
        r.seen.push((*k).to_string());
        if r.get(k).is_some() {
            r.notes.push(ConfigIssue {
                key: (*k).to_string(),
                message: (*why).to_string(),
            });
        }
    }
    for k in OPEN_SECTIONS {
        r.open.push((*k).to_string());
    }
    let scope = r.required_string("scope");
    let namespace = r.string("namespace").unwrap_or_else(|| "/service".into());
    let name = r.required_string("name");
    if name == "__patroni_strict_sync_replica_placeholder__" {
        r.err(
            "name",
            "this name is reserved by Patroni's synchronous mode",
        );
    }
    if name == crate::dcs::STANDBY_REMOTE {
        r.err(
            "name",
            "this name is reserved: pgpilot calls a standby cluster's remote primary so",
        );
    }

    // REST API
    if r.get("restapi").is_none() {
        r.err("restapi", "is required (listen and connect_address)");
    }
    let restapi = RestApiConfig {
        listen: r.address("restapi.listen", true).unwrap_or_default(),
        connect_address: r
            .address("restapi.connect_address", true)
            .unwrap_or_default(),
        authentication: r.basic_auth("restapi.authentication"),
        certfile: r.string("restapi.certfile"),
        keyfile: r.string("restapi.keyfile"),
        // `PATRONI_RESTAPI_ALLOWLIST` is a YAML list in a string: `[10.0.0.1, 10.0.1.0/24]`
        allowlist: r
            .string_list("restapi.allowlist")
            .unwrap_or_default()
            .into_iter()
            .map(|e| {
                e.trim()
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .trim()
                    .trim_matches(|c| c == '\'' || c == '"')
                    .to_string()
            })
            .filter(|e| !e.is_empty())
            .collect(),
        allowlist_include_members: r
            .boolean("restapi.allowlist_include_members")
            .unwrap_or(false),
        verify_client: match r
            .string("restapi.verify_client")
            .map(|v| v.trim().to_ascii_lowercase())
            .as_deref()
        {
            None | Some("none") => VerifyClient::None,
            Some("optional") => VerifyClient::Optional,
            Some("required") => VerifyClient::Required,
            Some(other) => {
                r.err(
                    "restapi.verify_client",
                    format!("must be none, optional or required, found {other:?}"),
                );
                VerifyClient::None
            }
        },
        cafile: r.string("restapi.cafile"),
        keyfile_password: r.string("restapi.keyfile_password").map(Secret),
        http_extra_headers: r.headers("restapi.http_extra_headers"),
        https_extra_headers: r.headers("restapi.https_extra_headers"),
    };
    if restapi.keyfile.is_some() && restapi.certfile.is_none() {
        r.err(
            "restapi.keyfile",
            "needs restapi.certfile (the certificate)",
        );
    }
    match restapi.verify_client {
        VerifyClient::None => {}
        _ if restapi.certfile.is_none() => r.err(
            "restapi.verify_client",
            "needs restapi.certfile: client certificates are asked for over https only",
        ),
        _ if restapi.cafile.is_none() => r.err(
            "restapi.verify_client",
            "needs restapi.cafile, the CA that signs the client certificates",
        ),
        _ => {}
    }
    let rest_client_tls = read_rest_client_tls(r);
    let ctl_authentication = r.basic_auth("ctl.authentication");

    // DCS
    if r.get("citus").is_some() {
        r.err(
            "citus",
            "Citus clusters are not supported by pgpilot: it would run the coordinator and each worker as unrelated clusters; keep Patroni for Citus",
        );
    }
    for other in ["consul", "zookeeper", "exhibitor", "kubernetes"] {
        if r.get(other).is_some() {
            r.err(
                other,
                "pgpilot stores cluster state in etcd v3 only; use an etcd3 section (or raft: for an etcd member run by each agent)",
            );
        }
    }
    let raft = r.get("raft").is_some().then(|| read_raft(r));
    let etcd = if let Some(raft) = &raft {
        for section in ["etcd3", "etcd"] {
            if r.get(section).is_some() {
                r.err(
                    section,
                    "and raft are both set: with raft the agent runs its own etcd member and uses it; remove one of the two sections",
                );
            }
        }
        raft.etcd()
    } else if r.get("etcd3").is_some() {
        read_etcd(r, "etcd3")
    } else if r.get("etcd").is_some() {
        r.notes.push(ConfigIssue {
            key: "etcd".into(),
            message: "read as etcd3: pgpilot speaks the etcd v3 API only; Patroni members still configured with an etcd (v2) section will not see this cluster's keys".into(),
        });
        read_etcd(r, "etcd")
    } else {
        r.err(
            "etcd3",
            "is required: the etcd v3 endpoints (hosts) that hold cluster state",
        );
        EtcdConfig::default()
    };

    // Bootstrap
    let mut bootstrap = BootstrapConfig {
        dcs: r.open_map("bootstrap.dcs"),
        ..Default::default()
    };
    crate::dcs::DynamicConfig::check_bootstrap(&bootstrap.dcs, |key, msg| {
        r.err(&format!("bootstrap.dcs.{key}"), msg)
    });
    for note in dynamic_key_notes(&bootstrap.dcs) {
        let key = format!("bootstrap.dcs.{}", note.key);
        match note.level {
            NoteLevel::Refusal => r.err(&key, note.message),
            NoteLevel::Warning => r.notes.push(ConfigIssue {
                key,
                message: note.message,
            }),
        }
    }
    if let Some(items) = r.get("bootstrap.initdb") {
        match items {
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    match initdb_option(item) {
                        Ok(opt) => bootstrap.initdb.push(opt),
                        Err(msg) => r.err(&format!("bootstrap.initdb[{i}]"), msg),
                    }
                }
            }
            other => r.err(
                "bootstrap.initdb",
                format!("expected a list of options, found {}", kind(other)),
            ),
        }
    }
    bootstrap.pg_hba = r.string_list("bootstrap.pg_hba").unwrap_or_default();
    bootstrap.post_bootstrap = r
        .string("bootstrap.post_bootstrap")
        .or_else(|| r.string("bootstrap.post_init"));
    if let Some(method) = r.string("bootstrap.method")
        && method != "initdb"
    {
        // Patroni falls back to initdb when the section has no command; pgpilot refuses: a
        // cluster meant to be restored must not start empty
        let key = format!("bootstrap.{method}");
        let section = r.open_map(&key);
        match section.get("command") {
            Some(Value::String(c)) if !c.trim().is_empty() => {
                bootstrap.method = Some((method, section));
            }
            _ => r.err(
                &format!("{key}.command"),
                format!(
                    "bootstrap.method is {method:?}: its section needs a command (the program that restores the data directory)"
                ),
            ),
        }
    }

    // PostgreSQL
    if r.get("postgresql").is_none() {
        r.err(
            "postgresql",
            "is required (listen, connect_address, data_dir, authentication)",
        );
    }
    let pg_listen = r.address("postgresql.listen", true).unwrap_or_default();
    let pg_connect = r
        .address("postgresql.connect_address", true)
        .unwrap_or_default();
    let data_dir = PathBuf::from(r.required_string("postgresql.data_dir"));
    let bin_name = r
        .open_map("postgresql.bin_name")
        .into_iter()
        .filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_string())))
        .collect();
    let pgpass = r
        .string("postgresql.pgpass")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| "/tmp".into());
            home.join("pgpass")
        });
    let superuser = r
        .pg_user("postgresql.authentication.superuser", true)
        .unwrap_or_default();
    let replication = r
        .pg_user("postgresql.authentication.replication", true)
        .unwrap_or_default();
    let rewind = r.pg_user("postgresql.authentication.rewind", false);
    let parameters = r.open_map("postgresql.parameters");
    let pg_ctl_timeout = r.integer("postgresql.pg_ctl_timeout").unwrap_or(60);
    if pg_ctl_timeout <= 0 {
        r.err(
            "postgresql.pg_ctl_timeout",
            "must be a positive number of seconds",
        );
    }
    let basebackup = match r.get("postgresql.basebackup") {
        Some(Value::Array(items)) => {
            let mut out = Vec::new();
            for (i, item) in items.iter().enumerate() {
                match initdb_option(item) {
                    Ok(opt) => out.push(opt),
                    Err(msg) => r.err(&format!("postgresql.basebackup[{i}]"), msg),
                }
            }
            out
        }
        Some(other) => {
            r.err(
                "postgresql.basebackup",
                format!("expected a list of options, found {}", kind(other)),
            );
            Vec::new()
        }
        None => Vec::new(),
    };
    let create_replica_methods = r
        .string_list("postgresql.create_replica_methods")
        .or_else(|| r.string_list("postgresql.create_replica_method"));
    // a method's section: a mapping with a command, or one the method list names
    let mut methods = Map::new();
    if let Some(Value::Object(pg)) = r.tree.get("postgresql") {
        for (name, v) in pg {
            let named = create_replica_methods
                .as_ref()
                .is_some_and(|m| m.contains(name));
            if let Value::Object(section) = v
                && (section.contains_key("command") || named)
                && !matches!(
                    name.as_str(),
                    "parameters" | "authentication" | "callbacks" | "recovery_conf" | "bin_name"
                )
            {
                methods.insert(name.clone(), v.clone());
                r.open.push(format!("postgresql.{name}"));
            }
        }
    }
    for (name, v) in &methods {
        if let Some(c) = v.get("command")
            && !c.is_string()
        {
            r.err(
                &format!("postgresql.{name}.command"),
                "expected the command as a string",
            );
        }
    }
    let recovery_conf = r
        .get("postgresql.recovery_conf")
        .is_some()
        .then(|| r.open_map("postgresql.recovery_conf"));
    let postgresql = PostgresConfig {
        listen: pg_listen,
        connect_address: pg_connect,
        proxy_address: r.string("postgresql.proxy_address"),
        data_dir,
        config_dir: r.string("postgresql.config_dir").map(PathBuf::from),
        bin_dir: r.string("postgresql.bin_dir").map(PathBuf::from),
        bin_name,
        pgpass,
        database: r
            .string("postgresql.database")
            .unwrap_or_else(|| "postgres".into()),
        superuser,
        replication,
        rewind,
        parameters,
        pg_hba: r.string_list("postgresql.pg_hba"),
        use_pg_rewind: r.boolean("postgresql.use_pg_rewind"),
        use_unix_socket: r.boolean("postgresql.use_unix_socket").unwrap_or(false),
        remove_data_directory_on_rewind_failure: r
            .boolean("postgresql.remove_data_directory_on_rewind_failure")
            .unwrap_or(false),
        remove_data_directory_on_diverged_timelines: r
            .boolean("postgresql.remove_data_directory_on_diverged_timelines")
            .unwrap_or(false),
        basebackup,
        create_replica_methods,
        methods,
        recovery_conf,
        pg_ctl_timeout: pg_ctl_timeout.max(1) as u64,
        callbacks: r.open_map("postgresql.callbacks"),
    };

    // Tags
    // read as Patroni reads them (crate::tags): a mixed cluster agrees on each member's tags
    let all_tags = r.open_map("tags");
    let view = crate::tags::TagView(&all_tags);
    for (key, why) in view.surprises() {
        r.notes.push(ConfigIssue {
            key: format!("tags.{key}"),
            message: why,
        });
    }
    let tags = Tags {
        nofailover: all_tags.get("nofailover").map(crate::tags::truthy),
        failover_priority: all_tags
            .get("failover_priority")
            .and_then(crate::tags::integer),
        clonefrom: view.clonefrom(),
        noloadbalance: view.noloadbalance(),
        replicatefrom: view.replicatefrom(),
        nosync: all_tags.get("nosync").map(crate::tags::truthy),
        sync_priority: all_tags.get("sync_priority").and_then(crate::tags::integer),
        nostream: view.nostream(),
        all: all_tags.clone(),
    };
    if tags.nofailover.is_some() && tags.failover_priority.is_some() {
        r.notes.push(ConfigIssue {
            key: "tags.failover_priority".into(),
            message: "both nofailover and failover_priority are set: nofailover wins; keep one"
                .into(),
        });
    }
    if tags.nosync.is_some() && tags.sync_priority.is_some() {
        r.notes.push(ConfigIssue {
            key: "tags.sync_priority".into(),
            message: "both nosync and sync_priority are set: nosync wins; keep one".into(),
        });
    }

    let log = LogConfig {
        level: r.string("log.level"),
        json: r.string("log.type").is_some_and(|t| t == "json"),
    };
    let watchdog = read_watchdog(r);

    Config {
        scope,
        namespace,
        name,
        restapi,
        ctl_authentication,
        rest_client_tls,
        etcd,
        raft,
        bootstrap,
        postgresql,
        tags,
        log,
        watchdog,
        origin,
        warnings: Vec::new(),
    }
}

fn read_etcd(r: &mut Reader<'_>, section: &str) -> EtcdConfig {
    let protocol = r
        .string(&format!("{section}.protocol"))
        .unwrap_or_else(|| "http".into());
    if !matches!(protocol.as_str(), "http" | "https") {
        r.err(&format!("{section}.protocol"), "must be http or https");
    }
    let mut hosts: Vec<String> = Vec::new();
    if let Some(list) = r.string_list(&format!("{section}.hosts")) {
        hosts.extend(list);
    }
    if let Some(h) = r.string(&format!("{section}.host")) {
        hosts.push(h);
    }
    if let Some(u) = r.string(&format!("{section}.url")) {
        hosts.push(u);
    }
    // `https://user:password@host:port` (Patroni's `url`): the credentials are taken out, and
    // never printed with the endpoint
    let mut url_user: Option<(String, String)> = None;
    for h in hosts.iter_mut() {
        let (scheme, rest) = match h.split_once("://") {
            Some((s, r)) => (format!("{s}://"), r.to_string()),
            None => (String::new(), h.clone()),
        };
        if let Some((userinfo, host)) = rest.rsplit_once('@') {
            let (u, p) = userinfo.split_once(':').unwrap_or((userinfo, ""));
            url_user.get_or_insert((u.to_string(), p.to_string()));
            *h = format!("{scheme}{host}");
        }
    }
    let tls = protocol == "https" || hosts.iter().any(|h| h.starts_with("https://"));
    for (i, h) in hosts.iter().enumerate() {
        if tls && h.starts_with("http://") {
            r.err(
                &format!("{section}.hosts[{i}]"),
                "mixes http:// with https (etcd3.protocol or another endpoint): use one scheme for every endpoint",
            );
        }
        let bare = h.split("://").last().unwrap_or(h).trim_end_matches('/');
        if split_host_port(bare).is_none() {
            r.err(
                &format!("{section}.hosts[{i}]"),
                format!("{h:?} is not host:port"),
            );
        }
    }
    if hosts.is_empty() {
        r.err(
            &format!("{section}.hosts"),
            "at least one etcd endpoint (host:port) is required",
        );
    }
    let file =
        |r: &mut Reader<'_>, key: &str| r.string(&format!("{section}.{key}")).map(PathBuf::from);
    let cacert = file(r, "cacert");
    let cert = file(r, "cert");
    let key = file(r, "key");
    if key.is_some() && cert.is_none() {
        r.err(
            &format!("{section}.key"),
            "needs a client certificate (cert)",
        );
    }
    if !tls {
        for (name, v) in [("cacert", &cacert), ("cert", &cert)] {
            if v.is_some() {
                r.err(
                    &format!("{section}.{name}"),
                    "is for TLS: set protocol: https (or https:// hosts)",
                );
            }
        }
    }
    let (url_name, url_password) = url_user.unzip();
    EtcdConfig {
        hosts,
        protocol,
        username: r.string(&format!("{section}.username")).or(url_name),
        password: r
            .string(&format!("{section}.password"))
            .or(url_password)
            .map(Secret),
        cacert,
        cert,
        key,
    }
}

/// Renders one `bootstrap.initdb` / `postgresql.basebackup` item (`flag` or `{key: value}`) as a
/// command-line option, refusing the options pgpilot must control itself.
fn initdb_option(item: &Value) -> Result<String, String> {
    const FORBIDDEN: [&str; 13] = [
        "pgdata",
        "nosync",
        "pwfile",
        "sync-only",
        "version",
        "format",
        "wal-method",
        "xlog-method",
        "dbname",
        "host",
        "port",
        "username",
        "password",
    ];
    let check = |k: &str| {
        if FORBIDDEN.contains(&k) {
            Err(format!(
                "option {k:?} is set by pgpilot itself and may not be given here"
            ))
        } else {
            Ok(())
        }
    };
    match item {
        Value::String(flag) => {
            let flag = flag.trim_start_matches('-');
            check(flag)?;
            Ok(format!("--{flag}"))
        }
        Value::Object(m) if m.len() == 1 => {
            let (k, v) = m.iter().next().ok_or("empty option")?;
            let k = k.trim_start_matches('-');
            check(k)?;
            let v = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                other => {
                    return Err(format!(
                        "value of {k:?} must be a scalar, found {}",
                        kind(other)
                    ));
                }
            };
            Ok(format!("--{k}={v}"))
        }
        other => Err(format!(
            "expected a flag name or a one-key mapping, found {}",
            kind(other)
        )),
    }
}

/// Renders a GUC value from YAML (booleans become `on`/`off`).
pub fn guc_value(v: &Value) -> String {
    match v {
        Value::Bool(true) => "on".into(),
        Value::Bool(false) => "off".into(),
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}
