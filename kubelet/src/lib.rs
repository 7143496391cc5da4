//! rkubelet: the node agent. It registers its Node and keeps the node Lease renewed, runs
//! the pods bound to it through the [`rkube_cri`] traits (container runtime, images, pod
//! network), reports their status, and serves logs and exec over HTTP for the API server
//! to proxy.
//!
//! Map: [`node`] (Node object, status, Lease), [`manager`] (pod watch, one worker per pod),
//! [`worker`] (the per-pod sync), [`spec`]/[`env`]/[`volumes`] (what a container is
//! created from), [`status`] (pod status), [`prober`] (probe schedules over [`probe`]),
//! [`server`] (HTTP endpoints over the [`api::KubeletApi`] seam), [`logrotate`] (container
//! log rotation, and the reader that spans rotated files).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod api;
pub mod backoff;
pub mod config;
pub mod context;
pub mod env;
pub mod images;
pub mod logrotate;
pub mod manager;
pub mod node;
pub mod probe;
pub mod prober;
pub mod server;
pub mod spec;
pub mod status;
pub mod volumes;
pub mod worker;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rkube_cri::{labels, ContainerRuntime, ContainerState, LogPaths};
use rkube_runtime::EventRecorder;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use api::{KubeletApi, LookupError, PodPorts};
pub use config::{KubeletConfig, NodeRuntime};
use context::NodeContext;

#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("serving HTTP: {0}")]
    Serve(#[from] std::io::Error),
}

pub use rkube_runtime::component::hostname;

/// Imports every `*.tar` of `dir` (sorted, so the order is stable); failures are logged.
pub async fn import_images(images: &dyn rkube_cri::ImageService, dir: &std::path::Path) -> usize {
    let mut tarballs: Vec<_> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "tar"))
            .collect(),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "reading the image directory failed");
            return 0;
        }
    };
    tarballs.sort();
    let mut imported = 0;
    for tarball in tarballs {
        match images.import(&tarball).await {
            Ok(list) => {
                imported += list.len();
                for image in list {
                    tracing::info!(image = %image.name, from = %tarball.display(), "imported image");
                }
            }
            Err(e) => {
                tracing::warn!(tarball = %tarball.display(), error = %e, "importing image failed")
            }
        }
    }
    imported
}

/// The HTTP server's view of this process's nodes.
struct Nodes(Vec<Arc<NodeContext>>);

impl Nodes {
    fn pod(
        &self,
        namespace: &str,
        pod: &str,
    ) -> Result<(Arc<NodeContext>, Arc<k8s_openapi::api::core::v1::Pod>), LookupError> {
        for node in &self.0 {
            if let Some(p) = node
                .pods
                .read()
                .get(&(namespace.to_string(), pod.to_string()))
            {
                return Ok((node.clone(), p.clone()));
            }
        }
        Err(LookupError::NotFound(format!(
            "pod {pod:?} in namespace {namespace:?} not found on this node"
        )))
    }

    fn container_name(
        pod: &k8s_openapi::api::core::v1::Pod,
        container: Option<&str>,
    ) -> Result<String, LookupError> {
        let spec = pod.spec.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let all: Vec<String> = spec
            .init_containers
            .iter()
            .flatten()
            .chain(spec.containers.iter())
            .map(|c| c.name.clone())
            .collect();
        match container.filter(|c| !c.is_empty()) {
            Some(c) if all.iter().any(|n| n == c) => Ok(c.to_string()),
            Some(c) => Err(LookupError::BadRequest(format!(
                "container {c} is not valid for pod {name}"
            ))),
            None if spec.containers.len() == 1 => Ok(spec.containers[0].name.clone()),
            None => Err(LookupError::BadRequest(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                spec.containers
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            ))),
        }
    }

    async fn instances(
        node: &NodeContext,
        uid: &str,
        container: &str,
    ) -> Vec<rkube_cri::ContainerInfo> {
        let all = node.runtime.runtime.list().await.unwrap_or_default();
        worker::group_instances(all, uid)
            .remove(container)
            .unwrap_or_default()
    }
}

#[async_trait]
impl KubeletApi for Nodes {
    async fn running_container(
        &self,
        namespace: &str,
        pod: &str,
        container: Option<&str>,
    ) -> Result<String, LookupError> {
        let (node, p) = self.pod(namespace, pod)?;
        let name = Self::container_name(&p, container)?;
        let uid = p.metadata.uid.clone().unwrap_or_default();
        Self::instances(&node, &uid, &name)
            .await
            .into_iter()
            .find(|c| matches!(c.state, ContainerState::Running { .. }))
            .map(|c| c.id)
            .ok_or_else(|| {
                LookupError::BadRequest(format!("container {name} is not running in pod {pod}"))
            })
    }

    async fn log_paths(
        &self,
        namespace: &str,
        pod: &str,
        container: Option<&str>,
        previous: bool,
    ) -> Result<LogPaths, LookupError> {
        let (node, p) = self.pod(namespace, pod)?;
        let name = Self::container_name(&p, container)?;
        let uid = p.metadata.uid.clone().unwrap_or_default();
        let instances = Self::instances(&node, &uid, &name).await;
        let current = instances
            .first()
            .and_then(|c| c.labels.get(labels::RESTART_COUNT))
            .and_then(|r| r.parse::<u32>().ok());
        let wanted = match (current, previous) {
            (Some(n), false) => Some(n),
            (Some(n), true) if n > 0 => Some(n - 1),
            _ => None,
        };
        let paths = wanted
            .map(|n| node.log_paths(&uid, &name, n))
            .filter(|p| p.stdout.exists());
        paths.ok_or_else(|| {
            if previous {
                LookupError::BadRequest(format!(
                    "previous terminated container {name:?} in pod {pod:?} not found"
                ))
            } else {
                LookupError::BadRequest(format!(
                    "container {name:?} in pod {pod:?} is waiting to start: ContainerCreating"
                ))
            }
        })
    }

    fn runtime_for(&self, _container_id: &str) -> Option<Arc<dyn ContainerRuntime>> {
        // Every node of a process shares how containers are reached only when there is
        // one; with simulated nodes the first node's runtime is asked.
        self.0.first().map(|n| n.runtime.runtime.clone())
    }

    async fn pod_ports(&self, namespace: &str, pod: &str) -> Result<PodPorts, LookupError> {
        let (node, p) = self.pod(namespace, pod)?;
        let uid = p.metadata.uid.clone().unwrap_or_default();
        if p.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
            return Ok(PodPorts { uid, netns: None });
        }
        match node.runtime.network.status(&uid).await {
            Ok(Some(network)) => Ok(PodPorts {
                uid,
                netns: Some(network.netns_path),
            }),
            Ok(None) => Err(LookupError::BadRequest(format!(
                "pod {pod:?} in namespace {namespace:?} has no network yet"
            ))),
            Err(e) => Err(LookupError::BadRequest(format!(
                "the network of pod {pod:?} in namespace {namespace:?}: {e}"
            ))),
        }
    }
}

/// Runs the kubelet (or, with several runtimes in `config`, that many simulated nodes)
/// until `shutdown` completes. Containers are left running on shutdown.
pub async fn run(
    config: KubeletConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), KubeletError> {
    if config.runtimes.is_empty() {
        return Err(KubeletError::Config(
            "no container runtime configured".into(),
        ));
    }
    let port = listener.local_addr()?.port();
    let config = Arc::new(config);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut nodes = Vec::new();
    for (index, runtime) in config.runtimes.iter().enumerate() {
        let name = config.node_name_at(index);
        let root = if config.runtimes.len() > 1 {
            config.root_dir.join(&name)
        } else {
            config.root_dir.clone()
        };
        let node = Arc::new(NodeContext {
            name: name.clone(),
            client: config.client.clone(),
            runtime: runtime.clone(),
            config: config.clone(),
            host_ip: config.node_ip.to_string(),
            root,
            recorder: EventRecorder::new(config.client.clone(), "kubelet", &name),
            probes: Arc::new(prober::RuntimeProbes),
            pods: Default::default(),
        });
        nodes.push(node.clone());
        let facts = node::NodeFacts {
            name: name.clone(),
            internal_ip: config.node_ip.to_string(),
            hostname: if config.runtimes.len() > 1 {
                name.clone()
            } else {
                hostname()
            },
            pod_cidr: config.pod_cidr.clone(),
            max_pods: config.max_pods,
            capacity: node::HostCapacity::read(),
            runtime_version: runtime.version.clone(),
            kubelet_port: port,
        };
        let stop = stop_rx.clone();
        tasks.spawn(run_node(node, facts, stop));
    }
    let api: Arc<dyn KubeletApi> = Arc::new(Nodes(nodes));
    let mut http_stop = stop_rx.clone();
    let http = tokio::spawn(async move {
        axum::serve(listener, server::router(api))
            .with_graceful_shutdown(async move {
                let _ = http_stop.changed().await;
            })
            .await
    });
    shutdown.await;
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    match http.await {
        Ok(result) => result?,
        Err(e) => {
            return Err(KubeletError::Config(format!(
                "HTTP server task failed: {e}"
            )))
        }
    }
    Ok(())
}

async fn run_node(node: Arc<NodeContext>, facts: node::NodeFacts, mut stop: watch::Receiver<bool>) {
    let config = node.config.clone();
    if let Some(dir) = &config.image_dir {
        import_images(node.runtime.images.as_ref(), dir).await;
    }
    let mut delay = Duration::from_millis(200);
    while let Err(e) = node::register(&node.client, &facts).await {
        tracing::warn!(node = %node.name, error = %e, "registering node failed; retrying");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => return,
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
    let mut tasks = JoinSet::new();
    let runtime = node.runtime.runtime.clone();
    tasks.spawn(node::status_loop(
        node.client.clone(),
        facts,
        Duration::from_secs(10).min(config.status_report_interval),
        config.status_report_interval,
        move || {
            let runtime = runtime.clone();
            async move {
                runtime
                    .list()
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("container runtime is down: {e}"))
            }
        },
        stop.clone(),
    ));
    tasks.spawn(node::lease_loop(
        node.client.clone(),
        node.name.clone(),
        config.lease_duration_seconds,
        config.lease_renew_interval,
        stop.clone(),
    ));
    tasks.spawn(logrotate::run(
        node.root.join("pods"),
        config.container_log_rotation,
        config.container_log_monitor_interval,
        stop.clone(),
    ));
    tasks.spawn(manager::PodManager::run(node, stop));
    while tasks.join_next().await.is_some() {}
}
