//! Leader election: two controller managers, only the leader acts; stopping or killing it
//! hands the lease to the other within the lease duration.

mod common;

use std::time::Duration;

use common::{deployment, wait_for, Env, TIMEOUT};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Event;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::Api;
use rkube_runtime::ControllerSelection;
use serde_json::json;

async fn holder(env: &Env) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), "kube-system");
    leases
        .get_opt("rkube-controller-manager")
        .await
        .unwrap()
        .and_then(|l| l.spec?.holder_identity)
        .filter(|h| !h.is_empty())
}

async fn leader_endpoint(url: &str) -> String {
    let (host, port) = url.trim_start_matches("http://").split_once(':').unwrap();
    let stream = tokio::net::TcpStream::connect((host, port.parse::<u16>().unwrap()))
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = stream;
    stream
        .write_all(
            format!("GET /leader HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
        .rsplit("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_string()
}

async fn available(env: &Env, name: &str) -> Option<i32> {
    let api: Api<Deployment> = Api::default_namespaced(env.client.clone());
    api.get(name)
        .await
        .unwrap()
        .status
        .and_then(|s| s.available_replicas)
}

async fn reporting_instances(env: &Env) -> std::collections::BTreeSet<String> {
    let events: Api<Event> = Api::default_namespaced(env.client.clone());
    events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|e| e.reporting_instance)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_the_leader_acts_and_a_stopped_leader_hands_over() {
    let env = Env::start().await;
    let a = env.start_cm("cm-a").await;
    wait_for("cm-a leads", TIMEOUT, || async {
        holder(&env).await.as_deref() == Some("cm-a")
    })
    .await;
    let b = env.start_cm("cm-b").await;
    let api: Api<Deployment> = Api::default_namespaced(env.client.clone());
    api.create(
        &PostParams::default(),
        &serde_json::from_value(deployment("le", 2, "img")).unwrap(),
    )
    .await
    .unwrap();
    wait_for("2 available", TIMEOUT, || async {
        available(&env, "le").await == Some(2)
    })
    .await;
    assert_eq!(holder(&env).await.as_deref(), Some("cm-a"));
    assert_eq!(leader_endpoint(&a.health_url).await, "true");
    assert_eq!(leader_endpoint(&b.health_url).await, "false");
    let instances = reporting_instances(&env).await;
    assert_eq!(
        instances,
        ["cm-a".to_string()].into(),
        "only the leader wrote events"
    );

    a.stop().await;
    // Graceful stop releases the lease; cm-b must take it well within one lease duration.
    wait_for("cm-b leads", Duration::from_secs(3), || async {
        holder(&env).await.as_deref() == Some("cm-b")
    })
    .await;
    api.patch(
        "le",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 3}})),
    )
    .await
    .unwrap();
    wait_for("cm-b scales to 3", TIMEOUT, || async {
        available(&env, "le").await == Some(3)
    })
    .await;
    assert!(reporting_instances(&env).await.contains("cm-b"));
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_leader_is_replaced_after_its_lease_expires() {
    let env = Env::start().await;
    let a = env.start_cm("cm-a").await;
    wait_for("cm-a leads", TIMEOUT, || async {
        holder(&env).await.as_deref() == Some("cm-a")
    })
    .await;
    let b = env.start_cm("cm-b").await;
    a.kill().await;
    // Lease 3 s: the takeover needs the record unchanged for a lease duration, plus a retry.
    wait_for("cm-b leads", Duration::from_secs(10), || async {
        holder(&env).await.as_deref() == Some("cm-b")
    })
    .await;
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), "kube-system");
    let lease = leases.get("rkube-controller-manager").await.unwrap();
    assert_eq!(lease.spec.unwrap().lease_transitions, Some(1));
    let api: Api<Deployment> = Api::default_namespaced(env.client.clone());
    api.create(
        &PostParams::default(),
        &serde_json::from_value(deployment("after", 1, "img")).unwrap(),
    )
    .await
    .unwrap();
    wait_for("new leader runs controllers", TIMEOUT, || async {
        available(&env, "after").await == Some(1)
    })
    .await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disabled_controllers_do_not_run() {
    let env = Env::start().await;
    let mut config = env.cm_config("cm-a");
    config.controllers = ControllerSelection::parse("*,-replicaset");
    let cm = common::ControllerManager::start(config).await;
    let api: Api<Deployment> = Api::default_namespaced(env.client.clone());
    api.create(
        &PostParams::default(),
        &serde_json::from_value(deployment("off", 2, "img")).unwrap(),
    )
    .await
    .unwrap();
    // The deployment controller makes the ReplicaSet; with no ReplicaSet controller no pod
    // appears and the ReplicaSet's status is never written (a running ReplicaSet controller
    // writes observedGeneration on its first sync, before or with its first pods).
    let sets: Api<k8s_openapi::api::apps::v1::ReplicaSet> =
        Api::default_namespaced(env.client.clone());
    wait_for("replica set created", TIMEOUT, || async {
        sets.list(&ListParams::default()).await.unwrap().items.len() == 1
    })
    .await;
    // The deployment controller has seen that ReplicaSet through the informer the
    // ReplicaSet controller would share: its status counts it.
    wait_for("deployment status written", TIMEOUT, || async {
        api.get("off")
            .await
            .unwrap()
            .status
            .is_some_and(|s| s.observed_generation == Some(1))
    })
    .await;
    // After a graceful stop nothing runs any more; what is there now is final.
    cm.stop().await;
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::default_namespaced(env.client.clone());
    assert!(pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .is_empty());
    let set = &sets.list(&ListParams::default()).await.unwrap().items[0];
    assert!(
        set.status
            .as_ref()
            .is_none_or(|s| s.observed_generation.is_none()),
        "the ReplicaSet controller ran: {:?}",
        set.status
    );
}
