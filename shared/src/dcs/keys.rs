//! The Patroni key layout under `/<namespace>/<scope>/`: one function per key, so no other module
//! spells a key path by hand.

/// `/<namespace>/<scope>/`, joining with `/` and collapsing repeated slashes, so `service` and
/// `/service/` give the same prefix.
pub fn cluster_prefix(namespace: &str, scope: &str) -> String {
    let joined = format!("/{namespace}/{scope}/");
    collapse(&joined)
}

/// `/<namespace>/`, the prefix holding every cluster of a namespace.
pub fn namespace_prefix(namespace: &str) -> String {
    collapse(&format!("/{namespace}/"))
}

fn collapse(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c == '/' && out.ends_with('/') {
            continue;
        }
        out.push(c);
    }
    out
}

pub const INITIALIZE: &str = "initialize";
pub const CONFIG: &str = "config";
pub const LEADER: &str = "leader";
pub const MEMBERS: &str = "members/";
pub const STATUS: &str = "status";
pub const OPTIME_LEADER: &str = "optime/leader";
pub const HISTORY: &str = "history";
pub const SYNC: &str = "sync";
pub const FAILOVER: &str = "failover";
pub const FAILSAFE: &str = "failsafe";

/// Key of one member.
pub fn member(prefix: &str, name: &str) -> String {
    format!("{prefix}{MEMBERS}{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_collapse_slashes() {
        assert_eq!(cluster_prefix("/service", "demo"), "/service/demo/");
        assert_eq!(cluster_prefix("service", "demo"), "/service/demo/");
        assert_eq!(cluster_prefix("/service/", "demo"), "/service/demo/");
        assert_eq!(namespace_prefix("service"), "/service/");
        assert_eq!(member("/service/demo/", "n1"), "/service/demo/members/n1");
    }
}
