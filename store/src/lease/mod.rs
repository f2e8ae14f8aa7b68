//! Leases: time-to-live contracts that keys can be attached to.
//!
//! A client grants a lease with a TTL, attaches keys to it by putting them with its id, and keeps
//! it alive with keepalives. When it is revoked — by the client, or because no keepalive came for
//! a whole TTL — every attached key is deleted, all in **one revision** (watchers see the deletes
//! in one response). This is what sessions, locks, elections and service registration stand on.
//!
//! Two halves, as in etcd:
//! - the **replicated** half ([`lessor::Lessor`]'s `apply_*` methods): grants, revokes and
//!   checkpoints are Raft commands; every member applies them to the same table of leases and
//!   their keys, and stores each lease (id, TTL, checkpointed remaining TTL) in the state tree in
//!   the same atomic batch as the applied index, so leases survive restarts;
//! - the **leader-local** half: expiry times. Only the leader (the *primary* lessor) keeps
//!   deadlines; keepalives renew them in memory without a Raft round; and the leader's
//!   [`keeper`] task proposes a revoke for each lease whose deadline passed. Followers never
//!   expire anything, so a partitioned member cannot delete keys on its own.
//!
//! ## The exact expiry rule
//! Let `ttl` be the granted TTL, `remaining` the last checkpointed remaining TTL (0 = none), and
//! `E` the election timeout.
//! - While a member stays leader, a lease expires `ttl` after its last grant or keepalive (the
//!   keeper looks every 500 ms, so up to 500 ms later, plus the time to commit the revoke).
//! - When a member becomes leader (a restart of a single member included), it first applies every
//!   entry committed before (keepalives wait for that), then sets every lease's deadline to
//!   `now + E + (remaining if remaining > 0 else ttl)`. No lease is cut short: its owner had at
//!   most that much left at its last keepalive or checkpoint, and gets E more to find the leader.
//! - The leader proposes the remaining TTL (rounded up to whole seconds) of every lease that has
//!   run down since it was granted, renewed or checkpointed: first `E + 1 s` after it became
//!   leader, then every checkpoint interval (`--experimental-lease-checkpoint-interval`, default
//!   5 min). So leader changes cannot keep a lease alive forever: a lease that gets no keepalive
//!   expires at most one checkpoint interval, plus E per leader change, later than its TTL says —
//!   and leader changes closer together than `E + 1 s` serve no requests anyway.
//! - A keepalive of a lease that carries a checkpoint resets it to 0 through Raft before it is
//!   answered, and a lease kept alive while its checkpoint was in flight gets a reset right after
//!   the checkpoint is applied; so a later leader change never restores an older, shorter
//!   remaining TTL. Replaying a reset after a restart moves the deadline to a full TTL away.
//!
//! TTLs: a grant below the minimum (1.5 election timeouts, rounded up to seconds: 2 s with the
//! default timings) is raised to it, as etcd does; above 9,000,000,000 s it fails with "etcdserver:
//! too large lease TTL".
//!
//! Left out: forwarding keepalives from a follower to the leader (replication is a later issue; a
//! member that is not the leader answers them with "etcdserver: no leader"; TimeToLive answers
//! from the replicated table).
//!
//! A lease with many keys is revoked in one transaction and one Raft entry: a million-key lease
//! makes one very large revision (etcd behaves the same way).

pub mod keeper;
pub mod lessor;

pub use lessor::{Checkpoint, LeaseId, Lessor, MAX_LEASE_TTL};
