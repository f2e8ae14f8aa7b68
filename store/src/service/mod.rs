//! Thin gRPC adapters, one file per etcd service.
//!
//! Each method does the same four things: validate the request (etcd's stateless checks), call the
//! core (propose through Raft, or read after a read index), map the error through
//! `From<Error> for Status` (`error.rs`, the one place that knows etcd's codes and strings), and
//! fill the response header. Nothing here holds state of its own.
//!
//! Lock and Election are built on the other services, as etcd builds them: `local` is the
//! in-process client they use.
//!
//! Services not served yet answer gRPC `Unimplemented`: Auth, and the Cluster service's membership
//! changes.

pub mod cluster;
pub mod election;
pub mod forward;
pub mod kv;
pub mod lease;
pub mod limits;
pub mod local;
pub mod lock;
pub mod maintenance;
pub mod watch;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use concord_proto::etcdserverpb::ResponseHeader;

use crate::lease::Lessor;
use crate::mvcc::KvStore;
use crate::raft::node::NodeHandle;
use crate::watch::Hub;

/// What every adapter needs: the store, the node loop, the identity and the limits.
pub struct Core {
    /// The MVCC store, for reads.
    pub kv: Arc<KvStore>,
    /// The node loop, for proposals and read indexes.
    pub node: NodeHandle,
    /// The database, for sizes and hashes.
    pub db: sled::Db,
    pub member_id: u64,
    pub cluster_id: u64,
    /// `--max-request-bytes`.
    pub max_request_bytes: usize,
    /// `--max-txn-ops`.
    pub max_txn_ops: usize,
    /// The lease table, for keepalives and TimeToLive.
    pub lessor: Arc<Lessor>,
    /// The watch hub, for Watch streams.
    pub hub: Arc<Hub>,
    /// `--election-timeout`: how often watch streams opened with `hasleader` check for a leader.
    pub election_timeout: Duration,
    /// Deliveries a watch stream's channel holds (see `ServerConfig`).
    pub watch_stream_buffer: usize,
    /// Turns true when the server shuts down: long-lived streams end then.
    pub stop: tokio::sync::watch::Receiver<bool>,
    /// Connections to the leader, for requests only it can answer (`forward.rs`).
    pub to_leader: forward::ToLeader,
    /// The members, for MemberList.
    pub members: Arc<crate::members::Members>,
}

impl Core {
    /// The leader's id, when there is one and it is not this member.
    pub fn leader_elsewhere(&self) -> Option<u64> {
        let leader = self.node.status().leader.load(Ordering::Relaxed);
        (leader != 0 && leader != self.member_id).then_some(leader)
    }

    /// Completes a header that carries the revision (or none) with the ids and the Raft term.
    pub fn header(&self, header: Option<ResponseHeader>) -> Option<ResponseHeader> {
        let revision = header.map_or_else(|| self.kv.current_revision(), |h| h.revision);
        Some(ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision,
            raft_term: self.node.status().term.load(Ordering::Relaxed),
        })
    }
}
