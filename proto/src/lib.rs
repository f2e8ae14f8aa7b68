//! Concord's wire protocol: the etcd v3 gRPC API, plus Concord's private
//! peer protocol.
//!
//! Everything here is generated at build time (by `build.rs`, with prost and
//! tonic) from the `.proto` files under `proto/proto/`. There is no
//! handwritten logic in this crate: it is the contract, and the server crates
//! implement it.
//!
//! # The etcd v3 wire contract
//!
//! Concord must be usable by unmodified etcd clients (`etcdctl`, the Go
//! `clientv3`, the Rust `etcd-client` crate). Those clients know nothing of
//! Concord; they only know etcd's protobuf messages and gRPC method paths.
//! The files under `proto/proto/etcd/` are Concord's own rendering of the
//! documented etcd 3.5 API (with the few fields 3.6 added), and they are
//! split into the same protobuf packages as etcd's, because the package is
//! part of every gRPC path (`/etcdserverpb.KV/Range`):
//!
//! | module | protobuf package | what it holds |
//! | --- | --- | --- |
//! | [`mvccpb`] | `mvccpb` | `KeyValue` and watch `Event` |
//! | [`authpb`] | `authpb` | users, roles and permissions |
//! | [`etcdserverpb`] | `etcdserverpb` | services `KV`, `Watch`, `Lease`, `Cluster`, `Maintenance`, `Auth` |
//! | [`v3lockpb`] | `v3lockpb` | service `Lock` |
//! | [`v3electionpb`] | `v3electionpb` | service `Election` |
//! | [`concordpeerpb`] | `concordpeerpb` | Concord's member-to-member messages |
//! | [`concorddemopb`] | `concorddemopb` | a Greeter for the examples (not Concord's API) |
//!
//! ## Why field numbers matter
//!
//! Protobuf encodes each field as its *number* and a wire type, never its
//! name. A message whose field numbers or types differ from etcd's still
//! compiles and still decodes without error — into the wrong fields, or
//! into nothing at all. So message names, field numbers, field types, enum
//! values and the streaming kind of every method are copied exactly from
//! etcd, and must never be "cleaned up". Field *names* matter too: they
//! appear in JSON (for example `etcdctl -w json`), which is why etcd's
//! camelCase names such as `dbSize`, `raftIndex` and `peerURLs` are kept.
//! In Rust, prost turns them into snake case (`db_size`, `raft_index`, and
//! the odd-looking `peer_ur_ls` for `peerURLs`).
//!
//! Fields etcd added after 3.5 (for example `StatusResponse.dbSizeQuota`)
//! are present; a client that does not know a field simply skips it.
//!
//! ## Errors are API too
//!
//! etcd clients do not only look at a gRPC status *code*: they recognise
//! specific failures (a compacted revision, a missing lease, a request that
//! is too large, an authentication failure, ...) by matching the status
//! *message* text against etcd's own error descriptions, such as
//! `etcdserver: mvcc: required revision has been compacted`. A server built
//! on this crate must return those codes with exactly those descriptions,
//! or clients will misreport or mishandle the failure.
//!
//! # Generated code
//!
//! For each protobuf package the module holds the messages (plain prost
//! structs; a nested enum or `oneof` lives in a module named after its
//! message in snake case, e.g. [`etcdserverpb::range_request::SortOrder`]),
//! and for each service a `<service>_server` module (trait plus tonic
//! server) and a `<service>_client` module. Server traits have a default
//! body for every method that answers `Unimplemented`, so an implementation
//! can grow one method at a time.
//! The traits are `#[tonic::async_trait]` traits, and because of those
//! default bodies a method that streams responses returns a
//! [`tonic::codegen::BoxStream`] rather than an associated stream type.
//!
//! # The private peer protocol
//!
//! [`concordpeerpb`] is Concord's own protocol between members; no etcd
//! client speaks it and it is not etcd's peer protocol. Its `Peer` service
//! carries raft messages and snapshots as opaque bytes (raft-rs `eraftpb`
//! types encoded with rust-protobuf 2), which a member decodes only when
//! they come from a configured member. It follows Concord's releases, not
//! etcd's. The transport that uses it comes in a later issue.

/// Stored key-value records and watch events (protobuf package `mvccpb`).
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// Users, roles and permissions (protobuf package `authpb`).
pub mod authpb {
    tonic::include_proto!("authpb");
}

/// The etcd v3 services and their messages (protobuf package
/// `etcdserverpb`).
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

/// The etcd v3 lock service (protobuf package `v3lockpb`).
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}

/// The etcd v3 election service (protobuf package `v3electionpb`).
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}

/// A tiny Greeter service for the examples and the resolver tests (protobuf package
/// `concorddemopb`): not part of Concord's API.
pub mod concorddemopb {
    tonic::include_proto!("concorddemopb");
}

/// Concord's private member-to-member protocol (protobuf package
/// `concordpeerpb`).
pub mod concordpeerpb {
    tonic::include_proto!("concordpeerpb");
}
