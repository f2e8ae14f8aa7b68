//! `lease-keepalive`: grant many leases, then renew them as fast as the server answers.
//!
//! 1. `--clients` tasks grant `--leases` leases of `--ttl` seconds, each its share, one request
//!    at a time (this is timed: grant throughput and latency).
//! 2. Each task opens one LeaseKeepAlive stream ([`KeepAliveStream`]) and renews its leases in
//!    turn, one renewal in flight: send `{ID}`, wait for the reply, record the round trip, next
//!    lease. Renewals started during `--warmup` are not counted. A reply with TTL ≤ 0 means the
//!    lease is gone: it is counted as lost and no longer renewed.
//! 3. After `--duration`: one LeaseLeases listing counts how many granted leases still exist, and
//!    LeaseTimeToLive on `--sample` of them (spread evenly) checks they have time left.
//! 4. All leases are revoked (untimed), so that they do not expire later, in a storm of their own,
//!    during the next workload on the same server.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use etcd_client::Client;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tonic::transport::Channel;

use crate::error::BenchError;
use crate::lease::{self, KeepAliveStream, LeaseId};
use crate::procfs::{CpuMeter, CpuUse};
use crate::report::{BenchResult, latency_histogram, quantile_ms, record_latency, round};
use crate::workload::{self, Plan};

/// `lease-keepalive`'s own settings.
#[derive(Debug, Clone)]
pub struct KeepAliveConfig {
    pub leases: u64,
    pub ttl: i64,
    pub sample: usize,
    pub server_pid: Option<u32>,
}

/// What `lease-keepalive` measured besides the common fields (there `ops` is renewals, the
/// latency is a renewal's round trip).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeepAliveStats {
    pub leases: u64,
    pub granted: u64,
    pub ttl_s: i64,
    /// The TTL the server granted.
    pub granted_ttl_s: Option<i64>,
    pub grant_s: f64,
    pub grants_per_sec: f64,
    pub grant_p50_ms: f64,
    pub grant_p99_ms: f64,
    /// Grant tasks that stopped on a failure.
    pub grant_errors: u64,
    /// Renewals answered with TTL ≤ 0 (the lease was gone).
    pub lost: u64,
    /// Granted leases listed by LeaseLeases at the end.
    pub alive_listed: Option<u64>,
    /// Leases checked with LeaseTimeToLive at the end, and how many had time left.
    pub sample: u64,
    pub sample_alive: u64,
    /// Cores used while renewing.
    pub client_cpu_cores: Option<f64>,
    pub server_cpu_cores: Option<f64>,
}

/// One keeper task's counts (or all of them, merged).
struct Keeper {
    /// The end of the warmup: renewals sent before it are not counted.
    measure_start: Instant,
    renewals: u64,
    errors: u64,
    lost: u64,
    last_reply: Option<Instant>,
    latency_us: Histogram<u64>,
    error: Option<String>,
}

/// When keepers renew: from now until `deadline`, counting from `measure_start`.
#[derive(Clone, Copy)]
struct Window {
    measure_start: Instant,
    deadline: Instant,
    timeout: Duration,
}

/// Runs `lease-keepalive` and returns its result.
pub async fn run(
    plan: &Plan,
    cfg: &KeepAliveConfig,
    label: String,
) -> Result<BenchResult, BenchError> {
    let say = |what: String| {
        if !plan.quiet {
            eprintln!("lease-keepalive: {what}");
        }
    };
    let clients = workload::connect_clients(plan).await?;
    say(format!(
        "granting {} leases of {} s with {} clients over {} connections",
        cfg.leases, cfg.ttl, plan.clients, plan.conns
    ));
    let grants = lease::grant(&clients, cfg.leases, cfg.ttl, plan.clients, plan.timeout).await;
    let granted = grants.granted();
    if let Some(e) = &grants.first_error {
        say(format!("{} grant tasks failed, first: {e}", grants.errors));
    }
    if granted == 0 {
        let why = grants.first_error.clone().unwrap_or_default();
        return Err(BenchError::Setup(format!("no lease granted: {why}")));
    }
    let grant_s = grants.elapsed.as_secs_f64();
    say(format!(
        "{granted} granted in {grant_s:.2} s ({:.0}/s); renewing for {:?} + {:?}",
        granted as f64 / grant_s.max(1e-9),
        plan.warmup,
        plan.duration()
    ));

    let (all, cpu) = renew_all(plan, cfg, &grants.ids).await?;
    if let Some(e) = &all.error {
        say(format!("renewal failed: {e}"));
    }

    let (alive_listed, sample, sample_alive) =
        check_alive(&clients[0], &grants.ids, cfg.sample, plan.timeout).await;
    say(format!("revoking the {granted} leases"));
    let revoke_failed = lease::revoke(&clients, grants.ids.clone(), plan.timeout).await;
    if revoke_failed > 0 {
        say(format!("{revoke_failed} revokes failed"));
    }

    let elapsed = all.last_reply.map_or(plan.duration(), |t| {
        t.saturating_duration_since(all.measure_start)
    });
    let mut result = BenchResult::measured(
        label,
        plan,
        "lease-keepalive",
        0,
        elapsed,
        all.renewals,
        all.errors,
        &all.latency_us,
    );
    result.key_size = 0;
    result.val_size = 0;
    result.key_order = String::new();
    result.params = format!("{} leases / ttl {} s", cfg.leases, cfg.ttl);
    result.keepalive = Some(stats(
        cfg,
        &grants,
        &all,
        cpu,
        (alive_listed, sample, sample_alive),
    ));
    Ok(result)
}

/// Renews the leases, `ids[c]` by client `c`, for the warmup and the duration; returns the
/// clients' merged counts and the CPU used after the warmup.
async fn renew_all(
    plan: &Plan,
    cfg: &KeepAliveConfig,
    ids: &[Vec<LeaseId>],
) -> Result<(Keeper, CpuUse), BenchError> {
    let channels = lease::channels(plan).await?;
    let start = Instant::now();
    let window = Window {
        measure_start: start + plan.warmup,
        deadline: start + plan.warmup + plan.duration(),
        timeout: plan.timeout,
    };
    let handles: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(c, ids)| {
            let channel = channels[c % channels.len()].clone();
            tokio::spawn(keeper(channel, ids.clone(), window))
        })
        .collect();
    tokio::time::sleep_until(window.measure_start.into()).await;
    let cpu = CpuMeter::start(cfg.server_pid);
    let mut all = Keeper::new(window.measure_start);
    for h in handles {
        let k = h
            .await
            .map_err(|e| BenchError::Setup(format!("keep-alive task failed: {e}")))?;
        all.renewals += k.renewals;
        all.errors += k.errors;
        all.lost += k.lost;
        all.last_reply = all.last_reply.max(k.last_reply);
        let _ = all.latency_us.add(&k.latency_us);
        if all.error.is_none() {
            all.error = k.error;
        }
    }
    Ok((all, cpu.stop()))
}

fn stats(
    cfg: &KeepAliveConfig,
    grants: &lease::Grants,
    all: &Keeper,
    cpu: CpuUse,
    (alive_listed, sample, sample_alive): (Option<u64>, u64, u64),
) -> KeepAliveStats {
    let grant_s = grants.elapsed.as_secs_f64();
    KeepAliveStats {
        leases: cfg.leases,
        granted: grants.granted(),
        ttl_s: cfg.ttl,
        granted_ttl_s: grants.granted_ttl,
        grant_s: round(grant_s, 3),
        grants_per_sec: round(grants.granted() as f64 / grant_s.max(1e-9), 1),
        grant_p50_ms: quantile_ms(&grants.latency_us, 0.5),
        grant_p99_ms: quantile_ms(&grants.latency_us, 0.99),
        grant_errors: grants.errors,
        lost: all.lost,
        alive_listed,
        sample,
        sample_alive,
        client_cpu_cores: cpu.client_cores,
        server_cpu_cores: cpu.server_cores,
    }
}

/// One client: a keep-alive stream renewing `ids` in turn until the deadline.
async fn keeper(channel: Channel, mut ids: Vec<LeaseId>, window: Window) -> Keeper {
    let mut k = Keeper::new(window.measure_start);
    let Some(&first) = ids.first() else {
        return k;
    };
    let opened = tokio::time::timeout(window.timeout, KeepAliveStream::open(channel, first));
    let mut stream = match opened.await {
        Ok(Ok((stream, _ttl))) => stream,
        Ok(Err(e)) => return k.failed(e),
        Err(_) => return k.failed(format!("no keep-alive reply within {:?}", window.timeout)),
    };
    let mut i = 1;
    while !ids.is_empty() {
        i %= ids.len();
        let sent = Instant::now();
        if sent >= window.deadline {
            break;
        }
        let renewal = tokio::time::timeout(window.timeout, stream.renew(ids[i])).await;
        let end = Instant::now();
        let measured = sent >= window.measure_start;
        match renewal {
            Ok(Ok(ttl)) if ttl > 0 => {
                if measured {
                    k.renewals += 1;
                    record_latency(&mut k.latency_us, end - sent);
                    k.last_reply = Some(end);
                }
                i += 1;
            }
            Ok(Ok(_)) => {
                k.lost += 1;
                ids.swap_remove(i);
            }
            // After a failure the stream's state is unknown: this client stops renewing.
            Ok(Err(e)) => return k.failed(e),
            Err(_) => return k.failed(format!("renewal timed out after {:?}", window.timeout)),
        }
    }
    k
}

impl Keeper {
    fn new(measure_start: Instant) -> Self {
        Keeper {
            measure_start,
            renewals: 0,
            errors: 0,
            lost: 0,
            last_reply: None,
            latency_us: latency_histogram(),
            error: None,
        }
    }

    fn failed(mut self, message: String) -> Self {
        self.errors += 1;
        self.error.get_or_insert(message);
        self
    }
}

/// Counts the granted leases LeaseLeases still lists, and the sampled ones with time left.
async fn check_alive(
    client: &Client,
    ids: &[Vec<LeaseId>],
    sample: usize,
    timeout: Duration,
) -> (Option<u64>, u64, u64) {
    let mut lease = client.lease_client();
    let ours: HashSet<LeaseId> = ids.iter().flatten().copied().collect();
    let listed = match tokio::time::timeout(timeout, lease.leases()).await {
        Ok(Ok(resp)) => Some(
            resp.leases()
                .iter()
                .filter(|l| ours.contains(&l.id()))
                .count() as u64,
        ),
        _ => None,
    };
    let all: Vec<LeaseId> = ids.iter().flatten().copied().collect();
    let step = (all.len() / sample.max(1)).max(1);
    let (mut checked, mut alive) = (0, 0);
    for &id in all.iter().step_by(step).take(sample) {
        checked += 1;
        if let Ok(Ok(resp)) = tokio::time::timeout(timeout, lease.time_to_live(id, None)).await {
            alive += u64::from(resp.ttl() > 0);
        }
    }
    (listed, checked, alive)
}

/// The lines `lease-keepalive` adds to the summary.
pub fn summary(k: &KeepAliveStats, s: &mut String) {
    use std::fmt::Write as _;
    let ttl = k.granted_ttl_s.map_or("?".to_string(), |t| t.to_string());
    let _ = writeln!(
        s,
        "  grants: {} of {} in {:.2} s: {:.0}/s, latency ms p50 {:.3} p99 {:.3} ({} tasks \
         failed); TTL {} s asked, {ttl} s granted",
        k.granted,
        k.leases,
        k.grant_s,
        k.grants_per_sec,
        k.grant_p50_ms,
        k.grant_p99_ms,
        k.grant_errors,
        k.ttl_s
    );
    let listed = k.alive_listed.map_or("?".to_string(), |n| n.to_string());
    let _ = writeln!(
        s,
        "  at the end: {listed} of {} granted leases listed by LeaseLeases, {} of {} sampled \
         with time left; {} renewals answered 'gone'",
        k.granted, k.sample_alive, k.sample, k.lost
    );
    let cpu = CpuUse {
        client_cores: k.client_cpu_cores,
        server_cores: k.server_cpu_cores,
    };
    let _ = writeln!(s, "  cpu while renewing: {}", cpu.describe());
}
