//! What the two programs' command lines have in common: the manual pages and shell completions
//! generated from their clap definitions (`--man-page`, `--completions SHELL`), so the package
//! ships documentation that cannot drift from `--help`.

use clap::Command;
use std::io::Write;
use std::path::{Path, PathBuf};

/// `--version` of the program being compiled: its package version and the git revision it is
/// built from (`PGPILOT_GIT_REV`, set by its build script).
#[macro_export]
macro_rules! version {
    () => {
        concat!(
            env!("CARGO_PKG_VERSION"),
            " (git ",
            env!("PGPILOT_GIT_REV"),
            ")"
        )
    };
}

/// The options both programs have for their documentation (flattened into their `Cli`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct DocArgs {
    /// Print the completion script for SHELL (bash, zsh or fish) and exit.
    #[arg(long, value_name = "SHELL", value_parser = SHELLS)]
    pub completions: Option<String>,
    /// Write this program's manual pages (PROGRAM.1, and one per command) into DIR and exit.
    #[arg(long, value_name = "DIR")]
    pub man_pages: Option<PathBuf>,
}

/// The shells `--completions` writes a script for.
pub const SHELLS: [&str; 3] = ["bash", "zsh", "fish"];

/// Carries out `--completions SHELL` (the script on stdout) or `--man-pages DIR` (the pages'
/// paths on stdout) for the program `cmd` describes: the exit code (0 done, 1 the pages could
/// not be written, 2 an unknown shell), or `None` when neither was asked for.
pub fn write_docs(cmd: Command, completions: Option<&str>, man_dir: Option<&Path>) -> Option<u8> {
    let mut cmd = cmd;
    let program = cmd.get_name().to_string();
    if let Some(shell) = completions {
        return Some(
            match write_completions(&mut cmd, shell, &mut std::io::stdout()) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("{program}: {e}");
                    2
                }
            },
        );
    }
    let dir = man_dir?;
    Some(match write_man_pages(&cmd, dir) {
        Ok(files) => {
            for f in files {
                println!("{}", dir.join(f).display());
            }
            0
        }
        Err(e) => {
            eprintln!(
                "{program}: cannot write manual pages into {}: {e}",
                dir.display()
            );
            1
        }
    })
}

/// Writes the completion script of `cmd` for `shell` (one of [`SHELLS`]) to `out`.
pub fn write_completions(
    cmd: &mut Command,
    shell: &str,
    out: &mut dyn Write,
) -> Result<(), String> {
    use clap_complete::Shell;
    let shell = match shell {
        "bash" => Shell::Bash,
        "zsh" => Shell::Zsh,
        "fish" => Shell::Fish,
        other => {
            return Err(format!(
                "no completions for shell {other:?}: use bash, zsh or fish"
            ));
        }
    };
    let name = cmd.get_name().to_string();
    clap_complete::generate(shell, cmd, name, out);
    Ok(())
}

/// Writes the manual pages of `cmd` into `dir`: `NAME.1` for the program and, for each of its
/// subcommands, `NAME-SUB.1` (as git and systemctl ship theirs), each rendered by clap_mangen
/// from the same text as `--help`.
pub fn write_man_pages(cmd: &Command, dir: &Path) -> std::io::Result<Vec<String>> {
    let mut cmd = cmd.clone();
    cmd.build();
    let name = cmd.get_name().to_string();
    let mut written = Vec::new();
    let mut pages = vec![(name.clone(), cmd.clone())];
    for sub in cmd.get_subcommands() {
        if sub.is_hide_set() || sub.get_name() == "help" {
            continue;
        }
        let page = format!("{name}-{}", sub.get_name());
        pages.push((
            page.clone(),
            sub.clone()
                .name(page)
                .display_name(format!("{name} {}", sub.get_name())),
        ));
    }
    for (page, c) in pages {
        let mut buf = Vec::new();
        clap_mangen::Man::new(c).render(&mut buf)?;
        let file = format!("{page}.1");
        std::fs::write(dir.join(&file), buf)?;
        written.push(file);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, ArgAction};

    fn demo() -> Command {
        Command::new("pgpilot-demo")
            .about("a demo program")
            .version("1.2.3 (git abc)")
            .arg(
                Arg::new("verbose")
                    .long("verbose")
                    .action(ArgAction::SetTrue)
                    .help("talk more"),
            )
            .subcommand(Command::new("list").about("list members"))
            .subcommand(Command::new("internal").hide(true))
    }

    #[test]
    fn man_pages_for_the_program_and_each_visible_subcommand() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_man_pages(&demo(), dir.path()).unwrap();
        assert_eq!(files, ["pgpilot-demo.1", "pgpilot-demo-list.1"]);
        let main = std::fs::read_to_string(dir.path().join("pgpilot-demo.1")).unwrap();
        assert!(main.contains(".TH pgpilot-demo 1"), "{main}");
        assert!(main.contains("talk more"), "{main}");
        assert!(main.contains("1.2.3 (git abc)"), "{main}");
        let list = std::fs::read_to_string(dir.path().join("pgpilot-demo-list.1")).unwrap();
        assert!(list.contains("list members"), "{list}");
    }

    #[test]
    fn completions_for_each_shell_and_a_clear_refusal() {
        for shell in SHELLS {
            let mut out = Vec::new();
            write_completions(&mut demo(), shell, &mut out).unwrap();
            let text = String::from_utf8(out).unwrap();
            assert!(text.contains("pgpilot-demo"), "{shell}: {text}");
            assert!(text.contains("verbose"), "{shell}: {text}");
        }
        let err = write_completions(&mut demo(), "tcsh", &mut Vec::new()).unwrap_err();
        assert!(err.contains("tcsh") && err.contains("bash"), "{err}");
    }
}
