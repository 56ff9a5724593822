//! A tmux session driving the live console.

use crate::*;
use anyhow::{Context, Result, anyhow, bail};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A program running in a private tmux server (its own socket), with a fixed screen size, for
/// driving full-screen programs the way a person does.
pub struct Tmux {
    socket: String,
}

impl Tmux {
    /// Starts `command` (a shell command line) in a new `cols`×`rows` session.
    pub fn start(tag: &str, cols: u16, rows: u16, command: &str) -> Result<Tmux> {
        let socket = format!("pgpilot-{tag}-{}", std::process::id());
        let status = Command::new("tmux")
            .args(["-L", &socket, "new-session", "-d", "-s", "t", "-x"])
            .arg(cols.to_string())
            .arg("-y")
            .arg(rows.to_string())
            .arg(command)
            .status()
            .context("cannot run tmux: apt-get install tmux")?;
        if !status.success() {
            bail!("tmux new-session failed: {status}");
        }
        Ok(Tmux { socket })
    }

    /// The screen as text.
    pub fn screen(&self) -> String {
        Command::new("tmux")
            .args(["-L", &self.socket, "capture-pane", "-t", "t", "-p"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// Types keys (tmux key names: `Enter`, `Escape`, `p`, …).
    pub fn keys(&self, keys: &[&str]) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "send-keys", "-t", "t"])
            .args(keys)
            .status();
    }

    /// Waits until the screen contains `text`.
    pub fn wait_for(&self, text: &str, timeout: Duration) -> Result<String> {
        wait_for(&format!("{text:?} on the screen"), timeout, || {
            let s = self.screen();
            s.contains(text).then_some(s)
        })
        .map_err(|e| anyhow!("{e}; the screen:\n{}", self.screen()))
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .stderr(Stdio::null())
            .status();
    }
}
