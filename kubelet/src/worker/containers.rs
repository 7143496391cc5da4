//! Carrying out the container actions of a sync: create and start an instance (image,
//! environment, mounts, OCI spec, log files, labels), kill one, or record that it waits
//! out its crash-loop backoff. What changed is written back into the sync's view of the
//! pod's containers, so nothing here lists the node's containers.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod};
use rkube_cri::{labels, ContainerConfig, ContainerInfo, ContainerRuntime, ContainerState};
use rkube_runtime::EventType;

use super::actions::{
    self, Attempt, BackOff, ContainerAction, ContainerKind, KillContainer, StartContainer,
};
use super::observed::{spec_hash, PodContainers};
use super::sandbox::Prepared;
use super::volume_setup::container_mounts;
use super::{deadline_after, earliest, format_duration, pod_label, PodWorker, RETRY_SOON};
use crate::env;
use crate::spec::{self, SpecError, SpecInput};
use crate::status::Waiting;

impl PodWorker {
    /// Carries out `planned` in order; returns when to look again for something that
    /// will change by itself (a backoff expiring, a killed container to replace).
    pub(super) async fn run_container_actions(
        &mut self,
        pod: &Pod,
        prepared: &Prepared,
        planned: Vec<ContainerAction>,
        containers: &mut PodContainers,
    ) -> Option<Duration> {
        let mut requeue = None;
        for action in planned {
            let next = match action {
                ContainerAction::Start(start) => {
                    self.start_container(pod, prepared, start, containers).await
                }
                ContainerAction::Kill(kill) => {
                    self.kill_container(pod, kill, containers).await;
                    Some(Duration::ZERO)
                }
                ContainerAction::BackOff(back_off) => Some(self.back_off(pod, back_off)),
            };
            requeue = earliest(requeue, next);
        }
        requeue
    }

    fn back_off(&mut self, pod: &Pod, back_off: BackOff) -> Duration {
        let name = back_off.name;
        let message = format!(
            "back-off {} restarting failed container={name} pod={}",
            format_duration(back_off.wait.delay),
            pod_label(pod)
        );
        self.warn_once(
            pod,
            Some(&name),
            format!("backoff:{}", back_off.latest_id),
            "BackOff",
            format!(
                "Back-off restarting failed container {name} in pod {}",
                pod_label(pod)
            ),
        );
        self.waiting
            .insert(name, Waiting::new("CrashLoopBackOff", message));
        back_off.wait.remaining
    }

    async fn kill_container(
        &mut self,
        pod: &Pod,
        kill: KillContainer,
        containers: &mut PodContainers,
    ) {
        self.node.event(
            pod,
            Some(&kill.name),
            EventType::Normal,
            "Killing",
            kill.message,
        );
        self.probes.remove(&kill.id);
        let runtime = self.node.runtime.runtime.clone();
        stop_container(runtime.as_ref(), &kill.id, actions::grace_period(pod)).await;
        self.refresh(containers, &kill.id).await;
    }

    async fn start_container(
        &mut self,
        pod: &Pod,
        prepared: &Prepared,
        start: StartContainer,
        containers: &mut PodContainers,
    ) -> Option<Duration> {
        let spec = pod.spec.as_ref()?;
        let container = match start.kind {
            ContainerKind::Init => spec.init_containers.as_ref()?.get(start.index)?,
            ContainerKind::Regular => spec.containers.get(start.index)?,
        };
        if let Attempt::Restart { reset_backoff } = start.attempt {
            if reset_backoff {
                self.crash_backoff.reset(&start.name);
            }
            self.crash_backoff.record_retry(&start.name, Instant::now());
        }
        let (requeue, created) = self
            .create_and_start(pod, container, &start, prepared, containers)
            .await;
        if let Some(id) = created {
            self.refresh(containers, &id).await;
        }
        requeue
    }

    fn config_error(
        &mut self,
        pod: &Pod,
        container: &str,
        reason: &str,
        message: String,
    ) -> Option<Duration> {
        self.warn_once(
            pod,
            Some(container),
            format!("{reason}:{container}:{message}"),
            "Failed",
            format!("Error: {message}"),
        );
        self.waiting
            .insert(container.to_string(), Waiting::new(reason, message));
        Some(RETRY_SOON)
    }

    /// Creates and starts the new instance; returns when to look again and the id of
    /// what it created (also when starting it failed).
    async fn create_and_start(
        &mut self,
        pod: &Pod,
        container: &Container,
        start: &StartContainer,
        prepared: &Prepared,
        containers: &mut PodContainers,
    ) -> (Option<Duration>, Option<String>) {
        let name = container.name.clone();
        let image = match self.ensure_image(pod, container).await {
            Ok(image) => image,
            Err((waiting, retry)) => {
                self.waiting.insert(name, waiting);
                return (retry.or(Some(RETRY_SOON)), None);
            }
        };
        const CONFIG: &str = "CreateContainerConfigError";
        const CREATE: &str = "CreateContainerError";
        let env = match env::container_env(pod, container, &prepared.facts, &prepared.sources) {
            Ok(env) => env,
            Err(message) => return (self.config_error(pod, &name, CONFIG, message), None),
        };
        let mounts = match container_mounts(container, prepared) {
            Ok(m) => m,
            Err(message) => return (self.config_error(pod, &name, CONFIG, message), None),
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
            Err(SpecError::Config(m)) => return (self.config_error(pod, &name, CONFIG, m), None),
            Err(SpecError::Create(m)) => return (self.config_error(pod, &name, CREATE, m), None),
        };
        let logs = self.node.log_paths(&self.uid, &name, start.restart_count);
        let prepared_logs = logs
            .stdout
            .parent()
            .map(std::fs::create_dir_all)
            .unwrap_or(Ok(()))
            .and_then(|_| std::fs::File::create(&logs.stdout))
            .and_then(|_| std::fs::File::create(&logs.stderr));
        if let Err(e) = prepared_logs {
            let message = format!("creating log files: {e}");
            return (self.config_error(pod, &name, CREATE, message), None);
        }
        let runtime = self.node.runtime.runtime.clone();
        for old in &start.remove {
            let _ = runtime.remove(old).await;
            containers.remove(old);
        }
        let created = runtime
            .create(ContainerConfig {
                id: id.clone(),
                image,
                spec: oci,
                labels: self.container_labels(pod, container, start),
                logs,
                stdin: container.stdin.unwrap_or(false),
                stdin_once: container.stdin_once.unwrap_or(false),
            })
            .await;
        if let Err(e) = created {
            return (self.config_error(pod, &name, CREATE, e.to_string()), None);
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
            return (Some(RETRY_SOON), Some(id));
        }
        self.node.event(
            pod,
            Some(&name),
            EventType::Normal,
            "Started",
            format!("Started container {name}"),
        );
        (None, Some(id))
    }

    /// The labels a restarted kubelet rebuilds its view of the pod from.
    fn container_labels(
        &self,
        pod: &Pod,
        container: &Container,
        start: &StartContainer,
    ) -> BTreeMap<String, String> {
        BTreeMap::from([
            (labels::POD_UID.to_string(), self.uid.clone()),
            (
                labels::POD_NAME.to_string(),
                pod.metadata.name.clone().unwrap_or_default(),
            ),
            (
                labels::POD_NAMESPACE.to_string(),
                pod.metadata.namespace.clone().unwrap_or_default(),
            ),
            (labels::CONTAINER_NAME.to_string(), container.name.clone()),
            (
                labels::CONTAINER_KIND.to_string(),
                start.kind.label().to_string(),
            ),
            (
                labels::RESTART_COUNT.to_string(),
                start.restart_count.to_string(),
            ),
            (labels::SPEC_HASH.to_string(), spec_hash(container)),
        ])
    }
}

/// SIGTERM, then SIGKILL once `grace` has passed; returns when it exited (or gave up).
pub(super) async fn stop_container(runtime: &dyn ContainerRuntime, id: &str, grace: Duration) {
    let exited = |info: rkube_cri::Result<ContainerInfo>| match info {
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
