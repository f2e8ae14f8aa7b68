//! The Mutex recipe against real servers: Concord in-process and Debian's etcd 3.4 (skipped loudly
//! without etcd, a failure under `CONCORD_REQUIRE_ETCD=1`), each story run on both.
//!
//! Stories: concurrent increments of a counter under the lock lose no update and fencing tokens
//! only grow; the lock excludes `etcdctl lock` on the same name and the other way round; a holder
//! whose lease is revoked learns it from `lost()` and its session expires; a timed-out waiter
//! leaves nothing behind.

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use concord::recipes::{Client, Error, Mutex, Session, SessionState};
use etcd_client::{GetOptions, TxnOp};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutex_stories_on_concord_and_etcd() {
    let targets = common::Targets::start().await;
    for (name, endpoint) in targets.endpoints() {
        println!("--- {name}");
        counter_under_the_lock_loses_no_update(&endpoint).await;
        a_revoked_lease_is_reported_as_lost(&endpoint).await;
        a_timed_out_waiter_leaves_nothing_behind(&endpoint).await;
        if let Some(etcdctl) = targets.etcdctl() {
            the_lock_excludes_etcdctl_lock_both_ways(&endpoint, &etcdctl).await;
        }
    }
    targets.concord.shutdown().await.unwrap();
}

/// 4 tasks × 10 increments of one counter, each a read-modify-write under the lock, the write
/// conditional on still holding it. Tokens are recorded in acquisition order.
async fn counter_under_the_lock_loses_no_update(endpoint: &str) {
    const TASKS: usize = 4;
    const ROUNDS: usize = 10;
    let tokens = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let (endpoint, tokens) = (endpoint.to_string(), tokens.clone());
        tasks.push(tokio::spawn(async move {
            let client = Client::connect([endpoint]).await.unwrap();
            let session = Session::new(&client, 10).await.unwrap();
            let mutex = Mutex::new(&client, "counter-lock");
            for _ in 0..ROUNDS {
                let guard = mutex.lock(&session).await.unwrap();
                tokens.lock().unwrap().push(guard.fencing_token());
                let mut etcd = client.etcd();
                let current = etcd.get("counter", None).await.unwrap();
                let n: u64 = current
                    .kvs()
                    .first()
                    .map_or(0, |kv| kv.value_str().unwrap().parse().unwrap());
                let wrote = guard
                    .txn_if_held(vec![TxnOp::put("counter", (n + 1).to_string(), None)])
                    .await
                    .unwrap();
                assert!(wrote, "the lock was held");
                guard.unlock().await.unwrap();
            }
            session.close().await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let client = Client::connect([endpoint]).await.unwrap();
    let value = client.etcd().get("counter", None).await.unwrap();
    assert_eq!(
        value.kvs()[0].value_str().unwrap(),
        (TASKS * ROUNDS).to_string(),
        "no lost update"
    );
    let tokens = tokens.lock().unwrap().clone();
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "fencing tokens only grow: {tokens:?}"
    );
    let left = client
        .etcd()
        .get("counter-lock/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(left.count(), 0, "every contender's key is gone");
}

async fn a_revoked_lease_is_reported_as_lost(endpoint: &str) {
    let client = Client::connect([endpoint]).await.unwrap();
    let session = Session::new(&client, 10).await.unwrap();
    let guard = Mutex::new(&client, "lost-lock")
        .lock(&session)
        .await
        .unwrap();
    client.etcd().lease_revoke(session.lease()).await.unwrap();
    let lost = tokio::time::timeout(Duration::from_secs(5), guard.lost())
        .await
        .expect("lost() resolves");
    assert!(
        matches!(lost, Error::LockLost(_) | Error::SessionExpired(_)),
        "{lost:?}"
    );
    tokio::time::timeout(Duration::from_secs(10), session.expired())
        .await
        .expect("the session learns its lease is gone");
    assert_eq!(session.state(), SessionState::Expired);
    assert!(
        !guard
            .txn_if_held(vec![TxnOp::put("x", "y", None)])
            .await
            .unwrap(),
        "a fenced write after the loss is refused"
    );
}

async fn a_timed_out_waiter_leaves_nothing_behind(endpoint: &str) {
    let client = Client::connect([endpoint]).await.unwrap();
    let (holder, waiter) = (
        Session::new(&client, 10).await.unwrap(),
        Session::new(&client, 10).await.unwrap(),
    );
    let mutex = Mutex::new(&client, "busy-lock");
    let guard = mutex.lock(&holder).await.unwrap();
    assert!(mutex.try_lock(&waiter).await.unwrap().is_none(), "held");
    let err = mutex
        .lock_timeout(&waiter, Duration::from_millis(300))
        .await
        .err()
        .expect("times out");
    assert!(matches!(err, Error::Timeout));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let keys = client
        .etcd()
        .get("busy-lock/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(keys.count(), 1, "only the holder's key is left");
    guard.unlock().await.unwrap();
    let again = mutex.try_lock(&waiter).await.unwrap().expect("free now");
    again.unlock().await.unwrap();
    holder.close().await.unwrap();
    waiter.close().await.unwrap();
}

/// `etcdctl lock` runs Go's `concurrency.Mutex` on the same key layout.
async fn the_lock_excludes_etcdctl_lock_both_ways(endpoint: &str, etcdctl: &std::path::Path) {
    let client = Client::connect([endpoint]).await.unwrap();
    let session = Session::new(&client, 10).await.unwrap();
    let mutex = Mutex::new(&client, "shared-lock");

    // We hold it: `etcdctl lock shared-lock echo got` must wait until we release.
    let guard = mutex.lock(&session).await.unwrap();
    let child = Command::new(etcdctl)
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            endpoint,
            "lock",
            "shared-lock",
            "echo",
            "got",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let waiting = client
        .etcd()
        .get("shared-lock/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(waiting.count(), 2, "etcdctl queued behind us");
    guard.unlock().await.unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("got"),
        "etcdctl got the lock after us: {out:?}"
    );

    // etcdctl holds it (until interrupted): we must not get it.
    let mut holder = Command::new(etcdctl)
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", endpoint, "lock", "shared-lock"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let stdout = holder.stdout.take().unwrap();
    // The reader is kept until etcdctl exits: closing its stdout early would kill it with SIGPIPE
    // when it prints on the way out, before it releases the lock.
    let (line, _stdout) = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let mut reader = std::io::BufReader::new(stdout);
        reader.read_line(&mut line).unwrap();
        (line, reader)
    })
    .await
    .unwrap();
    assert!(line.starts_with("shared-lock/"), "etcdctl holds {line:?}");
    assert!(mutex.try_lock(&session).await.unwrap().is_none());
    // SIGINT: etcdctl closes its session (revokes its lease), releasing the lock.
    Command::new("kill")
        .args(["-INT", &holder.id().to_string()])
        .status()
        .unwrap();
    let guard = match mutex.lock_timeout(&session, Duration::from_secs(10)).await {
        Ok(g) => g,
        Err(e) => {
            let keys = client
                .etcd()
                .get("shared-lock/", Some(GetOptions::new().with_prefix()))
                .await
                .unwrap();
            let keys: Vec<_> = keys
                .kvs()
                .iter()
                .map(|kv| {
                    (
                        kv.key_str().unwrap().to_string(),
                        kv.create_revision(),
                        kv.lease(),
                    )
                })
                .collect();
            panic!(
                "not ours once etcdctl let go: {e:?}; mine {:x}; keys {keys:?}; etcdctl {:?}",
                session.lease(),
                holder.try_wait()
            );
        }
    };
    let _ = holder.wait();
    guard.unlock().await.unwrap();
    session.close().await.unwrap();
}
