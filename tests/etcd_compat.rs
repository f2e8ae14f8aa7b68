//! Differential test: `etcdctl` cannot tell Concord from a real etcd 3.4.
//!
//! The test starts a real etcd 3.4 (a child process on 127.0.0.1, free ports, a fresh data dir) and a
//! Concord server (in-process, fresh data dir). Both begin at revision 1 and receive the same scripted
//! sequence of `etcdctl` invocations in the same order, so every revision, version and create/mod
//! revision must match exactly. Each step compares etcdctl's stdout, stderr and exit status.
//!
//! What legitimately differs is normalized before comparing, and nothing else:
//! - the endpoint string (`127.0.0.1:<port>`): the ports differ;
//! - `cluster_id`, `member_id` and `raft_term` in response headers (`-w json`, including the headers
//!   nested in txn responses, and the `-w fields` lines): ids are derived from the peer URLs, which
//!   differ between the two servers, and the term counts elections;
//! - `took` in `endpoint health` (text and JSON): wall-clock time;
//! - etcdctl's JSON retry log lines on stderr (`{"level":"warn","ts":…}`): they carry a timestamp
//!   and a random client id, so only their `error` field (gRPC code and description) is kept; the
//!   final `Error: …` line is compared as is;
//! - per-field normalizations of `endpoint status` and `endpoint hashkv`, each explained where it is
//!   done ([`normalize_status`], [`normalize_hashkv`]);
//!
//! Requests etcdctl 3.4 cannot make (count-only, min/max mod/create revision filters, lease compares
//! — etcdctl 3.4 panics parsing `lease("k") = "0"` — and requests over the size limit, which do not
//! fit in one argv string) are sent with the `etcd-client` crate to both servers and their answers
//! compared the same way.
//!
//! Every difference is recorded (the step name, the command, both outputs) and the test fails at the
//! end listing all of them: the first one is usually the cause, later ones may be its consequences.
//! `CONCORD_COMPAT_TRACE=1 cargo test --test etcd_compat -- --nocapture` prints every step with
//! etcd's (normalized) output, to see what each step really exercises.
//!
//! Needs etcd 3.4 (`apt-get install etcd-server etcd-client`); without it the test prints SKIPPED and
//! passes, unless `CONCORD_REQUIRE_ETCD=1`, which turns the skip into a failure.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use concord_store::{Server, ServerConfig};
use etcd_client::{
    Client, Compare, CompareOp, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
};
use serde_json::Value;

const SKIP_MESSAGE: &str =
    "SKIPPED: etcd 3.4 not installed; apt-get install etcd-server etcd-client";

// ---------------------------------------------------------------------------------------------
// The script: one story, in order. Every write bumps the revision of both servers by one.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_cannot_tell_concord_from_etcd() {
    let Some(bins) = EtcdBinaries::find() else {
        return;
    };
    let started = Instant::now();
    let etcd = EtcdProcess::start(&bins);
    let dir = tempfile::tempdir().unwrap();
    let concord = Server::start(ServerConfig::for_test(dir.path()))
        .await
        .unwrap();
    let concord_endpoint = concord.client_addr().to_string();
    let etcd_endpoint = etcd.endpoint.clone();
    let rt = tokio::runtime::Handle::current();

    // etcdctl is a blocking child process: run the script off the async workers.
    let report = tokio::task::spawn_blocking(move || {
        let mut d = Differ::new(rt, bins.etcdctl, etcd_endpoint, concord_endpoint);
        script(&mut d);
        d.report()
    })
    .await;

    concord.shutdown().await.unwrap();
    drop(etcd);
    let report = report.expect("the script panicked");
    println!(
        "etcd_compat: {} in {:.1?}",
        report.summary,
        started.elapsed()
    );
    assert!(report.failures.is_empty(), "{}", report.failures.join("\n"));
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
    let (m, c) = d.s_key_revisions();
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

// ---------------------------------------------------------------------------------------------
// Running a step on both servers and comparing.
// ---------------------------------------------------------------------------------------------

/// One etcdctl run, normalized.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    stdout: String,
    stderr: String,
    status: Option<i32>,
}

impl Outcome {
    fn render(&self) -> String {
        format!(
            "exit status: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status,
            clip(&self.stdout),
            clip(&self.stderr)
        )
    }
}

struct Side {
    endpoint: String,
    client: Client,
}

struct Report {
    summary: String,
    failures: Vec<String>,
}

/// Runs every step against etcd and Concord and records the differences.
struct Differ {
    rt: tokio::runtime::Handle,
    etcdctl: PathBuf,
    etcd: Side,
    concord: Side,
    steps: usize,
    /// Steps whose outputs differ: step name, command, both outputs.
    mismatches: Vec<String>,
    /// The script's own assumptions about etcd that turned out false (a bug in this test).
    script_errors: Vec<String>,
}

impl Differ {
    fn new(rt: tokio::runtime::Handle, etcdctl: PathBuf, etcd: String, concord: String) -> Self {
        let connect = |endpoint: &str| {
            rt.block_on(Client::connect([format!("http://{endpoint}")], None))
                .unwrap_or_else(|e| panic!("etcd-client cannot connect to {endpoint}: {e}"))
        };
        let etcd = Side {
            client: connect(&etcd),
            endpoint: etcd,
        };
        let concord = Side {
            client: connect(&concord),
            endpoint: concord,
        };
        Differ {
            rt,
            etcdctl,
            etcd,
            concord,
            steps: 0,
            mismatches: Vec::new(),
            script_errors: Vec::new(),
        }
    }

    /// `etcdctl <args>` against both; returns etcd's (normalized) outcome.
    fn ctl(&mut self, step: &str, args: &[&str]) -> Outcome {
        self.ctl_os(step, args.iter().map(OsString::from).collect(), None)
    }

    fn ctl_os(&mut self, step: &str, args: Vec<OsString>, stdin: Option<&str>) -> Outcome {
        let (etcd, concord) = std::thread::scope(|s| {
            let etcd = s.spawn(|| etcdctl(&self.etcdctl, &self.etcd.endpoint, &args, stdin));
            let concord = etcdctl(&self.etcdctl, &self.concord.endpoint, &args, stdin);
            (etcd.join().expect("etcdctl runner panicked"), concord)
        });
        let mut command = format!(
            "etcdctl {}",
            args.iter().map(shell_word).collect::<Vec<_>>().join(" ")
        );
        if let Some(input) = stdin {
            command.push_str(&format!(" <<EOF\n{}EOF", clip(input)));
        }
        self.compare(step, &command, etcd.clone(), concord);
        etcd
    }

    /// `etcdctl txn` with its three sections on stdin.
    fn txn(
        &mut self,
        step: &str,
        compares: &[&str],
        success: &[&str],
        failure: &[&str],
        json: bool,
    ) -> Outcome {
        let mut input = String::new();
        for section in [compares, success, failure] {
            for line in section {
                input.push_str(line);
                input.push('\n');
            }
            input.push('\n');
        }
        let mut args: Vec<OsString> = vec!["txn".into()];
        if json {
            args.extend(["-w".into(), "json".into()]);
        }
        self.ctl_os(step, args, Some(&input))
    }

    /// Runs the same etcd-client request against both; `f` renders the answer as text.
    fn grpc(&mut self, step: &str, f: impl AsyncFn(Client) -> String) -> String {
        let etcd = self.rt.block_on(f(self.etcd.client.clone()));
        let concord = self.rt.block_on(f(self.concord.client.clone()));
        let as_outcome = |stdout: String| Outcome {
            stdout,
            stderr: String::new(),
            status: None,
        };
        self.compare(
            step,
            "(etcd-client request, see the step name)",
            as_outcome(etcd.clone()),
            as_outcome(concord),
        );
        etcd
    }

    fn compare(&mut self, step: &str, command: &str, etcd: Outcome, concord: Outcome) {
        self.steps += 1;
        if std::env::var_os("CONCORD_COMPAT_TRACE").is_some() {
            // Shows what each step really exercised (`--nocapture` to see it).
            println!(
                "--- step {} `{step}`\n$ {command}\n{}\n",
                self.steps,
                etcd.render()
            );
        }
        if etcd == concord {
            return;
        }
        let first = first_difference(&etcd.render(), &concord.render());
        let text = format!(
            "=== step {} `{step}` differs\n$ {command}\n{first}\n----- etcd 3.4 -----\n{}\n----- concord -----\n{}\n",
            self.steps,
            etcd.render(),
            concord.render()
        );
        eprintln!("{text}");
        self.mismatches.push(text);
    }

    /// Records a script error unless etcd's output contains `needle` (guards the script's premises,
    /// e.g. that a step really reaches the server rather than failing in etcdctl's parser).
    fn sanity(&mut self, step: &str, etcd: &Outcome, needle: &str) {
        if !etcd.stdout.contains(needle) && !etcd.stderr.contains(needle) {
            self.script_errors.push(format!(
                "script error in `{step}`: etcd's output does not contain {needle:?}:\n{}",
                etcd.render()
            ));
        }
    }

    /// The current revision of both servers (they must agree; etcd's is returned).
    fn revision(&mut self) -> i64 {
        let rev = |side: &Side| {
            let mut c = side.client.clone();
            self.rt
                .block_on(c.get("revision-probe", None))
                .map(|r| r.header().map_or(0, |h| h.revision()))
                .unwrap_or(-1)
        };
        let (etcd, concord) = (rev(&self.etcd), rev(&self.concord));
        if etcd != concord {
            self.compare(
                "current revision",
                "(etcd-client get)",
                Outcome {
                    stdout: etcd.to_string(),
                    stderr: String::new(),
                    status: None,
                },
                Outcome {
                    stdout: concord.to_string(),
                    stderr: String::new(),
                    status: None,
                },
            );
        }
        etcd
    }

    /// The median mod and create revisions of the s/ keys on etcd: bounds that split them.
    fn s_key_revisions(&mut self) -> (i64, i64) {
        let mut c = self.etcd.client.clone();
        let resp = self
            .rt
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

    fn report(self) -> Report {
        let summary = format!(
            "{} steps, {} differences, {} script errors",
            self.steps,
            self.mismatches.len(),
            self.script_errors.len()
        );
        let mut failures = Vec::new();
        if !self.mismatches.is_empty() {
            failures.push(format!(
                "{summary}: Concord's answers differ from etcd 3.4's (the first difference is usually \
                 the cause, later ones may follow from it):\n"
            ));
            failures.extend(self.mismatches);
        }
        failures.extend(self.script_errors);
        Report { summary, failures }
    }
}

// ---------------------------------------------------------------------------------------------
// etcdctl, and normalizing its output.
// ---------------------------------------------------------------------------------------------

fn etcdctl(bin: &Path, endpoint: &str, args: &[OsString], stdin: Option<&str>) -> Outcome {
    let mut child = Command::new(bin)
        .env_clear()
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", endpoint, "--command-timeout", "5s"])
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let strs: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    normalize(&out.stdout, &out.stderr, out.status.code(), endpoint, &strs)
}

fn normalize(
    stdout: &[u8],
    stderr: &[u8],
    status: Option<i32>,
    endpoint: &str,
    args: &[String],
) -> Outcome {
    let text = |bytes: &[u8]| lossless_text(bytes).replace(endpoint, "<endpoint>");
    let (mut stdout, mut stderr) = (text(stdout), text(stderr));
    let has = |pair: &[&str]| {
        args.windows(pair.len())
            .any(|w| w.iter().zip(pair).all(|(a, b)| a == b))
    };
    let json = has(&["-w", "json"]);

    stderr = normalize_client_logs(&stderr);
    stdout = normalize_took(&stdout);
    stderr = normalize_took(&stderr);
    if has(&["-w", "fields"]) {
        stdout = normalize_fields(&stdout);
    }
    if json {
        stdout = normalize_json(&stdout, &|v| {
            normalize_status(v);
            normalize_headers(v);
            normalize_hashkv(v);
            normalize_health(v);
        });
    } else if has(&["endpoint", "hashkv"]) {
        // `<endpoint>, <hash>`: the hash is a checksum of each store's own encoding (see below).
        stdout = stdout
            .lines()
            .map(|l| match l.split_once(", ") {
                Some((ep, _)) if ep == "<endpoint>" => format!("{ep}, <hash>"),
                _ => l.to_string(),
            })
            .map(|l| l + "\n")
            .collect();
    }
    Outcome {
        stdout,
        stderr,
        status,
    }
}

/// etcdctl's zap log lines (`{"level":"warn","ts":…,"target":"endpoint://client-<uuid>/…",
/// "attempt":0,"error":"rpc error: code = … desc = …"}`) carry a timestamp and a random client id:
/// keep the level, message and the error (which holds the gRPC code, invisible in the `Error:`
/// line), drop the rest, and fold repeats (the retry count depends on timing).
fn normalize_client_logs(stderr: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    for line in stderr.lines() {
        let line = match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(log)) if log.contains_key("level") && log.contains_key("ts") => {
                let field = |k: &str| log.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                format!(
                    "<client log {}: {}: {}>",
                    field("level"),
                    field("msg"),
                    field("error")
                )
            }
            _ => line.to_string(),
        };
        if out.last() != Some(&line) {
            out.push(line);
        }
    }
    out.iter().map(|l| format!("{l}\n")).collect()
}

/// `… is healthy: successfully committed proposal: took = 2.1ms`: wall-clock time.
fn normalize_took(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("took = ") {
        out.push_str(&rest[..at + "took = ".len()]);
        rest = &rest[at + "took = ".len()..];
        let end = rest
            .find(|c: char| c.is_whitespace() || c == '"' || c == ',')
            .unwrap_or(rest.len());
        out.push_str("<duration>");
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// `-w fields`: the header's ids and term (see the module doc).
fn normalize_fields(stdout: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    for line in stdout.split('\n') {
        let normalized = ["\"ClusterID\" : ", "\"MemberID\" : ", "\"RaftTerm\" : "]
            .iter()
            .find(|p| line.starts_with(**p))
            .map(|p| format!("{p}<normalized>"));
        out.push(normalized.unwrap_or_else(|| line.to_string()));
    }
    out.join("\n")
}

/// Parses `-w json` output, applies `f`, and prints it back sorted and indented (so a mismatch is
/// readable line by line). Output that is not JSON (an error) is left alone.
fn normalize_json(stdout: &str, f: &dyn Fn(&mut Value)) -> String {
    match serde_json::from_str::<Value>(stdout.trim()) {
        Ok(mut v) => {
            f(&mut v);
            serde_json::to_string_pretty(&v).unwrap() + "\n"
        }
        Err(_) => stdout.to_string(),
    }
}

const NORMALIZED: &str = "<normalized>";

/// In every `header` object at any depth (txn responses nest them): `cluster_id` and `member_id`
/// derive from the peer URLs, which differ; `raft_term` counts elections. A field is replaced only
/// where present, so one server filling a field the other leaves out still shows as a difference.
fn normalize_headers(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                if key == "header"
                    && let Value::Object(header) = child
                {
                    for field in ["cluster_id", "member_id", "raft_term"] {
                        if let Some(x) = header.get_mut(field) {
                            *x = NORMALIZED.into();
                        }
                    }
                }
                normalize_headers(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalize_headers),
        _ => {}
    }
}

/// `endpoint status -w json`, field by field (`[{"Endpoint":…,"Status":{…}}]`). Runs before
/// [`normalize_headers`], so the leader and the term can be checked against the raw header.
fn normalize_status(v: &mut Value) {
    let Value::Array(items) = v else { return };
    for item in items {
        let Some(Value::Object(status)) = item.get_mut("Status") else {
            continue;
        };
        // version: etcd says 3.4.23; Concord reports the etcd API it implements, 3.5.0.
        // dbSize, dbSizeInUse: bbolt's file vs sled's; page sizes and layouts are unrelated.
        // raftIndex, raftAppliedIndex: etcd's log also holds membership and leader entries, and
        //   Concord's log holds its own bootstrap entries; only "applied <= index" is meaningful.
        let index = status.get("raftIndex").and_then(Value::as_u64);
        let applied = status.get("raftAppliedIndex").and_then(Value::as_u64);
        if let (Some(index), Some(applied)) = (index, applied) {
            let verdict = if applied <= index {
                "<applied <= index>"
            } else {
                "<applied > index (wrong)>"
            };
            status.insert("raftAppliedIndex".into(), verdict.into());
            status.insert("raftIndex".into(), NORMALIZED.into());
        }
        // leader: a member id (derived from the peer URL, so it differs), but in a one-member
        //   cluster it must be the member itself; raftTerm likewise must be the header's term.
        let header = status.get("header").cloned().unwrap_or_default();
        for (field, same_as) in [("leader", "member_id"), ("raftTerm", "raft_term")] {
            if status.get(field).is_some() && status.get(field) == header.get(same_as) {
                status.insert(field.into(), format!("<header.{same_as}>").into());
            }
        }
        for field in ["version", "dbSize", "dbSizeInUse"] {
            if let Some(x) = status.get_mut(field) {
                *x = NORMALIZED.into();
            }
        }
    }
}

/// `endpoint health -w json` (`[{"endpoint":…,"health":true,"took":"2.1ms"}]`): wall-clock time.
fn normalize_health(v: &mut Value) {
    let Value::Array(items) = v else { return };
    for item in items {
        if let Some(took) = item.get_mut("took") {
            *took = "<duration>".into();
        }
    }
}

/// `endpoint hashkv -w json`: `hash` is a CRC over each store's own key encoding (etcd hashes bbolt
/// keys and values in its revision encoding; Concord its sled records), so the values differ by
/// design; `compact_revision` and the header revision must still match.
fn normalize_hashkv(v: &mut Value) {
    let Value::Array(items) = v else { return };
    for item in items {
        if let Some(Value::Object(hashkv)) = item.get_mut("HashKV")
            && let Some(hash) = hashkv.get_mut("hash")
        {
            *hash = "<hash>".into();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Rendering etcd-client answers.
// ---------------------------------------------------------------------------------------------

fn show_err(e: etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => format!("error {:?}: {}", s.code(), s.message()),
        other => format!("client error: {other}"),
    }
}

fn show_kv(kv: &etcd_client::KeyValue) -> String {
    let value = kv.value();
    let value = if value.len() > 64 {
        format!("<{} bytes>", value.len())
    } else {
        value.escape_ascii().to_string()
    };
    format!(
        "  {} = {} (create {}, mod {}, version {}, lease {})\n",
        kv.key().escape_ascii(),
        value,
        kv.create_revision(),
        kv.mod_revision(),
        kv.version(),
        kv.lease()
    )
}

fn revision_of(header: Option<&etcd_client::ResponseHeader>) -> String {
    header.map_or("no header".into(), |h| format!("revision {}", h.revision()))
}

fn show_get(r: Result<etcd_client::GetResponse, etcd_client::Error>) -> String {
    match r {
        Ok(resp) => {
            let mut s = format!(
                "get: {}, count {}, more {}\n",
                revision_of(resp.header()),
                resp.count(),
                resp.more()
            );
            resp.kvs().iter().for_each(|kv| s.push_str(&show_kv(kv)));
            s
        }
        Err(e) => show_err(e),
    }
}

fn show_put(r: Result<etcd_client::PutResponse, etcd_client::Error>) -> String {
    match r {
        Ok(resp) => {
            let mut s = format!("put: {}\n", revision_of(resp.header()));
            resp.prev_key()
                .iter()
                .for_each(|kv| s.push_str(&show_kv(kv)));
            s
        }
        Err(e) => show_err(e),
    }
}

fn show_txn(r: Result<etcd_client::TxnResponse, etcd_client::Error>) -> String {
    match r {
        Ok(resp) => show_txn_response(&resp, 0),
        Err(e) => show_err(e),
    }
}

fn show_txn_response(resp: &etcd_client::TxnResponse, depth: usize) -> String {
    use etcd_client::TxnOpResponse;
    let pad = "  ".repeat(depth);
    let mut s = format!(
        "{pad}txn: {}, succeeded {}\n",
        revision_of(resp.header()),
        resp.succeeded()
    );
    for op in resp.op_responses() {
        match op {
            TxnOpResponse::Put(p) => {
                s.push_str(&format!("{pad}- put: {}\n", revision_of(p.header())))
            }
            TxnOpResponse::Get(g) => {
                s.push_str(&format!(
                    "{pad}- get: {}, count {}\n",
                    revision_of(g.header()),
                    g.count()
                ));
                g.kvs()
                    .iter()
                    .for_each(|kv| s.push_str(&format!("{pad}{}", show_kv(kv))));
            }
            TxnOpResponse::Delete(d) => s.push_str(&format!(
                "{pad}- delete: {}, deleted {}\n",
                revision_of(d.header()),
                d.deleted()
            )),
            TxnOpResponse::Txn(t) => s.push_str(&show_txn_response(&t, depth + 1)),
        }
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Small text helpers.
// ---------------------------------------------------------------------------------------------

/// Output longer than this is cut in failure messages (a 100 KiB value would drown the report).
const CLIP: usize = 3000;

fn clip(s: &str) -> String {
    if s.len() <= CLIP {
        return s.to_string();
    }
    let mut end = CLIP;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} more bytes)", &s[..end], s.len() - end)
}

fn first_difference(a: &str, b: &str) -> String {
    let (la, lb): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    for i in 0..la.len().max(lb.len()) {
        let (x, y) = (
            la.get(i).copied().unwrap_or("<none>"),
            lb.get(i).copied().unwrap_or("<none>"),
        );
        if x != y {
            return format!(
                "first difference at line {}:\n  etcd:    {}\n  concord: {}",
                i + 1,
                clip(x),
                clip(y)
            );
        }
    }
    "the outputs differ only in trailing whitespace".into()
}

/// Bytes as text, invalid UTF-8 bytes written as `\xNN` (a binary value must not hide a difference
/// the way U+FFFD replacement would).
fn lossless_text(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// Quotes an argument for the failure message's command line.
fn shell_word(arg: &OsString) -> String {
    let s = arg.to_string_lossy();
    if s.len() > 80 {
        return format!("'<{} bytes>'", s.len());
    }
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_alphanumeric() || "-_=/.:".contains(c))
    {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

// ---------------------------------------------------------------------------------------------
// The etcd process.
// ---------------------------------------------------------------------------------------------

struct EtcdBinaries {
    etcd: PathBuf,
    etcdctl: PathBuf,
}

impl EtcdBinaries {
    /// Finds etcd and etcdctl 3.4 on PATH; prints the skip message (or panics under
    /// `CONCORD_REQUIRE_ETCD=1`) when either is missing or of another version.
    fn find() -> Option<EtcdBinaries> {
        let found = (|| {
            let etcd = which("etcd").ok_or("etcd is not on PATH")?;
            let etcdctl = which("etcdctl").ok_or("etcdctl is not on PATH")?;
            let version = |bin: &Path, arg: &str| {
                Command::new(bin)
                    .arg(arg)
                    .env("ETCDCTL_API", "3")
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default()
            };
            let (v1, v2) = (version(&etcd, "--version"), version(&etcdctl, "version"));
            if !v1.contains("etcd Version: 3.4.") || !v2.contains("etcdctl version: 3.4.") {
                return Err(format!(
                    "found another version: {:?} / {:?}",
                    v1.lines().next(),
                    v2.lines().next()
                ));
            }
            Ok(EtcdBinaries { etcd, etcdctl })
        })();
        match found {
            Ok(bins) => Some(bins),
            Err(why) => {
                let message = format!("{SKIP_MESSAGE} ({why})");
                if std::env::var("CONCORD_REQUIRE_ETCD").as_deref() == Ok("1") {
                    panic!("{message} [CONCORD_REQUIRE_ETCD=1]");
                }
                eprintln!("\n**********\n{message}\n**********\n");
                None
            }
        }
    }
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// A running etcd; dropping it kills the process (so a failed assertion still stops it).
struct EtcdProcess {
    child: Child,
    endpoint: String,
    dir: tempfile::TempDir,
}

impl EtcdProcess {
    fn start(bins: &EtcdBinaries) -> EtcdProcess {
        let dir = tempfile::tempdir().unwrap();
        let [client_port, peer_port] = free_ports();
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let log = std::fs::File::create(dir.path().join("etcd.log")).unwrap();
        let child = Command::new(&bins.etcd)
            .env_clear()
            .args(["--name", "e1"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("e1={peer}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start etcd");
        let mut etcd = EtcdProcess {
            child,
            endpoint: format!("127.0.0.1:{client_port}"),
            dir,
        };
        etcd.wait_healthy(&bins.etcdctl);
        etcd
    }

    fn wait_healthy(&mut self, etcdctl: &Path) {
        for _ in 0..100 {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("etcd exited early ({status}); its log:\n{}", self.log());
            }
            let health = Command::new(etcdctl)
                .env_clear()
                .env("ETCDCTL_API", "3")
                .args([
                    "--endpoints",
                    &self.endpoint,
                    "--command-timeout",
                    "1s",
                    "--dial-timeout",
                    "1s",
                ])
                .args(["endpoint", "health"])
                .output()
                .unwrap();
            if health.status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "etcd did not become healthy in time; its log:\n{}",
            self.log()
        );
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two distinct free ports on 127.0.0.1 (both listeners are held until both are chosen).
fn free_ports() -> [u16; 2] {
    let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    [
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    ]
}
