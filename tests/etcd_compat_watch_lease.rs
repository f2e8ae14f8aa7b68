//! Differential test: `etcdctl` cannot tell Concord from a real etcd 3.4 — the Watch and Lease
//! story.
//!
//! One script, in order: leases (grant with every TTL rule, attach, timetolive, list, keep-alive,
//! revoke), lease misuse, the DELETE events a watcher sees when a lease is revoked and when it
//! expires, `watch` in every shape (one key, a prefix, a range, replay with `--rev`, `--prev-kv`,
//! `-w json`, from a compacted revision), interactive `watch -i` with `progress`, invalid watch
//! ranges, then what etcdctl 3.4 cannot send, over the `etcd-client` crate: raw watch responses
//! (client-chosen watch ids, duplicates, cancels, compaction, filters), client-chosen lease ids,
//! and txn compares on a key's lease. Every write goes to both servers in the same order, so
//! every revision — including that of a lease expiry — must match exactly.
//!
//! Watches and keep-alives run until stopped, so they run in the background on both servers
//! ([`Differ::spawn`]) while the script writes, and are compared once etcd's output shows what the
//! step is about. Timing must not change the output: a watch replays from a known `--rev` (so it
//! does not matter when it is established), and a `-w json` watch, whose grouping of events into
//! responses depends on when they arrive, only ever replays history written before it started
//! (one response for the whole backlog) or sees one write at a time. Interactive lines are fed one
//! at a time, each awaited before the next, because etcdctl prints each watcher from its own
//! goroutine.
//!
//! The harness — how both servers are started, what is compared, what is normalized and why
//! (lease ids, the remaining TTL, the order of a lease's attached keys, repeated keep-alive lines
//! among them), `CONCORD_COMPAT_TRACE=1`, the skip rule (`CONCORD_REQUIRE_ETCD=1`) — is described
//! in `tests/common/mod.rs`. In addition, the renderings of raw watch responses here write the
//! watch ids the server chose as `<watch#N>` (N in order of appearance within the stream): they
//! are handles each server picks for its own stream (etcd counts from 0), which clients only echo
//! back. Client-chosen ids and the progress id -1 are shown as they are.
//!
//! `CONCORD_COMPAT_TRACE=1 cargo test --test etcd_compat_watch_lease -- --nocapture` prints every
//! step with etcd's (normalized) output. Takes about 15 s: 3 s for the lease expiry (etcd's minimum
//! TTL is 2 s with default timings), most of the rest awaiting watchers.

mod common;

use std::time::{Duration, Instant};

use common::{Differ, LeaseIds, Outcome, revision_of, show_err, show_kv, show_txn};
use etcd_client::{
    Client, Compare, CompareOp, EventType, LeaseGrantOptions, LeaseTimeToLiveOptions, Txn, TxnOp,
    WatchFilterType, WatchOptions, WatchResponse, WatchStream,
};

/// How long etcdctl gets to print what a step waits for (etcd's unsynced watchers catch up every
/// 100 ms; this only matters when something is wrong).
const WAIT: Duration = Duration::from_secs(5);

/// How long a lease granted with the minimum TTL (2 s) may take to expire and delete its keys.
const EXPIRY_WAIT: Duration = Duration::from_secs(10);

/// How long the continuous `lease keep-alive` runs: longer than the 2 s TTL it keeps alive.
const KEEP_ALIVE_FOR: Duration = Duration::from_secs(3);

/// A lease id no server granted (etcdctl reads lease ids in hex).
const UNKNOWN_LEASE: &str = "1234";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_cannot_tell_concord_watch_and_lease_from_etcd() {
    common::run("etcd_compat_watch_lease", script).await;
}

fn script(d: &mut Differ) {
    leases(d);
    lease_misuse(d);
    lease_revoke_seen_by_a_watcher(d);
    lease_expiry(d);
    let compacted = watches(d);
    watch_interactive(d, compacted);
    watch_bad_ranges(d);
    grpc_watches(d, compacted);
    grpc_leases(d);
}

// ---------------------------------------------------------------------------------------------
// Leases through etcdctl.
// ---------------------------------------------------------------------------------------------

/// `lease grant`, attaching keys, `timetolive`, `list`, `keep-alive --once`, `revoke`.
fn leases(d: &mut Differ) {
    let a = grant(d, "lease grant 60", &["lease", "grant", "60"]);
    let b = grant(
        d,
        "lease grant 60 -w json",
        &["lease", "grant", "60", "-w", "json"],
    );
    let max = grant(
        d,
        "lease grant 9000000000 (the maximum TTL)",
        &["lease", "grant", "9000000000"],
    );
    d.ctl(
        "lease grant 9000000001 (over the maximum)",
        &["lease", "grant", "9000000001"],
    );
    // etcd raises a TTL below its minimum (2 s with default timings) to the minimum. Each such
    // lease is revoked at once, so that none expires in the middle of later steps.
    for ttl in ["1", "0", "-5", "-9000000001"] {
        let short = grant(
            d,
            &format!("lease grant {ttl} (raised to the minimum)"),
            &["lease", "grant", "--", ttl],
        );
        d.ctl(
            &format!("lease revoke the lease granted with {ttl}"),
            &["lease", "revoke", &short],
        );
    }

    let with = |lease: &str| format!("--lease={lease}");
    d.ctl("put --lease", &["put", "lk/a", "va", &with(&a)]);
    d.ctl(
        "put --lease (a second key)",
        &["put", "lk/b", "vb", &with(&a)],
    );
    d.ctl(
        "put --lease -w json",
        &["put", "lk/c", "vc", &with(&b), "-w", "json"],
    );
    d.ctl(
        "get -w json shows the lease",
        &["get", "lk/a", "-w", "json"],
    );
    d.ctl(
        "get -w fields shows the lease",
        &["get", "lk/", "--prefix", "-w", "fields"],
    );

    d.ctl("lease timetolive", &["lease", "timetolive", &a]);
    d.ctl(
        "lease timetolive --keys",
        &["lease", "timetolive", &a, "--keys"],
    );
    d.ctl(
        "lease timetolive --keys -w json",
        &["lease", "timetolive", &a, "--keys", "-w", "json"],
    );
    d.ctl(
        "lease timetolive -w fields",
        &["lease", "timetolive", &b, "-w", "fields"],
    );
    d.ctl(
        "lease timetolive --keys of a lease without keys",
        &["lease", "timetolive", &max, "--keys"],
    );
    // etcd lists leases by expiry time, soonest first.
    d.ctl("lease list (by expiry)", &["lease", "list"]);
    d.ctl("lease list -w json", &["lease", "list", "-w", "json"]);
    d.ctl(
        "lease keep-alive --once",
        &["lease", "keep-alive", "--once", &a],
    );
    d.ctl(
        "lease keep-alive --once -w json",
        &["lease", "keep-alive", "--once", &a, "-w", "json"],
    );
    d.ctl(
        "lease list after a keep-alive (its expiry moved)",
        &["lease", "list"],
    );

    d.txn(
        "txn: put --lease in a branch",
        &[],
        &[&format!("put lk/d vd {}", with(&b)), "get lk/d"],
        &[],
        true,
    );
    d.ctl(
        "put without --lease detaches the key from its lease",
        &["put", "lk/a", "va2"],
    );
    d.ctl(
        "put --ignore-lease keeps the key's lease",
        &["put", "lk/b", "vb2", "--ignore-lease"],
    );
    d.ctl(
        "lease timetolive --keys after the detach",
        &["lease", "timetolive", &a, "--keys"],
    );
    d.ctl(
        "get every lk/ key -w json",
        &["get", "lk/", "--prefix", "-w", "json"],
    );
    grpc_lease_compares(d, &a, &b);

    d.ctl(
        "lease revoke deletes the keys still attached",
        &["lease", "revoke", &a],
    );
    d.ctl(
        "get after the revoke",
        &["get", "lk/", "--prefix", "-w", "json"],
    );
    d.ctl(
        "lease timetolive of a revoked lease",
        &["lease", "timetolive", &a],
    );
    d.ctl(
        "lease timetolive --keys -w json of a revoked lease",
        &["lease", "timetolive", &a, "--keys", "-w", "json"],
    );
    d.ctl("lease revoke a revoked lease", &["lease", "revoke", &a]);
    d.ctl(
        "lease keep-alive --once of a revoked lease",
        &["lease", "keep-alive", "--once", &a],
    );
    d.ctl(
        "put --lease of a revoked lease",
        &["put", "lk/x", "v", &with(&a)],
    );
    d.ctl("lease list after the revoke", &["lease", "list"]);
    d.ctl(
        "lease revoke -w json (two keys, one revision)",
        &["lease", "revoke", &b, "-w", "json"],
    );
    d.ctl(
        "lease revoke of a lease without keys",
        &["lease", "revoke", &max],
    );
    d.ctl("lease list when there are none", &["lease", "list"]);
    d.ctl(
        "lease list -w json when there are none",
        &["lease", "list", "-w", "json"],
    );
}

/// Lease compares, which etcdctl 3.4 cannot parse (it panics on `lease("k") = "…"`).
fn grpc_lease_compares(d: &mut Differ, a: &str, b: &str) {
    let cases = [
        ("lease(lk/b) = a", "lk/b", CompareOp::Equal, a),
        (
            "lease(lk/a) = a after the detach",
            "lk/a",
            CompareOp::Equal,
            a,
        ),
        (
            "lease(lk/a) = 0 after the detach",
            "lk/a",
            CompareOp::Equal,
            "",
        ),
        ("lease(lk/c) != a", "lk/c", CompareOp::NotEqual, a),
        ("lease(lk/d) = b", "lk/d", CompareOp::Equal, b),
        ("lease(lk/c) > 0", "lk/c", CompareOp::Greater, ""),
    ];
    for (name, key, op, lease) in cases {
        d.grpc_leases(
            &format!("grpc: txn {name}"),
            async |mut c: Client, leases: LeaseIds| {
                let txn = Txn::new()
                    .when([Compare::lease(key, op, leases.id(lease))])
                    .and_then([TxnOp::get(key, None)])
                    .or_else([TxnOp::get("lk/", None)]);
                show_txn(c.txn(txn).await)
            },
        );
    }
}

/// Lease ids no server granted, and TTLs nobody can have.
fn lease_misuse(d: &mut Differ) {
    d.ctl(
        "lease revoke of an unknown lease",
        &["lease", "revoke", UNKNOWN_LEASE],
    );
    d.ctl(
        "lease keep-alive --once of an unknown lease",
        &["lease", "keep-alive", "--once", UNKNOWN_LEASE],
    );
    d.ctl(
        "lease timetolive of an unknown lease",
        &["lease", "timetolive", UNKNOWN_LEASE],
    );
    d.ctl(
        "lease timetolive --keys -w json of an unknown lease",
        &["lease", "timetolive", UNKNOWN_LEASE, "--keys", "-w", "json"],
    );
    d.ctl(
        "put --lease of an unknown lease",
        &["put", "lm/a", "v", &format!("--lease={UNKNOWN_LEASE}")],
    );
    // A continuous keep-alive of an unknown lease ends by itself after the first answer.
    let step = "lease keep-alive of an unknown lease";
    let mut keeper = d.spawn(&["lease", "keep-alive", UNKNOWN_LEASE]);
    d.wait_exit(step, &mut keeper, WAIT);
    d.stop(step, keeper);
}

// ---------------------------------------------------------------------------------------------
// What a watcher sees of leases.
// ---------------------------------------------------------------------------------------------

/// Revoking a lease deletes its keys in one revision, in key order.
fn lease_revoke_seen_by_a_watcher(d: &mut Differ) {
    let from = format!("--rev={}", d.revision() + 1);
    let lease = grant(d, "revoke event: lease grant", &["lease", "grant", "60"]);
    let with = format!("--lease={lease}");
    let watch = ["watch", "lr/", "--prefix", &from, "--prev-kv"];
    let step = "watch sees the DELETEs of a lease revoke";
    watch_while(d, step, &watch, "DELETE", 2, |d| {
        d.ctl(
            "revoke event: put lr/b --lease",
            &["put", "lr/b", "vb", &with],
        );
        d.ctl(
            "revoke event: put lr/a --lease",
            &["put", "lr/a", "va", &with],
        );
        d.ctl("revoke event: put lr/c", &["put", "lr/c", "vc"]);
        d.ctl("revoke event: lease revoke", &["lease", "revoke", &lease]);
    });
    let json = ["watch", "lr/", "--prefix", &from, "--prev-kv", "-w", "json"];
    watch_while(
        d,
        "watch -w json replays the lease revoke (one response)",
        &json,
        "\"type\":1",
        2,
        |_| {},
    );
    d.ctl(
        "get after the revoke event",
        &["get", "lr/", "--prefix", "-w", "json"],
    );
}

/// A lease left alone expires (after etcd's minimum TTL, 2 s) and deletes its keys in one
/// revision; meanwhile a continuous `lease keep-alive` keeps another 2 s lease alive. Nothing else
/// writes while the expiry is awaited, so its revision is the same on both servers.
fn lease_expiry(d: &mut Differ) {
    let from = format!("--rev={}", d.revision() + 1);
    let expiring = grant(
        d,
        "expiry: lease grant 1 (raised to 2 s)",
        &["lease", "grant", "1"],
    );
    let with = format!("--lease={expiring}");
    d.ctl("expiry: put le/b --lease", &["put", "le/b", "vb", &with]);
    d.ctl("expiry: put le/a --lease", &["put", "le/a", "va", &with]);
    let kept = grant(d, "expiry: lease grant 2", &["lease", "grant", "2"]);

    // Started after the puts: the json watcher replays both in one response, then sees the expiry.
    let step = "watch -w json sees the DELETEs of a lease expiry";
    let mut watcher = d.spawn(&["watch", "le/", "--prefix", &from, "--prev-kv", "-w", "json"]);
    let keep_step = "lease keep-alive (continuous) of a 2 s lease for 3 s, then revoked";
    let started = Instant::now();
    let mut keeper = d.spawn(&["lease", "keep-alive", &kept]).folding_repeats();
    d.wait_for(step, &mut watcher, "\"type\":1", 2, EXPIRY_WAIT);
    std::thread::sleep(KEEP_ALIVE_FOR.saturating_sub(started.elapsed()));
    d.wait_for(keep_step, &mut keeper, "keepalived", 3, WAIT);
    d.ctl(
        "expiry: lease timetolive of the kept-alive lease (alive after its TTL)",
        &["lease", "timetolive", &kept],
    );
    d.ctl(
        "expiry: lease revoke of the kept-alive lease",
        &["lease", "revoke", &kept],
    );
    // etcdctl's next keep-alive (every TTL/3) learns of the revoke and ends the command.
    d.wait_exit(keep_step, &mut keeper, WAIT);
    d.stop(keep_step, keeper);
    d.stop(step, watcher);

    d.ctl(
        "expiry: lease timetolive of the expired lease",
        &["lease", "timetolive", &expiring, "--keys"],
    );
    d.ctl(
        "expiry: get after the expiry",
        &["get", "le/", "--prefix", "-w", "json"],
    );
    d.ctl(
        "expiry: put --lease of the expired lease",
        &["put", "le/c", "v", &with],
    );
}

// ---------------------------------------------------------------------------------------------
// Watches through etcdctl.
// ---------------------------------------------------------------------------------------------

/// `watch` in every shape etcdctl 3.4 has; returns the compacted revision.
fn watches(d: &mut Differ) -> i64 {
    let r0 = d.revision();
    d.ctl("watch history: put w/a a1", &["put", "w/a", "a1"]);
    d.ctl("watch history: put w/b b1", &["put", "w/b", "b1"]);
    d.ctl("watch history: put w/a a2", &["put", "w/a", "a2"]);
    d.ctl("watch history: put w/c c1", &["put", "w/c", "c1"]);
    d.ctl("watch history: del w/b", &["del", "w/b"]);
    d.txn(
        "watch history: txn put w/d, del w/c (one revision)",
        &[],
        &["put w/d d1", "del w/c"],
        &[],
        false,
    );
    d.ctl("watch history: put x/other", &["put", "x/other", "o1"]);
    d.ctl("watch history: put w/a a3", &["put", "w/a", "a3"]);
    let last = r0 + 8;
    let rev = |r: i64| format!("--rev={r}");
    let last_json = format!("\"mod_revision\":{last}");

    // Replays of history written before the watcher started.
    let replays: [(&str, Vec<String>, &str); 9] = [
        ("watch one key --rev", vec!["w/a".into(), rev(r0 + 1)], "a3"),
        (
            "watch --prefix --rev",
            vec!["w/".into(), "--prefix".into(), rev(r0 + 1)],
            "a3",
        ),
        (
            "watch a range [w/a, w/c) --rev",
            vec!["w/a".into(), "w/c".into(), rev(r0 + 1)],
            "a3",
        ),
        (
            "watch --prefix from the middle of history",
            vec!["w/".into(), "--prefix".into(), rev(r0 + 4)],
            "a3",
        ),
        (
            "watch --prefix --rev at the last revision",
            vec!["w/".into(), "--prefix".into(), rev(last)],
            "a3",
        ),
        (
            "watch everything --rev",
            vec!["".into(), "--prefix".into(), rev(r0 + 1)],
            "a3",
        ),
        (
            "watch --prefix --rev --prev-kv",
            vec![
                "w/".into(),
                "--prefix".into(),
                rev(r0 + 1),
                "--prev-kv".into(),
            ],
            "a3",
        ),
        (
            "watch --prefix --rev -w json (one response)",
            vec![
                "w/".into(),
                "--prefix".into(),
                rev(r0 + 1),
                "-w".into(),
                "json".into(),
            ],
            &last_json,
        ),
        (
            "watch --prefix --rev --prev-kv -w json",
            vec![
                "w/".into(),
                "--prefix".into(),
                rev(r0 + 1),
                "--prev-kv".into(),
                "-w".into(),
                "json".into(),
            ],
            &last_json,
        ),
    ];
    for (step, args, needle) in &replays {
        let mut all = vec!["watch"];
        all.extend(args.iter().map(String::as_str));
        watch_while(d, step, &all, needle, 1, |_| {});
    }

    // Live: the writes happen while the watcher runs; `--rev` of the next revision makes the
    // output independent of when the watch is established.
    let next = rev(d.revision() + 1);
    watch_while(
        d,
        "watch one key while it is written",
        &["watch", "w/a", &next],
        "a5",
        1,
        |d| {
            d.ctl("live: put w/a a4", &["put", "w/a", "a4"]);
            d.ctl("live: put w/b b2 (not watched)", &["put", "w/b", "b2"]);
            d.ctl("live: del w/a", &["del", "w/a"]);
            d.ctl("live: put w/a a5", &["put", "w/a", "a5"]);
        },
    );
    let next = rev(d.revision() + 1);
    watch_while(
        d,
        "watch --prefix --prev-kv while it is written",
        &["watch", "w/", "--prefix", &next, "--prev-kv"],
        "end",
        1,
        |d| {
            d.ctl("live: put w/b b3", &["put", "w/b", "b3"]);
            d.txn(
                "live: txn put w/e, del w/d",
                &[],
                &["put w/e e1", "del w/d"],
                &[],
                false,
            );
            d.ctl(
                "live: del --prefix (several keys, one revision)",
                &["del", "w/", "--prefix"],
            );
            d.ctl("live: put w/z end", &["put", "w/z", "end"]);
        },
    );
    let next = rev(d.revision() + 1);
    watch_while(
        d,
        "watch a range while it is written",
        &["watch", "w/b", "w/d", &next],
        "b5",
        1,
        |d| {
            d.ctl("live: put w/a a6 (before the range)", &["put", "w/a", "a6"]);
            d.ctl("live: put w/b b4", &["put", "w/b", "b4"]);
            d.ctl("live: put w/d d2 (the range end)", &["put", "w/d", "d2"]);
            d.ctl("live: put w/c c2", &["put", "w/c", "c2"]);
            d.ctl("live: put w/b b5", &["put", "w/b", "b5"]);
        },
    );

    // Compaction: a watch from below the compacted revision is canceled (etcdctl exits).
    let compacted = r0 + 4;
    d.ctl("watch: compaction", &["compaction", &compacted.to_string()]);
    for (step, json) in [
        ("watch --rev below the compacted revision", false),
        ("watch --rev below the compacted revision -w json", true),
    ] {
        let mut args = vec!["watch", "w/", "--prefix"];
        let from = rev(compacted - 1);
        args.push(&from);
        if json {
            args.extend(["-w", "json"]);
        }
        watch_until_exit(d, step, &args);
    }
    watch_until_exit(
        d,
        "watch --rev=1 after a compaction",
        &["watch", "w/a", "--rev=1"],
    );
    watch_while(
        d,
        "watch --rev at the compacted revision",
        &["watch", "w/", "--prefix", &rev(compacted)],
        "b5",
        1,
        |_| {},
    );
    compacted
}

/// `watch -i`: watch lines and `progress` from stdin. Each line is awaited before the next one.
fn watch_interactive(d: &mut Differ, compacted: i64) {
    let rev = d.revision();
    d.ctl("interactive: put i/a a1", &["put", "i/a", "a1"]);
    d.ctl("interactive: put i/b b1", &["put", "i/b", "b1"]);
    let step = "watch -i with watch and progress lines";
    let mut w = d.spawn_interactive(&["watch", "-i"]);
    d.feed(&mut w, &format!("watch i/a --rev {}", rev + 1));
    d.wait_for(step, &mut w, "a1", 1, WAIT);
    d.feed(&mut w, &format!("watch i/b --rev {} --prev-kv", rev + 2));
    d.wait_for(step, &mut w, "b1", 1, WAIT);
    d.ctl("interactive: put i/b b2", &["put", "i/b", "b2"]);
    d.wait_for(step, &mut w, "b2", 1, WAIT);
    // Every watcher of the stream prints the progress notification (same line, any order).
    d.feed(&mut w, "progress");
    let progress = format!("progress notify: {}", rev + 3);
    d.wait_for(step, &mut w, &progress, 2, WAIT);
    d.feed(
        &mut w,
        &format!("watch --prefix i/ --rev {}", compacted - 1),
    );
    d.wait_for(step, &mut w, "has been compacted", 1, WAIT);
    d.feed(&mut w, "watch i/z i/a");
    d.wait_for(step, &mut w, "range is empty", 1, WAIT);
    // Closing stdin ends etcdctl ("error reading watch request line: EOF").
    d.stop(step, w);

    let step = "watch -i -w json with a progress line";
    let mut w = d.spawn_interactive(&["watch", "-i", "-w", "json"]);
    d.feed(&mut w, &format!("watch i/a --rev {}", rev + 1));
    d.wait_for(step, &mut w, "Events", 1, WAIT);
    d.feed(&mut w, "progress");
    d.wait_for(step, &mut w, "progress notify", 1, WAIT);
    d.wait_for(step, &mut w, "Events", 2, WAIT);
    d.stop(step, w);
}

/// Watch ranges that hold no key: etcd cancels the watch at once.
fn watch_bad_ranges(d: &mut Differ) {
    watch_until_exit(
        d,
        "watch with the key after the range end",
        &["watch", "w/d", "w/a"],
    );
    watch_until_exit(
        d,
        "watch with the key equal to the range end",
        &["watch", "w/a", "w/a"],
    );
    watch_until_exit(
        d,
        "watch with the key after the range end -w json",
        &["watch", "w/d", "w/a", "-w", "json"],
    );
}

// ---------------------------------------------------------------------------------------------
// What etcdctl 3.4 cannot send: raw watch and lease requests over etcd-client.
// ---------------------------------------------------------------------------------------------

/// One request on a watch stream.
#[derive(Clone)]
enum Request {
    /// Creates a watch on a key, with its options described in words (for the rendering).
    Watch(&'static str, WatchOptions, String),
    /// Cancels this watch id; `None`: the id of the first watch the stream created.
    Cancel(Option<i64>),
}

/// Raw watch responses: created/canceled flags, watch ids, cancel reasons, compact revisions.
fn grpc_watches(d: &mut Differ, compacted: i64) {
    let now = d.revision();
    let opts = WatchOptions::new;
    let watch = |key: &'static str, opts: WatchOptions, what: &str| {
        Request::Watch(key, opts, what.to_string())
    };
    let past = compacted - 1;
    let future = now + 5;
    let cases: Vec<(&str, Vec<(Request, usize)>)> = vec![
        ("a watch is created", vec![(watch("gw/a", opts(), ""), 1)]),
        (
            "two watches on one stream",
            vec![
                (watch("gw/a", opts(), ""), 1),
                (watch("gw/b", opts().with_prefix(), "prefix"), 1),
            ],
        ),
        (
            "a client-chosen watch id, then the same id again",
            vec![
                (watch("gw/a", opts().with_watch_id(7), "watch_id 7"), 1),
                (watch("gw/b", opts().with_watch_id(7), "watch_id 7"), 1),
            ],
        ),
        (
            "cancel of an unknown watch id (no answer)",
            vec![
                (watch("gw/a", opts(), ""), 1),
                (Request::Cancel(Some(99)), 0),
            ],
        ),
        (
            "cancel of a live watch",
            vec![(watch("gw/a", opts(), ""), 1), (Request::Cancel(None), 1)],
        ),
        (
            "key after the range end",
            vec![(
                watch("gw/z", opts().with_range("gw/a"), "range end gw/a"),
                1,
            )],
        ),
        (
            "key equal to the range end",
            vec![(
                watch("gw/a", opts().with_range("gw/a"), "range end gw/a"),
                1,
            )],
        ),
        (
            "from a compacted revision",
            vec![(
                watch(
                    "w/",
                    opts().with_prefix().with_start_revision(past),
                    &format!("prefix, start_revision {past}"),
                ),
                2,
            )],
        ),
        (
            "from the compacted revision, NoPut filter, prev_kv",
            vec![(
                watch(
                    "w/",
                    opts()
                        .with_prefix()
                        .with_start_revision(compacted)
                        .with_filters([WatchFilterType::NoPut])
                        .with_prev_key(),
                    &format!("prefix, start_revision {compacted}, filters [NOPUT], prev_kv"),
                ),
                2,
            )],
        ),
        (
            "from a future revision (created, then silent)",
            vec![(
                watch(
                    "w/",
                    opts().with_prefix().with_start_revision(future),
                    &format!("prefix, start_revision {future}"),
                ),
                1,
            )],
        ),
        (
            "a watch on everything, then a write",
            vec![(watch("", opts().with_all_keys(), "all keys"), 1)],
        ),
    ];
    for (name, sends) in cases {
        let chosen: Vec<i64> = vec![7];
        let write = name.ends_with("then a write");
        d.grpc(&format!("grpc watch: {name}"), async |c: Client| {
            watch_conversation(c, sends.clone(), &chosen, write).await
        });
        if write {
            // The write the last conversation made, on both servers: the revisions agree again.
            d.revision();
        }
    }
}

/// Sends `sends` on one watch stream, reading each one's expected responses, then (when `write`)
/// puts one key and reads its event, then requests progress and reads up to the progress response:
/// anything unexpected a server sent before it shows up in the rendering.
async fn watch_conversation(
    mut c: Client,
    sends: Vec<(Request, usize)>,
    chosen: &[i64],
    write: bool,
) -> String {
    let mut ids = WatchIds::new(chosen);
    let mut out = String::new();
    let mut stream: Option<WatchStream> = None;
    let mut first_created: Option<i64> = None;
    for (send, expected) in sends {
        out.push_str(&format!("> {}\n", describe(&send)));
        let sent = match (send, stream.as_mut()) {
            (Request::Watch(key, opts, _), None) => match c.watch(key, Some(opts)).await {
                Ok(s) => {
                    stream = Some(s);
                    Ok(())
                }
                Err(e) => Err(e),
            },
            (Request::Watch(key, opts, _), Some(s)) => s.watch(key, Some(opts)).await,
            (Request::Cancel(id), Some(s)) => s.cancel(id.or(first_created).unwrap_or(-2)).await,
            (Request::Cancel(_), None) => unreachable!("the script opens a stream first"),
        };
        if let Err(e) = sent {
            out.push_str(&show_err(e));
            return out;
        }
        let s = stream.as_mut().unwrap();
        for _ in 0..expected {
            match next_response(s).await {
                Ok(r) => {
                    if r.created() && first_created.is_none() {
                        first_created = Some(r.watch_id());
                    }
                    out.push_str(&show_watch_response(&r, &mut ids));
                }
                Err(e) => {
                    out.push_str(&e);
                    return out;
                }
            }
        }
    }
    let s = stream.as_mut().unwrap();
    if write {
        out.push_str("> put gw/written\n");
        if let Err(e) = c.put("gw/written", "x", None).await {
            out.push_str(&show_err(e));
        }
        match next_response(s).await {
            Ok(r) => out.push_str(&show_watch_response(&r, &mut ids)),
            Err(e) => out.push_str(&e),
        }
    }
    out.push_str("> progress request\n");
    if let Err(e) = s.request_progress().await {
        return out + &show_err(e);
    }
    loop {
        match next_response(s).await {
            Ok(r) => {
                out.push_str(&show_watch_response(&r, &mut ids));
                let progress = r.watch_id() == -1 && !r.created() && !r.canceled();
                if progress && r.events().is_empty() {
                    return out;
                }
            }
            Err(e) => return out + &e,
        }
    }
}

async fn next_response(s: &mut WatchStream) -> Result<WatchResponse, String> {
    match tokio::time::timeout(WAIT, s.message()).await {
        Ok(Ok(Some(r))) => Ok(r),
        Ok(Ok(None)) => Err("the server closed the stream\n".into()),
        Ok(Err(e)) => Err(show_err(e) + "\n"),
        Err(_) => Err(format!("no response within {WAIT:?}\n")),
    }
}

fn describe(send: &Request) -> String {
    match send {
        Request::Watch(key, _, what) if what.is_empty() => format!("watch {key:?}"),
        Request::Watch(key, _, what) => format!("watch {key:?}, {what}"),
        Request::Cancel(Some(id)) => format!("cancel {id}"),
        Request::Cancel(None) => "cancel the first watch".into(),
    }
}

/// Watch ids as shown: server-chosen ones as `<watch#N>` in order of appearance (see the module
/// doc); client-chosen ones and -1 as they are.
struct WatchIds {
    chosen: Vec<i64>,
    seen: Vec<i64>,
}

impl WatchIds {
    fn new(chosen: &[i64]) -> Self {
        WatchIds {
            chosen: chosen.to_vec(),
            seen: Vec::new(),
        }
    }

    fn show(&mut self, id: i64) -> String {
        if id == -1 || self.chosen.contains(&id) {
            return id.to_string();
        }
        if !self.seen.contains(&id) {
            self.seen.push(id);
        }
        let n = self.seen.iter().position(|&s| s == id).unwrap() + 1;
        format!("<watch#{n}>")
    }
}

fn show_watch_response(r: &WatchResponse, ids: &mut WatchIds) -> String {
    let mut s = format!(
        "watch_id {}, created {}, canceled {}, compact_revision {}, cancel_reason {:?}, {}\n",
        ids.show(r.watch_id()),
        r.created(),
        r.canceled(),
        r.compact_revision(),
        r.cancel_reason(),
        revision_of(r.header())
    );
    for event in r.events() {
        let kind = match event.event_type() {
            EventType::Put => "PUT",
            EventType::Delete => "DELETE",
        };
        let kv = event.kv().map_or("(no kv)\n".into(), show_kv);
        s.push_str(&format!("  {kind} {}", kv.trim_start()));
        if let Some(prev) = event.prev_kv() {
            s.push_str(&format!("    prev {}", show_kv(prev).trim_start()));
        }
    }
    s
}

/// Raw lease requests: client-chosen ids, keep-alive and time-to-live answers.
fn grpc_leases(d: &mut Differ) {
    // Shown as `id …`, not `lease …`: a server that ignored the chosen id must show.
    const CHOSEN: i64 = 0x7e57_0000_0001;
    let unknown = i64::from_str_radix(UNKNOWN_LEASE, 16).unwrap();
    d.grpc(
        "grpc lease: grant with a client-chosen id",
        async |c: Client| show_grant(c, 60, CHOSEN).await,
    );
    d.grpc(
        "grpc lease: grant with an id that already exists",
        async |c: Client| show_grant(c, 60, CHOSEN).await,
    );
    d.grpc(
        "grpc lease: keep-alive of the chosen id",
        async |mut c: Client| match c.lease_keep_alive(CHOSEN).await {
            Ok((mut keeper, mut stream)) => {
                let mut s = format!("keeper id {:x}\n", keeper.id());
                if let Err(e) = keeper.keep_alive().await {
                    return s + &show_err(e);
                }
                match tokio::time::timeout(WAIT, stream.message()).await {
                    Ok(Ok(Some(r))) => s.push_str(&format!(
                        "keep-alive: id {:x}, ttl {}, {}\n",
                        r.id(),
                        r.ttl(),
                        revision_of(r.header())
                    )),
                    other => s.push_str(&format!("no keep-alive answer: {other:?}\n")),
                }
                s
            }
            Err(e) => show_err(e),
        },
    );
    d.grpc(
        "grpc lease: keep-alive of an unknown lease",
        async |mut c: Client| match c.lease_keep_alive(unknown).await {
            Ok((keeper, _)) => format!("keeper id {:x}\n", keeper.id()),
            Err(e) => show_err(e),
        },
    );
    d.grpc(
        "grpc lease: time-to-live with keys of the chosen id",
        async |c: Client| show_time_to_live(c, CHOSEN).await,
    );
    d.grpc(
        "grpc lease: time-to-live with keys of an unknown lease",
        async |c: Client| show_time_to_live(c, unknown).await,
    );
    d.grpc("grpc lease: leases", async |mut c: Client| {
        match c.leases().await {
            Ok(r) => {
                let mut s = format!("leases: {}\n", revision_of(r.header()));
                for l in r.leases() {
                    s.push_str(&format!("  id {:x}\n", l.id()));
                }
                s
            }
            Err(e) => show_err(e),
        }
    });
    d.grpc(
        "grpc lease: revoke the chosen id",
        async |mut c: Client| match c.lease_revoke(CHOSEN).await {
            Ok(r) => format!("revoked: {}\n", revision_of(r.header())),
            Err(e) => show_err(e),
        },
    );
    d.grpc(
        "grpc lease: grant with a negative client-chosen id",
        async |c: Client| show_grant(c, 60, -5).await,
    );
}

async fn show_grant(mut c: Client, ttl: i64, id: i64) -> String {
    let opts = LeaseGrantOptions::new().with_id(id);
    match c.lease_grant(ttl, Some(opts)).await {
        Ok(r) => format!(
            "granted: id {:x}, ttl {}, error {:?}, {}\n",
            r.id(),
            r.ttl(),
            r.error(),
            revision_of(r.header())
        ),
        Err(e) => show_err(e),
    }
}

/// A time-to-live answer; the remaining TTL only as "within the granted TTL" (wall-clock), the
/// keys sorted (etcd lists them in Go map order).
async fn show_time_to_live(mut c: Client, id: i64) -> String {
    let opts = LeaseTimeToLiveOptions::new().with_keys();
    match c.lease_time_to_live(id, Some(opts)).await {
        Ok(r) => {
            let ttl = if (0..=r.granted_ttl()).contains(&r.ttl()) && r.granted_ttl() > 0 {
                "<within TTL>".to_string()
            } else {
                r.ttl().to_string()
            };
            let mut keys: Vec<String> = r
                .keys()
                .iter()
                .map(|k| k.escape_ascii().to_string())
                .collect();
            keys.sort();
            format!(
                "time-to-live: id {:x}, ttl {ttl}, granted_ttl {}, keys {keys:?}, {}\n",
                r.id(),
                r.granted_ttl(),
                revision_of(r.header())
            )
        }
        Err(e) => show_err(e),
    }
}

// ---------------------------------------------------------------------------------------------
// Step helpers.
// ---------------------------------------------------------------------------------------------

/// `etcdctl lease grant …`; returns the lease as the script names it (`<lease#N>`).
fn grant(d: &mut Differ, step: &str, args: &[&str]) -> String {
    let out = d.ctl(step, args);
    match placeholder_in(&out) {
        Some(lease) => lease,
        None => {
            d.script_error(format!(
                "script error in `{step}`: etcd granted no lease:\n{out:?}"
            ));
            "<lease#0>".into()
        }
    }
}

fn placeholder_in(out: &Outcome) -> Option<String> {
    let at = out.stdout.find("<lease#")?;
    let end = out.stdout[at..].find('>')? + at + 1;
    Some(out.stdout[at..end].to_string())
}

/// Starts `etcdctl <args>` in the background, runs `writes`, waits until `needle` was printed
/// `times` times, then stops and compares it.
fn watch_while(
    d: &mut Differ,
    step: &str,
    args: &[&str],
    needle: &str,
    times: usize,
    writes: impl FnOnce(&mut Differ),
) -> Outcome {
    let mut bg = d.spawn(args);
    writes(d);
    d.wait_for(step, &mut bg, needle, times, WAIT);
    d.stop(step, bg)
}

/// Runs an etcdctl that etcd ends by itself (a canceled watch) and compares it.
fn watch_until_exit(d: &mut Differ, step: &str, args: &[&str]) -> Outcome {
    let mut bg = d.spawn(args);
    d.wait_exit(step, &mut bg, WAIT);
    d.stop(step, bg)
}
