//! Typed configuration: read from the store at one revision, checked before it is used, kept
//! current by a watch (hot reload), and never replaced by a bad value.
//!
//! A [`Config<T>`] holds one value of your type `T` (anything `serde` can deserialize), built from
//! a [`Source`]:
//! - [`Source::Key`]: one key whose value is the JSON of `T`;
//! - [`Source::Prefix`]: every key under a prefix. Each key, with the prefix cut off, becomes a
//!   field of one JSON object whose value is the key's value parsed as JSON; that object is
//!   deserialized into `T`. Under `app/` the keys `app/workers` = `8` and `app/name` = `"api"`
//!   make `{"workers": 8, "name": "api"}`. Deeper keys are not nested: `app/db/url` is the field
//!   `"db/url"`. Values must be JSON (a string needs its quotes); a key that is not UTF-8 or a
//!   value that is not JSON makes the whole content invalid.
//!
//! What a `Config` guarantees:
//! - **One revision.** The source is read with one Range, so a value never mixes keys of two
//!   revisions; it is then watched from the next revision on, so no change in between is missed.
//!   The content is evaluated once per watch response, as it stands after the response's last
//!   revision. Change several keys of a prefix in one Txn, and no subscriber sees half of it.
//! - **Checked before applied.** New content is deserialized and passed to your validation hook;
//!   only a value that passes both becomes current. Otherwise the last-known-good value stays
//!   current and the rejection is counted and explained in [`ConfigStatus`] (and logged with
//!   `tracing`): users can always see why their change was ignored. Deleting the key of a
//!   [`Source::Key`] is such a rejection too (the last good value stays); deleting keys under a
//!   prefix just changes the object, which is evaluated like any other content.
//! - **Hot reload.** [`Config::subscribe`] gives a `tokio::sync::watch` receiver of the current
//!   [`Versioned`] value, [`Config::updates`] a stream of them. A value is published only when
//!   the content changed: rewriting the same bytes, or reading them again, reloads nothing.
//! - **Nothing skipped silently.** A background task follows the source with
//!   [`Client::follow`]. When the watch breaks (the server restarted, the connection was lost) it
//!   is reopened with capped exponential backoff from the last revision processed + 1, so the
//!   changes made meanwhile arrive in order. When that revision has been compacted away, the
//!   whole source is read again at the current revision and evaluated: the latest content is
//!   never missed, the intermediate ones are (that is what compaction means);
//!   [`ConfigStatus::reloads`] counts these re-reads and each one is logged. (Progress
//!   notifications move a quiet source's resume point forward, so a reconnect rarely needs one.)
//!
//! The first load fails with [`Error::Invalid`](crate::Error::Invalid) when the source holds no
//! valid value, unless a [fallback](ConfigBuilder::fallback) is given, which is then current
//! (at revision 0) until a valid value arrives.
//!
//! Left out: writing config (any Put or Txn will do), encodings other than JSON, nesting deeper
//! keys of a prefix into nested objects, sources too large for one Range response (gRPC's 4 MiB),
//! and going back to an older revision on demand.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use etcd_client::EventType;
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::follow::Update;

/// The source's keys and values (for a [`Source::Key`], at most that one key).
type Content = BTreeMap<Vec<u8>, Vec<u8>>;

/// The user's validation hook.
type Validator<T> = Arc<dyn Fn(&T) -> Result<(), String> + Send + Sync>;

/// Where a config lives (see the module doc for how a prefix becomes a value). The key or prefix
/// is taken inside the client's namespace ([`Client::with_namespace`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// One key holding the JSON of the whole value.
    Key(String),
    /// Every key under this prefix, one field each.
    Prefix(String),
}

impl Source {
    pub fn key(key: impl Into<String>) -> Source {
        Source::Key(key.into())
    }

    pub fn prefix(prefix: impl Into<String>) -> Source {
        Source::Prefix(prefix.into())
    }

    /// The same source inside `client`'s namespace.
    fn within(&self, client: &Client) -> Source {
        match self {
            Source::Key(key) => Source::Key(client.key(key)),
            Source::Prefix(prefix) => Source::Prefix(client.key(prefix)),
        }
    }

    /// The key, or the prefix.
    fn name(&self) -> &str {
        match self {
            Source::Key(key) | Source::Prefix(key) => key,
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Key(key) => write!(f, "key {key:?}"),
            Source::Prefix(prefix) => write!(f, "prefix {prefix:?}"),
        }
    }
}

/// A config value and the revision it was read at.
#[derive(Debug)]
pub struct Versioned<T> {
    pub value: Arc<T>,
    /// The store revision at which the source held this content (0 for a
    /// [fallback](ConfigBuilder::fallback), which never came from the store).
    pub revision: i64,
}

impl<T> Clone for Versioned<T> {
    fn clone(&self) -> Self {
        Versioned {
            value: self.value.clone(),
            revision: self.revision,
        }
    }
}

/// Why some content of the source was not applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The revision of the rejected content.
    pub revision: i64,
    /// What was wrong: the parse error, the validation hook's message, or a deleted key.
    pub reason: String,
}

/// What a [`Config`]'s subscription has done: the numbers to put on a dashboard, and the answer
/// to "why was my change ignored?".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigStatus {
    /// The revision of the current value (see [`Versioned::revision`]).
    pub revision: i64,
    /// The newest revision of the source processed; above `revision` when later content was
    /// rejected.
    pub seen_revision: i64,
    /// Values applied, the first one included (not the fallback).
    pub applied: u64,
    /// Contents rejected: they did not parse, failed validation, or the key was deleted.
    pub rejected: u64,
    /// The most recent rejection (kept after a later value is applied, for the record).
    pub last_rejection: Option<Rejection>,
    /// Whether the source's newest content was rejected, i.e. the current value is older than
    /// what the store holds.
    pub latest_rejected: bool,
    /// Full re-reads of the source because the watch's history had been compacted.
    pub reloads: u64,
    /// Times the watch was reopened after it broke.
    pub reconnects: u64,
    /// Whether the watch is open right now.
    pub connected: bool,
}

/// A typed config kept current in the background (see the module doc). Dropping it stops the
/// updates; receivers from [`Config::subscribe`] keep the last value and see the channel close.
///
/// Guaranteed: the current value always parsed and passed the validation hook; each value comes
/// with the revision it was read at, and revisions only grow; after a break or a compaction the
/// newest content is evaluated, and every rejection and re-read shows in [`Config::status`].
///
/// Not guaranteed: that a subscriber sees every intermediate value (a slow one skips to the
/// newest; a compaction drops those it covered), that the value is fresh while the server is
/// unreachable (check [`ConfigStatus::connected`]), or any order with respect to other keys.
///
/// See [`Config::builder`] for an example.
pub struct Config<T> {
    current: watch::Receiver<Versioned<T>>,
    status: watch::Receiver<ConfigStatus>,
    /// The task following the watch.
    task: JoinHandle<()>,
}

/// Options of a [`Config`] before its first load; made by [`Config::builder`].
pub struct ConfigBuilder<T> {
    client: Client,
    source: Source,
    validate: Option<Validator<T>>,
    /// The value used when the source holds no valid value at the first load.
    fallback: Option<T>,
}

impl<T: DeserializeOwned + Send + Sync + 'static> Config<T> {
    /// Starts configuring a config read from `source`.
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo() -> concord_recipes::Result<()> {
    /// use concord_recipes::{Client, Config, Source};
    ///
    /// #[derive(serde::Deserialize)]
    /// struct Limits {
    ///     workers: u32,
    ///     queue: u32,
    /// }
    ///
    /// let client = Client::connect(["127.0.0.1:2379"]).await?;
    /// let limits = Config::<Limits>::builder(&client, Source::key("app/limits"))
    ///     .validate(|l| match l.workers {
    ///         0 => Err("workers must be at least 1".into()),
    ///         _ => Ok(()),
    ///     })
    ///     .load()
    ///     .await?;
    /// println!("{} workers", limits.current().workers);
    ///
    /// // Hot reload: react to every new valid value.
    /// let mut updates = limits.subscribe();
    /// while updates.changed().await.is_ok() {
    ///     let new = updates.borrow_and_update().clone();
    ///     println!("now {} workers (revision {})", new.value.workers, new.revision);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn builder(client: &Client, source: Source) -> ConfigBuilder<T> {
        ConfigBuilder {
            client: client.clone(),
            source,
            validate: None,
            fallback: None,
        }
    }

    /// Loads `source` with no validation hook and no fallback: `Config::builder(..).load()`.
    pub async fn load(client: &Client, source: Source) -> Result<Config<T>> {
        Config::builder(client, source).load().await
    }
}

impl<T: DeserializeOwned + Send + Sync + 'static> ConfigBuilder<T> {
    /// Checks every value before it is applied: an `Err` explains the rejection (see
    /// [`ConfigStatus::last_rejection`]) and the last good value stays current. It runs on the
    /// background task: keep it quick and free of I/O.
    pub fn validate(
        mut self,
        hook: impl Fn(&T) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.validate = Some(Arc::new(hook));
        self
    }

    /// Used when the source holds no valid value at the first load (missing, unparsable or
    /// invalid; the reason is in the status), instead of failing the load.
    pub fn fallback(mut self, value: T) -> Self {
        self.fallback = Some(value);
        self
    }

    /// Reads the source at one revision, checks it, and starts following it.
    ///
    /// Fails with [`Error::Invalid`] when the source holds no valid value and there is no
    /// fallback, and with the server's error when it cannot be read (transient failures are
    /// retried first).
    pub async fn load(self) -> Result<Config<T>> {
        let validate = self.validate.unwrap_or_else(|| Arc::new(|_: &T| Ok(())));
        let source = self.source.within(&self.client);
        let prefix = matches!(source, Source::Prefix(_));
        let (kvs, revision, updates) = self.client.list_and_follow(source.name(), prefix).await?;
        let content = content_of(&kvs);
        let mut status = ConfigStatus {
            seen_revision: revision,
            ..ConfigStatus::default()
        };
        let (first, applied, rejected) = match check(&source, &validate, &content) {
            Ok(value) => {
                status.revision = revision;
                status.applied = 1;
                (Versioned::new(value, revision), Some(content.clone()), None)
            }
            Err(reason) => {
                let Some(fallback) = self.fallback else {
                    return Err(Error::Invalid(format!(
                        "{source} holds no valid config at revision {revision}: {reason}"
                    )));
                };
                tracing::warn!(source = %source, %reason, "no valid config; using the fallback");
                status.rejected = 1;
                status.last_rejection = Some(Rejection { revision, reason });
                status.latest_rejected = true;
                (Versioned::new(fallback, 0), None, Some(content.clone()))
            }
        };
        let (current_tx, current) = watch::channel(first);
        let (status_tx, status) = watch::channel(status);
        let follower = Follower {
            source,
            validate,
            content,
            seen: revision,
            applied,
            rejected,
            current: current_tx,
            status: status_tx,
        };
        let task = tokio::spawn(follower.run(updates));
        Ok(Config {
            current,
            status,
            task,
        })
    }
}

impl<T> Versioned<T> {
    fn new(value: T, revision: i64) -> Versioned<T> {
        Versioned {
            value: Arc::new(value),
            revision,
        }
    }
}

impl<T: Send + Sync + 'static> Config<T> {
    /// The current (last-known-good) value.
    pub fn current(&self) -> Arc<T> {
        self.current.borrow().value.clone()
    }

    /// The current value with its revision.
    pub fn get(&self) -> Versioned<T> {
        self.current.borrow().clone()
    }

    /// The revision of the current value.
    pub fn revision(&self) -> i64 {
        self.current.borrow().revision
    }

    /// A receiver of the current value that is told of every new one (hot reload): its
    /// `changed()` resolves when a value is applied after this call. A slow reader skips to the
    /// newest value; it never sees a rejected one.
    pub fn subscribe(&self) -> watch::Receiver<Versioned<T>> {
        let mut receiver = self.current.clone();
        receiver.mark_unchanged();
        receiver
    }

    /// The values applied from now on, as a stream (values applied in quick succession may be
    /// coalesced into the newest). It ends when the `Config` is dropped.
    pub fn updates(&self) -> impl Stream<Item = Versioned<T>> + Send + 'static {
        futures::stream::unfold(self.subscribe(), |mut receiver| async move {
            receiver.changed().await.ok()?;
            let value = receiver.borrow_and_update().clone();
            Some((value, receiver))
        })
    }

    /// What the subscription has done so far (rejections, reloads, reconnects).
    pub fn status(&self) -> ConfigStatus {
        self.status.borrow().clone()
    }

    /// A receiver of the status, told of every change (e.g. to wait for a rejection).
    pub fn watch_status(&self) -> watch::Receiver<ConfigStatus> {
        self.status.clone()
    }
}

impl<T> Drop for Config<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The background task's state: the source's content as the watch reports it, and what was
/// done with it.
struct Follower<T> {
    source: Source,
    validate: Validator<T>,
    /// The source's content at `seen`.
    content: Content,
    /// The newest revision processed: a reopened watch starts right after it.
    seen: i64,
    /// The content of the current value (`None` while the fallback is current).
    applied: Option<Content>,
    /// The content last rejected, so that reading it again is not reported twice.
    rejected: Option<Content>,
    current: watch::Sender<Versioned<T>>,
    status: watch::Sender<ConfigStatus>,
}

impl<T: DeserializeOwned + Send + Sync + 'static> Follower<T> {
    /// Follows the source until the task is aborted ([`Client::follow`] reopens the watch after
    /// every break and re-reads the source after a compaction).
    async fn run(mut self, updates: impl Stream<Item = Update>) {
        let mut updates = std::pin::pin!(updates);
        // Whether the watch broke since it was last open (a reopening is a reconnect).
        let mut broke = false;
        while let Some(update) = updates.next().await {
            match update {
                Update::Events { events, revision } => {
                    for event in &events {
                        let Some(kv) = event.kv() else { continue };
                        match event.event_type() {
                            EventType::Put => {
                                self.content.insert(kv.key().to_vec(), kv.value().to_vec())
                            }
                            EventType::Delete => self.content.remove(kv.key()),
                        };
                    }
                    self.seen = revision;
                    self.evaluate(revision, false);
                }
                Update::Resync { kvs, revision } => {
                    tracing::warn!(source = %self.source, revision,
                        "config history compacted; evaluating the source as read again");
                    self.content = content_of(&kvs);
                    self.seen = revision;
                    self.evaluate(revision, true);
                }
                Update::Connected => {
                    let reopened = std::mem::take(&mut broke);
                    self.status.send_modify(|s| {
                        s.connected = true;
                        s.reconnects += u64::from(reopened);
                    });
                }
                Update::Disconnected { error } => {
                    tracing::warn!(source = %self.source, %error, resume_at = self.seen + 1,
                        "config watch broke; reopening");
                    broke = true;
                    self.status.send_modify(|s| s.connected = false);
                }
            }
        }
    }

    /// Checks the content (at `revision`; `reloaded`: read again after a compaction) and applies
    /// or rejects it. The status changes in one step, before a new value is published: whoever
    /// sees a value then sees a status that counts it.
    fn evaluate(&mut self, revision: i64, reloaded: bool) {
        let verdict = self.judge(revision);
        let mut value = None;
        self.status.send_modify(|s| {
            s.seen_revision = revision;
            s.reloads += u64::from(reloaded);
            match verdict {
                Verdict::Current => s.latest_rejected = false,
                Verdict::StillRejected => {}
                Verdict::Apply(v) => {
                    s.revision = revision;
                    s.applied += 1;
                    s.latest_rejected = false;
                    value = Some(v);
                }
                Verdict::Reject(reason) => {
                    s.rejected += 1;
                    s.last_rejection = Some(Rejection { revision, reason });
                    s.latest_rejected = true;
                }
            }
        });
        if let Some(value) = value {
            self.current.send_replace(Versioned::new(value, revision));
        }
    }

    /// What to do with the content: nothing when it is what was applied or rejected last.
    fn judge(&mut self, revision: i64) -> Verdict<T> {
        if self.applied.as_ref() == Some(&self.content) {
            return Verdict::Current;
        }
        if self.rejected.as_ref() == Some(&self.content) {
            return Verdict::StillRejected;
        }
        match check(&self.source, &self.validate, &self.content) {
            Ok(value) => {
                tracing::info!(source = %self.source, revision, "config applied");
                self.applied = Some(self.content.clone());
                self.rejected = None;
                Verdict::Apply(value)
            }
            Err(reason) => {
                tracing::warn!(source = %self.source, revision, %reason,
                    "config rejected; keeping the last good value");
                self.rejected = Some(self.content.clone());
                Verdict::Reject(reason)
            }
        }
    }
}

/// What [`Follower::judge`] decided about the source's content.
enum Verdict<T> {
    /// It is the current value's content: nothing to do.
    Current,
    /// It was rejected already: not reported again.
    StillRejected,
    /// A new valid value.
    Apply(T),
    /// Invalid, for this reason.
    Reject(String),
}

/// The content of a listing.
fn content_of(kvs: &[etcd_client::KeyValue]) -> Content {
    kvs.iter()
        .map(|kv| (kv.key().to_vec(), kv.value().to_vec()))
        .collect()
}

/// The value the content makes, if it parses and passes the hook; otherwise why not.
fn check<T: DeserializeOwned>(
    source: &Source,
    validate: &Validator<T>,
    content: &Content,
) -> Result<T, String> {
    let value = parse(source, content)?;
    validate(&value).map_err(|e| format!("validation failed: {e}"))?;
    Ok(value)
}

/// Deserializes the content (see the module doc for the prefix rule).
fn parse<T: DeserializeOwned>(source: &Source, content: &Content) -> Result<T, String> {
    let show = |key: &[u8]| String::from_utf8_lossy(key).into_owned();
    match source {
        Source::Key(key) => {
            let raw = content
                .get(key.as_bytes())
                .ok_or_else(|| format!("the key {key:?} does not exist (deleted?)"))?;
            serde_json::from_slice(raw).map_err(|e| format!("the value of {key:?}: {e}"))
        }
        Source::Prefix(prefix) => {
            let mut object = serde_json::Map::new();
            for (key, raw) in content {
                let field = std::str::from_utf8(&key[prefix.len()..])
                    .map_err(|_| format!("the key {:?} is not UTF-8", show(key)))?;
                let value = serde_json::from_slice(raw)
                    .map_err(|e| format!("the value of {:?} is not JSON: {e}", show(key)))?;
                object.insert(field.to_string(), value);
            }
            serde_json::from_value(serde_json::Value::Object(object))
                .map_err(|e| format!("the keys under {prefix:?}: {e}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(pairs: &[(&str, &str)]) -> Content {
        pairs
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn a_prefix_makes_one_object_of_its_keys() {
        let source = Source::prefix("app/");
        let got: BTreeMap<String, serde_json::Value> = parse(
            &source,
            &content(&[("app/workers", "8"), ("app/db/url", r#""pg://x""#)]),
        )
        .unwrap();
        assert_eq!(got["workers"], 8);
        assert_eq!(got["db/url"], "pg://x");
        let err = parse::<BTreeMap<String, u32>>(&source, &content(&[("app/name", "api")]));
        assert!(err.unwrap_err().contains("not JSON"));
    }

    #[test]
    fn a_missing_key_or_a_failed_hook_explains_itself() {
        let source = Source::key("app/limits");
        let none: Validator<u32> = Arc::new(|_| Ok(()));
        let err = check(&source, &none, &Content::new()).unwrap_err();
        assert!(err.contains("does not exist"), "{err}");
        let positive: Validator<u32> = Arc::new(|n| match n {
            0 => Err("must be positive".into()),
            _ => Ok(()),
        });
        let err = check(&source, &positive, &content(&[("app/limits", "0")])).unwrap_err();
        assert_eq!(err, "validation failed: must be positive");
        assert_eq!(
            check(&source, &positive, &content(&[("app/limits", "3")])),
            Ok(3)
        );
    }
}
