//! Header layouts and bounds-checked access to them.
use aya_ebpf::programs::TcContext;

pub const ETH_HLEN: usize = 14;
pub const IP_HLEN: usize = 20;
pub const ETH_P_IP: u16 = 0x0800;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
/// More-fragments flag and fragment offset of `frag_off` (host order).
pub const IP_MF_OFFSET: u16 = 0x3fff;
pub const IP_OFFSET: u16 = 0x1fff;
pub const IP_DF: u16 = 0x4000;

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

#[repr(C)]
pub struct UdpHdr {
    pub source: u16,
    pub dest: u16,
    pub len: u16,
    pub check: u16,
}

impl Ipv4Hdr {
    /// Header without options, and not a fragment: L4 starts right after 20 bytes.
    #[inline(always)]
    pub fn is_plain(&self) -> bool {
        self.version_ihl == 0x45 && u16::from_be(self.frag_off) & IP_MF_OFFSET == 0
    }
}

/// A pointer to a `T` at `offset` in the packet, if the packet is long enough.
#[inline(always)]
pub fn ptr_at<T>(ctx: &TcContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
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
pub fn ipv4(ctx: &TcContext) -> Parsed {
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
