//! The Watch service through a real client: the `etcd-client` crate against an in-process server.
//!
//! Each test starts its own member on 127.0.0.1:0 and tells one story: replay from history,
//! atomic transactions, filters and ranges, compaction, bad requests on a live stream, a reader
//! too slow for the writers, progress notifications, fragments, and streams that go away.

use std::time::Duration;

use concord::store::{Server, ServerConfig};
use etcd_client::{
    Client, EventType, PutOptions, Txn, TxnOp, WatchFilterType, WatchOptions, WatchResponse,
    WatchStream,
};

async fn start(config: ServerConfig) -> (Server, Client) {
    let server = Server::start(config).await.expect("server starts");
    let client = Client::connect([server.client_addr().to_string()], None)
        .await
        .expect("client connects");
    (server, client)
}

/// The next response, or a failure after 10 s.
async fn next(stream: &mut WatchStream) -> WatchResponse {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a response within 10 s")
        .expect("the stream is healthy")
        .expect("the stream is open")
}

/// Whether a response arrives within `wait`.
async fn silent_for(stream: &mut WatchStream, wait: Duration) -> bool {
    tokio::time::timeout(wait, stream.message()).await.is_err()
}

/// `(type, key, value, mod_revision)` of each event.
fn events(resp: &WatchResponse) -> Vec<(EventType, String, String, i64)> {
    resp.events()
        .iter()
        .map(|e| {
            let kv = e.kv().unwrap();
            (
                e.event_type(),
                kv.key_str().unwrap().to_string(),
                kv.value_str().unwrap().to_string(),
                kv.mod_revision(),
            )
        })
        .collect()
}

fn revision(resp: &WatchResponse) -> i64 {
    resp.header().unwrap().revision()
}

#[tokio::test]
async fn a_watcher_replays_history_then_follows_live_changes_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut c) = start(ServerConfig::for_test(dir.path())).await;
    c.put("app/a", "1", None).await.unwrap(); // 2
    c.put("app/b", "2", None).await.unwrap(); // 3
    c.delete("app/a", None).await.unwrap(); // 4
    c.put("other", "x", None).await.unwrap(); // 5

    let opts = WatchOptions::new()
        .with_prefix()
        .with_start_revision(2)
        .with_prev_key();
    let mut w = c.watch("app/", Some(opts)).await.unwrap();
    let created = next(&mut w).await;
    assert!(created.created() && !created.canceled());
    assert_eq!(created.watch_id(), 0, "etcd numbers watchers from 0");
    assert_eq!(revision(&created), 5);

    let replay = next(&mut w).await;
    use EventType::{Delete, Put};
    assert_eq!(
        events(&replay),
        vec![
            (Put, "app/a".into(), "1".into(), 2),
            (Put, "app/b".into(), "2".into(), 3),
            (Delete, "app/a".into(), "".into(), 4),
        ],
        "history from revision 2, only the prefix"
    );
    let deleted = &replay.events()[2];
    assert_eq!(deleted.prev_kv().unwrap().value_str().unwrap(), "1");

    // A transaction's changes share a revision and arrive in one response.
    let txn = Txn::new().and_then([
        TxnOp::put("app/x", "1", None),
        TxnOp::put("app/y", "2", None),
        TxnOp::put("elsewhere", "3", None),
    ]);
    c.txn(txn).await.unwrap(); // 6
    let live = next(&mut w).await;
    assert_eq!(
        events(&live),
        vec![
            (Put, "app/x".into(), "1".into(), 6),
            (Put, "app/y".into(), "2".into(), 6),
        ]
    );
    assert_eq!(revision(&live), 6);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn ranges_filters_and_future_start_revisions_select_events() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut c) = start(ServerConfig::for_test(dir.path())).await;
    // [b, d), deletes only.
    let range = WatchOptions::new()
        .with_range("d")
        .with_filters([WatchFilterType::NoPut]);
    let mut w = c.watch("b", Some(range)).await.unwrap();
    assert!(next(&mut w).await.created());
    // Every key from "m" on, starting at a revision that does not exist yet.
    let mut later = c
        .watch(
            "m",
            Some(WatchOptions::new().with_from_key().with_start_revision(6)),
        )
        .await
        .unwrap();
    assert!(next(&mut later).await.created());

    for key in ["a", "b", "c", "d", "m"] {
        c.put(key, "v", None).await.unwrap(); // 2..=6
    }
    c.delete("a", Some(etcd_client::DeleteOptions::new().with_range("z")))
        .await
        .unwrap(); // 7
    let deletes = next(&mut w).await;
    let keys: Vec<String> = events(&deletes).into_iter().map(|e| e.1).collect();
    assert_eq!(keys, vec!["b", "c"], "deletes in [b, d) only, no puts");
    assert!(
        deletes
            .events()
            .iter()
            .all(|e| e.event_type() == EventType::Delete)
    );

    let m = next(&mut later).await;
    assert_eq!(
        events(&m),
        vec![(EventType::Put, "m".into(), "v".into(), 6)],
        "nothing before revision 6"
    );
    let m = next(&mut later).await;
    assert_eq!(events(&m)[0].0, EventType::Delete);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_start_revision_below_the_compact_revision_is_canceled_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut c) = start(ServerConfig::for_test(dir.path())).await;
    for i in 0..5 {
        c.put("k", format!("{i}"), None).await.unwrap(); // 2..=6
    }
    c.compact(5, None).await.unwrap();
    let mut w = c
        .watch("k", Some(WatchOptions::new().with_start_revision(3)))
        .await
        .unwrap();
    assert!(next(&mut w).await.created());
    let canceled = next(&mut w).await;
    assert!(canceled.canceled());
    assert_eq!(canceled.compact_revision(), 5);
    assert!(canceled.events().is_empty());

    // From the compact revision on, history is still there.
    let mut w = c
        .watch("k", Some(WatchOptions::new().with_start_revision(5)))
        .await
        .unwrap();
    assert!(next(&mut w).await.created());
    let replay = next(&mut w).await;
    let revs: Vec<i64> = events(&replay).into_iter().map(|e| e.3).collect();
    assert_eq!(revs, vec![5, 6]);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_requests_get_etcds_answers_and_the_stream_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut c) = start(ServerConfig::for_test(dir.path())).await;
    let mut w = c
        .watch("a", Some(WatchOptions::new().with_watch_id(7)))
        .await
        .unwrap();
    let created = next(&mut w).await;
    assert_eq!((created.created(), created.watch_id()), (true, 7));

    w.watch("b", Some(WatchOptions::new().with_watch_id(7)))
        .await
        .unwrap();
    let dup = next(&mut w).await;
    assert_eq!(
        (dup.created(), dup.canceled(), dup.watch_id()),
        (true, true, -1)
    );
    assert_eq!(
        dup.cancel_reason(),
        "mvcc: duplicate watch ID provided on the WatchStream"
    );

    w.watch("z", Some(WatchOptions::new().with_range("a")))
        .await
        .unwrap();
    let empty = next(&mut w).await;
    assert_eq!((empty.canceled(), empty.watch_id()), (true, -1));
    assert_eq!(empty.cancel_reason(), "mvcc: watcher range is empty");

    // etcd answers the cancel of an unknown watcher with nothing at all.
    w.cancel(99).await.unwrap();
    assert!(silent_for(&mut w, Duration::from_millis(300)).await);

    // A progress request is answered with watch id -1 and the current revision.
    c.put("x", "1", None).await.unwrap(); // 2
    w.request_progress().await.unwrap();
    let progress = next(&mut w).await;
    assert_eq!(
        (progress.watch_id(), revision(&progress)),
        (-1, 2),
        "progress"
    );
    assert!(progress.events().is_empty());

    // The first watcher still works, and a real cancel ends it.
    c.put("a", "1", None).await.unwrap(); // 3
    assert_eq!(events(&next(&mut w).await)[0].3, 3);
    w.cancel(7).await.unwrap();
    let canceled = next(&mut w).await;
    assert_eq!((canceled.canceled(), canceled.watch_id()), (true, 7));
    c.put("a", "2", None).await.unwrap();
    assert!(silent_for(&mut w, Duration::from_millis(300)).await);
    server.shutdown().await.unwrap();
}

/// The writers never wait for a reader: a watcher whose client stops reading falls behind (its
/// stream's buffer and HTTP/2 window fill up), catches up from history when it reads again, and
/// sees every revision once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_falls_behind_and_catches_up_without_losing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut reader) = start(ServerConfig::for_test(dir.path())).await;
    let mut writer = Client::connect([server.client_addr().to_string()], None)
        .await
        .unwrap();
    let mut w = reader
        .watch("load/", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    assert!(next(&mut w).await.created());

    let value = "v".repeat(2048);
    let writes = 3000;
    let mut saw_unsynced = false;
    for i in 0..writes {
        writer
            .put(format!("load/{}", i % 50), value.clone(), None)
            .await
            .unwrap();
        saw_unsynced |= server.watchers().1 > 0;
    }
    assert!(
        saw_unsynced,
        "6 MB of unread events must push the watcher out of the synced group"
    );

    let mut expected = 2;
    while expected < 2 + writes {
        let resp = next(&mut w).await;
        for (_, _, _, rev) in events(&resp) {
            assert_eq!(rev, expected, "every revision once, in order");
            expected += 1;
        }
    }
    assert_eq!(server.watchers(), (1, 0), "synced again");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn idle_watchers_that_ask_get_progress_notifications() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        watch_progress_notify_interval: Duration::from_millis(300),
        ..ServerConfig::for_test(dir.path())
    };
    let (server, mut c) = start(config).await;
    c.put("k", "v", None).await.unwrap(); // 2
    let mut w = c
        .watch("k", Some(WatchOptions::new().with_progress_notify()))
        .await
        .unwrap();
    assert!(next(&mut w).await.created());
    let notify = next(&mut w).await;
    assert_eq!((notify.watch_id(), revision(&notify)), (0, 2));
    assert!(notify.events().is_empty() && !notify.canceled());
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_revision_larger_than_the_request_limit_comes_in_fragments_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        max_request_bytes: 64 * 1024,
        ..ServerConfig::for_test(dir.path())
    };
    let (server, mut c) = start(config).await;
    // Six 10 KiB values, then one transaction replacing them all: 60 KiB fits in a request, but
    // its events with their previous values (120 KiB) do not fit in one response.
    let value = "x".repeat(10 * 1024);
    for i in 0..6 {
        c.put(format!("big/{i}"), value.clone(), None)
            .await
            .unwrap();
    }
    let with_prev = WatchOptions::new().with_prefix().with_prev_key();
    let mut whole = c.watch("big/", Some(with_prev.clone())).await.unwrap();
    assert!(next(&mut whole).await.created());
    let mut pieces = c
        .watch("big/", Some(with_prev.with_fragment()))
        .await
        .unwrap();
    assert!(next(&mut pieces).await.created());

    let ops: Vec<TxnOp> = (0..6)
        .map(|i| TxnOp::put(format!("big/{i}"), value.clone(), None))
        .collect();
    c.txn(Txn::new().and_then(ops)).await.unwrap();

    assert_eq!(
        next(&mut whole).await.events().len(),
        6,
        "without fragment: one response"
    );
    // etcd-client hands each fragment over as it is (it does not reassemble them).
    let mut got = 0;
    let mut responses = 0;
    while got < 6 {
        got += next(&mut pieces).await.events().len();
        responses += 1;
    }
    assert_eq!(got, 6);
    assert!(responses > 1, "split under 64 KiB: {responses} responses");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_server_forgets_the_watchers_of_a_stream_the_client_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut c) = start(ServerConfig::for_test(dir.path())).await;
    let mut w = c.watch("k", None).await.unwrap();
    assert!(next(&mut w).await.created());
    w.watch("j", None).await.unwrap();
    assert!(next(&mut w).await.created());
    assert_eq!(server.watchers().0, 2);
    drop(w);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while server.watchers().0 != 0 {
        assert!(tokio::time::Instant::now() < deadline, "watchers forgotten");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.put("k", "still serving", Some(PutOptions::new()))
        .await
        .unwrap();
    server.shutdown().await.unwrap();
}
