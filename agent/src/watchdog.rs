//! The Linux watchdog device, as Patroni drives it (`watchdog: mode, device, safety_margin`):
//! armed with a timeout of `ttl - safety_margin` and kept alive only while this node holds and
//! renews the leader lock, so that a primary whose agent hangs is reset by the kernel before
//! its lease can run out. Disarmed (magic close) as soon as the node stops leading. In
//! `required` mode a node that cannot use its watchdog does not lead. The `testing` driver
//! writes the timeout requests as text instead of ioctls, for a pipe or file in tests.

use shared::config::{WatchdogConfig, WatchdogMode};
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;

nix::ioctl_read!(wdioc_keepalive, b'W', 5, nix::libc::c_int);
nix::ioctl_readwrite!(wdioc_settimeout, b'W', 6, nix::libc::c_int);
nix::ioctl_read!(wdioc_gettimeout, b'W', 7, nix::libc::c_int);

/// The watchdog of this node.
pub struct Watchdog {
    cfg: WatchdogConfig,
    /// The open device while armed, and the timeout it runs with.
    armed: Option<(File, u64)>,
    /// The timeout asked for at arming (`ttl - safety_margin`): a ttl change asks again.
    asked: u64,
    /// The last activation failure, logged once.
    last_error: Option<String>,
}

impl Watchdog {
    pub fn new(cfg: WatchdogConfig) -> Watchdog {
        Watchdog {
            cfg,
            armed: None,
            asked: 0,
            last_error: None,
        }
    }

    /// Takes a reloaded `watchdog` section; a changed device is re-armed at the next keepalive.
    pub fn reconfigure(&mut self, cfg: WatchdogConfig) {
        if cfg != self.cfg {
            self.disarm();
            self.cfg = cfg;
            self.last_error = None;
        }
    }

    pub fn is_armed(&self) -> bool {
        self.armed.is_some()
    }

    /// Whether this node may lead: anything goes unless the mode is `required`, which needs a
    /// device that is armed or can be opened for writing (checked without arming it), and a
    /// timeout that leaves room for a loop.
    pub fn allows_leading(&self, ttl: u64, loop_wait: u64) -> Result<(), String> {
        if self.cfg.mode != WatchdogMode::Required || self.armed.is_some() {
            return Ok(());
        }
        let timeout = self.cfg.timeout(ttl);
        if timeout <= loop_wait {
            return Err(format!(
                "the watchdog timeout ttl - safety_margin = {timeout}s is not longer than loop_wait {loop_wait}s"
            ));
        }
        nix::unistd::access(&self.cfg.device, nix::unistd::AccessFlags::W_OK).map_err(|e| {
            format!(
                "watchdog device {} cannot be used: {e}",
                self.cfg.device.display()
            )
        })
    }

    /// Called after each successful renewal of the leader lock: arms the device if needed and
    /// keeps it alive. The error says why a required watchdog could not be kept.
    pub fn keepalive(&mut self, ttl: u64, loop_wait: u64) -> Result<(), String> {
        if self.cfg.mode == WatchdogMode::Off {
            return Ok(());
        }
        if self.armed.is_none() {
            match self.arm(ttl, loop_wait) {
                Ok((file, timeout)) => {
                    tracing::info!(
                        device = %self.cfg.device.display(),
                        timeout,
                        "watchdog armed while this node leads"
                    );
                    self.armed = Some((file, timeout));
                    self.asked = self.cfg.timeout(ttl);
                    self.last_error = None;
                }
                Err(e) => {
                    if self.last_error.as_ref() != Some(&e) {
                        if self.cfg.mode == WatchdogMode::Required {
                            tracing::error!("watchdog required but unusable: {e}");
                        } else {
                            tracing::info!("no watchdog in use: {e}");
                        }
                        self.last_error = Some(e.clone());
                    }
                    return match self.cfg.mode {
                        WatchdogMode::Required => Err(e),
                        _ => Ok(()),
                    };
                }
            }
        }
        // a new ttl (the config key changed) sets the device's timeout at once, as Patroni does
        let want = self.cfg.timeout(ttl);
        if want != self.asked
            && let Some((file, running)) = self.armed.as_mut()
        {
            match set_timeout(file, &self.cfg, want, loop_wait) {
                Ok(actual) => {
                    tracing::info!(
                        device = %self.cfg.device.display(),
                        timeout = actual,
                        "watchdog timeout changed with the ttl"
                    );
                    *running = actual;
                    self.asked = want;
                }
                Err(e) => {
                    // the device keeps its earlier timeout, which fired before the old lease
                    // ended; a required watchdog that cannot follow a longer ttl stops leading
                    tracing::error!("the watchdog cannot take the new ttl: {e}");
                    if self.cfg.mode == WatchdogMode::Required {
                        return Err(e);
                    }
                    self.asked = want;
                }
            }
        }
        let testing = self.cfg.testing;
        let Some((file, _)) = self.armed.as_mut() else {
            return Ok(());
        };
        let sent = if testing {
            file.write_all(b"1").map_err(|e| e.to_string())
        } else {
            let mut dummy: nix::libc::c_int = 0;
            // SAFETY: WDIOC_KEEPALIVE on an open watchdog fd reads one int, which we provide.
            unsafe { wdioc_keepalive(file.as_raw_fd(), &mut dummy) }
                .map(|_| ())
                .or_else(|_| file.write_all(b"1").map_err(|e| e.to_string()))
        };
        sent.map_err(|e| format!("watchdog keepalive failed: {e}"))
    }

    fn arm(&self, ttl: u64, loop_wait: u64) -> Result<(File, u64), String> {
        let want = self.cfg.timeout(ttl);
        if want <= loop_wait {
            return Err(format!(
                "the watchdog timeout ttl - safety_margin = {want}s is not longer than loop_wait {loop_wait}s"
            ));
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            // a file standing in for the device keeps what every arming wrote
            .append(self.cfg.testing)
            .open(&self.cfg.device)
            .map_err(|e| format!("cannot open {}: {e}", self.cfg.device.display()))?;
        match set_timeout(&mut file, &self.cfg, want, loop_wait) {
            Ok(actual) => Ok((file, actual)),
            Err(e) => {
                let _ = file.write_all(b"V");
                Err(e)
            }
        }
    }

    /// Stops the watchdog (magic close) when this node no longer leads.
    pub fn disarm(&mut self) {
        if let Some((mut file, _)) = self.armed.take() {
            if let Err(e) = file.write_all(b"V") {
                tracing::warn!(
                    "cannot disarm the watchdog ({e}): the machine may be reset when it expires"
                );
            } else {
                tracing::info!("watchdog disarmed: this node no longer leads");
            }
        }
    }
}

/// Asks the open device for `want` seconds and reads back what it runs with, which must fire
/// before the lease ends (at most `want`) and leave a loop's room (over `loop_wait`).
fn set_timeout(
    file: &mut File,
    cfg: &WatchdogConfig,
    want: u64,
    loop_wait: u64,
) -> Result<u64, String> {
    if want <= loop_wait {
        return Err(format!(
            "the watchdog timeout ttl - safety_margin = {want}s is not longer than loop_wait {loop_wait}s"
        ));
    }
    if cfg.testing {
        file.write_all(format!("Ctimeout={want}\n").as_bytes())
            .map_err(|e| format!("cannot set the timeout: {e}"))?;
        return Ok(want);
    }
    let fd = file.as_raw_fd();
    let mut timeout = nix::libc::c_int::try_from(want).unwrap_or(nix::libc::c_int::MAX);
    // SAFETY: WDIOC_SETTIMEOUT reads and writes one int, which we provide.
    let set = unsafe { wdioc_settimeout(fd, &mut timeout) };
    let mut actual: nix::libc::c_int = 0;
    // SAFETY: WDIOC_GETTIMEOUT writes one int, which we provide.
    let got = unsafe { wdioc_gettimeout(fd, &mut actual) };
    let actual = match (set, got) {
        (_, Ok(_)) => u64::try_from(actual).unwrap_or(0),
        (_, Err(e)) => {
            return Err(format!(
                "{} does not report its timeout ({e}); it cannot be trusted to fire in time",
                cfg.device.display()
            ));
        }
    };
    if actual > want || actual <= loop_wait {
        return Err(format!(
            "{} runs with a {actual}s timeout; a safe one is between loop_wait {loop_wait}s and {want}s",
            cfg.device.display()
        ));
    }
    Ok(actual)
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.disarm();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn testing(device: &std::path::Path, mode: WatchdogMode) -> WatchdogConfig {
        WatchdogConfig {
            mode,
            device: device.to_path_buf(),
            safety_margin: 5,
            testing: true,
        }
    }

    #[test]
    fn armed_only_while_leading_with_magic_close() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("watchdog");
        std::fs::write(&dev, "").unwrap();
        let mut w = Watchdog::new(testing(&dev, WatchdogMode::Required));
        assert_eq!(w.allows_leading(30, 10), Ok(()));
        w.keepalive(30, 10).unwrap();
        w.keepalive(30, 10).unwrap();
        assert!(w.is_armed());
        w.disarm();
        assert!(!w.is_armed());
        assert_eq!(std::fs::read_to_string(&dev).unwrap(), "Ctimeout=25\n11V");
    }

    #[test]
    fn a_ttl_change_sets_the_timeout_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("watchdog");
        std::fs::write(&dev, "").unwrap();
        let mut w = Watchdog::new(testing(&dev, WatchdogMode::Required));
        w.keepalive(30, 10).unwrap();
        // the config key's ttl went to 60: the armed device is told at the next keepalive
        w.keepalive(60, 10).unwrap();
        w.keepalive(60, 10).unwrap();
        // and back down to 20, below what it ran with: shorter at once
        w.keepalive(20, 10).unwrap();
        assert_eq!(
            std::fs::read_to_string(&dev).unwrap(),
            "Ctimeout=25\n1Ctimeout=55\n11Ctimeout=15\n1"
        );
        // a ttl that leaves no room for a loop: a required watchdog stops this node leading
        assert!(w.keepalive(14, 10).is_err());
    }

    #[test]
    fn required_without_a_device_refuses_to_lead() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nothing");
        let mut w = Watchdog::new(testing(&missing, WatchdogMode::Required));
        assert!(w.allows_leading(30, 10).unwrap_err().contains("nothing"));
        assert!(w.keepalive(30, 10).is_err());
        // automatic: leads without one
        let mut w = Watchdog::new(testing(&missing, WatchdogMode::Automatic));
        assert_eq!(w.allows_leading(30, 10), Ok(()));
        assert_eq!(w.keepalive(30, 10), Ok(()));
        assert!(!w.is_armed());
        // a timeout that leaves no room for a loop is unsafe
        let dev = dir.path().join("watchdog");
        std::fs::write(&dev, "").unwrap();
        let w = Watchdog::new(testing(&dev, WatchdogMode::Required));
        assert!(w.allows_leading(12, 10).is_err());
    }

    #[test]
    fn a_regular_file_is_not_a_linux_watchdog() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("watchdog");
        std::fs::write(&dev, "").unwrap();
        let mut cfg = testing(&dev, WatchdogMode::Required);
        cfg.testing = false;
        let mut w = Watchdog::new(cfg);
        let e = w.keepalive(30, 10).unwrap_err();
        assert!(e.contains("timeout"), "{e}");
        assert!(!w.is_armed());
    }
}
