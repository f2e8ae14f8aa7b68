//! Command-line interface (clap derive) and its translation into a [`Plan`].
//!
//! Every load subcommand (`put`, `range`, `txn`) shares [`RunArgs`]; `compare` only reads result
//! files. Validation that clap cannot express (key space vs. key size, zero counts) lives in
//! [`RunArgs::plan`], so the rest of the program only sees consistent settings.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::error::BenchError;
use crate::keys::KeyOrder;
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
    /// Print a Markdown side-by-side table of result files written with --json.
    Compare(CompareArgs),
}

/// Settings shared by all load subcommands.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Comma-separated gRPC endpoints (host:port or http://host:port).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:2379")]
    pub endpoints: Vec<String>,
    /// Concurrent requests in flight (one task per client, each waiting for its reply).
    #[arg(long, default_value_t = 1)]
    pub clients: usize,
    /// gRPC connections (one etcd_client::Client each, at most --clients); client i uses
    /// connection i % conns.
    #[arg(long, default_value_t = 1)]
    pub conns: usize,
    /// Seconds to measure, after the warmup [default: 10 unless --total is given].
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
    /// Value length in bytes (put, txn and the range preload).
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

impl RunArgs {
    /// Checks the settings and turns them into a [`Plan`] for `workload`.
    pub fn plan(&self, workload: Workload) -> Result<Plan, BenchError> {
        let bad = |msg: String| Err(BenchError::Args(msg));
        if self.clients == 0 || self.conns == 0 {
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
            (Some(0), _) => return bad("--total must be at least 1".into()),
            (Some(n), _) => Stop::Total(n),
            (None, d) => Stop::Duration(seconds("--duration", d.unwrap_or(10.0))?),
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
            clients: self.clients,
            // More connections than clients would leave connections idle.
            conns: self.conns.min(self.clients),
            stop,
            warmup: seconds("--warmup", self.warmup)?,
            timeout,
            key_size: self.key_size,
            val_size: self.val_size,
            key_space: self.key_space,
            key_order: self.key_order,
            seed: self.seed,
            quiet: self.quiet,
        })
    }

    /// The label for the output: `--label`, or the endpoint list.
    pub fn label(&self) -> String {
        self.label
            .clone()
            .unwrap_or_else(|| self.endpoints.join(","))
    }
}

fn seconds(flag: &str, secs: f64) -> Result<Duration, BenchError> {
    Duration::try_from_secs_f64(secs)
        .map_err(|_| BenchError::Args(format!("{flag} must be a non-negative number of seconds")))
}
