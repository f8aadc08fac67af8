//! Traffic leaving the cluster: pod traffic to outside the cluster Network, masqueraded to
//! the node's address with `--ip-masq`, and service replies to clients outside. Both go out
//! through the kernel's routing and neighbour tables (bpf_redirect_neigh does the FIB
//! lookup); nodes need no IP forwarding for it.
use aya_ebpf::{helpers::bpf_redirect_neigh, programs::TcContext};
use netdp_common::{
    counters::{Program, Reason},
    node::flags,
};

use crate::{
    conntrack::{self, CtState},
    counters::{drop, pass, redirected},
    fragment, hop, maps,
    nat::{self, Outcome},
    parse::{self, Ipv4Frame, Parsed, Transport},
    source,
};

const PROGRAM: Program = Program::FromPod;

/// A pod's packet for an address that is no pod of the cluster. `t` is its transport
/// header; the translation stage has looked its flow up already (but for ICMP echo).
#[inline(always)]
pub fn outside(ctx: &TcContext, frame: &Ipv4Frame, t: &Transport) -> i32 {
    let node = maps::node();
    // SAFETY: bounds checked by the parser.
    let (daddr, ttl) = unsafe { ((*frame.ip).daddr, (*frame.ip).ttl) };
    if node.underlay_ifindex == 0 || source::in_cluster(daddr) {
        // A cluster address nobody leases (or no egress configured): the kernel's call.
        return pass(ctx, PROGRAM, Reason::UnknownDestination);
    }
    if daddr == node.node_ip {
        return pass(ctx, PROGRAM, Reason::ToHost);
    }
    if ttl <= 1 {
        return pass(ctx, PROGRAM, Reason::TtlExceeded);
    }
    if node.flags & flags::MASQUERADE == 0 {
        return send(ctx, PROGRAM, frame, node.underlay_ifindex, Reason::Egress);
    }
    let masqueraded = match *t {
        Transport::Ports(l4) => {
            let key = conntrack::key(frame, &l4);
            let done = nat::masquerade(ctx, PROGRAM, &key, &l4, &node);
            if done.is_ok() && l4.first_fragment {
                fragment::remember(ctx, &key);
            }
            done
        }
        // Echo requests only: the pod's identifier is translated like a source port.
        Transport::Echo(l4) if l4.sport != 0 => {
            let key = conntrack::key(frame, &l4);
            match conntrack::lookup(ctx, &key, &l4) {
                CtState::Invalid => Err(Reason::OutOfWindow),
                CtState::New => nat::masquerade(ctx, PROGRAM, &key, &l4, &node),
                CtState::Established(e) | CtState::Reply(e) | CtState::Related(e) => {
                    match nat::follow(ctx, PROGRAM, &key, &l4, e) {
                        Outcome::Done(verdict) => return verdict,
                        _ => Ok(()),
                    }
                }
            }
        }
        _ => Err(Reason::NatUnsupported),
    };
    if let Err(reason) = masqueraded {
        return drop(ctx, PROGRAM, reason);
    }
    // The checksum helpers moved the packet data: parse again.
    match parse::ipv4(ctx) {
        Parsed::Ipv4(frame) => send(
            ctx,
            PROGRAM,
            &frame,
            node.underlay_ifindex,
            Reason::Masquerade,
        ),
        _ => drop(ctx, PROGRAM, Reason::Malformed),
    }
}

/// Sends the frame out of `ifindex` to wherever the kernel routes its destination,
/// counting it under `reason`.
#[inline(always)]
pub fn send(
    ctx: &TcContext,
    program: Program,
    frame: &Ipv4Frame,
    ifindex: u32,
    reason: Reason,
) -> i32 {
    if let Err(verdict) = hop::hop(ctx, program, frame) {
        return verdict;
    }
    // SAFETY: no neighbour parameters: the kernel routes by the packet's destination.
    let ret = unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) };
    redirected(ctx, program, ret, reason)
}
