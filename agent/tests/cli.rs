//! The agent's command line: `--validate-config` exit codes and messages, bad config files.

use std::process::Command;

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pgpilot-agent"))
}

const GOOD: &str = "
scope: demo
name: n1
restapi: {listen: 127.0.0.1:8008, connect_address: 127.0.0.1:8008}
etcd3: {hosts: 127.0.0.1:2379}
postgresql:
  listen: 127.0.0.1:5432
  connect_address: 127.0.0.1:5432
  data_dir: /tmp/pgpilot-cli-test/data
  bin_dir: /usr/lib/postgresql/15/bin
  authentication:
    superuser: {username: postgres, password: very-secret-su}
    replication: {username: replicator, password: very-secret-rep}
";

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn run(args: &[&std::ffi::OsStr]) -> (i32, String, String) {
    let out = agent()
        .args(args)
        .env_remove("PATRONI_CONFIGURATION")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A configuration whose `bin_dir` holds stand-ins for PostgreSQL's programs (validation only
/// looks for them and asks `postgres` its version and parameters): the test needs no
/// PostgreSQL.
fn with_stand_ins(dir: &tempfile::TempDir, version: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    for b in ["pg_ctl", "initdb", "pg_basebackup", "pg_controldata"] {
        std::fs::write(bin.join(b), "").unwrap();
    }
    let postgres = bin.join("postgres");
    std::fs::write(
        &postgres,
        format!(
            "#!/bin/sh\ncase \"$1\" in\n--version) echo 'postgres (PostgreSQL) {version}' ;;\n--describe-config) printf 'wal_keep_size\\tsighup\\tReplication\\tINTEGER\\n' ;;\nesac\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&postgres, std::fs::Permissions::from_mode(0o755)).unwrap();
    write(
        dir,
        "good.yml",
        &GOOD
            .replace("/tmp/pgpilot-cli-test", &dir.path().display().to_string())
            .replace("/usr/lib/postgresql/15/bin", &bin.display().to_string()),
    )
}

#[test]
fn valid_config_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let p = with_stand_ins(&dir, "18.6");
    let (code, out, err) = run(&["--validate-config".as_ref(), p.as_os_str()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("configuration is valid"));
}

#[test]
fn postgresql_older_than_13_exits_two_with_its_version() {
    let dir = tempfile::tempdir().unwrap();
    let p = with_stand_ins(&dir, "12.22");
    let (code, out, err) = run(&["--validate-config".as_ref(), p.as_os_str()]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("postgresql.bin_dir") && err.contains("PostgreSQL 12.22"),
        "{err}"
    );
}

#[test]
fn invalid_yaml_exits_two_with_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(&dir, "bad.yml", "scope: demo\nname: [oops\nrestapi: x\n");
    let (code, _, err) = run(&["--validate-config".as_ref(), p.as_os_str()]);
    assert_eq!(code, 2);
    assert!(
        err.contains("invalid YAML") && err.contains("line"),
        "{err}"
    );
}

#[test]
fn missing_data_dir_and_wrong_bin_dir_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        &dir,
        "nodata.yml",
        &GOOD.replace("  data_dir: /tmp/pgpilot-cli-test/data\n", ""),
    );
    let (code, _, err) = run(&["--validate-config".as_ref(), p.as_os_str()]);
    assert_eq!(code, 2);
    assert!(err.contains("postgresql.data_dir: is required"), "{err}");

    let p = write(
        &dir,
        "nobin.yml",
        &GOOD.replace("/usr/lib/postgresql/15/bin", "/nonexistent/bin"),
    );
    let (code, _, err) = run(&["--validate-config".as_ref(), p.as_os_str()]);
    assert_eq!(code, 2);
    assert!(err.contains("postgresql.bin_dir"), "{err}");
    // the agent itself refuses to start on the same file, before touching anything
    let (code, _, err) = run(&[p.as_os_str()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("postgresql.bin_dir"), "{err}");
}

#[test]
fn secrets_are_not_printed() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        &dir,
        "bad.yml",
        &GOOD.replace("listen: 127.0.0.1:5432", "listen: nowhere"),
    );
    let (code, out, err) = run(&["--validate-config".as_ref(), p.as_os_str()]);
    assert_eq!(code, 2);
    assert!(err.contains("postgresql.listen"), "{err}");
    assert!(!out.contains("very-secret") && !err.contains("very-secret"));
}

#[test]
fn missing_file_and_no_config() {
    let (code, _, err) = run(&["--validate-config".as_ref(), "/nonexistent/x.yml".as_ref()]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot read /nonexistent/x.yml"), "{err}");
    let (code, _, err) = run(&[]);
    assert_eq!(code, 2);
    assert!(err.contains("no configuration"), "{err}");
}

#[test]
fn help_teaches() {
    let (code, out, _) = run(&["--help".as_ref()]);
    assert_eq!(code, 0);
    assert!(
        out.contains("--validate-config") && out.contains("Examples"),
        "{out}"
    );
}

#[test]
fn version_names_the_git_revision_and_docs_are_generated() {
    let out = agent().arg("--version").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.starts_with(concat!(
            "pgpilot-agent ",
            env!("CARGO_PKG_VERSION"),
            " (git "
        )),
        "{text}"
    );
    let out = agent().args(["--completions", "bash"]).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--validate-config"));
    // an unknown shell is a usage error that names the choices
    let out = agent().args(["--completions", "tcsh"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tcsh") && err.contains("bash"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let out = agent().arg("--man-pages").arg(dir.path()).output().unwrap();
    assert!(out.status.success());
    let page = std::fs::read_to_string(dir.path().join("pgpilot-agent.1")).unwrap();
    assert!(page.contains(".TH pgpilot-agent 1"), "{page}");
    assert!(page.contains("validate"), "{page}");
}
