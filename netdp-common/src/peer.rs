//! Peers: the other nodes' underlay addresses. Tunnel packets are only decapsulated when
//! their outer source is one of them.
use crate::Ipv4;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PeerKey {
    /// The peer's PublicIP (after any NAT in front of it, as the packets arrive).
    pub addr: Ipv4,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Peer {
    /// The pod subnet the peer leases, and its prefix length.
    pub subnet: Ipv4,
    pub prefix_len: u32,
}

const _: () = assert!(core::mem::size_of::<PeerKey>() == 4);
const _: () = assert!(core::mem::size_of::<Peer>() == 8);
