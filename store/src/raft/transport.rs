//! The peer transport: Raft messages between members, over gRPC streams (`concordpeerpb.Peer`).
//!
//! **Sending** ([`Transport`]). Each peer has its own task and its own bounded queue. The node loop
//! hands messages to [`Transport::send`], which never blocks: a message for a peer whose queue is
//! full is dropped (and counted), because the loop must never wait for a slow or dead peer — Raft
//! tolerates lost messages (it retries appends and heartbeats on its own). The task keeps one
//! client stream (`Peer/Send`) open and writes the queued messages in batches, as many as are
//! waiting at once. When the stream breaks or the peer cannot be reached, the task reconnects with
//! exponential backoff (backon) and records the peer as *unreachable*; the loop collects those
//! with [`Transport::take_unreachable`] and tells raft-rs (`report_unreachable`), which then
//! stops pipelining appends to it.
//!
//! **Receiving** ([`PeerService`]). raft-rs's protobuf 2 decoder is not hardened against hostile
//! input, so a batch is decoded only once it is known to come from a configured member of this
//! cluster to this member: its `from` must be a member id, its `to` ours and its cluster id ours,
//! or the stream is refused before any message is parsed (PermissionDenied). Snapshot messages
//! are refused too: this version neither makes nor installs snapshots. Each decoded message must then say the same `from` and
//! `to` as its batch. Batches are limited in size by the server's decoding limit. Accepted messages
//! go to the node loop through a callback, in order.
//!
//! The peer listener also serves the etcd `Lease` service, for the keepalives and TimeToLive
//! requests followers forward to the leader (`service/forward.rs`).
//!
//! Left out: snapshot transfer (`Peer/Snapshot`, with snapshots themselves), TLS between members,
//! and authenticating the peer beyond the ids it claims (members are trusted, as in etcd without
//! peer TLS).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use concord_proto::concordpeerpb::peer_client::PeerClient;
use concord_proto::concordpeerpb::peer_server::Peer;
use concord_proto::concordpeerpb::{RaftBatch, SendAck, SnapshotAck, SnapshotChunk};
use parking_lot::Mutex;
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// Messages queued per peer before [`Transport::send`] drops them.
pub const PEER_QUEUE: usize = 4096;
/// Most messages written in one batch.
const BATCH_MESSAGES: usize = 256;
/// A batch stops growing past this many bytes (raft-rs keeps one append under 1 MiB), well under
/// the receiver's decoding limit.
const BATCH_BYTES: usize = 8 * 1024 * 1024;
/// Batches buffered on an open stream.
const STREAM_BUFFER: usize = 16;
/// A stream that lived this long worked: the reconnection backoff starts over after it.
const STREAM_WORKED: Duration = Duration::from_secs(5);

/// Where accepted inbound messages go (the node loop's channel).
pub type Deliver = Arc<dyn Fn(Message) + Send + Sync>;

/// The sending half (see the module doc).
pub struct Transport {
    id: u64,
    queues: HashMap<u64, mpsc::Sender<Message>>,
    shared: Arc<Shared>,
}

/// What the peer tasks and the transport share.
#[derive(Default)]
struct Shared {
    unreachable: Mutex<HashSet<u64>>,
    dropped: AtomicU64,
}

impl Transport {
    /// A transport for member `id` of cluster `cluster` to `peers` (member id → peer URLs, e.g.
    /// `http://127.0.0.1:2380`). Starts one task per peer on the current Tokio runtime.
    pub fn start(id: u64, cluster: u64, peers: &HashMap<u64, Vec<String>>) -> Transport {
        let shared = Arc::new(Shared::default());
        let mut queues = HashMap::new();
        for (&peer, urls) in peers {
            if peer == id {
                continue;
            }
            let (tx, rx) = mpsc::channel(PEER_QUEUE);
            queues.insert(peer, tx);
            let me = Me { id, cluster };
            tokio::spawn(run_peer(me, peer, urls.clone(), rx, shared.clone()));
        }
        Transport { id, queues, shared }
    }

    /// Queues `msgs` for their peers without waiting (see the module doc).
    pub fn send(&self, msgs: Vec<Message>) {
        for msg in msgs {
            let Some(queue) = self.queues.get(&msg.to) else {
                tracing::warn!(
                    from = self.id,
                    to = msg.to,
                    "a raft message for an unknown member"
                );
                continue;
            };
            if queue.try_send(msg).is_err() {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The peers found unreachable since the last call.
    pub fn take_unreachable(&self) -> Vec<u64> {
        self.shared.unreachable.lock().drain().collect()
    }

    /// Messages dropped because a peer's queue was full, since the start.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

/// Who sends: this member and its cluster.
#[derive(Clone, Copy)]
struct Me {
    id: u64,
    cluster: u64,
}

/// Sends `peer` what its queue receives, reconnecting as needed, until the transport is dropped.
async fn run_peer(
    me: Me,
    peer: u64,
    urls: Vec<String>,
    mut queue: mpsc::Receiver<Message>,
    shared: Arc<Shared>,
) {
    let mut backoff = new_backoff();
    let mut attempt = 0usize;
    loop {
        let url = &urls[attempt % urls.len()];
        attempt += 1;
        match stream_to(me, peer, url, &mut queue).await {
            Ended::TransportDropped => return,
            Ended::Broken(reason) => {
                shared.unreachable.lock().insert(peer);
                let wait = backoff.next().unwrap_or(Duration::from_secs(1));
                tracing::debug!(peer = format!("{peer:x}"), %url, %reason, ?wait,
                    "peer unreachable; reconnecting");
                // Messages queued meanwhile are stale by the time we reconnect: Raft resends.
                tokio::time::sleep(wait).await;
                while queue.try_recv().is_ok() {}
                if queue.is_closed() {
                    return;
                }
            }
            Ended::Worked(reason) => {
                // It worked for a while: start the backoff over.
                backoff = new_backoff();
                shared.unreachable.lock().insert(peer);
                tracing::debug!(peer = format!("{peer:x}"), %url, %reason, "peer stream ended");
            }
        }
    }
}

fn new_backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(1))
        .with_jitter()
        .without_max_times()
        .build()
}

/// How a stream to a peer ended.
enum Ended {
    /// The transport was dropped: stop.
    TransportDropped,
    /// The peer could not be reached, or the stream broke before anything was sent.
    Broken(String),
    /// The stream carried messages, then broke.
    Worked(String),
}

/// Opens a stream to `url` and writes `queue` into it until one of them ends.
async fn stream_to(me: Me, peer: u64, url: &str, queue: &mut mpsc::Receiver<Message>) -> Ended {
    // Timeouts and keepalives, so that a peer lost without a reset (power, partition) is noticed
    // in seconds, not after TCP's retransmissions give up.
    let endpoint = match tonic::transport::Endpoint::from_shared(url.to_string()) {
        Ok(endpoint) => endpoint
            .connect_timeout(Duration::from_secs(1))
            .http2_keep_alive_interval(Duration::from_secs(1))
            .keep_alive_timeout(Duration::from_secs(3))
            .keep_alive_while_idle(true)
            .tcp_keepalive(Some(Duration::from_secs(5)))
            .tcp_nodelay(true),
        Err(e) => return Ended::Broken(format!("bad peer URL: {e}")),
    };
    let mut client = match endpoint.connect().await {
        Ok(channel) => PeerClient::new(channel),
        Err(e) => return Ended::Broken(e.to_string()),
    };
    let opened = std::time::Instant::now();
    let (batches, rx) = mpsc::channel(STREAM_BUFFER);
    let call = tokio::spawn(async move { client.send(ReceiverStream::new(rx)).await });
    let ended = loop {
        let Some(first) = queue.recv().await else {
            break Ended::TransportDropped;
        };
        let mut encoded: Vec<Vec<u8>> = Vec::new();
        let mut bytes = 0;
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            if let Ok(e) = msg.write_to_bytes() {
                bytes += e.len();
                encoded.push(e);
            }
            if encoded.len() < BATCH_MESSAGES && bytes < BATCH_BYTES {
                next = queue.try_recv().ok();
            }
        }
        let batch = RaftBatch {
            from: me.id,
            to: peer,
            messages: encoded,
            cluster_id: me.cluster,
        };
        if batches.send(batch).await.is_err() {
            break Ended::Broken("the stream closed".into()); // why: see below
        }
    };
    drop(batches);
    let outcome = tokio::time::timeout(Duration::from_secs(5), call).await;
    let reason = match (&ended, outcome) {
        (Ended::TransportDropped, _) => return Ended::TransportDropped,
        (_, Ok(Ok(Err(status)))) => {
            if matches!(
                status.code(),
                tonic::Code::PermissionDenied | tonic::Code::InvalidArgument
            ) {
                tracing::warn!(peer = format!("{peer:x}"), %url, %status,
                    "the peer refuses this member's raft messages");
            }
            format!("{}: {}", status.code(), status.message())
        }
        _ => "the stream closed".to_string(),
    };
    // Only a stream that lived a while counts as working (and resets the backoff): a peer that
    // accepts connections but refuses every stream must not be redialed in a tight loop.
    if opened.elapsed() > STREAM_WORKED {
        Ended::Worked(reason)
    } else {
        Ended::Broken(reason)
    }
}

/// The receiving half: the `concordpeerpb.Peer` service (see the module doc).
pub struct PeerService {
    id: u64,
    cluster: u64,
    members: HashSet<u64>,
    deliver: Deliver,
    /// Turns true when this member stops: open streams end then.
    stop: tokio::sync::watch::Receiver<bool>,
}

impl PeerService {
    /// Accepts messages for member `id` from `members` (other ids are refused) and hands them to
    /// `deliver`, until `stop` turns true.
    pub fn new(
        id: u64,
        cluster: u64,
        members: impl IntoIterator<Item = u64>,
        deliver: Deliver,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> PeerService {
        PeerService {
            id,
            cluster,
            members: members.into_iter().filter(|m| *m != id).collect(),
            deliver,
            stop,
        }
    }

    /// Checks a batch's envelope, then decodes and checks its messages (see the module doc).
    fn accept(&self, batch: &RaftBatch) -> Result<Vec<Message>, Status> {
        if !self.members.contains(&batch.from)
            || batch.to != self.id
            || batch.cluster_id != self.cluster
        {
            return Err(Status::permission_denied(format!(
                "concord: member {:x} of cluster {:x} does not accept raft messages from {:x} to \
                 {:x} of cluster {:x}",
                self.id, self.cluster, batch.from, batch.to, batch.cluster_id
            )));
        }
        batch
            .messages
            .iter()
            .map(|bytes| {
                let msg = Message::parse_from_bytes(bytes).map_err(|e| {
                    Status::invalid_argument(format!("concord: bad raft message: {e}"))
                })?;
                if msg.get_msg_type() == MessageType::MsgSnapshot {
                    return Err(Status::invalid_argument(
                        "concord: this version does not install snapshots",
                    ));
                }
                if msg.from != batch.from || msg.to != batch.to {
                    return Err(Status::permission_denied(format!(
                        "concord: a raft message from {:x} to {:x} in a batch from {:x} to {:x}",
                        msg.from, msg.to, batch.from, batch.to
                    )));
                }
                Ok(msg)
            })
            .collect()
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn send(
        &self,
        request: Request<Streaming<RaftBatch>>,
    ) -> Result<Response<SendAck>, Status> {
        let mut stream = request.into_inner();
        let mut received = 0u64;
        let mut stop = self.stop.clone();
        loop {
            let batch = tokio::select! {
                batch = stream.message() => batch?,
                _ = stop.wait_for(|s| *s) => {
                    return Err(Status::unavailable("concord: this member is stopping"));
                }
            };
            let Some(batch) = batch else { break };
            let messages = self.accept(&batch)?;
            received += messages.len() as u64;
            for msg in messages {
                (self.deliver)(msg);
            }
        }
        Ok(Response::new(SendAck { received }))
    }

    async fn snapshot(
        &self,
        _request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<SnapshotAck>, Status> {
        Err(Status::unimplemented(
            "concord: snapshot transfer is not served by this version",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_proto::concordpeerpb::peer_server::PeerServer;

    const CLUSTER: u64 = 0xc1;

    /// A peer server for member `id` on 127.0.0.1 (a given port, or 0): its URL, what it received,
    /// and a way to stop it.
    struct Receiver {
        url: String,
        got: Arc<Mutex<Vec<Message>>>,
        stop: tokio::sync::watch::Sender<bool>,
        port: u16,
    }

    async fn receiver(id: u64, members: Vec<u64>, port: u16) -> Receiver {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = got.clone();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut stopping = stopped.clone();
        let deliver: Deliver = Arc::new(move |m| sink.lock().push(m));
        let service = PeerService::new(id, CLUSTER, members, deliver, stopped);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(PeerServer::new(service))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    async move {
                        let _ = stopping.wait_for(|s| *s).await;
                    },
                ),
        );
        Receiver {
            url: format!("http://127.0.0.1:{port}"),
            got,
            stop,
            port,
        }
    }

    fn heartbeat(from: u64, to: u64, term: u64) -> Message {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgHeartbeat);
        m.from = from;
        m.to = to;
        m.term = term;
        m
    }

    async fn until(what: &str, cond: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(tokio::time::Instant::now() < deadline, "never: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn messages_arrive_in_order_and_resume_after_the_peer_restarts() {
        let b = receiver(2, vec![1, 2], 0).await;
        let peers = HashMap::from([(2, vec![b.url.clone()])]);
        let a = Transport::start(1, CLUSTER, &peers);
        a.send((1..=100).map(|t| heartbeat(1, 2, t)).collect());
        until("100 messages", || b.got.lock().len() == 100).await;
        let terms: Vec<u64> = b.got.lock().iter().map(|m| m.term).collect();
        assert_eq!(terms, (1..=100).collect::<Vec<_>>(), "in order");

        // The peer goes away: sending never blocks, and it is reported unreachable.
        let _ = b.stop.send(true);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while a.take_unreachable() != [2] {
            assert!(tokio::time::Instant::now() < deadline, "never unreachable");
            a.send(vec![heartbeat(1, 2, 0)]);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Far more than a queue holds: dropped, not waited for.
        a.send(
            (0..PEER_QUEUE as u64 * 2)
                .map(|t| heartbeat(1, 2, t))
                .collect(),
        );
        assert!(a.dropped() > 0);

        // Back on the same port: messages flow again.
        let back = receiver(2, vec![1, 2], b.port).await;
        until("delivery after the restart", || {
            a.send(vec![heartbeat(1, 2, 7)]);
            !back.got.lock().is_empty()
        })
        .await;
    }

    #[tokio::test]
    async fn strangers_are_refused_before_anything_is_decoded() {
        let b = receiver(2, vec![1, 2], 0).await;
        let client = PeerClient::connect(b.url.clone()).await.unwrap();
        let send = |batch: RaftBatch| {
            let mut client = client.clone();
            async move { client.send(tokio_stream::iter(vec![batch])).await }
        };
        // From a member the receiver does not know: refused, even though the bytes are garbage.
        let stranger = RaftBatch {
            from: 9,
            cluster_id: CLUSTER,
            to: 2,
            messages: vec![vec![0xff; 64]],
        };
        let e = send(stranger).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        // Addressed to another member.
        let misrouted = RaftBatch {
            from: 1,
            cluster_id: CLUSTER,
            to: 3,
            messages: vec![heartbeat(1, 3, 1).write_to_bytes().unwrap()],
        };
        assert_eq!(
            send(misrouted).await.unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        // A message claiming another sender than its batch.
        let forged = RaftBatch {
            from: 1,
            cluster_id: CLUSTER,
            to: 2,
            messages: vec![heartbeat(3, 2, 1).write_to_bytes().unwrap()],
        };
        assert_eq!(
            send(forged).await.unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        // From another cluster whose member ids happen to match.
        let elsewhere = RaftBatch {
            cluster_id: 0xbad,
            from: 1,
            to: 2,
            messages: vec![heartbeat(1, 2, 1).write_to_bytes().unwrap()],
        };
        assert_eq!(
            send(elsewhere).await.unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        // A snapshot: this version does not install them.
        let mut snapshot = heartbeat(1, 2, 1);
        snapshot.set_msg_type(MessageType::MsgSnapshot);
        let snapshot = RaftBatch {
            cluster_id: CLUSTER,
            from: 1,
            to: 2,
            messages: vec![snapshot.write_to_bytes().unwrap()],
        };
        assert_eq!(
            send(snapshot).await.unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        // Garbage from a member: a clear error, nothing delivered.
        let garbage = RaftBatch {
            from: 1,
            cluster_id: CLUSTER,
            to: 2,
            messages: vec![vec![0xff; 64]],
        };
        assert_eq!(
            send(garbage).await.unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert!(b.got.lock().is_empty());
        // And a good batch is accepted.
        let good = RaftBatch {
            from: 1,
            cluster_id: CLUSTER,
            to: 2,
            messages: vec![heartbeat(1, 2, 5).write_to_bytes().unwrap()],
        };
        let ack = send(good).await.unwrap().into_inner();
        assert_eq!(ack.received, 1);
        assert_eq!(b.got.lock()[0].term, 5);
    }
}
