//! Two candidates campaign for one election; an observer follows the leader. The first leader
//! proclaims a new value, then resigns, and the second takes over with a larger term.
//!
//! Run a server first (`cargo run --release --bin concord`, or any etcd ≥ 3.4), then
//! `cargo run --example election`. Endpoints come from `CONCORD_ENDPOINTS` (comma-separated,
//! default `127.0.0.1:2379`). Exits 0 when the leadership passed as expected.

use std::time::Duration;

use concord_recipes::{Client, Election, Session};
use futures::StreamExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let client = Client::connect_from_env().await?;
    let election = Election::new(&client, format!("example-election-{}", std::process::id()));
    let mut observed = Box::pin(election.observe());
    let mut next = async || -> Result<Option<Vec<u8>>, Box<dyn std::error::Error>> {
        let seen = tokio::time::timeout(Duration::from_secs(10), observed.next())
            .await?
            .ok_or("the observer stopped")??;
        Ok(seen.map(|leader| leader.proposal))
    };
    assert_eq!(next().await?, None, "nobody leads at first");

    let (a, b) = (
        Session::new(&client, 10).await?,
        Session::new(&client, 10).await?,
    );
    let first = election.campaign(&a, "10.0.0.1:9000").await?;
    println!("a leads (term {})", first.fencing_token());
    assert_eq!(next().await?.as_deref(), Some(&b"10.0.0.1:9000"[..]));
    first.proclaim("10.0.0.1:9001").await?;
    assert_eq!(next().await?.as_deref(), Some(&b"10.0.0.1:9001"[..]));

    let waiting = {
        let election = election.clone();
        tokio::spawn(async move { election.campaign(&b, "10.0.0.2:9000").await.map(|l| (l, b)) })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let first_term = first.fencing_token();
    first.resign().await?;
    let (second, b) = waiting.await??;
    println!("b leads (term {})", second.fencing_token());
    if second.fencing_token() <= first_term {
        return Err("terms must grow".into());
    }
    loop {
        if next().await?.as_deref() == Some(&b"10.0.0.2:9000"[..]) {
            break;
        }
    }
    second.resign().await?;
    a.close().await?;
    b.close().await?;
    println!("ok: leadership passed from a to b, observed all along");
    Ok(())
}
