//! The etcd `Watch` service: one bidirectional stream carrying many watchers.
//!
//! Each call gets a stream in the hub (`watch::Hub`) with a bounded channel, and two tasks:
//! - the **reader** takes create, cancel and progress requests off the client's stream and hands
//!   them to the hub, each with a slot reserved on the channel for its reply; when the client's
//!   stream ends, or no leader is seen for an election timeout on a stream opened with the
//!   `hasleader` metadata, it closes the stream;
//! - the **writer** turns the hub's deliveries into `WatchResponse`s — attaching previous values
//!   and splitting oversized responses into fragments for watchers that asked — and sends them to
//!   the client. When the client stops reading, the writer blocks, the channel fills, and the
//!   hub moves the stream's watchers to the unsynced group: nothing waits on a slow client but the
//!   client itself.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use concord_proto::etcdserverpb::{
    ResponseHeader, WatchRequest, WatchResponse, watch_request::RequestUnion, watch_server::Watch,
};
use concord_proto::mvccpb::Event;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status, Streaming};

use super::Core;
use crate::error::Error;
use crate::mvcc::{KeyRange, RangeOptions, Rev, View};
use crate::watch::{Delivery, StreamId, WatcherEvents};

/// Responses buffered between the writer and gRPC.
const OUTBOUND_BUFFER: usize = 16;

/// The Watch service adapter.
pub struct WatchService {
    core: Arc<Core>,
}

impl WatchService {
    pub fn new(core: Arc<Core>) -> Self {
        WatchService { core }
    }
}

#[tonic::async_trait]
impl Watch for WatchService {
    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<BoxStream<WatchResponse>>, Status> {
        let needs_leader = request
            .metadata()
            .get("hasleader")
            .is_some_and(|v| v.as_bytes() == b"true");
        if needs_leader && !has_leader(&self.core) {
            return Err(Error::NoLeader.into());
        }
        let (tx, rx) = mpsc::channel(self.core.watch_stream_buffer);
        let (out_tx, out_rx) = mpsc::channel(OUTBOUND_BUFFER);
        let stream = self.core.hub.open_stream(tx.clone());
        tokio::spawn(read_requests(
            self.core.clone(),
            stream,
            request.into_inner(),
            tx,
            out_tx.clone(),
            needs_leader,
        ));
        tokio::spawn(write_responses(self.core.clone(), stream, rx, out_tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
    }
}

fn stopped(stop: &tokio::sync::watch::Receiver<bool>) -> bool {
    *stop.borrow()
}

fn has_leader(core: &Core) -> bool {
    core.node.status().leader.load(Ordering::Relaxed) != raft::INVALID_ID
}

/// The reader task (see the module doc).
async fn read_requests(
    core: Arc<Core>,
    stream: StreamId,
    mut inbound: Streaming<WatchRequest>,
    tx: mpsc::Sender<Delivery>,
    out_tx: mpsc::Sender<Result<WatchResponse, Status>>,
    needs_leader: bool,
) {
    let hub = &core.hub;
    let mut leader_check = tokio::time::interval(core.election_timeout);
    let mut leaderless_checks = 0;
    let mut stop = core.stop.clone();
    loop {
        // `Some(None)`: time to check for a leader.
        let next = tokio::select! {
            request = inbound.next() => request.map(Some),
            _ = stop.wait_for(|stopped| *stopped) => None,
            _ = leader_check.tick(), if needs_leader => Some(None),
        };
        let request = match next {
            Some(Some(Ok(request))) => request,
            Some(None) => {
                leaderless_checks = if has_leader(&core) {
                    0
                } else {
                    leaderless_checks + 1
                };
                if leaderless_checks >= 2 {
                    let _ = out_tx.send(Err(Error::NoLeader.into())).await;
                    break;
                }
                continue;
            }
            // The client closed its sending side: like etcd, keep delivering until it goes away.
            None if !stopped(&stop) => {
                tokio::select! {
                    _ = tx.closed() => {}
                    _ = stop.wait_for(|stopped| *stopped) => {}
                }
                break;
            }
            Some(Some(Err(_))) | None => break,
        };
        // A client that sends but does not read fills the channel; shutdown must not wait on it.
        let slot = tokio::select! {
            slot = tx.reserve() => slot,
            _ = stop.wait_for(|stopped| *stopped) => break,
        };
        let Ok(slot) = slot else { break };
        match request.request_union {
            Some(RequestUnion::CreateRequest(create)) => hub.watch(stream, &create, slot),
            Some(RequestUnion::CancelRequest(cancel)) => hub.cancel(stream, cancel.watch_id, slot),
            Some(RequestUnion::ProgressRequest(_)) => hub.request_progress(stream, slot),
            None => {}
        }
    }
    hub.close_stream(stream);
}

/// The writer task (see the module doc).
async fn write_responses(
    core: Arc<Core>,
    stream: StreamId,
    mut rx: mpsc::Receiver<Delivery>,
    out_tx: mpsc::Sender<Result<WatchResponse, Status>>,
) {
    let mut stop = core.stop.clone();
    loop {
        // Also notice a client that went away while nothing was being sent.
        let delivery = tokio::select! {
            delivery = rx.recv() => delivery,
            _ = out_tx.closed() => None,
            _ = stop.wait_for(|stopped| *stopped) => None,
        };
        let Some(delivery) = delivery else { break };
        for response in render(&core, delivery) {
            // A client that stops reading blocks this send; shutdown must not wait on it.
            let sent = tokio::select! {
                sent = out_tx.send(Ok(response)) => sent.is_ok(),
                _ = stop.wait_for(|stopped| *stopped) => false,
            };
            if !sent {
                core.hub.close_stream(stream);
                return;
            }
        }
    }
    core.hub.close_stream(stream);
}

/// The responses one delivery becomes.
fn render(core: &Core, delivery: Delivery) -> Vec<WatchResponse> {
    let header = |revision: Rev| {
        core.header(Some(ResponseHeader {
            revision,
            ..Default::default()
        }))
    };
    match delivery {
        Delivery::Created {
            watch_id,
            revision,
            error,
        } => vec![WatchResponse {
            header: header(revision),
            watch_id,
            created: true,
            canceled: error.is_some(),
            cancel_reason: error.unwrap_or_default().to_string(),
            ..Default::default()
        }],
        Delivery::Canceled { watch_id, revision } => vec![WatchResponse {
            header: header(revision),
            watch_id,
            canceled: true,
            ..Default::default()
        }],
        // etcd sends this one with revision 0 in its header.
        Delivery::Compacted {
            watch_id,
            compact_revision,
            ..
        } => vec![WatchResponse {
            header: header(0),
            watch_id,
            canceled: true,
            compact_revision,
            ..Default::default()
        }],
        Delivery::Progress { watch_id, revision } => vec![WatchResponse {
            header: header(revision),
            watch_id,
            ..Default::default()
        }],
        Delivery::Events { watchers, revision } => watchers
            .into_iter()
            .flat_map(|w| {
                let fragment = w.fragment;
                let response = WatchResponse {
                    header: header(revision),
                    watch_id: w.watch_id,
                    events: events(core, w),
                    ..Default::default()
                };
                if fragment {
                    fragments(response, core.max_request_bytes)
                } else {
                    vec![response]
                }
            })
            .collect(),
    }
}

/// A watcher's events as protobuf, with previous values when it asked for them (read at the
/// revision before each event; none when that revision was compacted, as in etcd).
fn events(core: &Core, w: WatcherEvents) -> Vec<Event> {
    let mut out: Vec<Event> = w.events.iter().map(|e| (**e).clone()).collect();
    if w.prev_kv {
        let view = core.kv.read();
        for event in &mut out {
            let Some(kv) = &event.kv else { continue };
            let opts = RangeOptions {
                rev: kv.mod_revision - 1,
                limit: 1,
                ..Default::default()
            };
            if let Ok(mut found) = view.range(KeyRange::new(&kv.key, b""), opts) {
                event.prev_kv = found.kvs.pop();
            }
        }
    }
    out
}

/// etcd's `sendFragments`: a response at or over `limit` bytes with two or more events is split
/// into pieces under the limit (each at least one event); all but the last carry `fragment`.
fn fragments(response: WatchResponse, limit: usize) -> Vec<WatchResponse> {
    if response.events.len() < 2 || prost::Message::encoded_len(&response) < limit {
        return vec![response];
    }
    let mut base = response;
    let events = std::mem::take(&mut base.events);
    let base_len = prost::Message::encoded_len(&base) + 2; // + the fragment flag
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut size = base_len;
    for event in events {
        let len = prost::encoding::message::encoded_len(11, &event);
        if !current.is_empty() && size + len >= limit {
            out.push(std::mem::take(&mut current));
            size = base_len;
        }
        size += len;
        current.push(event);
    }
    out.push(current);
    let pieces = out.len();
    out.into_iter()
        .enumerate()
        .map(|(i, events)| WatchResponse {
            events,
            fragment: i + 1 < pieces,
            ..base.clone()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_proto::mvccpb::KeyValue;

    fn event(size: usize) -> Event {
        Event {
            kv: Some(KeyValue {
                key: b"k".to_vec().into(),
                value: vec![b'v'; size].into(),
                mod_revision: 2,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_large_response_is_split_into_fragments_under_the_limit() {
        let response = WatchResponse {
            watch_id: 3,
            events: (0..10).map(|_| event(100)).collect(),
            ..Default::default()
        };
        let pieces = fragments(response, 350);
        assert!(pieces.len() > 1);
        assert_eq!(pieces.iter().map(|p| p.events.len()).sum::<usize>(), 10);
        for (i, p) in pieces.iter().enumerate() {
            assert_eq!(p.fragment, i + 1 < pieces.len(), "only the last is whole");
            assert_eq!(p.watch_id, 3);
            assert!(prost::Message::encoded_len(p) < 350 || p.events.len() == 1);
        }
    }

    #[test]
    fn a_small_response_or_a_single_event_is_not_split() {
        let one = WatchResponse {
            events: vec![event(1000)],
            ..Default::default()
        };
        assert_eq!(fragments(one, 100).len(), 1, "one event is never split");
        let small = WatchResponse {
            events: vec![event(1), event(1)],
            ..Default::default()
        };
        assert!(!fragments(small, 1000)[0].fragment);
    }
}
