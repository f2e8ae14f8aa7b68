//! The ServiceRegistry recipe against real servers: Concord in-process and Debian's etcd 3.4
//! (skipped loudly without etcd, a failure under `CONCORD_REQUIRE_ETCD=1`).
//!
//! Story: two instances register with etcd's naming layout; discovery lists them and follows
//! changes; one deregisters (Down); the other loses its lease (revoked behind its back, as if the
//! server had expired it) and registers again by itself (Down, then Up).

mod common;

use std::time::Duration;

use concord::recipes::{Change, Client, ServiceRegistry};
use futures::{Stream, StreamExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_stories_on_concord_and_etcd() {
    let targets = common::Targets::start().await;
    for (name, endpoint) in targets.endpoints() {
        println!("--- {name}");
        instances_register_deregister_and_come_back(&endpoint).await;
    }
    targets.concord.shutdown().await.unwrap();
}

async fn next(
    changes: &mut (impl Stream<Item = concord::recipes::Result<Change>> + Unpin),
) -> Change {
    tokio::time::timeout(Duration::from_secs(10), changes.next())
        .await
        .expect("a change")
        .expect("the stream goes on")
        .expect("no error")
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
