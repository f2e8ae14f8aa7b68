//! Watches: streams of changes to a key or a range, from any retained revision on.
//!
//! A client opens a Watch stream and creates watchers on it; each watcher receives every change to
//! its keys from its start revision on. The guarantees are etcd's, and every one of them rests on
//! the MVCC history (`mvcc::store`), which holds each change under its revision:
//! - **ordered**: a watcher's events arrive in revision order;
//! - **unique**: no event arrives twice;
//! - **reliable**: no event after the start revision is skipped — a watcher that cannot be served
//!   any more (its next revision was compacted away) is canceled with `compact_revision`, never
//!   silently advanced;
//! - **atomic**: the events of one revision (one transaction) arrive in one response, unless the
//!   watcher asked for fragments and the response would exceed the request size limit;
//! - **resumable**: a new watcher started at `last seen + 1` continues exactly where an old one
//!   stopped, across streams and restarts, while the history is retained.
//!
//! How ([`hub`]): each watcher is **synced** or **unsynced**, as in etcd's `watchable_store.go`.
//! After each applied batch the node loop hands the batch's events to the hub's dispatcher thread,
//! which offers every synced watcher its events with a non-blocking send into its stream's
//! bounded channel. A watcher whose stream is full becomes unsynced, remembering the first revision
//! it has not received; the catch-up thread reads those revisions back from the MVCC history and
//! delivers them when there is room, and returns the watcher to the synced group once it has
//! reached the hub's revision. So the writer never waits for a slow reader, and a slow reader
//! loses nothing (unless compaction overtakes it, and then it is told so). New watchers with an
//! old start revision begin unsynced the same way.
//!
//! Every send to a stream happens with the hub's lock held, and a watcher's next revision only
//! moves forward under it: that is what makes delivery ordered and unique. Replies to create and
//! cancel requests go through the same channel under the same lock (with a reserved slot), so
//! "created" precedes the watcher's first event and "canceled" follows its last.
//!
//! Left out: watch events from other members' writes need replication (a later issue); the
//! `hasleader` check is done when the stream opens and then once per election timeout.

pub mod hub;
pub mod threads;

pub use hub::{Delivery, Hub, StreamId, WatchId, WatcherEvents};
