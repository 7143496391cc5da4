//! The StatefulSet controller: pods `<name>-0 .. <name>-(n-1)` with stable names and
//! `hostname`/`subdomain` set; with OrderedReady, ordinal i+1 is created only once i is
//! Running and Ready and scale-down removes the highest ordinal first, one at a time;
//! with Parallel, all at once. A template change rolls pods in reverse ordinal order, one
//! at a time, down to `partition`. No volume claims.
//!
//! Revisions are `<name>-<template hash>` (the API server serves no ControllerRevisions):
//! a pod below the partition that must be recreated at the current revision copies the
//! spec of a surviving pod of that revision, or else takes the current template.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, ResourceExt};
use rkube_runtime::{
    object_reference, run_reconcile_workers, Action, Backoff, EventRecorder, EventType,
    Expectations, SharedInformers, WorkQueue,
};
use tokio::task::JoinSet;

use crate::deployment::pod_template_hash;
use crate::util::{
    controller_owner_ref, enqueue_controller_of, enqueue_own_key, is_terminating,
    observe_pod_among, patch_status_if_changed, pod_is_available, pod_is_ready, pods_controlled_by,
    split_key,
};
use crate::{ControllerError, Shared};

pub const NAME: &str = "statefulset";
pub const REVISION_LABEL: &str = "controller-revision-hash";
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

struct StatefulSetController {
    client: kube::Client,
    sets: Store<StatefulSet>,
    pods: Store<Pod>,
    expectations: Expectations,
    recorder: EventRecorder,
}

pub fn start(shared: &Shared, tasks: &mut JoinSet<()>, informers: &mut SharedInformers) {
    let queue: Arc<WorkQueue<String>> = WorkQueue::new(Backoff::default());
    let client = shared.client.clone();
    let (sets, sets_synced) = informers
        .all::<StatefulSet>()
        .subscribe(enqueue_own_key(&queue));
    let (pods, pods_synced) = informers
        .all::<Pod>()
        .subscribe(enqueue_controller_of(&queue, "StatefulSet"));
    let controller = Arc::new(StatefulSetController {
        client: client.clone(),
        sets,
        pods,
        expectations: Expectations::new(Duration::from_secs(300)),
        recorder: EventRecorder::new(client, "statefulset-controller", &shared.identity),
    });
    let workers = shared.workers;
    tasks.spawn(async move {
        sets_synced.wait().await;
        pods_synced.wait().await;
        run_reconcile_workers(NAME, queue, workers, controller, |c, key| async move {
            c.reconcile(&key).await
        })
        .await;
    });
}

/// The ordinal in `<set>-<ordinal>`, if the name has that shape.
pub fn ordinal_of(set: &str, pod: &str) -> Option<i32> {
    let rest = pod.strip_prefix(set)?.strip_prefix('-')?;
    if rest.is_empty() || (rest.len() > 1 && rest.starts_with('0')) {
        return None;
    }
    rest.parse().ok()
}

fn running_and_ready(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") && pod_is_ready(pod)
}

fn finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Failed") | Some("Succeeded")
    )
}

fn revision_of(pod: &Pod) -> Option<&str> {
    pod.labels().get(REVISION_LABEL).map(String::as_str)
}

/// What one sync decided to do; at most one kind of step per sync keeps the ordering rules
/// simple (the resulting watch events bring the next sync).
enum Step {
    Create(i32, bool),
    Delete(Arc<Pod>, &'static str),
}

impl StatefulSetController {
    async fn reconcile(&self, key: &str) -> Result<Action, ControllerError> {
        let (namespace, name) = split_key(key);
        let Some(set) = self.sets.get(&ObjectRef::new(name).within(namespace)) else {
            self.expectations.forget(key);
            return Ok(Action::Done);
        };
        let spec = set.spec.clone().unwrap_or_default();
        let uid = set.uid().unwrap_or_default();
        let owned = pods_controlled_by(&self.pods, namespace, &uid);
        let satisfied = self.expectations.satisfied(key, observe_pod_among(&owned));
        let update_revision = format!("{name}-{}", pod_template_hash(&spec.template, None));
        let old = set.status.clone().unwrap_or_default();
        let replicas = spec.replicas.unwrap_or(1).max(0);
        let by_ordinal: BTreeMap<i32, Arc<Pod>> = owned
            .iter()
            .filter_map(|p| ordinal_of(name, &p.name_any()).map(|o| (o, p.clone())))
            .collect();
        let mut current_revision = old
            .current_revision
            .clone()
            .unwrap_or_else(|| update_revision.clone());
        let parallel = spec.pod_management_policy.as_deref() == Some("Parallel");
        let rolling = spec
            .update_strategy
            .as_ref()
            .and_then(|s| s.type_.as_deref())
            .is_none_or(|t| t == "RollingUpdate");
        let partition = spec
            .update_strategy
            .as_ref()
            .and_then(|s| s.rolling_update.as_ref())
            .and_then(|r| r.partition)
            .unwrap_or(0)
            .max(0);

        let steps = if satisfied && !is_terminating(&set.metadata) {
            plan(
                &by_ordinal,
                replicas,
                parallel,
                rolling,
                partition,
                &update_revision,
            )
        } else {
            Vec::new()
        };
        let result = self
            .apply(
                key,
                &set,
                &by_ordinal,
                &steps,
                &current_revision,
                &update_revision,
            )
            .await;

        // Status from the pods as the cache sees them (the steps' events bring the next sync).
        let now_ts = Timestamp::now();
        let min_ready = spec.min_ready_seconds.unwrap_or(0);
        let live: Vec<&Arc<Pod>> = by_ordinal.values().filter(|p| !finished(p)).collect();
        let count = |f: &dyn Fn(&Pod) -> bool| {
            i32::try_from(live.iter().filter(|p| f(p)).count()).unwrap_or(i32::MAX)
        };
        let updated = count(&|p| revision_of(p) == Some(update_revision.as_str()));
        let ready = count(&|p| pod_is_ready(p));
        let in_range_updated_ready = by_ordinal
            .iter()
            .filter(|(o, p)| **o < replicas && !is_terminating(&p.metadata))
            .filter(|(_, p)| revision_of(p) == Some(update_revision.as_str()) && pod_is_ready(p))
            .count();
        // The rollout is done once every replica runs the update revision and is ready.
        if usize::try_from(replicas).ok() == Some(in_range_updated_ready)
            && usize::try_from(count(&|_| true)).ok() == Some(in_range_updated_ready)
        {
            current_revision = update_revision.clone();
        }
        let current = count(&|p| revision_of(p) == Some(current_revision.as_str()));
        let status = StatefulSetStatus {
            replicas: count(&|_| true),
            ready_replicas: Some(ready),
            available_replicas: Some(count(&|p| pod_is_available(p, min_ready, now_ts))),
            current_replicas: Some(current),
            updated_replicas: Some(updated),
            current_revision: Some(current_revision),
            update_revision: Some(update_revision),
            observed_generation: set.metadata.generation,
            collision_count: Some(old.collision_count.unwrap_or(0)),
            conditions: old.conditions.clone(),
        };
        let api: Api<StatefulSet> = Api::namespaced(self.client.clone(), namespace);
        patch_status_if_changed(&api, name, &old, &status, &[]).await?;
        result?;
        if min_ready > 0 && ready > status.available_replicas.unwrap_or(0) {
            return Ok(Action::RequeueAfter(Duration::from_secs(
                u64::try_from(min_ready).unwrap_or(1).max(1),
            )));
        }
        Ok(Action::Done)
    }
}

/// The next steps, following upstream's ordering rules.
fn plan(
    pods: &BTreeMap<i32, Arc<Pod>>,
    replicas: i32,
    parallel: bool,
    rolling: bool,
    partition: i32,
    update_revision: &str,
) -> Vec<Step> {
    let mut steps = Vec::new();
    // Replicas in ascending order: replace finished pods, create missing ones, and
    // (OrderedReady) stop at the first one that is not yet Running and Ready.
    for ordinal in 0..replicas {
        match pods.get(&ordinal) {
            None => {
                steps.push(Step::Create(ordinal, ordinal >= partition));
                if !parallel {
                    return steps;
                }
            }
            Some(pod) if finished(pod) && !is_terminating(&pod.metadata) => {
                steps.push(Step::Delete(pod.clone(), "RecreatingFailedPod"));
                if !parallel {
                    return steps;
                }
            }
            Some(pod) if !parallel && !running_and_ready(pod) => return steps,
            Some(_) => {}
        }
    }
    // Condemned pods (ordinal >= replicas), highest first.
    let condemned: Vec<&Arc<Pod>> = pods.range(replicas..).rev().map(|(_, p)| p).collect();
    for pod in &condemned {
        if is_terminating(&pod.metadata) {
            if !parallel {
                return steps;
            }
            continue;
        }
        steps.push(Step::Delete((*pod).clone(), "SuccessfulDelete"));
        if !parallel {
            return steps;
        }
    }
    if !steps.is_empty() || !condemned.is_empty() || !rolling {
        return steps;
    }
    // Rolling update: one pod at a time, highest ordinal first, down to the partition,
    // only while every replica is healthy.
    let unhealthy = (0..replicas).any(|o| {
        pods.get(&o)
            .is_none_or(|p| is_terminating(&p.metadata) || !running_and_ready(p))
    });
    if unhealthy {
        return steps;
    }
    for ordinal in (partition..replicas).rev() {
        if let Some(pod) = pods.get(&ordinal) {
            if revision_of(pod) != Some(update_revision) {
                steps.push(Step::Delete(pod.clone(), "SuccessfulDelete"));
                return steps;
            }
        }
    }
    steps
}

impl StatefulSetController {
    async fn apply(
        &self,
        key: &str,
        set: &StatefulSet,
        pods: &BTreeMap<i32, Arc<Pod>>,
        steps: &[Step],
        current_revision: &str,
        update_revision: &str,
    ) -> Result<(), ControllerError> {
        let namespace = set.namespace().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        let set_ref = object_reference(set);
        for step in steps {
            match step {
                Step::Create(ordinal, at_update) => {
                    let revision = if *at_update {
                        update_revision
                    } else {
                        current_revision
                    };
                    let pod = self.new_pod(set, *ordinal, revision, update_revision, pods);
                    let pod_name = pod.name_any();
                    match api.create(&PostParams::default(), &pod).await {
                        Ok(_) => {
                            self.expectations.expect_creation(key, &pod_name);
                            self.recorder.record(
                                set_ref.clone(),
                                EventType::Normal,
                                "SuccessfulCreate",
                                format!(
                                    "create Pod {pod_name} in StatefulSet {} successful",
                                    set.name_any()
                                ),
                            );
                        }
                        // Our cache is behind (or the old pod is still going away).
                        Err(kube::Error::Api(e)) if e.code == 409 => {}
                        Err(e) => {
                            self.recorder.record(
                                set_ref.clone(),
                                EventType::Warning,
                                "FailedCreate",
                                format!(
                                    "create Pod {pod_name} in StatefulSet {} failed error: {e}",
                                    set.name_any()
                                ),
                            );
                            return Err(e.into());
                        }
                    }
                }
                Step::Delete(pod, reason) => {
                    let pod_name = pod.name_any();
                    self.expectations.expect_deletion(key, &pod_name);
                    match api.delete(&pod_name, &DeleteParams::default()).await {
                        Ok(_) => self.recorder.record(
                            set_ref.clone(),
                            EventType::Normal,
                            reason,
                            format!(
                                "delete Pod {pod_name} in StatefulSet {} successful",
                                set.name_any()
                            ),
                        ),
                        Err(kube::Error::Api(e)) if e.code == 404 => {}
                        Err(e) => {
                            self.expectations.deletion_failed(key, &pod_name);
                            return Err(e.into());
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn new_pod(
        &self,
        set: &StatefulSet,
        ordinal: i32,
        revision: &str,
        update_revision: &str,
        pods: &BTreeMap<i32, Arc<Pod>>,
    ) -> Pod {
        let spec = set.spec.clone().unwrap_or_default();
        let template_meta = spec.template.metadata.clone().unwrap_or_default();
        let name = format!("{}-{ordinal}", set.name_any());
        // An older revision's spec survives only in its pods.
        let pod_spec: PodSpec = if revision == update_revision {
            spec.template.spec.clone().unwrap_or_default()
        } else {
            pods.values()
                .find(|p| revision_of(p) == Some(revision))
                .and_then(|p| p.spec.clone())
                .map(|mut s| {
                    s.node_name = None;
                    s
                })
                .unwrap_or_else(|| spec.template.spec.clone().unwrap_or_default())
        };
        let mut labels = template_meta.labels.clone().unwrap_or_default();
        labels.insert(REVISION_LABEL.into(), revision.to_string());
        labels.insert(POD_NAME_LABEL.into(), name.clone());
        labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
        let mut pod_spec = pod_spec;
        pod_spec.hostname = Some(name.clone());
        pod_spec.subdomain =
            Some(spec.service_name.clone().unwrap_or_default()).filter(|s| !s.is_empty());
        Pod {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: set.namespace(),
                labels: Some(labels),
                annotations: template_meta.annotations,
                owner_references: Some(vec![controller_owner_ref(set)]),
                ..Default::default()
            },
            spec: Some(pod_spec),
            status: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ordinals_parse_only_canonical_suffixes() {
        assert_eq!(ordinal_of("web", "web-0"), Some(0));
        assert_eq!(ordinal_of("web", "web-12"), Some(12));
        assert_eq!(ordinal_of("web", "web-01"), None);
        assert_eq!(ordinal_of("web", "web-x"), None);
        assert_eq!(ordinal_of("web", "webby-1"), None);
        assert_eq!(ordinal_of("web", "web-"), None);
    }

    fn pod(name: &str, revision: &str, ready: bool) -> Arc<Pod> {
        Arc::new(serde_json::from_value(json!({"metadata": {"name": name, "labels": {REVISION_LABEL: revision}},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}})).unwrap())
    }

    #[test]
    fn ordered_ready_waits_for_each_pod_and_updates_from_the_top() {
        let mut pods = BTreeMap::new();
        pods.insert(0, pod("web-0", "r1", true));
        pods.insert(1, pod("web-1", "r1", false));
        let plan = plan_of(&pods, 3, false, 0, "r1");
        assert!(plan.is_empty(), "web-2 must wait for web-1 to be ready");
        pods.insert(1, pod("web-1", "r1", true));
        assert_eq!(plan_of(&pods, 3, false, 0, "r1"), vec!["create web-2"]);
        assert_eq!(
            plan_of(&pods, 3, true, 0, "r1"),
            vec!["create web-2"],
            "parallel creates every missing one"
        );
        pods.insert(2, pod("web-2", "r1", true));
        assert_eq!(plan_of(&pods, 1, false, 0, "r1"), vec!["delete web-2"]);
        assert_eq!(
            plan_of(&pods, 1, true, 0, "r1"),
            vec!["delete web-2", "delete web-1"]
        );
        assert_eq!(plan_of(&pods, 3, false, 0, "r2"), vec!["delete web-2"]);
        assert_eq!(plan_of(&pods, 3, false, 3, "r2"), Vec::<String>::new());
    }

    fn plan_of(
        pods: &BTreeMap<i32, Arc<Pod>>,
        replicas: i32,
        parallel: bool,
        partition: i32,
        revision: &str,
    ) -> Vec<String> {
        plan(pods, replicas, parallel, true, partition, revision)
            .into_iter()
            .map(|s| match s {
                Step::Create(o, _) => format!("create web-{o}"),
                Step::Delete(p, _) => format!("delete {}", p.name_any()),
            })
            .collect()
    }
}
