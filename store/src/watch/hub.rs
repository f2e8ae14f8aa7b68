//! The watch hub: every watcher of every stream, synced or unsynced (see the module doc of
//! `watch`).
//!
//! Invariants (under the hub's lock):
//! - `current` is the newest revision whose events were dispatched; it never goes back;
//! - every event of a revision below a watcher's `next_rev` that matches it was sent to its stream
//!   (or the watcher was canceled); no event at or above `next_rev` was;
//! - a synced watcher has `next_rev > current` *or* is owed nothing below `current + 1` it has not
//!   been sent — concretely, a synced watcher's `next_rev` may lag behind for revisions that had
//!   nothing for it, so the dispatcher only ever moves it forward, to past the batch it offered;
//! - an unsynced watcher is owed exactly the matching events of revisions `next_rev..=current`
//!   (and whatever comes after), which the catch-up thread reads from history.
//!
//! Lock order: the hub's lock, then the store's read lock, never the other way round (the apply
//! loop releases the store before it publishes events), so the two cannot deadlock.

use std::collections::HashMap;
use std::sync::Arc;

use concord_proto::etcdserverpb::WatchCreateRequest;
use concord_proto::etcdserverpb::watch_create_request::FilterType;
use concord_proto::mvccpb::{Event, event::EventType};
use parking_lot::{Condvar, Mutex};
use tokio::sync::mpsc::{self, error::TrySendError};

use crate::error::Result;
use crate::mvcc::{KeyRange, KvStore, Rev};

/// A watcher's id, unique on its stream (etcd's numbering: from 0, or chosen by the client).
pub type WatchId = i64;
/// A Watch stream (one gRPC call).
pub type StreamId = u64;

/// Most watchers the catch-up thread serves in one round (etcd's value).
const SYNC_BATCH_WATCHERS: usize = 512;
/// About how many events one round of catch-up reads (whole revisions).
const SYNC_BATCH_EVENTS: usize = 128;

/// etcd's reasons a create request is refused (the `cancel_reason` of its reply).
pub const ERR_DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";
pub const ERR_EMPTY_RANGE: &str = "mvcc: watcher range is empty";

/// What a catch-up round achieved, so the loop knows when to run the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncRound {
    /// No watcher is unsynced.
    Idle,
    /// Some watcher moved forward and others remain: go on at once.
    Progressed,
    /// Watchers remain but none could move (their streams are full): wait a little.
    Blocked,
}

/// The events of whole revisions for one watcher.
#[derive(Debug, Clone)]
pub struct WatcherEvents {
    pub watch_id: WatchId,
    pub events: Vec<Arc<Event>>,
    /// Attach each key's previous value.
    pub prev_kv: bool,
    /// Split a response over the size limit.
    pub fragment: bool,
}

/// What the hub sends a stream. `revision` is the hub's revision, for the response header.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// The reply to a create request; `error` refuses it (the watcher does not exist then).
    Created {
        watch_id: WatchId,
        revision: Rev,
        error: Option<&'static str>,
    },
    /// The reply to a cancel request: nothing more follows for the watcher.
    Canceled { watch_id: WatchId, revision: Rev },
    /// Changes, for one or several watchers of the stream.
    Events {
        watchers: Vec<WatcherEvents>,
        revision: Rev,
    },
    /// The watcher's next revision was compacted away: it is canceled.
    Compacted {
        watch_id: WatchId,
        compact_revision: Rev,
        revision: Rev,
    },
    /// Nothing is pending for `watch_id` (-1: for every watcher of the stream) up to `revision`.
    Progress { watch_id: WatchId, revision: Rev },
}

/// One watcher.
#[derive(Debug)]
struct Watcher {
    key: Vec<u8>,
    /// etcd's range end: empty for one key, `[0]` for every key from `key` on.
    end: Vec<u8>,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
    fragment: bool,
    progress_notify: bool,
    /// The first revision not yet delivered (see the invariants).
    next_rev: Rev,
    synced: bool,
    /// Sent something since the last progress tick.
    active: bool,
}

impl Watcher {
    fn matches(&self, event: &Event) -> bool {
        let Some(kv) = &event.kv else { return false };
        let delete = event.r#type == EventType::Delete as i32;
        if (delete && self.no_delete) || (!delete && self.no_put) {
            return false;
        }
        KeyRange::new(&self.key, &self.end).contains(&kv.key)
    }

    /// Its share of `events` (in revision order): those at or after `next_rev` that match.
    fn pick(&self, events: &[Arc<Event>]) -> Vec<Arc<Event>> {
        events
            .iter()
            .filter(|e| revision_of(e) >= self.next_rev && self.matches(e))
            .cloned()
            .collect()
    }

    fn events(&self, watch_id: WatchId, events: Vec<Arc<Event>>) -> WatcherEvents {
        WatcherEvents {
            watch_id,
            events,
            prev_kv: self.prev_kv,
            fragment: self.fragment,
        }
    }
}

/// One Watch stream: its channel and its watchers.
struct Stream {
    tx: mpsc::Sender<Delivery>,
    watchers: HashMap<WatchId, Watcher>,
    /// The next id etcd would pick.
    next_id: WatchId,
    /// A deferred progress request, with the lowest revision it may report: the store's revision
    /// when it was asked (every write acknowledged before it), which the hub may not have
    /// dispatched yet. It waits for that and for every watcher to be synced.
    progress_pending: Option<Rev>,
}

impl Stream {
    /// Whether every watcher has been sent everything up to the hub's revision: only then may a
    /// progress notification say "nothing pending up to it".
    fn all_synced(&self) -> bool {
        self.watchers.values().all(|w| w.synced)
    }

    /// Answers a deferred progress request once it can be answered; it stays pending until a
    /// send succeeds.
    fn maybe_answer_progress(&mut self, current: Rev) {
        let Some(at_least) = self.progress_pending else {
            return;
        };
        if current >= at_least && self.all_synced() {
            let progress = Delivery::Progress {
                watch_id: -1,
                revision: current,
            };
            if self.tx.try_send(progress).is_ok() {
                self.progress_pending = None;
            }
        }
    }
}

#[derive(Default)]
struct HubState {
    streams: HashMap<StreamId, Stream>,
    current: Rev,
    next_stream: StreamId,
    /// Set at shutdown: the threads stop.
    closed: bool,
    /// How many times a synced watcher fell behind (its stream was full), ever.
    fell_behind: u64,
}

/// Every watcher, and the two ways events reach them (see the module doc).
pub struct Hub {
    state: Mutex<HubState>,
    /// Wakes the catch-up thread when a watcher falls behind or asks for history.
    wake: Condvar,
    kv: Arc<KvStore>,
}

impl Hub {
    /// A hub for `kv`, at its current revision.
    pub fn new(kv: Arc<KvStore>) -> Self {
        let state = HubState {
            current: kv.current_revision(),
            ..Default::default()
        };
        Hub {
            state: Mutex::new(state),
            wake: Condvar::new(),
            kv,
        }
    }

    pub fn kv(&self) -> &Arc<KvStore> {
        &self.kv
    }

    /// The newest revision dispatched.
    pub fn revision(&self) -> Rev {
        self.state.lock().current
    }

    /// Registers a stream whose deliveries go to `tx`.
    pub fn open_stream(&self, tx: mpsc::Sender<Delivery>) -> StreamId {
        let mut state = self.state.lock();
        state.next_stream += 1;
        let id = state.next_stream;
        state.streams.insert(
            id,
            Stream {
                tx,
                watchers: HashMap::new(),
                next_id: 0,
                progress_pending: None,
            },
        );
        id
    }

    /// Forgets a stream and its watchers.
    pub fn close_stream(&self, stream: StreamId) {
        self.state.lock().streams.remove(&stream);
    }

    /// Creates a watcher and sends the reply through `slot`, reserved on the stream's channel.
    pub fn watch(
        &self,
        stream: StreamId,
        req: &WatchCreateRequest,
        slot: mpsc::Permit<'_, Delivery>,
    ) {
        let mut state = self.state.lock();
        // "From now" means after every write a client has seen acknowledged, so the store's
        // revision, which the dispatcher may not have reached yet: the dispatch of revisions up
        // to it then skips this watcher (they are below its `next_rev`).
        let current = self.kv.current_revision().max(state.current);
        let Some(s) = state.streams.get_mut(&stream) else {
            return;
        };
        let refuse = |error| Delivery::Created {
            watch_id: -1,
            revision: current,
            error: Some(error),
        };
        let end = req.range_end.as_slice();
        if !end.is_empty() && end != [0] && req.key.as_slice() >= end {
            slot.send(refuse(ERR_EMPTY_RANGE));
            return;
        }
        let id = if req.watch_id != 0 {
            if s.watchers.contains_key(&req.watch_id) {
                slot.send(refuse(ERR_DUPLICATE_ID));
                return;
            }
            req.watch_id
        } else {
            while s.watchers.contains_key(&s.next_id) {
                s.next_id += 1;
            }
            s.next_id += 1;
            s.next_id - 1
        };
        let next_rev = if req.start_revision > 0 {
            req.start_revision
        } else {
            current + 1
        };
        let filters = |f: FilterType| req.filters.contains(&(f as i32));
        let watcher = Watcher {
            key: req.key.clone(),
            end: req.range_end.clone(),
            no_put: filters(FilterType::Noput),
            no_delete: filters(FilterType::Nodelete),
            prev_kv: req.prev_kv,
            fragment: req.fragment,
            progress_notify: req.progress_notify,
            next_rev,
            synced: next_rev > current,
            active: false,
        };
        let synced = watcher.synced;
        s.watchers.insert(id, watcher);
        slot.send(Delivery::Created {
            watch_id: id,
            revision: current,
            error: None,
        });
        if !synced {
            self.wake.notify_one();
        }
    }

    /// Cancels a watcher; replies through `slot` if it existed (etcd answers nothing otherwise).
    pub fn cancel(&self, stream: StreamId, watch_id: WatchId, slot: mpsc::Permit<'_, Delivery>) {
        let mut state = self.state.lock();
        let revision = state.current;
        let Some(s) = state.streams.get_mut(&stream) else {
            return;
        };
        if s.watchers.remove(&watch_id).is_some() {
            slot.send(Delivery::Canceled { watch_id, revision });
            // A pending progress request may be answerable now.
            s.maybe_answer_progress(revision);
        }
    }

    /// A progress request: answered at once if every watcher of the stream is synced and the hub
    /// has dispatched every write acknowledged so far; otherwise as soon as both hold (etcd
    /// reports at least the revision of the writes that preceded the request).
    pub fn request_progress(&self, stream: StreamId, slot: mpsc::Permit<'_, Delivery>) {
        let mut state = self.state.lock();
        let revision = state.current;
        let at_least = self.kv.current_revision();
        let Some(s) = state.streams.get_mut(&stream) else {
            return;
        };
        if s.all_synced() && revision >= at_least {
            s.progress_pending = None;
            slot.send(Delivery::Progress {
                watch_id: -1,
                revision,
            });
        } else {
            s.progress_pending = Some(s.progress_pending.map_or(at_least, |r| r.max(at_least)));
        }
    }

    /// Offers the events of a batch (revision order, up to `revision`) to the synced watchers.
    /// Never blocks: a watcher whose stream is full becomes unsynced.
    pub fn dispatch(&self, events: &[Arc<Event>], revision: Rev) {
        let mut state = self.state.lock();
        assert!(
            revision >= state.current,
            "dispatched revisions never go back"
        );
        state.current = revision;
        let Some(first) = events.first().map(|e| revision_of(e)) else {
            return;
        };
        let mut fell_behind = false;
        let mut state_fell_behind = 0;
        let mut closed = Vec::new();
        for (id, s) in state.streams.iter_mut() {
            let mut batch = Vec::new();
            for (watch_id, w) in s.watchers.iter_mut().filter(|(_, w)| w.synced) {
                let picked = w.pick(events);
                if !picked.is_empty() {
                    batch.push(w.events(*watch_id, picked));
                }
            }
            if batch.is_empty() {
                continue;
            }
            let ids: Vec<WatchId> = batch.iter().map(|b| b.watch_id).collect();
            let delivery = Delivery::Events {
                watchers: batch,
                revision,
            };
            match s.tx.try_send(delivery) {
                Ok(()) => {
                    for watch_id in ids {
                        let w = s.watchers.get_mut(&watch_id).expect("picked above");
                        w.next_rev = revision + 1;
                        w.active = true;
                    }
                }
                Err(TrySendError::Full(_)) => {
                    for watch_id in ids {
                        let w = s.watchers.get_mut(&watch_id).expect("picked above");
                        w.next_rev = w.next_rev.max(first);
                        w.synced = false;
                        state_fell_behind += 1;
                    }
                    fell_behind = true;
                }
                Err(TrySendError::Closed(_)) => closed.push(*id),
            }
        }
        for id in closed {
            state.streams.remove(&id);
        }
        state.fell_behind += state_fell_behind;
        // Only now: a progress notification must follow the events up to its revision.
        for s in state.streams.values_mut() {
            s.maybe_answer_progress(revision);
        }
        if fell_behind {
            self.wake.notify_one();
        }
    }

    /// A snapshot replaced the store, which is now at `revision`: the changes in between were
    /// never dispatched, so every synced watcher that may be owed some becomes unsynced and the
    /// catch-up thread reads them from history (the snapshot carries the history since the last
    /// compaction; a watcher owed compacted revisions is canceled as compacted, as usual).
    pub fn restored(&self, revision: Rev) {
        let mut state = self.state.lock();
        if revision <= state.current {
            return;
        }
        state.current = revision;
        for s in state.streams.values_mut() {
            for w in s.watchers.values_mut() {
                if w.synced && w.next_rev <= revision {
                    w.synced = false;
                }
            }
        }
        self.wake.notify_one();
    }

    /// One round of catch-up for up to [`SYNC_BATCH_WATCHERS`] unsynced watchers: one read of
    /// history, shared. Also answers deferred progress requests that became answerable.
    pub fn sync_round(&self) -> Result<SyncRound> {
        let compacted = self.kv.history_from();
        let mut picks = Vec::new();
        {
            let mut state = self.state.lock();
            let revision = state.current;
            let mut closed = Vec::new();
            for (sid, s) in state.streams.iter_mut() {
                if s.tx.capacity() == 0 {
                    continue; // its client is not reading: nothing could be sent anyway
                }
                let unsynced: Vec<(WatchId, Rev)> = s
                    .watchers
                    .iter()
                    .filter(|(_, w)| !w.synced)
                    .map(|(id, w)| (*id, w.next_rev))
                    .collect();
                for (watch_id, next_rev) in unsynced {
                    if next_rev < compacted {
                        let canceled = Delivery::Compacted {
                            watch_id,
                            compact_revision: compacted,
                            revision,
                        };
                        match s.tx.try_send(canceled) {
                            Ok(()) => {
                                s.watchers.remove(&watch_id);
                            }
                            Err(TrySendError::Full(_)) => {}
                            Err(TrySendError::Closed(_)) => closed.push(*sid),
                        }
                    } else if picks.len() < SYNC_BATCH_WATCHERS {
                        picks.push((*sid, watch_id, next_rev));
                    }
                }
            }
            for id in closed {
                state.streams.remove(&id);
            }
        }
        let Some(from) = picks.iter().map(|p| p.2).min() else {
            self.answer_pending_progress();
            return Ok(SyncRound::Idle);
        };
        let history = match self.kv.history(from, SYNC_BATCH_EVENTS) {
            Ok(h) => h,
            // Compacted meanwhile: the next round cancels whom it concerns.
            Err(crate::error::Error::Compacted) => return Ok(SyncRound::Progressed),
            Err(e) => return Err(e),
        };
        let mut progressed = false;
        let events: Vec<Arc<Event>> = history.events.into_iter().map(Arc::new).collect();
        let mut state = self.state.lock();
        let current = state.current;
        let mut closed = Vec::new();
        for (sid, watch_id, next_rev) in picks {
            let Some(s) = state.streams.get_mut(&sid) else {
                continue;
            };
            let Some(w) = s.watchers.get_mut(&watch_id) else {
                continue;
            };
            if w.synced || w.next_rev != next_rev {
                continue;
            }
            // Only up to the hub's revision: what is newer comes from the dispatcher, so revisions
            // in headers and progress notifications never go back.
            let upto = history.through.min(current);
            let picked: Vec<Arc<Event>> = w
                .pick(&events)
                .into_iter()
                .filter(|e| revision_of(e) <= upto)
                .collect();
            if !picked.is_empty() {
                let delivery = Delivery::Events {
                    watchers: vec![w.events(watch_id, picked)],
                    revision: current,
                };
                match s.tx.try_send(delivery) {
                    Ok(()) => w.active = true,
                    Err(TrySendError::Full(_)) => continue,
                    Err(TrySendError::Closed(_)) => {
                        closed.push(sid);
                        continue;
                    }
                }
            }
            // Never backwards: the read may have started below this watcher's next revision.
            progressed |= upto + 1 > w.next_rev;
            w.next_rev = w.next_rev.max(upto + 1);
            if w.next_rev > current {
                w.synced = true;
            }
        }
        for id in closed {
            state.streams.remove(&id);
        }
        for s in state.streams.values_mut() {
            s.maybe_answer_progress(current);
        }
        let remaining = state
            .streams
            .values()
            .any(|s| s.watchers.values().any(|w| !w.synced));
        Ok(match (remaining, progressed) {
            (false, _) => SyncRound::Idle,
            (true, true) => SyncRound::Progressed,
            (true, false) => SyncRound::Blocked,
        })
    }

    /// Answers deferred progress requests that can be answered now (see `Stream`).
    fn answer_pending_progress(&self) {
        let mut state = self.state.lock();
        let current = state.current;
        for s in state.streams.values_mut() {
            s.maybe_answer_progress(current);
        }
    }

    /// Sends a progress notification to every synced watcher that asked for them and received
    /// nothing since the last call (etcd's `progress_notify`).
    pub fn progress_tick(&self) {
        let mut state = self.state.lock();
        let revision = state.current;
        for s in state.streams.values_mut() {
            for (watch_id, w) in s.watchers.iter_mut() {
                if w.progress_notify && w.synced && !w.active {
                    let _ = s.tx.try_send(Delivery::Progress {
                        watch_id: *watch_id,
                        revision,
                    });
                }
                w.active = false;
            }
        }
    }

    /// Waits until woken or `timeout` passed; returns false once the hub is closed.
    pub fn wait(&self, timeout: std::time::Duration) -> bool {
        let mut state = self.state.lock();
        if !state.closed {
            self.wake.wait_for(&mut state, timeout);
        }
        !state.closed
    }

    /// Stops the hub's threads and ends every stream.
    pub fn close(&self) {
        let mut state = self.state.lock();
        state.closed = true;
        state.streams.clear();
        self.wake.notify_all();
    }

    /// (watchers, unsynced watchers), for tests and metrics.
    /// How many times a synced watcher fell behind because its stream was full, since the hub
    /// started (for tests and metrics: [`Hub::counts`] only shows the moment).
    pub fn fell_behind(&self) -> u64 {
        self.state.lock().fell_behind
    }

    pub fn counts(&self) -> (usize, usize) {
        let state = self.state.lock();
        let all = state.streams.values().map(|s| s.watchers.len()).sum();
        let unsynced = state
            .streams
            .values()
            .map(|s| s.watchers.values().filter(|w| !w.synced).count())
            .sum();
        (all, unsynced)
    }
}

/// The revision of an event.
pub fn revision_of(event: &Event) -> Rev {
    event.kv.as_ref().map_or(0, |kv| kv.mod_revision)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::store::WriteBatch;

    fn store() -> (sled::Db, Arc<KvStore>) {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let kv = Arc::new(KvStore::open(db.open_tree("state").unwrap()).unwrap());
        (db, kv)
    }

    /// Applies one put as the node loop would and returns its events.
    fn put(kv: &KvStore, key: &str) -> (Vec<Arc<Event>>, Rev) {
        let applied = kv.applied() + 1;
        let mut batch: WriteBatch<'_> = kv.write();
        batch.txn().put(key.as_bytes(), b"v", 0);
        let (rev, events) = batch.finish(applied);
        (events.into_iter().map(Arc::new).collect(), rev)
    }

    /// Puts `k` at revisions 2..=4, then compacts at 3.
    fn compacted_store() -> (sled::Db, Arc<KvStore>) {
        let (db, kv) = store();
        for _ in 0..3 {
            put(&kv, "k");
        }
        let applied = kv.applied();
        let mut batch = kv.write();
        batch.compact(3).unwrap();
        batch.finish(applied);
        (db, kv)
    }

    fn create(key: &str, start: Rev) -> WatchCreateRequest {
        WatchCreateRequest {
            key: key.into(),
            start_revision: start,
            ..Default::default()
        }
    }

    fn revs(d: &Delivery) -> Vec<Rev> {
        match d {
            Delivery::Events { watchers, .. } => watchers
                .iter()
                .flat_map(|w| w.events.iter().map(|e| revision_of(e)))
                .collect(),
            other => panic!("expected events, got {other:?}"),
        }
    }

    /// A worked example: a stream with room for two deliveries, a reader that does not read.
    #[tokio::test]
    async fn a_full_stream_falls_behind_and_catches_up_from_history_in_order() {
        let (_db, kv) = store();
        let hub = Hub::new(kv.clone());
        let (tx, mut rx) = mpsc::channel(2);
        let stream = hub.open_stream(tx.clone());
        hub.watch(stream, &create("k", 0), tx.try_reserve().unwrap());
        assert!(matches!(
            rx.recv().await,
            Some(Delivery::Created { watch_id: 0, .. })
        ));

        for _ in 0..4 {
            let (events, rev) = put(&kv, "k"); // revisions 2..=5
            hub.dispatch(&events, rev);
        }
        // Revisions 2 and 3 fit; 4 did not, so the watcher is unsynced from 4 (5 was not offered).
        assert_eq!(hub.counts(), (1, 1));
        assert_eq!(revs(&rx.recv().await.unwrap()), vec![2]);
        assert_eq!(revs(&rx.recv().await.unwrap()), vec![3]);
        assert_eq!(
            hub.sync_round().unwrap(),
            SyncRound::Idle,
            "nobody left behind"
        );
        assert_eq!(
            revs(&rx.recv().await.unwrap()),
            vec![4, 5],
            "read back from history"
        );
        assert_eq!(hub.counts(), (1, 0), "synced again");

        let (events, rev) = put(&kv, "k"); // 6
        hub.dispatch(&events, rev);
        assert_eq!(
            revs(&rx.recv().await.unwrap()),
            vec![6],
            "and served live once more"
        );
    }

    #[tokio::test]
    async fn a_watcher_overtaken_by_compaction_is_canceled_with_the_compact_revision() {
        let (_db, kv) = compacted_store();
        let hub = Hub::new(kv.clone());
        let (tx, mut rx) = mpsc::channel(4);
        let stream = hub.open_stream(tx.clone());
        hub.watch(stream, &create("k", 2), tx.try_reserve().unwrap());
        rx.recv().await.unwrap(); // created
        hub.sync_round().unwrap();
        match rx.recv().await.unwrap() {
            Delivery::Compacted {
                compact_revision, ..
            } => assert_eq!(compact_revision, 3),
            other => panic!("expected a compaction cancel, got {other:?}"),
        }
        assert_eq!(hub.counts(), (0, 0), "the watcher is gone");
    }

    /// The reviewer's case: the only unsynced watcher is canceled by compaction; the deferred
    /// progress must be answered then (no write needed), and always after the events it covers.
    #[tokio::test]
    async fn a_deferred_progress_is_answered_without_writes_and_never_ahead_of_events() {
        let (_db, kv) = compacted_store();
        let hub = Hub::new(kv.clone());
        let (tx, mut rx) = mpsc::channel(8);
        let stream = hub.open_stream(tx.clone());
        hub.watch(stream, &create("a", 0), tx.try_reserve().unwrap());
        hub.watch(stream, &create("k", 2), tx.try_reserve().unwrap());
        hub.request_progress(stream, tx.try_reserve().unwrap());
        assert!(matches!(
            rx.recv().await,
            Some(Delivery::Created { watch_id: 0, .. })
        ));
        assert!(matches!(
            rx.recv().await,
            Some(Delivery::Created { watch_id: 1, .. })
        ));
        assert!(rx.try_recv().is_err(), "deferred");
        hub.sync_round().unwrap();
        assert!(matches!(
            rx.recv().await,
            Some(Delivery::Compacted { watch_id: 1, .. })
        ));
        hub.sync_round().unwrap();
        assert!(matches!(
            rx.recv().await,
            Some(Delivery::Progress {
                watch_id: -1,
                revision: 4
            })
        ));
        let (events, rev) = put(&kv, "a"); // 5
        hub.dispatch(&events, rev);
        assert_eq!(revs(&rx.recv().await.unwrap()), vec![5]);
        assert!(rx.try_recv().is_err(), "answered once");
    }

    #[tokio::test]
    async fn a_progress_request_waits_until_every_watcher_is_synced() {
        let (_db, kv) = store();
        put(&kv, "k"); // 2
        let hub = Hub::new(kv.clone());
        let (tx, mut rx) = mpsc::channel(8);
        let stream = hub.open_stream(tx.clone());
        hub.watch(stream, &create("k", 2), tx.try_reserve().unwrap());
        rx.recv().await.unwrap(); // created
        hub.request_progress(stream, tx.try_reserve().unwrap());
        assert!(
            rx.try_recv().is_err(),
            "deferred: the watcher is replaying history"
        );
        hub.sync_round().unwrap();
        assert_eq!(revs(&rx.recv().await.unwrap()), vec![2]);
        assert!(matches!(
            rx.recv().await,
            Some(Delivery::Progress {
                watch_id: -1,
                revision: 2
            })
        ));
    }
}
