//! `console`: the operator's cockpit for pgpilot and Patroni clusters. This release only reports
//! its version; the live TUI and `--batch` commands come next.

use clap::Parser;

/// pgpilot console: watch and operate pgpilot (and Patroni) clusters.
///
/// This version only prints its version. The full-screen cockpit and the scripted
/// `console --batch <command>` operations are being built.
#[derive(Parser, Debug)]
#[command(name = "console", version, about, long_about)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
    println!(
        "pgpilot console {} (Patroni {} compatible)",
        shared::VERSION,
        shared::PATRONI_COMPAT_VERSION
    );
}
