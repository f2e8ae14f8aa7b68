//! An in-process client of the KV and Watch cores, and the queue discipline Lock and Election
//! share.
//!
//! etcd serves `v3lockpb.Lock` and `v3electionpb.Election` by running its Go `concurrency`
//! package against itself. Concord does the same without the network: [`Local`] calls the KV
//! adapter's checked entry points (so every write still goes through Raft and every read is
//! linearizable) and opens watchers on the hub directly.
//!
//! The discipline ([`Local::enqueue`], [`Local::wait_turn`]) is etcd's: contenders for `name` each
//! own a key under `name/`, ordered by create revision; the lowest one holds. A waiter watches
//! only the closest key created before its own, so a release wakes one waiter, not all of them.
//! Unlike etcd 3.4, a waiter also watches its own key: if that key vanishes while it waits (its
//! lease ended, or someone deleted it), it stops with "mutex: session is expired" rather than
//! reporting a lock it no longer has a place for.
//!
//! A contender whose request goes away while it waits (the client canceled, the connection broke)
//! must not leave its key behind to block everyone after it: [`Cleanup`] deletes the key when
//! dropped unless disarmed.

use std::sync::Arc;

use concord_proto::etcdserverpb::{
    Compare, DeleteRangeRequest, DeleteRangeResponse, PutRequest, RangeRequest, RequestOp,
    ResponseHeader, ResponseOp, TxnRequest, TxnResponse, WatchCreateRequest, compare,
    range_request, request_op, response_op,
};
use concord_proto::mvccpb::{KeyValue, event::EventType};
use tokio::sync::mpsc;

use super::Core;
use super::kv::KvService;
use crate::error::{Error, Result};
use crate::watch::{Delivery, StreamId};

/// Deliveries buffered for one in-process watcher.
const WATCH_BUFFER: usize = 64;

/// An in-process client (see the module doc).
#[derive(Clone)]
pub struct Local {
    core: Arc<Core>,
    kv: Arc<KvService>,
}

/// Where a contender stands after [`Local::enqueue`].
pub struct Place {
    /// Its key's create revision.
    pub rev: i64,
    /// The key's current value (an existing key keeps its value).
    pub value: Vec<u8>,
    /// Whether it holds already (no key under the prefix was created before it).
    pub first: bool,
    pub header: Option<ResponseHeader>,
}

/// What a watcher saw.
pub enum Seen {
    /// Events, in revision order.
    Events(Vec<concord_proto::mvccpb::Event>),
    /// The history the watcher needed was compacted away: read the state again.
    Compacted,
}

impl Local {
    pub fn new(core: Arc<Core>) -> Local {
        let kv = Arc::new(KvService::new(core.clone()));
        Local { core, kv }
    }

    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    pub async fn txn(&self, txn: TxnRequest) -> Result<TxnResponse> {
        self.kv.txn_inner(txn).await
    }

    /// A linearizable read of `key` (with `options` applied to the request).
    pub async fn get(
        &self,
        key: &[u8],
        options: impl FnOnce(&mut RangeRequest),
    ) -> Result<(Vec<KeyValue>, Option<ResponseHeader>)> {
        let mut r = RangeRequest {
            key: key.to_vec(),
            ..Default::default()
        };
        options(&mut r);
        let resp = self.kv.range_inner(r).await?;
        Ok((resp.kvs, resp.header))
    }

    /// The key under `prefix` with the lowest create revision: the holder.
    pub async fn first(&self, prefix: &[u8]) -> Result<(Option<KeyValue>, Option<ResponseHeader>)> {
        let (kvs, header) = self.get(prefix, |r| first_created(r, prefix)).await?;
        Ok((kvs.into_iter().next(), header))
    }

    /// Deletes `key`.
    pub async fn delete(&self, key: &[u8]) -> Result<DeleteRangeResponse> {
        let r = DeleteRangeRequest {
            key: key.to_vec(),
            ..Default::default()
        };
        self.kv.delete_inner(r).await
    }

    /// Deletes `key` if its create revision is still `rev`; whether it was.
    pub async fn delete_if(&self, key: &[u8], rev: i64) -> Result<TxnResponse> {
        self.txn(TxnRequest {
            compare: vec![created_at(key, rev)],
            success: vec![op(request_op::Request::RequestDeleteRange(
                DeleteRangeRequest {
                    key: key.to_vec(),
                    ..Default::default()
                },
            ))],
            failure: vec![],
        })
        .await
    }

    /// Creates `key` with `value` and `lease` unless it exists, in one transaction that also reads
    /// the holder of `prefix` (etcd's Mutex.Lock and Election.Campaign).
    pub async fn enqueue(
        &self,
        prefix: &[u8],
        key: &[u8],
        value: &[u8],
        lease: i64,
    ) -> Result<Place> {
        let holder = op(request_op::Request::RequestRange({
            let mut r = RangeRequest::default();
            first_created(&mut r, prefix);
            r
        }));
        let resp = self
            .txn(TxnRequest {
                compare: vec![created_at(key, 0)],
                success: vec![
                    op(request_op::Request::RequestPut(PutRequest {
                        key: key.to_vec(),
                        value: value.to_vec(),
                        lease,
                        ..Default::default()
                    })),
                    holder.clone(),
                ],
                failure: vec![
                    op(request_op::Request::RequestRange(RangeRequest {
                        key: key.to_vec(),
                        ..Default::default()
                    })),
                    holder,
                ],
            })
            .await?;
        let revision = resp.header.as_ref().map_or(0, |h| h.revision);
        let ranges: Vec<Vec<KeyValue>> = resp.responses.into_iter().map(range_kvs).collect();
        let (rev, value) = if resp.succeeded {
            (revision, value.to_vec())
        } else {
            // The key existed: it keeps its place (create revision) and its value.
            let kv = ranges.first().and_then(|kvs| kvs.first());
            let kv = kv.ok_or(Error::SessionExpired)?;
            (kv.create_revision, kv.value.to_vec())
        };
        let first = ranges
            .get(1)
            .and_then(|kvs| kvs.first())
            .is_none_or(|holder| holder.create_revision == rev);
        Ok(Place {
            rev,
            value,
            first,
            header: resp.header,
        })
    }

    /// Waits until no key under `prefix` was created before `rev` (the caller's key, `key`, is
    /// then the first), watching one predecessor at a time; fails if `key` itself goes away
    /// meanwhile. Returns the header of the read that found no predecessor.
    pub async fn wait_turn(
        &self,
        prefix: &[u8],
        key: &[u8],
        rev: i64,
    ) -> Result<Option<ResponseHeader>> {
        let mine = self.watch(key, rev).await?;
        tokio::select! {
            header = self.wait_predecessors(prefix, rev) => header,
            _ = mine.deleted() => Err(Error::SessionExpired),
        }
    }

    async fn wait_predecessors(&self, prefix: &[u8], rev: i64) -> Result<Option<ResponseHeader>> {
        loop {
            let (kvs, header) = self
                .get(prefix, |r| {
                    r.range_end = prefix_end(prefix);
                    r.max_create_revision = rev - 1;
                    r.sort_target = range_request::SortTarget::Create as i32;
                    r.sort_order = range_request::SortOrder::Descend as i32;
                    r.limit = 1;
                })
                .await?;
            let Some(before) = kvs.into_iter().next() else {
                return Ok(header);
            };
            let from = header.as_ref().map_or(0, |h| h.revision);
            self.watch(&before.key[..], from).await?.deleted().await?;
        }
    }

    /// A watcher on `key` from revision `from` on.
    pub async fn watch(&self, key: &[u8], from: i64) -> Result<LocalWatch> {
        self.watch_range(key, Vec::new(), from).await
    }

    /// A watcher on `[key, end)` (etcd's range rules) from revision `from` on.
    pub async fn watch_range(&self, key: &[u8], end: Vec<u8>, from: i64) -> Result<LocalWatch> {
        let hub = self.core.hub.clone();
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let stream = hub.open_stream(tx.clone());
        // From here on, dropping `watch` closes the stream.
        let mut watch = LocalWatch {
            core: self.core.clone(),
            stream,
            rx,
        };
        let slot = tx.reserve().await.map_err(|_| Error::Stopped)?;
        let create = WatchCreateRequest {
            key: key.to_vec(),
            range_end: end,
            start_revision: from,
            ..Default::default()
        };
        hub.watch(stream, &create, slot);
        match watch.rx.recv().await {
            Some(Delivery::Created { error: None, .. }) => Ok(watch),
            Some(Delivery::Created {
                error: Some(error), ..
            }) => Err(Error::Raft(format!(
                "an internal watch was refused: {error}"
            ))),
            _ => Err(Error::Stopped),
        }
    }
}

/// A watcher opened by [`Local::watch`]; closed when dropped.
pub struct LocalWatch {
    core: Arc<Core>,
    stream: StreamId,
    rx: mpsc::Receiver<Delivery>,
}

impl LocalWatch {
    /// The next events (or news of compaction). Ends with [`Error::Stopped`] when the server
    /// stops.
    pub async fn next(&mut self) -> Result<Seen> {
        let mut stop = self.core.stop.clone();
        loop {
            let delivery = tokio::select! {
                d = self.rx.recv() => d.ok_or(Error::Stopped)?,
                _ = stop.wait_for(|s| *s) => return Err(Error::Stopped),
            };
            match delivery {
                Delivery::Events { watchers, .. } => {
                    let events = watchers
                        .into_iter()
                        .flat_map(|w| w.events)
                        .map(|e| (*e).clone())
                        .collect();
                    return Ok(Seen::Events(events));
                }
                Delivery::Compacted { .. } => return Ok(Seen::Compacted),
                Delivery::Canceled { .. } => return Err(Error::Stopped),
                Delivery::Created { .. } | Delivery::Progress { .. } => {}
            }
        }
    }

    /// Waits for a delete of the watched key; compaction also returns (the caller reads again).
    pub async fn deleted(mut self) -> Result<()> {
        loop {
            match self.next().await? {
                Seen::Compacted => return Ok(()),
                Seen::Events(events) => {
                    if events.iter().any(|e| e.r#type == EventType::Delete as i32) {
                        return Ok(());
                    }
                }
            }
        }
    }
}

impl Drop for LocalWatch {
    fn drop(&mut self) {
        self.core.hub.close_stream(self.stream);
    }
}

/// Deletes a contender's key when dropped, unless [`Cleanup::disarm`]ed: a request that goes
/// away while waiting leaves nothing behind.
pub struct Cleanup {
    local: Option<Local>,
    key: Vec<u8>,
    rev: i64,
}

impl Cleanup {
    pub fn new(local: &Local, key: &[u8], rev: i64) -> Cleanup {
        Cleanup {
            local: Some(local.clone()),
            key: key.to_vec(),
            rev,
        }
    }

    pub fn disarm(mut self) {
        self.local = None;
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let Some(local) = self.local.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (key, rev) = (std::mem::take(&mut self.key), self.rev);
        runtime.spawn(async move {
            if let Err(e) = local.delete_if(&key, rev).await {
                tracing::warn!(key = %String::from_utf8_lossy(&key), error = %e,
                    "could not remove an abandoned lock or election key");
            }
        });
    }
}

/// A request op.
pub fn op(request: request_op::Request) -> RequestOp {
    RequestOp {
        request: Some(request),
    }
}

/// The compare "`key`'s create revision is `rev`" (0: the key does not exist).
pub fn created_at(key: &[u8], rev: i64) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Create as i32,
        key: key.to_vec(),
        target_union: Some(compare::TargetUnion::CreateRevision(rev)),
        range_end: Vec::new(),
    }
}

/// The kvs of a range response (none for other responses).
fn range_kvs(resp: ResponseOp) -> Vec<KeyValue> {
    match resp.response {
        Some(response_op::Response::ResponseRange(r)) => r.kvs,
        _ => Vec::new(),
    }
}

/// Shapes `r` into "the first-created key under `prefix`" (Go's `WithFirstCreate`).
fn first_created(r: &mut RangeRequest, prefix: &[u8]) {
    r.key = prefix.to_vec();
    r.range_end = prefix_end(prefix);
    r.sort_target = range_request::SortTarget::Create as i32;
    r.sort_order = range_request::SortOrder::Ascend as i32;
    r.limit = 1;
}

/// The end of the range of keys starting with `prefix` (etcd's `GetPrefixRangeEnd`).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}
