//! Checksums: incremental updates (RFC 1624) done in place, and full sums of small
//! headers the programs build themselves. Pure arithmetic, for both hooks.

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
