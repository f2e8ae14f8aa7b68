//! Concord: an etcd-v3-compatible coordination store for Rust services.
//!
//! This crate ties the workspace together: the integration tests in `tests/` and the examples in
//! `examples/` belong to it. The parts live in their own crates and are re-exported here:
//!
//! - [`proto`] (`concord-proto`): the etcd v3 gRPC API and Concord's private peer protocol.
//! - [`store`] (`concord-store`): the replicated MVCC key-value store and the `concord` binary.
//! - [`recipes`] (`concord-recipes`): the client SDK: sessions, fenced mutexes, ...

pub use concord_proto as proto;
pub use concord_recipes as recipes;
pub use concord_store as store;
