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
//! - [`WorkQueue`]: reliable, at-least-once work items with a visibility timeout judged by the
//!   server, ack / nack, bounded redelivery and dead letters.
//!
//! - [`ServiceRegistry`]: register instances with TTL heartbeats that never give up; discover
//!   them and follow changes (etcd's naming layout, seen by Go gRPC resolvers too).
//!
//! - [`Config`]: a typed config from a key or a prefix, read at one revision, checked by your
//!   validation hook, last-known-good kept when a bad value arrives, hot-reloaded through a
//!   `watch` receiver; survives server restarts and compactions.
//!
//! - [`Resolver`]: a `tower::discover::Discover` of tonic endpoints fed by the registry, and a
//!   tonic `Channel` that balances over the live instances of a service.
//!
//! - [`Client::with_namespace`]: every recipe made from a namespaced client keeps its keys under
//!   the namespace's prefix.
//!
//! Left out: auth (user and password, TLS) is whatever `etcd-client` offers through
//! [`Client::from_etcd`]; the recipes add nothing to it.

mod barrier;
mod client;
mod config;
mod election;
mod error;
mod follow;
mod guard;
mod mutex;
mod queue;
mod registry;
mod resolver;
mod rwlock;
mod semaphore;
mod session;
mod wait;
mod workqueue;

pub use barrier::{Barrier, DoubleBarrier};
pub use client::Client;
pub use config::{Config, ConfigBuilder, ConfigStatus, Rejection, Source, Versioned};
pub use election::{Election, Leader, Leadership};
pub use error::{Error, Result};
pub use follow::Update;
pub use guard::Guard;
pub use mutex::{Mutex, MutexGuard};
pub use queue::{PriorityQueue, Queue};
pub use registry::{Change, Instance, Registration, ServiceRegistry};
pub use resolver::Resolver;
pub use rwlock::RwLock;
pub use semaphore::Semaphore;
pub use session::{DEFAULT_TTL, Session, SessionState};
pub use workqueue::{DeadLetter, Delivery, WorkQueue, WorkQueueConfig};
