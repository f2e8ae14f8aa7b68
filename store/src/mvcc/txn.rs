//! etcd's request semantics on top of the MVCC store: Range, Put, DeleteRange and Txn.
//!
//! Requests pass two gates, as in etcd:
//! 1. *Stateless checks* ([`check_range`], [`check_put`], [`check_delete`], [`check_txn`]) run in the
//!    gRPC adapter before a request is proposed: empty keys, bad sort options, too many operations,
//!    a key written twice by one transaction. A request that fails them never reaches Raft.
//! 2. *Stateful checks* run when the entry is applied, before anything is written: a lease that must
//!    exist, a key that `ignore_value` needs, a range revision that has been compacted. They are
//!    deterministic, so every replica rejects the same entries, and because they run first a
//!    transaction is applied entirely or not at all.
//!
//! A transaction's path (which branch each nested transaction takes) is decided from the state
//! *before* the transaction writes anything, like etcd's `compareToPath`; reads inside a write
//! transaction see its earlier writes. Only a transaction that changes something takes a new
//! revision. The response shapes follow etcd's applier: inner responses carry a header with only the
//! revision; a nested transaction's header is empty.

use std::cmp::Ordering;
use std::collections::HashSet;

use concord_proto::etcdserverpb::{
    Compare, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest,
    RangeResponse, RequestOp, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
    compare::{CompareResult, CompareTarget, TargetUnion},
    range_request::{SortOrder, SortTarget},
    request_op::Request,
    response_op::Response,
};
use concord_proto::mvccpb::KeyValue;

use super::key_index::KeyRange;
use super::revision::Rev;
use super::store::{RangeOptions, ReadTxn, View, WriteTxn};
use crate::error::{Error, Result};

/// Answers whether a lease exists; puts naming a missing lease fail with "lease not found".
pub trait Leases {
    fn exists(&self, id: i64) -> bool;
}

/// A lease table with no leases: what read-only transactions pass (they have no puts, so they
/// never consult it) and what tests use. The real table is `lease::Lessor`.
pub struct NoLeases;

impl Leases for NoLeases {
    fn exists(&self, _id: i64) -> bool {
        false
    }
}

// ---------------------------------------------------------------------------------------------
// Stateless checks (the gRPC adapter runs them before proposing).
// ---------------------------------------------------------------------------------------------

pub fn check_range(r: &RangeRequest) -> Result<()> {
    if r.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    if SortOrder::try_from(r.sort_order).is_err() || SortTarget::try_from(r.sort_target).is_err() {
        return Err(Error::InvalidSortOption);
    }
    Ok(())
}

pub fn check_put(r: &PutRequest) -> Result<()> {
    if r.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(Error::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(Error::LeaseProvided);
    }
    Ok(())
}

pub fn check_delete(r: &DeleteRangeRequest) -> Result<()> {
    if r.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    Ok(())
}

/// etcd's `checkTxnRequest` plus `checkIntervals` on both branches.
///
/// Two limits etcd does not have bound the work a request can cause, since nested transactions
/// multiply: at most [`MAX_TXN_DEPTH`] levels of nesting (deeper messages would also exceed the
/// protobuf decoder's recursion limit once wrapped in a Raft entry), and at most
/// [`TOTAL_OPS_FACTOR`] × `max_ops` operations in the whole tree (the duplicate-key check compares
/// puts with deletes).
pub fn check_txn(r: &TxnRequest, max_ops: usize) -> Result<()> {
    check_txn_ops(r, max_ops, 0, &mut (0, max_ops * TOTAL_OPS_FACTOR))?;
    check_intervals(&r.success)?;
    check_intervals(&r.failure)?;
    Ok(())
}

/// Deepest nesting of transactions accepted.
pub const MAX_TXN_DEPTH: usize = 32;
/// The whole transaction tree may hold this many times `--max-txn-ops` operations.
pub const TOTAL_OPS_FACTOR: usize = 8;

/// etcd's per-level checks; `budget` is (ops counted so far, most allowed in the tree).
fn check_txn_ops(
    r: &TxnRequest,
    max_ops: usize,
    depth: usize,
    budget: &mut (usize, usize),
) -> Result<()> {
    if depth > MAX_TXN_DEPTH {
        return Err(Error::TxnTooDeep);
    }
    let ops = r.compare.len().max(r.success.len()).max(r.failure.len());
    if ops > max_ops {
        return Err(Error::TooManyOps);
    }
    budget.0 += r.compare.len() + r.success.len() + r.failure.len();
    if budget.0 > budget.1 {
        return Err(Error::TooManyOps);
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(Error::EmptyKey);
    }
    for op in r.success.iter().chain(&r.failure) {
        match &op.request {
            Some(Request::RequestRange(r)) => check_range(r)?,
            Some(Request::RequestPut(r)) => check_put(r)?,
            Some(Request::RequestDeleteRange(r)) => check_delete(r)?,
            // etcd passes the remaining budget down (which can be negative, so any nested op then
            // fails); it never grows.
            Some(Request::RequestTxn(t)) => {
                check_txn_ops(t, max_ops.saturating_sub(ops), depth + 1, budget)?
            }
            None => return Err(Error::KeyNotFound),
        }
    }
    Ok(())
}

/// A deleted interval `[key, end)`, or a single key when `end` is empty (etcd's affine intervals,
/// compared as raw bytes: an end of "\0" deletes from the key onwards but, as in etcd, this check
/// then treats the interval as empty).
struct Deleted {
    key: Vec<u8>,
    end: Vec<u8>,
}

impl Deleted {
    fn contains(&self, k: &[u8]) -> bool {
        if self.end.is_empty() {
            k == self.key.as_slice()
        } else {
            k >= self.key.as_slice() && k < self.end.as_slice()
        }
    }
}

/// etcd's `checkIntervals`: within one branch no key may be put twice, nor put and deleted;
/// the two branches of a nested transaction may put the same key (only one runs).
fn check_intervals(ops: &[RequestOp]) -> Result<(HashSet<Vec<u8>>, Vec<Deleted>)> {
    let mut dels: Vec<Deleted> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(Request::RequestDeleteRange(d)) => Some(Deleted {
                key: d.key.clone(),
                end: d.range_end.clone(),
            }),
            _ => None,
        })
        .collect();
    let deleted = |dels: &[Deleted], k: &[u8]| dels.iter().any(|d| d.contains(k));
    let mut puts = HashSet::new();
    for op in ops {
        let Some(Request::RequestTxn(t)) = &op.request else {
            continue;
        };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || deleted(&dels, k) {
                return Err(Error::DuplicateKey);
            }
        }
        for k in &puts_else {
            if (puts.contains(k) && !puts_then.contains(k)) || deleted(&dels, k) {
                return Err(Error::DuplicateKey);
            }
        }
        puts.extend(puts_then);
        puts.extend(puts_else);
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let Some(Request::RequestPut(p)) = &op.request else {
            continue;
        };
        if puts.contains(&p.key) || deleted(&dels, &p.key) {
            return Err(Error::DuplicateKey);
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}

/// Whether a transaction only reads (then it is served without Raft, like a Range).
pub fn is_read_only(r: &TxnRequest) -> bool {
    r.success
        .iter()
        .chain(&r.failure)
        .all(|op| match &op.request {
            Some(Request::RequestRange(_)) => true,
            Some(Request::RequestTxn(t)) => is_read_only(t),
            _ => false,
        })
}

/// Whether every range of a read-only transaction is serializable.
pub fn is_serializable(r: &TxnRequest) -> bool {
    r.success
        .iter()
        .chain(&r.failure)
        .all(|op| match &op.request {
            Some(Request::RequestRange(r)) => r.serializable,
            Some(Request::RequestTxn(t)) => is_serializable(t),
            _ => true,
        })
}

// ---------------------------------------------------------------------------------------------
// Execution.
// ---------------------------------------------------------------------------------------------

fn header(revision: Rev) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

/// Range: etcd's applier semantics (filters, sorting, `more`, `count`, keys_only, count_only).
pub fn range(view: &impl View, r: &RangeRequest) -> Result<RangeResponse> {
    let filtered = r.sort_order != SortOrder::None as i32
        || r.min_mod_revision != 0
        || r.max_mod_revision != 0
        || r.min_create_revision != 0
        || r.max_create_revision != 0;
    // Fetch everything when results are filtered or sorted; otherwise one extra for `more`.
    let limit = match (filtered, r.limit) {
        (true, _) | (false, ..=0) => 0,
        (false, n) => n as usize + 1,
    };
    let opts = RangeOptions {
        limit,
        rev: r.revision,
        count_only: r.count_only,
    };
    let mut res = view.range(KeyRange::new(&r.key, &r.range_end), opts)?;
    res.kvs.retain(|kv| {
        (r.max_mod_revision == 0 || kv.mod_revision <= r.max_mod_revision)
            && (r.min_mod_revision == 0 || kv.mod_revision >= r.min_mod_revision)
            && (r.max_create_revision == 0 || kv.create_revision <= r.max_create_revision)
            && (r.min_create_revision == 0 || kv.create_revision >= r.min_create_revision)
    });
    sort(&mut res.kvs, r)?;
    let mut more = false;
    if r.limit > 0 && res.kvs.len() > r.limit as usize {
        res.kvs.truncate(r.limit as usize);
        more = true;
    }
    if r.keys_only {
        res.kvs.iter_mut().for_each(|kv| kv.value.clear());
    }
    Ok(RangeResponse {
        header: header(res.rev),
        kvs: res.kvs,
        more,
        count: res.count as i64,
    })
}

/// Sorts as etcd does: results come in ascending key order; a non-key target with no order sorts
/// ascending; the sort is stable, so ties keep key order.
fn sort(kvs: &mut [KeyValue], r: &RangeRequest) -> Result<()> {
    let target = SortTarget::try_from(r.sort_target).map_err(|_| Error::InvalidSortOption)?;
    let mut order = SortOrder::try_from(r.sort_order).map_err(|_| Error::InvalidSortOption)?;
    if target != SortTarget::Key && order == SortOrder::None {
        order = SortOrder::Ascend;
    }
    let cmp = |a: &KeyValue, b: &KeyValue| -> Ordering {
        match target {
            SortTarget::Key => a.key.cmp(&b.key),
            SortTarget::Version => a.version.cmp(&b.version),
            SortTarget::Create => a.create_revision.cmp(&b.create_revision),
            SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
            SortTarget::Value => a.value.cmp(&b.value),
        }
    };
    match order {
        SortOrder::None => {}
        SortOrder::Ascend => kvs.sort_by(cmp),
        SortOrder::Descend => kvs.sort_by(|a, b| cmp(b, a)),
    }
    Ok(())
}

/// Put, once the stateful checks passed.
pub fn put(txn: &mut WriteTxn<'_, '_>, r: &PutRequest) -> Result<PutResponse> {
    let prev = if r.ignore_value || r.ignore_lease || r.prev_kv {
        txn.range(KeyRange::new(&r.key, b""), RangeOptions::default())?
            .kvs
            .pop()
    } else {
        None
    };
    let (value, lease) = match &prev {
        Some(p) => (
            if r.ignore_value {
                &p.value[..]
            } else {
                &r.value[..]
            },
            if r.ignore_lease { p.lease } else { r.lease },
        ),
        None if r.ignore_value || r.ignore_lease => return Err(Error::KeyNotFound),
        None => (&r.value[..], r.lease),
    };
    let kv = txn.put(&r.key, value, lease);
    Ok(PutResponse {
        header: header(kv.mod_revision),
        prev_kv: if r.prev_kv { prev } else { None },
    })
}

/// DeleteRange.
pub fn delete_range(
    txn: &mut WriteTxn<'_, '_>,
    r: &DeleteRangeRequest,
) -> Result<DeleteRangeResponse> {
    let range = KeyRange::new(&r.key, &r.range_end);
    let prev_kvs = if r.prev_kv {
        txn.range(range, RangeOptions::default())?.kvs
    } else {
        Vec::new()
    };
    let deleted = txn.delete_range(range) as i64;
    Ok(DeleteRangeResponse {
        header: header(txn.rev()),
        deleted,
        prev_kvs,
    })
}

/// Which branch a transaction takes, and the paths of the nested transactions in that branch.
struct Path {
    succeeded: bool,
    nested: Vec<Path>,
}

fn path(view: &impl View, r: &TxnRequest) -> Result<Path> {
    let mut succeeded = true;
    for c in &r.compare {
        if !compare(view, c)? {
            succeeded = false;
            break;
        }
    }
    let ops = if succeeded { &r.success } else { &r.failure };
    let nested = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(Request::RequestTxn(t)) => Some(path(view, t)),
            _ => None,
        })
        .collect::<Result<_>>()?;
    Ok(Path { succeeded, nested })
}

/// etcd's `applyCompare`: every key in the compare's range must satisfy it; a missing key compares
/// as zero values, except that a VALUE compare on a missing key always fails. A storage failure is
/// an error, not a failed compare (it is not deterministic).
fn compare(view: &impl View, c: &Compare) -> Result<bool> {
    let res = view.range(KeyRange::new(&c.key, &c.range_end), RangeOptions::default())?;
    if res.kvs.is_empty() {
        return Ok(c.target != CompareTarget::Value as i32 && compare_kv(c, &KeyValue::default()));
    }
    Ok(res.kvs.iter().all(|kv| compare_kv(c, kv)))
}

fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    let ordering = match (CompareTarget::try_from(c.target), &c.target_union) {
        (Ok(CompareTarget::Value), Some(TargetUnion::Value(v))) => kv.value[..].cmp(&v[..]),
        (Ok(CompareTarget::Value), _) => kv.value[..].cmp(&[][..]),
        (Ok(CompareTarget::Version), u) => kv.version.cmp(&union_int(u, CompareTarget::Version)),
        (Ok(CompareTarget::Create), u) => {
            kv.create_revision.cmp(&union_int(u, CompareTarget::Create))
        }
        (Ok(CompareTarget::Mod), u) => kv.mod_revision.cmp(&union_int(u, CompareTarget::Mod)),
        (Ok(CompareTarget::Lease), u) => kv.lease.cmp(&union_int(u, CompareTarget::Lease)),
        // etcd leaves the comparison at 0 for a target it does not know.
        (Err(_), _) => Ordering::Equal,
    };
    match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => ordering == Ordering::Equal,
        Ok(CompareResult::NotEqual) => ordering != Ordering::Equal,
        Ok(CompareResult::Greater) => ordering == Ordering::Greater,
        Ok(CompareResult::Less) => ordering == Ordering::Less,
        Err(_) => true,
    }
}

/// The integer a compare names for `target`; 0 when the union holds another kind (as in etcd).
fn union_int(u: &Option<TargetUnion>, target: CompareTarget) -> i64 {
    match (u, target) {
        (Some(TargetUnion::Version(v)), CompareTarget::Version) => *v,
        (Some(TargetUnion::CreateRevision(v)), CompareTarget::Create) => *v,
        (Some(TargetUnion::ModRevision(v)), CompareTarget::Mod) => *v,
        (Some(TargetUnion::Lease(v)), CompareTarget::Lease) => *v,
        _ => 0,
    }
}

/// The stateful checks of the ops a transaction will run (etcd's `checkRequests`).
fn check_ops(view: &impl View, r: &TxnRequest, p: &Path, leases: &dyn Leases) -> Result<()> {
    let ops = if p.succeeded { &r.success } else { &r.failure };
    let mut nested = p.nested.iter();
    for op in ops {
        match &op.request {
            Some(Request::RequestTxn(t)) => {
                let np = nested.next().expect("one path per nested transaction");
                check_ops(view, t, np, leases)?;
            }
            Some(Request::RequestRange(rr)) if rr.revision != 0 => {
                if rr.revision > view.rev() {
                    return Err(Error::FutureRevision);
                }
                if rr.revision < view.compacted() {
                    return Err(Error::Compacted);
                }
            }
            Some(Request::RequestPut(p)) => check_put_state(view, p, leases)?,
            _ => {}
        }
    }
    Ok(())
}

/// The stateful checks of a put: its lease exists; `ignore_*` needs the key to exist.
pub fn check_put_state(view: &impl View, p: &PutRequest, leases: &dyn Leases) -> Result<()> {
    if p.ignore_value || p.ignore_lease {
        let res = view.range(
            KeyRange::new(&p.key, b""),
            RangeOptions {
                count_only: true,
                ..Default::default()
            },
        )?;
        if res.count == 0 {
            return Err(Error::KeyNotFound);
        }
    }
    if p.lease != 0 && !leases.exists(p.lease) {
        return Err(Error::LeaseNotFound);
    }
    Ok(())
}

/// A transaction that only reads, served from a read view.
pub fn txn_read(view: &mut ReadTxn<'_>, r: &TxnRequest) -> Result<TxnResponse> {
    let p = path(&*view, r)?;
    check_ops(&*view, r, &p, &NoLeases)?;
    let mut resp = run_ops(view, r, &p)?;
    resp.header = header(view.rev());
    Ok(resp)
}

/// A transaction that may write, applied inside the entry's write transaction.
pub fn txn_write(
    txn: &mut WriteTxn<'_, '_>,
    r: &TxnRequest,
    leases: &dyn Leases,
) -> Result<TxnResponse> {
    let p = path(&*txn, r)?;
    check_ops(&*txn, r, &p, leases)?;
    let mut resp = run_ops(txn, r, &p)?;
    resp.header = header(txn.rev());
    Ok(resp)
}

/// What runs a transaction's operations: reads on any view, writes only in a write transaction.
trait Ops: View {
    /// Runs a put or a delete-range.
    fn write(&mut self, request: &Request) -> Result<Response>;
}

impl Ops for ReadTxn<'_> {
    fn write(&mut self, _request: &Request) -> Result<Response> {
        Err(Error::Raft(
            "a read-only transaction reached a write (is_read_only disagrees with run_ops)".into(),
        ))
    }
}

impl Ops for WriteTxn<'_, '_> {
    fn write(&mut self, request: &Request) -> Result<Response> {
        match request {
            Request::RequestPut(p) => put(self, p).map(Response::ResponsePut),
            Request::RequestDeleteRange(d) => {
                delete_range(self, d).map(Response::ResponseDeleteRange)
            }
            Request::RequestRange(_) | Request::RequestTxn(_) => {
                unreachable!("run_ops runs ranges and nested transactions itself")
            }
        }
    }
}

/// Runs the ops of the branch `p` chose, nested transactions included.
fn run_ops(view: &mut impl Ops, r: &TxnRequest, p: &Path) -> Result<TxnResponse> {
    let ops = if p.succeeded { &r.success } else { &r.failure };
    let mut nested = p.nested.iter();
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        let response = match &op.request {
            Some(Request::RequestRange(rr)) => Response::ResponseRange(range(&*view, rr)?),
            Some(Request::RequestTxn(t)) => {
                let np = nested.next().expect("one path per nested transaction");
                let mut inner = run_ops(view, t, np)?;
                inner.header = Some(ResponseHeader::default());
                Response::ResponseTxn(inner)
            }
            Some(write) => view.write(write)?,
            None => return Err(Error::KeyNotFound),
        };
        responses.push(ResponseOp {
            response: Some(response),
        });
    }
    Ok(TxnResponse {
        header: None,
        succeeded: p.succeeded,
        responses,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::KvStore;
    use concord_proto::etcdserverpb::compare::CompareResult as R;

    fn store() -> (sled::Db, KvStore) {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let store = KvStore::open(db.open_tree("s").unwrap()).unwrap();
        (db, store)
    }

    fn put_op(k: &str, v: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: k.into(),
                value: v.into(),
                ..Default::default()
            })),
        }
    }

    fn del_op(k: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                key: k.into(),
                range_end: end.into(),
                ..Default::default()
            })),
        }
    }

    fn txn_op(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestTxn(TxnRequest {
                success,
                failure,
                ..Default::default()
            })),
        }
    }

    fn write(store: &KvStore, r: &TxnRequest) -> Result<TxnResponse> {
        let mut batch = store.write();
        let resp = txn_write(&mut batch.txn(), r, &NoLeases);
        batch.finish(0);
        resp
    }

    #[test]
    fn duplicate_keys_follow_etcds_interval_rules() {
        let dup = |ops: Vec<RequestOp>| check_intervals(&ops).err();
        assert_eq!(
            dup(vec![put_op("a", "1"), put_op("a", "2")]),
            Some(Error::DuplicateKey)
        );
        assert_eq!(
            dup(vec![put_op("b", "1"), del_op("a", "c")]),
            Some(Error::DuplicateKey)
        );
        assert_eq!(
            dup(vec![del_op("a", "c"), del_op("b", "")]),
            None,
            "deletes may overlap"
        );
        assert_eq!(
            dup(vec![txn_op(vec![put_op("a", "1")], vec![put_op("a", "2")])]),
            None,
            "the two branches of a nested txn never both run"
        );
        assert_eq!(
            dup(vec![
                put_op("a", "0"),
                txn_op(vec![put_op("a", "1")], vec![])
            ]),
            Some(Error::DuplicateKey)
        );
    }

    #[test]
    fn nesting_and_tree_size_are_bounded() {
        let mut t = TxnRequest::default();
        for _ in 0..MAX_TXN_DEPTH {
            t = TxnRequest {
                success: vec![txn_op(t.success, vec![])],
                ..Default::default()
            };
        }
        assert_eq!(
            check_txn(&t, 128),
            Ok(()),
            "{MAX_TXN_DEPTH} levels are fine"
        );
        // ... and still decode once wrapped in a Raft entry's proposal (prost's recursion limit).
        use crate::raft::proposal::{Command, Proposal};
        use prost::Message;
        let proposal = Proposal {
            id: 1,
            origin: 1,
            command: Some(Command::Txn(t.clone())),
        };
        assert!(Proposal::decode(proposal.encode_to_vec().as_slice()).is_ok());
        let deeper = TxnRequest {
            success: vec![txn_op(t.success, vec![])],
            ..Default::default()
        };
        assert_eq!(check_txn(&deeper, 128), Err(Error::TxnTooDeep));
        // Two levels of 64 nested txns, each with 16 puts: 64 + 64 * 16 = 1088 ops > 8 * 128.
        let wide = TxnRequest {
            success: (0..64)
                .map(|i| {
                    txn_op(
                        (0..16).map(|j| put_op(&format!("{i}/{j}"), "v")).collect(),
                        vec![],
                    )
                })
                .collect(),
            ..Default::default()
        };
        assert_eq!(check_txn(&wide, 128), Err(Error::TooManyOps));
    }

    #[test]
    fn too_many_ops_and_empty_ops_are_rejected() {
        let big = TxnRequest {
            success: (0..129).map(|i| put_op(&format!("k{i}"), "v")).collect(),
            ..Default::default()
        };
        assert_eq!(check_txn(&big, 128), Err(Error::TooManyOps));
        let empty = TxnRequest {
            success: vec![RequestOp { request: None }],
            ..Default::default()
        };
        assert_eq!(check_txn(&empty, 128), Err(Error::KeyNotFound));
    }

    #[test]
    fn a_compare_and_swap_takes_the_branch_of_the_state_before_it() {
        let (_db, store) = store();
        let cas = TxnRequest {
            compare: vec![Compare {
                result: R::Equal as i32,
                target: CompareTarget::Version as i32,
                key: b"lock".to_vec(),
                target_union: Some(TargetUnion::Version(0)),
                range_end: vec![],
            }],
            success: vec![put_op("lock", "me")],
            failure: vec![],
        };
        let first = write(&store, &cas).unwrap();
        assert!(first.succeeded, "a missing key has version 0");
        assert_eq!(first.header.unwrap().revision, 2);
        let second = write(&store, &cas).unwrap();
        assert!(!second.succeeded);
        assert_eq!(
            second.header.unwrap().revision,
            2,
            "a txn that writes nothing takes no revision"
        );
    }

    #[test]
    fn a_value_compare_on_a_missing_key_fails() {
        let (_db, store) = store();
        let txn = TxnRequest {
            compare: vec![Compare {
                result: R::NotEqual as i32,
                target: CompareTarget::Value as i32,
                key: b"missing".to_vec(),
                target_union: Some(TargetUnion::Value(b"x".to_vec())),
                range_end: vec![],
            }],
            ..Default::default()
        };
        assert!(!write(&store, &txn).unwrap().succeeded);
    }

    #[test]
    fn a_put_with_an_unknown_lease_fails_before_writing_anything() {
        let (_db, store) = store();
        let mut leased = put_op("b", "2");
        if let Some(Request::RequestPut(p)) = &mut leased.request {
            p.lease = 42;
        }
        let txn = TxnRequest {
            success: vec![put_op("a", "1"), leased],
            ..Default::default()
        };
        assert_eq!(write(&store, &txn), Err(Error::LeaseNotFound));
        assert_eq!(store.current_revision(), 1, "nothing was written");
    }

    #[test]
    fn sorting_and_limits_match_etcd() {
        let (_db, store) = store();
        for (k, v) in [("a", "3"), ("b", "1"), ("c", "2")] {
            write(
                &store,
                &TxnRequest {
                    success: vec![put_op(k, v)],
                    ..Default::default()
                },
            )
            .unwrap();
        }
        let read = store.read();
        let req = RangeRequest {
            key: b"a".to_vec(),
            range_end: b"\0".to_vec(),
            limit: 2,
            sort_order: SortOrder::Descend as i32,
            sort_target: SortTarget::Value as i32,
            ..Default::default()
        };
        let resp = range(&read, &req).unwrap();
        let keys: Vec<_> = resp.kvs.iter().map(|kv| kv.key.clone()).collect();
        assert_eq!(keys, vec![b"a".to_vec(), b"c".to_vec()]);
        assert!(resp.more);
        assert_eq!(resp.count, 3);
        assert_eq!(resp.header.unwrap().revision, 4);
    }
}
