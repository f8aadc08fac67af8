//! The forwarding decision of each program.
use aya_ebpf::{btf_maps::lpm_trie::Key, programs::TcContext};
use netdp_common::{
    counters::{Program, Reason},
    endpoint::EndpointKey,
};

use crate::{
    counters::{drop, pass},
    decap, egress, endpoint, maps, nat,
    parse::{self, Ipv4Frame, Parsed},
    route,
};

#[inline(always)]
fn parse(ctx: &TcContext, program: Program) -> Result<Ipv4Frame, i32> {
    match parse::ipv4(ctx) {
        Parsed::Ipv4(frame) => Ok(frame),
        Parsed::NotIpv4 => Err(pass(ctx, program, Reason::NonIpv4)),
        Parsed::Malformed => Err(drop(ctx, program, Reason::Malformed)),
    }
}

/// What a pod sends: to a pod here, to the node leasing the destination's subnet, or out
/// of the cluster.
#[inline(always)]
pub fn from_pod(ctx: &TcContext) -> i32 {
    let program = Program::FromPod;
    let frame = match parse(ctx, program) {
        Ok(f) => f,
        Err(verdict) => return verdict,
    };
    // SAFETY: the header was bounds checked by the parser.
    let daddr = unsafe { (*frame.ip).daddr };
    // SAFETY: the value is only read, and copied out before any map update could reuse it.
    if let Some(ep) = unsafe { maps::ENDPOINTS.get(EndpointKey { addr: daddr }) } {
        return endpoint::deliver(ctx, program, &frame, ep, Reason::LocalDelivery);
    }
    if let Some(rt) = maps::ROUTES.get(&Key::new(32, daddr)) {
        return route::forward(ctx, &frame, rt);
    }
    egress::outside(ctx, &frame)
}

/// What the node receives: tunnel packets and masquerade replies addressed to the node,
/// and packets routed straight to its pods. The node's interface never forwards transit
/// traffic for someone else's subnet.
#[inline(always)]
pub fn from_netdev(ctx: &TcContext) -> i32 {
    let program = Program::FromNetdev;
    let frame = match parse(ctx, program) {
        Ok(f) => f,
        Err(verdict) => return verdict,
    };
    // SAFETY: the header was bounds checked by the parser.
    let daddr = unsafe { (*frame.ip).daddr };
    let node = maps::node();
    if daddr == node.node_ip {
        if let Some(verdict) = decap::receive(ctx, &frame, &node) {
            return verdict;
        }
        if let Some(verdict) = nat::unmasquerade(ctx, &frame, &node) {
            return verdict;
        }
        return pass(ctx, program, Reason::ToHost);
    }
    // SAFETY: as above.
    if let Some(ep) = unsafe { maps::ENDPOINTS.get(EndpointKey { addr: daddr }) } {
        return endpoint::deliver(ctx, program, &frame, ep, Reason::LocalDelivery);
    }
    pass(ctx, program, Reason::UnknownDestination)
}
