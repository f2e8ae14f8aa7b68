//! A distributed mutex with fencing tokens, on etcd's key layout.
//!
//! The layout is Go's `concurrency.Mutex` (and so `etcdctl lock`'s): each contender creates the
//! key `<name>/<lease in hex>` attached to its session's lease, and the contender whose key has the
//! **lowest create revision** holds the lock. A waiter watches only the key just before its own
//! (the next lower create revision) for deletion, so a release wakes one waiter, not all of them.
//! Both sides meet on the same keys: a Rust process and `etcdctl lock <name>` exclude each other.
//!
//! What the lock guarantees: while a [`MutexGuard`] exists and its key is present, no other holder
//! of this lock has a key of lower create revision, i.e. nobody else holds it. What it does **not**
//! guarantee on its own: that you still hold it by the time a request of yours reaches some other
//! system — a pause (GC, swap, a partition) longer than the session TTL lets the lease expire and
//! someone else take over while you still believe you hold it. Two tools close that gap:
//! - the guard's [`fencing token`](MutexGuard::fencing_token) (its key's create revision) increases
//!   with every acquisition of the lock: a resource that remembers the highest token it has seen
//!   and refuses lower ones is safe even from a paused former holder;
//! - [`MutexGuard::txn_if_held`] makes a write to this store conditional on still holding the lock
//!   (a txn comparing the key's create revision), atomically.
//!
//! [`MutexGuard::lost`] resolves when the lock is lost (its key deleted, or the session expired).

use std::time::Duration;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::guard::Guard;
use crate::session::Session;
use crate::wait;

/// Proof of holding a [`Mutex`] (see [`Guard`]).
pub type MutexGuard = Guard;

/// A named distributed mutex (see the module doc). Cheap to create: it holds no state.
#[derive(Clone)]
pub struct Mutex {
    client: Client,
    /// `<name>/`: every contender's key is under it.
    prefix: String,
}

impl Mutex {
    /// The mutex `name` (the same name `etcdctl lock <name>` takes).
    pub fn new(client: &Client, name: impl Into<String>) -> Mutex {
        let mut prefix = client.key(&name.into());
        prefix.push('/');
        Mutex {
            client: client.clone(),
            prefix,
        }
    }

    /// Waits until the lock is held by `session`.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo() -> concord_recipes::Result<()> {
    /// use concord_recipes::{Client, Mutex, Session};
    /// let client = Client::connect(["127.0.0.1:2379"]).await?;
    /// let session = Session::new(&client, 10).await?;
    /// let guard = Mutex::new(&client, "jobs/nightly").lock(&session).await?;
    /// // ... pass guard.fencing_token() along with every write to outside resources ...
    /// guard.unlock().await?;
    /// # Ok(()) }
    /// ```
    pub async fn lock(&self, session: &Session) -> Result<MutexGuard> {
        let (key, my_rev, owner) = self.enqueue(session).await?;
        let guard = Guard::new(&self.client, session, key, my_rev);
        if owner != my_rev {
            // Wait for every earlier contender; if the session ends meanwhile, give up.
            tokio::select! {
                waited = wait::wait_for_predecessors(&self.client, &self.prefix, my_rev) => waited?,
                _ = session.expired() => return Err(Error::SessionExpired(session.lease())),
            }
        }
        guard.confirm().await?;
        Ok(guard)
    }

    /// Takes the lock if nobody holds it; `None` (and nothing left behind) otherwise.
    pub async fn try_lock(&self, session: &Session) -> Result<Option<MutexGuard>> {
        let (key, my_rev, owner) = self.enqueue(session).await?;
        let guard = Guard::new(&self.client, session, key, my_rev);
        if owner == my_rev {
            return Ok(Some(guard));
        }
        guard.unlock().await?;
        Ok(None)
    }

    /// [`Mutex::lock`], giving up with [`Error::Timeout`] after `timeout` (withdrawing from the
    /// queue).
    pub async fn lock_timeout(&self, session: &Session, timeout: Duration) -> Result<MutexGuard> {
        match tokio::time::timeout(timeout, self.lock(session)).await {
            Ok(result) => result,
            Err(_) => {
                // The waiting call was dropped with its guard, which withdraws the key.
                Err(Error::Timeout)
            }
        }
    }

    /// Creates this session's key if it has none yet; returns it, its create revision and the
    /// holder's.
    async fn enqueue(&self, session: &Session) -> Result<(String, i64, i64)> {
        session.check()?;
        let key = format!("{}{:x}", self.prefix, session.lease());
        let place = wait::enqueue(&self.client, &self.prefix, &key, b"", session.lease()).await?;
        Ok((key, place.mine, place.first))
    }
}
