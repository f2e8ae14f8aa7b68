//! The etcd `Lease` service: LeaseGrant, LeaseRevoke, LeaseKeepAlive, LeaseTimeToLive, LeaseLeases.
//!
//! Grants and revokes are Raft proposals; the proposer picks the id of a grant that asked for none
//! (a random positive one not in use), and raises the TTL to the minimum, so applying a grant is
//! deterministic. Keepalives and TimeToLive are answered by the leader's lessor from memory (see
//! `lease` for the expiry rule); a follower forwards them to the leader (`forward`).
//! LeaseKeepAlive is a bidirectional stream: one answer per request, in order; an unknown or
//! expired lease is answered with TTL 0, as etcd does.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use concord_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, lease_server::Lease,
};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status, Streaming};

use super::Core;
use super::forward::FORWARDED;
use crate::error::{Error, Result};
use crate::lease::LeaseId;
use crate::raft::proposal::{Command, LeaseCheckpoint, LeaseCheckpoints, Response as Applied};

/// Answers buffered per keepalive stream before the reader waits for the client to take them.
const KEEPALIVE_BUFFER: usize = 64;

/// The Lease service adapter.
pub struct LeaseService {
    core: Arc<Core>,
}

impl LeaseService {
    pub fn new(core: Arc<Core>) -> Self {
        LeaseService { core }
    }

    async fn grant(&self, r: LeaseGrantRequest) -> Result<LeaseGrantResponse> {
        let ttl = self.core.lessor.granted_ttl(r.ttl)?;
        let id = if r.id != 0 { r.id } else { self.fresh_id() };
        let command = Command::LeaseGrant(LeaseGrantRequest { ttl, id });
        match self.core.node.propose(command).await? {
            Applied::LeaseGrant(mut resp) => {
                resp.header = self.core.header(resp.header.take());
                Ok(resp)
            }
            other => Err(unexpected(other)),
        }
    }

    /// A random positive id no lease has (etcd also picks ids on the proposing member).
    fn fresh_id(&self) -> LeaseId {
        loop {
            let id = (uuid::Uuid::new_v4().as_u64_pair().0 >> 1) as i64;
            if id != 0 && !self.core.lessor.exists(id) {
                return id;
            }
        }
    }

    async fn revoke(&self, r: LeaseRevokeRequest) -> Result<LeaseRevokeResponse> {
        match self.core.node.propose(Command::LeaseRevoke(r)).await? {
            Applied::LeaseRevoke(mut resp) => {
                resp.header = self.core.header(resp.header.take());
                Ok(resp)
            }
            other => Err(unexpected(other)),
        }
    }

    async fn time_to_live(
        &self,
        r: LeaseTimeToLiveRequest,
        forwarded: bool,
    ) -> Result<LeaseTimeToLiveResponse> {
        if !self.core.lessor.is_primary() && !forwarded {
            // Only the leader knows deadlines (see `forward`).
            if let Some(leader) = self.core.leader_elsewhere() {
                let mut resp = self.core.to_leader.time_to_live(leader, r).await?;
                resp.header = self.core.header(None);
                return Ok(resp);
            }
        }
        Ok(self.time_to_live_here(r))
    }

    fn time_to_live_here(&self, r: LeaseTimeToLiveRequest) -> LeaseTimeToLiveResponse {
        let header = self.core.header(None);
        match self.core.lessor.time_to_live(r.id, r.keys) {
            Some(ttl) => LeaseTimeToLiveResponse {
                header,
                id: r.id,
                ttl: ttl.remaining,
                granted_ttl: ttl.granted,
                keys: ttl.keys,
            },
            // etcd answers an unknown lease with TTL -1 rather than an error.
            None => LeaseTimeToLiveResponse {
                header,
                id: r.id,
                ttl: -1,
                ..Default::default()
            },
        }
    }
}

/// Renews one lease for a keepalive stream: TTL 0 when it is unknown or expired.
async fn keep_alive(core: &Core, id: LeaseId, forwarded: bool) -> Result<LeaseKeepAliveResponse> {
    let ttl = match renew(core, id).await {
        Ok((ttl, checkpointed)) => {
            if checkpointed {
                // Forget the checkpoint before answering (see `lease`): a later leader must not
                // restart this lease from an older, shorter remaining TTL.
                let reset = LeaseCheckpoints {
                    checkpoints: vec![LeaseCheckpoint {
                        id,
                        remaining_ttl: 0,
                    }],
                };
                core.node.propose(Command::LeaseCheckpoint(reset)).await?;
            }
            ttl
        }
        Err(Error::LeaseNotFound) => 0,
        // A follower: the leader renews (see `forward`).
        Err(Error::NoLeader) if !forwarded => match core.leader_elsewhere() {
            Some(leader) => core.to_leader.keep_alive(leader, id).await?,
            None => return Err(Error::NoLeader),
        },
        Err(e) => return Err(e),
    };
    Ok(LeaseKeepAliveResponse {
        header: core.header(None),
        id,
        ttl,
    })
}

/// The lessor's renewal. A member that just became leader applies what was committed before it
/// promotes its lessor; like etcd, a keepalive waits for that (briefly) instead of failing.
async fn renew(core: &Core, id: LeaseId) -> Result<(i64, bool)> {
    let deadline = tokio::time::Instant::now() + core.election_timeout;
    loop {
        match core.lessor.renew(id) {
            Err(Error::NoLeader)
                if core.node.status().leader.load(Ordering::Relaxed) == core.member_id
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => return other,
        }
    }
}

fn unexpected(other: Applied) -> Error {
    Error::Raft(format!("a lease proposal was answered with {other:?}"))
}

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        Ok(Response::new(self.grant(request.into_inner()).await?))
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        Ok(Response::new(self.revoke(request.into_inner()).await?))
    }

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<BoxStream<LeaseKeepAliveResponse>>, Status> {
        let forwarded = request.metadata().contains_key(FORWARDED);
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(KEEPALIVE_BUFFER);
        let core = self.core.clone();
        tokio::spawn(async move {
            let mut stop = core.stop.clone();
            loop {
                let req = tokio::select! {
                    req = inbound.next() => req,
                    _ = stop.wait_for(|stopped| *stopped) => break,
                };
                let Some(Ok(req)) = req else { break };
                let answer = keep_alive(&core, req.id, forwarded)
                    .await
                    .map_err(Status::from);
                let failed = answer.is_err();
                let sent = tokio::select! {
                    sent = tx.send(answer) => sent.is_ok(),
                    _ = stop.wait_for(|stopped| *stopped) => false,
                };
                if !sent || failed {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let forwarded = request.metadata().contains_key(FORWARDED);
        let resp = self.time_to_live(request.into_inner(), forwarded).await?;
        Ok(Response::new(resp))
    }

    async fn lease_leases(
        &self,
        _request: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        let leases = self
            .core
            .lessor
            .leases()
            .into_iter()
            .map(|id| LeaseStatus { id })
            .collect();
        Ok(Response::new(LeaseLeasesResponse {
            header: self.core.header(None),
            leases,
        }))
    }
}
