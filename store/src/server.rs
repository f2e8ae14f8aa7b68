//! Starting and stopping a Concord member: storage, the node loop, and the gRPC listeners.
//!
//! [`Server::start`] opens the data dir (refusing one that another process holds), rebuilds the
//! MVCC index, starts the node loop on its own thread, binds every client listener and serves the
//! etcd services on them. [`Server::shutdown`] stops accepting requests, lets in-flight ones end,
//! stops the loop (which flushes) and returns. Tests start servers in-process on `127.0.0.1:0`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use concord_proto::concordpeerpb::peer_server::PeerServer;
use concord_proto::etcdserverpb::cluster_server::ClusterServer;
use concord_proto::etcdserverpb::kv_server::KvServer;
use concord_proto::etcdserverpb::lease_server::LeaseServer;
use concord_proto::etcdserverpb::maintenance_server::MaintenanceServer;
use concord_proto::etcdserverpb::watch_server::WatchServer;
use concord_proto::v3electionpb::election_server::ElectionServer;
use concord_proto::v3lockpb::lock_server::LockServer;
use raft::eraftpb::ConfState;
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;

use crate::apply::StateMachine;
use crate::config::{CONCORD_VERSION, ClusterState, ServerConfig};
use crate::error::{Error, Result};
use crate::join;
use crate::lease::{Lessor, keeper};
use crate::members::{Attributes, Members, Peer};
use crate::mvcc::KvStore;
use crate::mvcc::store::META_APPLIED;
use crate::raft::faults::Faults;
use crate::raft::node::{Node, NodeConfig, NodeHandle};
use crate::raft::proposal::Command;
use crate::raft::storage::RaftStorage;
use crate::raft::transport::{Deliver, PeerService, Transport};
use crate::service::cluster::ClusterService;
use crate::service::forward::ToLeader;
use crate::service::{
    Core, election::ElectionService, kv::KvService, lease::LeaseService, lock::LockService,
    maintenance::MaintenanceService, watch::WatchService,
};
use crate::watch::{Hub, threads};

/// Key of the member and cluster ids chosen at first start, in the `local` tree: what is this
/// member's alone stays out of the replicated `state` tree, which snapshots copy whole. (Data dirs
/// made before the `local` tree kept it in `state`; it is moved on start, and snapshots skip it.)
pub const KEY_IDENTITY: &[u8] = b"m/identity";
/// gRPC framing and header allowance on top of `--max-request-bytes` (etcd's value).
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;
/// Largest batch of Raft messages accepted from a peer (raft-rs keeps one append under 1 MiB).
const PEER_MESSAGE_BYTES: usize = 32 * 1024 * 1024;
/// sled's page cache.
const CACHE_BYTES: u64 = 256 * 1024 * 1024;

/// A running member.
pub struct Server {
    /// The addresses clients reach this member on (ports resolved).
    client_addrs: Vec<SocketAddr>,
    /// The addresses peers reach this member on (none in a one-member cluster).
    peer_addrs: Vec<SocketAddr>,
    /// Flipped to stop the peer listeners, once the node loop has stopped.
    peer_stop_tx: watch::Sender<bool>,
    /// One task per peer listener.
    peer_listeners: Vec<tokio::task::JoinHandle<Result<()>>>,
    node: NodeHandle,
    /// Flipped to stop the gRPC listeners.
    stop_tx: watch::Sender<bool>,
    /// One task per client listener.
    listeners: Vec<tokio::task::JoinHandle<Result<()>>>,
    /// The node loop's thread; its result says whether it stopped cleanly.
    node_thread: Option<JoinHandle<Result<()>>>,
    /// The watch hub's threads.
    watch_threads: threads::Threads,
    /// The watch hub (for [`Server::watchers`]).
    hub: Arc<Hub>,
    /// The lease keeper task (see `lease::keeper`).
    keeper: Option<tokio::task::JoinHandle<()>>,
    /// Faults a test injects into this member's Raft traffic (`raft/faults.rs`).
    faults: Arc<Faults>,
    member_id: u64,
}

impl Server {
    /// Opens the data dir and starts serving.
    pub async fn start(config: ServerConfig) -> Result<Server> {
        let db = open_db_patiently(&config).await?;
        let state = db.open_tree("state")?;
        let log = db.open_tree("raft")?;
        let local = db.open_tree("local")?;
        move_identity(&state, &local)?;
        // A member that never applied anything bootstraps a new cluster, or joins one (until the
        // leader's first snapshot, a joining member asks again at every start).
        let applied_any = state.contains_key(META_APPLIED)?;
        let first_start = !local.contains_key(KEY_IDENTITY)?;
        let joined = match (applied_any, config.initial_cluster_state) {
            (false, ClusterState::Existing) => Some(join::discover(&config).await?),
            _ => None,
        };
        let bootstrapping = !applied_any && joined.is_none() && log.is_empty();
        // A member that ran before and lost its data dir must not start again under its old id.
        // Checked before the identity is written: a refused start leaves nothing behind.
        if first_start {
            match &joined {
                Some(joined) if joined.published => {
                    return Err(join::already_bootstrapped(&config, joined.member_id));
                }
                None if bootstrapping => {
                    join::refuse_if_bootstrapped(&config, config.member_id()).await?;
                }
                _ => {}
            }
        }
        let (member_id, cluster_id) = identity(&local, &config, joined.as_ref())?;
        let initial = match &joined {
            Some(joined) => joined.peers.clone(),
            None => flag_peers(&config, member_id),
        };
        if bootstrapping {
            join::bootstrap(&state, &initial)?;
        }
        let kv = Arc::new(KvStore::open(state.clone())?);
        let lessor = Arc::new(Lessor::open(&kv, config.min_lease_ttl())?);
        let me = Attributes {
            id: member_id,
            name: config.name.clone(),
            client_urls: config.advertise_client_urls.clone(),
        };
        let members = Arc::new(Members::open(&kv, initial, me)?);
        let sm = StateMachine::open(kv.clone(), lessor.clone(), members.clone());
        let hub = Arc::new(Hub::new(kv.clone()));
        let (events, watch_threads) =
            threads::start(hub.clone(), config.watch_progress_notify_interval)?;
        // A joining member starts with no configuration: the leader's snapshot brings it.
        let mut storage = RaftStorage::open(log, &state, ConfState::default())?;
        let conf = storage.conf_state();
        let listed = conf.voters.contains(&member_id) || conf.learners.contains(&member_id);
        if sm.applied() > 0 && !listed {
            return Err(Error::Removed);
        }
        storage.raise_commit(sm.applied())?;
        let faults = Arc::new(Faults::default());
        let transport = Transport::start(member_id, cluster_id, &members.peers(), faults.clone());
        let node_config = NodeConfig {
            id: member_id,
            tick: config.heartbeat_interval,
            election_ticks: config.election_ticks(),
            request_timeout: config.request_timeout(),
            snapshot_count: config.snapshot_count,
            faults: faults.clone(),
        };
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let (node, handle) = Node::new(
            node_config,
            storage,
            sm,
            db.clone(),
            events,
            transport,
            &logger,
        )?;
        let node_thread = std::thread::Builder::new()
            .name("concord-raft".into())
            .spawn(move || node.run())
            .map_err(|e| Error::Network(format!("cannot start the raft thread: {e}")))?;

        let (stop_tx, stop_rx) = watch::channel(false);
        let core = Arc::new(Core {
            kv,
            node: handle.clone(),
            db,
            member_id,
            cluster_id,
            max_request_bytes: config.max_request_bytes,
            max_txn_ops: config.max_txn_ops,
            lessor: lessor.clone(),
            hub: hub.clone(),
            election_timeout: config.election_timeout,
            stop: stop_rx.clone(),
            watch_stream_buffer: config.watch_stream_buffer.max(1),
            to_leader: ToLeader::new(members.clone()),
            members: members.clone(),
        });
        let keeper_config = keeper::KeeperConfig {
            checkpoint_interval: config.lease_checkpoint_interval,
            election_timeout: config.election_timeout,
        };
        let keeper = tokio::spawn(keeper::run(
            lessor,
            handle.clone(),
            keeper_config,
            stop_rx.clone(),
        ));
        let mut client_addrs = Vec::new();
        let mut listeners = Vec::new();
        for addr in &config.listen_client {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| Error::Network(format!("cannot listen on {addr}: {e}")))?;
            let local = listener
                .local_addr()
                .map_err(|e| Error::Network(e.to_string()))?;
            client_addrs.push(local);
            listeners.push(tokio::spawn(serve(listener, core.clone(), stop_rx.clone())));
        }
        // Peers are served until the node loop has stopped (see `shutdown`).
        let (peer_stop_tx, peer_stop_rx) = watch::channel(false);
        let mut peer_listeners = Vec::new();
        let mut peer_addrs = Vec::new();
        for addr in &config.listen_peer {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| Error::Network(format!("cannot listen on {addr}: {e}")))?;
            peer_addrs.push(
                listener
                    .local_addr()
                    .map_err(|e| Error::Network(e.to_string()))?,
            );
            let node = handle.clone();
            let deliver: Deliver = Arc::new(move |msg| node.step(msg));
            let service = PeerService::new(
                member_id,
                cluster_id,
                members.clone(),
                deliver,
                peer_stop_rx.clone(),
                faults.clone(),
            );
            peer_listeners.push(tokio::spawn(serve_peers(
                listener,
                service,
                core.clone(),
                peer_stop_rx.clone(),
            )));
        }
        // The client URLs this member publishes: the advertised ones, with a port 0 (tests)
        // replaced by the port picked at bind time.
        let client_urls = config
            .advertise_client_urls
            .iter()
            .zip(client_addrs.iter().cycle())
            .map(|(url, addr)| match url.strip_suffix(":0") {
                Some(_) => format!("http://{addr}"),
                None => url.clone(),
            })
            .collect();
        let attributes = members.serving(client_urls);
        // Also alone: members added later must find where this one serves clients.
        if members.published(member_id).as_ref() != Some(&attributes) {
            tokio::spawn(publish(handle.clone(), attributes, stop_rx.clone()));
        }
        tracing::info!(
            name = %config.name,
            member_id = format!("{member_id:x}"),
            cluster_id = format!("{cluster_id:x}"),
            data_dir = %config.data_dir.display(),
            clients = ?client_addrs,
            peers = ?peer_addrs,
            version = CONCORD_VERSION,
            "concord is serving"
        );
        Ok(Server {
            client_addrs,
            peer_addrs,
            peer_stop_tx,
            peer_listeners,
            node: handle,
            stop_tx,
            listeners,
            node_thread: Some(node_thread),
            watch_threads,
            hub,
            keeper: Some(keeper),
            faults,
            member_id,
        })
    }

    /// The first client address (its port is the real one when the config asked for port 0).
    pub fn client_addr(&self) -> SocketAddr {
        self.client_addrs[0]
    }

    /// This member's id.
    pub fn member_id(&self) -> u64 {
        self.member_id
    }

    /// The addresses this member serves its peers on.
    pub fn peer_addrs(&self) -> &[SocketAddr] {
        &self.peer_addrs
    }

    /// The first client URL, `http://ip:port`.
    pub fn client_url(&self) -> String {
        format!("http://{}", self.client_addr())
    }

    /// Live numbers about the Raft node (term, leader, commit, applied, log bounds).
    pub fn node_status(&self) -> &crate::raft::node::NodeStatus {
        self.node.status()
    }

    /// This member's fault plan (`raft/faults.rs`): for tests that partition members, lose,
    /// duplicate or delay their messages, or switch on the stale-read bug.
    pub fn faults(&self) -> &Arc<Faults> {
        &self.faults
    }

    /// How many watchers are open, and how many of them are catching up from history.
    pub fn watchers(&self) -> (usize, usize) {
        self.hub.counts()
    }

    /// How many times a watcher fell behind its stream (moved to the unsynced group), ever.
    pub fn watchers_fell_behind(&self) -> u64 {
        self.hub.fell_behind()
    }

    /// Waits until the node loop stops by itself (a fatal storage error); returns its error.
    pub async fn stopped(&mut self) -> Result<()> {
        let thread = self.node_thread.take().expect("stopped() is called once");
        join_node(thread).await
    }

    /// Stops serving, then stops the node loop (which flushes everything).
    pub async fn shutdown(mut self) -> Result<()> {
        // Also ends the watch and keepalive streams (their readers watch the same signal), without
        // which the listeners would wait for clients to hang up.
        let _ = self.stop_tx.send(true);
        for listener in self.listeners.drain(..) {
            let _ = listener.await;
        }
        if let Some(keeper) = self.keeper.take() {
            let _ = keeper.await;
        }
        self.node.shutdown();
        let result = match self.node_thread.take() {
            Some(thread) => join_node(thread).await,
            None => Ok(()),
        };
        // Only now: until the loop stopped, the other members had to hear from it (a leader
        // that could still send but no longer hear would delay their election).
        let _ = self.peer_stop_tx.send(true);
        for listener in self.peer_listeners.drain(..) {
            let _ = listener.await;
        }
        // Quick: the node loop is gone, so the dispatcher's channel is closed.
        self.watch_threads.stop();
        result
    }
}

/// Waits (off the async workers) for the node loop's thread; its result, or an error if it panicked.
async fn join_node(thread: JoinHandle<Result<()>>) -> Result<()> {
    tokio::task::spawn_blocking(move || thread.join())
        .await
        .map_err(|e| Error::Raft(e.to_string()))?
        .unwrap_or_else(|_| Err(Error::Raft("the raft thread panicked".into())))
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop_tx.send(true);
        let _ = self.peer_stop_tx.send(true);
        self.node.shutdown();
    }
}

/// How long a start waits for a data dir whose lock is being released.
const LOCK_PATIENCE: Duration = Duration::from_secs(3);

/// [`open_db`], waiting a little while the lock is held: sled releases it from its background
/// flusher after the last handle is dropped, so a member restarted in the same process (tests,
/// embedders) may find it still held for a moment. Another process holding it is still refused,
/// just [`LOCK_PATIENCE`] later.
async fn open_db_patiently(config: &ServerConfig) -> Result<sled::Db> {
    let deadline = tokio::time::Instant::now() + LOCK_PATIENCE;
    loop {
        match open_db(config) {
            Err(Error::DataDirLocked(_)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

fn open_db(config: &ServerConfig) -> Result<sled::Db> {
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        Error::Config(format!(
            "cannot create data dir {}: {e}",
            config.data_dir.display()
        ))
    })?;
    sled::Config::new()
        .path(config.data_dir.join("db"))
        .cache_capacity(CACHE_BYTES)
        .open()
        .map_err(|e| match e {
            sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
                Error::DataDirLocked(config.data_dir.clone())
            }
            other => other.into(),
        })
}

/// The member and cluster ids: derived from the configuration at first start and kept from then
/// on (so changing a URL flag later does not change who this member is).
/// The members `--initial-cluster` names (or this member alone, whatever URLs it was restarted
/// with: its id was kept from its first start).
fn flag_peers(config: &ServerConfig, member_id: u64) -> Vec<Peer> {
    let peers = config.peers();
    if peers.len() > 1 {
        peers
            .into_iter()
            .map(|(id, peer_urls)| Peer {
                id,
                peer_urls,
                is_learner: false,
            })
            .collect()
    } else {
        vec![Peer {
            id: member_id,
            peer_urls: config.advertise_peer_urls.clone(),
            is_learner: false,
        }]
    }
}

/// This member's id and its cluster's: kept from the first start; then derived from the flags
/// (a new cluster) or learned from the cluster it joins.
fn identity(
    local: &sled::Tree,
    config: &ServerConfig,
    joined: Option<&join::Joined>,
) -> Result<(u64, u64)> {
    if let Some(bytes) = local.get(KEY_IDENTITY)? {
        if bytes.len() != 16 {
            return Err(Error::Corrupt("bad identity record".into()));
        }
        let member = u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"));
        let cluster = u64::from_be_bytes(bytes[8..].try_into().expect("8 bytes"));
        if let Some(joined) = joined
            && joined.member_id != member
        {
            // Removed and added again while it was down, before its first snapshot: its old id
            // is gone from the cluster.
            return Err(Error::Config(format!(
                "this data dir belongs to member {member:x}, but the cluster now knows these peer \
                 URLs as member {:x}; start it with an empty data dir",
                joined.member_id
            )));
        }
        return Ok((member, cluster));
    }
    let (member, cluster) = match joined {
        Some(joined) => (joined.member_id, joined.cluster_id),
        None => (config.member_id(), config.cluster_id()),
    };
    let mut record = member.to_be_bytes().to_vec();
    record.extend_from_slice(&cluster.to_be_bytes());
    local.insert(KEY_IDENTITY, record)?;
    Ok((member, cluster))
}

/// Moves an identity record from the `state` tree (data dirs of earlier versions) to `local`.
fn move_identity(state: &sled::Tree, local: &sled::Tree) -> Result<()> {
    if let Some(record) = state.get(KEY_IDENTITY)? {
        if !local.contains_key(KEY_IDENTITY)? {
            local.insert(KEY_IDENTITY, record)?;
        }
        state.remove(KEY_IDENTITY)?;
    }
    Ok(())
}

/// Proposes this member's attributes until they are applied, retrying while there is no leader
/// (see `members`).
async fn publish(node: NodeHandle, attributes: Attributes, mut stop: watch::Receiver<bool>) {
    loop {
        let proposed = node.propose(Command::PublishMember(attributes.clone()));
        let failed = tokio::select! {
            result = proposed => match result {
                Ok(_) => return,
                Err(e) => e,
            },
            _ = stop.wait_for(|s| *s) => return,
        };
        tracing::debug!(error = %failed, "publishing this member's attributes; retrying");
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Serves the other members on `listener`: the peer service (Raft messages), and the Lease
/// service for the lease requests followers forward to the leader (`service/forward.rs`).
async fn serve_peers(
    listener: tokio::net::TcpListener,
    service: PeerService,
    core: Arc<Core>,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    let incoming = TcpListenerStream::new(listener).map(|conn| {
        if let Ok(stream) = &conn {
            let _ = stream.set_nodelay(true);
        }
        conn
    });
    tonic::transport::Server::builder()
        .add_service(PeerServer::new(service).max_decoding_message_size(PEER_MESSAGE_BYTES))
        .add_service(LeaseServer::new(LeaseService::new(core.clone())))
        .add_service(ClusterServer::new(ClusterService::new(core)))
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        })
        .await
        .map_err(|e| Error::Network(e.to_string()))
}

async fn serve(
    listener: tokio::net::TcpListener,
    core: Arc<Core>,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    let max_decode = core.max_request_bytes + GRPC_OVERHEAD_BYTES;
    let kv = KvServer::new(KvService::new(core.clone()))
        .max_decoding_message_size(max_decode)
        .max_encoding_message_size(usize::MAX);
    let maintenance = MaintenanceServer::new(MaintenanceService::new(core.clone()))
        .max_decoding_message_size(max_decode)
        .max_encoding_message_size(usize::MAX);
    let watch = WatchServer::new(WatchService::new(core.clone()))
        .max_decoding_message_size(max_decode)
        .max_encoding_message_size(usize::MAX);
    let lock = LockServer::new(LockService::new(core.clone()))
        .max_decoding_message_size(max_decode)
        .max_encoding_message_size(usize::MAX);
    let election = ElectionServer::new(ElectionService::new(core.clone()))
        .max_decoding_message_size(max_decode)
        .max_encoding_message_size(usize::MAX);
    let cluster = ClusterServer::new(ClusterService::new(core.clone()))
        .max_decoding_message_size(max_decode)
        .max_encoding_message_size(usize::MAX);
    let lease = LeaseServer::new(LeaseService::new(core))
        .max_decoding_message_size(max_decode)
        .max_encoding_message_size(usize::MAX);
    // Small request/response pairs: never let Nagle's algorithm hold a reply back.
    let incoming = TcpListenerStream::new(listener).map(|conn| {
        if let Ok(stream) = &conn {
            let _ = stream.set_nodelay(true);
        }
        conn
    });
    let limits: crate::service::limits::GrpcGoLimits<tonic::body::Body> =
        tower::util::MapResponseLayer::new(crate::service::limits::grpc_go_limits);
    tonic::transport::Server::builder()
        .layer(limits)
        .add_service(kv)
        .add_service(maintenance)
        .add_service(watch)
        .add_service(lease)
        .add_service(lock)
        .add_service(election)
        .add_service(cluster)
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        })
        .await
        .map_err(|e| Error::Network(e.to_string()))
}
