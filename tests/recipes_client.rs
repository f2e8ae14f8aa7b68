//! The recipes' Client against real servers (Concord in-process and Debian's etcd 3.4): several
//! endpoints with one of them dead, retries of transient failures, and the watch that resumes by
//! itself (`Client::follow`) across restarts and compaction.

mod common;

use common::put_retrying as put;

use std::time::Duration;

use concord::recipes::{Client, Update};
use futures::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_among_several_is_avoided_on_concord_and_etcd() {
    let targets = common::Targets::start().await;
    for (name, endpoint) in targets.endpoints() {
        println!("--- {name}");
        // A port nothing listens on: connections to it are refused.
        let dead = {
            let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            socket.local_addr().unwrap().to_string()
        };
        let client = tokio::time::timeout(
            Duration::from_secs(10),
            Client::connect([dead.as_str(), endpoint.as_str()]),
        )
        .await
        .expect("connecting does not hang on the dead endpoint")
        .expect("one live endpoint is enough");
        for i in 0..20 {
            let key = format!("failover/{i}");
            let put = client
                .retry(|mut c| {
                    let key = key.clone();
                    async move { c.put(key, "v", None).await }
                })
                .await;
            put.unwrap_or_else(|e| panic!("put {i} failed with one endpoint dead: {e}"));
        }
        let got = client
            .etcd()
            .get(
                "failover/",
                Some(etcd_client::GetOptions::new().with_prefix()),
            )
            .await
            .unwrap();
        assert_eq!(got.kvs().len(), 20);
    }
    targets.concord.shutdown().await.unwrap();
}

/// `Client::follow` across restarts and a compaction: every change after the listing arrives
/// once and in order; a restart shows as Disconnected then Connected; a compaction of what it
/// missed while disconnected shows as one Resync with the current state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_resumes_and_resyncs_on_concord_and_etcd() {
    for mut target in common::Target::start_all().await {
        println!("--- {}", target.name);
        follow_story(&mut target).await;
        target.shutdown().await;
    }
}

/// The next update that is not about the connection, noting those in `log`.
async fn next_data(
    updates: &mut (impl futures::Stream<Item = Update> + Unpin),
    log: &mut Vec<&'static str>,
) -> Update {
    loop {
        let update = tokio::time::timeout(Duration::from_secs(20), updates.next())
            .await
            .expect("an update")
            .expect("the stream never ends");
        match update {
            Update::Connected => log.push("connected"),
            Update::Disconnected { .. } => log.push("disconnected"),
            data => return data,
        }
    }
}

fn values(update: &Update) -> Vec<String> {
    match update {
        Update::Events { events, .. } => events
            .iter()
            .map(|e| String::from_utf8_lossy(e.kv().unwrap().value()).into_owned())
            .collect(),
        Update::Resync { kvs, .. } => kvs
            .iter()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
            .collect(),
        other => panic!("not data: {other:?}"),
    }
}

async fn follow_story(target: &mut common::Target) {
    let client = Client::connect([target.endpoint()]).await.unwrap();
    put(&client, "follow/a", "a1").await;
    let (kvs, at, updates) = client.list_and_follow("follow/", true).await.unwrap();
    assert_eq!(kvs.len(), 1);
    let mut updates = std::pin::pin!(updates);
    let mut log = Vec::new();

    let written = put(&client, "follow/a", "a2").await;
    let update = next_data(&mut updates, &mut log).await;
    assert!(
        matches!(update, Update::Events { revision, .. } if revision == written && written > at)
    );
    assert_eq!(values(&update), ["a2"]);

    // A restart: the watch breaks, reopens from where it was, and misses nothing.
    target.restart().await;
    put(&client, "follow/b", "b1").await;
    let update = next_data(&mut updates, &mut log).await;
    assert_eq!(values(&update), ["b1"]);
    assert!(
        log.ends_with(&["disconnected", "connected"]),
        "the break is reported: {log:?}"
    );

    // Written and compacted while it could not see: one Resync with the state, then on.
    let latest = target
        .restart_with(async |elsewhere| {
            let other = Client::connect([elsewhere]).await.unwrap();
            put(&other, "follow/a", "a3").await;
            let latest = put(&other, "follow/c", "c1").await;
            other.etcd().compact(latest, None).await.unwrap();
            latest
        })
        .await;
    let update = next_data(&mut updates, &mut log).await;
    match &update {
        Update::Resync { revision, .. } => assert!(*revision >= latest),
        other => panic!("expected a Resync after the compaction, got {other:?}"),
    }
    assert_eq!(values(&update), ["a3", "b1", "c1"]);
    let written = put(&client, "follow/c", "c2").await;
    let update = next_data(&mut updates, &mut log).await;
    assert!(matches!(update, Update::Events { revision, .. } if revision == written));
}
