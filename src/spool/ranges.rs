//! A set of u64s kept as disjoint `[start, end)` ranges: the delivered seqs of a spool.

use std::collections::BTreeMap;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RangeSet {
    /// start → end (exclusive), disjoint and not touching.
    ranges: BTreeMap<u64, u64>,
}

impl RangeSet {
    pub fn contains(&self, x: u64) -> bool {
        self.ranges
            .range(..=x)
            .next_back()
            .is_some_and(|(_, &end)| x < end)
    }

    /// Adds `x`; false when it was already there.
    pub fn insert(&mut self, x: u64) -> bool {
        if self.contains(x) {
            return false;
        }
        self.insert_range(x, x + 1);
        true
    }

    /// Adds `[start, end)`, merging with neighbours.
    pub fn insert_range(&mut self, mut start: u64, mut end: u64) {
        if start >= end {
            return;
        }
        if let Some((&s, &e)) = self.ranges.range(..=start).next_back()
            && e >= start
        {
            start = s;
            end = end.max(e);
            self.ranges.remove(&s);
        }
        while let Some((&s, &e)) = self.ranges.range(start..=end).next() {
            end = end.max(e);
            self.ranges.remove(&s);
        }
        self.ranges.insert(start, end);
    }

    /// Forgets everything below `low`.
    pub fn remove_below(&mut self, low: u64) {
        let keep = self.ranges.split_off(&low);
        if let Some((&s, &e)) = self.ranges.iter().next_back()
            && e > low
        {
            let _ = s;
            self.ranges = keep;
            self.ranges.insert(low, e);
            return;
        }
        self.ranges = keep;
    }

    /// How many members lie in `[start, end)`.
    pub fn count_in(&self, start: u64, end: u64) -> u64 {
        if start >= end {
            return 0;
        }
        let mut n = 0;
        if let Some((_, &e)) = self.ranges.range(..start).next_back()
            && e > start
        {
            n += e.min(end) - start;
        }
        for (&s, &e) in self.ranges.range(start..end) {
            n += e.min(end) - s;
        }
        n
    }

    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().map(|(&s, &e)| (s, e))
    }
}
