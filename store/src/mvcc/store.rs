//! The multi-version key-value store: history in sled, the index in memory.
//!
//! Every change is a *record* stored under its [`Revision`] in the state tree (see `revision.rs` for
//! the key layout): a put stores the whole `mvccpb.KeyValue` as of that revision, a delete stores a
//! tombstone. Records are never rewritten, only removed by compaction, so a reader that found a
//! revision in the index can fetch its value without further coordination.
//!
//! Concurrency: one [`parking_lot::RwLock`] guards the index and the two clocks (current and compact
//! revision). Readers ([`ReadTxn`]) hold it shared while they look up revisions and fetch records;
//! the apply loop holds it exclusively for the length of one [`WriteTxn`], so a reader sees either
//! none or all of a transaction. It is a synchronous lock on purpose: nothing awaits while holding
//! it, and sections are short.
//!
//! Atomicity and durability: a write transaction ends in one sled batch holding its records, the new
//! current revision and the Raft applied index (added by the caller), so after a crash the state and
//! the applied index always agree. The batch is not flushed here: the Raft log already holds the
//! entry durably, and a restart re-applies entries after the stored applied index.
//!
//! Left out here: leases are looked up by the caller before a put is applied; watch notification
//! happens after the batch, in the node loop.

use std::collections::HashMap;

use concord_proto::mvccpb::KeyValue;
use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use prost::Message;

use super::key_index::{KeyRange, TreeIndex};
use super::revision::{HISTORY_PREFIX, Rev, Revision};
use crate::error::{Error, Result};

/// Meta key: the current main revision.
const META_REV: &[u8] = b"m/rev";
/// Meta key: the revision of the last compaction.
const META_COMPACT: &[u8] = b"m/compact";

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

/// The index and the clocks, guarded together.
#[derive(Debug, Default)]
struct IndexState {
    /// Every key's history.
    index: TreeIndex,
    /// The revision of the last committed write transaction (1 for an empty store).
    current: Rev,
    /// History below this revision is gone; -1 if never compacted (as in etcd, so that a first
    /// compaction at revision 0 is accepted).
    compacted: Rev,
}

/// The MVCC key-value store.
pub struct KvStore {
    /// The state tree: history records and meta keys, shared with the apply loop's batches.
    tree: sled::Tree,
    /// The in-memory index and the clocks (see the module doc).
    state: RwLock<IndexState>,
}

impl KvStore {
    /// Opens the store on `tree` and rebuilds the index from the history it holds.
    pub fn open(tree: sled::Tree) -> Result<Self> {
        let mut state = IndexState {
            current: read_i64(&tree, META_REV)?.unwrap_or(1),
            compacted: read_i64(&tree, META_COMPACT)?.unwrap_or(NEVER_COMPACTED),
            ..Default::default()
        };
        for item in tree.scan_prefix([HISTORY_PREFIX]) {
            let (k, v) = item?;
            let rev = Revision::from_key(&k).ok_or_else(|| Error::Corrupt("bad history key".into()))?;
            let (tombstone, kv) = decode_record(&v)?;
            if tombstone {
                state.index.tombstone(&kv.key, rev);
            } else {
                state.index.restore(&kv.key, rev, kv.create_revision, kv.version);
            }
            state.current = state.current.max(rev.main);
        }
        Ok(KvStore {
            tree,
            state: RwLock::new(state),
        })
    }

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
            store: self,
            state: self.state.write(),
            pending: HashMap::new(),
            batch: sled::Batch::default(),
        }
    }

    /// The current revision.
    pub fn current_revision(&self) -> Rev {
        self.state.read().current
    }

    /// The compact revision ([`NEVER_COMPACTED`] if never compacted).
    pub fn compacted_revision(&self) -> Rev {
        self.state.read().compacted
    }

    /// A CRC-32 over the history records with main revision in `(compacted, rev]` (etcd's
    /// HashKV): equal on replicas that applied the same entries, whatever their timing.
    pub fn hash_kv(&self, rev: Rev) -> Result<(u32, Rev, Rev)> {
        let state = self.state.read();
        let rev = if rev <= 0 { state.current } else { rev };
        if rev > state.current {
            return Err(Error::FutureRevision);
        }
        if rev < state.compacted {
            return Err(Error::Compacted);
        }
        let mut hasher = crc32fast::Hasher::new();
        let upper = Revision::new(rev + 1, 0).to_key();
        for item in self.tree.range(&[HISTORY_PREFIX][..]..&upper[..]) {
            let (k, v) = item?;
            hasher.update(&k);
            hasher.update(&v);
        }
        Ok((hasher.finalize(), state.compacted, rev))
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
            self.store.fetch(rev)
        })
    }
}

impl KvStore {
    fn fetch(&self, rev: Revision) -> Result<KeyValue> {
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
    Ok(RangeResult { kvs, count, rev: cur })
}

/// The writes of one batch of Raft entries (one Ready): they hold the index exclusively until
/// [`WriteBatch::commit`] has applied them to sled in one atomic batch, so readers never see an index
/// entry whose record is not in sled yet, nor part of a batch.
pub struct WriteBatch<'a> {
    store: &'a KvStore,
    state: RwLockWriteGuard<'a, IndexState>,
    /// Records of this batch not yet in sled, for reads inside it.
    pending: HashMap<Revision, KeyValue>,
    /// The records and meta keys to apply at commit.
    batch: sled::Batch,
}

impl<'a> WriteBatch<'a> {
    /// Starts the transaction of one entry.
    pub fn txn(&mut self) -> WriteTxn<'_, 'a> {
        let begin = self.state.current;
        WriteTxn {
            batch: self,
            begin,
            changes: 0,
        }
    }

    /// Compacts history below `rev` (see `key_index.rs`): removes every record no read at `rev` or
    /// later needs. Returns the current revision.
    pub fn compact(&mut self, rev: Rev) -> Result<Rev> {
        if rev <= self.state.compacted {
            return Err(Error::Compacted);
        }
        if rev > self.state.current {
            return Err(Error::FutureRevision);
        }
        for removed in self.state.index.compact(rev) {
            self.batch.remove(&removed.to_key());
            self.pending.remove(&removed);
        }
        self.batch.insert(META_COMPACT, &rev.to_be_bytes());
        self.state.compacted = rev;
        Ok(self.state.current)
    }

    /// Applies everything, and `meta` (the caller's applied index), in one atomic sled batch.
    /// Returns the store's revision afterwards.
    pub fn commit(mut self, meta: &[(&[u8], Vec<u8>)]) -> Result<Rev> {
        let rev = self.state.current;
        self.batch.insert(META_REV, &rev.to_be_bytes());
        for (k, v) in meta {
            self.batch.insert(*k, v.as_slice());
        }
        let batch = std::mem::take(&mut self.batch);
        self.store.tree.apply_batch(batch)?;
        Ok(rev)
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
            key: key.to_vec(),
            create_revision,
            mod_revision: rev.main,
            version,
            value: value.to_vec(),
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
                key: key.clone(),
                mod_revision: rev.main,
                ..Default::default()
            };
            self.record(rev, TAG_TOMBSTONE, tomb);
        }
        keys.len()
    }

    fn record(&mut self, rev: Revision, tag: u8, kv: KeyValue) {
        self.batch.batch.insert(&rev.to_key(), encode_record(tag, &kv));
        self.batch.pending.insert(rev, kv);
        self.changes += 1;
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
        if self.has_changes() { self.begin + 1 } else { self.begin }
    }

    fn compacted(&self) -> Rev {
        self.batch.state.compacted
    }

    fn range(&self, range: KeyRange<'_>, opts: RangeOptions) -> Result<RangeResult> {
        range_keys(&self.batch.state, range, opts, self.rev(), |rev| {
            match self.batch.pending.get(&rev) {
                Some(kv) => Ok(kv.clone()),
                None => self.batch.store.fetch(rev),
            }
        })
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

    fn store() -> (sled::Db, KvStore) {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let store = KvStore::open(db.open_tree("state").unwrap()).unwrap();
        (db, store)
    }

    fn put(store: &KvStore, key: &str, value: &str) -> Rev {
        let mut batch = store.write();
        batch.txn().put(key.as_bytes(), value.as_bytes(), 0);
        batch.commit(&[]).unwrap()
    }

    fn compact(store: &KvStore, rev: Rev) -> Result<Rev> {
        let mut batch = store.write();
        let result = batch.compact(rev);
        batch.commit(&[]).unwrap();
        result
    }

    fn get(store: &KvStore, key: &str, rev: Rev) -> Result<Option<KeyValue>> {
        let opts = RangeOptions { rev, ..Default::default() };
        let res = store.read().range(KeyRange::new(key.as_bytes(), b""), opts)?;
        Ok(res.kvs.into_iter().next())
    }

    /// A worked example of revisions, versions and history reads.
    #[test]
    fn history_of_one_key() {
        let (_db, store) = store();
        assert_eq!(store.current_revision(), 1, "an empty store is at revision 1");
        assert_eq!(put(&store, "foo", "a"), 2);
        assert_eq!(put(&store, "foo", "b"), 3);
        let mut batch = store.write();
        assert_eq!(batch.txn().delete_range(KeyRange::new(b"foo", b"")), 1);
        assert_eq!(batch.commit(&[]).unwrap(), 4);
        assert_eq!(put(&store, "foo", "c"), 5);

        let kv = get(&store, "foo", 3).unwrap().unwrap();
        assert_eq!((kv.value.as_slice(), kv.create_revision, kv.mod_revision, kv.version), (&b"b"[..], 2, 3, 2));
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
        let seen = txn.range(KeyRange::new(b"a", b"\0"), RangeOptions::default()).unwrap();
        assert_eq!(seen.count, 2);
        assert_eq!(seen.kvs[1].mod_revision, 2);
        drop(txn);
        batch.txn().put(b"c", b"3", 0);
        assert_eq!(batch.commit(&[]).unwrap(), 3, "one revision per transaction, two in the batch");
        assert_eq!(store.current_revision(), 3);
        let c = store.read().range(KeyRange::new(b"c", b""), RangeOptions::default()).unwrap();
        assert_eq!(c.kvs[0].mod_revision, 3);
    }

    #[test]
    fn deleting_nothing_takes_no_revision() {
        let (_db, store) = store();
        let mut batch = store.write();
        assert_eq!(batch.txn().delete_range(KeyRange::new(b"missing", b"")), 0);
        assert_eq!(batch.commit(&[]).unwrap(), 1);
    }

    #[test]
    fn compaction_removes_history_and_guards_old_reads() {
        let (_db, store) = store();
        put(&store, "k", "v1"); // 2
        put(&store, "k", "v2"); // 3
        put(&store, "k", "v3"); // 4
        assert_eq!(compact(&store, 3).unwrap(), 4);
        assert_eq!(get(&store, "k", 2), Err(Error::Compacted));
        assert_eq!(get(&store, "k", 3).unwrap().unwrap().value, b"v2", "reads at the compact revision still work");
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
        assert_eq!((kv.create_revision, kv.version), (2, 3), "version survives compaction and restart");
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
        assert_eq!(one.hash_kv(3).unwrap(), two.hash_kv(3).unwrap(), "same history up to 3");
    }
}
