//! Test harness with every real component in-process: the API server (embedded store in a
//! temp dir), the scheduler, simulated nodes (SimCluster) and the controller manager with
//! short node-lifecycle and job-backoff timings.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::Client;
use rkube_controller_manager::{ApiServerTarget, Config};
use rkube_runtime::ControllerSelection;
use rkube_simnode::{NodeTemplate, SimCluster, SimConfig};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const TIMEOUT: Duration = Duration::from_secs(60);

/// A component run in-process until stopped (or dropped).
struct Component {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Component {
    fn spawn<F, Fut>(run: F) -> Component
    where
        F: FnOnce(oneshot::Receiver<()>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel::<()>();
        Component {
            stop: Some(stop),
            task: Some(tokio::spawn(run(stopped))),
        }
    }

    async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(TIMEOUT, task).await;
        }
    }
}

impl Drop for Component {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

pub struct Cluster {
    pub client: Client,
    pub url: String,
    pub nodes: SimCluster,
    // Dropped in reverse order of start: controllers first, the API server last.
    controller_manager: Component,
    scheduler: Component,
    api: Component,
    _dir: tempfile::TempDir,
}

/// Controller-manager settings for tests: no leader election, fast node lifecycle.
pub fn test_config(url: &str, controllers: &str) -> Config {
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

impl Cluster {
    /// `controllers` is a `--controllers` value such as `*` or `*,-nodelifecycle`.
    pub async fn start(node_count: usize, controllers: &str) -> Cluster {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
        let dir = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let api_config = rkube_apiserver::Config::new(rkube_apiserver::StorageConfig::Embedded {
            data_dir: dir.path().join("data"),
        });
        let api = Component::spawn(move |stopped| async move {
            rkube_apiserver::run(api_config, listener, async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        let mut kube_config = kube::Config::new(url.parse().unwrap());
        kube_config.default_namespace = "default".into();
        let client = Client::try_from(kube_config).unwrap();
        let namespaces: Api<Namespace> = Api::all(client.clone());
        wait_for("API server up", TIMEOUT, || async {
            namespaces.get("default").await.is_ok()
        })
        .await;

        let sim_config = SimConfig {
            renew_interval: Duration::from_millis(500),
            ..SimConfig::default()
        };
        let nodes = SimCluster::start_with(
            client.clone(),
            sim_config,
            node_count,
            NodeTemplate::default(),
        )
        .await
        .unwrap();

        let scheduler_config =
            rkube_scheduler::Config::new(rkube_scheduler::ApiServerTarget::Url(url.clone()));
        let scheduler_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let scheduler = Component::spawn(move |stopped| async move {
            rkube_scheduler::run(scheduler_config, scheduler_listener, async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });

        let cm_config = test_config(&url, controllers);
        let cm_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let controller_manager = Component::spawn(move |stopped| async move {
            rkube_controller_manager::run(cm_config, cm_listener, async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        Cluster {
            client,
            url,
            nodes,
            controller_manager,
            scheduler,
            api,
            _dir: dir,
        }
    }

    pub async fn stop(mut self) {
        self.controller_manager.stop().await;
        self.scheduler.stop().await;
        self.api.stop().await;
    }

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
}

impl Cluster {
    /// [`wait_for`], printing the cluster's workloads if it times out.
    pub async fn wait_for<F, Fut>(&self, what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            if check().await {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                self.dump().await;
                panic!("timed out waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
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
                                 "spec": {"containers": [{"name": "c", "image": image,
                                     "resources": {"requests": {"cpu": "100m"}}}]}}}})
}
