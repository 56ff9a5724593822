//! pgBackRest, for the backup tests and the replica-build benchmark.

use crate::*;
use anyhow::Result;
use std::path::{Path, PathBuf};
use std::process::Command;

// pgBackRest, for the backup tests and the replica-build benchmark.

/// Runs `pgbackrest` with `args` as the agents' user; its output when it fails.
pub fn pgbackrest(args: &[&str]) -> Result<String, String> {
    let mut cmd = if is_root() {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "pgbackrest",
        ]);
        c
    } else {
        Command::new("pgbackrest")
    };
    let out = cmd
        .args(args)
        .output()
        .map_err(|e| format!("cannot run pgbackrest: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

/// A pgBackRest configuration for one member: the shared repository, the member's own data
/// directory, port and socket.
pub fn backrest_conf(dir: &Path, repo: &Path, stanza: &str, node: &Node) -> PathBuf {
    let path = dir.join("pgbackrest.conf");
    let logs = dir.join("pgbackrest");
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::write(
        &path,
        format!(
            "[global]\nrepo1-path={}\nlog-path={}\nlock-path={}\nlog-level-console=info\nlog-level-file=off\nstart-fast=y\narchive-timeout=60\n\n[{stanza}]\npg1-path={}\npg1-port={}\npg1-socket-path={}\npg1-user=postgres\n",
            repo.display(),
            logs.display(),
            logs.display(),
            node.data_dir.display(),
            node.pg_port,
            dir.display()
        ),
    )
    .unwrap();
    chown_postgres(dir).unwrap();
    path
}

/// The member's YAML with seed 000's settings: archiving through pgBackRest, the pgbackrest
/// replica method before basebackup, and restore_command for replicas.
pub fn with_backrest(yaml: &str, conf: &Path, stanza: &str) -> String {
    let conf = conf.display();
    yaml.replace(
        "    fsync: 'off'\n",
        &format!(
            "    fsync: 'off'\n    archive_mode: 'on'\n    archive_command: pgbackrest --config={conf} --stanza={stanza} archive-push %p\n"
        ),
    )
    .replace(
        "  pg_hba:\n",
        &format!(
            "  create_replica_methods:\n    - pgbackrest\n    - basebackup\n  pgbackrest:\n    command: pgbackrest --config={conf} --stanza={stanza} --log-level-file=off --delta restore\n    keep_data: true\n    no_params: true\n  recovery_conf:\n    restore_command: pgbackrest --config={conf} --stanza={stanza} archive-get %f \"%p\"\n  pg_hba:\n"
        ),
    )
}
