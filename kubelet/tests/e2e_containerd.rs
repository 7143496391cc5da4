//! The kubelet on a private containerd with CNI networking and the busybox test image (as
//! root): pods run with real processes, answer on their pod IPs, show ConfigMap volumes
//! and Secret env, crash-loop with clear statuses, and are stopped and removed on delete.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret};
use kube::api::{Api, DeleteParams, PostParams};
use kube::Client;
use rkube_cri::cni::{CniConfig, CniNetwork};
use rkube_cri::containerd::{ContainerdConfig, ContainerdImageService, ContainerdRuntime};
use rkube_cri::{ContainerRuntime, PodNetwork};
use rkube_testkit::containerd::ContainerdProcess;
use rkubelet::{KubeletConfig, NodeRuntime};
use serde_json::{json, Value};

const NODE: &str = "e2e-node";
const IMAGE: &str = "busybox:rkube-e2e";

async fn wait_for(
    pods: &Api<Pod>,
    name: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let status = pods
            .get_opt(name)
            .await
            .unwrap()
            .map(|p| serde_json::to_value(p.status).unwrap())
            .unwrap_or(Value::Null);
        if check(&status) {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "pod {name} never got {what}: {status:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn ready(status: &Value) -> bool {
    status["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pods_run_on_containerd_with_network_volumes_logs_crash_loops_and_deletion() {
    assert!(
        rkube_testkit::containerd::available(),
        "these tests need root and containerd + runc + containernetworking-plugins"
    );
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let config = rkube_apiserver::Config::new(rkube_apiserver::StorageConfig::Embedded {
        data_dir: dir.path().join("store"),
    });
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(rkube_apiserver::run(config, listener, async move {
        let _ = server_stopped.await;
    }));
    let client = Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    while namespaces.get("default").await.is_err() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let containerd = ContainerdProcess::start().await.unwrap();
    let mut cd_config =
        ContainerdConfig::new(containerd.socket_path(), containerd.dir().join("rkube"));
    cd_config.runc_root = containerd.runc_root();
    let runtime = Arc::new(ContainerdRuntime::connect(&cd_config).await.unwrap());
    let images = Arc::new(ContainerdImageService::connect(&cd_config).await.unwrap());
    let image_dir = dir.path().join("images");
    std::fs::create_dir_all(&image_dir).unwrap();
    rkube_testkit::images::busybox_oci_tarball(&image_dir, IMAGE).unwrap();
    let pid = std::process::id();
    let cidr = format!("10.{}.{}.0/24", 200 + pid % 50, (pid / 50) % 250);
    let mut cni = CniConfig::new(cidr.clone(), dir.path().join("cni"));
    cni.bridge_name = format!("rke{:06x}", pid & 0xff_ffff);
    cni.network_name = format!("rke-{pid:08x}");
    cni.forward_chain = format!("RKE-{pid:08x}");
    cni.netns_dir = dir.path().join("netns");
    let network = Arc::new(CniNetwork::new(cni.clone()).unwrap());
    let node_runtime = NodeRuntime {
        runtime: runtime.clone(),
        images,
        network: network.clone(),
        version: "containerd://1.6".into(),
    };
    let mut config = KubeletConfig::new(
        client.clone(),
        NODE,
        dir.path().join("kubelet"),
        node_runtime,
    );
    config.pod_cidr = Some(cidr);
    config.image_dir = Some(image_dir);
    config.backoff_initial = Duration::from_secs(1);
    config.backoff_max = Duration::from_secs(4);
    let kubelet_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let kubelet_port = kubelet_listener.local_addr().unwrap().port();
    let (stop_kubelet, kubelet_stopped) = tokio::sync::oneshot::channel::<()>();
    let kubelet = tokio::spawn(rkubelet::run(config, kubelet_listener, async move {
        let _ = kubelet_stopped.await;
    }));

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
    let create = |pod: Value| {
        let pods = pods.clone();
        async move {
            let mut pod = pod;
            pod["spec"]["nodeName"] = json!(NODE);
            pods.create(
                &PostParams::default(),
                &serde_json::from_value(pod).unwrap(),
            )
            .await
            .unwrap()
        }
    };
    create(json!({
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
    create(json!({
        "metadata": {"name": "crasher"},
        "spec": {"containers": [{"name": "app", "image": IMAGE, "imagePullPolicy": "IfNotPresent", "command": ["sh", "-c", "exit 3"]}]}
    }))
    .await;
    create(json!({
        "metadata": {"name": "bad-command"},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "app", "image": IMAGE, "imagePullPolicy": "IfNotPresent", "command": ["/no/such/binary"]}]}
    }))
    .await;

    let status = wait_for(&pods, "web", "Running and Ready", |s| {
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
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let logs = reqwest::get(format!(
            "http://127.0.0.1:{kubelet_port}/containerLogs/default/web/env"
        ))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
        if logs.contains("password=hunter2") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "env container logs: {logs:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let status = wait_for(&pods, "crasher", "CrashLoopBackOff", |s| {
        s["containerStatuses"][0]["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    })
    .await;
    assert_eq!(
        status["containerStatuses"][0]["lastState"]["terminated"]["exitCode"],
        3
    );

    let status = wait_for(&pods, "bad-command", "a clear failure", |s| {
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
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    while pods.get_opt("web").await.unwrap().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "web was never removed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let left: Vec<_> = runtime
        .list()
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.labels.get(rkube_cri::labels::POD_UID) == Some(&web_uid))
        .collect();
    assert!(left.is_empty(), "containers left: {left:?}");
    assert_eq!(network.status(&web_uid).await.unwrap(), None);

    // Cleanup: the kubelet leaves containers on shutdown, so remove what is left here.
    let _ = stop_kubelet.send(());
    kubelet.await.unwrap().unwrap();
    let mut uids = std::collections::HashSet::new();
    for c in runtime.list().await.unwrap() {
        let _ = runtime.signal(&c.id, 9).await;
        let _ = runtime.remove(&c.id).await;
        uids.extend(c.labels.get(rkube_cri::labels::POD_UID).cloned());
    }
    for uid in uids {
        let _ = network.teardown(&uid).await;
    }
    let _ = std::process::Command::new("ip")
        .args(["link", "del", &cni.bridge_name])
        .output();
    let iptables = |args: &[&str]| {
        std::process::Command::new("iptables")
            .args(["-w", "-t", "filter"])
            .args(args)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    while iptables(&["-D", "FORWARD", "-j", &cni.forward_chain]) {}
    iptables(&["-F", &cni.forward_chain]);
    iptables(&["-X", &cni.forward_chain]);
    drop(containerd);
    let _ = stop_server.send(());
}
