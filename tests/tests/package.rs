//! The Debian package, built and installed for real: `agent/debian/build.sh` makes it; `dpkg -i`
//! installs it on this machine (root only); the installed unit passes `systemd-analyze verify`
//! and is neither enabled nor started; `man -l` renders both manual pages; the completions load;
//! the installed `pgpilot-agent --validate-config` accepts the shipped example as `postgres`;
//! `--version` names this checkout's revision; `dpkg -r` removes the programs and leaves the
//! configuration and a data directory alone; `dpkg --purge` leaves them alone too. Prints the
//! package, installed and binary sizes.

use pgpilot_e2e::*;
use std::path::Path;
use std::process::Command;

/// Runs a command; (success, stdout, stderr).
fn run(program: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(program)
        .args(args)
        .env(
            "PATH",
            format!(
                "{}:/usr/sbin:/sbin",
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn must(program: &str, args: &[&str]) -> String {
    let (ok, out, err) = run(program, args);
    assert!(ok, "{program} {args:?} failed:\n{out}\n{err}");
    out
}

fn installed() -> bool {
    run("dpkg-query", &["-W", "-f=${Status}", "pgpilot"])
        .1
        .contains("installed")
        && !run("dpkg-query", &["-W", "-f=${Status}", "pgpilot"])
            .1
            .contains("config-files")
}

const OPERATOR_FILE: &str = "/etc/pgpilot/package-test-operator.yml";
const DATA_DIR: &str = "/var/lib/postgresql/pgpilot-package-test";

/// However the test ends (a failed assert too): the package purged, the test's own files
/// removed, and /etc/pgpilot or /var/lib/postgresql removed again when the test made them.
struct Cleanup {
    made_etc: bool,
    made_var_lib: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = run("dpkg", &["--purge", "pgpilot"]);
        let _ = std::fs::remove_file(OPERATOR_FILE);
        let _ = std::fs::remove_dir_all(DATA_DIR);
        if self.made_etc {
            let _ = std::fs::remove_dir("/etc/pgpilot");
        }
        if self.made_var_lib {
            let _ = std::fs::remove_dir("/var/lib/postgresql");
        }
    }
}

/// Owner, group, mode and modification time: what "left alone" means for a directory.
fn stat(path: &Path) -> (u32, u32, u32, i64, i64) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (m.uid(), m.gid(), m.mode(), m.mtime(), m.mtime_nsec())
}

#[test]
fn the_debian_package_installs_documents_and_removes_cleanly() {
    if !is_root() {
        skip("the package test installs a package with dpkg: run it as root");
        return;
    }
    for (tool, package) in [
        ("dpkg-deb", "dpkg"),
        ("systemd-analyze", "systemd"),
        ("man", "man-db"),
    ] {
        if run("sh", &["-c", &format!("command -v {tool}")])
            .1
            .is_empty()
        {
            skip(&format!(
                "{tool} is not installed (apt-get install {package})"
            ));
            return;
        }
    }
    if !run("cargo", &["deb", "--version"]).0 {
        skip("cargo-deb is not installed (cargo install cargo-deb)");
        return;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let repo = repo.canonicalize().unwrap();
    if installed() {
        // removing it would stop a running agent: this machine is not one to test on
        skip(
            "the pgpilot package is installed on this machine (the test would replace and remove it)",
        );
        return;
    }

    // the package builds, with one command
    let build = repo.join("agent/debian/build.sh");
    let out = must("bash", &[build.to_str().unwrap()]);
    let deb = out
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.ends_with(".deb"))
        .unwrap_or_else(|| panic!("build.sh printed no .deb path: {out}"))
        .to_string();
    assert!(Path::new(&deb).is_file(), "{deb}");
    let fields = must(
        "dpkg-deb",
        &["-f", &deb, "Package", "Installed-Size", "Depends"],
    );
    assert!(fields.contains("Package: pgpilot"), "{fields}");
    let contents = must("dpkg-deb", &["-c", &deb]);
    for path in [
        "./usr/bin/pgpilot-agent",
        "./usr/bin/pgpilot-console",
        "pgpilot-agent.service",
        "./etc/pgpilot/pgpilot.yml.example",
        "./usr/share/man/man1/pgpilot-agent.1.gz",
        "./usr/share/man/man1/pgpilot-console.1.gz",
        "./usr/share/man/man1/pgpilot-console-switchover.1.gz",
        "./usr/share/bash-completion/completions/pgpilot-console",
        "./usr/share/zsh/vendor-completions/_pgpilot-agent",
        "./usr/share/fish/vendor_completions.d/pgpilot-console.fish",
    ] {
        assert!(
            contents.contains(path),
            "{path} missing from the package:\n{contents}"
        );
    }
    for generic in ["./usr/bin/agent\n", "./usr/bin/console\n"] {
        assert!(
            !contents.contains(generic),
            "{generic:?} would clash in /usr/bin"
        );
    }

    // the maintainer scripts start nothing, restart nothing and delete nothing
    let control = tempfile::tempdir().unwrap();
    must("dpkg-deb", &["-e", &deb, control.path().to_str().unwrap()]);
    for script in ["preinst", "postinst", "prerm", "postrm"] {
        let Ok(text) = std::fs::read_to_string(control.path().join(script)) else {
            continue;
        };
        for forbidden in [
            "deb-systemd-invoke start",
            "restart",
            "rm ",
            "/var/lib/postgresql/",
        ] {
            assert!(
                !text.contains(forbidden),
                "{script} has {forbidden:?}:\n{text}"
            );
        }
    }

    // a data directory the package must never touch
    let cleanup = Cleanup {
        made_etc: !Path::new("/etc/pgpilot").exists(),
        made_var_lib: !Path::new("/var/lib/postgresql").exists(),
    };
    let data = Path::new(DATA_DIR);
    std::fs::create_dir_all(data).unwrap();
    std::fs::write(data.join("PG_VERSION"), "15\n").unwrap();
    let var_lib = Path::new("/var/lib/postgresql");
    let before = (stat(var_lib), stat(data));

    must("dpkg", &["-i", &deb]);
    assert!(installed());
    // configurations hold passwords: /etc/pgpilot is root's and the postgres group's only
    if cleanup.made_etc {
        let etc = must("stat", &["-c", "%U:%G:%a", "/etc/pgpilot"]);
        assert_eq!(etc.trim(), "root:postgres:750");
    }
    // an operator's own configuration, beside the example
    let own_config = Path::new(OPERATOR_FILE);
    std::fs::write(own_config, "scope: mine\n").unwrap();
    let files = must("dpkg", &["-L", "pgpilot"]);
    let unit = files
        .lines()
        .find(|l| l.ends_with("/pgpilot-agent.service"))
        .unwrap_or_else(|| panic!("no unit installed:\n{files}"))
        .to_string();

    // the unit: accepted by systemd, installed but neither enabled nor started
    let (_, _, err) = run("systemd-analyze", &["verify", &unit]);
    let ours: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("pgpilot-agent.service") && !l.contains("ConditionPathExists"))
        .collect();
    assert!(ours.is_empty(), "systemd-analyze verify {unit}:\n{err}");
    // (and the verifier does read it here: a broken copy is refused by name)
    let broken_dir = tempfile::tempdir().unwrap();
    let broken = broken_dir.path().join("pgpilot-agent.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    std::fs::write(&broken, text.replace("Type=notify", "Type=notifyy")).unwrap();
    let (_, _, err) = run("systemd-analyze", &["verify", broken.to_str().unwrap()]);
    assert!(
        err.lines()
            .any(|l| l.contains("pgpilot-agent.service") && l.contains("notifyy")),
        "systemd-analyze did not check the unit: {err}"
    );
    assert!(
        text.contains("ExecStart=/usr/bin/pgpilot-agent /etc/pgpilot/pgpilot.yml"),
        "{text}"
    );
    assert!(text.contains("User=postgres"), "{text}");
    for wants in [
        "/etc/systemd/system/multi-user.target.wants/pgpilot-agent.service",
        "/usr/lib/systemd/system/multi-user.target.wants/pgpilot-agent.service",
    ] {
        assert!(!Path::new(wants).exists(), "the unit was enabled: {wants}");
    }

    // the programs: version with this checkout's revision, manual pages, completions
    let rev = must(
        "git",
        &[
            "-C",
            repo.to_str().unwrap(),
            "rev-parse",
            "--short=12",
            "HEAD",
        ],
    );
    for program in ["pgpilot-agent", "pgpilot-console"] {
        let version = must(&format!("/usr/bin/{program}"), &["--version"]);
        assert!(
            version.starts_with(&format!("{program} {}", env!("CARGO_PKG_VERSION")))
                && version.contains(&format!("(git {}", rev.trim())),
            "{version}"
        );
    }
    for (page, expected) in [
        ("pgpilot-agent.1.gz", ["pgpilot-agent", "--validate-config"]),
        ("pgpilot-console.1.gz", ["--batch", "switchover"]),
        (
            "pgpilot-console-switchover.1.gz",
            ["--candidate", "--leader"],
        ),
    ] {
        let path = format!("/usr/share/man/man1/{page}");
        let text = must("man", &["-l", "-P", "cat", &path]);
        for e in expected {
            assert!(text.contains(e), "{page} lacks {e}:\n{text}");
        }
    }
    let complete = must(
        "bash",
        &[
            "-c",
            ". /usr/share/bash-completion/completions/pgpilot-console && complete -p pgpilot-console",
        ],
    );
    assert!(complete.contains("pgpilot-console"), "{complete}");

    // the example configuration is valid, read by the agent as postgres (the unit's user)
    must("id", &["postgres"]);
    let (ok, out, err) = run(
        "setpriv",
        &[
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "/usr/bin/pgpilot-agent",
            "--validate-config",
            "/etc/pgpilot/pgpilot.yml.example",
        ],
    );
    assert!(ok, "the example configuration:\n{out}\n{err}");

    // sizes, for the README
    let size = |p: &str| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0) as f64 / 1048576.0;
    let installed_kib = must("dpkg-query", &["-W", "-f=${Installed-Size}", "pgpilot"]);
    eprintln!(
        "package sizes: {deb}: {:.1} MiB; installed {:.1} MiB; pgpilot-agent {:.1} MiB, pgpilot-console {:.1} MiB",
        size(&deb),
        installed_kib.trim().parse::<f64>().unwrap_or(0.0) / 1024.0,
        size("/usr/bin/pgpilot-agent"),
        size("/usr/bin/pgpilot-console"),
    );

    // removal: the programs go, the configuration and the data stay
    must("dpkg", &["-r", "pgpilot"]);
    assert_eq!(
        (stat(var_lib), stat(data)),
        before,
        "the package touched a data directory"
    );
    assert!(!Path::new("/usr/bin/pgpilot-agent").exists());
    assert!(!Path::new("/usr/bin/pgpilot-console").exists());
    assert!(!Path::new(&unit).exists(), "{unit} left behind");
    assert!(
        Path::new("/etc/pgpilot/pgpilot.yml.example").exists(),
        "the conffile was removed"
    );
    // the operator's own configuration and a data directory outlive removal and purge alike
    let untouched = || {
        assert_eq!(
            std::fs::read_to_string(own_config).unwrap(),
            "scope: mine\n"
        );
        assert_eq!(
            std::fs::read_to_string(data.join("PG_VERSION")).unwrap(),
            "15\n"
        );
    };
    untouched();
    must("dpkg", &["--purge", "pgpilot"]);
    untouched();
    std::fs::remove_file(own_config).unwrap();
    std::fs::remove_dir_all(data).unwrap();
    let _ = std::fs::remove_dir("/etc/pgpilot");
}
