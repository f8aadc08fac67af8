//! ICMP for services: rejecting connections to a service without endpoints (port
//! unreachable, as kube-proxy's REJECT does), and translating ICMP errors about a translated
//! flow back, so path MTU discovery and error reporting keep working through the NAT.
use aya_ebpf::{
    bindings::{BPF_CSUM_LEVEL_RESET, TC_ACT_REDIRECT, bpf_adj_room_mode::BPF_ADJ_ROOM_NET},
    helpers::{bpf_csum_level, bpf_redirect, bpf_skb_change_tail},
    programs::TcContext,
};
use netdp_common::{
    conntrack::CtKey,
    counters::{Program, Reason},
};

use crate::{
    conntrack,
    counters::{count, drop},
    nat,
    parse::{ETH_HLEN, IP_DADDR_OFF, IP_SADDR_OFF, IPPROTO_ICMP, IPPROTO_TCP, L4, load},
};

/// Original IP header plus the first 8 bytes of its payload, quoted in the error.
const QUOTE: usize = 28;
/// A TCP segment whose checksum the kernel is still to fill in (CHECKSUM_PARTIAL, as pods
/// send them) cannot be cut before that checksum: its quote goes 10 bytes further.
const QUOTE_PARTIAL: usize = 38;

/// The RFC 1071 sum of `words`, folded and complemented.
#[inline(always)]
fn checksum(words: &[u16]) -> u16 {
    let mut sum = 0u32;
    for w in words {
        sum += *w as u32;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// The reply to a connection attempt to a service without endpoints: the frame becomes an
/// ICMP port unreachable from the service address back to the client, sent out the way it
/// came. Only for packets without IP options (the only kind the quote is sized for).
#[inline(always)]
pub fn reject(ctx: &TcContext, program: Program, l4: &L4) -> i32 {
    match build_reject(ctx, l4) {
        Ok(()) => {}
        Err(()) => return drop(ctx, program, Reason::ServiceRejectFailed),
    }
    // SAFETY: reading our own skb, then a plain helper call.
    let ret = unsafe { bpf_redirect((*ctx.skb.skb).ifindex, 0) } as i32;
    if ret != TC_ACT_REDIRECT as i32 {
        return drop(ctx, program, Reason::RedirectFailed);
    }
    count(ctx, program, Reason::ServiceReject);
    ret
}

#[repr(C)]
struct Reject {
    eth: [u8; ETH_HLEN],
    ip: [u16; 10],
    icmp_quote: [u16; (8 + QUOTE) / 2],
}

#[inline(always)]
fn build_reject(ctx: &TcContext, l4: &L4) -> Result<(), ()> {
    if l4.off != ETH_HLEN + 20 {
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
    let total = (20 + 8 + quote) as u16;
    out.ip[0] = u16::from_ne_bytes([0x45, 0xc0]);
    out.ip[1] = total.to_be();
    out.ip[4] = u16::from_ne_bytes([64, IPPROTO_ICMP]);
    // From the address the client tried (the service), to the client.
    out.ip[6] = word(16);
    out.ip[7] = word(18);
    out.ip[8] = word(12);
    out.ip[9] = word(14);
    out.ip[5] = checksum(&out.ip);
    // Type 3 (destination unreachable), code 3 (port unreachable), then the quote.
    out.icmp_quote[0] = u16::from_ne_bytes([3, 3]);
    for i in 0..QUOTE / 2 {
        out.icmp_quote[4 + i] = word(2 * i);
    }
    let mut extra_words = [0u16; (QUOTE_PARTIAL - QUOTE) / 2];
    for (i, w) in extra_words.iter_mut().enumerate() {
        *w = u16::from_ne_bytes([extra[2 * i], extra[2 * i + 1]]);
    }
    // The checksum over both parts: complement of the sum of the complements' sum.
    let a = !checksum(&out.icmp_quote) as u32;
    let b = if quote == QUOTE_PARTIAL {
        !checksum(&extra_words) as u32
    } else {
        0
    };
    let mut sum = a + b;
    sum = (sum & 0xffff) + (sum >> 16);
    out.icmp_quote[1] = !(sum as u16);
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

/// Translates an ICMP error quoting a packet of a translated flow, so it reaches the host
/// that sent the quoted packet as that host knows the flow. Returns the interface for
/// errors going to clients outside the cluster (like the flow's replies), or `None` if the
/// error is not about a flow we translate.
#[inline(always)]
pub fn translate_error(ctx: &TcContext, l4: &L4) -> Option<u32> {
    let icmp = l4.off;
    let inner = icmp + 8;
    let q = load::<24>(ctx, inner)?;
    // Only quotes without IP options, of TCP or UDP.
    if q[0] != 0x45 || (q[9] != IPPROTO_TCP && q[9] != crate::parse::IPPROTO_UDP) {
        return None;
    }
    let quoted = CtKey {
        saddr: [q[12], q[13], q[14], q[15]],
        daddr: [q[16], q[17], q[18], q[19]],
        sport: u16::from_be_bytes([q[20], q[21]]),
        dport: u16::from_be_bytes([q[22], q[23]]),
        proto: q[9],
        pad: [0; 3],
    };
    // The quoted packet went one way; the entry for the other way says how the sender of
    // the quoted packet sees the flow.
    let (e, _) = conntrack::lookup(&quoted.reversed(), 0)?;
    // SAFETY: a valid map value, copied out.
    let e = unsafe { *e };
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
    for (off, old, new) in [
        (inner + 20, quoted.sport, orig.sport),
        (inner + 22, quoted.dport, orig.dport),
    ] {
        if old != new {
            let (old, new) = (old.to_be(), new.to_be());
            ctx.l4_csum_replace(icmp_csum, old as u64, new as u64, 2)
                .ok()?;
            ctx.store(off, &new, 0).ok()?;
        }
    }
    // The quoted transport checksum, when the quote holds it (always for UDP), follows the
    // addresses and ports it covers, so the quote is exactly what the sender sent.
    let l4_csum = inner + 20 + if quoted.proto == IPPROTO_TCP { 16 } else { 6 };
    if (ctx.len() as usize) >= l4_csum + 2 {
        let old: u16 = ctx.load(l4_csum).ok()?;
        if !(quoted.proto != IPPROTO_TCP && old == 0) {
            let mut sum = !old as u32;
            for (o, n) in [(quoted.saddr, orig.saddr), (quoted.daddr, orig.daddr)] {
                sum += !u16::from_ne_bytes([o[0], o[1]]) as u32
                    + !u16::from_ne_bytes([o[2], o[3]]) as u32;
                sum += u16::from_ne_bytes([n[0], n[1]]) as u32
                    + u16::from_ne_bytes([n[2], n[3]]) as u32;
            }
            sum += !quoted.sport.to_be() as u32 + orig.sport.to_be() as u32;
            sum += !quoted.dport.to_be() as u32 + orig.dport.to_be() as u32;
            sum = (sum & 0xffff) + (sum >> 16);
            sum = (sum & 0xffff) + (sum >> 16);
            let mut new = !(sum as u16);
            if quoted.proto != IPPROTO_TCP && new == 0 {
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
    Some(e.ifindex)
}
