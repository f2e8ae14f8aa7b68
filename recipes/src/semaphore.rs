//! A distributed counting semaphore: at most `permits` holders at once.
//!
//! Each contender owns `<name>/<lease hex>`, attached to its session's lease; the `permits`
//! contenders with the lowest create revisions hold a permit. A waiter reads the `permits` oldest
//! keys and, while its own is not among them, watches the prefix for deletions and reads again. Unlike the mutex there is no single predecessor to watch (any earlier holder may
//! leave first), so each release wakes every waiter to look again — a herd bounded by the number
//! of waiters, each paying one small read.
//!
//! Every holder must use the same `permits` for a name: the semaphore does not store it.

use etcd_client::{EventType, GetOptions, SortOrder, SortTarget};

use crate::client::Client;
use crate::error::{Error, Result};
use crate::guard::Guard;
use crate::session::Session;
use crate::wait;

/// A named semaphore (see the module doc). Cheap to create: it holds no state.
#[derive(Clone)]
pub struct Semaphore {
    client: Client,
    /// `<name>/`.
    prefix: String,
    permits: usize,
}

impl Semaphore {
    /// The semaphore `name` with `permits` permits (at least 1).
    pub fn new(client: &Client, name: impl Into<String>, permits: usize) -> Semaphore {
        let mut prefix = client.key(&name.into());
        prefix.push('/');
        Semaphore {
            client: client.clone(),
            prefix,
            permits: permits.max(1),
        }
    }

    /// Waits for a permit; it is held until the guard is unlocked or dropped, or the session ends.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo() -> concord_recipes::Result<()> {
    /// use concord_recipes::{Client, Semaphore, Session};
    /// let client = Client::connect(["127.0.0.1:2379"]).await?;
    /// let session = Session::new(&client, 10).await?;
    /// let permit = Semaphore::new(&client, "db-migrations", 3).acquire(&session).await?;
    /// // ... at most 3 processes are here at once ...
    /// permit.unlock().await?;
    /// # Ok(()) }
    /// ```
    pub async fn acquire(&self, session: &Session) -> Result<Guard> {
        session.check()?;
        let key = format!("{}{:x}", self.prefix, session.lease());
        let place = wait::enqueue(&self.client, &self.prefix, &key, b"", session.lease()).await?;
        let guard = Guard::new(&self.client, session, key, place.mine);
        tokio::select! {
            waited = self.wait_for_room(place.mine) => waited?,
            _ = session.expired() => return Err(Error::SessionExpired(session.lease())),
        }
        guard.confirm().await?;
        Ok(guard)
    }

    /// Waits until `mine` is among the `permits` oldest keys. (Not a count of the keys created
    /// before it: etcd's `count` ignores the create-revision filters, so it reads the first
    /// `permits` keys instead.)
    async fn wait_for_room(&self, mine: i64) -> Result<()> {
        loop {
            let first = GetOptions::new()
                .with_prefix()
                .with_sort(SortTarget::Create, SortOrder::Ascend)
                .with_limit(self.permits as i64)
                .with_keys_only();
            let resp = self
                .client
                .get(self.prefix.as_str(), Some(first.clone()))
                .await?;
            if resp.kvs().iter().any(|kv| kv.create_revision() == mine) {
                return Ok(());
            }
            let from = resp.header().map_or(0, |h| h.revision()) + 1;
            wait::watch_for(
                &self.client,
                self.prefix.clone(),
                true,
                from,
                EventType::Delete,
            )
            .await?;
        }
    }
}
