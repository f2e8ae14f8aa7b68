//! The three workloads: what one request is, and what is prepared before measuring.
//!
//! * `put`: `Put(key, value)`.
//! * `range`: `Range(key)` of one key, linearizable by default (the server confirms it is the
//!   leader with a quorum before answering, through raft's ReadIndex in etcd), or serializable
//!   (answered from the local store). Beforehand the keys that will be read are written (untimed),
//!   so every read returns one key-value; a read that returns nothing is counted as `range_empty`.
//! * `txn`: a compare-and-swap write: `If(mod_revision(key) == R) Then(Put(key, value))
//!   Else(Range(key))`, where `R` is the key's mod_revision as this tool last saw it (0 for a key
//!   that does not exist, which is what etcd compares against for an absent key). After a Txn that
//!   succeeded the tool knows `R` = the response's header revision; after one that failed, the
//!   else branch returned the key's current mod_revision. So a Txn only fails when another client
//!   wrote the key in between: such a Txn is a successful request, counted as `txn_conflicts`.
//!   Beforehand one paginated keys-only Range learns the mod_revision of every key of the key space
//!   that already exists (e.g. from an earlier `put` run).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, GetOptions, KvClient, Txn, TxnOp, TxnOpResponse, TxnResponse,
};

use crate::error::BenchError;
use crate::keys::{self, KeyOrder};

/// Which request the clients send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    Put,
    /// `preload`: at most this many keys are written before measuring and then read.
    Range {
        serializable: bool,
        preload: u64,
    },
    Txn,
}

impl Workload {
    /// The workload's name in results: `put`, `range-linearizable`, `range-serializable`, `txn`.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::Range {
                serializable: false,
                ..
            } => "range-linearizable",
            Workload::Range {
                serializable: true, ..
            } => "range-serializable",
            Workload::Txn => "txn",
        }
    }
}

/// When the measured part of a run ends.
#[derive(Debug, Clone, Copy)]
pub enum Stop {
    /// No request is started after this long; the requests in flight are waited for.
    Duration(Duration),
    /// After this many requests.
    Total(u64),
}

/// A checked, complete description of one run.
///
/// The watch and lease workloads use it for the settings they share with the others; their own
/// settings live in their modules' `*Config`. `workload` is the request the closed-loop clients
/// send: `Put` for `watch-fanout`'s writers and `lease-expiry-storm`'s load, unused by
/// `lease-keepalive`.
#[derive(Debug, Clone)]
pub struct Plan {
    pub workload: Workload,
    pub endpoints: Vec<String>,
    pub clients: usize,
    pub conns: usize,
    pub stop: Stop,
    pub warmup: Duration,
    pub timeout: Duration,
    pub key_size: usize,
    pub val_size: usize,
    pub key_space: u64,
    pub key_order: KeyOrder,
    pub seed: u64,
    pub quiet: bool,
    /// Keep every measured request's start and latency (see [`crate::runner::Sample`]).
    pub samples: bool,
}

impl Plan {
    /// The measured time of a run that stops after a duration (zero for `--total`).
    pub fn duration(&self) -> Duration {
        match self.stop {
            Stop::Duration(d) => d,
            Stop::Total(_) => Duration::ZERO,
        }
    }

    /// How many distinct keys requests go to: the key space, or its preloaded part for `range`.
    pub fn keys_used(&self) -> u64 {
        match self.workload {
            Workload::Range { preload, .. } => self.key_space.min(preload.max(1)),
            Workload::Put | Workload::Txn => self.key_space,
        }
    }
}

/// How a request that got a reply went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    Done,
    /// `txn`: the compare failed, the else branch ran.
    Conflict,
    /// `range`: no key-value came back.
    Empty,
}

/// Everything needed to send one request: the workload, keys, value and (txn) known revisions.
pub struct Op {
    workload: Workload,
    keys: Vec<Vec<u8>>,
    value: Vec<u8>,
    /// `txn` only: the last mod_revision seen per key index.
    revisions: Vec<AtomicI64>,
}

impl Op {
    pub fn new(plan: &Plan) -> Self {
        let n = plan.keys_used();
        let revisions = match plan.workload {
            Workload::Txn => (0..n).map(|_| AtomicI64::new(0)).collect(),
            Workload::Put | Workload::Range { .. } => Vec::new(),
        };
        Op {
            workload: plan.workload,
            keys: keys::key_table(n, plan.key_size),
            value: keys::value(plan.val_size),
            revisions,
        }
    }

    pub fn key_count(&self) -> u64 {
        self.keys.len() as u64
    }

    /// Sends the request for key index `i` and waits for the reply.
    pub async fn execute(&self, kv: &mut KvClient, i: usize) -> Result<Reply, etcd_client::Error> {
        let key = &self.keys[i];
        match self.workload {
            Workload::Put => {
                kv.put(key.clone(), self.value.clone(), None).await?;
                Ok(Reply::Done)
            }
            Workload::Range { serializable, .. } => {
                let options = serializable.then(|| GetOptions::new().with_serializable());
                let resp = kv.get(key.clone(), options).await?;
                Ok(if resp.kvs().is_empty() {
                    Reply::Empty
                } else {
                    Reply::Done
                })
            }
            Workload::Txn => self.compare_and_swap(kv, i).await,
        }
    }

    async fn compare_and_swap(
        &self,
        kv: &mut KvClient,
        i: usize,
    ) -> Result<Reply, etcd_client::Error> {
        let key = &self.keys[i];
        let known = &self.revisions[i];
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                known.load(Ordering::Relaxed),
            )])
            .and_then([TxnOp::put(key.clone(), self.value.clone(), None)])
            .or_else([TxnOp::get(key.clone(), None)]);
        let resp = kv.txn(txn).await?;
        if resp.succeeded() {
            if let Some(header) = resp.header() {
                known.fetch_max(header.revision(), Ordering::Relaxed);
            }
            Ok(Reply::Done)
        } else {
            known.store(current_mod_revision(&resp), Ordering::Relaxed);
            Ok(Reply::Conflict)
        }
    }

    /// Untimed setup before the run: the range preload, or learning revisions for txn.
    pub async fn prepare(&self, plan: &Plan, conns: &[KvClient]) -> Result<(), BenchError> {
        let say = |what: String| {
            if !plan.quiet {
                eprintln!("{}: {what}", self.workload.name());
            }
        };
        match self.workload {
            Workload::Put => Ok(()),
            Workload::Range { .. } => {
                say(format!("writing the {} keys to read", self.keys.len()));
                self.preload(plan, conns).await
            }
            Workload::Txn => {
                say("reading the mod_revisions of existing keys".into());
                self.learn_revisions(plan, conns[0].clone()).await
            }
        }
    }

    /// Writes every key that `range` will read, with `--clients` concurrent Puts.
    async fn preload(&self, plan: &Plan, conns: &[KvClient]) -> Result<(), BenchError> {
        let this = Arc::new(Op {
            workload: Workload::Put,
            keys: self.keys.clone(),
            value: self.value.clone(),
            revisions: Vec::new(),
        });
        let next = Arc::new(AtomicU64::new(0));
        let tasks: Vec<_> = (0..plan.clients.min(self.keys.len()))
            .map(|c| {
                let (op, next, timeout) = (this.clone(), next.clone(), plan.timeout);
                let mut kv = conns[c % conns.len()].clone();
                tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                        if i >= op.keys.len() {
                            return Ok(());
                        }
                        match tokio::time::timeout(timeout, op.execute(&mut kv, i)).await {
                            Ok(Ok(_)) => {}
                            Ok(Err(e)) => return Err(e.to_string()),
                            Err(_) => return Err(format!("timed out after {timeout:?}")),
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(BenchError::Setup(format!("preload Put failed: {e}"))),
                Err(e) => return Err(BenchError::Setup(format!("preload task failed: {e}"))),
            }
        }
        Ok(())
    }

    /// Reads the mod_revision of every existing key of the key space (keys-only, 10 000 a page).
    async fn learn_revisions(&self, plan: &Plan, mut kv: KvClient) -> Result<(), BenchError> {
        const PAGE: i64 = 10_000;
        let Some(last) = self.keys.last() else {
            return Ok(());
        };
        let end = [last.as_slice(), b"\0"].concat();
        let mut start = self.keys[0].clone();
        loop {
            let options = GetOptions::new()
                .with_range(end.clone())
                .with_keys_only()
                .with_limit(PAGE);
            let resp = tokio::time::timeout(plan.timeout, kv.get(start, Some(options)))
                .await
                .map_err(|_| BenchError::Setup("reading revisions: timed out".into()))?
                .map_err(|e| BenchError::Setup(format!("reading revisions: {e}")))?;
            for kv in resp.kvs() {
                if let Some(i) = keys::key_index(kv.key(), plan.key_size, self.key_count()) {
                    self.revisions[i].store(kv.mod_revision(), Ordering::Relaxed);
                }
            }
            match resp.kvs().last() {
                Some(kv) if resp.more() => start = [kv.key(), b"\0"].concat(),
                _ => return Ok(()),
            }
        }
    }
}

/// The key's mod_revision from the else branch of a failed compare-and-swap (0 if absent).
fn current_mod_revision(resp: &TxnResponse) -> i64 {
    // etcd-client unwraps each op response; a malformed reply must not bring the tool down.
    let responses = std::panic::catch_unwind(|| resp.op_responses()).unwrap_or_default();
    responses
        .iter()
        .find_map(|r| match r {
            TxnOpResponse::Get(get) => Some(get.kvs().first().map_or(0, |kv| kv.mod_revision())),
            _ => None,
        })
        .unwrap_or(0)
}

/// Opens `plan.conns` connections (one [`Client`] each) and checks that each one answers.
pub async fn connect(plan: &Plan) -> Result<Vec<KvClient>, BenchError> {
    let clients = connect_clients(plan).await?;
    Ok(clients.iter().map(Client::kv_client).collect())
}

/// [`connect`], keeping the whole clients (for their watch and lease services).
pub async fn connect_clients(plan: &Plan) -> Result<Vec<Client>, BenchError> {
    let endpoints = plan.endpoints.join(",");
    let mut conns = Vec::with_capacity(plan.conns);
    for _ in 0..plan.conns {
        let client = Client::connect(&plan.endpoints, None)
            .await
            .map_err(|source| BenchError::Connect {
                endpoints: endpoints.clone(),
                source,
            })?;
        let mut kv = client.kv_client();
        // The channel connects lazily: one small read makes sure the server is there (and that
        // the connection is established before anything is timed).
        let probe = kv.get(
            b"concord-bench-probe".to_vec(),
            Some(GetOptions::new().with_serializable()),
        );
        match tokio::time::timeout(plan.timeout, probe).await {
            Ok(Ok(_)) => conns.push(client),
            Ok(Err(source)) => return Err(BenchError::Connect { endpoints, source }),
            Err(_) => {
                return Err(BenchError::Setup(format!(
                    "cannot connect to {endpoints}: no reply within {:?}",
                    plan.timeout
                )));
            }
        }
    }
    Ok(conns)
}

/// A key prefix no earlier run used: `concord-bench/<kind>/<unix time in ns>-<pid>/`.
pub fn unique_prefix(kind: &str) -> Vec<u8> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("concord-bench/{kind}/{nanos}-{}/", std::process::id()).into_bytes()
}
