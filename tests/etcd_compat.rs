//! Differential test: `etcdctl` cannot tell Concord from a real etcd 3.4 — the KV story.
//!
//! One script, in order: `put` in every shape etcdctl can send, `get` with every flag, `txn` (every
//! compare target and result, both branches, the op limit), `del`, `compaction` and reads below it,
//! then maintenance (health, status, hashes, alarms, defragmentation). Every write bumps the
//! revision of both servers by one, so revisions, versions and create/mod revisions must match
//! exactly. Requests etcdctl 3.4 cannot make (count-only, min/max mod/create revision filters,
//! lease compares — etcdctl 3.4 panics parsing `lease("k") = "0"` — and requests over the size
//! limit, which do not fit in one argv string) are sent with the `etcd-client` crate.
//!
//! The harness — how both servers are started, what is compared, what is normalized and why,
//! `CONCORD_COMPAT_TRACE=1`, and the skip rule (`CONCORD_REQUIRE_ETCD=1`) — is described in
//! `tests/common/mod.rs`. Watch and Lease have their own story: `etcd_compat_watch_lease.rs`.
//!
//! `CONCORD_COMPAT_TRACE=1 cargo test --test etcd_compat -- --nocapture` prints every step with
//! etcd's (normalized) output.

mod common;

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use common::{Differ, show_get, show_put, show_txn};
use etcd_client::{
    Client, Compare, CompareOp, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
};

// ---------------------------------------------------------------------------------------------
// The script: one story, in order. Every write bumps the revision of both servers by one.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_cannot_tell_concord_from_etcd() {
    common::run("etcd_compat", script).await;
}

fn script(d: &mut Differ) {
    puts(d);
    gets(d);
    txns(d);
    deletes(d);
    compactions(d);
    grpc_only(d);
    maintenance(d);
}

/// `put` in every shape etcdctl can send.
fn puts(d: &mut Differ) {
    d.ctl("put: plain", &["put", "k", "v"]);
    d.ctl(
        "put: overwrite with --prev-kv",
        &["put", "k", "v2", "--prev-kv"],
    );
    d.ctl("put: -w json", &["put", "k", "v3", "-w", "json"]);
    d.ctl(
        "put: --prev-kv -w json",
        &["put", "k", "v4", "--prev-kv", "-w", "json"],
    );
    d.ctl(
        "put: value with spaces",
        &["put", "spaced", "hello big world"],
    );
    d.ctl(
        "put: value with newlines",
        &["put", "multi", "line one\nline two\n"],
    );
    d.ctl(
        "put: value that looks like a flag",
        &["put", "dash", "--", "-v"],
    );
    d.ctl("put: empty value", &["put", "emptyval", ""]);
    d.ctl(
        "put: unicode key and value",
        &["put", "ключ/κλειδί", "värde ✓"],
    );
    let binary = OsString::from_vec(vec![0xff, 0xfe, b'b', 0x01, 0x7f, 0x80]);
    d.ctl_os(
        "put: non-UTF-8 value",
        vec!["put".into(), "bin".into(), binary],
        None,
    );
    // 100 KiB: large, but still one argv string (Linux caps a single argument at 128 KiB).
    let big: String = (0..100 * 1024)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    d.ctl("put: 100 KiB value", &["put", "big", &big]);
    d.ctl("put: empty key", &["put", "", "v"]);

    d.ctl(
        "put: --ignore-value on an existing key",
        &["put", "k", "--ignore-value"],
    );
    d.ctl(
        "put: --ignore-value --prev-kv",
        &["put", "k", "--ignore-value", "--prev-kv", "-w", "json"],
    );
    d.ctl(
        "put: --ignore-value on a missing key",
        &["put", "missing", "--ignore-value"],
    );
    d.ctl(
        "put: --ignore-lease on an existing key",
        &["put", "k", "v5", "--ignore-lease"],
    );
    d.ctl(
        "put: --ignore-lease on a missing key",
        &["put", "missing", "v", "--ignore-lease"],
    );
    d.ctl(
        "put: --ignore-value --ignore-lease",
        &["put", "k", "--ignore-value", "--ignore-lease"],
    );
    d.ctl("put: unknown lease", &["put", "k", "v", "--lease=1234"]);
    d.ctl(
        "put: --lease with --ignore-lease",
        &["put", "k", "v", "--lease=1234", "--ignore-lease"],
    );
    d.ctl("get: k after the puts", &["get", "k", "-w", "json"]);
}

/// The keys the range and sort steps read: `s/a`..`s/e`, created in the order c, a, e, b, d, with
/// versions b=1 d=2 a=3 c=4 e=5 and values whose order is neither the key order nor the creation
/// order — so no sort target has ties (etcd's sort is not stable, ties would be unspecified).
fn seed_sort_keys(d: &mut Differ) {
    let writes = [
        ("s/c", "c1"),
        ("s/a", "a1"),
        ("s/e", "e1"),
        ("s/b", "zebra"),
        ("s/d", "d1"),
        ("s/e", "e2"),
        ("s/c", "c2"),
        ("s/a", "a2"),
        ("s/e", "e3"),
        ("s/d", "quail"),
        ("s/c", "c3"),
        ("s/e", "e4"),
        ("s/a", "mole"),
        ("s/c", "bee"),
        ("s/e", "fox"),
    ];
    for (key, value) in writes {
        d.ctl(&format!("seed: put {key} {value}"), &["put", key, value]);
    }
    for key in ["a", "b", "c", "d"] {
        d.ctl(
            &format!("seed: put {key}"),
            &["put", key, &format!("value-{key}")],
        );
    }
}

/// `get` with every flag etcdctl 3.4 has.
fn gets(d: &mut Differ) {
    let first_rev = d.revision();
    seed_sort_keys(d);
    d.ctl("get: single key", &["get", "k"]);
    d.ctl("get: missing key", &["get", "nope"]);
    d.ctl("get: empty key", &["get", ""]);
    d.ctl("get: --prefix", &["get", "s/", "--prefix"]);
    d.ctl(
        "get: --prefix of everything --keys-only",
        &["get", "", "--prefix", "--keys-only"],
    );
    d.ctl("get: --from-key", &["get", "s/c", "--from-key"]);
    d.ctl(
        "get: --from-key of everything --keys-only",
        &["get", "", "--from-key", "--keys-only"],
    );
    d.ctl("get: range [a, c)", &["get", "a", "c"]);
    d.ctl("get: range end before the key", &["get", "c", "a"]);
    d.ctl("get: range end equal to the key", &["get", "c", "c"]);
    d.ctl("get: --limit", &["get", "s/", "--prefix", "--limit=2"]);
    d.ctl(
        "get: --limit -w json (more, count)",
        &["get", "s/", "--prefix", "--limit=2", "-w", "json"],
    );
    d.ctl(
        "get: --limit above count -w json",
        &["get", "s/", "--prefix", "--limit=50", "-w", "json"],
    );

    for target in ["KEY", "VERSION", "CREATE", "MODIFY", "VALUE"] {
        for order in ["ASCEND", "DESCEND"] {
            let (sort, ord) = (format!("--sort-by={target}"), format!("--order={order}"));
            d.ctl(
                &format!("get: {sort} {ord}"),
                &["get", "s/", "--prefix", &sort, &ord],
            );
            d.ctl(
                &format!("get: {sort} {ord} --limit=2 -w json"),
                &[
                    "get",
                    "s/",
                    "--prefix",
                    &sort,
                    &ord,
                    "--limit=2",
                    "-w",
                    "json",
                ],
            );
        }
    }
    d.ctl(
        "get: --order=DESCEND alone",
        &["get", "s/", "--prefix", "--order=DESCEND"],
    );
    d.ctl(
        "get: --sort-by=VALUE alone",
        &["get", "s/", "--prefix", "--sort-by=VALUE"],
    );
    d.ctl(
        "get: --sort-by=MODIFY --order=DESCEND over a range",
        &["get", "a", "d", "--sort-by=MODIFY", "--order=DESCEND"],
    );

    let now = d.revision();
    d.ctl(
        "get: --rev=current",
        &["get", "s/", "--prefix", &format!("--rev={now}")],
    );
    d.ctl(
        "get: --rev=0 means current",
        &["get", "s/", "--prefix", "--rev=0"],
    );
    d.ctl("get: --rev=-1", &["get", "k", "--rev=-1"]);
    d.ctl(
        "get: --rev=2 (the first put)",
        &["get", "k", "--rev=2", "-w", "json"],
    );
    d.ctl(
        "get: --rev in the middle of the seeding",
        &[
            "get",
            "s/",
            "--prefix",
            &format!("--rev={}", first_rev + 6),
            "-w",
            "json",
        ],
    );
    d.ctl(
        "get: --rev before the key existed",
        &["get", "s/", "--prefix", &format!("--rev={first_rev}")],
    );
    d.ctl(
        "get: --rev=future",
        &["get", "k", &format!("--rev={}", now + 100)],
    );
    d.ctl(
        "get: --rev=current+1",
        &["get", "k", &format!("--rev={}", now + 1)],
    );

    d.ctl(
        "get: --keys-only",
        &["get", "s/", "--prefix", "--keys-only"],
    );
    d.ctl(
        "get: --keys-only -w json",
        &["get", "s/", "--prefix", "--keys-only", "-w", "json"],
    );
    d.ctl(
        "get: --print-value-only",
        &["get", "s/", "--prefix", "--print-value-only"],
    );
    d.ctl(
        "get: --consistency=s",
        &["get", "s/", "--prefix", "--consistency=s", "-w", "json"],
    );
    d.ctl(
        "get: --consistency=l",
        &["get", "s/", "--prefix", "--consistency=l", "-w", "json"],
    );
    d.ctl("get: -w json", &["get", "k", "-w", "json"]);
    d.ctl("get: -w fields", &["get", "k", "-w", "fields"]);
    d.ctl(
        "get: --prefix -w fields",
        &["get", "s/", "--prefix", "-w", "fields"],
    );
    d.ctl("get: --hex", &["get", "bin", "--hex"]);
    d.ctl(
        "get: non-UTF-8 value -w json",
        &["get", "bin", "-w", "json"],
    );
    d.ctl(
        "get: unicode key -w json",
        &["get", "ключ/κλειδί", "-w", "json"],
    );
    d.ctl("get: value with newlines", &["get", "multi"]);
    d.ctl("get: value that looks like a flag", &["get", "dash"]);
    d.ctl(
        "get: empty value -w json",
        &["get", "emptyval", "-w", "json"],
    );
    d.ctl("get: 100 KiB value", &["get", "big", "--print-value-only"]);
}

/// `txn` read from stdin (compares, blank line, success ops, blank line, failure ops, blank line).
fn txns(d: &mut Differ) {
    d.ctl("txn setup: put t1", &["put", "t1", "one"]);
    let t1_create = d.revision();
    d.ctl("txn setup: put t2", &["put", "t2", "two"]);
    d.ctl("txn setup: put t1 again", &["put", "t1", "uno"]);
    let t1_mod = d.revision();
    let (create, modr) = (t1_create.to_string(), t1_mod.to_string());

    // Every compare target, every result, both branches.
    let cases: Vec<(String, &str)> = vec![
        (r#"value("t1") = "uno""#.into(), "value ="),
        (r#"value("t1") != "uno""#.into(), "value !="),
        (r#"value("t1") > "a""#.into(), "value >"),
        (r#"value("t1") < "a""#.into(), "value <"),
        (r#"version("t1") > "0""#.into(), "version >"),
        (r#"version("t1") = "2""#.into(), "version ="),
        (r#"version("t1") != "2""#.into(), "version !="),
        (r#"version("t1") < "2""#.into(), "version <"),
        (format!(r#"create("t1") = "{create}""#), "create ="),
        (format!(r#"create("t1") != "{create}""#), "create !="),
        (format!(r#"create("t1") > "{create}""#), "create >"),
        (format!(r#"create("t1") < "{modr}""#), "create <"),
        (format!(r#"mod("t1") < "{}""#, t1_mod + 1), "mod <"),
        (format!(r#"mod("t1") = "{modr}""#), "mod ="),
        (format!(r#"mod("t1") != "{modr}""#), "mod !="),
        (format!(r#"mod("t1") > "{modr}""#), "mod >"),
        (
            r#"version("absent") = "0""#.into(),
            "version of a missing key",
        ),
        (
            r#"create("absent") = "0""#.into(),
            "create of a missing key",
        ),
        (r#"mod("absent") < "1""#.into(), "mod of a missing key"),
        (
            r#"value("absent") = """#.into(),
            "value of a missing key (always false in etcd)",
        ),
        (
            r#"value("absent") != "x""#.into(),
            "value != of a missing key (always false in etcd)",
        ),
    ];
    for (compare, name) in &cases {
        d.txn(
            &format!("txn: {name}"),
            &[compare],
            &["get t1", "put tx/ok yes"],
            &["get t2", "put tx/ko no"],
            false,
        );
        d.txn(
            &format!("txn: {name} -w json"),
            &[compare],
            &["get t1"],
            &["get t2"],
            true,
        );
    }

    d.txn(
        "txn: all compares true",
        &[
            r#"value("t1") = "uno""#,
            r#"version("t2") = "1""#,
            &format!(r#"create("t1") = "{create}""#),
        ],
        &[
            "put t3 three --prev-kv",
            "get t --prefix --keys-only",
            "del tx/ok --prev-kv",
        ],
        &["put t3 never"],
        true,
    );
    d.txn(
        "txn: one compare false",
        &[r#"value("t1") = "uno""#, r#"version("t2") = "7""#],
        &["put t3 never"],
        &[
            "put t4 four --prev-kv",
            "get t --prefix",
            "del tx/ko --prev-kv",
            "del nothing-here",
        ],
        true,
    );
    d.txn(
        "txn: sorted, limited get in a branch",
        &[],
        &["get s/ --prefix --sort-by=VALUE --order=DESCEND --limit=2"],
        &[],
        true,
    );
    d.txn(
        "txn: get at an old revision in a branch",
        &[],
        &["get t1 --rev=2", &format!("get t1 --rev={t1_create}")],
        &[],
        true,
    );
    d.txn(
        "txn: read-only",
        &[r#"version("t1") > "0""#],
        &["get t1", "get t2"],
        &["get t3"],
        false,
    );
    d.txn("txn: empty", &[], &[], &[], false);
    d.txn("txn: empty -w json", &[], &[], &[], true);
    d.txn(
        "txn: the same key in both branches",
        &[r#"value("t1") = "nope""#],
        &["put tboth success"],
        &["put tboth failure"],
        true,
    );
    d.txn(
        "txn: unknown lease in a branch",
        &[],
        &["put tl v --lease=1234"],
        &[],
        false,
    );
    d.txn(
        "txn: range delete in a branch",
        &[],
        &["del tx/ --prefix --prev-kv"],
        &[],
        true,
    );
    d.txn(
        "txn: future revision in a branch",
        &[],
        &["get t1 --rev=100000"],
        &[],
        false,
    );

    let dup = d.txn(
        "txn: the same key put twice",
        &[],
        &["put dup 1", "put dup 2"],
        &[],
        false,
    );
    d.sanity("txn: the same key put twice", &dup, "duplicate key");
    let dup = d.txn(
        "txn: a put inside a deleted range",
        &[],
        &["put dup/a 1", "del dup/ --prefix"],
        &[],
        false,
    );
    d.sanity("txn: a put inside a deleted range", &dup, "duplicate key");

    let ops = |n: usize| -> Vec<String> { (0..n).map(|i| format!("put many/{i:03} x")).collect() };
    let max: Vec<String> = ops(128);
    let max: Vec<&str> = max.iter().map(String::as_str).collect();
    d.txn("txn: 128 ops (the limit)", &[], &max, &[], true);
    let over: Vec<String> = ops(129);
    let over: Vec<&str> = over.iter().map(String::as_str).collect();
    let out = d.txn("txn: 129 ops (over the limit)", &[], &over, &[], false);
    d.sanity(
        "txn: 129 ops (over the limit)",
        &out,
        "etcdserver: too many operations in txn request",
    );
    d.txn(
        "txn: 129 ops split over both branches",
        &[],
        &max,
        &["put many/x y"],
        false,
    );
    d.ctl(
        "get: after the txns",
        &["get", "t", "--prefix", "-w", "json"],
    );
}

/// `del` in every shape.
fn deletes(d: &mut Differ) {
    for i in 1..=3 {
        d.ctl(
            &format!("del setup: put p/{i}"),
            &["put", &format!("p/{i}"), &format!("pv{i}")],
        );
    }
    let before = d.revision().to_string();
    d.ctl("del: missing key", &["del", "nope"]);
    d.ctl("del: missing key -w json", &["del", "nope", "-w", "json"]);
    d.ctl("del: empty key", &["del", ""]);
    d.ctl("del: single key", &["del", "emptyval"]);
    d.ctl("del: --prev-kv", &["del", "spaced", "--prev-kv"]);
    d.ctl(
        "del: --prev-kv -w json",
        &["del", "multi", "--prev-kv", "-w", "json"],
    );
    d.ctl("del: range [a, c)", &["del", "a", "c"]);
    d.ctl("del: range end before the key", &["del", "d", "c"]);
    d.ctl("del: --prefix", &["del", "many/", "--prefix"]);
    d.ctl(
        "del: --prefix -w json",
        &["del", "p/", "--prefix", "--prev-kv", "-w", "json"],
    );
    d.ctl(
        "del: --from-key --prev-kv",
        &["del", "ключ", "--from-key", "--prev-kv"],
    );
    d.ctl("del: --prefix of nothing", &["del", "nothing/", "--prefix"]);
    d.ctl(
        "get: everything after the deletes",
        &["get", "", "--prefix", "--keys-only", "-w", "json"],
    );
    d.ctl(
        "get: a deleted key at a revision before the delete",
        &["get", "spaced", &format!("--rev={before}"), "-w", "json"],
    );
    d.ctl(
        "get: everything at a revision before the deletes",
        &[
            "get",
            "",
            "--prefix",
            "--keys-only",
            &format!("--rev={before}"),
        ],
    );
    d.ctl(
        "put: a deleted key again",
        &["put", "spaced", "reborn", "--prev-kv", "-w", "json"],
    );
    d.ctl(
        "get: a deleted key recreated",
        &["get", "spaced", "-w", "json"],
    );
}

/// `compaction`, and what reading below the compacted revision does.
fn compactions(d: &mut Differ) {
    d.ctl("compaction: 0 before any compaction", &["compaction", "0"]);
    let now = d.revision();
    let target = now - 10;
    let (t, below, above) = (
        target.to_string(),
        (target - 1).to_string(),
        (now + 50).to_string(),
    );
    d.ctl("compaction: N", &["compaction", &t]);
    d.ctl(
        "compaction: get --rev below N",
        &["get", "k", &format!("--rev={below}")],
    );
    d.ctl(
        "compaction: get --rev=N",
        &["get", "s/", "--prefix", &format!("--rev={t}"), "-w", "json"],
    );
    d.ctl("compaction: get --rev=1", &["get", "k", "--rev=1"]);
    d.ctl(
        "compaction: get at the current revision",
        &["get", "k", "-w", "json"],
    );
    d.txn(
        "compaction: txn get below N",
        &[],
        &[&format!("get k --rev={below}")],
        &[],
        false,
    );
    d.ctl("compaction: N again", &["compaction", &t]);
    d.ctl("compaction: below N", &["compaction", &below]);
    d.ctl("compaction: 0 after a compaction", &["compaction", "0"]);
    d.ctl("compaction: future revision", &["compaction", &above]);
    d.ctl(
        "compaction: -w json",
        &["compaction", &(target + 2).to_string(), "-w", "json"],
    );
    d.ctl("put: after a compaction", &["put", "k", "after-compaction"]);
    let now = d.revision();
    d.ctl(
        "compaction: --physical at the current revision",
        &["compaction", "--physical", &now.to_string()],
    );
    d.ctl(
        "compaction: get the current value",
        &["get", "k", "-w", "json"],
    );
    d.ctl(
        "compaction: get --prefix after",
        &["get", "s/", "--prefix", "-w", "json"],
    );
    d.ctl(
        "compaction: hashkv below the compaction",
        &["endpoint", "hashkv", &format!("--rev={}", now - 1)],
    );
}

/// What etcdctl 3.4 cannot send, sent with etcd-client. Results are printed as
/// `code: message` for errors and as a flat list of fields for responses.
fn grpc_only(d: &mut Differ) {
    d.grpc("grpc: count_only", async |mut c: Client| {
        show_get(
            c.get(
                "s/",
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await,
        )
    });
    d.grpc("grpc: count_only with limit", async |mut c: Client| {
        let opts = GetOptions::new()
            .with_prefix()
            .with_count_only()
            .with_limit(1);
        show_get(c.get("s/", Some(opts)).await)
    });
    d.grpc("grpc: keys_only with limit", async |mut c: Client| {
        let opts = GetOptions::new()
            .with_prefix()
            .with_keys_only()
            .with_limit(3);
        show_get(c.get("s/", Some(opts)).await)
    });
    // The s/ keys were written at known offsets; pick filter bounds inside their revision span.
    d.grpc("grpc: s/ keys for the filters", async |mut c: Client| {
        show_get(c.get("s/", Some(GetOptions::new().with_prefix())).await)
    });
    let (m, c) = s_key_revisions(d);
    for (name, opts) in [
        (
            "min_mod_revision",
            GetOptions::new().with_min_mod_revision(m),
        ),
        (
            "max_mod_revision",
            GetOptions::new().with_max_mod_revision(m),
        ),
        (
            "min_create_revision",
            GetOptions::new().with_min_create_revision(c),
        ),
        (
            "max_create_revision",
            GetOptions::new().with_max_create_revision(c),
        ),
        (
            "min and max mod_revision with count_only",
            GetOptions::new()
                .with_min_mod_revision(m - 1)
                .with_max_mod_revision(m + 1)
                .with_count_only(),
        ),
        (
            "max_create_revision with limit",
            GetOptions::new().with_max_create_revision(c).with_limit(1),
        ),
        (
            "min_mod_revision sorted by version descending",
            GetOptions::new()
                .with_min_mod_revision(m)
                .with_sort(SortTarget::Version, SortOrder::Descend),
        ),
    ] {
        let opts = opts.with_prefix();
        d.grpc(&format!("grpc: {name}"), async |mut c: Client| {
            show_get(c.get("s/", Some(opts.clone())).await)
        });
    }

    // Lease compares: etcdctl 3.4 panics parsing them ("bad value"), so they go over gRPC.
    for (name, op, lease) in [
        ("lease(t1) = 0", CompareOp::Equal, 0),
        ("lease(t1) != 0", CompareOp::NotEqual, 0),
        ("lease(t1) > 0", CompareOp::Greater, 0),
        ("lease(t1) < 1", CompareOp::Less, 1),
        ("lease(t1) = 1234", CompareOp::Equal, 1234),
    ] {
        d.grpc(&format!("grpc: txn {name}"), async |mut c: Client| {
            let txn = Txn::new()
                .when([Compare::lease("t1", op, lease)])
                .and_then([TxnOp::get("t1", None)])
                .or_else([TxnOp::get("t2", None)]);
            show_txn(c.txn(txn).await)
        });
    }
    d.grpc(
        "grpc: txn lease of a missing key = 0",
        async |mut c: Client| {
            let txn = Txn::new().when([Compare::lease("absent", CompareOp::Equal, 0)]);
            show_txn(c.txn(txn).await)
        },
    );
    // Compares over a range (etcdctl cannot express a range end in a compare).
    d.grpc(
        "grpc: txn version over a prefix > 0",
        async |mut c: Client| {
            let txn = Txn::new()
                .when([Compare::version("s/", CompareOp::Greater, 0).with_prefix()])
                .and_then([TxnOp::put("cmp-range", "all", None)]);
            show_txn(c.txn(txn).await)
        },
    );
    d.grpc(
        "grpc: txn version over a prefix > 3 (not all)",
        async |mut c: Client| {
            let txn = Txn::new()
                .when([Compare::version("s/", CompareOp::Greater, 3).with_prefix()])
                .and_then([TxnOp::put("cmp-range", "all", None)])
                .or_else([TxnOp::put("cmp-range", "not-all", None)]);
            show_txn(c.txn(txn).await)
        },
    );
    d.grpc(
        "grpc: txn value over an empty range",
        async |mut c: Client| {
            let txn =
                Txn::new().when([Compare::value("none/", CompareOp::Equal, "x").with_prefix()]);
            show_txn(c.txn(txn).await)
        },
    );
    d.grpc("grpc: nested txn", async |mut c: Client| {
        let inner = Txn::new().and_then([TxnOp::put("nested", "1", None), TxnOp::get("t1", None)]);
        let txn = Txn::new().and_then([TxnOp::txn(inner), TxnOp::get("nested", None)]);
        show_txn(c.txn(txn).await)
    });

    // Put validation etcdctl refuses on the client side.
    d.grpc(
        "grpc: put with a value and ignore_value",
        async |mut c: Client| {
            show_put(
                c.put("k", "v", Some(PutOptions::new().with_ignore_value()))
                    .await,
            )
        },
    );
    d.grpc(
        "grpc: put with a lease and ignore_lease",
        async |mut c: Client| {
            let opts = PutOptions::new().with_lease(7).with_ignore_lease();
            show_put(c.put("k", "v", Some(opts)).await)
        },
    );

    // Request size limits. Default --max-request-bytes is 1.5 MiB; grpc's receive limit is that
    // plus 512 KiB. Between the two, etcd answers "request is too large"; above both, the gRPC
    // layer refuses the message with ResourceExhausted and grpc-go's wording, which Concord
    // reproduces (store/src/service/limits.rs): code and text are compared.
    let kib = 1024;
    d.grpc(
        "grpc: put 1.4 MiB (under the limit)",
        async |mut c: Client| show_put(c.put("huge", vec![b'x'; 1434 * kib], None).await),
    );
    d.grpc(
        "grpc: put 1.6 MiB (request is too large)",
        async |mut c: Client| show_put(c.put("huge", vec![b'x'; 1638 * kib], None).await),
    );
    d.grpc(
        "grpc: txn of 1.6 MiB (request is too large)",
        async |mut c: Client| {
            let ops: Vec<TxnOp> = (0..4)
                .map(|i| TxnOp::put(format!("huge/{i}"), vec![b'y'; 410 * kib], None))
                .collect();
            show_txn(c.txn(Txn::new().and_then(ops)).await)
        },
    );
    d.grpc(
        "grpc: put 3 MiB (over grpc's limit)",
        async |mut c: Client| show_put(c.put("huge", vec![b'x'; 3 * 1024 * kib], None).await),
    );
    d.grpc(
        "grpc: the huge key after the limits",
        async |mut c: Client| {
            show_get(
                c.get("huge", Some(GetOptions::new().with_keys_only()))
                    .await,
            )
        },
    );
    d.ctl("del: the 1.4 MiB key", &["del", "huge"]);
}

/// Maintenance: health, status, hashes, alarms, defragmentation.
fn maintenance(d: &mut Differ) {
    d.ctl("endpoint health", &["endpoint", "health"]);
    d.ctl(
        "endpoint health -w json",
        &["endpoint", "health", "-w", "json"],
    );
    d.ctl(
        "endpoint status -w json",
        &["endpoint", "status", "-w", "json"],
    );
    d.ctl("endpoint hashkv", &["endpoint", "hashkv"]);
    d.ctl(
        "endpoint hashkv -w json",
        &["endpoint", "hashkv", "-w", "json"],
    );
    let now = d.revision();
    d.ctl(
        "endpoint hashkv --rev=current",
        &["endpoint", "hashkv", "-w", "json", &format!("--rev={now}")],
    );
    d.ctl(
        "endpoint hashkv --rev=future",
        &["endpoint", "hashkv", &format!("--rev={}", now + 10)],
    );
    d.ctl("alarm list", &["alarm", "list"]);
    d.ctl("alarm disarm", &["alarm", "disarm"]);
    d.ctl("defrag", &["defrag"]);
    d.ctl(
        "endpoint status -w json after everything",
        &["endpoint", "status", "-w", "json"],
    );
}

/// The median mod and create revisions of the s/ keys on etcd: bounds that split them.
fn s_key_revisions(d: &mut Differ) -> (i64, i64) {
    let mut c = d.etcd_client();
    let resp = d
        .block_on(c.get("s/", Some(GetOptions::new().with_prefix())))
        .unwrap();
    let median = |f: fn(&etcd_client::KeyValue) -> i64| {
        let mut revs: Vec<i64> = resp.kvs().iter().map(f).collect();
        revs.sort_unstable();
        revs[revs.len() / 2]
    };
    (
        median(|kv| kv.mod_revision()),
        median(|kv| kv.create_revision()),
    )
}
