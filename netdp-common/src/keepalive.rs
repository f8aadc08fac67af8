//! NAT keepalives. A node behind a NAT sends each peer, from its tunnel's own address and
//! port, a tunnel packet whose payload is [`MAGIC`] (shorter than any inner packet, so
//! never taken for one): the NAT keeps the mapping that lets the peer's packets back in,
//! and the peer learns the port the NAT maps the node's to (NAT_PEERS), which it then
//! sends to, from its own tunnel port.
use crate::Ipv4;

/// The payload: "netdpKA" and the format's version.
pub const MAGIC: [u8; 8] = *b"netdpKA\x01";
pub const LEN: usize = MAGIC.len();

/// UDP port the keepalive of a tunnel without ports (ipip) is learned with.
pub const NO_PORT: u16 = 0;

/// A peer's keepalives as they arrive: the NAT's address (the key) and port for it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatPeer {
    /// The outer source port its keepalives arrive from (host order; [`NO_PORT`] for ipip).
    pub port: u16,
    pub _pad: [u8; 2],
    /// The outer source address (as [`crate::peer::PeerKey`] has it), for `bpftool` readers.
    pub addr: Ipv4,
    /// When the last one arrived (CLOCK_MONOTONIC, ns).
    pub seen_ns: u64,
}

const _: () = assert!(core::mem::size_of::<NatPeer>() == 16);
