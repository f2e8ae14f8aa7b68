//! Queues across processes: FIFO ([`Queue`]) and by priority ([`PriorityQueue`]), with blocking
//! pops (the layouts of etcd's Go `contrib/recipes`).
//!
//! An item is a key under `<name>/`: `<name>/<nanos>-<random>` for the FIFO queue, ordered by
//! create revision (the order the pushes were applied); `<name>/<priority, 5 digits>/<nanos>-
//! <random>` for the priority queue, ordered by key (lowest priority number first, then push
//! order). A pop *claims* the first item by deleting it in a transaction that checks its mod
//! revision, so two consumers never get the same item; a consumer that loses the race tries the
//! next one. An empty queue is waited on with a watch for new items, not by polling.
//!
//! Delivery is at most once: an item is gone once popped, even if its consumer crashes before
//! handling it; [`WorkQueue`](crate::WorkQueue) redelivers what is not acknowledged in time.
//! Items are not attached to a lease: they outlive their producer.

use std::time::{SystemTime, UNIX_EPOCH};

use etcd_client::{Compare, CompareOp, EventType, GetOptions, SortOrder, SortTarget, Txn, TxnOp};

use crate::client::Client;
use crate::error::Result;
use crate::wait;

/// Items read per attempt to claim one.
const CLAIM_BATCH: i64 = 16;

/// A FIFO queue (see the module doc).
#[derive(Clone)]
pub struct Queue {
    inner: Items,
}

/// A priority queue: lower numbers first (see the module doc).
///
/// # Examples
/// ```no_run
/// # async fn demo() -> concord_recipes::Result<()> {
/// use concord_recipes::{Client, PriorityQueue};
/// let client = Client::connect(["127.0.0.1:2379"]).await?;
/// let tickets = PriorityQueue::new(&client, "tickets");
/// tickets.push("printer jammed", 5).await?;
/// tickets.push("site down", 0).await?;
/// assert_eq!(tickets.pop().await?, b"site down"); // priority 0 first
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PriorityQueue {
    inner: Items,
}

impl Queue {
    pub fn new(client: &Client, name: impl Into<String>) -> Queue {
        Queue {
            inner: Items::new(client, name, SortTarget::Create),
        }
    }

    /// Appends `value`.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo() -> concord_recipes::Result<()> {
    /// use concord_recipes::{Client, Queue};
    /// let client = Client::connect(["127.0.0.1:2379"]).await?;
    /// let jobs = Queue::new(&client, "jobs");
    /// jobs.push("resize image 42").await?;
    /// let next = jobs.pop().await?; // waits while the queue is empty
    /// # Ok(()) }
    /// ```
    pub async fn push(&self, value: impl Into<Vec<u8>>) -> Result<()> {
        self.inner.push("", value.into()).await
    }

    /// Takes the oldest item, waiting while the queue is empty.
    pub async fn pop(&self) -> Result<Vec<u8>> {
        self.inner.pop().await
    }

    /// Takes the oldest item, if any.
    pub async fn try_pop(&self) -> Result<Option<Vec<u8>>> {
        Ok(self.inner.claim_first().await?.0)
    }
}

impl PriorityQueue {
    pub fn new(client: &Client, name: impl Into<String>) -> PriorityQueue {
        PriorityQueue {
            inner: Items::new(client, name, SortTarget::Key),
        }
    }

    /// Adds `value` with `priority` (0 is served first).
    pub async fn push(&self, value: impl Into<Vec<u8>>, priority: u16) -> Result<()> {
        self.inner
            .push(&format!("{priority:05}/"), value.into())
            .await
    }

    /// Takes the first item (lowest priority number, then oldest), waiting while there is none.
    pub async fn pop(&self) -> Result<Vec<u8>> {
        self.inner.pop().await
    }

    /// Takes the first item, if any.
    pub async fn try_pop(&self) -> Result<Option<Vec<u8>>> {
        Ok(self.inner.claim_first().await?.0)
    }
}

/// Items under a prefix, in an order (shared by both queues).
#[derive(Clone)]
struct Items {
    client: Client,
    /// `<name>/`.
    prefix: String,
    order: SortTarget,
}

impl Items {
    fn new(client: &Client, name: impl Into<String>, order: SortTarget) -> Items {
        let mut prefix = client.key(&name.into());
        prefix.push('/');
        Items {
            client: client.clone(),
            prefix,
            order,
        }
    }

    /// Creates a new unique item key under `<prefix><infix>`. Retried safely: the key is random,
    /// so finding it already created means an earlier attempt made it.
    async fn push(&self, infix: &str, value: Vec<u8>) -> Result<()> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let random = uuid::Uuid::new_v4().as_u64_pair().0;
        let key = format!("{}{infix}{nanos:020}-{random:016x}", self.prefix);
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.as_str(), value, None)]);
        self.client.txn_idempotent(txn).await?;
        Ok(())
    }

    async fn pop(&self) -> Result<Vec<u8>> {
        loop {
            let (claimed, revision) = self.claim_first().await?;
            if let Some(value) = claimed {
                return Ok(value);
            }
            self.wait_for_items(revision + 1).await?;
        }
    }

    /// Tries to claim one of the first items; also returns the revision it read at.
    async fn claim_first(&self) -> Result<(Option<Vec<u8>>, i64)> {
        loop {
            let first = GetOptions::new()
                .with_prefix()
                .with_sort(self.order, SortOrder::Ascend)
                .with_limit(CLAIM_BATCH);
            let resp = self
                .client
                .get(self.prefix.as_str(), Some(first.clone()))
                .await?;
            let revision = resp.header().map_or(0, |h| h.revision());
            for kv in resp.kvs() {
                let claim = Txn::new()
                    .when([Compare::mod_revision(
                        kv.key(),
                        CompareOp::Equal,
                        kv.mod_revision(),
                    )])
                    .and_then([TxnOp::delete(kv.key(), None)]);
                // Not retried: a claim that may have happened cannot be told from a lost race.
                if self.client.etcd().txn(claim).await?.succeeded() {
                    return Ok((Some(kv.value().to_vec()), revision));
                }
            }
            if !resp.more() || resp.kvs().is_empty() {
                return Ok((None, revision));
            }
            // Every item read was claimed by others, and there are more: read again.
        }
    }

    /// Waits until an item is pushed, from revision `from` on.
    async fn wait_for_items(&self, from: i64) -> Result<()> {
        wait::watch_for(
            &self.client,
            self.prefix.clone(),
            true,
            from,
            EventType::Put,
        )
        .await
    }
}
