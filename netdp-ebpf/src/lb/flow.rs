//! New service flows: the first packet of a flow to a frontend picks a backend, gets its
//! destination (and, where replies must come back through this node, its source)
//! translated, and creates the flow's two conntrack entries. Later packets, replies and
//! ICMP errors follow those entries (`conntrack::lookup`, then `nat::follow` or
//! `icmp::translate_error`).
use aya_ebpf::btf_maps::lpm_trie::Key;
use netdp_common::{
    conntrack::{CtKey, flags},
    counters::{Event, Program, Reason},
    lb::{Frontend, backend_flags, frontend_flags},
    route::mode,
};

use crate::{
    conntrack::{self, Claim},
    counters::{self, drop},
    ctx::Ctx,
    icmp,
    maps::LB_CONFIG,
    nat::{self, Outcome, Translated},
    parse::{IPPROTO_TCP, L4, only_syn},
};

/// The first packet of a flow (conntrack knows none) to a frontend, if `key` is one's:
/// its flow opened and the packet rewritten.
#[inline(always)]
pub fn new_flow<C: Ctx>(ctx: &C, program: Program, l4: &L4, key: &CtKey) -> Outcome {
    match open(ctx, program, l4, key) {
        Flow::Opened(_, t) if t.is_dsr() => Outcome::Translated(t),
        Flow::Opened(to, t) => match nat::rewrite(ctx, l4, key, &to) {
            Ok(()) => Outcome::Translated(t),
            Err(()) => Outcome::Done(drop(ctx, program, Reason::AdjustFailed)),
        },
        Flow::Not(outcome) => outcome,
    }
}

/// A flow [`open`] started or completed, the packet not rewritten yet: XDP first makes
/// sure it can send the packet on (tc follows the entries if it cannot).
pub enum Flow {
    /// The tuple the packet is to be rewritten to, and how it goes on.
    Opened(CtKey, Translated),
    /// No flow: the outcome for the packet as it is.
    Not(Outcome),
}

/// Opens the flow of the first packet to a frontend (its backend chosen, its entries
/// written), or completes a half-open one with the client's ACK; `Not` when `key` is no
/// frontend's or the packet cannot start a flow.
#[inline(always)]
pub fn open<C: Ctx>(ctx: &C, program: Program, l4: &L4, key: &CtKey) -> Flow {
    if !may_be_frontend(key.daddr) {
        return Flow::Not(Outcome::Untouched);
    }
    match super::frontend(key) {
        Some(fe) => start(ctx, program, l4, key, &fe),
        None => Flow::Not(Outcome::Untouched),
    }
}

/// Whether a frontend can have address `daddr`. None lies in the cluster Network (the
/// agents program no service address there: `service/addresses.rs`) but the node's own
/// address in its pod subnet, where node ports answer too; so pod-to-pod traffic is spared
/// the FRONTENDS lookup (a mask and a compare instead, and the array read of LB_CONFIG
/// only for cluster addresses).
#[inline(always)]
fn may_be_frontend(daddr: [u8; 4]) -> bool {
    !crate::source::in_network(daddr) || LB_CONFIG.get(0).is_some_and(|c| c.snat_addr == daddr)
}

#[inline(always)]
fn start<C: Ctx>(ctx: &C, program: Program, l4: &L4, key: &CtKey, fe: &Frontend) -> Flow {
    let done = |verdict| Flow::Not(Outcome::Done(verdict));
    // Node ports, external and load-balancer IPs reached from outside the node.
    let external = (program == Program::FromNetdev || program == Program::Xdp)
        && fe.flags & frontend_flags::EXTERNAL != 0;
    // externalTrafficPolicy Local binds traffic from outside only (pods reaching a node
    // port get every backend, as with kube-proxy); internalTrafficPolicy Local binds all
    // of a cluster IP's.
    let local_only = fe.flags & frontend_flags::LOCAL_ONLY != 0
        && (external || fe.flags & frontend_flags::EXTERNAL == 0);
    // Only a SYN starts a TCP flow: anything else would pick a backend mid-connection (a
    // flow conntrack lost), or let a flood of stray segments fill the table. The one
    // exception is the ACK completing a half-open flow's handshake.
    if l4.proto == IPPROTO_TCP && !only_syn(l4.tcp_flags) {
        return match conntrack::complete(ctx, key, l4) {
            Some(e) => Flow::Opened(e.nat_tuple(key.proto), Translated::of(&e)),
            None => done(drop(ctx, program, Reason::ServiceNotSyn)),
        };
    }
    if fe.count == 0 {
        // Answered with an ICMP error, which only tc can build: XDP leaves it to tc.
        return match ctx.as_tc() {
            Some(tc) => done(icmp::reject(tc, program, l4)),
            None => Flow::Not(Outcome::Untouched),
        };
    }
    if local_only && fe.local_count == 0 {
        return done(drop(ctx, program, Reason::ServiceNoLocalBackend));
    }
    let now = conntrack::now();
    let Some(be) = super::select(fe, key, local_only, now) else {
        return done(drop(ctx, program, Reason::ServiceBadBackend));
    };
    let remote = external && be.flags & backend_flags::LOCAL == 0;
    // Direct server return: the backend's node answers the client itself, which it can
    // where the packet reaches it through a tunnel, option and all (`dsr`); a fragment's
    // flow is not sent that way (the fragments behind it carry no ports to follow it by).
    let dsr =
        remote && fe.flags & frontend_flags::DSR != 0 && !l4.first_fragment && tunnelled(be.addr);
    // A pod reaching itself through its service would see its own address as the source
    // (a martian it drops), and replies from a remote backend to an outside client must come
    // back here to be translated: both are source-NATed to the node.
    let snat = be.addr == key.saddr || (remote && !dsr);
    let mut to = CtKey {
        daddr: be.addr,
        dport: fe.target_port,
        ..*key
    };
    let ifindex = if program == Program::FromNetdev || program == Program::Xdp {
        ctx.ifindex()
    } else {
        0
    };
    let kind = if dsr { flags::DSR } else { 0 };
    let mut reply = conntrack::new_reply(key, now, ifindex, fe.service_id, kind);
    // Claim the reply tuple. Without source NAT it is normally free; if another flow holds
    // it (the same client port to two services sharing a backend), source NAT resolves it.
    let mut claimed = false;
    if !snat {
        match conntrack::claim(ctx, program, &to.reversed(), &reply, now) {
            Claim::Claimed => claimed = true,
            Claim::Taken => {}
            Claim::Failed => {
                return done(drop(ctx, program, Reason::ServiceConntrackFull));
            }
        }
    }
    if !claimed {
        let Some(cfg) = LB_CONFIG.get(0) else {
            return done(drop(ctx, program, Reason::ServiceSnatExhausted));
        };
        if cfg.snat_addr == [0; 4] {
            return done(drop(ctx, program, Reason::ServiceSnatExhausted));
        }
        to.saddr = cfg.snat_addr;
        // Source NAT resolves a taken tuple for a flow meant for DSR too.
        reply.flags = (reply.flags & !flags::DSR) | flags::SNAT;
        // The client's own port first; then the node's source NAT range.
        to = match conntrack::claim(ctx, program, &to.reversed(), &reply, now) {
            Claim::Claimed => to,
            Claim::Taken => match nat::allocate(
                ctx,
                program,
                key,
                to,
                (cfg.snat_port_min, cfg.snat_port_max),
                &reply,
                now,
            ) {
                Some(to) => to,
                None => return done(drop(ctx, program, Reason::ServiceSnatExhausted)),
            },
            Claim::Failed => {
                return done(drop(ctx, program, Reason::ServiceConntrackFull));
            }
        };
    }
    let Ok((to, forward)) = conntrack::open(key, &to, &reply) else {
        return done(drop(ctx, program, Reason::ServiceConntrackFull));
    };
    counters::event(ctx, program, Event::ServiceFlow);
    if forward.flags & flags::SNAT != 0 {
        counters::event(ctx, program, Event::ServiceSnat);
    }
    if forward.flags & flags::DSR != 0 {
        counters::event(ctx, program, Event::ServiceDsr);
    }
    Flow::Opened(to, Translated::of(&forward))
}

/// Whether the node running pod `addr` is reached through a tunnel.
#[inline(always)]
fn tunnelled(addr: [u8; 4]) -> bool {
    crate::maps::ROUTES
        .get(&Key::new(32, addr))
        .is_some_and(|rt| mode::is_tunnel(rt.mode))
}
