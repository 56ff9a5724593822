//! What `pg_controldata` says about a data directory: system identifier, cluster state,
//! timeline, last checkpoint, and whether pg_rewind could work (wal_log_hints or checksums).

use shared::types::Lsn;

/// What `pg_controldata` says about a data directory.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ControlData {
    pub system_identifier: String,
    pub cluster_state: String,
    pub timeline: Option<u64>,
    pub checkpoint_lsn: Option<Lsn>,
    pub wal_log_hints: bool,
    pub data_checksums: bool,
}

impl ControlData {
    /// Parses `pg_controldata` output (run with `LC_ALL=C`).
    pub fn parse(text: &str) -> ControlData {
        let mut c = ControlData::default();
        for line in text.lines() {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let v = v.trim();
            match k.trim() {
                "Database system identifier" => c.system_identifier = v.to_string(),
                "Database cluster state" => c.cluster_state = v.to_string(),
                "Latest checkpoint's TimeLineID" => c.timeline = v.parse().ok(),
                "Latest checkpoint location" => c.checkpoint_lsn = v.parse().ok(),
                "wal_log_hints setting" => c.wal_log_hints = v == "on",
                "Data page checksum version" => c.data_checksums = v != "0",
                _ => {}
            }
        }
        c
    }

    /// Whether the server last ran as a primary.
    pub fn was_primary(&self) -> bool {
        matches!(self.cluster_state.as_str(), "in production" | "shut down")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controldata_parses() {
        let text = "pg_control version number:            1300\n\
Database system identifier:           7449876543210987654\n\
Database cluster state:               shut down in recovery\n\
Latest checkpoint location:           0/5000060\n\
Latest checkpoint's TimeLineID:       3\n\
wal_log_hints setting:                on\n\
Data page checksum version:           0\n";
        let c = ControlData::parse(text);
        assert_eq!(c.system_identifier, "7449876543210987654");
        assert_eq!(c.timeline, Some(3));
        assert_eq!(c.checkpoint_lsn, Some(Lsn(0x5000060)));
        assert!(c.wal_log_hints);
        assert!(!c.data_checksums);
        assert!(!c.was_primary());
        assert!(ControlData::parse("Database cluster state: in production").was_primary());
    }
}
