//! Nodes that forward with the kernel, set up exactly the way flanneld sets one up: the
//! reference dataplane netdp is compared with (benchmarks, and the nodes kube-proxy's
//! rulesets are loaded on), and Flannel nodes for interoperability tests. A node gets
//! its lease in etcd in flanneld's JSON, the kernel doing the forwarding
//! (ip_forward=1), pods on a `cni0` bridge as Flannel's CNI wires them, and for the
//! vxlan backend a kernel VXLAN device `flannel.<VNI>` with flanneld's per-peer route,
//! neighbour and FDB entries; for host-gw a route per peer via its PublicIP.
//!
//! It is static: [`FlannelNode::sync_peers`] programs what flanneld would on the lease
//! events seen so far; call it again after peers come or go. [`FlannelNode::start_all`]
//! makes a whole testbed a Flannel cluster. No netdp agent runs on such a node.
//!
//! Leases are in etcd, or ([`Store::Nodes`], flanneld's `--kube-subnet-mgr`) in Node
//! objects of the replay API server: the node's subnet is its Node's podCIDR, and it
//! publishes its lease in Flannel's annotations the way flanneld writes them.
use std::net::Ipv4Addr;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};

use crate::{Pod, Testbed, kube_api::ReplayApiServer, netns};

/// Where the Flannel node keeps and reads leases.
#[derive(Clone, Copy)]
pub enum Store<'a> {
    /// Under the testbed's etcd prefix, as flanneld's etcd subnet manager.
    Etcd,
    /// In Node objects (named as the testbed node's namespace), as `--kube-subnet-mgr`.
    Nodes(&'a ReplayApiServer),
}

/// Flanneld's annotation keys (the default `--kube-annotation-prefix`).
pub const ANNOTATION_PREFIX: &str = "flannel.alpha.coreos.com";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlannelBackend {
    /// `flannel.1`, VNI 1, UDP port 8472, no learning: Flannel's defaults.
    Vxlan,
    /// Direct routes to peers on the same L2 segment.
    HostGw,
}

impl FlannelBackend {
    pub fn type_name(self) -> &'static str {
        match self {
            FlannelBackend::Vxlan => "vxlan",
            FlannelBackend::HostGw => "host-gw",
        }
    }
}

pub const VXLAN_DEV: &str = "flannel.1";
pub const VNI: u32 = 1;
pub const VXLAN_PORT: u16 = 8472;
pub const BRIDGE: &str = "cni0";

/// A network config as Flannel's manifests ship it: `10.244.0.0/16` with the backend
/// `backend_type` (`vxlan`, `host-gw`, ...) and its defaults.
pub fn network_config(backend_type: &str) -> String {
    format!(r#"{{"Network": "10.244.0.0/16", "Backend": {{"Type": "{backend_type}"}}}}"#)
}

/// A testbed node run by "flanneld" instead of netdp.
#[derive(Debug, Clone)]
pub struct FlannelNode {
    /// The testbed node's short name.
    pub node: String,
    pub backend: FlannelBackend,
    /// The leased subnet (network address, prefix length).
    pub subnet: (Ipv4Addr, u8),
    /// MTU of `flannel.1` and of the pods.
    pub mtu: u32,
    /// The VTEP MAC published in the lease (vxlan).
    pub vtep_mac: Option<String>,
    next_pod: u8,
}

fn ip(ns: &str, args: &[&str]) -> Result<String> {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    netns::ip(&all)
}

fn subnet_ip(subnet: (Ipv4Addr, u8), host: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.0) + host)
}

/// `(Network, SubnetLen)` of the network config in etcd.
fn network(tb: &Testbed) -> Result<((Ipv4Addr, u8), u8)> {
    let text = tb
        .etcd()
        .get(&format!("{}/config", tb.prefix))?
        .ok_or_else(|| anyhow!("no network config in etcd"))?;
    let v: Value = serde_json::from_str(&text)?;
    let net = v["Network"]
        .as_str()
        .ok_or_else(|| anyhow!("config without Network"))?;
    let (addr, len) = net
        .split_once('/')
        .ok_or_else(|| anyhow!("Network {net} is not a CIDR"))?;
    let len: u8 = len.parse()?;
    let subnet_len = v["SubnetLen"]
        .as_u64()
        .map(|l| l as u8)
        .unwrap_or(if len < 24 { 24 } else { len + 1 });
    Ok(((addr.parse()?, len), subnet_len))
}

/// Leases: (subnet, prefix, attrs in etcd's JSON).
fn leases(tb: &Testbed, store: Store) -> Result<Vec<((Ipv4Addr, u8), Value)>> {
    if let Store::Nodes(api) = store {
        return Ok(api
            .list("Node")?
            .iter()
            .filter_map(|n| Some((node_cidr(n)?, node_attrs(n)?)))
            .collect());
    }
    let prefix = format!("{}/subnets/", tb.prefix);
    let mut out = Vec::new();
    for (k, v) in tb.etcd().get_prefix(&prefix)? {
        let Some((a, l)) = k.strip_prefix(&prefix).and_then(|s| s.split_once('-')) else {
            continue;
        };
        let (Ok(a), Ok(l)) = (a.parse::<Ipv4Addr>(), l.parse::<u8>()) else {
            continue;
        };
        if let Ok(attrs) = serde_json::from_str::<Value>(&v) {
            out.push(((a, l), attrs));
        }
    }
    Ok(out)
}

/// A Node's podCIDR.
fn node_cidr(node: &Value) -> Option<(Ipv4Addr, u8)> {
    let (a, l) = node["spec"]["podCIDR"].as_str()?.split_once('/')?;
    Some((a.parse().ok()?, l.parse().ok()?))
}

/// A Node's lease as flanneld reads it from the annotations (in etcd's JSON shape), if
/// it is managed.
fn node_attrs(node: &Value) -> Option<Value> {
    let a = &node["metadata"]["annotations"];
    let get = |k: &str| a[format!("{ANNOTATION_PREFIX}/{k}")].as_str();
    if get("kube-subnet-manager") != Some("true") {
        return None;
    }
    let data: Value = serde_json::from_str(get("backend-data").unwrap_or("null")).ok()?;
    Some(
        json!({"PublicIP": get("public-ip")?, "BackendType": get("backend-type")?,
        "BackendData": data}),
    )
}

impl FlannelNode {
    /// Sets up testbed node `node` (whose netdp agent must not run) as flanneld would
    /// and leases it the highest free subnet of the Network.
    pub fn start(tb: &Testbed, node: &str, backend: FlannelBackend) -> Result<Self> {
        Self::start_in(tb, node, backend, Store::Etcd)
    }

    /// [`FlannelNode::start`], with its lease in `store` (for [`Store::Nodes`], the
    /// subnet is its Node's podCIDR).
    pub fn start_in(
        tb: &Testbed,
        node: &str,
        backend: FlannelBackend,
        store: Store,
    ) -> Result<Self> {
        let n = tb.node(node);
        if n.agent_running() {
            bail!("{node} runs a netdp agent; a Flannel node must not");
        }
        let ns = n.ns.clone();
        netns::sysctl(&ns, "net.ipv4.ip_forward", "1")?;

        let subnet = match store {
            Store::Etcd => {
                let ((net, net_len), subnet_len) = network(tb)?;
                let taken: Vec<Ipv4Addr> =
                    leases(tb, store)?.into_iter().map(|(s, _)| s.0).collect();
                let size = 1u32 << (32 - subnet_len);
                let count = 1u32 << (subnet_len - net_len);
                (1..count)
                    .rev()
                    .map(|i| Ipv4Addr::from(u32::from(net) + i * size))
                    .find(|s| !taken.contains(s))
                    .map(|s| (s, subnet_len))
                    .ok_or_else(|| anyhow!("no free subnet left for {node}"))?
            }
            Store::Nodes(api) => api
                .get("Node", &ns)?
                .as_ref()
                .and_then(node_cidr)
                .ok_or_else(|| anyhow!("no Node {ns} with a podCIDR"))?,
        };

        let underlay_mtu: u32 = ip(&ns, &["-o", "link", "show", "eth0"])?
            .split_whitespace()
            .skip_while(|w| *w != "mtu")
            .nth(1)
            .and_then(|m| m.parse().ok())
            .unwrap_or(1500);
        let (mtu, vtep_mac, backend_data) = match backend {
            FlannelBackend::Vxlan => {
                let mtu = underlay_mtu - 50;
                let local = n.ip.to_string();
                ip(
                    &ns,
                    &[
                        "link",
                        "add",
                        VXLAN_DEV,
                        "type",
                        "vxlan",
                        "id",
                        &VNI.to_string(),
                        "local",
                        &local,
                        "dev",
                        "eth0",
                        "dstport",
                        &VXLAN_PORT.to_string(),
                        "nolearning",
                    ],
                )?;
                ip(&ns, &["link", "set", VXLAN_DEV, "mtu", &mtu.to_string()])?;
                ip(
                    &ns,
                    &["addr", "add", &format!("{}/32", subnet.0), "dev", VXLAN_DEV],
                )?;
                ip(&ns, &["link", "set", VXLAN_DEV, "up"])?;
                let mac = link_mac(&ns, VXLAN_DEV)?;
                (
                    mtu,
                    Some(mac.clone()),
                    Some(json!({"VNI": VNI, "VtepMAC": mac})),
                )
            }
            FlannelBackend::HostGw => (underlay_mtu, None, None),
        };

        ip(&ns, &["link", "add", BRIDGE, "type", "bridge"])?;
        ip(
            &ns,
            &[
                "addr",
                "add",
                &format!("{}/{}", subnet_ip(subnet, 1), subnet.1),
                "dev",
                BRIDGE,
            ],
        )?;
        ip(&ns, &["link", "set", BRIDGE, "mtu", &mtu.to_string(), "up"])?;

        match store {
            Store::Nodes(api) => {
                // As flanneld's AcquireLease patches them (backend data as JSON text).
                let mut object = api.get("Node", &ns)?.context("the Node")?;
                let data = backend_data.unwrap_or(Value::Null).to_string();
                let annotations = &mut object["metadata"]["annotations"];
                for (k, v) in [
                    ("backend-data", data.as_str()),
                    ("backend-type", backend.type_name()),
                    ("kube-subnet-manager", "true"),
                    ("public-ip", &n.public_ip.to_string()),
                ] {
                    annotations[format!("{ANNOTATION_PREFIX}/{k}")] = json!(v);
                }
                api.apply(object)?;
            }
            Store::Etcd => {
                // The lease, as flanneld writes it: its own etcd lease with the default TTL.
                let mut attrs = json!({
                    "PublicIP": n.public_ip.to_string(),
                    "PublicIPv6": null,
                    "BackendType": backend.type_name(),
                });
                if let Some(d) = backend_data {
                    attrs["BackendData"] = d;
                }
                let granted = tb.etcd().ctl(&["lease", "grant", "86400"])?;
                let id = granted
                    .split_whitespace()
                    .nth(1)
                    .ok_or_else(|| anyhow!("etcdctl lease grant said {granted:?}"))?;
                tb.etcd().ctl(&[
                    "put",
                    &format!("--lease={id}"),
                    &format!("{}/subnets/{}-{}", tb.prefix, subnet.0, subnet.1),
                    &serde_json::to_string(&attrs)?,
                ])?;
            }
        }
        Ok(FlannelNode {
            node: node.to_string(),
            backend,
            subnet,
            mtu,
            vtep_mac,
            next_pod: 2,
        })
    }

    /// Makes every node of the testbed a Flannel node with `backend`, each programmed
    /// for all the others: a cluster the kernel routes, the way Flannel runs one. The
    /// nodes come back in the testbed's order.
    pub fn start_all(tb: &Testbed, backend: FlannelBackend) -> Result<Vec<Self>> {
        let nodes = tb
            .nodes
            .iter()
            .map(|n| Self::start(tb, &n.name, backend))
            .collect::<Result<Vec<_>>>()?;
        for f in &nodes {
            let peers = f.sync_peers(tb)?;
            if peers + 1 != nodes.len() {
                bail!("{} programmed {peers} peers of {}", f.node, nodes.len() - 1);
            }
        }
        Ok(nodes)
    }

    /// Programs what flanneld programs for every other lease of the same backend type:
    /// vxlan: `<subnet> via <subnet>.0 dev flannel.1 onlink`, a permanent neighbour
    /// `<subnet>.0 -> VtepMAC` and an FDB entry `VtepMAC -> PublicIP`; host-gw: `<subnet>
    /// via <PublicIP> dev eth0`. Returns how many peers it programmed.
    pub fn sync_peers(&self, tb: &Testbed) -> Result<usize> {
        self.sync_peers_in(tb, Store::Etcd)
    }

    /// [`FlannelNode::sync_peers`] from the leases in `store`.
    pub fn sync_peers_in(&self, tb: &Testbed, store: Store) -> Result<usize> {
        let ns = tb.node(&self.node).ns.clone();
        let mut n = 0;
        for (subnet, attrs) in leases(tb, store)? {
            if subnet == self.subnet
                || attrs["BackendType"].as_str() != Some(self.backend.type_name())
            {
                continue;
            }
            let public_ip = attrs["PublicIP"]
                .as_str()
                .ok_or_else(|| anyhow!("lease {subnet:?} without PublicIP"))?;
            let dst = format!("{}/{}", subnet.0, subnet.1);
            match self.backend {
                FlannelBackend::Vxlan => {
                    let mac = attrs["BackendData"]["VtepMAC"]
                        .as_str()
                        .ok_or_else(|| anyhow!("vxlan lease {dst} without VtepMAC"))?;
                    let gw = subnet.0.to_string();
                    ip(
                        &ns,
                        &[
                            "neigh",
                            "replace",
                            &gw,
                            "lladdr",
                            mac,
                            "dev",
                            VXLAN_DEV,
                            "nud",
                            "permanent",
                        ],
                    )?;
                    netns::exec(
                        &ns,
                        &[
                            "bridge",
                            "fdb",
                            "replace",
                            mac,
                            "dev",
                            VXLAN_DEV,
                            "dst",
                            public_ip,
                            "self",
                            "permanent",
                        ],
                    )?;
                    ip(
                        &ns,
                        &[
                            "route", "replace", &dst, "via", &gw, "dev", VXLAN_DEV, "onlink",
                        ],
                    )?;
                }
                FlannelBackend::HostGw => {
                    ip(
                        &ns,
                        &["route", "replace", &dst, "via", public_ip, "dev", "eth0"],
                    )?;
                }
            }
            n += 1;
        }
        Ok(n)
    }

    /// Wires a pod the way Flannel's CNI (the bridge plugin with host-local IPAM) does: a
    /// veth on `cni0`, the next address of the subnet, default route via `.1`.
    pub fn add_pod(&mut self, tb: &mut Testbed, name: &str) -> Result<Pod> {
        let node_ns = tb.node(&self.node).ns.clone();
        let pod_ns = format!("{node_ns}-{name}");
        tb.add_ns(&pod_ns)?;
        let addr = subnet_ip(self.subnet, self.next_pod as u32);
        self.next_pod += 1;
        let host_if = format!("veth{}{}", self.next_pod, &name[..name.len().min(6)]);
        ip(
            &node_ns,
            &[
                "link",
                "add",
                &host_if,
                "mtu",
                &self.mtu.to_string(),
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "mtu",
                &self.mtu.to_string(),
                "netns",
                &pod_ns,
            ],
        )?;
        ip(&node_ns, &["link", "set", &host_if, "master", BRIDGE, "up"])?;
        ip(
            &pod_ns,
            &[
                "addr",
                "add",
                &format!("{addr}/{}", self.subnet.1),
                "dev",
                "eth0",
            ],
        )?;
        ip(&pod_ns, &["link", "set", "eth0", "up"])?;
        ip(
            &pod_ns,
            &[
                "route",
                "add",
                "default",
                "via",
                &subnet_ip(self.subnet, 1).to_string(),
            ],
        )?;
        let pod = Pod {
            name: name.into(),
            ns: pod_ns,
            node: self.node.clone(),
            ip: addr,
            container_id: format!("flannel-{}-{name}", self.node),
            result: Value::Null,
        };
        tb.node_mut(&self.node).pods.push(pod.clone());
        Ok(pod)
    }
}

fn link_mac(ns: &str, dev: &str) -> Result<String> {
    let out = ip(ns, &["-o", "link", "show", dev])?;
    out.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .map(String::from)
        .with_context(|| format!("no MAC for {dev} in {out:?}"))
}
