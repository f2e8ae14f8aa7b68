//! Runs a [`Plan`]: `--clients` tasks, each with one request in flight at a time (closed loop).
//!
//! Client `c` uses connection `c % conns`. Each client sends a request, waits for its reply (or
//! for `--timeout`, which counts as an error), records the latency from just before sending to
//! just after the reply, and sends the next one. Requests *started* during the warmup are neither
//! timed nor counted. After the warmup, a client starts no request once `--duration` has passed
//! (or once `--total` requests have been started by all clients together); requests in flight
//! are waited for. The measured time runs from the end of the warmup to the last reply, so
//! `ops_per_sec = ops / duration_s`, where `ops` counts requests that got a reply (errors are
//! counted apart and are not in `ops` nor in the latency histogram).
//!
//! Each client keeps its own histogram (microseconds, 3 significant digits); they are merged at
//! the end, so the request loop shares nothing but two relaxed counters read by the progress bar.
//! With [`Plan::samples`], each client also keeps every measured request's start and latency
//! ([`Sample`]), for workloads that split the run into phases afterwards (`lease-expiry-storm`).

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use etcd_client::KvClient;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::keys::{KeyOrder, KeyPicker};
use crate::report::micros;
use crate::workload::{Op, Plan, Reply, Stop};

/// How many failed requests are described on stderr; the rest are only counted.
const ERRORS_SHOWN: usize = 5;

/// One measured request, kept when [`Plan::samples`] is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// When it was sent, in microseconds since the end of the warmup.
    pub start_us: u64,
    pub latency_us: u64,
    /// False for a failed request.
    pub ok: bool,
}

/// What a run measured.
pub struct Measurement {
    /// The end of the warmup, where the measured time starts.
    pub measure_start: Instant,
    pub elapsed: Duration,
    pub ops: u64,
    pub errors: u64,
    pub txn_conflicts: u64,
    pub range_empty: u64,
    /// Latencies in microseconds of the requests counted in `ops`.
    pub latency_us: Histogram<u64>,
    /// Every measured request, in no particular order; empty unless [`Plan::samples`].
    pub samples: Vec<Sample>,
}

/// State shared by all clients of one run.
struct Shared {
    op: Op,
    seed: u64,
    key_order: KeyOrder,
    timeout: Duration,
    samples: bool,
    measure_start: Instant,
    deadline: Option<Instant>,
    total: Option<u64>,
    started: AtomicU64,
    sequence: AtomicU64,
    /// Measured replies and errors so far, for the progress bar.
    replies: AtomicU64,
    errors: AtomicU64,
    errors_shown: AtomicUsize,
    progress: ProgressBar,
}

impl Shared {
    /// Whether a request starting at `now` may be sent (always true during the warmup).
    fn admit(&self, now: Instant) -> bool {
        if now < self.measure_start {
            return true;
        }
        match (self.deadline, self.total) {
            (Some(deadline), _) => now < deadline,
            (None, Some(total)) => self.started.fetch_add(1, Ordering::Relaxed) < total,
            (None, None) => false,
        }
    }

    /// Prints the first [`ERRORS_SHOWN`] failures; `message` is only formatted for those.
    fn report_error(&self, client: usize, measured: bool, message: impl FnOnce() -> String) {
        if self.errors_shown.fetch_add(1, Ordering::Relaxed) < ERRORS_SHOWN {
            let when = if measured { "" } else { " (warmup)" };
            let message = message();
            self.progress
                .suspend(|| eprintln!("error: client {client}{when}: {message}"));
        }
    }
}

/// One client's counts.
struct ClientStats {
    ops: u64,
    errors: u64,
    txn_conflicts: u64,
    range_empty: u64,
    last_reply: Option<Instant>,
    latency_us: Histogram<u64>,
    samples: Vec<Sample>,
}

/// Runs the measured part of `plan` on the prepared connections.
pub async fn run(plan: &Plan, op: Op, conns: &[KvClient]) -> Measurement {
    let measure_start = Instant::now() + plan.warmup;
    let (deadline, total) = match plan.stop {
        Stop::Duration(d) => (Some(measure_start + d), None),
        Stop::Total(n) => (None, Some(n)),
    };
    let shared = Arc::new(Shared {
        op,
        seed: plan.seed,
        key_order: plan.key_order,
        timeout: plan.timeout,
        samples: plan.samples,
        measure_start,
        deadline,
        total,
        started: AtomicU64::new(0),
        sequence: AtomicU64::new(0),
        replies: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        errors_shown: AtomicUsize::new(0),
        progress: progress_bar(plan),
    });
    let ticker = tokio::spawn(tick(shared.clone(), plan.clone()));
    let handles: Vec<_> = (0..plan.clients)
        .map(|c| tokio::spawn(client(c, conns[c % conns.len()].clone(), shared.clone())))
        .collect();
    let mut stats = Vec::with_capacity(handles.len());
    for (c, handle) in handles.into_iter().enumerate() {
        match handle.await {
            Ok(s) => stats.push(s),
            Err(e) => shared.report_error(c, true, || format!("client task failed: {e}")),
        }
    }
    ticker.abort();
    shared.progress.finish_and_clear();
    merge(plan, measure_start, stats)
}

/// One client: send, wait, record, repeat until the plan says stop.
async fn client(id: usize, mut kv: KvClient, shared: Arc<Shared>) -> ClientStats {
    let op = &shared.op;
    let mut picker = KeyPicker::new(
        shared.key_order,
        op.key_count(),
        shared.seed.wrapping_add(id as u64),
        &shared.sequence,
    );
    let mut stats = ClientStats {
        ops: 0,
        errors: 0,
        txn_conflicts: 0,
        range_empty: 0,
        last_reply: None,
        latency_us: new_histogram(shared.timeout),
        samples: Vec::new(),
    };
    loop {
        let start = Instant::now();
        if !shared.admit(start) {
            return stats;
        }
        let measured = start >= shared.measure_start;
        let result =
            tokio::time::timeout(shared.timeout, op.execute(&mut kv, picker.next_index())).await;
        let end = Instant::now();
        let reply = match result {
            Ok(Ok(reply)) => Some(reply),
            Ok(Err(e)) => {
                shared.report_error(id, measured, || e.to_string());
                None
            }
            Err(_) => {
                let timeout = shared.timeout;
                shared.report_error(id, measured, || format!("timed out after {timeout:?}"));
                None
            }
        };
        if measured {
            stats.record(&shared, reply, end - start, end);
            if shared.samples {
                stats.samples.push(Sample {
                    start_us: micros(start - shared.measure_start),
                    latency_us: micros(end - start),
                    ok: reply.is_some(),
                });
            }
        }
    }
}

impl ClientStats {
    /// Counts one measured request: `reply` is `None` for an error.
    fn record(&mut self, shared: &Shared, reply: Option<Reply>, latency: Duration, end: Instant) {
        self.last_reply = Some(end);
        let Some(reply) = reply else {
            self.errors += 1;
            shared.errors.fetch_add(1, Ordering::Relaxed);
            return;
        };
        self.ops += 1;
        shared.replies.fetch_add(1, Ordering::Relaxed);
        self.latency_us.saturating_record(micros(latency).max(1));
        match reply {
            Reply::Done => {}
            Reply::Conflict => self.txn_conflicts += 1,
            Reply::Empty => self.range_empty += 1,
        }
    }
}

/// Adds up the clients' counts; the measured time ends with the last reply.
fn merge(plan: &Plan, measure_start: Instant, stats: Vec<ClientStats>) -> Measurement {
    let mut m = Measurement {
        measure_start,
        elapsed: Duration::ZERO,
        ops: 0,
        errors: 0,
        txn_conflicts: 0,
        range_empty: 0,
        latency_us: new_histogram(plan.timeout),
        samples: Vec::new(),
    };
    let mut last = None;
    for s in stats {
        m.ops += s.ops;
        m.errors += s.errors;
        m.txn_conflicts += s.txn_conflicts;
        m.range_empty += s.range_empty;
        // Same bounds on both sides, so adding cannot fail.
        let _ = m.latency_us.add(&s.latency_us);
        m.samples.extend(s.samples);
        last = last.max(s.last_reply);
    }
    m.elapsed = match (last, plan.stop) {
        (Some(last), _) => last.saturating_duration_since(measure_start),
        (None, Stop::Duration(d)) => d,
        (None, Stop::Total(_)) => Duration::ZERO,
    };
    m
}

/// A histogram in microseconds from 1 µs to twice the timeout (at least 2 s).
fn new_histogram(timeout: Duration) -> Histogram<u64> {
    let high = (timeout.as_micros() as u64)
        .saturating_mul(2)
        .max(2_000_000);
    Histogram::new_with_bounds(1, high, 3).expect("valid histogram bounds")
}

/// A progress bar on stderr, hidden with `--quiet` or when stderr is not a terminal.
fn progress_bar(plan: &Plan) -> ProgressBar {
    if plan.quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let len = match plan.stop {
        Stop::Duration(d) => (plan.warmup + d).as_millis() as u64,
        Stop::Total(n) => n,
    };
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template("{prefix} {elapsed_precise} [{bar:20}] {wide_msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(plan.workload.name());
    bar
}

/// Updates the progress bar five times a second until aborted.
async fn tick(shared: Arc<Shared>, plan: Plan) {
    if shared.progress.is_hidden() {
        return;
    }
    let start = Instant::now();
    let mut interval = tokio::time::interval(Duration::from_millis(200));
    loop {
        interval.tick().await;
        let now = Instant::now();
        let replies = shared.replies.load(Ordering::Relaxed);
        let errors = shared.errors.load(Ordering::Relaxed);
        let position = match plan.stop {
            Stop::Duration(_) => (now - start).as_millis() as u64,
            Stop::Total(_) => replies + errors,
        };
        shared.progress.set_position(position);
        let message = if now < shared.measure_start {
            "warming up".to_string()
        } else {
            let secs = (now - shared.measure_start).as_secs_f64().max(1e-3);
            format!("{replies} ops {:.0}/s {errors} err", replies as f64 / secs)
        };
        shared.progress.set_message(message);
    }
}
