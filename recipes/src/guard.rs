//! Proof of holding a key-based lock: the guard of a [`Mutex`](crate::Mutex), a
//! [`RwLock`](crate::RwLock) side or a [`Semaphore`](crate::Semaphore) permit.
//!
//! A guard names the key that holds the lock (attached to a session's lease) and its create
//! revision, which is also the **fencing token**: a later holder always has a larger one, so a
//! resource that refuses tokens lower than the highest it has seen is safe even from a former
//! holder that paused past its lease. [`Guard::txn_if_held`] makes a write to this store
//! conditional on still holding the lock, atomically; [`Guard::lost`] resolves when the lock is
//! lost. Dropping a guard releases it in the background; [`Guard::unlock`] reports errors.

use etcd_client::{Compare, CompareOp, Txn, TxnOp};

use crate::client::Client;
use crate::error::{Error, Result};
use crate::session::Session;
use crate::wait;

/// A held key-based lock (see the module doc).
pub struct Guard {
    client: Client,
    /// The key that holds the lock.
    key: String,
    /// The key's create revision: the fencing token.
    token: i64,
    /// The session's lease, for [`Error::SessionExpired`].
    lease: i64,
    /// The session's state, for [`Guard::lost`].
    session: tokio::sync::watch::Receiver<crate::SessionState>,
    /// Unlocked explicitly: nothing to do on drop.
    released: bool,
}

impl Guard {
    pub(crate) fn new(client: &Client, session: &Session, key: String, token: i64) -> Guard {
        Guard {
            client: client.clone(),
            key,
            token,
            lease: session.lease(),
            session: session.watch_state(),
            released: false,
        }
    }

    /// The lease the key is attached to.
    pub(crate) fn lease(&self) -> i64 {
        self.lease
    }

    /// The key that holds the lock or permit (`<name>/.../<lease hex>`).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The fencing token: the key's create revision. Every later acquisition of the same lock, by
    /// anyone, gets a larger token (see the module doc).
    pub fn fencing_token(&self) -> i64 {
        self.token
    }

    /// The comparison that holds exactly while this guard still owns the lock: use it in your own
    /// transactions.
    pub fn held(&self) -> Compare {
        Compare::create_revision(self.key.as_str(), CompareOp::Equal, self.token)
    }

    /// Runs `ops` atomically if, and only if, the lock is still held; returns whether it was.
    pub async fn txn_if_held(&self, ops: Vec<TxnOp>) -> Result<bool> {
        let txn = Txn::new().when([self.held()]).and_then(ops);
        Ok(self.client.etcd().txn(txn).await?.succeeded())
    }

    /// Resolves with the reason once the lock is lost: its key was deleted, or the session
    /// expired. Never resolves while the lock is held.
    pub async fn lost(&self) -> Error {
        let mut session = self.session.clone();
        tokio::select! {
            _ = session.wait_for(|s| *s == crate::SessionState::Expired) => {
                Error::SessionExpired(self.lease)
            }
            result = wait::wait_deleted(&self.client, self.key.clone().into_bytes(), self.token) => {
                match result {
                    Ok(()) => Error::LockLost(self.key.clone()),
                    Err(e) => e,
                }
            }
        }
    }

    /// Makes sure the key is still there after waiting (the session may have ended).
    pub(crate) async fn confirm(&self) -> Result<()> {
        if wait::still_mine(&self.client, &self.key, self.token).await? {
            Ok(())
        } else {
            Err(Error::LockLost(self.key.clone()))
        }
    }

    /// Releases the lock: deletes the key (only if it is still this guard's).
    pub async fn unlock(mut self) -> Result<()> {
        self.released = true;
        let txn = Txn::new()
            .when([self.held()])
            .and_then([TxnOp::delete(self.key.as_str(), None)]);
        self.client.txn_idempotent(txn).await?;
        Ok(())
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let txn = Txn::new()
            .when([self.held()])
            .and_then([TxnOp::delete(self.key.as_str(), None)]);
        let mut etcd = self.client.etcd();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = etcd.txn(txn).await;
            });
        }
    }
}
