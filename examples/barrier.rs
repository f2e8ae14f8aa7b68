//! Workers wait at a barrier until a coordinator releases them; then three participants start a
//! phase together through a double barrier and finish it together.
//!
//! Run a server first (`cargo run --release --bin concord`, or any etcd ≥ 3.4), then
//! `cargo run --example barrier`. Endpoints come from `CONCORD_ENDPOINTS` (comma-separated,
//! default `127.0.0.1:2379`). Exits 0 when everybody passed in the right order.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use concord_recipes::{Barrier, Client, DoubleBarrier, Session};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let client = Client::connect_from_env().await?;
    let run = std::process::id();

    let gate = Barrier::new(&client, format!("example-gate-{run}"));
    gate.hold().await?;
    let released = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for i in 0..3 {
        let (gate, released) = (gate.clone(), released.clone());
        workers.push(tokio::spawn(async move {
            gate.wait().await?;
            if !released.load(Ordering::SeqCst) {
                return Err(concord_recipes::Error::Invalid(format!(
                    "worker {i} passed early"
                )));
            }
            println!("worker {i} passed the gate");
            Ok(())
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    released.store(true, Ordering::SeqCst);
    gate.release().await?;
    for w in workers {
        w.await??;
    }

    let mut participants = Vec::new();
    for i in 0..3u64 {
        let client = client.clone();
        participants.push(tokio::spawn(async move {
            let session = Session::new(&client, 10).await?;
            let phase = DoubleBarrier::new(&client, format!("example-phase-{run}"), 3);
            tokio::time::sleep(Duration::from_millis(100 * i)).await;
            phase.enter(&session).await?;
            println!("participant {i} started the phase");
            phase.leave(&session).await?;
            println!("participant {i} finished the phase");
            session.close().await
        }));
    }
    for p in participants {
        p.await??;
    }
    println!("ok");
    Ok(())
}
