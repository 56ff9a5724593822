//! A throwaway certificate authority (openssl) for the TLS tests.

use anyhow::{Context, Result, bail};
use std::fs;
use std::path::PathBuf;
use std::process::Command;

/// A private certificate authority made with `openssl` for one test, with certificates it
/// signs; files readable by the agents (run as `postgres`), removed on drop.
pub struct TestCa {
    pub dir: PathBuf,
}

impl TestCa {
    pub fn new(tag: &str) -> Result<TestCa> {
        use std::os::unix::fs::PermissionsExt;
        let dir = PathBuf::from(format!("/var/tmp/pgpilot-ca-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
        let ca = TestCa { dir };
        ca.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN=pgpilot-test-ca-{tag}"),
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ])?;
        Ok(ca)
    }

    fn openssl(&self, args: &[&str]) -> Result<()> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&self.dir)
            .output()
            .context("cannot run openssl")?;
        if !out.status.success() {
            bail!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A certificate `name.pem` with key `name.key` for `cn`, valid for 127.0.0.1, for servers
    /// and clients.
    pub fn issue(&self, name: &str, cn: &str) -> Result<(PathBuf, PathBuf)> {
        use std::os::unix::fs::PermissionsExt;
        let (csr, key, pem, ext) = (
            format!("{name}.csr"),
            format!("{name}.key"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        fs::write(
            self.dir.join(&ext),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth,clientAuth\n",
        )?;
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            // no CN for a client of etcd's JSON gateway (etcd refuses one there)
            "-subj",
            &if cn.is_empty() {
                "/O=pgpilot-test".to_string()
            } else {
                format!("/CN={cn}")
            },
            "-keyout",
            &key,
            "-out",
            &csr,
        ])?;
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            &pem,
        ])?;
        for f in [&key, &pem, &"ca.pem".to_string()] {
            fs::set_permissions(self.dir.join(f), fs::Permissions::from_mode(0o644))?;
        }
        Ok((self.dir.join(pem), self.dir.join(key)))
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}
