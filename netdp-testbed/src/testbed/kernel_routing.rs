//! Nodes that forward with the kernel instead of netdp: IP forwarding on, one /24 of
//! 10.244.0.0/16 per node, and a route to every other node's pod subnet via that node's
//! underlay address (what a host-gw style route table looks like). Pods hang off a veth
//! whose host end holds the subnet's gateway address, as the reference `ptp` CNI plugin
//! wires them.
//!
//! This is the reference dataplane benchmarks compare netdp against, and where the
//! kube-proxy rulesets are loaded so that the kernel actually applies them. No agent runs
//! on such a node.
use std::net::Ipv4Addr;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::{Pod, Testbed};
use crate::netns;

/// The pod subnet of the `index`th node (0-based): `10.244.<index+1>.0/24`.
pub fn kernel_pod_subnet(index: usize) -> (Ipv4Addr, u8) {
    (Ipv4Addr::new(10, 244, (index + 1) as u8, 0), 24)
}

/// The gateway address pods of the `index`th node route through.
pub fn kernel_pod_gateway(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, (index + 1) as u8, 1)
}

impl Testbed {
    /// Turns every node into a kernel-routed node. Call it before adding kernel pods and
    /// do not start agents on these nodes.
    pub fn route_by_kernel(&mut self) -> Result<()> {
        if self.nodes.len() > 250 {
            bail!("kernel routing numbers pod subnets 10.244.1-250.0/24: too many nodes");
        }
        if self.nodes.iter().any(|n| n.agent_running()) {
            bail!("kernel routing needs nodes without a netdp agent");
        }
        for (i, node) in self.nodes.iter().enumerate() {
            netns::sysctl(&node.ns, "net.ipv4.ip_forward", "1")?;
            for (j, peer) in self.nodes.iter().enumerate() {
                if i == j {
                    continue;
                }
                let (net, len) = kernel_pod_subnet(j);
                netns::ip(&[
                    "-n",
                    &node.ns,
                    "route",
                    "add",
                    &format!("{net}/{len}"),
                    "via",
                    &peer.public_ip.to_string(),
                    "dev",
                    "eth0",
                ])
                .with_context(|| {
                    format!(
                        "routing {net}/{len} via {} on {}",
                        peer.public_ip, node.name
                    )
                })?;
            }
        }
        Ok(())
    }

    /// Creates a pod on a kernel-routed node: a namespace with `eth0` holding the next free
    /// address of the node's subnet (/32) and a default route via the node.
    pub fn add_kernel_pod(&mut self, node: &str, name: &str) -> Result<Pod> {
        let index = self
            .nodes
            .iter()
            .position(|n| n.name == node)
            .with_context(|| format!("no node {node} in this testbed"))?;
        let (net, _) = kernel_pod_subnet(index);
        let gateway = kernel_pod_gateway(index);
        let n = &self.nodes[index];
        let k = n.pods.len();
        if k > 250 {
            bail!("node {node} has no free pod address left");
        }
        let ip = Ipv4Addr::from(u32::from(net) + 2 + k as u32);
        let (node_ns, pod_ns) = (n.ns.clone(), format!("{}-{name}", n.ns));
        self.add_ns(&pod_ns)?;
        let host_if = format!("kv{k}");
        netns::ip(&[
            "-n", &pod_ns, "link", "add", "eth0", "type", "veth", "peer", "name", &host_if,
            "netns", &node_ns,
        ])?;
        let ipn = |ns: &str, args: &[&str]| -> Result<String> {
            let mut all = vec!["-n", ns];
            all.extend_from_slice(args);
            netns::ip(&all)
        };
        ipn(&node_ns, &["link", "set", &host_if, "up"])?;
        ipn(
            &node_ns,
            &["addr", "add", &format!("{gateway}/32"), "dev", &host_if],
        )?;
        ipn(
            &node_ns,
            &[
                "route",
                "add",
                &format!("{ip}/32"),
                "dev",
                &host_if,
                "scope",
                "link",
            ],
        )?;
        ipn(&pod_ns, &["link", "set", "eth0", "up"])?;
        ipn(
            &pod_ns,
            &["addr", "add", &format!("{ip}/32"), "dev", "eth0"],
        )?;
        ipn(
            &pod_ns,
            &[
                "route",
                "add",
                &gateway.to_string(),
                "dev",
                "eth0",
                "scope",
                "link",
            ],
        )?;
        ipn(
            &pod_ns,
            &[
                "route",
                "add",
                "default",
                "via",
                &gateway.to_string(),
                "dev",
                "eth0",
            ],
        )?;
        let pod = Pod {
            name: name.into(),
            ns: pod_ns,
            node: node.into(),
            ip,
            container_id: format!("{}-{node}-{name}", self.id),
            result: Value::Null,
        };
        self.node_mut(node).pods.push(pod.clone());
        Ok(pod)
    }
}
