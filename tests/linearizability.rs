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

use common::linearizable::{Answer, Event, Op, check};
use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};

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
/// An operation without an answer by then counts as "may have happened".
const OP_TIMEOUT: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_across_a_restart_are_linearizable_on_concord_and_etcd() {
    for mut target in common::Target::start_all().await {
        let started = Instant::now();
        let history = Arc::new(Mutex::new(Vec::new()));
        let mut clients = Vec::new();
        for c in 0..CLIENTS {
            let endpoint = target.endpoint();
            let history = history.clone();
            clients.push(tokio::spawn(async move {
                run_client(c as u64 + 1, endpoint, started, history).await
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

/// A tiny deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

async fn run_client(id: u64, endpoint: String, started: Instant, history: Arc<Mutex<Vec<Event>>>) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ id.wrapping_mul(0x1234_5678_9abc_def1));
    let client = Client::connect([endpoint.as_str()], None).await.unwrap();
    let now = || started.elapsed().as_nanos() as u64;
    for n in 0..OPS_PER_CLIENT {
        let key = KEYS[rng.below(KEYS.len() as u64) as usize].to_string();
        // Unique values, so that a read tells exactly which write it saw.
        let value = format!("c{id}-{n}");
        let op = match rng.below(10) {
            0..=2 => Op::Put { value },
            3..=5 => Op::Get,
            6 => Op::Delete,
            _ => Op::Cas {
                expect: match rng.below(3) {
                    0 => None,
                    _ => Some(format!(
                        "c{}-{}",
                        rng.below(CLIENTS as u64) + 1,
                        n.saturating_sub(1)
                    )),
                },
                value,
            },
        };
        let invoked = now();
        let call = perform(client.clone(), &key, &op);
        let answer = match tokio::time::timeout(OP_TIMEOUT, call).await {
            Ok(Ok(answer)) => answer,
            // No answer, or an error that does not say the operation failed for sure: it may
            // have happened (a restart cut the connection).
            Ok(Err(_)) | Err(_) => Answer::Unknown,
        };
        let answered = (answer != Answer::Unknown).then(now);
        history.lock().unwrap().push(Event {
            key,
            op,
            invoked,
            answered,
            answer,
        });
        if answered.is_none() {
            // The server is restarting: give it a moment instead of piling up unknowns.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn perform(mut client: Client, key: &str, op: &Op) -> Result<Answer, etcd_client::Error> {
    Ok(match op {
        Op::Put { value } => {
            client.put(key, value.as_str(), None).await?;
            Answer::Put
        }
        Op::Get => {
            let resp = client.get(key, None).await?;
            let value = resp
                .kvs()
                .first()
                .map(|kv| kv.value_str().unwrap().to_string());
            Answer::Get(value)
        }
        Op::Delete => Answer::Delete(client.delete(key, None).await?.deleted() as u64),
        Op::Cas { expect, value } => {
            let compare = match expect {
                None => Compare::create_revision(key, CompareOp::Equal, 0),
                Some(v) => Compare::value(key, CompareOp::Equal, v.as_str()),
            };
            let txn = Txn::new()
                .when([compare])
                .and_then([TxnOp::put(key, value.as_str(), None)]);
            Answer::Cas(client.txn(txn).await?.succeeded())
        }
    })
}
