//! The cluster's members, as every member knows them.
//!
//! Ids and peer URLs come from `--initial-cluster` (fixed until membership changes exist; every
//! member derives the same ids, see `config`). Names and client URLs are *published*: each member
//! of a multi-member cluster proposes its own once it has started ([`Command::PublishMember`]), as
//! etcd publishes its attributes, so that MemberList on any member shows where every member serves
//! clients — which is how `etcdctl endpoint status --cluster` finds them. A member that has not
//! published yet is listed with an empty name and no client URLs, as etcd lists one.
//!
//! Client URLs are listed as `host:port`, without their `http://`: etcdctl 3.4's `--cluster`
//! commands dial each listed URL through gRPC's passthrough resolver, which then sends the whole
//! URL as the HTTP/2 `:authority`; Go's gRPC server lets that pass, but hyper's h2 refuses it as
//! malformed. Every etcd client accepts `host:port`. (Peer URLs are shown as given.)
//!
//! Published attributes are part of the replicated state: applied in the same batch as the entry
//! that carries them (`m/member/<id>` in the state tree), and kept in memory for readers.
//!
//! [`Command::PublishMember`]: crate::raft::proposal::Command::PublishMember

use std::collections::{BTreeMap, HashMap};

use concord_proto::etcdserverpb::Member;
use parking_lot::RwLock;
use prost::Message as _;

use crate::error::Result;
use crate::mvcc::KvStore;
use crate::mvcc::store::WriteBatch;

/// State tree prefix of published attributes (then the member id, 8 bytes big-endian).
const PREFIX: &[u8] = b"m/member/";

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

/// The members (see the module doc).
pub struct Members {
    /// Member id → peer URLs.
    peers: HashMap<u64, Vec<String>>,
    /// This member, as its flags describe it: listed until it has published (and always in a
    /// one-member cluster, which publishes nothing).
    me: RwLock<Attributes>,
    published: RwLock<BTreeMap<u64, Attributes>>,
}

impl Members {
    /// The members of `peers`, with what they published so far (read from `kv`); `me` is this
    /// member.
    pub fn open(kv: &KvStore, peers: HashMap<u64, Vec<String>>, me: Attributes) -> Result<Members> {
        Ok(Members {
            peers,
            me: RwLock::new(me),
            published: RwLock::new(load(kv)?),
        })
    }

    /// Reads what members published back from `kv`, after a snapshot replaced its state.
    pub fn reload(&self, kv: &KvStore) -> Result<()> {
        *self.published.write() = load(kv)?;
        Ok(())
    }

    /// Applies a member's published attributes (part of applying an entry).
    pub fn apply(&self, batch: &mut WriteBatch<'_>, attributes: Attributes) {
        let key = [PREFIX, &attributes.id.to_be_bytes()].concat();
        batch.set_meta(key, Some(attributes.encode_to_vec()));
        self.published.write().insert(attributes.id, attributes);
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
        let mut ids: Vec<u64> = self.peers.keys().copied().collect();
        ids.sort_unstable();
        ids.into_iter()
            .map(|id| {
                let mine = (id == me.id).then_some(&*me);
                let attributes = published.get(&id).or(mine);
                Member {
                    id,
                    name: attributes.map(|a| a.name.clone()).unwrap_or_default(),
                    peer_ur_ls: self.peers[&id].clone(),
                    client_ur_ls: attributes
                        .map(|a| a.client_urls.iter().map(|u| host_port(u)).collect())
                        .unwrap_or_default(),
                    is_learner: false,
                }
            })
            .collect()
    }
}

/// The published attributes stored in `kv`.
fn load(kv: &KvStore) -> Result<BTreeMap<u64, Attributes>> {
    let mut published = BTreeMap::new();
    for record in kv.tree().scan_prefix(PREFIX) {
        let (_, value) = record?;
        let attributes = Attributes::decode(&value[..])?;
        published.insert(attributes.id, attributes);
    }
    Ok(published)
}

/// `http://host:port` as `host:port` (see the module doc); other URLs as given.
fn host_port(url: &str) -> String {
    url.strip_prefix("http://").unwrap_or(url).to_string()
}
