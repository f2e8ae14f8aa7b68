//! The RwLock and Semaphore recipes against real servers: Concord in-process and Debian's etcd 3.4
//! (skipped loudly without etcd, a failure under `CONCORD_REQUIRE_ETCD=1`), each story on both.
//!
//! Stories: readers share and a writer waits for them (and is alone); under contention a writer
//! never overlaps anyone; a semaphore of 2 never admits a third holder, yet admits two at once.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use concord::recipes::{Client, RwLock, Semaphore, Session};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_stories_on_concord_and_etcd() {
    let targets = common::Targets::start().await;
    for (name, endpoint) in targets.endpoints() {
        println!("--- {name}");
        readers_share_and_a_writer_waits_for_them(&endpoint).await;
        writers_are_alone_under_contention(&endpoint).await;
        a_semaphore_of_two_admits_two_and_never_three(&endpoint).await;
    }
    targets.concord.shutdown().await.unwrap();
}

async fn readers_share_and_a_writer_waits_for_them(endpoint: &str) {
    let client = Client::connect([endpoint]).await.unwrap();
    let (r1, r2, w) = (
        Session::new(&client, 10).await.unwrap(),
        Session::new(&client, 10).await.unwrap(),
        Session::new(&client, 10).await.unwrap(),
    );
    let lock = RwLock::new(&client, "rw-basic");
    let first = lock.read(&r1).await.unwrap();
    let second = tokio::time::timeout(Duration::from_secs(5), lock.read(&r2))
        .await
        .expect("a second reader does not wait for the first")
        .unwrap();
    let writer = {
        let lock = lock.clone();
        tokio::spawn(async move {
            let g = lock.write(&w).await.unwrap();
            (g, w)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!writer.is_finished(), "the writer waits for both readers");
    first.unlock().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!writer.is_finished(), "and for the second one too");
    second.unlock().await.unwrap();
    let (guard, w) = tokio::time::timeout(Duration::from_secs(5), writer)
        .await
        .expect("the writer gets it once the readers are gone")
        .unwrap();
    // A reader that comes after a queued or holding writer waits for it.
    let late = tokio::time::timeout(Duration::from_millis(300), lock.read(&r1)).await;
    assert!(late.is_err(), "a reader waits while a writer holds");
    guard.unlock().await.unwrap();
    for s in [r1, r2, w] {
        s.close().await.unwrap();
    }
}

async fn writers_are_alone_under_contention(endpoint: &str) {
    let readers = Arc::new(AtomicUsize::new(0));
    let writers = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..5 {
        let (endpoint, readers, writers) = (endpoint.to_string(), readers.clone(), writers.clone());
        tasks.push(tokio::spawn(async move {
            let client = Client::connect([endpoint]).await.unwrap();
            let session = Session::new(&client, 10).await.unwrap();
            let lock = RwLock::new(&client, "rw-contended");
            for _ in 0..4 {
                if i % 2 == 0 {
                    let g = lock.write(&session).await.unwrap();
                    assert_eq!(writers.fetch_add(1, Ordering::SeqCst), 0, "one writer");
                    assert_eq!(readers.load(Ordering::SeqCst), 0, "no reader with a writer");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    writers.fetch_sub(1, Ordering::SeqCst);
                    g.unlock().await.unwrap();
                } else {
                    let g = lock.read(&session).await.unwrap();
                    readers.fetch_add(1, Ordering::SeqCst);
                    assert_eq!(writers.load(Ordering::SeqCst), 0, "no writer with a reader");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    readers.fetch_sub(1, Ordering::SeqCst);
                    g.unlock().await.unwrap();
                }
            }
            session.close().await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

async fn a_semaphore_of_two_admits_two_and_never_three(endpoint: &str) {
    let inside = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let (endpoint, inside, most) = (endpoint.to_string(), inside.clone(), most.clone());
        tasks.push(tokio::spawn(async move {
            let client = Client::connect([endpoint]).await.unwrap();
            let session = Session::new(&client, 10).await.unwrap();
            let semaphore = Semaphore::new(&client, "sem-two", 2);
            for _ in 0..3 {
                let permit = semaphore.acquire(&session).await.unwrap();
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                assert!(now <= 2, "{now} holders of a semaphore of 2");
                tokio::time::sleep(Duration::from_millis(50)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                permit.unlock().await.unwrap();
            }
            session.close().await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        most.load(Ordering::SeqCst),
        2,
        "two permits were used at once"
    );
}
