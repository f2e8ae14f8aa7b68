//! Sessions: a lease kept alive in the background, and what the client knows of its health.
//!
//! Locks and registrations attach their keys to a session's lease, so they vanish when the
//! process dies (the lease expires) or closes the session (the lease is revoked).
//!
//! The state is judged on **local monotonic time**, so that it can only err on the safe side:
//! every positive keepalive answer proves the lease lives at least `ttl` from the moment the
//! request was *sent* (the server renews it later than that). Call that moment plus the TTL the
//! *horizon*.
//! - [`SessionState::Alive`]: the horizon is more than half a TTL away;
//! - [`SessionState::Suspect`]: keepalives have gone unanswered long enough that the horizon is
//!   less than half a TTL away — the server may be unreachable; stop starting work that needs
//!   the lease;
//! - [`SessionState::Expired`]: the horizon passed, or the server said the lease is gone. It
//!   never comes back: make a new session. The server expires the lease no earlier than the
//!   horizon, so this fires before (or when) anyone else could take over what the session held.
//!
//! Keepalives go every third of the TTL on one stream; a broken stream is reopened.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::client::Client;
use crate::error::{Error, Result};

/// The TTL of a session's lease when none is given (Go's `concurrency` default).
pub const DEFAULT_TTL: i64 = 60;

/// What the client knows of its session's lease (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    Alive,
    Suspect,
    Expired,
}

/// A lease kept alive in the background (see the module doc).
pub struct Session {
    client: Client,
    lease: i64,
    ttl: i64,
    state: watch::Receiver<SessionState>,
    keeper: JoinHandle<()>,
}

impl Session {
    /// Grants a lease of `ttl` seconds and keeps it alive until the session is closed or dropped.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo() -> concord_recipes::Result<()> {
    /// use concord_recipes::{Client, Session, SessionState};
    /// let client = Client::connect(["127.0.0.1:2379"]).await?;
    /// let session = Session::new(&client, 10).await?;
    /// assert_eq!(session.state(), SessionState::Alive);
    /// session.close().await?;
    /// # Ok(()) }
    /// ```
    pub async fn new(client: &Client, ttl: i64) -> Result<Session> {
        let sent = Instant::now();
        let grant = client
            .retry(|mut c| async move { c.lease_grant(ttl, None).await })
            .await?;
        let (lease, granted) = (grant.id(), grant.ttl());
        let (tx, state) = watch::channel(SessionState::Alive);
        let horizon = sent + secs(granted);
        let keeper = tokio::spawn(keep_alive(client.clone(), lease, granted, horizon, tx));
        Ok(Session {
            client: client.clone(),
            lease,
            ttl: granted,
            state,
            keeper,
        })
    }

    /// The lease id: attach keys to it to tie them to this session.
    pub fn lease(&self) -> i64 {
        self.lease
    }

    /// The TTL the server granted, in seconds.
    pub fn ttl(&self) -> i64 {
        self.ttl
    }

    pub fn state(&self) -> SessionState {
        *self.state.borrow()
    }

    /// A receiver that sees every change of state.
    pub fn watch_state(&self) -> watch::Receiver<SessionState> {
        self.state.clone()
    }

    /// Resolves when the session has expired (immediately if it has).
    pub async fn expired(&self) {
        let mut state = self.state.clone();
        let _ = state.wait_for(|s| *s == SessionState::Expired).await;
    }

    /// Fails with [`Error::SessionExpired`] if the session has expired.
    pub fn check(&self) -> Result<()> {
        match self.state() {
            SessionState::Expired => Err(Error::SessionExpired(self.lease)),
            _ => Ok(()),
        }
    }

    /// Stops the keepalives and revokes the lease: every key attached to it is deleted now.
    pub async fn close(self) -> Result<()> {
        self.keeper.abort();
        let lease = self.lease;
        let result = self
            .client
            .retry(|mut c| async move { c.lease_revoke(lease).await })
            .await;
        match result {
            Ok(_) => Ok(()),
            // Gone already: expired, or revoked by someone else.
            Err(Error::Etcd(etcd_client::Error::GRpcStatus(s)))
                if s.code() == tonic::Code::NotFound =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

impl Drop for Session {
    /// Stops the keepalives and revokes the lease in the background (when a runtime is running);
    /// without a revoke the lease simply expires after its TTL.
    fn drop(&mut self) {
        if self.keeper.is_finished() {
            return;
        }
        self.keeper.abort();
        let (mut etcd, lease) = (self.client.etcd(), self.lease);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = etcd.lease_revoke(lease).await;
            });
        }
    }
}

fn secs(s: i64) -> Duration {
    Duration::from_secs(s.max(0) as u64)
}

/// The keepalive task (see the module doc).
async fn keep_alive(
    client: Client,
    lease: i64,
    ttl: i64,
    mut horizon: Instant,
    state: watch::Sender<SessionState>,
) {
    let period = secs(ttl).max(Duration::from_secs(1)) / 3;
    let mut stream = None;
    loop {
        let now = Instant::now();
        let next = if now + period > horizon {
            now
        } else {
            now + period
        };
        tokio::time::sleep_until(next).await;
        let sent = Instant::now();
        let answer = renew(&client, lease, ttl, &mut stream, period).await;
        match answer {
            Some(ttl) if ttl > 0 => horizon = horizon.max(sent + secs(ttl)),
            Some(_) => {
                state.send_replace(SessionState::Expired);
                return;
            }
            None => {
                // Reopen on the next round, on another endpoint if there is one.
                if let Some((endpoint, _)) = stream.take() {
                    client.unpin(endpoint);
                }
            }
        }
        let now = Instant::now();
        let judged = if now >= horizon {
            SessionState::Expired
        } else if horizon - now < secs(ttl) / 2 {
            SessionState::Suspect
        } else {
            SessionState::Alive
        };
        state.send_if_modified(|s| {
            let changed = *s != judged;
            *s = judged;
            changed
        });
        if judged == SessionState::Expired {
            return;
        }
    }
}

/// An open keepalive stream, and the endpoint it was opened on.
type KeepAlive = (
    usize,
    (etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream),
);

/// One keepalive round trip: `Some(ttl)` answered (0 = the lease is gone), `None` no answer.
async fn renew(
    client: &Client,
    lease: i64,
    ttl: i64,
    stream: &mut Option<KeepAlive>,
    wait: Duration,
) -> Option<i64> {
    let mut endpoint = client.pinned();
    let round = async {
        match stream {
            Some((_, (keeper, answers))) => {
                keeper.keep_alive().await.ok()?;
                answers.message().await.ok()?.map(|a| a.ttl())
            }
            None => match endpoint.1.lease_keep_alive(lease).await {
                Ok(opened) => {
                    *stream = Some((endpoint.0, opened));
                    // Opening the stream renewed the lease once (etcd-client consumed the answer,
                    // which carries the granted TTL).
                    Some(ttl)
                }
                Err(etcd_client::Error::LeaseKeepAliveError(_)) => Some(0),
                Err(e) => {
                    tracing::debug!(lease = format!("{lease:x}"), error = %e, "keepalive failed");
                    if Error::from(e).is_transient() {
                        client.unpin(endpoint.0);
                    }
                    None
                }
            },
        }
    };
    tokio::time::timeout(wait, round).await.ok().flatten()
}
