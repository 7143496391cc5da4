//! The kubelet on a private containerd with CNI networking and the busybox test image (as
//! root): pods run with real processes, answer on their pod IPs, show ConfigMap volumes
//! and Secret env, crash-loop with clear statuses, and are stopped and removed on delete.

mod common;

use std::time::Duration;

use common::{spawn_kubelet, wait_for_status, RealNode, RealNodeParams};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{Api, DeleteParams, PostParams};
use rkube_cri::{ContainerRuntime, PodNetwork};
use serde_json::{json, Value};

const NODE: &str = "e2e-node";
const IMAGE: &str = "busybox:rkube-e2e";

fn ready(status: &Value) -> bool {
    status["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pods_run_on_containerd_with_network_volumes_logs_crash_loops_and_deletion() {
    let node = RealNode::start(RealNodeParams {
        node: NODE,
        image: IMAGE,
        name_prefix: "rke",
        cidr_octet_base: 200,
    })
    .await;
    let client = node.client.clone();
    let runtime = node.runtime.clone();
    let network = node.network.clone();
    let mut config = node.kubelet_config();
    config.backoff_initial = Duration::from_secs(1);
    config.backoff_max = Duration::from_secs(4);
    let kubelet = spawn_kubelet(config).await;
    let kubelet_port = kubelet.port;

    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    config_maps
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "site"}, "data": {"index.html": "hello from a configmap\n"}})).unwrap())
        .await
        .unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
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
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    node.create_pod(json!({
        "metadata": {"name": "web"},
        "spec": {
            "terminationGracePeriodSeconds": 5,
            "containers": [
                {"name": "httpd", "image": IMAGE, "imagePullPolicy": "IfNotPresent",
                 "command": ["httpd", "-f", "-p", "8080", "-h", "/www"],
                 "volumeMounts": [{"name": "site", "mountPath": "/www"}],
                 "readinessProbe": {"httpGet": {"path": "/index.html", "port": 8080}, "periodSeconds": 1}},
                {"name": "env", "image": IMAGE, "imagePullPolicy": "IfNotPresent",
                 "command": ["sh", "-c", "echo password=$PASSWORD; exec sleep 3600"],
                 "env": [{"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}}]}
            ],
            "volumes": [{"name": "site", "configMap": {"name": "site"}}]
        }
    }))
    .await;
    node.create_pod(json!({
        "metadata": {"name": "crasher"},
        "spec": {"containers": [{"name": "app", "image": IMAGE, "imagePullPolicy": "IfNotPresent", "command": ["sh", "-c", "exit 3"]}]}
    }))
    .await;
    node.create_pod(json!({
        "metadata": {"name": "bad-command"},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "app", "image": IMAGE, "imagePullPolicy": "IfNotPresent", "command": ["/no/such/binary"]}]}
    }))
    .await;

    let status = wait_for_status(&pods, "web", "Running and Ready", |s| {
        s["phase"] == "Running" && ready(s)
    })
    .await;
    let pod_ip = status["podIP"].as_str().unwrap().to_string();
    let page = reqwest::get(format!("http://{pod_ip}:8080/index.html"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(page, "hello from a configmap\n");
    let env_logs = || async {
        reqwest::get(format!(
            "http://127.0.0.1:{kubelet_port}/containerLogs/default/web/env"
        ))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
    };
    let logged = rkube_testkit::poll_until(Duration::from_secs(30), || async {
        env_logs().await.contains("password=hunter2")
    })
    .await;
    assert!(logged.is_ok(), "env container logs: {:?}", env_logs().await);

    let status = wait_for_status(&pods, "crasher", "CrashLoopBackOff", |s| {
        s["containerStatuses"][0]["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    })
    .await;
    assert_eq!(
        status["containerStatuses"][0]["lastState"]["terminated"]["exitCode"],
        3
    );

    let status = wait_for_status(&pods, "bad-command", "a clear failure", |s| {
        let c = &s["containerStatuses"][0]["state"];
        c["waiting"]["reason"] == "RunContainerError"
            || c["waiting"]["reason"] == "CreateContainerError"
            || c["terminated"].is_object()
    })
    .await;
    let text = status["containerStatuses"][0]["state"].to_string();
    assert!(
        text.contains("no/such/binary") || text.contains("exitCode"),
        "{text}"
    );

    // Delete with grace: httpd and sleep stop on SIGTERM (sleep as pid 1 ignores it, so SIGKILL after 5 s).
    let web_uid = pods.get("web").await.unwrap().metadata.uid.unwrap();
    pods.delete("web", &DeleteParams::default()).await.unwrap();
    rkube_testkit::wait_for("web to be removed", Duration::from_secs(40), || async {
        pods.get_opt("web").await.unwrap().is_none()
    })
    .await;
    let left: Vec<_> = runtime
        .list()
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.labels.get(rkube_cri::labels::POD_UID) == Some(&web_uid))
        .collect();
    assert!(left.is_empty(), "containers left: {left:?}");
    assert_eq!(network.status(&web_uid).await.unwrap(), None);

    kubelet.stop().await;
    node.clean_up().await;
}
