//! The Lease service through a real client: the `etcd-client` crate against an in-process server.
//!
//! Stories: a lease's life (grant, attach, keep alive, revoke), expiry seen by a watcher, leases
//! that outlive a restart without being cut short, checkpoints that stop restarts from keeping a
//! lease alive forever, and etcd's errors for bad input.

use std::time::{Duration, Instant};

use concord::store::{Server, ServerConfig};
use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, LeaseGrantOptions, LeaseTimeToLiveOptions,
    PutOptions, Txn, TxnOp, WatchOptions,
};

async fn start(config: ServerConfig) -> (Server, Client) {
    let server = Server::start(config).await.expect("server starts");
    let client = Client::connect([server.client_addr().to_string()], None)
        .await
        .expect("client connects");
    (server, client)
}

fn status(err: etcd_client::Error) -> (tonic::Code, String) {
    match err {
        etcd_client::Error::GRpcStatus(s) => (s.code(), s.message().to_string()),
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

async fn ttl(c: &mut Client, id: i64) -> (i64, i64, Vec<String>) {
    let r = c
        .lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .unwrap();
    let keys = r
        .keys()
        .iter()
        .map(|k| String::from_utf8(k.clone()).unwrap())
        .collect();
    (r.ttl(), r.granted_ttl(), keys)
}

async fn exists(c: &mut Client, key: &str) -> bool {
    c.get(key, None).await.unwrap().count() == 1
}

#[tokio::test]
async fn a_lease_is_granted_attached_kept_alive_and_revoked_with_its_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut c) = start(ServerConfig::for_test(dir.path())).await;
    let lease = c.lease_grant(60, None).await.unwrap();
    assert!(lease.id() > 0, "the server picks a positive id");
    assert_eq!(lease.ttl(), 60);
    let short = c.lease_grant(1, None).await.unwrap();
    assert_eq!(
        short.ttl(),
        2,
        "raised to 1.5 election timeouts, rounded up"
    );

    let with = |id| Some(PutOptions::new().with_lease(id));
    c.put("svc/a", "1", with(lease.id())).await.unwrap(); // 2
    c.put("svc/b", "2", with(lease.id())).await.unwrap(); // 3
    c.put("plain", "3", None).await.unwrap(); // 4
    let (left, granted, keys) = ttl(&mut c, lease.id()).await;
    assert!((58..=60).contains(&left), "{left}");
    assert_eq!(granted, 60);
    assert_eq!(keys, vec!["svc/a", "svc/b"]);
    let kv = c.get("svc/a", None).await.unwrap();
    assert_eq!(kv.kvs()[0].lease(), lease.id());

    // A txn can compare on the lease; a put without a lease detaches the key.
    let txn = Txn::new()
        .when([Compare::lease("svc/b", CompareOp::Equal, lease.id())])
        .and_then([TxnOp::put("svc/b", "detached", None)]);
    assert!(c.txn(txn).await.unwrap().succeeded()); // 5
    assert_eq!(ttl(&mut c, lease.id()).await.2, vec!["svc/a"]);

    let (mut keeper, mut answers) = c.lease_keep_alive(lease.id()).await.unwrap();
    keeper.keep_alive().await.unwrap();
    let answer = answers.message().await.unwrap().unwrap();
    assert_eq!((answer.id(), answer.ttl()), (lease.id(), 60));

    let listed: Vec<i64> = c
        .leases()
        .await
        .unwrap()
        .leases()
        .iter()
        .map(|l| l.id())
        .collect();
    assert_eq!(listed.len(), 2);
    assert!(listed.contains(&lease.id()) && listed.contains(&short.id()));

    let revoked = c.lease_revoke(lease.id()).await.unwrap();
    assert_eq!(revoked.header().unwrap().revision(), 6);
    assert!(!exists(&mut c, "svc/a").await, "revoking deletes its keys");
    assert!(exists(&mut c, "svc/b").await && exists(&mut c, "plain").await);
    assert_eq!(ttl(&mut c, lease.id()).await.0, -1, "gone: TTL -1");
    keeper.keep_alive().await.unwrap();
    let answer = answers.message().await.unwrap().unwrap();
    assert_eq!(
        answer.ttl(),
        0,
        "a keepalive of a revoked lease answers TTL 0"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_expired_lease_deletes_its_keys_in_one_revision_that_watchers_see() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut c) = start(ServerConfig::for_test(dir.path())).await;
    let lease = c.lease_grant(2, None).await.unwrap().id();
    let kept = c.lease_grant(2, None).await.unwrap().id();
    for key in ["s/1", "s/2", "s/3"] {
        c.put(key, "v", Some(PutOptions::new().with_lease(lease)))
            .await
            .unwrap();
    }
    c.put("s/kept", "v", Some(PutOptions::new().with_lease(kept)))
        .await
        .unwrap();
    let mut w = c
        .watch("s/", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    assert!(w.message().await.unwrap().unwrap().created());
    let (mut keeper, mut answers) = c.lease_keep_alive(kept).await.unwrap();

    let started = Instant::now();
    let expired = loop {
        keeper.keep_alive().await.unwrap();
        assert!(answers.message().await.unwrap().unwrap().ttl() > 0);
        let resp = tokio::time::timeout(Duration::from_millis(500), w.message()).await;
        if let Ok(resp) = resp {
            break resp.unwrap().unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "expired in time"
        );
    };
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1500),
        "not before its TTL: {elapsed:?}"
    );
    let events = expired.events();
    assert_eq!(events.len(), 3, "all three keys, one response");
    assert!(events.iter().all(|e| e.event_type() == EventType::Delete));
    let revs: Vec<i64> = events
        .iter()
        .map(|e| e.kv().unwrap().mod_revision())
        .collect();
    assert_eq!(revs, vec![6, 6, 6], "one revision");
    assert!(
        exists(&mut c, "s/kept").await,
        "the kept-alive lease lives on"
    );
    assert_eq!(ttl(&mut c, lease).await.0, -1);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn leases_and_their_keys_survive_a_restart_without_being_cut_short() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig::for_test(dir.path());
    let (server, mut c) = start(config.clone()).await;
    let lease = c.lease_grant(30, None).await.unwrap().id();
    c.put("k", "v", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // About 28 s are left now.
    server.shutdown().await.unwrap();

    let (server, mut c) = start(config).await;
    let (left, granted, keys) = ttl(&mut c, lease).await;
    assert_eq!((granted, keys), (30, vec!["k".to_string()]));
    assert!(
        left >= 28,
        "a restart grants at least what was left, plus an election timeout: {left}"
    );
    let kv = c.get("k", Some(GetOptions::new())).await.unwrap();
    assert_eq!(kv.kvs()[0].lease(), lease);
    c.lease_revoke(lease).await.unwrap();
    assert!(!exists(&mut c, "k").await);
    server.shutdown().await.unwrap();
}

/// Checkpoints bound what restarts can do: the remaining TTL is recorded through Raft every
/// interval, and a restart starts from it rather than from the full TTL.
#[tokio::test]
async fn checkpoints_stop_restarts_from_keeping_a_lease_alive_forever() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        lease_checkpoint_interval: Duration::from_millis(500),
        ..ServerConfig::for_test(dir.path())
    };
    let (server, mut c) = start(config.clone()).await;
    let lease = c.lease_grant(30, None).await.unwrap().id();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    server.shutdown().await.unwrap();

    let (server, mut c) = start(config.clone()).await;
    let left = ttl(&mut c, lease).await.0;
    assert!(
        left <= 28,
        "restarted from the checkpoint (~27 s) plus 1 s, not from 30: {left}"
    );
    assert!(left >= 26, "but not cut short: {left}");

    // A keepalive resets the checkpoint before it is answered: the next restart must not go back
    // to the older, shorter remaining TTL.
    let (mut keeper, mut answers) = c.lease_keep_alive(lease).await.unwrap();
    keeper.keep_alive().await.unwrap();
    assert_eq!(answers.message().await.unwrap().unwrap().ttl(), 30);
    drop((keeper, answers));
    server.shutdown().await.unwrap();
    let (server, mut c) = start(config).await;
    let left = ttl(&mut c, lease).await.0;
    assert!(left >= 29, "renewed, then restarted: {left}");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_lease_requests_get_etcds_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut c) = start(ServerConfig::for_test(dir.path())).await;
    assert_eq!(
        status(c.lease_grant(9_000_000_001, None).await.unwrap_err()),
        (
            tonic::Code::OutOfRange,
            "etcdserver: too large lease TTL".into()
        )
    );
    assert_eq!(
        status(c.lease_revoke(12345).await.unwrap_err()),
        (
            tonic::Code::NotFound,
            "etcdserver: requested lease not found".into()
        )
    );
    let chosen = c
        .lease_grant(60, Some(LeaseGrantOptions::new().with_id(0x7e57)))
        .await
        .unwrap();
    assert_eq!(chosen.id(), 0x7e57);
    assert_eq!(
        status(
            c.lease_grant(60, Some(LeaseGrantOptions::new().with_id(0x7e57)))
                .await
                .unwrap_err()
        ),
        (
            tonic::Code::FailedPrecondition,
            "etcdserver: lease already exists".into()
        )
    );
    assert_eq!(
        status(
            c.put("k", "v", Some(PutOptions::new().with_lease(999)))
                .await
                .unwrap_err()
        ),
        (
            tonic::Code::NotFound,
            "etcdserver: requested lease not found".into()
        )
    );
    // The server answers TTL 0, which etcd-client turns into an error.
    assert!(matches!(
        c.lease_keep_alive(999).await,
        Err(etcd_client::Error::LeaseKeepAliveError(_))
    ));
    assert_eq!(ttl(&mut c, 999).await.0, -1);
    // None of it hurt the server, and nothing took a revision.
    let put = c.put("k", "v", None).await.unwrap();
    assert_eq!(put.header().unwrap().revision(), 2);
    server.shutdown().await.unwrap();
}
