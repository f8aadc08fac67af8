//! Routes: remote pod subnets (LPM keyed) to the peer node that leases them, with every
//! header field the program writes precomputed by the agent (Katran style), so forwarding
//! is one LPM lookup and a few stores.
use crate::{Ipv4, Mac};

/// How packets for a route leave this node.
pub mod mode {
    /// Plain routing to the peer's underlay address (host-gw, or DirectRouting).
    pub const DIRECT: u32 = 0;
    /// The peer is known but not reachable by the configured backend (host-gw across an
    /// L3 boundary, or a peer running another backend). Packets are handed to the kernel
    /// and counted.
    pub const UNREACHABLE: u32 = 1;
    /// Ethernet in UDP (RFC 7348) to the peer's VTEP, Flannel's `vxlan` backend.
    pub const VXLAN: u32 = 2;
    /// IPv4 in IPv4 (IP protocol 4), Flannel's `ipip` backend.
    pub const IPIP: u32 = 3;
    /// The bare IP packet as a UDP payload, Flannel's `udp` backend.
    pub const UDP: u32 = 4;
    /// The bare IP packet in UDP from this node's gateway port to another cluster's
    /// active gateway (at the address and port it advertises): gateway mode.
    pub const GATEWAY: u32 = 5;

    /// Whether routes of `mode` encapsulate: what carries direct server return's option.
    #[inline(always)]
    pub const fn is_tunnel(mode: u32) -> bool {
        matches!(mode, VXLAN | IPIP | UDP)
    }

    pub const fn name(mode: u32) -> &'static str {
        match mode {
            DIRECT => "direct",
            UNREACHABLE => "unreachable",
            VXLAN => "vxlan",
            IPIP => "ipip",
            UDP => "udp",
            GATEWAY => "gateway",
            _ => "?",
        }
    }
}

/// Route flags.
pub mod flags {
    /// `dmac`/`smac` hold the resolved next-hop MAC; without it the program asks the
    /// kernel to resolve the neighbour (bpf_redirect_neigh).
    pub const HAS_MAC: u32 = 1;
    /// vxlan: the outer source port is this node's tunnel port, not a flow hash: this node
    /// or the peer is behind a NAT, whose mapping only that port matches.
    pub const FIXED_SPORT: u32 = 2;
}

/// Everything the program needs to forward to a remote subnet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Route {
    /// The peer node's underlay address (its lease's PublicIP): the outer destination.
    pub node_ip: Ipv4,
    /// Next hop on the underlay: the peer itself when it is on our subnet, else a router.
    pub nexthop: Ipv4,
    /// Underlay interface to send on.
    pub ifindex: u32,
    /// One of [`mode`].
    pub mode: u32,
    /// Bit set of [`flags`].
    pub flags: u32,
    /// Next hop's MAC (valid with [`flags::HAS_MAC`]).
    pub dmac: Mac,
    /// Our underlay interface MAC.
    pub smac: Mac,
    /// Outer source address: this node's address on the underlay.
    pub src_ip: Ipv4,
    /// The peer's VTEP MAC from its lease (vxlan: inner destination MAC).
    pub vtep_mac: Mac,
    /// Outer UDP destination port (vxlan, udp), host order.
    pub port: u16,
    /// VXLAN network identifier, host order.
    pub vni: u32,
    /// Ones'-complement sum (not folded, host order) of every outer IPv4 header word but
    /// the total length, which is the only one that varies per packet.
    pub ip_sum: u32,
    /// Largest inner IPv4 packet this route carries: underlay MTU minus the encapsulation.
    pub mtu: u32,
}

const _: () = assert!(core::mem::size_of::<Route>() == 56);
