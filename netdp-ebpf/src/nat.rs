//! Masquerading (`--ip-masq`): pod flows to the outside leave with the node's address and
//! a port of their own; replies are translated back. Ports are unique per (remote
//! address, remote port, protocol), claimed atomically in the NAT map (BPF_NOEXIST), so
//! two pods never share one, and taken over from flows idle past their timeout when the
//! range runs short.
use aya_ebpf::{
    bindings::{BPF_ANY, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_NOEXIST},
    programs::TcContext,
};
use netdp_common::{
    counters::{Program, Reason},
    encap::flow_hash,
    endpoint::EndpointKey,
    nat::{CtEntry, CtKey, NatEntry, NatKey, PORT_PROBES, flags},
    node::NodeConfig,
};

use crate::{
    conntrack::{self, L4, QUOTE, REFRESH, now},
    counters::{drop, pass},
    endpoint, maps,
    parse::{self, ETH_HLEN, IP_HLEN, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, Ipv4Frame, Parsed},
};

const IP_CHECK: usize = ETH_HLEN + 10;
const IP_SADDR: usize = ETH_HLEN + 12;
const IP_DADDR: usize = ETH_HLEN + 16;
const EEXIST: i32 = 17;

/// Translates a pod's packet to the outside in place. The caller re-parses the frame.
#[inline(always)]
pub fn masquerade(ctx: &TcContext, frame: &Ipv4Frame, node: &NodeConfig) -> Result<(), Reason> {
    let (key, closing) = conntrack::pod_flow(ctx, frame)?;
    let now = now();
    let (nat_addr, nat_port) = match maps::CONNTRACK.get_ptr_mut(key) {
        Some(ct) => {
            // SAFETY: a live map value; concurrent writers only race on timestamps/flags.
            let ct = unsafe { &mut *ct };
            if now.saturating_sub(ct.last_seen) > REFRESH {
                // Once a second per flow: is the port still ours (the NAT entry may have
                // been evicted, or taken over after a long silence)?
                if !owns(&key, ct) {
                    ct.nat_port = allocate(&key, node, now)?;
                    ct.nat_addr = node.node_ip;
                }
                ct.last_seen = now;
            }
            if closing && ct.flags & flags::CLOSING == 0 {
                ct.flags |= flags::CLOSING;
            }
            (ct.nat_addr, ct.nat_port)
        }
        None => {
            let port = allocate(&key, node, now)?;
            let ct = CtEntry {
                nat_addr: node.node_ip,
                nat_port: port,
                flags: if closing { flags::CLOSING } else { 0 },
                last_seen: now,
            };
            maps::CONNTRACK
                .insert(key, ct, BPF_ANY as u64)
                .map_err(|_| Reason::NatNoPort)?;
            (node.node_ip, port)
        }
    };
    // The source port of TCP/UDP, the identifier of ICMP echo.
    let port_at = if key.proto == IPPROTO_ICMP {
        L4 + 4
    } else {
        L4
    };
    rewrite(
        ctx, key.proto, IP_SADDR, key.saddr, nat_addr, port_at, key.sport, nat_port,
    )
}

/// Translates a reply (or an ICMP error about a masqueraded flow) back and delivers it
/// to its pod; `None` if it belongs to no masqueraded flow.
#[inline(always)]
pub fn unmasquerade(ctx: &TcContext, frame: &Ipv4Frame, node: &NodeConfig) -> Option<i32> {
    const PROGRAM: Program = Program::FromNetdev;
    let (pod_addr, translated) = match conntrack::reply_flow(ctx, frame, node)? {
        conntrack::Reply::Flow(key, closing) => {
            let nat = maps::NAT.get_ptr_mut(key)?;
            // SAFETY: a live map value; concurrent writers only race on timestamps/flags.
            let nat = unsafe { &mut *nat };
            let now = now();
            if now.saturating_sub(nat.last_seen) > REFRESH || nat.flags & flags::REPLIED == 0 {
                nat.last_seen = now;
                nat.flags |= flags::REPLIED;
            }
            if closing && nat.flags & flags::CLOSING == 0 {
                nat.flags |= flags::CLOSING;
            }
            let (pod_addr, pod_port) = (nat.pod_addr, nat.pod_port);
            // The destination port of TCP/UDP, the identifier of ICMP echo.
            let port_at = if key.proto == IPPROTO_ICMP {
                L4 + 4
            } else {
                L4 + 2
            };
            let r = rewrite(
                ctx,
                key.proto,
                IP_DADDR,
                key.nat_addr,
                pod_addr,
                port_at,
                key.nat_port,
                pod_port,
            );
            (pod_addr, r)
        }
        conntrack::Reply::Error(key) => {
            // An error is no sign of life: timestamps stay.
            // SAFETY: read only, copied out at once.
            let nat = unsafe { maps::NAT.get(key) }.copied()?;
            (nat.pod_addr, rewrite_error(ctx, &key, &nat))
        }
    };
    if let Err(reason) = translated {
        return Some(drop(ctx, PROGRAM, reason));
    }
    // SAFETY: copied out at once.
    let Some(ep) = (unsafe { maps::ENDPOINTS.get(EndpointKey { addr: pod_addr }) }).copied() else {
        return Some(pass(ctx, PROGRAM, Reason::UnknownDestination));
    };
    Some(match parse::ipv4(ctx) {
        Parsed::Ipv4(frame) => endpoint::deliver(ctx, PROGRAM, &frame, &ep, Reason::Unmasquerade),
        _ => drop(ctx, PROGRAM, Reason::Malformed),
    })
}

/// Points an ICMP error about a masqueraded flow at the pod: the outer destination, and
/// the quoted packet's source address and port (or echo identifier), with the outer,
/// quoted and ICMP checksums kept right. (The quoted L4 checksum is left alone: a quote
/// is cut short and nobody verifies it.)
#[inline(always)]
fn rewrite_error(ctx: &TcContext, key: &NatKey, nat: &NatEntry) -> Result<(), Reason> {
    const ICMP_CHECK: usize = L4 + 2;
    const QUOTE_CHECK: usize = QUOTE + 10;
    const QUOTE_SADDR: usize = QUOTE + 12;
    let failed = |_| Reason::AdjustFailed;
    let (old_a, new_a) = (
        u32::from_ne_bytes(key.nat_addr) as u64,
        u32::from_ne_bytes(nat.pod_addr) as u64,
    );
    let port_at = QUOTE + IP_HLEN + if key.proto == IPPROTO_ICMP { 4 } else { 0 };
    // The outer header: the error goes to the pod.
    ctx.l3_csum_replace(IP_CHECK, old_a, new_a, 4)
        .map_err(failed)?;
    ctx.store(IP_DADDR, &nat.pod_addr, 0).map_err(failed)?;
    // The quote: as the pod sent it. Every change inside the ICMP message is also
    // folded into the ICMP checksum.
    let old_check: u16 = ctx.load(QUOTE_CHECK).map_err(failed)?;
    ctx.l3_csum_replace(QUOTE_CHECK, old_a, new_a, 4)
        .map_err(failed)?;
    let new_check: u16 = ctx.load(QUOTE_CHECK).map_err(failed)?;
    ctx.store(QUOTE_SADDR, &nat.pod_addr, 0).map_err(failed)?;
    ctx.store(port_at, &nat.pod_port, 0).map_err(failed)?;
    ctx.l4_csum_replace(ICMP_CHECK, old_a, new_a, 4)
        .map_err(failed)?;
    ctx.l4_csum_replace(ICMP_CHECK, old_check as u64, new_check as u64, 2)
        .map_err(failed)?;
    ctx.l4_csum_replace(ICMP_CHECK, key.nat_port as u64, nat.pod_port as u64, 2)
        .map_err(failed)?;
    Ok(())
}

/// Whether the NAT entry for `ct`'s port still leads back to the flow `key`; re-creates
/// it if it was evicted and the port is still free.
#[inline(always)]
fn owns(key: &CtKey, ct: &CtEntry) -> bool {
    let nat_key = reply_key(key, ct.nat_addr, ct.nat_port);
    // SAFETY: read only, copied out at once.
    match unsafe { maps::NAT.get(nat_key) }.copied() {
        Some(n) => n.pod_addr == key.saddr && n.pod_port == key.sport,
        None => maps::NAT
            .insert(nat_key, entry_for(key, ct.last_seen), BPF_NOEXIST as u64)
            .is_ok(),
    }
}

#[inline(always)]
fn reply_key(key: &CtKey, nat_addr: [u8; 4], nat_port: u16) -> NatKey {
    NatKey {
        remote_addr: key.daddr,
        nat_addr,
        remote_port: key.dport,
        nat_port,
        proto: key.proto,
        _pad: [0; 3],
    }
}

#[inline(always)]
fn entry_for(key: &CtKey, now: u64) -> NatEntry {
    NatEntry {
        pod_addr: key.saddr,
        pod_port: key.sport,
        flags: 0,
        last_seen: now,
    }
}

/// Claims a port (network order) for a new flow. The first candidate depends only on the
/// flow, so a flow whose entries were evicted gets its old port back.
#[inline(always)]
fn allocate(key: &CtKey, node: &NodeConfig, now: u64) -> Result<u16, Reason> {
    if node.nat_port_min == 0 {
        return Err(Reason::NatNoPort);
    }
    let min = node.nat_port_min as u32;
    let range = (node.nat_port_max as u32).saturating_sub(min) + 1;
    let start = flow_hash(
        u32::from_ne_bytes(key.saddr),
        u32::from_ne_bytes(key.daddr),
        (key.sport as u32) << 16 | key.dport as u32,
        key.proto,
    );
    let value = entry_for(key, now);
    for i in 0..PORT_PROBES {
        let port = (min + start.wrapping_add(i) % range) as u16;
        let nat_key = reply_key(key, node.node_ip, port.to_be());
        match maps::NAT.insert(nat_key, value, BPF_NOEXIST as u64) {
            Ok(()) => return Ok(port.to_be()),
            Err(e) if e == -EEXIST => {
                if let Some(old) = maps::NAT.get_ptr_mut(nat_key) {
                    // SAFETY: a live map value; losing a race here only costs a probe.
                    let old = unsafe { &mut *old };
                    if conntrack::reclaimable(&nat_key, old, now) {
                        *old = value;
                        return Ok(port.to_be());
                    }
                }
            }
            Err(_) => return Err(Reason::NatNoPort),
        }
    }
    Err(Reason::NatNoPort)
}

/// Replaces an address (at `addr_at`) and a port or ICMP identifier (at `port_at`),
/// fixing the IPv4 and L4 checksums with the kernel's helpers, which also handle
/// packets whose L4 checksum is still to be computed by offload (CHECKSUM_PARTIAL).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn rewrite(
    ctx: &TcContext,
    proto: u8,
    addr_at: usize,
    old_addr: [u8; 4],
    new_addr: [u8; 4],
    port_at: usize,
    old_port: u16,
    new_port: u16,
) -> Result<(), Reason> {
    let (old_a, new_a) = (
        u32::from_ne_bytes(old_addr) as u64,
        u32::from_ne_bytes(new_addr) as u64,
    );
    let (check_at, l4_flags) = match proto {
        IPPROTO_TCP => (L4 + 16, 0),
        IPPROTO_UDP => (L4 + 6, BPF_F_MARK_MANGLED_0 as u64),
        _ => (L4 + 2, 0),
    };
    let failed = |_| Reason::AdjustFailed;
    if proto != IPPROTO_ICMP {
        ctx.l4_csum_replace(
            check_at,
            old_a,
            new_a,
            l4_flags | BPF_F_PSEUDO_HDR as u64 | 4,
        )
        .map_err(failed)?;
    }
    ctx.l4_csum_replace(check_at, old_port as u64, new_port as u64, l4_flags | 2)
        .map_err(failed)?;
    ctx.l3_csum_replace(IP_CHECK, old_a, new_a, 4)
        .map_err(failed)?;
    ctx.store(addr_at, &new_addr, 0).map_err(failed)?;
    ctx.store(port_at, &new_port, 0).map_err(failed)?;
    Ok(())
}
