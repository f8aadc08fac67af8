//! Encapsulation in Flannel's wire formats: VXLAN, IPIP and udp. In tc the headers are
//! pushed with bpf_skb_adjust_room and its encapsulation flags, so the kernel knows the
//! inner headers and segments GSO packets from pods correctly; in XDP the frame grows at
//! the front (`Ctx::push_outer`). Every field written comes from the route entry,
//! precomputed by the agent, except lengths and the outer checksum.
use aya_ebpf::bindings::{
    BPF_F_ADJ_ROOM_ENCAP_L2_ETH, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L4_UDP,
    BPF_F_ADJ_ROOM_FIXED_GSO,
};
use netdp_common::{
    counters::Reason,
    encap::{
        IPIP_OVERHEAD, IPPROTO_IPIP, IPPROTO_UDP, OUTER_FRAG_OFF, OUTER_TTL, UDP_OVERHEAD,
        VXLAN_FLAGS, VXLAN_OVERHEAD, flow_hash, outer_ip_check, vxlan_source_port,
    },
    route::{Route, flags},
};

use crate::{
    ctx::Ctx,
    maps,
    parse::{ETH_HLEN, ETH_P_IP, EthHdr, IP_HLEN, IPPROTO_TCP, Ipv4Frame, Ipv4Hdr, UdpHdr, ptr_at},
};

#[repr(C)]
struct VxlanHdr {
    flags: [u8; 4],
    vni: [u8; 4],
}

/// Everything in front of the inner IP header of a VXLAN packet.
#[repr(C)]
struct VxlanOuter {
    eth: EthHdr,
    ip: Ipv4Hdr,
    udp: UdpHdr,
    vxlan: VxlanHdr,
    inner: EthHdr,
}

#[repr(C)]
struct UdpOuter {
    eth: EthHdr,
    ip: Ipv4Hdr,
    udp: UdpHdr,
}

#[repr(C)]
struct IpipOuter {
    eth: EthHdr,
    ip: Ipv4Hdr,
}

const _: () = assert!(core::mem::size_of::<VxlanOuter>() == ETH_HLEN + VXLAN_OVERHEAD as usize);
const _: () = assert!(core::mem::size_of::<UdpOuter>() == ETH_HLEN + UDP_OVERHEAD as usize);
const _: () = assert!(core::mem::size_of::<IpipOuter>() == ETH_HLEN + IPIP_OVERHEAD as usize);

/// `BPF_F_ADJ_ROOM_ENCAP_L2(len)`: the length of the inner L2 header we push.
const fn encap_l2(len: u64) -> u64 {
    (len & 0xff) << 56
}

const VXLAN_FLAGS_ADJ: u64 = (BPF_F_ADJ_ROOM_FIXED_GSO
    | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4
    | BPF_F_ADJ_ROOM_ENCAP_L4_UDP
    | BPF_F_ADJ_ROOM_ENCAP_L2_ETH) as u64
    | encap_l2(ETH_HLEN as u64);
const UDP_FLAGS_ADJ: u64 =
    (BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP) as u64;
const IPIP_FLAGS_ADJ: u64 = (BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4) as u64;

/// The inner packet's length, and the outer total length it will have; `TooBig` when the
/// outer length would not fit the IPv4 length field (BIG TCP super-packets).
#[inline(always)]
fn lengths(frame: &Ipv4Frame, overhead: u32) -> Result<u16, Reason> {
    // SAFETY: bounds checked by the parser.
    let inner = u16::from_be(unsafe { (*frame.ip).tot_len }) as u32;
    let outer = inner + overhead;
    if inner == 0 || outer > 0xffff {
        return Err(Reason::TooBig);
    }
    Ok(outer as u16)
}

#[inline(always)]
fn outer_ip(rt: &Route, tot_len: u16, proto: u8) -> Ipv4Hdr {
    Ipv4Hdr {
        version_ihl: 0x45,
        tos: 0,
        tot_len: tot_len.to_be(),
        id: 0,
        frag_off: OUTER_FRAG_OFF.to_be(),
        ttl: OUTER_TTL,
        protocol: proto,
        check: outer_ip_check(rt.ip_sum, tot_len).to_be(),
        saddr: rt.src_ip,
        daddr: rt.node_ip,
    }
}

/// The inner flow's hash: addresses, protocol and (for unfragmented TCP/UDP without IP
/// options) ports.
#[inline(always)]
fn inner_flow_hash(ctx: &impl Ctx, frame: &Ipv4Frame) -> u32 {
    // SAFETY: bounds checked by the parser.
    let ip = unsafe { &*frame.ip };
    let mut ports = 0u32;
    if ip.is_plain()
        && (ip.protocol == IPPROTO_TCP || ip.protocol == IPPROTO_UDP)
        && let Some(p) = ptr_at::<u32>(ctx, ETH_HLEN + IP_HLEN)
    {
        // SAFETY: bounds checked by ptr_at.
        ports = unsafe { *p };
    }
    flow_hash(
        u32::from_ne_bytes(ip.saddr),
        u32::from_ne_bytes(ip.daddr),
        ports,
        ip.protocol,
    )
}

/// Wraps the IPv4 packet in VXLAN to the route's peer. The outer Ethernet MACs are left
/// to the caller.
#[inline(always)]
pub fn vxlan(ctx: &impl Ctx, frame: &Ipv4Frame, rt: &Route) -> Result<(), Reason> {
    let tot_len = lengths(frame, VXLAN_OVERHEAD)?;
    // Through a NAT only the port its mapping has matches; elsewhere the flow's hash
    // spreads flows over the underlay's paths, as Linux's vxlan does.
    let sport = if rt.flags & flags::FIXED_SPORT != 0 {
        maps::node().port
    } else {
        vxlan_source_port(inner_flow_hash(ctx, frame))
    };
    ctx.push_outer(VXLAN_OVERHEAD, VXLAN_FLAGS_ADJ)
        .map_err(|_| Reason::AdjustFailed)?;
    let h = ptr_at::<VxlanOuter>(ctx, 0).ok_or(Reason::AdjustFailed)?;
    let vtep = maps::node().vtep_mac;
    // SAFETY: bounds checked by ptr_at.
    unsafe {
        (*h).ip = outer_ip(rt, tot_len, IPPROTO_UDP);
        (*h).udp = UdpHdr {
            sport: sport.to_be(),
            dport: rt.port.to_be(),
            len: (tot_len - IP_HLEN as u16).to_be(),
            // Zero: no UDP checksum, as Linux's vxlan sends over IPv4 by default.
            check: 0,
        };
        (*h).vxlan = VxlanHdr {
            flags: VXLAN_FLAGS.to_be_bytes(),
            vni: (rt.vni << 8).to_be_bytes(),
        };
        (*h).inner = EthHdr {
            dst: rt.vtep_mac,
            src: vtep,
            proto: ETH_P_IP.to_be(),
        };
    }
    Ok(())
}

/// Wraps the IPv4 packet in a UDP datagram to the route's peer (Flannel's udp backend:
/// no header of its own), from `sport` (the node's tunnel or gateway port) to the route's
/// port (the backend's, but for a peer behind a NAT that maps it to another).
#[inline(always)]
pub fn udp(ctx: &impl Ctx, frame: &Ipv4Frame, rt: &Route, sport: u16) -> Result<(), Reason> {
    let tot_len = lengths(frame, UDP_OVERHEAD)?;
    ctx.push_outer(UDP_OVERHEAD, UDP_FLAGS_ADJ)
        .map_err(|_| Reason::AdjustFailed)?;
    let h = ptr_at::<UdpOuter>(ctx, 0).ok_or(Reason::AdjustFailed)?;
    // SAFETY: bounds checked by ptr_at.
    unsafe {
        (*h).ip = outer_ip(rt, tot_len, IPPROTO_UDP);
        (*h).udp = UdpHdr {
            sport: sport.to_be(),
            dport: rt.port.to_be(),
            len: (tot_len - IP_HLEN as u16).to_be(),
            check: 0,
        };
    }
    Ok(())
}

/// Wraps the IPv4 packet in another IPv4 header (protocol 4) to the route's peer.
#[inline(always)]
pub fn ipip(ctx: &impl Ctx, frame: &Ipv4Frame, rt: &Route) -> Result<(), Reason> {
    let tot_len = lengths(frame, IPIP_OVERHEAD)?;
    ctx.push_outer(IPIP_OVERHEAD, IPIP_FLAGS_ADJ)
        .map_err(|_| Reason::AdjustFailed)?;
    let h = ptr_at::<IpipOuter>(ctx, 0).ok_or(Reason::AdjustFailed)?;
    // SAFETY: bounds checked by ptr_at.
    unsafe {
        (*h).ip = outer_ip(rt, tot_len, IPPROTO_IPIP);
    }
    Ok(())
}
