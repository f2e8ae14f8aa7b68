//! A randomized test of etcd's watch guarantees, against a real server and a real client.
//!
//! Concurrent writers put, delete and run multi-key transactions on a small key space, and now and
//! then compact; every acknowledged write is recorded with its revision (the *truth*). Watchers on
//! different ranges (single key, prefix, range, every key, a NOPUT filter) consume at random
//! speeds — some slow enough that their stream fills and the server moves them to its unsynced
//! group; the every-key watcher does not read at all until the phase's writes are done, so that
//! this happens on any machine, however fast its reader. Midway the server is shut down and restarted on the same data; every watcher resumes
//! on a new connection from its last seen revision + 1. A watcher canceled because compaction
//! overtook it resumes from the `compact_revision` it was given.
//!
//! Each watcher's stream is then checked against the truth: for every stretch between resumes,
//! the events are exactly the truth's matching events from the stretch's start — in revision
//! order (**ordered**), none twice (**unique**), none missing (**reliable**; the only gap allowed
//! is the one a compaction cancel announced) — and the events of one revision always arrived in
//! one response (**atomic**). A resume after the restart must miss nothing (**resumable**).
//!
//! Seeds are fixed so a failure can be replayed; the failing seed is in the panic message.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use concord::store::{Server, ServerConfig};
use etcd_client::{
    Client, EventType, TxnOp, TxnOpResponse, WatchFilterType, WatchOptions, WatchStream,
};
use tokio::sync::watch as signal;

/// A tiny deterministic generator (xorshift64*), so the test needs no extra crate.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const KEYS: [&str; 10] = [
    "p/0", "p/1", "p/2", "p/3", "p/4", "p/5", "q/0", "q/1", "q/2", "z",
];
const WRITERS: usize = 3;
// Values are 8 KiB, so that unread events soon fill a slow client's HTTP/2 window (2 MiB).
const WRITES_PER_PHASE: usize = 120;

/// One change as the truth records it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Change {
    rev: i64,
    key: String,
    delete: bool,
}

/// What a watcher watches.
#[derive(Debug, Clone)]
struct Spec {
    name: &'static str,
    key: &'static str,
    end: Option<&'static str>, // None: a single key; Some("\0"): from key
    no_put: bool,
    /// Milliseconds to sleep per response, at most (0: fast).
    slowness: u64,
    /// Reads nothing until the phase's writes are done (its stream must fill).
    stalls: bool,
}

impl Spec {
    fn matches(&self, c: &Change) -> bool {
        if self.no_put && !c.delete {
            return false;
        }
        match self.end {
            None => c.key == self.key,
            Some("\0") => c.key.as_str() >= self.key,
            Some(end) => c.key.as_str() >= self.key && c.key.as_str() < end,
        }
    }

    fn options(&self, start: i64) -> WatchOptions {
        let mut o = WatchOptions::new().with_start_revision(start);
        match self.end {
            None => {}
            Some("\0") => o = o.with_from_key(),
            Some(end) => o = o.with_range(end),
        }
        if self.no_put {
            o = o.with_filters([WatchFilterType::NoPut]);
        }
        o
    }
}

fn specs() -> Vec<Spec> {
    let spec = |name, key, end, no_put, slowness| Spec {
        name,
        key,
        end,
        no_put,
        slowness,
        stalls: false,
    };
    vec![
        spec("prefix p/", "p/", Some("p0"), false, 0),
        spec("prefix p/ slow", "p/", Some("p0"), false, 30),
        spec("key p/1", "p/1", None, false, 5),
        spec("range [p/2, p/5)", "p/2", Some("p/5"), false, 15),
        Spec {
            stalls: true,
            ..spec("every key", "\0", Some("\0"), false, 40)
        },
        spec("deletes under q/", "q/", Some("q0"), true, 10),
    ]
}

/// What one watcher saw.
#[derive(Debug, Default)]
struct Seen {
    /// Per response: the changes it carried.
    responses: Vec<Vec<Change>>,
    /// Where each stretch of the stream began (its start revision), in order, with the index of
    /// its first response.
    stretches: Vec<(i64, usize)>,
    /// The last revision seen.
    last: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_see_every_change_once_in_order_across_slowness_compaction_and_restart() {
    for seed in [
        0x9e37_79b9_7f4a_7c15_u64,
        0x1234_5678_9abc_def1,
        0xfeed_f00d_dead_beef,
    ] {
        run(seed).await;
    }
}

async fn run(seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    // A tiny stream buffer, so that slow watchers really fall behind and catch up from history
    // (and compaction sometimes overtakes them).
    let config = ServerConfig {
        watch_stream_buffer: 2,
        ..ServerConfig::for_test(dir.path())
    };
    let truth = Arc::new(Mutex::new(Vec::<Change>::new()));
    let seen: Vec<Arc<Mutex<Seen>>> = specs().iter().map(|_| Arc::default()).collect();

    let mut fell_behind = 0;
    for phase in 0..2 {
        let server = Server::start(config.clone()).await.unwrap();
        let endpoint = server.client_addr().to_string();
        let (stop_tx, stop_rx) = signal::channel(false);
        let (written_tx, written_rx) = signal::channel(false);
        let mut watchers = Vec::new();
        for (i, spec) in specs().into_iter().enumerate() {
            let start = {
                let s = seen[i].lock().unwrap();
                if phase == 0 { 1 } else { s.last + 1 }
            };
            watchers.push(tokio::spawn(consume(
                endpoint.clone(),
                spec,
                start,
                seen[i].clone(),
                Rng(seed ^ ((i as u64 + 1) * 0x9e37)),
                stop_rx.clone(),
                written_rx.clone(),
            )));
        }
        // Let the watchers be created before the writes begin (phase 0 starts at revision 1
        // anyway; this only spreads the load).
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut writers = Vec::new();
        let fell_behind_before = server.watchers_fell_behind();
        for w in 0..WRITERS {
            writers.push(tokio::spawn(write(
                endpoint.clone(),
                Rng(seed.rotate_left(w as u32 * 7 + phase * 3) | 1),
                truth.clone(),
            )));
        }
        for w in writers {
            w.await.unwrap();
        }
        let _ = written_tx.send(true);
        // Wait until every watcher caught up with the last revision, then stop them.
        let last = truth
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.rev)
            .max()
            .unwrap_or(1);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        for (i, spec) in specs().iter().enumerate() {
            let wanted = truth
                .lock()
                .unwrap()
                .iter()
                .filter(|c| spec.matches(c))
                .map(|c| c.rev)
                .max()
                .unwrap_or(0);
            while seen[i].lock().unwrap().last < wanted {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "seed {seed:x}: watcher {:?} stuck at {} (wants {wanted}, store at {last})",
                    spec.name,
                    seen[i].lock().unwrap().last
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        fell_behind += server.watchers_fell_behind() - fell_behind_before;
        let _ = stop_tx.send(true);
        for w in watchers {
            w.await.unwrap();
        }
        server.shutdown().await.unwrap();
    }
    // The story is only told if the slow watchers really fell behind their streams at least once
    // (counted by the server, not sampled); after the restart they also start behind, on history.
    println!("seed {seed:x}: watchers fell behind their streams {fell_behind} times");
    assert!(
        fell_behind > 0,
        "seed {seed:x}: slow watchers must have fallen behind"
    );
    check(seed, &truth.lock().unwrap(), &seen);
}

/// A writer: random puts, deletes, 3-key transactions and compactions; records what it did.
async fn write(endpoint: String, mut rng: Rng, truth: Arc<Mutex<Vec<Change>>>) {
    let mut c = Client::connect([endpoint], None).await.unwrap();
    for _ in 0..WRITES_PER_PHASE {
        let key = KEYS[rng.below(KEYS.len() as u64) as usize];
        match rng.below(20) {
            0..=9 => {
                let value = format!("{:08192}", rng.next());
                let r = c.put(key, value, None).await.unwrap();
                let rev = r.header().unwrap().revision();
                record(&truth, rev, key, false);
            }
            10..=13 => {
                let r = c.delete(key, None).await.unwrap();
                if r.deleted() == 1 {
                    record(&truth, r.header().unwrap().revision(), key, true);
                }
            }
            14..=18 => {
                // Three distinct keys: put, put, delete.
                let mut picked: Vec<&str> = Vec::new();
                while picked.len() < 3 {
                    let k = KEYS[rng.below(KEYS.len() as u64) as usize];
                    if !picked.contains(&k) {
                        picked.push(k);
                    }
                }
                let value = "t".repeat(8192);
                let txn = etcd_client::Txn::new().and_then([
                    TxnOp::put(picked[0], value.clone(), None),
                    TxnOp::put(picked[1], value, None),
                    TxnOp::delete(picked[2], None),
                ]);
                let r = c.txn(txn).await.unwrap();
                let rev = r.header().unwrap().revision();
                record(&truth, rev, picked[0], false);
                record(&truth, rev, picked[1], false);
                if let Some(TxnOpResponse::Delete(d)) = r.op_responses().get(2)
                    && d.deleted() == 1
                {
                    record(&truth, rev, picked[2], true);
                }
            }
            _ => {
                let current = c.get("none", None).await.unwrap();
                let rev = current.header().unwrap().revision() - rng.below(10) as i64;
                // Another writer may have compacted further already: that is fine.
                let _ = c.compact(rev.max(1), None).await;
            }
        }
    }
}

fn record(truth: &Mutex<Vec<Change>>, rev: i64, key: &str, delete: bool) {
    truth.lock().unwrap().push(Change {
        rev,
        key: key.to_string(),
        delete,
    });
}

/// A watcher: consumes at its own pace from `start`, resuming after compaction cancels.
async fn consume(
    endpoint: String,
    spec: Spec,
    start: i64,
    seen: Arc<Mutex<Seen>>,
    mut rng: Rng,
    mut stop: signal::Receiver<bool>,
    mut written: signal::Receiver<bool>,
) {
    let mut c = Client::connect([endpoint], None).await.unwrap();
    let mut start = start;
    'stretches: loop {
        let mut w = open(&mut c, &spec, start).await;
        {
            let mut s = seen.lock().unwrap();
            let at = s.responses.len();
            s.stretches.push((start, at));
        }
        loop {
            if spec.stalls {
                let _ = written.wait_for(|w| *w).await;
            }
            let resp = tokio::select! {
                resp = w.message() => resp,
                _ = stop.wait_for(|s| *s) => return,
            };
            let resp = match resp {
                Ok(Some(resp)) => resp,
                Ok(None) | Err(_) => return, // the server went away (the restart)
            };
            if resp.canceled() {
                assert!(
                    resp.compact_revision() > 0,
                    "{}: canceled without a compaction: {resp:?}",
                    spec.name
                );
                start = resp.compact_revision();
                continue 'stretches;
            }
            let changes: Vec<Change> = resp
                .events()
                .iter()
                .map(|e| {
                    let kv = e.kv().unwrap();
                    Change {
                        rev: kv.mod_revision(),
                        key: kv.key_str().unwrap().to_string(),
                        delete: e.event_type() == EventType::Delete,
                    }
                })
                .collect();
            if let Some(last) = changes.last() {
                let mut s = seen.lock().unwrap();
                s.last = last.rev;
                s.responses.push(changes);
            }
            if spec.slowness > 0 {
                tokio::time::sleep(Duration::from_millis(rng.below(spec.slowness + 1))).await;
            }
        }
    }
}

async fn open(c: &mut Client, spec: &Spec, start: i64) -> WatchStream {
    let mut w = c.watch(spec.key, Some(spec.options(start))).await.unwrap();
    let created = w.message().await.unwrap().unwrap();
    assert!(created.created() && !created.canceled(), "{created:?}");
    w
}

fn check(seed: u64, truth: &[Change], seen: &[Arc<Mutex<Seen>>]) {
    let mut truth = truth.to_vec();
    truth.sort();
    let mut compaction_resumes = 0;
    for (spec, seen) in specs().iter().zip(seen) {
        let seen = seen.lock().unwrap();
        let fail = |what: String| -> ! { panic!("seed {seed:x}, watcher {:?}: {what}", spec.name) };
        // Atomic: a revision's events are in one response.
        let mut response_of: BTreeMap<i64, usize> = BTreeMap::new();
        for (i, resp) in seen.responses.iter().enumerate() {
            for c in resp {
                if let Some(&j) = response_of.get(&c.rev)
                    && j != i
                {
                    fail(format!(
                        "revision {} split over responses {j} and {i}",
                        c.rev
                    ));
                }
                response_of.insert(c.rev, i);
            }
        }
        // Ordered, unique, reliable: each stretch is exactly the truth from its start on, up to
        // where the next stretch begins.
        for (k, &(start, first)) in seen.stretches.iter().enumerate() {
            let (next_start, end) = seen
                .stretches
                .get(k + 1)
                .map_or((i64::MAX, seen.responses.len()), |&(s, i)| (s, i));
            let mut got: Vec<&Change> = seen.responses[first..end].iter().flatten().collect();
            if let Some(w) = got.windows(2).find(|w| w[0].rev > w[1].rev) {
                fail(format!("out of order: {:?} before {:?}", w[0], w[1]));
            }
            // Within a revision, events come in the transaction's order; the truth is sorted.
            got.sort();
            let last_got = got.last().map_or(start - 1, |c| c.rev);
            let want: Vec<&Change> = truth
                .iter()
                .filter(|c| spec.matches(c) && c.rev >= start && c.rev <= last_got)
                .filter(|c| c.rev < next_start)
                .collect();
            if got != want {
                let diff = got.iter().zip(&want).position(|(a, b)| a != b);
                fail(format!(
                    "stretch from {start}: got {} events, want {}; first difference at {diff:?}: \
                     got {:?} want {:?}",
                    got.len(),
                    want.len(),
                    diff.map(|d| got[d]),
                    diff.map(|d| want[d]),
                ));
            }
            let resumed_at_compaction = next_start != i64::MAX && next_start > last_got + 1;
            if resumed_at_compaction {
                compaction_resumes += 1;
            }
        }
        // Everything up to the end was seen (the last stretch runs to the final revision).
        let wanted = truth
            .iter()
            .filter(|c| spec.matches(c))
            .map(|c| c.rev)
            .max();
        if let Some(wanted) = wanted
            && seen.last < wanted
        {
            fail(format!("ended at {} before {wanted}", seen.last));
        }
    }
    println!(
        "seed {seed:x}: {} changes checked; {compaction_resumes} resumes after compaction",
        truth.len()
    );
}
