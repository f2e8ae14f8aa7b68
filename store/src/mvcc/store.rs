//! The multi-version key-value store: history in sled, the index in memory.
//!
//! Every change is a *record* stored under its [`Revision`] (see `revision.rs` for the key layout):
//! a put stores the whole `mvccpb.KeyValue` as of that revision, a delete stores a tombstone.
//! Records are never rewritten, only removed by compaction, so a reader that found a revision in the
//! index can fetch its value without further coordination.
//!
//! Concurrency: one [`parking_lot::RwLock`] guards the index, the clocks and the unwritten records.
//! Readers ([`ReadTxn`]) hold it shared; the apply loop holds it exclusively for one
//! [`WriteBatch`] (the entries of one Ready), so a reader sees all of a transaction or none of it.
//! It is a synchronous lock on purpose: nothing awaits while holding it, and sections are short.
//!
//! The backend batch, as etcd does it. Applying an entry changes only memory: the index, and the
//! *unwritten* records, which readers find there until they reach sled. [`KvStore::write_back`]
//! writes all unwritten records to sled in **one atomic batch together with the applied index**
//! (and the current and compact revisions); the node loop calls it every
//! [`BACKEND_BATCH_INTERVAL`] or [`BACKEND_BATCH_LIMIT`] records, before a hash, and at shutdown.
//! This is safe because an entry is applied only after it is durable in the Raft log: after a
//! crash, the state in sled is exactly the state as of its applied index, and the node re-applies
//! the log above it. The Raft log is never compacted past an applied index that sled holds
//! durably (`raft/node.rs`). etcd's backend works the same way (a bbolt transaction committed every
//! 100 ms or 10,000 operations, with the consistent index inside it).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use concord_proto::mvccpb::{Event, KeyValue, event::EventType};
use parking_lot::{RwLock, RwLockReadGuard, RwLockUpgradableReadGuard, RwLockWriteGuard};
use prost::Message;
use prost::bytes::Bytes;

use super::key_index::{KeyRange, TreeIndex};
use super::revision::{HISTORY_PREFIX, Rev, Revision};
use crate::error::{Error, Result};

/// Meta key: the current main revision.
const META_REV: &[u8] = b"m/rev";
/// Meta key: the revision of the last compaction.
const META_COMPACT: &[u8] = b"m/compact";
/// Meta key: the first revision whose changes history still holds whole (see `history_from`).
const META_HISTORY_FROM: &[u8] = b"m/history-from";
/// Meta key: the Raft index of the last entry whose changes sled holds.
pub const META_APPLIED: &[u8] = b"m/applied";

/// Longest time applied changes wait in memory before they are written to sled.
pub const BACKEND_BATCH_INTERVAL: Duration = Duration::from_millis(100);
/// Most records waiting in memory before they are written to sled.
pub const BACKEND_BATCH_LIMIT: usize = 10_000;

/// The compact revision of a store never compacted (etcd's initial `compactMainRev`).
pub const NEVER_COMPACTED: Rev = -1;

/// Record tag: the key was put.
const TAG_PUT: u8 = 0;
/// Record tag: the key was deleted.
const TAG_TOMBSTONE: u8 = 1;

/// What a range may return and at which revision.
#[derive(Debug, Clone, Copy, Default)]
pub struct RangeOptions {
    /// At most this many key-values (0 = no limit). `count` is not limited.
    pub limit: usize,
    /// Read as of this revision; ≤ 0 means the current one.
    pub rev: Rev,
    /// Count the keys only, fetch no value.
    pub count_only: bool,
}

/// The answer of a range.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RangeResult {
    /// The key-values found, in key order, at most `limit`.
    pub kvs: Vec<KeyValue>,
    /// How many keys the range holds at the revision read, regardless of `limit`.
    pub count: usize,
    /// The store's current revision (what etcd puts in the response header).
    pub rev: Rev,
}

/// A record not yet in sled: written (tag and value) or removed by compaction.
#[derive(Debug, Clone)]
enum Unwritten {
    Record(u8, KeyValue),
    Removed,
}

/// The index, the clocks and the unwritten records, guarded together.
#[derive(Debug)]
struct IndexState {
    /// Every key's history.
    index: TreeIndex,
    /// The revision of the last committed write transaction (1 for an empty store).
    current: Rev,
    /// History below this revision is gone; -1 if never compacted (as in etcd, so that a first
    /// compaction at revision 0 is accepted).
    compacted: Rev,
    /// The first revision whose every change history still holds: the compact revision, or the
    /// one after it when the compaction dropped a delete made at exactly that revision (a
    /// tombstone is forgotten with its key). Watchers may start here and miss nothing; etcd
    /// lets them start at the compact revision and silently skip such a delete.
    history_from: Rev,
    /// The Raft index of the last applied entry.
    applied: u64,
    /// The applied index that sled holds (≤ `applied`).
    written: u64,
    /// Changes applied but not yet in sled (see the module doc).
    unwritten: HashMap<Revision, Unwritten>,
    /// Records of other parts of the state machine (the lessor's leases), set (`Some`) or removed
    /// (`None`) since the last write-back; they reach sled in the same atomic batch.
    unwritten_meta: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

/// The MVCC key-value store.
pub struct KvStore {
    /// The state tree: history records and meta keys.
    tree: sled::Tree,
    /// The in-memory index, clocks and unwritten records (see the module doc).
    state: RwLock<IndexState>,
    /// Set when the apply loop failed or panicked: memory may hold half a batch, so nothing more
    /// may be written back (the durable Raft log is what a restart rebuilds from).
    poisoned: AtomicBool,
}

impl KvStore {
    /// Opens the store on `tree` and rebuilds the index from the history it holds.
    pub fn open(tree: sled::Tree) -> Result<Self> {
        let state = load_state(&tree)?;
        Ok(KvStore {
            tree,
            state: RwLock::new(state),
            poisoned: AtomicBool::new(false),
        })
    }

    /// Replaces the whole state with a snapshot's `records` (`raft/snapshot.rs`), which must cover
    /// Raft index `applied`: the tree's old records go and the new ones arrive in **one** atomic
    /// sled batch, with `extra` records, and the index is rebuilt from them. Changes not yet
    /// written back are dropped: the snapshot is newer than all of them. Only the apply loop calls
    /// this.
    pub fn restore(
        &self,
        records: Vec<(Vec<u8>, Vec<u8>)>,
        applied: u64,
        extra: &[(&[u8], Vec<u8>)],
    ) -> Result<()> {
        let covers = records
            .iter()
            .find(|(k, _)| k.as_slice() == META_APPLIED)
            .and_then(|(_, v)| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map(|v| i64::from_be_bytes(v) as u64);
        if covers != Some(applied) {
            return Err(Error::Corrupt(format!(
                "a snapshot for index {applied} holds the state of index {covers:?}"
            )));
        }
        let mut state = self.state.write();
        let mut batch = sled::Batch::default();
        let keep: std::collections::HashSet<&[u8]> =
            records.iter().map(|(k, _)| k.as_slice()).collect();
        for item in self.tree.iter().keys() {
            let key = item?;
            if !keep.contains(&key[..]) {
                batch.remove(key);
            }
        }
        for (key, value) in &records {
            batch.insert(key.as_slice(), value.as_slice());
        }
        for (key, value) in extra {
            batch.insert(*key, value.as_slice());
        }
        self.tree.apply_batch(batch)?;
        *state = load_state(&self.tree)?;
        Ok(())
    }
}

/// Reads the clocks and rebuilds the index from the history records of `tree`.
fn load_state(tree: &sled::Tree) -> Result<IndexState> {
    let applied = read_i64(tree, META_APPLIED)?.unwrap_or(0) as u64;
    let compacted = read_i64(tree, META_COMPACT)?.unwrap_or(NEVER_COMPACTED);
    // A store compacted before this record existed: whether its compaction dropped a delete
    // is unknown, so assume it did.
    let history_from = match read_i64(tree, META_HISTORY_FROM)? {
        Some(rev) => rev,
        None if compacted == NEVER_COMPACTED => NEVER_COMPACTED,
        None => compacted + 1,
    };
    let mut state = IndexState {
        index: TreeIndex::default(),
        current: read_i64(tree, META_REV)?.unwrap_or(1),
        compacted,
        history_from,
        applied,
        written: applied,
        unwritten: HashMap::new(),
        unwritten_meta: BTreeMap::new(),
    };
    for item in tree.scan_prefix([HISTORY_PREFIX]) {
        let (k, v) = item?;
        let rev = Revision::from_key(&k).ok_or_else(|| Error::Corrupt("bad history key".into()))?;
        let (tombstone, kv) = decode_record(&v)?;
        if tombstone {
            state.index.tombstone(&kv.key, rev);
        } else {
            state
                .index
                .restore(&kv.key, rev, kv.create_revision, kv.version);
        }
        if rev.main > state.current {
            return Err(Error::Corrupt(format!(
                "history record {rev:?} is newer than the stored revision {}",
                state.current
            )));
        }
    }
    Ok(state)
}

impl KvStore {
    /// A consistent read view of the current state.
    pub fn read(&self) -> ReadTxn<'_> {
        ReadTxn {
            store: self,
            state: self.state.read(),
        }
    }

    /// Starts the writes of one batch of Raft entries. Only the apply loop writes.
    pub fn write(&self) -> WriteBatch<'_> {
        WriteBatch {
            state: self.state.write(),
            store: self,
            events: Vec::new(),
        }
    }

    /// The sled tree the store lives in (other parts of the state machine keep their records
    /// there, written through [`WriteBatch::set_meta`]).
    pub fn tree(&self) -> &sled::Tree {
        &self.tree
    }

    /// The current revision.
    pub fn current_revision(&self) -> Rev {
        self.state.read().current
    }

    /// The compact revision ([`NEVER_COMPACTED`] if never compacted).
    pub fn compacted_revision(&self) -> Rev {
        self.state.read().compacted
    }

    /// The first revision from which [`KvStore::history`] returns every change (the compact
    /// revision, or one more: see `IndexState::history_from`).
    pub fn history_from(&self) -> Rev {
        self.state.read().history_from
    }

    /// The Raft index of the last applied entry.
    pub fn applied(&self) -> u64 {
        self.state.read().applied
    }

    /// The applied index that sled holds (not necessarily flushed yet).
    pub fn written(&self) -> u64 {
        self.state.read().written
    }

    /// Whether [`KvStore::write_back`] has anything to do, and how many records wait.
    pub fn unwritten(&self) -> (bool, usize) {
        let state = self.state.read();
        (state.written != state.applied, state.unwritten.len())
    }

    /// Writes every unwritten change to sled in one atomic batch with the applied index and the
    /// clocks (see the module doc). Readers go on meanwhile; the records leave memory only once
    /// sled has them. Does not flush.
    pub fn write_back(&self) -> Result<Rev> {
        if self.poisoned.load(Ordering::SeqCst) {
            return Err(Error::Stopped);
        }
        let state = self.state.upgradable_read();
        if state.written == state.applied {
            return Ok(state.current);
        }
        let mut batch = sled::Batch::default();
        for (rev, change) in &state.unwritten {
            match change {
                Unwritten::Record(tag, kv) => batch.insert(&rev.to_key(), encode_record(*tag, kv)),
                Unwritten::Removed => batch.remove(&rev.to_key()),
            }
        }
        for (key, value) in &state.unwritten_meta {
            match value {
                Some(value) => batch.insert(key.as_slice(), value.as_slice()),
                None => batch.remove(key.as_slice()),
            }
        }
        batch.insert(META_REV, &state.current.to_be_bytes());
        batch.insert(META_COMPACT, &state.compacted.to_be_bytes());
        batch.insert(META_HISTORY_FROM, &state.history_from.to_be_bytes());
        batch.insert(META_APPLIED, &(state.applied as i64).to_be_bytes());
        self.tree.apply_batch(batch)?;
        let mut state = RwLockUpgradableReadGuard::upgrade(state);
        state.unwritten.clear();
        state.unwritten_meta.clear();
        state.written = state.applied;
        Ok(state.current)
    }

    /// Marks the store as no longer writable (see the field's doc).
    pub fn poison(&self) {
        self.poisoned.store(true, Ordering::SeqCst);
    }

    /// A CRC-32 over the history records with main revision ≤ `rev` (etcd's HashKV): equal on
    /// replicas that applied the same entries, whatever their timing. It writes back first, then
    /// scans sled without holding the store's lock: records up to a written revision never change
    /// (a concurrent compaction may remove some, as it would change etcd's answer too).
    pub fn hash_kv(&self, rev: Rev) -> Result<(u32, Rev, Rev)> {
        let mut written = self.write_back()?;
        let (current, compacted) = {
            let state = self.state.read();
            (state.current, state.compacted)
        };
        let rev = if rev <= 0 { written } else { rev };
        if rev > current {
            return Err(Error::FutureRevision);
        }
        if rev < compacted {
            return Err(Error::Compacted);
        }
        if rev > written {
            written = self.write_back()?;
            assert!(
                written >= rev,
                "a write-back covers every revision applied before it"
            );
        }
        let mut hasher = crc32fast::Hasher::new();
        let upper = Revision::new(rev + 1, 0).to_key();
        for item in self.tree.range(&[HISTORY_PREFIX][..]..&upper[..]) {
            let (k, v) = item?;
            hasher.update(&k);
            hasher.update(&v);
        }
        Ok((hasher.finalize(), compacted, rev))
    }

    /// A CRC-32 over the whole state tree (etcd's Hash). Writes back first; scans without the lock.
    pub fn hash(&self) -> Result<u32> {
        self.write_back()?;
        let mut hasher = crc32fast::Hasher::new();
        for item in self.tree.iter() {
            let (k, v) = item?;
            hasher.update(&k);
            hasher.update(&v);
        }
        Ok(hasher.finalize())
    }
}

/// A stretch of history, for watchers catching up (see [`KvStore::history`]).
#[derive(Debug, Default, PartialEq)]
pub struct History {
    /// Every change of the revisions covered, in revision order.
    pub events: Vec<Event>,
    /// The revisions up to this one are covered whole.
    pub through: Rev,
}

impl KvStore {
    /// The changes of revisions `from` and later, in revision order: about `max_events` of them,
    /// always whole revisions (one revision larger than that comes whole). Fails with
    /// [`Error::Compacted`] when `from` is below [`KvStore::history_from`].
    /// Holds the read lock while it reads, so the bound keeps the apply loop's wait short.
    pub fn history(&self, from: Rev, max_events: usize) -> Result<History> {
        let state = self.state.read();
        if from < state.history_from {
            return Err(Error::Compacted);
        }
        let mut history = History {
            events: Vec::new(),
            through: state.current,
        };
        if from > state.current {
            return Ok(history);
        }
        let mut last = from - 1;
        // sled holds the records up to the last write-back; the newer ones are in memory.
        let lower = Revision::new(from, 0).to_key();
        let upper = Revision::new(state.current + 1, 0).to_key();
        for item in self.tree.range(lower..upper) {
            let (k, v) = item?;
            let rev =
                Revision::from_key(&k).ok_or_else(|| Error::Corrupt("bad history key".into()))?;
            if state.unwritten.contains_key(&rev) {
                continue; // removed by a compaction not yet written back
            }
            if history.events.len() >= max_events && rev.main != last {
                history.through = last;
                return Ok(history);
            }
            let (tombstone, kv) = decode_record(&v)?;
            let tag = if tombstone { TAG_TOMBSTONE } else { TAG_PUT };
            history.events.push(event(tag, kv));
            last = rev.main;
        }
        let mut newer: Vec<(&Revision, u8, &KeyValue)> = state
            .unwritten
            .iter()
            .filter_map(|(rev, change)| match change {
                Unwritten::Record(tag, kv) if rev.main >= from => Some((rev, *tag, kv)),
                _ => None,
            })
            .collect();
        newer.sort_by_key(|(rev, _, _)| **rev);
        for (rev, tag, kv) in newer {
            if history.events.len() >= max_events && rev.main != last {
                history.through = last;
                return Ok(history);
            }
            history.events.push(event(tag, kv.clone()));
            last = rev.main;
        }
        Ok(history)
    }

    /// Every live key attached to a lease, with its lease (the lessor rebuilds its table from
    /// this at start).
    pub fn leased_keys(&self) -> Result<Vec<(Vec<u8>, i64)>> {
        let state = self.state.read();
        let mut revs = Vec::new();
        state
            .index
            .range(KeyRange::new(b"", b"\0"), state.current, |_, rev| {
                revs.push(rev);
                true
            });
        let mut out = Vec::new();
        for rev in revs {
            let kv = self.fetch(&state, rev)?;
            if kv.lease != 0 {
                out.push((kv.key.to_vec(), kv.lease));
            }
        }
        Ok(out)
    }
}

/// Operations every view of the store supports: the read transaction and the write transaction.
pub trait View {
    /// The revision this view reads at by default.
    fn rev(&self) -> Rev;
    /// History below this revision is gone.
    fn compacted(&self) -> Rev;
    /// Reads a range (see [`RangeOptions`]).
    fn range(&self, range: KeyRange<'_>, opts: RangeOptions) -> Result<RangeResult>;
}

/// A shared, consistent view of the store.
pub struct ReadTxn<'a> {
    store: &'a KvStore,
    state: RwLockReadGuard<'a, IndexState>,
}

impl View for ReadTxn<'_> {
    fn rev(&self) -> Rev {
        self.state.current
    }

    fn compacted(&self) -> Rev {
        self.state.compacted
    }

    fn range(&self, range: KeyRange<'_>, opts: RangeOptions) -> Result<RangeResult> {
        range_keys(&self.state, range, opts, self.state.current, |rev| {
            self.store.fetch(&self.state, rev)
        })
    }
}

impl KvStore {
    /// The record at `rev`: from the unwritten changes, or from sled.
    fn fetch(&self, state: &IndexState, rev: Revision) -> Result<KeyValue> {
        if let Some(change) = state.unwritten.get(&rev) {
            return match change {
                Unwritten::Record(_, kv) => Ok(kv.clone()),
                Unwritten::Removed => Err(Error::Corrupt(format!(
                    "compacted record {rev:?} is still indexed"
                ))),
            };
        }
        let bytes = self
            .tree
            .get(rev.to_key())?
            .ok_or_else(|| Error::Corrupt(format!("missing history record {rev:?}")))?;
        Ok(decode_record(&bytes)?.1)
    }
}

/// etcd's `rangeKeys`: validates the revision, then collects keys from the index.
fn range_keys(
    state: &IndexState,
    range: KeyRange<'_>,
    opts: RangeOptions,
    cur: Rev,
    fetch: impl Fn(Revision) -> Result<KeyValue>,
) -> Result<RangeResult> {
    if opts.rev > cur {
        return Err(Error::FutureRevision);
    }
    let at = if opts.rev <= 0 { cur } else { opts.rev };
    if at < state.compacted {
        return Err(Error::Compacted);
    }
    let mut revs = Vec::new();
    let mut count = 0;
    state.index.range(range, at, |_, rev| {
        count += 1;
        if !opts.count_only && (opts.limit == 0 || revs.len() < opts.limit) {
            revs.push(rev);
        }
        true
    });
    let kvs = revs.into_iter().map(fetch).collect::<Result<Vec<_>>>()?;
    Ok(RangeResult {
        kvs,
        count,
        rev: cur,
    })
}

/// The writes of one batch of Raft entries (one Ready), holding the store exclusively: readers see
/// none of it until it ends, then all of it.
pub struct WriteBatch<'a> {
    state: RwLockWriteGuard<'a, IndexState>,
    store: &'a KvStore,
    /// Every change of the batch's committed transactions, in revision order: what watchers are
    /// told once the batch ends.
    events: Vec<Event>,
}

impl<'a> WriteBatch<'a> {
    /// Starts the transaction of one entry.
    pub fn txn(&mut self) -> WriteTxn<'_, 'a> {
        let begin = self.state.current;
        let events_start = self.events.len();
        WriteTxn {
            batch: self,
            begin,
            changes: 0,
            undo: Vec::new(),
            events_start,
        }
    }

    /// The current revision: after the batch's transactions so far.
    pub fn revision(&self) -> Rev {
        self.state.current
    }

    /// The events of the batch so far (see the field's doc).
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// Sets (`Some`) or removes (`None`) a record of another part of the state machine; it
    /// reaches sled in the same atomic batch as the applied index that covers it.
    pub fn set_meta(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.state.unwritten_meta.insert(key, value);
    }

    /// Compacts history below `rev` (see `key_index.rs`): forgets every record no read at `rev` or
    /// later needs. Returns the current revision.
    pub fn compact(&mut self, rev: Rev) -> Result<Rev> {
        if rev <= self.state.compacted {
            return Err(Error::Compacted);
        }
        if rev > self.state.current {
            return Err(Error::FutureRevision);
        }
        let mut lossy = false;
        for removed in self.state.index.compact(rev) {
            lossy |= removed.main == rev;
            self.state.unwritten.insert(removed, Unwritten::Removed);
        }
        self.state.compacted = rev;
        self.state.history_from = if lossy { rev + 1 } else { rev };
        Ok(self.state.current)
    }

    /// Ends the batch: everything up to Raft index `applied` is applied. Returns the revision and
    /// the batch's events.
    pub fn finish(mut self, applied: u64) -> (Rev, Vec<Event>) {
        assert!(
            applied >= self.state.applied,
            "the applied index never goes back"
        );
        self.state.applied = applied;
        (self.state.current, std::mem::take(&mut self.events))
    }
}

/// The write transaction of one Raft entry: all its changes share one main revision. Dropping it
/// ends it (the store's current revision moves on if it changed anything).
pub struct WriteTxn<'b, 'a> {
    batch: &'b mut WriteBatch<'a>,
    /// The current revision when the transaction began; its changes get `begin + 1`.
    begin: Rev,
    /// Changes made so far (the next one's sub revision).
    changes: i64,
    /// The key and revision of every change, to take them back if the transaction fails.
    undo: Vec<(Vec<u8>, Revision)>,
    /// Where this transaction's events begin in the batch's.
    events_start: usize,
}

impl WriteTxn<'_, '_> {
    fn next_revision(&self) -> Revision {
        Revision::new(self.begin + 1, self.changes)
    }

    /// Puts `key`; returns the new key-value.
    pub fn put(&mut self, key: &[u8], value: &[u8], lease: i64) -> KeyValue {
        let rev = self.next_revision();
        let (create_revision, version) = self.batch.state.index.put(key, rev);
        let kv = KeyValue {
            key: Bytes::copy_from_slice(key),
            create_revision,
            mod_revision: rev.main,
            version,
            value: Bytes::copy_from_slice(value),
            lease,
        };
        self.record(rev, TAG_PUT, kv.clone());
        kv
    }

    /// Deletes every live key in `range`; returns how many were deleted.
    pub fn delete_range(&mut self, range: KeyRange<'_>) -> usize {
        let at = self.rev();
        let keys = self.batch.state.index.live_keys(range, at);
        for key in &keys {
            let rev = self.next_revision();
            self.batch.state.index.tombstone(key, rev);
            let tomb = KeyValue {
                key: key.clone().into(),
                mod_revision: rev.main,
                ..Default::default()
            };
            self.record(rev, TAG_TOMBSTONE, tomb);
        }
        keys.len()
    }

    fn record(&mut self, rev: Revision, tag: u8, kv: KeyValue) {
        self.undo.push((kv.key.to_vec(), rev));
        self.batch.events.push(event(tag, kv.clone()));
        self.batch
            .state
            .unwritten
            .insert(rev, Unwritten::Record(tag, kv));
        self.changes += 1;
    }

    /// Takes back every change of this transaction: the index, the records, the revision. Used
    /// when a request fails after it started writing (every replica fails it the same way, so the
    /// rollback is deterministic); the transaction then changed nothing.
    pub fn rollback(&mut self) {
        for (key, rev) in self.undo.drain(..).rev() {
            self.batch.state.index.undo(&key, rev);
            self.batch.state.unwritten.remove(&rev);
        }
        self.batch.events.truncate(self.events_start);
        self.changes = 0;
    }

    /// Whether the transaction changed anything (and so takes a new revision).
    pub fn has_changes(&self) -> bool {
        self.changes > 0
    }
}

impl Drop for WriteTxn<'_, '_> {
    fn drop(&mut self) {
        if self.has_changes() {
            self.batch.state.current = self.begin + 1;
        }
    }
}

impl View for WriteTxn<'_, '_> {
    /// etcd's write-transaction rule: reads see the transaction's own changes.
    fn rev(&self) -> Rev {
        if self.has_changes() {
            self.begin + 1
        } else {
            self.begin
        }
    }

    fn compacted(&self) -> Rev {
        self.batch.state.compacted
    }

    fn range(&self, range: KeyRange<'_>, opts: RangeOptions) -> Result<RangeResult> {
        let state = &*self.batch.state;
        range_keys(state, range, opts, self.rev(), |rev| {
            self.batch.store.fetch(state, rev)
        })
    }
}

/// The watch event of a history record: a put carries the whole key-value, a delete the key and
/// its revision (as in etcd).
fn event(tag: u8, kv: KeyValue) -> Event {
    let kind = if tag == TAG_TOMBSTONE {
        EventType::Delete
    } else {
        EventType::Put
    };
    Event {
        r#type: kind as i32,
        kv: Some(kv),
        prev_kv: None,
    }
}

fn encode_record(tag: u8, kv: &KeyValue) -> Vec<u8> {
    let mut buf = Vec::with_capacity(1 + kv.encoded_len());
    buf.push(tag);
    kv.encode(&mut buf).expect("a Vec grows as needed");
    buf
}

fn decode_record(bytes: &[u8]) -> Result<(bool, KeyValue)> {
    let (&tag, body) = bytes
        .split_first()
        .ok_or_else(|| Error::Corrupt("empty history record".into()))?;
    Ok((tag == TAG_TOMBSTONE, KeyValue::decode(body)?))
}

/// Reads a big-endian i64 meta value.
pub(crate) fn read_i64(tree: &sled::Tree, key: &[u8]) -> Result<Option<i64>> {
    match tree.get(key)? {
        None => Ok(None),
        Some(v) => {
            let bytes: [u8; 8] = v
                .as_ref()
                .try_into()
                .map_err(|_| Error::Corrupt(format!("bad meta value {key:?}")))?;
            Ok(Some(i64::from_be_bytes(bytes)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ends a batch as the apply loop does, and writes it to sled (each test batch is one entry).
    fn commit(batch: WriteBatch<'_>) -> Rev {
        let store = batch.store;
        let applied = batch.state.applied + 1;
        let (rev, _) = batch.finish(applied);
        store.write_back().unwrap();
        rev
    }

    fn store() -> (sled::Db, KvStore) {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let store = KvStore::open(db.open_tree("state").unwrap()).unwrap();
        (db, store)
    }

    fn put(store: &KvStore, key: &str, value: &str) -> Rev {
        let mut batch = store.write();
        batch.txn().put(key.as_bytes(), value.as_bytes(), 0);
        commit(batch)
    }

    fn compact(store: &KvStore, rev: Rev) -> Result<Rev> {
        let mut batch = store.write();
        let result = batch.compact(rev);
        commit(batch);
        result
    }

    fn get(store: &KvStore, key: &str, rev: Rev) -> Result<Option<KeyValue>> {
        let opts = RangeOptions {
            rev,
            ..Default::default()
        };
        let res = store
            .read()
            .range(KeyRange::new(key.as_bytes(), b""), opts)?;
        Ok(res.kvs.into_iter().next())
    }

    /// A worked example of revisions, versions and history reads.
    #[test]
    fn history_of_one_key() {
        let (_db, store) = store();
        assert_eq!(
            store.current_revision(),
            1,
            "an empty store is at revision 1"
        );
        assert_eq!(put(&store, "foo", "a"), 2);
        assert_eq!(put(&store, "foo", "b"), 3);
        let mut batch = store.write();
        assert_eq!(batch.txn().delete_range(KeyRange::new(b"foo", b"")), 1);
        assert_eq!(commit(batch), 4);
        assert_eq!(put(&store, "foo", "c"), 5);

        let kv = get(&store, "foo", 3).unwrap().unwrap();
        assert_eq!(
            (
                &kv.value[..],
                kv.create_revision,
                kv.mod_revision,
                kv.version
            ),
            (&b"b"[..], 2, 3, 2)
        );
        assert_eq!(get(&store, "foo", 4).unwrap(), None, "deleted at 4");
        let kv = get(&store, "foo", 0).unwrap().unwrap();
        assert_eq!((kv.create_revision, kv.version), (5, 1), "a new generation");
        assert_eq!(get(&store, "foo", 6), Err(Error::FutureRevision));
    }

    #[test]
    fn a_transaction_reads_its_own_writes_under_one_revision() {
        let (_db, store) = store();
        let mut batch = store.write();
        let mut txn = batch.txn();
        txn.put(b"a", b"1", 0);
        txn.put(b"b", b"2", 0);
        let seen = txn
            .range(KeyRange::new(b"a", b"\0"), RangeOptions::default())
            .unwrap();
        assert_eq!(seen.count, 2);
        assert_eq!(seen.kvs[1].mod_revision, 2);
        drop(txn);
        batch.txn().put(b"c", b"3", 0);
        assert_eq!(
            commit(batch),
            3,
            "one revision per transaction, two in the batch"
        );
        assert_eq!(store.current_revision(), 3);
        let c = store
            .read()
            .range(KeyRange::new(b"c", b""), RangeOptions::default())
            .unwrap();
        assert_eq!(c.kvs[0].mod_revision, 3);
    }

    #[test]
    fn deleting_nothing_takes_no_revision() {
        let (_db, store) = store();
        let mut batch = store.write();
        assert_eq!(batch.txn().delete_range(KeyRange::new(b"missing", b"")), 0);
        assert_eq!(commit(batch), 1);
    }

    #[test]
    fn compaction_removes_history_and_guards_old_reads() {
        let (_db, store) = store();
        put(&store, "k", "v1"); // 2
        put(&store, "k", "v2"); // 3
        put(&store, "k", "v3"); // 4
        assert_eq!(compact(&store, 3).unwrap(), 4);
        assert_eq!(get(&store, "k", 2), Err(Error::Compacted));
        assert_eq!(
            &get(&store, "k", 3).unwrap().unwrap().value[..],
            b"v2",
            "reads at the compact revision still work"
        );
        assert_eq!(compact(&store, 3), Err(Error::Compacted));
        assert_eq!(compact(&store, 9), Err(Error::FutureRevision));
    }

    #[test]
    fn a_first_compaction_at_zero_is_accepted_once() {
        let (_db, store) = store();
        assert_eq!(store.compacted_revision(), NEVER_COMPACTED);
        assert_eq!(compact(&store, 0), Ok(1));
        assert_eq!(compact(&store, 0), Err(Error::Compacted));
    }

    #[test]
    fn the_index_is_rebuilt_from_history() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("state").unwrap();
        {
            let store = KvStore::open(tree.clone()).unwrap();
            put(&store, "a", "1");
            put(&store, "a", "2");
            put(&store, "b", "1");
            compact(&store, 3).unwrap();
        }
        let store = KvStore::open(tree).unwrap();
        assert_eq!(store.current_revision(), 4);
        assert_eq!(store.compacted_revision(), 3);
        assert_eq!(put(&store, "a", "3"), 5);
        let kv = get(&store, "a", 0).unwrap().unwrap();
        assert_eq!(
            (kv.create_revision, kv.version),
            (2, 3),
            "version survives compaction and restart"
        );
    }

    fn revs(h: &History) -> Vec<Rev> {
        h.events
            .iter()
            .map(|e| e.kv.as_ref().unwrap().mod_revision)
            .collect()
    }

    #[test]
    fn history_returns_whole_revisions_from_sled_and_memory() {
        let (_db, store) = store();
        put(&store, "a", "1"); // 2, written back by `commit`
        let applied = store.applied() + 1;
        let mut batch = store.write();
        let mut txn = batch.txn();
        txn.put(b"b", b"1", 0);
        txn.put(b"c", b"1", 0);
        drop(txn);
        batch.finish(applied);
        // Revision 3 is only in memory now (not written back).
        let all = store.history(2, 100).unwrap();
        assert_eq!((revs(&all), all.through), (vec![2, 3, 3], 3));
        let bounded = store.history(2, 2).unwrap();
        assert_eq!(
            (revs(&bounded), bounded.through),
            (vec![2, 3, 3], 3),
            "a revision is never split, even past the bound"
        );
        let bounded = store.history(2, 1).unwrap();
        assert_eq!((revs(&bounded), bounded.through), (vec![2], 2));
        assert!(store.history(4, 10).unwrap().events.is_empty());
    }

    /// A worked example: compacting at a revision that deleted a key forgets the tombstone, so
    /// history from that revision is no longer whole and watchers must start one later.
    #[test]
    fn a_compaction_that_drops_a_delete_moves_history_past_it() {
        let (_db, store) = store();
        put(&store, "a", "1"); // 2
        let mut batch = store.write();
        batch.txn().delete_range(KeyRange::new(b"a", b"")); // 3
        commit(batch);
        put(&store, "b", "1"); // 4
        compact(&store, 3).unwrap();
        assert_eq!(store.compacted_revision(), 3);
        assert_eq!(store.history_from(), 4, "the delete at 3 is gone");
        assert_eq!(store.history(3, 10), Err(Error::Compacted));
        assert_eq!(revs(&store.history(4, 10).unwrap()), vec![4]);
        compact(&store, 4).unwrap();
        assert_eq!(
            store.history_from(),
            4,
            "a put at the compact revision stays"
        );
    }

    #[test]
    fn hash_kv_depends_only_on_history() {
        let (_db1, one) = store();
        let (_db2, two) = store();
        for s in [&one, &two] {
            put(s, "x", "1");
            put(s, "y", "2");
        }
        assert_eq!(one.hash_kv(0).unwrap(), two.hash_kv(0).unwrap());
        put(&two, "z", "3");
        assert_ne!(one.hash_kv(0).unwrap().0, two.hash_kv(0).unwrap().0);
        assert_eq!(
            one.hash_kv(3).unwrap(),
            two.hash_kv(3).unwrap(),
            "same history up to 3"
        );
    }
}
