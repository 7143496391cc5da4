//! The kubelet on a private containerd with CNI (as root): a subPath is mounted from
//! beneath its volume (and one that a symlink leads out of is refused), and what a pod
//! deleted while the kubelet was down leaves behind (containers, network, cgroups, pod
//! directory) is removed when the kubelet starts again.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use kube::Client;
use rkube_cri::cni::{CniConfig, CniNetwork};
use rkube_cri::containerd::{ContainerdConfig, ContainerdImageService, ContainerdRuntime};
use rkube_cri::{ContainerRuntime, PodNetwork};
use rkube_testkit::containerd::ContainerdProcess;
use rkubelet::{KubeletConfig, NodeRuntime};
use serde_json::{json, Value};

const NODE: &str = "safety-node";
const IMAGE: &str = "busybox:rkube-e2e";

async fn wait_until<F: std::future::Future<Output = bool>>(
    what: &str,
    mut check: impl FnMut() -> F,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn status_of(pods: &Api<Pod>, name: &str) -> Value {
    pods.get_opt(name)
        .await
        .unwrap()
        .map(|p| serde_json::to_value(p.status).unwrap())
        .unwrap_or(Value::Null)
}

/// Every hierarchy's directory of the pod's cgroup (v2 at the root, v1 per controller).
fn pod_cgroups(uid: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let relative = rkubelet::spec::pod_cgroup(uid);
    let mut dirs = vec![root.join(&relative)];
    for hierarchy in std::fs::read_dir(root).unwrap().flatten() {
        dirs.push(hierarchy.path().join(&relative));
    }
    dirs.into_iter().filter(|d| d.is_dir()).collect()
}

struct Node {
    dir: tempfile::TempDir,
    client: Client,
    runtime: Arc<ContainerdRuntime>,
    network: Arc<CniNetwork>,
    cni: CniConfig,
    node_runtime: NodeRuntime,
    image_dir: PathBuf,
    _containerd: ContainerdProcess,
    stop_server: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Node {
    async fn start() -> Node {
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
        // Distinct from e2e_containerd.rs (10.200-249.x) so both can run at once.
        let pid = std::process::id();
        let cidr = format!("10.{}.{}.0/24", 150 + pid % 50, (pid / 50) % 250);
        let mut cni = CniConfig::new(cidr, dir.path().join("cni"));
        cni.bridge_name = format!("rks{:06x}", pid & 0xff_ffff);
        cni.network_name = format!("rks-{pid:08x}");
        cni.forward_chain = format!("RKS-{pid:08x}");
        cni.netns_dir = dir.path().join("netns");
        let network = Arc::new(CniNetwork::new(cni.clone()).unwrap());
        let node_runtime = NodeRuntime {
            runtime: runtime.clone(),
            images,
            network: network.clone(),
            version: "containerd://1.6".into(),
        };
        Node {
            dir,
            client,
            runtime,
            network,
            cni,
            node_runtime,
            image_dir,
            _containerd: containerd,
            stop_server: Some(stop_server),
        }
    }

    /// Runs a kubelet until the returned sender fires.
    async fn kubelet(
        &self,
    ) -> (
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<Result<(), rkubelet::KubeletError>>,
    ) {
        let mut config = KubeletConfig::new(
            self.client.clone(),
            NODE,
            self.dir.path().join("kubelet"),
            self.node_runtime.clone(),
        );
        config.pod_cidr = Some(self.cni.pod_cidr.clone());
        config.image_dir = Some(self.image_dir.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let kubelet = tokio::spawn(rkubelet::run(config, listener, async move {
            let _ = stopped.await;
        }));
        (stop, kubelet)
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), "default")
    }

    async fn create(&self, mut pod: Value) -> String {
        pod["spec"]["nodeName"] = json!(NODE);
        self.pods()
            .create(
                &PostParams::default(),
                &serde_json::from_value(pod).unwrap(),
            )
            .await
            .unwrap()
            .metadata
            .uid
            .unwrap()
    }

    async fn containers_of(&self, uid: &str) -> usize {
        self.runtime
            .list()
            .await
            .unwrap()
            .iter()
            .filter(|c| c.labels.get(rkube_cri::labels::POD_UID).map(String::as_str) == Some(uid))
            .count()
    }

    /// The kubelet leaves containers on shutdown: remove what is left, then the network.
    async fn clean_up(mut self) {
        let mut uids = std::collections::HashSet::new();
        for c in self.runtime.list().await.unwrap() {
            let _ = self.runtime.signal(&c.id, 9).await;
            let _ = self.runtime.remove(&c.id).await;
            uids.extend(c.labels.get(rkube_cri::labels::POD_UID).cloned());
        }
        for uid in &uids {
            let _ = self.network.teardown(uid).await;
            for dir in pod_cgroups(uid) {
                let _ = std::fs::remove_dir(dir);
            }
        }
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.cni.bridge_name])
            .output();
        let iptables = |args: &[&str]| {
            std::process::Command::new("iptables")
                .args(["-w", "-t", "filter"])
                .args(args)
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        };
        while iptables(&["-D", "FORWARD", "-j", &self.cni.forward_chain]) {}
        iptables(&["-F", &self.cni.forward_chain]);
        iptables(&["-X", &self.cni.forward_chain]);
        if let Some(stop) = self.stop_server.take() {
            let _ = stop.send(());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sub_paths_stay_in_their_volume_and_pods_deleted_while_down_are_swept() {
    let node = Node::start().await;
    let (stop_kubelet, kubelet) = node.kubelet().await;
    let pods = node.pods();

    // A legitimate nested subPath: created inside the volume and mounted from there.
    let writer_uid = node
        .create(json!({
            "metadata": {"name": "writer"},
            "spec": {
                "terminationGracePeriodSeconds": 1,
                "volumes": [{"name": "data", "emptyDir": {}}],
                "containers": [{
                    "name": "main", "image": IMAGE,
                    "command": ["sh", "-c", "echo written-through-subpath > /sub/file; sleep 3600"],
                    "volumeMounts": [{"name": "data", "mountPath": "/sub", "subPath": "nested/dir"}]
                }]
            }
        }))
        .await;
    let written = node
        .dir
        .path()
        .join("kubelet/pods")
        .join(&writer_uid)
        .join("volumes/data/nested/dir/file");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while std::fs::read_to_string(&written).ok().as_deref() != Some("written-through-subpath\n") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the container never wrote through its subPath: {:#}",
            status_of(&pods, "writer").await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // An init container plants a symlink to / in the volume; the subPath through it is
    // refused instead of bind-mounting the host's /etc.
    node.create(json!({
        "metadata": {"name": "escaper"},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "volumes": [{"name": "data", "emptyDir": {}}],
            "initContainers": [{
                "name": "plant", "image": IMAGE,
                "command": ["ln", "-s", "/", "/data/escape"],
                "volumeMounts": [{"name": "data", "mountPath": "/data"}]
            }],
            "containers": [{
                "name": "main", "image": IMAGE, "command": ["sleep", "3600"],
                "volumeMounts": [{"name": "data", "mountPath": "/host-etc", "subPath": "escape/etc"}]
            }]
        }
    }))
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let refused = loop {
        let status = status_of(&pods, "escaper").await;
        let waiting = status["containerStatuses"][0]["state"]["waiting"].clone();
        if waiting["reason"] == "CreateContainerConfigError" {
            break waiting;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the escaping subPath was never refused: {status:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let message = refused["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("subPath \"escape/etc\" is outside of the volume \"data\""),
        "{refused:#}"
    );

    // The kubelet goes down; the writer pod is deleted meanwhile.
    let writer_cgroups = pod_cgroups(&writer_uid);
    assert!(!writer_cgroups.is_empty(), "the running pod has cgroups");
    assert!(node.network.status(&writer_uid).await.unwrap().is_some());
    let _ = stop_kubelet.send(());
    kubelet.await.unwrap().unwrap();
    pods.delete("writer", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    assert!(pods.get_opt("writer").await.unwrap().is_none());
    assert_eq!(
        node.containers_of(&writer_uid).await,
        1,
        "left running while down"
    );

    // Started again, the kubelet removes all of it.
    let (stop_kubelet, kubelet) = node.kubelet().await;
    let pod_dir = node.dir.path().join("kubelet/pods").join(&writer_uid);
    let node_ref = &node;
    let uid_ref = &writer_uid;
    wait_until("the deleted pod's leftovers are removed", move || {
        let node = node_ref;
        let writer_uid = uid_ref.clone();
        let pod_dir = pod_dir.clone();
        async move {
            node.containers_of(&writer_uid).await == 0
                && node.network.status(&writer_uid).await.unwrap().is_none()
                && pod_cgroups(&writer_uid).is_empty()
                && !pod_dir.exists()
        }
    })
    .await;
    assert!(
        node.network
            .list()
            .await
            .unwrap()
            .iter()
            .all(|u| u != &writer_uid),
        "the network state is gone"
    );

    let _ = stop_kubelet.send(());
    kubelet.await.unwrap().unwrap();
    node.clean_up().await;
}
