//! The ReplicaSet controller: keeps `spec.replicas` pods matching the selector, adopting
//! orphans and releasing pods that stopped matching, and reports counts in the status.

use std::cmp::Reverse;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetCondition, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, ResourceExt};
use rkube_api::selectors::set_selector_matches;
use rkube_runtime::{
    object_reference, run_reconcile_workers, Action, Backoff, EventRecorder, Expectations,
    SharedInformers, WorkQueue,
};
use tokio::task::JoinSet;

use crate::util::{
    controller_owner_ref, controller_ref, enqueue_controller_or_adopters, enqueue_own_key,
    is_terminating, now, observe_pod_among, patch_owner_references, patch_status_if_changed,
    pod_is_active, pod_is_available, pod_is_ready, pod_ready_since, selector_is_empty,
    selector_matches, split_key, PodWriteLog,
};
use crate::{ControllerError, Shared};

pub const NAME: &str = "replicaset";
/// Upstream's burstReplicas: at most this many creations or deletions per sync.
const BURST_REPLICAS: usize = 500;

struct ReplicaSetController {
    client: kube::Client,
    replicasets: Store<ReplicaSet>,
    pods: Store<Pod>,
    expectations: Expectations,
    recorder: EventRecorder,
}

pub fn start(shared: &Shared, tasks: &mut JoinSet<()>, informers: &mut SharedInformers) {
    let queue: Arc<WorkQueue<String>> = WorkQueue::new(Backoff::default());
    let client = shared.client.clone();
    let (replicasets, replicasets_synced) = informers
        .all::<ReplicaSet>()
        .subscribe(enqueue_own_key(&queue));
    let (pods, pods_synced) = informers
        .all::<Pod>()
        .subscribe(enqueue_controller_or_adopters(
            &queue,
            "ReplicaSet",
            replicasets.clone(),
            |rs| rs.spec.as_ref().map(|s| &s.selector),
        ));
    let controller = Arc::new(ReplicaSetController {
        client: client.clone(),
        replicasets,
        pods,
        expectations: Expectations::new(Duration::from_secs(300)),
        recorder: EventRecorder::new(client, "replicaset-controller", &shared.identity),
    });
    let workers = shared.workers;
    tasks.spawn(async move {
        replicasets_synced.wait().await;
        pods_synced.wait().await;
        run_reconcile_workers(NAME, queue, workers, controller, |c, key| async move {
            c.reconcile(&key).await
        })
        .await;
    });
}

impl ReplicaSetController {
    async fn reconcile(&self, key: &str) -> Result<Action, ControllerError> {
        let (namespace, name) = split_key(key);
        let Some(rs) = self
            .replicasets
            .get(&ObjectRef::new(name).within(namespace))
        else {
            self.expectations.forget(key);
            return Ok(Action::Done);
        };
        let spec = rs.spec.clone().unwrap_or_default();
        let rs_uid = rs.uid().unwrap_or_default();
        let pods_in_namespace: Vec<Arc<Pod>> = self
            .pods
            .state()
            .into_iter()
            .filter(|p| p.namespace().as_deref() == Some(namespace))
            .collect();
        let satisfied = self
            .expectations
            .satisfied(key, observe_pod_among(&pods_in_namespace));
        let pods_api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);

        // Claim: keep owned matching pods, adopt matching orphans, release owned non-matching.
        let mut owned: Vec<Arc<Pod>> = Vec::new();
        let selector_usable = !selector_is_empty(&spec.selector);
        for pod in &pods_in_namespace {
            let matches = selector_usable && selector_matches(&spec.selector, pod.labels());
            match controller_ref(&pod.metadata) {
                Some(owner) if owner.uid == rs_uid => {
                    if matches || is_terminating(&rs.metadata) {
                        owned.push(pod.clone());
                    } else {
                        release(&pods_api, pod, &rs_uid).await?;
                    }
                }
                Some(_) => {}
                None if matches
                    && !is_terminating(&pod.metadata)
                    && !is_terminating(&rs.metadata) =>
                {
                    adopt(&pods_api, pod, &rs).await?;
                    owned.push(pod.clone());
                }
                None => {}
            }
        }
        let active: Vec<Arc<Pod>> = owned.iter().filter(|p| pod_is_active(p)).cloned().collect();

        let mut failure: Option<String> = None;
        if satisfied && !is_terminating(&rs.metadata) {
            let desired = usize::try_from(spec.replicas.unwrap_or(1).max(0)).unwrap_or(0);
            if let Err(e) = self
                .manage_replicas(key, &rs, &active, desired, &pods_api)
                .await
            {
                failure = Some(e.to_string());
            }
        }

        let min_ready = spec.min_ready_seconds.unwrap_or(0);
        let requeue = self.update_status(&rs, &active, failure.as_deref()).await?;
        if let Some(message) = failure {
            return Err(ControllerError::Pending(message));
        }
        // Pods that are ready but not yet available become available on their own clock.
        if requeue && min_ready > 0 {
            return Ok(Action::RequeueAfter(Duration::from_secs(
                u64::try_from(min_ready).unwrap_or(1).max(1),
            )));
        }
        Ok(Action::Done)
    }

    async fn manage_replicas(
        &self,
        key: &str,
        rs: &ReplicaSet,
        active: &[Arc<Pod>],
        desired: usize,
        pods_api: &Api<Pod>,
    ) -> Result<(), ControllerError> {
        let rs_ref = object_reference(rs);
        let log = PodWriteLog {
            expectations: &self.expectations,
            recorder: &self.recorder,
            key,
            owner: &rs_ref,
        };
        if active.len() < desired {
            let missing = (desired - active.len()).min(BURST_REPLICAS);
            let template = rs
                .spec
                .as_ref()
                .and_then(|s| s.template.clone())
                .unwrap_or_default();
            let template_meta = template.metadata.unwrap_or_default();
            let pod = Pod {
                metadata: ObjectMeta {
                    generate_name: Some(format!("{}-", rs.name_any())),
                    labels: template_meta.labels,
                    annotations: template_meta.annotations,
                    finalizers: template_meta.finalizers,
                    owner_references: Some(vec![controller_owner_ref(rs)]),
                    ..Default::default()
                },
                spec: template.spec,
                status: None,
            };
            // Slow start: batches of 1, 2, 4, ... so a broken template fails once, not N times.
            let post = PostParams::default();
            let mut created = 0;
            let mut batch = 1;
            while created < missing {
                let size = batch.min(missing - created);
                let results = join_all((0..size).map(|_| pods_api.create(&post, &pod))).await;
                log.creations(results)?;
                created += size;
                batch *= 2;
            }
        } else if active.len() > desired {
            let excess = (active.len() - desired).min(BURST_REPLICAS);
            let mut ranked: Vec<&Arc<Pod>> = active.iter().collect();
            ranked.sort_by_key(|p| deletion_rank(p));
            let victims = &ranked[..excess];
            let results = join_all(victims.iter().map(|p| async move {
                let name = p.name_any();
                self.expectations.expect_deletion(key, &name);
                let result = pods_api.delete(&name, &DeleteParams::default()).await;
                (name, result)
            }))
            .await;
            log.deletions(results, true)?;
        }
        Ok(())
    }

    /// Writes the status if it changed; returns whether some ready pods are not available yet.
    async fn update_status(
        &self,
        rs: &ReplicaSet,
        active: &[Arc<Pod>],
        failure: Option<&str>,
    ) -> Result<bool, ControllerError> {
        let spec = rs.spec.clone().unwrap_or_default();
        let template_labels = spec
            .template
            .as_ref()
            .and_then(|t| t.metadata.as_ref())
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        let now_ts = Timestamp::now();
        let min_ready = spec.min_ready_seconds.unwrap_or(0);
        let count = |f: &dyn Fn(&Pod) -> bool| {
            i32::try_from(active.iter().filter(|p| f(p)).count()).unwrap_or(i32::MAX)
        };
        let ready = count(&|p| pod_is_ready(p));
        let available = count(&|p| pod_is_available(p, min_ready, now_ts));
        let old = rs.status.clone().unwrap_or_default();
        let mut conditions: Vec<ReplicaSetCondition> = old
            .conditions
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|c| c.type_ != "ReplicaFailure")
            .collect();
        if let Some(message) = failure {
            let previous = old
                .conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == "ReplicaFailure" && c.status == "True");
            conditions.push(ReplicaSetCondition {
                type_: "ReplicaFailure".into(),
                status: "True".into(),
                reason: Some("FailedCreate".into()),
                message: Some(message.to_string()),
                last_transition_time: Some(
                    previous
                        .and_then(|c| c.last_transition_time.clone())
                        .unwrap_or_else(now),
                ),
            });
        }
        let status = ReplicaSetStatus {
            replicas: i32::try_from(active.len()).unwrap_or(i32::MAX),
            fully_labeled_replicas: Some(count(&|p| {
                set_selector_matches(&template_labels, p.labels())
            })),
            ready_replicas: Some(ready),
            available_replicas: Some(available),
            observed_generation: rs.metadata.generation,
            conditions: (!conditions.is_empty()).then_some(conditions),
        };
        let api: Api<ReplicaSet> =
            Api::namespaced(self.client.clone(), &rs.namespace().unwrap_or_default());
        patch_status_if_changed(&api, &rs.name_any(), &old, &status, &["conditions"]).await?;
        Ok(ready > available)
    }
}

/// (scheduled, phase, ready, ready since, restarts, created), compared as a tuple.
type DeletionRank = (
    bool,
    u8,
    bool,
    Reverse<Option<i64>>,
    Reverse<i32>,
    Reverse<Option<i64>>,
);

/// Lower sorts first = deleted first: unscheduled < scheduled, Pending < Unknown < Running,
/// not ready < ready, ready more recently first, more restarts first, newer first.
fn deletion_rank(pod: &Pod) -> DeletionRank {
    let scheduled = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_ref())
        .is_some_and(|n| !n.is_empty());
    let phase = match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Pending") | None => 0,
        Some("Unknown") => 1,
        _ => 2,
    };
    let ready_since = pod_ready_since(pod);
    let restarts = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|cs| cs.iter().map(|c| c.restart_count).sum())
        .unwrap_or(0);
    let created = pod
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_second());
    (
        scheduled,
        phase,
        ready_since.is_some(),
        Reverse(ready_since.flatten().map(|t| t.as_second())),
        Reverse(restarts),
        Reverse(created),
    )
}

async fn adopt(api: &Api<Pod>, pod: &Pod, rs: &ReplicaSet) -> Result<(), ControllerError> {
    let mut refs = pod.metadata.owner_references.clone().unwrap_or_default();
    refs.push(controller_owner_ref(rs));
    patch_owner_references(api, pod, refs).await?;
    Ok(())
}

async fn release(api: &Api<Pod>, pod: &Pod, owner_uid: &str) -> Result<(), ControllerError> {
    let refs: Vec<_> = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .filter(|r| r.uid != owner_uid)
        .cloned()
        .collect();
    patch_owner_references(api, pod, refs).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn pod(node: Option<&str>, phase: &str, ready_at: Option<i64>, created: i64) -> Pod {
        Pod {
            metadata: ObjectMeta {
                creation_timestamp: Some(Time(Timestamp::from_second(created).unwrap())),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: node.map(String::from),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                conditions: ready_at.map(|t| {
                    vec![PodCondition {
                        type_: "Ready".into(),
                        status: "True".into(),
                        last_transition_time: Some(Time(Timestamp::from_second(t).unwrap())),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn deletion_prefers_unscheduled_then_pending_then_not_ready_then_newer() {
        let ready_old = pod(Some("n"), "Running", Some(100), 10);
        let ready_new = pod(Some("n"), "Running", Some(200), 20);
        let not_ready = pod(Some("n"), "Running", None, 5);
        let pending = pod(Some("n"), "Pending", None, 1);
        let unscheduled = pod(None, "Pending", None, 0);
        let mut pods = [&ready_old, &ready_new, &not_ready, &pending, &unscheduled];
        pods.sort_by_key(|p| deletion_rank(p));
        let order: Vec<*const Pod> = pods.iter().map(|p| *p as *const Pod).collect();
        let expected: Vec<*const Pod> =
            [&unscheduled, &pending, &not_ready, &ready_new, &ready_old]
                .iter()
                .map(|p| *p as *const Pod)
                .collect();
        assert_eq!(order, expected);
    }
}
