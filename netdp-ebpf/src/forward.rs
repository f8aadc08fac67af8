//! The forwarding decision of each program. Every packet first meets translation: a packet
//! of a tracked flow (service or masquerade, either direction) or an ICMP error about one
//! is rewritten as conntrack says, and the first packet to a service frontend starts a
//! flow. Then it goes to a pod here, to the node leasing its destination's subnet, out of
//! the cluster, or to the kernel.
use aya_ebpf::{btf_maps::lpm_trie::Key, programs::TcContext};
use netdp_common::{
    Ipv4,
    conntrack::flags,
    counters::{Program, Reason},
    endpoint::EndpointKey,
    node::flags as node_flags,
    peer::Peer,
};

use crate::{
    conntrack::{self, CtState},
    counters::{drop, pass},
    decap, dsr, egress, endpoint, fragment, icmp, lb, maps,
    nat::{self, Outcome, Translated},
    parse::{self, Ipv4Frame, Parsed, Transport},
    route, source,
};

/// The frame's Ethernet and IPv4 headers, pulled into the linear data first if need be.
#[inline(always)]
fn parse(ctx: &TcContext, program: Program) -> Result<Ipv4Frame, i32> {
    parse::pull_headers(ctx);
    match parse::ipv4(ctx) {
        Parsed::Ipv4(frame) => Ok(frame),
        Parsed::NotIpv4 => Err(pass(ctx, program, Reason::NonIpv4)),
        Parsed::Malformed => Err(drop(ctx, program, Reason::Malformed)),
    }
}

/// Where a packet meets translation, which decides what it is looked up for.
#[derive(Clone, Copy)]
enum Stage {
    /// Sent by a pod or the node: tracked flows, and new flows to service frontends.
    Sent,
    /// Received from the underlay: the same, and ICMP echo replies when addressed to the
    /// node (masqueraded pings; other pings cost no lookup).
    Received { to_node: bool },
    /// Out of a tunnel: tracked flows only (their replies); delivery counts as `Reason`.
    Decapsulated(Reason),
    /// Out of a tunnel, sent by a node port's node with direct server return to the
    /// backend (address, port) its option named: tracked flows, and new flows to that
    /// backend. Delivery counts as `Reason`.
    Dispatched(Reason, (Ipv4, u16)),
}

/// The translation stage: packets of tracked flows (either kind, either direction) and
/// ICMP errors about them follow their flow; first packets to a frontend start one.
#[inline(always)]
fn translate(
    ctx: &TcContext,
    program: Program,
    frame: &Ipv4Frame,
    t: &Transport,
    stage: Stage,
) -> Outcome {
    match *t {
        Transport::Ports(l4) => {
            let key = conntrack::key(frame, &l4);
            let outcome = match conntrack::lookup(ctx, &key, &l4) {
                CtState::Invalid => Outcome::Done(drop(ctx, program, Reason::OutOfWindow)),
                CtState::New => match stage {
                    Stage::Decapsulated(_) => Outcome::Untouched,
                    Stage::Dispatched(_, backend) => dsr::open(ctx, program, &l4, &key, backend),
                    _ => lb::new_flow(ctx, program, &l4, &key),
                },
                CtState::Established(e) | CtState::Reply(e) | CtState::Related(e) => {
                    nat::follow(ctx, program, &key, &l4, e)
                }
            };
            if l4.first_fragment && matches!(outcome, Outcome::Translated(t) if !t.is_dsr()) {
                fragment::remember(ctx, &key);
            }
            outcome
        }
        Transport::Fragment(l4) => {
            fragment::outcome_of(ctx, program, fragment::translate(ctx, frame, l4.proto))
        }
        Transport::Echo(l4) if matches!(stage, Stage::Received { to_node: true }) => {
            let key = conntrack::key(frame, &l4);
            match conntrack::lookup(ctx, &key, &l4) {
                CtState::Invalid => Outcome::Done(drop(ctx, program, Reason::OutOfWindow)),
                CtState::New => Outcome::Untouched,
                CtState::Established(e) | CtState::Reply(e) | CtState::Related(e) => {
                    nat::follow(ctx, program, &key, &l4, e)
                }
            }
        }
        Transport::IcmpError(l4) => match icmp::translate_error(ctx, &l4) {
            Some(t) => Outcome::Translated(t),
            None => Outcome::Untouched,
        },
        _ => Outcome::Untouched,
    }
}

/// Runs the translation stage; `Ok` with the frame if nothing applied, `Err` with the
/// verdict if the packet was translated and sent on, or handled. Only an ICMP error that
/// was not translated may have met helpers that invalidate packet pointers (it is parsed
/// again); for anything else an untouched packet only cost map lookups, and its frame
/// stands.
#[inline(always)]
fn translated_or(
    ctx: &TcContext,
    program: Program,
    frame: &Ipv4Frame,
    t: &Transport,
    stage: Stage,
) -> Result<Ipv4Frame, i32> {
    let delivered = match stage {
        Stage::Decapsulated(reason) | Stage::Dispatched(reason, _) => reason,
        _ => Reason::LocalDelivery,
    };
    match translate(ctx, program, frame, t, stage) {
        Outcome::Untouched => match t {
            Transport::IcmpError(_) => parse(ctx, program),
            _ => Ok(*frame),
        },
        Outcome::Translated(tr) => Err(translated(ctx, program, &tr, delivered)),
        Outcome::Done(verdict) => Err(verdict),
    }
}

/// What a pod sends: to a pod here, to the node leasing the destination's subnet, or out
/// of the cluster.
#[inline(always)]
pub fn from_pod(ctx: &TcContext) -> i32 {
    sent(ctx, Program::FromPod)
}

/// What the node itself sends into the pod network (routed into the gateway device): to
/// services, to pods here, to pods on other nodes.
#[inline(always)]
pub fn from_host(ctx: &TcContext) -> i32 {
    sent(ctx, Program::FromHost)
}

/// What pods and the node send: a pod's only with its own source address and MAC, then
/// translated, then to a pod here or the node leasing the destination's subnet; anything
/// else leaves the cluster (pods) or goes to the kernel (the node, whose own routes
/// brought it here).
#[inline(always)]
fn sent(ctx: &TcContext, program: Program) -> i32 {
    let frame = match parse(ctx, program) {
        Ok(f) => f,
        Err(verdict) => return verdict,
    };
    if program == Program::FromPod
        && source::verifying()
        && let Err(verdict) = source::pod(ctx, &frame)
    {
        return verdict;
    }
    let t = parse::transport(ctx, &frame);
    let frame = match translated_or(ctx, program, &frame, &t, Stage::Sent) {
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
        return route::forward(ctx, program, &frame, rt);
    }
    if program == Program::FromPod {
        egress::outside(ctx, &frame, &t)
    } else {
        pass(ctx, program, Reason::UnknownDestination)
    }
}

/// What the node receives: tunnel packets, replies of flows it translated and new flows to
/// its node ports and external IPs, and packets routed straight to its pods. The node's
/// interface never forwards transit traffic for someone else's subnet.
#[inline(always)]
pub fn from_netdev(ctx: &TcContext) -> i32 {
    let program = Program::FromNetdev;
    let frame = match parse(ctx, program) {
        Ok(f) => f,
        Err(verdict) => return verdict,
    };
    let node = maps::node();
    if node.flags & node_flags::DENY_SOURCES != 0 && source::denied(&frame) {
        return drop(ctx, program, Reason::DeniedSource);
    }
    // SAFETY: the header was bounds checked by the parser.
    let daddr = unsafe { (*frame.ip).daddr };
    let to_node = daddr == node.node_ip;
    if to_node {
        match decap::receive(ctx, &frame, &node) {
            Some(Ok((reason, peer))) => return inner(ctx, reason, &peer),
            Some(Err(verdict)) => return verdict,
            None => {}
        }
    }
    if source::verifying()
        && let Err(verdict) = source::underlay(ctx, program, &frame, to_node)
    {
        return verdict;
    }
    let t = parse::transport(ctx, &frame);
    let frame = match translated_or(ctx, program, &frame, &t, Stage::Received { to_node }) {
        Ok(f) => f,
        Err(verdict) => return verdict,
    };
    if to_node {
        return pass(ctx, program, Reason::ToHost);
    }
    // SAFETY: as above.
    if let Some(ep) = unsafe { maps::ENDPOINTS.get(EndpointKey { addr: daddr }) } {
        if source::verifying()
            && let Err(verdict) = source::outside_to_pod(ctx, program, &frame)
        {
            return verdict;
        }
        return endpoint::deliver(ctx, program, &frame, ep, Reason::LocalDelivery);
    }
    pass(ctx, program, Reason::UnknownDestination)
}

/// A decapsulated packet from `peer`, with a source in its subnet: for a pod here, or a
/// reply of a flow this node translated (a service's remote backend answering). Delivery
/// is counted under the tunnel's `reason`.
#[inline(always)]
fn inner(ctx: &TcContext, reason: Reason, peer: &Peer) -> i32 {
    let program = Program::FromNetdev;
    let frame = match parse(ctx, program) {
        Ok(f) => f,
        Err(verdict) => return verdict,
    };
    // A node port's flow sent here with direct server return: its source is the client's,
    // outside the cluster, and the peer vouches for it. A pod's packet (a cluster source)
    // never carries the option honoured: a pod could otherwise pick any pod and port here
    // past the address it sent to.
    // SAFETY: the header was bounds checked by the parser.
    let from_outside = !source::in_cluster(unsafe { (*frame.ip).saddr });
    let taken = if from_outside {
        dsr::take(ctx, &frame)
    } else {
        Ok(None)
    };
    let (frame, stage) = match taken {
        Ok(None) => (frame, Stage::Decapsulated(reason)),
        Ok(Some(backend)) => match parse(ctx, program) {
            Ok(f) => (f, Stage::Dispatched(reason, backend)),
            Err(verdict) => return verdict,
        },
        Err(()) => return drop(ctx, program, Reason::AdjustFailed),
    };
    if matches!(stage, Stage::Decapsulated(_))
        && source::verifying()
        && let Err(verdict) = source::decapsulated(ctx, &frame, peer)
    {
        return verdict;
    }
    let t = parse::transport(ctx, &frame);
    let frame = match translated_or(ctx, program, &frame, &t, stage) {
        Ok(f) => f,
        Err(verdict) => return verdict,
    };
    // SAFETY: the header was bounds checked by the parser.
    let daddr = unsafe { (*frame.ip).daddr };
    // SAFETY: copied out before anything could reuse the slot.
    match unsafe { maps::ENDPOINTS.get(EndpointKey { addr: daddr }) } {
        Some(ep) => endpoint::deliver(ctx, program, &frame, ep, reason),
        None => transit(ctx),
    }
}

/// A decapsulated packet for no pod here: on a gateway, another cluster's packet for a
/// pod of this one, or one of this cluster's for another cluster, goes on by its route
/// (the gateway tunnel, or this cluster's backend to the pod's node). Nothing else is
/// relayed: a gateway is no open forwarder between this cluster's nodes.
#[inline(always)]
fn transit(ctx: &TcContext) -> i32 {
    let program = Program::FromNetdev;
    let frame = &match parse(ctx, program) {
        Ok(f) => f,
        Err(verdict) => return verdict,
    };
    // SAFETY: the header was bounds checked by the parser.
    let (saddr, daddr) = unsafe { ((*frame.ip).saddr, (*frame.ip).daddr) };
    let across = (source::from_other_cluster(saddr) && source::in_network(daddr))
        || (source::in_network(saddr) && source::from_other_cluster(daddr));
    if maps::node().flags & node_flags::GATEWAY == 0 || !across {
        return drop(ctx, program, Reason::DecapNoEndpoint);
    }
    match maps::ROUTES.get(&Key::new(32, daddr)) {
        Some(rt) => route::forward(ctx, program, frame, rt),
        None => drop(ctx, program, Reason::DecapNoEndpoint),
    }
}

/// Forwards a translated packet as its flow says: masqueraded packets out of the underlay
/// and their replies to the pod; service packets to a pod here, to the node of a remote
/// pod (also from the underlay: node port traffic), or to a client outside the cluster.
/// `delivered` is what local delivery counts as (after decapsulation: the tunnel's reason).
#[inline(always)]
fn translated(ctx: &TcContext, program: Program, t: &Translated, delivered: Reason) -> i32 {
    let frame = match parse(ctx, program) {
        Ok(f) => f,
        Err(_) => return drop(ctx, program, Reason::Malformed),
    };
    if t.is_dsr() {
        return dsr::dispatch(ctx, program, &frame, t);
    }
    let reply = t.flags & flags::REPLY != 0;
    if t.flags & flags::MASQ != 0 && !reply {
        return egress::send(
            ctx,
            program,
            &frame,
            maps::node().underlay_ifindex,
            Reason::Masquerade,
        );
    }
    let delivered = if t.flags & flags::MASQ != 0 {
        Reason::Unmasquerade
    } else {
        delivered
    };
    // SAFETY: the header was bounds checked by the parser.
    let daddr = unsafe { (*frame.ip).daddr };
    // SAFETY: as above.
    if let Some(ep) = unsafe { maps::ENDPOINTS.get(EndpointKey { addr: daddr }) } {
        return endpoint::deliver(ctx, program, &frame, ep, delivered);
    }
    if t.flags & flags::MASQ != 0 {
        return pass(ctx, program, Reason::UnknownDestination);
    }
    if let Some(rt) = maps::ROUTES.get(&Key::new(32, daddr)) {
        return route::forward(ctx, program, &frame, rt);
    }
    if reply && t.ifindex != 0 {
        return egress::send(ctx, program, &frame, t.ifindex, Reason::ServiceReply);
    }
    pass(ctx, program, Reason::ServiceToHost)
}
