//! Requests a follower cannot answer, forwarded to the leader.
//!
//! - Only the leader keeps lease deadlines (`lease`), so a keepalive or a TimeToLive that reaches
//!   a follower is answered by the leader, as etcd does: the follower calls the leader's `Lease`
//!   service, which every member also serves on its peer URLs, and answers its own client with
//!   the leader's TTL under its own header.
//! - Only the leader can check and propose a membership change (it knows how far a learner got),
//!   so MemberAdd, MemberRemove, MemberUpdate and MemberPromote reaching a follower are passed to
//!   the leader's `Cluster` service, also served on its peer URLs, and its answer is returned.
//!
//! A forwarded request carries the
//! `concord-forwarded` metadata and is never forwarded again — a member that has stopped being the
//! leader answers "no leader" and the client retries — so two members with stale views of the
//! leadership cannot bounce a request between them.
//!
//! Connections to the leaders are made lazily, one per member, and reused.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use concord_proto::etcdserverpb::cluster_client::ClusterClient;
use concord_proto::etcdserverpb::lease_client::LeaseClient;
use concord_proto::etcdserverpb::{
    LeaseKeepAliveRequest, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use parking_lot::Mutex;
use tonic::transport::{Channel, Endpoint};

use crate::error::{Error, Result};
use crate::members::Members;

/// Longest a forwarded request may take (a membership change waits for its entry to apply).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// The metadata key that marks a forwarded request.
pub const FORWARDED: &str = "concord-forwarded";

/// Connections to the other members' peer URLs, to forward requests to the leader (see the
/// module doc).
pub struct ToLeader {
    members: Arc<Members>,
    /// Member id → its peer URL and a channel to it.
    channels: Mutex<HashMap<u64, (String, Channel)>>,
}

impl ToLeader {
    pub fn new(members: Arc<Members>) -> ToLeader {
        ToLeader {
            members,
            channels: Mutex::new(HashMap::new()),
        }
    }

    /// A channel to `leader`'s first peer URL (made anew if the URL changed).
    fn channel(&self, leader: u64) -> Result<Channel> {
        let peer = self.members.peer(leader).ok_or(Error::NoLeader)?;
        let url = peer.peer_urls.first().ok_or(Error::NoLeader)?;
        let mut channels = self.channels.lock();
        if let Some((known, channel)) = channels.get(&leader)
            && known == url
        {
            return Ok(channel.clone());
        }
        let endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| Error::Config(format!("peer URL {url}: {e}")))?;
        let channel = endpoint
            .connect_timeout(Duration::from_secs(1))
            .timeout(FORWARD_TIMEOUT)
            .connect_lazy();
        channels.insert(leader, (url.clone(), channel.clone()));
        Ok(channel)
    }

    fn client(&self, leader: u64) -> Result<LeaseClient<Channel>> {
        Ok(LeaseClient::new(self.channel(leader)?))
    }

    /// The leader's Cluster service (see the module doc).
    pub fn cluster(&self, leader: u64) -> Result<ClusterClient<Channel>> {
        Ok(ClusterClient::new(self.channel(leader)?))
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

/// Whether `request` was forwarded by another member (and so must not be forwarded again).
pub fn is_forwarded<T>(request: &tonic::Request<T>) -> bool {
    request.metadata().contains_key(FORWARDED)
}

/// A request marked as forwarded.
pub fn forwarded<T>(message: T) -> tonic::Request<T> {
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
