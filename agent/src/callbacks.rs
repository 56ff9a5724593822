//! Callbacks (`postgresql.callbacks`): on start, stop, restart, reload and role change the
//! configured program runs with three more arguments — the action, the role, the scope — as
//! Patroni passes them. No shell is involved (the command line is split into words, quotes
//! kept together); it runs in the background, is killed after [`TIMEOUT`], and a new event
//! kills a callback still running so they never pile up. The HA loop never waits for one.

use shared::config::Config;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::process::Command;
use tracing::{info, warn};

/// How long a callback may run.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Start,
    Stop,
    Restart,
    Reload,
    RoleChange,
}

impl Event {
    pub fn action(self) -> &'static str {
        match self {
            Event::Start => "on_start",
            Event::Stop => "on_stop",
            Event::Restart => "on_restart",
            Event::Reload => "on_reload",
            Event::RoleChange => "on_role_change",
        }
    }
}

/// Splits a command line into words: whitespace separates, single and double quotes group,
/// a backslash escapes the next character outside single quotes.
pub fn split_words(line: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('\''), c) => cur.push(c),
            (_, '\\') => {
                cur.push(chars.next()?);
                in_word = true;
            }
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return None;
    }
    if in_word {
        words.push(cur);
    }
    Some(words)
}

/// Runs callbacks, one at a time: a new one kills the previous if it still runs.
#[derive(Default, Clone)]
pub struct Callbacks {
    running: Arc<Mutex<Option<tokio::task::AbortHandle>>>,
}

impl Callbacks {
    /// Starts the callback for `event` if one is configured; the handle lets a caller that is
    /// about to exit wait for it.
    pub fn fire(
        &self,
        cfg: &Config,
        event: Event,
        role: &str,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let line = cfg
            .postgresql
            .callbacks
            .get(event.action())
            .and_then(|v| v.as_str())
            .filter(|s| !s.trim().is_empty())?;
        let Some(mut words) = split_words(line).filter(|w| !w.is_empty()) else {
            warn!(
                callback = event.action(),
                "postgresql.callbacks.{}: cannot split {line:?} into words (unbalanced quote); not run",
                event.action()
            );
            return None;
        };
        let program = words.remove(0);
        let role = role.to_string();
        let scope = cfg.scope.clone();
        let action = event.action();
        let mut slot = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(prev) = slot.take() {
            prev.abort();
        }
        let task = tokio::spawn(async move {
            let mut cmd = Command::new(&program);
            crate::postgres::keep_secrets_out(&mut cmd);
            cmd.args(&words)
                .arg(action)
                .arg(&role)
                .arg(&scope)
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true);
            let child = match cmd.spawn() {
                Ok(c) => c,
                Err(e) => {
                    warn!(callback = action, "cannot run {program}: {e}");
                    return;
                }
            };
            match tokio::time::timeout(TIMEOUT, child.wait_with_output()).await {
                Ok(Ok(out)) if out.status.success() => {
                    info!(callback = action, role, "callback finished")
                }
                Ok(Ok(out)) => warn!(
                    callback = action,
                    "{program} exited with {}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                Ok(Err(e)) => warn!(callback = action, "{program}: {e}"),
                Err(_) => warn!(
                    callback = action,
                    "{program} ran longer than {}s and was killed",
                    TIMEOUT.as_secs()
                ),
            }
        });
        *slot = Some(task.abort_handle());
        Some(task)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_split_like_a_shell_without_one() {
        assert_eq!(
            split_words("/usr/bin/cb --x 'a b' \"c d\" e\\ f").unwrap(),
            vec!["/usr/bin/cb", "--x", "a b", "c d", "e f"]
        );
        assert_eq!(split_words("  ").unwrap(), Vec::<String>::new());
        assert_eq!(split_words("''").unwrap(), vec![""]);
        assert!(split_words("cb 'open").is_none());
        assert!(split_words("cb \\").is_none());
    }
}
