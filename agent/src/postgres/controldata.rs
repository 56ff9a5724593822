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
    /// `Minimum recovery ending location` and its timeline (0/0 and 0 when unset).
    pub min_recovery_lsn: Option<Lsn>,
    pub min_recovery_timeline: Option<u64>,
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
                "Minimum recovery ending location" => c.min_recovery_lsn = v.parse().ok(),
                "Min recovery ending loc's timeline" => c.min_recovery_timeline = v.parse().ok(),
                "wal_log_hints setting" => c.wal_log_hints = v == "on",
                "Data page checksum version" => c.data_checksums = v != "0",
                _ => {}
            }
        }
        c
    }

    /// Whether the server stopped cleanly (as a primary or in recovery).
    pub fn clean_shutdown(&self) -> bool {
        matches!(
            self.cluster_state.as_str(),
            "shut down" | "shut down in recovery"
        )
    }

    /// Where the local WAL ends, as far as pg_control tells: `(timeline, first byte past the last
    /// record)`. `None` for a primary that did not shut down cleanly (its WAL may run past the
    /// last checkpoint). A clean primary's last record is its shutdown checkpoint, which starts at
    /// the checkpoint location: one byte past that start is enough to compare with a fork point,
    /// which always lies on a record boundary.
    pub fn wal_end(&self) -> Option<(u64, u64)> {
        let tl = self.timeline?;
        let ckpt = self.checkpoint_lsn?.0;
        if self.was_primary() && !self.clean_shutdown() {
            return None;
        }
        let min = self.min_recovery_lsn.map_or(0, |l| l.0);
        if min > ckpt {
            Some((self.min_recovery_timeline.unwrap_or(tl).max(tl), min))
        } else {
            Some((tl, ckpt.saturating_add(1)))
        }
    }

    /// Whether the server last ran as a primary.
    pub fn was_primary(&self) -> bool {
        matches!(
            self.cluster_state.as_str(),
            "in production" | "shut down" | "in crash recovery"
        )
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
        // a replica: the WAL ends at the minimum recovery point when that is further
        assert_eq!(c.wal_end(), Some((3, 0x5000061)));
        let r = ControlData::parse(&format!(
            "{text}Minimum recovery ending location:     0/6000000\nMin recovery ending loc's timeline:   4\n"
        ));
        assert_eq!(r.wal_end(), Some((4, 0x6000000)));
        // a crashed primary: unknown
        let crashed = text.replace("shut down in recovery", "in production");
        assert_eq!(ControlData::parse(&crashed).wal_end(), None);
        let clean = text.replace("shut down in recovery", "shut down");
        assert_eq!(ControlData::parse(&clean).wal_end(), Some((3, 0x5000061)));
    }
}
