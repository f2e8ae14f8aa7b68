//! A reliable work queue: at-least-once delivery with a visibility timeout, ack / nack, bounded
//! redelivery and dead letters (the semantics of Amazon SQS), built only on KV, Txn, Watch and
//! Lease.
//!
//! # The idea
//! A consumer *claims* an item: the item becomes invisible to other consumers, and the claim is a
//! marker key attached to a fresh lease whose TTL is the visibility timeout. The consumer *acks*
//! (the item is gone for good) or *nacks* (it is visible again at once). If it does neither — it
//! crashed, hung, or lost the network — the **server** expires the lease and deletes the marker;
//! the item's own keys are never attached to a lease, so nothing is lost with it. Whoever notices a
//! marker gone (every claim looks, and a waiting consumer is woken by the deletion) moves the item
//! back to the visible ones. After `max_deliveries` failed deliveries the item goes to the dead
//! letters instead.
//!
//! # Key layout
//! Every item has an id (`<nanos, 20 digits>-<random, 16 hex digits>`, chosen by the push) and, under
//! `<name>/`:
//! - `item/<id>`: the payload, written once by the push, deleted by the ack or when the item goes
//!   to the dead letters. Never attached to a lease.
//! - `ready/<id>`: present while the item is visible; the value is the number of deliveries so far
//!   (`0` after the push). Visible items are handed out by this key's create revision: in the
//!   order they became visible (pushed, nacked or expired), oldest first.
//! - `taken/<id>`: present while the item is claimed; the value is the current delivery's attempt
//!   number. Never attached to a lease: it is what remembers a claim whose marker expired.
//! - `claim/<id>`: the claim marker, empty, attached to the claim's lease (TTL = visibility
//!   timeout). Its create revision is the delivery's *receipt*.
//! - `dead/<id>`: a dead letter: the payload of an item that failed `max_deliveries` times.
//!
//! # State moves
//! Each move is one transaction whose compares let exactly one of any concurrent movers win:
//! - push: `item` absent → put `item` and `ready = 0`;
//! - claim: `ready` unchanged (mod revision) → delete `ready`, put `taken = n + 1` and the leased
//!   `claim`, read `item`;
//! - ack: `claim`'s create revision is the receipt → delete `claim`, `taken` and `item`;
//! - nack: `claim`'s create revision is the receipt → delete `claim` and `taken`, put `ready = n`
//!   (or, after the last attempt, delete `item` and put `dead`);
//! - recover (the marker expired): `taken` unchanged and `claim` absent → delete `taken`, put
//!   `ready = n` (or, after the last attempt, `item` unchanged too → delete `item`, put `dead`).
//!
//! Invariants: an item (`item/<id>`) has exactly one of `ready/<id>` and `taken/<id>`; a
//! `claim/<id>` exists only beside a `taken/<id>` (they are created together, and deleted together
//! except when the server expires the claim); a `dead/<id>` never has an `item/<id>`. A receipt is a
//! revision, so a later claim of the same item always has another one: a consumer whose claim
//! expired cannot ack or nack the item away from its next holder.
//!
//! # Left out
//! - Delivery is **at least once**, not exactly once: a consumer that finishes its work but whose
//!   claim expires before the ack (or whose ack is lost in transit) sees its ack refused with
//!   [`Error::ClaimLost`](crate::Error::ClaimLost), and the item is handled again. Make the work
//!   idempotent.
//! - Timeouts count whole seconds (leases do), and the server raises a TTL below its minimum (about
//!   2 s on etcd and Concord with the default election timeout); the server decides when a claim
//!   ends, and [`Delivery::deadline`] is a conservative local bound.
//! - Redelivered items go to the back of the queue; order is by when an item became visible, not
//!   strict push order across redeliveries.
//! - Every claim reads the keys of all in-flight items (to find expired claims): fine for
//!   thousands in flight, not for millions.
//! - Every handle on one name must use the same [`WorkQueueConfig`]: it is not stored.
//! - Dead letters can be listed and deleted; moving one back to the queue (a "redrive") is a push of
//!   its payload plus a delete.

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etcd_client::{
    Compare, CompareOp, EventType, GetOptions, KeyValue, PutOptions, SortOrder, SortTarget, Txn,
    TxnOp, TxnOpResponse,
};
use tokio::time::Instant;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::wait;

/// Visible items read per attempt to claim one.
const CLAIM_BATCH: i64 = 16;

/// The key families under `<name>/` (see the module doc).
const ITEM: &str = "item/";
const READY: &str = "ready/";
const TAKEN: &str = "taken/";
const CLAIM: &str = "claim/";
const DEAD: &str = "dead/";

/// How a [`WorkQueue`] treats its items. Every handle on one name must use the same config.
#[derive(Debug, Clone)]
pub struct WorkQueueConfig {
    /// How long a claimed item stays invisible to other consumers without an ack, nack or
    /// [`WorkQueue::extend`]. Rounded up to whole seconds; the server may raise it to its minimum
    /// lease TTL.
    pub visibility_timeout: Duration,
    /// Deliveries after which a failed item goes to the dead letters instead of back to the queue
    /// (at least 1).
    pub max_deliveries: u32,
}

impl Default for WorkQueueConfig {
    /// 30 s of visibility timeout, 5 deliveries.
    fn default() -> WorkQueueConfig {
        WorkQueueConfig {
            visibility_timeout: Duration::from_secs(30),
            max_deliveries: 5,
        }
    }
}

/// A reliable work queue (see the module doc for the key layout and the state moves).
///
/// Guarantees: every pushed item is, until it is acked or dead-lettered, either visible or claimed
/// by exactly one consumer; a claim lasts until acked, nacked, or the server expires it after the
/// visibility timeout; an item is delivered at most `max_deliveries` times, then kept as a dead
/// letter with its payload. Concurrent consumers never get the same item at once, and no item is
/// lost while the server keeps its data.
///
/// Not guaranteed: exactly-once processing (a consumer slower than its visibility timeout may
/// finish work that another consumer then repeats; its ack is refused), nor strict FIFO across
/// redeliveries.
///
/// # Examples
/// ```no_run
/// # async fn demo() -> concord_recipes::Result<()> {
/// use std::time::Duration;
/// use concord_recipes::{Client, WorkQueue, WorkQueueConfig};
/// let client = Client::connect(["127.0.0.1:2379"]).await?;
/// let config = WorkQueueConfig {
///     visibility_timeout: Duration::from_secs(10),
///     max_deliveries: 3,
/// };
/// let jobs = WorkQueue::with_config(&client, "thumbnails", config);
/// jobs.push("resize image 42").await?;
///
/// let delivery = jobs.claim().await?; // waits while nothing is visible
/// println!("attempt {}: {:?}", delivery.attempt(), delivery.payload());
/// match std::str::from_utf8(delivery.payload()) {
///     Ok(_) => jobs.ack(&delivery).await?,  // done: gone for good
///     Err(_) => jobs.nack(&delivery).await?, // failed: visible again at once
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct WorkQueue {
    client: Client,
    /// `<name>/`.
    prefix: String,
    config: WorkQueueConfig,
}

/// One delivery of an item to a consumer: hand it back to [`WorkQueue::ack`] or
/// [`WorkQueue::nack`]. Dropping it without either is a crash as far as the queue can tell: the
/// item becomes visible again after the visibility timeout.
#[derive(Debug)]
pub struct Delivery {
    /// The item's id: the same in every delivery of the item, and in its dead letter.
    id: String,
    payload: Vec<u8>,
    /// 1 for the first delivery of the item, 2 for the second, ...
    attempt: u32,
    /// The claim marker's create revision: what proves the claim is still this delivery's.
    receipt: i64,
    /// The lease the claim marker is attached to.
    lease: i64,
    /// The lease's TTL as granted, in seconds (the server may have raised the one asked for).
    ttl: i64,
    /// The server cannot end the claim before this moment (local monotonic time, counted from
    /// just before the lease was granted or last renewed).
    deadline: Instant,
}

/// An item that failed `max_deliveries` times, kept under `<name>/dead/<id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The item's id (as in its deliveries).
    pub id: String,
    pub payload: Vec<u8>,
}

/// A lease granted for a claim that has not been used yet.
struct ClaimLease {
    id: i64,
    ttl: i64,
    /// When the grant was sent: the lease lives at least `ttl` from then.
    sent: Instant,
}

/// One consistent read of the queue's state, at one revision.
struct Snapshot {
    revision: i64,
    /// The first visible items, oldest first.
    ready: Vec<KeyValue>,
    /// Whether more visible items exist than were read.
    more: bool,
    /// Every claimed item's `taken/<id>`.
    taken: Vec<KeyValue>,
    /// The ids that have a live claim marker.
    claimed: HashSet<String>,
}

impl WorkQueue {
    /// The work queue `name` with the default config (30 s visibility, 5 deliveries).
    pub fn new(client: &Client, name: impl Into<String>) -> WorkQueue {
        WorkQueue::with_config(client, name, WorkQueueConfig::default())
    }

    /// The work queue `name` with `config` (see [`WorkQueue`] for an example).
    pub fn with_config(
        client: &Client,
        name: impl Into<String>,
        config: WorkQueueConfig,
    ) -> WorkQueue {
        let mut prefix = client.key(&name.into());
        prefix.push('/');
        let config = WorkQueueConfig {
            max_deliveries: config.max_deliveries.max(1),
            ..config
        };
        WorkQueue {
            client: client.clone(),
            prefix,
            config,
        }
    }

    /// Adds an item with `payload`, visible at once; returns its id.
    ///
    /// Retried on transient failures; in the rare case where an earlier attempt was applied and
    /// its item already consumed before the retry, the item is pushed twice (at least once).
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo() -> concord_recipes::Result<()> {
    /// use concord_recipes::{Client, WorkQueue};
    /// let client = Client::connect(["127.0.0.1:2379"]).await?;
    /// let id = WorkQueue::new(&client, "emails").push("welcome alice@example.com").await?;
    /// # Ok(()) }
    /// ```
    pub async fn push(&self, payload: impl Into<Vec<u8>>) -> Result<String> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let random = uuid::Uuid::new_v4().as_u64_pair().0;
        let id = format!("{nanos:020}-{random:016x}");
        let item = self.key(ITEM, &id);
        let txn = Txn::new()
            .when([Compare::create_revision(item.as_str(), CompareOp::Equal, 0)])
            .and_then([
                TxnOp::put(item.as_str(), payload.into(), None),
                TxnOp::put(self.key(READY, &id), "0", None),
            ]);
        // Retried safely: the id is random, so an existing item means an earlier attempt made it.
        self.client.txn_idempotent(txn).await?;
        Ok(id)
    }

    /// Claims the oldest visible item, waiting (on a watch) while there is none. The item stays
    /// invisible to other consumers until it is acked or nacked, or the visibility timeout ends.
    /// Expired claims found on the way are made visible again (or dead-lettered) first.
    ///
    /// Cancelling it while it claims (not while it waits) may leave an item claimed by nobody:
    /// it comes back after the visibility timeout.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo() -> concord_recipes::Result<()> {
    /// use concord_recipes::{Client, WorkQueue};
    /// let client = Client::connect(["127.0.0.1:2379"]).await?;
    /// let jobs = WorkQueue::new(&client, "emails");
    /// loop {
    ///     let delivery = jobs.claim().await?;
    ///     // ... send the email in delivery.payload() ...
    ///     jobs.ack(&delivery).await?;
    /// }
    /// # }
    /// ```
    pub async fn claim(&self) -> Result<Delivery> {
        loop {
            let (claimed, revision) = self.claim_first().await?;
            if let Some(delivery) = claimed {
                return Ok(delivery);
            }
            self.wait_for_work(revision + 1).await?;
        }
    }

    /// Claims the oldest visible item, if there is one (see [`WorkQueue::claim`]).
    pub async fn try_claim(&self) -> Result<Option<Delivery>> {
        Ok(self.claim_first().await?.0)
    }

    /// Removes the delivered item for good — only if the claim is still `delivery`'s.
    ///
    /// Fails with [`Error::ClaimLost`] when the visibility timeout ended first (the item is, or
    /// will be, delivered again: do not count the work as committed) or the delivery was settled
    /// already. Not retried: after a transient error it is unknown whether the ack happened.
    pub async fn ack(&self, delivery: &Delivery) -> Result<()> {
        let ops = vec![
            TxnOp::delete(self.key(TAKEN, &delivery.id), None),
            TxnOp::delete(self.key(ITEM, &delivery.id), None),
        ];
        self.settle(delivery, ops).await
    }

    /// Gives the delivered item back: visible again at once, for another attempt — or, if this
    /// was attempt `max_deliveries`, moved to the dead letters. Only if the claim is still
    /// `delivery`'s: fails with [`Error::ClaimLost`] like [`WorkQueue::ack`].
    pub async fn nack(&self, delivery: &Delivery) -> Result<()> {
        let id = &delivery.id;
        let mut ops = vec![TxnOp::delete(self.key(TAKEN, id), None)];
        if delivery.attempt >= self.config.max_deliveries {
            tracing::info!(
                id,
                attempt = delivery.attempt,
                "nacked for the last time: dead letter"
            );
            ops.push(TxnOp::delete(self.key(ITEM, id), None));
            ops.push(TxnOp::put(
                self.key(DEAD, id),
                delivery.payload.clone(),
                None,
            ));
        } else {
            ops.push(TxnOp::put(
                self.key(READY, id),
                delivery.attempt.to_string(),
                None,
            ));
        }
        self.settle(delivery, ops).await
    }

    /// Renews the claim: the item stays invisible for another full visibility timeout from now.
    /// Fails with [`Error::ClaimLost`] if the claim has already ended.
    pub async fn extend(&self, delivery: &mut Delivery) -> Result<()> {
        let lease = delivery.lease;
        let sent = Instant::now();
        // Retried: renewing a lease twice is renewing it.
        let renewed = self
            .client
            .retry(|mut c| async move { c.lease_keep_alive(lease).await.map(|_| ()) })
            .await;
        match renewed {
            Ok(()) => {
                delivery.deadline = sent + secs(delivery.ttl);
                Ok(())
            }
            Err(Error::Etcd(etcd_client::Error::LeaseKeepAliveError(_))) => {
                Err(Error::ClaimLost(delivery.id.clone()))
            }
            Err(e) => Err(e),
        }
    }

    /// Every dead letter, oldest push first.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>> {
        let prefix = format!("{}{DEAD}", self.prefix);
        let all = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Key, SortOrder::Ascend);
        let resp = self.client.get(prefix.clone(), Some(all.clone())).await?;
        Ok(resp
            .kvs()
            .iter()
            .map(|kv| DeadLetter {
                id: String::from_utf8_lossy(&kv.key()[prefix.len()..]).into_owned(),
                payload: kv.value().to_vec(),
            })
            .collect())
    }

    /// Deletes the dead letter `id` (nothing happens if there is none).
    pub async fn delete_dead_letter(&self, id: &str) -> Result<()> {
        let key = self.key(DEAD, id);
        self.client.delete(key.clone(), None).await?;
        Ok(())
    }

    /// `<name>/<family><id>`.
    fn key(&self, family: &str, id: &str) -> String {
        format!("{}{family}{id}", self.prefix)
    }

    /// Deletes `delivery`'s claim marker and applies `ops`, if the marker is still the delivery's;
    /// then revokes the claim's lease, which no key needs any more.
    async fn settle(&self, delivery: &Delivery, mut ops: Vec<TxnOp>) -> Result<()> {
        let claim = self.key(CLAIM, &delivery.id);
        ops.push(TxnOp::delete(claim.as_str(), None));
        let txn = Txn::new()
            .when([Compare::create_revision(
                claim.as_str(),
                CompareOp::Equal,
                delivery.receipt,
            )])
            .and_then(ops);
        // Not retried: a settle that may have happened cannot be told from a lost claim.
        if !self.client.etcd().txn(txn).await?.succeeded() {
            return Err(Error::ClaimLost(delivery.id.clone()));
        }
        // Best effort: unrevoked, the lease (with no key left) just expires.
        let _ = self.client.etcd().lease_revoke(delivery.lease).await;
        Ok(())
    }

    /// Recovers expired claims, then tries to claim one of the oldest visible items; also returns
    /// the revision it last read at.
    async fn claim_first(&self) -> Result<(Option<Delivery>, i64)> {
        let mut lease = None;
        loop {
            let seen = self.read().await?;
            if self.maybe_recover(&seen).await? {
                continue; // items became visible: read again
            }
            for kv in &seen.ready {
                let granted = self.fresh_lease(&mut lease).await?;
                if let Some(delivery) = self.claim_item(kv, granted).await? {
                    return Ok((Some(delivery), seen.revision));
                }
            }
            if !seen.more || seen.ready.is_empty() {
                if let Some(unused) = lease {
                    let _ = self.client.etcd().lease_revoke(unused.id).await;
                }
                return Ok((None, seen.revision));
            }
            // Every item read was claimed by others, and there are more: read again.
        }
    }

    /// Reads the first visible items, the claimed items and the live claim markers, in one
    /// transaction (so at one revision).
    async fn read(&self) -> Result<Snapshot> {
        let oldest = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Create, SortOrder::Ascend)
            .with_limit(CLAIM_BATCH);
        let txn = Txn::new().and_then([
            TxnOp::get(self.key(READY, ""), Some(oldest)),
            TxnOp::get(self.key(TAKEN, ""), Some(GetOptions::new().with_prefix())),
            TxnOp::get(
                self.key(CLAIM, ""),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            ),
        ]);
        let resp = self.client.txn_idempotent(txn).await?;
        let mut gets = resp.op_responses().into_iter().map(|op| match op {
            TxnOpResponse::Get(get) => Some(get),
            _ => None,
        });
        let (Some(Some(ready)), Some(Some(taken)), Some(Some(claims))) =
            (gets.next(), gets.next(), gets.next())
        else {
            return Err(Error::Invalid("unexpected answer to a read txn".into()));
        };
        let claim_prefix = self.key(CLAIM, "").len();
        Ok(Snapshot {
            revision: resp.header().map_or(0, |h| h.revision()),
            more: ready.more(),
            ready: ready.kvs().to_vec(),
            taken: taken.kvs().to_vec(),
            claimed: claims
                .kvs()
                .iter()
                .map(|kv| String::from_utf8_lossy(&kv.key()[claim_prefix..]).into_owned())
                .collect(),
        })
    }

    /// Moves every claimed item whose marker expired back to the visible ones (or to the dead
    /// letters); returns whether there was any.
    async fn maybe_recover(&self, seen: &Snapshot) -> Result<bool> {
        let taken_prefix = self.key(TAKEN, "").len();
        let mut any = false;
        for taken in &seen.taken {
            let Ok(id) = std::str::from_utf8(&taken.key()[taken_prefix..]) else {
                continue; // not one of ours
            };
            if !seen.claimed.contains(id) {
                self.recover(id, taken).await?;
                any = true;
            }
        }
        Ok(any)
    }

    /// The recover move (see the module doc). Losing the race to another consumer is fine: the
    /// item was moved exactly once, by someone.
    async fn recover(&self, id: &str, taken: &KeyValue) -> Result<()> {
        let attempts = attempts(taken.value());
        let mut when = vec![
            Compare::mod_revision(taken.key(), CompareOp::Equal, taken.mod_revision()),
            Compare::create_revision(self.key(CLAIM, id), CompareOp::Equal, 0),
        ];
        let mut ops = vec![TxnOp::delete(taken.key(), None)];
        if attempts < self.config.max_deliveries {
            tracing::debug!(id, attempts, "claim expired: the item is visible again");
            ops.push(TxnOp::put(self.key(READY, id), attempts.to_string(), None));
        } else {
            let item = self.key(ITEM, id);
            let resp = self.client.get(item.clone(), None).await?;
            // No item (deleted behind the queue's back): the stale claim is just dropped.
            if let Some(kv) = resp.kvs().first() {
                tracing::info!(id, attempts, "claim expired for the last time: dead letter");
                when.push(Compare::mod_revision(
                    item.as_str(),
                    CompareOp::Equal,
                    kv.mod_revision(),
                ));
                ops.push(TxnOp::delete(item.as_str(), None));
                ops.push(TxnOp::put(self.key(DEAD, id), kv.value(), None));
            }
        }
        let txn = Txn::new().when(when).and_then(ops);
        // Retried: the compares make a repeat a no-op.
        self.client.txn_idempotent(txn).await?;
        Ok(())
    }

    /// `lease` if it still has at least half its TTL ahead, else a freshly granted one (put in
    /// `lease`, the stale one revoked).
    async fn fresh_lease<'a>(&self, lease: &'a mut Option<ClaimLease>) -> Result<&'a ClaimLease> {
        if let Some(held) = lease.as_ref()
            && held.sent.elapsed() > secs(held.ttl) / 2
        {
            let _ = self.client.etcd().lease_revoke(held.id).await;
            *lease = None;
        }
        if lease.is_none() {
            let ttl = self.config.visibility_timeout.as_secs_f64().ceil().max(1.0) as i64;
            let sent = Instant::now();
            let grant = self
                .client
                .retry(|mut c| async move { c.lease_grant(ttl, None).await })
                .await?;
            *lease = Some(ClaimLease {
                id: grant.id(),
                ttl: grant.ttl(),
                sent,
            });
        }
        Ok(lease.as_ref().expect("granted above"))
    }

    /// The claim move (see the module doc) on the visible item `ready`; `None` if another
    /// consumer took it first.
    async fn claim_item(&self, ready: &KeyValue, lease: &ClaimLease) -> Result<Option<Delivery>> {
        let Ok(id) = std::str::from_utf8(&ready.key()[self.key(READY, "").len()..]) else {
            return Ok(None); // not one of ours
        };
        let attempt = attempts(ready.value()) + 1;
        let claim = PutOptions::new().with_lease(lease.id);
        let txn = Txn::new()
            .when([Compare::mod_revision(
                ready.key(),
                CompareOp::Equal,
                ready.mod_revision(),
            )])
            .and_then([
                TxnOp::delete(ready.key(), None),
                TxnOp::put(self.key(TAKEN, id), attempt.to_string(), None),
                TxnOp::put(self.key(CLAIM, id), "", Some(claim)),
                TxnOp::get(self.key(ITEM, id), None),
            ]);
        // Not retried: a claim that may have happened cannot be told from a lost race (if it
        // happened, its lease expires and the item comes back).
        let resp = self.client.etcd().txn(txn).await?;
        if !resp.succeeded() {
            return Ok(None);
        }
        let payload = match resp.op_responses().get(3) {
            Some(TxnOpResponse::Get(get)) => get.kvs().first().map(|kv| kv.value().to_vec()),
            _ => None,
        };
        let receipt = resp.header().map_or(0, |h| h.revision());
        let Some(payload) = payload else {
            // A visible item without data (deleted behind the queue's back): drop its state,
            // keeping the lease for the next item.
            tracing::warn!(id, "claimed an item that has no data: dropped");
            let claim = self.key(CLAIM, id);
            let drop = Txn::new()
                .when([Compare::create_revision(
                    claim.as_str(),
                    CompareOp::Equal,
                    receipt,
                )])
                .and_then([
                    TxnOp::delete(claim.as_str(), None),
                    TxnOp::delete(self.key(TAKEN, id), None),
                ]);
            self.client.etcd().txn(drop).await?;
            return Ok(None);
        };
        Ok(Some(Delivery {
            id: id.to_string(),
            payload,
            attempt,
            receipt,
            lease: lease.id,
            ttl: lease.ttl,
            deadline: lease.sent + secs(lease.ttl),
        }))
    }

    /// Waits until an item may be claimable, from revision `from` on: one became visible, or a
    /// claim marker was deleted (maybe expired: the next claim recovers it).
    async fn wait_for_work(&self, from: i64) -> Result<()> {
        tokio::select! {
            visible = wait::watch_for(&self.client, self.key(READY, ""), true, from, EventType::Put) => visible,
            ended = wait::watch_for(&self.client, self.key(CLAIM, ""), true, from, EventType::Delete) => ended,
        }
    }
}

impl Delivery {
    /// The item's id: the same in every delivery of the item, and in its dead letter.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// Which delivery of the item this is: 1 the first time, 2 after one expiry or nack, ...
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The claim's receipt: the create revision of its marker. Every claim of any item has
    /// another one, and a later claim a larger one (usable as a fencing token).
    pub fn receipt(&self) -> i64 {
        self.receipt
    }

    /// The server does not end the claim before this moment (local monotonic time; it may end it
    /// somewhat later). Work still running near it should [`WorkQueue::extend`] the claim.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }
}

/// The deliveries count stored in `ready/` and `taken/` values (0 if unreadable).
fn attempts(value: &[u8]) -> u32 {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn secs(s: i64) -> Duration {
    Duration::from_secs(s.max(0) as u64)
}
