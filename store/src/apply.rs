//! The state machine: applies committed Raft entries to the MVCC store, deterministically.
//!
//! Invariants, asserted:
//! - entries are applied in index order, each exactly once: an entry at or below the stored applied
//!   index is skipped (it was applied before a restart), any other must be `applied + 1`;
//! - the applied index is written in the **same sled batch** as the state changes of its entry, so a
//!   crash can never leave one without the other (etcd 3.5.0–3.5.2 lost writes by saving it apart);
//! - a request that fails a stateful check (a compacted revision, an unknown lease) changes nothing
//!   but the applied index, and every replica answers it with the same error;
//! - a non-deterministic failure (sled I/O) is returned as an error that stops the node loop.

use std::sync::Arc;

use concord_proto::etcdserverpb::CompactionResponse;
use prost::Message;
use raft::eraftpb::{Entry, EntryType};

use crate::error::{Error, Result};
use crate::mvcc::store::read_i64;
use crate::mvcc::txn::{self, Leases};
use crate::mvcc::KvStore;
use crate::raft::proposal::{Command, Proposal, Response};

/// State tree key of the applied index.
pub const KEY_APPLIED: &[u8] = b"m/applied";

/// The outcome of one applied entry that a caller may be waiting for.
pub struct Applied {
    /// The proposal id (see `raft::proposal`).
    pub id: u64,
    /// The member that proposed it.
    pub origin: u64,
    pub result: Result<Response>,
}

/// The lease table as seen by apply. Leases arrive in a later issue; until then no lease exists,
/// so every put naming one fails with "requested lease not found", as the issue specifies.
struct NoLeasesYet;

impl Leases for NoLeasesYet {
    fn exists(&self, _id: i64) -> bool {
        false
    }
}

/// Applies entries to the store and tracks the applied index.
pub struct StateMachine {
    kv: Arc<KvStore>,
    /// The state tree (for entries that change nothing but the applied index).
    state: sled::Tree,
    /// The index of the last applied entry.
    applied: u64,
}

impl StateMachine {
    pub fn open(kv: Arc<KvStore>, state: sled::Tree) -> Result<Self> {
        let applied = read_i64(&state, KEY_APPLIED)?.unwrap_or(0) as u64;
        Ok(StateMachine { kv, state, applied })
    }

    pub fn applied(&self) -> u64 {
        self.applied
    }

    pub fn kv(&self) -> &Arc<KvStore> {
        &self.kv
    }

    /// Applies one committed entry; returns the result a caller may be waiting for.
    pub fn apply(&mut self, entry: &Entry) -> Result<Option<Applied>> {
        if entry.index <= self.applied {
            return Ok(None);
        }
        assert_eq!(entry.index, self.applied + 1, "entries must be applied in order without gaps");
        let applied_meta = (KEY_APPLIED, (entry.index as i64).to_be_bytes().to_vec());
        let outcome = match entry.get_entry_type() {
            EntryType::EntryNormal if entry.data.is_empty() => {
                // The empty entry a new leader appends to commit its term.
                self.state.insert(applied_meta.0, applied_meta.1)?;
                None
            }
            EntryType::EntryNormal => {
                let proposal = Proposal::decode(&entry.data[..])?;
                let result = self.execute(proposal.command, applied_meta)?;
                Some(Applied {
                    id: proposal.id,
                    origin: proposal.origin,
                    result,
                })
            }
            EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                return Err(Error::Raft(format!(
                    "entry {} changes membership, which this version does not support",
                    entry.index
                )));
            }
        };
        self.applied = entry.index;
        Ok(outcome)
    }

    /// Runs a command. The outer `Result` is a local failure that must stop the node; the inner one
    /// is the (deterministic) answer to the client.
    fn execute(&self, command: Option<Command>, applied: (&[u8], Vec<u8>)) -> Result<Result<Response>> {
        let Some(command) = command else {
            return Err(Error::Corrupt("proposal without a command".into()));
        };
        if let Command::Compact(c) = command {
            let mut batch = sled::Batch::default();
            batch.insert(applied.0, applied.1.clone());
            return match self.kv.compact(c.revision, batch) {
                Ok(rev) => Ok(Ok(Response::Compact(CompactionResponse {
                    header: Some(concord_proto::etcdserverpb::ResponseHeader {
                        revision: rev,
                        ..Default::default()
                    }),
                }))),
                Err(e) if e.is_deterministic() => {
                    self.state.insert(applied.0, applied.1)?;
                    Ok(Err(e))
                }
                Err(e) => Err(e),
            };
        }
        let mut w = self.kv.write();
        let result = match command {
            Command::Put(p) => txn::check_put_state(&w, &p, &NoLeasesYet)
                .and_then(|()| txn::put(&mut w, &p))
                .map(Response::Put),
            Command::DeleteRange(d) => txn::delete_range(&mut w, &d).map(Response::DeleteRange),
            Command::Txn(t) => txn::txn_write(&mut w, &t, &NoLeasesYet).map(Response::Txn),
            Command::Compact(_) => unreachable!("handled above"),
        };
        if let Err(e) = &result {
            if !e.is_deterministic() {
                return Err(e.clone());
            }
            assert!(!w.has_changes(), "a request that failed its checks must not have written");
        }
        w.commit(&[applied])?;
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::proposal::Proposal;
    use concord_proto::etcdserverpb::{CompactionRequest, PutRequest};

    fn entry(index: u64, command: Command) -> Entry {
        let mut e = Entry::default();
        e.index = index;
        e.term = 1;
        e.data = Proposal {
            id: index,
            origin: 1,
            command: Some(command),
        }
        .encode_to_vec()
        .into();
        e
    }

    fn put(key: &str, lease: i64) -> Command {
        Command::Put(PutRequest {
            key: key.into(),
            value: b"v".to_vec(),
            lease,
            ..Default::default()
        })
    }

    fn open(db: &sled::Db) -> StateMachine {
        let state = db.open_tree("state").unwrap();
        StateMachine::open(Arc::new(KvStore::open(state.clone()).unwrap()), state).unwrap()
    }

    #[test]
    fn the_applied_index_moves_with_the_state() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let mut sm = open(&db);
        sm.apply(&entry(1, put("a", 0))).unwrap();
        sm.apply(&entry(2, put("b", 0))).unwrap();
        drop(sm);
        let mut sm = open(&db);
        assert_eq!(sm.applied(), 2);
        assert_eq!(sm.kv().current_revision(), 3);
        assert!(sm.apply(&entry(2, put("b", 0))).unwrap().is_none(), "an applied entry is skipped");
        assert_eq!(sm.kv().current_revision(), 3, "and not applied twice");
    }

    #[test]
    fn a_rejected_request_still_advances_the_applied_index() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let mut sm = open(&db);
        let out = sm.apply(&entry(1, put("a", 7))).unwrap().unwrap();
        assert_eq!(out.result, Err(Error::LeaseNotFound));
        let out = sm.apply(&entry(2, Command::Compact(CompactionRequest { revision: 5, physical: true }))).unwrap();
        assert_eq!(out.unwrap().result, Err(Error::FutureRevision));
        assert_eq!(sm.applied(), 2);
        assert_eq!(sm.kv().current_revision(), 1);
    }

    #[test]
    #[should_panic(expected = "without gaps")]
    fn a_gap_in_the_log_is_a_bug() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let mut sm = open(&db);
        let _ = sm.apply(&entry(2, put("a", 0)));
    }
}
