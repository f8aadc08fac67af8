//! The shared forwarding decision: local pod, remote subnet, or the kernel.
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
};

#[inline(always)]
pub fn ipv4(ctx: &TcContext, program: Program) -> i32 {
    let frame = match parse::ipv4(ctx) {
        Parsed::Ipv4(frame) => frame,
        Parsed::NotIpv4 => return pass(ctx, program, Reason::NonIpv4),
        Parsed::Malformed => return drop(ctx, program, Reason::Malformed),
    };
    // SAFETY: the header was bounds checked by the parser.
    let daddr = unsafe { (*frame.ip).daddr };

    // SAFETY: the value is only read, and copied out before any map update could reuse it.
    if let Some(ep) = unsafe { maps::ENDPOINTS.get(EndpointKey { addr: daddr }) } {
        return endpoint::deliver(ctx, program, &frame, ep);
    }
    // Only pod traffic is routed to peers; the node's own interface never forwards transit
    // traffic for someone else's subnet.
    if program == Program::FromPod {
        if let Some(rt) = maps::ROUTES.get(&Key::new(32, daddr)) {
            return route::forward(ctx, program, &frame, rt);
        }
    }
    pass(ctx, program, Reason::UnknownDestination)
}
