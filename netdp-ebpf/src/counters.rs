//! Counting what the programs do; one per-CPU slot per (program, reason) and per (program,
//! event), no atomics.
use core::ffi::c_void;

use aya_ebpf::{bindings::TC_ACT_REDIRECT, programs::TcContext};
use netdp_common::{
    counters::{Event, Program, Reason, event_index, index},
    monitor::{DropEvent, LISTENERS},
};

use crate::{
    ctx::Ctx,
    maps::{COUNTERS, EVENTS, MONITOR},
    parse::{ETH_HLEN, IPPROTO_TCP, IPPROTO_UDP},
};

#[inline(always)]
fn bump<C: Ctx>(ctx: &C, slot: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe {
            (*slot).packets += 1;
            (*slot).bytes += ctx.len() as u64;
        }
    }
}

#[inline(always)]
pub fn count<C: Ctx>(ctx: &C, program: Program, reason: Reason) {
    bump(ctx, index(program, reason));
}

/// Counts something the program set up (a new flow, a reclaimed port); the packet's own
/// fate is counted by its reason as usual.
#[inline(always)]
pub fn event<C: Ctx>(ctx: &C, program: Program, event: Event) {
    bump(ctx, event_index(program, event));
}

/// Hand the packet to the kernel unchanged, counting why.
#[inline(always)]
pub fn pass<C: Ctx>(ctx: &C, program: Program, reason: Reason) -> i32 {
    count(ctx, program, reason);
    C::PASS
}

/// Drop the packet, counting why, and telling `netdp monitor` if one listens.
#[inline(always)]
pub fn drop<C: Ctx>(ctx: &C, program: Program, reason: Reason) -> i32 {
    count(ctx, program, reason);
    if MONITOR.get(LISTENERS).is_some_and(|n| *n > 0) {
        report::<C>(ctx.raw(), program as u32, reason as u32);
    }
    C::DROP
}

/// Writes a drop event. A function of its own (a BPF call), so the many places that drop
/// share one copy of it instead of each inlining it.
#[inline(never)]
fn report<C: Ctx>(raw: *mut c_void, program: u32, reason: u32) {
    // Written straight into the ring, header bytes loaded into the event itself: the
    // report takes next to none of the stack, which the call chain shares (512 bytes).
    let Some(mut entry) = EVENTS.reserve(0) else {
        return;
    };
    // SAFETY: the program's own context.
    let (ifindex, len) = unsafe { C::raw_ifindex_len(raw) };
    let ev = entry.write(DropEvent {
        program,
        reason,
        ifindex,
        len,
        ..Default::default()
    });
    let load = |off: usize, to: *mut u8, n: u32| {
        // SAFETY: the helper writes at most `n` bytes at `to`, inside the event.
        unsafe { C::load_raw(raw, off, to, n) }
    };
    // Ethernet type IPv4 (the protocol field doubles as scratch space), then the header.
    let proto_at = &mut ev.proto as *mut u8;
    if load(12, ev.pad.as_mut_ptr(), 2)
        && ev.pad[..2] == [0x08, 0x00]
        && load(ETH_HLEN, proto_at, 1)
    {
        let ihl = (ev.proto & 0x0f) as usize * 4;
        ev.proto = 0;
        if load(ETH_HLEN + 9, proto_at, 1)
            && load(ETH_HLEN + 12, ev.saddr.as_mut_ptr(), 8)
            && (ev.proto == IPPROTO_TCP || ev.proto == IPPROTO_UDP)
            && load(ETH_HLEN + ihl, &mut ev.sport as *mut u16 as *mut u8, 4)
        {
            ev.sport = u16::from_be(ev.sport);
            ev.dport = u16::from_be(ev.dport);
        }
    } else {
        ev.proto = 0;
    }
    ev.pad = [0; 3];
    entry.submit(0);
}

/// The verdict after a redirect helper returned `ret`: counted under `reason` if the
/// redirect is set up, dropped (`redirect_failed`) if not.
#[inline(always)]
pub fn redirected(ctx: &TcContext, program: Program, ret: i64, reason: Reason) -> i32 {
    if ret as i32 != TC_ACT_REDIRECT {
        return drop(ctx, program, Reason::RedirectFailed);
    }
    count(ctx, program, reason);
    TC_ACT_REDIRECT
}
