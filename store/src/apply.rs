//! The state machine: applies committed Raft entries to the MVCC store, deterministically.
//!
//! Invariants, asserted:
//! - entries are applied in index order, each exactly once: an entry at or below the stored applied
//!   index is skipped (it was applied before a restart), any other must be `applied + 1`;
//! - the applied index reaches sled in the **same atomic batch** as the state changes of the
//!   entries up to it (`KvStore::write_back`), so a crash can never leave one without the other
//!   (etcd 3.5.0–3.5.2 lost writes by saving it apart);
//! - a request that fails a stateful check (a compacted revision, an unknown lease) changes nothing
//!   but the applied index, and every replica answers it with the same error; a transaction that
//!   fails after it began writing is rolled back (`WriteTxn::rollback`), never half applied;
//! - a non-deterministic failure (sled I/O) is returned as an error that stops the node loop;
//! - lease attachments follow the changes of each entry before the next entry is applied (a put
//!   attaches its key, a delete detaches it), so a later entry of the same batch sees them.
//!
//! Every batch yields its events (the changes, in revision order) for the watch hub.

use std::sync::Arc;

use concord_proto::etcdserverpb::{
    CompactionResponse, LeaseGrantResponse, LeaseRevokeResponse, ResponseHeader,
};
use concord_proto::mvccpb::Event;
use prost::Message;
use raft::eraftpb::{ConfState, Entry, EntryType};

use crate::error::{Error, Result};
use crate::lease::Lessor;
use crate::members::{Members, Peer};
use crate::mvcc::store::WriteBatch;
use crate::mvcc::txn;
use crate::mvcc::{KvStore, Rev};
use crate::raft::proposal::{Command, Proposal, Response};
use crate::raft::storage::KEY_CONF_STATE;

/// What a membership change does to the peer table.
#[derive(Debug, Clone, PartialEq)]
pub enum PeerChange {
    /// Add the member, or change it (a learner promoted).
    Set(Peer),
    Remove(u64),
    /// Nothing (raft-rs refused the change, or it leaves a joint configuration).
    None,
}

/// The outcome of one applied entry that a caller may be waiting for.
pub struct Applied {
    /// The proposal id (see `raft::proposal`).
    pub id: u64,
    /// The member that proposed it.
    pub origin: u64,
    pub result: Result<Response>,
}

/// What one batch of entries did.
#[derive(Default)]
pub struct Outcome {
    /// The results callers may be waiting for.
    pub answers: Vec<Applied>,
    /// Every change, in revision order (for watchers).
    pub events: Vec<Event>,
    /// The store's revision after the batch.
    pub revision: Rev,
}

/// Applies entries to the store and the lease table. The applied index is the store's own
/// (`KvStore::applied`), kept with the state it describes.
pub struct StateMachine {
    kv: Arc<KvStore>,
    lessor: Arc<Lessor>,
    members: Arc<Members>,
}

impl StateMachine {
    pub fn open(kv: Arc<KvStore>, lessor: Arc<Lessor>, members: Arc<Members>) -> Self {
        StateMachine {
            kv,
            lessor,
            members,
        }
    }

    pub fn members(&self) -> &Arc<Members> {
        &self.members
    }

    pub fn lessor(&self) -> &Arc<Lessor> {
        &self.lessor
    }

    /// The index of the last applied entry.
    pub fn applied(&self) -> u64 {
        self.kv.applied()
    }

    pub fn kv(&self) -> &Arc<KvStore> {
        &self.kv
    }

    /// Replaces the whole state with a snapshot's `records` covering Raft index `index`
    /// (`raft/snapshot.rs`), in one atomic sled batch with `extra` records, then rebuilds the
    /// lease table and the members from it. raft-rs hands a member only snapshots newer than
    /// what it committed, so one older than the applied state is a bug.
    pub fn restore(
        &mut self,
        records: Vec<(Vec<u8>, Vec<u8>)>,
        index: u64,
        extra: &[(&[u8], Vec<u8>)],
    ) -> Result<()> {
        assert!(
            index > self.applied(),
            "a snapshot at {index} is not newer than the applied index {}",
            self.applied()
        );
        self.kv.restore(records, index, extra)?;
        self.lessor.reload(&self.kv)?;
        self.members.reload(&self.kv)
    }

    /// Applies a membership change entry at `index`, whose new conf state raft-rs computed: the
    /// conf state, the peer table's change and the applied index reach sled in one batch. (The
    /// node loop applies the entries around it with [`StateMachine::apply`].)
    pub fn apply_membership(
        &mut self,
        index: u64,
        conf_state: &ConfState,
        change: PeerChange,
    ) -> Result<()> {
        assert_eq!(
            index,
            self.applied() + 1,
            "entries must be applied in order without gaps"
        );
        let mut batch = self.kv.write();
        batch.set_meta(
            KEY_CONF_STATE.to_vec(),
            Some(protobuf::Message::write_to_bytes(conf_state)?),
        );
        match change {
            PeerChange::Set(peer) => self.members.apply_peer(&mut batch, peer),
            PeerChange::Remove(id) => self.members.apply_removal(&mut batch, id),
            PeerChange::None => {}
        }
        batch.finish(index);
        Ok(())
    }

    /// Applies a run of committed entries in one [`WriteBatch`]: one exclusive section for readers.
    /// The changes reach sled later, in one atomic batch with the applied index
    /// ([`KvStore::write_back`]). Returns the results callers may be waiting for (readable once
    /// this returns) and the batch's events.
    pub fn apply(&mut self, entries: &[Entry]) -> Result<Outcome> {
        let mut out = Vec::new();
        let mut applied = self.applied();
        let mut batch = self.kv.write();
        for entry in entries {
            if entry.index <= applied {
                continue; // applied before a restart
            }
            assert_eq!(
                entry.index,
                applied + 1,
                "entries must be applied in order without gaps"
            );
            match entry.get_entry_type() {
                // The empty entry a new leader appends to commit its term.
                EntryType::EntryNormal if entry.data.is_empty() => {}
                EntryType::EntryNormal => {
                    let proposal = Proposal::decode(&entry.data[..])?;
                    let events_start = batch.events().len();
                    let result =
                        execute(&mut batch, &self.lessor, &self.members, proposal.command)?;
                    self.lessor.apply_events(&batch.events()[events_start..]);
                    out.push(Applied {
                        id: proposal.id,
                        origin: proposal.origin,
                        result,
                    });
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    return Err(Error::Raft(format!(
                        "entry {} changes membership, which this version does not support",
                        entry.index
                    )));
                }
            }
            applied = entry.index;
        }
        let (revision, events) = batch.finish(applied);
        Ok(Outcome {
            answers: out,
            events,
            revision,
        })
    }
}

/// Runs one command. The outer `Result` is a local failure that must stop the node; the inner one is
/// the (deterministic) answer to the client.
fn execute(
    batch: &mut WriteBatch<'_>,
    lessor: &Lessor,
    members: &Members,
    command: Option<Command>,
) -> Result<Result<Response>> {
    let Some(command) = command else {
        return Err(Error::Corrupt("proposal without a command".into()));
    };
    let result = match command {
        Command::Compact(c) => batch.compact(c.revision).map(|revision| {
            Response::Compact(CompactionResponse {
                header: header(revision),
            })
        }),
        Command::LeaseGrant(g) => lessor.apply_grant(batch, g.id, g.ttl).map(|()| {
            Response::LeaseGrant(LeaseGrantResponse {
                header: header(batch.revision()),
                id: g.id,
                ttl: g.ttl,
                error: String::new(),
            })
        }),
        Command::LeaseRevoke(r) => lessor.apply_revoke(batch, r.id).map(|revision| {
            Response::LeaseRevoke(LeaseRevokeResponse {
                header: header(revision),
            })
        }),
        Command::LeaseCheckpoint(c) => {
            let checkpoints: Vec<(i64, i64)> = c
                .checkpoints
                .iter()
                .map(|c| (c.id, c.remaining_ttl))
                .collect();
            lessor.apply_checkpoints(batch, &checkpoints);
            Ok(Response::LeaseCheckpoint)
        }
        Command::PublishMember(attributes) => {
            members.apply(batch, attributes);
            Ok(Response::PublishMember)
        }
        Command::UpdateMember(peer) => match members.peer(peer.id) {
            None => Err(Error::MemberNotFound),
            Some(_) if members.url_taken(&peer.peer_urls, peer.id) => Err(Error::PeerUrlExists),
            Some(old) => {
                let is_learner = old.is_learner;
                members.apply_peer(batch, Peer { is_learner, ..peer });
                Ok(Response::MembershipChanged)
            }
        },
        command => {
            let mut w = batch.txn();
            let result = match command {
                Command::Put(p) => txn::check_put_state(&w, &p, lessor)
                    .and_then(|()| txn::put(&mut w, &p))
                    .map(Response::Put),
                Command::DeleteRange(d) => txn::delete_range(&mut w, &d).map(Response::DeleteRange),
                Command::Txn(t) => txn::txn_write(&mut w, &t, lessor).map(Response::Txn),
                _ => unreachable!("matched above"),
            };
            if result.is_err() {
                // The stateful checks run before any write, but one case gets past them (as in
                // etcd, which panics on it): a txn whose from-key delete ("\0" range end) removes
                // the key a later `ignore_value` put needs. Take the writes back instead.
                w.rollback();
            }
            result
        }
    };
    match result {
        Err(e) if !e.is_deterministic() => Err(e),
        result => Ok(result),
    }
}

fn header(revision: Rev) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::proposal::Proposal;
    use concord_proto::etcdserverpb::{CompactionRequest, PutRequest};

    fn entry(index: u64, command: Command) -> Entry {
        let data = Proposal {
            id: index,
            origin: 1,
            command: Some(command),
        }
        .encode_to_vec();
        Entry {
            index,
            term: 1,
            data: data.into(),
            ..Default::default()
        }
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
        let kv = Arc::new(KvStore::open(state).unwrap());
        let lessor = Arc::new(Lessor::open(&kv, 2).unwrap());
        let me = crate::members::Attributes {
            id: 1,
            name: "test".into(),
            client_urls: vec![],
        };
        let members = Members::open(
            &kv,
            vec![Peer {
                id: 1,
                peer_urls: vec![],
                is_learner: false,
            }],
            me,
        )
        .unwrap();
        StateMachine::open(kv, lessor, Arc::new(members))
    }

    #[test]
    fn the_applied_index_moves_with_the_state() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let mut sm = open(&db);
        sm.apply(&[entry(1, put("a", 0)), entry(2, put("b", 0))])
            .unwrap();
        sm.kv().write_back().unwrap();
        drop(sm);
        let mut sm = open(&db);
        assert_eq!(sm.applied(), 2);
        assert_eq!(
            sm.kv().current_revision(),
            3,
            "one revision per entry of the batch"
        );
        assert!(
            sm.apply(&[entry(2, put("b", 0))])
                .unwrap()
                .answers
                .is_empty(),
            "an applied entry is skipped"
        );
        assert_eq!(sm.kv().current_revision(), 3, "and not applied twice");
    }

    #[test]
    fn a_crash_before_write_back_returns_to_the_written_state() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let mut sm = open(&db);
        sm.apply(&[entry(1, put("a", 0))]).unwrap();
        sm.kv().write_back().unwrap();
        sm.apply(&[entry(2, put("b", 0))]).unwrap();
        assert_eq!(
            sm.kv().current_revision(),
            3,
            "readable before it is written"
        );
        drop(sm); // a crash: entry 2 is only in the (durable) Raft log
        let mut sm = open(&db);
        assert_eq!((sm.applied(), sm.kv().current_revision()), (1, 2));
        sm.apply(&[entry(2, put("b", 0))]).unwrap();
        assert_eq!(
            sm.kv().current_revision(),
            3,
            "re-applying the log gives the same state"
        );
    }

    #[test]
    fn a_rejected_request_still_advances_the_applied_index() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let mut sm = open(&db);
        let out = sm
            .apply(&[
                entry(1, put("a", 7)),
                entry(
                    2,
                    Command::Compact(CompactionRequest {
                        revision: 5,
                        physical: true,
                    }),
                ),
            ])
            .unwrap()
            .answers;
        assert_eq!(out[0].result, Err(Error::LeaseNotFound));
        assert_eq!(out[1].result, Err(Error::FutureRevision));
        assert_eq!(sm.applied(), 2);
        assert_eq!(sm.kv().current_revision(), 1);
    }

    /// The reviewer's case: a from-key delete then an `ignore_value` put of the deleted key. The
    /// checks before the txn see the key, the put inside it does not; the txn must fail whole.
    #[test]
    fn a_txn_that_fails_midway_is_rolled_back() {
        use concord_proto::etcdserverpb::{
            DeleteRangeRequest, RequestOp, TxnRequest, request_op::Request,
        };
        let db = sled::Config::new().temporary(true).open().unwrap();
        let mut sm = open(&db);
        sm.apply(&[entry(1, put("a", 0))]).unwrap();
        let txn = TxnRequest {
            success: vec![
                RequestOp {
                    request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                        key: b"a".to_vec(),
                        range_end: b"\0".to_vec(),
                        ..Default::default()
                    })),
                },
                RequestOp {
                    request: Some(Request::RequestPut(PutRequest {
                        key: b"a".to_vec(),
                        ignore_value: true,
                        ..Default::default()
                    })),
                },
            ],
            ..Default::default()
        };
        let out = sm.apply(&[entry(2, Command::Txn(txn))]).unwrap().answers;
        assert_eq!(out[0].result, Err(Error::KeyNotFound));
        assert_eq!(sm.kv().current_revision(), 2, "no revision taken");
        sm.apply(&[entry(3, put("a", 0))]).unwrap();
        sm.kv().write_back().unwrap();
        drop(sm);
        let sm = open(&db);
        let read = sm.kv().read();
        let kv = crate::mvcc::View::range(
            &read,
            crate::mvcc::KeyRange::new(b"a", b""),
            Default::default(),
        )
        .unwrap()
        .kvs
        .remove(0);
        assert_eq!(
            (kv.create_revision, kv.mod_revision, kv.version),
            (2, 3, 2),
            "as if the txn never ran"
        );
    }

    #[test]
    #[should_panic(expected = "without gaps")]
    fn a_gap_in_the_log_is_a_bug() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let mut sm = open(&db);
        let _ = sm.apply(&[entry(2, put("a", 0))]);
    }
}
