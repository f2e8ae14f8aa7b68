//! A producer fills a FIFO queue while two consumers drain it: every item is handled exactly
//! once. Then a priority queue serves urgent work first.
//!
//! Run a server first (`cargo run --release --bin concord`, or any etcd ≥ 3.4), then
//! `cargo run --example queue`. Endpoints come from `CONCORD_ENDPOINTS` (comma-separated,
//! default `127.0.0.1:2379`). Exits 0 when nothing was lost or handled twice.

use std::collections::BTreeSet;
use std::time::Duration;

use concord_recipes::{Client, PriorityQueue, Queue};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let client = Client::connect_from_env().await?;
    let run = std::process::id();
    let jobs = Queue::new(&client, format!("example-queue-{run}"));
    let mut consumers = Vec::new();
    for _ in 0..2 {
        let jobs = jobs.clone();
        consumers.push(tokio::spawn(async move {
            let mut handled = Vec::new();
            // Stop after a second with nothing to do.
            while let Ok(job) = tokio::time::timeout(Duration::from_secs(1), jobs.pop()).await {
                handled.push(String::from_utf8_lossy(&job?).into_owned());
            }
            Ok::<_, concord_recipes::Error>(handled)
        }));
    }
    for i in 0..20 {
        jobs.push(format!("job-{i:02}")).await?;
    }
    let mut all = Vec::new();
    for c in consumers {
        all.extend(c.await??);
    }
    let unique: BTreeSet<&String> = all.iter().collect();
    if all.len() != 20 || unique.len() != 20 {
        return Err(format!(
            "handled {} jobs, {} distinct; expected 20",
            all.len(),
            unique.len()
        )
        .into());
    }
    println!("20 jobs handled exactly once by 2 consumers");

    let work = PriorityQueue::new(&client, format!("example-priority-{run}"));
    work.push("routine", 5).await?;
    work.push("urgent", 0).await?;
    let first = work.pop().await?;
    let second = work.pop().await?;
    if first != b"urgent" || second != b"routine" {
        return Err("the priority queue served the wrong item first".into());
    }
    println!("ok: urgent work first");
    Ok(())
}
