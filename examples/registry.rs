//! Two instances of a service register with TTL heartbeats; a client discovers them and follows
//! changes as one instance leaves.
//!
//! Run a server first (`cargo run --release --bin concord`, or any etcd ≥ 3.4), then
//! `cargo run --example registry`. Endpoints come from `CONCORD_ENDPOINTS` (comma-separated,
//! default `127.0.0.1:2379`). Exits 0 when discovery saw both instances, then the departure.

use std::time::Duration;

use concord_recipes::{Change, Client, ServiceRegistry};
use futures::StreamExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let client = Client::connect_from_env().await?;
    let registry = ServiceRegistry::new(&client);
    let service = format!("example-greeter-{}", std::process::id());
    let a = registry
        .register(
            &service,
            "127.0.0.1:50051",
            serde_json::json!({"zone": "a"}),
            5,
        )
        .await?;
    let b = registry
        .register(
            &service,
            "127.0.0.1:50052",
            serde_json::json!({"zone": "b"}),
            5,
        )
        .await?;

    let (instances, changes) = registry.discover(&service).await?;
    let mut changes = Box::pin(changes);
    for instance in &instances {
        println!(
            "found {} in zone {}",
            instance.addr, instance.metadata["zone"]
        );
    }
    if instances.len() != 2 {
        return Err(format!("expected 2 instances, found {}", instances.len()).into());
    }

    a.deregister().await;
    let change = tokio::time::timeout(Duration::from_secs(10), changes.next())
        .await?
        .ok_or("the change stream ended")?;
    println!("change: {change:?}");
    if change != Change::Down("127.0.0.1:50051".into()) {
        return Err("expected the first instance to leave".into());
    }
    b.deregister().await;
    println!("ok");
    Ok(())
}
