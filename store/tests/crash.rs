//! Crash safety of the real binary: SIGKILL at arbitrary moments loses no acknowledged write.
//!
//! Story: start `concord` on a temp data dir; eight writers put unique keys as fast as they can and
//! record every write the server acknowledged, with its revision; after a random delay the process
//! is killed with SIGKILL (no shutdown code runs, sled's background flush is cut off). The server
//! is restarted on the same data dir and every acknowledged write must be there with its value and
//! its revision, and the revision must not have gone backwards. Repeated over many rounds, so kills
//! land in every phase of the write path (proposal, persist, flush, apply, reply).
//!
//! Also here, because they need the real binary: a second server on the same data dir fails with a
//! clear message; SIGTERM shuts down cleanly.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{connect, free_port};
use etcd_client::{Client, GetOptions};

/// How many kill/restart rounds.
const ROUNDS: usize = 12;
/// Concurrent writers per round.
const WRITERS: usize = 8;

/// Starts the binary on `dir` serving clients on `port`.
fn spawn(dir: &Path, port: u16) -> Child {
    let url = format!("http://127.0.0.1:{port}");
    let peer = format!("http://127.0.0.1:{}", free_port());
    Command::new(env!("CARGO_BIN_EXE_concord"))
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
        .args(["--initial-cluster", &format!("default={peer}")])
        .args(["--log-level", "warn"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting concord")
}

/// A write the server acknowledged.
#[derive(Debug, Clone)]
struct Acked {
    key: String,
    value: String,
    revision: i64,
}

/// Writes unique keys until the process dies; returns what was acknowledged.
async fn write_until_killed(
    client: Client,
    round: usize,
    writer: usize,
    acked: Arc<Mutex<Vec<Acked>>>,
) {
    let mut kv = client.kv_client();
    for seq in 0.. {
        let key = format!("r{round:02}/w{writer}/{seq:06}");
        let value = format!("value of {key}");
        match kv.put(key.clone(), value.clone(), None).await {
            Ok(resp) => {
                let revision = resp.header().expect("a put has a header").revision();
                acked.lock().unwrap().push(Acked {
                    key,
                    value,
                    revision,
                });
            }
            Err(_) => return, // the server is gone: this write may or may not have happened
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut all: Vec<Acked> = Vec::new();
    let mut last_revision = 1;
    for round in 0..ROUNDS {
        let mut child = spawn(dir.path(), port);
        let client = connect(port).await;
        verify(&client, &all, last_revision, round).await;

        let acked = Arc::new(Mutex::new(Vec::new()));
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| tokio::spawn(write_until_killed(client.clone(), round, w, acked.clone())))
            .collect();
        // Kill at a different moment each round: 150..=700 ms into the load.
        let delay = 150 + (round as u64 * 97) % 550;
        tokio::time::sleep(Duration::from_millis(delay)).await;
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        for w in writers {
            w.await.unwrap();
        }
        let acked = acked.lock().unwrap().clone();
        assert!(
            !acked.is_empty(),
            "round {round}: no write was acknowledged in {delay} ms"
        );
        last_revision = acked
            .iter()
            .map(|a| a.revision)
            .max()
            .unwrap()
            .max(last_revision);
        all.extend(acked);
    }
    let mut child = spawn(dir.path(), port);
    let client = connect(port).await;
    verify(&client, &all, last_revision, ROUNDS).await;
    child.kill().unwrap();
    child.wait().unwrap();
    eprintln!(
        "{} acknowledged writes over {ROUNDS} SIGKILLs, all present after restart",
        all.len()
    );
}

/// Every acknowledged write is present with its value and revision.
async fn verify(client: &Client, acked: &[Acked], last_revision: i64, round: usize) {
    let mut kv = client.kv_client();
    let head = kv.get("probe", None).await.unwrap();
    let revision = head.header().unwrap().revision();
    assert!(
        revision >= last_revision,
        "round {round}: revision went back from {last_revision} to {revision} after restart"
    );
    let stored = kv
        .get("r", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let stored: HashMap<&str, (&str, i64)> = stored
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap(),
                (kv.value_str().unwrap(), kv.mod_revision()),
            )
        })
        .collect();
    for a in acked {
        let found = stored.get(a.key.as_str());
        assert_eq!(
            found,
            Some(&(a.value.as_str(), a.revision)),
            "round {round}: acknowledged {a:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_the_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut first = spawn(dir.path(), port);
    let mut client = connect(port).await;
    client.put("k", "v", None).await.unwrap();

    let second = spawn(dir.path(), free_port()).wait_with_output().unwrap();
    assert!(
        !second.status.success(),
        "a second server on the same data dir must not start"
    );
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("is in use by another concord process"),
        "unclear message: {stderr}"
    );

    let resp = client.get("k", None).await.unwrap();
    assert_eq!(
        resp.kvs()[0].value_str().unwrap(),
        "v",
        "the first server is unaffected"
    );
    first.kill().unwrap();
    first.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_down_cleanly_and_keeps_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = spawn(dir.path(), port);
    let mut client = connect(port).await;
    let put = client.put("kept", "yes", None).await.unwrap();
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "exit status {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );

    let mut child = spawn(dir.path(), port);
    let mut client = connect(port).await;
    let resp = client.get("kept", None).await.unwrap();
    assert_eq!(
        resp.kvs()[0].mod_revision(),
        put.header().unwrap().revision()
    );
    child.kill().unwrap();
    child.wait().unwrap();
}
