//! The typed Config recipe against real servers: Concord in-process and Debian's etcd 3.4
//! (skipped loudly without etcd, a failure under `CONCORD_REQUIRE_ETCD=1`).
//!
//! Stories, on each server: a typed value loads and hot-reloads; bad values (invalid, not JSON,
//! the key deleted) are rejected with the reason visible while the last good value stays, then a
//! good one is applied; a prefix makes one value of its keys; the subscription survives a server
//! restart (a write after the restart and one made while it was disconnected both arrive), and a
//! compaction past its revision while it was disconnected (it reads the source again and gets
//! the latest value).
//!
//! The config type is a map of named limits (`BTreeMap<String, u64>`), which needs no derive;
//! a `#[derive(Deserialize)]` struct behaves the same.

mod common;

use common::put_retrying as put;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use concord::recipes::{Client, Config, ConfigStatus, Error, Source, Versioned};
use etcd_client::{CompactionOptions, Txn, TxnOp};
use futures::StreamExt;
use tokio::sync::watch;

/// The config of every story: limits by name.
type Limits = BTreeMap<String, u64>;

/// How long a story waits for the subscription to catch up (a reconnect backs off up to 2 s).
const PATIENCE: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_stories_on_concord_and_etcd() {
    for mut target in common::Target::start_all().await {
        let endpoint = target.endpoint();
        println!("--- {}", target.name);
        let started = Instant::now();
        typed_load_and_hot_reload(&endpoint).await;
        println!("typed load and hot reload: {:.1?}", started.elapsed());
        let started = Instant::now();
        bad_values_are_rejected_and_the_last_good_one_kept(&endpoint).await;
        println!("bad values rejected: {:.1?}", started.elapsed());
        let started = Instant::now();
        a_prefix_makes_one_value(&endpoint).await;
        println!("prefix source: {:.1?}", started.elapsed());
        let started = Instant::now();
        the_subscription_survives_restarts_and_compaction(&mut target).await;
        println!("restarts and compaction: {:.1?}", started.elapsed());
        target.shutdown().await;
    }
}

/// The limits `workers` must be present and every limit positive.
fn check_limits(limits: &Limits) -> Result<(), String> {
    if !limits.contains_key("workers") {
        return Err("workers is missing".into());
    }
    match limits.iter().find(|(_, n)| **n == 0) {
        Some((name, _)) => Err(format!("{name} must be at least 1")),
        None => Ok(()),
    }
}

async fn load(client: &Client, source: Source) -> Config<Limits> {
    Config::builder(client, source)
        .validate(check_limits)
        .load()
        .await
        .unwrap()
}

async fn delete(client: &Client, key: &str) -> i64 {
    let resp = client.etcd().delete(key, None).await.unwrap();
    resp.header().unwrap().revision()
}

/// Waits until the receiver's value satisfies `done`.
async fn until<T: Clone>(
    rx: &mut watch::Receiver<T>,
    what: &str,
    done: impl FnMut(&T) -> bool,
) -> T {
    match tokio::time::timeout(PATIENCE, rx.wait_for(done)).await {
        Ok(Ok(value)) => value.clone(),
        Ok(Err(_)) => panic!("the config task ended while waiting for {what}"),
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

async fn until_status(
    config: &Config<Limits>,
    what: &str,
    done: impl FnMut(&ConfigStatus) -> bool,
) -> ConfigStatus {
    until(&mut config.watch_status(), what, done).await
}

async fn until_value(
    config: &Config<Limits>,
    what: &str,
    done: impl Fn(&Limits) -> bool,
) -> Versioned<Limits> {
    until(&mut config.subscribe(), what, |v| done(&v.value)).await
}

async fn typed_load_and_hot_reload(endpoint: &str) {
    let client = Client::connect([endpoint]).await.unwrap();
    let key = "cfg/hot/limits";
    let first = put(&client, key, r#"{"workers": 4, "queue": 100}"#).await;
    let config = load(&client, Source::key(key)).await;
    assert_eq!(config.current()["workers"], 4);
    assert!(config.revision() >= first);
    let mut updates = Box::pin(config.updates());

    // A change is applied with the revision that wrote it.
    let second = put(&client, key, r#"{"workers": 8, "queue": 100}"#).await;
    let update = tokio::time::timeout(PATIENCE, updates.next())
        .await
        .expect("a hot reload")
        .expect("the stream goes on");
    assert_eq!((update.value["workers"], update.revision), (8, second));
    assert_eq!(config.revision(), second);

    // The same bytes again change nothing: no reload.
    let unchanged = config.subscribe();
    let third = put(&client, key, r#"{"workers": 8, "queue": 100}"#).await;
    let status = until_status(&config, "the rewrite to be seen", |s| {
        s.seen_revision >= third
    })
    .await;
    assert_eq!(
        (status.applied, status.rejected, status.revision),
        (2, 0, second)
    );
    assert!(!unchanged.has_changed().unwrap());

    // No valid value at the first load: an error that says why, or the fallback.
    let missing = Config::<Limits>::load(&client, Source::key("cfg/hot/missing")).await;
    match missing {
        Err(Error::Invalid(why)) => assert!(why.contains("does not exist"), "{why}"),
        Err(e) => panic!("expected Invalid, got {e}"),
        Ok(_) => panic!("expected an error for a missing key"),
    }
    let fallback = Limits::from([("workers".to_string(), 1)]);
    let config = Config::builder(&client, Source::key("cfg/hot/missing"))
        .validate(check_limits)
        .fallback(fallback.clone())
        .load()
        .await
        .unwrap();
    assert_eq!(
        (config.current().as_ref(), config.revision()),
        (&fallback, 0)
    );
    let status = config.status();
    assert_eq!((status.applied, status.rejected), (0, 1));
    assert!(status.latest_rejected);
    let written = put(&client, "cfg/hot/missing", r#"{"workers": 2}"#).await;
    let applied = until_value(&config, "a value to replace the fallback", |l| {
        l["workers"] == 2
    })
    .await;
    assert_eq!(applied.revision, written);
    assert!(!config.status().latest_rejected);
}

async fn bad_values_are_rejected_and_the_last_good_one_kept(endpoint: &str) {
    let client = Client::connect([endpoint]).await.unwrap();
    let key = "cfg/bad/limits";
    let good = put(&client, key, r#"{"workers": 4}"#).await;
    let config = load(&client, Source::key(key)).await;
    let mut updates = Box::pin(config.updates());

    // Each bad value is rejected, with its reason and revision; the good one stays current.
    let bad: [(&str, &str); 3] = [
        (
            r#"{"workers": 0}"#,
            "validation failed: workers must be at least 1",
        ),
        ("workers=8", "expected value"),
        (r#"{"workers": -3}"#, "invalid value"),
    ];
    for (n, (value, reason)) in bad.into_iter().enumerate() {
        let revision = put(&client, key, value).await;
        let status = until_status(&config, "a rejection", |s| s.rejected > n as u64).await;
        let rejection = status.last_rejection.clone().unwrap();
        assert_eq!(rejection.revision, revision);
        assert!(rejection.reason.contains(reason), "{rejection:?}");
        assert!(status.latest_rejected);
        assert_eq!((config.current()["workers"], config.revision()), (4, good));
    }
    // Deleting the key is a rejection too.
    let deleted = delete(&client, key).await;
    let status = until_status(&config, "the deletion", |s| s.rejected == 4).await;
    let rejection = status.last_rejection.unwrap();
    assert_eq!(rejection.revision, deleted);
    assert!(rejection.reason.contains("does not exist"), "{rejection:?}");
    assert_eq!(config.current()["workers"], 4);

    // A good value is applied, and it is the first update the stream sees.
    let fixed = put(&client, key, r#"{"workers": 6}"#).await;
    let update = tokio::time::timeout(PATIENCE, updates.next())
        .await
        .expect("the good value")
        .unwrap();
    assert_eq!((update.value["workers"], update.revision), (6, fixed));
    let status = config.status();
    assert_eq!((status.applied, status.rejected), (2, 4));
    assert!(!status.latest_rejected);
}

async fn a_prefix_makes_one_value(endpoint: &str) {
    let client = Client::connect([endpoint]).await.unwrap();
    let prefix = "cfg/prefix/";
    client
        .etcd()
        .txn(Txn::new().and_then([
            TxnOp::put("cfg/prefix/workers", "4", None),
            TxnOp::put("cfg/prefix/queue", "100", None),
        ]))
        .await
        .unwrap();
    let config = load(&client, Source::prefix(prefix)).await;
    let expected = Limits::from([("queue".into(), 100), ("workers".into(), 4)]);
    assert_eq!(*config.current(), expected);

    put(&client, "cfg/prefix/queue", "200").await;
    until_value(&config, "queue 200", |l| l.get("queue") == Some(&200)).await;

    // A value that is not JSON spoils the whole content; removing it restores what is applied.
    let spoiled = put(&client, "cfg/prefix/name", "api").await;
    let status = until_status(&config, "a rejection", |s| s.rejected == 1).await;
    let rejection = status.last_rejection.unwrap();
    assert_eq!(rejection.revision, spoiled);
    assert!(rejection.reason.contains("not JSON"), "{rejection:?}");
    let cleaned = delete(&client, "cfg/prefix/name").await;
    let status = until_status(&config, "the cleanup", |s| s.seen_revision >= cleaned).await;
    assert!(!status.latest_rejected);
    assert_eq!(status.applied, 2);

    // Deleting a key removes its field.
    let removed = delete(&client, "cfg/prefix/queue").await;
    let applied = until_value(&config, "queue gone", |l| !l.contains_key("queue")).await;
    assert_eq!(applied.revision, removed);
    assert_eq!(*applied.value, Limits::from([("workers".into(), 4)]));
}

async fn the_subscription_survives_restarts_and_compaction(target: &mut common::Target) {
    let client = Client::connect([target.endpoint()]).await.unwrap();
    let key = "cfg/restart/limits";
    put(&client, key, r#"{"workers": 1}"#).await;
    let config = load(&client, Source::key(key)).await;

    // A write after a restart arrives on the reopened watch.
    target.restart().await;
    let written = put(&client, key, r#"{"workers": 2}"#).await;
    let applied = until_value(&config, "workers 2 after the restart", |l| {
        l["workers"] == 2
    })
    .await;
    assert_eq!(applied.revision, written);
    let status = config.status();
    assert!(status.reconnects >= 1, "{status:?}");
    assert_eq!(status.reloads, 0);

    // A write made while it was disconnected arrives too, from the watch's history.
    let written = target
        .restart_with(async |elsewhere| {
            let client = Client::connect([elsewhere]).await.unwrap();
            put(&client, key, r#"{"workers": 3}"#).await
        })
        .await;
    let applied = until_value(&config, "workers 3 written offline", |l| l["workers"] == 3).await;
    assert_eq!(applied.revision, written);
    assert_eq!(config.status().reloads, 0);

    // Writes and a compaction past its revision while it was disconnected: it reads the key
    // again and applies the latest value (the intermediate one is gone with the history).
    let latest = target
        .restart_with(async |elsewhere| {
            let client = Client::connect([elsewhere]).await.unwrap();
            put(&client, key, r#"{"workers": 4}"#).await;
            let latest = put(&client, key, r#"{"workers": 5}"#).await;
            let physical = CompactionOptions::new().with_physical();
            client.etcd().compact(latest, Some(physical)).await.unwrap();
            latest
        })
        .await;
    let applied = until_value(&config, "workers 5 after the compaction", |l| {
        l["workers"] == 5
    })
    .await;
    assert!(applied.revision >= latest);
    let status = config.status();
    assert_eq!(status.reloads, 1, "{status:?}");
    assert_eq!(status.applied, 4, "workers 4 was never applied: {status:?}");

    // And it keeps following after the re-read.
    let written = put(&client, key, r#"{"workers": 6}"#).await;
    let applied = until_value(&config, "workers 6", |l| l["workers"] == 6).await;
    assert_eq!(applied.revision, written);
}
