//! The `concord` binary: parses etcd-style flags, starts a member, and stops it cleanly on SIGINT
//! or SIGTERM.

use clap::Parser;

/// mimalloc instead of glibc's malloc: the write path allocates and frees many small buffers per
/// request (gRPC frames, protobuf messages, sled nodes); glibc spent about a fifth of the Raft
/// thread's time in malloc, free, arena trimming and page faults under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use concord_store::{Flags, Server};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let flags = Flags::parse();
    let filter = EnvFilter::try_new(format!("concord_store={0},concord={0}", flags.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();
    match run(flags).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err}");
            eprintln!("concord: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(flags: Flags) -> concord_store::Result<()> {
    let config = flags.into_config()?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        etcd_api = concord_store::config::ETCD_API_VERSION,
        "starting concord"
    );
    let mut server = Server::start(config).await?;
    tokio::select! {
        signal = shutdown_signal() => {
            tracing::info!("received {signal}, shutting down");
            server.shutdown().await?;
            tracing::info!("stopped");
            Ok(())
        }
        result = server.stopped() => match result {
            // etcd's way out for a member removed from its cluster: answer what is in flight, stop.
            Err(concord_store::Error::Removed) => {
                tracing::warn!("{}; stopping", concord_store::Error::Removed);
                server.shutdown().await?;
                Ok(())
            }
            Err(e) => Err(e),
            Ok(()) => Err(concord_store::Error::Raft("the raft loop stopped unexpectedly".into())),
        }
    }
}

async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}
