//! The leader's lease keeper: a task that turns deadlines into Raft proposals.
//!
//! Every [`EXPIRY_CHECK`] it asks the lessor for leases whose deadline passed and proposes a revoke
//! for each — at most [`MAX_REVOKES_PER_CHECK`] per check (etcd's rate, 1,000 a second), so that
//! ten thousand leases expiring at once become a steady trickle of small proposals that share
//! flushes with client writes instead of stalling them. Every checkpoint interval it proposes the
//! remaining TTLs that ran down (see `lease`'s module doc), in proposals of at most
//! [`MAX_CHECKPOINTS_PER_PROPOSAL`]. On a member that is not the leader it does nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use concord_proto::etcdserverpb::LeaseRevokeRequest;
use tokio::sync::watch;

use super::Lessor;
use crate::error::Error;
use crate::raft::node::NodeHandle;
use crate::raft::proposal::{Command, LeaseCheckpoint, LeaseCheckpoints};

/// How often deadlines are checked (etcd's value).
pub const EXPIRY_CHECK: Duration = Duration::from_millis(500);
/// Most revokes proposed per check.
pub const MAX_REVOKES_PER_CHECK: usize = 500;
/// Most checkpoints in one proposal (etcd's value).
pub const MAX_CHECKPOINTS_PER_PROPOSAL: usize = 1000;

/// Runs until `stop` turns true.
pub async fn run(
    lessor: Arc<Lessor>,
    node: NodeHandle,
    checkpoint_interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(EXPIRY_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_checkpoint = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        let now = Instant::now();
        if !lessor.is_primary() {
            last_checkpoint = now;
            continue;
        }
        for id in lessor.expired(now, MAX_REVOKES_PER_CHECK) {
            tokio::spawn(revoke(lessor.clone(), node.clone(), id));
        }
        if now.duration_since(last_checkpoint) >= checkpoint_interval {
            last_checkpoint = now;
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
            .map(|&(id, remaining_ttl)| LeaseCheckpoint { id, remaining_ttl })
            .collect();
        let command = Command::LeaseCheckpoint(LeaseCheckpoints { checkpoints });
        if let Err(e) = node.propose(command).await {
            tracing::warn!(error = %e, "checkpointing lease TTLs failed; will retry next interval");
            return;
        }
    }
}
