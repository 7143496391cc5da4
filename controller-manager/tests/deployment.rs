//! Deployment and ReplicaSet controllers end to end: in-process API server, simulated
//! kubelet, the real kubectl for `rollout status` / `rollout undo` / `rollout restart`.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::{deployment, wait_for, Env, TIMEOUT};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use parking_lot::Mutex;
use serde_json::json;

async fn create_deployment(env: &Env, body: serde_json::Value) -> Deployment {
    let api: Api<Deployment> = Api::default_namespaced(env.client.clone());
    api.create(
        &PostParams::default(),
        &serde_json::from_value(body).unwrap(),
    )
    .await
    .unwrap()
}

async fn deployment_status_is(env: &Env, name: &str, replicas: i32) -> bool {
    let api: Api<Deployment> = Api::default_namespaced(env.client.clone());
    let d = api.get(name).await.unwrap();
    let s = d.status.unwrap_or_default();
    s.observed_generation == d.metadata.generation
        && s.replicas == Some(replicas)
        && s.updated_replicas == Some(replicas)
        && s.ready_replicas == Some(replicas)
        && s.available_replicas == Some(replicas)
}

async fn pods_of(env: &Env, app: &str) -> Vec<Pod> {
    let api: Api<Pod> = Api::default_namespaced(env.client.clone());
    api.list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .unwrap()
        .items
}

fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deployment_reaches_ready_and_scales_up_and_down() {
    let env = Env::start().await;
    let _cm = env.start_cm("cm-a").await;
    create_deployment(&env, deployment("web", 3, "nginx:1")).await;
    wait_for("3/3 ready", TIMEOUT, || {
        deployment_status_is(&env, "web", 3)
    })
    .await;

    let rs_api: Api<ReplicaSet> = Api::default_namespaced(env.client.clone());
    let sets = rs_api.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(sets.len(), 1);
    let rs = &sets[0];
    let hash = rs
        .labels()
        .get("pod-template-hash")
        .cloned()
        .expect("pod-template-hash label");
    assert_eq!(rs.name_any(), format!("web-{hash}"));
    assert_eq!(
        rs.annotations()
            .get("deployment.kubernetes.io/revision")
            .map(String::as_str),
        Some("1")
    );
    let pods = pods_of(&env, "web").await;
    assert_eq!(pods.len(), 3);
    for pod in &pods {
        assert!(
            pod.name_any().starts_with(&format!("web-{hash}-")),
            "{}",
            pod.name_any()
        );
        let owner = pod
            .owner_references()
            .iter()
            .find(|r| r.controller == Some(true))
            .expect("controller ref");
        assert_eq!(
            (
                owner.kind.as_str(),
                owner.name.as_str(),
                owner.block_owner_deletion
            ),
            ("ReplicaSet", rs.name_any().as_str(), Some(true))
        );
    }
    let d_api: Api<Deployment> = Api::default_namespaced(env.client.clone());
    let d = d_api.get("web").await.unwrap();
    let conditions: BTreeMap<String, (String, String)> = d
        .status
        .unwrap()
        .conditions
        .unwrap()
        .into_iter()
        .map(|c| (c.type_, (c.status, c.reason.unwrap_or_default())))
        .collect();
    assert_eq!(
        conditions["Available"],
        ("True".to_string(), "MinimumReplicasAvailable".to_string())
    );
    assert_eq!(
        conditions["Progressing"],
        ("True".to_string(), "NewReplicaSetAvailable".to_string())
    );

    for target in [10, 1] {
        d_api
            .patch(
                "web",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": target}})),
            )
            .await
            .unwrap();
        wait_for(&format!("{target} ready"), TIMEOUT, || {
            deployment_status_is(&env, "web", target)
        })
        .await;
        let active: Vec<Pod> = pods_of(&env, "web")
            .await
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        assert_eq!(active.len(), usize::try_from(target).unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicaset_adopts_orphans_and_releases_pods_that_stop_matching() {
    let env = Env::start().await;
    let pods: Api<Pod> = Api::default_namespaced(env.client.clone());
    let orphan: Pod = serde_json::from_value(json!({"metadata": {"name": "orphan", "labels": {"app": "rs"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}})).unwrap();
    pods.create(&PostParams::default(), &orphan).await.unwrap();
    // Started after the orphan exists: its initial list holds the orphan before any worker
    // runs. (Started before, the ReplicaSet's watch event could overtake the pod's on the
    // other watch, and the controller would rightly create a pod of its own.)
    let _cm = env.start_cm("cm-a").await;
    let rs_api: Api<ReplicaSet> = Api::default_namespaced(env.client.clone());
    let rs: ReplicaSet = serde_json::from_value(json!({"metadata": {"name": "rs"}, "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "rs"}},
        "template": {"metadata": {"labels": {"app": "rs"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}}})).unwrap();
    rs_api.create(&PostParams::default(), &rs).await.unwrap();
    wait_for("rs ready with 2 pods", TIMEOUT, || async {
        let rs = rs_api.get("rs").await.unwrap();
        rs.status.as_ref().and_then(|s| s.ready_replicas) == Some(2)
            && pods_of(&env, "rs").await.len() == 2
    })
    .await;
    let adopted = pods.get("orphan").await.unwrap();
    assert_eq!(
        adopted.owner_references().first().map(|r| r.name.as_str()),
        Some("rs"),
        "the orphan was adopted instead of creating a second pod"
    );

    pods.patch(
        "orphan",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "other"}}})),
    )
    .await
    .unwrap();
    wait_for("orphan released and replaced", TIMEOUT, || async {
        let released = pods
            .get("orphan")
            .await
            .unwrap()
            .owner_references()
            .is_empty();
        released && pods_of(&env, "rs").await.len() == 2
    })
    .await;
}

/// Ready, non-terminating pods of `app` after every watch event, from the moment the watch
/// has listed.
fn track_ready_pods(env: &Env, app: &str) -> (Arc<Mutex<Vec<usize>>>, tokio::task::JoinHandle<()>) {
    let api: Api<Pod> = Api::default_namespaced(env.client.clone());
    let seen: Arc<Mutex<Vec<usize>>> = Arc::default();
    let record = seen.clone();
    let config = watcher::Config::default().labels(&format!("app={app}"));
    let task = tokio::spawn(async move {
        let mut writer: Writer<Pod> = Writer::default();
        let reader = writer.as_reader();
        let mut events = std::pin::pin!(watcher::watcher(api, config));
        while let Some(Ok(event)) = events.next().await {
            writer.apply_watcher_event(&event);
            if matches!(
                event,
                watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone
            ) {
                let count = reader
                    .state()
                    .iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none() && ready(p))
                    .count();
                record.lock().push(count);
            }
        }
    });
    (seen, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_update_keeps_availability_and_kubectl_rollout_works() {
    let env = Env::start().await;
    let _cm = env.start_cm("cm-a").await;
    let mut body = deployment("roll", 4, "nginx:1");
    body["spec"]["strategy"] =
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 1}});
    create_deployment(&env, body).await;
    wait_for("4/4 ready", TIMEOUT, || {
        deployment_status_is(&env, "roll", 4)
    })
    .await;
    env.kubectl_ok(&["rollout", "status", "deployment/roll", "--timeout=60s"])
        .await;

    let (seen, watch_task) = track_ready_pods(&env, "roll");
    wait_for("pod watch listed", TIMEOUT, || async {
        !seen.lock().is_empty()
    })
    .await;
    env.kubectl_ok(&["set", "image", "deployment/roll", "c=nginx:2"])
        .await;
    let out = env
        .kubectl_ok(&["rollout", "status", "deployment/roll", "--timeout=90s"])
        .await;
    assert!(out.contains("successfully rolled out"), "{out}");
    wait_for("2nd revision fully ready", TIMEOUT, || {
        deployment_status_is(&env, "roll", 4)
    })
    .await;
    watch_task.abort();
    let observed = seen.lock().clone();
    eprintln!("observed ready counts: {observed:?}");
    assert!(
        observed.len() > 4,
        "the watch saw the rollout: {observed:?}"
    );
    // replicas - maxUnavailable = 3 ready pods at every observed state.
    assert!(
        observed.iter().all(|n| *n >= 3),
        "ready pods dropped below 3: {observed:?}"
    );

    let images = |pods: Vec<Pod>| -> Vec<String> {
        pods.into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .map(|p| p.spec.unwrap().containers[0].image.clone().unwrap())
            .collect()
    };
    wait_for("old pods gone", TIMEOUT, || async {
        images(pods_of(&env, "roll").await) == vec!["nginx:2".to_string(); 4]
    })
    .await;
    let history = env
        .kubectl_ok(&["rollout", "history", "deployment/roll"])
        .await;
    assert!(history.contains('1') && history.contains('2'), "{history}");

    env.kubectl_ok(&["rollout", "undo", "deployment/roll"])
        .await;
    env.kubectl_ok(&["rollout", "status", "deployment/roll", "--timeout=90s"])
        .await;
    let d_api: Api<Deployment> = Api::default_namespaced(env.client.clone());
    let d = d_api.get("roll").await.unwrap();
    assert_eq!(
        d.spec.unwrap().template.spec.unwrap().containers[0]
            .image
            .as_deref(),
        Some("nginx:1")
    );
    assert_eq!(
        d.metadata
            .annotations
            .unwrap()
            .get("deployment.kubernetes.io/revision")
            .map(String::as_str),
        Some("3")
    );
    wait_for("undo finished", TIMEOUT, || async {
        images(pods_of(&env, "roll").await) == vec!["nginx:1".to_string(); 4]
    })
    .await;
    // Undo reuses the first ReplicaSet instead of creating a third.
    let rs_api: Api<ReplicaSet> = Api::default_namespaced(env.client.clone());
    assert_eq!(
        rs_api
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        2
    );

    env.kubectl_ok(&["rollout", "restart", "deployment/roll"])
        .await;
    env.kubectl_ok(&["rollout", "status", "deployment/roll", "--timeout=90s"])
        .await;
    let sets = rs_api.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(sets.len(), 3, "restart makes a new ReplicaSet");
    let active: Vec<_> = sets
        .iter()
        .filter(|rs| rs.spec.as_ref().and_then(|s| s.replicas) != Some(0))
        .collect();
    assert_eq!(active.len(), 1);
    assert!(active[0]
        .spec
        .as_ref()
        .unwrap()
        .template
        .as_ref()
        .unwrap()
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .as_ref()
        .unwrap()
        .contains_key("kubectl.kubernetes.io/restartedAt"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn recreate_never_runs_old_and_new_pods_together_and_history_is_limited() {
    let env = Env::start().await;
    let _cm = env.start_cm("cm-a").await;
    let mut body = deployment("rec", 2, "app:1");
    body["spec"]["strategy"] = json!({"type": "Recreate"});
    body["spec"]["revisionHistoryLimit"] = json!(1);
    create_deployment(&env, body).await;
    wait_for("2/2 ready", TIMEOUT, || {
        deployment_status_is(&env, "rec", 2)
    })
    .await;

    let api: Api<Pod> = Api::default_namespaced(env.client.clone());
    let mixed = Arc::new(Mutex::new(false));
    let flag = mixed.clone();
    let watch_task = tokio::spawn(async move {
        let mut writer: Writer<Pod> = Writer::default();
        let reader = writer.as_reader();
        let mut events = std::pin::pin!(watcher::watcher(
            api,
            watcher::Config::default().labels("app=rec")
        ));
        while let Some(Ok(event)) = events.next().await {
            writer.apply_watcher_event(&event);
            let images: std::collections::HashSet<String> = reader
                .state()
                .iter()
                .filter_map(|p| p.spec.as_ref()?.containers[0].image.clone())
                .collect();
            if images.len() > 1 {
                *flag.lock() = true;
            }
        }
    });
    let d_api: Api<Deployment> = Api::default_namespaced(env.client.clone());
    for image in ["app:2", "app:3"] {
        let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": image}]}}}});
        d_api
            .patch("rec", &PatchParams::default(), &Patch::Strategic(patch))
            .await
            .unwrap();
        wait_for("rollout", TIMEOUT, || async {
            let pods = pods_of(&env, "rec").await;
            deployment_status_is(&env, "rec", 2).await
                && pods.len() == 2
                && pods
                    .iter()
                    .all(|p| p.spec.as_ref().unwrap().containers[0].image.as_deref() == Some(image))
        })
        .await;
    }
    watch_task.abort();
    assert!(!*mixed.lock(), "old and new pods existed at the same time");
    let rs_api: Api<ReplicaSet> = Api::default_namespaced(env.client.clone());
    wait_for("history trimmed to 1 old ReplicaSet", TIMEOUT, || async {
        rs_api
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len()
            == 2
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paused_deployment_does_not_roll_out_until_resumed() {
    let env = Env::start().await;
    let _cm = env.start_cm("cm-a").await;
    create_deployment(&env, deployment("p", 2, "img:1")).await;
    wait_for("2/2 ready", TIMEOUT, || deployment_status_is(&env, "p", 2)).await;
    env.kubectl_ok(&["rollout", "pause", "deployment/p"]).await;
    env.kubectl_ok(&["set", "image", "deployment/p", "c=img:2"])
        .await;
    let d_api: Api<Deployment> = Api::default_namespaced(env.client.clone());
    wait_for("paused condition", TIMEOUT, || async {
        let d = d_api.get("p").await.unwrap();
        let status = d.status.unwrap_or_default();
        status.observed_generation == d.metadata.generation
            && status.conditions.unwrap_or_default().iter().any(|c| {
                c.type_ == "Progressing" && c.reason.as_deref() == Some("DeploymentPaused")
            })
    })
    .await;
    let rs_api: Api<ReplicaSet> = Api::default_namespaced(env.client.clone());
    assert_eq!(
        rs_api
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        1,
        "no new ReplicaSet while paused"
    );
    // Scaling still works while paused.
    d_api
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await
        .unwrap();
    wait_for("3 available while paused", TIMEOUT, || async {
        d_api
            .get("p")
            .await
            .unwrap()
            .status
            .and_then(|s| s.available_replicas)
            == Some(3)
    })
    .await;
    env.kubectl_ok(&["rollout", "resume", "deployment/p"]).await;
    env.kubectl_ok(&["rollout", "status", "deployment/p", "--timeout=60s"])
        .await;
    wait_for("new template everywhere", TIMEOUT, || async {
        let pods = pods_of(&env, "p").await;
        pods.len() == 3
            && pods
                .iter()
                .all(|p| p.spec.as_ref().unwrap().containers[0].image.as_deref() == Some("img:2"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stuck_rollout_exceeds_its_progress_deadline() {
    let env = Env::start().await;
    let _cm = env.start_cm("cm-a").await;
    let mut body = deployment("stuck", 2, "img:1");
    body["spec"]["progressDeadlineSeconds"] = json!(2);
    body["spec"]["template"]["metadata"]["labels"][common::NEVER_READY] = json!("true");
    create_deployment(&env, body).await;
    let out = env
        .kubectl(&["rollout", "status", "deployment/stuck", "--timeout=60s"])
        .await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("exceeded its progress deadline"),
        "{stderr}"
    );
    let d_api: Api<Deployment> = Api::default_namespaced(env.client.clone());
    let status = d_api.get("stuck").await.unwrap().status.unwrap();
    let conditions = status.conditions.unwrap();
    let progressing = conditions
        .iter()
        .find(|c| c.type_ == "Progressing")
        .unwrap();
    assert_eq!(
        (progressing.status.as_str(), progressing.reason.as_deref()),
        ("False", Some("ProgressDeadlineExceeded"))
    );
    let available = conditions.iter().find(|c| c.type_ == "Available").unwrap();
    assert_eq!(
        (available.status.as_str(), available.reason.as_deref()),
        ("False", Some("MinimumReplicasUnavailable"))
    );
    assert_eq!(status.unavailable_replicas, Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn min_ready_seconds_delays_availability() {
    let env = Env::start().await;
    let _cm = env.start_cm("cm-a").await;
    let mut body = deployment("slow", 2, "img:1");
    body["spec"]["minReadySeconds"] = json!(2);
    create_deployment(&env, body).await;
    let d_api: Api<Deployment> = Api::default_namespaced(env.client.clone());
    wait_for("ready but not yet available", TIMEOUT, || async {
        let s = d_api.get("slow").await.unwrap().status.unwrap_or_default();
        s.ready_replicas == Some(2) && s.available_replicas.unwrap_or(0) == 0
    })
    .await;
    wait_for("available after minReadySeconds", TIMEOUT, || {
        deployment_status_is(&env, "slow", 2)
    })
    .await;
}
