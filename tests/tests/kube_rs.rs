//! kube-rs (the Rust client most Rust controllers use) with k8s-openapi types.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::watcher;
use rkube_e2e::{on_both_backends, EtcdProcess, TestCluster};
use serde_json::json;

on_both_backends!(
    pods_create_list_get_patch_delete,
    deployments_and_scale_subresource,
    watch_sees_added_then_modified,
    runtime_watcher_lists_then_follows,
    update_with_stale_resource_version_conflicts,
);

const WAIT: Duration = Duration::from_secs(60);

fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "kube-rs"}},
        "spec": {"containers": [
            {"name": "main", "image": "rkube.local/busybox:latest", "command": ["sleep", "3600"]},
            {"name": "side", "image": "rkube.local/busybox:latest"}
        ]}
    }))
    .unwrap()
}

fn deployment(name: &str, replicas: i32) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "rkube.local/busybox:latest"}]}
            }
        }
    }))
    .unwrap()
}

fn api_error(result: Result<impl std::fmt::Debug, kube::Error>) -> Box<kube::core::Status> {
    match result {
        Err(kube::Error::Api(status)) => status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

async fn pods_create_list_get_patch_delete(cluster: &TestCluster) {
    let pods: Api<Pod> = Api::namespaced(cluster.kube_client(), "default");
    let created = pods
        .create(&PostParams::default(), &pod("alpha"))
        .await
        .unwrap();
    assert_eq!(created.metadata.name.as_deref(), Some("alpha"));
    assert!(created.metadata.uid.is_some());
    assert!(created.metadata.resource_version.is_some());
    pods.create(&PostParams::default(), &pod("beta"))
        .await
        .unwrap();

    let list = pods
        .list(&ListParams::default().labels("app=kube-rs"))
        .await
        .unwrap();
    let mut names: Vec<_> = list
        .items
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    names.sort();
    assert_eq!(names, ["alpha", "beta"]);
    assert!(list.metadata.resource_version.is_some());

    let duplicate = api_error(pods.create(&PostParams::default(), &pod("alpha")).await);
    assert_eq!(
        (duplicate.code, duplicate.reason.as_str()),
        (409, "AlreadyExists")
    );

    let merged = pods
        .patch(
            "alpha",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"patched": "merge"}}})),
        )
        .await
        .unwrap();
    let labels = merged.metadata.labels.clone().unwrap();
    assert_eq!(labels.get("patched").map(String::as_str), Some("merge"));
    assert_eq!(labels.get("app").map(String::as_str), Some("kube-rs"));

    // Strategic merge: containers merge by name, so only "main" changes.
    let strategic = pods
        .patch(
            "alpha",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"containers": [{"name": "main", "image": "rkube.local/busybox:v2"}]}})),
        )
        .await
        .unwrap();
    let containers = strategic.spec.unwrap().containers;
    assert_eq!(containers.len(), 2);
    assert_eq!(containers[0].name, "main");
    assert_eq!(
        containers[0].image.as_deref(),
        Some("rkube.local/busybox:v2")
    );
    assert_eq!(
        containers[0].command,
        Some(vec!["sleep".to_string(), "3600".to_string()])
    );
    assert_eq!(containers[1].name, "side");

    let fetched = pods.get("alpha").await.unwrap();
    assert_eq!(
        fetched.metadata.resource_version,
        strategic.metadata.resource_version
    );
    assert_eq!(fetched.metadata.uid, created.metadata.uid);

    pods.delete("alpha", &DeleteParams::default())
        .await
        .unwrap();
    let gone = api_error(pods.get("alpha").await);
    assert_eq!((gone.code, gone.reason.as_str()), (404, "NotFound"));
    assert_eq!(gone.message, r#"pods "alpha" not found"#);
    let list = pods.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
}

async fn deployments_and_scale_subresource(cluster: &TestCluster) {
    let deployments: Api<Deployment> = Api::namespaced(cluster.kube_client(), "default");
    let created = deployments
        .create(&PostParams::default(), &deployment("web", 2))
        .await
        .unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    let spec = created.spec.as_ref().unwrap();
    // Server-side defaults, as upstream.
    assert_eq!(spec.revision_history_limit, Some(10));
    assert_eq!(spec.progress_deadline_seconds, Some(600));

    let all: Api<Deployment> = Api::all(cluster.kube_client());
    let listed = all.list(&ListParams::default()).await.unwrap();
    assert_eq!(listed.items.len(), 1);

    let patched = deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [
                {"name": "app", "image": "rkube.local/busybox:v2"},
                {"name": "sidecar", "image": "rkube.local/busybox:latest"}
            ]}}}})),
        )
        .await
        .unwrap();
    let containers = patched
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers
        .clone();
    let images: Vec<_> = containers
        .iter()
        .map(|c| (c.name.as_str(), c.image.as_deref().unwrap()))
        .collect();
    assert_eq!(
        images,
        [
            ("app", "rkube.local/busybox:v2"),
            ("sidecar", "rkube.local/busybox:latest")
        ]
    );
    assert_eq!(patched.metadata.generation, Some(2));

    let scale = deployments.get_scale("web").await.unwrap();
    assert_eq!(scale.spec.as_ref().unwrap().replicas, Some(2));
    let scaled = deployments
        .patch_scale(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 4}})),
        )
        .await
        .unwrap();
    assert_eq!(scaled.spec.unwrap().replicas, Some(4));
    let after = deployments.get("web").await.unwrap();
    assert_eq!(after.spec.unwrap().replicas, Some(4));
    assert_eq!(after.metadata.generation, Some(3));

    deployments
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    assert!(deployments.get_opt("web").await.unwrap().is_none());
}

async fn watch_sees_added_then_modified(cluster: &TestCluster) {
    let pods: Api<Pod> = Api::namespaced(cluster.kube_client(), "default");
    let list = pods.list(&ListParams::default()).await.unwrap();
    let rv = list.metadata.resource_version.unwrap();
    let mut stream = pods
        .watch(&WatchParams::default().timeout(120), &rv)
        .await
        .unwrap()
        .boxed();

    pods.create(&PostParams::default(), &pod("watched"))
        .await
        .unwrap();
    let added = tokio::time::timeout(WAIT, stream.try_next())
        .await
        .unwrap()
        .unwrap();
    match added {
        Some(WatchEvent::Added(p)) => assert_eq!(p.metadata.name.as_deref(), Some("watched")),
        other => panic!("expected Added, got {other:?}"),
    }

    let patched = pods
        .patch(
            "watched",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"seen": "yes"}}})),
        )
        .await
        .unwrap();
    let modified = tokio::time::timeout(WAIT, stream.try_next())
        .await
        .unwrap()
        .unwrap();
    match modified {
        Some(WatchEvent::Modified(p)) => {
            assert_eq!(
                p.metadata.resource_version,
                patched.metadata.resource_version
            );
            assert_eq!(
                p.metadata
                    .annotations
                    .unwrap()
                    .get("seen")
                    .map(String::as_str),
                Some("yes")
            );
        }
        other => panic!("expected Modified, got {other:?}"),
    }

    pods.delete("watched", &DeleteParams::default())
        .await
        .unwrap();
    let deleted = tokio::time::timeout(WAIT, stream.try_next())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(deleted, Some(WatchEvent::Deleted(_))),
        "expected Deleted, got {deleted:?}"
    );
}

async fn runtime_watcher_lists_then_follows(cluster: &TestCluster) {
    let config_maps: Api<ConfigMap> = Api::namespaced(cluster.kube_client(), "default");
    let existing: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "existing"}})).unwrap();
    config_maps
        .create(&PostParams::default(), &existing)
        .await
        .unwrap();

    let mut events = watcher(config_maps.clone(), watcher::Config::default()).boxed();
    let mut initial = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, events.try_next())
            .await
            .unwrap()
            .unwrap()
        {
            Some(watcher::Event::InitApply(cm)) => initial.push(cm.metadata.name.unwrap()),
            Some(watcher::Event::InitDone) => break,
            Some(_) => {}
            None => panic!("watcher ended"),
        }
    }
    assert_eq!(initial, ["existing"]);

    let later: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "later"}})).unwrap();
    config_maps
        .create(&PostParams::default(), &later)
        .await
        .unwrap();
    match tokio::time::timeout(WAIT, events.try_next())
        .await
        .unwrap()
        .unwrap()
    {
        Some(watcher::Event::Apply(cm)) => assert_eq!(cm.metadata.name.as_deref(), Some("later")),
        other => panic!("expected Apply(later), got {other:?}"),
    }
}

async fn update_with_stale_resource_version_conflicts(cluster: &TestCluster) {
    let deployments: Api<Deployment> = Api::namespaced(cluster.kube_client(), "default");
    let stale = deployments
        .create(&PostParams::default(), &deployment("contested", 1))
        .await
        .unwrap();
    deployments
        .patch(
            "contested",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 2}})),
        )
        .await
        .unwrap();

    let mut update = stale.clone();
    update.spec.as_mut().unwrap().replicas = Some(7);
    let conflict = api_error(
        deployments
            .replace("contested", &PostParams::default(), &update)
            .await,
    );
    assert_eq!((conflict.code, conflict.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        conflict.message,
        "Operation cannot be fulfilled on deployments.apps \"contested\": the object has been modified; \
         please apply your changes to the latest version and try again"
    );
    let current = deployments.get("contested").await.unwrap();
    assert_eq!(current.spec.as_ref().unwrap().replicas, Some(2));

    // With the current resourceVersion the same update succeeds.
    let mut fresh = current.clone();
    fresh.spec.as_mut().unwrap().replicas = Some(7);
    let replaced = deployments
        .replace("contested", &PostParams::default(), &fresh)
        .await
        .unwrap();
    assert_eq!(replaced.spec.unwrap().replicas, Some(7));
}

/// A watch from a resourceVersion that has left the watch history gets an ERROR event
/// with 410 Expired (on a 200 stream, which is what makes kube-rs relist).
async fn watch_from_expired_resource_version(cluster: &TestCluster) {
    let config_maps: Api<ConfigMap> = Api::namespaced(cluster.kube_client(), "default");
    let first: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "cm-0"}})).unwrap();
    let old_rv = config_maps
        .create(&PostParams::default(), &first)
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    for i in 1..=50 {
        let cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": format!("cm-{i}")}})).unwrap();
        config_maps
            .create(&PostParams::default(), &cm)
            .await
            .unwrap();
    }
    let mut stream = config_maps
        .watch(&WatchParams::default().timeout(60), &old_rv)
        .await
        .unwrap()
        .boxed();
    let event = tokio::time::timeout(WAIT, stream.try_next())
        .await
        .unwrap()
        .unwrap();
    match event {
        Some(WatchEvent::Error(status)) => {
            assert_eq!(
                (status.code, status.reason.as_str()),
                (410, "Expired"),
                "{status:?}"
            );
        }
        other => panic!("expected an ERROR event with 410, got {other:?}"),
    }
}

const TINY_HISTORY: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_watch_embedded() {
    let cluster = TestCluster::start_embedded_with(|c| c.watch_history = TINY_HISTORY).await;
    watch_from_expired_resource_version(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_watch_etcd() {
    let etcd = EtcdProcess::start().await.unwrap();
    let cluster =
        TestCluster::start_etcd_with(&etcd.endpoint(), |c| c.watch_history = TINY_HISTORY).await;
    watch_from_expired_resource_version(&cluster).await;
}
