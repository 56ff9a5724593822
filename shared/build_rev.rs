//! Build-script helper shared by the `agent` and `console` crates (included with `#[path]`):
//! records the git revision a binary is built from, for `--version`.

use std::path::{Path, PathBuf};

/// Sets `PGPILOT_GIT_REV` for the crate being compiled: `$PGPILOT_GIT_REV` when given (a build
/// from a source tarball, or a packager's choice); else the revision of the pgpilot checkout
/// (`git rev-parse --short=12 HEAD`, with `-dirty` when the tracked sources the binary is
/// built from — its crate, `shared`, the workspace manifest and lock — differ from it); else `unknown`, with a build warning. A git repository that merely encloses the
/// sources (a tarball unpacked in a home directory kept in git) is not taken for pgpilot's.
/// Cargo runs the script again when HEAD moves (commit, checkout, reset; worktrees and packed
/// refs included) or one of those sources changes.
pub fn emit_git_rev() {
    println!("cargo:rerun-if-env-changed=PGPILOT_GIT_REV");
    let given = std::env::var("PGPILOT_GIT_REV")
        .ok()
        .filter(|r| !r.trim().is_empty());
    let rev = match given {
        Some(r) => r.trim().to_string(),
        None => checkout_rev().unwrap_or_else(|| {
            println!(
                "cargo:warning=no git checkout of pgpilot here: --version says `git unknown` (set PGPILOT_GIT_REV)"
            );
            "unknown".to_string()
        }),
    };
    println!("cargo:rustc-env=PGPILOT_GIT_REV={rev}");
}

/// The workspace root: the parent of the crate being built.
fn workspace() -> Option<PathBuf> {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")?;
    Path::new(&manifest).parent().map(Path::to_path_buf)
}

fn git(root: &Path, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(root)
        .args(args)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn checkout_rev() -> Option<String> {
    let root = workspace()?;
    let top = git(&root, &["rev-parse", "--show-toplevel"])?;
    if Path::new(&top).canonicalize().ok()? != root.canonicalize().ok()? {
        return None;
    }
    let sources = sources(&root)?;
    watch(&root, &sources);
    let rev = git(&root, &["rev-parse", "--short=12", "HEAD"])?;
    let dirty = std::process::Command::new("git")
        .arg("-C")
        .arg(&root)
        .args(["diff", "--quiet", "HEAD", "--"])
        .args(&sources)
        .status()
        .is_ok_and(|s| s.code() == Some(1));
    Some(if dirty { format!("{rev}-dirty") } else { rev })
}

/// The sources a binary is built from, relative to the workspace root.
fn sources(root: &Path) -> Option<Vec<String>> {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?);
    let krate = manifest.strip_prefix(root).ok()?.to_str()?.to_string();
    Some(vec![
        krate,
        "shared".into(),
        "Cargo.toml".into(),
        "Cargo.lock".into(),
    ])
}

/// What moves the revision or the dirty mark: HEAD and its reflog (every commit, checkout and
/// reset writes it), the branch refs (loose and packed, in the common directory a worktree
/// shares), and the sources.
fn watch(root: &Path, sources: &[String]) {
    let mut paths = Vec::new();
    for what in ["HEAD", "logs/HEAD"] {
        if let Some(p) = git(root, &["rev-parse", "--git-path", what]) {
            paths.push(root.join(p));
        }
    }
    if let Some(common) = git(root, &["rev-parse", "--git-common-dir"]) {
        let common = root.join(common);
        paths.push(common.join("packed-refs"));
        paths.push(common.join("refs/heads"));
    }
    paths.extend(sources.iter().map(|s| root.join(s)));
    // a path that does not exist would rerun the script at every build
    for p in paths.into_iter().filter(|p| p.exists()) {
        println!("cargo:rerun-if-changed={}", p.display());
    }
}
