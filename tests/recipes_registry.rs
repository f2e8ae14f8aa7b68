//! The ServiceRegistry recipe against real servers: Concord in-process and Debian's etcd 3.4
//! (skipped loudly without etcd, a failure under `CONCORD_REQUIRE_ETCD=1`).
//!
//! Stories:
//! - two instances register with etcd's naming layout; discovery lists them and follows changes;
//!   one deregisters (Down); the other loses its lease (revoked behind its back, as if the server
//!   had expired it) and registers again by itself (Down, then Up);
//! - an instance is killed without deregistering: it stays listed until its lease expires, then
//!   discovery sees it go;
//! - the server restarts (same endpoint, same data): the registration keeps its instance listed
//!   (registering it again if needed) and the discovery stream goes on, converging on the
//!   instances that really are there.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use concord::recipes::{Change, Client, ServiceRegistry};
use futures::{Stream, StreamExt};

/// The lease TTL of the killed instance: etcd's minimum with its default timings.
const KILLED_TTL: i64 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_stories_on_concord_and_etcd() {
    let targets = common::Targets::start().await;
    for (name, endpoint) in targets.endpoints() {
        println!("--- {name}");
        instances_register_deregister_and_come_back(&endpoint).await;
        let started = Instant::now();
        a_killed_instance_disappears_when_its_lease_expires(&endpoint).await;
        println!("killed instance: {:.1?}", started.elapsed());
    }
    targets.concord.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_converges_after_a_server_restart() {
    for mut target in common::Target::start_all().await {
        println!("--- {}", target.name);
        let started = Instant::now();
        registration_and_discovery_survive_a_server_restart(&mut target).await;
        println!("server restart: {:.1?}", started.elapsed());
        target.shutdown().await;
    }
}

async fn next(changes: &mut (impl Stream<Item = Change> + Unpin)) -> Change {
    tokio::time::timeout(Duration::from_secs(10), changes.next())
        .await
        .expect("a change")
        .expect("the stream goes on")
}

async fn instances_register_deregister_and_come_back(endpoint: &str) {
    let client = Client::connect([endpoint]).await.unwrap();
    let registry = ServiceRegistry::new(&client);
    let a = registry
        .register(
            "greeter",
            "10.0.0.1:50051",
            serde_json::json!({"zone": "a"}),
            3,
        )
        .await
        .unwrap();
    let b = registry
        .register(
            "greeter",
            "10.0.0.2:50051",
            serde_json::json!({"zone": "b"}),
            3,
        )
        .await
        .unwrap();
    // etcd's naming layout: `<service>/<addr>` → {"Addr":…,"Metadata":…}.
    let raw = client
        .etcd()
        .get("greeter/10.0.0.1:50051", None)
        .await
        .unwrap();
    assert_eq!(
        raw.kvs()[0].value_str().unwrap(),
        r#"{"Addr":"10.0.0.1:50051","Metadata":{"zone":"a"}}"#
    );
    let b_lease = client
        .etcd()
        .get("greeter/10.0.0.2:50051", None)
        .await
        .unwrap()
        .kvs()[0]
        .lease();

    let (instances, changes) = registry.discover("greeter").await.unwrap();
    let mut changes = Box::pin(changes);
    let addrs: Vec<&str> = instances.iter().map(|i| i.addr.as_str()).collect();
    assert_eq!(addrs, ["10.0.0.1:50051", "10.0.0.2:50051"]);
    assert_eq!(instances[1].metadata["zone"], "b");

    a.deregister().await;
    assert_eq!(
        next(&mut changes).await,
        Change::Down("10.0.0.1:50051".into())
    );

    // b's lease is revoked behind its back: its key goes, and it registers again by itself.
    client.etcd().lease_revoke(b_lease).await.unwrap();
    assert_eq!(
        next(&mut changes).await,
        Change::Down("10.0.0.2:50051".into())
    );
    match next(&mut changes).await {
        Change::Up(instance) => assert_eq!(instance.addr, "10.0.0.2:50051"),
        other => panic!("expected b back, got {other:?}"),
    }
    // The task counts the registration right after its put; the watcher may see the put first.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while b.registrations() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "registered twice");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(b.registrations(), 2);
    drop(b); // deregisters in the background
    assert_eq!(
        next(&mut changes).await,
        Change::Down("10.0.0.2:50051".into())
    );
}

/// A service instance in a "process" of its own: a thread with its own runtime, client and
/// registration. [`InstanceProcess::kill`] drops that runtime with everything on it — the
/// heartbeat, the keepalives, the connection — and never deregisters, as a crash would.
struct InstanceProcess {
    kill: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl InstanceProcess {
    /// Starts the "process" and returns once its instance is registered.
    fn start(endpoint: &str, service: &str, addr: &str, ttl: i64) -> InstanceProcess {
        let (endpoint, service, addr) =
            (endpoint.to_string(), service.to_string(), addr.to_string());
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let (kill, killed) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let client = Client::connect([endpoint]).await.unwrap();
                let registry = ServiceRegistry::new(&client);
                let registration = registry
                    .register(&service, &addr, serde_json::json!({}), ttl)
                    .await
                    .unwrap();
                ready_tx.send(()).unwrap();
                // The heartbeat runs on this runtime until the kill.
                let _ = tokio::task::spawn_blocking(move || killed.recv()).await;
                std::mem::forget(registration); // no Drop: no deregistration
            });
            // Tasks dropped by a runtime that is shutting down cannot start new ones: the
            // session's revoke-on-drop never runs.
            drop(runtime);
        });
        ready.recv().expect("the instance registered");
        InstanceProcess { kill, thread }
    }

    fn kill(self) {
        self.kill.send(()).unwrap();
        self.thread.join().unwrap();
    }
}

async fn a_killed_instance_disappears_when_its_lease_expires(endpoint: &str) {
    let client = Client::connect([endpoint]).await.unwrap();
    let registry = ServiceRegistry::new(&client);
    let (instances, changes) = registry.discover("doomed").await.unwrap();
    assert!(instances.is_empty());
    let mut changes = Box::pin(changes);
    let process = InstanceProcess::start(endpoint, "doomed", "10.0.0.9:50051", KILLED_TTL);
    match next(&mut changes).await {
        Change::Up(instance) => assert_eq!(instance.addr, "10.0.0.9:50051"),
        other => panic!("expected the instance up, got {other:?}"),
    }

    let killed = Instant::now();
    process.kill();
    // Nobody revoked its lease: it is still listed a moment later...
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (instances, _) = registry.discover("doomed").await.unwrap();
    assert_eq!(instances.len(), 1, "gone before its lease expired");
    // ...and goes when the lease expires (at most one TTL after the last keepalive).
    assert_eq!(
        next(&mut changes).await,
        Change::Down("10.0.0.9:50051".into())
    );
    let after = killed.elapsed();
    assert!(
        after < Duration::from_secs(KILLED_TTL as u64 + 3),
        "{after:?}"
    );
    println!("the killed instance went {after:.1?} after the kill");
}

/// Applies `changes` to `view` until it is `expected`.
async fn converge(
    view: &mut BTreeSet<String>,
    changes: &mut (impl Stream<Item = Change> + Unpin),
    expected: &[&str],
) {
    let expected: BTreeSet<String> = expected.iter().map(|a| a.to_string()).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while *view != expected {
        let change = tokio::time::timeout_at(deadline, changes.next())
            .await
            .unwrap_or_else(|_| panic!("stuck at {view:?}, expected {expected:?}"))
            .expect("the stream goes on");
        match change {
            Change::Up(instance) => {
                view.insert(instance.addr);
            }
            Change::Down(addr) => {
                view.remove(&addr);
            }
            Change::Resync(instances) => *view = instances.into_iter().map(|i| i.addr).collect(),
        }
    }
}

async fn registration_and_discovery_survive_a_server_restart(target: &mut common::Target) {
    let client = Client::connect([target.endpoint()]).await.unwrap();
    let registry = ServiceRegistry::new(&client);
    let (a, b) = ("10.0.1.1:50051", "10.0.1.2:50051");
    let first = registry
        .register("restarted", a, serde_json::json!({}), 3)
        .await
        .unwrap();
    let (instances, changes) = registry.discover("restarted").await.unwrap();
    let mut changes = Box::pin(changes);
    let mut view: BTreeSet<String> = instances.into_iter().map(|i| i.addr).collect();
    assert_eq!(view, BTreeSet::from([a.to_string()]));

    target.restart().await;

    // The instance is still there (its lease survived, or it registered again), a new one joins,
    // and the same discovery stream sees it.
    let second = registry
        .register("restarted", b, serde_json::json!({}), 3)
        .await
        .unwrap();
    converge(&mut view, &mut changes, &[a, b]).await;
    let (listed, _) = registry.discover("restarted").await.unwrap();
    let listed: Vec<&str> = listed.iter().map(|i| i.addr.as_str()).collect();
    assert_eq!(listed, [a, b]);
    println!(
        "registrations of the first instance: {}",
        first.registrations()
    );

    first.deregister().await;
    converge(&mut view, &mut changes, &[b]).await;
    second.deregister().await;
    converge(&mut view, &mut changes, &[]).await;
}
