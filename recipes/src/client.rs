//! The client every recipe is built on: the `etcd-client` crate, plus retries and namespaces.
//!
//! **Endpoints and failover**, as Go's `clientv3` does it: the client keeps one connection per
//! endpoint and is *pinned* to one of them; calls go there. When a call fails for a transient
//! reason (the connection was refused or broke, the member was unavailable or had no leader), the
//! client moves its pin to the next endpoint, so the retry — and every call after it — goes to
//! another member. (`etcd-client`'s own balancing over several endpoints keeps sending a share of
//! the calls to a dead one, which is why the recipes do not use it.) Connections are made lazily:
//! a dead endpoint costs nothing until it is tried.
//!
//! **Retries**: [`Client::retry`] repeats a call that failed for a transient reason with
//! exponential backoff and jitter (`backon`), up to [`MAX_RETRIES`] times. Only idempotent calls
//! may be retried this way; the recipes use it for reads, lease grants and deletes of their own
//! keys, never for a create-if-absent they cannot tell apart from a duplicate.
//!
//! A client may carry a namespace ([`Client::with_namespace`]): a key prefix every recipe built on
//! it puts in front of its names, so several applications (or tenants, or test runs) can share one
//! cluster without their locks, queues and registries meeting.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use etcd_client::{DeleteOptions, DeleteResponse, GetOptions, GetResponse, Txn, TxnResponse};

use crate::error::{Error, Result};

/// Where [`Client::connect_from_env`] connects when `CONCORD_ENDPOINTS` is not set.
pub const DEFAULT_ENDPOINT: &str = "127.0.0.1:2379";

/// Most retries of one call.
pub const MAX_RETRIES: usize = 6;

/// A connection to Concord or etcd (cheap to clone: clones share the connection).
#[derive(Clone)]
pub struct Client {
    /// One connection per endpoint, in the order given.
    endpoints: Arc<[etcd_client::Client]>,
    /// The index of the endpoint calls go to (see the module doc).
    pinned: Arc<AtomicUsize>,
    /// Prepended to every recipe's keys (see [`Client::with_namespace`]).
    namespace: Arc<str>,
}

impl Client {
    /// Connects to any of `endpoints` (`host:port`, or `http://host:port`).
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo() -> concord_recipes::Result<()> {
    /// let client = concord_recipes::Client::connect(["127.0.0.1:2379"]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect<E: AsRef<str>, S: AsRef<[E]>>(endpoints: S) -> Result<Client> {
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        let mut connections = Vec::new();
        for endpoint in endpoints.as_ref() {
            let one = [endpoint.as_ref()];
            connections.push(etcd_client::Client::connect(one, Some(options.clone())).await?);
        }
        if connections.is_empty() {
            return Err(Error::Invalid("no endpoints given".into()));
        }
        Ok(Client {
            endpoints: connections.into(),
            pinned: Arc::new(AtomicUsize::new(0)),
            namespace: Arc::from(""),
        })
    }

    /// Connects to the endpoints in `CONCORD_ENDPOINTS` (comma-separated), or `127.0.0.1:2379`.
    pub async fn connect_from_env() -> Result<Client> {
        let endpoints =
            std::env::var("CONCORD_ENDPOINTS").unwrap_or_else(|_| DEFAULT_ENDPOINT.into());
        let endpoints: Vec<&str> = endpoints.split(',').map(str::trim).collect();
        Client::connect(endpoints).await
    }

    /// Wraps a client made elsewhere.
    pub fn from_etcd(inner: etcd_client::Client) -> Client {
        Client {
            endpoints: Arc::new([inner]),
            pinned: Arc::new(AtomicUsize::new(0)),
            namespace: Arc::from(""),
        }
    }

    /// The same connection, with every recipe made from it keeping its keys under `prefix`
    /// (appended to this client's own namespace): recipes on clients with different namespaces
    /// never see each other, even with the same names. Only the recipes' keys are prefixed;
    /// calls made on [`Client::etcd`] use keys as given.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo() -> concord_recipes::Result<()> {
    /// use concord_recipes::{Client, Mutex};
    /// let client = Client::connect(["127.0.0.1:2379"]).await?;
    /// let tenant = client.with_namespace("tenants/acme/");
    /// // Its keys are under `tenants/acme/jobs/`.
    /// let mutex = Mutex::new(&tenant, "jobs");
    /// # Ok(()) }
    /// ```
    pub fn with_namespace(&self, prefix: &str) -> Client {
        Client {
            namespace: Arc::from(format!("{}{prefix}", self.namespace)),
            ..self.clone()
        }
    }

    /// The prefix of this client's recipe keys ("" without a namespace).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// `name` inside this client's namespace: the key (or key prefix) a recipe uses.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.namespace)
    }

    /// The `etcd-client` client of the endpoint calls currently go to, for anything the recipes
    /// do not wrap.
    pub fn etcd(&self) -> etcd_client::Client {
        self.pinned().1
    }

    /// The endpoint calls currently go to: its index (for [`Client::unpin`]) and its client.
    pub(crate) fn pinned(&self) -> (usize, etcd_client::Client) {
        let index = self.pinned.load(Ordering::Relaxed);
        (index, self.endpoints[index].clone())
    }

    /// Moves the pin from endpoint `failed`, which just failed a call or a stream for a transient
    /// reason, to the next one — unless another failure moved it already (so a stale failure
    /// never moves it back to a dead endpoint).
    pub(crate) fn unpin(&self, failed: usize) {
        let next = (failed + 1) % self.endpoints.len();
        let _ = self
            .pinned
            .compare_exchange(failed, next, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Reads `key` (with `options`), retrying transient failures: reads are idempotent.
    pub async fn get(
        &self,
        key: impl Into<Vec<u8>>,
        options: Option<GetOptions>,
    ) -> Result<GetResponse> {
        let key = key.into();
        self.retry(|mut c| {
            let (key, options) = (key.clone(), options.clone());
            async move { c.get(key, options).await }
        })
        .await
    }

    /// Deletes `key` (with `options`), retrying transient failures: deleting twice is deleting
    /// once.
    pub async fn delete(
        &self,
        key: impl Into<Vec<u8>>,
        options: Option<DeleteOptions>,
    ) -> Result<DeleteResponse> {
        let key = key.into();
        self.retry(|mut c| {
            let (key, options) = (key.clone(), options.clone());
            async move { c.delete(key, options).await }
        })
        .await
    }

    /// Runs `txn`, retrying transient failures. Only for transactions whose compares make a
    /// repeat a no-op (a create guarded by "does not exist yet", a delete guarded by a revision):
    /// the first attempt may have been applied even though its answer was lost.
    pub async fn txn_idempotent(&self, txn: Txn) -> Result<TxnResponse> {
        self.retry(|mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await
    }

    /// Runs `op` with a fresh handle, retrying transient failures (see the module doc).
    pub async fn retry<T, F, Fut>(&self, mut op: F) -> Result<T>
    where
        F: FnMut(etcd_client::Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_secs(2))
            .with_jitter()
            .with_max_times(MAX_RETRIES);
        (|| {
            let pinned = self.pinned.load(Ordering::Relaxed);
            let call = op(self.endpoints[pinned].clone());
            async move {
                call.await.map_err(|e| {
                    let e = Error::from(e);
                    if e.is_transient() {
                        self.unpin(pinned);
                    }
                    e
                })
            }
        })
        .retry(backoff)
        .when(Error::is_transient)
        .await
    }
}
