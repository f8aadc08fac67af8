//! Peers: the other nodes' underlay addresses. Tunnel packets are only decapsulated when
//! their outer source is one of them.
use crate::Ipv4;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PeerKey {
    /// The peer's PublicIP (after any NAT in front of it, as the packets arrive).
    pub addr: Ipv4,
}

/// Peer flags.
pub mod flags {
    /// The peer is a gateway of a cluster (this one's, or another's at the far end of the
    /// gateway tunnel): what it tunnels here may come from any other cluster of the mesh.
    pub const GATEWAY: u16 = 1;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Peer {
    /// The pod subnet the peer leases (a gateway across clusters: its cluster's Network),
    /// and its prefix length.
    pub subnet: Ipv4,
    pub prefix_len: u8,
    pub _pad: u8,
    /// Bit set of [`flags`].
    pub flags: u16,
}

const _: () = assert!(core::mem::size_of::<PeerKey>() == 4);
const _: () = assert!(core::mem::size_of::<Peer>() == 8);
