//! The systemd service protocol (`Type=notify`): `READY=1` once the REST API listens and the
//! first HA cycle is done, `STATUS=` with the cycle's decision, `WATCHDOG=1` keepalives while the
//! HA loop turns, `STOPPING=1` at shutdown.
//!
//! The notification socket and watchdog interval are read once at start and removed from the
//! environment before any thread or child exists: Debian's PostgreSQL is built with systemd
//! support, and a postmaster that inherited `NOTIFY_SOCKET` would report its own readiness to
//! the agent's unit. That is also why the few lines of the protocol live here rather than in a
//! crate that reads the environment on every call.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;
use tracing::{debug, warn};

/// Where systemd listens, and how often it wants to hear from us.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    socket: Option<PathBuf>,
    /// Half of `WatchdogSec` (systemd's advice), when the unit sets one for this process.
    pub keepalive_every: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` and removes them.
    ///
    /// # Safety
    /// Changes the environment: call before any other thread starts.
    pub unsafe fn from_env() -> Notifier {
        let socket = std::env::var_os("NOTIFY_SOCKET").map(PathBuf::from);
        let usec = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .filter(|u| *u > 0);
        let for_us = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .is_none_or(|pid| pid == std::process::id());
        // SAFETY: the caller guarantees that no other thread runs yet.
        unsafe {
            std::env::remove_var("NOTIFY_SOCKET");
            std::env::remove_var("WATCHDOG_USEC");
            std::env::remove_var("WATCHDOG_PID");
        }
        Notifier {
            socket,
            keepalive_every: usec
                .filter(|_| for_us)
                .map(|u| Duration::from_micros(u / 2)),
        }
    }

    /// The service is up.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={}\n", one_line(status)));
    }

    /// What the agent does now, for `systemctl status`.
    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={}\n", one_line(status)));
    }

    /// The HA loop is alive.
    pub fn keepalive(&self) {
        if self.keepalive_every.is_some() {
            self.send("WATCHDOG=1\n");
        }
    }

    /// Shutting down (stopping PostgreSQL, releasing the lock).
    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=shutting down\n");
    }

    fn send(&self, message: &str) {
        let Some(path) = &self.socket else {
            return;
        };
        let sent = UnixDatagram::unbound().and_then(|sock| {
            let bytes = path.as_os_str().as_encoded_bytes();
            match bytes.strip_prefix(b"@") {
                // an abstract socket: '@' stands for the leading NUL
                Some(name) => {
                    use std::os::linux::net::SocketAddrExt;
                    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                    sock.send_to_addr(message.as_bytes(), &addr)
                }
                None => sock.send_to(message.as_bytes(), path),
            }
        });
        match sent {
            Ok(_) => debug!(message = message.trim_end(), "told systemd"),
            Err(e) => warn!(socket = %path.display(), "cannot notify systemd: {e}"),
        }
    }
}

fn one_line(s: &str) -> String {
    s.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_the_socket_and_keepalives_only_with_a_watchdog() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let read = || {
            let mut buf = [0u8; 512];
            let n = server.recv(&mut buf).unwrap();
            String::from_utf8_lossy(&buf[..n]).to_string()
        };
        let n = Notifier {
            socket: Some(path.clone()),
            keepalive_every: None,
        };
        n.ready("running as primary\nof demo");
        assert_eq!(read(), "READY=1\nSTATUS=running as primary of demo\n");
        n.keepalive();
        n.stopping();
        // no keepalive without a watchdog: the next datagram is STOPPING
        assert_eq!(read(), "STOPPING=1\nSTATUS=shutting down\n");
        let n = Notifier {
            socket: Some(path),
            keepalive_every: Some(Duration::from_secs(5)),
        };
        n.keepalive();
        assert_eq!(read(), "WATCHDOG=1\n");
        // nothing configured: nothing sent, nothing fails
        Notifier::default().ready("x");
    }
}
