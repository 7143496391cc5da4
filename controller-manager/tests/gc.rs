//! Garbage collector (Background, Foreground, Orphan) and namespace deletion end to end.

mod common;

use common::{deployment, wait_for, Env, TIMEOUT};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;

async fn ready_deployment(env: &Env, namespace: &str, name: &str, replicas: i32) {
    let api: Api<Deployment> = Api::namespaced(env.client.clone(), namespace);
    api.create(
        &PostParams::default(),
        &serde_json::from_value(deployment(name, replicas, "img")).unwrap(),
    )
    .await
    .unwrap();
    wait_for("deployment ready", TIMEOUT, || async {
        let d = api.get(name).await.unwrap();
        d.status.and_then(|s| s.available_replicas) == Some(replicas)
    })
    .await;
}

async fn count(env: &Env, namespace: &str) -> (usize, usize) {
    let rs: Api<ReplicaSet> = Api::namespaced(env.client.clone(), namespace);
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), namespace);
    (
        rs.list(&ListParams::default()).await.unwrap().items.len(),
        pods.list(&ListParams::default()).await.unwrap().items.len(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn background_deletion_removes_replicasets_and_pods() {
    let env = Env::start().await;
    let _cm = env.start_cm("cm-a").await;
    ready_deployment(&env, "default", "bg", 3).await;
    assert_eq!(count(&env, "default").await, (1, 3));
    let api: Api<Deployment> = Api::default_namespaced(env.client.clone());
    api.delete("bg", &DeleteParams::background()).await.unwrap();
    wait_for("dependents gone", TIMEOUT, || async {
        count(&env, "default").await == (0, 0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn foreground_deletion_removes_dependents_before_the_owner() {
    let env = Env::start().await;
    let _cm = env.start_cm("cm-a").await;
    ready_deployment(&env, "default", "fg", 2).await;
    let api: Api<Deployment> = Api::default_namespaced(env.client.clone());
    api.delete("fg", &DeleteParams::foreground()).await.unwrap();
    // The owner outlives its dependents: whenever it is gone, they must be gone too.
    wait_for("owner gone", TIMEOUT, || async {
        let owner_gone = api.get_opt("fg").await.unwrap().is_none();
        if owner_gone {
            assert_eq!(
                count(&env, "default").await,
                (0, 0),
                "owner removed before its dependents"
            );
        }
        owner_gone
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orphan_deletion_keeps_dependents_without_the_owner_reference() {
    let env = Env::start().await;
    let _cm = env.start_cm("cm-a").await;
    ready_deployment(&env, "default", "or", 2).await;
    let api: Api<Deployment> = Api::default_namespaced(env.client.clone());
    let deleted_uid = api.get("or").await.unwrap().uid().unwrap();
    api.delete("or", &DeleteParams::orphan()).await.unwrap();
    wait_for("owner gone", TIMEOUT, || async {
        api.get_opt("or").await.unwrap().is_none()
    })
    .await;
    let rs_api: Api<ReplicaSet> = Api::default_namespaced(env.client.clone());
    let sets = rs_api.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(sets.len(), 1);
    assert!(
        sets[0].owner_references().is_empty(),
        "{:?}",
        sets[0].owner_references()
    );
    // The orphaned ReplicaSet keeps (and still owns) its pods. A mistaken cascade would
    // come from the deletion just processed; a pod created now with the same gone owner is
    // one the collector must delete, so once it is gone the collector has worked past that
    // deletion, and whatever it was going to do to the ReplicaSet's pods it has done.
    let owner_uid = deleted_uid;
    let pods: Api<Pod> = Api::default_namespaced(env.client.clone());
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": {"name": "sentinel", "labels": {"role": "sentinel"},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                                              "name": "or", "uid": owner_uid}]},
            "spec": {"containers": [{"name": "c", "image": "img"}]}
        }))
        .unwrap(),
    )
    .await
    .unwrap();
    wait_for("the sentinel pod collected", TIMEOUT, || async {
        pods.get_opt("sentinel").await.unwrap().is_none()
    })
    .await;
    let pods = pods.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(pods.len(), 2);
    assert!(pods.iter().all(|p| p
        .owner_references()
        .iter()
        .any(|r| r.name == sets[0].name_any())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleting_a_namespace_removes_its_objects_then_the_namespace() {
    let env = Env::start().await;
    let _cm = env.start_cm("cm-a").await;
    let namespaces: Api<Namespace> = Api::all(env.client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "doomed"}})).unwrap(),
        )
        .await
        .unwrap();
    ready_deployment(&env, "doomed", "app", 2).await;
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(env.client.clone(), "doomed");
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "cfg"}, "data": {"k": "v"}})).unwrap(),
    )
    .await
    .unwrap();
    ready_deployment(&env, "default", "bystander", 1).await;

    namespaces
        .delete("doomed", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("namespace gone", TIMEOUT, || async {
        namespaces.get_opt("doomed").await.unwrap().is_none()
    })
    .await;
    assert_eq!(count(&env, "doomed").await, (0, 0));
    assert!(cms
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .is_empty());
    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), "doomed");
    assert!(deployments
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .is_empty());
    // Other namespaces are untouched.
    assert_eq!(count(&env, "default").await, (1, 1));
}
