//! What the tests of the real binary share: free ports on 127.0.0.1, and a client once the
//! server answers.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use etcd_client::Client;

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Connects to the server on `port` once it answers a read (at most 20 s).
pub async fn connect(port: u16) -> Client {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut client) = Client::connect([format!("127.0.0.1:{port}")], None).await
            && client.get("probe", None).await.is_ok()
        {
            return client;
        }
        assert!(
            Instant::now() < deadline,
            "concord did not come up on port {port}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
