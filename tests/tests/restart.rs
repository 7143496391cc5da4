//! Durability across restarts: of the API server (embedded store), and of etcd under a
//! running watch.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use rkube_e2e::{EtcdProcess, TestCluster};
use serde_json::json;
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(120);

fn config_map(name: &str) -> ConfigMap {
    serde_json::from_value(
        json!({"metadata": {"name": name, "labels": {"batch": "restart"}}, "data": {"name": name}}),
    )
    .unwrap()
}

async fn resource_versions(api: &Api<ConfigMap>) -> BTreeMap<String, String> {
    api.list(&ListParams::default().labels("batch=restart"))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|cm| {
            (
                cm.metadata.name.unwrap(),
                cm.metadata.resource_version.unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_keeps_objects_and_resource_versions_across_restart() {
    let mut cluster = TestCluster::start_embedded().await;
    let api: Api<ConfigMap> = Api::namespaced(cluster.kube_client(), "default");
    let mut created = BTreeMap::new();
    for i in 0..50 {
        let name = format!("cm-{i:02}");
        let cm = api
            .create(&PostParams::default(), &config_map(&name))
            .await
            .unwrap();
        created.insert(name, cm.metadata.resource_version.unwrap());
    }
    assert_eq!(resource_versions(&api).await, created);

    cluster.restart().await.unwrap();

    // A new client: the old one's pooled connections went with the old server.
    let api: Api<ConfigMap> = Api::namespaced(cluster.kube_client(), "default");
    assert_eq!(resource_versions(&api).await, created);
    let one = api.get("cm-07").await.unwrap();
    assert_eq!(one.metadata.resource_version.as_ref(), created.get("cm-07"));
    assert_eq!(
        one.data.unwrap().get("name").map(String::as_str),
        Some("cm-07")
    );

    // Revisions keep growing after the restart.
    let newest = created
        .values()
        .map(|rv| rv.parse::<u64>().unwrap())
        .max()
        .unwrap();
    let after = api
        .create(&PostParams::default(), &config_map("after-restart"))
        .await
        .unwrap();
    assert!(
        after
            .metadata
            .resource_version
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > newest
    );
}

/// Creates with retries while the API server reconnects to a restarted etcd. A retry whose
/// first attempt did land gets AlreadyExists, which counts as created.
async fn create_eventually(api: &Api<ConfigMap>, name: &str) {
    let last_error = std::sync::Mutex::new(String::new());
    let created = rkube_testkit::poll_until(WAIT, || async {
        match api.create(&PostParams::default(), &config_map(name)).await {
            Ok(_) => true,
            Err(kube::Error::Api(status)) if status.code == 409 => true,
            Err(e) => {
                eprintln!("creating {name} failed, retrying: {e}");
                *last_error.lock().unwrap() = e.to_string();
                false
            }
        }
    })
    .await;
    assert!(
        created.is_ok(),
        "creating {name} kept failing: {}",
        last_error.lock().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_keeps_delivering_across_etcd_restart() {
    let mut etcd = EtcdProcess::start().await.unwrap();
    let cluster = TestCluster::start_etcd(&etcd.endpoint()).await;
    let api: Api<ConfigMap> = Api::namespaced(cluster.kube_client(), "default");

    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<watcher::Event<ConfigMap>>();
    let stream = watcher(api.clone(), watcher::Config::default()).default_backoff();
    let watch_task = tokio::spawn(async move {
        let mut stream = stream.boxed();
        while let Some(event) = stream.next().await {
            match event {
                Ok(event) => {
                    if seen_tx.send(event).is_err() {
                        return;
                    }
                }
                // The backoff retries; errors while etcd is down are expected.
                Err(e) => eprintln!("watcher error: {e}"),
            }
        }
    });

    let mut seen = BTreeSet::new();
    let record = |event: watcher::Event<ConfigMap>, seen: &mut BTreeSet<String>| match event {
        watcher::Event::Apply(cm) | watcher::Event::InitApply(cm) => {
            seen.insert(cm.metadata.name.unwrap());
            false
        }
        watcher::Event::InitDone => true,
        _ => false,
    };
    // The initial list is done before anything is created, so every name below must arrive
    // as a watch event (or in a relist after the restart).
    loop {
        let event = tokio::time::timeout(WAIT, seen_rx.recv())
            .await
            .unwrap()
            .unwrap();
        if record(event, &mut seen) {
            break;
        }
    }

    let mut expected = BTreeSet::new();
    for i in 0..10 {
        let name = format!("before-{i}");
        create_eventually(&api, &name).await;
        expected.insert(name);
    }
    etcd.restart().await.unwrap();
    for i in 0..10 {
        let name = format!("after-{i}");
        create_eventually(&api, &name).await;
        expected.insert(name);
    }

    let deadline = Instant::now() + WAIT;
    while !expected.is_subset(&seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, seen_rx.recv()).await {
            Ok(Some(event)) => {
                record(event, &mut seen);
            }
            _ => panic!(
                "watcher never saw {:?} (saw {seen:?})",
                expected.difference(&seen).collect::<Vec<_>>()
            ),
        }
    }
    watch_task.abort();
}
