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
//! `m/confstate`), as does the index and term of the last snapshot installed (`m/installed`).
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
//! Snapshots (`snapshot.rs`). raft-rs asks [`Storage::snapshot`] for one when a follower needs
//! entries that were compacted away. Making one means copying the state tree, which only the node
//! loop may do, so the first request answers `SnapshotTemporarilyUnavailable` and raises a flag;
//! the loop makes the snapshot at the end of its turn ([`RaftStorage::set_snapshot`]) and raft-rs,
//! asking again at the next heartbeat, gets it. A snapshot older than the log's truncation point
//! is useless (the follower could not continue from it) and is made anew.
//!
//! Installing one ([`RaftStorage::apply_snapshot`]) happens after the state machine replaced its
//! state and recorded `m/installed` in the same sled batch: the log is reset to start after the
//! snapshot. If a crash falls between the two batches, [`RaftStorage::open`] sees a log that does
//! not reach the installed snapshot and resets it then.

use std::cell::Cell;
use std::collections::{BTreeMap, VecDeque};

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
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
/// State tree key of the last snapshot installed: index (u64 BE) + term (u64 BE).
pub const KEY_INSTALLED: &[u8] = b"m/installed";
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
    /// The latest snapshot made, for followers that need one.
    snapshot: Option<Snapshot>,
    /// raft-rs asked for a snapshot newer than `snapshot` (see the module doc).
    snapshot_wanted: Cell<bool>,
}

/// Index and term encoded as 16 bytes (the truncation and installed records).
pub fn encode_index_term(index: u64, term: u64) -> Vec<u8> {
    let mut record = index.to_be_bytes().to_vec();
    record.extend_from_slice(&term.to_be_bytes());
    record
}

fn decode_index_term(bytes: &[u8]) -> Result<(u64, u64)> {
    let (index, term) = bytes
        .split_first_chunk::<8>()
        .filter(|(_, rest)| rest.len() == 8)
        .ok_or_else(|| Error::Corrupt("bad index and term record".into()))?;
    Ok((
        u64::from_be_bytes(*index),
        u64::from_be_bytes(term.try_into().expect("8 bytes")),
    ))
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
            Some(bytes) => decode_index_term(&bytes)?,
            None => (0, 0),
        };
        let installed = match state.get(KEY_INSTALLED)? {
            Some(bytes) => decode_index_term(&bytes)?,
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
            snapshot: None,
            snapshot_wanted: Cell::new(false),
        };
        storage.load()?;
        let (index, term) = installed;
        let reaches = index <= storage.last_index() && storage.term_of(index).ok() == Some(term);
        if index > storage.truncated.0 && !reaches {
            // A crash between installing a snapshot and resetting the log (see the module doc).
            tracing::info!(
                index,
                term,
                "resetting the raft log to the installed snapshot"
            );
            let mut batch = sled::Batch::default();
            storage.reset_to(index, term, &mut batch);
            storage.hard_state.commit = storage.hard_state.commit.max(index);
            storage.hard_state.term = storage.hard_state.term.max(term);
            batch.insert(KEY_HARD_STATE, storage.hard_state.write_to_bytes()?);
            storage.clean_up(&mut batch);
            storage.log.apply_batch(batch)?;
        }
        Ok(storage)
    }

    /// Empties the log so that it starts right after `index` (of `term`): chunks holding entries
    /// above it are removed in `batch` (read back, they would follow the new truncation point),
    /// the others later, like compacted ones.
    fn reset_to(&mut self, index: u64, term: u64, batch: &mut sled::Batch) {
        for (first, last) in std::mem::take(&mut self.chunks) {
            if last > index {
                batch.remove(&chunk_key(first));
            } else {
                self.compacted_chunks.push(first);
            }
        }
        self.entries.clear();
        self.truncated = (index, term);
        self.truncation_unwritten = true;
    }

    /// Resets the log after the state machine installed the snapshot `meta` describes (see the
    /// module doc). The hard state's commit index moves up to the snapshot.
    pub fn apply_snapshot(&mut self, meta: &SnapshotMetadata) -> Result<()> {
        assert!(
            meta.index > self.truncated.0,
            "snapshot {} is older than the log's start {}",
            meta.index,
            self.first_index()
        );
        let mut batch = sled::Batch::default();
        self.reset_to(meta.index, meta.term, &mut batch);
        self.conf_state = meta.get_conf_state().clone();
        self.hard_state.commit = self.hard_state.commit.max(meta.index);
        self.hard_state.term = self.hard_state.term.max(meta.term);
        batch.insert(KEY_HARD_STATE, self.hard_state.write_to_bytes()?);
        self.clean_up(&mut batch);
        self.log.apply_batch(batch)?;
        Ok(())
    }

    /// Whether raft-rs asked for a snapshot that is not there yet; clears the request.
    pub fn take_snapshot_request(&self) -> bool {
        self.snapshot_wanted.replace(false)
    }

    /// Keeps `snapshot` (made by the node loop) for followers that need one.
    pub fn set_snapshot(&mut self, snapshot: Snapshot) {
        self.snapshot = Some(snapshot);
    }

    /// Records the conf state a membership change produced (the state machine persists it, in the
    /// batch of the entry that made it).
    pub fn set_conf_state(&mut self, conf_state: ConfState) {
        self.conf_state = conf_state;
    }

    /// The conf state as of the applied index (what a snapshot made now describes).
    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// The term of entry `index`, if the log still knows it.
    pub fn term_at(&self, index: u64) -> Result<u64> {
        self.term_of(index)
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
            let record = encode_index_term(self.truncated.0, self.truncated.1);
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

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let usable = request_index.max(self.truncated.0);
        match &self.snapshot {
            Some(snapshot) if snapshot.get_metadata().index >= usable => Ok(snapshot.clone()),
            _ => {
                self.snapshot_wanted.set(true);
                Err(raft::Error::Store(
                    StorageError::SnapshotTemporarilyUnavailable,
                ))
            }
        }
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

    fn snapshot_meta(index: u64, term: u64) -> SnapshotMetadata {
        let mut meta = SnapshotMetadata {
            index,
            term,
            ..Default::default()
        };
        meta.mut_conf_state().voters = vec![1, 2, 3];
        meta
    }

    /// Worked example: a follower holds entries 1..=6 (the last two from a deposed leader's term)
    /// and installs a snapshot at 8 of term 3. Its log then starts at 9, entries 5..=6 are gone
    /// at once (read back, they would sit past the new start), and new entries attach after 8.
    /// A second snapshot right behind the first (raft-rs may send two back to back) resets again.
    #[test]
    fn installing_a_snapshot_resets_the_log_past_it() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let mut s = open(&db);
        s.persist(&[entry(1, 1), entry(2, 1), entry(3, 1), entry(4, 1)], None)
            .unwrap();
        s.persist(&[entry(5, 2), entry(6, 2)], None).unwrap();
        s.apply_snapshot(&snapshot_meta(8, 3)).unwrap();
        assert_eq!((s.first_index(), s.last_index()), (9, 8));
        assert_eq!(Storage::term(&s, 8).unwrap(), 3);
        assert_eq!(s.hard_state().commit, 8);
        assert_eq!(s.initial_state().unwrap().conf_state.voters, vec![1, 2, 3]);
        s.persist(&[entry(9, 3)], None).unwrap();
        s.apply_snapshot(&snapshot_meta(10, 3)).unwrap();
        s.persist(&[entry(11, 3)], None).unwrap();
        drop(s);
        let s = open(&db);
        assert_eq!((s.first_index(), s.last_index()), (11, 11));
        assert_eq!(terms(&s, 11, 12), vec![3]);
    }

    /// A crash after the state machine recorded an installed snapshot but before the log was
    /// reset: opening the log resets it then.
    #[test]
    fn a_log_behind_the_installed_snapshot_is_reset_on_open() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let mut s = open(&db);
        s.persist(&[entry(1, 1), entry(2, 1)], None).unwrap();
        drop(s);
        let state = db.open_tree("state").unwrap();
        state
            .insert(KEY_INSTALLED, encode_index_term(7, 2))
            .unwrap();
        let s = open(&db);
        assert_eq!((s.first_index(), s.last_index()), (8, 7));
        assert_eq!(Storage::term(&s, 7).unwrap(), 2);
        assert_eq!(s.hard_state().commit, 7);
        drop(s);
        let s = open(&db);
        assert_eq!(
            (s.first_index(), s.last_index()),
            (8, 7),
            "and it stays reset"
        );
    }

    /// raft-rs's first request finds no snapshot: it is told to come back and the loop is asked
    /// to make one; one older than the log's start is not served.
    #[test]
    fn snapshot_requests_are_deferred_to_the_loop() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let mut s = open(&db);
        s.persist(&(1..=5).map(|i| entry(i, 1)).collect::<Vec<_>>(), None)
            .unwrap();
        let unavailable = |r: raft::Result<Snapshot>| {
            matches!(
                r,
                Err(raft::Error::Store(
                    StorageError::SnapshotTemporarilyUnavailable
                ))
            )
        };
        assert!(unavailable(Storage::snapshot(&s, 0, 2)));
        assert!(s.take_snapshot_request());
        assert!(!s.take_snapshot_request(), "the request is taken once");
        let mut snap = Snapshot::default();
        snap.set_metadata(snapshot_meta(3, 1));
        s.set_snapshot(snap);
        assert_eq!(Storage::snapshot(&s, 0, 2).unwrap().get_metadata().index, 3);
        s.compact(4).unwrap();
        assert!(
            unavailable(Storage::snapshot(&s, 0, 2)),
            "a snapshot behind the log's start is useless"
        );
        assert!(s.take_snapshot_request());
    }

    #[test]
    fn max_size_returns_at_least_one_entry() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let mut s = open(&db);
        s.persist(&[entry(1, 1), entry(2, 1)], None).unwrap();
        assert_eq!(s.entries(1, 3, Some(1), ctx()).unwrap().len(), 1);
    }
}
