//! Forwarding to the node that leases the destination's subnet: routed directly or
//! encapsulated, as the route entry says. Pods' packets, the node's own (`from_host`), and
//! translated service packets from anywhere (a node port's remote backend) take this path.
use aya_ebpf::{
    bindings::bpf_redir_neigh,
    helpers::{bpf_redirect, bpf_redirect_neigh},
    programs::TcContext,
};
use netdp_common::{
    counters::{Program, Reason},
    route::{Route, flags, mode},
};

use crate::{
    counters::{drop, pass, redirected},
    encap, hop, icmp, maps, mtu,
    parse::{EthHdr, Ipv4Frame, ptr_at},
};

const AF_INET: u32 = 2;

#[inline(always)]
pub fn forward(ctx: &TcContext, program: Program, frame: &Ipv4Frame, rt: &Route) -> i32 {
    if rt.mode == mode::UNREACHABLE {
        return pass(ctx, program, Reason::PeerUnreachable);
    }
    // SAFETY: headers were bounds checked by the parser and nothing has moved the packet.
    if unsafe { (*frame.ip).ttl } <= 1 {
        return pass(ctx, program, Reason::TtlExceeded);
    }
    if !mtu::fits(ctx, frame, rt.mtu) {
        return icmp::frag_needed(ctx, program, frame, rt.mtu);
    }
    // SAFETY: as above.
    unsafe { hop::decrease_ttl(frame.ip) };
    let encapsulated = match rt.mode {
        mode::VXLAN => encap::vxlan(ctx, frame, rt).map(|()| Reason::EncapVxlan),
        mode::IPIP => encap::ipip(ctx, frame, rt).map(|()| Reason::EncapIpip),
        mode::UDP | mode::GATEWAY => {
            // One copy of the udp encapsulation for both: from_netdev's frame is full.
            let node = maps::node();
            let (sport, reason) = if rt.mode == mode::GATEWAY {
                (node.gateway_port, Reason::EncapGateway)
            } else {
                (node.port, Reason::EncapUdp)
            };
            encap::udp(ctx, frame, rt, sport).map(|()| reason)
        }
        _ => return transmit(ctx, program, rt, Reason::Direct, Reason::DirectNeigh),
    };
    match encapsulated {
        Ok(reason) => transmit(ctx, program, rt, reason, reason),
        Err(reason) => drop(ctx, program, reason),
    }
}

/// Sends the frame out of the underlay to the route's next hop: with the MACs the agent
/// resolved, or through the kernel's neighbour table while it has not.
#[inline(always)]
fn transmit(
    ctx: &TcContext,
    program: Program,
    rt: &Route,
    with_mac: Reason,
    with_neigh: Reason,
) -> i32 {
    let (ret, reason) = if rt.flags & flags::HAS_MAC != 0 {
        let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
            return drop(ctx, program, Reason::Malformed);
        };
        // SAFETY: bounds checked by ptr_at.
        unsafe {
            (*eth).dst = rt.dmac;
            (*eth).src = rt.smac;
        }
        (unsafe { bpf_redirect(rt.ifindex, 0) }, with_mac)
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
        (ret, with_neigh)
    };
    redirected(ctx, program, ret, reason)
}
