//! Client-side load balancing for tonic over the [`ServiceRegistry`]: the live instances of a
//! service as a `tower::discover::Discover` of tonic [`Endpoint`]s.
//!
//! [`Resolver::discover`] follows one service: it starts with an insert for every registered
//! instance, then inserts and removes endpoints as instances come and go. The stream never ends
//! on its own: the registry's change stream resumes by itself after a broken connection or a
//! server restart, and when it has to start over (compaction) the resolver reports the difference
//! between what it knew and the new listing — so the set of endpoints converges to the registered
//! set whatever happened in between. The first listing is retried with backoff until the server
//! answers. Endpoints are keyed by the instance's
//! [`Instance::key`](crate::Instance::key) (its address, for instances this crate registers); an
//! instance that changes its address or metadata is inserted again under the same key.
//!
//! [`Resolver::channel`] feeds such a stream into [`Channel::balance_channel`]: a tonic client on
//! that channel spreads its calls over the live instances (tower's power-of-two-choices balancer)
//! and stops using an instance once it is removed.
//!
//! What it does not do: health checking. An instance that hangs but keeps its registration alive
//! still receives calls until it deregisters or its lease expires; use tonic's timeouts and
//! retries for that. An address that is not a valid URI is skipped with a warning.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::channel::Change as TonicChange;
use tonic::transport::{Channel, Endpoint};
use tower::discover::Change as Discovered;

use crate::client::Client;
use crate::error::Result;
use crate::registry::{Change, Instance, ServiceRegistry};

/// Endpoint changes buffered between the resolver and its consumer.
const BUFFER: usize = 64;

/// How an instance becomes an endpoint (see [`Resolver::with_endpoint`]).
type MakeEndpoint = Arc<dyn Fn(&Instance) -> Option<Endpoint> + Send + Sync>;

/// Resolves service names to live tonic endpoints (see the module doc).
///
/// # Examples
/// ```no_run
/// # async fn demo() -> concord_recipes::Result<()> {
/// use concord_recipes::{Client, Resolver};
/// let client = Client::connect(["127.0.0.1:2379"]).await?;
/// // Every call on `channel` goes to one of the live "greeter" instances.
/// let channel = Resolver::new(&client).channel("greeter");
/// // let mut greeter = GreeterClient::new(channel);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Resolver {
    registry: ServiceRegistry,
    make_endpoint: MakeEndpoint,
}

impl Resolver {
    /// A resolver over the registry on `client`; an instance at `addr` becomes the endpoint
    /// `http://<addr>` (or `addr` itself when it has a scheme).
    pub fn new(client: &Client) -> Resolver {
        Resolver {
            registry: ServiceRegistry::new(client),
            make_endpoint: Arc::new(default_endpoint),
        }
    }

    /// Builds endpoints with `f` instead (to set timeouts, TLS, or read the address from the
    /// metadata); `None` skips the instance.
    pub fn with_endpoint(
        mut self,
        f: impl Fn(&Instance) -> Option<Endpoint> + Send + Sync + 'static,
    ) -> Resolver {
        self.make_endpoint = Arc::new(f);
        self
    }

    /// The live endpoints of `service` as a `tower::discover::Discover` (a stream of
    /// inserts and removals keyed by [`Instance::key`]). It ends only when dropped.
    pub fn discover(
        &self,
        service: &str,
    ) -> impl Stream<Item = Result<Discovered<String, Endpoint>, std::convert::Infallible>>
    + Send
    + 'static {
        let (tx, rx) = mpsc::channel(BUFFER);
        tokio::spawn(resolve(self.clone(), service.to_string(), tx, |change| {
            change
        }));
        ReceiverStream::new(rx).map(Ok)
    }

    /// A channel that balances calls over the live instances of `service` and follows changes.
    /// Calls made before any instance is known wait for one.
    pub fn channel(&self, service: &str) -> Channel {
        let (channel, tx) = Channel::balance_channel(BUFFER);
        tokio::spawn(resolve(
            self.clone(),
            service.to_string(),
            tx,
            |change| match change {
                Discovered::Insert(key, endpoint) => TonicChange::Insert(key, endpoint),
                Discovered::Remove(key) => TonicChange::Remove(key),
            },
        ));
        channel
    }
}

/// `http://<addr>`, or `addr` when it already has a scheme.
fn default_endpoint(instance: &Instance) -> Option<Endpoint> {
    let uri = if instance.addr.contains("://") {
        instance.addr.clone()
    } else {
        format!("http://{}", instance.addr)
    };
    Endpoint::from_shared(uri).ok()
}

/// Sends the endpoint changes of `service` to `tx` until it closes (see the module doc).
/// `wrap` turns tower's changes into what `tx` carries (tonic's balancer has its own type).
async fn resolve<C: Send + 'static>(
    resolver: Resolver,
    service: String,
    tx: mpsc::Sender<C>,
    wrap: fn(Discovered<String, Endpoint>) -> C,
) {
    let mut known = Known {
        endpoints: BTreeMap::new(),
        make: resolver.make_endpoint.clone(),
        tx,
        wrap,
    };
    // The first listing, retried until the server answers; the changes then resume by
    // themselves (see `registry`).
    let mut backoff = Duration::from_millis(100);
    let (instances, changes) = loop {
        let discovered = tokio::select! {
            discovered = resolver.registry.discover(&service) => discovered,
            _ = known.tx.closed() => return,
        };
        match discovered {
            Ok(found) => break found,
            Err(e) => {
                tracing::warn!(%service, error = %e, ?backoff, "resolving failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = known.tx.closed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    };
    if !known.resync(instances).await {
        return;
    }
    let mut changes = std::pin::pin!(changes);
    loop {
        let change = tokio::select! {
            change = changes.next() => change,
            _ = known.tx.closed() => return,
        };
        let alive = match change {
            Some(Change::Up(instance)) => known.insert(&instance).await,
            Some(Change::Down(key)) => known.remove(key).await,
            Some(Change::Resync(instances)) => known.resync(instances).await,
            None => return, // only when the runtime shuts down
        };
        if !alive {
            return;
        }
    }
}

/// The endpoints the consumer knows, and the way to tell it of changes. Each method returns
/// false once the consumer is gone.
struct Known<C> {
    endpoints: BTreeMap<String, Instance>,
    make: MakeEndpoint,
    tx: mpsc::Sender<C>,
    wrap: fn(Discovered<String, Endpoint>) -> C,
}

impl<C> Known<C> {
    async fn send(&self, change: Discovered<String, Endpoint>) -> bool {
        self.tx.send((self.wrap)(change)).await.is_ok()
    }

    async fn insert(&mut self, instance: &Instance) -> bool {
        let Some(endpoint) = (self.make)(instance) else {
            tracing::warn!(addr = %instance.addr, "skipping an instance whose address is not a URI");
            return true;
        };
        if self.endpoints.get(&instance.key) == Some(instance) {
            return true; // nothing new
        }
        self.endpoints
            .insert(instance.key.clone(), instance.clone());
        let key = instance.key.clone();
        self.send(Discovered::Insert(key, endpoint)).await
    }

    async fn remove(&mut self, key: String) -> bool {
        if self.endpoints.remove(&key).is_none() {
            return true;
        }
        self.send(Discovered::Remove(key)).await
    }

    /// Makes the known set exactly `instances`.
    async fn resync(&mut self, instances: Vec<Instance>) -> bool {
        let gone: Vec<String> = self
            .endpoints
            .keys()
            .filter(|key| !instances.iter().any(|i| &i.key == *key))
            .cloned()
            .collect();
        for key in gone {
            if !self.remove(key).await {
                return false;
            }
        }
        for instance in &instances {
            if !self.insert(instance).await {
                return false;
            }
        }
        true
    }
}
