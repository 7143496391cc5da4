//! One pod's worker: a level-triggered sync. Each sync lists the node's containers once,
//! decides in a pure step what to do ([`actions::compute_pod_actions`]), carries that out
//! (pod network and volumes in `sandbox`/`volume_setup`, images in `image_pull`,
//! containers in `containers`), then starts probes and reports the status if it changed
//! (`status_report`). A deleted pod is stopped and removed in `termination`.

pub mod actions;
mod containers;
mod image_pull;
mod observed;
mod sandbox;
mod status_report;
mod termination;
mod volume_setup;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Pod;
use rkube_cri::{PodNetworkStatus, RuntimeError};
use rkube_runtime::EventType;
use serde_json::Value;
use tokio::sync::{watch, Notify};

pub use observed::{group_instances, spec_hash, PodContainers};

use crate::backoff::Backoff;
use crate::context::NodeContext;
use crate::prober::ContainerProbes;
use crate::status::Waiting;
use actions::{compute_pod_actions, BackoffWait, Observed};

/// How soon to look again when something outside the kubelet is awaited (network,
/// a missing ConfigMap): soon, but not a busy loop.
const RETRY_SOON: Duration = Duration::from_secs(2);

enum Synced {
    /// The pod's containers after this sync acted, and when to sync again.
    Acted {
        containers: PodContainers,
        requeue: Duration,
    },
    /// Nothing to report (the pod was terminated, or the runtime could not be listed).
    Done(Outcome),
}

enum Outcome {
    /// Sync again after this long (or earlier on a trigger).
    Requeue(Duration),
    /// The pod is gone and everything of it removed; the worker ends.
    Finished,
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
                    let containers = self.list_containers().await.unwrap_or_default();
                    self.teardown(None, Duration::from_secs(2), containers)
                        .await;
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

    /// The one listing of the node's containers a sync makes.
    async fn list_containers(&self) -> Result<PodContainers, RuntimeError> {
        let all = self.node.runtime.runtime.list().await?;
        Ok(PodContainers::from_listing(all, &self.uid))
    }

    /// Brings one container's entry up to date after this sync acted on it.
    async fn refresh(&self, containers: &mut PodContainers, id: &str) {
        match self.node.runtime.runtime.status(id).await {
            Ok(info) => containers.upsert(info),
            Err(RuntimeError::NotFound(_)) => containers.remove(id),
            Err(e) => {
                tracing::debug!(uid = %self.uid, container = %id, error = %e, "container status after acting on it failed")
            }
        }
    }

    async fn sync(&mut self, pod: &Pod) -> Outcome {
        match self.act(pod).await {
            Synced::Acted {
                containers,
                requeue,
            } => {
                self.update_probes(pod, &containers);
                self.report_status(pod, &containers).await;
                Outcome::Requeue(requeue)
            }
            Synced::Done(outcome) => outcome,
        }
    }

    /// Lists the node's containers once, decides, and acts; returns the pod's containers
    /// as they are after acting, which the status is reported from.
    async fn act(&mut self, pod: &Pod) -> Synced {
        let listed = self.list_containers().await;
        if let Some(grace) = actions::termination_grace(pod) {
            // Whatever could not be listed is swept by housekeeping.
            let containers = listed.unwrap_or_default();
            return Synced::Done(self.terminate(pod, grace, containers).await);
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
        let mut containers = match listed {
            Ok(containers) => containers,
            Err(e) => {
                tracing::warn!(pod = %pod_label(pod), error = %e, "listing containers failed");
                return Synced::Done(Outcome::Requeue(RETRY_SOON));
            }
        };
        let liveness_failures = self.liveness_failures();
        let crash_backoff = self.crash_backoff_waits(pod, Instant::now());
        let planned = compute_pod_actions(
            pod,
            &Observed {
                containers: &containers,
                sandbox_ready: self.network.is_some(),
                liveness_failures: &liveness_failures,
                crash_backoff: &crash_backoff,
                backoff_reset: self.node.config.backoff_reset,
            },
        );
        let mut requeue = self.node.config.resync_interval;
        match self.prepare_pod(pod, planned.create_sandbox).await {
            Ok(prepared) => {
                let acted = self
                    .run_container_actions(pod, &prepared, planned.containers, &mut containers)
                    .await;
                if let Some(d) = acted {
                    requeue = requeue.min(d);
                }
            }
            Err(waiting) => {
                self.pending = Some(waiting);
                requeue = RETRY_SOON;
            }
        }
        Synced::Acted {
            containers,
            requeue,
        }
    }

    /// What the liveness probes concluded, by container id.
    fn liveness_failures(&self) -> HashMap<String, String> {
        self.probes
            .iter()
            .filter_map(|(id, p)| {
                let failure = p.status.lock().liveness_failure.clone();
                failure.map(|message| (id.clone(), message))
            })
            .collect()
    }

    /// The crash-loop backoffs of the pod's containers that have not expired at `now`.
    fn crash_backoff_waits(&self, pod: &Pod, now: Instant) -> HashMap<String, BackoffWait> {
        let names = pod.spec.iter().flat_map(|s| {
            s.init_containers
                .iter()
                .flatten()
                .chain(s.containers.iter())
                .map(|c| c.name.as_str())
        });
        names
            .filter_map(|name| {
                let remaining = self.crash_backoff.remaining(name, now)?;
                let delay = self.crash_backoff.delay(name).unwrap_or_default();
                Some((name.to_string(), BackoffWait { remaining, delay }))
            })
            .collect()
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

#[cfg(test)]
mod tests;
