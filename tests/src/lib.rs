//! The end-to-end harness: starts a real etcd and real pgpilot agents (which run real PostgreSQL
//! 15) on loopback ports, as the `postgres` OS user when running as root, inside a private temp
//! directory. Everything started is tracked by PID and stopped on drop. [`demo`] runs the same
//! pieces detached, as a local cluster for a person to look at and break.

pub mod demo;
pub mod raft;
pub mod shot;

mod backrest;
mod cluster;
mod etcd;
mod haproxy;
mod host;
mod http;
mod load;
mod netlab;
mod prereq;
mod tls;
mod tmux;

pub use backrest::*;
pub use cluster::*;
pub use etcd::*;
pub use haproxy::*;
pub use host::*;
pub use http::*;
pub use load::*;
pub use netlab::*;
pub use prereq::*;
pub use tls::*;
pub use tmux::*;

#[cfg(test)]
mod tests {
    use super::ci_requires;

    #[test]
    fn a_missing_prerequisite_fails_only_when_ci_is_set_to_something_true() {
        for ci in ["true", "1", "yes", "TRUE", "github"] {
            assert!(ci_requires(Some(ci)), "CI={ci}");
        }
        for ci in [
            None,
            Some(""),
            Some(" "),
            Some("0"),
            Some("false"),
            Some("False"),
        ] {
            assert!(!ci_requires(ci), "CI={ci:?}");
        }
    }
}
