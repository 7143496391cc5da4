//! Test harness: an in-process API server (embedded store), a tiny simulated kubelet that
//! marks every pod Running and Ready shortly after it appears, and controller managers
//! started and stopped at will.
#![allow(dead_code)]

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, ResourceExt};
use parking_lot::Mutex;
use rkube_controller_manager::{ApiServerTarget, Config};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct Env {
    pub url: String,
    pub addr: SocketAddr,
    pub client: kube::Client,
    pub dir: tempfile::TempDir,
    api_stop: Option<oneshot::Sender<()>>,
    api_task: Option<ApiTask>,
    kubelet: JoinHandle<()>,
}

/// Pods with this label never become ready (a broken image, say).
pub const NEVER_READY: &str = "sim.rkube.io/never-ready";

/// How long the simulated kubelet takes to make a new pod ready.
pub const POD_STARTUP: Duration = Duration::from_millis(150);

impl Env {
    pub async fn start() -> Env {
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
        let kubelet = tokio::spawn(simulated_kubelet(client.clone()));
        Env {
            url,
            addr,
            client,
            dir,
            api_stop: Some(tx),
            api_task: Some(api_task),
            kubelet,
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
        self.kubelet.abort();
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
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let health_url = format!("http://{}", listener.local_addr().unwrap());
        let identity = config.identity.clone();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            rkube_controller_manager::run(config, listener, async move {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        ControllerManager {
            identity,
            health_url,
            stop: Some(tx),
            task: Some(task),
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
    loop {
        if task.is_finished() {
            return Err(match task.await {
                Ok(Ok(())) => "exited".to_string(),
                Ok(Err(e)) => e.to_string(),
                Err(e) => e.to_string(),
            });
        }
        if client.list_core_api_versions().await.is_ok() {
            return Ok(task);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "API server not serving in time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The old listener's port may linger briefly after a stop, so binding is retried.
async fn rebind(addr: SocketAddr) -> tokio::net::TcpListener {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => return listener,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!("rebinding {addr}: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("rebinding {addr}: {e}"),
        }
    }
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

/// Polls `check` every 100 ms until it holds; panics with `what` after `timeout`.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn deployment(name: &str, replicas: i32, image: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
           "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                    "template": {"metadata": {"labels": {"app": name}},
                                 "spec": {"containers": [{"name": "c", "image": image}]}}}})
}
