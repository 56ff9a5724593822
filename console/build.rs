//! Records the git revision this program is built from, for `--version`.

#[path = "../shared/build_rev.rs"]
mod build_rev;

fn main() {
    build_rev::emit_git_rev();
}
