//! The queue discipline shared by the Mutex and the Election, as in Go's `concurrency` package.
//!
//! Contenders for one name each own the key `<name>/<lease hex>`; they are ordered by the keys'
//! create revisions, and the first one holds (the lock, or the leadership). [`enqueue`] creates
//! the caller's key if it has none yet and reports where it stands; [`wait_for_predecessors`]
//! waits until every key created before it is gone, watching only the closest one each time, so
//! that a release wakes exactly one waiter (no thundering herd).

use etcd_client::{
    Compare, CompareOp, EventType, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
    TxnOpResponse, WatchOptions,
};

use crate::client::Client;
use crate::error::{Error, Result};

/// Where a contender stands after [`enqueue`].
pub(crate) struct Place {
    /// Its key's create revision (the fencing token, once it holds).
    pub mine: i64,
    /// The lowest create revision under the prefix: the holder's.
    pub first: i64,
    /// Its key's value (an existing key keeps its value).
    pub value: Vec<u8>,
}

/// Creates `key` (attached to `lease`, with `value`) unless it exists, in one transaction that
/// also reads the holder.
pub(crate) async fn enqueue(
    client: &Client,
    prefix: &str,
    key: &str,
    value: &[u8],
    lease: i64,
) -> Result<Place> {
    let first = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Ascend)
        .with_limit(1);
    let txn = Txn::new()
        .when([Compare::create_revision(key, CompareOp::Equal, 0)])
        .and_then([
            TxnOp::put(key, value, Some(PutOptions::new().with_lease(lease))),
            TxnOp::get(prefix, Some(first.clone())),
        ])
        .or_else([TxnOp::get(key, None), TxnOp::get(prefix, Some(first))]);
    // Not retried blindly: a create that may or may not have happened is read back instead.
    let resp = client.etcd().txn(txn).await?;
    let revision = resp.header().map_or(0, |h| h.revision());
    let ops = resp.op_responses();
    let (mine, stored) = if resp.succeeded() {
        (revision, value.to_vec())
    } else {
        match ops.first() {
            Some(TxnOpResponse::Get(g)) => g.kvs().first().map_or((0, Vec::new()), |kv| {
                (kv.create_revision(), kv.value().to_vec())
            }),
            _ => (0, Vec::new()),
        }
    };
    let first = match ops.get(1) {
        Some(TxnOpResponse::Get(g)) => g.kvs().first().map_or(0, |kv| kv.create_revision()),
        _ => 0,
    };
    if mine == 0 {
        return Err(Error::LockLost(key.to_string()));
    }
    Ok(Place {
        mine,
        first,
        value: stored,
    })
}

/// Waits until no key under `prefix` has a create revision below `mine`.
pub(crate) async fn wait_for_predecessors(client: &Client, prefix: &str, mine: i64) -> Result<()> {
    loop {
        let last = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Create, SortOrder::Descend)
            .with_max_create_revision(mine - 1)
            .with_limit(1);
        let resp = client.get(prefix.to_string(), Some(last.clone())).await?;
        let Some(before) = resp.kvs().first() else {
            return Ok(());
        };
        let revision = resp.header().map_or(0, |h| h.revision());
        wait_deleted(client, before.key().to_vec(), revision + 1).await?;
    }
}

/// Waits until `key` is deleted, watching from revision `from` on.
pub(crate) async fn wait_deleted(client: &Client, key: Vec<u8>, from: i64) -> Result<()> {
    watch_for(client, key, false, from, EventType::Delete).await
}

/// Waits for an event of `kind` on `key` (or under it, when `prefix`), from revision `from` on.
/// A watch canceled by compaction, or broken by a transient failure (a restart, a lost
/// connection), returns too: the caller reads the state again, which it does with retries.
pub(crate) async fn watch_for(
    client: &Client,
    key: impl Into<Vec<u8>>,
    prefix: bool,
    from: i64,
    kind: EventType,
) -> Result<()> {
    let mut options = WatchOptions::new().with_start_revision(from);
    if prefix {
        options = options.with_prefix();
    }
    let (endpoint, mut etcd) = client.pinned();
    let broke = |e: etcd_client::Error| {
        let e = Error::from(e);
        if e.is_transient() {
            client.unpin(endpoint);
            Ok(())
        } else {
            Err(e)
        }
    };
    let mut stream = match etcd.watch(key, Some(options)).await {
        Ok(stream) => stream,
        Err(e) => return broke(e),
    };
    loop {
        let resp = match stream.message().await {
            Ok(Some(resp)) => resp,
            Ok(None) => return Ok(()), // closed by the server (it is stopping): read again
            Err(e) => return broke(e),
        };
        if resp.canceled() || resp.events().iter().any(|e| e.event_type() == kind) {
            return Ok(());
        }
    }
}

/// Reads `key` and checks that it still has create revision `token`.
pub(crate) async fn still_mine(client: &Client, key: &str, token: i64) -> Result<bool> {
    let resp = client.get(key.to_string(), None).await?;
    Ok(resp
        .kvs()
        .first()
        .is_some_and(|kv| kv.create_revision() == token))
}
