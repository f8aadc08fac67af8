//! Checksums: incremental updates (RFC 1624) done in place, and full sums of small
//! headers the programs build themselves. Also the routing hop, which is mostly one.
use aya_ebpf::programs::TcContext;
use netdp_common::counters::{Program, Reason};

use crate::{
    counters::pass,
    parse::{Ipv4Frame, Ipv4Hdr},
};

/// One routing hop for a packet the program forwards: the TTL goes down by one, or, if it
/// would expire, the packet goes to the kernel (which answers ICMP time exceeded) and that
/// verdict is returned.
#[inline(always)]
pub fn hop(ctx: &TcContext, program: Program, frame: &Ipv4Frame) -> Result<(), i32> {
    // SAFETY: headers were bounds checked by the parser and nothing has moved the packet.
    unsafe {
        if (*frame.ip).ttl <= 1 {
            return Err(pass(ctx, program, Reason::TtlExceeded));
        }
        decrease_ttl(frame.ip);
    }
    Ok(())
}

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

/// Folds a 32-bit ones'-complement sum to 16 bits.
#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Folds a 32-bit ones'-complement sum and complements it: the checksum, in the byte order
/// the summed words were in.
#[inline(always)]
pub fn finish(sum: u32) -> u16 {
    !fold(sum)
}

/// Sum of `N` 16-bit words read as big-endian from `words` (network order memory).
#[inline(always)]
pub fn sum_words<const N: usize>(words: &[u16; N]) -> u32 {
    let mut sum = 0u32;
    let mut i = 0;
    while i < N {
        sum += u16::from_be(words[i]) as u32;
        i += 1;
    }
    sum
}

/// Sum of the two words of an address, as they sit in memory.
#[inline(always)]
pub fn addr_sum(a: [u8; 4]) -> u32 {
    u16::from_ne_bytes([a[0], a[1]]) as u32 + u16::from_ne_bytes([a[2], a[3]]) as u32
}

/// RFC 1624: the checksum `check` after words summing to `removed` were replaced by words
/// summing to `added` (all as they sit in memory, and so is the result).
#[inline(always)]
pub fn update(check: u16, removed: u32, added: u32) -> u16 {
    finish(!check as u32 + !fold(removed) as u32 + added)
}
