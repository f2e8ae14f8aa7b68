//! Per-watcher delivery check for `watch-fanout`: did every watcher see every put exactly once,
//! in revision order?
//!
//! A watcher's log is kept as a set of revision ranges, not a list of revisions: when the server
//! delivers in order and without gaps (the normal case) the set is one range whatever the number
//! of events, so 10,000 watchers cost a few hundred KiB however long the run. The expected
//! revisions (the puts' acknowledged revisions) are only known once the writers stop, so the log
//! is compared with them at the end ([`WatcherLog::check`]).
//!
//! What is counted, per watcher:
//! * `duplicates`: an event whose revision this watcher had already received;
//! * `out_of_order`: an event whose revision is below the highest one received before it (and
//!   that is not a duplicate);
//! * `missing`: expected revisions never received;
//! * `unexpected`: revisions received that no acknowledged put had (e.g. a put that timed out on
//!   the client but was applied, or a write by someone else under the prefix).

use std::cmp::{max, min};

pub type Revision = i64;

/// A set of revisions as sorted, disjoint, non-adjacent inclusive ranges.
///
/// Invariants: `ranges[i].0 <= ranges[i].1`, and `ranges[i].1 + 1 < ranges[i + 1].0`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevisionSet {
    ranges: Vec<(Revision, Revision)>,
}

impl RevisionSet {
    /// The set of `revisions` (any order, duplicates ignored).
    pub fn from_revisions(mut revisions: Vec<Revision>) -> Self {
        revisions.sort_unstable();
        let mut set = RevisionSet::default();
        for r in revisions {
            set.insert(r);
        }
        set
    }

    /// Adds `rev`; false if it was already there. Appending above the maximum is O(1).
    pub fn insert(&mut self, rev: Revision) -> bool {
        if let Some(last) = self.ranges.last_mut() {
            if rev == last.1 + 1 {
                last.1 = rev;
                return true;
            }
            if rev > last.1 {
                self.ranges.push((rev, rev));
                return true;
            }
        } else {
            self.ranges.push((rev, rev));
            return true;
        }
        // Below the maximum: find the first range that ends at or after rev.
        let i = self.ranges.partition_point(|r| r.1 < rev);
        if self.ranges[i].0 <= rev {
            return false;
        }
        let joins_prev = i > 0 && self.ranges[i - 1].1 + 1 == rev;
        let joins_next = self.ranges[i].0 == rev + 1;
        match (joins_prev, joins_next) {
            (true, true) => {
                self.ranges[i - 1].1 = self.ranges[i].1;
                self.ranges.remove(i);
            }
            (true, false) => self.ranges[i - 1].1 = rev,
            (false, true) => self.ranges[i].0 = rev,
            (false, false) => self.ranges.insert(i, (rev, rev)),
        }
        true
    }

    pub fn len(&self) -> u64 {
        self.ranges.iter().map(|r| (r.1 - r.0 + 1) as u64).sum()
    }

    /// How many revisions are in both sets (one merge walk over the ranges).
    pub fn intersection_len(&self, other: &RevisionSet) -> u64 {
        let (mut i, mut j, mut n) = (0, 0, 0u64);
        while i < self.ranges.len() && j < other.ranges.len() {
            let (a, b) = (self.ranges[i], other.ranges[j]);
            let (lo, hi) = (max(a.0, b.0), min(a.1, b.1));
            if lo <= hi {
                n += (hi - lo + 1) as u64;
            }
            if a.1 < b.1 { i += 1 } else { j += 1 }
        }
        n
    }
}

/// What one watcher received.
#[derive(Debug, Clone, Default)]
pub struct WatcherLog {
    /// Distinct revisions received.
    received: RevisionSet,
    /// The highest revision received so far, to tell out-of-order events.
    highest: Revision,
    /// Events received, duplicates included.
    pub events: u64,
    duplicates: u64,
    out_of_order: u64,
}

/// The outcome of comparing logs with the expected revisions, summed over watchers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delivery {
    /// Events received, duplicates and unexpected ones included.
    pub events: u64,
    /// Expected (watcher, revision) pairs that were received.
    pub delivered: u64,
    pub missing: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub unexpected: u64,
}

impl WatcherLog {
    /// Records one received event.
    pub fn record(&mut self, rev: Revision) {
        self.events += 1;
        let below = rev < self.highest;
        if !self.received.insert(rev) {
            self.duplicates += 1;
        } else if below {
            self.out_of_order += 1;
        }
        self.highest = self.highest.max(rev);
    }

    /// The highest revision received (0 before the first event).
    pub fn highest(&self) -> Revision {
        self.highest
    }

    /// Compares this log with the revisions the watcher should have received.
    pub fn check(&self, expected: &RevisionSet) -> Delivery {
        let delivered = self.received.intersection_len(expected);
        Delivery {
            events: self.events,
            delivered,
            missing: expected.len() - delivered,
            duplicates: self.duplicates,
            out_of_order: self.out_of_order,
            unexpected: self.received.len() - delivered,
        }
    }
}

impl std::ops::AddAssign for Delivery {
    fn add_assign(&mut self, o: Delivery) {
        self.events += o.events;
        self.delivered += o.delivered;
        self.missing += o.missing;
        self.duplicates += o.duplicates;
        self.out_of_order += o.out_of_order;
        self.unexpected += o.unexpected;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(revs: &[Revision]) -> WatcherLog {
        let mut log = WatcherLog::default();
        for &r in revs {
            log.record(r);
        }
        log
    }

    #[test]
    fn a_set_merges_ranges_in_any_order() {
        let mut set = RevisionSet::default();
        for r in [5, 6, 7, 10, 1, 3, 2, 9, 8] {
            assert!(set.insert(r));
        }
        assert_eq!(set.ranges, vec![(1, 3), (5, 10)]);
        assert!(!set.insert(6));
        assert!(set.insert(4));
        assert_eq!(set.ranges, vec![(1, 10)]);
        assert_eq!(set.len(), 10);
    }

    #[test]
    fn intersection_counts_common_revisions() {
        let a = RevisionSet::from_revisions(vec![1, 2, 3, 7, 8, 20]);
        let b = RevisionSet::from_revisions(vec![2, 3, 4, 5, 6, 7, 21]);
        assert_eq!(a.intersection_len(&b), 3);
        assert_eq!(b.intersection_len(&a), 3);
        assert_eq!(a.intersection_len(&RevisionSet::default()), 0);
    }

    #[test]
    fn an_in_order_complete_log_is_clean() {
        let expected = RevisionSet::from_revisions((10..=20).collect());
        let d = log(&(10..=20).collect::<Vec<_>>()).check(&expected);
        assert_eq!(
            d,
            Delivery {
                events: 11,
                delivered: 11,
                ..Delivery::default()
            }
        );
    }

    #[test]
    fn gaps_duplicates_reordering_and_strangers_are_counted() {
        // Expected 10..=15 plus 17 (16 was someone else's write, or a timed-out put).
        let expected = RevisionSet::from_revisions(vec![10, 11, 12, 13, 14, 15, 17]);
        let d = log(&[10, 11, 11, 13, 12, 16, 17, 17]).check(&expected);
        assert_eq!(
            d,
            Delivery {
                events: 8,
                delivered: 5,    // 10 11 12 13 17
                missing: 2,      // 14 15
                duplicates: 2,   // the second 11 and 17
                out_of_order: 1, // 12 after 13
                unexpected: 1,   // 16
            }
        );
    }

    #[test]
    fn a_silent_watcher_misses_everything() {
        let expected = RevisionSet::from_revisions(vec![3, 4, 9]);
        let d = WatcherLog::default().check(&expected);
        assert_eq!((d.delivered, d.missing), (0, 3));
    }
}
