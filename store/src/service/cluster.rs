//! The etcd `Cluster` service: MemberList, MemberAdd, MemberRemove, MemberUpdate, MemberPromote.
//!
//! MemberList answers from `members` (the replicated peer table, names and client URLs as each
//! member published them). With `linearizable` it first waits for a read index, as etcd does.
//!
//! Membership changes are made by the leader (`raft/node.rs`: checked as etcd checks them, then
//! one Raft conf change), and answered once applied there, with the members after the change. A
//! member that does not lead passes MemberAdd, MemberRemove and MemberPromote to the leader
//! (`forward.rs`) and returns its answer unchanged. A leader asked to remove itself first hands
//! leadership to another voter (MoveLeader), then passes the removal to it. MemberUpdate (new peer URLs) is an ordinary
//! replicated command, made on any member. A new member's id is drawn at random, as etcd's are
//! unpredictable (it hashes the URLs with the time).
//!
//! Peer URLs must be `http://host:port` or `https://host:port` (etcd's "given member URLs are
//! invalid" otherwise).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use concord_proto::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse, cluster_server::Cluster,
};
use tonic::{Request, Response, Status};

use super::Core;
use super::forward::{forwarded, is_forwarded};
use crate::error::{Error, Result};
use crate::members::Peer;
use crate::raft::node::MemberChange;
use crate::raft::proposal::Command;

/// The Cluster service adapter.
pub struct ClusterService {
    core: Arc<Core>,
}

impl ClusterService {
    pub fn new(core: Arc<Core>) -> Self {
        ClusterService { core }
    }

    async fn member_list(&self, r: MemberListRequest) -> Result<MemberListResponse> {
        if r.linearizable {
            self.core.node.read_index().await?;
        }
        Ok(MemberListResponse {
            header: self.core.header(None),
            members: self.core.members.list(),
        })
    }

    /// The leader to pass a membership change to, or `None` if this member leads (or the request
    /// was forwarded to it already: then this member answers whatever it is).
    fn leader_elsewhere(&self, forwarded: bool) -> Result<Option<u64>> {
        let leader = self.core.node.status().leader.load(Ordering::Relaxed);
        if leader == 0 {
            return Err(Error::NoLeader);
        }
        Ok((leader != self.core.member_id && !forwarded).then_some(leader))
    }

    async fn member_add(&self, r: MemberAddRequest) -> Result<MemberAddResponse> {
        check_peer_urls(&r.peer_ur_ls)?;
        let id = loop {
            let id = fastrand::u64(1..);
            if !self.core.members.contains(id) {
                break id;
            }
        };
        let change = MemberChange::Add {
            id,
            peer_urls: r.peer_ur_ls.clone(),
            learner: r.is_learner,
        };
        self.change_here(change).await?;
        Ok(MemberAddResponse {
            header: self.core.header(None),
            member: Some(Member {
                id,
                peer_ur_ls: r.peer_ur_ls,
                is_learner: r.is_learner,
                ..Default::default()
            }),
            members: self.core.members.list(),
        })
    }

    async fn member_update(&self, r: MemberUpdateRequest) -> Result<MemberUpdateResponse> {
        check_peer_urls(&r.peer_ur_ls)?;
        let members = &self.core.members;
        if !members.contains(r.id) {
            return Err(Error::MemberNotFound);
        }
        if members.url_taken(&r.peer_ur_ls, r.id) {
            return Err(Error::PeerUrlExists);
        }
        let peer = Peer {
            id: r.id,
            peer_urls: r.peer_ur_ls,
            is_learner: false, // kept as it is when applied
        };
        self.core.node.propose(Command::UpdateMember(peer)).await?;
        Ok(MemberUpdateResponse {
            header: self.core.header(None),
            members: members.list(),
        })
    }

    /// Applies a removal or promotion here; the members after it.
    async fn change(&self, change: MemberChange) -> Result<Vec<Member>> {
        self.change_here(change).await?;
        Ok(self.core.members.list())
    }

    /// Passes this member's own removal to the member it just handed leadership to. The new
    /// leader takes no membership change until it has applied the first entry of its term, so
    /// "in progress" and "leader changed" are retried for up to an election timeout.
    async fn remove_on_successor(
        &self,
        r: MemberRemoveRequest,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        let deadline = tokio::time::Instant::now() + self.core.election_timeout;
        loop {
            let leader = self.core.node.status().leader.load(Ordering::Relaxed);
            let mut client = self.core.to_leader.cluster(leader)?;
            match client.member_remove(forwarded(r)).await {
                Err(s)
                    if s.code() == tonic::Code::Unavailable
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                answer => return answer,
            }
        }
    }

    /// Makes a membership change on this member, which led a moment ago: if it no longer does,
    /// etcd's "leader changed" (Unavailable) tells the client to retry.
    async fn change_here(&self, change: MemberChange) -> Result<()> {
        match self.core.node.change_membership(change).await {
            Err(Error::NotLeader) => Err(Error::LeaderChanged),
            result => result.map(|_| ()),
        }
    }
}

/// Refuses peer URLs etcd would refuse.
fn check_peer_urls(urls: &[String]) -> Result<()> {
    let valid = |url: &String| {
        let Ok(uri) = url.parse::<http::Uri>() else {
            return false;
        };
        matches!(uri.scheme_str(), Some("http" | "https"))
            && uri.authority().is_some_and(|a| a.port_u16().is_some())
            && matches!(uri.path(), "" | "/")
            && uri.query().is_none()
    };
    if urls.is_empty() || !urls.iter().all(valid) {
        return Err(Error::MemberBadUrls);
    }
    Ok(())
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        request: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        if let Some(leader) = self.leader_elsewhere(is_forwarded(&request))? {
            let mut client = self.core.to_leader.cluster(leader)?;
            return client.member_add(forwarded(request.into_inner())).await;
        }
        Ok(Response::new(self.member_add(request.into_inner()).await?))
    }

    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        if let Some(leader) = self.leader_elsewhere(is_forwarded(&request))? {
            let mut client = self.core.to_leader.cluster(leader)?;
            return client.member_remove(forwarded(request.into_inner())).await;
        }
        if request.get_ref().id == self.core.member_id {
            // A leader removing itself hands leadership to another voter first, which then makes
            // the change: raft-rs cannot lead through its own removal, and the others must learn
            // that the removal committed (with two members, the survivor could never elect
            // itself otherwise).
            self.core.node.hand_over().await?;
            return self.remove_on_successor(request.into_inner()).await;
        }
        let members = self
            .change(MemberChange::Remove(request.into_inner().id))
            .await?;
        Ok(Response::new(MemberRemoveResponse {
            header: self.core.header(None),
            members,
        }))
    }

    async fn member_update(
        &self,
        request: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        Ok(Response::new(
            self.member_update(request.into_inner()).await?,
        ))
    }

    async fn member_list(
        &self,
        request: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        Ok(Response::new(self.member_list(request.into_inner()).await?))
    }

    async fn member_promote(
        &self,
        request: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        if let Some(leader) = self.leader_elsewhere(is_forwarded(&request))? {
            let mut client = self.core.to_leader.cluster(leader)?;
            return client.member_promote(forwarded(request.into_inner())).await;
        }
        let members = self
            .change(MemberChange::Promote(request.into_inner().id))
            .await?;
        Ok(Response::new(MemberPromoteResponse {
            header: self.core.header(None),
            members,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_urls_are_checked_like_etcd() {
        let ok = |u: &str| check_peer_urls(&[u.to_string()]).is_ok();
        assert!(ok("http://127.0.0.1:2380"));
        assert!(ok("https://node-1.example:2380/"));
        assert!(!ok("127.0.0.1:2380"), "no scheme");
        assert!(!ok("http://127.0.0.1"), "no port");
        assert!(!ok("ftp://127.0.0.1:2380"));
        assert!(!ok("http://127.0.0.1:2380/path"));
        assert_eq!(check_peer_urls(&[]), Err(Error::MemberBadUrls));
    }
}
