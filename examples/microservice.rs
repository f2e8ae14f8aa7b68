//! End to end: a tonic service discovered through Concord, balanced by the resolver, configured
//! with a hot-reloaded typed config, surviving the death of an instance.
//!
//! The example runs three processes: itself (the caller) and two Greeter instances, which are this
//! same binary started with `instance`. Each instance loads its greeting from the config key,
//! serves on 127.0.0.1, and registers with a 2 s TTL heartbeat. The caller:
//! 1. calls through `Resolver::channel` until both instances have answered;
//! 2. changes the greeting: both instances reload it, without a restart;
//! 3. writes an invalid greeting: the instances reject it and keep the last good one;
//! 4. kills one instance with SIGKILL (it cannot deregister): its lease expires, the registry
//!    drops it, and every call goes to the survivor.
//!
//! Everything lives under a fresh namespace, deleted at the end. Endpoints come from
//! `CONCORD_ENDPOINTS` (default `127.0.0.1:2379`); the example exits 0 when every step behaved.
//!
//! ```text
//! cargo run --example microservice
//! ```

use std::collections::BTreeSet;
use std::io::Read;
use std::process::Stdio;
use std::time::Duration;

use concord::proto::concorddemopb::greeter_client::GreeterClient;
use concord::proto::concorddemopb::greeter_server::{Greeter, GreeterServer};
use concord::proto::concorddemopb::{HelloReply, HelloRequest};
use concord::recipes::{Client, Config, Resolver, ServiceRegistry, Source};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::Channel;

type Error = Box<dyn std::error::Error + Send + Sync>;

const SERVICE: &str = "greeter";
const CONFIG_KEY: &str = "greeter/config";
/// The instances' registration TTL: how long a dead instance stays listed, at most.
const TTL: i64 = 2;
/// How long each step may take to converge.
const STEP: Duration = Duration::from_secs(15);

/// The Greeter's configuration, as JSON under [`CONFIG_KEY`].
#[derive(Debug, Deserialize)]
struct Greeting {
    /// The reply, with `{name}` standing for the caller's name.
    template: String,
}

fn valid(greeting: &Greeting) -> Result<(), String> {
    if greeting.template.contains("{name}") {
        Ok(())
    } else {
        Err(format!(
            "{:?} has no {{name}} placeholder",
            greeting.template
        ))
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1).map(String::as_str) {
        Some("instance") => instance(&args[2]).await,
        _ => caller().await,
    };
    if let Err(e) = result {
        eprintln!("microservice example failed: {e}");
        std::process::exit(1);
    }
}

// --- The instance process ---

struct Hello {
    addr: String,
    config: Config<Greeting>,
}

#[tonic::async_trait]
impl Greeter for Hello {
    async fn say_hello(
        &self,
        request: tonic::Request<HelloRequest>,
    ) -> Result<tonic::Response<HelloReply>, tonic::Status> {
        let name = request.into_inner().name;
        Ok(tonic::Response::new(HelloReply {
            message: self.config.current().template.replace("{name}", &name),
            instance: self.addr.clone(),
        }))
    }
}

/// Serves until its stdin closes, then deregisters and exits.
async fn instance(namespace: &str) -> Result<(), Error> {
    let client = Client::connect_from_env().await?.with_namespace(namespace);
    let config = Config::<Greeting>::builder(&client, Source::key(CONFIG_KEY))
        .validate(valid)
        .load()
        .await?;
    // Tell the caller (on stdout) about every rejected config.
    let mut status = config.watch_status();
    tokio::spawn(async move {
        let mut seen = 0;
        while status.changed().await.is_ok() {
            let status = status.borrow_and_update().clone();
            if status.rejected > seen {
                seen = status.rejected;
                let reason = status.last_rejection.map(|r| r.reason).unwrap_or_default();
                println!("config rejected: {reason}");
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let greeter = GreeterServer::new(Hello {
        addr: addr.clone(),
        config,
    });
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(greeter)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let registration = ServiceRegistry::new(&client)
        .register(
            SERVICE,
            &addr,
            serde_json::json!({"pid": std::process::id()}),
            TTL,
        )
        .await?;
    println!("listening {addr}");
    // The caller closes our stdin to stop us (or kills us).
    let _ = tokio::task::spawn_blocking(|| std::io::stdin().read_to_end(&mut Vec::new())).await;
    registration.deregister().await;
    server.abort();
    Ok(())
}

// --- The caller ---

/// A running instance process, its address, and what it prints after "listening".
struct Instance {
    child: Child,
    addr: String,
    output: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Instance {
    /// Waits for the instance to print a line starting with `prefix`; returns the line.
    async fn says(&mut self, prefix: &str) -> Result<String, Error> {
        loop {
            let line = tokio::time::timeout(STEP, self.output.next_line())
                .await
                .map_err(|_| format!("{} never said {prefix:?}", self.addr))??
                .ok_or_else(|| format!("{} exited before saying {prefix:?}", self.addr))?;
            if line.starts_with(prefix) {
                return Ok(line);
            }
        }
    }
}

async fn spawn_instance(namespace: &str) -> Result<Instance, Error> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["instance", namespace])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(STEP, lines.next_line())
        .await
        .map_err(|_| "an instance did not start in time")??
        .ok_or("an instance exited before listening")?;
    let addr = line
        .strip_prefix("listening ")
        .ok_or_else(|| format!("unexpected instance output {line:?}"))?
        .to_string();
    Ok(Instance {
        child,
        addr,
        output: lines,
    })
}

/// Calls until the last `window` answers (in a row, no failures) satisfy `done`; returns them
/// as (instance, message) pairs.
async fn calls_until(
    greeter: &mut GreeterClient<Channel>,
    what: &str,
    window: usize,
    done: impl Fn(&[(String, String)]) -> bool,
) -> Result<Vec<(String, String)>, Error> {
    let deadline = tokio::time::Instant::now() + STEP;
    let mut answers: Vec<(String, String)> = Vec::new();
    let mut failures = 0;
    while tokio::time::Instant::now() < deadline {
        let call = greeter.say_hello(HelloRequest { name: "Ada".into() });
        match tokio::time::timeout(Duration::from_secs(2), call).await {
            Ok(Ok(reply)) => {
                let reply = reply.into_inner();
                answers.push((reply.instance, reply.message));
                if answers.len() > window {
                    answers.remove(0);
                }
                if answers.len() == window && done(&answers) {
                    println!("  ok: {what} ({failures} failed calls on the way)");
                    return Ok(answers);
                }
            }
            _ => {
                failures += 1;
                answers.clear();
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!("not converged in {STEP:?}: {what}; last answers {answers:?}").into())
}

fn instances(answers: &[(String, String)]) -> BTreeSet<&str> {
    answers.iter().map(|(i, _)| i.as_str()).collect()
}

async fn caller() -> Result<(), Error> {
    let root = Client::connect_from_env().await?;
    let namespace = format!(
        "concord-example-microservice-{}/",
        uuid::Uuid::new_v4().simple()
    );
    let client = root.with_namespace(&namespace);
    let result = scenario(&client, &namespace).await;
    // Clean up whatever happened.
    let prefix = etcd_client::GetOptions::new().with_prefix();
    let _ = root
        .etcd()
        .delete(
            namespace.as_str(),
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await;
    let left = root.etcd().get(namespace.as_str(), Some(prefix)).await?;
    println!("cleaned up; {} keys left", left.kvs().len());
    result
}

async fn scenario(client: &Client, namespace: &str) -> Result<(), Error> {
    let mut etcd = client.etcd();
    let config_key = client.key(CONFIG_KEY);
    etcd.put(
        config_key.as_str(),
        r#"{"template": "Hello, {name}!"}"#,
        None,
    )
    .await?;

    let mut a = spawn_instance(namespace).await?;
    let mut b = spawn_instance(namespace).await?;
    println!("instances: a = {}, b = {}", a.addr, b.addr);
    let (addr_a, addr_b) = (a.addr.clone(), b.addr.clone());
    let both: BTreeSet<&str> = [addr_a.as_str(), addr_b.as_str()].into();

    let mut greeter = GreeterClient::new(Resolver::new(client).channel(SERVICE));
    println!("1. the resolver balances over both instances");
    calls_until(&mut greeter, "both instances answer", 20, |answers| {
        instances(answers) == both && answers.iter().all(|(_, m)| m == "Hello, Ada!")
    })
    .await?;

    println!("2. a config change is hot-reloaded by both");
    etcd.put(
        config_key.as_str(),
        r#"{"template": "Howdy, {name}!"}"#,
        None,
    )
    .await?;
    calls_until(
        &mut greeter,
        "both answer with the new greeting",
        20,
        |answers| instances(answers) == both && answers.iter().all(|(_, m)| m == "Howdy, Ada!"),
    )
    .await?;

    println!("3. an invalid config is rejected; the last good one stays");
    etcd.put(
        config_key.as_str(),
        r#"{"template": "no placeholder"}"#,
        None,
    )
    .await?;
    for instance in [&mut a, &mut b] {
        let said = instance.says("config rejected").await?;
        println!("  {}: {said}", instance.addr);
    }
    calls_until(
        &mut greeter,
        "both still answer with the last good greeting",
        20,
        |answers| instances(answers) == both && answers.iter().all(|(_, m)| m == "Howdy, Ada!"),
    )
    .await?;

    println!("4. instance a is killed (SIGKILL, no deregistration)");
    a.child.start_kill()?;
    a.child.wait().await?;
    let survivor: BTreeSet<&str> = [addr_b.as_str()].into();
    calls_until(&mut greeter, "all traffic moves to b", 20, |answers| {
        instances(answers) == survivor
    })
    .await?;
    let (listed, _) = ServiceRegistry::new(client).discover(SERVICE).await?;
    let listed: Vec<&str> = listed.iter().map(|i| i.addr.as_str()).collect();
    if listed != [addr_b.as_str()] {
        return Err(format!("the registry still lists {listed:?}").into());
    }
    println!("  ok: the registry lists only b");

    // Stop b cleanly: closing its stdin makes it deregister.
    drop(b.child.stdin.take());
    tokio::time::timeout(STEP, b.child.wait()).await??;
    let (listed, _) = ServiceRegistry::new(client).discover(SERVICE).await?;
    if !listed.is_empty() {
        return Err(format!("b did not deregister: {listed:?}").into());
    }
    println!("  ok: b deregistered on the way out");
    Ok(())
}
