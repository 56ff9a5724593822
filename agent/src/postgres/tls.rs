//! TLS for the agent's own connections to PostgreSQL, as libpq would make them from the
//! superuser's `postgresql.authentication` options: `sslmode` (disable … verify-full, libpq's
//! default `prefer`), `sslrootcert` (a file, or `system`), `sslcert`/`sslkey` (+ `sslpassword`),
//! `sslcrl`/`sslcrldir`, `sslnegotiation`, `channel_binding`, and libpq's default files under
//! `~/.postgresql/`. Files are read at each new connection, so renewed certificates are used
//! without a restart.

use anyhow::{Context, Result, anyhow, bail};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use shared::config::PgUser;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_postgres::config::{ChannelBinding, SslMode, SslNegotiation};
use tokio_postgres_rustls::MakeRustlsConnect;

/// Where distributions keep the system's trusted roots (`sslrootcert=system`): Debian and
/// Ubuntu, Red Hat and Fedora, SUSE and Alpine; the first that exists is used.
const SYSTEM_ROOTS: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

fn system_roots() -> PathBuf {
    SYSTEM_ROOTS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(SYSTEM_ROOTS[0]))
}

/// The home directory libpq looks in for `~/.postgresql/`: `$HOME`, else the user's entry in
/// the password database.
pub(super) fn home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map(|u| u.dir)
        })
}

/// How far the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verify {
    /// Encrypted, the certificate not checked (libpq's prefer/require without a root file).
    Nothing,
    /// Signed by a trusted root; the name not checked (verify-ca).
    Chain,
    /// Signed by a trusted root and issued for the host connected to (verify-full).
    Full,
}

/// One connection's TLS settings, read from the role's options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PgTls {
    mode: SslMode,
    verify: Verify,
    /// `sslrootcert=system`: a bundle where one unreadable root must not spoil the others.
    system: bool,
    root: Option<PathBuf>,
    client: Option<(PathBuf, PathBuf)>,
    crls: Vec<PathBuf>,
    negotiation: SslNegotiation,
    channel_binding: ChannelBinding,
}

impl PgTls {
    /// The settings for `user`'s options; `home` holds libpq's default files
    /// (`.postgresql/root.crt`, `postgresql.crt`, `postgresql.key`, `root.crl`). An unknown
    /// value is an error naming the option.
    pub(super) fn from_user(user: &PgUser, home: Option<&Path>) -> Result<PgTls> {
        let opt = |k: &str| {
            user.options
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        let default_file = |name: &str| {
            home.map(|h| h.join(".postgresql").join(name))
                .filter(|p| p.is_file())
        };
        let system = opt("sslrootcert") == Some("system");
        let root = match opt("sslrootcert") {
            Some("system") => Some(system_roots()),
            Some(p) => Some(PathBuf::from(p)),
            None => default_file("root.crt"),
        };
        // libpq: with sslrootcert=system the default mode is verify-full
        let default_mode = if opt("sslrootcert") == Some("system") {
            "verify-full"
        } else {
            "prefer"
        };
        let (mode, verify) = match opt("sslmode").unwrap_or(default_mode) {
            "disable" => (SslMode::Disable, Verify::Nothing),
            // tokio-postgres has no "try plain text first": TLS first reaches the same servers
            "allow" | "prefer" => (SslMode::Prefer, Verify::Nothing),
            // libpq: require with a root file behaves as verify-ca
            "require" if root.is_some() => (SslMode::Require, Verify::Chain),
            "require" => (SslMode::Require, Verify::Nothing),
            "verify-ca" => (SslMode::Require, Verify::Chain),
            "verify-full" => (SslMode::Require, Verify::Full),
            other => bail!(
                "sslmode {other:?} is not one of disable, allow, prefer, require, verify-ca, verify-full"
            ),
        };
        // libpq: every public root would vouch for any name
        if system && verify != Verify::Full {
            bail!(
                "sslrootcert system needs sslmode verify-full (a weaker mode would accept any publicly issued certificate)"
            );
        }
        if verify != Verify::Nothing && root.is_none() {
            bail!(
                "sslmode {} checks the server's certificate: set sslrootcert (or put the CA in ~/.postgresql/root.crt)",
                opt("sslmode").unwrap_or(default_mode)
            );
        }
        let cert = opt("sslcert")
            .map(PathBuf::from)
            .or_else(|| default_file("postgresql.crt"));
        let client = match cert {
            Some(cert) => {
                let key = opt("sslkey")
                    .map(PathBuf::from)
                    .or_else(|| home.map(|h| h.join(".postgresql").join("postgresql.key")))
                    .ok_or_else(|| anyhow!("sslcert is set without sslkey"))?;
                Some((cert, key))
            }
            None => None,
        };
        let mut crls: Vec<PathBuf> = match opt("sslcrl") {
            Some(p) => vec![PathBuf::from(p)],
            None => default_file("root.crl").into_iter().collect(),
        };
        if let Some(dir) = opt("sslcrldir") {
            let entries = std::fs::read_dir(dir).with_context(|| format!("sslcrldir {dir}"))?;
            let mut files: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect();
            files.sort();
            crls.extend(files);
        }
        let negotiation = match opt("sslnegotiation").unwrap_or("postgres") {
            "postgres" => SslNegotiation::Postgres,
            "direct" if mode == SslMode::Require => SslNegotiation::Direct,
            "direct" => {
                bail!("sslnegotiation direct needs sslmode require, verify-ca or verify-full")
            }
            other => bail!("sslnegotiation {other:?} is not one of postgres, direct"),
        };
        let channel_binding = match opt("channel_binding").unwrap_or("prefer") {
            "disable" => ChannelBinding::Disable,
            "prefer" => ChannelBinding::Prefer,
            "require" => ChannelBinding::Require,
            other => bail!("channel_binding {other:?} is not one of disable, prefer, require"),
        };
        if opt("gssencmode") == Some("require") {
            bail!(
                "gssencmode require: the agent's own connections cannot use GSSAPI encryption; use TLS (sslmode) for this role"
            );
        }
        Ok(PgTls {
            mode,
            verify,
            system,
            root,
            client,
            crls,
            negotiation,
            channel_binding,
        })
    }

    /// The settings an operator checks when a connection fails ("TLS: verify-full, CA …").
    pub(super) fn describe(&self, unix_socket: bool) -> String {
        if unix_socket || self.mode == SslMode::Disable {
            return "without TLS".into();
        }
        let check = match self.verify {
            Verify::Nothing => "certificate not checked".to_string(),
            Verify::Chain => format!(
                "certificate checked against sslrootcert {}",
                self.root.as_deref().unwrap_or(Path::new("?")).display()
            ),
            Verify::Full => format!(
                "certificate and host name checked against sslrootcert {}",
                self.root.as_deref().unwrap_or(Path::new("?")).display()
            ),
        };
        let client = match &self.client {
            Some((cert, _)) => format!(", client certificate sslcert {}", cert.display()),
            None => String::new(),
        };
        let mode = if self.mode == SslMode::Prefer {
            "TLS if offered"
        } else {
            "TLS"
        };
        format!("{mode}, {check}{client}")
    }

    /// A connection without TLS (a Unix socket).
    pub(super) fn plain(pgc: &mut tokio_postgres::Config) -> MakeRustlsConnect {
        pgc.ssl_mode(SslMode::Disable);
        MakeRustlsConnect::new(
            rustls::ClientConfig::builder()
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate))
                .with_no_client_auth(),
        )
    }

    /// Applies the mode to `pgc` and makes the connector (reading the files now). A Unix-socket
    /// connection never uses TLS, as with libpq.
    pub(super) fn connector(
        &self,
        pgc: &mut tokio_postgres::Config,
        unix_socket: bool,
        sslpassword: Option<&shared::config::Secret>,
    ) -> Result<MakeRustlsConnect> {
        shared::api::install_tls_provider();
        pgc.channel_binding(self.channel_binding);
        if unix_socket || self.mode == SslMode::Disable {
            // never used, but the connect call wants one
            return Ok(Self::plain(pgc));
        }
        pgc.ssl_mode(self.mode).ssl_negotiation(self.negotiation);
        let verifier: Arc<dyn ServerCertVerifier> = match self.verify {
            Verify::Nothing => Arc::new(AnyCertificate),
            Verify::Chain | Verify::Full => {
                let root = self
                    .root
                    .as_ref()
                    .ok_or_else(|| anyhow!("no sslrootcert"))?;
                let mut roots = rustls::RootCertStore::empty();
                if self.system {
                    roots.add_parsable_certificates(read_certs(root, "sslrootcert")?);
                } else {
                    for ca in read_certs(root, "sslrootcert")? {
                        roots
                            .add(ca)
                            .map_err(|e| anyhow!("sslrootcert {}: {e}", root.display()))?;
                    }
                }
                let mut crls = Vec::new();
                for path in &self.crls {
                    for crl in CertificateRevocationListDer::pem_file_iter(path)
                        .map_err(|e| anyhow!("sslcrl {}: {e}", path.display()))?
                    {
                        crls.push(crl.map_err(|e| anyhow!("sslcrl {}: {e}", path.display()))?);
                    }
                }
                let inner = rustls::client::WebPkiServerVerifier::builder(Arc::new(roots))
                    .with_crls(crls)
                    // as OpenSSL (libpq): a CRL past its next update does not count as current
                    .enforce_revocation_expiration()
                    .build()
                    .map_err(|e| anyhow!("sslrootcert {}: {e}", root.display()))?;
                if self.verify == Verify::Full {
                    inner
                } else {
                    Arc::new(AnyName(inner))
                }
            }
        };
        let builder = rustls::ClientConfig::builder()
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match &self.client {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = read_certs(cert, "sslcert")?;
                check_key_mode(key)?;
                let pem = shared::api::private_key_pem(key, sslpassword).map_err(|e| {
                    anyhow!(
                        "sslkey {}: {}",
                        key.display(),
                        e.replace("keyfile_password", "sslpassword")
                    )
                })?;
                let key_der = PrivateKeyDer::from_pem_slice(&pem)
                    .map_err(|e| anyhow!("sslkey {}: {e}", key.display()))?;
                builder
                    .with_client_auth_cert(chain, key_der)
                    .map_err(|e| anyhow!("sslcert/sslkey {}: {e}", cert.display()))?
            }
        };
        // PostgreSQL 17+ wants this protocol named when TLS starts directly
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(MakeRustlsConnect::new(config))
    }
}

/// The certificates in a PEM file, at least one; errors name the option.
fn read_certs(path: &Path, option: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| anyhow!("{option} {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow!("{option} {}: {e}", path.display()))?;
    if certs.is_empty() {
        bail!("{option} {}: no certificate in it", path.display());
    }
    Ok(certs)
}

/// libpq's rule for a client key: not readable by group or others (0640 is allowed for a key
/// owned by root), so that the agent never uses a key that libpq — pg_basebackup, pg_rewind —
/// would refuse.
fn check_key_mode(key: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(key).map_err(|e| anyhow!("sslkey {}: {e}", key.display()))?;
    let mode = meta.mode() & 0o777;
    let allowed = if meta.uid() == 0 { 0o640 } else { 0o600 };
    if mode & !allowed != 0 {
        bail!(
            "sslkey {}: mode {mode:o} gives access beyond its owner; libpq refuses such a key: chmod 600 it",
            key.display()
        );
    }
    Ok(())
}

/// Accepts any certificate (the modes that only encrypt); the handshake's signatures are still
/// checked, so the session is with whoever holds the certificate's key.
#[derive(Debug)]
struct AnyCertificate;

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms().supported_schemes()
    }
}

fn algorithms() -> rustls::crypto::WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

/// verify-ca: the chain must lead to a trusted root (and not be revoked); the name is not
/// checked. webpki checks the name last, so a name error means everything else held.
#[derive(Debug)]
struct AnyName(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(opts: &[(&str, &str)]) -> PgUser {
        PgUser {
            username: "postgres".into(),
            options: opts
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn modes_follow_libpq() {
        let none = PgTls::from_user(&user(&[]), None).unwrap();
        assert_eq!((none.mode, none.verify), (SslMode::Prefer, Verify::Nothing));
        let off = PgTls::from_user(&user(&[("sslmode", "disable")]), None).unwrap();
        assert_eq!(off.mode, SslMode::Disable);
        let req = PgTls::from_user(&user(&[("sslmode", "require")]), None).unwrap();
        assert_eq!((req.mode, req.verify), (SslMode::Require, Verify::Nothing));
        // a root file turns require into verify-ca
        let req_ca = PgTls::from_user(
            &user(&[("sslmode", "require"), ("sslrootcert", "/ca.pem")]),
            None,
        )
        .unwrap();
        assert_eq!(req_ca.verify, Verify::Chain);
        let full = PgTls::from_user(
            &user(&[("sslmode", "verify-full"), ("sslrootcert", "/ca.pem")]),
            None,
        )
        .unwrap();
        assert_eq!(full.verify, Verify::Full);
        // system roots default to verify-full, and take nothing weaker
        let system = PgTls::from_user(&user(&[("sslrootcert", "system")]), None).unwrap();
        assert_eq!(system.verify, Verify::Full);
        assert!(system.system);
        for weak in ["require", "verify-ca"] {
            let err =
                PgTls::from_user(&user(&[("sslrootcert", "system"), ("sslmode", weak)]), None)
                    .unwrap_err()
                    .to_string();
            assert!(err.contains("verify-full"), "{weak}: {err}");
        }
    }

    #[test]
    fn bad_values_name_the_option() {
        for (opts, word) in [
            (vec![("sslmode", "verify")], "sslmode"),
            (vec![("sslmode", "verify-ca")], "sslrootcert"),
            (vec![("sslnegotiation", "direct")], "sslnegotiation"),
            (vec![("channel_binding", "always")], "channel_binding"),
            (vec![("gssencmode", "require")], "gssencmode"),
            (vec![("sslcrldir", "/nonexistent-dir")], "sslcrldir"),
        ] {
            let err = PgTls::from_user(&user(&opts), None)
                .unwrap_err()
                .to_string();
            assert!(err.contains(word), "{opts:?}: {err}");
        }
    }

    #[test]
    fn default_files_under_home() {
        let home = tempfile::tempdir().unwrap();
        let dir = home.path().join(".postgresql");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("root.crt"), "x").unwrap();
        std::fs::write(dir.join("postgresql.crt"), "x").unwrap();
        let tls = PgTls::from_user(&user(&[("sslmode", "require")]), Some(home.path())).unwrap();
        assert_eq!(tls.verify, Verify::Chain);
        assert_eq!(
            tls.client,
            Some((dir.join("postgresql.crt"), dir.join("postgresql.key")))
        );
    }

    #[test]
    fn unreadable_files_name_the_option() {
        let tls = PgTls::from_user(
            &user(&[
                ("sslmode", "verify-full"),
                ("sslrootcert", "/nonexistent/ca.pem"),
            ]),
            None,
        )
        .unwrap();
        let mut pgc = tokio_postgres::Config::new();
        let err = tls
            .connector(&mut pgc, false, None)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("sslrootcert /nonexistent/ca.pem"), "{err}");
        // a Unix socket never reads them
        assert!(tls.connector(&mut pgc, true, None).is_ok());
    }

    #[test]
    fn a_key_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.key");
        std::fs::write(&key, "x").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = check_key_mode(&key).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(check_key_mode(&key).is_ok());
    }
}
