//! Failover of a real three-process cluster: the leader is SIGKILLed under write load.
//!
//! Story: three `concord` processes on 127.0.0.1 with default timings form a cluster; writers put
//! unique keys through the two members that will survive, recording every acknowledged write.
//! The leader is killed with SIGKILL (no shutdown code runs). The survivors elect a new leader and
//! the writes go on; the time from the kill to the first acknowledgment of a write sent after it is
//! reported
//! (the target, 3 s with default timings, is for the benchmark to hold; the test only bounds it
//! loosely). The killed member is restarted on its data dir; it catches up, every acknowledged
//! write is present on every member with its value and revision, and HashKV is equal on all three.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{connect, free_port};
use etcd_client::{Client, GetOptions};

/// Writers per surviving member.
const WRITERS: usize = 2;
/// Loose bound on the failover (the benchmark holds the real target).
const FAILOVER_BOUND: Duration = Duration::from_secs(15);

/// A member's name, client port and peer port.
#[derive(Clone)]
struct Spec {
    name: String,
    client: u16,
    peer: u16,
}

fn spawn(spec: &Spec, cluster: &str, dir: &Path) -> Child {
    let url = format!("http://127.0.0.1:{}", spec.client);
    let peer = format!("http://127.0.0.1:{}", spec.peer);
    Command::new(env!("CARGO_BIN_EXE_concord"))
        .args(["--name", &spec.name])
        .args(["--data-dir", dir.to_str().unwrap()])
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .args([
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
        ])
        .args(["--initial-cluster", cluster])
        .args(["--log-level", "warn"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting concord")
}

/// The index of the member that is the leader, as the Status of `members` says.
async fn leader(ports: &[u16]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for (i, port) in ports.iter().enumerate() {
            let mut c = connect(*port).await;
            if let Ok(status) = c.status().await
                && status.leader() == status.header().unwrap().member_id()
            {
                return i;
            }
        }
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A write a member acknowledged: when it was sent and when the answer came.
#[derive(Debug, Clone)]
struct Acked {
    key: String,
    revision: i64,
    sent: Instant,
    at: Instant,
}

/// Puts unique keys through `client` until `stop`, recording what was acknowledged.
async fn write(client: Client, writer: String, acked: Arc<Mutex<Vec<Acked>>>, stop: Instant) {
    let mut kv = client.kv_client();
    let mut seq = 0;
    while Instant::now() < stop {
        let key = format!("k/{writer}/{seq:06}");
        let sent = Instant::now();
        // A put forwarded to the dead leader is lost and never answered: give up soon and send
        // the next one, as a client with a short deadline would.
        let put = tokio::time::timeout(Duration::from_millis(500), kv.put(key.as_str(), "v", None));
        if let Ok(Ok(resp)) = put.await {
            acked.lock().unwrap().push(Acked {
                key,
                revision: resp.header().unwrap().revision(),
                sent,
                at: Instant::now(),
            });
            seq += 1;
        } else {
            // No answer: it may or may not have happened; the next key is a new one.
            seq += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_leader_under_load_loses_nothing_and_the_member_rejoins() {
    let specs: Vec<Spec> = (0..3)
        .map(|i| Spec {
            name: format!("m{i}"),
            client: free_port(),
            peer: free_port(),
        })
        .collect();
    let cluster = specs
        .iter()
        .map(|s| format!("{}=http://127.0.0.1:{}", s.name, s.peer))
        .collect::<Vec<_>>()
        .join(",");
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut children: Vec<Child> = specs
        .iter()
        .zip(&dirs)
        .map(|(s, d)| spawn(s, &cluster, d.path()))
        .collect();
    let ports: Vec<u16> = specs.iter().map(|s| s.client).collect();
    let first = leader(&ports).await;
    let survivors: Vec<usize> = (0..3).filter(|i| *i != first).collect();

    // Load through the survivors; kill the leader in the middle of it.
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Instant::now() + Duration::from_secs(5);
    let mut writers = Vec::new();
    for &s in &survivors {
        let client = connect(ports[s]).await;
        for w in 0..WRITERS {
            let name = format!("{}-{w}", specs[s].name);
            writers.push(tokio::spawn(write(
                client.clone(),
                name,
                acked.clone(),
                stop,
            )));
        }
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let killed = Instant::now();
    children[first].kill().expect("SIGKILL");
    children[first].wait().unwrap();
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    // Writes sent before the kill may be answered just after it (already committed): the
    // failover is measured on writes sent after it.
    let resumed = acked
        .iter()
        .filter(|a| a.sent > killed)
        .map(|a| a.at)
        .min()
        .expect("writes resumed after the kill");
    let failover = resumed - killed;
    eprintln!(
        "{} writes acknowledged; the first one sent after the SIGKILL was acknowledged \
         {failover:.2?} after it",
        acked.len()
    );
    assert!(failover < FAILOVER_BOUND, "failover took {failover:?}");

    // The killed member comes back on its data and catches up; nothing acknowledged is lost.
    children[first] = spawn(&specs[first], &cluster, dirs[first].path());
    let last = acked.iter().map(|a| a.revision).max().unwrap();
    let mut hashes = Vec::new();
    for port in &ports {
        let mut c = connect(*port).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        let stored = loop {
            let got = c
                .get(
                    "k/",
                    Some(GetOptions::new().with_prefix().with_serializable()),
                )
                .await
                .unwrap();
            if got.header().unwrap().revision() >= last {
                break got;
            }
            assert!(
                Instant::now() < deadline,
                "member on {port} never caught up"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let stored: HashMap<&str, i64> = stored
            .kvs()
            .iter()
            .map(|kv| (kv.key_str().unwrap(), kv.mod_revision()))
            .collect();
        for a in &acked {
            assert_eq!(
                stored.get(a.key.as_str()),
                Some(&a.revision),
                "member on {port}: acknowledged {a:?}"
            );
        }
        hashes.push(c.hash_kv(last).await.unwrap().hash());
    }
    assert!(
        hashes.windows(2).all(|w| w[0] == w[1]),
        "HashKV differs: {hashes:?}"
    );
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
}
