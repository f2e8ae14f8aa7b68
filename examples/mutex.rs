//! Two workers share a job through the Mutex recipe; each run of the job carries the lock's fencing
//! token, and the "resource" (a key) refuses a token lower than the highest it has seen.
//!
//! Run a server first (`cargo run --release --bin concord`, or any etcd ≥ 3.4), then
//! `cargo run --example mutex`. Endpoints come from `CONCORD_ENDPOINTS` (comma-separated,
//! default `127.0.0.1:2379`). Exits 0 when every run was exclusive and fenced.

use std::time::Duration;

use concord_recipes::{Client, Mutex, Session};
use etcd_client::{Compare, CompareOp, Txn, TxnOp};

/// The resource: accepts a write only with a token higher than any it has seen.
async fn fence(client: &Client, key: &str, token: i64) -> Result<bool, etcd_client::Error> {
    let value = format!("{token:020}"); // fixed width: string order is number order
    let put = TxnOp::put(key, value.as_str(), None);
    let first = Txn::new()
        .when([Compare::version(key, CompareOp::Equal, 0)])
        .and_then([put.clone()]);
    if client.etcd().txn(first).await?.succeeded() {
        return Ok(true);
    }
    let higher = Txn::new()
        .when([Compare::value(key, CompareOp::Less, value.as_str())])
        .and_then([put]);
    Ok(client.etcd().txn(higher).await?.succeeded())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let client = Client::connect_from_env().await?;
    let run = format!("example-mutex-{}", std::process::id());
    let mut workers = Vec::new();
    for worker in 0..2 {
        let (client, run) = (client.clone(), run.clone());
        workers.push(tokio::spawn(async move {
            let session = Session::new(&client, 10).await?;
            let mutex = Mutex::new(&client, format!("{run}/lock"));
            for _ in 0..3 {
                let guard = mutex.lock(&session).await?;
                let token = guard.fencing_token();
                if !fence(&client, &format!("{run}/token"), token).await? {
                    return Err(format!("worker {worker}: token {token} was refused").into());
                }
                println!(
                    "worker {worker} holds {} (fencing token {token})",
                    guard.key()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
                guard.unlock().await?;
            }
            session.close().await?;
            Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
        }));
    }
    for w in workers {
        w.await?.map_err(|e| e.to_string())?;
    }
    client
        .etcd()
        .delete(
            run.clone(),
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await?;
    println!("ok: every run held the lock alone, with a growing fencing token");
    Ok(())
}
