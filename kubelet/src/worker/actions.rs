//! The pure step of a pod sync, after upstream's `computePodActions`: from the pod and what
//! the runtime runs for it, decide whether the pod network must be set up and which
//! containers to start, restart, kill or leave waiting out their crash-loop backoff. It
//! does no IO and does not read the clock (probe results and backoff state come in as
//! inputs), so every decision is table-tested; the worker carries the actions out.

use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod};
use rkube_cri::{labels, ContainerInfo, ContainerState};

use super::observed::{restart_count, spec_hash, PodContainers};
use crate::status;

/// Where a container is declared; its label value tells the two apart after a restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerKind {
    Init,
    Regular,
}

impl ContainerKind {
    pub fn label(self) -> &'static str {
        match self {
            ContainerKind::Init => "init",
            ContainerKind::Regular => "regular",
        }
    }
}

/// A container's crash-loop backoff that has not expired at the time of the sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackoffWait {
    /// How long until a restart is allowed.
    pub remaining: Duration,
    /// The backoff's current period (what the message reports).
    pub delay: Duration,
}

/// Everything the decision depends on besides the pod.
pub struct Observed<'a> {
    pub containers: &'a PodContainers,
    /// The pod's network is set up.
    pub sandbox_ready: bool,
    /// Liveness failures by container id (the probe's message).
    pub liveness_failures: &'a HashMap<String, String>,
    /// Containers, by name, still inside their crash-loop backoff.
    pub crash_backoff: &'a HashMap<String, BackoffWait>,
    /// An instance that ran at least this long has its container's backoff forgotten.
    pub backoff_reset: Duration,
}

/// Whether a start counts against the crash-loop backoff.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// No instance exists yet.
    First,
    /// Replaces an instance that exited or never ran; `reset_backoff` when the one that
    /// exited ran long enough for its earlier crashes to be forgotten.
    Restart { reset_backoff: bool },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartContainer {
    pub kind: ContainerKind,
    /// Its index in `initContainers` or `containers`.
    pub index: usize,
    pub name: String,
    /// The new instance's restart count.
    pub restart_count: u32,
    /// Instances removed before the new one is created: all but the latest (which
    /// `logs --previous` reads), and the latest too when it never ran.
    pub remove: Vec<String>,
    pub attempt: Attempt,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KillContainer {
    pub id: String,
    pub name: String,
    /// Why, for the Killing event.
    pub message: String,
}

/// A restart that must wait out the crash-loop backoff.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackOff {
    pub name: String,
    /// The instance that exited (its id keys the once-per-crash event).
    pub latest_id: String,
    pub wait: BackoffWait,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContainerAction {
    Start(StartContainer),
    Kill(KillContainer),
    BackOff(BackOff),
}

/// What one sync must do, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodActions {
    pub create_sandbox: bool,
    pub containers: Vec<ContainerAction>,
}

const SPEC_CHANGED: &str = "Container definition changed, will be restarted";

/// The grace period a deleted pod's containers get (None: the pod is not being deleted).
/// The deletion's own period wins over the spec's; negative periods mean zero.
pub fn termination_grace(pod: &Pod) -> Option<Duration> {
    pod.metadata.deletion_timestamp.as_ref()?;
    let seconds = pod
        .metadata
        .deletion_grace_period_seconds
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        })
        .unwrap_or(30)
        .max(0);
    Some(Duration::from_secs(seconds as u64))
}

/// The grace period of a container killed while its pod lives on (liveness, spec change).
pub fn grace_period(pod: &Pod) -> Duration {
    let seconds = pod
        .spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(30)
        .max(0);
    Duration::from_secs(seconds as u64)
}

/// Init containers run one at a time in order and must each exit 0 before the next (and
/// before any regular container) starts; regular containers are started, restarted as
/// the restart policy says, and killed when their liveness probe failed or their spec
/// changed (the next sync starts the replacement).
pub fn compute_pod_actions(pod: &Pod, observed: &Observed<'_>) -> PodActions {
    let mut actions = PodActions {
        create_sandbox: !observed.sandbox_ready,
        containers: Vec::new(),
    };
    let Some(spec) = pod.spec.as_ref() else {
        return actions;
    };
    let policy = status::restart_policy(pod);
    for (index, container) in spec.init_containers.iter().flatten().enumerate() {
        let latest = observed.containers.latest(&container.name);
        let action = match latest.map(|i| &i.state) {
            Some(ContainerState::Exited { exit_code: 0, .. }) => continue,
            // Still initialising, or failed for good: nothing may start after it.
            Some(ContainerState::Running { .. }) => None,
            Some(ContainerState::Exited { .. }) if policy == "Never" => None,
            Some(_) => Some(restart(ContainerKind::Init, index, container, observed)),
            None => Some(first_start(ContainerKind::Init, index, container)),
        };
        actions.containers.extend(action);
        return actions;
    }
    for (index, container) in spec.containers.iter().enumerate() {
        let Some(latest) = observed.containers.latest(&container.name) else {
            let start = first_start(ContainerKind::Regular, index, container);
            actions.containers.push(start);
            continue;
        };
        let action = match &latest.state {
            ContainerState::Running { .. } => {
                kill_reason(container, latest, observed).map(|message| {
                    ContainerAction::Kill(KillContainer {
                        id: latest.id.clone(),
                        name: container.name.clone(),
                        message,
                    })
                })
            }
            ContainerState::Exited { exit_code, .. } => {
                let restarts = policy == "Always" || (policy == "OnFailure" && *exit_code != 0);
                restarts.then(|| restart(ContainerKind::Regular, index, container, observed))
            }
            ContainerState::Created | ContainerState::Unknown => {
                Some(restart(ContainerKind::Regular, index, container, observed))
            }
        };
        actions.containers.extend(action);
    }
    actions
}

fn kill_reason(
    container: &Container,
    running: &ContainerInfo,
    observed: &Observed<'_>,
) -> Option<String> {
    if let Some(message) = observed.liveness_failures.get(&running.id) {
        return Some(message.clone());
    }
    let hash = running.labels.get(labels::SPEC_HASH).map(String::as_str);
    (hash != Some(spec_hash(container).as_str())).then(|| SPEC_CHANGED.to_string())
}

fn first_start(kind: ContainerKind, index: usize, container: &Container) -> ContainerAction {
    ContainerAction::Start(StartContainer {
        kind,
        index,
        name: container.name.clone(),
        restart_count: 0,
        remove: Vec::new(),
        attempt: Attempt::First,
    })
}

/// A new instance replacing the latest one, unless the crash-loop backoff says wait.
fn restart(
    kind: ContainerKind,
    index: usize,
    container: &Container,
    observed: &Observed<'_>,
) -> ContainerAction {
    let instances = observed.containers.instances(&container.name);
    let Some(latest) = instances.first() else {
        return first_start(kind, index, container);
    };
    let reset_backoff = match &latest.state {
        ContainerState::Exited {
            started_at: Some(started),
            finished_at,
            ..
        } => (*finished_at - *started).to_std().unwrap_or_default() >= observed.backoff_reset,
        _ => false,
    };
    if !reset_backoff {
        if let Some(wait) = observed.crash_backoff.get(&container.name) {
            return ContainerAction::BackOff(BackOff {
                name: container.name.clone(),
                latest_id: latest.id.clone(),
                wait: *wait,
            });
        }
    }
    let never_ran = matches!(
        latest.state,
        ContainerState::Created | ContainerState::Unknown
    );
    let mut remove: Vec<String> = instances.iter().skip(1).map(|c| c.id.clone()).collect();
    if never_ran {
        remove.push(latest.id.clone());
    }
    ContainerAction::Start(StartContainer {
        kind,
        index,
        name: container.name.clone(),
        restart_count: restart_count(latest) + 1,
        remove,
        attempt: Attempt::Restart { reset_backoff },
    })
}

#[cfg(test)]
mod tests;
