//! Server configuration: etcd's flag names, each also read from `CONCORD_<FLAG>`.
//!
//! Operators who know etcd use the same flags: `--name`, `--data-dir`, `--listen-client-urls`,
//! `--initial-cluster`, … A single member starts with no flags at all, exactly like etcd: name
//! `default`, data dir `default.concord`, clients on `http://127.0.0.1:2379`.
//!
//! Member and cluster ids are derived as etcd derives them, so every member computes the same ids
//! without talking to the others: a member id is the first 8 bytes (big-endian) of
//! SHA-1(sorted peer URLs joined, then the cluster token); the cluster id is the first 8 bytes of
//! SHA-1 over the sorted member ids (8 bytes each, big-endian).
//!
//! Those derived ids hold for the members of a new cluster (`--initial-cluster-state new`). A
//! member added later (`etcdctl member add`) gets its id from the cluster, and learns it and the
//! cluster id when it first starts with `--initial-cluster-state existing` (see `join`). Once a
//! data dir has been started, its ids and membership come from the data dir: the `--initial-*`
//! flags are ignored, as etcd ignores them.
//!
//! A member listens for its peers on `--listen-peer-urls`, also when it is alone (so that members
//! can be added to it).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use sha1::{Digest, Sha1};

use crate::error::{Error, Result};

/// The etcd API version Concord reports in Status: clients gate features on it.
pub const ETCD_API_VERSION: &str = "3.5.0";
/// Deliveries a watch stream's channel holds by default.
pub const WATCH_STREAM_BUFFER: usize = 1024;
/// Concord's own version.
pub const CONCORD_VERSION: &str = env!("CARGO_PKG_VERSION");

/// `concord`'s command line (etcd's flag names).
#[derive(Debug, Clone, Parser)]
#[command(
    name = "concord",
    version = concat!(env!("CARGO_PKG_VERSION"), " (etcd API 3.5.0)"),
    about = "Concord: an etcd-v3-compatible coordination store"
)]
pub struct Flags {
    /// Human-readable name of this member.
    #[arg(long, env = "CONCORD_NAME", default_value = "default")]
    pub name: String,
    /// Directory for the database (default: <name>.concord).
    #[arg(long, env = "CONCORD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// URLs to listen on for client traffic (comma-separated).
    #[arg(
        long,
        env = "CONCORD_LISTEN_CLIENT_URLS",
        default_value = "http://127.0.0.1:2379"
    )]
    pub listen_client_urls: String,
    /// Client URLs advertised to the rest of the cluster (comma-separated).
    #[arg(
        long,
        env = "CONCORD_ADVERTISE_CLIENT_URLS",
        default_value = "http://127.0.0.1:2379"
    )]
    pub advertise_client_urls: String,
    /// URLs to listen on for peer traffic (comma-separated).
    #[arg(
        long,
        env = "CONCORD_LISTEN_PEER_URLS",
        default_value = "http://127.0.0.1:2380"
    )]
    pub listen_peer_urls: String,
    /// Peer URLs advertised to the rest of the cluster (comma-separated).
    #[arg(
        long,
        env = "CONCORD_INITIAL_ADVERTISE_PEER_URLS",
        default_value = "http://127.0.0.1:2380"
    )]
    pub initial_advertise_peer_urls: String,
    /// Initial cluster configuration, `name=peer-url,...` (default: <name>=<advertised peer URLs>).
    #[arg(long, env = "CONCORD_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// `new` for a new cluster, `existing` to join one.
    #[arg(
        long,
        env = "CONCORD_INITIAL_CLUSTER_STATE",
        value_enum,
        default_value = "new"
    )]
    pub initial_cluster_state: ClusterState,
    /// Token that makes member and cluster ids unique to this cluster.
    #[arg(
        long,
        env = "CONCORD_INITIAL_CLUSTER_TOKEN",
        default_value = "etcd-cluster"
    )]
    pub initial_cluster_token: String,
    /// Applied entries between compactions of the Raft log.
    #[arg(long, env = "CONCORD_SNAPSHOT_COUNT", default_value_t = 100_000)]
    pub snapshot_count: u64,
    /// Time (ms) of a heartbeat interval.
    #[arg(long, env = "CONCORD_HEARTBEAT_INTERVAL", default_value_t = 100)]
    pub heartbeat_interval: u64,
    /// Time (ms) of an election timeout.
    #[arg(long, env = "CONCORD_ELECTION_TIMEOUT", default_value_t = 1000)]
    pub election_timeout: u64,
    /// Maximum client request size in bytes the server will accept.
    #[arg(long, env = "CONCORD_MAX_REQUEST_BYTES", default_value_t = 1_572_864)]
    pub max_request_bytes: usize,
    /// Maximum number of operations permitted in a transaction.
    #[arg(long, env = "CONCORD_MAX_TXN_OPS", default_value_t = 128)]
    pub max_txn_ops: usize,
    /// Interval of the progress notifications of watchers that asked for them (e.g. 10m, 5s).
    #[arg(
        long,
        env = "CONCORD_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL",
        default_value = "10m",
        value_parser = humantime::parse_duration
    )]
    pub experimental_watch_progress_notify_interval: Duration,
    /// Interval between checkpoints of the remaining TTL of leases (e.g. 5m).
    #[arg(
        long,
        env = "CONCORD_EXPERIMENTAL_LEASE_CHECKPOINT_INTERVAL",
        default_value = "5m",
        value_parser = humantime::parse_duration
    )]
    pub experimental_lease_checkpoint_interval: Duration,
    /// Log level: debug, info, warn or error.
    #[arg(long, env = "CONCORD_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

/// `--initial-cluster-state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ClusterState {
    New,
    Existing,
}

/// A validated server configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// This member's name.
    pub name: String,
    /// Where the database lives.
    pub data_dir: PathBuf,
    /// Addresses to serve clients on (port 0 picks a free port).
    pub listen_client: Vec<SocketAddr>,
    /// Addresses to serve peers on (used when the cluster has more than one member).
    pub listen_peer: Vec<SocketAddr>,
    /// Client URLs this member advertises.
    pub advertise_client_urls: Vec<String>,
    /// Peer URLs this member advertises (they determine its id).
    pub advertise_peer_urls: Vec<String>,
    /// The initial members: name and peer URLs.
    pub initial_cluster: Vec<(String, Vec<String>)>,
    pub initial_cluster_state: ClusterState,
    pub initial_cluster_token: String,
    /// Applied entries between Raft log compactions.
    pub snapshot_count: u64,
    /// One Raft tick.
    pub heartbeat_interval: Duration,
    /// Election timeout (a multiple of the heartbeat interval).
    pub election_timeout: Duration,
    /// Largest request accepted, in bytes.
    pub max_request_bytes: usize,
    /// Most operations in one transaction.
    pub max_txn_ops: usize,
    /// Interval of watch progress notifications.
    pub watch_progress_notify_interval: Duration,
    /// Interval between lease TTL checkpoints (see `lease`).
    pub lease_checkpoint_interval: Duration,
    /// Deliveries a watch stream's channel holds before its watchers fall behind (not a flag:
    /// tests make it small to exercise catching up).
    pub watch_stream_buffer: usize,
}

impl ServerConfig {
    /// A single member serving clients on 127.0.0.1 with a free port, for tests.
    pub fn for_test(data_dir: impl Into<PathBuf>) -> Self {
        let peer = "http://127.0.0.1:0".to_string();
        ServerConfig {
            name: "test".into(),
            data_dir: data_dir.into(),
            listen_client: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
            listen_peer: Vec::new(),
            advertise_client_urls: vec!["http://127.0.0.1:0".into()],
            advertise_peer_urls: vec![peer.clone()],
            initial_cluster: vec![("test".into(), vec![peer])],
            initial_cluster_state: ClusterState::New,
            initial_cluster_token: "etcd-cluster".into(),
            snapshot_count: 100_000,
            heartbeat_interval: Duration::from_millis(100),
            election_timeout: Duration::from_millis(1000),
            max_request_bytes: 1_572_864,
            max_txn_ops: 128,
            watch_progress_notify_interval: Duration::from_secs(600),
            lease_checkpoint_interval: Duration::from_secs(300),
            watch_stream_buffer: WATCH_STREAM_BUFFER,
        }
    }

    /// This member's id (see the module doc).
    pub fn member_id(&self) -> u64 {
        member_id(&self.advertise_peer_urls, &self.initial_cluster_token)
    }

    /// The initial members: id → peer URLs.
    pub fn peers(&self) -> std::collections::HashMap<u64, Vec<String>> {
        self.initial_cluster
            .iter()
            .map(|(_, urls)| (member_id(urls, &self.initial_cluster_token), urls.clone()))
            .collect()
    }

    /// The cluster id of the initial cluster.
    pub fn cluster_id(&self) -> u64 {
        let mut ids: Vec<u64> = self
            .initial_cluster
            .iter()
            .map(|(_, urls)| member_id(urls, &self.initial_cluster_token))
            .collect();
        ids.sort_unstable();
        let bytes: Vec<u8> = ids.iter().flat_map(|id| id.to_be_bytes()).collect();
        first_u64(&Sha1::digest(&bytes))
    }

    /// The request timeout, as etcd computes it: 5 s plus two election timeouts.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(5) + 2 * self.election_timeout
    }

    /// The smallest lease TTL, in seconds: 1.5 election timeouts, rounded up (etcd's rule).
    pub fn min_lease_ttl(&self) -> i64 {
        let min = self.heartbeat_interval * ((3 * self.election_ticks() / 2) as u32);
        min.as_secs() as i64 + i64::from(min.subsec_nanos() > 0)
    }

    /// Election timeout in heartbeat ticks.
    pub fn election_ticks(&self) -> usize {
        (self.election_timeout.as_millis() / self.heartbeat_interval.as_millis().max(1)) as usize
    }
}

fn member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let mut bytes = urls.concat().into_bytes();
    bytes.extend_from_slice(token.as_bytes());
    first_u64(&Sha1::digest(&bytes))
}

fn first_u64(hash: &[u8]) -> u64 {
    u64::from_be_bytes(hash[..8].try_into().expect("SHA-1 is 20 bytes"))
}

fn split_urls(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// Parses `http://host:port` into a socket address. Only IP literals and `localhost` are accepted:
/// a listener binds an address, it does not resolve names.
pub fn parse_listen_url(url: &str) -> Result<SocketAddr> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        Error::Config(format!(
            "listen URL {url:?} must start with http:// (TLS is not supported)"
        ))
    })?;
    let hostport = rest.trim_end_matches('/');
    let hostport = match hostport.strip_prefix("localhost:") {
        Some(port) => format!("127.0.0.1:{port}"),
        None => hostport.to_string(),
    };
    hostport
        .parse()
        .map_err(|_| Error::Config(format!("listen URL {url:?} is not http://<ip>:<port>")))
}

impl Flags {
    /// Validates the flags into a [`ServerConfig`].
    pub fn into_config(self) -> Result<ServerConfig> {
        let data_dir = self
            .data_dir
            .unwrap_or_else(|| PathBuf::from(format!("{}.concord", self.name)));
        let listen_client = split_urls(&self.listen_client_urls)
            .iter()
            .map(|u| parse_listen_url(u))
            .collect::<Result<Vec<_>>>()?;
        if listen_client.is_empty() {
            return Err(Error::Config("--listen-client-urls is empty".into()));
        }
        let listen_peer = split_urls(&self.listen_peer_urls)
            .iter()
            .map(|u| parse_listen_url(u))
            .collect::<Result<Vec<_>>>()?;
        let advertise_peer_urls = split_urls(&self.initial_advertise_peer_urls);
        let initial_cluster = match &self.initial_cluster {
            Some(spec) => parse_initial_cluster(spec)?,
            None => vec![(self.name.clone(), advertise_peer_urls.clone())],
        };
        let Some((_, mine)) = initial_cluster.iter().find(|(name, _)| *name == self.name) else {
            return Err(Error::Config(format!(
                "--initial-cluster has no member named {:?} (--name)",
                self.name
            )));
        };
        let (mut mine, mut advertised) = (mine.clone(), advertise_peer_urls.clone());
        mine.sort();
        advertised.sort();
        if mine != advertised {
            return Err(Error::Config(format!(
                "--initial-cluster has {:?} for {:?}, but --initial-advertise-peer-urls is {:?}",
                mine, self.name, advertised
            )));
        }
        if self.heartbeat_interval == 0 || self.election_timeout < 5 * self.heartbeat_interval {
            return Err(Error::Config(
                "--election-timeout must be at least 5 times --heartbeat-interval (and both above 0)".into(),
            ));
        }
        if self.experimental_watch_progress_notify_interval.is_zero()
            || self.experimental_lease_checkpoint_interval.is_zero()
        {
            return Err(Error::Config(
                "--experimental-watch-progress-notify-interval and \
                 --experimental-lease-checkpoint-interval must be above 0"
                    .into(),
            ));
        }
        if self.max_txn_ops == 0 || self.max_request_bytes == 0 || self.snapshot_count == 0 {
            return Err(Error::Config(
                "--max-txn-ops, --max-request-bytes and --snapshot-count must be above 0".into(),
            ));
        }
        Ok(ServerConfig {
            name: self.name,
            data_dir,
            listen_client,
            listen_peer,
            advertise_client_urls: split_urls(&self.advertise_client_urls),
            advertise_peer_urls,
            initial_cluster,
            initial_cluster_state: self.initial_cluster_state,
            initial_cluster_token: self.initial_cluster_token,
            snapshot_count: self.snapshot_count,
            heartbeat_interval: Duration::from_millis(self.heartbeat_interval),
            election_timeout: Duration::from_millis(self.election_timeout),
            max_request_bytes: self.max_request_bytes,
            max_txn_ops: self.max_txn_ops,
            watch_progress_notify_interval: self.experimental_watch_progress_notify_interval,
            lease_checkpoint_interval: self.experimental_lease_checkpoint_interval,
            watch_stream_buffer: WATCH_STREAM_BUFFER,
        })
    }
}

/// Parses `name=url,name=url2,other=url3`: a member may be named more than once, once per URL.
fn parse_initial_cluster(spec: &str) -> Result<Vec<(String, Vec<String>)>> {
    let mut members: Vec<(String, Vec<String>)> = Vec::new();
    for item in split_urls(spec) {
        let (name, url) = item.split_once('=').ok_or_else(|| {
            Error::Config(format!("--initial-cluster entry {item:?} is not name=url"))
        })?;
        match members.iter_mut().find(|(n, _)| n == name) {
            Some((_, urls)) => urls.push(url.to_string()),
            None => members.push((name.to_string(), vec![url.to_string()])),
        }
    }
    if members.is_empty() {
        return Err(Error::Config("--initial-cluster is empty".into()));
    }
    Ok(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(args: &[&str]) -> Flags {
        Flags::parse_from(std::iter::once("concord").chain(args.iter().copied()))
    }

    #[test]
    fn ids_are_derived_exactly_like_etcds() {
        // etcd's well-known ids for a default single member on http://localhost:2380.
        let mut config = ServerConfig::for_test("x");
        config.advertise_peer_urls = vec!["http://localhost:2380".into()];
        config.initial_cluster = vec![("default".into(), config.advertise_peer_urls.clone())];
        assert_eq!(format!("{:x}", config.member_id()), "8e9e05c52164694d");
        assert_eq!(format!("{:x}", config.cluster_id()), "cdf818194e3a8c32");
    }

    #[test]
    fn no_flags_make_a_single_member_named_default() {
        let config = flags(&[]).into_config().unwrap();
        assert_eq!(config.name, "default");
        assert_eq!(config.data_dir, PathBuf::from("default.concord"));
        assert_eq!(
            config.listen_client,
            vec!["127.0.0.1:2379".parse().unwrap()]
        );
        assert_eq!(
            config.initial_cluster,
            vec![("default".into(), vec!["http://127.0.0.1:2380".into()])]
        );
        assert_eq!(
            (config.max_txn_ops, config.max_request_bytes),
            (128, 1_572_864)
        );
        assert_eq!(config.election_ticks(), 10);
    }

    #[test]
    fn bad_flags_are_explained() {
        let err = flags(&["--listen-client-urls", "https://127.0.0.1:1"])
            .into_config()
            .unwrap_err();
        assert!(err.to_string().contains("http://"), "{err}");
        let err = flags(&["--initial-cluster", "other=http://127.0.0.1:2380"])
            .into_config()
            .unwrap_err();
        assert!(
            err.to_string().contains("no member named \"default\""),
            "{err}"
        );
        let err = flags(&["--election-timeout", "100"])
            .into_config()
            .unwrap_err();
        assert!(err.to_string().contains("5 times"), "{err}");
    }

    #[test]
    fn environment_variables_name_the_flags() {
        let cmd = <Flags as clap::CommandFactory>::command();
        let data_dir = cmd
            .get_arguments()
            .find(|a| a.get_id() == "data_dir")
            .unwrap();
        assert_eq!(data_dir.get_env().unwrap(), "CONCORD_DATA_DIR");
    }
}
