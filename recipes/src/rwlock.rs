//! A distributed readers–writer lock (the layout of etcd's Go `contrib/recipes` RWMutex).
//!
//! Readers own `<name>/read/<lease hex>`, writers `<name>/write/<lease hex>`, all attached to
//! their session's lease and ordered by create revision. A reader holds once no *writer* created
//! its key before it; a writer holds once *nobody* did. So readers share, a writer is alone, and
//! a waiting writer is not starved by readers that come after it (they queue behind it). Each
//! waiter watches only the closest earlier key it must outlive.
//!
//! The guards are [`Guard`]s: fencing tokens, `lost()`, conditional writes, unlock on drop. A
//! reader's token orders it among all holders too, but only a writer's token is exclusive.

use crate::client::Client;
use crate::error::{Error, Result};
use crate::guard::Guard;
use crate::session::Session;
use crate::wait;

/// A named readers–writer lock (see the module doc). Cheap to create: it holds no state.
#[derive(Clone)]
pub struct RwLock {
    client: Client,
    /// `<name>/`.
    prefix: String,
}

impl RwLock {
    pub fn new(client: &Client, name: impl Into<String>) -> RwLock {
        let mut prefix = client.key(&name.into());
        prefix.push('/');
        RwLock {
            client: client.clone(),
            prefix,
        }
    }

    /// Waits for a shared hold: until no writer queued before this reader.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo() -> concord_recipes::Result<()> {
    /// use concord_recipes::{Client, RwLock, Session};
    /// let client = Client::connect(["127.0.0.1:2379"]).await?;
    /// let session = Session::new(&client, 10).await?;
    /// let lock = RwLock::new(&client, "catalog");
    /// let reading = lock.read(&session).await?;
    /// reading.unlock().await?;
    /// let writing = lock.write(&session).await?; // alone now
    /// writing.unlock().await?;
    /// # Ok(()) }
    /// ```
    pub async fn read(&self, session: &Session) -> Result<Guard> {
        let writers = format!("{}write/", self.prefix);
        self.acquire(session, "read", &writers).await
    }

    /// Waits for an exclusive hold: until every reader and writer queued before it is gone.
    pub async fn write(&self, session: &Session) -> Result<Guard> {
        let everyone = self.prefix.clone();
        self.acquire(session, "write", &everyone).await
    }

    /// Queues `session` on the `side` and waits for the keys under `ahead` created before it.
    async fn acquire(&self, session: &Session, side: &str, ahead: &str) -> Result<Guard> {
        session.check()?;
        let key = format!("{}{side}/{:x}", self.prefix, session.lease());
        let place = wait::enqueue(&self.client, ahead, &key, b"", session.lease()).await?;
        let guard = Guard::new(&self.client, session, key, place.mine);
        tokio::select! {
            waited = wait::wait_for_predecessors(&self.client, ahead, place.mine) => waited?,
            _ = session.expired() => return Err(Error::SessionExpired(session.lease())),
        }
        guard.confirm().await?;
        Ok(guard)
    }
}
