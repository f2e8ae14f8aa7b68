//! The Queue and PriorityQueue recipes against real servers: Concord in-process and Debian's
//! etcd 3.4 (skipped loudly without etcd, a failure under `CONCORD_REQUIRE_ETCD=1`).
//!
//! Stories: three producers and three consumers share a queue — every item is popped exactly
//! once, each consumer sees each producer's items in push order, and a consumer blocked on an
//! empty queue wakes when an item arrives; a priority queue serves the lowest number first.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use concord::recipes::{Client, PriorityQueue, Queue};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_stories_on_concord_and_etcd() {
    let targets = common::Targets::start().await;
    for (name, endpoint) in targets.endpoints() {
        println!("--- {name}");
        every_item_is_popped_once_in_order(&endpoint).await;
        a_priority_queue_serves_the_lowest_number_first(&endpoint).await;
    }
    targets.concord.shutdown().await.unwrap();
}

async fn every_item_is_popped_once_in_order(endpoint: &str) {
    const PRODUCERS: usize = 3;
    const ITEMS: usize = 20;
    let client = Client::connect([endpoint]).await.unwrap();
    let queue = Queue::new(&client, "fifo");
    // A consumer blocked on the empty queue wakes for the first item.
    let early = {
        let queue = queue.clone();
        tokio::spawn(async move { queue.pop().await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!early.is_finished(), "nothing to pop yet");
    queue.push("first").await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), early)
        .await
        .expect("woken by the push")
        .unwrap();
    assert_eq!(first, b"first");

    let popped = Arc::new(Mutex::new(Vec::<(usize, String)>::new()));
    let mut producers = Vec::new();
    for p in 0..PRODUCERS {
        let queue = queue.clone();
        producers.push(tokio::spawn(async move {
            for i in 0..ITEMS {
                queue.push(format!("{p}:{i:02}")).await.unwrap();
            }
        }));
    }
    let mut consumers = Vec::new();
    for c in 0..3 {
        let (queue, popped) = (queue.clone(), popped.clone());
        consumers.push(tokio::spawn(async move {
            loop {
                let item = tokio::time::timeout(Duration::from_secs(2), queue.pop()).await;
                let Ok(item) = item else { return }; // drained
                let item = String::from_utf8(item.unwrap()).unwrap();
                popped.lock().unwrap().push((c, item));
            }
        }));
    }
    for p in producers {
        p.await.unwrap();
    }
    for c in consumers {
        c.await.unwrap();
    }
    let popped = popped.lock().unwrap().clone();
    let unique: HashSet<&String> = popped.iter().map(|(_, item)| item).collect();
    assert_eq!(
        popped.len(),
        PRODUCERS * ITEMS,
        "nothing lost or popped twice"
    );
    assert_eq!(unique.len(), PRODUCERS * ITEMS);
    for c in 0..3 {
        for p in 0..PRODUCERS {
            let seen: Vec<&String> = popped
                .iter()
                .filter(|(consumer, item)| *consumer == c && item.starts_with(&format!("{p}:")))
                .map(|(_, item)| item)
                .collect();
            assert!(
                seen.windows(2).all(|w| w[0] < w[1]),
                "consumer {c} saw producer {p} out of order: {seen:?}"
            );
        }
    }
    assert_eq!(queue.try_pop().await.unwrap(), None, "empty at the end");
}

async fn a_priority_queue_serves_the_lowest_number_first(endpoint: &str) {
    let client = Client::connect([endpoint]).await.unwrap();
    let queue = PriorityQueue::new(&client, "prio");
    for (value, priority) in [("low", 9), ("urgent", 0), ("normal", 5), ("urgent-2", 0)] {
        queue.push(value, priority).await.unwrap();
    }
    let mut order = Vec::new();
    for _ in 0..4 {
        order.push(String::from_utf8(queue.pop().await.unwrap()).unwrap());
    }
    assert_eq!(order, ["urgent", "urgent-2", "normal", "low"]);
}
