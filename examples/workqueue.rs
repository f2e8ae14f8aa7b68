//! A reliable work queue: a producer pushes five jobs and one poison pill. A consumer claims the
//! first job and crashes (it never acks); two workers handle the rest, and once the server has
//! expired the crashed claim one of them gets that job again (attempt 2). The poison pill fails
//! every attempt and ends in the dead letters.
//!
//! Run a server first (`cargo run --release --bin concord`, or any etcd ≥ 3.4), then
//! `cargo run --example workqueue`. Endpoints come from `CONCORD_ENDPOINTS` (comma-separated,
//! default `127.0.0.1:2379`). Exits 0 when every job was acked exactly once and the poison pill
//! is a dead letter; deletes its keys either way.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use concord_recipes::{Client, WorkQueue, WorkQueueConfig};
use etcd_client::DeleteOptions;

const JOBS: usize = 5;
const MAX_DELIVERIES: u32 = 3;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let client = Client::connect_from_env().await?;
    let name = format!("example-workqueue-{}", std::process::id());
    let config = WorkQueueConfig {
        visibility_timeout: Duration::from_secs(2),
        max_deliveries: MAX_DELIVERIES,
    };
    let queue = WorkQueue::with_config(&client, &name, config);
    let outcome = tokio::time::timeout(Duration::from_secs(30), run(&queue)).await;
    // Clean up whatever happened.
    let prefix = format!("{name}/");
    let options = DeleteOptions::new().with_prefix();
    client.etcd().delete(prefix, Some(options)).await?;
    let (acked, dead) = outcome.map_err(|_| "timed out")??;
    let mut expected: Vec<String> = (1..=JOBS).map(|i| format!("job-{i}")).collect();
    expected.sort();
    if acked != expected {
        return Err(format!("acked {acked:?}, expected each of {expected:?} once").into());
    }
    if dead != ["poison"] {
        return Err(format!("dead letters {dead:?}, expected [\"poison\"]").into());
    }
    println!(
        "ok: {JOBS} jobs acked exactly once (one after a redelivery), the poison pill is a dead letter"
    );
    Ok(())
}

/// The scenario; returns the acked payloads (sorted) and the dead letters' payloads.
async fn run(queue: &WorkQueue) -> concord_recipes::Result<(Vec<String>, Vec<String>)> {
    for i in 1..=JOBS {
        queue.push(format!("job-{i}")).await?;
    }
    queue.push("poison").await?;
    println!("pushed {JOBS} jobs and a poison pill");

    let crashed = queue.claim().await?;
    println!(
        "crashy consumer: claimed {} (attempt {}) and crashes without acking",
        String::from_utf8_lossy(crashed.payload()),
        crashed.attempt()
    );
    drop(crashed);

    let acked = Arc::new(Mutex::new(Vec::new()));
    // Set once every item is settled: JOBS acks and the poison pill's last nack.
    let (settled, _) = tokio::sync::watch::channel(0usize);
    let mut workers = Vec::new();
    for worker in 1..=2 {
        let (queue, acked, settled) = (queue.clone(), acked.clone(), settled.clone());
        workers.push(tokio::spawn(async move {
            let mut all = settled.subscribe();
            loop {
                let delivery = tokio::select! {
                    delivery = queue.claim() => delivery?,
                    _ = all.wait_for(|n| *n == JOBS + 1) => return Ok::<_, concord_recipes::Error>(()),
                };
                let job = String::from_utf8_lossy(delivery.payload()).into_owned();
                let attempt = delivery.attempt();
                if job == "poison" {
                    queue.nack(&delivery).await?;
                    println!("worker {worker}: {job} failed (attempt {attempt}), nacked");
                    if attempt == MAX_DELIVERIES {
                        settled.send_modify(|n| *n += 1);
                    }
                } else {
                    queue.ack(&delivery).await?;
                    println!("worker {worker}: {job} done (attempt {attempt}), acked");
                    acked.lock().unwrap().push(job);
                    settled.send_modify(|n| *n += 1);
                }
            }
        }));
    }
    for worker in workers {
        worker.await.expect("a worker panicked")?;
    }
    let mut acked = acked.lock().unwrap().clone();
    acked.sort();
    let mut dead = Vec::new();
    for letter in queue.dead_letters().await? {
        println!(
            "dead letter {}: {}",
            letter.id,
            String::from_utf8_lossy(&letter.payload)
        );
        dead.push(String::from_utf8_lossy(&letter.payload).into_owned());
        queue.delete_dead_letter(&letter.id).await?;
    }
    Ok((acked, dead))
}
