//! ICMP "fragmentation needed" (type 3 code 4) back to a pod whose packet does not fit
//! the path, so its TCP lowers its path MTU instead of retransmitting into a black hole.
//! The packet is turned into the error in place: cut down to the original IP header and
//! 64 bytes of payload, a new IP and ICMP header pushed in front, and sent back out of the
//! veth it came in on.
use aya_ebpf::{
    bindings::{TC_ACT_REDIRECT, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC},
    helpers::{bpf_redirect, bpf_skb_change_tail},
    programs::TcContext,
};
use netdp_common::counters::{Program, Reason};

use crate::{
    counters::{count, drop},
    csum, maps,
    parse::{ETH_HLEN, ETH_P_IP, EthHdr, IP_DF, IP_HLEN, IPPROTO_ICMP, Ipv4Frame, Ipv4Hdr, ptr_at},
};

/// Bytes of the offending packet quoted in the error: its header and 64 bytes of payload
/// (enough for any TCP header's checksum offset, which the kernel wants kept).
const QUOTE: usize = IP_HLEN + 64;
const ICMP_HLEN: usize = 8;

#[repr(C)]
struct IcmpError {
    eth: EthHdr,
    ip: Ipv4Hdr,
    /// Type, code, checksum, unused, next-hop MTU, then the quote.
    icmp: [u16; (ICMP_HLEN + QUOTE) / 2],
}

const ICMP_DEST_UNREACH: u16 = 3;
const ICMP_FRAG_NEEDED: u16 = 4;
/// Precedence "internetwork control", as Linux sends its ICMP errors.
const TOS_CONTROL: u8 = 0xc0;

/// Answers a too-big packet from a pod. Packets without DF are dropped: netdp does not
/// fragment.
#[inline(always)]
pub fn frag_needed(ctx: &TcContext, program: Program, frame: &Ipv4Frame, mtu: u32) -> i32 {
    // SAFETY: bounds checked by the parser; copied out before the packet moves.
    let (pod_mac, gw_mac, pod_ip, df, plain) = unsafe {
        let ip = &*frame.ip;
        (
            (*frame.eth).src,
            (*frame.eth).dst,
            ip.saddr,
            u16::from_be(ip.frag_off) & IP_DF != 0,
            ip.version_ihl == 0x45,
        )
    };
    if !df || !plain {
        return drop(ctx, program, Reason::TooBig);
    }
    // SAFETY: plain helper calls on our own context.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, (ETH_HLEN + QUOTE) as u32, 0) } != 0 {
        return drop(ctx, program, Reason::AdjustFailed);
    }
    if ctx
        .adjust_room((IP_HLEN + ICMP_HLEN) as i32, BPF_ADJ_ROOM_MAC, 0)
        .is_err()
    {
        return drop(ctx, program, Reason::AdjustFailed);
    }
    let Some(e) = ptr_at::<IcmpError>(ctx, 0) else {
        return drop(ctx, program, Reason::AdjustFailed);
    };
    let tot_len = (IP_HLEN + ICMP_HLEN + QUOTE) as u16;
    let mut ip = Ipv4Hdr {
        version_ihl: 0x45,
        tos: TOS_CONTROL,
        tot_len: tot_len.to_be(),
        id: 0,
        frag_off: 0,
        ttl: 64,
        protocol: IPPROTO_ICMP,
        check: 0,
        saddr: maps::node().node_ip,
        daddr: pod_ip,
    };
    // SAFETY: `ip` is a 20-byte header on the stack; `e` was bounds checked by ptr_at.
    unsafe {
        ip.check = csum::finish(csum::sum_words(
            &ip as *const Ipv4Hdr as *const [u16; IP_HLEN / 2],
        ))
        .to_be();
        (*e).eth = EthHdr {
            dst: pod_mac,
            src: gw_mac,
            proto: ETH_P_IP.to_be(),
        };
        (*e).ip = ip;
        (*e).icmp[0] = (ICMP_DEST_UNREACH << 8 | ICMP_FRAG_NEEDED).to_be();
        (*e).icmp[1] = 0;
        (*e).icmp[2] = 0;
        (*e).icmp[3] = (mtu as u16).to_be();
        (*e).icmp[1] = csum::finish(csum::sum_words(&(*e).icmp)).to_be();
    }
    // SAFETY: the context is the program's own __sk_buff.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let ret = unsafe { bpf_redirect(ifindex, 0) } as i32;
    if ret != TC_ACT_REDIRECT as i32 {
        return drop(ctx, program, Reason::RedirectFailed);
    }
    count(ctx, program, Reason::FragNeeded);
    ret
}
