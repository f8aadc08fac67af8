//! Services for the node's own sockets (cgroup socket programs, as Cilium's socket LB):
//! a connect or send to a service address goes straight to a backend, chosen when the
//! socket connects, so the node's traffic needs no per-packet translation; received
//! datagrams and getpeername show the service again.
//!
//! The programs are attached to a cgroup that may hold other network namespaces' sockets
//! (pods, or other nodes of a testbed): they only ever act on sockets of the node's own
//! namespace, whose cookie the agent writes to LB_CONFIG.
use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval},
    programs::SockAddrContext,
};
use netdp_common::{
    conntrack::CtKey,
    lb::{SockNat, SockNatKey, frontend_flags},
};

use crate::{
    conntrack, lb,
    maps::{LB_CONFIG, SOCK_NAT},
    parse::{IPPROTO_TCP, IPPROTO_UDP},
};

const ECONNREFUSED: i32 = 111;
/// What a cgroup socket program returns to let the call go on.
const PROCEED: i32 = 1;
const REJECT: i32 = 0;

/// Whether the socket belongs to the node's namespace.
#[inline(always)]
fn ours(ctx: &SockAddrContext) -> bool {
    let Some(cfg) = LB_CONFIG.get(0) else {
        return false;
    };
    // SAFETY: plain helper call on our context.
    cfg.netns_cookie != 0 && unsafe { bpf_get_netns_cookie(ctx.as_ptr()) } == cfg.netns_cookie
}

/// connect4 and sendmsg4: a service address becomes one of its backends.
#[inline(always)]
pub fn to_backend(ctx: &SockAddrContext) -> i32 {
    if !ours(ctx) {
        return PROCEED;
    }
    let sa = ctx.sock_addr;
    // SAFETY: the context is valid for the program's run.
    let (ip, port, proto) = unsafe {
        (
            (*sa).user_ip4,
            u16::from_be((*sa).user_port as u16),
            (*sa).protocol as u8,
        )
    };
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return PROCEED;
    }
    // SAFETY: plain helper call on our context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // The node is one client (for affinity); the socket picks the Maglev entry.
    let key = CtKey {
        saddr: [0; 4],
        daddr: ip.to_ne_bytes(),
        sport: (cookie ^ (cookie >> 16) ^ (cookie >> 32)) as u16,
        dport: port,
        proto,
        pad: [0; 3],
    };
    let Some(fe) = lb::frontend(&key) else {
        return PROCEED;
    };
    if fe.count == 0 {
        // No endpoints: refused, as a rejecting service is for pods.
        // SAFETY: plain helper call.
        unsafe { bpf_set_retval(-ECONNREFUSED) };
        return REJECT;
    }
    // internalTrafficPolicy Local: the node's own connections to the cluster IP stay on
    // its endpoints too, refused when it has none (the node's external frontends are
    // not from outside: every backend).
    let local_only =
        fe.flags & frontend_flags::LOCAL_ONLY != 0 && fe.flags & frontend_flags::EXTERNAL == 0;
    if local_only && fe.local_count == 0 {
        // SAFETY: plain helper call.
        unsafe { bpf_set_retval(-ECONNREFUSED) };
        return REJECT;
    }
    let Some(be) = lb::select(&fe, &key, local_only, conntrack::now()) else {
        return PROCEED;
    };
    let _ = SOCK_NAT.insert(
        SockNatKey {
            cookie,
            addr: be.addr,
            port: fe.target_port,
            pad: 0,
        },
        SockNat {
            addr: key.daddr,
            port,
            pad: 0,
        },
        0,
    );
    // SAFETY: as above; these fields are writable for connect4 and sendmsg4.
    unsafe {
        (*sa).user_ip4 = u32::from_ne_bytes(be.addr);
        (*sa).user_port = fe.target_port.to_be() as u32;
    }
    PROCEED
}

/// recvmsg4 and getpeername4: a backend the socket was sent to shows as the service.
#[inline(always)]
pub fn to_service(ctx: &SockAddrContext) -> i32 {
    if !ours(ctx) {
        return PROCEED;
    }
    let sa = ctx.sock_addr;
    // SAFETY: the context is valid for the program's run; plain helper call.
    let key = unsafe {
        SockNatKey {
            cookie: bpf_get_socket_cookie(ctx.as_ptr()),
            addr: (*sa).user_ip4.to_ne_bytes(),
            port: u16::from_be((*sa).user_port as u16),
            pad: 0,
        }
    };
    // SAFETY: copied out at once.
    if let Some(nat) = unsafe { SOCK_NAT.get(key) }.copied() {
        // SAFETY: writable for recvmsg4 and getpeername4.
        unsafe {
            (*sa).user_ip4 = u32::from_ne_bytes(nat.addr);
            (*sa).user_port = nat.port.to_be() as u32;
        }
    }
    PROCEED
}
