//! Fragments of translated flows (see netdp_common::fragment): a translated first fragment
//! leaves its ports in FRAGMENTS under the datagram's identity; a later fragment finds its
//! flow through them and gets the same address translation (it has no transport header:
//! only the IP header changes).
use aya_ebpf::programs::TcContext;
use netdp_common::{
    conntrack::CtKey,
    counters::{Program, Reason},
    fragment::{FragmentKey, FragmentPorts},
};

use crate::{
    conntrack,
    counters::drop,
    maps::{CONNTRACK, FRAGMENTS},
    nat::{self, Outcome, Translated},
    parse::{ETH_HLEN, IP_DADDR_OFF, IP_SADDR_OFF, Ipv4Frame, load},
};

/// The IP identification of the frame's datagram (network order).
#[inline(always)]
pub fn id(frame: &Ipv4Frame) -> u16 {
    // SAFETY: the header was bounds checked by the parser.
    unsafe { (*frame.ip).id }
}

/// Remembers the ports of a first fragment of flow `key` (its tuple before translation).
/// The identification is read from the packet again, after the translation (which leaves
/// it alone), so nothing needs to live on the stack across it.
#[inline(always)]
pub fn remember(ctx: &TcContext, key: &CtKey) {
    let Some(id) = load::<2>(ctx, ETH_HLEN + 4) else {
        return;
    };
    let id = u16::from_ne_bytes(id);
    let fk = FragmentKey {
        saddr: key.saddr,
        daddr: key.daddr,
        id,
        proto: key.proto,
        pad: 0,
    };
    let ports = FragmentPorts {
        sport: key.sport,
        dport: key.dport,
    };
    let _ = FRAGMENTS.insert(fk, ports, 0);
}

/// The flow a later fragment belongs to, if its datagram's first fragment was translated.
#[inline(always)]
fn flow(frame: &Ipv4Frame, proto: u8) -> Option<CtKey> {
    // SAFETY: the header was bounds checked by the parser.
    let (saddr, daddr) = unsafe { ((*frame.ip).saddr, (*frame.ip).daddr) };
    let fk = FragmentKey {
        saddr,
        daddr,
        id: id(frame),
        proto,
        pad: 0,
    };
    // SAFETY: copied out at once.
    let ports = unsafe { FRAGMENTS.get(fk) }.copied()?;
    Some(CtKey {
        saddr,
        daddr,
        sport: ports.sport,
        dport: ports.dport,
        proto,
        pad: [0; 3],
    })
}

/// Translates a later fragment (IP protocol `proto`) if its datagram's first fragment was
/// translated. A function of its own (a BPF call with its own stack frame): the programs'
/// main frame is close to the 512 bytes a call chain may use. Returns the outcome
/// packed for [`outcome_of`].
#[inline(never)]
pub fn translate(ctx: &TcContext, frame: &Ipv4Frame, proto: u8) -> u64 {
    let Some(key) = flow(frame, proto) else {
        return UNTOUCHED;
    };
    // The first fragment advanced the flow; a later one only follows it (no tracking, and
    // only what the rewrite needs is read: this frame is small).
    let Some(e) = CONNTRACK.get_ptr(key) else {
        return UNTOUCHED;
    };
    // SAFETY: a valid map value, read field by field, each just before it is needed: few
    // values live across the helper calls, so few are spilled to this small frame.
    if unsafe { (*e).expires } < conntrack::now() {
        return UNTOUCHED;
    }
    // SAFETY: as above.
    let (to_saddr, to_daddr, done) = unsafe {
        (
            (*e).nat_saddr,
            (*e).nat_daddr,
            TRANSLATED | ((*e).flags as u64) << 32 | (*e).ifindex as u64,
        )
    };
    if key.saddr != to_saddr && nat::addr(ctx, IP_SADDR_OFF, None, key.saddr, to_saddr, 0).is_err()
    {
        return FAILED;
    }
    if key.daddr != to_daddr && nat::addr(ctx, IP_DADDR_OFF, None, key.daddr, to_daddr, 0).is_err()
    {
        return FAILED;
    }
    done
}

/// What [`translate`] returns, in one register (a BPF call returns no aggregates):
/// untouched, translated with the entry's flags and ifindex, or failed.
const UNTOUCHED: u64 = 0;
const TRANSLATED: u64 = 1 << 40;
const FAILED: u64 = 2 << 40;

/// The outcome [`translate`] packed; a failed rewrite is dropped and counted here, in the
/// caller's frame (counting in `translate` would put the drop report's frame on top).
#[inline(always)]
pub fn outcome_of(ctx: &TcContext, program: Program, packed: u64) -> Outcome {
    match packed & (3 << 40) {
        TRANSLATED => Outcome::Translated(Translated {
            flags: (packed >> 32) as u8,
            ifindex: packed as u32,
            // Flows sent on with direct server return are not remembered.
            backend: ([0; 4], 0),
        }),
        FAILED => Outcome::Done(drop(ctx, program, Reason::AdjustFailed)),
        _ => Outcome::Untouched,
    }
}
