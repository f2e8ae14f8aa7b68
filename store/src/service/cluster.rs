//! The etcd `Cluster` service: MemberList.
//!
//! MemberList answers from `members` (ids and peer URLs from the flags, names and client URLs as
//! each member published them). With `linearizable` it first waits for a read index, as etcd does.
//! Membership changes (MemberAdd, MemberRemove, MemberUpdate, MemberPromote) are not served by
//! this version: they answer gRPC Unimplemented.

use std::sync::Arc;

use concord_proto::etcdserverpb::{MemberListRequest, MemberListResponse, cluster_server::Cluster};
use tonic::{Request, Response, Status};

use super::Core;
use crate::error::Result;

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
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_list(
        &self,
        request: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        Ok(Response::new(self.member_list(request.into_inner()).await?))
    }
}
