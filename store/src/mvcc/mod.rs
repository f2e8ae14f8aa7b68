//! Multi-version concurrency control, as etcd defines it.
//!
//! The store keeps every version of every key, each stamped with the [`Revision`] of the write
//! transaction that made it, until a compaction removes history no longer needed. Reads name a
//! revision (or take the current one) and see the store exactly as it was then.
//!
//! - [`revision`]: the logical clock and how it is laid out on disk.
//! - [`key_index`]: the in-memory index from key to revisions, with generations and tombstones.
//! - [`store`]: history records in sled, read and write transactions, compaction, HashKV.
//! - [`txn`]: etcd's request semantics on top: Range, Put, DeleteRange, Txn (compares, nested
//!   transactions, the duplicate-key rule) and the checks that run before anything is written.
//!
//! Semantics reproduced from etcd 3.4/3.5: the store starts at revision 1; only a transaction that
//! changes something takes a revision; a key's `version` counts puts since its creation and resets
//! when it is deleted; a read below the compact revision fails with "required revision has been
//! compacted", above the current one with "required revision is a future revision".

pub mod key_index;
pub mod revision;
pub mod store;
pub mod txn;

#[cfg(test)]
mod model_tests;

pub use key_index::KeyRange;
pub use revision::{Rev, Revision};
pub use store::{KvStore, RangeOptions, RangeResult, View};
