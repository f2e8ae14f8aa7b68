//! What travels through the Raft log, and how replies find their callers.
//!
//! A client write becomes a [`Proposal`]: the request itself plus an id and the member that
//! proposed it. Every replica applies it; only the proposer has a caller waiting, found by id in
//! [`Waiters`]. Ids come from [`IdGen`]: the high bits are the start time in milliseconds, so
//! ids stay unique across restarts and an entry left in the log by an earlier run never answers a
//! caller of this one.

use std::collections::HashMap;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use concord_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse,
    LeaseGrantRequest, LeaseGrantResponse, LeaseRevokeRequest, LeaseRevokeResponse, PutRequest,
    PutResponse, TxnRequest, TxnResponse,
};
use tokio::sync::oneshot;

use crate::error::{Error, Result};

/// A replicated command, as stored in a Raft entry's data (protobuf, with prost).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Proposal {
    /// Matches the applied result to the waiting caller (see [`IdGen`]).
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// The member that proposed it: only that member has a caller to answer.
    #[prost(uint64, tag = "2")]
    pub origin: u64,
    /// The request to apply.
    #[prost(oneof = "Command", tags = "3, 4, 5, 6, 7, 8, 9, 10, 11")]
    pub command: Option<Command>,
}

/// The requests that change the state (reads never enter the log).
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Command {
    #[prost(message, tag = "3")]
    Put(PutRequest),
    #[prost(message, tag = "4")]
    DeleteRange(DeleteRangeRequest),
    #[prost(message, tag = "5")]
    Txn(TxnRequest),
    #[prost(message, tag = "6")]
    Compact(CompactionRequest),
    /// The id is never 0 (the proposer picks one) and the TTL is already raised to the minimum.
    #[prost(message, tag = "7")]
    LeaseGrant(LeaseGrantRequest),
    #[prost(message, tag = "8")]
    LeaseRevoke(LeaseRevokeRequest),
    /// The leader's record of remaining TTLs (see `lease`).
    #[prost(message, tag = "9")]
    LeaseCheckpoint(LeaseCheckpoints),
    /// A member's name and client URLs (see `members`).
    #[prost(message, tag = "10")]
    PublishMember(crate::members::Attributes),
    /// New peer URLs for a member (etcd's MemberUpdate; not a Raft conf change).
    #[prost(message, tag = "11")]
    UpdateMember(crate::members::Peer),
}

/// The context of a membership change entry (a raft-rs `ConfChangeV2`): who waits for it, and the
/// member it adds, promotes or removes, as the peer table will hold it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MembershipContext {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub origin: u64,
    #[prost(message, optional, tag = "3")]
    pub peer: Option<crate::members::Peer>,
}

/// Remaining TTLs to remember, so that a new leader does not restart leases from their full TTL.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LeaseCheckpoints {
    #[prost(message, repeated, tag = "1")]
    pub checkpoints: Vec<LeaseCheckpoint>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LeaseCheckpoint {
    #[prost(int64, tag = "1")]
    pub id: i64,
    /// Seconds; 0 = none (the full TTL).
    #[prost(int64, tag = "2")]
    pub remaining_ttl: i64,
}

/// The result of applying a [`Command`].
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compact(CompactionResponse),
    LeaseGrant(LeaseGrantResponse),
    LeaseRevoke(LeaseRevokeResponse),
    LeaseCheckpoint,
    PublishMember,
    /// A membership change (or update) was applied.
    MembershipChanged,
}

/// Generates proposal ids: `start_millis << 22 | counter` (4M proposals per millisecond of uptime
/// before the ids of two runs could meet).
pub struct IdGen {
    next: u64,
}

impl IdGen {
    pub fn new() -> Self {
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        IdGen {
            next: (millis << 22) | 1,
        }
    }

    pub fn next_id(&mut self) -> u64 {
        let id = self.next;
        self.next = self.next.wrapping_add(1).max(1);
        id
    }
}

impl Default for IdGen {
    fn default() -> Self {
        Self::new()
    }
}

/// A caller waiting for its proposal to be applied.
struct Waiter {
    reply: oneshot::Sender<Result<Response>>,
    /// After this the caller has given up (its own timeout fired); the entry is dropped.
    deadline: Instant,
}

/// Callers waiting for their proposals, by proposal id.
#[derive(Default)]
pub struct Waiters {
    waiting: HashMap<u64, Waiter>,
}

impl Waiters {
    pub fn insert(&mut self, id: u64, reply: oneshot::Sender<Result<Response>>, deadline: Instant) {
        self.waiting.insert(id, Waiter { reply, deadline });
    }

    /// Answers the caller of `id`, if it is still waiting here.
    pub fn answer(&mut self, id: u64, result: Result<Response>) {
        if let Some(w) = self.waiting.remove(&id) {
            let _ = w.reply.send(result);
        }
    }

    /// Drops callers whose deadline passed (they already answered their client with a timeout).
    pub fn expire(&mut self, now: Instant) {
        self.waiting
            .retain(|_, w| w.deadline > now && !w.reply.is_closed());
    }

    /// Fails every waiting caller (shutdown).
    pub fn fail_all(&mut self, err: Error) {
        for (_, w) in self.waiting.drain() {
            let _ = w.reply.send(Err(err.clone()));
        }
    }

    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn proposals_round_trip() {
        let p = Proposal {
            id: 7,
            origin: 9,
            command: Some(Command::Put(PutRequest {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                ..Default::default()
            })),
        };
        assert_eq!(Proposal::decode(p.encode_to_vec().as_slice()).unwrap(), p);
    }

    #[test]
    fn ids_increase_and_are_never_zero() {
        let mut ids = IdGen::new();
        let a = ids.next_id();
        let b = ids.next_id();
        assert!(a != 0 && b == a + 1);
    }

    #[tokio::test]
    async fn a_waiter_is_answered_once_by_id() {
        let mut waiters = Waiters::default();
        let (tx, rx) = oneshot::channel();
        waiters.insert(1, tx, Instant::now() + std::time::Duration::from_secs(5));
        waiters.answer(2, Err(Error::Timeout));
        assert_eq!(waiters.len(), 1, "another id answers nobody");
        waiters.answer(1, Err(Error::NoLeader));
        assert_eq!(rx.await.unwrap(), Err(Error::NoLeader));
        assert!(waiters.is_empty());
    }
}
