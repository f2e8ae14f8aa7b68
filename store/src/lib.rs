//! `concord-store`: Concord's replicated MVCC key-value store and its etcd-compatible server.
//!
//! A request's path through the crate (docs/architecture.md walks it in detail):
//!
//! ```text
//!  client ──gRPC──▶ service::kv  ──validate──▶ raft::node (the node loop, its own thread)
//!                                                 │ propose → Ready → persist + one flush
//!                                                 ▼
//!                                              apply (state machine) ──▶ mvcc (index + sled)
//!                                                 │ reply by proposal id
//!  client ◀──────── service::kv  ◀─── oneshot ────┘
//! ```
//!
//! - [`config`]: flags (etcd's names), ids derived like etcd's.
//! - [`server`]: opens the data dir, starts the node loop and the listeners.
//! - [`service`]: thin gRPC adapters (KV, Watch, Lease, Maintenance, Cluster, Lock, Election).
//! - [`watch`]: the watch hub: synced and unsynced watchers, catch-up from history.
//! - [`lease`]: the lessor (replicated leases, leader-only expiry) and its keeper task.
//! - [`members`]: the members: the replicated peer table, names and client URLs published.
//! - [`join`]: a new member's first start: bootstrap, joining a cluster, refusing a wiped one.
//! - [`raft`]: the node loop, the sled-backed Raft log, proposals and their waiters.
//! - [`apply`]: the deterministic state machine.
//! - [`mvcc`]: revisions, the key index, history in sled, etcd's request semantics.
//! - [`error`]: the one error type and its gRPC mapping.

pub mod apply;
pub mod config;
pub mod error;
pub mod join;
pub mod lease;
pub mod members;
pub mod mvcc;
pub mod raft;
pub mod server;
pub mod service;
pub mod watch;

pub use config::{Flags, ServerConfig};
pub use error::{Error, Result};
pub use server::Server;
