//! The Resolver recipe against real servers (Concord in-process and Debian's etcd 3.4): a tonic
//! client on a resolver channel balances over the registered instances of a service and follows
//! them as they come and go.
//!
//! Story: two Greeter instances register; calls reach both; one deregisters and stops, and every
//! call then reaches the other; a third registers and calls reach it too. The Discover stream
//! itself reports an insert per instance and a removal when one leaves.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use concord::proto::concorddemopb::greeter_client::GreeterClient;
use concord::proto::concorddemopb::greeter_server::{Greeter, GreeterServer};
use concord::proto::concorddemopb::{HelloReply, HelloRequest};
use concord::recipes::{Client, Registration, Resolver, ServiceRegistry};
use futures::StreamExt;
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tower::discover::Change;

/// How long the resolver may take to follow a registration change.
const CONVERGE: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolver_follows_instances_on_concord_and_etcd() {
    let targets = common::Targets::start().await;
    for (name, endpoint) in targets.endpoints() {
        println!("--- {name}");
        let client = Client::connect([endpoint.as_str()]).await.unwrap();
        calls_follow_the_registered_instances(&client).await;
        discover_reports_inserts_and_removals(&client).await;
    }
    targets.concord.shutdown().await.unwrap();
}

/// A Greeter instance serving on 127.0.0.1 until dropped.
struct Instance {
    addr: String,
    stop: Option<oneshot::Sender<()>>,
}

struct Hello(String);

#[tonic::async_trait]
impl Greeter for Hello {
    async fn say_hello(
        &self,
        request: tonic::Request<HelloRequest>,
    ) -> Result<tonic::Response<HelloReply>, tonic::Status> {
        Ok(tonic::Response::new(HelloReply {
            message: format!("hello {}", request.into_inner().name),
            instance: self.0.clone(),
        }))
    }
}

impl Instance {
    async fn start() -> Instance {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (stop, stopped) = oneshot::channel::<()>();
        let service = GreeterServer::new(Hello(addr.clone()));
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    async {
                        let _ = stopped.await;
                    },
                ),
        );
        Instance {
            addr,
            stop: Some(stop),
        }
    }

    async fn register(&self, registry: &ServiceRegistry, service: &str) -> Registration {
        registry
            .register(service, &self.addr, serde_json::json!({}), 5)
            .await
            .unwrap()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Calls until `want` holds for the set of instances that answered the last `window` calls in a
/// row (failed calls start the window over: a removed instance may fail a call or two).
async fn converge(
    greeter: &mut GreeterClient<Channel>,
    window: usize,
    want: impl Fn(&BTreeSet<String>) -> bool,
) -> BTreeSet<String> {
    let deadline = tokio::time::Instant::now() + CONVERGE;
    let mut seen = Vec::new();
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the balancer did not converge; last answers: {seen:?}"
        );
        let call = greeter.say_hello(HelloRequest {
            name: "resolver".into(),
        });
        match tokio::time::timeout(Duration::from_secs(2), call).await {
            Ok(Ok(reply)) => seen.push(reply.into_inner().instance),
            _ => seen.clear(),
        }
        if seen.len() > window {
            seen.remove(0);
        }
        let answered: BTreeSet<String> = seen.iter().cloned().collect();
        if seen.len() == window && want(&answered) {
            return answered;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn calls_follow_the_registered_instances(client: &Client) {
    let service = format!("greeter-{}", uuid::Uuid::new_v4().simple());
    let registry = ServiceRegistry::new(client);
    let (a, b) = (Instance::start().await, Instance::start().await);
    let reg_a = a.register(&registry, &service).await;
    let reg_b = b.register(&registry, &service).await;
    let mut greeter = GreeterClient::new(Resolver::new(client).channel(&service));

    let both: BTreeSet<String> = [a.addr.clone(), b.addr.clone()].into();
    converge(&mut greeter, 20, |answered| *answered == both).await;

    reg_a.deregister().await;
    drop(a);
    let only_b: BTreeSet<String> = [b.addr.clone()].into();
    converge(&mut greeter, 20, |answered| *answered == only_b).await;

    let c = Instance::start().await;
    let reg_c = c.register(&registry, &service).await;
    let b_and_c: BTreeSet<String> = [b.addr.clone(), c.addr.clone()].into();
    converge(&mut greeter, 20, |answered| *answered == b_and_c).await;

    reg_b.deregister().await;
    reg_c.deregister().await;
}

async fn discover_reports_inserts_and_removals(client: &Client) {
    let service = format!("greeter-{}", uuid::Uuid::new_v4().simple());
    let registry = ServiceRegistry::new(client);
    let one = registry
        .register(&service, "127.0.0.1:1", serde_json::json!({}), 5)
        .await
        .unwrap();
    let two = registry
        .register(&service, "127.0.0.1:2", serde_json::json!({}), 5)
        .await
        .unwrap();
    let discover = Resolver::new(client).discover(&service);
    let mut discover = std::pin::pin!(discover);
    let mut next = async || {
        let change = tokio::time::timeout(CONVERGE, discover.next()).await;
        match change
            .expect("a change")
            .expect("the stream goes on")
            .unwrap()
        {
            Change::Insert(key, endpoint) => format!("insert {key} {}", endpoint.uri()),
            Change::Remove(key) => format!("remove {key}"),
        }
    };
    let mut first = vec![next().await, next().await];
    first.sort();
    assert_eq!(
        first,
        [
            "insert 127.0.0.1:1 http://127.0.0.1:1/",
            "insert 127.0.0.1:2 http://127.0.0.1:2/"
        ]
    );
    one.deregister().await;
    assert_eq!(next().await, "remove 127.0.0.1:1");

    // An instance written as Go's endpoints.Manager may write it: named "e3", not by address.
    // A key deeper down is no instance of this service.
    let mut etcd = client.etcd();
    let record = r#"{"Addr":"127.0.0.1:3","Metadata":null}"#;
    etcd.put(format!("{service}/x/y"), record, None)
        .await
        .unwrap();
    etcd.put(format!("{service}/e3"), record, None)
        .await
        .unwrap();
    assert_eq!(next().await, "insert e3 http://127.0.0.1:3/");
    etcd.delete(format!("{service}/e3"), None).await.unwrap();
    assert_eq!(next().await, "remove e3");
    etcd.delete(format!("{service}/x/y"), None).await.unwrap();

    two.deregister().await;
    assert_eq!(next().await, "remove 127.0.0.1:2");
}
