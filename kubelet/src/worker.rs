//! One pod's worker: a level-triggered sync that compares the pod spec with what the
//! runtime runs and acts (network, volumes, init containers in order, containers,
//! restarts with backoff, probes, termination), then reports the status if it changed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use rkube_cri::{
    labels, ContainerConfig, ContainerInfo, ContainerState, ImageInfo, PodNetworkStatus,
};
use rkube_runtime::EventType;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::{watch, Notify};

use crate::backoff::Backoff;
use crate::context::NodeContext;
use crate::env::{self, PodFacts, Sources};
use crate::images;
use crate::prober::{self, ContainerProbes, ProbeContext};
use crate::spec::{self, BindMount, SpecError, SpecInput};
use crate::status::{self, ContainerView, PodView, Waiting};
use crate::volumes;

/// How soon to look again when something outside the kubelet is awaited (network,
/// a missing ConfigMap): soon, but not a busy loop.
const RETRY_SOON: Duration = Duration::from_secs(2);

enum Outcome {
    /// Sync again after this long (or earlier on a trigger).
    Requeue(Duration),
    /// The pod is gone and everything of it removed; the worker ends.
    Finished,
}

/// A container's spec hash: a changed spec means the container is replaced.
pub fn spec_hash(container: &Container) -> String {
    let bytes = serde_json::to_vec(container).unwrap_or_default();
    Sha256::digest(&bytes)
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn restart_count(info: &ContainerInfo) -> u32 {
    info.labels
        .get(labels::RESTART_COUNT)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A pod's runtime instances by container name, newest first.
pub fn group_instances(
    mut all: Vec<ContainerInfo>,
    uid: &str,
) -> HashMap<String, Vec<ContainerInfo>> {
    all.retain(|c| c.labels.get(labels::POD_UID).map(String::as_str) == Some(uid));
    all.sort_by(|a, b| {
        restart_count(b)
            .cmp(&restart_count(a))
            .then(b.created_at.cmp(&a.created_at))
    });
    let mut by_name: HashMap<String, Vec<ContainerInfo>> = HashMap::new();
    for c in all {
        let name = c
            .labels
            .get(labels::CONTAINER_NAME)
            .cloned()
            .unwrap_or_default();
        by_name.entry(name).or_default().push(c);
    }
    by_name
}

fn is_running(info: &ContainerInfo) -> bool {
    matches!(info.state, ContainerState::Running { .. })
}

fn pod_label(pod: &Pod) -> String {
    format!(
        "{}_{}({})",
        pod.metadata.name.as_deref().unwrap_or(""),
        pod.metadata.namespace.as_deref().unwrap_or(""),
        pod.metadata.uid.as_deref().unwrap_or("")
    )
}

pub struct PodWorker {
    node: Arc<NodeContext>,
    uid: String,
    crash_backoff: Backoff,
    pull_backoff: Backoff,
    probes: HashMap<String, ContainerProbes>,
    changed: Arc<Notify>,
    last_status: Option<Value>,
    start_time: Option<DateTime<Utc>>,
    network: Option<PodNetworkStatus>,
    /// Kubelet-imposed waiting reasons of this sync, by container name.
    waiting: HashMap<String, Waiting>,
    /// Warning events already recorded, so a condition that persists is reported once.
    reported: HashSet<String>,
    pending: Option<Waiting>,
}

impl PodWorker {
    pub fn new(node: Arc<NodeContext>, uid: String, changed: Arc<Notify>) -> PodWorker {
        let config = node.config.clone();
        PodWorker {
            node,
            uid,
            crash_backoff: Backoff::new(config.backoff_initial, config.backoff_max),
            pull_backoff: Backoff::new(config.backoff_initial, config.backoff_max),
            probes: HashMap::new(),
            changed,
            last_status: None,
            start_time: None,
            network: None,
            waiting: HashMap::new(),
            reported: HashSet::new(),
            pending: None,
        }
    }

    /// Runs until the pod is gone (then everything of it is removed) or shutdown (then
    /// its containers are left running for the next kubelet).
    pub async fn run(
        mut self,
        mut pod_rx: watch::Receiver<Option<Arc<Pod>>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let pod = pod_rx.borrow_and_update().clone();
            let outcome = match pod {
                Some(pod) => self.sync(&pod).await,
                None => {
                    self.teardown(None, Duration::from_secs(2)).await;
                    Outcome::Finished
                }
            };
            let wait = match outcome {
                Outcome::Finished => return,
                Outcome::Requeue(d) => d,
            };
            tokio::select! {
                changed = pod_rx.changed() => if changed.is_err() { return },
                _ = self.changed.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    fn warn_once(
        &mut self,
        pod: &Pod,
        container: Option<&str>,
        key: String,
        reason: &str,
        message: String,
    ) {
        if self.reported.insert(key) {
            self.node
                .event(pod, container, EventType::Warning, reason, message);
        }
    }

    async fn instances(&self) -> Result<HashMap<String, Vec<ContainerInfo>>, String> {
        let all = self
            .node
            .runtime
            .runtime
            .list()
            .await
            .map_err(|e| e.to_string())?;
        Ok(group_instances(all, &self.uid))
    }

    async fn sync(&mut self, pod: &Pod) -> Outcome {
        if pod.metadata.deletion_timestamp.is_some() {
            let grace = pod
                .metadata
                .deletion_grace_period_seconds
                .or_else(|| {
                    pod.spec
                        .as_ref()
                        .and_then(|s| s.termination_grace_period_seconds)
                })
                .unwrap_or(30)
                .max(0);
            return self.terminate(pod, Duration::from_secs(grace as u64)).await;
        }
        self.waiting.clear();
        self.pending = None;
        if self.start_time.is_none() {
            self.start_time = pod
                .status
                .as_ref()
                .and_then(|s| s.start_time.as_ref())
                .and_then(|t| DateTime::parse_from_rfc3339(&t.0.to_string()).ok())
                .map(|t| t.with_timezone(&Utc))
                .or_else(|| Some(Utc::now()));
        }
        let mut requeue = self.node.config.resync_interval;
        let prepared = self.prepare_pod(pod).await;
        let instances = match self.instances().await {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(pod = %pod_label(pod), error = %e, "listing containers failed");
                return Outcome::Requeue(RETRY_SOON);
            }
        };
        match prepared {
            Ok(prepared) => {
                if let Some(d) = self.run_containers(pod, &prepared, &instances).await {
                    requeue = requeue.min(d);
                }
            }
            Err(waiting) => {
                self.pending = Some(waiting);
                requeue = RETRY_SOON;
            }
        }
        let instances = match self.instances().await {
            Ok(i) => i,
            Err(_) => instances,
        };
        self.update_probes(pod, &instances);
        self.report_status(pod, &instances).await;
        Outcome::Requeue(requeue)
    }

    /// Network, /etc/hosts and resolv.conf, volumes. An error says why containers wait.
    async fn prepare_pod(&mut self, pod: &Pod) -> Result<Prepared, Waiting> {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let pod_dir = self.node.pod_dir(&self.uid);
        if let Err(e) = std::fs::create_dir_all(&pod_dir) {
            return Err(Waiting::new(
                "ContainerCreating",
                format!("creating pod directory: {e}"),
            ));
        }
        if self.network.is_none() {
            let network = &self.node.runtime.network;
            let existing = network.status(&self.uid).await.ok().flatten();
            let result = match existing {
                Some(s) => Ok(s),
                None => network.setup(&self.uid, &namespace, &name).await,
            };
            match result {
                Ok(s) => self.network = Some(s),
                Err(e) => {
                    let message = format!("Failed to create pod sandbox: {e}");
                    self.warn_once(
                        pod,
                        None,
                        format!("sandbox:{e}"),
                        "FailedCreatePodSandBox",
                        message.clone(),
                    );
                    return Err(Waiting::new("ContainerCreating", message));
                }
            }
        }
        let network = self
            .network
            .clone()
            .ok_or_else(|| Waiting::new("ContainerCreating", "no pod network"))?;
        let facts = PodFacts {
            pod_ip: network.ip.clone(),
            host_ip: self.node.host_ip.clone(),
            node_name: self.node.name.clone(),
        };
        let hostname = spec::pod_hostname(pod);
        let hosts = pod_dir.join("etc-hosts");
        let resolv = pod_dir.join("resolv.conf");
        let config = &self.node.config;
        let written = write_if_changed(&hosts, &volumes::hosts_file(&network.ip, &hostname, pod))
            .and_then(|_| {
                write_if_changed(
                    &resolv,
                    &volumes::resolv_conf(&namespace, &config.cluster_domain, &config.cluster_dns),
                )
            });
        if let Err(e) = written {
            return Err(Waiting::new(
                "ContainerCreating",
                format!("writing /etc/hosts: {e}"),
            ));
        }
        let sources = self.fetch_sources(pod).await;
        let volume_paths = match volumes::prepare(&pod_dir, pod, &facts, &sources) {
            Ok(p) => p,
            Err(e) => {
                let message = e.to_string();
                self.warn_once(
                    pod,
                    None,
                    format!("mount:{message}"),
                    "FailedMount",
                    message.clone(),
                );
                return Err(Waiting::new("ContainerCreating", message));
            }
        };
        Ok(Prepared {
            pod_dir,
            network,
            facts,
            sources,
            volume_paths,
            hosts: hosts.to_string_lossy().into_owned(),
            resolv: resolv.to_string_lossy().into_owned(),
        })
    }

    async fn fetch_sources(&self, pod: &Pod) -> Sources {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let (mut config_maps, mut secrets) = volumes::referenced_objects(pod);
        let spec = pod.spec.as_ref();
        for c in spec.iter().flat_map(|s| {
            s.init_containers
                .iter()
                .flatten()
                .chain(s.containers.iter())
        }) {
            let (cms, ss) = env::referenced_objects(c);
            config_maps.extend(cms);
            secrets.extend(ss);
        }
        let mut sources = Sources::default();
        let cm_api: Api<ConfigMap> = Api::namespaced(self.node.client.clone(), &namespace);
        for name in config_maps {
            if let std::collections::btree_map::Entry::Vacant(e) =
                sources.config_maps.entry(name.clone())
            {
                e.insert(cm_api.get_opt(&name).await.ok().flatten());
            }
        }
        let secret_api: Api<Secret> = Api::namespaced(self.node.client.clone(), &namespace);
        for name in secrets {
            if let std::collections::btree_map::Entry::Vacant(e) =
                sources.secrets.entry(name.clone())
            {
                e.insert(secret_api.get_opt(&name).await.ok().flatten());
            }
        }
        sources
    }

    /// Starts, restarts or kills containers as the spec and restart policy say; returns
    /// when to look again for a backoff that will expire.
    async fn run_containers(
        &mut self,
        pod: &Pod,
        prepared: &Prepared,
        instances: &HashMap<String, Vec<ContainerInfo>>,
    ) -> Option<Duration> {
        let spec = pod.spec.clone().unwrap_or_default();
        let policy = status::restart_policy(pod).to_string();
        let mut requeue: Option<Duration> = None;
        for c in spec.init_containers.iter().flatten() {
            let latest = instances.get(&c.name).and_then(|v| v.first());
            match latest.map(|i| &i.state) {
                Some(ContainerState::Exited { exit_code: 0, .. }) => continue,
                Some(ContainerState::Running { .. }) => return requeue,
                Some(ContainerState::Exited { .. }) if policy == "Never" => return requeue,
                Some(ContainerState::Exited { .. }) => {
                    let latest = latest.cloned();
                    requeue = earliest(
                        requeue,
                        self.restart_with_backoff(pod, c, "init", prepared, latest)
                            .await,
                    );
                    return requeue;
                }
                Some(ContainerState::Created) | Some(ContainerState::Unknown) => {
                    let latest = latest.cloned();
                    requeue = earliest(
                        requeue,
                        self.restart_with_backoff(pod, c, "init", prepared, latest)
                            .await,
                    );
                    return requeue;
                }
                None => {
                    requeue = earliest(requeue, self.start(pod, c, "init", prepared, None).await);
                    return requeue;
                }
            }
        }
        for c in &spec.containers {
            let latest = instances.get(&c.name).and_then(|v| v.first()).cloned();
            match latest.as_ref().map(|i| &i.state) {
                None => {
                    requeue = earliest(requeue, self.start(pod, c, "regular", prepared, None).await)
                }
                Some(ContainerState::Running { .. }) => {
                    let Some(info) = latest.as_ref() else {
                        continue;
                    };
                    let liveness = self
                        .probes
                        .get(&info.id)
                        .and_then(|p| p.status.lock().liveness_failure.clone());
                    let hash_changed = info.labels.get(labels::SPEC_HASH).map(String::as_str)
                        != Some(spec_hash(c).as_str());
                    let reason = if let Some(message) = liveness {
                        Some(message)
                    } else if hash_changed {
                        Some("Container definition changed, will be restarted".to_string())
                    } else {
                        None
                    };
                    if let Some(message) = reason {
                        self.node
                            .event(pod, Some(&c.name), EventType::Normal, "Killing", message);
                        self.probes.remove(&info.id);
                        self.stop_container(&info.id, grace_period(pod)).await;
                        requeue = earliest(requeue, Some(Duration::ZERO));
                    }
                }
                Some(ContainerState::Exited { exit_code, .. }) => {
                    let restart = policy == "Always" || (policy == "OnFailure" && *exit_code != 0);
                    if restart {
                        requeue = earliest(
                            requeue,
                            self.restart_with_backoff(pod, c, "regular", prepared, latest.clone())
                                .await,
                        );
                    }
                }
                Some(ContainerState::Created) | Some(ContainerState::Unknown) => {
                    requeue = earliest(
                        requeue,
                        self.restart_with_backoff(pod, c, "regular", prepared, latest.clone())
                            .await,
                    );
                }
            }
        }
        requeue
    }

    async fn restart_with_backoff(
        &mut self,
        pod: &Pod,
        container: &Container,
        kind: &str,
        prepared: &Prepared,
        latest: Option<ContainerInfo>,
    ) -> Option<Duration> {
        let key = container.name.clone();
        if let Some(ContainerState::Exited {
            started_at: Some(started),
            finished_at,
            ..
        }) = latest.as_ref().map(|l| &l.state)
        {
            let ran = (*finished_at - *started).to_std().unwrap_or_default();
            if ran >= self.node.config.backoff_reset {
                self.crash_backoff.reset(&key);
            }
        }
        if let Some(remaining) = self.crash_backoff.remaining(&key, Instant::now()) {
            let delay = self.crash_backoff.delay(&key).unwrap_or_default();
            let message = format!(
                "back-off {} restarting failed container={} pod={}",
                format_duration(delay),
                container.name,
                pod_label(pod)
            );
            let event_key = format!(
                "backoff:{}",
                latest.as_ref().map(|l| l.id.as_str()).unwrap_or("")
            );
            self.warn_once(
                pod,
                Some(&container.name),
                event_key,
                "BackOff",
                format!(
                    "Back-off restarting failed container {} in pod {}",
                    container.name,
                    pod_label(pod)
                ),
            );
            self.waiting.insert(
                container.name.clone(),
                Waiting::new("CrashLoopBackOff", message),
            );
            return Some(remaining);
        }
        self.crash_backoff.record_retry(&key, Instant::now());
        self.start(pod, container, kind, prepared, latest).await
    }

    async fn ensure_image(
        &mut self,
        pod: &Pod,
        container: &Container,
    ) -> Result<ImageInfo, (Waiting, Option<Duration>)> {
        let image = container.image.clone().unwrap_or_default();
        let images = self.node.runtime.images.clone();
        let policy = images::pull_policy(container);
        let present = images.image_status(&image).await.ok().flatten();
        let name = container.name.as_str();
        match (policy.as_str(), present) {
            ("Never", Some(info)) => return Ok(info),
            ("Never", None) => {
                let message =
                    format!("Container image {image:?} is not present with pull policy of Never");
                self.warn_once(
                    pod,
                    Some(name),
                    format!("neverpull:{name}"),
                    "ErrImageNeverPull",
                    message.clone(),
                );
                return Err((Waiting::new("ErrImageNeverPull", message), None));
            }
            ("IfNotPresent", Some(info)) => {
                self.node.event(
                    pod,
                    Some(name),
                    EventType::Normal,
                    "Pulled",
                    format!("Container image {image:?} already present on machine"),
                );
                return Ok(info);
            }
            _ => {}
        }
        let key = format!("{name}/{image}");
        if let Some(remaining) = self.pull_backoff.remaining(&key, Instant::now()) {
            let message = format!("Back-off pulling image {image:?}");
            self.warn_once(
                pod,
                Some(name),
                format!("pullbackoff:{key}:{:?}", self.pull_backoff.delay(&key)),
                "BackOff",
                message.clone(),
            );
            return Err((Waiting::new("ImagePullBackOff", message), Some(remaining)));
        }
        self.node.event(
            pod,
            Some(name),
            EventType::Normal,
            "Pulling",
            format!("Pulling image {image:?}"),
        );
        let auth = self.pull_auth(pod, &image).await;
        let started = Instant::now();
        match images.pull(&image, auth.as_ref()).await {
            Ok(info) => {
                self.pull_backoff.reset(&key);
                self.node.event(
                    pod,
                    Some(name),
                    EventType::Normal,
                    "Pulled",
                    format!(
                        "Successfully pulled image {image:?} in {:.3}s",
                        started.elapsed().as_secs_f64()
                    ),
                );
                Ok(info)
            }
            Err(e) => {
                self.pull_backoff.record_retry(&key, Instant::now());
                let message = e.to_string();
                self.node.event(
                    pod,
                    Some(name),
                    EventType::Warning,
                    "Failed",
                    format!("Failed to pull image {image:?}: {message}"),
                );
                self.node.event(
                    pod,
                    Some(name),
                    EventType::Warning,
                    "Failed",
                    "Error: ErrImagePull",
                );
                // Half-way through the backoff the reason turns into ImagePullBackOff.
                let retry = self
                    .pull_backoff
                    .remaining(&key, Instant::now())
                    .map(|d| d / 2);
                Err((Waiting::new("ErrImagePull", message), retry))
            }
        }
    }

    async fn pull_auth(&self, pod: &Pod, image: &str) -> Option<rkube_cri::RegistryAuth> {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let api: Api<Secret> = Api::namespaced(self.node.client.clone(), &namespace);
        let mut secrets = Vec::new();
        for reference in pod
            .spec
            .iter()
            .flat_map(|s| s.image_pull_secrets.iter().flatten())
        {
            if let Ok(Some(secret)) = api.get_opt(&reference.name).await {
                secrets.push(secret);
            }
        }
        images::auth_for(image, &secrets)
    }

    /// Creates and starts a new instance of `container` (replacing `latest`).
    async fn start(
        &mut self,
        pod: &Pod,
        container: &Container,
        kind: &str,
        prepared: &Prepared,
        latest: Option<ContainerInfo>,
    ) -> Option<Duration> {
        let name = container.name.clone();
        let image = match self.ensure_image(pod, container).await {
            Ok(image) => image,
            Err((waiting, retry)) => {
                self.waiting.insert(name, waiting);
                return retry.or(Some(RETRY_SOON));
            }
        };
        let config_error = |worker: &mut PodWorker, reason: &str, message: String| {
            worker.warn_once(
                pod,
                Some(&container.name),
                format!("{reason}:{}:{message}", container.name),
                "Failed",
                format!("Error: {message}"),
            );
            worker
                .waiting
                .insert(container.name.clone(), Waiting::new(reason, message));
            Some(RETRY_SOON)
        };
        let env = match env::container_env(pod, container, &prepared.facts, &prepared.sources) {
            Ok(env) => env,
            Err(message) => return config_error(self, "CreateContainerConfigError", message),
        };
        let mounts = match container_mounts(container, prepared) {
            Ok(m) => m,
            Err(message) => return config_error(self, "CreateContainerConfigError", message),
        };
        let id = uuid::Uuid::new_v4().simple().to_string();
        let built = spec::build_spec(&SpecInput {
            pod,
            container,
            container_id: &id,
            image: &image.config,
            env: &env,
            netns_path: &prepared.network.netns_path,
            mounts: &mounts,
        });
        let oci = match built {
            Ok(s) => s,
            Err(SpecError::Config(m)) => {
                return config_error(self, "CreateContainerConfigError", m)
            }
            Err(SpecError::Create(m)) => return config_error(self, "CreateContainerError", m),
        };
        let restart = latest.as_ref().map(|l| restart_count(l) + 1).unwrap_or(0);
        let logs = self.node.log_paths(&self.uid, &name, restart);
        let prepared_logs = logs
            .stdout
            .parent()
            .map(std::fs::create_dir_all)
            .unwrap_or(Ok(()))
            .and_then(|_| std::fs::File::create(&logs.stdout))
            .and_then(|_| std::fs::File::create(&logs.stderr));
        if let Err(e) = prepared_logs {
            return config_error(
                self,
                "CreateContainerError",
                format!("creating log files: {e}"),
            );
        }
        let container_labels = BTreeMap::from([
            (labels::POD_UID.to_string(), self.uid.clone()),
            (
                labels::POD_NAME.to_string(),
                pod.metadata.name.clone().unwrap_or_default(),
            ),
            (
                labels::POD_NAMESPACE.to_string(),
                pod.metadata.namespace.clone().unwrap_or_default(),
            ),
            (labels::CONTAINER_NAME.to_string(), name.clone()),
            (labels::CONTAINER_KIND.to_string(), kind.to_string()),
            (labels::RESTART_COUNT.to_string(), restart.to_string()),
            (labels::SPEC_HASH.to_string(), spec_hash(container)),
        ]);
        let runtime = self.node.runtime.runtime.clone();
        // Keep the newest instance for `logs --previous`; anything older goes now.
        if let Ok(instances) = self.instances().await {
            for old in instances.get(&name).into_iter().flatten().skip(1) {
                let _ = runtime.remove(&old.id).await;
            }
        }
        if let Some(latest) = latest
            .as_ref()
            .filter(|l| matches!(l.state, ContainerState::Created | ContainerState::Unknown))
        {
            let _ = runtime.remove(&latest.id).await;
        }
        let created = runtime
            .create(ContainerConfig {
                id: id.clone(),
                image,
                spec: oci,
                labels: container_labels,
                logs,
                stdin: container.stdin.unwrap_or(false),
                stdin_once: container.stdin_once.unwrap_or(false),
            })
            .await;
        if let Err(e) = created {
            return config_error(self, "CreateContainerError", e.to_string());
        }
        self.node.event(
            pod,
            Some(&name),
            EventType::Normal,
            "Created",
            format!("Created container {name}"),
        );
        if let Err(e) = runtime.start(&id).await {
            let message = e.to_string();
            self.node.event(
                pod,
                Some(&name),
                EventType::Warning,
                "Failed",
                format!("Error: {message}"),
            );
            self.waiting
                .insert(name, Waiting::new("RunContainerError", message));
            return Some(RETRY_SOON);
        }
        self.node.event(
            pod,
            Some(&name),
            EventType::Normal,
            "Started",
            format!("Started container {name}"),
        );
        None
    }

    fn update_probes(&mut self, pod: &Pod, instances: &HashMap<String, Vec<ContainerInfo>>) {
        let Some(spec) = pod.spec.as_ref() else {
            return;
        };
        let pod_ip = self
            .network
            .as_ref()
            .map(|n| n.ip.clone())
            .unwrap_or_default();
        let mut live: HashSet<String> = HashSet::new();
        for c in &spec.containers {
            let Some(info) = instances.get(&c.name).and_then(|v| v.first()) else {
                continue;
            };
            if !is_running(info) {
                continue;
            }
            if c.liveness_probe.is_none()
                && c.readiness_probe.is_none()
                && c.startup_probe.is_none()
            {
                continue;
            }
            live.insert(info.id.clone());
            if self.probes.contains_key(&info.id) {
                continue;
            }
            let node = self.node.clone();
            let event_pod = pod.clone();
            let container_name = c.name.clone();
            let context = ProbeContext {
                pod_ip: pod_ip.clone(),
                container_id: info.id.clone(),
                runtime: self.node.runtime.runtime.clone(),
                executor: self.node.probes.clone(),
                changed: self.changed.clone(),
                events: Arc::new(move |reason, message| {
                    node.event(
                        &event_pod,
                        Some(&container_name),
                        EventType::Warning,
                        reason,
                        message,
                    )
                }),
            };
            self.probes
                .insert(info.id.clone(), prober::start(c, context));
        }
        self.probes.retain(|id, _| live.contains(id));
    }

    fn views(
        &self,
        pod: &Pod,
        instances: &HashMap<String, Vec<ContainerInfo>>,
    ) -> (Vec<ContainerView>, Vec<ContainerView>) {
        let spec = pod.spec.clone().unwrap_or_default();
        let build = |c: &Container, regular: bool| {
            let list = instances.get(&c.name);
            let current = list.and_then(|v| v.first()).cloned();
            let previous = list.and_then(|v| v.get(1)).cloned();
            let running = current.as_ref().is_some_and(is_running);
            let probe = current
                .as_ref()
                .and_then(|i| self.probes.get(&i.id))
                .map(|p| p.status.lock().clone());
            let started = running && probe.as_ref().is_none_or(|p| p.started);
            let ready = regular && started && probe.as_ref().is_none_or(|p| p.ready);
            let ready = if regular {
                ready
            } else {
                matches!(
                    current.as_ref().map(|c| &c.state),
                    Some(ContainerState::Exited { exit_code: 0, .. })
                )
            };
            ContainerView {
                name: c.name.clone(),
                image: c.image.clone().unwrap_or_default(),
                current,
                previous,
                waiting: self.waiting.get(&c.name).cloned(),
                ready,
                started,
            }
        };
        let init: Vec<ContainerView> = spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| build(c, false))
            .collect();
        let mut regular: Vec<ContainerView> =
            spec.containers.iter().map(|c| build(c, true)).collect();
        let init_finished = status::init_done(&init);
        let mut init = init;
        if !init_finished {
            let mut reached_unfinished = false;
            for v in init.iter_mut() {
                if reached_unfinished && v.current.is_none() && v.waiting.is_none() {
                    v.waiting = Some(Waiting::new("PodInitializing", ""));
                }
                if !matches!(
                    v.current.as_ref().map(|c| &c.state),
                    Some(ContainerState::Exited { exit_code: 0, .. })
                ) {
                    reached_unfinished = true;
                }
            }
            for v in regular.iter_mut() {
                if v.current.is_none() && v.waiting.is_none() {
                    v.waiting = Some(Waiting::new("PodInitializing", ""));
                }
            }
        }
        if let Some(pending) = &self.pending {
            for v in init.iter_mut().chain(regular.iter_mut()) {
                if v.current.is_none() && v.waiting.is_none() {
                    v.waiting = Some(Waiting::new("ContainerCreating", pending.message.clone()));
                }
            }
        }
        (init, regular)
    }

    async fn report_status(&mut self, pod: &Pod, instances: &HashMap<String, Vec<ContainerInfo>>) {
        let (init, regular) = self.views(pod, instances);
        let view = PodView {
            pod,
            init,
            regular,
            pod_ip: self.network.as_ref().map(|n| n.ip.clone()),
            host_ip: self.node.host_ip.clone(),
            start_time: self.start_time,
            now: Utc::now(),
            pending_message: None,
        };
        let api_status = pod
            .status
            .as_ref()
            .and_then(|s| serde_json::to_value(s).ok());
        let previous = self.last_status.clone().or(api_status.clone());
        let status = status::pod_status(&view, previous.as_ref());
        if self.last_status.as_ref() == Some(&status) {
            return;
        }
        let name = pod.metadata.name.clone().unwrap_or_default();
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.node.client.clone(), &namespace);
        match api
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": status})),
            )
            .await
        {
            Ok(_) => self.last_status = Some(status),
            Err(e) => {
                tracing::debug!(pod = %pod_label(pod), error = %e, "writing pod status failed")
            }
        }
    }

    /// SIGTERM, then SIGKILL once `grace` has passed; returns when it exited (or gave up).
    async fn stop_container(&self, id: &str, grace: Duration) {
        let runtime = &self.node.runtime.runtime;
        let exited = |info: Result<ContainerInfo, _>| match info {
            Ok(i) => !matches!(
                i.state,
                ContainerState::Running { .. } | ContainerState::Created
            ),
            Err(_) => true,
        };
        if exited(runtime.status(id).await) {
            return;
        }
        let _ = runtime.signal(id, 15).await;
        let deadline = deadline_after(grace);
        while tokio::time::Instant::now() < deadline {
            if exited(runtime.status(id).await) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = runtime.signal(id, 9).await;
        let deadline = deadline_after(Duration::from_secs(10));
        while tokio::time::Instant::now() < deadline {
            if exited(runtime.status(id).await) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Graceful termination of a deleted pod, then its removal from the API.
    async fn terminate(&mut self, pod: &Pod, grace: Duration) -> Outcome {
        self.teardown(Some(pod), grace).await;
        let name = pod.metadata.name.clone().unwrap_or_default();
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.node.client.clone(), &namespace);
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(&name, &params).await {
            Ok(_) => Outcome::Finished,
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Outcome::Finished,
            Err(e) => {
                tracing::warn!(pod = %pod_label(pod), error = %e, "deleting pod failed");
                Outcome::Requeue(RETRY_SOON)
            }
        }
    }

    /// Stops every container (preStop hooks first when the pod is known), removes them,
    /// the network and the pod directory.
    async fn teardown(&mut self, pod: Option<&Pod>, grace: Duration) {
        self.probes.clear();
        let runtime = self.node.runtime.runtime.clone();
        let instances = self.instances().await.unwrap_or_default();
        let deadline = deadline_after(grace);
        let mut stops = Vec::new();
        for (name, list) in &instances {
            let Some(current) = list.first().filter(|c| is_running(c)) else {
                continue;
            };
            let container = pod
                .and_then(|p| p.spec.as_ref())
                .and_then(|s| s.containers.iter().find(|c| &c.name == name));
            let id = current.id.clone();
            let runtime = runtime.clone();
            if let (Some(pod), Some(_)) = (pod, container) {
                self.node.event(
                    pod,
                    Some(name),
                    EventType::Normal,
                    "Killing",
                    format!("Stopping container {name}"),
                );
            }
            let pre_stop = container
                .and_then(|c| c.lifecycle.as_ref())
                .and_then(|l| l.pre_stop.as_ref())
                .and_then(|h| h.exec.as_ref())
                .and_then(|e| e.command.clone());
            let this = &*self;
            stops.push(async move {
                if let Some(command) = pre_stop {
                    let (stdout, _) = tokio::sync::mpsc::channel(16);
                    let io = rkube_cri::ExecIo {
                        stdin: None,
                        stdout,
                        stderr: None,
                        resize: None,
                    };
                    let config = rkube_cri::ExecConfig {
                        command,
                        ..Default::default()
                    };
                    let _ = tokio::time::timeout_at(deadline, runtime.exec(&id, config, io)).await;
                }
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                this.stop_container(&id, left).await;
            });
        }
        futures::future::join_all(stops).await;
        for list in instances.values() {
            for c in list {
                let _ = runtime.remove(&c.id).await;
            }
        }
        if let Err(e) = self.node.runtime.network.teardown(&self.uid).await {
            tracing::warn!(uid = %self.uid, error = %e, "tearing down pod network failed");
        }
        self.network = None;
        let busy = crate::spec::remove_pod_cgroups(&self.node.config.cgroup_root, &self.uid);
        if !busy.is_empty() {
            tracing::warn!(uid = %self.uid, cgroups = ?busy, "pod cgroups still in use; left in place");
        }
        if let Err(e) = volumes::remove_pod_dir(&self.node.pod_dir(&self.uid)) {
            tracing::warn!(uid = %self.uid, error = %e, "removing the pod directory failed");
        }
    }
}

/// The grace period comes from the pod (terminationGracePeriodSeconds or
/// deletionGracePeriodSeconds, up to i64::MAX seconds), and `Instant + Duration` panics on
/// overflow; a period too long to represent waits as long as tokio's own far future.
fn deadline_after(wait: Duration) -> tokio::time::Instant {
    const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);
    let now = tokio::time::Instant::now();
    now.checked_add(wait)
        .or_else(|| now.checked_add(FAR_FUTURE))
        .unwrap_or(now)
}

fn earliest(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn grace_period(pod: &Pod) -> Duration {
    let seconds = pod
        .spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(30)
        .max(0);
    Duration::from_secs(seconds as u64)
}

fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 60 && secs.is_multiple_of(60) {
        format!("{}m0s", secs / 60)
    } else if secs >= 60 {
        format!("{}m{}s", secs / 60, secs % 60)
    } else if d.subsec_millis() > 0 && secs == 0 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{secs}s")
    }
}

/// What a pod's containers are created against.
pub struct Prepared {
    pod_dir: std::path::PathBuf,
    network: PodNetworkStatus,
    facts: PodFacts,
    sources: Sources,
    volume_paths: BTreeMap<String, std::path::PathBuf>,
    hosts: String,
    resolv: String,
}

/// The container's bind mounts; a subPath is resolved beneath its volume and mounted
/// by the kubelet under the pod directory first.
fn container_mounts(container: &Container, prepared: &Prepared) -> Result<Vec<BindMount>, String> {
    let mut mounts = Vec::new();
    let mut destinations = HashSet::new();
    for (index, m) in container.volume_mounts.iter().flatten().enumerate() {
        let Some(source) = prepared.volume_paths.get(&m.name) else {
            return Err(format!(
                "cannot find volume {:?} to mount into container {:?}",
                m.name, container.name
            ));
        };
        let mut source = source.to_string_lossy().into_owned();
        if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            let resolved = volumes::resolve_sub_path(std::path::Path::new(&source), &m.name, sub)
                .map_err(|e| e.to_string())?;
            let target =
                volumes::sub_path_target(&prepared.pod_dir, &m.name, &container.name, index)
                    .ok_or_else(|| format!("invalid volume name {:?}", m.name))?;
            resolved.bind(&target).map_err(|e| {
                format!(
                    "failed to prepare subPath for volumeMount {:?} of container {:?}: {e}",
                    m.name, container.name
                )
            })?;
            source = target.to_string_lossy().into_owned();
        }
        destinations.insert(m.mount_path.clone());
        mounts.push(BindMount {
            source,
            destination: m.mount_path.clone(),
            read_only: m.read_only.unwrap_or(false),
        });
    }
    for (destination, source) in [
        ("/etc/hosts", &prepared.hosts),
        ("/etc/resolv.conf", &prepared.resolv),
    ] {
        if !destinations.contains(destination) {
            mounts.push(BindMount {
                source: source.clone(),
                destination: destination.to_string(),
                read_only: false,
            });
        }
    }
    Ok(mounts)
}

fn write_if_changed(path: &std::path::Path, content: &str) -> std::io::Result<()> {
    if std::fs::read_to_string(path).ok().as_deref() == Some(content) {
        return Ok(());
    }
    let temp = path.with_extension("tmp");
    std::fs::write(&temp, content)?;
    std::fs::rename(&temp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_like_go() {
        assert_eq!(format_duration(Duration::from_secs(10)), "10s");
        assert_eq!(format_duration(Duration::from_secs(300)), "5m0s");
        assert_eq!(format_duration(Duration::from_secs(80)), "1m20s");
        assert_eq!(format_duration(Duration::from_millis(500)), "500ms");
    }

    fn info(id: &str, uid: &str, name: &str, restart: u32) -> ContainerInfo {
        ContainerInfo {
            id: id.into(),
            image: "i".into(),
            image_id: "sha256:1".into(),
            labels: BTreeMap::from([
                (labels::POD_UID.to_string(), uid.to_string()),
                (labels::CONTAINER_NAME.to_string(), name.to_string()),
                (labels::RESTART_COUNT.to_string(), restart.to_string()),
            ]),
            state: ContainerState::Created,
            created_at: Utc::now(),
            pid: None,
        }
    }

    #[test]
    fn instances_group_by_container_newest_first() {
        let all = vec![
            info("a0", "u", "a", 0),
            info("a2", "u", "a", 2),
            info("b0", "u", "b", 0),
            info("x", "other", "a", 5),
            info("a1", "u", "a", 1),
        ];
        let grouped = group_instances(all, "u");
        let ids: Vec<&str> = grouped["a"].iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["a2", "a1", "a0"]);
        assert_eq!(grouped["b"].len(), 1);
        assert_eq!(grouped.len(), 2);
    }

    #[tokio::test]
    async fn a_deleted_pod_with_a_huge_grace_period_is_stopped_without_overflow() {
        use rkube_cri::{ContainerRuntime, PodNetwork};
        let test = crate::manager::testing::node();
        let mut pod = crate::manager::testing::pod("web", "uid-huge");
        pod.spec.as_mut().unwrap().termination_grace_period_seconds = Some(i64::MAX);
        let mut worker = PodWorker::new(
            test.node.clone(),
            "uid-huge".into(),
            Arc::new(Notify::new()),
        );
        worker.sync(&pod).await;
        let running: Vec<ContainerInfo> = test.runtime.list().await.unwrap();
        assert_eq!(running.len(), 1);
        assert!(is_running(&running[0]));

        // The spec's period, and the deletion's (which the kubelet must not trust either).
        for (deletion_grace, spec_grace) in [(Some(i64::MAX), Some(30)), (None, Some(i64::MAX))] {
            let mut deleted = pod.clone();
            deleted.metadata.deletion_timestamp =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::now(),
                ));
            deleted.metadata.deletion_grace_period_seconds = deletion_grace;
            deleted
                .spec
                .as_mut()
                .unwrap()
                .termination_grace_period_seconds = spec_grace;
            worker.sync(&deleted).await;
            assert!(
                test.runtime.list().await.unwrap().is_empty(),
                "containers are removed"
            );
            assert_eq!(test.network.status("uid-huge").await.unwrap(), None);
            worker.sync(&pod).await;
        }
        // A running pod whose container must be replaced (spec changed) is stopped with
        // the spec's grace period too.
        let mut changed = pod.clone();
        changed.spec.as_mut().unwrap().containers[0].args = Some(vec!["new".into()]);
        worker.sync(&changed).await;
        let old_hash = spec_hash(&pod.spec.as_ref().unwrap().containers[0]);
        let old_running = test
            .runtime
            .list()
            .await
            .unwrap()
            .into_iter()
            .filter(|c| c.labels[labels::SPEC_HASH] == old_hash && is_running(c))
            .count();
        assert_eq!(old_running, 0, "the outdated container was stopped");
    }

    #[test]
    fn spec_hash_changes_with_the_spec() {
        let a: Container =
            serde_json::from_value(json!({"name": "c", "image": "busybox:1"})).unwrap();
        let b: Container =
            serde_json::from_value(json!({"name": "c", "image": "busybox:2"})).unwrap();
        assert_eq!(spec_hash(&a), spec_hash(&a.clone()));
        assert_ne!(spec_hash(&a), spec_hash(&b));
    }
}
