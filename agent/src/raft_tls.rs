//! The members' TLS derived from `raft.password` alone. Every member derives the same CA key
//! from the password (PBKDF2-HMAC-SHA256, salted with the scope), issues itself a certificate
//! for its `self_addr` with a fresh key at each start, and trusts only certificates that CA
//! signed. So the peer port — where etcd serves the Raft traffic and its client API — answers
//! only members that know the password, with no files for the operator to make or copy. The CA
//! key is never written; the member's own key is, readable by its user only.

use anyhow::{Context, Result};
use shared::config::{RaftConfig, RaftTls};
use std::num::NonZeroU32;
use std::path::Path;

/// PBKDF2 rounds: an attacker who saw a member's certificate could test guesses of the
/// password against the CA's public key; each guess costs this many HMACs.
const ROUNDS: u32 = 600_000;

/// The PKCS#8 v1 header of an Ed25519 private key; the 32-byte seed follows (RFC 8410).
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// An Ed25519 key from its seed, held as PKCS#8 v1 (the form OpenSSL, Go and rustls all read;
/// ring's own generated keys are v2, which curl's OpenSSL refuses).
fn ed25519_key(seed: &[u8; 32]) -> Result<rcgen::KeyPair> {
    let mut der = ED25519_PKCS8_PREFIX.to_vec();
    der.extend_from_slice(seed);
    Ok(rcgen::KeyPair::try_from(der.as_slice())?)
}

/// The CA key of a scope's members: the same on every member that knows `password`.
fn ca_key(password: &str, scope: &str) -> Result<rcgen::KeyPair> {
    let mut seed = [0u8; 32];
    let rounds = NonZeroU32::new(ROUNDS).context("PBKDF2 rounds")?;
    let salt = format!("pgpilot raft CA/{scope}");
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        rounds,
        salt.as_bytes(),
        password.as_bytes(),
        &mut seed,
    );
    ed25519_key(&seed).context("the CA key derived from raft.password")
}

/// The CA certificate: its name and validity are fixed, so every member's copy names the same
/// issuer with the same key (its signature bytes may differ; nothing compares them).
fn ca_cert(key: &rcgen::KeyPair, scope: &str) -> Result<rcgen::Certificate> {
    use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa};
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "pgpilot raft");
    dn.push(DnType::CommonName, format!("pgpilot raft CA for {scope}"));
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    p.serial_number = Some(rcgen::SerialNumber::from(1u64));
    p.self_signed(key).context("the raft CA certificate")
}

/// This member's certificate for the host of `self_addr` (an IP address or a DNS name),
/// usable as server and as client (etcd's peers dial each other both ways).
fn member_cert(
    cfg: &RaftConfig,
    ca: &rcgen::Certificate,
    ca_key: &rcgen::KeyPair,
) -> Result<(rcgen::Certificate, rcgen::KeyPair)> {
    use rcgen::{CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, SanType};
    let (host, _) = shared::config::split_host_port(&cfg.self_addr)
        .with_context(|| format!("raft.self_addr {}", cfg.self_addr))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let san = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(
            host.to_string()
                .try_into()
                .with_context(|| format!("raft.self_addr host {host}"))?,
        ),
    };
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "pgpilot raft member");
    p.distinguished_name = dn;
    p.subject_alt_names = vec![san];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    p.use_authority_key_identifier_extension = true;
    let mut seed = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
        .map_err(|_| anyhow::anyhow!("no random bytes for a member key"))?;
    let key = ed25519_key(&seed).context("a member key")?;
    let cert = p
        .signed_by(&key, ca, ca_key)
        .context("the member certificate")?;
    Ok((cert, key))
}

/// Writes `text` to `path` through a temporary file and a rename, with `mode`.
fn write_file(path: &Path, text: &str, mode: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("{}", tmp.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .with_context(|| format!("{}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("{}", path.display()))
}

/// Where the derived files are.
fn tls_dir(cfg: &RaftConfig) -> std::path::PathBuf {
    cfg.data_dir.join("tls")
}

/// Whether the section's TLS files are the ones [`derive`] wrote.
pub fn is_derived(cfg: &RaftConfig) -> bool {
    cfg.password.is_some()
        && cfg
            .tls
            .as_ref()
            .is_some_and(|t| t.cacert == tls_dir(cfg).join("ca.pem"))
}

/// Writes the derived files again when one went missing while the agent runs (the raft
/// directory wiped so that the member is admitted again); files the operator gave are left
/// alone.
pub fn restore(cfg: &RaftConfig, scope: &str) -> Result<()> {
    let Some(t) = cfg.tls.as_ref().filter(|_| is_derived(cfg)) else {
        return Ok(());
    };
    if t.cacert.exists() && t.cert.exists() && t.key.exists() {
        return Ok(());
    }
    let mut plain = cfg.clone();
    plain.tls = None;
    derive(&plain, scope).map(|_| ())
}

/// With `raft.password` set and no TLS files configured, derives the members' TLS into
/// `raft.data_dir/tls/` and returns the section with those files; otherwise returns it as it is
/// (files the operator gave win: the password then only proves join requests).
pub fn derive(cfg: &RaftConfig, scope: &str) -> Result<RaftConfig> {
    let (Some(password), None) = (&cfg.password, &cfg.tls) else {
        return Ok(cfg.clone());
    };
    let dir = tls_dir(cfg);
    if std::fs::symlink_metadata(&dir).is_ok_and(|m| m.file_type().is_symlink()) {
        anyhow::bail!(
            "{} is a symbolic link: the member's key is written there; make it a directory",
            dir.display()
        );
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("{}", dir.display()))?;
    }
    let key = ca_key(password.expose(), scope)?;
    let ca = ca_cert(&key, scope)?;
    let (cert, member_key) = member_cert(cfg, &ca, &key)?;
    let tls = RaftTls {
        cacert: dir.join("ca.pem"),
        cert: dir.join("member.pem"),
        key: dir.join("member.key"),
    };
    write_file(&tls.key, &member_key.serialize_pem(), 0o600)?;
    write_file(&tls.cert, &cert.pem(), 0o644)?;
    write_file(&tls.cacert, &ca.pem(), 0o644)?;
    let mut out = cfg.clone();
    out.tls = Some(tls);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_key_depends_on_the_password_and_the_scope_only() {
        let a = ca_key("s3cret", "main").unwrap().public_key_der();
        assert_eq!(a, ca_key("s3cret", "main").unwrap().public_key_der());
        assert_ne!(a, ca_key("s3cret!", "main").unwrap().public_key_der());
        assert_ne!(a, ca_key("s3cret", "other").unwrap().public_key_der());
    }

    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    /// Whether a member trusting `cacert` accepts `leaf` as a peer's client certificate.
    fn accepts(cacert: &Path, leaf: &CertificateDer<'static>) -> bool {
        shared::api::install_tls_provider();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(cacert).unwrap())
            .unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder(std::sync::Arc::new(roots))
            .build()
            .unwrap();
        verifier
            .verify_client_cert(leaf, &[], rustls::pki_types::UnixTime::now())
            .is_ok()
    }

    #[test]
    fn members_certificates_chain_to_one_another_s_ca_copy() {
        // two members derive the CA separately; a certificate one issued verifies against the
        // other's copy of the CA (same issuer name, same key)
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = crate::tests_support::raft_section(
            &dir.path().join("a").to_string_lossy(),
            "127.0.0.1:5010",
        );
        cfg.password = Some(shared::config::Secret::new("s3cret"));
        let a = derive(&cfg, "main").unwrap();
        cfg.data_dir = dir.path().join("b");
        cfg.self_addr = "127.0.0.2:5010".into();
        let b = derive(&cfg, "main").unwrap();
        let (ta, tb) = (a.tls.unwrap(), b.tls.unwrap());
        let leaf_a = CertificateDer::from_pem_file(&ta.cert).unwrap();
        assert!(
            accepts(&tb.cacert, &leaf_a),
            "b does not accept a's certificate"
        );
        // a CA derived from another password does not accept it
        cfg.password = Some(shared::config::Secret::new("other"));
        cfg.data_dir = dir.path().join("c");
        let c = derive(&cfg, "main").unwrap().tls.unwrap();
        assert!(
            !accepts(&c.cacert, &leaf_a),
            "another password's CA accepts a's certificate"
        );
        // the member key is private
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&ta.key).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "member key mode {mode:o}");
    }

    #[test]
    fn files_the_operator_gave_win_and_no_password_derives_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg =
            crate::tests_support::raft_section(&dir.path().to_string_lossy(), "db1.example:5010");
        assert_eq!(derive(&cfg, "main").unwrap(), cfg);
        cfg.password = Some(shared::config::Secret::new("s3cret"));
        cfg.tls = Some(RaftTls {
            cacert: "/etc/ca.pem".into(),
            cert: "/etc/c.pem".into(),
            key: "/etc/k.pem".into(),
        });
        assert_eq!(derive(&cfg, "main").unwrap(), cfg);
        assert!(!is_derived(&cfg));
        // a DNS name gets a DNS certificate
        cfg.tls = None;
        let derived = derive(&cfg, "main").unwrap();
        assert!(is_derived(&derived));
        let t = derived.tls.clone().unwrap();
        assert!(
            std::fs::read_to_string(&t.cert)
                .unwrap()
                .contains("BEGIN CERTIFICATE")
        );
        // the directory wiped while the agent runs: written again
        std::fs::remove_dir_all(dir.path().join("tls")).unwrap();
        restore(&derived, "main").unwrap();
        assert!(t.key.exists() && t.cert.exists() && t.cacert.exists());
        // a symbolic link where the key would go is refused
        std::fs::remove_dir_all(dir.path().join("tls")).unwrap();
        std::os::unix::fs::symlink("/tmp", dir.path().join("tls")).unwrap();
        assert!(derive(&cfg, "main").is_err());
    }
}
