//! The WorkQueue recipe against real servers: Concord in-process and Debian's etcd 3.4 (skipped
//! loudly without etcd, a failure under `CONCORD_REQUIRE_ETCD=1`).
//!
//! Stories: four consumers drain the items of two producers — each item is acked exactly once and
//! no key is left behind; a consumer that claims and never acks loses the item to another consumer
//! once the visibility timeout has passed (attempt 2), and its stale ack is refused; a nacked item
//! comes back at once, and after `max_deliveries` it is a dead letter with its payload, not
//! redelivered; an item whose claims keep expiring ends in the dead letters too; a consumer that
//! extends its claim keeps it past the timeout. The stories that wait for a timeout run
//! concurrently (each on its own queue) to keep the file fast.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use concord::recipes::{Client, DeadLetter, Error, WorkQueue, WorkQueueConfig};
use etcd_client::{EventType, GetOptions, WatchOptions};
use tokio::time::Instant;

/// The shortest visibility timeout both servers honour (their minimum lease TTL).
const SHORT: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workqueue_stories_on_concord_and_etcd() {
    let targets = common::Targets::start().await;
    for (name, endpoint) in targets.endpoints() {
        println!("--- {name}");
        let started = Instant::now();
        every_item_is_acked_exactly_once(&endpoint).await;
        nacks_redeliver_at_once_then_dead_letter(&endpoint).await;
        tokio::join!(
            an_unacked_claim_is_redelivered_and_its_stale_ack_refused(&endpoint),
            claims_that_keep_expiring_end_in_the_dead_letters(&endpoint),
            an_extended_claim_outlives_the_timeout(&endpoint),
        );
        println!("{name}: all stories in {:?}", started.elapsed());
    }
    targets.concord.shutdown().await.unwrap();
}

fn config(visibility: Duration, max_deliveries: u32) -> WorkQueueConfig {
    WorkQueueConfig {
        visibility_timeout: visibility,
        max_deliveries,
    }
}

/// Every key left under `<name>/`.
async fn keys_under(client: &Client, name: &str) -> Vec<String> {
    let resp = client
        .etcd()
        .get(
            format!("{name}/"),
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .unwrap();
    resp.kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect()
}

async fn every_item_is_acked_exactly_once(endpoint: &str) {
    const PRODUCERS: usize = 2;
    const PER_PRODUCER: usize = 20;
    const CONSUMERS: usize = 4;
    let started = Instant::now();
    let client = Client::connect([endpoint]).await.unwrap();
    // Long enough that nothing is redelivered: every delivery must be a first one.
    let queue = WorkQueue::with_config(&client, "wq-once", config(Duration::from_secs(20), 3));
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let (done, _) = tokio::sync::watch::channel(false);
    let mut consumers = Vec::new();
    for _ in 0..CONSUMERS {
        let own = Client::connect([endpoint]).await.unwrap();
        let queue = WorkQueue::with_config(&own, "wq-once", config(Duration::from_secs(20), 3));
        let (acked, done) = (acked.clone(), done.clone());
        consumers.push(tokio::spawn(async move {
            let mut finished = done.subscribe();
            loop {
                let delivery = tokio::select! {
                    delivery = queue.claim() => delivery.unwrap(),
                    _ = finished.wait_for(|all| *all) => return,
                };
                assert_eq!(delivery.attempt(), 1, "redelivered within the timeout");
                queue
                    .ack(&delivery)
                    .await
                    .expect("refused: the item was delivered to two consumers at once");
                let mut acked = acked.lock().unwrap();
                acked.push(String::from_utf8(delivery.payload().to_vec()).unwrap());
                if acked.len() >= PRODUCERS * PER_PRODUCER {
                    done.send_replace(true);
                }
            }
        }));
    }
    let mut producers = Vec::new();
    for p in 0..PRODUCERS {
        let queue = queue.clone();
        producers.push(tokio::spawn(async move {
            for i in 0..PER_PRODUCER {
                queue.push(format!("{p}:{i:02}")).await.unwrap();
            }
        }));
    }
    for p in producers {
        p.await.unwrap();
    }
    let drained = async {
        for c in consumers {
            c.await.unwrap();
        }
    };
    if tokio::time::timeout(Duration::from_secs(15), drained)
        .await
        .is_err()
    {
        panic!("items lost: {} acked", acked.lock().unwrap().len());
    }
    let mut acked = acked.lock().unwrap().clone();
    acked.sort();
    let mut pushed: Vec<String> = (0..PRODUCERS)
        .flat_map(|p| (0..PER_PRODUCER).map(move |i| format!("{p}:{i:02}")))
        .collect();
    pushed.sort();
    assert_eq!(acked, pushed, "every item acked exactly once");
    assert!(
        queue.try_claim().await.unwrap().is_none(),
        "empty at the end"
    );
    assert_eq!(keys_under(&client, "wq-once").await, Vec::<String>::new());
    println!(
        "  {} items, {CONSUMERS} consumers: acked once each in {:?}",
        pushed.len(),
        started.elapsed()
    );
}

async fn an_unacked_claim_is_redelivered_and_its_stale_ack_refused(endpoint: &str) {
    let started = Instant::now();
    let client = Client::connect([endpoint]).await.unwrap();
    let slow = WorkQueue::with_config(&client, "wq-timeout", config(SHORT, 3));
    let id = slow.push("transcode video 7").await.unwrap();
    let first = slow
        .try_claim()
        .await
        .unwrap()
        .expect("the item is visible");
    assert_eq!((first.id(), first.attempt()), (id.as_str(), 1));

    let other_client = Client::connect([endpoint]).await.unwrap();
    let other = WorkQueue::with_config(&other_client, "wq-timeout", config(SHORT, 3));
    assert!(
        other.try_claim().await.unwrap().is_none(),
        "invisible while claimed"
    );
    // The first consumer never acks: the other one gets the item once the server expired the claim.
    let second = tokio::time::timeout(Duration::from_secs(10), other.claim())
        .await
        .expect("redelivered after the visibility timeout")
        .unwrap();
    assert!(
        Instant::now() >= first.deadline(),
        "redelivered before the first claim's deadline"
    );
    assert_eq!(second.id(), id);
    assert_eq!(second.payload(), b"transcode video 7");
    assert_eq!(second.attempt(), 2);
    assert!(second.receipt() > first.receipt());

    match slow.ack(&first).await {
        Err(Error::ClaimLost(lost)) => assert_eq!(lost, id),
        other => panic!("the stale ack must be refused, got {other:?}"),
    }
    other.ack(&second).await.unwrap();
    assert_eq!(
        keys_under(&client, "wq-timeout").await,
        Vec::<String>::new()
    );
    println!(
        "  unacked claim redelivered (attempt 2), stale ack refused, in {:?}",
        started.elapsed()
    );
}

async fn nacks_redeliver_at_once_then_dead_letter(endpoint: &str) {
    let started = Instant::now();
    let client = Client::connect([endpoint]).await.unwrap();
    // A long visibility timeout: only the nacks can make the item visible again in time.
    let queue = WorkQueue::with_config(&client, "wq-nack", config(Duration::from_secs(30), 3));
    let id = queue.push("poison").await.unwrap();
    for attempt in 1..=3 {
        let delivery = tokio::time::timeout(Duration::from_secs(5), queue.claim())
            .await
            .expect("visible again at once after a nack")
            .unwrap();
        assert_eq!((delivery.id(), delivery.attempt()), (id.as_str(), attempt));
        assert_eq!(delivery.payload(), b"poison");
        queue.nack(&delivery).await.unwrap();
    }
    assert!(
        queue.try_claim().await.unwrap().is_none(),
        "not redelivered after max_deliveries"
    );
    let dead = vec![DeadLetter {
        id: id.clone(),
        payload: b"poison".to_vec(),
    }];
    assert_eq!(queue.dead_letters().await.unwrap(), dead);
    assert_eq!(
        keys_under(&client, "wq-nack").await,
        [format!("wq-nack/dead/{id}")]
    );
    queue.delete_dead_letter(&id).await.unwrap();
    assert_eq!(queue.dead_letters().await.unwrap(), []);
    println!(
        "  3 nacks: redelivered at once, then a dead letter, in {:?}",
        started.elapsed()
    );
}

async fn claims_that_keep_expiring_end_in_the_dead_letters(endpoint: &str) {
    let started = Instant::now();
    let client = Client::connect([endpoint]).await.unwrap();
    let queue = WorkQueue::with_config(&client, "wq-expire", config(SHORT, 2));
    let id = queue.push("never finishes").await.unwrap();
    let first = queue.try_claim().await.unwrap().expect("visible");
    let second = tokio::time::timeout(Duration::from_secs(10), queue.claim())
        .await
        .expect("redelivered once")
        .unwrap();
    assert_eq!((second.id(), second.attempt()), (id.as_str(), 2));
    drop(first);

    // Nobody acks the second delivery either. A waiting consumer notices its expiry and moves the
    // item to the dead letters; it must not get the item a third time.
    let revision = client
        .etcd()
        .get("wq-expire/", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let mut etcd = client.etcd();
    let mut dead = etcd
        .watch(
            "wq-expire/dead/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision + 1),
            ),
        )
        .await
        .unwrap();
    let waiter = {
        let queue = queue.clone();
        tokio::spawn(async move { queue.claim().await })
    };
    let moved = async {
        while let Some(resp) = dead.message().await.unwrap() {
            if resp
                .events()
                .iter()
                .any(|e| e.event_type() == EventType::Put)
            {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), moved)
        .await
        .expect("dead-lettered after the second expiry");
    assert!(Instant::now() >= second.deadline());
    assert!(!waiter.is_finished(), "delivered a third time");
    waiter.abort();
    let letters = queue.dead_letters().await.unwrap();
    assert_eq!(
        letters,
        [DeadLetter {
            id: id.clone(),
            payload: b"never finishes".to_vec(),
        }]
    );
    queue.delete_dead_letter(&id).await.unwrap();
    assert_eq!(keys_under(&client, "wq-expire").await, Vec::<String>::new());
    println!(
        "  two expired claims: a dead letter, in {:?}",
        started.elapsed()
    );
}

async fn an_extended_claim_outlives_the_timeout(endpoint: &str) {
    let started = Instant::now();
    let client = Client::connect([endpoint]).await.unwrap();
    // Longer than SHORT: the margins must hold on a busy machine, where this story runs beside
    // the other timeout stories.
    let timeout = 2 * SHORT;
    let queue = WorkQueue::with_config(&client, "wq-extend", config(timeout, 3));
    queue.push("long job").await.unwrap();
    let mut delivery = queue.try_claim().await.unwrap().expect("visible");
    let before = delivery.deadline();
    tokio::time::sleep(timeout * 3 / 5).await;
    queue.extend(&mut delivery).await.unwrap();
    assert!(delivery.deadline() > before);
    // Past the original timeout, but within the renewed one.
    tokio::time::sleep(timeout * 3 / 5).await;
    assert!(Instant::now() > before);
    assert!(
        queue.try_claim().await.unwrap().is_none(),
        "still invisible after the extension"
    );
    queue.ack(&delivery).await.unwrap();
    assert_eq!(keys_under(&client, "wq-extend").await, Vec::<String>::new());
    println!(
        "  extended claim kept past the timeout, in {:?}",
        started.elapsed()
    );
}
