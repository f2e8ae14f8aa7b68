//! The cluster's members, as every member knows them.
//!
//! Two halves, both part of the replicated state (the `state` tree), so every member answers
//! MemberList alike and a snapshot carries them:
//! - the **peer table** (`m/peer/<id>`): each member's id, peer URLs and whether it is a learner.
//!   A new cluster writes its `--initial-cluster` there when it is bootstrapped (`server.rs`,
//!   identical on every initial member); membership changes (`raft/node.rs`) change it in the
//!   same batch as the Raft conf state and the applied index. The transport and the peer service
//!   follow it: messages are only sent to, and decoded from, members in this table.
//! - **published attributes** (`m/member/<id>`): names and client URLs. Each member proposes its
//!   own once it has started ([`Command::PublishMember`]), as etcd publishes its attributes, so
//!   that MemberList on any member shows where every member serves clients — which is how
//!   `etcdctl endpoint status --cluster` finds them. A member that has not published yet is listed
//!   with an empty name and no client URLs, as etcd lists one.
//!
//! Client URLs are listed as `host:port`, without their `http://`: etcdctl 3.4's `--cluster`
//! commands dial each listed URL through gRPC's passthrough resolver, which then sends the whole
//! URL as the HTTP/2 `:authority`; Go's gRPC server lets that pass, but hyper's h2 refuses it as
//! malformed. Every etcd client accepts `host:port`. (Peer URLs are shown as given.)
//!
//! A data dir made before the peer table existed has none: its members are the flags' until a
//! membership change writes the table.
//!
//! [`Command::PublishMember`]: crate::raft::proposal::Command::PublishMember

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use concord_proto::etcdserverpb::Member;
use parking_lot::RwLock;
use prost::Message as _;

use crate::error::Result;
use crate::mvcc::KvStore;
use crate::mvcc::store::WriteBatch;

/// State tree prefix of published attributes (then the member id, 8 bytes big-endian).
const PREFIX: &[u8] = b"m/member/";
/// State tree prefix of the peer table (then the member id, 8 bytes big-endian).
const PEER_PREFIX: &[u8] = b"m/peer/";

/// What a member publishes about itself.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Attributes {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(string, repeated, tag = "3")]
    pub client_urls: Vec<String>,
}

/// One member of the Raft group: how to reach it and whether it votes.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Peer {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(string, repeated, tag = "2")]
    pub peer_urls: Vec<String>,
    #[prost(bool, tag = "3")]
    pub is_learner: bool,
}

/// The state tree key of `id`'s peer record.
fn peer_key(id: u64) -> Vec<u8> {
    [PEER_PREFIX, &id.to_be_bytes()].concat()
}

/// The state tree records that describe `peers` (a new cluster's bootstrap).
pub fn bootstrap_records(peers: &[Peer]) -> Vec<(Vec<u8>, Vec<u8>)> {
    peers
        .iter()
        .map(|p| (peer_key(p.id), p.encode_to_vec()))
        .collect()
}

/// The members (see the module doc).
pub struct Members {
    /// The peer table: member id → peer.
    peers: RwLock<BTreeMap<u64, Peer>>,
    /// The members to use while the state holds no peer table (from the flags, or from the
    /// cluster a new member joins).
    fallback: BTreeMap<u64, Peer>,
    /// This member, as its flags describe it: listed until it has published.
    me: RwLock<Attributes>,
    published: RwLock<BTreeMap<u64, Attributes>>,
    /// Bumped whenever the peer table changes (the node loop then updates the transport).
    generation: AtomicU64,
}

impl Members {
    /// The members recorded in `kv`, or `fallback` if it records none; `me` is this member.
    pub fn open(kv: &KvStore, fallback: Vec<Peer>, me: Attributes) -> Result<Members> {
        let fallback: BTreeMap<u64, Peer> = fallback.into_iter().map(|p| (p.id, p)).collect();
        let (peers, published) = load(kv, &fallback)?;
        Ok(Members {
            peers: RwLock::new(peers),
            fallback,
            me: RwLock::new(me),
            published: RwLock::new(published),
            generation: AtomicU64::new(0),
        })
    }

    /// Reads both halves back from `kv`, after a snapshot replaced its state.
    pub fn reload(&self, kv: &KvStore) -> Result<()> {
        let (peers, published) = load(kv, &self.fallback)?;
        *self.peers.write() = peers;
        *self.published.write() = published;
        self.generation.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// Applies a member's published attributes (part of applying an entry).
    pub fn apply(&self, batch: &mut WriteBatch<'_>, attributes: Attributes) {
        let key = [PREFIX, &attributes.id.to_be_bytes()].concat();
        batch.set_meta(key, Some(attributes.encode_to_vec()));
        self.published.write().insert(attributes.id, attributes);
    }

    /// Adds or replaces a peer (part of applying a membership change). The first change made to
    /// a data dir without a peer table writes the whole table.
    pub fn apply_peer(&self, batch: &mut WriteBatch<'_>, peer: Peer) {
        let mut peers = self.peers.write();
        self.write_table_once(batch, &peers);
        batch.set_meta(peer_key(peer.id), Some(peer.encode_to_vec()));
        peers.insert(peer.id, peer);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Removes a peer and what it published (part of applying a membership change).
    pub fn apply_removal(&self, batch: &mut WriteBatch<'_>, id: u64) {
        let mut peers = self.peers.write();
        self.write_table_once(batch, &peers);
        batch.set_meta(peer_key(id), None);
        batch.set_meta([PREFIX, &id.to_be_bytes()].concat(), None);
        peers.remove(&id);
        self.published.write().remove(&id);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Writes the in-memory table to a state that has none yet (see the module doc).
    fn write_table_once(&self, batch: &mut WriteBatch<'_>, peers: &BTreeMap<u64, Peer>) {
        if *peers == self.fallback {
            for peer in peers.values() {
                batch.set_meta(peer_key(peer.id), Some(peer.encode_to_vec()));
            }
        }
    }

    /// A number that changes whenever the peer table does.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Every member, voters and learners.
    pub fn peers(&self) -> BTreeMap<u64, Peer> {
        self.peers.read().clone()
    }

    /// Member `id`, if it is one.
    pub fn peer(&self, id: u64) -> Option<Peer> {
        self.peers.read().get(&id).cloned()
    }

    /// Whether another member than `except` already uses one of `urls`.
    pub fn url_taken(&self, urls: &[String], except: u64) -> bool {
        self.peers
            .read()
            .values()
            .any(|p| p.id != except && p.peer_urls.iter().any(|u| urls.contains(u)))
    }

    /// Whether `id` is a member (voter or learner).
    pub fn contains(&self, id: u64) -> bool {
        self.peers.read().contains_key(&id)
    }

    /// This member's client URLs, once its listeners are bound (ports picked at bind time filled
    /// in); what it publishes.
    pub fn serving(&self, client_urls: Vec<String>) -> Attributes {
        let mut me = self.me.write();
        me.client_urls = client_urls;
        me.clone()
    }

    /// What member `id` published, if it has.
    pub fn published(&self, id: u64) -> Option<Attributes> {
        self.published.read().get(&id).cloned()
    }

    /// Every member, in id order, as MemberList shows them.
    pub fn list(&self) -> Vec<Member> {
        let published = self.published.read();
        let me = self.me.read();
        self.peers
            .read()
            .values()
            .map(|peer| {
                let mine = (peer.id == me.id).then_some(&*me);
                let attributes = published.get(&peer.id).or(mine);
                Member {
                    id: peer.id,
                    name: attributes.map(|a| a.name.clone()).unwrap_or_default(),
                    peer_ur_ls: peer.peer_urls.clone(),
                    client_ur_ls: attributes
                        .map(|a| a.client_urls.iter().map(|u| host_port(u)).collect())
                        .unwrap_or_default(),
                    is_learner: peer.is_learner,
                }
            })
            .collect()
    }
}

/// The peer table (or `fallback`) and the published attributes stored in `kv`.
type Loaded = (BTreeMap<u64, Peer>, BTreeMap<u64, Attributes>);

fn load(kv: &KvStore, fallback: &BTreeMap<u64, Peer>) -> Result<Loaded> {
    let mut peers = BTreeMap::new();
    for record in kv.tree().scan_prefix(PEER_PREFIX) {
        let (_, value) = record?;
        let peer = Peer::decode(&value[..])?;
        peers.insert(peer.id, peer);
    }
    if peers.is_empty() {
        peers = fallback.clone();
    }
    let mut published = BTreeMap::new();
    for record in kv.tree().scan_prefix(PREFIX) {
        let (_, value) = record?;
        let attributes = Attributes::decode(&value[..])?;
        published.insert(attributes.id, attributes);
    }
    Ok((peers, published))
}

/// `http://host:port` as `host:port` (see the module doc); other URLs as given.
fn host_port(url: &str) -> String {
    url.strip_prefix("http://").unwrap_or(url).to_string()
}
