//! What the kubelet's integration tests share:
//! - [`ApiServer`]: an in-process API server over the embedded store;
//! - [`FakeNode`]: a kubelet's node on rkube-cri's fake runtime, images and network;
//! - [`RealNode`]: a node on the real thing for the end-to-end tests (as root): a private
//!   containerd with the busybox test image, and CNI networking whose bridge, network,
//!   iptables chain and pod CIDR are this test's own, so that test files can run at once;
//! - [`ScriptedRuntime`]: one container and scripted exec, for the HTTP server and probes;
//! - [`spawn_kubelet`], [`wait_for_status`].

// Each test file uses its own part of this module.
#![allow(dead_code)]

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use chrono::Utc;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, PostParams};
use kube::Client;
use rkube_cri::cni::{CniConfig, CniNetwork};
use rkube_cri::containerd::{ContainerdConfig, ContainerdImageService, ContainerdRuntime};
use rkube_cri::fake::{FakeImageService, FakeRuntime};
use rkube_cri::fake_network::FakeNetwork;
use rkube_cri::{
    labels, ContainerConfig, ContainerInfo, ContainerRuntime, ContainerState, ExecConfig, ExecIo,
    PodNetwork, RuntimeError, RuntimeEvent,
};
use rkube_testkit::containerd::ContainerdProcess;
use rkubelet::{KubeletConfig, KubeletError, NodeRuntime};
use serde_json::{json, Value};
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinHandle;

/// What sets one test's node apart from another's.
pub struct RealNodeParams {
    /// The node's name, which its kubelet registers and pods are bound to.
    pub node: &'static str,
    /// The busybox image reference the tarball is tagged with.
    pub image: &'static str,
    /// Three lowercase letters that name this test's bridge (`<prefix>NNNNNN`), CNI
    /// network (`<prefix>-NNNNNNNN`) and iptables chain (upper case), unique per test file.
    pub name_prefix: &'static str,
    /// The pod CIDR is `10.<base + pid % 50>.<pid / 50 % 250>.0/24`.
    pub cidr_octet_base: u32,
}

pub struct RealNode {
    pub dir: tempfile::TempDir,
    pub client: Client,
    pub runtime: Arc<ContainerdRuntime>,
    pub network: Arc<CniNetwork>,
    pub cni: CniConfig,
    pub node_runtime: NodeRuntime,
    pub image_dir: PathBuf,
    node: &'static str,
    _containerd: ContainerdProcess,
    api_server: ApiServer,
}

/// An API server on a free loopback port over an embedded store in `data_dir`.
pub struct ApiServer {
    pub client: Client,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), rkube_apiserver::ServerError>>,
}

impl ApiServer {
    /// Returns once the namespaces the server creates at start (`default`, and
    /// `kube-node-lease` for the kubelet's lease) exist.
    pub async fn start(data_dir: PathBuf) -> ApiServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let config =
            rkube_apiserver::Config::new(rkube_apiserver::StorageConfig::Embedded { data_dir });
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(rkube_apiserver::run(config, listener, async move {
            let _ = stopped.await;
        }));
        let client = Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
        let namespaces: Api<Namespace> = Api::all(client.clone());
        for namespace in ["default", "kube-node-lease"] {
            rkube_testkit::wait_for(&format!("namespace {namespace}"), WAIT, || async {
                namespaces.get(namespace).await.is_ok()
            })
            .await;
        }
        ApiServer { client, stop, task }
    }

    /// Stops the server and checks that it shut down cleanly.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

/// A kubelet serving on a loopback port until `stop` fires.
pub struct RunningKubelet {
    pub port: u16,
    pub stop: oneshot::Sender<()>,
    pub task: JoinHandle<Result<(), KubeletError>>,
}

impl RunningKubelet {
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

impl RealNode {
    pub async fn start(params: RealNodeParams) -> RealNode {
        assert!(
            rkube_testkit::containerd::available(),
            "these tests need root and containerd + runc + containernetworking-plugins"
        );
        let dir = tempfile::tempdir().unwrap();
        let api_server = ApiServer::start(dir.path().join("store")).await;
        let client = api_server.client.clone();

        let containerd = ContainerdProcess::start().await.unwrap();
        let mut cd_config =
            ContainerdConfig::new(containerd.socket_path(), containerd.dir().join("rkube"));
        cd_config.runc_root = containerd.runc_root();
        let runtime = Arc::new(ContainerdRuntime::connect(&cd_config).await.unwrap());
        let images = Arc::new(ContainerdImageService::connect(&cd_config).await.unwrap());
        let image_dir = dir.path().join("images");
        std::fs::create_dir_all(&image_dir).unwrap();
        rkube_testkit::images::busybox_oci_tarball(&image_dir, params.image).unwrap();

        let pid = std::process::id();
        let cidr = format!(
            "10.{}.{}.0/24",
            params.cidr_octet_base + pid % 50,
            (pid / 50) % 250
        );
        let prefix = params.name_prefix;
        let mut cni = CniConfig::new(cidr, dir.path().join("cni"));
        cni.bridge_name = format!("{prefix}{:06x}", pid & 0xff_ffff);
        cni.network_name = format!("{prefix}-{pid:08x}");
        cni.forward_chain = format!("{}-{pid:08x}", prefix.to_uppercase());
        cni.netns_dir = dir.path().join("netns");
        let network = Arc::new(CniNetwork::new(cni.clone()).unwrap());
        let node_runtime = NodeRuntime {
            runtime: runtime.clone(),
            images,
            network: network.clone(),
            version: "containerd://1.6".into(),
        };
        RealNode {
            dir,
            client,
            runtime,
            network,
            cni,
            node_runtime,
            image_dir,
            node: params.node,
            _containerd: containerd,
            api_server,
        }
    }

    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), "default")
    }

    /// Creates the pod in `default`, bound to this node.
    pub async fn create_pod(&self, pod: Value) -> Pod {
        create_pod(&self.client, self.node, pod).await
    }

    /// The runtime's containers of the pod `uid`.
    pub async fn containers_of(&self, uid: &str) -> Vec<ContainerInfo> {
        containers_of(self.runtime.as_ref(), uid).await
    }

    /// The kubelet's root directory.
    pub fn kubelet_root(&self) -> PathBuf {
        self.dir.path().join("kubelet")
    }

    /// A kubelet configuration for this node: its pod CIDR and the image tarball
    /// directory set, everything else at the defaults for the test to adjust.
    pub fn kubelet_config(&self) -> KubeletConfig {
        let mut config = KubeletConfig::new(
            self.client.clone(),
            self.node,
            self.kubelet_root(),
            self.node_runtime.clone(),
        );
        config.pod_cidr = Some(self.cni.pod_cidr.clone());
        config.image_dir = Some(self.image_dir.clone());
        config
    }

    /// The kubelet leaves containers on shutdown: this removes what is left, then each
    /// pod's network and cgroups, the bridge and the iptables chain, and stops the
    /// containerd and the API server.
    pub async fn clean_up(self) {
        let mut uids = HashSet::new();
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
        self.api_server.stop().await;
    }
}

/// Runs a kubelet on a free loopback port until its `stop` fires.
pub async fn spawn_kubelet(config: KubeletConfig) -> RunningKubelet {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(rkubelet::run(config, listener, async move {
        let _ = stopped.await;
    }));
    RunningKubelet { port, stop, task }
}

/// Every hierarchy's directory of the pod's cgroup (v2 at the root, v1 per controller).
pub fn pod_cgroups(uid: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let relative = rkubelet::spec::pod_cgroup(uid);
    let mut dirs = vec![root.join(&relative)];
    for hierarchy in std::fs::read_dir(root).unwrap().flatten() {
        dirs.push(hierarchy.path().join(&relative));
    }
    dirs.into_iter().filter(|d| d.is_dir()).collect()
}

/// The pod's status as JSON (null while the pod does not exist).
pub async fn status_of(pods: &Api<Pod>, name: &str) -> Value {
    pods.get_opt(name)
        .await
        .unwrap()
        .map(|p| serde_json::to_value(p.status).unwrap())
        .unwrap_or(Value::Null)
}

/// How long the tests wait for the kubelet to get somewhere.
pub const WAIT: Duration = Duration::from_secs(90);

/// Polls the pod's status until `check` holds, for up to [`WAIT`]; returns that status, or
/// panics with the status it last saw.
pub async fn wait_for_status(
    pods: &Api<Pod>,
    name: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let found = rkube_testkit::poll_for(WAIT, || async {
        let status = status_of(pods, name).await;
        check(&status).then_some(status)
    })
    .await;
    match found {
        Ok(status) => status,
        Err(rkube_testkit::TimedOut) => panic!(
            "pod {name} never got {what}: {:#}",
            status_of(pods, name).await
        ),
    }
}

/// Creates `pod` (JSON without apiVersion and kind) in `default`, bound to `node`.
pub async fn create_pod(client: &Client, node: &str, mut pod: Value) -> Pod {
    pod["apiVersion"] = json!("v1");
    pod["kind"] = json!("Pod");
    pod["spec"]["nodeName"] = json!(node);
    let pod: Pod = serde_json::from_value(pod).unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(&PostParams::default(), &pod).await.unwrap()
}

/// The containers `runtime` has of the pod `uid`.
pub async fn containers_of(runtime: &dyn ContainerRuntime, uid: &str) -> Vec<ContainerInfo> {
    runtime
        .list()
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.labels.get(labels::POD_UID).map(String::as_str) == Some(uid))
        .collect()
}

/// What a fake runtime reports for its one busybox container: running, or exited with 0
/// once `stopped`.
pub fn one_container_info(id: &str, stopped: bool) -> ContainerInfo {
    let state = if stopped {
        ContainerState::Exited {
            started_at: None,
            finished_at: Utc::now(),
            exit_code: 0,
            oom_killed: false,
        }
    } else {
        ContainerState::Running {
            started_at: Utc::now(),
        }
    };
    ContainerInfo {
        id: id.to_string(),
        image: "busybox".into(),
        image_id: "sha256:0".into(),
        labels: Default::default(),
        state,
        created_at: Utc::now(),
        pid: Some(1),
    }
}

/// The image every fake node has.
pub const FAKE_IMAGE: &str = "busybox:1.36";

/// A node on rkube-cri's fake runtime, images (with [`FAKE_IMAGE`]) and network, against
/// its own in-process API server; the test runs the kubelet with [`spawn_kubelet`].
pub struct FakeNode {
    pub dir: tempfile::TempDir,
    pub client: Client,
    pub runtime: FakeRuntime,
    pub images: FakeImageService,
    pub network: Arc<FakeNetwork>,
    pub node: &'static str,
    pod_cidr: String,
    api_server: ApiServer,
}

impl FakeNode {
    pub async fn start(node: &'static str, pod_cidr: &str) -> FakeNode {
        let dir = tempfile::tempdir().unwrap();
        let api_server = ApiServer::start(dir.path().join("store")).await;
        let images = FakeImageService::new();
        images.add_image(FAKE_IMAGE).unwrap();
        FakeNode {
            client: api_server.client.clone(),
            dir,
            runtime: FakeRuntime::new(),
            images,
            network: Arc::new(FakeNetwork::new(pod_cidr).unwrap()),
            node,
            pod_cidr: pod_cidr.to_string(),
            api_server,
        }
    }

    /// A kubelet configuration for this node (its root, runtime and pod CIDR), everything
    /// else at the defaults for the test to adjust. A kubelet started again from it
    /// finds what the previous one left.
    pub fn kubelet_config(&self) -> KubeletConfig {
        let node_runtime = NodeRuntime {
            runtime: Arc::new(self.runtime.clone()),
            images: Arc::new(self.images.clone()),
            network: self.network.clone(),
            version: "fake://0.1.0".into(),
        };
        let mut config = KubeletConfig::new(
            self.client.clone(),
            self.node,
            self.dir.path().join("kubelet"),
            node_runtime,
        );
        config.pod_cidr = Some(self.pod_cidr.clone());
        config
    }

    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), "default")
    }

    /// Creates the pod in `default`, bound to this node.
    pub async fn create_pod(&self, pod: Value) -> Pod {
        create_pod(&self.client, self.node, pod).await
    }

    /// The runtime's containers of the pod `uid`.
    pub async fn containers_of(&self, uid: &str) -> Vec<ContainerInfo> {
        containers_of(&self.runtime, uid).await
    }

    pub async fn stop(self) {
        self.api_server.stop().await;
    }
}

/// What exec in a [`ScriptedRuntime`] runs: the command's config and streams in, its
/// exit code out.
pub type ExecScript =
    Box<dyn Fn(ExecConfig, ExecIo) -> BoxFuture<'static, rkube_cri::Result<i32>> + Send + Sync>;

/// A runtime with one container, running until [`ScriptedRuntime::stop`], in which exec
/// runs a script (other ids are not found). Create, start, signal and remove do nothing:
/// the HTTP server and probe tests need a runtime to read from, not one that runs pods.
pub struct ScriptedRuntime {
    id: String,
    stopped: AtomicBool,
    events: broadcast::Sender<RuntimeEvent>,
    script: Option<ExecScript>,
    /// Where attach's main process writes its answers; without it, attach is refused.
    attach_log: Option<PathBuf>,
}

impl ScriptedRuntime {
    /// Exec finds no such container.
    pub fn new(id: &str) -> ScriptedRuntime {
        ScriptedRuntime {
            id: id.to_string(),
            stopped: AtomicBool::new(false),
            events: broadcast::channel(4).0,
            script: None,
            attach_log: None,
        }
    }

    /// Attach's main process answers each line `l` of its stdin with `got l` in `log` as
    /// soon as it arrives, and `done` when the input ends, like
    /// `while read l; do echo "got $l"; done; echo done`.
    pub fn with_attach_echo(self, log: PathBuf) -> ScriptedRuntime {
        ScriptedRuntime {
            attach_log: Some(log),
            ..self
        }
    }

    pub fn with_exec(
        id: &str,
        script: impl Fn(ExecConfig, ExecIo) -> BoxFuture<'static, rkube_cri::Result<i32>>
            + Send
            + Sync
            + 'static,
    ) -> ScriptedRuntime {
        ScriptedRuntime {
            script: Some(Box::new(script)),
            ..ScriptedRuntime::new(id)
        }
    }

    /// The container exits (with 0).
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
    }
}

#[async_trait]
impl ContainerRuntime for ScriptedRuntime {
    async fn create(&self, _config: ContainerConfig) -> rkube_cri::Result<()> {
        Ok(())
    }
    async fn start(&self, _id: &str) -> rkube_cri::Result<()> {
        Ok(())
    }
    async fn signal(&self, _id: &str, _signal: u32) -> rkube_cri::Result<()> {
        Ok(())
    }
    async fn remove(&self, _id: &str) -> rkube_cri::Result<()> {
        Ok(())
    }
    async fn status(&self, id: &str) -> rkube_cri::Result<ContainerInfo> {
        if id != self.id {
            return Err(RuntimeError::NotFound(id.to_string()));
        }
        Ok(one_container_info(id, self.stopped.load(Ordering::SeqCst)))
    }
    async fn list(&self) -> rkube_cri::Result<Vec<ContainerInfo>> {
        Ok(vec![self.status(&self.id).await?])
    }
    fn events(&self) -> broadcast::Receiver<RuntimeEvent> {
        self.events.subscribe()
    }
    async fn exec(&self, id: &str, config: ExecConfig, io: ExecIo) -> rkube_cri::Result<i32> {
        match &self.script {
            Some(script) if id == self.id => script(config, io).await,
            _ => Err(RuntimeError::NotFound(format!("container {id}"))),
        }
    }
    async fn attach(
        &self,
        id: &str,
        mut stdin: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    ) -> rkube_cri::Result<()> {
        let Some(log) = self.attach_log.as_ref().filter(|_| id == self.id) else {
            return Err(RuntimeError::NotFound(format!("container {id}")));
        };
        let append = |text: String| -> rkube_cri::Result<()> {
            use std::io::Write;
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)?;
            file.write_all(text.as_bytes())?;
            Ok(())
        };
        let mut unfinished = Vec::new();
        while let Some(data) = stdin.recv().await {
            unfinished.extend_from_slice(&data);
            while let Some(end) = unfinished.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = unfinished.drain(..=end).collect();
                append(format!("got {}", String::from_utf8_lossy(&line)))?;
            }
        }
        append("done\n".to_string())
    }
}
