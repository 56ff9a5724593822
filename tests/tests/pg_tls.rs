//! PostgreSQL served over TLS the way a secured estate runs it: `ssl = on` with a certificate
//! from a private CA, the superuser admitted only with a client certificate (`cert` in
//! pg_hba), replication only over TLS. The agents connect with the superuser's `sslmode:
//! verify-full`, `sslrootcert`, `sslcert`, `sslkey` from `postgresql.authentication`; replicas
//! clone and stream over TLS; a switchover (promotion, the old primary following the new one)
//! works; an agent given the wrong CA says which setting is at fault instead of connecting.

use pgpilot_e2e::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(120);

/// Copies `from` to `dir/name`, mode 0600 and owned by the agents' user (PostgreSQL and libpq
/// refuse keys others can read).
fn private_copy(from: &Path, dir: &Path, name: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let to = dir.join(name);
    std::fs::copy(from, &to).unwrap();
    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).unwrap();
    chown_postgres(&to).unwrap();
    to
}

/// The number of this server's sessions that use TLS and match `filter` (SQL on
/// pg_stat_activity `a` and pg_stat_ssl `s`).
fn tls_sessions(node: &Node, filter: &str) -> usize {
    let q = format!(
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE s.ssl AND {filter}"
    );
    sql(node, &q)
        .ok()
        .and_then(|r| r.first().and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

#[test]
fn agents_reach_postgresql_over_tls_with_client_certificates() {
    if !prerequisites() || !need_program("openssl", "openssl") {
        return;
    }
    let ca = TestCa::new("pg").unwrap();
    let (server_cert, server_key) = ca.issue("pg", "127.0.0.1").unwrap();
    let (client_cert, client_key) = ca.issue("superuser", "postgres").unwrap();
    let spec = ClusterSpec {
        scope: "pgtls".into(),
        ..Default::default()
    };
    let mut lab = Lab::new("pgtls", spec, true).unwrap();
    let files = lab.work.path.join("tls");
    std::fs::create_dir_all(&files).unwrap();
    chown_postgres(&files).unwrap();
    let server_key = private_copy(&server_key, &files, "pg.key");
    let client_key = private_copy(&client_key, &files, "superuser.key");
    for n in &lab.cluster.nodes {
        let yaml = std::fs::read_to_string(&n.config_path).unwrap();
        let yaml = yaml
            .replace(
                "    fsync: 'off'\n",
                &format!(
                    "    fsync: 'off'\n    ssl: 'on'\n    ssl_cert_file: {}\n    ssl_key_file: {}\n    ssl_ca_file: {}\n",
                    server_cert.display(),
                    server_key.display(),
                    ca.ca().display()
                ),
            )
            .replace(
                "      password: postgres-secret\n",
                &format!(
                    "      password: postgres-secret\n      sslmode: verify-full\n      sslrootcert: {}\n      sslcert: {}\n      sslkey: {}\n",
                    ca.ca().display(),
                    client_cert.display(),
                    client_key.display()
                ),
            )
            .replace(
                "      password: rep-secret\n",
                &format!(
                    "      password: rep-secret\n      sslmode: verify-full\n      sslrootcert: {}\n",
                    ca.ca().display()
                ),
            )
            .replace(
                "    - host replication replicator samenet scram-sha-256\n    - host all all samenet scram-sha-256\n",
                // the superuser over TCP only with its certificate; replication only over TLS;
                // the test's own plain connections with a password
                "    - hostssl all postgres 127.0.0.1/32 cert\n    - hostssl replication replicator 127.0.0.1/32 scram-sha-256\n    - hostnossl replication all 127.0.0.1/32 reject\n    - hostssl all all 127.0.0.1/32 scram-sha-256\n    - hostnossl all all 127.0.0.1/32 scram-sha-256\n",
            );
        assert!(yaml.contains("sslrootcert") && yaml.contains("hostssl all postgres"));
        std::fs::write(&n.config_path, yaml).unwrap();
    }
    lab.cluster.start_all().unwrap();
    let c = &mut lab.cluster;
    let p = c
        .wait_healthy(LONG)
        .map_err(|e| format!("{e}\n{}", c.logs_tail()))
        .unwrap();

    // the agent's own session on each server: TLS, with the superuser's certificate
    for n in &c.nodes {
        wait_for("the agent's TLS session", LONG, || {
            (tls_sessions(
                n,
                "a.application_name = 'pgpilot' AND s.client_dn = '/CN=postgres'",
            ) >= 1)
                .then_some(())
        })
        .map_err(|e| format!("{}: {e}\n{}", n.name, c.logs_tail()))
        .unwrap();
    }
    // both replicas stream over TLS
    assert_eq!(
        tls_sessions(&c.nodes[p], "a.backend_type = 'walsender'"),
        2,
        "{}",
        c.logs_tail()
    );

    // a switchover: promotion and the old primary following the new one, all over TLS
    let cand = (p + 1) % 3;
    let (code, body) = http_call(
        "POST",
        &c.nodes[p].api("/switchover"),
        Some(&json!({"leader": c.nodes[p].name, "candidate": c.nodes[cand].name}).to_string()),
        None,
        LONG,
    )
    .unwrap();
    assert_eq!(code, 200, "{body}\n{}", c.logs_tail());
    wait_for(
        "both replicas streaming from the new primary over TLS",
        LONG,
        || (tls_sessions(&c.nodes[cand], "a.backend_type = 'walsender'") == 2).then_some(()),
    )
    .map_err(|e| format!("{e}\n{}", c.logs_tail()))
    .unwrap();

    // the wrong CA: the agent names the setting instead of connecting
    let wrong = TestCa::new("pgwrong").unwrap();
    let r = (cand + 1) % 3;
    c.stop_agent(r);
    let n = &c.nodes[r];
    let yaml = std::fs::read_to_string(&n.config_path).unwrap();
    std::fs::write(
        &n.config_path,
        yaml.replacen(
            &format!("sslrootcert: {}\n      sslcert", ca.ca().display()),
            &format!("sslrootcert: {}\n      sslcert", wrong.ca().display()),
            1,
        ),
    )
    .unwrap();
    let before = c.nodes[r].log().len();
    c.start_agent(r).unwrap();
    let n = &c.nodes[r];
    wait_for(
        "the agent to name the CA it could not verify with",
        LONG,
        || {
            let log = n.log();
            log.get(before..).and_then(|new| {
                new.lines()
                    .find(|l| {
                        l.contains(&format!("sslrootcert {}", wrong.ca().display()))
                            && l.contains("cannot connect to local PostgreSQL")
                    })
                    .map(str::to_string)
            })
        },
    )
    .map_err(|e| format!("{e}\n{}", c.logs_tail()))
    .unwrap();
}
