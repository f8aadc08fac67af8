//! Rewriting a packet's addresses and ports, with incremental updates of the IP and L4
//! checksums. The kernel's csum helpers are used because they also keep the skb's own
//! checksum state right (CHECKSUM_PARTIAL from pods, CHECKSUM_COMPLETE from NICs).
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use netdp_common::{Ipv4, conntrack::CtKey};

use crate::parse::{IP_CSUM_OFF, IP_DADDR_OFF, IP_SADDR_OFF, IPPROTO_TCP};

/// Offset of the L4 checksum within the TCP or UDP header.
#[inline(always)]
fn l4_csum_off(proto: u8) -> usize {
    if proto == IPPROTO_TCP { 16 } else { 6 }
}

/// Rewrites the tuple of the TCP/UDP packet whose transport header is at `l4_off` from
/// `from` to `to` (ports in host byte order). Packet pointers are invalid afterwards.
#[inline(always)]
pub fn rewrite(ctx: &TcContext, l4_off: usize, from: &CtKey, to: &CtKey) -> Result<(), ()> {
    let csum = l4_off + l4_csum_off(from.proto);
    // A UDP checksum of 0 means "none" and must stay 0.
    let mangled = if from.proto == IPPROTO_TCP {
        0
    } else {
        BPF_F_MARK_MANGLED_0 as u64
    };
    if from.saddr != to.saddr {
        addr(ctx, IP_SADDR_OFF, Some(csum), from.saddr, to.saddr, mangled)?;
    }
    if from.daddr != to.daddr {
        addr(ctx, IP_DADDR_OFF, Some(csum), from.daddr, to.daddr, mangled)?;
    }
    if from.sport != to.sport {
        port(ctx, l4_off, csum, from.sport, to.sport, mangled)?;
    }
    if from.dport != to.dport {
        port(ctx, l4_off + 2, csum, from.dport, to.dport, mangled)?;
    }
    Ok(())
}

/// Replaces an IPv4 address of the outer header at `off`, fixing the IP checksum and, when
/// given, the L4 checksum at `l4_csum` (whose pseudo-header covers the address).
#[inline(always)]
pub fn addr(
    ctx: &TcContext,
    off: usize,
    l4_csum: Option<usize>,
    old: Ipv4,
    new: Ipv4,
    l4_flags: u64,
) -> Result<(), ()> {
    let (o, n) = (
        u32::from_ne_bytes(old) as u64,
        u32::from_ne_bytes(new) as u64,
    );
    if let Some(c) = l4_csum {
        ctx.l4_csum_replace(c, o, n, BPF_F_PSEUDO_HDR as u64 | 4 | l4_flags)
            .map_err(|_| ())?;
    }
    ctx.l3_csum_replace(IP_CSUM_OFF, o, n, 4).map_err(|_| ())?;
    ctx.store(off, &new, 0).map_err(|_| ())
}

/// Replaces a port (host byte order values) at `off`, fixing the L4 checksum at `csum`.
#[inline(always)]
pub fn port(
    ctx: &TcContext,
    off: usize,
    csum: usize,
    old: u16,
    new: u16,
    l4_flags: u64,
) -> Result<(), ()> {
    let (old, new) = (old.to_be(), new.to_be());
    ctx.l4_csum_replace(csum, old as u64, new as u64, 2 | l4_flags)
        .map_err(|_| ())?;
    ctx.store(off, &new, 0).map_err(|_| ())
}
