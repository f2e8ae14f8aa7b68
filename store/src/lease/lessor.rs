//! The lessor: the table of leases and their keys, and (on the leader) their deadlines.
//!
//! See the module doc of `lease` for the rules. Invariants, asserted where they are relied on:
//! - `keys` and `key_lease` describe the same attachments, both ways: a key is in lease L's set
//!   exactly when `key_lease[key] == L`;
//! - a key is attached only to a lease that exists (puts check it before they write; a revoke
//!   deletes the keys in the same transaction that removes the lease);
//! - deadlines exist only while this member is primary, and every deadline is also in the queue.
//!
//! Concurrency: one `parking_lot::Mutex` guards the table; the apply loop, the gRPC adapters and the
//! keeper take it for short, non-blocking sections.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use concord_proto::mvccpb::{Event, event::EventType};
use parking_lot::Mutex;
use prost::Message;

use crate::error::{Error, Result};
use crate::mvcc::store::WriteBatch;
use crate::mvcc::txn::Leases;
use crate::mvcc::{KeyRange, KvStore, Rev};

/// A lease's id, chosen by the client or by the member that proposed the grant (never 0).
pub type LeaseId = i64;

/// The largest TTL a lease may have, in seconds (etcd's `MaxLeaseTTL`).
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// State tree prefix of the lease records: `l/` + id (8 bytes, big-endian).
const LEASE_PREFIX: &[u8] = b"l/";

/// A lease as stored (etcd's `leasepb.Lease`).
#[derive(Clone, PartialEq, prost::Message)]
struct LeaseRecord {
    #[prost(int64, tag = "1")]
    id: i64,
    #[prost(int64, tag = "2")]
    ttl: i64,
    /// The last checkpointed remaining TTL; 0 when none.
    #[prost(int64, tag = "3")]
    remaining_ttl: i64,
}

/// One lease in memory.
#[derive(Debug)]
struct Lease {
    /// Granted TTL, seconds.
    ttl: i64,
    /// Last checkpointed remaining TTL in seconds (0 = none): where a new leader starts from.
    remaining: i64,
    /// The keys attached to it.
    keys: BTreeSet<Vec<u8>>,
    /// When it expires, while this member is primary.
    deadline: Option<Instant>,
    /// A revoke was proposed for it and has not failed: the keeper does not propose another.
    revoking: bool,
    /// Keepalives so far (leader-local): tells the keeper whether a checkpoint it computed went
    /// stale before it was applied.
    renewals: u64,
}

impl Lease {
    /// Seconds a new leader grants it (see the module doc of `lease`).
    fn restart_ttl(&self) -> i64 {
        if self.remaining > 0 {
            self.remaining
        } else {
            self.ttl
        }
    }
}

/// A remaining TTL the leader may checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    pub id: LeaseId,
    /// Seconds, rounded up.
    pub remaining: i64,
    /// The lease's keepalive count when this was computed.
    pub renewals: u64,
}

/// What a TimeToLive request learns about a lease.
#[derive(Debug, Clone, PartialEq)]
pub struct TimeToLive {
    /// Seconds left (whole seconds, rounded down, as etcd does).
    pub remaining: i64,
    /// The granted TTL.
    pub granted: i64,
    /// The attached keys, when asked for.
    pub keys: Vec<Vec<u8>>,
}

#[derive(Debug, Default)]
struct State {
    leases: HashMap<LeaseId, Lease>,
    /// Which lease each attached key belongs to.
    key_lease: HashMap<Vec<u8>, LeaseId>,
    /// The election timeout granted on top of a lease's TTL when this member became leader;
    /// `None` while it is not the leader.
    primary: Option<Duration>,
    /// Deadlines in order (primary only).
    queue: BTreeSet<(Instant, LeaseId)>,
}

impl State {
    fn set_deadline(&mut self, id: LeaseId, deadline: Instant) {
        let lease = self.leases.get_mut(&id).expect("the lease exists");
        if let Some(old) = lease.deadline.replace(deadline) {
            self.queue.remove(&(old, id));
        }
        self.queue.insert((deadline, id));
    }

    fn remove(&mut self, id: LeaseId) -> Option<Lease> {
        let lease = self.leases.remove(&id)?;
        if let Some(deadline) = lease.deadline {
            self.queue.remove(&(deadline, id));
        }
        Some(lease)
    }

    /// Attaches `key` to `lease` (0 = to none), detaching it from the one it had.
    fn attach(&mut self, key: &[u8], lease: LeaseId) {
        let old = self.key_lease.get(key).copied().unwrap_or(0);
        if old == lease {
            return;
        }
        if old != 0 {
            // The lease may be gone already: a revoke removes it after deleting its keys.
            if let Some(l) = self.leases.get_mut(&old) {
                l.keys.remove(key);
            }
            self.key_lease.remove(key);
        }
        if lease != 0 {
            let l = self
                .leases
                .get_mut(&lease)
                .expect("a key is attached only to an existing lease (checked before the put)");
            l.keys.insert(key.to_vec());
            self.key_lease.insert(key.to_vec(), lease);
        }
    }
}

/// Reads the lease table back from the lease records and the leased keys of `kv`.
fn load(kv: &KvStore) -> Result<State> {
    let mut state = State::default();
    for item in kv.tree().scan_prefix(LEASE_PREFIX) {
        let (_, value) = item?;
        let record = LeaseRecord::decode(&value[..])?;
        state.leases.insert(
            record.id,
            Lease {
                ttl: record.ttl,
                remaining: record.remaining_ttl,
                keys: BTreeSet::new(),
                deadline: None,
                revoking: false,
                renewals: 0,
            },
        );
    }
    for (key, lease) in kv.leased_keys()? {
        if !state.leases.contains_key(&lease) {
            return Err(Error::Corrupt(format!(
                "key {key:?} is attached to lease {lease:x}, which has no record"
            )));
        }
        state.attach(&key, lease);
    }
    Ok(state)
}

/// The lease table (see the module doc).
#[derive(Debug)]
pub struct Lessor {
    state: Mutex<State>,
    /// The smallest TTL granted, seconds.
    min_ttl: i64,
}

impl Lessor {
    /// Rebuilds the table from the lease records and the leased keys of `kv`.
    pub fn open(kv: &KvStore, min_ttl: i64) -> Result<Self> {
        Ok(Lessor {
            state: Mutex::new(load(kv)?),
            min_ttl,
        })
    }

    /// Rebuilds the table from `kv` after a snapshot replaced its state (`raft/snapshot.rs`).
    /// Only a follower installs snapshots, so the new table keeps no deadlines.
    pub fn reload(&self, kv: &KvStore) -> Result<()> {
        let fresh = load(kv)?;
        let mut state = self.state.lock();
        debug_assert!(
            state.primary.is_none(),
            "a leader never installs a snapshot"
        );
        *state = fresh;
        Ok(())
    }

    /// The TTL a grant asking for `ttl` gets (raised to the minimum), or etcd's error.
    pub fn granted_ttl(&self, ttl: i64) -> Result<i64> {
        if ttl > MAX_LEASE_TTL {
            return Err(Error::LeaseTtlTooLarge);
        }
        Ok(ttl.max(self.min_ttl))
    }

    pub fn exists(&self, id: LeaseId) -> bool {
        self.state.lock().leases.contains_key(&id)
    }

    // --- The replicated half: called by the apply loop only. ---

    /// Applies a grant. `ttl` was already checked and raised by the proposer.
    pub fn apply_grant(&self, batch: &mut WriteBatch<'_>, id: LeaseId, ttl: i64) -> Result<()> {
        let mut state = self.state.lock();
        if id == 0 {
            return Err(Error::LeaseNotFound);
        }
        if state.leases.contains_key(&id) {
            return Err(Error::LeaseExists);
        }
        state.leases.insert(
            id,
            Lease {
                ttl,
                remaining: 0,
                keys: BTreeSet::new(),
                deadline: None,
                revoking: false,
                renewals: 0,
            },
        );
        if state.primary.is_some() {
            state.set_deadline(id, Instant::now() + secs(ttl));
        }
        batch.set_meta(lease_key(id), Some(record(id, ttl, 0)));
        Ok(())
    }

    /// Applies a revoke: deletes every attached key in one transaction (one revision), then the
    /// lease. Returns the revision after it.
    pub fn apply_revoke(&self, batch: &mut WriteBatch<'_>, id: LeaseId) -> Result<Rev> {
        let keys: Vec<Vec<u8>> = {
            let state = self.state.lock();
            let lease = state.leases.get(&id).ok_or(Error::LeaseNotFound)?;
            lease.keys.iter().cloned().collect()
        };
        {
            let mut txn = batch.txn();
            for key in &keys {
                let deleted = txn.delete_range(KeyRange::new(key, b""));
                assert_eq!(deleted, 1, "an attached key is live");
            }
        }
        let mut state = self.state.lock();
        state.remove(id);
        batch.set_meta(lease_key(id), None);
        // The deletes detach the keys when the apply loop hands their events to `apply_events`.
        Ok(batch.revision())
    }

    /// Applies checkpoints of remaining TTLs (leases gone since are skipped). A reset (0) records
    /// a keepalive: on the leader the deadline is then at least a full TTL away, which matters
    /// when the reset is replayed from the log after a restart (the deadline set at promotion came
    /// from the older checkpoint).
    pub fn apply_checkpoints(&self, batch: &mut WriteBatch<'_>, checkpoints: &[(LeaseId, i64)]) {
        let mut state = self.state.lock();
        let primary = state.primary.is_some();
        let now = Instant::now();
        for &(id, remaining) in checkpoints {
            let Some(lease) = state.leases.get_mut(&id) else {
                continue;
            };
            lease.remaining = remaining;
            let ttl = lease.ttl;
            batch.set_meta(lease_key(id), Some(record(id, ttl, remaining)));
            let renewed = now + secs(ttl);
            if primary && remaining == 0 && lease.deadline.is_some_and(|d| d < renewed) {
                state.set_deadline(id, renewed);
            }
        }
    }

    /// Follows the attachments of applied changes: a put attaches its key to its lease (or to none,
    /// detaching it), a delete detaches it.
    pub fn apply_events(&self, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        let mut state = self.state.lock();
        for event in events {
            let Some(kv) = &event.kv else { continue };
            let lease = if event.r#type == EventType::Delete as i32 {
                0
            } else {
                kv.lease
            };
            if lease != 0 || state.key_lease.contains_key(&kv.key[..]) {
                state.attach(&kv.key, lease);
            }
        }
    }

    // --- The leader-local half. ---

    /// This member became leader: every lease gets a fresh deadline (see the module doc).
    pub fn promote(&self, extend: Duration) {
        let mut state = self.state.lock();
        state.primary = Some(extend);
        let now = Instant::now();
        let ids: Vec<(LeaseId, i64)> = state
            .leases
            .iter()
            .map(|(id, l)| (*id, l.restart_ttl()))
            .collect();
        state.queue.clear();
        for (id, ttl) in ids {
            let lease = state.leases.get_mut(&id).expect("listed above");
            lease.deadline = None;
            lease.revoking = false;
            state.set_deadline(id, now + extend + secs(ttl));
        }
    }

    /// This member is no longer leader: it keeps no deadlines.
    pub fn demote(&self) {
        let mut state = self.state.lock();
        state.primary = None;
        state.queue.clear();
        for lease in state.leases.values_mut() {
            lease.deadline = None;
        }
    }

    pub fn is_primary(&self) -> bool {
        self.state.lock().primary.is_some()
    }

    /// A keepalive: the lease lives `ttl` from now. Returns its TTL and whether it carries a
    /// checkpoint that must be reset (see the module doc). An expired lease is not renewed.
    pub fn renew(&self, id: LeaseId) -> Result<(i64, bool)> {
        let mut state = self.state.lock();
        if state.primary.is_none() {
            return Err(Error::NoLeader);
        }
        let now = Instant::now();
        let lease = state.leases.get(&id).ok_or(Error::LeaseNotFound)?;
        if lease.revoking || lease.deadline.is_some_and(|d| d <= now) {
            return Err(Error::LeaseNotFound);
        }
        let (ttl, checkpointed) = (lease.ttl, lease.remaining > 0);
        state.set_deadline(id, now + secs(ttl));
        state.leases.get_mut(&id).expect("found above").renewals += 1;
        Ok((ttl, checkpointed))
    }

    /// Up to `max` leases whose deadline passed, marked as being revoked.
    pub fn expired(&self, now: Instant, max: usize) -> Vec<LeaseId> {
        let mut state = self.state.lock();
        let due: Vec<LeaseId> = state
            .queue
            .iter()
            .take_while(|(deadline, _)| *deadline <= now)
            .map(|(_, id)| *id)
            .collect();
        let mut out = Vec::new();
        for id in due {
            if out.len() >= max {
                break;
            }
            let lease = state.leases.get_mut(&id).expect("queued leases exist");
            if !lease.revoking {
                lease.revoking = true;
                out.push(id);
            }
        }
        out
    }

    /// A proposed revoke failed (no leader, timeout): the keeper may try again.
    pub fn revoke_failed(&self, id: LeaseId) {
        if let Some(lease) = self.state.lock().leases.get_mut(&id) {
            lease.revoking = false;
        }
    }

    /// The remaining TTLs worth checkpointing now: every lease that has run down since its last
    /// checkpoint, grant or renewal (whole seconds, rounded up), each with its keepalive count
    /// (for [`Lessor::renewed_since`]).
    pub fn checkpoints(&self, now: Instant) -> Vec<Checkpoint> {
        let state = self.state.lock();
        let mut out: Vec<Checkpoint> = state
            .leases
            .iter()
            .filter_map(|(id, lease)| {
                let left = lease.deadline?.saturating_duration_since(now);
                let remaining = left.as_secs() as i64 + i64::from(left.subsec_nanos() > 0);
                let remaining = remaining.max(1);
                let current = lease.restart_ttl();
                (remaining < current).then_some(Checkpoint {
                    id: *id,
                    remaining,
                    renewals: lease.renewals,
                })
            })
            .collect();
        out.sort_unstable_by_key(|c| c.id);
        out
    }

    /// The leases of `checkpoints` kept alive since they were computed: their checkpoint was
    /// stale when applied, and must be reset (a keepalive that came before the checkpoint was
    /// applied saw nothing to reset).
    pub fn renewed_since(&self, checkpoints: &[Checkpoint]) -> Vec<LeaseId> {
        let state = self.state.lock();
        checkpoints
            .iter()
            .filter(|c| {
                state
                    .leases
                    .get(&c.id)
                    .is_some_and(|l| l.renewals != c.renewals && l.remaining > 0)
            })
            .map(|c| c.id)
            .collect()
    }

    /// TimeToLive: `None` if the lease does not exist.
    pub fn time_to_live(&self, id: LeaseId, with_keys: bool) -> Option<TimeToLive> {
        let state = self.state.lock();
        let lease = state.leases.get(&id)?;
        let remaining = match lease.deadline {
            Some(d) => d.saturating_duration_since(Instant::now()).as_secs() as i64,
            None => lease.restart_ttl(),
        };
        Some(TimeToLive {
            remaining,
            granted: lease.ttl,
            keys: if with_keys {
                lease.keys.iter().cloned().collect()
            } else {
                Vec::new()
            },
        })
    }

    /// Every lease id, soonest deadline first (as etcd lists them), then by id.
    pub fn leases(&self) -> Vec<LeaseId> {
        let state = self.state.lock();
        let mut ids: Vec<(Option<Instant>, LeaseId)> = state
            .leases
            .iter()
            .map(|(id, lease)| (lease.deadline, *id))
            .collect();
        ids.sort_unstable();
        ids.into_iter().map(|(_, id)| id).collect()
    }

    /// The number of leases.
    pub fn len(&self) -> usize {
        self.state.lock().leases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks the two-way attachment invariant (tests).
    #[cfg(test)]
    fn check_invariants(&self) {
        let state = self.state.lock();
        let mut attached = 0;
        for (id, lease) in &state.leases {
            for key in &lease.keys {
                assert_eq!(state.key_lease.get(key), Some(id));
            }
            attached += lease.keys.len();
        }
        assert_eq!(attached, state.key_lease.len());
    }
}

impl Leases for Lessor {
    fn exists(&self, lease: i64) -> bool {
        Lessor::exists(self, lease)
    }
}

fn lease_key(id: LeaseId) -> Vec<u8> {
    let mut key = LEASE_PREFIX.to_vec();
    key.extend_from_slice(&id.to_be_bytes());
    key
}

fn record(id: LeaseId, ttl: i64, remaining_ttl: i64) -> Vec<u8> {
    LeaseRecord {
        id,
        ttl,
        remaining_ttl,
    }
    .encode_to_vec()
}

fn secs(s: i64) -> Duration {
    Duration::from_secs(s.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::View;
    use concord_proto::mvccpb::KeyValue;

    fn store() -> (sled::Db, KvStore) {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let kv = KvStore::open(db.open_tree("state").unwrap()).unwrap();
        (db, kv)
    }

    /// Puts `key` with `lease` the way the apply loop does: write, then follow the events.
    fn put(kv: &KvStore, lessor: &Lessor, key: &str, lease: LeaseId) {
        let applied = kv.applied() + 1;
        let mut batch = kv.write();
        let start = batch.events().len();
        batch.txn().put(key.as_bytes(), b"v", lease);
        lessor.apply_events(&batch.events()[start..]);
        batch.finish(applied);
    }

    fn grant(kv: &KvStore, lessor: &Lessor, id: LeaseId, ttl: i64) -> Result<()> {
        let applied = kv.applied() + 1;
        let mut batch = kv.write();
        let r = lessor.apply_grant(&mut batch, id, ttl);
        batch.finish(applied);
        r
    }

    fn revoke(kv: &KvStore, lessor: &Lessor, id: LeaseId) -> Result<Vec<Event>> {
        let applied = kv.applied() + 1;
        let mut batch = kv.write();
        let r = lessor.apply_revoke(&mut batch, id);
        let events = batch.events().to_vec();
        lessor.apply_events(&events);
        batch.finish(applied);
        r.map(|_| events)
    }

    fn live(kv: &KvStore, key: &str) -> Option<KeyValue> {
        kv.read()
            .range(KeyRange::new(key.as_bytes(), b""), Default::default())
            .unwrap()
            .kvs
            .pop()
    }

    #[test]
    fn a_revoke_deletes_every_attached_key_in_one_revision() {
        let (_db, kv) = store();
        let lessor = Lessor::open(&kv, 2).unwrap();
        grant(&kv, &lessor, 7, 10).unwrap();
        put(&kv, &lessor, "a", 7);
        put(&kv, &lessor, "b", 7);
        put(&kv, &lessor, "c", 0);
        lessor.check_invariants();
        let events = revoke(&kv, &lessor, 7).unwrap();
        assert_eq!(events.len(), 2);
        assert!(
            events
                .iter()
                .all(|e| e.kv.as_ref().unwrap().mod_revision == 5)
        );
        assert!(live(&kv, "a").is_none() && live(&kv, "b").is_none());
        assert!(live(&kv, "c").is_some(), "a key without the lease stays");
        assert!(!lessor.exists(7));
        assert_eq!(revoke(&kv, &lessor, 7), Err(Error::LeaseNotFound));
        lessor.check_invariants();
    }

    #[test]
    fn a_put_moves_a_key_between_leases_and_a_delete_detaches_it() {
        let (_db, kv) = store();
        let lessor = Lessor::open(&kv, 2).unwrap();
        grant(&kv, &lessor, 1, 10).unwrap();
        grant(&kv, &lessor, 2, 10).unwrap();
        put(&kv, &lessor, "k", 1);
        put(&kv, &lessor, "k", 2);
        assert_eq!(lessor.time_to_live(1, true).unwrap().keys.len(), 0);
        assert_eq!(
            lessor.time_to_live(2, true).unwrap().keys,
            vec![b"k".to_vec()]
        );
        put(&kv, &lessor, "k", 0);
        assert!(
            lessor.time_to_live(2, true).unwrap().keys.is_empty(),
            "detached"
        );
        lessor.check_invariants();
        let events = revoke(&kv, &lessor, 2).unwrap();
        assert!(events.is_empty(), "revoking an empty lease deletes nothing");
        assert!(live(&kv, "k").is_some());
    }

    #[test]
    fn a_taken_id_is_refused_and_ttls_are_bounded() {
        let (_db, kv) = store();
        let lessor = Lessor::open(&kv, 2).unwrap();
        grant(&kv, &lessor, 5, 10).unwrap();
        assert_eq!(grant(&kv, &lessor, 5, 10), Err(Error::LeaseExists));
        assert_eq!(lessor.granted_ttl(1), Ok(2), "raised to the minimum");
        assert_eq!(lessor.granted_ttl(-5), Ok(2));
        assert_eq!(lessor.granted_ttl(MAX_LEASE_TTL), Ok(MAX_LEASE_TTL));
        assert_eq!(
            lessor.granted_ttl(MAX_LEASE_TTL + 1),
            Err(Error::LeaseTtlTooLarge)
        );
    }

    #[test]
    fn leases_and_their_keys_survive_a_restart() {
        let (db, kv) = store();
        let lessor = Lessor::open(&kv, 2).unwrap();
        grant(&kv, &lessor, 9, 60).unwrap();
        put(&kv, &lessor, "x", 9);
        let applied = kv.applied() + 1;
        let mut batch = kv.write();
        lessor.apply_checkpoints(&mut batch, &[(9, 42)]);
        batch.finish(applied);
        kv.write_back().unwrap();
        drop((lessor, kv));
        let kv = KvStore::open(db.open_tree("state").unwrap()).unwrap();
        let lessor = Lessor::open(&kv, 2).unwrap();
        let ttl = lessor.time_to_live(9, true).unwrap();
        assert_eq!(
            (ttl.granted, ttl.remaining),
            (60, 42),
            "not primary: the checkpoint"
        );
        assert_eq!(ttl.keys, vec![b"x".to_vec()]);
        lessor.check_invariants();
    }

    /// A worked example of the expiry rule (see the module doc).
    #[test]
    fn only_the_primary_expires_and_a_new_leader_never_cuts_a_lease_short() {
        let (_db, kv) = store();
        let lessor = Lessor::open(&kv, 1).unwrap();
        grant(&kv, &lessor, 1, 10).unwrap();
        let later = Instant::now() + Duration::from_secs(3600);
        assert!(
            lessor.expired(later, 10).is_empty(),
            "a follower expires nothing"
        );
        assert_eq!(lessor.renew(1), Err(Error::NoLeader));

        lessor.promote(Duration::from_secs(1));
        let now = Instant::now();
        assert!(
            lessor.expired(now + Duration::from_secs(10), 10).is_empty(),
            "TTL + E"
        );
        assert_eq!(lessor.expired(now + Duration::from_secs(12), 10), vec![1]);
        assert!(
            lessor.expired(now + Duration::from_secs(12), 10).is_empty(),
            "proposed once"
        );
        assert_eq!(
            lessor.renew(1),
            Err(Error::LeaseNotFound),
            "expired: not renewed"
        );
        lessor.revoke_failed(1);
        assert_eq!(
            lessor.expired(now + Duration::from_secs(12), 10),
            vec![1],
            "retried"
        );
    }

    #[test]
    fn checkpoints_carry_the_run_down_ttl_and_renewal_asks_for_a_reset() {
        let (_db, kv) = store();
        let lessor = Lessor::open(&kv, 1).unwrap();
        grant(&kv, &lessor, 1, 100).unwrap();
        lessor.promote(Duration::ZERO);
        let now = Instant::now();
        assert!(lessor.checkpoints(now).is_empty(), "nothing ran down yet");
        let computed = lessor.checkpoints(now + Duration::from_millis(30_500));
        let cps: Vec<(LeaseId, i64)> = computed.iter().map(|c| (c.id, c.remaining)).collect();
        assert_eq!(cps, vec![(1, 70)]);
        assert!(lessor.renewed_since(&computed).is_empty());
        let applied = kv.applied() + 1;
        let mut batch = kv.write();
        lessor.apply_checkpoints(&mut batch, &cps);
        batch.finish(applied);
        assert_eq!(
            lessor.renew(1),
            Ok((100, true)),
            "renewal resets the checkpoint"
        );
        assert_eq!(
            lessor.renewed_since(&computed),
            vec![1],
            "a checkpoint computed before a keepalive is stale once applied"
        );
        lessor.demote();
        lessor.promote(Duration::ZERO);
        let ttl = lessor.time_to_live(1, false).unwrap();
        assert!(
            ttl.remaining <= 70,
            "a new leader starts from the checkpoint"
        );
    }
}
