//! Concord's one error type, and its mapping to gRPC statuses.
//!
//! etcd clients do not only look at the gRPC code: Go's `clientv3` (and tools built on it, such as
//! `etcdctl`) map the status *description* back to typed errors, so the descriptions are part of the
//! wire contract. Every variant that has an etcd counterpart carries etcd's exact code and text; the
//! mapping lives in one place, [`Error::code`] and [`Error::description`], so the adapters in
//! `service/` never build a status by hand.
//!
//! Errors come in two kinds, and [`Error::is_deterministic`] tells them apart:
//! - *deterministic* ones are the answer to a request (a compacted revision, an unknown lease): every
//!   replica applying the same entry reaches the same one, so they are returned to the caller and the
//!   state machine goes on;
//! - the others (a storage failure) mean this replica can no longer apply entries faithfully; the node
//!   loop stops instead of diverging from its peers.

use std::path::PathBuf;

/// The result type of the store crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every way a Concord operation can fail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    // --- Request validation (etcd's v3rpc checks) ---
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    /// Concord's own limit (etcd has none): see `mvcc::txn::MAX_TXN_DEPTH`.
    #[error("concord: transactions nested deeper than 32 levels are not accepted")]
    TxnTooDeep,
    #[error("etcdserver: invalid sort option")]
    InvalidSortOption,
    #[error("etcdserver: request is too large")]
    RequestTooLarge,

    // --- MVCC ---
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,

    // --- Leases ---
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,

    // --- Lock and Election (etcd's `concurrency` package, whose plain errors reach clients as
    // gRPC Unknown with these texts) ---
    #[error("election: no leader")]
    ElectionNoLeader,
    #[error("election: not leader")]
    ElectionNotLeader,
    #[error("\"leader\" field must be provided")]
    MissingLeaderKey,
    /// The caller's own key (and so its place in the queue) vanished while it waited: its lease
    /// ended or someone deleted the key. etcd 3.4 does not check this; 3.5 answers with this text.
    #[error("mutex: session is expired")]
    SessionExpired,
    /// Concord's own rule (see `service/lock.rs`): etcd would attach a 60 s lease nobody renews.
    #[error(
        "concord: Lock and Campaign need a lease (lease 0 would make etcd attach a 60 s lease that \
         nobody keeps alive, so the lock would expire silently); grant one and keep it alive"
    )]
    LeaseRequired,

    // --- Membership ---
    #[error("etcdserver: member not found")]
    MemberNotFound,
    #[error("etcdserver: member ID already exist")]
    MemberExists,
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExists,
    #[error("etcdserver: given member URLs are invalid")]
    MemberBadUrls,
    #[error("etcdserver: can only promote a learner member")]
    MemberNotLearner,
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    #[error("etcdserver: too many learner members in cluster")]
    TooManyLearners,
    #[error("etcdserver: unhealthy cluster")]
    Unhealthy,
    /// raft-rs takes one membership change at a time (a second one would be dropped silently);
    /// etcd has no text for this, its request would time out.
    #[error("concord: another membership change is in progress; retry when it is applied")]
    MembershipChangePending,
    /// raft-rs refused the change when it was applied (e.g. it would leave no voter).
    #[error("concord: the membership change was refused: {0}")]
    MembershipChangeRefused(String),
    /// This member applied its own removal: it stops, and its data dir cannot serve again.
    #[error("the member has been permanently removed from the cluster")]
    Removed,

    // --- Raft and server state ---
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("etcdserver: not leader")]
    NotLeader,
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    #[error("etcdserver: request timed out, leader transfer took too long")]
    LeaderTransferTimeout,
    #[error("etcdserver: request timed out")]
    Timeout,
    #[error("etcdserver: server stopped")]
    Stopped,

    // --- Local failures (never deterministic) ---
    /// The embedded sled database failed; the message is sled's.
    #[error("storage error: {0}")]
    Storage(String),
    /// raft-rs refused an operation in a way that is not a client error.
    #[error("raft error: {0}")]
    Raft(String),
    /// Stored bytes could not be decoded: the data dir is damaged or from another program.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// A flag or configuration value is invalid; the message says which and why.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Another process (or another server in this process) holds the data dir.
    #[error("data dir {0} is in use by another concord process (its lock could not be taken)")]
    DataDirLocked(PathBuf),
    /// A listener could not be bound or served.
    #[error("network error: {0}")]
    Network(String),
}

impl Error {
    /// The gRPC status code etcd uses for this error.
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            Error::EmptyKey
            | Error::KeyNotFound
            | Error::ValueProvided
            | Error::LeaseProvided
            | Error::TooManyOps
            | Error::TxnTooDeep
            | Error::DuplicateKey
            | Error::InvalidSortOption
            | Error::RequestTooLarge
            | Error::LeaseRequired
            | Error::MemberBadUrls
            | Error::Config(_) => Code::InvalidArgument,
            Error::Compacted | Error::FutureRevision | Error::LeaseTtlTooLarge => Code::OutOfRange,
            Error::LeaseNotFound | Error::MemberNotFound => Code::NotFound,
            Error::LeaseExists
            | Error::NotLeader
            | Error::BadLeaderTransferee
            | Error::PeerUrlExists
            | Error::MemberExists
            | Error::MemberNotLearner
            | Error::LearnerNotReady
            | Error::TooManyLearners
            | Error::MembershipChangeRefused(_) => Code::FailedPrecondition,
            Error::ElectionNoLeader
            | Error::ElectionNotLeader
            | Error::MissingLeaderKey
            | Error::SessionExpired => Code::Unknown,
            Error::NoLeader
            | Error::Timeout
            | Error::Stopped
            | Error::LeaderTransferTimeout
            | Error::LeaderChanged
            | Error::MembershipChangePending
            | Error::Unhealthy
            | Error::Removed => Code::Unavailable,
            Error::Storage(_)
            | Error::Raft(_)
            | Error::Corrupt(_)
            | Error::DataDirLocked(_)
            | Error::Network(_) => Code::Internal,
        }
    }

    /// Whether every replica applying the same entry reaches this same error (see the module doc).
    pub fn is_deterministic(&self) -> bool {
        !matches!(
            self,
            Error::Storage(_) | Error::Raft(_) | Error::Corrupt(_) | Error::Network(_)
        )
    }
}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        tonic::Status::new(err.code(), err.to_string())
    }
}

impl Error {
    /// The status of a Lock or Election call that failed. etcd serves those services through an
    /// in-process client that keeps an error's text but not its code, so clients see `Unknown`
    /// ("etcdserver: requested lease not found" included). Concord answers the same, except that
    /// `Unavailable` (no leader, stopping) stays `Unavailable`, so clients still retry it, and
    /// Concord's own [`Error::LeaseRequired`] keeps its code.
    pub fn concurrency_status(self) -> tonic::Status {
        match (&self, self.code()) {
            (_, tonic::Code::Unavailable) | (Error::LeaseRequired, _) => self.into(),
            _ => tonic::Status::new(tonic::Code::Unknown, self.to_string()),
        }
    }
}

impl From<sled::Error> for Error {
    fn from(err: sled::Error) -> Self {
        Error::Storage(err.to_string())
    }
}

impl From<sled::transaction::TransactionError<Error>> for Error {
    fn from(err: sled::transaction::TransactionError<Error>) -> Self {
        match err {
            sled::transaction::TransactionError::Abort(e) => e,
            sled::transaction::TransactionError::Storage(e) => e.into(),
        }
    }
}

impl From<prost::DecodeError> for Error {
    fn from(err: prost::DecodeError) -> Self {
        Error::Corrupt(err.to_string())
    }
}

impl From<protobuf::ProtobufError> for Error {
    fn from(err: protobuf::ProtobufError) -> Self {
        Error::Corrupt(err.to_string())
    }
}

impl From<raft::Error> for Error {
    fn from(err: raft::Error) -> Self {
        match err {
            raft::Error::ProposalDropped => Error::NoLeader,
            other => Error::Raft(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_and_codes_are_etcds() {
        let status: tonic::Status = Error::Compacted.into();
        assert_eq!(status.code(), tonic::Code::OutOfRange);
        assert_eq!(
            status.message(),
            "etcdserver: mvcc: required revision has been compacted"
        );
        let status: tonic::Status = Error::LeaseNotFound.into();
        assert_eq!(status.code(), tonic::Code::NotFound);
        assert_eq!(status.message(), "etcdserver: requested lease not found");
        let status: tonic::Status = Error::NoLeader.into();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(status.message(), "etcdserver: no leader");
    }

    #[test]
    fn storage_failures_are_not_deterministic() {
        assert!(Error::Compacted.is_deterministic());
        assert!(!Error::Storage("disk".into()).is_deterministic());
    }
}
