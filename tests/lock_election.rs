//! The server-side `v3lockpb.Lock` and `v3electionpb.Election` services, over the `etcd-client`
//! crate (which calls them, unlike Go's client-side `concurrency` package), against Concord and
//! Debian's etcd 3.4: the same story must hold on both, with etcd's key layout, codes and texts.
//! The Lock service and the recipes' Mutex exclude each other on the same name.
//! Then what Concord does on purpose differently (see `store/src/service/lock.rs`): a Lock without
//! a lease is refused rather than left to expire silently, and a waiter whose own key vanished is
//! told so.

mod common;

use std::time::Duration;

use etcd_client::{
    Client, Error, LeaderKey, LockOptions, ProclaimOptions, ResignOptions, ResponseHeader,
};

/// Long enough for a blocked call to have returned if it were going to.
const STILL_BLOCKED: Duration = Duration::from_millis(400);
/// How long a handover may take.
const HANDOVER: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_and_election_services_behave_as_etcds() {
    let targets = common::Targets::start().await;
    for (name, endpoint) in targets.endpoints() {
        println!("--- {name}");
        let client = Client::connect([endpoint.as_str()], None).await.unwrap();
        lock_excludes_and_hands_over(&client).await;
        a_canceled_waiter_leaves_no_key(&client).await;
        lock_misuse(&client).await;
        lock_service_and_recipe_mutex_share_names(&client).await;
        election_follows_its_leaders(&client).await;
        election_misuse(&client).await;
    }
    targets.concord.shutdown().await.unwrap();
}

async fn lease(client: &Client, ttl: i64) -> i64 {
    client.clone().lease_grant(ttl, None).await.unwrap().id()
}

async fn create_revision(client: &Client, key: &[u8]) -> Option<(i64, i64)> {
    let resp = client.clone().get(key, None).await.unwrap();
    resp.kvs()
        .first()
        .map(|kv| (kv.create_revision(), kv.lease()))
}

/// Waits until `key` exists (`true`) or is gone (`false`).
async fn wait_key(client: &Client, key: &str, exists: bool) {
    let deadline = tokio::time::Instant::now() + HANDOVER;
    while create_revision(client, key.as_bytes()).await.is_some() != exists {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{key} never {}",
            if exists { "appeared" } else { "went away" }
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn rev(header: Option<&ResponseHeader>) -> i64 {
    header.map_or(0, |h| h.revision())
}

/// The gRPC code and text of a failed call.
fn status(e: Error) -> (tonic::Code, String) {
    match e {
        Error::GRpcStatus(s) => (s.code(), s.message().to_string()),
        other => panic!("expected a gRPC status, got {other}"),
    }
}

/// Lock(name, lease) owns `name/<lease hex>`; a second locker waits until Unlock, then owns its
/// own key with a higher create revision (the fencing token).
async fn lock_excludes_and_hands_over(client: &Client) {
    let (a, b) = (lease(client, 30).await, lease(client, 30).await);
    let first = client
        .clone()
        .lock("jobs", Some(LockOptions::new().with_lease(a)))
        .await
        .unwrap();
    assert_eq!(first.key(), format!("jobs/{a:x}").as_bytes());
    let (token_a, attached) = create_revision(client, first.key()).await.unwrap();
    assert_eq!(
        attached, a,
        "the lock key is attached to the caller's lease"
    );
    assert!(rev(first.header()) >= token_a);

    // Locking again with the same lease is the same lock (etcd's Mutex is re-entrant per lease).
    let again = client
        .clone()
        .lock("jobs", Some(LockOptions::new().with_lease(a)))
        .await
        .unwrap();
    assert_eq!(again.key(), first.key());

    let mut waiter = client.clone();
    let second = tokio::spawn(async move {
        waiter
            .lock("jobs", Some(LockOptions::new().with_lease(b)))
            .await
    });
    // Queued (its key exists), and still waiting a while later.
    wait_key(client, &format!("jobs/{b:x}"), true).await;
    tokio::time::sleep(STILL_BLOCKED).await;
    assert!(
        !second.is_finished(),
        "the second locker waits for the first"
    );

    client.clone().unlock(first.key()).await.unwrap();
    let second = tokio::time::timeout(HANDOVER, second)
        .await
        .expect("Unlock hands the lock over")
        .unwrap()
        .unwrap();
    assert_eq!(second.key(), format!("jobs/{b:x}").as_bytes());
    let (token_b, _) = create_revision(client, second.key()).await.unwrap();
    assert!(token_b > token_a, "fencing tokens only go up");
    client.clone().unlock(second.key()).await.unwrap();
}

/// A Lock call whose caller goes away while it waits (here: the call is dropped, which resets
/// its HTTP/2 stream) removes its key, so it does not block the lockers after it.
async fn a_canceled_waiter_leaves_no_key(client: &Client) {
    let (a, b) = (lease(client, 30).await, lease(client, 30).await);
    let held = client
        .clone()
        .lock("reports", Some(LockOptions::new().with_lease(a)))
        .await
        .unwrap();
    let mut waiter = client.clone();
    let waiting = tokio::spawn(async move {
        waiter
            .lock("reports", Some(LockOptions::new().with_lease(b)))
            .await
    });
    let waiter_key = format!("reports/{b:x}");
    wait_key(client, &waiter_key, true).await;
    waiting.abort();
    wait_key(client, &waiter_key, false).await;
    assert!(create_revision(client, held.key()).await.is_some());
    client.clone().unlock(held.key()).await.unwrap();
}

/// The Lock service and the recipes' client-side Mutex use one key layout: on the same name they
/// exclude each other.
async fn lock_service_and_recipe_mutex_share_names(client: &Client) {
    use concord::recipes::{Client as Recipes, Mutex, Session};
    let recipes = Recipes::from_etcd(client.clone());
    let session = Session::new(&recipes, 30).await.unwrap();
    let guard = Mutex::new(&recipes, "shared").lock(&session).await.unwrap();
    let other = lease(client, 30).await;
    let mut server_side = client.clone();
    let waiter = tokio::spawn(async move {
        server_side
            .lock("shared", Some(LockOptions::new().with_lease(other)))
            .await
    });
    tokio::time::sleep(STILL_BLOCKED).await;
    assert!(
        !waiter.is_finished(),
        "the Lock call waits for the recipe's holder"
    );
    let token = guard.fencing_token();
    guard.unlock().await.unwrap();
    let got = tokio::time::timeout(HANDOVER, waiter)
        .await
        .expect("the recipe's unlock hands over")
        .unwrap()
        .unwrap();
    let (next_token, _) = create_revision(client, got.key()).await.unwrap();
    assert!(next_token > token);
    client.clone().unlock(got.key()).await.unwrap();
    session.close().await.unwrap();
}

async fn lock_misuse(client: &Client) {
    // A lease that does not exist: the text of etcd's error for a put with an unknown lease, but
    // code Unknown (etcd runs Lock and Election on an in-process client that drops the code).
    let e = client
        .clone()
        .lock("jobs", Some(LockOptions::new().with_lease(0x1234)))
        .await
        .unwrap_err();
    assert_eq!(
        status(e),
        (
            tonic::Code::Unknown,
            "etcdserver: requested lease not found".into()
        )
    );
    // Unlocking a key nobody holds is not an error (it is a delete).
    client.clone().unlock("jobs/nobody").await.unwrap();
}

/// Campaign, Leader, Observe, Proclaim and Resign: the observer sees the leader, its
/// proclamation and its successor, in order.
async fn election_follows_its_leaders(client: &Client) {
    let (a, b) = (lease(client, 30).await, lease(client, 30).await);
    let won = client.clone().campaign("pilot", "ann", a).await.unwrap();
    let ann = won.leader().unwrap().clone();
    assert_eq!(ann.name(), b"pilot");
    assert_eq!(ann.key(), format!("pilot/{a:x}").as_bytes());
    assert_eq!(ann.lease(), a);
    assert_eq!(
        create_revision(client, ann.key()).await,
        Some((ann.rev(), a))
    );

    let mut observer = client.clone().observe("pilot").await.unwrap();
    let mut next_value = async || {
        let resp = tokio::time::timeout(HANDOVER, observer.message())
            .await
            .expect("the observer hears of it")
            .unwrap()
            .expect("the stream goes on");
        String::from_utf8(resp.kv().unwrap().value().to_vec()).unwrap()
    };
    assert_eq!(next_value().await, "ann");

    client
        .clone()
        .proclaim(
            "ann, again",
            Some(ProclaimOptions::new().with_leader(ann.clone())),
        )
        .await
        .unwrap();
    assert_eq!(next_value().await, "ann, again");
    let leader = client.clone().leader("pilot").await.unwrap();
    assert_eq!(leader.kv().unwrap().value(), b"ann, again");
    assert_eq!(leader.kv().unwrap().key(), ann.key());

    // Campaigning again with her lease keeps her place and proclaims the new value.
    let again = client
        .clone()
        .campaign("pilot", "ann, third", a)
        .await
        .unwrap();
    assert_eq!(again.leader().unwrap().rev(), ann.rev());
    assert_eq!(next_value().await, "ann, third");

    let mut candidate = client.clone();
    let bob = tokio::spawn(async move { candidate.campaign("pilot", "bob", b).await });
    tokio::time::sleep(STILL_BLOCKED).await;
    assert!(!bob.is_finished(), "bob waits while ann leads");

    client
        .clone()
        .resign(Some(ResignOptions::new().with_leader(ann.clone())))
        .await
        .unwrap();
    let bob = tokio::time::timeout(HANDOVER, bob)
        .await
        .expect("ann's resignation makes bob the leader")
        .unwrap()
        .unwrap();
    let bob = bob.leader().unwrap().clone();
    assert!(bob.rev() > ann.rev());
    assert_eq!(next_value().await, "bob");

    // Ann's key is gone: her proclamation is refused, her second resignation does nothing.
    let e = client
        .clone()
        .proclaim(
            "ann is back",
            Some(ProclaimOptions::new().with_leader(ann.clone())),
        )
        .await
        .unwrap_err();
    assert_eq!(
        status(e),
        (tonic::Code::Unknown, "election: not leader".into())
    );
    client
        .clone()
        .resign(Some(ResignOptions::new().with_leader(ann)))
        .await
        .unwrap();
    assert_eq!(
        client
            .clone()
            .leader("pilot")
            .await
            .unwrap()
            .kv()
            .unwrap()
            .value(),
        b"bob"
    );
    client
        .clone()
        .resign(Some(ResignOptions::new().with_leader(bob)))
        .await
        .unwrap();
}

async fn election_misuse(client: &Client) {
    let e = client.clone().leader("nobody-runs").await.unwrap_err();
    assert_eq!(
        status(e),
        (tonic::Code::Unknown, "election: no leader".into())
    );
    let missing = (
        tonic::Code::Unknown,
        "\"leader\" field must be provided".to_string(),
    );
    let e = client.clone().proclaim("x", None).await.unwrap_err();
    assert_eq!(status(e), missing);
    let e = client.clone().resign(None).await.unwrap_err();
    assert_eq!(status(e), missing);
    let e = client
        .clone()
        .campaign("pilot", "x", 0x1234)
        .await
        .unwrap_err();
    assert_eq!(
        status(e),
        (
            tonic::Code::Unknown,
            "etcdserver: requested lease not found".into()
        )
    );
    // A leader key with the wrong create revision is not the leader.
    let a = lease(client, 30).await;
    let won = client.clone().campaign("tower", "cid", a).await.unwrap();
    let real = won.leader().unwrap().clone();
    let forged = LeaderKey::new()
        .with_name("tower")
        .with_key(real.key())
        .with_rev(real.rev() + 1)
        .with_lease(a);
    let e = client
        .clone()
        .proclaim("forged", Some(ProclaimOptions::new().with_leader(forged)))
        .await
        .unwrap_err();
    assert_eq!(
        status(e),
        (tonic::Code::Unknown, "election: not leader".into())
    );
    client.clone().lease_revoke(a).await.unwrap();
}

/// Concord only: a Lock or Campaign without a lease is refused (etcd attaches a 60 s lease
/// nobody keeps alive, so the lock would expire silently; see `store/src/service/lock.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concord_refuses_a_lock_without_a_lease() {
    let server = common::ConcordMember::start().await;
    let client = Client::connect([server.endpoint()], None).await.unwrap();
    let refused = |e: Error| {
        let (code, message) = status(e);
        assert_eq!(code, tonic::Code::InvalidArgument);
        assert!(message.contains("need a lease"), "{message}");
    };
    refused(client.clone().lock("batch", None).await.unwrap_err());
    refused(client.clone().campaign("pilot", "x", 0).await.unwrap_err());
    let left = client
        .clone()
        .get("", Some(etcd_client::GetOptions::new().with_from_key()))
        .await
        .unwrap();
    assert!(left.kvs().is_empty(), "a refused request writes nothing");
    server.shutdown().await;
}

/// Concord only: a waiter whose lease expires while it waits is told so ("mutex: session is
/// expired", etcd 3.5's text) instead of being handed a lock whose key no longer exists (etcd 3.4
/// answers the Lock anyway once its predecessor goes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concord_waiter_whose_lease_expires_is_told() {
    let server = common::ConcordMember::start().await;
    let client = Client::connect([server.endpoint()], None).await.unwrap();
    let holder = lease(&client, 30).await;
    let held = client
        .clone()
        .lock("door", Some(LockOptions::new().with_lease(holder)))
        .await
        .unwrap();
    let short = lease(&client, 2).await;
    let e = tokio::time::timeout(
        Duration::from_secs(10),
        client
            .clone()
            .lock("door", Some(LockOptions::new().with_lease(short))),
    )
    .await
    .expect("the waiter is answered once its lease expires")
    .unwrap_err();
    assert_eq!(
        status(e),
        (tonic::Code::Unknown, "mutex: session is expired".into())
    );
    assert!(create_revision(&client, held.key()).await.is_some());
    client.clone().unlock(held.key()).await.unwrap();
    server.shutdown().await;
}
