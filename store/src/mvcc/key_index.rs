//! The in-memory index: for every key, the revisions at which it changed.
//!
//! Values live in sled under their [`Revision`]; this index answers "which revision holds key K as
//! of revision R?" without touching disk. It is rebuilt from history on start.
//!
//! A key's life is a list of *generations*. A generation starts when the key is created and ends
//! with a tombstone when it is deleted; putting the key again starts a new generation. The last
//! generation is the open one; it is empty while the key does not exist. A worked example (etcd's,
//! from `key_index.go`):
//!
//! ```text
//! put(1.0); put(2.0); tombstone(3.0); put(4.0); tombstone(5.0)  on key "foo"
//!   generations: {1.0, 2.0, 3.0(t)}  {4.0, 5.0(t)}  {}
//!
//! compact(2): {2.0, 3.0(t)}  {4.0, 5.0(t)}  {}     1.0 is gone, 2.0 answers reads at 2
//! compact(4): {4.0, 5.0(t)}  {}                    the first generation ended before 4
//! compact(5): {}  -> the key is dropped from the index
//! ```
//!
//! Invariants (checked with `assert!` where they are relied on):
//! - revisions inside a key's history strictly increase, across generations too;
//! - every generation but the last is non-empty and ends with its tombstone;
//! - `version` of a live key = number of revisions in its open generation.

use std::collections::BTreeMap;
use std::ops::Bound;

use super::revision::{Rev, Revision};

/// One life of a key, from its creation to its deletion.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Generation {
    /// The revision that created the key in this life (its `create_revision`).
    created: Revision,
    /// The key's `version` at the newest revision of this life (kept apart from `revs`, which
    /// compaction trims).
    ver: i64,
    /// Every change in this life still retained, in order; a closed generation ends with its
    /// tombstone.
    revs: Vec<Revision>,
}

/// The history of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyIndex {
    /// Lives of the key, oldest first; the last one is open (possibly empty: key deleted).
    generations: Vec<Generation>,
}

impl Default for KeyIndex {
    fn default() -> Self {
        KeyIndex {
            generations: vec![Generation::default()],
        }
    }
}

impl KeyIndex {
    /// Records a put at `rev`; returns the key's `(create_revision, version)` after it.
    fn put(&mut self, rev: Revision) -> (Rev, i64) {
        assert!(
            self.last_revision().is_none_or(|last| last < rev),
            "put at {rev:?} is not after the key's last revision"
        );
        let g = self.open_generation();
        if g.revs.is_empty() {
            g.created = rev;
            g.ver = 0;
        }
        g.ver += 1;
        g.revs.push(rev);
        (g.created.main, g.ver)
    }

    /// Records a put read back from history on start, with the create revision and version the
    /// record carries (older revisions may have been compacted away).
    fn restore(&mut self, rev: Revision, created: Revision, ver: i64) {
        self.put(rev);
        let g = self.open_generation();
        g.created = created;
        g.ver = ver;
    }

    /// Records a deletion at `rev`; the key must be live.
    fn tombstone(&mut self, rev: Revision) {
        assert!(self.is_live(), "tombstone of a key that does not exist");
        self.put(rev);
        self.generations.push(Generation::default());
    }

    /// Takes back the newest change, made at `rev` (a put or a tombstone): the inverse of
    /// [`KeyIndex::put`] / [`KeyIndex::tombstone`], for a transaction that fails after writing.
    fn undo(&mut self, rev: Revision) {
        let last = self.generations.len() - 1;
        if last > 0
            && self.generations[last].revs.is_empty()
            && self.generations[last - 1].revs.last() == Some(&rev)
        {
            self.generations.pop(); // the generation the tombstone opened
        }
        let g = self.open_generation();
        assert_eq!(
            g.revs.pop(),
            Some(rev),
            "undo of a change that is not the key's newest"
        );
        g.ver -= 1;
    }

    fn open_generation(&mut self) -> &mut Generation {
        self.generations
            .last_mut()
            .expect("a key index always has an open generation")
    }

    fn last_revision(&self) -> Option<Revision> {
        self.generations
            .iter()
            .rev()
            .find_map(|g| g.revs.last().copied())
    }

    /// Whether the key exists now.
    pub fn is_live(&self) -> bool {
        !self.generations.last().is_some_and(|g| g.revs.is_empty())
    }

    /// The revision holding the key's value as of main revision `at`; `None` if the key did not
    /// exist then (never created, deleted, or compacted away).
    pub fn get(&self, at: Rev) -> Option<Revision> {
        let last = self.generations.len() - 1;
        for (i, g) in self.generations.iter().enumerate().rev() {
            let Some(first) = g.revs.first() else {
                continue;
            };
            if first.main > at {
                continue;
            }
            // This generation had started at `at`. A closed one may also have ended by then.
            let closed = i != last;
            let newest = g.revs.iter().rev().find(|r| r.main <= at).copied()?;
            let is_tombstone = closed && Some(&newest) == g.revs.last();
            return (!is_tombstone).then_some(newest);
        }
        None
    }

    /// Removes history that no read at revision `at` or later needs: in each generation every
    /// revision ≤ `at` except the newest, and whole generations that ended (tombstone) at or before
    /// `at`. Returns the removed revisions. The index is empty afterwards if nothing is left.
    fn compact(&mut self, at: Rev) -> Vec<Revision> {
        let mut removed = Vec::new();
        let last = self.generations.len() - 1;
        let mut keep_from = 0;
        for (i, g) in self.generations.iter_mut().enumerate() {
            let closed = i != last;
            if closed && g.revs.last().is_some_and(|t| t.main <= at) {
                // The whole life ended at or before `at`: nobody can read it any more.
                removed.append(&mut g.revs);
                keep_from = i + 1;
                continue;
            }
            // Keep the newest revision ≤ `at` (it answers reads at `at`), drop older ones.
            let older = g.revs.iter().take_while(|r| r.main <= at).count();
            if older > 1 {
                removed.extend(g.revs.drain(..older - 1));
            }
        }
        self.generations.drain(..keep_from);
        removed
    }

    /// Whether nothing at all is recorded (the key can be dropped from the index).
    fn is_empty(&self) -> bool {
        self.generations.len() == 1 && self.generations[0].revs.is_empty()
    }
}

/// The index over all keys, ordered by key for range scans.
#[derive(Debug, Default)]
pub struct TreeIndex {
    keys: BTreeMap<Vec<u8>, KeyIndex>,
}

/// A key range as etcd spells it: `end` empty = the single key, `end == "\0"` = every key ≥ `key`,
/// otherwise the half-open range `[key, end)` (empty when `end <= key`).
#[derive(Debug, Clone, Copy)]
pub struct KeyRange<'a> {
    pub key: &'a [u8],
    pub end: &'a [u8],
}

impl<'a> KeyRange<'a> {
    pub fn new(key: &'a [u8], end: &'a [u8]) -> Self {
        KeyRange { key, end }
    }

    /// Whether `k` lies in the range.
    pub fn contains(&self, k: &[u8]) -> bool {
        match self.end {
            [] => k == self.key,
            [0] => k >= self.key,
            end => k >= self.key && k < end,
        }
    }
}

impl TreeIndex {
    /// Records a put; returns the key's `(create_revision, version)` after it.
    pub fn put(&mut self, key: &[u8], rev: Revision) -> (Rev, i64) {
        self.entry(key).put(rev)
    }

    /// Records a put found in history on start (see [`KeyIndex::restore`]).
    pub fn restore(&mut self, key: &[u8], rev: Revision, created: Rev, ver: i64) {
        self.entry(key).restore(rev, Revision::new(created, 0), ver);
    }

    fn entry(&mut self, key: &[u8]) -> &mut KeyIndex {
        if !self.keys.contains_key(key) {
            self.keys.insert(key.to_vec(), KeyIndex::default());
        }
        self.keys.get_mut(key).expect("inserted above")
    }

    pub fn tombstone(&mut self, key: &[u8], rev: Revision) {
        self.keys
            .get_mut(key)
            .expect("tombstone of a key missing from the index")
            .tombstone(rev);
    }

    /// Takes back the newest change of `key`, made at `rev` (see [`KeyIndex::undo`]).
    pub fn undo(&mut self, key: &[u8], rev: Revision) {
        let ki = self
            .keys
            .get_mut(key)
            .expect("undo of a key missing from the index");
        ki.undo(rev);
        if ki.is_empty() {
            self.keys.remove(key);
        }
    }

    /// The revision holding `key` as of `at`.
    pub fn get(&self, key: &[u8], at: Rev) -> Option<Revision> {
        self.keys.get(key)?.get(at)
    }

    /// Visits, in key order, every key of `range` that existed at `at`, with the revision holding
    /// it; stops when `visit` returns false.
    pub fn range(
        &self,
        range: KeyRange<'_>,
        at: Rev,
        mut visit: impl FnMut(&[u8], Revision) -> bool,
    ) {
        let upper = match range.end {
            [] => Bound::Included(range.key),
            [0] => Bound::Unbounded,
            end if end <= range.key => return,
            end => Bound::Excluded(end),
        };
        for (k, ki) in self
            .keys
            .range::<[u8], _>((Bound::Included(range.key), upper))
        {
            if let Some(rev) = ki.get(at)
                && !visit(k, rev)
            {
                return;
            }
        }
    }

    /// Keys of `range` that are live now (what a delete-range at the current revision removes).
    pub fn live_keys(&self, range: KeyRange<'_>, at: Rev) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        self.range(range, at, |k, _| {
            out.push(k.to_vec());
            true
        });
        out
    }

    /// Compacts every key (see [`KeyIndex::compact`]); returns the revisions whose values are no
    /// longer needed.
    pub fn compact(&mut self, at: Rev) -> Vec<Revision> {
        let mut removed = Vec::new();
        self.keys.retain(|_, ki| {
            removed.extend(ki.compact(at));
            !ki.is_empty()
        });
        removed
    }

    /// Number of keys with any history (live or not).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(main: Rev) -> Revision {
        Revision::new(main, 0)
    }

    /// The module doc's example: put 1, put 2, delete 3, put 4, delete 5.
    fn example() -> KeyIndex {
        let mut ki = KeyIndex::default();
        assert_eq!(ki.put(r(1)), (1, 1));
        assert_eq!(ki.put(r(2)), (1, 2));
        ki.tombstone(r(3));
        assert_eq!(ki.put(r(4)), (4, 1), "a new life starts at version 1");
        ki.tombstone(r(5));
        ki
    }

    #[test]
    fn get_follows_generations() {
        let ki = example();
        assert_eq!(ki.get(0), None, "before creation");
        assert_eq!(ki.get(1), Some(r(1)));
        assert_eq!(ki.get(2), Some(r(2)));
        assert_eq!(ki.get(3), None, "deleted at 3");
        assert_eq!(ki.get(4), Some(r(4)), "recreated at 4");
        assert_eq!(ki.get(5), None);
        assert_eq!(ki.get(100), None);
        assert!(!ki.is_live());
    }

    #[test]
    fn compaction_keeps_what_reads_at_or_after_need() {
        let mut ki = example();
        assert_eq!(ki.compact(2), vec![r(1)]);
        assert_eq!(
            ki.get(2),
            Some(r(2)),
            "the value visible at the compact revision stays"
        );
        assert_eq!(ki.get(4), Some(r(4)));

        assert_eq!(ki.compact(4), vec![r(2), r(3)]);
        assert_eq!(ki.get(4), Some(r(4)));
        assert!(!ki.is_empty());

        assert_eq!(ki.compact(5), vec![r(4), r(5)]);
        assert!(
            ki.is_empty(),
            "a key deleted at or before the compact revision is forgotten"
        );
    }

    #[test]
    fn undo_takes_back_puts_and_tombstones() {
        let mut ki = example(); // ... put 4, tombstone 5
        ki.undo(r(5));
        assert!(ki.is_live(), "undoing the tombstone revives the key");
        assert_eq!(ki.get(10), Some(r(4)));
        ki.undo(r(4));
        assert!(!ki.is_live());
        assert_eq!(
            ki.put(r(6)),
            (6, 1),
            "the next put starts a fresh generation again"
        );
        let mut index = TreeIndex::default();
        index.put(b"new", r(7));
        index.undo(b"new", r(7));
        assert!(index.is_empty(), "a key created and undone is forgotten");
    }

    #[test]
    fn compaction_of_a_live_key_keeps_its_current_value() {
        let mut ki = KeyIndex::default();
        ki.put(r(2));
        ki.put(r(3));
        ki.put(r(4));
        assert_eq!(ki.compact(10), vec![r(2), r(3)]);
        assert_eq!(ki.get(10), Some(r(4)));
        assert!(ki.is_live());
        assert_eq!(
            ki.put(r(11)),
            (2, 4),
            "compaction keeps create revision and version"
        );
    }

    #[test]
    fn ranges_follow_etcd_conventions() {
        let mut index = TreeIndex::default();
        for (i, k) in ["a", "b", "c"].iter().enumerate() {
            index.put(k.as_bytes(), r(i as Rev + 2));
        }
        let keys = |key: &str, end: &[u8]| index.live_keys(KeyRange::new(key.as_bytes(), end), 10);
        assert_eq!(keys("b", b""), vec![b"b".to_vec()], "single key");
        assert_eq!(
            keys("b", b"\0"),
            vec![b"b".to_vec(), b"c".to_vec()],
            "from key"
        );
        assert_eq!(
            keys("a", b"c"),
            vec![b"a".to_vec(), b"b".to_vec()],
            "half-open"
        );
        assert!(
            keys("c", b"a").is_empty(),
            "an end before the key is an empty range"
        );
        assert_eq!(
            index.live_keys(KeyRange::new(b"a", b"c"), 2),
            vec![b"a".to_vec()],
            "as of rev 2"
        );
    }
}
