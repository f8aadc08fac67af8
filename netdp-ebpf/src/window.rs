//! TCP sequence tracking for conntrack: each direction's entry remembers the sequence
//! number its sender uses next (`CtEntry::seq_next`), so a RST or FIN moves a flow to
//! closing only when its sequence number lies in the flow's window, as nf_conntrack's
//! `tcp_in_window` requires; one that does not is dropped (`out_of_window`) and the flow
//! goes on. A legitimate RST or FIN carries the sender's next sequence number, or (a RST
//! answering a segment) that segment's acknowledgement, at most the bytes in flight
//! behind it. The window accepted is that: [`IN_FLIGHT`] behind the next sequence number
//! to [`SLACK`] ahead. Linux bounds it by the advertised windows instead, whose scale sits
//! in SYN options this dataplane does not parse; the bound here is as wide as Linux's
//! largest default receive window and no wider.
use netdp_common::conntrack::CtEntry;

use crate::{
    ctx::Ctx,
    parse::{ETH_HLEN, TCP_FIN, TCP_RST, TCP_SYN, TcpHdr},
};

/// Sequence space behind the next sequence number a RST may carry: the data in flight,
/// which a receive window bounds (Linux's default largest, `tcp_rmem`, is 6 MiB).
const IN_FLIGHT: u32 = 8 << 20;

/// Sequence space ahead of it: segments overtaking each other between CPUs.
const SLACK: u32 = 65_535;

/// What a segment says of its direction's sequence space (host byte order).
#[derive(Clone, Copy)]
struct Segment {
    seq: u32,
    /// The sequence number after this segment (SYN and FIN count one).
    end: u32,
}

/// The segment whose TCP header is at `off` of the packet data from `start` to `end` (the
/// parser bounds checked it once; checked again here for the verifier), with `tcp_flags`.
#[inline(always)]
fn segment(start: usize, end: usize, off: usize, tcp_flags: u8) -> Option<Segment> {
    // The IP total length, read here directly: inlined into a program, where LLVM knows
    // the TCP header's offset is past it, this bounds check would be folded into the
    // header's, which the verifier cannot follow.
    if start + ETH_HLEN + 4 > end || start + off + core::mem::size_of::<TcpHdr>() > end {
        return None;
    }
    let tcp = (start + off) as *const TcpHdr;
    // SAFETY: bounds checked above.
    let (tot_len, seq, doff) = unsafe {
        (
            u16::from_be(*((start + ETH_HLEN + 2) as *const u16)),
            u32::from_be((*tcp).seq),
            (*tcp).doff,
        )
    };
    // Payload: the datagram past both headers (0 for a BIG TCP super-packet, whose length
    // field is 0: its end is then only underestimated, which the slack covers).
    let headers = (off - ETH_HLEN) as u32 + ((doff >> 4) as u32) * 4;
    let mut next = seq.wrapping_add((tot_len as u32).saturating_sub(headers));
    if tcp_flags & (TCP_SYN | TCP_FIN) != 0 {
        next = next.wrapping_add(1);
    }
    Some(Segment { seq, end: next })
}

/// Whether `a` comes after `b` in sequence space.
#[inline(always)]
fn after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// Whether a RST or FIN with sequence number `seq` lies in the window of a direction that
/// sends `next` next (0: not known yet, when any is believed).
#[inline(always)]
fn in_window(seq: u32, next: u32) -> bool {
    next == 0 || seq.wrapping_sub(next.wrapping_sub(IN_FLIGHT)) <= IN_FLIGHT + SLACK
}

/// Follows the TCP segment at `off` (with `tcp_flags`) of the flow direction whose entry
/// is at `e`: false for a RST or FIN outside the window, which is to change nothing;
/// otherwise the direction's next sequence number moves on. Out of line: inlined, it would
/// not fit in the programs' frames, which are near the verifier's 512 bytes.
#[inline(never)]
pub fn follow<C: Ctx>(ctx: &C, e: *mut CtEntry, off: usize, tcp_flags: u8) -> bool {
    // Volatile reads: otherwise LLVM hands this function the loaded values instead of the
    // context (argument promotion), and the verifier refuses arithmetic on a packet end
    // that arrives as a plain argument.
    let (start, end) = ctx.bounds_volatile();
    let Some(seg) = segment(start, end, off, tcp_flags) else {
        return false;
    };
    // SAFETY: a valid map value; racing CPUs store values of the same flow.
    unsafe {
        let next = (*e).seq_next;
        if tcp_flags & (TCP_FIN | TCP_RST) != 0 && !in_window(seg.seq, next) {
            return false;
        }
        if next == 0 || after(seg.end, next) {
            (*e).seq_next = seg.end;
        }
    }
    true
}
