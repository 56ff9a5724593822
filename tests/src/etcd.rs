//! A real etcd for a test (plain or TLS), and reading the cluster's keys from it.

use crate::*;
use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

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
