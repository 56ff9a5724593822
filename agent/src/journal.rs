//! This member's journal: what the agent decided and did, with times — each new decision,
//! each finished or failed job — the last [`KEPT`] entries in memory, served at `GET /journal`
//! so that a console opened after an incident can tell the story (see `shared::journal`).

use serde_json::{Value, json};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// How many entries are kept (as many as a console reads).
const KEPT: usize = shared::journal::KEPT;

#[derive(Clone, Default)]
pub struct Journal(Arc<Mutex<VecDeque<(i64, String)>>>);

impl Journal {
    /// Records `text` now.
    pub fn record(&self, text: impl Into<String>) {
        let at_ms = chrono::Utc::now().timestamp_millis();
        let mut q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        q.push_back((at_ms, text.into()));
        while q.len() > KEPT {
            q.pop_front();
        }
    }

    /// The `GET /journal` body: `{"member", "entries": [{"at_ms", "time", "text"}]}`, oldest
    /// first.
    pub fn json(&self, member: &str) -> Value {
        let q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let entries: Vec<Value> = q
            .iter()
            .map(|(at_ms, text)| {
                let time = chrono::DateTime::from_timestamp_millis(*at_ms)
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
                json!({"at_ms": at_ms, "time": time, "text": text})
            })
            .collect();
        json!({"member": member, "entries": entries})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_entries_and_reads_back_through_the_shared_parser() {
        let j = Journal::default();
        for i in 0..(KEPT + 5) {
            j.record(format!("decision {i}"));
        }
        let body = j.json("n1");
        let entries = shared::journal::from_agent("n1", &body);
        assert_eq!(entries.len(), KEPT);
        assert_eq!(entries[0].text, "decision 5");
        assert_eq!(
            entries.last().unwrap().text,
            format!("decision {}", KEPT + 4)
        );
    }
}
