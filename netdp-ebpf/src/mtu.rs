//! Whether a packet fits the path it is about to take. For GSO packets (a pod's TCP
//! super-packets) what must fit is each segment the kernel will cut, not the whole.
use aya_ebpf::programs::TcContext;

use crate::parse::{ETH_HLEN, IPPROTO_TCP, IPPROTO_UDP, Ipv4Frame};

/// `mtu` is the largest IPv4 packet (inner, before encapsulation) the route carries.
#[inline(always)]
pub fn fits(ctx: &TcContext, frame: &Ipv4Frame, mtu: u32) -> bool {
    // SAFETY: bounds checked by the parser.
    let ip = unsafe { &*frame.ip };
    let tot_len = u16::from_be(ip.tot_len) as u32;
    if tot_len != 0 && tot_len <= mtu {
        return true;
    }
    // SAFETY: the context is the program's own __sk_buff.
    let gso_size = unsafe { (*ctx.skb.skb).gso_size };
    if gso_size == 0 {
        return false;
    }
    let ihl = (ip.version_ihl & 0x0f) as u32 * 4;
    let l4 = match ip.protocol {
        IPPROTO_TCP => match ctx.load::<u8>(ETH_HLEN + ihl as usize + 12) {
            Ok(doff) => (doff >> 4) as u32 * 4,
            Err(_) => return false,
        },
        IPPROTO_UDP => 8,
        _ => 0,
    };
    ihl + l4 + gso_size <= mtu
}
