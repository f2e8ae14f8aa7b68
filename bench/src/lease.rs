//! Lease plumbing shared by `lease-keepalive` and `lease-expiry-storm`: granting and revoking
//! many leases concurrently, and a LeaseKeepAlive stream that renews any lease.
//!
//! Why a hand-written keep-alive stream: LeaseKeepAlive is a bidirectional stream of
//! `LeaseKeepAliveRequest{ID}`, so one stream can renew any number of leases, and etcd's Go
//! client does exactly that (one stream per client for all its leases). `etcd-client` 0.21 only
//! offers `lease_keep_alive(id)`, which opens a stream per lease and keeps its request sender
//! private, and it does not expose its generated gRPC client. So [`KeepAliveStream`] speaks the
//! RPC itself with tonic, over its own connection, with the two messages declared below from
//! etcd's `rpc.proto` (only the fields this tool reads; prost skips the others).

use std::time::{Duration, Instant};

use etcd_client::{Client, LeaseClient};
use futures::SinkExt;
use futures::channel::mpsc;
use hdrhistogram::Histogram;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};
use tonic_prost::ProstCodec;

use crate::error::BenchError;
use crate::report::{latency_histogram, record_latency};
use crate::watch::share;
use crate::workload::Plan;

pub type LeaseId = i64;

const KEEP_ALIVE_PATH: &str = "/etcdserverpb.Lease/LeaseKeepAlive";

/// `etcdserverpb.LeaseKeepAliveRequest`.
#[derive(Clone, Copy, PartialEq, prost::Message)]
struct KeepAliveRequest {
    #[prost(int64, tag = "1")]
    id: i64,
}

/// `etcdserverpb.LeaseKeepAliveResponse` without its header (field 1).
#[derive(Clone, Copy, PartialEq, prost::Message)]
struct KeepAliveResponse {
    #[prost(int64, tag = "2")]
    id: i64,
    #[prost(int64, tag = "3")]
    ttl: i64,
}

/// One LeaseKeepAlive stream, renewing one lease at a time (request, then its reply).
pub struct KeepAliveStream {
    requests: mpsc::Sender<KeepAliveRequest>,
    responses: tonic::Streaming<KeepAliveResponse>,
}

impl KeepAliveStream {
    /// Opens a stream on `channel` by renewing `first`; returns the stream and that lease's TTL.
    ///
    /// The first request is queued before the call: a server may send nothing, not even
    /// response headers, until it has a request to answer.
    pub async fn open(channel: Channel, first: LeaseId) -> Result<(Self, i64), String> {
        let (mut requests, outbound) = mpsc::channel(1);
        requests
            .send(KeepAliveRequest { id: first })
            .await
            .map_err(|e| e.to_string())?;
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.map_err(|e| e.to_string())?;
        let path = PathAndQuery::from_static(KEEP_ALIVE_PATH);
        let codec = ProstCodec::<KeepAliveRequest, KeepAliveResponse>::default();
        let responses = grpc
            .streaming(tonic::Request::new(outbound), path, codec)
            .await
            .map_err(|status| status.to_string())?
            .into_inner();
        let mut stream = KeepAliveStream {
            requests,
            responses,
        };
        let ttl = stream.reply(first).await?;
        Ok((stream, ttl))
    }

    /// Renews lease `id`; returns the TTL the server answered (0 or less: the lease is gone).
    pub async fn renew(&mut self, id: LeaseId) -> Result<i64, String> {
        self.requests
            .send(KeepAliveRequest { id })
            .await
            .map_err(|e| format!("keep-alive stream closed: {e}"))?;
        self.reply(id).await
    }

    async fn reply(&mut self, id: LeaseId) -> Result<i64, String> {
        match self.responses.message().await {
            Ok(Some(resp)) if resp.id == id => Ok(resp.ttl),
            Ok(Some(resp)) => Err(format!(
                "reply for lease {:x} to a renewal of {id:x}",
                resp.id
            )),
            Ok(None) => Err("the server closed the keep-alive stream".into()),
            Err(status) => Err(status.to_string()),
        }
    }
}

/// Opens `plan.conns` plain gRPC connections (connection `i` to endpoint `i % endpoints`).
pub async fn channels(plan: &Plan) -> Result<Vec<Channel>, BenchError> {
    let mut channels = Vec::with_capacity(plan.conns);
    for i in 0..plan.conns {
        let endpoint = &plan.endpoints[i % plan.endpoints.len()];
        let uri = if endpoint.contains("://") {
            endpoint.clone()
        } else {
            format!("http://{endpoint}")
        };
        let fail = |e: String| BenchError::Setup(format!("cannot connect to {endpoint}: {e}"));
        let channel = Endpoint::from_shared(uri)
            .map_err(|e| fail(e.to_string()))?
            .connect_timeout(plan.timeout)
            .connect()
            .await
            .map_err(|e| fail(e.to_string()))?;
        channels.push(channel);
    }
    Ok(channels)
}

/// The outcome of granting leases with several tasks.
pub struct Grants {
    /// The granted lease ids, per task.
    pub ids: Vec<Vec<LeaseId>>,
    /// Tasks that stopped on a failure.
    pub errors: u64,
    pub first_error: Option<String>,
    /// The TTL the server granted (it may raise a TTL below its minimum).
    pub granted_ttl: Option<i64>,
    /// From the first request to the last reply.
    pub elapsed: Duration,
    /// When the last grant was acknowledged.
    pub last_ack: Instant,
    pub latency_us: Histogram<u64>,
}

impl Grants {
    pub fn granted(&self) -> u64 {
        self.ids.iter().map(|ids| ids.len() as u64).sum()
    }
}

/// Grants `leases` leases of `ttl` seconds with `tasks` concurrent tasks (task `t` grants its
/// share on connection `t % clients`). A task stops at its first failure: the leases it did not
/// grant are missing from the result, the failure is reported.
pub async fn grant(
    clients: &[Client],
    leases: u64,
    ttl: i64,
    tasks: usize,
    timeout: Duration,
) -> Grants {
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let lease = clients[t % clients.len()].lease_client();
            let n = share(leases as usize, tasks, t);
            tokio::spawn(grant_share(lease, n, ttl, timeout))
        })
        .collect();
    let mut grants = Grants {
        ids: Vec::with_capacity(tasks),
        errors: 0,
        first_error: None,
        granted_ttl: None,
        elapsed: Duration::ZERO,
        last_ack: start,
        latency_us: latency_histogram(),
    };
    for h in handles {
        let task = h.await.unwrap_or_else(|e| GrantTask {
            error: Some(format!("grant task failed: {e}")),
            ..GrantTask::default()
        });
        grants.ids.push(task.ids);
        let _ = grants.latency_us.add(&task.latency_us);
        grants.granted_ttl = grants.granted_ttl.or(task.granted_ttl);
        if let Some(e) = task.error {
            grants.errors += 1;
            grants.first_error.get_or_insert(e);
        }
    }
    grants.last_ack = Instant::now();
    grants.elapsed = grants.last_ack - start;
    grants
}

/// What one grant task did.
struct GrantTask {
    ids: Vec<LeaseId>,
    latency_us: Histogram<u64>,
    granted_ttl: Option<i64>,
    /// Why the task stopped early.
    error: Option<String>,
}

impl Default for GrantTask {
    fn default() -> Self {
        GrantTask {
            ids: Vec::new(),
            latency_us: latency_histogram(),
            granted_ttl: None,
            error: None,
        }
    }
}

/// Grants `n` leases one after the other, stopping at the first failure.
async fn grant_share(mut lease: LeaseClient, n: usize, ttl: i64, timeout: Duration) -> GrantTask {
    let mut task = GrantTask {
        ids: Vec::with_capacity(n),
        ..GrantTask::default()
    };
    for _ in 0..n {
        let sent = Instant::now();
        match tokio::time::timeout(timeout, lease.grant(ttl, None)).await {
            Ok(Ok(resp)) => {
                record_latency(&mut task.latency_us, sent.elapsed());
                task.granted_ttl = Some(resp.ttl());
                task.ids.push(resp.id());
            }
            Ok(Err(e)) => {
                task.error = Some(e.to_string());
                break;
            }
            Err(_) => {
                task.error = Some(format!("LeaseGrant timed out after {timeout:?}"));
                break;
            }
        }
    }
    task
}

/// Revokes every lease in `ids` (one task per list); returns how many revokes failed.
pub async fn revoke(clients: &[Client], ids: Vec<Vec<LeaseId>>, timeout: Duration) -> u64 {
    let handles: Vec<_> = ids
        .into_iter()
        .enumerate()
        .map(|(t, ids)| {
            let mut lease = clients[t % clients.len()].lease_client();
            tokio::spawn(async move {
                let mut failed = 0;
                for id in ids {
                    match tokio::time::timeout(timeout, lease.revoke(id)).await {
                        Ok(Ok(_)) => {}
                        _ => failed += 1,
                    }
                }
                failed
            })
        })
        .collect();
    let mut failed = 0;
    for h in handles {
        failed += h.await.unwrap_or(0);
    }
    failed
}
