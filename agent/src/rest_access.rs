//! Who may call the REST API's write endpoints, and what a client may ask of the listener:
//! `restapi.allowlist` (with `allowlist_include_members`), HTTP Basic credentials compared in
//! constant time, a cap on open connections, an idle timeout and a header read timeout for a
//! port that may face untrusted networks.

use ipnet::IpNet;
use std::collections::HashMap;
use std::future::Ready;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::warn;

/// How long a host name of the allowlist or a member's REST API may take to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a client may take to send its request headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client may take to send a request body.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The most connections the REST API keeps open at once; one more is closed at once.
pub const MAX_CONNECTIONS: usize = 1024;

/// The most connections one client address may hold open at once: one noisy or hostile client
/// cannot take every place under [`MAX_CONNECTIONS`] from the health checks of the others.
pub const MAX_CONNECTIONS_PER_ADDRESS: usize = 128;

/// A connection whose client has sent nothing this long after connecting (or, over TLS, after
/// the handshake) is closed; once a request has begun, hyper's header read timeout and the
/// body timeout take over (a request that runs long, a switchover, is never cut).
pub const SILENCE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the write endpoints check and what every answer carries, as configured now (replaced
/// whole by a reload).
#[derive(Debug, Clone, Default)]
pub struct Access {
    pub allowlist: Allowlist,
    /// `restapi.authentication`; `None`: no credentials asked.
    pub credentials: Option<Credentials>,
    /// `restapi.verify_client: optional`: the write endpoints need a verified client
    /// certificate (with `required` the TLS handshake already refused a client without one).
    pub client_cert_for_writes: bool,
    /// `restapi.http_extra_headers` (+ `https_extra_headers` with TLS), added to every answer.
    pub extra_headers: Vec<(axum::http::HeaderName, axum::http::HeaderValue)>,
}

impl Access {
    pub async fn from_config(cfg: &shared::config::RestApiConfig) -> Access {
        Access {
            allowlist: Allowlist::resolve(&cfg.allowlist, cfg.allowlist_include_members).await,
            credentials: cfg.authentication.as_ref().map(Credentials::new),
            client_cert_for_writes: cfg.verify_client != shared::config::VerifyClient::None,
            // the configuration checked names and values; one that still does not convert is
            // logged and left out
            extra_headers: cfg
                .extra_headers()
                .iter()
                .filter_map(|(name, value)| {
                    let header = (
                        axum::http::HeaderName::try_from(name.as_str()),
                        axum::http::HeaderValue::try_from(value.as_str()),
                    );
                    match header {
                        (Ok(n), Ok(v)) => Some((n, v)),
                        _ => {
                            warn!(header = name, "restapi extra header not usable: left out");
                            None
                        }
                    }
                })
                .collect(),
        }
    }
}

/// Whether the connection's client presented a certificate the server verified.
#[derive(Debug, Clone, Copy)]
pub struct ClientCert(pub bool);

/// The TLS acceptor, telling each request whether its connection presented a verified client
/// certificate ([`ClientCert`]).
#[derive(Clone)]
pub struct CertAware<A> {
    inner: axum_server::tls_rustls::RustlsAcceptor<A>,
}

impl<A> CertAware<A> {
    pub fn new(inner: axum_server::tls_rustls::RustlsAcceptor<A>) -> CertAware<A> {
        CertAware { inner }
    }
}

impl<A, I, S> axum_server::accept::Accept<I, S> for CertAware<A>
where
    A: axum_server::accept::Accept<I, S>,
    A::Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    A::Service: Send + 'static,
    A::Future: Send + 'static,
{
    type Stream = Held<tokio_rustls::server::TlsStream<A::Stream>>;
    type Service = <axum::Extension<ClientCert> as tower_layer::Layer<A::Service>>::Service;
    type Future = Pin<
        Box<dyn std::future::Future<Output = io::Result<(Self::Stream, Self::Service)>> + Send>,
    >;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        use tower_layer::Layer;
        let handshake = self.inner.accept(stream, service);
        Box::pin(async move {
            let (tls, service) = handshake.await?;
            let presented = tls
                .get_ref()
                .1
                .peer_certificates()
                .is_some_and(|c| !c.is_empty());
            // silence after the handshake closes it too (the cap's own deadline counted the
            // handshake's bytes)
            Ok((
                Held::new(tls, None),
                axum::Extension(ClientCert(presented)).layer(service),
            ))
        })
    }
}

/// `restapi.allowlist` resolved to networks (at start and on reload, as Patroni does), and
/// whether the members' own REST API hosts are allowed too.
#[derive(Debug, Clone, Default)]
pub struct Allowlist {
    nets: Vec<IpNet>,
    include_members: bool,
    /// Some entry was configured: an allowlist whose names all failed to resolve allows nobody.
    configured: bool,
    /// The addresses of members' REST API hosts, looked up at most every [`MEMBER_CACHE`].
    members: Arc<std::sync::Mutex<MemberAddresses>>,
}

/// Member host → when it was looked up and its addresses.
type MemberAddresses = HashMap<String, (std::time::Instant, Vec<IpAddr>)>;

/// How long a member host's addresses are reused before they are looked up again.
const MEMBER_CACHE: Duration = Duration::from_secs(30);

impl Allowlist {
    /// Resolves the configured entries: addresses, networks (`10.0.0.0/8`) and host names (all
    /// their addresses). An entry that is none of these is logged and left out.
    pub async fn resolve(entries: &[String], include_members: bool) -> Allowlist {
        // all at once: a reload runs on the HA loop, which must not wait on DNS name by name
        let lookups = entries.iter().cloned().map(|e| async move {
            let found = resolve_entry(&e).await;
            (e, found)
        });
        let mut nets = Vec::new();
        for (entry, found) in crate::runtime::futures_join_all(lookups).await {
            match found {
                Ok(found) => nets.extend(found),
                Err(why) => warn!(
                    entry = entry.as_str(),
                    "restapi.allowlist: {why}; this entry allows nobody"
                ),
            }
        }
        Allowlist {
            nets,
            include_members,
            configured: !entries.is_empty(),
            members: Default::default(),
        }
    }

    /// The addresses of a member's REST API host (an address or a name, never a network:
    /// member keys are not the operator's word), from the cache when fresh.
    async fn member_addresses(&self, host: &str) -> Vec<IpAddr> {
        if host.contains('/') {
            return Vec::new();
        }
        if let Ok(ip) = host.parse::<IpAddr>() {
            return vec![ip.to_canonical()];
        }
        if let Some((at, found)) = self
            .members
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(host)
            && at.elapsed() < MEMBER_CACHE
        {
            return found.clone();
        }
        let found: Vec<IpAddr> =
            match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, 0))).await {
                Ok(Ok(addrs)) => addrs.map(|a| a.ip().to_canonical()).collect(),
                _ => Vec::new(),
            };
        self.members
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(host.to_string(), (std::time::Instant::now(), found.clone()));
        found
    }

    /// Whether any check applies at all.
    pub fn restricts(&self) -> bool {
        self.configured || self.include_members
    }

    /// Whether `peer` may call a write endpoint; `members` are the REST API URLs of the
    /// cluster's members (resolved now, as they may move).
    pub async fn allows(&self, peer: IpAddr, members: &[String]) -> bool {
        if !self.restricts() {
            return true;
        }
        let peer = peer.to_canonical();
        if self.nets.iter().any(|n| n.contains(&peer)) {
            return true;
        }
        if self.include_members {
            for url in members {
                let Some(host) = url_host(url) else { continue };
                if self.member_addresses(&host).await.contains(&peer) {
                    return true;
                }
            }
        }
        false
    }
}

/// The REST API's TLS server configuration: `restapi.certfile`/`keyfile` (an encrypted PKCS#8
/// key with `keyfile_password`), client certificates as `restapi.verify_client` says.
pub fn server_tls(
    rest: &shared::config::RestApiConfig,
    cert: &str,
    key: &str,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    use shared::config::VerifyClient;
    let clients = match (rest.verify_client, &rest.cafile) {
        (VerifyClient::None, _) | (_, None) => None,
        (mode, Some(cafile)) => Some((cafile.as_str(), mode == VerifyClient::Optional)),
    };
    tls_server_config(cert, key, rest.keyfile_password.as_ref(), clients)
}

/// A TLS server configuration from PEM files: the certificate chain, its key, and the CA
/// whose client certificates are required (or only checked when `optional`).
pub fn tls_server_config(
    cert: &str,
    key: &str,
    key_password: Option<&shared::config::Secret>,
    clients: Option<(&str, bool)>,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    shared::api::install_tls_provider();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| anyhow::anyhow!("{cert}: {e}"))?
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("{cert}: {e}"))?;
    anyhow::ensure!(!chain.is_empty(), "{cert}: no certificate in it");
    let key_pem = shared::api::private_key_pem(std::path::Path::new(key), key_password)
        .map_err(|e| anyhow::anyhow!("{key}: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| anyhow::anyhow!("{key}: {e}"))?;
    let builder = rustls::ServerConfig::builder();
    let builder = match clients {
        None => builder.with_no_client_auth(),
        Some((cafile, optional)) => {
            let mut roots = rustls::RootCertStore::empty();
            for ca in CertificateDer::pem_file_iter(cafile)
                .map_err(|e| anyhow::anyhow!("CA file {cafile}: {e}"))?
            {
                let ca = ca.map_err(|e| anyhow::anyhow!("CA file {cafile}: {e}"))?;
                roots
                    .add(ca)
                    .map_err(|e| anyhow::anyhow!("CA file {cafile}: {e}"))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots));
            let verifier = if optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| anyhow::anyhow!("CA file {cafile}: {e}"))?,
            )
        }
    };
    let mut config = builder.with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// One allowlist entry as networks.
async fn resolve_entry(entry: &str) -> Result<Vec<IpNet>, String> {
    let entry = entry.trim();
    if entry.contains('/') {
        // host bits may be set, as Patroni accepts them
        return entry
            .parse::<IpNet>()
            .map(|n| vec![n.trunc()])
            .map_err(|e| format!("{entry:?} is not a network: {e}"));
    }
    let bare = entry.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(vec![IpNet::from(ip.to_canonical())]);
    }
    match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((bare, 0))).await {
        Ok(Ok(addrs)) => {
            let nets: Vec<IpNet> = addrs.map(|a| IpNet::from(a.ip().to_canonical())).collect();
            if nets.is_empty() {
                Err(format!("{bare:?} resolves to no address"))
            } else {
                Ok(nets)
            }
        }
        Ok(Err(e)) => Err(format!("cannot resolve {bare:?}: {e}")),
        Err(_) => Err(format!(
            "{bare:?} did not resolve within {} s",
            RESOLVE_TIMEOUT.as_secs()
        )),
    }
}

/// The host of `http(s)://host:port/...`.
fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next()?;
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    (!host.is_empty()).then(|| host.to_string())
}

/// `restapi.authentication` as the one `Authorization` value that matches, kept only as a
/// digest: the received value is hashed the same way and the digests compared in constant time,
/// so neither the time of the comparison nor its length says anything about the credentials.
#[derive(Debug, Clone)]
pub struct Credentials {
    digest: [u8; 32],
}

impl Credentials {
    pub fn new(auth: &shared::config::BasicAuth) -> Credentials {
        use base64::Engine;
        let token = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            auth.username,
            auth.password.expose()
        ));
        Credentials {
            digest: digest(token.as_bytes()),
        }
    }

    /// Whether an `Authorization` header value carries these credentials.
    pub fn accept(&self, header: &[u8]) -> bool {
        let token = header
            .strip_prefix(b"Basic ")
            .map(|t| t.trim_ascii())
            .unwrap_or_default();
        bool::from(digest(token).ct_eq(&self.digest))
    }
}

fn digest(data: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The user name in an `Authorization: Basic` value, for a log line (never the password).
pub fn user_of(header: &[u8]) -> String {
    use base64::Engine;
    header
        .strip_prefix(b"Basic ")
        .and_then(|t| {
            base64::engine::general_purpose::STANDARD
                .decode(t.trim_ascii())
                .ok()
        })
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|d| d.split_once(':').map(|(u, _)| u.to_string()))
        .unwrap_or_default()
}

/// An acceptor that keeps at most `max` connections open, and at most `per_address` from one
/// client address: one more is closed at once, before TLS or HTTP, so a flood of connections
/// cannot exhaust the agent nor shut out the other clients.
#[derive(Clone)]
pub struct ConnectionCap {
    permits: Arc<Semaphore>,
    per_address: usize,
    open: Arc<std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>>,
}

impl ConnectionCap {
    pub fn new(max: usize, per_address: usize) -> ConnectionCap {
        ConnectionCap {
            permits: Arc::new(Semaphore::new(max)),
            per_address,
            open: Arc::default(),
        }
    }

    /// A place for one more connection from `ip`, if it has one left. IPv6 addresses count
    /// by /64 (one host usually holds a whole /64).
    fn hold_address(&self, ip: IpAddr) -> Option<AddressHold> {
        let ip = match ip {
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(std::net::Ipv6Addr::from(bits))
            }
            other => other,
        };
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= self.per_address {
            return None;
        }
        *n += 1;
        Some(AddressHold {
            ip,
            open: self.open.clone(),
        })
    }
}

/// A stream that knows its client's address.
pub trait PeerIp {
    fn peer_ip(&self) -> Option<IpAddr>;
}

impl PeerIp for tokio::net::TcpStream {
    fn peer_ip(&self) -> Option<IpAddr> {
        self.peer_addr().ok().map(|a| a.ip().to_canonical())
    }
}

impl PeerIp for tokio::io::DuplexStream {
    fn peer_ip(&self) -> Option<IpAddr> {
        None
    }
}

/// One connection's place among its address's; given back on drop.
pub struct AddressHold {
    ip: IpAddr,
    open: Arc<std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>>,
}

impl Drop for AddressHold {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

impl<I: PeerIp, S> axum_server::accept::Accept<I, S> for ConnectionCap {
    type Stream = Held<I>;
    type Service = S;
    type Future = Ready<io::Result<(Held<I>, S)>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let address = match stream.peer_ip() {
            Some(ip) => match self.hold_address(ip) {
                Some(hold) => Some(hold),
                None => {
                    return std::future::ready(Err(io::Error::other(format!(
                        "too many REST API connections from {ip}: closing this one"
                    ))));
                }
            },
            None => None,
        };
        std::future::ready(match self.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let mut held = Held::new(stream, Some(permit));
                held._address = address;
                Ok((held, service))
            }
            Err(_) => Err(io::Error::other(
                "too many REST API connections: closing this one",
            )),
        })
    }
}

/// A connection (holding its place under the cap, when it has one), closed when its client sends
/// nothing within [`SILENCE_TIMEOUT`] of the start.
pub struct Held<I> {
    inner: I,
    _permit: Option<OwnedSemaphorePermit>,
    _address: Option<AddressHold>,
    /// Until the first byte arrives; `None` afterwards.
    silence: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<I> Held<I> {
    pub fn new(inner: I, permit: Option<OwnedSemaphorePermit>) -> Held<I> {
        Held {
            inner,
            _permit: permit,
            _address: None,
            silence: Some(Box::pin(tokio::time::sleep(SILENCE_TIMEOUT))),
        }
    }

    fn moved(&mut self) {
        self.silence = None;
    }

    /// While waiting for the first byte: the deadline has passed.
    fn idled_out(&mut self, cx: &mut Context<'_>) -> bool {
        self.silence
            .as_mut()
            .is_some_and(|s| s.as_mut().poll(cx).is_ready())
    }
}

fn idle_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "REST API client sent nothing: closing the connection",
    )
}

impl<I: AsyncRead + Unpin> AsyncRead for Held<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.moved();
                }
                Poll::Ready(r)
            }
            Poll::Pending if self.idled_out(cx) => Poll::Ready(Err(idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Held<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn addresses_networks_and_names_are_allowed_nothing_else() {
        let list = Allowlist::resolve(
            &[
                "10.0.0.7".into(),
                "192.168.1.77/24".into(),
                "localhost".into(),
                "not an address/99".into(),
            ],
            false,
        )
        .await;
        assert!(list.allows(ip("10.0.0.7"), &[]).await);
        assert!(list.allows(ip("192.168.1.200"), &[]).await);
        assert!(list.allows(ip("127.0.0.1"), &[]).await);
        // an IPv4 peer seen on a dual-stack listener
        assert!(list.allows(ip("::ffff:10.0.0.7"), &[]).await);
        assert!(!list.allows(ip("10.0.0.8"), &[]).await);
        // members are allowed only with allowlist_include_members, and a member key cannot
        // smuggle a network in
        let members = ["http://10.0.0.8:8008/patroni".to_string()];
        let sly = ["http://[0.0.0.0/0]:8008/patroni".to_string()];
        let with = Allowlist::resolve(&["10.0.0.7".into()], true).await;
        assert!(!with.allows(ip("10.9.9.9"), &sly).await);
        assert!(!list.allows(ip("10.0.0.8"), &members).await);
        let with_members = Allowlist::resolve(&["10.0.0.7".into()], true).await;
        assert!(with_members.allows(ip("10.0.0.8"), &members).await);
        assert!(!with_members.allows(ip("10.0.0.9"), &members).await);
        // nothing configured: everyone; only members: only members
        assert!(Allowlist::default().allows(ip("8.8.8.8"), &[]).await);
        let only_members = Allowlist::resolve(&[], true).await;
        assert!(!only_members.allows(ip("10.0.0.9"), &members).await);
        // a list whose every entry is unusable allows nobody
        let broken = Allowlist::resolve(&["nonsense/xx".into()], false).await;
        assert!(!broken.allows(ip("127.0.0.1"), &[]).await);
    }

    #[tokio::test]
    async fn connections_over_the_cap_are_refused_until_one_closes() {
        use axum_server::accept::Accept;
        let cap = ConnectionCap::new(2, 2);
        let stream = || tokio::io::duplex(64).0;
        let a = cap.accept(stream(), ()).await.unwrap();
        let _b = cap.accept(stream(), ()).await.unwrap();
        assert!(cap.accept(stream(), ()).await.is_err());
        drop(a);
        assert!(cap.accept(stream(), ()).await.is_ok());
    }

    #[tokio::test]
    async fn one_address_cannot_take_every_place() {
        use axum_server::accept::Accept;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cap = ConnectionCap::new(10, 2);
        let mut clients = Vec::new();
        let mut accepted = Vec::new();
        for _ in 0..3 {
            clients.push(tokio::net::TcpStream::connect(addr).await.unwrap());
            let (server_side, _) = listener.accept().await.unwrap();
            accepted.push(cap.accept(server_side, ()).await);
        }
        assert!(accepted[0].is_ok() && accepted[1].is_ok());
        let err = accepted.pop().unwrap().err().unwrap().to_string();
        assert!(err.contains("from 127.0.0.1"), "{err}");
        // a connection closed gives its address's place back
        accepted.pop();
        clients.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        let (server_side, _) = listener.accept().await.unwrap();
        let again = cap.accept(server_side, ()).await;
        assert!(again.is_ok());
        assert_eq!(cap.open.lock().unwrap().get(&ip("127.0.0.1")), Some(&2));
        drop((accepted, again));
        assert!(cap.open.lock().unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_closed_a_speaking_one_never_for_a_pause() {
        use axum_server::accept::Accept;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let cap = ConnectionCap::new(1, 1);
        // the client end stays open, silent
        let (server_side, _client) = tokio::io::duplex(64);
        let (mut held, ()) = cap.accept(server_side, ()).await.unwrap();
        // silence from the start: the read ends with an error after the timeout
        let mut buf = [0u8; 8];
        let err = held.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        drop(held);
        // a client that spoke is never cut for a pause (a long request, a switchover)
        let (server_side, mut client) = tokio::io::duplex(64);
        let (mut held, ()) = cap.accept(server_side, ()).await.unwrap();
        client.write_all(b"GET").await.unwrap();
        assert_eq!(held.read(&mut buf).await.unwrap(), 3);
        let pause = tokio::time::timeout(SILENCE_TIMEOUT * 3, held.read(&mut buf)).await;
        assert!(pause.is_err(), "the read was cut: {pause:?}");
        drop(held);
        // and its place under the cap is free again
        assert!(cap.accept(tokio::io::duplex(8).0, ()).await.is_ok());
    }

    #[test]
    fn url_hosts() {
        assert_eq!(url_host("http://db1:8008/patroni").as_deref(), Some("db1"));
        assert_eq!(url_host("https://[::1]:8008/").as_deref(), Some("::1"));
        assert_eq!(
            url_host("http://10.0.0.1/patroni").as_deref(),
            Some("10.0.0.1")
        );
        assert_eq!(url_host("http:///x"), None);
    }

    #[test]
    fn credentials_match_exactly() {
        let c = Credentials::new(&shared::config::BasicAuth {
            username: "admin".into(),
            password: shared::config::Secret::new("s3cret"),
        });
        // admin:s3cret
        assert!(c.accept(b"Basic YWRtaW46czNjcmV0"));
        assert!(c.accept(b"Basic  YWRtaW46czNjcmV0 "));
        for wrong in [
            &b"Basic YWRtaW46czNjcmV1"[..],
            b"Basic YWRtaW46czNjcmV0YQ==",
            b"Bearer YWRtaW46czNjcmV0",
            b"",
            b"Basic ",
        ] {
            assert!(!c.accept(wrong), "{:?}", String::from_utf8_lossy(wrong));
        }
        assert_eq!(user_of(b"Basic YWRtaW46czNjcmV0"), "admin");
        assert_eq!(user_of(b"garbage"), "");
    }
}
