//! The testbed's shape and how it is built: underlay subnets (bridges in a namespace of
//! their own) joined by a router, an etcd host, node namespaces, an outside host and NAT
//! gateways, and the [`Node`] and [`Pod`] records that describe what was built.
//!
//! Addressing: underlay `i` is `192.168.<10(i+1)>.0/24` with the router at `.1`, etcd at
//! `.2` of the first underlay (an etcd cluster's members at `.3` on, `.2` their client
//! host), and nodes from `.11`. The outside host is `203.0.113.2` behind
//! the router (`203.0.113.1`). A node behind NAT sits at `172.16.<k>.2` behind a gateway
//! whose public side is `.250 - k` of its underlay.
use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Child,
};

use anyhow::{Context, Result, anyhow};
use serde_json::Value;

use crate::{BPF_ROOT, Binaries, Testbed, cleanup, etcd::Etcd, etcd_cluster::EtcdCluster, netns};

/// One node of a [`Spec`].
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub name: String,
    pub underlay: usize,
    /// Behind a NAT gateway on its underlay.
    pub nat: bool,
    /// Which cluster it joins: 0, the testbed's, or one of [`Spec::clusters`] (1 on).
    pub cluster: usize,
}

/// The shape of a testbed.
#[derive(Debug, Clone, Default)]
pub struct Spec {
    pub underlays: usize,
    pub nodes: Vec<NodeSpec>,
    pub outside: bool,
    /// Written to `<prefix>/config` when the testbed starts.
    pub network_config: Option<String>,
    pub etcd_prefix: Option<String>,
    /// Binaries to run (default: [`Binaries::locate`]).
    pub bins: Option<Binaries>,
    /// etcd members, each in a namespace of its own (0 or 1: one etcd on the etcd host).
    pub etcd_members: usize,
    /// Further clusters, each with an etcd of its own holding this network config:
    /// cluster `k` (1 on) has its etcd at `.2` of underlay `k`.
    pub clusters: Vec<String>,
    /// The further clusters' etcds serve HTTPS and want client certificates.
    pub cluster_tls: bool,
}

impl Spec {
    /// `n` nodes on one underlay subnet.
    pub fn flat(n: usize) -> Self {
        let mut s = Spec {
            underlays: 1,
            ..Default::default()
        };
        for i in 1..=n {
            s = s.node(&format!("n{i}"), 0);
        }
        s
    }

    pub fn underlays(mut self, n: usize) -> Self {
        self.underlays = n;
        self
    }

    pub fn node(mut self, name: &str, underlay: usize) -> Self {
        self.nodes.push(NodeSpec {
            name: name.into(),
            underlay,
            nat: false,
            cluster: 0,
        });
        self
    }

    pub fn nat_node(mut self, name: &str, underlay: usize) -> Self {
        self.nodes.push(NodeSpec {
            name: name.into(),
            underlay,
            nat: true,
            cluster: 0,
        });
        self
    }

    /// Another cluster with an etcd of its own holding `network_json` (at `.2` of
    /// underlay `k` for the `k`th such cluster).
    pub fn cluster(mut self, network_json: &str) -> Self {
        self.clusters.push(network_json.into());
        self
    }

    /// The further clusters' etcds with TLS (their files: [`crate::etcd::Etcd::tls`]).
    pub fn cluster_tls(mut self) -> Self {
        self.cluster_tls = true;
        self
    }

    /// A node of cluster `cluster` behind a NAT gateway on its underlay.
    pub fn cluster_nat_node(mut self, name: &str, underlay: usize, cluster: usize) -> Self {
        self = self.nat_node(name, underlay);
        if let Some(n) = self.nodes.last_mut() {
            n.cluster = cluster;
        }
        self
    }

    /// A node of cluster `cluster` (0: the testbed's own; see [`Spec::cluster`]).
    pub fn cluster_node(mut self, name: &str, underlay: usize, cluster: usize) -> Self {
        self = self.node(name, underlay);
        if let Some(n) = self.nodes.last_mut() {
            n.cluster = cluster;
        }
        self
    }

    pub fn outside(mut self) -> Self {
        self.outside = true;
        self
    }

    pub fn binaries(mut self, bins: Binaries) -> Self {
        self.bins = Some(bins);
        self
    }

    /// An etcd cluster of `members` instead of one etcd (see [`EtcdCluster`]).
    pub fn etcd_cluster(mut self, members: usize) -> Self {
        self.etcd_members = members;
        self
    }

    pub fn network(mut self, json: &str) -> Self {
        self.network_config = Some(json.into());
        self
    }
}

pub fn underlay_prefix(i: usize) -> String {
    format!("192.168.{}", 10 * (i + 1))
}

pub const OUTSIDE_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
pub const OUTSIDE_GW: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
pub const ETCD_PREFIX: &str = "/coreos.com/network";

pub struct Node {
    /// Short name in the spec (`n1`).
    pub name: String,
    /// Its namespace; also its `--node-name`, unique per run.
    pub ns: String,
    /// Its underlay address.
    pub ip: Ipv4Addr,
    /// Address other nodes see (the NAT gateway's for a node behind NAT).
    pub public_ip: Ipv4Addr,
    pub underlay: usize,
    /// Its cluster (0: the testbed's own).
    pub cluster: usize,
    pub dir: PathBuf,
    /// The running agent, if any (started and stopped in `agents.rs`).
    pub(crate) agent: Option<Child>,
    pub pods: Vec<Pod>,
}

impl Node {
    /// The node's pin directory: `maps/`, `progs/`, `links/`.
    pub fn pin_dir(&self) -> PathBuf {
        Path::new(BPF_ROOT).join(&self.ns)
    }

    /// A map the node's agent pinned.
    pub fn map_pin(&self, map: &str) -> PathBuf {
        self.pin_dir().join("maps").join(map)
    }

    pub fn subnet_file(&self) -> PathBuf {
        self.dir.join("subnet.env")
    }

    /// The subnet this node leased (network address and prefix), from its subnet file.
    pub fn subnet(&self) -> Result<(Ipv4Addr, u8)> {
        let text = std::fs::read_to_string(self.subnet_file())
            .with_context(|| format!("reading {}", self.subnet_file().display()))?;
        let v = text
            .lines()
            .find_map(|l| l.strip_prefix("FLANNEL_SUBNET="))
            .ok_or_else(|| anyhow!("no FLANNEL_SUBNET in {}", self.subnet_file().display()))?;
        let (ip, len) = v
            .split_once('/')
            .ok_or_else(|| anyhow!("FLANNEL_SUBNET={v} is not a CIDR"))?;
        let len: u8 = len.parse()?;
        let ip: Ipv4Addr = ip.parse()?;
        let mask = u32::MAX.checked_shl(32 - len as u32).unwrap_or(0);
        Ok((Ipv4Addr::from(u32::from(ip) & mask), len))
    }
}

/// A pod the CNI plugin wired in.
#[derive(Debug, Clone)]
pub struct Pod {
    pub name: String,
    pub ns: String,
    pub node: String,
    pub ip: Ipv4Addr,
    pub container_id: String,
    /// The CNI ADD result.
    pub result: Value,
}

/// Gives `eth0` of a host namespace `ip`/24 and, optionally, a default route.
fn address_host(ns: &str, ip: Ipv4Addr, gateway: Option<&str>) -> Result<()> {
    netns::ip(&["-n", ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
    if let Some(gw) = gateway {
        netns::ip(&["-n", ns, "route", "add", "default", "via", gw])?;
    }
    Ok(())
}

impl Testbed {
    fn ns(&self, role: &str) -> String {
        format!("nd{}-{role}", self.id)
    }

    pub(crate) fn add_ns(&self, name: &str) -> Result<()> {
        netns::create(name)?;
        cleanup::record(&self.id, |r| r.namespaces.push(name.to_string()));
        Ok(())
    }

    /// Makes the far end `dev` (in `ns`) of a node's veth behave like a wire into a NIC:
    /// frames towards the node carry complete checksums, and frames the node's XDP sends
    /// back are delivered (`peer_xdp`).
    fn wire_end(&self, ns: &str, dev: &str) -> Result<()> {
        netns::tx_checksum_off(ns, dev)?;
        self.peer_xdp()?.attach(ns, dev)
    }

    /// The peers' XDP program, loaded on first use.
    fn peer_xdp(&self) -> Result<&crate::peer_xdp::PeerXdp> {
        if let Some(p) = self.peer_xdp.get() {
            return Ok(p);
        }
        let p = crate::peer_xdp::PeerXdp::load()?;
        Ok(self.peer_xdp.get_or_init(|| p))
    }

    /// A veth pair with ends in two of our namespaces.
    fn veth(&self, ns_a: &str, a: &str, ns_b: &str, b: &str) -> Result<()> {
        netns::ip(&[
            "-n", ns_a, "link", "add", a, "type", "veth", "peer", "name", b, "netns", ns_b,
        ])?;
        netns::ip(&["-n", ns_a, "link", "set", a, "up"])?;
        netns::ip(&["-n", ns_b, "link", "set", b, "up"])?;
        Ok(())
    }

    /// Plugs `ifname` of namespace `ns` into underlay bridge `u` (port `port` there).
    fn plug(&self, u: usize, port: &str, ns: &str, ifname: &str) -> Result<()> {
        self.veth(&self.underlay_ns, port, ns, ifname)?;
        netns::ip(&[
            "-n",
            &self.underlay_ns,
            "link",
            "set",
            port,
            "master",
            &format!("br{u}"),
        ])?;
        Ok(())
    }

    /// Creates every namespace, link and address the spec asks for, and starts etcd.
    pub(crate) fn build(&mut self) -> Result<()> {
        let spec = self.spec.clone();
        let ul = self.underlay_ns.clone();
        self.add_ns(&ul)?;
        for u in 0..spec.underlays.max(1) {
            let br = format!("br{u}");
            netns::ip(&["-n", &ul, "link", "add", &br, "type", "bridge"])?;
            netns::ip(&["-n", &ul, "link", "set", &br, "up"])?;
        }
        let needs_router = spec.underlays > 1 || spec.outside || spec.nodes.iter().any(|n| n.nat);
        if needs_router {
            self.add_router()?;
        }
        self.start_etcd_host(needs_router)?;
        if let Some(cfg) = &spec.network_config {
            self.set_network_config(cfg)?;
        }
        for (i, cfg) in spec.clusters.iter().enumerate() {
            self.start_cluster_etcd(i + 1, cfg)?;
        }

        let mut next_host = vec![11u8; spec.underlays.max(1)];
        let mut nat_count = 0u8;
        for n in &spec.nodes {
            let ns = self.ns(&n.name);
            self.add_ns(&ns)?;
            // Only netdp's programs may forward on a node: a packet that crosses a node with
            // forwarding off was carried by eBPF, not by the kernel's routing.
            netns::sysctl(&ns, "net.ipv4.ip_forward", "0")?;
            let (ip, public_ip) = if n.nat {
                nat_count += 1;
                self.place_behind_nat(n, &ns, nat_count)?
            } else {
                let host = next_host[n.underlay];
                next_host[n.underlay] += 1;
                self.place_on_underlay(n, &ns, host, needs_router)?
            };
            let dir = self.dir.join(&n.name);
            std::fs::create_dir_all(&dir)?;
            cleanup::record(&self.id, |r| r.bpf_dirs.push(Path::new(BPF_ROOT).join(&ns)));
            self.nodes.push(Node {
                name: n.name.clone(),
                ns,
                ip,
                public_ip,
                underlay: n.underlay,
                cluster: n.cluster,
                dir,
                agent: None,
                pods: Vec::new(),
            });
        }
        Ok(())
    }

    /// The router between the underlays (`.1` on each), and the outside host behind it if
    /// the spec asks for one.
    fn add_router(&mut self) -> Result<()> {
        let spec = self.spec.clone();
        let rt = self.ns("rt");
        self.add_ns(&rt)?;
        netns::sysctl(&rt, "net.ipv4.ip_forward", "1")?;
        for u in 0..spec.underlays.max(1) {
            self.plug(u, &format!("rt{u}"), &rt, &format!("eth{u}"))?;
            netns::ip(&[
                "-n",
                &rt,
                "addr",
                "add",
                &format!("{}.1/24", underlay_prefix(u)),
                "dev",
                &format!("eth{u}"),
            ])?;
        }
        if spec.outside {
            let out = self.ns("out");
            self.add_ns(&out)?;
            self.veth(&rt, "out", &out, "eth0")?;
            netns::ip(&[
                "-n",
                &rt,
                "addr",
                "add",
                &format!("{OUTSIDE_GW}/24"),
                "dev",
                "out",
            ])?;
            netns::ip(&[
                "-n",
                &out,
                "addr",
                "add",
                &format!("{OUTSIDE_IP}/24"),
                "dev",
                "eth0",
            ])?;
            netns::ip(&[
                "-n",
                &out,
                "route",
                "add",
                "default",
                "via",
                &OUTSIDE_GW.to_string(),
            ])?;
            self.outside_ns = Some(out);
        }
        self.router_ns = Some(rt);
        Ok(())
    }

    /// etcd's host, on the first underlay, with etcd running in it.
    fn start_etcd_host(&mut self, needs_router: bool) -> Result<()> {
        let ctl = self.ctl_ns.clone();
        self.add_ns(&ctl)?;
        self.plug(0, "ctl", &ctl, "eth0")?;
        let etcd_ip = Ipv4Addr::new(192, 168, 10, 2);
        netns::ip(&[
            "-n",
            &ctl,
            "addr",
            "add",
            &format!("{etcd_ip}/24"),
            "dev",
            "eth0",
        ])?;
        if needs_router {
            netns::ip(&["-n", &ctl, "route", "add", "default", "via", "192.168.10.1"])?;
        }
        if self.spec.etcd_members > 1 {
            return self.start_etcd_cluster(needs_router);
        }
        let etcd = Etcd::start(&self.dir, Some(&ctl), etcd_ip, None)?;
        self.etcd = Some(etcd);
        Ok(())
    }

    /// Cluster `k`'s etcd, in a namespace of its own at `.2` of underlay `k`, holding
    /// `config` at the testbed's prefix.
    fn start_cluster_etcd(&mut self, k: usize, config: &str) -> Result<()> {
        if k >= self.spec.underlays {
            return Err(anyhow!(
                "cluster {k} needs underlay {k} for its etcd: ask for {} underlays",
                k + 1
            ));
        }
        let ns = self.ns(&format!("etcd-c{k}"));
        self.add_ns(&ns)?;
        self.plug(k, &format!("etcd-c{k}"), &ns, "eth0")?;
        let ip: Ipv4Addr = format!("{}.2", underlay_prefix(k)).parse()?;
        address_host(&ns, ip, Some(&format!("{}.1", underlay_prefix(k))))?;
        let dir = self.dir.join(format!("cluster{k}"));
        std::fs::create_dir_all(&dir)?;
        let tls = match self.spec.cluster_tls {
            true => Some(crate::tls::generate(&dir.join("pki"))?),
            false => None,
        };
        let etcd = Etcd::start(&dir, Some(&ns), ip, tls)?;
        etcd.put(&format!("{}/config", self.prefix), config)?;
        self.cluster_etcds.push(etcd);
        Ok(())
    }

    /// One namespace per member on the first underlay (`.3` on), the members in them.
    fn start_etcd_cluster(&mut self, needs_router: bool) -> Result<()> {
        let mut members = Vec::new();
        for i in 0..self.spec.etcd_members {
            let ns = self.ns(&format!("etcd{i}"));
            self.add_ns(&ns)?;
            self.plug(0, &format!("etcd{i}"), &ns, "eth0")?;
            let ip = Ipv4Addr::new(192, 168, 10, 3 + i as u8);
            address_host(&ns, ip, needs_router.then_some("192.168.10.1"))?;
            members.push((ns, ip));
        }
        let cluster = EtcdCluster::start(&self.dir, &self.id, &self.ctl_ns, &members)?;
        self.etcd_cluster = Some(cluster);
        Ok(())
    }

    /// Plugs node namespace `ns` into its underlay as host `.host`; returns its address,
    /// which is also the one its peers see.
    fn place_on_underlay(
        &self,
        n: &NodeSpec,
        ns: &str,
        host: u8,
        needs_router: bool,
    ) -> Result<(Ipv4Addr, Ipv4Addr)> {
        let pfx = underlay_prefix(n.underlay);
        self.plug(n.underlay, &n.name, ns, "eth0")?;
        self.wire_end(&self.underlay_ns, &n.name)?;
        let ip: Ipv4Addr = format!("{pfx}.{host}").parse()?;
        let gw = format!("{pfx}.1");
        address_host(ns, ip, needs_router.then_some(gw.as_str()))?;
        Ok((ip, ip))
    }

    /// Puts node namespace `ns` behind NAT gateway number `k` (MASQUERADE out of its
    /// underlay side); returns the node's address and the gateway's public one.
    fn place_behind_nat(&self, n: &NodeSpec, ns: &str, k: u8) -> Result<(Ipv4Addr, Ipv4Addr)> {
        let pfx = underlay_prefix(n.underlay);
        let gw = self.ns(&format!("nat{k}"));
        self.add_ns(&gw)?;
        netns::sysctl(&gw, "net.ipv4.ip_forward", "1")?;
        let wan: Ipv4Addr = format!("{pfx}.{}", 250 - k).parse()?;
        self.plug(n.underlay, &format!("nat{k}"), &gw, "wan")?;
        netns::ip(&["-n", &gw, "addr", "add", &format!("{wan}/24"), "dev", "wan"])?;
        netns::ip(&[
            "-n",
            &gw,
            "route",
            "add",
            "default",
            "via",
            &format!("{pfx}.1"),
        ])?;
        self.veth(&gw, "lan", ns, "eth0")?;
        self.wire_end(&gw, "lan")?;
        let lan = format!("172.16.{k}");
        netns::ip(&[
            "-n",
            &gw,
            "addr",
            "add",
            &format!("{lan}.1/24"),
            "dev",
            "lan",
        ])?;
        // A NAT that maps UDP to ports of its own (as carrier-grade and most cloud NATs
        // do): peers must learn the port, not assume the node's.
        let udp: &[&str] = &["-p", "udp", "-j", "MASQUERADE", "--to-ports", "20000-29999"];
        let rest: &[&str] = &["-j", "MASQUERADE"];
        for rule in [udp, rest] {
            let mut args = vec!["iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "wan"];
            args.extend_from_slice(rule);
            netns::exec(&gw, &args)?;
        }
        let ip: Ipv4Addr = format!("{lan}.2").parse()?;
        address_host(ns, ip, Some(&format!("{lan}.1")))?;
        Ok((ip, wan))
    }

    /// Adds a route on the router (e.g. a pod subnet via the node that leases it, as an
    /// operator would for pods to be reachable without masquerading, or an external IP of
    /// a service announced to a node).
    pub fn router_route(&self, dst: &str, via: Ipv4Addr) -> Result<()> {
        let rt = self
            .router_ns
            .as_ref()
            .ok_or_else(|| anyhow!("this testbed has no router"))?;
        netns::ip(&["-n", rt, "route", "replace", dst, "via", &via.to_string()])?;
        Ok(())
    }
}
