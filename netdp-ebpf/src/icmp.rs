//! ICMP: the errors netdp answers with itself, and errors about translated flows.
//!
//! - "Fragmentation needed" (type 3 code 4) back to a pod whose packet does not fit the
//!   path, so its TCP lowers its path MTU instead of retransmitting into a black hole.
//! - "Port unreachable" (type 3 code 3) for a connection to a service without endpoints,
//!   as kube-proxy's REJECT does.
//! - Errors quoting a packet of a translated flow (masqueraded or load balanced; either
//!   direction) are translated back, so they reach the host that sent the quoted packet as
//!   that host knows the flow: path MTU discovery and error reporting work through the NAT.
//!
//! Both answers are built in place from the offending packet and sent back out of the
//! interface it came in on.
use aya_ebpf::{
    bindings::{
        BPF_CSUM_LEVEL_RESET,
        bpf_adj_room_mode::{BPF_ADJ_ROOM_MAC, BPF_ADJ_ROOM_NET},
    },
    helpers::{bpf_csum_level, bpf_redirect, bpf_skb_change_tail},
    programs::TcContext,
};
use netdp_common::{
    conntrack::CtKey,
    counters::{Program, Reason},
};

use crate::{
    conntrack::{self, CtState},
    counters::{drop, redirected},
    csum, maps,
    nat::{self, Translated},
    parse::{
        ETH_HLEN, ETH_P_IP, EthHdr, ICMP_DEST_UNREACH, ICMP_ECHO, ICMP_ECHO_REPLY, IP_DADDR_OFF,
        IP_DF, IP_HLEN, IP_OFFSET, IP_SADDR_OFF, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, Ipv4Frame,
        Ipv4Hdr, L4, load, ptr_at,
    },
};

const ICMP_HLEN: usize = 8;
const ICMP_FRAG_NEEDED: u8 = 4;
const ICMP_PORT_UNREACH: u8 = 3;
/// Precedence "internetwork control", as Linux sends its ICMP errors.
const TOS_CONTROL: u8 = 0xc0;

/// Sends the error built in place back out of the interface the packet came in on.
#[inline(always)]
fn send_back(ctx: &TcContext, program: Program, reason: Reason) -> i32 {
    // SAFETY: reading our own skb, then a plain helper call.
    let ret = unsafe { bpf_redirect((*ctx.skb.skb).ifindex, 0) };
    redirected(ctx, program, ret, reason)
}

/// Bytes of the offending packet a "fragmentation needed" quotes: its header and 64 bytes
/// of payload (enough for any TCP header's checksum offset, which the kernel wants kept).
const FRAG_QUOTE: usize = IP_HLEN + 64;

#[repr(C)]
struct FragNeeded {
    eth: EthHdr,
    ip: Ipv4Hdr,
    /// Type, code, checksum, unused, next-hop MTU, then the quote.
    icmp: [u16; (ICMP_HLEN + FRAG_QUOTE) / 2],
}

/// Answers a too-big packet. Packets without DF are dropped: netdp does not fragment. The
/// packet may have been translated already (a service flow to a remote backend): the quote
/// is then translated back too, so the sender recognises its own packet.
#[inline(always)]
pub fn frag_needed(ctx: &TcContext, program: Program, frame: &Ipv4Frame, mtu: u32) -> i32 {
    // SAFETY: bounds checked by the parser; copied out before the packet moves.
    let (src_mac, dst_mac, src_ip, df, plain) = unsafe {
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
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, (ETH_HLEN + FRAG_QUOTE) as u32, 0) } != 0 {
        return drop(ctx, program, Reason::AdjustFailed);
    }
    if ctx
        .adjust_room((IP_HLEN + ICMP_HLEN) as i32, BPF_ADJ_ROOM_MAC, 0)
        .is_err()
    {
        return drop(ctx, program, Reason::AdjustFailed);
    }
    let Some(e) = ptr_at::<FragNeeded>(ctx, 0) else {
        return drop(ctx, program, Reason::AdjustFailed);
    };
    let tot_len = (IP_HLEN + ICMP_HLEN + FRAG_QUOTE) as u16;
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
        daddr: src_ip,
    };
    // SAFETY: `ip` is a 20-byte header on the stack; `e` was bounds checked by ptr_at.
    unsafe {
        ip.check = csum::finish(csum::sum_words(
            &*(&ip as *const Ipv4Hdr as *const [u16; IP_HLEN / 2]),
        ))
        .to_be();
        (*e).eth = EthHdr {
            dst: src_mac,
            src: dst_mac,
            proto: ETH_P_IP.to_be(),
        };
        (*e).ip = ip;
        (*e).icmp[0] = ((ICMP_DEST_UNREACH as u16) << 8 | ICMP_FRAG_NEEDED as u16).to_be();
        (*e).icmp[1] = 0;
        (*e).icmp[2] = 0;
        (*e).icmp[3] = (mtu as u16).to_be();
        (*e).icmp[1] = csum::finish(csum::sum_words(&(*e).icmp)).to_be();
    }
    let l4 = L4 {
        proto: IPPROTO_ICMP,
        off: ETH_HLEN + IP_HLEN,
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        first_fragment: false,
    };
    let _ = translate_error(ctx, &l4);
    send_back(ctx, program, Reason::FragNeeded)
}

/// Original IP header plus the first 8 bytes of its payload, quoted in a port unreachable.
const QUOTE: usize = 28;
/// A TCP segment whose checksum the kernel is still to fill in (CHECKSUM_PARTIAL, as pods
/// send them) cannot be cut before that checksum: its quote goes 10 bytes further.
const QUOTE_PARTIAL: usize = 38;

#[repr(C)]
struct Reject {
    eth: [u8; ETH_HLEN],
    ip: [u16; 10],
    icmp_quote: [u16; (8 + QUOTE) / 2],
}

/// The reply to a connection attempt to a service without endpoints: the frame becomes an
/// ICMP port unreachable from the service address back to the client, sent out the way it
/// came. Only for packets without IP options (the only kind the quote is sized for).
#[inline(always)]
pub fn reject(ctx: &TcContext, program: Program, l4: &L4) -> i32 {
    if build_reject(ctx, l4).is_err() {
        return drop(ctx, program, Reason::ServiceRejectFailed);
    }
    send_back(ctx, program, Reason::ServiceReject)
}

#[inline(always)]
fn build_reject(ctx: &TcContext, l4: &L4) -> Result<(), ()> {
    if l4.off != ETH_HLEN + IP_HLEN {
        return Err(());
    }
    let head = load::<{ ETH_HLEN + QUOTE }>(ctx, 0).ok_or(())?;
    let len = ctx.len() as usize;
    let mut quote = QUOTE;
    if len > ETH_HLEN + QUOTE {
        // SAFETY: plain helper calls on our skb.
        let cut = |to: usize| unsafe { bpf_skb_change_tail(ctx.skb.skb, to as u32, 0) } == 0;
        if !cut(ETH_HLEN + QUOTE) {
            if len < ETH_HLEN + QUOTE_PARTIAL || !cut(ETH_HLEN + QUOTE_PARTIAL) {
                return Err(());
            }
            quote = QUOTE_PARTIAL;
        }
    }
    let extra = if quote == QUOTE_PARTIAL {
        load::<{ QUOTE_PARTIAL - QUOTE }>(ctx, ETH_HLEN + QUOTE).ok_or(())?
    } else {
        [0; QUOTE_PARTIAL - QUOTE]
    };
    ctx.adjust_room(28, BPF_ADJ_ROOM_NET, 0).map_err(|_| ())?;

    let mut out = Reject {
        eth: [0; ETH_HLEN],
        ip: [0; 10],
        icmp_quote: [0; (8 + QUOTE) / 2],
    };
    // Back to the sender: MACs swapped.
    out.eth[..6].copy_from_slice(&head[6..12]);
    out.eth[6..12].copy_from_slice(&head[..6]);
    out.eth[12..14].copy_from_slice(&head[12..14]);
    let q = &head[ETH_HLEN..];
    let word = |i: usize| u16::from_ne_bytes([q[i], q[i + 1]]);
    let total = (IP_HLEN + ICMP_HLEN + quote) as u16;
    out.ip[0] = u16::from_ne_bytes([0x45, TOS_CONTROL]);
    out.ip[1] = total.to_be();
    out.ip[4] = u16::from_ne_bytes([64, IPPROTO_ICMP]);
    // From the address the client tried (the service), to the client.
    out.ip[6] = word(16);
    out.ip[7] = word(18);
    out.ip[8] = word(12);
    out.ip[9] = word(14);
    out.ip[5] = csum::finish(csum::sum_words(&out.ip)).to_be();
    out.icmp_quote[0] = u16::from_ne_bytes([ICMP_DEST_UNREACH, ICMP_PORT_UNREACH]);
    for i in 0..QUOTE / 2 {
        out.icmp_quote[4 + i] = word(2 * i);
    }
    let mut extra_words = [0u16; (QUOTE_PARTIAL - QUOTE) / 2];
    if quote == QUOTE_PARTIAL {
        for (i, w) in extra_words.iter_mut().enumerate() {
            *w = u16::from_ne_bytes([extra[2 * i], extra[2 * i + 1]]);
        }
    }
    // The checksum covers both parts of the quote.
    out.icmp_quote[1] =
        csum::finish(csum::sum_words(&out.icmp_quote) + csum::sum_words(&extra_words)).to_be();
    ctx.store(0, &out, 0).map_err(|_| ())?;
    if quote == QUOTE_PARTIAL {
        ctx.store(core::mem::size_of::<Reject>(), &extra, 0)
            .map_err(|_| ())?;
    }
    // A fresh packet with full checksums: a "checksum verified" mark the original had is
    // void.
    // SAFETY: plain helper call on our skb.
    unsafe { bpf_csum_level(ctx.skb.skb, BPF_CSUM_LEVEL_RESET as u64) };
    Ok(())
}

/// The flow an ICMP error's quote is about, from its first 28 bytes (header without
/// options, first fragment, 8 bytes of TCP, UDP or ICMP echo).
#[inline(always)]
fn quoted_flow(q: &[u8; 28]) -> Option<CtKey> {
    let be = |i: usize| u16::from_be_bytes([q[i], q[i + 1]]);
    if q[0] != 0x45 || be(6) & IP_OFFSET != 0 {
        return None;
    }
    let (sport, dport) = match q[9] {
        IPPROTO_TCP | IPPROTO_UDP => (be(20), be(22)),
        IPPROTO_ICMP if q[20] == ICMP_ECHO => (be(24), 0),
        IPPROTO_ICMP if q[20] == ICMP_ECHO_REPLY => (0, be(24)),
        _ => return None,
    };
    Some(CtKey {
        saddr: [q[12], q[13], q[14], q[15]],
        daddr: [q[16], q[17], q[18], q[19]],
        sport,
        dport,
        proto: q[9],
        pad: [0; 3],
    })
}

/// Translates an ICMP error quoting a packet of a translated flow, so it reaches the host
/// that sent the quoted packet as that host knows the flow. Returns how the flow's entry
/// says to go on, or `None` if the error is about no flow conntrack tracks.
#[inline(always)]
pub fn translate_error(ctx: &TcContext, l4: &L4) -> Option<Translated> {
    let icmp = l4.off;
    let inner = icmp + ICMP_HLEN;
    let quoted = quoted_flow(&load::<28>(ctx, inner)?)?;
    // The quoted packet went one way; the entry for the other way says how the sender of
    // the quoted packet sees the flow.
    let CtState::Related(e) = conntrack::lookup_related(&quoted) else {
        return None;
    };
    let orig = e.nat_tuple(quoted.proto).reversed();

    let outer = load::<8>(ctx, IP_SADDR_OFF)?;
    let (osrc, odst) = (
        [outer[0], outer[1], outer[2], outer[3]],
        [outer[4], outer[5], outer[6], outer[7]],
    );

    let icmp_csum = icmp + 2;
    let inner_csum = inner + 10;
    let old_inner_csum: u16 = ctx.load(inner_csum).ok()?;
    for (off, old, new) in [
        (inner + 12, quoted.saddr, orig.saddr),
        (inner + 16, quoted.daddr, orig.daddr),
    ] {
        if old != new {
            let (o, n) = (
                u32::from_ne_bytes(old) as u64,
                u32::from_ne_bytes(new) as u64,
            );
            ctx.l3_csum_replace(inner_csum, o, n, 4).ok()?;
            ctx.l4_csum_replace(icmp_csum, o, n, 4).ok()?;
            ctx.store(off, &new, 0).ok()?;
        }
    }
    let new_inner_csum: u16 = ctx.load(inner_csum).ok()?;
    if new_inner_csum != old_inner_csum {
        ctx.l4_csum_replace(icmp_csum, old_inner_csum as u64, new_inner_csum as u64, 2)
            .ok()?;
    }
    // The ports, or the echo identifier standing in for the one that is not 0.
    let (sport_at, dport_at) = if quoted.proto == IPPROTO_ICMP {
        (inner + 24, inner + 24)
    } else {
        (inner + 20, inner + 22)
    };
    for (off, old, new) in [
        (sport_at, quoted.sport, orig.sport),
        (dport_at, quoted.dport, orig.dport),
    ] {
        if old != new {
            let (old, new) = (old.to_be(), new.to_be());
            ctx.l4_csum_replace(icmp_csum, old as u64, new as u64, 2)
                .ok()?;
            ctx.store(off, &new, 0).ok()?;
        }
    }
    // The quoted transport checksum, when the quote holds it (always for UDP and ICMP),
    // follows the addresses (pseudo-header, not for ICMP) and ports it covers, so the quote
    // is exactly what the sender sent.
    let (l4_csum, pseudo) = match quoted.proto {
        IPPROTO_TCP => (inner + IP_HLEN + 16, true),
        IPPROTO_UDP => (inner + IP_HLEN + 6, true),
        _ => (inner + IP_HLEN + 2, false),
    };
    if (ctx.len() as usize) >= l4_csum + 2 {
        let old: u16 = ctx.load(l4_csum).ok()?;
        if !(quoted.proto == IPPROTO_UDP && old == 0) {
            let (mut removed, mut added) = (
                quoted.sport.to_be() as u32 + quoted.dport.to_be() as u32,
                orig.sport.to_be() as u32 + orig.dport.to_be() as u32,
            );
            if pseudo {
                removed += csum::addr_sum(quoted.saddr) + csum::addr_sum(quoted.daddr);
                added += csum::addr_sum(orig.saddr) + csum::addr_sum(orig.daddr);
            }
            let mut new = csum::update(old, removed, added);
            if quoted.proto == IPPROTO_UDP && new == 0 {
                new = 0xffff;
            }
            if new != old {
                ctx.l4_csum_replace(icmp_csum, old as u64, new as u64, 2)
                    .ok()?;
                ctx.store(l4_csum, &new, 0).ok()?;
            }
        }
    }
    // The error was addressed to the quoted packet's source, and may come from its
    // destination (a backend refusing): both as the other end knows them.
    if odst == quoted.saddr && orig.saddr != odst {
        nat::addr(ctx, IP_DADDR_OFF, None, odst, orig.saddr, 0).ok()?;
    }
    if osrc == quoted.daddr && orig.daddr != osrc {
        nat::addr(ctx, IP_SADDR_OFF, None, osrc, orig.daddr, 0).ok()?;
    }
    Some(Translated::of(e))
}
