//! Key namespacing against real servers (Concord in-process and Debian's etcd 3.4): recipes made
//! from clients with different namespaces keep their keys under their own prefix and never meet,
//! even with the same names.

mod common;

use concord::recipes::{Client, Mutex, Queue, ServiceRegistry, Session};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_keep_recipes_apart_on_concord_and_etcd() {
    let targets = common::Targets::start().await;
    for (name, endpoint) in targets.endpoints() {
        println!("--- {name}");
        let client = Client::connect([endpoint.as_str()]).await.unwrap();
        let run = client.with_namespace(&format!("ns-{}/", uuid::Uuid::new_v4().simple()));
        let (acme, globex) = (run.with_namespace("acme/"), run.with_namespace("globex/"));
        assert_eq!(acme.namespace(), format!("{}acme/", run.namespace()));
        same_mutex_name_two_namespaces(&acme, &globex).await;
        same_queue_name_two_namespaces(&acme, &globex).await;
        same_service_two_namespaces(&acme, &globex).await;
    }
    targets.concord.shutdown().await.unwrap();
}

async fn same_mutex_name_two_namespaces(acme: &Client, globex: &Client) {
    let (s1, s2) = (
        Session::new(acme, 30).await.unwrap(),
        Session::new(globex, 30).await.unwrap(),
    );
    let held = Mutex::new(acme, "jobs").lock(&s1).await.unwrap();
    assert!(
        held.key()
            .starts_with(&format!("{}jobs/", acme.namespace())),
        "{}",
        held.key()
    );
    let other = Mutex::new(globex, "jobs").try_lock(&s2).await.unwrap();
    let other = other.expect("another namespace's mutex of the same name is free");
    assert!(other.key().starts_with(globex.namespace()));
    // Within one namespace, the name still excludes.
    let s3 = Session::new(acme, 30).await.unwrap();
    assert!(
        Mutex::new(acme, "jobs")
            .try_lock(&s3)
            .await
            .unwrap()
            .is_none()
    );
    for session in [s1, s2, s3] {
        session.close().await.unwrap();
    }
}

async fn same_queue_name_two_namespaces(acme: &Client, globex: &Client) {
    Queue::new(acme, "mail").push("for acme").await.unwrap();
    assert_eq!(Queue::new(globex, "mail").try_pop().await.unwrap(), None);
    let got = Queue::new(acme, "mail").try_pop().await.unwrap();
    assert_eq!(got.as_deref(), Some(&b"for acme"[..]));
}

async fn same_service_two_namespaces(acme: &Client, globex: &Client) {
    let registration = ServiceRegistry::new(acme)
        .register("api", "10.1.0.1:80", serde_json::json!({}), 5)
        .await
        .unwrap();
    let raw = acme
        .etcd()
        .get(format!("{}api/10.1.0.1:80", acme.namespace()), None)
        .await
        .unwrap();
    assert_eq!(
        raw.kvs().len(),
        1,
        "the instance key is under the namespace"
    );
    let (mine, _) = ServiceRegistry::new(acme).discover("api").await.unwrap();
    let (theirs, _) = ServiceRegistry::new(globex).discover("api").await.unwrap();
    assert_eq!(mine.len(), 1);
    assert!(theirs.is_empty(), "globex sees none of acme's instances");
    registration.deregister().await;
}
