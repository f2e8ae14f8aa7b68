//! The etcd `v3lockpb.Lock` service: Lock and Unlock, on the key layout of etcd's Go Mutex.
//!
//! Lock(name, lease) creates the key `name/<lease in hex>` attached to the lease and waits until
//! every key under `name/` created before it is gone (see `local` for the queue discipline); the
//! answer carries the key, which is the caller's proof of ownership and what Unlock deletes. The
//! layout is the one `etcdctl lock`, Go's `concurrency.Mutex` and the `concord-recipes` Mutex use,
//! so all of them exclude each other on the same name. The key's create revision increases with
//! every new holder: it is the fencing token. Locking again with the same lease returns the same
//! key at once (etcd's Mutex is re-entrant per lease).
//!
//! **A Lock without a lease** (lease 0) is refused with InvalidArgument — the one place where
//! Concord answers differently from etcd, on purpose. etcd grants a 60 s lease for such a Lock and
//! nobody keeps it alive, so the lock silently expires a minute later, possibly while its holder
//! still believes it owns it. Holding it forever instead would be no better: a holder that crashes
//! or never receives its answer would block the name until an operator deletes the key. A caller
//! that passes a lease it keeps alive (as the recipes and `etcdctl lock` do) gets neither problem.
//!
//! A Lock whose caller goes away (canceled, deadline exceeded, connection lost) removes the key it
//! created, even if it was being written at that moment, and a waiter whose own key vanishes (its
//! lease expired) fails with "mutex: session is expired" instead of ever answering.

use std::sync::Arc;

use concord_proto::v3lockpb::{
    LockRequest, LockResponse, UnlockRequest, UnlockResponse, lock_server::Lock,
};
use tonic::{Request, Response, Status};

use super::Core;
use super::local::{Local, owner_key, queue_prefix};
use crate::error::{Error, Result};

/// The Lock service adapter.
pub struct LockService {
    local: Local,
}

impl LockService {
    pub fn new(core: Arc<Core>) -> Self {
        LockService {
            local: Local::new(core),
        }
    }

    async fn lock(&self, r: LockRequest) -> Result<LockResponse> {
        let prefix = queue_prefix(&r.name);
        let key = owner_key(&prefix, r.lease);
        let won = self
            .local
            .contend(prefix, key.clone(), Vec::new(), r.lease, false)
            .await?;
        Ok(LockResponse {
            header: self.local.core().header(won.header),
            key,
        })
    }

    async fn unlock(&self, r: UnlockRequest) -> Result<UnlockResponse> {
        let resp = self.local.delete(&r.key).await?;
        Ok(UnlockResponse {
            header: self.local.core().header(resp.header),
        })
    }
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, request: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let resp = self.lock(request.into_inner()).await;
        Ok(Response::new(resp.map_err(Error::concurrency_status)?))
    }

    async fn unlock(
        &self,
        request: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        let resp = self.unlock(request.into_inner()).await;
        Ok(Response::new(resp.map_err(Error::concurrency_status)?))
    }
}
