//! A three-member Concord cluster in one process, over the real peer transport on 127.0.0.1.
//!
//! Story: the members elect one leader; a write sent to a follower is forwarded to the leader and
//! acknowledged; a linearizable read on the other follower sees it (read index through the
//! leader); a lease kept alive through a follower outlives its TTL; the leader is stopped, the two others elect a new one and writes go on; the old leader
//! comes back on its data, catches up, and serves the newest write; every member ends with the
//! same HashKV. Then a randomized history of concurrent clients across a leader failover is checked
//! for linearizability.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{
    ELECTION, Member, assert_converged, client, get, leader, put_retrying, shutdown, start,
    start_again, stop,
};
use common::linearizable;
use concord::store::Server;

/// The stories share the machine's two cores: one cluster at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_stories() {
    three_members_replicate_fail_over_and_converge().await;
    a_history_across_a_leader_failover_is_linearizable().await;
}

/// MemberList on any member shows all three, each with the name and client URL it published (so
/// `etcdctl endpoint status --cluster` finds them all).
async fn every_member_lists_every_member(members: &[Member]) {
    let mut expected: Vec<(String, String)> = members
        .iter()
        .map(|m| (m.config.name.clone(), m.endpoint()))
        .collect();
    expected.sort();
    for member in members {
        let deadline = Instant::now() + ELECTION;
        loop {
            let list = client(member).await.member_list().await.unwrap();
            let mut seen: Vec<(String, String)> = list
                .members()
                .iter()
                .map(|m| (m.name().to_string(), m.client_urls().join(",")))
                .collect();
            seen.sort();
            if seen == expected {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} lists {seen:?}, expected {expected:?}",
                member.config.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A lease granted through one follower and kept alive through another outlives its TTL: the
/// followers forward keepalives and TimeToLive to the leader, the only member with deadlines.
async fn leases_are_kept_alive_through_followers(granter: &Member, keeper: &Member) {
    let ttl = 2;
    let lease = client(granter)
        .await
        .lease_grant(ttl, None)
        .await
        .unwrap()
        .id();
    let mut c = client(keeper).await;
    c.put(
        "leased",
        "v",
        Some(etcd_client::PutOptions::new().with_lease(lease)),
    )
    .await
    .unwrap();
    let (mut renew, mut answers) = c.lease_keep_alive(lease).await.unwrap();
    let until = Instant::now() + Duration::from_secs(2 * ttl as u64 + 1);
    while Instant::now() < until {
        renew.keep_alive().await.unwrap();
        let answer = answers.message().await.unwrap().expect("an answer");
        assert_eq!(answer.ttl(), ttl, "the leader renewed it");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let left = c.lease_time_to_live(lease, None).await.unwrap();
    assert!(
        left.ttl() > 0 && left.ttl() <= ttl,
        "remaining TTL from the leader: {}",
        left.ttl()
    );
    assert_eq!(get(keeper, "leased", false).await.as_deref(), Some("v"));
    c.lease_revoke(lease).await.unwrap();
    assert_eq!(get(granter, "leased", false).await, None);
}

async fn three_members_replicate_fail_over_and_converge() {
    let mut members = start(3).await;
    let first = leader(&members).await;
    let followers: Vec<usize> = (0..3).filter(|i| *i != first).collect();

    // A write on a follower is forwarded to the leader; a linearizable read on the other
    // follower sees it.
    put_retrying(&members[followers[0]], "greeting", "hello").await;
    assert_eq!(
        get(&members[followers[1]], "greeting", false)
            .await
            .as_deref(),
        Some("hello")
    );

    leases_are_kept_alive_through_followers(&members[followers[0]], &members[followers[1]]).await;
    every_member_lists_every_member(&members).await;

    // The leader stops; the others elect a new one and writes go on.
    let stopped = Instant::now();
    stop(&mut members[first]).await;
    let second = leader(&members).await;
    assert_ne!(second, first);
    let revision = put_retrying(&members[followers[1]], "greeting", "bonjour").await;
    println!(
        "a new leader and a write acknowledged {:.1?} after the old leader stopped",
        stopped.elapsed()
    );

    // The old leader comes back on its data and catches up.
    start_again(&mut members[first]).await;
    leader(&members).await;
    assert_eq!(
        get(&members[first], "greeting", false).await.as_deref(),
        Some("bonjour")
    );

    // Every member applied the same history.
    assert_converged(&members, revision).await;

    // MoveLeader: the leader hands leadership to a follower; a member that does not lead is told
    // so, as etcd tells it.
    let now = leader(&members).await;
    let to = (0..3).find(|i| *i != now).unwrap();
    let target = members[to].config.member_id();
    let e = client(&members[to])
        .await
        .move_leader(target)
        .await
        .unwrap_err();
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            assert_eq!(s.code(), tonic::Code::FailedPrecondition);
            assert_eq!(s.message(), "etcdserver: not leader");
        }
        other => panic!("expected a status, got {other}"),
    }
    client(&members[now])
        .await
        .move_leader(target)
        .await
        .unwrap();
    assert_eq!(
        leader(&members).await,
        to,
        "the target leads once MoveLeader answers"
    );

    // Once a data dir exists, its membership is the data dir's: other --initial-cluster flags are
    // ignored, as etcd ignores them, and the member rejoins its cluster.
    stop(&mut members[first]).await;
    let mut alone = members[first].config.clone();
    alone.initial_cluster = vec![(alone.name.clone(), alone.advertise_peer_urls.clone())];
    members[first].server = Some(Server::start(alone).await.unwrap());
    leader(&members).await;
    let revision = put_retrying(&members[first], "greeting", "hallo").await;
    assert_converged(&members, revision).await;
    shutdown(members).await;
}

/// Concurrent clients spread over the members run random operations on three keys while the
/// leader is stopped and later restarted; the recorded history must be linearizable
/// (`common/linearizable.rs`). A client whose member is down moves to the next one; what it
/// sent without an answer counts as "may have happened".
async fn a_history_across_a_leader_failover_is_linearizable() {
    let mut members = start(3).await;
    let first = leader(&members).await;
    let endpoints: Vec<String> = members.iter().map(Member::endpoint).collect();
    let started = Instant::now();
    let recording = linearizable::Recording::start(4, &endpoints, &["k0", "k1", "k2"], 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop(&mut members[first]).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    start_again(&mut members[first]).await;
    let back = recording.now();
    let history = recording.finish().await;
    let unknown = linearizable::unanswered(&history);
    let after = history.iter().filter(|e| e.invoked > back).count();
    println!(
        "{} operations, {unknown} without an answer, {after} after the old leader was back, in \
         {:.1?}",
        history.len(),
        started.elapsed()
    );
    assert!(after > 0, "the history must go on past the failover");
    if let Err(v) = linearizable::check(&history) {
        panic!(
            "the history of {} is not linearizable: {:#?}",
            v.key, v.events
        );
    }
    shutdown(members).await;
}
