//! A deleted pod: preStop hooks, SIGTERM, SIGKILL after the grace period, then its
//! containers, network, cgroups and directory are removed and the pod is deleted from the
//! API. A pod gone from the API (no pod to read hooks from) takes the same path.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Preconditions};
use rkube_runtime::EventType;

use super::containers::stop_container;
use super::observed::{is_running, PodContainers};
use super::{deadline_after, pod_label, Outcome, PodWorker, RETRY_SOON};
use crate::volumes;

impl PodWorker {
    /// Graceful termination of a deleted pod, then its removal from the API.
    pub(super) async fn terminate(
        &mut self,
        pod: &Pod,
        grace: Duration,
        containers: PodContainers,
    ) -> Outcome {
        self.teardown(Some(pod), grace, containers).await;
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
    pub(super) async fn teardown(
        &mut self,
        pod: Option<&Pod>,
        grace: Duration,
        containers: PodContainers,
    ) {
        self.probes.clear();
        let runtime = self.node.runtime.runtime.clone();
        let deadline = deadline_after(grace);
        let mut stops = Vec::new();
        for (name, list) in containers.all() {
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
                stop_container(runtime.as_ref(), &id, left).await;
            });
        }
        futures::future::join_all(stops).await;
        for (_, list) in containers.all() {
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
