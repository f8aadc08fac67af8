//! Source verification: a packet is accepted only from where its source address can
//! legitimately be. A pod sends with its own address and MAC; the underlay delivers plain
//! packets to pods only from the pods of peers routed directly to this node (and from
//! `--routed-networks`); a tunnel carries only its sending peer's pods. Without these
//! checks a pod or an outside host could spoof any address: reach pods past the tunnel
//! checks, and poison conntrack and session affinity.
use aya_ebpf::btf_maps::lpm_trie::Key;
use netdp_common::{
    counters::{Program, Reason},
    endpoint::EndpointKey,
    node,
    peer::{Peer, flags as peer_flags},
    route::{flags, mode},
};

use crate::{counters::drop, ctx::Ctx, maps, parse::Ipv4Frame};

/// A pod's packet (on its host-side veth, `from_pod`): the source address must be an
/// endpoint of this node attached to this very veth, and the source MAC that endpoint's.
/// One ENDPOINTS lookup.
#[inline(always)]
pub fn pod<C: Ctx>(ctx: &C, frame: &Ipv4Frame) -> Result<(), i32> {
    // SAFETY: headers bounds checked by the parser; our own skb.
    let ((saddr, smac), ifindex) = (
        unsafe { ((*frame.ip).saddr, (*frame.eth).src) },
        ctx.ifindex(),
    );
    // SAFETY: the value is only read.
    match unsafe { maps::ENDPOINTS.get(EndpointKey { addr: saddr }) } {
        Some(ep) if ep.ifindex == ifindex && ep.mac == smac => Ok(()),
        _ => Err(drop(ctx, Program::FromPod, Reason::SpoofedSource)),
    }
}

/// A plain (not encapsulated) packet from the underlay, before anything is done with it:
/// a source in the cluster Network must be a peer's pod, sent by the next hop this node
/// would send that pod's packets to (a reverse-path check at L2: the peer's MAC, or the
/// router's). Only the node itself (`to_node`) may get such packets from a tunnelling peer
/// (its pods' plain traffic to a node address); anything else from a peer's pod comes
/// plain only from a peer routed directly. Sources outside the cluster are checked where
/// they reach a pod untranslated ([`outside_to_pod`]).
#[inline(always)]
pub fn underlay<C: Ctx>(
    ctx: &C,
    program: Program,
    frame: &Ipv4Frame,
    to_node: bool,
) -> Result<(), i32> {
    // SAFETY: headers bounds checked by the parser.
    let (saddr, smac) = unsafe { ((*frame.ip).saddr, (*frame.eth).src) };
    if !in_cluster(saddr) {
        return Ok(());
    }
    if let Some(rt) = maps::ROUTES.get(&Key::new(32, saddr)) {
        let from_next_hop = rt.flags & flags::HAS_MAC == 0 || rt.dmac == smac;
        if from_next_hop && (to_node || rt.mode == mode::DIRECT) {
            return Ok(());
        }
    }
    Err(drop(ctx, program, Reason::UnderlayForeignSource))
}

/// A plain packet from the underlay that reaches a pod here untranslated: from outside the
/// cluster only out of a network `--routed-networks` lets reach pods (a cluster source
/// passed [`underlay`] already).
#[inline(always)]
pub fn outside_to_pod<C: Ctx>(ctx: &C, program: Program, frame: &Ipv4Frame) -> Result<(), i32> {
    // SAFETY: the header was bounds checked by the parser.
    let saddr = unsafe { (*frame.ip).saddr };
    if in_cluster(saddr) || maps::ROUTED_NETWORKS.get(&Key::new(32, saddr)).is_some() {
        return Ok(());
    }
    Err(drop(ctx, program, Reason::UnderlayForeignSource))
}

/// A decapsulated packet: its inner source must lie in the subnet of the peer that sent
/// the tunnel packet.
#[inline(always)]
pub fn decapsulated<C: Ctx>(ctx: &C, frame: &Ipv4Frame, peer: &Peer) -> Result<(), i32> {
    // SAFETY: the header was bounds checked by the parser.
    let saddr = u32::from_be_bytes(unsafe { (*frame.ip).saddr });
    let len = peer.prefix_len.min(32);
    let mask = (u64::from(u32::MAX) << (32 - len)) as u32;
    if saddr & mask == u32::from_be_bytes(peer.subnet) & mask {
        Ok(())
    } else if peer.flags & peer_flags::GATEWAY != 0
        // SAFETY: the header was bounds checked by the parser.
        && relayed(unsafe { (*frame.ip).saddr })
    {
        // This cluster's gateway passing on another cluster's packet.
        Ok(())
    } else {
        Err(drop(ctx, Program::FromNetdev, Reason::DecapSpoofedSource))
    }
}

/// Whether the frame's source is in the deny list (`--deny-sources`).
#[inline(always)]
pub fn denied(frame: &Ipv4Frame) -> bool {
    // SAFETY: the header was bounds checked by the parser.
    let saddr = unsafe { (*frame.ip).saddr };
    maps::DENIED_SOURCES.get(&Key::new(32, saddr)).is_some()
}

/// Whether this node verifies sources (a load-time constant: with
/// `--source-verification=false` the checks are pruned). Callers test it before calling
/// the checks.
#[inline(always)]
pub fn verifying() -> bool {
    maps::node().flags & node::flags::TRUST_SOURCES == 0
}

/// Whether `addr` is in this cluster's Network: where this cluster's pods (and none of its
/// service addresses) are.
#[inline(always)]
pub fn in_network(addr: [u8; 4]) -> bool {
    let node = maps::node();
    u32::from_ne_bytes(addr) & u32::from_ne_bytes(node.cluster_mask)
        == u32::from_ne_bytes(node.cluster)
}

/// Whether a gateway may have relayed a packet from `saddr`: another cluster's pod. A BPF
/// call of its own, off `from_netdev`'s full stack frame.
#[inline(never)]
fn relayed(saddr: [u8; 4]) -> bool {
    from_other_cluster(saddr)
}

/// Whether `addr` is a pod address of another cluster of the mesh.
#[inline(always)]
pub fn from_other_cluster(addr: [u8; 4]) -> bool {
    maps::node().flags & node::flags::MESH != 0
        && maps::CLUSTER_NETWORKS.get(&Key::new(32, addr)).is_some()
}

/// Whether `addr` is a pod address of the cluster or of another cluster of its mesh:
/// sources there are judged as pods' (a lease routes them, a tunnel vouches for them),
/// never as outside hosts'. One LPM lookup, only on a node of a mesh.
#[inline(always)]
pub fn in_cluster(addr: [u8; 4]) -> bool {
    in_network(addr)
        || (maps::node().flags & node::flags::MESH != 0
            && maps::CLUSTER_NETWORKS.get(&Key::new(32, addr)).is_some())
}
