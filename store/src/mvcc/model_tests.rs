//! A property test of the MVCC store against a model that keeps the whole state at every revision.
//!
//! Random sequences of puts, deletes (single keys and ranges), compactions, write-backs and reopens
//! (after a write-back, like a clean restart) run against both. After every step, every revision
//! the store can still serve must read exactly like the model's state at that revision — keys,
//! values, create and mod revisions, versions — and revisions outside the retained window must fail
//! with etcd's errors.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::key_index::KeyRange;
use super::revision::Rev;
use super::store::{KvStore, NEVER_COMPACTED, RangeOptions, View};
use crate::error::Error;

/// A key's state in the model: value, create revision, mod revision, version.
type ModelKv = (Vec<u8>, Rev, Rev, i64);

#[derive(Debug, Clone)]
enum Op {
    Put(u8, u8),
    Delete(u8),
    DeleteRange(u8, u8),
    /// Compact at `current - n` (clamped to the valid window).
    Compact(u8),
    WriteBack,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..5, any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
        2 => (0u8..5).prop_map(Op::Delete),
        1 => (0u8..5, 0u8..6).prop_map(|(a, b)| Op::DeleteRange(a, b)),
        1 => (0u8..8).prop_map(Op::Compact),
        1 => Just(Op::WriteBack),
        1 => Just(Op::Reopen),
    ]
}

fn key(k: u8) -> Vec<u8> {
    vec![b'a' + k]
}

/// The model: the full state after every revision.
struct Model {
    states: BTreeMap<Rev, BTreeMap<Vec<u8>, ModelKv>>,
    compacted: Rev,
}

impl Model {
    fn current(&self) -> Rev {
        *self
            .states
            .keys()
            .next_back()
            .expect("revision 1 always exists")
    }

    fn state(&self) -> BTreeMap<Vec<u8>, ModelKv> {
        self.states[&self.current()].clone()
    }
}

fn check(store: &KvStore, model: &Model) -> Result<(), TestCaseError> {
    let current = model.current();
    prop_assert_eq!(store.current_revision(), current);
    let read = store.read();
    for (&rev, state) in &model.states {
        let opts = RangeOptions {
            rev,
            ..Default::default()
        };
        let got = read.range(KeyRange::new(b"\0", b"\0"), opts);
        if rev < model.compacted {
            prop_assert_eq!(got, Err(Error::Compacted), "rev {}", rev);
            continue;
        }
        let got = got.map_err(|e| TestCaseError::fail(format!("rev {rev}: {e}")))?;
        let got: BTreeMap<Vec<u8>, ModelKv> = got
            .kvs
            .into_iter()
            .map(|kv| {
                (
                    kv.key.to_vec(),
                    (
                        kv.value.to_vec(),
                        kv.create_revision,
                        kv.mod_revision,
                        kv.version,
                    ),
                )
            })
            .collect();
        prop_assert_eq!(&got, state, "state at revision {}", rev);
    }
    let future = RangeOptions {
        rev: current + 1,
        ..Default::default()
    };
    prop_assert_eq!(
        read.range(KeyRange::new(b"a", b""), future).map(|_| ()),
        Err(Error::FutureRevision)
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn the_store_reads_like_the_model_at_every_retained_revision(ops in prop::collection::vec(op(), 1..40)) {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("state").unwrap();
        let mut store = KvStore::open(tree.clone()).unwrap();
        let mut model = Model { states: BTreeMap::from([(1, BTreeMap::new())]), compacted: NEVER_COMPACTED };
        let mut applied = 0;
        for op in ops {
            applied += 1;
            let mut batch = store.write();
            match op {
                Op::Put(k, v) => {
                    batch.txn().put(&key(k), &[v], 0);
                    let rev = model.current() + 1;
                    let mut state = model.state();
                    let entry = match state.get(&key(k)) {
                        Some((_, create, _, version)) => (vec![v], *create, rev, version + 1),
                        None => (vec![v], rev, rev, 1),
                    };
                    state.insert(key(k), entry);
                    model.states.insert(rev, state);
                }
                Op::Delete(k) => {
                    let deleted = batch.txn().delete_range(KeyRange::new(&key(k), b""));
                    let mut state = model.state();
                    prop_assert_eq!(deleted, usize::from(state.remove(&key(k)).is_some()));
                    if deleted > 0 {
                        model.states.insert(model.current() + 1, state);
                    }
                }
                Op::DeleteRange(a, b) => {
                    let (from, to) = (key(a), key(b));
                    let deleted = batch.txn().delete_range(KeyRange::new(&from, &to));
                    let mut state = model.state();
                    let before = state.len();
                    state.retain(|k, _| !(*k >= from && *k < to));
                    prop_assert_eq!(deleted, before - state.len());
                    if deleted > 0 {
                        model.states.insert(model.current() + 1, state);
                    }
                }
                Op::Compact(n) => {
                    let rev = (model.current() - Rev::from(n)).max(model.compacted + 1).max(0);
                    let result = batch.compact(rev);
                    if rev > model.current() {
                        prop_assert_eq!(result, Err(Error::FutureRevision));
                    } else {
                        prop_assert_eq!(result, Ok(model.current()));
                        model.compacted = rev;
                    }
                }
                Op::WriteBack | Op::Reopen => {}
            }
            batch.finish(applied);
            match op {
                Op::WriteBack => {
                    prop_assert_eq!(store.write_back().unwrap(), model.current());
                }
                Op::Reopen => {
                    store.write_back().unwrap();
                    drop(store);
                    store = KvStore::open(tree.clone()).unwrap();
                    prop_assert_eq!(store.applied(), applied, "the applied index came back with the state");
                }
                _ => {}
            }
            check(&store, &model)?;
        }
    }
}
