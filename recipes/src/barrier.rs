//! Barriers: a gate that holds waiters until released, and a double barrier that lets N
//! participants start together and finish together (the layouts of etcd's Go `contrib/recipes`).
//!
//! [`Barrier`]: the key `<name>` exists while the barrier is held. [`Barrier::hold`] creates it,
//! [`Barrier::release`] deletes it, and [`Barrier::wait`] returns once it does not exist (at once
//! if it never did). A barrier is not tied to a session: it stays held until someone releases it.
//!
//! [`DoubleBarrier`]: participants own `<name>/waiters/<lease hex>` (attached to their session,
//! so a crashed participant leaves). [`DoubleBarrier::enter`] registers and waits until `count`
//! participants have entered (the one that completes the count creates `<name>/ready`);
//! [`DoubleBarrier::leave`] deregisters and waits until every participant has left (the last one
//! out deletes `<name>/ready`, re-arming the barrier).

use etcd_client::{EventType, GetOptions, PutOptions};

use crate::client::Client;
use crate::error::{Error, Result};
use crate::session::Session;
use crate::wait;

/// A single barrier (see the module doc).
#[derive(Clone)]
pub struct Barrier {
    client: Client,
    key: String,
}

impl Barrier {
    pub fn new(client: &Client, name: impl Into<String>) -> Barrier {
        Barrier {
            client: client.clone(),
            key: client.key(&name.into()),
        }
    }

    /// Holds the barrier: waiters block until [`Barrier::release`].
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo() -> concord_recipes::Result<()> {
    /// use concord_recipes::{Barrier, Client};
    /// let client = Client::connect(["127.0.0.1:2379"]).await?;
    /// let gate = Barrier::new(&client, "deploy/gate");
    /// gate.hold().await?;
    /// // ... other processes block in gate.wait() ...
    /// gate.release().await?;
    /// # Ok(()) }
    /// ```
    pub async fn hold(&self) -> Result<()> {
        let key = self.key.clone();
        self.client
            .retry(|mut c| {
                let key = key.clone();
                async move { c.put(key, "", None).await }
            })
            .await?;
        Ok(())
    }

    /// Releases every waiter.
    pub async fn release(&self) -> Result<()> {
        self.client.delete(self.key.as_str(), None).await?;
        Ok(())
    }

    /// Returns once the barrier is not held.
    pub async fn wait(&self) -> Result<()> {
        loop {
            let resp = self.client.get(self.key.as_str(), None).await?;
            if resp.kvs().is_empty() {
                return Ok(());
            }
            let from = resp.header().map_or(0, |h| h.revision()) + 1;
            wait::watch_for(
                &self.client,
                self.key.as_str(),
                false,
                from,
                EventType::Delete,
            )
            .await?;
        }
    }
}

/// A double barrier for `count` participants (see the module doc).
#[derive(Clone)]
pub struct DoubleBarrier {
    client: Client,
    /// `<name>/waiters/`.
    waiters: String,
    /// `<name>/ready`.
    ready: String,
    count: usize,
}

impl DoubleBarrier {
    pub fn new(client: &Client, name: impl Into<String>, count: usize) -> DoubleBarrier {
        let name = client.key(&name.into());
        DoubleBarrier {
            client: client.clone(),
            waiters: format!("{name}/waiters/"),
            ready: format!("{name}/ready"),
            count: count.max(1),
        }
    }

    /// Registers `session` and waits until `count` participants have entered.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo() -> concord_recipes::Result<()> {
    /// use concord_recipes::{Client, DoubleBarrier, Session};
    /// let client = Client::connect(["127.0.0.1:2379"]).await?;
    /// let session = Session::new(&client, 10).await?;
    /// let round = DoubleBarrier::new(&client, "benchmark/round-1", 3);
    /// round.enter(&session).await?; // returns once all 3 workers entered
    /// // ... the work all three do together ...
    /// round.leave(&session).await?; // returns once all 3 left
    /// # Ok(()) }
    /// ```
    pub async fn enter(&self, session: &Session) -> Result<()> {
        session.check()?;
        let mine = format!("{}{:x}", self.waiters, session.lease());
        let (lease, waiters) = (session.lease(), self.waiters.clone());
        let resp = self
            .client
            .retry(|mut c| {
                let (mine, waiters) = (mine.clone(), waiters.clone());
                async move {
                    c.put(mine, "", Some(PutOptions::new().with_lease(lease)))
                        .await?;
                    c.get(
                        waiters,
                        Some(GetOptions::new().with_prefix().with_count_only()),
                    )
                    .await
                }
            })
            .await?;
        if resp.count() as usize >= self.count {
            let ready = self.ready.clone();
            self.client
                .retry(|mut c| {
                    let ready = ready.clone();
                    async move { c.put(ready, "", None).await }
                })
                .await?;
            return Ok(());
        }
        let from = resp.header().map_or(0, |h| h.revision()) + 1;
        tokio::select! {
            waited = self.wait_ready(from) => waited,
            _ = session.expired() => Err(Error::SessionExpired(session.lease())),
        }
    }

    /// Waits for `<name>/ready` to exist (it may already, from revision `from` on).
    async fn wait_ready(&self, from: i64) -> Result<()> {
        let resp = self.client.get(self.ready.as_str(), None).await?;
        if !resp.kvs().is_empty() {
            return Ok(());
        }
        wait::watch_for(
            &self.client,
            self.ready.as_str(),
            false,
            from,
            EventType::Put,
        )
        .await
    }

    /// Deregisters `session` and waits until every participant has left.
    pub async fn leave(&self, session: &Session) -> Result<()> {
        let mine = format!("{}{:x}", self.waiters, session.lease());
        loop {
            let (mine, waiters, ready) = (mine.clone(), self.waiters.clone(), self.ready.clone());
            let resp = self
                .client
                .retry(|mut c| {
                    let (mine, waiters, ready) = (mine.clone(), waiters.clone(), ready.clone());
                    async move {
                        c.delete(mine, None).await?;
                        let left = c
                            .get(
                                waiters,
                                Some(GetOptions::new().with_prefix().with_count_only()),
                            )
                            .await?;
                        if left.count() == 0 {
                            // The last one out re-arms the barrier.
                            c.delete(ready, None).await?;
                        }
                        Ok(left)
                    }
                })
                .await?;
            if resp.count() == 0 {
                return Ok(());
            }
            let from = resp.header().map_or(0, |h| h.revision()) + 1;
            wait::watch_for(
                &self.client,
                self.waiters.as_str(),
                true,
                from,
                EventType::Delete,
            )
            .await?;
        }
    }
}
