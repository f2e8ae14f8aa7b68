//! The Raft log, hard state and conf state, durable in sled: raft-rs's `Storage` contract.
//!
//! Layout of the `raft` tree (one tree, so one `apply_batch` is atomic for everything in it):
//!
//! ```text
//!   'e' + index (u64 BE)  ->  eraftpb.Entry        the log, in index order
//!   "m/hardstate"         ->  eraftpb.HardState    term, vote, commit
//!   "m/snapshot"          ->  index (u64 BE) + term (u64 BE): where the log was truncated
//! ```
//!
//! The conf state is part of the replicated state, so it lives in the `state` tree beside the
//! applied index (key `m/confstate`) and changes atomically with it.
//!
//! Rules the node loop relies on:
//! - [`RaftStorage::persist`] writes new entries and the hard state in **one** batch; entries that
//!   conflict with (follow) the first new one are removed in the same batch. It does not flush: the
//!   loop flushes once per Ready (group commit) before anything that depends on durability.
//! - The newest entries are also kept in memory (`tail`), because raft-rs reads every entry back
//!   right after persisting it, to apply it.
//! - [`RaftStorage::compact`] drops entries up to an index that is applied *and flushed*.
//!
//! Left out (replication, a later issue): [`Storage::snapshot`] answers
//! `SnapshotTemporarilyUnavailable`. A lone voter never needs a snapshot: raft-rs asks for one only
//! to catch up a follower whose entries were compacted away.

use std::collections::VecDeque;

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};

use crate::error::{Error, Result};

/// Prefix of entry keys in the raft tree.
const ENTRY_PREFIX: u8 = b'e';
/// Raft tree key of the hard state.
const KEY_HARD_STATE: &[u8] = b"m/hardstate";
/// Raft tree key of the truncation point.
const KEY_SNAPSHOT: &[u8] = b"m/snapshot";
/// State tree key of the conf state.
pub const KEY_CONF_STATE: &[u8] = b"m/confstate";
/// How many of the newest entries are cached in memory.
const TAIL_CAPACITY: usize = 4096;

fn entry_key(index: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = ENTRY_PREFIX;
    key[1..].copy_from_slice(&index.to_be_bytes());
    key
}

/// raft-rs storage over sled.
pub struct RaftStorage {
    /// The `raft` tree: entries, hard state, truncation point.
    log: sled::Tree,
    /// The persisted hard state, cached.
    hard_state: HardState,
    /// The conf state (persisted in the state tree), cached.
    conf_state: ConfState,
    /// Index and term of the last entry removed by compaction (0, 0 if none).
    truncated: (u64, u64),
    /// Index of the last entry in the log (= `truncated.0` when the log is empty).
    last_index: u64,
    /// The newest entries, contiguous and ending at `last_index`.
    tail: VecDeque<Entry>,
}

impl RaftStorage {
    /// Opens the log. `bootstrap` is the conf state of a brand-new member; it is written to
    /// `state` (with nothing else) the first time, and ignored once a conf state exists.
    pub fn open(log: sled::Tree, state: &sled::Tree, bootstrap: ConfState) -> Result<Self> {
        let hard_state = match log.get(KEY_HARD_STATE)? {
            Some(bytes) => HardState::parse_from_bytes(&bytes)?,
            None => HardState::default(),
        };
        let conf_state = match state.get(KEY_CONF_STATE)? {
            Some(bytes) => ConfState::parse_from_bytes(&bytes)?,
            None => {
                state.insert(KEY_CONF_STATE, bootstrap.write_to_bytes()?)?;
                bootstrap
            }
        };
        let truncated = match log.get(KEY_SNAPSHOT)? {
            Some(bytes) if bytes.len() == 16 => (
                u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes")),
                u64::from_be_bytes(bytes[8..].try_into().expect("8 bytes")),
            ),
            Some(_) => return Err(Error::Corrupt("bad log truncation record".into())),
            None => (0, 0),
        };
        let last_index = match log.scan_prefix([ENTRY_PREFIX]).next_back() {
            Some(item) => Entry::parse_from_bytes(&item?.1)?.index,
            None => truncated.0,
        };
        let storage = RaftStorage {
            log,
            hard_state,
            conf_state,
            truncated,
            last_index,
            tail: VecDeque::new(),
        };
        storage.check_contiguous()?;
        Ok(storage)
    }

    /// Verifies that the stored log has no holes (a damaged data dir is refused, not served).
    fn check_contiguous(&self) -> Result<()> {
        let expected = self.truncated.0 + 1..;
        for (expected, item) in expected.zip(self.log.scan_prefix([ENTRY_PREFIX])) {
            let (key, _) = item?;
            let index = u64::from_be_bytes(
                key[1..]
                    .try_into()
                    .map_err(|_| Error::Corrupt("bad entry key".into()))?,
            );
            if index != expected {
                return Err(Error::Corrupt(format!(
                    "raft log hole: expected entry {expected}, found {index}"
                )));
            }
        }
        Ok(())
    }

    /// The voters of the current configuration.
    pub fn voters(&self) -> &[u64] {
        &self.conf_state.voters
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// Repairs a commit index that is behind what was applied. sled writes reach disk in order but
    /// the commit index is persisted lazily, so after a crash the applied index may be ahead of it;
    /// every applied entry was committed, so raising the commit index is only remembering that.
    pub fn raise_commit(&mut self, applied: u64) -> Result<()> {
        if self.hard_state.commit < applied {
            assert!(
                applied <= self.last_index,
                "applied entry {applied} is missing from the log"
            );
            let mut hs = self.hard_state.clone();
            hs.commit = applied;
            self.log.insert(KEY_HARD_STATE, hs.write_to_bytes()?)?;
            self.hard_state = hs;
        }
        Ok(())
    }

    /// Appends `entries` (removing any conflicting suffix) and sets the hard state, in one batch.
    pub fn persist(&mut self, entries: &[Entry], hs: Option<&HardState>) -> Result<()> {
        let mut batch = sled::Batch::default();
        if let Some(first) = entries.first() {
            assert!(
                first.index > self.truncated.0 && first.index <= self.last_index + 1,
                "entries starting at {} do not attach to a log ending at {}",
                first.index,
                self.last_index
            );
            for stale in first.index..=self.last_index {
                batch.remove(&entry_key(stale));
            }
            for e in entries {
                batch.insert(&entry_key(e.index), e.write_to_bytes()?);
            }
        }
        if let Some(hs) = hs {
            let mut hs = hs.clone();
            hs.commit = hs.commit.max(self.hard_state.commit);
            self.hard_state = hs;
        }
        batch.insert(KEY_HARD_STATE, self.hard_state.write_to_bytes()?);
        self.log.apply_batch(batch)?;
        if let (Some(first), Some(last)) = (entries.first(), entries.last()) {
            self.cache(first.index, entries);
            self.last_index = last.index;
        }
        Ok(())
    }

    fn cache(&mut self, first: u64, entries: &[Entry]) {
        while self.tail.back().is_some_and(|e| e.index >= first) {
            self.tail.pop_back();
        }
        if self.tail.back().is_some_and(|e| e.index + 1 != first) {
            self.tail.clear();
        }
        self.tail.extend(entries.iter().cloned());
        while self.tail.len() > TAIL_CAPACITY {
            self.tail.pop_front();
        }
    }

    /// Records the commit index raft-rs reported in a light ready. It is kept in memory and written
    /// with the next [`RaftStorage::persist`]: a commit index need not be durable (Raft recovers it
    /// from a quorum; a lone member from its applied index, see [`RaftStorage::raise_commit`]), and
    /// every sled batch costs a sealed IO buffer.
    pub fn set_commit(&mut self, commit: u64) {
        self.hard_state.commit = commit;
    }

    /// Removes entries up to and including `index`, which must be applied and durable.
    pub fn compact(&mut self, index: u64) -> Result<()> {
        if index <= self.truncated.0 {
            return Ok(());
        }
        assert!(
            index <= self.last_index,
            "compacting past the end of the log"
        );
        let term = self.term_of(index)?;
        let mut batch = sled::Batch::default();
        for i in self.truncated.0 + 1..=index {
            batch.remove(&entry_key(i));
        }
        let mut record = index.to_be_bytes().to_vec();
        record.extend_from_slice(&term.to_be_bytes());
        batch.insert(KEY_SNAPSHOT, record);
        self.log.apply_batch(batch)?;
        self.truncated = (index, term);
        while self.tail.front().is_some_and(|e| e.index <= index) {
            self.tail.pop_front();
        }
        Ok(())
    }

    pub fn first_index(&self) -> u64 {
        self.truncated.0 + 1
    }

    pub fn last_index(&self) -> u64 {
        self.last_index
    }

    fn term_of(&self, index: u64) -> Result<u64> {
        if index == self.truncated.0 {
            return Ok(self.truncated.1);
        }
        Ok(self.entry(index)?.term)
    }

    fn entry(&self, index: u64) -> Result<Entry> {
        if let Some(front) = self.tail.front()
            && index >= front.index
            && let Some(e) = self.tail.get((index - front.index) as usize)
        {
            return Ok(e.clone());
        }
        let bytes = self
            .log
            .get(entry_key(index))?
            .ok_or_else(|| Error::Corrupt(format!("raft entry {index} missing")))?;
        Ok(Entry::parse_from_bytes(&bytes)?)
    }
}

fn store_err(err: Error) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(err)))
}

impl raft::Storage for RaftStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState {
            hard_state: self.hard_state.clone(),
            conf_state: self.conf_state.clone(),
        })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.truncated.0 {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last_index + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let max_size = max_size.into();
        let mut out = Vec::with_capacity((high - low) as usize);
        let mut size = 0u64;
        for index in low..high {
            let e = self.entry(index).map_err(store_err)?;
            size += u64::from(protobuf::Message::compute_size(&e));
            if !out.is_empty() && max_size.is_some_and(|max| size > max) {
                break;
            }
            out.push(e);
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.truncated.0 {
            return Ok(self.truncated.1);
        }
        if idx < self.truncated.0 {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last_index {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        self.term_of(idx).map_err(store_err)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index)
    }

    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        Err(raft::Error::Store(
            StorageError::SnapshotTemporarilyUnavailable,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: format!("entry {index}").into_bytes().into(),
            ..Default::default()
        }
    }

    fn open(db: &sled::Db) -> RaftStorage {
        let cs = ConfState {
            voters: vec![1],
            ..Default::default()
        };
        RaftStorage::open(
            db.open_tree("raft").unwrap(),
            &db.open_tree("state").unwrap(),
            cs,
        )
        .unwrap()
    }

    fn ctx() -> GetEntriesContext {
        GetEntriesContext::empty(false)
    }

    #[test]
    fn a_new_log_is_empty_with_the_bootstrap_conf_state() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let s = open(&db);
        assert_eq!((s.first_index(), s.last_index()), (1, 0));
        assert_eq!(Storage::term(&s, 0).unwrap(), 0);
        assert_eq!(s.initial_state().unwrap().conf_state.voters, vec![1]);
    }

    /// Worked example: append 1..=3 in term 1, then a new leader overwrites 3.. with term 2.
    #[test]
    fn conflicting_entries_are_replaced() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let mut s = open(&db);
        s.persist(&[entry(1, 1), entry(2, 1), entry(3, 1)], None)
            .unwrap();
        s.persist(&[entry(3, 2), entry(4, 2)], None).unwrap();
        let terms: Vec<u64> = s
            .entries(1, 5, None, ctx())
            .unwrap()
            .iter()
            .map(|e| e.term)
            .collect();
        assert_eq!(terms, vec![1, 1, 2, 2]);
        // The same answer from disk, after a restart (no cache).
        drop(s);
        let s = open(&db);
        let terms: Vec<u64> = s
            .entries(1, 5, None, ctx())
            .unwrap()
            .iter()
            .map(|e| e.term)
            .collect();
        assert_eq!(terms, vec![1, 1, 2, 2]);
        assert_eq!(s.last_index(), 4);
    }

    #[test]
    fn shorter_overwrite_truncates_the_tail() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let mut s = open(&db);
        s.persist(&[entry(1, 1), entry(2, 1), entry(3, 1)], None)
            .unwrap();
        s.persist(&[entry(2, 3)], None).unwrap();
        assert_eq!(s.last_index(), 2);
        drop(s);
        assert_eq!(open(&db).last_index(), 2, "entry 3 is gone from disk too");
    }

    #[test]
    fn hard_state_survives_restart() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let mut s = open(&db);
        let hs = HardState {
            term: 5,
            vote: 1,
            commit: 0,
            ..Default::default()
        };
        s.persist(&[entry(1, 5)], Some(&hs)).unwrap();
        s.set_commit(1);
        drop(s);
        let s = open(&db);
        assert_eq!(
            (
                s.hard_state().term,
                s.hard_state().vote,
                s.hard_state().commit
            ),
            (5, 1, 0),
            "a commit index alone is not written"
        );
        let mut s = s;
        s.set_commit(1);
        s.persist(&[entry(2, 5)], None).unwrap();
        drop(s);
        let s = open(&db);
        assert_eq!(
            s.hard_state().commit,
            1,
            "it is written with the next entries"
        );
    }

    #[test]
    fn compaction_keeps_the_term_of_the_truncation_point() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let mut s = open(&db);
        s.persist(
            &(1..=5).map(|i| entry(i, 1 + i / 3)).collect::<Vec<_>>(),
            None,
        )
        .unwrap();
        s.compact(3).unwrap();
        assert_eq!(s.first_index(), 4);
        assert_eq!(
            Storage::term(&s, 3).unwrap(),
            2,
            "term of the last compacted entry is kept"
        );
        assert!(matches!(
            s.entries(3, 5, None, ctx()),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        assert!(matches!(
            Storage::term(&s, 2),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        drop(s);
        let s = open(&db);
        assert_eq!((s.first_index(), s.last_index()), (4, 5));
        assert_eq!(s.entries(4, 6, None, ctx()).unwrap().len(), 2);
    }

    #[test]
    fn max_size_returns_at_least_one_entry() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let mut s = open(&db);
        s.persist(&[entry(1, 1), entry(2, 1)], None).unwrap();
        assert_eq!(s.entries(1, 3, Some(1), ctx()).unwrap().len(), 1);
    }
}
