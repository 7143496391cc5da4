//! The in-process cluster every controller-manager test runs on: the API server (embedded
//! store in a temp dir, restartable on the same address and data), and what runs pods,
//! either
//! - [`Env::start`]: a tiny simulated kubelet that marks every pod Running and Ready
//!   [`POD_STARTUP`] after it appears, wherever it is, with controller managers started
//!   and stopped at will by the test (leader election on), or
//! - [`Env::with_nodes`]: the real scheduler and simulated nodes (SimCluster), with one
//!   controller manager started at once (no leader election, fast node lifecycle).
#![allow(dead_code)]

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, PostParams};
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, ResourceExt};
use parking_lot::Mutex;
use rkube_controller_manager::{ApiServerTarget, Config};
use rkube_runtime::ControllerSelection;
use rkube_simnode::{NodeTemplate, SimCluster, SimConfig};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

// Not every test binary uses it.
#[allow(unused_imports)]
pub use rkube_testkit::wait_for;
use rkube_testkit::wait_for_value;

/// How long a test waits for the cluster to get somewhere.
pub const TIMEOUT: Duration = Duration::from_secs(60);

pub struct Env {
    pub url: String,
    pub addr: SocketAddr,
    pub client: kube::Client,
    pub dir: tempfile::TempDir,
    // Dropped first: controllers and scheduler stop before the API server does.
    controller_manager: Option<ControllerManager>,
    scheduler: Option<ControllerManager>,
    nodes: Option<SimCluster>,
    api_stop: Option<oneshot::Sender<()>>,
    api_task: Option<ApiTask>,
    kubelet: Option<JoinHandle<()>>,
}

/// Pods with this label never become ready (a broken image, say).
pub const NEVER_READY: &str = "sim.rkube.io/never-ready";

/// How long the simulated kubelet takes to make a new pod ready.
pub const POD_STARTUP: Duration = Duration::from_millis(150);

impl Env {
    /// The API server and the simulated kubelet; the test starts controller managers.
    pub async fn start() -> Env {
        let mut env = Env::api_server_only().await;
        env.kubelet = Some(tokio::spawn(simulated_kubelet(env.client.clone())));
        env
    }

    /// The API server, `node_count` simulated nodes, the scheduler and a controller manager
    /// running the `controllers` (a `--controllers` value such as `*,-nodelifecycle`).
    pub async fn with_nodes(node_count: usize, controllers: &str) -> Env {
        let mut env = Env::api_server_only().await;
        let sim_config = SimConfig {
            renew_interval: Duration::from_millis(500),
            ..SimConfig::default()
        };
        env.nodes = Some(
            SimCluster::start_with(
                env.client.clone(),
                sim_config,
                node_count,
                NodeTemplate::default(),
            )
            .await
            .unwrap(),
        );
        let scheduler_config =
            rkube_scheduler::Config::new(rkube_scheduler::ApiServerTarget::Url(env.url.clone()));
        env.scheduler = Some(
            ControllerManager::spawn("scheduler", move |listener, stopped| async move {
                rkube_scheduler::run(scheduler_config, listener, stopped)
                    .await
                    .unwrap();
            })
            .await,
        );
        env.controller_manager =
            Some(ControllerManager::start(nodes_config(&env.url, controllers)).await);
        env
    }

    async fn api_server_only() -> Env {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
        let dir = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let url = format!("http://{addr}");
        let (tx, api_task) = spawn_api_server(dir.path().join("data"), listener);
        let mut kube_config = kube::Config::new(url.parse().unwrap());
        kube_config.default_namespace = "default".into();
        let client = kube::Client::try_from(kube_config).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let api_task = wait_until_serving(&client, api_task, deadline)
            .await
            .unwrap_or_else(|e| panic!("API server did not start: {e}"));
        std::fs::write(dir.path().join("kubeconfig"), kubeconfig(&url)).unwrap();
        Env {
            url,
            addr,
            client,
            dir,
            controller_manager: None,
            scheduler: None,
            nodes: None,
            api_stop: Some(tx),
            api_task: Some(api_task),
            kubelet: None,
        }
    }

    /// The simulated nodes ([`Env::with_nodes`] only).
    pub fn nodes(&self) -> &SimCluster {
        self.nodes.as_ref().expect("started with_nodes")
    }

    /// Stops the controller manager and scheduler [`Env::with_nodes`] started, then the
    /// API server, each gracefully.
    pub async fn stop(mut self) {
        if let Some(cm) = self.controller_manager.take() {
            cm.stop().await;
        }
        if let Some(scheduler) = self.scheduler.take() {
            scheduler.stop().await;
        }
        if let Some(stop) = self.api_stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.api_task.take() {
            let _ = tokio::time::timeout(TIMEOUT, task).await;
        }
    }

    /// Stops the API server gracefully and starts a new one on the same address and data dir,
    /// returning once it serves requests again.
    pub async fn restart_api_server(&mut self) {
        if let Some(stop) = self.api_stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.api_task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("API server stops within 30 s")
                .unwrap()
                .unwrap();
        }
        // `rkube_apiserver::run` can return a moment before the last handle on its store is
        // dropped (a connection task lets go of the router state just after the server stops
        // waiting for it), so the new instance may find the directory still locked: retry.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let listener = rebind(self.addr).await;
            let (tx, task) = spawn_api_server(self.data_dir(), listener);
            match wait_until_serving(&self.client, task, deadline).await {
                Ok(task) => {
                    self.api_stop = Some(tx);
                    self.api_task = Some(task);
                    return;
                }
                Err(e) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "API server did not restart: {e}"
                    );
                    tracing::debug!("API server restart failed, retrying: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn cm_config(&self, identity: &str) -> Config {
        let mut config = Config::new(ApiServerTarget::Url(self.url.clone()));
        config.identity = identity.to_string();
        config.leader_election.lease_duration = Duration::from_secs(3);
        config.leader_election.renew_deadline = Duration::from_secs(2);
        config.leader_election.retry_period = Duration::from_millis(300);
        config.namespace_resync = Duration::from_millis(300);
        config
    }

    pub async fn start_cm(&self, identity: &str) -> ControllerManager {
        ControllerManager::start(self.cm_config(identity)).await
    }

    pub fn kubeconfig_path(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// Runs the real kubectl against this server with a fresh discovery cache.
    pub async fn kubectl(&self, args: &[&str]) -> std::process::Output {
        let cache = self
            .dir
            .path()
            .join(format!("kubectl-cache-{}", uuid::Uuid::new_v4()));
        tokio::process::Command::new(rkube_testkit::kubectl_binary())
            .arg(format!("--kubeconfig={}", self.kubeconfig_path().display()))
            .arg(format!("--cache-dir={}", cache.display()))
            .args(args)
            .env_remove("KUBECONFIG")
            .output()
            .await
            .unwrap()
    }

    pub async fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args).await;
        assert!(
            out.status.success(),
            "kubectl {args:?} failed:\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.controller_manager.take();
        self.scheduler.take();
        if let Some(kubelet) = self.kubelet.take() {
            kubelet.abort();
        }
        if let Some(stop) = self.api_stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.api_task.take() {
            task.abort();
        }
    }
}

pub struct ControllerManager {
    pub identity: String,
    pub health_url: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl ControllerManager {
    pub async fn start(config: Config) -> ControllerManager {
        let identity = config.identity.clone();
        ControllerManager::spawn(&identity, move |listener, stopped| async move {
            rkube_controller_manager::run(config, listener, stopped)
                .await
                .unwrap();
        })
        .await
    }

    /// Runs a component in-process: `run(listener, stopped)` serves its health endpoints on
    /// `listener` until `stopped` completes.
    async fn spawn<F, Fut>(identity: &str, run: F) -> ControllerManager
    where
        F: FnOnce(tokio::net::TcpListener, Stopped) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let health_url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let stopped: Stopped = Box::pin(async move {
            let _ = rx.await;
        });
        ControllerManager {
            identity: identity.to_string(),
            health_url,
            stop: Some(tx),
            task: Some(tokio::spawn(run(listener, stopped))),
        }
    }

    /// Graceful stop: controllers stop and the lease is released.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }

    /// A crash: everything stops at once, the lease is left to expire.
    pub async fn kill(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for ControllerManager {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

type ApiTask = JoinHandle<Result<(), rkube_apiserver::ServerError>>;
type Stopped = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// Controller-manager settings for [`Env::with_nodes`]: no leader election, fast node
/// lifecycle and job backoff.
pub fn nodes_config(url: &str, controllers: &str) -> Config {
    let mut config = Config::new(ApiServerTarget::Url(url.to_string()));
    config.leader_election.enabled = false;
    config.controllers = ControllerSelection::parse(controllers);
    config.node_lifecycle.node_monitor_grace_period = Duration::from_secs(3);
    config.node_lifecycle.node_monitor_period = Duration::from_millis(300);
    config.node_lifecycle.default_unreachable_toleration_seconds = 2;
    config.node_lifecycle.default_not_ready_toleration_seconds = 2;
    config.job_backoff_base = Duration::from_millis(200);
    config.namespace_resync = Duration::from_millis(300);
    config
}

fn spawn_api_server(
    data_dir: PathBuf,
    listener: tokio::net::TcpListener,
) -> (oneshot::Sender<()>, ApiTask) {
    let config =
        rkube_apiserver::Config::new(rkube_apiserver::StorageConfig::Embedded { data_dir });
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(rkube_apiserver::run(config, listener, async move {
        let _ = rx.await;
    }));
    (tx, task)
}

/// Waits until the server answers; an error if it exits first.
async fn wait_until_serving(
    client: &kube::Client,
    task: ApiTask,
    deadline: tokio::time::Instant,
) -> Result<ApiTask, String> {
    let timeout = deadline.saturating_duration_since(tokio::time::Instant::now());
    let answered = rkube_testkit::poll_until(timeout, || async {
        task.is_finished() || client.list_core_api_versions().await.is_ok()
    })
    .await;
    if task.is_finished() {
        return Err(match task.await {
            Ok(Ok(())) => "exited".to_string(),
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        });
    }
    answered.map_err(|_| "API server not serving in time".to_string())?;
    Ok(task)
}

/// The old listener's port may linger briefly after a stop, so binding is retried.
async fn rebind(addr: SocketAddr) -> tokio::net::TcpListener {
    let bound = || async {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => Some(listener),
            Err(e) => {
                tracing::debug!("rebinding {addr}: {e}");
                None
            }
        }
    };
    let what = format!("{addr} to be free again");
    wait_for_value(&what, Duration::from_secs(10), bound).await
}

fn kubeconfig(url: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: rkube\n  cluster:\n    server: {url}\ncontexts:\n- name: rkube\n  context:\n    cluster: rkube\n    user: rkube\n    namespace: default\ncurrent-context: rkube\nusers:\n- name: rkube\n  user: {{}}\n"
    )
}

/// Marks each pod Running and Ready (once, after [`POD_STARTUP`]), as kwok does.
async fn simulated_kubelet(client: kube::Client) {
    let api: Api<Pod> = Api::all(client.clone());
    let started: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut events =
        std::pin::pin!(watcher::watcher(api, watcher::Config::default()).default_backoff());
    while let Some(event) = events.next().await {
        let pod = match event {
            Ok(Event::Apply(p)) | Ok(Event::InitApply(p)) => p,
            _ => continue,
        };
        let ready = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let uid = pod.uid().unwrap_or_default();
        let broken = pod.labels().contains_key(NEVER_READY);
        if ready
            || broken
            || pod.metadata.deletion_timestamp.is_some()
            || !started.lock().insert(uid)
        {
            continue;
        }
        let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
        tokio::spawn(async move {
            tokio::time::sleep(POD_STARTUP).await;
            let now = k8s_openapi::jiff::Timestamp::now().to_string();
            let status = json!({"status": {"phase": "Running", "startTime": now, "conditions": [
                {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
                {"type": "Ready", "status": "True", "lastTransitionTime": now},
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now}]}});
            let _ = api
                .patch_status(
                    &pod.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&status),
                )
                .await;
        });
    }
}

pub fn deployment(name: &str, replicas: i32, image: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
           "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                    "template": {"metadata": {"labels": {"app": name}},
                                 "spec": {"containers": [{"name": "c", "image": image}]}}}})
}

/// [`deployment`] whose pods request 100m CPU each, so the scheduler spreads them over
/// [`Env::with_nodes`]'s nodes.
pub fn deployment_requesting_cpu(name: &str, replicas: i32, image: &str) -> Value {
    let mut body = deployment(name, replicas, image);
    body["spec"]["template"]["spec"]["containers"][0]["resources"] =
        json!({"requests": {"cpu": "100m"}});
    body
}

impl Env {
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::default_namespaced(self.client.clone())
    }

    pub async fn create<K>(&self, body: Value) -> K
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
    {
        let object: K = serde_json::from_value(body).unwrap();
        self.api::<K>()
            .create(&PostParams::default(), &object)
            .await
            .unwrap()
    }

    pub async fn pods(&self, selector: &str) -> Vec<Pod> {
        self.api::<Pod>()
            .list(&ListParams::default().labels(selector))
            .await
            .unwrap()
            .items
    }

    /// Patches a pod's status the way a kubelet would report it.
    pub async fn patch_pod_status(&self, name: &str, status: Value) {
        self.api::<Pod>()
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await
            .unwrap();
    }

    /// [`wait_for`] with [`TIMEOUT`], printing the cluster's workloads if it times out.
    pub async fn wait_for<F, Fut>(&self, what: &str, check: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        if rkube_testkit::poll_until(TIMEOUT, check).await.is_err() {
            self.dump().await;
            panic!("timed out waiting for {what}");
        }
    }

    /// Prints pods, nodes and workload statuses (for diagnosing a timeout).
    pub async fn dump(&self) {
        let summary = |v: Value| v.to_string();
        for pod in self.pods("").await {
            eprintln!(
                "pod {} node={:?} deleting={} status={}",
                pod.metadata.name.clone().unwrap_or_default(),
                node_of(&pod),
                pod.metadata.deletion_timestamp.is_some(),
                summary(json!(pod
                    .status
                    .as_ref()
                    .map(|s| (&s.phase, &s.conditions))))
            );
        }
        let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(self.client.clone());
        for node in nodes.list(&ListParams::default()).await.unwrap().items {
            eprintln!(
                "node {} taints={} ready={}",
                node.metadata.name.clone().unwrap_or_default(),
                summary(json!(node.spec.and_then(|s| s.taints))),
                summary(json!(node
                    .status
                    .and_then(|s| s.conditions)
                    .into_iter()
                    .flatten()
                    .find(|c| c.type_ == "Ready")))
            );
        }
        macro_rules! statuses {
            ($kind:ty) => {
                for o in self
                    .api::<$kind>()
                    .list(&ListParams::default())
                    .await
                    .unwrap()
                    .items
                {
                    eprintln!(
                        "{} {} generation={:?} status={}",
                        stringify!($kind),
                        o.metadata.name.clone().unwrap_or_default(),
                        o.metadata.generation,
                        summary(json!(o.status))
                    );
                }
            };
        }
        statuses!(k8s_openapi::api::apps::v1::DaemonSet);
        statuses!(k8s_openapi::api::apps::v1::StatefulSet);
        statuses!(k8s_openapi::api::batch::v1::Job);
        statuses!(k8s_openapi::api::apps::v1::Deployment);
    }
}

pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

pub fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref().and_then(|s| s.phase.as_deref())
}

pub fn node_of(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref().and_then(|s| s.node_name.as_deref())
}
