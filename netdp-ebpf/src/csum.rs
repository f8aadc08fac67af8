//! Checksums: incremental updates (RFC 1624) done in place, and full sums of small
//! headers the programs build themselves.

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

/// Folds a 32-bit ones'-complement sum and complements it: the checksum, host order.
#[inline(always)]
pub fn finish(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Sum of `N` 16-bit words read as big-endian from `words` (network order memory).
///
/// # Safety
/// `words` must point at `N` bounds-checked words.
#[inline(always)]
pub unsafe fn sum_words<const N: usize>(words: *const [u16; N]) -> u32 {
    let mut sum = 0u32;
    let mut i = 0;
    while i < N {
        sum += u16::from_be(unsafe { (*words)[i] }) as u32;
        i += 1;
    }
    sum
}
