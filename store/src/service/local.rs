//! An in-process client of the KV and Watch cores, and the queue discipline Lock and Election
//! share.
//!
//! etcd serves `v3lockpb.Lock` and `v3electionpb.Election` by running its Go `concurrency`
//! package against itself. Concord does the same without the network: [`Local`] calls the KV
//! adapter's checked entry points (so every write still goes through Raft and every read is
//! linearizable) and opens watchers on the hub directly.
//!
//! The discipline ([`Local::contend`]) is etcd's: contenders for `name` each own a key under
//! `name/`, ordered by create revision; the lowest one holds. A waiter watches only the closest
//! key created before its own, so a release wakes one waiter, not all of them. Unlike etcd 3.4, a
//! waiter also watches its own key, and checks it once more when its turn comes: if the key
//! vanished (its lease ended, or someone deleted it), it fails with "mutex: session is expired"
//! rather than report a lock it no longer has a place for.
//!
//! A contender whose caller goes away (the client canceled, its deadline passed, the connection
//! broke) must not leave its key behind to block everyone after it — not even when it goes away
//! while the key is being written. So a contention runs on a task of its own: it always learns
//! whether its key was created, and when nobody takes its answer (or the answer is an error), it
//! deletes the key it created. A key that existed before the request (the same lease contending
//! again) is never deleted by it.

use std::sync::Arc;
use std::time::Duration;

use concord_proto::etcdserverpb::{
    Compare, DeleteRangeRequest, DeleteRangeResponse, PutRequest, RangeRequest, RequestOp,
    ResponseHeader, ResponseOp, TxnRequest, TxnResponse, WatchCreateRequest, compare,
    range_request, request_op, response_op,
};
use concord_proto::mvccpb::{KeyValue, event::EventType};
use tokio::sync::{mpsc, oneshot};

use super::Core;
use super::kv::KvService;
use crate::error::{Error, Result};
use crate::watch::{Delivery, StreamId};

/// Deliveries buffered for one in-process watcher.
const WATCH_BUFFER: usize = 64;
/// Attempts to delete an abandoned contender's key while the cluster is unavailable.
const CLEANUP_ATTEMPTS: usize = 10;

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
    /// Whether this request created the key (rather than finding it).
    pub created: bool,
    pub header: Option<ResponseHeader>,
}

/// A won contention: the key's create revision and the header of the read that settled it.
pub struct Won {
    pub rev: i64,
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
            created: resp.succeeded,
            header: resp.header,
        })
    }

    /// Puts `value` (with `lease`) at `key` if its create revision is still `rev` (an election's
    /// Proclaim); `succeeded` says whether it was.
    pub async fn put_if(
        &self,
        key: &[u8],
        rev: i64,
        value: Vec<u8>,
        lease: i64,
    ) -> Result<TxnResponse> {
        let put = PutRequest {
            key: key.to_vec(),
            value,
            lease,
            ..Default::default()
        };
        self.txn(TxnRequest {
            compare: vec![created_at(key, rev)],
            success: vec![op(request_op::Request::RequestPut(put))],
            failure: vec![],
        })
        .await
    }

    /// Contends for `key` under `prefix` with `value` and `lease`, and waits for its turn, on a
    /// task of its own (see the module doc). With `proclaim`, a key that exists already with
    /// another value (the same lease campaigning again) gets `value`. A contender needs a lease
    /// (see `lock` for why lease 0 is refused).
    pub async fn contend(
        &self,
        prefix: Vec<u8>,
        key: Vec<u8>,
        value: Vec<u8>,
        lease: i64,
        proclaim: bool,
    ) -> Result<Won> {
        if lease == 0 {
            return Err(Error::LeaseRequired);
        }
        let (reply, answer) = oneshot::channel();
        let local = self.clone();
        tokio::spawn(async move {
            let place = match local.enqueue(&prefix, &key, &value, lease).await {
                Ok(place) => place,
                Err(e) => {
                    let _ = reply.send(Err(e));
                    return;
                }
            };
            let mut reply = reply;
            let turn = local.take_turn(&prefix, &key, value, lease, proclaim, &place);
            let result = tokio::select! {
                result = turn => Some(result),
                _ = reply.closed() => None,
            };
            let failed = !matches!(result, Some(Ok(_)));
            let delivered = result.is_some_and(|r| reply.send(r).is_ok());
            if place.created && (failed || !delivered) {
                local.remove_abandoned(&key, place.rev).await;
            }
        });
        answer.await.map_err(|_| Error::Stopped)?
    }

    /// After [`Local::enqueue`]: proclaims if asked, then waits until `key` is first.
    async fn take_turn(
        &self,
        prefix: &[u8],
        key: &[u8],
        value: Vec<u8>,
        lease: i64,
        proclaim: bool,
        place: &Place,
    ) -> Result<Won> {
        if proclaim && place.value != value {
            let proclaimed = self.put_if(key, place.rev, value, lease).await?;
            if !proclaimed.succeeded {
                return Err(Error::ElectionNotLeader);
            }
        }
        let header = if place.first {
            place.header
        } else {
            let from = place.header.as_ref().map_or(0, |h| h.revision) + 1;
            self.wait_turn(prefix, key, place.rev, from).await?
        };
        Ok(Won {
            rev: place.rev,
            header,
        })
    }

    /// Deletes a key its contender created and nobody will use, retrying while the cluster is
    /// unavailable; a key that is gone or was re-created meanwhile is left alone.
    async fn remove_abandoned(&self, key: &[u8], rev: i64) {
        let mut backoff = Duration::from_millis(50);
        for _ in 0..CLEANUP_ATTEMPTS {
            match self.delete_if(key, rev).await {
                Ok(_) => return,
                Err(e) if e.code() == tonic::Code::Unavailable => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Err(e) => {
                    tracing::warn!(key = %String::from_utf8_lossy(key), error = %e,
                        "could not remove an abandoned lock or election key");
                    return;
                }
            }
        }
    }

    /// Waits until no key under `prefix` was created before `rev` (the caller's key, `key`, is
    /// then the first), watching one predecessor at a time and, from revision `from` on, `key`
    /// itself: fails if `key` goes away first. Returns the header of the read that settled it.
    async fn wait_turn(
        &self,
        prefix: &[u8],
        key: &[u8],
        rev: i64,
        from: i64,
    ) -> Result<Option<ResponseHeader>> {
        tokio::select! {
            biased;
            gone = self.wait_gone(key, rev, from) => {
                gone?;
                Err(Error::SessionExpired)
            }
            settled = self.wait_predecessors(prefix, rev) => {
                let settled = settled?;
                // Its own key may have gone just before: check it once more.
                let (kvs, _) = self.get(key, |_| {}).await?;
                match kvs.first() {
                    Some(kv) if kv.create_revision == rev => Ok(settled),
                    _ => Err(Error::SessionExpired),
                }
            }
        }
    }

    /// Waits until `key` no longer has create revision `rev`, watching from `from` on.
    async fn wait_gone(&self, key: &[u8], rev: i64, mut from: i64) -> Result<()> {
        loop {
            if self.watch(key, from).await?.deleted().await? {
                return Ok(());
            }
            // Compacted past `from`: look at the key itself, and watch on from there.
            let (kvs, header) = self.get(key, |_| {}).await?;
            if kvs.first().is_none_or(|kv| kv.create_revision != rev) {
                return Ok(());
            }
            from = header.map_or(0, |h| h.revision) + 1;
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
            // Deleted, or compacted past `from`: either way, look again.
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

    /// Waits for a delete of the watched key: `true`; `false` when the history it needed was
    /// compacted (the caller reads the key again).
    pub async fn deleted(mut self) -> Result<bool> {
        loop {
            match self.next().await? {
                Seen::Compacted => return Ok(false),
                Seen::Events(events) => {
                    if events.iter().any(|e| e.r#type == EventType::Delete as i32) {
                        return Ok(true);
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

/// The prefix the contenders for `name` keep their keys under: `name/`.
pub fn queue_prefix(name: &[u8]) -> Vec<u8> {
    [name, b"/"].concat()
}

/// A contender's key: `prefix` (`name/`) and its lease in hex, as etcd's Go concurrency package
/// writes it.
pub fn owner_key(prefix: &[u8], lease: i64) -> Vec<u8> {
    [prefix, format!("{lease:x}").as_bytes()].concat()
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
