//! `shot`: renders a terminal screen captured with its colours (`tmux capture-pane -e -p`) to
//! PNG. Used by `screenshots/make.sh`; the drawing is in `pgpilot_e2e::shot`.

use anyhow::{Context, Result, bail};
use std::process::ExitCode;

fn run(args: &[String]) -> Result<()> {
    let [input, output, cols, rows] = args else {
        bail!("usage: shot SCREEN.ansi OUT.png COLS ROWS");
    };
    let cols: u16 = cols.parse().context("COLS must be a number")?;
    let rows: u16 = rows.parse().context("ROWS must be a number")?;
    let ansi = std::fs::read(input).with_context(|| format!("cannot read {input}"))?;
    let buf = pgpilot_e2e::shot::screen(&ansi, cols, rows)?;
    let png = pgpilot_e2e::shot::png(&pgpilot_e2e::shot::svg(&buf))?;
    std::fs::write(output, png).with_context(|| format!("cannot write {output}"))?;
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shot: {e:#}");
            ExitCode::from(2)
        }
    }
}
