//! The etcd `Maintenance` service: Status, Hash, HashKV, Alarm, Defragment.
//!
//! - Status reports an etcd 3.5-style `version` (clients such as Kubernetes gate features on it;
//!   Concord's own version is in `concord --version` and the logs), the database size on disk, the
//!   leader, and the Raft commit index, term and applied index.
//! - Hash is a CRC-32 over the whole state tree; HashKV a CRC-32 over the MVCC history up to a
//!   revision. Both depend only on applied entries, so replicas can be compared.
//! - Alarm: Concord raises no alarms (it has no space quota yet), so GET and DEACTIVATE answer an
//!   empty list; ACTIVATE is refused rather than silently ignored.
//! - Defragment: sled reclaims space by itself; the call flushes and answers.
//!
//! - MoveLeader: the leader hands leadership to another voter (raft-rs's leader transfer) and
//!   answers once the target leads; etcd's errors for a non-leader, a non-member target and a
//!   transfer that takes too long.
//!
//! Snapshot and Downgrade answer `Unimplemented` (later).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use concord_proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse, HashKvRequest,
    HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest, MoveLeaderResponse,
    StatusRequest, StatusResponse, alarm_request::AlarmAction, maintenance_server::Maintenance,
};
use tonic::{Request, Response, Status};

use super::Core;
use crate::config::ETCD_API_VERSION;
use crate::error::{Error, Result};
use crate::mvcc::KvStore;

/// The Maintenance service adapter.
pub struct MaintenanceService {
    core: Arc<Core>,
}

impl MaintenanceService {
    pub fn new(core: Arc<Core>) -> Self {
        MaintenanceService { core }
    }

    /// Runs a scan of the store on the blocking pool: it reads all of sled.
    async fn blocking<T: Send + 'static>(
        &self,
        scan: impl FnOnce(&KvStore) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let kv = self.core.kv.clone();
        tokio::task::spawn_blocking(move || scan(&kv))
            .await
            .map_err(|e| Error::Storage(format!("hash task failed: {e}")))?
    }

    fn db_size(&self) -> Result<i64> {
        Ok(self.core.db.size_on_disk()? as i64)
    }
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(
        &self,
        request: Request<AlarmRequest>,
    ) -> Result<Response<AlarmResponse>, Status> {
        let action = AlarmAction::try_from(request.get_ref().action).unwrap_or(AlarmAction::Get);
        if action == AlarmAction::Activate {
            return Err(Status::invalid_argument(
                "concord: alarms are raised by the server only, and it raises none in this version",
            ));
        }
        Ok(Response::new(AlarmResponse {
            header: self.core.header(None),
            alarms: Vec::new(),
        }))
    }

    async fn move_leader(
        &self,
        request: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        let target = request.into_inner().target_id;
        self.core.node.move_leader(target).await?;
        Ok(Response::new(MoveLeaderResponse {
            header: self.core.header(None),
        }))
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let s = self.core.node.status();
        let db_size = self.db_size()?;
        Ok(Response::new(StatusResponse {
            header: self.core.header(None),
            version: ETCD_API_VERSION.to_string(),
            db_size,
            leader: s.leader.load(Ordering::Relaxed),
            raft_index: s.commit.load(Ordering::Relaxed),
            raft_term: s.term.load(Ordering::Relaxed),
            raft_applied_index: s.applied.load(Ordering::Relaxed),
            errors: Vec::new(),
            db_size_in_use: db_size,
            is_learner: s.is_learner.load(Ordering::Relaxed),
            ..Default::default()
        }))
    }

    async fn defragment(
        &self,
        _request: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        // A blocking flush on the blocking pool: sled's flush_async deadlocks with many awaiters.
        let db = self.core.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(Error::from)?;
        Ok(Response::new(DefragmentResponse {
            header: self.core.header(None),
        }))
    }

    async fn hash(&self, _request: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        Ok(Response::new(HashResponse {
            header: self.core.header(None),
            hash: self.blocking(|kv| kv.hash()).await?,
        }))
    }

    async fn hash_kv(
        &self,
        request: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        let revision = request.get_ref().revision;
        let (hash, compact_revision, hash_revision) =
            self.blocking(move |kv| kv.hash_kv(revision)).await?;
        Ok(Response::new(HashKvResponse {
            header: self.core.header(None),
            hash,
            compact_revision,
            hash_revision,
        }))
    }
}
