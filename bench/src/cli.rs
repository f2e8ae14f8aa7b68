//! Command-line interface (clap derive) and its translation into a [`Plan`].
//!
//! Every load subcommand shares [`RunArgs`]; `compare` only reads result files. Validation that
//! clap cannot express (key space vs. key size, zero counts) lives in [`RunArgs::plan`] and the
//! `*Args::config` methods, so the rest of the program only sees consistent settings. The watch
//! and lease subcommands add their own flags and give some shared flags another default or
//! meaning ([`Shape`]).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::error::BenchError;
use crate::keepalive::KeepAliveConfig;
use crate::keys::KeyOrder;
use crate::storm::StormConfig;
use crate::watch::WatchConfig;
use crate::workload::{Plan, Stop, Workload};

/// Load generator for the etcd v3 API: measures throughput and latency of one workload against
/// Concord or etcd, and compares saved results side by side.
#[derive(Debug, Parser)]
#[command(name = "concord-bench", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// One Put per request: a value of --val-size bytes to one key of the key space.
    Put(RunArgs),
    /// One Range (Get) of a single existing key per request; linearizable unless --serializable.
    ///
    /// Before measuring, the first min(--key-space, --preload) keys are written (untimed), and
    /// reads draw only from those keys, so every read hits an existing key.
    Range(RangeArgs),
    /// One compare-and-swap Txn per request.
    ///
    /// If: mod_revision(key) == R, then: Put(key, value), else: Range(key). R is the key's
    /// mod_revision as last seen by this tool (0 = key absent): the revision of its own successful
    /// Txn, or the key's mod_revision returned by the else branch. Before measuring, one paginated
    /// keys-only Range learns the mod_revisions of keys that already exist. A Txn that takes the
    /// else branch (another client won the race) is a successful request, counted as a conflict.
    Txn(RunArgs),
    /// W watchers on one key prefix over S watch streams, while --clients writers put under the
    /// prefix at a fixed rate: delivery (expected vs delivered), delivery latency, server memory
    /// per idle watcher.
    ///
    /// --clients: writer tasks (puts in flight at most) [default: 100]; the streams and the writers
    /// share --conns connections (stream s and writer w use connections s % conns and w % conns).
    /// Puts sent during --warmup are checked for delivery but not timed. After the writers stop,
    /// waits (at most --drain-timeout) until every watcher has seen the last put's revision.
    WatchFanout(WatchArgs),
    /// L leases granted by --clients tasks [default: 1000], then renewed for --duration seconds:
    /// each client renews its L/clients leases in turn, one LeaseKeepAlive at a time, on its own
    /// keep-alive stream (as etcd's Go client does: one stream carries many leases).
    ///
    /// Reports grant throughput, renewals/s and renewal round-trip latency, and how many leases
    /// are still alive at the end; then revokes the leases (untimed).
    LeaseKeepalive(KeepAliveArgs),
    /// N leases with one short TTL, one key attached to each, then the `put` workload for
    /// --duration seconds [default: TTL + 15] while the leases expire together.
    ///
    /// Compares put throughput and latency before the first leased key disappears with the
    /// storm window (from then to the end), and reports how long until all leased keys are gone
    /// (a count-only Range of their prefix every 100 ms).
    LeaseExpiryStorm(StormArgs),
    /// Print a Markdown side-by-side table of result files written with --json.
    Compare(CompareArgs),
}

/// Settings shared by all load subcommands.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Comma-separated gRPC endpoints (host:port or http://host:port).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:2379")]
    pub endpoints: Vec<String>,
    /// Concurrent requests in flight (one task per client, each waiting for its reply)
    /// [default: 1; watch-fanout: 100; lease-keepalive: 1000].
    #[arg(long)]
    pub clients: Option<usize>,
    /// gRPC connections (one etcd_client::Client each, at most --clients, or for watch-fanout
    /// at most max(--clients, --streams)); client i uses connection i % conns.
    #[arg(long, default_value_t = 1)]
    pub conns: usize,
    /// Seconds to measure, after the warmup [default: 10 unless --total is given;
    /// lease-expiry-storm: --ttl + 15].
    #[arg(long, conflicts_with = "total")]
    pub duration: Option<f64>,
    /// Number of requests to measure, after the warmup (instead of --duration).
    #[arg(long)]
    pub total: Option<u64>,
    /// Seconds of load before measuring; those requests are not counted.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Key length in bytes: keys are the key's index, zero-padded decimal of this width.
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,
    /// Value length in bytes (put, txn, the range preload, watch-fanout's puts: at least 8).
    #[arg(long, default_value_t = 256)]
    pub val_size: usize,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 100_000)]
    pub key_space: u64,
    /// How each client picks the next key: uniformly at random, or a shared sequence 0, 1, 2, ...
    #[arg(long, value_enum, default_value_t = KeyOrder::Random)]
    pub key_order: KeyOrder,
    /// Seed of the random key choice (client i uses seed + i).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Per-request timeout in seconds; a request that times out counts as an error.
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
    /// Tokio worker threads [default: number of CPUs].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Write the result as a JSON object to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Name of the target in the output (e.g. concord, etcd) [default: the endpoints].
    #[arg(long)]
    pub label: Option<String>,
    /// No progress bar and no informational messages on stderr.
    #[arg(long, short)]
    pub quiet: bool,
}

/// `range` = the shared settings plus read-specific ones.
#[derive(Debug, Args)]
pub struct RangeArgs {
    /// Serializable reads (served from the local store) instead of linearizable ones.
    #[arg(long)]
    pub serializable: bool,
    /// Maximum number of keys written before measuring; reads only target these keys.
    #[arg(long, default_value_t = 10_000)]
    pub preload: u64,
    #[command(flatten)]
    pub run: RunArgs,
}

/// `watch-fanout` = the shared settings plus the watchers' shape and the write rate.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Watchers, all on the same key prefix.
    #[arg(long, default_value_t = 10_000)]
    pub watchers: usize,
    /// Watch streams (gRPC Watch calls) the watchers are spread over, evenly.
    #[arg(long, default_value_t = 100)]
    pub streams: usize,
    /// Target puts per second, all writers together (paced, not closed-loop).
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Seconds to wait after the writers stop for every watcher to see the last put.
    #[arg(long, default_value_t = 60.0)]
    pub drain_timeout: f64,
    /// The server's PID, to read its memory (VmRSS) and CPU time from /proc.
    #[arg(long)]
    pub server_pid: Option<u32>,
    #[command(flatten)]
    pub run: RunArgs,
}

/// `lease-keepalive` = the shared settings plus the number of leases and their TTL.
#[derive(Debug, Args)]
pub struct KeepAliveArgs {
    /// Leases to grant and keep alive.
    #[arg(long, default_value_t = 100_000)]
    pub leases: u64,
    /// TTL of the leases in seconds (long enough to survive the grant phase unrenewed).
    #[arg(long, default_value_t = 60)]
    pub ttl: i64,
    /// Leases checked with LeaseTimeToLive at the end (besides one LeaseLeases listing).
    #[arg(long, default_value_t = 100)]
    pub sample: usize,
    /// The server's PID, to read its CPU time from /proc.
    #[arg(long)]
    pub server_pid: Option<u32>,
    #[command(flatten)]
    pub run: RunArgs,
}

/// `lease-expiry-storm` = the `put` settings plus the leases that expire together.
#[derive(Debug, Args)]
pub struct StormArgs {
    /// Leases granted, each with one key attached.
    #[arg(long, default_value_t = 10_000)]
    pub leases: u64,
    /// TTL of every lease in seconds (etcd raises a TTL below its minimum, about 2 s).
    #[arg(long, default_value_t = 5)]
    pub ttl: i64,
    /// Seconds to keep polling after the puts stop if leased keys remain.
    #[arg(long, default_value_t = 60.0)]
    pub expiry_timeout: f64,
    /// The server's PID, to read its CPU time from /proc.
    #[arg(long)]
    pub server_pid: Option<u32>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Result files written with --json.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Label that the others are compared to (the ratio's denominator)
    /// [default: "etcd", else the one label containing "etcd", else the last label seen].
    #[arg(long)]
    pub baseline: Option<String>,
    /// Also write the table to this file.
    #[arg(long)]
    pub output: Option<PathBuf>,
}

/// What a subcommand does with the shared flags that differ between subcommands.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub default_clients: usize,
    /// --duration when neither --duration nor --total is given.
    pub default_duration: f64,
    /// Tasks besides the clients that use connections (watch streams): --conns is capped at
    /// the larger of this and --clients, as more connections would stay idle.
    pub other_conn_users: usize,
    /// Whether --total may replace --duration.
    pub allows_total: bool,
}

impl Default for Shape {
    fn default() -> Self {
        Shape {
            default_clients: 1,
            default_duration: 10.0,
            other_conn_users: 0,
            allows_total: true,
        }
    }
}

impl RunArgs {
    /// Checks the settings and turns them into a [`Plan`] for `workload`.
    pub fn plan(&self, workload: Workload) -> Result<Plan, BenchError> {
        self.plan_with(workload, Shape::default())
    }

    /// [`RunArgs::plan`] with a subcommand's own defaults and limits.
    pub fn plan_with(&self, workload: Workload, shape: Shape) -> Result<Plan, BenchError> {
        let bad = |msg: String| Err(BenchError::Args(msg));
        let clients = self.clients.unwrap_or(shape.default_clients);
        if clients == 0 || self.conns == 0 {
            return bad("--clients and --conns must be at least 1".into());
        }
        if self.endpoints.iter().all(|e| e.trim().is_empty()) {
            return bad("--endpoints is empty".into());
        }
        if self.key_size == 0 || self.key_space == 0 {
            return bad("--key-size and --key-space must be at least 1".into());
        }
        let max_keys = 10u64.checked_pow(self.key_size as u32).unwrap_or(u64::MAX);
        if self.key_space > max_keys {
            return bad(format!(
                "--key-space {} needs more than --key-size {} decimal digits",
                self.key_space, self.key_size
            ));
        }
        let stop = match (self.total, self.duration) {
            (Some(_), _) if !shape.allows_total => {
                return bad("--total only applies to put, range and txn; use --duration".into());
            }
            (Some(0), _) => return bad("--total must be at least 1".into()),
            (Some(n), _) => Stop::Total(n),
            (None, d) => {
                Stop::Duration(seconds("--duration", d.unwrap_or(shape.default_duration))?)
            }
        };
        let timeout = seconds("--timeout", self.timeout)?;
        if timeout.is_zero() {
            return bad("--timeout must be positive".into());
        }
        Ok(Plan {
            workload,
            endpoints: self
                .endpoints
                .iter()
                .map(|e| e.trim().to_string())
                .collect(),
            clients,
            // More connections than clients would leave connections idle.
            conns: self.conns.min(clients.max(shape.other_conn_users)),
            stop,
            warmup: seconds("--warmup", self.warmup)?,
            timeout,
            key_size: self.key_size,
            val_size: self.val_size,
            key_space: self.key_space,
            key_order: self.key_order,
            seed: self.seed,
            quiet: self.quiet,
            samples: false,
        })
    }

    /// The label for the output: `--label`, or the endpoint list.
    pub fn label(&self) -> String {
        self.label
            .clone()
            .unwrap_or_else(|| self.endpoints.join(","))
    }
}

impl WatchArgs {
    /// Checks the settings: the shared ones as a [`Plan`] (its clients are the writers).
    pub fn config(&self) -> Result<(Plan, WatchConfig), BenchError> {
        if self.watchers == 0 || self.streams == 0 {
            return Err(BenchError::Args(
                "--watchers and --streams must be at least 1".into(),
            ));
        }
        if self.streams > self.watchers {
            return Err(BenchError::Args(
                "--streams must not exceed --watchers".into(),
            ));
        }
        if !(self.rate.is_finite() && self.rate > 0.0) {
            return Err(BenchError::Args("--rate must be positive".into()));
        }
        let shape = Shape {
            default_clients: 100,
            other_conn_users: self.streams,
            allows_total: false,
            ..Shape::default()
        };
        let plan = self.run.plan_with(Workload::Put, shape)?;
        let config = WatchConfig {
            watchers: self.watchers,
            streams: self.streams,
            rate: self.rate,
            drain_timeout: seconds("--drain-timeout", self.drain_timeout)?,
            server_pid: self.server_pid,
        };
        Ok((plan, config))
    }
}

impl KeepAliveArgs {
    /// Checks the settings; there are at most as many clients as leases.
    pub fn config(&self) -> Result<(Plan, KeepAliveConfig), BenchError> {
        if self.leases == 0 || self.ttl < 1 {
            return Err(BenchError::Args(
                "--leases and --ttl must be at least 1".into(),
            ));
        }
        let shape = Shape {
            default_clients: 1000,
            allows_total: false,
            ..Shape::default()
        };
        let mut plan = self.run.plan_with(Workload::Put, shape)?;
        plan.clients = plan.clients.min(self.leases as usize);
        plan.conns = plan.conns.min(plan.clients);
        let config = KeepAliveConfig {
            leases: self.leases,
            ttl: self.ttl,
            sample: self.sample,
            server_pid: self.server_pid,
        };
        Ok((plan, config))
    }
}

impl StormArgs {
    /// Checks the settings: a `put` plan that keeps every request's timing.
    pub fn config(&self) -> Result<(Plan, StormConfig), BenchError> {
        if self.leases == 0 || self.ttl < 1 {
            return Err(BenchError::Args(
                "--leases and --ttl must be at least 1".into(),
            ));
        }
        let shape = Shape {
            default_duration: self.ttl as f64 + 15.0,
            allows_total: false,
            ..Shape::default()
        };
        let mut plan = self.run.plan_with(Workload::Put, shape)?;
        plan.samples = true;
        let config = StormConfig {
            leases: self.leases,
            ttl: self.ttl,
            expiry_timeout: seconds("--expiry-timeout", self.expiry_timeout)?,
            server_pid: self.server_pid,
        };
        Ok((plan, config))
    }
}

fn seconds(flag: &str, secs: f64) -> Result<Duration, BenchError> {
    Duration::try_from_secs_f64(secs)
        .map_err(|_| BenchError::Args(format!("{flag} must be a non-negative number of seconds")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Command {
        let argv = ["concord-bench"].iter().chain(args).copied();
        Cli::try_parse_from(argv).expect("valid arguments").command
    }

    #[test]
    fn each_subcommand_has_its_own_client_default() {
        let Command::Put(put) = parse(&["put"]) else {
            panic!()
        };
        assert_eq!(put.plan(Workload::Put).unwrap().clients, 1);
        let Command::WatchFanout(w) = parse(&["watch-fanout", "--conns", "8"]) else {
            panic!()
        };
        let (plan, config) = w.config().unwrap();
        // 100 writers, and the 100 streams may use all 8 connections.
        assert_eq!(
            (plan.clients, plan.conns, config.watchers),
            (100, 8, 10_000)
        );
        let Command::LeaseKeepalive(k) = parse(&["lease-keepalive", "--leases", "10"]) else {
            panic!()
        };
        // No more clients than leases.
        assert_eq!(k.config().unwrap().0.clients, 10);
    }

    #[test]
    fn the_storm_runs_past_its_ttl_and_keeps_samples() {
        let Command::LeaseExpiryStorm(s) = parse(&["lease-expiry-storm", "--ttl", "7"]) else {
            panic!()
        };
        let (plan, config) = s.config().unwrap();
        assert_eq!(plan.duration(), Duration::from_secs(22));
        assert!(plan.samples);
        assert_eq!(config.leases, 10_000);
    }

    #[test]
    fn watch_and_lease_workloads_refuse_bad_shapes() {
        let refused = |args: &[&str]| match parse(args) {
            Command::WatchFanout(w) => w.config().is_err(),
            Command::LeaseKeepalive(k) => k.config().is_err(),
            Command::LeaseExpiryStorm(s) => s.config().is_err(),
            _ => unreachable!(),
        };
        assert!(refused(&[
            "watch-fanout",
            "--watchers",
            "5",
            "--streams",
            "6"
        ]));
        assert!(refused(&["watch-fanout", "--rate", "0"]));
        assert!(refused(&["watch-fanout", "--total", "100"]));
        assert!(refused(&["lease-keepalive", "--ttl", "0"]));
        assert!(refused(&["lease-expiry-storm", "--leases", "0"]));
    }
}
