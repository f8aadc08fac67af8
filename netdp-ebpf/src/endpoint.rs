//! Delivery to a pod on this node: straight into the pod's namespace, skipping the host's
//! routing, netfilter and the veth's own backlog (bpf_redirect_peer).
use aya_ebpf::{bindings::TC_ACT_REDIRECT, helpers::bpf_redirect_peer, programs::TcContext};
use netdp_common::{
    counters::{Program, Reason},
    endpoint::Endpoint,
};

use crate::{
    counters::{count, drop, pass},
    csum,
    parse::Ipv4Frame,
};

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
    // SAFETY: headers were bounds checked by the parser and nothing has moved the packet.
    unsafe {
        if (*frame.ip).ttl <= 1 {
            return pass(ctx, program, Reason::TtlExceeded);
        }
        csum::decrease_ttl(frame.ip);
        (*frame.eth).dst = ep.mac;
        (*frame.eth).src = ep.host_mac;
    }
    let ret = unsafe { bpf_redirect_peer(ep.ifindex, 0) } as i32;
    if ret != TC_ACT_REDIRECT as i32 {
        return drop(ctx, program, Reason::RedirectFailed);
    }
    count(ctx, program, reason);
    ret
}
