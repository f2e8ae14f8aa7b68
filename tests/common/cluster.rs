//! An in-process Concord cluster for tests: `n` members in this process, talking over the real
//! peer transport on 127.0.0.1, each with its own data dir and fault plan (`Server::faults`).
//!
//! Helpers retry what an election may interrupt (puts and reads, up to [`ELECTION`]) and check
//! convergence the way operators do: every member at the same revision has the same HashKV.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use concord::store::config::ClusterState;
use concord::store::raft::faults::Plan;
use concord::store::{Server, ServerConfig};
use etcd_client::{Client, GetOptions};

/// How long an election may take (default timings in tests: 1 s election timeout).
pub const ELECTION: Duration = Duration::from_secs(10);

pub struct Member {
    pub config: ServerConfig,
    pub server: Option<Server>,
    _dir: tempfile::TempDir,
}

impl Member {
    pub fn server(&self) -> &Server {
        self.server.as_ref().expect("running")
    }

    pub fn endpoint(&self) -> String {
        self.server().client_addr().to_string()
    }

    /// The member id it serves under (a joined member's was assigned by the cluster).
    pub fn id(&self) -> u64 {
        self.server().member_id()
    }

    /// This member's id and the leader it knows (0: none).
    pub fn id_and_leader(&self) -> (u64, u64) {
        let leader = self.server().node_status().leader.load(Ordering::Relaxed);
        (self.id(), leader)
    }

    /// The Raft index this member applied.
    pub fn applied(&self) -> u64 {
        self.server().node_status().applied.load(Ordering::Relaxed)
    }
}

/// A port on 127.0.0.1 nothing listens on at the moment.
pub fn free_port() -> u16 {
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap().port()
}

/// Configurations of `n` members on free 127.0.0.1 ports, each knowing all the others.
fn configs(n: usize) -> Vec<(ServerConfig, tempfile::TempDir)> {
    let peers: Vec<(String, u16)> = (0..n).map(|i| (format!("m{i}"), free_port())).collect();
    let cluster: Vec<(String, Vec<String>)> = peers
        .iter()
        .map(|(name, port)| (name.clone(), vec![format!("http://127.0.0.1:{port}")]))
        .collect();
    peers
        .iter()
        .map(|(name, port)| {
            let dir = tempfile::tempdir().unwrap();
            let config = ServerConfig {
                name: name.clone(),
                listen_peer: vec![SocketAddr::from(([127, 0, 0, 1], *port))],
                advertise_peer_urls: vec![format!("http://127.0.0.1:{port}")],
                initial_cluster: cluster.clone(),
                ..ServerConfig::for_test(dir.path())
            };
            (config, dir)
        })
        .collect()
}

/// A configuration for one more member of `members`' cluster, named `name`, on a free port, that
/// joins it (`--initial-cluster-state existing`) once `etcdctl member add` made room for it.
pub fn joining_config(members: &[Member], name: &str) -> (ServerConfig, tempfile::TempDir) {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let mut cluster: Vec<(String, Vec<String>)> = members
        .iter()
        .map(|m| (m.config.name.clone(), m.config.advertise_peer_urls.clone()))
        .collect();
    cluster.push((name.to_string(), vec![url.clone()]));
    let config = ServerConfig {
        name: name.to_string(),
        listen_peer: vec![SocketAddr::from(([127, 0, 0, 1], port))],
        advertise_peer_urls: vec![url],
        initial_cluster: cluster,
        initial_cluster_state: ClusterState::Existing,
        ..ServerConfig::for_test(dir.path())
    };
    (config, dir)
}

/// Starts a member from `config` and its data dir.
pub async fn start_member(config: ServerConfig, dir: tempfile::TempDir) -> Member {
    let server = Server::start(config.clone()).await.unwrap();
    Member {
        config,
        server: Some(server),
        _dir: dir,
    }
}

/// Starts `n` members with default test settings.
pub async fn start(n: usize) -> Vec<Member> {
    start_with(n, |_| {}).await
}

/// Starts `n` members, each configuration changed by `tweak` first.
pub async fn start_with(n: usize, tweak: impl Fn(&mut ServerConfig)) -> Vec<Member> {
    let starts = configs(n).into_iter().map(|(mut config, dir)| {
        tweak(&mut config);
        async move {
            let server = Server::start(config.clone()).await.unwrap();
            Member {
                config,
                server: Some(server),
                _dir: dir,
            }
        }
    });
    futures::future::join_all(starts).await
}

/// Waits until every running member in `among` names the same leader, itself among them; its
/// index in `members`.
pub async fn leader_among(members: &[Member], among: &[usize]) -> usize {
    let deadline = Instant::now() + ELECTION;
    loop {
        let running: Vec<(usize, (u64, u64))> = among
            .iter()
            .filter(|i| members[**i].server.is_some())
            .map(|i| (*i, members[*i].id_and_leader()))
            .collect();
        let first = running[0].1.1;
        let agreed = first != 0 && running.iter().all(|(_, (_, l))| *l == first);
        if let Some((i, _)) = running.iter().find(|(_, (id, _))| agreed && *id == first) {
            return *i;
        }
        assert!(
            Instant::now() < deadline,
            "no agreed leader: {running:x?} (member id, leader id)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every running member names the same leader; its index.
pub async fn leader(members: &[Member]) -> usize {
    let all: Vec<usize> = (0..members.len()).collect();
    leader_among(members, &all).await
}

pub async fn client(member: &Member) -> Client {
    Client::connect([member.endpoint()], None).await.unwrap()
}

/// Puts, retrying while the cluster has no leader (an election is under way).
pub async fn put_retrying(member: &Member, key: &str, value: &str) -> i64 {
    let deadline = Instant::now() + ELECTION;
    let mut c = client(member).await;
    loop {
        match c.put(key, value, None).await {
            Ok(resp) => return resp.header().unwrap().revision(),
            Err(e) => {
                assert!(Instant::now() < deadline, "the put never succeeded: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Reads `key`, retrying while the cluster has no leader.
pub async fn get(member: &Member, key: &str, serializable: bool) -> Option<String> {
    let options = serializable.then(|| GetOptions::new().with_serializable());
    let deadline = Instant::now() + ELECTION;
    let mut c = client(member).await;
    loop {
        match c.get(key, options.clone()).await {
            Ok(resp) => {
                return resp
                    .kvs()
                    .first()
                    .map(|kv| kv.value_str().unwrap().to_string());
            }
            Err(e) => {
                assert!(Instant::now() < deadline, "the get never succeeded: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Stops a member (the client port is kept for its restart).
pub async fn stop(member: &mut Member) {
    let server = member.server.take().expect("running");
    member.config.listen_client = vec![server.client_addr()];
    server.shutdown().await.unwrap();
}

/// Starts a stopped member again on its data and its client port.
pub async fn start_again(member: &mut Member) {
    member.server = Some(Server::start(member.config.clone()).await.unwrap());
}

/// Stops every running member (one that was removed from the cluster has stopped already).
pub async fn shutdown(members: Vec<Member>) {
    for member in members {
        if let Some(server) = member.server {
            match server.shutdown().await {
                Ok(()) | Err(concord::store::Error::Removed) => {}
                Err(e) => panic!("{} did not stop cleanly: {e}", member.config.name),
            }
        }
    }
}

/// Cuts the members at `side` off from all the others, both ways.
pub fn partition(members: &[Member], side: &[usize]) {
    let ids = |pick: &dyn Fn(usize) -> bool| -> HashSet<u64> {
        (0..members.len())
            .filter(|i| pick(*i))
            .map(|i| members[i].id())
            .collect()
    };
    let inside = ids(&|i| side.contains(&i));
    let outside = ids(&|i| !side.contains(&i));
    for (i, member) in members.iter().enumerate() {
        if let Some(server) = &member.server {
            let cut = if side.contains(&i) {
                outside.clone()
            } else {
                inside.clone()
            };
            server.faults().update(|plan| plan.partitioned = cut);
        }
    }
}

/// Gives every running member the same fault plan.
pub fn set_faults(members: &[Member], plan: &Plan) {
    for member in members.iter().filter(|m| m.server.is_some()) {
        member.server().faults().set(plan.clone());
    }
}

/// Back to a healthy network everywhere.
pub fn heal(members: &[Member]) {
    for member in members.iter().filter(|m| m.server.is_some()) {
        member.server().faults().clear();
    }
}

/// Waits until every running member has applied revision `revision`, then returns their HashKV
/// at it, asserting that all are equal.
pub async fn assert_converged(members: &[Member], revision: i64) -> u32 {
    let mut hashes = Vec::new();
    for member in members.iter().filter(|m| m.server.is_some()) {
        let deadline = Instant::now() + ELECTION;
        let mut c = client(member).await;
        loop {
            let got = c
                .get("\0", Some(GetOptions::new().with_serializable()))
                .await
                .unwrap();
            if got.header().unwrap().revision() >= revision {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} never reached revision {revision}",
                member.config.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        hashes.push(c.hash_kv(revision).await.unwrap().hash());
    }
    assert!(
        hashes.windows(2).all(|w| w[0] == w[1]),
        "HashKV at {revision} differs between members: {hashes:?}"
    );
    hashes[0]
}
