//! Fixtures shared by the agent's unit tests.

/// A minimal valid configuration.
pub const MIN_YAML: &str = "
scope: demo
name: n1
restapi: {listen: 127.0.0.1:8008, connect_address: 127.0.0.1:8008}
etcd3: {hosts: 127.0.0.1:2379}
postgresql:
  listen: 127.0.0.1:5432
  connect_address: 127.0.0.1:5432
  data_dir: /tmp/pgpilot-test/n1
  authentication:
    superuser: {username: postgres, password: secret}
    replication: {username: replicator, password: rep-pass}
";

/// A `raft:` section: this member at `self_addr`, its data under `data_dir`, two partners,
/// nothing else set.
pub fn raft_section(data_dir: &str, self_addr: &str) -> shared::config::RaftConfig {
    shared::config::RaftConfig {
        data_dir: data_dir.into(),
        self_addr: self_addr.into(),
        partner_addrs: ["10.0.0.1:5010", "10.0.0.2:5010", "10.0.0.3:5010"]
            .into_iter()
            .filter(|a| *a != self_addr)
            .map(String::from)
            .collect(),
        bind_addr: None,
        password: None,
        client_port: 5011,
        election_ms: None,
        heartbeat_ms: None,
        tls: None,
    }
}
