//! Direct server return (`netdp_common::dsr`): on the frontend's node, a node port flow's
//! packets leave untranslated with the chosen backend in an IP option, inside the tunnel
//! to the backend's node ([`push`]); there the option is taken out ([`take`]), the flow is
//! translated to that backend like any service flow ([`open`]), and its replies leave from
//! that node straight to the client. The option is believed only inside a tunnel from a
//! peer: an outside host cannot name a pod with it.
use aya_ebpf::{
    bindings::bpf_adj_room_mode::BPF_ADJ_ROOM_NET, btf_maps::lpm_trie::Key, programs::TcContext,
};
use netdp_common::{
    Ipv4,
    conntrack::CtKey,
    counters::{Event, Program, Reason},
    dsr::{DsrOption, OPTION_LEN, OPTION_TYPE, VERSION_IHL},
    endpoint::EndpointKey,
    route::mode,
};

use crate::{
    conntrack::{self, Claim},
    counters::{self, drop, pass},
    csum,
    ctx::Ctx,
    icmp, maps, mtu,
    nat::{self, Outcome, Translated},
    parse::{
        self, ETH_HLEN, EthHdr, IP_HLEN, IPPROTO_TCP, Ipv4Frame, Ipv4Hdr, L4, Parsed, only_syn,
        ptr_at,
    },
    route,
};

/// An IP header with the option behind it.
#[repr(C)]
struct WithOption {
    ip: Ipv4Hdr,
    opt: DsrOption,
}

const _: () = assert!(core::mem::size_of::<WithOption>() == IP_HLEN + OPTION_LEN);

/// The IP header checksum of the `N` words at `hdr` (whose checksum field is 0).
#[inline(always)]
fn checksum<T, const N: usize>(hdr: &T) -> u16 {
    // SAFETY: callers pass headers of exactly N words, without padding.
    let words: &[u16; N] = unsafe { &*(hdr as *const T as *const [u16; N]) };
    csum::finish(csum::sum_words(words)).to_be()
}

/// The frame's headers with the option: what [`push`] writes.
#[repr(C)]
struct Front {
    eth: EthHdr,
    hdr: WithOption,
}

/// Puts the option naming `backend:port` (host order) behind the frame's IP header, which
/// has none (the callers only send plain packets on). Packet pointers are invalid
/// afterwards.
#[inline(always)]
pub fn push<C: Ctx>(ctx: &C, frame: &Ipv4Frame, backend: Ipv4, port: u16) -> Result<(), ()> {
    // SAFETY: bounds checked by the parser.
    let mut front = unsafe {
        Front {
            eth: core::ptr::read_unaligned(frame.eth),
            hdr: WithOption {
                ip: core::ptr::read_unaligned(frame.ip),
                opt: DsrOption::new(backend, port),
            },
        }
    };
    let ip = &mut front.hdr.ip;
    let tot_len = u16::from_be(ip.tot_len);
    if ip.version_ihl != 0x45 || tot_len == 0 || tot_len as usize + OPTION_LEN > 0xffff {
        return Err(());
    }
    ip.version_ihl = VERSION_IHL;
    ip.tot_len = (tot_len + OPTION_LEN as u16).to_be();
    ip.check = 0;
    front.hdr.ip.check = checksum::<_, 14>(&front.hdr);
    ctx.insert_after_ip(OPTION_LEN as u32)?;
    // The whole front: XDP's room opens in front of the old headers.
    ctx.store(0, &front)
}

/// Takes the option out of a decapsulated packet that carries it: the backend it names
/// (port in host order), the packet as the client sent it. `Ok(None)` for a packet without
/// it; `Err` if it could not be taken out. Packet pointers are invalid after `Ok(Some)`.
#[inline(always)]
pub fn take(ctx: &TcContext, frame: &Ipv4Frame) -> Result<Option<(Ipv4, u16)>, ()> {
    // SAFETY: bounds checked by the parser.
    if unsafe { (*frame.ip).version_ihl } != VERSION_IHL {
        return Ok(None);
    }
    let Some(at) = ptr_at::<WithOption>(ctx, ETH_HLEN) else {
        return Ok(None);
    };
    // SAFETY: bounds checked by ptr_at.
    let WithOption { mut ip, opt } = unsafe { core::ptr::read_unaligned(at) };
    if opt.kind != OPTION_TYPE || opt.len != OPTION_LEN as u8 {
        return Ok(None);
    }
    ip.version_ihl = 0x45;
    ip.tot_len = (u16::from_be(ip.tot_len) - OPTION_LEN as u16).to_be();
    ip.check = 0;
    ip.check = checksum::<_, 10>(&ip);
    ctx.adjust_room(-(OPTION_LEN as i32), BPF_ADJ_ROOM_NET, 0)
        .map_err(|_| ())?;
    ctx.store(ETH_HLEN, &ip, 0).map_err(|_| ())?;
    Ok(Some((opt.addr, u16::from_be(opt.port))))
}

/// The first packet here of a flow another node sent with direct server return (`key` its
/// tuple as the client sent it, to the service): translated to `backend:port`, a pod of
/// this node, with the flow's two conntrack entries, so its replies get the service's
/// address back and leave from here (out of the interface the flow came in on). Only a
/// SYN starts a TCP flow, or the ACK completing a half-open one.
#[inline(always)]
pub fn open(
    ctx: &TcContext,
    program: Program,
    l4: &L4,
    key: &CtKey,
    (backend, port): (Ipv4, u16),
) -> Outcome {
    let done = |verdict| Outcome::Done(verdict);
    if l4.proto == IPPROTO_TCP && !only_syn(l4.tcp_flags) {
        return match conntrack::complete(ctx, key, l4) {
            Some(e) => nat::follow(ctx, program, key, l4, &e),
            None => done(drop(ctx, program, Reason::ServiceNotSyn)),
        };
    }
    // SAFETY: only tested for presence.
    if unsafe { maps::ENDPOINTS.get(EndpointKey { addr: backend }) }.is_none() {
        return done(drop(ctx, program, Reason::ServiceDsrNoEndpoint));
    }
    let to = CtKey {
        daddr: backend,
        dport: port,
        ..*key
    };
    let now = conntrack::now();
    let reply = conntrack::new_reply(key, now, ctx.ifindex(), 0, 0);
    match conntrack::claim(ctx, program, &to.reversed(), &reply, now) {
        Claim::Claimed => {}
        Claim::Taken => return done(drop(ctx, program, Reason::ServiceDsrTupleTaken)),
        Claim::Failed => return done(drop(ctx, program, Reason::ServiceConntrackFull)),
    }
    let Ok((to, forward)) = conntrack::open(key, &to, &reply) else {
        return done(drop(ctx, program, Reason::ServiceConntrackFull));
    };
    counters::event(ctx, program, Event::DsrFlow);
    match nat::rewrite(ctx, l4, key, &to) {
        Ok(()) => Outcome::Translated(Translated::of(&forward)),
        Err(()) => done(drop(ctx, program, Reason::AdjustFailed)),
    }
}

/// Carries a packet of a flow sent on with direct server return (`t`) to its backend's
/// node: the option pushed, then forwarded on the backend's route, a tunnel (`lb::flow`
/// chooses DSR only for those). Too big with the option, it is answered "fragmentation
/// needed" with the MTU the option leaves.
#[inline(always)]
pub fn dispatch(ctx: &TcContext, program: Program, frame: &Ipv4Frame, t: &Translated) -> i32 {
    let (backend, port) = t.backend;
    let Some(rt) = maps::ROUTES.get(&Key::new(32, backend)) else {
        return pass(ctx, program, Reason::ServiceToHost);
    };
    if !mode::is_tunnel(rt.mode) {
        return pass(ctx, program, Reason::ServiceToHost);
    }
    // SAFETY: bounds checked by the parser.
    if unsafe { (*frame.ip).ttl } <= 1 {
        return pass(ctx, program, Reason::TtlExceeded);
    }
    let path_mtu = rt.mtu.saturating_sub(OPTION_LEN as u32);
    if !mtu::fits(ctx, frame, path_mtu) {
        return icmp::frag_needed(ctx, program, frame, path_mtu);
    }
    if push(ctx, frame, backend, port).is_err() {
        return drop(ctx, program, Reason::AdjustFailed);
    }
    match parse::ipv4(ctx) {
        Parsed::Ipv4(frame) => route::forward(ctx, program, &frame, rt),
        _ => drop(ctx, program, Reason::Malformed),
    }
}
