//! `watch-fanout`: many watchers on one prefix, a fixed write rate, and an exact delivery check.
//!
//! The run, in order:
//! 1. Read the server's RSS (with `--server-pid`) after a second's pause, then open `--streams` Watch streams and create
//!    `--watchers` watchers on a fresh prefix, spread evenly (stream `s` uses connection
//!    `s % conns`). Each stream sends its create requests while reading the `created` replies, so
//!    a stream with thousands of watchers cannot stall on HTTP/2 flow control. Once all are
//!    created, wait a second and read the RSS again: the difference over the watchers is the
//!    server's memory per idle watcher.
//! 2. `--clients` writers put to keys under the prefix, together at `--rate` puts/s: writer `w`
//!    sends every `clients / rate` seconds, shifted by `w / rate`, so puts are evenly spaced. A
//!    writer whose put is still in flight when its next turn comes skips that turn (so the
//!    achieved rate shows when the server cannot keep up). Each value starts with its send time
//!    (nanoseconds since the run's start, little-endian), so a watcher computes the delivery
//!    latency of every event from the event alone: send of the put to receipt of the event.
//!    Writers run for `--warmup` plus `--duration` seconds; puts sent during the warmup are
//!    checked but not timed.
//! 3. Drain: the last acknowledged revision is the target; wait until every watcher has seen it
//!    (at most `--drain-timeout`).
//! 4. Check every watcher's revisions against the acknowledged ones ([`crate::revisions`]).
//!
//! The client side is kept cheap: one task per stream, which decodes each response once, looks
//! the watcher up by watch id and records into its own histogram; nothing is shared per event
//! except one relaxed counter. Client and server still share the machine's cores, so the summary
//! reports the CPU each side used while writing and draining.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, DeleteOptions, KvClient, WatchClient, WatchOptions, WatchResponse, WatchResponseStream,
};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::error::BenchError;
use crate::procfs::{CpuMeter, CpuUse, Process};
use crate::report::{BenchResult, latency_histogram, quantile_ms, record_latency, round};
use crate::revisions::{Delivery, Revision, RevisionSet, WatcherLog};
use crate::workload::{self, Plan};

/// How long the server gets to settle after the watchers are created, before its RSS is read.
const SETTLE: Duration = Duration::from_secs(1);
/// How often the drain checks whether all watchers caught up.
const DRAIN_POLL: Duration = Duration::from_millis(20);
/// Bytes at the start of each value that hold its send time.
const STAMP: usize = 8;

/// `watch-fanout`'s own settings.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    pub watchers: usize,
    pub streams: usize,
    /// Target puts per second, all writers together.
    pub rate: f64,
    pub drain_timeout: Duration,
    pub server_pid: Option<u32>,
}

/// What `watch-fanout` measured besides the common fields (see [`BenchResult`]: there `ops` is
/// events delivered, the latency is delivery latency, `errors` failed puts and streams).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WatchStats {
    pub watchers: usize,
    pub streams: usize,
    /// Watchers the server confirmed (`created`).
    pub created: usize,
    pub target_rate: f64,
    /// Acknowledged puts, warmup included: the revisions every watcher must see.
    pub puts: u64,
    /// Acknowledged puts sent after the warmup, and their rate over `--duration`.
    pub puts_measured: u64,
    pub put_rate: f64,
    pub put_errors: u64,
    pub put_p50_ms: f64,
    pub put_p99_ms: f64,
    /// With at most --clients puts in flight, the achieved rate is at most clients / mean.
    #[serde(default)]
    pub put_mean_ms: f64,
    /// `puts × watchers`.
    pub events_expected: u64,
    /// Expected (watcher, revision) pairs received, each counted once.
    pub events_delivered: u64,
    /// Events received in all, duplicates and unexpected ones included.
    pub events_received: u64,
    pub missing: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub unexpected: u64,
    /// Watchers the server canceled, or lost with their stream.
    pub canceled: u64,
    /// Seconds to create all watchers.
    pub setup_s: f64,
    /// Seconds from the last put's reply until every watcher had seen it (or the timeout).
    pub drain_s: f64,
    /// Whether every watcher saw the last put within `--drain-timeout`.
    pub drained: bool,
    pub server_rss_before_kib: Option<u64>,
    pub server_rss_after_kib: Option<u64>,
    /// Server RSS growth per created watcher, in bytes.
    pub server_bytes_per_watcher: Option<f64>,
    /// Cores used while writing and draining.
    pub client_cpu_cores: Option<f64>,
    pub server_cpu_cores: Option<f64>,
}

/// What the stream tasks should do; they follow it through a `watch` channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    /// The writers stopped: a watcher is caught up once it has seen this revision.
    Drain(Revision),
    Stop,
}

/// Counters the stream tasks share with the main task (relaxed: only read for progress).
#[derive(Default)]
struct Progress {
    events: AtomicU64,
    caught_up: AtomicUsize,
}

/// Everything a stream task needs, fixed for the run.
struct StreamSetup {
    client: WatchClient,
    prefix: Vec<u8>,
    watchers: usize,
    base: Instant,
    timeout: Duration,
}

/// What one stream task reports at the end.
struct StreamReport {
    logs: Vec<WatcherLog>,
    latency_us: Histogram<u64>,
    canceled: u64,
    stray_events: u64,
    error: Option<String>,
}

/// One watcher as its stream task tracks it.
#[derive(Default)]
struct WatcherState {
    log: WatcherLog,
    caught_up: bool,
}

/// One writer's results.
struct WriterReport {
    revisions: Vec<Revision>,
    puts_measured: u64,
    errors: u64,
    latency_us: Histogram<u64>,
    error: Option<String>,
}

/// Runs `watch-fanout` and returns its result.
pub async fn run(plan: &Plan, cfg: &WatchConfig, label: String) -> Result<BenchResult, BenchError> {
    let say = |what: String| {
        if !plan.quiet {
            eprintln!("watch-fanout: {what}");
        }
    };
    let clients = workload::connect_clients(plan).await?;
    let server = cfg.server_pid.map(Process::Pid);
    let prefix = workload::unique_prefix("watch");
    let base = Instant::now();
    // Read both RSS values after the same pause, so that the server is in the same state.
    tokio::time::sleep(SETTLE).await;
    let rss_before = server.and_then(Process::rss_kib);

    say(format!(
        "creating {} watchers on {} streams over {} connections",
        cfg.watchers, cfg.streams, plan.conns
    ));
    let (phase_tx, phase_rx) = watch::channel(Phase::Running);
    let (start_tx, start_rx) = watch::channel(None);
    let progress = Arc::new(Progress::default());
    let setup_start = Instant::now();
    let channels = Channels {
        start: start_rx,
        phase: phase_rx,
        progress: progress.clone(),
    };
    let (tasks, created) = open_streams(plan, cfg, &clients, &prefix, base, channels).await?;
    let setup_s = setup_start.elapsed().as_secs_f64();
    tokio::time::sleep(SETTLE).await;
    let rss = (rss_before, server.and_then(Process::rss_kib));
    say(format!(
        "{created} watchers created in {setup_s:.2} s; writing at {} puts/s with {} writers \
         for {:?} + {:?}",
        cfg.rate,
        plan.clients,
        plan.warmup,
        plan.duration()
    ));

    let start = Instant::now();
    let _ = start_tx.send(Some(start + plan.warmup));
    let cpu = CpuMeter::start(cfg.server_pid);
    let writes = write(plan, cfg, &clients, &prefix, base, start).await?;
    let writes_end = Instant::now();
    if let Some(e) = &writes.error {
        say(format!("put failed: {e}"));
    }
    let target = writes.revisions.iter().copied().max().unwrap_or(0);
    let _ = phase_tx.send(Phase::Drain(target));
    say(format!(
        "{} puts acknowledged; draining until every watcher has seen revision {target}",
        writes.revisions.len()
    ));
    let drained = drain(&progress, created, cfg.drain_timeout, plan.quiet).await;
    let drain_end = Instant::now();
    let cpu = cpu.stop();
    let _ = phase_tx.send(Phase::Stop);
    let mut streams = Vec::with_capacity(tasks.len());
    for t in tasks {
        let report = t.await;
        streams.push(report.map_err(|e| BenchError::Setup(format!("stream task failed: {e}")))?);
    }
    cleanup(&clients[0], &prefix, plan.timeout).await;
    for e in streams.iter().filter_map(|s| s.error.as_ref()) {
        say(format!("stream failed: {e}"));
    }

    let outcome = Outcome {
        created,
        setup_s,
        rss,
        writes,
        streams,
        drain_s: (drain_end - writes_end).as_secs_f64(),
        drained,
        cpu,
    };
    Ok(outcome.into_result(label, plan, cfg, drain_end - start))
}

/// The receiving ends the stream tasks follow.
struct Channels {
    /// When the warmup ends (set once the writers start).
    start: watch::Receiver<Option<Instant>>,
    phase: watch::Receiver<Phase>,
    progress: Arc<Progress>,
}

/// Spawns one task per stream and waits until each has created its watchers; returns the tasks
/// and the number of watchers created.
async fn open_streams(
    plan: &Plan,
    cfg: &WatchConfig,
    clients: &[Client],
    prefix: &[u8],
    base: Instant,
    channels: Channels,
) -> Result<(Vec<JoinHandle<StreamReport>>, usize), BenchError> {
    let mut readies = Vec::with_capacity(cfg.streams);
    let mut tasks = Vec::with_capacity(cfg.streams);
    for s in 0..cfg.streams {
        let setup = StreamSetup {
            client: clients[s % clients.len()].watch_client(),
            prefix: prefix.to_vec(),
            watchers: share(cfg.watchers, cfg.streams, s),
            base,
            timeout: plan.timeout,
        };
        let (ready_tx, ready_rx) = oneshot::channel();
        readies.push(ready_rx);
        tasks.push(tokio::spawn(stream_task(
            setup,
            ready_tx,
            channels.start.clone(),
            channels.phase.clone(),
            channels.progress.clone(),
        )));
    }
    let mut created = 0;
    for ready in readies {
        match ready.await {
            Ok(Ok(n)) => created += n,
            Ok(Err(e)) => return Err(BenchError::Setup(format!("creating watchers: {e}"))),
            Err(_) => return Err(BenchError::Setup("a watch stream task failed".into())),
        }
    }
    Ok((tasks, created))
}

/// Runs the writers from `start` for the warmup plus the duration; returns their merged report.
async fn write(
    plan: &Plan,
    cfg: &WatchConfig,
    clients: &[Client],
    prefix: &[u8],
    base: Instant,
    start: Instant,
) -> Result<WriterReport, BenchError> {
    let measure_start = start + plan.warmup;
    let writers: Vec<_> = (0..plan.clients)
        .map(|w| {
            let kv = clients[w % clients.len()].kv_client();
            let pace = Pace {
                writer: w,
                writers: plan.clients,
                rate: cfg.rate,
                start,
                measure_start,
                deadline: measure_start + plan.duration(),
            };
            tokio::spawn(writer(kv, pace, prefix.to_vec(), plan.clone(), base))
        })
        .collect();
    let mut all = WriterReport::new();
    for w in writers {
        let r = w
            .await
            .map_err(|e| BenchError::Setup(format!("writer task failed: {e}")))?;
        all.revisions.extend(r.revisions);
        all.puts_measured += r.puts_measured;
        all.errors += r.errors;
        let _ = all.latency_us.add(&r.latency_us);
        if all.error.is_none() {
            all.error = r.error;
        }
    }
    Ok(all)
}

/// Everything a run observed, before it becomes a [`BenchResult`].
struct Outcome {
    created: usize,
    setup_s: f64,
    /// Server RSS before and after creating the watchers.
    rss: (Option<u64>, Option<u64>),
    writes: WriterReport,
    streams: Vec<StreamReport>,
    drain_s: f64,
    drained: bool,
    cpu: CpuUse,
}

impl Outcome {
    /// Checks every watcher against the acknowledged puts and builds the result; `elapsed` runs
    /// from the first put to the end of the drain.
    fn into_result(
        self,
        label: String,
        plan: &Plan,
        cfg: &WatchConfig,
        elapsed: Duration,
    ) -> BenchResult {
        let expected = RevisionSet::from_revisions(self.writes.revisions.clone());
        let mut delivery = Delivery::default();
        let mut latency_us = latency_histogram();
        let mut canceled = 0;
        for s in &self.streams {
            for log in &s.logs {
                delivery += log.check(&expected);
            }
            let _ = latency_us.add(&s.latency_us);
            canceled += s.canceled;
            delivery.events += s.stray_events;
            delivery.unexpected += s.stray_events;
        }
        // Watchers that were never created missed everything too.
        delivery.missing += expected.len() * (cfg.watchers - self.created) as u64;
        let stream_errors = self.streams.iter().filter(|s| s.error.is_some()).count() as u64;

        let mut result = BenchResult::measured(
            label,
            plan,
            "watch-fanout",
            plan.key_space,
            elapsed,
            delivery.delivered,
            self.writes.errors + stream_errors,
            &latency_us,
        );
        result.key_order = "sequential".into();
        result.params = format!(
            "{} watchers / {} streams / {} puts/s",
            cfg.watchers, cfg.streams, cfg.rate
        );
        let bytes_per_watcher = match self.rss {
            (Some(b), Some(a)) if self.created > 0 => Some(round(
                (a as f64 - b as f64) * 1024.0 / self.created as f64,
                1,
            )),
            _ => None,
        };
        let w = &self.writes;
        result.watch = Some(WatchStats {
            watchers: cfg.watchers,
            streams: cfg.streams,
            created: self.created,
            target_rate: cfg.rate,
            puts: w.revisions.len() as u64,
            puts_measured: w.puts_measured,
            put_rate: round(
                w.puts_measured as f64 / plan.duration().as_secs_f64().max(1e-9),
                1,
            ),
            put_errors: w.errors,
            put_p50_ms: quantile_ms(&w.latency_us, 0.5),
            put_p99_ms: quantile_ms(&w.latency_us, 0.99),
            put_mean_ms: round(w.latency_us.mean() / 1000.0, 3),
            events_expected: expected.len() * cfg.watchers as u64,
            events_delivered: delivery.delivered,
            events_received: delivery.events,
            missing: delivery.missing,
            duplicates: delivery.duplicates,
            out_of_order: delivery.out_of_order,
            unexpected: delivery.unexpected,
            canceled,
            setup_s: round(self.setup_s, 3),
            drain_s: round(self.drain_s, 3),
            drained: self.drained,
            server_rss_before_kib: self.rss.0,
            server_rss_after_kib: self.rss.1,
            server_bytes_per_watcher: bytes_per_watcher,
            client_cpu_cores: self.cpu.client_cores,
            server_cpu_cores: self.cpu.server_cores,
        });
        result
    }
}

/// How many of `total` items part `i` of `parts` gets (the first `total % parts` get one more).
pub fn share(total: usize, parts: usize, i: usize) -> usize {
    total / parts + usize::from(i < total % parts)
}

/// Waits until `created` watchers caught up or `timeout` passed; true if they all did.
async fn drain(progress: &Progress, created: usize, timeout: Duration, quiet: bool) -> bool {
    let start = Instant::now();
    let mut last_report = start;
    loop {
        let caught_up = progress.caught_up.load(Ordering::Relaxed);
        if caught_up >= created {
            return true;
        }
        let now = Instant::now();
        if now - start >= timeout {
            if !quiet {
                eprintln!(
                    "watch-fanout: drain timed out after {timeout:?}: {caught_up} of {created} \
                     watchers caught up"
                );
            }
            return false;
        }
        if !quiet && now - last_report >= Duration::from_secs(5) {
            last_report = now;
            eprintln!(
                "watch-fanout: draining: {caught_up} of {created} watchers caught up, {} events \
                 received",
                progress.events.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
}

/// Removes the run's keys (after the streams are gone, so nobody watches the deletes).
async fn cleanup(client: &Client, prefix: &[u8], timeout: Duration) {
    let mut kv = client.kv_client();
    let delete = kv.delete(prefix.to_vec(), Some(DeleteOptions::new().with_prefix()));
    let _ = tokio::time::timeout(timeout, delete).await;
}

/// One watch stream: create its watchers, report ready, then record events until told to stop.
async fn stream_task(
    setup: StreamSetup,
    ready: oneshot::Sender<Result<usize, String>>,
    mut start: watch::Receiver<Option<Instant>>,
    mut phase: watch::Receiver<Phase>,
    progress: Arc<Progress>,
) -> StreamReport {
    let mut stream = StreamState {
        watchers: HashMap::with_capacity(setup.watchers),
        latency_us: latency_histogram(),
        canceled: 0,
        stray_events: 0,
        target: Revision::MAX,
        base: setup.base,
        measure_start: setup.base,
        progress,
    };
    let (_sender, mut responses) = match create_watchers(&setup, &mut stream).await {
        Ok(parts) => {
            let _ = ready.send(Ok(stream.watchers.len()));
            parts
        }
        Err(e) => {
            let _ = ready.send(Err(e.clone()));
            return stream.into_report(Some(e));
        }
    };
    // The writers start only after every stream is ready, so this wait is short.
    if let Ok(when) = start.wait_for(Option::is_some).await {
        stream.measure_start = when.unwrap_or(setup.base);
    }
    let error = loop {
        tokio::select! {
            changed = phase.changed() => {
                if changed.is_err() {
                    break None;
                }
                let now = *phase.borrow_and_update();
                match now {
                    Phase::Running => {}
                    Phase::Drain(target) => stream.set_target(target),
                    Phase::Stop => break None,
                }
            }
            // tonic's Streaming::message is cancel-safe: losing the race loses no message.
            message = responses.message() => match message {
                Ok(Some(resp)) => stream.handle(&resp),
                Ok(None) => break Some("the server closed the watch stream".to_string()),
                Err(e) => break Some(e.to_string()),
            },
        }
    };
    stream.into_report(error)
}

/// Opens the stream and creates `setup.watchers` watchers on it, reading replies concurrently.
async fn create_watchers(
    setup: &StreamSetup,
    stream: &mut StreamState,
) -> Result<(etcd_client::WatchRequestSender, WatchResponseStream), String> {
    if setup.watchers == 0 {
        return Err("no watcher for this stream (more --streams than --watchers)".into());
    }
    let options = WatchOptions::new().with_prefix();
    let mut client = setup.client.clone();
    let first = client.watch(setup.prefix.clone(), Some(options.clone()));
    let first = tokio::time::timeout(setup.timeout, first)
        .await
        .map_err(|_| format!("no reply to Watch within {:?}", setup.timeout))?
        .map_err(|e| e.to_string())?;
    let (mut sender, mut responses) = first.split();
    let send_rest = async {
        for _ in 1..setup.watchers {
            sender
                .watch(setup.prefix.clone(), Some(options.clone()))
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok::<_, String>(())
    };
    let read_created = async {
        while stream.watchers.len() < setup.watchers {
            let next = tokio::time::timeout(setup.timeout, responses.message());
            match next.await {
                Err(_) => return Err(format!("no watch created within {:?}", setup.timeout)),
                Ok(Err(e)) => return Err(e.to_string()),
                Ok(Ok(None)) => return Err("the server closed the watch stream".into()),
                Ok(Ok(Some(resp))) if resp.canceled() && !resp.created() => {
                    return Err(format!("watch refused: {}", resp.cancel_reason()));
                }
                Ok(Ok(Some(resp))) => stream.handle(&resp),
            }
        }
        Ok(())
    };
    let (sent, read) = tokio::join!(send_rest, read_created);
    sent.and(read)?;
    Ok((sender, responses))
}

/// A stream task's state while receiving.
struct StreamState {
    watchers: HashMap<i64, WatcherState>,
    latency_us: Histogram<u64>,
    canceled: u64,
    /// Events for a watch id the server never confirmed (counted as unexpected).
    stray_events: u64,
    /// The revision that makes a watcher caught up; `MAX` until the writers stop.
    target: Revision,
    base: Instant,
    /// Events of puts sent before this (during the warmup) are checked but not timed.
    measure_start: Instant,
    progress: Arc<Progress>,
}

impl StreamState {
    /// Handles one response: a creation, a cancellation, or events for one watcher.
    fn handle(&mut self, resp: &WatchResponse) {
        if resp.created() {
            self.watchers.entry(resp.watch_id()).or_default();
        }
        if resp.canceled() {
            self.canceled += 1;
        }
        let events = resp.events();
        if events.is_empty() {
            return;
        }
        self.progress
            .events
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        let now = Instant::now();
        let Some(watcher) = self.watchers.get_mut(&resp.watch_id()) else {
            self.stray_events += events.len() as u64;
            return;
        };
        for event in events {
            let Some(kv) = event.kv() else { continue };
            watcher.log.record(kv.mod_revision());
            if let Some(sent) = sent_at(kv.value(), self.base)
                && sent >= self.measure_start
            {
                record_latency(&mut self.latency_us, now.saturating_duration_since(sent));
            }
        }
        if !watcher.caught_up && watcher.log.highest() >= self.target {
            watcher.caught_up = true;
            self.progress.caught_up.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The writers stopped at `target`: count the watchers that already saw it.
    fn set_target(&mut self, target: Revision) {
        self.target = target;
        for w in self.watchers.values_mut() {
            if !w.caught_up && w.log.highest() >= target {
                w.caught_up = true;
                self.progress.caught_up.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn into_report(self, error: Option<String>) -> StreamReport {
        StreamReport {
            logs: self.watchers.into_values().map(|w| w.log).collect(),
            latency_us: self.latency_us,
            canceled: self.canceled,
            stray_events: self.stray_events,
            error,
        }
    }
}

/// A value: the send time (nanoseconds since `base`) then letters up to `size` bytes.
fn stamped_value(sent: Instant, base: Instant, size: usize) -> Vec<u8> {
    let nanos = u64::try_from((sent - base).as_nanos()).unwrap_or(u64::MAX);
    let mut value = nanos.to_le_bytes().to_vec();
    value.extend((STAMP..size).map(|i| b'a' + (i % 26) as u8));
    value
}

/// The send time stamped in `value`, if it is one of ours.
fn sent_at(value: &[u8], base: Instant) -> Option<Instant> {
    let stamp: [u8; STAMP] = value.get(..STAMP)?.try_into().ok()?;
    base.checked_add(Duration::from_nanos(u64::from_le_bytes(stamp)))
}

/// When one writer sends: every `writers / rate` seconds from `start + writer / rate`.
struct Pace {
    writer: usize,
    writers: usize,
    rate: f64,
    start: Instant,
    measure_start: Instant,
    deadline: Instant,
}

/// One writer: a put per turn until the deadline, skipping turns while a put is in flight.
async fn writer(
    mut kv: KvClient,
    pace: Pace,
    prefix: Vec<u8>,
    plan: Plan,
    base: Instant,
) -> WriterReport {
    let period = Duration::from_secs_f64(pace.writers as f64 / pace.rate);
    let offset = Duration::from_secs_f64(pace.writer as f64 / pace.rate);
    let mut ticks = tokio::time::interval_at((pace.start + offset).into(), period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut report = WriterReport::new();
    for n in 0u64.. {
        ticks.tick().await;
        let sent = Instant::now();
        if sent >= pace.deadline {
            break;
        }
        let i = (n * pace.writers as u64 + pace.writer as u64) % plan.key_space;
        let key = [prefix.as_slice(), &crate::keys::key(i, plan.key_size)].concat();
        let value = stamped_value(sent, base, plan.val_size.max(STAMP));
        let put = tokio::time::timeout(plan.timeout, kv.put(key, value, None)).await;
        let measured = sent >= pace.measure_start;
        match put {
            Ok(Ok(resp)) => {
                if let Some(h) = resp.header() {
                    report.revisions.push(h.revision());
                }
                if measured {
                    report.puts_measured += 1;
                    record_latency(&mut report.latency_us, sent.elapsed());
                }
            }
            Ok(Err(e)) => report.fail(e.to_string()),
            Err(_) => report.fail(format!("put timed out after {:?}", plan.timeout)),
        }
    }
    report
}

impl WriterReport {
    fn new() -> Self {
        WriterReport {
            revisions: Vec::new(),
            puts_measured: 0,
            errors: 0,
            latency_us: latency_histogram(),
            error: None,
        }
    }

    fn fail(&mut self, message: String) {
        self.errors += 1;
        self.error.get_or_insert(message);
    }
}

/// The lines `watch-fanout` adds to the summary.
pub fn summary(w: &WatchStats, writers: usize, s: &mut String) {
    use std::fmt::Write as _;
    let pct = |n: u64| {
        if w.events_expected == 0 {
            0.0
        } else {
            n as f64 * 100.0 / w.events_expected as f64
        }
    };
    let _ = writeln!(
        s,
        "  watchers: {} of {} created on {} streams in {:.2} s",
        w.created, w.watchers, w.streams, w.setup_s
    );
    let _ = writeln!(
        s,
        "  puts: {:.0}/s achieved of {:.0}/s target ({} measured, {} in all, {} errors), \
         put latency ms p50 {:.3} p99 {:.3}",
        w.put_rate,
        w.target_rate,
        w.puts_measured,
        w.puts,
        w.put_errors,
        w.put_p50_ms,
        w.put_p99_ms
    );
    if w.put_rate < 0.95 * w.target_rate && w.put_mean_ms > 0.0 {
        let _ = writeln!(
            s,
            "  note: the puts fell short of the target: {writers} writers with one put in flight \
             each, and a put taking {:.1} ms on average, can send about {:.0}/s; more --clients \
             keep more puts in flight",
            w.put_mean_ms,
            writers as f64 * 1000.0 / w.put_mean_ms
        );
    }
    let _ = writeln!(
        s,
        "  events: {} delivered of {} expected ({:.2}%), {} received; missing {}, duplicate {}, \
         out of order {}, unexpected {}, watchers canceled {}",
        w.events_delivered,
        w.events_expected,
        pct(w.events_delivered),
        w.events_received,
        w.missing,
        w.duplicates,
        w.out_of_order,
        w.unexpected,
        w.canceled
    );
    let _ = writeln!(
        s,
        "  drain: {:.2} s after the last put {}",
        w.drain_s,
        if w.drained {
            "until every watcher had seen it"
        } else {
            "and still not every watcher had seen it (timed out)"
        }
    );
    match (
        w.server_rss_before_kib,
        w.server_rss_after_kib,
        w.server_bytes_per_watcher,
    ) {
        (Some(b), Some(a), Some(per)) => {
            let _ = writeln!(
                s,
                "  server RSS: {b} KiB before the watchers, {a} KiB after: {per:.0} bytes per idle \
                 watcher"
            );
        }
        _ => {
            let _ = writeln!(s, "  server RSS: unknown (pass --server-pid)");
        }
    }
    let cpu = CpuUse {
        client_cores: w.client_cpu_cores,
        server_cores: w.server_cpu_cores,
    };
    let _ = writeln!(s, "  cpu while writing and draining: {}", cpu.describe());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_carry_their_send_time() {
        let base = Instant::now();
        let sent = base + Duration::from_micros(1_234_567);
        let value = stamped_value(sent, base, 32);
        assert_eq!(value.len(), 32);
        assert_eq!(sent_at(&value, base), Some(sent));
        assert_eq!(sent_at(b"short", base), None);
    }

    #[test]
    fn shares_spread_the_remainder_over_the_first_parts() {
        let shares: Vec<usize> = (0..4).map(|i| share(10, 4, i)).collect();
        assert_eq!(shares, vec![3, 3, 2, 2]);
        assert_eq!((0..3).map(|i| share(2, 3, i)).sum::<usize>(), 2);
    }
}
