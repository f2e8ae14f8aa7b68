//! Service registration and discovery with TTL heartbeats, on etcd's naming layout.
//!
//! An instance of service `svc` is the key `<svc>/<addr>` whose value is the JSON
//! `{"Addr": "<addr>", "Metadata": <your metadata>}` — the layout of etcd's Go
//! `client/v3/naming/endpoints`, so Go gRPC clients using etcd's resolver see the same
//! instances. The key is attached to a lease kept alive in the background.
//!
//! [`ServiceRegistry::register`] never gives up: if the lease is lost (the server was unreachable
//! for longer than the TTL, or the lease was revoked), it grants a new one and registers again,
//! retrying with backoff while the server is down. [`Registration::deregister`] (or dropping the
//! registration) removes the instance at once; a crashed process's instance disappears when its
//! lease expires, one TTL later.
//!
//! [`ServiceRegistry::discover`] returns the instances and a stream of changes from that
//! revision on, built on [`Client::follow`]: it resumes by itself after a broken connection or a
//! server restart, and when it cannot continue exactly (the history it needs was compacted), it
//! lists the instances again and says so with [`Change::Resync`] instead of skipping anything
//! silently.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{EventType, PutOptions};
use futures::{Stream, StreamExt, stream};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::follow::Update;
use crate::session::Session;

/// A registered instance, as discovery reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    #[serde(rename = "Addr")]
    pub addr: String,
    #[serde(rename = "Metadata", default)]
    pub metadata: serde_json::Value,
    /// Its name within the service: the part of its key after `<service>/`. Instances this crate
    /// registers are named by their address; Go's `endpoints.Manager` lets callers choose any
    /// name, which is what [`Change::Down`] reports. Not part of the stored JSON.
    #[serde(skip)]
    pub key: String,
}

/// A change to a service's instances.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// An instance registered (or changed its metadata).
    Up(Instance),
    /// The instance with this [`Instance::key`] is gone.
    Down(String),
    /// The change stream had to start over: these are all the instances now.
    Resync(Vec<Instance>),
}

/// Registers and discovers service instances (see the module doc).
#[derive(Clone)]
pub struct ServiceRegistry {
    client: Client,
}

/// A live registration; [`Registration::deregister`] or drop it to remove the instance.
pub struct Registration {
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    /// How many times the instance was (re)registered: 1 after the first registration.
    registrations: watch::Receiver<u64>,
}

impl ServiceRegistry {
    pub fn new(client: &Client) -> ServiceRegistry {
        ServiceRegistry {
            client: client.clone(),
        }
    }

    /// Registers `addr` under `service` with `metadata`, kept alive with a lease of `ttl` seconds.
    /// Returns once the first registration is written.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo() -> concord_recipes::Result<()> {
    /// use concord_recipes::{Client, ServiceRegistry};
    /// let client = Client::connect(["127.0.0.1:2379"]).await?;
    /// let registry = ServiceRegistry::new(&client);
    /// let me = registry
    ///     .register("greeter", "10.0.0.7:50051", serde_json::json!({"zone": "a"}), 10)
    ///     .await?;
    /// let (instances, _changes) = registry.discover("greeter").await?;
    /// me.deregister().await;
    /// # Ok(()) }
    /// ```
    pub async fn register(
        &self,
        service: &str,
        addr: &str,
        metadata: impl Serialize,
        ttl: i64,
    ) -> Result<Registration> {
        let instance = Instance {
            addr: addr.to_string(),
            metadata: serde_json::to_value(metadata)
                .map_err(|e| Error::Invalid(format!("metadata is not JSON: {e}")))?,
            key: addr.to_string(),
        };
        let value = serde_json::to_vec(&instance).expect("a Value serializes");
        let key = format!("{}/{addr}", self.client.key(service));
        let (stop, stop_rx) = watch::channel(false);
        let (count_tx, mut registrations) = watch::channel(0u64);
        let task = tokio::spawn(heartbeat(
            self.client.clone(),
            key,
            value,
            ttl,
            stop_rx,
            count_tx,
        ));
        let first = registrations.wait_for(|n| *n > 0).await.map(|_| ());
        first.map_err(|_| Error::WatchEnded("the registration task ended".into()))?;
        Ok(Registration {
            stop,
            task: Some(task),
            registrations,
        })
    }

    /// The instances of `service` now, and the changes after them: a stream that resumes by
    /// itself after a broken connection and ends only when dropped (see the module doc).
    pub async fn discover(
        &self,
        service: &str,
    ) -> Result<(Vec<Instance>, impl Stream<Item = Change> + Send + 'static)> {
        let prefix = format!("{}/", self.client.key(service));
        let (kvs, _, updates) = self.client.list_and_follow(&prefix, true).await?;
        let listed = instances(&prefix, &kvs);
        let changes = updates.flat_map(move |update| stream::iter(changes(&prefix, update)));
        Ok((listed, changes))
    }
}

impl Registration {
    /// How many times the instance has been registered (it re-registers after losing its lease).
    pub fn registrations(&self) -> u64 {
        *self.registrations.borrow()
    }

    /// Removes the instance now (revokes its lease) and stops the heartbeat.
    pub async fn deregister(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Registration {
    /// Stops the heartbeat; the task revokes the lease on its way out.
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Keeps `key` registered until `stop` (see the module doc).
async fn heartbeat(
    client: Client,
    key: String,
    value: Vec<u8>,
    ttl: i64,
    mut stop: watch::Receiver<bool>,
    registrations: watch::Sender<u64>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let attempt = async {
            let session = Session::new(&client, ttl).await?;
            let (k, v, lease) = (key.clone(), value.clone(), session.lease());
            client
                .retry(|mut c| {
                    let (k, v) = (k.clone(), v.clone());
                    async move { c.put(k, v, Some(PutOptions::new().with_lease(lease))).await }
                })
                .await?;
            Ok::<Session, Error>(session)
        };
        let session = tokio::select! {
            session = attempt => session,
            _ = stop.wait_for(|s| *s) => return,
        };
        match session {
            Ok(session) => {
                backoff = Duration::from_millis(100);
                registrations.send_modify(|n| *n += 1);
                let stopped = tokio::select! {
                    _ = session.expired() => false,
                    _ = stop.wait_for(|s| *s) => true,
                };
                if stopped {
                    let _ = session.close().await; // deletes the key
                    return;
                }
                tracing::warn!(%key, "registration lost its lease; registering again");
            }
            Err(e) => {
                tracing::warn!(%key, error = %e, ?backoff, "registering failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// The instances among `kvs` (keys that are not instance records are skipped).
fn instances(prefix: &str, kvs: &[etcd_client::KeyValue]) -> Vec<Instance> {
    kvs.iter().filter_map(|kv| instance(prefix, kv)).collect()
}

/// The instance record `kv` under `prefix`, named by the rest of its key; `None` for a value
/// that is not an instance record or a key deeper down (`<service>/a/b` belongs to no instance
/// of `<service>`).
fn instance(prefix: &str, kv: &etcd_client::KeyValue) -> Option<Instance> {
    let key = instance_key(prefix, kv)?;
    let instance: Instance = serde_json::from_slice(kv.value()).ok()?;
    Some(Instance { key, ..instance })
}

/// The name of the instance whose key is `kv`'s (see [`instance`]).
fn instance_key(prefix: &str, kv: &etcd_client::KeyValue) -> Option<String> {
    let name = String::from_utf8_lossy(kv.key().get(prefix.len()..)?).into_owned();
    (!name.is_empty() && !name.contains('/')).then_some(name)
}

/// The changes to the instances under `prefix` that `update` brings, in revision order.
fn changes(prefix: &str, update: Update) -> Vec<Change> {
    let events = match update {
        Update::Resync { kvs, .. } => return vec![Change::Resync(instances(prefix, &kvs))],
        Update::Events { events, .. } => events,
        Update::Connected | Update::Disconnected { .. } => return Vec::new(),
    };
    let mut changes = BTreeMap::new();
    for event in &events {
        let Some(kv) = event.kv() else { continue };
        let Some(key) = instance_key(prefix, kv) else {
            continue;
        };
        let change = match event.event_type() {
            EventType::Delete => Change::Down(key.clone()),
            EventType::Put => match instance(prefix, kv) {
                Some(instance) => Change::Up(instance),
                None => continue, // not an instance record
            },
        };
        changes.insert((kv.mod_revision(), key), change);
    }
    changes.into_values().collect()
}
