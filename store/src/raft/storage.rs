//! The Raft log, hard state and conf state, durable in sled: raft-rs's `Storage` contract.
//!
//! Like etcd (whose raft log is a `MemoryStorage` backed by a WAL), every entry since the last
//! compaction is held in memory and served from there; sled makes them durable. Entries reach
//! sled in *chunks*: all the entries of one Ready are one record, so a Ready costs one insert
//! whatever its size. Layout of the `raft` tree (one tree, so one `apply_batch` is atomic for
//! everything in it):
//!
//! ```text
//!   'c' + first index (u64 BE) -> chunk: (u32 BE length, eraftpb.Entry)*   consecutive entries
//!   "m/hardstate"              -> eraftpb.HardState   term, vote, commit
//!   "m/snapshot"               -> index (u64 BE) + term (u64 BE): where the log was truncated
//! ```
//!
//! The conf state is part of the replicated state, so it lives in the `state` tree (key
//! `m/confstate`).
//!
//! Rules the node loop relies on:
//! - [`RaftStorage::persist`] writes new entries and the hard state in **one** batch. New entries
//!   that conflict with stored ones replace them: chunks after the conflict are removed and the
//!   chunk it cuts through is rewritten shorter, in the same batch. It does not flush: the loop
//!   flushes once per Ready (group commit) before anything that depends on durability.
//! - [`RaftStorage::compact`] drops entries up to an index whose state is applied *and durable*
//!   in sled. Memory is trimmed at once; on disk, the truncation record and then the chunks wholly
//!   below it are removed a few at a time by the following persists, so compacting a hundred
//!   thousand entries never stalls one turn of the loop. Chunks (or parts of a chunk) at or below
//!   the truncation point are skipped when the log is read back on start.
//!
//! Left out (replication, a later issue): [`Storage::snapshot`] answers
//! `SnapshotTemporarilyUnavailable`. A lone voter never needs a snapshot: raft-rs asks for one only
//! to catch up a follower whose entries were compacted away.

use std::collections::{BTreeMap, VecDeque};

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};

use crate::error::{Error, Result};

/// Prefix of chunk keys in the raft tree.
const CHUNK_PREFIX: u8 = b'c';
/// Raft tree key of the hard state.
const KEY_HARD_STATE: &[u8] = b"m/hardstate";
/// Raft tree key of the truncation point.
const KEY_SNAPSHOT: &[u8] = b"m/snapshot";
/// State tree key of the conf state.
pub const KEY_CONF_STATE: &[u8] = b"m/confstate";
/// Most compacted chunks one persist removes from sled.
const REMOVALS_PER_PERSIST: usize = 32;

fn chunk_key(first: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = CHUNK_PREFIX;
    key[1..].copy_from_slice(&first.to_be_bytes());
    key
}

fn encode_chunk(entries: &[Entry]) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    for e in entries {
        let bytes = e.write_to_bytes()?;
        buf.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        buf.extend_from_slice(&bytes);
    }
    Ok(buf)
}

fn decode_chunk(mut bytes: &[u8]) -> Result<Vec<Entry>> {
    let mut entries = Vec::new();
    while !bytes.is_empty() {
        let corrupt = || Error::Corrupt("truncated raft log chunk".into());
        let (len, rest) = bytes.split_at_checked(4).ok_or_else(corrupt)?;
        let len = u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize;
        let (entry, rest) = rest.split_at_checked(len).ok_or_else(corrupt)?;
        entries.push(Entry::parse_from_bytes(entry)?);
        bytes = rest;
    }
    Ok(entries)
}

/// raft-rs storage: entries in memory, made durable in sled.
pub struct RaftStorage {
    /// The `raft` tree: chunks, hard state, truncation point.
    log: sled::Tree,
    /// The persisted hard state (its commit index may be ahead of disk, see `set_commit`).
    hard_state: HardState,
    /// The conf state (persisted in the state tree), cached.
    conf_state: ConfState,
    /// Index and term of the last entry removed by compaction (0, 0 if none).
    truncated: (u64, u64),
    /// Every entry after `truncated`, contiguous.
    entries: VecDeque<Entry>,
    /// The chunks in sled holding entries after `truncated`: first index -> last index.
    chunks: BTreeMap<u64, u64>,
    /// Chunks wholly at or below `truncated`, still in sled, to remove (first indexes).
    compacted_chunks: Vec<u64>,
    /// Whether the truncation record in sled is behind `truncated`.
    truncation_unwritten: bool,
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
        let mut storage = RaftStorage {
            log,
            hard_state,
            conf_state,
            truncated,
            entries: VecDeque::new(),
            chunks: BTreeMap::new(),
            compacted_chunks: Vec::new(),
            truncation_unwritten: false,
        };
        storage.load()?;
        Ok(storage)
    }

    /// Reads every chunk back, checking that the log has no holes (a damaged data dir is refused,
    /// not served).
    fn load(&mut self) -> Result<()> {
        for item in self.log.scan_prefix([CHUNK_PREFIX]) {
            let (key, bytes) = item?;
            let chunk = decode_chunk(&bytes)?;
            let (Some(first), Some(last)) = (chunk.first(), chunk.last()) else {
                return Err(Error::Corrupt("empty raft log chunk".into()));
            };
            if key[1..] != first.index.to_be_bytes() {
                return Err(Error::Corrupt(format!(
                    "chunk key does not match entry {}",
                    first.index
                )));
            }
            if last.index <= self.truncated.0 {
                self.compacted_chunks.push(first.index);
                continue;
            }
            self.chunks.insert(first.index, last.index);
            for entry in chunk {
                if entry.index <= self.truncated.0 {
                    continue;
                }
                let expected = self.last_index() + 1;
                if entry.index != expected {
                    return Err(Error::Corrupt(format!(
                        "raft log hole: expected entry {expected}, found {}",
                        entry.index
                    )));
                }
                self.entries.push_back(entry);
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

    /// Repairs a commit index that is behind what was applied. The commit index is persisted
    /// lazily (see [`RaftStorage::set_commit`]), so after a crash the applied index may be ahead
    /// of it; every applied entry was committed, so raising the commit index is only remembering
    /// that.
    pub fn raise_commit(&mut self, applied: u64) -> Result<()> {
        if self.hard_state.commit < applied {
            assert!(
                applied <= self.last_index(),
                "applied entry {applied} is missing from the log"
            );
            self.hard_state.commit = applied;
            self.log
                .insert(KEY_HARD_STATE, self.hard_state.write_to_bytes()?)?;
        }
        Ok(())
    }

    /// Appends `entries` (replacing any conflicting suffix) and sets the hard state, in one batch.
    pub fn persist(&mut self, entries: &[Entry], hs: Option<&HardState>) -> Result<()> {
        let mut batch = sled::Batch::default();
        if let Some(first) = entries.first() {
            assert!(
                first.index > self.truncated.0 && first.index <= self.last_index() + 1,
                "entries starting at {} do not attach to a log ending at {}",
                first.index,
                self.last_index()
            );
            self.truncate_from(first.index, &mut batch)?;
            batch.insert(&chunk_key(first.index), encode_chunk(entries)?);
        }
        if let Some(hs) = hs {
            let mut hs = hs.clone();
            hs.commit = hs.commit.max(self.hard_state.commit);
            self.hard_state = hs;
        }
        batch.insert(KEY_HARD_STATE, self.hard_state.write_to_bytes()?);
        self.clean_up(&mut batch);
        self.log.apply_batch(batch)?;
        if let (Some(first), Some(last)) = (entries.first(), entries.last()) {
            self.chunks.insert(first.index, last.index);
            self.entries.extend(entries.iter().cloned());
        }
        Ok(())
    }

    /// Removes entries from `index` on, in memory and (through `batch`) in sled: chunks that start
    /// at or after it go, the chunk that straddles it is rewritten without them.
    fn truncate_from(&mut self, index: u64, batch: &mut sled::Batch) -> Result<()> {
        if index > self.last_index() {
            return Ok(());
        }
        let keep = (index - self.first_index()) as usize;
        self.entries.truncate(keep);
        let after: Vec<u64> = self
            .chunks
            .range(index..)
            .map(|(first, _)| *first)
            .collect();
        for first in after {
            self.chunks.remove(&first);
            batch.remove(&chunk_key(first));
        }
        if let Some((&first, last)) = self.chunks.range_mut(..index).next_back()
            && *last >= index
        {
            // Entries of this chunk below the truncation point of the log are no longer in
            // memory; a rewritten chunk starts at the first one that is.
            *last = index - 1;
            let from = first.max(self.first_index());
            let kept: Vec<Entry> = self
                .entries
                .range((from - self.first_index()) as usize..)
                .cloned()
                .collect();
            batch.remove(&chunk_key(first));
            self.chunks.remove(&first);
            if !kept.is_empty() {
                batch.insert(&chunk_key(from), encode_chunk(&kept)?);
                self.chunks.insert(from, index - 1);
            }
        }
        Ok(())
    }

    /// Records the commit index raft-rs reported in a light ready. It is kept in memory and written
    /// with the next [`RaftStorage::persist`]: a commit index need not be durable (Raft recovers it
    /// from a quorum; a lone member from its applied index, see [`RaftStorage::raise_commit`]), and
    /// every sled batch costs a sealed IO buffer.
    pub fn set_commit(&mut self, commit: u64) {
        self.hard_state.commit = commit;
    }

    /// Removes entries up to and including `index`, whose state must be applied and durable. Memory
    /// is trimmed now; sled catches up through [`RaftStorage::clean_up`] (see the module doc).
    pub fn compact(&mut self, index: u64) -> Result<()> {
        if index <= self.truncated.0 {
            return Ok(());
        }
        assert!(
            index <= self.last_index(),
            "compacting past the end of the log"
        );
        let term = self.term_of(index)?;
        let whole: Vec<u64> = self
            .chunks
            .iter()
            .take_while(|(_, last)| **last <= index)
            .map(|(first, _)| *first)
            .collect();
        for first in whole {
            self.chunks.remove(&first);
            self.compacted_chunks.push(first);
        }
        let dropped = (index - self.truncated.0) as usize;
        self.entries.drain(..dropped);
        self.truncated = (index, term);
        self.truncation_unwritten = true;
        Ok(())
    }

    /// Adds compaction's pending disk work to `batch`: the truncation record, and a bounded number
    /// of compacted chunks (in the same atomic batch as the record or a later one, so a chunk never
    /// disappears before the record that says it is no longer needed).
    fn clean_up(&mut self, batch: &mut sled::Batch) {
        if self.truncation_unwritten {
            let mut record = self.truncated.0.to_be_bytes().to_vec();
            record.extend_from_slice(&self.truncated.1.to_be_bytes());
            batch.insert(KEY_SNAPSHOT, record);
            self.truncation_unwritten = false;
        }
        let from = self
            .compacted_chunks
            .len()
            .saturating_sub(REMOVALS_PER_PERSIST);
        for first in self.compacted_chunks.drain(from..) {
            batch.remove(&chunk_key(first));
        }
    }

    pub fn first_index(&self) -> u64 {
        self.truncated.0 + 1
    }

    pub fn last_index(&self) -> u64 {
        self.truncated.0 + self.entries.len() as u64
    }

    fn term_of(&self, index: u64) -> Result<u64> {
        if index == self.truncated.0 {
            return Ok(self.truncated.1);
        }
        Ok(self.entry(index)?.term)
    }

    fn entry(&self, index: u64) -> Result<&Entry> {
        index
            .checked_sub(self.first_index())
            .and_then(|offset| self.entries.get(offset as usize))
            .ok_or_else(|| Error::Corrupt(format!("raft entry {index} is not in the log")))
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
        if high > self.last_index() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let max_size = max_size.into();
        let mut out = Vec::with_capacity((high - low) as usize);
        let mut size = 0u64;
        for index in low..high {
            let e = self.entry(index).map_err(store_err)?;
            size += u64::from(protobuf::Message::compute_size(e));
            if !out.is_empty() && max_size.is_some_and(|max| size > max) {
                break;
            }
            out.push(e.clone());
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
        if idx > self.last_index() {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        self.term_of(idx).map_err(store_err)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index())
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

    /// The terms of entries `lo..hi`.
    fn terms(s: &RaftStorage, lo: u64, hi: u64) -> Vec<u64> {
        s.entries(lo, hi, None, ctx())
            .unwrap()
            .iter()
            .map(|e| e.term)
            .collect()
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
        assert_eq!(terms(&s, 1, 5), vec![1, 1, 2, 2]);
        // The same answer after a restart, read back from the chunks in sled.
        drop(s);
        let s = open(&db);
        assert_eq!(terms(&s, 1, 5), vec![1, 1, 2, 2]);
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
        let mut s = open(&db);
        assert_eq!(
            (s.first_index(), s.last_index()),
            (1, 5),
            "a compaction not yet written is undone by a restart, which is harmless"
        );
        s.compact(3).unwrap();
        s.persist(&[], None).unwrap();
        drop(s);
        let s = open(&db);
        assert_eq!((s.first_index(), s.last_index()), (4, 5));
        assert_eq!(s.entries(4, 6, None, ctx()).unwrap().len(), 2);
    }

    /// Worked example of chunks: two Readies write chunks [1..=3] and [4..=6]; a new leader then
    /// overwrites from 3. The first chunk is rewritten as [1..=2], the second is removed, and a
    /// chunk [3..=4] is added; after compacting to 3, only that last chunk remains whole.
    #[test]
    fn a_conflict_inside_a_chunk_rewrites_it() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let mut s = open(&db);
        s.persist(&[entry(1, 1), entry(2, 1), entry(3, 1)], None)
            .unwrap();
        s.persist(&[entry(4, 1), entry(5, 1), entry(6, 1)], None)
            .unwrap();
        s.persist(&[entry(3, 2), entry(4, 2)], None).unwrap();
        assert_eq!(s.chunks, BTreeMap::from([(1, 2), (3, 4)]));
        drop(s);
        let mut s = open(&db);
        assert_eq!(terms(&s, 1, 5), vec![1, 1, 2, 2]);
        s.compact(3).unwrap();
        assert_eq!(
            s.chunks,
            BTreeMap::from([(3, 4)]),
            "the straddling chunk stays"
        );
        s.persist(&[], None).unwrap(); // the truncation record and the compacted chunk's removal
        assert!(s.compacted_chunks.is_empty());
        drop(s);
        let s = open(&db);
        assert_eq!((s.first_index(), s.last_index()), (4, 4));
        assert_eq!(s.entries(4, 5, None, ctx()).unwrap()[0].term, 2);
    }

    #[test]
    fn max_size_returns_at_least_one_entry() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let mut s = open(&db);
        s.persist(&[entry(1, 1), entry(2, 1)], None).unwrap();
        assert_eq!(s.entries(1, 3, Some(1), ctx()).unwrap().len(), 1);
    }
}
