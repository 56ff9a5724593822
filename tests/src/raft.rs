//! Raft labs: clusters whose members carry a `raft:` section instead of `etcd3:` (each agent runs
//! its own etcd member), optionally with a witness, and a three-member etcd run by the test for
//! the side-by-side measurement against the embedded members.

use crate::{ClusterSpec, Etcd, Lab, Proc, agent_bin, free_port};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A raft lab: the cluster (its harness etcd never started), each raft member's peer and client
/// port (the witness's last), and the witness process when there is one.
pub struct RaftLab {
    pub lab: Lab,
    pub peers: Vec<u16>,
    pub clients: Vec<u16>,
    pub witness: Option<Proc>,
    /// `raft.password` of every member, when the lab was made with one.
    pub password: Option<String>,
}

/// The `raft:` section of member `i` of `peers`, its data under `dir`.
pub fn raft_section(dir: &Path, i: usize, peers: &[u16], client: u16) -> String {
    let partners: Vec<String> = peers
        .iter()
        .enumerate()
        .filter(|(j, _)| *j != i)
        .map(|(_, p)| format!("'127.0.0.1:{p}'"))
        .collect();
    format!(
        "raft:\n  data_dir: {}\n  self_addr: '127.0.0.1:{}'\n  partner_addrs: [{}]\n  client_port: {client}\n",
        dir.display(),
        peers[i],
        partners.join(", ")
    )
}

/// `section` with `password:` added when there is one.
fn with_password(section: &str, password: Option<&str>) -> String {
    match password {
        Some(p) => section.replacen("raft:\n", &format!("raft:\n  password: '{p}'\n"), 1),
        None => section.to_string(),
    }
}

impl RaftLab {
    /// `spec.nodes` database members with `raft:` sections (their `etcd3` section replaced),
    /// plus a witness when asked (started at once); the agents are not started.
    pub fn new(tag: &str, spec: ClusterSpec, witness: bool) -> Result<RaftLab> {
        Self::with_password(tag, spec, witness, None)
    }

    /// As [`RaftLab::new`], every member's section (the witness's too) with `raft.password`.
    pub fn with_password(
        tag: &str,
        spec: ClusterSpec,
        witness: bool,
        password: Option<&str>,
    ) -> Result<RaftLab> {
        let nodes = spec.nodes;
        let lab = Lab::new(tag, spec, false)?;
        let members = nodes + usize::from(witness);
        let peers: Vec<u16> = (0..members).map(|_| free_port()).collect();
        let clients: Vec<u16> = (0..members).map(|_| free_port()).collect();
        let etcd_section = format!("etcd3:\n  hosts: {}\n", lab.etcd.endpoint());
        for (i, n) in lab.cluster.nodes.iter().enumerate() {
            let text = std::fs::read_to_string(&n.config_path)?;
            anyhow::ensure!(text.contains(&etcd_section), "no etcd3 section in {text}");
            let dir = n.config_path.parent().context("no node dir")?.join("raft");
            let section = raft_section(&dir, i, &peers, clients[i]);
            let text = text.replace(&etcd_section, &with_password(&section, password));
            std::fs::write(&n.config_path, text)?;
        }
        let mut rl = RaftLab {
            lab,
            peers,
            clients,
            witness: None,
            password: password.map(str::to_string),
        };
        if witness {
            rl.start_witness()?;
        }
        Ok(rl)
    }

    pub fn witness_config(&self) -> PathBuf {
        self.lab.work.path.join("witness.yml")
    }

    /// Starts `pgpilot-agent --witness` with the last member's raft section.
    pub fn start_witness(&mut self) -> Result<()> {
        let i = self.peers.len() - 1;
        let dir = self.lab.work.path.join("witness-raft");
        let cfg = self.witness_config();
        std::fs::write(
            &cfg,
            format!(
                "scope: {}\n{}",
                self.lab.cluster.spec.scope,
                with_password(
                    &raft_section(&dir, i, &self.peers, self.clients[i]),
                    self.password.as_deref()
                )
            ),
        )?;
        let log = std::fs::File::create(self.lab.work.path.join("witness.log"))?;
        let child = std::process::Command::new(agent_bin())
            .arg("--witness")
            .arg(&cfg)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start the witness")?;
        self.witness = Some(Proc {
            child,
            name: "witness".into(),
        });
        Ok(())
    }

    /// etcd as seen through raft member `i`'s local client port.
    pub fn etcd_via(&self, i: usize) -> Etcd {
        Etcd::at(
            &self.lab.work.path,
            "127.0.0.1",
            self.clients[i],
            self.peers[i],
        )
    }

    /// The leader key's holder, through any database member's etcd member that answers.
    pub fn leader(&self) -> Option<String> {
        (0..self.lab.cluster.nodes.len())
            .find_map(|i| self.etcd_via(i).leader(&self.lab.cluster.spec.scope))
            .map(|(n, _)| n)
    }
}

impl Drop for RaftLab {
    fn drop(&mut self) {
        if let Some(mut w) = self.witness.take() {
            let _ = w.stop(Duration::from_secs(15));
        }
    }
}

/// Three etcd members run by the test (an external etcd, for comparison with the embedded
/// members): member `i` beside database node `i`.
pub struct EtcdTrio {
    pub procs: Vec<Option<Proc>>,
    pub clients: Vec<u16>,
}

impl EtcdTrio {
    pub fn start(dir: &Path) -> Result<EtcdTrio> {
        let peers: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let clients: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let initial: Vec<String> = peers
            .iter()
            .enumerate()
            .map(|(i, p)| format!("m{i}=http://127.0.0.1:{p}"))
            .collect();
        let mut procs = Vec::new();
        for i in 0..3 {
            let log = std::fs::File::create(dir.join(format!("etcd-m{i}.log")))?;
            let child = std::process::Command::new("etcd")
                .arg(format!("--name=m{i}"))
                .arg(format!(
                    "--data-dir={}",
                    dir.join(format!("etcd-m{i}")).display()
                ))
                .arg(format!("--listen-peer-urls=http://127.0.0.1:{}", peers[i]))
                .arg(format!(
                    "--initial-advertise-peer-urls=http://127.0.0.1:{}",
                    peers[i]
                ))
                .arg(format!(
                    "--listen-client-urls=http://127.0.0.1:{}",
                    clients[i]
                ))
                .arg(format!(
                    "--advertise-client-urls=http://127.0.0.1:{}",
                    clients[i]
                ))
                .arg(format!("--initial-cluster={}", initial.join(",")))
                .arg("--initial-cluster-state=new")
                .arg("--initial-cluster-token=pgpilot-trio")
                .arg("--logger=zap")
                .arg("--log-level=warn")
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("cannot start etcd")?;
            procs.push(Some(Proc {
                child,
                name: format!("etcd-m{i}"),
            }));
        }
        Ok(EtcdTrio { procs, clients })
    }

    /// The `hosts` list of an etcd3 section.
    pub fn hosts(&self) -> String {
        let h: Vec<String> = self
            .clients
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("[{}]", h.join(", "))
    }

    /// SIGKILLs member `i` (its machine is lost).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.procs[i].take() {
            p.signal(nix::sys::signal::Signal::SIGKILL);
            let _ = p.stop(Duration::from_secs(5));
        }
    }
}
