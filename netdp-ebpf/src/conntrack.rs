//! Flows as masquerading tracks them: the tuple of a pod's packet (original direction)
//! or of a reply from outside, and how long a flow may sit idle before its port can be
//! given to another.
use aya_ebpf::{helpers::bpf_ktime_get_coarse_ns, programs::TcContext};
use netdp_common::{
    counters::Reason,
    nat::{CtKey, NatEntry, NatKey, flags, timeout},
    node::NodeConfig,
};

use crate::{
    maps::CONNTRACK,
    parse::{
        ETH_HLEN, IP_HLEN, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, Ipv4Frame, Ipv4Hdr, ptr_at,
    },
};

/// Where the L4 header starts: masquerading only handles headers without options.
pub const L4: usize = ETH_HLEN + IP_HLEN;

const TCP_FIN: u8 = 0x01;
const TCP_RST: u8 = 0x04;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO: u8 = 8;

/// Timestamps are refreshed at most this often (ns), so busy flows do not dirty their
/// entries' cache lines on every packet.
pub const REFRESH: u64 = 1_000_000_000;

#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: no arguments, no side effects.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// The first 14 bytes of a TCP header, 8 of UDP or ICMP echo, as far as they exist.
#[repr(C)]
struct L4Words {
    w: [u16; 4],
}

/// A pod's packet to the outside: its flow, and whether it closes a TCP connection.
#[inline(always)]
pub fn pod_flow(ctx: &TcContext, frame: &Ipv4Frame) -> Result<(CtKey, bool), Reason> {
    // SAFETY: bounds checked by the parser.
    let ip = unsafe { &*frame.ip };
    if !ip.is_plain() {
        return Err(Reason::NatUnsupported);
    }
    let l4 = ptr_at::<L4Words>(ctx, L4).ok_or(Reason::NatUnsupported)?;
    // SAFETY: bounds checked by ptr_at.
    let w = unsafe { (*l4).w };
    let mut key = CtKey {
        saddr: ip.saddr,
        daddr: ip.daddr,
        sport: w[0],
        dport: w[1],
        proto: ip.protocol,
        _pad: [0; 3],
    };
    let closing = match ip.protocol {
        IPPROTO_TCP => tcp_closing(ctx)?,
        IPPROTO_UDP => false,
        IPPROTO_ICMP => {
            // Echo requests only: the identifier plays the source port.
            if w[0] != ((ICMP_ECHO as u16) << 8).to_be() {
                return Err(Reason::NatUnsupported);
            }
            key.sport = w[2];
            key.dport = 0;
            false
        }
        _ => return Err(Reason::NatUnsupported),
    };
    Ok((key, closing))
}

/// What a packet from outside to the node is to masquerading.
pub enum Reply {
    /// A reply in a masqueraded flow (and whether it closes a TCP connection).
    Flow(NatKey, bool),
    /// An ICMP error about a masqueraded flow, which it quotes.
    Error(NatKey),
}

/// An ICMP error and the start of the packet it is about.
#[repr(C)]
struct IcmpQuote {
    icmp: [u8; 8],
    ip: Ipv4Hdr,
    l4: [u16; 4],
}

/// Where the quoted packet's header starts in an ICMP error.
pub const QUOTE: usize = L4 + 8;

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETERPROB: u8 = 12;

/// A packet from outside to the node that may belong to a masqueraded flow: the key to
/// look the flow up by. `None` if it cannot belong to one.
#[inline(always)]
pub fn reply_flow(ctx: &TcContext, frame: &Ipv4Frame, node: &NodeConfig) -> Option<Reply> {
    // SAFETY: bounds checked by the parser.
    let ip = unsafe { &*frame.ip };
    if !ip.is_plain() {
        return None;
    }
    let l4 = ptr_at::<L4Words>(ctx, L4)?;
    // SAFETY: bounds checked by ptr_at.
    let w = unsafe { (*l4).w };
    let (remote_port, nat_port) = match ip.protocol {
        IPPROTO_TCP | IPPROTO_UDP => (w[0], w[1]),
        IPPROTO_ICMP if w[0] == ((ICMP_ECHO_REPLY as u16) << 8).to_be() => (0, w[2]),
        IPPROTO_ICMP => return quoted_flow(ctx, ip.daddr, node).map(Reply::Error),
        _ => return None,
    };
    in_range(nat_port, node)?;
    let closing = ip.protocol == IPPROTO_TCP && tcp_closing(ctx).unwrap_or(false);
    Some(Reply::Flow(
        NatKey {
            remote_addr: ip.saddr,
            nat_addr: ip.daddr,
            remote_port,
            nat_port,
            proto: ip.protocol,
            _pad: [0; 3],
        },
        closing,
    ))
}

#[inline(always)]
fn in_range(port_be: u16, node: &NodeConfig) -> Option<()> {
    let port = u16::from_be(port_be);
    (port >= node.nat_port_min && port <= node.nat_port_max).then_some(())
}

/// The masqueraded flow an ICMP error quotes: a packet the node sent (as translated).
#[inline(always)]
fn quoted_flow(ctx: &TcContext, node_addr: [u8; 4], node: &NodeConfig) -> Option<NatKey> {
    let q = ptr_at::<IcmpQuote>(ctx, L4)?;
    // SAFETY: bounds checked by ptr_at.
    let q = unsafe { &*q };
    if !matches!(
        q.icmp[0],
        ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETERPROB
    ) || q.ip.version_ihl != 0x45
        || q.ip.saddr != node_addr
    {
        return None;
    }
    let (remote_port, nat_port) = match q.ip.protocol {
        IPPROTO_TCP | IPPROTO_UDP => (q.l4[1], q.l4[0]),
        IPPROTO_ICMP if q.l4[0] == ((ICMP_ECHO as u16) << 8).to_be() => (0, q.l4[2]),
        _ => return None,
    };
    in_range(nat_port, node)?;
    Some(NatKey {
        remote_addr: q.ip.daddr,
        nat_addr: q.ip.saddr,
        remote_port,
        nat_port,
        proto: q.ip.protocol,
        _pad: [0; 3],
    })
}

#[inline(always)]
fn tcp_closing(ctx: &TcContext) -> Result<bool, Reason> {
    let flags = ptr_at::<[u8; 14]>(ctx, L4).ok_or(Reason::NatUnsupported)?;
    // SAFETY: bounds checked by ptr_at.
    Ok(unsafe { (*flags)[13] } & (TCP_FIN | TCP_RST) != 0)
}

/// Whether the translation `key` -> `nat` has been idle long enough (in both directions)
/// that its port may go to another flow, or its pod side is forgotten already.
#[inline(always)]
pub fn reclaimable(key: &NatKey, nat: &NatEntry, now: u64) -> bool {
    let owner = CtKey {
        saddr: nat.pod_addr,
        daddr: key.remote_addr,
        sport: nat.pod_port,
        dport: key.remote_port,
        proto: key.proto,
        _pad: [0; 3],
    };
    // SAFETY: read only, copied out at once.
    let Some(ct) = (unsafe { CONNTRACK.get(owner) }).copied() else {
        return true;
    };
    if ct.nat_addr != key.nat_addr || ct.nat_port != key.nat_port {
        return true;
    }
    let last = if ct.last_seen > nat.last_seen {
        ct.last_seen
    } else {
        nat.last_seen
    };
    let closing = (ct.flags | nat.flags) & flags::CLOSING != 0;
    let idle = if nat.flags & flags::REPLIED == 0 {
        timeout::UNREPLIED
    } else {
        match key.proto {
            IPPROTO_TCP if closing => timeout::TCP_CLOSING,
            IPPROTO_TCP => timeout::TCP_ESTABLISHED,
            IPPROTO_UDP => timeout::UDP,
            _ => timeout::ICMP,
        }
    };
    now.saturating_sub(last) > idle
}
