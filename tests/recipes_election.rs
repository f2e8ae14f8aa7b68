//! The Election recipe against real servers: Concord in-process and Debian's etcd 3.4 (skipped
//! loudly without etcd, a failure under `CONCORD_REQUIRE_ETCD=1`), each story run on both.
//!
//! Stories: three candidates campaign in turn and at most one leads at any moment, with terms
//! (fencing tokens) that only grow; a leader whose session is killed is replaced and learns it;
//! `observe` follows leaders and proclamations and reports "no leader"; `etcdctl elect` and the
//! recipe see each other.

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use concord::recipes::{Client, Election, Error, Leader, Result, Session};
use futures::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_stories_on_concord_and_etcd() {
    let targets = common::Targets::start().await;
    for (name, endpoint) in targets.endpoints() {
        println!("--- {name}");
        at_most_one_leader_and_terms_only_grow(&endpoint).await;
        a_killed_leader_is_replaced_and_observers_follow(&endpoint).await;
        if let Some(etcdctl) = targets.etcdctl() {
            etcdctl_elect_and_the_recipe_see_each_other(&endpoint, &etcdctl).await;
        }
    }
    targets.concord.shutdown().await.unwrap();
}

async fn at_most_one_leader_and_terms_only_grow(endpoint: &str) {
    let leaders = Arc::new(AtomicUsize::new(0));
    let terms = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut candidates = Vec::new();
    for i in 0..3 {
        let (endpoint, leaders, terms) = (endpoint.to_string(), leaders.clone(), terms.clone());
        candidates.push(tokio::spawn(async move {
            let client = Client::connect([endpoint]).await.unwrap();
            let session = Session::new(&client, 10).await.unwrap();
            let election = Election::new(&client, "one-leader");
            for _ in 0..3 {
                let leadership = election
                    .campaign(&session, format!("candidate-{i}"))
                    .await
                    .unwrap();
                assert_eq!(
                    leaders.fetch_add(1, Ordering::SeqCst),
                    0,
                    "two leaders at once"
                );
                terms.lock().unwrap().push(leadership.fencing_token());
                let seen = election.leader().await.unwrap().expect("a leader");
                assert_eq!(seen.key, leadership.key());
                tokio::time::sleep(Duration::from_millis(20)).await;
                leaders.fetch_sub(1, Ordering::SeqCst);
                leadership.resign().await.unwrap();
            }
            session.close().await.unwrap();
        }));
    }
    for c in candidates {
        c.await.unwrap();
    }
    let terms = terms.lock().unwrap().clone();
    assert_eq!(terms.len(), 9);
    assert!(
        terms.windows(2).all(|w| w[0] < w[1]),
        "terms grow: {terms:?}"
    );
    let client = Client::connect([endpoint]).await.unwrap();
    assert_eq!(
        Election::new(&client, "one-leader").leader().await.unwrap(),
        None
    );
}

type Observations = std::pin::Pin<Box<dyn futures::Stream<Item = Result<Option<Leader>>> + Send>>;

/// The next observation, within 10 s.
async fn next(observed: &mut Observations) -> Option<Leader> {
    tokio::time::timeout(Duration::from_secs(10), observed.next())
        .await
        .expect("an observation")
        .expect("the stream goes on")
        .expect("no error")
}

async fn a_killed_leader_is_replaced_and_observers_follow(endpoint: &str) {
    let client = Client::connect([endpoint]).await.unwrap();
    let election = Election::new(&client, "failover");
    let mut observed: Observations = Box::pin(election.observe());
    assert_eq!(next(&mut observed).await, None, "nobody leads yet");

    let first = Session::new(&client, 10).await.unwrap();
    let leadership = election.campaign(&first, "a").await.unwrap();
    let seen = next(&mut observed).await;
    assert_eq!(seen.unwrap().proposal, b"a");
    leadership.proclaim("a2").await.unwrap();
    assert_eq!(next(&mut observed).await.unwrap().proposal, b"a2");

    // A second candidate waits; the first's session dies (its lease revoked by someone else).
    let second = Session::new(&client, 10).await.unwrap();
    let waiting = {
        let election = election.clone();
        tokio::spawn(async move {
            let l = election.campaign(&second, "b").await.unwrap();
            (l.fencing_token(), second)
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    client.etcd().lease_revoke(first.lease()).await.unwrap();
    let lost = tokio::time::timeout(Duration::from_secs(5), leadership.lost())
        .await
        .expect("the old leader learns it lost");
    assert!(matches!(
        lost,
        Error::LockLost(_) | Error::SessionExpired(_)
    ));
    let (term, second) = waiting.await.unwrap();
    assert!(term > 0);
    let now = loop {
        let l = next(&mut observed).await;
        if l.as_ref().is_some_and(|l| l.proposal == b"b") {
            break l.unwrap();
        }
    };
    assert_eq!(now.term, term, "observers see the new term");
    second.close().await.unwrap();
    assert_eq!(next(&mut observed).await, None, "no leader again");
}

/// `etcdctl elect` runs Go's `concurrency.Election` on the same key layout.
async fn etcdctl_elect_and_the_recipe_see_each_other(endpoint: &str, etcdctl: &std::path::Path) {
    let client = Client::connect([endpoint]).await.unwrap();
    let session = Session::new(&client, 10).await.unwrap();
    let election = Election::new(&client, "mixed");
    let leadership = election.campaign(&session, "rust").await.unwrap();

    // `etcdctl elect -l` prints the current leader's proposal.
    let mut listener = Command::new(etcdctl)
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", endpoint, "elect", "-l", "mixed"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = listener.stdout.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let mut lines = std::io::BufReader::new(stdout).lines();
        // "mixed/<lease>" then the proposal.
        let _key = lines.next();
        lines.next().map(|l| l.unwrap()).unwrap_or_default()
    });
    let proposal = tokio::time::timeout(Duration::from_secs(10), lines)
        .await
        .expect("etcdctl elect -l answered")
        .unwrap();
    assert_eq!(proposal, "rust");
    let _ = listener.kill();
    let _ = listener.wait();

    // A campaigning etcdctl waits behind us, and leads once we resign.
    let mut candidate = Command::new(etcdctl)
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", endpoint, "elect", "mixed", "go"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        election.leader().await.unwrap().unwrap().proposal,
        b"rust",
        "still ours"
    );
    leadership.resign().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(l) = election.leader().await.unwrap()
            && l.proposal == b"go"
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "etcdctl leads");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Command::new("kill")
        .args(["-INT", &candidate.id().to_string()])
        .status()
        .unwrap();
    let _ = candidate.wait();
    session.close().await.unwrap();
}
