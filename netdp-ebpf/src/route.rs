//! Forwarding to the node that leases the destination's subnet.
use aya_ebpf::{
    bindings::{TC_ACT_REDIRECT, bpf_redir_neigh},
    helpers::{bpf_redirect, bpf_redirect_neigh},
    programs::TcContext,
};
use netdp_common::{
    counters::{Program, Reason},
    route::{Route, flags, mode},
};

use crate::{
    counters::{count, drop, pass},
    csum,
    parse::Ipv4Frame,
};

const AF_INET: u32 = 2;

#[inline(always)]
pub fn forward(ctx: &TcContext, program: Program, frame: &Ipv4Frame, rt: &Route) -> i32 {
    if rt.mode == mode::UNREACHABLE {
        return pass(ctx, program, Reason::PeerUnreachable);
    }
    // SAFETY: headers were bounds checked by the parser and nothing has moved the packet.
    unsafe {
        if (*frame.ip).ttl <= 1 {
            return pass(ctx, program, Reason::TtlExceeded);
        }
        csum::decrease_ttl(frame.ip);
    }
    let (ret, reason) = if rt.flags & flags::HAS_MAC != 0 {
        unsafe {
            (*frame.eth).dst = rt.dmac;
            (*frame.eth).src = rt.smac;
        }
        (unsafe { bpf_redirect(rt.ifindex, 0) }, Reason::Direct)
    } else {
        // The agent has not resolved the next hop yet: let the kernel's neighbour
        // subsystem fill in the MACs (and resolve it, so the agent can pick it up).
        let mut nh = bpf_redir_neigh {
            nh_family: AF_INET,
            __bindgen_anon_1: unsafe { core::mem::zeroed() },
        };
        nh.__bindgen_anon_1.ipv4_nh = u32::from_ne_bytes(rt.nexthop);
        let ret = unsafe {
            bpf_redirect_neigh(
                rt.ifindex,
                &mut nh,
                core::mem::size_of::<bpf_redir_neigh>() as i32,
                0,
            )
        };
        (ret, Reason::DirectNeigh)
    };
    if ret as i32 != TC_ACT_REDIRECT as i32 {
        return drop(ctx, program, Reason::RedirectFailed);
    }
    count(ctx, program, reason);
    ret as i32
}
