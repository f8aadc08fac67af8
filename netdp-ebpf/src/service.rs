//! The service path, ahead of pod forwarding: packets of flows already translated follow
//! their conntrack entry; the first packet of a flow to a frontend picks a backend and
//! creates the flow's entries; ICMP errors about translated flows are translated back.
use aya_ebpf::{
    bindings::TC_ACT_REDIRECT, helpers::bpf_get_prandom_u32, helpers::bpf_redirect_neigh,
    programs::TcContext,
};
use netdp_common::{
    conntrack::{CtEntry, CtKey, flags, state},
    counters::{Program, Reason},
    lb::{Frontend, backend_flags, frontend_flags},
};

use crate::{
    conntrack,
    counters::{count, drop, pass},
    csum, icmp, lb,
    maps::{CONNTRACK, LB_CONFIG},
    nat,
    parse::{IPPROTO_TCP, Ipv4Frame, L4, Transport},
};

pub enum Outcome {
    /// Not service traffic: forward it as usual.
    Untouched,
    /// Translated: forward it by its new destination. `out_ifindex` is where replies to
    /// clients outside the cluster leave (0: nowhere but pods).
    Translated { out_ifindex: u32 },
    /// Handled; the verdict.
    Done(i32),
}

const EEXIST: i32 = -17;
/// Source ports tried when the client's own one is taken towards the backend.
const SNAT_TRIES: u32 = 6;

#[inline(always)]
pub fn handle(ctx: &TcContext, program: Program, frame: &Ipv4Frame) -> Outcome {
    let l4 = match crate::parse::transport(ctx, frame) {
        Transport::Ports(l4) => l4,
        Transport::IcmpError(l4) => {
            return match icmp::translate_error(ctx, &l4) {
                Some(out_ifindex) => Outcome::Translated { out_ifindex },
                None => Outcome::Untouched,
            };
        }
        Transport::Other => return Outcome::Untouched,
    };
    // SAFETY: the IP header was bounds checked by the parser.
    let key = unsafe {
        CtKey {
            saddr: (*frame.ip).saddr,
            daddr: (*frame.ip).daddr,
            sport: u16::from_be(l4.sport),
            dport: u16::from_be(l4.dport),
            proto: l4.proto,
            pad: [0; 3],
        }
    };
    if let Some((e, now)) = conntrack::lookup(&key, l4.tcp_flags) {
        conntrack::track(e, &key, l4.tcp_flags, now);
        // SAFETY: a valid map value, copied out.
        let e = unsafe { *e };
        if nat::rewrite(ctx, l4.off, &key, &e.nat_tuple(key.proto)).is_err() {
            return Outcome::Done(drop(ctx, program, Reason::Malformed));
        }
        return Outcome::Translated {
            out_ifindex: e.ifindex,
        };
    }
    match lb::frontend(&key) {
        Some(fe) => new_flow(ctx, program, &l4, &key, &fe, conntrack::now()),
        None => Outcome::Untouched,
    }
}

#[inline(always)]
fn new_flow(
    ctx: &TcContext,
    program: Program,
    l4: &L4,
    key: &CtKey,
    fe: &Frontend,
    now: u32,
) -> Outcome {
    // Node ports, external and load-balancer IPs reached from outside the node.
    let external = program == Program::FromNetdev && fe.flags & frontend_flags::EXTERNAL != 0;
    let local_only = external && fe.flags & frontend_flags::LOCAL_ONLY != 0;
    if fe.count == 0 {
        return Outcome::Done(icmp::reject(ctx, program, l4));
    }
    if local_only && fe.local_count == 0 {
        return Outcome::Done(drop(ctx, program, Reason::ServiceNoLocalBackend));
    }
    let Some(be) = lb::select(fe, key, local_only, now) else {
        return Outcome::Done(drop(ctx, program, Reason::ServiceBadBackend));
    };
    // A pod reaching itself through its service would see its own address as the source
    // (a martian it drops), and replies from a remote backend to an outside client must come
    // back here to be translated: both are source-NATed to the node.
    let mut snat = be.addr == key.saddr || (external && be.flags & backend_flags::LOCAL == 0);
    let mut to = CtKey {
        saddr: key.saddr,
        daddr: be.addr,
        sport: key.sport,
        dport: fe.target_port,
        proto: key.proto,
        pad: [0; 3],
    };
    let st = if key.proto == IPPROTO_TCP {
        state::SYN_SENT
    } else {
        state::OTHER
    };
    let mut reply = CtEntry {
        nat_saddr: key.daddr,
        nat_daddr: key.saddr,
        nat_sport: key.dport,
        nat_dport: key.sport,
        expires: now + conntrack::lifetime(st),
        ifindex: if program == Program::FromNetdev {
            // SAFETY: reading our own skb.
            unsafe { (*ctx.skb.skb).ifindex }
        } else {
            0
        },
        service_id: fe.service_id,
        state: st,
        flags: flags::REPLY,
        pad: 0,
    };
    // Claim the reply tuple. Without source NAT it is normally free; if another flow holds
    // it (the same client port to two services sharing a backend), source NAT resolves it.
    let mut claimed = false;
    let mut tries = 0;
    while tries < SNAT_TRIES + 2 {
        tries += 1;
        if snat {
            let Some(cfg) = LB_CONFIG.get(0) else { break };
            if cfg.snat_addr == [0; 4] {
                break;
            }
            if to.saddr != cfg.snat_addr {
                // First try the client's own port.
                to.saddr = cfg.snat_addr;
            } else {
                let span = (cfg.snat_port_max as u32).saturating_sub(cfg.snat_port_min as u32) + 1;
                // SAFETY: no preconditions.
                let p = cfg.snat_port_min as u32 + unsafe { bpf_get_prandom_u32() } % span;
                to.sport = p as u16;
            }
            reply.flags = flags::REPLY | flags::SNAT;
        }
        match CONNTRACK.insert(to.reversed(), reply, aya_ebpf::bindings::BPF_NOEXIST as u64) {
            Ok(()) => {
                claimed = true;
                break;
            }
            Err(EEXIST) => snat = true,
            Err(_) => return Outcome::Done(drop(ctx, program, Reason::ServiceConntrackFull)),
        }
    }
    if !claimed {
        return Outcome::Done(drop(ctx, program, Reason::ServiceSnatExhausted));
    }
    let forward = CtEntry {
        nat_saddr: to.saddr,
        nat_daddr: to.daddr,
        nat_sport: to.sport,
        nat_dport: to.dport,
        ifindex: 0,
        flags: reply.flags & flags::SNAT,
        ..reply
    };
    match CONNTRACK.insert(key, forward, aya_ebpf::bindings::BPF_NOEXIST as u64) {
        Ok(()) => {}
        Err(EEXIST) => {
            // Another CPU started this flow first: follow its choice.
            let _ = CONNTRACK.remove(to.reversed());
            // SAFETY: copied out at once.
            match unsafe { CONNTRACK.get(key) } {
                Some(e) => to = e.nat_tuple(key.proto),
                None => return Outcome::Done(drop(ctx, program, Reason::ServiceConntrackFull)),
            }
        }
        Err(_) => {
            let _ = CONNTRACK.remove(to.reversed());
            return Outcome::Done(drop(ctx, program, Reason::ServiceConntrackFull));
        }
    }
    if nat::rewrite(ctx, l4.off, key, &to).is_err() {
        return Outcome::Done(drop(ctx, program, Reason::Malformed));
    }
    Outcome::Translated { out_ifindex: 0 }
}

/// Sends a reverse-translated reply to a client outside the cluster out of `ifindex`, the
/// kernel's routing and neighbour tables choosing the next hop (nodes do not forward by
/// themselves).
#[inline(always)]
pub fn reply_outside(ctx: &TcContext, program: Program, frame: &Ipv4Frame, ifindex: u32) -> i32 {
    // SAFETY: headers were bounds checked by the parser and nothing has moved the packet.
    unsafe {
        if (*frame.ip).ttl <= 1 {
            return pass(ctx, program, Reason::TtlExceeded);
        }
        csum::decrease_ttl(frame.ip);
    }
    // SAFETY: plain helper call; no next-hop parameters, so the kernel looks the route up.
    let ret = unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) } as i32;
    if ret != TC_ACT_REDIRECT as i32 {
        return drop(ctx, program, Reason::RedirectFailed);
    }
    count(ctx, program, Reason::ServiceReply);
    ret
}
