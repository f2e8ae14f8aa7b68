//! A linearizability checker for histories of key-value operations (Wing & Gong's search with
//! Lowe's memoization, as in Knossos and porcupine).
//!
//! A *history* is what concurrent clients observed: for each operation, when it was invoked, when
//! its answer arrived, and the answer. The history is **linearizable** if every operation can be
//! given a single instant between its invocation and its answer such that, taken in the order of
//! those instants, the operations are a legal sequential run of the model (a map from keys to
//! values) that produces exactly the answers observed. An operation whose answer never came (it
//! timed out, the connection broke) *may or may not* have taken effect: it is given an answer time
//! of "never" and any answer is accepted, so the search may place it anywhere after its invocation
//! — including after everything else, which is the same as not at all.
//!
//! The search ([`check`]) walks the history in time order, trying to linearize an operation whose
//! invocation has been reached; reaching an answer whose operation is still not linearized means
//! the choices so far were wrong, so it backtracks. It remembers every (set of linearized
//! operations, model state) pair it has seen, so no configuration is explored twice.
//!
//! Every operation here touches one key, and linearizability is compositional (a history is
//! linearizable iff the sub-history of each object is), so [`check`] checks each key on its own:
//! the search is exponential only in the concurrency on one key.

use std::collections::{BTreeMap, HashSet};

/// An operation on one key, as a client issued it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        value: String,
    },
    Get,
    Delete,
    /// A transaction: if the value is `expect` (`None`: the key is absent), put `value`.
    Cas {
        expect: Option<String>,
        value: String,
    },
}

/// What the client observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Put,
    Get(Option<String>),
    /// How many keys were deleted (0 or 1).
    Delete(u64),
    /// Whether the compare held.
    Cas(bool),
    /// No answer came (timeout, broken connection): the operation may or may not have happened.
    Unknown,
}

/// One operation of a history. Times are in any monotonic unit (e.g. nanoseconds since the
/// start); `answered` is `None` when no answer came.
#[derive(Debug, Clone)]
pub struct Event {
    pub key: String,
    pub op: Op,
    pub invoked: u64,
    pub answered: Option<u64>,
    pub answer: Answer,
}

/// The sequential model of one key: its value, if any. Applies `op`; `None` if `answer` could
/// not have come from running `op` on `state`.
fn step(state: &Option<String>, op: &Op, answer: &Answer) -> Option<Option<String>> {
    let (next, produced) = match op {
        Op::Put { value } => (Some(value.clone()), Answer::Put),
        Op::Get => (state.clone(), Answer::Get(state.clone())),
        Op::Delete => (None, Answer::Delete(u64::from(state.is_some()))),
        Op::Cas { expect, value } => {
            if state == expect {
                (Some(value.clone()), Answer::Cas(true))
            } else {
                (state.clone(), Answer::Cas(false))
            }
        }
    };
    (*answer == Answer::Unknown || *answer == produced).then_some(next)
}

/// Why a history is not linearizable: the key whose sub-history has no linearization, and its
/// operations (for the failure message).
#[derive(Debug)]
pub struct Violation {
    pub key: String,
    pub events: Vec<Event>,
}

/// Checks `history` (see the module doc); every key starts absent.
pub fn check(history: &[Event]) -> Result<(), Violation> {
    let mut by_key: BTreeMap<&str, Vec<Event>> = BTreeMap::new();
    for event in history {
        by_key.entry(&event.key).or_default().push(event.clone());
    }
    for (key, events) in by_key {
        if !check_one(&events) {
            return Err(Violation {
                key: key.to_string(),
                events,
            });
        }
    }
    Ok(())
}

/// A point in time of a history: an invocation or an answer of operation `op`.
#[derive(Debug, Clone, Copy)]
struct Entry {
    op: usize,
    call: bool,
    time: u64,
}

/// Wing & Gong with memoization over the events of one key.
fn check_one(events: &[Event]) -> bool {
    // Entries in time order; at equal times invocations come first (an answer and an invocation
    // at the same instant may overlap).
    let mut entries: Vec<Entry> = Vec::with_capacity(events.len() * 2);
    for (i, e) in events.iter().enumerate() {
        entries.push(Entry {
            op: i,
            call: true,
            time: e.invoked,
        });
        entries.push(Entry {
            op: i,
            call: false,
            time: e.answered.unwrap_or(u64::MAX),
        });
    }
    entries.sort_by_key(|e| (e.time, !e.call));
    // A doubly linked list over `entries` (index n is the head sentinel), so that linearized
    // operations can be lifted out and put back in O(1).
    let n = entries.len();
    let mut next: Vec<usize> = (1..=n).collect(); // next[i] for i in 0..n; n means the end
    let mut prev: Vec<usize> = (0..n).map(|i| if i == 0 { n } else { i - 1 }).collect();
    let mut head = if n == 0 { n } else { 0 };
    let mut answer_of = vec![0; events.len()];
    for (i, e) in entries.iter().enumerate() {
        if !e.call {
            answer_of[e.op] = i;
        }
    }

    let unlink = |i: usize, next: &mut Vec<usize>, prev: &mut Vec<usize>, head: &mut usize| {
        let (p, q) = (prev[i], next[i]);
        if p == n {
            *head = q;
        } else {
            next[p] = q;
        }
        if q != n {
            prev[q] = p;
        }
    };
    let relink = |i: usize, next: &mut Vec<usize>, prev: &mut Vec<usize>, head: &mut usize| {
        let (p, q) = (prev[i], next[i]);
        if p == n {
            *head = i;
        } else {
            next[p] = i;
        }
        if q != n {
            prev[q] = i;
        }
    };

    let mut state: Option<String> = None;
    let mut linearized = vec![false; events.len()];
    let mut seen: HashSet<(Vec<bool>, Option<String>)> = HashSet::new();
    // (call entry index, state before it) for each linearized operation, in order.
    let mut stack: Vec<(usize, Option<String>)> = Vec::new();
    let mut at = head;
    while head != n {
        if at == n {
            // Nothing left to try from here: undo the last choice.
            let Some((call, before)) = stack.pop() else {
                return false;
            };
            let op = entries[call].op;
            linearized[op] = false;
            state = before;
            relink(answer_of[op], &mut next, &mut prev, &mut head);
            relink(call, &mut next, &mut prev, &mut head);
            at = next[call];
            continue;
        }
        let entry = entries[at];
        if entry.call {
            let event = &events[entry.op];
            if let Some(after) = step(&state, &event.op, &event.answer) {
                linearized[entry.op] = true;
                if seen.insert((linearized.clone(), after.clone())) {
                    stack.push((at, std::mem::replace(&mut state, after)));
                    unlink(at, &mut next, &mut prev, &mut head);
                    unlink(answer_of[entry.op], &mut next, &mut prev, &mut head);
                    at = head;
                    continue;
                }
                linearized[entry.op] = false;
            }
            at = next[at];
        } else {
            // An answer whose operation is not linearized yet: it had to be, before this point.
            at = n;
        }
    }
    true
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

/// An operation without an answer by then counts as "may have happened".
const OP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Client `id` runs `ops` random operations (puts, gets, deletes, compare-and-swaps; values
/// `c<id>-<n>`, unique, so that a read tells which write it saw) on `keys`, one at a time, and
/// records each in `history` with times since `started`. It talks to `endpoints[0]` and moves to
/// the next endpoint whenever an operation gets no answer (a member stopped or restarted).
pub async fn record(
    id: u64,
    endpoints: &[String],
    keys: &[&str],
    ops: usize,
    started: std::time::Instant,
    history: std::sync::Arc<std::sync::Mutex<Vec<Event>>>,
) {
    use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ id.wrapping_mul(0x1234_5678_9abc_def1));
    let connect = |i: usize| {
        let endpoint = endpoints[i % endpoints.len()].clone();
        async move { Client::connect([endpoint], None).await }
    };
    let mut at = 0;
    let mut client = connect(at).await.unwrap();
    let now = || started.elapsed().as_nanos() as u64;
    for n in 0..ops {
        let key = keys[rng.below(keys.len() as u64) as usize].to_string();
        let value = format!("c{id}-{n}");
        let op = match rng.below(10) {
            0..=2 => Op::Put { value },
            3..=5 => Op::Get,
            6 => Op::Delete,
            _ => Op::Cas {
                expect: match rng.below(3) {
                    0 => None,
                    _ => Some(format!("c{}-{}", rng.below(4) + 1, n.saturating_sub(1))),
                },
                value,
            },
        };
        let invoked = now();
        let mut c = client.clone();
        let call = async {
            Ok::<_, etcd_client::Error>(match &op {
                Op::Put { value } => {
                    c.put(key.as_str(), value.as_str(), None).await?;
                    Answer::Put
                }
                Op::Get => {
                    let resp = c.get(key.as_str(), None).await?;
                    let value = resp.kvs().first();
                    Answer::Get(value.map(|kv| kv.value_str().unwrap().to_string()))
                }
                Op::Delete => Answer::Delete(c.delete(key.as_str(), None).await?.deleted() as u64),
                Op::Cas { expect, value } => {
                    let compare = match expect {
                        None => Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
                        Some(v) => Compare::value(key.as_str(), CompareOp::Equal, v.as_str()),
                    };
                    let txn = Txn::new().when([compare]).and_then([TxnOp::put(
                        key.as_str(),
                        value.as_str(),
                        None,
                    )]);
                    Answer::Cas(c.txn(txn).await?.succeeded())
                }
            })
        };
        // An error does not say the operation failed for sure (a write may be committed and
        // its answer lost): it counts as unknown too.
        let answer = match tokio::time::timeout(OP_TIMEOUT, call).await {
            Ok(Ok(answer)) => answer,
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
            // Try another member, after a moment instead of piling up unknowns.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            at += 1;
            if let Ok(next) = connect(at).await {
                client = next;
            }
        }
    }
}

/// Several clients recording one history at once (see [`record`]): client `c` starts on member
/// `c % n` of `endpoints`, so some start on followers, and each moves on when a member does not
/// answer.
pub struct Recording {
    started: std::time::Instant,
    history: std::sync::Arc<std::sync::Mutex<Vec<Event>>>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl Recording {
    /// Starts `clients` clients, each running `ops` operations on `keys`.
    pub fn start(
        clients: u64,
        endpoints: &[String],
        keys: &'static [&'static str],
        ops: usize,
    ) -> Recording {
        let started = std::time::Instant::now();
        let history = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let clients = (0..clients)
            .map(|c| {
                let mut mine = endpoints.to_vec();
                mine.rotate_left(c as usize % endpoints.len());
                let history = history.clone();
                tokio::spawn(async move { record(c + 1, &mine, keys, ops, started, history).await })
            })
            .collect();
        Recording {
            started,
            history,
            clients,
        }
    }

    /// The time since the recording started, in the history's unit (nanoseconds).
    pub fn now(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64
    }

    /// Waits for every client; the whole history.
    pub async fn finish(self) -> Vec<Event> {
        for client in self.clients {
            client.await.unwrap();
        }
        self.history.lock().unwrap().clone()
    }
}

/// How many operations of `history` got no answer.
pub fn unanswered(history: &[Event]) -> usize {
    history
        .iter()
        .filter(|e| e.answer == Answer::Unknown)
        .count()
}
