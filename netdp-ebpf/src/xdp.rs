//! XDP on the underlay interface, ahead of `from_netdev`: a prefilter that drops what can
//! never be valid before the kernel allocates an skb for it, and service traffic from
//! outside (node ports, external and load-balancer IPs) that only needs a rewrite and a
//! bounce back out: the frontend lookup, backend choice, conntrack entries and DNAT/SNAT
//! happen here (the very code tc runs, `ctx::Ctx`), and the packet leaves by `XDP_TX` (or
//! a redirect when the next hop is behind another interface).
//!
//! Everything else is left to tc unchanged (`XDP_PASS`): tunnel packets, local backends,
//! next hops not resolved yet, fragments and IP options, ICMP. A backend behind a tunnel
//! gets the packet encapsulated here as tc would. Where XDP opened a flow and then cannot
//! send its packet itself, it leaves the packet untranslated: tc finds the flow's entries
//! and follows them, so behaviour is the same with XDP and without.
use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_OUTPUT, bpf_fib_lookup as FibLookup, xdp_action,
    },
    btf_maps::lpm_trie::Key,
    helpers::{bpf_fib_lookup, bpf_redirect},
    programs::XdpContext,
};
use netdp_common::{
    Mac,
    conntrack::{CtKey, flags},
    counters::{Program, Reason},
    dsr::OPTION_LEN,
    endpoint::EndpointKey,
    node::flags as node_flags,
    peer::PeerKey,
    route::{Route, flags as route_flags, mode},
};

use crate::{
    conntrack::{self, CtState},
    counters::{count, drop, pass},
    ctx::Ctx,
    dsr, encap, hop,
    lb::{self, Flow},
    maps,
    nat::{self, Translated},
    parse::{self, EthHdr, Ipv4Frame, L4, Parsed, Transport, ptr_at},
    source,
};

const PROGRAM: Program = Program::Xdp;
const AF_INET: u8 = 2;

/// Where a translated packet leaves: the interface and the MACs of its next hop, and the
/// route that encapsulates it (a peer behind a tunnel).
struct Egress {
    ifindex: u32,
    dmac: Mac,
    smac: Mac,
    tunnel: Option<&'static Route>,
}

#[inline(always)]
pub fn netdev(ctx: &XdpContext) -> u32 {
    let frame = match parse::ipv4(ctx) {
        Parsed::Ipv4(f) => f,
        Parsed::NotIpv4 => return pass(ctx, PROGRAM, Reason::NonIpv4) as u32,
        Parsed::Malformed => return drop(ctx, PROGRAM, Reason::Malformed) as u32,
    };
    // SAFETY: bounds checked by the parser.
    let (saddr, daddr, plain, ttl) = unsafe {
        let ip = &*frame.ip;
        (ip.saddr, ip.daddr, ip.is_plain(), ip.ttl)
    };
    let node = maps::node();
    if node.flags & node_flags::DENY_SOURCES != 0 && source::denied(&frame) {
        return drop(ctx, PROGRAM, Reason::DeniedSource) as u32;
    }
    let to_node = daddr == node.node_ip;
    if to_node && crate::decap::tunnel(ctx, &frame, &node).is_some() {
        // SAFETY: only tested for presence.
        return if unsafe { maps::PEERS.get(PeerKey { addr: saddr }) }.is_some() {
            pass(ctx, PROGRAM, Reason::ToTc)
        } else {
            drop(ctx, PROGRAM, Reason::DecapUnknownPeer)
        } as u32;
    }
    if source::verifying() {
        if let Err(verdict) = source::underlay(ctx, PROGRAM, &frame, to_node) {
            return verdict as u32;
        }
        // Straight to a pod here from outside the cluster: only from a routed network
        // (nothing translated is addressed to a pod: services and masquerading answer
        // on their own addresses). Pods are in the cluster Network: service traffic to
        // the node or to external addresses costs no lookup here.
        if !to_node
            && source::in_network(daddr)
            // SAFETY: only tested for presence.
            && unsafe { maps::ENDPOINTS.get(EndpointKey { addr: daddr }) }.is_some()
            && let Err(verdict) = source::outside_to_pod(ctx, PROGRAM, &frame)
        {
            return verdict as u32;
        }
    }
    // Forwarding is a routing hop; one that would expire, tc hands to the kernel.
    if !plain || ttl <= 1 {
        return pass(ctx, PROGRAM, Reason::ToTc) as u32;
    }
    let Transport::Ports(l4) = parse::transport(ctx, &frame) else {
        return pass(ctx, PROGRAM, Reason::ToTc) as u32;
    };
    service(ctx, &frame, &l4) as u32
}

/// A TCP or UDP packet: of a tracked flow, or the first to a frontend.
#[inline(always)]
fn service(ctx: &XdpContext, frame: &Ipv4Frame, l4: &L4) -> i32 {
    let key = conntrack::key(frame, l4);
    let (to, t) = match conntrack::lookup(ctx, &key, l4) {
        CtState::Invalid => return drop(ctx, PROGRAM, Reason::OutOfWindow),
        CtState::New => match lb::open(ctx, PROGRAM, l4, &key) {
            Flow::Opened(to, t) => (to, t),
            Flow::Not(nat::Outcome::Done(verdict)) => return verdict,
            Flow::Not(_) => return pass(ctx, PROGRAM, Reason::ToTc),
        },
        CtState::Established(e) | CtState::Reply(e) | CtState::Related(e) => {
            // Masqueraded flows are the pods' own: tc delivers their replies.
            if e.flags & flags::MASQ != 0 {
                return pass(ctx, PROGRAM, Reason::ToTc);
            }
            (e.nat_tuple(key.proto), Translated::of(e))
        }
    };
    if t.is_dsr() {
        return dispatch(ctx, frame, &to);
    }
    let Some(out) = egress(ctx, &to, 0) else {
        return pass(ctx, PROGRAM, Reason::ToTc);
    };
    if nat::rewrite(ctx, l4, &key, &to).is_err() {
        return drop(ctx, PROGRAM, Reason::AdjustFailed);
    }
    let reason = if t.flags & flags::REPLY != 0 {
        Reason::ServiceReply
    } else {
        Reason::Direct
    };
    transmit(ctx, frame, &out, reason)
}

/// A packet of a flow sent on with direct server return: untranslated, with backend `to`
/// in the option (`dsr`), through the tunnel to the backend's node; tc takes it where XDP
/// cannot send it (as for any flow).
#[inline(always)]
fn dispatch(ctx: &XdpContext, frame: &Ipv4Frame, to: &CtKey) -> i32 {
    let Some(out) = egress(ctx, to, OPTION_LEN).filter(|out| out.tunnel.is_some()) else {
        return pass(ctx, PROGRAM, Reason::ToTc);
    };
    if dsr::push(ctx, frame, to.daddr, to.dport).is_err() {
        return drop(ctx, PROGRAM, Reason::AdjustFailed);
    }
    match parse::ipv4(ctx) {
        Parsed::Ipv4(frame) => transmit(ctx, &frame, &out, Reason::Direct),
        _ => drop(ctx, PROGRAM, Reason::Malformed),
    }
}

/// Where the translated packet `to` (`extra` bytes longer than the frame is now) can go
/// without tc: to a peer, routed directly or
/// encapsulated, whose next hop's MAC the agent resolved, or (a reply to a client outside
/// the cluster) wherever the FIB says with a resolved neighbour. `None` for a pod here, a
/// next hop not resolved yet, or a packet too big for the route: tc takes those. A pod
/// here has no route (ROUTES holds the peers' subnets, never this node's own), so the
/// route lookup alone tells a remote backend from a local one.
#[inline(always)]
fn egress(ctx: &XdpContext, to: &CtKey, extra: usize) -> Option<Egress> {
    if source::in_cluster(to.daddr) {
        let rt: &'static Route = maps::ROUTES.get(&Key::new(32, to.daddr))?;
        let tunnel = match rt.mode {
            mode::DIRECT => None,
            mode::VXLAN | mode::IPIP | mode::UDP => Some(rt),
            _ => return None,
        };
        if rt.flags & route_flags::HAS_MAC == 0
            || ctx.len() as usize + extra > parse::ETH_HLEN + rt.mtu as usize
        {
            return None;
        }
        return Some(Egress {
            ifindex: rt.ifindex,
            dmac: rt.dmac,
            smac: rt.smac,
            tunnel,
        });
    }
    fib(ctx, to)
}

/// The kernel's route and neighbour for `to` (bpf_fib_lookup): the client's next hop, out
/// of the interface the flow came in on. Looked up as the node's own output (it is the
/// node's reply, from its address), so the node needs no IP forwarding for it.
#[inline(always)]
fn fib(ctx: &XdpContext, to: &CtKey) -> Option<Egress> {
    // SAFETY: a plain C struct, all zeroes is valid.
    let mut p: FibLookup = unsafe { core::mem::zeroed() };
    p.family = AF_INET;
    p.l4_protocol = to.proto;
    p.sport = to.sport.to_be();
    p.dport = to.dport.to_be();
    p.__bindgen_anon_1.tot_len = (ctx.len() as usize - parse::ETH_HLEN) as u16;
    p.ifindex = ctx.ifindex();
    p.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(to.saddr);
    p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(to.daddr);
    // SAFETY: the helper reads and writes `p` only.
    let ret = unsafe {
        bpf_fib_lookup(
            ctx.ctx as *mut _,
            &mut p,
            core::mem::size_of::<FibLookup>() as i32,
            BPF_FIB_LOOKUP_OUTPUT,
        )
    };
    (ret == BPF_FIB_LKUP_RET_SUCCESS as i64).then_some(Egress {
        ifindex: p.ifindex,
        dmac: p.dmac,
        smac: p.smac,
        tunnel: None,
    })
}

/// Sends the rewritten frame to its next hop, one routing hop on (encapsulated first for
/// a peer behind a tunnel): back out of the interface it came in on (`XDP_TX`), or
/// redirected to another. Counted under `reason`, or the tunnel's.
#[inline(always)]
fn transmit(ctx: &XdpContext, frame: &Ipv4Frame, out: &Egress, reason: Reason) -> i32 {
    // SAFETY: bounds checked by the parser, and the rewrite moved nothing; the TTL was
    // checked above 1.
    unsafe { hop::decrease_ttl(frame.ip) };
    let reason = match out.tunnel {
        None => reason,
        Some(rt) => {
            let pushed = match rt.mode {
                mode::VXLAN => encap::vxlan(ctx, frame, rt).map(|()| Reason::EncapVxlan),
                mode::IPIP => encap::ipip(ctx, frame, rt).map(|()| Reason::EncapIpip),
                _ => encap::udp(ctx, frame, rt, maps::node().port).map(|()| Reason::EncapUdp),
            };
            match pushed {
                Ok(r) => r,
                Err(r) => return drop(ctx, PROGRAM, r),
            }
        }
    };
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return drop(ctx, PROGRAM, Reason::Malformed);
    };
    // SAFETY: bounds checked by ptr_at.
    unsafe {
        (*eth).dst = out.dmac;
        (*eth).src = out.smac;
        // A pushed header starts on bytes the frame never had (tc's room keeps the old
        // Ethernet header in front).
        (*eth).proto = parse::ETH_P_IP.to_be();
    }
    let verdict = if out.ifindex == ctx.ifindex() {
        xdp_action::XDP_TX
    } else {
        // SAFETY: no preconditions.
        let ret = unsafe { bpf_redirect(out.ifindex, 0) } as u32;
        if ret != xdp_action::XDP_REDIRECT {
            return drop(ctx, PROGRAM, Reason::RedirectFailed);
        }
        ret
    };
    count(ctx, PROGRAM, reason);
    verdict as i32
}
