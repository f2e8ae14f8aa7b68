//! The hub's two threads: the dispatcher and the catch-up loop.
//!
//! - The **dispatcher** receives each applied batch's events from the node loop through an
//!   unbounded channel ([`EventSink::publish`] never blocks the loop) and offers them to the synced
//!   watchers. When it falls behind, it takes everything queued in one go: one pass over the
//!   watchers and one send per stream for the lot, however many batches waited. (Its matching
//!   work is watchers × events; the queue is unbounded, bounded in practice by that catch-up.)
//! - The **catch-up** loop serves unsynced watchers from history ([`Hub::sync_round`]) whenever
//!   woken, and at least every [`SYNC_INTERVAL`]; and it sends progress notifications every
//!   progress interval.
//!
//! Both are OS threads: catch-up reads sled, which blocks, and neither may hold up the other.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use concord_proto::mvccpb::Event;
use crossbeam_channel::{Receiver, Sender};

use super::Hub;
use super::hub::SyncRound;
use crate::error::{Error, Result};
use crate::mvcc::Rev;

/// How often unsynced watchers are served even when nothing wakes the loop (etcd's value).
pub const SYNC_INTERVAL: Duration = Duration::from_millis(100);
/// The pause before another round while watchers remain unsynced (their streams may be full).
const RETRY_INTERVAL: Duration = Duration::from_millis(10);

/// Where the node loop publishes applied events.
#[derive(Clone)]
pub struct EventSink {
    tx: Sender<Published>,
}

/// What the node loop hands the dispatcher, in apply order.
enum Published {
    /// A batch's events (revision order) and the revision after it.
    Events(Vec<Event>, Rev),
    /// A snapshot replaced the store, now at this revision (see [`Hub::restored`]).
    Restored(Rev),
}

impl EventSink {
    /// Hands a batch's events (revision order) and the revision after it to the dispatcher.
    pub fn publish(&self, events: Vec<Event>, revision: Rev) {
        if !events.is_empty() {
            let _ = self.tx.send(Published::Events(events, revision));
        }
    }

    /// Tells the dispatcher that a snapshot replaced the store, after every batch published
    /// before: watchers catch up on the jump from history.
    pub fn restored(&self, revision: Rev) {
        let _ = self.tx.send(Published::Restored(revision));
    }
}

/// The running threads; [`Threads::stop`] ends them.
pub struct Threads {
    hub: Arc<Hub>,
    dispatcher: Option<JoinHandle<()>>,
    catch_up: Option<JoinHandle<()>>,
}

/// Starts both threads for `hub`.
pub fn start(hub: Arc<Hub>, progress_interval: Duration) -> Result<(EventSink, Threads)> {
    let (tx, rx) = crossbeam_channel::unbounded();
    let spawn_err = |e: std::io::Error| Error::Network(format!("cannot start a watch thread: {e}"));
    let dispatcher = {
        let hub = hub.clone();
        std::thread::Builder::new()
            .name("concord-watch".into())
            .spawn(move || dispatch(&hub, rx))
            .map_err(spawn_err)?
    };
    let catch_up = {
        let hub = hub.clone();
        std::thread::Builder::new()
            .name("concord-watch-sync".into())
            .spawn(move || catch_up(&hub, progress_interval))
            .map_err(spawn_err)?
    };
    Ok((
        EventSink { tx },
        Threads {
            hub,
            dispatcher: Some(dispatcher),
            catch_up: Some(catch_up),
        },
    ))
}

impl Threads {
    /// Closes the hub (ending every stream) and waits for the catch-up thread. The dispatcher
    /// ends when the node loop drops its [`EventSink`].
    pub fn stop(&mut self) {
        self.hub.close();
        if let Some(t) = self.catch_up.take() {
            let _ = t.join();
        }
        if let Some(t) = self.dispatcher.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Threads {
    fn drop(&mut self) {
        self.hub.close();
    }
}

fn dispatch(hub: &Hub, rx: Receiver<Published>) {
    while let Ok(first) = rx.recv() {
        let mut events = Vec::new();
        let mut revision = 0;
        for published in std::iter::once(first).chain(rx.try_iter()) {
            match published {
                Published::Events(batch, rev) => {
                    events.extend(batch.into_iter().map(Arc::new));
                    revision = rev;
                }
                Published::Restored(rev) => {
                    if !events.is_empty() {
                        hub.dispatch(&std::mem::take(&mut events), revision);
                    }
                    hub.restored(rev);
                }
            }
        }
        if !events.is_empty() {
            hub.dispatch(&events, revision);
        }
    }
}

fn catch_up(hub: &Hub, progress_interval: Duration) {
    let mut last_progress = Instant::now();
    let mut pause = SYNC_INTERVAL;
    while hub.wait(pause) {
        pause = match hub.sync_round() {
            Ok(SyncRound::Progressed) => Duration::ZERO,
            Ok(SyncRound::Blocked) => RETRY_INTERVAL,
            Ok(SyncRound::Idle) => SYNC_INTERVAL,
            Err(e) => {
                tracing::error!(error = %e, "watch catch-up cannot read history");
                SYNC_INTERVAL
            }
        };
        if last_progress.elapsed() >= progress_interval {
            last_progress = Instant::now();
            hub.progress_tick();
        }
    }
}
