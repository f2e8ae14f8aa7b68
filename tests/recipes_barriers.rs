//! The Barrier and DoubleBarrier recipes against real servers: Concord in-process and Debian's
//! etcd 3.4 (skipped loudly without etcd, a failure under `CONCORD_REQUIRE_ETCD=1`).
//!
//! Stories: a held barrier keeps every waiter until it is released, then releases them all; a
//! double barrier of three lets nobody in before all three entered, and nobody out before all
//! three left.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use concord::recipes::{Barrier, Client, DoubleBarrier, Session};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barrier_stories_on_concord_and_etcd() {
    let targets = common::Targets::start().await;
    for (name, endpoint) in targets.endpoints() {
        println!("--- {name}");
        a_barrier_releases_every_waiter(&endpoint).await;
        a_double_barrier_lets_three_in_and_out_together(&endpoint).await;
    }
    targets.concord.shutdown().await.unwrap();
}

async fn a_barrier_releases_every_waiter(endpoint: &str) {
    let client = Client::connect([endpoint]).await.unwrap();
    let gate = Barrier::new(&client, "gate");
    gate.wait()
        .await
        .expect("a barrier never held does not block");
    gate.hold().await.unwrap();
    let passed = Arc::new(AtomicUsize::new(0));
    let mut waiters = Vec::new();
    for _ in 0..5 {
        let (gate, passed) = (gate.clone(), passed.clone());
        waiters.push(tokio::spawn(async move {
            gate.wait().await.unwrap();
            passed.fetch_add(1, Ordering::SeqCst);
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(passed.load(Ordering::SeqCst), 0, "held: nobody passes");
    gate.release().await.unwrap();
    for w in waiters {
        tokio::time::timeout(Duration::from_secs(5), w)
            .await
            .expect("released: everybody passes")
            .unwrap();
    }
    assert_eq!(passed.load(Ordering::SeqCst), 5);
}

async fn a_double_barrier_lets_three_in_and_out_together(endpoint: &str) {
    let entered = Arc::new(AtomicUsize::new(0));
    let left = Arc::new(AtomicUsize::new(0));
    let mut participants = Vec::new();
    for i in 0..3u64 {
        let (endpoint, entered, left) = (endpoint.to_string(), entered.clone(), left.clone());
        participants.push(tokio::spawn(async move {
            let client = Client::connect([endpoint]).await.unwrap();
            let session = Session::new(&client, 10).await.unwrap();
            let barrier = DoubleBarrier::new(&client, "double", 3);
            // Stagger the arrivals: the first ones must wait for the last.
            tokio::time::sleep(Duration::from_millis(150 * i)).await;
            entered.fetch_add(1, Ordering::SeqCst);
            barrier.enter(&session).await.unwrap();
            assert_eq!(
                entered.load(Ordering::SeqCst),
                3,
                "in only when all three entered"
            );
            tokio::time::sleep(Duration::from_millis(150 * (2 - i))).await;
            left.fetch_add(1, Ordering::SeqCst);
            barrier.leave(&session).await.unwrap();
            assert_eq!(
                left.load(Ordering::SeqCst),
                3,
                "out only when all three left"
            );
            session.close().await.unwrap();
        }));
    }
    for p in participants {
        tokio::time::timeout(Duration::from_secs(10), p)
            .await
            .expect("the barrier opens")
            .unwrap();
    }
}
