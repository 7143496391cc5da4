//! The node lifecycle controller: watches node Leases (`kube-node-lease`) and Nodes; a node
//! whose lease has not been renewed within the grace period gets Ready=Unknown and the
//! `node.kubernetes.io/unreachable:NoExecute` taint (a kubelet-reported Ready=False gets
//! `node.kubernetes.io/not-ready:NoExecute`), and pods on a node with NoExecute taints are
//! marked not ready and deleted once their toleration runs out (upstream's taint manager).
//!
//! Lease freshness is judged by when *this controller* saw the renewTime change, on its own
//! monotonic clock, as upstream does, so clock skew between nodes and the controller
//! manager does not matter.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, Taint, Toleration};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, ResourceExt};
use parking_lot::Mutex;
use rkube_api::semantics::scheduling::toleration_tolerates;
use rkube_runtime::{
    object_reference, run_reconcile_workers, Action, Backoff, Change, EventRecorder, EventType,
    SharedInformers, WorkQueue,
};
use serde_json::json;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::util::{enqueue_name, ignore_not_found, is_terminating, now};
use crate::{ControllerError, NodeLifecycleSettings, Shared};

pub const NAME: &str = "nodelifecycle";
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";
const UNKNOWN_REASON: &str = "NodeStatusUnknown";
const UNKNOWN_MESSAGE: &str = "Kubelet stopped posting node status.";

/// The heartbeat last seen for a node and when this controller saw it change.
struct Heartbeat {
    renew_time: Option<String>,
    observed_at: Instant,
}

struct NodeLifecycleController {
    client: kube::Client,
    nodes: Store<Node>,
    leases: Store<Lease>,
    pods: Store<Pod>,
    heartbeats: Mutex<HashMap<String, Heartbeat>>,
    settings: NodeLifecycleSettings,
    recorder: EventRecorder,
}

pub fn start(shared: &Shared, tasks: &mut JoinSet<()>, informers: &mut SharedInformers) {
    let queue: Arc<WorkQueue<String>> = WorkQueue::new(Backoff::default());
    let client = shared.client.clone();
    let (nodes, nodes_synced) = informers.all::<Node>().subscribe(enqueue_name(&queue));
    // All namespaces' Leases, so the garbage collector shares this watch; only node
    // heartbeats concern this controller.
    let mut lease_to_node = enqueue_name(&queue);
    let (leases, leases_synced) =
        informers
            .all::<Lease>()
            .subscribe(move |change: Change<'_, Lease>| {
                if change.object().namespace().as_deref() == Some(NODE_LEASE_NAMESPACE) {
                    lease_to_node(change);
                }
            });
    let pod_queue = queue.clone();
    let node_cache = nodes.clone();
    let (pods, pods_synced) = informers
        .all::<Pod>()
        .subscribe(move |change: Change<'_, Pod>| {
            // Only pods landing on a node with NoExecute taints can need an eviction.
            let Some(node) = change
                .object()
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
            else {
                return;
            };
            let tainted = node_cache
                .get(&ObjectRef::new(node))
                .is_some_and(|n| !no_execute_taints(&n).is_empty());
            if tainted {
                pod_queue.add(node.to_string());
            }
        });
    let controller = Arc::new(NodeLifecycleController {
        client: client.clone(),
        nodes,
        leases,
        pods,
        heartbeats: Mutex::new(HashMap::new()),
        settings: shared.node_lifecycle.clone(),
        recorder: EventRecorder::new(client, "node-controller", &shared.identity),
    });
    let workers = shared.workers;
    let ctrl = controller.clone();
    tasks.spawn(async move {
        nodes_synced.wait().await;
        leases_synced.wait().await;
        pods_synced.wait().await;
        let mut reconciling = std::pin::pin!(run_reconcile_workers(
            NAME,
            queue.clone(),
            workers,
            ctrl.clone(),
            |c, key| async move { c.reconcile(&key).await },
        ));
        // Staleness is a matter of time passing, not of a change: look at every node each period.
        let mut ticker = tokio::time::interval(ctrl.settings.node_monitor_period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    for node in ctrl.nodes.state() {
                        queue.add(node.name_any());
                    }
                }
                _ = &mut reconciling => break,
            }
        }
    });
}

/// The node's NoExecute taints.
fn no_execute_taints(node: &Node) -> Vec<Taint> {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .map(|ts| {
            ts.iter()
                .filter(|t| t.effect == "NoExecute")
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// How long a pod may stay on a node with these NoExecute taints: `None` forever,
/// `Some(0)` not at all. A pod without a toleration for the unreachable or not-ready taint
/// is treated as tolerating it for the default seconds (upstream's DefaultTolerationSeconds
/// admission adds exactly that toleration).
pub fn toleration_seconds(
    tolerations: &[Toleration],
    taints: &[Taint],
    settings: &NodeLifecycleSettings,
) -> Option<i64> {
    let mut min: Option<i64> = None;
    let mut bound = |seconds: i64| min = Some(min.map_or(seconds, |m: i64| m.min(seconds)));
    for taint in taints {
        let matching: Vec<&Toleration> = tolerations
            .iter()
            .filter(|t| toleration_tolerates(t, taint))
            .collect();
        if matching.is_empty() {
            match taint.key.as_str() {
                TAINT_UNREACHABLE => bound(settings.default_unreachable_toleration_seconds),
                TAINT_NOT_READY => bound(settings.default_not_ready_toleration_seconds),
                _ => return Some(0),
            }
            continue;
        }
        // Tolerations without tolerationSeconds tolerate forever; the shortest bound wins.
        for t in matching {
            if let Some(s) = t.toleration_seconds {
                bound(s.max(0));
            }
        }
    }
    min
}

fn ready_condition(node: &Node) -> Option<&NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

/// What the kubelet would report for a healthy node, for restoring conditions this
/// controller set to Unknown once the lease is renewed again.
fn healthy_condition(type_: &str) -> Option<(&'static str, &'static str, &'static str)> {
    Some(match type_ {
        "Ready" => ("True", "KubeletReady", "kubelet is posting ready status"),
        "MemoryPressure" => (
            "False",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available",
        ),
        "DiskPressure" => (
            "False",
            "KubeletHasNoDiskPressure",
            "kubelet has no disk pressure",
        ),
        "PIDPressure" => (
            "False",
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available",
        ),
        _ => return None,
    })
}

impl NodeLifecycleController {
    /// Whether the node's heartbeat is older than the grace period.
    fn is_stale(&self, node: &Node) -> bool {
        let name = node.name_any();
        let renew_time = self
            .leases
            .get(&ObjectRef::new(&name).within(NODE_LEASE_NAMESPACE))
            .and_then(|l| {
                l.spec
                    .as_ref()?
                    .renew_time
                    .as_ref()
                    .map(|t| t.0.to_string())
            })
            .or_else(|| {
                ready_condition(node)
                    .and_then(|c| c.last_heartbeat_time.as_ref().map(|t| t.0.to_string()))
            });
        let mut heartbeats = self.heartbeats.lock();
        let entry = heartbeats.entry(name).or_insert_with(|| Heartbeat {
            renew_time: renew_time.clone(),
            observed_at: Instant::now(),
        });
        if entry.renew_time != renew_time {
            entry.renew_time = renew_time;
            entry.observed_at = Instant::now();
        }
        entry.observed_at.elapsed() > self.settings.node_monitor_grace_period
    }

    async fn reconcile(&self, name: &str) -> Result<Action, ControllerError> {
        let Some(cached) = self.nodes.get(&ObjectRef::new(name)) else {
            self.heartbeats.lock().remove(name);
            return Ok(Action::Done);
        };
        let mut node = (*cached).clone();
        let stale = self.is_stale(&node);
        if let Some(updated) = self.update_conditions(&node, stale).await? {
            node = updated;
        }
        if let Some(updated) = self.update_taints(&node).await? {
            node = updated;
        }
        self.evict_pods(&node, stale).await?;
        Ok(Action::Done)
    }

    /// Sets every condition to Unknown on a stale node, and restores the ones this
    /// controller set once the heartbeat is fresh again. Returns the node if it was written.
    async fn update_conditions(
        &self,
        node: &Node,
        stale: bool,
    ) -> Result<Option<Node>, ControllerError> {
        let old = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        let mut conditions = old.clone();
        let transition = now();
        if stale {
            if !conditions.iter().any(|c| c.type_ == "Ready") {
                conditions.push(NodeCondition {
                    type_: "Ready".into(),
                    ..Default::default()
                });
            }
            for c in conditions.iter_mut() {
                if c.status != "Unknown" {
                    c.status = "Unknown".into();
                    c.reason = Some(UNKNOWN_REASON.into());
                    c.message = Some(UNKNOWN_MESSAGE.into());
                    c.last_transition_time = Some(transition.clone());
                }
            }
        } else {
            for c in conditions.iter_mut() {
                if c.status != "Unknown" || c.reason.as_deref() != Some(UNKNOWN_REASON) {
                    continue;
                }
                if let Some((status, reason, message)) = healthy_condition(&c.type_) {
                    c.status = status.into();
                    c.reason = Some(reason.into());
                    c.message = Some(message.into());
                    c.last_transition_time = Some(transition.clone());
                    c.last_heartbeat_time = Some(transition.clone());
                }
            }
        }
        if conditions == old {
            return Ok(None);
        }
        let was_ready = ready_condition(node).map(|c| c.status.clone());
        let api: Api<Node> = Api::all(self.client.clone());
        let patch = json!({"metadata": {"resourceVersion": node.resource_version()},
                           "status": {"conditions": conditions}});
        let updated = api
            .patch_status(
                &node.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        let now_ready = ready_condition(&updated).map(|c| c.status.clone());
        if was_ready != now_ready {
            let status = if now_ready.as_deref() == Some("True") {
                "NodeReady"
            } else {
                "NodeNotReady"
            };
            self.recorder.record(
                object_reference(&updated),
                EventType::Normal,
                status,
                format!("Node {} status is now: {status}", updated.name_any()),
            );
        }
        Ok(Some(updated))
    }

    /// Keeps the unreachable/not-ready NoExecute taints in line with the Ready condition.
    async fn update_taints(&self, node: &Node) -> Result<Option<Node>, ControllerError> {
        let wanted = match ready_condition(node).map(|c| c.status.as_str()) {
            Some("True") => None,
            Some("False") => Some(TAINT_NOT_READY),
            _ => Some(TAINT_UNREACHABLE),
        };
        let old: Vec<Taint> = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        let managed = |t: &Taint| {
            t.effect == "NoExecute" && (t.key == TAINT_UNREACHABLE || t.key == TAINT_NOT_READY)
        };
        let mut taints: Vec<Taint> = old
            .iter()
            .filter(|t| !managed(t) || Some(t.key.as_str()) == wanted)
            .cloned()
            .collect();
        if let Some(key) = wanted {
            if !taints
                .iter()
                .any(|t| t.key == key && t.effect == "NoExecute")
            {
                taints.push(Taint {
                    key: key.to_string(),
                    value: None,
                    effect: "NoExecute".into(),
                    time_added: Some(now()),
                });
            }
        }
        if taints == old {
            return Ok(None);
        }
        let api: Api<Node> = Api::all(self.client.clone());
        let patch = json!({"metadata": {"resourceVersion": node.resource_version()},
                           "spec": {"taints": taints}});
        let updated = api
            .patch(
                &node.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        Ok(Some(updated))
    }

    /// Marks pods on an unreachable node not ready, and deletes pods whose toleration of
    /// the node's NoExecute taints has run out.
    async fn evict_pods(&self, node: &Node, stale: bool) -> Result<(), ControllerError> {
        let taints = no_execute_taints(node);
        if taints.is_empty() && !stale {
            return Ok(());
        }
        let name = node.name_any();
        let tainted_since = taints
            .iter()
            .filter_map(|t| t.time_added.as_ref().map(|t| t.0))
            .min()
            .unwrap_or_else(Timestamp::now);
        let now_ts = Timestamp::now();
        let mut first_error = None;
        for pod in self.pods.state() {
            if pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) != Some(name.as_str())
                || is_terminating(&pod.metadata)
            {
                continue;
            }
            let api: Api<Pod> =
                Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
            if stale {
                if let Err(e) = mark_not_ready(&api, &pod).await {
                    first_error.get_or_insert(e);
                }
            }
            if taints.is_empty() {
                continue;
            }
            let tolerations = pod
                .spec
                .as_ref()
                .and_then(|s| s.tolerations.clone())
                .unwrap_or_default();
            let Some(seconds) = toleration_seconds(&tolerations, &taints, &self.settings) else {
                continue;
            };
            if tainted_since.as_second() + seconds > now_ts.as_second() {
                continue;
            }
            self.recorder.record(
                object_reference(&*pod),
                EventType::Normal,
                "TaintManagerEviction",
                format!(
                    "Marking for deletion Pod {}/{}",
                    pod.namespace().unwrap_or_default(),
                    pod.name_any()
                ),
            );
            match api.delete(&pod.name_any(), &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => {
                    first_error.get_or_insert(e.into());
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Sets the pod's Ready condition to False, as upstream's MarkPodsNotReady.
async fn mark_not_ready(api: &Api<Pod>, pod: &Pod) -> Result<(), ControllerError> {
    let Some(status) = pod.status.as_ref() else {
        return Ok(());
    };
    if matches!(status.phase.as_deref(), Some("Succeeded") | Some("Failed")) {
        return Ok(());
    }
    let mut conditions = status.conditions.clone().unwrap_or_default();
    let mut changed = false;
    for c in conditions.iter_mut() {
        if c.type_ == "Ready" && c.status != "False" {
            c.status = "False".into();
            c.reason = Some(UNKNOWN_REASON.into());
            c.last_transition_time = Some(now());
            changed = true;
        }
    }
    if !changed {
        return Ok(());
    }
    let patch = json!({"metadata": {"resourceVersion": pod.resource_version()},
                       "status": {"conditions": conditions}});
    let result = api
        .patch_status(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await;
    ignore_not_found(result)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taint(key: &str) -> Taint {
        Taint {
            key: key.into(),
            effect: "NoExecute".into(),
            ..Default::default()
        }
    }

    fn toleration(key: &str, seconds: Option<i64>) -> Toleration {
        Toleration {
            key: Some(key.into()),
            operator: Some("Exists".into()),
            effect: Some("NoExecute".into()),
            toleration_seconds: seconds,
            ..Default::default()
        }
    }

    #[test]
    fn missing_tolerations_of_node_health_taints_get_the_defaults() {
        let settings = NodeLifecycleSettings {
            default_unreachable_toleration_seconds: 7,
            default_not_ready_toleration_seconds: 9,
            ..Default::default()
        };
        assert_eq!(
            toleration_seconds(&[], &[taint(TAINT_UNREACHABLE)], &settings),
            Some(7)
        );
        assert_eq!(
            toleration_seconds(&[], &[taint(TAINT_NOT_READY)], &settings),
            Some(9)
        );
        assert_eq!(
            toleration_seconds(
                &[toleration(TAINT_UNREACHABLE, Some(2))],
                &[taint(TAINT_UNREACHABLE)],
                &settings
            ),
            Some(2)
        );
        // Tolerated without a bound: stays forever.
        assert_eq!(
            toleration_seconds(
                &[toleration(TAINT_UNREACHABLE, None)],
                &[taint(TAINT_UNREACHABLE)],
                &settings
            ),
            None
        );
        // An untolerated foreign NoExecute taint evicts at once.
        assert_eq!(
            toleration_seconds(&[], &[taint("dedicated")], &settings),
            Some(0)
        );
    }
}
