//! The cluster journal a console opened after an incident reads: what each agent recorded
//! (its `GET /journal`: decisions, promotions, demotions, rewinds, clones, with times) merged
//! with what etcd keeps (the `history` key: each timeline's end, its time and new leader).
//! One implementation for the live console's Events tab and `--batch events`.

use crate::api::MemberClient;
use crate::dcs::Cluster;
use serde_json::{Value, json};
use std::time::Duration;

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    /// Unix time in milliseconds.
    pub at_ms: i64,
    /// The member that recorded it, or `(history)` for the `history` key.
    pub member: String,
    pub text: String,
}

impl Entry {
    /// `HH:MM:SS` (UTC) of the day, or the whole date when not today.
    pub fn clock(&self, now_ms: i64) -> String {
        let Some(t) = chrono::DateTime::from_timestamp_millis(self.at_ms) else {
            return "?".into();
        };
        let today = chrono::DateTime::from_timestamp_millis(now_ms)
            .is_some_and(|n| n.date_naive() == t.date_naive());
        if today {
            t.format("%H:%M:%S").to_string()
        } else {
            t.format("%Y-%m-%d %H:%M:%S").to_string()
        }
    }

    pub fn json(&self) -> Value {
        let time = chrono::DateTime::from_timestamp_millis(self.at_ms)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        json!({"time": time, "at_ms": self.at_ms, "member": self.member, "text": self.text})
    }
}

/// The `history` key as journal lines: who led each timeline from when, and how it ended.
pub fn from_history(cluster: &Cluster) -> Vec<Entry> {
    let mut out = Vec::new();
    for h in &cluster.history {
        let Some(at_ms) = h
            .timestamp
            .as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.timestamp_millis())
        else {
            continue;
        };
        let leader = h
            .new_leader
            .as_deref()
            .map(|l| format!(", {l} leads timeline {}", h.timeline.saturating_add(1)))
            .unwrap_or_default();
        let reason = if h.reason.is_empty() || h.reason == "no recovery target specified" {
            String::new()
        } else {
            format!(" ({})", h.reason)
        };
        out.push(Entry {
            at_ms,
            member: "(history)".into(),
            text: format!(
                "timeline {} ended at {}{leader}{reason}",
                h.timeline,
                crate::types::Lsn(h.lsn)
            ),
        });
    }
    out
}

/// An agent's `GET /journal` answer as journal lines (garbage is skipped).
/// An agent's `GET /journal` answer as journal lines: the last [`KEPT`] of them, each text cut
/// at 500 characters (garbage is skipped).
pub fn from_agent(member: &str, body: &Value) -> Vec<Entry> {
    let member: String = member.chars().take(100).collect();
    let Some(list) = body["entries"].as_array() else {
        return Vec::new();
    };
    list[list.len().saturating_sub(KEPT)..]
        .iter()
        .filter_map(|e| {
            Some(Entry {
                at_ms: e["at_ms"].as_i64()?,
                member: member.clone(),
                text: e["text"].as_str()?.chars().take(500).collect(),
            })
        })
        .collect()
}

/// How many entries of one member are read (an agent keeps as many).
pub const KEPT: usize = 300;

/// A journal answer larger than this is not read.
const MAX_BODY: usize = 1 << 20;

/// The journal of `cluster`: every reachable member's entries (asked concurrently, each within
/// `timeout`) and the history key's, newest first, repeats removed. Members that did not
/// answer are returned by name.
pub async fn collect(
    cluster: &Cluster,
    client: &MemberClient,
    timeout: Duration,
) -> (Vec<Entry>, Vec<String>) {
    let mut asks = tokio::task::JoinSet::new();
    for m in cluster
        .members
        .iter()
        .filter(|m| !m.data.api_url.is_empty())
    {
        let (client, name, url) = (client.clone(), m.name.clone(), m.data.api_url.clone());
        asks.spawn(async move {
            let entries = read(&client, &url, timeout).await.map(|(_, e)| e);
            (name, entries)
        });
    }
    let mut all = from_history(cluster);
    let mut silent = Vec::new();
    while let Some(r) = asks.join_next().await {
        match r {
            Ok((_, Some(entries))) => all.extend(entries),
            Ok((name, None)) => silent.push(name),
            Err(_) => {}
        }
    }
    silent.sort();
    (merge(all), silent)
}

/// One member's journal at `api_url` (its `/patroni` address): the name it gives and its
/// entries; `None` when it does not answer with one in `timeout`.
pub async fn read(
    client: &MemberClient,
    api_url: &str,
    timeout: Duration,
) -> Option<(String, Vec<Entry>)> {
    let answer = client
        .call(
            reqwest::Method::GET,
            api_url,
            "/journal",
            &Value::Null,
            None,
            timeout,
        )
        .await;
    let body: Value = match answer {
        Ok((200, text)) if text.len() <= MAX_BODY => serde_json::from_str(&text).ok()?,
        _ => return None,
    };
    let member = body["member"].as_str()?.to_string();
    let entries = from_agent(&member, &body);
    Some((member, entries))
}

/// Newest first, each line once.
pub fn merge(mut entries: Vec<Entry>) -> Vec<Entry> {
    entries.sort_by(|a, b| b.cmp(a));
    entries.dedup();
    entries
}
