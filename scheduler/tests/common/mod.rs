//! Test harness: an in-process API server (embedded store in a temp dir), simulated nodes,
//! and the scheduler, all on loopback.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Namespace, Pod};
use kube::api::{Api, ListParams, PostParams};
use kube::Client;
use rkube_apiserver::StorageConfig;
use rkube_simnode::{NodeTemplate, SimCluster, SimConfig};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const WAIT: Duration = Duration::from_secs(30);

pub struct ApiServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl ApiServer {
    pub async fn start(data_dir: &std::path::Path, addr: Option<SocketAddr>) -> ApiServer {
        let listener = match addr {
            // The previous server's port may linger for a moment after it stopped.
            Some(a) => {
                let what = format!("{a} to be free again");
                rkube_testkit::wait_for_value(&what, Duration::from_secs(5), || async {
                    TcpListener::bind(a).await.ok()
                })
                .await
            }
            None => TcpListener::bind("127.0.0.1:0").await.unwrap(),
        };
        let addr = listener.local_addr().unwrap();
        let config = rkube_apiserver::Config::new(StorageConfig::Embedded {
            data_dir: data_dir.to_path_buf(),
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            rkube_apiserver::run(config, listener, async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        let server = ApiServer {
            addr,
            stop: Some(stop),
            task: Some(task),
        };
        let client = server.client();
        let namespaces: Api<Namespace> = Api::all(client);
        rkube_testkit::wait_for("the API server to come up", WAIT, || async {
            namespaces.get("default").await.is_ok()
        })
        .await;
        server
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn client(&self) -> Client {
        Client::try_from(kube::Config::new(self.url().parse().unwrap())).unwrap()
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(WAIT, task).await;
        }
    }
}

pub struct Scheduler {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    pub health: SocketAddr,
}

impl Scheduler {
    pub async fn start(url: String) -> Scheduler {
        Scheduler::start_with(url, |_| {}).await
    }

    /// Starts the scheduler with the test defaults changed by `configure`.
    pub async fn start_with(
        url: String,
        configure: impl FnOnce(&mut rkube_scheduler::Config),
    ) -> Scheduler {
        let mut config = rkube_scheduler::Config::new(rkube_scheduler::ApiServerTarget::Url(url));
        config.bind_concurrency = 16;
        configure(&mut config);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let health = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            rkube_scheduler::run(config, listener, async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        Scheduler {
            stop: Some(stop),
            task: Some(task),
            health,
        }
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(WAIT, task).await;
        }
    }
}

/// API server + scheduler + simulated nodes.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub api: ApiServer,
    pub scheduler: Scheduler,
    pub nodes: SimCluster,
    pub client: Client,
}

impl Env {
    pub async fn start(node_count: usize, template: NodeTemplate) -> Env {
        Env::start_with(node_count, template, |_| {}).await
    }

    /// Like [`Env::start`], with the scheduler's configuration changed by `configure`.
    pub async fn start_with(
        node_count: usize,
        template: NodeTemplate,
        configure: impl FnOnce(&mut rkube_scheduler::Config),
    ) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let api = ApiServer::start(dir.path(), None).await;
        let client = api.client();
        let config = SimConfig {
            renew_interval: Duration::from_secs(2),
            ..SimConfig::default()
        };
        let nodes = SimCluster::start_with(client.clone(), config, node_count, template)
            .await
            .unwrap();
        let scheduler = Scheduler::start_with(api.url(), configure).await;
        Env {
            dir,
            api,
            scheduler,
            nodes,
            client,
        }
    }

    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), "default")
    }

    pub async fn create_pod(&self, pod: Value) -> Pod {
        let pod: Pod = serde_json::from_value(pod).unwrap();
        self.pods()
            .create(&PostParams::default(), &pod)
            .await
            .unwrap()
    }

    /// Waits until the pod is bound; returns its node.
    pub async fn wait_bound(&self, name: &str) -> String {
        let node = std::cell::RefCell::new(None);
        rkube_testkit::wait_for(&format!("pod {name} to be bound"), WAIT, || async {
            let bound = self
                .pods()
                .get(name)
                .await
                .unwrap()
                .spec
                .and_then(|s| s.node_name);
            let is_bound = bound.is_some();
            *node.borrow_mut() = bound;
            is_bound
        })
        .await;
        node.into_inner().unwrap_or_default()
    }

    /// Waits until the pod reports PodScheduled=False with `expected` (earlier attempts may
    /// have seen fewer nodes); fails showing the last message seen.
    pub async fn wait_unschedulable(&self, name: &str, expected: &str) {
        let last_message = std::cell::RefCell::new(None);
        let reported = rkube_testkit::poll_until(WAIT, || async {
            let pod = self.pods().get(name).await.unwrap();
            let condition = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|cs| {
                    cs.iter()
                        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
                })
                .cloned();
            let message = condition.as_ref().and_then(|c| c.message.clone());
            let matched = message.as_deref() == Some(expected);
            if matched {
                assert_eq!(
                    condition.and_then(|c| c.reason).as_deref(),
                    Some("Unschedulable")
                );
            }
            *last_message.borrow_mut() = message;
            matched
        })
        .await;
        if reported.is_err() {
            assert_eq!(
                last_message.into_inner().as_deref(),
                Some(expected),
                "pod {name} never reported the expected reason"
            );
        }
    }

    /// Waits for an Event about the pod with this reason (and message, if given); returns it.
    pub async fn wait_event(&self, pod: &str, reason: &str, message: Option<&str>) -> Event {
        let events: Api<Event> = Api::namespaced(self.client.clone(), "default");
        let what = format!("a {reason} event for {pod}");
        rkube_testkit::wait_for_value(&what, WAIT, || async {
            let list = events.list(&ListParams::default()).await.unwrap();
            list.items.into_iter().find(|e| {
                e.involved_object.name.as_deref() == Some(pod)
                    && e.reason.as_deref() == Some(reason)
                    && message.is_none_or(|m| e.message.as_deref() == Some(m))
            })
        })
        .await
    }

    /// Every Event about the pod with this reason.
    pub async fn events_for(&self, pod: &str, reason: &str) -> Vec<Event> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), "default");
        let list = events.list(&ListParams::default()).await.unwrap();
        list.items
            .into_iter()
            .filter(|e| {
                e.involved_object.name.as_deref() == Some(pod)
                    && e.reason.as_deref() == Some(reason)
            })
            .collect()
    }

    pub async fn stop(self) {
        self.scheduler.stop().await;
        self.nodes.shutdown().await;
        self.api.stop().await;
    }
}

pub fn pod(name: &str, cpu: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
           "spec": {"containers": [{"name": "c", "image": "nginx", "resources": {"requests": {"cpu": cpu, "memory": "64Mi"}}}]}})
}

/// A pod with extra fields merged into its spec.
pub fn pod_with(name: &str, cpu: &str, spec: Value) -> Value {
    let mut p = pod(name, cpu);
    if let (Some(target), Some(extra)) = (p["spec"].as_object_mut(), spec.as_object()) {
        for (k, v) in extra {
            target.insert(k.clone(), v.clone());
        }
    }
    p
}
