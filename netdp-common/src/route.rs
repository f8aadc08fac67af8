//! Routes: remote pod subnets (LPM keyed) to the peer node that leases them.
use crate::{Ipv4, Mac};

/// How packets for a route leave this node.
pub mod mode {
    /// Plain routing to the peer's underlay address (host-gw, or DirectRouting).
    pub const DIRECT: u32 = 0;
    /// The peer is known but not reachable by the configured backend (host-gw across an
    /// L3 boundary). Packets are handed to the kernel and counted.
    pub const UNREACHABLE: u32 = 1;
}

/// Route flags.
pub mod flags {
    /// `dmac`/`smac` hold the resolved next-hop MAC; without it the program asks the
    /// kernel to resolve the neighbour (bpf_redirect_neigh).
    pub const HAS_MAC: u32 = 1;
}

/// Everything the program needs to forward to a remote subnet, precomputed by the agent so
/// the fast path is one LPM lookup and a few header writes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Route {
    /// The peer node's underlay address (its lease's PublicIP).
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
}

const _: () = assert!(core::mem::size_of::<Route>() == 32);
