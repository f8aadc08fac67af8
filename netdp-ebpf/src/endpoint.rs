//! Delivery to a pod on this node: straight into the pod's namespace, skipping the host's
//! routing, netfilter and the veth's own backlog (bpf_redirect_peer).
use aya_ebpf::{helpers::bpf_redirect_peer, programs::TcContext};
use netdp_common::{
    counters::{Program, Reason},
    endpoint::Endpoint,
};

use crate::{counters::redirected, hop, parse::Ipv4Frame};

/// Hands the frame to the pod, counting it under `reason` (plain delivery, or delivery
/// after decapsulation or reverse translation).
#[inline(always)]
pub fn deliver(
    ctx: &TcContext,
    program: Program,
    frame: &Ipv4Frame,
    ep: &Endpoint,
    reason: Reason,
) -> i32 {
    if let Err(verdict) = hop::hop(ctx, program, frame) {
        return verdict;
    }
    // SAFETY: bounds checked by the parser; the TTL update moved nothing.
    unsafe {
        (*frame.eth).dst = ep.mac;
        (*frame.eth).src = ep.host_mac;
    }
    // SAFETY: a plain helper call.
    let ret = unsafe { bpf_redirect_peer(ep.ifindex, 0) };
    redirected(ctx, program, ret, reason)
}
