//! Membership changes on a live cluster, under write load, through the etcd API.
//!
//! Story: three members take writes from a steady writer the whole time. A learner is added
//! through a follower (forwarded to the leader); promoting it before it has caught up is refused
//! with etcd's error. It starts with `--initial-cluster-state existing`, learns its id from the
//! cluster, receives a snapshot, serves reads as a learner (Status says so) and is promoted; it
//! keeps its own identity across a restart. A follower is removed: it stops, and its data dir
//! refuses to start again. Then the leader itself is removed: the others elect a new leader and the
//! writer goes on; and once more, from two members to one, where the survivor can only lead if it
//! learned the removal was committed. Every acknowledged write is on
//! every remaining member and their HashKV match. Bad requests get etcd's errors.
//!
//! A second story grows a one-member cluster to two voters. A third story first asks to remove a
//! member while another is cut off: refused as an "unhealthy cluster", as etcd's strict
//! reconfiguration check does. Then it wipes a member's data dir and starts it as new, then as
//! existing: both are refused, because the cluster knows it as started before (etcd's "has
//! already been bootstrapped").

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::cluster::{
    ELECTION, Member, assert_converged, client, heal, joining_config, leader, partition,
    put_retrying, shutdown, start, start_again, start_member, stop,
};
use concord::store::{Error, Server};
use etcd_client::{Client, GetOptions, MemberAddOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_stories() {
    members_join_get_promoted_and_leave_under_load().await;
    a_lone_member_grows_to_two_voters().await;
    a_wiped_data_dir_cannot_rejoin_as_new().await;
}

/// The gRPC code and message of a failed call.
fn status_of(e: etcd_client::Error) -> (tonic::Code, String) {
    match e {
        etcd_client::Error::GRpcStatus(s) => (s.code(), s.message().to_string()),
        other => panic!("expected a gRPC status, got {other}"),
    }
}

/// Writes `w/<n>` until stopped, through whichever member answers; the keys acknowledged.
fn writer(endpoints: Vec<String>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut at = 0;
        let mut n = 0;
        let mut connected: Option<Client> = None;
        while !stop.load(Ordering::Relaxed) {
            let mut c = match connected.take() {
                Some(c) => c,
                None => {
                    match Client::connect([endpoints[at % endpoints.len()].clone()], None).await {
                        Ok(c) => c,
                        Err(_) => {
                            at += 1;
                            continue;
                        }
                    }
                }
            };
            let key = format!("w/{n:05}");
            n += 1; // an unanswered key may exist: it is never reused
            let put = tokio::time::timeout(Duration::from_secs(2), c.put(key.as_str(), "v", None));
            if let Ok(Ok(_)) = put.await {
                acked.push(key);
                connected = Some(c);
            } else {
                at += 1; // try the next member
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        acked
    })
}

/// Retries `op` until it succeeds or [`ELECTION`] passes.
async fn eventually<T, F, Fut>(what: &str, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let deadline = Instant::now() + ELECTION;
    loop {
        match op().await {
            Ok(value) => return value,
            Err(e) => {
                assert!(Instant::now() < deadline, "{what} never succeeded: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Asks `member` (the leader) to remove itself, retrying through elections; waits until it stops.
async fn remove_itself(member: &mut Member) {
    let (id, endpoint) = (member.id(), member.endpoint());
    eventually("a leader removing itself", || {
        let endpoint = endpoint.clone();
        async move {
            let mut c = Client::connect([endpoint], None).await?;
            c.member_remove(id).await
        }
    })
    .await;
    stops_as_removed(member).await;
}

/// Waits until `member`'s node loop stops because it was removed.
async fn stops_as_removed(member: &mut Member) {
    let mut server = member.server.take().expect("running");
    let stopped = tokio::time::timeout(ELECTION, server.stopped())
        .await
        .expect("a removed member stops");
    assert_eq!(stopped, Err(Error::Removed));
    server.shutdown().await.unwrap();
}

async fn members_join_get_promoted_and_leave_under_load() {
    let mut members = start(3).await;
    let first = leader(&members).await;
    let follower = (0..3).find(|i| *i != first).unwrap();
    let stop_writing = Arc::new(AtomicBool::new(false));
    let endpoints: Vec<String> = members.iter().map(Member::endpoint).collect();
    let writes = writer(endpoints.clone(), stop_writing.clone());

    // Bad requests, with etcd's codes and texts.
    let mut c = client(&members[follower]).await;
    let taken = members[first].config.advertise_peer_urls.clone();
    let e = c.member_add(taken, None).await.unwrap_err();
    assert_eq!(
        status_of(e),
        (
            tonic::Code::FailedPrecondition,
            "etcdserver: Peer URLs already exists".into()
        )
    );
    let e = c.member_remove(0xdead).await.unwrap_err();
    assert_eq!(
        status_of(e),
        (tonic::Code::NotFound, "etcdserver: member not found".into())
    );
    let e = c.member_promote(members[first].id()).await.unwrap_err();
    assert_eq!(
        status_of(e),
        (
            tonic::Code::FailedPrecondition,
            "etcdserver: can only promote a learner member".into()
        )
    );
    let e = c.member_add(["http://127.0.0.1"], None).await.unwrap_err();
    assert_eq!(
        status_of(e),
        (
            tonic::Code::InvalidArgument,
            "etcdserver: given member URLs are invalid".into()
        )
    );

    // A learner is added through a follower; promoting it before it runs is refused.
    let (config, dir) = joining_config(&members, "m3");
    let added = c
        .member_add(
            config.advertise_peer_urls.clone(),
            Some(MemberAddOptions::new().with_is_learner()),
        )
        .await
        .unwrap();
    let learner = added.member().unwrap().id();
    assert!(added.member().unwrap().is_learner());
    assert_eq!(added.member_list().len(), 4);
    let e = c.member_promote(learner).await.unwrap_err();
    assert_eq!(
        status_of(e),
        (
            tonic::Code::FailedPrecondition,
            "etcdserver: can only promote a learner member which is in sync with leader".into()
        )
    );
    let e = c
        .member_add(
            ["http://127.0.0.1:1"],
            Some(MemberAddOptions::new().with_is_learner()),
        )
        .await
        .unwrap_err();
    assert_eq!(
        status_of(e),
        (
            tonic::Code::FailedPrecondition,
            "etcdserver: too many learner members in cluster".into()
        )
    );

    // It joins: its id comes from the cluster, its state from a snapshot.
    let joined = Instant::now();
    members.push(start_member(config, dir).await);
    let new = members.len() - 1;
    assert_eq!(members[new].id(), learner);
    let status = members[new].server().node_status();
    while status.snapshots_installed.load(Ordering::Relaxed) == 0 {
        assert!(joined.elapsed() < ELECTION, "the learner got no snapshot");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut on_learner = client(&members[new]).await;
    assert!(on_learner.status().await.unwrap().is_learner());
    let promoted = eventually("promoting the learner", || {
        let mut c = c.clone();
        async move { c.member_promote(learner).await }
    })
    .await;
    println!(
        "the learner caught up by snapshot and was promoted {:.1?} after it started",
        joined.elapsed()
    );
    assert!(promoted.members().iter().all(|m| !m.is_learner()));
    // The member itself learns of its promotion when it applies it.
    while on_learner.status().await.unwrap().is_learner() {
        assert!(
            joined.elapsed() < ELECTION,
            "the member never applied its promotion"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Restarted, it is still itself: its identity is its own, not the snapshot sender's.
    stop(&mut members[new]).await;
    start_again(&mut members[new]).await;
    assert_eq!(members[new].id(), learner);
    leader(&members).await;
    put_retrying(&members[new], "rejoined", "yes").await;

    // A follower is removed: it stops, and its data dir will not serve again.
    let now = leader(&members).await;
    let gone = (0..3).find(|i| *i != now).unwrap();
    let id = members[gone].id();
    let left = client(&members[now]).await.member_remove(id).await.unwrap();
    assert_eq!(left.members().len(), 3);
    stops_as_removed(&mut members[gone]).await;
    let refused = Server::start(members[gone].config.clone()).await.err();
    assert_eq!(refused, Some(Error::Removed));

    // The leader removes itself: it stops, the others elect a leader and writes go on.
    remove_itself(&mut members[now]).await;
    let third = leader(&members).await;
    put_retrying(&members[third], "after", "removals").await;

    // Two members left; the leader removes itself again. The survivor must learn the removal
    // is committed before the leader goes (it lingers), or it could never elect itself.
    let two = members.iter().filter(|m| m.server.is_some()).count();
    assert_eq!(two, 2);
    remove_itself(&mut members[third]).await;
    let last = leader(&members).await;
    let revision = put_retrying(&members[last], "after", "the last removal").await;

    stop_writing.store(true, Ordering::Relaxed);
    let acked = writes.await.unwrap();
    assert!(
        acked.len() > 20,
        "the writer made progress: {}",
        acked.len()
    );
    assert_converged(&members, revision).await;
    for member in members.iter().filter(|m| m.server.is_some()) {
        let got = client(member)
            .await
            .get("w/", Some(GetOptions::new().with_prefix().with_keys_only()))
            .await
            .unwrap();
        let keys: std::collections::HashSet<String> = got
            .kvs()
            .iter()
            .map(|kv| kv.key_str().unwrap().to_string())
            .collect();
        let lost: Vec<&String> = acked.iter().filter(|k| !keys.contains(*k)).collect();
        assert!(
            lost.is_empty(),
            "{} lost acknowledged writes: {lost:?}",
            member.config.name
        );
    }
    println!(
        "{} acknowledged writes across the membership changes",
        acked.len()
    );
    shutdown(members).await;
}

/// A one-member cluster adds a voter (etcd allows it): it loses its quorum until the new member
/// starts, which must still find its place (its discovery falls back to the lone member's own
/// member list, since no linearizable one can be served).
async fn a_lone_member_grows_to_two_voters() {
    let mut members = start(1).await;
    leader(&members).await;
    put_retrying(&members[0], "k", "before").await;
    let (config, dir) = joining_config(&members, "second");
    let added = client(&members[0])
        .await
        .member_add(config.advertise_peer_urls.clone(), None)
        .await
        .unwrap();
    assert!(!added.member().unwrap().is_learner());
    members.push(start_member(config, dir).await);
    leader(&members).await;
    let revision = put_retrying(&members[1], "k", "after").await;
    assert_converged(&members, revision).await;
    shutdown(members).await;
}

async fn a_wiped_data_dir_cannot_rejoin_as_new() {
    let mut members = start(3).await;
    let l = leader(&members).await;
    let wiped = (0..3).find(|i| *i != l).unwrap();
    let other = (0..3).find(|i| *i != l && *i != wiped).unwrap();
    put_retrying(&members[l], "k", "v").await;

    // etcd's strict reconfiguration check: with one follower unheard from, removing the other
    // would leave no quorum of live voters; it is refused instead of stalling the cluster.
    partition(&members, &[other]);
    tokio::time::sleep(Duration::from_millis(1500)).await; // over one election timeout
    let e = client(&members[l])
        .await
        .member_remove(members[wiped].id())
        .await
        .unwrap_err();
    assert_eq!(
        status_of(e),
        (
            tonic::Code::Unavailable,
            "etcdserver: unhealthy cluster".into()
        )
    );
    heal(&members);
    // Every member has published itself by now (MemberList shows its client URL).
    let deadline = Instant::now() + ELECTION;
    while client(&members[l])
        .await
        .member_list()
        .await
        .unwrap()
        .members()
        .iter()
        .any(|m| m.client_urls().is_empty())
    {
        assert!(Instant::now() < deadline, "members never published");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop(&mut members[wiped]).await;
    let fresh = tempfile::tempdir().unwrap();
    let mut config = members[wiped].config.clone();
    config.data_dir = fresh.path().to_path_buf();
    let refused = Server::start(config.clone()).await.err().expect("refused");
    assert!(
        refused
            .to_string()
            .contains("has already been bootstrapped"),
        "{refused}"
    );
    // Nor may it rejoin as an existing member under its old id.
    config.initial_cluster_state = concord::store::config::ClusterState::Existing;
    let refused = Server::start(config).await.err().expect("refused");
    assert!(
        refused
            .to_string()
            .contains("has already been bootstrapped"),
        "{refused}"
    );
    shutdown(members).await;
}
