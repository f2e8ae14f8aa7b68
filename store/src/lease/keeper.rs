//! The leader's lease keeper: a task that turns deadlines into Raft proposals.
//!
//! Every [`EXPIRY_CHECK`] it asks the lessor for leases whose deadline passed and proposes a revoke
//! for each — at most [`MAX_REVOKES_PER_CHECK`] per check (etcd's rate, 1,000 a second), so that
//! ten thousand leases expiring at once become a steady trickle of small proposals that share
//! flushes with client writes instead of stalling them. It proposes the remaining TTLs that ran
//! down (see `lease`'s module doc), in proposals of at most [`MAX_CHECKPOINTS_PER_PROPOSAL`]: first
//! one election timeout plus a second after this member became leader (so that leader changes
//! faster than the interval cannot keep a lease alive forever), then every checkpoint interval.
//! A lease kept alive while its checkpoint was in flight gets a reset right after. On a member
//! that is not the leader it does nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use concord_proto::etcdserverpb::LeaseRevokeRequest;
use tokio::sync::watch;

use super::{Checkpoint, Lessor};
use crate::error::Error;
use crate::raft::node::NodeHandle;
use crate::raft::proposal::{Command, LeaseCheckpoint, LeaseCheckpoints};

/// How often deadlines are checked (etcd's value).
pub const EXPIRY_CHECK: Duration = Duration::from_millis(500);
/// Most revokes proposed per check.
pub const MAX_REVOKES_PER_CHECK: usize = 500;
/// Most checkpoints in one proposal (etcd's value).
pub const MAX_CHECKPOINTS_PER_PROPOSAL: usize = 1000;

/// The keeper's timing.
#[derive(Debug, Clone, Copy)]
pub struct KeeperConfig {
    /// `--experimental-lease-checkpoint-interval`.
    pub checkpoint_interval: Duration,
    /// `--election-timeout`: the first checkpoint after becoming leader waits this plus a second.
    pub election_timeout: Duration,
}

/// Runs until `stop` turns true.
pub async fn run(
    lessor: Arc<Lessor>,
    node: NodeHandle,
    config: KeeperConfig,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(EXPIRY_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // When the next checkpoint is due; `None` while this member is not the leader.
    let mut next_checkpoint: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        let now = Instant::now();
        if !lessor.is_primary() {
            next_checkpoint = None;
            continue;
        }
        let due =
            *next_checkpoint.get_or_insert(now + config.election_timeout + Duration::from_secs(1));
        for id in lessor.expired(now, MAX_REVOKES_PER_CHECK) {
            tokio::spawn(revoke(lessor.clone(), node.clone(), id));
        }
        if now >= due {
            next_checkpoint = Some(now + config.checkpoint_interval);
            checkpoint(&lessor, &node, now).await;
        }
    }
}

/// Proposes the revoke of an expired lease; on failure the next check proposes it again.
async fn revoke(lessor: Arc<Lessor>, node: NodeHandle, id: i64) {
    match node
        .propose(Command::LeaseRevoke(LeaseRevokeRequest { id }))
        .await
    {
        // Gone already: the client revoked it meanwhile.
        Ok(_) | Err(Error::LeaseNotFound) => {}
        Err(e) => {
            tracing::warn!(lease = format!("{id:x}"), error = %e, "revoking an expired lease failed; will retry");
            lessor.revoke_failed(id);
        }
    }
}

async fn checkpoint(lessor: &Lessor, node: &NodeHandle, now: Instant) {
    let all = lessor.checkpoints(now);
    for chunk in all.chunks(MAX_CHECKPOINTS_PER_PROPOSAL) {
        let checkpoints = chunk
            .iter()
            .map(|c| LeaseCheckpoint {
                id: c.id,
                remaining_ttl: c.remaining,
            })
            .collect();
        if let Err(e) = propose(node, checkpoints).await {
            tracing::warn!(error = %e, "checkpointing lease TTLs failed; will retry next interval");
            return;
        }
        reset_stale(lessor, node, chunk).await;
    }
}

/// Resets the checkpoints of leases kept alive while their checkpoint was in flight.
async fn reset_stale(lessor: &Lessor, node: &NodeHandle, applied: &[Checkpoint]) {
    let stale: Vec<LeaseCheckpoint> = lessor
        .renewed_since(applied)
        .into_iter()
        .map(|id| LeaseCheckpoint {
            id,
            remaining_ttl: 0,
        })
        .collect();
    if !stale.is_empty()
        && let Err(e) = propose(node, stale).await
    {
        tracing::warn!(error = %e, "resetting stale lease checkpoints failed");
    }
}

async fn propose(node: &NodeHandle, checkpoints: Vec<LeaseCheckpoint>) -> crate::error::Result<()> {
    let command = Command::LeaseCheckpoint(LeaseCheckpoints { checkpoints });
    node.propose(command).await.map(|_| ())
}
