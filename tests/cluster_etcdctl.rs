//! `etcdctl` cluster administration, side by side: a three-member Concord cluster and a
//! three-member etcd 3.4 cluster receive the same `etcdctl` commands, and answer alike.
//!
//! Story (on each side): `member list`; `member add --learner`, whose output tells the operator
//! how to start the new member; `member promote` before the learner runs (refused: not in sync);
//! the new member starts with `--initial-cluster-state existing`; `member promote` (retried until
//! it has caught up); `endpoint status --cluster` shows four members; `move-leader` to the new
//! member; `member remove` of an original member; `member list` shows three, no learner;
//! `endpoint hashkv --cluster` shows one hash on every member.
//!
//! Compared: each command's exit status, and its output with what legitimately differs replaced:
//! member and cluster ids (the server picks them), addresses (ports differ), and the values of
//! the status table (sizes, terms, indexes, versions). Table borders are compared by shape.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::EtcdBinaries;
use common::cluster::{Member, free_port, joining_config, leader, shutdown, start, start_member};

/// How long a learner may take to catch up before `member promote` is accepted.
const PATIENCE: Duration = Duration::from_secs(20);

/// What one etcdctl run printed.
#[derive(Debug, PartialEq)]
struct Output {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn etcdctl(bin: &Path, endpoint: &str, args: &[&str]) -> Output {
    let out = Command::new(bin)
        .env_clear()
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", endpoint, "--command-timeout", "5s"])
        .args(args)
        .output()
        .expect("etcdctl runs");
    Output {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr)
            .lines()
            // Go client retry warnings (JSON lines) are etcdctl's chatter, not the answer.
            .filter(|l| !l.starts_with('{'))
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

/// The output with ids, addresses and table padding made comparable (see the module doc).
fn normalized(out: &Output) -> Output {
    let clean = |text: &str| {
        let mut lines = Vec::new();
        for line in text.lines() {
            let words: Vec<String> = line
                .split(|c: char| c.is_whitespace())
                .filter(|w| !w.is_empty())
                .map(|w| {
                    let bare = w.trim_matches(|c| c == ',' || c == '"');
                    let hex = bare.len() >= 10 && bare.chars().all(|c| c.is_ascii_hexdigit());
                    let addr = bare.contains("127.0.0.1:");
                    if w.chars().all(|c| c == '-' || c == '+') {
                        "---".to_string()
                    } else if hex {
                        w.replace(bare, "<id>")
                    } else if addr {
                        w.replace(bare, "<addr>")
                    } else {
                        w.to_string()
                    }
                })
                .collect();
            lines.push(words.join(" "));
        }
        lines.join("\n")
    };
    Output {
        ok: out.ok,
        stdout: clean(&out.stdout),
        stderr: clean(&out.stderr),
    }
}

/// A cluster under test: where etcdctl reaches it, and how to start a member it added.
trait Side {
    fn name(&self) -> &'static str;
    /// Every member's client address.
    fn endpoints(&self) -> Vec<String>;
    /// The current leader's client address.
    async fn leader(&self) -> String;
    /// Starts the member `member add` was told about (`--initial-cluster` as it printed).
    async fn start_added(&mut self, name: &str, peer_url: &str, initial_cluster: &str);
    /// A free peer URL for a new member.
    fn new_peer_url(&mut self) -> String;
}

struct ConcordSide {
    members: Vec<Member>,
    pending: Option<(concord::store::ServerConfig, tempfile::TempDir)>,
}

impl Side for ConcordSide {
    fn name(&self) -> &'static str {
        "concord"
    }
    fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| m.server.is_some())
            .map(Member::endpoint)
            .collect()
    }
    async fn leader(&self) -> String {
        self.members[leader(&self.members).await].endpoint()
    }
    fn new_peer_url(&mut self) -> String {
        let (config, dir) = joining_config(&self.members, "new");
        let url = config.advertise_peer_urls[0].clone();
        self.pending = Some((config, dir));
        url
    }
    async fn start_added(&mut self, name: &str, _peer_url: &str, initial_cluster: &str) {
        let (mut config, dir) = self.pending.take().expect("new_peer_url first");
        config.name = name.to_string();
        config.initial_cluster = parse_cluster(initial_cluster);
        self.members.push(start_member(config, dir).await);
    }
}

struct EtcdSide {
    bin: PathBuf,
    etcdctl: PathBuf,
    /// (name, client URL, process, data dir)
    members: Vec<(String, String, Child, tempfile::TempDir)>,
    next_ports: Option<[u16; 2]>,
}

impl Drop for EtcdSide {
    fn drop(&mut self) {
        for (_, _, child, _) in &mut self.members {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn parse_cluster(initial_cluster: &str) -> Vec<(String, Vec<String>)> {
    initial_cluster
        .split(',')
        .map(|pair| {
            let (name, url) = pair.split_once('=').expect("name=url");
            (name.to_string(), vec![url.to_string()])
        })
        .collect()
}

impl EtcdSide {
    fn spawn(&mut self, name: &str, [client, peer]: [u16; 2], cluster: &str, state: &str) {
        let dir = tempfile::tempdir().unwrap();
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = std::fs::File::create(dir.path().join("etcd.log")).unwrap();
        let child = Command::new(&self.bin)
            .env_clear()
            .args(["--name", name])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", cluster])
            .args(["--initial-cluster-state", state])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("etcd starts");
        self.members
            .push((name.to_string(), client_url, child, dir));
    }

    async fn start(bins: &EtcdBinaries) -> EtcdSide {
        let mut side = EtcdSide {
            bin: bins.etcd().to_path_buf(),
            etcdctl: bins.etcdctl().to_path_buf(),
            members: Vec::new(),
            next_ports: None,
        };
        let ports: Vec<[u16; 2]> = (0..3).map(|_| [free_port(), free_port()]).collect();
        let cluster: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, [_, peer])| format!("e{i}=http://127.0.0.1:{peer}"))
            .collect();
        for (i, ports) in ports.into_iter().enumerate() {
            side.spawn(&format!("e{i}"), ports, &cluster.join(","), "new");
        }
        let deadline = Instant::now() + PATIENCE;
        while !etcdctl(
            &side.etcdctl,
            &side.endpoints().join(","),
            &["endpoint", "health"],
        )
        .ok
        {
            assert!(
                Instant::now() < deadline,
                "the etcd cluster never got healthy"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        side
    }
}

impl Side for EtcdSide {
    fn name(&self) -> &'static str {
        "etcd"
    }
    fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|(_, url, _, _)| url.trim_start_matches("http://").to_string())
            .collect()
    }
    async fn leader(&self) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let status = etcdctl(
                &self.etcdctl,
                &self.endpoints().join(","),
                &["endpoint", "status"],
            );
            // Lines: "addr, id, version, size, leader?, learner?, term, index, applied, errors"
            if let Some(line) = status
                .stdout
                .lines()
                .find(|l| l.split(", ").nth(4) == Some("true"))
            {
                return line.split(", ").next().unwrap().to_string();
            }
            assert!(Instant::now() < deadline, "etcd has no leader");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    fn new_peer_url(&mut self) -> String {
        let ports = [free_port(), free_port()];
        self.next_ports = Some(ports);
        format!("http://127.0.0.1:{}", ports[1])
    }
    async fn start_added(&mut self, name: &str, _peer_url: &str, initial_cluster: &str) {
        let ports = self.next_ports.take().expect("new_peer_url first");
        self.spawn(name, ports, initial_cluster, "existing");
    }
}

/// The `ETCD_...="value"` line `member add` printed for `key`.
fn printed(out: &Output, key: &str) -> String {
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=\"")))
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or_else(|| panic!("member add printed no {key}: {out:?}"))
        .to_string()
}

/// Runs a membership change until it is not refused as "unhealthy cluster": etcd refuses changes
/// while a member has been connected for less than 5 s (after a start, after a member joined);
/// Concord judges health by what it heard in the last election timeout.
async fn healthy(side: &str, run: impl Fn() -> Output) -> Output {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let out = run();
        if !out.stderr.contains("unhealthy cluster") {
            return out;
        }
        assert!(Instant::now() < deadline, "{side}: {out:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Runs the story on one side; the outputs of its comparable steps, in order.
async fn story(side: &mut impl Side, etcdctl_bin: &Path) -> Vec<(String, Output)> {
    let mut steps = Vec::new();
    let all = side.endpoints().join(",");
    let first = side.endpoints()[0].clone();
    let ctl = |endpoint: &str, args: &[&str]| etcdctl(etcdctl_bin, endpoint, args);

    let list = ctl(&first, &["member", "list"]);
    assert!(list.ok, "{}: {list:?}", side.name());
    assert_eq!(list.stdout.lines().count(), 3);

    let peer_url = side.new_peer_url();
    let peers = format!("--peer-urls={peer_url}");
    let added = healthy(side.name(), || {
        ctl(&first, &["member", "add", "newbie", &peers, "--learner"])
    })
    .await;
    assert!(added.ok, "{}: {added:?}", side.name());
    let id = added
        .stdout
        .split_whitespace()
        .nth(1)
        .expect("Member <id> added")
        .to_string();
    steps.push(("member add --learner".into(), normalized(&added)));
    let initial_cluster = printed(&added, "ETCD_INITIAL_CLUSTER");
    assert_eq!(printed(&added, "ETCD_INITIAL_CLUSTER_STATE"), "existing");
    assert_eq!(
        printed(&added, "ETCD_INITIAL_ADVERTISE_PEER_URLS"),
        peer_url
    );

    let early = ctl(&first, &["member", "promote", &id]);
    steps.push(("member promote (not running)".into(), normalized(&early)));

    side.start_added("newbie", &peer_url, &initial_cluster)
        .await;
    let deadline = Instant::now() + PATIENCE;
    let promoted = loop {
        let out = ctl(&first, &["member", "promote", &id]);
        if out.ok {
            break out;
        }
        assert!(
            Instant::now() < deadline,
            "{}: the learner was never promoted: {out:?}",
            side.name()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    steps.push(("member promote".into(), normalized(&promoted)));

    // Once the new member has published its client URL, `--cluster` reaches all four.
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        let status = ctl(&all, &["endpoint", "status", "--cluster", "-w", "table"]);
        let rows = status
            .stdout
            .lines()
            .filter(|l| l.contains("127.0.0.1:"))
            .count();
        if status.ok && rows == 4 {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "{}: endpoint status --cluster never showed 4 members: {status:?}",
            side.name()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let header = status.stdout.lines().nth(1).unwrap_or_default().to_string();
    steps.push((
        "endpoint status --cluster -w table (header)".into(),
        normalized(&Output {
            ok: true,
            stdout: header,
            stderr: String::new(),
        }),
    ));

    let lead = side.leader().await;
    let moved = ctl(&lead, &["move-leader", &id]);
    steps.push(("move-leader".into(), normalized(&moved)));

    // Remove an original member (the one etcdctl reached first, which no longer leads).
    let list = ctl(&first, &["member", "list"]);
    let lead = side.leader().await;
    let victim = list
        .stdout
        .lines()
        .find(|l| !l.starts_with(&id) && !l.contains(&lead))
        .and_then(|l| l.split(", ").next())
        .expect("a member to remove")
        .to_string();
    let removed = healthy(side.name(), || ctl(&lead, &["member", "remove", &victim])).await;
    assert!(removed.ok, "{}: {removed:?}", side.name());
    steps.push(("member remove".into(), normalized(&removed)));

    let after = ctl(&side.leader().await, &["member", "list", "-w", "table"]);
    let learners = after
        .stdout
        .lines()
        .filter(|l| l.trim_end().ends_with("true |"))
        .count();
    assert_eq!(learners, 0, "{}: {}", side.name(), after.stdout);
    let rows = after
        .stdout
        .lines()
        .filter(|l| l.contains("127.0.0.1:"))
        .count();
    assert_eq!(rows, 3, "{}: {}", side.name(), after.stdout);

    // Every remaining member holds the same history ("<addr>, <hash>" per member).
    let deadline = Instant::now() + PATIENCE;
    loop {
        let hashes = ctl(&lead, &["endpoint", "hashkv", "--cluster"]);
        let values: Vec<&str> = hashes
            .stdout
            .lines()
            .filter_map(|l| l.split(", ").nth(1))
            .collect();
        if hashes.ok && values.len() == 3 && values.windows(2).all(|w| w[0] == w[1]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}: HashKV never agreed: {hashes:?}",
            side.name()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    steps
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_administers_a_concord_cluster_as_an_etcd_one() {
    let Some(bins) = EtcdBinaries::find() else {
        return; // skipped (EtcdBinaries::find said why; fails under CONCORD_REQUIRE_ETCD=1)
    };
    let mut concord = ConcordSide {
        members: start(3).await,
        pending: None,
    };
    leader(&concord.members).await;
    let concord_steps = story(&mut concord, bins.etcdctl()).await;
    let mut etcd = EtcdSide::start(&bins).await;
    let etcd_steps = story(&mut etcd, bins.etcdctl()).await;
    assert_eq!(concord_steps.len(), etcd_steps.len());
    for ((step, ours), (_, theirs)) in concord_steps.iter().zip(&etcd_steps) {
        println!("etcdctl {step}: {ours:?}");
        assert_eq!(ours, theirs, "`etcdctl {step}` answers differently");
    }
    drop(etcd);
    shutdown(concord.members).await;
}
