//! Readers share a catalog while a writer waits for them, then updates it alone.
//!
//! Run a server first (`cargo run --release --bin concord`, or any etcd ≥ 3.4), then
//! `cargo run --example rwlock`. Endpoints come from `CONCORD_ENDPOINTS` (comma-separated,
//! default `127.0.0.1:2379`). Exits 0 when the writer ran only after both readers left.

use std::time::Duration;

use concord_recipes::{Client, RwLock, Session};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let client = Client::connect_from_env().await?;
    let lock = RwLock::new(&client, format!("example-rwlock-{}", std::process::id()));
    let (a, b, w) = (
        Session::new(&client, 10).await?,
        Session::new(&client, 10).await?,
        Session::new(&client, 10).await?,
    );
    let reader_a = lock.read(&a).await?;
    let reader_b = lock.read(&b).await?;
    println!("two readers share the lock");
    let writer = {
        let lock = lock.clone();
        tokio::spawn(async move { lock.write(&w).await.map(|g| (g, w)) })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    if writer.is_finished() {
        return Err("the writer did not wait for the readers".into());
    }
    reader_a.unlock().await?;
    reader_b.unlock().await?;
    let (writing, w) = writer.await??;
    println!(
        "the writer runs alone (fencing token {})",
        writing.fencing_token()
    );
    writing.unlock().await?;
    for s in [a, b, w] {
        s.close().await?;
    }
    println!("ok");
    Ok(())
}
