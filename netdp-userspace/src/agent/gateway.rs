//! The node's address in its own pod subnet (the pods' gateway, `FLANNEL_SUBNET`'s first
//! address), held by a veth pair of its own as Cilium's cilium_host does.

use anyhow::Result;
use ipnetwork::Ipv4Network;

use crate::{lease::Lease, netlink::Netlink};

/// The host-side device holding the node's address in its pod subnet.
pub const GATEWAY_DEV: &str = "netdp_host";
/// Its peer, where `from_host` picks up what the node sends into the pod network.
pub const GATEWAY_PEER: &str = "netdp_net";

/// Gives the node its gateway address in the pod subnet, on a veth pair of its own.
pub async fn ensure_gateway(nl: &Netlink, lease: &Lease) -> Result<()> {
    if nl.link(GATEWAY_DEV).await?.is_none() {
        nl.add_veth(GATEWAY_DEV, GATEWAY_PEER).await?;
    }
    let host = nl.require_link(GATEWAY_DEV).await?;
    let peer = nl.require_link(GATEWAY_PEER).await?;
    nl.configure_link(peer.index, None, None).await?;
    nl.configure_link(host.index, None, None).await?;
    let gw = Ipv4Network::new(lease.gateway(), 32)?;
    nl.remove_other_addrs(host.index, gw).await?;
    nl.add_addr(host.index, gw.ip(), 32).await
}

/// Routes the node's own traffic for the cluster network (pods on other nodes; backends
/// its sockets were sent to) into the gateway device, from the gateway address, so
/// `from_host` forwards it and replies come back to an address the pod network routes
/// here. ARP is off there: the program sets the MACs. Pods on this node keep their more
/// specific /32 routes.
pub async fn ensure_host_route(nl: &Netlink, network: Ipv4Network, lease: &Lease) -> Result<()> {
    let host = nl.require_link(GATEWAY_DEV).await?;
    nl.set_noarp(host.index).await?;
    nl.replace_route_src(network, host.index, lease.gateway())
        .await
}
