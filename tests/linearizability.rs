//! Linearizability, checked on recorded histories (`common/linearizable.rs` is the checker).
//!
//! First the checker itself is proven: histories that are linearizable pass, and the classic
//! violations — a stale read, a read that goes back in time, two compare-and-swaps that both win,
//! a timed-out write seen and then unseen — are caught. Then concurrent clients run random puts,
//! gets, deletes and compare-and-swaps on three keys against a real server, which is restarted in
//! the middle (operations in flight then may or may not have happened), and the recorded history
//! must be linearizable — on Concord and on etcd 3.4 alike.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::linearizable::{Answer, Event, Op, check, record};

/// An event on key `x`, in a compact form for hand-written histories.
fn ev(op: Op, invoked: u64, answered: Option<u64>, answer: Answer) -> Event {
    Event {
        key: "x".into(),
        op,
        invoked,
        answered,
        answer,
    }
}

fn put(v: &str) -> Op {
    Op::Put { value: v.into() }
}

fn got(v: Option<&str>) -> Answer {
    Answer::Get(v.map(String::from))
}

fn cas(expect: Option<&str>, value: &str) -> Op {
    Op::Cas {
        expect: expect.map(String::from),
        value: value.into(),
    }
}

#[test]
fn the_checker_accepts_linearizable_histories() {
    // Sequential: put 1, get 1, delete, get nothing.
    let sequential = [
        ev(put("1"), 0, Some(10), Answer::Put),
        ev(Op::Get, 20, Some(30), got(Some("1"))),
        ev(Op::Delete, 40, Some(50), Answer::Delete(1)),
        ev(Op::Get, 60, Some(70), got(None)),
    ];
    check(&sequential).unwrap();
    // A read overlapping a write may see either value.
    for seen in [None, Some("1")] {
        let overlapping = [
            ev(put("1"), 0, Some(100), Answer::Put),
            ev(Op::Get, 10, Some(20), got(seen)),
        ];
        check(&overlapping).unwrap();
    }
    // Two overlapping writes, then reads that agree on the later one.
    let racing = [
        ev(put("a"), 0, Some(50), Answer::Put),
        ev(put("b"), 10, Some(40), Answer::Put),
        ev(Op::Get, 60, Some(70), got(Some("a"))),
        ev(Op::Get, 80, Some(90), got(Some("a"))),
    ];
    check(&racing).unwrap();
    // A write that timed out may have happened (seen later) or not (never seen).
    let happened = [
        ev(put("1"), 0, None, Answer::Unknown),
        ev(Op::Get, 10, Some(20), got(Some("1"))),
        ev(Op::Get, 30, Some(40), got(Some("1"))),
    ];
    check(&happened).unwrap();
    let did_not = [
        ev(put("1"), 0, None, Answer::Unknown),
        ev(Op::Get, 10, Some(20), got(None)),
    ];
    check(&did_not).unwrap();
    // Of two concurrent create-if-absent CASes, one wins.
    let one_wins = [
        ev(cas(None, "a"), 0, Some(30), Answer::Cas(true)),
        ev(cas(None, "b"), 5, Some(25), Answer::Cas(false)),
        ev(Op::Get, 40, Some(50), got(Some("a"))),
    ];
    check(&one_wins).unwrap();
}

#[test]
fn the_checker_catches_the_classic_violations() {
    let violations: [(&str, Vec<Event>); 5] = [
        (
            "a stale read: the put finished before the get began",
            vec![
                ev(put("1"), 0, Some(10), Answer::Put),
                ev(Op::Get, 20, Some(30), got(None)),
            ],
        ),
        (
            "a read going back in time",
            vec![
                ev(put("1"), 0, Some(100), Answer::Put),
                ev(Op::Get, 10, Some(20), got(Some("1"))),
                ev(Op::Get, 30, Some(40), got(None)),
            ],
        ),
        (
            "two create-if-absent CASes both win",
            vec![
                ev(cas(None, "a"), 0, Some(30), Answer::Cas(true)),
                ev(cas(None, "b"), 5, Some(25), Answer::Cas(true)),
            ],
        ),
        (
            "a timed-out put seen, then unseen",
            vec![
                ev(put("1"), 0, None, Answer::Unknown),
                ev(Op::Get, 10, Some(20), got(Some("1"))),
                ev(Op::Get, 30, Some(40), got(None)),
            ],
        ),
        (
            "a delete that found nothing right after a put",
            vec![
                ev(put("1"), 0, Some(10), Answer::Put),
                ev(Op::Delete, 20, Some(30), Answer::Delete(0)),
            ],
        ),
    ];
    for (what, history) in violations {
        assert!(check(&history).is_err(), "not caught: {what}");
    }
    // Keys are independent: a violation on one key is found among clean histories of others.
    let mut mixed = vec![
        Event {
            key: "y".into(),
            ..ev(put("1"), 0, Some(10), Answer::Put)
        },
        Event {
            key: "y".into(),
            ..ev(Op::Get, 20, Some(30), got(Some("1")))
        },
    ];
    mixed.push(ev(put("1"), 0, Some(10), Answer::Put));
    mixed.push(ev(Op::Get, 20, Some(30), got(Some("2"))));
    assert_eq!(check(&mixed).unwrap_err().key, "x");
}

/// Clients × operations each; three keys, so operations on a key overlap often.
const CLIENTS: usize = 4;
const OPS_PER_CLIENT: usize = 150;
const KEYS: [&str; 3] = ["k0", "k1", "k2"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_across_a_restart_are_linearizable_on_concord_and_etcd() {
    for mut target in common::Target::start_all().await {
        let started = Instant::now();
        let history = Arc::new(Mutex::new(Vec::new()));
        let mut clients = Vec::new();
        for c in 0..CLIENTS {
            let endpoints = vec![target.endpoint()];
            let history = history.clone();
            clients.push(tokio::spawn(async move {
                let id = c as u64 + 1;
                record(id, &endpoints, &KEYS, OPS_PER_CLIENT, started, history).await
            }));
        }
        // Restart the server while the clients run.
        tokio::time::sleep(Duration::from_millis(300)).await;
        target.restart().await;
        for c in clients {
            c.await.unwrap();
        }
        let history = history.lock().unwrap().clone();
        let unknown = history
            .iter()
            .filter(|e| e.answer == Answer::Unknown)
            .count();
        let ran = started.elapsed();
        let checking = Instant::now();
        let verdict = check(&history);
        println!(
            "{}: {} operations ({unknown} without an answer) in {ran:.1?}, checked in {:.1?}",
            target.name,
            history.len(),
            checking.elapsed()
        );
        if let Err(v) = verdict {
            panic!(
                "{}: the history of {} is not linearizable: {:#?}",
                target.name, v.key, v.events
            );
        }
        target.shutdown().await;
    }
}
