//! The KV service through a real client: the `etcd-client` crate against an in-process server.
//!
//! Each test starts its own member on 127.0.0.1:0 with a temp data dir and tells one story:
//! revisions and versions, ranges, transactions, compaction, restarts, and etcd's exact errors for
//! bad input (which must never hurt the server: each error story ends with a successful write).

use std::time::Duration;

use concord::store::{Server, ServerConfig};
use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, SortOrder, SortTarget, Txn,
    TxnOp, TxnOpResponse,
};

/// A running member and a client connected to it.
struct Member {
    server: Server,
    client: Client,
    _dir: Option<tempfile::TempDir>,
}

async fn start_in(dir: &std::path::Path) -> (Server, Client) {
    let server = Server::start(ServerConfig::for_test(dir))
        .await
        .expect("server starts");
    let client = Client::connect([server.client_addr().to_string()], None)
        .await
        .expect("client connects");
    (server, client)
}

async fn member() -> Member {
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = start_in(dir.path()).await;
    Member {
        server,
        client,
        _dir: Some(dir),
    }
}

/// The gRPC code and message of a failed call.
fn status(err: etcd_client::Error) -> (tonic::Code, String) {
    match err {
        etcd_client::Error::GRpcStatus(s) => (s.code(), s.message().to_string()),
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

#[tokio::test]
async fn revisions_and_versions_follow_etcd() {
    let mut m = member().await;
    let c = &mut m.client;
    assert_eq!(
        c.put("k", "v1", None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision(),
        2,
        "the first write is revision 2"
    );
    let put = c
        .put("k", "v2", Some(PutOptions::new().with_prev_key()))
        .await
        .unwrap();
    assert_eq!(put.prev_key().unwrap().value(), b"v1");
    let kv = c.get("k", None).await.unwrap().kvs()[0].clone();
    assert_eq!(
        (kv.create_revision(), kv.mod_revision(), kv.version()),
        (2, 3, 2)
    );

    let del = c
        .delete("k", Some(DeleteOptions::new().with_prev_key()))
        .await
        .unwrap();
    assert_eq!((del.deleted(), del.header().unwrap().revision()), (1, 4));
    assert_eq!(del.prev_kvs()[0].value(), b"v2");
    let missing = c.delete("k", None).await.unwrap();
    assert_eq!(
        (missing.deleted(), missing.header().unwrap().revision()),
        (0, 4),
        "deleting nothing takes no revision"
    );

    c.put("k", "v3", None).await.unwrap();
    let kv = c.get("k", None).await.unwrap().kvs()[0].clone();
    assert_eq!(
        (kv.create_revision(), kv.version()),
        (5, 1),
        "a recreated key starts a new generation"
    );
    let old = c
        .get("k", Some(GetOptions::new().with_revision(3)))
        .await
        .unwrap();
    assert_eq!(old.kvs()[0].value(), b"v2", "history is readable");
    m.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn ranges_limits_sorting_and_counts() {
    let mut m = member().await;
    let c = &mut m.client;
    for (k, v) in [("app/a", "3"), ("app/b", "1"), ("app/c", "2"), ("apq", "x")] {
        c.put(k, v, None).await.unwrap();
    }
    let prefix = c
        .get("app/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(prefix.count(), 3);
    let limited = c
        .get("app/", Some(GetOptions::new().with_prefix().with_limit(2)))
        .await
        .unwrap();
    assert_eq!(
        (limited.kvs().len(), limited.more(), limited.count()),
        (2, true, 3)
    );
    let by_value = c
        .get(
            "app/",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Value, SortOrder::Descend),
            ),
        )
        .await
        .unwrap();
    let keys: Vec<_> = by_value
        .kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap().to_string())
        .collect();
    assert_eq!(keys, ["app/a", "app/c", "app/b"]);
    let from = c
        .get(
            "app/c",
            Some(GetOptions::new().with_from_key().with_keys_only()),
        )
        .await
        .unwrap();
    assert_eq!(from.count(), 2);
    assert!(
        from.kvs().iter().all(|kv| kv.value().is_empty()),
        "keys_only drops values"
    );
    let counted = c
        .get(
            "a",
            Some(GetOptions::new().with_all_keys().with_count_only()),
        )
        .await
        .unwrap();
    assert_eq!((counted.count(), counted.kvs().len()), (4, 0));
    let serializable = c
        .get("apq", Some(GetOptions::new().with_serializable()))
        .await
        .unwrap();
    assert_eq!(serializable.kvs()[0].value(), b"x");
    m.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_transaction_is_one_atomic_revision() {
    let mut m = member().await;
    let c = &mut m.client;
    c.put("balance", "10", None).await.unwrap();
    let txn = Txn::new()
        .when([Compare::value("balance", CompareOp::Equal, "10")])
        .and_then([
            TxnOp::put("balance", "5", None),
            TxnOp::put("ledger/1", "-5", None),
            TxnOp::get("balance", None),
        ])
        .or_else([TxnOp::get("balance", None)]);
    let resp = c.txn(txn.clone()).await.unwrap();
    assert!(resp.succeeded());
    assert_eq!(
        resp.header().unwrap().revision(),
        3,
        "both puts share revision 3"
    );
    match &resp.op_responses()[2] {
        TxnOpResponse::Get(get) => {
            assert_eq!(get.kvs()[0].value(), b"5", "a txn reads its own writes")
        }
        other => panic!("unexpected {other:?}"),
    }
    let again = c.txn(txn).await.unwrap();
    assert!(!again.succeeded(), "the compare now fails");
    assert_eq!(
        again.header().unwrap().revision(),
        3,
        "a txn that only reads takes no revision"
    );

    let nested = Txn::new().and_then([TxnOp::txn(
        Txn::new()
            .when([Compare::version("missing", CompareOp::Equal, 0)])
            .and_then([TxnOp::put("nested", "yes", None)]),
    )]);
    assert!(c.txn(nested).await.unwrap().succeeded());
    assert_eq!(
        c.get("nested", None).await.unwrap().kvs()[0].value(),
        b"yes"
    );
    m.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_input_gets_etcds_errors_and_hurts_nothing() {
    let mut m = member().await;
    let c = &mut m.client;
    let invalid = tonic::Code::InvalidArgument;
    assert_eq!(
        status(c.put("", "v", None).await.unwrap_err()),
        (invalid, "etcdserver: key is not provided".into())
    );
    assert_eq!(
        status(c.get("", None).await.unwrap_err()),
        (invalid, "etcdserver: key is not provided".into())
    );
    assert_eq!(
        status(
            c.put("k", "v", Some(PutOptions::new().with_lease(42)))
                .await
                .unwrap_err()
        ),
        (
            tonic::Code::NotFound,
            "etcdserver: requested lease not found".into()
        )
    );
    assert_eq!(
        status(
            c.put("k", "", Some(PutOptions::new().with_ignore_value()))
                .await
                .unwrap_err()
        ),
        (invalid, "etcdserver: key not found".into())
    );
    let too_big = vec![b'x'; 1_600_000];
    assert_eq!(
        status(c.put("big", too_big, None).await.unwrap_err()),
        (invalid, "etcdserver: request is too large".into())
    );
    let way_too_big = vec![b'x'; 3 * 1024 * 1024];
    assert_eq!(
        status(c.put("big", way_too_big, None).await.unwrap_err()),
        (
            tonic::Code::ResourceExhausted,
            "grpc: received message larger than max (3145738 vs. 2097152)".into()
        ),
        "grpc-go's answer, which etcd clients expect"
    );

    let many = Txn::new().and_then(
        (0..129)
            .map(|i| TxnOp::put(format!("k{i}"), "v", None))
            .collect::<Vec<_>>(),
    );
    assert_eq!(
        status(c.txn(many).await.unwrap_err()),
        (
            invalid,
            "etcdserver: too many operations in txn request".into()
        )
    );
    let twice = Txn::new().and_then([TxnOp::put("d", "1", None), TxnOp::put("d", "2", None)]);
    assert_eq!(
        status(c.txn(twice).await.unwrap_err()),
        (
            invalid,
            "etcdserver: duplicate key given in txn request".into()
        )
    );

    for i in 0..3 {
        c.put("h", format!("{i}"), None).await.unwrap(); // revisions 2, 3, 4
    }
    assert_eq!(
        status(
            c.get("h", Some(GetOptions::new().with_revision(99)))
                .await
                .unwrap_err()
        ),
        (
            tonic::Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision".into()
        )
    );
    c.compact(3, None).await.unwrap();
    assert_eq!(
        status(
            c.get("h", Some(GetOptions::new().with_revision(2)))
                .await
                .unwrap_err()
        ),
        (
            tonic::Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted".into()
        )
    );
    assert_eq!(
        status(c.compact(3, None).await.unwrap_err()).1,
        "etcdserver: mvcc: required revision has been compacted"
    );
    let backwards = c
        .get("z", Some(GetOptions::new().with_range("a")))
        .await
        .unwrap();
    assert_eq!(
        backwards.count(),
        0,
        "a range end before the key is an empty range, as in etcd"
    );

    let after = c.put("still", "fine", None).await.unwrap();
    assert_eq!(
        after.header().unwrap().revision(),
        5,
        "rejected requests took no revision"
    );
    m.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_restart_serves_the_same_data_and_revision() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut c) = start_in(dir.path()).await;
    for i in 0..50 {
        c.put(format!("key/{i:02}"), format!("v{i}"), None)
            .await
            .unwrap();
    }
    c.delete("key/0", Some(DeleteOptions::new().with_prefix()))
        .await
        .unwrap(); // key/00..key/09
    c.compact(30, None).await.unwrap();
    let before = c
        .get("key/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    server.shutdown().await.unwrap();

    let (server, mut c) = start_in(dir.path()).await;
    let after = c
        .get("key/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(
        after.header().unwrap().revision(),
        before.header().unwrap().revision()
    );
    let summary = |r: &etcd_client::GetResponse| -> Vec<String> {
        r.kvs()
            .iter()
            .map(|kv| {
                format!(
                    "{:?}={:?} create {} mod {} version {}",
                    kv.key(),
                    kv.value(),
                    kv.create_revision(),
                    kv.mod_revision(),
                    kv.version(),
                )
            })
            .collect()
    };
    assert_eq!(summary(&after), summary(&before));
    assert_eq!(after.count(), 40);
    let compacted = c
        .get("key/45", Some(GetOptions::new().with_revision(29)))
        .await
        .unwrap_err();
    assert_eq!(
        status(compacted).0,
        tonic::Code::OutOfRange,
        "the compaction survived too"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_get_distinct_revisions() {
    let m = member().await;
    let tasks: Vec<_> = (0..16)
        .map(|t| {
            let mut kv = m.client.kv_client();
            tokio::spawn(async move {
                let mut revs = Vec::new();
                for i in 0..25 {
                    let resp = kv.put(format!("t{t}/{i}"), "v", None).await.unwrap();
                    revs.push(resp.header().unwrap().revision());
                }
                revs
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        let revs = tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .unwrap()
            .unwrap();
        assert!(
            revs.windows(2).all(|w| w[0] < w[1]),
            "one writer's revisions increase"
        );
        all.extend(revs);
    }
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 400, "every write got its own revision");
    assert_eq!(*all.last().unwrap(), 401);
}

#[tokio::test]
async fn maintenance_reports_status_and_hashes() {
    let mut m = member().await;
    let c = &mut m.client;
    c.put("a", "1", None).await.unwrap();
    let status = c.status().await.unwrap();
    assert_eq!(status.version(), "3.5.0");
    assert_eq!(
        status.leader(),
        status.header().unwrap().member_id(),
        "a lone member leads"
    );
    assert!(
        status.raft_applied_index() >= 2,
        "applied {}",
        status.raft_applied_index()
    );
    assert!(status.db_size() > 0, "db size {}", status.db_size());
    let h1 = c.hash_kv(0).await.unwrap();
    assert_eq!(h1.header().unwrap().revision(), 2);
    c.put("b", "2", None).await.unwrap();
    let h2 = c.hash_kv(2).await.unwrap();
    assert_eq!(
        h1.hash(),
        h2.hash(),
        "HashKV at a revision does not change with later writes"
    );
    assert!(
        c.alarm(
            etcd_client::AlarmAction::Get,
            etcd_client::AlarmType::None,
            None
        )
        .await
        .unwrap()
        .alarms()
        .is_empty()
    );
}

#[tokio::test]
async fn the_raft_log_is_compacted_and_a_restart_still_serves_everything() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        snapshot_count: 20,
        ..ServerConfig::for_test(dir.path())
    };
    let server = Server::start(config.clone()).await.unwrap();
    let mut c = Client::connect([server.client_addr().to_string()], None)
        .await
        .unwrap();
    for i in 0..300 {
        c.put(format!("k{i:03}"), format!("{i}"), None)
            .await
            .unwrap();
        if i % 50 == 0 {
            // Let the loop write the state back and flush, so the log can be compacted under it.
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    let before = c
        .get("k", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let first = server
        .node_status()
        .first_index
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        first > 200,
        "the log was compacted (it starts at entry {first})"
    );
    server.shutdown().await.unwrap();

    let server = Server::start(config).await.unwrap();
    let mut c = Client::connect([server.client_addr().to_string()], None)
        .await
        .unwrap();
    let after = c
        .get("k", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(after.count(), 300);
    assert_eq!(
        after.header().unwrap().revision(),
        before.header().unwrap().revision()
    );
    assert_eq!(after.kvs().last().unwrap().value(), b"299");
    let next = c.put("after-restart", "ok", None).await.unwrap();
    assert_eq!(next.header().unwrap().revision(), 302);
    server.shutdown().await.unwrap();
}

/// Two requests that once stopped the server for good (found in review): both are answered with an
/// error, and the member goes on serving, also after a restart (their entries replay cleanly).
#[tokio::test]
async fn requests_that_once_crashed_the_server_are_answered() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut c) = start_in(dir.path()).await;
    c.put("a", "1", None).await.unwrap();

    // A from-key delete, then an ignore_value put of the key it deleted: rolled back whole.
    let txn = Txn::new().and_then([
        TxnOp::delete("a", Some(DeleteOptions::new().with_from_key())),
        TxnOp::put("a", "", Some(PutOptions::new().with_ignore_value())),
    ]);
    assert_eq!(
        status(c.txn(txn).await.unwrap_err()),
        (
            tonic::Code::InvalidArgument,
            "etcdserver: key not found".into()
        )
    );
    assert_eq!(
        c.get("a", None).await.unwrap().kvs()[0].value(),
        b"1",
        "nothing was deleted"
    );

    // Transactions nested 40 deep: refused before they reach the log.
    let mut nested = Txn::new().and_then([TxnOp::put("deep", "v", None)]);
    for _ in 0..40 {
        nested = Txn::new().and_then([TxnOp::txn(nested)]);
    }
    let (code, message) = status(c.txn(nested).await.unwrap_err());
    assert_eq!(code, tonic::Code::InvalidArgument);
    assert!(message.contains("nested deeper than 32"), "{message}");

    server.shutdown().await.unwrap();
    let (server, mut c) = start_in(dir.path()).await;
    let put = c.put("b", "2", None).await.unwrap();
    assert_eq!(
        put.header().unwrap().revision(),
        3,
        "the failed txn took no revision"
    );
    server.shutdown().await.unwrap();
}
