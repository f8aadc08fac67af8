//! Counting what the programs do; one per-CPU slot per (program, reason) and per (program,
//! event), no atomics.
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT},
    programs::TcContext,
};
use netdp_common::counters::{Event, Program, Reason, event_index, index};

use crate::maps::COUNTERS;

#[inline(always)]
fn bump(ctx: &TcContext, slot: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe {
            (*slot).packets += 1;
            (*slot).bytes += ctx.len() as u64;
        }
    }
}

#[inline(always)]
pub fn count(ctx: &TcContext, program: Program, reason: Reason) {
    bump(ctx, index(program, reason));
}

/// Counts something the program set up (a new flow, a reclaimed port); the packet's own
/// fate is counted by its reason as usual.
#[inline(always)]
pub fn event(ctx: &TcContext, program: Program, event: Event) {
    bump(ctx, event_index(program, event));
}

/// Hand the packet to the kernel unchanged, counting why.
#[inline(always)]
pub fn pass(ctx: &TcContext, program: Program, reason: Reason) -> i32 {
    count(ctx, program, reason);
    TC_ACT_OK
}

/// Drop the packet, counting why.
#[inline(always)]
pub fn drop(ctx: &TcContext, program: Program, reason: Reason) -> i32 {
    count(ctx, program, reason);
    TC_ACT_SHOT
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
