//! `lease-expiry-storm`: many leases expiring together under a steady put load.
//!
//! 1. `--clients` tasks grant `--leases` leases, all with `--ttl`, then attach one key to each
//!    (a Put with the lease) under a fresh prefix. Granting first and attaching after keeps the
//!    expiry times as close together as the grant phase allows.
//! 2. The `put` workload runs (the same runner and flags as `put`) for `--warmup` plus
//!    `--duration` seconds, keeping every request's start time and latency. Meanwhile a poller on
//!    its own connection counts the leased keys (a serializable count-only Range of the prefix)
//!    every 100 ms, and goes on after the puts stop, at most `--expiry-timeout`, until none is left.
//! 3. The first poll that counts fewer keys marks the start of the storm. Puts sent before it
//!    (after the warmup) form the `before` window; puts from it to the end the `storm` window,
//!    and those from it until the last key was gone the `expiring` window.
//!
//! Times in the result are seconds since the end of the warmup. The poll interval bounds their
//! precision (100 ms).

use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions, PutOptions};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::error::BenchError;
use crate::lease::{self, Grants, LeaseId};
use crate::procfs::{CpuMeter, CpuUse};
use crate::report::{BenchResult, latency_histogram, micros, round};
use crate::runner::{self, Measurement, Sample};
use crate::workload::{self, Op, Plan};

/// How often the leased keys are counted.
const POLL: Duration = Duration::from_millis(100);

/// `lease-expiry-storm`'s own settings.
#[derive(Debug, Clone)]
pub struct StormConfig {
    pub leases: u64,
    pub ttl: i64,
    pub expiry_timeout: Duration,
    pub server_pid: Option<u32>,
}

/// Puts sent within one part of the run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Window {
    /// Seconds since the end of the warmup.
    pub from_s: f64,
    pub to_s: f64,
    pub ops: u64,
    pub errors: u64,
    pub ops_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// What `lease-expiry-storm` measured besides the common fields (there: all measured puts).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StormStats {
    pub leases: u64,
    pub granted: u64,
    /// Leases with their key attached.
    pub attached: u64,
    pub ttl_s: i64,
    pub granted_ttl_s: Option<i64>,
    pub grant_s: f64,
    pub attach_s: f64,
    /// When the first and the last granted lease were due to expire (their TTL after the grant
    /// request and its reply respectively), seconds since the end of the warmup.
    pub first_due_s: f64,
    pub last_due_s: f64,
    /// When a poll first counted fewer leased keys, and when it first counted none.
    pub first_gone_s: Option<f64>,
    pub all_gone_s: Option<f64>,
    /// Leased keys at the last poll.
    pub keys_left: u64,
    pub before: Window,
    pub storm: Option<Window>,
    pub expiring: Option<Window>,
    /// Cores used during the put load.
    pub client_cpu_cores: Option<f64>,
    pub server_cpu_cores: Option<f64>,
}

/// Runs `lease-expiry-storm` and returns its result.
pub async fn run(plan: &Plan, cfg: &StormConfig, label: String) -> Result<BenchResult, BenchError> {
    let say = |what: String| {
        if !plan.quiet {
            eprintln!("lease-expiry-storm: {what}");
        }
    };
    let clients = workload::connect_clients(plan).await?;
    let poll_client = workload::connect_clients(&Plan {
        conns: 1,
        ..plan.clone()
    })
    .await?
    .remove(0);
    let prefix = workload::unique_prefix("storm");
    say(format!(
        "granting {} leases of {} s with {} clients",
        cfg.leases, cfg.ttl, plan.clients
    ));
    let leases = prepare(plan, cfg, &clients, &prefix).await?;
    say(format!(
        "{} granted in {:.2} s, {} keys attached in {:.2} s; putting for {:?} + {:?}",
        leases.grants.granted(),
        leases.grants.elapsed.as_secs_f64(),
        leases.attached,
        leases.attach_s,
        plan.warmup,
        plan.duration()
    ));

    let (give_up_tx, give_up_rx) = watch::channel(None);
    let poller = tokio::spawn(poll(
        poll_client,
        prefix.clone(),
        leases.attached,
        give_up_rx,
        plan.timeout,
    ));
    let cpu = CpuMeter::start(cfg.server_pid);
    let op = Op::new(plan);
    let key_count = op.key_count();
    let kvs: Vec<_> = clients.iter().map(Client::kv_client).collect();
    let m = runner::run(plan, op, &kvs).await;
    let cpu = cpu.stop();
    let _ = give_up_tx.send(Some(Instant::now() + cfg.expiry_timeout));
    let polls = poller
        .await
        .map_err(|e| BenchError::Setup(format!("poll task failed: {e}")))?;

    let stats = stats(cfg, &leases, &polls, &m, cpu);
    if stats.first_gone_s.is_some_and(|t| t < 0.0) {
        say("the leases began to expire during the warmup: use a shorter --warmup".into());
    }
    let mut result = BenchResult::new(label, plan, key_count, &m);
    result.workload = "lease-expiry-storm".into();
    result.params = format!("{} leases / ttl {} s", cfg.leases, cfg.ttl);
    result.storm = Some(stats);
    Ok(result)
}

/// The leases as prepared before the put load.
struct Leases {
    grants: Grants,
    /// Just before the first grant request: no lease can expire before this plus the TTL.
    grant_start: Instant,
    attached: u64,
    attach_s: f64,
}

/// Grants the leases, then attaches a key to each.
async fn prepare(
    plan: &Plan,
    cfg: &StormConfig,
    clients: &[Client],
    prefix: &[u8],
) -> Result<Leases, BenchError> {
    let grant_start = Instant::now();
    let grants = lease::grant(clients, cfg.leases, cfg.ttl, plan.clients, plan.timeout).await;
    if grants.granted() == 0 {
        let why = grants.first_error.clone().unwrap_or_default();
        return Err(BenchError::Setup(format!("no lease granted: {why}")));
    }
    let attach_start = Instant::now();
    let attached = attach(clients, &grants, prefix, plan.timeout).await?;
    Ok(Leases {
        grants,
        grant_start,
        attached,
        attach_s: attach_start.elapsed().as_secs_f64(),
    })
}

/// Turns the polls and the put samples into the storm's timeline and windows.
fn stats(
    cfg: &StormConfig,
    leases: &Leases,
    polls: &[(Instant, u64)],
    m: &Measurement,
    cpu: CpuUse,
) -> StormStats {
    let grants = &leases.grants;
    let since = |t: Instant| signed_secs(t, m.measure_start);
    let us = |t: Instant| (since(t) * 1e6).max(0.0) as u64;
    let ttl = Duration::from_secs(grants.granted_ttl.unwrap_or(cfg.ttl).max(0) as u64);
    let first_gone = polls.iter().find(|p| p.1 < leases.attached).map(|p| p.0);
    let all_gone = polls.iter().find(|p| p.1 == 0).map(|p| p.0);
    let end_us = micros(m.elapsed);
    StormStats {
        leases: cfg.leases,
        granted: grants.granted(),
        attached: leases.attached,
        ttl_s: cfg.ttl,
        granted_ttl_s: grants.granted_ttl,
        grant_s: round(grants.elapsed.as_secs_f64(), 3),
        attach_s: round(leases.attach_s, 3),
        first_due_s: round(since(leases.grant_start + ttl), 3),
        last_due_s: round(since(grants.last_ack + ttl), 3),
        first_gone_s: first_gone.map(|t| round(since(t), 3)),
        all_gone_s: all_gone.map(|t| round(since(t), 3)),
        keys_left: polls.last().map_or(leases.attached, |p| p.1),
        before: window(&m.samples, 0, first_gone.map_or(end_us, us)),
        storm: first_gone.map(|t| window(&m.samples, us(t), end_us)),
        expiring: first_gone.map(|t| window(&m.samples, us(t), all_gone.map_or(end_us, us))),
        client_cpu_cores: cpu.client_cores,
        server_cpu_cores: cpu.server_cores,
    }
}

/// Puts one key per granted lease, `prefix` + the lease id in hex, by the granting tasks' lists.
async fn attach(
    clients: &[Client],
    grants: &Grants,
    prefix: &[u8],
    timeout: Duration,
) -> Result<u64, BenchError> {
    let handles: Vec<_> = grants
        .ids
        .iter()
        .enumerate()
        .map(|(t, ids)| {
            let mut kv = clients[t % clients.len()].kv_client();
            let (ids, prefix) = (ids.clone(), prefix.to_vec());
            tokio::spawn(async move {
                for id in ids {
                    let key = leased_key(&prefix, id);
                    let put = kv.put(
                        key,
                        b"leased".to_vec(),
                        Some(PutOptions::new().with_lease(id)),
                    );
                    match tokio::time::timeout(timeout, put).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return Err(format!("attaching a key to a lease: {e}")),
                        Err(_) => {
                            return Err(format!("attaching a key timed out after {timeout:?}"));
                        }
                    }
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.await
            .map_err(|e| BenchError::Setup(format!("attach task failed: {e}")))?
            .map_err(BenchError::Setup)?;
    }
    Ok(grants.granted())
}

fn leased_key(prefix: &[u8], id: LeaseId) -> Vec<u8> {
    [prefix, format!("{id:016x}").as_bytes()].concat()
}

/// Counts the keys under `prefix` every [`POLL`] until none is left, or until the time
/// `give_up` receives has passed. Returns (time of the poll's reply, count) for every poll that
/// got an answer.
async fn poll(
    client: Client,
    prefix: Vec<u8>,
    attached: u64,
    give_up: watch::Receiver<Option<Instant>>,
    timeout: Duration,
) -> Vec<(Instant, u64)> {
    let mut kv = client.kv_client();
    let options = GetOptions::new()
        .with_prefix()
        .with_count_only()
        .with_serializable();
    let mut polls = Vec::new();
    let mut ticks = tokio::time::interval(POLL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if give_up.borrow().is_some_and(|t| Instant::now() >= t) {
            return polls;
        }
        let count = kv.get(prefix.clone(), Some(options.clone()));
        if let Ok(Ok(resp)) = tokio::time::timeout(timeout, count).await {
            let n = u64::try_from(resp.count()).unwrap_or(0).min(attached);
            polls.push((Instant::now(), n));
            if n == 0 {
                return polls;
            }
        }
    }
}

/// `t - origin` in seconds, negative if `t` is earlier.
fn signed_secs(t: Instant, origin: Instant) -> f64 {
    match t.checked_duration_since(origin) {
        Some(d) => d.as_secs_f64(),
        None => -(origin - t).as_secs_f64(),
    }
}

/// The puts sent in `[from_us, to_us)` (microseconds since the end of the warmup).
pub fn window(samples: &[Sample], from_us: u64, to_us: u64) -> Window {
    let mut latency = latency_histogram();
    let (mut ops, mut errors) = (0, 0);
    for s in samples
        .iter()
        .filter(|s| (from_us..to_us).contains(&s.start_us))
    {
        if s.ok {
            ops += 1;
            let _ = latency.record(s.latency_us.max(1));
        } else {
            errors += 1;
        }
    }
    let secs = to_us.saturating_sub(from_us) as f64 / 1e6;
    let ms = |q: f64| crate::report::quantile_ms(&latency, q);
    Window {
        from_s: round(from_us as f64 / 1e6, 3),
        to_s: round(to_us as f64 / 1e6, 3),
        ops,
        errors,
        ops_per_sec: if secs > 0.0 {
            round(ops as f64 / secs, 1)
        } else {
            0.0
        },
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        max_ms: latency.max() as f64 / 1000.0,
    }
}

/// The lines `lease-expiry-storm` adds to the summary.
pub fn summary(st: &StormStats, s: &mut String) {
    use std::fmt::Write as _;
    let at = |t: Option<f64>| t.map_or("never".to_string(), |t| format!("{t:+.2} s"));
    let ttl = st.granted_ttl_s.map_or("?".to_string(), |t| t.to_string());
    let _ = writeln!(
        s,
        "  leases: {} of {} granted in {:.2} s (TTL {} s asked, {ttl} s granted), {} keys attached \
         in {:.2} s",
        st.granted, st.leases, st.grant_s, st.ttl_s, st.attached, st.attach_s
    );
    let _ = writeln!(
        s,
        "  expiry (times since the end of the warmup): due {:+.2} s .. {:+.2} s; first key gone \
         {}, all gone {}{}",
        st.first_due_s,
        st.last_due_s,
        at(st.first_gone_s),
        at(st.all_gone_s),
        match (st.first_gone_s, st.all_gone_s) {
            (Some(a), Some(b)) => format!(": {:.2} s to remove {} keys", b - a, st.attached),
            _ => format!(" ({} keys left)", st.keys_left),
        }
    );
    let line = |name: &str, w: &Window| {
        format!(
            "  puts {name} [{:+.1} s, {:+.1} s): {:.0}/s, {} ops, {} errors, latency ms p50 {:.3} \
             p99 {:.3} max {:.3}\n",
            w.from_s, w.to_s, w.ops_per_sec, w.ops, w.errors, w.p50_ms, w.p99_ms, w.max_ms
        )
    };
    s.push_str(&line("before the storm", &st.before));
    if let Some(w) = &st.expiring {
        s.push_str(&line("while expiring", w));
    }
    if let Some(w) = &st.storm {
        s.push_str(&line("storm to the end", w));
    }
    let cpu = CpuUse {
        client_cores: st.client_cpu_cores,
        server_cores: st.server_cpu_cores,
    };
    let _ = writeln!(s, "  cpu during the put load: {}", cpu.describe());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(start_ms: u64, latency_ms: u64, ok: bool) -> Sample {
        Sample {
            start_us: start_ms * 1000,
            latency_us: latency_ms * 1000,
            ok,
        }
    }

    #[test]
    fn windows_split_samples_by_start_time() {
        let samples = [
            sample(100, 1, true),
            sample(900, 2, true),
            sample(1000, 50, true), // first of the storm window
            sample(1500, 9, false),
            sample(1999, 3, true),
        ];
        let before = window(&samples, 0, 1_000_000);
        assert_eq!((before.ops, before.errors, before.ops_per_sec), (2, 0, 2.0));
        assert_eq!(before.max_ms, 2.0);
        let storm = window(&samples, 1_000_000, 2_000_000);
        assert_eq!((storm.ops, storm.errors, storm.ops_per_sec), (2, 1, 2.0));
        assert!((storm.max_ms - 50.0).abs() < 0.1);
        assert_eq!((storm.from_s, storm.to_s), (1.0, 2.0));
    }

    #[test]
    fn an_empty_window_is_zero() {
        let w = window(&[], 5, 5);
        assert_eq!((w.ops, w.ops_per_sec, w.max_ms), (0, 0.0, 0.0));
    }

    #[test]
    fn signed_seconds_go_both_ways() {
        let t = Instant::now();
        let later = t + Duration::from_millis(1500);
        assert_eq!(signed_secs(later, t), 1.5);
        assert_eq!(signed_secs(t, later), -1.5);
    }
}
