//! The etcd `v3electionpb.Election` service: Campaign, Proclaim, Leader, Observe, Resign.
//!
//! An election is a lock whose holder publishes a value: candidates for `name` each own the key
//! `name/<lease in hex>` holding their proposal, ordered by create revision, and the first one is
//! the leader (etcd's Go `concurrency.Election`, so `etcdctl elect`, Go programs and the
//! `concord-recipes` Election all take part in the same elections). The [`LeaderKey`] a campaign
//! returns (name, key, create revision, lease) is the leader's credential: Proclaim and Resign act
//! only while that key still exists with that create revision, so a deposed leader cannot
//! overwrite its successor's value.
//!
//! - Campaign waits until the caller leads. Campaigning again with the same lease keeps its place
//!   and updates its value. A campaign without a lease is refused, like a Lock without one (see
//!   `lock` for why); a campaign whose caller goes away removes its candidacy.
//! - Leader answers "election: no leader" when nobody leads; Observe sends the leader and each of
//!   its proclamations, then its successor, and sends nothing while there is no leader (as etcd).
//! - Proclaim by anyone but the leader fails with "election: not leader"; Resign by anyone else
//!   does nothing.
//!
//! [`LeaderKey`]: concord_proto::v3electionpb::LeaderKey

use std::sync::Arc;

use concord_proto::etcdserverpb::ResponseHeader;
use concord_proto::mvccpb::{KeyValue, event::EventType};
use concord_proto::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse, election_server::Election,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

use super::Core;
use super::local::{Local, Seen, owner_key, prefix_end, queue_prefix};
use crate::error::{Error, Result};

/// Leader changes buffered per Observe stream.
const OBSERVE_BUFFER: usize = 16;

/// The Election service adapter.
pub struct ElectionService {
    local: Local,
}

impl ElectionService {
    pub fn new(core: Arc<Core>) -> Self {
        ElectionService {
            local: Local::new(core),
        }
    }

    fn core(&self) -> &Arc<Core> {
        self.local.core()
    }

    async fn campaign(&self, r: CampaignRequest) -> Result<CampaignResponse> {
        let prefix = queue_prefix(&r.name);
        let key = owner_key(&prefix, r.lease);
        // Campaigning again with the same lease keeps its place and proclaims the new value.
        let won = self
            .local
            .contend(prefix, key.clone(), r.value, r.lease, true)
            .await?;
        Ok(CampaignResponse {
            header: self.core().header(won.header),
            leader: Some(LeaderKey {
                name: r.name,
                key,
                rev: won.rev,
                lease: r.lease,
            }),
        })
    }

    /// Sets the leader's value, if `leader` still is the leader's key.
    async fn proclaim_as(&self, leader: &LeaderKey, value: Vec<u8>) -> Result<ProclaimResponse> {
        let resp = self
            .local
            .put_if(&leader.key, leader.rev, value, leader.lease)
            .await?;
        if !resp.succeeded {
            return Err(Error::ElectionNotLeader);
        }
        Ok(ProclaimResponse {
            header: self.core().header(resp.header),
        })
    }

    async fn leader(&self, r: LeaderRequest) -> Result<LeaderResponse> {
        let prefix = queue_prefix(&r.name);
        let (kv, header) = self.local.first(&prefix).await?;
        let kv = kv.ok_or(Error::ElectionNoLeader)?;
        Ok(LeaderResponse {
            header: self.core().header(header),
            kv: Some(kv),
        })
    }

    async fn resign(&self, r: ResignRequest) -> Result<ResignResponse> {
        let leader = r.leader.ok_or(Error::MissingLeaderKey)?;
        let resp = self.local.delete_if(&leader.key, leader.rev).await?;
        Ok(ResignResponse {
            header: self.core().header(resp.header),
        })
    }
}

/// Sends the leaders of the election under `prefix` to `tx` until it closes or the server stops
/// (see the module doc).
async fn observe(
    local: Local,
    prefix: Vec<u8>,
    tx: mpsc::Sender<Result<LeaderResponse, Status>>,
) -> Result<()> {
    let send = |kv: KeyValue, revision: i64| {
        let header = Some(ResponseHeader {
            revision,
            ..Default::default()
        });
        let resp = LeaderResponse {
            header: local.core().header(header),
            kv: Some(kv),
        };
        let tx = tx.clone();
        async move { tx.send(Ok(resp)).await.is_ok() }
    };
    loop {
        let (first, header) = local.first(&prefix).await?;
        let at = header.map_or(0, |h| h.revision);
        let leader = match first {
            Some(kv) => Some((kv, at)),
            None => first_put(&local, &prefix, at).await?,
        };
        let Some((kv, at)) = leader else { continue };
        let key = kv.key.to_vec();
        if !send(kv, at).await {
            return Ok(());
        }
        // Follow the leader's key: each proclamation, until it goes.
        let mut watch = local.watch(&key, at + 1).await?;
        'leader: loop {
            let Seen::Events(events) = watch.next().await? else {
                break 'leader; // compacted: read the leader again
            };
            for event in events {
                if event.r#type == EventType::Delete as i32 {
                    break 'leader;
                }
                let Some(kv) = event.kv else { continue };
                let revision = kv.mod_revision;
                if !send(kv, revision).await {
                    return Ok(());
                }
            }
        }
    }
}

/// Waits for the first key put under `prefix` after revision `at` (there was no leader then).
/// `None`: the history was compacted meanwhile; read again.
async fn first_put(local: &Local, prefix: &[u8], at: i64) -> Result<Option<(KeyValue, i64)>> {
    let mut watch = local
        .watch_range(prefix, prefix_end(prefix), at + 1)
        .await?;
    loop {
        match watch.next().await? {
            Seen::Compacted => return Ok(None),
            Seen::Events(events) => {
                let put = events
                    .into_iter()
                    .filter(|e| e.r#type == EventType::Put as i32)
                    .find_map(|e| e.kv);
                if let Some(kv) = put {
                    let revision = kv.mod_revision;
                    return Ok(Some((kv, revision)));
                }
            }
        }
    }
}

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(
        &self,
        request: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        let resp = self.campaign(request.into_inner()).await;
        Ok(Response::new(resp.map_err(Error::concurrency_status)?))
    }

    async fn proclaim(
        &self,
        request: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        let r = request.into_inner();
        let resp = match r.leader {
            Some(leader) => self.proclaim_as(&leader, r.value).await,
            None => Err(Error::MissingLeaderKey),
        };
        Ok(Response::new(resp.map_err(Error::concurrency_status)?))
    }

    async fn leader(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<LeaderResponse>, Status> {
        let resp = self.leader(request.into_inner()).await;
        Ok(Response::new(resp.map_err(Error::concurrency_status)?))
    }

    async fn observe(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<BoxStream<LeaderResponse>>, Status> {
        let prefix = queue_prefix(&request.into_inner().name);
        let (tx, rx) = mpsc::channel(OBSERVE_BUFFER);
        let local = self.local.clone();
        let mut stop = self.core().stop.clone();
        tokio::spawn(async move {
            let out = tx.clone();
            let result = tokio::select! {
                result = observe(local, prefix, tx.clone()) => result,
                _ = out.closed() => Ok(()), // the client went away
                _ = stop.wait_for(|stopped| *stopped) => Ok(()),
            };
            match result {
                Ok(()) | Err(Error::Stopped) => {}
                Err(e) => {
                    let _ = out.send(Err(e.concurrency_status())).await;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn resign(
        &self,
        request: Request<ResignRequest>,
    ) -> Result<Response<ResignResponse>, Status> {
        let resp = self.resign(request.into_inner()).await;
        Ok(Response::new(resp.map_err(Error::concurrency_status)?))
    }
}
