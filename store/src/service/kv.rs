//! The etcd `KV` service: Range, Put, DeleteRange, Txn, Compact.
//!
//! Writes are proposed through Raft and answered once applied. A linearizable read (the default)
//! first waits for a read index; a serializable one reads local state at once. A transaction with
//! no writes is a read and follows the same rule, like etcd.

use std::sync::Arc;

use concord_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, ResponseHeader, TxnRequest, TxnResponse,
    kv_server::Kv,
};
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

    /// Proposes a command after the size check (like etcd, the size of what would be replicated)
    /// and takes its response apart with `pick`.
    async fn write<T>(
        &self,
        command: Command,
        pick: fn(Applied) -> Result<T, Box<Applied>>,
    ) -> Result<T> {
        if command.encoded_len() > self.core.max_request_bytes {
            return Err(Error::RequestTooLarge);
        }
        let applied = self.core.node.propose(command).await?;
        pick(applied)
            .map_err(|other| Error::Raft(format!("a proposal was answered with {other:?}")))
    }

    /// Completes the header of a response (ids, term; the revision the core set).
    fn finish<T: Header>(&self, mut resp: T) -> T {
        let header = resp.header_mut();
        *header = self.core.header(header.take());
        resp
    }

    pub(crate) async fn range_inner(&self, r: RangeRequest) -> Result<RangeResponse> {
        txn::check_range(&r)?;
        if !r.serializable {
            self.core.node.read_index().await?;
        }
        Ok(self.finish(txn::range(&self.core.kv.read(), &r)?))
    }

    async fn put_inner(&self, r: PutRequest) -> Result<PutResponse> {
        txn::check_put(&r)?;
        let resp = self
            .write(Command::Put(r), |a| match a {
                Applied::Put(resp) => Ok(resp),
                other => Err(Box::new(other)),
            })
            .await?;
        Ok(self.finish(resp))
    }

    pub(crate) async fn delete_inner(&self, r: DeleteRangeRequest) -> Result<DeleteRangeResponse> {
        txn::check_delete(&r)?;
        let resp = self
            .write(Command::DeleteRange(r), |a| match a {
                Applied::DeleteRange(resp) => Ok(resp),
                other => Err(Box::new(other)),
            })
            .await?;
        Ok(self.finish(resp))
    }

    pub(crate) async fn txn_inner(&self, r: TxnRequest) -> Result<TxnResponse> {
        txn::check_txn(&r, self.core.max_txn_ops)?;
        let resp = if txn::is_read_only(&r) {
            if !txn::is_serializable(&r) {
                self.core.node.read_index().await?;
            }
            txn::txn_read(&mut self.core.kv.read(), &r)?
        } else {
            self.write(Command::Txn(r), |a| match a {
                Applied::Txn(resp) => Ok(resp),
                other => Err(Box::new(other)),
            })
            .await?
        };
        Ok(self.finish(resp))
    }

    async fn compact_inner(&self, r: CompactionRequest) -> Result<CompactionResponse> {
        let resp = self
            .write(Command::Compact(r), |a| match a {
                Applied::Compact(resp) => Ok(resp),
                other => Err(Box::new(other)),
            })
            .await?;
        Ok(self.finish(resp))
    }
}

/// A response whose header the adapter completes.
trait Header {
    fn header_mut(&mut self) -> &mut Option<ResponseHeader>;
}

macro_rules! impl_header {
    ($($response:ty),*) => {
        $(impl Header for $response {
            fn header_mut(&mut self) -> &mut Option<ResponseHeader> {
                &mut self.header
            }
        })*
    };
}

impl_header!(
    RangeResponse,
    PutResponse,
    DeleteRangeResponse,
    TxnResponse,
    CompactionResponse
);

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
