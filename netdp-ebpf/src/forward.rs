//! The shared forwarding decision: services first, then local pod, remote subnet, or the
//! kernel.
use aya_ebpf::{btf_maps::lpm_trie::Key, programs::TcContext};
use netdp_common::{
    counters::{Program, Reason},
    endpoint::EndpointKey,
};

use crate::{
    counters::{drop, pass},
    endpoint, maps,
    parse::{self, Parsed},
    route,
    service::{self, Outcome},
};

#[inline(always)]
pub fn ipv4(ctx: &TcContext, program: Program) -> i32 {
    parse::pull_headers(ctx);
    let frame = match parse::ipv4(ctx) {
        Parsed::Ipv4(frame) => frame,
        Parsed::NotIpv4 => return pass(ctx, program, Reason::NonIpv4),
        Parsed::Malformed => return drop(ctx, program, Reason::Malformed),
    };
    let frame = match service::handle(ctx, program, &frame) {
        // The service path may have called helpers that invalidate packet pointers (on
        // paths that end up changing nothing): parse again, it is cheap.
        Outcome::Untouched => match parse::ipv4(ctx) {
            Parsed::Ipv4(frame) => frame,
            _ => return drop(ctx, program, Reason::Malformed),
        },
        Outcome::Translated { out_ifindex } => return translated(ctx, program, out_ifindex),
        Outcome::Done(verdict) => return verdict,
    };
    // SAFETY: the header was bounds checked by the parser.
    let daddr = unsafe { (*frame.ip).daddr };

    // SAFETY: the value is only read, and copied out before any map update could reuse it.
    if let Some(ep) = unsafe { maps::ENDPOINTS.get(EndpointKey { addr: daddr }) } {
        return endpoint::deliver(ctx, program, &frame, ep);
    }
    // Only pod (and the node's own) traffic is routed to peers; the node's underlay
    // interface never forwards transit traffic for someone else's subnet.
    if program != Program::FromNetdev {
        if let Some(rt) = maps::ROUTES.get(&Key::new(32, daddr)) {
            return route::forward(ctx, program, &frame, rt);
        }
    }
    pass(ctx, program, Reason::UnknownDestination)
}

/// Forwards a packet the service path rewrote: to a pod here, to the node of a remote pod
/// (also from the underlay: node port traffic), or to a client outside the cluster.
#[inline(always)]
fn translated(ctx: &TcContext, program: Program, out_ifindex: u32) -> i32 {
    let frame = match parse::ipv4(ctx) {
        Parsed::Ipv4(frame) => frame,
        _ => return drop(ctx, program, Reason::Malformed),
    };
    // SAFETY: the header was bounds checked by the parser.
    let daddr = unsafe { (*frame.ip).daddr };
    // SAFETY: as above.
    if let Some(ep) = unsafe { maps::ENDPOINTS.get(EndpointKey { addr: daddr }) } {
        return endpoint::deliver(ctx, program, &frame, ep);
    }
    if let Some(rt) = maps::ROUTES.get(&Key::new(32, daddr)) {
        return route::forward(ctx, program, &frame, rt);
    }
    if out_ifindex != 0 {
        return service::reply_outside(ctx, program, &frame, out_ifindex);
    }
    pass(ctx, program, Reason::ServiceToHost)
}
