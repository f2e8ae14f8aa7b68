//! `concord-bench`: a load generator for the etcd v3 gRPC API, to measure Concord and etcd the
//! same way (it only uses the `etcd-client` crate, so it cannot tell them apart).
//!
//! A run opens `--conns` gRPC connections, does the workload's untimed preparation (see
//! [`workload`]), then keeps `--clients` requests in flight for `--warmup` seconds (not counted)
//! plus `--duration` seconds or `--total` requests (see [`runner`]). It prints throughput and
//! latency percentiles to stdout and, with `--json`, writes them as a [`report::BenchResult`];
//! `compare` turns such files into a Markdown table (see [`report`]).
//!
//! `watch-fanout`, `lease-keepalive` and `lease-expiry-storm` drive the Watch and Lease APIs with
//! their own loops ([`watch`], [`keepalive`], [`storm`]) and add their own section to the result.
//!
//! Exit status: 0 when the run completed (failed requests are counted, not fatal), 1 when it could
//! not run (bad arguments, unreachable endpoints, failed preparation, unwritable output).

mod cli;
mod error;
mod keepalive;
mod keys;
mod lease;
mod procfs;
mod report;
mod revisions;
mod runner;
mod storm;
mod watch;
mod workload;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command, CompareArgs, RunArgs};
use crate::error::BenchError;
use crate::report::BenchResult;
use crate::workload::{Op, Workload};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Put(args) => bench(&args, Workload::Put),
        Command::Range(args) => bench(
            &args.run,
            Workload::Range {
                serializable: args.serializable,
                preload: args.preload,
            },
        ),
        Command::Txn(args) => bench(&args, Workload::Txn),
        Command::WatchFanout(args) => args.config().and_then(|(plan, config)| {
            run_async(&args.run, |label| async move {
                watch::run(&plan, &config, label).await
            })
        }),
        Command::LeaseKeepalive(args) => args.config().and_then(|(plan, config)| {
            run_async(&args.run, |label| async move {
                keepalive::run(&plan, &config, label).await
            })
        }),
        Command::LeaseExpiryStorm(args) => args.config().and_then(|(plan, config)| {
            run_async(&args.run, |label| async move {
                storm::run(&plan, &config, label).await
            })
        }),
        Command::Compare(args) => compare(&args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("concord-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one closed-loop workload (put, range, txn) and reports it.
fn bench(args: &RunArgs, workload: Workload) -> Result<(), BenchError> {
    let plan = args.plan(workload)?;
    let runtime = runtime(args)?;
    let (measurement, key_count) = runtime.block_on(async {
        let conns = workload::connect(&plan).await?;
        let op = Op::new(&plan);
        let key_count = op.key_count();
        if !plan.quiet {
            eprintln!(
                "{}: {} clients over {} connections to {}, warmup {:?}",
                workload.name(),
                plan.clients,
                plan.conns,
                plan.endpoints.join(","),
                plan.warmup
            );
        }
        op.prepare(&plan, &conns).await?;
        Ok::<_, BenchError>((runner::run(&plan, op, &conns).await, key_count))
    })?;
    // Dropping the runtime closes the connections; do not wait on slow server-side teardown.
    runtime.shutdown_background();

    let result = BenchResult::new(args.label(), &plan, key_count, &measurement);
    report(args, &result)
}

/// Runs a workload that produces its own result (watch and lease workloads) and reports it.
fn run_async<F, Fut>(args: &RunArgs, run: F) -> Result<(), BenchError>
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = Result<BenchResult, BenchError>>,
{
    let runtime = runtime(args)?;
    let result = runtime.block_on(run(args.label()));
    // Dropping the runtime closes the connections; do not wait on slow server-side teardown.
    runtime.shutdown_background();
    report(args, &result?)
}

/// A multi-threaded Tokio runtime with `--threads` workers (default: one per CPU).
fn runtime(args: &RunArgs) -> Result<tokio::runtime::Runtime, BenchError> {
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = args.threads {
        runtime.worker_threads(threads.max(1));
    }
    runtime
        .enable_all()
        .build()
        .map_err(|e| BenchError::Setup(format!("cannot start the tokio runtime: {e}")))
}

/// Prints the summary and writes the JSON file if asked.
fn report(args: &RunArgs, result: &BenchResult) -> Result<(), BenchError> {
    print!("{}", result.summary());
    if let Some(path) = &args.json {
        result.write_json(path)?;
    }
    Ok(())
}

/// Reads result files and prints (and optionally saves) the comparison table.
fn compare(args: &CompareArgs) -> Result<(), BenchError> {
    let results = args
        .files
        .iter()
        .map(|path| BenchResult::read_json(path))
        .collect::<Result<Vec<_>, _>>()?;
    let (table, warnings) = report::compare_table(&results, args.baseline.as_deref());
    for warning in warnings {
        eprintln!("warning: {warning}");
    }
    print!("{table}");
    if let Some(path) = &args.output {
        std::fs::write(path, &table).map_err(|source| BenchError::Io {
            path: path.clone(),
            source,
        })?;
    }
    Ok(())
}
