//! Incremental checksum updates (RFC 1624) done in place, without helper calls.

use crate::parse::Ipv4Hdr;

/// Decrements the TTL and patches the header checksum, as the kernel's ip_decrease_ttl does.
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
