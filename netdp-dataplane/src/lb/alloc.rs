//! Bookkeeping of the shared arrays: ranges of BACKENDS slots (power-of-two sized, so freed
//! ranges are easy to reuse), and plain indexes (Maglev tables, service ids).
use std::collections::BTreeMap;

/// Size class of a range of `len` slots.
pub fn class(len: u32) -> u32 {
    len.max(1).next_power_of_two()
}

/// Ranges of an array of `capacity` slots.
#[derive(Debug)]
pub struct RangeAllocator {
    capacity: u32,
    next: u32,
    free: BTreeMap<u32, Vec<u32>>,
    reserved: Vec<(u32, u32)>,
    in_use: u64,
}

impl RangeAllocator {
    pub fn new(capacity: u32) -> Self {
        RangeAllocator {
            capacity,
            next: 0,
            free: BTreeMap::new(),
            reserved: Vec::new(),
            in_use: 0,
        }
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Slots handed out (whole size classes).
    pub fn in_use(&self) -> u64 {
        self.in_use
    }

    /// A range for `len` slots: returns its first slot.
    pub fn alloc(&mut self, len: u32) -> Option<u32> {
        let c = class(len);
        let base = if let Some(b) = self.free.get_mut(&c).and_then(|v| v.pop()) {
            b
        } else if self
            .next
            .checked_add(c)
            .is_some_and(|end| end <= self.capacity)
        {
            let b = self.next;
            self.next += c;
            b
        } else {
            // Split the smallest larger free block.
            let (&big, _) = self.free.range(c + 1..).find(|(_, v)| !v.is_empty())?;
            let b = self.free.get_mut(&big)?.pop()?;
            let mut half = big / 2;
            while half >= c {
                self.free.entry(half).or_default().push(b + half);
                half /= 2;
            }
            b
        };
        self.in_use += c as u64;
        Some(base)
    }

    pub fn free(&mut self, base: u32, len: u32) {
        let c = class(len);
        self.in_use = self.in_use.saturating_sub(c as u64);
        self.free.entry(c).or_default().push(base);
    }

    /// Marks a range found in the maps as taken (before [`finish_reserve`](Self::finish_reserve)).
    pub fn reserve(&mut self, base: u32, len: u32) {
        self.reserved.push((base, class(len)));
    }

    /// Everything below the highest reserved range that is not reserved becomes free.
    pub fn finish_reserve(&mut self) {
        let mut r = std::mem::take(&mut self.reserved);
        r.sort_unstable();
        r.dedup();
        let mut cursor = 0u32;
        for (base, c) in r {
            if base >= cursor {
                self.add_gap(cursor, base);
            }
            cursor = cursor.max(base.saturating_add(c).min(self.capacity));
            self.in_use += c as u64;
        }
        self.next = cursor;
    }

    fn add_gap(&mut self, mut from: u32, to: u32) {
        while from < to {
            let mut size = 1u32 << (31 - (to - from).leading_zeros());
            // Keep blocks aligned to their size so they split cleanly.
            while !from.is_multiple_of(size) {
                size /= 2;
            }
            self.free.entry(size).or_default().push(from);
            from += size;
        }
    }
}

/// Indexes `first..first+capacity`.
#[derive(Debug)]
pub struct IndexAllocator {
    first: u32,
    capacity: u32,
    next: u32,
    free: Vec<u32>,
    reserved: Vec<u32>,
}

impl IndexAllocator {
    pub fn new(first: u32, capacity: u32) -> Self {
        IndexAllocator {
            first,
            capacity,
            next: first,
            free: Vec::new(),
            reserved: Vec::new(),
        }
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    pub fn alloc(&mut self) -> Option<u32> {
        if let Some(i) = self.free.pop() {
            return Some(i);
        }
        if self.next - self.first < self.capacity {
            self.next += 1;
            return Some(self.next - 1);
        }
        None
    }

    pub fn free(&mut self, i: u32) {
        self.free.push(i);
    }

    pub fn reserve(&mut self, i: u32) {
        if i >= self.first && i - self.first < self.capacity {
            self.reserved.push(i);
        }
    }

    pub fn finish_reserve(&mut self) {
        let mut r = std::mem::take(&mut self.reserved);
        r.sort_unstable();
        r.dedup();
        let top = r.last().map(|i| i + 1).unwrap_or(self.first);
        let mut it = r.iter().peekable();
        for i in self.first..top {
            if it.peek() == Some(&&i) {
                it.next();
            } else {
                self.free.push(i);
            }
        }
        self.free.reverse();
        self.next = top;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_reused_and_split() {
        let mut a = RangeAllocator::new(64);
        let x = a.alloc(3).unwrap();
        let y = a.alloc(16).unwrap();
        assert_eq!((x, y), (0, 4));
        assert_eq!(a.in_use(), 20);
        a.free(y, 16);
        assert_eq!(a.alloc(32), Some(20));
        assert_eq!(a.alloc(5), Some(52));
        // The tail is used up: the freed 16 is split for smaller ranges.
        assert_eq!(a.alloc(8), Some(4));
        assert_eq!(a.alloc(7), Some(12));
        assert_eq!(a.alloc(8), None);
        a.free(12, 8);
        assert_eq!(a.alloc(8), Some(12));
    }

    #[test]
    fn reserved_ranges_stay_taken_and_gaps_are_free() {
        let mut a = RangeAllocator::new(1024);
        a.reserve(8, 5); // class 8
        a.reserve(64, 30); // class 32
        a.finish_reserve();
        assert_eq!(a.in_use(), 40);
        let mut got = Vec::new();
        while let Some(b) = a.alloc(8) {
            got.push(b);
            if b >= 96 {
                break;
            }
        }
        for b in &got {
            assert!(
                !(8..16).contains(b) && !(64..96).contains(b),
                "{b} overlaps: {got:?}"
            );
        }
    }

    #[test]
    fn indexes() {
        let mut a = IndexAllocator::new(1, 3);
        a.reserve(2);
        a.finish_reserve();
        assert_eq!(a.alloc(), Some(1));
        assert_eq!(a.alloc(), Some(3));
        assert_eq!(a.alloc(), None);
        a.free(1);
        assert_eq!(a.alloc(), Some(1));
    }
}
