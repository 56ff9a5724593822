//! Small domain types shared by every part of pgpilot: WAL positions (LSN), roles, PostgreSQL
//! states, replication slot names and size units. Each is parsed and formatted in exactly one place.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A WAL position in bytes, as PostgreSQL's `pg_lsn` and Patroni's integer `xlog_location`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    /// Formats as PostgreSQL does: upper-case hex halves, no zero padding (`0/5000060`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// Error for a string that is not an `X/X` LSN.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid LSN {0:?}: expected two hex numbers separated by '/'")]
pub struct LsnParseError(pub String);

impl FromStr for Lsn {
    type Err = LsnParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || LsnParseError(s.to_string());
        let (hi, lo) = s.trim().split_once('/').ok_or_else(err)?;
        let hi = u64::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u64::from_str_radix(lo, 16).map_err(|_| err())?;
        if hi > 0xFFFF_FFFF || lo > 0xFFFF_FFFF {
            return Err(err());
        }
        Ok(Lsn((hi << 32) | lo))
    }
}

/// The role a member publishes in its member key and REST answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Primary,
    Replica,
    StandbyLeader,
    Demoted,
    Uninitialized,
    Promoted,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
            Role::StandbyLeader => "standby_leader",
            Role::Demoted => "demoted",
            Role::Uninitialized => "uninitialized",
            Role::Promoted => "promoted",
        }
    }

    /// Parses a role as written by Patroni or pgpilot; the legacy `master` means primary.
    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "primary" | "master" => Role::Primary,
            "replica" => Role::Replica,
            "standby_leader" => Role::StandbyLeader,
            "demoted" => Role::Demoted,
            "uninitialized" => Role::Uninitialized,
            "promoted" => Role::Promoted,
            _ => return None,
        })
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// PostgreSQL state as Patroni names it (member key `state`, `/patroni` `state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PgState {
    Initdb,
    InitdbFailed,
    CustomBootstrap,
    CustomBootstrapFailed,
    CreatingReplica,
    Running,
    Starting,
    BootstrapStarting,
    StartFailed,
    Restarting,
    RestartFailed,
    Stopping,
    Stopped,
    StopFailed,
    Crashed,
    /// pg_rewind is rewinding the data directory (pgpilot's own state).
    Rewinding,
    /// Running but not queryable (REST only).
    Unknown,
}

impl PgState {
    pub fn as_str(self) -> &'static str {
        match self {
            PgState::Initdb => "initializing new cluster",
            PgState::InitdbFailed => "initdb failed",
            PgState::CustomBootstrap => "running custom bootstrap script",
            PgState::CustomBootstrapFailed => "custom bootstrap failed",
            PgState::CreatingReplica => "creating replica",
            PgState::Running => "running",
            PgState::Starting => "starting",
            PgState::BootstrapStarting => "starting after custom bootstrap",
            PgState::StartFailed => "start failed",
            PgState::Restarting => "restarting",
            PgState::RestartFailed => "restart failed",
            PgState::Stopping => "stopping",
            PgState::Stopped => "stopped",
            PgState::StopFailed => "stop failed",
            PgState::Crashed => "crashed",
            PgState::Rewinding => "rewinding",
            PgState::Unknown => "unknown",
        }
    }

    /// Index used by the `patroni_postgres_state` metric (−1 when unknown).
    pub fn metric_index(self) -> i32 {
        match self {
            PgState::Initdb => 0,
            PgState::InitdbFailed => 1,
            PgState::CustomBootstrap => 2,
            PgState::CustomBootstrapFailed => 3,
            PgState::CreatingReplica => 4,
            PgState::Running => 5,
            PgState::Starting => 6,
            PgState::BootstrapStarting => 7,
            PgState::StartFailed => 8,
            PgState::Restarting => 9,
            PgState::RestartFailed => 10,
            PgState::Stopping => 11,
            PgState::Stopped => 12,
            PgState::StopFailed => 13,
            PgState::Crashed => 14,
            PgState::Rewinding => 15,
            PgState::Unknown => -1,
        }
    }

    pub fn parse(s: &str) -> Option<PgState> {
        const ALL: [PgState; 17] = [
            PgState::Initdb,
            PgState::InitdbFailed,
            PgState::CustomBootstrap,
            PgState::CustomBootstrapFailed,
            PgState::CreatingReplica,
            PgState::Running,
            PgState::Starting,
            PgState::BootstrapStarting,
            PgState::StartFailed,
            PgState::Restarting,
            PgState::RestartFailed,
            PgState::Stopping,
            PgState::Stopped,
            PgState::StopFailed,
            PgState::Crashed,
            PgState::Rewinding,
            PgState::Unknown,
        ];
        ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl fmt::Display for PgState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The physical replication slot name of a member: lower case, `-` and `.` become `_`, any other
/// character outside `[a-z0-9_]` becomes `u` followed by its code point in 4 decimal digits,
/// truncated to 63 characters.
pub fn slot_name(member: &str) -> String {
    let mut out = String::with_capacity(member.len());
    for c in member.chars().flat_map(char::to_lowercase) {
        match c {
            'a'..='z' | '0'..='9' | '_' => out.push(c),
            '-' | '.' => out.push('_'),
            other => out.push_str(&format!("u{:04}", other as u32)),
        }
    }
    out.chars().take(63).collect()
}

/// Parses a byte size with an optional unit (`16MB`, `1024`, `1 kB`), as the `?lag=` query
/// parameter and `maximum_lag_on_failover` accept. Units are powers of 1024, as in PostgreSQL.
pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "kB" | "KB" | "k" | "K" => 1 << 10,
        "MB" | "M" => 1 << 20,
        "GB" | "G" => 1 << 30,
        "TB" | "T" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// Parses a duration in seconds with an optional unit (`30`, `30s`, `30min`, `2h`, `1d`), as
/// Patroni accepts for `member_slots_ttl`.
pub fn parse_seconds(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult = match unit.trim() {
        "" | "s" => 1,
        "ms" => return Some(n / 1000),
        "min" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_formats_like_postgres() {
        assert_eq!(Lsn(83886176).to_string(), "0/5000060");
        assert_eq!(Lsn((1 << 32) | 0x10).to_string(), "1/10");
        assert_eq!("0/5000060".parse::<Lsn>(), Ok(Lsn(83886176)));
        assert_eq!("1/10".parse::<Lsn>(), Ok(Lsn((1 << 32) | 0x10)));
        assert!("garbage".parse::<Lsn>().is_err());
        assert!("1/".parse::<Lsn>().is_err());
        assert!("100000000/0".parse::<Lsn>().is_err());
    }

    #[test]
    fn slot_names_follow_patroni() {
        assert_eq!(slot_name("node1"), "node1");
        assert_eq!(slot_name("PG-Node.2"), "pg_node_2");
        assert_eq!(slot_name("a b"), "au0032b");
        assert_eq!(slot_name(&"x".repeat(80)).len(), 63);
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_bytes("16MB"), Some(16 << 20));
        assert_eq!(parse_bytes("1048576"), Some(1048576));
        assert_eq!(parse_bytes("1 kB"), Some(1024));
        assert_eq!(parse_bytes("abc"), None);
        assert_eq!(parse_bytes("5 parsecs"), None);
        assert_eq!(parse_seconds("30min"), Some(1800));
        assert_eq!(parse_seconds("10"), Some(10));
        assert_eq!(parse_seconds("x"), None);
    }

    #[test]
    fn roles_and_states_round_trip() {
        assert_eq!(Role::parse("master"), Some(Role::Primary));
        assert_eq!(
            Role::parse(Role::StandbyLeader.as_str()),
            Some(Role::StandbyLeader)
        );
        assert_eq!(
            PgState::parse("creating replica"),
            Some(PgState::CreatingReplica)
        );
        assert_eq!(PgState::Running.metric_index(), 5);
        assert_eq!(PgState::parse("nonsense"), None);
    }
}
