//! `concord-recipes`: coordination recipes for Rust services, on Concord or any etcd ≥ 3.4.
//!
//! Every recipe is built only on the public etcd v3 API (KV, Txn, Watch, Lease) through the
//! [`etcd-client`](https://docs.rs/etcd-client) crate, with etcd's own key layouts, so it works the
//! same against Concord and against etcd, and interoperates with Go's `concurrency` package and
//! with `etcdctl lock`.
//!
//! - [`Client`]: endpoints, retries of transient failures with exponential backoff and jitter.
//! - [`Session`]: a lease kept alive in the background, with a state you can watch
//!   (Alive → Suspect → Expired).
//! - [`Mutex`]: a distributed lock whose guard carries a **fencing token** and a `lost()` future.
//! - [`RwLock`]: shared readers, an exclusive writer, no writer starvation.
//! - [`Semaphore`]: at most N holders at once.
//! - [`Election`]: campaign, proclaim, resign, the current leader, and a stream that follows it;
//!   the leadership carries a fencing token.
//!
//! Every lock's [`Guard`] carries a fencing token, a `lost()` future and conditional writes.
//!
//! - [`Barrier`] (hold, release, wait) and [`DoubleBarrier`] (N participants enter and leave
//!   together).
//!
//! - [`Queue`] (FIFO) and [`PriorityQueue`], with blocking pops; each item goes to one consumer.
//!
//! - [`ServiceRegistry`]: register instances with TTL heartbeats that never give up; discover
//!   them and follow changes (etcd's naming layout, seen by Go gRPC resolvers too).
//!
//! Left out so far (the SDK issue lists them; they come next, each in its own module): a reliable
//! work queue, typed config, tonic resolver, and key namespacing.

mod barrier;
mod client;
mod election;
mod error;
mod guard;
mod mutex;
mod queue;
mod registry;
mod rwlock;
mod semaphore;
mod session;
mod wait;

pub use barrier::{Barrier, DoubleBarrier};
pub use client::Client;
pub use election::{Election, Leader, Leadership};
pub use error::{Error, Result};
pub use guard::Guard;
pub use mutex::{Mutex, MutexGuard};
pub use queue::{PriorityQueue, Queue};
pub use registry::{Change, Instance, Registration, ServiceRegistry};
pub use rwlock::RwLock;
pub use semaphore::Semaphore;
pub use session::{DEFAULT_TTL, Session, SessionState};
