//! A watch that resumes by itself and never skips silently.
//!
//! A plain etcd watch ends when the connection breaks or the server restarts, and is canceled when
//! the revision it needs has been compacted. [`Client::follow`] hides the first and reports the
//! second: after any break it opens a new watch from the last revision it delivered + 1 (with
//! exponential backoff while the server is unreachable), so every change arrives exactly once and
//! in order; when that revision has been compacted away, it cannot know what it missed, so it
//! reads the whole range again and delivers [`Update::Resync`] with the current state — the
//! consumer replaces what it had instead of applying a diff.
//!
//! The watch asks for progress notifications, so a quiet key's resume point still moves forward
//! and a later break rarely finds it compacted. The stream ends only when it is dropped; failures
//! are retried forever and logged (`tracing`), never returned — but the stream says when its
//! watch broke and when it is open again ([`Update::Disconnected`], [`Update::Connected`]), for
//! consumers that show their connection state.

use std::time::Duration;

use etcd_client::{Event, GetOptions, KeyValue, WatchOptions};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::client::Client;
use crate::error::{Error, Result};

/// Updates buffered between the follower task and its consumer.
const BUFFER: usize = 64;
/// First wait before reopening a broken watch (the wait doubles up to [`MAX_BACKOFF`]).
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What a [`Client::follow`] stream delivers.
#[derive(Debug, Clone)]
pub enum Update {
    /// The changes of one or more revisions, in order; `revision` is the last one delivered.
    Events { events: Vec<Event>, revision: i64 },
    /// The history needed to go on was compacted: this is the whole range at `revision`.
    Resync { kvs: Vec<KeyValue>, revision: i64 },
    /// A watch is open: the first one, a new one after [`Update::Disconnected`], or the one that
    /// goes on after a [`Update::Resync`].
    Connected,
    /// The watch broke (the reason is `error`); it is being reopened from where it stopped.
    Disconnected { error: String },
}

impl Client {
    /// Reads `key` (every key under it when `prefix`) at one revision, and follows its changes
    /// from there (see the module doc).
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo() -> concord_recipes::Result<()> {
    /// use concord_recipes::{Client, Update};
    /// use futures::StreamExt;
    /// let client = Client::connect(["127.0.0.1:2379"]).await?;
    /// let (kvs, _revision, updates) = client.list_and_follow("feature-flags/", true).await?;
    /// let mut updates = std::pin::pin!(updates);
    /// while let Some(update) = updates.next().await {
    ///     match update {
    ///         Update::Events { events, .. } => { /* apply the changes */ }
    ///         Update::Resync { kvs, .. } => { /* replace everything */ }
    ///         Update::Connected | Update::Disconnected { .. } => {}
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn list_and_follow(
        &self,
        key: &str,
        prefix: bool,
    ) -> Result<(
        Vec<KeyValue>,
        i64,
        impl Stream<Item = Update> + Send + use<>,
    )> {
        let (kvs, revision) = list(self, key, prefix).await?;
        Ok((kvs, revision, self.follow(key, prefix, revision)))
    }

    /// Follows the changes of `key` (every key under it when `prefix`) after `revision`.
    pub fn follow(
        &self,
        key: &str,
        prefix: bool,
        revision: i64,
    ) -> impl Stream<Item = Update> + Send + use<> {
        let (tx, rx) = mpsc::channel(BUFFER);
        let (client, key) = (self.clone(), key.to_string());
        tokio::spawn(async move {
            tokio::select! {
                _ = follow(client, key, prefix, revision, &tx) => {}
                _ = tx.closed() => {}
            }
        });
        ReceiverStream::new(rx)
    }
}

/// The range at one revision.
async fn list(client: &Client, key: &str, prefix: bool) -> Result<(Vec<KeyValue>, i64)> {
    let options = prefix.then(|| GetOptions::new().with_prefix());
    let resp = client.get(key, options).await?;
    let revision = resp.header().map_or(0, |h| h.revision());
    Ok((resp.kvs().to_vec(), revision))
}

/// How one watch ended.
enum Ended {
    /// The consumer dropped the stream.
    ConsumerGone,
    /// The history was compacted and the range listed again: watch on from the listing.
    Resynced,
}

/// Sends updates after `revision` to `tx`, forever.
async fn follow(
    client: Client,
    key: String,
    prefix: bool,
    mut revision: i64,
    tx: &mpsc::Sender<Update>,
) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let (endpoint, etcd) = client.pinned();
        let watched = watch(&client, etcd, &key, prefix, &mut revision, tx, &mut backoff).await;
        let broke = match watched {
            Ok(Ended::ConsumerGone) => return,
            Ok(Ended::Resynced) => continue,
            Err(e) => e,
        };
        tracing::warn!(%key, error = %broke, ?backoff, resume_at = revision + 1,
            "a followed watch broke; resuming");
        if broke.is_transient() {
            client.unpin(endpoint);
        }
        let news = Update::Disconnected {
            error: broke.to_string(),
        };
        if tx.send(news).await.is_err() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One watch, from `revision` + 1, until it breaks (an error), the history is compacted, or the
/// consumer goes. Advances `revision` past everything delivered; resets `backoff` once the watch
/// works.
async fn watch(
    client: &Client,
    mut etcd: etcd_client::Client,
    key: &str,
    prefix: bool,
    revision: &mut i64,
    tx: &mpsc::Sender<Update>,
    backoff: &mut Duration,
) -> Result<Ended> {
    let mut options = WatchOptions::new()
        .with_start_revision(*revision + 1)
        .with_progress_notify();
    if prefix {
        options = options.with_prefix();
    }
    // etcd-client has read the creation answer already: the watch is open.
    let mut stream = etcd.watch(key, Some(options)).await?;
    if tx.send(Update::Connected).await.is_err() {
        return Ok(Ended::ConsumerGone);
    }
    loop {
        let Some(resp) = stream.message().await? else {
            return Err(Error::WatchEnded("closed by the server".into()));
        };
        *backoff = MIN_BACKOFF;
        let update = if resp.compact_revision() > 0 {
            // What happened between `revision` and now is gone: start over from the state.
            let (kvs, at) = list(client, key, prefix).await?;
            *revision = at;
            if tx.send(Update::Resync { kvs, revision: at }).await.is_err() {
                return Ok(Ended::ConsumerGone);
            }
            return Ok(Ended::Resynced);
        } else if resp.canceled() {
            return Err(Error::WatchEnded(format!(
                "canceled by the server: {}",
                resp.cancel_reason()
            )));
        } else if resp.created() {
            continue;
        } else {
            let events = resp.events().to_vec();
            let last = events
                .iter()
                .filter_map(|e| e.kv())
                .map(|kv| kv.mod_revision())
                .max();
            match last {
                Some(last) => {
                    *revision = last;
                    Update::Events {
                        events,
                        revision: last,
                    }
                }
                // A progress notification: nothing is pending up to the header's revision.
                None => {
                    let header = resp.header().map_or(0, |h| h.revision());
                    *revision = (*revision).max(header);
                    continue;
                }
            }
        };
        if tx.send(update).await.is_err() {
            return Ok(Ended::ConsumerGone);
        }
    }
}
