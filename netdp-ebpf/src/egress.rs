//! Pod traffic leaving the cluster Network: out of the underlay through the kernel's
//! routing and neighbour tables (bpf_redirect_neigh does the FIB lookup), with the
//! node's address as source when masquerading. Nodes need no IP forwarding for it.
use aya_ebpf::{bindings::TC_ACT_REDIRECT, helpers::bpf_redirect_neigh, programs::TcContext};
use netdp_common::{
    counters::{Program, Reason},
    node::flags,
};

use crate::{
    counters::{count, drop, pass},
    csum, maps, nat,
    parse::{self, Ipv4Frame, Parsed},
};

const PROGRAM: Program = Program::FromPod;

#[inline(always)]
pub fn outside(ctx: &TcContext, frame: &Ipv4Frame) -> i32 {
    let node = maps::node();
    // SAFETY: bounds checked by the parser.
    let (daddr, ttl) = unsafe { ((*frame.ip).daddr, (*frame.ip).ttl) };
    let dst = u32::from_ne_bytes(daddr);
    let mask = u32::from_ne_bytes(node.cluster_mask);
    if node.underlay_ifindex == 0 || dst & mask == u32::from_ne_bytes(node.cluster) {
        // A cluster address nobody leases (or no egress configured): the kernel's call.
        return pass(ctx, PROGRAM, Reason::UnknownDestination);
    }
    if daddr == node.node_ip {
        return pass(ctx, PROGRAM, Reason::ToHost);
    }
    if ttl <= 1 {
        return pass(ctx, PROGRAM, Reason::TtlExceeded);
    }
    let (frame, reason) = if node.flags & flags::MASQUERADE != 0 {
        if let Err(r) = nat::masquerade(ctx, frame, &node) {
            return drop(ctx, PROGRAM, r);
        }
        // The checksum helpers moved the packet data: parse again.
        let Parsed::Ipv4(frame) = parse::ipv4(ctx) else {
            return drop(ctx, PROGRAM, Reason::Malformed);
        };
        (frame, Reason::Masquerade)
    } else {
        (*frame, Reason::Egress)
    };
    // SAFETY: bounds checked by the parser.
    unsafe { csum::decrease_ttl(frame.ip) };
    // SAFETY: no neighbour parameters: the kernel routes by the packet's destination.
    let ret = unsafe { bpf_redirect_neigh(node.underlay_ifindex, core::ptr::null_mut(), 0, 0) };
    if ret as i32 != TC_ACT_REDIRECT as i32 {
        return drop(ctx, PROGRAM, Reason::RedirectFailed);
    }
    count(ctx, PROGRAM, reason);
    ret as i32
}
