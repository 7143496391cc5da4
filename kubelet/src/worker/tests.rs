//! The worker's sync against the fake runtime, images and network (an API client that
//! reaches nothing: status writes fail fast and are logged).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use rkube_cri::fake::FakeRuntime;
use rkube_cri::{labels, ContainerInfo, ContainerRuntime, ContainerState, PodNetwork};
use serde_json::json;
use tokio::sync::Notify;

use super::observed::{is_running, spec_hash};
use super::{format_duration, PodContainers, PodWorker, Synced};
use crate::manager::testing::{self, IMAGE, NODE};

#[test]
fn durations_print_like_go() {
    assert_eq!(format_duration(Duration::from_secs(10)), "10s");
    assert_eq!(format_duration(Duration::from_secs(300)), "5m0s");
    assert_eq!(format_duration(Duration::from_secs(80)), "1m20s");
    assert_eq!(format_duration(Duration::from_millis(500)), "500ms");
}

fn worker(test: &testing::TestNode, uid: &str) -> PodWorker {
    PodWorker::new(test.node.clone(), uid.into(), Arc::new(Notify::new()))
}

/// Syncs once; returns how often the node's containers were listed.
async fn lists_of_one_sync(worker: &mut PodWorker, runtime: &FakeRuntime, pod: &Pod) -> usize {
    let before = runtime.list_calls();
    worker.sync(pod).await;
    runtime.list_calls() - before
}

fn containers_named(runtime: &FakeRuntime, name: &str) -> Vec<ContainerInfo> {
    let all = futures::executor::block_on(runtime.list()).unwrap();
    all.into_iter()
        .filter(|c| c.labels[labels::CONTAINER_NAME] == name)
        .collect()
}

#[tokio::test]
async fn a_sync_lists_the_nodes_containers_once() {
    let test = testing::node();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default", "uid": "uid-count"},
        "spec": {"nodeName": NODE,
            "initContainers": [{"name": "init", "image": IMAGE}],
            "containers": [{"name": "a", "image": IMAGE}, {"name": "b", "image": IMAGE}]}
    }))
    .unwrap();
    let mut worker = worker(&test, "uid-count");
    let mut lists = Vec::new();
    lists.push(lists_of_one_sync(&mut worker, &test.runtime, &pod).await);
    let init = test.runtime.container_ids();
    assert_eq!(init.len(), 1, "the init container runs first");
    test.runtime.exit(&init[0], 0).unwrap();
    lists.push(lists_of_one_sync(&mut worker, &test.runtime, &pod).await);
    assert_eq!(
        test.runtime.container_ids().len(),
        3,
        "both containers started"
    );
    // A crash: the restart (which removes nothing yet) and a spec change (a kill).
    let a = containers_named(&test.runtime, "a");
    test.runtime.exit(&a[0].id, 1).unwrap();
    lists.push(lists_of_one_sync(&mut worker, &test.runtime, &pod).await);
    assert_eq!(containers_named(&test.runtime, "a").len(), 2, "a restarted");
    let mut changed = pod.clone();
    changed.spec.as_mut().unwrap().containers[1].args = Some(vec!["new".into()]);
    lists.push(lists_of_one_sync(&mut worker, &test.runtime, &changed).await);
    lists.push(lists_of_one_sync(&mut worker, &test.runtime, &changed).await);
    assert_eq!(containers_named(&test.runtime, "b").len(), 2, "b replaced");
    assert_eq!(lists, [1, 1, 1, 1, 1]);
}

#[tokio::test]
async fn restart_policy_never_leaves_an_exited_container_over_many_syncs() {
    let test = testing::node();
    let mut pod = testing::pod("job", "uid-never");
    pod.spec.as_mut().unwrap().restart_policy = Some("Never".into());
    let mut worker = worker(&test, "uid-never");
    worker.sync(&pod).await;
    let started = test.runtime.container_ids();
    assert_eq!(started.len(), 1);
    test.runtime.exit(&started[0], 3).unwrap();
    for _ in 0..5 {
        worker.sync(&pod).await;
    }
    assert_eq!(test.runtime.container_ids(), started);
}

/// (container name, ids newest first, states) of every container of the pod.
fn summary(containers: &PodContainers) -> Vec<String> {
    let mut lines: Vec<String> = containers
        .all()
        .map(|(name, list)| {
            let instances: Vec<String> = list
                .iter()
                .map(|c| format!("{} {:?}", c.id, c.state))
                .collect();
            format!("{name}: {}", instances.join(", "))
        })
        .collect();
    lines.sort();
    lines
}

/// Acts once and checks that the containers the status is built from are what a fresh
/// listing says, although the sync listed only before it acted.
async fn act_and_compare(worker: &mut PodWorker, pod: &Pod) {
    let Synced::Acted { containers, .. } = worker.act(pod).await else {
        panic!("the pod was not acted on");
    };
    let listed = worker.list_containers().await.unwrap();
    assert_eq!(summary(&containers), summary(&listed));
}

#[tokio::test]
async fn the_status_is_built_from_the_containers_as_they_are_after_acting() {
    let test = testing::node();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default", "uid": "uid-seen"},
        "spec": {"nodeName": NODE,
            "initContainers": [{"name": "init", "image": IMAGE}],
            "containers": [{"name": "a", "image": IMAGE},
                {"name": "b", "image": IMAGE, "command": ["fails-to-start"]}]}
    }))
    .unwrap();
    test.runtime.fail_start_when(|config| {
        let name = config.labels.get(labels::CONTAINER_NAME)?;
        (name == "b").then(|| "exec: \"fails-to-start\": no such file".to_string())
    });
    let mut worker = worker(&test, "uid-seen");
    // Starts the init container.
    act_and_compare(&mut worker, &pod).await;
    let init = containers_named(&test.runtime, "init");
    test.runtime.exit(&init[0].id, 0).unwrap();
    // Starts a, and creates b, whose start fails (left Created).
    act_and_compare(&mut worker, &pod).await;
    assert!(containers_named(&test.runtime, "b")
        .iter()
        .all(|c| c.state == ContainerState::Created));
    // Replaces b (removing the one left Created) and restarts a after a crash.
    let a = containers_named(&test.runtime, "a");
    test.runtime.exit(&a[0].id, 1).unwrap();
    act_and_compare(&mut worker, &pod).await;
    assert_eq!(containers_named(&test.runtime, "a").len(), 2);
    // Kills a for a changed spec.
    let mut changed = pod.clone();
    changed.spec.as_mut().unwrap().containers[0].args = Some(vec!["new".into()]);
    act_and_compare(&mut worker, &changed).await;
    let a = containers_named(&test.runtime, "a");
    assert!(a.iter().all(|c| !is_running(c)), "{a:?}");
}

#[tokio::test]
async fn a_deleted_pod_with_a_huge_grace_period_is_stopped_without_overflow() {
    let test = testing::node();
    let mut pod = testing::pod("web", "uid-huge");
    pod.spec.as_mut().unwrap().termination_grace_period_seconds = Some(i64::MAX);
    let mut worker = worker(&test, "uid-huge");
    worker.sync(&pod).await;
    let running: Vec<ContainerInfo> = test.runtime.list().await.unwrap();
    assert_eq!(running.len(), 1);
    assert!(is_running(&running[0]));

    // The spec's period, and the deletion's (which the kubelet must not trust either).
    for (deletion_grace, spec_grace) in [(Some(i64::MAX), Some(30)), (None, Some(i64::MAX))] {
        let mut deleted = pod.clone();
        deleted.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            ));
        deleted.metadata.deletion_grace_period_seconds = deletion_grace;
        deleted
            .spec
            .as_mut()
            .unwrap()
            .termination_grace_period_seconds = spec_grace;
        worker.sync(&deleted).await;
        assert!(
            test.runtime.list().await.unwrap().is_empty(),
            "containers are removed"
        );
        assert_eq!(test.network.status("uid-huge").await.unwrap(), None);
        worker.sync(&pod).await;
    }
    // A running pod whose container must be replaced (spec changed) is stopped with
    // the spec's grace period too.
    let mut changed = pod.clone();
    changed.spec.as_mut().unwrap().containers[0].args = Some(vec!["new".into()]);
    worker.sync(&changed).await;
    let old_hash = spec_hash(&pod.spec.as_ref().unwrap().containers[0]);
    let old_running = test
        .runtime
        .list()
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.labels[labels::SPEC_HASH] == old_hash && is_running(c))
        .count();
    assert_eq!(old_running, 0, "the outdated container was stopped");
    assert!(
        !matches!(
            test.runtime.list().await.unwrap()[0].state,
            ContainerState::Unknown
        ),
        "states come from the runtime"
    );
}
