//! The node loop: one thread owns the Raft node, its storage and the state machine.
//!
//! Everything else talks to it through a channel of [`Msg`]s and gets answers on oneshot channels,
//! through a cloneable [`NodeHandle`]. The loop runs on its own OS thread because sled writes and
//! fsync block.
//!
//! One turn of the loop:
//! 1. wait for a message or the next tick; then drain every message already queued. All proposals
//!    gathered in one turn share one Ready and so **one flush** (group commit);
//! 2. tick the Raft clock when due; retry read-index requests that got no answer;
//! 3. handle the Ready in raft-rs's order (`src/lib.rs` of raft-rs): send messages; (snapshot);
//!    apply committed entries; persist new entries and the hard state in one batch, then **flush**;
//!    send persisted messages; note the read states; `advance`; apply what the light ready
//!    committed; `advance_apply`; release the reads whose index is now applied; compact the log
//!    when due; publish the status.
//! 4. write applied changes back to sled when the backend batch is due (`mvcc/store.rs`).
//!
//! After each apply the batch's events go to the watch hub's dispatcher (`watch`), which never
//! makes the loop wait. A change of leadership promotes or demotes the lessor (`lease`): only the
//! leader keeps lease deadlines.
//!
//! Replies are sent right after their entry is applied: an entry is committed only once it is
//! durable in the log (flushed), so an acknowledged write survives a crash — a restart re-applies
//! entries after the stored applied index.
//!
//! Reads. A linearizable read asks the loop for a read index: the loop batches every read that
//! arrived in one turn into one `read_index` call with a fresh context, and releases them once the
//! state machine has applied up to the returned index. raft-rs silently drops read-index requests
//! until the leader has committed an entry of its term, so unanswered requests are retried with a
//! *new* context (reusing one caused stale reads in etcd).
//!
//! Peers. Messages for other members go to the transport (`transport.rs`), which never blocks the
//! loop; messages from them arrive as [`Msg::Step`]. Peers the transport could not reach are
//! reported to raft-rs each turn. A proposal made on a follower is forwarded to the leader by
//! raft-rs and answered when the entry is applied here; a read index on a follower is asked of the
//! leader the same way.
//!
//! Log compaction and snapshots. Once `--snapshot-count` applied entries (durable in sled) have
//! accumulated, the log is compacted, keeping the last [`CATCH_UP_ENTRIES`] (or `snapshot_count`,
//! if smaller) so that a follower a little behind still catches up from the log, as etcd keeps
//! 5,000. A follower further behind gets a snapshot: raft-rs asks storage for one, the loop makes it
//! at the end of the turn (`snapshot.rs`), and the transport streams it. A follower installs a
//! snapshot in the Ready that carries it, before applying anything else: the state machine's whole
//! state, its applied index and the conf state in one sled batch, then the log reset, then one
//! flush; watchers catch up on the jump from history. The transport's verdict on each snapshot it
//! sent is reported to raft-rs (`report_snapshot`), or the follower's progress would stall.
//!
//! Left out (replication, in progress): membership changes.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeSingle, ConfChangeType, ConfChangeV2, Entry, EntryType, Message, Snapshot,
};
use raft::{ProgressState, RawNode, SnapshotStatus, StateRole};
use tokio::sync::oneshot;

use super::faults::Faults;
use super::proposal::{Command, IdGen, MembershipContext, Proposal, Response, Waiters};
use super::snapshot;
use super::storage::{KEY_CONF_STATE, KEY_INSTALLED, RaftStorage, encode_index_term};
use super::transport::Transport;
use crate::apply::{PeerChange, StateMachine};
use crate::error::{Error, Result};
use crate::members::Peer;
use crate::mvcc::store::{BACKEND_BATCH_INTERVAL, BACKEND_BATCH_LIMIT};
use crate::watch::threads::EventSink;

/// A turn of the loop slower than this is logged (it delays every waiting caller).
const SLOW_TURN: Duration = Duration::from_millis(100);
/// Most messages handled in one turn before the loop works on what it has.
const MAX_MSGS_PER_TURN: usize = 8192;
/// Entries kept in the log after a compaction, for followers slightly behind (etcd's
/// `SnapshotCatchUpEntries`); at most `snapshot_count`.
pub const CATCH_UP_ENTRIES: u64 = 5_000;
/// Ticks a removed member keeps running after it applied its removal, so that the others learn
/// the removal is committed (a removed leader's heartbeats carry the commit index; a survivor of
/// a two-member cluster could not elect itself otherwise). etcd lingers the same way.
const REMOVED_LINGER: u32 = 10;
/// A learner may be promoted once it has this share of what the leader committed (etcd's rule).
const LEARNER_READY: f64 = 0.9;

/// A membership change (etcd's MemberAdd, MemberRemove, MemberPromote) for the leader to make.
#[derive(Debug, Clone, PartialEq)]
pub enum MemberChange {
    /// Add member `id` (picked by the caller) reachable at `peer_urls`, as a learner or a voter.
    Add {
        id: u64,
        peer_urls: Vec<String>,
        learner: bool,
    },
    Remove(u64),
    /// Make a caught-up learner a voter.
    Promote(u64),
}

/// Requests to the node loop.
pub enum Msg {
    /// Replicate and apply a command; answer with its result.
    Propose {
        command: Command,
        reply: oneshot::Sender<Result<Response>>,
    },
    /// Answer once this member's state is at least as new as the leader's commit index now.
    ReadIndex { reply: oneshot::Sender<Result<()>> },
    /// A Raft message from a peer (checked by the transport: from a member, to this member).
    Step(Box<Message>),
    /// Change the membership (on the leader); answer once the change is applied.
    ChangeMembership {
        change: MemberChange,
        reply: oneshot::Sender<Result<Response>>,
    },
    /// Hand leadership to the best other voter, before this leader removes itself; answer once
    /// it leads.
    HandOver { reply: oneshot::Sender<Result<()>> },
    /// Hand leadership to `target`; answer once it leads.
    TransferLeader {
        target: u64,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Stop the loop after the current turn.
    Shutdown,
}

/// Numbers about the node that readers need without a round trip to the loop (Status, headers).
#[derive(Debug, Default)]
pub struct NodeStatus {
    pub term: AtomicU64,
    pub leader: AtomicU64,
    pub commit: AtomicU64,
    pub applied: AtomicU64,
    /// The first entry still in the Raft log (entries before it were compacted away).
    pub first_index: AtomicU64,
    pub last_index: AtomicU64,
    /// Snapshots this member made for followers, since it started.
    pub snapshots_made: AtomicU64,
    /// Snapshots this member installed, since it started.
    pub snapshots_installed: AtomicU64,
    /// Whether this member is a learner (replicates, does not vote).
    pub is_learner: std::sync::atomic::AtomicBool,
}

/// Timing of the loop, from the server flags.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This member's id (non-zero).
    pub id: u64,
    /// One Raft tick.
    pub tick: Duration,
    /// Election timeout in ticks.
    pub election_ticks: usize,
    /// How long a caller waits for its proposal or read.
    pub request_timeout: Duration,
    /// Compact the Raft log after this many applied entries.
    pub snapshot_count: u64,
    /// The member's fault plan (tests: `faults.rs`).
    pub faults: Arc<Faults>,
}

impl NodeConfig {
    /// The election timeout as a duration.
    fn election_timeout(&self) -> Duration {
        self.tick * self.election_ticks as u32
    }
}

/// A cloneable handle to the node loop.
#[derive(Clone)]
pub struct NodeHandle {
    tx: Sender<Msg>,
    status: Arc<NodeStatus>,
    request_timeout: Duration,
}

impl NodeHandle {
    /// Proposes `command` and waits until it is committed, durable and applied.
    pub async fn propose(&self, command: Command) -> Result<Response> {
        self.ask(|reply| Msg::Propose { command, reply }).await
    }

    /// Waits until a read served from local state now would be linearizable.
    pub async fn read_index(&self) -> Result<()> {
        self.ask(|reply| Msg::ReadIndex { reply }).await
    }

    /// Sends the loop a request and waits for its answer, at most the request timeout.
    async fn ask<T>(&self, msg: impl FnOnce(oneshot::Sender<Result<T>>) -> Msg) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(msg(reply)).map_err(|_| Error::Stopped)?;
        match tokio::time::timeout(self.request_timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::Stopped),
            Err(_) => Err(Error::Timeout),
        }
    }

    pub fn status(&self) -> &NodeStatus {
        &self.status
    }

    /// Makes a membership change (this member must lead); returns once it is applied here.
    pub async fn change_membership(&self, change: MemberChange) -> Result<Response> {
        self.ask(|reply| Msg::ChangeMembership { change, reply })
            .await
    }

    /// Before this leader removes itself: checks that the removal would leave a healthy cluster,
    /// then hands leadership to the voter heard from lately with the most of the log; returns once
    /// it leads.
    pub async fn hand_over(&self) -> Result<()> {
        self.ask(|reply| Msg::HandOver { reply }).await
    }

    /// Hands leadership to member `target` (this member must lead); returns once `target` leads.
    pub async fn move_leader(&self, target: u64) -> Result<()> {
        self.ask(|reply| Msg::TransferLeader { target, reply })
            .await
    }

    /// Hands the loop a message from a peer, without waiting.
    pub fn step(&self, msg: Message) {
        let _ = self.tx.send(Msg::Step(Box::new(msg)));
    }

    /// Asks the loop to stop; it finishes its current turn first.
    pub fn shutdown(&self) {
        let _ = self.tx.send(Msg::Shutdown);
    }
}

/// Callers waiting for a read to become linearizable.
type ReadWaiters = Vec<oneshot::Sender<Result<()>>>;

/// Reads waiting for a read index.
#[derive(Default)]
struct Reads {
    /// Not yet handed to raft-rs.
    queued: ReadWaiters,
    /// Handed to raft-rs under a context, with when, waiting for a read state.
    issued: HashMap<Vec<u8>, (Instant, ReadWaiters)>,
    /// Read index known; waiting until the state machine has applied it.
    ready: Vec<(u64, ReadWaiters)>,
    /// Source of fresh contexts (with this member's id and `started`).
    next_ctx: u64,
    /// When this run of the loop started (nanoseconds since the epoch).
    started: u64,
}

/// Time spent in the phases of one turn.
#[derive(Debug, Default)]
struct TurnTimings {
    persist: Duration,
    flush: Duration,
    apply: Duration,
}

/// The node loop's state (see the module doc).
pub struct Node {
    raw: RawNode<RaftStorage>,
    sm: StateMachine,
    rx: Receiver<Msg>,
    config: NodeConfig,
    status: Arc<NodeStatus>,
    ids: IdGen,
    waiters: Waiters,
    reads: Reads,
    db: sled::Db,
    /// The applied index that sled held at the last flush: log compaction stays at or below it.
    durable_applied: u64,
    /// When applied changes were last written to sled.
    last_write_back: Instant,
    /// Where the current turn's time went (reported with slow turns).
    timings: TurnTimings,
    /// Where applied events go: the watch hub's dispatcher.
    events: EventSink,
    /// This member became leader and will promote the lessor once it has applied every entry
    /// committed before (so deadlines start from the latest lease records, not older ones).
    promote_pending: bool,
    /// Messages to other members.
    transport: Transport,
    /// The peer table's generation the transport was last pointed at.
    members_generation: u64,
    /// When this member applied its own removal: the loop stops [`REMOVED_LINGER`] ticks later.
    removed: Option<Instant>,
    /// When each member was last heard from (for etcd's reconfiguration health check).
    heard: HashMap<u64, Instant>,
    /// A leadership transfer under way: its target, its caller, and until when it may take.
    transfer: Option<(u64, oneshot::Sender<Result<()>>, Instant)>,
    /// A test's fault plan; here, only its stale-read bug matters (`faults.rs`).
    faults: Arc<Faults>,
}

impl Node {
    /// Builds the node from opened storage. Returns the loop and a handle to it.
    pub fn new(
        config: NodeConfig,
        storage: RaftStorage,
        sm: StateMachine,
        db: sled::Db,
        events: EventSink,
        transport: Transport,
        logger: &slog::Logger,
    ) -> Result<(Node, NodeHandle)> {
        let applied = sm.applied();
        let faults = config.faults.clone();
        let raft_config = raft::Config {
            id: config.id,
            election_tick: config.election_ticks,
            heartbeat_tick: 1,
            applied,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            read_only_option: raft::ReadOnlyOption::Safe,
            ..Default::default()
        };
        raft_config.validate()?;
        let single = storage.voters() == [config.id];
        let mut raw = RawNode::new(&raft_config, storage, logger)?;
        if single {
            // A one-member group need not wait an election timeout to elect itself.
            raw.campaign()?;
        }
        let promote_pending = raw.raft.state == StateRole::Leader;
        let (tx, rx) = crossbeam_channel::unbounded();
        let status = Arc::new(NodeStatus::default());
        let handle = NodeHandle {
            tx,
            status: status.clone(),
            request_timeout: config.request_timeout,
        };
        let mut node = Node {
            raw,
            sm,
            rx,
            config,
            status,
            ids: IdGen::new(),
            waiters: Waiters::default(),
            reads: Reads {
                started: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64),
                ..Reads::default()
            },
            db,
            durable_applied: applied,
            last_write_back: Instant::now(),
            timings: TurnTimings::default(),
            events,
            promote_pending,
            transport,
            members_generation: u64::MAX,
            removed: None,
            heard: HashMap::new(),
            transfer: None,
            faults,
        };
        node.maybe_promote();
        node.publish_status();
        Ok((node, handle))
    }

    /// Runs the loop until shutdown. An error means this member can no longer apply entries
    /// faithfully; the caller stops the server.
    pub fn run(mut self) -> Result<()> {
        let _poison_on_panic = PoisonOnPanic(self.sm.kv().clone());
        let mut next_tick = Instant::now() + self.config.tick;
        let rx = self.rx.clone();
        let result = loop {
            let timeout = next_tick.saturating_duration_since(Instant::now());
            let first = match rx.recv_timeout(timeout) {
                Ok(msg) => Some(msg),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break Ok(()),
            };
            let mut stop = false;
            for msg in first
                .into_iter()
                .chain(rx.try_iter().take(MAX_MSGS_PER_TURN))
            {
                stop |= self.handle(msg);
            }
            let now = Instant::now();
            for peer in self.transport.take_unreachable() {
                self.raw.report_unreachable(peer);
            }
            for (peer, sent) in self.transport.take_snapshot_reports() {
                let status = if sent {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                };
                self.raw.report_snapshot(peer, status);
            }
            if now >= next_tick {
                self.raw.tick();
                next_tick = now + self.config.tick;
                self.waiters.expire(now);
                self.retry_reads(now);
            }
            self.issue_reads();
            let turn = Instant::now();
            self.timings = TurnTimings::default();
            if let Err(e) = self.on_ready() {
                break Err(e);
            }
            self.check_transfer();
            self.sync_transport();
            self.maybe_leave_joint();
            if let Err(e) = self.maybe_make_snapshot() {
                break Err(e);
            }
            let ready_took = turn.elapsed();
            if let Err(e) = self.maybe_write_back(now) {
                break Err(e);
            }
            let took = turn.elapsed();
            if took > SLOW_TURN {
                tracing::warn!(
                    ?took,
                    ?ready_took,
                    persist = ?self.timings.persist,
                    flush = ?self.timings.flush,
                    apply = ?self.timings.apply,
                    write_back = ?(took - ready_took),
                    "raft loop turn took too long"
                );
            }
            let linger = self.config.tick * REMOVED_LINGER;
            if self.removed.is_some_and(|at| at.elapsed() >= linger) {
                tracing::warn!("this member was removed from the cluster: stopping");
                break Err(Error::Removed);
            }
            if stop {
                break Ok(());
            }
        };
        self.waiters.fail_all(Error::Stopped);
        self.fail_reads(Error::Stopped);
        if result.is_ok() || result == Err(Error::Removed) {
            self.sm.kv().write_back()?;
            self.db.flush()?;
        } else {
            // After a failure nothing more is written: a batch may have been applied in part, and
            // the Raft log (durable) is what a restart rebuilds from.
            self.sm.kv().poison();
        }
        result
    }

    /// Handles one message; returns true on shutdown.
    fn handle(&mut self, msg: Msg) -> bool {
        match msg {
            Msg::Propose { command, reply } => self.propose(command, reply),
            Msg::ReadIndex { reply } => {
                if self.faults.stale_reads() {
                    // The bug a test switches on: local state, no read index (see `faults.rs`).
                    let _ = reply.send(Ok(()));
                } else if self.raw.raft.leader_id == raft::INVALID_ID {
                    let _ = reply.send(Err(Error::NoLeader));
                } else {
                    self.reads.queued.push(reply);
                }
            }
            Msg::Step(msg) => {
                self.heard.insert(msg.from, Instant::now());
                if let Err(e) = self.raw.step(*msg) {
                    // A message from an old term or for a removed peer: raft-rs says so; ignore.
                    tracing::debug!(error = %e, "a raft message was not stepped");
                }
            }
            Msg::TransferLeader { target, reply } => self.transfer_leader(target, reply),
            Msg::HandOver { reply } => self.hand_over(reply),
            Msg::ChangeMembership { change, reply } => self.change_membership(change, reply),
            Msg::Shutdown => return true,
        }
        false
    }

    fn propose(&mut self, command: Command, reply: oneshot::Sender<Result<Response>>) {
        let id = self.ids.next_id();
        let data = Proposal {
            id,
            origin: self.config.id,
            command: Some(command),
        }
        .encode_to_vec();
        let proposed = self.raw.propose(vec![], data);
        self.wait_for(id, proposed, reply);
    }

    /// Makes `reply` wait for proposal `id`, if raft-rs took it.
    fn wait_for(
        &mut self,
        id: u64,
        proposed: raft::Result<()>,
        reply: oneshot::Sender<Result<Response>>,
    ) {
        match proposed {
            Ok(()) => {
                let deadline =
                    Instant::now() + self.config.request_timeout + Duration::from_secs(1);
                self.waiters.insert(id, reply, deadline);
            }
            Err(e) => {
                let _ = reply.send(Err(e.into()));
            }
        }
    }

    /// Picks the successor of a leader about to remove itself (etcd's `longestConnected`, by log)
    /// and starts the transfer.
    fn hand_over(&mut self, reply: oneshot::Sender<Result<()>>) {
        if self.raw.raft.state != StateRole::Leader {
            let _ = reply.send(Err(Error::LeaderChanged));
            return;
        }
        if let Err(e) = self.check_reconfig_health(&MemberChange::Remove(self.config.id)) {
            let _ = reply.send(Err(e));
            return;
        }
        let conf = self.raw.store().conf_state();
        let best = conf
            .voters
            .iter()
            .filter(|v| **v != self.config.id && self.heard_lately(**v))
            .max_by_key(|v| self.raw.raft.prs().get(**v).map_or(0, |pr| pr.matched))
            .copied();
        match best {
            Some(target) => self.transfer_leader(target, reply),
            None => {
                let _ = reply.send(Err(Error::Unhealthy));
            }
        }
    }

    /// Starts a leadership transfer (etcd's MoveLeader); answered by [`Node::check_transfer`].
    fn transfer_leader(&mut self, target: u64, reply: oneshot::Sender<Result<()>>) {
        if self.raw.raft.state != StateRole::Leader {
            let _ = reply.send(Err(Error::NotLeader));
            return;
        }
        if !self.raw.store().voters().contains(&target) {
            let _ = reply.send(Err(Error::BadLeaderTransferee));
            return;
        }
        if target == self.config.id {
            let _ = reply.send(Ok(()));
            return;
        }
        if let Some((_, earlier, _)) = self.transfer.take() {
            let _ = earlier.send(Err(Error::LeaderTransferTimeout));
        }
        // Two election timeouts: raft-rs aborts a transfer after one, if the target never campaigns.
        self.transfer = Some((
            target,
            reply,
            Instant::now() + 2 * self.config.election_timeout(),
        ));
        self.raw.transfer_leader(target);
    }

    /// Answers a transfer once its target leads, or once it has taken too long.
    fn check_transfer(&mut self) {
        let Some((target, _, deadline)) = &self.transfer else {
            return;
        };
        let done = self.raw.raft.leader_id == *target;
        if done || Instant::now() > *deadline {
            let (_, reply, _) = self.transfer.take().expect("checked above");
            let _ = reply.send(if done {
                Ok(())
            } else {
                Err(Error::LeaderTransferTimeout)
            });
        }
    }

    /// Hands the reads queued this turn to raft-rs under one fresh context.
    fn issue_reads(&mut self) {
        if self.reads.queued.is_empty() {
            return;
        }
        // Unique across members and restarts: the leader silently drops a read whose context is
        // already pending, whoever sent it.
        self.reads.next_ctx += 1;
        let mut ctx = self.config.id.to_be_bytes().to_vec();
        ctx.extend_from_slice(&self.reads.started.to_be_bytes());
        ctx.extend_from_slice(&self.reads.next_ctx.to_be_bytes());
        let waiting = std::mem::take(&mut self.reads.queued);
        self.reads
            .issued
            .insert(ctx.clone(), (Instant::now(), waiting));
        self.raw.read_index(ctx);
    }

    /// Re-queues reads whose read index has not come back (see the module doc).
    fn retry_reads(&mut self, now: Instant) {
        let patience = self.config.tick * 5;
        let stale: Vec<Vec<u8>> = self
            .reads
            .issued
            .iter()
            .filter(|(_, (at, _))| now.duration_since(*at) > patience)
            .map(|(ctx, _)| ctx.clone())
            .collect();
        for ctx in stale {
            if let Some((_, waiting)) = self.reads.issued.remove(&ctx) {
                let open = waiting.into_iter().filter(|w| !w.is_closed());
                self.reads.queued.extend(open);
            }
        }
    }

    fn fail_reads(&mut self, err: Error) {
        let issued = self.reads.issued.drain().flat_map(|(_, (_, w))| w);
        let ready = self.reads.ready.drain(..).flat_map(|(_, w)| w);
        for reply in self.reads.queued.drain(..).chain(issued).chain(ready) {
            let _ = reply.send(Err(err.clone()));
        }
    }

    /// Answers the reads whose index the state machine has reached.
    fn release_reads(&mut self) {
        let applied = self.sm.applied();
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.reads.ready)
            .into_iter()
            .partition(|(index, _)| *index <= applied);
        self.reads.ready = waiting;
        for reply in done.into_iter().flat_map(|(_, w)| w) {
            let _ = reply.send(Ok(()));
        }
    }

    /// Handles one Ready in raft-rs's order (see the module doc).
    fn on_ready(&mut self) -> Result<()> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut ready = self.raw.ready();
        if let Some(ss) = ready.ss() {
            self.on_leader_change(ss.leader_id, ss.raft_state);
        }
        self.send(ready.take_messages());
        if !ready.snapshot().is_empty() {
            self.install_snapshot(ready.snapshot())?;
        }
        self.apply(ready.take_committed_entries())?;
        let hs = ready.hs().cloned();
        if !ready.entries().is_empty() || hs.is_some() {
            let started = Instant::now();
            self.raw.mut_store().persist(ready.entries(), hs.as_ref())?;
            self.timings.persist += started.elapsed();
        }
        if ready.must_sync() || !ready.entries().is_empty() {
            self.flush()?;
        }
        self.send(ready.take_persisted_messages());
        for rs in ready.take_read_states() {
            if let Some((_, waiting)) = self.reads.issued.remove(&rs.request_ctx) {
                self.reads.ready.push((rs.index, waiting));
            }
        }
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().set_commit(commit);
        }
        self.send(light.take_messages());
        self.apply(light.take_committed_entries())?;
        self.raw.advance_apply();
        self.maybe_promote();
        self.release_reads();
        self.maybe_compact_log()?;
        self.publish_status();
        Ok(())
    }

    /// One flush of the whole database: entries, hard state, and the state sled holds so far.
    fn flush(&mut self) -> Result<()> {
        let written = self.sm.kv().written();
        let started = Instant::now();
        self.db.flush()?;
        self.timings.flush += started.elapsed();
        self.durable_applied = written;
        Ok(())
    }

    /// Writes applied changes to sled when enough have waited long enough (etcd's backend batch:
    /// see `mvcc/store.rs`). Not flushed here: the next Ready's flush covers it, and until then
    /// the Raft log holds the entries.
    fn maybe_write_back(&mut self, now: Instant) -> Result<()> {
        let (pending, records) = self.sm.kv().unwritten();
        let due = now.duration_since(self.last_write_back) >= BACKEND_BATCH_INTERVAL;
        if pending && (due || records >= BACKEND_BATCH_LIMIT) {
            self.sm.kv().write_back()?;
            self.last_write_back = now;
        }
        Ok(())
    }

    /// Applies committed entries: runs of normal entries through the state machine, membership
    /// changes one by one (see [`Node::apply_membership`]).
    fn apply(&mut self, entries: Vec<Entry>) -> Result<()> {
        let mut run = Vec::new();
        for entry in entries {
            if entry.get_entry_type() == EntryType::EntryNormal {
                run.push(entry);
            } else {
                self.apply_run(std::mem::take(&mut run))?;
                self.apply_membership(&entry)?;
            }
        }
        self.apply_run(run)
    }

    /// Applies a run of normal entries, then answers their callers (after the status shows them
    /// applied; the rest of the status is published at the end of the Ready).
    fn apply_run(&mut self, entries: Vec<Entry>) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let outcome = self.sm.apply(&entries)?;
        self.timings.apply += started.elapsed();
        self.status
            .applied
            .store(self.sm.applied(), Ordering::Relaxed);
        self.events.publish(outcome.events, outcome.revision);
        for out in outcome.answers {
            if out.origin == self.config.id {
                self.waiters.answer(out.id, out.result);
            }
        }
        Ok(())
    }

    /// Applies a membership change entry: raft-rs computes the new conf state, the state machine
    /// stores it with the peer table's change and the applied index (one batch), the proposer is
    /// answered. raft-rs refusing the change (it would leave no voter) is deterministic, so every
    /// member refuses it alike and only the applied index moves. A member that applies its own
    /// removal stops at the end of the turn.
    fn apply_membership(&mut self, entry: &Entry) -> Result<()> {
        if entry.index <= self.sm.applied() {
            return Ok(()); // applied before a restart: the stored conf state has it
        }
        let cc = match entry.get_entry_type() {
            EntryType::EntryConfChange => {
                // raft-rs writes a one-change V2 as V1 (`ConfChangeI::as_v1`).
                let v1 = ConfChange::parse_from_bytes(&entry.data)?;
                let mut single = ConfChangeSingle::default();
                single.set_change_type(v1.get_change_type());
                single.node_id = v1.node_id;
                let mut v2 = ConfChangeV2::default();
                v2.set_changes(vec![single].into());
                v2
            }
            _ => ConfChangeV2::parse_from_bytes(&entry.data)?,
        };
        let context = if entry.context.is_empty() {
            None
        } else {
            Some(MembershipContext::decode(&entry.context[..])?)
        };
        let (conf_state, change, result) = match self.raw.apply_conf_change(&cc) {
            Ok(conf_state) => {
                let change = match (cc.get_changes().first(), context.as_ref()) {
                    (Some(single), _) if single.get_change_type() == ConfChangeType::RemoveNode => {
                        PeerChange::Remove(single.node_id)
                    }
                    (
                        Some(_),
                        Some(MembershipContext {
                            peer: Some(peer), ..
                        }),
                    ) => PeerChange::Set(peer.clone()),
                    _ => PeerChange::None,
                };
                (conf_state, change, Ok(Response::MembershipChanged))
            }
            Err(e) => {
                tracing::warn!(index = entry.index, error = %e, "a membership change was refused");
                let unchanged = self.raw.store().conf_state().clone();
                let refused = Err(Error::MembershipChangeRefused(e.to_string()));
                (unchanged, PeerChange::None, refused)
            }
        };
        tracing::info!(index = entry.index, ?change, voters = ?conf_state.voters,
            learners = ?conf_state.learners, "applied a membership change");
        if change == PeerChange::Remove(self.config.id) {
            self.removed = Some(Instant::now());
            if self.raw.raft.state == StateRole::Leader {
                // raft-rs cannot lead a group it is not in (it would panic counting its own
                // progress). The Cluster service hands leadership away before a leader removes
                // itself, so this is the rare case where that did not happen: step down.
                let term = self.raw.raft.term;
                self.raw.raft.become_follower(term, raft::INVALID_ID);
            }
        }
        self.sm.apply_membership(entry.index, &conf_state, change)?;
        self.raw.mut_store().set_conf_state(conf_state);
        self.status
            .applied
            .store(self.sm.applied(), Ordering::Relaxed);
        if let Some(context) = context
            && context.origin == self.config.id
        {
            self.waiters.answer(context.id, result);
        }
        Ok(())
    }

    /// Starts a membership change on the leader (see the module doc): checked against the
    /// members and raft-rs's progress as etcd checks it, proposed as a `ConfChangeV2`, answered
    /// when applied.
    fn change_membership(
        &mut self,
        change: MemberChange,
        reply: oneshot::Sender<Result<Response>>,
    ) {
        if matches!(change, MemberChange::Add { .. }) && self.raw.store().first_index() <= 1 {
            // A log that still starts at entry 1 (a cluster made before clusters were
            // bootstrapped at index 1, see `join.rs`) would replay entry 1 to the new member on
            // an empty configuration: compact it first, so that the new member gets a snapshot.
            let target = self
                .durable_applied
                .min(self.raw.store().hard_state().commit);
            if target >= 1
                && let Err(e) = self.raw.mut_store().compact(target)
            {
                let _ = reply.send(Err(e));
                return;
            }
        }
        match self.conf_change(change) {
            Ok((cc, peer)) => {
                let id = self.ids.next_id();
                let context = MembershipContext {
                    id,
                    origin: self.config.id,
                    peer: Some(peer),
                }
                .encode_to_vec();
                let proposed = self.raw.propose_conf_change(context, cc);
                self.wait_for(id, proposed, reply);
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    /// The conf change for `change` and the peer as the table will hold it, or why not.
    fn conf_change(&self, change: MemberChange) -> Result<(ConfChangeV2, Peer)> {
        if self.raw.raft.state != StateRole::Leader {
            return Err(Error::NotLeader);
        }
        if self.raw.raft.has_pending_conf() {
            return Err(Error::MembershipChangePending);
        }
        self.check_reconfig_health(&change)?;
        let members = self.sm.members();
        let (kind, peer) = match change {
            MemberChange::Add {
                id,
                peer_urls,
                learner,
            } => {
                if members.contains(id) {
                    return Err(Error::MemberExists);
                }
                if members.url_taken(&peer_urls, 0) {
                    return Err(Error::PeerUrlExists);
                }
                if learner && members.peers().values().any(|p| p.is_learner) {
                    return Err(Error::TooManyLearners);
                }
                let kind = if learner {
                    ConfChangeType::AddLearnerNode
                } else {
                    ConfChangeType::AddNode
                };
                let peer = Peer {
                    id,
                    peer_urls,
                    is_learner: learner,
                };
                (kind, peer)
            }
            MemberChange::Remove(id) => {
                let peer = members.peer(id).ok_or(Error::MemberNotFound)?;
                (ConfChangeType::RemoveNode, peer)
            }
            MemberChange::Promote(id) => {
                let peer = members.peer(id).ok_or(Error::MemberNotFound)?;
                if !peer.is_learner {
                    return Err(Error::MemberNotLearner);
                }
                // etcd's rule: the learner has 90% of what the leader committed.
                let matched = self.raw.raft.prs().get(id).map_or(0, |pr| pr.matched);
                let committed = self.raw.raft.raft_log.committed;
                if (matched as f64) < committed as f64 * LEARNER_READY {
                    return Err(Error::LearnerNotReady);
                }
                let peer = Peer {
                    is_learner: false,
                    ..peer
                };
                (ConfChangeType::AddNode, peer)
            }
        };
        let mut single = ConfChangeSingle::default();
        single.set_change_type(kind);
        single.node_id = peer.id;
        let mut cc = ConfChangeV2::default();
        cc.set_changes(vec![single].into());
        Ok((cc, peer))
    }

    /// Whether member `id` sent this one a message within the last election timeout.
    fn heard_lately(&self, id: u64) -> bool {
        let lately = self.config.election_timeout();
        self.heard.get(&id).is_some_and(|t| t.elapsed() < lately)
    }

    /// etcd's strict reconfiguration check: a change that would leave fewer voters heard from
    /// lately than a quorum (adding a voter that has not started, removing a healthy member while
    /// another is down) is refused with "unhealthy cluster" instead of stalling the cluster.
    fn check_reconfig_health(&self, change: &MemberChange) -> Result<()> {
        let voters = &self.raw.store().conf_state().voters;
        let active = |id: &u64| *id == self.config.id || self.heard_lately(*id);
        let quorum = |n: usize| n / 2 + 1;
        let healthy = match change {
            // A lone member may add a second voter (etcd allows it): the cluster then waits,
            // without a quorum, until the new member starts.
            MemberChange::Add { learner: false, .. } if voters.len() == 1 => true,
            MemberChange::Add { learner: false, .. } => {
                voters.iter().filter(|v| active(v)).count() >= quorum(voters.len() + 1)
            }
            MemberChange::Promote(learner) => {
                let up = voters.iter().filter(|v| active(v)).count() + usize::from(active(learner));
                up >= quorum(voters.len() + 1)
            }
            MemberChange::Remove(id) if voters.contains(id) => {
                let left = voters.iter().filter(|v| *v != id);
                left.clone().filter(|v| active(v)).count() >= quorum(left.count())
            }
            _ => true,
        };
        if healthy {
            Ok(())
        } else {
            Err(Error::Unhealthy)
        }
    }

    /// Leaves a joint configuration that nobody else will leave (see the module doc).
    fn maybe_leave_joint(&mut self) {
        let joint = !self.raw.store().conf_state().voters_outgoing.is_empty();
        if joint && self.raw.raft.state == StateRole::Leader && !self.raw.raft.has_pending_conf() {
            tracing::warn!("leaving a joint configuration left behind by an earlier leader");
            if let Err(e) = self
                .raw
                .propose_conf_change(vec![], ConfChangeV2::default())
            {
                tracing::warn!(error = %e, "cannot propose leaving the joint configuration");
            }
        }
    }

    /// Points the transport at the members of the peer table, if it changed.
    fn sync_transport(&mut self) {
        let generation = self.sm.members().generation();
        if generation != self.members_generation {
            self.members_generation = generation;
            self.transport.sync(&self.sm.members().peers());
        }
    }

    fn on_leader_change(&mut self, leader: u64, role: StateRole) {
        tracing::info!(
            leader = format!("{leader:x}"),
            ?role,
            term = self.raw.raft.term,
            "raft leader changed"
        );
        if leader == raft::INVALID_ID {
            self.fail_reads(Error::NoLeader);
        }
        // Only the leader expires leases; a new one restarts every deadline (see `lease`).
        if role == StateRole::Leader {
            // (A one-member group promoted already when it started.)
            self.promote_pending |= !self.sm.lessor().is_primary();
        } else {
            self.promote_pending = false;
            self.sm.lessor().demote();
        }
    }

    /// Promotes the lessor once a new leader has applied everything committed before it.
    /// Until then keepalives answer "no leader" and clients retry.
    fn maybe_promote(&mut self) {
        if self.promote_pending && self.sm.applied() >= self.raw.raft.raft_log.committed {
            self.promote_pending = false;
            self.sm.lessor().promote(self.config.election_timeout());
        }
    }

    /// Compacts the Raft log once `snapshot_count` durable applied entries have accumulated,
    /// keeping the last few for followers slightly behind (see the module doc). Not while a
    /// follower is being sent a snapshot: compacting past it would make it need another.
    fn maybe_compact_log(&mut self) -> Result<()> {
        let sending = self
            .raw
            .raft
            .prs()
            .iter()
            .any(|(_, pr)| pr.state == ProgressState::Snapshot);
        if sending {
            return Ok(());
        }
        let store = self.raw.store();
        let keep = CATCH_UP_ENTRIES.min(self.config.snapshot_count);
        let target = self
            .durable_applied
            .min(store.hard_state().commit)
            .saturating_sub(keep);
        if target >= store.first_index() + self.config.snapshot_count {
            self.raw.mut_store().compact(target)?;
        }
        Ok(())
    }

    /// Makes a snapshot of the applied state if raft-rs asked for one this turn (see the module
    /// doc of `storage.rs`). Written back first, so the state tree is exactly the applied state.
    fn maybe_make_snapshot(&mut self) -> Result<()> {
        if !self.raw.store().take_snapshot_request() {
            return Ok(());
        }
        let started = Instant::now();
        self.sm.kv().write_back()?;
        self.last_write_back = Instant::now();
        let applied = self.sm.applied();
        let term = self.raw.store().term_at(applied)?;
        let data = snapshot::encode(self.sm.kv().tree())?;
        let bytes = data.len();
        let mut snap = Snapshot::default();
        snap.set_data(data.into());
        let meta = snap.mut_metadata();
        meta.index = applied;
        meta.term = term;
        meta.set_conf_state(self.raw.store().conf_state().clone());
        self.raw.mut_store().set_snapshot(snap);
        self.status.snapshots_made.fetch_add(1, Ordering::Relaxed);
        tracing::info!(index = applied, term, bytes, took = ?started.elapsed(), "made a snapshot");
        Ok(())
    }

    /// Installs a snapshot from the leader (see the module doc).
    fn install_snapshot(&mut self, snap: &Snapshot) -> Result<()> {
        let started = Instant::now();
        let meta = snap.get_metadata();
        let records = snapshot::decode(snap.get_data())?;
        let extra = [
            (KEY_INSTALLED, encode_index_term(meta.index, meta.term)),
            (
                KEY_CONF_STATE,
                protobuf::Message::write_to_bytes(meta.get_conf_state())?,
            ),
        ];
        self.sm.restore(records, meta.index, &extra)?;
        self.raw.mut_store().apply_snapshot(meta)?;
        self.flush()?;
        self.status
            .applied
            .store(self.sm.applied(), Ordering::Relaxed);
        self.events.restored(self.sm.kv().current_revision());
        self.status
            .snapshots_installed
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(index = meta.index, term = meta.term, bytes = snap.get_data().len(),
            took = ?started.elapsed(), "installed a snapshot");
        Ok(())
    }

    /// Sends Raft messages to their members (see the module doc).
    fn send(&self, msgs: Vec<Message>) {
        if !msgs.is_empty() {
            self.transport.send(msgs);
        }
    }

    fn publish_status(&self) {
        let s = &self.status;
        s.term.store(self.raw.raft.term, Ordering::Relaxed);
        s.leader.store(self.raw.raft.leader_id, Ordering::Relaxed);
        s.commit
            .store(self.raw.raft.raft_log.committed, Ordering::Relaxed);
        s.applied.store(self.sm.applied(), Ordering::Relaxed);
        s.first_index
            .store(self.raw.store().first_index(), Ordering::Relaxed);
        s.last_index
            .store(self.raw.store().last_index(), Ordering::Relaxed);
        let learner = self
            .raw
            .store()
            .conf_state()
            .learners
            .contains(&self.config.id);
        s.is_learner.store(learner, Ordering::Relaxed);
    }
}

/// Poisons the store if the loop unwinds (an assertion failed): see `KvStore::poison`.
struct PoisonOnPanic(Arc<crate::mvcc::KvStore>);

impl Drop for PoisonOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.poison();
        }
    }
}
