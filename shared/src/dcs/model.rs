//! The typed cluster model and the exact (de)serialisation of the values Patroni keeps in etcd:
//! member keys, the dynamic configuration, `status`, `history`, `failover`, `sync`. Reading is
//! lenient — a garbage value is reported and treated as absent, never a panic — and writing
//! produces byte-for-byte what Patroni writes (compact JSON, Patroni's field order).

use crate::types::{Lsn, Role};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A value together with the etcd `mod_revision` it was read at, for compare-and-swap writes.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    pub value: T,
    pub mod_revision: i64,
}

/// The content of a `members/<name>` key, in Patroni's field order.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct MemberData {
    pub conn_url: String,
    pub api_url: String,
    pub state: String,
    pub role: String,
    pub version: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub proxy_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub checkpoint_after_promote: Option<bool>,
    #[serde(skip_serializing_if = "map_is_empty", default)]
    pub tags: Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub pending_restart: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub pending_restart_reason: Option<Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub xlog_location: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub replay_lsn: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub receive_lsn: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub replication_state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub timeline: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub scheduled_restart: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub pause: Option<bool>,
}

fn map_is_empty(m: &Map<String, Value>) -> bool {
    m.is_empty()
}

impl MemberData {
    /// Compact JSON as Patroni writes it.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
    }

    /// Reads a member value leniently: fields of the wrong type are dropped, unknown fields are
    /// ignored, and a legacy `postgres://…?application_name=…` connection URL is accepted.
    /// Returns `None` for a value that is neither.
    pub fn parse(raw: &str) -> Option<MemberData> {
        let v: Value = match serde_json::from_str(raw) {
            Ok(v) => v,
            Err(_) if raw.starts_with("postgres") => return Some(Self::from_legacy_url(raw)),
            Err(_) => return None,
        };
        let o = v.as_object()?;
        let s = |k: &str| o.get(k).and_then(Value::as_str).map(str::to_string);
        let u = |k: &str| o.get(k).and_then(Value::as_u64);
        let b = |k: &str| o.get(k).and_then(Value::as_bool);
        Some(MemberData {
            conn_url: s("conn_url").unwrap_or_default(),
            api_url: s("api_url").unwrap_or_default(),
            state: s("state").unwrap_or_default(),
            role: s("role").unwrap_or_default(),
            version: s("version").unwrap_or_default(),
            proxy_url: s("proxy_url"),
            checkpoint_after_promote: b("checkpoint_after_promote"),
            tags: o
                .get("tags")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default(),
            pending_restart: b("pending_restart"),
            pending_restart_reason: o
                .get("pending_restart_reason")
                .and_then(Value::as_object)
                .cloned(),
            xlog_location: u("xlog_location"),
            replay_lsn: u("replay_lsn"),
            receive_lsn: u("receive_lsn"),
            replication_state: s("replication_state"),
            timeline: u("timeline"),
            scheduled_restart: o
                .get("scheduled_restart")
                .filter(|v| v.is_object())
                .cloned(),
            pause: b("pause"),
        })
    }

    fn from_legacy_url(raw: &str) -> MemberData {
        let api_url = raw
            .split_once('?')
            .and_then(|(_, q)| {
                q.split('&')
                    .find_map(|kv| kv.strip_prefix("application_name="))
            })
            .unwrap_or_default()
            .to_string();
        MemberData {
            conn_url: raw.split('?').next().unwrap_or(raw).to_string(),
            api_url,
            ..Default::default()
        }
    }

    /// The role, with the legacy `master` read as primary.
    pub fn role(&self) -> Option<Role> {
        Role::parse(&self.role)
    }

    /// Host and port of `conn_url`.
    pub fn host_port(&self) -> Option<(String, u16)> {
        let rest = self.conn_url.split("://").nth(1)?;
        let hostport = rest.split('/').next()?;
        let hostport = hostport.rsplit('@').next()?;
        if let Some(r) = hostport.strip_prefix('[') {
            let (h, p) = r.split_once(']')?;
            let port = p
                .strip_prefix(':')
                .and_then(|p| p.parse().ok())
                .unwrap_or(5432);
            return Some((h.to_string(), port));
        }
        match hostport.rsplit_once(':') {
            Some((h, p)) => Some((h.to_string(), p.parse().ok()?)),
            None => Some((hostport.to_string(), 5432)),
        }
    }

    /// The member key says PostgreSQL runs as primary.
    pub fn runs_as_primary(&self) -> bool {
        self.state == "running" && matches!(self.role.as_str(), "primary" | "master")
    }

    /// The member's tags, read as Patroni reads them (strings included).
    pub fn tag_view(&self) -> crate::tags::TagView<'_> {
        crate::tags::TagView(&self.tags)
    }

    /// Whether the member's tags exclude it from leader races.
    pub fn no_failover(&self) -> bool {
        self.tag_view().no_failover()
    }

    /// The member's `failover_priority` (1 unless tagged; 0 when nofailover).
    pub fn failover_priority(&self) -> i64 {
        self.tag_view().failover_priority()
    }

    /// The WAL position the member reports (primary flush, replica max(receive, replay)).
    pub fn wal_position(&self) -> Option<Lsn> {
        self.xlog_location.map(Lsn)
    }
}

/// One member as read from etcd.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub name: String,
    pub data: MemberData,
    pub lease: i64,
    pub mod_revision: i64,
}

/// The leader key: the lock holder's name and the lease it is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    pub name: String,
    pub lease: i64,
    pub mod_revision: i64,
}

/// The dynamic configuration's `standby_cluster`: this cluster replicates from another one's
/// primary (`host`/`port`) and/or its archive (`restore_command`); its leader is a standby
/// leader that never promotes on its own.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StandbyCluster {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub primary_slot_name: Option<String>,
    pub restore_command: Option<String>,
    pub archive_cleanup_command: Option<String>,
    pub recovery_min_apply_delay: Option<String>,
    pub create_replica_methods: Option<Vec<String>>,
}

impl StandbyCluster {
    /// The remote primary as `host:port` (port 5432 by default), when a host is set.
    pub fn address(&self) -> Option<String> {
        let host = self.host.as_deref().filter(|h| !h.is_empty())?;
        // several hosts (a list for target_session_attrs) are not followed here: the first
        let host = host.split(',').next().unwrap_or(host).trim();
        Some(format!("{host}:{}", self.port.unwrap_or(5432)))
    }
}

/// The name under which the decision core refers to a standby cluster's remote primary as an
/// upstream; never a member's (a member name in etcd has no parentheses from pgpilot or
/// Patroni's own tooling).
pub const STANDBY_REMOTE: &str = "(standby_cluster)";

/// A permanent replication slot from the dynamic configuration's `slots`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PermanentSlot {
    pub name: String,
    /// `None`: physical; `Some((database, plugin))`: logical.
    pub logical: Option<(String, String)>,
}

impl PermanentSlot {
    fn from_entry(name: &str, v: &Value) -> Result<PermanentSlot, String> {
        if name.is_empty()
            || name.len() > 63
            || !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err("a slot name is 1 to 63 of a-z, 0-9 and _".into());
        }
        let field = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        let (kind, database, plugin) = (field("type"), field("database"), field("plugin"));
        let logical = match kind.as_deref() {
            Some("physical") => false,
            Some("logical") => true,
            None => database.is_some() && plugin.is_some(),
            Some(other) => return Err(format!("type {other:?} is not physical or logical")),
        };
        if !logical {
            return Ok(PermanentSlot {
                name: name.to_string(),
                logical: None,
            });
        }
        match (database, plugin) {
            (Some(d), Some(p)) if !d.is_empty() && !p.is_empty() => Ok(PermanentSlot {
                name: name.to_string(),
                logical: Some((d, p)),
            }),
            _ => Err("a logical slot needs a database and a plugin".into()),
        }
    }
}

/// The `status` key.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Status {
    pub optime: Option<u64>,
    pub slots: Option<Map<String, Value>>,
    pub retain_slots: Option<Vec<String>>,
}

impl Status {
    /// Reads `{"optime":…,"slots":…,"retain_slots":…}` or a legacy bare integer.
    pub fn parse(raw: &str) -> Option<Status> {
        let v: Value = serde_json::from_str(raw).ok()?;
        match v {
            Value::Number(n) => Some(Status {
                optime: n.as_u64(),
                ..Default::default()
            }),
            Value::Object(o) => {
                let decode = |k: &str| -> Option<Value> {
                    match o.get(k)? {
                        Value::String(s) => serde_json::from_str(s).ok(),
                        other => Some(other.clone()),
                    }
                };
                Some(Status {
                    optime: o.get("optime").and_then(Value::as_u64),
                    slots: decode("slots").and_then(|v| v.as_object().cloned()),
                    retain_slots: decode("retain_slots").and_then(|v| {
                        v.as_array().map(|a| {
                            a.iter()
                                .filter_map(|x| x.as_str().map(str::to_string))
                                .collect()
                        })
                    }),
                })
            }
            _ => None,
        }
    }

    /// Compact JSON in Patroni's order; absent parts are omitted.
    pub fn to_json(&self) -> String {
        let mut o = Map::new();
        if let Some(t) = self.optime {
            o.insert("optime".into(), Value::from(t));
        }
        if let Some(s) = &self.slots {
            o.insert("slots".into(), Value::Object(s.clone()));
        }
        if let Some(r) = &self.retain_slots {
            o.insert(
                "retain_slots".into(),
                Value::Array(r.iter().cloned().map(Value::from).collect()),
            );
        }
        Value::Object(o).to_string()
    }
}

/// One entry of the `history` key.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryEntry {
    /// The parent timeline that ended at `lsn`.
    pub timeline: u64,
    pub lsn: u64,
    pub reason: String,
    pub timestamp: Option<String>,
    pub new_leader: Option<String>,
}

/// Parses the `history` array; entries that are not `[int, int, str, …]` are skipped.
pub fn parse_history(raw: &str) -> Option<Vec<HistoryEntry>> {
    let v: Value = serde_json::from_str(raw).ok()?;
    let arr = v.as_array()?;
    Some(
        arr.iter()
            .filter_map(|e| {
                let e = e.as_array()?;
                Some(HistoryEntry {
                    timeline: e.first()?.as_u64()?,
                    lsn: e.get(1)?.as_u64()?,
                    reason: e.get(2).and_then(Value::as_str).unwrap_or("").to_string(),
                    timestamp: e.get(3).and_then(Value::as_str).map(str::to_string),
                    new_leader: e.get(4).and_then(Value::as_str).map(str::to_string),
                })
            })
            .collect(),
    )
}

/// Renders the `history` array as Patroni writes it.
pub fn history_json(entries: &[HistoryEntry]) -> String {
    let arr: Vec<Value> = entries
        .iter()
        .map(|e| {
            let mut a = vec![
                Value::from(e.timeline),
                Value::from(e.lsn),
                Value::from(e.reason.clone()),
            ];
            if let Some(ts) = &e.timestamp {
                a.push(Value::from(ts.clone()));
                if let Some(n) = &e.new_leader {
                    a.push(Value::from(n.clone()));
                }
            }
            Value::Array(a)
        })
        .collect();
    Value::Array(arr).to_string()
}

/// The `failover` key: a requested switchover (`leader` set) or failover (only `member`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Failover {
    pub leader: Option<String>,
    /// The candidate (Patroni stores it under `member`).
    pub member: Option<String>,
    pub scheduled_at: Option<String>,
}

impl Failover {
    /// Reads the JSON form or the legacy `leader:candidate` text. `{}` means "nothing requested"
    /// and gives `None`.
    pub fn parse(raw: &str) -> Option<Failover> {
        let f = match serde_json::from_str::<Value>(raw) {
            Ok(Value::Object(o)) => {
                let s = |k: &str| {
                    o.get(k)
                        .and_then(Value::as_str)
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                };
                Failover {
                    leader: s("leader"),
                    member: s("member"),
                    scheduled_at: s("scheduled_at"),
                }
            }
            Ok(_) => return None,
            Err(_) => {
                let (l, m) = raw.split_once(':')?;
                Failover {
                    leader: Some(l.to_string()).filter(|s| !s.is_empty()),
                    member: Some(m.to_string()).filter(|s| !s.is_empty()),
                    scheduled_at: None,
                }
            }
        };
        if f.leader.is_none() && f.member.is_none() {
            None
        } else {
            Some(f)
        }
    }

    pub fn to_json(&self) -> String {
        let mut o = Map::new();
        if let Some(l) = &self.leader {
            o.insert("leader".into(), Value::from(l.clone()));
        }
        if let Some(m) = &self.member {
            o.insert("member".into(), Value::from(m.clone()));
        }
        if let Some(s) = &self.scheduled_at {
            o.insert("scheduled_at".into(), Value::from(s.clone()));
        }
        Value::Object(o).to_string()
    }
}

/// `synchronous_mode` as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    Off,
    On,
    /// Patroni 4's quorum commit: `ANY k (…)` and a `sync` key with `quorum`.
    Quorum,
}

/// The member name Patroni writes into `synchronous_standby_names` when strict mode has no
/// synchronous standby: no real standby matches it, so commits wait.
pub const STRICT_SYNC_PLACEHOLDER: &str = "__patroni_strict_sync_replica_placeholder__";

/// The `sync` key.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SyncState {
    pub leader: Option<String>,
    pub quorum: u64,
    pub sync_standby: Vec<String>,
}

impl SyncState {
    /// Reads the key as Patroni does: an empty leader is none (and then no quorum counts; the
    /// voters are kept but restrict nothing, see [`SyncState::promotable`]); voters without
    /// blanks, repeats (case-insensitive) or the leader itself; the quorum at most the number
    /// of voters.
    pub fn parse(raw: &str) -> Option<SyncState> {
        let v: Value = serde_json::from_str(raw).ok()?;
        let o = v.as_object()?;
        let leader = o
            .get("leader")
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string);
        let mut sync_standby: Vec<String> = Vec::new();
        for name in o
            .get("sync_standby")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
        {
            let repeated = sync_standby.iter().any(|s| s.eq_ignore_ascii_case(name))
                || leader
                    .as_deref()
                    .is_some_and(|l| l.eq_ignore_ascii_case(name));
            if !name.is_empty() && !repeated {
                sync_standby.push(name.to_string());
            }
        }
        let quorum = match leader {
            Some(_) => o
                .get("quorum")
                .and_then(Value::as_u64)
                .unwrap_or(0)
                .min(sync_standby.len() as u64),
            None => 0,
        };
        Some(SyncState {
            leader,
            quorum,
            sync_standby,
        })
    }

    pub fn to_json(&self) -> String {
        let mut names = self.sync_standby.clone();
        names.sort();
        let standby = if names.is_empty() {
            Value::Null
        } else {
            Value::from(names.join(","))
        };
        let mut o = Map::new();
        o.insert(
            "leader".into(),
            self.leader.clone().map(Value::from).unwrap_or(Value::Null),
        );
        o.insert("quorum".into(), Value::from(self.quorum));
        o.insert("sync_standby".into(), standby);
        Value::Object(o).to_string()
    }

    /// Who may be promoted while this key holds: the synchronous standbys and the leader that
    /// wrote it. `None` when it names no leader (nothing is restricted).
    pub fn promotable(&self) -> Option<Vec<String>> {
        let leader = self.leader.clone()?;
        let mut names = self.sync_standby.clone();
        names.push(leader);
        Some(names)
    }

    /// Whether `name` is listed as synchronous (case-insensitive, as Patroni compares).
    pub fn is_sync(&self, name: &str) -> bool {
        self.sync_standby
            .iter()
            .any(|s| s.eq_ignore_ascii_case(name))
    }
}

/// The shortest ttl pgpilot accepts, in seconds.
pub const MIN_TTL: u64 = 5;
/// The longest ttl, loop_wait, retry_timeout or start/stop timeout accepted: one day. Larger
/// values are refused (they would only ever mean a leader that is never replaced).
pub const MAX_TIMING: u64 = 86_400;

/// Timing after pgpilot's limits are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub ttl: u64,
    pub loop_wait: u64,
    pub retry_timeout: u64,
}

/// The dynamic configuration in the `config` key. The raw object is kept as written so that
/// `GET /config` and edits return exactly what is stored; typed accessors apply defaults.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DynamicConfig {
    pub raw: Map<String, Value>,
}

impl DynamicConfig {
    pub fn parse(raw: &str) -> Option<DynamicConfig> {
        match serde_json::from_str::<Value>(raw).ok()? {
            Value::Object(o) => Some(DynamicConfig { raw: o }),
            _ => None,
        }
    }

    pub fn to_json(&self) -> String {
        Value::Object(self.raw.clone()).to_string()
    }

    fn uint(&self, key: &str) -> Option<u64> {
        match self.raw.get(key)? {
            Value::Number(n) => n.as_u64().or_else(|| n.as_f64().map(|f| f.max(0.0) as u64)),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    fn flag(&self, key: &str) -> Option<bool> {
        match self.raw.get(key)? {
            Value::Bool(b) => Some(*b),
            Value::String(s) => crate::config::parse_bool(s),
            _ => None,
        }
    }

    /// ttl, loop_wait and retry_timeout with defaults (30/10/10) and pgpilot's limits: ttl ≥ 5,
    /// loop_wait ≥ 1, retry_timeout ≥ 1, and `loop_wait + 2*retry_timeout ≤ ttl` (loop_wait
    /// lowered first, then retry_timeout).
    pub fn timing(&self) -> Timing {
        // every value is clamped into its range first, so no sum or product below can overflow
        let ttl = self.uint("ttl").unwrap_or(30).clamp(MIN_TTL, MAX_TIMING);
        let mut retry_timeout = self
            .uint("retry_timeout")
            .unwrap_or(10)
            .clamp(1, MAX_TIMING);
        let mut loop_wait = self.uint("loop_wait").unwrap_or(10).clamp(1, MAX_TIMING);
        if loop_wait + 2 * retry_timeout > ttl {
            loop_wait = ttl.saturating_sub(2 * retry_timeout).max(1);
            if loop_wait + 2 * retry_timeout > ttl {
                retry_timeout = (ttl.saturating_sub(1) / 2).max(1);
            }
        }
        Timing {
            ttl,
            loop_wait,
            retry_timeout,
        }
    }

    /// When the ttl, loop_wait and retry_timeout as written break `ttl ≥ loop_wait + 2 ×
    /// retry_timeout` (each within its range): what is used instead, as Patroni adjusts them —
    /// loop_wait lowered first, then retry_timeout.
    pub fn timing_adjustment(&self) -> Option<String> {
        // as written (defaults for the absent ones); a wrong type or a value above the range
        // is refused by its key elsewhere
        let written = |key: &str, default: u64| match self.raw.get(key) {
            None => Some(default),
            Some(_) => self.uint(key).filter(|v| *v <= MAX_TIMING),
        };
        let ttl = written("ttl", 30)?;
        let loop_wait = written("loop_wait", 10)?;
        let retry_timeout = written("retry_timeout", 10)?;
        let t = self.timing();
        if (t.ttl, t.loop_wait, t.retry_timeout) == (ttl, loop_wait, retry_timeout) {
            return None;
        }
        if ttl < MIN_TTL || loop_wait < 1 || retry_timeout < 1 {
            return Some(format!(
                "ttl {ttl}, loop_wait {loop_wait} and retry_timeout {retry_timeout} go below pgpilot's minimums ({MIN_TTL}, 1, 1): using ttl {}, loop_wait {} and retry_timeout {} (raised, as Patroni raises values below its own)",
                t.ttl, t.loop_wait, t.retry_timeout
            ));
        }
        Some(format!(
            "ttl {ttl} is below loop_wait {loop_wait} + 2 × retry_timeout {retry_timeout}: using loop_wait {} and retry_timeout {} (lowered as Patroni does)",
            t.loop_wait, t.retry_timeout
        ))
    }

    /// Why the ttl, loop_wait and retry_timeout as written cannot work together, if they cannot:
    /// a leader must be able to miss one loop and retry etcd for retry_timeout twice before its
    /// lease ends (`ttl ≥ loop_wait + 2 × retry_timeout`).
    pub fn timing_problem(&self) -> Option<String> {
        let ttl = self.uint("ttl").unwrap_or(30);
        let loop_wait = self.uint("loop_wait").unwrap_or(10);
        let retry_timeout = self.uint("retry_timeout").unwrap_or(10);
        // checked: the values come from etcd or a file
        let need = retry_timeout
            .checked_mul(2)
            .and_then(|r| r.checked_add(loop_wait));
        match need {
            Some(need) if ttl >= need => None,
            Some(need) => Some(format!(
                "ttl {ttl} is too short for loop_wait {loop_wait} and retry_timeout {retry_timeout}: it must be at least loop_wait + 2 × retry_timeout = {need}"
            )),
            None => Some(format!(
                "loop_wait {loop_wait} and retry_timeout {retry_timeout} are out of range"
            )),
        }
    }

    /// The problems that make this dynamic configuration unusable (a value of the wrong type or
    /// out of its range), each with the key at fault. An agent refuses such a `config` key and
    /// keeps the last good configuration in force.
    pub fn refusal(&self) -> Option<String> {
        let mut problems = Vec::new();
        Self::check_values(&self.raw, |key, msg| problems.push(format!("{key}: {msg}")));
        problems.extend(
            crate::config::dynamic_key_notes(&self.raw)
                .into_iter()
                .filter(|n| n.level == crate::config::NoteLevel::Refusal)
                .map(|n| n.to_string()),
        );
        (!problems.is_empty()).then(|| problems.join("; "))
    }

    /// What this configuration asks for that pgpilot does not do, one line per key.
    pub fn warnings(&self) -> Vec<String> {
        crate::config::dynamic_key_notes(&self.raw)
            .into_iter()
            .filter(|n| n.level == crate::config::NoteLevel::Warning)
            .map(|n| n.to_string())
            .collect()
    }

    pub fn maximum_lag_on_failover(&self) -> u64 {
        self.uint("maximum_lag_on_failover").unwrap_or(1 << 20)
    }

    pub fn primary_start_timeout(&self) -> u64 {
        self.uint("primary_start_timeout")
            .or_else(|| self.uint("master_start_timeout"))
            .unwrap_or(300)
    }

    /// How long the slot of a vanished member is kept (`member_slots_ttl`, default 30 min;
    /// units such as `30min` or `1h` allowed).
    pub fn member_slots_ttl(&self) -> u64 {
        match self.raw.get("member_slots_ttl") {
            Some(Value::Number(n)) => n.as_u64().unwrap_or(1800),
            Some(Value::String(s)) => crate::types::parse_seconds(s).unwrap_or(1800),
            _ => 1800,
        }
    }

    /// `standby_cluster`, when it asks for one (a `host`, `port` or `restore_command`).
    pub fn standby_cluster(&self) -> Option<StandbyCluster> {
        let m = self.raw.get("standby_cluster")?.as_object()?;
        let text = |k: &str| match m.get(k) {
            Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_string()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        let sc = StandbyCluster {
            host: text("host"),
            port: text("port").and_then(|p| p.parse().ok()),
            primary_slot_name: text("primary_slot_name").map(|s| crate::types::slot_name(&s)),
            restore_command: text("restore_command"),
            archive_cleanup_command: text("archive_cleanup_command"),
            recovery_min_apply_delay: text("recovery_min_apply_delay"),
            create_replica_methods: match m.get("create_replica_methods") {
                Some(Value::Array(a)) => Some(
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect(),
                ),
                Some(Value::String(s)) => Some(
                    s.split(',')
                        .map(|p| p.trim().to_string())
                        .filter(|p| !p.is_empty())
                        .collect(),
                ),
                _ => None,
            },
        };
        (sc.host.is_some() || sc.port.is_some() || sc.restore_command.is_some()).then_some(sc)
    }

    /// The permanent replication slots of `slots` (also read as `permanent_slots` or
    /// `permanent_replication_slots`): physical unless `type: logical` or both `database` and
    /// `plugin` are given. Entries with an unusable name or an incomplete logical definition
    /// are left out (see [`DynamicConfig::permanent_slot_problems`]).
    pub fn permanent_slots(&self) -> Vec<PermanentSlot> {
        self.permanent_slot_entries()
            .filter_map(|(name, v)| PermanentSlot::from_entry(name, v).ok())
            .collect()
    }

    /// What is wrong with the entries of `slots`, by name.
    pub fn permanent_slot_problems(&self) -> Vec<(String, String)> {
        self.permanent_slot_entries()
            .filter_map(|(name, v)| {
                PermanentSlot::from_entry(name, v)
                    .err()
                    .map(|e| (name.to_string(), e))
            })
            .collect()
    }

    fn permanent_slot_entries(&self) -> impl Iterator<Item = (&str, &Value)> {
        ["slots", "permanent_slots", "permanent_replication_slots"]
            .into_iter()
            .find_map(|k| self.raw.get(k).and_then(Value::as_object))
            .into_iter()
            .flat_map(|m| m.iter().map(|(k, v)| (k.as_str(), v)))
    }

    /// Whether a physical slot of this name is the operator's, never to be dropped as a
    /// vanished member's: named in the permanent `slots`, or matched by an `ignore_slots` entry
    /// (by `name`, with `type` absent or `physical`; an entry naming a database or a plugin is
    /// about logical slots).
    pub fn keeps_physical_slot(&self, name: &str) -> bool {
        let permanent = self
            .raw
            .get("slots")
            .and_then(Value::as_object)
            .is_some_and(|s| s.contains_key(name));
        let ignored = self
            .raw
            .get("ignore_slots")
            .and_then(Value::as_array)
            .is_some_and(|list| {
                list.iter().filter_map(Value::as_object).any(|m| {
                    let field = |k: &str| m.get(k).and_then(Value::as_str);
                    field("name").is_none_or(|n| n == name)
                        && field("type").is_none_or(|t| t == "physical")
                        && field("database").is_none()
                        && field("plugin").is_none()
                        && !m.is_empty()
                })
            });
        permanent || ignored
    }

    pub fn pause(&self) -> bool {
        self.flag("pause").unwrap_or(false)
    }

    /// `synchronous_mode`: `off`/`false`, `on`/`true`, or `quorum`.
    pub fn synchronous_mode(&self) -> SyncMode {
        match self.raw.get("synchronous_mode") {
            Some(Value::Bool(true)) => SyncMode::On,
            Some(Value::String(s)) if s.trim().eq_ignore_ascii_case("quorum") => SyncMode::Quorum,
            Some(Value::String(s)) if crate::config::parse_bool(s) == Some(true) => SyncMode::On,
            _ => SyncMode::Off,
        }
    }

    /// `synchronous_mode_strict`: never acknowledge a commit without a synchronous standby.
    pub fn synchronous_mode_strict(&self) -> bool {
        self.flag("synchronous_mode_strict").unwrap_or(false)
    }

    /// `synchronous_node_count` (default 1, at least 1).
    /// `maximum_lag_on_syncnode` in bytes: a synchronous standby further behind is replaced
    /// (Patroni's rule); `None` when unset or at or below 0 (never replaced for lag).
    pub fn maximum_lag_on_syncnode(&self) -> Option<u64> {
        match self.raw.get("maximum_lag_on_syncnode")? {
            Value::Number(n) => n.as_u64().filter(|v| *v > 0),
            Value::String(s) => s.trim().parse::<u64>().ok().filter(|v| *v > 0),
            _ => None,
        }
    }

    pub fn synchronous_node_count(&self) -> usize {
        self.uint("synchronous_node_count").unwrap_or(1).max(1) as usize
    }

    /// `failsafe_mode`: a primary that loses etcd keeps running while every member confirms it
    /// over REST.
    pub fn failsafe_mode(&self) -> bool {
        self.flag("failsafe_mode").unwrap_or(false)
    }

    pub fn check_timeline(&self) -> bool {
        self.flag("check_timeline").unwrap_or(false)
    }

    fn postgresql(&self) -> Option<&Map<String, Value>> {
        self.raw.get("postgresql").and_then(Value::as_object)
    }

    /// `postgresql.use_slots` (default true).
    pub fn use_slots(&self) -> bool {
        match self.postgresql().and_then(|p| p.get("use_slots")) {
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => crate::config::parse_bool(s).unwrap_or(true),
            _ => true,
        }
    }

    /// `postgresql.use_pg_rewind` from the dynamic configuration.
    pub fn use_pg_rewind(&self) -> Option<bool> {
        self.postgresql()?.get("use_pg_rewind")?.as_bool()
    }

    /// `postgresql.parameters` from the dynamic configuration.
    pub fn parameters(&self) -> Map<String, Value> {
        self.postgresql()
            .and_then(|p| p.get("parameters"))
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()
    }

    /// `postgresql.pg_hba` from the dynamic configuration.
    /// The `postgresql` section (replica methods, `recovery_conf`, … beside the parameters).
    pub fn postgresql_section(&self) -> Option<Map<String, Value>> {
        self.postgresql().cloned()
    }

    pub fn pg_hba(&self) -> Option<Vec<String>> {
        let list = self.postgresql()?.get("pg_hba")?.as_array()?;
        Some(
            list.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
        )
    }

    /// Checks the types and limits of a `bootstrap.dcs` (or a proposed `/config`) object, calling
    /// `report(key, message)` for each problem.
    pub fn check_bootstrap(raw: &Map<String, Value>, mut report: impl FnMut(&str, String)) {
        // a ttl too short for loop_wait and retry_timeout is not refused: they are lowered and
        // the change warned about (crate::config::dynamic_key_notes), as Patroni does
        Self::check_values(raw, &mut report);
    }

    /// Types and ranges of the values, each problem reported with its key.
    fn check_values(raw: &Map<String, Value>, mut report: impl FnMut(&str, String)) {
        let uint_keys = [
            // below pgpilot's minimums: raised with a warning (timing_adjustment), as Patroni
            // raises values below its own
            ("ttl", 0, MAX_TIMING),
            ("loop_wait", 0, MAX_TIMING),
            ("retry_timeout", 0, MAX_TIMING),
            ("maximum_lag_on_failover", 0, i64::MAX as u64),
            ("primary_start_timeout", 0, MAX_TIMING),
            ("primary_stop_timeout", 0, MAX_TIMING),
            ("max_timelines_history", 0, u32::MAX as u64),
            ("synchronous_node_count", 1, 1024),
        ];
        for (key, min, max) in uint_keys {
            let Some(v) = raw.get(key) else { continue };
            let n = match v {
                Value::Number(n) => n.as_u64(),
                Value::String(s) => s.trim().parse::<u64>().ok(),
                _ => None,
            };
            match n {
                None => report(key, format!("expected a non-negative integer, found {v}")),
                Some(n) if n < min => report(key, format!("must be at least {min}, found {n}")),
                Some(n) if n > max => report(key, format!("must be at most {max}, found {n}")),
                _ => {}
            }
        }
        for key in [
            "pause",
            "check_timeline",
            "failsafe_mode",
            "synchronous_mode_strict",
        ] {
            if let Some(v) = raw.get(key)
                && !(v.is_boolean() || v.as_str().and_then(crate::config::parse_bool).is_some())
            {
                report(key, format!("expected true or false, found {v}"));
            }
        }
        if let Some(pg) = raw.get("postgresql") {
            match pg {
                Value::Object(pg) => {
                    if let Some(p) = pg.get("parameters")
                        && !p.is_object()
                    {
                        report("postgresql.parameters", "expected a mapping".into());
                    }
                    if let Some(p) = pg.get("pg_hba")
                        && !p.is_array()
                    {
                        report("postgresql.pg_hba", "expected a list of lines".into());
                    }
                }
                _ => report("postgresql", "expected a mapping".into()),
            }
        }
    }
}

/// Everything under one cluster's prefix, as read at one etcd revision.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Cluster {
    pub scope: String,
    /// `None` = key absent; `Some("")` = someone is bootstrapping; else the system identifier.
    pub initialize: Option<String>,
    /// `None` when absent or not valid JSON.
    pub config: Option<Versioned<DynamicConfig>>,
    pub leader: Option<Leader>,
    /// Sorted by name.
    pub members: Vec<Member>,
    pub status: Status,
    pub history: Vec<HistoryEntry>,
    pub failover: Option<Versioned<Failover>>,
    pub sync: Option<Versioned<SyncState>>,
    pub failsafe: Option<Map<String, Value>>,
    /// The etcd revision of the read.
    pub revision: i64,
}

impl Cluster {
    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name)
    }

    pub fn leader_member(&self) -> Option<&Member> {
        self.leader.as_ref().and_then(|l| self.member(&l.name))
    }

    /// The dynamic configuration, or defaults when none is stored.
    pub fn dynamic_config(&self) -> DynamicConfig {
        self.config
            .as_ref()
            .map(|c| c.value.clone())
            .unwrap_or_default()
    }

    /// Cluster timeline: last history entry + 1, or 1.
    pub fn timeline(&self) -> u64 {
        self.history
            .last()
            .map(|e| e.timeline.saturating_add(1))
            .unwrap_or(1)
    }

    pub fn is_paused(&self) -> bool {
        self.dynamic_config().pause()
    }

    /// Synchronous mode only lets the published synchronous standbys (and the leader that
    /// published them) be promoted: whether `name` may be.
    pub fn sync_allows_promotion(&self, name: &str) -> bool {
        if self.dynamic_config().synchronous_mode() == SyncMode::Off {
            return true;
        }
        match self.sync.as_ref().and_then(|k| k.value.promotable()) {
            Some(allowed) => allowed.iter().any(|n| n.eq_ignore_ascii_case(name)),
            None => true,
        }
    }
}

/// Whether each member other than the leader could take over if the leader failed now, judged
/// from the member keys: `(name, None)` for a candidate, `(name, Some(reason))` otherwise.
pub fn failover_readiness(cluster: &Cluster) -> Vec<(String, Option<String>)> {
    let leader = cluster.leader.as_ref().map(|l| l.name.as_str());
    let max_lag = cluster.dynamic_config().maximum_lag_on_failover();
    let reference = cluster
        .status
        .optime
        .into_iter()
        .chain(
            leader
                .and_then(|l| cluster.member(l))
                .and_then(|m| m.data.xlog_location),
        )
        .max();
    cluster
        .members
        .iter()
        .filter(|m| Some(m.name.as_str()) != leader)
        .map(|m| {
            let why = if m.data.no_failover() {
                Some("tagged nofailover".to_string())
            } else if !cluster.sync_allows_promotion(&m.name) {
                Some("not a synchronous standby (synchronous mode)".to_string())
            } else if m.data.state != "running" {
                Some(format!("PostgreSQL is {}", m.data.state))
            } else if m.data.xlog_location.is_none() {
                Some("WAL position unknown".to_string())
            } else {
                match (reference, m.data.xlog_location) {
                    (Some(r), Some(x)) if r.saturating_sub(x) > max_lag => Some(format!(
                        "lagging {} bytes behind the leader, more than maximum_lag_on_failover {max_lag}",
                        r - x
                    )),
                    _ => None,
                }
            };
            (m.name.clone(), why)
        })
        .collect()
}

/// One line naming why no member can take over, or `None` when at least one can.
pub fn failover_blocked(cluster: &Cluster) -> Option<String> {
    let all = failover_readiness(cluster);
    if all.iter().any(|(_, why)| why.is_none()) {
        return None;
    }
    if all.is_empty() {
        return Some("no other member exists".into());
    }
    Some(
        all.iter()
            .map(|(n, why)| format!("{n}: {}", why.as_deref().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join("; "),
    )
}

/// The member that would most likely take over if the leader failed now: among the members
/// that could, the furthest ahead, then the highest `failover_priority`.
pub fn likely_successor(cluster: &Cluster) -> Option<String> {
    failover_readiness(cluster)
        .into_iter()
        .filter(|(_, why)| why.is_none())
        .filter_map(|(n, _)| cluster.member(&n))
        .max_by_key(|m| {
            (
                m.data.xlog_location.unwrap_or(0),
                m.data.failover_priority(),
                std::cmp::Reverse(m.name.clone()),
            )
        })
        .map(|m| m.name.clone())
}
