//! Header layouts and bounds-checked access to them.
use aya_ebpf::programs::TcContext;

use crate::ctx::Ctx;

pub const ETH_HLEN: usize = 14;
pub const IP_HLEN: usize = 20;
/// Smallest TCP, UDP and ICMP headers.
pub const TCP_HLEN: usize = 20;
pub const UDP_HLEN: usize = 8;
pub const ICMP_HLEN: usize = 8;
pub const ETH_P_IP: u16 = 0x0800;
pub use netdp_common::proto::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};
/// More-fragments flag and fragment offset of `frag_off` (host order).
pub const IP_MF_OFFSET: u16 = 0x3fff;
pub const IP_MF: u16 = 0x2000;
pub const IP_OFFSET: u16 = 0x1fff;
pub const IP_DF: u16 = 0x4000;

/// Offsets of IPv4 header fields from the start of the frame.
pub const IP_CSUM_OFF: usize = ETH_HLEN + 10;
pub const IP_SADDR_OFF: usize = ETH_HLEN + 12;
pub const IP_DADDR_OFF: usize = ETH_HLEN + 16;

/// TCP flags (byte 13 of the header).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Whether TCP `flags` are those of a connection's first segment: SYN, without ACK, RST or
/// FIN.
#[inline(always)]
pub fn only_syn(flags: u8) -> bool {
    flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN) == TCP_SYN
}

/// ICMP types.
pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_ECHO: u8 = 8;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PARAMETERPROB: u8 = 12;

#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    /// Network byte order.
    pub proto: u16,
}

#[repr(C)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub protocol: u8,
    pub check: u16,
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
}

impl Ipv4Hdr {
    /// Header without options, and not a fragment: L4 starts right after 20 bytes.
    #[inline(always)]
    pub fn is_plain(&self) -> bool {
        self.version_ihl == 0x45 && u16::from_be(self.frag_off) & IP_MF_OFFSET == 0
    }
}

/// The first 14 bytes of a TCP header: ports, sequence numbers, offset and flags.
#[repr(C)]
pub struct TcpHdr {
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub doff: u8,
    pub flags: u8,
}

#[repr(C)]
pub struct UdpHdr {
    pub sport: u16,
    pub dport: u16,
    pub len: u16,
    pub check: u16,
}

#[repr(C)]
pub struct IcmpHdr {
    pub kind: u8,
    pub code: u8,
    pub check: u16,
    /// Echo identifier (network order); the first half of "rest of header" otherwise.
    pub id: u16,
    pub seq: u16,
}

/// A pointer to a `T` at `offset` in the packet, if the packet is long enough.
#[inline(always)]
pub fn ptr_at<T>(ctx: &impl Ctx, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// `N` bytes of the packet from `offset`, wherever they sit (bpf_skb_load_bytes with a
/// constant length, which the verifier wants).
#[inline(always)]
pub fn load<const N: usize>(ctx: &TcContext, offset: usize) -> Option<[u8; N]> {
    let mut buf = [0u8; N];
    // SAFETY: the helper writes at most N bytes into buf.
    let ret = unsafe {
        aya_ebpf::helpers::bpf_skb_load_bytes(
            ctx.skb.skb as *const _,
            offset as u32,
            buf.as_mut_ptr() as *mut _,
            N as u32,
        )
    };
    (ret == 0).then_some(buf)
}

/// Headers up to the transport ports, with IP options: what has to be in the linear part
/// of the packet for the programs to read it directly.
const HEADERS_MAX: usize = ETH_HLEN + 60 + 20;

/// Makes sure the headers are in the packet's linear data (a no-op for nearly every packet).
#[inline(always)]
pub fn pull_headers(ctx: &TcContext) {
    let linear = ctx.data_end() - ctx.data();
    let len = ctx.len() as usize;
    if linear < HEADERS_MAX && linear < len {
        let _ = ctx.pull_data(len.min(HEADERS_MAX) as u32);
    }
}

/// The Ethernet and IPv4 headers of an IPv4 frame.
#[derive(Clone, Copy)]
pub struct Ipv4Frame {
    pub eth: *mut EthHdr,
    pub ip: *mut Ipv4Hdr,
}

pub enum Parsed {
    Ipv4(Ipv4Frame),
    /// Some other EtherType; the kernel's business.
    NotIpv4,
    /// Shorter than its headers, or an IPv4 header that cannot be valid.
    Malformed,
}

/// Parses Ethernet + IPv4. Options and fragments are accepted here; callers that need L4
/// decide what to do with them.
#[inline(always)]
pub fn ipv4<C: Ctx>(ctx: &C) -> Parsed {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Parsed::Malformed;
    };
    // SAFETY: bounds checked by ptr_at.
    if unsafe { (*eth).proto } != ETH_P_IP.to_be() {
        return Parsed::NotIpv4;
    }
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN) else {
        return Parsed::Malformed;
    };
    // SAFETY: bounds checked by ptr_at.
    let (vihl, tot_len) = unsafe { ((*ip).version_ihl, u16::from_be((*ip).tot_len) as usize) };
    let len = ctx.len() as usize;
    if vihl >> 4 != 4 || (vihl & 0x0f) < 5 {
        return Parsed::Malformed;
    }
    // A frame shorter than the length its IP header claims is truncated. tot_len 0 is only
    // legal for BIG TCP super-packets, which are longer than any IPv4 length can say.
    let ip_len_ok = if tot_len == 0 {
        len > ETH_HLEN + 0xffff
    } else {
        tot_len >= ((vihl & 0x0f) as usize) * 4 && len >= ETH_HLEN + tot_len
    };
    if !ip_len_ok {
        return Parsed::Malformed;
    }
    Parsed::Ipv4(Ipv4Frame { eth, ip })
}

/// The transport header, as far as translation needs it.
#[derive(Clone, Copy)]
pub struct L4 {
    pub proto: u8,
    /// Offset of the transport header in the frame.
    pub off: usize,
    /// Network byte order. For ICMP echo the identifier stands in the port of the side that
    /// chose it (see `netdp_common::conntrack`); the other one is 0.
    pub sport: u16,
    pub dport: u16,
    /// TCP flags (0 for UDP and ICMP).
    pub tcp_flags: u8,
    /// The first fragment of a fragmented datagram: its translation is remembered for the
    /// fragments that follow (`fragment`).
    pub first_fragment: bool,
}

#[derive(Clone, Copy)]
pub enum Transport {
    /// TCP or UDP, unfragmented.
    Ports(L4),
    /// ICMP echo request or reply, unfragmented (only masquerading translates these).
    Echo(L4),
    /// An ICMP error (destination unreachable, time exceeded, parameter problem); `off` is
    /// where the ICMP header starts.
    IcmpError(L4),
    /// A fragment after the first (no transport header): `off` is where its data starts,
    /// ports are 0.
    Fragment(L4),
    /// Anything else: other protocols and ICMP messages, short headers. It
    /// carries an all-zero header like the others carry theirs, so no field of a
    /// `Transport` is ever undefined: LLVM may spill any of them to the stack, and the
    /// verifier refuses a spill of a register nothing wrote.
    Other(#[allow(dead_code)] L4),
}

/// Reads the transport header of a parsed IPv4 frame.
#[inline(always)]
pub fn transport<C: Ctx>(ctx: &C, frame: &Ipv4Frame) -> Transport {
    // SAFETY: the IP header was bounds checked by the parser.
    let (vihl, frag, proto, tot_len) = unsafe {
        (
            (*frame.ip).version_ihl,
            u16::from_be((*frame.ip).frag_off),
            (*frame.ip).protocol,
            u16::from_be((*frame.ip).tot_len) as usize,
        )
    };
    let off = ETH_HLEN + ((vihl & 0x0f) as usize) * 4;
    // Where the datagram ends: bytes past it (padding) are no header of it. Length 0 is a
    // BIG TCP super-packet, as long as the frame.
    let end = if tot_len == 0 {
        usize::MAX
    } else {
        ETH_HLEN + tot_len
    };
    let first_fragment = frag & IP_MF_OFFSET == IP_MF;
    let l4 = |sport, dport, tcp_flags| L4 {
        proto,
        off,
        sport,
        dport,
        tcp_flags,
        first_fragment,
    };
    // Fragments past the first carry no ports: their flow is found by the first one's.
    if frag & IP_OFFSET != 0 {
        return Transport::Fragment(l4(0, 0, 0));
    }
    let other = Transport::Other(l4(0, 0, 0));
    match proto {
        IPPROTO_TCP if off + TCP_HLEN <= end => match ptr_at::<TcpHdr>(ctx, off) {
            // SAFETY: bounds checked by ptr_at.
            Some(t) => unsafe { Transport::Ports(l4((*t).sport, (*t).dport, (*t).flags)) },
            None => other,
        },
        IPPROTO_UDP if off + UDP_HLEN <= end => match ptr_at::<UdpHdr>(ctx, off) {
            Some(u) => {
                // SAFETY: bounds checked by ptr_at.
                let (sport, dport, len) = unsafe { ((*u).sport, (*u).dport, (*u).len) };
                // The UDP length must fit the datagram (all of it but in a first fragment,
                // which carries only part): a header read from garbage is no header.
                let len = u16::from_be(len) as usize;
                if len < UDP_HLEN || (!first_fragment && off + len > end) {
                    return other;
                }
                Transport::Ports(l4(sport, dport, 0))
            }
            None => other,
        },
        IPPROTO_ICMP if off + ICMP_HLEN <= end => {
            let Some(i) = ptr_at::<IcmpHdr>(ctx, off) else {
                return other;
            };
            // SAFETY: bounds checked by ptr_at.
            let (kind, code, id) = unsafe { ((*i).kind, (*i).code, (*i).id) };
            match kind {
                ICMP_ECHO if code == 0 => Transport::Echo(l4(id, 0, 0)),
                ICMP_ECHO_REPLY if code == 0 => Transport::Echo(l4(0, id, 0)),
                ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETERPROB => {
                    Transport::IcmpError(l4(0, 0, 0))
                }
                _ => other,
            }
        }
        _ => other,
    }
}
