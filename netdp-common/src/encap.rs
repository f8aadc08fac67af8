//! Encapsulation constants and the outer-header arithmetic shared by the programs, the
//! agent (which precomputes per route) and the packet tests (which check exact bytes).

/// Bytes each encapsulation adds: outer IPv4, UDP, VXLAN and inner Ethernet for vxlan.
pub const VXLAN_OVERHEAD: u32 = 20 + 8 + 8 + 14;
pub const IPIP_OVERHEAD: u32 = 20;
pub const UDP_OVERHEAD: u32 = 20 + 8;

/// TTL of outer headers (Linux's default for tunnels).
pub const OUTER_TTL: u8 = 64;
/// Outer headers carry DF: a tunnel packet fragmented on the underlay could not be
/// decapsulated in tc, so it is better refused where it does not fit.
pub const OUTER_FRAG_OFF: u16 = 0x4000;
/// First word of the VXLAN header: the I flag (a valid VNI follows).
pub const VXLAN_FLAGS: u32 = 0x0800_0000;

pub use crate::proto::{IPPROTO_IPIP, IPPROTO_UDP};

/// Ones'-complement sum of the outer IPv4 header words that are the same for every
/// packet of a route (all but total length and checksum; the ID is zero, as RFC 6864
/// allows for atomic datagrams).
pub const fn outer_ip_sum(src: [u8; 4], dst: [u8; 4], proto: u8) -> u32 {
    0x4500
        + OUTER_FRAG_OFF as u32
        + ((OUTER_TTL as u32) << 8 | proto as u32)
        + ((src[0] as u32) << 8 | src[1] as u32)
        + ((src[2] as u32) << 8 | src[3] as u32)
        + ((dst[0] as u32) << 8 | dst[1] as u32)
        + ((dst[2] as u32) << 8 | dst[3] as u32)
}

/// The outer header checksum for a packet of `tot_len` bytes (host order).
#[inline(always)]
pub const fn outer_ip_check(ip_sum: u32, tot_len: u16) -> u16 {
    let mut s = ip_sum + tot_len as u32;
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

/// A hash of the inner flow (addresses in network order as read from the header, ports
/// as the 32-bit word following an IPv4 header without options, 0 if none), so one flow
/// always takes one underlay path and different flows spread.
#[inline(always)]
pub const fn flow_hash(saddr: u32, daddr: u32, ports: u32, proto: u8) -> u32 {
    let mut h = saddr.wrapping_mul(0x9e37_79b1) ^ daddr;
    h = h.wrapping_mul(0x85eb_ca6b) ^ ports;
    h = h.wrapping_mul(0xc2b2_ae35) ^ proto as u32;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// Outer UDP source port of a vxlan packet: the flow hash scaled into 32768-60999, the
/// range Linux's vxlan picks from by default.
#[inline(always)]
pub const fn vxlan_source_port(hash: u32) -> u16 {
    const MIN: u64 = 32768;
    const MAX: u64 = 61000;
    (((hash as u64 * (MAX - MIN)) >> 32) + MIN) as u16
}
