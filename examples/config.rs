//! A typed config, hot-reloaded: a service loads its limits from one key, validates them, follows
//! a change, and keeps its last good limits when someone writes bad ones.
//!
//! Run a server first (`cargo run --release --bin concord`, or any etcd ≥ 3.4), then
//! `cargo run --example config`. Endpoints come from `CONCORD_ENDPOINTS` (comma-separated,
//! default `127.0.0.1:2379`). Exits 0 when the change was applied and the bad value rejected;
//! removes its key either way.
//!
//! The limits are a map (`{"workers": 4, "queue": 100}` → `BTreeMap<String, u64>`); a
//! `#[derive(serde::Deserialize)]` struct works the same way.

use std::collections::BTreeMap;
use std::time::Duration;

use concord_recipes::{Client, Config, Source};

type Limits = BTreeMap<String, u64>;

/// Every limit must be at least 1, and `workers` must be set.
fn check(limits: &Limits) -> Result<(), String> {
    if !limits.contains_key("workers") {
        return Err("workers is missing".into());
    }
    match limits.iter().find(|(_, n)| **n == 0) {
        Some((name, _)) => Err(format!("{name} must be at least 1")),
        None => Ok(()),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let client = Client::connect_from_env().await?;
    let key = format!("example-config-{}/limits", std::process::id());
    let outcome = run(&client, &key).await;
    client.etcd().delete(key, None).await?;
    outcome?;
    println!("ok");
    Ok(())
}

async fn run(client: &Client, key: &str) -> Result<(), Box<dyn std::error::Error>> {
    let mut etcd = client.etcd();
    etcd.put(key, r#"{"workers": 4, "queue": 100}"#, None)
        .await?;
    let config = Config::<Limits>::builder(client, Source::key(key))
        .validate(check)
        .load()
        .await?;
    println!(
        "loaded {:?} (revision {})",
        config.current(),
        config.revision()
    );

    // Hot reload: the subscriber sees the new limits.
    let mut updates = config.subscribe();
    etcd.put(key, r#"{"workers": 8, "queue": 100}"#, None)
        .await?;
    tokio::time::timeout(Duration::from_secs(10), updates.changed()).await??;
    let new = updates.borrow_and_update().clone();
    println!("hot reload: {:?} (revision {})", new.value, new.revision);
    if new.value["workers"] != 8 {
        return Err("expected 8 workers after the change".into());
    }

    // A bad value is rejected: the last good limits stay, and the status says why.
    etcd.put(key, r#"{"workers": 0, "queue": 100}"#, None)
        .await?;
    let mut status = config.watch_status();
    let status = tokio::time::timeout(Duration::from_secs(10), status.wait_for(|s| s.rejected > 0))
        .await??
        .clone();
    let rejection = status
        .last_rejection
        .ok_or("a rejection without a reason")?;
    println!(
        "rejected revision {}: {}; still using {:?}",
        rejection.revision,
        rejection.reason,
        config.current()
    );
    if config.current()["workers"] != 8 || updates.has_changed()? {
        return Err("the bad value must not be applied".into());
    }
    Ok(())
}
