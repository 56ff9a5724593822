//! Network namespaces and a cutting proxy for partition tests.

use crate::*;
use anyhow::{Result, bail};
use std::path::Path;
use std::process::{Command, Stdio};

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
