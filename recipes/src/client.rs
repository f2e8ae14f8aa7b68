//! The client every recipe is built on: the `etcd-client` crate, plus retries.
//!
//! `etcd-client` already spreads calls over several endpoints. What it does not do is retry:
//! [`Client::retry`] repeats a call that failed for a transient reason (the server was unavailable
//! or had no leader, the connection broke) with exponential backoff and jitter (`backon`), up to
//! [`MAX_RETRIES`] times. Only idempotent calls may be retried this way; the recipes use it for
//! reads, lease grants and deletes of their own keys, never for a create-if-absent they cannot
//! tell apart from a duplicate.

use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};

use crate::error::{Error, Result};

/// Where [`Client::connect_from_env`] connects when `CONCORD_ENDPOINTS` is not set.
pub const DEFAULT_ENDPOINT: &str = "127.0.0.1:2379";

/// Most retries of one call.
pub const MAX_RETRIES: usize = 6;

/// A connection to Concord or etcd (cheap to clone: clones share the connection).
#[derive(Clone)]
pub struct Client {
    inner: etcd_client::Client,
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
        let inner = etcd_client::Client::connect(endpoints, Some(options)).await?;
        Ok(Client { inner })
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
        Client { inner }
    }

    /// The underlying `etcd-client` client, for anything the recipes do not wrap.
    pub fn etcd(&self) -> etcd_client::Client {
        self.inner.clone()
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
            let call = op(self.inner.clone());
            async move { call.await.map_err(Error::from) }
        })
        .retry(backoff)
        .when(Error::is_transient)
        .await
    }
}
