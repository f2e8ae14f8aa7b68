//! The etcd `v3lockpb.Lock` service: Lock and Unlock, on the key layout of etcd's Go Mutex.
//!
//! Lock(name, lease) creates the key `name/<lease in hex>` attached to the lease and waits until
//! every key under `name/` created before it is gone (see `local` for the queue discipline); the
//! answer carries the key, which is the caller's proof of ownership and what Unlock deletes. The
//! layout is the one `etcdctl lock`, Go's `concurrency.Mutex` and the `concord-recipes` Mutex use,
//! so all of them exclude each other on the same name. The key's create revision increases with
//! every new holder: it is the fencing token.
//!
//! **A Lock without a lease** (lease 0) is where Concord departs from etcd on purpose. etcd grants
//! a 60 s lease for it and keeps nobody keeping it alive, so the lock silently expires a minute
//! later, possibly while its holder still believes it owns it. Concord attaches no lease: the key
//! is `name/<random hex>` and the lock is held until Unlock (or until an operator deletes the
//! key). A holder that crashes without unlocking therefore blocks the name until its key is
//! deleted; callers that want crash safety pass a lease they keep alive, as the recipes do.
//!
//! A Lock request that goes away while it waits (canceled, deadline exceeded, connection lost)
//! deletes its key, and a waiter whose own key vanishes (its lease expired) fails with "mutex:
//! session is expired" instead of ever answering.

use std::sync::Arc;

use concord_proto::v3lockpb::{
    LockRequest, LockResponse, UnlockRequest, UnlockResponse, lock_server::Lock,
};
use tonic::{Request, Response, Status};

use super::Core;
use super::local::{Cleanup, Local};
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
        let prefix = [r.name.as_slice(), b"/"].concat();
        let key = [prefix.as_slice(), owner_suffix(r.lease).as_bytes()].concat();
        let place = self.local.enqueue(&prefix, &key, b"", r.lease).await?;
        let header = if place.first {
            place.header
        } else {
            let cleanup = Cleanup::new(&self.local, &key, place.rev);
            let header = self.local.wait_turn(&prefix, &key, place.rev).await;
            match header {
                Ok(header) => {
                    cleanup.disarm();
                    header
                }
                // `cleanup` deletes the key (if it is still ours) as it drops.
                Err(e) => return Err(e),
            }
        };
        Ok(LockResponse {
            header: self.local.core().header(header),
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

/// The part of a contender's key after `name/`: its lease in hex, as etcd's Go concurrency
/// package writes it; without a lease, a random id in the same form (see the module doc).
pub fn owner_suffix(lease: i64) -> String {
    let id = if lease != 0 {
        lease
    } else {
        (uuid::Uuid::new_v4().as_u64_pair().0 >> 1) as i64
    };
    format!("{id:x}")
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
