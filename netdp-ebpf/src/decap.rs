//! Decapsulation of tunnel packets addressed to this node: only from known peer nodes,
//! and only for the configured backend, port and VNI. Everything else that looks like a
//! tunnel packet is dropped with a counted reason; what does not look like one is left to
//! the caller, and so is the inner packet (for a pod here, or a reply of a flow this node
//! translated).
use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_DECAP_L3_IPV4, BPF_F_ADJ_ROOM_FIXED_GSO, TC_ACT_SHOT,
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    },
    helpers::bpf_ktime_get_ns,
    programs::TcContext,
};
use netdp_common::{
    counters::{Program, Reason},
    encap::{IPIP_OVERHEAD, IPPROTO_IPIP, UDP_OVERHEAD, VXLAN_FLAGS, VXLAN_OVERHEAD},
    keepalive::{self, NatPeer},
    node::{NodeConfig, decap},
    peer::{Peer, PeerKey},
};

use crate::{
    counters::{count, drop, pass},
    ctx::Ctx,
    maps,
    parse::{
        ETH_HLEN, ETH_P_IP, EthHdr, IP_HLEN, IP_OFFSET, IPPROTO_UDP, Ipv4Frame, Ipv4Hdr, UdpHdr,
        ptr_at,
    },
};

const PROGRAM: Program = Program::FromNetdev;

/// Offset of the outer L4 header (tunnel packets never carry IP options).
const L4: usize = ETH_HLEN + IP_HLEN;

/// Decapsulates `frame` if it is a tunnel packet for this node's backend: `Ok` with the
/// reason to count the inner packet's delivery under and the sending peer (whose subnet
/// the inner source must be in), or the verdict for a packet it refused. `None` if it is
/// no tunnel packet at all.
#[inline(always)]
pub fn receive(
    ctx: &TcContext,
    frame: &Ipv4Frame,
    node: &NodeConfig,
) -> Option<Result<(Reason, Peer), i32>> {
    let (overhead, reason) = tunnel(ctx, frame, node)?;
    // SAFETY: bounds checked by the parser.
    let ip = unsafe { &*frame.ip };
    Some(strip(ctx, ip, node, overhead as usize, reason))
}

/// Whether `frame` (addressed to this node) is a tunnel packet of this node's backend:
/// its encapsulation overhead, and the reason its inner packet's delivery counts as.
#[inline(always)]
pub fn tunnel(ctx: &impl Ctx, frame: &Ipv4Frame, node: &NodeConfig) -> Option<(u32, Reason)> {
    // SAFETY: bounds checked by the parser.
    let ip = unsafe { &*frame.ip };
    // Another cluster's gateway: on the gateway port, whatever this cluster's backend.
    if node.gateway_port != 0
        && ip.protocol == IPPROTO_UDP
        && ip.version_ihl == 0x45
        && u16::from_be(ip.frag_off) & IP_OFFSET == 0
        && let Some(udp) = ptr_at::<UdpHdr>(ctx, L4)
        // SAFETY: bounds checked by ptr_at.
        && u16::from_be(unsafe { (*udp).dport }) == node.gateway_port
    {
        return Some((UDP_OVERHEAD, Reason::DecapGateway));
    }
    match node.decap {
        decap::VXLAN | decap::UDP => {
            if ip.protocol != IPPROTO_UDP || ip.version_ihl != 0x45 {
                return None;
            }
            if u16::from_be(ip.frag_off) & IP_OFFSET != 0 {
                // A later fragment has no UDP header to look at.
                return None;
            }
            let udp = ptr_at::<UdpHdr>(ctx, L4)?;
            // SAFETY: bounds checked by ptr_at.
            if u16::from_be(unsafe { (*udp).dport }) != node.port {
                return None;
            }
            if node.decap == decap::VXLAN {
                Some((VXLAN_OVERHEAD, Reason::DecapVxlan))
            } else {
                Some((UDP_OVERHEAD, Reason::DecapUdp))
            }
        }
        decap::IPIP => {
            if ip.protocol != IPPROTO_IPIP || ip.version_ihl != 0x45 {
                return None;
            }
            Some((IPIP_OVERHEAD, Reason::DecapIpip))
        }
        _ => None,
    }
}

#[inline(always)]
fn strip(
    ctx: &TcContext,
    outer: &Ipv4Hdr,
    node: &NodeConfig,
    overhead: usize,
    ok: Reason,
) -> Result<(Reason, Peer), i32> {
    if !outer.is_plain() {
        return Err(pass(ctx, PROGRAM, Reason::DecapFragment));
    }

    // SAFETY: copied out at once.
    let Some(peer) = unsafe { maps::PEERS.get(PeerKey { addr: outer.saddr }) }.copied() else {
        return Err(drop(ctx, PROGRAM, Reason::DecapUnknownPeer));
    };
    if let Some(port) = keepalive(ctx, outer) {
        learn(outer, port);
        count(ctx, PROGRAM, Reason::NatKeepalive);
        return Err(TC_ACT_SHOT);
    }
    if ok == Reason::DecapVxlan {
        check_vxlan(ctx, node).map_err(|reason| drop(ctx, PROGRAM, reason))?;
    }
    // The outer datagram must hold the tunnel headers and an inner IPv4 header (what lies
    // past its length is padding, not a packet; length 0: a GRO super-packet), and the
    // inner IPv4 header must be in the linear part to be read: GRO'd packets from a NIC
    // may have only the outer headers there.
    let tot_len = u16::from_be(outer.tot_len) as usize;
    let inner_at = ETH_HLEN + overhead;
    if (tot_len != 0 && tot_len < overhead + IP_HLEN)
        || (ptr_at::<Ipv4Hdr>(ctx, inner_at).is_none()
            && (ctx.pull_data((inner_at + IP_HLEN) as u32).is_err()
                || ptr_at::<Ipv4Hdr>(ctx, inner_at).is_none()))
    {
        return Err(drop(ctx, PROGRAM, Reason::Malformed));
    }
    let Some(inner) = ptr_at::<Ipv4Hdr>(ctx, inner_at) else {
        return Err(drop(ctx, PROGRAM, Reason::Malformed));
    };
    // SAFETY: bounds checked by ptr_at.
    if unsafe { (*inner).version_ihl } >> 4 != 4 {
        return Err(drop(ctx, PROGRAM, Reason::DecapBadHeader));
    }
    // Fixed GSO: the segment size of an aggregated packet is the inner payload's, which
    // stripping the outer headers does not change.
    if ctx
        .adjust_room(
            -(overhead as i32),
            BPF_ADJ_ROOM_MAC,
            (BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_DECAP_L3_IPV4) as u64,
        )
        .is_err()
    {
        return Err(drop(ctx, PROGRAM, Reason::AdjustFailed));
    }
    Ok((ok, peer))
}

/// A peer's NAT keepalive (`keepalive::MAGIC` as the whole tunnel payload): the port it
/// came from (`NO_PORT` for ipip). One compare of the length for every other packet.
#[inline(always)]
fn keepalive(ctx: &TcContext, outer: &Ipv4Hdr) -> Option<u16> {
    let ipip = outer.protocol == IPPROTO_IPIP;
    let at = if ipip { L4 } else { L4 + 8 };
    if u16::from_be(outer.tot_len) as usize != at - ETH_HLEN + keepalive::LEN {
        return None;
    }
    let magic = ptr_at::<[u8; keepalive::LEN]>(ctx, at)?;
    // SAFETY: bounds checked by ptr_at.
    if unsafe { *magic } != keepalive::MAGIC {
        return None;
    }
    if ipip {
        return Some(keepalive::NO_PORT);
    }
    let udp = ptr_at::<UdpHdr>(ctx, L4)?;
    // SAFETY: bounds checked by ptr_at.
    Some(u16::from_be(unsafe { (*udp).sport }))
}

/// Remembers where a peer's keepalives come from, for the agent to send there. A BPF
/// call of its own: its record stays off `from_netdev`'s full stack frame.
#[inline(never)]
fn learn(outer: &Ipv4Hdr, port: u16) {
    let seen = NatPeer {
        port,
        _pad: [0; 2],
        addr: outer.saddr,
        // SAFETY: a helper without arguments.
        seen_ns: unsafe { bpf_ktime_get_ns() },
    };
    // A full map evicts the least recently seen; the next keepalive comes back.
    let _ = maps::NAT_PEERS.insert(PeerKey { addr: outer.saddr }, seen, 0);
}

#[repr(C)]
struct VxlanTail {
    flags: [u8; 4],
    vni: [u8; 4],
    inner: EthHdr,
}

/// VXLAN header: I flag set, our VNI; inner frame: IPv4 to our VTEP MAC.
#[inline(always)]
fn check_vxlan(ctx: &TcContext, node: &NodeConfig) -> Result<(), Reason> {
    let v = ptr_at::<VxlanTail>(ctx, L4 + 8).ok_or(Reason::Malformed)?;
    // SAFETY: bounds checked by ptr_at.
    let v = unsafe { &*v };
    let flags = u32::from_be_bytes(v.flags);
    let vni = u32::from_be_bytes(v.vni) >> 8;
    if flags & VXLAN_FLAGS == 0 || vni != node.vni || v.inner.proto != ETH_P_IP.to_be() {
        return Err(Reason::DecapBadHeader);
    }
    if v.inner.dst != node.vtep_mac {
        return Err(Reason::DecapWrongVtep);
    }
    Ok(())
}
