//! After a sync acted: probes for the running containers (started once per container
//! instance, stopped when it goes), and the pod status built from the containers, the
//! kubelet's own waiting reasons and the probe results, written when it changed.

use std::collections::HashSet;
use std::sync::Arc;

use chrono::Utc;
use k8s_openapi::api::core::v1::{Container, Pod};
use kube::api::{Api, Patch, PatchParams};
use rkube_cri::ContainerState;
use rkube_runtime::EventType;
use serde_json::json;

use super::observed::{is_running, PodContainers};
use super::{pod_label, PodWorker};
use crate::prober::{self, ProbeContext};
use crate::status::{self, ContainerView, PodView, Waiting};

impl PodWorker {
    pub(super) fn update_probes(&mut self, pod: &Pod, containers: &PodContainers) {
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
            let Some(info) = containers.latest(&c.name) else {
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
        containers: &PodContainers,
    ) -> (Vec<ContainerView>, Vec<ContainerView>) {
        let spec = pod.spec.clone().unwrap_or_default();
        let build = |c: &Container, regular: bool| {
            let current = containers.latest(&c.name).cloned();
            let previous = containers.previous(&c.name).cloned();
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

    pub(super) async fn report_status(&mut self, pod: &Pod, containers: &PodContainers) {
        let (init, regular) = self.views(pod, containers);
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
}
