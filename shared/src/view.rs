//! What an operator sees of a cluster, shaped as `patronictl` shows it: the member table (`list`,
//! `topology`), the timeline history, the service lines (maintenance mode, a scheduled
//! switchover), and their renderings as a pretty table, TSV, JSON or YAML. One model for the
//! console's batch output and its live view.

use crate::api::cluster_json;
use crate::dcs::Cluster;
use crate::types::Lsn;
use serde_json::{Map, Value, json};

/// A titled table of JSON cells (strings or numbers), with lines printed under it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Table {
    /// ` Cluster: <scope> (<system identifier>) ` for member tables; empty otherwise.
    pub title: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
    /// Service lines (pretty output only): maintenance mode, scheduled switchover.
    pub footer: Vec<String>,
}

/// Output formats, as `patronictl -f`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Pretty,
    Tsv,
    Json,
    Yaml,
}

impl Format {
    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "pretty" => Some(Format::Pretty),
            "tsv" => Some(Format::Tsv),
            "json" => Some(Format::Json),
            "yaml" | "yml" => Some(Format::Yaml),
            _ => None,
        }
    }
}

/// `uninitialized` (no `initialize` key), `initializing` (empty), or the system identifier.
pub fn initialize_label(cluster: &Cluster) -> &str {
    match cluster.initialize.as_deref() {
        None => "uninitialized",
        Some("") => "initializing",
        Some(s) => s,
    }
}

fn title_case(role: &str) -> String {
    role.split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A lag in bytes as whole MB (rounded); `unknown` or absent as an empty cell.
fn lag_mb(v: Option<&Value>) -> Value {
    match v.and_then(Value::as_u64) {
        Some(b) => json!(((b as f64) / 1024.0 / 1024.0).round() as u64),
        None => json!(""),
    }
}

fn lsn_cell(v: Option<&Value>) -> Value {
    match v.and_then(Value::as_str) {
        Some("unknown") | None => json!(""),
        Some(s) => json!(s),
    }
}

/// Tags as one line of YAML flow (`{nofailover: true, clonefrom: false}`).
fn tags_cell(tags: &Map<String, Value>) -> String {
    let items: Vec<String> = tags
        .iter()
        .map(|(k, v)| match v {
            Value::String(s) => format!("{k}: {s}"),
            other => format!("{k}: {other}"),
        })
        .collect();
    format!("{{{}}}", items.join(", "))
}

/// Members (as in `cluster_json`) in replication-tree order — leader, then each member under
/// its upstream, cascaded members under the replica they stream from — with their depth.
pub fn topology_order(members: &[Value]) -> Vec<(usize, &Value)> {
    let name = |m: &Value| m["name"].as_str().unwrap_or_default().to_string();
    let is_leader = |m: &Value| m["role"].as_str().is_some_and(|r| r.ends_with("leader"));
    let leader = members.iter().find(|m| is_leader(m)).map(name);
    let replicas: Vec<String> = members.iter().filter(|m| !is_leader(m)).map(name).collect();
    let parent_of = |m: &Value| -> Option<String> {
        let from = m["tags"]["replicatefrom"].as_str();
        match from {
            Some(p) if p != name(m) && replicas.iter().any(|r| r == p) => Some(p.to_string()),
            _ => leader.clone(),
        }
    };
    let mut out = Vec::new();
    fn walk<'a>(
        parent: Option<&str>,
        depth: usize,
        members: &'a [Value],
        parent_of: &dyn Fn(&Value) -> Option<String>,
        is_leader: &dyn Fn(&Value) -> bool,
        out: &mut Vec<(usize, &'a Value)>,
    ) {
        for m in members
            .iter()
            .filter(|m| !is_leader(m) && parent_of(m).as_deref() == parent)
        {
            out.push((depth, m));
            let n = m["name"].as_str().unwrap_or_default();
            if depth < members.len() {
                walk(Some(n), depth + 1, members, parent_of, is_leader, out);
            }
        }
    }
    if let Some(l) = members.iter().find(|m| is_leader(m)) {
        out.push((0, l));
    }
    let start_depth = usize::from(leader.is_some());
    walk(
        leader.as_deref(),
        start_depth,
        members,
        &parent_of,
        &is_leader,
        &mut out,
    );
    out
}

/// A member's name indented for its depth in the replication tree (`+ n2`, `  + n3`).
pub fn tree_name(depth: usize, name: &str) -> String {
    if depth == 0 {
        name.to_string()
    } else {
        format!("{}+ {name}", "  ".repeat(depth - 1))
    }
}

/// The member table of `list` (or `topology`, in tree order with `+ ` indentation).
pub fn members_table(cluster: &Cluster, extended: bool, topology: bool) -> Table {
    let view = cluster_json(cluster);
    let members: Vec<Value> = view["members"].as_array().cloned().unwrap_or_default();
    let mut columns: Vec<String> = [
        "Cluster",
        "Member",
        "Host",
        "Role",
        "State",
        "TL",
        "Receive LSN",
        "Receive Lag",
        "Replay LSN",
        "Replay Lag",
    ]
    .map(String::from)
    .to_vec();
    let optional = [
        ("Pending restart", "pending_restart"),
        ("Pending restart reason", "pending_restart_reason"),
        ("Scheduled restart", "scheduled_restart"),
        ("Tags", "tags"),
    ];
    for (col, key) in optional {
        if extended || members.iter().any(|m| m.get(key).is_some()) {
            columns.push(col.to_string());
        }
    }
    let hosts: Vec<&str> = members.iter().filter_map(|m| m["host"].as_str()).collect();
    let mut distinct = hosts.clone();
    distinct.sort();
    distinct.dedup();
    let with_port = members
        .iter()
        .any(|m| m["port"].as_u64().is_some_and(|p| p != 5432))
        || distinct.len() < hosts.len();
    let ordered: Vec<(usize, &Value)> = if topology {
        topology_order(&members)
    } else {
        members.iter().map(|m| (0, m)).collect()
    };
    let rows = ordered
        .into_iter()
        .map(|(depth, m)| {
            let name = m["name"].as_str().unwrap_or_default();
            let member = tree_name(depth, name);
            let host = match (m["host"].as_str(), m["port"].as_u64()) {
                (Some(h), Some(p)) if with_port => format!("{h}:{p}"),
                (Some(h), _) => h.to_string(),
                _ => String::new(),
            };
            let reason = m["pending_restart_reason"]
                .as_object()
                .map(|r| {
                    r.iter()
                        .map(|(k, v)| {
                            format!(
                                "{k}: {}->{}",
                                v["old_value"].as_str().unwrap_or_default(),
                                v["new_value"].as_str().unwrap_or_default()
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                })
                .unwrap_or_default();
            let scheduled = m["scheduled_restart"]
                .as_object()
                .map(|s| {
                    let mut v = s
                        .get("schedule")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string();
                    if let Some(ver) = s.get("postgres_version").and_then(Value::as_str) {
                        v.push_str(&format!(" if version < {ver}"));
                    }
                    v
                })
                .unwrap_or_default();
            let mut row = vec![
                json!(cluster.scope),
                json!(member),
                json!(host),
                json!(title_case(m["role"].as_str().unwrap_or_default())),
                json!(m["state"].as_str().unwrap_or_default()),
                m.get("timeline").cloned().unwrap_or(json!("")),
                lsn_cell(m.get("receive_lsn")),
                lag_mb(m.get("receive_lag")),
                lsn_cell(m.get("replay_lsn")),
                lag_mb(m.get("replay_lag")),
            ];
            for (col, key) in optional {
                if !columns.iter().any(|c| c == col) {
                    continue;
                }
                row.push(match key {
                    "pending_restart" => json!(if m.get(key).is_some() { "*" } else { "" }),
                    "pending_restart_reason" => json!(reason),
                    "scheduled_restart" => json!(scheduled),
                    _ => json!(m["tags"].as_object().map(tags_cell).unwrap_or_default()),
                });
            }
            row
        })
        .collect();
    let mut footer = Vec::new();
    if view.get("pause").is_some() {
        footer.push("Maintenance mode: on".to_string());
    }
    if let Some(s) = view.get("scheduled_switchover") {
        let mut line = format!(
            "Switchover scheduled at: {}",
            s["at"].as_str().unwrap_or_default()
        );
        for k in ["from", "to"] {
            if let Some(v) = s[k].as_str() {
                line.push_str(&format!("\n{k:>24}: {v}"));
            }
        }
        footer.push(line);
    }
    Table {
        title: format!(
            " Cluster: {} ({}) ",
            cluster.scope,
            initialize_label(cluster)
        ),
        columns,
        rows,
        footer,
    }
}

/// The `history` table: TL, LSN (as a number, as patronictl prints it), Reason, Timestamp,
/// New Leader.
pub fn history_table(cluster: &Cluster) -> Table {
    Table {
        title: String::new(),
        columns: ["TL", "LSN", "Reason", "Timestamp", "New Leader"]
            .map(String::from)
            .to_vec(),
        rows: cluster
            .history
            .iter()
            .map(|e| {
                vec![
                    json!(e.timeline),
                    json!(e.lsn),
                    json!(e.reason),
                    json!(e.timestamp.clone().unwrap_or_default()),
                    json!(e.new_leader.clone().unwrap_or_default()),
                ]
            })
            .collect(),
        footer: Vec::new(),
    }
}

/// The cluster journal (see [`crate::journal`]), newest first: time (UTC), member, what.
pub fn journal_table(entries: &[crate::journal::Entry]) -> Table {
    Table {
        title: String::new(),
        columns: ["Time", "Member", "Event"].map(String::from).to_vec(),
        rows: entries
            .iter()
            .map(|e| {
                let time = chrono::DateTime::from_timestamp_millis(e.at_ms)
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                    .unwrap_or_default();
                vec![json!(time), json!(e.member), json!(e.text)]
            })
            .collect(),
        footer: Vec::new(),
    }
}

fn cell_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Renders tables in one format. Pretty tables of members drop the Cluster column (it is in the
/// title) and merge the lag headers to `Lag`, as patronictl does; JSON and YAML give a list of
/// objects keyed by column, without empty cells.
pub fn render(tables: &[Table], format: Format) -> String {
    match format {
        Format::Json => {
            let all: Vec<Value> = tables.iter().flat_map(objects).collect();
            format!("{}\n", Value::Array(all))
        }
        Format::Yaml => {
            let all: Vec<Value> = tables.iter().flat_map(objects).collect();
            serde_saphyr::to_string(&Value::Array(all)).unwrap_or_default()
        }
        Format::Tsv => {
            let mut out = String::new();
            for (i, t) in tables.iter().enumerate() {
                if i == 0 {
                    out.push_str(&t.columns.join("\t"));
                    out.push('\n');
                }
                for r in &t.rows {
                    let cells: Vec<String> = r
                        .iter()
                        .map(|c| cell_text(c).replace(['\t', '\n'], " "))
                        .collect();
                    out.push_str(&cells.join("\t"));
                    out.push('\n');
                }
            }
            out
        }
        Format::Pretty => tables.iter().map(pretty).collect::<Vec<_>>().join(""),
    }
}

fn objects(t: &Table) -> Vec<Value> {
    t.rows
        .iter()
        .map(|r| {
            let mut o = Map::new();
            for (c, v) in t.columns.iter().zip(r) {
                // member tables drop empty cells, as patronictl does
                if !t.title.is_empty() && cell_text(v).is_empty() {
                    continue;
                }
                o.insert(c.clone(), v.clone());
            }
            Value::Object(o)
        })
        .collect()
}

/// A box-drawn table (ASCII, so it survives any terminal and pager), with the title set into
/// the top border.
fn pretty(t: &Table) -> String {
    let member_table = t.columns.first().is_some_and(|c| c == "Cluster") && !t.title.is_empty();
    let skip = usize::from(member_table);
    let columns: Vec<String> = t.columns[skip.min(t.columns.len())..]
        .iter()
        .map(|c| {
            if member_table && (c == "Receive Lag" || c == "Replay Lag") {
                "Lag".to_string()
            } else {
                c.clone()
            }
        })
        .collect();
    let right = ["TL", "Receive LSN", "Replay LSN", "Lag", "LSN"];
    let rows: Vec<Vec<Vec<String>>> = t
        .rows
        .iter()
        .map(|r| {
            r[skip.min(r.len())..]
                .iter()
                .map(|c| cell_text(c).lines().map(str::to_string).collect())
                .collect()
        })
        .collect();
    let mut widths: Vec<usize> = columns.iter().map(|c| c.chars().count()).collect();
    for r in &rows {
        for (i, cell) in r.iter().enumerate() {
            for line in cell {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(line.chars().count());
                }
            }
        }
    }
    let rule: String = {
        let parts: Vec<String> = widths.iter().map(|w| "-".repeat(w + 2)).collect();
        format!("+{}+", parts.join("+"))
    };
    let mut out = String::new();
    // the title replaces the start of the top rule
    if t.title.is_empty() || t.title.chars().count() + 2 > rule.chars().count() {
        out.push_str(&rule);
        if !t.title.is_empty() {
            out.push_str(&format!("\n|{}", t.title));
        }
    } else {
        let tail: String = rule.chars().skip(t.title.chars().count() + 1).collect();
        out.push('+');
        out.push_str(&t.title);
        out.push_str(&tail);
    }
    out.push('\n');
    let line = |cells: Vec<String>| -> String {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let w = widths[i];
                if right.contains(&columns[i].as_str()) {
                    format!(" {c:>w$} ")
                } else {
                    format!(" {c:<w$} ")
                }
            })
            .collect();
        format!("|{}|\n", parts.join("|"))
    };
    out.push_str(&line(columns.clone()));
    out.push_str(&rule);
    out.push('\n');
    let multi = rows.iter().any(|r| r.iter().any(|c| c.len() > 1));
    for (ri, r) in rows.iter().enumerate() {
        let height = r.iter().map(Vec::len).max().unwrap_or(1).max(1);
        for h in 0..height {
            out.push_str(&line(
                (0..columns.len())
                    .map(|i| r.get(i).and_then(|c| c.get(h)).cloned().unwrap_or_default())
                    .collect(),
            ));
        }
        if multi && ri + 1 < rows.len() {
            out.push_str(&rule);
            out.push('\n');
        }
    }
    out.push_str(&rule);
    out.push('\n');
    for f in &t.footer {
        out.push(' ');
        out.push_str(&f.replace('\n', "\n "));
        out.push('\n');
    }
    out
}

/// `host=<h> port=<p>` of a member's `conn_url`, as `patronictl dsn` prints it.
pub fn dsn(cluster: &Cluster, member: &str) -> Option<String> {
    let (h, p) = cluster.member(member)?.data.host_port()?;
    Some(format!("host={h} port={p}"))
}

/// An LSN as PostgreSQL prints it.
pub fn lsn(v: u64) -> String {
    Lsn(v).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dcs::{Leader, Member, MemberData, Status};

    fn member(name: &str, port: u16, role: &str, xlog: Option<u64>) -> Member {
        Member {
            name: name.into(),
            data: MemberData {
                conn_url: format!("postgres://127.0.0.1:{port}/postgres"),
                api_url: format!("http://127.0.0.1:{}/patroni", port + 1000),
                state: "running".into(),
                role: role.into(),
                timeline: Some(2),
                xlog_location: xlog,
                replication_state: (role == "replica").then(|| "streaming".into()),
                ..Default::default()
            },
            lease: 1,
            mod_revision: 1,
        }
    }

    fn cluster() -> Cluster {
        let mut c = Cluster {
            scope: "demo".into(),
            initialize: Some("7449".into()),
            leader: Some(Leader {
                name: "n1".into(),
                lease: 1,
                mod_revision: 1,
            }),
            members: vec![
                member("n1", 5432, "primary", Some(50 << 20)),
                member("n2", 5433, "replica", Some(40 << 20)),
                member("n3", 5434, "replica", Some(50 << 20)),
            ],
            status: Status {
                optime: Some(50 << 20),
                ..Default::default()
            },
            ..Default::default()
        };
        c.members[2]
            .data
            .tags
            .insert("replicatefrom".into(), json!("n2"));
        c
    }

    #[test]
    fn list_rows_match_patronictl() {
        let t = members_table(&cluster(), false, false);
        assert_eq!(t.title, " Cluster: demo (7449) ");
        assert_eq!(t.columns.last().map(String::as_str), Some("Tags"));
        assert_eq!(t.rows[0][1], "n1");
        assert_eq!(t.rows[0][2], "127.0.0.1:5432");
        assert_eq!(t.rows[0][3], "Leader");
        assert_eq!(t.rows[0][4], "running");
        assert_eq!(t.rows[0][5], 2);
        assert_eq!(t.rows[0][6], "");
        assert_eq!(t.rows[1][3], "Replica");
        assert_eq!(t.rows[1][4], "streaming");
        assert_eq!(t.rows[1][6], "0/2800000");
        assert_eq!(t.rows[1][7], 10);
        let text = render(std::slice::from_ref(&t), Format::Pretty);
        assert!(text.starts_with("+ Cluster: demo (7449) --"), "{text}");
        assert!(text.contains("| Member | Host"), "{text}");
        assert!(!text.contains("| demo"), "{text}");
        let json: Value =
            serde_json::from_str(&render(std::slice::from_ref(&t), Format::Json)).unwrap();
        assert_eq!(json[0]["Member"], "n1");
        assert!(json[0].get("Receive LSN").is_none(), "empty cells dropped");
        assert_eq!(json[1]["Receive Lag"], 10);
        let tsv = render(&[t], Format::Tsv);
        assert!(tsv.starts_with("Cluster\tMember\tHost\tRole"), "{tsv}");
    }

    #[test]
    fn topology_nests_cascaded_replicas() {
        let t = members_table(&cluster(), false, true);
        let names: Vec<&str> = t.rows.iter().map(|r| r[1].as_str().unwrap()).collect();
        assert_eq!(names, vec!["n1", "+ n2", "  + n3"]);
    }

    #[test]
    fn paused_and_uninitialized_clusters_say_so() {
        let mut c = cluster();
        c.initialize = None;
        c.config = Some(crate::dcs::Versioned {
            value: crate::dcs::DynamicConfig::parse(r#"{"pause":true}"#).unwrap(),
            mod_revision: 1,
        });
        let t = members_table(&c, true, false);
        assert!(t.title.contains("(uninitialized)"));
        assert_eq!(t.footer, vec!["Maintenance mode: on".to_string()]);
        assert!(t.columns.iter().any(|c| c == "Pending restart"));
    }
}
