//! Consensus: every write goes through a raft-rs `RawNode`, even on a lone member.
//!
//! Why Raft on a single node too: one write path, whatever the cluster size, and the log is the
//! write-ahead log that makes acknowledged writes durable. A one-member group commits an entry as
//! soon as it is persisted.
//!
//! - [`node`]: the loop that owns the `RawNode`, its storage and the state machine; the only
//!   writer. Everything else sends it messages.
//! - [`storage`]: raft-rs's `Storage` over sled, with the one-batch-per-Ready rule.
//! - [`proposal`]: what an entry carries, and how its result finds the waiting caller.
//! - [`transport`]: Raft messages to and from the other members, over gRPC streams; never makes
//!   the loop wait, and decodes only what configured members send. Snapshots travel on a stream
//!   of their own.
//! - [`snapshot`]: the whole replicated state at one applied index, as one checked blob.
//! - [`faults`]: what tests do to a member's traffic (partitions, loss, duplication, delay) and
//!   one bug they can switch on.
//!
//! Settings as etcd runs them: pre-vote and check-quorum on, read-only option `Safe`, one tick per
//! `--heartbeat-interval`, `--election-timeout / --heartbeat-interval` ticks to an election.
//!
//! Left out of this version (see the replication issue): membership changes; a cluster runs with
//! the members of its `--initial-cluster`.

pub mod faults;
pub mod node;
pub mod proposal;
pub mod snapshot;
pub mod storage;
pub mod transport;
