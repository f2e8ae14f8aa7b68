//! How a member with an empty data dir finds its place: a new cluster's bootstrap, joining an
//! existing cluster, and refusing a member that was already bootstrapped once.
//!
//! **Bootstrap** (`--initial-cluster-state new`). Every initial member writes the same first state:
//! the conf state (every initial member a voter), the peer table and the applied index 1, as if
//! it had installed a snapshot at index 1 of term 1 ([`bootstrap`]). The log then starts at 2, so
//! a member added later, whose log is empty, can never be sent entry 1 and always starts from a
//! snapshot carrying the whole membership — the way raft-rs's own examples bootstrap. (Replaying
//! the log from entry 1 would apply membership changes on top of an empty configuration.)
//!
//! **Joining** (`--initial-cluster-state existing`, after `etcdctl member add`). The new member
//! asks the other members named in `--initial-cluster` for their member list, on their peer URLs
//! (every member serves the Cluster service there too), and finds itself by its peer URLs: that
//! gives it the id the cluster assigned it and the cluster id ([`discover`]). It then waits,
//! with an empty log and no vote, for the leader's snapshot. etcd joins the same way.
//!
//! **A wiped data dir** (the member ran before and lost its data). Starting it again would let it
//! vote again in terms it already voted in, and lose what it acknowledged. Like etcd, a member
//! with a new data dir asks the others whether it has published its attributes before; if any
//! says so, it refuses to start ([`refuse_if_bootstrapped`]). Unlike etcd, this holds for a
//! member started with `existing` too: the member list it found itself in says whether it
//! published before ([`Joined::published`]). Members that cannot be
//! reached are skipped: at a cluster's first start, none may be up yet.

use std::time::Duration;

use concord_proto::etcdserverpb::cluster_client::ClusterClient;
use concord_proto::etcdserverpb::{Member, MemberListRequest};
use protobuf::Message as _;
use raft::eraftpb::ConfState;

use crate::config::ServerConfig;
use crate::error::{Error, Result};
use crate::members::{self, Peer};
use crate::mvcc::store::META_APPLIED;
use crate::raft::storage::{KEY_CONF_STATE, KEY_INSTALLED, encode_index_term};

/// How long a member waits for another's member list.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// How many times a joining member asks around before it gives up (a member that has not
/// applied the MemberAdd yet, or an election, may be in the way), one second apart.
const JOIN_ROUNDS: usize = 5;

/// Where a joining member stands in the cluster it joins.
#[derive(Debug, Clone)]
pub struct Joined {
    pub member_id: u64,
    pub cluster_id: u64,
    /// The cluster's members (this one included), until the snapshot brings the peer table.
    pub peers: Vec<Peer>,
    /// Whether this member has published its client URLs before: it ran already (see
    /// [`already_bootstrapped`]).
    pub published: bool,
}

/// Writes a new cluster's first state to `state` in one batch (see the module doc).
pub fn bootstrap(state: &sled::Tree, peers: &[Peer]) -> Result<()> {
    let mut voters: Vec<u64> = peers.iter().map(|p| p.id).collect();
    voters.sort_unstable();
    let conf_state = ConfState {
        voters,
        ..Default::default()
    };
    let mut batch = sled::Batch::default();
    batch.insert(KEY_CONF_STATE, conf_state.write_to_bytes()?);
    batch.insert(KEY_INSTALLED, encode_index_term(1, 1));
    batch.insert(META_APPLIED, &1i64.to_be_bytes());
    for (key, value) in members::bootstrap_records(peers) {
        batch.insert(key, value);
    }
    state.apply_batch(batch)?;
    Ok(())
}

/// The member lists of the other members of `--initial-cluster`, as each answers (or why not),
/// with the cluster id of its header. `linearizable` asks for lists as of the leader's commit
/// index first (see [`member_list`]).
async fn ask_others(
    config: &ServerConfig,
    linearizable: bool,
) -> Vec<Result<(u64, Vec<Member>), String>> {
    let mine = &config.advertise_peer_urls;
    let mut answers = Vec::new();
    for (name, urls) in &config.initial_cluster {
        if urls == mine {
            continue;
        }
        for url in urls {
            let answer = member_list(url.clone(), linearizable);
            let answer = match tokio::time::timeout(ASK_TIMEOUT, answer).await {
                Ok(result) => result,
                Err(_) => Err("timed out".into()),
            };
            answers.push(answer.map_err(|e| format!("{name} at {url}: {e}")));
        }
    }
    answers
}

/// The member list of the member at `url`, and its cluster id.
async fn member_list(url: String, linearizable: bool) -> Result<(u64, Vec<Member>), String> {
    let mut client = ClusterClient::connect(url)
        .await
        .map_err(|e| e.to_string())?;
    // Linearizable first: a member that has not applied the latest MemberAdd yet waits until it
    // has. Without a leader (a lone member that added a second voter waits for it) the member's
    // own list is what there is.
    let status = |s: tonic::Status| format!("{}: {}", s.code(), s.message());
    let resp = if linearizable {
        let first = client.member_list(MemberListRequest { linearizable });
        match tokio::time::timeout(ASK_TIMEOUT / 2, first).await {
            Ok(Ok(resp)) => resp,
            _ => client
                .member_list(MemberListRequest::default())
                .await
                .map_err(status)?,
        }
    } else {
        client
            .member_list(MemberListRequest::default())
            .await
            .map_err(status)?
    }
    .into_inner();
    Ok((resp.header.map_or(0, |h| h.cluster_id), resp.members))
}

/// Whether `member` has published its client URLs: it has started before.
fn has_published(member: &Member) -> bool {
    !member.client_ur_ls.is_empty()
}

/// Finds this member's id and its cluster's by asking the others (see the module doc).
pub async fn discover(config: &ServerConfig) -> Result<Joined> {
    let mut mine = config.advertise_peer_urls.clone();
    mine.sort();
    let mut failures = Vec::new();
    let mut answered = false;
    for round in 0..JOIN_ROUNDS {
        if round > 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        failures.clear();
        for answer in ask_others(config, true).await {
            let (cluster_id, members) = match answer {
                Ok(answer) => answer,
                Err(e) => {
                    failures.push(e);
                    continue;
                }
            };
            answered = true;
            let me = members.iter().find(|m| {
                let mut urls = m.peer_ur_ls.clone();
                urls.sort();
                urls == mine
            });
            if let Some(me) = me {
                return Ok(Joined {
                    member_id: me.id,
                    cluster_id,
                    published: has_published(me),
                    peers: members
                        .into_iter()
                        .map(|m| Peer {
                            id: m.id,
                            peer_urls: m.peer_ur_ls,
                            is_learner: m.is_learner,
                        })
                        .collect(),
                });
            }
        }
    }
    if answered {
        return Err(Error::Config(format!(
            "this member's peer URLs {mine:?} are not in the cluster's member list; add the member \
             first (etcdctl member add {} --peer-urls={})",
            config.name,
            mine.join(",")
        )));
    }
    Err(Error::Network(format!(
        "--initial-cluster-state existing: no other member of --initial-cluster answered: {}",
        failures.join("; ")
    )))
}

/// Refuses to bootstrap member `member_id` if the others know it as started before (see the
/// module doc). Members that do not answer are skipped.
pub async fn refuse_if_bootstrapped(config: &ServerConfig, member_id: u64) -> Result<()> {
    let known = ask_others(config, false)
        .await
        .into_iter()
        .flatten()
        .any(|(_, members)| {
            members
                .iter()
                .any(|m| m.id == member_id && has_published(m))
        });
    if known {
        return Err(already_bootstrapped(config, member_id));
    }
    Ok(())
}

/// etcd's refusal of a member that ran before with a data dir that is now new.
pub fn already_bootstrapped(config: &ServerConfig, member_id: u64) -> Error {
    Error::Config(format!(
        "member {} ({member_id:x}) has already been bootstrapped: its data dir {} is new, but the \
         cluster knows it as started before. Remove it (etcdctl member remove {member_id:x}), add \
         it again (etcdctl member add) and start it with --initial-cluster-state existing",
        config.name,
        config.data_dir.display()
    ))
}
