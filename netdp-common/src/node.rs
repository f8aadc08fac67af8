//! Node-wide settings the programs read as a load-time constant (the `.rodata` global
//! [`crate::global_names::NODE`], set by the agent with `EbpfLoader::override_global`).
//! The verifier sees the values, so code for backends and features this node does not use
//! is pruned.
use crate::{Ipv4, Mac};

/// Which encapsulation `from_netdev` strips (the route modes say what `from_pod` adds).
pub mod decap {
    pub const NONE: u16 = 0;
    pub const VXLAN: u16 = 1;
    pub const IPIP: u16 = 2;
    pub const UDP: u16 = 3;
}

/// Node flags.
pub mod flags {
    /// `--ip-masq`: pod traffic leaving the cluster Network gets the node's address.
    pub const MASQUERADE: u32 = 1;
    /// `--source-verification=false`: packets are not checked against the endpoint or
    /// peer they come from (the programs' `source` module is pruned).
    pub const TRUST_SOURCES: u32 = 2;
    /// `--deny-sources` is set: `from_netdev` checks DENIED_SOURCES as well, so the list
    /// holds with XDP off (with XDP on, denied packets never get that far).
    pub const DENY_SOURCES: u32 = 4;
    /// The network config names other clusters (`Clusters`): their pod Networks, in
    /// CLUSTER_NETWORKS, count as the cluster's own where sources are judged. Without it
    /// the check is the Network's mask alone.
    pub const MESH: u32 = 8;
    /// A gateway of its cluster (`--gateway`): decapsulates the gateway tunnel on
    /// `gateway_port` and forwards what other clusters' gateways, and this cluster's
    /// nodes, send through it.
    pub const GATEWAY: u32 = 16;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeConfig {
    /// This node's address on the underlay: tunnels end here, masquerading uses it.
    pub node_ip: Ipv4,
    /// The cluster Network, and its netmask (both network order).
    pub cluster: Ipv4,
    pub cluster_mask: Ipv4,
    /// Underlay interface: traffic leaving the cluster goes out here.
    pub underlay_ifindex: u32,
    /// One of [`decap`].
    pub decap: u16,
    /// UDP port of the tunnel between clusters' gateways (host order; 0: not a gateway).
    pub gateway_port: u16,
    /// Bit set of [`flags`].
    pub flags: u32,
    /// VXLAN network identifier accepted (host order).
    pub vni: u32,
    /// UDP port tunnels arrive on (vxlan, udp), host order.
    pub port: u16,
    /// First and last source port masquerading hands out (host order), kept out of the
    /// kernel's ephemeral range so replies to the node's own sockets are never taken.
    pub nat_port_min: u16,
    pub nat_port_max: u16,
    /// This node's VTEP MAC (published in its lease): inner frames must be sent to it.
    pub vtep_mac: Mac,
}

// Copied onto from_netdev's full stack frame: no bigger than it has to be.
const _: () = assert!(core::mem::size_of::<NodeConfig>() == 40);
