//! Fault stories: in-process clusters whose members' Raft traffic is partitioned, lost,
//! duplicated and reordered through their fault plans (`store/src/raft/faults.rs`).
//!
//! 1. Five members; the leader and one follower are cut off. The minority serves neither writes
//!    nor linearizable reads, the majority elects a leader and goes on; once healed, the old
//!    leader follows and every member converges.
//! 2. A follower is cut off while the leader writes far past its log compaction; healed, it
//!    catches up by snapshot, and a watcher it served all along sees every change, in order.
//! 3. A network that loses 5% of messages, duplicates 5% and delays all by up to 30 ms: a
//!    concurrent history stays linearizable and the members converge. Then the whole cluster is
//!    stopped and started again: nothing is lost.
//! 4. The harness catches the bug it exists for: with the stale-read switch on, a leader cut off
//!    from its cluster answers a linearizable read from its old state, and the checker rejects
//!    the history; with the switch off, that read gets no answer instead.
//!
//! Every story ends with equal HashKV on all members.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::cluster::{
    ELECTION, Member, assert_converged, client, get, heal, leader, leader_among, partition,
    put_retrying, set_faults, shutdown, start, start_again, start_with, stop,
};
use common::linearizable::{self, Answer, Event, Op};
use concord::store::raft::faults::Plan;
use etcd_client::{EventType, GetOptions, WatchOptions};

/// How long a client waits before counting a request as unanswered.
const PATIENCE: Duration = Duration::from_secs(3);

/// The stories share the machine's two cores: one cluster at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_stories() {
    a_partitioned_minority_serves_nothing_and_the_majority_goes_on().await;
    a_member_cut_off_past_compaction_catches_up_by_snapshot().await;
    a_lossy_reordering_network_stays_linearizable_and_survives_a_full_restart().await;
    the_checker_catches_stale_reads_from_a_cut_off_leader().await;
}

/// Whether a linearizable get and a put on `member` both fail to be answered.
async fn serves_nothing(member: &Member) -> bool {
    let mut c = client(member).await;
    let read = tokio::time::timeout(PATIENCE, c.get("k", None)).await;
    let write = tokio::time::timeout(PATIENCE, c.put("k", "from the minority", None)).await;
    !matches!(read, Ok(Ok(_))) && !matches!(write, Ok(Ok(_)))
}

async fn a_partitioned_minority_serves_nothing_and_the_majority_goes_on() {
    let members = start(5).await;
    let old = leader(&members).await;
    put_retrying(&members[old], "k", "before").await;
    let follower = (0..5).find(|i| *i != old).unwrap();
    let minority = [old, follower];
    let majority: Vec<usize> = (0..5).filter(|i| !minority.contains(i)).collect();

    partition(&members, &minority);
    let cut = Instant::now();
    let new = leader_among(&members, &majority).await;
    put_retrying(&members[majority[0]], "k", "after").await;
    println!(
        "5 members, 2 cut off: the majority elected {} and took a write {:.1?} after the cut",
        members[new].config.name,
        cut.elapsed()
    );
    for &i in &minority {
        assert!(
            serves_nothing(&members[i]).await,
            "{} is cut off from the majority but answered",
            members[i].config.name
        );
        // A serializable read is served locally: stale, as etcd's is.
        assert_eq!(get(&members[i], "k", true).await.as_deref(), Some("before"));
    }

    heal(&members);
    let back = leader(&members).await;
    assert!(
        majority.contains(&back),
        "a member with a stale log must not win the election after healing (pre-vote)"
    );
    for &i in &minority {
        assert_eq!(get(&members[i], "k", false).await.as_deref(), Some("after"));
    }
    let revision = put_retrying(&members[old], "k", "healed").await;
    assert_converged(&members, revision).await;
    shutdown(members).await;
}

async fn a_member_cut_off_past_compaction_catches_up_by_snapshot() {
    let members = start_with(3, |config| config.snapshot_count = 20).await;
    let l = leader(&members).await;
    let lagging = (0..3).find(|i| *i != l).unwrap();
    // A watcher on the member that will lag, from before the cut.
    let mut watching = client(&members[lagging]).await;
    let mut events = watching
        .watch("key/", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();

    partition(&members, &[lagging]);
    let mut c = client(&members[l]).await;
    let keys: Vec<String> = (0..200).map(|n| format!("key/{n:03}")).collect();
    for key in &keys {
        c.put(key.as_str(), "v", None).await.unwrap();
    }
    let status = members[l].server().node_status();
    let first = status.first_index.load(Ordering::Relaxed);
    assert!(
        first > members[lagging].applied() + 1,
        "the leader's log must start past what the lagging member has: {first} vs {}",
        members[lagging].applied()
    );

    let healed = Instant::now();
    heal(&members);
    let lagging_status = members[lagging].server().node_status();
    while lagging_status.snapshots_installed.load(Ordering::Relaxed) == 0 {
        assert!(healed.elapsed() < ELECTION, "no snapshot was installed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "the lagging member installed a snapshot {:.1?} after healing (leader made {})",
        healed.elapsed(),
        status.snapshots_made.load(Ordering::Relaxed)
    );
    let revision = put_retrying(&members[l], "key/last", "v").await;
    assert_converged(&members, revision).await;
    let all = client(&members[lagging])
        .await
        .get(
            "key/",
            Some(GetOptions::new().with_prefix().with_serializable()),
        )
        .await
        .unwrap();
    assert_eq!(all.count(), 201);

    // The watcher missed nothing: every put, in order, though most arrived by snapshot.
    let mut seen = Vec::new();
    while seen.last().map(String::as_str) != Some("key/last") {
        let resp = tokio::time::timeout(ELECTION, events.message())
            .await
            .expect("the watcher stalled")
            .unwrap()
            .expect("the watch stream ended");
        for event in resp.events() {
            assert_eq!(event.event_type(), EventType::Put);
            seen.push(event.kv().unwrap().key_str().unwrap().to_string());
        }
    }
    let mut expected = keys.clone();
    expected.push("key/last".into());
    assert_eq!(seen, expected);
    shutdown(members).await;
}

async fn a_lossy_reordering_network_stays_linearizable_and_survives_a_full_restart() {
    let mut members = start(3).await;
    leader(&members).await;
    set_faults(
        &members,
        &Plan {
            drop: 0.05,
            duplicate: 0.05,
            max_delay: Duration::from_millis(30),
            ..Plan::default()
        },
    );
    let endpoints: Vec<String> = members.iter().map(Member::endpoint).collect();
    let started = Instant::now();
    let recording = linearizable::Recording::start(3, &endpoints, &["k0", "k1", "k2"], 150);
    let history = recording.finish().await;
    let unknown = linearizable::unanswered(&history);
    println!(
        "lossy network: {} operations, {unknown} without an answer, in {:.1?}",
        history.len(),
        started.elapsed()
    );
    if let Err(v) = linearizable::check(&history) {
        panic!("not linearizable on key {}: {:#?}", v.key, v.events);
    }
    heal(&members);
    let revision = put_retrying(&members[0], "k0", "final").await;
    let hash = assert_converged(&members, revision).await;

    // The whole cluster stops and starts again on its data.
    for member in members.iter_mut() {
        stop(member).await;
    }
    for member in members.iter_mut() {
        start_again(member).await;
    }
    leader(&members).await;
    assert_eq!(
        get(&members[1], "k0", false).await.as_deref(),
        Some("final")
    );
    assert_eq!(
        assert_converged(&members, revision).await,
        hash,
        "the same state after a full restart"
    );
    shutdown(members).await;
}

/// One operation on `member`, timed and recorded; no answer within [`PATIENCE`] is `Unknown`.
async fn recorded(member: &Member, op: Op, started: Instant) -> Event {
    let mut c = client(member).await;
    let invoked = started.elapsed().as_nanos() as u64;
    let call = async {
        Ok::<_, etcd_client::Error>(match &op {
            Op::Put { value } => {
                c.put("k", value.as_str(), None).await?;
                Answer::Put
            }
            Op::Get => {
                let resp = c.get("k", None).await?;
                let value = resp.kvs().first();
                Answer::Get(value.map(|kv| kv.value_str().unwrap().to_string()))
            }
            _ => unreachable!("this story only puts and gets"),
        })
    };
    let answer = match tokio::time::timeout(PATIENCE, call).await {
        Ok(Ok(answer)) => answer,
        _ => Answer::Unknown,
    };
    let answered = (answer != Answer::Unknown).then(|| started.elapsed().as_nanos() as u64);
    Event {
        key: "k".into(),
        op,
        invoked,
        answered,
        answer,
    }
}

async fn the_checker_catches_stale_reads_from_a_cut_off_leader() {
    let members = start(3).await;
    let old = leader(&members).await;
    let majority: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    let started = Instant::now();
    let put = |value: &str| Op::Put {
        value: value.into(),
    };
    let mut history = vec![recorded(&members[old], put("v1"), started).await];

    partition(&members, &[old]);
    members[old]
        .server()
        .faults()
        .update(|plan| plan.stale_reads = true);
    leader_among(&members, &majority).await;
    // Retried until acknowledged (a first try may meet the election).
    let v2 = loop {
        let event = recorded(&members[majority[0]], put("v2"), started).await;
        if event.answer == Answer::Put {
            break event;
        }
    };
    history.push(v2);
    let stale = recorded(&members[old], Op::Get, started).await;
    assert_eq!(
        stale.answer,
        Answer::Get(Some("v1".into())),
        "with the bug on, the cut-off leader answers from its old state"
    );
    history.push(stale);
    let violation = linearizable::check(&history).expect_err("the checker must catch it");
    assert_eq!(violation.key, "k");

    // Without the bug, the same read is not answered at all.
    members[old]
        .server()
        .faults()
        .update(|plan| plan.stale_reads = false);
    let read = recorded(&members[old], Op::Get, started).await;
    assert_eq!(
        read.answer,
        Answer::Unknown,
        "a cut-off member must not answer"
    );
    history.pop();
    history.push(read);
    linearizable::check(&history).expect("without the bug the history is linearizable");
    heal(&members);
    let revision = put_retrying(&members[old], "k", "v3").await;
    assert_converged(&members, revision).await;
    shutdown(members).await;
}
