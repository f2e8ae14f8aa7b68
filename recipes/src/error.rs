//! The recipes' one error type.

/// The result type of the recipes.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every way a recipe can fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server (or the connection to it) failed; the message is the client's.
    #[error(transparent)]
    Etcd(#[from] etcd_client::Error),
    /// The session's lease is gone (revoked, or expired without keepalives): everything that
    /// depended on it — locks, registrations — is gone with it.
    #[error("the session's lease {0:x} expired or was revoked")]
    SessionExpired(i64),
    /// A lock's key disappeared while it was held or awaited (deleted by someone else, or its
    /// lease ended).
    #[error("the lock key {0:?} was deleted")]
    LockLost(String),
    /// A work-queue delivery is no longer its consumer's: its visibility timeout ran out (the
    /// item is, or will be, delivered again) or it was acked or nacked already.
    #[error("the claim on work item {0:?} expired or was settled already")]
    ClaimLost(String),
    /// The operation did not finish in the time given.
    #[error("timed out")]
    Timeout,
    /// An argument could not be used (e.g. metadata that does not serialize to JSON).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// A watch ended before the awaited change arrived.
    #[error("the watch stream ended: {0}")]
    WatchEnded(String),
}

impl Error {
    /// Whether retrying the same call may succeed: the server was unavailable or had no leader,
    /// or the connection broke. (A status with code Unknown that wraps an underlying error was
    /// made by the client from a broken connection — a reset stream, say — not sent by a server.)
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Etcd(etcd_client::Error::GRpcStatus(s)) => {
                matches!(
                    s.code(),
                    tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
                ) || (s.code() == tonic::Code::Unknown && std::error::Error::source(s).is_some())
            }
            Error::Etcd(etcd_client::Error::TransportError(_)) => true,
            _ => false,
        }
    }
}
