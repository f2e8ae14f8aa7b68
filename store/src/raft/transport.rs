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
//! are refused on this stream: they travel on their own. Each decoded message must then say the
//! same `from` and `to` as its batch. Batches are limited in size by the server's decoding limit.
//! Accepted messages go to the node loop through a callback, in order.
//!
//! **Snapshots** travel apart (`Peer/Snapshot`), so that megabytes of state never hold up the
//! heartbeats and appends queued behind them. [`Transport::send`] takes a `MsgSnapshot` out of the
//! queue path and streams it from its own task: the message without its data first, then the data
//! in [`SNAPSHOT_CHUNK`] pieces. The receiver checks the envelope of every chunk like a batch's,
//! gathers the data, checks it whole (`snapshot.rs`: magic, lengths, checksum) and only then
//! decodes the message and hands it to the loop. The sender records whether that worked, and the
//! loop reports it to raft-rs ([`Transport::take_snapshot_reports`]).
//!
//! **Faults** (`faults.rs`): each outgoing message is dropped, duplicated or delayed as the
//! member's test plan says, and messages from partitioned members are ignored on arrival.
//!
//! The peer listener also serves the etcd `Lease` service, for the keepalives and TimeToLive
//! requests followers forward to the leader (`service/forward.rs`).
//!
//! Left out: TLS between members, resuming a broken snapshot transfer (it starts over), and
//! authenticating the peer beyond the ids it claims (members are trusted, as in etcd without
//! peer TLS).

use std::collections::{BTreeMap, HashMap, HashSet};
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

use super::faults::{Fate, Faults};
use super::snapshot;
use crate::members::{self, Members};

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
/// Snapshot data per chunk.
pub const SNAPSHOT_CHUNK: usize = 1024 * 1024;
/// Largest snapshot a member accepts (it is held in memory).
const MAX_SNAPSHOT_BYTES: usize = 8 * 1024 * 1024 * 1024;
/// Longest a snapshot transfer may take before the sender gives up (and raft-rs retries).
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(600);

/// Where accepted inbound messages go (the node loop's channel).
pub type Deliver = Arc<dyn Fn(Message) + Send + Sync>;

/// The sending half (see the module doc).
pub struct Transport {
    me: Me,
    /// Every other member: its peer URLs and the queue of its task.
    peers: HashMap<u64, (Vec<String>, mpsc::Sender<Message>)>,
    shared: Arc<Shared>,
    faults: Arc<Faults>,
    /// The runtime the transport's tasks run on (`send` is called from the node loop's thread).
    runtime: tokio::runtime::Handle,
}

/// What the peer tasks and the transport share.
#[derive(Default)]
struct Shared {
    unreachable: Mutex<HashSet<u64>>,
    dropped: AtomicU64,
    /// Snapshots sent (true) or failed (false), per peer, not yet reported to raft-rs.
    snapshot_reports: Mutex<Vec<(u64, bool)>>,
}

impl Transport {
    /// A transport for member `id` of cluster `cluster` to `peers` (the peer table; peer URLs
    /// like `http://127.0.0.1:2380`), with `faults` applied to what it sends. Starts one task per
    /// peer on the current Tokio runtime.
    pub fn start(
        id: u64,
        cluster: u64,
        peers: &BTreeMap<u64, members::Peer>,
        faults: Arc<Faults>,
    ) -> Transport {
        let mut transport = Transport {
            me: Me { id, cluster },
            peers: HashMap::new(),
            shared: Arc::new(Shared::default()),
            faults,
            runtime: tokio::runtime::Handle::current(),
        };
        transport.sync(peers);
        transport
    }

    /// Follows the peer table: starts sending to new members, stops sending to removed ones (their
    /// task ends with its queue), and reconnects to members whose URLs changed. Never sends to
    /// this member itself.
    pub fn sync(&mut self, peers: &BTreeMap<u64, members::Peer>) {
        self.peers
            .retain(|id, (urls, _)| peers.get(id).is_some_and(|p| p.peer_urls == *urls));
        for (&id, peer) in peers {
            if id == self.me.id || peer.peer_urls.is_empty() || self.peers.contains_key(&id) {
                continue;
            }
            tracing::info!(peer = format!("{id:x}"), urls = ?peer.peer_urls, "sending to a member");
            let (tx, rx) = mpsc::channel(PEER_QUEUE);
            let task = run_peer(self.me, id, peer.peer_urls.clone(), rx, self.shared.clone());
            self.runtime.spawn(task);
            self.peers.insert(id, (peer.peer_urls.clone(), tx));
        }
    }

    /// Queues `msgs` for their peers without waiting (see the module doc).
    pub fn send(&self, msgs: Vec<Message>) {
        for msg in msgs {
            let snapshot = msg.get_msg_type() == MessageType::MsgSnapshot;
            let Some((_, queue)) = self.peers.get(&msg.to) else {
                tracing::warn!(
                    from = self.me.id,
                    to = msg.to,
                    "a raft message for an unknown member"
                );
                if snapshot {
                    // raft-rs waits for a verdict on every snapshot it sends.
                    self.shared.snapshot_reports.lock().push((msg.to, false));
                }
                continue;
            };
            let (copies, delay) = match self.faults.outgoing(msg.to) {
                Fate::Send { copies, delay } => (copies, delay),
                Fate::Drop if snapshot => {
                    // raft-rs waits for a verdict on every snapshot it sends.
                    self.shared.snapshot_reports.lock().push((msg.to, false));
                    continue;
                }
                Fate::Drop => continue,
            };
            if snapshot {
                self.send_snapshot(msg);
                continue;
            }
            if copies > 1 {
                self.enqueue(queue, msg.clone(), delay);
            }
            self.enqueue(queue, msg, delay);
        }
    }

    /// Queues one message, after `delay` if there is one (a fault plan's).
    fn enqueue(&self, queue: &mpsc::Sender<Message>, msg: Message, delay: Duration) {
        if delay.is_zero() {
            if queue.try_send(msg).is_err() {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        let (queue, shared) = (queue.clone(), self.shared.clone());
        self.runtime.spawn(async move {
            tokio::time::sleep(delay).await;
            if queue.try_send(msg).is_err() {
                shared.dropped.fetch_add(1, Ordering::Relaxed);
            }
        });
    }

    /// Streams a snapshot to its member from a task of its own (see the module doc).
    fn send_snapshot(&self, msg: Message) {
        let (me, shared, to) = (self.me, self.shared.clone(), msg.to);
        let urls = self.peers[&to].0.clone();
        self.runtime.spawn(async move {
            let index = msg.get_snapshot().get_metadata().index;
            let started = std::time::Instant::now();
            let result = stream_snapshot(me, &urls, msg).await;
            match &result {
                Ok(bytes) => tracing::info!(peer = format!("{to:x}"), index, bytes,
                    took = ?started.elapsed(), "sent a snapshot"),
                Err(reason) => tracing::warn!(peer = format!("{to:x}"), index, %reason,
                    "a snapshot could not be sent; raft will retry"),
            }
            shared.snapshot_reports.lock().push((to, result.is_ok()));
        });
    }

    /// Snapshots sent (true) or failed (false) since the last call, per peer.
    pub fn take_snapshot_reports(&self) -> Vec<(u64, bool)> {
        std::mem::take(&mut *self.shared.snapshot_reports.lock())
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

/// How to reach a peer: with timeouts and keepalives, so that a peer lost without a reset (power,
/// partition) is noticed in seconds, not after TCP's retransmissions give up.
fn endpoint(url: &str) -> Result<tonic::transport::Endpoint, String> {
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
        .map_err(|e| format!("bad peer URL: {e}"))?;
    Ok(endpoint
        .connect_timeout(Duration::from_secs(1))
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(3))
        .keep_alive_while_idle(true)
        .tcp_keepalive(Some(Duration::from_secs(5)))
        .tcp_nodelay(true))
}

/// Sends one snapshot message over `Peer/Snapshot` (see the module doc), trying the peer's URLs in
/// turn until one connects. Returns the bytes of data sent.
async fn stream_snapshot(me: Me, urls: &[String], mut msg: Message) -> Result<usize, String> {
    let to = msg.to;
    let data = msg.mut_snapshot().take_data();
    let metadata = msg.write_to_bytes().map_err(|e| e.to_string())?;
    let total = data.len();
    let mut last_error = "the member has no peer URL".to_string();
    for url in urls {
        let channel = match endpoint(url)?.connect().await {
            Ok(channel) => channel,
            Err(e) => {
                last_error = format!("{url}: {e}");
                continue;
            }
        };
        let count = data.len().div_ceil(SNAPSHOT_CHUNK).max(1);
        let (data, metadata) = (data.clone(), metadata.clone());
        let chunks = (0..count).map(move |i| SnapshotChunk {
            from: me.id,
            to,
            cluster_id: me.cluster,
            metadata: if i == 0 { metadata.clone() } else { Vec::new() },
            data: data[i * SNAPSHOT_CHUNK..((i + 1) * SNAPSHOT_CHUNK).min(data.len())].to_vec(),
            last: i + 1 == count,
        });
        let mut client = PeerClient::new(channel);
        let call = client.snapshot(tokio_stream::iter(chunks));
        return match tokio::time::timeout(SNAPSHOT_TIMEOUT, call).await {
            Ok(Ok(ack)) if ack.get_ref().accepted => Ok(total),
            Ok(Ok(_)) => Err(format!("{url}: the member did not accept it")),
            Ok(Err(status)) => Err(format!("{url}: {}: {}", status.code(), status.message())),
            Err(_) => Err(format!("{url}: timed out after {SNAPSHOT_TIMEOUT:?}")),
        };
    }
    Err(last_error)
}

/// Opens a stream to `url` and writes `queue` into it until one of them ends.
async fn stream_to(me: Me, peer: u64, url: &str, queue: &mut mpsc::Receiver<Message>) -> Ended {
    let endpoint = match endpoint(url) {
        Ok(endpoint) => endpoint,
        Err(e) => return Ended::Broken(e),
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
    members: Arc<Members>,
    deliver: Deliver,
    /// Turns true when this member stops: open streams end then.
    stop: tokio::sync::watch::Receiver<bool>,
    faults: Arc<Faults>,
}

impl PeerService {
    /// Accepts messages for member `id` from `members` (other ids are refused) and hands them to
    /// `deliver`, until `stop` turns true; messages from members `faults` partitions away are
    /// ignored.
    pub fn new(
        id: u64,
        cluster: u64,
        members: Arc<Members>,
        deliver: Deliver,
        stop: tokio::sync::watch::Receiver<bool>,
        faults: Arc<Faults>,
    ) -> PeerService {
        PeerService {
            id,
            cluster,
            members,
            deliver,
            stop,
            faults,
        }
    }

    /// Checks who a batch or snapshot chunk says it is from and for (see the module doc).
    fn check_envelope(&self, from: u64, to: u64, cluster: u64) -> Result<(), Status> {
        let member = from != self.id && self.members.contains(from);
        if !member || to != self.id || cluster != self.cluster {
            return Err(Status::permission_denied(format!(
                "concord: member {:x} of cluster {:x} does not accept raft messages from {:x} to \
                 {:x} of cluster {:x}",
                self.id, self.cluster, from, to, cluster
            )));
        }
        Ok(())
    }

    /// Checks a batch's envelope, then decodes and checks its messages (see the module doc).
    fn accept(&self, batch: &RaftBatch) -> Result<Vec<Message>, Status> {
        self.check_envelope(batch.from, batch.to, batch.cluster_id)?;
        batch
            .messages
            .iter()
            .map(|bytes| {
                let msg = Message::parse_from_bytes(bytes).map_err(|e| {
                    Status::invalid_argument(format!("concord: bad raft message: {e}"))
                })?;
                if msg.get_msg_type() == MessageType::MsgSnapshot {
                    return Err(Status::invalid_argument(
                        "concord: snapshots travel on Peer/Snapshot, not in a batch",
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
            if !self.faults.accepts_from(batch.from) {
                continue;
            }
            for msg in messages {
                (self.deliver)(msg);
            }
        }
        Ok(Response::new(SendAck { received }))
    }

    async fn snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<SnapshotAck>, Status> {
        let mut stream = request.into_inner();
        let mut stop = self.stop.clone();
        let mut metadata = None;
        let mut data = Vec::new();
        let from = loop {
            let chunk = tokio::select! {
                chunk = stream.message() => chunk?,
                _ = stop.wait_for(|s| *s) => {
                    return Err(Status::unavailable("concord: this member is stopping"));
                }
            };
            let Some(chunk) = chunk else {
                return Err(Status::invalid_argument(
                    "concord: the snapshot stream ended before its last chunk",
                ));
            };
            self.check_envelope(chunk.from, chunk.to, chunk.cluster_id)?;
            if metadata.is_none() {
                metadata = Some(chunk.metadata);
            }
            if data.len() + chunk.data.len() > MAX_SNAPSHOT_BYTES {
                return Err(Status::resource_exhausted(format!(
                    "concord: a snapshot over {MAX_SNAPSHOT_BYTES} bytes"
                )));
            }
            data.extend_from_slice(&chunk.data);
            if chunk.last {
                break chunk.from;
            }
        };
        if !self.faults.accepts_from(from) {
            return Err(Status::unavailable(
                "concord: partitioned away (fault plan)",
            ));
        }
        // The data first: it is Concord's own format, checked whole before raft-rs sees anything.
        snapshot::decode(&data).map_err(|e| Status::invalid_argument(format!("concord: {e}")))?;
        let bad =
            |e: String| Status::invalid_argument(format!("concord: bad snapshot message: {e}"));
        let mut msg = Message::parse_from_bytes(&metadata.unwrap_or_default())
            .map_err(|e| bad(e.to_string()))?;
        if msg.get_msg_type() != MessageType::MsgSnapshot || msg.from != from || msg.to != self.id {
            return Err(bad(format!(
                "a {:?} from {:x} to {:x}",
                msg.get_msg_type(),
                msg.from,
                msg.to
            )));
        }
        msg.mut_snapshot().set_data(data.into());
        (self.deliver)(msg);
        Ok(Response::new(SnapshotAck { accepted: true }))
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

    /// Member `id`, a voter reached at `url`.
    fn member(id: u64, url: &str) -> members::Peer {
        members::Peer {
            id,
            peer_urls: vec![url.to_string()],
            is_learner: false,
        }
    }

    /// A peer table holding `ids`.
    fn member_table(ids: &[u64]) -> Arc<Members> {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let kv = crate::mvcc::KvStore::open(db.open_tree("state").unwrap()).unwrap();
        let peers = ids
            .iter()
            .map(|id| member(*id, &format!("http://member-{id}")))
            .collect();
        let me = crate::members::Attributes::default();
        Arc::new(Members::open(&kv, peers, me).unwrap())
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
        let members = member_table(&members);
        let service = PeerService::new(id, CLUSTER, members, deliver, stopped, Arc::default());
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
        let peers = BTreeMap::from([(2, member(2, &b.url))]);
        let a = Transport::start(1, CLUSTER, &peers, Arc::default());
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
        // A snapshot in a batch: snapshots travel on their own stream.
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
