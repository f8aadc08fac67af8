//! Counting what the programs do; one per-CPU slot per (program, reason) and per (program,
//! event), no atomics.
use aya_ebpf::{
    bindings::{__sk_buff, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT},
    programs::TcContext,
};
use netdp_common::{
    counters::{Event, Program, Reason, event_index, index},
    monitor::{DropEvent, LISTENERS},
};

use crate::{
    maps::{COUNTERS, EVENTS, MONITOR},
    parse::{ETH_HLEN, IPPROTO_TCP, IPPROTO_UDP},
};

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

/// Drop the packet, counting why, and telling `netdp monitor` if one listens.
#[inline(always)]
pub fn drop(ctx: &TcContext, program: Program, reason: Reason) -> i32 {
    count(ctx, program, reason);
    if MONITOR.get(LISTENERS).is_some_and(|n| *n > 0) {
        report(ctx.skb.skb, program as u32, reason as u32);
    }
    TC_ACT_SHOT
}

/// Writes a drop event. A function of its own (a BPF call), so the many places that drop
/// share one copy of it instead of each inlining it.
#[inline(never)]
fn report(skb: *mut __sk_buff, program: u32, reason: u32) {
    // Written straight into the ring: the event takes none of the program's stack, which
    // the call chain shares (512 bytes in all).
    let Some(mut entry) = EVENTS.reserve(0) else {
        return;
    };
    let ctx = TcContext::new(skb);
    // SAFETY: the program's own skb.
    let (ifindex, len) = unsafe { ((*skb).ifindex, (*skb).len) };
    let ev = entry.write(DropEvent {
        program,
        reason,
        ifindex,
        len,
        ..Default::default()
    });
    // Ethernet type IPv4, then the IPv4 header: the helper checks every offset.
    if let (Ok(0x0008u16), Ok(vihl), Ok(proto), Ok(addrs)) = (
        ctx.load::<u16>(12),
        ctx.load::<u8>(ETH_HLEN),
        ctx.load::<u8>(ETH_HLEN + 9),
        ctx.load::<[u8; 8]>(ETH_HLEN + 12),
    ) {
        ev.proto = proto;
        ev.saddr = [addrs[0], addrs[1], addrs[2], addrs[3]];
        ev.daddr = [addrs[4], addrs[5], addrs[6], addrs[7]];
        let l4 = ETH_HLEN + ((vihl & 0x0f) as usize) * 4;
        if (proto == IPPROTO_TCP || proto == IPPROTO_UDP)
            && let Ok(ports) = ctx.load::<[u8; 4]>(l4)
        {
            ev.sport = u16::from_be_bytes([ports[0], ports[1]]);
            ev.dport = u16::from_be_bytes([ports[2], ports[3]]);
        }
    }
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
