//! One routing hop for a packet the programs forward: the TTL goes down by one (and the
//! header checksum with it, as the kernel's ip_decrease_ttl does), or a packet whose TTL
//! would expire goes to the kernel, which answers ICMP time exceeded.
use netdp_common::counters::{Program, Reason};

use crate::{
    counters::pass,
    ctx::Ctx,
    parse::{Ipv4Frame, Ipv4Hdr},
};

/// The hop, or the verdict for a packet whose TTL would expire.
#[inline(always)]
pub fn hop<C: Ctx>(ctx: &C, program: Program, frame: &Ipv4Frame) -> Result<(), i32> {
    // SAFETY: headers were bounds checked by the parser and nothing has moved the packet.
    unsafe {
        if (*frame.ip).ttl <= 1 {
            return Err(pass(ctx, program, Reason::TtlExceeded));
        }
        decrease_ttl(frame.ip);
    }
    Ok(())
}

/// Decrements the TTL and patches the header checksum.
///
/// # Safety
/// `ip` must point at a bounds-checked IPv4 header.
#[inline(always)]
pub unsafe fn decrease_ttl(ip: *mut Ipv4Hdr) {
    unsafe {
        let mut check = (*ip).check as u32;
        check += 0x0100u16.to_be() as u32;
        (*ip).check = (check + (check >= 0xffff) as u32) as u16;
        (*ip).ttl -= 1;
    }
}
