//! Address and port translation, for services and masquerading alike: rewriting a packet's
//! tuple with incremental checksum updates, translating packets of tracked flows (either
//! direction) as their conntrack entry says, choosing source ports for new translations,
//! and masquerading (`--ip-masq`) pod flows to the outside.
//!
//! The kernel's csum helpers are used because they also keep the skb's own checksum state
//! right (CHECKSUM_PARTIAL from pods, CHECKSUM_COMPLETE from NICs).
use aya_ebpf::bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR};
use netdp_common::{
    Ipv4,
    conntrack::{CtEntry, CtKey, flags},
    counters::{Event, Program, Reason},
    nat::PORT_PROBES,
    node::NodeConfig,
};

use crate::{
    conntrack::{self, Claim},
    counters::{self, drop},
    ctx::Ctx,
    parse::{IP_CSUM_OFF, IP_DADDR_OFF, IP_SADDR_OFF, IPPROTO_ICMP, IPPROTO_TCP, L4, only_syn},
};

/// How a translated packet goes on: what its conntrack entry says about the flow.
#[derive(Clone, Copy)]
pub struct Translated {
    /// The entry's `conntrack::flags` (direction, kind).
    pub flags: u8,
    /// Where replies to a client outside the cluster leave (0: nowhere but pods).
    pub ifindex: u32,
    /// With `flags::DSR`: the backend (address, port) the untranslated packet is carried
    /// to, whose node translates it.
    pub backend: (Ipv4, u16),
}

impl Translated {
    #[inline(always)]
    pub fn of(e: &CtEntry) -> Self {
        Translated {
            flags: e.flags,
            ifindex: e.ifindex,
            backend: (e.nat_daddr, e.nat_dport),
        }
    }

    /// A packet of a flow sent on with direct server return: not rewritten here.
    #[inline(always)]
    pub fn is_dsr(&self) -> bool {
        self.flags & (flags::DSR | flags::REPLY) == flags::DSR
    }
}

pub enum Outcome {
    /// No translation applies: forward the packet as it is.
    Untouched,
    /// Rewritten: forward it by its new destination.
    Translated(Translated),
    /// Handled; the verdict.
    Done(i32),
}

/// Where the L4 checksum sits, the flags its helper needs, and whether the IPv4
/// pseudo-header is in it.
#[inline(always)]
fn l4_csum(l4: &L4) -> (usize, u64, bool) {
    match l4.proto {
        IPPROTO_TCP => (l4.off + 16, 0, true),
        IPPROTO_ICMP => (l4.off + 2, 0, false),
        // A UDP checksum of 0 means "none" and must stay 0.
        _ => (l4.off + 6, BPF_F_MARK_MANGLED_0 as u64, true),
    }
}

/// Rewrites the tuple of the packet whose transport header `l4` describes from `from` to
/// `to` (ports in host byte order; for ICMP echo the identifier). Packet pointers are
/// invalid afterwards.
#[inline(always)]
pub fn rewrite<C: Ctx>(ctx: &C, l4: &L4, from: &CtKey, to: &CtKey) -> Result<(), ()> {
    let (csum, l4_flags, pseudo) = l4_csum(l4);
    let pseudo = pseudo.then_some(csum);
    // The echo identifier stands in for whichever port is not 0.
    let (sport_at, dport_at) = if l4.proto == IPPROTO_ICMP {
        (l4.off + 4, l4.off + 4)
    } else {
        (l4.off, l4.off + 2)
    };
    if from.saddr != to.saddr {
        addr(ctx, IP_SADDR_OFF, pseudo, from.saddr, to.saddr, l4_flags)?;
    }
    if from.daddr != to.daddr {
        addr(ctx, IP_DADDR_OFF, pseudo, from.daddr, to.daddr, l4_flags)?;
    }
    if from.sport != to.sport {
        port(ctx, sport_at, csum, from.sport, to.sport, l4_flags)?;
    }
    if from.dport != to.dport {
        port(ctx, dport_at, csum, from.dport, to.dport, l4_flags)?;
    }
    Ok(())
}

/// Replaces an IPv4 address of the outer header at `off`, fixing the IP checksum and, when
/// given, the L4 checksum at `l4_csum` (whose pseudo-header covers the address).
#[inline(always)]
pub fn addr<C: Ctx>(
    ctx: &C,
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
        ctx.l4_csum_replace(c, o, n, BPF_F_PSEUDO_HDR as u64 | 4 | l4_flags)?;
    }
    ctx.l3_csum_replace(IP_CSUM_OFF, o, n, 4)?;
    ctx.store(off, &new)
}

/// Replaces a port (host byte order values) at `off`, fixing the L4 checksum at `csum`.
#[inline(always)]
pub fn port<C: Ctx>(
    ctx: &C,
    off: usize,
    csum: usize,
    old: u16,
    new: u16,
    l4_flags: u64,
) -> Result<(), ()> {
    let (old, new) = (old.to_be(), new.to_be());
    ctx.l4_csum_replace(csum, old as u64, new as u64, 2 | l4_flags)?;
    ctx.store(off, &new)
}

/// Translates a packet of a tracked flow (either direction, either kind) as its entry `e`
/// says (from [`conntrack::lookup`]).
#[inline(always)]
pub fn follow<C: Ctx>(ctx: &C, program: Program, key: &CtKey, l4: &L4, e: &CtEntry) -> Outcome {
    let t = Translated::of(e);
    if t.is_dsr() {
        // The backend's node translates it (`dsr`).
        return Outcome::Translated(t);
    }
    match rewrite(ctx, l4, key, &e.nat_tuple(key.proto)) {
        Ok(()) => Outcome::Translated(t),
        Err(()) => Outcome::Done(drop(ctx, program, Reason::AdjustFailed)),
    }
}

/// Gives `to` (the new flow `key` translated, its source address set) a source port of
/// `min..=max` whose reply tuple it can claim, writing `reply` there. Candidates start
/// where the flow's hash points, so a flow whose entries were lost gets its old port back;
/// `None` when `PORT_PROBES` candidates are all taken.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn allocate<C: Ctx>(
    ctx: &C,
    program: Program,
    key: &CtKey,
    mut to: CtKey,
    (min, max): (u16, u16),
    reply: &CtEntry,
    now: u32,
) -> Option<CtKey> {
    if min == 0 || max < min {
        return None;
    }
    let range = (max - min) as u32 + 1;
    let start = key.hash();
    for i in 0..PORT_PROBES {
        to.sport = (min as u32 + start.wrapping_add(i) % range) as u16;
        match conntrack::claim(ctx, program, &to.reversed(), reply, now) {
            Claim::Claimed => return Some(to),
            Claim::Taken => {}
            Claim::Failed => return None,
        }
    }
    None
}

/// Masquerades the first packet of a pod's flow to the outside: the node's address and a
/// port of its range no other flow uses towards the same remote address and port, with the
/// flow's two conntrack entries. The caller has looked the flow up already.
#[inline(always)]
pub fn masquerade<C: Ctx>(
    ctx: &C,
    program: Program,
    key: &CtKey,
    l4: &L4,
    node: &NodeConfig,
) -> Result<(), Reason> {
    if l4.proto == IPPROTO_TCP && !only_syn(l4.tcp_flags) {
        // Only a SYN starts a flow, but the ACK completing a half-open one moves it on.
        let e = conntrack::complete(ctx, key, l4).ok_or(Reason::NatNotSyn)?;
        return rewrite(ctx, l4, key, &e.nat_tuple(key.proto)).map_err(|()| Reason::AdjustFailed);
    }
    let now = conntrack::now();
    let reply = conntrack::new_reply(key, now, 0, 0, flags::MASQ);
    let to = CtKey {
        saddr: node.node_ip,
        ..*key
    };
    let to = allocate(
        ctx,
        program,
        key,
        to,
        (node.nat_port_min, node.nat_port_max),
        &reply,
        now,
    )
    .ok_or(Reason::NatNoPort)?;
    let (to, _) = conntrack::open(key, &to, &reply).map_err(|()| Reason::NatNoPort)?;
    rewrite(ctx, l4, key, &to).map_err(|()| Reason::AdjustFailed)?;
    counters::event(ctx, program, Event::MasqueradeFlow);
    Ok(())
}
