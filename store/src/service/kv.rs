//! The etcd `KV` service: Range, Put, DeleteRange, Txn, Compact.
//!
//! Writes are proposed through Raft and answered once applied. A linearizable read (the default)
//! first waits for a read index; a serializable one reads local state at once. A transaction with
//! no writes is a read and follows the same rule, like etcd.

use std::sync::Arc;

use concord_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse, kv_server::Kv,
};
use prost::Message;
use tonic::{Request, Response, Status};

use super::Core;
use crate::error::{Error, Result};
use crate::mvcc::txn;
use crate::raft::proposal::{Command, Response as Applied};

/// The KV service adapter.
pub struct KvService {
    core: Arc<Core>,
}

impl KvService {
    pub fn new(core: Arc<Core>) -> Self {
        KvService { core }
    }

    /// Proposes a command after the size check (etcd measures the request it would replicate).
    async fn propose(&self, command: Command, size: usize) -> Result<Applied> {
        if size > self.core.max_request_bytes {
            return Err(Error::RequestTooLarge);
        }
        self.core.node.propose(command).await
    }

    async fn range_inner(&self, r: RangeRequest) -> Result<RangeResponse> {
        txn::check_range(&r)?;
        if !r.serializable {
            self.core.node.read_index().await?;
        }
        let mut resp = txn::range(&self.core.kv.read(), &r)?;
        resp.header = self.core.header(resp.header);
        Ok(resp)
    }

    async fn put_inner(&self, r: PutRequest) -> Result<PutResponse> {
        txn::check_put(&r)?;
        let size = r.encoded_len();
        match self.propose(Command::Put(r), size).await? {
            Applied::Put(mut resp) => {
                resp.header = self.core.header(resp.header);
                Ok(resp)
            }
            other => Err(mismatch("put", &other)),
        }
    }

    async fn delete_inner(&self, r: DeleteRangeRequest) -> Result<DeleteRangeResponse> {
        txn::check_delete(&r)?;
        let size = r.encoded_len();
        match self.propose(Command::DeleteRange(r), size).await? {
            Applied::DeleteRange(mut resp) => {
                resp.header = self.core.header(resp.header);
                Ok(resp)
            }
            other => Err(mismatch("delete", &other)),
        }
    }

    async fn txn_inner(&self, r: TxnRequest) -> Result<TxnResponse> {
        txn::check_txn(&r, self.core.max_txn_ops)?;
        let mut resp = if txn::is_read_only(&r) {
            if !txn::is_serializable(&r) {
                self.core.node.read_index().await?;
            }
            txn::txn_read(&self.core.kv.read(), &r)?
        } else {
            let size = r.encoded_len();
            match self.propose(Command::Txn(r), size).await? {
                Applied::Txn(resp) => resp,
                other => return Err(mismatch("txn", &other)),
            }
        };
        resp.header = self.core.header(resp.header);
        Ok(resp)
    }

    async fn compact_inner(&self, r: CompactionRequest) -> Result<CompactionResponse> {
        let size = r.encoded_len();
        match self.propose(Command::Compact(r), size).await? {
            Applied::Compact(mut resp) => {
                resp.header = self.core.header(resp.header);
                Ok(resp)
            }
            other => Err(mismatch("compact", &other)),
        }
    }
}

/// The loop answered a proposal with another kind of response: ids were mixed up, a bug.
fn mismatch(expected: &str, got: &Applied) -> Error {
    Error::Raft(format!("a {expected} proposal was answered with {got:?}"))
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(
        &self,
        request: Request<RangeRequest>,
    ) -> Result<Response<RangeResponse>, Status> {
        Ok(Response::new(self.range_inner(request.into_inner()).await?))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        Ok(Response::new(self.put_inner(request.into_inner()).await?))
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        Ok(Response::new(
            self.delete_inner(request.into_inner()).await?,
        ))
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        Ok(Response::new(self.txn_inner(request.into_inner()).await?))
    }

    async fn compact(
        &self,
        request: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        Ok(Response::new(
            self.compact_inner(request.into_inner()).await?,
        ))
    }
}
