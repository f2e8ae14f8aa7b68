//! The differential harness: run the same `etcdctl` invocations against a real etcd 3.4 and against
//! Concord, and record every difference. Shared by `etcd_compat.rs` (the KV, compaction and
//! maintenance story) and `etcd_compat_watch_lease.rs` (the Watch and Lease story).
//!
//! [`run`] starts a real etcd 3.4 (a child process on 127.0.0.1, free ports, a fresh data dir) and a
//! Concord server (in-process, fresh data dir). Both begin at revision 1 and receive the same
//! scripted sequence of `etcdctl` invocations in the same order, so every revision, version and
//! create/mod revision must match exactly. Each step ([`Differ::ctl`], [`Differ::txn`]) compares
//! etcdctl's stdout, stderr and exit status. Commands that run until stopped (`watch`,
//! `lease keep-alive`, `watch -i`) are started on both servers ([`Differ::spawn`],
//! [`Differ::spawn_interactive`]), fed stdin lines and awaited ([`Differ::feed`],
//! [`Differ::wait_for`], [`Differ::wait_exit`]) while the script writes, then stopped and compared
//! as one step ([`Differ::stop`]).
//!
//! What legitimately differs is normalized before comparing, and nothing else:
//! - the endpoint string (`127.0.0.1:<port>`): the ports differ;
//! - `cluster_id`, `member_id` and `raft_term` in response headers (`-w json`: the `header` and
//!   `Header` objects at any depth, including the headers nested in txn responses, and the header
//!   fields etcdctl's lease commands print flattened into the top-level object; the `-w fields`
//!   lines): ids are derived from the peer URLs, which differ between the two servers, and the term
//!   counts elections;
//! - lease ids: the server picks them. Each side keeps its own list of the ids it granted
//!   ([`LeaseIds`], filled from `lease grant` outputs in order), and a granted id is written
//!   `<lease#N>` wherever etcdctl prints one: after the word `lease` (hex), as a `lease list` line,
//!   in the `ID`/`Lease` lines of `-w fields` and the `ID`/`id`/`lease` fields of `-w json`. The
//!   script writes `<lease#N>` in arguments and stdin, and each side's runner substitutes its own
//!   id. Ids the script chose itself (an unknown lease) are never replaced;
//! - the remaining TTL of a live lease (`remaining(59s)`, JSON `ttl`, fields `TTL` of `lease
//!   timetolive`): wall-clock time; a value between 0 and the granted TTL becomes `<within TTL>`,
//!   anything else is left as is;
//! - the order of a lease's attached keys (`attached keys([…])`, JSON `keys`): etcd 3.4 lists
//!   them in Go map order, which is randomized per call; they are sorted;
//! - `took` in `endpoint health` (text and JSON): wall-clock time;
//! - etcdctl's JSON retry log lines on stderr (`{"level":"warn","ts":…}`): they carry a timestamp
//!   and a random client id, so only their `error` field (gRPC code and description) is kept; the
//!   final `Error: …` line is compared as is;
//! - per-field normalizations of `endpoint status` and `endpoint hashkv`, each explained where it is
//!   done ([`normalize_status`], [`normalize_hashkv`]);
//! - for a background command started with [`Background::folding_repeats`] only (continuous
//!   `lease keep-alive`): runs of identical lines are folded into one, since how many keep-alive
//!   responses fit in a time window is set by the client's timer.
//!
//! Requests etcdctl 3.4 cannot make are sent with the `etcd-client` crate to both servers
//! ([`Differ::grpc`], [`Differ::grpc_leases`]); the script renders the answers as text, which is
//! normalized like etcdctl's text output and compared the same way.
//!
//! Every difference is recorded (the step name, the command, both outputs) and the test fails at the
//! end listing all of them: the first one is usually the cause, later ones may be its consequences.
//! `CONCORD_COMPAT_TRACE=1 cargo test --test <name> -- --nocapture` prints every step with etcd's
//! (normalized) output, to see what each step really exercises.
//!
//! Needs etcd 3.4 (`apt-get install etcd-server etcd-client`); without it a test prints SKIPPED and
//! passes, unless `CONCORD_REQUIRE_ETCD=1`, which turns the skip into a failure.

// Each test file compiles its own copy of this module and uses only part of it.
#![allow(dead_code)]

pub mod cluster;
pub mod linearizable;

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use concord_store::{Server, ServerConfig};
use etcd_client::Client;
use serde_json::Value;

const SKIP_MESSAGE: &str =
    "SKIPPED: etcd 3.4 not installed; apt-get install etcd-server etcd-client";

/// How long [`Differ::stop`] lets a background command keep printing before stopping it, so that
/// output arriving after the awaited text (an extra event, say) is part of the comparison.
const SETTLE: Duration = Duration::from_millis(200);

/// How much longer than etcd Concord may take to print what a background step waits for (a lease
/// expiry may be noticed a little later); beyond that, waiting would only slow a failing run.
const GRACE: Duration = Duration::from_secs(2);

/// Starts etcd and Concord, runs `script` against both (off the async workers: etcdctl is a blocking
/// child process), and fails listing every difference. `name` labels the summary line.
pub async fn run(name: &str, script: fn(&mut Differ)) {
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

    let report = tokio::task::spawn_blocking(move || {
        let mut d = Differ::new(rt, bins.etcdctl, etcd_endpoint, concord_endpoint);
        script(&mut d);
        d.report()
    })
    .await;

    concord.shutdown().await.unwrap();
    drop(etcd);
    let report = report.expect("the script panicked");
    println!("{name}: {} in {:.1?}", report.summary, started.elapsed());
    assert!(report.failures.is_empty(), "{}", report.failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Running a step on both servers and comparing.
// ---------------------------------------------------------------------------------------------

/// One etcdctl run, normalized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    pub stderr: String,
    pub status: Option<i32>,
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

    /// Whether stdout or stderr contains `needle`.
    pub fn contains(&self, needle: &str) -> bool {
        self.stdout.contains(needle) || self.stderr.contains(needle)
    }
}

/// One server under test.
pub struct Side {
    /// `127.0.0.1:<port>`; written `<endpoint>` in outputs.
    pub endpoint: String,
    /// An etcd-client connection, for the requests etcdctl cannot make.
    pub client: Client,
    /// The lease ids this server granted: how its outputs name them, and how the script's
    /// `<lease#N>` placeholders are resolved for it.
    pub leases: LeaseIds,
}

impl Side {
    /// The arguments with `<lease#N>` replaced by this server's lease ids.
    fn resolve_args(&self, args: &[OsString]) -> Vec<OsString> {
        args.iter()
            .map(|a| match a.to_str() {
                Some(s) if s.contains(LEASE_MARK) => self.leases.resolve(s).into(),
                _ => a.clone(),
            })
            .collect()
    }

    fn normalize(&mut self, raw: Raw, args: &[String], fold_repeats: bool) -> Outcome {
        let mut out = normalize(&raw, &self.endpoint, args, &mut self.leases);
        if fold_repeats {
            out.stdout = fold_repeated_lines(&out.stdout);
            out.stderr = fold_repeated_lines(&out.stderr);
        }
        out
    }
}

pub struct Report {
    pub summary: String,
    pub failures: Vec<String>,
}

/// Runs every step against etcd and Concord and records the differences.
pub struct Differ {
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
        let side = |endpoint: String| Side {
            client: connect(&endpoint),
            endpoint,
            leases: LeaseIds::default(),
        };
        Differ {
            etcd: side(etcd),
            concord: side(concord),
            rt,
            etcdctl,
            steps: 0,
            mismatches: Vec::new(),
            script_errors: Vec::new(),
        }
    }

    /// `etcdctl <args>` against both; returns etcd's (normalized) outcome.
    pub fn ctl(&mut self, step: &str, args: &[&str]) -> Outcome {
        self.ctl_os(step, args.iter().map(OsString::from).collect(), None)
    }

    pub fn ctl_os(&mut self, step: &str, args: Vec<OsString>, stdin: Option<&str>) -> Outcome {
        let (etcd_args, concord_args) = (
            self.etcd.resolve_args(&args),
            self.concord.resolve_args(&args),
        );
        let etcd_stdin = stdin.map(|s| self.etcd.leases.resolve(s));
        let concord_stdin = stdin.map(|s| self.concord.leases.resolve(s));
        let (etcd, concord) = std::thread::scope(|s| {
            let etcd = s.spawn(|| {
                run_etcdctl(
                    &self.etcdctl,
                    &self.etcd.endpoint,
                    &etcd_args,
                    etcd_stdin.as_deref(),
                )
            });
            let concord = run_etcdctl(
                &self.etcdctl,
                &self.concord.endpoint,
                &concord_args,
                concord_stdin.as_deref(),
            );
            (etcd.join().expect("etcdctl runner panicked"), concord)
        });
        let strs = lossy_args(&args);
        let etcd = self.etcd.normalize(etcd, &strs, false);
        let concord = self.concord.normalize(concord, &strs, false);
        let mut command = command_line(&args);
        if let Some(input) = stdin {
            command.push_str(&format!(" <<EOF\n{}EOF", clip(input)));
        }
        self.compare(step, &command, etcd.clone(), concord);
        etcd
    }

    /// `etcdctl txn` with its three sections on stdin.
    pub fn txn(
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
    pub fn grpc(&mut self, step: &str, f: impl AsyncFn(Client) -> String) -> String {
        self.grpc_leases(step, async |c, _| f(c).await)
    }

    /// Like [`Differ::grpc`], but `f` also gets the side's lease ids (to resolve `<lease#N>`), and
    /// the rendered answer goes through the lease normalizations of text output (so render lease
    /// ids the way etcdctl does: `lease <hex>`).
    pub fn grpc_leases(
        &mut self,
        step: &str,
        f: impl AsyncFn(Client, LeaseIds) -> String,
    ) -> String {
        let run = |side: &mut Side| {
            let text = self
                .rt
                .block_on(f(side.client.clone(), side.leases.clone()));
            Outcome {
                stdout: normalize_lease_text(&text, &mut side.leases),
                stderr: String::new(),
                status: None,
            }
        };
        let etcd = run(&mut self.etcd);
        let concord = run(&mut self.concord);
        self.compare(
            step,
            "(etcd-client request, see the step name)",
            etcd.clone(),
            concord,
        );
        etcd.stdout
    }

    /// Starts `etcdctl <args>` on both servers and leaves it running (a `watch`, a continuous
    /// `lease keep-alive`): write, [`Differ::wait_for`] its output, then [`Differ::stop`] it.
    pub fn spawn(&mut self, args: &[&str]) -> Background {
        self.start_background(args, false)
    }

    /// Like [`Differ::spawn`], with stdin left open for [`Differ::feed`] (`watch -i`); closing it
    /// is part of stopping.
    pub fn spawn_interactive(&mut self, args: &[&str]) -> Background {
        self.start_background(args, true)
    }

    fn start_background(&mut self, args: &[&str], interactive: bool) -> Background {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        let start = |side: &Side| {
            let args = side.resolve_args(&args);
            Running::start(&self.etcdctl, &side.endpoint, &args, interactive)
        };
        Background {
            transcript: format!("{} &", command_line(&args)),
            args: lossy_args(&args),
            fold_repeats: false,
            etcd: start(&self.etcd),
            concord: start(&self.concord),
        }
    }

    /// Writes `line` (with `<lease#N>` resolved per side) to both background commands' stdin.
    pub fn feed(&mut self, bg: &mut Background, line: &str) {
        bg.transcript.push_str(&format!("\n  stdin> {line}"));
        for (side, running) in [(&self.etcd, &mut bg.etcd), (&self.concord, &mut bg.concord)] {
            let line = format!("{}\n", side.leases.resolve(line));
            if let Some(stdin) = running.stdin.as_mut() {
                // A command that already exited closed its stdin: its output shows why.
                let _ = stdin.write_all(line.as_bytes()).and_then(|_| stdin.flush());
            }
        }
    }

    /// Waits until both background commands printed `needle` (stdout or stderr) at least `times`
    /// times, or exited, or `timeout` passed; Concord gets at most [`GRACE`] more than etcd needed.
    /// etcd not printing it is a script error.
    pub fn wait_for(
        &mut self,
        step: &str,
        bg: &mut Background,
        needle: &str,
        times: usize,
        timeout: Duration,
    ) {
        bg.transcript
            .push_str(&format!("\n  (waited for {needle:?} x{times})"));
        let done = |r: &mut Running| r.count(needle) >= times || r.exited();
        wait_until(bg, timeout, done);
        if bg.etcd.count(needle) < times {
            let (out, err) = bg.etcd.text();
            self.script_errors.push(format!(
                "script error in `{step}`: etcd printed {needle:?} fewer than {times} times \
                 within {timeout:?}:\n--- stdout ---\n{}\n--- stderr ---\n{}",
                clip(&out),
                clip(&err)
            ));
        }
    }

    /// Waits until both background commands exited by themselves, or `timeout` passed; Concord
    /// gets at most [`GRACE`] more than etcd needed. etcd's still running is a script error.
    pub fn wait_exit(&mut self, step: &str, bg: &mut Background, timeout: Duration) {
        bg.transcript.push_str("\n  (waited for it to exit)");
        wait_until(bg, timeout, Running::exited);
        if !bg.etcd.exited() {
            self.script_errors.push(format!(
                "script error in `{step}`: etcd's etcdctl still runs after {timeout:?}"
            ));
        }
    }

    /// Stops a background command on both servers and compares everything it printed. After
    /// [`SETTLE`], an interactive command's stdin is closed and it gets a second to exit by itself
    /// (`watch -i` exits on end of input); then it is killed (exit status `None`).
    pub fn stop(&mut self, step: &str, bg: Background) -> Outcome {
        std::thread::sleep(SETTLE);
        let Background {
            mut transcript,
            args,
            fold_repeats,
            etcd,
            concord,
        } = bg;
        if etcd.stdin.is_some() {
            transcript.push_str("\n  (stdin closed)");
        }
        let (etcd, concord) = std::thread::scope(|s| {
            let etcd = s.spawn(|| etcd.stop());
            let concord = concord.stop();
            (etcd.join().expect("stopping etcdctl panicked"), concord)
        });
        let etcd = self.etcd.normalize(etcd, &args, fold_repeats);
        let concord = self.concord.normalize(concord, &args, fold_repeats);
        self.compare(step, &transcript, etcd.clone(), concord);
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
    pub fn sanity(&mut self, step: &str, etcd: &Outcome, needle: &str) {
        if !etcd.contains(needle) {
            self.script_error(format!(
                "script error in `{step}`: etcd's output does not contain {needle:?}:\n{}",
                etcd.render()
            ));
        }
    }

    /// Records a false premise of the script about etcd (the test fails listing it).
    pub fn script_error(&mut self, text: String) {
        self.script_errors.push(text);
    }

    /// The current revision of both servers (they must agree; etcd's is returned).
    pub fn revision(&mut self) -> i64 {
        let rev = |side: &Side| {
            let mut c = side.client.clone();
            self.rt
                .block_on(c.get("revision-probe", None))
                .map(|r| r.header().map_or(0, |h| h.revision()))
                .unwrap_or(-1)
        };
        let (etcd, concord) = (rev(&self.etcd), rev(&self.concord));
        if etcd != concord {
            let outcome = |rev: i64| Outcome {
                stdout: rev.to_string(),
                stderr: String::new(),
                status: None,
            };
            self.compare(
                "current revision",
                "(etcd-client get)",
                outcome(etcd),
                outcome(concord),
            );
        }
        etcd
    }

    /// etcd's etcd-client connection (for reading facts the script builds on).
    pub fn etcd_client(&self) -> Client {
        self.etcd.client.clone()
    }

    /// Runs a future on the test's runtime (the script runs on a blocking thread).
    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
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

/// Polls both sides of `bg` until `done` holds for both, `timeout` passed, or Concord had [`GRACE`]
/// more than etcd.
fn wait_until(bg: &mut Background, timeout: Duration, done: impl Fn(&mut Running) -> bool) {
    let deadline = Instant::now() + timeout;
    let mut etcd_done_at: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if etcd_done_at.is_none() && done(&mut bg.etcd) {
            etcd_done_at = Some(now);
        }
        let concord_done = done(&mut bg.concord);
        let concord_late = etcd_done_at.is_some_and(|t| now >= t + GRACE);
        if (etcd_done_at.is_some() && concord_done) || concord_late || now >= deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// Lease ids.
// ---------------------------------------------------------------------------------------------

/// How the script and normalized outputs write a lease id: `<lease#N>`, N counting from 1.
const LEASE_MARK: &str = "<lease#";

/// The lease ids one server granted, in the order the script saw them granted. Both servers see
/// the same grants in the same order, so the N-th grant is `<lease#N>` on both.
#[derive(Debug, Default, Clone)]
pub struct LeaseIds {
    /// Granted ids; `<lease#N>` is `granted[N - 1]`.
    granted: Vec<i64>,
}

impl LeaseIds {
    /// This server's id for `<lease#N>` (0 when there is no such grant).
    pub fn id(&self, placeholder: &str) -> i64 {
        placeholder
            .strip_prefix(LEASE_MARK)
            .and_then(|rest| rest.strip_suffix('>'))
            .and_then(|n| n.parse::<usize>().ok())
            .and_then(|n| self.granted.get(n.wrapping_sub(1)))
            .copied()
            .unwrap_or(0)
    }

    /// `<lease#N>` for a granted id.
    fn placeholder(&self, id: i64) -> Option<String> {
        let at = self.granted.iter().position(|&g| g == id)?;
        Some(format!("{LEASE_MARK}{}>", at + 1))
    }

    fn register(&mut self, id: i64) {
        if id != 0 && !self.granted.contains(&id) {
            self.granted.push(id);
        }
    }

    /// `text` with every `<lease#N>` replaced by this server's id in etcdctl's hex form.
    fn resolve(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(at) = rest.find(LEASE_MARK) {
            out.push_str(&rest[..at]);
            rest = &rest[at..];
            let end = rest.find('>').map_or(rest.len(), |e| e + 1);
            match self.id(&rest[..end]) {
                0 => out.push_str(&rest[..end]),
                id => out.push_str(&format!("{id:016x}")),
            }
            rest = &rest[end..];
        }
        out.push_str(rest);
        out
    }

    /// `<lease#N>` for a granted id written in hex (etcdctl's text output), else `None`.
    fn hex(&self, token: &str) -> Option<String> {
        if token.is_empty() || !token.chars().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        let id = u64::from_str_radix(token, 16).ok()? as i64;
        self.placeholder(id)
    }

    /// `<lease#N>` for a granted id in a JSON number.
    fn json(&self, v: &Value) -> Option<String> {
        let id = v.as_i64().or_else(|| v.as_u64().map(|u| u as i64))?;
        self.placeholder(id)
    }
}

/// Lease normalizations of text output (simple and `-w fields`, and the script's renderings of
/// etcd-client answers); see the module doc. `lease <hex> granted with TTL(…)` registers the id.
/// Only granted ids are replaced, and only where etcdctl prints lease ids, so a value or revision
/// that happens to equal a (small) lease id is left alone.
pub fn normalize_lease_text(text: &str, leases: &mut LeaseIds) -> String {
    let granted_ttl = fields_value(text, "\"GrantedTTL\" : ");
    let mut in_lease_list = false;
    let mut out: Vec<String> = Vec::new();
    for line in text.split('\n') {
        if let Some(rest) = line.strip_prefix("lease ")
            && let Some((id, tail)) = rest.split_once(' ')
            && tail.starts_with("granted with TTL(")
            && !tail.contains("remaining(")
            && let Ok(id) = u64::from_str_radix(id, 16)
        {
            leases.register(id as i64);
        }
        let mut line = replace_after_word(line, "lease ", |token| leases.hex(token));
        // `lease list`: `found N leases`, then one hex id a line.
        if in_lease_list && let Some(p) = leases.hex(&line) {
            line = p;
        }
        in_lease_list = (line.starts_with("found ") && line.ends_with(" leases"))
            || (in_lease_list && line.starts_with(LEASE_MARK));
        for prefix in ["\"ID\" : ", "\"Lease\" : "] {
            if let Some(value) = line.strip_prefix(prefix)
                && let Some(p) = value
                    .parse::<i64>()
                    .ok()
                    .and_then(|id| leases.placeholder(id))
            {
                line = format!("{prefix}{p}");
            }
        }
        if let (Some(granted), Some(value)) = (granted_ttl, line.strip_prefix("\"TTL\" : "))
            && let Ok(ttl) = value.parse::<i64>()
            && (0..=granted).contains(&ttl)
        {
            line = "\"TTL\" : <within TTL>".into();
        }
        out.push(normalize_remaining(&sort_attached_keys(&line)));
    }
    out.join("\n")
}

/// In `-w json` output: registers the id of a lease grant response (`{"ID":…,"TTL":…,"Error":…}`),
/// then writes granted ids in `ID`, `id` and `lease` fields as `<lease#N>`; normalizes `lease
/// timetolive`'s remaining `ttl` and sorts its `keys`.
fn normalize_lease_json(v: &mut Value, leases: &mut LeaseIds) {
    if let Value::Object(map) = v
        && ["ID", "TTL", "Error"].iter().all(|k| map.contains_key(*k))
        && let Some(id) = map["ID"].as_i64()
    {
        leases.register(id);
    }
    replace_lease_ids(v, leases);
    if let Value::Object(map) = v
        && let Some(granted) = map.get("granted-ttl").and_then(Value::as_i64)
    {
        if let Some(ttl) = map.get_mut("ttl")
            && ttl
                .as_i64()
                .is_some_and(|t| (0..=granted).contains(&t) && granted > 0)
        {
            *ttl = "<within TTL>".into();
        }
        if let Some(Value::Array(keys)) = map.get_mut("keys") {
            keys.sort_by_key(|k| k.to_string());
        }
    }
}

fn replace_lease_ids(v: &mut Value, leases: &LeaseIds) {
    match v {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                if ["ID", "id", "lease"].contains(&key.as_str())
                    && let Some(p) = leases.json(child)
                {
                    *child = p.into();
                } else {
                    replace_lease_ids(child, leases);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| replace_lease_ids(i, leases)),
        _ => {}
    }
}

/// Replaces the token (up to a space, `,` or `)`) that follows each occurrence of `word` (at the
/// start of the line or after a non-alphanumeric character) when `f` maps it.
fn replace_after_word(line: &str, word: &str, f: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(line.len());
    let mut pos = 0;
    while let Some(found) = line[pos..].find(word) {
        let at = pos + found;
        let start = at + word.len();
        let end = line[start..]
            .find(|c: char| c.is_whitespace() || c == ',' || c == ')')
            .map_or(line.len(), |e| start + e);
        let boundary = line[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !c.is_alphanumeric());
        out.push_str(&line[pos..start]);
        match f(&line[start..end]).filter(|_| boundary) {
            Some(placeholder) => out.push_str(&placeholder),
            None => out.push_str(&line[start..end]),
        }
        pos = end;
    }
    out.push_str(&line[pos..]);
    out
}

/// The integer after `prefix` on the first line that starts with it.
fn fields_value(text: &str, prefix: &str) -> Option<i64> {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|v| v.parse().ok())
}

/// `granted with TTL(60s), remaining(59s)`: the remaining time is wall-clock.
fn normalize_remaining(line: &str) -> String {
    // The seconds after `marker`: where they start, where they end (with the `s`), the value.
    let seconds_after = |marker: &str| -> Option<(usize, usize, i64)> {
        let start = line.find(marker)? + marker.len();
        let len = line[start..].find("s)")?;
        Some((
            start,
            start + len + 1,
            line[start..start + len].parse().ok()?,
        ))
    };
    match (
        seconds_after("granted with TTL("),
        seconds_after(", remaining("),
    ) {
        (Some((_, _, granted)), Some((start, end, remaining)))
            if (0..=granted).contains(&remaining) =>
        {
            format!("{}<within TTL>{}", &line[..start], &line[end..])
        }
        _ => line.to_string(),
    }
}

/// `attached keys([b a])`: etcd 3.4 lists a lease's keys in Go map order (randomized).
fn sort_attached_keys(line: &str) -> String {
    let open = "attached keys([";
    let (Some(at), true) = (line.find(open), line.ends_with("])")) else {
        return line.to_string();
    };
    let inner = &line[at + open.len()..line.len() - 2];
    let mut keys: Vec<&str> = inner.split(' ').collect();
    keys.sort_unstable();
    format!("{}{}])", &line[..at + open.len()], keys.join(" "))
}

/// Runs of identical lines folded into one (see [`Background::folding_repeats`]).
fn fold_repeated_lines(text: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for line in text.split('\n') {
        if out.last() != Some(&line) {
            out.push(line);
        }
    }
    out.join("\n")
}

// ---------------------------------------------------------------------------------------------
// Background commands.
// ---------------------------------------------------------------------------------------------

/// An etcdctl left running on both servers (see [`Differ::spawn`]).
pub struct Background {
    /// The command line, then what was fed and awaited: the failure report's command.
    transcript: String,
    /// The arguments as the script wrote them, to choose the normalizations.
    args: Vec<String>,
    /// Fold runs of identical lines before comparing (see the module doc).
    fold_repeats: bool,
    etcd: Running,
    concord: Running,
}

impl Background {
    /// Fold runs of identical output lines into one before comparing: for output whose repeat
    /// count is set by a client timer (continuous `lease keep-alive`).
    pub fn folding_repeats(mut self) -> Self {
        self.fold_repeats = true;
        self
    }
}

/// One running etcdctl and what it printed so far.
struct Running {
    child: Child,
    /// For `watch -i`: open until [`Running::stop`].
    stdin: Option<ChildStdin>,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    /// The threads copying the pipes into `stdout` and `stderr`; they end when the process does.
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Running {
    fn start(bin: &Path, endpoint: &str, args: &[OsString], interactive: bool) -> Running {
        let mut child = etcdctl_command(bin, endpoint, args)
            .stdin(if interactive {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
        let (stdout, stderr) = (Arc::default(), Arc::default());
        let copy = |mut pipe: Box<dyn Read + Send>, buffer: &Arc<Mutex<Vec<u8>>>| {
            let buffer = Arc::clone(buffer);
            std::thread::spawn(move || {
                let mut chunk = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut chunk)
                    && n > 0
                {
                    buffer.lock().unwrap().extend_from_slice(&chunk[..n]);
                }
            })
        };
        let readers = vec![
            copy(Box::new(child.stdout.take().unwrap()), &stdout),
            copy(Box::new(child.stderr.take().unwrap()), &stderr),
        ];
        Running {
            stdin: child.stdin.take(),
            child,
            stdout,
            stderr,
            readers,
        }
    }

    fn text(&self) -> (String, String) {
        (
            lossless_text(&self.stdout.lock().unwrap()),
            lossless_text(&self.stderr.lock().unwrap()),
        )
    }

    /// How many times `needle` occurs in stdout plus stderr.
    fn count(&self, needle: &str) -> usize {
        let (out, err) = self.text();
        out.matches(needle).count() + err.matches(needle).count()
    }

    fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    fn stop(mut self) -> Raw {
        if self.stdin.take().is_some() {
            let deadline = Instant::now() + Duration::from_secs(1);
            while !self.exited() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let status = self.child.wait().expect("waiting for etcdctl");
        for reader in self.readers {
            reader.join().expect("pipe reader panicked");
        }
        let take = |buffer: &Arc<Mutex<Vec<u8>>>| std::mem::take(&mut *buffer.lock().unwrap());
        Raw {
            stdout: take(&self.stdout),
            stderr: take(&self.stderr),
            status: status.code(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// etcdctl, and normalizing its output.
// ---------------------------------------------------------------------------------------------

/// What one etcdctl run printed, before normalization.
struct Raw {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    status: Option<i32>,
}

fn etcdctl_command(bin: &Path, endpoint: &str, args: &[OsString]) -> Command {
    let mut command = Command::new(bin);
    command
        .env_clear()
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", endpoint, "--command-timeout", "5s"])
        .args(args);
    command
}

fn run_etcdctl(bin: &Path, endpoint: &str, args: &[OsString], stdin: Option<&str>) -> Raw {
    let mut child = etcdctl_command(bin, endpoint, args)
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
    Raw {
        stdout: out.stdout,
        stderr: out.stderr,
        status: out.status.code(),
    }
}

fn lossy_args(args: &[OsString]) -> Vec<String> {
    args.iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect()
}

fn command_line(args: &[OsString]) -> String {
    format!(
        "etcdctl {}",
        args.iter().map(shell_word).collect::<Vec<_>>().join(" ")
    )
}

fn normalize(raw: &Raw, endpoint: &str, args: &[String], leases: &mut LeaseIds) -> Outcome {
    let text = |bytes: &[u8]| lossless_text(bytes).replace(endpoint, "<endpoint>");
    let (mut stdout, mut stderr) = (text(&raw.stdout), text(&raw.stderr));
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
        stdout = normalize_json(&stdout, &mut |v| {
            normalize_status(v);
            normalize_headers(v);
            normalize_hashkv(v);
            normalize_health(v);
            normalize_lease_json(v, leases);
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
    // Text lines of JSON output (`watch -i -w json` prints some) are normalized too.
    stdout = normalize_lease_text(&stdout, leases);
    stderr = normalize_lease_text(&stderr, leases);
    Outcome {
        stdout,
        stderr,
        status: raw.status,
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
/// readable line by line). `watch -w json` prints one document per line: when the whole output is
/// not one document, each line starting with `{` is treated as one. Other text (an error) is left
/// alone.
fn normalize_json(stdout: &str, f: &mut dyn FnMut(&mut Value)) -> String {
    let mut pretty = |text: &str| {
        let mut v = serde_json::from_str::<Value>(text).ok()?;
        f(&mut v);
        Some(serde_json::to_string_pretty(&v).unwrap() + "\n")
    };
    if let Some(whole) = pretty(stdout.trim()) {
        return whole;
    }
    stdout
        .split_inclusive('\n')
        .map(|line| {
            line.starts_with('{')
                .then(|| pretty(line.trim_end()))
                .flatten()
                .unwrap_or_else(|| line.to_string())
        })
        .collect()
}

const NORMALIZED: &str = "<normalized>";

/// In every response header at any depth (txn responses nest them): `cluster_id` and `member_id`
/// derive from the peer URLs, which differ; `raft_term` counts elections. A header is an object
/// under a `header` or `Header` key (`watch -w json` capitalizes it), or any object holding one of
/// those fields (etcdctl's lease commands print the header's fields flattened into the response).
/// A field is replaced only where present, so one server filling a field the other leaves out
/// still shows as a difference.
fn normalize_headers(v: &mut Value) {
    const FIELDS: [&str; 3] = ["cluster_id", "member_id", "raft_term"];
    let normalize_fields = |header: &mut serde_json::Map<String, Value>| {
        for field in FIELDS {
            if let Some(x) = header.get_mut(field) {
                *x = NORMALIZED.into();
            }
        }
    };
    match v {
        Value::Object(map) => {
            if FIELDS.iter().any(|f| map.contains_key(*f)) {
                normalize_fields(map);
            }
            for (key, child) in map.iter_mut() {
                if (key == "header" || key == "Header")
                    && let Value::Object(header) = child
                {
                    normalize_fields(header);
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

pub fn show_err(e: etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => format!("error {:?}: {}", s.code(), s.message()),
        other => format!("client error: {other}"),
    }
}

/// One key-value; the lease in hex, as etcdctl writes lease ids (so it is normalized like them).
pub fn show_kv(kv: &etcd_client::KeyValue) -> String {
    let value = kv.value();
    let value = if value.len() > 64 {
        format!("<{} bytes>", value.len())
    } else {
        value.escape_ascii().to_string()
    };
    format!(
        "  {} = {} (create {}, mod {}, version {}, lease {:x})\n",
        kv.key().escape_ascii(),
        value,
        kv.create_revision(),
        kv.mod_revision(),
        kv.version(),
        kv.lease()
    )
}

pub fn revision_of(header: Option<&etcd_client::ResponseHeader>) -> String {
    header.map_or("no header".into(), |h| format!("revision {}", h.revision()))
}

pub fn show_get(r: Result<etcd_client::GetResponse, etcd_client::Error>) -> String {
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

pub fn show_put(r: Result<etcd_client::PutResponse, etcd_client::Error>) -> String {
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

pub fn show_txn(r: Result<etcd_client::TxnResponse, etcd_client::Error>) -> String {
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

pub struct EtcdBinaries {
    etcd: PathBuf,
    etcdctl: PathBuf,
}

impl EtcdBinaries {
    /// The `etcdctl` found next to etcd.
    pub fn etcdctl(&self) -> &Path {
        &self.etcdctl
    }

    /// The `etcd` server binary.
    pub fn etcd(&self) -> &Path {
        &self.etcd
    }

    /// Finds etcd and etcdctl 3.4 on PATH; prints the skip message (or panics under
    /// `CONCORD_REQUIRE_ETCD=1`) when either is missing or of another version.
    pub fn find() -> Option<EtcdBinaries> {
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
pub struct EtcdProcess {
    child: Child,
    pub endpoint: String,
    dir: tempfile::TempDir,
    /// The binaries, to start it again ([`EtcdProcess::relaunch`]) and check its health.
    etcd_bin: PathBuf,
    etcdctl: PathBuf,
    /// Its own client and peer ports, kept across restarts.
    ports: [u16; 2],
}

impl EtcdProcess {
    pub fn start(bins: &EtcdBinaries) -> EtcdProcess {
        let dir = tempfile::tempdir().unwrap();
        let ports = free_ports();
        let child = spawn_etcd(&bins.etcd, dir.path(), ports);
        let mut etcd = EtcdProcess {
            child,
            endpoint: format!("127.0.0.1:{}", ports[0]),
            dir,
            etcd_bin: bins.etcd.clone(),
            etcdctl: bins.etcdctl.clone(),
            ports,
        };
        etcd.wait_healthy(&bins.etcdctl);
        etcd
    }

    /// Kills etcd and starts it again on its own endpoint with the same data; returns once it is
    /// healthy. SIGKILL loses nothing acknowledged: etcd fsyncs its WAL before it answers.
    pub fn restart(&mut self) {
        self.relaunch(self.ports[0]);
    }

    /// Kills etcd and starts it again with the same data dir and peer port, serving clients on
    /// `client_port` (its own, or another one to hide it from its clients for a while);
    /// [`EtcdProcess::endpoint`] follows. Returns once it is healthy.
    pub fn relaunch(&mut self, client_port: u16) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn_etcd(
            &self.etcd_bin,
            self.dir.path(),
            [client_port, self.ports[1]],
        );
        self.endpoint = format!("127.0.0.1:{client_port}");
        let etcdctl = self.etcdctl.clone();
        self.wait_healthy(&etcdctl);
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

/// Starts etcd member `e1` with its data in `dir/data` and client and peer `ports`, appending its
/// output to `dir/etcd.log`. On an existing data dir etcd ignores the `--initial-*` flags.
fn spawn_etcd(bin: &Path, dir: &Path, [client_port, peer_port]: [u16; 2]) -> Child {
    let client = format!("http://127.0.0.1:{client_port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("etcd.log"))
        .unwrap();
    Command::new(bin)
        .env_clear()
        .args(["--name", "e1"])
        .arg("--data-dir")
        .arg(dir.join("data"))
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
        .expect("cannot start etcd")
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

/// The servers the recipe stories run against: Concord (in-process, fresh data dir), and etcd 3.4
/// when installed (see [`EtcdBinaries::find`] for the skip rule).
pub struct Targets {
    pub concord: Server,
    _dir: tempfile::TempDir,
    etcd: Option<(EtcdProcess, std::path::PathBuf)>,
}

impl Targets {
    pub async fn start() -> Targets {
        let dir = tempfile::tempdir().unwrap();
        let concord = Server::start(ServerConfig::for_test(dir.path()))
            .await
            .unwrap();
        let etcd = EtcdBinaries::find().map(|bins| {
            let etcdctl = bins.etcdctl().to_path_buf();
            (EtcdProcess::start(&bins), etcdctl)
        });
        Targets {
            concord,
            _dir: dir,
            etcd,
        }
    }

    /// `(name, endpoint)` of each server.
    pub fn endpoints(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![("concord", self.concord.client_addr().to_string())];
        if let Some((etcd, _)) = &self.etcd {
            out.push(("etcd", etcd.endpoint.clone()));
        }
        out
    }

    pub fn etcdctl(&self) -> Option<std::path::PathBuf> {
        self.etcd.as_ref().map(|(_, ctl)| ctl.clone())
    }
}

// ---------------------------------------------------------------------------------------------
// Servers a story may restart.
// ---------------------------------------------------------------------------------------------

/// How long a restarted server may take before it serves a linearizable read.
const SERVING_PATIENCE: Duration = Duration::from_secs(10);

/// An in-process Concord that can be stopped and started again on its data dir and client port,
/// the way an operator restarts a member.
pub struct ConcordMember {
    /// `None` while stopped.
    server: Option<Server>,
    /// The client address, bound again by every restart so that clients reconnect by themselves.
    addr: std::net::SocketAddr,
    /// The data dir, kept across restarts.
    dir: tempfile::TempDir,
}

impl ConcordMember {
    /// Starts a member with a fresh data dir on a free port.
    pub async fn start() -> ConcordMember {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start(ServerConfig::for_test(dir.path()))
            .await
            .unwrap();
        let addr = server.client_addr();
        ConcordMember {
            server: Some(server),
            addr,
            dir,
        }
    }

    /// `127.0.0.1:<port>`, the same after every restart.
    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    /// Shuts the member down cleanly (an in-process server cannot be killed): it stops serving,
    /// ends every stream and flushes.
    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await.unwrap();
        }
    }

    /// Stops the member and starts it again on its own endpoint with the same data; returns once
    /// it serves.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.server = Some(self.serve_on(self.addr).await);
    }

    /// Stops the member, serves its data on another endpoint while `offline` runs against it
    /// (given that endpoint), then starts it again on its own endpoint. What `offline` changes,
    /// the member's clients cannot see as it happens: they are disconnected.
    pub async fn restart_with<R>(&mut self, offline: impl AsyncFnOnce(String) -> R) -> R {
        self.stop().await;
        let elsewhere = self
            .serve_on(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
            .await;
        let result = offline(elsewhere.client_addr().to_string()).await;
        elsewhere.shutdown().await.unwrap();
        self.server = Some(self.serve_on(self.addr).await);
        result
    }

    pub async fn shutdown(mut self) {
        self.stop().await;
    }

    /// A server on this member's data dir listening on `addr` (port 0: a free one), once it
    /// serves a linearizable read.
    async fn serve_on(&self, addr: std::net::SocketAddr) -> Server {
        let mut config = ServerConfig::for_test(self.dir.path());
        config.listen_client = vec![addr];
        let server = Server::start(config).await.unwrap();
        wait_serving(&server.client_addr().to_string()).await;
        server
    }
}

/// Waits until `endpoint` answers a linearizable Range (it has a leader and applied its log).
pub async fn wait_serving(endpoint: &str) {
    let deadline = tokio::time::Instant::now() + SERVING_PATIENCE;
    loop {
        let options = etcd_client::ConnectOptions::new().with_timeout(Duration::from_secs(1));
        if let Ok(mut client) = Client::connect([endpoint], Some(options)).await
            && client.get("health", None).await.is_ok()
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{endpoint} did not serve in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A free port on 127.0.0.1 that is none of `taken`.
fn other_port(taken: &[u16]) -> u16 {
    loop {
        let [port, _] = free_ports();
        if !taken.contains(&port) {
            return port;
        }
    }
}

/// One server a recipe story runs against, which the story may restart on the same endpoint
/// with the same data ([`Target::restart`], [`Target::restart_with`]). [`Targets`] serves the
/// stories that never restart.
pub struct Target {
    /// `concord` or `etcd`.
    pub name: &'static str,
    server: Restartable,
}

/// What a [`Target`] runs.
enum Restartable {
    Concord(ConcordMember),
    Etcd(EtcdProcess),
}

impl Target {
    /// Concord, and etcd 3.4 when installed (see [`EtcdBinaries::find`] for the skip rule), each
    /// with a fresh data dir.
    pub async fn start_all() -> Vec<Target> {
        let mut targets = vec![Target {
            name: "concord",
            server: Restartable::Concord(ConcordMember::start().await),
        }];
        if let Some(bins) = EtcdBinaries::find() {
            let etcd = tokio::task::block_in_place(|| EtcdProcess::start(&bins));
            targets.push(Target {
                name: "etcd",
                server: Restartable::Etcd(etcd),
            });
        }
        targets
    }

    /// `127.0.0.1:<port>`: the same after every restart, so clients reconnect by themselves.
    pub fn endpoint(&self) -> String {
        match &self.server {
            Restartable::Concord(member) => member.endpoint(),
            Restartable::Etcd(etcd) => etcd.endpoint.clone(),
        }
    }

    /// Stops the server and starts it again on the same endpoint with the same data; returns once
    /// it serves. Concord shuts down cleanly ([`ConcordMember::stop`]); etcd is killed.
    pub async fn restart(&mut self) {
        match &mut self.server {
            Restartable::Concord(member) => member.restart().await,
            Restartable::Etcd(etcd) => tokio::task::block_in_place(|| etcd.restart()),
        }
    }

    /// Like [`Target::restart`], but while the server is away from its endpoint it serves the
    /// same data on another one, and `offline` runs against that (given its endpoint): changes
    /// the server's clients cannot see as they happen, e.g. writes and a compaction past the
    /// revision a watcher had reached.
    pub async fn restart_with<R>(&mut self, offline: impl AsyncFnOnce(String) -> R) -> R {
        match &mut self.server {
            Restartable::Concord(member) => member.restart_with(offline).await,
            Restartable::Etcd(etcd) => {
                let port = other_port(&etcd.ports);
                tokio::task::block_in_place(|| etcd.relaunch(port));
                let result = offline(etcd.endpoint.clone()).await;
                tokio::task::block_in_place(|| etcd.restart());
                result
            }
        }
    }

    /// Stops the server (etcd is killed, Concord shuts down cleanly).
    pub async fn shutdown(self) {
        match self.server {
            Restartable::Concord(member) => member.shutdown().await,
            Restartable::Etcd(etcd) => drop(etcd),
        }
    }
}

/// Puts `value` at `key` through the recipes' client, retried while a restarted server comes back;
/// the revision of the put.
pub async fn put_retrying(client: &concord::recipes::Client, key: &str, value: &str) -> i64 {
    let resp = client
        .retry(|mut c| {
            let (key, value) = (key.to_string(), value.to_string());
            async move { c.put(key, value, None).await }
        })
        .await
        .unwrap();
    resp.header().unwrap().revision()
}
