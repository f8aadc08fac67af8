//! Maglev lookup tables (Eisenbud et al., NSDI 2016): each backend fills table entries in
//! the order of its own permutation, taking turns, so every backend owns nearly the same
//! number of entries and a changed backend set moves few of them.
//!
//! The plain algorithm still shuffles a few entries among backends that stay when another
//! one comes or goes. [`stabilize`] gives those entries back to their previous owner, so a
//! change moves exactly the flows that must move: removing one of N backends reassigns only
//! its ~1/N of the table, adding one takes ~1/(N+1) from the others and nothing else.
use std::{collections::HashSet, net::Ipv4Addr};

/// Whether `n` is prime (table sizes must be, so every skip visits every entry).
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2u32;
    while d.saturating_mul(d) <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

fn mix(mut x: u64) -> u64 {
    // SplitMix64's finalizer.
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The table over `backends` (entries are indexes into it). Depends only on the set of
/// addresses and their order, so every node computes the same table.
pub fn table(backends: &[Ipv4Addr], size: u32) -> Vec<u16> {
    let m = size as u64;
    let n = backends.len();
    if n == 0 || m == 0 {
        return Vec::new();
    }
    if n == 1 {
        return vec![0; size as usize];
    }
    let perm: Vec<(u64, u64)> = backends
        .iter()
        .map(|b| {
            let a = u32::from(*b) as u64;
            let offset = mix(a ^ 0x6d61_676c_6576_0001) % m;
            let skip = mix(a ^ 0x6d61_676c_6576_0002) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; n];
    let mut entries = vec![u16::MAX; size as usize];
    let mut filled = 0u64;
    'fill: loop {
        for (i, (offset, skip)) in perm.iter().enumerate() {
            let mut c = (offset + next[i] * skip) % m;
            while entries[c as usize] != u16::MAX {
                next[i] += 1;
                c = (offset + next[i] * skip) % m;
            }
            entries[c as usize] = i as u16;
            next[i] += 1;
            filled += 1;
            if filled == m {
                break 'fill;
            }
        }
    }
    entries
}

/// Gives back to their previous owner the entries that the new table moved from one
/// surviving backend to another. `old` indexes `old_backends`, `new` indexes `backends`.
pub fn stabilize(
    new: &mut [u16],
    backends: &[Ipv4Addr],
    old: &[u16],
    old_backends: &[Ipv4Addr],
) -> usize {
    if new.len() != old.len() {
        return 0;
    }
    let before: HashSet<Ipv4Addr> = old_backends.iter().copied().collect();
    let index: std::collections::HashMap<Ipv4Addr, u16> = backends
        .iter()
        .enumerate()
        .map(|(i, b)| (*b, i as u16))
        .collect();
    let mut kept = 0;
    for (e, o) in new.iter_mut().zip(old) {
        let (Some(now_b), Some(was_b)) = (backends.get(*e as usize), old_backends.get(*o as usize))
        else {
            continue;
        };
        if now_b == was_b || !before.contains(now_b) {
            // Unchanged, or taken by a new backend: the move is the point.
            continue;
        }
        if let Some(i) = index.get(was_b) {
            *e = *i;
            kept += 1;
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: u8) -> Vec<Ipv4Addr> {
        (0..n)
            .map(|i| Ipv4Addr::new(10, 244, i % 5, 10 + i))
            .collect()
    }

    #[test]
    fn primes() {
        assert!(is_prime(16381) && is_prime(65537) && is_prime(2) && is_prime(251));
        assert!(!is_prime(16383) && !is_prime(1) && !is_prime(0) && !is_prime(65536));
    }

    #[test]
    fn balanced_and_deterministic() {
        for n in [2u8, 3, 7, 50] {
            let b = addrs(n);
            let t = table(&b, 16381);
            assert_eq!(t, table(&b, 16381));
            let mut counts = vec![0usize; n as usize];
            for e in &t {
                counts[*e as usize] += 1;
            }
            let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
            assert!(max - min <= 1 + 16381 / 1000, "n={n}: {counts:?}");
        }
    }

    /// Removing one of N moves only its entries; adding one moves only entries to it.
    #[test]
    fn changes_move_only_what_must_move() {
        for n in [3u8, 10, 50] {
            let all = addrs(n);
            let old = table(&all, 16381);
            let gone = all[1];
            let rest: Vec<_> = all.iter().copied().filter(|a| *a != gone).collect();
            let mut new = table(&rest, 16381);
            let plain_moves = old
                .iter()
                .zip(&new)
                .filter(|(o, e)| {
                    all[**o as usize] != gone && all[**o as usize] != rest[**e as usize]
                })
                .count();
            stabilize(&mut new, &rest, &old, &all);
            let mut moved = 0usize;
            for (o, e) in old.iter().zip(&new) {
                let (was, now) = (all[*o as usize], rest[*e as usize]);
                if was != gone {
                    assert_eq!(was, now, "n={n}: a surviving backend lost an entry");
                } else {
                    moved += 1;
                }
            }
            let share = 16381 / n as usize;
            assert!(
                moved.abs_diff(share) <= 1 + share / 50,
                "n={n}: moved {moved}"
            );
            println!(
                "n={n}: removal moved {moved} entries; plain Maglev would also have moved {plain_moves} others"
            );

            // And back: adding it again takes entries only for itself.
            let mut again = table(&all, 16381);
            stabilize(&mut again, &all, &new, &rest);
            for (o, e) in new.iter().zip(&again) {
                let (was, now) = (rest[*o as usize], all[*e as usize]);
                assert!(was == now || now == gone, "n={n}: {was} -> {now}");
            }
        }
    }
}
