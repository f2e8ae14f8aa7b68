//! Five workers share a semaphore of two permits: at most two run at once, and two do.
//!
//! Run a server first (`cargo run --release --bin concord`, or any etcd ≥ 3.4), then
//! `cargo run --example semaphore`. Endpoints come from `CONCORD_ENDPOINTS` (comma-separated,
//! default `127.0.0.1:2379`). Exits 0 when the limit held.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use concord_recipes::{Client, Semaphore, Session};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let client = Client::connect_from_env().await?;
    let name = format!("example-semaphore-{}", std::process::id());
    let (inside, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut workers = Vec::new();
    for worker in 0..5 {
        let (client, name, inside, most) =
            (client.clone(), name.clone(), inside.clone(), most.clone());
        workers.push(tokio::spawn(async move {
            let session = Session::new(&client, 10).await?;
            let permit = Semaphore::new(&client, name, 2).acquire(&session).await?;
            let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            println!("worker {worker} runs ({now} running)");
            tokio::time::sleep(Duration::from_millis(200)).await;
            inside.fetch_sub(1, Ordering::SeqCst);
            permit.unlock().await?;
            session.close().await?;
            Ok::<(), concord_recipes::Error>(())
        }));
    }
    for w in workers {
        w.await??;
    }
    let most = most.load(Ordering::SeqCst);
    if most != 2 {
        return Err(format!("{most} ran at once, expected 2").into());
    }
    println!("ok: never more than 2 at once");
    Ok(())
}
