//! The kubelet against an in-process API server with the fake runtime, images and network
//! from rkube-cri: node registration, pods going Running/Ready, crash loops with growing
//! backoff, configuration errors, pull failures, and the deletion flow.

mod common;

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use common::{spawn_kubelet, wait_for_status, FakeNode, RunningKubelet, WAIT};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use rkube_cri::fake::ExecOutcome;
use rkube_cri::{labels, ContainerState, PodNetwork};
use rkube_testkit::{poll_until, wait_for, wait_for_value};
use rkubelet::KubeletConfig;
use serde_json::{json, Value};

const NODE: &str = "node-under-test";

/// A kubelet on a fake node, with short intervals.
struct Harness {
    node: FakeNode,
    kubelet: RunningKubelet,
}

impl Harness {
    async fn start() -> Harness {
        let node = FakeNode::start(NODE, "10.244.7.0/24").await;
        let kubelet = spawn_kubelet(Harness::config(&node)).await;
        Harness { node, kubelet }
    }

    fn config(node: &FakeNode) -> KubeletConfig {
        let mut config = node.kubelet_config();
        config.lease_renew_interval = Duration::from_millis(500);
        config.backoff_initial = Duration::from_secs(1);
        config.backoff_max = Duration::from_secs(8);
        config.resync_interval = Duration::from_secs(2);
        config
    }

    async fn stop(self) {
        self.kubelet.stop().await;
        self.node.stop().await;
    }

    async fn wait_for(&self, name: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        wait_for_status(&self.node.pods(), name, what, check).await
    }
}

fn condition<'a>(status: &'a Value, kind: &str) -> Option<&'a Value> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

/// A pod condition type only the test writes.
const MARKER: &str = "TestMarker";

async fn add_marker_condition(pods: &Api<Pod>, name: &str) {
    let pod = pods.get_status(name).await.unwrap();
    let status = serde_json::to_value(pod.status).unwrap();
    let mut conditions = status["conditions"].as_array().cloned().unwrap_or_default();
    conditions.push(json!({"type": MARKER, "status": "True"}));
    pods.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"conditions": conditions}})),
    )
    .await
    .unwrap();
    let marked = serde_json::to_value(pods.get_status(name).await.unwrap().status).unwrap();
    assert!(condition(&marked, MARKER).is_some(), "{marked:#}");
}

fn is_true(status: &Value, kind: &str) -> bool {
    condition(status, kind).is_some_and(|c| c["status"] == "True")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_registers_with_lease_and_pod_runs_ready_with_env_and_volumes() {
    let h = Harness::start().await;
    let nodes: Api<Node> = Api::all(h.node.client.clone());
    let node = wait_for_value("the node to be Ready", WAIT, || async {
        let node = serde_json::to_value(nodes.get_opt(NODE).await.unwrap()?).unwrap();
        condition(&node["status"], "Ready")
            .is_some_and(|c| c["status"] == "True")
            .then_some(node)
    })
    .await;
    assert_eq!(
        node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"],
        h.kubelet.port
    );
    assert_eq!(
        condition(&node["status"], "Ready").unwrap()["reason"],
        "KubeletReady"
    );
    assert_eq!(node["metadata"]["labels"]["kubernetes.io/hostname"], NODE);
    assert_eq!(node["spec"]["podCIDR"], "10.244.7.0/24");
    assert_eq!(node["status"]["allocatable"]["pods"], "110");
    assert_eq!(
        node["status"]["nodeInfo"]["kubeletVersion"],
        "v1.32.0-rkube"
    );
    assert!(node["status"]["capacity"]["memory"]
        .as_str()
        .unwrap()
        .ends_with("Ki"));
    let leases: Api<Lease> = Api::namespaced(h.node.client.clone(), "kube-node-lease");
    let lease = leases.get(NODE).await.unwrap();
    assert_eq!(lease.spec.unwrap().holder_identity.as_deref(), Some(NODE));

    let config_maps: Api<ConfigMap> = Api::namespaced(h.node.client.clone(), "default");
    config_maps
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "site"}, "data": {"index.html": "hello"}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let secrets: Api<Secret> = Api::namespaced(h.node.client.clone(), "default");
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "creds"}, "stringData": {"password": "hunter2"}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    // Readiness probes run through exec; the first ones fail, later ones pass.
    let attempts = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counter = attempts.clone();
    h.node.runtime.set_exec_handler(move |_, config| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        ExecOutcome {
            exit_code: if config.command == ["ready"] && n >= 2 {
                0
            } else {
                1
            },
            ..ExecOutcome::default()
        }
    });
    let pod = h.node
        .create_pod(json!({
            "metadata": {"name": "web"},
            "spec": {
                "initContainers": [{"name": "setup", "image": "busybox:1.36", "command": ["true"]}],
                "containers": [{
                    "name": "httpd", "image": "busybox:1.36",
                    "command": ["httpd", "-f", "-p", "$(PORT)"],
                    "env": [
                        {"name": "PORT", "value": "8080"},
                        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                        {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}}
                    ],
                    "volumeMounts": [{"name": "site", "mountPath": "/www"}],
                    "readinessProbe": {"exec": {"command": ["ready"]}, "periodSeconds": 1}
                }],
                "volumes": [{"name": "site", "configMap": {"name": "site"}}]
            }
        }))
        .await;
    let uid = pod.metadata.uid.clone().unwrap();
    // The init container must finish before the main container starts.
    let init_id = wait_for_value("the init container", WAIT, || async {
        let containers = h.node.containers_of(&uid).await;
        let init = containers
            .iter()
            .find(|c| c.labels[labels::CONTAINER_NAME] == "setup")?;
        assert_eq!(
            containers.len(),
            1,
            "main container started before init finished"
        );
        Some(init.id.clone())
    })
    .await;
    let waiting = h
        .wait_for("web", "Init:0/1", |s| {
            s["initContainerStatuses"][0]["state"]["running"].is_object()
        })
        .await;
    assert_eq!(waiting["phase"], "Pending");
    assert_eq!(
        waiting["containerStatuses"][0]["state"]["waiting"]["reason"],
        "PodInitializing"
    );
    h.node.runtime.exit(&init_id, 0).unwrap();

    let status = h
        .wait_for("web", "Running and Ready", |s| {
            s["phase"] == "Running" && is_true(s, "Ready")
        })
        .await;
    assert!(
        attempts.load(std::sync::atomic::Ordering::SeqCst) >= 3,
        "Ready only after the probe passed"
    );
    let pod_ip = status["podIP"].as_str().unwrap().to_string();
    assert!(pod_ip.starts_with("10.244.7."), "{pod_ip}");
    assert_eq!(status["hostIP"], "127.0.0.1");
    assert!(
        is_true(&status, "Initialized")
            && is_true(&status, "ContainersReady")
            && is_true(&status, "PodScheduled")
    );
    assert_eq!(
        status["initContainerStatuses"][0]["state"]["terminated"]["reason"],
        "Completed"
    );
    let main = &status["containerStatuses"][0];
    assert_eq!(main["ready"], true);
    assert_eq!(main["started"], true);
    assert_eq!(main["restartCount"], 0);
    let id = main["containerID"]
        .as_str()
        .unwrap()
        .strip_prefix("containerd://")
        .unwrap()
        .to_string();
    let spec = serde_json::to_value(&h.node.runtime.config(&id).unwrap().spec).unwrap();
    assert_eq!(
        spec["process"]["args"],
        json!(["httpd", "-f", "-p", "8080"])
    );
    let env: Vec<&str> = spec["process"]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(env.contains(&"POD_NAME=web"));
    assert!(env.contains(&"PASSWORD=hunter2"));
    assert!(env.contains(&format!("POD_IP={pod_ip}").as_str()));
    let www = spec["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["destination"] == "/www")
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(format!("{}/index.html", www["source"].as_str().unwrap())).unwrap(),
        "hello"
    );
    let resolv = spec["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["destination"] == "/etc/resolv.conf")
        .unwrap();
    let resolv = std::fs::read_to_string(resolv["source"].as_str().unwrap()).unwrap();
    assert!(
        resolv.contains("search default.svc.cluster.local svc.cluster.local cluster.local"),
        "{resolv}"
    );
    assert_eq!(
        spec["linux"]["cgroupsPath"],
        format!("/rkube/pod{uid}/{id}")
    );

    // A changed ConfigMap shows up in the volume.
    let mut site = config_maps.get("site").await.unwrap();
    site.data = Some([("index.html".to_string(), "updated".to_string())].into());
    config_maps
        .replace("site", &PostParams::default(), &site)
        .await
        .unwrap();
    let index = format!("{}/index.html", www["source"].as_str().unwrap());
    wait_for("the ConfigMap volume to refresh", WAIT, || async {
        std::fs::read_to_string(&index).unwrap() == "updated"
    })
    .await;

    // The kubelet's HTTP server answers for this pod.
    let health = reqwest::get(format!("http://127.0.0.1:{}/healthz", h.kubelet.port))
        .await
        .unwrap();
    assert!(health.status().is_success());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_loop_backs_off_longer_each_time_and_deletion_stops_everything() {
    let h = Harness::start().await;
    let pod = h.node
        .create_pod(json!({
            "metadata": {"name": "crasher"},
            "spec": {"terminationGracePeriodSeconds": 5, "containers": [{"name": "app", "image": "busybox:1.36", "command": ["false"]}]}
        }))
        .await;
    let uid = pod.metadata.uid.clone().unwrap();
    // Each look kills the running container and notes a back-off message it has not seen.
    let backoffs: RefCell<Vec<String>> = RefCell::new(Vec::new());
    let saw_three = poll_until(WAIT, || async {
        for c in h.node.containers_of(&uid).await {
            if matches!(c.state, ContainerState::Running { .. }) {
                h.node.runtime.exit(&c.id, 1).unwrap();
            }
        }
        let status = h
            .node
            .pods()
            .get("crasher")
            .await
            .unwrap()
            .status
            .map(|s| serde_json::to_value(s).unwrap())
            .unwrap_or_default();
        let app = &status["containerStatuses"][0];
        if app["state"]["waiting"]["reason"] == "CrashLoopBackOff" {
            let message = app["state"]["waiting"]["message"]
                .as_str()
                .unwrap()
                .to_string();
            assert!(
                message.contains("restarting failed container=app pod=crasher_default("),
                "{message}"
            );
            assert_eq!(app["lastState"]["terminated"]["exitCode"], 1);
            assert_eq!(app["lastState"]["terminated"]["reason"], "Error");
            assert_eq!(status["phase"], "Running");
            let mut backoffs = backoffs.borrow_mut();
            if backoffs.last() != Some(&message) {
                backoffs.push(message);
            }
        }
        backoffs.borrow().len() >= 3
    })
    .await;
    let backoffs = backoffs.into_inner();
    assert!(saw_three.is_ok(), "saw only {backoffs:?}");
    assert!(backoffs[0].starts_with("back-off 1s"), "{backoffs:?}");
    assert!(backoffs[1].starts_with("back-off 2s"), "{backoffs:?}");
    assert!(backoffs[2].starts_with("back-off 4s"), "{backoffs:?}");
    let restarts = h
        .node
        .pods()
        .get("crasher")
        .await
        .unwrap()
        .status
        .unwrap()
        .container_statuses
        .unwrap()[0]
        .restart_count;
    assert!(restarts >= 3, "restartCount {restarts}");
    // At most the current and the previous instance are kept.
    assert!(h.node.containers_of(&uid).await.len() <= 2);

    // Let it run, then delete it: SIGTERM stops it, and the kubelet removes the pod.
    wait_for("the container to restart", WAIT, || async {
        h.node
            .containers_of(&uid)
            .await
            .iter()
            .any(|c| matches!(c.state, ContainerState::Running { .. }))
    })
    .await;
    assert_eq!(h.node.network.allocated(), 1);
    h.node
        .pods()
        .delete("crasher", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("the pod to be removed", WAIT, || async {
        h.node.pods().get_opt("crasher").await.unwrap().is_none()
    })
    .await;
    assert!(
        h.node.containers_of(&uid).await.is_empty(),
        "containers left behind"
    );
    assert_eq!(h.node.network.status(&uid).await.unwrap(), None);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_specs_give_clear_waiting_reasons() {
    let h = Harness::start().await;
    h.node.images.set_registry(&["busybox:1.36"]).unwrap();
    h.node.create_pod(json!({
        "metadata": {"name": "no-config"},
        "spec": {"containers": [{"name": "app", "image": "busybox:1.36", "command": ["sh"],
            "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "missing", "key": "k"}}}]}]}
    }))
    .await;
    h.node.create_pod(json!({
        "metadata": {"name": "no-image"},
        "spec": {"containers": [{"name": "app", "image": "example.invalid/nothing:1", "imagePullPolicy": "Always"}]}
    }))
    .await;
    h.node.create_pod(json!({
        "metadata": {"name": "never"},
        "spec": {"containers": [{"name": "app", "image": "absent:2", "imagePullPolicy": "Never"}]}
    }))
    .await;
    let waiting =
        |s: &Value, reason: &str| s["containerStatuses"][0]["state"]["waiting"]["reason"] == reason;
    let status = h
        .wait_for("no-config", "CreateContainerConfigError", |s| {
            waiting(s, "CreateContainerConfigError")
        })
        .await;
    assert_eq!(
        status["containerStatuses"][0]["state"]["waiting"]["message"],
        "configmap \"missing\" not found"
    );
    assert_eq!(status["phase"], "Pending");
    let status = h
        .wait_for("no-image", "ImagePullBackOff", |s| {
            waiting(s, "ImagePullBackOff")
        })
        .await;
    assert_eq!(
        status["containerStatuses"][0]["state"]["waiting"]["message"],
        "Back-off pulling image \"example.invalid/nothing:1\""
    );
    // The recorder writes Events in the background, after the status may already show.
    let events: Api<k8s_openapi::api::core::v1::Event> =
        Api::namespaced(h.node.client.clone(), "default");
    let failed_pull_events = || async {
        events
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| {
                e.involved_object.name.as_deref() == Some("no-image")
                    && e.reason.as_deref() == Some("Failed")
            })
            .filter_map(|e| e.message)
            .collect::<Vec<String>>()
    };
    let both_recorded = |failed: &[String]| {
        failed
            .iter()
            .any(|m| m.starts_with("Failed to pull image \"example.invalid/nothing:1\""))
            && failed.iter().any(|m| m == "Error: ErrImagePull")
    };
    let recorded = poll_until(WAIT, || async {
        both_recorded(&failed_pull_events().await)
    })
    .await;
    assert!(
        recorded.is_ok(),
        "the pull failure's Events: {:?}",
        failed_pull_events().await
    );
    let status = h
        .wait_for("never", "ErrImageNeverPull", |s| {
            waiting(s, "ErrImageNeverPull")
        })
        .await;
    assert_eq!(
        status["containerStatuses"][0]["state"]["waiting"]["message"],
        "Container image \"absent:2\" is not present with pull policy of Never"
    );

    // Creating the missing ConfigMap lets the first pod start.
    let config_maps: Api<ConfigMap> = Api::namespaced(h.node.client.clone(), "default");
    config_maps
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "missing"}, "data": {"k": "v"}}))
                .unwrap(),
        )
        .await
        .unwrap();
    h.wait_for("no-config", "Running", |s| s["phase"] == "Running")
        .await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_policy_never_and_kubelet_restart_keeps_containers() {
    let h = Harness::start().await;
    let job = h.node
        .create_pod(json!({
            "metadata": {"name": "job"},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "work", "image": "busybox:1.36", "command": ["false"]}]}
        }))
        .await;
    let uid = job.metadata.uid.clone().unwrap();
    let running = wait_for_value("the job's container to run", WAIT, || async {
        h.node
            .containers_of(&uid)
            .await
            .into_iter()
            .find(|c| matches!(c.state, ContainerState::Running { .. }))
    })
    .await;
    h.node.runtime.exit(&running.id, 3).unwrap();
    let status = h
        .wait_for("job", "Failed", |s| s["phase"] == "Failed")
        .await;
    assert_eq!(
        status["containerStatuses"][0]["state"]["terminated"]["exitCode"],
        3
    );
    assert_eq!(
        condition(&status, "Ready").unwrap()["reason"],
        "PodCompleted"
    );
    // The sync that saw the exit wrote this status after acting, from what the runtime ran
    // then: had it restarted the container, the pod would be Running. (That a later sync
    // does not restart it either is checked below, across a kubelet restart.)
    assert_eq!(
        h.node.containers_of(&uid).await.len(),
        1,
        "restartPolicy Never must not restart"
    );

    h.node.create_pod(json!({"metadata": {"name": "long"}, "spec": {"containers": [{"name": "app", "image": "busybox:1.36", "command": ["sleep"]}]}})).await;
    let before = h
        .wait_for("long", "Running", |s| {
            s["phase"] == "Running" && is_true(s, "Ready")
        })
        .await;
    let id_before = before["containerStatuses"][0]["containerID"].clone();

    // A new kubelet on the same runtime adopts the running container. Each pod gets a
    // condition no kubelet writes: the new kubelet's first status write for the pod, made
    // after its first sync of it acted, drops it.
    let Harness { node, kubelet } = h;
    kubelet.stop().await;
    for name in ["job", "long"] {
        add_marker_condition(&node.pods(), name).await;
    }
    let kubelet = spawn_kubelet(node.kubelet_config()).await;
    let h = Harness { node, kubelet };
    // The new kubelet reports the node with its new port, then the same container.
    let nodes: Api<Node> = Api::all(h.node.client.clone());
    wait_for("the new kubelet to report the node", WAIT, || async {
        let node = serde_json::to_value(nodes.get(NODE).await.unwrap()).unwrap();
        node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"] == h.kubelet.port
    })
    .await;
    let finished = h
        .wait_for("job", "a status from the new kubelet", |s| {
            condition(s, MARKER).is_none()
        })
        .await;
    assert_eq!(finished["phase"], "Failed");
    let after = h
        .wait_for("long", "a status from the new kubelet", |s| {
            condition(s, MARKER).is_none()
        })
        .await;
    assert_eq!(after["phase"], "Running");
    assert_eq!(after["containerStatuses"][0]["containerID"], id_before);
    assert_eq!(after["containerStatuses"][0]["restartCount"], 0);
    assert_eq!(after["podIP"], before["podIP"]);
    let running = h.node.containers_of(&uid).await;
    assert_eq!(
        running.len(),
        1,
        "the finished job's container is kept, not restarted"
    );
    h.stop().await;
}
