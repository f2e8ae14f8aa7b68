//! Leader election on etcd's key layout (Go's `concurrency.Election`, `etcdctl elect`).
//!
//! Candidates for an election named `name` each own the key `<name>/<lease hex>` holding their
//! proposal (e.g. an address); the candidate whose key has the lowest create revision leads.
//! [`Election::campaign`] waits for every earlier candidate to go, watching only the closest one,
//! then checks that its own key survived the wait (its session may have expired meanwhile).
//!
//! Guarantees: at most one candidate's key is first at any revision, so at most one
//! [`Leadership`] is valid at a time — but, as with any lease-based lock, a leader that stalls
//! longer than its session TTL may still *believe* it leads after it lost. Use the leadership's
//! fencing token (its key's create revision, larger for every new term) with anything outside
//! this store, and [`Leadership::txn_if_leader`] for writes to it.
//!
//! [`Election::observe`] follows the leader: it yields the current leader's proposal on every
//! change (a new leader, or a new proclamation), and `None` when there is none.

use etcd_client::{Compare, EventType, GetOptions, SortOrder, SortTarget, TxnOp};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::guard::Guard;
use crate::session::Session;
use crate::wait;

/// A named election (see the module doc). Cheap to create: it holds no state.
#[derive(Clone)]
pub struct Election {
    client: Client,
    /// `<name>/`.
    prefix: String,
}

/// The current leader, as [`Election::leader`] and [`Election::observe`] see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    /// The leader's key (`<name>/<lease hex>`).
    pub key: String,
    /// What the leader proclaimed.
    pub proposal: Vec<u8>,
    /// The leader's term: its key's create revision (the fencing token it holds).
    pub term: i64,
}

/// Proof of leading an [`Election`]; resign with [`Leadership::resign`] (dropping it does too, in
/// the background).
pub struct Leadership {
    /// The candidate's key, held like a lock.
    guard: Guard,
}

impl Election {
    /// The election `name` (the same name `etcdctl elect <name>` takes).
    pub fn new(client: &Client, name: impl Into<String>) -> Election {
        let mut prefix = client.key(&name.into());
        prefix.push('/');
        Election {
            client: client.clone(),
            prefix,
        }
    }

    /// Waits until `session` leads, proclaiming `proposal`.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo() -> concord_recipes::Result<()> {
    /// use concord_recipes::{Client, Election, Session};
    /// let client = Client::connect(["127.0.0.1:2379"]).await?;
    /// let session = Session::new(&client, 10).await?;
    /// let leadership = Election::new(&client, "scheduler").campaign(&session, "10.0.0.7:9000").await?;
    /// println!("leading, term {}", leadership.fencing_token());
    /// leadership.resign().await?;
    /// # Ok(()) }
    /// ```
    pub async fn campaign(
        &self,
        session: &Session,
        proposal: impl Into<Vec<u8>>,
    ) -> Result<Leadership> {
        session.check()?;
        let proposal = proposal.into();
        let key = format!("{}{:x}", self.prefix, session.lease());
        let place =
            wait::enqueue(&self.client, &self.prefix, &key, &proposal, session.lease()).await?;
        let leadership = Leadership {
            guard: Guard::new(&self.client, session, key, place.mine),
        };
        if place.value != proposal {
            // This session campaigned before with another proposal: keep the key, update it.
            leadership.proclaim(proposal).await?;
        }
        if place.first != place.mine {
            tokio::select! {
                waited = wait::wait_for_predecessors(&self.client, &self.prefix, place.mine) => waited?,
                _ = session.expired() => return Err(Error::SessionExpired(session.lease())),
            }
        }
        leadership.guard.confirm().await?;
        Ok(leadership)
    }

    /// The current leader, if any.
    pub async fn leader(&self) -> Result<Option<Leader>> {
        Ok(self.read_leader().await?.0)
    }

    /// The leader and the revision it was read at.
    async fn read_leader(&self) -> Result<(Option<Leader>, i64)> {
        let first = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Create, SortOrder::Ascend)
            .with_limit(1);
        let resp = self
            .client
            .get(self.prefix.as_str(), Some(first.clone()))
            .await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let leader = resp.kvs().first().map(|kv| Leader {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            proposal: kv.value().to_vec(),
            term: kv.create_revision(),
        });
        Ok((leader, revision))
    }

    /// A stream of the leader on every change: `Some` for a (new or re-proclaimed) leader, `None`
    /// when nobody leads. It starts with the current state, and ends with an error if the
    /// server cannot be reached.
    pub fn observe(&self) -> impl Stream<Item = Result<Option<Leader>>> + Send + 'static {
        let (tx, rx) = mpsc::channel(16);
        let election = self.clone();
        tokio::spawn(async move {
            if let Err(e) = election.follow(&tx).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        ReceiverStream::new(rx)
    }

    /// Sends the leader whenever it changes, until the receiver goes away.
    async fn follow(&self, tx: &mpsc::Sender<Result<Option<Leader>>>) -> Result<()> {
        let mut last: Option<Option<Leader>> = None;
        loop {
            let (leader, revision) = self.read_leader().await?;
            if last.as_ref() != Some(&leader) {
                if tx.send(Ok(leader.clone())).await.is_err() {
                    return Ok(());
                }
                last = Some(leader);
            }
            // Any change under the prefix may change the leader: read it again then.
            let mut etcd = self.client.etcd();
            let options = etcd_client::WatchOptions::new()
                .with_prefix()
                .with_start_revision(revision + 1);
            let mut stream = etcd.watch(self.prefix.clone(), Some(options)).await?;
            loop {
                tokio::select! {
                    _ = tx.closed() => return Ok(()),
                    resp = stream.message() => {
                        let Some(resp) = resp? else {
                            return Err(Error::WatchEnded("closed by the server".into()));
                        };
                        let changed = resp.canceled()
                            || resp.events().iter().any(|e| {
                                e.event_type() == EventType::Delete
                                    || e.kv().is_some_and(|kv| {
                                        last.as_ref().and_then(|l| l.as_ref()).is_none_or(|l| {
                                            kv.key() == l.key.as_bytes()
                                        })
                                    })
                            });
                        if changed {
                            break;
                        }
                    }
                }
            }
        }
    }
}

impl Leadership {
    /// The leader's key (`<name>/<lease hex>`).
    pub fn key(&self) -> &str {
        self.guard.key()
    }

    /// The term's fencing token: the key's create revision, larger for every later leader.
    pub fn fencing_token(&self) -> i64 {
        self.guard.fencing_token()
    }

    /// The comparison that holds exactly while this leadership lasts.
    pub fn held(&self) -> Compare {
        self.guard.held()
    }

    /// Runs `ops` atomically if, and only if, this is still the leader; returns whether it was.
    pub async fn txn_if_leader(&self, ops: Vec<TxnOp>) -> Result<bool> {
        self.guard.txn_if_held(ops).await
    }

    /// Publishes a new proposal without giving up leadership; fails with [`Error::LockLost`] if
    /// the leadership is gone.
    pub async fn proclaim(&self, proposal: impl Into<Vec<u8>>) -> Result<()> {
        let put = TxnOp::put(
            self.key(),
            proposal.into(),
            Some(etcd_client::PutOptions::new().with_lease(self.guard.lease())),
        );
        if self.txn_if_leader(vec![put]).await? {
            Ok(())
        } else {
            Err(Error::LockLost(self.key().to_string()))
        }
    }

    /// Resolves once the leadership is lost: its key was deleted, or the session expired.
    pub async fn lost(&self) -> Error {
        self.guard.lost().await
    }

    /// Gives up leadership: deletes the key (only if it is still this term's). Dropping the
    /// leadership does the same in the background.
    pub async fn resign(self) -> Result<()> {
        self.guard.unlock().await
    }
}
