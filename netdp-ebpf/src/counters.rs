//! Counting what the programs do; one per-CPU slot per (program, reason), no atomics.
use aya_ebpf::{bindings::TC_ACT_OK, bindings::TC_ACT_SHOT, programs::TcContext};
use netdp_common::counters::{Program, Reason, index};

use crate::maps::COUNTERS;

#[inline(always)]
pub fn count(ctx: &TcContext, program: Program, reason: Reason) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index(program, reason)) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe {
            (*slot).packets += 1;
            (*slot).bytes += ctx.len() as u64;
        }
    }
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
