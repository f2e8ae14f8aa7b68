//! Lease requests a follower cannot answer, forwarded to the leader.
//!
//! Only the leader keeps lease deadlines (`lease`), so a keepalive or a TimeToLive that reaches a
//! follower is answered by the leader, as etcd does: the follower calls the leader's `Lease`
//! service, which every member of a multi-member cluster also serves on its peer URLs, and answers
//! its own client with the leader's TTL under its own header. A forwarded request carries the
//! `concord-forwarded` metadata and is never forwarded again — a member that has stopped being the
//! leader answers "no leader" and the client retries — so two members with stale views of the
//! leadership cannot bounce a request between them.
//!
//! Connections to the leaders are made lazily, one per member, and reused.

use std::collections::HashMap;

use concord_proto::etcdserverpb::lease_client::LeaseClient;
use concord_proto::etcdserverpb::{
    LeaseKeepAliveRequest, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use parking_lot::Mutex;
use tonic::transport::{Channel, Endpoint};

use crate::error::{Error, Result};

/// The metadata key that marks a forwarded request.
pub const FORWARDED: &str = "concord-forwarded";

/// Clients of the other members' Lease services (see the module doc).
pub struct LeaderLeases {
    /// Member id → peer URLs.
    peers: HashMap<u64, Vec<String>>,
    clients: Mutex<HashMap<u64, LeaseClient<Channel>>>,
}

impl LeaderLeases {
    pub fn new(peers: HashMap<u64, Vec<String>>) -> LeaderLeases {
        LeaderLeases {
            peers,
            clients: Mutex::new(HashMap::new()),
        }
    }

    fn client(&self, leader: u64) -> Result<LeaseClient<Channel>> {
        if let Some(client) = self.clients.lock().get(&leader) {
            return Ok(client.clone());
        }
        let url = self
            .peers
            .get(&leader)
            .and_then(|urls| urls.first())
            .ok_or(Error::NoLeader)?;
        let endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| Error::Config(format!("peer URL {url}: {e}")))?;
        let client = LeaseClient::new(endpoint.connect_lazy());
        self.clients.lock().insert(leader, client.clone());
        Ok(client)
    }

    /// Renews lease `id` on `leader`; the TTL it answers (0: the lease is gone).
    pub async fn keep_alive(&self, leader: u64, id: i64) -> Result<i64> {
        let mut client = self.client(leader)?;
        let one = tokio_stream::iter([LeaseKeepAliveRequest { id }]);
        let mut answers = client
            .lease_keep_alive(forwarded(one))
            .await
            .map_err(from_leader)?
            .into_inner();
        match answers.message().await.map_err(from_leader)? {
            Some(answer) => Ok(answer.ttl),
            None => Err(Error::NoLeader),
        }
    }

    /// Asks `leader` for the remaining TTL of a lease.
    pub async fn time_to_live(
        &self,
        leader: u64,
        r: LeaseTimeToLiveRequest,
    ) -> Result<LeaseTimeToLiveResponse> {
        let mut client = self.client(leader)?;
        let answer = client
            .lease_time_to_live(forwarded(r))
            .await
            .map_err(from_leader)?;
        Ok(answer.into_inner())
    }
}

/// A request marked as forwarded.
fn forwarded<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
    request
}

/// What a failed forward means to the follower's client: the leader could not be reached or is no
/// longer the leader (retry: no leader), or the leader's own answer.
fn from_leader(status: tonic::Status) -> Error {
    match status.code() {
        tonic::Code::NotFound => Error::LeaseNotFound,
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled => Error::NoLeader,
        tonic::Code::DeadlineExceeded => Error::Timeout,
        _ => Error::Network(format!(
            "the leader answered a forwarded lease request with {}: {}",
            status.code(),
            status.message()
        )),
    }
}
