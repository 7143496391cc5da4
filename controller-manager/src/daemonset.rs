//! The DaemonSet controller: one pod per eligible node (nodeSelector, required node
//! affinity, taints against tolerations), created with a required node affinity on
//! `metadata.name` so the scheduler places it (upstream since 1.12); rolling update bounded
//! by maxUnavailable when the template changes; status counts per node.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    PodSpec, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, ResourceExt};
use rkube_api::semantics::scheduling::{pod_fits_node_affinity, tolerates, NodeView};
use rkube_runtime::{
    object_reference, run_reconcile_workers, Action, Backoff, Change, EventRecorder, Expectations,
    SharedInformers, WorkQueue,
};
use tokio::task::JoinSet;

use crate::deployment::pod_template_hash;
use crate::nodelifecycle::{TAINT_NOT_READY, TAINT_UNREACHABLE};
use crate::util::{
    controller_owner_ref, enqueue_controller_of, enqueue_own_key, is_terminating, key_of,
    observe_pod_among, patch_status_if_changed, pod_is_available, pod_is_ready, pods_controlled_by,
    scaled_value, split_key, PodWriteLog,
};
use crate::{ControllerError, Shared};

pub const NAME: &str = "daemonset";
/// The template hash label on daemon pods (upstream puts the ControllerRevision's hash here).
pub const REVISION_HASH_LABEL: &str = "controller-revision-hash";

struct DaemonSetController {
    client: kube::Client,
    daemonsets: Store<DaemonSet>,
    pods: Store<Pod>,
    nodes: Store<Node>,
    expectations: Expectations,
    recorder: EventRecorder,
}

pub fn start(shared: &Shared, tasks: &mut JoinSet<()>, informers: &mut SharedInformers) {
    let queue: Arc<WorkQueue<String>> = WorkQueue::new(Backoff::default());
    let client = shared.client.clone();
    let (daemonsets, daemonsets_synced) = informers
        .all::<DaemonSet>()
        .subscribe(enqueue_own_key(&queue));
    let (pods, pods_synced) = informers
        .all::<Pod>()
        .subscribe(enqueue_controller_of(&queue, "DaemonSet"));
    // Any node change can change where daemons should run.
    let node_queue = queue.clone();
    let ds_cache = daemonsets.clone();
    let (nodes, nodes_synced) =
        informers
            .all::<Node>()
            .subscribe(move |_change: Change<'_, Node>| {
                for ds in ds_cache.state() {
                    node_queue.add(key_of(&ds.namespace().unwrap_or_default(), &ds.name_any()));
                }
            });
    let controller = Arc::new(DaemonSetController {
        client: client.clone(),
        daemonsets,
        pods,
        nodes,
        expectations: Expectations::new(Duration::from_secs(300)),
        recorder: EventRecorder::new(client, "daemonset-controller", &shared.identity),
    });
    let workers = shared.workers;
    tasks.spawn(async move {
        daemonsets_synced.wait().await;
        pods_synced.wait().await;
        nodes_synced.wait().await;
        run_reconcile_workers(NAME, queue, workers, controller, |c, key| async move {
            c.reconcile(&key).await
        })
        .await;
    });
}

/// The tolerations every daemon pod gets (upstream's AddOrUpdateDaemonPodTolerations):
/// daemons keep running on unhealthy or cordoned nodes.
fn daemon_tolerations(existing: Option<Vec<Toleration>>, host_network: bool) -> Vec<Toleration> {
    let mut tolerations = existing.unwrap_or_default();
    let mut add = |key: &str, effect: &str| {
        let t = Toleration {
            key: Some(key.to_string()),
            operator: Some("Exists".into()),
            effect: Some(effect.to_string()),
            ..Default::default()
        };
        if !tolerations.iter().any(|x| {
            x.key == t.key && x.effect == t.effect && x.operator == t.operator && x.value.is_none()
        }) {
            tolerations.push(t);
        }
    };
    add(TAINT_NOT_READY, "NoExecute");
    add(TAINT_UNREACHABLE, "NoExecute");
    add("node.kubernetes.io/disk-pressure", "NoSchedule");
    add("node.kubernetes.io/memory-pressure", "NoSchedule");
    add("node.kubernetes.io/pid-pressure", "NoSchedule");
    add("node.kubernetes.io/unschedulable", "NoSchedule");
    if host_network {
        add("node.kubernetes.io/network-unavailable", "NoSchedule");
    }
    tolerations
}

/// (should run a new daemon pod here, may keep an existing one), as upstream's
/// NodeShouldRunDaemonPod: node selector and required affinity must match; untolerated
/// NoSchedule taints stop new pods, untolerated NoExecute taints also evict old ones.
pub fn node_should_run(spec: &PodSpec, node: &Node) -> (bool, bool) {
    if !pod_fits_node_affinity(spec, NodeView::of(node)) {
        return (false, false);
    }
    let tolerations =
        daemon_tolerations(spec.tolerations.clone(), spec.host_network.unwrap_or(false));
    let taints: &[Taint] = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or(&[]);
    let untolerated = |effect: &str| {
        taints
            .iter()
            .filter(|t| t.effect == effect)
            .any(|t| !tolerates(&tolerations, t))
    };
    let evicted = untolerated("NoExecute");
    (!evicted && !untolerated("NoSchedule"), !evicted)
}

/// The node a daemon pod is for: its nodeName once bound, before that the node its
/// required affinity names.
pub fn target_node(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(node) = spec.node_name.clone().filter(|n| !n.is_empty()) {
        return Some(node);
    }
    spec.affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|r| r.key == "metadata.name" && r.operator == "In")
        .and_then(|r| r.values.as_ref()?.first().cloned())
}

/// The pod spec with the required node affinity replaced by `metadata.name In [node]`
/// (upstream's ReplaceDaemonSetPodNodeNameNodeAffinity) and the daemon tolerations.
fn spec_for_node(template: &PodSpec, node: &str) -> PodSpec {
    let mut spec = template.clone();
    let term = NodeSelectorTerm {
        match_fields: Some(vec![NodeSelectorRequirement {
            key: "metadata.name".into(),
            operator: "In".into(),
            values: Some(vec![node.to_string()]),
        }]),
        match_expressions: None,
    };
    let affinity = spec.affinity.get_or_insert_with(Affinity::default);
    let node_affinity = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    node_affinity.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
        node_selector_terms: vec![term],
    });
    spec.tolerations = Some(daemon_tolerations(
        spec.tolerations.take(),
        spec.host_network.unwrap_or(false),
    ));
    spec
}

impl DaemonSetController {
    async fn reconcile(&self, key: &str) -> Result<Action, ControllerError> {
        let (namespace, name) = split_key(key);
        let Some(ds) = self.daemonsets.get(&ObjectRef::new(name).within(namespace)) else {
            self.expectations.forget(key);
            return Ok(Action::Done);
        };
        let spec = ds.spec.clone().unwrap_or_default();
        let template_spec = spec.template.spec.clone().unwrap_or_default();
        let hash = pod_template_hash(&spec.template, None);
        let ds_uid = ds.uid().unwrap_or_default();
        let owned = pods_controlled_by(&self.pods, namespace, &ds_uid);
        let satisfied = self.expectations.satisfied(key, observe_pod_among(&owned));
        let mut by_node: HashMap<String, Vec<Arc<Pod>>> = HashMap::new();
        let mut failed: Vec<Arc<Pod>> = Vec::new();
        for pod in &owned {
            if is_terminating(&pod.metadata) {
                continue;
            }
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
            if matches!(phase, Some("Failed") | Some("Succeeded")) {
                failed.push(pod.clone());
                continue;
            }
            if let Some(node) = target_node(pod) {
                by_node.entry(node).or_default().push(pod.clone());
            }
        }
        let nodes = self.nodes.state();
        let min_ready = spec.min_ready_seconds.unwrap_or(0);
        let now_ts = Timestamp::now();
        let is_updated = |p: &Pod| p.labels().get(REVISION_HASH_LABEL) == Some(&hash);

        let mut to_create: Vec<String> = Vec::new();
        let mut to_delete: Vec<Arc<Pod>> = failed.clone();
        let mut counts = Counts::default();
        let mut should_run_nodes: Vec<String> = Vec::new();
        for node in &nodes {
            let node_name = node.name_any();
            let (should_run, may_continue) = node_should_run(&template_spec, node);
            let mut pods = by_node.remove(&node_name).unwrap_or_default();
            pods.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
            if should_run {
                counts.desired += 1;
                should_run_nodes.push(node_name.clone());
                match pods.first() {
                    None => to_create.push(node_name.clone()),
                    Some(pod) => {
                        counts.current += 1;
                        counts.ready += i32::from(pod_is_ready(pod));
                        counts.available += i32::from(pod_is_available(pod, min_ready, now_ts));
                        counts.updated += i32::from(is_updated(pod));
                    }
                }
                // Only one daemon per node: the oldest stays.
                to_delete.extend(pods.into_iter().skip(1));
            } else if !pods.is_empty() {
                counts.misscheduled += 1;
                if !may_continue {
                    to_delete.extend(pods);
                }
            }
        }
        // Pods for nodes that no longer exist.
        to_delete.extend(by_node.into_values().flatten());

        let mut failure = None;
        if satisfied && !is_terminating(&ds.metadata) {
            let rolling = spec
                .update_strategy
                .as_ref()
                .and_then(|s| s.type_.as_deref())
                .is_none_or(|t| t == "RollingUpdate");
            if rolling {
                let max_unavailable = spec
                    .update_strategy
                    .as_ref()
                    .and_then(|s| s.rolling_update.as_ref())
                    .and_then(|r| r.max_unavailable.as_ref());
                to_delete.extend(self.rolling_update_victims(
                    &should_run_nodes,
                    &owned,
                    &hash,
                    max_unavailable,
                    counts.desired,
                    min_ready,
                    now_ts,
                ));
            }
            if let Err(e) = self
                .sync_pods(key, &ds, &hash, &template_spec, &to_create, &to_delete)
                .await
            {
                failure = Some(e);
            }
        }
        self.update_status(&ds, &counts).await?;
        if let Some(e) = failure {
            return Err(e);
        }
        if min_ready > 0 && counts.ready > counts.available {
            return Ok(Action::RequeueAfter(Duration::from_secs(
                u64::try_from(min_ready).unwrap_or(1).max(1),
            )));
        }
        Ok(Action::Done)
    }

    /// Old-template pods to delete now: unavailable ones at once, available ones only while
    /// fewer than maxUnavailable daemons are down.
    #[allow(clippy::too_many_arguments)]
    fn rolling_update_victims(
        &self,
        nodes: &[String],
        owned: &[Arc<Pod>],
        hash: &str,
        max_unavailable: Option<&k8s_openapi::apimachinery::pkg::util::intstr::IntOrString>,
        desired: i32,
        min_ready: i32,
        now_ts: Timestamp,
    ) -> Vec<Arc<Pod>> {
        let max = scaled_value(max_unavailable, desired, true, 0).max(1);
        let mut unavailable = 0;
        let mut old_available: Vec<Arc<Pod>> = Vec::new();
        let mut victims = Vec::new();
        for node in nodes {
            let pod = owned.iter().find(|p| {
                !is_terminating(&p.metadata)
                    && target_node(p).as_deref() == Some(node.as_str())
                    && !matches!(
                        p.status.as_ref().and_then(|s| s.phase.as_deref()),
                        Some("Failed") | Some("Succeeded")
                    )
            });
            let Some(pod) = pod else {
                unavailable += 1;
                continue;
            };
            let available = pod_is_available(pod, min_ready, now_ts);
            let updated = pod.labels().get(REVISION_HASH_LABEL).map(String::as_str) == Some(hash);
            match (updated, available) {
                (true, true) => {}
                (true, false) => unavailable += 1,
                (false, false) => {
                    unavailable += 1;
                    victims.push(pod.clone());
                }
                (false, true) => old_available.push(pod.clone()),
            }
        }
        for pod in old_available {
            if unavailable >= max {
                break;
            }
            unavailable += 1;
            victims.push(pod);
        }
        victims
    }

    async fn sync_pods(
        &self,
        key: &str,
        ds: &DaemonSet,
        hash: &str,
        template_spec: &PodSpec,
        to_create: &[String],
        to_delete: &[Arc<Pod>],
    ) -> Result<(), ControllerError> {
        let namespace = ds.namespace().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        let ds_ref = object_reference(ds);
        let template_meta = ds
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.clone())
            .unwrap_or_default();
        let mut labels: BTreeMap<String, String> = template_meta.labels.clone().unwrap_or_default();
        labels.insert(REVISION_HASH_LABEL.into(), hash.to_string());
        let creations = join_all(to_create.iter().map(|node| {
            let pod = Pod {
                metadata: ObjectMeta {
                    generate_name: Some(format!("{}-", ds.name_any())),
                    labels: Some(labels.clone()),
                    annotations: template_meta.annotations.clone(),
                    owner_references: Some(vec![controller_owner_ref(ds)]),
                    ..Default::default()
                },
                spec: Some(spec_for_node(template_spec, node)),
                status: None,
            };
            let api = api.clone();
            async move { api.create(&PostParams::default(), &pod).await }
        }))
        .await;
        let log = PodWriteLog {
            expectations: &self.expectations,
            recorder: &self.recorder,
            key,
            owner: &ds_ref,
        };
        let created = log.creations(creations);
        let mut seen = std::collections::HashSet::new();
        let deletions = join_all(
            to_delete
                .iter()
                .filter(|p| seen.insert(p.name_any()))
                .map(|p| {
                    let api = api.clone();
                    let name = p.name_any();
                    self.expectations.expect_deletion(key, &name);
                    async move {
                        (
                            name.clone(),
                            api.delete(&name, &DeleteParams::default()).await,
                        )
                    }
                }),
        )
        .await;
        let deleted = log.deletions(deletions, false);
        // Deletions go ahead even when a creation failed; the creation error is reported first.
        created.and(deleted)?;
        Ok(())
    }

    async fn update_status(&self, ds: &DaemonSet, counts: &Counts) -> Result<(), ControllerError> {
        let old = ds.status.clone().unwrap_or_default();
        let status = DaemonSetStatus {
            current_number_scheduled: counts.current,
            desired_number_scheduled: counts.desired,
            number_misscheduled: counts.misscheduled,
            number_ready: counts.ready,
            number_available: Some(counts.available),
            number_unavailable: Some(counts.desired - counts.available).filter(|n| *n > 0),
            updated_number_scheduled: Some(counts.updated),
            observed_generation: ds.metadata.generation,
            collision_count: old.collision_count,
            conditions: old.conditions.clone(),
        };
        let api: Api<DaemonSet> =
            Api::namespaced(self.client.clone(), &ds.namespace().unwrap_or_default());
        patch_status_if_changed(&api, &ds.name_any(), &old, &status, &["numberUnavailable"]).await
    }
}

#[derive(Default)]
struct Counts {
    desired: i32,
    current: i32,
    misscheduled: i32,
    ready: i32,
    available: i32,
    updated: i32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(value: serde_json::Value) -> Node {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn eligibility_follows_selector_affinity_and_taints() {
        let plain = node(json!({"metadata": {"name": "n1", "labels": {"role": "web"}}}));
        let tainted = node(
            json!({"metadata": {"name": "n2", "labels": {"role": "web"}},
            "spec": {"taints": [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]}}),
        );
        let evicting = node(
            json!({"metadata": {"name": "n3", "labels": {"role": "web"}},
            "spec": {"taints": [{"key": "dedicated", "value": "db", "effect": "NoExecute"}]}}),
        );
        let unreachable = node(
            json!({"metadata": {"name": "n4", "labels": {"role": "web"}},
            "spec": {"taints": [{"key": TAINT_UNREACHABLE, "effect": "NoExecute"}]}}),
        );
        let spec: PodSpec =
            serde_json::from_value(json!({"containers": [], "nodeSelector": {"role": "web"}}))
                .unwrap();
        assert_eq!(node_should_run(&spec, &plain), (true, true));
        assert_eq!(node_should_run(&spec, &tainted), (false, true));
        assert_eq!(node_should_run(&spec, &evicting), (false, false));
        assert_eq!(node_should_run(&spec, &unreachable), (true, true));
        let other: PodSpec =
            serde_json::from_value(json!({"containers": [], "nodeSelector": {"role": "db"}}))
                .unwrap();
        assert_eq!(node_should_run(&other, &plain), (false, false));
        let affinity: PodSpec = serde_json::from_value(json!({"containers": [], "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
            {"nodeSelectorTerms": [{"matchExpressions": [{"key": "role", "operator": "NotIn", "values": ["web"]}]}]}}}})).unwrap();
        assert_eq!(node_should_run(&affinity, &plain), (false, false));
    }

    /// Regression: the DaemonSet controller's own copy of node-selector matching read only
    /// the first value of `Gt` and of matchFields `In`; upstream (and the scheduler, which
    /// places the pod) treat such a term as malformed, so it matches no node.
    #[test]
    fn malformed_affinity_terms_match_no_node() {
        let plain = node(json!({"metadata": {"name": "n1", "labels": {"cores": "8"}}}));
        let with_term = |term: serde_json::Value| -> PodSpec {
            serde_json::from_value(json!({"containers": [], "affinity": {"nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}}}))
            .unwrap()
        };
        let gt_two_values = with_term(
            json!({"matchExpressions": [{"key": "cores", "operator": "Gt", "values": ["4", "100"]}]}),
        );
        assert_eq!(node_should_run(&gt_two_values, &plain), (false, false));
        let fields_two_values = with_term(
            json!({"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1", "n2"]}]}),
        );
        assert_eq!(node_should_run(&fields_two_values, &plain), (false, false));
    }

    #[test]
    fn pods_target_their_node_through_required_affinity() {
        let spec = spec_for_node(&PodSpec::default(), "n7");
        let pod = Pod {
            spec: Some(spec),
            ..Default::default()
        };
        assert_eq!(target_node(&pod).as_deref(), Some("n7"));
        let tolerations = pod.spec.unwrap().tolerations.unwrap();
        assert!(tolerations
            .iter()
            .any(|t| t.key.as_deref() == Some(TAINT_UNREACHABLE)));
    }
}
